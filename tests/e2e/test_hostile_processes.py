"""No process outlives its attempt, and a changed promoted output is `modified` (issue 10, item 4).

The fake agent's `daemon` action leaves a writer behind that appends to out.md
every 20 ms: started with setsid, double-forked, or with its environment
cleared and its cwd moved to /. Whatever the attempt's end (success, failure,
timeout, Ctrl-C, kill -9 of orch and a rerun), the writer must be gone, and a
promoted out.md must still match its manifest byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import default_config
from tests.e2e.test_execution import (
    events,
    is_alive,
    kill_leftover_agents,  # noqa: F401 - autouse fixture
    manifest,
    wait_gone,
    wait_until,
)
from tests.e2e.test_kill_and_resume import reaper_pids

HOW = ("setsid", "double_fork", "env_cleared")


def reapers_of(orch_pid: int) -> list[int]:
    """The reaper of one orch process (other runs on the machine have their own)."""
    return [
        p
        for p in reaper_pids()
        if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(orch_pid)
    ]


def daemon_pids(project) -> list[int]:
    path = Path(f"{project.log_path}.daemons")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.fixture(autouse=True)
def kill_leftover_daemons(tmp_path: Path):
    """Safety net: never leave a writer behind a failed test."""
    yield
    for path in tmp_path.rglob("*.daemons"):
        for pid in (int(p) for p in path.read_text().split()):
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)


def assert_unmodified(project, partition: str = "item01") -> None:
    """The promoted out.md still matches its manifest, now and a little later."""
    time.sleep(0.1)  # a surviving writer appends every 20 ms
    recorded = {o["path"]: o for o in manifest(project, partition)["outputs"]}
    data = (project.root / "data/work" / partition / "out.md").read_bytes()
    assert hashlib.sha256(data).hexdigest() == recorded["out.md"]["sha256"]
    assert len(data) == recorded["out.md"]["bytes"]


@pytest.mark.parametrize("how", HOW)
def test_a_leftover_of_a_successful_attempt_is_gone_before_promotion(make_project, how):
    project = make_project(n_items=1)
    project.script({"default": {"action": "daemon", "how": how}})

    result = project.orch("stage", "run", "work")

    assert result.returncode == 0, result.stderr
    [daemon] = daemon_pids(project)
    assert not is_alive(daemon), "the writer outlived its attempt"
    assert_unmodified(project)
    log = (project.root / "data/work/item01/.orch/agent.log").read_text()
    assert "orch: killed 1 process(es) the agent left running" in log
    status = project.orch("status", "work", "--json")
    assert json.loads(status.stdout)["partitions"][0]["status"] == "complete"
    assert project.orch("barrier", "work").returncode == 0


@pytest.mark.parametrize("how", HOW)
def test_a_leftover_of_a_failed_attempt_is_gone(make_project, how):
    project = make_project(n_items=1)
    project.script({"default": {"action": "daemon", "how": how, "then": "fail"}})

    result = project.orch("stage", "run", "work")

    assert result.returncode == 3, result.stderr
    [daemon] = daemon_pids(project)
    assert not is_alive(daemon)
    assert "exit code 1" in result.stderr


@pytest.mark.parametrize("how", HOW)
def test_a_leftover_of_a_timed_out_attempt_is_gone(make_project, how):
    project = make_project(n_items=1, timeout="1s")
    project.script({"default": {"action": "daemon", "how": how, "then": "hang"}})

    result = project.orch("stage", "run", "work")

    assert result.returncode == 3, result.stderr
    assert "timeout after 1s" in result.stderr
    [daemon] = daemon_pids(project)
    assert not is_alive(daemon)
    assert not any(is_alive(i["pid"]) for i in project.invocations())


@pytest.mark.parametrize("how", HOW)
def test_a_leftover_is_gone_after_ctrl_c(make_project, how):
    project = make_project(n_items=1)
    project.script({"default": {"action": "daemon", "how": how, "then": "hang"}})
    proc = project.popen("stage", "run", "work")
    wait_until(lambda: daemon_pids(project), what="the writer to start")

    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)

    assert proc.returncode == 130
    assert not any(is_alive(p) for p in daemon_pids(project))
    assert not any(is_alive(i["pid"]) for i in project.invocations())


@pytest.mark.parametrize("how", HOW)
def test_kill_9_of_orch_and_its_reaper_then_the_rerun_ends_the_leftover(make_project, how):
    project = make_project(n_items=1)
    project.script({"default": {"action": "daemon", "how": how, "then": "hang"}})
    proc = project.popen("stage", "run", "work")
    wait_until(lambda: daemon_pids(project), what="the writer to start")
    [reaper] = reapers_of(proc.pid)
    os.kill(reaper, signal.SIGKILL)  # the worst case: the watchdog is gone too
    proc.kill()
    proc.communicate(timeout=10)
    [daemon] = daemon_pids(project)
    assert is_alive(daemon), "nothing watched it any more"

    project.script({"default": {"action": "succeed"}})
    project.orch("stage", "run", "work", check=True)

    assert not is_alive(daemon), "the rerun killed it before archiving the staging directory"
    killed = [pid for e in events(project, "orphans_killed") for pid in e["pids"]]
    assert daemon in killed
    assert_unmodified(project)


def test_kill_9_of_orch_alone_the_reaper_ends_the_double_forked_leftover(make_project):
    project = make_project(n_items=1)
    project.script({"default": {"action": "daemon", "how": "double_fork", "then": "hang"}})
    proc = project.popen("stage", "run", "work")
    wait_until(lambda: daemon_pids(project), what="the writer to start")

    proc.kill()
    proc.communicate(timeout=10)

    wait_gone(daemon_pids(project) + [i["pid"] for i in project.invocations()])


def test_an_output_changed_after_promotion_is_modified_and_reruns(make_project):
    project = make_project(n_items=2)
    project.orch("stage", "run", "work", check=True)
    out = project.root / "data/work/item01/out.md"
    with open(out, "a") as handle:
        handle.write("appended later\n")

    status = project.orch("status", "work", "--json")
    states = {p["id"]: p for p in json.loads(status.stdout)["partitions"]}
    assert states["item01"]["status"] == "modified"
    assert "out.md" in states["item01"]["reason"]
    assert states["item02"]["status"] == "complete"
    barrier = project.orch("barrier", "work")
    assert barrier.returncode == 4
    assert "modified" in barrier.stdout + barrier.stderr

    calls = len(project.invocations())
    project.orch("stage", "run", "work", check=True)
    assert [i["partition"] for i in project.invocations()[calls:]] == ["item01"]
    assert project.orch("barrier", "work").returncode == 0


def test_the_barrier_finds_a_same_size_change_by_hash(make_project):
    project = make_project(n_items=1)
    project.orch("stage", "run", "work", check=True)
    out = project.root / "data/work/item01/out.md"
    st = out.stat()
    data = out.read_bytes()
    out.write_bytes(data.replace(b"Fake", b"Real"))
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as recorded

    status = project.orch("status", "work", "--json")
    assert json.loads(status.stdout)["partitions"][0]["status"] == "complete"
    barrier = project.orch("barrier", "work", "--json")
    assert barrier.returncode == 4
    [entry] = json.loads(barrier.stdout)["missing"]
    assert entry == {
        "partition": "item01",
        "status": "modified",
        "file": "out.md",
        "rule": "modified",
        "detail": "sha256 differs from the manifest",
    }


def test_sighup_ends_agents_like_sigterm_and_exits_129(make_project):
    project = make_project(n_items=2)
    project.script({"default": {"action": "daemon", "how": "setsid", "then": "hang"}})
    proc = project.popen("stage", "run", "work")
    wait_until(lambda: len(daemon_pids(project)) == 2, what="both writers to start")

    proc.send_signal(signal.SIGHUP)
    _out, err = proc.communicate(timeout=30)

    assert proc.returncode == 129, err
    assert "error: run stopped by SIGHUP (its terminal closed); running agents were terminated" in err
    assert not any(is_alive(p) for p in daemon_pids(project))
    assert not any(is_alive(i["pid"]) for i in project.invocations())
    assert sorted(e["partition"] for e in events(project, "interrupted")) == ["item01", "item02"]
    for partition in ("item01", "item02"):
        error = project.root / "wip/attempts/work" / partition / "1/.orch/error.json"
        assert json.loads(error.read_text())["outcome"] == "interrupted"


@pytest.mark.parametrize("how", HOW)
def test_a_leftover_holding_the_captured_stdout_open_cannot_hold_the_attempt(make_project, how):
    """With `reply_file` orch reads the agent's stdout through a pipe; the writer left
    behind inherits it and never closes it. The attempt ends once the agent exits (no
    timeout is set), with the agent's own reply, and the writer is killed."""
    project = make_project(n_items=1)
    config = default_config(1)
    config["agents"]["fake"]["reply_file"] = "reply.md"
    config["stages"]["work"]["expect"] = [{"file": "reply.md", "min_bytes": 10}]
    project.config(config)
    project.script({"default": {"action": "daemon", "how": how, "files": {"side.txt": "x"}}})

    started = time.monotonic()
    result = project.orch("stage", "run", "work", timeout=30)

    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    reply = (project.root / "data/work/item01/reply.md").read_text()
    assert reply == "fake agent: daemon for item01\n"
    [daemon] = daemon_pids(project)
    assert not is_alive(daemon)
