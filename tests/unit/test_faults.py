"""Faults in orch's own path (orch.store.faults) and records that must not fail a run (orch.store.runlog)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from orch.store.faults import describe, error_class_of, is_disk_fault, traceback_of
from orch.store.runlog import RunLog


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_full_read_only_or_forbidden_disks_are_disk_faults(code: int) -> None:
    err = OSError(code, "no", "/p/data/x")
    assert is_disk_fault(err)
    assert error_class_of(err) == "disk"
    assert describe(err).endswith(": '/p/data/x'")


@pytest.mark.parametrize("err", [OSError(errno.ELOOP, "loop"), TypeError("Integer exceeds 64-bit range")])
def test_other_exceptions_are_internal(err: Exception) -> None:
    assert error_class_of(err) == "internal"


def test_traceback_of_keeps_the_end_of_a_long_traceback() -> None:
    try:
        raise ValueError("x" * 50_000)
    except ValueError as err:
        text = traceback_of(err)
    assert len(text) == 20_000
    assert text.endswith("x\n")


def test_a_failing_event_file_or_sink_loses_records_not_the_run(tmp_path: Path) -> None:
    seen: list[str] = []

    def closed_terminal(record: dict[str, object]) -> None:
        seen.append(str(record["event"]))
        raise OSError(errno.EIO, "Input/output error")

    log = RunLog(tmp_path, "r1", [closed_terminal])
    log._handle.close()  # every later write raises, as on a full disk
    log.emit("started", tokens=2**70, name="bad-\udcff")
    log.note("- a failure", "failures")
    log.close()
    assert seen == ["started"]
    assert log.write_error is not None


def test_a_run_log_under_an_unwritable_wip_still_takes_events(tmp_path: Path) -> None:
    (tmp_path / "wip").write_text("a file where wip/ should be")
    log = RunLog(tmp_path, "r1")
    log.emit("started")
    log.note("- a failure", "failures")
    log.close()
    assert isinstance(log.write_error, OSError)
