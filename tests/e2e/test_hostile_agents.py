"""Hostile agents and a failing disk: one partition's trouble stays in that partition.

Each test drives the real `orch` command with the fake agent CLI scripted to
leave behind what a careless or hostile agent might (issue 10, items 1, 5, 9),
and asserts the exit code, the message, the error class on disk, that every
visible partition is complete, and that nothing outside the project changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAKES, Project, default_config

#: Partition -> (scripted step, error class, words expected in its error).
HOSTILE: dict[str, tuple[dict[str, Any], str, str]] = {
    "item02": ({"action": "nonutf8_name"}, "checks", "bad-\\xff.txt: file name is not valid UTF-8"),
    "item03": ({"action": "fifo"}, "checks", "pipe: not a regular file"),
    "item04": ({"action": "socket"}, "checks", "sock: not a regular file"),
    "item05": ({"action": "device"}, "checks", "null: not a regular file"),
    "item06": ({"action": "deep_tree", "depth": 2000}, "checks", "nested deeper than 64 levels"),
    "item07": ({"action": "rm_cwd"}, "checks", "the staging directory was removed during the attempt"),
    "item08": (
        {"action": "huge_file", "name": "data.json"},
        "checks",
        "above the 67108864 byte limit for JSON checks",
    ),
    "item09": ({"action": "symlink_meta", "what": ".orch"}, "checks", ".orch was replaced by a symlink"),
    "item10": (
        {"action": "symlink_meta", "what": ".orch/manifest.json"},
        "checks",
        ".orch/manifest.json: replaced",
    ),
    "item11": ({"action": "symlink_meta", "what": ".orch/agent.log"}, "checks", ".orch/agent.log: replaced"),
    "item12": ({"action": "symlink_meta", "what": ".orch/prompt.md"}, "checks", ".orch/prompt.md: replaced"),
    "item13": ({"action": "fifo_meta", "what": ".orch/agent.log", "exit": 1}, "exit", "exit code 1"),
    "item14": ({"action": "fifo_meta", "what": ".orch/agent.log"}, "checks", ".orch/agent.log: replaced"),
}
NORMAL = ("item01", "item15", "item16", "item17")


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A directory beside the project, with one file, that no run may change."""
    where = tmp_path / "outside"
    where.mkdir()
    (where / "secret.txt").write_text("keep me\n")
    yield where
    assert sorted(os.listdir(where)) == ["secret.txt"]
    assert (where / "secret.txt").read_text() == "keep me\n"


@pytest.fixture
def remove_deep_trees(tmp_path: Path) -> Iterator[None]:
    """rm -rf the project after the test: shutil.rmtree (pytest's clean-up) recurses
    once per level and cannot remove a tree 2,000 directories deep."""
    yield
    subprocess.run(["rm", "-rf", str(tmp_path / "proj")], check=False)


def visible_partitions(project: Project) -> dict[str, dict[str, Any]]:
    """Every visible partition directory of stage `work` and its manifest (None if invalid)."""
    base = project.root / "data" / "work"
    found: dict[str, Any] = {}
    for name in sorted(os.listdir(base)) if base.exists() else []:
        if not name.startswith("."):
            try:
                found[name] = json.loads((base / name / ".orch" / "manifest.json").read_text())
            except (OSError, ValueError):
                found[name] = None
    return found


def last_error(project: Project, partition: str) -> dict[str, Any]:
    """The error.json of a partition's newest archived attempt."""
    base = project.root / "wip" / "attempts" / "work" / partition
    newest = max(os.listdir(base), key=lambda n: int(n.split("-")[0]))
    return json.loads((base / newest / ".orch" / "error.json").read_text())


def test_hostile_partitions_fail_alone_and_normal_ones_complete(
    make_project: Callable[..., Project], outside: Path, remove_deep_trees: None
) -> None:
    expect = [
        {"file": "out.md", "min_bytes": 10, "headings": ["## Result"]},
        {"file": "data.json", "json": True},
    ]
    project = make_project(n_items=17, expect=expect)
    files = {"out.md": "## Result\n\nFake output for {partition}.\n", "data.json": "{{}}"}
    script: dict[str, Any] = {"default": {"action": "succeed", "files": files}}
    for partition, (step, _, _) in HOSTILE.items():
        script[partition] = {**step, "files": files}
        if step["action"] == "symlink_meta":
            target = outside if step["what"] == ".orch" else outside / "secret.txt"
            script[partition]["target"] = str(target)
    project.script(script)

    result = project.orch("stage", "run", "work", timeout=180)

    assert result.returncode == 3, result.stderr
    assert f"{len(HOSTILE)} of 17 partitions did not complete" in result.stderr
    assert "Traceback" not in result.stderr
    visible = visible_partitions(project)
    assert sorted(visible) == list(NORMAL)
    assert all(m is not None and m["status"] == "complete" for m in visible.values())
    for partition, (_, error_class, words) in HOSTILE.items():
        error = last_error(project, partition)
        assert error["error_class"] == error_class, (partition, error)
        assert words in error["error"], (partition, error["error"])
    assert not [n for n in os.listdir(project.root / "data" / "work") if n.startswith(".")]


def test_a_usage_number_past_64_bits_fails_one_partition_and_promotion_goes_on(
    make_project: Callable[..., Project],
) -> None:
    config = default_config(3)
    config["agents"]["fake"] = {
        "backend": "command",
        "command": [sys.executable, str(FAKES / "claude.py")],
        "usage": "claude-json",
    }
    project = make_project(config=config)
    project.script(
        {"default": {"action": "succeed"}, "item02": {"action": "succeed", "tokens": [2**64, 2**70]}}
    )

    result = project.orch("stage", "run", "work", timeout=60)

    assert "Traceback" not in result.stderr
    visible = visible_partitions(project)
    assert {"item01", "item03"} <= set(visible)
    if result.returncode == 3:  # else the usage was validated away before promotion
        assert sorted(visible) == ["item01", "item03"]
        error = last_error(project, "item02")
        assert error["error_class"] == "internal"
        assert "cannot promote the outputs" in error["error"]
        assert "Traceback (most recent call last)" in error["traceback"]
    else:
        assert result.returncode == 0, result.stderr
    assert all(m is not None for m in visible.values())


# -- disk faults: a tmpfs or a read-only bind mount over data/ (root only) -----------


def _can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    probe = Path(tempfile.mkdtemp(prefix="orch-mount-probe-"))
    try:
        ok = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True
        )
        if ok.returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], check=True)
        return True
    finally:
        probe.rmdir()


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs root and mount(8)")


@pytest.fixture
def mounts() -> Iterator[Callable[..., None]]:
    """mount(*args, where): run mount(8); every mount point is unmounted afterwards."""
    points: list[Path] = []

    def mount(*args: str, where: Path) -> None:
        subprocess.run(["mount", *args, str(where)], check=True, capture_output=True)
        points.append(where)

    yield mount
    for point in reversed(points):
        subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)


@needs_mount
def test_a_full_disk_fails_the_run_cleanly_and_a_later_run_recovers(
    make_project: Callable[..., Project], mounts: Callable[..., None]
) -> None:
    project = make_project(n_items=4, max_parallel=1)
    data = project.root / "data"
    data.mkdir()
    mounts("-t", "tmpfs", "-o", "size=1m", "tmpfs", where=data)
    project.script({"default": {"action": "succeed"}, "item01": {"action": "fill_disk"}})

    result = project.orch("stage", "run", "work", timeout=60)

    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "halted: disk fault: OSError: [Errno 28] No space left on device:" in result.stderr
    assert str(data / "work") in result.stderr
    # item02 may start (and complete) while item01 is being promoted: its slot is free
    visible = visible_partitions(project)
    assert set(visible) <= {"item02"}
    assert all(m is not None and m["status"] == "complete" for m in visible.values())
    assert last_error(project, "item01")["error_class"] == "disk"
    assert len(project.invocations()) <= 2  # nothing starts once the disk is known full
    assert not [n for n in os.listdir(data / "work") if n.startswith(".")]

    subprocess.run(["mount", "-o", "remount,size=20m", str(data)], check=True)
    project.script({"default": {"action": "succeed"}})
    again = project.orch("stage", "run", "work", timeout=60)
    assert again.returncode == 0, again.stderr
    visible = visible_partitions(project)
    assert sorted(visible) == ["item01", "item02", "item03", "item04"]
    assert all(m is not None and m["status"] == "complete" for m in visible.values())


@needs_mount
def test_a_read_only_data_dir_fails_the_run_cleanly_and_a_later_run_recovers(
    make_project: Callable[..., Project], mounts: Callable[..., None]
) -> None:
    project = make_project(n_items=3)
    data = project.root / "data"
    data.mkdir()
    mounts("--bind", str(data), where=data)
    mounts("-o", "remount,bind,ro", where=data)

    result = project.orch("stage", "run", "work", timeout=60)

    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "Read-only file system" in result.stderr
    assert str(data / "work") in result.stderr
    assert project.invocations() == []
    assert os.listdir(data) == []

    subprocess.run(["mount", "-o", "remount,bind,rw", str(data)], check=True)
    again = project.orch("stage", "run", "work", timeout=60)
    assert again.returncode == 0, again.stderr
    assert sorted(visible_partitions(project)) == ["item01", "item02", "item03"]


@needs_mount
def test_an_event_log_on_a_full_disk_does_not_stop_the_run(
    make_project: Callable[..., Project], mounts: Callable[..., None]
) -> None:
    project = make_project(n_items=3)
    runs = project.root / "wip" / "runs"
    runs.mkdir(parents=True)
    mounts("-t", "tmpfs", "-o", "size=64k", "tmpfs", where=runs)
    filler = runs / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True, check=False)

    result = project.orch("stage", "run", "work", timeout=60)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(visible_partitions(project)) == ["item01", "item02", "item03"]
