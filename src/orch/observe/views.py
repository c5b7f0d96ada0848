"""Turn plans, statuses, reports and run summaries into tables and JSON data.

Pure presentation: functions return rows and dicts; `print_table` writes a
rich table to the console it is given (stdout, from the CLI).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from orch.engine.plan import PartitionState, Planner, Status

if TYPE_CHECKING:
    from orch.engine.runtime import RunSummary

STATUS_ORDER = [s.value for s in Status]


def print_table(
    console: Any, title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Print a table: a rich table on a terminal, aligned plain columns otherwise
    (no colour, no trailing blanks: easy to grep, cut and diff)."""
    cells = [[v if type(v) is str else "" if v is None else str(v) for v in row] for row in rows]
    if console.is_terminal:
        console.print(_rich_table(title, columns, cells, console.width), markup=False)
        return
    by_column = list(zip(*cells, strict=True)) if cells else [()] * len(columns)
    widths = [
        max(len(c), max(map(len, values), default=0)) for c, values in zip(columns, by_column, strict=True)
    ]
    line = "  ".join(f"%-{w}s" for w in widths)  # each cell padded to its width, as str.ljust
    lines = [title] if title else []
    lines += [(line % tuple(row)).rstrip() for row in [list(columns), *cells]]
    console.file.write("\n".join(lines) + "\n")


#: Cells up to this long never wrap (statuses, actions, counts, sizes).
SHORT_CELL = 12
#: The first column (partition or stage id) keeps up to this many characters whole.
ID_WIDTH = 48
#: A wrapping column is never squeezed below this many characters.
MIN_WRAP = 16


def _rich_table(title: str | None, columns: Sequence[str], cells: list[list[str]], width: int) -> Any:
    """A rich table at most `width` characters wide that never splits a word.

    The id column and short cells stay on one line (an id longer than
    `ID_WIDTH` ends in an ellipsis); longer cells wrap between words, an
    over-long word is cut with an ellipsis, and only the last column folds (a
    long path or error). Columns that cannot fit are left out, and the caption
    names them.
    """
    from rich import box
    from rich.table import Table

    widths = column_widths(columns, cells, width)
    hidden = [c for c, w in zip(columns, widths, strict=True) if w == 0]
    caption = f"not shown at this width: {', '.join(hidden)} (see --json)" if hidden else None
    table = Table(
        title=title,
        title_justify="left",
        caption=caption,
        caption_justify="left",
        highlight=False,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    kept = [i for i, w in enumerate(widths) if w]
    for i in kept:
        table.add_column(
            columns[i],
            width=widths[i],
            no_wrap=i == 0 or widths[i] <= SHORT_CELL,
            overflow="fold" if i == kept[-1] and i > 0 else "ellipsis",
        )
    for row in cells:
        table.add_row(*(row[i] for i in kept))
    return table


def column_widths(columns: Sequence[str], cells: list[list[str]], width: int) -> list[int]:
    """Return each column's width (0: left out) so that a table fits `width` characters.

    Columns keep their natural width when everything fits. Otherwise the first
    column (capped at `ID_WIDTH`) and short columns keep theirs, and the longer
    ones share what is left in proportion to their natural width, at least
    `MIN_WRAP` each; while that is still too wide, the last column is left out.
    """
    natural = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    count = len(columns)
    while True:
        room = width - 2 * (count - 1)  # two spaces between columns, as in plain output
        if sum(natural[:count]) <= room:
            return natural[:count] + [0] * (len(columns) - count)
        widths = [min(natural[0], ID_WIDTH), *natural[1:count]]
        flexible = [i for i in range(1, count) if natural[i] > SHORT_CELL]
        left = room - sum(w for i, w in enumerate(widths) if i not in flexible)
        for i, share in _share_out(left, {i: natural[i] for i in flexible}).items():
            widths[i] = share
        if sum(widths) <= room or count <= 2:
            return widths + [0] * (len(columns) - count)
        count -= 1


def _share_out(room: int, natural: dict[int, int]) -> dict[int, int]:
    """Share `room` characters among columns: those narrower than an equal share
    keep their natural width, the rest split what remains, at least `MIN_WRAP` each."""
    result: dict[int, int] = {}
    pending = sorted(natural, key=lambda i: natural[i])
    while pending:
        fair = room // len(pending)
        if natural[pending[0]] <= fair:
            first = pending.pop(0)
            result[first] = natural[first]
            room -= natural[first]
            continue
        for n, i in enumerate(pending):
            result[i] = max(MIN_WRAP, room // len(pending) + (1 if n < room % len(pending) else 0))
        break
    return result


def print_json(console: Any, data: Any) -> None:
    """Print `data` as indented JSON with sorted keys.

    orjson writes it (100,000 plan rows: ~0.1 s, where the json module's
    indenting encoder takes ~1.5 s); values it refuses (integers past 64 bits,
    non-string keys) fall back to the json module. The two differ only in how
    they spell some floats (1e-05 / 0.00001), never in the values.
    """
    import orjson

    file = console.file
    try:
        raw = orjson.dumps(
            data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE, default=str
        )
    except (TypeError, orjson.JSONEncodeError):
        file.write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")
        return
    buffer = getattr(file, "buffer", None)
    if buffer is None:
        file.write(raw.decode())
        return
    file.flush()  # the bytes go straight to the binary stream, after any text before them
    buffer.write(raw)
    buffer.flush()


def plan_action(state: PartitionState) -> str:
    """Return what `orch stage run` would do: run, skip, wait, held or kept."""
    status = state.status
    if status is Status.COMPLETE:
        return "skip" if state.kept is None else "kept"
    if state.kept is not None:
        return "kept"
    if state.is_held:
        return "held"
    if state.waiting_on:
        return "wait"
    return "run"


def plan_rows(states: Sequence[PartitionState]) -> list[list[str]]:
    """Rows of `orch plan STAGE`: partition, status, action, why, output."""
    return [[s.id, s.status.value, plan_action(s), s.reason, s.out_dir] for s in states]


def plan_json(stage: str, states: Sequence[PartitionState]) -> dict[str, Any]:
    """JSON of a stage's plan."""
    return {
        "stage": stage,
        "partitions": [
            {
                "id": s.id,
                "status": s.status.value,
                "action": plan_action(s),
                "reason": s.reason,
                "out_dir": s.out_dir,
                "source": s.source,
                "fingerprint": s.fingerprint_value,
            }
            for s in states
        ],
        "counts": counts(states),
    }


def counts(states: Iterable[PartitionState]) -> dict[str, int]:
    """Return `status -> count` with every status present (zeros included)."""
    result = dict.fromkeys(STATUS_ORDER, 0)
    for state in states:
        result[state.status.value] += 1
    return result


def status_overview(planner: Planner) -> list[dict[str, Any]]:
    """Per stage: name, partitions, and counts by status (upstream first)."""
    overview = []
    for name in planner.ws.project.stages:
        states = planner.stage_states(name)
        overview.append({"stage": name, "partitions": len(states), "counts": counts(states)})
    return overview


def status_rows(planner: Planner, states: Sequence[PartitionState]) -> list[dict[str, Any]]:
    """Per partition: status, attempts, duration, tokens, cost, last error."""
    rows = []
    tokens_of: dict[int, tuple[dict[str, Any], int | None]] = {}  # usage records are often shared
    for s in states:
        facts = s.manifest_facts()
        usage = facts.usage if facts else {}
        known = tokens_of.get(id(usage))
        if known is None or known[0] is not usage:
            tokens = None
            if usage.get("input_tokens") is not None or usage.get("output_tokens") is not None:
                tokens = (usage.get("input_tokens") or 0) + (usage.get("output_tokens") or 0)
            known = tokens_of[id(usage)] = (usage, tokens)
        pid, status = s.id, s.status
        if planner.has_archived(s.stage, pid):
            numbers = {n for n, _ in planner.archived(s.partition)}
            if facts:
                numbers.add(facts.attempt)
            attempts = len(numbers)
            error = s.last_error or current_error(planner, s)
        else:  # the common case, at 100k: no archived attempt to count or read
            attempts = 1 if facts else 0
            error = s.last_error or (None if status is Status.COMPLETE else current_error(planner, s))
        rows.append(
            {
                "id": pid,
                "status": status.value,
                "attempts": attempts,
                "duration_s": facts.duration_s if facts else None,
                "tokens": known[1],
                "cost_usd": usage.get("cost_usd"),
                "last_error": error.get("error") if error else None,
                "reason": s.reason,
                "worker": facts.worker if facts else None,
            }
        )
    return rows


def usage_cells(usage: dict[str, Any]) -> list[str]:
    """Return `[tokens, cost]` cells of a usage total ("" where none was reported)."""
    tokens = (usage.get("input_tokens") or 0) + (usage.get("output_tokens") or 0)
    cost = usage.get("cost_usd") or 0.0
    return [str(tokens) if tokens else "", f"${cost:.4f}" if cost else ""]


def current_error(planner: Planner, state: PartitionState) -> dict[str, Any] | None:
    """The latest failed attempt's error if it belongs to the current state, else None.

    A failed partition's own error counts; so does an attempt that failed
    after the outputs on disk were promoted (a forced or other-agent rerun).
    An old error beside newer complete outputs is history, not state
    (`orch show` lists it among the attempts).
    """
    if state.last_error is not None:
        return state.last_error
    if state.status is Status.COMPLETE and not planner.has_archived(state.stage, state.id):
        return None
    if state.manifest is None or (state.status is Status.COMPLETE and not planner.archived(state.partition)):
        return None
    error = planner.last_error(state.partition)
    number = (error or {}).get("n")
    if error is None or not isinstance(number, int) or number <= state.manifest.attempt:
        return None
    return error


SUMMARY_COLUMNS = [
    "stage",
    "partitions",
    "completed now",
    "up to date",
    "failed",
    "blocked",
    "other",
    "tokens",
    "cost",
]
DETAIL_COLUMNS = ["stage", "partition", "status", "attempts", "why"]


def summary_rows(summary: RunSummary) -> list[list[str]]:
    """Rows of the end-of-run table: one per stage, counts by outcome."""
    rows = []
    for stage in dict.fromkeys(o.stage for o in summary.outcomes):
        outcomes = [o for o in summary.outcomes if o.stage == stage]
        by = {
            s: sum(1 for o in outcomes if o.status == s)
            for s in ("complete", "up-to-date", "failed", "blocked")
        }
        other = len(outcomes) - sum(by.values())
        usages = [o.usage for o in outcomes if o.usage]
        tokens = sum((u.input_tokens or 0) + (u.output_tokens or 0) for u in usages)
        cost = sum(u.cost_usd or 0.0 for u in usages)
        rows.append(
            [
                stage,
                str(len(outcomes)),
                str(by["complete"]),
                str(by["up-to-date"]),
                str(by["failed"]),
                str(by["blocked"]),
                str(other),
                str(tokens) if tokens else "",
                f"{cost:.4f}" if cost else "",
            ]
        )
    return rows


def detail_rows(summary: RunSummary) -> list[list[str]]:
    """Rows for partitions that did not end complete: what happened and why."""
    return [
        [o.stage, o.partition, o.status, str(o.attempts), o.reason]
        for o in summary.outcomes
        if o.status not in ("complete", "up-to-date")
    ]


def summary_json(summary: RunSummary) -> dict[str, Any]:
    """JSON of a run summary."""
    return {
        "run_id": summary.run_id,
        "ok": summary.ok,
        "interrupted": summary.interrupted,
        "halted": summary.halted,
        "duration_s": summary.duration_s,
        "cost_usd": summary.cost_usd,
        "events": str(summary.events_path) if summary.events_path else None,
        "counts": summary_counts(summary),
        "partitions": [
            {
                "stage": o.stage,
                "id": o.partition,
                "status": o.status,
                "reason": o.reason,
                "attempts": o.attempts,
                "duration_s": o.duration_s,
                "usage": o.usage.to_json() if o.usage else {},
            }
            for o in summary.outcomes
        ],
    }


def summary_counts(summary: RunSummary) -> dict[str, int]:
    """Return `outcome status -> count` for the outcomes present."""
    result: dict[str, int] = {}
    for o in summary.outcomes:
        result[o.status] = result.get(o.status, 0) + 1
    return dict(sorted(result.items()))
