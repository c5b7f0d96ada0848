"""The `openai` backend: an OpenAI-compatible Chat Completions endpoint via the official SDK.

Two modes. `reply`: one request, the reply text goes to `reply_file`.
`tools`: the model writes files through a `write_file(path, content)` tool
confined to the staging directory, turn after turn until it stops calling
tools or `max_turns` is reached; every request offering the tool says
`tool_choice: "auto"` (see `TOOL_CHOICE`). One SDK client per agent (never per
request), its connection pool at least the agent's concurrency, the SDK's own
retries off (orch retries). The transcript — requests without secrets, and
responses — goes to `.orch/agent.log` as JSON lines.

The SDK (`openai`, imported as `openai_sdk`) is imported only when a backend
is created, so loading a config that names an openai agent stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Any

from orch.backends import AttemptResult, AttemptSpec, Usage
from orch.backends.openai_replies import _collect_stream, _read_response, classify_error, read_usage
from orch.backends.openai_settings import (
    DEFAULT_MAX_TURNS,
    DEFAULT_TIMEOUT_S,
    NOT_FINGERPRINTED,
    SETTINGS,
    normalize,
)
from orch.backends.openai_tools import (
    TOOL_CHOICE,
    TOOLS_SYSTEM,
    WRITE_FILE_TOOL,
    PathRejected,
    _Transcript,
    run_tool_calls,
    write_confined,
)
from orch.config.project import AgentConfig
from orch.executors.limits import AgentLimiter
from orch.redact import Redactor

#: The backend's face for the registry (`orch.backends.BACKENDS`): its settings
#: (validated in `orch.backends.openai_settings`) and `create`.
__all__ = ["NOT_FINGERPRINTED", "SETTINGS", "OpenAIBackend", "create", "normalize"]

#: Kept-alive connections for an agent without max_concurrency (the SDK's
#: default). Large keep-alive pools cost CPU per request in httpx (STYLE.md).
DEFAULT_POOL = 100


def create(agent: AgentConfig) -> OpenAIBackend:
    """Return an openai backend for `agent` (its client is made on first use)."""
    return OpenAIBackend(agent)


class _Failure(Exception):
    """Ends an attempt with this result (an HTTP or protocol failure)."""

    def __init__(self, result: AttemptResult) -> None:
        super().__init__(result.error)
        self.result = result


class OpenAIBackend:
    """Runs attempts against one Chat Completions endpoint with one shared SDK client."""

    def __init__(self, agent: AgentConfig) -> None:
        settings = agent.settings
        self.agent = agent
        self.model: str = settings["model"]
        self.base_url: str | None = settings.get("base_url")
        self.key_env: str | None = settings.get("api_key_env", "OPENAI_API_KEY")
        self.options: dict[str, Any] = dict(settings.get("options", {}))
        self.headers: dict[str, str] = self.options.pop("extra_headers", None) or {}
        self.mode: str = settings.get("mode", "tools")
        self.reply_file: str | None = settings.get("reply_file")
        self.max_turns: int = int(settings.get("max_turns", DEFAULT_MAX_TURNS))
        self.system: str | None = settings.get("system", TOOLS_SYSTEM if self.mode == "tools" else None)
        self.stream: bool = bool(settings.get("stream", False))
        self.timeout_s: float = float(settings.get("request_timeout", DEFAULT_TIMEOUT_S))
        self.pool_size: int | None = settings.get("max_concurrency")
        self.prices: tuple[float, float] | None = (
            (settings["price_per_1k_input_usd"], settings["price_per_1k_output_usd"])
            if "price_per_1k_input_usd" in settings
            else None
        )
        self._limiter: AgentLimiter | None = None
        self.redactor = Redactor.for_agents([agent])
        self._client: Any = None
        self._sdk: Any = None
        self._stream_cls: Any = None
        self._importer: threading.Thread | None = None

    def warm_up(self) -> None:
        """Start importing the SDK in a thread, once (see `LocalExecutor.warm_up`).

        Not a daemon thread: the interpreter waits for it rather than exit mid-import.
        """
        if self._importer is None:
            self._importer = threading.Thread(target=_import_sdk, name="orch-openai-import")
            self._importer.start()

    def use_limiter(self, limiter: AgentLimiter) -> None:
        """Pace every request (not only every attempt) through the agent's limiter."""
        self._limiter = limiter

    def _get_client(self) -> Any:
        """Return the agent's one client, creating it on first use.

        Raises:
            _Failure: the API key's environment variable is not set.
        """
        if self._client is not None:
            return self._client
        key = "unused"
        if self.key_env:
            key = os.environ.get(self.key_env, "")
            if not key:
                raise _Failure(
                    AttemptResult(
                        False,
                        f"agent {self.agent.name}: environment variable {self.key_env} (api_key_env) "
                        "is not set; export the API key in it, or set api_key_env: null for an "
                        "endpoint without keys",
                        "agent_error",
                    )
                )
        import httpx2
        import openai as openai_sdk

        self._sdk = openai_sdk
        self._stream_cls = openai_sdk.AsyncStream[object]
        timeout = httpx2.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0))
        self._client = openai_sdk.AsyncOpenAI(
            api_key=key,
            base_url=self.base_url,
            max_retries=0,
            timeout=timeout,
            http_client=_http_client(openai_sdk, httpx2, self.pool_size, timeout),
        )
        return self._client

    async def run(self, spec: AttemptSpec) -> AttemptResult:
        """Run one attempt: a reply to `reply_file`, or a write_file conversation.

        Files (the transcript, the reply, the model's write_file calls) are
        written in worker threads, never on the event loop.
        """
        transcript = _Transcript(spec.log_path, self.redactor)
        try:
            try:
                client = self._get_client()
                if self.mode == "reply":
                    result = await self._reply(client, spec, transcript)
                else:
                    result = await self._tools(client, spec, transcript)
            except _Failure as failure:
                transcript.write("failed", error=failure.result.error, error_class=failure.result.error_class)
                result = failure.result
            if result.error:
                result = dataclasses.replace(result, error=self.redactor.text(result.error))
        except BaseException as err:  # timeout, interrupt or a bug: keep what the log has
            if isinstance(err, asyncio.CancelledError):
                transcript.write("cancelled", note="timeout or interrupt; the request was abandoned")
            transcript.close()
            raise
        if not transcript.closed:
            await asyncio.to_thread(transcript.close)
        return result

    def _messages(self, prompt: str) -> list[dict[str, Any]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": prompt}]

    async def _reply(self, client: Any, spec: AttemptSpec, transcript: _Transcript) -> AttemptResult:
        assert self.reply_file is not None
        messages = self._messages(spec.prompt)
        message, finish, usage = await self._request(client, messages, 1, transcript, Usage())
        text = message.get("content")
        if not isinstance(text, str) or not text.strip():
            error = f"the model returned no reply text (finish_reason {finish})"
            return AttemptResult(False, error, "agent_error", usage=usage)
        return await asyncio.to_thread(self._write_reply, spec.work_dir, text, usage, transcript)

    def _write_reply(self, work_dir: Path, text: str, usage: Usage, transcript: _Transcript) -> AttemptResult:
        """Write the reply file and close the transcript (blocking: one worker-thread hop for both)."""
        assert self.reply_file is not None
        try:
            written = write_confined(work_dir, self.reply_file, text)
        except PathRejected as err:
            return AttemptResult(False, f"reply_file {self.reply_file}: {err}", "agent_error", usage=usage)
        transcript.write("wrote", path=written, bytes=len(text.encode("utf-8")))
        transcript.close()
        return AttemptResult(True, usage=usage)

    async def _tools(self, client: Any, spec: AttemptSpec, transcript: _Transcript) -> AttemptResult:
        messages = self._messages(spec.prompt)
        usage = Usage()
        for turn in range(1, self.max_turns + 1):
            message, _finish, usage = await self._request(client, messages, turn, transcript, usage)
            messages.append(message)
            calls = message.get("tool_calls") or []
            if not calls:
                return AttemptResult(True, usage=usage)
            outcomes = await asyncio.to_thread(run_tool_calls, spec.work_dir, calls, transcript)
            messages.extend(
                {"role": "tool", "tool_call_id": call.get("id") or "", "content": outcome}
                for call, outcome in zip(calls, outcomes, strict=True)
            )
        transcript.write("max_turns", turns=self.max_turns, note="stopped; the outputs decide the attempt")
        return AttemptResult(True, usage=usage)

    async def _request(
        self, client: Any, messages: list[dict[str, Any]], turn: int, transcript: _Transcript, usage: Usage
    ) -> tuple[dict[str, Any], str | None, Usage]:
        """Send one request; return the assistant message, finish reason and usage so far.

        Raises:
            _Failure: an HTTP error, timeout or broken connection, classified.
        """
        if self._limiter is not None:
            await self._limiter.pace()
        body: dict[str, Any] = {**self.options, "model": self.model, "messages": messages}
        if self.mode == "tools":
            body["tools"] = [WRITE_FILE_TOOL]
            body.setdefault("tool_choice", TOOL_CHOICE)
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if turn == 1:
            shown = {k: v for k, v in body.items() if k not in self.options}
            transcript.write("request", turn=turn, base_url=self.base_url, options=self.options, **shown)
        else:
            transcript.write("request", turn=turn, new_messages=self._tail(messages))
        # the log is written in a thread while the request is in flight
        logged = asyncio.get_running_loop().run_in_executor(None, transcript.flush)
        started = time.monotonic()
        try:
            # client.post with a plain dict: the typed chat.completions.create spends
            # about 1.4 ms of CPU per request transforming the body and building
            # response models (profile of bench/openai_fanout.py); orch needs only the JSON.
            # request_timeout is a total deadline: the SDK's httpx timeout is per read, so
            # a server trickling a byte at a time would otherwise never time out.
            async with asyncio.timeout(self.timeout_s):
                response = await client.post(
                    "/chat/completions",
                    cast_to=object,
                    body=body,
                    options={"headers": self.headers} if self.headers else {},
                    stream=self.stream,
                    stream_cls=self._stream_cls if self.stream else None,
                )
                if self.stream:
                    message, finish, reported, response_id = await _collect_stream(response)
                else:
                    message, finish, reported, response_id = _read_response(response)
        except Exception as err:
            failure = classify_error(
                err,
                usage,
                self._sdk,
                base_url=self.base_url,
                key_env=self.key_env,
                model=self.model,
                timeout_s=self.timeout_s,
            )
            if failure is None:
                raise
            transcript.write(
                "http_error",
                turn=turn,
                error=failure.error,
                error_class=failure.error_class,
                retry_after_s=failure.retry_after_s,
            )
            raise _Failure(failure) from err
        finally:
            await logged
        usage = usage + read_usage(reported, self.prices)
        transcript.write(
            "response",
            turn=turn,
            id=response_id,
            duration_s=round(time.monotonic() - started, 3),
            finish_reason=finish,
            message=message,
            usage=reported,
        )
        return message, finish, usage

    @staticmethod
    def _tail(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages added since the last assistant message (this turn's tool results)."""
        start = len(messages)
        while start > 0 and messages[start - 1].get("role") != "assistant":
            start -= 1
        return messages[start:]

    async def aclose(self) -> None:
        """Close the agent's client and its connection pool."""
        if self._client is not None:
            await self._client.close()
            self._client = None


def _import_sdk() -> None:
    """Import the SDK and its transports (any ImportError shows when the client is made)."""
    with contextlib.suppress(ImportError):
        import httpx2  # noqa: F401
        import openai  # noqa: F401

    with contextlib.suppress(ImportError):
        import aiohttp  # noqa: F401


def _http_client(openai_sdk: Any, httpx2: Any, pool_size: int | None, timeout: Any) -> Any:
    """Return the HTTP client for one agent: aiohttp transport if installed, else httpx's.

    The pool holds `max_concurrency` connections (kept alive), so a request
    never waits for a connection another of the agent's attempts holds;
    without max_concurrency, the SDK's own limits (1,000 connections, 100
    kept alive). The aiohttp transport costs about half the CPU per request
    of httpx's (bench/openai_fanout.py: ~1.5 vs ~2.7 ms here), and
    httpx's pool scans its connections on every request.
    """
    limits = httpx2.Limits(
        max_connections=int(pool_size) if pool_size else 1000,
        max_keepalive_connections=int(pool_size) if pool_size else DEFAULT_POOL,
    )
    try:
        import aiohttp  # noqa: F401  (the SDK's aiohttp transport needs it)
    except ImportError:
        return openai_sdk.DefaultAsyncHttpxClient(limits=limits, timeout=timeout)
    return openai_sdk.DefaultAioHttpClient(limits=limits, timeout=timeout)
