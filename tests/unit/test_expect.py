"""Expect rules (orch.store.checks): each rule's finding, the `known` shortcut, schemas."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orch.config.stages import ExpectRule
from orch.errors import ConfigError
from orch.store.checks import Finding, SchemaStore, check_outputs

SOURCES_SCHEMA = {
    "type": "object",
    "properties": {
        "sources": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "url": {"type": "string"}},
                "required": ["title", "url"],
            },
        }
    },
    "required": ["sources"],
}
FINDINGS_MD = "# Findings\n\n## Summary\nShort.\n\n## Evidence\nSome.\n"


@pytest.fixture
def part(tmp_path: Path) -> Path:
    """A partition directory inside a project rooted at tmp_path."""
    directory = tmp_path / "data" / "p1"
    (directory / ".orch").mkdir(parents=True)
    return directory


def check(
    directory: Path, *rules: ExpectRule, known: dict[str, tuple[int, int]] | None = None
) -> list[Finding]:
    root = directory.parent.parent
    return check_outputs(directory, rules, SchemaStore(root), known)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def stat_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns)


# file exists / missing / not a file


def test_existing_file_passes(part: Path):
    write(part, "out.md", "x")
    assert check(part, ExpectRule(file="out.md")) == []


def test_missing_file_is_an_exists_finding(part: Path):
    findings = check(part, ExpectRule(file="out.md"))
    assert findings == [Finding("out.md", "exists", "missing")]
    assert str(findings[0]) == "out.md: missing (exists)"


def test_a_directory_in_place_of_a_file_is_not_a_regular_file(part: Path):
    (part / "out.md").mkdir()
    assert check(part, ExpectRule(file="out.md")) == [Finding("out.md", "exists", "not a regular file")]


def test_file_in_a_subdirectory(part: Path):
    write(part, "sub/out.md", "x")
    assert check(part, ExpectRule(file="sub/out.md")) == []
    assert check(part, ExpectRule(file="sub/other.md")) == [Finding("sub/other.md", "exists", "missing")]


def test_no_rules_and_empty_directory_pass(part: Path):
    assert check(part) == []


# non_empty and min_bytes


def test_non_empty_rejects_an_empty_file(part: Path):
    write(part, "out.md", "")
    assert check(part, ExpectRule(file="out.md", non_empty=True)) == [
        Finding("out.md", "non_empty", "empty file")
    ]


def test_non_empty_accepts_one_byte(part: Path):
    write(part, "out.md", "x")
    assert check(part, ExpectRule(file="out.md", non_empty=True)) == []


def test_empty_file_passes_without_non_empty(part: Path):
    write(part, "out.md", "")
    assert check(part, ExpectRule(file="out.md")) == []


def test_min_bytes_exact_boundary_passes(part: Path):
    write(part, "out.md", "a" * 400)
    assert check(part, ExpectRule(file="out.md", min_bytes=400)) == []


def test_min_bytes_one_short_fails(part: Path):
    write(part, "out.md", "a" * 399)
    assert check(part, ExpectRule(file="out.md", min_bytes=400)) == [
        Finding("out.md", "min_bytes", "399 bytes, at least 400 expected")
    ]


def test_min_bytes_counts_bytes_not_characters(part: Path):
    write(part, "out.md", "é" * 5)  # 10 bytes in UTF-8
    assert check(part, ExpectRule(file="out.md", min_bytes=10)) == []
    assert check(part, ExpectRule(file="out.md", min_bytes=11)) == [
        Finding("out.md", "min_bytes", "10 bytes, at least 11 expected")
    ]


# headings


def test_headings_present_pass(part: Path):
    write(part, "out.md", FINDINGS_MD)
    assert check(part, ExpectRule(file="out.md", headings=("## Summary", "## Evidence"))) == []


def test_missing_headings_are_all_listed_in_rule_order(part: Path):
    write(part, "out.md", "# Title\n\n## Summary\ntext\n")
    rule = ExpectRule(file="out.md", headings=("## Method", "## Summary", "## Evidence"))
    assert check(part, rule) == [Finding("out.md", "headings", "missing heading '## Method', '## Evidence'")]


@pytest.mark.parametrize(
    "line",
    [
        "## Summary of results",  # longer heading
        "### Summary",  # other level
        " ## Summary",  # indented
        "See ## Summary",  # inside a sentence
        "## summary",  # case differs
    ],
)
def test_heading_must_match_a_whole_line(part: Path, line: str):
    write(part, "out.md", f"# Title\n{line}\ntext\n")
    assert check(part, ExpectRule(file="out.md", headings=("## Summary",))) == [
        Finding("out.md", "headings", "missing heading '## Summary'")
    ]


def test_heading_with_trailing_whitespace_and_crlf_matches(part: Path):
    (part / "out.md").write_bytes(b"# Title\r\n## Summary   \r\ntext\r\n")
    assert check(part, ExpectRule(file="out.md", headings=("## Summary",))) == []


def test_headings_on_non_utf8_file(part: Path):
    (part / "out.md").write_bytes(b"## Summary\n\xff\xfe\n")
    [finding] = check(part, ExpectRule(file="out.md", headings=("## Summary",)))
    assert (finding.file, finding.rule) == ("out.md", "exists")
    assert finding.detail.startswith("cannot read as UTF-8 text: 'utf-8' codec can't decode byte 0xff")


# json


def test_valid_json_passes(part: Path):
    write(part, "data.json", '{"a": [1, 2]}\n')
    assert check(part, ExpectRule(file="data.json", json=True)) == []


def test_invalid_json_reports_the_line(part: Path):
    write(part, "data.json", '{\n  "a": 1,\n  "b": 2\n  "c": 3\n}\n')
    assert check(part, ExpectRule(file="data.json", json=True)) == [
        Finding("data.json", "json", "invalid JSON at line 4: Expecting ',' delimiter")
    ]


def test_empty_json_file_is_a_non_empty_finding(part: Path):
    write(part, "data.json", "")
    assert check(part, ExpectRule(file="data.json", json=True)) == [
        Finding("data.json", "non_empty", "empty file")
    ]


# schema


@pytest.fixture
def schema_rule(tmp_path: Path) -> ExpectRule:
    path = tmp_path / "references" / "schemas" / "sources.schema.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(SOURCES_SCHEMA))
    return ExpectRule(file="sources.json", json=True, schema="references/schemas/sources.schema.json")


def test_schema_valid_document_passes(part: Path, schema_rule: ExpectRule):
    write(part, "sources.json", json.dumps({"sources": [{"title": "T", "url": "https://x.org"}]}))
    assert check(part, schema_rule) == []


def test_schema_error_names_schema_and_json_path(part: Path, schema_rule: ExpectRule):
    write(part, "sources.json", json.dumps({"sources": [{"title": "T"}]}))
    assert check(part, schema_rule) == [
        Finding(
            "sources.json",
            "schema",
            "references/schemas/sources.schema.json: at sources/0: 'url' is a required property",
        )
    ]


def test_schema_error_at_the_root(part: Path, schema_rule: ExpectRule):
    write(part, "sources.json", "{}")
    assert check(part, schema_rule) == [
        Finding(
            "sources.json",
            "schema",
            "references/schemas/sources.schema.json: at (root): 'sources' is a required property",
        )
    ]


def test_schema_error_deep_in_the_document(part: Path, schema_rule: ExpectRule):
    doc = {"sources": [{"title": "T", "url": "u"}, {"title": 7, "url": "u"}]}
    write(part, "sources.json", json.dumps(doc))
    assert check(part, schema_rule) == [
        Finding(
            "sources.json",
            "schema",
            "references/schemas/sources.schema.json: at sources/1/title: 7 is not of type 'string'",
        )
    ]


def test_invalid_json_under_a_schema_rule_is_a_json_finding(part: Path, schema_rule: ExpectRule):
    write(part, "sources.json", "{not json")
    [finding] = check(part, schema_rule)
    assert (finding.rule, finding.detail) == (
        "json",
        "invalid JSON at line 1: Expecting property name enclosed in double quotes",
    )


# glob


def test_glob_with_enough_matches_passes(part: Path):
    for i in range(3):
        write(part, f"notes/n{i}.md", FINDINGS_MD)
    assert check(part, ExpectRule(glob="notes/*.md", min_count=3, headings=("## Summary",))) == []


def test_glob_with_too_few_matches_counts_them(part: Path):
    write(part, "notes/n1.md", "x")
    write(part, "notes/n2.md", "x")
    write(part, "notes/other.txt", "x")
    assert check(part, ExpectRule(glob="notes/*.md", min_count=3)) == [
        Finding("notes/*.md", "glob", "2 files match, at least 3 expected")
    ]


def test_glob_with_no_match_and_default_min(part: Path):
    assert check(part, ExpectRule(glob="*.md")) == [
        Finding("*.md", "glob", "0 files match, at least 1 expected")
    ]


def test_glob_checks_every_match(part: Path):
    write(part, "n1.md", FINDINGS_MD)
    write(part, "n2.md", "# no headings\n")
    write(part, "n3.md", "")
    rule = ExpectRule(glob="*.md", min_count=3, non_empty=True, headings=("## Summary",))
    assert check(part, rule) == [
        Finding("n2.md", "headings", "missing heading '## Summary'"),
        Finding("n3.md", "non_empty", "empty file"),
    ]


def test_glob_excludes_the_orch_directory(part: Path):
    write(part, ".orch/prompt.md", "# prompt without headings\n")
    write(part, "sub/.orch/x.md", "# nor here\n")
    write(part, "a.md", FINDINGS_MD)
    rule = ExpectRule(glob="**/*.md", min_count=2, headings=("## Summary",))
    assert check(part, rule) == [Finding("**/*.md", "glob", "1 files match, at least 2 expected")]


# symlinks


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside.md"
    path.write_text(FINDINGS_MD)
    return path


def test_rule_file_symlinked_outside_is_a_symlink_finding(part: Path, outside: Path):
    os.symlink(outside, part / "out.md")
    target = os.path.realpath(outside)
    # known={} checks the rule's file only (no tree walk).
    assert check(part, ExpectRule(file="out.md", headings=("## Summary",)), known={}) == [
        Finding("out.md", "symlink", f"symlink points outside the partition: {target}")
    ]


def test_relative_symlink_escaping_with_dotdot(part: Path, outside: Path):
    os.symlink("../../outside.md", part / "out.md")
    assert check(part, ExpectRule(file="out.md"), known={}) == [
        Finding("out.md", "symlink", f"symlink points outside the partition: {os.path.realpath(outside)}")
    ]


def test_rule_file_symlinked_outside_is_reported_once(part: Path, outside: Path):
    os.symlink(outside, part / "out.md")
    target = os.path.realpath(outside)
    assert check(part, ExpectRule(file="out.md")) == [
        Finding("out.md", "symlink", f"symlink points outside the partition: {target}")
    ]


def test_walk_finds_symlinks_outside_anywhere_in_the_tree(part: Path, outside: Path, tmp_path: Path):
    write(part, "out.md", "x")
    (part / "deep" / "er").mkdir(parents=True)
    os.symlink(outside, part / "deep" / "er" / "link.md")
    os.symlink(tmp_path, part / "dirlink")
    assert check(part, ExpectRule(file="out.md")) == [
        Finding(
            "deep/er/link.md", "symlink", f"symlink points outside the partition: {os.path.realpath(outside)}"
        ),
        Finding("dirlink", "symlink", f"symlink points outside the partition: {os.path.realpath(tmp_path)}"),
    ]


def test_walk_runs_only_when_known_is_none(part: Path, outside: Path):
    write(part, "out.md", "x")
    os.symlink(outside, part / "stray.md")
    assert check(part, ExpectRule(file="out.md"), known={}) == []
    assert [f.rule for f in check(part, ExpectRule(file="out.md"))] == ["symlink"]


def test_symlink_pointing_inside_is_fine(part: Path):
    write(part, "real/out.md", FINDINGS_MD)
    os.symlink("real/out.md", part / "out.md")
    os.symlink(part / "real", part / "alias")
    assert check(part, ExpectRule(file="out.md", headings=("## Summary", "## Evidence"))) == []


def test_symlink_inside_is_checked_through(part: Path):
    write(part, "real.md", "no headings\n")
    os.symlink("real.md", part / "out.md")
    assert check(part, ExpectRule(file="out.md", headings=("## Summary",))) == [
        Finding("out.md", "headings", "missing heading '## Summary'")
    ]


def test_dangling_symlink_inside_is_missing(part: Path):
    os.symlink("gone.md", part / "out.md")
    assert check(part, ExpectRule(file="out.md")) == [Finding("out.md", "exists", "missing")]


# the `known` shortcut


def corrupt_keeping_stat(path: Path, text: str) -> None:
    """Overwrite `path` with `text` of the same size and restore its mtime."""
    before = path.stat()
    assert len(text.encode()) == before.st_size
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_known_file_with_unchanged_stat_is_not_reread(part: Path):
    path = write(part, "out.md", "## Summary\n")
    rule = ExpectRule(file="out.md", headings=("## Summary",))
    known = {"out.md": stat_key(path)}
    corrupt_keeping_stat(path, "## Xummary\n")
    assert check(part, rule, known=known) == []
    # The same file, checked in full, fails: the shortcut is what passed it.
    assert check(part, rule) == [Finding("out.md", "headings", "missing heading '## Summary'")]


def test_known_json_with_unchanged_stat_is_not_reparsed(part: Path):
    path = write(part, "data.json", '{"a": 1}\n')
    known = {"data.json": stat_key(path)}
    corrupt_keeping_stat(path, '{"a": 1,\n')
    assert check(part, ExpectRule(file="data.json", json=True), known=known) == []


def test_known_file_with_changed_size_is_rechecked(part: Path):
    path = write(part, "out.md", "## Summary\n")
    known = {"out.md": stat_key(path)}
    before = path.stat()
    path.write_text("## Sum\n", encoding="utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert check(part, ExpectRule(file="out.md", headings=("## Summary",)), known=known) == [
        Finding("out.md", "headings", "missing heading '## Summary'")
    ]


def test_known_file_with_changed_mtime_is_rechecked(part: Path):
    path = write(part, "out.md", "## Summary\n")
    known = {"out.md": stat_key(path)}
    before = path.stat()
    path.write_text("## Xummary\n", encoding="utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert check(part, ExpectRule(file="out.md", headings=("## Summary",)), known=known) == [
        Finding("out.md", "headings", "missing heading '## Summary'")
    ]


def test_known_does_not_skip_existence_or_size_checks(part: Path):
    path = write(part, "out.md", "a" * 10)
    known = {"out.md": stat_key(path), "gone.md": (1, 1)}
    assert check(part, ExpectRule(file="out.md", min_bytes=11), ExpectRule(file="gone.md"), known=known) == [
        Finding("out.md", "min_bytes", "10 bytes, at least 11 expected"),
        Finding("gone.md", "exists", "missing"),
    ]


# SchemaStore


def test_schema_store_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        SchemaStore(tmp_path).validator("references/schemas/nope.json")
    assert str(info.value) == (
        "references/schemas/nope.json: schema file not found (named by an expect rule in orch.yaml)"
    )


def test_schema_store_invalid_json(tmp_path: Path):
    (tmp_path / "bad.json").write_text('{"type": "object",\n')
    with pytest.raises(ConfigError) as info:
        SchemaStore(tmp_path).validator("bad.json")
    assert str(info.value) == (
        "bad.json: cannot read JSON schema: Expecting property name enclosed in double quotes: "
        "line 2 column 1 (char 19)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"type": "strng"}',
            "bad.json: invalid JSON Schema: 'strng' is not valid under any of the given schemas",
        ),
        ('{"minItems": -1}', "bad.json: invalid JSON Schema: -1 is less than the minimum of 0"),
        ("[]", "bad.json: invalid JSON Schema: [] is not of type 'object', 'boolean'"),
    ],
)
def test_schema_store_invalid_schema(tmp_path: Path, text: str, message: str):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(ConfigError) as info:
        SchemaStore(tmp_path).validator("bad.json")
    assert str(info.value) == message


@pytest.mark.parametrize("text", ["null", "42"])
def test_schema_store_scalar_document_is_a_config_error(tmp_path: Path, text: str):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(ConfigError) as info:
        SchemaStore(tmp_path).validator("bad.json")
    assert str(info.value).startswith("bad.json: invalid JSON Schema: ")


def test_check_outputs_raises_config_error_for_a_missing_schema(part: Path):
    write(part, "sources.json", "{}")
    with pytest.raises(ConfigError) as info:
        check(part, ExpectRule(file="sources.json", json=True, schema="schemas/missing.json"))
    assert (
        str(info.value)
        == "schemas/missing.json: schema file not found (named by an expect rule in orch.yaml)"
    )


def test_schema_store_loads_each_schema_once(tmp_path: Path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(SOURCES_SCHEMA))
    store = SchemaStore(tmp_path)
    first = store.validator("s.json")
    path.unlink()
    assert store.validator("s.json") is first
    assert store.schema("s.json") == SOURCES_SCHEMA


# hostile outputs: streamed or capped reads, never a whole file in memory, never a hang


def test_headings_are_found_after_a_line_longer_than_any_heading(part: Path):
    with open(part / "out.md", "wb") as handle:
        handle.write(b"# Title\n" + b"x" * (3 << 20) + b"\n## Summary\n")
    assert check(part, ExpectRule(file="out.md", headings=("## Summary",))) == []


def test_a_heading_split_across_read_chunks_is_found(part: Path):
    head = b"a" * ((1 << 20) - 4) + b"\n"  # "## Summary" straddles the first 1 MiB read
    (part / "out.md").write_bytes(head + b"## Summary\nend\n")
    assert check(part, ExpectRule(file="out.md", headings=("## Summary",))) == []


def test_a_long_line_ending_in_heading_text_is_not_a_heading(part: Path):
    (part / "out.md").write_bytes(b"y" * 10_000 + b"## Summary\n")
    [finding] = check(part, ExpectRule(file="out.md", headings=("## Summary",)))
    assert (finding.rule, finding.detail) == ("headings", "missing heading '## Summary'")


def test_headings_in_a_sparse_file_larger_than_memory_would_allow_are_scanned(part: Path):
    path = part / "out.md"
    path.write_bytes(b"## Summary\n")
    os.truncate(path, 200 << 20)  # 200 MiB of NUL bytes after the heading
    assert check(part, ExpectRule(file="out.md", headings=("## Summary", "## Evidence"))) == [
        Finding("out.md", "headings", "missing heading '## Evidence'")
    ]


def test_json_above_the_cap_is_a_finding_without_reading_it(part: Path):
    path = part / "data.json"
    path.write_bytes(b"{}")
    os.truncate(path, 10 << 30)  # sparse: 10 GiB
    [finding] = check(part, ExpectRule(file="data.json", json=True))
    assert finding == Finding(
        "data.json", "json", f"{10 << 30} bytes, above the 67108864 byte limit for JSON checks"
    )


def test_json_nested_too_deeply_is_a_finding(part: Path):
    (part / "data.json").write_text("[" * 100_000 + "]" * 100_000)
    [finding] = check(part, ExpectRule(file="data.json", json=True))
    assert (finding.rule, finding.detail) == ("json", "JSON nested too deeply to check")


def test_a_fifo_named_by_a_rule_is_not_a_regular_file_and_never_opened(part: Path):
    os.mkfifo(part / "out.md")  # opening it for reading would block for ever
    [finding] = check(part, ExpectRule(file="out.md", headings=("## Summary",)))
    assert finding == Finding("out.md", "exists", "not a regular file")


def test_open_regular_refuses_a_fifo_at_once(part: Path):
    from orch.store.checks import open_regular

    os.mkfifo(part / "pipe")
    with pytest.raises(OSError, match="not a regular file"):
        open_regular(part / "pipe")


def test_a_tree_too_deep_for_path_names_is_a_finding_not_a_crash(part: Path):
    import subprocess

    write(part, "out.md", "## Summary\n")
    here = os.getcwd()
    os.chdir(part)
    try:
        for _ in range(2100):  # paths past PATH_MAX (4096 bytes)
            os.mkdir("dd")
            os.chdir("dd")
    finally:
        os.chdir(here)
    try:
        findings = check(part, ExpectRule(file="out.md", headings=("## Summary",)))
        assert [(f.rule, f.detail) for f in findings] == [("exists", "cannot list: File name too long")]
    finally:
        subprocess.run(["rm", "-rf", str(part / "dd")], check=True)


def test_checking_a_removed_directory_gives_findings(part: Path):
    findings = check(part / "gone", ExpectRule(file="out.md"), ExpectRule(glob="*.md"))
    assert [(f.file, f.rule) for f in findings] == [("out.md", "exists"), ("*.md", "glob"), (".", "exists")]


# SchemaStore: $ref resolved once, locally (issue 10, item 7)


def schema_with_ref(tmp_path: Path, ref: str) -> SchemaStore:
    (tmp_path / "schemas").mkdir(exist_ok=True)
    (tmp_path / "schemas" / "s.json").write_text(
        json.dumps({"$defs": {"n": {"type": "integer"}}, "properties": {"x": {"$ref": ref}}})
    )
    return SchemaStore(tmp_path)


def test_schema_refs_to_fragments_and_project_files_resolve_at_load(tmp_path: Path):
    (tmp_path / "schemas" / "common").mkdir(parents=True)
    (tmp_path / "schemas" / "common" / "url.json").write_text(
        json.dumps({"$defs": {"u": {"$ref": "str.json"}}})
    )
    (tmp_path / "schemas" / "common" / "str.json").write_text(json.dumps({"type": "string"}))
    store = schema_with_ref(tmp_path, "common/url.json#/$defs/u")
    validator = store.validator("schemas/s.json")
    (tmp_path / "schemas" / "common" / "str.json").unlink()  # resolved once: never read again
    assert [e.message for e in validator.iter_errors({"x": 1})] == ["1 is not of type 'string'"]
    assert not list(schema_with_ref(tmp_path, "#/$defs/n").validator("schemas/s.json").iter_errors({"x": 1}))


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("https://example.com/s.json", "only files inside the project are allowed, not URLs"),
        ("http://127.0.0.1:9/s.json", "only files inside the project are allowed, not URLs"),
        ("file:///etc/passwd", "/etc/passwd is outside the project"),
        ("../../outside.json", "is outside the project"),
        ("missing.json", "schemas/missing.json: file not found"),
        ("#/$defs/nowhere", "/$defs/nowhere"),
    ],
)
def test_unresolvable_or_remote_schema_refs_fail_at_load(tmp_path: Path, ref: str, why: str):
    with pytest.raises(ConfigError) as info:
        schema_with_ref(tmp_path, ref).validator("schemas/s.json")
    assert info.value.message.startswith(f"schemas/s.json: $ref '{ref}' cannot be resolved: ")
    assert why in info.value.message
    assert info.value.hint == (
        "point $ref at a '#/...' fragment or a JSON file inside the project, by a relative path"
    )


def test_schema_outside_the_project_or_not_a_regular_file_is_refused(tmp_path: Path):
    import os

    with pytest.raises(ConfigError) as info:
        SchemaStore(tmp_path).validator("../s.json")
    assert info.value.message == (
        "../s.json: schema file must be inside the project (named by an expect rule in orch.yaml)"
    )
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(ConfigError) as info:
        SchemaStore(tmp_path).validator("fifo.json")
    assert info.value.message == "fifo.json: cannot read: not a regular file (a FIFO, socket or device)"
    (tmp_path / "deep.json").write_text("[" * 200 + "]" * 200)
    with pytest.raises(ConfigError) as info:
        SchemaStore(tmp_path).validator("deep.json")
    assert info.value.message == "deep.json: cannot read JSON schema: it nests deeper than 100 levels"
