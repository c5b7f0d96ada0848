"""Typed events and the events.jsonl follower (orch.observe.events)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orch.observe import events as events_module
from orch.observe.events import (
    Event,
    EventName,
    EventReader,
    is_process_alive,
    latest_run,
    list_runs,
)
from orch.store.runlog import RunLog

SRC = Path(__file__).parent.parent.parent / "src" / "orch"


def line(name: str, **fields: object) -> bytes:
    return json.dumps({"ts": 1000.0, "event": name, "run_id": "r1", **fields}).encode() + b"\n"


def names(found: list[Event]) -> list[str]:
    return [str(e.name) for e in found]


def test_event_names_are_exactly_the_names_orch_writes():
    # every `emit("name", ...)` / `emit(\n "name"` call in the package
    written = set()
    for path in SRC.rglob("*.py"):
        written |= set(re.findall(r'\bemit\(\s*"(\w+)"', path.read_text(encoding="utf-8")))
    assert written == {e.value for e in EventName}


def test_from_json_types_the_common_fields_and_keeps_the_whole_object():
    event = Event.from_json(line("started", stage="s", partition="p", attempt=2, reason="missing"), 77)
    assert event.name is EventName.STARTED and event.name == "started"
    assert (event.ts, event.run_id, event.stage, event.partition, event.attempt) == (
        1000.0,
        "r1",
        "s",
        "p",
        2,
    )
    assert event.offset == 77
    assert event.get("reason") == "missing" and event.fields["event"] == "started"


def test_an_unknown_event_name_loads_as_a_plain_string():
    event = Event.from_json(line("teleported", stage="s"))
    assert event.name == "teleported" and not isinstance(event.name, EventName)


def test_untrusted_field_values_become_none_or_zero_never_errors():
    event = Event.from_json({"ts": float("nan"), "event": 5, "stage": ["x"], "attempt": True})
    assert (event.ts, event.name, event.stage, event.attempt) == (0.0, "", None, None)
    assert Event.from_json({"ts": 10**400}).ts == 0.0


@pytest.mark.parametrize("data", [b"[1, 2]", b"{not json", b'"text"', b"[" * 5000 + b"]" * 5000])
def test_from_json_refuses_what_is_not_a_json_object(data: bytes):
    with pytest.raises(ValueError):
        Event.from_json(data)


def test_read_returns_complete_lines_and_advances(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(line("run_started") + line("started", stage="s", partition="p"))
    reader = EventReader(path)
    assert names(reader.read()) == ["run_started", "started"]
    assert reader.offset == path.stat().st_size
    assert reader.read() == []


def test_a_torn_last_line_is_not_consumed_until_it_is_complete(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    whole = line("promoted", stage="s", partition="p")
    path.write_bytes(line("run_started") + whole[:15])
    reader = EventReader(path)
    assert names(reader.read()) == ["run_started"]
    assert reader.read() == []
    with open(path, "ab") as handle:
        handle.write(whole[15:])
    (event,) = reader.read()
    assert event.name is EventName.PROMOTED and event.partition == "p"
    assert event.offset == path.stat().st_size


def test_offset_is_the_end_of_the_line_so_a_new_reader_resumes_exactly(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(line("started", partition=f"p{i}") for i in range(5)))
    first = EventReader(path).read()
    resumed = EventReader(path, offset=first[1].offset).read()
    assert [e.partition for e in resumed] == ["p2", "p3", "p4"]
    assert [e.offset for e in resumed] == [e.offset for e in first[2:]]


def test_a_corrupt_complete_line_is_skipped_and_counted(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(line("started") + b'{"ts": 1, "event": "fai\n' + b"\n" + b"[1]\n" + line("failed"))
    reader = EventReader(path)
    assert names(reader.read()) == ["started", "failed"]
    assert reader.skipped == 2


def test_invalid_utf8_inside_a_line_is_replaced_not_lost(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"ts": 1, "event": "failed", "error": "bad \xff byte"}\n' + line("promoted"))
    found = EventReader(path).read()
    assert names(found) == ["failed", "promoted"]
    assert found[0].get("error") == "bad \ufffd byte"


def test_a_missing_file_reads_as_empty(tmp_path: Path):
    assert EventReader(tmp_path / "nope" / "events.jsonl").read() == []


def test_lines_longer_than_a_read_chunk_still_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(events_module, "READ_CHUNK_BYTES", 64)
    path = tmp_path / "events.jsonl"
    long = line("failed", error="x" * 500)
    path.write_bytes(line("started") + long + long[:100])
    reader = EventReader(path)
    assert names(reader.read()) == ["started", "failed"]
    assert reader.read() == []  # the torn long line waits
    with open(path, "ab") as handle:
        handle.write(long[100:])
    assert [len(e.get("error")) for e in reader.read()] == [500]


def test_a_line_over_the_cap_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(events_module, "READ_CHUNK_BYTES", 64)
    monkeypatch.setattr(events_module, "MAX_LINE_BYTES", 200)
    path = tmp_path / "events.jsonl"
    path.write_bytes(line("failed", error="x" * 500) + line("promoted"))
    reader = EventReader(path)
    assert names(reader.read()) == ["promoted"]
    assert reader.skipped == 1


def test_read_with_max_bytes_reads_whole_lines_in_bounded_steps(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(line("started", partition=f"p{i}") for i in range(100)))
    reader = EventReader(path)
    first = reader.read(max_bytes=1)
    assert len(first) == 100  # one chunk holds them all: at least a chunk is read
    assert reader.read(max_bytes=1) == []


def test_reads_what_runlog_writes(tmp_path: Path):
    log = RunLog(tmp_path, "20250101T000000Z-1")
    log.emit("run_started", stages=["s"], partitions=1, pid=1)
    log.emit("promoted", stage="s", partition="p", attempt=1, usage={"cost_usd": 0.5})
    log.close()
    found = EventReader(log.path).read()
    assert names(found) == ["run_started", "promoted"]
    assert found[1].get("usage") == {"cost_usd": 0.5} and found[1].run_id == "20250101T000000Z-1"


def test_follow_yields_events_as_they_arrive_and_ends_at_run_finished(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(line("run_started"))

    def write() -> None:
        for data in (line("started"), line("promoted")[:10], line("promoted")[10:], line("run_finished")):
            time.sleep(0.02)
            with open(path, "ab") as handle:
                handle.write(data)

    writer = threading.Thread(target=write)
    writer.start()
    seen = names(list(EventReader(path).follow(poll_s=0.005, timeout_s=10)))
    writer.join()
    assert seen == ["run_started", "started", "promoted", "run_finished"]


def test_follow_ends_when_stop_is_true_after_yielding_what_is_on_disk(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(line("run_started") + line("started"))
    calls = []

    def stop() -> bool:
        calls.append(1)
        return True

    assert names(list(EventReader(path).follow(poll_s=0.005, stop=stop))) == ["run_started", "started"]
    assert calls == [1]


def test_follow_ends_after_timeout_s_without_new_events(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(line("run_started"))
    started = time.monotonic()
    assert names(list(EventReader(path).follow(poll_s=0.01, timeout_s=0.1))) == ["run_started"]
    assert 0.1 <= time.monotonic() - started < 5


def write_run(root: Path, run_id: str, *lines: bytes) -> Path:
    run_dir = root / "wip" / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_bytes(b"".join(lines))
    return run_dir


def dead_pid() -> int:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(child.stdout)


def test_list_runs_tells_finished_live_and_killed_runs_apart(tmp_path: Path):
    now = time.time()
    write_run(
        tmp_path,
        "20250101T000000Z-1",
        line("run_started", pid=os.getpid(), stages=["s"], partitions=3, ts=now),
        line("run_finished", ok=True),
    )
    write_run(tmp_path, "20250101T000001Z-2", line("run_started", pid=os.getpid(), stages=["s"], ts=now))
    write_run(tmp_path, "20250101T000002Z-3", line("run_started", pid=dead_pid(), ts=now))
    finished, live, killed = list_runs(tmp_path)
    assert (finished.finished, finished.alive, finished.partitions, finished.stages) == (
        True,
        False,
        3,
        ("s",),
    )
    assert (live.finished, live.alive, live.pid) == (False, True, os.getpid())
    assert (killed.finished, killed.alive) == (False, False)
    assert latest_run(tmp_path) == killed
    assert killed.events_path == tmp_path / "wip/runs/20250101T000002Z-3/events.jsonl"


def test_a_reused_pid_does_not_make_a_killed_run_alive(tmp_path: Path):
    # the run started long before this test process (which now has its pid)
    write_run(tmp_path, "20000101T000000Z-9", line("run_started", pid=os.getpid(), ts=946684800.0))
    (run,) = list_runs(tmp_path)
    assert not run.alive
    assert is_process_alive(os.getpid()) and is_process_alive(os.getpid(), time.time())


def test_a_run_without_a_readable_log_takes_its_pid_from_the_run_id(tmp_path: Path):
    (tmp_path / "wip" / "runs" / f"20250101T000000Z-{os.getpid()}").mkdir(parents=True)
    (run,) = list_runs(tmp_path)
    assert (run.pid, run.started_at, run.finished, run.alive) == (os.getpid(), None, False, True)


def test_a_project_that_never_ran_has_no_runs(tmp_path: Path):
    assert list_runs(tmp_path) == [] and latest_run(tmp_path) is None
