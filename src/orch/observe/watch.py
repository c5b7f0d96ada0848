"""`orch watch`: attach to a run from any terminal and show it live, or as plain lines.

`Watcher` holds the data: a `RunProgress` fed incrementally from the run's
`EventReader` (never a re-plan per tick) and a disk snapshot retaken at most
every `SNAPSHOT_EVERY_S`. `build_view` turns it into a `WatchView`; the
renderers in `orch.observe.watch_render` only format a view. Read-only.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from orch.config.workspace import Workspace
from orch.errors import UsageError
from orch.observe.events import Event, EventName, EventReader, RunInfo, latest_run, read_run
from orch.observe.progress import Phase, RunProgress
from orch.observe.snapshot import Snapshot, take_snapshot
from orch.observe.watch_render import event_text, render_plain, render_rich

# Least seconds between disk snapshots (done and stale counts; more on a big project);
# events are read every tick.
SNAPSHOT_EVERY_S = 3.0
# Seconds between looks at whether the run's orchestrator is alive.
ALIVE_EVERY_S = 1.0
# Seconds between looks at the event log (the rich display refreshes at 4/s).
TICK_S = 0.25
# Seconds between summary lines in plain (non-TTY) output.
PLAIN_SUMMARY_EVERY_S = 10.0
# Failures shown (the newest).
MAX_FAILURE_ROWS = 5


@dataclass(frozen=True)
class StageLine:
    """One stage's tallies: disk counts (done, stale) joined with the run's live phases."""

    name: str
    total: int
    done: int
    running: int
    queued: int
    backing_off: int
    failed: int
    stale: int
    cost_usd: float | None
    budget_usd: float | None


@dataclass(frozen=True)
class RunningLine:
    """One running partition: elapsed seconds and why it started."""

    stage: str
    partition: str
    attempt: int
    agent: str | None
    elapsed_s: float
    reason: str


@dataclass(frozen=True)
class WatchView:
    """Everything one screen shows; built by `build_view`, formatted by the renderers.

    Attributes:
        run_id: The run watched.
        state: `running`, `finished`, `failed` (finished not ok) or `interrupted`
            (orchestrator gone without `run_finished`).
        elapsed_s: Seconds since the run started (to its end once ended).
        stages: One line per stage.
        running: The running partitions, longest-running first.
        agent_limits: Each agent's current concurrency limit (None: unlimited).
        cost_usd: The run's cost so far; None if no agent reported one.
        tokens: The run's tokens so far; None if unknown.
        budget_usd: The run-wide `max_cost_usd`, if set.
        eta_s: Estimated seconds left; None without an estimate.
        failures: The last failed attempts, as text.
        halted: Why the run halted, if it did.
    """

    run_id: str
    state: str
    elapsed_s: float | None
    stages: tuple[StageLine, ...]
    running: tuple[RunningLine, ...]
    agent_limits: dict[str, int | None]
    cost_usd: float | None
    tokens: int | None
    budget_usd: float | None
    eta_s: float | None
    failures: tuple[str, ...]
    halted: str | None


class Watcher:
    """Follows one run: new events each `poll`, a disk snapshot now and then.

    Args:
        workspace: The loaded project.
        run: The run to follow.
        agent: Agent override (part of the fingerprint, for stale counts).
    """

    def __init__(self, workspace: Workspace, run: RunInfo, agent: str | None = None) -> None:
        self.workspace = workspace
        self.run = run
        self.agent = agent
        self.progress = RunProgress(run.run_id)
        self.reader = EventReader(run.events_path)
        self.snapshot: Snapshot | None = None
        self._snapshot_at = -SNAPSHOT_EVERY_S
        self._snapshot_every_s = SNAPSHOT_EVERY_S
        self._alive_at = time.monotonic()
        self._disk_changed = True

    @property
    def ended(self) -> bool:
        """True once the run wrote `run_finished` or its orchestrator is gone."""
        return self.progress.finished or not self.run.alive

    def poll(self) -> list[Event]:
        """Apply the events written since the last poll; refresh liveness and the snapshot when due."""
        events = self.reader.read()
        self.progress.apply_all(events)
        now = time.monotonic()
        if any(e.name in _DISK_EVENTS for e in events):
            self._disk_changed = True
        if now - self._alive_at >= ALIVE_EVERY_S and not self.progress.finished:
            self._alive_at = now
            self.run = read_run(self.run.events_path.parent)
            if not self.run.alive:  # events written just before it died
                self.progress.apply_all(extra := self.reader.read())
                events += extra
        ended = self.ended
        due = now - self._snapshot_at >= self._snapshot_every_s
        if self._disk_changed and (due or ended):
            self.refresh_snapshot()
        return events

    def refresh_snapshot(self) -> None:
        """Look at the disk now (shallow: manifests, listings), joined with the live progress."""
        started = time.monotonic()
        self.snapshot = take_snapshot(self.workspace, self.agent, self.run.run_id, progress=self.progress)
        self._snapshot_at = time.monotonic()
        # a big project's snapshot takes a while: spend at most ~10% of the time on them
        self._snapshot_every_s = max(SNAPSHOT_EVERY_S, 10 * (self._snapshot_at - started))
        self._disk_changed = False

    def view(self, now: float | None = None) -> WatchView:
        """Return the screen's data at Unix time `now`."""
        return build_view(self.workspace, self.run, self.progress, self.snapshot, now)


_DISK_EVENTS = frozenset(
    {EventName.PROMOTED, EventName.FAILED, EventName.STAGE_FINISHED, EventName.RUN_FINISHED}
)


def build_view(
    workspace: Workspace,
    run: RunInfo,
    progress: RunProgress,
    snapshot: Snapshot | None,
    now: float | None = None,
) -> WatchView:
    """Join the live progress with the (possibly seconds-old) snapshot into one screen's data.

    Live phases (running, backing off, failed) come from `progress`; done and
    stale come from the snapshot; queued counts the snapshot's queued
    partitions that have had no event since, plus the live queued ones.
    """
    now = time.time() if now is None else now
    project = workspace.project
    if progress.finished:
        state = "finished" if progress.ok else "failed"
    else:
        state = "running" if run.alive else "interrupted"
    stage_costs: dict[str, float] = {}
    for part in progress.partitions.values():
        if part.usage.cost_usd is not None:
            stage_costs[part.stage] = stage_costs.get(part.stage, 0.0) + part.usage.cost_usd
    names = [s.name for s in snapshot.stages] if snapshot else list(progress.stages or project.stages)
    lines = []
    for name in names:
        live = progress.phase_counts(name)
        view = _stage_view(snapshot, name)
        waiting = 0
        if view is not None and state == "running":
            tracked = progress.partitions
            waiting = sum(
                1 for p in view.partitions if p.phase is Phase.QUEUED and (name, p.id) not in tracked
            )
        stage = project.stages.get(name)
        lines.append(
            StageLine(
                name=name,
                total=len(view.partitions) if view else sum(live.values()),
                done=view.counts.get("complete", 0) if view else live["done"],
                running=live["running"] if state == "running" else 0,
                queued=(waiting + live["queued"]) if state == "running" else 0,
                backing_off=live["backing_off"] if state == "running" else 0,
                failed=live["failed"],
                stale=view.counts.get("stale", 0) if view else 0,
                cost_usd=stage_costs.get(name),
                budget_usd=stage.max_cost_usd if stage else None,
            )
        )
    running: tuple[RunningLine, ...] = ()
    if state == "running":
        running = tuple(
            RunningLine(
                p.stage,
                p.partition,
                p.attempt,
                p.agent,
                p.elapsed_s(now) or 0.0,
                p.reason or "",
            )
            for p in progress.running()
        )
    end = progress.finished_at if progress.finished else (None if run.alive else progress.last_ts)
    started = progress.started_at or run.started_at
    failures = tuple(
        f"{f.stage}/{f.partition} attempt {f.attempt}: {f.error_class or 'error'}: {f.error or ''}".rstrip(
            ": "
        )
        + ("" if f.final else " (retrying)")
        for f in list(progress.failures)[-MAX_FAILURE_ROWS:]
    )
    return WatchView(
        run_id=run.run_id,
        state=state,
        elapsed_s=round((end or now) - started, 1) if started else None,
        stages=tuple(lines),
        running=running,
        agent_limits=_agent_limits(progress),
        cost_usd=progress.usage.cost_usd,
        tokens=progress.usage.tokens,
        budget_usd=project.max_cost_usd,
        eta_s=progress.eta_s() if state == "running" else None,
        failures=failures,
        halted=progress.halted,
    )


def _agent_limits(progress: RunProgress) -> dict[str, int | None]:
    """Each agent's limit as the latest `started` event reported it; None for an unlimited agent."""
    limits: dict[str, int | None] = {p.agent: None for p in progress.running() if p.agent}
    limits.update(progress.agent_limits)
    return limits


def _stage_view(snapshot: Snapshot | None, name: str) -> Any:
    if snapshot is None:
        return None
    try:
        return snapshot.stage(name)
    except KeyError:
        return None


# -- the loop ---------------------------------------------------------------------------


def watch_runs(
    workspace: Workspace,
    run_id: str | None = None,
    follow: bool = False,
    agent: str | None = None,
    out: TextIO | None = None,
    is_tty: bool | None = None,
) -> None:
    """Watch the newest run (or `run_id`) until it ends; with `follow`, then wait for the next.

    On a terminal a rich Live display refreshes ~4 times a second; otherwise
    plain lines go to `out`: a summary on attach, one line per event worth
    telling, a summary every `PLAIN_SUMMARY_EVERY_S`, and a final summary.

    Raises:
        UsageError: `run_id` names no run, or the project never ran (without `follow`).
    """
    out = sys.stdout if out is None else out
    is_tty = out.isatty() if is_tty is None else is_tty
    root = workspace.root
    run = _first_run(root, run_id, follow)
    while True:
        watcher = Watcher(workspace, run, agent)
        if is_tty:
            _watch_live(watcher, out)
        else:
            _watch_plain(watcher, out)
        if not follow or run_id is not None:
            return
        run = _next_run(root, run.run_id)


def _first_run(root: Path, run_id: str | None, follow: bool) -> RunInfo:
    if run_id is not None:
        run_dir = root / "wip" / "runs" / run_id
        if "/" in run_id or run_id in (".", "..") or not run_dir.is_dir():
            raise UsageError(
                f"no run {run_id!r} under {root / 'wip' / 'runs'}", "omit --run to watch the newest"
            )
        return read_run(run_dir)
    run = latest_run(root)
    if run is None:
        if not follow:
            raise UsageError(f"{root}: no run yet (wip/runs/ is empty)", "start one with: orch run")
        return _next_run(root, None)
    return run


def _next_run(root: Path, previous: str | None, poll_s: float = 0.5) -> RunInfo:
    """Wait (polling `wip/runs/` every `poll_s`; Ctrl-C ends it) for a run newer than `previous`."""
    while True:
        run = latest_run(root)
        if run is not None and run.run_id != previous:
            return run
        time.sleep(poll_s)


def _watch_live(watcher: Watcher, out: TextIO) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out, highlight=False)
    watcher.poll()
    watcher.refresh_snapshot()
    with Live(render_rich(watcher.view()), console=console, refresh_per_second=4, transient=False) as live:
        while not watcher.ended:
            time.sleep(TICK_S)
            watcher.poll()
            live.update(render_rich(watcher.view()))
        watcher.refresh_snapshot()
        live.update(render_rich(watcher.view()), refresh=True)


def _watch_plain(watcher: Watcher, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
    watcher.poll()
    watcher.refresh_snapshot()
    if watcher.ended:
        _print_lines(out, render_plain(watcher.view()))
        return
    _print_lines(out, render_plain(watcher.view()))
    summary_at = clock()
    while not watcher.ended:
        time.sleep(TICK_S)
        lines = [text for e in watcher.poll() if (text := event_text(e)) is not None]
        if clock() - summary_at >= PLAIN_SUMMARY_EVERY_S:
            summary_at = clock()
            lines += render_plain(watcher.view())
        _print_lines(out, lines)
    watcher.refresh_snapshot()
    _print_lines(out, render_plain(watcher.view()))


def _print_lines(out: TextIO, lines: list[str]) -> None:
    if lines:
        out.write("".join(f"{line}\n" for line in lines))
        out.flush()
