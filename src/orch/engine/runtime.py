"""Run partitions: bounded parallelism, timeouts, retries, cancellation, events.

One asyncio task per partition in scope. A task waits for the upstream
partitions it reads, re-assesses itself from disk, then runs attempts in a
staging directory under the partition lock; an attempt that passes the
expect rules is promoted atomically, one that fails is archived under
`wip/attempts/` and retried with exponential backoff and full jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import random
import shutil
import time
from concurrent.futures import Executor as Executor_
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orch.backends import AttemptResult, AttemptSpec, Usage
from orch.config.partitions import Partition
from orch.config.project import NOT_RETRIED_BY_DEFAULT, AgentConfig, ExpectRule, Stage
from orch.config.workspace import ChildKey, Workspace
from orch.engine.plan import PartitionState, Planner, Status
from orch.errors import BlueprintError
from orch.executors import Executor, LocalExecutor
from orch.executors.processes import kill_orphans
from orch.redact import Redactor
from orch.store.barriers import BarrierEntry, BarrierReport, check_barrier
from orch.store.checks import META_DIR, Finding, SchemaStore, check_outputs
from orch.store.faults import describe, error_class_of, is_disk_fault, traceback_of
from orch.store.runlog import EventSink, RunLog, new_run_id
from orch.store.state import (
    AGENT_LOG,
    PROMPT,
    Manifest,
    OutputFile,
    PartitionLock,
    archive_attempt,
    check_staging,
    find_staging_dirs,
    hash_outputs,
    never_started,
    output_fingerprint,
    promote_many,
    read_manifest,
    scan_outputs,
    staging_dir,
    staging_number,
    touch_meta,
)

#: Signals that stop a run: agents are ended and partitions recorded as interrupted.
#: Outcomes that leave the partition complete.
DONE = frozenset({"complete", "up-to-date"})


@dataclass(frozen=True)
class RunOptions:
    """What a run covers and how.

    Attributes:
        stages: Stages in scope, upstream first.
        only: Partition ids to narrow to (in every stage in scope), or None.
        max_parallel: Overrides each stage's `max_parallel` (stage run) or the
            run-wide limit (orch run); None keeps the configuration.
        agent: Agent name replacing every stage's agent, or None.
        halt_on_pct: Stop starting partitions once this share (0–100) failed.
        retry_failed: Run only partitions whose last attempt failed.
        force: Run every partition in scope, complete or not.
        wait_locks_s: Wait this long for a partition held by another run;
            0 skips it and says so.
    """

    stages: tuple[str, ...]
    only: frozenset[str] | None = None
    max_parallel: int | None = None
    agent: str | None = None
    halt_on_pct: float | None = None
    retry_failed: bool = False
    force: bool = False
    wait_locks_s: float = 0.0


@dataclass
class Outcome:
    """How one partition ended in a run.

    `status` is one of: complete (promoted now), up-to-date (nothing to do),
    failed, interrupted, blocked (an input failed), held (another orch process
    holds it), halted (not started after --halt-on or a budget), skipped (not
    selected, e.g. --retry-failed on a missing partition).
    """

    stage: str
    partition: str
    status: str
    reason: str = ""
    attempts: int = 0
    duration_s: float = 0.0
    usage: Usage | None = None
    manifest: Manifest | None = None


@dataclass
class RunSummary:
    """The result of a run: one Outcome per partition in scope, and flags.

    `disk_fault` says why the run stopped starting partitions after ENOSPC,
    EROFS, EACCES ... (naming the path), or is None.
    """

    run_id: str
    outcomes: list[Outcome] = field(default_factory=list)
    interrupted: bool = False
    stop_signal: str | None = None
    halted: str | None = None
    events_path: Path | None = None
    duration_s: float = 0.0
    barriers: list[BarrierReport] = field(default_factory=list)
    disk_fault: str | None = None

    def count(self, status: str) -> int:
        """Return how many partitions ended with `status`."""
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def ok(self) -> bool:
        """True when every partition in scope is complete or up to date."""
        return all(o.status in DONE for o in self.outcomes) and not self.interrupted

    @property
    def cost_usd(self) -> float:
        """Total cost reported by agents in this run (USD)."""
        return sum((o.usage.cost_usd or 0.0) for o in self.outcomes if o.usage)


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
        self.ws = workspace
        self.options = options
        self.planner = Planner(workspace, options.agent)
        self.executor = executor or LocalExecutor()
        self.rng = rng or random.Random()
        self.run_id = new_run_id()
        self.redactor = Redactor.for_agents(workspace.project.agents.values())
        self.log = RunLog(workspace.root, self.run_id, sinks, self.redactor)
        self._sinks = sinks or []
        self._futures: dict[ChildKey, asyncio.Future[Outcome]] = {}
        self._tasks: list[asyncio.Task[Outcome]] = []
        self._stage_limits: dict[str, asyncio.Semaphore] = {}
        self._ahead_limits: dict[str, asyncio.Semaphore] = {}
        self._global: asyncio.Semaphore | None = None
        self._halted: str | None = None
        self._stopping = False
        self._stop_signal: str | None = None
        self._failed_count = 0
        self._scheduled = 0
        self._cost_run = 0.0
        self._cost_stage: dict[str, float] = {}
        self._cost_invalid: dict[str, str] = {}
        self._stage_sizes: dict[str, int] = {}
        self._stage_done: dict[str, list[Outcome]] = {}
        self._barriers: dict[str, BarrierReport] = {}
        self._stage_halted: set[str] = set()
        self._parents: set[Path] = set()
        self._promoter = Promoter(workspace.root)
        self._disk_fault: str | None = None
        self._traces: dict[Path, str] = {}
        self._fs = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orch-fs")

    # -- public ---------------------------------------------------------------

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
        started = time.monotonic()
        summary = RunSummary(self.run_id, events_path=self.log.path)
        partitions = self.scope()
        self._scheduled = len(partitions)
        for partition in partitions:
            self._stage_sizes[partition.stage] = self._stage_sizes.get(partition.stage, 0) + 1
        if self.ws.project.max_parallel or (len(self.options.stages) > 1 and self.options.max_parallel):
            limit = (
                self.options.max_parallel if len(self.options.stages) > 1 else None
            ) or self.ws.project.max_parallel
            self._global = asyncio.Semaphore(int(limit or 1))
        start = getattr(self.executor, "start", None)
        if start is not None:  # a cluster executor connects and checks its workers first
            await start()
        self.log.emit(
            "run_started", stages=list(self.options.stages), partitions=len(partitions), pid=os.getpid()
        )
        loop = asyncio.get_running_loop()
        try:
            for partition in partitions:
                self._futures[(partition.stage, partition.id)] = loop.create_future()
            for partition in partitions:
                task = asyncio.create_task(self._partition_task(partition))
                self._tasks.append(task)
            outcomes = await asyncio.gather(*self._tasks)
            summary.outcomes = list(outcomes)
            summary.barriers = [self._barriers[n] for n in self.options.stages if n in self._barriers]
        finally:
            await self.executor.aclose()
            self._fs.shutdown(wait=True)
        summary.interrupted = self._stopping
        summary.disk_fault = self._disk_fault
        summary.stop_signal = self._stop_signal
        summary.halted = self._halted or next(
            (o.reason for o in summary.outcomes if o.status == "halted"), None
        )
        summary.duration_s = round(time.monotonic() - started, 3)
        self.log.emit(
            "run_finished",
            ok=summary.ok,
            interrupted=summary.interrupted,
            halted=summary.halted,
            duration_s=summary.duration_s,
            counts={s: summary.count(s) for s in sorted({o.status for o in summary.outcomes})},
        )
        self.log.close()
        return summary

    def stop(self, signal_name: str | None = None) -> None:
        """Stop starting partitions and interrupt running attempts (Ctrl-C).

        Args:
            signal_name: The signal that asked for it (e.g. "SIGHUP"), if any; the
                first one is kept in the summary, which sets the exit code.
        """
        if self._stopping:
            return
        self._stop_signal = signal_name
        self._stopping = True
        self.log.emit("interrupt_requested")
        for task in self._tasks:
            task.cancel()

    # -- one partition ------------------------------------------------------------

    async def _partition_task(self, partition: Partition) -> Outcome:
        key = (partition.stage, partition.id)
        outcome = Outcome(partition.stage, partition.id, "interrupted", "interrupted before start")
        try:
            outcome = await self._partition(partition)
        except asyncio.CancelledError:
            outcome = Outcome(partition.stage, partition.id, "interrupted", "interrupted (Ctrl-C)")
            self.log.emit("interrupted", stage=partition.stage, partition=partition.id)
        except BlueprintError as err:
            outcome = Outcome(partition.stage, partition.id, "failed", str(err))
            self.log.emit(
                "failed",
                stage=partition.stage,
                partition=partition.id,
                error=str(err),
                error_class="blueprint",
            )
        except Exception as err:  # one partition's trouble stays in that partition
            outcome = self._internal_failure(partition, err)
        finally:
            future = self._futures[key]
            if not future.done():
                future.set_result(outcome)
        self._stage_finished_one(outcome)
        return outcome

    def _internal_failure(self, partition: Partition, err: Exception) -> Outcome:
        """Fail `partition` for an exception outside any attempt (e.g. staging on a full disk)."""
        error_class = error_class_of(err)
        error = f"{'disk fault' if error_class == 'disk' else 'internal error'}: {describe(err)}"
        self._note_disk_fault(err)
        self._failed_count += 1
        self._check_halt()
        self.log.emit(
            "failed",
            stage=partition.stage,
            partition=partition.id,
            error=error,
            error_class=error_class,
            traceback=traceback_of(err),
        )
        self.log.note(f"- **{partition.stage} / {partition.id}** failed: {error}", "failures")
        return Outcome(partition.stage, partition.id, "failed", error)

    def _note_disk_fault(self, err: BaseException) -> None:
        """After ENOSPC, EROFS, EACCES ...: start no more partitions (they halt)."""
        if is_disk_fault(err) and self._disk_fault is None:
            self._disk_fault = (
                f"halted: disk fault: {describe(err)}; free space or fix permissions, then run again"
            )
            self.log.emit("halted", reason=self._disk_fault)

    def _stage_finished_one(self, outcome: Outcome) -> None:
        """Count a finished partition; check the stage's barrier after its last one."""
        done = self._stage_done.setdefault(outcome.stage, [])
        done.append(outcome)
        if len(done) < self._stage_sizes.get(outcome.stage, 0) or self._stopping:
            return
        counts: dict[str, int] = {}
        for item in done:
            counts[item.status] = counts.get(item.status, 0) + 1
        self.log.emit("stage_finished", stage=outcome.stage, counts=counts)
        # Outputs promoted by this run were checked in full just before promotion;
        # here size and mtime must still match what the manifest recorded (as in
        # `orch status`). `orch barrier STAGE` re-reads every file.
        planner = Planner(self.ws, self.options.agent, deep=False)
        try:
            report = check_barrier(
                self.ws, outcome.stage, self.options.agent, planner, only=self.options.only
            )
        except Exception as err:  # the outputs changed under us in a way no check expected
            entry = BarrierEntry("-", "error", "-", error_class_of(err), f"cannot check: {describe(err)}")
            report = BarrierReport(outcome.stage, len(done), 0, (entry,))
        self._barriers[outcome.stage] = report
        self.log.emit(
            "barrier",
            stage=outcome.stage,
            met=report.met,
            complete=report.complete,
            total=report.total,
            missing=[e.__dict__ for e in report.entries[:20]],
        )

    async def _partition(self, partition: Partition) -> Outcome:
        stage = self.ws.project.stage(partition.stage)
        agent = self.planner.agent_for(stage)
        manifests, blocked = await self._inputs(partition)
        if blocked:
            self.log.emit("blocked", stage=stage.name, partition=partition.id, reason=blocked)
            return Outcome(stage.name, partition.id, "blocked", blocked)
        state = self.planner.assess(partition, agent, manifests)
        selected, why = self._select(state)
        if not selected:
            if self.planner.has_staging(partition):
                self._clean_if_dead(partition)
            return self._not_selected(partition, state, why)
        lock = PartitionLock(self.ws.root, stage.name, partition.id)
        try:
            return await self._attempts(partition, stage, agent, state, manifests, why, lock)
        except Exception as err:  # a bug or a disk fault in orch's own path: this partition only
            if lock.is_held:  # so every staging directory of the partition is this run's
                await asyncio.to_thread(self._archive_all, partition, err)
            return self._internal_failure(partition, err)
        finally:
            lock.release()

    def _archive_all(self, partition: Partition, err: Exception) -> None:
        """Archive this run's staging directories of `partition` after `err`, with its traceback."""
        out_dir = self.ws.root / partition.out_dir
        for number, path in find_staging_dirs(out_dir):
            record = {
                "n": number,
                "outcome": "failed",
                "error_class": error_class_of(err),
                "error": f"internal error: {describe(err)}",
                "traceback": traceback_of(err),
            }
            with contextlib.suppress(Exception):  # e.g. a full disk: the next run cleans it up
                archive_attempt(self.ws.root, partition.stage, partition.id, path, record, self.redactor)

    async def _prepare(
        self,
        partition: Partition,
        agent: AgentConfig,
        lock: PartitionLock,
        manifests: dict[ChildKey, Manifest | None],
        slot: contextlib.AsyncExitStack,
    ) -> tuple[PartitionState, Path] | Outcome:
        """Get the partition ready to run, then enter its run slot on `slot`.

        Preparing — taking the partition lock, cleaning a dead run's staging
        dirs, looking again (another orch process may have completed it
        meanwhile) and creating the first staging directory — happens while
        earlier partitions still run, so a freed slot never waits for file
        creation (slow on some disks: bench/openai_fanout.py). At most as many
        partitions are prepared ahead as the stage runs at once: a lock is an
        open file, and 10k waiting partitions must not hold 10k of them.
        Preparation goes through one FIFO file-system thread, so partitions
        still reach their slots in start order.

        Returns:
            The state and the staging directory, or the Outcome if the
            partition is held by another process or no longer needs to run.
        """
        stage = self.ws.project.stage(partition.stage)
        self.executor.warm_up(agent)
        async with self._ahead(stage):
            if not await _acquire(lock, self.options.wait_locks_s, self._fs):
                reason = "held by another orch process; skipped (rerun once it finishes, or --wait-locks)"
                self.log.emit("skipped", stage=partition.stage, partition=partition.id, reason=reason)
                return Outcome(partition.stage, partition.id, "held", reason)
            removed = self._clean_dead_staging(partition)
            state = self.planner.assess(partition, agent, manifests, holding_lock=True)
            selected, why = self._select(state)
            if not selected:
                return self._not_selected(partition, state, why)
            staging = await self._new_staging(
                partition, state, self.planner.last_attempt_number(partition, state.manifest, removed) + 1
            )
            try:
                await slot.enter_async_context(self._slots(stage))
            except BaseException:  # interrupted while waiting: nothing ran in it
                _discard_staging(staging)
                raise
        return state, staging

    async def _new_staging(self, partition: Partition, state: PartitionState, number: int) -> Path:
        """Create attempt `number`'s staging directory with its prompt (in the FIFO file-system thread)."""
        out_dir = self.ws.root / partition.out_dir
        if out_dir.parent not in self._parents:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            self._parents.add(out_dir.parent)
        return await asyncio.get_running_loop().run_in_executor(
            self._fs, _make_staging, out_dir, number, state.prompt or ""
        )

    def _not_selected(self, partition: Partition, state: PartitionState, why: str) -> Outcome:
        if state.is_complete:
            status = "up-to-date"
        elif state.status is Status.RUNNING:
            status = "held"
        else:
            status = "skipped"
        self.log.emit("skipped", stage=partition.stage, partition=partition.id, reason=why)
        return Outcome(partition.stage, partition.id, status, why, manifest=state.manifest)

    def _clean_if_dead(self, partition: Partition) -> None:
        """Archive a dead run's staging dirs of a partition this run does not redo."""
        lock = PartitionLock(self.ws.root, partition.stage, partition.id)
        if lock.try_acquire():
            try:
                self._clean_dead_staging(partition)
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
                state = self.planner.state(*key)
                if not state.is_complete:
                    return manifests, f"blocked: input {key[0]}/{key[1]} is {state.status.value}"
                manifests[key] = state.manifest
        return manifests, ""

    def _select(self, state: PartitionState) -> tuple[bool, str]:
        if state.status is Status.RUNNING:
            if self.options.wait_locks_s > 0:
                return True, "held by another orch process; waiting for it"
            return False, "held by another orch process; skipped (rerun once it finishes, or --wait-locks)"
        if self.options.force:
            return True, f"forced ({state.reason})"
        if state.kept is not None:
            return False, f"kept: {state.kept}"
        if self.options.retry_failed:
            if state.status is Status.FAILED:
                return True, state.reason
            failed = self._failed_since_promoted(state)
            if failed:
                return True, failed
            return False, f"not failed ({state.reason}); --retry-failed runs failed ones only"
        if state.is_complete:
            return False, "complete"
        return True, state.reason

    def _failed_since_promoted(self, state: PartitionState) -> str:
        """The error of a failed attempt newer than the partition's outputs ("" if none).

        A forced rerun, or one with another agent, that failed leaves the old
        outputs in place: `--retry-failed` must still retry it.
        """
        if state.manifest is None:
            return ""
        error = self.planner.last_error(state.partition)
        if error is None or error.get("outcome") != "failed":
            return ""
        number = error.get("n")
        if not isinstance(number, int) or number <= state.manifest.attempt:
            return ""
        return f"its last attempt (#{number}) failed: {error.get('error')}"

    def _clean_dead_staging(self, partition: Partition) -> set[int]:
        """Archive staging directories left by a dead run (we hold the lock).

        One that was only prepared (no agent ever ran in it) is removed instead:
        it was no attempt. Returns the attempt numbers removed that way.
        """
        out_dir = self.ws.root / partition.out_dir
        removed = set()
        for number in self.planner.staging_numbers(partition):
            path = staging_dir(out_dir, number)
            if not path.exists():
                continue
            if never_started(path):
                _discard_staging(path)
                removed.add(number)
                self.log.emit(
                    "cleaned", stage=partition.stage, partition=partition.id, attempt=number, started=False
                )
                continue
            killed = kill_orphans(path)
            if killed:
                self.log.emit(
                    "orphans_killed",
                    stage=partition.stage,
                    partition=partition.id,
                    attempt=number,
                    pids=killed,
                )
            archive_attempt(
                self.ws.root,
                partition.stage,
                partition.id,
                path,
                {
                    "n": number,
                    "outcome": "interrupted",
                    "error_class": "interrupted",
                    "error": f"staging directory left by a run that died (cleaned by run {self.run_id})",
                },
            )
            self.log.emit("cleaned", stage=partition.stage, partition=partition.id, attempt=number)
        return removed

    async def _attempts(
        self,
        partition: Partition,
        stage: Stage,
        agent: AgentConfig,
        state: PartitionState,
        manifests: dict[ChildKey, Manifest | None],
        why: str,
        lock: PartitionLock,
    ) -> Outcome:
        history: list[dict[str, Any]] = []
        usage_total: Usage | None = None
        number = 0
        for index in range(stage.retries + 1):
            halt = self._halt_reason(stage)
            if halt:
                return Outcome(stage.name, partition.id, "halted", halt, len(history))
            async with contextlib.AsyncExitStack() as slot:
                prepared: Path | None = None
                if index == 0:
                    ready = await self._prepare(partition, agent, lock, manifests, slot)
                    if isinstance(ready, Outcome):
                        return ready
                    state, prepared = ready
                else:
                    await slot.enter_async_context(self._slots(stage))
                if self._halt_reason(stage):
                    if prepared is not None:
                        _discard_staging(prepared)
                    return Outcome(
                        stage.name, partition.id, "halted", self._halt_reason(stage) or "", len(history)
                    )
                number = staging_number(prepared) if prepared else number + 1
                started = time.time()
                result, staging, outputs, agent_started = await self._run_attempt(
                    partition, stage, agent, state, number, why if index == 0 else "retry", prepared
                )
                number = staging_number(staging)
                if result.ok:
                    result = self._verify_lock(partition, lock, result)
                # budgets and --halt-on must see this attempt before its slot goes
                # to the next partition
                self._add_cost(stage, result.usage)
                final_failure = not result.ok and (
                    index == stage.retries or not self._is_retryable(stage, result)
                )
                if final_failure:
                    self._failed_count += 1
                    self._check_halt()
            usage_total = _add_usage(usage_total, result.usage)
            record = _attempt_record(number, started, result, agent_started, agent.name)
            if staging in self._traces:
                record["traceback"] = self._traces.pop(staging)
            history.append(record)
            if result.ok:
                return await self._complete(
                    partition, stage, agent, state, history, staging, outputs, started, usage_total, why
                )
            archive = await self._archive(stage, partition, staging, record)
            if final_failure:
                return self._failed(partition, stage, history, archive, usage_total)
            delay = self._backoff(stage, index + 1, result.retry_after_s)
            self.log.emit(
                "retried",
                stage=stage.name,
                partition=partition.id,
                attempt=number,
                error=result.error,
                error_class=result.error_class,
                backoff_s=round(delay, 3),
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _complete(
        self,
        partition: Partition,
        stage: Stage,
        agent: AgentConfig,
        state: PartitionState,
        history: list[dict[str, Any]],
        staging: Path,
        outputs: list[OutputFile],
        started: float,
        usage_total: Usage | None,
        why: str,
    ) -> Outcome:
        """Write the manifest and promote a passing attempt (group commit)."""
        record = history[-1]
        try:
            manifest = self._manifest(
                partition, agent, state, record["n"], history, outputs, started, usage_total
            )
            await self._promoter.promote(staging, self.ws.root / partition.out_dir, manifest)
        except Exception as err:  # not the agent's fault: no retry
            error_class = error_class_of(err)
            if error_class == "internal" and isinstance(err, OSError):
                error_class = "promote"
            record.update(
                outcome="failed",
                error=f"cannot promote the outputs: {describe(err)}",
                error_class=error_class,
                traceback=traceback_of(err),
            )
            self._note_disk_fault(err)
            self._failed_count += 1
            self._check_halt()
            archive = await self._archive(stage, partition, staging, record)
            return self._failed(partition, stage, history, archive, usage_total)
        self.log.emit(
            "promoted",
            stage=stage.name,
            partition=partition.id,
            attempt=record["n"],
            duration_s=record["duration_s"],
            usage=record["usage"],
            out_dir=partition.out_dir,
        )
        return Outcome(
            stage.name,
            partition.id,
            "complete",
            why,
            len(history),
            round(time.time() - started, 3),
            usage_total,
            manifest,
        )

    async def _run_attempt(
        self,
        partition: Partition,
        stage: Stage,
        agent: AgentConfig,
        state: PartitionState,
        number: int,
        why: str,
        staging: Path | None = None,
    ) -> tuple[AttemptResult, Path, list[OutputFile], float | None]:
        """Run attempt `number` in `staging` (created now if not prepared) and check its outputs.

        Returns:
            The result (failed by the expect rules if they fail), the staging
            directory, the outputs for the manifest (empty unless passing), and
            the Unix time the agent started (None if it never did).
        """
        out_dir = self.ws.root / partition.out_dir
        if staging is None:
            staging = await self._new_staging(partition, state, number)
        number = staging_number(staging)
        prompt_file = staging / META_DIR / PROMPT
        spec = AttemptSpec(
            stage=stage.name,
            partition=partition.id,
            attempt=number,
            prompt=state.prompt or "",
            work_dir=staging,
            out_dir=out_dir,
            prompt_file=prompt_file,
            log_path=staging / META_DIR / AGENT_LOG,
            expect=stage.expect,
            project_root=self.ws.root,
            timeout_s=stage.timeout_s,
            retry_after_cap_s=stage.backoff_cap_s,
        )

        agent_started: list[float] = []

        def started(worker: str | None = None) -> None:
            agent_started.append(time.time())
            self.log.emit(
                "started",
                stage=stage.name,
                partition=partition.id,
                attempt=number,
                agent=agent.name,
                reason=why,
                limit=self.executor.limit_of(agent),
                **({"worker": worker} if worker else {}),
            )

        try:
            result = await self.executor.run(agent, spec, started)
        except TimeoutError:
            result = AttemptResult(False, f"timeout after {_human_s(stage.timeout_s or 0)}", "timeout")
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # a full disk must not hide the interrupt
                archive_attempt(
                    self.ws.root,
                    stage.name,
                    partition.id,
                    staging,
                    {
                        "n": number,
                        "outcome": "interrupted",
                        "error_class": "interrupted",
                        "error": "interrupted (Ctrl-C or SIGTERM); the agent was terminated",
                    },
                )
            raise
        except Exception as err:  # a backend bug must fail one partition, not the run
            result = AttemptResult(False, f"agent backend error: {type(err).__name__}: {err}", "agent_error")
        if result.error and self.redactor:  # everything downstream (events, notes, stderr) reads this
            result = dataclasses.replace(result, error=self.redactor.text(result.error))
        outputs: list[OutputFile] = []
        if result.ok:  # reads every output: off the event loop
            try:
                findings, outputs = await asyncio.to_thread(_inspect, staging, stage.expect, self.ws.schemas)
            except Exception as err:  # e.g. a disk fault, or a bug: this attempt only
                self._note_disk_fault(err)
                self._traces[staging] = traceback_of(err)
                error = f"cannot check the outputs: {describe(err)}"
                return (
                    AttemptResult(False, error, error_class_of(err), result.exit_code, result.usage),
                    staging,
                    [],
                    agent_started[0] if agent_started else None,
                )
            if findings:
                shown = "; ".join(str(f) for f in findings[:3])
                more = f" (+{len(findings) - 3} more)" if len(findings) > 3 else ""
                result = AttemptResult(
                    False, f"output checks failed: {shown}{more}", "checks", result.exit_code, result.usage
                )
        return result, staging, outputs, (agent_started[0] if agent_started else None)

    async def _archive(
        self, stage: Stage, partition: Partition, staging: Path, record: dict[str, Any]
    ) -> Path | None:
        """Archive a failed attempt; if even that fails (full or read-only disk), say so
        in the events and leave the staging directory to the next run's clean-up."""
        try:
            return await asyncio.to_thread(
                archive_attempt, self.ws.root, stage.name, partition.id, staging, record, self.redactor
            )
        except Exception as err:
            self._note_disk_fault(err)
            self.log.emit(
                "archive_failed",
                stage=stage.name,
                partition=partition.id,
                attempt=record.get("n"),
                error=describe(err),
                error_class=error_class_of(err),
            )
            return None

    def _verify_lock(self, partition: Partition, lock: PartitionLock, result: AttemptResult) -> AttemptResult:
        """Before promotion: is the lock file still ours? Say so if it was deleted.

        The name lock kept other runs out meanwhile, so a restored lock keeps the
        attempt; a new lock file taken by another process fails it (class `lock`).
        """
        check = lock.verify()
        if check == "ok":
            return result
        where = f"wip/locks/{partition.stage}/{partition.id}.lock"
        if check == "restored":
            message = f"{where} was deleted during the run; the second lock held, a new lock file is in place"
        else:
            message = f"{where} was deleted during the run and another process locked the new one"
        self.log.emit(
            "lock_file_lost", stage=partition.stage, partition=partition.id, outcome=check, message=message
        )
        if check == "restored":
            return result
        return AttemptResult(
            False,
            f"{message}; not promoted (rerun once the other run has finished)",
            "lock",
            result.exit_code,
            result.usage,
        )

    def _manifest(
        self,
        partition: Partition,
        agent: AgentConfig,
        state: PartitionState,
        number: int,
        history: list[dict[str, Any]],
        outputs: list[OutputFile],
        started: float,
        usage: Usage | None,
    ) -> Manifest:
        assert state.fingerprint is not None
        fp = state.fingerprint
        manifest = Manifest(
            stage=partition.stage,
            partition=partition.id,
            fingerprint=fp.value,
            parts=fp.parts(),
            output_fingerprint=output_fingerprint(fp.value, outputs),
            attempt=number,
            attempts=history,
            agent={"name": agent.name, "backend": agent.backend},
            outputs=outputs,
            usage=usage.to_json() if usage else {},
            run_id=self.run_id,
            started_at=round(started, 3),
            finished_at=round(time.time(), 3),
        )
        return manifest

    def _failed(
        self,
        partition: Partition,
        stage: Stage,
        history: list[dict[str, Any]],
        archive: Path | None,
        usage: Usage | None,
    ) -> Outcome:
        last = history[-1]
        tries = f"all {len(history)} attempts" if len(history) > 1 else "its attempt"
        reason = f"failed {tries} this run (last: attempt #{last['n']}): {last['error']}"
        where = archive.relative_to(self.ws.root) if archive else "(not archived: see the events)"
        log = f"{where}/{META_DIR}/{AGENT_LOG}" if archive else where
        self.log.emit(
            "failed",
            stage=stage.name,
            partition=partition.id,
            attempt=last["n"],
            error=last["error"],
            error_class=last["error_class"],
            attempts=len(history),
            archive=str(where),
        )
        self.log.note(
            f"- **{stage.name} / {partition.id}** failed after {len(history)} attempt(s); "
            f"last: {last['error']} (attempt {last['n']}). Log: `{log}`",
            "failures",
        )
        return Outcome(
            stage.name,
            partition.id,
            "failed",
            reason,
            len(history),
            sum(h["duration_s"] for h in history),
            usage,
        )

    # -- limits, retries, budgets ---------------------------------------------------

    @contextlib.asynccontextmanager
    async def _slots(self, stage: Stage) -> Any:
        limit = self._stage_limit(stage)
        if self._global is not None:
            async with self._global, limit:
                yield
        else:
            async with limit:
                yield

    def _stage_limit(self, stage: Stage) -> asyncio.Semaphore:
        if stage.name not in self._stage_limits:
            self._stage_limits[stage.name] = asyncio.Semaphore(self._stage_parallel(stage))
        return self._stage_limits[stage.name]

    def _ahead(self, stage: Stage) -> asyncio.Semaphore:
        """How many of the stage's partitions may be prepared (locked, staged) and not yet running."""
        if stage.name not in self._ahead_limits:
            self._ahead_limits[stage.name] = asyncio.Semaphore(self._stage_parallel(stage))
        return self._ahead_limits[stage.name]

    def _stage_parallel(self, stage: Stage) -> int:
        single = len(self.options.stages) == 1
        return int(
            (self.options.max_parallel if single else None) or stage.max_parallel or _default_parallel()
        )

    def _is_retryable(self, stage: Stage, result: AttemptResult) -> bool:
        if self._stopping or result.error_class in ("internal", "disk", "promote", "lock"):
            return False
        if result.error_class == "worker_lost":  # the worker died, not the attempt
            return True
        if stage.retry_on is None:
            return result.error_class not in NOT_RETRIED_BY_DEFAULT
        if result.error_class == "exit":
            return result.exit_code in stage.retry_on
        return result.error_class in stage.retry_on

    def _backoff(self, stage: Stage, retry: int, retry_after_s: float | None) -> float:
        """Full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter", 2015):
        uniform(0, min(cap, base * 2**(retry-1))), at least any Retry-After up to the cap
        (a server's Retry-After never waits past `backoff.cap`; NaN or inf is ignored)."""
        ceiling = min(stage.backoff_cap_s, stage.backoff_base_s * 2 ** (retry - 1))
        delay = self.rng.uniform(0, ceiling)
        if retry_after_s is None or not math.isfinite(retry_after_s):
            return delay
        return max(delay, min(max(retry_after_s, 0.0), stage.backoff_cap_s))

    def _check_halt(self) -> None:
        pct = self.options.halt_on_pct
        if (
            pct is not None
            and self._scheduled
            and not self._halted
            and self._failed_count * 100 / self._scheduled >= pct
        ):
            self._halted = (
                f"halted: {self._failed_count} of {self._scheduled} partitions failed (--halt-on {pct:g}%)"
            )
            self.log.emit("halted", reason=self._halted)

    def _add_cost(self, stage: Stage, usage: Usage | None) -> None:
        """Count an attempt's cost; remember a cost the agent reported but that was invalid.

        An invalid cost (`usage.cost_rejected`, or a non-finite or negative
        one) cannot be counted, and counting it as 0 would let a budget never
        be reached, so a budgeted run or stage then halts (`_halt_reason`).
        """
        if usage and (usage.cost_rejected or not _valid_cost(usage.cost_usd)):
            self._cost_invalid.setdefault(stage.name, "; ".join(usage.warnings) or "cost not a number")
            return
        if not usage or not usage.cost_usd:
            return
        self._cost_run += usage.cost_usd
        self._cost_stage[stage.name] = self._cost_stage.get(stage.name, 0.0) + usage.cost_usd

    def _invalid_cost_reason(self, stage: Stage, run_budget: float | None) -> str | None:
        """Halt a budgeted run or stage once any of its attempts reported an invalid cost."""
        if run_budget is not None and self._cost_invalid:
            name, why = next(iter(self._cost_invalid.items()))
            halted = (
                f"halted: run budget max_cost_usd {run_budget:g} cannot be enforced: an agent in "
                f"stage {name} reported an invalid cost ({why}); fix the agent's usage output"
            )
            self._halted = halted
            self.log.emit("halted", reason=halted)
            return halted
        stage_why = self._cost_invalid.get(stage.name)
        if stage.max_cost_usd is None or stage_why is None:
            return None
        reason = (
            f"halted: stage {stage.name} budget max_cost_usd {stage.max_cost_usd:g} cannot be enforced: "
            f"an agent reported an invalid cost ({stage_why}); fix the agent's usage output"
        )
        if stage.name not in self._stage_halted:
            self._stage_halted.add(stage.name)
            self.log.emit("halted", stage=stage.name, reason=reason)
        return reason

    def _halt_reason(self, stage: Stage) -> str | None:
        if self._disk_fault:
            return self._disk_fault
        if self._halted:
            return self._halted
        budget = self.ws.project.max_cost_usd
        invalid = self._invalid_cost_reason(stage, budget)
        if invalid:
            return invalid
        if budget is not None and self._cost_run >= budget:
            self._halted = f"halted: run budget max_cost_usd {budget:g} reached (spent {self._cost_run:.4f})"
            self.log.emit("halted", reason=self._halted)
            return self._halted
        spent = self._cost_stage.get(stage.name, 0.0)
        if stage.max_cost_usd is not None and spent >= stage.max_cost_usd:
            reason = (
                f"halted: stage {stage.name} budget max_cost_usd {stage.max_cost_usd:g} reached "
                f"(spent {spent:.4f})"
            )
            if stage.name not in self._stage_halted:
                self._stage_halted.add(stage.name)
                self.log.emit("halted", stage=stage.name, reason=reason)
            return reason
        return None


class Promoter:
    """Group commit: promotions that wait together reach the disk with one flush.

    While one batch is being made durable and renamed into place (in a worker
    thread, see `orch.store.state.promote_many`), new promotions queue; the next batch
    takes them all. Under load a batch holds dozens of partitions; alone, a
    promotion waits for nothing but its own flush.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pending: list[tuple[Path, Path, Manifest, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def promote(self, staging: Path, out_dir: Path, manifest: Manifest) -> None:
        """Promote `staging` to `out_dir` with `manifest`; raise the exception that stopped it.

        A batch that fails fails each of its waiters; the next promotions still run.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((staging, out_dir, manifest, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        await asyncio.shield(future)  # a cancelled waiter does not cancel the batch

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            items = [(staging, out, manifest) for staging, out, manifest, _ in batch]
            errors: list[Exception | None]
            try:
                errors = await asyncio.to_thread(promote_many, self.root, items)
            except Exception as err:  # a batch that raises fails each of its waiters
                errors = [err] * len(batch)
            for (_, _, _, future), error in zip(batch, errors, strict=True):
                if not future.done():
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)


async def _acquire(lock: PartitionLock, wait_s: float, fs: Executor_) -> bool:
    """Take `lock` in the file-system thread `fs` (the first take creates the lock
    file), polling for up to `wait_s` seconds without blocking the event loop (so
    Ctrl-C and other partitions' timeouts still work while waiting)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + wait_s
    delay = 0.005
    while not await loop.run_in_executor(fs, lock.try_acquire):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.25)
    return True


def _valid_cost(cost: float | None) -> bool:
    return cost is None or (math.isfinite(cost) and cost >= 0)


def _add_usage(total: Usage | None, more: Usage | None) -> Usage | None:
    if total is None:
        return more
    return total + more if more else total


def _attempt_record(
    number: int, started: float, result: AttemptResult, agent_started: float | None = None, agent: str = ""
) -> dict[str, Any]:
    """The attempt's entry in manifests and error.json (times in Unix seconds).

    `duration_s` is the agent's own time, from its start (`agent_started`) to
    the end of the attempt; `queued_s` is the time from taking the slot to the
    agent's start (its agent's own limit, rate limits). `agent` names the agent
    for cost totals (orch.engine.costs).
    """
    ended = time.time()
    began = agent_started if agent_started is not None else started
    return {
        "n": number,
        "agent": agent,
        "started_at": round(started, 3),
        "ended_at": round(ended, 3),
        "duration_s": round(ended - began, 3),
        "queued_s": round(max(0.0, began - started), 3),
        "outcome": "complete" if result.ok else "failed",
        "error": result.error,
        "error_class": result.error_class,
        "exit_code": result.exit_code,
        "usage": result.usage.to_json() if result.usage else {},
        **({"worker": result.worker} if result.worker else {}),
    }


def _inspect(
    staging: Path, expect: tuple[ExpectRule, ...], schemas: SchemaStore
) -> tuple[list[Finding], list[OutputFile]]:
    """Check a finished attempt's outputs; if they pass, list them for the manifest.

    Blocking (reads every output), so the scheduler runs it in a worker thread,
    one hop for both. First refuses what the agent may have left that orch
    cannot safely keep (see `orch.store.state.check_staging` and `scan_outputs`).
    Creates an empty `.orch/agent.log` for a silent agent: every partition
    has its log.
    """
    findings = check_staging(staging)
    if findings:
        return findings, []
    findings, outputs = scan_outputs(staging, hashes=False)
    if findings:
        return findings, []
    findings = check_outputs(staging, expect, schemas)
    if findings:
        return findings, []
    touch_meta(staging, AGENT_LOG)
    return [], hash_outputs(staging, outputs)


def _discard_staging(staging: Path) -> None:
    """Remove a prepared staging directory no attempt ran in (it holds only the prompt)."""
    shutil.rmtree(staging, ignore_errors=True)


def _make_staging(out_dir: Path, number: int, prompt: str) -> Path:
    """Create `.<name>.attempt-<n>/.orch/prompt.md`, taking the next free n if a dead
    run left one."""
    while True:
        staging = staging_dir(out_dir, number)
        try:
            staging.mkdir()
        except FileExistsError:
            number += 1
            continue
        try:
            (staging / META_DIR).mkdir()
            (staging / META_DIR / PROMPT).write_text(prompt, encoding="utf-8")
        except BaseException as err:  # e.g. ENOSPC: leave no half-made staging directory
            _discard_staging(staging)
            if isinstance(err, OSError) and not err.filename:
                raise OSError(err.errno, err.strerror, str(staging / META_DIR / PROMPT)) from err
            raise
        return staging


def _default_parallel() -> int:
    return 8


def _human_s(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes // 60}h{minutes % 60}m" if minutes >= 60 else f"{minutes}m"
    return f"{seconds:g}s"
