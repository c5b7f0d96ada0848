"""Why a partition is stale, `orch plan --diff`, and `orch accept` (like Snakemake --touch)."""

from __future__ import annotations

import json
import sys

import yaml

from tests.conftest import BLUEPRINT, FAKE_AGENT, default_config
from tests.e2e.test_pipeline import GROUP_BLUEPRINT, OVERALL_BLUEPRINT, pipeline_config

EDITED = BLUEPRINT.replace("Topic: <TOPIC>.", "Topic: <TOPIC>, in depth.")


def plan(project, *args: str) -> dict[str, dict]:
    result = project.orch("plan", "work", "--json", *args, check=True)
    return {p["id"]: p for p in json.loads(result.stdout)["partitions"]}


def all_plans(project) -> dict[tuple[str, str], dict]:
    data = json.loads(project.orch("plan", "--json", check=True).stdout)
    return {(s["stage"], p["id"]): p for s in data for p in s["partitions"]}


def test_diff_then_accept_round_trips_and_nothing_is_stale(make_project):
    project = make_project(n_items=3)
    project.orch("stage", "run", "work", check=True)
    project.write("agents/work.md", EDITED)
    assert {p["reason"] for p in plan(project).values()} == {
        "stale: prompt changed at line 2 (blueprint agents/work.md)"
    }

    diff = project.orch("plan", "work", "--diff", "--only", "item02", check=True)
    assert diff.stdout.splitlines() == [
        "--- data/work/item02/.orch/prompt.md",
        "+++ work/item02 prompt now",
        "@@ -1,2 +1,2 @@",
        " # Work on item02",
        "-Topic: testing. Write out.md with a '## Result' heading.",
        "+Topic: testing, in depth. Write out.md with a '## Result' heading.",
    ]
    assert "1 of 1 prompt(s) differ" in diff.stderr

    accepted = project.orch("accept", "work", check=True)
    assert accepted.stdout.splitlines()[-1] == "3 accepted · 0 already up to date"
    assert {p["status"] for p in plan(project).values()} == {"complete"}
    assert project.orch("plan", "work", "--diff", check=True).stdout == ""
    again = project.orch("stage", "run", "work", check=True)
    assert "nothing to do: all 3 partition(s) up to date" in again.stdout
    assert len(project.invocations()) == 3  # accept ran no agent

    manifest = json.loads((project.root / "data/work/item01/.orch/manifest.json").read_text())
    assert manifest["fingerprint"] == plan(project)["item01"]["fingerprint"]
    (record,) = manifest["accepted"]
    assert record["reason"] == "stale: prompt changed at line 2 (blueprint agents/work.md)"
    assert (
        (project.root / "data/work/item01/.orch/prompt.md")
        .read_text()
        .startswith("# Work on item01\nTopic: testing, in depth.")
    )
    notes = (project.root / "wip/notes.md").read_text()
    assert "- **work**: accepted 3 stale partition(s) without rerunning: item01, item02, item03" in notes
    events_file = project.root / "wip/runs" / record["run_id"] / "events.jsonl"
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert [(e["event"], e["partition"]) for e in events] == [
        ("accepted", "item01"),
        ("accepted", "item02"),
        ("accepted", "item03"),
    ]


def test_accept_refuses_outputs_that_fail_their_checks_and_hints_a_rerun(make_project):
    project = make_project(n_items=2)
    project.orch("stage", "run", "work", check=True)
    project.write("agents/work.md", EDITED)
    (project.root / "data/work/item02/out.md").write_text("no heading here, long enough\n")

    result = project.orch("accept", "work")

    assert result.returncode == 4
    rows = [" ".join(line.split()) for line in result.stdout.splitlines()]
    refused = "item02 not accepted outputs fail their checks: out.md: missing heading '## Result' (headings)"
    assert refused in rows
    assert rows[-1] == "1 accepted · 0 already up to date · 1 not accepted"
    assert result.stderr.splitlines()[-1] == "hint: rerun them with: orch stage run work --only item02"
    statuses = {pid: p["status"] for pid, p in plan(project).items()}
    assert statuses == {"item01": "complete", "item02": "stale"}

    rerun = project.orch(*result.stderr.splitlines()[-1].split("with: orch ", 1)[1].split())
    assert rerun.returncode == 0, rerun.stderr
    assert [i["partition"] for i in project.invocations()][2:] == ["item02"]


def test_accepting_a_child_keeps_its_fan_in_parents_fresh(make_project):
    project = make_project(config=pipeline_config())
    project.write("agents/group.md", GROUP_BLUEPRINT)
    project.write("agents/overall.md", OVERALL_BLUEPRINT)
    rows = [{"ITEM_ID": f"{g}.{i}", "GROUP": f"g{g:02d}"} for g in range(1, 4) for i in (1, 2)]
    project.write("references/items.yaml", yaml.safe_dump({"items": rows}))
    assert project.orch("run").returncode == 0
    project.write("agents/work.md", BLUEPRINT + "\n")  # whitespace only: still a change

    planned = all_plans(project)
    assert planned[("items", "1.1")]["reason"] == (
        "stale: prompt changed at line 3, whitespace only (blueprint agents/work.md)"
    )
    assert planned[("groups", "g01")]["status"] == "stale"

    project.orch("accept", "items", check=True)

    assert {p["status"] for p in all_plans(project).values()} == {"complete"}
    assert "nothing to do" in project.orch("run", check=True).stdout


def test_a_rerun_child_is_named_in_its_parents_reason(make_project):
    project = make_project(config=pipeline_config())
    project.write("agents/group.md", GROUP_BLUEPRINT)
    project.write("agents/overall.md", OVERALL_BLUEPRINT)
    rows = [{"ITEM_ID": f"{g}.{i}", "GROUP": f"g{g:02d}"} for g in range(1, 3) for i in (1, 2)]
    project.write("references/items.yaml", yaml.safe_dump({"items": rows}))
    assert project.orch("run").returncode == 0
    project.script({"default": {"action": "succeed", "files": {"out.md": "## Result\n\nNew {partition}.\n"}}})
    project.orch("stage", "run", "items", "--only", "2.2", "--force", check=True)
    assert all_plans(project)[("groups", "g02")]["reason"] == "stale: child 2.2 changed"
    shown = project.orch("show", "groups", "g02", check=True).stdout
    assert shown.splitlines()[0] == "groups / g02: stale — stale: child 2.2 changed"


def test_changed_agent_env_and_var_name_the_key(make_project):
    project = make_project(n_items=2)
    project.orch("stage", "run", "work", check=True)
    config = default_config(2)
    config["agents"]["fake"] = {
        "backend": "command",
        "command": [sys.executable, str(FAKE_AGENT)],
        "kill_grace": "1s",
        "env": {"EXTRA": "1"},
    }
    project.config(config)
    assert {p["reason"] for p in plan(project).values()} == {"stale: agent settings changed (env)"}

    config["vars"]["TOPIC"] = "other"
    project.config(config)
    assert {p["reason"] for p in plan(project).values()} == {"stale: vars changed (orch.yaml: TOPIC)"}


def test_plan_diff_names_an_unknown_partition(make_project):
    project = make_project(n_items=2)
    result = project.orch("plan", "work", "--diff", "--only", "item9")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --only: no partition 'item9' in stage(s) work; did you mean")
    refused = project.orch("accept", "work", "--only", "item01,item9")
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: --only: no partition 'item9' in stage(s) work")
