"""Reading the status index: a stage's recorded states as columns, checked against the disk.

See `orch.engine.plan_index` for what the index holds and when an entry is trusted.
"""

from __future__ import annotations

import base64
import functools
import os
import stat
import sys
from array import array
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from orch.config.frozen import FrozenDict
from orch.config.partitions import Partition
from orch.config.workspace import ChildKey, Fingerprint
from orch.engine.states import REHEARSAL, ManifestFacts, PartitionState, Status, success_usage
from orch.store.checks import META_DIR, Finding, check_outputs
from orch.store.integrity import find_modified
from orch.store.layout import MANIFEST, attempts_dir
from orch.store.manifest import Manifest, OutputFile, read_manifest

if TYPE_CHECKING:
    from orch.config.project import AgentConfig
    from orch.engine.plan import Planner

_EMPTY: FrozenDict[str, Any] = FrozenDict()
_EMPTY_PARTS: dict[str, Any] = {}
COMPLETE, MISSING, FAILED = "c", "m", "f"
_MANIFEST_PATH = f"{META_DIR}/{MANIFEST}"


def _int_array(text: str) -> array[int]:
    result = array("q")
    result.frombytes(base64.b64decode(text))
    return result


def _float_array(text: str) -> array[float]:
    result = array("d")
    result.frombytes(base64.b64decode(text))
    return result


class Columns:
    """A stage's recorded states as loaded (see `_Builder.columns`).

    Args:
        record: The stage's record in index.json.
        planner: The planner the states are for.
        stage: The stage name.
        hashes: The stage's agent and expect hashes.

    Raises:
        TypeError, ValueError, KeyError: the record is not one this orch wrote.
    """

    def __init__(self, record: dict[str, Any], planner: Planner, stage: str, hashes: tuple[str, str]) -> None:
        self.planner = planner
        self.stage = stage
        self.hashes = hashes
        self.ids: list[str] = record["ids"]
        self.kinds: str = record["kinds"]
        self.out: list[str] = record["out"]
        self.src: list[str] = record["src"]
        self.prio: list[float] | None = record["prio"]
        self.children: list[Any] | None = record["children"]
        self.fp = _Hashes(record["fp"])
        self.prompt = _Hashes(record["prompt"])
        self.archived: dict[str, list[str]] = record["archived"]
        self.reason: dict[str, str] = record["reason"]
        self.kept: dict[str, str] = record["kept"]
        self.error: dict[str, Any] = record["error"]
        self.made_for: dict[str, str] = record["made_for"]
        self.msig = _int_array(record["msig"])
        self.nout = _int_array(record["nout"])
        self.opath: list[str] = [sys.intern(p) for p in record["opath"]]
        self.osize = _int_array(record["osize"])
        self.omtime = _int_array(record["omtime"])
        self.ofp = _Hashes(record["ofp"])
        self.attempt = _int_array(record["attempt"])
        self.run: list[str] = [sys.intern(r) for r in record["run"]]
        self.times = _float_array(record["times"])
        self.tables: dict[str, list[Any]] = record["tables"]
        self.refs = {name: _int_array(text) for name, text in record["refs"].items()}
        n = len(self.ids)
        lists = (self.out, self.src, self.fp, self.prompt)
        if len(self.kinds) != n or any(len(column) != n for column in lists):
            raise ValueError("columns of different lengths")
        self._usage: dict[tuple[int, int, int, int], Any] = {}
        # for partition i: its row among complete partitions (manifest fields),
        # and where that row's outputs start
        self._row = array("q", bytes(8 * n))
        self._first = array("q", bytes(8 * len(self.nout)))
        row = first_output = 0
        for i, kind in enumerate(self.kinds):
            if kind == COMPLETE:
                self._row[i], self._first[row] = row, first_output
                first_output += self.nout[row]
                row += 1

    def __len__(self) -> int:
        return len(self.ids)

    def state(self, i: int) -> PartitionState | None:
        """Return partition i's recorded state if the disk still agrees with it, else None.

        Only the checks run here (one listing lookup and the stat calls); the
        state's records are built when first read (`IndexedState`).
        """
        planner, stage = self.planner, self.stage
        kind, pid, out_dir = self.kinds[i], self.ids[i], self.out[i]
        parent, _, name = out_dir.rpartition("/")
        listing = planner.listing_of_parent(parent)
        if name in listing.staging or name in listing.links or (name in listing.names) != (kind == COMPLETE):
            return None
        if planner.has_archived(stage, pid):
            if archived_names(planner.ws.root, stage, pid) != self.archived.get(pid):
                return None
        elif pid in self.archived:
            return None
        if not self._inputs_unchanged(i):
            return None
        if kind == COMPLETE and not self._unchanged(planner.root, i):
            return None
        return IndexedState(self, i)

    def _inputs_unchanged(self, i: int) -> bool:
        """True if every upstream partition i reads is complete with its recorded output fingerprint."""
        if self.children:
            for child_stage, child_id, output_fingerprint in self.children[i]:
                child = self.planner.known_state(child_stage, child_id)
                if child is None or not child.is_complete:
                    return False
                manifest = child.manifest
                if manifest is None or manifest.output_fingerprint != output_fingerprint:
                    return False
        return True

    def rejudge(self, i: int, agent: AgentConfig) -> PartitionState | None:
        """Judge partition i again when its recorded fingerprint still holds (its
        inputs are unchanged), without building or rendering it; None unless it
        is simply complete: promoted (e.g. by a run since), no staging directory,
        no archived attempt, its manifest made for that fingerprint by an agent
        of the same kind, every output passing the checks and unmodified.

        This is what makes the first status after a run of 100,000 partitions
        cost a manifest read per partition instead of a render.
        """
        planner, stage, pid, out_dir = self.planner, self.stage, self.ids[i], self.out[i]
        parent, _, name = out_dir.rpartition("/")
        listing = planner.listing_of_parent(parent)
        if name not in listing.names or name in listing.staging or name in listing.links:
            return None
        if planner.has_archived(stage, pid) or not self._inputs_unchanged(i):
            return None
        directory = f"{planner.root}/{out_dir}"
        assert planner.index is not None
        planner.index.saw(stage, pid, directory, True, False)
        manifest = read_manifest(directory, share=False)  # recorded, then dropped
        planner.index.read(stage, pid, directory, True)
        if manifest is None or manifest.fingerprint != self.fp[i]:
            return None  # stale, kept or invalid: judged in full, with its reasons
        if (manifest.agent.get("backend", REHEARSAL) == REHEARSAL) != (agent.backend == REHEARSAL):
            return None
        rules = planner.ws.project.stage(stage).expect
        if check_outputs(directory, rules, planner.ws.schemas, manifest.known_outputs()):
            return None
        if find_modified(directory, manifest.outputs):
            return None
        return PartitionState(
            indexed_partition(self, i),
            Status.COMPLETE,
            "complete",
            manifest,
            indexed_fingerprint(self, i),
            indexed_prompt(self, i),
        )

    def _unchanged(self, root: str, i: int) -> bool:
        """True if complete partition i's manifest and outputs have their recorded stat."""
        row = self._row[i]
        directory = f"{root}/{self.out[i]}/"
        try:
            st = os.lstat(directory + _MANIFEST_PATH)
            j = 4 * row
            msig = self.msig
            if (
                st.st_size != msig[j]
                or st.st_mtime_ns != msig[j + 1]
                or st.st_ino != msig[j + 2]
                or st.st_ctime_ns != msig[j + 3]
            ):
                return False
            osize, omtime, opath = self.osize, self.omtime, self.opath
            first = self._first[row]
            for k in range(first, first + self.nout[row]):
                st = os.lstat(directory + opath[k])
                if st.st_size != osize[k] or st.st_mtime_ns != omtime[k] or not stat.S_ISREG(st.st_mode):
                    return False
        except OSError:
            return False
        return True

    def success_usage(self, i: int, of_manifest: Callable[[Manifest], Any]) -> Any:
        """`of_manifest(manifest)` for complete partition i, memoized by the shared
        agent, attempts and usage records (a handful per stage); None if not complete."""
        if self.kinds[i] != COMPLETE:
            return None
        row = self._row[i]
        refs = self.refs
        key = (refs["agent"][row], refs["attempts"][row], refs["usage"][row], self.attempt[row])
        if key not in self._usage:
            self._usage[key] = of_manifest(self.manifest(i))
        return self._usage[key]

    def recorded(self, i: int) -> tuple[list[int] | None, list[str]]:
        """Partition i's recorded manifest stat signature (None if not complete)
        and archived attempt names."""
        sig = None
        if self.kinds[i] == COMPLETE:
            j = 4 * self._row[i]
            sig = self.msig[j : j + 4].tolist()
        return sig, self.archived.get(self.ids[i], [])

    def real(self, i: int) -> Callable[[], Partition]:
        """A function returning partition i's real record (built from the references on first use)."""
        return functools.partial(self.planner.ws.partitions.get, self.stage, self.ids[i])

    def facts(self, i: int) -> ManifestFacts | None:
        """Attempt, usage, duration and worker of complete partition i's manifest."""
        if self.kinds[i] != COMPLETE:
            return None
        row = self._row[i]
        attempts = self.tables["attempts"][self.refs["attempts"][row]]
        worker = attempts[-1].get("worker") if attempts else None
        duration_s = round(self.times[2 * row + 1] - self.times[2 * row], 3)
        return ManifestFacts(
            self.attempt[row], self.tables["usage"][self.refs["usage"][row]], duration_s, worker
        )

    def manifest(self, i: int) -> Manifest:
        """The slim manifest of complete partition i, as recorded (no `parts`,
        no output hashes)."""
        row = self._row[i]
        first = self._first[row]
        pid = self.ids[i]
        tables, refs = self.tables, self.refs
        files = [
            OutputFile(self.opath[k], self.osize[k], self.omtime[k], "")
            for k in range(first, first + self.nout[row])
        ]
        return Manifest(
            stage=self.stage,
            partition=pid,
            fingerprint=self.made_for.get(pid) or self.fp[i],
            parts=_EMPTY_PARTS,
            output_fingerprint=self.ofp[row],
            attempt=self.attempt[row],
            attempts=tables["attempts"][refs["attempts"][row]],
            agent=tables["agent"][refs["agent"][row]],
            outputs=files,
            usage=tables["usage"][refs["usage"][row]],
            run_id=self.run[row],
            started_at=self.times[2 * row],
            finished_at=self.times[2 * row + 1],
        )


def indexed_partition(columns: Columns, i: int) -> Partition:
    """The slim partition record of entry i: no params or row (read them from
    `workspace.partitions.get`)."""
    children = columns.children[i] if columns.children else ()
    return Partition(
        stage=columns.stage,
        id=columns.ids[i],
        params=_EMPTY,
        row=_EMPTY,
        out_dir=columns.out[i],
        source=columns.src[i],
        children=tuple((s, c) for s, c, _ in children),
        priority=float(columns.prio[i]) if columns.prio else 0.0,
    )


def indexed_fingerprint(columns: Columns, i: int) -> Fingerprint:
    """The fingerprint of entry i; its explanation is computed from the real partition on demand."""
    children = columns.children[i] if columns.children else ()
    inputs = {f"{s}/{c}": fp for s, c, fp in children}
    planner, real = columns.planner, columns.real(i)
    return Fingerprint(
        columns.fp[i],
        columns.prompt[i],
        columns.hashes[0],
        columns.hashes[1],
        MappingProxyType(inputs) if inputs else _EMPTY,
        functools.partial(_explain, planner, real),
        functools.partial(_keys, planner, real),
    )


def indexed_prompt(columns: Columns, i: int) -> Callable[[], str]:
    """A function rendering entry i's prompt from the real partition."""
    return functools.partial(_render, columns.planner, columns.real(i))


#: Every hash orch writes: "sha256:" and 64 hex digits.
HASH_CHARS = 71


def is_hash(value: Any) -> bool:
    """True for "sha256:" and 64 characters (every hash orch writes)."""
    return isinstance(value, str) and len(value) == HASH_CHARS and value.startswith("sha256:")


class _Hashes:
    """A column of hashes stored as one string (100,000 of them: 7 MB, not 12 MB)."""

    __slots__ = ("_text",)

    def __init__(self, text: Any) -> None:
        if not isinstance(text, str) or len(text) % HASH_CHARS:
            raise ValueError("not a column of hashes")
        self._text = text

    def __len__(self) -> int:
        return len(self._text) // HASH_CHARS

    def __getitem__(self, i: int) -> str:
        return self._text[i * HASH_CHARS : (i + 1) * HASH_CHARS]


def archived_names(root: Any, stage: str, pid: str) -> list[str]:
    """Names in `wip/attempts/<stage>/<pid>/`, sorted; [] if none."""
    try:
        return sorted(os.listdir(attempts_dir(Path(root), stage, pid)))
    except OSError:
        return []


def _render(planner: Planner, real: Callable[[], Partition]) -> str:
    partition = real()
    return planner.ws.render(partition, planner.child_manifests(partition))


def _explain(planner: Planner, real: Callable[[], Partition]) -> dict[str, Any]:
    return _real_fingerprint(planner, real()).explain()


def _keys(planner: Planner, real: Callable[[], Partition]) -> dict[str, Any]:
    return _real_fingerprint(planner, real()).keys()


def _real_fingerprint(planner: Planner, partition: Partition) -> Fingerprint:
    manifests = planner.child_manifests(partition)
    stage = planner.ws.project.stage(partition.stage)
    return planner.ws.fingerprint(
        partition, planner.ws.render(partition, manifests), planner.agent_for(stage), manifests
    )


class IndexedState(PartitionState):
    """A `PartitionState` rebuilt from the status index (`orch.engine.plan_index`).

    The disk was checked against the index when it was made; its records (the
    slim partition, manifest and fingerprint) are built each time they are read
    and not kept, so a status of 100,000 partitions that only counts them builds
    none and keeps ~100 bytes a partition.
    """

    __slots__ = ("_columns", "_i")
    _columns: Columns
    _i: int

    def __init__(self, columns: Columns, i: int) -> None:
        object.__setattr__(self, "_columns", columns)
        object.__setattr__(self, "_i", i)

    @property
    def partition(self) -> Partition:
        return indexed_partition(self._columns, self._i)

    @property
    def status(self) -> Status:
        return _INDEX_STATUS[self._columns.kinds[self._i]]

    @property
    def reason(self) -> str:
        columns = self._columns
        return columns.reason.get(columns.ids[self._i]) or _INDEX_REASON[columns.kinds[self._i]]

    @property
    def manifest(self) -> Manifest | None:
        if self._columns.kinds[self._i] != COMPLETE:
            return None
        return self._columns.manifest(self._i)

    @property
    def fingerprint(self) -> Fingerprint:
        return indexed_fingerprint(self._columns, self._i)

    def manifest_facts(self) -> ManifestFacts | None:
        """As `PartitionState.manifest_facts`, read from the columns (no manifest built)."""
        return self._columns.facts(self._i)

    @property
    def prompt_source(self) -> Callable[[], str]:
        return indexed_prompt(self._columns, self._i)

    @property
    def findings(self) -> tuple[Finding, ...]:
        return ()

    @property
    def last_error(self) -> dict[str, Any] | None:
        return self._columns.error.get(self._columns.ids[self._i])

    @property
    def waiting_on(self) -> tuple[ChildKey, ...]:
        return ()

    @property
    def kept(self) -> str | None:
        return self._columns.kept.get(self._columns.ids[self._i])

    @property
    def id(self) -> str:
        return self._columns.ids[self._i]

    @property
    def stage(self) -> str:
        return self._columns.stage

    @property
    def out_dir(self) -> str:
        return self._columns.out[self._i]

    @property
    def source(self) -> str:
        return self._columns.src[self._i]

    @property
    def fingerprint_value(self) -> str:
        return self._columns.fp[self._i]

    def recorded(self) -> tuple[list[int] | None, list[str]]:
        """The manifest's stat signature (None if not complete) and the archived
        attempt names this state was recorded and checked with."""
        return self._columns.recorded(self._i)

    def success_usage(self) -> tuple[str, tuple[str, dict[str, Any]] | None]:
        """As `PartitionState.success_usage`, without building the manifest."""
        columns, i = self._columns, self._i
        return columns.ids[i], columns.success_usage(i, success_usage)


_INDEX_STATUS = {COMPLETE: Status.COMPLETE, MISSING: Status.MISSING, FAILED: Status.FAILED}
_INDEX_REASON = {COMPLETE: "complete", MISSING: "missing", FAILED: ""}
