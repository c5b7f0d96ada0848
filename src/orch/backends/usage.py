"""Read tokens, cost and agent-reported errors from headless agent CLI output.

Parsers for `claude -p --output-format json` (one result object) and
`codex exec --json` (JSONL events). Both take the attempt's whole
`.orch/agent.log` (stdout and stderr interleaved) and skip what is not JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from orch.backends import Usage

#: `usage:` parser names accepted by the command backend.
PARSERS = ("claude-json", "codex-json", "none")
_ERROR_CHARS = 300


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


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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
    plain, created, read = (
        _int(raw.get(k)) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    cost = result.get("total_cost_usd")
    usage = Usage(
        input_tokens=_sum(plain, created, read),
        output_tokens=_int(raw.get("output_tokens")),
        cost_usd=float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
        num_turns=_int(result.get("num_turns")),
        cached_input_tokens=read,
        cache_creation_tokens=created,
    )
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
                totals[key] = _sum(totals[key], _int(reported.get(key)))
        elif kind == "turn.failed":
            found = True
            error = _dict(obj.get("error"))
            failed = f"codex turn failed: {_short(error.get('message') or 'no detail')}"
        elif kind == "error":
            found = True
            last_error = f"codex error: {_short(obj.get('message') or 'no detail')}"
    if not found:
        return AgentReport()
    usage = Usage(
        input_tokens=totals["input_tokens"],
        output_tokens=totals["output_tokens"],
        cached_input_tokens=totals["cached_input_tokens"],
    )
    return AgentReport(usage if usage != Usage() else None, failed or last_error, True)
