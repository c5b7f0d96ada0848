"""Show a run's progress: a live bar and counts on a terminal, plain lines otherwise.

Both reporters consume the run's events (see `orch.store.runlog`); they print to
stderr, keeping stdout for data.
"""

from __future__ import annotations

from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

FINAL_EVENTS = {
    "promoted": "done",
    "failed": "failed",
    "skipped": "skipped",
    "blocked": "blocked",
    "interrupted": "interrupted",
}


class Counts:
    """Running tallies of a run: running / done / failed / retrying / skipped."""

    def __init__(self) -> None:
        self.total = 0
        self.running = 0
        self.done = 0
        self.failed = 0
        self.retrying = 0
        self.skipped = 0
        self.limit: int | None = None

    def update(self, event: dict[str, Any]) -> None:
        """Apply one event."""
        kind = event["event"]
        if kind == "run_started":
            self.total = int(event.get("partitions", 0))
        elif kind == "started":
            self.running += 1
            if event.get("limit"):
                self.limit = int(event["limit"])
            if event.get("reason") == "retry":
                self.retrying = max(0, self.retrying - 1)
        elif kind == "retried":
            self.running = max(0, self.running - 1)
            self.retrying += 1
        elif kind == "promoted":
            self.running = max(0, self.running - 1)
            self.done += 1
        elif kind == "failed":
            self.running = max(0, self.running - 1) if event.get("attempt") else self.running
            self.failed += 1
        elif kind in ("skipped", "blocked"):
            self.skipped += 1
        elif kind == "interrupted":
            self.running = max(0, self.running - 1)

    @property
    def finished(self) -> int:
        """Partitions that reached an end state."""
        return self.done + self.failed + self.skipped

    def line(self) -> str:
        """Return e.g. `running 8 · done 40 · failed 1 · retrying 2 · skipped 0`."""
        limit = f" · agent limit {self.limit}" if self.limit else ""
        return (
            f"running {self.running} · done {self.done} · failed {self.failed} · "
            f"retrying {self.retrying} · skipped {self.skipped}{limit}"
        )


class PlainReporter:
    """One line per finished partition, retry and failure (for logs and pipes)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.counts = Counts()

    def __call__(self, event: dict[str, Any]) -> None:
        """Print a line for events a person wants to see in a log."""
        self.counts.update(event)
        kind = event["event"]
        where = f"{event.get('stage')}/{event.get('partition')}"
        n = f"[{self.counts.finished}/{self.counts.total}]"
        if kind == "promoted":
            line = f"{n} done     {where} (attempt {event['attempt']}, {event['duration_s']}s)"
        elif kind == "failed":
            line = f"{n} FAILED   {where}: {event.get('error')}"
        elif kind == "retried":
            line = f"      retry    {where} in {event['backoff_s']}s: {event.get('error')}"
        elif kind == "blocked":
            line = f"{n} blocked  {where}: {event.get('reason')}"
        elif kind == "halted":
            line = f"      {event.get('reason')}"
        elif kind == "interrupted":
            line = f"      interrupted {where}"
        elif kind == "lock_file_lost":
            line = f"      warning: {where}: {event.get('message')}"
        elif kind in WORKER_EVENTS:
            text = worker_text(event)
            if text is None:
                return
            line = f"      {text}"
        elif kind == "barrier":
            state = "met" if event["met"] else "NOT met"
            line = f"      barrier {event['stage']}: {state} ({event['complete']}/{event['total']})"
        else:
            return
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Nothing to tear down."""


class LiveReporter:
    """A rich progress bar with counts, on a terminal."""

    def __init__(self, console: Console) -> None:
        self.counts = Counts()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("orch", total=None, counts="")
        self.progress.start()

    def __call__(self, event: dict[str, Any]) -> None:
        """Update the bar; print failures above it."""
        self.counts.update(event)
        if event["event"] == "failed":
            self.progress.console.print(
                f"[red]FAILED[/red] {event.get('stage')}/{event.get('partition')}: {event.get('error')}",
                markup=True,
                highlight=False,
            )
        elif event["event"] == "lock_file_lost":
            self.progress.console.print(
                f"warning: {event.get('stage')}/{event.get('partition')}: {event.get('message')}",
                markup=False,
                highlight=False,
            )
        elif event["event"] in WORKER_EVENTS and (text := worker_text(event)):
            self.progress.console.print(text, markup=False, highlight=False)
        self.progress.update(
            self.task,
            total=self.counts.total or None,
            completed=self.counts.finished,
            counts=self.counts.line(),
        )

    def close(self) -> None:
        """Stop the live display."""
        self.progress.stop()


#: The Dask executor's worker events.
WORKER_EVENTS = frozenset({"worker_joined", "worker_refused", "worker_left"})


def worker_text(event: dict[str, Any]) -> str | None:
    """One line for a Dask worker event; None for the workers checked at the start
    (their `worker_joined` only repeats the set-up)."""
    worker, kind = event.get("worker"), event.get("event")
    if kind == "worker_joined" and event.get("late") is False:
        return None
    if kind == "worker_refused":
        return f"warning: Dask worker {worker} gets no attempts: {event.get('reason')}"
    if kind == "worker_left":
        return f"Dask worker {worker} left (attempts running there fail as worker_lost)"
    return f"Dask worker {worker} joined"
