"""The read model (orch.observe.progress and orch.observe.snapshot): live phases and the joined snapshot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from orch.config.project import load_project
from orch.config.workspace import Workspace
from orch.errors import UsageError
from orch.observe.events import Event
from orch.observe.snapshot import Phase, RunProgress, take_snapshot
from tests.conftest import Project

T0 = 1_000_000.0


def ev(name: str, ts: float = T0, **fields: Any) -> Event:
    return Event.from_json({"ts": ts, "event": name, "run_id": "r1", **fields})


def fold(*events: Event) -> RunProgress:
    progress = RunProgress()
    progress.apply_all(events)
    return progress


def start(partition: str, ts: float = T0, attempt: int = 1, stage: str = "s", **fields: Any) -> Event:
    fields.setdefault("reason", "missing")
    return ev("started", ts, stage=stage, partition=partition, attempt=attempt, agent="fake", **fields)


def test_a_retry_runs_backs_off_runs_again_and_is_done():
    progress = fold(ev("run_started", stages=["s"], partitions=1, pid=7), start("p"))
    p = progress.partitions[("s", "p")]
    assert (p.phase, p.attempt, p.reason, p.elapsed_s(T0 + 4)) == (Phase.RUNNING, 1, "missing", 4.0)

    progress.apply(
        ev(
            "retried",
            T0 + 5,
            stage="s",
            partition="p",
            attempt=1,
            error="HTTP 429",
            error_class="http_429",
            backoff_s=2.5,
        )
    )
    assert (p.phase, p.backoff_until, p.error_class, p.elapsed_s(T0 + 6)) == (
        Phase.BACKING_OFF,
        T0 + 7.5,
        "http_429",
        None,
    )
    assert progress.phase_counts("s")["backing_off"] == 1

    progress.apply(start("p", T0 + 8, attempt=2, reason="retry"))
    assert (p.phase, p.attempt, p.reason, p.backoff_until) == (Phase.RUNNING, 2, "missing", None)

    progress.apply(ev("promoted", T0 + 10, stage="s", partition="p", attempt=2, duration_s=2.0))
    assert (p.phase, p.duration_s, p.finished_at) == (Phase.DONE, 2.0, T0 + 10)
    assert progress.phase_counts() == {**dict.fromkeys((ph.value for ph in Phase), 0), "done": 1}
    assert [(f.attempt, f.error_class, f.final) for f in progress.failures] == [(1, "http_429", False)]


def test_final_events_set_their_phase_and_keep_the_reason():
    progress = fold(
        start("a"),
        ev("failed", stage="s", partition="a", attempt=1, error="timeout after 1s", error_class="timeout"),
        ev("skipped", stage="s", partition="b", reason="up to date"),
        ev("blocked", stage="s", partition="c", reason="input s/x failed"),
        ev("failed", stage="s", partition="d", error="bad blueprint", error_class="blueprint"),
    )
    phases = {k[1]: (v.phase, v.reason) for k, v in progress.partitions.items()}
    assert phases == {
        "a": (Phase.FAILED, "missing"),
        "b": (Phase.SKIPPED, "up to date"),
        "c": (Phase.BLOCKED, "input s/x failed"),
        "d": (Phase.FAILED, None),
    }
    assert [(f.partition, f.final) for f in progress.failures] == [("a", True), ("d", True)]


def test_interrupt_marks_the_run_and_each_interrupted_partition():
    progress = fold(start("a"), ev("interrupt_requested"), ev("interrupted", stage="s", partition="a"))
    assert progress.interrupt_requested
    assert progress.partitions[("s", "a")].phase is Phase.INTERRUPTED
    assert progress.running() == []


def test_a_halt_stops_partitions_backing_off_but_not_running_ones():
    progress = fold(
        start("a"),
        start("b"),
        ev("retried", stage="s", partition="b", attempt=1, error="x", error_class="exit", backoff_s=60),
        ev("halted", reason="halted: 1 of 2 partitions failed (--halt-on 50%)"),
    )
    assert progress.partitions[("s", "a")].phase is Phase.RUNNING
    b = progress.partitions[("s", "b")]
    assert (b.phase, b.reason) == (Phase.HALTED, "halted: 1 of 2 partitions failed (--halt-on 50%)")
    assert progress.halted == b.reason and progress.eta_s() is None


def test_a_stage_budget_halt_is_kept_per_stage():
    progress = fold(
        ev("halted", stage="s", reason="halted: stage s budget max_cost_usd 1 reached (spent 1.2)")
    )
    assert progress.halted is None and progress.halted_stages == {
        "s": "halted: stage s budget max_cost_usd 1 reached (spent 1.2)"
    }


def test_eta_is_remaining_times_mean_duration_over_parallelism():
    progress = fold(ev("run_started", partitions=10))
    assert progress.eta_s() is None  # no partition done yet
    progress.apply_all(
        [
            start("a"),
            start("b"),
            ev("promoted", stage="s", partition="a", attempt=1, duration_s=10.0),
            ev("promoted", stage="s", partition="b", attempt=1, duration_s=20.0),
            start("c"),
            start("d"),
        ]
    )
    # 8 remaining x 15 s mean / 2 running
    assert progress.eta_s() == 60.0
    progress.apply(ev("run_finished", ok=True))
    assert progress.eta_s() == 0.0 and progress.finished and progress.ok


def test_each_agents_concurrency_limit_is_its_latest_started_limit():
    progress = fold(
        start("a", limit=8),
        start("b", limit=5),  # lowered after a 429
        ev("started", stage="s", partition="c", attempt=1, agent="other", limit=2),
        start("d"),  # no limit: unchanged
    )
    assert progress.agent_limits == {"fake": 5, "other": 2}


def test_usage_sums_over_attempts_and_ignores_hostile_numbers():
    progress = fold(
        ev("retried", stage="s", partition="a", attempt=1, usage={"cost_usd": 0.25, "input_tokens": 100}),
        ev("promoted", stage="s", partition="a", attempt=2, usage={"cost_usd": 0.5, "output_tokens": 7}),
        ev(
            "failed",
            stage="s",
            partition="b",
            attempt=1,
            usage={"cost_usd": float("nan"), "input_tokens": True},
        ),
        ev("promoted", stage="s", partition="c", attempt=1, usage="lots"),
    )
    a = progress.partitions[("s", "a")].usage
    assert (a.cost_usd, a.input_tokens, a.output_tokens, a.tokens) == (0.75, 100, 7, 107)
    assert progress.usage.to_json() == {"cost_usd": 0.75, "input_tokens": 100, "output_tokens": 7}
    assert progress.partitions[("s", "b")].usage.to_json() == {}


def test_only_the_last_n_failures_are_kept():
    progress = RunProgress(recent=3)
    for i in range(5):
        progress.apply(ev("failed", stage="s", partition=f"p{i}", attempt=1, error=f"e{i}"))
    assert [f.error for f in progress.failures] == ["e2", "e3", "e4"]


def test_stage_counts_barriers_and_unknown_events():
    progress = fold(
        ev("stage_finished", stage="s", counts={"complete": 3, "failed": 1}),
        ev("barrier", stage="s", met=False, complete=3, total=4, missing=[]),
        ev("teleported", stage="s", partition="p"),
        ev("started"),  # no stage or partition: nothing to track
    )
    assert progress.stage_counts == {"s": {"complete": 3, "failed": 1}}
    assert progress.barriers == {"s": {"met": False, "complete": 3, "total": 4}}
    assert progress.partitions == {}


def test_to_json_is_plain_json():
    progress = fold(
        ev("run_started", partitions=2), start("a", limit=2), ev("failed", stage="s", partition="b")
    )
    data = json.loads(json.dumps(progress.to_json(now=T0 + 3)))
    assert data["running"][0]["elapsed_s"] == 3.0 and data["phases"]["failed"] == 1
    assert data["agent_limits"] == {"fake": 2} and data["failures"][0]["partition"] == "b"


# -- the snapshot: disk joined with the run -------------------------------------------------


def workspace(project: Project) -> Workspace:
    return Workspace(load_project(project.root))


def write_run(project: Project, run_id: str, events: list[dict[str, Any]]) -> None:
    run_dir = project.root / "wip" / "runs" / run_id
    run_dir.mkdir(parents=True)
    lines = [json.dumps({"run_id": run_id, **e}) + "\n" for e in events]
    (run_dir / "events.jsonl").write_text("".join(lines))


def test_snapshot_of_a_project_that_never_ran(make_project: Callable[..., Project]):
    project = make_project(n_items=2)
    snap = take_snapshot(workspace(project))
    (stage,) = snap.stages
    assert (stage.name, stage.counts["missing"], snap.run, snap.progress) == ("work", 2, None, None)
    assert [(p.id, p.status, p.phase, p.attempts) for p in stage.partitions] == [
        ("item01", "missing", None, 0),
        ("item02", "missing", None, 0),
    ]


def test_snapshot_after_a_real_run(make_project: Callable[..., Project]):
    project = make_project(n_items=3)
    project.script({"default": {"action": "succeed"}, "item02": {"action": "fail"}})
    assert project.orch("run").returncode == 3
    snap = take_snapshot(workspace(project))
    assert snap.run is not None and snap.run.finished and not snap.is_live
    stage = snap.stage("work")
    rows = {p.id: (p.status, p.phase, p.attempt, p.attempts) for p in stage.partitions}
    assert rows == {
        "item01": ("complete", Phase.DONE, 1, 1),
        "item02": ("failed", Phase.FAILED, 1, 1),
        "item03": ("complete", Phase.DONE, 1, 1),
    }
    assert stage.partitions[1].error and stage.partitions[1].live_reason == "missing"
    assert stage.barrier == {"met": False, "complete": 2, "total": 3}
    data = json.loads(json.dumps(snap.to_json()))
    assert data["run"]["finished"] and data["run"]["progress"]["phases"]["done"] == 2
    assert data["totals"]["counts"]["complete"] == 2 and data["stages"][0]["partitions"][0]["id"] == "item01"


def test_a_live_run_shows_running_and_queued_not_disk_guesses(make_project: Callable[..., Project]):
    project = make_project(n_items=3)
    now = 2_000_000_000.0
    write_run(
        project,
        f"20260101T000000Z-{os.getpid()}",
        [
            {"ts": now - 10, "event": "run_started", "stages": ["work"], "partitions": 3, "pid": os.getpid()},
            {
                "ts": now - 4,
                "event": "started",
                "stage": "work",
                "partition": "item01",
                "attempt": 1,
                "agent": "fake",
                "reason": "missing",
                "limit": 4,
            },
        ],
    )
    snap = take_snapshot(workspace(project), now=now)
    assert snap.is_live
    rows = {p.id: (p.phase, p.elapsed_s, p.live_reason) for p in snap.stage("work").partitions}
    assert rows == {
        "item01": (Phase.RUNNING, 4.0, "missing"),
        "item02": (Phase.QUEUED, None, None),
        "item03": (Phase.QUEUED, None, None),
    }
    assert snap.progress is not None and snap.progress.agent_limits == {"fake": 4}


def test_a_killed_run_shows_its_unfinished_partitions_as_interrupted(make_project: Callable[..., Project]):
    project = make_project(n_items=2)
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(child.stdout)
    write_run(
        project,
        f"20260101T000000Z-{pid}",
        [
            {"ts": 1.0, "event": "run_started", "stages": ["work"], "partitions": 2, "pid": pid},
            {"ts": 2.0, "event": "started", "stage": "work", "partition": "item01", "attempt": 1},
        ],
    )
    snap = take_snapshot(workspace(project))
    assert snap.run is not None and not snap.run.alive and not snap.run.finished
    assert [p.phase for p in snap.stage("work").partitions] == [Phase.INTERRUPTED, None]


def test_a_chosen_run_id_must_exist(make_project: Callable[..., Project]):
    project = make_project(n_items=1)
    with pytest.raises(UsageError, match="no run '20990101T000000Z-1' under"):
        take_snapshot(workspace(project), run_id="20990101T000000Z-1")
    with pytest.raises(UsageError):
        take_snapshot(workspace(project), run_id="../..")
