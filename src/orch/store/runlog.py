"""A run's records: `wip/runs/<run-id>/events.jsonl` and `wip/notes.md`.

Every event is one JSON object per line, flushed as it happens, so a killed
run leaves a readable log. Failures also get a short human entry in notes.md.
Writing either is best effort: a full or read-only disk loses records (the
first error is kept in `RunLog.write_error`), never the run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from orch.redact import Redactor, json_safe

EventSink = Callable[[dict[str, Any]], None]


def new_run_id() -> str:
    """Return a sortable, unique run id: `20261125T174501Z-12345`."""
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}"


class RunLog:
    """Appends events of one run and notes of its failures.

    Args:
        root: Project root.
        run_id: The run's id (directory name under `wip/runs/`).
        sinks: Called with every event after it is written (progress display).
        redactor: Replaces secrets in every event and note before it is written.
    """

    def __init__(
        self,
        root: Path,
        run_id: str,
        sinks: list[EventSink] | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.root = root
        self.run_id = run_id
        self.dir = root / "wip" / "runs" / run_id
        self.path = self.dir / "events.jsonl"
        self.write_error: OSError | None = None
        self._handle: Any = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        except OSError as err:
            self.write_error = err
        self._sinks = sinks or []
        self._redactor = redactor or Redactor()
        self._noted = False

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event line `{"ts", "event", "run_id", **fields}` and notify sinks.

        `ts` is Unix time in seconds (float). Secrets are redacted; a value no
        JSON writer accepts (an integer past 64 bits, NaN) is made safe
        (`orch.redact.json_safe`), so an event is never lost to its numbers.
        """
        record = {"ts": round(time.time(), 6), "event": event, "run_id": self.run_id, **fields}
        record = self._redactor.record(record)
        try:
            line = orjson.dumps(record, default=str, option=orjson.OPT_SORT_KEYS)
        except (orjson.JSONEncodeError, TypeError):  # an integer past 64 bits, NaN, a non-UTF-8 name
            record = json_safe(record)
            line = json.dumps(record, default=str, sort_keys=True).encode()
        if self._handle is not None:
            try:
                self._handle.write(line + b"\n")
                self._handle.flush()
            except (OSError, ValueError) as err:
                self._lost(err)
        for sink in self._sinks:
            try:
                sink(record)
            except OSError as err:  # e.g. EIO/EPIPE from a closed terminal: the run goes on
                self._lost(err)
        return record

    def note(self, line: str, heading: str) -> None:
        """Append `line` to `wip/notes.md`, under this run's heading on first use."""
        notes = self.root / "wip" / "notes.md"
        try:
            notes.parent.mkdir(parents=True, exist_ok=True)
            with open(notes, "a", encoding="utf-8", errors="backslashreplace") as handle:
                if not self._noted:
                    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
                    handle.write(f"\n## {stamp} · run {self.run_id} · {heading}\n\n")
                    self._noted = True
                handle.write(self._redactor.text(line.rstrip()) + "\n")
        except OSError as err:
            self._lost(err)

    def _lost(self, err: OSError | ValueError) -> None:
        """Remember the first write error; later records go to the sinks only."""
        if self.write_error is None:
            self.write_error = err if isinstance(err, OSError) else OSError(str(err))

    def close(self) -> None:
        """Close the event file (a failing final flush is recorded, not raised)."""
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError as err:
                self._lost(err)


def read_events(path: Path) -> list[dict[str, Any]]:
    """Return the events of an events.jsonl file, skipping a torn last line."""
    events = []
    # errors="replace": a line torn inside a multi-byte character is skipped, not fatal
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events
