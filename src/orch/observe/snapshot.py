"""The one read model: what each partition is doing and why, from disk plus the live event log.

`take_snapshot` joins the planner's shallow view of the disk (as `orch status`
sees it) with the `RunProgress` of the newest (or a chosen) run. `orch status`,
the progress display, `orch watch` and `orch serve` all read a `Snapshot`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orch.config.workspace import Workspace
from orch.engine.plan import PartitionState, Planner, Status
from orch.engine.states import ManifestFacts
from orch.errors import UsageError
from orch.observe.events import RunInfo, latest_run, list_runs, read_run
from orch.observe.progress import (
    ACTIVE_PHASES,
    Failure,
    PartitionProgress,
    Phase,
    RunProgress,
    UsageTotals,
)

__all__ = [
    "Failure",
    "PartitionProgress",
    "PartitionView",
    "Phase",
    "RunProgress",
    "Snapshot",
    "StageView",
    "UsageTotals",
    "take_snapshot",
]


@dataclass(frozen=True)
class PartitionView:
    """One partition: its status on disk joined with its phase in the run.

    Attributes:
        stage: Stage name.
        id: Partition id.
        status: Status on disk (`complete`, `stale`, ... as `orch status` says).
        reason: The status reason ("stale: prompt changed (...)", ...).
        phase: Its phase in the run (`queued`, `running`, `backing_off`, ...);
            None if the run does not touch it, or no run is followed.
        live_reason: Why the run started it, or skipped, blocked or halted it.
        attempt: The attempt number running now, or the latest one known
            (run, else manifest); None if it never ran.
        attempts: Attempts kept on disk (the manifest's and archived ones).
        elapsed_s: Seconds the running attempt has run; None unless running.
        cost_usd: Cost so far: of this run's attempts while it runs, else the manifest's.
        tokens: Input plus output tokens, on the same rule as `cost_usd`.
        error: The latest attempt error (run, else the last archived one).
    """

    stage: str
    id: str
    status: str
    reason: str
    phase: Phase | None
    live_reason: str | None
    attempt: int | None
    attempts: int
    elapsed_s: float | None
    cost_usd: float | None
    tokens: int | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict (`phase` as its string)."""
        return {
            "stage": self.stage,
            "id": self.id,
            "status": self.status,
            "reason": self.reason,
            "phase": self.phase.value if self.phase else None,
            "live_reason": self.live_reason,
            "attempt": self.attempt,
            "attempts": self.attempts,
            "elapsed_s": self.elapsed_s,
            "cost_usd": self.cost_usd,
            "tokens": self.tokens,
            "error": self.error,
        }


@dataclass(frozen=True)
class StageView:
    """One stage: its partitions in start order and their tallies.

    Attributes:
        name: Stage name.
        partitions: Every partition of the stage.
        counts: `status -> count` on disk, every status present.
        phases: `phase -> count` in the run, every phase present.
        barrier: The run's barrier verdict `{met, complete, total}`, if checked.
        cost_usd: Sum of its partitions' `cost_usd`; None if none is known.
        tokens: Sum of its partitions' `tokens`; None if none is known.
    """

    name: str
    partitions: tuple[PartitionView, ...]
    counts: dict[str, int]
    phases: dict[str, int]
    barrier: dict[str, Any] | None
    cost_usd: float | None
    tokens: int | None

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "stage": self.name,
            "total": len(self.partitions),
            "counts": self.counts,
            "phases": self.phases,
            "barrier": self.barrier,
            "cost_usd": self.cost_usd,
            "tokens": self.tokens,
            "partitions": [p.to_json() for p in self.partitions],
        }


@dataclass(frozen=True)
class Snapshot:
    """The project at one moment: every stage and partition, and the followed run.

    Attributes:
        root: Project root.
        taken_at: Unix time it was taken.
        stages: Every stage, upstream first.
        run: The followed run, or None if the project never ran.
        progress: That run's live state (None without a run).
    """

    root: Path
    taken_at: float
    stages: tuple[StageView, ...]
    run: RunInfo | None
    progress: RunProgress | None

    @property
    def is_live(self) -> bool:
        """True while the followed run's orchestrator is alive."""
        return self.run is not None and self.run.alive

    def stage(self, name: str) -> StageView:
        """Return one stage's view.

        Raises:
            KeyError: no such stage.
        """
        for view in self.stages:
            if view.name == name:
                return view
        raise KeyError(name)

    def totals(self) -> dict[str, Any]:
        """Return partitions, counts by status and by phase, cost and tokens over every stage."""
        counts: dict[str, int] = {}
        phases: dict[str, int] = {}
        for view in self.stages:
            for key, n in view.counts.items():
                counts[key] = counts.get(key, 0) + n
            for key, n in view.phases.items():
                phases[key] = phases.get(key, 0) + n
        return {
            "partitions": sum(len(v.partitions) for v in self.stages),
            "counts": counts,
            "phases": phases,
            "cost_usd": _sum(v.cost_usd for v in self.stages),
            "tokens": _sum(v.tokens for v in self.stages),
        }

    def to_json(self) -> dict[str, Any]:
        """Return plain dicts and lists (for `--json` and the web API)."""
        run = None
        if self.run is not None:
            run = {
                "run_id": self.run.run_id,
                "events_path": str(self.run.events_path),
                "alive": self.run.alive,
                "finished": self.run.finished,
                "pid": self.run.pid,
                "started_at": self.run.started_at,
            }
            if self.progress is not None:
                run["progress"] = self.progress.to_json(self.taken_at)
        return {
            "root": str(self.root),
            "taken_at": self.taken_at,
            "run": run,
            "totals": self.totals(),
            "stages": [v.to_json() for v in self.stages],
        }


def take_snapshot(
    workspace: Workspace,
    agent: str | None = None,
    run_id: str | None = None,
    progress: RunProgress | None = None,
    now: float | None = None,
) -> Snapshot:
    """Look at the disk (shallow, like `orch status`) and join the run's live state.

    Reads manifests, directory listings and `wip/attempts/` through
    `orch.engine.plan.Planner` (size and mtime checks, no output re-reads; the
    status index `orch status` keeps), and the run's `wip/runs/<run-id>/events.jsonl`.
    Writes nothing.

    Args:
        workspace: The loaded project.
        agent: Agent override, as `--agent` (part of the fingerprint).
        run_id: The run to follow; None follows the newest one.
        progress: That run's state already folded by the caller (a follower
            that applies new events only); None reads its whole log.
        now: Unix time for elapsed times; defaults to the current time.

    Raises:
        UsageError: `run_id` names no run under `wip/runs/`.
    """
    root = workspace.root
    run = _find_run(root, run_id)
    if run is not None and progress is None:
        progress = RunProgress.from_log(run.events_path, run.run_id)
    planner = Planner(workspace, agent, index=True)  # reads the status index, never writes it
    taken_at = time.time() if now is None else now
    join = _Join(planner, run, progress, taken_at)
    stages = tuple(join.stage(name) for name in workspace.project.stages)
    return Snapshot(root, taken_at, stages, run, progress)


def _find_run(root: Path, run_id: str | None) -> RunInfo | None:
    if run_id is None:
        return latest_run(root)
    run_dir = root / "wip" / "runs" / run_id
    if "/" in run_id or run_id in ("", ".", "..") or not run_dir.is_dir():
        known = [r.run_id for r in list_runs(root)][-3:]
        hint = f"recent runs: {', '.join(known)}" if known else "this project has no runs yet"
        raise UsageError(f"no run {run_id!r} under {root / 'wip' / 'runs'}", hint)
    return read_run(run_dir)


class _Join:
    """Joins planner states with a run's progress, one stage at a time."""

    def __init__(
        self, planner: Planner, run: RunInfo | None, progress: RunProgress | None, now: float
    ) -> None:
        self.planner = planner
        self.progress = progress
        self.now = now
        self.live = run is not None and run.alive
        # an unfinished run whose orchestrator is gone ran nothing more: its
        # running, queued and backing-off partitions were cut short
        self.dead = run is not None and not run.alive and not run.finished
        self.stages = set(progress.stages) if progress else set()

    def stage(self, name: str) -> StageView:
        states = self.planner.stage_states(name)
        views = tuple(self.partition(state) for state in states)
        counts = dict.fromkeys((s.value for s in Status), 0)
        phases = dict.fromkeys((p.value for p in Phase), 0)
        for view in views:
            counts[view.status] += 1
            if view.phase is not None:
                phases[view.phase.value] += 1
        barrier = self.progress.barriers.get(name) if self.progress else None
        cost_usd = _sum(v.cost_usd for v in views)
        return StageView(name, views, counts, phases, barrier, cost_usd, _sum(v.tokens for v in views))

    def partition(self, state: PartitionState) -> PartitionView:
        stage, pid, manifest = state.stage, state.id, state.manifest_facts()
        live = self.progress.partitions.get((stage, pid)) if self.progress else None
        phase, live_reason = self._phase(state, live)
        archived = self.planner.has_archived(stage, pid)
        numbers = {n for n, _ in self.planner.archived(state.partition)} if archived else set()
        if manifest is not None:
            numbers.add(manifest.attempt)
        use_live = live is not None and (manifest is None or live.phase is not Phase.DONE)
        usage = live.usage if use_live and live is not None else _manifest_usage(manifest)
        error = live.error if live is not None and live.error else None
        if error is None and state.last_error:
            error = state.last_error.get("error")
        return PartitionView(
            stage=stage,
            id=pid,
            status=state.status.value,
            reason=state.reason,
            phase=phase,
            live_reason=live_reason,
            attempt=(live.attempt or None) if live else (manifest.attempt if manifest else None),
            attempts=len(numbers),
            elapsed_s=live.elapsed_s(self.now) if live and phase is Phase.RUNNING else None,
            cost_usd=usage.cost_usd,
            tokens=usage.tokens,
            error=error,
        )

    def _phase(
        self, state: PartitionState, live: PartitionProgress | None
    ) -> tuple[Phase | None, str | None]:
        progress = self.progress
        if progress is None:
            return None, None
        if live is not None:
            if self.dead and live.phase in ACTIVE_PHASES:
                return Phase.INTERRUPTED, "the run's orchestrator is gone (killed?)"
            return live.phase, live.reason
        stage = state.stage
        if not self.live or stage not in self.stages or state.status is Status.COMPLETE:
            return None, None
        halted = progress.halted or progress.halted_stages.get(stage)
        if halted:
            return Phase.HALTED, halted
        return Phase.QUEUED, None


def _manifest_usage(manifest: ManifestFacts | None) -> UsageTotals:
    usage = UsageTotals()
    if manifest is not None:
        usage.add(manifest.usage)
    return usage


def _sum(values: Iterable[Any]) -> Any:
    known = [v for v in values if v is not None]
    return sum(known) if known else None
