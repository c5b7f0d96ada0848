"""The disk layout: the one place that spells its names and paths.

    data/.../<partition>/.orch/manifest.json   a promoted, complete partition
    data/.../.<partition>.attempt-<n>/         an attempt's staging directory
    wip/attempts/<stage>/<partition>/<n>/      failed, interrupted or replaced attempts
    wip/locks/<stage>/<partition>.lock         held while an orch process works on it
    wip/cache/                                 parsed references, status caches (disposable)

A partition directory exists only by an atomic rename of a staging directory
that already holds its manifest, so a kill -9 at any moment leaves complete
partitions and staging directories, never a half-promoted partition.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

from orch.store.checks import META_DIR

MANIFEST = "manifest.json"


PROMPT = "prompt.md"


AGENT_LOG = "agent.log"


ERROR = "error.json"


#: orch's caches (parsed references, status index): deleting it loses nothing.
CACHE_DIR = "wip/cache"


#: A staging directory's name: `.<partition dir>.attempt-<n>`.
STAGING_NAME = re.compile(r"^\.(?P<pid>.+)\.attempt-(?P<n>\d+)$")


#: orch's own files in `.orch/`: an agent that replaces one fails its attempt.
META_FILES = (PROMPT, AGENT_LOG, MANIFEST, ERROR)


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


def stage_attempts_dir(root: Path, stage: str) -> Path:
    """Return `wip/attempts/<stage>/`."""
    return root / "wip" / "attempts" / stage


def attempts_dir(root: Path, stage: str, partition: str) -> Path:
    """Return `wip/attempts/<stage>/<partition>/`."""
    return stage_attempts_dir(root, stage) / partition


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


def lock_path(root: Path, stage: str, partition: str) -> Path:
    """Return `wip/locks/<stage>/<partition>.lock`."""
    return root / "wip" / "locks" / stage / f"{partition}.lock"
