"""The Dask executor, operations side (issue 14): workers that join after orch connected,
pre-flight of command agents on the workers, the worker in `orch show`, the dashboard and
the Python API, and `open_project(...).run(executor=...)`.

Uses the session cluster of tests/e2e/conftest.py; workers started here get resources
of their own (`late`, `cli`) or the shared `k`, and are stopped at the end of the test.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import orch
from tests.conftest import FAKE_AGENT, REPO, Project
from tests.e2e.conftest import Cluster
from tests.e2e.test_cli_presets import archived_errors
from tests.e2e.test_dask import dask_config, manifests, wait_until
from tests.e2e.test_execution import events as all_events
from tests.e2e.test_kill_and_resume import reaper_pids

pytest.importorskip("distributed")


@pytest.fixture
def extra_workers(cluster: Cluster) -> Iterator[list[str]]:
    """Names of workers a test starts; killed (and forgotten) afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        if name in cluster.procs:
            cluster.kill(name)
            del cluster.procs[name]
            cluster.workers.pop(name, None)


def other_orch(base: Path, version: str) -> Path:
    """A copy of this orch whose `__version__` is `version`; the directory to put on PYTHONPATH."""
    target = base / "other-orch"
    shutil.copytree(REPO / "src" / "orch", target / "orch", ignore=shutil.ignore_patterns("__pycache__"))
    init = target / "orch" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]*"', f'__version__ = "{version}"', init.read_text()))
    return target


def test_a_worker_with_another_orch_version_joining_mid_run_gets_no_attempts(
    cluster: Cluster, make_project: Callable[..., Project], extra_workers: list[str], tmp_path: Path
) -> None:
    """Agents need resource k: w2 offers k=1; the late worker offers k=2 but runs orch 0.0.0-other."""
    project = make_project(8)  # 12 s on w2 alone: the late worker joins meanwhile
    project.config(dask_config(project, 8, resources="k"))
    project.script({"default": {"action": "sleep", "seconds": 1.5}})
    proc = project.popen("stage", "run", "work", "--executor", cluster.url)
    wait_until(lambda: project.invocations(), 30, "the first attempt on w2")
    extra_workers.append("late")
    late = cluster.start_worker(
        "late", "k=2", extra_env={"PYTHONPATH": str(other_orch(tmp_path, "0.0.0-other"))}
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    done = manifests(project)
    assert len(done) == 8
    assert {m["attempts"][-1]["worker"] for m in done.values()} == {cluster.workers["w2"]}
    assert all(a.get("worker") != late for m in done.values() for a in m["attempts"])
    assert f"Dask worker {late} gets no attempts: runs orch 0.0.0-other" in err


def test_pre_flight_looks_up_a_cluster_agents_command_on_the_workers(
    cluster: Cluster, make_project: Callable[..., Project], extra_workers: list[str], tmp_path: Path
) -> None:
    """The command is on the PATH of the worker offering `cli`, not on the orchestrator's."""
    bin_dir = tmp_path / "worker-bin"
    bin_dir.mkdir()
    cli = bin_dir / "orch-test-cli"
    cli.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_AGENT}" "$@"\n')
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    extra_workers.append("cli")
    worker = cluster.start_worker(
        "cli", "cli=2", extra_env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    )
    project = make_project(2)
    config = dask_config(project, 2, resources="cli")
    config["agents"]["fake"]["command"] = ["orch-test-cli"]
    project.config(config)
    locally = project.orch("stage", "run", "work")
    assert locally.returncode == 2
    assert "command 'orch-test-cli' not found on PATH" in locally.stderr
    project.orch("stage", "run", "work", "--executor", cluster.url, check=True)
    assert {m["attempts"][-1]["worker"] for m in manifests(project).values()} == {worker}
    config["agents"]["fake"]["command"] = ["orch-no-such-cli"]
    project.config(config)
    missing = project.orch("stage", "run", "work", "--force", "--executor", cluster.url)
    assert missing.returncode == 2, missing.stderr
    assert (
        f"agent fake: command 'orch-no-such-cli' not found on worker(s) {worker} (orch.yaml:"
        in missing.stderr
    )
    assert "Traceback" not in missing.stderr
    assert len(project.invocations()) == 2  # nothing started


def test_the_api_runs_on_the_cluster_and_every_view_names_the_worker(
    cluster: Cluster, make_project: Callable[..., Project]
) -> None:
    """`open_project(...).run(executor=...)` and `arun`; status, show, dashboard name the worker."""
    from aiohttp.test_utils import TestClient, TestServer

    from orch.web.app import make_app

    project = make_project(2)
    project.config(dask_config(project, 2, resources="solo"))  # only w2 offers solo
    project.script({"default": {"action": "succeed"}, "item02": [{"action": "fail"}, {"action": "succeed"}]})
    api = orch.open_project(project.root)
    report = api.run("work", executor=cluster.url)
    assert [o.status for o in report.outcomes] == ["complete", "failed"]
    w2 = cluster.workers["w2"]
    assert {m["attempts"][-1]["worker"] for m in manifests(project).values()} == {w2}
    again = asyncio.run(api.arun("work", retry_failed=True, executor=cluster.url))
    assert again.ok
    assert {p.id: p.worker for p in api.status("work").partitions} == {"item01": w2, "item02": w2}
    detail = api.show("work", "item02")
    assert [a.worker for a in detail.attempts] == [w2]  # the failed attempt, archived
    shown = project.orch("show", "work", "item02", check=True).stdout
    assert f"worker     {w2}" in shown
    assert f"on {w2}" in shown

    async def page() -> tuple[int, str]:
        async with TestClient(TestServer(make_app(api.workspace, poll_s=0.02))) as client:
            response = await client.get("/p/work/item02")
            return response.status, await response.text()

    status, html = asyncio.run(page())
    assert status == 200
    assert f'ran on worker <span id="worker">{w2}</span>' in html
    assert f"on worker {w2}" in html


@pytest.mark.chaos
def test_attempts_wait_for_a_worker_offering_their_resource_after_the_only_one_left(
    cluster: Cluster, make_project: Callable[..., Project], extra_workers: list[str]
) -> None:
    """Only `m1` offers mv (1 slot); it is killed, the retries are due at once (backoff
    <= 0.05 s), and `m2` (mv=1) joins a second later. A retry submitted to the workers
    left then (none offers mv) would wait for ever: no attempt timeout is set."""
    extra_workers.append("m1")
    m1 = cluster.start_worker("m1", "mv=1", slots=1)
    project = make_project(3)
    project.config(dask_config(project, 3, resources="mv", retries=2))
    project.script({"default": {"action": "sleep", "seconds": 2}})
    proc = project.popen("stage", "run", "work", "--executor", cluster.url)
    wait_until(lambda: project.invocations(), 30, "the first attempt on m1")
    cluster.kill("m1")
    time.sleep(1)
    extra_workers.append("m2")
    m2 = cluster.start_worker("m2", "mv=1", slots=1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    done = manifests(project)
    assert {m["attempts"][-1]["worker"] for m in done.values()} == {m2}
    assert all(m["attempts"][0]["error_class"] == "worker_lost" for m in done.values())
    events = all_events(project)  # this project's one run
    assert [e["worker"] for e in events if e["event"] == "worker_left"] == [m1]
    joined = {e["worker"]: e["late"] for e in events if e["event"] == "worker_joined"}
    assert joined[m1] is False
    assert joined[m2] is True
    assert f"Dask worker {m1} left" in err
    assert f"Dask worker {m2} joined" in err


def test_no_worker_offering_the_resource_fails_the_attempt_within_connect_timeout(
    cluster: Cluster, make_project: Callable[..., Project]
) -> None:
    project = make_project(1)
    config = dask_config(project, 1, resources="nobody")
    config["executor"] = {"kind": "dask", "scheduler": cluster.address, "connect_timeout": "1s"}
    project.config(config)
    result = project.orch("stage", "run", "work")
    assert result.returncode == 3, result.stderr
    [archived] = archived_errors(project)
    error = archived["error"]
    assert "no checked Dask worker offers the agent's resources nobody=1 within 1s" in error
    assert "orch worker SCHEDULER --resources nobody=1" in error
    assert project.invocations() == []


def test_two_agent_settings_on_one_worker_share_one_reaper_and_run_at_once(
    cluster: Cluster, make_project: Callable[..., Project], extra_workers: list[str], tmp_path: Path
) -> None:
    """Two projects (so two agent settings, two backends on the worker) each run one
    attempt at once on the worker `pair` (2 slots). The attempt ending first must not
    take the other's live agent for a leftover of its own."""
    extra_workers.append("pair")
    pair = cluster.start_worker("pair", "pair=2", slots=2)
    first = make_project(1)
    shutil.copytree(first.root, tmp_path / "second")
    projects = [first, Project(tmp_path / "second")]
    for project, seconds in zip(projects, (1, 3), strict=True):
        project.config(dask_config(project, 1, resources="pair"))
        project.script({"default": {"action": "sleep", "seconds": seconds}})
    procs = [p.popen("stage", "run", "work", "--executor", cluster.url) for p in projects]
    for project, proc in zip(projects, procs, strict=True):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
        [done] = manifests(project).values()
        assert [a["worker"] for a in done["attempts"]] == [pair]
    started = [p.invocations()[0]["ts"] for p in projects]
    assert abs(started[0] - started[1]) < 1, "the two attempts ran at the same time"
    worker_pid = cluster.procs["pair"].pid  # `orch worker` execs `dask worker`
    reapers = [
        p
        for p in reaper_pids()
        if Path(f"/proc/{p}/stat").read_text().split(") ")[1].split()[1] == str(worker_pid)
    ]
    assert len(reapers) == 1, "one reaper per worker process, not one per agent settings"
