"""A partition's staging directories during a run: when to lock, create, archive and clean up.

Blocking file work runs in the run's one FIFO file-system thread
(`RunContext.fs`) or `asyncio.to_thread`, never on the event loop. The file
work itself (names, creating, checking, archiving) belongs to `orch.store.staging`.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from orch.config.partitions import Partition
from orch.engine.context import RunContext
from orch.engine.lifecycle import ErrorClass
from orch.engine.plan import PartitionState
from orch.executors.processes import kill_orphans
from orch.store.faults import describe, error_class_of, traceback_of
from orch.store.layout import never_started
from orch.store.locks import PartitionLock
from orch.store.staging import (
    archive_attempt,
    archive_leftovers,
    discard_staging,
    existing_staging,
    make_staging,
)


async def acquire_lock(lock: PartitionLock, wait_s: float, fs: Executor) -> bool:
    """Take `lock` in the file-system thread `fs` (the first take creates the lock
    file), polling for up to `wait_s` seconds without blocking the event loop (so
    Ctrl-C and other partitions' timeouts still work while waiting)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + wait_s
    delay = 0.005
    while not await loop.run_in_executor(fs, lock.try_acquire):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.25)
    return True


async def new_staging(ctx: RunContext, partition: Partition, state: PartitionState, number: int) -> Path:
    """Create attempt `number`'s staging directory with its prompt (in the FIFO file-system thread)."""
    out_dir = ctx.ws.root / partition.out_dir
    known_parent = out_dir.parent in ctx.parents
    staging = await asyncio.get_running_loop().run_in_executor(
        ctx.fs, make_staging, out_dir, number, state.prompt or "", not known_parent
    )
    ctx.parents.add(out_dir.parent)
    return staging


async def archive_failed(
    ctx: RunContext, partition: Partition, staging: Path, record: dict[str, Any]
) -> Path | None:
    """Archive a failed attempt; if even that fails (full or read-only disk), say so
    in the events and leave the staging directory to the next run's clean-up."""
    try:
        return await asyncio.to_thread(
            archive_attempt, ctx.ws.root, partition.stage, partition.id, staging, record, ctx.redactor
        )
    except Exception as err:
        ctx.note_disk_fault(err)
        ctx.log.emit(
            "archive_failed",
            stage=partition.stage,
            partition=partition.id,
            attempt=record.get("n"),
            error=describe(err),
            error_class=error_class_of(err),
        )
        return None


def archive_all(ctx: RunContext, partition: Partition, err: Exception) -> None:
    """Archive this run's staging directories of `partition` after `err`, with its traceback."""
    record = {
        "outcome": "failed",
        "error_class": error_class_of(err),
        "error": f"internal error: {describe(err)}",
        "traceback": traceback_of(err),
    }
    out_dir = ctx.ws.root / partition.out_dir
    archive_leftovers(ctx.ws.root, partition.stage, partition.id, out_dir, record, ctx.redactor)


def clean_if_dead(ctx: RunContext, partition: Partition) -> None:
    """Archive a dead run's staging dirs of a partition this run does not redo."""
    lock = PartitionLock(ctx.ws.root, partition.stage, partition.id)
    if lock.try_acquire():
        try:
            clean_dead_staging(ctx, partition)
        finally:
            lock.release()


def clean_dead_staging(ctx: RunContext, partition: Partition) -> set[int]:
    """Archive staging directories left by a dead run (we hold the lock).

    One that was only prepared (no agent ever ran in it) is removed instead:
    it was no attempt. Returns the attempt numbers removed that way.
    """
    out_dir = ctx.ws.root / partition.out_dir
    removed = set()
    for number, path in existing_staging(out_dir, ctx.planner.staging_numbers(partition)):
        if never_started(path):
            discard_staging(path)
            removed.add(number)
            ctx.log.emit(
                "cleaned", stage=partition.stage, partition=partition.id, attempt=number, started=False
            )
            continue
        killed = kill_orphans(path)
        if killed:
            ctx.log.emit(
                "orphans_killed", stage=partition.stage, partition=partition.id, attempt=number, pids=killed
            )
        archive_attempt(
            ctx.ws.root,
            partition.stage,
            partition.id,
            path,
            {
                "n": number,
                "outcome": "interrupted",
                "error_class": ErrorClass.INTERRUPTED.value,
                "error": f"staging directory left by a run that died (cleaned by run {ctx.run_id})",
            },
        )
        ctx.log.emit("cleaned", stage=partition.stage, partition=partition.id, attempt=number)
    return removed
