"""Adaptive concurrency (AIMD), request pacing and the cool-down gate of orch.executors.limits."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from orch.executors.limits import RETRY_AFTER_CAP_S, AdaptiveConcurrency, AgentLimiter, RequestPacer, Ticket


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _peak_in_flight(limit: AdaptiveConcurrency, tasks: int) -> int:
    peak = 0
    active = 0

    async def worker() -> None:
        nonlocal peak, active
        await limit.acquire()
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.001)
        active -= 1
        limit.release()

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return peak


def test_concurrency_never_exceeds_the_limit():
    limit = AdaptiveConcurrency(3)
    assert asyncio.run(_peak_in_flight(limit, 20)) == 3
    assert limit.in_use == 0


def test_waiters_are_admitted_first_come_first_served():
    async def scenario() -> list[int]:
        limit = AdaptiveConcurrency(1)
        order: list[int] = []
        await limit.acquire()

        async def waiter(n: int) -> None:
            await limit.acquire()
            order.append(n)
            limit.release()

        tasks = [asyncio.create_task(waiter(n)) for n in range(5)]
        await asyncio.sleep(0)
        limit.release()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


def test_overload_halves_once_per_window():
    limit = AdaptiveConcurrency(16)
    epoch = limit.epoch
    assert limit.on_overload(epoch) is True
    assert limit.limit == 8
    # Other attempts admitted in the same window report the same overload: no further halving.
    assert limit.on_overload(epoch) is False
    assert limit.limit == 8
    assert limit.on_overload(limit.epoch) is True
    assert limit.limit == 4


def test_limit_never_drops_below_one():
    limit = AdaptiveConcurrency(2)
    for _ in range(5):
        limit.on_overload(limit.epoch)
    assert limit.limit == 1


def test_successes_add_one_after_n_in_a_row_and_never_exceed_the_maximum():
    limit = AdaptiveConcurrency(4, increase_after=3)
    limit.on_overload(limit.epoch)
    assert limit.limit == 2
    for _ in range(2):
        limit.on_success()
    assert limit.limit == 2
    limit.on_success()
    assert limit.limit == 3
    for _ in range(30):
        limit.on_success()
    assert limit.limit == 4


def test_an_overload_resets_the_success_streak():
    limit = AdaptiveConcurrency(8, increase_after=3)
    limit.on_overload(limit.epoch)
    limit.on_success()
    limit.on_success()
    limit.on_overload(limit.epoch - 1)  # a stale window: no halving, but the streak restarts
    limit.on_success()
    limit.on_success()
    assert limit.limit == 4


def test_unbounded_concurrency_halves_from_what_is_in_flight():
    async def scenario() -> AdaptiveConcurrency:
        limit = AdaptiveConcurrency(None)
        for _ in range(10):
            await limit.acquire()
        limit.on_overload(limit.epoch)
        return limit

    limit = asyncio.run(scenario())
    assert limit.limit == 5


def test_a_growing_limit_admits_waiters():
    async def scenario() -> int:
        limit = AdaptiveConcurrency(2, increase_after=1)
        limit.on_overload(limit.epoch)
        await limit.acquire()
        waiter = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()
        limit.on_success()
        await asyncio.wait_for(waiter, 1)
        return limit.in_use

    assert asyncio.run(scenario()) == 2


def test_a_cancelled_waiter_leaks_no_slot():
    async def scenario() -> int:
        limit = AdaptiveConcurrency(1)
        await limit.acquire()
        waiter = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        limit.release()  # may grant the slot to the cancelled waiter; it must give it back
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.wait_for(limit.acquire(), 1)
        return limit.in_use

    assert asyncio.run(scenario()) == 1


def test_pacer_spaces_requests_evenly_at_the_rate():
    clock = FakeClock()
    pacer = RequestPacer(120, clock)  # one request per 0.5 s
    assert [pacer.reserve() for _ in range(4)] == [0.0, 0.5, 1.0, 1.5]
    clock.now += 10
    assert pacer.reserve() == 0.0


def test_pacer_never_allows_more_than_the_rate_in_a_minute():
    clock = FakeClock(0.0)
    pacer = RequestPacer(30, clock)
    starts = [clock.now + pacer.reserve() for _ in range(100)]
    assert sum(1 for s in starts if s < 60.0) == 30


def test_overload_closes_the_gate_for_retry_after():
    clock = FakeClock()
    limiter = AgentLimiter(8, clock=clock)
    assert limiter.record_overload(Ticket(0), 7.5) == 7.5
    assert limiter.resume_at == clock.now + 7.5
    assert limiter.current_limit() == 4


def test_overload_without_retry_after_doubles_the_cool_down_per_window_up_to_a_cap():
    clock = FakeClock()
    limiter = AgentLimiter(1024, clock=clock)
    cooldowns = []
    for _ in range(8):
        cooldowns.append(limiter.record_overload(Ticket(limiter.concurrency.epoch), None))
    assert cooldowns == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    limiter.record_success()
    assert limiter.record_overload(Ticket(limiter.concurrency.epoch), None) == 1.0


def test_record_maps_attempt_results_to_limiter_signals():
    limiter = AgentLimiter(8, increase_after=1, clock=FakeClock())
    limiter.record(Ticket(0), False, "http_5xx", None)  # a plain 500 says nothing about load
    limiter.record(Ticket(0), False, "checks", None)
    assert limiter.current_limit() == 8
    limiter.record(Ticket(0), False, "http_5xx", 2.0)  # a 503 with Retry-After is an overload
    assert limiter.current_limit() == 4
    limiter.record(Ticket(1), False, "http_429", None)
    assert limiter.current_limit() == 2
    limiter.record(Ticket(2), True, None, None)
    assert limiter.current_limit() == 3


def test_pace_waits_for_the_gate_with_jitter():
    async def scenario() -> float:
        limiter = AgentLimiter(4, rng=random.Random(1))
        limiter.record_overload(Ticket(0), 0.2)
        started = time.monotonic()
        await limiter.pace()
        return time.monotonic() - started

    waited = asyncio.run(scenario())
    assert 0.2 <= waited < 0.2 + 0.02 + 0.2  # cool-down, at most 10% jitter, scheduling slack


def test_requests_per_minute_paces_requests():
    async def scenario() -> float:
        limiter = AgentLimiter(None, requests_per_minute=600)  # one per 0.1 s
        started = time.monotonic()
        for _ in range(4):
            await limiter.pace()
        return time.monotonic() - started

    assert asyncio.run(scenario()) >= 0.3


@pytest.mark.parametrize("hostile", [float("inf"), float("nan"), float("-inf")])
def test_a_retry_after_that_is_not_a_finite_number_counts_as_none(hostile):
    limiter = AgentLimiter(8, clock=FakeClock())
    assert limiter.record_overload(Ticket(0), hostile) == 1.0  # the no-header cool-down


def test_a_huge_retry_after_is_capped_by_the_stage_backoff_cap_and_never_past_the_limiter_bound():
    clock = FakeClock()
    limiter = AgentLimiter(8, clock=clock)
    assert limiter.record_overload(Ticket(0), 100000.0, cap_s=60.0) == 60.0
    assert limiter.resume_at == clock.now + 60.0
    assert limiter.record_overload(Ticket(1), 100000.0) == RETRY_AFTER_CAP_S
    assert limiter.record_overload(Ticket(2), 100000.0, cap_s=float("inf")) == RETRY_AFTER_CAP_S
    assert limiter.record_overload(Ticket(3), -5.0, cap_s=60.0) == 0.0


def test_record_passes_the_cap_on():
    limiter = AgentLimiter(8, clock=FakeClock())
    limiter.record(Ticket(0), False, "http_429", 100000.0, 2.0)
    assert limiter.resume_at == 102.0
