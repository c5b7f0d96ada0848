"""A run's records (orch.store.runlog): events.jsonl and wip/notes.md."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orch.redact import Redactor
from orch.store.runlog import RunLog, new_run_id, read_events

RUN_ID = "20250101T000000Z-42"


@pytest.fixture
def log(tmp_path: Path) -> Iterator[RunLog]:
    run_log = RunLog(tmp_path, RUN_ID)
    try:
        yield run_log
    finally:
        run_log.close()


def test_new_run_id_is_sortable_utc_time_and_pid():
    assert re.fullmatch(r"\d{8}T\d{6}Z-\d+", new_run_id())


def test_events_go_to_wip_runs_run_id(tmp_path: Path, log: RunLog):
    assert log.path == tmp_path / "wip" / "runs" / RUN_ID / "events.jsonl"
    assert log.path.exists()


def test_emit_writes_one_flushed_json_line_per_event(log: RunLog):
    before = time.time()
    log.emit("started", stage="research", partition="p1", attempt=1)
    log.emit("promoted", stage="research", partition="p1", path=Path("data/p1"))
    # Read through another handle before close: the lines are already on disk.
    lines = log.path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert before - 1 <= first["ts"] <= time.time() + 1
    assert {k: v for k, v in first.items() if k != "ts"} == {
        "event": "started",
        "run_id": RUN_ID,
        "stage": "research",
        "partition": "p1",
        "attempt": 1,
    }
    assert second["event"] == "promoted" and second["path"] == "data/p1"
    assert list(first) == sorted(first)


def test_emit_returns_the_record_and_calls_every_sink(tmp_path: Path):
    seen_a: list[dict[str, Any]] = []
    seen_b: list[str] = []
    run_log = RunLog(tmp_path, RUN_ID, sinks=[seen_a.append, lambda r: seen_b.append(r["event"])])
    try:
        record = run_log.emit("failed", partition="p1", error="exit 3")
        run_log.emit("barrier", stage="research")
    finally:
        run_log.close()
    assert seen_a[0] is record
    assert record["event"] == "failed" and record["error"] == "exit 3" and record["run_id"] == RUN_ID
    assert seen_b == ["failed", "barrier"]
    assert read_events(run_log.path) == seen_a


def test_emit_keeps_non_ascii_text(log: RunLog):
    log.emit("started", partition="电动车")
    assert "电动车" in log.path.read_text(encoding="utf-8")
    assert read_events(log.path)[0]["partition"] == "电动车"


def test_a_second_runlog_of_the_same_run_appends(tmp_path: Path):
    for event in ("started", "promoted"):
        run_log = RunLog(tmp_path, RUN_ID)
        run_log.emit(event)
        run_log.close()
    assert [e["event"] for e in read_events(tmp_path / "wip" / "runs" / RUN_ID / "events.jsonl")] == [
        "started",
        "promoted",
    ]


HEADING = re.compile(rf"\n## \d{{4}}-\d\d-\d\d \d\d:\d\d UTC · run {RUN_ID} · (.+)\n\n")


def test_note_writes_the_heading_once_per_run_then_lines(tmp_path: Path, log: RunLog):
    log.note("- research/p1: timeout after 20m   \n", "stage research: 2 failed")
    log.note("- research/p2: exit 3", "ignored: the heading is written once")
    text = (tmp_path / "wip" / "notes.md").read_text(encoding="utf-8")
    match = HEADING.match(text)
    assert match is not None, text
    assert match.group(1) == "stage research: 2 failed"
    assert text[match.end() :] == "- research/p1: timeout after 20m\n- research/p2: exit 3\n"
    assert text.count("## ") == 1


def test_each_run_gets_its_own_heading_appended(tmp_path: Path):
    (tmp_path / "wip").mkdir()
    (tmp_path / "wip" / "notes.md").write_text("# Notes\n", encoding="utf-8")
    for run_id in ("run-a", "run-b"):
        run_log = RunLog(tmp_path, run_id)
        run_log.note(f"- failure in {run_id}", "failures")
        run_log.close()
    text = (tmp_path / "wip" / "notes.md").read_text(encoding="utf-8")
    assert text.startswith("# Notes\n\n## ")
    assert re.findall(r"^## .* · run (\S+) · failures$", text, re.MULTILINE) == ["run-a", "run-b"]
    assert text.endswith("· run run-b · failures\n\n- failure in run-b\n")
    assert text.index("- failure in run-a") < text.index("· run run-b ·")


def test_read_events_skips_a_torn_last_line(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    good = [{"event": "started", "n": 1}, {"event": "promoted", "n": 2}]
    path.write_text("".join(json.dumps(e) + "\n" for e in good) + '{"event": "fai', encoding="utf-8")
    assert read_events(path) == good


def test_read_events_of_an_empty_file(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_text("")
    assert read_events(path) == []


def test_read_events_skips_a_line_torn_inside_a_utf8_character(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    good = json.dumps({"event": "started", "partition": "电动车"}, ensure_ascii=False) + "\n"
    torn = '{"event": "failed", "partition": "电'.encode()[:-1]
    path.write_bytes(good.encode() + torn)
    assert read_events(path) == [{"event": "started", "partition": "电动车"}]


def test_an_event_with_numbers_no_json_writer_accepts_is_still_written(log: RunLog):
    log.emit("promoted", usage={"input_tokens": 2**70, "cost_usd": float("nan"), "n": -(2**64)})
    (event,) = read_events(log.path)
    assert event["usage"] == {
        "input_tokens": "<integer of 71 bits>",
        "cost_usd": None,
        "n": "<integer of 65 bits>",
    }


def test_secrets_are_redacted_from_events_and_notes(tmp_path: Path):
    secret = "sk-live-0123456789abcdef"
    run_log = RunLog(tmp_path, RUN_ID, redactor=Redactor({"OPENAI_API_KEY": secret}))
    try:
        run_log.emit("failed", error=f"HTTP 401: bad key {secret}", extra={secret: [secret]})
        run_log.note(f"- p1: HTTP 401: bad key {secret}", "work")
    finally:
        run_log.close()
    (event,) = read_events(run_log.path)
    assert event["error"] == "HTTP 401: bad key [redacted OPENAI_API_KEY]"
    assert event["extra"] == {"[redacted OPENAI_API_KEY]": ["[redacted OPENAI_API_KEY]"]}
    notes = (tmp_path / "wip" / "notes.md").read_text()
    assert secret not in notes and "bad key [redacted OPENAI_API_KEY]" in notes
