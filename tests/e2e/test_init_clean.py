"""`orch init` (a new project that runs at once) and `orch clean` (pruning wip/), through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

DAY_S = 86400


def orch_in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in `cwd`, with no project chosen by the environment."""
    env = {k: v for k, v in os.environ.items() if k != "ORCH_PROJECT"}
    env["PYTHONPATH"] = str(REPO / "src")
    return subprocess.run(
        [sys.executable, "-m", "orch", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


# -- orch init ------------------------------------------------------------------------------------


def test_init_then_run_exits_0_and_meets_the_barrier(tmp_path):
    made = orch_in(tmp_path, "init", "x")
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines()[-1] == "next: cd x && orch run"
    root = tmp_path / "x"
    assert sorted(p.name for p in root.iterdir()) == [
        ".gitignore",
        "agents",
        "data",
        "orch.yaml",
        "references",
        "wip",
    ]
    assert (root / ".gitignore").read_text().splitlines()[1:] == ["data/", "wip/"]
    config = (root / "orch.yaml").read_text()
    assert "default: offline" in config
    assert "#   preset: claude" in config

    run = orch_in(root, "run")
    assert run.returncode == 0, run.stderr
    assert "barrier summaries: met" in run.stdout
    assert sorted(p.name for p in (root / "data" / "summaries").iterdir()) == ["intro", "methods", "results"]
    check = orch_in(root, "blueprint", "check")
    assert check.returncode == 0
    assert "0 error(s), 0 warning(s)" in check.stdout


def test_init_refuses_to_overwrite_an_existing_project(tmp_path):
    (tmp_path / "orch.yaml").write_text("stages: {}\n")
    result = orch_in(tmp_path, "init")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: orch.yaml: already exists; orch init never overwrites a project",
        "hint: run orch init in an empty directory, e.g. orch init my-project",
    ]
    assert (tmp_path / "orch.yaml").read_text() == "stages: {}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orch.yaml"]


def test_init_keeps_other_existing_files(tmp_path):
    (tmp_path / ".gitignore").write_text("node_modules/\n")
    result = orch_in(tmp_path, "init", ".")
    assert result.returncode == 0, result.stderr
    assert "kept  .gitignore (already there)" in result.stdout
    assert (tmp_path / ".gitignore").read_text() == "node_modules/\n"
    assert result.stdout.splitlines()[-1] == "next: orch run"


# -- orch clean -----------------------------------------------------------------------------------


@pytest.fixture
def used(make_project):
    """A project run three times with --force: 2 archived attempts per partition, 3 runs."""
    project = make_project(n_items=2)
    for _ in range(3):
        project.orch("run", "--force", check=True)
    return project


def listing(project, rel: str) -> list[str]:
    base = project.root / rel
    return sorted(str(p.relative_to(base)) for p in base.rglob("*")) if base.exists() else []


def age(path: Path, days: float) -> None:
    """Set the mtime of `path` and everything under it to `days` ago."""
    stamp = time.time() - days * DAY_S
    for p in [path, *path.rglob("*")]:
        os.utime(p, (stamp, stamp))


def test_clean_keep_dry_run_lists_what_would_go_and_removes_nothing(used):
    before_wip, before_data = listing(used, "wip"), listing(used, "data")
    result = used.orch("clean", "--keep", "1", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["kind", "path", "size", "age"]
    paths = [line.split()[1] for line in lines[1:-1]]
    runs = sorted(p.name for p in (used.root / "wip" / "runs").iterdir())
    assert paths == [
        "wip/attempts/work/item01/1",
        "wip/attempts/work/item02/1",
        f"wip/runs/{runs[1]}",
        f"wip/runs/{runs[0]}",
    ]
    assert lines[-1].startswith("would remove 2 attempt(s) and 2 run(s); would free ")
    assert lines[-1].endswith(" (dry run: nothing removed)")
    assert listing(used, "wip") == before_wip
    assert listing(used, "data") == before_data


def test_clean_keep_removes_all_but_the_newest_and_never_touches_data(used):
    before_data = listing(used, "data")
    dry = json.loads(used.orch("clean", "--keep", "1", "--dry-run", "--json").stdout)
    result = used.orch("clean", "--keep", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bytes"] == dry["bytes"] > 0
    assert [r["path"] for r in report["removed"]] == [r["path"] for r in dry["removed"]]
    assert sorted(p.name for p in (used.root / "wip/attempts/work/item01").iterdir()) == ["2"]
    assert len(list((used.root / "wip" / "runs").iterdir())) == 1
    assert listing(used, "data") == before_data
    assert used.orch("status", "work").returncode == 0
    again = used.orch("clean", "--keep", "1")
    assert again.stdout.splitlines() == ["removed 0 attempt(s) and 0 run(s); freed 0 B"]


def test_clean_older_than_removes_only_old_items(used):
    attempts = used.root / "wip" / "attempts" / "work"
    age(attempts / "item01" / "1", 10)
    runs = sorted((used.root / "wip" / "runs").iterdir())
    age(runs[0], 10)
    result = used.orch("clean", "--older-than", "7d")
    assert result.returncode == 0, result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines()[1:-1]] == [
        ["attempt", "wip/attempts/work/item01/1"],
        ["run", f"wip/runs/{runs[0].name}"],
    ]
    assert sorted(p.name for p in (attempts / "item01").iterdir()) == ["2"]
    assert sorted(p.name for p in (attempts / "item02").iterdir()) == ["1", "2"]
    assert sorted((used.root / "wip" / "runs").iterdir()) == runs[1:]


def test_clean_never_removes_a_live_run_but_removes_a_killed_one(make_project):
    project = make_project()
    runs = project.root / "wip" / "runs"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name, pid in (("20260101T000000Z-1", os.getpid()), ("20260101T000001Z-2", dead.pid)):
        (runs / name).mkdir(parents=True)
        event = {"event": "run_started", "pid": pid, "ts": 0, "run_id": name}
        (runs / name / "events.jsonl").write_text(json.dumps(event) + "\n")
    result = project.orch("clean", "--keep", "0")
    assert result.returncode == 0, result.stderr
    assert "kept wip/runs/20260101T000000Z-1: run still live" in result.stdout.splitlines()
    assert sorted(p.name for p in runs.iterdir()) == ["20260101T000000Z-1"]


def test_clean_leaves_the_attempts_of_a_partition_held_by_a_running_orch(used):
    from orch.store.state import PartitionLock

    lock = PartitionLock(used.root, "work", "item01")
    assert lock.try_acquire()
    try:
        result = used.orch("clean", "--keep", "0")
    finally:
        lock.release()
    assert result.returncode == 0, result.stderr
    assert "kept wip/attempts/work/item01: partition held by a running orch" in result.stdout
    assert sorted(p.name for p in (used.root / "wip/attempts/work/item01").iterdir()) == ["1", "2"]
    assert not (used.root / "wip/attempts/work/item02").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "error: orch clean needs --older-than AGE, --keep N or both"),
        (("--older-than", "7x"), "error: --older-than: expected an age like 12h, 7d or 2w, got '7x'"),
    ],
)
def test_clean_usage_errors_exit_2(make_project, args, message):
    project = make_project()
    result = project.orch("clean", *args)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == message
