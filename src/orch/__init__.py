"""orch: a filesystem-data-bus orchestrator for prompt-defined LLM agents.

The public face: `open_project(path)` returns a `Project` whose methods
(`plan`, `status`, `show`, `run`, `arun`, `snapshot`, `events`) return the
typed records below; expected errors are `OrchError` subclasses.

    import orch
    project = orch.open_project(".")
    report = project.run(["deep_research"])
    report.raise_for_status()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AttemptRecord",
    "BarrierNotMet",
    "BlueprintError",
    "ConfigError",
    "Interrupted",
    "OrchError",
    "OutputFile",
    "PartitionDetail",
    "PartitionStatus",
    "PartitionsFailed",
    "Plan",
    "PlannedPartition",
    "PreflightFailed",
    "Project",
    "RunReport",
    "StageBlocked",
    "StagePlan",
    "StageStatus",
    "Status",
    "StatusReport",
    "UsageError",
    "__version__",
    "open_project",
]

# Names resolved on first use, so `import orch` (and `python -m orch --help`)
# stays cheap: the CLI imports only what its command needs.
_HOMES = {
    "open_project": "orch.api",
    "Project": "orch.api",
    "Status": "orch.engine.plan",
    **{
        name: "orch.records"
        for name in (
            "AttemptRecord",
            "OutputFile",
            "PartitionDetail",
            "PartitionStatus",
            "Plan",
            "PlannedPartition",
            "RunReport",
            "StagePlan",
            "StageStatus",
            "StatusReport",
        )
    },
    **{
        name: "orch.errors"
        for name in (
            "BarrierNotMet",
            "ConfigError",
            "Interrupted",
            "OrchError",
            "PartitionsFailed",
            "StageBlocked",
            "UsageError",
        )
    },
    "BlueprintError": "orch.errors",
    "PreflightFailed": "orch.engine.preflight",
}

if TYPE_CHECKING:
    from orch.api import Project, open_project
    from orch.engine.plan import Status
    from orch.engine.preflight import PreflightFailed
    from orch.errors import (
        BarrierNotMet,
        BlueprintError,
        ConfigError,
        Interrupted,
        OrchError,
        PartitionsFailed,
        StageBlocked,
        UsageError,
    )
    from orch.records import (
        AttemptRecord,
        OutputFile,
        PartitionDetail,
        PartitionStatus,
        Plan,
        PlannedPartition,
        RunReport,
        StagePlan,
        StageStatus,
        StatusReport,
    )


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'orch' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)


def __dir__() -> list[str]:
    return sorted(__all__)
