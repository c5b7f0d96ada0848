"""One partition's attempts in a run: prepare ahead, take a slot, run, retry with backoff, promote.

The partition's phase moves through `RunContext.move` at each step, so the
lifecycle table (`orch.engine.lifecycle`) checks every path taken here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from orch.backends import AttemptResult, Usage
from orch.config.partitions import Partition
from orch.config.project import AgentConfig
from orch.config.workspace import ChildKey
from orch.engine.attempt import AttemptRun, attempt_record, run_attempt, verify_lock
from orch.engine.context import RunContext
from orch.engine.lifecycle import ErrorClass, OutcomeStatus, Phase, Trigger
from orch.engine.outcomes import Outcome
from orch.engine.plan import PartitionState
from orch.engine.selection import not_selected, select
from orch.engine.staging import acquire_lock, archive_failed, clean_dead_staging, new_staging
from orch.store.checks import META_DIR
from orch.store.faults import describe, error_class_of, traceback_of
from orch.store.layout import AGENT_LOG, staging_number
from orch.store.locks import PartitionLock
from orch.store.manifest import Manifest, output_fingerprint
from orch.store.staging import discard_staging


class PartitionRun:
    """Runs the attempts of one selected partition, under its lock.

    Args:
        ctx: The run.
        partition: The partition, its inputs complete.
        agent: The agent that runs it.
        state: Its state as assessed before taking the lock.
        manifests: Its inputs' manifests (for the fingerprint).
        why: Why it runs (the plan's reason), for the `started` event.
        lock: Its partition lock, not yet taken.
    """

    def __init__(
        self,
        ctx: RunContext,
        partition: Partition,
        agent: AgentConfig,
        state: PartitionState,
        manifests: dict[ChildKey, Manifest | None],
        why: str,
        lock: PartitionLock,
    ) -> None:
        self.ctx = ctx
        self.partition = partition
        self.stage = ctx.ws.project.stage(partition.stage)
        self.agent = agent
        self.state = state
        self.manifests = manifests
        self.why = why
        self.lock = lock
        self.history: list[dict[str, Any]] = []
        self.usage: Usage | None = None

    async def run(self) -> Outcome:
        """Run attempts until one passes, the retries are spent, or the run halts."""
        ctx, stage = self.ctx, self.stage
        retry = ctx.retry_policy(stage)
        number = 0
        for index in range(stage.retries + 1):
            backing_off = ctx.phases.get(self._key) is Phase.BACKING_OFF
            halt = ctx.halt_reason(stage)
            if halt:
                return self._halted(halt)
            if backing_off:
                ctx.move(self.partition, Trigger.BACKOFF_OVER)
            async with contextlib.AsyncExitStack() as slot:
                prepared = await self._take_slot(index, slot)
                if isinstance(prepared, Outcome):
                    return prepared
                if ctx.halt_reason(stage):
                    if prepared is not None:
                        discard_staging(prepared)
                    return self._halted(ctx.halt_reason(stage) or "")
                ctx.move(self.partition, Trigger.START)
                number = staging_number(prepared) if prepared else number + 1
                started = time.time()
                attempt = await run_attempt(
                    ctx, self.partition, stage, self.agent, self.state, number,
                    self.why if index == 0 else "retry", prepared,
                )  # fmt: skip
                number = staging_number(attempt.staging)
                result = attempt.result
                if result.ok:
                    result = verify_lock(ctx, self.partition, self.lock, result)
                # budgets and --halt-on must see this attempt before its slot goes
                # to the next partition
                ctx.add_cost(stage, result.usage)
                final_failure = not result.ok and not retry.should_retry(
                    result.error_class, result.exit_code, index, ctx.stopping
                )
                if final_failure:
                    ctx.record_failure()
            self.usage = _add_usage(self.usage, result.usage)
            record = attempt_record(number, started, result, attempt.agent_started, self.agent.name)
            if attempt.staging in ctx.traces:
                record["traceback"] = ctx.traces.pop(attempt.staging)
            self.history.append(record)
            if result.ok:
                return await self._complete(attempt, started)
            archive = await archive_failed(ctx, self.partition, attempt.staging, record)
            if final_failure:
                return self._failed(archive)
            await self._back_off(index + 1, number, result)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _take_slot(self, index: int, slot: contextlib.AsyncExitStack) -> Path | Outcome | None:
        """Enter a run slot on `slot`; the first attempt prepares ahead of it.

        Returns:
            The prepared staging directory (first attempt), None (a retry
            makes its own), or the Outcome if the partition no longer runs.
        """
        if index > 0:
            await slot.enter_async_context(self.ctx.slots.run_slot(self.stage))
            return None
        ready = await self._prepare(slot)
        if isinstance(ready, Outcome):
            return ready
        self.state, prepared = ready
        return prepared

    async def _back_off(self, retry: int, number: int, result: AttemptResult) -> None:
        """Wait out the backoff before retry number `retry` (attempt `number` failed with `result`)."""
        delay = self.ctx.backoff(self.stage).delay_s(retry, result.retry_after_s)
        self.ctx.move(self.partition, Trigger.RETRY)
        self.ctx.log.emit(
            "retried",
            stage=self.stage.name,
            partition=self.partition.id,
            attempt=number,
            error=result.error,
            error_class=result.error_class,
            backoff_s=round(delay, 3),
        )
        await asyncio.sleep(delay)

    @property
    def _key(self) -> ChildKey:
        return (self.partition.stage, self.partition.id)

    def _halted(self, reason: str) -> Outcome:
        self.ctx.move(self.partition, Trigger.HALT)
        return Outcome(self.stage.name, self.partition.id, OutcomeStatus.HALTED, reason, len(self.history))

    async def _prepare(self, slot: contextlib.AsyncExitStack) -> tuple[PartitionState, Path] | Outcome:
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
        ctx, partition, stage = self.ctx, self.partition, self.stage
        ctx.executor.warm_up(self.agent)
        slots = ctx.slots
        async with slots.ahead(stage):
            ctx.move(partition, Trigger.PREPARE)
            if not await acquire_lock(self.lock, ctx.options.wait_locks_s, ctx.fs):
                reason = "held by another orch process; skipped (rerun once it finishes, or --wait-locks)"
                ctx.log.emit("skipped", stage=partition.stage, partition=partition.id, reason=reason)
                ctx.move(partition, Trigger.HELD)
                return Outcome(partition.stage, partition.id, OutcomeStatus.HELD, reason)
            removed = clean_dead_staging(ctx, partition)
            state = ctx.planner.assess(partition, self.agent, self.manifests, holding_lock=True)
            selected, why = select(ctx, state)
            if not selected:
                return not_selected(ctx, partition, state, why)
            number = ctx.planner.last_attempt_number(partition, state.manifest, removed) + 1
            staging = await new_staging(ctx, partition, state, number)
            ctx.move(partition, Trigger.PREPARED)
            try:
                await slot.enter_async_context(slots.run_slot(stage))
            except BaseException:  # interrupted while waiting: nothing ran in it
                discard_staging(staging)
                raise
        return state, staging

    async def _complete(self, attempt: AttemptRun, started: float) -> Outcome:
        """Write the manifest and promote a passing attempt (group commit)."""
        ctx, partition, stage = self.ctx, self.partition, self.stage
        ctx.move(partition, Trigger.CHECKS_PASSED)
        record = self.history[-1]
        try:
            manifest = self._manifest(record["n"], attempt, started)
            await ctx.promoter.promote(attempt.staging, ctx.ws.root / partition.out_dir, manifest)
        except Exception as err:  # not the agent's fault: no retry
            error_class = error_class_of(err)
            if error_class == ErrorClass.INTERNAL and isinstance(err, OSError):
                error_class = ErrorClass.PROMOTE
            record.update(
                outcome="failed",
                error=f"cannot promote the outputs: {describe(err)}",
                error_class=error_class,
                traceback=traceback_of(err),
            )
            ctx.note_disk_fault(err)
            ctx.record_failure()
            archive = await archive_failed(ctx, partition, attempt.staging, record)
            return self._failed(archive)
        ctx.log.emit(
            "promoted",
            stage=stage.name,
            partition=partition.id,
            attempt=record["n"],
            duration_s=record["duration_s"],
            usage=record["usage"],
            out_dir=partition.out_dir,
        )
        ctx.move(partition, Trigger.PROMOTED)
        return Outcome(
            stage.name,
            partition.id,
            OutcomeStatus.COMPLETE,
            self.why,
            len(self.history),
            round(time.time() - started, 3),
            self.usage,
            manifest,
        )

    def _manifest(self, number: int, attempt: AttemptRun, started: float) -> Manifest:
        assert self.state.fingerprint is not None
        fp = self.state.fingerprint
        return Manifest(
            stage=self.partition.stage,
            partition=self.partition.id,
            fingerprint=fp.value,
            parts=fp.parts(),
            output_fingerprint=output_fingerprint(fp.value, attempt.outputs),
            attempt=number,
            attempts=self.history,
            agent={"name": self.agent.name, "backend": self.agent.backend},
            outputs=attempt.outputs,
            usage=self.usage.to_json() if self.usage else {},
            run_id=self.ctx.run_id,
            started_at=round(started, 3),
            finished_at=round(time.time(), 3),
        )

    def _failed(self, archive: Path | None) -> Outcome:
        ctx, partition, stage, history = self.ctx, self.partition, self.stage, self.history
        last = history[-1]
        tries = f"all {len(history)} attempts" if len(history) > 1 else "its attempt"
        reason = f"failed {tries} this run (last: attempt #{last['n']}): {last['error']}"
        where = archive.relative_to(ctx.ws.root) if archive else "(not archived: see the events)"
        log = f"{where}/{META_DIR}/{AGENT_LOG}" if archive else where
        ctx.log.emit(
            "failed",
            stage=stage.name,
            partition=partition.id,
            attempt=last["n"],
            error=last["error"],
            error_class=last["error_class"],
            attempts=len(history),
            archive=str(where),
        )
        ctx.log.note(
            f"- **{stage.name} / {partition.id}** failed after {len(history)} attempt(s); "
            f"last: {last['error']} (attempt {last['n']}). Log: `{log}`",
            "failures",
        )
        ctx.move(partition, Trigger.FAIL)
        return Outcome(
            stage.name,
            partition.id,
            OutcomeStatus.FAILED,
            reason,
            len(history),
            sum(h["duration_s"] for h in history),
            self.usage,
        )


def _add_usage(total: Usage | None, more: Usage | None) -> Usage | None:
    if total is None:
        return more
    return total + more if more else total
