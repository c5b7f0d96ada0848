"""Run policies (orch.engine.policies) without processes: retry, backoff, halt, budgets, admission."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest

from orch.engine.policies import (
    DEFAULT_PARALLEL,
    AdmissionPolicy,
    Backoff,
    Budget,
    Halt,
    HaltPolicy,
    RetryPolicy,
    is_valid_cost,
    run_limit,
    stage_limit,
)


@dataclass
class Cost:
    cost_usd: float | None
    cost_rejected: bool = False
    warnings: tuple[str, ...] = ()


class FixedRandom(random.Random):
    """uniform() returns the top of its range: the largest jitter."""

    def uniform(self, a: float, b: float) -> float:
        return b


# -- retry -------------------------------------------------------------------------------


@pytest.mark.parametrize("error_class", ["timeout", "checks", "agent_error", "http_429", "http_5xx", "exit"])
def test_without_retry_on_every_attempt_failure_is_retried(error_class: str) -> None:
    assert RetryPolicy(retries=2).should_retry(error_class, 1, attempt_index=0)


def test_a_refused_request_is_retried_only_when_retry_on_names_it() -> None:
    assert not RetryPolicy(retries=2).should_retry("request_error", None, 0)
    assert RetryPolicy(retries=2, retry_on=frozenset({"request_error"})).should_retry(
        "request_error", None, 0
    )


@pytest.mark.parametrize("error_class", ["internal", "disk", "promote", "lock"])
def test_faults_of_orchs_own_path_are_never_retried(error_class: str) -> None:
    policy = RetryPolicy(retries=5, retry_on=frozenset({error_class}))
    assert not policy.should_retry(error_class, None, 0)


def test_retry_on_names_classes_and_exit_codes() -> None:
    policy = RetryPolicy(retries=3, retry_on=frozenset({"timeout", 75}))
    assert policy.should_retry("timeout", None, 0)
    assert policy.should_retry("exit", 75, 0)
    assert not policy.should_retry("exit", 1, 0)
    assert not policy.should_retry("checks", None, 0)


def test_the_last_allowed_attempt_is_not_retried_nor_is_any_while_stopping() -> None:
    policy = RetryPolicy(retries=2)
    assert policy.should_retry("timeout", None, 1)
    assert not policy.should_retry("timeout", None, 2)
    assert not RetryPolicy(retries=0).should_retry("timeout", None, 0)
    assert not policy.should_retry("timeout", None, 0, stopping=True)


def test_a_lost_worker_is_retried_whatever_retry_on_names() -> None:
    policy = RetryPolicy(retries=1, retry_on=frozenset({"timeout"}))
    assert policy.should_retry("worker_lost", None, 0)
    assert not policy.should_retry("worker_lost", None, 1)
    assert not policy.should_retry("worker_lost", None, 0, stopping=True)


# -- backoff -----------------------------------------------------------------------------


def test_backoff_ceiling_doubles_per_retry_up_to_the_cap() -> None:
    backoff = Backoff(base_s=2.0, cap_s=10.0, rng=FixedRandom())
    assert [backoff.delay_s(n) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 10.0]


def test_backoff_is_full_jitter_between_zero_and_the_ceiling() -> None:
    backoff = Backoff(base_s=1.0, cap_s=60.0, rng=random.Random(7))
    delays = [backoff.delay_s(3) for _ in range(200)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert min(delays) < 1.0 < 3.0 < max(delays)


def test_retry_after_is_a_floor_capped_by_the_backoff_cap() -> None:
    backoff = Backoff(base_s=1.0, cap_s=30.0, rng=random.Random(1))
    assert backoff.delay_s(1, retry_after_s=12.0) == 12.0
    assert backoff.delay_s(1, retry_after_s=86_400.0) == 30.0  # a server says wait a day
    assert backoff.delay_s(1, retry_after_s=2.0**70) == 30.0


@pytest.mark.parametrize("retry_after_s", [math.nan, math.inf, -math.inf])
def test_a_non_finite_retry_after_is_ignored(retry_after_s: float) -> None:
    assert Backoff(base_s=1.0, cap_s=30.0, rng=FixedRandom()).delay_s(1, retry_after_s) == 1.0


def test_a_negative_retry_after_counts_as_zero() -> None:
    assert 0 <= Backoff(base_s=1.0, cap_s=30.0, rng=random.Random(3)).delay_s(1, -5.0) <= 1.0


# -- --halt-on ---------------------------------------------------------------------------


def test_halt_on_halts_at_exactly_the_percentage() -> None:
    halt = HaltPolicy(pct=50, scheduled=4)
    assert halt.record_failure() is None
    assert halt.record_failure() == "halted: 2 of 4 partitions failed (--halt-on 50%)"
    assert halt.reason == "halted: 2 of 4 partitions failed (--halt-on 50%)"


def test_halt_on_reports_its_halt_once_and_keeps_the_first_reason() -> None:
    halt = HaltPolicy(pct=10, scheduled=10)
    assert halt.record_failure() == "halted: 1 of 10 partitions failed (--halt-on 10%)"
    assert halt.record_failure() is None
    assert halt.reason == "halted: 1 of 10 partitions failed (--halt-on 10%)"
    assert not halt.latch("halted: something else")


def test_a_budget_halt_first_keeps_halt_on_quiet() -> None:
    halt = HaltPolicy(pct=1, scheduled=3)
    assert halt.latch("halted: run budget max_cost_usd 1 reached (spent 1.0000)")
    assert halt.record_failure() is None
    assert halt.reason == "halted: run budget max_cost_usd 1 reached (spent 1.0000)"


def test_without_halt_on_or_scope_nothing_halts() -> None:
    assert HaltPolicy(pct=None, scheduled=2).record_failure() is None
    assert HaltPolicy(pct=0, scheduled=0).record_failure() is None
    assert HaltPolicy(pct=0.5, scheduled=1000).record_failure() is None
    assert HaltPolicy(pct=12.5, scheduled=8).record_failure() == (
        "halted: 1 of 8 partitions failed (--halt-on 12.5%)"
    )


# -- budgets -----------------------------------------------------------------------------


def test_the_run_budget_halts_once_reached_and_reports_it_first_once() -> None:
    budget = Budget(run_usd=1.0)
    budget.add("s1", Cost(0.6))
    assert budget.halt_reason("s1") is None
    budget.add("s2", Cost(0.4))
    reason = "halted: run budget max_cost_usd 1 reached (spent 1.0000)"
    assert budget.halt_reason("s1") == Halt(reason, None, first=True)
    assert budget.halt_reason("s2") == Halt(reason, None, first=False)


def test_a_stage_budget_halts_that_stage_only() -> None:
    budget = Budget(run_usd=None, stage_usd={"s1": 0.5, "s2": None})
    budget.add("s1", Cost(0.25))
    budget.add("s1", Cost(0.3))
    budget.add("s2", Cost(9.0))
    reason = "halted: stage s1 budget max_cost_usd 0.5 reached (spent 0.5500)"
    assert budget.halt_reason("s1") == Halt(reason, "s1", first=True)
    assert budget.halt_reason("s1") == Halt(reason, "s1", first=False)
    assert budget.halt_reason("s2") is None
    assert budget.spent_run == pytest.approx(9.55)


@pytest.mark.parametrize("cost", [math.nan, math.inf, -0.01])
def test_a_nan_infinite_or_negative_cost_halts_a_budgeted_run(cost: float) -> None:
    budget = Budget(run_usd=5.0)
    budget.add("s1", Cost(cost))
    halt = budget.halt_reason("s2")
    assert halt == Halt(
        "halted: run budget max_cost_usd 5 cannot be enforced: an agent in stage s1 reported an "
        "invalid cost (cost not a number); fix the agent's usage output",
        None,
        True,
    )
    assert budget.spent_run == 0.0


def test_a_rejected_cost_halts_a_budgeted_stage_with_the_agents_warnings() -> None:
    budget = Budget(run_usd=None, stage_usd={"s1": 2.0})
    budget.add("s1", Cost(None, cost_rejected=True, warnings=("cost_usd 2^70 is not a number",)))
    assert budget.halt_reason("s1") == Halt(
        "halted: stage s1 budget max_cost_usd 2 cannot be enforced: an agent reported an invalid cost "
        "(cost_usd 2^70 is not a number); fix the agent's usage output",
        "s1",
        True,
    )


def test_an_invalid_cost_without_a_budget_halts_nothing() -> None:
    budget = Budget(run_usd=None, stage_usd={"s2": 1.0})
    budget.add("s1", Cost(math.nan))
    budget.add("s1", None)
    budget.add("s1", Cost(0.0))
    assert budget.halt_reason("s1") is None
    assert budget.halt_reason("s2") is None


def test_valid_costs() -> None:
    assert is_valid_cost(None) and is_valid_cost(0.0) and is_valid_cost(1e-9)
    assert not is_valid_cost(math.nan) and not is_valid_cost(-1.0) and not is_valid_cost(math.inf)


# -- admission ---------------------------------------------------------------------------


def test_stage_limit_uses_the_command_line_for_a_single_stage_run_only() -> None:
    assert stage_limit(None, None, single_stage=True) == DEFAULT_PARALLEL == 8
    assert stage_limit(3, None, single_stage=True) == 3
    assert stage_limit(3, 20, single_stage=True) == 20
    assert stage_limit(3, 20, single_stage=False) == 3


def test_run_limit_comes_from_orch_yaml_or_the_command_line_of_a_multi_stage_run() -> None:
    assert run_limit(None, None, single_stage=False) is None
    assert run_limit(None, 4, single_stage=True) is None
    assert run_limit(None, 4, single_stage=False) == 4
    assert run_limit(16, 4, single_stage=False) == 4
    assert run_limit(16, 4, single_stage=True) == 16


def test_admission_counts_stage_run_and_agent_limits() -> None:
    admission = AdmissionPolicy({"a": 2, "b": 5}, run_limit=3, agent_limits={"gpt": 1})
    admission.admit("a", "claude")
    admission.admit("a", "gpt")
    assert not admission.can_admit("a", "claude")  # stage a is full
    assert not admission.can_admit("b", "gpt")  # agent gpt is full
    admission.admit("b", "claude")
    assert not admission.can_admit("b", "claude")  # the run is full
    admission.release("a", "gpt")
    assert admission.can_admit("b", "gpt")
    assert admission.running == 2


def test_admission_refuses_a_slot_that_does_not_fit_and_follows_a_changed_agent_limit() -> None:
    admission = AdmissionPolicy({"a": 4}, agent_limits={"gpt": 2})
    admission.admit("a", "gpt")
    admission.set_agent_limit("gpt", 1)
    with pytest.raises(RuntimeError, match="no slot for stage 'a', agent 'gpt'"):
        admission.admit("a", "gpt")
    admission.set_agent_limit("gpt", None)
    admission.admit("a", "gpt")
    assert admission.can_admit("unknown-stage")
