"""A run's live state: its events folded, one at a time, into per-partition phases.

`RunProgress` is the live half of the read model (`orch.observe.snapshot`
joins it with the disk). It does no I/O except `RunProgress.from_log`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from orch.observe.events import Event, EventName, EventReader


class Phase(StrEnum):
    """A partition's phase in a run, as its events tell (the values are `--json` strings)."""

    QUEUED = "queued"
    RUNNING = "running"
    BACKING_OFF = "backing_off"
    DONE = "done"
    FAILED = "failed"
    BLOCKED = "blocked"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"
    HALTED = "halted"


ACTIVE_PHASES = frozenset({Phase.QUEUED, Phase.RUNNING, Phase.BACKING_OFF})

_FINAL_EVENT_PHASES = {
    EventName.PROMOTED: Phase.DONE,
    EventName.FAILED: Phase.FAILED,
    EventName.SKIPPED: Phase.SKIPPED,
    EventName.BLOCKED: Phase.BLOCKED,
    EventName.INTERRUPTED: Phase.INTERRUPTED,
}


@dataclass(slots=True)
class UsageTotals:
    """Tokens and cost summed over attempts; None until some attempt reported one.

    Values come from agents and are untrusted: non-numbers, booleans, NaN,
    infinities and negatives are ignored.
    """

    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    def add(self, usage: Any) -> None:
        """Add one event's `usage` object (`{input_tokens, output_tokens, cost_usd, ...}`)."""
        if not usage or not isinstance(usage, Mapping):
            return
        cost = _number(usage.get("cost_usd"))
        if cost is not None:
            self.cost_usd = (self.cost_usd or 0.0) + cost
        for name in ("input_tokens", "output_tokens"):
            tokens = _number(usage.get(name))
            if tokens is not None:
                setattr(self, name, (getattr(self, name) or 0) + int(tokens))

    @property
    def tokens(self) -> int | None:
        """Input plus output tokens, None if neither is known."""
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)

    def to_json(self) -> dict[str, Any]:
        """Return the known fields as a JSON-ready dict."""
        data = {
            "cost_usd": self.cost_usd,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }
        return {k: v for k, v in data.items() if v is not None}


def _number(value: Any) -> float | None:
    """Return a finite, non-negative number as float, else None (bools are not numbers)."""
    kind = type(value)
    if kind is int:
        value = float(value) if value < 2**1023 else math.inf
    elif kind is not float:
        return None
    return value if 0 <= value < math.inf else None  # NaN fails both comparisons


@dataclass(slots=True)
class PartitionProgress:
    """One partition's live state in a run (owned and updated by `RunProgress`).

    Attributes:
        stage: Stage name.
        partition: Partition id.
        phase: Its phase now.
        attempt: The latest attempt number seen (0 before the first start).
        agent: The agent of its latest attempt.
        reason: Why it started (the `reason` of its first `started`: "missing",
            "stale: ...", "forced"), or why it was skipped, blocked or halted.
        started_at: Unix time the running attempt started; None unless running.
        backoff_until: Unix time the next attempt may start while backing off.
        finished_at: Unix time it reached a final phase.
        duration_s: Seconds its promoted attempt took.
        error: The latest attempt error.
        error_class: The latest attempt error's class (`timeout`, `http_429`, ...).
        usage: Tokens and cost of its attempts in this run, as events report them.
    """

    stage: str
    partition: str
    phase: Phase = Phase.QUEUED
    attempt: int = 0
    agent: str | None = None
    reason: str | None = None
    started_at: float | None = None
    backoff_until: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None
    error: str | None = None
    error_class: str | None = None
    usage: UsageTotals = field(default_factory=UsageTotals)

    def elapsed_s(self, now: float) -> float | None:
        """Seconds the running attempt has run at Unix time `now`; None unless running."""
        if self.phase is not Phase.RUNNING or self.started_at is None:
            return None
        return round(max(0.0, now - self.started_at), 3)

    def to_json(self, now: float) -> dict[str, Any]:
        """Return a JSON-ready dict (elapsed computed at `now`)."""
        return {
            "stage": self.stage,
            "partition": self.partition,
            "phase": self.phase.value,
            "attempt": self.attempt,
            "agent": self.agent,
            "reason": self.reason,
            "elapsed_s": self.elapsed_s(now),
            "backoff_until": self.backoff_until,
            "duration_s": self.duration_s,
            "error": self.error,
            "error_class": self.error_class,
            "usage": self.usage.to_json(),
        }


@dataclass(frozen=True)
class Failure:
    """One failed attempt: `final` if the partition failed, else it was retried."""

    ts: float
    stage: str
    partition: str
    attempt: int | None
    error: str | None
    error_class: str | None
    final: bool


class RunProgress:
    """Folds one run's events into live per-partition state, incrementally.

    Feed events in log order with `apply`; a follower (watch, serve) feeds only
    new ones. Only partitions that have had an event are tracked: the others
    of the run are queued (`total` counts them all).

    Args:
        run_id: The run followed (informational; events are not filtered).
        recent: How many recent failures to keep.
    """

    def __init__(self, run_id: str | None = None, recent: int = 10) -> None:
        self.run_id = run_id
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.pid: int | None = None
        self.stages: tuple[str, ...] = ()
        self.total = 0
        self.finished = False
        self.ok: bool | None = None
        self.interrupt_requested = False
        self.halted: str | None = None
        self.halted_stages: dict[str, str] = {}
        self.partitions: dict[tuple[str, str], PartitionProgress] = {}
        self.agent_limits: dict[str, int] = {}
        self.failures: deque[Failure] = deque(maxlen=recent)
        self.barriers: dict[str, dict[str, Any]] = {}
        self.stage_counts: dict[str, dict[str, int]] = {}
        self.usage = UsageTotals()
        self.offset = 0
        self.last_ts: float | None = None
        self._phases: dict[tuple[str, Phase], int] = {}
        self._done_s = 0.0
        self._done = 0

    @classmethod
    def from_log(cls, path: Path, run_id: str | None = None) -> RunProgress:
        """Fold every complete event of an events.jsonl file (reads it in chunks)."""
        progress = cls(run_id)
        progress.apply_all(EventReader(path).read())
        return progress

    def apply_all(self, events: Iterable[Event]) -> None:
        """Apply events in order."""
        for event in events:
            self.apply(event)

    def apply(self, event: Event) -> None:
        """Apply one event; unknown names and malformed fields change nothing."""
        self.offset = max(self.offset, event.offset)
        self.last_ts = event.ts or self.last_ts
        handler = _HANDLERS.get(event.name) if isinstance(event.name, EventName) else None
        if handler is not None:
            handler(self, event)

    # -- queries ----------------------------------------------------------------------

    def phase_counts(self, stage: str | None = None) -> dict[str, int]:
        """Return `phase -> count` of tracked partitions (every phase present), for one stage or all."""
        counts = dict.fromkeys((p.value for p in Phase), 0)
        for (name, phase), n in self._phases.items():
            if stage is None or name == stage:
                counts[phase.value] += n
        return counts

    def running(self) -> list[PartitionProgress]:
        """Partitions whose attempt runs now, longest-running first."""
        running = [p for p in self.partitions.values() if p.phase is Phase.RUNNING]
        return sorted(running, key=lambda p: p.started_at or 0.0)

    def backing_off(self) -> list[PartitionProgress]:
        """Partitions waiting to retry, soonest first."""
        waiting = [p for p in self.partitions.values() if p.phase is Phase.BACKING_OFF]
        return sorted(waiting, key=lambda p: p.backoff_until or 0.0)

    @property
    def settled(self) -> int:
        """Partitions in a final phase (done, failed, blocked, skipped, interrupted, halted)."""
        active = sum(n for (_, phase), n in self._phases.items() if phase in ACTIVE_PHASES)
        return len(self.partitions) - active

    def eta_s(self) -> float | None:
        """Estimate the seconds left: remaining partitions x mean agent duration / parallelism.

        The mean is over attempts promoted in this run (`duration_s`), the
        parallelism is the number of attempts running now (at least 1). None
        without data, or once the run halted; 0.0 once it finished.
        """
        if self.finished:
            return 0.0
        if self.halted or not self._done or not self.total:
            return None
        remaining = max(0, self.total - self.settled)
        parallel = max(1, sum(n for (_, phase), n in self._phases.items() if phase is Phase.RUNNING))
        return round(remaining * (self._done_s / self._done) / parallel, 1)

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """Return the run's live state as plain dicts (partitions in event order)."""
        now = time.time() if now is None else now
        return {
            "run_id": self.run_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "finished": self.finished,
            "ok": self.ok,
            "pid": self.pid,
            "stages": list(self.stages),
            "total": self.total,
            "settled": self.settled,
            "interrupt_requested": self.interrupt_requested,
            "halted": self.halted,
            "halted_stages": dict(self.halted_stages),
            "phases": self.phase_counts(),
            "stage_phases": {s: self.phase_counts(s) for s in dict.fromkeys(s for s, _ in self._phases)},
            "stage_counts": self.stage_counts,
            "barriers": self.barriers,
            "agent_limits": dict(self.agent_limits),
            "usage": self.usage.to_json(),
            "eta_s": self.eta_s(),
            "running": [p.to_json(now) for p in self.running()],
            "failures": [_failure_json(f) for f in self.failures],
            "offset": self.offset,
        }

    # -- folding ------------------------------------------------------------------------

    def _partition(self, event: Event) -> PartitionProgress | None:
        if event.stage is None or event.partition is None:
            return None
        key = (event.stage, event.partition)
        progress = self.partitions.get(key)
        if progress is None:
            progress = self.partitions[key] = PartitionProgress(event.stage, event.partition)
            key = (progress.stage, progress.phase)
            self._phases[key] = self._phases.get(key, 0) + 1
        return progress

    def _move(self, progress: PartitionProgress, phase: Phase, ts: float) -> None:
        counts, old, new = self._phases, (progress.stage, progress.phase), (progress.stage, phase)
        counts[old] -= 1
        counts[new] = counts.get(new, 0) + 1
        progress.phase = phase
        if phase is not Phase.RUNNING:
            progress.started_at = None
        if phase is not Phase.BACKING_OFF:
            progress.backoff_until = None
        if phase not in ACTIVE_PHASES:
            progress.finished_at = ts

    def _on_run_started(self, event: Event) -> None:
        self.run_id = event.run_id or self.run_id
        self.started_at = event.ts
        pid, total, stages = event.get("pid"), event.get("partitions"), event.get("stages")
        self.pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
        self.total = total if isinstance(total, int) and not isinstance(total, bool) and total > 0 else 0
        self.stages = tuple(s for s in stages if isinstance(s, str)) if isinstance(stages, list) else ()

    def _on_started(self, event: Event) -> None:
        progress = self._partition(event)
        if progress is None:
            return
        self._move(progress, Phase.RUNNING, event.ts)
        progress.started_at = event.ts
        progress.attempt = event.attempt or progress.attempt + 1
        agent, limit, reason = event.get("agent"), event.get("limit"), event.get("reason")
        progress.agent = agent if isinstance(agent, str) else progress.agent
        if isinstance(reason, str) and (progress.reason is None or reason != "retry"):
            progress.reason = reason
        if progress.agent and isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            self.agent_limits[progress.agent] = limit

    def _on_retried(self, event: Event) -> None:
        progress = self._partition(event)
        if progress is None:
            return
        self._move(progress, Phase.BACKING_OFF, event.ts)
        backoff_s = _number(event.get("backoff_s"))
        progress.backoff_until = event.ts + backoff_s if backoff_s is not None else None
        self._attempt_ended(progress, event, final=False)

    def _on_final(self, event: Event) -> None:
        progress = self._partition(event)
        if progress is None:
            return
        phase = _FINAL_EVENT_PHASES[EventName(event.name)]
        self._move(progress, phase, event.ts)
        reason = event.get("reason")
        if phase in (Phase.SKIPPED, Phase.BLOCKED) and isinstance(reason, str):
            progress.reason = reason
        if phase is Phase.DONE:
            duration_s = _number(event.get("duration_s"))
            progress.duration_s = duration_s
            if duration_s is not None:
                self._done_s += duration_s
                self._done += 1
        if phase in (Phase.DONE, Phase.FAILED):
            self._attempt_ended(progress, event, final=phase is Phase.FAILED)

    def _attempt_ended(self, progress: PartitionProgress, event: Event, final: bool) -> None:
        progress.attempt = event.attempt or progress.attempt
        progress.usage.add(event.get("usage"))
        self.usage.add(event.get("usage"))
        if event.name is EventName.PROMOTED:
            return
        error, error_class = event.get("error"), event.get("error_class")
        progress.error = error if isinstance(error, str) else None
        progress.error_class = error_class if isinstance(error_class, str) else None
        self.failures.append(
            Failure(
                event.ts,
                progress.stage,
                progress.partition,
                event.attempt,
                progress.error,
                progress.error_class,
                final,
            )
        )

    def _on_halted(self, event: Event) -> None:
        reason = event.get("reason")
        reason = reason if isinstance(reason, str) else "halted"
        if event.stage is None:
            self.halted = reason
        else:
            self.halted_stages[event.stage] = reason
        # a partition waiting to retry checks the halt before its next attempt: it will not run
        for progress in self.backing_off():
            if event.stage is None or progress.stage == event.stage:
                self._move(progress, Phase.HALTED, event.ts)
                progress.reason = reason

    def _on_interrupt_requested(self, event: Event) -> None:
        self.interrupt_requested = True

    def _on_stage_finished(self, event: Event) -> None:
        counts = event.get("counts")
        if event.stage is not None and isinstance(counts, dict):
            self.stage_counts[event.stage] = {
                str(k): v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)
            }

    def _on_barrier(self, event: Event) -> None:
        if event.stage is not None:
            self.barriers[event.stage] = {
                "met": event.get("met") is True,
                "complete": _int_or_none(event.get("complete")),
                "total": _int_or_none(event.get("total")),
            }

    def _on_run_finished(self, event: Event) -> None:
        self.finished = True
        self.finished_at = event.ts
        self.ok = event.get("ok") is True


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _failure_json(failure: Failure) -> dict[str, Any]:
    return {
        "ts": failure.ts,
        "stage": failure.stage,
        "partition": failure.partition,
        "attempt": failure.attempt,
        "error": failure.error,
        "error_class": failure.error_class,
        "final": failure.final,
    }


_HANDLERS = {
    EventName.RUN_STARTED: RunProgress._on_run_started,
    EventName.STARTED: RunProgress._on_started,
    EventName.RETRIED: RunProgress._on_retried,
    EventName.PROMOTED: RunProgress._on_final,
    EventName.FAILED: RunProgress._on_final,
    EventName.SKIPPED: RunProgress._on_final,
    EventName.BLOCKED: RunProgress._on_final,
    EventName.INTERRUPTED: RunProgress._on_final,
    EventName.HALTED: RunProgress._on_halted,
    EventName.INTERRUPT_REQUESTED: RunProgress._on_interrupt_requested,
    EventName.STAGE_FINISHED: RunProgress._on_stage_finished,
    EventName.BARRIER: RunProgress._on_barrier,
    EventName.RUN_FINISHED: RunProgress._on_run_finished,
}
