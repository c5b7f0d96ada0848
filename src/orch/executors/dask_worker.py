"""The worker side of the Dask executor: preload, attempt task, checks and kills.

`dask worker SCHEDULER --preload orch.executors.dask_worker` (what `orch worker` runs)
gives the worker orch's per-worker state (`dask_setup`) and its shutdown
clean-up (`dask_teardown`: the agents still running are killed). The
orchestrator calls the other functions here through `client.submit` and
`client.run`; they work on a worker started without the preload too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from orch.backends import AttemptResult, Backend
from orch.executors.job import AttemptJob, run_job
from orch.executors.processes import Containment, kill_orphans, share_containment

#: Worker task states in which a running attempt is no longer wanted.
_UNWANTED = frozenset({"cancelled", "released", "forgotten", "error"})


class WorkerState:
    """orch's state inside one Dask worker process.

    Attributes:
        backends: One backend per agent and settings, reused by every attempt on this
            worker; all share `containment`, whose reaper kills their agents if the worker dies.
        running: Staging directory (str) of each attempt running here, to the
            predicate saying whether its task is still wanted.
    """

    def __init__(self) -> None:
        self.backends: dict[str, Backend] = {}
        self.running: dict[str, Callable[[], bool]] = {}
        self.lock = threading.Lock()
        #: One per worker process, shared by every backend: each agent this process
        #: starts is its child, and a Containment of its own per backend would take
        #: another backend's live agents for leftovers (and kill them).
        self.containment: Containment | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def backend(self, job: AttemptJob) -> Backend:
        """Return this worker's backend for `job`'s agent and settings (made on first use)."""
        with self.lock:  # one backend per agent and settings per worker
            backend = self.backends.get(job.backend_key)
            if backend is None:
                from orch.backends import create_backend

                backend = self.backends[job.backend_key] = create_backend(job.agent())
                self.containment = share_containment(backend, self.containment)
            return backend

    def run_coroutine(self, coroutine: Coroutine[Any, Any, AttemptResult]) -> AttemptResult:
        """Run `coroutine` on this worker's one agent event loop and wait (blocking).

        One long-lived loop in its own thread, waiting for agents with pidfds,
        instead of a new loop (and a waiter thread per child) per attempt.
        """
        with self.lock:
            if self._loop is None:
                from orch.executors.processes import use_pidfd_watcher

                loop = asyncio.new_event_loop()
                use_pidfd_watcher(loop)
                threading.Thread(target=loop.run_forever, name="orch-agents", daemon=True).start()
                self._loop = loop
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


#: Set in the worker's environment, so its agents carry the worker's address.
WORKER_ENV = "ORCH_DASK_WORKER"


def _state(worker: Any) -> WorkerState:
    state = getattr(worker, "_orch_state", None)
    if state is None:
        state = worker._orch_state = WorkerState()
    try:
        address = worker.address
    except (AttributeError, ValueError):  # not listening yet (at preload)
        address = None
    if address and os.environ.get(WORKER_ENV) != address:  # not yet known at preload
        os.environ[WORKER_ENV] = str(address)  # its agents inherit it (see sweep_orphans)
    return state


def dask_setup(worker: Any) -> None:
    """Preload hook: give the worker orch's state before any attempt arrives."""
    _state(worker)


def dask_teardown(worker: Any) -> None:
    """Preload hook at shutdown: kill the agents still running here, let its reaper go."""
    state = _state(worker)
    for staging in list(state.running):
        kill_orphans(Path(staging))
    if state.containment is not None:
        state.containment.close()


def execute(job: AttemptJob, key: str, topic: str | None = None) -> AttemptResult:
    """Run one attempt on this worker (the Dask task; blocking, in a worker thread).

    Args:
        job: The attempt.
        key: This task's Dask key; once the scheduler stops wanting it
            (cancelled, or its client died) the agent is stopped.
        topic: The Dask event topic on which to report `{key, worker}` as the
            attempt starts (the orchestrator's `started` event names the worker)
            and `{key, result}` (pickled) as it ends, which spares the
            orchestrator a gather round trip; the task returns the result too.
    """
    from distributed import get_worker

    worker = get_worker()
    state = _state(worker)

    def is_wanted() -> bool:
        task = worker.state.tasks.get(key)
        return task is not None and task.state not in _UNWANTED

    staging = str(job.spec.work_dir)
    state.running[staging] = is_wanted
    if topic:
        worker.log_event(topic, {"key": key, "worker": str(worker.address)})
    try:
        result = run_job(job, state.backend(job), str(worker.address), is_wanted, state.run_coroutine)
        if topic:
            worker.log_event(topic, {"key": key, "result": pickle.dumps(result)})
        return result
    finally:
        state.running.pop(staging, None)


def check_worker(project_root: str, version: str) -> str | None:
    """Return why this worker cannot run the project's attempts, or None if it can.

    Called by the orchestrator on every worker when it connects (`client.run`).
    """
    from orch import __version__

    if __version__ != version:
        return f"runs orch {__version__}, the orchestrator runs orch {version}"
    if not os.path.isfile(os.path.join(project_root, "orch.yaml")):
        return f"cannot see the project at {project_root} (no orch.yaml there); is the shared FS mounted?"
    return None


def find_commands(
    project_root: str, wanted: list[tuple[str, str, str | None, dict[str, float]]], dask_worker: Any = None
) -> list[str]:
    """Return the agents of `wanted` this worker may run whose command it cannot find.

    Pre-flight on the workers (`client.run`): `wanted` holds (agent, command[0],
    the agent's PATH or None for the worker's, the resources it needs). An
    agent whose resources this worker does not offer never runs here, so it
    is not looked up.
    """
    from orch.engine.preflight import resolve_command

    offered = dict(dask_worker.state.total_resources) if dask_worker is not None else {}
    missing = []
    for name, argv0, path_env, resources in wanted:
        if dask_worker is not None and any(offered.get(r, 0) < n for r, n in resources.items()):
            continue
        if resolve_command(argv0, Path(project_root), path_env) is None:
            missing.append(name)
    return missing


def kill_attempt(staging: str) -> list[int]:
    """SIGKILL the processes of the attempt in `staging` on this host (broadcast by `client.run`)."""
    return kill_orphans(Path(staging))


def sweep_orphans(project_root: str, live_workers: list[str], dask_worker: Any = None) -> list[int]:
    """SIGKILL agents of `project_root` started by a Dask worker that no wanted task owns.

    Left by an orchestrator killed with -9 (its tasks were dropped, its agents
    kept running) or by a worker killed with -9 on this host. An agent is
    killed if its ORCH_OUTPUT_DIR is under `project_root` and it was started
    by this worker without a live attempt here, or by a worker not in
    `live_workers` (dead). Agents run by orch without Dask, other projects'
    agents and other live workers' agents are left alone.

    Returns:
        The pids signalled, sorted.
    """
    state = _state(dask_worker) if dask_worker is not None else WorkerState()
    me = os.fsencode(str(dask_worker.address if dask_worker is not None else ""))
    live = {os.fsencode(p) for p, is_wanted in list(state.running.items()) if is_wanted()}
    others = {os.fsencode(w) for w in live_workers} - {me}
    prefix = os.fsencode(os.path.join(project_root, ""))
    killed = []
    for pid, output_dir, started_by in _agent_dirs():
        if started_by is None or started_by in others or not output_dir.startswith(prefix):
            continue
        if started_by != me or output_dir not in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return sorted(killed)


def _agent_dirs() -> list[tuple[int, bytes, bytes | None]]:
    """(pid, ORCH_OUTPUT_DIR, ORCH_DASK_WORKER or None) of every readable process
    with an ORCH_OUTPUT_DIR (Linux /proc)."""
    found = []
    own = os.getpid()
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    for pid in pids:
        if pid == own:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue
        values = dict(entry.partition(b"=")[::2] for entry in environ.split(b"\0"))
        output_dir = values.get(b"ORCH_OUTPUT_DIR")
        if output_dir is not None:
            found.append((pid, output_dir, values.get(WORKER_ENV.encode())))
    return found


def worker_argv(
    scheduler: str, slots: int | None, resources: str | None, name: str | None = None
) -> list[str]:
    """Return the `dask worker` command line `orch worker` execs.

    One worker process (no nanny, so a killed worker is a lost worker, not a
    silent restart) with `slots` threads, each running one agent at a time,
    and orch's preload.

    Raises:
        UsageError: a bad scheduler address or resources not like `claude=4,codex=2`.
    """
    import sys

    from orch.config.executor import check_address
    from orch.errors import UsageError
    from orch.executors.dask import require_distributed

    address = check_address(scheduler, "SCHEDULER:", UsageError)
    require_distributed()
    argv = [sys.executable, "-m", "distributed.cli.dask_worker", address]
    argv += ["--nthreads", str(slots or os.cpu_count() or 1), "--nworkers", "1", "--no-nanny"]
    argv += ["--preload", "orch.executors.dask_worker", "--no-dashboard"]
    if resources:
        pairs = [p for p in resources.replace(",", " ").split() if p]
        for pair in pairs:
            key, _, value = pair.partition("=")
            if not key or not _is_positive(value):
                raise UsageError(
                    f"--resources: expected NAME=N pairs like claude=4,codex=2, got {pair!r}",
                    "name the agents' resources (their `resources:` in orch.yaml) and how many at once",
                )
        argv += ["--resources", " ".join(pairs)]
    if name:
        argv += ["--name", name]
    return argv


def _is_positive(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return value > 0 and value != float("inf")
