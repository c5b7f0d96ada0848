"""How `orch watch` looks: a `WatchView` as plain lines or a rich renderable, and event lines.

Formatting only: no file, process or clock access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orch.observe.display import WORKER_EVENTS, worker_text
from orch.observe.events import Event, EventName

if TYPE_CHECKING:
    from orch.observe.watch import StageLine, WatchView

# Rows shown for running partitions.
MAX_RUNNING_ROWS = 12


def format_seconds(seconds: float | None) -> str:
    """Return `1h02m`, `3m05s` or `12s`; `-` for None."""
    if seconds is None:
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_money(cost: float | None, budget: float | None) -> str:
    """Return `$0.42` or `$0.42 of $5.00 (8%)`; `-` when neither is known."""
    if cost is None and budget is None:
        return "-"
    text = f"${cost or 0.0:.2f}"
    if budget:
        text += f" of ${budget:.2f} ({100 * (cost or 0.0) / budget:.0f}%)"
    return text


def format_limits(limits: dict[str, int | None]) -> str:
    """Return `fake=4, openai=unlimited`."""
    return ", ".join(f"{a}={'unlimited' if n is None else n}" for a, n in sorted(limits.items()))


def stage_text(line: StageLine) -> str:
    """One stage line as plain text."""
    parts = [
        f"{line.name}: {line.done}/{line.total} done",
        f"{line.running} running",
        f"{line.queued} queued",
        f"{line.backing_off} backing off",
        f"{line.failed} failed",
        f"{line.stale} stale",
    ]
    if line.cost_usd is not None or line.budget_usd is not None:
        parts.append(f"cost {format_money(line.cost_usd, line.budget_usd)}")
    return ", ".join(parts)


def header_text(view: WatchView) -> str:
    """The run line: id, state, elapsed, ETA, cost and tokens against the budget."""
    parts = [f"run {view.run_id}: {view.state}", f"elapsed {format_seconds(view.elapsed_s)}"]
    if view.state == "running":
        parts.append(f"ETA {format_seconds(view.eta_s)}")
    parts.append(f"cost {format_money(view.cost_usd, view.budget_usd)}")
    parts.append(f"tokens {view.tokens if view.tokens is not None else '-'}")
    if view.state == "interrupted":
        parts.append("the orchestrator is gone (killed?); `orch run` resumes")
    if view.halted:
        parts.append(f"halted: {view.halted}")
    return ", ".join(parts)


def render_plain(view: WatchView) -> list[str]:
    """Return the summary as plain lines (non-TTY output and the final screen)."""
    lines = [header_text(view)]
    lines += [f"  {stage_text(s)}" for s in view.stages]
    for r in view.running[:MAX_RUNNING_ROWS]:
        lines.append(
            f"  running {r.stage}/{r.partition} #{r.attempt} {format_seconds(r.elapsed_s)} ({r.reason})"
        )
    if len(view.running) > MAX_RUNNING_ROWS:
        lines.append(f"  ... and {len(view.running) - MAX_RUNNING_ROWS} more running")
    if view.agent_limits:
        limits = format_limits(view.agent_limits)
        lines.append(f"  agent limits: {limits}")
    lines += [f"  failed {f}" for f in view.failures]
    return lines


def render_rich(view: WatchView) -> Any:
    """Return a rich renderable of the screen: header, stage table, running, limits, failures."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    style = {"running": "bold cyan", "finished": "bold green", "failed": "bold red"}.get(
        view.state, "bold yellow"
    )
    parts: list[Any] = [Text(header_text(view), style=style)]
    stages = Table(box=None, pad_edge=False)
    for column in ("stage", "done", "running", "queued", "backing off", "failed", "stale", "cost"):
        stages.add_column(column, justify="left" if column == "stage" else "right")
    for s in view.stages:
        stages.add_row(
            s.name,
            f"{s.done}/{s.total}",
            str(s.running),
            str(s.queued),
            str(s.backing_off),
            Text(str(s.failed), style="red" if s.failed else ""),
            str(s.stale),
            format_money(s.cost_usd, s.budget_usd),
        )
    parts.append(stages)
    if view.running:
        running = Table(box=None, pad_edge=False, title="running", title_justify="left")
        for column in ("partition", "attempt", "agent", "elapsed", "why"):
            running.add_column(column)
        for r in view.running[:MAX_RUNNING_ROWS]:
            running.add_row(
                f"{r.stage}/{r.partition}",
                str(r.attempt),
                r.agent or "-",
                format_seconds(r.elapsed_s),
                r.reason,
            )
        parts.append(running)
        if len(view.running) > MAX_RUNNING_ROWS:
            parts.append(Text(f"... and {len(view.running) - MAX_RUNNING_ROWS} more running"))
    if view.agent_limits:
        limits = format_limits(view.agent_limits)
        parts.append(Text(f"agent limits: {limits}"))
    for failure in view.failures:
        parts.append(Text(f"failed {failure}", style="red"))
    return Group(*parts)


def event_text(event: Event) -> str | None:
    """One plain line for an event worth telling, else None."""
    where = f"{event.stage}/{event.partition}" if event.partition else (event.stage or "")
    name = event.name
    if name is EventName.STARTED:
        return f"started {where} #{event.attempt} ({event.get('reason') or 'missing'})"
    if name is EventName.PROMOTED:
        return f"done {where} #{event.attempt}"
    if name in (EventName.RETRIED, EventName.FAILED):
        verb = "retry" if name is EventName.RETRIED else "failed"
        error = f"{event.get('error_class') or 'error'}: {event.get('error') or ''}"
        return f"{verb} {where} #{event.attempt}: {error}"
    if name in (EventName.HALTED, EventName.BLOCKED, EventName.INTERRUPTED):
        return f"{name} {where}: {event.get('reason') or ''}".rstrip(": ")
    if name is EventName.BARRIER:
        return f"barrier {where}: {'met' if event.get('met') is True else 'not met'}"
    if name is EventName.RUN_FINISHED:
        return f"run finished: {'ok' if event.get('ok') is True else 'not ok'}"
    if name in WORKER_EVENTS:
        return worker_text({**event.fields, "event": str(name)})
    return None
