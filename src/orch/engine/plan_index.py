"""The status index: each partition's last judged state, reused while its disk is unchanged.

Judging a partition renders its prompt and reads its manifest (~100 µs); at
100,000 partitions that is 10 s for an `orch status`. Like git's index, this
keeps the judgement of every partition that was complete, missing or failed,
together with the stat signatures it was made from, in
`wip/cache/status/index.json`. A later `orch status` or `orch plan` reuses an
entry only when

- every input of the project's load-time check is unchanged (orch.yaml,
  blueprints, `agents/`, references, schemas: `Workspace.input_sigs`), so the
  partition set, rows, prompts and fingerprints are the same;
- the stage runs with the same agent (name and settings hash);
- its directory is still there (or still absent), not a symlink, with no
  staging directory beside it;
- its manifest's stat signature and every output's size and mtime are unchanged
  (the same shallow trust `orch status` places in them without the index);
- its archived attempts (`wip/attempts/<stage>/<id>/`) are the same;
- every upstream partition it reads is complete with the same output fingerprint.

Anything else is judged afresh (`Planner.assess`). Stages with a `glob` expect
rule are never indexed (a new file in a subdirectory changes their outcome
without changing any signature kept here). States rebuilt from the index carry
slim records: the partition without its params and row, and the manifest
without `parts` and `accepted`; their prompt and fingerprint explanation are
computed on demand from the real partition.

Only read-only views trust it (`orch status`, `orch plan`, the snapshot behind
`watch` and `serve`); a run, `orch barrier` and `orch accept` judge every
partition from the disk, so a stale or forged index can mislead a view but
never skip, promote or accept anything.
"""

from __future__ import annotations

import base64
from array import array
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from orch.config.project import AgentConfig, Stage
from orch.config.workspace import Workspace
from orch.engine.index_read import COMPLETE, FAILED, MISSING, Columns, IndexedState, archived_names, is_hash
from orch.engine.states import PartitionState, Status
from orch.store.checks import META_DIR
from orch.store.layout import MANIFEST
from orch.store.manifest import Manifest
from orch.store.status_cache import INDEX, file_sig, read_cache, write_cache

if TYPE_CHECKING:
    from orch.engine.plan import Planner

_DEFAULT_REASON = {COMPLETE: "complete", MISSING: "missing"}


class StatusIndex:
    """The status index of one workspace, as loaded, plus the stages judged now.

    Args:
        workspace: A workspace whose load-time check passed (`input_sigs` set);
            otherwise the index is empty and never written.
    """

    def __init__(self, workspace: Workspace) -> None:
        self.ws = workspace
        self.deps = workspace.input_sigs
        data = read_cache(workspace.root, INDEX) if self.deps is not None else None
        stages = data.get("stages") if data and data.get("deps") == self.deps else None
        self._stages: dict[str, Any] = stages if isinstance(stages, dict) else {}
        self._judged: dict[str, Any] = {}
        self._seen: dict[tuple[str, str], tuple[list[int] | None, list[str]]] = {}

    def columns(
        self, stage: Stage, agent: AgentConfig, hashes: tuple[str, str], planner: Planner
    ) -> Columns | None:
        """Return the stage's recorded states if they were judged for this agent
        (name, and `(agent hash, expect hash)`), else None; for `planner`."""
        if not self.indexable(stage):
            return None
        stored = self._stages.get(stage.name)
        if not isinstance(stored, dict) or stored.get("agent") != [agent.name, *hashes]:
            return None
        try:
            return Columns(stored, planner, stage.name, hashes)
        except (TypeError, ValueError, KeyError):  # not written by this orch
            return None

    def saw(self, stage: str, pid: str, out_dir: str, exists: bool, has_archived: bool) -> None:
        """Note, before a partition is judged, its archived attempts and its
        manifest's stat signature (`out_dir` absolute), so that what is recorded
        is what was judged even if a run changes the disk meanwhile (see `read`)."""
        archived = archived_names(self.ws.root, stage, pid) if has_archived else []
        sig = file_sig(f"{out_dir}/{META_DIR}/{MANIFEST}") if exists else None
        self._seen[(stage, pid)] = (sig, archived)

    def read(self, stage: str, pid: str, out_dir: str, exists: bool) -> None:
        """After its manifest was read: forget the partition's signature if the
        manifest was replaced meanwhile (it is then not recorded)."""
        key = (stage, pid)
        if exists and file_sig(f"{out_dir}/{META_DIR}/{MANIFEST}") != self._seen[key][0]:
            self._seen[key] = (None, self._seen[key][1])

    def indexable(self, stage: Stage) -> bool:
        """True if the stage's states can be kept here (no `glob` expect rule)."""
        return self.deps is not None and all(rule.glob is None for rule in stage.expect)

    def compact(
        self,
        stage: Stage,
        agent: AgentConfig,
        hashes: tuple[str, str],
        states: Iterable[PartitionState],
        planner: Planner,
    ) -> dict[str, PartitionState]:
        """Record a stage's states as they are judged, to be written by `save`, and
        return them by id with each recorded one replaced by its `IndexedState`.

        `states` may be a generator: a full state (with its manifest) is dropped
        as soon as it is recorded, so judging 100,000 partitions never holds
        100,000 manifests. A stage is written whole or not at all: one state that
        cannot be reused (running, stale, incomplete, ...) leaves it out.
        """
        self._stages.pop(stage.name, None)
        if not self.indexable(stage):
            return {state.id: state for state in states}
        builder = _Builder(self.ws.root, hashes, self._seen)
        kept: dict[str, PartitionState | int] = {}
        whole = True
        for state in states:
            if builder.add(state):
                kept[state.id] = len(builder.ids) - 1
            else:
                whole = False
                kept[state.id] = state
        record = {"agent": [agent.name, *hashes], **builder.columns()}
        if whole:
            self._judged[stage.name] = record
        columns = Columns(record, planner, stage.name, hashes)
        return {pid: IndexedState(columns, v) if isinstance(v, int) else v for pid, v in kept.items()}

    def save(self) -> None:
        """Write the index if any stage was judged afresh (atomically; errors ignored)."""
        if not self._judged or self.deps is None or self.ws.input_sigs != self.deps:
            return
        write_cache(self.ws.root, INDEX, {"deps": self.deps, "stages": {**self._stages, **self._judged}})


def _ints(values: list[int]) -> str:
    return base64.b64encode(array("q", values).tobytes()).decode("ascii")


def _floats(values: list[float]) -> str:
    return base64.b64encode(array("d", values).tobytes()).decode("ascii")


class _Builder:
    """Turns judged states into columns: one list or packed array per field, so
    100,000 partitions load as a few hundred thousand objects, not millions."""

    def __init__(
        self,
        root: Any,
        hashes: tuple[str, str],
        judged: dict[tuple[str, str], tuple[list[int] | None, list[str]]],
    ) -> None:
        self.root = root
        self.hashes = hashes
        self.judged = judged
        self.ids: list[str] = []
        self.kinds: list[str] = []
        self.out: list[str] = []
        self.src: list[str] = []
        self.prio: list[float] = []
        self.children: list[Any] = []
        self.fp: list[str] = []
        self.prompt: list[str] = []
        self.sparse: dict[str, dict[str, Any]] = {
            "archived": {},
            "reason": {},
            "kept": {},
            "error": {},
            "made_for": {},
        }
        # complete partitions only, in order
        self.msig: list[int] = []
        self.nout: list[int] = []
        self.opath: list[str] = []
        self.osize: list[int] = []
        self.omtime: list[int] = []
        self.ofp: list[str] = []
        self.attempt: list[int] = []
        self.run: list[str] = []
        self.times: list[float] = []
        self.tables: dict[str, list[Any]] = {"agent": [], "usage": [], "attempts": []}
        self.refs: dict[str, list[int]] = {"agent": [], "usage": [], "attempts": []}
        self._seen: dict[str, dict[bytes, int]] = {"agent": {}, "usage": {}, "attempts": {}}

    def add(self, state: PartitionState) -> bool:
        """Add one state; False (adding nothing) if it cannot be reused later."""
        partition, manifest, fp = state.partition, state.manifest, state.fingerprint
        if fp is None or state.waiting_on or state.findings or (fp.agent, fp.expect) != self.hashes:
            return False
        if state.status is Status.COMPLETE and manifest is not None:
            kind = COMPLETE
        elif state.status is Status.MISSING and manifest is None:
            kind = MISSING
        elif state.status is Status.FAILED and manifest is None and state.last_error is not None:
            kind = FAILED
        else:
            return False
        recorded = state.recorded() if isinstance(state, IndexedState) else self.judged.get(state.key())
        if recorded is None or not all(is_hash(h) for h in (fp.value, fp.prompt)):
            return False
        sig, archived = recorded
        if kind == COMPLETE:
            if sig is None or manifest is None or not is_hash(manifest.output_fingerprint):
                return False
            self._add_manifest(manifest, fp.value, sig)
        pid = partition.id
        self.ids.append(pid)
        self.kinds.append(kind)
        self.out.append(partition.out_dir)
        self.src.append(partition.source)
        self.prio.append(partition.priority)
        self.children.append([[s, i, fp.inputs.get(f"{s}/{i}", "")] for s, i in partition.children])
        self.fp.append(fp.value)
        self.prompt.append(fp.prompt)
        if kind == FAILED:
            self.sparse["error"][pid] = state.last_error
        if archived:
            self.sparse["archived"][pid] = archived
        if state.reason != _DEFAULT_REASON.get(kind):
            self.sparse["reason"][pid] = state.reason
        if state.kept is not None:
            self.sparse["kept"][pid] = state.kept
        return True

    def _add_manifest(self, manifest: Manifest, fingerprint: str, sig: list[int]) -> None:
        self.msig += sig
        self.nout.append(len(manifest.outputs))
        for output in manifest.outputs:
            self.opath.append(output.path)
            self.osize.append(output.bytes)
            self.omtime.append(output.mtime_ns)
        self.ofp.append(manifest.output_fingerprint)
        self.attempt.append(manifest.attempt)
        self.run.append(manifest.run_id)
        self.times += [manifest.started_at, manifest.finished_at]
        attempts = [
            {k: a[k] for k in ("n", "usage", "worker", "agent", "outcome") if k in a}
            for a in manifest.attempts
            if isinstance(a, dict)
        ]
        for name, value in (("agent", manifest.agent), ("usage", manifest.usage), ("attempts", attempts)):
            key = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
            if key not in self._seen[name]:
                self._seen[name][key] = len(self.tables[name])
                self.tables[name].append(value)
            self.refs[name].append(self._seen[name][key])
        if manifest.fingerprint != fingerprint:
            self.sparse["made_for"][manifest.partition] = manifest.fingerprint

    def columns(self) -> dict[str, Any]:
        """The stage's record as stored in index.json."""
        return {
            "ids": self.ids,
            "kinds": "".join(self.kinds),
            "out": self.out,
            "src": self.src,
            "prio": self.prio if any(self.prio) else None,
            "children": self.children if any(self.children) else None,
            "fp": "".join(self.fp),
            "prompt": "".join(self.prompt),
            **self.sparse,
            "msig": _ints(self.msig),
            "nout": _ints(self.nout),
            "opath": self.opath,
            "osize": _ints(self.osize),
            "omtime": _ints(self.omtime),
            "ofp": "".join(self.ofp),
            "attempt": _ints(self.attempt),
            "run": self.run,
            "times": _floats(self.times),
            "tables": self.tables,
            "refs": {name: _ints(refs) for name, refs in self.refs.items()},
        }
