"""A run where one partition in five is hostile (issue 10, "Done when").

Thirty partitions of one stage; six of them (20%) are scripted as a mix of
hostile agents: a file name that is not UTF-8, `.orch` replaced by a link
leaving the project, a daemon that outlives a failing agent, an agent that
hangs past the stage timeout, a directory tree too deep to check, and a
10 GiB sparse output. The run must end with every normal partition complete,
every hostile one failed with its error class, exit 3, nothing outside the
project touched, no staging directory left and no process left running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project
from tests.e2e.test_execution import is_alive

FILES = {"out.md": "## Result\n\nFake output for {partition}.\n", "data.json": "{{}}"}

#: Partition -> (scripted step, expected error class).
HOSTILE: dict[str, tuple[dict[str, Any], str]] = {
    "item03": ({"action": "nonutf8_name"}, "checks"),
    "item08": ({"action": "symlink_meta", "what": ".orch"}, "checks"),
    "item13": ({"action": "daemon", "how": "setsid", "then": "fail"}, "exit"),
    "item18": ({"action": "hang"}, "timeout"),
    "item23": ({"action": "deep_tree", "depth": 300}, "checks"),
    "item28": ({"action": "huge_file", "name": "data.json"}, "checks"),
}


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A directory beside the project that no run may change."""
    where = tmp_path / "outside"
    where.mkdir()
    (where / "keep.txt").write_text("keep me\n")
    yield where
    assert sorted(os.listdir(where)) == ["keep.txt"]
    assert (where / "keep.txt").read_text() == "keep me\n"


@pytest.fixture
def cleanup(tmp_path: Path) -> Iterator[None]:
    """Safety net for a failed test: kill leftover writers, remove the deep tree."""
    yield
    for path in tmp_path.rglob("*.daemons"):
        for pid in (int(p) for p in path.read_text().split()):
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)
    subprocess.run(["rm", "-rf", str(tmp_path / "proj")], check=False)


def test_one_partition_in_five_hostile_fails_alone_and_leaves_nothing_running(
    make_project: Callable[..., Project], outside: Path, cleanup: None
) -> None:
    expect = [
        {"file": "out.md", "min_bytes": 10, "headings": ["## Result"]},
        {"file": "data.json", "json": True},
    ]
    project = make_project(n_items=30, expect=expect, timeout="3s", max_parallel=8)
    script: dict[str, Any] = {"default": {"action": "succeed", "files": FILES}}
    for partition, (step, _) in HOSTILE.items():
        script[partition] = {**step, "files": FILES}
    script["item08"]["target"] = str(outside)
    project.script(script)

    result = project.orch("stage", "run", "work", timeout=240)

    assert result.returncode == 3, result.stderr
    assert f"{len(HOSTILE)} of 30 partitions did not complete" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    base = project.root / "data" / "work"
    visible = sorted(n for n in os.listdir(base) if not n.startswith("."))
    normal = [f"item{i:02d}" for i in range(1, 31) if f"item{i:02d}" not in HOSTILE]
    assert visible == normal
    for name in visible:
        manifest = json.loads((base / name / ".orch" / "manifest.json").read_text())
        assert manifest["status"] == "complete"
    assert not [n for n in os.listdir(base) if n.startswith(".")], "a staging directory was left"
    for partition, (_, error_class) in HOSTILE.items():
        attempts = project.root / "wip" / "attempts" / "work" / partition
        (attempt,) = os.listdir(attempts)
        error = json.loads((attempts / attempt / ".orch" / "error.json").read_text())
        assert error["error_class"] == error_class, (partition, error)
    daemons = Path(f"{project.log_path}.daemons")
    assert daemons.exists(), "the daemon never started"
    assert not [p for p in map(int, daemons.read_text().split()) if is_alive(p)], "a daemon outlived its run"
    assert not [i["pid"] for i in project.invocations() if is_alive(i["pid"])], "an agent outlived its run"
    status = json.loads(project.orch("status", "work", "--json", check=True).stdout)
    by_id = {row["id"]: row["status"] for row in status["partitions"]}
    assert {p: by_id[p] for p in HOSTILE} == dict.fromkeys(HOSTILE, "failed")
