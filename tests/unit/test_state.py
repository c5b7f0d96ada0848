"""On-disk state (orch.store.state): manifests, atomic writes, promotion, archives, locks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from orch.store.state import (
    Manifest,
    OutputFile,
    PartitionLock,
    archive_attempt,
    collect_outputs,
    is_locked,
    output_fingerprint,
    promote,
    read_manifest,
    staging_dir,
    write_atomic,
)

SRC = Path(__file__).parents[2] / "src"


def make_manifest(**changes: object) -> Manifest:
    manifest = Manifest(
        stage="research",
        partition="p1",
        fingerprint="sha256:" + "a" * 64,
        parts={"prompt": "sha256:p", "agent": "sha256:a", "expect": "sha256:e", "inputs": {}},
        output_fingerprint="sha256:" + "b" * 64,
        attempt=2,
        attempts=[
            {"n": 1, "outcome": "failed", "error": "timeout after 1s", "error_class": "timeout"},
            {"n": 2, "outcome": "promoted", "error": None, "error_class": None},
        ],
        agent={"name": "offline", "backend": "rehearsal"},
        outputs=[OutputFile("findings.md", 12, 1_700_000_000_123_456_789, "c" * 64)],
        usage={"input_tokens": 10, "output_tokens": 5, "cost_usd": 0.01},
        run_id="20250101T000000Z-1",
        started_at=1_700_000_000.5,
        finished_at=1_700_000_002.75,
    )
    return replace(manifest, **changes)  # type: ignore[arg-type]


def write_manifest_file(directory: Path, text: str) -> None:
    (directory / ".orch").mkdir(parents=True, exist_ok=True)
    (directory / ".orch" / "manifest.json").write_text(text, encoding="utf-8")


# Manifest serialization


def test_to_json_is_byte_identical_for_equal_manifests():
    assert make_manifest().to_json() == make_manifest().to_json()


def test_to_json_sorts_keys_at_every_level_and_adds_duration():
    text = make_manifest(parts={"z": 1, "a": {"y": 2, "b": 3}}).to_json()
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert list(data["parts"]) == ["a", "z"]
    assert list(data["parts"]["a"]) == ["b", "y"]
    assert list(data["outputs"][0]) == ["bytes", "mtime_ns", "path", "sha256"]
    assert data["duration_s"] == 2.25
    assert text.endswith("}\n")
    assert '\n  "agent": {' in text  # 2-space indent


def test_manifest_round_trips_through_disk(tmp_path: Path):
    manifest = make_manifest()
    write_manifest_file(tmp_path, manifest.to_json())
    loaded = read_manifest(tmp_path)
    assert loaded == manifest
    assert loaded is not None and loaded.to_json() == manifest.to_json()
    assert loaded.known_outputs() == {"findings.md": (12, 1_700_000_000_123_456_789)}


def test_read_manifest_accepts_a_str_path(tmp_path: Path):
    write_manifest_file(tmp_path, make_manifest().to_json())
    assert read_manifest(str(tmp_path)) == make_manifest()


def test_read_manifest_missing_directory_or_file(tmp_path: Path):
    assert read_manifest(tmp_path / "nope") is None
    (tmp_path / "empty" / ".orch").mkdir(parents=True)
    assert read_manifest(tmp_path / "empty") is None


def _without(key: str) -> str:
    data = json.loads(make_manifest().to_json())
    del data[key]
    return json.dumps(data)


def _with(key: str, value: object) -> str:
    data = json.loads(make_manifest().to_json())
    data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("{not json", id="not-json"),
        pytest.param(make_manifest().to_json()[:-20], id="truncated"),
        pytest.param("[1, 2]", id="a-list"),
        pytest.param(_with("version", 2), id="wrong-version"),
        pytest.param(_without("version"), id="no-version"),
        pytest.param(_with("status", "running"), id="status-running"),
        pytest.param(_without("status"), id="no-status"),
        pytest.param(_without("fingerprint"), id="missing-fingerprint"),
        pytest.param(_without("outputs"), id="missing-outputs"),
        pytest.param(_with("outputs", [{"path": "a.md"}]), id="output-missing-keys"),
        pytest.param(_with("surprise", 1), id="unknown-key"),
    ],
)
def test_read_manifest_rejects_invalid(tmp_path: Path, text: str):
    write_manifest_file(tmp_path, text)
    assert read_manifest(tmp_path) is None


def test_read_manifest_rejects_non_utf8(tmp_path: Path):
    (tmp_path / ".orch").mkdir()
    (tmp_path / ".orch" / "manifest.json").write_bytes(b'{"version": 1, "x": "\xff"}')
    assert read_manifest(tmp_path) is None


# write_atomic


def test_write_atomic_creates_parents_and_leaves_no_temp_file(tmp_path: Path):
    target = tmp_path / "a" / "b" / "notes.json"
    write_atomic(target, "one\n")
    write_atomic(target, "two\n")
    assert target.read_text() == "two\n"
    assert os.listdir(target.parent) == ["notes.json"]


# promote


def make_staging(out_dir: Path, attempt: int, files: dict[str, str]) -> Path:
    staging = staging_dir(out_dir, attempt)
    (staging / ".orch").mkdir(parents=True)
    (staging / ".orch" / "prompt.md").write_text("prompt\n")
    for name, text in files.items():
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return staging


def test_staging_dir_is_a_hidden_sibling(tmp_path: Path):
    assert staging_dir(tmp_path / "data" / "p1", 3) == tmp_path / "data" / ".p1.attempt-3"


def test_promote_renames_staging_into_place_with_manifest(tmp_path: Path):
    out_dir = tmp_path / "data" / "research" / "p1"
    staging = make_staging(out_dir, 2, {"findings.md": "## Summary\n", "sub/x.json": "{}"})
    manifest = make_manifest()
    promote(tmp_path, staging, out_dir, manifest)
    assert not staging.exists()
    assert sorted(os.listdir(out_dir.parent)) == ["p1"]
    assert (out_dir / "findings.md").read_text() == "## Summary\n"
    assert (out_dir / "sub" / "x.json").read_text() == "{}"
    assert (out_dir / ".orch" / "prompt.md").read_text() == "prompt\n"
    assert (out_dir / ".orch" / "manifest.json").read_text() == manifest.to_json()
    assert read_manifest(out_dir) == manifest
    assert not (tmp_path / "wip").exists()


def test_promote_archives_the_previous_partition_under_its_attempt(tmp_path: Path):
    out_dir = tmp_path / "data" / "research" / "p1"
    promote(tmp_path, make_staging(out_dir, 2, {"findings.md": "old\n"}), out_dir, make_manifest(attempt=2))
    new = make_manifest(attempt=5, run_id="second")
    promote(tmp_path, make_staging(out_dir, 5, {"findings.md": "new\n"}), out_dir, new)

    assert read_manifest(out_dir) == new
    assert (out_dir / "findings.md").read_text() == "new\n"
    archived = tmp_path / "wip" / "attempts" / "research" / "p1" / "2"
    assert (archived / "findings.md").read_text() == "old\n"
    old = read_manifest(archived)
    assert old is not None and old.attempt == 2
    assert sorted(os.listdir(out_dir.parent)) == ["p1"]


def test_promote_archives_a_directory_without_manifest_and_keeps_it(tmp_path: Path):
    out_dir = tmp_path / "data" / "research" / "p1"
    out_dir.mkdir(parents=True)
    (out_dir / "hand-made.md").write_text("keep me\n")
    promote(tmp_path, make_staging(out_dir, 1, {"findings.md": "x\n"}), out_dir, make_manifest(attempt=1))
    assert read_manifest(out_dir) == make_manifest(attempt=1)
    attempts = tmp_path / "wip" / "attempts" / "research" / "p1"
    [kept] = list(attempts.iterdir())
    assert (kept / "hand-made.md").read_text() == "keep me\n"


def test_promote_does_not_overwrite_an_existing_archive(tmp_path: Path):
    out_dir = tmp_path / "data" / "research" / "p1"
    taken = tmp_path / "wip" / "attempts" / "research" / "p1" / "2"
    taken.mkdir(parents=True)
    (taken / "earlier.md").write_text("earlier\n")
    promote(tmp_path, make_staging(out_dir, 2, {"findings.md": "old\n"}), out_dir, make_manifest(attempt=2))
    promote(tmp_path, make_staging(out_dir, 3, {"findings.md": "new\n"}), out_dir, make_manifest(attempt=3))
    assert (taken / "earlier.md").read_text() == "earlier\n"
    [replaced] = [p for p in taken.parent.iterdir() if p.name != "2"]
    assert replaced.name.startswith("2-replaced-")
    assert (replaced / "findings.md").read_text() == "old\n"


# archive_attempt


def test_archive_attempt_writes_error_and_moves_staging(tmp_path: Path):
    out_dir = tmp_path / "data" / "research" / "p1"
    staging = make_staging(out_dir, 4, {"partial.md": "half"})
    error = {"n": 4, "error": "timeout after 20m", "error_class": "timeout"}
    dest = archive_attempt(tmp_path, "research", "p1", staging, error)
    assert dest == tmp_path / "wip" / "attempts" / "research" / "p1" / "4"
    assert not staging.exists()
    assert (dest / "partial.md").read_text() == "half"
    assert (dest / ".orch" / "error.json").read_text() == json.dumps(error, indent=2, sort_keys=True) + "\n"


def test_archive_attempt_creates_the_orch_dir_if_absent(tmp_path: Path):
    staging = tmp_path / "data" / ".p1.attempt-1"
    staging.mkdir(parents=True)
    dest = archive_attempt(tmp_path, "research", "p1", staging, {"n": 1, "error": "exit 3"})
    assert json.loads((dest / ".orch" / "error.json").read_text()) == {"n": 1, "error": "exit 3"}


def test_archive_attempt_with_the_same_number_keeps_the_first(tmp_path: Path):
    out_dir = tmp_path / "data" / "research" / "p1"
    first = archive_attempt(tmp_path, "research", "p1", make_staging(out_dir, 1, {"a": "first"}), {"n": 1})
    second = archive_attempt(tmp_path, "research", "p1", make_staging(out_dir, 1, {"a": "second"}), {"n": 1})
    assert first.name == "1"
    assert second != first and second.name.startswith("1-")
    assert (first / "a").read_text() == "first"
    assert (second / "a").read_text() == "second"


# collect_outputs and output_fingerprint


def test_collect_outputs_skips_orch_and_symlinks_sorted_with_sha256(tmp_path: Path):
    part = tmp_path / "p1"
    (part / ".orch").mkdir(parents=True)
    (part / ".orch" / "manifest.json").write_text("{}")
    (part / "b.md").write_text("bee")
    (part / "a" / "z.json").parent.mkdir()
    (part / "a" / "z.json").write_text("{}")
    (part / "link.md").symlink_to(part / "b.md")
    (part / "linkdir").symlink_to(part / "a")
    outputs = collect_outputs(part)
    assert [o.path for o in outputs] == ["a/z.json", "b.md"]
    b = outputs[1]
    st = (part / "b.md").stat()
    assert b == OutputFile("b.md", 3, st.st_mtime_ns, hashlib.sha256(b"bee").hexdigest())


def test_output_fingerprint_changes_iff_content_changes(tmp_path: Path):
    part = tmp_path / "p1"
    part.mkdir()
    (part / "a.md").write_text("one")
    base = output_fingerprint("sha256:f", collect_outputs(part))
    assert base.startswith("sha256:") and len(base) == 7 + 64

    os.utime(part / "a.md", ns=(1, 1))  # a new mtime, same bytes
    assert output_fingerprint("sha256:f", collect_outputs(part)) == base

    (part / "a.md").write_text("two")
    changed = output_fingerprint("sha256:f", collect_outputs(part))
    assert changed != base

    (part / "a.md").write_text("one")
    assert output_fingerprint("sha256:f", collect_outputs(part)) == base
    assert output_fingerprint("sha256:g", collect_outputs(part)) != base


# PartitionLock


def test_lock_is_exclusive_until_released(tmp_path: Path):
    first = PartitionLock(tmp_path, "research", "p1")
    second = PartitionLock(tmp_path, "research", "p1")
    assert not is_locked(tmp_path, "research", "p1")
    assert first.try_acquire() is True
    try:
        assert (tmp_path / "wip" / "locks" / "research" / "p1.lock").exists()
        assert second.try_acquire() is False
        assert is_locked(tmp_path, "research", "p1")
        assert not is_locked(tmp_path, "research", "p2")
        other = PartitionLock(tmp_path, "research", "p2")
        assert other.try_acquire() is True
        other.release()
    finally:
        first.release()
    assert not is_locked(tmp_path, "research", "p1")
    assert second.try_acquire() is True
    second.release()
    second.release()  # releasing twice is harmless
    assert not is_locked(tmp_path, "research", "p1")


def test_lock_held_by_a_killed_process_is_free(tmp_path: Path):
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from orch.store.state import PartitionLock\n"
        "lock = PartitionLock(Path(sys.argv[1]), 'research', 'p1')\n"
        "assert lock.try_acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "locked\n"
        assert is_locked(tmp_path, "research", "p1")
        assert PartitionLock(tmp_path, "research", "p1").try_acquire() is False
        child.kill()  # SIGKILL
        child.wait(timeout=10)
        deadline = time.monotonic() + 5
        while is_locked(tmp_path, "research", "p1") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not is_locked(tmp_path, "research", "p1")
    finally:
        child.kill()
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()


def test_promote_many_commits_a_batch_and_isolates_a_failing_item(tmp_path: Path):
    from orch.store.state import promote_many

    items = []
    for pid in ("p1", "p2"):
        staging = tmp_path / "data" / f".{pid}.attempt-1"
        (staging / ".orch").mkdir(parents=True)
        (staging / "out.md").write_text(f"## Result {pid}\n")
        items.append((staging, tmp_path / "data" / pid, make_manifest(partition=pid)))
    missing = tmp_path / "data" / ".p3.attempt-1"  # vanished before promotion
    items.append((missing, tmp_path / "data" / "p3", make_manifest(partition="p3")))

    errors = promote_many(tmp_path, items)

    assert errors[:2] == [None, None]
    assert isinstance(errors[2], OSError)
    for pid in ("p1", "p2"):
        assert read_manifest(tmp_path / "data" / pid).partition == pid
        assert (tmp_path / "data" / pid / "out.md").read_text() == f"## Result {pid}\n"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["p1", "p2"]


# hostile staging directories: findings, not crashes; nothing written through a link


def test_scan_outputs_refuses_names_that_are_not_utf8_fifos_sockets_and_deep_trees(tmp_path: Path):
    import socket

    from orch.store.checks import Finding
    from orch.store.state import scan_outputs

    part = tmp_path / "p1"
    (part / ".orch").mkdir(parents=True)
    (part / "ok.md").write_text("fine")
    with open(os.path.join(os.fsencode(part), b"bad-\xff.txt"), "w") as handle:
        handle.write("x")
    os.mkfifo(part / "pipe")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(part / "sock"))
    deep = part / "/".join(["d"] * 70)
    deep.mkdir(parents=True)
    try:
        findings, outputs = scan_outputs(part)
    finally:
        server.close()
    assert outputs == []
    assert findings == [
        Finding("bad-\\xff.txt", "name", "file name is not valid UTF-8; rename it"),
        Finding("/".join(["d"] * 64), "depth", "directories nested deeper than 64 levels"),
        Finding("pipe", "special", "not a regular file (FIFO, socket or device); remove it"),
        Finding("sock", "special", "not a regular file (FIFO, socket or device); remove it"),
    ]


def test_scan_outputs_of_a_removed_directory_is_a_finding(tmp_path: Path):
    from orch.store.state import scan_outputs

    [finding], outputs = scan_outputs(tmp_path / "gone")
    assert (finding.file, finding.rule, outputs) == (".", "exists", [])


def test_hash_file_never_follows_a_symlink_nor_opens_a_fifo(tmp_path: Path):
    from orch.store.state import hash_file

    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(OSError):
        hash_file(tmp_path / "link")
    with pytest.raises(OSError, match="not a regular file"):
        hash_file(tmp_path / "pipe")


@pytest.mark.parametrize("name", ["manifest.json", "agent.log", "prompt.md", "error.json"])
def test_check_staging_finds_orch_files_replaced_by_links(tmp_path: Path, name: str):
    from orch.store.state import check_staging

    staging = tmp_path / ".p1.attempt-1"
    (staging / ".orch").mkdir(parents=True)
    (staging / ".orch" / name).symlink_to(tmp_path / "outside")
    [finding] = check_staging(staging)
    assert (finding.file, finding.rule) == (f".orch/{name}", "meta")


def test_write_meta_refuses_an_orch_dir_replaced_by_a_link(tmp_path: Path):
    from orch.store.state import UnsafeMetadata, write_meta

    outside = tmp_path / "outside"
    outside.mkdir()
    staging = tmp_path / ".p1.attempt-1"
    staging.mkdir()
    (staging / ".orch").symlink_to(outside)
    with pytest.raises(UnsafeMetadata):
        write_meta(staging, "manifest.json", b"{}")
    assert os.listdir(outside) == []


def test_write_meta_replaces_a_planted_symlink_or_hard_link_never_writing_through_it(tmp_path: Path):
    from orch.store.state import write_meta

    secret = tmp_path / "secret.txt"
    secret.write_text("keep")
    staging = tmp_path / ".p1.attempt-1"
    (staging / ".orch").mkdir(parents=True)
    (staging / ".orch" / "manifest.json").symlink_to(secret)
    os.link(secret, staging / ".orch" / "error.json")
    write_meta(staging, "manifest.json", b"{}")
    write_meta(staging, "error.json", b"[]")
    assert secret.read_text() == "keep"
    assert (staging / ".orch" / "manifest.json").read_bytes() == b"{}"
    assert not (staging / ".orch" / "manifest.json").is_symlink()
    assert (staging / ".orch" / "error.json").read_bytes() == b"[]"


def test_archive_attempt_moves_a_linked_orch_aside_and_writes_nothing_through_it(tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    staging = tmp_path / "data" / ".p1.attempt-2"
    staging.mkdir(parents=True)
    (staging / ".orch").symlink_to(outside)
    dest = archive_attempt(tmp_path, "research", "p1", staging, {"n": 2, "error": "meta"})
    assert os.listdir(outside) == []
    assert json.loads((dest / ".orch" / "error.json").read_text()) == {"n": 2, "error": "meta"}
    [aside] = [n for n in os.listdir(dest) if n.startswith(".orch.agent-")]
    assert (dest / aside).is_symlink()


def test_archive_attempt_of_a_staging_dir_the_agent_removed(tmp_path: Path):
    staging = tmp_path / "data" / ".p1.attempt-3"
    dest = archive_attempt(tmp_path, "research", "p1", staging, {"n": 3, "error": "gone"})
    assert dest == tmp_path / "wip" / "attempts" / "research" / "p1" / "3"
    assert json.loads((dest / ".orch" / "error.json").read_text())["error"] == "gone"


def test_archive_attempt_of_a_staging_dir_replaced_by_a_link(tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    staging = tmp_path / "data" / ".p1.attempt-4"
    staging.parent.mkdir(parents=True)
    staging.symlink_to(outside)
    dest = archive_attempt(tmp_path, "research", "p1", staging, {"n": 4})
    assert os.listdir(outside) == []
    assert not os.path.lexists(staging)
    assert (dest / "staging-not-a-directory").is_symlink()
    assert (dest / ".orch" / "error.json").exists()


def test_promote_many_fails_only_the_item_whose_manifest_cannot_be_written(tmp_path: Path):
    from orch.store.state import promote_many

    data = tmp_path / "data" / "research"
    good = make_staging(data / "p1", 1, {"a.md": "a"})
    bad = make_staging(data / "p2", 1, {"b.md": "b"})
    (bad / ".orch").rename(bad / "meta-gone")  # the manifest's directory is gone; a file blocks it
    (bad / ".orch").write_text("not a directory")
    manifest = make_manifest(partition="p2")
    errors = promote_many(tmp_path, [(bad, data / "p2", manifest), (good, data / "p1", make_manifest())])
    assert isinstance(errors[0], OSError) and errors[1] is None
    assert read_manifest(data / "p1") is not None
    assert not (data / "p2").exists() and bad.exists()


def test_a_held_lock_survives_its_deleted_lock_file(tmp_path: Path):
    first = PartitionLock(tmp_path, "research", "p1")
    assert first.try_acquire() is True
    try:
        shutil.rmtree(tmp_path / "wip")
        second = PartitionLock(tmp_path, "research", "p1")
        assert second.try_acquire() is False  # the name lock still excludes
        assert is_locked(tmp_path, "research", "p1")
        assert first.verify() == "restored"
        assert (tmp_path / "wip/locks/research/p1.lock").exists()
        assert first.verify() == "ok"
        assert second.try_acquire() is False
    finally:
        first.release()
    assert second.try_acquire() is True
    second.release()


def test_verify_reports_a_lock_file_another_process_took(tmp_path: Path):
    import filelock

    first = PartitionLock(tmp_path, "research", "p1")
    assert first.try_acquire() is True
    try:
        (tmp_path / "wip/locks/research/p1.lock").unlink()
        old_orch = filelock.FileLock(str(tmp_path / "wip/locks/research/p1.lock"), is_singleton=False)
        old_orch.acquire(timeout=0)  # an orch without name locks takes the new file
        try:
            assert first.verify() == "lost"
        finally:
            old_orch.release()
    finally:
        first.release()


def test_is_locked_sees_the_name_lock_without_a_lock_file(tmp_path: Path):
    lock = PartitionLock(tmp_path, "research", "p1")
    assert lock.try_acquire() is True
    (tmp_path / "wip/locks/research/p1.lock").unlink()
    assert is_locked(tmp_path, "research", "p1")
    lock.release()
    assert not is_locked(tmp_path, "research", "p1")
