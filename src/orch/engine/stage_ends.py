"""The end of each stage in a run: count its finished partitions, then check its barrier.

`Scheduler` (orch.engine.runtime) reports every partition's outcome here; after
a stage's last one, its barrier is checked as `orch status` would (size and
mtime against the manifest) and a `barrier` event is written.
"""

from __future__ import annotations

from collections import Counter

from orch.config.workspace import Workspace
from orch.engine.context import RunContext
from orch.engine.outcomes import Outcome, RunOptions
from orch.engine.plan import Planner
from orch.store.barriers import BarrierEntry, BarrierReport, barrier_report
from orch.store.faults import describe, error_class_of
from orch.store.runlog import RunLog


class StageEnds:
    """Finished-partition counts per stage, and the barrier report of each finished stage.

    Args:
        workspace: The loaded project.
        options: The run's options (agent override, `only`).
        ctx: The run's context (`stopping`).
        log: Where `stage_finished` and `barrier` events go.
    """

    def __init__(self, workspace: Workspace, options: RunOptions, ctx: RunContext, log: RunLog) -> None:
        self.ws = workspace
        self.options = options
        self.ctx = ctx
        self.log = log
        #: Partitions in scope per stage.
        self.sizes: dict[str, int] = {}
        #: Finished partitions per stage, by outcome status.
        self.done: dict[str, Counter[str]] = {}
        #: The barrier report of each stage whose last partition finished.
        self.barriers: dict[str, BarrierReport] = {}

    def finished_one(self, outcome: Outcome) -> None:
        """Count a finished partition; check the stage's barrier after its last one."""
        done = self.done.setdefault(outcome.stage, Counter())
        done[str(outcome.status)] += 1
        if done.total() < self.sizes.get(outcome.stage, 0) or self.ctx.stopping:
            return
        self.log.emit("stage_finished", stage=outcome.stage, counts=dict(done))
        # Outputs promoted by this run were checked in full just before promotion;
        # here size and mtime must still match what the manifest recorded (as in
        # `orch status`). `orch barrier STAGE` re-reads every file.
        try:
            report = self._check_barrier(outcome.stage)
        except Exception as err:  # the outputs changed under us in a way no check expected
            entry = BarrierEntry("-", "error", "-", error_class_of(err), f"cannot check: {describe(err)}")
            report = BarrierReport(outcome.stage, done.total(), 0, (entry,))
        self.barriers[outcome.stage] = report
        self.log.emit(
            "barrier",
            stage=outcome.stage,
            met=report.met,
            complete=report.complete,
            total=report.total,
            missing=[e.__dict__ for e in report.entries[:20]],
        )

    def _check_barrier(self, name: str) -> BarrierReport:
        """Check stage `name`'s barrier as `check_barrier` does, keeping one state at a time
        (a planner's `stage_states` would keep a state and a manifest per partition)."""
        planner = Planner(self.ws, self.options.agent, deep=False)
        stage = self.ws.project.stage(name)
        for upstream in stage.upstream:
            planner.stage_states(upstream)
        agent, only = planner.agent_for(stage), self.options.only
        return barrier_report(
            name,
            (
                planner.assess(p, agent, planner.child_manifests(p))
                for p in self.ws.partitions.for_stage(name)
                if only is None or p.id in only
            ),
        )
