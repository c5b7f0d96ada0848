"""Every hint orch prints is a command that does what it says: each test runs it as printed."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys

import yaml

from tests.conftest import FAKE_AGENT, default_config
from tests.e2e.test_execution import kill_leftover_agents  # noqa: F401 - autouse fixture
from tests.e2e.test_kill_and_resume import running_pids
from tests.e2e.test_pipeline import GROUP_BLUEPRINT, OVERALL_BLUEPRINT, pipeline_config


def hinted(stderr: str, marker: str) -> list[str]:
    """The `orch ...` command after `marker` on the hint line, as argv (without `orch`)."""
    (line,) = [line for line in stderr.splitlines() if line.startswith("hint: ")]
    command = line.split(marker, 1)[1].split(";", 1)[0].split(" (", 1)[0]
    words = shlex.split(command)
    assert words[0] == "orch", line
    return words[1:]


def run_from(project, cwd, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run `orch argv` from `cwd` (not the project), as a user pasting the hint elsewhere."""
    return subprocess.run(
        [sys.executable, "-m", "orch", *argv], cwd=cwd, env=project.env(), capture_output=True, text=True
    )


def ran(project) -> list[str]:
    return [i["partition"] for i in project.invocations()]


def two_agents(n_items: int) -> dict:
    config = default_config(n_items)
    config["agents"]["other"] = {
        "backend": "command",
        "command": [sys.executable, str(FAKE_AGENT), "--other"],
        "kill_grace": "1s",
    }
    return config


def test_retry_failed_hint_keeps_project_agent_and_only(make_project, tmp_path):
    project = make_project(config=two_agents(3))
    project.script({"default": {"action": "succeed"}, "item02": {"action": "fail", "message": "quota"}})
    root = str(project.root)
    result = run_from(project, tmp_path, ["--project", root, "stage", "run", "work", "--agent", "other",
                                          "--only", "item01,item02"])  # fmt: skip
    assert result.returncode == 3
    argv = hinted(result.stderr, "rerun the failed ones with: ")
    assert argv == ["--project", root, "stage", "run", "work", "--agent", "other", "--only", "item01,item02",
                    "--retry-failed"]  # fmt: skip
    assert "inspect with: orch --project " in result.stderr

    project.script({"default": {"action": "succeed"}})
    retried = run_from(project, tmp_path, argv)
    assert retried.returncode == 0, retried.stderr
    assert sorted(ran(project)[:2]) == ["item01", "item02"] and ran(project)[2:] == ["item02"]
    manifest = json.loads((project.root / "data/work/item02/.orch/manifest.json").read_text())
    assert manifest["agent"]["name"] == "other"


def test_retry_failed_after_force_retries_the_failed_rerun(make_project):
    project = make_project(n_items=3)
    project.orch("stage", "run", "work", check=True)
    project.script({"default": {"action": "succeed"}, "item03": {"action": "fail", "message": "quota"}})
    forced = project.orch("stage", "run", "work", "--force")
    assert forced.returncode == 3
    argv = hinted(forced.stderr, "rerun the failed ones with: ")
    assert argv == ["stage", "run", "work", "--retry-failed"]  # never --force again
    shown = project.orch("status", "work", "--json", check=True).stdout
    errors = {r["id"]: r["last_error"] for r in json.loads(shown)["partitions"]}
    assert errors == {"item01": None, "item02": None, "item03": "exit code 1: quota"}

    project.script({"default": {"action": "succeed"}})
    retried = project.orch(*argv)
    assert retried.returncode == 0, retried.stderr
    assert ran(project)[6:] == ["item03"]
    shown = project.orch("status", "work", "--json", check=True).stdout
    assert {r["last_error"] for r in json.loads(shown)["partitions"]} == {None}


def test_blocked_partitions_get_an_orch_run_hint_that_finishes_the_pipeline(make_project):
    project = make_project(config=pipeline_config())
    project.write("agents/group.md", GROUP_BLUEPRINT)
    project.write("agents/overall.md", OVERALL_BLUEPRINT)
    rows = [{"ITEM_ID": f"{g}.{i}", "GROUP": f"g{g:02d}"} for g in range(1, 3) for i in (1, 2)]
    project.write("references/items.yaml", yaml.safe_dump({"items": rows}))
    project.script({"default": {"action": "succeed"}, "1.1": {"action": "fail", "message": "refused"}})
    result = project.orch("run")
    assert result.returncode == 3
    argv = hinted(result.stderr, "rerun the failed ones and the partitions they block with: ")
    assert argv == ["run"]

    project.script({"default": {"action": "succeed"}})
    assert project.orch(*argv).returncode == 0
    assert project.orch("barrier", "overall").returncode == 0


def test_stage_blocked_hint_runs_the_pipeline_up_to_the_stage(make_project, tmp_path):
    project = make_project(config=pipeline_config())
    project.write("agents/group.md", GROUP_BLUEPRINT)
    project.write("agents/overall.md", OVERALL_BLUEPRINT)
    rows = [{"ITEM_ID": f"{g}.{i}", "GROUP": f"g{g:02d}"} for g in range(1, 3) for i in (1, 2)]
    project.write("references/items.yaml", yaml.safe_dump({"items": rows}))
    root = str(project.root)
    result = run_from(project, tmp_path, ["--project", root, "stage", "run", "groups"])
    assert result.returncode == 4
    assert f"run the upstream stage first (orch --project {root} stage run items)" in result.stderr
    argv = hinted(result.stderr, "up to groups with: ")
    assert argv == ["--project", root, "run", "--until", "groups"]
    assert run_from(project, tmp_path, argv).returncode == 0
    assert project.orch("barrier", "groups").returncode == 0
    assert not (project.root / "data/overall").exists()


def test_interrupted_forced_run_hints_forcing_only_what_it_did_not_finish(make_project):
    project = make_project(n_items=3)
    project.orch("stage", "run", "work", check=True)
    project.script({"default": {"action": "hang"}, "item01": {"action": "succeed"}})
    proc = project.popen("stage", "run", "work", "--force", "--max-parallel", "1")
    running_pids(project, 1)  # item01 rerun and promoted; item02 hangs
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    argv = hinted(err, "this run did not finish: ")
    assert argv == ["stage", "run", "work", "--only", "item02,item03", "--force"]

    project.script({"default": {"action": "succeed"}})
    assert project.orch(*argv).returncode == 0
    assert ran(project)[3] == "item01" and sorted(ran(project)[4:]) == ["item02", "item02", "item03"]


def test_barrier_and_accept_hints_name_the_project(make_project, tmp_path):
    project = make_project(n_items=2)
    project.orch("stage", "run", "work", check=True)
    (project.root / "data/work/item02/out.md").write_text("x\n")
    root = str(project.root)
    result = run_from(project, tmp_path, ["--project", root, "barrier", "work"])
    assert result.returncode == 4
    argv = hinted(result.stderr, "rerun the missing ones with: ")
    assert argv == ["--project", root, "stage", "run", "work"]
    assert run_from(project, tmp_path, argv).returncode == 0
    assert sorted(ran(project)[:2]) == ["item01", "item02"] and ran(project)[2:] == ["item02"]


def test_library_hints_gain_the_project_flag(make_project, tmp_path):
    project = make_project(n_items=2)
    root = str(project.root)
    result = run_from(project, tmp_path, ["--project", root, "stage", "run", "work", "--only", "item9"])
    assert result.returncode == 2
    argv = hinted(result.stderr, "list partitions with: ")
    assert argv == ["--project", root, "plan", "work"]
    assert "item01" in run_from(project, tmp_path, argv).stdout
