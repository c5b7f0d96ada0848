"""Read tokens, cost and agent-reported errors from headless agent CLI output.

Parsers for `claude -p --output-format json` (one result object) and
`codex exec --json` (JSONL events). Both take the attempt's whole
`.orch/agent.log` (stdout and stderr interleaved) and skip what is not JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from orch.backends import Usage

#: `usage:` parser names accepted by the command backend.
PARSERS = ("claude-json", "codex-json", "none")
_ERROR_CHARS = 300
#: Reported numbers at or above these bounds are rejected as unknown. No real
#: attempt reads or writes 10**12 tokens (a thousand times a million-token
#: context, every turn) or costs 10**6 USD; both bounds sit far below the
#: 64-bit limit of JSON writers (orjson refuses larger integers).
MAX_TOKENS = 10**12
MAX_COST_USD = 10**6


@dataclass(frozen=True)
class AgentReport:
    """What an agent CLI said about its own run.

    Attributes:
        usage: Tokens and cost, or None when the output held no usage.
        error: The agent's own error message when it reported failure
            (claude `is_error: true`, codex `turn.failed` / a final `error`), else None.
        found: Whether the output held the expected JSON at all.
    """

    usage: Usage | None = None
    error: str | None = None
    found: bool = False


def parse_report(parser: str, text: str) -> AgentReport:
    """Parse `text` with the named parser (`claude-json`, `codex-json` or `none`)."""
    if parser == "claude-json":
        return parse_claude_json(text)
    if parser == "codex-json":
        return parse_codex_json(text)
    return AgentReport()


def json_objects(text: str) -> Iterator[dict[str, Any]]:
    """Yield every JSON object in `text` that starts at the beginning of a line.

    Handles one object per line (JSONL) and pretty-printed objects spanning
    lines; other lines (progress, warnings on stderr) are skipped.
    """
    decoder = json.JSONDecoder()
    position = 0
    length = len(text)
    while position < length:
        end = text.find("\n", position)
        end = length if end == -1 else end
        line_start = position
        while line_start < end and text[line_start] in " \t\r":
            line_start += 1
        if line_start < end and text[line_start] == "{":
            try:
                value, stop = decoder.raw_decode(text, line_start)
            except ValueError:
                position = end + 1
                continue
            if isinstance(value, dict):
                yield value
            next_line = text.find("\n", stop)
            position = length if next_line == -1 else next_line + 1
            continue
        position = end + 1


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _shown(value: Any) -> str:
    """A short, always-printable description of a reported value."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, str):  # never echoed: it could carry anything, a secret included
        return f"a string of {len(value)} characters"
    plain = isinstance(value, bool | int | float) or value is None
    text = repr(value) if plain else type(value).__name__
    return text if len(text) <= 40 else text[:39] + "…"


def check_tokens(value: Any, name: str, warnings: list[str]) -> int | None:
    """Return `value` if it is a whole number in [0, MAX_TOKENS), else None with a warning.

    Absent (None) is unknown without a warning. A float with no fraction
    (`12.0`) counts as its integer. Bools, strings, NaN, infinities,
    negatives and values past the bound are rejected, never raised.

    Args:
        value: The number as reported (any JSON value).
        name: The field, for the warning (e.g. `input_tokens`).
        warnings: Receives one line per rejected value.
    """
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_TOKENS:
        return value
    warnings.append(f"{name}: reported {_shown(value)}, not a whole number in [0, 1e12); recorded as unknown")
    return None


def check_cost(value: Any, name: str, warnings: list[str]) -> tuple[float | None, bool]:
    """Return (`value` as USD, False) if finite and in [0, MAX_COST_USD), else (None, True) with a warning.

    Absent (None) is `(None, False)`: not reported, not rejected.
    """
    if value is None:
        return None, False
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, int) and 0 <= value < MAX_COST_USD:
            return float(value), False
        if isinstance(value, float) and math.isfinite(value) and 0 <= value < MAX_COST_USD:
            return value, False
    warnings.append(f"{name}: reported {_shown(value)}, not a cost in [0, 1e6) USD; recorded as unknown")
    return None, True


def checked_usage(source: str, tokens: Mapping[str, Any], cost_usd: Any = None) -> Usage:
    """Return a Usage from reported values, each checked (see `check_tokens`, `check_cost`).

    Args:
        source: Who reported the numbers, prefixed to each warning (e.g. `claude`).
        tokens: Usage token and turn fields (`input_tokens`, `num_turns`, ...) as reported.
        cost_usd: The cost as reported, or None if the agent reports none.
    """
    warnings: list[str] = []
    checked = {k: check_tokens(v, k, warnings) for k, v in tokens.items()}
    cost, rejected = check_cost(cost_usd, "cost_usd", warnings)
    return Usage(
        **checked,
        cost_usd=cost,
        warnings=tuple(f"{source} {w}" for w in warnings),
        cost_rejected=rejected,
    )


def _sum(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _short(text: Any) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= _ERROR_CHARS else line[: _ERROR_CHARS - 1] + "…"


def parse_claude_json(text: str) -> AgentReport:
    """Read the last `{"type": "result", ...}` object of `claude -p --output-format json`.

    Tokens: `input_tokens` counts every input token the model read —
    claude's `input_tokens` plus `cache_creation_input_tokens` plus
    `cache_read_input_tokens` (claude reports them apart) — so it compares
    with other backends; `cached_input_tokens` is the cache-read share and
    `cache_creation_tokens` the cache-write share. Cost is `total_cost_usd`.
    Failure is `is_error: true` (`subtype` may still say "success"), with
    the `result` text as the error.
    """
    result = None
    for obj in json_objects(text):
        if obj.get("type") == "result":
            result = obj
    if result is None:
        return AgentReport()
    raw = _dict(result.get("usage"))
    warnings: list[str] = []
    plain, created, read = (
        check_tokens(raw.get(k), k, warnings)
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    tokens = {
        "input_tokens": _sum(plain, created, read),
        "output_tokens": raw.get("output_tokens"),
        "num_turns": result.get("num_turns"),
        "cached_input_tokens": read,
        "cache_creation_tokens": created,
    }
    reported = checked_usage("claude", tokens, result.get("total_cost_usd"))
    usage = replace(reported, warnings=tuple(f"claude {w}" for w in warnings) + reported.warnings)
    error = None
    if result.get("is_error") is True:
        detail = result.get("result") or result.get("subtype") or "no detail"
        error = f"claude reported an error: {_short(detail)}"
    return AgentReport(usage, error, True)


def parse_codex_json(text: str) -> AgentReport:
    """Sum `turn.completed` usage of `codex exec --json`; find `turn.failed` and fatal `error` events.

    `input_tokens` already includes `cached_input_tokens` in codex's report.
    codex prints transient `error` events (e.g. "Reconnecting... 1/5") and
    carries on, so an `error` counts as failure only when no turn completed
    after it; `turn.failed` always does. codex reports no cost, and its
    "turn" (a whole exchange) is not claude's (one model call), so
    `num_turns` stays unknown.
    """
    totals: dict[str, int | None] = {"input_tokens": None, "cached_input_tokens": None, "output_tokens": None}
    warnings: list[str] = []
    found = False
    failed: str | None = None
    last_error: str | None = None
    for obj in json_objects(text):
        kind = obj.get("type")
        if not isinstance(kind, str):
            continue
        if kind in ("thread.started", "turn.started") or kind.startswith("item."):
            found = True
        elif kind == "turn.completed":
            found = True
            last_error = None
            reported = _dict(obj.get("usage"))
            for key in totals:
                totals[key] = _sum(totals[key], check_tokens(reported.get(key), key, warnings))
        elif kind == "turn.failed":
            found = True
            error = _dict(obj.get("error"))
            failed = f"codex turn failed: {_short(error.get('message') or 'no detail')}"
        elif kind == "error":
            found = True
            last_error = f"codex error: {_short(obj.get('message') or 'no detail')}"
    if not found:
        return AgentReport()
    usage = checked_usage("codex", totals)
    usage = replace(usage, warnings=tuple(f"codex {w}" for w in warnings) + usage.warnings)
    return AgentReport(usage if usage != Usage() else None, failed or last_error, True)
