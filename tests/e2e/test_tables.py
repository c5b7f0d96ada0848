"""Tables at 80 columns, through the real CLI: on a terminal (a pty) every line fits and no id
is split mid-word; on a pipe the rows stay whole, one per line, whatever COLUMNS says."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

import pytest

from orch.observe.views import column_widths

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
IDS = [
    "2.2_coordinate_central_and_local_government",
    "1.4_allocate_capital_to_priority_sectors",
    "9.1_x",
]


def orch_on_tty(project, *args: str, columns: int = 80) -> tuple[int, list[str]]:
    """Run the real CLI with stdout on a pty `columns` wide; return (exit code, lines without ANSI)."""
    master, slave = pty.openpty()
    env = {**project.env(), "COLUMNS": str(columns), "LINES": "200", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orch", *args],
        cwd=project.root,
        env=env,
        stdout=slave,
        stderr=subprocess.DEVNULL,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the pty
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    code = proc.wait(timeout=60)
    text = ANSI.sub("", b"".join(chunks).decode())
    return code, [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]


@pytest.fixture
def project(make_project):
    """A stage `deep_research` over long ids; one output stale by a blueprint edit, one failed."""
    project = make_project(n_items=0)
    project.write("references/items.yaml", "items:\n" + "".join(f"  - ITEM_ID: {i}\n" for i in IDS))
    config = (project.root / "orch.yaml").read_text().replace("  work:\n", "  deep_research:\n")
    project.write("orch.yaml", config)
    project.script({"default": {"action": "succeed"}, IDS[2]: {"action": "fail", "exit": 3}})
    project.orch("stage", "run", "deep_research")
    project.write("agents/work.md", (project.root / "agents/work.md").read_text() + "More.\n")
    return project


@pytest.mark.parametrize(
    "args", [("plan", "deep_research"), ("status", "deep_research"), ("status",), ("stage", "list")]
)
def test_terminal_tables_fit_80_columns_and_never_split_an_id(project, args):
    code, lines = orch_on_tty(project, *args)
    assert code == 0, lines
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    names = IDS if args[0] != "stage" and len(args) > 1 else ["deep_research"]
    for name in names:
        assert any(line.split() and line.split()[0] == name for line in lines), "\n".join(lines)
    assert not any(line.split() and line.split()[0] in ("deep_res", "earch") for line in lines)


def test_a_column_that_cannot_fit_is_named_in_the_caption(project):
    code, lines = orch_on_tty(project, "plan", "deep_research")
    assert code == 0
    assert "not shown at this width: output (see --json)" in lines
    code, wide = orch_on_tty(project, "plan", "deep_research", columns=200)
    assert not any("not shown" in line for line in wide)
    assert any(line.split()[-1:] == [f"data/work/{IDS[0]}"] for line in wide)


def test_pipes_get_whole_rows_one_per_line_whatever_columns_says(project):
    env_columns = {**project.env(), "COLUMNS": "80"}
    result = subprocess.run(
        [sys.executable, "-m", "orch", "plan", "deep_research"],
        cwd=project.root,
        env=env_columns,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    *rows, summary = result.stdout.splitlines()[2:]
    assert summary.startswith("3 to run · 0 up to date")
    assert sorted(row.split()[0] for row in rows) == sorted(IDS)
    assert all(row.split()[-1] == f"data/work/{row.split()[0]}" for row in rows)
    assert sum("stale: prompt changed at line" in row for row in rows) == 2


def test_column_widths_keep_short_cells_and_the_id_whole_and_share_the_rest():
    columns = ["partition", "status", "why", "output"]
    cells = [[IDS[0], "stale", "stale: prompt changed " * 3, "data/" + "x" * 60]]
    widths = column_widths(columns, cells, 80)
    assert widths[:2] == [len(IDS[0]), len("status")]
    assert widths[2] >= 16
    assert sum(w for w in widths if w) + 2 * (sum(1 for w in widths if w) - 1) <= 80
    assert column_widths(columns, cells, 400) == [len(IDS[0]), 6, 66, 65]
    assert column_widths(["id", "kind", "output"], [["a" * 13, "k" * 34, "o" * 20]], 60) == [13, 23, 20]
