"""Where attempts run. The seam a cluster executor plugs into.

The scheduler owns staging directories, checks and promotion on the shared
filesystem; an executor only runs one attempt of an agent and reports how it
ended. `LocalExecutor` runs it here, one backend instance per agent, under the
agent's own concurrency limit.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from orch.backends import AttemptResult, AttemptSpec, Backend, create_backend
from orch.project import AgentConfig


class Executor(Protocol):
    """Runs one attempt of an agent somewhere that shares the project's filesystem."""

    async def run(self, agent: AgentConfig, spec: AttemptSpec) -> AttemptResult:
        """Run `spec` with `agent`; cancelling must stop the agent before returning."""
        ...

    def limit_of(self, agent: AgentConfig) -> int | None:
        """Return the agent's current concurrency limit, if it has one."""
        ...

    async def aclose(self) -> None:
        """Release backends and connections."""
        ...


class LocalExecutor:
    """Runs attempts on this machine: one backend per agent, shared by partitions."""

    def __init__(self) -> None:
        self._backends: dict[str, Backend] = {}
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._sizes: dict[str, int] = {}

    def _backend(self, agent: AgentConfig) -> Backend:
        if agent.name not in self._backends:
            self._backends[agent.name] = create_backend(agent)
            limit = agent.settings.get("max_concurrency")
            if limit:
                self._limits[agent.name] = asyncio.Semaphore(int(limit))
                self._sizes[agent.name] = int(limit)
        return self._backends[agent.name]

    def limit_of(self, agent: AgentConfig) -> int | None:
        """Return the agent's `max_concurrency`, or None when unlimited."""
        limiter = getattr(self._backends.get(agent.name), "current_limit", None)
        if callable(limiter):
            return limiter()  # type: ignore[no-any-return]
        return self._sizes.get(agent.name)

    async def run(self, agent: AgentConfig, spec: AttemptSpec) -> AttemptResult:
        """Run `spec` with `agent`'s backend, within its `max_concurrency`."""
        backend = self._backend(agent)
        limit = self._limits.get(agent.name)
        if limit is None:
            return await backend.run(spec)
        async with limit:
            return await backend.run(spec)

    async def aclose(self) -> None:
        """Close every backend created."""
        for backend in self._backends.values():
            await backend.aclose()
        self._backends.clear()
