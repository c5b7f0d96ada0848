"""The Dask executor against a real cluster: a `dask scheduler` and two `orch worker`
processes on 127.0.0.1, started once per session (issue 14).

The fake agent runs on the workers, so its script and log paths travel in the
agent's `env:` (workers do not share the test's environment).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project, default_config
from tests.e2e.conftest import Cluster

pytest.importorskip("distributed")


def dask_config(project: Project, n_items: int = 4, resources: str = "fake", **stage: Any) -> dict[str, Any]:
    config = default_config(n_items, **stage)
    config["agents"]["fake"].update(
        resources={resources: 1},
        env={"FAKE_AGENT_SCRIPT": str(project.script_path), "FAKE_AGENT_LOG": str(project.log_path)},
    )
    return config


@pytest.fixture
def dask_project(make_project: Callable[..., Project]) -> Callable[..., Project]:
    def make(n_items: int = 4, resources: str = "fake", **stage: Any) -> Project:
        project = make_project(n_items)
        project.config(dask_config(project, n_items, resources, **stage))
        return project

    return make


def manifests(project: Project) -> dict[str, dict[str, Any]]:
    return {
        path.parent.parent.name: json.loads(path.read_text())
        for path in sorted((project.root / "data/work").glob("*/.orch/manifest.json"))
        if not path.parent.parent.name.startswith(".")  # staging directories
    }


def agents_alive(root: Path) -> list[int]:
    """Pids of live processes whose ORCH_OUTPUT_DIR is under `root` (zombies excluded)."""
    marker = b"ORCH_OUTPUT_DIR=" + os.fsencode(str(root))
    alive = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        if marker in environ and stat.rsplit(")", 1)[1].split()[0] != "Z":
            alive.append(int(name))
    return alive


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def scheduler_allowed_failures(cluster: Cluster) -> int:
    """The scheduler's `allowed_failures` (asked through a client of its own)."""
    from distributed import Client

    with Client(cluster.address, timeout=30) as client:
        return int(client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures))


def one_agent_per_staging(project: Project) -> None:
    cwds = Counter(record["cwd"] for record in project.invocations())
    assert cwds and max(cwds.values()) == 1, cwds


def test_dask_run_matches_a_local_run(cluster: Cluster, dask_project: Callable[..., Project]) -> None:
    project = dask_project()
    project.orch("run", check=True)
    local = manifests(project)
    project.orch("run", "--force", "--executor", cluster.url, check=True)
    remote = manifests(project)
    assert set(remote) == set(local) == {"item01", "item02", "item03", "item04"}
    for item, manifest in remote.items():
        assert manifest["fingerprint"] == local[item]["fingerprint"]
        assert manifest["output_fingerprint"] == local[item]["output_fingerprint"]
        assert manifest["attempts"][-1]["worker"] in cluster.workers.values()
        assert "worker" not in local[item]["attempts"][-1]
    assert (project.root / "data/work/item01/out.md").read_text().startswith("## Result")
    run_dirs = sorted((project.root / "wip/runs").iterdir())
    events = [json.loads(line) for line in (run_dirs[-1] / "events.jsonl").read_text().splitlines()]
    started = [e for e in events if e["event"] == "started"]
    assert len(started) == 4
    assert {e["worker"] for e in started} <= set(cluster.workers.values())


def test_executor_from_orch_yaml_and_a_failing_agent_retried(
    cluster: Cluster, dask_project: Callable[..., Project]
) -> None:
    project = dask_project(retries=1)
    config = dask_config(project, retries=1)
    config["executor"] = {"kind": "dask", "scheduler": cluster.address, "latency_wait": "2s"}
    project.config(config)
    project.script({"default": {"action": "succeed"}, "item02": [{"action": "fail"}, {"action": "succeed"}]})
    result = project.orch("run", check=True)
    assert "4 completed now" in result.stdout + result.stderr
    attempts = manifests(project)["item02"]["attempts"]
    assert [a["outcome"] for a in attempts] == ["failed", "complete"]
    assert attempts[0]["error_class"] == "exit"
    one_agent_per_staging(project)


def test_a_timeout_on_a_worker_stops_its_agents(
    cluster: Cluster, dask_project: Callable[..., Project]
) -> None:
    project = dask_project(n_items=2, timeout="2s")
    project.script({"default": {"action": "hang"}})
    started = time.monotonic()
    result = project.orch("stage", "run", "work", "--executor", cluster.url)
    assert result.returncode == 3, result.stderr
    assert "timeout after 2s" in result.stdout + result.stderr
    assert time.monotonic() - started < 30
    wait_until(lambda: not agents_alive(project.root), 5, "the hung agents to be gone")


def test_ctrl_c_stops_the_agents_on_the_workers(
    cluster: Cluster, dask_project: Callable[..., Project]
) -> None:
    project = dask_project(n_items=3)
    project.script({"default": {"action": "hang"}})
    proc = project.popen("stage", "run", "work", "--executor", cluster.url)
    wait_until(lambda: len(project.invocations()) == 3, 30, "three agents to start")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    # kill_grace is 1s
    wait_until(lambda: not agents_alive(project.root), 3, "the agents on the workers to be gone")


def test_a_worker_without_the_resource_never_gets_its_attempts(
    cluster: Cluster, dask_project: Callable[..., Project]
) -> None:
    project = dask_project(n_items=4, resources="solo")
    project.orch("run", "--executor", cluster.url, check=True)
    workers = {m["attempts"][-1]["worker"] for m in manifests(project).values()}
    assert workers == {cluster.workers["w2"]}
    status = project.orch("status", "work", "--json", check=True)
    assert {row["worker"] for row in json.loads(status.stdout)["partitions"]} == workers
    assert cluster.workers["w2"] in project.orch("status", "work", check=True).stdout


@pytest.mark.chaos
def test_kill_9_of_a_worker_mid_run(cluster: Cluster, dask_project: Callable[..., Project]) -> None:
    """Agents need resource k: w2 has k=1, a worker started here has k=2 and is killed."""
    victim = cluster.start_worker("victim", "k=2", slots=2)
    project = dask_project(n_items=4, resources="k", retries=2)
    project.script({"default": {"action": "sleep", "seconds": 3}})
    proc = project.popen("run", "--executor", cluster.url)
    wait_until(lambda: len(project.invocations()) >= 3, 30, "agents on both workers")
    cluster.kill("victim")
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, out + err
    done = manifests(project)
    assert len(done) == 4
    assert all(m["attempts"][-1]["worker"] == cluster.workers["w2"] for m in done.values())
    lost = [a for m in done.values() for a in m["attempts"] if a["error_class"] == "worker_lost"]
    assert lost, "the victim ran some attempts"
    assert all(f"worker {victim} left" in a["error"] or "claimed" in a["error"] for a in lost), lost
    assert scheduler_allowed_failures(cluster) == 3  # Dask's default: orch changes no cluster-wide setting
    assert victim not in {m["attempts"][-1]["worker"] for m in done.values()}
    one_agent_per_staging(project)
    wait_until(lambda: not agents_alive(project.root), 5, "nothing left running")


@pytest.mark.chaos
def test_kill_9_of_the_orchestrator_then_rerun(
    cluster: Cluster, dask_project: Callable[..., Project]
) -> None:
    project = dask_project(n_items=4)
    hang = {"action": "hang"}
    project.script({"default": {"action": "succeed"}, "item03": hang, "item04": hang})
    proc = project.popen("stage", "run", "work", "--executor", cluster.url)
    wait_until(
        lambda: len(manifests(project)) == 2 and len(project.invocations()) == 4, 30, "two done, two hung"
    )
    proc.kill()
    proc.communicate(timeout=10)
    wait_until(lambda: not agents_alive(project.root), 5, "the orphans to be killed")
    project.script({"default": {"action": "succeed"}})
    project.orch("stage", "run", "work", "--executor", cluster.url, check=True)
    runs = Counter(record["partition"] for record in project.invocations())
    assert runs == {"item01": 1, "item02": 1, "item03": 2, "item04": 2}
    one_agent_per_staging(project)
    assert not agents_alive(project.root)


def test_executor_errors_exit_2(make_project: Callable[..., Project]) -> None:
    project = make_project()
    result = project.orch("run", "--executor", "dusk://x:1")
    assert result.returncode == 2
    assert "--executor: expected local or dask://host:port, got 'dusk://x:1'" in result.stderr
    config = default_config()
    config["executor"] = {"kind": "dask", "schedular": "tcp://127.0.0.1:1"}
    project.config(config)
    result = project.orch("run")
    assert result.returncode == 2
    assert "unknown key 'schedular'; did you mean 'scheduler'?" in result.stderr
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    config["executor"] = {"kind": "dask", "scheduler": address, "connect_timeout": "1s"}
    project.config(config)
    result = project.orch("run")
    assert result.returncode == 2, result.stderr
    assert f"cannot use the Dask cluster at {address}" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_orchestrators_on_one_cluster_run_each_partition_once(
    cluster: Cluster, dask_project: Callable[..., Project]
) -> None:
    """The partition locks hold across orchestrators sharing a cluster, and neither one's
    start-up sweep kills the other's agents on the workers."""
    from tests.e2e.test_execution import events, invoked

    project = dask_project(n_items=6)
    project.script({"default": {"action": "sleep", "seconds": 1}})
    runs = [project.popen("stage", "run", "work", "--executor", cluster.url) for _ in range(2)]
    results = [(run.communicate(timeout=90), run.returncode) for run in runs]
    for (out, err), code in results:
        assert code in (0, 4), out + err  # 4: the other still held some partitions when it ended
    assert invoked(project) == Counter({f"item{i:02d}": 1 for i in range(1, 7)})
    assert Counter(e["partition"] for e in events(project, "promoted")) == invoked(project)
    assert all(m["attempt"] == 1 and len(m["attempts"]) == 1 for m in manifests(project).values())
    one_agent_per_staging(project)


def test_ctrl_c_while_connecting_to_a_silent_scheduler_stops_at_once(
    make_project: Callable[..., Project],
) -> None:
    """A scheduler address that accepts connections and never answers: connecting would
    take `connect_timeout` (30 s); Ctrl-C ends the run meanwhile, as interrupted."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    project = make_project(2)
    try:
        port = listener.getsockname()[1]
        proc = project.popen("stage", "run", "work", "--executor", f"dask://127.0.0.1:{port}")
        wait_until(lambda: accepted, 30, "orch to connect")
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        out, err = proc.communicate(timeout=20)
        assert time.monotonic() - started < 10
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    assert "0 completed now · 0 up to date · 2 interrupted of 2" in out
    assert project.invocations() == []
