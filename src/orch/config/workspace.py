"""One loaded project with its caches: partitions, blueprints, schemas, prompts.

Renders a partition's prompt (params, plus `INPUTS` for stages that read
upstream outputs) and computes its fingerprint (DESIGN.md §4).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orch.backends import fingerprint_settings
from orch.config.blueprints import Blueprint, check_blueprint_path, load_blueprint, render_blueprint
from orch.config.inputs import checked_sigs, input_sigs
from orch.config.partitions import Partition, PartitionIndex
from orch.config.project import AgentConfig, Project, Stage
from orch.errors import BlueprintError
from orch.store.checks import SchemaStore
from orch.store.manifest import Manifest
from orch.store.status_cache import CHECKED, read_cache, sigs_match, write_cache

ChildKey = tuple[str, str]


def digest(value: Any) -> str:
    """Return `sha256:` of a string, or of canonical JSON for any other value."""
    if not isinstance(value, str):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()


def key_digests(mapping: Mapping[str, Any]) -> dict[str, str]:
    """Return `key -> digest(value)`: what a manifest keeps to name a changed key."""
    return {str(k): digest(v) for k, v in mapping.items()}


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A partition's fingerprint and the hashes it was made of.

    `value` covers prompt, agent, expect and inputs. The row, vars and
    blueprint hashes only explain a changed prompt, so they are computed on
    demand (`explain`), not for every partition `orch status` looks at; the
    per-key hashes (`keys`: row fields, vars, agent settings) only name the
    changed key, so they are computed only for that.
    """

    value: str
    prompt: str
    agent: str
    expect: str
    inputs: Mapping[str, str]
    explain: Callable[[], dict[str, Any]]
    keys: Callable[[], dict[str, Any]] = dict

    def parts(self) -> dict[str, Any]:
        """Return the parts as stored in the manifest (with row/vars/blueprint and per-key hashes)."""
        return {
            "prompt": self.prompt,
            "agent": self.agent,
            "expect": self.expect,
            "inputs": dict(self.inputs),
            **self.explain(),
            **self.keys(),
        }


#: Largest upstream output file `child.read()` inlines into a prompt: 16 MiB.
MAX_INPUT_BYTES = 16 * 1024 * 1024


def _read_input(directory: Path, name: str) -> str:
    """Read `directory/name`: a regular UTF-8 file inside `directory`, at most MAX_INPUT_BYTES."""
    base = directory.resolve()
    path = (directory / name).resolve()
    if base not in path.parents:
        raise ValueError("the file lies outside the partition directory")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = file.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise ValueError(f"larger than {MAX_INPUT_BYTES:,} bytes, the bound for inlining an input")
    # newlines translated as text mode does, as before: prompts stay byte-identical
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


class InputView:
    """One upstream partition as a blueprint sees it in `INPUTS`.

    Attributes:
        id: Partition id.
        stage: Its stage.
        params: Its params (row fields over vars).
        out_dir: Its directory relative to the project root.
        files: Its output files (from its manifest), relative to `out_dir`.
    """

    def __init__(
        self, root: Path, partition: Partition, manifest: Manifest | None, preview: bool = False
    ) -> None:
        self._root = root
        self._preview = preview
        self.id = partition.id
        self.stage = partition.stage
        self.params = dict(partition.params)
        self.out_dir = partition.out_dir
        self.files = [o.path for o in manifest.outputs] if manifest else []

    def read(self, name: str) -> str:
        """Return the text of output file `name` (to inline it in a prompt).

        In preview mode (inputs not complete yet) returns a labelled placeholder.
        The file must be a regular file inside the partition directory (symlinks
        resolved) of at most MAX_INPUT_BYTES; a FIFO or device is refused, never
        waited on.

        Raises:
            BlueprintError: the file does not exist, lies outside the partition
                directory, is not a regular file, is too big, or is not UTF-8 text.
        """
        if self._preview:
            return f"[contents of {name} from {self.stage}/{self.id}: not written yet]"
        try:
            return _read_input(self._root / self.out_dir, str(name))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise BlueprintError(
                f"INPUTS: cannot read {name!r} of partition {self.id} (stage {self.stage}): "
                f"{getattr(err, 'strerror', None) or err}",
                f"its files are: {', '.join(self.files) or '(none: it is not complete)'}",
            ) from err

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"InputView({self.stage}/{self.id})"


class Workspace:
    """A project plus the caches every command shares."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.root = project.root
        self.partitions = PartitionIndex(project)
        self.schemas = SchemaStore(project.root)
        self._blueprints: dict[str, Blueprint] = {}
        self._hashes: dict[Any, str] = {}
        self._key_hashes: dict[Any, dict[str, str]] = {}
        #: `rel -> stat signature` of every input the load-time check read, once
        #: it passed (see `orch.config.inputs`); None until then or if unknown.
        self.input_sigs: dict[str, Any] | None = None

    def check(self) -> None:
        """Run the load-time checks every command that plans or runs shares.

        Loads every stage's partitions (ids, rows, output directories strictly
        inside data/ and never nested in one another, across all stages),
        checks blueprint paths stay inside the project, and loads every schema
        an expect rule names, resolving its `$ref`s.

        Skipped when every file the last passing check read (orch.yaml,
        blueprints, `agents/`, references, schemas) and every output parent
        directory is unchanged (stat signatures in `wip/cache/status/checked.json`,
        the only file this writes): at 100,000 partitions the check costs
        ~4 s, the comparison a few milliseconds.

        Raises:
            ConfigError: the first problem found, naming file and line or row.
        """
        if self._unchanged_since_checked():
            return
        before = input_sigs(self.project)
        for name, stage in self.project.stages.items():
            check_blueprint_path(self.root, stage.blueprint)
            self.partitions.for_stage(name)
            for rule in stage.expect:
                if rule.schema:
                    self.schemas.validator(rule.schema)
        self._record_checked(before)

    def _unchanged_since_checked(self) -> bool:
        """True if every input of the last check that passed is unchanged on disk
        (`wip/cache/status/checked.json`); then `input_sigs` holds them."""
        cached = read_cache(self.root, CHECKED)
        if cached is None or not sigs_match(self.root, cached.get("sigs")):
            return False
        self.input_sigs = cached["sigs"]
        return True

    def _record_checked(self, before: dict[str, Any] | None) -> None:
        """Record the inputs of a check that passed, unless one changed while it ran."""
        after = input_sigs(self.project)
        if before is None or after != before:
            return
        sigs = {**after, **checked_sigs(self.root, self.partitions, self.schemas.files)}
        if any(sig is None for sig in sigs.values()):
            return
        self.input_sigs = sigs
        write_cache(self.root, CHECKED, {"sigs": sigs})

    def blueprint(self, stage: Stage) -> Blueprint:
        """Return the stage's parsed blueprint (read once per workspace)."""
        if stage.blueprint not in self._blueprints:
            self._blueprints[stage.blueprint] = load_blueprint(self.root, stage.blueprint)
        return self._blueprints[stage.blueprint]

    def child_partitions(self, partition: Partition) -> list[Partition]:
        """Return the upstream partitions `partition` reads, in order."""
        return [self.partitions.get(stage, pid) for stage, pid in partition.children]

    def values(
        self,
        partition: Partition,
        manifests: Mapping[ChildKey, Manifest | None],
        preview: bool = False,
    ) -> dict[str, Any]:
        """Return the render values: params, plus INPUTS when it reads upstream.

        Args:
            manifests: `(stage, id) -> Manifest` of the children (None if absent).
            preview: Children missing from `manifests` read as placeholders.
        """
        values = dict(partition.params)
        if partition.children:
            views = []
            for child in self.child_partitions(partition):
                manifest = manifests.get((child.stage, child.id))
                views.append(InputView(self.root, child, manifest, preview and manifest is None))
            values["INPUTS"] = views
        return values

    def render(
        self,
        partition: Partition,
        manifests: Mapping[ChildKey, Manifest | None] | None = None,
        preview: bool = False,
    ) -> str:
        """Return exactly the prompt the agent of `partition` receives.

        Args:
            partition: The partition.
            manifests: Its children's manifests when complete.
            preview: Show inputs that are not complete as labelled placeholders
                instead of failing (for `blueprint render` / `check`).

        Raises:
            BlueprintError: a placeholder without value, or an unreadable input.
        """
        stage = self.project.stage(partition.stage)
        return render_blueprint(
            self.blueprint(stage),
            self.values(partition, manifests or {}, preview),
            f"stage {partition.stage}, partition {partition.id}",
        )

    def fingerprint(
        self,
        partition: Partition,
        prompt: str,
        agent: AgentConfig,
        manifests: Mapping[ChildKey, Manifest | None],
    ) -> Fingerprint:
        """Return the fingerprint of `partition` rendered as `prompt` for `agent`.

        Inputs are the children's output fingerprints ("" for an absent child).
        """
        stage = self.project.stage(partition.stage)
        inputs = {}
        for child_stage, child_id in partition.children:
            manifest = manifests.get((child_stage, child_id))
            inputs[f"{child_stage}/{child_id}"] = manifest.output_fingerprint if manifest else ""
        prompt_hash = digest(prompt)
        agent_hash = self._hashes.get(("agent", agent.name)) or self.agent_digest(agent)
        expect_hash = self._hashes.get(("expect", stage.name)) or self.expect_digest(stage)
        # Hash of hashes joined by NUL: no JSON encoding in the status hot path.
        parts = [prompt_hash, agent_hash, expect_hash]
        if inputs:
            parts += [f"{k}={v}" for k, v in sorted(inputs.items())]
        value = digest("\0".join(parts))

        def explain() -> dict[str, Any]:
            return {
                "row": digest(dict(partition.row)),
                "vars": self._cached(
                    ("vars", stage.name), lambda: digest({**self.project.vars, **stage.vars})
                ),
                "blueprint": self._cached(
                    ("blueprint", stage.name), lambda: digest(self.blueprint(stage).digest_source)
                ),
            }

        def keys() -> dict[str, Any]:
            return {
                "row_keys": key_digests(partition.row),
                "vars_keys": self._keyed(
                    ("vars_keys", stage.name), lambda: key_digests({**self.project.vars, **stage.vars})
                ),
                "agent_keys": self._keyed(
                    ("agent_keys", agent.name), lambda: key_digests(fingerprint_settings(agent))
                ),
            }

        return Fingerprint(value, prompt_hash, agent_hash, expect_hash, inputs, explain, keys)

    def agent_digest(self, agent: AgentConfig) -> str:
        """Return the hash of the agent's settings that fingerprints cover."""
        return self._cached(("agent", agent.name), lambda: digest(fingerprint_settings(agent)))

    def expect_digest(self, stage: Stage) -> str:
        """Return the hash of the stage's expect rules and schemas that fingerprints cover."""
        return self._cached(("expect", stage.name), lambda: self._expect_digest(stage))

    def _expect_digest(self, stage: Stage) -> str:
        rules = [asdict(rule) for rule in stage.expect]
        schemas = {
            rule.schema: digest(self.schemas.schema(rule.schema)) for rule in stage.expect if rule.schema
        }
        return digest({"rules": rules, "schemas": schemas})

    def _keyed(self, key: Any, compute: Callable[[], dict[str, str]]) -> dict[str, str]:
        """Per-key hashes computed once per workspace (a copy: callers may keep it)."""
        if key not in self._key_hashes:
            self._key_hashes[key] = compute()
        return dict(self._key_hashes[key])

    def _cached(self, key: Any, compute: Any) -> str:
        if key not in self._hashes:
            self._hashes[key] = compute()
        return self._hashes[key]
