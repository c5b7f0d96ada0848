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
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import filelock
import orjson

from orch.expect import META_DIR, Finding, open_regular
from orch.namelock import NameLock, lock_key
from orch.redact import Redactor, json_safe

MANIFEST_VERSION = 1
MANIFEST = "manifest.json"
PROMPT = "prompt.md"
AGENT_LOG = "agent.log"
ERROR = "error.json"
#: A staging directory's name: `.<partition dir>.attempt-<n>`.
STAGING_NAME = re.compile(r"^\.(?P<pid>.+)\.attempt-(?P<n>\d+)$")
#: Output trees deeper than this, or with longer relative paths, are refused as a
#: finding: deeper paths overflow PATH_MAX (4096) and break path-based tools.
MAX_OUTPUT_DEPTH = 64
MAX_OUTPUT_PATH_BYTES = 1024
#: orch's own files in `.orch/`: an agent that replaces one fails its attempt.
META_FILES = (PROMPT, AGENT_LOG, MANIFEST, ERROR)
#: filelock's default poll (50 ms) gave 50–300 ms waits under contention (STYLE.md).
LOCK_POLL_S = 0.001


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One promoted output file: path relative to the partition, size, mtime, hash."""

    path: str
    bytes: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True, slots=True)
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
        accepted: Each `orch accept` that re-recorded the fingerprint without a
            run: `{at, run_id, from_fingerprint, reason}` (absent if none).
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
    accepted: list[dict[str, Any]] = field(default_factory=list)

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
        data["outputs"] = [{f.name: getattr(o, f.name) for f in fields(o)} for o in self.outputs]
        data["duration_s"] = self.duration_s
        if not self.accepted:  # manifests never accepted keep their layout
            del data["accepted"]
        option = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
        try:
            return orjson.dumps(data, option=option).decode() + "\n"
        except orjson.JSONEncodeError:  # an agent's number past 64 bits must not stop promotion
            return orjson.dumps(json_safe(data), option=option).decode() + "\n"


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
        _share_strings(data)
        return Manifest(**data)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, orjson.JSONDecodeError):
        return None


def _share_strings(data: dict[str, Any]) -> None:
    """Intern the strings most manifests of a stage repeat (agent, run and stage-wide hashes).

    A status of 100k partitions keeps every manifest: one shared copy instead
    of ~10 per manifest saves ~1 KB each. Values are unchanged.
    """
    for key in ("stage", "run_id"):
        if isinstance(data.get(key), str):
            data[key] = sys.intern(data[key])
    for mapping in (data.get("agent"), data.get("parts"), *(data.get("attempts") or ())):
        if isinstance(mapping, dict):
            for key, value in mapping.items():
                if isinstance(value, str) and key not in ("prompt", "row"):
                    mapping[key] = sys.intern(value)
    keys = data.get("parts", {}).get("agent_keys") if isinstance(data.get("parts"), dict) else None
    if isinstance(keys, dict):
        for key, value in keys.items():
            if isinstance(value, str):
                keys[key] = sys.intern(value)


def read_prompt(directory: Path | str) -> str | None:
    """Return the prompt that produced a partition (`.orch/prompt.md`), or None if unreadable."""
    try:
        return _read_bytes(f"{directory}/{META_DIR}/{PROMPT}").decode("utf-8")
    except (OSError, UnicodeDecodeError):
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


def hash_file(path: Path | str, dir_fd: int | None = None) -> str:
    """Return the hex sha256 of a regular file's bytes, read in 1 MiB chunks.

    Never follows a symlink nor opens a FIFO or device (see `open_regular`).

    Raises:
        OSError: unreadable, or not a regular file.
    """
    digest = hashlib.sha256()
    fd = open_regular(path, dir_fd=dir_fd, follow=False)
    try:
        while block := os.read(fd, 1 << 20):
            digest.update(block)
    finally:
        os.close(fd)
    return digest.hexdigest()


def collect_outputs(directory: Path) -> list[OutputFile]:
    """Return every regular file under `directory` outside `.orch/`, sorted by path.

    Symlinks are not outputs (the expect rules reject those leaving the partition).

    Raises:
        OSError: `directory` holds something `scan_outputs` refuses.
    """
    findings, outputs = scan_outputs(directory, hashes=True)
    if findings:
        raise OSError(errno.EINVAL, f"unsafe output: {findings[0]}", str(directory))
    return outputs


def scan_outputs(directory: Path, hashes: bool = True) -> tuple[list[Finding], list[OutputFile]]:
    """Walk an attempt's outputs by directory fds, refusing what orch cannot safely keep.

    Findings (rule `name`, `special`, `depth`, `exists`): names that are not
    UTF-8 (a manifest must be valid JSON), FIFOs, sockets and devices, trees
    deeper than MAX_OUTPUT_DEPTH or paths longer than MAX_OUTPUT_PATH_BYTES,
    and entries that cannot be read. Symlinks are skipped (the expect rules
    judge them); `.orch/` directories at any depth are not outputs. Nothing is
    followed or opened but directories and regular files.

    Args:
        directory: A staging or partition directory.
        hashes: Hash every output (sha256); False leaves `sha256` empty.

    Returns:
        The findings, and the outputs (sorted by path) when there are none.
    """
    findings: list[Finding] = []
    outputs: list[OutputFile] = []
    try:
        top = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        return [Finding(".", "exists", f"cannot open the directory: {err.strerror}")], []
    pending: list[tuple[int, str, int]] = [(top, "", 0)]
    try:
        while pending and len(findings) < 20:
            fd, prefix, depth = pending.pop()
            try:
                _scan_dir(fd, prefix, depth, pending, findings, outputs, hashes)
            finally:
                os.close(fd)
    finally:
        for fd, _, _ in pending:
            os.close(fd)
    if findings:
        return sorted(findings, key=lambda f: f.file), []
    return [], sorted(outputs, key=lambda o: o.path)


def hash_outputs(directory: Path, outputs: list[OutputFile]) -> list[OutputFile]:
    """Return `outputs` (from `scan_outputs(directory, hashes=False)`) with their sha256.

    Raises:
        OSError: an output is gone, or is no longer a regular file.
    """
    return [OutputFile(o.path, o.bytes, o.mtime_ns, hash_file(f"{directory}/{o.path}")) for o in outputs]


def _scan_dir(
    fd: int,
    prefix: str,
    depth: int,
    pending: list[tuple[int, str, int]],
    findings: list[Finding],
    outputs: list[OutputFile],
    hashes: bool,
) -> None:
    """Scan one directory (open as `fd`, at relative path `prefix`) for `scan_outputs`."""
    with os.scandir(fd) as entries:
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            shown = _printable(rel)
            if shown != rel:
                findings.append(Finding(shown, "name", "file name is not valid UTF-8; rename it"))
                continue
            if len(rel.encode()) > MAX_OUTPUT_PATH_BYTES:
                findings.append(Finding(shown[:200] + "...", "depth", "path longer than 1024 bytes"))
                return
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as err:
                findings.append(Finding(shown, "exists", f"cannot stat: {err.strerror}"))
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            if stat.S_ISDIR(st.st_mode):
                if entry.name == META_DIR:
                    continue
                if depth + 1 >= MAX_OUTPUT_DEPTH:
                    findings.append(
                        Finding(shown, "depth", f"directories nested deeper than {MAX_OUTPUT_DEPTH} levels")
                    )
                    return
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                try:
                    pending.append((os.open(entry.name, flags, dir_fd=fd), rel + "/", depth + 1))
                except OSError as err:
                    findings.append(Finding(shown, "exists", f"cannot open directory: {err.strerror}"))
            elif stat.S_ISREG(st.st_mode):
                try:
                    digest = hash_file(entry.name, dir_fd=fd) if hashes else ""
                except OSError as err:
                    findings.append(Finding(shown, "exists", f"cannot read: {err.strerror}"))
                    continue
                outputs.append(OutputFile(rel, st.st_size, st.st_mtime_ns, digest))
            else:
                findings.append(
                    Finding(shown, "special", "not a regular file (FIFO, socket or device); remove it")
                )


def _printable(name: str) -> str:
    """`name` itself if valid UTF-8, else with its undecodable bytes shown as \\xNN."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def check_staging(staging: Path) -> list[Finding]:
    """Check that orch can still write its metadata into `staging` without following links.

    The agent may have removed its working directory, or replaced `.orch` or
    one of orch's files in it by a symlink, FIFO or directory. Each is a
    finding (rule `staging` or `meta`); orch then writes nothing through it.
    """
    try:
        st = os.lstat(staging)
    except FileNotFoundError:
        return [Finding(".", "staging", "the staging directory was removed during the attempt")]
    if not stat.S_ISDIR(st.st_mode):
        return [Finding(".", "staging", "the staging directory was replaced by a symlink or file")]
    meta = f"{staging}/{META_DIR}"
    try:
        st = os.lstat(meta)
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(st.st_mode):
        return [
            Finding(META_DIR, "meta", f"{META_DIR} was replaced by a symlink or file; orch wrote nothing")
        ]
    findings = []
    with os.scandir(meta) as entries:  # d_type from the directory listing: no stat per file
        for entry in entries:
            if entry.name in META_FILES and not entry.is_file(follow_symlinks=False):
                detail = "replaced by a symlink or special file; orch wrote nothing"
                findings.append(Finding(f"{META_DIR}/{entry.name}", "meta", detail))
    return sorted(findings, key=lambda f: f.file)


class UnsafeMetadata(OSError):
    """`.orch` in a staging directory is not a directory orch can write into safely."""


def write_meta(directory: Path, name: str, data: bytes, reclaim: bool = False) -> None:
    """Write `directory/.orch/name` atomically, never through a link an agent made.

    Opens `directory` and `.orch` with O_NOFOLLOW, writes a temp file created
    with O_EXCL beside the target and renames it over `name`, so a symlink or
    hard link planted by the agent is replaced, never written through.
    Creates `.orch/` if missing.

    Args:
        directory: A staging or archived attempt directory.
        name: File name inside `.orch/`.
        data: The bytes to write.
        reclaim: If `.orch` is a symlink or file, move it aside to
            `.orch.agent-<ns>` and make a fresh `.orch/` (archives); otherwise
            raise UnsafeMetadata.

    Raises:
        UnsafeMetadata: `directory` or `.orch` is a symlink or not a directory.
        OSError: the write failed (e.g. ENOSPC); the message names the path.
    """
    target = f"{directory}/{META_DIR}/{name}"
    try:
        top = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeMetadata(
                err.errno, "not a directory orch made (a symlink or file)", str(directory)
            ) from err
        raise OSError(err.errno, err.strerror, target) from err
    try:
        meta = _open_meta_dir(top, directory, reclaim)
        try:
            _replace_file(meta, name, data)
        except OSError as err:
            raise OSError(err.errno, err.strerror, target) from err
        finally:
            os.close(meta)
    finally:
        os.close(top)


def _open_meta_dir(top: int, directory: Path, reclaim: bool) -> int:
    """Open (creating if missing) `.orch` inside the directory open as `top`."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(2):
        try:
            return os.open(META_DIR, flags, dir_fd=top)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(META_DIR, dir_fd=top)
        except OSError as err:
            if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise OSError(err.errno, err.strerror, f"{directory}/{META_DIR}") from err
            if not reclaim:
                raise UnsafeMetadata(
                    err.errno,
                    "replaced by a symlink or file; orch writes nothing through it",
                    f"{directory}/{META_DIR}",
                ) from err
            os.rename(META_DIR, f"{META_DIR}.agent-{time.time_ns()}", src_dir_fd=top, dst_dir_fd=top)
            os.mkdir(META_DIR, dir_fd=top)
    return os.open(META_DIR, flags, dir_fd=top)


def _replace_file(dir_fd: int, name: str, data: bytes) -> None:
    tmp = f".{name}.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)  # a leftover, or a link planted by the agent
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd
    )
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.close(fd)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def touch_meta(directory: Path, name: str) -> None:
    """Create `directory/.orch/name` empty if missing, never through a link (see `write_meta`).

    Raises:
        UnsafeMetadata: `directory` or `.orch` is a symlink or not a directory.
        OSError: the file could not be created.
    """
    with contextlib.suppress(OSError):  # the common case: the backend made it
        if stat.S_ISREG(os.lstat(f"{directory}/{META_DIR}/{name}").st_mode) and not os.path.islink(
            f"{directory}/{META_DIR}"
        ):
            return
    top = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        meta = _open_meta_dir(top, directory, reclaim=False)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(name, flags, 0o644, dir_fd=meta))
        except FileExistsError:
            return
        finally:
            os.close(meta)
    finally:
        os.close(top)


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
    `orch.lockprobe`), so a viewer polling status never makes a run's lock
    attempt fail; elsewhere it try-locks briefly, as before.
    """
    path = lock_path(root, stage, partition)
    name = NameLock(lock_key(str(root), stage, partition))
    if not path.exists():
        bound = name.is_bound()
        return name.is_held_elsewhere() if bound is None else bound
    from orch.lockprobe import is_held_in_proc_locks

    held = is_held_in_proc_locks(path)
    if held is not None:
        return held
    lock = PartitionLock(root, stage, partition)
    if lock.try_acquire():
        lock.release()
        return False
    return True
