"""What `orch watch` shows (orch.observe.watch) and `orch watch --plan` reports (orch.observe.planwatch)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from orch.observe.events import Event, RunInfo
from orch.observe.planwatch import ChangeFlag, changed_lines
from orch.observe.progress import RunProgress
from orch.observe.watch import build_view
from orch.observe.watch_render import event_text, format_money, format_seconds, render_plain

T0 = 1_000_000.0


def ev(name: str, ts: float = T0, **fields: Any) -> Event:
    return Event.from_json({"ts": ts, "event": name, "run_id": "r1", **fields})


def run_info(alive: bool = True, finished: bool = False) -> RunInfo:
    return RunInfo("r1", Path("wip/runs/r1/events.jsonl"), T0, finished, 7, alive, ("s",), 3)


def workspace(stage_budget: float | None = None, run_budget: float | None = None) -> Any:
    stage = SimpleNamespace(name="s", max_cost_usd=stage_budget)
    return SimpleNamespace(project=SimpleNamespace(stages={"s": stage}, max_cost_usd=run_budget))


def progress_of(*events: Event) -> RunProgress:
    progress = RunProgress("r1")
    progress.apply_all([ev("run_started", stages=["s"], partitions=3, pid=7), *events])
    return progress


def started(partition: str, ts: float = T0, **fields: Any) -> Event:
    fields.setdefault("reason", "missing")
    return ev("started", ts, stage="s", partition=partition, attempt=1, agent="fake", **fields)


def test_a_running_run_shows_running_partitions_limits_cost_against_budgets_and_eta():
    progress = progress_of(
        started("a", limit=4),
        started("b", T0 + 1, reason="stale: prompt changed"),
        ev(
            "promoted", T0 + 10, stage="s", partition="a", attempt=1, duration_s=10.0, usage={"cost_usd": 0.5}
        ),
        ev("retried", T0 + 11, stage="s", partition="b", attempt=1, error="HTTP 429", error_class="http_429"),
        started("c", T0 + 12),
    )
    view = build_view(workspace(stage_budget=2.0, run_budget=10.0), run_info(), progress, None, now=T0 + 20)
    assert view.state == "running"
    assert [(r.partition, r.elapsed_s, r.reason) for r in view.running] == [("c", 8.0, "missing")]
    assert view.agent_limits == {"fake": 4}
    line = view.stages[0]
    assert (line.done, line.running, line.backing_off, line.failed) == (1, 1, 1, 0)
    assert (line.cost_usd, line.budget_usd) == (0.5, 2.0)
    assert view.eta_s == 20.0  # b and c left: 2 x 10 s (mean promoted) / 1 running
    assert render_plain(view) == [
        "run r1: running, elapsed 20s, ETA 20s, cost $0.50 of $10.00 (5%), tokens -",
        "  s: 1/3 done, 1 running, 0 queued, 1 backing off, 0 failed, 0 stale, cost $0.50 of $2.00 (25%)",
        "  running s/c #1 8s (missing)",
        "  agent limits: fake=4",
        "  failed s/b attempt 1: http_429: HTTP 429 (retrying)",
    ]


def test_a_run_whose_orchestrator_is_gone_is_interrupted_and_shows_nothing_running():
    progress = progress_of(started("a"))
    view = build_view(workspace(), run_info(alive=False), progress, None, now=T0 + 5)
    assert view.state == "interrupted"
    assert view.running == ()
    assert view.eta_s is None
    assert render_plain(view)[0] == (
        "run r1: interrupted, elapsed 0s, cost -, tokens -, "
        "the orchestrator is gone (killed?); `orch run` resumes"
    )


def test_a_finished_run_is_finished_or_failed_by_its_ok_flag():
    ok = progress_of(ev("run_finished", T0 + 3, ok=True))
    bad = progress_of(ev("run_finished", T0 + 3, ok=False))
    assert build_view(workspace(), run_info(False, True), ok, None).state == "finished"
    assert build_view(workspace(), run_info(False, True), bad, None).elapsed_s == 3.0
    assert build_view(workspace(), run_info(False, True), bad, None).state == "failed"


def test_formats():
    assert [format_seconds(s) for s in (None, 4.4, 65, 3725)] == ["-", "4s", "1m05s", "1h02m"]
    assert format_money(None, None) == "-"
    assert format_money(None, 5.0) == "$0.00 of $5.00 (0%)"
    assert format_money(1.234, None) == "$1.23"


def test_event_lines_tell_starts_ends_failures_and_the_run_end_only():
    assert event_text(started("a")) == "started s/a #1 (missing)"
    assert event_text(ev("promoted", stage="s", partition="a", attempt=2)) == "done s/a #2"
    failed = ev("failed", stage="s", partition="a", attempt=1, error="exit code 3", error_class="exit")
    assert event_text(failed) == "failed s/a #1: exit: exit code 3"
    assert event_text(ev("barrier", stage="s", met=False)) == "barrier s: not met"
    assert event_text(ev("run_finished", ok=True)) == "run finished: ok"
    assert event_text(ev("cleaned", stage="s", partition="a")) is None


def test_event_lines_tell_workers_that_join_late_are_refused_or_leave():
    w = "tcp://10.0.0.2:4000"
    assert event_text(ev("worker_joined", worker=w, resources={}, late=False)) is None
    assert event_text(ev("worker_joined", worker=w, resources={}, late=True)) == f"Dask worker {w} joined"
    refused = ev("worker_refused", worker=w, reason="runs orch 0.1")
    assert event_text(refused) == f"warning: Dask worker {w} gets no attempts: runs orch 0.1"
    assert (
        event_text(ev("worker_left", worker=w))
        == f"Dask worker {w} left (attempts running there fail as worker_lost)"
    )


def test_plan_changes_list_partitions_that_newly_need_a_run_or_for_another_reason():
    before = {("s", "a"): ("complete", "complete"), ("s", "b"): ("stale", "stale: prompt changed")}
    after = {
        ("s", "a"): ("stale", "stale: input changed (x)"),
        ("s", "b"): ("stale", "stale: prompt changed"),
        ("s", "c"): ("missing", "missing"),
        ("s", "d"): ("complete", "complete"),
    }
    assert changed_lines(before, after) == ["stale s/a: stale: input changed (x)", "missing s/c: missing"]


def test_only_orch_yaml_agents_and_references_are_watched(tmp_path):
    flag = ChangeFlag(tmp_path)
    relevant = ["orch.yaml", "agents/work.md", "references/deep/items.yaml", "agents/.work.md.swp"]
    ignored = ["data/s/a/out.md", "wip/runs/r1/events.jsonl", "agents", "notes.md"]
    assert all(flag.is_relevant(str(tmp_path / p)) for p in relevant)
    assert not any(flag.is_relevant(str(tmp_path / p)) for p in ignored)
    assert not flag.is_relevant("/elsewhere/orch.yaml")
