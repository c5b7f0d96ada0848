"""Chaos: SIGKILL the orchestrator at random moments, rerun, and check the disk.

Twenty rounds of start-a-run, kill -9 at a random moment, then a final run to
completion. After every round no directory under data/ lacks a valid manifest,
and no agent was ever started for a partition that was already complete.
A variant deletes wip/locks again and again while further runs start: no
partition may run twice.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time

import pytest

ROUNDS = 20
ITEMS = 40


def complete_partitions(project) -> set[str]:
    """Partition ids whose directory holds a valid, complete manifest."""
    base = project.root / "data/work"
    done = set()
    if base.exists():
        for entry in base.iterdir():
            if entry.name.startswith("."):
                continue  # a staging directory
            manifest = json.loads((entry / ".orch/manifest.json").read_text())
            assert manifest["status"] == "complete", entry
            done.add(entry.name)
    return done


@pytest.mark.chaos
def test_kill_9_at_random_moments_never_corrupts_or_reruns_complete_work(make_project):
    project = make_project(n_items=ITEMS, max_parallel=4, retries=1)
    rng = random.Random(20261125)
    project.script({"default": {"action": "sleep", "seconds": 0.1}})
    partial_rounds = 0
    for _ in range(ROUNDS):
        before = complete_partitions(project)
        seen = len(project.invocations())
        proc = project.popen("stage", "run", "work")
        # kill once a random number of agents started (plus a random delay), so
        # kills land mid-run whatever the machine's speed
        target = seen + rng.randint(0, 6)
        deadline = time.monotonic() + 10
        while len(project.invocations()) < target and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never started its agents"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.15))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        after = complete_partitions(project)  # asserts every directory has a valid manifest
        assert before <= after
        partial_rounds += before < after < {f"item{i:02d}" for i in range(1, ITEMS + 1)}
        started = {i["partition"] for i in project.invocations()[seen:]}
        assert not started & before, f"complete partitions were run again: {started & before}"

    assert partial_rounds >= 5, "kills did not land mid-run: the test proves nothing"
    before = complete_partitions(project)
    seen = len(project.invocations())
    final = project.orch("stage", "run", "work")
    assert final.returncode == 0, final.stderr
    assert complete_partitions(project) == {f"item{i:02d}" for i in range(1, ITEMS + 1)}
    rerun = {i["partition"] for i in project.invocations()[seen:]}
    assert not rerun & before
    leftovers = [p.name for p in (project.root / "data/work").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def _invocations_per_partition(project) -> dict[str, int]:
    counts: dict[str, int] = {}
    for call in project.invocations():
        counts[call["partition"]] = counts.get(call["partition"], 0) + 1
    return counts


@pytest.mark.chaos
def test_deleting_wip_locks_mid_run_never_lets_a_second_run_take_a_partition(make_project):
    """Item 11 of issue 10: the lock files vanish (rm -rf wip/locks) while runs hold them."""
    project = make_project(n_items=ITEMS // 2, max_parallel=4)
    rng = random.Random(20261130)
    project.script({"default": {"action": "sleep", "seconds": 0.3}})
    first = project.popen("stage", "run", "work")
    runs = [first]
    deadline = time.monotonic() + 60
    while first.poll() is None and time.monotonic() < deadline:
        if len(project.invocations()) >= 2:
            shutil.rmtree(project.root / "wip/locks", ignore_errors=True)
            if len(runs) < 4:  # a new run each time, while the first still holds partitions
                runs.append(project.popen("stage", "run", "work"))
        time.sleep(rng.uniform(0.05, 0.4))
    errors = [proc.communicate(timeout=60)[1] for proc in runs]

    twice = {p: n for p, n in _invocations_per_partition(project).items() if n > 1}
    assert twice == {}, f"partitions ran more than once: {twice}"
    assert len(runs) > 1, "no second run was started while the first ran"
    lost = [e for e in events_of(project) if e["event"] == "lock_file_lost"]
    assert lost, "no run noticed its lock file was deleted"
    assert all(e["outcome"] == "restored" for e in lost), lost
    assert any("warning: work/" in err and "was deleted during the run" in err for err in errors)
    final = project.orch("stage", "run", "work")
    assert final.returncode == 0, final.stderr
    assert complete_partitions(project) == {f"item{i:02d}" for i in range(1, ITEMS // 2 + 1)}
    assert max(_invocations_per_partition(project).values()) == 1


def events_of(project) -> list[dict]:
    """Every event of every run of the project."""
    found = []
    for path in sorted((project.root / "wip/runs").glob("*/events.jsonl")):
        found.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return found
