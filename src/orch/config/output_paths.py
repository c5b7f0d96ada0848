"""Output directories: where a partition's directory may lie, and the pieces
of an output template that must be single safe path segments.

Used by `orch.config.partitions` when it builds each partition's `out_dir`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orch.config.blueprints import PLACEHOLDER
from orch.config.node import CONFIG_NAME
from orch.config.stages import Stage
from orch.errors import PartitionError


@functools.lru_cache(maxsize=64)
def template_names(template: str) -> tuple[str, ...]:
    """Names of the `<NAME>` placeholders in an output template (escaped ones excluded)."""
    return tuple(name for escaped, name in PLACEHOLDER.findall(template) if not escaped)


def segment_problem(text: str) -> str | None:
    """Why `text` cannot be a path segment at all: "is empty", "contains a path
    separator" or "contains a NUL byte"; None otherwise. Callers add their own
    rules (a leading '.', a length or character limit)."""
    if not text:
        return "is empty"
    if "/" in text or "\\" in text:
        return "contains a path separator"
    if "\x00" in text:
        return "contains a NUL byte"
    return None


def check_path_fields(stage: Stage, fields: Mapping[str, Any], where: str) -> None:
    """Refuse a row field used in the output template that is not one safe path segment.

    Raises:
        PartitionError: `where: field NAME = '...' cannot be part of the output
            path (stages.S.output in orch.yaml): it ...`.
    """
    for name in template_names(stage.output):
        if name not in fields:
            continue
        text = str(fields[name])
        reason = segment_problem(text)
        if reason is None and text.startswith("."):
            reason = "starts with '.' ('.', '..' and hidden names are not allowed)"
        if reason:
            raise PartitionError(
                f"{where}: field {name} = {text!r} cannot be part of the output path "
                f"(stages.{stage.name}.output in {CONFIG_NAME}): it {reason}",
                "a row field used in an output path must be a single path segment: "
                "no '/', not empty, not starting with '.'",
            )


def dangling_link(root: Path, rel: str) -> str | None:
    """Return `path -> target` for the first dangling symlink on `root/rel`, if any."""
    path = root
    for part in Path(rel).parts:
        path = path / part
        if path.is_symlink() and not path.exists():
            return f"{path.relative_to(root)} -> {os.readlink(path)}"
        if not path.exists():
            return None
    return None


def symlinks_in(directory: Path) -> set[str]:
    """Return names of the symlinks in `directory` (one scandir, not a stat per name)."""
    try:
        with os.scandir(directory) as entries:
            return {e.name for e in entries if e.is_symlink()}
    except OSError:
        return set()


def is_inside(root: Path, path: Path) -> bool:
    """Whether `path` is `root` or lies below it (both resolved; compared as text)."""
    root_s, path_s = str(root), str(path)
    return path_s == root_s or path_s.startswith(root_s.rstrip(os.sep) + os.sep)
