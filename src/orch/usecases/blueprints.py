"""Use cases on blueprints: render one partition's prompt, check every blueprint."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orch.config.blueprints import check_params, list_blueprint_files, load_blueprint
from orch.config.partitions import Partition
from orch.config.workspace import ChildKey, Workspace
from orch.engine.plan import Planner
from orch.errors import (
    BlueprintError,
    ConfigError,
    UsageError,
)
from orch.store.manifest import Manifest

if TYPE_CHECKING:
    pass


def render_prompt(ws: Workspace, stage: str, partition_id: str, agent: str | None = None) -> str:
    """Return the prompt of one partition; inputs not yet complete (for `agent`) show as placeholders."""
    partition = ws.partitions.get(ws.project.stage(stage).name, partition_id)
    return ws.render(partition, preview_manifests(Planner(ws, agent), partition), preview=True)


@dataclass
class BlueprintReport:
    """Result of `orch blueprint check`: errors fail it, warnings do not."""

    checked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rendered: int = 0

    def lines(self) -> list[str]:
        """Human-readable lines: errors, warnings, then a total."""
        out = [f"error: {e}" for e in self.errors] + [f"warning: {w}" for w in self.warnings]
        out.append(
            f"checked {len(self.checked)} blueprint(s), rendered {self.rendered} "
            f"partition prompt(s): {len(self.errors)} error(s), "
            f"{len(self.warnings)} warning(s)"
        )
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "checked": self.checked,
            "errors": self.errors,
            "warnings": self.warnings,
            "rendered": self.rendered,
            "ok": not self.errors,
        }

    def raise_for_errors(self) -> None:
        """Raise BlueprintError (exit 2) when any blueprint has errors."""
        if self.errors:
            raise BlueprintError(
                f"{len(self.errors)} blueprint error(s), see above",
                "fix them and run orch blueprint check again",
            )


def check_blueprints(ws: Workspace, file: Path | None) -> BlueprintReport:
    """Parse blueprints, render every partition of the stages using them, check params.

    Args:
        ws: The workspace.
        file: One blueprint to check, or None for `agents/*.md` and every
            blueprint a stage names.
    """
    stages_by_file: dict[str, list[str]] = {}
    for name, stage in ws.project.stages.items():
        stages_by_file.setdefault(stage.blueprint, []).append(name)
    if file is not None:
        target = (Path.cwd() / file).resolve()
        try:
            files = [str(target.relative_to(ws.root.resolve()))]
        except ValueError:
            raise UsageError(f"{file}: not inside the project {ws.root}") from None
    else:
        files = list_blueprint_files(ws.root, stages_by_file)
    report = BlueprintReport()
    planner = Planner(ws)
    failures: dict[str, list[str]] = {}
    for rel in files:
        report.checked.append(rel)
        try:
            blueprint = load_blueprint(ws.root, rel)
        except ConfigError as err:
            report.errors.append(err.message)
            continue
        report.warnings.extend(check_params(blueprint))
        if rel not in stages_by_file:
            report.warnings.append(f"{rel}: not used by any stage in orch.yaml")
        for stage_name in stages_by_file.get(rel, []):
            for partition in ws.partitions.for_stage(stage_name):
                try:
                    ws.render(partition, preview_manifests(planner, partition), preview=True)
                    report.rendered += 1
                except BlueprintError as err:
                    message = _CONTEXT.sub("", err.message)
                    failures.setdefault(message, []).append(f"{stage_name}/{partition.id}")
    for message, where in failures.items():
        shown = ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else "")
        report.errors.append(f"{message} (partitions {shown})")
    return report


_CONTEXT = re.compile(r" \(stage [^,()]+, partition [^()]+\)$")


def preview_manifests(planner: Planner, partition: Partition) -> dict[ChildKey, Manifest | None]:
    """Children's manifests where complete; none at all if the children cannot be
    assessed (e.g. their own blueprint is broken): a preview still renders."""
    if not partition.children:
        return {}
    try:
        for child_stage in {s for s, _ in partition.children}:
            planner.stage_states(child_stage)
    except ConfigError:
        return {}
    return planner.child_manifests(partition)
