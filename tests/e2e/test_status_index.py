"""The status index never changes what `orch status` and `orch plan` say.

On a copy of this repository's pipeline (6 stages, fan-out, `needs` and three
fan-in layers, schemas), after each change to the disk the views are taken
twice: once trusting the index the previous command wrote, once with
`wip/cache/` deleted. Both must print the same bytes and exit the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VIEWS = [("status", "--json"), ("status", "deep_research", "--json"), ("plan", "--json")]


def orch(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["PYTHONPATH"] = str(REPO / "src")
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "orch", *args], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def views(root: Path) -> list[tuple[int, str, str]]:
    return [(r.returncode, r.stdout, r.stderr) for r in (orch(root, *args) for args in VIEWS)]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("index") / "proj"
    root.mkdir()
    for name in ("orch.yaml", "agents", "references"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    assert orch(root, "run").returncode == 0
    return root


def deep(root: Path) -> Path:
    return root / "data/new_energy_vehicles/01.materials/02.deep_research"


def first(directory: Path) -> Path:
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))[0]


def append(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text)


def touch_output(root: Path) -> None:
    path = first(deep(root)) / "findings.md"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def grow_output(root: Path) -> None:
    append(first(deep(root)) / "findings.md", "\nedited by hand\n")


def delete_output(root: Path) -> None:
    (sorted(deep(root).iterdir())[3] / "sources.json").unlink()


def edit_blueprint(root: Path) -> None:
    append(root / "agents/04.feature_synthesizer.md", "\nOne more instruction.\n")


def edit_row(root: Path) -> None:
    path = root / "references/framework.yaml"
    text = path.read_text()
    path.write_text(text.replace("name:", "name: (revised)", 1))


def staging_beside(root: Path) -> None:
    target = sorted(deep(root).iterdir())[5]
    (target.parent / f".{target.name}.attempt-9").mkdir()


def remove_partition(root: Path) -> None:
    shutil.rmtree(sorted(deep(root).iterdir())[7])


def archived_failure(root: Path) -> None:
    target = sorted(deep(root).iterdir())[9]
    manifest = json.loads((target / ".orch/manifest.json").read_text())
    attempt = root / f"wip/attempts/deep_research/{target.name}/{manifest['attempt'] + 1}/.orch"
    attempt.mkdir(parents=True)
    record = {"n": manifest["attempt"] + 1, "outcome": "failed", "agent": "claude", "error": "exit code 1"}
    (attempt / "error.json").write_text(json.dumps(record))


def rerun_one(root: Path) -> None:
    """A run since: a new manifest for the same fingerprint (judged again without a render)."""
    target = sorted(p for p in deep(root).iterdir() if not p.name.startswith("."))[13]
    assert orch(root, "stage", "run", "deep_research", "--only", target.name, "--force").returncode == 0


def garbage_index(root: Path) -> None:
    (root / "wip/cache/status/index.json").write_bytes(b'{"format": 1, "deps": 7, "stages": [1,')


def symlinked_partition(root: Path) -> None:
    victim = sorted(deep(root).iterdir())[11]
    shutil.rmtree(victim)
    victim.symlink_to(sorted(deep(root).iterdir())[12])


CHANGES: list[Callable[[Path], None]] = [
    lambda root: None,
    touch_output,
    grow_output,
    delete_output,
    staging_beside,
    remove_partition,
    archived_failure,
    rerun_one,
    edit_blueprint,
    edit_row,
    garbage_index,
    symlinked_partition,
]


@pytest.mark.timeout(600)
def test_views_with_and_without_the_index_agree_after_every_change(pipeline: Path) -> None:
    root = pipeline
    views(root)  # writes the index
    assert (root / "wip/cache/status/index.json").is_file()
    for change in CHANGES:
        change(root)
        indexed = views(root)
        shutil.rmtree(root / "wip/cache")
        fresh = views(root)
        assert indexed == fresh, getattr(change, "__name__", "no change")


def test_index_is_used_and_skips_the_load_time_check(pipeline: Path, tmp_path: Path) -> None:
    """With the index in place, a planner builds no partition (rows, prompts) and
    the load-time check is skipped; every state is rebuilt from the index."""
    from orch.config.project import load_project
    from orch.config.workspace import Workspace
    from orch.engine.index_read import IndexedState
    from orch.engine.plan import Planner

    root = tmp_path / "copy"
    shutil.copytree(
        REPO, root, ignore=shutil.ignore_patterns(".*", "data", "wip", "src", "tests", "bench", "docs")
    )
    assert orch(root, "run").returncode == 0
    assert orch(root, "status").returncode == 0  # writes checked.json and index.json
    ws = Workspace(load_project(root))
    ws.check()
    planner = Planner(ws, index=True)
    states = [s for name in ws.project.stages for s in planner.stage_states(name)]
    assert len(states) == 55 + 55 + 12 + 4 + 1 + len(planner.stage_states("research"))
    assert all(isinstance(s, IndexedState) for s in states)
    assert ws.partitions._stages == {}  # nothing was built from references
    assert {s.status.value for s in states} == {"complete"}

    # one changed output: only that partition is judged afresh (its stage is built)
    path = next(p for p in sorted((root / states[60].out_dir).iterdir()) if p.suffix == ".md")
    path.write_text(path.read_text() + "x")
    planner = Planner(Workspace(load_project(root)), index=True)
    planner.ws.check()
    again = {
        s.id: s
        for name in ws.project.stages
        for s in planner.stage_states(name)
        if s.stage == states[60].stage
    }
    assert again[states[60].id].status.value == "modified"
    assert not isinstance(again[states[60].id], IndexedState)
