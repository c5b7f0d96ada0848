"""Interrupting and killing `orch stage run`, then resuming (DESIGN.md §4, README "Resume").

Ctrl-C / SIGTERM: exit 130, the agents' process groups are gone, staging
directories are archived as interrupted. kill -9: at every moment only complete
partitions and staging directories exist, no agent outlives orch, and the
rerun finishes the rest without re-running anything complete.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from orch.executors.processes import REAPER_MARK
from tests.e2e.test_execution import (
    events,
    invoked,
    kill_leftover_agents,  # noqa: F401 - autouse fixture
    manifest,
    staging_dirs,
    stray_dirs,
    wait_gone,
    wait_until,
)

INTERRUPTED = "interrupted (Ctrl-C or SIGTERM); the agent was terminated"


def running_pids(project, count: int) -> dict[str, list[int]]:
    """Wait until `count` hanging agents wrote pids.txt in their staging dirs; return them."""

    def ready() -> dict[str, list[int]] | None:
        found = {}
        for name in staging_dirs(project):
            text = _read(project.root / "data/work" / name / "pids.txt")
            if text.endswith("\n"):
                found[name] = [int(p) for p in text.split()]
        return found if len(found) == count else None

    return wait_until(ready, what=f"{count} hanging agents")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_terminates_agents_and_archives_staging(make_project, sig):
    project = make_project(n_items=3)
    project.script({"default": {"action": "hang"}})
    proc = project.popen("stage", "run", "work", "--max-parallel", "2")
    pids = running_pids(project, 2)

    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=30)

    assert proc.returncode == 130, err
    assert "error: run interrupted; running agents were terminated and recorded" in err
    wait_gone([p for group in pids.values() for p in group])
    assert staging_dirs(project) == []
    assert stray_dirs(project) == []
    assert not (project.root / "data/work").exists() or os.listdir(project.root / "data/work") == []
    for name in pids:  # ".item01.attempt-1"
        pid = name[1:].split(".attempt-")[0]
        archive = project.root / "wip/attempts/work" / pid / "1"
        error = json.loads((archive / ".orch/error.json").read_text())
        assert error == {"n": 1, "outcome": "interrupted", "error_class": "interrupted", "error": INTERRUPTED}
        assert (archive / "pids.txt").exists()
        assert "fake agent: hang" in (archive / ".orch/agent.log").read_text()
    assert sorted(os.listdir(project.root / "wip/attempts/work")) == ["item01", "item02"]  # item03 queued
    assert len(events(project, "interrupt_requested")) == 1
    assert sorted(e["partition"] for e in events(project, "interrupted")) == ["item01", "item02", "item03"]

    project.script({"default": {"action": "succeed"}})
    project.orch("stage", "run", "work", check=True)
    assert [manifest(project, p)["attempt"] for p in ("item01", "item02", "item03")] == [2, 2, 1]


def test_sigkill_orch_leaves_no_orphaned_agent(make_project):
    project = make_project(n_items=2)
    project.script({"default": {"action": "hang"}})
    proc = project.popen("stage", "run", "work")
    pids = running_pids(project, 2)
    agents = [group[0] for group in pids.values()]

    proc.kill()
    proc.communicate(timeout=10)

    # orch's reaper SIGKILLs each agent, and what it started, when orch dies.
    wait_gone(agents)
    assert sorted(staging_dirs(project)) == [".item01.attempt-1", ".item02.attempt-1"]
    assert stray_dirs(project) == []


def test_kill_9_leaves_only_complete_partitions_and_staging_dirs(make_project):
    project = make_project(n_items=2)
    project.script({"item01": {"action": "hang"}})
    proc = project.popen("stage", "run", "work")
    wait_until(lambda: _complete(project) == {"item02"}, what="item02 to complete")
    pids = running_pids(project, 1)
    proc.kill()
    proc.communicate(timeout=10)

    wait_gone([pids[".item01.attempt-1"][0]])
    assert sorted(os.listdir(project.root / "data/work")) == [".item01.attempt-1", "item02"]
    assert manifest(project, "item02")["status"] == "complete"
    assert (project.root / "wip/locks/work/item01.lock").exists()  # a dead holder's lock file stays
    status = project.orch("status", "work", "--json")
    rows = {r["id"]: r["status"] for r in json.loads(status.stdout)["partitions"]}
    assert rows == {"item01": "missing", "item02": "complete"}


def test_first_rerun_after_kill_9_redoes_the_interrupted_partition(make_project):
    project = make_project(n_items=2)
    project.script({"item01": {"action": "hang"}})
    proc = project.popen("stage", "run", "work")
    wait_until(lambda: _complete(project) == {"item02"}, what="item02 to complete")
    running_pids(project, 1)
    proc.kill()
    proc.communicate(timeout=10)
    project.script({"default": {"action": "succeed"}})

    rerun = project.orch("stage", "run", "work")

    assert invoked(project) == Counter({"item01": 2, "item02": 1})
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "1 completed now · 1 up to date of 2" in rerun.stdout
    assert manifest(project, "item01")["attempt"] == 2
    cleaned = json.loads((project.root / "wip/attempts/work/item01/1/.orch/error.json").read_text())
    assert cleaned["error"].startswith("staging directory left by a run that died (cleaned by run ")


def test_after_kill_9_a_partition_prepared_but_never_started_is_not_an_attempt(make_project):
    # --max-parallel 1: item02 is prepared (locked, staging dir and prompt written)
    # while item01 runs, and waits for the slot
    project = make_project(n_items=2)
    project.script({"item01": {"action": "hang"}})
    proc = project.popen("stage", "run", "work", "--max-parallel", "1")
    running_pids(project, 1)
    wait_until(lambda: ".item02.attempt-1" in staging_dirs(project) or None, what="item02 to be prepared")
    proc.kill()
    proc.communicate(timeout=10)
    project.script({"default": {"action": "succeed"}})

    project.orch("stage", "run", "work", check=True)

    assert invoked(project) == Counter({"item01": 2, "item02": 1})
    assert [manifest(project, p)["attempt"] for p in ("item01", "item02")] == [2, 1]
    assert sorted(os.listdir(project.root / "wip/attempts/work")) == ["item01"]


def agents_working_in(directory: Path) -> list[int]:
    """Pids of processes whose working directory lies in `directory` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if cwd.startswith(f"{directory}/"):
                found.append(int(entry))
    return found


def _observe(project, seen: list[list[str]]) -> None:
    """One observation: no partition directory without a valid manifest."""
    seen.append(stray_dirs(project))


def _complete(project) -> set[str]:
    base = project.root / "data/work"
    if not base.exists():
        return set()
    return {
        name
        for name in os.listdir(base)
        if not name.startswith(".") and (base / name / ".orch/manifest.json").exists()
    }


@pytest.mark.chaos
def test_kill_9_rounds_then_rerun_finish_without_redoing_complete_work(make_project):
    n = 10
    everything = {f"item{i:02d}" for i in range(1, n + 1)}
    project = make_project(n_items=n, max_parallel=3)
    # 0.3-1.0 s per agent, varied so partitions finish out of step.
    project.script(
        {
            f"item{i:02d}": {"action": "sleep", "seconds": 0.3 + 0.7 * ((i * 7) % 10) / 9}
            for i in range(1, n + 1)
        }
    )
    observations: list[list[str]] = []
    for round_ in range(2):
        complete_before = _complete(project)
        proc = project.popen("stage", "run", "work")
        target = len(complete_before) + 2

        def progressed(target: int = target) -> bool:
            _observe(project, observations)
            return len(_complete(project)) >= target and bool(staging_dirs(project))

        wait_until(progressed, what=f"round {round_}: {target} complete partitions")
        proc.kill()
        proc.communicate(timeout=10)
        _observe(project, observations)
        # No agent outlives its orchestrator (its reaper). Sleeping agents would also end
        # on their own: test_sigkill_orch_leaves_no_orphaned_agent is the strict version.
        wait_gone([i["pid"] for i in project.invocations()])
        # an agent started just before the kill may not have logged itself yet: wait
        # for every process working in the project's data/ to be gone, so none logs late
        wait_until(lambda: not agents_working_in(project.root / "data"), what="the killed run's agents")
        assert staging_dirs(project), "killed mid-attempt: staging dirs are left for the next run"
        assert complete_before <= _complete(project) < everything

    complete_before, calls_before = _complete(project), invoked(project)
    proc = project.popen("stage", "run", "work")
    wait_until(lambda: _observe(project, observations) or proc.poll() is not None, what="the rerun")
    _out, err = proc.communicate()

    assert proc.returncode == 0, err
    calls = invoked(project) - calls_before
    assert not set(calls) & complete_before, f"complete partitions ran again: {calls}"
    assert calls == Counter(dict.fromkeys(everything - complete_before, 1))
    assert _complete(project) == everything
    assert staging_dirs(project) == []
    assert len(observations) > 10
    assert all(not bad for bad in observations), [bad for bad in observations if bad]
    cleaned = events(project, "cleaned")
    assert cleaned, "a rerun archived the dead runs' staging directories"
    for event in cleaned:
        attempt = project.root / "wip/attempts/work" / event["partition"] / str(event["attempt"])
        if event.get("started") is False:  # prepared ahead, no agent ran: removed, not archived
            continue  # (its number is free again; test_after_kill_9_a_partition_prepared_...)
        error = json.loads((attempt / ".orch/error.json").read_text())
        assert error["outcome"] == "interrupted"
        assert error["error"].startswith("staging directory left by a run that died (cleaned by run ")


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def reaper_pids() -> list[int]:
    """Pids of running orch reapers (their argv ends with the reaper mark)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if REAPER_MARK.encode() in argv:
                found.append(int(name))
    return found


def test_kill_9_of_orch_takes_the_agents_children_too(make_project):
    project = make_project(n_items=1)
    project.script({"default": {"action": "hang"}})
    proc = project.popen("stage", "run", "work")
    agent, grandchild = running_pids(project, 1)[".item01.attempt-1"]
    proc.kill()
    proc.communicate(timeout=10)
    wait_gone([agent, grandchild])


def test_rerun_after_kill_9_stops_orphans_when_the_reaper_died_too(make_project):
    project = make_project(n_items=1)
    project.script({"default": {"action": "hang"}})
    before = set(reaper_pids())
    proc = project.popen("stage", "run", "work")
    agent, grandchild = running_pids(project, 1)[".item01.attempt-1"]
    # this run's reaper: other test runs on the machine have their own
    reapers = {p for p in set(reaper_pids()) - before if _ppid(p) == proc.pid}
    assert len(reapers) == 1
    for pid in reapers:  # the worst case: the watchdog is gone as well
        os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.communicate(timeout=10)
    os.kill(agent, 0)  # both still alive: nothing watched them
    os.kill(grandchild, 0)

    project.script({"default": {"action": "succeed"}})
    project.orch("stage", "run", "work", check=True)

    wait_gone([agent, grandchild])  # the run that cleaned the staging dir stopped them
    events = [
        json.loads(line)
        for run in (project.root / "wip/runs").iterdir()
        for line in (run / "events.jsonl").read_text().splitlines()
    ]
    assert [sorted(e["pids"]) for e in events if e["event"] == "orphans_killed"] == [
        sorted([agent, grandchild])
    ]
