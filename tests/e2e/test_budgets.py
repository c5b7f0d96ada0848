"""Cost budgets: `max_cost_usd` for a run (top level) and for a stage stop new partitions.

A fake `claude` reports `total_cost_usd` per attempt; partitions run one at a
time so the spend at each start is known exactly.
"""

from __future__ import annotations

import json
import sys

from tests.conftest import FAKES, default_config

CLAUDE = [sys.executable, str(FAKES / "claude.py")]


def budget_project(make_project, *, run_budget=None, stage_budget=None, cost=0.0123, n_items=5):
    stage = {"max_parallel": 1}
    if stage_budget is not None:
        stage["max_cost_usd"] = stage_budget
    config = default_config(n_items, **stage)
    config["agents"]["claude"] = {"backend": "command", "command": CLAUDE, "usage": "claude-json"}
    config["agents"]["default"] = "claude"
    if run_budget is not None:
        config["max_cost_usd"] = run_budget
    project = make_project(n_items, config=config)
    project.script({"default": {"action": "succeed", "cost": cost}})
    return project


def complete(project) -> list[str]:
    return sorted(p.parent.parent.name for p in project.root.glob("data/work/*/.orch/manifest.json"))


def test_run_budget_stops_new_partitions_and_exits_3(make_project):
    project = budget_project(make_project, run_budget=0.02)

    result = project.orch("stage", "run", "work")

    assert result.returncode == 3
    # 0.0123 spent after item01 (< 0.02): item02 starts; 0.0246 after it: nothing else starts.
    assert complete(project) == ["item01", "item02"]
    assert len(project.invocations()) == 2
    assert "2 completed now · 0 up to date · 3 halted of 5" in result.stdout
    assert "$0.0246" in result.stdout
    assert "halted: run budget max_cost_usd 0.02 reached (spent 0.0246)" in result.stderr
    assert "error: 3 of 5 partitions were not started: halted: run budget" in result.stderr
    (events_file,) = project.root.glob("wip/runs/*/events.jsonl")
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    (finished,) = [e for e in events if e["event"] == "run_finished"]
    assert finished["halted"] == "halted: run budget max_cost_usd 0.02 reached (spent 0.0246)"
    assert finished["counts"] == {"complete": 2, "halted": 3}


def test_stage_budget_stops_new_partitions_of_that_stage(make_project):
    project = budget_project(make_project, stage_budget=0.03)

    result = project.orch("stage", "run", "work", "--json")

    assert result.returncode == 3
    assert complete(project) == ["item01", "item02", "item03"]
    summary = json.loads(result.stdout)
    halted = [o for o in summary["partitions"] if o["status"] == "halted"]
    assert [o["id"] for o in halted] == ["item04", "item05"]
    assert {o["reason"] for o in halted} == {
        "halted: stage work budget max_cost_usd 0.03 reached (spent 0.0369)"
    }


def test_a_rerun_after_a_budget_halt_resumes_with_a_fresh_budget(make_project):
    project = budget_project(make_project, run_budget=0.02)
    assert project.orch("stage", "run", "work").returncode == 3

    again = project.orch("stage", "run", "work")

    assert again.returncode == 3
    assert complete(project) == ["item01", "item02", "item03", "item04"]
