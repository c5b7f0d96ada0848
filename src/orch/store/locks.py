"""Partition locks (an exclusive file lock plus a name lock) and a probe that takes no lock."""

from __future__ import annotations

import os
from pathlib import Path

import filelock

from orch.store.layout import lock_path
from orch.store.namelock import NameLock, lock_key

#: filelock's default poll (50 ms) gave 50–300 ms waits under contention (STYLE.md).
LOCK_POLL_S = 0.001


class PartitionLock:
    """An exclusive, per-partition lock: flock on a lock file, plus a name lock.

    The flock (via filelock) excludes every orch version; the kernel drops it
    when the holder dies, even by kill -9, so a dead run never blocks the next
    one and no `--unlock` step exists. The name lock (`orch.store.namelock`, an
    abstract unix socket on Linux) keeps excluding other runs when someone
    deletes the lock file or `wip/` meanwhile; `verify` notices that.
    """

    def __init__(self, root: Path, stage: str, partition: str) -> None:
        self._path = lock_path(root, stage, partition)
        self._name = NameLock(lock_key(str(root), stage, partition))
        self._inode: tuple[int, int] | None = None
        self._lock = self._file_lock()

    def _file_lock(self) -> filelock.FileLock:
        # thread_local=False: orch may take it in its file-system worker thread and
        # release it on the event loop's thread
        return filelock.FileLock(
            str(self._path), is_singleton=False, preserve_lock_file=True, thread_local=False
        )

    def try_acquire(self, timeout_s: float = 0.0) -> bool:
        """Acquire within `timeout_s` seconds (0: don't wait); False if held elsewhere."""
        if not self._name.try_acquire():
            return False
        if self._acquire_file(timeout_s):
            return True
        self._name.release()
        return False

    def _acquire_file(self, timeout_s: float) -> bool:
        for _ in range(2):
            try:
                self._lock.acquire(timeout=timeout_s, poll_interval=LOCK_POLL_S)
                st = os.stat(self._path)
                self._inode = (st.st_dev, st.st_ino)
                return True
            except filelock.Timeout:
                return False
            except FileNotFoundError:  # first lock of this stage: make wip/locks/<stage>/
                self._path.parent.mkdir(parents=True, exist_ok=True)
        return False

    @property
    def is_held(self) -> bool:
        """True while this object holds the lock."""
        return bool(self._lock.is_locked)

    def verify(self) -> str:
        """Check the held lock file is still in place; put a new one in place if not.

        Returns:
            "ok"; "restored" (the file was deleted or replaced: a new one is
            locked now, and the name lock excluded other runs meanwhile); or
            "lost" (another process locked the new file: do not promote).
        """
        try:
            st = os.stat(self._path)
            if (st.st_dev, st.st_ino) == self._inode:
                return "ok"
        except OSError:
            pass
        if self._lock.is_locked:
            self._lock.release(force=True)
        self._lock = self._file_lock()
        return "restored" if self._acquire_file(0.0) else "lost"

    def release(self) -> None:
        """Release the lock if held."""
        if self._lock.is_locked:
            self._lock.release(force=True)
        self._name.release()
        self._inode = None


def is_locked(root: Path, stage: str, partition: str) -> bool:
    """Return True if a live process holds the partition's lock (file or name lock).

    Takes no lock on Linux (reads /proc/locks and /proc/net/unix,
    `orch.store.lockprobe`), so a viewer polling status never makes a run's lock
    attempt fail; elsewhere it try-locks briefly, as before.
    """
    path = lock_path(root, stage, partition)
    name = NameLock(lock_key(str(root), stage, partition))
    if not path.exists():
        bound = name.is_bound()
        return name.is_held_elsewhere() if bound is None else bound
    from orch.store.lockprobe import is_held_in_proc_locks

    held = is_held_in_proc_locks(path)
    if held is not None:
        return held
    lock = PartitionLock(root, stage, partition)
    if lock.try_acquire():
        lock.release()
        return False
    return True
