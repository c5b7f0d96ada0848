"""Resume and staleness: only what is missing, failed or changed runs again.

A 55-partition project (11 groups of 5) on the offline rehearsal agent; each
run's `started` events say which partitions ran.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

BLUEPRINT = """\
---
description: one item
params:
  ITEM_ID: item id
  GROUP: group id
  NOTE: a note
---
# Item <ITEM_ID> of group <GROUP>

Note: <NOTE>.
{% if GROUP == "g03" %}
Extra guidance for group g03 only.
{% endif %}
Write out.md.
"""


def framework_config(**stage: object) -> dict:
    work = {
        "blueprint": "agents/work.md",
        "partitions": {"from": "references/items.yaml", "path": "items", "id": "ITEM_ID"},
        "output": "data/work/<ITEM_ID>",
        "expect": [
            {"file": "out.md", "min_bytes": 40, "headings": ["## Result"]},
            {"file": "data.json", "json": True},
        ],
        "max_parallel": 16,
    }
    work.update(stage)
    return {
        "vars": {"TOPIC": "t"},
        "agents": {
            "default": "offline",
            "offline": {"backend": "rehearsal"},
            "offline_slow": {"backend": "rehearsal", "delay": "0.001s"},
        },
        "stages": {"work": work},
    }


def rows(order: list[int] | None = None) -> list[dict]:
    items = [
        {"ITEM_ID": f"{g}.{i}_item", "GROUP": f"g{g:02d}", "NOTE": f"note {g}.{i}"}
        for g in range(1, 12)
        for i in range(1, 6)
    ]
    return [items[k] for k in order] if order else items


@pytest.fixture
def project(make_project):
    project = make_project(config=framework_config())
    project.write("agents/work.md", BLUEPRINT)
    write_rows(project, rows())
    return project


def write_rows(project, items: list[dict]) -> None:
    project.write("references/items.yaml", yaml.safe_dump({"items": items}, sort_keys=False))


def started(project) -> list[str]:
    """Partition ids started by the most recent run (from its events.jsonl)."""
    runs = sorted((project.root / "wip" / "runs").iterdir())
    events = [json.loads(line) for line in (runs[-1] / "events.jsonl").read_text().splitlines()]
    return sorted(e["partition"] for e in events if e["event"] == "started")


def plan(project) -> dict[str, dict]:
    result = project.orch("plan", "work", "--json", check=True)
    return {p["id"]: p for p in json.loads(result.stdout)["partitions"]}


def test_deleted_output_is_incomplete_barrier_fails_and_only_it_reruns(project):
    project.orch("stage", "run", "work", check=True)
    assert len(started(project)) == 55
    (project.root / "data/work/2.3_item/out.md").unlink()

    status = json.loads(project.orch("status", "work", "--json", check=True).stdout)
    by_id = {p["id"]: p["status"] for p in status["partitions"]}
    assert by_id["2.3_item"] == "incomplete"
    assert sum(1 for s in by_id.values() if s == "complete") == 54

    barrier = project.orch("barrier", "work")
    assert barrier.returncode == 4
    assert "2.3_item   incomplete  out.md  exists  missing" in barrier.stdout.splitlines()
    assert "error: barrier work: 54 of 55 partitions complete" in barrier.stderr

    rerun = project.orch("stage", "run", "work")
    assert rerun.returncode == 0, rerun.stderr
    assert started(project) == ["2.3_item"]
    assert (project.root / "data/work/2.3_item/out.md").exists()
    # the incomplete directory was kept, not deleted
    kept = list((project.root / "wip/attempts/work/2.3_item").iterdir())
    assert len(kept) == 1 and (kept[0] / "data.json").exists()


def test_edit_inside_if_makes_exactly_that_groups_partitions_stale(project):
    project.orch("stage", "run", "work", check=True)
    blueprint = project.root / "agents/work.md"
    blueprint.write_text(
        BLUEPRINT.replace("Extra guidance for group g03 only.", "Revised guidance for group g03 only.")
    )
    planned = plan(project)
    stale = sorted(pid for pid, p in planned.items() if p["status"] == "stale")
    assert stale == [f"3.{i}_item" for i in range(1, 6)]
    assert {planned[pid]["reason"] for pid in stale} == {
        "stale: prompt changed at line 4 (blueprint agents/work.md)"
    }
    assert all(p["action"] == "skip" for pid, p in planned.items() if pid not in stale)

    project.orch("stage", "run", "work", check=True)
    assert started(project) == stale


def test_touch_without_change_leaves_nothing_stale(project):
    project.orch("stage", "run", "work", check=True)
    later = time.time() + 5
    for rel in ("agents/work.md", "references/items.yaml", "orch.yaml"):
        os.utime(project.root / rel, (later, later))
    planned = plan(project)
    assert {p["status"] for p in planned.values()} == {"complete"}
    again = project.orch("stage", "run", "work", check=True)
    assert "nothing to do: all 55 partition(s) up to date" in again.stdout


def test_reordering_references_changes_nothing(project):
    project.orch("stage", "run", "work", check=True)
    write_rows(project, rows(order=list(reversed(range(55)))))
    assert {p["status"] for p in plan(project).values()} == {"complete"}
    project.orch("stage", "run", "work", check=True)
    assert started(project) == []


def test_changed_row_makes_only_that_partition_stale(project):
    project.orch("stage", "run", "work", check=True)
    items = rows()
    items[7]["NOTE"] = "a revised note"
    write_rows(project, items)
    planned = plan(project)
    stale = {pid: p["reason"] for pid, p in planned.items() if p["status"] != "complete"}
    assert stale == {"2.3_item": "stale: references/items.yaml row changed (field NOTE)"}
    project.orch("stage", "run", "work", check=True)
    assert started(project) == ["2.3_item"]


def test_agent_settings_and_expect_rules_changes_are_explained(project):
    project.orch("stage", "run", "work", check=True)
    # rehearsal's delay changes speed, not outputs: not part of the fingerprint
    planned = plan_with_agent(project, "offline_slow")
    assert {p["status"] for p in planned.values()} == {"complete"}
    config = framework_config()
    config["agents"]["other"] = {"backend": "command", "command": ["some-agent", "--model", "x"]}
    project.config(config)
    planned = plan_with_agent(project, "other")
    (reason,) = {p["reason"] for p in planned.values()}
    assert reason.startswith("stale: agent settings changed (backend, command, ")

    config = framework_config()
    config["stages"]["work"]["expect"][0]["min_bytes"] = 41
    project.config(config)
    assert {p["reason"] for p in plan(project).values()} == {"stale: expect rules changed"}


def plan_with_agent(project, agent: str) -> dict[str, dict]:
    result = project.orch("plan", "work", "--agent", agent, "--json", check=True)
    return {p["id"]: p for p in json.loads(result.stdout)["partitions"]}


def test_force_reruns_all_and_keeps_old_outputs(project):
    project.orch("stage", "run", "work", "--only", "1.1_item,1.2_item", check=True)
    first = json.loads((project.root / "data/work/1.1_item/.orch/manifest.json").read_text())
    project.orch("stage", "run", "work", "--only", "1.1_item,1.2_item", "--force", check=True)
    assert started(project) == ["1.1_item", "1.2_item"]
    archived = project.root / "wip/attempts/work/1.1_item" / str(first["attempt"])
    kept = json.loads((archived / ".orch/manifest.json").read_text())
    assert kept["fingerprint"] == first["fingerprint"]
    second = json.loads((project.root / "data/work/1.1_item/.orch/manifest.json").read_text())
    assert second["attempt"] == first["attempt"] + 1


def test_retry_failed_runs_only_failed_partitions(make_project):
    project = make_project(n_items=4)
    project.script(
        {
            "default": {"action": "succeed"},
            "item02": [{"action": "fail", "message": "rate limited"}, {"action": "succeed"}],
        }
    )
    first = project.orch("stage", "run", "work")
    assert first.returncode == 3
    planned = {p["id"]: p for p in json.loads(project.orch("plan", "work", "--json").stdout)["partitions"]}
    assert planned["item02"]["status"] == "failed"
    assert planned["item02"]["reason"] == "failed: exit code 1: rate limited (attempt #1)"
    Path(project.root / "data/work/item03/out.md").unlink()  # incomplete, not failed

    retried = project.orch("stage", "run", "work", "--retry-failed")
    assert retried.returncode == 4  # item03 is still incomplete: the barrier is not met
    assert "barrier work: NOT met (3/4)" in retried.stdout
    ran = [i["partition"] for i in project.invocations()]
    assert sorted(ran[:4]) == ["item01", "item02", "item03", "item04"]
    assert ran[4:] == ["item02"]


def test_show_lists_outputs_attempts_and_last_error(make_project):
    project = make_project(n_items=1)
    project.script({"item01": [{"action": "fail", "message": "boom: quota"}, {"action": "succeed"}]})
    assert project.orch("stage", "run", "work").returncode == 3
    shown = project.orch("show", "work", "item01")
    assert shown.returncode == 0
    assert "work / item01: failed — failed: exit code 1: boom: quota (attempt #1)" in shown.stdout
    assert "#1 failed: exit code 1: boom: quota  (wip/attempts/work/item01/1)" in shown.stdout
    assert "| boom: quota" in shown.stdout

    project.orch("stage", "run", "work", check=True)
    data = json.loads(project.orch("show", "work", "item01", "--json", check=True).stdout)
    assert data["status"] == "complete"
    assert data["outputs"] == [{"path": "data/work/item01/out.md", "bytes": 41}]
    assert data["prompt_file"] == "data/work/item01/.orch/prompt.md"
    assert [a["n"] for a in data["attempts"]] == [1]
    assert data["manifest_data"]["attempt"] == 2


def test_dead_run_staging_dir_is_archived_and_redone(make_project):
    project = make_project(n_items=2)
    project.orch("stage", "run", "work", check=True)
    # a staging dir left by a run that died (no lock holder)
    dead = project.root / "data/work/.item03.attempt-1"
    (dead / ".orch").mkdir(parents=True)
    (dead / "out.md").write_text("half")
    items = "".join(f"  - ITEM_ID: item{i:02d}\n" for i in (1, 2, 3))
    project.write("references/items.yaml", "items:\n" + items)
    assert plan_status(project)["item03"] == "missing"
    project.orch("stage", "run", "work", check=True)
    assert not dead.exists()
    error = json.loads((project.root / "wip/attempts/work/item03/1/.orch/error.json").read_text())
    assert error["outcome"] == "interrupted"
    manifest = json.loads((project.root / "data/work/item03/.orch/manifest.json").read_text())
    assert manifest["attempt"] == 2


def plan_status(project) -> dict[str, str]:
    data = json.loads(project.orch("plan", "work", "--json", check=True).stdout)
    return {p["id"]: p["status"] for p in data["partitions"]}


def test_dead_staging_dir_beside_a_complete_partition_is_archived(make_project):
    project = make_project(n_items=1)
    project.orch("stage", "run", "work", check=True)
    dead = project.root / "data/work/.item01.attempt-9"
    (dead / ".orch").mkdir(parents=True)
    again = project.orch("stage", "run", "work", check=True)
    assert "nothing to do" in again.stdout
    assert not dead.exists()
    assert (project.root / "wip/attempts/work/item01/9/.orch/error.json").exists()
