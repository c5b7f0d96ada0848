"""How the Dask executor takes an attempt's result: the worker's end report or the
future, whichever comes first (orch.executors.dask._first_result), bounded."""

from __future__ import annotations

import asyncio
import pickle
from typing import Any

import pytest

from orch.backends import AttemptResult
from orch.executors.dask import _first_result

OK = AttemptResult(True, worker="tcp://w:1")


async def never() -> AttemptResult:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def soon(value: Any) -> AttemptResult:
    await asyncio.sleep(0.01)
    if isinstance(value, BaseException):
        raise value
    return value  # type: ignore[no-any-return]


def test_the_end_report_wins_and_the_future_is_left_alone() -> None:
    async def main() -> tuple[AttemptResult, asyncio.Task[AttemptResult]]:
        finished: asyncio.Future[AttemptResult] = asyncio.get_running_loop().create_future()
        finished.set_result(pickle.loads(pickle.dumps(OK)))
        waiting = asyncio.ensure_future(never())
        return await _first_result(finished, waiting, 5), waiting

    result, waiting = asyncio.run(main())
    assert result == OK
    assert waiting.cancelled()


def test_the_future_answers_when_no_report_comes() -> None:
    async def main() -> AttemptResult:
        finished: asyncio.Future[AttemptResult] = asyncio.get_running_loop().create_future()
        return await _first_result(finished, soon(OK), 5)

    assert asyncio.run(main()) == OK


def test_the_futures_error_is_raised() -> None:
    async def main() -> AttemptResult:
        finished: asyncio.Future[AttemptResult] = asyncio.get_running_loop().create_future()
        return await _first_result(finished, soon(OSError("connection closed")), 5)

    with pytest.raises(OSError, match="connection closed"):
        asyncio.run(main())


def test_neither_within_the_bound_is_a_timeout() -> None:
    async def main() -> AttemptResult:
        finished: asyncio.Future[AttemptResult] = asyncio.get_running_loop().create_future()
        return await _first_result(finished, never(), 0.05)

    with pytest.raises(TimeoutError):
        asyncio.run(main())
