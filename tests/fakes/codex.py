#!/usr/bin/env python3
"""A fake `codex` CLI: `codex exec --json ... -` with the prompt on stdin, JSONL events on stdout.

It prints the event shapes of `codex exec --json`: `thread.started`,
`turn.started`, `item.completed` (reasoning, file_change, agent_message),
then `turn.completed` with usage {input_tokens, cached_input_tokens,
output_tokens} — or `turn.failed` with {"error": {"message": ...}}.
Scripted per partition through $FAKE_AGENT_SCRIPT like tests/fakes/agent.py;
invocations are logged to $FAKE_AGENT_LOG. Actions:

    succeed      write `files`, print the events, exit 0; `transient: true` adds a
                 non-fatal `error` event ("Reconnecting... 1/5") before the turn completes
    turn_failed  print a turn.failed event with `message`, exit 1
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from agent import DEFAULT_FILES, current_step, log_invocation


def emit(event: dict) -> None:
    print(json.dumps(event), flush=True)


def main() -> int:
    partition, step = current_step()
    action = step.get("action", "succeed")
    prompt = sys.stdin.read() if sys.argv[-1] == "-" else sys.argv[-1]
    log_invocation(partition, action, prompt, cli=True)
    emit({"type": "thread.started", "thread_id": str(uuid.uuid4())})
    emit({"type": "turn.started"})
    emit({"type": "item.completed", "item": {"id": "item_0", "type": "reasoning", "text": "**Planning**"}})
    if action == "turn_failed":
        message = step.get("message", "model response stream ended unexpectedly")
        emit({"type": "turn.failed", "error": {"message": message}})
        return 1
    if step.get("transient"):
        emit({"type": "error", "message": "Reconnecting... 1/5"})
    files = step.get("files", DEFAULT_FILES)
    for name, text in files.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(text.format(partition=partition))
    changes = [{"path": name, "kind": "add"} for name in files]
    item = {"id": "item_1", "type": "file_change", "changes": changes, "status": "completed"}
    emit({"type": "item.completed", "item": item})
    emit({"type": "item.completed", "item": {"id": "item_2", "type": "agent_message", "text": "Done."}})
    tokens_in, cached, tokens_out = step.get("tokens", [24763, 24448, 122])
    usage = {"input_tokens": tokens_in, "cached_input_tokens": cached, "output_tokens": tokens_out}
    emit({"type": "turn.completed", "usage": usage})
    return 0


if __name__ == "__main__":
    sys.exit(main())
