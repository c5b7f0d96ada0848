"""Manifests and partition metadata: read, write atomically and safely, scan and hash outputs,
check a staging directory."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from orch.redact import json_safe
from orch.store.checks import META_DIR, Finding, open_regular
from orch.store.layout import MANIFEST, META_FILES, PROMPT, find_staging_dirs, list_attempts

MANIFEST_VERSION = 1


#: Output trees deeper than this, or with longer relative paths, are refused as a
#: finding: deeper paths overflow PATH_MAX (4096) and break path-based tools.
MAX_OUTPUT_DEPTH = 64


MAX_OUTPUT_PATH_BYTES = 1024


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


def read_manifest(directory: Path | str, share: bool = True) -> Manifest | None:
    """Return the manifest of `directory`, or None if absent or invalid.

    Invalid means unreadable, not JSON, a different version, or not
    `status: complete`: such a directory is never taken for complete.
    `share`: intern the strings manifests repeat (for callers that keep many).
    """
    try:
        data = orjson.loads(_read_bytes(f"{directory}/{META_DIR}/{MANIFEST}"))
        if data.get("version") != MANIFEST_VERSION or data.get("status") != "complete":
            return None
        data.pop("duration_s", None)
        data["outputs"] = [OutputFile(**o) for o in data["outputs"]]
        if share:
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
