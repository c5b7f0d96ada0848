"""Agent backends behind one small interface, and the registry of backends.

A backend runs one attempt: it gets an `AttemptSpec` (prompt, staging
directory, timeout) and returns an `AttemptResult`. It never promotes
outputs; orch checks the expect rules on disk afterwards.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from orch.config.frozen import FrozenDict
from orch.config.project import AgentConfig
from orch.config.stages import ExpectRule
from orch.errors import ConfigError, did_you_mean

BACKENDS = {
    "rehearsal": "orch.backends.rehearsal",
    "command": "orch.backends.command",
    "openai": "orch.backends.openai",
}
COMMON_KEYS = frozenset(
    {"backend", "description", "max_concurrency", "requests_per_minute", "resources", "run_on_cluster"}
)
#: Settings that change how fast (or where) orch calls an agent, not what it produces.
NOT_FINGERPRINTED = frozenset(
    {"description", "max_concurrency", "requests_per_minute", "resources", "run_on_cluster"}
)


@dataclass(frozen=True)
class AttemptSpec:
    """Everything a backend needs to run one attempt of one partition.

    Attributes:
        stage: Stage name.
        partition: Partition id.
        attempt: Attempt number, 1-based, increasing across runs.
        prompt: The rendered blueprint.
        work_dir: The staging directory; the agent's cwd and only write target.
        out_dir: The final partition directory the staging directory becomes.
        prompt_file: `work_dir/.orch/prompt.md`, already written.
        log_path: `work_dir/.orch/agent.log`; the backend appends its output.
        expect: The stage's expect rules (the rehearsal backend satisfies them).
        project_root: The project root (for schema paths).
        timeout_s: Per-attempt timeout in seconds, or None; orch enforces it by
            cancelling `run`, which must then stop the agent before returning.
        retry_after_cap_s: The stage's `backoff.cap`: the longest Retry-After
            the agent's limiter honours, or None for the limiter's own bound.
    """

    stage: str
    partition: str
    attempt: int
    prompt: str
    work_dir: Path
    out_dir: Path
    prompt_file: Path
    log_path: Path
    expect: tuple[ExpectRule, ...]
    project_root: Path
    timeout_s: float | None = None
    retry_after_cap_s: float | None = None


@dataclass(frozen=True)
class Usage:
    """Tokens and cost an attempt reported; None where the agent did not say.

    Attributes:
        input_tokens: Every input token the model read, cached ones included
            (summed over all requests of the attempt).
        output_tokens: Tokens the model generated.
        cost_usd: Cost in US dollars, reported by the agent or computed from
            configured prices; None when unknown (never guessed).
        num_turns: Model calls (agentic turns) the attempt took.
        cached_input_tokens: The share of `input_tokens` served from a prompt cache.
        cache_creation_tokens: The share of `input_tokens` written to a prompt
            cache (Anthropic bills these apart).
        warnings: Why a reported number was rejected and recorded as unknown
            (see `orch.backends.usage.check_tokens`); written as `warnings`.
        cost_rejected: The agent reported a cost that was not a valid number;
            budgets then halt rather than count it as 0.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    num_turns: int | None = None
    cached_input_tokens: int | None = None
    cache_creation_tokens: int | None = None
    warnings: tuple[str, ...] = ()
    cost_rejected: bool = False

    def to_json(self) -> dict[str, Any]:
        """Return the set fields (not None, not empty, not False) as a JSON-ready dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if _is_set(v)}

    def __add__(self, other: Usage) -> Usage:
        def add(a: Any, b: Any) -> Any:
            if isinstance(a, bool):
                return a or b
            return b if a is None else a if b is None else a + b

        return Usage(**{f: add(getattr(self, f), getattr(other, f)) for f in _USAGE_FIELDS})


_USAGE_FIELDS = tuple(f.name for f in fields(Usage))


def _is_set(value: Any) -> bool:
    return value is not None and value is not False and value != ()


@dataclass(frozen=True)
class AttemptResult:
    """How an attempt ended, before orch checks its outputs.

    Attributes:
        ok: The agent reports success (exit 0 and no agent-reported error).
            Not proof of completeness: the expect rules decide that.
        error: One line saying what went wrong, for notes and manifests.
        error_class: `timeout`, `exit`, `agent_error`, `http_429`, `http_5xx`,
            `request_error`, `interrupted`, `checks` or `worker_lost` (see
            `orch.config.project.RETRY_CLASSES`).
        exit_code: The process exit code, for the command backend.
        usage: Tokens and cost, when known.
        retry_after_s: A server's Retry-After, honoured by the backoff.
        worker: The Dask worker that ran the attempt (None when run here).
    """

    ok: bool
    error: str | None = None
    error_class: str | None = None
    exit_code: int | None = None
    usage: Usage | None = None
    retry_after_s: float | None = None
    worker: str | None = None


class Backend(Protocol):
    """Runs attempts for one agent; one instance is shared by all partitions."""

    async def run(self, spec: AttemptSpec) -> AttemptResult:
        """Run one attempt in `spec.work_dir` and report how it ended."""
        ...

    async def aclose(self) -> None:
        """Release clients and connections."""
        ...


def _module(backend: str) -> ModuleType:
    return importlib.import_module(BACKENDS[backend])


def validate_agent(name: str, raw: Any, where: str, line: int) -> AgentConfig:
    """Validate one `agents.NAME` mapping of orch.yaml into an AgentConfig.

    Args:
        name: The agent's key.
        raw: The YAML value.
        where: `orch.yaml:LINE: agents.NAME:` prefix for messages.
        line: The line of the agent key.

    Raises:
        ConfigError: not a mapping, unknown backend, or a bad setting.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} expected a mapping like {{backend: rehearsal}}")
    backend = raw.get("backend")
    if backend not in BACKENDS:
        raise ConfigError(
            f"{where} unknown backend {backend!r}{did_you_mean(str(backend), BACKENDS)}",
            f"backends: {', '.join(BACKENDS)}",
        )
    module = _module(backend)
    allowed = COMMON_KEYS | set(module.SETTINGS)
    for key in raw:
        if key not in allowed:
            raise ConfigError(
                f"{where} unknown key '{key}' for backend {backend}{did_you_mean(str(key), allowed)}",
                f"valid keys: {', '.join(sorted(allowed))}",
            )
    settings = {k: v for k, v in raw.items() if k != "backend"}
    for key in ("max_concurrency", "requests_per_minute"):
        value = settings.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise ConfigError(f"{where} {key}: expected a number > 0, got {value!r}")
    if "resources" in settings or "run_on_cluster" in settings:
        from orch.config.executor import check_agent_placement

        check_agent_placement(settings, where)
    settings = module.normalize(settings, where)
    return AgentConfig(name=name, backend=backend, settings=FrozenDict(settings), line=line)


def create_backend(agent: AgentConfig) -> Backend:
    """Return a new backend instance for `agent` (one per agent per run)."""
    return _module(agent.backend).create(agent)


def fingerprint_settings(agent: AgentConfig) -> dict[str, Any]:
    """Return the settings that shape an agent's outputs (no secrets, no rates).

    Backends keep secrets out of settings entirely (only env var names).
    """
    skip = NOT_FINGERPRINTED | set(getattr(_module(agent.backend), "NOT_FINGERPRINTED", ()))
    settings = {k: v for k, v in agent.settings.items() if k not in skip}
    return {"backend": agent.backend, **settings}
