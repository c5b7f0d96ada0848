#!/usr/bin/env python3
"""A fake OpenAI-compatible Chat Completions server on 127.0.0.1, scripted per partition.

It speaks the real protocol on `POST /v1/chat/completions`: JSON responses,
or server-sent events (`stream: true`, chunked transfer encoding, a final
usage chunk when `stream_options.include_usage` is set, then `data: [DONE]`).
It stands in for the model only; orch talks to it through the official SDK.

Behaviour is scripted like tests/fakes/agent.py: a mapping from a key to a
step or a list of steps. The key is the first script key found in the first
user message (the rendered prompt names its partition); otherwise "default".
A list gives one step per request carrying that key (the last repeats).
Steps (`action`):

    reply       answer with `text` (default: a '## Result' document naming the key)
    tools       write `files` ({path: content}) through write_file tool calls,
                `per_turn` files per response (default 1), then answer "done"
    status      answer HTTP `status` with an OpenAI error body (`message`, and
                `type`/`code` to override the defaults); optional
                `retry_after` (seconds, Retry-After) and `retry_after_ms`, sent
                as given (so "inf", "nan" or "100000" too); `echo_auth: true`
                puts the request's Authorization header in the error message
    disconnect  close the connection without answering
    page        answer 200 with an HTML page (`text`), as a misconfigured proxy does
    trickle     answer 200 with a reply, one byte every `interval` seconds
                (default 0.5), as a hostile or broken endpoint might

Any step may add `delay` (seconds) on top of the server's `--latency`, and
`usage` (a mapping) to replace the usage reported, e.g. NaN or 2**70 tokens.

Like the strictest real servers, it answers HTTP 500 to an assistant message
with `"content": null` (llama-cpp-python's server does), and it never calls a
tool unless the request says `tool_choice` "auto" or "required" (some servers
read a missing tool_choice as "none").

In tests: `with FakeOpenAI(script={...}) as server: server.url ...`.
As a process: `python tests/fakes/openai_server.py --port 0 --latency 0.5`
prints the port it listens on, then serves until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_TEXT = "## Result\n\nFake model reply for {key}.\n"
STREAM_PIECES = 3


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: one token per 4 characters, at least 1."""
    return len(text) // 4 + 1


class FakeOpenAI:
    """The server: a script, a log of the requests it received, a listening socket.

    Args:
        script: Behaviour per key (see the module docstring); changeable while serving.
        latency_s: Seconds every response waits before it is sent.
        port: Port to listen on; 0 picks a free one.
        api_key: If set, requests without `Authorization: Bearer <api_key>` get 401.
    """

    def __init__(
        self,
        script: dict[str, Any] | None = None,
        latency_s: float = 0.0,
        port: int = 0,
        api_key: str | None = None,
    ) -> None:
        self.script = script or {"default": {"action": "reply"}}
        self.latency_s = latency_s
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.probes = 0
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self.stopped = threading.Event()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base_url for an openai agent: http://127.0.0.1:PORT/v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        """Serve in a daemon thread; return self."""
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; requests still waiting out a delay end unanswered."""
        self.stopped.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests_for(self, key: str) -> list[dict[str, Any]]:
        """The requests received whose prompt carried `key`, oldest first."""
        with self._lock:
            return [r for r in self.requests if r["key"] == key]

    def step_for(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[str, dict[str, Any]]:
        """Record the request; return its key and the scripted step for it."""
        prompt = next(
            (m.get("content") or "" for m in body.get("messages", []) if m.get("role") == "user"), ""
        )
        key = next((k for k in self.script if k != "default" and k in prompt), "default")
        plan = self.script.get(key, self.script.get("default", {"action": "reply"}))
        with self._lock:
            index = self._counts.get(key, 0)
            self._counts[key] = index + 1
            self.requests.append(
                {
                    "key": key,
                    "n": index + 1,
                    "ts": time.time(),
                    "stream": bool(body.get("stream")),
                    "model": body.get("model"),
                    "authorization": headers.get("authorization"),
                    "body": body,
                }
            )
        if isinstance(plan, list):
            return key, plan[min(index, len(plan) - 1)]
        return key, plan


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The stdlib default backlog (5) drops connections when 100 arrive at once.
    request_queue_size = 1024
    fake: FakeOpenAI


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read the request log instead."""

    def do_GET(self) -> None:
        """`GET /v1/models` (orch's pre-flight probe): a model list, 401 for a wrong key.
        Not recorded in `requests`, which holds completions only."""
        fake = self.server.fake
        fake.probes += 1
        if not self.path.rstrip("/").endswith("/models"):
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
        elif fake.api_key and self.headers.get("authorization") != f"Bearer {fake.api_key}":
            error = {"message": "Incorrect API key provided", "type": "invalid_request_error"}
            self._json(401, {"error": error})
        else:
            self._json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    def do_POST(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        key, step = fake.step_for(body, headers)
        if any(
            m.get("role") == "assistant" and m.get("content", "") is None for m in body.get("messages", [])
        ):
            error = {"message": "assistant content must be a string, got null", "type": "server_error"}
            self._json(500, {"error": error})
            return
        if fake.stopped.wait(fake.latency_s + float(step.get("delay", 0))):
            self.close_connection = True  # the server is stopping: no answer
            return
        if fake.api_key and headers.get("authorization") != f"Bearer {fake.api_key}":
            error = {"message": "Incorrect API key provided", "type": "invalid_request_error"}
            self._json(401, {"error": error})
            return
        action = step.get("action", "reply")
        if action == "disconnect":
            self.close_connection = True
            return
        if action == "status":
            self._status(step, headers)
            return
        if action == "trickle":
            self._trickle(step, _completion(body, self._message(key, step, body)))
            return
        if action == "page":
            data = step.get("text", "<html><body>Sign in to continue</body></html>").encode()
            head = f"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {len(data)}\r\n\r\n"
            self.wfile.write(head.encode() + data)
            return
        message = self._message(key, step, body)
        if body.get("stream"):
            self._stream(body, message, step.get("usage"))
        else:
            self._json(200, _completion(body, message, step.get("usage")))

    def _message(self, key: str, step: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        if step.get("action") == "tools" and body.get("tool_choice") in ("auto", "required"):
            files = list((step.get("files") or {"out.md": DEFAULT_TEXT}).items())
            done = sum(1 for m in body.get("messages", []) if m.get("role") == "tool")
            batch = files[done : done + int(step.get("per_turn", 1))]
            if batch:
                calls = [
                    {
                        "id": f"call_{done + i}",
                        "type": "function",
                        "function": {
                            "name": step.get("tool", "write_file"),
                            "arguments": json.dumps({"path": path, "content": text.format(key=key)}),
                        },
                    }
                    for i, (path, text) in enumerate(batch)
                ]
                return {"role": "assistant", "content": None, "tool_calls": calls}
            return {"role": "assistant", "content": step.get("final", "done")}
        return {"role": "assistant", "content": step.get("text", DEFAULT_TEXT).format(key=key)}

    def _status(self, step: dict[str, Any], request_headers: dict[str, str]) -> None:
        status = int(step.get("status", 500))
        kind = step.get("type", "rate_limit_exceeded" if status == 429 else "server_error")
        message = step.get("message", f"fake {status}")
        if step.get("echo_auth"):
            message += f" (you sent Authorization: {request_headers.get('authorization')})"
        headers = {}
        if "retry_after" in step:
            headers["retry-after"] = str(step["retry_after"])
        if "retry_after_ms" in step:
            headers["retry-after-ms"] = str(step["retry_after_ms"])
        error = {"message": message, "type": kind, "code": step.get("code", kind)}
        self._json(status, {"error": error}, headers)

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        head = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}"]
        head += ["content-type: application/json", f"content-length: {len(data)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)

    def _trickle(self, step: dict[str, Any], payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
        self.wfile.write(head.encode())
        interval_s = float(step.get("interval", 0.5))
        for index in range(len(data)):
            self.wfile.write(data[index : index + 1])
            self.wfile.flush()
            if self.server.fake.stopped.wait(interval_s):
                return

    def _stream(self, body: dict[str, Any], message: dict[str, Any], usage: Any = None) -> None:
        head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        self.wfile.write(head.encode())
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        for chunk in _chunks(body, message, with_usage, usage):
            self._send_chunk(f"data: {json.dumps(chunk)}\n\n".encode())
        self._send_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def _usage(body: dict[str, Any], message: dict[str, Any]) -> dict[str, int]:
    prompt = sum(count_tokens(str(m.get("content") or "")) for m in body.get("messages", []))
    produced = message.get("content") or json.dumps(message.get("tool_calls") or "")
    completion = count_tokens(produced)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(body: dict[str, Any], message: dict[str, Any], usage: Any = None) -> dict[str, Any]:
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return {
        "id": f"chatcmpl-fake-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": _usage(body, message) if usage is None else usage,
    }


def _chunks(
    body: dict[str, Any], message: dict[str, Any], with_usage: bool, usage: Any = None
) -> list[dict[str, Any]]:
    """The chunk objects of a streamed completion, as the OpenAI API sends them."""
    base = {
        "id": f"chatcmpl-fake-{time.monotonic_ns()}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
    }
    extra = {"usage": None} if with_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {**base, "choices": [choice], **extra}

    chunks = [chunk({"role": "assistant", "content": ""})]
    text = message.get("content") or ""
    size = max(1, -(-len(text) // STREAM_PIECES))
    chunks += [chunk({"content": text[i : i + size]}) for i in range(0, len(text), size)]
    for index, call in enumerate(message.get("tool_calls") or []):
        head = {"index": index, "id": call["id"], "type": "function"}
        head["function"] = {"name": call["function"]["name"], "arguments": ""}
        chunks.append(chunk({"tool_calls": [head]}))
        args = call["function"]["arguments"]
        step = max(1, -(-len(args) // STREAM_PIECES))
        for i in range(0, len(args), step):
            piece = {"index": index, "function": {"arguments": args[i : i + step]}}
            chunks.append(chunk({"tool_calls": [piece]}))
    chunks.append(chunk({}, "tool_calls" if message.get("tool_calls") else "stop"))
    if with_usage:
        chunks.append({**base, "choices": [], "usage": _usage(body, message) if usage is None else usage})
    return chunks


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or Ctrl-C; print the port first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each response")
    parser.add_argument("--script", type=Path, help="JSON script file (see the module docstring)")
    parser.add_argument("--api-key", help="require this bearer key")
    args = parser.parse_args(argv)
    script = json.loads(args.script.read_text()) if args.script else None
    server = FakeOpenAI(script, args.latency, args.port, args.api_key)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(server.port, flush=True)
    try:
        server._server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server._server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
