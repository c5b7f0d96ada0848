"""The picklable attempt job, the claim, executor config and the latency wait (no cluster)."""

from __future__ import annotations

import asyncio
import pickle
import sys
from pathlib import Path

import pytest

from orch.backends import AttemptResult, AttemptSpec, Usage, create_backend, validate_agent
from orch.config.executor import ExecutorConfig, executor_from_url, parse_executor
from orch.config.stages import ExpectRule
from orch.errors import ConfigError, UsageError
from orch.executors.job import AttemptJob, claim, run_job


def command_agent(**extra: object) -> object:
    raw = {"backend": "command", "command": [sys.executable, "-c", "open('out.md','w').write('## Result')"]}
    return validate_agent("fake", {**raw, **extra}, "orch.yaml:3: agents.fake:", 3)


def spec_in(tmp_path: Path, timeout_s: float | None = None) -> AttemptSpec:
    staging = tmp_path / ".p.attempt-1"
    (staging / ".orch").mkdir(parents=True)
    (staging / ".orch/prompt.md").write_text("do it")
    return AttemptSpec(
        "work", "p", 1, "do it", staging, tmp_path / "p", staging / ".orch/prompt.md",
        staging / ".orch/agent.log", (ExpectRule(file="out.md"),), tmp_path, timeout_s,
    )  # fmt: skip


def run_once(job: AttemptJob, owner: str = "tcp://w:1", **kwargs: object) -> AttemptResult:
    """run_job with a fresh backend, closed afterwards (it holds a reaper process)."""
    backend = create_backend(job.agent())
    try:
        return run_job(job, backend, owner, **kwargs)  # type: ignore[arg-type]
    finally:
        asyncio.run(backend.aclose())


def test_job_and_result_pickle(tmp_path: Path) -> None:
    agent = command_agent(resources={"claude": 1}, env={"A": "1"})
    job = AttemptJob.of(agent, spec_in(tmp_path))  # type: ignore[arg-type]
    again = pickle.loads(pickle.dumps(job))
    assert again == job
    assert again.agent().settings["resources"] == {"claude": 1.0}
    result = AttemptResult(True, usage=Usage(1, 2, warnings=("w",)), worker="tcp://h:1")
    assert pickle.loads(pickle.dumps(result)) == result


def test_run_job_claims_runs_and_names_the_worker(tmp_path: Path) -> None:
    job = AttemptJob.of(command_agent(), spec_in(tmp_path))  # type: ignore[arg-type]
    result = run_once(job)
    assert result == AttemptResult(True, exit_code=0, usage=None, worker="tcp://w:1")
    assert (job.spec.work_dir / "out.md").read_text() == "## Result"
    assert (job.spec.work_dir / ".orch/claim").read_text() == "tcp://w:1\n"


def test_a_re_executed_job_refuses_without_running(tmp_path: Path) -> None:
    job = AttemptJob.of(command_agent(), spec_in(tmp_path))  # type: ignore[arg-type]
    assert claim(job.spec.work_dir, "tcp://first:1")
    result = run_once(job, "tcp://second:1")
    assert result.error_class == "worker_lost"
    assert "already claimed" in (result.error or "")
    assert not (job.spec.work_dir / "out.md").exists()


def test_a_job_past_its_timeout_is_stopped(tmp_path: Path) -> None:
    agent = validate_agent(
        "slow", {"backend": "command", "command": [sys.executable, "-c", "import time; time.sleep(30)"],
                 "kill_grace": "0.5s"}, "w", 1,
    )  # fmt: skip
    job = AttemptJob.of(agent, spec_in(tmp_path, timeout_s=0.5))
    result = run_once(job)
    assert (result.ok, result.error_class, result.error) == (False, "timeout", "timeout after 0.5s")


def test_an_unwanted_job_is_stopped(tmp_path: Path) -> None:
    agent = validate_agent(
        "slow", {"backend": "command", "command": [sys.executable, "-c", "import time; time.sleep(30)"],
                 "kill_grace": "0.5s"}, "w", 1,
    )  # fmt: skip
    result = run_once(AttemptJob.of(agent, spec_in(tmp_path)), is_wanted=lambda: False)
    assert result.error_class == "interrupted"


def test_executor_config() -> None:
    config = parse_executor({"kind": "dask", "scheduler": "tcp://head:8786", "latency_wait": "5s"}, "x:")
    assert config == ExecutorConfig("dask", "tcp://head:8786", 5.0, 30.0)
    assert executor_from_url("dask://h:1", config) == ExecutorConfig("dask", "tcp://h:1", 5.0, 30.0)
    assert executor_from_url("local", None).kind == "local"
    with pytest.raises(ConfigError, match="unknown key 'latency'; did you mean 'latency_wait'"):
        parse_executor({"kind": "dask", "latency": 1}, "x:")
    with pytest.raises(ConfigError, match="expected a Dask scheduler address like tcp://head:8786"):
        parse_executor({"kind": "dask"}, "x:")
    with pytest.raises(UsageError, match="expected local or dask://host:port"):
        executor_from_url("dask:/h", None)


@pytest.mark.parametrize("resources", [{"claude": 0}, {"claude": True}, ["claude"], {"claude": float("nan")}])
def test_bad_resources_are_config_errors(resources: object) -> None:
    with pytest.raises(ConfigError, match="resources: expected a mapping of resource name to a number > 0"):
        command_agent(resources=resources)


def test_latency_wait_polls_for_late_outputs(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    from orch.executors.dask import wait_for_outputs

    spec = spec_in(tmp_path)
    assert not wait_for_outputs(spec, 0.2)
    (spec.work_dir / "out.md").write_text("x")
    assert wait_for_outputs(spec, 0.2)


def test_sweep_kills_only_orphans_of_dask_workers(tmp_path: Path) -> None:
    """Dead worker's and unowned agents die; live workers' and non-Dask agents survive."""
    import subprocess
    import types

    from orch.executors.dask_worker import sweep_orphans

    def agent(name: str, worker: str | None) -> subprocess.Popen[bytes]:
        env = {"ORCH_OUTPUT_DIR": str(tmp_path / name), "PATH": "/usr/bin:/bin"}
        if worker:
            env["ORCH_DASK_WORKER"] = worker
        return subprocess.Popen(["sleep", "30"], env=env)

    me = types.SimpleNamespace(address="tcp://me:1")
    procs = {
        "dead": agent("a", "tcp://dead:1"),
        "mine": agent("b", "tcp://me:1"),
        "live": agent("c", "tcp://other:1"),
        "local": agent("d", None),
    }
    try:
        killed = sweep_orphans(str(tmp_path), ["tcp://me:1", "tcp://other:1"], me)
        assert sorted(killed) == sorted([procs["dead"].pid, procs["mine"].pid])
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def test_check_worker_refuses_another_version_or_an_invisible_project(tmp_path: Path) -> None:
    from orch import __version__
    from orch.executors.dask_worker import check_worker

    assert check_worker(str(tmp_path), __version__) == (
        f"cannot see the project at {tmp_path} (no orch.yaml there); is the shared FS mounted?"
    )
    (tmp_path / "orch.yaml").write_text("{}")
    assert check_worker(str(tmp_path), __version__) is None
    assert check_worker(str(tmp_path), "9.9") == f"runs orch {__version__}, the orchestrator runs orch 9.9"
