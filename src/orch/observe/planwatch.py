"""`orch watch --plan`: re-plan after each save of orch.yaml, agents/ or references/, print what went stale.

With `run_stale`, also start `orch run` (a subprocess, the same command a user
types) for what went stale; edits made while it runs queue one follow-up run,
and a running attempt is never killed because of an edit.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from orch.errors import OrchError

# Seconds of quiet after the last file event before re-planning (editors write in bursts).
DEBOUNCE_S = 0.2
# Seconds between looks at a running follow-up `orch run` while no file changes.
WAIT_S = 0.2
# Files and directories watched, relative to the project root.
WATCHED_FILE = "orch.yaml"
WATCHED_DIRS = ("agents", "references")

PlanKey = tuple[str, str]


class ChangeFlag:
    """Set by watchdog's thread on a relevant file event; remembers when the last one came."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.event = threading.Event()
        self.last_at = 0.0

    def is_relevant(self, path: str) -> bool:
        """True for orch.yaml and anything under agents/ or references/ (editor swap files included)."""
        try:
            rel = Path(path).relative_to(self.root)
        except ValueError:
            return False
        return rel.parts[:1] == (WATCHED_FILE,) or (len(rel.parts) > 1 and rel.parts[0] in WATCHED_DIRS)

    def dispatch(self, event: Any) -> None:
        """watchdog handler entry point: note any relevant created/modified/moved/deleted path."""
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if any(p and self.is_relevant(str(p)) for p in paths):
            self.last_at = time.monotonic()
            self.event.set()


def plan_snapshot(root: Path, agent: str | None) -> dict[PlanKey, tuple[str, str]]:
    """Load the project and plan every stage: `(stage, partition) -> (status, reason)`.

    Raises:
        OrchError: the project does not load or plan (the message `orch plan` prints).
    """
    from orch.config.project import load_project
    from orch.config.workspace import Workspace
    from orch.usecases import plan_stages

    ws = Workspace(load_project(root))
    return {
        (name, s.partition.id): (s.status.value, s.reason)
        for name, states in plan_stages(ws, None, agent)
        for s in states
    }


def changed_lines(before: dict[PlanKey, tuple[str, str]], after: dict[PlanKey, tuple[str, str]]) -> list[str]:
    """Lines for partitions that now need a run and did not, or need it for another reason."""
    lines = []
    for key, (status, reason) in after.items():
        if status == "complete" or before.get(key) == (status, reason):
            continue
        lines.append(f"{status} {key[0]}/{key[1]}: {reason}")
    return lines


class PlanWatcher:
    """Re-plans after edits and reports; optionally runs what went stale.

    Args:
        root: Project root.
        agent: Agent override (part of the fingerprint).
        run_stale: Start `orch run` after an edit that left partitions to run.
        say: Prints one line.
    """

    def __init__(self, root: Path, agent: str | None, run_stale: bool, say: Callable[[str], None]) -> None:
        self.root = root
        self.agent = agent
        self.run_stale = run_stale
        self.say = say
        self.plan: dict[PlanKey, tuple[str, str]] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.pending = False

    def start(self) -> None:
        """Take the first plan (or print why it fails)."""
        self.replan(initial=True)

    def replan(self, initial: bool = False) -> None:
        """Reload and plan; print changed partitions, or the error line; maybe start a run."""
        started = time.monotonic()
        try:
            plan = plan_snapshot(self.root, self.agent)
        except OrchError as err:
            self.say(f"error: {err.message}" + (f" (hint: {err.hint})" if err.hint else ""))
            return
        to_run = sum(1 for status, _ in plan.values() if status != "complete")
        if initial:
            self.say(
                f"watching {WATCHED_FILE}, {', '.join(d + '/' for d in WATCHED_DIRS)}: "
                f"{len(plan)} partitions, {to_run} to run"
            )
        else:
            lines = changed_lines(self.plan, plan)
            took_ms = (time.monotonic() - started) * 1000
            self.say(f"replanned in {took_ms:.0f} ms: {to_run} to run ({len(lines)} new)")
            for line in lines:
                self.say(f"  {line}")
            if self.run_stale and to_run:
                self.request_run()
        self.plan = plan

    def request_run(self) -> None:
        """Start `orch run`, or queue one follow-up run if one is running (never kill it)."""
        if self.proc is not None and self.proc.poll() is None:
            if not self.pending:
                self.say("a run is in progress: one follow-up run queued")
            self.pending = True
            return
        self._start_run()

    def check_run(self) -> None:
        """Report a finished run; start the queued follow-up run."""
        if self.proc is None or self.proc.poll() is None:
            return
        self.say(f"run finished (exit {self.proc.returncode})")
        self.proc = None
        if self.pending:
            self.pending = False
            self._start_run()

    def _start_run(self) -> None:
        command = [sys.executable, "-m", "orch", "--project", str(self.root), "run"]
        if self.agent:
            command += ["--agent", self.agent]
        self.say(f"starting: orch run{' --agent ' + self.agent if self.agent else ''}")
        self.proc = subprocess.Popen(command, cwd=self.root, stdin=subprocess.DEVNULL)


def watch_plan(
    project: str | None, agent: str | None, run_stale: bool = False, out: TextIO | None = None
) -> None:
    """Watch the project's configuration and blueprints until Ctrl-C (KeyboardInterrupt propagates).

    Watches `orch.yaml` (the root, not recursively), `agents/` and
    `references/` (recursively) with watchdog; re-plans `DEBOUNCE_S` after the
    last event of a burst.

    Raises:
        OrchError: no project found (`find_root`).
    """
    from watchdog.observers import Observer

    from orch.config.project import find_root

    stream = sys.stdout if out is None else out

    def say(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    root = find_root(explicit=project).resolve()
    flag = ChangeFlag(root)
    observer = Observer()
    observer.schedule(flag, str(root), recursive=False)  # type: ignore[arg-type]
    for name in WATCHED_DIRS:
        if (root / name).is_dir():
            observer.schedule(flag, str(root / name), recursive=True)  # type: ignore[arg-type]
    watcher = PlanWatcher(root, agent, run_stale, say)
    observer.start()
    try:
        watcher.start()
        while True:
            if flag.event.wait(WAIT_S):
                quiet_s = time.monotonic() - flag.last_at
                if quiet_s < DEBOUNCE_S:
                    time.sleep(DEBOUNCE_S - quiet_s)
                    continue
                flag.event.clear()
                watcher.replan()
            watcher.check_run()
    finally:
        observer.stop()
        observer.join(timeout=2)
        if watcher.proc is not None and watcher.proc.poll() is None:
            say(f"the run started by watch goes on (pid {watcher.proc.pid})")
