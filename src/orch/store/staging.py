"""Staging directories on disk: creating and checking them, promotion (one group commit
for many partitions), archiving attempts."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import shutil
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orch.config.stages import ExpectRule
from orch.redact import Redactor, json_safe
from orch.store.checks import META_DIR, Finding, SchemaStore, check_outputs, open_regular
from orch.store.layout import (
    AGENT_LOG,
    ERROR,
    MANIFEST,
    PROMPT,
    STAGING_NAME,
    attempts_dir,
    find_staging_dirs,
    staging_dir,
)
from orch.store.manifest import (
    Manifest,
    OutputFile,
    check_staging,
    hash_outputs,
    next_attempt,
    read_manifest,
    scan_outputs,
    touch_meta,
    write_meta,
)


def _fsync_tree(directory: Path) -> None:
    for base, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(base, name)
            try:
                fd = open_regular(path, follow=False)
            except OSError:  # a symlink or special file: nothing of ours to flush
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(base))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move(source: Path, dest: Path) -> None:
    """Rename `source` to `dest` (creating parents), copying across filesystems."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, dest)
    except OSError as err:
        if err.errno != 18:  # EXDEV: wip/ on another filesystem than data/
            raise
        shutil.move(str(source), str(dest))


def promote(root: Path, staging: Path, out_dir: Path, manifest: Manifest) -> None:
    """Make `staging` the partition directory `out_dir`, atomically (see `promote_many`).

    Raises:
        OSError: the promotion failed; the staging directory is left as it was.
    """
    error = promote_many(root, [(staging, out_dir, manifest)])[0]
    if error is not None:
        raise error


def promote_many(root: Path, items: list[tuple[Path, Path, Manifest]]) -> list[Exception | None]:
    """Promote several staging directories with one flush to disk (group commit).

    For each `(staging, out_dir, manifest)`: write the manifest into the staging
    directory; then make every file durable at once (syncfs of the project's
    filesystem, or an fsync per file where syncfs is missing); then move any
    previous `out_dir` to `wip/attempts/<stage>/<id>/<n>/` (kept, never deleted),
    rename the staging directory to `out_dir`, and fsync each parent directory
    once. Data is on disk before any directory that shows it exists; a crash
    between two renames leaves a partition missing, never half-promoted.

    Returns:
        One entry per item: None, or the exception that stopped that item (an
        OSError, UnsafeMetadata, or e.g. a manifest that cannot be serialized);
        one item's failure never stops the others.
    """
    errors: list[Exception | None] = [None] * len(items)
    for index, (staging, _, manifest) in enumerate(items):
        try:
            write_meta(staging, MANIFEST, manifest.to_json().encode())
        except Exception as err:  # reported per item, never raised
            errors[index] = err
    # one syncfs per filesystem the staging dirs live on (data/ may be a symlink
    # to another disk than the project root)
    devices: dict[int, Path] = {}
    for index, (staging, _, _) in enumerate(items):
        if errors[index] is None:
            with contextlib.suppress(OSError):
                devices.setdefault(os.stat(staging).st_dev, staging)
    synced = {dev for dev, where in devices.items() if _syncfs(where)}
    for index, (staging, _, _) in enumerate(items):
        if errors[index] is None and _device(staging) not in synced:
            try:
                _fsync_tree(staging)
            except OSError as err:
                errors[index] = err
    parents = set()
    for index, (staging, out_dir, manifest) in enumerate(items):
        if errors[index] is not None:
            continue
        try:
            if os.path.lexists(out_dir):
                old = read_manifest(out_dir)
                number = old.attempt if old else next_attempt(root, manifest.stage, out_dir, None)
                dest = attempts_dir(root, manifest.stage, manifest.partition) / str(number)
                if dest.exists():
                    dest = dest.with_name(f"{number}-replaced-{int(time.time())}")
                move(out_dir, dest)
            os.rename(staging, out_dir)
            parents.add(out_dir.parent)
        except OSError as err:
            errors[index] = err
    for parent in parents:
        with contextlib.suppress(OSError):  # renamed already; only durability is at stake
            _fsync_dir(parent)
    return errors


def _device(path: Path) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


@functools.cache
def _libc_syncfs() -> Any:
    """libc's syncfs, looked up once: each `ctypes.CDLL` makes a class, a reference
    cycle that stays in memory until a full collection (one per group commit)."""
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


def _syncfs(root: Path) -> bool:
    """Flush every dirty page of `root`'s filesystem (Linux syncfs(2)); False if unavailable.

    One syncfs replaces an fsync per file and directory when many partitions are
    promoted together (measured: ~1.2 ms per partition of fsyncs on this disk).
    """
    syncfs = _libc_syncfs()
    if syncfs is None:
        return False
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return bool(syncfs(fd) == 0)
    finally:
        os.close(fd)


def archive_attempt(
    root: Path,
    stage: str,
    partition: str,
    staging: Path,
    error: dict[str, Any],
    redactor: Redactor | None = None,
) -> Path:
    """Move a failed or interrupted staging directory to `wip/attempts/`.

    Writes `.orch/error.json` (`error`: the attempt record, secrets redacted by
    `redactor`, numbers made JSON-safe) so the archive
    says why: into the staging directory first, or, if that fails (full
    disk) or the agent removed it, into the archive. Never writes through a
    link the agent made: a replaced `.orch` is moved aside to
    `.orch.agent-<ns>`, a staging path replaced by a symlink or file is
    archived as `<archive>/staging-not-a-directory`.

    Returns:
        The archive path `wip/attempts/<stage>/<id>/<n>/`.

    Raises:
        OSError: the archive could not be written (e.g. ENOSPC, EROFS).
    """
    record = json_safe(redactor.record(error) if redactor else error)
    data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    match = STAGING_NAME.match(staging.name)
    number = match.group("n") if match else str(error.get("n", 0))
    dest = attempts_dir(root, stage, partition) / number
    if os.path.lexists(dest):
        dest = dest.with_name(f"{number}-{int(time.time() * 1000)}")
    written = False
    try:
        is_dir = stat.S_ISDIR(os.lstat(staging).st_mode)
    except FileNotFoundError:
        is_dir = None
    if is_dir:
        with contextlib.suppress(OSError):
            write_meta(staging, ERROR, data, reclaim=True)
            written = True
        move(staging, dest)
    else:
        dest.mkdir(parents=True)
        if is_dir is False:
            os.rename(staging, dest / "staging-not-a-directory")
    if not written:
        write_meta(dest, ERROR, data, reclaim=True)
    return dest


def make_staging(out_dir: Path, number: int, prompt: str, make_parent: bool = False) -> Path:
    """Create `.<name>.attempt-<n>/.orch/prompt.md`, taking the next free n if a dead
    run left one; with `make_parent`, create `out_dir`'s parent first.

    Returns:
        The staging directory.

    Raises:
        OSError: it could not be created (e.g. ENOSPC), with the path; nothing half-made is left.
    """
    if make_parent:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
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


def existing_staging(out_dir: Path, numbers: Iterable[int]) -> list[tuple[int, Path]]:
    """Return `(n, path)` of the staging directories of `out_dir` numbered `numbers` that exist."""
    found = []
    for number in numbers:
        path = staging_dir(out_dir, number)
        if path.exists():
            found.append((number, path))
    return found


def archive_leftovers(
    root: Path,
    stage: str,
    partition: str,
    out_dir: Path,
    error: dict[str, Any],
    redactor: Redactor | None = None,
) -> None:
    """Archive every staging directory of `out_dir`'s partition with the record `error` (plus its n).

    Best effort: a directory that cannot be archived (e.g. a full disk) stays
    for the next run's clean-up.
    """
    for number, path in find_staging_dirs(out_dir):
        with contextlib.suppress(Exception):
            archive_attempt(root, stage, partition, path, {"n": number, **error}, redactor)
