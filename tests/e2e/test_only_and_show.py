"""`--only` with globs on `stage run` and `run`, and `orch show` hiding old attempts, through the real CLI."""

from __future__ import annotations

import json


def ran(project) -> list[str]:
    return sorted(i["partition"] for i in project.invocations())


def test_stage_run_only_accepts_globs_and_ids(make_project):
    project = make_project(n_items=12)
    result = project.orch("stage", "run", "work", "--only", "item1*,item05")
    assert result.returncode == 0, result.stderr
    assert ran(project) == ["item05", "item10", "item11", "item12"]


def test_run_only_accepts_a_character_class_glob(make_project):
    project = make_project(n_items=12)
    result = project.orch("run", "--only", "item0[12]")
    assert result.returncode == 0, result.stderr
    assert ran(project) == ["item01", "item02"]


def test_dry_run_only_glob_lists_just_the_matches(make_project):
    project = make_project(n_items=12)
    result = project.orch("stage", "run", "work", "--dry-run", "--json", "--only", "item0?")
    assert result.returncode == 0, result.stderr
    [plan] = json.loads(result.stdout)
    assert [p["id"] for p in plan["partitions"]] == [f"item0{i}" for i in range(1, 10)]
    assert project.invocations() == []


def test_only_glob_matching_nothing_is_exit_2_naming_it(make_project):
    project = make_project(n_items=3)
    result = project.orch("stage", "run", "work", "--only", "item01,itme0*")
    assert result.returncode == 2
    error, hint = result.stderr.splitlines()
    assert error.startswith(
        "error: --only: no partition matches 'itme0*' in stage(s) work; did you mean 'item0"
    )
    assert hint == "hint: list partitions with: orch plan work"
    assert project.invocations() == []
    assert not (project.root / "data").exists()


def test_show_lists_the_newest_three_attempts_and_says_how_many_are_hidden(make_project):
    project = make_project(n_items=1)
    for _ in range(6):
        project.orch("stage", "run", "work", "--force", check=True)
    result = project.orch("show", "work", "item01")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    shown = [line.split()[0] for line in lines if line.startswith("  #")]
    assert shown == ["#3", "#4", "#5"]
    assert "  (2 older attempt(s) hidden; all of them: orch show work item01 --all)" in lines

    everything = project.orch("show", "work", "item01", "--all").stdout.splitlines()
    assert [line.split()[0] for line in everything if line.startswith("  #")] == [
        f"#{n}" for n in range(1, 6)
    ]
    assert not any("hidden" in line for line in everything)
    data = json.loads(project.orch("show", "work", "item01", "--json").stdout)
    assert [a["n"] for a in data["attempts"]] == [1, 2, 3, 4, 5]
