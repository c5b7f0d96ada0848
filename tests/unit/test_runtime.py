"""The runtime (orch.engine.runtime) records each partition's phase through the lifecycle table."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from orch.config.partitions import Partition
from orch.config.project import load_project
from orch.config.workspace import Workspace
from orch.engine import runtime
from orch.engine.context import RunContext
from orch.engine.lifecycle import OutcomeStatus, Phase, Trigger
from orch.engine.runtime import Outcome, RunOptions, Scheduler
from tests.conftest import Project


@pytest.fixture
def project(make_project: Callable[..., Project], monkeypatch: pytest.MonkeyPatch) -> Project:
    """A 4-partition project (one retry) whose fake agent is configured through the environment."""
    made = make_project(4, retries=1)
    for name, value in made.env().items():
        if name.startswith("FAKE_AGENT"):
            monkeypatch.setenv(name, value)
    return made


def run_recording(root: Path, monkeypatch: pytest.MonkeyPatch, **options: object) -> tuple[Scheduler, dict]:
    """Run stage `work`; return the scheduler and every partition's triggers, in order."""
    paths: dict[str, list[Trigger]] = {}
    real = RunContext.move

    def move(self: RunContext, partition, trigger: Trigger) -> Phase:  # type: ignore[no-untyped-def]
        paths.setdefault(partition.id, []).append(trigger)
        return real(self, partition, trigger)

    monkeypatch.setattr(RunContext, "move", move)
    scheduler = Scheduler(
        Workspace(load_project(root)), RunOptions(stages=("work",), **options), rng=random.Random(0)
    )
    asyncio.run(scheduler.run())
    return scheduler, paths


def test_each_partition_walks_the_table_to_its_outcome(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.script(
        {
            "default": {"action": "succeed"},
            "item02": [{"action": "partial"}, {"action": "succeed"}],
            "item03": [{"action": "fail", "exit": 3}],
        }
    )
    scheduler, paths = run_recording(project.root, monkeypatch, max_parallel=2)
    T = Trigger
    first_try = [
        T.INPUTS_READY,
        T.PREPARE,
        T.PREPARED,
        T.START,
        T.AGENT_SUCCEEDED,
        T.CHECKS_PASSED,
        T.PROMOTED,
    ]
    assert paths["item01"] == first_try
    assert paths["item02"] == [
        *first_try[:5], T.RETRY, T.BACKOFF_OVER, T.START, T.AGENT_SUCCEEDED, T.CHECKS_PASSED, T.PROMOTED,
    ]  # fmt: skip
    assert paths["item03"] == [*first_try[:4], T.RETRY, T.BACKOFF_OVER, T.START, T.FAIL]
    assert scheduler.phases == {
        ("work", "item01"): Phase.DONE,
        ("work", "item02"): Phase.DONE,
        ("work", "item03"): Phase.FAILED,
        ("work", "item04"): Phase.DONE,
    }


def test_a_rerun_finds_complete_partitions_up_to_date(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.script({"default": {"action": "succeed"}})
    run_recording(project.root, monkeypatch)
    scheduler, paths = run_recording(project.root, monkeypatch, halt_on_pct=1.0)
    assert paths == {f"item0{i}": [Trigger.NOT_NEEDED] for i in range(1, 5)}
    assert set(scheduler.phases.values()) == {Phase.UP_TO_DATE}
    assert scheduler.phase("work", "item01") is Phase.UP_TO_DATE


def test_halt_on_halts_queued_partitions(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.script({"default": {"action": "fail", "exit": 2}})
    scheduler, paths = run_recording(project.root, monkeypatch, max_parallel=1, halt_on_pct=25.0)
    assert scheduler.phase("work", "item01") is Phase.FAILED
    assert {scheduler.phase("work", f"item0{i}") for i in (2, 3, 4)} == {Phase.HALTED}
    assert paths["item04"][-1] is Trigger.HALT


def test_tasks_are_made_in_start_order_within_the_window(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window of one: one partition has a task at a time, and every partition still runs."""
    monkeypatch.setattr(runtime, "WINDOW_MIN", 1)
    monkeypatch.setattr(runtime, "WINDOW_PER_SLOT", 1)
    live, most, started = [0], [0], []
    real = Scheduler._partition_task

    async def counted(self: Scheduler, partition: Partition) -> Outcome:
        live[0] += 1
        most[0] = max(most[0], live[0])
        started.append(partition.id)
        try:
            return await real(self, partition)
        finally:
            live[0] -= 1

    monkeypatch.setattr(Scheduler, "_partition_task", counted)
    project.script({"default": {"action": "succeed"}})
    scheduler, _ = run_recording(project.root, monkeypatch, max_parallel=1)
    assert most[0] == 1
    assert started == ["item01", "item02", "item03", "item04"]
    assert set(scheduler.phases.values()) == {Phase.DONE}


def test_summary_outcomes_come_in_start_order_without_manifests(project: Project) -> None:
    project.script({"default": {"action": "succeed"}})
    scheduler = Scheduler(Workspace(load_project(project.root)), RunOptions(stages=("work",)))
    summary = asyncio.run(scheduler.run())
    assert [(o.partition, o.status, o.manifest) for o in summary.outcomes] == [
        (f"item0{i}", OutcomeStatus.COMPLETE, None) for i in range(1, 5)
    ]


def test_stop_ends_partitions_not_yet_given_a_task_as_interrupted(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "WINDOW_MIN", 1)
    monkeypatch.setattr(runtime, "WINDOW_PER_SLOT", 1)
    project.script({"default": {"action": "succeed"}})
    scheduler = Scheduler(Workspace(load_project(project.root)), RunOptions(stages=("work",), max_parallel=1))
    real = RunContext.move

    def move(self: RunContext, partition: Partition, trigger: Trigger) -> Phase:
        phase = real(self, partition, trigger)
        if trigger is Trigger.START:  # item01 is about to start its agent
            scheduler.stop()
        return phase

    monkeypatch.setattr(RunContext, "move", move)
    summary = asyncio.run(scheduler.run())
    assert summary.interrupted
    assert [(o.partition, o.status) for o in summary.outcomes] == [
        (f"item0{i}", OutcomeStatus.INTERRUPTED) for i in range(1, 5)
    ]
    assert set(scheduler.phases.values()) == {Phase.INTERRUPTED}
    events = [json.loads(line) for line in summary.events_path.read_text().splitlines()]
    assert [e["partition"] for e in events if e["event"] == "interrupted"] == [
        f"item0{i}" for i in range(1, 5)
    ]
