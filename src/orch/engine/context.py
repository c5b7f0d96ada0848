"""What the partitions of one run share: the project, the run log, the executor, policies, phases.

The runtime (`Scheduler`) makes one RunContext; each partition's attempts
(`orch.engine.partition`) read and update it. The run-wide decisions —
halt, budgets, retries, backoff — are the pure policies of
`orch.engine.policies`; this class emits their events.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from orch.backends import Usage
from orch.config.partitions import Partition
from orch.config.stages import Stage
from orch.config.workspace import ChildKey, Workspace
from orch.engine.lifecycle import PHASE_OF, OutcomeStatus, Phase, Trigger, transition
from orch.engine.outcomes import RunOptions
from orch.engine.plan import Planner
from orch.engine.policies import Backoff, Budget, HaltPolicy, RetryPolicy
from orch.engine.promotion import Promoter
from orch.engine.slots import Slots
from orch.executors import Executor, LocalExecutor
from orch.redact import Redactor
from orch.store.faults import describe, is_disk_fault
from orch.store.runlog import EventSink, RunLog, new_run_id


class RunContext:
    """Shared state of one run.

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
        sinks: list[EventSink] | None,
        executor: Executor | None,
        rng: random.Random | None,
    ) -> None:
        self.ws = workspace
        self.options = options
        self.planner = Planner(workspace, options.agent)
        self.executor: Executor = executor or LocalExecutor()
        self.rng = rng or random.Random()
        self.run_id = new_run_id()
        self.redactor = Redactor.for_agents(workspace.project.agents.values())
        self.log = RunLog(workspace.root, self.run_id, sinks, self.redactor)
        self.promoter = Promoter(workspace.root)
        self.fs = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orch-fs")
        self.halt = HaltPolicy(options.halt_on_pct, 0)
        self.budget = Budget(
            workspace.project.max_cost_usd,
            {s.name: s.max_cost_usd for s in workspace.project.stages.values()},
        )
        self._slots: Slots | None = None
        self.phases: dict[ChildKey, Phase] = {}
        self.stopping = False
        self.stop_signal: str | None = None
        self.disk_fault: str | None = None
        self.traces: dict[Path, str] = {}  # staging dir -> traceback of orch's own failure in it
        self.parents: set[Path] = set()  # partition parent directories known to exist

    @property
    def slots(self) -> Slots:
        """The run's slots, made on first use (inside the running event loop)."""
        if self._slots is None:
            single = len(self.options.stages) == 1
            self._slots = Slots(single, self.options.max_parallel, self.ws.project.max_parallel)
        return self._slots

    # -- phases ---------------------------------------------------------------------

    def move(self, partition: Partition, trigger: Trigger) -> Phase:
        """Move `partition` to its next phase (see `orch.engine.lifecycle.TRANSITIONS`).

        Raises:
            IllegalTransition: the lifecycle does not allow `trigger` now (a bug in orch).
        """
        key = (partition.stage, partition.id)
        phase = transition(self.phases.get(key, Phase.WAITING_FOR_INPUTS), trigger)
        self.phases[key] = phase
        return phase

    def settle(self, partition: Partition, status: OutcomeStatus) -> None:
        """Put `partition` in the terminal phase of `status` after an exception ended it.

        An interrupt or a failure may end any active phase; a partition already
        terminal keeps its phase (its outcome was decided before the exception).
        """
        key = (partition.stage, partition.id)
        phase = self.phases.get(key, Phase.WAITING_FOR_INPUTS)
        if not phase.is_terminal:
            self.phases[key] = PHASE_OF[status]

    # -- policies -------------------------------------------------------------------

    def retry_policy(self, stage: Stage) -> RetryPolicy:
        """Return `stage`'s retry policy (its `retries` and `retry_on`)."""
        return RetryPolicy(stage.retries, stage.retry_on)

    def backoff(self, stage: Stage) -> Backoff:
        """Return `stage`'s backoff (its `backoff.base` and `backoff.cap`), jittered by this run's rng."""
        return Backoff(stage.backoff_base_s, stage.backoff_cap_s, self.rng)

    def record_failure(self) -> None:
        """Count a partition that failed for good; halt the run if --halt-on says so."""
        reason = self.halt.record_failure()
        if reason:
            self.log.emit("halted", reason=reason)

    def add_cost(self, stage: Stage, usage: Usage | None) -> None:
        """Count an attempt's cost against the run's and `stage`'s budgets."""
        self.budget.add(stage.name, usage)

    def halt_reason(self, stage: Stage) -> str | None:
        """Return why `stage` may start no more attempts (disk fault, --halt-on, budgets), or None.

        The first time a halt is seen its `halted` event is written.
        """
        if self.disk_fault:
            return self.disk_fault
        if self.halt.reason:
            return self.halt.reason
        halt = self.budget.halt_reason(stage.name)
        if halt is None:
            return None
        if halt.stage is None:
            self.halt.latch(halt.reason)
        if halt.first and halt.stage is None:
            self.log.emit("halted", reason=halt.reason)
        elif halt.first:
            self.log.emit("halted", stage=halt.stage, reason=halt.reason)
        return halt.reason

    def note_disk_fault(self, err: BaseException) -> None:
        """After ENOSPC, EROFS, EACCES ...: start no more partitions (they halt)."""
        if is_disk_fault(err) and self.disk_fault is None:
            self.disk_fault = (
                f"halted: disk fault: {describe(err)}; free space or fix permissions, then run again"
            )
            self.log.emit("halted", reason=self.disk_fault)
