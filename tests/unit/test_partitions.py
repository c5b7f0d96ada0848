"""Partitions: safe ids, ordering, rows from YAML/JSON/CSV, fan-in groups, needs, output dirs."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from orch.config.partitions import ALL_ID, Partition, PartitionIndex, check_partition_id, sort_key
from orch.config.project import load_project
from orch.errors import ConfigError, PartitionError, UsageError


def make_index(root: Path, config: str, files: dict[str, str]) -> PartitionIndex:
    root.mkdir(parents=True, exist_ok=True)
    (root / "orch.yaml").write_text(textwrap.dedent(config), encoding="utf-8")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return PartitionIndex(load_project(root.resolve()))


def stage_error(index: PartitionIndex, stage: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        index.for_stage(stage)
    return info.value


def one_stage(source: str, output: str = "data/j/<ID>") -> str:
    return f"stages:\n  j:\n    blueprint: a.md\n    partitions: {source}\n    output: {output}\n"


PIPELINE = """\
vars: {IND: ev}
stages:
  f:
    blueprint: a.md
    partitions: {from: references/fw.yaml, path: functions, id: FID}
    output: data/<IND>/f/<FID>
  g:
    blueprint: a.md
    partitions: {from: references/fw.yaml, path: functions, id: FID}
    needs: [f]
    output: data/<IND>/g/<FID>
  feat:
    blueprint: a.md
    fan_in: {from: f, by: FEAT}
    partitions: {from: references/fw.yaml, path: features, id: FEAT}
    output: data/<IND>/feat/<FEAT>
  all:
    blueprint: a.md
    fan_in: {from: feat}
    output: data/<IND>/all
"""

FUNCTIONS = """\
functions:
  - {FID: "1.10", FEAT: "1", NAME: ten}
  - {FID: "1.2", FEAT: "1", NAME: two}
  - {FID: "2.1", FEAT: "2", NAME: x, priority: 5}
  - {FID: "1.9", FEAT: "1", NAME: nine}
"""
FEATURES = """\
features:
  - {FEAT: "1", TITLE: One}
  - {FEAT: "2", TITLE: Two}
"""


def pipeline(tmp_path: Path, functions: str = FUNCTIONS, features: str = FEATURES) -> PartitionIndex:
    return make_index(tmp_path / "p", PIPELINE, {"references/fw.yaml": functions + features})


# -- ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("café_1", "café_1"), ("1.2_x-y", "1.2_x-y"), ("日本", "日本"), (7, "7"), ("x" * 200, "x" * 200)],
)
def test_safe_ids_are_accepted(value, expected):
    assert check_partition_id(value, "r.yaml:3") == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "it is empty"),
        ("../x", "it contains a path separator"),
        ("a/b", "it contains a path separator"),
        ("a\\b", "it contains a path separator"),
        ("a\x00b", "it contains a NUL byte"),
        ("..", "it contains '..'"),
        ("a..b", "it contains '..'"),
        (".hidden", "it starts with '.' (hidden, and reserved for staging directories)"),
        ("x" * 201, "it is longer than 200 bytes"),
        ("é" * 101, "it is longer than 200 bytes"),
        ("a b", "it contains ' '"),
        ("a:b*c", "it contains '*', ':'"),
    ],
)
def test_unsafe_ids_are_rejected_with_the_reason(value, reason):
    with pytest.raises(PartitionError) as info:
        check_partition_id(value, "references/r.yaml:3")
    assert (
        info.value.message
        == f"references/r.yaml:3: partition id {value!r} is not a safe path segment: {reason}"
    )
    assert info.value.hint == "use letters, digits, '.', '_' and '-' only"


@pytest.mark.parametrize("value", [1.5, None, True, ["a"]])
def test_ids_must_be_text(value):
    with pytest.raises(PartitionError) as info:
        check_partition_id(value, "references/r.yaml:3")
    assert info.value.message == f"references/r.yaml:3: partition id {value!r} must be text"
    assert info.value.hint == "quote the id in the references file"


# -- ordering ----------------------------------------------------------------------------------


def by_key(ids_and_priorities: list[tuple[str, float]]) -> list[str]:
    partitions = [
        Partition("s", pid, {}, {}, f"data/{pid}", "r", priority=p) for pid, p in ids_and_priorities
    ]
    return [p.id for p in sorted(partitions, key=sort_key)]


def test_natural_order_of_ids():
    ids = ["1.10", "10", "1.2", "2", "a10", "a9", "1.9", "b"]
    assert by_key([(i, 0) for i in ids]) == ["1.2", "1.9", "1.10", "2", "10", "a9", "a10", "b"]


def test_priority_first_then_natural_order():
    ordered = by_key([("1.10", 0), ("1.2", 0), ("3", 1), ("2.5", 5), ("0", -1)])
    assert ordered == ["2.5", "3", "1.2", "1.10", "0"]


def test_sort_key_handles_every_accepted_id():
    assert check_partition_id("size_10²", "r.yaml:2") == "size_10²"
    assert by_key([("size_10²", 0), ("size_2", 0)]) == ["size_2", "size_10²"]


def test_stage_partitions_come_in_start_order(tmp_path):
    index = pipeline(tmp_path)
    assert [p.id for p in index.for_stage("f")] == ["2.1", "1.2", "1.9", "1.10"]
    assert [p.priority for p in index.for_stage("f")] == [5.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("priority", "message"),
    [
        ("high", "references/r.yaml:1: priority 'high' must be a number"),
        (".nan", "references/r.yaml:1: priority must be a number, not NaN"),
    ],
)
def test_bad_priority(tmp_path, priority, message):
    index = make_index(
        tmp_path,
        one_stage("{from: references/r.yaml, id: ID}"),
        {"references/r.yaml": f"- {{ID: a, priority: {priority}}}\n"},
    )
    assert stage_error(index, "j").message == message


# -- rows from YAML, JSON and CSV ---------------------------------------------------------------


def test_fan_out_partition_has_params_row_source_and_out_dir(tmp_path):
    index = pipeline(tmp_path)
    partition = index.get("f", "1.10")
    assert dict(partition.params) == {"IND": "ev", "FID": "1.10", "FEAT": "1", "NAME": "ten"}
    assert dict(partition.row) == {"FID": "1.10", "FEAT": "1", "NAME": "ten"}
    assert (partition.out_dir, partition.source, partition.children) == (
        "data/ev/f/1.10",
        "references/fw.yaml:2",
        (),
    )


def test_row_fields_override_vars_and_stage_vars(tmp_path):
    config = (
        "vars: {A: project, B: project}\n"
        + one_stage("{from: references/r.yaml, id: ID}")
        + "    vars: {B: stage, C: stage}\n"
    )
    index = make_index(tmp_path, config, {"references/r.yaml": "- {ID: a, C: row}\n"})
    assert dict(index.get("j", "a").params) == {"A": "project", "B": "stage", "C": "row", "ID": "a"}


def test_params_read_as_the_merged_dict_of_vars_stage_vars_and_row(tmp_path):
    config = (
        "vars: {A: project, B: project}\n"
        + one_stage("{from: references/r.yaml, id: ID}")
        + "    vars: {B: stage, C: stage}\n"
    )
    index = make_index(tmp_path, config, {"references/r.yaml": "- {ID: a, C: row, D: d}\n"})
    params = index.get("j", "a").params
    merged = {"A": "project", "B": "stage", "C": "row", "ID": "a", "D": "d"}
    assert (list(params), list(params.items()), len(params)) == (list(merged), list(merged.items()), 5)
    assert params == merged and "C" in params and "E" not in params and params.get("E") is None
    with pytest.raises(KeyError):
        params["E"]


def test_integer_ids_become_text(tmp_path):
    index = make_index(
        tmp_path, one_stage("{from: references/r.yaml, id: ID}"), {"references/r.yaml": "- {ID: 7}\n"}
    )
    assert index.get("j", "7").params["ID"] == "7"


def test_zero_padded_yaml_id_is_not_silently_renamed(tmp_path):
    index = make_index(
        tmp_path, one_stage("{from: references/r.yaml, id: ID}"), {"references/r.yaml": "- {ID: 010}\n"}
    )
    try:
        ids = [p.id for p in index.for_stage("j")]
    except PartitionError:
        return  # rejecting the unquoted id is as good as keeping it
    assert ids == ["010"]


def test_csv_rows_carry_their_line(tmp_path):
    index = make_index(
        tmp_path,
        one_stage("{from: references/r.csv, id: ID}"),
        {"references/r.csv": "ID,NOTE\nb,x\n\na,y\n"},
    )
    assert [(p.id, p.source, dict(p.row)) for p in index.for_stage("j")] == [
        ("a", "references/r.csv:4", {"ID": "a", "NOTE": "y"}),
        ("b", "references/r.csv:2", {"ID": "b", "NOTE": "x"}),
    ]


def test_json_rows_are_located_by_key_path_and_index(tmp_path):
    index = make_index(
        tmp_path,
        one_stage("{from: references/r.json, path: data.items, id: ID}"),
        {"references/r.json": '{"data": {"items": [{"ID": "a"}, {"ID": "b", "X": [1, 2]}]}}'},
    )
    assert [(p.id, p.source) for p in index.for_stage("j")] == [
        ("a", "references/r.json: data.items[0]"),
        ("b", "references/r.json: data.items[1]"),
    ]
    assert index.get("j", "b").params["X"] == [1, 2]


def test_key_path_can_index_a_list(tmp_path):
    index = make_index(
        tmp_path,
        one_stage("{from: references/r.yaml, path: groups.1, id: ID}"),
        {"references/r.yaml": "groups:\n  - [{ID: first}]\n  - [{ID: second}]\n"},
    )
    assert [p.id for p in index.for_stage("j")] == ["second"]


@pytest.mark.parametrize(
    ("source", "files", "message"),
    [
        (
            "{from: references/r.json, path: data.items, id: ID}",
            {"references/r.json": '{"data": {"itemz": []}}'},
            "references/r.json: no key 'items' (stages.j.partitions.path in orch.yaml); "
            "did you mean 'itemz'?",
        ),
        (
            "{from: references/r.json, path: data.items, id: ID}",
            {"references/r.json": '{"data": {"items": {"ID": "a"}}}'},
            "references/r.json: expected a list of rows at 'data.items', got dict",
        ),
        (
            "{from: references/r.json, path: data.items, id: ID}",
            {"references/r.json": '{"data": {"items": ["a"]}}'},
            "references/r.json: data.items[0]: row must be a mapping of fields, got 'a'",
        ),
        (
            "{from: references/r.yaml, id: ID}",
            {"references/r.yaml": "- {ID: a}\n- {IDD: b}\n"},
            "references/r.yaml:2: row has no id field 'ID'; did you mean 'IDD'?",
        ),
        (
            "{from: references/r.yaml, id: ID}",
            {"references/r.yaml": "- {ID: a}\n- {Id: b}\n"},
            "references/r.yaml:2: row has no id field 'ID'; did you mean 'Id'?",
        ),
        (
            "{from: references/r.yaml, id: ID}",
            {"references/r.yaml": "- {ID: a}\n- {ID: 1.10}\n"},
            "references/r.yaml:2: partition id 1.1 must be text",
        ),
        (
            "{from: references/r.yaml, id: ID}",
            {"references/r.yaml": "- {ID: a}\n- {ID: b}\n- {ID: a}\n"},
            "references/r.yaml:3: duplicate partition id 'a' (first at references/r.yaml:1)",
        ),
        (
            "{from: references/r.csv, id: ID}",
            {"references/r.csv": "ID\nok\n../x\n"},
            "references/r.csv:3: partition id '../x' is not a safe path segment: "
            "it contains a path separator",
        ),
        (
            "{from: references/r.yaml, id: ID}",
            {"references/r.yaml": ""},
            "references/r.yaml: the file is empty (stage j)",
        ),
        (
            "{from: references/r.yaml, path: items, id: ID}",
            {"references/r.yaml": "items: []\n"},
            "references/r.yaml: no partitions: the list at 'items' is empty (stage j)",
        ),
        (
            "{from: references/r.csv, id: ID}",
            {"references/r.csv": "ID\n"},
            "references/r.csv: no partitions: the list at the top level is empty (stage j)",
        ),
        ("{from: references/none.yaml, id: ID}", {}, "references/none.yaml: file not found"),
        (
            "{from: ../outside.yaml, id: ID}",
            {},
            "../outside.yaml: references file must be inside the project",
        ),
    ],
)
def test_row_errors_name_the_file_and_row(tmp_path, source, files, message):
    index = make_index(tmp_path, one_stage(source), files)
    assert stage_error(index, "j").message == message


def test_references_file_is_read_once_per_index(tmp_path):
    index = pipeline(tmp_path)
    index.for_stage("f")
    (tmp_path / "p" / "references" / "fw.yaml").write_text("functions: []\n")
    assert [p.id for p in index.for_stage("g")] == ["2.1", "1.2", "1.9", "1.10"]


def test_references_file_is_dropped_once_no_stage_still_to_load_reads_it(tmp_path):
    index = pipeline(tmp_path)
    index.for_stage("g")  # loads f too; feat still reads fw.yaml
    assert list(index._documents) == ["references/fw.yaml"]
    index.for_stage("all")
    assert index._documents == {}


def test_get_unknown_partition_suggests_nearest(tmp_path):
    with pytest.raises(UsageError) as info:
        pipeline(tmp_path).get("f", "1.100")
    assert (info.value.message, info.value.hint) == (
        "stage f has no partition '1.100'; did you mean '1.10'?",
        "list them with: orch plan f",
    )


# -- needs and fan-in ---------------------------------------------------------------------------


def test_needs_pairs_partitions_by_id(tmp_path):
    index = pipeline(tmp_path)
    assert [(p.id, p.children) for p in index.for_stage("g")] == [
        ("2.1", (("f", "2.1"),)),
        ("1.2", (("f", "1.2"),)),
        ("1.9", (("f", "1.9"),)),
        ("1.10", (("f", "1.10"),)),
    ]


def test_needs_with_an_id_missing_upstream(tmp_path):
    config = PIPELINE.replace(
        "    partitions: {from: references/fw.yaml, path: functions, id: FID}\n    needs",
        "    partitions: {from: references/g.yaml, id: FID}\n    needs",
    )
    index = make_index(
        tmp_path,
        config,
        {"references/fw.yaml": FUNCTIONS + FEATURES, "references/g.yaml": '- {FID: "1.2"}\n- {FID: "7.7"}\n'},
    )
    error = stage_error(index, "g")
    assert error.message == (
        "references/g.yaml:2: partition 7.7 of stage g needs partition 7.7 of stage f, which does not exist"
    )
    assert error.hint == "stages.g.needs pairs partitions by id; give both stages the same ids"


def test_fan_in_groups_children_with_group_row_fields(tmp_path):
    index = pipeline(tmp_path)
    one, two = index.get("feat", "1"), index.get("feat", "2")
    assert [p.id for p in index.for_stage("feat")] == ["2", "1"]
    assert one.children == (("f", "1.2"), ("f", "1.9"), ("f", "1.10"))
    assert dict(one.row) == {"FEAT": "1", "TITLE": "One"}
    assert dict(one.params) == {"IND": "ev", "FEAT": "1", "TITLE": "One"}
    assert (one.out_dir, one.source, one.priority) == ("data/ev/feat/1", "references/fw.yaml:7", 0.0)
    assert (two.children, two.priority) == ((("f", "2.1"),), 5.0)


def test_fan_in_without_by_gathers_everything_into_one_partition(tmp_path):
    (partition,) = pipeline(tmp_path).for_stage("all")
    assert partition.id == ALL_ID
    assert partition.children == (("feat", "2"), ("feat", "1"))
    assert (partition.out_dir, partition.source) == ("data/ev/all", "orch.yaml:19: stages.all group all")


def test_fan_in_child_without_the_by_field(tmp_path):
    index = pipeline(
        tmp_path, functions=FUNCTIONS.replace('{FID: "1.9", FEAT: "1", NAME: nine}', '{FID: "1.9"}')
    )
    error = stage_error(index, "feat")
    assert error.message == (
        "references/fw.yaml:5: partition 1.9 of stage f has no field 'FEAT' to group by "
        "(stages.feat.fan_in.by in orch.yaml)"
    )
    assert error.hint == "give every row of f a FEAT field"


def test_fan_in_group_row_without_children_names_the_group(tmp_path):
    index = pipeline(tmp_path, features=FEATURES + '  - {FEAT: "3", TITLE: Three}\n')
    error = stage_error(index, "feat")
    assert error.message == "references/fw.yaml:9: fan-in group '3' of stage feat has no children in stage f"
    assert error.hint == "add partitions with FEAT: 3, or remove the group"


def test_fan_in_child_naming_a_missing_group_names_the_group(tmp_path):
    index = pipeline(tmp_path, functions=FUNCTIONS.replace('FEAT: "1", NAME: nine', 'FEAT: "9", NAME: nine'))
    error = stage_error(index, "feat")
    assert error.message == (
        "references/fw.yaml:5: fan-in group '9' of stage feat (from f partition 1.9) "
        "is not a row of references/fw.yaml"
    )
    assert error.hint == "add the group to references/fw.yaml or fix the child's FEAT"


def test_fan_in_group_value_must_be_a_safe_id(tmp_path):
    index = pipeline(
        tmp_path, functions=FUNCTIONS.replace('FEAT: "1", NAME: nine', 'FEAT: "a/b", NAME: nine')
    )
    assert stage_error(index, "feat").message == (
        "references/fw.yaml:5 (FEAT): partition id 'a/b' is not a safe path segment: "
        "it contains a path separator"
    )


# -- output directories ---------------------------------------------------------------------------


ONE = {"references/r.yaml": "- {ID: a}\n- {ID: b}\n"}


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (
            "../outside/<ID>",
            "orch.yaml:5: stages.j.output: output directory '../outside/a' of partition a "
            "(references/r.yaml:1) is not inside the project's data area",
        ),
        (
            "data/../../x/<ID>",
            "orch.yaml:5: stages.j.output: output directory 'data/../../x/a' of partition a "
            "(references/r.yaml:1) is not inside the project's data area",
        ),
        (
            "wip/<ID>",
            "orch.yaml:5: stages.j.output: output directory 'wip/a' of partition a "
            "(references/r.yaml:1) is not inside the project's data area",
        ),
        (
            ".git/<ID>",
            "orch.yaml:5: stages.j.output: output directory '.git/a' of partition a "
            "(references/r.yaml:1) is not inside the project's data area",
        ),
        ("data/j", "orch.yaml:5: stages.j.output: partitions j/a and j/b both write to 'data/j'"),
        ("data/j/<IDD>", "orch.yaml:5: stages.j.output: unknown placeholder <IDD>; did you mean <ID>?"),
    ],
)
def test_output_directory_errors(tmp_path, output, message):
    index = make_index(tmp_path, one_stage("{from: references/r.yaml, id: ID}", output), ONE)
    assert stage_error(index, "j").message == message


def test_output_escaping_through_a_variable_value(tmp_path):
    config = "vars: {BASE: ../..}\n" + one_stage("{from: references/r.yaml, id: ID}", "data/<BASE>/<ID>")
    index = make_index(tmp_path / "p", config, ONE)
    assert stage_error(index, "j").message == (
        "orch.yaml:6: stages.j.output: output directory 'data/../../a' of partition a "
        "(references/r.yaml:1) is not inside the project's data area"
    )


def test_output_escaping_through_a_symlinked_directory(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    index = make_index(tmp_path / "p", one_stage("{from: references/r.yaml, id: ID}", "data/link/<ID>"), ONE)
    (tmp_path / "p" / "data").mkdir()
    os.symlink(outside, tmp_path / "p" / "data" / "link")
    error = stage_error(index, "j")
    assert error.message == (
        f"orch.yaml:5: stages.j.output: output directory 'data/link/a' of partition a resolves to "
        f"{outside.resolve()}/a, outside the project (through a symlink)"
    )
    assert error.hint == "remove the symlink or point the output template elsewhere"


def test_output_directory_that_is_itself_a_symlink_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    index = make_index(tmp_path / "p", one_stage("{from: references/r.yaml, id: ID}"), ONE)
    (tmp_path / "p" / "data" / "j").mkdir(parents=True)
    os.symlink(outside, tmp_path / "p" / "data" / "j" / "b")
    assert stage_error(index, "j").message == (
        f"orch.yaml:5: stages.j.output: output directory 'data/j/b' of partition b resolves to "
        f"{outside.resolve()}, outside the project (through a symlink)"
    )


def test_symlink_inside_the_project_is_allowed(tmp_path):
    index = make_index(tmp_path / "p", one_stage("{from: references/r.yaml, id: ID}", "data/link/<ID>"), ONE)
    (tmp_path / "p" / "store").mkdir()
    (tmp_path / "p" / "data").mkdir()
    os.symlink(tmp_path / "p" / "store", tmp_path / "p" / "data" / "link")
    assert [p.out_dir for p in index.for_stage("j")] == ["data/link/a", "data/link/b"]


def test_output_directories_are_unique_across_stages(tmp_path):
    config = one_stage("{from: references/r.yaml, id: ID}") + (
        "  k:\n    blueprint: a.md\n    partitions: {from: references/r.yaml, id: ID}\n"
        "    output: data/j/<ID>\n"
    )
    index = make_index(tmp_path, config, ONE)
    index.for_stage("j")
    assert (
        stage_error(index, "k").message
        == "orch.yaml:9: stages.k.output: partitions j/a and k/a both write to 'data/j/a'"
    )


def test_nested_output_directories_across_stages_are_rejected(tmp_path):
    config = one_stage("{from: references/r.yaml, id: ID}", "data/<ID>") + (
        "  k:\n    blueprint: a.md\n    partitions: {from: references/r.yaml, id: ID}\n"
        "    output: data/<ID>/sub\n"
    )
    index = make_index(tmp_path, config, ONE)
    index.for_stage("j")
    error = stage_error(index, "k")
    assert error.message.startswith("orch.yaml:")
    assert "data/a/sub" in error.message


def test_dangling_symlink_on_the_output_path_is_a_config_error(tmp_path):
    index = make_index(tmp_path / "p", one_stage("{from: references/r.yaml, id: ID}"), ONE)
    (tmp_path / "p" / "data").mkdir()
    os.symlink("nowhere", tmp_path / "p" / "data" / "j")
    stage_error(index, "j")


# -- confinement to data/ (issue 10, item 5) ------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "output", "message"),
    [
        (
            "- {ID: a, SUB: '..'}\n",
            "data/j/<SUB>/<ID>",
            "references/r.yaml:1: field SUB = '..' cannot be part of the output path (stages.j.output "
            "in orch.yaml): it starts with '.' ('.', '..' and hidden names are not allowed)",
        ),
        (
            "- {ID: a, SUB: 'x/../../..'}\n",
            "data/j/<SUB>/<ID>",
            "references/r.yaml:1: field SUB = 'x/../../..' cannot be part of the output path "
            "(stages.j.output in orch.yaml): it contains a path separator",
        ),
        (
            "- {ID: a, SUB: ''}\n",
            "data/<SUB>/<ID>",
            "references/r.yaml:1: field SUB = '' cannot be part of the output path "
            "(stages.j.output in orch.yaml): it is empty",
        ),
        (
            '- {ID: a, SUB: "x\\0y"}\n',
            "data/<SUB>/<ID>",
            "references/r.yaml:1: field SUB = 'x\\x00y' cannot be part of the output path "
            "(stages.j.output in orch.yaml): it contains a NUL byte",
        ),
    ],
)
def test_row_fields_in_an_output_path_are_single_safe_segments(tmp_path, rows, output, message):
    index = make_index(
        tmp_path, one_stage("{from: references/r.yaml, id: ID}", output), {"references/r.yaml": rows}
    )
    error = stage_error(index, "j")
    assert isinstance(error, PartitionError)
    assert error.message == message


@pytest.mark.parametrize(
    ("output", "rows"),
    [
        ("<ID>", "- {ID: references}\n"),
        ("<ID>", "- {ID: agents}\n"),
        ("<ID>", "- {ID: data}\n"),
        ("data", "- {ID: a}\n"),
        ("data/.", "- {ID: a}\n"),
        ("agents/<ID>", "- {ID: a}\n"),
        ("references/<ID>", "- {ID: a}\n"),
        ("data/../agents/<ID>", "- {ID: a}\n"),
    ],
)
def test_output_directory_must_be_strictly_inside_data(tmp_path, output, rows):
    index = make_index(
        tmp_path, one_stage("{from: references/r.yaml, id: ID}", output), {"references/r.yaml": rows}
    )
    error = stage_error(index, "j")
    assert error.message.endswith("(references/r.yaml:1) is not inside the project's data area")
    assert error.message.startswith("orch.yaml:5: stages.j.output: output directory '")


@pytest.mark.parametrize("target", ["agents", "references", "wip", "", "data"])
def test_output_through_a_symlink_into_a_project_directory_is_refused(tmp_path, target):
    index = make_index(
        tmp_path / "p",
        one_stage("{from: references/r.yaml, id: ID}", "data/link"),
        {"references/r.yaml": "- {ID: a}\n"},
    )
    for name in ("agents", "wip", "data"):
        (tmp_path / "p" / name).mkdir(exist_ok=True)
    os.symlink(tmp_path / "p" / target, tmp_path / "p" / "data" / "link")
    error = stage_error(index, "j")
    assert "which is the project root, data/ itself, or in or around agents/" in error.message


def test_blueprint_outside_the_project_is_refused(tmp_path):
    from orch.config.blueprints import load_blueprint

    (tmp_path / "p").mkdir()
    (tmp_path / "secret.md").write_text("x\n")
    (tmp_path / "p" / "agents").mkdir()
    os.symlink(tmp_path / "secret.md", tmp_path / "p" / "agents" / "link.md")
    for rel in ("../secret.md", "agents/link.md", str(tmp_path / "secret.md")):
        with pytest.raises(ConfigError) as info:
            load_blueprint(tmp_path / "p", rel)
        assert info.value.message == f"{rel}: blueprint file must be inside the project"


def test_nesting_check_stays_fast_at_many_partitions(tmp_path):
    import time

    rows = "".join(f"- {{ID: i{n:05d}, G: g{n % 100:02d}}}\n" for n in range(20_000))
    config = one_stage("{from: references/r.yaml, id: ID}", "data/j/<G>/<ID>") + (
        "  k:\n    blueprint: a.md\n    partitions: {from: references/r.yaml, id: ID}\n"
        "    output: data/k/<G>/<ID>\n"
    )
    index = make_index(tmp_path, config, {"references/r.yaml": rows})
    started = time.monotonic()
    assert len(index.for_stage("j")) + len(index.for_stage("k")) == 40_000
    assert time.monotonic() - started < 10  # ~1 s here; quadratic would take minutes
