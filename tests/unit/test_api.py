"""The Python API (orch.api): typed records, run from plain code and from a running loop,
arun cancelled ends its agents, events followed to run_finished, no signal handlers."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import orch
from orch.observe.events import EventName
from tests.conftest import Project


@pytest.fixture
def project(make_project: Callable[..., Project], monkeypatch: pytest.MonkeyPatch) -> Project:
    """A 3-partition project whose fake agent is configured through the environment."""
    made = make_project(3)
    for name, value in made.env().items():
        if name.startswith("FAKE_AGENT"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("ORCH_PROJECT", raising=False)
    monkeypatch.delenv("ORCH_AGENT", raising=False)
    return made


def wait_until(predicate: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s}s")


def is_gone(pid: int) -> bool:
    """True if process `pid` no longer runs (absent, or a zombie awaiting its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def test_open_project_walks_up_and_checks(project: Project, tmp_path: Path):
    sub = project.root / "references"
    opened = orch.open_project(sub)
    assert opened.root == project.root.resolve()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(orch.ConfigError, match=r"no orch\.yaml found"):
        orch.open_project(elsewhere)


def test_plan_status_and_show_are_typed_records(project: Project):
    opened = orch.open_project(project.root)
    plan = opened.plan("work")
    assert isinstance(plan, orch.Plan)
    assert [p.id for p in plan.stage("work").partitions] == ["item01", "item02", "item03"]
    first = plan.stages[0].partitions[0]
    assert (first.status, first.action, first.reason) == (orch.Status.MISSING, "run", "missing")
    assert first.fingerprint is not None and first.fingerprint.startswith("sha256:")
    assert plan.actions["run"] == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.status = orch.Status.COMPLETE  # type: ignore[misc]

    overview = opened.status()
    assert [(s.stage, s.partitions, s.counts["missing"]) for s in overview.stages] == [("work", 3, 3)]
    assert opened.plan(only=["item0[12]"]).stage("work").partitions[-1].id == "item02"

    opened.run("work").raise_for_status()
    rows = opened.status("work").partitions
    assert [(r.id, r.status) for r in rows] == [(f"item0{i}", orch.Status.COMPLETE) for i in (1, 2, 3)]
    detail = opened.show("work", "item02")
    assert isinstance(detail, orch.PartitionDetail)
    assert detail.status is orch.Status.COMPLETE
    assert [o.path for o in detail.outputs] == ["data/work/item02/out.md"]
    assert detail.manifest is not None and detail.manifest["attempt"] == 1
    with pytest.raises(orch.UsageError):
        opened.show("work", "nope")


def test_run_from_plain_code_installs_no_signal_handler(project: Project):
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    report = orch.open_project(project.root).run("work", max_parallel=2)
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    assert isinstance(report, orch.RunReport)
    assert report.ok and not report.interrupted
    assert sorted((o.partition, o.status) for o in report.outcomes) == [
        ("item01", "complete"),
        ("item02", "complete"),
        ("item03", "complete"),
    ]
    assert [(b.stage, b.met) for b in report.barriers] == [("work", True)]
    report.raise_for_status()
    assert orch.open_project(project.root).run("work", dry_run=True).planned is not None


def test_run_inside_a_running_event_loop(project: Project):
    opened = orch.open_project(project.root)

    async def notebook_cell() -> orch.RunReport:
        return opened.run()  # a blocking call from inside a running loop, as in Jupyter

    report = asyncio.run(notebook_cell())
    assert report.ok and len(report.outcomes) == 3


def test_a_failed_partition_is_a_report_until_raise_for_status(project: Project):
    project.script({"default": {"action": "succeed"}, "item02": {"action": "fail", "exit": 3}})
    report = orch.open_project(project.root).run("work")
    assert not report.ok
    assert [o.partition for o in report.outcomes if o.status == "failed"] == ["item02"]
    with pytest.raises(orch.PartitionsFailed, match=r"1 of 3 partitions did not complete \(work/item02\)"):
        report.raise_for_status()


def test_cancelling_arun_ends_its_agents(project: Project):
    project.script({"default": {"action": "hang"}})
    opened = orch.open_project(project.root)

    def pids() -> list[int]:
        found = []
        for staging in (project.root / "data" / "work").glob(".*.attempt-*"):
            text = (staging / "pids.txt").read_text() if (staging / "pids.txt").exists() else ""
            found += [int(p) for p in text.split()]
        return found

    async def main() -> list[int]:
        task = asyncio.create_task(opened.arun("work", max_parallel=1))
        started = await asyncio.to_thread(lambda: wait_until(lambda: len(pids()) == 2 and pids()))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return started

    agent_pids = asyncio.run(main())
    assert len(agent_pids) == 2  # the agent and the grandchild it started
    wait_until(lambda: all(is_gone(pid) for pid in agent_pids), timeout_s=15)
    events = list(opened.events())
    assert events[-1].name is EventName.RUN_FINISHED
    assert events[-1].get("interrupted") is True


def test_events_follow_ends_at_run_finished(project: Project):
    project.script({"default": {"action": "sleep", "seconds": 0.3}})
    opened = orch.open_project(project.root)
    runner = threading.Thread(target=opened.run, args=("work",))
    runner.start()
    try:
        wait_until(lambda: list((project.root / "wip" / "runs").glob("*/events.jsonl")))
        followed = list(opened.events(follow=True, timeout_s=60))
    finally:
        runner.join(timeout=60)
    names = [e.name for e in followed]
    assert names[0] is EventName.RUN_STARTED
    assert names[-1] is EventName.RUN_FINISHED
    assert names.count(EventName.PROMOTED) == 3


def test_events_of_no_run_is_a_usage_error(project: Project):
    with pytest.raises(orch.UsageError, match="no run yet"):
        orch.open_project(project.root).events()


def test_snapshot_is_the_read_model(project: Project):
    opened = orch.open_project(project.root)
    opened.run("work")
    snapshot = opened.snapshot()
    assert [(v.id, v.status) for v in snapshot.stage("work").partitions] == [
        ("item01", "complete"),
        ("item02", "complete"),
        ("item03", "complete"),
    ]


def test_ctrl_c_while_run_waits_ends_the_agents_and_raises(project: Project):
    import _thread

    project.script({"default": {"action": "hang"}})
    opened = orch.open_project(project.root)
    staging = project.root / "data" / "work"
    seen: list[int] = []

    def interrupt_once_started() -> None:
        files = wait_until(lambda: [p for p in staging.glob(".*.attempt-*/pids.txt") if p.read_text()])
        seen.extend(int(pid) for pid in files[0].read_text().split())
        _thread.interrupt_main()  # what Jupyter's interrupt button does

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        opened.run("work", max_parallel=1)
    assert len(seen) == 2
    wait_until(lambda: all(is_gone(pid) for pid in seen), timeout_s=15)
    assert list(opened.events())[-1].get("interrupted") is True
