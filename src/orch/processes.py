"""End every process an agent started, whatever it did to escape (Linux).

What is guaranteed where:

- Linux with `PR_SET_CHILD_SUBREAPER` (kernel 3.4+): orch and every agent are
  subreapers, so an agent's descendants stay in its process tree however they
  detach (`setsid`, double fork, a cleared environment), and fall to orch when
  the agent exits. When an attempt ends (success, failure, timeout, Ctrl-C) its
  whole tree is stopped (SIGSTOP, so nothing forks meanwhile) and SIGKILLed,
  and orch waits until they are gone, before outputs are checked or promoted.
- If orch dies (kill -9), the `Reaper` watchdog does the same to the trees of
  the agents it was told about; if the reaper died too, the next run reads the
  agent's pid record (`.orch/pids` in the staging directory) and kills that
  tree before archiving the staging directory.
- Everywhere with /proc, and when no subreaper can be set, processes whose
  environment names the staging directory as ORCH_OUTPUT_DIR, or whose cwd or
  open files lie inside it, are killed as well. Not covered: processes handed
  to another service (systemd-run, at, ssh, a container daemon). Elsewhere
  (no /proc) only the agent's process group is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

#: prctl(2) option number (linux/prctl.h).
_PR_SET_CHILD_SUBREAPER = 36
#: The agent's pid record in its staging directory: "<pid> <starttime>" lines.
PIDS_FILE = ".orch/pids"
#: How long to wait for SIGKILLed processes to be gone (they die at once, barring
#: uninterruptible I/O such as a hung network filesystem).
_GONE_WAIT_S = 5.0
#: Bound on stop-and-rescan rounds while freezing a tree that keeps forking.
_FREEZE_ROUNDS = 50

#: The reaper's program (run with `python -S -c`, importing nothing of orch).
#: On EOF it stops and kills the trees of the watched agents, then anything whose
#: environment names a watched staging directory.
_REAPER = r"""
import os, signal, sys
watched, pids = set(), set()
for line in sys.stdin.buffer:
    verb, _, rest = line.rstrip(b"\n").partition(b" ")
    pid, _, path = rest.partition(b" ")
    if verb == b"add":
        watched.add(path)
        if int(pid):
            pids.add(int(pid))
    elif verb == b"del":
        watched.discard(path)
        pids.discard(int(pid))
def children():
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as handle:
                ppid = int(handle.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        found.setdefault(ppid, []).append(int(name))
    return found
tree = set()
for _ in range(50):
    kids = children()
    todo, new = list(pids | tree), set()
    while todo:
        for child in kids.get(todo.pop(), ()):
            if child not in tree and child not in new:
                new.add(child)
                todo.append(child)
    new |= pids - tree
    if not new:
        break
    for pid in new:
        try:
            os.kill(pid, signal.SIGSTOP)
        except OSError:
            pass
    tree |= new
for pid in tree:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
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


def _prctl_subreaper() -> bool:
    """Make the calling process a child subreaper; False where that is unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


class Reaper:
    """A watchdog that kills this run's agents if orch dies (see the module doc).

    Costs one short-lived process per run and two pipe writes per agent, against
    an extra exec per agent for PR_SET_PDEATHSIG through setpriv (0.4-0.5 ms
    each, measured), which also spared the agent's own children.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The watchdog's pid while it runs."""
        return self._proc.pid if self._proc is not None else None

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

    def _send(self, verb: str, staging: Path, pid: int) -> None:
        proc = self._pipe()
        if proc is None or proc.stdin is None:
            return
        with contextlib.suppress(OSError):  # a dead reaper: kill_orphans is the fallback
            proc.stdin.write(f"{verb} {pid} ".encode() + os.fsencode(str(staging)) + b"\n")
            proc.stdin.flush()

    def watch(self, staging: Path, pid: int = 0) -> None:
        """Kill the agent `pid` running in `staging` (and its tree) if orch dies."""
        self._send("add", staging, pid)

    def forget(self, staging: Path, pid: int = 0) -> None:
        """The agent in `staging` has ended; stop watching it."""
        self._send("del", staging, pid)

    def close(self) -> None:
        """Let the reaper exit (it kills whatever is still watched: nothing, normally)."""
        if self._proc is not None:
            with contextlib.suppress(OSError):
                if self._proc.stdin:
                    self._proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._proc = None


class Containment:
    """Keeps every process an agent starts inside its attempt (see the module doc).

    One per run (the executor shares it between backends): it knows which of
    orch's children are live agents, so any other child is a leftover.
    """

    def __init__(self) -> None:
        self.reaper = Reaper()
        self._live: set[int] = set()
        self._spawning = 0
        self._idle: asyncio.Event | None = None
        self.is_subreaper = _prctl_subreaper()

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """Wrap starting an agent until `started`: sweeps wait meanwhile.

        An agent forked but not yet recorded would look like a leftover.
        """
        if self._idle is None:
            self._idle = asyncio.Event()
        self._spawning += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._spawning -= 1
            if not self._spawning:
                self._idle.set()

    def preexec(self) -> Callable[[], object] | None:
        """The `preexec_fn` that makes an agent a subreaper (None where unsupported)."""
        return _prctl_subreaper if self.is_subreaper else None

    def started(self, staging: Path, pid: int) -> None:
        """Record agent `pid` of `staging`: in `.orch/pids` and with the reaper."""
        self._live.add(pid)
        self.reaper.watch(staging, pid)
        with contextlib.suppress(OSError), open(staging / PIDS_FILE, "a", encoding="ascii") as handle:
            handle.write(f"{pid} {_start_time(pid)}\n")

    async def ended(self, staging: Path, pid: int) -> list[int]:
        """End whatever agent `pid` of `staging` left running; return the pids killed.

        Waits for agents being started to be recorded, then blocks until the
        leftovers are gone (at most ~5 s): afterwards nothing of this attempt
        can write into `staging`. Processes of still-running agents are not
        touched: they are inside those agents' trees, not orch's children.
        """
        cancelled = False
        while self._spawning and self._idle is not None:
            try:
                await asyncio.shield(self._idle.wait())
            except asyncio.CancelledError:  # sweep anyway, then pass it on
                cancelled = True
                break
        own = {pid, *self._live}
        if self.reaper.pid:
            own.add(self.reaper.pid)
        roots = [p for p in _children(os.getpid()) if p not in own]
        if _is_running(pid):  # the agent itself never outlives this call
            roots.append(pid)
        killed = kill_tree(roots, spare={pid})
        if not self.is_subreaper:
            killed = sorted(set(killed) | set(_kill_marked(staging)))
        self._live.discard(pid)
        self.reaper.forget(staging, pid)
        if cancelled:
            raise asyncio.CancelledError
        return killed

    def close(self) -> None:
        """Let the reaper go (every agent has ended by now)."""
        self.reaper.close()


def kill_tree(roots: Iterable[int], spare: Iterable[int] = ()) -> list[int]:
    """Stop, then SIGKILL, the processes `roots` and all their descendants.

    SIGSTOP first so no process forks or exits (re-parenting its children)
    while the tree is being read; then SIGKILL all, and wait until each is gone
    (at most ~5 s; a zombie counts as gone). Zombies that are orch's children
    are reaped, except `spare` (pids asyncio will reap itself).

    Returns:
        The pids that were running (not zombies), sorted.
    """
    own = os.getpid()
    tree: set[int] = set()
    roots = {p for p in roots if p > 0 and p != own}
    for _ in range(_FREEZE_ROUNDS):
        kids = _children_map()
        new = roots - tree
        todo = list(tree | roots)
        while todo:
            for child in kids.get(todo.pop(), ()):
                if child not in tree and child not in new and child != own:
                    new.add(child)
                    todo.append(child)
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        tree |= new
    running = {pid for pid in tree if _is_running(pid)}  # not the zombies among them
    for pid in tree:
        _signal(pid, signal.SIGKILL)
    _wait_gone(tree, set(spare))
    return sorted(running)


def kill_orphans(staging: Path) -> list[int]:
    """Kill what a dead run's attempt in `staging` left running (before archiving it).

    The agent's tree from its pid record (`.orch/pids`, checked against the
    process start time so a reused pid is spared), then any process whose
    environment names `staging` as ORCH_OUTPUT_DIR or whose cwd or open files
    lie inside it. Processes of other users, or that exit meanwhile, are skipped.

    Returns:
        The pids signalled, sorted.
    """
    roots = []
    with contextlib.suppress(OSError, ValueError):
        for line in (staging / PIDS_FILE).read_text(encoding="ascii").splitlines():
            pid_text, _, started = line.partition(" ")
            pid = int(pid_text)
            if started and _start_time(pid) == started:
                roots.append(pid)
    killed = set(kill_tree(roots)) if roots else set()
    killed |= set(_kill_marked(staging))
    return sorted(killed)


def _kill_marked(staging: Path) -> list[int]:
    """SIGKILL processes whose environ, cwd or open files point into `staging`."""
    marker = b"\0ORCH_OUTPUT_DIR=" + os.fsencode(str(staging)) + b"\0"
    inside = os.fsencode(str(staging))
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    own = os.getpid()
    found = [pid for pid in pids if pid != own and _points_into(pid, marker, inside)]
    for pid in found:
        _signal(pid, signal.SIGKILL)
    _wait_gone(set(found), set(_children(own)))
    return sorted(found)


def _points_into(pid: int, marker: bytes, inside: bytes) -> bool:
    def under(link: str) -> bool:
        try:
            target = os.readlink(os.fsencode(link))
        except OSError:
            return False
        return target == inside or target.startswith(inside + b"/")

    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            if marker in b"\0" + handle.read():
                return True
        if under(f"/proc/{pid}/cwd"):
            return True
        return any(under(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str:
    fields = _stat_fields(pid)
    return fields[19].decode() if fields and len(fields) > 19 else ""


def _is_running(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def _children(pid: int) -> list[int]:
    """Children of every thread of `pid` (orphans may be re-parented to any thread)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                found.extend(int(p) for p in handle.read().split())
        except FileNotFoundError:  # kernel without CONFIG_PROC_CHILDREN
            return _children_map().get(pid, [])
        except OSError:
            continue
    return found


def _children_map() -> dict[int, list[int]]:
    """Map ppid -> pids over /proc (one read of each /proc/<pid>/stat)."""
    kids: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return kids
    for name in names:
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields and len(fields) > 1:
                kids.setdefault(int(fields[1]), []).append(int(name))
    return kids


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_gone(pids: set[int], spare: set[int]) -> None:
    """Wait (at most _GONE_WAIT_S) until `pids` are dead; reap orch's zombies but `spare`."""
    deadline = time.monotonic() + _GONE_WAIT_S
    own = os.getpid()
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            fields = _stat_fields(pid)
            if fields is not None and fields[0] not in (b"Z", b"X"):
                continue
            pending.discard(pid)
            if fields is not None and int(fields[1]) == own and pid not in spare:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
        if pending:
            time.sleep(0.001)
