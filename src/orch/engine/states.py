"""A partition's status and what is true of it on disk: the records the planner returns.

`orch.engine.plan` decides them; `orch.engine.index_read` rebuilds them from
the status index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from orch.config.partitions import Partition
from orch.config.workspace import ChildKey, Fingerprint
from orch.store.checks import Finding
from orch.store.manifest import Manifest

#: The offline rehearsal agent's backend name.
REHEARSAL = "rehearsal"


class ManifestFacts(NamedTuple):
    """What `orch status STAGE` and the snapshot show of a partition's manifest.

    Attributes:
        attempt: The attempt that made the outputs in place.
        usage: Its usage record (`input_tokens`, `output_tokens`, `cost_usd`, ...).
        duration_s: Seconds from that attempt's start to promotion.
        worker: The Dask worker that ran the last attempt, or None.
    """

    attempt: int
    usage: dict[str, Any]
    duration_s: float
    worker: str | None


class Status(Enum):
    """A partition's status (DESIGN.md §5)."""

    MISSING = "missing"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    INCOMPLETE = "incomplete"
    MODIFIED = "modified"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class PartitionState:
    """What is true of one partition on disk now, and why.

    Attributes:
        partition: The partition.
        status: Its status.
        reason: One line: "missing", "failed: timeout after 20m (attempt #3)",
            "stale: prompt changed (blueprint agents/02.deep_researcher.md)", ...
        manifest: Its manifest if the directory holds a valid one.
        fingerprint: The current fingerprint; None while inputs are not complete.
        prompt_source: The current rendered prompt, or a function that renders
            it again (so 100k states of `orch status` keep no prompt text);
            None while inputs are not complete. Read it as `prompt`.
        findings: Expect-rule failures of the promoted outputs (incomplete), or
            outputs that no longer match the manifest (modified).
        last_error: The latest failed attempt's error record, if any.
        waiting_on: Upstream partitions that are not complete.
        kept: Why a run leaves these outputs alone although the chosen agent
            would redo them (real outputs are never replaced by the rehearsal
            agent without --force); None otherwise.
    """

    partition: Partition
    status: Status
    reason: str
    manifest: Manifest | None = None
    fingerprint: Fingerprint | None = None
    prompt_source: str | Callable[[], str] | None = field(default=None, repr=False, compare=False)
    findings: tuple[Finding, ...] = ()
    last_error: dict[str, Any] | None = None
    waiting_on: tuple[ChildKey, ...] = field(default=())
    kept: str | None = None

    @property
    def prompt(self) -> str | None:
        """The current rendered prompt; None while inputs are not complete."""
        source = self.prompt_source
        return source() if callable(source) else source

    def manifest_facts(self) -> ManifestFacts | None:
        """What the per-partition views show of the manifest; None without one."""
        manifest = self.manifest
        if manifest is None:
            return None
        worker = manifest.attempts[-1].get("worker") if manifest.attempts else None
        return ManifestFacts(manifest.attempt, manifest.usage, manifest.duration_s, worker)

    def key(self) -> tuple[str, str]:
        """`(stage, partition id)`."""
        return self.stage, self.id

    @property
    def id(self) -> str:
        """The partition id (cheap: views read these instead of building `partition`)."""
        return self.partition.id

    @property
    def stage(self) -> str:
        """The stage name."""
        return self.partition.stage

    @property
    def out_dir(self) -> str:
        """The partition's output directory, project-relative."""
        return self.partition.out_dir

    @property
    def source(self) -> str:
        """Where the partition came from, e.g. `references/framework.yaml:120`."""
        return self.partition.source

    @property
    def fingerprint_value(self) -> str | None:
        """The current fingerprint's value; None while inputs are not complete."""
        return self.fingerprint.value if self.fingerprint is not None else None

    def success_usage(self) -> tuple[str, tuple[str, dict[str, Any]] | None]:
        """Return `(partition id, (agent name, usage) of the attempt that made
        the outputs in place, or None without outputs)`; see `success_usage`."""
        return self.partition.id, success_usage(self.manifest) if self.manifest is not None else None

    @property
    def is_complete(self) -> bool:
        """True when the partition is complete and up to date."""
        return self.status is Status.COMPLETE

    @property
    def is_held(self) -> bool:
        """True while another orch process holds it: its agent runs, or it is queued
        (locked and prepared ahead of its slot)."""
        return self.status in (Status.RUNNING, Status.QUEUED)


def success_usage(manifest: Manifest) -> tuple[str, dict[str, Any]]:
    """Return `(agent name, usage)` of a manifest's successful attempt (the
    attempt's own usage, else the manifest's)."""
    usage = next((a.get("usage") for a in manifest.attempts if a.get("n") == manifest.attempt), None)
    return str(manifest.agent.get("name", "?")), usage if isinstance(usage, dict) else manifest.usage
