"""`orch stage run` end to end: per-partition outcomes, retries, narrowing, limits, order.

Every test drives the real `orch` command against a project in tmp_path, with
the scripted fake agent (tests/fakes/agent.py) standing in for the model, and
asserts both the exit code and what landed on disk (DESIGN.md §4, §7).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# -- helpers (also imported by test_kill_and_resume.py and test_locks.py) --------------


def wait_until(predicate: Callable[[], Any], timeout_s: float = 15.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns a truthy value; fail after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)


def is_alive(pid: int) -> bool:
    """True if `pid` is a live process; an unreaped zombie counts as gone (it runs nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], timeout_s: float = 10.0) -> None:
    """Poll until none of `pids` is alive (e.g. a killed process group)."""
    wait_until(lambda: not any(is_alive(p) for p in pids), timeout_s, f"processes {pids} to exit")


@pytest.fixture(autouse=True)
def kill_leftover_agents(tmp_path: Path) -> Iterator[None]:
    """Safety net: never leave a hanging fake agent (or its grandchild) behind a failed test."""
    yield
    for pids in tmp_path.rglob("pids.txt"):
        for pid in (int(p) for p in pids.read_text().split()):
            cmdline = _cmdline(pid)
            if is_alive(pid) and (b"sleep(3600)" in cmdline or b"agent.py" in cmdline):
                os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def events(project: Any, kind: str | None = None) -> list[dict[str, Any]]:
    """Every event of every run of the project (oldest run first), optionally of one kind."""
    found: list[dict[str, Any]] = []
    for path in sorted((project.root / "wip" / "runs").glob("*/events.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                found.append(json.loads(line))
    return [e for e in found if kind is None or e["event"] == kind]


def invoked(project: Any) -> Counter[str]:
    """How many times the fake agent ran, per partition."""
    return Counter(i["partition"] for i in project.invocations())


def manifest(project: Any, partition: str) -> dict[str, Any]:
    """The `.orch/manifest.json` of a promoted partition of stage `work`."""
    return json.loads((project.root / "data/work" / partition / ".orch/manifest.json").read_text())


def archived_error(project: Any, partition: str, attempt: int) -> dict[str, Any]:
    """The `.orch/error.json` of an archived attempt of stage `work`."""
    path = project.root / "wip/attempts/work" / partition / str(attempt) / ".orch/error.json"
    return json.loads(path.read_text())


def stray_dirs(project: Any) -> list[str]:
    """Directories under data/work/ that are neither staging dirs nor hold a valid manifest."""
    base = project.root / "data" / "work"
    if not base.exists():
        return []
    bad = []
    for entry in sorted(os.listdir(base)):
        if entry.startswith("."):
            continue
        try:
            data = json.loads((base / entry / ".orch/manifest.json").read_text())
        except (OSError, ValueError):
            bad.append(entry)
            continue
        if data.get("status") != "complete" or data.get("partition") != entry:
            bad.append(entry)
    return bad


def staging_dirs(project: Any) -> list[str]:
    """Names of `.<id>.attempt-<n>` staging directories under data/work/."""
    base = project.root / "data" / "work"
    return sorted(n for n in os.listdir(base) if ".attempt-" in n) if base.exists() else []


# -- one run, every behaviour ------------------------------------------------------------

MIXED = {
    "item01": {"action": "succeed"},
    "item02": {"action": "fail", "exit": 1},
    "item03": {"action": "hang"},
    "item04": {"action": "partial"},
    "item05": {"action": "crash"},
    # EX_TEMPFAIL once, then success: only exit 75 is retried (retry_on below).
    "item06": [{"action": "fail", "exit": 75, "message": "try again later"}, {"action": "succeed"}],
}


def test_each_scripted_behaviour_ends_as_designed_in_one_run(make_project):
    project = make_project(n_items=6, timeout="1s", retries=2, retry_on=[75])
    project.script(MIXED)
    result = project.orch("stage", "run", "work")

    assert result.returncode == 3, result.stderr
    assert (
        "error: 4 of 6 partitions did not complete "
        "(work/item02, work/item03, work/item04, work/item05); see wip/notes.md"
    ) in result.stderr
    # One failure does not affect the others: both survivors are complete.
    assert manifest(project, "item01")["status"] == "complete"
    assert manifest(project, "item01")["attempt"] == 1
    transient = manifest(project, "item06")
    assert transient["status"] == "complete"
    assert [a["outcome"] for a in transient["attempts"]] == ["failed", "complete"]
    assert transient["attempt"] == 2
    assert archived_error(project, "item06", 1)["error"] == "exit code 75: try again later"
    assert (project.root / "data/work/item06/out.md").read_text().startswith("## Result")

    expected_errors = {
        "item02": "exit code 1: fake failure",
        "item03": "timeout after 1s",
        "item04": "output checks failed: out.md: 5 bytes, at least 10 expected (min_bytes)",
        "item05": "killed by signal 9 (SIGKILL): fake agent: crash for item05",
    }
    notes = (project.root / "wip/notes.md").read_text()
    failed_events = {e["partition"]: e for e in events(project, "failed")}
    assert sorted(failed_events) == sorted(expected_errors)
    for pid, error in expected_errors.items():
        assert not (project.root / "data/work" / pid).exists(), pid
        archive = project.root / "wip/attempts/work" / pid / "1"
        record = archived_error(project, pid, 1)
        assert record["error"] == error
        assert record["outcome"] == "failed"
        assert f"fake agent: {MIXED[pid]['action']} for {pid}" in (archive / ".orch/agent.log").read_text()
        assert (archive / ".orch/prompt.md").read_text().startswith(f"# Work on {pid}")
        assert not (project.root / "wip/attempts/work" / pid / "2").exists(), "not retryable"
        assert f"- **work / {pid}** failed after 1 attempt(s); last: {error} (attempt 1)." in notes
        assert failed_events[pid]["error"] == error
        assert failed_events[pid]["archive"] == f"wip/attempts/work/{pid}/1"

    # The timeout killed the hanging agent's whole process group, grandchild included.
    assert archived_error(project, "item03", 1)["error_class"] == "timeout"
    pids = (project.root / "wip/attempts/work/item03/1/pids.txt").read_text().split()
    wait_gone([int(p) for p in pids])
    assert archived_error(project, "item05", 1)["exit_code"] == -9

    assert [e["partition"] for e in events(project, "retried")] == ["item06"]
    assert invoked(project) == Counter(
        {"item01": 1, "item02": 1, "item03": 1, "item04": 1, "item05": 1, "item06": 2}
    )
    assert staging_dirs(project) == []
    assert stray_dirs(project) == []


def test_partial_output_with_exit_0_fails_the_expect_rules(make_project):
    project = make_project(n_items=1, expect=[{"file": "out.md", "headings": ["## Result"]}])
    project.script({"default": {"action": "partial"}})
    result = project.orch("stage", "run", "work")

    assert result.returncode == 3, result.stderr
    error = archived_error(project, "item01", 1)["error"]
    assert error == "output checks failed: out.md: missing heading '## Result' (headings)"
    assert archived_error(project, "item01", 1)["error_class"] == "checks"
    assert (project.root / "wip/attempts/work/item01/1/out.md").read_text() == "## Re"
    assert not (project.root / "data/work/item01").exists()


# -- narrowing and widening ------------------------------------------------------------------


def test_retry_failed_runs_only_the_failed_partitions(make_project):
    project = make_project(n_items=4)
    project.script({"item02": {"action": "fail"}, "item04": {"action": "fail", "exit": 2}})
    assert project.orch("stage", "run", "work").returncode == 3
    (project.root / "data/work/item01/out.md").unlink()  # incomplete now, but not failed
    project.script({"default": {"action": "succeed"}})

    result = project.orch("stage", "run", "work", "--retry-failed")

    assert invoked(project) == Counter({"item01": 1, "item02": 2, "item03": 1, "item04": 2})
    assert manifest(project, "item02")["attempt"] == 2
    assert manifest(project, "item04")["attempt"] == 2
    assert (project.root / "wip/attempts/work/item02/1/.orch/error.json").exists()
    assert not (project.root / "data/work/item01/out.md").exists()
    assert result.returncode == 4, result.stdout + result.stderr  # item01 still incomplete
    assert "error: barrier not met for work" in result.stderr


def test_only_runs_the_named_partitions(make_project):
    project = make_project(n_items=4)
    result = project.orch("stage", "run", "work", "--only", "item02,item04")

    assert invoked(project) == Counter({"item02": 1, "item04": 1})
    assert sorted(os.listdir(project.root / "data/work")) == ["item02", "item04"]
    assert result.returncode == 0, result.stderr  # the barrier is checked within --only
    assert "2 completed now · 0 up to date of 2" in result.stdout
    whole = project.orch("barrier", "work")
    assert whole.returncode == 4
    assert "error: barrier work: 2 of 4 partitions complete" in whole.stderr

    unknown = project.orch("stage", "run", "work", "--only", "item2")
    assert unknown.returncode == 2
    assert "error: --only: no partition 'item2' in stage(s) work" in unknown.stderr


def test_force_reruns_complete_partitions_and_keeps_old_outputs(make_project):
    project = make_project(n_items=2)
    project.orch("stage", "run", "work", check=True)
    first = manifest(project, "item01")
    project.script({"default": {"action": "succeed", "files": {"out.md": "## Result\n\nsecond run\n"}}})

    project.orch("stage", "run", "work", "--force", check=True)

    assert invoked(project) == Counter({"item01": 2, "item02": 2})
    for pid in ("item01", "item02"):
        old = project.root / "wip/attempts/work" / pid / "1"
        assert (old / "out.md").read_text() == f"## Result\n\nFake agent output for {pid}.\n"
        assert json.loads((old / ".orch/manifest.json").read_text())["attempt"] == 1
        assert manifest(project, pid)["attempt"] == 2
        assert (project.root / "data/work" / pid / "out.md").read_text() == "## Result\n\nsecond run\n"
    assert json.loads((project.root / "wip/attempts/work/item01/1/.orch/manifest.json").read_text()) == first


def test_dry_run_writes_nothing(make_project):
    project = make_project(n_items=3)
    before = project.tree()
    result = project.orch("stage", "run", "work", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert "work (dry run: nothing written)" in result.stdout
    assert result.stdout.count("missing") >= 3
    assert project.tree() == before
    assert not (project.root / "data").exists()
    assert not (project.root / "wip").exists()
    assert project.invocations() == []


# -- retry policy -----------------------------------------------------------------------------


def test_retry_on_timeout_does_not_retry_an_exit_1_failure(make_project):
    project = make_project(n_items=1, retries=2, retry_on=["timeout"])
    project.script({"default": {"action": "fail", "exit": 1}})
    result = project.orch("stage", "run", "work")

    assert result.returncode == 3
    assert invoked(project) == Counter({"item01": 1})
    assert events(project, "retried") == []
    assert os.listdir(project.root / "wip/attempts/work/item01") == ["1"]
    assert (
        "failed after 1 attempt(s); last: exit code 1: fake failure"
        in (project.root / "wip/notes.md").read_text()
    )


def test_retries_exhausted_archive_every_attempt(make_project):
    project = make_project(n_items=1, retries=2)
    project.script({"default": {"action": "fail", "exit": 1}})
    result = project.orch("stage", "run", "work")

    assert result.returncode == 3
    assert invoked(project) == Counter({"item01": 3})
    assert sorted(os.listdir(project.root / "wip/attempts/work/item01")) == ["1", "2", "3"]
    assert [e["attempt"] for e in events(project, "retried")] == [1, 2]
    assert (
        "failed after 3 attempt(s); last: exit code 1: fake failure (attempt 3)"
        in (project.root / "wip/notes.md").read_text()
    )


# -- limits --------------------------------------------------------------------------------------


def test_max_parallel_1_runs_one_agent_at_a_time(make_project):
    project = make_project(n_items=3, max_parallel=8)
    project.script({"default": {"action": "sleep", "seconds": 0.2}})
    project.orch("stage", "run", "work", "--max-parallel", "1", check=True)

    started = {e["partition"]: e["ts"] for e in events(project, "started")}
    began = {i["partition"]: i["ts"] for i in project.invocations()}
    exits = {e["partition"]: e["ts"] for e in _exits(project)}
    order = sorted(started, key=started.get)
    assert order == ["item01", "item02", "item03"]
    assert sorted(began, key=began.get) == order
    for before, after in itertools.pairwise(order):
        # The next attempt starts (event, then agent) only after the previous agent exited.
        assert started[after] >= exits[before], (before, after)
        assert began[after] >= exits[before], (before, after)
    for pid in order:
        assert exits[pid] - began[pid] >= 0.2  # each agent really slept while the others waited


def _exits(project: Any) -> list[dict[str, Any]]:
    path = project.log_path.with_name(project.log_path.name + ".exits")
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_halt_on_stops_starting_partitions(make_project):
    project = make_project(n_items=4)
    project.script({"default": {"action": "fail"}})
    result = project.orch("stage", "run", "work", "--max-parallel", "1", "--halt-on", "50%")

    assert result.returncode == 3
    assert invoked(project) == Counter({"item01": 1, "item02": 1})
    assert [e["reason"] for e in events(project, "halted")] == [
        "halted: 2 of 4 partitions failed (--halt-on 50%)"
    ]
    assert "2 failed" in result.stdout and "2 halted" in result.stdout
    assert sorted(os.listdir(project.root / "wip/attempts/work")) == ["item01", "item02"]
    assert not (project.root / "data/work").exists() or os.listdir(project.root / "data/work") == []


# -- order ------------------------------------------------------------------------------------------


def test_partitions_start_in_priority_then_natural_id_order(make_project):
    project = make_project(n_items=1)
    project.write(
        "references/items.yaml",
        "items:\n"
        "  - {ITEM_ID: a10}\n"
        "  - {ITEM_ID: a2}\n"
        "  - {ITEM_ID: a3, priority: -1}\n"
        "  - {ITEM_ID: a1}\n"
        "  - {ITEM_ID: b1, priority: 5}\n",
    )
    project.orch("stage", "run", "work", "--max-parallel", "1", check=True)

    expected = ["b1", "a1", "a2", "a10", "a3"]
    assert [i["partition"] for i in project.invocations()] == expected
    assert [e["partition"] for e in events(project, "started")] == expected


@pytest.mark.parametrize("jobs", ["1", "3"])
def test_start_order_is_stable_at_any_parallelism(make_project, jobs):
    project = make_project(n_items=6)
    project.orch("stage", "run", "work", "--max-parallel", jobs, check=True)
    expected = [f"item{i:02d}" for i in range(1, 7)]
    assert [e["partition"] for e in events(project, "started")] == expected
