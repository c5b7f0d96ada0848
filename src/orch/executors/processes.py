"""End every process an agent started, whatever it did to escape (Linux).

What is guaranteed where:

- Linux (`PR_SET_CHILD_SUBREAPER`, kernel 3.4+): orch is a subreaper, so a
  process that detaches from its agent (`setsid`, double fork, a cleared
  environment) becomes orch's child instead of init's. When an attempt ends
  (success, failure, timeout, Ctrl-C), every child of orch that is not a live
  agent, nor marked (ORCH_OUTPUT_DIR, cwd or open files) as another running
  attempt's, is stopped (SIGSTOP, so nothing forks meanwhile) and SIGKILLed
  with its whole tree, and orch waits until they are gone, before outputs are
  checked or promoted. The agent's process group is killed as before.
- If orch dies (kill -9), the `Reaper` watchdog stops and kills the trees of
  the agents it was told about, and processes whose environment names their
  staging directories. If the reaper died too, the next run kills every
  process whose environment names a dead staging directory, with its tree,
  before archiving it. Not covered after a kill -9: a process that both left
  its agent's tree and cleared its environment (orch's death handed it to init).
- Without a subreaper (not Linux), the environment scan runs at every attempt end;
  without /proc only the agent's process group is killed. Processes handed to
  another service (systemd-run, at, ssh, a container daemon) are never covered.

Making each agent a subreaper too (keeping its descendants in its own tree)
needs a `preexec_fn`, which cost 7-20 ms wall per spawn here (fork instead of
vfork): bench/fanout.py went from 6 to 30 ms per partition.
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
from collections.abc import Iterable, Iterator
from pathlib import Path

#: prctl(2) option number (linux/prctl.h).
_PR_SET_CHILD_SUBREAPER = 36
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
        self._live: dict[int, bytes] = {}  # agent pid -> its staging directory
        self._agents: set[int] = set()  # agents not yet reaped: asyncio reaps them, never orch
        self._spawning: set[asyncio.Event] = set()
        self.is_subreaper = _prctl_subreaper()

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """Wrap starting an agent until `started`: sweeps wait for it meanwhile.

        An agent forked but not yet recorded would look like a leftover.
        """
        done = asyncio.Event()
        self._spawning.add(done)
        try:
            yield
        finally:
            self._spawning.discard(done)
            done.set()

    def started(self, staging: Path, pid: int) -> None:
        """Record agent `pid` of `staging`, here and with the reaper."""
        self._live[pid] = os.fsencode(str(staging))
        self._agents.add(pid)
        self.reaper.watch(staging, pid)

    async def ended(self, staging: Path, pid: int) -> list[int]:
        """End whatever agent `pid` of `staging` left running; return the pids killed.

        Waits for agents being started to be recorded, then blocks until the
        leftovers are gone (at most ~5 s): afterwards nothing of this attempt
        can write into `staging`. Processes of still-running agents are not
        touched: they are inside those agents' trees, not orch's children.
        """
        cancelled = False
        roots = self._leftovers(pid)
        if roots and self._spawning:  # some may be agents being started: let them be recorded
            try:
                await asyncio.shield(asyncio.gather(*(done.wait() for done in self._spawning)))
            except asyncio.CancelledError:  # sweep anyway, then pass it on
                cancelled = True
            roots = [p for p in roots if p not in self._agents]
        roots = [p for p in roots if not self._is_another_attempts(p, pid)]
        if _is_running(pid):  # the agent itself never outlives this call
            roots.append(pid)
        killed = kill_tree(roots, spare=self._agents)
        if not self.is_subreaper:
            killed = sorted(set(killed) | set(kill_tree(_marked(staging), spare=self._agents)))
        self._live.pop(pid, None)
        if _is_reaped(pid):  # a new process may get its pid: it must not be spared as an agent
            self._agents.discard(pid)
        self.reaper.forget(staging, pid)
        if cancelled:
            raise asyncio.CancelledError
        return killed

    def _leftovers(self, pid: int) -> list[int]:
        """orch's children that are neither live agents (nor `pid`) nor the reaper."""
        own = {pid, *self._live}
        if self.reaper.pid:
            own.add(self.reaper.pid)
        return [p for p in _children(os.getpid()) if p not in own]

    def _is_another_attempts(self, leftover: int, pid: int) -> bool:
        """True if `leftover` points into the staging directory of a live agent but `pid`.

        Such a process was orphaned by another attempt that is still running
        (e.g. it double-forked a helper); that attempt's end takes it.
        """
        for agent, staging in self._live.items():
            marker = b"\0ORCH_OUTPUT_DIR=" + staging + b"\0"
            if agent != pid and _points_into(leftover, marker, staging):
                return True
        return False

    def close(self) -> None:
        """Let the reaper go (every agent has ended by now)."""
        self.reaper.close()


def share_containment(backend: object, containment: Containment | None) -> Containment | None:
    """Give `backend` the process's one `containment` if it starts processes
    (defines `use_containment`), making it on first need.

    Returns:
        The containment, or None while no backend has needed one.
    """
    use_containment = getattr(backend, "use_containment", None)
    if not callable(use_containment):
        return containment
    if containment is None:
        containment = Containment()
    use_containment(containment)
    return containment


def _is_reaped(pid: int) -> bool:
    """True if no process `pid` exists any more, not even a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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
    if not roots:
        return []
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

    Every process whose environment names `staging` as ORCH_OUTPUT_DIR, with
    its whole tree (so the agent takes along children that cleared their
    environment). Not processes that merely have their cwd or a file there:
    that may be a person's shell or pager. Processes of other users, or that
    exit meanwhile, are skipped.

    Returns:
        The pids signalled, sorted.
    """
    return kill_tree(_marked(staging), spare=_children(os.getpid()))


def _marked(staging: Path) -> list[int]:
    """Pids whose environment names `staging` as ORCH_OUTPUT_DIR (not orch itself)."""
    marker = b"\0ORCH_OUTPUT_DIR=" + os.fsencode(str(staging)) + b"\0"
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    own = os.getpid()
    return [pid for pid in pids if pid != own and _points_into(pid, marker, None)]


def _points_into(pid: int, marker: bytes, inside: bytes | None) -> bool:
    """True if `pid`'s environ holds `marker`, or its cwd or an open file is under `inside`."""

    def under(link: str, inside: bytes) -> bool:
        try:
            target = os.readlink(os.fsencode(link))
        except OSError:
            return False
        return target == inside or target.startswith(inside + b"/")

    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            if marker in b"\0" + handle.read():
                return True
        if inside is None:
            return False
        if under(f"/proc/{pid}/cwd", inside):
            return True
        return any(under(f"/proc/{pid}/fd/{fd}", inside) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards)."""
    try:
        return _read(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _is_running(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def _children(pid: int) -> list[int]:
    """Children of process `pid`'s main thread.

    orch forks agents and the reaper from its main thread (the event loop's),
    and the kernel re-parents orphans to a subreaper's first live thread, the
    main one (find_alive_thread): one small read instead of a /proc scan.
    """
    try:
        return [int(p) for p in _read(f"/proc/{pid}/task/{pid}/children").split()]
    except FileNotFoundError:  # kernel without CONFIG_PROC_CHILDREN
        return _children_map().get(pid, [])
    except OSError:
        return []


def _read(path: str) -> bytes:
    """Read a small /proc file (unbuffered: several times cheaper than `open`)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


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
