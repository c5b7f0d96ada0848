"""A picklable attempt job and how a worker runs it: claim, run, flush, report.

What crosses to a Dask worker is an `AttemptJob` (plain frozen data, no
mappingproxy) and what comes back is an `AttemptResult`. The worker never
promotes: staging, checks and promotion stay in the orchestrator.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from orch.backends import AttemptResult, AttemptSpec, Backend
from orch.config.frozen import FrozenDict
from orch.config.project import AgentConfig

#: Created exclusively in the staging directory's `.orch/` before the agent starts.
CLAIM = "claim"
#: How often a running job asks whether it is still wanted (seconds).
_POLL_S = 0.2


@dataclass(frozen=True)
class AttemptJob:
    """One attempt of one partition, as sent to a worker.

    Attributes:
        agent_name: The agent's name in orch.yaml.
        backend: The agent's backend (`command` on workers).
        settings: The agent's validated settings, as a plain dict.
        spec: The attempt (staging path, prompt file, out dir, timeout_s).
    """

    agent_name: str
    backend: str
    settings: dict[str, Any]
    spec: AttemptSpec

    @classmethod
    def of(cls, agent: AgentConfig, spec: AttemptSpec, settings: dict[str, Any] | None = None) -> AttemptJob:
        """Return the job for `spec` with `agent` (settings copied into plain containers).

        Args:
            settings: `agent.settings` already made plain (an executor keeps one per agent).
        """
        return cls(agent.name, agent.backend, plain(agent.settings) if settings is None else settings, spec)

    @functools.cached_property
    def backend_key(self) -> str:
        """Identifies the agent and its settings: a worker shares one backend per key
        (two projects, or an edited orch.yaml, may use one agent name differently).
        Computed once per job, on the worker."""
        return json.dumps([self.agent_name, self.backend, self.settings], sort_keys=True, default=str)

    def agent(self) -> AgentConfig:
        """Rebuild the agent record on the worker."""
        return AgentConfig(self.agent_name, self.backend, FrozenDict(self.settings))


def plain(value: Any) -> Any:
    """Return `value` with mappings (mappingproxy too) made dicts, recursively: picklable plain data."""
    if isinstance(value, dict | MappingProxyType):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(plain(v) for v in value)
    return value


def claim(staging: Path, owner: str) -> bool:
    """Create `staging/.orch/claim` exclusively (O_EXCL); False if it exists already.

    The claim is what stops a re-executed task (Dask reruns a task whose
    worker died) from starting a second agent in the same staging directory.
    """
    path = staging / ".orch" / CLAIM
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, f"{owner}\n".encode())
    finally:
        os.close(fd)
    return True


def run_job(
    job: AttemptJob,
    backend: Backend,
    owner: str,
    is_wanted: Callable[[], bool] = lambda: True,
    run_coroutine: Callable[[Coroutine[Any, Any, AttemptResult]], AttemptResult] = asyncio.run,
) -> AttemptResult:
    """Run `job` here (blocking): claim its staging directory, run, report.

    Nothing needs flushing: the agent has exited, so every file it wrote is
    closed, and NFS's close-to-open consistency makes closed files visible to
    the next open on another host (`latency_wait` covers filesystems that lag
    further; a host-wide `sync` would charge each attempt for all pending writes).

    Args:
        backend: The backend for the job's agent and settings (a Dask worker keeps one
            per `AttemptJob.backend_key`, all sharing one Containment: `WorkerState.backend`).
        owner: Who runs it (the worker's address), written in the claim and the result.
        is_wanted: Polled every 0.2 s; once False (the task was cancelled or its
            client died) the agent is stopped (TERM, grace, KILL).
        run_coroutine: Runs the attempt's coroutine to completion (a worker
            passes its long-lived event loop; a new loop per attempt by default).

    Returns:
        The backend's result with `worker` set; `worker_lost` without running
        anything if the directory was claimed already; `timeout` (with
        `spec.timeout_s`) after stopping the agent; `interrupted` if unwanted.
    """
    spec = job.spec
    if not claim(spec.work_dir, owner):
        return AttemptResult(
            False,
            f"staging directory {spec.work_dir.name} was already claimed (a re-executed task); not run",
            "worker_lost",
            worker=owner,
        )
    result = run_coroutine(_supervise(backend, spec, is_wanted))
    return dataclasses.replace(result, worker=owner)


async def _supervise(backend: Backend, spec: AttemptSpec, is_wanted: Callable[[], bool]) -> AttemptResult:
    """Run the backend with the timeout; stop it if the job is no longer wanted."""
    task = asyncio.ensure_future(backend.run(spec))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + spec.timeout_s if spec.timeout_s else None
    while not task.done():
        wait_s = _POLL_S if deadline is None else max(0.0, min(_POLL_S, deadline - loop.time()))
        await asyncio.wait([task], timeout=wait_s)
        if task.done():
            break
        timed_out = deadline is not None and loop.time() >= deadline
        if timed_out or not is_wanted():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if timed_out:
                return AttemptResult(False, f"timeout after {spec.timeout_s:g}s", "timeout")
            return AttemptResult(False, "cancelled by the orchestrator", "interrupted")
    return task.result()
