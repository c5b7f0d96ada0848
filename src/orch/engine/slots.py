"""The asyncio side of admission: run slots per stage and run-wide, and prepare-ahead slots.

The sizes come from the pure rules in `orch.engine.policies` (`stage_limit`,
`run_limit`); asyncio semaphores keep waiters in start order. An agent's own
limit (AIMD after 429s, requests per minute) is the executor's limiter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from orch.config.stages import Stage
from orch.engine.policies import run_limit, stage_limit


class Slots:
    """Run slots of one run.

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
        limit = run_limit(project_max_parallel, option_max_parallel, single_stage)
        self._run: asyncio.Semaphore | None = None if limit is None else asyncio.Semaphore(limit)
        self._stage: dict[str, asyncio.Semaphore] = {}
        self._ahead: dict[str, asyncio.Semaphore] = {}

    def limit(self, stage: Stage) -> int:
        """Return how many of `stage`'s partitions run at once."""
        return stage_limit(stage.max_parallel, self.option_max_parallel, self.single_stage)

    @contextlib.asynccontextmanager
    async def run_slot(self, stage: Stage) -> AsyncIterator[None]:
        """Hold one run slot of `stage` (and one run-wide slot, if the run has a limit)."""
        limit = self._stage_semaphore(stage)
        if self._run is not None:
            async with self._run, limit:
                yield
        else:
            async with limit:
                yield

    def ahead(self, stage: Stage) -> asyncio.Semaphore:
        """How many of the stage's partitions may be prepared (locked, staged) and not yet running."""
        if stage.name not in self._ahead:
            self._ahead[stage.name] = asyncio.Semaphore(self.limit(stage))
        return self._ahead[stage.name]

    def _stage_semaphore(self, stage: Stage) -> asyncio.Semaphore:
        if stage.name not in self._stage:
            self._stage[stage.name] = asyncio.Semaphore(self.limit(stage))
        return self._stage[stage.name]
