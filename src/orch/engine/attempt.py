"""One attempt of one partition: run the agent through the executor, check its outputs, record it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orch.backends import AttemptResult, AttemptSpec
from orch.config.partitions import Partition
from orch.config.project import AgentConfig, Stage
from orch.engine.context import RunContext
from orch.engine.lifecycle import ErrorClass, OutcomeStatus, Trigger
from orch.engine.plan import PartitionState
from orch.engine.staging import new_staging
from orch.store.checks import META_DIR
from orch.store.faults import describe, error_class_of, traceback_of
from orch.store.layout import AGENT_LOG, PROMPT, staging_number
from orch.store.locks import PartitionLock
from orch.store.manifest import OutputFile
from orch.store.staging import archive_attempt, inspect_outputs


@dataclass(frozen=True)
class AttemptRun:
    """What one attempt left.

    Attributes:
        result: How it ended (failed by the expect rules if they fail).
        staging: Its staging directory.
        outputs: The outputs for the manifest (empty unless passing).
        agent_started: Unix time the agent started, or None if it never did.
    """

    result: AttemptResult
    staging: Path
    outputs: list[OutputFile]
    agent_started: float | None


async def run_attempt(
    ctx: RunContext,
    partition: Partition,
    stage: Stage,
    agent: AgentConfig,
    state: PartitionState,
    number: int,
    why: str,
    staging: Path | None = None,
) -> AttemptRun:
    """Run attempt `number` in `staging` (created now if not prepared) and check its outputs.

    Moves the partition from running to checking when the agent reports success.
    On cancellation the staging directory is archived as interrupted and the
    CancelledError propagates.
    """
    out_dir = ctx.ws.root / partition.out_dir
    if staging is None:
        staging = await new_staging(ctx, partition, state, number)
    number = staging_number(staging)
    spec = AttemptSpec(
        stage=stage.name,
        partition=partition.id,
        attempt=number,
        prompt=state.prompt or "",
        work_dir=staging,
        out_dir=out_dir,
        prompt_file=staging / META_DIR / PROMPT,
        log_path=staging / META_DIR / AGENT_LOG,
        expect=stage.expect,
        project_root=ctx.ws.root,
        timeout_s=stage.timeout_s,
        retry_after_cap_s=stage.backoff_cap_s,
    )
    agent_started: list[float] = []

    def started(worker: str | None = None) -> None:
        agent_started.append(time.time())
        ctx.log.emit(
            "started",
            stage=stage.name,
            partition=partition.id,
            attempt=number,
            agent=agent.name,
            reason=why,
            limit=ctx.executor.limit_of(agent),
            **({"worker": worker} if worker else {}),
        )

    result = await _execute(ctx, partition, stage, agent, spec, started)
    began = agent_started[0] if agent_started else None
    if not result.ok:
        return AttemptRun(result, staging, [], began)
    ctx.move(partition, Trigger.AGENT_SUCCEEDED)
    try:  # reads every output: off the event loop
        findings, outputs = await asyncio.to_thread(inspect_outputs, staging, stage.expect, ctx.ws.schemas)
    except Exception as err:  # e.g. a disk fault, or a bug: this attempt only
        ctx.note_disk_fault(err)
        ctx.traces[staging] = traceback_of(err)
        error = f"cannot check the outputs: {describe(err)}"
        failed = AttemptResult(False, error, error_class_of(err), result.exit_code, result.usage)
        return AttemptRun(failed, staging, [], began)
    if findings:
        shown = "; ".join(str(f) for f in findings[:3])
        more = f" (+{len(findings) - 3} more)" if len(findings) > 3 else ""
        result = AttemptResult(
            False, f"output checks failed: {shown}{more}", ErrorClass.CHECKS, result.exit_code, result.usage
        )
    return AttemptRun(result, staging, outputs, began)


async def _execute(
    ctx: RunContext,
    partition: Partition,
    stage: Stage,
    agent: AgentConfig,
    spec: AttemptSpec,
    started: Callable[..., None],
) -> AttemptResult:
    """Run `spec` through the executor; a timeout or a backend bug becomes a failed result."""
    try:
        result = await ctx.executor.run(agent, spec, started)
    except TimeoutError:
        result = AttemptResult(False, f"timeout after {human_s(stage.timeout_s or 0)}", ErrorClass.TIMEOUT)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):  # a full disk must not hide the interrupt
            archive_attempt(
                ctx.ws.root,
                stage.name,
                partition.id,
                spec.work_dir,
                {
                    "n": spec.attempt,
                    "outcome": OutcomeStatus.INTERRUPTED.value,
                    "error_class": ErrorClass.INTERRUPTED.value,
                    "error": "interrupted (Ctrl-C or SIGTERM); the agent was terminated",
                },
            )
        raise
    except Exception as err:  # a backend bug must fail one partition, not the run
        result = AttemptResult(
            False, f"agent backend error: {type(err).__name__}: {err}", ErrorClass.AGENT_ERROR
        )
    if result.error and ctx.redactor:  # everything downstream (events, notes, stderr) reads this
        result = dataclasses.replace(result, error=ctx.redactor.text(result.error))
    return result


def verify_lock(
    ctx: RunContext, partition: Partition, lock: PartitionLock, result: AttemptResult
) -> AttemptResult:
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
    ctx.log.emit(
        "lock_file_lost", stage=partition.stage, partition=partition.id, outcome=check, message=message
    )
    if check == "restored":
        return result
    return AttemptResult(
        False,
        f"{message}; not promoted (rerun once the other run has finished)",
        ErrorClass.LOCK,
        result.exit_code,
        result.usage,
    )


def attempt_record(
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


def human_s(seconds: float) -> str:
    """Format a duration as orch.yaml writes it: `90s`, `5m`, `1h30m`."""
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes // 60}h{minutes % 60}m" if minutes >= 60 else f"{minutes}m"
    return f"{seconds:g}s"
