"""Optional (issue 14): the scheduler, two `orch worker`s and orch itself each in a network
namespace of its own, as four hosts on one bridge (10.77.0.0/24); the filesystem is shared.

Skipped unless root with `unshare`, `nsenter` and `ip` able to make a bridge and veth pairs.
Nothing is changed in this machine's own network namespace: the bridge lives in a
namespace of its own too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Project
from tests.e2e.test_dask import dask_config, manifests, one_agent_per_staging

pytest.importorskip("distributed")

NET = "10.77.0"


def _netns_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not all(shutil.which(tool) for tool in ("unshare", "nsenter", "ip")):
        return "needs unshare, nsenter and ip"
    probe = "ip link add name br0 type bridge && ip link add name va type veth peer name vb"
    if subprocess.run(["unshare", "-n", "sh", "-c", probe], capture_output=True).returncode != 0:
        return "cannot make a bridge and veth pairs in a network namespace"
    return None


class Hosts:
    """Network namespaces held by `sleep` processes, joined by a bridge in another one."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.holders: dict[str, subprocess.Popen[bytes]] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self._hold("switch")
        self.sh("switch", "ip link add name br0 type bridge && ip link set br0 up")

    def _hold(self, name: str) -> int:
        self.holders[name] = subprocess.Popen(["unshare", "-n", "sleep", "600"])
        deadline = time.monotonic() + 10
        me = os.readlink("/proc/self/ns/net")
        while os.readlink(f"/proc/{self.holders[name].pid}/ns/net") == me:  # unshare not done yet
            assert time.monotonic() < deadline, "unshare -n did not start"
            time.sleep(0.01)
        return self.holders[name].pid

    def sh(self, host: str, script: str) -> None:
        pid = str(self.holders[host].pid)
        subprocess.run(["nsenter", "-t", pid, "-n", "sh", "-c", script], check=True, capture_output=True)

    def add(self, host: str, last_octet: int) -> str:
        """A new host on the bridge; its address."""
        pid = self._hold(host)
        port = f"v{last_octet}"
        self.sh("switch", f"ip link add name {port} type veth peer name eth0 netns {pid}")
        self.sh("switch", f"ip link set {port} master br0 up")
        address = f"{NET}.{last_octet}"
        self.sh(host, f"ip link set lo up && ip addr add {address}/24 dev eth0 && ip link set eth0 up")
        return address

    def start(self, host: str, argv: list[str], log: str, **kwargs: object) -> subprocess.Popen[bytes]:
        pid = str(self.holders[host].pid)
        with open(self.base / log, "wb") as out:
            proc = subprocess.Popen(["nsenter", "-t", pid, "-n", *argv], stdout=out, stderr=out, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def wait_log(self, log: str, pattern: str, timeout_s: float = 60) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(pattern, (self.base / log).read_text(errors="replace"))
            if match:
                return match.group(1)
            time.sleep(0.1)
        raise AssertionError(f"{log}: no {pattern!r} within {timeout_s}s:\n{(self.base / log).read_text()}")

    def stop(self) -> None:
        for proc in [*reversed(self.procs), *self.holders.values()]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.procs, *self.holders.values()]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    problem = _netns_problem()
    if problem:
        pytest.skip(f"network namespaces: {problem}")
    made = Hosts(tmp_path)
    try:
        yield made
    finally:
        made.stop()


def test_scheduler_workers_and_orch_on_separate_network_namespaces(
    hosts: Hosts, make_project: Callable[..., Project]
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("ORCH_PROJECT", None)
    scheduler_ip = hosts.add("scheduler", 1)
    argv = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", scheduler_ip, "--port", "8786"]
    hosts.start("scheduler", [*argv, "--no-dashboard"], "scheduler.log", env=env)
    hosts.wait_log("scheduler.log", r"Scheduler at:\s+(tcp://\S+)")
    workers = {}
    for name, octet in (("n1", 2), ("n2", 3)):
        hosts.add(name, octet)
        worker = [sys.executable, "-m", "orch", "worker", f"tcp://{scheduler_ip}:8786", "--slots", "2"]
        hosts.start(name, [*worker, "--resources", "fake=2", "--name", name], f"{name}.log", env=env)
        workers[name] = hosts.wait_log(f"{name}.log", r"Start worker at:\s+(tcp://\S+)")
    assert {w.rsplit(":", 1)[0] for w in workers.values()} == {f"tcp://{NET}.2", f"tcp://{NET}.3"}
    hosts.add("orch", 4)
    project = make_project(6)
    project.config(dask_config(project, 6))
    project.script({"default": {"action": "sleep", "seconds": 0.5}})
    run = hosts.start(
        "orch",
        [sys.executable, "-m", "orch", "run", "--executor", f"dask://{scheduler_ip}:8786"],
        "orch.log",
        cwd=project.root,
        env=project.env(),
    )
    assert run.wait(120) == 0, (hosts.base / "orch.log").read_text()
    done = manifests(project)
    assert len(done) == 6
    assert {m["attempts"][-1]["worker"] for m in done.values()} == set(workers.values())
    one_agent_per_staging(project)
