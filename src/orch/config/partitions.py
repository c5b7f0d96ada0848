"""Read references/ into Partition records, and derive fan-in partitions.

A fan-out stage gets one partition per row of its references file; a fan-in
stage one per group of its upstream stage's partitions. Ids are checked to be
safe single path segments, and output directories to lie strictly inside data/,
apart from one another (see `orch.config.output_paths`).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from orch.config.blueprints import fill_placeholders
from orch.config.documents import LineList, load_document
from orch.config.frozen import FrozenDict
from orch.config.output_paths import check_path_fields, dangling_link, is_inside, segment_problem, symlinks_in
from orch.config.params import Params
from orch.config.project import CONFIG_NAME, Project, Stage
from orch.errors import ConfigError, PartitionError, did_you_mean
from orch.store.layout import CACHE_DIR

MAX_ID_BYTES = 200
#: The outputs root: every partition directory lies strictly inside it.
OUTPUTS_ROOT = "data"
#: Project directories no partition directory may resolve into or around.
_PROTECTED_DIRS = ("agents", "references", "wip", ".git")
#: Id of the single partition of a fan-in stage without `by`.
ALL_ID = "all"
_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True, slots=True)
class Partition:
    """One instance of a stage's blueprint.

    Attributes:
        stage: Stage name.
        id: Safe single path segment, unique in the stage.
        params: Values for the blueprint: project vars, stage vars, then the
            row's fields (fan-in: the group key and the fields all children share).
        row: The partition's own fields (its references row, or group fields),
            which decide "row changed" staleness.
        out_dir: Output directory relative to the project root.
        source: Where it came from, e.g. `references/framework.yaml:120`.
        children: Upstream partition ids it reads (fan-in members, or the same
            id for each stage in `needs`), as (stage, id) pairs.
        priority: Larger starts first; from a `priority` row field, default 0.
    """

    stage: str
    id: str
    params: Mapping[str, Any]
    row: Mapping[str, Any]
    out_dir: str
    source: str
    children: tuple[tuple[str, str], ...] = ()
    priority: float = 0.0


def sort_key(partition: Partition) -> tuple[float, list[Any]]:
    """Order partitions by priority (high first), then naturally by id (1.2 < 1.10)."""
    natural = [int(p) if p.isdecimal() else p for p in _DIGITS.split(partition.id)]
    return (-partition.priority, natural)


def check_partition_id(value: Any, where: str) -> str:
    """Return `value` as a partition id if it is a safe single path segment.

    Allowed: Unicode letters and digits, `.`, `_`, `-`; at most 200 UTF-8
    bytes; not empty, no leading `.`, no `..`.

    Raises:
        PartitionError: `where: partition id '...' is not a safe path segment: why`.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PartitionError(
            f"{where}: partition id {value!r} must be text",
            "quote the id in the references file",
        )
    text = str(value)
    reason = segment_problem(text)
    if reason is not None:
        reason = f"it {reason}"
    elif ".." in text:
        reason = "it contains '..'"
    elif text.startswith("."):
        reason = "it starts with '.' (hidden, and reserved for staging directories)"
    elif len(text.encode("utf-8")) > MAX_ID_BYTES:
        reason = f"it is longer than {MAX_ID_BYTES} bytes"
    else:
        bad = sorted({ch for ch in text if not (ch.isalnum() or ch in "._-")})
        if bad:
            reason = f"it contains {', '.join(repr(ch) for ch in bad)}"
    if reason:
        raise PartitionError(
            f"{where}: partition id {text!r} is not a safe path segment: {reason}",
            "use letters, digits, '.', '_' and '-' only",
        )
    return text


class PartitionIndex:
    """Partitions of each stage of a project, loaded on first use.

    References files are read once per index. Output directories are checked
    to be unique and not nested across every stage loaded so far.
    """

    def __init__(self, project: Project) -> None:
        self.project = project
        self._documents: dict[str, Any] = {}
        self._shared_params: dict[str, Mapping[str, Any]] = {}
        self._stages: dict[str, tuple[Partition, ...]] = {}
        self._by_id: dict[str, dict[str, Partition]] = {}
        self._out_dirs: dict[str, tuple[str, str]] = {}
        self._ancestors: dict[str, tuple[str, str]] = {}
        self._resolved_parents: dict[str, Path] = {}
        self._links: dict[str, set[str]] = {}
        self._parent_ok: dict[str, bool] = {}
        self._root = project.root.resolve()
        self._outputs_root = (project.root / OUTPUTS_ROOT).resolve()
        self._protected = [(project.root / d).resolve() for d in _PROTECTED_DIRS]

    def for_stage(self, name: str) -> tuple[Partition, ...]:
        """Return the stage's partitions in start order (see `sort_key`).

        Raises:
            ConfigError: unknown stage, or any references/output problem.
            PartitionError: a bad, unsafe or duplicate id.
        """
        if name not in self._stages:
            stage = self.project.stage(name)
            for upstream in stage.upstream:
                self.for_stage(upstream)
            self._shared_params[name] = FrozenDict({**self.project.vars, **stage.vars})
            partitions = self._fan_in(stage) if stage.fan_in else self._fan_out(stage)
            self._check_needs(stage, partitions)
            ordered = tuple(sorted(partitions, key=sort_key))
            self._stages[name] = ordered
            self._by_id[name] = {p.id: p for p in ordered}
            self._forget_documents()
        return self._stages[name]

    def _forget_documents(self) -> None:
        """Drop parsed references files no stage still to load reads (partitions keep their rows)."""
        stages = self.project.stages.values()
        pending = {s.partitions.path for s in stages if s.name not in self._stages and s.partitions}
        self._documents = {rel: doc for rel, doc in self._documents.items() if rel in pending}

    def get(self, stage: str, partition_id: str) -> Partition:
        """Return one partition.

        Raises:
            UsageError: no such partition (with the nearest id).
        """
        from orch.errors import UsageError

        self.for_stage(stage)
        try:
            return self._by_id[stage][partition_id]
        except KeyError:
            near = did_you_mean(partition_id, self._by_id[stage])
            raise UsageError(
                f"stage {stage} has no partition '{partition_id}'{near}",
                f"list them with: orch plan {stage}",
            ) from None

    def _document(self, rel: str) -> Any:
        if rel not in self._documents:
            path = self.project.root / rel
            if "\x00" in rel or Path(rel).is_absolute() or not is_inside(self._root, path.resolve()):
                raise ConfigError(f"{rel}: references file must be inside the project")
            cache = self.project.root / CACHE_DIR / "references"
            self._documents[rel] = load_document(path, rel, cache)
        return self._documents[rel]

    def _rows(self, stage: Stage) -> tuple[list[Any], list[str]]:
        assert stage.partitions is not None
        source = stage.partitions
        data = self._document(source.path)
        if data is None or data == "":
            raise ConfigError(
                f"{source.path}: the file is empty (stage {stage.name})",
                f"add partition rows, or point stages.{stage.name}.partitions.from at another file",
            )
        where_key = source.path
        for key in source.key_path.split(".") if source.key_path else []:
            if isinstance(data, list) and key.isdigit() and int(key) < len(data):
                data = data[int(key)]
            elif isinstance(data, dict) and key in data:
                data = data[key]
            else:
                keys = list(data) if isinstance(data, dict) else []
                raise ConfigError(
                    f"{where_key}: no key '{key}' (stages.{stage.name}.partitions.path "
                    f"in {CONFIG_NAME}){did_you_mean(key, keys)}",
                    f"keys there: {', '.join(map(str, keys)) or '(none)'}",
                )
        if not isinstance(data, list):
            raise ConfigError(
                f"{source.path}: expected a list of rows at "
                f"{repr(source.key_path) if source.key_path else 'the top level'}, "
                f"got {type(data).__name__}",
                "point partitions.path at a list of mappings",
            )
        if not data:
            raise ConfigError(
                f"{source.path}: no partitions: the list at "
                f"{repr(source.key_path) if source.key_path else 'the top level'} "
                f"is empty (stage {stage.name})",
                "add at least one row",
            )
        lines = data.item_lines if isinstance(data, LineList) else []
        wheres = []
        for index in range(len(data)):
            if index < len(lines):
                wheres.append(f"{source.path}:{lines[index]}")
            else:
                suffix = f"{source.key_path}[{index}]" if source.key_path else f"[{index}]"
                wheres.append(f"{source.path}: {suffix}")
        return data, wheres

    def _fan_out(self, stage: Stage) -> list[Partition]:
        return [
            self._partition(stage, pid, fields, where, (), priority)
            for pid, fields, where, priority in self._read_rows(stage)
        ]

    def _partition(
        self,
        stage: Stage,
        pid: str,
        fields: dict[str, Any],
        where: str,
        children: tuple[tuple[str, str], ...],
        priority: float,
    ) -> Partition:
        """Build a partition: params are project vars, stage vars, then `fields`."""
        row = FrozenDict(fields)
        params = Params(self._shared_params[stage.name], row)
        return Partition(
            stage=stage.name,
            id=pid,
            params=params,
            row=row,
            out_dir=self._out_dir(stage, params, pid, where, fields),
            source=where,
            children=children,
            priority=priority,
        )

    def _read_rows(self, stage: Stage) -> list[tuple[str, dict[str, Any], str, float]]:
        """Return `(id, fields, where, priority)` per row, ids checked and unique."""
        assert stage.partitions is not None
        rows, wheres = self._rows(stage)
        id_field = stage.partitions.id_field
        seen: dict[str, str] = {}
        result = []
        for row, where in zip(rows, wheres, strict=True):
            if not isinstance(row, dict):
                raise PartitionError(f"{where}: row must be a mapping of fields, got {row!r}")
            if id_field not in row:
                raise PartitionError(
                    f"{where}: row has no id field '{id_field}'{did_you_mean(id_field, row)}",
                    f"every row needs {id_field} (stages.{stage.name}.partitions.id)",
                )
            pid = check_partition_id(row[id_field], where)
            if pid in seen:
                raise PartitionError(
                    f"{where}: duplicate partition id '{pid}' (first at {seen[pid]})",
                    "partition ids must be unique within a stage",
                )
            seen[pid] = where
            fields = {sys.intern(str(k)): v for k, v in row.items()}  # one str per field name
            fields[id_field] = pid
            result.append((pid, fields, where, _priority(row.get("priority"), where)))
        return result

    def _fan_in(self, stage: Stage) -> list[Partition]:
        assert stage.fan_in is not None
        by, upstream = stage.fan_in.by, stage.fan_in.from_stage
        groups: dict[str, list[Partition]] = {}
        for child in self._stages[upstream]:
            if by is None:
                key = ALL_ID
            elif by not in child.params:
                raise PartitionError(
                    f"{child.source}: partition {child.id} of stage {upstream} has no field "
                    f"'{by}' to group by{did_you_mean(by, child.params)} "
                    f"(stages.{stage.name}.fan_in.by in {CONFIG_NAME})",
                    f"give every row of {upstream} a {by} field",
                )
            else:
                key = check_partition_id(child.params[by], f"{child.source} ({by})")
            groups.setdefault(key, []).append(child)
        group_rows = self._group_rows(stage) if stage.partitions else None
        if group_rows is not None:
            _check_groups(stage, groups, group_rows)
        partitions = []
        for key, children in groups.items():
            fields = _shared_fields(children)
            if by is not None:
                fields[by] = key
            where = f"{CONFIG_NAME}:{stage.line_of('fan_in')}: stages.{stage.name} group {key}"
            if group_rows is not None:
                row, where = group_rows[key]
                fields.update({str(k): v for k, v in row.items()})
            children_keys = tuple((upstream, c.id) for c in children)
            priority = max(c.priority for c in children)
            partitions.append(self._partition(stage, key, fields, where, children_keys, priority))
        return partitions

    def _group_rows(self, stage: Stage) -> dict[str, tuple[Mapping[str, Any], str]]:
        return {pid: (fields, where) for pid, fields, where, _ in self._read_rows(stage)}

    def _check_needs(self, stage: Stage, partitions: list[Partition]) -> None:
        if not stage.needs:
            return
        for index, partition in enumerate(partitions):
            extra = []
            for needed in stage.needs:
                if partition.id not in self._by_id[needed]:
                    raise PartitionError(
                        f"{partition.source}: partition {partition.id} of stage {stage.name} "
                        f"needs partition {partition.id} of stage {needed}, which does not exist",
                        f"stages.{stage.name}.needs pairs partitions by id; give both stages the same ids",
                    )
                extra.append((needed, partition.id))
            partitions[index] = replace(partition, children=partition.children + tuple(extra))

    def _out_dir(
        self, stage: Stage, params: Mapping[str, Any], pid: str, where: str, fields: Mapping[str, Any]
    ) -> str:
        """Return the partition's output directory, checked to lie strictly inside
        `data/` and apart from every other partition's (see `_check_nesting`).

        Row fields the template uses must be single safe path segments.
        """
        label = f"{CONFIG_NAME}:{stage.line_of('output')}: stages.{stage.name}.output"
        check_path_fields(stage, fields, where)
        rel = fill_placeholders(stage.output, params, f"{label}:")
        norm = os.path.normpath(rel)
        if (
            os.path.isabs(rel)
            or "\x00" in rel
            or norm.split(os.sep)[0] != OUTPUTS_ROOT
            or norm == OUTPUTS_ROOT
        ):
            raise ConfigError(
                f"{label}: output directory '{rel}' of partition {pid} ({where}) is not "
                "inside the project's data area",
                "use a relative path such as data/<INDUSTRY_ID>/<FUNCTION_ID> with no '..'",
            )
        self._check_symlinks(norm, rel, pid, label)
        if norm in self._out_dirs:
            other_stage, other = self._out_dirs[norm]
            raise ConfigError(
                f"{label}: partitions {other_stage}/{other} and {stage.name}/{pid} both write to '{norm}'",
                "include the partition id placeholder in the output template",
            )
        self._check_nesting(norm, stage.name, pid, label)
        self._out_dirs[norm] = (stage.name, pid)
        return norm

    def _check_nesting(self, norm: str, stage: str, pid: str, label: str) -> None:
        """Refuse a partition directory inside another's, or containing another.

        Each parent directory's ancestors are checked once: an output directory
        registered later on one of them is caught by the `_ancestors` lookup.
        """
        inner = self._ancestors.get(norm)
        outer = None
        parent = os.path.dirname(norm)
        if parent not in self._ancestors or parent in self._out_dirs:
            walk = parent
            while walk and outer is None:
                outer = self._out_dirs.get(walk)
                if outer is None and walk not in self._ancestors:
                    self._ancestors[walk] = (stage, pid)
                walk = os.path.dirname(walk)
        if inner or outer:
            other_stage, other = inner or outer  # type: ignore[misc]
            relation = "contains that of" if inner else "lies inside that of"
            raise ConfigError(
                f"{label}: the directory of partition {stage}/{pid} ('{norm}') {relation} "
                f"partition {other_stage}/{other}",
                "give every stage its own output directory, e.g. data/<stage>/<ID>",
            )

    def _check_symlinks(self, norm: str, rel: str, pid: str, label: str) -> None:
        parent, name = os.path.split(norm)
        if parent not in self._resolved_parents:
            dangling = dangling_link(self.project.root, parent)
            if dangling:
                raise ConfigError(
                    f"{label}: output directory '{rel}' of partition {pid} passes through the "
                    f"dangling symlink {dangling}",
                    "remove the symlink, or create the directory it points to",
                )
            resolved = (self.project.root / parent).resolve()
            self._resolved_parents[parent] = resolved
            self._links[parent] = symlinks_in(resolved)
        resolved = self._resolved_parents[parent]
        if parent not in self._parent_ok:
            self._parent_ok[parent] = resolved == self._outputs_root or self._is_output_path(resolved)
        if name not in self._links[parent] and self._parent_ok[parent]:
            return
        if name in self._links[parent] and not (resolved / name).exists():
            raise ConfigError(
                f"{label}: output directory '{rel}' of partition {pid} is a dangling symlink "
                f"-> {os.readlink(resolved / name)}",
                "remove the symlink, or create the directory it points to",
            )
        target = (resolved / name).resolve()
        if not is_inside(self._root, target):
            raise ConfigError(
                f"{label}: output directory '{rel}' of partition {pid} resolves to {target}, "
                "outside the project (through a symlink)",
                "remove the symlink or point the output template elsewhere",
            )
        if not self._is_output_path(target):
            raise ConfigError(
                f"{label}: output directory '{rel}' of partition {pid} resolves to {target}, "
                "which is the project root, data/ itself, or in or around agents/, references/, "
                "wip/ or .git/ (through a symlink)",
                "remove the symlink or point the output template elsewhere",
            )

    def _is_output_path(self, path: Path) -> bool:
        """Whether `path` (resolved) may be a partition directory or its parent:
        inside the project, and neither the project root, `data/` itself, nor
        in or around `agents/`, `references/`, `wip/` or `.git/` (resolved).
        """
        if not is_inside(self._root, path) or path in (self._root, self._outputs_root):
            return False
        return not any(
            is_inside(protected, path) or is_inside(path, protected) for protected in self._protected
        )


def _priority(value: Any, where: str) -> float:
    if value is None:
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PartitionError(f"{where}: priority {value!r} must be a number") from None
    if math.isnan(number):
        raise PartitionError(f"{where}: priority must be a number, not NaN")
    return number


def _shared_fields(children: list[Partition]) -> dict[str, Any]:
    """Return the row fields every child has with the same value."""
    first, rest = children[0].row, children[1:]
    shared = {}
    for key, value in first.items():
        encoded = json.dumps(value, sort_keys=True, default=str)
        if all(key in c.row and json.dumps(c.row[key], sort_keys=True, default=str) == encoded for c in rest):
            shared[key] = value
    shared.pop("priority", None)
    return shared


def _check_groups(
    stage: Stage,
    groups: dict[str, list[Partition]],
    group_rows: Mapping[str, tuple[Mapping[str, Any], str]],
) -> None:
    assert stage.fan_in is not None and stage.partitions is not None
    for key, children in groups.items():
        if key not in group_rows:
            raise PartitionError(
                f"{children[0].source}: fan-in group '{key}' of stage {stage.name} (from "
                f"{stage.fan_in.from_stage} partition {children[0].id}) is not a row of "
                f"{stage.partitions.path}{did_you_mean(key, group_rows)}",
                f"add the group to {stage.partitions.path} or fix the child's {stage.fan_in.by}",
            )
    for key, (_, where) in group_rows.items():
        if key not in groups:
            raise PartitionError(
                f"{where}: fan-in group '{key}' of stage {stage.name} has no children in "
                f"stage {stage.fan_in.from_stage}",
                f"add partitions with {stage.fan_in.by}: {key}, or remove the group",
            )
