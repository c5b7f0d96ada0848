"""Where a run's attempts execute: the `executor:` block of orch.yaml and `--executor URL`.

Validated into an `ExecutorConfig` record at load; importing this module does
not import dask (only `orch.executors.dask` does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from orch.config.node import parse_duration
from orch.errors import ConfigError, UsageError, did_you_mean

KINDS = ("local", "dask")
EXECUTOR_KEYS = ("kind", "scheduler", "latency_wait", "connect_timeout")


@dataclass(frozen=True)
class ExecutorConfig:
    """Where attempts run.

    Attributes:
        kind: `local` (this machine) or `dask` (a Dask cluster).
        scheduler: The Dask scheduler address, e.g. `tcp://head:8786` (dask only).
        latency_wait_s: Seconds to wait for an attempt's expected outputs to
            appear on a shared filesystem that shows files late, before the
            checks fail it (Snakemake's `--latency-wait`); 0 to check at once.
        connect_timeout_s: Bound on connecting to the scheduler.
    """

    kind: str = "local"
    scheduler: str | None = None
    latency_wait_s: float = 0.0
    connect_timeout_s: float = 30.0


def parse_executor(raw: Any, where: str) -> ExecutorConfig:
    """Validate the `executor:` mapping of orch.yaml.

    Args:
        raw: The YAML value.
        where: `orch.yaml:LINE: executor:` prefix for messages.

    Raises:
        ConfigError: not a mapping, an unknown key (with the nearest valid one),
            an unknown kind, a dask executor without a scheduler address, or a
            bad duration.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} expected a mapping like {{kind: dask, scheduler: tcp://head:8786}}")
    for key in raw:
        if key not in EXECUTOR_KEYS:
            raise ConfigError(
                f"{where} unknown key '{key}'{did_you_mean(str(key), EXECUTOR_KEYS)}",
                f"valid keys here: {', '.join(EXECUTOR_KEYS)}",
            )
    kind = raw.get("kind", "local")
    if kind not in KINDS:
        raise ConfigError(
            f"{where} kind: unknown executor {kind!r}{did_you_mean(str(kind), KINDS)}",
            f"kinds: {', '.join(KINDS)}",
        )
    scheduler = raw.get("scheduler")
    if kind == "dask":
        scheduler = check_address(scheduler, f"{where} scheduler:", ConfigError)
    latency = parse_duration(raw.get("latency_wait", 0), f"{where} latency_wait")
    connect = parse_duration(raw.get("connect_timeout", 30), f"{where} connect_timeout")
    if not math.isfinite(latency) or not math.isfinite(connect) or connect <= 0:
        raise ConfigError(f"{where} latency_wait and connect_timeout must be finite (connect_timeout > 0)")
    return ExecutorConfig(kind, scheduler, latency, connect)


def check_address(value: Any, where: str, error: type[ConfigError] | type[UsageError]) -> str:
    """Return `value` if it looks like a Dask scheduler address (`tcp://host:port`)."""
    if isinstance(value, str) and value.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        host_port = value.split("://", 1)[1]
        if host_port and ":" in host_port and host_port.rsplit(":", 1)[1].isdigit():
            return value
    raise error(
        f"{where} expected a Dask scheduler address like tcp://head:8786, got {value!r}",
        "start one with `dask scheduler` and give the address it prints",
    )


def executor_from_url(url: str, base: ExecutorConfig | None) -> ExecutorConfig:
    """Turn `--executor local` or `--executor dask://host:8786` into a config.

    Settings other than the kind and address (latency_wait) come from orch.yaml's
    `executor:` block when it has one.

    Raises:
        UsageError: neither `local` nor `dask://host:port`.
    """
    base = base or ExecutorConfig()
    if url == "local":
        return ExecutorConfig("local", None, base.latency_wait_s, base.connect_timeout_s)
    if url.startswith("dask://"):
        address = check_address("tcp://" + url[len("dask://") :], "--executor:", UsageError)
        return ExecutorConfig("dask", address, base.latency_wait_s, base.connect_timeout_s)
    raise UsageError(
        f"--executor: expected local or dask://host:port, got {url!r}",
        "e.g. --executor dask://head:8786 (the address `dask scheduler` prints)",
    )


def check_agent_placement(settings: dict[str, Any], where: str) -> None:
    """Validate an agent's `resources` (e.g. `{claude: 1}`) and `run_on_cluster` in place.

    `resources` become a plain dict of name to a positive number, the Dask
    worker resources each attempt needs; `run_on_cluster: true` sends an
    `openai` or rehearsal agent's attempts to the cluster too (they run here by
    default).

    Raises:
        ConfigError: not a mapping of names to numbers > 0, or not a boolean.
    """
    resources = settings.get("resources", {})
    if not isinstance(resources, dict) or not all(
        isinstance(k, str)
        and k.strip()
        and not isinstance(v, bool)
        and isinstance(v, int | float)
        and math.isfinite(v)
        and v > 0
        for k, v in resources.items()
    ):
        raise ConfigError(
            f"{where} resources: expected a mapping of resource name to a number > 0, like {{claude: 1}}",
            "workers advertise them with `orch worker ... --resources claude=4`",
        )
    settings["resources"] = {k: float(v) for k, v in sorted(resources.items())}
    if not isinstance(settings.get("run_on_cluster", False), bool):
        raise ConfigError(f"{where} run_on_cluster: expected true or false")
