"""The dashboard's latest snapshot, shared by every request and refreshed off the request path.

A snapshot of 10,000 partitions costs about a second (the planner's stat of
every output); pages must be served in well under that. So a snapshot is
reused while nothing it depends on is known to have changed, and refreshed
in the background once it is older than `REFRESH_AFTER_S`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

from orch.config.workspace import Workspace
from orch.observe.events import latest_run
from orch.observe.snapshot import Snapshot, take_snapshot

# A reused snapshot older than this is refreshed in the background (seconds):
# it bounds how long a change that leaves no event (a deleted output) stays unseen.
REFRESH_AFTER_S = 2.0


class SnapshotCache:
    """Holds the newest snapshot of the newest run; one computation at a time.

    Reused as is while the workspace object (reloaded on config and blueprint
    edits), the newest run and the size of its events.jsonl are unchanged;
    otherwise the next request waits for a fresh one. Writes nothing.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.snapshot: Snapshot | None = None
        self.key: tuple[object, ...] | None = None
        self.taken_at = 0.0
        self.lock = asyncio.Lock()
        self.refreshing: asyncio.Task[Snapshot] | None = None

    async def get(self, workspace: Workspace) -> Snapshot:
        """Return a snapshot no older than the last event and edit seen on disk."""
        key = await asyncio.to_thread(_key, workspace)
        if self.snapshot is not None and key == self.key:
            if self.clock() - self.taken_at > REFRESH_AFTER_S and self.refreshing is None:
                self.refreshing = asyncio.create_task(self._take(workspace, key))
                self.refreshing.add_done_callback(self._refreshed)
            return self.snapshot
        return await self._take(workspace, key)

    def _refreshed(self, task: asyncio.Task[Snapshot]) -> None:
        self.refreshing = None
        if not task.cancelled():
            task.exception()  # retrieved: a failed refresh leaves the previous snapshot

    async def _take(self, workspace: Workspace, key: tuple[object, ...]) -> Snapshot:
        async with self.lock:
            if self.snapshot is not None and self.key == key and self.clock() - self.taken_at < 0.05:
                return self.snapshot  # another request just took it
            started = self.clock()
            snapshot = await asyncio.to_thread(take_snapshot, workspace)
            self.snapshot, self.key, self.taken_at = snapshot, key, started
            return snapshot


def _key(workspace: Workspace) -> tuple[object, ...]:
    run = latest_run(workspace.root)
    if run is None:
        return (id(workspace), None, 0, _mtime_ns(workspace.root / "data"))
    try:
        size = os.stat(run.events_path).st_size
    except OSError:
        size = -1
    return (id(workspace), run.run_id, size, run.alive)


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
