"""`orch accept`: record the current fingerprint of stale partitions without running them.

Like Snakemake's `--touch`: a partition whose outputs still pass their expect
rules gets a manifest with today's fingerprint, under its partition lock. Its
output fingerprint is kept, so fan-in partitions that read it stay fresh.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from orch.config.workspace import Workspace
from orch.engine.plan import PartitionState, Planner, Status
from orch.store.checks import META_DIR, check_outputs
from orch.store.layout import MANIFEST, PROMPT
from orch.store.locks import PartitionLock
from orch.store.manifest import write_atomic
from orch.store.runlog import RunLog, new_run_id
from orch.usecases.inspect import select_only


@dataclass(frozen=True)
class Acceptance:
    """What `orch accept` did with one partition.

    Attributes:
        partition: Partition id.
        outcome: "accepted", "up to date" or "not accepted".
        detail: The stale reason it had, or why it was not accepted.
    """

    partition: str
    outcome: str
    detail: str


@dataclass
class AcceptReport:
    """The result of `orch accept STAGE`."""

    stage: str
    items: list[Acceptance]
    run_id: str = ""

    def count(self, outcome: str) -> int:
        """Return how many partitions had `outcome`."""
        return sum(1 for i in self.items if i.outcome == outcome)

    @property
    def refused(self) -> list[Acceptance]:
        """Partitions in scope that are still not up to date."""
        return [i for i in self.items if i.outcome == "not accepted"]


def accept_stage(
    ws: Workspace, stage: str, only: Sequence[str] | None = None, agent: str | None = None
) -> AcceptReport:
    """Accept the stale partitions of `stage` whose outputs pass their checks.

    Reads every output in full (as `orch barrier`). For each accepted
    partition, under its lock: rewrites `.orch/prompt.md` (the prompt now) and
    `.orch/manifest.json` (fingerprint and parts now; outputs, output
    fingerprint and attempts kept; an `accepted` entry added), each
    atomically. Appends an `accepted` event to `wip/runs/<run-id>/events.jsonl`
    and one line to `wip/notes.md` when anything was accepted.

    Args:
        ws: The workspace.
        stage: Stage name.
        only: Partition ids to consider (default: all of the stage).
        agent: The agent the partitions are meant to run with (`--agent`).

    Raises:
        UsageError: unknown stage, agent or partition id.
    """
    name = ws.project.stage(stage).name
    planner = Planner(ws, agent, deep=True)
    wanted = set(select_only(ws, [name], only)) if only else None
    states = [s for s in planner.stage_states(name) if wanted is None or s.partition.id in wanted]
    report = AcceptReport(name, [], new_run_id())
    log: RunLog | None = None
    for state in states:
        item = _accept_one(planner, state, report.run_id)
        if item.outcome == "accepted":
            if log is None:
                log = RunLog(ws.root, report.run_id)
            log.emit("accepted", stage=name, partition=item.partition, reason=item.detail)
        report.items.append(item)
    if log is not None:
        ids = [i.partition for i in report.items if i.outcome == "accepted"]
        shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        log.note(f"- **{name}**: accepted {len(ids)} stale partition(s) without rerunning: {shown}", "accept")
        log.close()
    return report


def _accept_one(planner: Planner, state: PartitionState, run_id: str) -> Acceptance:
    """Accept one partition if it is stale, its inputs are complete and its outputs pass."""
    pid = state.partition.id
    if state.status is Status.COMPLETE:
        return Acceptance(pid, "up to date", "complete")
    if state.status is not Status.STALE or state.manifest is None:
        return Acceptance(pid, "not accepted", f"{state.reason} (only stale partitions can be accepted)")
    if state.waiting_on or state.fingerprint is None:
        return Acceptance(pid, "not accepted", f"{state.reason}; accept or run its inputs first")
    ws = planner.ws
    lock = PartitionLock(ws.root, state.partition.stage, pid)
    if not lock.try_acquire():
        return Acceptance(pid, "not accepted", "held by another orch run; try again when it ends")
    try:
        return _rewrite(planner, state, run_id)
    finally:
        lock.release()


def _rewrite(planner: Planner, seen: PartitionState, run_id: str) -> Acceptance:
    """Re-assess under the lock, check the outputs in full, write prompt and manifest."""
    ws = planner.ws
    partition = seen.partition
    agent = planner.agent_for(ws.project.stage(partition.stage))
    state = planner.assess(partition, agent, planner.child_manifests(partition), holding_lock=True)
    if state.status is Status.COMPLETE:
        return Acceptance(partition.id, "up to date", "complete")
    if state.status is not Status.STALE or state.manifest is None or state.fingerprint is None:
        return Acceptance(partition.id, "not accepted", state.reason)
    out_dir = ws.root / partition.out_dir
    stage = ws.project.stage(partition.stage)
    findings = check_outputs(out_dir, stage.expect, ws.schemas, None)
    if findings:
        return Acceptance(partition.id, "not accepted", f"outputs fail their checks: {findings[0]}")
    old = state.manifest
    record = {
        "at": round(time.time(), 3),
        "run_id": run_id,
        "from_fingerprint": old.fingerprint,
        "reason": state.reason,
    }
    manifest = replace(
        old,
        fingerprint=state.fingerprint.value,
        parts=state.fingerprint.parts(),
        accepted=[*old.accepted, record],
    )
    write_atomic(Path(out_dir, META_DIR, PROMPT), state.prompt or "")
    write_atomic(Path(out_dir, META_DIR, MANIFEST), manifest.to_json())
    return Acceptance(partition.id, "accepted", state.reason)
