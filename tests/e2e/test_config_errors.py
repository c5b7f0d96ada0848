"""Bad config, blueprints and references through the real CLI: exit 2, exact message, nothing written.

Each project here runs the offline agent, so a check that failed to stop
`orch stage run` would show up as files under data/ (see the baseline test).
"""

from __future__ import annotations

import os

import pytest

# Lines: 8 blueprint, 9 partitions, 10 output (stage `work` starts on line 7).
CONFIG = """\
vars:
  TOPIC: testing
agents:
  default: offline
  offline: {backend: rehearsal}
stages:
  work:
    blueprint: agents/work.md
    partitions: {from: references/items.yaml, path: items, id: ITEM_ID}
    output: data/work/<ITEM_ID>
    expect:
      - {file: out.md, headings: ["## Result"]}
"""

RUN = ("stage", "run", "work")
PLAN = ("plan", "work")


@pytest.fixture
def project(make_project):
    """The conftest project (agents/work.md, 3 items) with the offline agent."""
    project = make_project(n_items=3)
    project.write("orch.yaml", CONFIG)
    return project


def assert_rejected(project, args, first_line, hint=None):
    """Run orch; assert exit 2, the exact first stderr line, no traceback and no file written."""
    before = project.tree()
    result = project.orch(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == first_line
    if hint is not None:
        assert lines[1:] == [f"hint: {hint}"]
    assert result.stdout == ""
    assert project.tree("data") == []
    assert not (project.root / "wip" / "runs").exists()
    assert project.tree() == before
    return result


def test_baseline_project_runs_and_writes(project):
    """The fixture is valid: without an error, `stage run` writes every partition."""
    result = project.orch(*RUN)
    assert result.returncode == 0, result.stderr
    assert len([p for p in project.tree("data") if p.endswith("/out.md")]) == 3
    assert (project.root / "wip" / "runs").is_dir()


# -- orch.yaml ---------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [PLAN, RUN])
def test_typo_in_config_key(project, args):
    project.write("orch.yaml", CONFIG.replace("    blueprint:", "    blueprnt:"))
    assert_rejected(
        project,
        args,
        "error: orch.yaml:8: stages.work.blueprnt: unknown key 'blueprnt'; did you mean 'blueprint'?",
        "valid keys here: agent, backoff, blueprint, description, expect, fan_in, max_cost_usd, "
        "max_parallel, needs, output, partitions, retries, retry_on, timeout, vars",
    )


def test_malformed_config_yaml(project):
    project.write("orch.yaml", CONFIG.replace("id: ITEM_ID}", "id: ITEM_ID"))
    assert_rejected(
        project,
        RUN,
        "error: orch.yaml:10: invalid YAML: did not find expected ',' or '}'",
        "fix the syntax at that line",
    )


def test_unknown_agent_for_the_stage(project):
    project.write("orch.yaml", CONFIG + "    agent: ofline\n")
    assert_rejected(
        project,
        RUN,
        "error: orch.yaml:13: stages.work.agent: unknown agent 'ofline'; did you mean 'offline'?",
        "agents defined: offline",
    )


def test_unknown_agent_on_the_command_line(project):
    assert_rejected(
        project, (*RUN, "--agent", "ofline"), "error: unknown agent 'ofline'; did you mean 'offline'?"
    )


# -- blueprints ------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [PLAN, RUN])
def test_placeholder_without_a_value(project, args):
    project.write(
        "agents/work.md",
        "---\nparams:\n  ITEM_ID: the item\n  FUNCTION_NAME: its name\n---\n"
        "# <ITEM_ID>\n\nName: <FUNCTON_NAME>\n",
    )
    project.write("references/items.yaml", "items:\n  - {ITEM_ID: a, FUNCTION_NAME: Alpha}\n")
    assert_rejected(
        project,
        args,
        "error: agents/work.md:8: unknown placeholder <FUNCTON_NAME>; did you mean <FUNCTION_NAME>? "
        "(stage work, partition a)",
        "give FUNCTON_NAME a value (a field of the partition rows, or vars in orch.yaml), or fix the name; "
        "write \\<NAME> for a literal",
    )


def test_blueprint_syntax_error(project):
    project.write(
        "agents/work.md", "---\nparams:\n  ITEM_ID: x\n---\n# <ITEM_ID>\n{% for q in QS %}\n- {{ q }}\n"
    )
    assert_rejected(
        project,
        RUN,
        "error: agents/work.md:7: blueprint syntax error: Unexpected end of template. Jinja was looking for "
        "the following tags: 'endfor' or 'else'. The innermost block that needs to be closed is 'for'.",
    )


def test_missing_blueprint_file(project):
    project.write("orch.yaml", CONFIG.replace("agents/work.md", "agents/wrok.md"))
    assert_rejected(project, RUN, "error: agents/wrok.md: file not found")


# -- partition ids -----------------------------------------------------------------------------------


def test_duplicate_partition_ids(project):
    project.write("references/items.yaml", "items:\n  - ITEM_ID: a\n  - ITEM_ID: b\n  - ITEM_ID: a\n")
    assert_rejected(
        project,
        RUN,
        "error: references/items.yaml:4: duplicate partition id 'a' (first at references/items.yaml:2)",
        "partition ids must be unique within a stage",
    )


@pytest.mark.parametrize(
    ("yaml_id", "shown", "reason"),
    [
        ('"../x"', "'../x'", "it contains a path separator"),
        ('"a/b"', "'a/b'", "it contains a path separator"),
        ('".hidden"', "'.hidden'", "it starts with '.' (hidden, and reserved for staging directories)"),
        ('""', "''", "it is empty"),
        ('"a\\0b"', "'a\\x00b'", "it contains a NUL byte"),
        ('"a\\\\b"', "'a\\\\b'", "it contains a path separator"),
        ("x" * 201, repr("x" * 201), "it is longer than 200 bytes"),
    ],
)
def test_unsafe_partition_id(project, yaml_id, shown, reason):
    project.write("references/items.yaml", f"items:\n  - ITEM_ID: ok\n  - ITEM_ID: {yaml_id}\n")
    assert_rejected(
        project,
        RUN,
        f"error: references/items.yaml:3: partition id {shown} is not a safe path segment: {reason}",
        "use letters, digits, '.', '_' and '-' only",
    )


def test_unicode_letters_in_ids_are_allowed(project):
    project.write("references/items.yaml", "items:\n  - ITEM_ID: café_1\n")
    result = project.orch(*PLAN)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[2].split() == [
        "café_1",
        "missing",
        "run",
        "missing",
        "data/work/café_1",
    ]


def test_id_with_a_superscript_digit_does_not_crash(project):
    project.write("references/items.yaml", "items:\n  - ITEM_ID: size_10²\n")
    result = project.orch(*PLAN)
    assert "Traceback" not in result.stderr
    assert result.returncode == 0


# -- output directories ------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [PLAN, RUN])
def test_output_template_escaping_the_project(project, args):
    project.write("orch.yaml", CONFIG.replace("data/work/<ITEM_ID>", "../outside/<ITEM_ID>"))
    assert_rejected(
        project,
        args,
        "error: orch.yaml:10: stages.work.output: output directory '../outside/item01' of partition item01 "
        "(references/items.yaml:2) is not inside the project's data area",
        "use a relative path such as data/<INDUSTRY_ID>/<FUNCTION_ID> with no '..'",
    )
    assert not (project.root.parent / "outside").exists()


def test_absolute_output_template(project, tmp_path):
    target = tmp_path / "abs"
    project.write("orch.yaml", CONFIG.replace("data/work/<ITEM_ID>", f"{target}/<ITEM_ID>"))
    assert_rejected(
        project,
        RUN,
        f"error: orch.yaml:10: stages.work.output: expected a path relative to the project root, "
        f"got '{target}/<ITEM_ID>'",
    )
    assert not target.exists()


def test_output_escaping_through_a_symlink(project, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (project.root / "data").mkdir()
    os.symlink(outside, project.root / "data" / "work")
    assert_rejected(
        project,
        RUN,
        f"error: orch.yaml:10: stages.work.output: output directory 'data/work/item01' of partition item01 "
        f"resolves to {outside.resolve()}/item01, outside the project (through a symlink)",
        "remove the symlink or point the output template elsewhere",
    )
    assert list(outside.iterdir()) == []


def test_partition_directory_symlinked_outside(project, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (project.root / "data" / "work").mkdir(parents=True)
    os.symlink(outside, project.root / "data" / "work" / "item02")
    assert_rejected(
        project,
        RUN,
        f"error: orch.yaml:10: stages.work.output: output directory 'data/work/item02' of partition item02 "
        f"resolves to {outside.resolve()}, outside the project (through a symlink)",
    )
    assert list(outside.iterdir()) == []


def test_dangling_symlink_on_the_output_path(project):
    (project.root / "data").mkdir()
    os.symlink("nowhere", project.root / "data" / "work")
    result = project.orch(*RUN)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    assert result.stderr.startswith("error: orch.yaml:10: stages.work.output: output directory 'data/work/")


# -- references files ---------------------------------------------------------------------------------


def use_references(project, name: str, text: str, path: str | None = "items") -> None:
    project.write(f"references/{name}", text)
    key = f", path: {path}" if path else ""
    project.write(
        "orch.yaml",
        CONFIG.replace("{from: references/items.yaml, path: items,", f"{{from: references/{name}{key},"),
    )


@pytest.mark.parametrize(
    ("name", "text", "path", "first_line", "hint"),
    [
        (
            "items.yaml",
            "items:\n  - ITEM_ID: a\n  - ITEM_ID: [b\n  - ITEM_ID: c\n",
            "items",
            "error: references/items.yaml:4: invalid YAML: did not find expected ',' or ']'",
            "fix the syntax at that line",
        ),
        (
            "items.json",
            '{"items": [\n  {"ITEM_ID": "a"},\n  {"ITEM_ID": "b",}\n]}\n',
            "items",
            "error: references/items.json:3: invalid JSON: Expecting property name enclosed in double quotes "
            "(column 19)",
            "fix the syntax at that line",
        ),
        (
            "items.csv",
            "ITEM_ID,TOPIC\na,x\nb,y,z\n",
            None,
            "error: references/items.csv:3: invalid CSV: row has 3 fields, header has 2",
            "quote fields that contain commas, and give every row every column",
        ),
        (
            "items.csv",
            'ITEM_ID,TOPIC\na,x\n"b,y\n',
            None,
            "error: references/items.csv:3: invalid CSV: unexpected end of data",
            "fix the quoting at that line",
        ),
    ],
)
def test_malformed_references(project, name, text, path, first_line, hint):
    use_references(project, name, text, path)
    assert_rejected(project, RUN, first_line, hint)


@pytest.mark.parametrize(
    ("name", "text", "path", "first_line", "hint"),
    [
        (
            "items.yaml",
            "",
            "items",
            "error: references/items.yaml: the file is empty (stage work)",
            "add partition rows, or point stages.work.partitions.from at another file",
        ),
        (
            "items.yaml",
            "items: []\n",
            "items",
            "error: references/items.yaml: no partitions: the list at 'items' is empty (stage work)",
            "add at least one row",
        ),
        (
            "items.json",
            '{"items": []}\n',
            "items",
            "error: references/items.json: no partitions: the list at 'items' is empty (stage work)",
            "add at least one row",
        ),
        (
            "items.csv",
            "ITEM_ID,TOPIC\n",
            None,
            "error: references/items.csv: no partitions: the list at the top level is empty (stage work)",
            "add at least one row",
        ),
        (
            "items.json",
            "",
            "items",
            "error: references/items.json: the file is empty (stage work)",
            "add partition rows, or point stages.work.partitions.from at another file",
        ),
    ],
)
def test_empty_references(project, name, text, path, first_line, hint):
    use_references(project, name, text, path)
    assert_rejected(project, RUN, first_line, hint)


def test_missing_references_file(project):
    project.write("orch.yaml", CONFIG.replace("references/items.yaml", "references/itmes.yaml"))
    assert_rejected(project, RUN, "error: references/itmes.yaml: file not found")


def test_wrong_key_path_in_references(project):
    project.write("orch.yaml", CONFIG.replace("path: items", "path: item"))
    assert_rejected(
        project,
        RUN,
        "error: references/items.yaml: no key 'item' (stages.work.partitions.path in orch.yaml); "
        "did you mean 'items'?",
        "keys there: items",
    )


def test_debug_shows_the_traceback_of_a_config_error(project):
    project.write("orch.yaml", CONFIG.replace("    blueprint:", "    blueprnt:"))
    result = project.orch("--debug", *PLAN)
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert "error: orch.yaml:8: stages.work.blueprnt: unknown key 'blueprnt'; did you mean 'blueprint'?" in (
        result.stderr.splitlines()
    )
