"""Shared fixtures: a project made in tmp_path, and the real `orch` command.

`make_project` writes orch.yaml, one blueprint and a references file; the fake
agent CLI (tests/fakes/agent.py) stands in for the model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

FAKES = Path(__file__).parent / "fakes"
FAKE_AGENT = FAKES / "agent.py"
REPO = Path(__file__).parent.parent

BLUEPRINT = """\
---
description: test blueprint
params:
  ITEM_ID: the item
  TOPIC: the topic
---
# Work on <ITEM_ID>
Topic: <TOPIC>. Write out.md with a '## Result' heading.
"""


def default_config(n_items: int = 3, **stage: Any) -> dict[str, Any]:
    """Return an orch.yaml mapping: agent `fake` (the fake CLI), stage `work`."""
    work = {
        "blueprint": "agents/work.md",
        "partitions": {"from": "references/items.yaml", "path": "items", "id": "ITEM_ID"},
        "output": "data/work/<ITEM_ID>",
        "expect": [{"file": "out.md", "min_bytes": 10, "headings": ["## Result"]}],
        "retries": 0,
        "backoff": {"base": "0.01s", "cap": "0.05s"},
    }
    work.update(stage)
    return {
        "vars": {"TOPIC": "testing"},
        "agents": {
            "default": "fake",
            "fake": {"backend": "command", "command": [sys.executable, str(FAKE_AGENT)], "kill_grace": "1s"},
            "offline": {"backend": "rehearsal"},
        },
        "stages": {"work": work},
    }


class Project:
    """A project directory in tmp_path, with helpers to run orch on it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.script_path = root / "fake-script.json"
        self.log_path = root / "fake-agent.jsonl"

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text) if text.startswith("\n") else text)
        return path

    def config(self, config: dict[str, Any]) -> None:
        import yaml

        self.write("orch.yaml", yaml.safe_dump(config, sort_keys=False))

    def script(self, script: dict[str, Any]) -> None:
        """Set the fake agent's per-partition behaviour (see tests/fakes/agent.py)."""
        self.script_path.write_text(json.dumps(script))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("ORCH_PROJECT", None)
        env.pop("ORCH_AGENT", None)
        env["FAKE_AGENT_SCRIPT"] = str(self.script_path)
        env["FAKE_AGENT_LOG"] = str(self.log_path)
        env["PYTHONPATH"] = str(REPO / "src")
        return env

    def orch(self, *args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run the real `orch` CLI (python -m orch) in the project; capture output."""
        result = subprocess.run(
            [sys.executable, "-m", "orch", *args],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"orch {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """Start `orch` without waiting (for kill and interrupt tests)."""
        return subprocess.Popen(
            [sys.executable, "-m", "orch", *args],
            cwd=self.root,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def invocations(self) -> list[dict[str, Any]]:
        """Every fake-agent invocation so far, oldest first."""
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]

    def tree(self, rel: str = ".") -> list[str]:
        """Sorted relative paths of every file under `rel` (to assert nothing was written)."""
        base = self.root / rel
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Project]:
    """Return a factory: make_project(n_items=3, config=None, **stage_overrides) -> Project."""

    def make(n_items: int = 3, config: dict[str, Any] | None = None, **stage: Any) -> Project:
        project = Project(tmp_path / "proj")
        project.root.mkdir(exist_ok=True)
        project.config(config or default_config(n_items, **stage))
        project.write("agents/work.md", BLUEPRINT)
        items = "".join(f"  - ITEM_ID: item{i:02d}\n" for i in range(1, n_items + 1))
        project.write("references/items.yaml", "items:\n" + items)
        project.script({"default": {"action": "succeed"}})
        return project

    return make
