"""Chaos: SIGKILL the orchestrator at random moments, rerun, and check the disk.

Twenty rounds of start-a-run, kill -9 at a random moment, then a final run to
completion. After every round no directory under data/ lacks a valid manifest,
and no agent was ever started for a partition that was already complete.
"""

from __future__ import annotations

import json
import os
import random
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
