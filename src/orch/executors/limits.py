"""Per-agent rate limits: adaptive concurrency (AIMD), requests per minute, cool-downs.

One `AgentLimiter` per agent per run, owned by the executor. It combines:

* a concurrency limit that adapts (AIMD): it starts at the agent's
  `max_concurrency` (unbounded when unset), halves on an overload signal — a
  429, or a 5xx carrying Retry-After (a 503, RFC 9110 §10.2.3) — at most once
  per window (attempts admitted before the last decrease do not halve it
  again, as TCP reduces once per round trip), grows by one after
  `increase_after` consecutive successes, and stays within
  [1, max_concurrency];
* a request rate (`requests_per_minute`), paced evenly like a token bucket of
  capacity one (GCRA: "generic cell rate algorithm", ITU-T I.371), so no
  minute ever holds more than the limit;
* a cool-down gate: an overload closes it until Retry-After has passed (or,
  without the header, 1 s doubling per consecutive overload up to 30 s), and
  every new attempt and every paced request of the agent waits there, with a
  little jitter so waiters do not return all at once.

Why a 429 storm cannot burn a partition's retries faster than the backoff
allows: orch, not the SDK, retries, so a 429 ends the attempt that received
it, with `retry_after_s` from the header; the scheduler's backoff is
`max(jitter, retry_after_s)`. Retrying inside the backend instead would hide
failures from the attempt records and could spin until the stage timeout. What
stops the storm is that the limiter turns one 429 into back-pressure for the
whole agent: only attempts already in flight can fail, every other attempt
waits at the gate instead of being refused, the concurrency halves so fewer
requests are exposed next time, and a retried attempt passes the same gate.
A partition therefore spends at most one retry per cool-down window.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

#: Default consecutive successes before the concurrency limit grows by one.
INCREASE_AFTER = 10
#: Cool-down after an overload without Retry-After: base, doubled per repeat, capped.
COOLDOWN_BASE_S = 1.0
COOLDOWN_CAP_S = 30.0
#: Longest cool-down honoured from a Retry-After header when the caller gives
#: no cap (the scheduler passes the stage's `backoff.cap`); NaN, infinities
#: and garbage count as no header at all.
RETRY_AFTER_CAP_S = 3600.0
#: Jitter added to each gate wait: uniform(0, min(JITTER_CAP_S, JITTER_SHARE * wait)).
JITTER_SHARE = 0.1
JITTER_CAP_S = 1.0


class AdaptiveConcurrency:
    """A FIFO semaphore whose size adapts by AIMD between 1 and `max_limit`.

    Args:
        max_limit: The ceiling (the agent's `max_concurrency`); None leaves the
            limit unbounded until the first overload, which sets it to half
            the attempts then in flight.
        increase_after: Consecutive successes that add one to the limit.
    """

    def __init__(self, max_limit: int | None, increase_after: int = INCREASE_AFTER) -> None:
        if max_limit is not None and max_limit < 1:
            raise ValueError(f"max_limit must be >= 1, got {max_limit}")
        self.max_limit = max_limit
        self.increase_after = max(1, increase_after)
        self.limit: int | None = max_limit
        self.in_use = 0
        self.epoch = 0
        self._streak = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def _has_room(self) -> bool:
        return self.limit is None or self.in_use < self.limit

    async def acquire(self) -> int:
        """Wait for a slot (first come, first served); return the current epoch."""
        if self._has_room() and not self._waiters:
            self.in_use += 1
            return self.epoch
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just before the cancellation arrived
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(future)
            raise
        return self.epoch

    def release(self) -> None:
        """Give a slot back and admit waiters while there is room."""
        self.in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._has_room():
            future = self._waiters.popleft()
            if not future.done():
                self.in_use += 1
                future.set_result(None)

    def on_success(self) -> None:
        """Count a success; after `increase_after` in a row, add one to the limit."""
        self._streak += 1
        if self.limit is None or self._streak < self.increase_after:
            return
        self._streak = 0
        if self.max_limit is None or self.limit < self.max_limit:
            self.limit += 1
            self._wake()

    def on_overload(self, epoch: int) -> bool:
        """Halve the limit, once per window; return True if it was halved now.

        Args:
            epoch: The epoch the overloaded attempt was admitted in; an attempt
                admitted before the last decrease does not decrease again.
        """
        self._streak = 0
        if epoch != self.epoch:
            return False
        base = self.limit if self.limit is not None else max(self.in_use, 1)
        self.limit = max(1, base // 2)
        self.epoch += 1
        return True


class RequestPacer:
    """Spaces requests evenly at `per_minute` (GCRA with a burst of one).

    Each caller reserves the next free instant and sleeps until then, so
    waiters need no polling and a cancelled waiter only wastes its own slot.
    """

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError(f"per_minute must be > 0, got {per_minute}")
        self.interval_s = 60.0 / per_minute
        self._clock = clock
        self._next = 0.0

    def reserve(self) -> float:
        """Reserve the next request slot; return how long to wait for it (seconds)."""
        now = self._clock()
        start = max(now, self._next)
        self._next = start + self.interval_s
        return start - now

    async def acquire(self) -> None:
        """Wait until this request may be sent."""
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass
class Ticket:
    """An admitted attempt: the concurrency epoch it started in."""

    epoch: int


class AgentLimiter:
    """Concurrency, request rate and cool-down for one agent (see module docstring).

    Args:
        max_concurrency: The agent's `max_concurrency`, or None for unbounded.
        requests_per_minute: The agent's `requests_per_minute`, or None.
        increase_after: Consecutive successes before the limit grows by one.
        rng: Random source for jitter (seedable in tests).
        clock: Monotonic clock in seconds (fakeable in tests).
    """

    def __init__(
        self,
        max_concurrency: int | None = None,
        requests_per_minute: float | None = None,
        *,
        increase_after: int = INCREASE_AFTER,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.concurrency = AdaptiveConcurrency(max_concurrency, increase_after)
        self.pacer = RequestPacer(requests_per_minute, clock) if requests_per_minute else None
        self.resume_at = 0.0
        self.overloads = 0
        self._rng = rng or random.Random()
        self._clock = clock

    def current_limit(self) -> int | None:
        """Return the concurrency limit now (None when unbounded)."""
        return self.concurrency.limit

    @contextlib.asynccontextmanager
    async def attempt(self) -> AsyncIterator[Ticket]:
        """Hold one concurrency slot for the duration of an attempt."""
        epoch = await self.concurrency.acquire()
        try:
            yield Ticket(epoch)
        finally:
            self.concurrency.release()

    async def pace(self) -> None:
        """Wait for the cool-down gate, then for the request rate; call before each request."""
        while True:
            wait_s = self.resume_at - self._clock()
            if wait_s <= 0:
                break
            jitter_s = self._rng.uniform(0, min(JITTER_CAP_S, JITTER_SHARE * wait_s))
            await asyncio.sleep(wait_s + jitter_s)
        if self.pacer is not None:
            await self.pacer.acquire()

    def record_success(self) -> None:
        """An attempt succeeded: count it towards growing the limit."""
        self.overloads = 0
        self.concurrency.on_success()

    def record_overload(
        self, ticket: Ticket, retry_after_s: float | None, cap_s: float | None = None
    ) -> float:
        """The server refused for load: halve concurrency, close the gate; return the cool-down (s).

        Args:
            ticket: The overloaded attempt's ticket.
            retry_after_s: The server's Retry-After, or None (then 1 s doubling
                per consecutive overload window, up to 30 s). Not a finite
                number counts as None; negative counts as 0.
            cap_s: Longest cool-down (the stage's `backoff.cap`); at most
                `RETRY_AFTER_CAP_S` whatever is passed.
        """
        if self.concurrency.on_overload(ticket.epoch):
            self.overloads += 1
        if retry_after_s is not None and not math.isfinite(retry_after_s):
            retry_after_s = None
        limit_s = RETRY_AFTER_CAP_S
        if cap_s is not None and math.isfinite(cap_s):
            limit_s = min(max(cap_s, 0.0), RETRY_AFTER_CAP_S)
        if retry_after_s is not None:
            cooldown_s = min(max(retry_after_s, 0.0), limit_s)
        else:
            cooldown_s = min(COOLDOWN_CAP_S, COOLDOWN_BASE_S * 2 ** max(self.overloads - 1, 0))
        self.resume_at = max(self.resume_at, self._clock() + cooldown_s)
        return cooldown_s

    def record(
        self,
        ticket: Ticket,
        ok: bool,
        error_class: str | None,
        retry_after_s: float | None,
        cap_s: float | None = None,
    ) -> None:
        """Update the limiter from one attempt's result.

        Success grows the limit; `http_429`, and `http_5xx` with a Retry-After,
        are overloads; any other failure leaves the limiter as it is (it says
        nothing about load). `cap_s` bounds the cool-down (see `record_overload`).
        """
        if ok:
            self.record_success()
        elif error_class == "http_429" or (error_class == "http_5xx" and retry_after_s is not None):
            self.record_overload(ticket, retry_after_s, cap_s)
