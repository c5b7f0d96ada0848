"""The files a project's load-time check reads, as stat signatures.

`Workspace.check` skips its work when none of these changed since it last
passed, and `orch status` trusts its index only under the same signatures
(see `orch.store.status_cache`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orch.config.partitions import PartitionIndex
from orch.config.project import CONFIG_NAME, Project
from orch.store.status_cache import dir_sig, file_sig, tree_sigs

#: Included templates are resolved under this directory (orch.config.blueprints).
AGENTS_DIR = "agents"


def input_sigs(project: Project) -> dict[str, Any] | None:
    """Return `rel -> file_sig` of orch.yaml, every blueprint, every file under
    `agents/` (includes) and every references file a stage reads.

    None when the project cannot be tracked this way (a huge `agents/` tree).
    """
    root = project.root
    sigs: dict[str, Any] = {CONFIG_NAME: file_sig(str(root / CONFIG_NAME))}
    if (root / AGENTS_DIR).is_dir():
        agents = tree_sigs(root, AGENTS_DIR)
        if agents is None:
            return None
        sigs.update(agents)
    for stage in project.stages.values():
        sigs[os.path.normpath(stage.blueprint)] = file_sig(str(root / stage.blueprint))
        if stage.partitions is not None:
            sigs[os.path.normpath(stage.partitions.path)] = file_sig(str(root / stage.partitions.path))
    return sigs


def checked_sigs(root: Path, partitions: PartitionIndex, schema_files: Iterable[str]) -> dict[str, Any]:
    """Return the signatures of what a passing check found: every schema file it
    read (with `$ref` targets) and every parent directory of an output directory
    (`rel/ -> dir_sig`, so a parent replaced by a symlink is a change)."""
    sigs: dict[str, Any] = {rel: file_sig(str(root / rel)) for rel in schema_files}
    parents: set[str] = set()
    for name in partitions.project.stages:
        for partition in partitions.for_stage(name):
            parent = os.path.dirname(partition.out_dir)
            while parent and parent not in parents:
                parents.add(parent)
                parent = os.path.dirname(parent)
    sigs.update({f"{parent}/": dir_sig(str(root / parent)) for parent in sorted(parents)})
    return sigs
