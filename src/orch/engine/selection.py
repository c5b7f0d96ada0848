"""Which partitions a run redoes: the plan's verdict, narrowed by --force, --retry-failed and locks."""

from __future__ import annotations

from orch.config.partitions import Partition
from orch.engine.context import RunContext
from orch.engine.lifecycle import OutcomeStatus, Trigger
from orch.engine.outcomes import Outcome
from orch.engine.plan import PartitionState, Status

#: The trigger that ends a partition the run does not redo, by its outcome.
_NOT_RUN = {
    OutcomeStatus.UP_TO_DATE: Trigger.NOT_NEEDED,
    OutcomeStatus.HELD: Trigger.HELD,
    OutcomeStatus.SKIPPED: Trigger.NOT_SELECTED,
}


def select(ctx: RunContext, state: PartitionState) -> tuple[bool, str]:
    """Return whether the run redoes the partition in `state`, and why (or why not)."""
    options = ctx.options
    if state.is_held:
        if options.wait_locks_s > 0:
            return True, "held by another orch process; waiting for it"
        return False, "held by another orch process; skipped (rerun once it finishes, or --wait-locks)"
    if options.force:
        return True, f"forced ({state.reason})"
    if state.kept is not None:
        return False, f"kept: {state.kept}"
    if options.retry_failed:
        if state.status is Status.FAILED:
            return True, state.reason
        failed = failed_since_promoted(ctx, state)
        if failed:
            return True, failed
        return False, f"not failed ({state.reason}); --retry-failed runs failed ones only"
    if state.is_complete:
        return False, "complete"
    return True, state.reason


def failed_since_promoted(ctx: RunContext, state: PartitionState) -> str:
    """The error of a failed attempt newer than the partition's outputs ("" if none).

    A forced rerun, or one with another agent, that failed leaves the old
    outputs in place: `--retry-failed` must still retry it.
    """
    if state.manifest is None:
        return ""
    error = ctx.planner.last_error(state.partition)
    if error is None or error.get("outcome") != "failed":
        return ""
    number = error.get("n")
    if not isinstance(number, int) or number <= state.manifest.attempt:
        return ""
    return f"its last attempt (#{number}) failed: {error.get('error')}"


def not_selected(ctx: RunContext, partition: Partition, state: PartitionState, why: str) -> Outcome:
    """End a partition the run does not redo: up to date, held by another process, or skipped."""
    if state.is_complete:
        status = OutcomeStatus.UP_TO_DATE
    elif state.is_held:
        status = OutcomeStatus.HELD
    else:
        status = OutcomeStatus.SKIPPED
    ctx.log.emit("skipped", stage=partition.stage, partition=partition.id, reason=why)
    ctx.move(partition, _NOT_RUN[status])
    return Outcome(partition.stage, partition.id, status, why, manifest=state.manifest)
