"""Workspace: what `child.read()` in a fan-in blueprint may inline (issue 10, items 1 and 6)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import orch.config.workspace
from orch.config.partitions import Partition
from orch.config.workspace import InputView
from orch.errors import BlueprintError


def view(root: Path) -> InputView:
    partition = Partition(stage="s", id="a", params={}, row={}, out_dir="data/s/a", source="r.yaml:1")
    (root / "data/s/a").mkdir(parents=True)
    return InputView(root, partition, None)


def read_error(child: InputView, name: str) -> str:
    with pytest.raises(BlueprintError) as info:
        child.read(name)
    return info.value.message


def test_read_inlines_a_regular_file_with_text_mode_newlines(tmp_path):
    child = view(tmp_path)
    (tmp_path / "data/s/a/out.md").write_bytes(b"## Result\r\nok\n")
    assert child.read("out.md") == "## Result\nok\n"


def test_read_stays_inside_the_partition_directory(tmp_path):
    child = view(tmp_path)
    (tmp_path / "orch.yaml").write_text("secret\n")
    os.symlink(tmp_path / "orch.yaml", tmp_path / "data/s/a/link.md")
    for name in ("../../../orch.yaml", "link.md", str(tmp_path / "orch.yaml")):
        assert read_error(child, name) == (
            f"INPUTS: cannot read {name!r} of partition a (stage s): "
            "the file lies outside the partition directory"
        )


def test_read_refuses_a_fifo_without_waiting(tmp_path):
    child = view(tmp_path)
    os.mkfifo(tmp_path / "data/s/a/out.md")
    assert read_error(child, "out.md").endswith("not a regular file")


def test_read_refuses_a_file_past_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(orch.config.workspace, "MAX_INPUT_BYTES", 10)
    child = view(tmp_path)
    (tmp_path / "data/s/a/out.md").write_text("x" * 11)
    assert read_error(child, "out.md").endswith("larger than 10 bytes, the bound for inlining an input")
