"""Find and follow a partition's agent log (`orch logs`): the live attempt's, else the last one's.

Read-only: never takes a partition lock, never writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from orch.config.workspace import Workspace
from orch.errors import UsageError
from orch.observe.events import latest_run
from orch.store.checks import META_DIR
from orch.store.state import AGENT_LOG, find_staging_dirs, list_attempts, never_started, read_manifest

# Bytes read per look at a followed log.
READ_CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class AgentLog:
    """Where one attempt's agent log is.

    Attributes:
        path: The `.orch/agent.log` file (absolute).
        attempt: The attempt number.
        kind: `live` (staging directory of a running attempt), `promoted`
            (the partition's output directory) or `archived` (wip/attempts/).
        staging: The staging directory, for a live log.
    """

    path: Path
    attempt: int
    kind: str
    staging: Path | None = None

    @property
    def is_live(self) -> bool:
        """True if the attempt was running when the log was found."""
        return self.kind == "live"


def find_live_log(ws: Workspace, stage: str, partition_id: str) -> AgentLog | None:
    """Return the agent log of the partition's running attempt, or None.

    An attempt runs if its staging directory `.<partition>.attempt-<n>` holds
    `.orch/agent.log` (a prepared-ahead one holds only the prompt) and the
    newest run's orchestrator is alive (a kill -9'd run leaves its staging
    directory behind until the next run recovers it).
    """
    out_dir = ws.root / ws.partitions.get(stage, partition_id).out_dir
    staged = [(n, p) for n, p in find_staging_dirs(out_dir) if (p / META_DIR / AGENT_LOG).is_file()]
    staged = [(n, p) for n, p in staged if not never_started(p)]
    if not staged:
        return None
    run = latest_run(ws.root)
    if run is None or not run.alive:
        return None
    number, staging = staged[-1]
    return AgentLog(staging / META_DIR / AGENT_LOG, number, "live", staging)


def find_agent_log(ws: Workspace, stage: str, partition_id: str) -> AgentLog:
    """Return the log of the running attempt, else of the newest finished one.

    The newest finished one is the promoted partition's (`<out_dir>/.orch/agent.log`)
    or the newest archived attempt's (`wip/attempts/<stage>/<partition>/<n>/`),
    whichever attempt number is higher.

    Raises:
        UsageError: no such stage or partition, or it never ran.
    """
    stage = ws.project.stage(stage).name
    live = find_live_log(ws, stage, partition_id)
    if live is not None:
        return live
    out_dir = ws.root / ws.partitions.get(stage, partition_id).out_dir
    found: list[AgentLog] = []
    manifest = read_manifest(out_dir)
    if manifest is not None and (out_dir / META_DIR / AGENT_LOG).is_file():
        found.append(AgentLog(out_dir / META_DIR / AGENT_LOG, manifest.attempt, "promoted"))
    for number, path in list_attempts(ws.root, stage, partition_id):
        if (path / META_DIR / AGENT_LOG).is_file():
            found.append(AgentLog(path / META_DIR / AGENT_LOG, number, "archived"))
    if not found:
        raise UsageError(
            f"{stage}/{partition_id}: no agent log yet (no attempt has run)",
            f"run it with: orch stage run {stage} --only {partition_id}",
        )
    return max(found, key=lambda log: (log.attempt, log.kind == "promoted"))


def follow_log(
    log: AgentLog,
    is_running: Callable[[], bool],
    poll_s: float = 0.2,
    relocate: Callable[[], Path | None] | None = None,
) -> Iterator[bytes]:
    """Yield the log's bytes from the start, then new bytes as they are written.

    Ends once the attempt ended: its staging directory is gone (promoted or
    archived) or `is_running()` is false, after a last read. Each look reads
    at most `READ_CHUNK_BYTES`; when caught up it sleeps `poll_s`.

    Args:
        log: The log to follow (a live one; a finished one is read once).
        is_running: Called between looks; false once the owning run died.
        poll_s: Seconds between looks once caught up.
        relocate: Returns where the attempt's log went once its staging
            directory is gone (the promoted or archived copy), to read its end.
    """
    offset = 0
    while True:
        chunk = _read_from(log.path, offset)
        if chunk:
            offset += len(chunk)
            yield chunk
            continue
        if not log.is_live or log.staging is None or not log.staging.is_dir() or not is_running():
            # the staging dir may have moved (promoted, archived) since the last read:
            # the end of the log is then at its new place
            moved = relocate() if relocate is not None and not log.path.exists() else None
            while tail := _read_from(moved or log.path, offset):
                offset += len(tail)
                yield tail
            return
        time.sleep(poll_s)


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read(READ_CHUNK_BYTES)
    except OSError:  # promoted or archived between looks: the attempt ended
        return b""


def relocate_log(ws: Workspace, stage: str, partition_id: str, attempt: int) -> Callable[[], Path | None]:
    """Return a lookup of attempt `attempt`'s log after it was promoted or archived (None if neither)."""

    def find() -> Path | None:
        try:
            log = find_agent_log(ws, stage, partition_id)
        except UsageError:
            return None
        return log.path if log.attempt == attempt and not log.is_live else None

    return find


def run_is_alive(root: Path) -> Callable[[], bool]:
    """Return a check that the newest run's orchestrator still runs (looks once a second at most)."""
    last = {"at": 0.0, "alive": True}

    def check() -> bool:
        now = time.monotonic()
        if now - last["at"] >= 1.0:
            run = latest_run(root)
            last["at"], last["alive"] = now, run is not None and run.alive
        return bool(last["alive"])

    return check
