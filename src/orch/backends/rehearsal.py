"""The offline default agent: no model, placeholder outputs that pass the checks.

For every expect rule it writes clearly labelled placeholder content: Markdown
with the required headings padded to `min_bytes`, JSON built to satisfy the
rule's schema, and enough files for a glob. The whole pipeline — fan-out,
barrier, synthesis, resume — thereby runs on any machine.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import math
import re
from pathlib import Path
from typing import Any

from orch.backends import AttemptResult, AttemptSpec, Usage
from orch.config.node import parse_duration
from orch.config.project import AgentConfig
from orch.config.stages import ExpectRule
from orch.errors import ConfigError
from orch.store.checks import SchemaStore

SETTINGS = {"delay": "seconds to wait before writing, to rehearse latency (e.g. 0.5s)"}
NOT_FINGERPRINTED = frozenset({"delay"})
LABEL = "REHEARSAL PLACEHOLDER — written by orch's offline agent; no model was called."


def normalize(settings: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate rehearsal settings (`delay` as a duration).

    Raises:
        ConfigError: a delay that is not a duration.
    """
    if "delay" in settings:
        settings["delay"] = parse_duration(settings["delay"], f"{where} delay")
    return settings


def create(agent: AgentConfig) -> RehearsalBackend:
    """Return a rehearsal backend for `agent`."""
    return RehearsalBackend(float(agent.settings.get("delay", 0.0)))


class RehearsalBackend:
    """Writes placeholder outputs for each expect rule, in-process."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self._schemas: dict[Path, SchemaStore] = {}

    async def run(self, spec: AttemptSpec) -> AttemptResult:
        """Write every expected file into `spec.work_dir` and succeed."""
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        schemas = self._schemas.setdefault(spec.project_root, SchemaStore(spec.project_root))
        written = []
        for rule in spec.expect:
            for name in _names(rule):
                path = spec.work_dir / name
                if path.parent != spec.work_dir:
                    path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(_content(name, rule, spec, schemas), encoding="utf-8")
                written.append(name)
        with spec.log_path.open("a", encoding="utf-8") as log:
            log.write(f"{LABEL}\nwrote: {', '.join(written) or '(no expect rules)'}\n")
        return AttemptResult(ok=True, usage=Usage(input_tokens=0, output_tokens=0, cost_usd=0.0))

    async def aclose(self) -> None:
        """Nothing to release."""


_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_GLOB_TOKEN = re.compile(r"\*|\?|\[!?\]?[^\]]*\]|[^*?\[]+")


def _names(rule: ExpectRule) -> list[str]:
    """Return `min_count` distinct file names matching the rule's glob (or its file)."""
    if rule.file is not None:
        return [rule.file]
    pattern = str(rule.glob).replace("**/", "")
    tokens = _GLOB_TOKEN.findall(pattern)
    names = []
    for index in range(rule.min_count):
        name = "".join(_fill(token, index) for token in tokens)
        names.append(name)
    if len(set(names)) < len(names) or not all(
        fnmatch.fnmatch(n, str(rule.glob)) or "**" in str(rule.glob) for n in names
    ):
        raise ConfigError(
            f"rehearsal cannot make {rule.min_count} distinct file names matching {rule.glob!r}",
            "use a '*' in the glob, or a real agent",
        )
    return names


def _fill(token: str, index: int) -> str:
    if token == "*":
        return f"rehearsal-{index + 1}"
    if token == "?":
        return _ALPHABET[index % len(_ALPHABET)]
    if token.startswith("[") and token.endswith("]") and len(token) > 2:
        negated = token[1] in "!^"
        body = token[2:-1] if negated else token[1:-1]
        chars = _class_chars(body)
        if negated:
            chars = [c for c in _ALPHABET if c not in chars]
        return chars[index % len(chars)] if chars else "x"
    return token


def _class_chars(body: str) -> list[str]:
    chars: list[str] = []
    position = 0
    while position < len(body):
        if position + 2 < len(body) and body[position + 1] == "-":
            start, end = body[position], body[position + 2]
            chars += [chr(c) for c in range(ord(start), ord(end) + 1)]
            position += 3
        else:
            chars.append(body[position])
            position += 1
    return sorted(set(chars))


def _content(name: str, rule: ExpectRule, spec: AttemptSpec, schemas: SchemaStore) -> str:
    if rule.json or name.endswith(".json"):
        schema = schemas.schema(rule.schema) if rule.schema else {"type": "object"}
        instance = example_instance(schema, spec.partition)
        if isinstance(instance, dict) and "rehearsal" not in instance and _open(schema):
            instance["rehearsal"] = LABEL
        return json.dumps(instance, indent=2, ensure_ascii=False) + "\n"
    lines = [f"# {spec.stage} / {spec.partition}", "", f"> {LABEL}", ""]
    for heading in rule.headings:
        lines += [heading, "", f"Placeholder text for {heading.lstrip('# ')}.", ""]
    text = "\n".join(lines)
    filler = "Placeholder sentence standing in for real content. "
    while len(text.encode("utf-8")) < max(rule.min_bytes, 1):
        text += filler
    return text.rstrip() + "\n"


def _open(schema: Any) -> bool:
    """True if a placeholder label key may be added (additionalProperties absent or true)."""
    return isinstance(schema, dict) and schema.get("additionalProperties", True) is True


def example_instance(schema: Any, label: str, name: str = "") -> Any:
    """Return a small value valid against `schema` (the keywords rehearsal supports).

    Supports type, properties, required (also keys with no `properties` entry),
    additionalProperties, items, minItems, enum, const, minimum/maximum and
    their exclusive forms, minLength. Strings say they are placeholders; a
    property named `id` gets `label` (the partition id).
    """
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = dict(schema.get("properties", {}))
        extra = schema.get("additionalProperties", True)
        for key in schema.get("required", []):
            props.setdefault(key, extra if isinstance(extra, dict) else {"type": "string"})
        return {key: example_instance(sub, label, key) for key, sub in props.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        return [example_instance(schema.get("items", {"type": "string"}), label, name)] * count
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    text = label if name == "id" else f"rehearsal placeholder ({name or 'value'})"
    return text.ljust(int(schema.get("minLength", 0)), ".")


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    """The smallest allowed value near 0 within the inclusive and exclusive bounds."""
    lows = [schema["minimum"]] if "minimum" in schema else []
    lows += [schema["exclusiveMinimum"] + 1] if "exclusiveMinimum" in schema else []
    highs = [schema["maximum"]] if "maximum" in schema else []
    highs += [schema["exclusiveMaximum"] - 1] if "exclusiveMaximum" in schema else []
    low, high = (max(lows) if lows else None), (min(highs) if highs else None)
    if low is not None and high is not None and low > high and not integer:
        # a narrow real interval: its midpoint is inside every bound
        bottom = max([schema.get("minimum", float("-inf")), schema.get("exclusiveMinimum", float("-inf"))])
        top = min([schema.get("maximum", float("inf")), schema.get("exclusiveMaximum", float("inf"))])
        value = (bottom + top) / 2
    elif low is not None:
        value = low
    elif high is not None:
        value = min(0, high)
    else:
        value = 0
    if integer:
        value = math.ceil(value)
    return int(value) if integer else float(value)
