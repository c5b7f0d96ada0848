"""The partition lifecycle (orch.engine.lifecycle), read as its specification: every legal path."""

from __future__ import annotations

import pytest

from orch.config.stages import NOT_RETRIED_BY_DEFAULT as CONFIG_NOT_RETRIED
from orch.config.stages import RETRY_CLASSES as CONFIG_RETRY_CLASSES
from orch.engine.lifecycle import (
    OUTCOME_OF,
    PHASE_OF,
    RETRY_CLASSES,
    TRANSITIONS,
    ErrorClass,
    IllegalTransition,
    OutcomeStatus,
    Phase,
    Trigger,
    outcome_of,
    transition,
)
from orch.engine.policies import NOT_RETRIED_BY_DEFAULT

T = Trigger


def walk(*triggers: Trigger, start: Phase = Phase.WAITING_FOR_INPUTS) -> list[Phase]:
    """Apply `triggers` from `start`; return every phase visited, the start included."""
    phases = [start]
    for trigger in triggers:
        phases.append(transition(phases[-1], trigger))
    return phases


def test_first_try_success_prepares_ahead_then_runs_checks_and_promotes() -> None:
    assert walk(
        T.INPUTS_READY, T.PREPARE, T.PREPARED, T.START, T.AGENT_SUCCEEDED, T.CHECKS_PASSED, T.PROMOTED
    ) == [
        Phase.WAITING_FOR_INPUTS,
        Phase.QUEUED,
        Phase.PREPARING,
        Phase.QUEUED,
        Phase.RUNNING,
        Phase.CHECKING,
        Phase.PROMOTING,
        Phase.DONE,
    ]
    assert outcome_of(Phase.DONE) == "complete"


def test_failed_checks_back_off_then_the_retry_queues_for_a_slot_and_succeeds() -> None:
    phases = walk(
        T.INPUTS_READY, T.PREPARE, T.PREPARED, T.START, T.AGENT_SUCCEEDED, T.RETRY, T.BACKOFF_OVER, T.START,
        T.AGENT_SUCCEEDED, T.CHECKS_PASSED, T.PROMOTED,
    )  # fmt: skip
    assert phases[5:8] == [Phase.CHECKING, Phase.BACKING_OFF, Phase.QUEUED]
    assert phases[-1] is Phase.DONE


def test_a_timeout_retries_from_running_without_checking() -> None:
    phases = walk(T.START, T.RETRY, T.BACKOFF_OVER, T.START, T.AGENT_SUCCEEDED, start=Phase.QUEUED)
    assert phases == [
        Phase.QUEUED, Phase.RUNNING, Phase.BACKING_OFF, Phase.QUEUED, Phase.RUNNING, Phase.CHECKING,
    ]  # fmt: skip


@pytest.mark.parametrize("phase", [Phase.RUNNING, Phase.CHECKING, Phase.PROMOTING])
def test_an_attempt_fails_for_good_from_running_checking_or_promoting(phase: Phase) -> None:
    assert transition(phase, T.FAIL) is Phase.FAILED


@pytest.mark.parametrize(
    "phase",
    [
        Phase.WAITING_FOR_INPUTS,
        Phase.QUEUED,
        Phase.PREPARING,
        Phase.RUNNING,
        Phase.BACKING_OFF,
        Phase.PROMOTING,
    ],
)
def test_an_interrupt_ends_any_active_phase(phase: Phase) -> None:
    assert transition(phase, T.INTERRUPT) is Phase.INTERRUPTED
    assert outcome_of(Phase.INTERRUPTED) == "interrupted"


def test_a_failed_input_blocks_the_partition() -> None:
    assert walk(T.INPUT_FAILED) == [Phase.WAITING_FOR_INPUTS, Phase.BLOCKED]
    assert outcome_of(Phase.BLOCKED) == "blocked"


@pytest.mark.parametrize("phase", [Phase.WAITING_FOR_INPUTS, Phase.PREPARING])
def test_held_by_another_process_before_or_after_taking_the_lock(phase: Phase) -> None:
    assert transition(phase, T.HELD) is Phase.HELD
    assert outcome_of(Phase.HELD) == "held"


@pytest.mark.parametrize("phase", [Phase.WAITING_FOR_INPUTS, Phase.PREPARING])
def test_a_partition_found_complete_or_not_selected_does_not_run(phase: Phase) -> None:
    assert transition(phase, T.NOT_NEEDED) is Phase.UP_TO_DATE
    assert transition(phase, T.NOT_SELECTED) is Phase.SKIPPED
    assert outcome_of(Phase.UP_TO_DATE) == "up-to-date"
    assert outcome_of(Phase.SKIPPED) == "skipped"


@pytest.mark.parametrize("phase", [Phase.QUEUED, Phase.BACKING_OFF])
def test_a_halt_stops_a_partition_before_its_next_attempt_starts(phase: Phase) -> None:
    assert transition(phase, T.HALT) is Phase.HALTED
    assert outcome_of(Phase.HALTED) == "halted"


@pytest.mark.parametrize("phase", [Phase.RUNNING, Phase.CHECKING, Phase.PROMOTING, Phase.WAITING_FOR_INPUTS])
def test_a_halt_never_stops_a_started_attempt_nor_a_partition_waiting_for_inputs(phase: Phase) -> None:
    with pytest.raises(IllegalTransition):
        transition(phase, T.HALT)


@pytest.mark.parametrize("phase", sorted(OUTCOME_OF))
def test_terminal_phases_have_no_way_out(phase: Phase) -> None:
    assert phase.is_terminal
    for trigger in Trigger:
        with pytest.raises(IllegalTransition, match="the phase is terminal"):
            transition(phase, trigger)


def test_an_illegal_transition_names_the_phase_the_trigger_and_what_is_allowed() -> None:
    with pytest.raises(IllegalTransition) as caught:
        transition(Phase.QUEUED, T.PROMOTED)
    assert str(caught.value) == (
        "illegal transition: 'promoted' in phase 'queued' (allowed: fail, halt, interrupt, prepare, start)"
    )
    assert caught.value.phase is Phase.QUEUED


def test_skipping_the_checks_is_illegal() -> None:
    with pytest.raises(IllegalTransition):
        transition(Phase.RUNNING, T.PROMOTED)


def test_the_table_is_deterministic_and_every_active_phase_is_reachable() -> None:
    assert len({(src, trigger) for src, trigger, _ in TRANSITIONS}) == len(TRANSITIONS)
    reached = {Phase.WAITING_FOR_INPUTS} | {dst for _, _, dst in TRANSITIONS}
    assert reached == set(Phase)


def test_outcome_statuses_and_error_classes_keep_the_strings_on_disk() -> None:
    assert [s.value for s in OutcomeStatus] == [
        "complete", "up-to-date", "failed", "interrupted", "blocked", "held", "halted", "skipped",
    ]  # fmt: skip
    assert PHASE_OF[OutcomeStatus.COMPLETE] is Phase.DONE
    assert ErrorClass("http_429") is ErrorClass.HTTP_429
    assert f"{ErrorClass.WORKER_LOST}" == "worker_lost"
    assert [c.value for c in RETRY_CLASSES] == [
        "timeout", "checks", "agent_error", "http_429", "http_5xx", "request_error", "worker_lost",
    ]  # fmt: skip


def test_an_active_phase_has_no_outcome() -> None:
    with pytest.raises(ValueError, match="phase 'running' is not terminal"):
        outcome_of(Phase.RUNNING)


def test_the_retry_classes_are_the_ones_orch_yaml_accepts() -> None:
    assert tuple(RETRY_CLASSES) == CONFIG_RETRY_CLASSES
    assert NOT_RETRIED_BY_DEFAULT == CONFIG_NOT_RETRIED
