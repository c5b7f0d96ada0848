"""`orch clean`: prune `wip/attempts/` and `wip/runs/` by age or count.

Never touches `data/` (outputs and staging directories live there), the locks
in `wip/locks/`, `wip/notes.md`, a run that may still be live, or the
archived attempts of a partition another orch process holds right now.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orch.errors import UsageError
from orch.store.runlog import read_events
from orch.store.state import is_locked

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Removal:
    """One directory `orch clean` removes (or would remove, with --dry-run).

    Attributes:
        kind: "attempt" or "run".
        path: Relative to the project root.
        bytes: Total size of the files under it.
        age_s: Seconds since it last changed.
    """

    kind: str
    path: str
    bytes: int
    age_s: float


@dataclass
class CleanReport:
    """What `orch clean` removed or would remove, and what it left and why."""

    dry_run: bool
    removals: list[Removal] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        """Total bytes freed (or that would be freed)."""
        return sum(r.bytes for r in self.removals)

    def rows(self) -> list[list[str]]:
        """Table rows: kind, path, size, age."""
        return [[r.kind, r.path, format_bytes(r.bytes), format_age(r.age_s)] for r in self.removals]

    def headline(self) -> str:
        """One line: how many attempts and runs went (or would go), and the bytes freed."""
        attempts = sum(1 for r in self.removals if r.kind == "attempt")
        runs = len(self.removals) - attempts
        verb, freed = ("would remove", "would free") if self.dry_run else ("removed", "freed")
        return f"{verb} {attempts} attempt(s) and {runs} run(s); {freed} {format_bytes(self.bytes)}" + (
            " (dry run: nothing removed)" if self.dry_run else ""
        )

    def to_json(self) -> dict[str, Any]:
        """JSON form: dry_run, bytes, removed (kind, path, bytes, age_s), skipped."""
        return {
            "dry_run": self.dry_run,
            "bytes": self.bytes,
            "removed": [asdict(r) for r in self.removals],
            "skipped": self.skipped,
        }


def parse_age(text: str) -> float:
    """Return seconds from `30s`, `15m`, `12h`, `7d` or `2w`.

    Raises:
        UsageError: anything else.
    """
    match = _AGE.match(text)
    if not match:
        raise UsageError(
            f"--older-than: expected an age like 12h, 7d or 2w, got {text!r}",
            "units: s, m, h, d, w",
        )
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def clean(root: Path, older_than_s: float | None, keep: int | None, dry_run: bool) -> CleanReport:
    """Remove archived attempts and run records that are old enough and beyond `keep`.

    An item goes when it is older than `older_than_s` (if given) and is not
    among the `keep` newest (if given): the newest attempts of each partition
    by attempt number, the newest runs by run id. Attempts of a partition
    whose lock is held are left alone, as are runs without `run_finished`
    whose process is alive. Empty stage and partition directories are removed.

    Args:
        root: Project root.
        older_than_s: Minimum age in seconds (from the newest mtime inside).
        keep: How many newest attempts per partition, and runs, to keep.
        dry_run: List only; remove nothing.

    Raises:
        UsageError: neither `older_than_s` nor `keep` is given.
    """
    if older_than_s is None and keep is None:
        raise UsageError(
            "orch clean needs --older-than AGE, --keep N or both",
            "e.g. orch clean --older-than 7d --dry-run",
        )
    report = CleanReport(dry_run)
    now = time.time()
    attempts = root / "wip" / "attempts"
    for stage_dir in _subdirs(attempts):
        for part_dir in _subdirs(stage_dir):
            numbered = [(_number(d.name), d) for d in _subdirs(part_dir)]
            newest_first = [d for _, d in sorted(numbered, key=lambda t: t[0], reverse=True)]
            candidates = newest_first[keep:] if keep is not None else newest_first
            picked = [d for d in candidates if _old_enough(d, now, older_than_s)]
            if picked and is_locked(root, stage_dir.name, part_dir.name):
                report.skipped.append(f"{_rel(root, part_dir)}: partition held by a running orch")
                continue
            for directory in picked:
                report.removals.append(_removal("attempt", root, directory, now))
    runs = sorted(_subdirs(root / "wip" / "runs"), key=lambda d: d.name, reverse=True)
    for directory in runs[keep:] if keep is not None else runs:
        if not _old_enough(directory, now, older_than_s):
            continue
        if is_run_live(directory):
            report.skipped.append(f"{_rel(root, directory)}: run still live")
            continue
        report.removals.append(_removal("run", root, directory, now))
    if not dry_run:
        for removal in report.removals:
            shutil.rmtree(root / removal.path, ignore_errors=True)
        _remove_empty_dirs(attempts)
    return report


def is_run_live(run_dir: Path) -> bool:
    """Return True unless the run's events.jsonl shows it finished or its process is gone.

    The pid comes from the `run_started` event (or the run id's `-<pid>` tail).
    A run with no readable events log and a live pid counts as live.
    """
    events_path = run_dir / "events.jsonl"
    pid = None
    if events_path.exists():
        try:
            events = read_events(events_path)
        except OSError:
            events = []
        if any(e.get("event") == "run_finished" for e in events):
            return False
        pid = next((e.get("pid") for e in events if e.get("event") == "run_started"), None)
    if not isinstance(pid, int):
        tail = run_dir.name.rsplit("-", 1)[-1]
        pid = int(tail) if tail.isdigit() else None
    return pid is not None and _is_alive(pid)


def _is_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OverflowError:
        return False
    return True


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _number(name: str) -> tuple[int, str]:
    head = name.split("-", 1)[0]  # "<n>" or "<n>-<suffix>" (state.list_attempts)
    return (int(head) if head.isdigit() else -1, name)


def _walk(directory: Path) -> Iterator[os.stat_result]:
    for base, dirs, files in os.walk(directory):
        for name in dirs + files:
            try:
                yield os.lstat(os.path.join(base, name))
            except OSError:
                continue


def _old_enough(directory: Path, now: float, older_than_s: float | None) -> bool:
    if older_than_s is None:
        return True
    try:
        newest = directory.lstat().st_mtime
    except OSError:
        return False
    newest = max([newest, *(s.st_mtime for s in _walk(directory))])
    return now - newest > older_than_s


def _removal(kind: str, root: Path, directory: Path, now: float) -> Removal:
    stats = list(_walk(directory))
    newest = max([directory.lstat().st_mtime, *(s.st_mtime for s in stats)])
    size = sum(s.st_size for s in stats if not _is_dir(s))
    return Removal(kind, _rel(root, directory), size, round(now - newest, 1))


def _is_dir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode)


def _rel(root: Path, path: Path) -> str:
    return str(path.relative_to(root))


def _remove_empty_dirs(attempts: Path) -> None:
    for stage_dir in _subdirs(attempts):
        for part_dir in _subdirs(stage_dir):
            _rmdir_quiet(part_dir)
        _rmdir_quiet(stage_dir)


def _rmdir_quiet(path: Path) -> None:
    with contextlib.suppress(OSError):  # not empty, or gone
        path.rmdir()


def format_bytes(n: int) -> str:
    """Return `n` bytes as `512 B`, `12.3 KiB`, `4.0 MiB` or `1.2 GiB`."""
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def format_age(age_s: float) -> str:
    """Return an age as `45s`, `12m`, `5h` or `9d` (rounded down)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if age_s >= size:
            return f"{int(age_s // size)}{unit}"
    return f"{int(age_s)}s"
