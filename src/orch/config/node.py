"""Reading orch.yaml: a raw YAML value with its key path and line, and typed accessors.

Every accessor validates as it reads; an error names `orch.yaml:line`, the key
path, what was expected, and the nearest valid key for a typo.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from orch.config.documents import LineDict, LineList
from orch.config.frozen import FrozenDict
from orch.errors import ConfigError, did_you_mean

CONFIG_NAME = "orch.yaml"

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$")
#: An agent or stage name.
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_PARAM = re.compile(r"^[A-Z][A-Z0-9_]*$")


def parse_duration(value: Any, where: str) -> float:
    """Parse `20m`, `1h30m`, `90s`, `2.5s` or a number of seconds into seconds.

    Raises:
        ConfigError: `where: expected a duration like 20m, 90s or 1h30m`.
    """
    if isinstance(value, bool):
        pass
    elif isinstance(value, int | float) and value >= 0:
        return float(value)
    elif isinstance(value, str) and value.strip():
        match = _DURATION.match(value)
        if match and any(match.groups()):
            hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
            return hours * 3600 + minutes * 60 + seconds
    raise ConfigError(f"{where}: expected a duration like 20m, 90s or 1h30m, got {value!r}")


class ConfigNode:
    """A raw YAML value with its key path and line, and typed accessors."""

    def key_lines(self) -> dict[str, int]:
        """Lines of this mapping's keys (empty for a non-mapping)."""
        return dict(getattr(self.value, "key_lines", {}))

    def __init__(self, value: Any, path: str, line: int) -> None:
        self.value = value
        self.path = path
        # The key's line (where a typo is), else the value's own (top level).
        self.line = line or getattr(value, "line", 0)

    @property
    def where(self) -> str:
        """The `orch.yaml:LINE: key.path:` prefix of this node's messages."""
        key = f" {self.path}:" if self.path else ""
        return f"{CONFIG_NAME}:{self.line}:{key}"

    def fail(self, expected: str, hint: str | None = None) -> ConfigError:
        """Return (not raise) the error "expected `expected`, got <the value>"."""
        return ConfigError(f"{self.where} expected {expected}, got {_show(self.value)}", hint)

    @property
    def missing(self) -> bool:
        """True if the key is absent or null."""
        return self.value is None

    def child(self, key: str) -> ConfigNode:
        """Return the node of mapping key `key` (missing if absent or not a mapping)."""
        value = self.value.get(key) if isinstance(self.value, dict) else None
        line = self.value.line_of(key) if isinstance(self.value, LineDict) else self.line
        return ConfigNode(value, f"{self.path}.{key}" if self.path else key, line)

    def items(self) -> list[tuple[str, ConfigNode]]:
        """Return `(key, node)` of this mapping's entries, in file order."""
        return [(str(k), self.child(k)) for k in self.value]

    def elements(self) -> list[ConfigNode]:
        """Return the nodes of this list's elements, each with its own line."""
        lines = self.value if isinstance(self.value, LineList) else None
        return [
            ConfigNode(v, f"{self.path}[{i}]", lines.line_of(i) if lines else self.line)
            for i, v in enumerate(self.value)
        ]

    def require_mapping(self) -> None:
        """Raise ConfigError unless the value is a mapping."""
        if not isinstance(self.value, dict):
            raise self.fail("a mapping")

    def check_keys(self, allowed: set[str], required: tuple[str, ...] = ()) -> None:
        """Raise ConfigError for a key not in `allowed` (with the nearest) or a missing `required` one."""
        self.require_mapping()
        for key in self.value:
            if key not in allowed:
                at = self.child(str(key))
                raise ConfigError(
                    f"{at.where} unknown key '{key}'{did_you_mean(str(key), allowed)}",
                    f"valid keys here: {', '.join(sorted(allowed))}",
                )
        for key in required:
            if self.value.get(key) is None:
                raise ConfigError(f"{self.where} missing required key '{key}'")

    def string(self, optional: bool = False) -> str | None:
        """Return a non-empty string (None if `optional` and missing)."""
        if self.missing and optional:
            return None
        if not isinstance(self.value, str) or not self.value.strip():
            raise self.fail("a non-empty string")
        return self.value

    def positive_int(self, optional: bool = False, minimum: int = 1) -> int | None:
        """Return an integer ≥ `minimum` (None if `optional` and missing)."""
        if self.missing and optional:
            return None
        if isinstance(self.value, bool) or not isinstance(self.value, int) or self.value < minimum:
            raise self.fail(f"an integer ≥ {minimum}")
        return self.value

    def positive_float(self, optional: bool = False) -> float | None:
        """Return a number > 0 as a float (None if `optional` and missing)."""
        if self.missing and optional:
            return None
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise self.fail("a number")
        if self.value <= 0:
            raise self.fail("a number > 0")
        return float(self.value)

    def boolean(self) -> bool:
        """Return true or false (false if missing)."""
        if self.missing:
            return False
        if not isinstance(self.value, bool):
            raise self.fail("true or false")
        return self.value

    def duration(self, optional: bool = True) -> float | None:
        """Return a duration in seconds (see `parse_duration`; None if `optional` and missing)."""
        if self.missing and optional:
            return None
        return parse_duration(self.value, self.where.rstrip(":"))

    def string_list(self) -> tuple[str, ...]:
        """Return a list of non-empty strings; a single string is a list of one (() if missing)."""
        if self.missing:
            return ()
        if isinstance(self.value, str):
            return (self.value,)
        if not isinstance(self.value, list) or not all(isinstance(v, str) and v for v in self.value):
            raise self.fail("a list of strings")
        return tuple(self.value)


def _show(value: Any) -> str:
    """Describe a wrong value briefly for a message: `nothing`, `a mapping`, a short list, a repr."""
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        shown = repr([v if not isinstance(v, dict | list) else "..." for v in value])
        return f"the list {shown}" if len(shown) <= 60 else "a list"
    return repr(value)


def load_vars(node: ConfigNode) -> Mapping[str, Any]:
    """Read a `vars:` mapping whose names are `<PARAM>`s (`[A-Z][A-Z0-9_]*`); empty if missing."""
    if node.missing:
        return FrozenDict({})
    node.require_mapping()
    for key, child in node.items():
        if not _PARAM.match(key):
            raise ConfigError(
                f"{child.where} variable name '{key}' must match [A-Z][A-Z0-9_]*",
                f"rename it, e.g. {key.upper()!r}, and use it as <{key.upper()}> in blueprints",
            )
    return FrozenDict(dict(node.value))
