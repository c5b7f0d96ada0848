"""Shared e2e fixtures: a real Dask cluster (a `dask scheduler` and two `orch worker`
processes on 127.0.0.1, ephemeral ports), started once per session for the tests that
ask for it (test_dask.py, test_dask_parity.py; issue 14).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fakes.openai_server import FakeOpenAI


class Cluster:
    """A scheduler and its workers as subprocesses; `workers` maps name to address."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.workers: dict[str, str] = {}
        self.address = ""

    def _start(
        self, name: str, argv: list[str], extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(extra_env or {})}
        env.pop("ORCH_PROJECT", None)
        with open(self.base / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(argv, cwd=self.base, env=env, stdout=log, stderr=log)
        self.procs[name] = proc
        return proc

    def _wait_log(self, name: str, pattern: str, timeout_s: float = 60) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = (self.base / f"{name}.log").read_text(errors="replace")
            match = re.search(pattern, text)
            if match:
                return match.group(1)
            assert self.procs[name].poll() is None, f"{name} exited:\n{text}"
            time.sleep(0.1)
        raise AssertionError(f"{name} did not start within {timeout_s}s")

    def start_scheduler(self) -> None:
        argv = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"]
        self._start("scheduler", [*argv, "--port", "0", "--no-dashboard"])
        self.address = self._wait_log("scheduler", r"Scheduler at:\s+(tcp://[0-9.:]+)")

    def start_worker(
        self, name: str, resources: str, slots: int = 2, extra_env: dict[str, str] | None = None
    ) -> str:
        """Start `orch worker` NAME (with `extra_env` over this process's environment); its address."""
        argv = [sys.executable, "-m", "orch", "worker", self.address, "--slots", str(slots)]
        self._start(name, [*argv, "--resources", resources, "--name", name], extra_env)
        self.workers[name] = self._wait_log(name, r"Start worker at:\s+(tcp://[0-9.:]+)")
        return self.workers[name]

    @property
    def url(self) -> str:
        """The `--executor` value for this cluster."""
        return "dask://" + self.address.removeprefix("tcp://")

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait(10)

    def stop(self) -> None:
        for proc in reversed(self.procs.values()):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """w1 offers fake=2; w2 offers fake=2, solo=1 and k=1 (2 slots each)."""
    pytest.importorskip("distributed")
    running = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        running.start_scheduler()
        running.start_worker("w1", "fake=2")
        running.start_worker("w2", "fake=2,solo=1,k=1")
        yield running
    finally:
        running.stop()


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    """A fake OpenAI-compatible server on 127.0.0.1 (any API key), for one test."""
    with FakeOpenAI() as fake:
        yield fake
