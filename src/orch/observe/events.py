"""Typed run events, and the reader that follows `wip/runs/<run-id>/events.jsonl` from a byte offset.

The log is written by `orch.store.runlog.RunLog`: one JSON object per line, flushed
as it happens. This module only reads it, in binary, and never trusts it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

import orjson

# Bytes read per step: a follow step never holds more than this plus one line.
READ_CHUNK_BYTES = 1 << 20
# A line longer than this is skipped as corrupt (RunLog's largest, `barrier`
# with 20 missing entries, is a few KiB).
MAX_LINE_BYTES = 16 << 20
# How much of a log's start and end `list_runs` reads to find run_started/run_finished.
PROBE_BYTES = 64 << 10


class EventName(StrEnum):
    """Every event name `orch.engine.runtime` writes; the values are the strings on disk."""

    RUN_STARTED = "run_started"
    STARTED = "started"
    RETRIED = "retried"
    FAILED = "failed"
    PROMOTED = "promoted"
    SKIPPED = "skipped"
    BLOCKED = "blocked"
    CLEANED = "cleaned"
    ARCHIVE_FAILED = "archive_failed"
    ORPHANS_KILLED = "orphans_killed"
    HALTED = "halted"
    INTERRUPT_REQUESTED = "interrupt_requested"
    INTERRUPTED = "interrupted"
    STAGE_FINISHED = "stage_finished"
    BARRIER = "barrier"
    RUN_FINISHED = "run_finished"
    ACCEPTED = "accepted"
    LOCK_FILE_LOST = "lock_file_lost"
    WORKER_JOINED = "worker_joined"
    WORKER_REFUSED = "worker_refused"
    WORKER_LEFT = "worker_left"


_NAMES = {e.value: e for e in EventName}


@dataclass(frozen=True)
class Event:
    """One line of events.jsonl.

    Attributes:
        ts: Unix time the event was written (seconds); 0.0 if the line had none.
        name: The event's name; a plain `str` for a name this orch does not know
            (a newer writer), never an error.
        run_id: The run that wrote it.
        stage: Stage name, for events about a stage or partition.
        partition: Partition id, for events about a partition.
        attempt: Attempt number, for events about an attempt.
        offset: Byte offset of the END of the line (just past its newline):
            where the next event starts. Resuming an `EventReader` at this
            offset yields exactly the events after this one, so it serves as
            the server-sent-event id.
        fields: The whole JSON object as written (`ts` and `event` included).
    """

    ts: float
    name: EventName | str
    run_id: str | None
    stage: str | None
    partition: str | None
    attempt: int | None
    offset: int
    fields: dict[str, Any] = field(hash=False, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any], offset: int = 0) -> Event:
        """Build an event from one JSON line or an already parsed object.

        Args:
            data: The line (bytes or str; invalid UTF-8 is replaced) or the object.
            offset: The byte offset of the end of its line.

        Raises:
            ValueError: `data` is not valid JSON or not a JSON object.
        """
        obj = _parse_line(data) if isinstance(data, bytes | str) else dict(data)
        if not isinstance(obj, dict):
            raise ValueError("an event must be a JSON object")
        # inline type checks: this runs once per line of a log that may hold 100k lines
        get = obj.get
        name, ts, run_id = get("event"), get("ts"), get("run_id")
        stage, partition, attempt = get("stage"), get("partition"), get("attempt")
        name = name if type(name) is str else ""
        return cls(
            ts=ts if type(ts) is float and math.isfinite(ts) else _float(ts),
            name=_NAMES.get(name, name),
            run_id=run_id if type(run_id) is str else None,
            stage=stage if type(stage) is str else None,
            partition=partition if type(partition) is str else None,
            attempt=attempt if type(attempt) is int else None,
            offset=offset,
            fields=obj,
        )

    def get(self, key: str, default: Any = None) -> Any:
        """Return one field of the JSON object (e.g. `reason`, `usage`), or `default`."""
        return self.fields.get(key, default)


def _parse_line(line: bytes | str) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        if isinstance(line, str) or _is_utf8(line):
            raise
    # orjson refuses invalid UTF-8 anywhere; a bad byte inside a string must not lose the event
    try:
        return json.loads(line.decode("utf-8", errors="replace"))
    except RecursionError as err:
        raise ValueError("JSON nested too deep") from err


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _float(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range
            return 0.0
        return number if math.isfinite(number) else 0.0
    return 0.0


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class EventReader:
    """Reads the complete lines of an events.jsonl file after a byte offset.

    A torn last line (no newline yet: the writer is mid-write or was killed)
    is not consumed; the next `read` sees it whole. A corrupt complete line
    is skipped and counted in `skipped`. A missing file reads as empty.

    Args:
        path: The events.jsonl file.
        offset: Byte offset to start at: 0, or an `Event.offset` seen before.
    """

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = Path(path)
        self.offset = max(0, int(offset))
        self.skipped = 0

    def read(self, max_bytes: int | None = None) -> list[Event]:
        """Return the events of the complete lines after `offset`, and advance past them.

        Args:
            max_bytes: Stop after about this many bytes (whole lines; at least
                one line if one is complete); None reads to the end.
        """
        events: list[Event] = []
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, NotADirectoryError):
            return events
        with handle:
            start = self.offset
            while max_bytes is None or self.offset - start < max_bytes:
                step = self._step(handle)
                if step is None:
                    break
                events.extend(step)
        return events

    def follow(
        self,
        poll_s: float = 0.1,
        stop: Callable[[], bool] | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[Event]:
        """Yield events as they are written, until `run_finished`.

        Each step reads at most `READ_CHUNK_BYTES` (plus one long line); when
        caught up it sleeps `poll_s`. To quit early, stop iterating.

        Args:
            poll_s: Seconds between looks at the file once caught up.
            stop: Called after each step; once true (e.g. the run's process
                died without `run_finished`), the events already complete on
                disk are yielded and the follower ends.
            timeout_s: End when no new event arrived for this many seconds;
                None waits as long as `stop` allows.
        """
        idle_since = time.monotonic()
        while True:
            events = self.read(max_bytes=READ_CHUNK_BYTES)
            for event in events:
                yield event
                if event.name is EventName.RUN_FINISHED:
                    return
            now = time.monotonic()
            if events:
                idle_since = now
                continue
            if stop is not None and stop():
                yield from self._drain()
                return
            if timeout_s is not None and now - idle_since >= timeout_s:
                return
            wait_s = poll_s if timeout_s is None else min(poll_s, timeout_s - (now - idle_since))
            time.sleep(max(0.0, wait_s))

    def _drain(self) -> Iterator[Event]:
        while events := self.read(max_bytes=READ_CHUNK_BYTES):
            for event in events:
                yield event
                if event.name is EventName.RUN_FINISHED:
                    return

    def _step(self, handle: BinaryIO) -> list[Event] | None:
        """Parse the complete lines of the next chunk; None when no line is complete."""
        handle.seek(self.offset)
        data = handle.read(READ_CHUNK_BYTES)
        end = data.rfind(b"\n")
        if end < 0:
            return None if len(data) < READ_CHUNK_BYTES else self._long_line(handle, data)
        events = self._parse(data[: end + 1], self.offset)
        self.offset += end + 1
        return events

    def _long_line(self, handle: BinaryIO, head: bytes) -> list[Event] | None:
        """Read one line longer than a chunk; skip it (counted) beyond `MAX_LINE_BYTES`."""
        parts, size = [head], len(head)
        while True:
            data = handle.read(READ_CHUNK_BYTES)
            newline = data.find(b"\n")
            if newline < 0 and len(data) < READ_CHUNK_BYTES:
                return None  # torn: the writer has not finished it
            size += newline + 1 if newline >= 0 else len(data)
            if size <= MAX_LINE_BYTES:
                parts.append(data if newline < 0 else data[: newline + 1])
            if newline >= 0:
                break
        start, self.offset = self.offset, self.offset + size
        if size > MAX_LINE_BYTES:
            self.skipped += 1
            return []
        return self._parse(b"".join(parts), start)

    def _parse(self, data: bytes, base: int) -> list[Event]:
        events = []
        position = base
        for line in data.split(b"\n")[:-1]:
            position += len(line) + 1
            if not line.strip():
                continue
            try:
                events.append(Event.from_json(line, position))
            except ValueError:
                self.skipped += 1
        return events


@dataclass(frozen=True)
class RunInfo:
    """One run under `wip/runs/`, as its event log tells.

    Attributes:
        run_id: The run's id (its directory name).
        events_path: Its events.jsonl.
        started_at: Unix time of its `run_started` event; None if unreadable.
        finished: True if the log ends with `run_finished`.
        pid: The orchestrator's process id (from `run_started`, else the run id).
        alive: The orchestrator still runs: not finished, and `pid` is a live
            process that started no later than the run (a kill -9'd run whose
            pid was reused is not alive).
        stages: The stages it runs, from `run_started`.
        partitions: How many partitions it has in scope, from `run_started`.
    """

    run_id: str
    events_path: Path
    started_at: float | None
    finished: bool
    pid: int | None
    alive: bool
    stages: tuple[str, ...] = ()
    partitions: int | None = None


def list_runs(root: Path) -> list[RunInfo]:
    """Return the runs of a project, oldest first.

    Reads at most `PROBE_BYTES` of the start and of the end of each
    `wip/runs/<run-id>/events.jsonl`, so a long log costs no more than a short one.
    """
    runs = []
    try:
        entries = list(os.scandir(Path(root) / "wip" / "runs"))
    except OSError:
        return []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            runs.append(read_run(Path(entry.path)))
    return sorted(runs, key=lambda r: (r.run_id.split("-", 1)[0], r.started_at or 0.0, r.run_id))


def latest_run(root: Path) -> RunInfo | None:
    """Return the newest run of a project, or None if it never ran."""
    runs = list_runs(root)
    return runs[-1] if runs else None


def read_run(run_dir: Path) -> RunInfo:
    """Return what the event log of one run directory says about the run."""
    path = run_dir / "events.jsonl"
    head, tail = _probe(path)
    first = _first_event(head)
    started = first if first is not None and first.name is EventName.RUN_STARTED else None
    finished = any(e.name is EventName.RUN_FINISHED for e in _events(tail))
    pid = _int(started.get("pid")) if started else None
    if pid is None:
        suffix = run_dir.name.rsplit("-", 1)[-1]
        pid = int(suffix) if suffix.isdigit() else None
    started_at = started.ts if started else None
    stages = started.get("stages") if started else None
    return RunInfo(
        run_id=run_dir.name,
        events_path=path,
        started_at=started_at,
        finished=finished,
        pid=pid,
        alive=not finished and pid is not None and is_process_alive(pid, started_at),
        stages=tuple(s for s in stages if isinstance(s, str)) if isinstance(stages, list) else (),
        partitions=_int(started.get("partitions")) if started else None,
    )


def _probe(path: Path) -> tuple[bytes, bytes]:
    try:
        with open(path, "rb") as handle:
            head = handle.read(PROBE_BYTES)
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - PROBE_BYTES))
            return head, handle.read(PROBE_BYTES)
    except OSError:
        return b"", b""


def _first_event(head: bytes) -> Event | None:
    line, newline, _ = head.partition(b"\n")
    try:
        return Event.from_json(line) if newline else None
    except ValueError:
        return None


def _events(tail: bytes) -> list[Event]:
    found = []
    for line in tail.split(b"\n"):
        try:
            found.append(Event.from_json(line))
        except ValueError:
            continue
    return found


def is_process_alive(pid: int, started_before: float | None = None) -> bool:
    """Return True if process `pid` exists (and, if known, started by `started_before`).

    Args:
        pid: Process id.
        started_before: Unix time the process must have started by; a process
            with the same pid started later is another process (pid reuse).
            Checked on Linux through /proc; elsewhere only existence counts.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    if _is_zombie(pid):  # killed, not yet reaped by its parent: it runs nothing any more
        return False
    if started_before is None:
        return True
    process_started = _process_started_at(pid)
    # /proc/stat's boot time has 1 s resolution: allow 2 s of slack
    return process_started is None or process_started <= started_before + 2.0


def _is_zombie(pid: int) -> bool:
    """True if /proc says `pid` has exited and waits to be reaped (state Z or X)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in (b"Z", b"X")


def _process_started_at(pid: int) -> float | None:
    """Unix time process `pid` started, from /proc (None where unavailable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        with open("/proc/stat", "rb") as handle:
            boot = next(line for line in handle if line.startswith(b"btime "))
        ticks = int(stat.rpartition(b")")[2].split()[19])
        return int(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
