"""Run policies as small pure units: retry, backoff, halt (--halt-on), budgets, admission.

No processes, no disk, no asyncio: the runtime asks them and acts (sleeps,
emits events, waits for slots). The message texts are interface (tests and
users read them); they are the texts orch has always printed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from orch.engine.lifecycle import ErrorClass

#: Failures of orch's own path: retrying cannot help, whatever `retry_on` says.
NEVER_RETRIED = frozenset({ErrorClass.INTERNAL, ErrorClass.DISK, ErrorClass.PROMOTE, ErrorClass.LOCK})
#: The worker running the attempt died, not the attempt: always worth another try.
ALWAYS_RETRIED = frozenset({ErrorClass.WORKER_LOST})
#: Retried only when `retry_on` names them: a request the endpoint refused as
#: malformed or too long (a 4xx, a context-length error) fails the same way again.
NOT_RETRIED_BY_DEFAULT = frozenset({ErrorClass.REQUEST_ERROR})
#: A stage's concurrency when neither the stage nor the command line sets one.
DEFAULT_PARALLEL = 8


@dataclass(frozen=True)
class RetryPolicy:
    """Decide whether a failed attempt is retried.

    Attributes:
        retries: Retries after the first attempt (a stage's `retries`).
        retry_on: Error classes and exit codes worth retrying (a stage's
            `retry_on`); None retries every class but NOT_RETRIED_BY_DEFAULT.
    """

    retries: int = 0
    retry_on: frozenset[str | int] | None = None

    def is_retryable(self, error_class: str | None, exit_code: int | None, stopping: bool = False) -> bool:
        """True if a failure of `error_class` (and `exit_code`, for class `exit`) is worth another try.

        Never while the run is stopping, nor for NEVER_RETRIED classes; always
        for ALWAYS_RETRIED ones. With `retry_on`, class `exit` retries only the
        exit codes it names.
        """
        if stopping or error_class in NEVER_RETRIED:
            return False
        if error_class in ALWAYS_RETRIED:
            return True
        if self.retry_on is None:
            return error_class not in NOT_RETRIED_BY_DEFAULT
        if error_class == ErrorClass.EXIT:
            return exit_code in self.retry_on
        return error_class in self.retry_on

    def should_retry(
        self, error_class: str | None, exit_code: int | None, attempt_index: int, stopping: bool = False
    ) -> bool:
        """True if the failed attempt `attempt_index` (0 for the first) is retried.

        False once `retries` retries were made, or when `is_retryable` says no.
        """
        return attempt_index < self.retries and self.is_retryable(error_class, exit_code, stopping)


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff, honouring a server's Retry-After up to the cap.

    Full jitter: AWS Architecture Blog, "Exponential Backoff and Jitter", 2015.

    Attributes:
        base_s: The first retry's ceiling; it doubles per retry.
        cap_s: No ceiling, and no Retry-After, waits longer than this.
        rng: The random source (seed it in tests).
    """

    base_s: float = 2.0
    cap_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay_s(self, retry: int, retry_after_s: float | None = None) -> float:
        """Return the wait before retry number `retry` (1 for the first retry), in seconds.

        uniform(0, min(cap, base * 2**(retry-1))), and at least the server's
        Retry-After capped at `cap_s` (a negative one counts as 0; NaN or inf is ignored).
        """
        ceiling = min(self.cap_s, self.base_s * 2 ** (retry - 1))
        delay = self.rng.uniform(0, ceiling)
        if retry_after_s is None or not math.isfinite(retry_after_s):
            return delay
        return max(delay, min(max(retry_after_s, 0.0), self.cap_s))


class HaltPolicy:
    """--halt-on: stop starting partitions once a share of the scheduled ones failed.

    Holds the run-wide halt: the first reason latched (by `record_failure` or
    `latch`, e.g. a run budget) stays the run's reason.

    Args:
        pct: The share (0–100) of failed partitions that halts the run; None never halts.
        scheduled: How many partitions the run has in scope.
    """

    def __init__(self, pct: float | None, scheduled: int) -> None:
        self.pct = pct
        self.scheduled = scheduled
        self.failed = 0
        self._reason: str | None = None

    @property
    def reason(self) -> str | None:
        """Why the run halted (`halted: ...`), or None while it runs on."""
        return self._reason

    def record_failure(self) -> str | None:
        """Count one failed partition; return the reason if this failure halts the run now.

        Halts when failed * 100 / scheduled >= pct (exactly the percentage halts).
        """
        self.failed += 1
        pct = self.pct
        if pct is None or not self.scheduled or self._reason or self.failed * 100 / self.scheduled < pct:
            return None
        self._reason = f"halted: {self.failed} of {self.scheduled} partitions failed (--halt-on {pct:g}%)"
        return self._reason

    def latch(self, reason: str) -> bool:
        """Halt the run for `reason` unless it already halted; True if this call halted it."""
        if self._reason:
            return False
        self._reason = reason
        return True


class CostReport(Protocol):
    """What a budget reads of an attempt's usage (orch.backends.Usage has it)."""

    @property
    def cost_usd(self) -> float | None: ...

    @property
    def cost_rejected(self) -> bool: ...

    @property
    def warnings(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Halt:
    """A budget's verdict: why to start nothing more.

    Attributes:
        reason: The message (`halted: ...`).
        stage: The stage it halts, or None for the whole run.
        first: True the first time this halt is reported (emit its event then).
    """

    reason: str
    stage: str | None
    first: bool


class Budget:
    """Run and stage `max_cost_usd`: sum what attempts cost, and say when to halt.

    An invalid cost (`cost_rejected`, or a non-finite or negative one) cannot
    be counted, and counting it as 0 would let a budget never be reached, so a
    budgeted run or stage then halts with a message saying why.

    Args:
        run_usd: The run's budget (orch.yaml `max_cost_usd`), or None.
        stage_usd: Each stage's budget (its `max_cost_usd`); a missing or None entry has none.
    """

    def __init__(self, run_usd: float | None, stage_usd: Mapping[str, float | None] | None = None) -> None:
        self.run_usd = run_usd
        self.stage_usd = dict(stage_usd or {})
        self.spent_run = 0.0
        self.spent_stage: dict[str, float] = {}
        self._invalid: dict[str, str] = {}
        self._reported: set[str | None] = set()

    def add(self, stage: str, usage: CostReport | None) -> None:
        """Count an attempt's cost in `stage`; remember a cost reported but invalid."""
        if usage and (usage.cost_rejected or not is_valid_cost(usage.cost_usd)):
            self._invalid.setdefault(stage, "; ".join(usage.warnings) or "cost not a number")
            return
        if not usage or not usage.cost_usd:
            return
        self.spent_run += usage.cost_usd
        self.spent_stage[stage] = self.spent_stage.get(stage, 0.0) + usage.cost_usd

    def halt_reason(self, stage: str) -> Halt | None:
        """Return why `stage` may start no more attempts, or None.

        In order: the run budget cannot be enforced (an invalid cost in any
        stage), the stage's cannot, the run budget is reached, the stage's is.
        """
        budget = self.run_usd
        if budget is not None and self._invalid:
            name, why = next(iter(self._invalid.items()))
            return self._halt(
                None,
                f"halted: run budget max_cost_usd {budget:g} cannot be enforced: an agent in "
                f"stage {name} reported an invalid cost ({why}); fix the agent's usage output",
            )
        stage_budget = self.stage_usd.get(stage)
        stage_why = self._invalid.get(stage)
        if stage_budget is not None and stage_why is not None:
            return self._halt(
                stage,
                f"halted: stage {stage} budget max_cost_usd {stage_budget:g} cannot be enforced: "
                f"an agent reported an invalid cost ({stage_why}); fix the agent's usage output",
            )
        if budget is not None and self.spent_run >= budget:
            return self._halt(
                None, f"halted: run budget max_cost_usd {budget:g} reached (spent {self.spent_run:.4f})"
            )
        spent = self.spent_stage.get(stage, 0.0)
        if stage_budget is not None and spent >= stage_budget:
            return self._halt(
                stage,
                f"halted: stage {stage} budget max_cost_usd {stage_budget:g} reached (spent {spent:.4f})",
            )
        return None

    def _halt(self, stage: str | None, reason: str) -> Halt:
        first = stage not in self._reported
        self._reported.add(stage)
        return Halt(reason, stage, first)


def is_valid_cost(cost: float | None) -> bool:
    """True for an unknown cost (None) or a finite, non-negative one."""
    return cost is None or (math.isfinite(cost) and cost >= 0)


def stage_limit(stage_max_parallel: int | None, option_max_parallel: int | None, single_stage: bool) -> int:
    """Return how many of a stage's partitions run at once.

    `--max-parallel` overrides the stage's `max_parallel` only when the run
    covers one stage (with several it is the run-wide limit, see `run_limit`).
    """
    override = option_max_parallel if single_stage else None
    return int(override or stage_max_parallel or DEFAULT_PARALLEL)


def run_limit(
    project_max_parallel: int | None, option_max_parallel: int | None, single_stage: bool
) -> int | None:
    """Return how many partitions of all stages run at once, or None for no run-wide limit.

    orch.yaml's top-level `max_parallel`, overridden by `--max-parallel` when
    the run covers several stages.
    """
    override = None if single_stage else option_max_parallel
    if not (project_max_parallel or override):
        return None
    return int(override or project_max_parallel or 1)


class AdmissionPolicy:
    """Stage, run and agent concurrency limits as counters: decides whether one more attempt may run.

    The runtime's run slots (`orch.engine.slots.Slots`) wait, and ask this
    policy whom to let in; agents' adaptive limits (AIMD after a 429, requests
    per minute) are the executor's `AgentLimiters`, which the runtime's slots
    leave `agent` unset for.

    Args:
        stage_limits: Each stage's limit (see `stage_limit`); a stage not named is unlimited.
        run_limit: The limit across all stages, or None.
        agent_limits: Each agent's limit, or None for unlimited; `set_agent_limit`
            changes one (e.g. after a 429).
    """

    def __init__(
        self,
        stage_limits: Mapping[str, int],
        run_limit: int | None = None,
        agent_limits: Mapping[str, int | None] | None = None,
    ) -> None:
        self.stage_limits = dict(stage_limits)
        self.run_limit = run_limit
        self.agent_limits = dict(agent_limits or {})
        self.running_stage: dict[str, int] = {}
        self.running_agent: dict[str, int] = {}
        self.running = 0

    def can_admit(self, stage: str, agent: str | None = None) -> bool:
        """True if one more attempt of `stage` (with `agent`) fits every limit."""
        if self.run_limit is not None and self.running >= self.run_limit:
            return False
        limit = self.stage_limits.get(stage)
        if limit is not None and self.running_stage.get(stage, 0) >= limit:
            return False
        agent_limit = self.agent_limits.get(agent) if agent is not None else None
        return agent_limit is None or self.running_agent.get(agent or "", 0) < agent_limit

    def admit(self, stage: str, agent: str | None = None) -> None:
        """Count one more running attempt.

        Raises:
            RuntimeError: it does not fit (ask `can_admit` first): a bug in the caller.
        """
        if not self.can_admit(stage, agent):
            raise RuntimeError(f"admission: no slot for stage {stage!r}, agent {agent!r}")
        self.running += 1
        self.running_stage[stage] = self.running_stage.get(stage, 0) + 1
        if agent is not None:
            self.running_agent[agent] = self.running_agent.get(agent, 0) + 1

    def release(self, stage: str, agent: str | None = None) -> None:
        """Count one running attempt of `stage` (with `agent`) as ended."""
        self.running -= 1
        self.running_stage[stage] -= 1
        if agent is not None:
            self.running_agent[agent] -= 1

    def set_stage_limit(self, stage: str, limit: int | None) -> None:
        """Change `stage`'s limit (None: unlimited); running attempts above it finish, new ones wait."""
        if limit is None:
            self.stage_limits.pop(stage, None)
        else:
            self.stage_limits[stage] = limit

    def is_run_full(self) -> bool:
        """True if the run-wide limit admits nobody, whatever the stage."""
        return self.run_limit is not None and self.running >= self.run_limit

    def set_agent_limit(self, agent: str, limit: int | None) -> None:
        """Change `agent`'s limit; running attempts above it finish, new ones wait."""
        self.agent_limits[agent] = limit
