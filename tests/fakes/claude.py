#!/usr/bin/env python3
"""A fake `claude` CLI: reads the prompt on stdin, writes files, prints a real-shaped result.

It stands in for `claude -p --output-format json`: the single result object
on stdout has the fields of Claude Code's own (`type`, `subtype`,
`is_error`, `duration_ms`, `num_turns`, `result`, `session_id`,
`total_cost_usd`, `usage` with input/output and cache token counts). The
behaviour is scripted per partition like tests/fakes/agent.py, through
$FAKE_AGENT_SCRIPT; every invocation is logged to $FAKE_AGENT_LOG with its
argv and the telemetry variables it saw. Actions:

    succeed    write `files` (default out.md with '## Result'), print the result, exit 0;
               `cost` (default 0.0123) and `tokens` ([input, output]) set the usage
    is_error   print a result with is_error true — subtype still "success", as
               claude does — and the `message` as result text; exit 1
    fail       print `message` on stderr and exit `exit` (default 1), no JSON
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from agent import DEFAULT_FILES, current_step, log_invocation


def result_object(step: dict, is_error: bool, text: str) -> dict:
    tokens_in, tokens_out = step.get("tokens", [12, 340])
    return {
        "type": "result",
        "subtype": "success",
        "is_error": is_error,
        "duration_ms": 2310,
        "duration_api_ms": 2100,
        "num_turns": step.get("turns", 2),
        "result": text,
        "session_id": str(uuid.uuid4()),
        "total_cost_usd": step.get("cost", 0.0123),
        "usage": {
            "input_tokens": tokens_in,
            "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 2000,
            "output_tokens": tokens_out,
            "service_tier": "standard",
        },
    }


def main() -> int:
    partition, step = current_step()
    action = step.get("action", "succeed")
    prompt = sys.stdin.read()
    log_invocation(partition, action, prompt, cli=True)
    print("claude: starting session (stderr noise the parser must skip)", file=sys.stderr, flush=True)
    if action == "fail":
        print(step.get("message", "fake claude failure"), file=sys.stderr, flush=True)
        return int(step.get("exit", 1))
    if action == "is_error":
        print(json.dumps(result_object(step, True, step.get("message", "API Error: 500 fake"))))
        return 1
    for name, text in step.get("files", DEFAULT_FILES).items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(text.format(partition=partition))
    print(json.dumps(result_object(step, False, f"Wrote the files for {partition}.")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
