"""Where attempts run. The seam a cluster executor plugs into.

The scheduler owns staging directories, checks and promotion on the shared
filesystem; an executor only runs one attempt of an agent and reports how it
ended. `LocalExecutor` runs it here, one backend instance and one
`AgentLimiter` (adaptive concurrency, requests per minute, cool-down after a
429) per agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from orch.backends import AttemptResult, AttemptSpec, Backend, create_backend
from orch.config.project import AgentConfig
from orch.executors.limits import AgentLimiter
from orch.executors.processes import Containment, share_containment


class Executor(Protocol):
    """Runs one attempt of an agent somewhere that shares the project's filesystem."""

    async def run(
        self, agent: AgentConfig, spec: AttemptSpec, on_start: Callable[[], None] | None = None
    ) -> AttemptResult:
        """Run `spec` with `agent`; call `on_start` when the attempt really starts.

        A cluster executor passes `worker=ADDRESS` to `on_start`.

        `spec.timeout_s` counts from then; on expiry raise TimeoutError. Cancelling
        must stop the agent before returning.
        """
        ...

    def limit_of(self, agent: AgentConfig) -> int | None:
        """Return the agent's current concurrency limit, if it has one."""
        ...

    def warm_up(self, agent: AgentConfig) -> None:
        """Start any slow set-up for `agent` now, without blocking (idempotent).

        Called when the run's first partition for `agent` is being prepared.
        """
        ...

    async def aclose(self) -> None:
        """Release backends and connections."""
        ...


class AgentLimiters:
    """Admits attempts per agent: one `AgentLimiter` each (concurrency, requests
    per minute, cool-down after a 429), in the orchestrator for every executor,
    so limits and 429 adaptation stay global however many hosts run attempts.

    Stage and run limits are the engine's (`orch.engine.policies.AdmissionPolicy`,
    waited on in `orch.engine.slots`); an attempt holds its run slot before it
    waits here.
    """

    def __init__(self) -> None:
        self._limiters: dict[str, AgentLimiter] = {}

    def limiter(self, agent: AgentConfig) -> AgentLimiter:
        """Return `agent`'s limiter, created from its settings on first use."""
        if agent.name not in self._limiters:
            concurrency = agent.settings.get("max_concurrency")
            rate = agent.settings.get("requests_per_minute")
            self._limiters[agent.name] = AgentLimiter(
                int(concurrency) if concurrency else None, float(rate) if rate else None
            )
        return self._limiters[agent.name]

    async def admit(
        self,
        agent: AgentConfig,
        spec: AttemptSpec,
        call: Callable[[], Awaitable[AttemptResult]],
        on_start: Callable[[], None] | None = None,
        paced: bool = True,
    ) -> AttemptResult:
        """Wait for `agent`'s limiter, call `on_start`, then `call()`; record how it ended.

        Args:
            paced: Pace once per attempt (False for a backend that paces each request).

        The limiter learns from the result: a success may raise the agent's
        concurrency, a 429 halves it and makes the agent cool down.
        """
        limiter = self.limiter(agent)
        async with limiter.attempt() as ticket:
            if paced:
                await limiter.pace()
            if on_start is not None:
                on_start()
            result = await call()
            cap_s = spec.retry_after_cap_s
            limiter.record(ticket, result.ok, result.error_class, result.retry_after_s, cap_s)
        return result


class LocalExecutor:
    """Runs attempts on this machine: one backend and one limiter per agent.

    A backend that sends several requests per attempt (the `openai` backend in
    tools mode) may define `use_limiter(limiter)`; it is then given the
    agent's limiter and calls `limiter.pace()` before each request. Otherwise
    the executor paces once per attempt. A backend that starts processes may
    define `use_containment(containment)`; all of them share one
    `orch.executors.processes.Containment`, which tells live agents from leftovers.
    A backend with slow set-up may define
    `warm_up()` to start it in the background (see `warm_up` below).

    Args:
        limiters: The agents' limiters to share (a DaskExecutor passes its own); new by default.
    """

    def __init__(self, limiters: AgentLimiters | None = None) -> None:
        self._backends: dict[str, Backend] = {}
        self._limiters = limiters or AgentLimiters()
        self._self_paced: set[str] = set()
        self._containment: Containment | None = None

    def _limiter(self, agent: AgentConfig) -> AgentLimiter:
        return self._limiters.limiter(agent)

    def _backend(self, agent: AgentConfig) -> Backend:
        if agent.name not in self._backends:
            backend = create_backend(agent)
            use_limiter = getattr(backend, "use_limiter", None)
            if callable(use_limiter):
                use_limiter(self._limiter(agent))
                self._self_paced.add(agent.name)
            self._containment = share_containment(backend, self._containment)
            self._backends[agent.name] = backend
        return self._backends[agent.name]

    def warm_up(self, agent: AgentConfig) -> None:
        """Create `agent`'s backend and let it start slow set-up in the background.

        The `openai` backend imports the SDK (about 0.6 s of CPU here,
        `python -X importtime -c "import openai"`) in a thread, overlapping
        the first partitions' locks and staging directories.
        """
        warm_up = getattr(self._backend(agent), "warm_up", None)
        if callable(warm_up):
            warm_up()

    def limit_of(self, agent: AgentConfig) -> int | None:
        """Return the agent's concurrency limit now (AIMD-adjusted), or None when unlimited."""
        return self._limiter(agent).current_limit()

    async def run(
        self, agent: AgentConfig, spec: AttemptSpec, on_start: Callable[[], None] | None = None
    ) -> AttemptResult:
        """Run `spec` with `agent`'s backend once the agent's limiter admits it.

        `on_start` is called at admission; `spec.timeout_s` runs from there
        (TimeoutError propagates, after the backend stopped the agent).
        """
        backend = self._backend(agent)

        async def call() -> AttemptResult:
            # the timeout starts once admitted: waiting out another attempt's
            # Retry-After must not use up this attempt's time
            if spec.timeout_s:
                return await asyncio.wait_for(backend.run(spec), spec.timeout_s)
            return await backend.run(spec)

        paced = agent.name not in self._self_paced
        return await self._limiters.admit(agent, spec, call, on_start, paced)

    async def aclose(self) -> None:
        """Close every backend created."""
        for backend in self._backends.values():
            await backend.aclose()
        self._backends.clear()
        if self._containment is not None:
            self._containment.close()
            self._containment = None
