"""What an OpenAI-compatible endpoint answers, read defensively: responses, streams, usage,
errors (classified for retries) and Retry-After."""

from __future__ import annotations

import dataclasses
import email.utils
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from orch.backends import AttemptResult, Usage
from orch.backends.usage import checked_usage

#: Context-length errors, whatever the status: OpenAI and Azure
#: (`context_length_exceeded`, "maximum context length"), llama.cpp
#: (`exceed_context_size_error`, "exceeds the available context size"),
#: llama-cpp-python ("exceed context window"), vLLM ("model's context
#: length"), Anthropic-style gateways ("prompt is too long").
_CONTEXT_LENGTH = re.compile(
    r"context[ _-]?(length|size|window)|maximum context|exceed_context|prompt is too long", re.IGNORECASE
)


_ERROR_CHARS = 300


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Return the wait a response asks for, in seconds, or None.

    Reads `retry-after-ms` (OpenAI's, milliseconds) first, then `retry-after`
    as seconds or as an HTTP date (RFC 9110 §10.2.3). NaN, infinities and
    garbage are ignored (None); a negative wait is 0. The value is not capped
    here: the scheduler caps it at the stage's `backoff.cap`, the limiter at
    its own bound.
    """
    value = headers.get("retry-after-ms")
    if value:
        seconds = _finite(value)
        if seconds is not None:
            return max(seconds / 1000, 0.0)
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _finite(value)
    if seconds is not None:
        return max(seconds, 0.0)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _finite(text: str) -> float | None:
    """`text` as a finite float, or None (`inf`, `nan`, garbage)."""
    try:
        value = float(text)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _error_message(err: Any) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return str(getattr(err, "message", err))


_CONTEXT_HINT = (
    " (the request is longer than the model's context window: shorten the prompt, "
    "lower max_tokens, or serve the model with a larger context)"
)


def _is_context_length(err: Any) -> bool:
    """True if an SDK error says the request exceeds the model's context (see `_CONTEXT_LENGTH`)."""
    fields = [_error_message(err), getattr(err, "code", None), getattr(err, "type", None)]
    return any(isinstance(f, str) and _CONTEXT_LENGTH.search(f) for f in fields)


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _describe(err: BaseException) -> str:
    return _short(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)


def _short(text: Any) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= _ERROR_CHARS else line[: _ERROR_CHARS - 1] + "…"


#: (assistant message, finish_reason, usage as reported, response id)
_Reply = tuple[dict[str, Any], str | None, dict[str, Any] | None, str | None]


class _NotChatCompletion(Exception):
    """The endpoint answered 2xx with something that is not a Chat Completions response."""


def _read_response(response: Any) -> _Reply:
    """Return (assistant message, finish_reason, usage, response id) from a response's JSON.

    Raises:
        _NotChatCompletion: not a JSON object (an HTML page from a proxy, say).
    """
    if not isinstance(response, dict):
        raise _NotChatCompletion(f"expected a JSON object, got {_short(response)!r}")
    choices = response.get("choices") or []
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    raw = choice.get("message")
    if not isinstance(raw, dict):
        raw = {}
    message: dict[str, Any] = {"role": "assistant", "content": _echo_content(raw.get("content"))}
    calls = [
        {
            "id": call.get("id"),
            "type": "function",
            "function": {
                "name": call["function"].get("name"),
                "arguments": call["function"].get("arguments"),
            },
        }
        for call in raw.get("tool_calls") or []
        if isinstance(call, dict) and isinstance(call.get("function"), dict)
    ]
    if calls:
        message["tool_calls"] = calls
    return message, choice.get("finish_reason"), _object(response.get("usage")), response.get("id")


async def _collect_stream(stream: Any) -> _Reply:
    """Accumulate a streamed response: text deltas, tool-call deltas by index, final usage.

    Raises:
        _NotChatCompletion: a chunk that is not a JSON object.
    """
    parts: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    usage = None
    response_id = None
    async for chunk in stream:
        if not isinstance(chunk, dict):
            raise _NotChatCompletion(f"expected JSON objects in the stream, got {_short(chunk)!r}")
        response_id = response_id or chunk.get("id")
        if chunk.get("usage"):
            usage = _object(chunk["usage"])
        for choice in (chunk.get("choices") or [])[:1]:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                parts.append(delta["content"])
            for piece in delta.get("tool_calls") or []:
                entry = calls.setdefault(
                    piece.get("index", 0),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if piece.get("id"):
                    entry["id"] = piece["id"]
                function = piece.get("function") or {}
                entry["function"]["name"] += function.get("name") or ""
                entry["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(parts)}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message, finish, usage, response_id


def _echo_content(content: Any) -> str:
    """The assistant text as orch sends it back: never null (llama-cpp-python's
    server answers HTTP 500 to `"content": null` beside tool calls; "" suits every server)."""
    return content if isinstance(content, str) else ""


def _object(value: Any) -> dict[str, Any] | None:
    """`value` if it is a JSON object, else None (`_usage` reads the fields it needs)."""
    return value if isinstance(value, dict) else None


def read_usage(reported: dict[str, Any] | None, prices: tuple[float, float] | None) -> Usage:
    """Usage of one response, each number checked (`orch.backends.usage.checked_usage`).

    Cost is computed from `prices` (USD per 1,000 input and output tokens)
    only when both token counts are valid; the endpoint reports no cost itself.
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
    if prices is None:
        return dataclasses.replace(usage, num_turns=1)
    if usage.input_tokens is None or usage.output_tokens is None:
        # priced but uncountable: budgets must not read this as free
        return dataclasses.replace(usage, num_turns=1, cost_rejected=bool(usage.warnings))
    cost = usage.input_tokens / 1000 * prices[0] + usage.output_tokens / 1000 * prices[1]
    return dataclasses.replace(usage, cost_usd=cost, num_turns=1)


def classify_error(
    err: Exception,
    usage: Usage,
    sdk: Any,
    *,
    base_url: str | None,
    key_env: str | None,
    model: str,
    timeout_s: float,
) -> AttemptResult | None:
    """Map an SDK or transport error to a failed AttemptResult; None if it is not one.

    429 → `http_429` (with Retry-After); 5xx, 408 and 409 → `http_5xx`
    (with Retry-After if sent). Timeouts and connection failures are
    `http_5xx` too: like a 5xx they say the endpoint could not answer now,
    and the remedy is the same — back off and retry. Other 4xx (400, 401,
    404, 422, ...) and context-length errors whatever their status are
    `request_error`: the request itself is wrong and sending it again fails
    the same way, so the default `retry_on` skips them. The retryable
    statuses are the SDK's own (openai `_should_retry`).

    Args:
        err: What the request raised.
        usage: The attempt's usage so far (kept on the failure if not empty).
        sdk: The imported `openai` module.
        base_url: The endpoint (None: the OpenAI API), for the message.
        key_env: The API key's environment variable, for a 401/403 hint.
        model: The model name, for a 404 hint.
        timeout_s: The request timeout, for a timeout's message.
    """
    import httpx2

    where = base_url or "the OpenAI API"
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
            message += f" (check the key in ${key_env})"
        elif status == 404:
            message += f" (check model {model!r} and base_url)"
        return AttemptResult(False, message, "request_error" if status >= 400 else "agent_error", usage=spent)
    if isinstance(err, sdk.APIConnectionError):
        # The aiohttp transport reports a refused connection as a connect timeout,
        # so the message names the root cause rather than trusting the class.
        root = _root_cause(err)
        if isinstance(root, TimeoutError) or "Timeout" in type(root).__name__:
            message = f"request to {where} timed out (request_timeout {timeout_s:g}s)"
        else:
            message = f"cannot reach {where}"
        return AttemptResult(False, f"{message}: {_describe(root)}", "http_5xx", usage=spent)
    if isinstance(err, TimeoutError):
        message = (
            f"request to {where} exceeded request_timeout {timeout_s:g}s "
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
