"""Stat signatures and the status caches under `wip/cache/status/`.

Two JSON files let `orch status` and `orch plan` skip work whose inputs have
not changed, the way git's index skips re-hashing files whose stat is unchanged:

    wip/cache/status/checked.json   the inputs of the last load-time check that passed
    wip/cache/status/index.json     each partition's last judged state, with the
                                    stat signatures it was judged from

Both are caches: deleting them (or `wip/`) loses nothing, any read error is a
miss, and every entry is checked against the disk before it is trusted.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any

import orjson

from orch.store.layout import CACHE_DIR

#: Bumped whenever what the caches hold changes meaning; older files are misses.
CACHE_FORMAT = 1

#: The cache files are orch's own and small (~200 B a partition); anything
#: bigger than this is not one of ours and is ignored.
MAX_CACHE_BYTES = 512 * 1024 * 1024

CHECKED = "checked.json"
INDEX = "index.json"


def file_sig(path: str) -> list[int] | None:
    """Return `[size, mtime_ns, inode, ctime_ns]` of `path` (not following a
    symlink), or None if it cannot be stat'ed.

    Any write, rename over, `touch` or `chmod` changes it.
    """
    try:
        st = os.lstat(path)
    except (OSError, ValueError):  # ValueError: a NUL byte in a configured path
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def dir_sig(path: str) -> list[int] | None:
    """Return `[inode, mode]` of a directory on an output path (a symlink shows in
    `mode`), or None. Entries added inside do not change it."""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return None
    return [st.st_ino, st.st_mode]


def tree_sigs(root: Path, rel: str, limit: int = 10_000) -> dict[str, list[int] | None] | None:
    """Return `file_sig` of every file and directory under `root/rel`, by relative path.

    None if the tree holds more than `limit` entries (too big to track: no cache).
    """
    sigs: dict[str, list[int] | None] = {rel: file_sig(str(root / rel))}
    for dirpath, dirnames, filenames in os.walk(root / rel):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            sigs[os.path.relpath(path, root)] = file_sig(path)
            if len(sigs) > limit:
                return None
    return sigs


def sigs_match(root: Path, recorded: Any) -> bool:
    """True if every `rel -> sig` in `recorded` still matches the disk (`file_sig`,
    or `dir_sig` for entries whose rel ends in `/`)."""
    if not isinstance(recorded, dict):
        return False
    for rel, sig in recorded.items():
        path = str(root / rel)
        if (dir_sig(path) if rel.endswith("/") else file_sig(path)) != sig:
            return False
    return True


def cache_path(root: Path, name: str) -> Path:
    """Return `wip/cache/status/<name>`."""
    return root / CACHE_DIR / "status" / name


def read_cache(root: Path, name: str) -> dict[str, Any] | None:
    """Return a status cache file's content, or None if absent, unreadable, not
    ours or of another format (all misses)."""
    path = cache_path(root, name)
    with contextlib.suppress(OSError, ValueError, orjson.JSONDecodeError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_CACHE_BYTES:
                return None
            data = orjson.loads(handle.read(st.st_size))
        if isinstance(data, dict) and data.get("format") == CACHE_FORMAT:
            return data
    return None


def write_cache(root: Path, name: str, data: dict[str, Any]) -> None:
    """Write a status cache file atomically (temp file, rename); failures are
    ignored: a cache that cannot be written is only a miss next time."""
    path = cache_path(root, name)
    with contextlib.suppress(OSError, TypeError, orjson.JSONEncodeError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.tmp-{os.getpid()}")
        tmp.write_bytes(orjson.dumps({**data, "format": CACHE_FORMAT}))
        os.replace(tmp, path)
