"""The fake agent through the real CLI: a run completes every partition."""

from __future__ import annotations

import json


def test_stage_run_completes_every_partition_with_manifest(make_project):
    project = make_project(n_items=3)
    result = project.orch("stage", "run", "work")
    assert result.returncode == 0, result.stderr
    for i in (1, 2, 3):
        out = project.root / f"data/work/item{i:02d}"
        manifest = json.loads((out / ".orch/manifest.json").read_text())
        assert manifest["status"] == "complete"
        assert manifest["partition"] == f"item{i:02d}"
        assert (out / "out.md").read_text().startswith("## Result")
        assert "# Work on item" in (out / ".orch/prompt.md").read_text()
        assert "fake agent: succeed" in (out / ".orch/agent.log").read_text()
    assert len(project.invocations()) == 3


def test_second_run_runs_nothing(make_project):
    project = make_project(n_items=2)
    project.orch("stage", "run", "work", check=True)
    again = project.orch("stage", "run", "work", check=True)
    assert "nothing to do: all 2 partition(s) up to date" in again.stdout
    assert len(project.invocations()) == 2
