"""Layered synthesis: fan-in stages and `orch run` over the whole DAG.

Stage `items` fans out over 24 rows in 12 groups; `groups` fans in by GROUP;
`overall` fans in everything. The fake agent stands in for the model.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import default_config

GROUP_BLUEPRINT = """\
# Group <GROUP>
{% for child in INPUTS %}
## {{ child.id }}
{{ child.read("out.md") }}
{% endfor %}
"""
OVERALL_BLUEPRINT = """\
# Overall over {{ INPUTS | length }} groups
{% for child in INPUTS %}
- {{ child.id }}: {{ child.params.GROUP }}
{% endfor %}
"""
EXPECT = [{"file": "out.md", "min_bytes": 10, "headings": ["## Result"]}]


def pipeline_config(**items_stage: object) -> dict:
    config = default_config(max_parallel=24, **items_stage)
    stages = config["stages"]
    stages["items"] = stages.pop("work")
    stages["items"]["output"] = "data/items/<ITEM_ID>"
    stages["groups"] = {
        "blueprint": "agents/group.md",
        "fan_in": {"from": "items", "by": "GROUP"},
        "output": "data/groups/<GROUP>",
        "expect": EXPECT,
        "retries": 0,
    }
    stages["overall"] = {
        "blueprint": "agents/overall.md",
        "fan_in": {"from": "groups"},
        "output": "data/overall",
        "expect": EXPECT,
        "retries": 0,
    }
    config["max_parallel"] = 24
    return config


@pytest.fixture
def project(make_project):
    project = make_project(config=pipeline_config())
    project.write("agents/group.md", GROUP_BLUEPRINT)
    project.write("agents/overall.md", OVERALL_BLUEPRINT)
    rows = [{"ITEM_ID": f"{g}.{i}", "GROUP": f"g{g:02d}"} for g in range(1, 13) for i in (1, 2)]
    project.write("references/items.yaml", yaml.safe_dump({"items": rows}))
    return project


def events(project) -> list[dict]:
    runs = sorted((project.root / "wip/runs").iterdir())
    return [json.loads(line) for line in (runs[-1] / "events.jsonl").read_text().splitlines()]


def test_run_completes_the_dag_and_a_rerun_does_nothing(project):
    result = project.orch("run")
    assert result.returncode == 0, result.stderr
    assert "barrier items: met · barrier groups: met · barrier overall: met" in result.stdout
    prompt = (project.root / "data/overall/.orch/prompt.md").read_text()
    assert "# Overall over 12 groups" in prompt
    assert "- g05: g05" in prompt
    group_prompt = (project.root / "data/groups/g03/.orch/prompt.md").read_text()
    assert "## 3.1\n## Result" in group_prompt and "## 3.2\n## Result" in group_prompt

    again = project.orch("run")
    assert again.returncode == 0
    assert "nothing to do: all 37 partition(s) up to date" in again.stdout
    assert len(project.invocations()) == 37


def test_fan_in_partitions_start_when_their_own_children_pass(project):
    project.script(
        {"default": {"action": "sleep", "seconds": 0.05}, "7.2": {"action": "sleep", "seconds": 3}}
    )
    assert project.orch("run").returncode == 0
    log = events(project)
    promoted = {(e["stage"], e["partition"]): e["ts"] for e in log if e["event"] == "promoted"}
    slow_done = promoted[("items", "7.2")]
    early = [g for (stage, g), ts in promoted.items() if stage == "groups" and ts < slow_done]
    assert sorted(early) == [f"g{g:02d}" for g in range(1, 13) if g != 7]
    assert promoted[("groups", "g07")] > slow_done
    assert promoted[("overall", "all")] > promoted[("groups", "g07")]


def test_failed_child_blocks_exactly_its_ancestors_then_rerun_completes(project):
    project.script({"default": {"action": "succeed"}, "4.1": {"action": "fail", "message": "model refused"}})
    result = project.orch("run")
    assert result.returncode == 3
    summary = json.loads(project.orch("status", "--json").stdout)
    counts = {s["stage"]: s["counts"] for s in summary}
    assert counts["items"]["complete"] == 23 and counts["items"]["failed"] == 1
    assert counts["groups"]["complete"] == 11 and counts["groups"]["missing"] == 1
    assert counts["overall"]["missing"] == 1
    rows = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert "groups g04 blocked 0 blocked: input items/4.1 failed" in rows
    assert "overall all blocked 0 blocked: input groups/g04 blocked" in rows

    project.script({"default": {"action": "succeed"}})
    rerun = project.orch("run")
    assert rerun.returncode == 0, rerun.stderr
    ran = [(i["stage"], i["partition"]) for i in project.invocations()][37 - 2 :]
    assert sorted(ran) == [("groups", "g04"), ("items", "4.1"), ("overall", "all")]


def test_rerun_child_makes_exactly_its_ancestors_stale(project):
    assert project.orch("run").returncode == 0
    # same outputs again: content-based fingerprints, so nothing downstream is stale
    project.orch("stage", "run", "items", "--only", "3.1", "--force", check=True)
    plan = json.loads(project.orch("plan", "--json", check=True).stdout)
    assert {p["status"] for stage in plan for p in stage["partitions"]} == {"complete"}

    revised = {"out.md": "## Result\n\nRevised for {partition}.\n"}
    project.script({"default": {"action": "succeed", "files": revised}})
    project.orch("stage", "run", "items", "--only", "3.1", "--force", check=True)
    plan = json.loads(project.orch("plan", "--json", check=True).stdout)
    stale = {
        (p["id"], p["reason"]) for stage in plan for p in stage["partitions"] if p["status"] != "complete"
    }
    assert stale == {("g03", "stale: child 3.1 changed"), ("all", "stale: input groups/g03 is not complete")}
    assert project.orch("run").returncode == 0
    ran = [(i["stage"], i["partition"]) for i in project.invocations()][37:]
    assert ran == [("items", "3.1"), ("items", "3.1"), ("groups", "g03"), ("overall", "all")]


def test_stage_run_refuses_while_upstream_barrier_is_unmet(project):
    result = project.orch("stage", "run", "groups")
    assert result.returncode == 4
    first = result.stderr.splitlines()[0]
    assert first == "error: stage groups cannot start: the barrier of items is not met:"
    assert "  items/1.1 (missing)" in result.stderr
    assert not (project.root / "data/groups").exists()


def test_cycle_between_stages_is_an_error_naming_it(make_project):
    config = pipeline_config()
    config["stages"]["items"]["needs"] = ["overall"]
    project = make_project(config=config)
    result = project.orch("plan")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith("error: orch.yaml:")
    assert "stages form a cycle: items -> overall -> groups -> items" in result.stderr


def test_group_rows_missing_a_childs_group_is_a_load_error(make_project, project):
    config = pipeline_config()
    config["stages"]["groups"]["partitions"] = {
        "from": "references/groups.yaml",
        "path": "groups",
        "id": "GROUP",
    }
    project.config(config)
    groups = [{"GROUP": f"g{g:02d}", "TITLE": f"Group {g}"} for g in range(1, 12)]  # no g12
    project.write("references/groups.yaml", yaml.safe_dump({"groups": groups}))
    result = project.orch("plan")
    assert result.returncode == 2
    assert (
        "fan-in group 'g12' of stage groups (from items partition 12.1) is not a row of "
        "references/groups.yaml"
    ) in result.stderr
