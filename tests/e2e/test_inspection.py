"""Inspection commands through the real CLI: stage list, plan, blueprint render/check, --json,
finding the project; and the same on this repository's own pipeline. None of them writes a file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

PLACEHOLDER_LEFT = re.compile(r"<[A-Z][A-Z0-9_]*>")

SUMMARY_STAGE = """\
  summary:
    blueprint: agents/summary.md
    fan_in: {from: work}
    output: data/summary
    expect: [summary.md]
"""
SUMMARY_BLUEPRINT = """\
---
description: gathers every item
params:
  TOPIC: the topic
---
# Summary of <TOPIC>
{% for child in INPUTS %}
- {{ child.id }} ({{ child.out_dir }}): {{ child.read("out.md") }}
{% endfor %}
Write \\<ITEM_ID> literally.
"""


def orch_at(project, cwd, *args, **env_extra: str) -> subprocess.CompletedProcess[str]:
    """Run the real CLI from `cwd` (Project.orch always runs in the project root)."""
    env = {**project.env(), **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "orch", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


@pytest.fixture
def project(make_project):
    """Three items, stage `work` (fan-out) and `summary` (fan-in over all of them).

    Whatever a test runs, inspection must leave no data/ and no wip/ behind.
    """
    project = make_project(n_items=3)
    project.write("orch.yaml", (project.root / "orch.yaml").read_text() + SUMMARY_STAGE)
    project.write("agents/summary.md", SUMMARY_BLUEPRINT)
    yield project
    assert sorted(p.name for p in project.root.iterdir()) == [
        "agents",
        "fake-script.json",
        "orch.yaml",
        "references",
    ]


# -- orch stage list ----------------------------------------------------------------------------


def test_stage_list_shows_stages_partitions_and_outputs(project):
    assert ok(project.orch("stage", "list")).splitlines() == [
        "stage    partitions  kind                                blueprint          output",
        "work     3           fan-out over references/items.yaml  agents/work.md     data/work/<ITEM_ID>",
        "summary  1           fan-in from work (all)              agents/summary.md  data/summary",
    ]


def test_stage_list_json(project):
    assert json.loads(ok(project.orch("stage", "list", "--json"))) == [
        {
            "agent": "fake",
            "blueprint": "agents/work.md",
            "kind": "fan-out over references/items.yaml",
            "output": "data/work/<ITEM_ID>",
            "partitions": 3,
            "stage": "work",
        },
        {
            "agent": "fake",
            "blueprint": "agents/summary.md",
            "kind": "fan-in from work (all)",
            "output": "data/summary",
            "partitions": 1,
            "stage": "summary",
        },
    ]


# -- orch plan ------------------------------------------------------------------------------------


def test_plan_lists_partitions_and_output_dirs(project):
    assert ok(project.orch("plan", "work")).splitlines() == [
        "work: 3 partitions",
        "partition  status   action  why      output",
        "item01     missing  run     missing  data/work/item01",
        "item02     missing  run     missing  data/work/item02",
        "item03     missing  run     missing  data/work/item03",
        "3 to run · 0 up to date · no cost history for agent fake",
    ]


def test_plan_json_for_one_stage(project):
    plan = json.loads(ok(project.orch("--json", "plan", "work")))
    assert plan["stage"] == "work"
    assert [(p["id"], p["status"], p["action"], p["out_dir"], p["source"]) for p in plan["partitions"]] == [
        ("item01", "missing", "run", "data/work/item01", "references/items.yaml:2"),
        ("item02", "missing", "run", "data/work/item02", "references/items.yaml:3"),
        ("item03", "missing", "run", "data/work/item03", "references/items.yaml:4"),
    ]
    assert all(p["fingerprint"].startswith("sha256:") for p in plan["partitions"])
    assert plan["counts"] == {
        "complete": 0,
        "failed": 0,
        "incomplete": 0,
        "missing": 3,
        "modified": 0,
        "queued": 0,
        "running": 0,
        "stale": 0,
    }


def test_plan_json_for_every_stage(project):
    plans = json.loads(ok(project.orch("plan", "--json")))
    assert [(p["stage"], len(p["partitions"])) for p in plans] == [("work", 3), ("summary", 1)]
    (summary,) = plans[1]["partitions"]
    assert (summary["id"], summary["out_dir"], summary["action"]) == ("all", "data/summary", "wait")


# -- orch blueprint render ------------------------------------------------------------------------


def test_render_prints_exactly_the_prompt(project):
    prompt = ok(project.orch("blueprint", "render", "work", "item01"))
    assert prompt == "# Work on item01\nTopic: testing. Write out.md with a '## Result' heading.\n"
    assert not PLACEHOLDER_LEFT.search(prompt)


def test_render_fan_in_previews_inputs_and_keeps_literals(project):
    prompt = ok(project.orch("blueprint", "render", "summary", "all"))
    assert prompt.splitlines() == [
        "# Summary of testing",
        "- item01 (data/work/item01): [contents of out.md from work/item01: not written yet]",
        "- item02 (data/work/item02): [contents of out.md from work/item02: not written yet]",
        "- item03 (data/work/item03): [contents of out.md from work/item03: not written yet]",
        "Write <ITEM_ID> literally.",
    ]


def test_render_json(project):
    assert json.loads(ok(project.orch("blueprint", "render", "work", "item02", "--json"))) == {
        "partition": "item02",
        "prompt": "# Work on item02\nTopic: testing. Write out.md with a '## Result' heading.\n",
        "stage": "work",
    }


@pytest.mark.parametrize(
    ("args", "lines"),
    [
        (
            ("work", "item1"),
            [
                "error: stage work has no partition 'item1'; did you mean 'item01'?",
                "hint: list them with: orch plan work",
            ],
        ),
        (
            ("wrok", "item01"),
            ["error: unknown stage 'wrok'; did you mean 'work'?", "hint: stages in orch.yaml: work, summary"],
        ),
    ],
)
def test_render_unknown_names_suggest_the_nearest(project, args, lines):
    result = project.orch("blueprint", "render", *args)
    assert (result.returncode, result.stdout, result.stderr.splitlines()) == (2, "", lines)


# -- orch blueprint check -----------------------------------------------------------------------------


def test_check_clean_project(project):
    assert ok(project.orch("blueprint", "check")).splitlines() == [
        "checked 2 blueprint(s), rendered 4 partition prompt(s): 0 error(s), 0 warning(s)"
    ]
    assert json.loads(ok(project.orch("blueprint", "check", "--json"))) == {
        "checked": ["agents/summary.md", "agents/work.md"],
        "errors": [],
        "ok": True,
        "rendered": 4,
        "warnings": [],
    }


def test_check_with_warnings_exits_0(project):
    project.write("agents/work.md", "---\nparams:\n  ITEM_ID: x\n  UNUSED: y\n---\n# <ITEM_ID> <TOPIC>\n")
    project.write("agents/spare.md", "# not used\n")
    assert ok(project.orch("blueprint", "check")).splitlines() == [
        "warning: agents/spare.md: not used by any stage in orch.yaml",
        "warning: agents/work.md:4: param UNUSED is declared but never used",
        "warning: agents/work.md:6: <TOPIC> is used but not declared in the front matter params",
        "checked 3 blueprint(s), rendered 4 partition prompt(s): 0 error(s), 3 warning(s)",
    ]


def test_check_with_errors_exits_2(project):
    project.write("agents/work.md", "---\nparams:\n  ITEM_ID: x\n  TOPIC: y\n---\n# <ITEM_ID>\n<TOPC>\n")
    result = project.orch("blueprint", "check")
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "error: agents/work.md:7: unknown placeholder <TOPC>; did you mean <TOPIC>? "
        "(partitions work/item01, work/item02, work/item03)",
        "warning: agents/work.md:4: param TOPIC is declared but never used",
        "warning: agents/work.md:7: <TOPC> is used but not declared in the front matter params",
        "checked 2 blueprint(s), rendered 1 partition prompt(s): 1 error(s), 2 warning(s)",
    ]
    assert result.stderr.splitlines() == [
        "error: 1 blueprint error(s), see above",
        "hint: fix them and run orch blueprint check again",
    ]


def test_check_json_with_errors(project):
    project.write("agents/summary.md", "---\nparams:\n  TOPIC: t\n---\n{% for c in INPUTS %}\n")
    result = project.orch("blueprint", "check", "--json")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert (report["ok"], report["rendered"], report["checked"]) == (
        False,
        3,
        ["agents/summary.md", "agents/work.md"],
    )
    assert report["errors"] == [
        "agents/summary.md:5: blueprint syntax error: Unexpected end of template. Jinja was looking for the "
        "following tags: 'endfor' or 'else'. The innermost block that needs to be closed is 'for'."
    ]


def test_check_one_file(project):
    project.write("agents/spare.md", "---\nparams:\n  A: a\n---\nnothing\n")
    assert ok(project.orch("blueprint", "check", "agents/summary.md")).splitlines() == [
        "checked 1 blueprint(s), rendered 1 partition prompt(s): 0 error(s), 0 warning(s)"
    ]
    assert ok(orch_at(project, project.root / "agents", "blueprint", "check", "spare.md")).splitlines() == [
        "warning: agents/spare.md:3: param A is declared but never used",
        "warning: agents/spare.md: not used by any stage in orch.yaml",
        "checked 1 blueprint(s), rendered 0 partition prompt(s): 0 error(s), 2 warning(s)",
    ]


def test_check_one_file_ignores_other_blueprints(project):
    project.write("agents/work.md", "# <ITEM_ID> <TOPC>\n")
    assert ok(project.orch("blueprint", "check", "agents/summary.md")).splitlines() == [
        "checked 1 blueprint(s), rendered 1 partition prompt(s): 0 error(s), 0 warning(s)"
    ]


# -- finding the project ---------------------------------------------------------------------------


def test_walks_up_from_a_subdirectory(project):
    (project.root / "references" / "deeper").mkdir()
    result = orch_at(project, project.root / "references" / "deeper", "plan", "work", "--json")
    assert [p["id"] for p in json.loads(ok(result))["partitions"]] == ["item01", "item02", "item03"]


def test_project_option_from_another_directory(project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = orch_at(
        project, elsewhere, "--project", str(project.root), "blueprint", "render", "work", "item03"
    )
    assert ok(result).startswith("# Work on item03\n")
    relative = orch_at(project, elsewhere, "--project", "../proj", "stage", "list", "--json")
    assert [s["stage"] for s in json.loads(ok(relative))] == ["work", "summary"]


def test_orch_project_environment_from_another_directory(project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = orch_at(project, elsewhere, "stage", "list", "--json", ORCH_PROJECT=str(project.root))
    assert [s["stage"] for s in json.loads(ok(result))] == ["work", "summary"]


def test_no_project_found(project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = orch_at(project, elsewhere, "plan")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        f"error: no orch.yaml found in {elsewhere.resolve()} or any parent directory",
        "hint: run orch inside a project, or pass --project DIR",
    ]


def test_project_option_naming_a_directory_without_config(project, tmp_path):
    result = orch_at(project, project.root, "--project", str(tmp_path), "stage", "list")
    assert result.returncode == 2
    assert (
        result.stderr.splitlines()[0] == f"error: {tmp_path.resolve()}: no orch.yaml in the project directory"
    )


def test_inspection_writes_nothing(project):
    before = project.tree()
    ok(project.orch("plan"))
    ok(project.orch("blueprint", "check"))
    assert project.tree() == before


# -- this repository's pipeline ---------------------------------------------------------------------


def test_repo_pipeline_plan_lists_55_deep_research_partitions(make_project):
    result = orch_at(make_project(), REPO, "--project", str(REPO), "plan", "deep_research", "--json")
    plan = json.loads(ok(result))
    ids = [p["id"] for p in plan["partitions"]]
    assert (plan["stage"], len(ids), len(set(ids))) == ("deep_research", 55, 55)
    assert "1.1_control_strategic_sectors" in ids
    assert all(
        p["out_dir"] == f"data/new_energy_vehicles/01.materials/02.deep_research/{p['id']}"
        for p in plan["partitions"]
    )


def test_repo_pipeline_render_fills_every_placeholder(make_project):
    result = orch_at(
        make_project(),
        REPO,
        "--project",
        str(REPO),
        "blueprint",
        "render",
        "deep_research",
        "1.1_control_strategic_sectors",
    )
    prompt = ok(result)
    assert prompt.startswith("# Deep research: 1.1_control_strategic_sectors Control strategic sectors\n")
    assert "New energy vehicles" in prompt
    assert PLACEHOLDER_LEFT.findall(prompt) == []


def test_repo_pipeline_copy_checks_clean_and_writes_nothing(tmp_path, make_project):
    copy = tmp_path / "pipeline"
    copy.mkdir()
    shutil.copy(REPO / "orch.yaml", copy / "orch.yaml")
    shutil.copytree(REPO / "agents", copy / "agents")
    shutil.copytree(REPO / "references", copy / "references")
    before = sorted(p for p in copy.rglob("*"))
    project = make_project()
    check = json.loads(ok(orch_at(project, copy, "blueprint", "check", "--json")))
    assert (check["ok"], check["errors"], check["warnings"], check["rendered"]) == (True, [], [], 135)
    stages = json.loads(ok(orch_at(project, copy, "stage", "list", "--json")))
    assert [(s["stage"], s["partitions"]) for s in stages] == [
        ("research", 8),
        ("deep_research", 55),
        ("function_analysis", 55),
        ("feature_synthesis", 12),
        ("dimension_synthesis", 4),
        ("overall_synthesis", 1),
    ]
    assert sorted(p for p in copy.rglob("*")) == before
