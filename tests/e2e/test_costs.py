"""Costs you can plan with: totals across runs in `orch status`, an estimate in `orch plan`."""

from __future__ import annotations

import json

from tests.e2e.test_cli_presets import fake_clis, preset_project  # noqa: F401 - fixture

SUCCEED = {"action": "succeed"}
QUOTA = {"action": "is_error", "message": "API Error: 529 Overloaded", "cost": 0.002}


def test_status_totals_and_plan_estimate_across_runs(make_project, fake_clis):  # noqa: F811
    project = preset_project(make_project, n_items=3, agent={"preset": "claude"})
    project.script({"default": SUCCEED, "item03": QUOTA})
    assert project.orch("stage", "run", "work").returncode == 3

    plan = project.orch("plan", "work", check=True).stdout.splitlines()
    # mean so far: (0.0123 + 0.0123 + 0.002) / 3 partitions with a reported cost
    assert plan[-1] == "1 to run · 2 up to date · est. $0.01"
    status = project.orch("status", check=True).stdout.splitlines()
    rows = [" ".join(line.split()) for line in status]
    assert rows[1] == "work 3 0 0 0 2 1 0 0 0 7356 $0.0266"
    assert rows[2:4] == ["agent attempts tokens cost", "cli 3 7356 $0.0266"]
    assert rows[-1] == "in all: 3 attempt(s) · 7356 tokens · $0.0266"

    project.script({"default": SUCCEED})
    project.orch("stage", "run", "work", check=True)
    (overview,) = json.loads(project.orch("status", "--json", check=True).stdout)
    assert overview["usage"]["attempts"] == 4
    assert round(overview["usage"]["cost_usd"], 4) == 0.0389
    last = project.orch("plan", "work", check=True).stdout.splitlines()[-1]
    assert last == "nothing to run · 3 up to date"


def test_plan_says_when_there_is_no_cost_history(make_project):
    project = make_project(n_items=2)
    last = project.orch("plan", "work", check=True).stdout.splitlines()[-1]
    assert last == "2 to run · 0 up to date · no cost history for agent fake"
    data = json.loads(project.orch("plan", "work", "--json", check=True).stdout)
    assert data["summary"] == {
        "actions": {"run": 2, "wait": 0, "held": 0, "kept": 0, "skip": 0},
        "est_cost_usd": 0.0,
        "no_cost_history": ["fake"],
    }


def test_attempt_duration_is_the_agents_own_time(make_project):
    project = make_project(n_items=2, max_parallel=1)
    project.script({"default": {"action": "sleep", "seconds": 0.5}})
    project.orch("stage", "run", "work", check=True)
    for item in ("item01", "item02"):
        manifest = json.loads((project.root / f"data/work/{item}/.orch/manifest.json").read_text())
        (attempt,) = manifest["attempts"]
        assert attempt["agent"] == "fake"
        assert attempt["queued_s"] >= 0
        span = attempt["ended_at"] - attempt["started_at"]
        assert abs(attempt["duration_s"] + attempt["queued_s"] - span) < 0.01
        assert attempt["duration_s"] >= 0.5
