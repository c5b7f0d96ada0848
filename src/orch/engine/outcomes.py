"""What a run covers (RunOptions) and what it did: one Outcome per partition, a RunSummary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from orch.backends import Usage
from orch.engine.lifecycle import OutcomeStatus
from orch.store.barriers import BarrierReport
from orch.store.manifest import Manifest

#: Outcomes that leave the partition complete.
DONE = frozenset({OutcomeStatus.COMPLETE, OutcomeStatus.UP_TO_DATE})


@dataclass(frozen=True)
class RunOptions:
    """What a run covers and how.

    Attributes:
        stages: Stages in scope, upstream first.
        only: Partition ids to narrow to (in every stage in scope), or None.
        max_parallel: Overrides each stage's `max_parallel` (stage run) or the
            run-wide limit (orch run); None keeps the configuration.
        agent: Agent name replacing every stage's agent, or None.
        halt_on_pct: Stop starting partitions once this share (0–100) failed.
        retry_failed: Run only partitions whose last attempt failed.
        force: Run every partition in scope, complete or not.
        wait_locks_s: Wait this long for a partition held by another run;
            0 skips it and says so.
    """

    stages: tuple[str, ...]
    only: frozenset[str] | None = None
    max_parallel: int | None = None
    agent: str | None = None
    halt_on_pct: float | None = None
    retry_failed: bool = False
    force: bool = False
    wait_locks_s: float = 0.0


@dataclass(slots=True)
class Outcome:
    """How one partition ended in a run.

    `status` is one of: complete (promoted now), up-to-date (nothing to do),
    failed, interrupted, blocked (an input failed), held (another orch process
    holds it), halted (not started after --halt-on or a budget), skipped (not
    selected, e.g. --retry-failed on a missing partition).

    `manifest` is the partition's manifest for the later partitions of the run
    that read it; the run summary's outcomes leave it out (None), so a run
    keeps no manifest per partition.
    """

    stage: str
    partition: str
    status: OutcomeStatus
    reason: str = ""
    attempts: int = 0
    duration_s: float = 0.0
    usage: Usage | None = None
    manifest: Manifest | None = None


@dataclass
class RunSummary:
    """The result of a run: one Outcome per partition in scope, and flags.

    `disk_fault` says why the run stopped starting partitions after ENOSPC,
    EROFS, EACCES ... (naming the path), or is None.
    """

    run_id: str
    outcomes: list[Outcome] = field(default_factory=list)
    interrupted: bool = False
    stop_signal: str | None = None
    halted: str | None = None
    events_path: Path | None = None
    duration_s: float = 0.0
    barriers: list[BarrierReport] = field(default_factory=list)
    disk_fault: str | None = None

    def count(self, status: str) -> int:
        """Return how many partitions ended with `status`."""
        return sum(1 for o in self.outcomes if o.status == status)

    def counts(self) -> dict[str, int]:
        """Return `status -> count` for the statuses present, sorted by status (plain str keys)."""
        return {str(s): self.count(s) for s in sorted({o.status for o in self.outcomes})}

    @property
    def ok(self) -> bool:
        """True when every partition in scope is complete or up to date."""
        return all(o.status in DONE for o in self.outcomes) and not self.interrupted

    @property
    def cost_usd(self) -> float:
        """Total cost reported by agents in this run (USD)."""
        return sum((o.usage.cost_usd or 0.0) for o in self.outcomes if o.usage)
