"""What lands on disk: manifests, staging directories, atomic promotion, locks.

    data/.../<partition>/.orch/manifest.json   a promoted, complete partition
    data/.../.<partition>.attempt-<n>/         an attempt's staging directory
    wip/attempts/<stage>/<partition>/<n>/      failed, interrupted or replaced attempts
    wip/locks/<stage>/<partition>.lock         held while an orch process works on it

A partition directory exists only by an atomic rename of a staging directory
that already holds its manifest, so a kill -9 at any moment leaves complete
partitions and staging directories, never a half-promoted partition.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import filelock
import orjson

from orch.expect import META_DIR
from orch.namelock import NameLock, lock_key

MANIFEST_VERSION = 1
MANIFEST = "manifest.json"
PROMPT = "prompt.md"
AGENT_LOG = "agent.log"
ERROR = "error.json"
#: A staging directory's name: `.<partition dir>.attempt-<n>`.
STAGING_NAME = re.compile(r"^\.(?P<pid>.+)\.attempt-(?P<n>\d+)$")
#: filelock's default poll (50 ms) gave 50–300 ms waits under contention (STYLE.md).
LOCK_POLL_S = 0.001


@dataclass(frozen=True)
class OutputFile:
    """One promoted output file: path relative to the partition, size, mtime, hash."""

    path: str
    bytes: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """`.orch/manifest.json` of a complete partition.

    Attributes:
        stage: Stage name.
        partition: Partition id.
        fingerprint: `sha256:` hash of prompt, agent settings, expect rules and
            children's output fingerprints (see `orch.fingerprints`).
        parts: Hashes of each fingerprint input, plus the row and blueprint
            hashes that explain staleness.
        output_fingerprint: Hash of `fingerprint` and every output file's
            hash; what a fan-in parent records for this child.
        attempt: The attempt number that succeeded.
        attempts: Every attempt of the run that promoted it, oldest first:
            `{n, started_at, ended_at, duration_s, outcome, error, error_class}`.
        agent: `{name, backend}` of the agent that produced it.
        outputs: Every output file outside `.orch/`.
        usage: `{input_tokens, output_tokens, cost_usd, num_turns}` when known.
        run_id: The run that promoted it.
        started_at: Unix time the successful attempt started (seconds).
        finished_at: Unix time it was promoted (seconds).
    """

    stage: str
    partition: str
    fingerprint: str
    parts: dict[str, Any]
    output_fingerprint: str
    attempt: int
    attempts: list[dict[str, Any]]
    agent: dict[str, str]
    outputs: list[OutputFile]
    usage: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    status: str = "complete"
    version: int = MANIFEST_VERSION

    @property
    def duration_s(self) -> float:
        """Seconds from the successful attempt's start to promotion."""
        return round(self.finished_at - self.started_at, 3)

    def known_outputs(self) -> dict[str, tuple[int, int]]:
        """Return `path -> (bytes, mtime_ns)` for cheap re-checks."""
        return {o.path: (o.bytes, o.mtime_ns) for o in self.outputs}

    def to_json(self) -> str:
        """Serialize with sorted keys and 2-space indent (same manifest, same bytes)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["outputs"] = [vars(o) for o in self.outputs]
        data["duration_s"] = self.duration_s
        return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


def read_manifest(directory: Path | str) -> Manifest | None:
    """Return the manifest of `directory`, or None if absent or invalid.

    Invalid means unreadable, not JSON, a different version, or not
    `status: complete`: such a directory is never taken for complete.
    """
    try:
        data = orjson.loads(_read_bytes(f"{directory}/{META_DIR}/{MANIFEST}"))
        if data.get("version") != MANIFEST_VERSION or data.get("status") != "complete":
            return None
        data.pop("duration_s", None)
        data["outputs"] = [OutputFile(**o) for o in data["outputs"]]
        return Manifest(**data)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, orjson.JSONDecodeError):
        return None


def _read_bytes(path: str) -> bytes:
    """Read a small file with raw syscalls (half the cost of open() at 10k files)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 1 << 16)
        if len(data) < 1 << 16:  # a short read is the whole (regular) file
            return data
        chunks = [data]
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same directory, fsync, os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def staging_dir(out_dir: Path, attempt: int) -> Path:
    """Return `parent/.<name>.attempt-<n>` beside the final directory `out_dir`."""
    return out_dir.parent / f".{out_dir.name}.attempt-{attempt}"


def staging_number(staging: Path) -> int:
    """Return the attempt number n of a staging directory `.<name>.attempt-<n>`.

    Raises:
        ValueError: the name is not a staging directory's.
    """
    match = STAGING_NAME.match(staging.name)
    if match is None:
        raise ValueError(f"not a staging directory: {staging}")
    return int(match.group("n"))


def never_started(staging: Path) -> bool:
    """True if `staging` holds only `.orch/prompt.md`: prepared ahead, and no agent ran in it.

    An attempt that started has `.orch/agent.log`: the command backend opens it
    before it spawns the agent, the openai backend writes it as its first
    request goes out.
    """
    try:
        return os.listdir(staging) == [META_DIR] and os.listdir(staging / META_DIR) == [PROMPT]
    except OSError:
        return False


def attempts_dir(root: Path, stage: str, partition: str) -> Path:
    """Return `wip/attempts/<stage>/<partition>/`."""
    return root / "wip" / "attempts" / stage / partition


def find_staging_dirs(out_dir: Path) -> list[tuple[int, Path]]:
    """Return `(n, path)` of staging directories of `out_dir`'s partition, by n."""
    found = []
    prefix = f".{out_dir.name}.attempt-"
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(out_dir.parent):
            if entry.name.startswith(prefix) and entry.name[len(prefix) :].isdigit():
                found.append((int(entry.name[len(prefix) :]), Path(entry.path)))
    return sorted(found)


def list_attempts(root: Path, stage: str, partition: str) -> list[tuple[int, Path]]:
    """Return `(n, path)` of archived attempts of a partition, oldest first."""
    base = attempts_dir(root, stage, partition)
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    found = []
    for name in names:  # "<n>", or "<n>-<suffix>" when a number was archived twice
        head = name.split("-", 1)[0]
        if head.isdigit():
            found.append((int(head), name, base / name))
    return [(n, path) for n, _, path in sorted(found)]


def read_error(attempt_dir: Path) -> dict[str, Any] | None:
    """Return an archived attempt's `.orch/error.json`, or None (e.g. a replaced success)."""
    try:
        data = json.loads((attempt_dir / META_DIR / ERROR).read_bytes())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def next_attempt(root: Path, stage: str, out_dir: Path, manifest: Manifest | None) -> int:
    """Return the next attempt number: one past every attempt seen on disk."""
    seen = [manifest.attempt] if manifest else []
    seen += [n for n, _ in list_attempts(root, stage, out_dir.name)]
    seen += [n for n, _ in find_staging_dirs(out_dir)]
    return max(seen, default=0) + 1


def hash_file(path: Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def collect_outputs(directory: Path) -> list[OutputFile]:
    """Return every regular file under `directory` outside `.orch/`, sorted by path.

    Symlinks are not outputs (the expect rules reject those leaving the partition).
    """
    outputs = []
    pending = [str(directory)]
    while pending:
        base = pending.pop()
        with os.scandir(base) as entries:
            for entry in entries:
                if entry.is_symlink():
                    continue
                if entry.is_dir():
                    if entry.name != META_DIR:  # as the expect globs: .orch/ at any depth
                        pending.append(entry.path)
                elif entry.is_file():
                    st = entry.stat()
                    rel = os.path.relpath(entry.path, directory)
                    outputs.append(OutputFile(rel, st.st_size, st.st_mtime_ns, hash_file(Path(entry.path))))
    return sorted(outputs, key=lambda o: o.path)


def output_fingerprint(fingerprint: str, outputs: list[OutputFile]) -> str:
    """Hash a partition's fingerprint with its outputs' hashes."""
    digest = hashlib.sha256(fingerprint.encode())
    for output in outputs:
        digest.update(f"\0{output.path}\0{output.sha256}".encode())
    return "sha256:" + digest.hexdigest()


def _fsync_tree(directory: Path) -> None:
    for base, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(base, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
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


def promote_many(root: Path, items: list[tuple[Path, Path, Manifest]]) -> list[OSError | None]:
    """Promote several staging directories with one flush to disk (group commit).

    For each `(staging, out_dir, manifest)`: write the manifest into the staging
    directory; then make every file durable at once (syncfs of the project's
    filesystem, or an fsync per file where syncfs is missing); then move any
    previous `out_dir` to `wip/attempts/<stage>/<id>/<n>/` (kept, never deleted),
    rename the staging directory to `out_dir`, and fsync each parent directory
    once. Data is on disk before any directory that shows it exists; a crash
    between two renames leaves a partition missing, never half-promoted.

    Returns:
        One entry per item: None, or the OSError that stopped that item.
    """
    errors: list[OSError | None] = [None] * len(items)
    for index, (staging, _, manifest) in enumerate(items):
        try:
            if not (staging / META_DIR).is_dir():  # an agent may have deleted it
                (staging / META_DIR).mkdir()
            (staging / META_DIR / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        except OSError as err:
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
        _fsync_dir(parent)
    return errors


def _device(path: Path) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


def _syncfs(root: Path) -> bool:
    """Flush every dirty page of `root`'s filesystem (Linux syncfs(2)); False if unavailable.

    One syncfs replaces an fsync per file and directory when many partitions are
    promoted together (measured: ~1.2 ms per partition of fsyncs on this disk).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return bool(syncfs(fd) == 0)
    finally:
        os.close(fd)


def archive_attempt(root: Path, stage: str, partition: str, staging: Path, error: dict[str, Any]) -> Path:
    """Move a failed or interrupted staging directory to `wip/attempts/`.

    Writes `.orch/error.json` (`error`: the attempt record) first, so the
    archive says why. Returns the archive path `wip/attempts/<stage>/<id>/<n>/`.
    """
    (staging / META_DIR).mkdir(exist_ok=True)
    (staging / META_DIR / ERROR).write_text(json.dumps(error, indent=2, sort_keys=True) + "\n")
    match = STAGING_NAME.match(staging.name)
    number = match.group("n") if match else str(error.get("n", 0))
    dest = attempts_dir(root, stage, partition) / number
    if dest.exists():
        dest = dest.with_name(f"{number}-{int(time.time() * 1000)}")
    move(staging, dest)
    return dest


def lock_path(root: Path, stage: str, partition: str) -> Path:
    """Return `wip/locks/<stage>/<partition>.lock`."""
    return root / "wip" / "locks" / stage / f"{partition}.lock"


class PartitionLock:
    """An exclusive, per-partition lock: flock on a lock file, plus a name lock.

    The flock (via filelock) excludes every orch version; the kernel drops it
    when the holder dies, even by kill -9, so a dead run never blocks the next
    one and no `--unlock` step exists. The name lock (`orch.namelock`, an
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
    """Return True if a live process holds the partition's lock (file or name lock)."""
    if not lock_path(root, stage, partition).exists():
        return NameLock(lock_key(str(root), stage, partition)).is_held_elsewhere()
    lock = PartitionLock(root, stage, partition)
    if lock.try_acquire():
        lock.release()
        return False
    return True
