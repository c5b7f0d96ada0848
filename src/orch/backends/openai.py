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
import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orch.backends import AttemptResult, AttemptSpec, Usage
from orch.backends.command import check_relative_file
from orch.backends.openai_replies import (
    _CONTEXT_HINT,
    _collect_stream,
    _describe,
    _error_message,
    _is_context_length,
    _NotChatCompletion,
    _read_response,
    _root_cause,
    _short,
    parse_retry_after,
)
from orch.backends.openai_tools import (
    TOOL_CHOICE,
    TOOLS_SYSTEM,
    WRITE_FILE_TOOL,
    PathRejected,
    _Transcript,
    write_confined,
)
from orch.backends.usage import checked_usage
from orch.config.node import parse_duration
from orch.config.project import AgentConfig
from orch.errors import ConfigError, did_you_mean
from orch.executors.limits import AgentLimiter
from orch.redact import Redactor

SETTINGS = {
    "model": "model name sent with every request (required)",
    "base_url": "endpoint, e.g. http://127.0.0.1:11434/v1 (default: the SDK's, api.openai.com)",
    "api_key_env": "environment variable holding the API key (default OPENAI_API_KEY; "
    "null for an endpoint without keys)",
    "options": "request body fields sent as given: temperature, max_tokens, ... "
    "(extra_headers: HTTP headers, kept out of the log; tools mode sends tool_choice: auto unless set)",
    "mode": "reply (the reply goes to reply_file) or tools (the model calls write_file); "
    "default: reply when reply_file is set, else tools",
    "reply_file": "reply mode: the output file that receives the reply text",
    "max_turns": "tools mode: most requests per attempt (default 20); then the expect rules decide",
    "system": "system message (default: none in reply mode, a write_file instruction in tools mode)",
    "stream": "true to stream responses (server-sent events); default false",
    "request_timeout": "total deadline of one HTTP request, streamed body included (default 10m)",
    "price_per_1k_input_usd": "price of 1,000 input tokens, to compute cost (with the output price)",
    "price_per_1k_output_usd": "price of 1,000 output tokens, to compute cost (with the input price)",
}
#: How orch talks to the endpoint and prices it, not what the model produces.
NOT_FINGERPRINTED = frozenset(
    {"api_key_env", "stream", "request_timeout", "price_per_1k_input_usd", "price_per_1k_output_usd"}
)
MODES = ("reply", "tools")
DEFAULT_MAX_TURNS = 20
DEFAULT_TIMEOUT_S = 600.0
#: Kept-alive connections for an agent without max_concurrency (the SDK's
#: default). Large keep-alive pools cost CPU per request in httpx (STYLE.md).
DEFAULT_POOL = 100
#: Body fields orch sets itself.
RESERVED_OPTIONS = frozenset({"model", "messages", "tools", "stream", "stream_options", "n"})


def normalize(settings: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate openai settings into canonical form (plain values, defaults for mode and turns).

    Raises:
        ConfigError: a missing model, bad base_url, options, mode, reply_file,
            max_turns, durations or prices.
    """
    model = settings.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"{where} model: required, e.g. model: gpt-4o-mini")
    base_url = settings.get("base_url")
    if base_url is not None and (not isinstance(base_url, str) or "://" not in base_url):
        raise ConfigError(
            f"{where} base_url: expected a URL like http://127.0.0.1:11434/v1, got {base_url!r}"
        )
    key_env = settings.setdefault("api_key_env", "OPENAI_API_KEY")
    if key_env is not None and (not isinstance(key_env, str) or not key_env.strip()):
        raise ConfigError(
            f"{where} api_key_env: expected an environment variable name like OPENAI_API_KEY, "
            f"got {key_env!r}",
            "the key itself never goes in orch.yaml; null means the endpoint needs no key",
        )
    settings["options"] = _options(settings.get("options", {}), where)
    mode = settings.setdefault("mode", "reply" if "reply_file" in settings else "tools")
    if mode not in MODES:
        hint = did_you_mean(str(mode), MODES)
        raise ConfigError(f"{where} mode: expected reply or tools, got {mode!r}{hint}")
    if mode == "reply":
        if "reply_file" not in settings:
            raise ConfigError(
                f"{where} reply_file: reply mode writes the reply to one file; name it",
                "e.g. reply_file: findings.md (or mode: tools to let the model write files)",
            )
        settings["reply_file"] = check_relative_file(settings["reply_file"], f"{where} reply_file")
    if mode == "tools":
        turns = settings.setdefault("max_turns", DEFAULT_MAX_TURNS)
        if isinstance(turns, bool) or not isinstance(turns, int) or turns < 1:
            raise ConfigError(f"{where} max_turns: expected a whole number >= 1, got {turns!r}")
    system = settings.get("system")
    if system is not None and not isinstance(system, str):
        raise ConfigError(f"{where} system: expected text, got {system!r}")
    if not isinstance(settings.get("stream", False), bool):
        raise ConfigError(f"{where} stream: expected true or false, got {settings['stream']!r}")
    if "request_timeout" in settings:
        timeout = parse_duration(settings["request_timeout"], f"{where} request_timeout")
        if timeout <= 0:
            raise ConfigError(f"{where} request_timeout: expected a duration > 0 like 5m")
        settings["request_timeout"] = timeout
    prices = [k for k in ("price_per_1k_input_usd", "price_per_1k_output_usd") if k in settings]
    for key in prices:
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{where} {key}: expected a price in USD >= 0, got {value!r}")
        settings[key] = float(value)
    if len(prices) == 1:
        raise ConfigError(
            f"{where} {prices[0]}: cost needs both price_per_1k_input_usd and price_per_1k_output_usd",
            "give both prices, or neither (cost is then unknown)",
        )
    return settings


def _plain(value: Any) -> Any:
    """Return `value` with YAML mapping/list subclasses turned into plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _options(raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} options: expected a mapping like {{temperature: 0.2, max_tokens: 4000}}")
    options = _plain(raw)
    for key in options:
        if key in RESERVED_OPTIONS:
            raise ConfigError(
                f"{where} options.{key}: set by orch, not an option",
                "use the agent's own keys: model, stream, mode",
            )
    return options


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
            outcomes = await asyncio.to_thread(self._tool_calls, spec.work_dir, calls, transcript)
            messages.extend(
                {"role": "tool", "tool_call_id": call.get("id") or "", "content": outcome}
                for call, outcome in zip(calls, outcomes, strict=True)
            )
        transcript.write("max_turns", turns=self.max_turns, note="stopped; the outputs decide the attempt")
        return AttemptResult(True, usage=usage)

    def _tool_calls(self, work_dir: Path, calls: list[dict[str, Any]], transcript: _Transcript) -> list[str]:
        """Run one turn's tool calls in order (blocking); return the results the model sees."""
        return [self._tool_call(work_dir, call, transcript) for call in calls]

    def _tool_call(self, work_dir: Path, call: dict[str, Any], transcript: _Transcript) -> str:
        """Run one tool call; return the tool result text the model sees."""
        function = call.get("function") or {}
        name = function.get("name")
        if name != "write_file":
            transcript.write("tool_rejected", name=name, reason="unknown tool")
            return f"error: unknown tool {name!r}; the only tool is write_file(path, content)"
        try:
            args = json.loads(function.get("arguments") or "{}")
        except ValueError as err:
            transcript.write("tool_rejected", name=name, reason=f"arguments are not JSON: {err}")
            return f'error: arguments are not valid JSON ({err}); send {{"path": ..., "content": ...}}'
        if not isinstance(args, dict) or not isinstance(args.get("content"), str):
            transcript.write("tool_rejected", name=name, reason="missing path or content")
            return "error: write_file needs a string path and a string content"
        try:
            written = write_confined(work_dir, args.get("path"), args["content"])
        except PathRejected as err:
            transcript.write("tool_rejected", name=name, path=args.get("path"), reason=str(err))
            return f"error: path {args.get('path')!r} rejected: {err}"
        except OSError as err:
            transcript.write("tool_rejected", name=name, path=args.get("path"), reason=str(err))
            return f"error: could not write {args.get('path')!r}: {err.strerror}"
        size = len(args["content"].encode("utf-8"))
        transcript.write("wrote", path=written, bytes=size)
        return f"wrote {written} ({size} bytes)"

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
            failure = self._classify(err, usage)
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
        usage = usage + self._usage(reported)
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

    def _usage(self, reported: dict[str, Any] | None) -> Usage:
        """Usage of one response, each number checked (`orch.backends.usage.checked_usage`).

        Cost is computed from the configured prices only when both token
        counts are valid; the endpoint reports no cost itself.
        """
        if not reported:
            return Usage(num_turns=1)
        details = reported.get("prompt_tokens_details")
        tokens = {
            "input_tokens": reported.get("prompt_tokens"),
            "output_tokens": reported.get("completion_tokens"),
            "cached_input_tokens": details.get("cached_tokens") if isinstance(details, dict) else None,
        }
        usage = checked_usage("endpoint", tokens)
        if self.prices is None:
            return dataclasses.replace(usage, num_turns=1)
        if usage.input_tokens is None or usage.output_tokens is None:
            # priced but uncountable: budgets must not read this as free
            return dataclasses.replace(usage, num_turns=1, cost_rejected=bool(usage.warnings))
        cost = usage.input_tokens / 1000 * self.prices[0] + usage.output_tokens / 1000 * self.prices[1]
        return dataclasses.replace(usage, cost_usd=cost, num_turns=1)

    def _classify(self, err: Exception, usage: Usage) -> AttemptResult | None:
        """Map an SDK or transport error to a failed AttemptResult; None if it is not one.

        429 → `http_429` (with Retry-After); 5xx, 408 and 409 → `http_5xx`
        (with Retry-After if sent). Timeouts and connection failures are
        `http_5xx` too: like a 5xx they say the endpoint could not answer now,
        and the remedy is the same — back off and retry. Other 4xx (400, 401,
        404, 422, ...) and context-length errors whatever their status are
        `request_error`: the request itself is wrong and sending it again fails
        the same way, so the default `retry_on` skips them. The retryable
        statuses are the SDK's own (openai `_should_retry`).
        """
        import httpx2

        sdk = self._sdk
        where = self.base_url or "the OpenAI API"
        spent = usage if usage != Usage() else None
        if isinstance(err, sdk.APIStatusError):
            status = err.status_code
            wait_s = parse_retry_after(err.response.headers)
            detail = _short(_error_message(err))
            message = f"HTTP {status} from {where}: {detail}"
            if _is_context_length(err):
                return AttemptResult(False, message + _CONTEXT_HINT, "request_error", usage=spent)
            if status == 429:
                return AttemptResult(False, message, "http_429", usage=spent, retry_after_s=wait_s)
            if status >= 500 or status in (408, 409):
                return AttemptResult(False, message, "http_5xx", usage=spent, retry_after_s=wait_s)
            if status in (401, 403):
                message += f" (check the key in ${self.key_env})"
            elif status == 404:
                message += f" (check model {self.model!r} and base_url)"
            return AttemptResult(
                False, message, "request_error" if status >= 400 else "agent_error", usage=spent
            )
        if isinstance(err, sdk.APIConnectionError):
            # The aiohttp transport reports a refused connection as a connect timeout,
            # so the message names the root cause rather than trusting the class.
            root = _root_cause(err)
            if isinstance(root, TimeoutError) or "Timeout" in type(root).__name__:
                message = f"request to {where} timed out (request_timeout {self.timeout_s:g}s)"
            else:
                message = f"cannot reach {where}"
            return AttemptResult(False, f"{message}: {_describe(root)}", "http_5xx", usage=spent)
        if isinstance(err, TimeoutError):
            message = (
                f"request to {where} exceeded request_timeout {self.timeout_s:g}s "
                "(a total deadline per request, streamed body included)"
            )
            return AttemptResult(False, message, "http_5xx", usage=spent)
        if isinstance(err, httpx2.TransportError):
            return AttemptResult(
                False, f"connection to {where} broke mid-response: {_short(err)}", "http_5xx", usage=spent
            )
        if isinstance(err, _NotChatCompletion):
            message = f"{where} did not answer like a Chat Completions endpoint: {err}"
            return AttemptResult(False, message, "agent_error", usage=spent)
        if isinstance(err, sdk.APIError):
            message = f"error from {where}: {_short(err)}"
            if _is_context_length(err):
                return AttemptResult(False, message + _CONTEXT_HINT, "request_error", usage=spent)
            return AttemptResult(False, message, "agent_error", usage=spent)
        return None

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
