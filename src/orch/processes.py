"""Keep agent processes from outliving the orchestrator.

`Reaper` is a small watchdog process started once per run in its own session.
orch tells it, over a pipe, which staging directories have live agents. If
orch dies, even by kill -9, the pipe closes and the reaper SIGKILLs every
process whose environment names one of those directories as ORCH_OUTPUT_DIR:
the agent and anything it started, whatever process group they moved to.
`kill_orphans` does the same scan for a later run, should the reaper itself
have been killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

#: The reaper's program (run with `python -S -c`, importing nothing of orch).
_REAPER = r"""
import os, signal, sys
watched = set()
for line in sys.stdin.buffer:
    verb, _, path = line.rstrip(b"\n").partition(b" ")
    if verb == b"add":
        watched.add(path)
    elif verb == b"del":
        watched.discard(path)
markers = [b"\0ORCH_OUTPUT_DIR=" + p + b"\0" for p in watched]
if markers:
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % name, "rb") as handle:
                environ = b"\0" + handle.read()
        except OSError:
            continue
        if any(m in environ for m in markers):
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass
"""
REAPER_MARK = "orch-reaper"


class Reaper:
    """A watchdog that kills this run's agents if orch dies (see the module doc).

    Costs one short-lived process per run and two pipe writes per agent, against
    an extra exec per agent for PR_SET_PDEATHSIG through setpriv (0.4-0.5 ms
    each, measured), which also spared the agent's own children.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def _pipe(self) -> subprocess.Popen[bytes] | None:
        if self._proc is None and os.path.isdir("/proc"):
            self._proc = subprocess.Popen(
                [sys.executable, "-S", "-c", _REAPER, REAPER_MARK],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C to orch's terminal must not reach it
            )
        return self._proc

    def _send(self, verb: str, staging: Path) -> None:
        proc = self._pipe()
        if proc is None or proc.stdin is None:
            return
        with contextlib.suppress(OSError):  # a dead reaper: kill_orphans is the fallback
            proc.stdin.write(f"{verb} ".encode() + os.fsencode(str(staging)) + b"\n")
            proc.stdin.flush()

    def watch(self, staging: Path) -> None:
        """Kill the agent running in `staging` (and its children) if orch dies."""
        self._send("add", staging)

    def forget(self, staging: Path) -> None:
        """The agent in `staging` has ended; stop watching it."""
        self._send("del", staging)

    def close(self) -> None:
        """Let the reaper exit (it kills whatever is still watched: nothing, normally)."""
        if self._proc is not None:
            with contextlib.suppress(OSError):
                if self._proc.stdin:
                    self._proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._proc = None


def kill_orphans(staging: Path) -> list[int]:
    """SIGKILL every process whose environment names `staging` as ORCH_OUTPUT_DIR.

    Reads /proc/<pid>/environ (Linux; elsewhere nothing is found). Processes of
    other users, or that exit meanwhile, are skipped.

    Returns:
        The pids signalled, sorted.
    """
    marker = b"\0ORCH_OUTPUT_DIR=" + os.fsencode(str(staging)) + b"\0"
    killed = []
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    own = os.getpid()
    for pid in pids:
        if pid == own:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = b"\0" + handle.read()
        except OSError:
            continue
        if marker in environ:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return sorted(killed)


def use_pidfd_watcher(loop: asyncio.AbstractEventLoop) -> None:
    """On Python 3.11, wait for agents with pidfds instead of a thread per child.

    The fastest watcher measured here (STYLE.md); 3.12+ does this by default.
    Process-wide: only the CLI, which owns its process, calls it on its loop
    (the Python API keeps asyncio's default watcher, which works in any thread).
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    with contextlib.suppress(OSError, NotImplementedError, AttributeError):
        os.close(os.pidfd_open(os.getpid()))  # the kernel supports pidfds
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(loop)
        asyncio.set_child_watcher(watcher)
