"""Local and `--executor dask://` runs give the same results, fingerprints included
(issue 14, "Done when"): this repository's pipeline, and the execution scenarios of
test_execution.py (retry then success, timeout, checks failure, crash, halt-on).

Each test runs the same project twice, locally and on the session cluster
(tests/e2e/conftest.py), clearing data/ and wip/ in between, and compares what
landed on disk, the events and the exit code.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Project
from tests.e2e.conftest import Cluster
from tests.e2e.test_dask import dask_config
from tests.e2e.test_execution import MIXED

pytest.importorskip("distributed")

#: Attempt fields that differ between any two runs (times) or say where it ran.
_VOLATILE = {"started_at", "ended_at", "duration_s", "queued_s", "worker"}


def outcome(project: Project, exit_code: int) -> dict[str, Any]:
    """What a run left: exit code, manifests (minus times), archived errors, events, agent runs."""
    manifests = {}
    for path in sorted((project.root / "data").rglob(".orch/manifest.json")):
        if path.parent.parent.name.startswith("."):  # a staging directory
            continue
        data = json.loads(path.read_text())
        manifests[f"{data['stage']}/{data['partition']}"] = {
            "status": data["status"],
            "attempt": data["attempt"],
            "fingerprint": data["fingerprint"],
            "output_fingerprint": data["output_fingerprint"],
            "parts": data["parts"],
            "outputs": [(o["path"], o["bytes"], o["sha256"]) for o in data["outputs"]],
            "attempts": [{k: v for k, v in a.items() if k not in _VOLATILE} for a in data["attempts"]],
        }
    archived = {
        str(path.relative_to(project.root)): {
            k: v for k, v in json.loads(path.read_text()).items() if k in {"error", "error_class", "outcome"}
        }
        for path in sorted((project.root / "wip/attempts").rglob(".orch/error.json"))
    }
    events: Counter[tuple[Any, ...]] = Counter()
    for path in sorted((project.root / "wip/runs").glob("*/events.jsonl")):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event["event"] in {"started", "completed", "failed", "retried", "halted"}:
                events[(event["event"], event.get("partition"), event.get("error"), event.get("reason"))] += 1
    invoked = Counter(i["partition"] for i in project.invocations())
    return {
        "exit": exit_code,
        "manifests": manifests,
        "archived": archived,
        "events": events,
        "invoked": invoked,
    }


def run_both(project: Project, cluster: Cluster, *args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run `orch ARGS` locally, clear the results, run it on the cluster; both outcomes."""
    local = project.orch(*args, timeout=120)
    before = outcome(project, local.returncode)
    for leftover in (project.root / "data", project.root / "wip"):
        shutil.rmtree(leftover, ignore_errors=True)
    for log in project.root.glob(project.log_path.name + "*"):
        log.unlink()
    remote = project.orch(*args, "--executor", cluster.url, timeout=120)
    after = outcome(project, remote.returncode)
    assert "Traceback" not in remote.stderr, remote.stderr
    return before, after


def test_this_repositorys_pipeline_on_dask_matches_local(tmp_path: Path, cluster: Cluster) -> None:
    """The rehearsal agent runs locally by default; `run_on_cluster` sends it to the workers."""
    project = Project(tmp_path / "pipeline")
    project.root.mkdir()
    for name in ("agents", "references"):
        shutil.copytree(REPO / name, project.root / name)
    config = yaml.safe_load((REPO / "orch.yaml").read_text())
    config["agents"]["offline"]["run_on_cluster"] = True
    project.config(config)

    local, remote = run_both(project, cluster, "run")

    assert local["exit"] == 0
    assert len(local["manifests"]) > 100
    assert remote == local
    workers = {
        json.loads(p.read_text())["attempts"][-1].get("worker")
        for p in (project.root / "data").rglob(".orch/manifest.json")
    }
    assert workers <= set(cluster.workers.values()), workers


@pytest.mark.parametrize(
    ("stage", "script", "args", "exit_code"),
    [
        pytest.param(
            {"n_items": 6, "timeout": "3s", "retries": 2, "retry_on": [75]},
            MIXED,
            ["stage", "run", "work"],
            3,
            id="retry-timeout-checks-crash",
        ),
        pytest.param(
            {"n_items": 4},
            {"default": {"action": "fail"}},
            ["stage", "run", "work", "--max-parallel", "1", "--halt-on", "50%"],
            3,
            id="halt-on",
        ),
        pytest.param(
            {"n_items": 1, "retries": 2},
            {"default": {"action": "fail", "exit": 1}},
            ["stage", "run", "work"],
            3,
            id="retries-exhausted",
        ),
    ],
)
def test_execution_scenarios_on_dask_match_local(
    make_project: Callable[..., Project],
    cluster: Cluster,
    stage: dict[str, Any],
    script: dict[str, Any],
    args: list[str],
    exit_code: int,
) -> None:
    stage = dict(stage)
    n_items = stage.pop("n_items")
    project = make_project(n_items)
    project.config(dask_config(project, n_items, **stage))
    project.script(script)

    local, remote = run_both(project, cluster, *args)

    assert local["exit"] == exit_code
    assert remote == local
