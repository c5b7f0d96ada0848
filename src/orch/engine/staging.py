"""A partition's staging directories during a run: lock, create, check, archive, clean up.

Blocking file work runs in the run's one FIFO file-system thread
(`RunContext.fs`) or `asyncio.to_thread`, never on the event loop. The
layout itself (names, archive format) belongs to `orch.store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from orch.config.partitions import Partition
from orch.config.project import ExpectRule
from orch.engine.context import RunContext
from orch.engine.lifecycle import ErrorClass
from orch.engine.plan import PartitionState
from orch.executors.processes import kill_orphans
from orch.store.checks import META_DIR, Finding, SchemaStore, check_outputs
from orch.store.faults import describe, error_class_of, traceback_of
from orch.store.layout import AGENT_LOG, PROMPT, find_staging_dirs, never_started, staging_dir
from orch.store.locks import PartitionLock
from orch.store.manifest import OutputFile, check_staging, hash_outputs, scan_outputs, touch_meta
from orch.store.staging import archive_attempt


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
    if out_dir.parent not in ctx.parents:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        ctx.parents.add(out_dir.parent)
    return await asyncio.get_running_loop().run_in_executor(
        ctx.fs, make_staging, out_dir, number, state.prompt or ""
    )


def make_staging(out_dir: Path, number: int, prompt: str) -> Path:
    """Create `.<name>.attempt-<n>/.orch/prompt.md`, taking the next free n if a dead
    run left one."""
    while True:
        staging = staging_dir(out_dir, number)
        try:
            staging.mkdir()
        except FileExistsError:
            number += 1
            continue
        try:
            (staging / META_DIR).mkdir()
            (staging / META_DIR / PROMPT).write_text(prompt, encoding="utf-8")
        except BaseException as err:  # e.g. ENOSPC: leave no half-made staging directory
            discard_staging(staging)
            if isinstance(err, OSError) and not err.filename:
                raise OSError(err.errno, err.strerror, str(staging / META_DIR / PROMPT)) from err
            raise
        return staging


def discard_staging(staging: Path) -> None:
    """Remove a prepared staging directory no attempt ran in (it holds only the prompt)."""
    shutil.rmtree(staging, ignore_errors=True)


def inspect_outputs(
    staging: Path, expect: tuple[ExpectRule, ...], schemas: SchemaStore
) -> tuple[list[Finding], list[OutputFile]]:
    """Check a finished attempt's outputs; if they pass, list them for the manifest.

    Blocking (reads every output), so the scheduler runs it in a worker thread,
    one hop for both. First refuses what the agent may have left that orch
    cannot safely keep (see `orch.store.manifest.check_staging` and `scan_outputs`).
    Creates an empty `.orch/agent.log` for a silent agent: every partition
    has its log.
    """
    findings = check_staging(staging)
    if findings:
        return findings, []
    findings, outputs = scan_outputs(staging, hashes=False)
    if findings:
        return findings, []
    findings = check_outputs(staging, expect, schemas)
    if findings:
        return findings, []
    touch_meta(staging, AGENT_LOG)
    return [], hash_outputs(staging, outputs)


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
    out_dir = ctx.ws.root / partition.out_dir
    for number, path in find_staging_dirs(out_dir):
        record = {
            "n": number,
            "outcome": "failed",
            "error_class": error_class_of(err),
            "error": f"internal error: {describe(err)}",
            "traceback": traceback_of(err),
        }
        with contextlib.suppress(Exception):  # e.g. a full disk: the next run cleans it up
            archive_attempt(ctx.ws.root, partition.stage, partition.id, path, record, ctx.redactor)


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
    for number in ctx.planner.staging_numbers(partition):
        path = staging_dir(out_dir, number)
        if not path.exists():
            continue
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
