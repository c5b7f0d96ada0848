"""The runtime (orch.engine.runtime) records each partition's phase through the lifecycle table."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from orch.config.project import load_project
from orch.config.workspace import Workspace
from orch.engine.context import RunContext
from orch.engine.lifecycle import Phase, Trigger
from orch.engine.runtime import RunOptions, Scheduler
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
