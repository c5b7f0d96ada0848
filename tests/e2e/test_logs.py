"""`orch logs STAGE PARTITION [-f]` and `orch show` pointing at the live log (issue 13, item 1)."""

from __future__ import annotations

import signal
import time

from tests.e2e.test_execution import (
    kill_leftover_agents,  # noqa: F401 - autouse fixture
    staging_dirs,
    wait_until,
)


def test_logs_of_a_finished_partition_prints_the_promoted_log(make_project):
    project = make_project(n_items=1)
    project.orch("run", check=True)
    result = project.orch("logs", "work", "item01", check=True)
    assert result.stdout == "fake agent: succeed for item01\n"
    assert "data/work/item01/.orch/agent.log (attempt 1, promoted)" in result.stderr


def test_logs_of_a_failed_partition_prints_the_archived_attempt(make_project):
    project = make_project(n_items=1)
    project.script({"default": {"action": "fail", "message": "model refused"}})
    assert project.orch("run").returncode == 3
    result = project.orch("logs", "work", "item01", check=True)
    assert "fake agent: fail for item01" in result.stdout
    assert "model refused" in result.stdout
    assert "wip/attempts/work/item01/1/.orch/agent.log (attempt 1, archived)" in result.stderr


def test_logs_of_a_partition_that_never_ran_is_a_usage_error(make_project):
    project = make_project(n_items=1)
    result = project.orch("logs", "work", "item01")
    assert result.returncode == 2
    assert "error: work/item01: no agent log yet (no attempt has run)" in result.stderr


def test_logs_follow_reads_the_live_log_until_the_attempt_ends(make_project):
    project = make_project(n_items=1)
    project.script({"default": {"action": "sleep", "seconds": 2.5}})
    run = project.popen("run")
    try:
        wait_until(
            lambda: any(
                (project.root / "data/work" / d / ".orch/agent.log").exists() for d in staging_dirs(project)
            ),
            what="the live agent log",
        )
        shown = project.orch("show", "work", "item01", check=True)
        assert "live log   data/work/.item01.attempt-1/.orch/agent.log (running;" in shown.stdout
        started = time.monotonic()
        follow = project.orch("logs", "-f", "work", "item01", check=True)
        waited_s = time.monotonic() - started
        assert "(attempt 1, live)" in follow.stderr
        assert follow.stdout == "fake agent: sleep for item01\n"
        # it followed until the attempt ended (promoted), not just read what was there
        assert (project.root / "data/work/item01/out.md").exists()
        assert waited_s > 0.5
        assert run.wait(timeout=30) == 0
    finally:
        if run.poll() is None:
            run.kill()
        run.communicate()


def test_logs_follow_ends_quietly_with_130_on_ctrl_c(make_project):
    project = make_project(n_items=1)
    project.script({"default": {"action": "hang"}})
    run = project.popen("run")
    follow = None
    try:
        wait_until(project.invocations, what="the hanging agent")
        follow = project.popen("logs", "-f", "work", "item01")
        assert follow.stdout is not None
        assert follow.stdout.readline() == "fake agent: hang for item01\n"
        follow.send_signal(signal.SIGINT)
        _, stderr = follow.communicate(timeout=15)
        assert follow.returncode == 130
        assert "error" not in stderr and "Traceback" not in stderr
    finally:
        for proc in (follow, run):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.communicate()
