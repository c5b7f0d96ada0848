"""Barrier checks: is every partition of a stage complete on disk, now?

Re-checks every output in full (contents, schemas, symlinks) rather than
trusting manifests, and reports what is missing where.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from orch.config.workspace import Workspace
from orch.engine.plan import PartitionState, Planner, Status


@dataclass(frozen=True)
class BarrierEntry:
    """One reason a partition holds the barrier: partition, file, rule, detail."""

    partition: str
    status: str
    file: str
    rule: str
    detail: str


@dataclass(frozen=True)
class BarrierReport:
    """The barrier of one stage: met when every partition is complete.

    Attributes:
        stage: Stage name.
        total: Number of partitions.
        complete: Number complete and up to date.
        entries: One entry per failing file/rule (or per partition when it
            has no outputs to check), in partition order.
    """

    stage: str
    total: int
    complete: int
    entries: tuple[BarrierEntry, ...]

    @property
    def met(self) -> bool:
        """True when every partition is complete."""
        return self.complete == self.total

    def to_json(self) -> dict[str, object]:
        """Return the report as a JSON-ready dict."""
        return {
            "stage": self.stage,
            "met": self.met,
            "total": self.total,
            "complete": self.complete,
            "missing": [e.__dict__ for e in self.entries],
        }


def check_barrier(
    workspace: Workspace,
    stage: str,
    agent: str | None = None,
    planner: Planner | None = None,
    only: Collection[str] | None = None,
) -> BarrierReport:
    """Check every partition of `stage` on disk now.

    Args:
        workspace: The loaded project.
        stage: Stage name.
        agent: Agent override used for fingerprints (as in the run).
        planner: A deep planner to reuse; a new one is made if None.
        only: Check only these partition ids (a run narrowed with --only).

    Raises:
        ConfigError: unknown stage or invalid configuration.
    """
    planner = planner or Planner(workspace, agent, deep=True)
    states = planner.stage_states(stage)
    if only:
        states = [s for s in states if s.partition.id in only]
    return barrier_report(stage, states)


def barrier_report(stage: str, states: Iterable[PartitionState]) -> BarrierReport:
    """Return the barrier of `stage` from its partitions' states (read one at a time)."""
    entries: list[BarrierEntry] = []
    complete = total = 0
    for state in states:
        total += 1
        if state.is_complete:
            complete += 1
            continue
        pid, status = state.partition.id, state.status.value
        if state.status in (Status.INCOMPLETE, Status.MODIFIED) and state.findings:
            entries.extend(BarrierEntry(pid, status, f.file, f.rule, f.detail) for f in state.findings)
        else:
            entries.append(BarrierEntry(pid, status, "-", status, state.reason))
    return BarrierReport(stage, total, complete, tuple(entries))
