"""Presets of the command backend (claude, codex, llm) through the real CLI.

Fake `claude` and `codex` executables (tests/fakes/claude.py, codex.py) are
put first on PATH, so the presets run their real argv; they print the real
output shapes and write the expected files into their cwd.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAKES, default_config


def install(bin_dir: Path, name: str, script: str) -> None:
    """Write an executable `name` in bin_dir that runs `script` with this interpreter."""
    path = bin_dir / name
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_clis(tmp_path, monkeypatch) -> Path:
    """Put fake claude, codex and llm executables first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    install(bin_dir, "claude", str(FAKES / "claude.py"))
    install(bin_dir, "codex", str(FAKES / "codex.py"))
    llm = tmp_path / "fake_llm.py"
    llm.write_text(
        "import sys\n"
        "prompt = sys.stdin.read()\n"
        "print('llm: loading model', file=sys.stderr)\n"
        "print('## Result\\n\\nA reply to ' + str(len(prompt)) + ' characters of prompt.')\n"
    )
    install(bin_dir, "llm", str(llm))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def preset_project(make_project, n_items=1, agent=None, **stage):
    config = default_config(n_items, **stage)
    config["agents"]["cli"] = {"backend": "command", **(agent or {})}
    config["agents"]["default"] = "cli"
    return make_project(n_items, config=config)


def manifest(project, item="item01") -> dict[str, Any]:
    return json.loads((project.root / f"data/work/{item}/.orch/manifest.json").read_text())


def archived_errors(project, item="item01") -> list[dict[str, Any]]:
    paths = sorted(project.root.glob(f"wip/attempts/work/{item}/*/.orch/error.json"))
    return [json.loads(p.read_text()) for p in paths]


def test_claude_preset_runs_headless_and_records_cost_and_tokens(make_project, fake_clis):
    project = preset_project(make_project, agent={"preset": "claude"})

    result = project.orch("stage", "run", "work")

    assert result.returncode == 0, result.stderr
    (call,) = project.invocations()
    assert call["argv"] == ["-p", "--output-format", "json", "--permission-mode", "acceptEdits"]
    assert call["env"] == {"DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    assert call["prompt_bytes"] > 0
    assert manifest(project)["usage"] == {
        "input_tokens": 12 + 100 + 2000,
        "output_tokens": 340,
        "cost_usd": 0.0123,
        "num_turns": 2,
        "cached_input_tokens": 2000,
        "cache_creation_tokens": 100,
    }
    log = (project.root / "data/work/item01/.orch/agent.log").read_text()
    assert "stderr noise the parser must skip" in log and '"total_cost_usd": 0.0123' in log
    assert "$0.0123" in result.stdout
    status = json.loads(project.orch("status", "work", "--json", check=True).stdout)
    assert status["partitions"][0]["cost_usd"] == 0.0123


def test_claude_is_error_fails_the_attempt_with_its_result_text(make_project, fake_clis):
    project = preset_project(make_project, agent={"preset": "claude"})
    project.script({"default": {"action": "is_error", "message": "API Error: 529 Overloaded", "cost": 0.002}})

    result = project.orch("stage", "run", "work")

    assert result.returncode == 3
    (error,) = archived_errors(project)
    assert error["error_class"] == "agent_error"
    assert error["error"] == "claude reported an error: API Error: 529 Overloaded"
    assert error["exit_code"] == 1
    assert error["usage"]["cost_usd"] == 0.002
    shown = project.orch("show", "work", "item01").stdout
    assert "last error: claude reported an error: API Error: 529 Overloaded" in shown


def test_claude_exit_without_json_is_an_exit_failure(make_project, fake_clis):
    project = preset_project(make_project, agent={"preset": "claude"})
    project.script({"default": {"action": "fail", "exit": 2, "message": "Invalid API key"}})

    assert project.orch("stage", "run", "work").returncode == 3
    (error,) = archived_errors(project)
    assert (error["error_class"], error["error"]) == ("exit", "exit code 2: Invalid API key")


def test_codex_preset_reads_the_prompt_on_stdin_and_records_tokens(make_project, fake_clis):
    project = preset_project(make_project, agent={"preset": "codex"})
    project.script({"default": {"action": "succeed", "transient": True}})

    result = project.orch("stage", "run", "work")

    assert result.returncode == 0, result.stderr
    (call,) = project.invocations()
    assert call["argv"] == ["exec", "--json", "--skip-git-repo-check", "--sandbox", "workspace-write", "-"]
    assert call["prompt_bytes"] > 0
    assert manifest(project)["usage"] == {
        "input_tokens": 24763,
        "output_tokens": 122,
        "cached_input_tokens": 24448,
    }


def test_codex_turn_failed_fails_the_attempt(make_project, fake_clis):
    project = preset_project(make_project, agent={"preset": "codex"})
    project.script({"default": {"action": "turn_failed", "message": "stream disconnected before completion"}})

    assert project.orch("stage", "run", "work").returncode == 3
    (error,) = archived_errors(project)
    assert error["error_class"] == "agent_error"
    assert error["error"] == "codex turn failed: stream disconnected before completion"


def test_llm_preset_captures_stdout_into_the_reply_file(make_project, fake_clis):
    project = preset_project(make_project, agent={"preset": "llm", "reply_file": "out.md"})

    result = project.orch("stage", "run", "work")

    assert result.returncode == 0, result.stderr
    out = project.root / "data/work/item01"
    reply = (out / "out.md").read_text()
    assert reply.startswith("## Result\n\nA reply to ")
    log = (out / ".orch/agent.log").read_text()
    assert "llm: loading model" in log and reply in log  # the log keeps stdout and stderr


def test_explicit_keys_override_the_preset(make_project, fake_clis):
    agent = {
        "preset": "claude",
        "args": ["--model", "opus"],
        "env": {"DISABLE_TELEMETRY": "0", "FAKE_EXTRA": "x"},
    }
    project = preset_project(make_project, agent=agent)

    assert project.orch("stage", "run", "work").returncode == 0
    (call,) = project.invocations()
    assert call["argv"][-2:] == ["--model", "opus"]
    assert call["env"] == {
        "DISABLE_TELEMETRY": "0",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "FAKE_EXTRA": "x",
    }


def test_usage_parser_on_a_plain_command(make_project):
    command = [sys.executable, str(FAKES / "claude.py")]
    project = preset_project(make_project, agent={"command": command, "usage": "claude-json"})

    assert project.orch("stage", "run", "work").returncode == 0
    assert manifest(project)["usage"]["cost_usd"] == 0.0123


@pytest.mark.parametrize(
    ("agent", "message"),
    [
        ({"preset": "claud"}, "preset: unknown preset 'claud'; did you mean 'claude'?"),
        ({"preset": "llm"}, "reply_file: the llm preset prints its reply on stdout, so it needs reply_file"),
        (
            {"preset": "claude", "usage": "claude"},
            "usage: unknown parser 'claude'; did you mean 'claude-json'?",
        ),
        ({"preset": "llm", "reply_file": "../x.md"}, "reply_file expected a relative file path inside"),
    ],
)
def test_bad_preset_settings_are_config_errors(make_project, agent, message):
    project = preset_project(make_project, agent=agent)

    result = project.orch("plan", "work")

    assert result.returncode == 2
    assert message in result.stderr
