"""Per-partition locks: concurrent `orch stage run` processes never run a partition twice.

Locks are flock()s on `wip/locks/<stage>/<partition>.lock` (orch.store.locks); the
kernel drops them when the holder dies, so a SIGKILLed holder blocks nothing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter

from tests.e2e.test_execution import events, invoked, manifest, staging_dirs, wait_until

ALL6 = Counter({f"item{i:02d}": 1 for i in range(1, 7)})


def test_second_run_skips_partitions_held_by_a_running_one(make_project):
    project = make_project(n_items=6)
    project.script({"default": {"action": "sleep", "seconds": 3.0}})
    first = project.popen("stage", "run", "work")
    wait_until(lambda: len(staging_dirs(project)) == 6, what="the first run to start all 6 partitions")

    second = project.orch("stage", "run", "work")
    _first_out, first_err = first.communicate(timeout=30)

    assert first.returncode == 0, first_err
    assert second.returncode == 4, second.stderr
    assert "0 completed now · 0 up to date · 6 held of 6" in second.stdout
    assert "error: barrier not met for work (6 partition(s) held by another orch run)" in second.stderr
    assert invoked(project) == ALL6
    # Run ids end with the orch pid: the second run's events are the other run's.
    skipped = [e for e in events(project, "skipped") if not e["run_id"].endswith(f"-{first.pid}")]
    assert sorted(e["partition"] for e in skipped) == sorted(ALL6)
    reasons = {e["reason"] for e in skipped}
    assert reasons == {"held by another orch process; skipped (rerun once it finishes, or --wait-locks)"}
    assert "nothing to do: all 6 partition(s) up to date" in project.orch("stage", "run", "work").stdout


def test_two_runs_started_together_run_each_partition_once(make_project):
    project = make_project(n_items=6)
    project.script({"default": {"action": "sleep", "seconds": 0.5}})
    runs = [project.popen("stage", "run", "work") for _ in range(2)]
    results = [(run.communicate(timeout=30), run.returncode) for run in runs]

    assert invoked(project) == ALL6
    for (out, err), code in results:
        assert code in (0, 4), err  # 4: barrier not met yet when it finished (the other still ran)
        held = [line for line in out.splitlines() if " held" in line and " of 6 in " in line]
        assert code == 0 or held, out
    promoted = Counter(e["partition"] for e in events(project, "promoted"))
    assert promoted == ALL6
    assert all(manifest(project, p)["attempt"] == 1 for p in ALL6)


def test_lock_of_a_sigkilled_holder_does_not_block_the_next_run(make_project):
    project = make_project(n_items=2)
    lock = project.root / "wip/locks/work/item01.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import filelock, sys, time\n"
            "lock = filelock.FileLock(sys.argv[1], is_singleton=False)\n"
            "lock.acquire()\n"
            "print('locked', flush=True)\n"
            "time.sleep(3600)\n",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        blocked = project.orch("stage", "run", "work")
        assert blocked.returncode == 4, blocked.stderr
        assert "1 completed now · 0 up to date · 1 held of 2" in blocked.stdout
        assert invoked(project) == Counter({"item02": 1})
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=10)

    assert lock.exists()  # the file stays; the kernel dropped the flock with its holder
    project.orch("stage", "run", "work", check=True)
    assert invoked(project) == Counter({"item01": 1, "item02": 1})
    assert manifest(project, "item01")["status"] == "complete"


def test_waiting_for_a_held_partition_finds_it_complete(make_project):
    project = make_project(n_items=3)
    project.script({"default": {"action": "sleep", "seconds": 1.0}})
    first = project.popen("stage", "run", "work", "--max-parallel", "1")
    # item01 runs; item02 is prepared (locked) ahead of the first run's only slot and
    # item03 waits unlocked, so the second run may claim item03 first.
    wait_until(lambda: ".item01.attempt-1" in staging_dirs(project) or None, what="the first run to start")

    second = project.orch("stage", "run", "work", "--wait-locks", "20")
    out, _ = first.communicate(timeout=30)

    assert invoked(project) == Counter({"item01": 1, "item02": 1, "item03": 1})
    assert second.returncode == 0, second.stderr
    # the first run either found them complete, or skipped them as held while the
    # second was still running them (then its barrier is honestly not met)
    assert first.returncode == 0 or (first.returncode == 4 and " held" in out)
    assert not (project.root / "wip/attempts").exists()


def test_wait_locks_also_waits_for_a_partition_that_is_running(make_project):
    project = make_project(n_items=1)
    project.script({"default": {"action": "sleep", "seconds": 1.0}})
    first = project.popen("stage", "run", "work")
    wait_until(lambda: staging_dirs(project) == [".item01.attempt-1"], what="the first run to start item01")

    second = project.orch("stage", "run", "work", "--wait-locks", "20")
    first.communicate(timeout=30)

    assert invoked(project) == Counter({"item01": 1})
    assert "nothing to do: all 1 partition(s) up to date" in second.stdout, second.stdout
    assert second.returncode == 0


def test_ctrl_c_while_waiting_for_a_lock_exits_promptly(make_project):
    project = make_project(n_items=2)
    project.script({"default": {"action": "sleep", "seconds": 3.0}})
    first = project.popen("stage", "run", "work", "--max-parallel", "1")
    # item02 is locked by the first run, prepared ahead of its only slot: the second run waits for it.
    wait_until(
        lambda: {".item01.attempt-1", ".item02.attempt-1"} <= set(staging_dirs(project)) or None,
        what="the first run to start item01 and prepare item02",
    )
    second = project.popen("stage", "run", "work", "--only", "item02", "--wait-locks", "3")
    # Its first event; the lock wait follows at once, with no event of its own.
    wait_until(lambda: len(events(project, "run_started")) == 2, what="the second run to start")
    try:
        sent = time.monotonic()
        second.send_signal(signal.SIGINT)
        second.communicate(timeout=30)
        waited = time.monotonic() - sent
    finally:
        first.kill()
        first.communicate(timeout=10)

    assert second.returncode == 130
    assert waited < 1.5, f"SIGINT took {waited:.1f}s to stop a run waiting for a lock"


def test_status_during_a_run_tells_running_from_prepared_and_waiting(make_project):
    # --max-parallel 1: item02 is locked and prepared ahead while item01's agent runs
    project = make_project(n_items=3)
    project.script({"item01": {"action": "sleep", "seconds": 3.0}})
    run = project.popen("stage", "run", "work", "--max-parallel", "1")
    wait_until(
        lambda: {".item01.attempt-1", ".item02.attempt-1"} <= set(staging_dirs(project)) or None,
        what="item01 to run and item02 to be prepared",
    )

    status = project.orch("status", "work", "--json", check=True)
    run.kill()
    run.communicate(timeout=10)

    rows = {row["id"]: row for row in json.loads(status.stdout)["partitions"]}
    assert [rows[p]["status"] for p in ("item01", "item02", "item03")] == ["running", "queued", "missing"]
    assert rows["item01"]["reason"] == "running in another orch process"
    assert rows["item02"]["reason"] == (
        "queued in another orch process (locked and prepared; its agent has not started)"
    )
