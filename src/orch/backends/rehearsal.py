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
import re
from pathlib import Path
from typing import Any

from orch.backends import AttemptResult, AttemptSpec, Usage
from orch.errors import ConfigError
from orch.expect import SchemaStore
from orch.project import AgentConfig, ExpectRule, parse_duration

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


def _names(rule: ExpectRule) -> list[str]:
    if rule.file is not None:
        return [rule.file]
    pattern = str(rule.glob).replace("**/", "")
    names = []
    for index in range(1, rule.min_count + 1):
        name = re.sub(r"\[!?([^\]])[^\]]*\]", r"\1", pattern)
        name = name.replace("*", f"rehearsal-{index}", 1).replace("*", "").replace("?", "x")
        if not fnmatch.fnmatch(name, str(rule.glob)) and "**" not in str(rule.glob):
            raise ConfigError(f"rehearsal cannot make a file name matching {rule.glob!r}")
        names.append(name)
    return names


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
    return isinstance(schema, dict) and schema.get("additionalProperties", True) is not False


def example_instance(schema: Any, label: str, name: str = "") -> Any:
    """Return a small value valid against `schema` (the keywords rehearsal supports).

    Supports type, properties, required, additionalProperties, items, minItems,
    enum, const, minimum/maximum, minLength, default. Strings say they are
    placeholders; a property named `id` gets `label` (the partition id).
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
        props = schema.get("properties", {})
        return {key: example_instance(sub, label, key) for key, sub in props.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        return [example_instance(schema.get("items", {"type": "string"}), label, name)] * count
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        value = low + 1 if "exclusiveMinimum" in schema and "minimum" not in schema else low
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    text = label if name == "id" else f"rehearsal placeholder ({name or 'value'})"
    return text.ljust(int(schema.get("minLength", 0)), ".")
