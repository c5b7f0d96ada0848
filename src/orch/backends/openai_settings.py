"""The openai backend's settings in orch.yaml: what each key means and how it is validated.

Checked when the config loads (`orch.backends.validate_agent`), before any
request; the backend itself (`orch.backends.openai`) reads the normalized form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orch.backends.command import check_relative_file
from orch.config.node import parse_duration
from orch.errors import ConfigError, did_you_mean

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
    """Validate `options` into a plain dict without the body fields orch sets itself."""
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
