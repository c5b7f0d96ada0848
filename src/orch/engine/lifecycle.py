"""The partition lifecycle during a run: phases, triggers and the table between them.

Pure data and one pure function (`transition`); no I/O, no asyncio. The
runtime records each partition's phase through `transition`, so a phase
change the table does not allow is a bug in orch, raised at once. Outcome
statuses and error classes are enums whose values are the strings already on
disk (manifests, `error.json`, `events.jsonl`), so no file changes.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """Where one partition is in a run.

    WAITING_FOR_INPUTS: waiting for the upstream partitions it reads.
    QUEUED: selected to run, waiting for a slot (to prepare, or to start an attempt).
    PREPARING: taking the partition lock, cleaning a dead run's staging
        directories, looking again, creating the staging directory.
    RUNNING: an attempt's agent runs.
    CHECKING: the agent succeeded; its outputs are checked against the expect rules.
    BACKING_OFF: an attempt failed and a retry waits out its backoff.
    PROMOTING: the manifest is written and the outputs are renamed into place.
    The rest are terminal, one per outcome status (see `OUTCOME_OF`).
    """

    WAITING_FOR_INPUTS = "waiting_for_inputs"
    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    CHECKING = "checking"
    BACKING_OFF = "backing_off"
    PROMOTING = "promoting"
    DONE = "done"
    FAILED = "failed"
    BLOCKED = "blocked"
    INTERRUPTED = "interrupted"
    HELD = "held"
    HALTED = "halted"
    SKIPPED = "skipped"
    UP_TO_DATE = "up_to_date"

    @property
    def is_terminal(self) -> bool:
        """True for a phase a partition never leaves (it has an outcome)."""
        return self in OUTCOME_OF


class Trigger(StrEnum):
    """What happened to move a partition from one phase to the next."""

    INPUTS_READY = "inputs_ready"  # every input complete, and the partition needs to run
    INPUT_FAILED = "input_failed"  # an input did not complete
    NOT_NEEDED = "not_needed"  # complete (or kept): nothing to do
    NOT_SELECTED = "not_selected"  # e.g. --retry-failed on a partition that did not fail
    HELD = "held"  # another orch process holds the partition
    PREPARE = "prepare"  # a prepare-ahead slot is free
    PREPARED = "prepared"  # locked and staged; waits for a run slot
    START = "start"  # took a run slot; the attempt starts
    AGENT_SUCCEEDED = "agent_succeeded"  # the agent reports success; check its outputs
    CHECKS_PASSED = "checks_passed"  # the outputs pass the expect rules
    RETRY = "retry"  # the attempt failed and will be retried after a backoff
    BACKOFF_OVER = "backoff_over"  # the backoff elapsed; wait for a slot again
    FAIL = "fail"  # the attempt failed for good, or orch's own path failed
    PROMOTED = "promoted"  # the outputs are in place
    HALT = "halt"  # --halt-on, a budget or a disk fault: start nothing more
    INTERRUPT = "interrupt"  # Ctrl-C, SIGTERM, SIGHUP, or a cancelled arun


class OutcomeStatus(StrEnum):
    """How a partition ended in a run; the values are written to events and summaries."""

    COMPLETE = "complete"  # promoted by this run
    UP_TO_DATE = "up-to-date"  # nothing to do
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    BLOCKED = "blocked"  # an input failed
    HELD = "held"  # another orch process holds it
    HALTED = "halted"  # not started after --halt-on, a budget or a disk fault
    SKIPPED = "skipped"  # not selected, e.g. --retry-failed on a missing partition


class ErrorClass(StrEnum):
    """Why an attempt or a partition failed; written as `error_class` in manifests,
    `error.json` and events. `retry_on` may name those in `RETRY_CLASSES`."""

    TIMEOUT = "timeout"  # the stage's timeout ended the attempt
    CHECKS = "checks"  # the outputs failed the expect rules
    AGENT_ERROR = "agent_error"  # the agent (or its backend) reported an error
    HTTP_429 = "http_429"  # the endpoint said too many requests
    HTTP_5XX = "http_5xx"  # a server error, a broken or timed-out connection
    REQUEST_ERROR = "request_error"  # the endpoint refused the request (4xx, context length)
    EXIT = "exit"  # the agent process exited non-zero
    PROMOTE = "promote"  # the outputs could not be renamed into place
    INTERNAL = "internal"  # a bug or an unexpected fault in orch's own path
    DISK = "disk"  # ENOSPC, EROFS, EACCES ... (see orch.faults)
    LOCK = "lock"  # the lock file was deleted and another process took the new one
    BLUEPRINT = "blueprint"  # the agent's blueprint could not be rendered
    INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM, or a run that died
    WORKER_LOST = "worker_lost"  # a cluster worker running the attempt went away


#: Error classes a stage's `retry_on` may name (same order as orch.project.RETRY_CLASSES).
RETRY_CLASSES = (
    ErrorClass.TIMEOUT,
    ErrorClass.CHECKS,
    ErrorClass.AGENT_ERROR,
    ErrorClass.HTTP_429,
    ErrorClass.HTTP_5XX,
    ErrorClass.REQUEST_ERROR,
    ErrorClass.WORKER_LOST,
)

#: The outcome status of each terminal phase.
OUTCOME_OF: dict[Phase, OutcomeStatus] = {
    Phase.DONE: OutcomeStatus.COMPLETE,
    Phase.UP_TO_DATE: OutcomeStatus.UP_TO_DATE,
    Phase.FAILED: OutcomeStatus.FAILED,
    Phase.INTERRUPTED: OutcomeStatus.INTERRUPTED,
    Phase.BLOCKED: OutcomeStatus.BLOCKED,
    Phase.HELD: OutcomeStatus.HELD,
    Phase.HALTED: OutcomeStatus.HALTED,
    Phase.SKIPPED: OutcomeStatus.SKIPPED,
}

#: The terminal phase of each outcome status (the inverse of OUTCOME_OF).
PHASE_OF: dict[OutcomeStatus, Phase] = {status: phase for phase, status in OUTCOME_OF.items()}

_ACTIVE = frozenset(Phase) - frozenset(OUTCOME_OF)

#: Every legal (from, trigger, to). Interrupt and fail (orch's own path, e.g. a
#: blueprint or a full disk) may end any phase that is not terminal.
TRANSITIONS: frozenset[tuple[Phase, Trigger, Phase]] = frozenset(
    {
        (Phase.WAITING_FOR_INPUTS, Trigger.INPUTS_READY, Phase.QUEUED),
        (Phase.WAITING_FOR_INPUTS, Trigger.INPUT_FAILED, Phase.BLOCKED),
        (Phase.WAITING_FOR_INPUTS, Trigger.NOT_NEEDED, Phase.UP_TO_DATE),
        (Phase.WAITING_FOR_INPUTS, Trigger.NOT_SELECTED, Phase.SKIPPED),
        (Phase.WAITING_FOR_INPUTS, Trigger.HELD, Phase.HELD),
        (Phase.QUEUED, Trigger.PREPARE, Phase.PREPARING),
        (Phase.QUEUED, Trigger.START, Phase.RUNNING),
        (Phase.QUEUED, Trigger.HALT, Phase.HALTED),
        (Phase.PREPARING, Trigger.PREPARED, Phase.QUEUED),
        (Phase.PREPARING, Trigger.HELD, Phase.HELD),
        (Phase.PREPARING, Trigger.NOT_NEEDED, Phase.UP_TO_DATE),
        (Phase.PREPARING, Trigger.NOT_SELECTED, Phase.SKIPPED),
        (Phase.RUNNING, Trigger.AGENT_SUCCEEDED, Phase.CHECKING),
        (Phase.RUNNING, Trigger.RETRY, Phase.BACKING_OFF),
        (Phase.CHECKING, Trigger.CHECKS_PASSED, Phase.PROMOTING),
        (Phase.CHECKING, Trigger.RETRY, Phase.BACKING_OFF),
        (Phase.BACKING_OFF, Trigger.BACKOFF_OVER, Phase.QUEUED),
        (Phase.BACKING_OFF, Trigger.HALT, Phase.HALTED),
        (Phase.PROMOTING, Trigger.PROMOTED, Phase.DONE),
    }
    | {(phase, Trigger.INTERRUPT, Phase.INTERRUPTED) for phase in _ACTIVE}
    | {(phase, Trigger.FAIL, Phase.FAILED) for phase in _ACTIVE}
)

_NEXT: dict[tuple[Phase, Trigger], Phase] = {(src, trigger): dst for src, trigger, dst in TRANSITIONS}


class IllegalTransition(Exception):
    """A phase change the lifecycle does not allow: a bug in orch, not a user error.

    Deliberately not an OrchError: it must never be shown as an expected failure.
    """

    def __init__(self, phase: Phase, trigger: Trigger) -> None:
        allowed = sorted(t.value for (src, t) in _NEXT if src is phase)
        super().__init__(
            f"illegal transition: {trigger.value!r} in phase {phase.value!r} "
            f"(allowed: {', '.join(allowed) or 'none, the phase is terminal'})"
        )
        self.phase = phase
        self.trigger = trigger


def transition(phase: Phase, trigger: Trigger) -> Phase:
    """Return the phase `trigger` moves a partition in `phase` to.

    Raises:
        IllegalTransition: `(phase, trigger)` is not in TRANSITIONS.
    """
    try:
        return _NEXT[(phase, trigger)]
    except KeyError:
        raise IllegalTransition(phase, trigger) from None


def outcome_of(phase: Phase) -> OutcomeStatus:
    """Return the outcome status of a terminal `phase`.

    Raises:
        ValueError: `phase` is not terminal.
    """
    try:
        return OUTCOME_OF[phase]
    except KeyError:
        raise ValueError(f"phase {phase.value!r} is not terminal: the partition has no outcome yet") from None
