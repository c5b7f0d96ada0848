"""Lock probing (orch.store.lockprobe, orch.store.state.is_locked): it sees held locks and never takes one."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from orch.store import lockprobe
from orch.store.state import PartitionLock, is_locked, lock_path

needs_proc_locks = pytest.mark.skipif(not lockprobe.PROC_LOCKS.exists(), reason="no /proc/locks here")


@needs_proc_locks
def test_a_held_lock_is_seen_in_proc_locks(tmp_path: Path):
    holder = PartitionLock(tmp_path, "research", "p1")
    assert holder.try_acquire()
    try:
        assert lockprobe.is_held_in_proc_locks(lock_path(tmp_path, "research", "p1")) is True
        assert is_locked(tmp_path, "research", "p1")
    finally:
        holder.release()
    assert lockprobe.is_held_in_proc_locks(lock_path(tmp_path, "research", "p1")) is False
    assert not is_locked(tmp_path, "research", "p1")


def test_a_missing_lock_file_is_free(tmp_path: Path):
    assert lockprobe.is_held_in_proc_locks(tmp_path / "none.lock") is False
    assert not is_locked(tmp_path, "research", "p1")


@needs_proc_locks
def test_probing_never_makes_a_concurrent_try_acquire_fail(tmp_path: Path):
    first = PartitionLock(tmp_path, "research", "p1")
    assert first.try_acquire()  # creates the lock file
    first.release()
    failures: list[int] = []
    done = threading.Event()

    def take_in_a_loop() -> None:
        lock = PartitionLock(tmp_path, "research", "p1")
        attempt = 0
        while not done.is_set():
            attempt += 1
            if lock.try_acquire():
                lock.release()
            else:
                failures.append(attempt)

    worker = threading.Thread(target=take_in_a_loop)
    worker.start()
    try:
        for _ in range(1000):
            is_locked(tmp_path, "research", "p1")
    finally:
        done.set()
        worker.join(timeout=30)
    assert failures == []


def test_without_proc_locks_the_probe_falls_back_to_a_try_lock(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(lockprobe, "PROC_LOCKS", tmp_path / "no-proc-locks")
    holder = PartitionLock(tmp_path, "research", "p1")
    assert holder.try_acquire()
    try:
        assert lockprobe.is_held_in_proc_locks(lock_path(tmp_path, "research", "p1")) is None
        assert is_locked(tmp_path, "research", "p1")
    finally:
        holder.release()
    assert not is_locked(tmp_path, "research", "p1")
