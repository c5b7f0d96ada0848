"""The asyncio side of admission: run slots per stage and run-wide, and prepare-ahead slots.

Whether an attempt may run is decided in one place, `AdmissionPolicy` (sized by
the pure rules `stage_limit` and `run_limit` of `orch.engine.policies`); here
attempts wait for it, first come first served within a stage. An agent's own
limit (AIMD after 429s, requests per minute) is the executor's `AgentLimiters`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from orch.config.stages import Stage
from orch.engine.policies import AdmissionPolicy, run_limit, stage_limit


class Slots:
    """Run slots of one run.

    Waiting attempts are let in in arrival order whenever the policy admits
    them: a freed slot of one stage never waits behind an attempt of a stage
    that is full, and within a stage the first to wait is the first to run.

    Args:
        single_stage: The run covers one stage (`--max-parallel` then sets the stage's limit).
        option_max_parallel: `--max-parallel`, or None.
        project_max_parallel: orch.yaml's top-level `max_parallel`, or None.
    """

    def __init__(
        self, single_stage: bool, option_max_parallel: int | None, project_max_parallel: int | None
    ) -> None:
        self.single_stage = single_stage
        self.option_max_parallel = option_max_parallel
        self.policy = AdmissionPolicy({}, run_limit(project_max_parallel, option_max_parallel, single_stage))
        self._waiting: collections.deque[tuple[str, asyncio.Future[None]]] = collections.deque()
        self._ahead: dict[str, asyncio.Semaphore] = {}

    def limit(self, stage: Stage) -> int:
        """Return how many of `stage`'s partitions run at once."""
        return stage_limit(stage.max_parallel, self.option_max_parallel, self.single_stage)

    @contextlib.asynccontextmanager
    async def run_slot(self, stage: Stage) -> AsyncIterator[None]:
        """Hold one run slot of `stage` (and one run-wide slot, if the run has a limit)."""
        await self._enter(stage)
        try:
            yield
        finally:
            self.policy.release(stage.name)
            self._wake()

    def ahead(self, stage: Stage) -> asyncio.Semaphore:
        """How many of the stage's partitions may be prepared (locked, staged) and not yet running."""
        if stage.name not in self._ahead:
            self._ahead[stage.name] = asyncio.Semaphore(self.limit(stage))
        return self._ahead[stage.name]

    async def _enter(self, stage: Stage) -> None:
        """Wait until the policy admits one more attempt of `stage`, and count it."""
        name = stage.name
        if name not in self.policy.stage_limits:
            self.policy.set_stage_limit(name, self.limit(stage))
        # After every release all who fit were let in, so nobody of this stage
        # waits if it fits now: going first keeps the stage's order.
        if self.policy.can_admit(name):
            self.policy.admit(name)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (name, waiter)
        self._waiting.append(entry)
        try:
            await waiter
        except BaseException:  # cancelled (interrupt, timeout) while waiting
            if waiter.done() and not waiter.cancelled():
                self.policy.release(name)  # let in just before the cancellation arrived
                self._wake()
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(entry)
            raise

    def _wake(self) -> None:
        """Let in, in arrival order, every waiting attempt the policy now admits."""
        for entry in list(self._waiting):
            if self.policy.is_run_full():
                return
            name, waiter = entry
            if waiter.done():  # cancelled; its task removes it
                continue
            if self.policy.can_admit(name):
                self._waiting.remove(entry)
                self.policy.admit(name)
                waiter.set_result(None)
