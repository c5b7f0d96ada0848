"""Group commit of passing attempts: promotions that wait together reach the disk with one flush."""

from __future__ import annotations

import asyncio
from pathlib import Path

from orch.store.manifest import Manifest
from orch.store.staging import promote_many


class Promoter:
    """Group commit: promotions that wait together reach the disk with one flush.

    While one batch is being made durable and renamed into place (in a worker
    thread, see `orch.store.staging.promote_many`), new promotions queue; the next batch
    takes them all. Under load a batch holds dozens of partitions; alone, a
    promotion waits for nothing but its own flush.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pending: list[tuple[Path, Path, Manifest, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def promote(self, staging: Path, out_dir: Path, manifest: Manifest) -> None:
        """Promote `staging` to `out_dir` with `manifest`; raise the exception that stopped it.

        A batch that fails fails each of its waiters; the next promotions still run.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((staging, out_dir, manifest, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        await asyncio.shield(future)  # a cancelled waiter does not cancel the batch

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            items = [(staging, out, manifest) for staging, out, manifest, _ in batch]
            errors: list[Exception | None]
            try:
                errors = await asyncio.to_thread(promote_many, self.root, items)
            except Exception as err:  # a batch that raises fails each of its waiters
                errors = [err] * len(batch)
            for (_, _, _, future), error in zip(batch, errors, strict=True):
                if not future.done():
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)
