"""`DaskExecutor`: run `command` agents' attempts on a Dask cluster.

Each attempt of a `command` agent is one Dask task (`orch.executors.dask_worker.execute`)
in its staging directory on the shared filesystem. Staging, checks, promotion,
locks, events and admission (the per-agent limiter) stay here, so limits and
429 adaptation stay global; `openai` and rehearsal attempts run here through a
LocalExecutor sharing the same limiters, unless the agent says
`run_on_cluster: true`.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import logging
import os
import pickle
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orch.backends import AttemptResult, AttemptSpec
from orch.config.executor import ExecutorConfig
from orch.config.project import AgentConfig
from orch.errors import ConfigError, UsageError
from orch.executors import AgentLimiters, LocalExecutor
from orch.executors.dask_checks import WorkerChecks, describe
from orch.executors.job import AttemptJob, plain

#: Bound on a broadcast kill (`client.run`; 7 ms measured on a quiet cluster).
_KILL_WAIT_S = 10.0
#: How long after the attempt's own timeout the orchestrator stops waiting for
#: the worker to report it (the worker enforces the timeout itself).
_TIMEOUT_SLACK_S = 30.0


class DaskExecutor(WorkerChecks):
    """Runs attempts on the Dask cluster at `config.scheduler` (see the module doc).

    Args:
        config: The executor settings (scheduler address, latency_wait_s).
        project_root: The project root; every worker must see it at this path.
    """

    def __init__(self, config: ExecutorConfig, project_root: Path) -> None:
        self.config = config
        self.root = project_root
        self._admission = AgentLimiters()
        self._local = LocalExecutor(self._admission)
        self._client: Any = None
        self._token = uuid.uuid4().hex[:8]
        self._seq = itertools.count()
        #: Attempts submitted but not yet reported started by a worker: key -> on_start.
        self._waiting: dict[str, Callable[..., None]] = {}
        #: Attempts submitted and not yet reported finished: key -> the result, set by the worker's report.
        self._finished: dict[str, asyncio.Future[AttemptResult]] = {}
        #: Workers that passed `check_worker`: the only ones attempts are sent to.
        self.checked: set[str] = set()
        #: Workers that joined later and failed the check: address -> why (they get no attempts).
        self.refused: dict[str, str] = {}
        #: Each checked worker's resources, as the scheduler reports them.
        self.offers: dict[str, dict[str, float]] = {}
        #: Where worker events go (`report_to`); None: refusals are logged as warnings.
        self._report: Callable[..., None] | None = None
        #: Command agents whose command is looked up on the workers, not here (see `defer_command_checks`).
        self._commands: dict[str, AgentConfig] = {}
        self._checks: set[asyncio.Task[None]] = set()
        #: Each cluster agent's settings as plain containers, made once (see AttemptJob.of).
        self._settings: dict[str, tuple[Any, dict[str, Any], dict[str, float]]] = {}
        #: Attempts submitted and not yet started: key -> (the resources they need, the workers allowed).
        self._queued: dict[str, tuple[dict[str, float], frozenset[str]]] = {}
        #: Attempts a worker reported started and not yet finished: key -> the worker.
        self._running: dict[str, str] = {}
        #: Attempts failed here as `worker_lost` (their worker, or every worker that could run them, left).
        self._stranded: set[str] = set()

    async def start(self) -> None:
        """Connect, check every worker, kill agents a dead orchestrator left on them.

        Raises:
            ConfigError: the scheduler cannot be reached, no worker joins within
                `connect_timeout_s`, or a worker cannot see the project or runs
                another orch version (the message names the worker).
        """
        from distributed import Client

        from orch import __version__
        from orch.executors.dask_worker import check_worker, sweep_orphans

        logging.getLogger("distributed").setLevel(logging.ERROR)
        address, timeout_s = self.config.scheduler, self.config.connect_timeout_s
        # closed by aclose() on any failure, so no half-made client warns at exit
        self._client = Client(address, asynchronous=True, timeout=timeout_s, set_as_default=False)
        try:
            await asyncio.wait_for(self._client, timeout_s + 5)
            await self._client.wait_for_workers(1, timeout=timeout_s)
        except Exception as err:  # refused, timed out, or not a Dask scheduler at all (garbage replies)
            await self.aclose()
            raise ConfigError(
                f"cannot use the Dask cluster at {address}: {describe(err)}",
                f"start `dask scheduler` and `orch worker {address}` on each host, or run without --executor",
            ) from err
        try:
            reports = await self._client.run(check_worker, str(self.root), __version__)
        except Exception as err:  # e.g. a worker without orch installed cannot unpickle the check
            await self.aclose()
            raise ConfigError(
                f"cannot check the workers of {address}: {type(err).__name__}: {describe(err)}",
                f"start the workers with `orch worker {address}` where orch is installed",
            ) from err
        problems = [f"worker {w}: {why}" for w, why in sorted(reports.items()) if why]
        if problems:
            await self.aclose()
            raise ConfigError(
                "refusing to run on the Dask cluster: " + "; ".join(problems),
                "every worker needs the project at the same path and the same orch version",
            )
        await self._client.run(sweep_orphans, str(self.root), sorted(reports))
        self.checked = set(reports)
        await self._check_commands(address, sorted(reports))
        self._client.subscribe_topic(self._topic, self._on_started)
        # workers joining later are checked before any attempt goes to them (see _submit)
        self._client.subscribe_topic("all", self._on_cluster_event)
        with contextlib.suppress(Exception):  # joined between the check and the subscription
            identity = await self._client.scheduler.identity()
            self._note_offers(identity)
            for worker in set(identity.get("workers", {})) - self.checked:
                self._check_later(worker)

    @property
    def _topic(self) -> str:
        """The Dask event topic on which workers report this run's attempts starting and ending."""
        return f"orch-started-{self._token}"

    def _on_started(self, event: tuple[float, Any]) -> None:
        """Handle a worker's report: `{key, worker}` as an attempt starts, `{key, result}` as it ends.

        The end report carries the pickled result over the scheduler's event
        stream, which saves the gather round trip (client, scheduler, worker)
        that awaiting the future would cost per attempt.
        """
        message = event[1]
        key = str(message.get("key"))
        if "result" in message:
            finished = self._finished.get(key)
            if finished is not None and not finished.done():
                with contextlib.suppress(Exception):  # unreadable: the future's own result still comes
                    finished.set_result(pickle.loads(message["result"]))
            return
        if self._queued.pop(key, None) is not None:
            self._running[key] = str(message.get("worker"))
        on_start = self._waiting.pop(key, None)
        if on_start is not None:
            on_start(worker=message.get("worker"))

    def warm_up(self, agent: AgentConfig) -> None:
        """Warm up an agent that runs here (nothing to do for cluster agents)."""
        if not self._on_cluster(agent):
            self._local.warm_up(agent)

    def limit_of(self, agent: AgentConfig) -> int | None:
        """Return the agent's concurrency limit now (global across the cluster)."""
        return self._admission.limiter(agent).current_limit()

    async def run(
        self, agent: AgentConfig, spec: AttemptSpec, on_start: Callable[..., None] | None = None
    ) -> AttemptResult:
        """Run `spec`: on the cluster for a command agent, here otherwise.

        On the cluster, `on_start(worker=ADDRESS)` is called once the worker
        starts the attempt (not while it waits for a free slot).

        Raises:
            TimeoutError: the attempt ran past `spec.timeout_s` (its agent is stopped).
        """
        if not self._on_cluster(agent):
            return await self._local.run(agent, spec, on_start)
        if self._client is None:
            await self.start()

        async def call() -> AttemptResult:
            return await self._submit(agent, spec, on_start)

        result = await self._admission.admit(agent, spec, call)
        if result.error_class == "timeout":
            raise TimeoutError(result.error)
        if result.ok and self.config.latency_wait_s > 0:
            await asyncio.to_thread(wait_for_outputs, spec, self.config.latency_wait_s)
        return result

    async def _submit(
        self, agent: AgentConfig, spec: AttemptSpec, on_start: Callable[..., None] | None
    ) -> AttemptResult:
        """One Dask task for the attempt; released as soon as it resolves."""
        from distributed import KilledWorker

        from orch.executors.dask_worker import execute

        settings, needs = self._plain_settings(agent)
        if not self._can_run(needs, self.checked) and not await self._wait_for_worker(needs):
            return AttemptResult(False, self._no_worker(needs), "worker_lost")
        key = f"orch-{spec.stage}-{spec.partition}-{spec.attempt}-{self._token}-{next(self._seq)}"
        allowed = frozenset(self.checked)
        self._queued[key] = (needs, allowed)
        if on_start is not None:
            self._waiting[key] = on_start
        finished = self._finished[key] = asyncio.get_running_loop().create_future()
        future = self._client.submit(
            execute,
            AttemptJob.of(agent, spec, settings),
            key,
            self._topic,
            key=key,
            pure=False,
            resources=needs or None,
            workers=sorted(allowed),  # a worker that joined later: only once it passed the check
        )
        try:
            wait_s = spec.timeout_s + _TIMEOUT_SLACK_S if spec.timeout_s else None
            result = await _first_result(finished, future, wait_s)
            if key in self._stranded:  # its worker left: take the task off the scheduler, never rerun it
                await self._stop(future, spec)
                return result
            late = self._waiting.pop(key, None)
            if late is not None:  # the result overtook the worker's start report
                late(worker=result.worker)
            return result
        except KilledWorker as err:
            await self._stop(future, spec)
            return AttemptResult(False, f"worker lost while running the attempt: {err}", "worker_lost")
        except TimeoutError:
            await self._stop(future, spec)
            why = f"timeout after {spec.timeout_s:g}s (the worker did not report)"
            return AttemptResult(False, why, "timeout")
        except asyncio.CancelledError:
            await self._stop(future, spec)
            raise
        except OSError as err:  # the scheduler or a worker connection went away
            await self._stop(future, spec)
            return AttemptResult(False, f"dask: {type(err).__name__}: {err}", "worker_lost")
        except Exception as err:  # the task itself raised (an orch bug on the worker): this attempt only
            await self._stop(future, spec)
            return AttemptResult(False, f"dask task failed: {type(err).__name__}: {err}", "agent_error")
        finally:
            future.release()
            self._finished.pop(key, None)
            self._queued.pop(key, None)
            self._running.pop(key, None)
            self._stranded.discard(key)
            never = self._waiting.pop(key, None)
            if never is not None:  # failed or cancelled before a worker reported it started
                never()

    async def _wait_for_worker(self, needs: dict[str, float]) -> bool:
        """Wait up to `connect_timeout_s` for a checked worker offering `needs` (every one left)."""
        deadline = time.monotonic() + self.config.connect_timeout_s
        while not self._can_run(needs, self.checked) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return self._can_run(needs, self.checked)

    def _no_worker(self, needs: dict[str, float]) -> str:
        if not self.checked:
            return "no checked Dask worker is connected (every worker left, or the new ones failed the check)"
        wanted = ",".join(f"{name}={amount:g}" for name, amount in sorted(needs.items()))
        return (
            f"no checked Dask worker offers the agent's resources {wanted} within "
            f"{self.config.connect_timeout_s:g}s (start one: `orch worker SCHEDULER --resources {wanted}`)"
        )

    def _can_run(self, needs: dict[str, float], workers: Any) -> bool:
        """True if one of `workers` offers `needs` (a worker whose resources are unknown may)."""
        for worker in workers:
            offers = self.offers.get(worker)
            if offers is None or all(offers.get(name, 0) >= amount for name, amount in needs.items()):
                return True
        return False

    def _on_worker_left(self, worker: str) -> None:
        """Fail as `worker_lost` the attempts the departed `worker` ran, and the queued ones
        no checked worker can run any more.

        Dask would run a lost worker's task again elsewhere (its claim makes
        that run refuse) and keep a task waiting for ever once none of the
        workers it may go to and that offer its resources is left. Deciding
        here, and cancelling the task, needs no change to the scheduler's
        settings, which other clients of the cluster share. The retry submits
        the attempt afresh, in a fresh staging directory, to the workers
        checked by then.
        """
        lost = [(key, f"worker {worker} left while running the attempt")
                for key, where in self._running.items() if where == worker]  # fmt: skip
        why = f"every Dask worker that could run the attempt left before it started (last: {worker})"
        lost += [(key, why) for key, (needs, allowed) in self._queued.items()
                 if not self._can_run(needs, allowed & self.checked)]  # fmt: skip
        for key, reason in lost:
            finished = self._finished.get(key)
            if finished is not None and not finished.done():
                self._stranded.add(key)
                where = self._running.get(key)
                finished.set_result(AttemptResult(False, reason, "worker_lost", worker=where))

    def _plain_settings(self, agent: AgentConfig) -> tuple[dict[str, Any], dict[str, float]]:
        """The agent's settings as plain containers and the resources it needs (made once per agent)."""
        cached = self._settings.get(agent.name)
        if cached is None or cached[0] is not agent.settings:
            needs = {str(k): float(v) for k, v in dict(agent.settings.get("resources") or {}).items()}
            cached = self._settings[agent.name] = (agent.settings, plain(agent.settings), needs)
        return cached[1], cached[2]

    async def _stop(self, future: Any, spec: AttemptSpec) -> None:
        """Cancel the task and kill the attempt's processes on every worker (bounded)."""
        from orch.executors.dask_worker import kill_attempt

        with contextlib.suppress(Exception):
            await asyncio.shield(
                asyncio.wait_for(self._kill(future, kill_attempt, str(spec.work_dir)), _KILL_WAIT_S)
            )

    async def _kill(self, future: Any, kill_attempt: Any, staging: str) -> None:
        await self._client.cancel([future], force=True)
        await self._client.run(kill_attempt, staging)

    def _on_cluster(self, agent: AgentConfig) -> bool:
        return agent.backend == "command" or bool(agent.settings.get("run_on_cluster"))

    async def aclose(self) -> None:
        """Close local backends and the connection to the cluster."""
        await self._local.aclose()
        for task in list(self._checks):
            task.cancel()
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 10)


def require_distributed() -> None:
    """Raise UsageError unless dask's `distributed` package is installed."""
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise UsageError(
            "the dask executor needs dask and distributed, which are not installed",
            "pip install 'orch[dask]' (on this host and on every worker host)",
        )


async def _first_result(
    finished: asyncio.Future[AttemptResult], future: Any, wait_s: float | None
) -> AttemptResult:
    """Return the attempt's result from the worker's end report or from the Dask future,
    whichever comes first; wait at most `wait_s` seconds (None: no bound).

    Raises:
        TimeoutError: neither came within `wait_s`.
        KilledWorker, OSError, Exception: the future's own errors (the task failed).
    """
    awaiting = asyncio.ensure_future(future)
    try:
        await asyncio.wait([finished, awaiting], timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        if finished.done():
            return finished.result()
        if awaiting.done():
            result: AttemptResult = awaiting.result()
            return result
        raise TimeoutError
    finally:
        if not awaiting.done():
            awaiting.cancel()
            with contextlib.suppress(BaseException):
                await awaiting


def wait_for_outputs(spec: AttemptSpec, latency_wait_s: float) -> bool:
    """Poll (os.stat) until the expected outputs appear in the staging directory (blocking).

    A shared filesystem may show another host's files late. Waits at most
    `latency_wait_s` seconds; the expect rules then decide as usual.

    Returns:
        True if every `file` rule's file and every `glob` rule's minimum count appeared.
    """
    deadline = time.monotonic() + latency_wait_s
    while True:
        if all(_present(spec.work_dir, rule.file, rule.glob, rule.min_count) for rule in spec.expect):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _present(root: Path, file: str | None, pattern: str | None, min_count: int) -> bool:
    if file is not None:
        try:
            os.stat(root / file)
        except OSError:
            return False
        return True
    return len(glob.glob(str(root / str(pattern)), recursive=True)) >= min_count
