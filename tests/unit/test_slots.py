"""Run slots: attempts wait for the admission policy, first come first served within a stage."""

from __future__ import annotations

import asyncio

import pytest

from orch.config.stages import Stage
from orch.engine.slots import Slots


def stage(name: str, max_parallel: int | None = None) -> Stage:
    return Stage(name=name, blueprint="a.md", output=f"data/{name}/<ID>", max_parallel=max_parallel)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class Runner:
    """Starts holders of run slots and records the order they got in."""

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self.started: list[str] = []
        self.done: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, label: str, of: Stage) -> None:
        self.done[label] = asyncio.Event()
        self.tasks[label] = asyncio.create_task(self._hold(label, of))

    async def _hold(self, label: str, of: Stage) -> None:
        async with self.slots.run_slot(of):
            self.started.append(label)
            await self.done[label].wait()

    async def finish(self, label: str) -> None:
        self.done[label].set()
        await self.tasks[label]
        await settle()


def test_a_stage_runs_at_most_its_limit_in_arrival_order() -> None:
    asyncio.run(asyncio.wait_for(_a_stage_runs_at_most_its_limit_in_arrival_order(), 10))


async def _a_stage_runs_at_most_its_limit_in_arrival_order() -> None:
    a = stage("a", max_parallel=2)
    runner = Runner(Slots(single_stage=False, option_max_parallel=None, project_max_parallel=None))
    for label in ("a1", "a2", "a3", "a4"):
        runner.start(label, a)
    await settle()
    assert runner.started == ["a1", "a2"]
    await runner.finish("a2")
    assert runner.started == ["a1", "a2", "a3"]
    await runner.finish("a1")
    assert runner.started == ["a1", "a2", "a3", "a4"]
    assert runner.slots.policy.running == 2


def test_the_run_limit_spans_stages_and_a_full_stage_does_not_block_another() -> None:
    asyncio.run(asyncio.wait_for(_the_run_limit_spans_stages_and_a_full_stage_does_not_block_another(), 10))


async def _the_run_limit_spans_stages_and_a_full_stage_does_not_block_another() -> None:
    a, b = stage("a", max_parallel=1), stage("b", max_parallel=4)
    runner = Runner(Slots(single_stage=False, option_max_parallel=None, project_max_parallel=2))
    runner.start("a1", a)
    runner.start("a2", a)  # stage a is full: waits
    runner.start("b1", b)  # the run has room: goes ahead of a2
    runner.start("b2", b)  # the run is full
    await settle()
    assert runner.started == ["a1", "b1"]
    await runner.finish("b1")
    assert runner.started == ["a1", "b1", "b2"]  # a2 still waits for stage a
    await runner.finish("a1")
    assert runner.started == ["a1", "b1", "b2", "a2"]


def test_max_parallel_option_sets_the_limit_of_a_single_stage_run() -> None:
    asyncio.run(asyncio.wait_for(_max_parallel_option_sets_the_limit_of_a_single_stage_run(), 10))


async def _max_parallel_option_sets_the_limit_of_a_single_stage_run() -> None:
    a = stage("a", max_parallel=5)
    slots = Slots(single_stage=True, option_max_parallel=1, project_max_parallel=None)
    runner = Runner(slots)
    runner.start("a1", a)
    runner.start("a2", a)
    await settle()
    assert runner.started == ["a1"]
    assert slots.limit(a) == 1


def test_cancelled_waiters() -> None:
    asyncio.run(asyncio.wait_for(_cancelled_waiters(), 10))


async def _cancelled_waiters() -> None:
    a = stage("a", max_parallel=1)
    runner = Runner(Slots(single_stage=False, option_max_parallel=None, project_max_parallel=None))
    runner.start("a1", a)
    runner.start("a2", a)
    runner.start("a3", a)
    await settle()
    runner.tasks["a2"].cancel()  # cancelled while waiting
    await settle()
    # a1 ends and lets a3 in; a3 is cancelled before it runs: its slot goes back
    runner.done["a1"].set()
    await asyncio.sleep(0)  # a1 releases and lets a3 in; a3 has not run yet
    assert runner.slots.policy.running == 1
    runner.tasks["a3"].cancel()
    await settle()
    with pytest.raises(asyncio.CancelledError):
        await runner.tasks["a3"]
    with pytest.raises(asyncio.CancelledError):
        await runner.tasks["a2"]
    assert runner.started == ["a1"]
    assert runner.slots.policy.running == 0
    runner.start("a4", a)
    await settle()
    assert runner.started == ["a1", "a4"]
