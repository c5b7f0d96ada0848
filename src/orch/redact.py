"""Keep secrets and unwritable values out of what orch writes: one Redactor per run.

A `Redactor` holds the values of every agent's secret environment variables
(`api_key_env` of openai agents, `secret_env` of command agents) and replaces
them in transcripts, agent logs, error.json, events, notes and messages.
`json_safe` makes a record serialisable whatever numbers an agent reported.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: Values shorter than this are not redacted: replacing a short value ("1",
#: "dev", "true") would mangle every log that happens to contain it while
#: protecting nothing, since a value that short is guessable anyway.
MIN_SECRET_CHARS = 8
#: Largest integer JSON writers accept (orjson refuses ints beyond 64 bits).
_MAX_JSON_INT = 2**63 - 1
_CHUNK_BYTES = 1 << 20


def secret_names(settings: Mapping[str, Any]) -> list[str]:
    """Return the names of the environment variables an agent's settings mark secret.

    `api_key_env` (openai) and every name in `secret_env` (any backend).
    """
    names = [settings.get("api_key_env")]
    names += list(settings.get("secret_env") or ())
    return [n for n in names if isinstance(n, str) and n]


class Redactor:
    """Replaces secret values in text and records with `[redacted NAME]`.

    Args:
        secrets: Variable name → value. Values shorter than
            `MIN_SECRET_CHARS` are ignored (see there). The JSON-escaped form
            of each value is redacted too, so a secret inside a JSON string is
            caught whatever characters it holds.
    """

    def __init__(self, secrets: Mapping[str, str] | None = None) -> None:
        pairs: dict[str, str] = {}
        for name, value in (secrets or {}).items():
            if not isinstance(value, str) or len(value) < MIN_SECRET_CHARS:
                continue
            for form in (value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]):
                pairs.setdefault(form, f"[redacted {name}]")
        # longest first, so a secret containing another is replaced whole
        self._pairs = sorted(pairs.items(), key=lambda p: -len(p[0]))
        self._bytes = [(k.encode(), v.encode()) for k, v in self._pairs]
        self.longest = max((len(k) for k, _ in self._bytes), default=0)

    @classmethod
    def for_agents(cls, agents: Iterable[Any], environ: Mapping[str, str] | None = None) -> Redactor:
        """Return the redactor for every agent's secrets.

        A secret's value is the agent's own `env` entry if it sets one, else
        orch's environment variable of that name.

        Args:
            agents: `AgentConfig` records (anything with `.settings`).
            environ: The environment to read (default `os.environ`).
        """
        environ = os.environ if environ is None else environ
        secrets: dict[str, str] = {}
        for agent in agents:
            env = agent.settings.get("env") or {}
            for name in secret_names(agent.settings):
                value = env.get(name, environ.get(name))
                if isinstance(value, str):
                    secrets[f"{name}#{len(secrets)}" if name in secrets else name] = value
        return cls(secrets)

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def text(self, text: str) -> str:
        """Return `text` with every secret replaced."""
        for secret, mark in self._pairs:
            if secret in text:
                text = text.replace(secret, mark)
        return text

    def data(self, data: bytes) -> bytes:
        """Return `data` with every secret (UTF-8 encoded) replaced."""
        for secret, mark in self._bytes:
            if secret in data:
                data = data.replace(secret, mark)
        return data

    def record(self, value: Any) -> Any:
        """Return a copy of a JSON-like record with every string (keys too) redacted."""
        if not self._pairs:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.record(k): self.record(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.record(v) for v in value]
        return value

    def file(self, path: Path, start: int = 0) -> bool:
        """Redact `path` from byte `start` on, in place; return True if anything was replaced.

        Streams in 1 MiB chunks (an overlap of the longest secret carries a
        secret split across chunks), writes a temporary file beside `path`
        only once a secret is found, and replaces `path` atomically. A
        missing file is left alone.

        Raises:
            OSError: the file cannot be read or rewritten.
        """
        if not self._pairs:
            return False
        try:
            source = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return False
        with source:
            if not self._contains(source, start):
                return False
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".redact")
            try:
                with os.fdopen(fd, "wb") as out:
                    source.seek(0)
                    _copy_prefix(source, out, start)
                    self._copy_redacted(source, out)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        return True

    def _contains(self, source: Any, start: int) -> bool:
        source.seek(start)
        tail = b""
        while chunk := source.read(_CHUNK_BYTES):
            window = tail + chunk
            if any(secret in window for secret, _ in self._bytes):
                return True
            tail = window[-(self.longest - 1) :] if self.longest > 1 else b""
        return False

    def _copy_redacted(self, source: Any, out: Any) -> None:
        keep = max(self.longest - 1, 0)
        pending = b""
        while chunk := source.read(_CHUNK_BYTES):
            window = self.data(pending + chunk)
            # hold back a tail that may be the start of a secret split across chunks
            cut = len(window) - keep if len(window) > keep else 0
            out.write(window[:cut])
            pending = window[cut:]
        out.write(self.data(pending))


def _copy_prefix(source: Any, out: Any, length: int) -> None:
    remaining = length
    while remaining > 0:
        chunk = source.read(min(_CHUNK_BYTES, remaining))
        if not chunk:
            break
        out.write(chunk)
        remaining -= len(chunk)


def json_safe(value: Any) -> Any:
    """Return a copy of a JSON-like record that every JSON writer accepts.

    Integers beyond 64 bits become strings naming their size (orjson refuses
    them, and one such number once killed the promoter); NaN and infinities
    become None (JSON has no such numbers). Anything else not JSON becomes its
    `str`.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if -_MAX_JSON_INT <= value <= _MAX_JSON_INT:
            return value
        return f"<integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return str(value)
