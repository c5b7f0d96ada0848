"""Run partitions: an asyncio task per partition in scope, events, barriers, stop.

A task waits for the upstream partitions it reads, re-assesses itself from
disk, then runs attempts in a staging directory under the partition lock
(`orch.engine.partition`); an attempt that passes the expect rules is
promoted atomically, one that fails is archived under `wip/attempts/` and
retried with exponential backoff and full jitter. Each partition's phase
(`orch.engine.lifecycle.Phase`) is readable while the run goes on.

Tasks are made in start order as earlier ones end, a window per stage
(`task_window`), so a run's memory does not grow with a task, an assessed
state and a fingerprint for every one of 100k waiting partitions.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import time
from collections.abc import Mapping, Sequence

from orch.config.partitions import Partition
from orch.config.workspace import ChildKey, Workspace
from orch.engine.context import RunContext
from orch.engine.lifecycle import ErrorClass, OutcomeStatus, Phase, Trigger
from orch.engine.outcomes import DONE, Outcome, RunOptions, RunSummary
from orch.engine.partition import PartitionRun
from orch.engine.promotion import Promoter
from orch.engine.selection import not_selected, select
from orch.engine.stage_ends import StageEnds
from orch.engine.staging import archive_all, clean_if_dead
from orch.errors import BlueprintError
from orch.executors import Executor
from orch.store.faults import describe, error_class_of, traceback_of
from orch.store.locks import PartitionLock
from orch.store.manifest import Manifest, read_manifest
from orch.store.runlog import EventSink

__all__ = ["DONE", "Outcome", "Promoter", "RunOptions", "RunSummary", "Scheduler", "task_window"]

#: Live tasks per run slot of a stage, and at least `WINDOW_MIN`: enough that
#: its run and prepare-ahead slots never wait for a task to be made, while
#: up-to-date partitions stream past.
WINDOW_PER_SLOT = 4
WINDOW_MIN = 64


def task_window(slots: int) -> int:
    """Return how many partitions of a stage with `slots` run slots have a task at once."""
    return max(WINDOW_MIN, WINDOW_PER_SLOT * slots)


class Scheduler:
    """Runs the partitions of one or more stages.

    Args:
        workspace: The loaded project.
        options: Scope and behaviour of the run.
        sinks: Receive every event (e.g. the progress display).
        executor: Where attempts run; a LocalExecutor by default.
        rng: Random source for backoff jitter (seedable in tests).
    """

    def __init__(
        self,
        workspace: Workspace,
        options: RunOptions,
        sinks: list[EventSink] | None = None,
        executor: Executor | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.ctx = RunContext(workspace, options, sinks, executor, rng)
        self.ws = workspace
        self.options = options
        self.run_id = self.ctx.run_id
        self.log = self.ctx.log
        self.executor = self.ctx.executor
        self._futures: dict[ChildKey, asyncio.Future[Outcome]] = {}
        self._tasks: set[asyncio.Task[Outcome]] = set()
        #: The executor's start (connecting to a cluster) while it runs; `stop()` cancels it.
        self._starting: asyncio.Future[None] | None = None
        self._ends = StageEnds(self.ws, self.options, self.ctx, self.log)
        self._crash: BaseException | None = None

    # -- public ---------------------------------------------------------------

    @property
    def phases(self) -> Mapping[ChildKey, Phase]:
        """Each partition's phase now, by `(stage, partition id)` (live during `run`)."""
        return self.ctx.phases

    def phase(self, stage: str, partition: str) -> Phase:
        """Return the phase of one partition in scope (waiting for inputs until its task starts)."""
        return self.ctx.phases.get((stage, partition), Phase.WAITING_FOR_INPUTS)

    def scope(self) -> list[Partition]:
        """Return the partitions in scope, stage by stage in start order."""
        only = self.options.only
        return [
            p
            for name in self.options.stages
            for p in self.ws.partitions.for_stage(name)
            if only is None or p.id in only
        ]

    async def run(self) -> RunSummary:
        """Run every partition in scope; never raises for a failed partition.

        Writes `wip/runs/<run-id>/events.jsonl`. Installs no signal handler and
        no child watcher (the CLI does); `stop()` stops the run (running agents
        are terminated and recorded as interrupted).
        """
        ctx = self.ctx
        started = time.monotonic()
        summary = RunSummary(self.run_id, events_path=self.log.path)
        partitions = self.scope()
        ctx.halt.scheduled = len(partitions)
        for partition in partitions:
            self._ends.sizes[partition.stage] = self._ends.sizes.get(partition.stage, 0) + 1
            ctx.phases[(partition.stage, partition.id)] = Phase.WAITING_FOR_INPUTS
        await self._start_executor()
        self.log.emit(
            "run_started", stages=list(self.options.stages), partitions=len(partitions), pid=os.getpid()
        )
        report_to = getattr(self.executor, "report_to", None)
        if report_to is not None:  # a cluster executor's workers joining, refused and leaving
            report_to(self.log.emit)
        loop = asyncio.get_running_loop()
        try:
            # a future only for what a later partition of this run reads: it carries the manifest
            for key in self._read_in_run(partitions):
                self._futures[key] = loop.create_future()
            outcomes: list[Outcome | None] = [None] * len(partitions)
            try:
                await asyncio.gather(
                    *(self._feed(partitions, lo, hi, outcomes) for lo, hi in _stage_ranges(partitions))
                )
            except asyncio.CancelledError:
                for task in list(self._tasks):
                    task.cancel()
                raise
            if self._crash is not None:
                raise self._crash
            summary.outcomes = [o for o in outcomes if o is not None]
            barriers = self._ends.barriers
            summary.barriers = [barriers[n] for n in self.options.stages if n in barriers]
        finally:
            await self.executor.aclose()
            ctx.fs.shutdown(wait=True)
        summary.interrupted = ctx.stopping
        summary.disk_fault = ctx.disk_fault
        summary.stop_signal = ctx.stop_signal
        summary.halted = ctx.halt.reason or next(
            (o.reason for o in summary.outcomes if o.status == OutcomeStatus.HALTED), None
        )
        summary.duration_s = round(time.monotonic() - started, 3)
        self.log.emit(
            "run_finished",
            ok=summary.ok,
            interrupted=summary.interrupted,
            halted=summary.halted,
            duration_s=summary.duration_s,
            counts=summary.counts(),
        )
        self.log.close()
        return summary

    def stop(self, signal_name: str | None = None) -> None:
        """Stop starting partitions and interrupt running attempts (Ctrl-C).

        Args:
            signal_name: The signal that asked for it (e.g. "SIGHUP"), if any; the
                first one is kept in the summary, which sets the exit code.
        """
        if self.ctx.stopping:
            return
        self.ctx.stop_signal = signal_name
        self.ctx.stopping = True
        self.log.emit("interrupt_requested")
        if self._starting is not None:
            self._starting.cancel()
        for task in list(self._tasks):
            task.cancel()

    async def _start_executor(self) -> None:
        """Let a cluster executor connect and check its workers; `stop()` meanwhile cancels
        that (see `_await_start`).

        Raises:
            ConfigError, PreflightFailed: the executor's own (cluster unreachable,
                a worker refused, an agent's command missing on the workers).
            CancelledError: the run itself was cancelled (the executor is closed first).
        """
        start = getattr(self.executor, "start", None)
        if start is not None and not self.ctx.stopping:
            self._starting = asyncio.ensure_future(start())
            try:
                await _await_start(self._starting, self.executor)
            finally:
                self._starting = None

    # -- tasks --------------------------------------------------------------------

    def _read_in_run(self, partitions: Sequence[Partition]) -> set[ChildKey]:
        """Return the partitions in scope that a partition in scope reads (fan-in, `needs`)."""
        stages, only = set(self.options.stages), self.options.only
        return {
            key
            for partition in partitions
            for key in partition.children
            if key[0] in stages and (only is None or key[1] in only)
        }

    async def _feed(
        self, partitions: Sequence[Partition], start: int, end: int, outcomes: list[Outcome | None]
    ) -> None:
        """Make a task for each of `partitions[start:end]` (one stage) in start order, at
        most `task_window` alive at once; return when all have ended. After `stop()` the
        rest end as interrupted without a task.
        """
        size = task_window(self.ctx.slots.limit(self.ws.project.stage(partitions[start].stage)))
        window = asyncio.Semaphore(size)
        for index in range(start, end):
            await window.acquire()
            partition = partitions[index]
            if self.ctx.stopping:
                outcomes[index] = self._settle(partition, self._interrupted(partition))
                window.release()
                continue
            task = asyncio.create_task(self._partition_task(partition))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._task_done, window, partition, index, outcomes))
        for _ in range(size):  # every task of the stage has ended
            await window.acquire()

    def _task_done(
        self,
        window: asyncio.Semaphore,
        partition: Partition,
        index: int,
        outcomes: list[Outcome | None],
        task: asyncio.Task[Outcome],
    ) -> None:
        self._tasks.discard(task)
        window.release()
        if task.cancelled():  # by stop() before its first step
            outcomes[index] = self._settle(partition, self._interrupted(partition))
        elif task.exception() is not None:
            self._crash = self._crash or task.exception()
        else:
            outcomes[index] = _summarised(task.result())

    # -- one partition ------------------------------------------------------------

    def _interrupted(self, partition: Partition) -> Outcome:
        self.log.emit("interrupted", stage=partition.stage, partition=partition.id)
        return Outcome(partition.stage, partition.id, OutcomeStatus.INTERRUPTED, "interrupted (Ctrl-C)")

    def _settle(self, partition: Partition, outcome: Outcome) -> Outcome:
        """Record how `partition` ended: its phase, its future, its stage's count."""
        self.ctx.settle(partition, outcome.status)
        future = self._futures.get((partition.stage, partition.id))
        if future is not None and not future.done():
            future.set_result(outcome)
        self._ends.finished_one(outcome)
        return _summarised(outcome)

    async def _partition_task(self, partition: Partition) -> Outcome:
        outcome = Outcome(
            partition.stage, partition.id, OutcomeStatus.INTERRUPTED, "interrupted before start"
        )
        try:
            outcome = await self._partition(partition)
        except asyncio.CancelledError:
            outcome = self._interrupted(partition)
        except BlueprintError as err:
            outcome = Outcome(partition.stage, partition.id, OutcomeStatus.FAILED, str(err))
            self.log.emit(
                "failed",
                stage=partition.stage,
                partition=partition.id,
                error=str(err),
                error_class=ErrorClass.BLUEPRINT,
            )
        except Exception as err:  # one partition's trouble stays in that partition
            outcome = self._internal_failure(partition, err)
        return self._settle(partition, outcome)

    def _internal_failure(self, partition: Partition, err: Exception) -> Outcome:
        """Fail `partition` for an exception outside any attempt (e.g. staging on a full disk)."""
        error_class = error_class_of(err)
        error = f"{'disk fault' if error_class == ErrorClass.DISK else 'internal error'}: {describe(err)}"
        self.ctx.note_disk_fault(err)
        self.ctx.record_failure()
        self.log.emit(
            "failed",
            stage=partition.stage,
            partition=partition.id,
            error=error,
            error_class=error_class,
            traceback=traceback_of(err),
        )
        self.log.note(f"- **{partition.stage} / {partition.id}** failed: {error}", "failures")
        return Outcome(partition.stage, partition.id, OutcomeStatus.FAILED, error)

    async def _partition(self, partition: Partition) -> Outcome:
        ctx = self.ctx
        stage = self.ws.project.stage(partition.stage)
        agent = ctx.planner.agent_for(stage)
        manifests, blocked = await self._inputs(partition)
        if blocked:
            self.log.emit("blocked", stage=stage.name, partition=partition.id, reason=blocked)
            ctx.move(partition, Trigger.INPUT_FAILED)
            return Outcome(stage.name, partition.id, OutcomeStatus.BLOCKED, blocked)
        state = ctx.planner.assess(partition, agent, manifests)
        selected, why = select(ctx, state)
        if not selected:
            if ctx.planner.has_staging(partition):
                clean_if_dead(ctx, partition)
            return not_selected(ctx, partition, state, why)
        ctx.move(partition, Trigger.INPUTS_READY)
        lock = PartitionLock(self.ws.root, stage.name, partition.id)
        try:
            return await PartitionRun(ctx, partition, agent, state, manifests, why, lock).run()
        except Exception as err:  # a bug or a disk fault in orch's own path: this partition only
            if lock.is_held:  # so every staging directory of the partition is this run's
                await asyncio.to_thread(archive_all, ctx, partition, err)
            return self._internal_failure(partition, err)
        finally:
            lock.release()

    async def _inputs(self, partition: Partition) -> tuple[dict[ChildKey, Manifest | None], str]:
        """Wait for children in this run; return their manifests, or why blocked."""
        manifests: dict[ChildKey, Manifest | None] = {}
        for key in partition.children:
            future = self._futures.get(key)
            if future is not None:
                child = await asyncio.shield(future)
                if child.status not in DONE:
                    return manifests, f"blocked: input {key[0]}/{key[1]} {child.status}"
                manifests[key] = child.manifest or read_manifest(
                    self.ws.root / self.ws.partitions.get(*key).out_dir
                )
            else:
                state = self.ctx.planner.state(*key)
                if not state.is_complete:
                    return manifests, f"blocked: input {key[0]}/{key[1]} is {state.status.value}"
                manifests[key] = state.manifest
        return manifests, ""


def _stage_ranges(partitions: Sequence[Partition]) -> list[tuple[int, int]]:
    """Return `(start, end)` of each stage's run of `partitions` (which come stage by stage)."""
    ranges: list[tuple[int, int]] = []
    for index, partition in enumerate(partitions):
        if index and partition.stage == partitions[index - 1].stage:
            ranges[-1] = (ranges[-1][0], index + 1)
        else:
            ranges.append((index, index + 1))
    return ranges


def _summarised(outcome: Outcome) -> Outcome:
    """`outcome` as the run summary keeps it: without the manifest (only a later partition
    of the run reads that, through its future)."""
    if outcome.manifest is None:
        return outcome
    return Outcome(
        outcome.stage, outcome.partition, outcome.status, outcome.reason,
        outcome.attempts, outcome.duration_s, outcome.usage,
    )  # fmt: skip


async def _await_start(starting: asyncio.Future[None], executor: Executor) -> None:
    """Await an executor's start; if `stop()` cancelled it, close the executor and return,
    so the run goes on stopping (every partition ends as interrupted without starting)."""
    try:
        await starting
    except asyncio.CancelledError:
        await executor.aclose()
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
