"""Find the project root and load orch.yaml into frozen, validated records: the project and its agents.

Every value is checked up front; an error names `orch.yaml:line`, the key
path, what was expected, and the nearest valid key for a typo. The stages are read
by `orch.config.stages`, each value by `orch.config.node`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orch.config.documents import LineDict, parse_yaml, read_text
from orch.config.executor import ExecutorConfig, parse_executor
from orch.config.frozen import FrozenDict
from orch.config.node import CONFIG_NAME, NAME, ConfigNode, load_vars
from orch.config.stages import Stage, load_stages
from orch.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class AgentConfig:
    """A named agent: a backend and its validated settings (never secrets)."""

    name: str
    backend: str
    settings: Mapping[str, Any]
    line: int = 0


@dataclass(frozen=True)
class Project:
    """A loaded project: root directory, variables, agents and stages.

    `stages` is ordered so that every stage comes after the stages it reads.
    """

    root: Path
    vars: Mapping[str, Any]
    agents: Mapping[str, AgentConfig]
    default_agent: str
    stages: Mapping[str, Stage]
    max_parallel: int | None = None
    max_cost_usd: float | None = None
    executor: ExecutorConfig | None = None

    @property
    def config_path(self) -> Path:
        """Path of orch.yaml."""
        return self.root / CONFIG_NAME

    def stage(self, name: str) -> Stage:
        """Return the stage called `name`.

        Raises:
            ConfigError: no such stage (with the nearest name).
        """
        try:
            return self.stages[name]
        except KeyError:
            raise ConfigError(
                f"unknown stage '{name}'{did_you_mean(name, self.stages)}",
                f"stages in {CONFIG_NAME}: {', '.join(self.stages) or '(none)'}",
            ) from None

    def agent(self, name: str | None) -> AgentConfig:
        """Return the agent called `name`, or the default agent for None."""
        key = name or self.default_agent
        try:
            return self.agents[key]
        except KeyError:
            raise ConfigError(
                f"unknown agent '{key}'{did_you_mean(key, self.agents)}",
                f"agents in {CONFIG_NAME}: {', '.join(self.agents) or '(none)'}",
            ) from None


def find_root(start: Path | None = None, explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the project root: `explicit`, `$ORCH_PROJECT`, or the nearest
    directory at or above `start` (default: cwd) holding orch.yaml.

    Raises:
        ConfigError: no orch.yaml found, or the explicit directory lacks one.
    """
    chosen = explicit or os.environ.get("ORCH_PROJECT")
    if chosen:
        root = Path(chosen).expanduser().resolve()
        if not (root / CONFIG_NAME).is_file():
            raise ConfigError(
                f"{root}: no {CONFIG_NAME} in the project directory",
                "pass --project DIR (or ORCH_PROJECT) naming a directory with orch.yaml",
            )
        return root
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    raise ConfigError(
        f"no {CONFIG_NAME} found in {here} or any parent directory",
        "run orch inside a project, or pass --project DIR",
    )


def load_project(root: Path) -> Project:
    """Load and validate `root/orch.yaml`.

    Raises:
        ConfigError: for any invalid value; the message names `orch.yaml:line`,
            the key path and what was expected.
    """
    from orch.backends import validate_agent

    raw = parse_yaml(read_text(root / CONFIG_NAME, CONFIG_NAME), CONFIG_NAME)
    if raw is None:
        raw = LineDict()
    top = ConfigNode(raw, "", 1)
    top.require_mapping()
    top.check_keys({"vars", "agents", "stages", "max_parallel", "max_cost_usd", "executor"})
    variables = load_vars(top.child("vars"))
    agents, default = _load_agents(top.child("agents"), validate_agent)
    stages = load_stages(top.child("stages"), agents)
    return Project(
        root=root,
        vars=variables,
        agents=FrozenDict(agents),
        default_agent=default,
        stages=FrozenDict(stages),
        max_parallel=top.child("max_parallel").positive_int(optional=True),
        max_cost_usd=top.child("max_cost_usd").positive_float(optional=True),
        executor=_load_executor(top.child("executor")),
    )


def _load_executor(node: ConfigNode) -> ExecutorConfig | None:
    if node.missing:
        return None
    return parse_executor(node.value, node.where)


def _load_agents(node: ConfigNode, validate_agent: Any) -> tuple[dict[str, AgentConfig], str]:
    agents: dict[str, AgentConfig] = {}
    if node.missing:
        agents["offline"] = AgentConfig("offline", "rehearsal", FrozenDict({}))
        return agents, "offline"
    node.require_mapping()
    default: str | None = None
    for name, child in node.items():
        if name == "default":
            default = child.string()
            continue
        if not NAME.match(name):
            raise ConfigError(
                f"{child.where} agent name {name!r} must be letters, digits, '_' or '-'", "rename the agent"
            )
        agents[name] = validate_agent(name, child.value, child.where, child.line)
    if not agents:
        raise node.fail("at least one agent, e.g. offline: {backend: rehearsal}")
    if default is None:
        default = "offline" if "offline" in agents else next(iter(agents))
    if default not in agents:
        at = node.child("default")
        raise ConfigError(
            f"{at.where} unknown agent '{default}'{did_you_mean(default, agents)}",
            f"agents defined here: {', '.join(agents)}",
        )
    return agents, default
