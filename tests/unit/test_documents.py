"""Reading YAML, JSON and CSV with line numbers, and their error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from orch.config.documents import LineDict, LineList, load_document, parse_yaml, read_text
from orch.errors import ConfigError


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_document(path, f"references/{path.name}")
    return info.value


# -- YAML ---------------------------------------------------------------------------------


def test_yaml_mappings_and_lists_remember_lines():
    doc = parse_yaml("a:\n  b: 1\n  c:\n    - x\n    - {d: 2}\nlist:\n- 1\n- 2\n", "t.yaml")
    assert isinstance(doc, LineDict)
    assert (doc.line, doc.key_lines) == (1, {"a": 1, "list": 6})
    assert (doc["a"].line, doc["a"].key_lines) == (2, {"b": 2, "c": 3})
    assert isinstance(doc["a"]["c"], LineList)
    assert doc["a"]["c"].item_lines == [4, 5]
    assert doc["a"]["c"][1].line == 5
    assert (doc["list"].line, doc["list"].line_of(1)) == (7, 8)


def test_line_of_falls_back_to_the_node_line():
    doc = parse_yaml("x: 1\nitems:\n  - a\n", "t.yaml")
    assert doc.line_of("missing") == 1
    assert doc["items"].line_of(5) == 3


def test_yaml_values_keep_their_types():
    doc = parse_yaml("s: '1.10'\nf: 1.10\ni: 7\nb: true\nn: null\n", "t.yaml")
    assert doc == {"s": "1.10", "f": 1.1, "i": 7, "b": True, "n": None}


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_yaml_is_none(text):
    assert parse_yaml(text, "t.yaml") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\na: 2\n", "t.yaml:2: invalid YAML: duplicate key 'a'"),
        ("a: 1\nb: *x\n", "t.yaml:2: invalid YAML: found undefined alias"),
        (
            "items:\n  - ID: a\n  - ID: [b\n  - ID: c\n",
            "t.yaml:4: invalid YAML: did not find expected ',' or ']'",
        ),
        ("a: 1\n b: 2\n", "t.yaml:2: invalid YAML: mapping values are not allowed in this context"),
    ],
)
def test_malformed_yaml_names_file_and_line(text, message):
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "t.yaml")
    assert (info.value.message, info.value.hint) == (message, "fix the syntax at that line")


def test_yaml_line_offset_shifts_reported_lines():
    with pytest.raises(ConfigError) as info:
        parse_yaml("a: 1\na: 2\n", "agents/x.md", line_offset=1)
    assert info.value.message == "agents/x.md:3: invalid YAML: duplicate key 'a'"


def test_yaml_file_with_byte_order_mark_loads(tmp_path):
    path = write(tmp_path, "r.yaml", "\ufeffitems:\n  - ID: a\n".encode())
    assert load_document(path, "references/r.yaml") == {"items": [{"ID": "a"}]}


# -- JSON ---------------------------------------------------------------------------------


def test_json_loads_as_plain_values(tmp_path):
    path = write(tmp_path, "r.json", '{"items": [{"ID": "a", "N": 1}]}')
    assert load_document(path, "references/r.json") == {"items": [{"ID": "a", "N": 1}]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"items": [\n  {"ID": "a"},\n  {"ID": "b",}\n]}\n',
            "references/r.json:3: invalid JSON: "
            "Expecting property name enclosed in double quotes (column 14)",
        ),
        (
            '{"items": [\n  {"ID": "a"}\n',
            "references/r.json:3: invalid JSON: Expecting ',' delimiter (column 1)",
        ),
    ],
)
def test_malformed_json_names_file_line_and_column(tmp_path, text, message):
    error = load_error(write(tmp_path, "r.json", text))
    assert (error.message, error.hint) == (message, "fix the syntax at that line")


# -- CSV ----------------------------------------------------------------------------------


def test_csv_rows_are_line_dicts_with_their_file_line(tmp_path):
    path = write(tmp_path, "r.csv", ' ID , NOTE \na,x\n\nb,"y, z"\n')
    rows = load_document(path, "references/r.csv")
    assert isinstance(rows, LineList)
    assert rows == [{"ID": "a", "NOTE": "x"}, {"ID": "b", "NOTE": "y, z"}]
    assert [row.line for row in rows] == [2, 4]
    assert rows.item_lines == [2, 4]


@pytest.mark.parametrize("text", ["", "ID,NOTE\n", "ID,NOTE\n\n  ,  \n"])
def test_csv_without_rows_is_an_empty_list(tmp_path, text):
    assert load_document(write(tmp_path, "r.csv", text), "references/r.csv") == []


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        (
            "ID,NOTE\na,x\nb,y,z\n",
            "references/r.csv:3: invalid CSV: row has 3 fields, header has 2",
            "quote fields that contain commas, and give every row every column",
        ),
        (
            'ID,NOTE\na,x\n"b,y\n',
            "references/r.csv:3: invalid CSV: unexpected end of data",
            "fix the quoting at that line",
        ),
        (
            'ID,NOTE\na,x\nd,"e"f\n',
            "references/r.csv:3: invalid CSV: ',' expected after '\"'",
            "fix the quoting at that line",
        ),
        (
            "ID,ID\na,b\n",
            "references/r.csv:1: invalid CSV header: column names must be non-empty and unique",
            "name every column once in the first row",
        ),
        (
            "ID,\na,b\n",
            "references/r.csv:1: invalid CSV header: column names must be non-empty and unique",
            "name every column once in the first row",
        ),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path, text, message, hint):
    error = load_error(write(tmp_path, "r.csv", text))
    assert (error.message, error.hint) == (message, hint)


def test_csv_row_with_multiline_field_gets_its_first_line(tmp_path):
    rows = load_document(write(tmp_path, "r.csv", 'ID,NOTE\na,"two\nlines"\nb,x\n'), "references/r.csv")
    assert [row.line for row in rows] == [2, 4]


def test_csv_with_byte_order_mark_has_clean_column_names(tmp_path):
    rows = load_document(write(tmp_path, "r.csv", "\ufeffID,NOTE\na,x\n".encode()), "references/r.csv")
    assert rows == [{"ID": "a", "NOTE": "x"}]


# -- files ----------------------------------------------------------------------------------


def test_unsupported_suffix(tmp_path):
    error = load_error(write(tmp_path, "r.txt", "x"))
    assert (error.message, error.hint) == (
        "references/r.txt: unsupported references format '.txt'",
        "use a .yaml, .yml, .json or .csv file",
    )


def test_suffix_is_case_insensitive(tmp_path):
    assert load_document(write(tmp_path, "R.YML", "- a\n"), "references/R.YML") == ["a"]


def test_missing_file(tmp_path):
    assert load_error(tmp_path / "none.yaml").message == "references/none.yaml: file not found"


def test_file_that_is_not_utf8(tmp_path):
    error = load_error(write(tmp_path, "r.csv", b"ID\n\xff\n"))
    assert error.message == (
        "references/r.csv: cannot read: "
        "'utf-8' codec can't decode byte 0xff in position 3: invalid start byte"
    )


def test_read_text_of_a_directory(tmp_path):
    with pytest.raises(ConfigError) as info:
        read_text(tmp_path, "references")
    assert info.value.message.startswith("references: cannot read: [Errno 21] Is a directory")


def test_empty_json_file_loads_as_nothing_like_an_empty_yaml_file(tmp_path):
    # partitions then says "the file is empty", the same for every format
    path = tmp_path / "r.json"
    path.write_text("  \n")
    assert load_document(path, "references/r.json") is None


# -- bounded input (issue 10, item 8) --------------------------------------------------------

BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_alias_bomb_is_refused_before_it_is_built(tmp_path):
    import time

    started = time.monotonic()
    error = load_error(write(tmp_path, "r.yaml", BILLION_LAUGHS))
    assert time.monotonic() - started < 1.0
    assert error.message == (
        "references/r.yaml:7: invalid YAML: aliases expand to more than 1,000,000 nodes (an alias bomb?)"
    )
    assert error.hint == "orch reads at most 100 levels of nesting and 1,000,000 alias-expanded nodes"


def test_ordinary_aliases_and_merge_keys_still_load():
    data = parse_yaml("base: &b {k: 1}\nuse: *b\nmerged: {<<: *b, d: 2}\n", "orch.yaml")
    assert data == {"base": {"k": 1}, "use": {"k": 1}, "merged": {"k": 1, "d": 2}}


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("x:\n  " + "[" * 100_000 + "]" * 100_000 + "\n", 2),  # libyaml itself crashes on this
        ("".join(" " * i + "- \n" for i in range(0, 400, 2)), 101),
        ("a: &a " + "[" * 55 + "1" + "]" * 55 + "\nb: " + "[" * 55 + "*a" + "]" * 55 + "\n", 2),
    ],
)
def test_yaml_nesting_is_bounded(text, line):
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "orch.yaml")
    assert info.value.message.startswith(
        f"orch.yaml:{line}: invalid YAML: lists and mappings nest deeper than 100"
    )


@pytest.mark.parametrize("depth", [101, 100_000])
def test_json_nesting_is_bounded_with_its_line(tmp_path, depth):
    error = load_error(write(tmp_path, "r.json", '{"rows":\n  ' + "[" * depth + "]" * depth + "}"))
    assert (
        error.message == "references/r.json:2: invalid JSON: arrays and objects nest deeper than 100 levels"
    )


def test_a_fifo_is_an_error_not_a_hang(tmp_path):
    import os

    os.mkfifo(tmp_path / "r.yaml")
    error = load_error(tmp_path / "r.yaml")
    assert error.message == "references/r.yaml: cannot read: not a regular file (a FIFO, socket or device)"
    assert error.hint == "replace it with a regular file"


def test_nul_byte_in_a_path_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        read_text(tmp_path / "a\x00b.yaml", "references/a\x00b.yaml")
    assert info.value.message == "references/a\x00b.yaml: cannot read: the path contains a NUL byte"


def test_crlf_is_read_as_newlines_as_in_text_mode(tmp_path):
    assert read_text(write(tmp_path, "r.yaml", b"a: 1\r\nb: 2\rc: 3\n"), "r") == "a: 1\nb: 2\nc: 3\n"


def test_a_file_past_the_size_bound_is_refused_unread(tmp_path, monkeypatch):
    import orch.config.documents

    monkeypatch.setattr(orch.config.documents, "MAX_FILE_BYTES", 8)
    error = load_error(write(tmp_path, "r.yaml", "- a\n- b\n- c\n"))
    assert error.message == "references/r.yaml: cannot read: larger than 8 bytes"


def test_parsed_cache_written_by_another_orch_is_a_miss(tmp_path: Path) -> None:
    """A cache entry that cannot be unpickled (classes moved in another orch) is reparsed."""
    from orch.config import documents

    path = tmp_path / "big.yaml"
    path.write_text("items:\n" + "".join(f"  - {{ID: i{i}, TEXT: {'x' * 40}}}\n" for i in range(6000)))
    cache = tmp_path / "cache"
    first = documents.load_document(path, "big.yaml", cache)
    (entry,) = cache.glob("*.pickle")
    # a pickle of a class from a module that no longer exists, as an old orch wrote it
    entry.write_bytes(
        b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x0eorch.documents\x94\x8c\x08LineDict\x94\x93\x94."
    )
    again = documents.load_document(path, "big.yaml", cache)
    assert again == first
    assert len(again["items"]) == 6000


def test_read_text_allocates_the_files_size_not_the_limit(tmp_path: Path) -> None:
    """read(n) allocates n bytes up front: asking for MAX_FILE_BYTES reserved 1 GiB per file."""
    import tracemalloc

    path = tmp_path / "small.yaml"
    path.write_text("items: [a, b]\n")
    tracemalloc.start()
    try:
        assert read_text(path, "small.yaml") == "items: [a, b]\n"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_read_text_refuses_a_file_over_the_limit_before_reading_it(tmp_path: Path) -> None:
    from orch.config.documents import MAX_FILE_BYTES

    path = tmp_path / "huge.csv"
    with open(path, "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(ConfigError, match=r"huge\.csv: cannot read: larger than 1,073,741,824 bytes"):
        read_text(path, "huge.csv")
