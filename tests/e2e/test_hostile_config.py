"""Hostile config through the real CLI (issue 10, items 5-8): load-time refusal with exit 2.

Every case is refused by `orch plan`, `orch status`, `orch stage run` and
`orch run` alike, before any agent starts (the fake agent logs no invocation),
with a message naming the file and line or row, no traceback, nothing written
under data/ or wip/, and nothing created outside the project.
"""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

COMMANDS = [("plan",), ("status",), ("stage", "run", "work"), ("run",)]

BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.fixture
def project(make_project):
    return make_project(n_items=3)


def assert_refused(project, message, commands=COMMANDS, timeout=60):
    """Run each command; assert exit 2, `message` in the first stderr line, nothing written."""
    before = project.tree()
    for args in commands:
        started = time.monotonic()
        result = project.orch(*args, timeout=timeout)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        first = result.stderr.splitlines()[0]
        assert first.startswith("error: ") and message in first, (args, first)
        assert time.monotonic() - started < timeout
        assert project.tree("data") == [] if (project.root / "data").exists() else True
        assert not (project.root / "wip").exists() or project.tree("wip") == []
        assert project.tree() == before
        assert project.invocations() == []
    return first


def set_stage(project, **changes):
    import yaml

    config = yaml.safe_load((project.root / "orch.yaml").read_text())
    config["stages"]["work"].update(changes)
    project.config(config)


# -- item 5: paths -------------------------------------------------------------------------------


@pytest.mark.parametrize("item", ["references", "agents", "data", "wip"])
def test_output_that_resolves_to_a_project_directory_is_refused(project, item):
    set_stage(project, output="<ITEM_ID>")
    project.write("references/items.yaml", f"items:\n  - ITEM_ID: {item}\n")
    first = assert_refused(project, "is not inside the project's data area")
    assert first.startswith(
        f"error: orch.yaml:20: stages.work.output: output directory '{item}' of partition {item} "
        "(references/items.yaml:2)"
    )
    assert sorted(os.listdir(project.root / "references")) == ["items.yaml"]


def test_row_field_dot_dot_in_an_output_path_is_refused(project):
    set_stage(project, output="data/work/<SUB>/<ITEM_ID>")
    project.write(
        "references/items.yaml", "items:\n  - {ITEM_ID: a, SUB: b}\n  - {ITEM_ID: '..', SUB: '..'}\n"
    )
    assert_refused(project, "references/items.yaml:3: partition id '..' is not a safe path segment")
    project.write("references/items.yaml", "items:\n  - {ITEM_ID: a, SUB: b}\n  - {ITEM_ID: c, SUB: '..'}\n")
    assert_refused(
        project,
        "references/items.yaml:3: field SUB = '..' cannot be part of the output path "
        "(stages.work.output in orch.yaml): it starts with '.'",
    )


def test_stage_run_refuses_outputs_nested_in_another_stages(project):
    import yaml

    config = yaml.safe_load((project.root / "orch.yaml").read_text())
    other = dict(config["stages"]["work"], output="data/work/<ITEM_ID>/inner")
    config["stages"]["other"] = other
    project.config(config)
    assert_refused(project, "lies inside that of partition work/item01")


def test_blueprint_path_outside_the_project_is_refused(project, tmp_path):
    (tmp_path / "outside.md").write_text("# secret\n")
    set_stage(project, blueprint="../outside.md")
    assert_refused(project, "../outside.md: blueprint file must be inside the project")
    set_stage(project, blueprint="agents/a\0.md")
    assert_refused(project, "blueprint file must be inside the project")


# -- item 6: blueprints cannot run code ---------------------------------------------------------------


def test_blueprint_that_reaches_python_cannot_run_code(project, tmp_path):
    marker = tmp_path / "pwned"
    project.write(
        "agents/work.md",
        f"# <ITEM_ID>\n{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}\n",
    )
    assert_refused(
        project,
        "agents/work.md:2: cannot render: access to attribute '__init__' of 'type' object is unsafe.",
    )
    assert not marker.exists()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{{ ''.__class__.__mro__ }}", "access to attribute '__class__' of 'str' object is unsafe"),
        ("{% for i in range(10**9) %}x{% endfor %}", "is larger than the blueprint bound of 1,000,000"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "loops ran more than the blueprint bound of 1,000,000 iterations",
        ),
        ("{{ 'x' * 10**8 }}", "would be larger than the blueprint bound of 16,777,216 characters"),
        ("{% include '../orch.yaml' %}", "cannot render: ../orch.yaml (only files under agents/"),
    ],
)
def test_hostile_blueprints_are_blueprint_errors(project, body, message):
    project.write("agents/work.md", f"# <ITEM_ID>\n{body}\n")
    first = assert_refused(project, message, commands=[("plan",), ("stage", "run", "work")])
    assert first.startswith("error: agents/work.md:2: cannot render: ")


# -- item 7: schemas resolve once, locally ------------------------------------------------------------


def test_remote_schema_ref_is_refused_without_a_connection(project):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        port = server.getsockname()[1]
        project.write("references/s.json", json.dumps({"$ref": f"http://127.0.0.1:{port}/s.json"}))
        set_stage(project, expect=[{"file": "out.md", "schema": "references/s.json"}])
        assert_refused(
            project,
            f"references/s.json: $ref 'http://127.0.0.1:{port}/s.json' cannot be resolved: "
            "only files inside the project are allowed, not URLs",
        )
        with pytest.raises(BlockingIOError):
            server.accept()


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("file:///etc/passwd", "/etc/passwd is outside the project"),
        ("missing.json", "references/missing.json: file not found"),
        ("#/definitions/none", "cannot be resolved"),
    ],
)
def test_unresolvable_schema_refs_are_refused_at_load(project, ref, why):
    project.write("references/s.json", json.dumps({"$ref": ref}))
    set_stage(project, expect=[{"file": "out.md", "schema": "references/s.json"}])
    first = assert_refused(project, f"references/s.json: $ref '{ref}' cannot be resolved")
    assert why in first


def test_local_schema_refs_work(project):
    project.write("references/defs.json", json.dumps({"$defs": {"o": {"type": "object"}}}))
    project.write("references/s.json", json.dumps({"$ref": "defs.json#/$defs/o"}))
    set_stage(project, expect=[{"file": "out.json", "schema": "references/s.json"}])
    result = project.orch("stage", "run", "work", "--agent", "offline")
    assert result.returncode == 0, result.stderr


# -- item 8: bounded input ------------------------------------------------------------------------


def test_alias_bomb_in_vars_is_refused_fast(project):
    text = (project.root / "orch.yaml").read_text()
    project.write("orch.yaml", BILLION_LAUGHS.replace("\n", "\n  ").join(["bomb:\n  ", "\n"]) + text)
    started = time.monotonic()
    assert_refused(project, "orch.yaml:8: invalid YAML: aliases expand to more than 1,000,000 nodes")
    assert time.monotonic() - started < 20  # four commands; each well under a second of work


def test_alias_bomb_in_references_and_front_matter_are_refused(project):
    project.write("references/items.yaml", BILLION_LAUGHS + "items:\n  - {ITEM_ID: a, X: *i}\n")
    assert_refused(project, "references/items.yaml:7: invalid YAML: aliases expand to more than 1,000,000")
    project.write("references/items.yaml", "items:\n  - ITEM_ID: a\n")
    project.write("agents/work.md", "---\n" + BILLION_LAUGHS + "---\n# <ITEM_ID>\n")
    assert_refused(project, "agents/work.md:8: invalid YAML: aliases expand", commands=[("plan",)])


def test_deep_nesting_is_refused(project):
    project.write(
        "references/items.json", '{"items": [{"ITEM_ID": "a", "X":\n' + "[" * 100_000 + "]" * 100_000 + "}]}"
    )
    set_stage(project, partitions={"from": "references/items.json", "path": "items", "id": "ITEM_ID"})
    assert_refused(project, "references/items.json:2: invalid JSON: arrays and objects nest deeper than 100")
    project.write(
        "references/items.yaml", "items:\n  - ITEM_ID: a\n    X: " + "[" * 100_000 + "]" * 100_000 + "\n"
    )
    set_stage(project, partitions={"from": "references/items.yaml", "path": "items", "id": "ITEM_ID"})
    assert_refused(project, "references/items.yaml:3: invalid YAML: lists and mappings nest deeper than 100")


def test_a_fifo_as_references_is_an_error_not_a_hang(project):
    os.remove(project.root / "references/items.yaml")
    os.mkfifo(project.root / "references/items.yaml")
    assert_refused(
        project,
        "references/items.yaml: cannot read: not a regular file (a FIFO, socket or device)",
        timeout=30,
    )


def test_nul_byte_in_an_id_is_refused(project):
    project.write("references/items.yaml", 'items:\n  - ITEM_ID: "a\\0b"\n')
    assert_refused(project, "references/items.yaml:2: partition id 'a\\x00b' is not a safe path segment")
