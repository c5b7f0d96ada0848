"""Decide each partition's status from disk, and explain it.

Pure apart from reading: project × partitions × what is on disk → a
`PartitionState` per partition (status, reason, fingerprint). `orch plan`,
`orch status`, `orch barrier` and the scheduler all decide from here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from orch.config.partitions import Partition
from orch.config.project import CONFIG_NAME, AgentConfig, Project, Stage
from orch.config.workspace import ChildKey, Fingerprint, Workspace
from orch.engine.index_read import Columns
from orch.engine.listings import DiskListings, Listing
from orch.engine.plan_index import StatusIndex
from orch.engine.stale import stale_reason
from orch.engine.states import REHEARSAL, PartitionState, Status
from orch.errors import StageBlocked, UsageError, did_you_mean
from orch.store.checks import Finding, check_outputs
from orch.store.integrity import find_modified
from orch.store.layout import never_started, read_error, staging_dir
from orch.store.locks import is_locked
from orch.store.manifest import Manifest, read_manifest, read_prompt

AGENT_ENV = "ORCH_AGENT"


def choose_agent_override(
    project: Project, flag: str | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """Return the run-wide agent override every command honours, or None.

    The one rule (README "Configure a real agent"): a stage runs with
    `--agent NAME` if given, else `$ORCH_AGENT` if set and not empty, else its
    own `agent:` in orch.yaml, else `agents.default`. This function decides the
    first two; `Planner.agent_for` applies the rest.

    Raises:
        UsageError: the name is not an agent of orch.yaml (with the nearest name).
    """
    source = ""
    name = flag
    if not name:
        name = ((os.environ if environ is None else environ).get(AGENT_ENV) or "").strip() or None
        source = f"{AGENT_ENV}: "
    if name is None:
        return None
    if name not in project.agents:
        raise UsageError(
            f"{source}unknown agent '{name}'{did_you_mean(name, project.agents)}",
            f"agents in {CONFIG_NAME}: {', '.join(project.agents)}",
        )
    return name


class Planner(DiskListings):
    """Assesses partitions of a workspace, memoizing per stage.

    Args:
        workspace: The loaded project.
        agent_override: Agent name replacing every stage's agent (`--agent`);
            None falls back to `$ORCH_AGENT` (see `choose_agent_override`).
        deep: Re-check output contents in full (barrier); otherwise trust
            promoted files whose size and mtime are unchanged.
        lines: Name the changed prompt lines of stale partitions (reads each
            one's `.orch/prompt.md`); off for counts-only views (`orch status`).
        index: Reuse and keep the status index (`orch.engine.plan_index`):
            for read-only views (status, plan, watch); states rebuilt from it
            carry slim partition and manifest records. Call `save_index` after.

    Raises:
        UsageError: the override names no agent of orch.yaml.
    """

    def __init__(
        self,
        workspace: Workspace,
        agent_override: str | None = None,
        deep: bool = False,
        lines: bool = True,
        index: bool = False,
    ) -> None:
        self.ws = workspace
        self.root = str(workspace.root)
        self.agent_override = choose_agent_override(workspace.project, agent_override)
        self.deep = deep
        self.lines = lines
        self._states: dict[str, dict[str, PartitionState]] = {}
        self._listings: dict[str, Listing] = {}
        self._attempted: dict[str, set[str]] = {}
        self.index = StatusIndex(workspace) if index and not deep else None

    def agent_for(self, stage: Stage) -> AgentConfig:
        """Return the agent a stage runs with: the override, the stage's, or the default."""
        return self.ws.project.agent(self.agent_override or stage.agent)

    def stage_states(self, name: str) -> list[PartitionState]:
        """Return the state of every partition of stage `name`, in start order."""
        if name not in self._states:
            stage = self.ws.project.stage(name)
            for upstream in stage.upstream:
                self.stage_states(upstream)
            agent = self.agent_for(stage)
            if self.index is None:
                self._states[name] = {
                    p.id: self.assess(p, agent, self.child_manifests(p))
                    for p in self.ws.partitions.for_stage(name)
                }
                return list(self._states[name].values())
            hashes = (self.ws.agent_digest(agent), self.ws.expect_digest(stage))
            columns = self.index.columns(stage, agent, hashes, self)
            if columns is None:
                judged: Iterable[PartitionState] = (
                    self.assess(p, agent, self.child_manifests(p)) for p in self.ws.partitions.for_stage(name)
                )
                self._states[name] = self.index.compact(stage, agent, hashes, judged, self)
            else:
                trusted = [columns.state(i) for i in range(len(columns))]
                if all(state is not None for state in trusted):
                    self._states[name] = {columns.ids[i]: s for i, s in enumerate(trusted)}  # type: ignore[misc]
                else:  # judge the rest again, recording each as it is judged (see compact)
                    again = self._judged_again(agent, columns, trusted)
                    self._states[name] = self.index.compact(stage, agent, hashes, again, self)
        return list(self._states[name].values())

    def _judged_again(
        self, agent: AgentConfig, columns: Columns, trusted: list[PartitionState | None]
    ) -> Iterator[PartitionState]:
        """Every state of a stage in order: the index's where the disk agrees; else
        judged from the recorded fingerprint (`Columns.rejudge`: a partition a run
        promoted since); else judged in full (`assess`)."""
        for i, state in enumerate(trusted):
            if state is None:
                state = columns.rejudge(i, agent)
            if state is None:
                partition = self.ws.partitions.get(columns.stage, columns.ids[i])
                state = self.assess(partition, agent, self.child_manifests(partition))
            trusted[i] = None  # judged states are dropped once recorded
            yield state

    def save_index(self) -> None:
        """Write the status index if this planner judged any stage afresh (see
        `orch.engine.plan_index`); a no-op without `index=True`."""
        if self.index is not None:
            self.index.save()

    def known_state(self, stage: str, partition_id: str) -> PartitionState | None:
        """Return a state already judged by this planner, or None."""
        return self._states.get(stage, {}).get(partition_id)

    def state(self, stage: str, partition_id: str) -> PartitionState:
        """Return one partition's state."""
        self.stage_states(stage)
        return self._states[stage][partition_id]

    def child_manifests(self, partition: Partition) -> dict[ChildKey, Manifest | None]:
        """Return the manifests of `partition`'s children that are complete now."""
        result: dict[ChildKey, Manifest | None] = {}
        for key in partition.children:
            child = self._states[key[0]][key[1]]
            result[key] = child.manifest if child.is_complete else None
        return result

    def assess(
        self,
        partition: Partition,
        agent: AgentConfig,
        manifests: Mapping[ChildKey, Manifest | None],
        holding_lock: bool = False,
    ) -> PartitionState:
        """Return the state of one partition given its children's manifests.

        Args:
            partition: The partition.
            agent: The agent it runs with (part of the fingerprint).
            manifests: Each child's manifest when complete, else None.
            holding_lock: The caller holds the partition lock: look at the
                disk afresh (no cached listing) and never report `running`.
        """
        stage = self.ws.project.stage(partition.stage)
        out_dir = f"{self.ws.root}/{partition.out_dir}"
        parent, _, name = out_dir.rpartition("/")
        if holding_lock:
            exists, staging = os.path.lexists(out_dir), False
        else:
            listing = self._listing(parent)
            exists, staging = name in listing.names, name in listing.staging
        if self.index is not None and not holding_lock:  # what the index may record: seen before judging
            self.index.saw(
                partition.stage,
                partition.id,
                out_dir,
                exists,
                self.has_archived(partition.stage, partition.id),
            )
        manifest = read_manifest(out_dir) if exists else None
        if self.index is not None and not holding_lock:
            self.index.read(partition.stage, partition.id, out_dir, exists)
        if staging and is_locked(self.ws.root, partition.stage, partition.id):
            newest = staging_dir(Path(out_dir), max(self.staging_numbers(partition)))
            if never_started(newest):  # prepared ahead of its slot (orch.engine.runtime)
                reason = "queued in another orch process (locked and prepared; its agent has not started)"
                return PartitionState(partition, Status.QUEUED, reason, manifest)
            return PartitionState(partition, Status.RUNNING, "running in another orch process", manifest)
        waiting = tuple(k for k in partition.children if manifests.get(k) is None)
        if waiting:
            names = ", ".join(f"{s}/{p}" for s, p in waiting[:3])
            more = f" and {len(waiting) - 3} more" if len(waiting) > 3 else ""
            if manifest:
                return PartitionState(
                    partition,
                    Status.STALE,
                    f"stale: input {names}{more} is not complete",
                    manifest,
                    waiting_on=waiting,
                )
            return PartitionState(
                partition, Status.MISSING, f"missing; waiting for {names}{more}", waiting_on=waiting
            )
        prompt = self.ws.render(partition, manifests)
        fingerprint = self.ws.fingerprint(partition, prompt, agent, manifests)
        # Under the lock the text is used at once; otherwise render again on demand
        # (~4 KB a partition that `orch status` of 100k partitions never reads).
        # (the closure holds the workspace, not the planner: a planner's states
        # must be freed by refcount, not left for the cyclic collector)
        render = self.ws.render
        source: str | Callable[[], str] = prompt if holding_lock else lambda: render(partition, manifests)
        if manifest is not None:
            return self._judge(partition, stage, agent, manifest, fingerprint, prompt, manifests, source)
        if exists:
            return PartitionState(
                partition,
                Status.INCOMPLETE,
                "incomplete: directory has no valid .orch/manifest.json",
                None,
                fingerprint,
                source,
                (Finding(".orch/manifest.json", "exists", "missing or invalid"),),
            )
        error = self.last_error(partition)
        if error is not None:
            return PartitionState(
                partition,
                Status.FAILED,
                f"failed: {error.get('error', 'unknown error')} (attempt #{error.get('n', '?')})",
                None,
                fingerprint,
                source,
                last_error=error,
            )
        return PartitionState(partition, Status.MISSING, "missing", None, fingerprint, source)

    def _judge(
        self,
        partition: Partition,
        stage: Stage,
        agent: AgentConfig,
        manifest: Manifest,
        fingerprint: Fingerprint,
        prompt: str,
        manifests: Mapping[ChildKey, Manifest | None],
        source: str | Callable[[], str] | None = None,
    ) -> PartitionState:
        """Judge promoted outputs: complete, stale, incomplete, failed since, or kept.

        Outputs a real agent made are judged against that agent's fingerprint
        when the rehearsal agent is chosen, and kept (never replaced) either way.
        """
        maker_name = str(manifest.agent.get("name", "?"))
        kept = None
        compare = fingerprint
        if agent.backend == REHEARSAL and manifest.agent.get("backend", REHEARSAL) != REHEARSAL:
            kept = (
                f"made by agent {maker_name}; the rehearsal agent {agent.name} does not replace "
                "real outputs (use --force)"
            )
            maker = self.ws.project.agents.get(maker_name)
            if maker is not None and maker.backend != REHEARSAL:
                compare = self.ws.fingerprint(partition, prompt, maker, manifests)
        findings: tuple[Finding, ...] = ()
        out_dir = f"{self.ws.root}/{partition.out_dir}"
        if manifest.fingerprint != compare.value:
            old_prompt = (
                read_prompt(out_dir)
                if self.lines and manifest.parts.get("prompt") != compare.prompt
                else None
            )
            reason = stale_reason(manifest, compare, partition, stage, old_prompt, prompt)
            status = Status.STALE
        else:
            found = check_outputs(
                out_dir,
                stage.expect,
                self.ws.schemas,
                None if self.deep else manifest.known_outputs(),
            )
            status, findings = (Status.INCOMPLETE, tuple(found)) if found else (Status.COMPLETE, ())
            reason = f"incomplete: {found[0]}" if found else "complete"
            changed = [] if found else find_modified(out_dir, manifest.outputs, self.deep)
            if changed:
                status, findings = Status.MODIFIED, tuple(changed)
                reason = f"modified: {changed[0].file}: {changed[0].detail}"
        failure = self._failed_since(partition, manifest)
        if failure is not None and status in (Status.COMPLETE, Status.STALE):
            status, findings = Status.FAILED, ()
            reason = (
                f"failed in attempt {failure.get('n', '?')} with agent {failure.get('agent')}: "
                f"{failure.get('error', 'unknown error')} (the outputs in place are attempt "
                f"{manifest.attempt}'s, by agent {maker_name})"
            )
        if kept is not None:
            reason = kept if status is Status.COMPLETE else f"{reason}; kept: {kept}"
        return PartitionState(
            partition,
            status,
            reason,
            manifest,
            fingerprint,
            source or prompt,
            findings,
            failure,
            kept=kept,
        )

    def _failed_since(self, partition: Partition, manifest: Manifest) -> dict[str, Any] | None:
        """The error of a newer attempt by another agent than the outputs' maker, if the latest failed.

        That is an override run (`--agent X`) that failed where other outputs
        stood: the partition shows as failed, not as the older outputs' status.
        """
        archived = self.archived(partition)
        if not archived or archived[-1][0] <= manifest.attempt:
            return None
        error = read_error(Path(archived[-1][1]))
        if not error or error.get("outcome") != "failed" or not error.get("agent"):
            return None
        return error if error["agent"] != manifest.agent.get("name") else None


def upstream_blockers(planner: Planner, stage: Stage, only: Iterable[str] | None = None) -> None:
    """Refuse to start `stage` while an upstream partition it reads is not complete.

    Raises:
        StageBlocked: naming the upstream partitions that hold it back.
    """
    wanted = set(only) if only else None
    blockers: list[str] = []
    for partition in planner.ws.partitions.for_stage(stage.name):
        if wanted is not None and partition.id not in wanted:
            continue
        for child_stage, child_id in partition.children:
            child = planner.state(child_stage, child_id)
            if not child.is_complete:
                blockers.append(f"{child_stage}/{child_id} ({child.reason})")
    if blockers:
        unique = sorted(set(blockers))
        shown = "\n  ".join(unique[:10]) + (
            f"\n  ... and {len(unique) - 10} more" if len(unique) > 10 else ""
        )
        raise StageBlocked(
            f"stage {stage.name} cannot start: the barrier of "
            f"{', '.join(stage.upstream)} is not met:\n  {shown}",
            f"run the upstream stage first (orch stage run {stage.upstream[0]}), "
            "or run the whole pipeline with: orch run",
        )
