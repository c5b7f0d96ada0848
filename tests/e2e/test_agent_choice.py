"""One agent choice for every command: orch.yaml, `--agent NAME`, or `$ORCH_AGENT`.

And no silent downgrade: outputs a real agent made are never replaced by the
rehearsal agent without `--force`; a partition that failed under an override
shows as failed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import default_config

KEPT = "made by agent fake; the rehearsal agent offline does not replace real outputs (use --force)"


def rehearsal_default_project(make_project, n_items=3):
    """Default agent `offline` (rehearsal); `fake` (the fake CLI) is the real agent."""
    config = default_config(n_items)
    config["agents"]["default"] = "offline"
    return make_project(n_items, config=config)


def orch_env(project, *args, **env):
    """Run orch like `project.orch`, with extra environment variables."""
    return subprocess.run(
        [sys.executable, "-m", "orch", *args],
        cwd=project.root,
        env={**project.env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def statuses(result):
    assert result.returncode == 0, result.stderr
    return {p["id"]: p["status"] for p in json.loads(result.stdout)["partitions"]}


def outputs(project):
    return {p.parent.name: p.read_text() for p in sorted((project.root / "data/work").glob("*/out.md"))}


def test_a_plain_run_after_a_real_agent_replaces_nothing(make_project):
    project = rehearsal_default_project(make_project)
    project.orch("stage", "run", "work", "--agent", "fake", check=True)
    real = outputs(project)
    assert all("Fake agent output" in text for text in real.values())

    plan = json.loads(project.orch("plan", "work", "--json", check=True).stdout)
    assert {(p["status"], p["action"], p["reason"]) for p in plan["partitions"]} == {
        ("complete", "kept", KEPT)
    }
    table = project.orch("plan", "work", check=True).stdout
    assert table.count(" kept ") == 4  # three rows and the summary line
    assert table.splitlines()[-1] == "3 kept (made by a real agent) · 0 up to date"

    project.orch("run", check=True)
    project.orch("stage", "run", "work", check=True)

    assert outputs(project) == real
    assert not (project.root / "wip/attempts").exists()
    assert len(project.invocations()) == 3
    assert set(statuses(project.orch("status", "work", "--json")).values()) == {"complete"}
    assert project.orch("barrier", "work").returncode == 0


def test_stale_real_outputs_are_kept_and_named_in_the_plan(make_project):
    project = rehearsal_default_project(make_project)
    project.orch("stage", "run", "work", "--agent", "fake", check=True)
    real = outputs(project)
    project.write("agents/work.md", (project.root / "agents/work.md").read_text() + "One more line.\n")

    plan = json.loads(project.orch("plan", "work", "--json", check=True).stdout)
    for row in plan["partitions"]:
        assert (row["status"], row["action"]) == ("stale", "kept")
        assert row["reason"].startswith("stale: prompt changed at line")
        assert row["reason"].endswith(f"(blueprint agents/work.md); kept: {KEPT}")
    result = project.orch("stage", "run", "work")

    assert outputs(project) == real
    assert not (project.root / "wip/attempts").exists()
    assert "3 skipped" in result.stdout


def test_force_lets_the_rehearsal_agent_replace_real_outputs(make_project):
    project = rehearsal_default_project(make_project, n_items=1)
    project.orch("stage", "run", "work", "--agent", "fake", check=True)

    project.orch("stage", "run", "work", "--force", check=True)

    assert "Fake agent output" not in outputs(project)["item01"]
    assert (project.root / "wip/attempts/work/item01").is_dir()


def test_every_command_judges_with_the_same_agent_choice(make_project):
    # Default `fake`; `fake2` differs in one fingerprinted setting (env), so
    # its outputs are stale for `fake` and complete for `fake2`.
    config = default_config(2)
    config["agents"]["fake2"] = {**config["agents"]["fake"], "env": {"FAKE_EXTRA": "2"}}
    project = make_project(2, config=config)
    project.orch("stage", "run", "work", "--agent", "fake2", check=True)

    assert set(statuses(project.orch("status", "work", "--json")).values()) == {"stale"}
    assert project.orch("barrier", "work").returncode == 4
    for flags, env in ((["--agent", "fake2"], {}), ([], {"ORCH_AGENT": "fake2"})):
        assert set(statuses(orch_env(project, "status", "work", "--json", *flags, **env)).values()) == {
            "complete"
        }
        overview = json.loads(orch_env(project, "status", "--json", *flags, **env).stdout)
        assert overview[0]["counts"]["complete"] == 2
        assert orch_env(project, "barrier", "work", *flags, **env).returncode == 0
        shown = json.loads(orch_env(project, "show", "work", "item01", "--json", *flags, **env).stdout)
        assert shown["status"] == "complete"
        plan = json.loads(orch_env(project, "plan", "work", "--json", *flags, **env).stdout)
        assert {p["action"] for p in plan["partitions"]} == {"skip"}
        assert orch_env(project, "blueprint", "render", "work", "item01", *flags, **env).returncode == 0
        assert "nothing to do" in orch_env(project, "stage", "run", "work", *flags, **env).stdout


def test_the_flag_beats_the_environment(make_project):
    project = rehearsal_default_project(make_project, n_items=1)

    result = orch_env(project, "stage", "run", "work", "--agent", "fake", ORCH_AGENT="offline")

    assert result.returncode == 0, result.stderr
    assert len(project.invocations()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ("plan",),
        ("status",),
        ("status", "work"),
        ("barrier", "work"),
        ("show", "work", "item01"),
        ("blueprint", "render", "work", "item01"),
        ("stage", "run", "work"),
        ("run",),
        ("doctor",),
    ],
)
def test_an_unknown_agent_is_a_usage_error_with_a_suggestion(make_project, args):
    project = make_project(1)

    by_flag = project.orch(*args, "--agent", "fakee")
    by_env = orch_env(project, *args, ORCH_AGENT="fakee")

    assert by_flag.returncode == 2
    assert by_flag.stderr.splitlines()[0] == "error: unknown agent 'fakee'; did you mean 'fake'?"
    assert by_env.returncode == 2
    assert by_env.stderr.splitlines()[0] == "error: ORCH_AGENT: unknown agent 'fakee'; did you mean 'fake'?"
    assert not (project.root / "data").exists()


def test_partitions_that_failed_under_an_override_show_as_failed(make_project):
    project = rehearsal_default_project(make_project)
    project.orch("stage", "run", "work", check=True)  # rehearsal outputs everywhere
    project.script({"default": {"action": "succeed"}, "item02": {"action": "fail", "message": "boom"}})

    assert project.orch("stage", "run", "work", "--agent", "fake", "--force").returncode == 3

    for flags in ((), ("--agent", "fake")):
        rows = json.loads(project.orch("status", "work", "--json", *flags, check=True).stdout)["partitions"]
        assert {r["id"]: r["status"] for r in rows} == {
            "item01": "complete",
            "item02": "failed",
            "item03": "complete",
        }
        failed = next(r for r in rows if r["id"] == "item02")
        assert failed["reason"].startswith("failed in attempt 2 with agent fake: exit code 1: boom")
        assert failed["reason"].endswith("(the outputs in place are attempt 1's, by agent offline)")
        assert project.orch("barrier", "work", *flags).returncode == 4
    project.script({"default": {"action": "succeed"}})
    project.orch("stage", "run", "work", "--agent", "fake", "--retry-failed", check=True)
    assert set(statuses(project.orch("status", "work", "--json")).values()) == {"complete"}
