"""The stages of orch.yaml: their frozen records and how each stage's keys are read and checked."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orch.config.frozen import FrozenDict
from orch.config.node import CONFIG_NAME, NAME, ConfigNode, load_vars
from orch.errors import ConfigError, did_you_mean

RETRY_CLASSES = ("timeout", "checks", "agent_error", "http_429", "http_5xx", "request_error", "worker_lost")
#: Retried only when `retry_on` names them: a request the endpoint refused as
#: malformed or too long (a 4xx, a context-length error) fails the same way again.
NOT_RETRIED_BY_DEFAULT = frozenset({"request_error"})


@dataclass(frozen=True)
class PartitionSource:
    """Where a stage's partitions come from: rows of a references file.

    Attributes:
        path: The references file, relative to the project root.
        key_path: Dotted key path to the list of rows inside the document
            (`functions`, `data.items`); None when the document is the list.
        id_field: The row field whose value is the partition id.
    """

    path: str
    key_path: str | None
    id_field: str


@dataclass(frozen=True)
class FanIn:
    """A fan-in: one partition per distinct `by` value of the `from_stage` partitions.

    `by` None gathers every upstream partition into a single partition.
    """

    from_stage: str
    by: str | None


@dataclass(frozen=True)
class ExpectRule:
    """One completeness check on a partition's outputs (DESIGN.md §3).

    Exactly one of `file` and `glob` is set. For a glob, at least `min_count`
    files must match and every match must pass the other checks.
    `schema` (a project-relative path) implies `json`.
    """

    file: str | None = None
    glob: str | None = None
    min_count: int = 1
    non_empty: bool = False
    min_bytes: int = 0
    headings: tuple[str, ...] = ()
    json: bool = False
    schema: str | None = None

    def __post_init__(self) -> None:
        if self.schema is not None and not self.json:
            object.__setattr__(self, "json", True)  # a schema implies valid JSON

    @property
    def target(self) -> str:
        """The file name or glob this rule checks."""
        return self.file if self.file is not None else str(self.glob)


@dataclass(frozen=True)
class Stage:
    """One stage: a blueprint instantiated once per partition.

    Attributes:
        name: The stage key in orch.yaml.
        blueprint: Blueprint path relative to the project root.
        output: Output directory template relative to the project root,
            with `<PARAM>` placeholders.
        partitions: Row source: one partition per row for a fan-out stage; for a
            fan-in stage, optional rows describing each group (id = `fan_in.by`).
        fan_in: Fan-in spec; None for a fan-out stage.
        needs: Stages whose partition of the same id must be complete first;
            their outputs arrive in `INPUTS`.
        expect: Completeness rules checked before promotion and at the barrier.
        agent: Agent name, or None for the project default.
        max_parallel: Concurrency cap for this stage, or None for no own cap.
        retries: Extra attempts after the first failed one, per run.
        retry_on: Failure classes worth retrying (RETRY_CLASSES or exit codes);
            None retries every failure except NOT_RETRIED_BY_DEFAULT.
        backoff_base_s: First backoff ceiling; doubles per retry (full jitter).
        backoff_cap_s: Upper bound of a backoff ceiling.
        timeout_s: Per-attempt timeout in seconds, or None.
        max_cost_usd: Budget for this stage in one run, or None.
        vars: Stage-level variables, merged over the project vars.
        line: Line of the stage key in orch.yaml.
        lines: Line of each of the stage's own keys.
    """

    name: str
    blueprint: str
    output: str
    partitions: PartitionSource | None = None
    fan_in: FanIn | None = None
    needs: tuple[str, ...] = ()
    expect: tuple[ExpectRule, ...] = ()
    agent: str | None = None
    max_parallel: int | None = None
    retries: int = 2
    retry_on: frozenset[str | int] | None = None
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 60.0
    timeout_s: float | None = None
    max_cost_usd: float | None = None
    vars: Mapping[str, Any] = field(default_factory=lambda: FrozenDict({}))
    line: int = 0
    lines: Mapping[str, int] = field(default_factory=lambda: FrozenDict({}))

    def line_of(self, key: str) -> int:
        """Line of one of the stage's keys in orch.yaml (the stage's line if absent)."""
        return self.lines.get(key, self.line)

    @property
    def upstream(self) -> tuple[str, ...]:
        """Stages this one reads from: the fan-in source, then `needs`."""
        first = (self.fan_in.from_stage,) if self.fan_in else ()
        return first + tuple(s for s in self.needs if s not in first)


_STAGE_KEYS = {
    "description", "blueprint", "partitions", "fan_in", "needs", "output", "expect",
    "agent", "max_parallel", "retries", "retry_on", "backoff", "timeout", "max_cost_usd",
    "vars",
}  # fmt: skip


def load_stages(node: ConfigNode, agents: Collection[str]) -> dict[str, Stage]:
    """Read the `stages:` mapping, ordered so every stage follows the stages it reads.

    Args:
        node: The `stages` node of orch.yaml.
        agents: The names of the agents defined, for each stage's `agent`.

    Raises:
        ConfigError: an invalid stage, an unknown upstream stage or agent, or a cycle.
    """
    if node.missing:
        raise ConfigError(f"{CONFIG_NAME}: no stages defined", "add a 'stages:' mapping (see DESIGN.md §3)")
    node.require_mapping()
    stages = {name: _load_stage(name, child, agents) for name, child in node.items()}
    for stage in stages.values():
        at = node.child(stage.name)
        for upstream in stage.upstream:
            if upstream not in stages:
                key = "fan_in.from" if stage.fan_in and upstream == stage.fan_in.from_stage else "needs"
                raise ConfigError(
                    f"{at.child(key.split('.')[0]).where} unknown stage '{upstream}'"
                    f"{did_you_mean(upstream, stages)}"
                )
            if upstream == stage.name:
                raise ConfigError(f"{at.where} stage '{stage.name}' reads from itself")
    return _order_stages(stages)


def _load_stage(name: str, node: ConfigNode, agents: Collection[str]) -> Stage:
    if not NAME.match(name):
        raise ConfigError(
            f"{node.where} stage name {name!r} must be letters, digits, '_' or '-'", "rename the stage"
        )
    node.check_keys(_STAGE_KEYS, required=("blueprint", "output"))
    partitions, fan_in = node.child("partitions"), node.child("fan_in")
    if partitions.missing and fan_in.missing:
        raise ConfigError(
            f"{node.where} a stage needs 'partitions' (fan-out over a references file) "
            "or 'fan_in' (one partition per group of an upstream stage)"
        )
    agent = node.child("agent").string(optional=True)
    if agent is not None and agent not in agents:
        raise ConfigError(
            f"{node.child('agent').where} unknown agent '{agent}'{did_you_mean(agent, agents)}",
            f"agents defined: {', '.join(agents)}",
        )
    backoff = node.child("backoff")
    if not backoff.missing:
        backoff.check_keys({"base", "cap"})
    output = node.child("output").string() or ""
    if Path(output).is_absolute():
        raise node.child("output").fail("a path relative to the project root")
    stage_vars = load_vars(node.child("vars"))
    source = None if partitions.missing else _load_source(partitions)
    fan = None if fan_in.missing else _load_fan_in(fan_in)
    if source and fan and source.id_field != fan.by:
        raise ConfigError(
            f"{partitions.child('id').where} a fan-in stage's partitions list its groups, "
            f"so 'id' must be the fan_in 'by' field ({fan.by!r}), got {source.id_field!r}"
        )
    retries = node.child("retries").positive_int(optional=True, minimum=0)
    base_s, cap_s = backoff.child("base").duration(), backoff.child("cap").duration()
    return Stage(
        name=name,
        blueprint=node.child("blueprint").string() or "",
        output=output,
        partitions=source,
        fan_in=fan,
        needs=node.child("needs").string_list(),
        expect=_load_expect(node.child("expect")),
        agent=agent,
        max_parallel=node.child("max_parallel").positive_int(optional=True),
        retries=2 if retries is None else retries,
        retry_on=_load_retry_on(node.child("retry_on")),
        backoff_base_s=2.0 if base_s is None else base_s,
        backoff_cap_s=60.0 if cap_s is None else cap_s,
        timeout_s=_stage_timeout(node),
        max_cost_usd=node.child("max_cost_usd").positive_float(optional=True),
        vars=stage_vars,
        line=node.line,
        lines=FrozenDict(node.key_lines()),
    )


#: Every attempt's time limit unless its stage sets `timeout` (or `timeout: none`):
#: long enough for a large agentic task, short enough that a hung agent or a
#: trickling endpoint cannot hold a run for ever.
DEFAULT_TIMEOUT_S = 3600.0


def _stage_timeout(stage: ConfigNode) -> float | None:
    """A stage's `timeout`: DEFAULT_TIMEOUT_S when absent, None for `none` (or null)."""
    node = stage.child("timeout")
    if isinstance(stage.value, dict) and "timeout" in stage.value and node.value is None:
        return None
    if isinstance(node.value, str) and node.value.strip().lower() == "none":
        return None
    seconds = _positive_duration(node)
    return DEFAULT_TIMEOUT_S if seconds is None else seconds


def _positive_duration(node: ConfigNode) -> float | None:
    seconds = node.duration()
    if seconds is not None and seconds <= 0:
        raise ConfigError(
            f"{node.where} expected a duration > 0, got {node.value!r}", "timeout: none for no time limit"
        )
    return seconds


def _load_source(node: ConfigNode) -> PartitionSource:
    node.check_keys({"from", "path", "id"}, required=("from", "id"))
    id_field = node.child("id").string() or ""
    return PartitionSource(
        path=node.child("from").string() or "",
        key_path=node.child("path").string(optional=True),
        id_field=id_field,
    )


def _load_fan_in(node: ConfigNode) -> FanIn:
    node.check_keys({"from", "by"}, required=("from",))
    return FanIn(
        from_stage=node.child("from").string() or "",
        by=node.child("by").string(optional=True),
    )


_RULE_KEYS = {"file", "glob", "min", "non_empty", "min_bytes", "headings", "json", "schema"}


def _load_expect(node: ConfigNode) -> tuple[ExpectRule, ...]:
    if node.missing:
        return ()
    if not isinstance(node.value, list):
        raise node.fail("a list of rules like {file: findings.md, min_bytes: 400}")
    rules = []
    for item in node.elements():
        if isinstance(item.value, str) and item.value:
            rules.append(ExpectRule(file=_safe_rel(item, item.value)))
            continue
        item.check_keys(_RULE_KEYS)
        file, glob = item.child("file").string(optional=True), item.child("glob").string(optional=True)
        if (file is None) == (glob is None):
            raise ConfigError(f"{item.where} a rule needs exactly one of 'file' or 'glob'")
        if not item.child("min").missing and glob is None:
            raise ConfigError(f"{item.child('min').where} 'min' applies only to a 'glob' rule")
        schema = item.child("schema").string(optional=True)
        rules.append(
            ExpectRule(
                file=_safe_rel(item.child("file"), file) if file else None,
                glob=_safe_rel(item.child("glob"), glob) if glob else None,
                min_count=item.child("min").positive_int(optional=True) or 1,
                non_empty=item.child("non_empty").boolean(),
                min_bytes=item.child("min_bytes").positive_int(optional=True, minimum=0) or 0,
                headings=item.child("headings").string_list(),
                json=item.child("json").boolean() or schema is not None,
                schema=schema,
            )
        )
    return tuple(rules)


def _safe_rel(node: ConfigNode, value: str) -> str:
    parts = Path(value).parts
    if Path(value).is_absolute() or ".." in parts or parts[:1] == (".orch",):
        raise node.fail("a path inside the partition directory (relative, no '..', not .orch/)")
    return value


def _load_retry_on(node: ConfigNode) -> frozenset[str | int] | None:
    if node.missing:
        return None
    if not isinstance(node.value, list):
        raise node.fail(f"a list of {', '.join(RETRY_CLASSES)} or exit codes")
    classes: set[str | int] = set()
    for item in node.elements():
        value = item.value
        if (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value in RETRY_CLASSES
        ):
            classes.add(value)
        else:
            hint = did_you_mean(str(value), RETRY_CLASSES)
            raise ConfigError(
                f"{item.where} unknown retry class {value!r}{hint}",
                f"use {', '.join(RETRY_CLASSES)} or an exit code such as 1",
            )
    return frozenset(classes)


def _order_stages(stages: dict[str, Stage]) -> dict[str, Stage]:
    """Order stages so each follows its upstream stages (file order otherwise).

    Raises:
        ConfigError: a cycle, naming the stages on it.
    """
    ordered: dict[str, Stage] = {}
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            cycle = [*visiting[visiting.index(name) :], name]
            raise ConfigError(
                f"{CONFIG_NAME}:{stages[name].line}: stages form a cycle: {' -> '.join(cycle)}",
                "a stage may only read from stages that do not read from it",
            )
        visiting.append(name)
        for upstream in stages[name].upstream:
            visit(upstream)
        visiting.pop()
        ordered[name] = stages[name]

    for name in stages:
        visit(name)
    return ordered
