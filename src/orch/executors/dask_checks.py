"""Which Dask workers may run attempts: the checks at connect and for workers that join later.

A worker gets attempts only after it passed `check_worker` (it sees the project
at the same path, runs the same orch version) and, for command agents checked
on the cluster, has their commands (`find_commands`). `DaskExecutor` inherits these.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orch.config.project import AgentConfig
from orch.errors import ConfigError


class WorkerChecks:
    """Checking workers as they connect and join; state shared with `DaskExecutor`."""

    root: Path
    _client: Any
    _commands: dict[str, AgentConfig]
    checked: set[str]
    refused: dict[str, str]
    offers: dict[str, dict[str, float]]
    _report: Callable[..., None] | None
    _checks: set[asyncio.Task[None]]

    async def aclose(self) -> None:  # pragma: no cover - DaskExecutor's
        raise NotImplementedError

    def _on_cluster(self, agent: AgentConfig) -> bool:  # pragma: no cover - DaskExecutor's
        raise NotImplementedError

    def _on_worker_left(self, worker: str) -> None:  # pragma: no cover - DaskExecutor's
        raise NotImplementedError

    def report_to(self, emit: Callable[..., None]) -> None:
        """Send worker events to `emit(name, **fields)` (the run's event log) from now on.

        Emits `worker_joined` at once for each worker checked so far, then
        `worker_joined` (`late: true`), `worker_refused` (`reason`) and
        `worker_left` as workers come and go.
        """
        self._report = emit
        for worker in sorted(self.checked):
            self.emit("worker_joined", worker=worker, resources=self.offers.get(worker, {}), late=False)

    def emit(self, name: str, **fields: Any) -> None:
        """Write a worker event to the run's event log (`report_to`); nothing before that."""
        if self._report is not None:
            self._report(name, **fields)

    def _note_offers(self, identity: dict[str, Any]) -> None:
        """Record the resources of the checked workers in the scheduler's `identity()`."""
        for worker, info in dict(identity.get("workers") or {}).items():
            if worker in self.checked and isinstance(info, dict):
                resources = info.get("resources") or {}
                self.offers[worker] = {str(k): float(v) for k, v in dict(resources).items()}

    def defer_command_checks(self, agents: list[AgentConfig]) -> None:
        """Look up these command agents' commands on the workers when connecting, not here.

        Pre-flight skips the orchestrator-side lookup for them; `start` runs it
        on every worker that offers the agent's resources and raises
        PreflightFailed (naming agent and worker) where it is missing.
        """
        self._commands = {a.name: a for a in agents if self._on_cluster(a) and a.backend == "command"}

    async def _check_commands(self, address: str | None, workers: list[str]) -> None:
        """Raise PreflightFailed if a worker that may run a command agent lacks its command."""
        if not self._commands:
            return
        from orch.engine.preflight import PreflightFailed
        from orch.executors.dask_worker import find_commands

        try:
            found = await self._client.run(find_commands, str(self.root), self._wanted(), workers=workers)
        except Exception as err:
            await self.aclose()
            raise ConfigError(
                f"cannot check the agents' commands on the workers of {address}: {describe(err)}",
                f"start the workers with `orch worker {address}` where orch is installed",
            ) from err
        missing: dict[str, list[str]] = {}
        for worker, names in sorted(found.items()):
            for name in names:
                missing.setdefault(name, []).append(worker)
        if not missing:
            return
        await self.aclose()
        lines = []
        for name, where in sorted(missing.items()):
            agent = self._commands[name]
            argv0 = agent.settings["command"][0]
            lines.append(
                f"agent {name}: command {argv0!r} not found on worker(s) {', '.join(where)} "
                f"(orch.yaml:{agent.line}: agents.{name}.command; looked up on the workers, which run it)"
            )
        raise PreflightFailed(
            f"pre-flight: {len(lines)} agent(s) cannot run on the Dask cluster; nothing was started:\n  "
            + "\n  ".join(lines),
            "install the command on every worker host that offers the agent's resources, or give its path",
        )

    @property
    def command_agents(self) -> list[str]:
        """Names of the agents given to `defer_command_checks` that run on the cluster."""
        return sorted(self._commands)

    def _wanted(self) -> list[tuple[str, str, str | None, dict[str, float]]]:
        """(agent, command[0], its PATH or None, its resources) per deferred command agent."""
        return [
            (a.name, str(a.settings["command"][0]), dict(a.settings.get("env", {})).get("PATH"),
             dict(a.settings.get("resources") or {}))
            for a in self._commands.values()
        ]  # fmt: skip

    def _on_cluster_event(self, event: tuple[float, Any]) -> None:
        """Scheduler events: check a worker that joins; forget one that leaves."""
        message = event[1]
        if not isinstance(message, dict):
            return
        worker = message.get("worker")
        if message.get("action") == "add-worker" and isinstance(worker, str):
            self._check_later(worker)
        elif message.get("action") == "remove-worker" and worker in self.checked:
            self.checked.discard(worker)
            self.offers.pop(worker, None)
            self.emit("worker_left", worker=worker)
            self._on_worker_left(worker)

    def _check_later(self, worker: str) -> None:
        task = asyncio.ensure_future(self._check_new(worker))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _check_new(self, worker: str) -> None:
        """Check a worker that joined after connecting; only a passing one gets attempts."""
        from orch import __version__
        from orch.executors.dask_worker import check_worker, sweep_orphans

        try:
            reports = await self._client.run(check_worker, str(self.root), __version__, workers=[worker])
            why = reports.get(worker, "did not answer the check")
            if not why and self._commands:
                why = await self._command_problem(worker)
        except Exception as err:  # e.g. orch missing there: the check cannot even be unpickled
            why = f"cannot be checked: {type(err).__name__}: {describe(err)}"
        if why:
            self.refused[worker] = why
            if self._report is None:  # not running yet: no event log to tell
                logging.getLogger("orch").warning("Dask worker %s gets no attempts: %s", worker, why)
            self.emit("worker_refused", worker=worker, reason=why)
            return
        identity: dict[str, Any] = {}
        with contextlib.suppress(Exception):  # agents a dead worker left on that host, if any
            identity = await self._client.scheduler.identity()
            live = set(identity.get("workers", {})) | {worker}
            await self._client.run(sweep_orphans, str(self.root), sorted(live), workers=[worker])
        self.checked.add(worker)
        self._note_offers(identity)
        self.emit("worker_joined", worker=worker, resources=self.offers.get(worker, {}), late=True)

    async def _command_problem(self, worker: str) -> str | None:
        from orch.executors.dask_worker import find_commands

        found = await self._client.run(find_commands, str(self.root), self._wanted(), workers=[worker])
        names = found.get(worker) or []
        return f"lacks the command of agent(s) {', '.join(names)}" if names else None


def describe(err: BaseException) -> str:
    """An exception in one line: its message, else its class name."""
    return str(err) or type(err).__name__
