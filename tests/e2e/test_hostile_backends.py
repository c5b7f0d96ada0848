"""Hostile endpoints and agents: numbers, waits and secrets they cannot use against a run.

A fake OpenAI server (tests/fakes/openai_server.py) reports 2**70 or NaN
tokens, asks to wait 28 hours or for ever, trickles its body a byte at a
time and echoes the API key; a fake agent CLI prints its secret and absurd
usage. Each test drives the real `orch` command and checks the exit code,
the message and what is on disk afterwards.
"""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

from orch.backends.openai_replies import parse_retry_after
from tests.conftest import FAKES, default_config
from tests.e2e.test_openai_backend import events, manifest

KEY = "sk-hostile-test-key-7f3a9c2e51"
SECRET = "ghp_hostileAgentSecret_0123456789"


def openai_project(make_project, monkeypatch, server, n_items=1, agent=None, **stage):
    monkeypatch.setenv("HOSTILE_KEY", KEY)
    config = default_config(n_items, **stage)
    config["agents"]["model"] = {
        "backend": "openai",
        "base_url": server.url,
        "model": "fake-model",
        "api_key_env": "HOSTILE_KEY",
        "reply_file": "out.md",
        **(agent or {}),
    }
    config["agents"]["default"] = "model"
    return make_project(n_items, config=config)


def files_containing(root: Path, needle: str) -> list[str]:
    """Every file under `root` whose bytes contain `needle`."""
    data = needle.encode()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and data in p.read_bytes())


# -- numbers ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_2_to_the_70_and_nan_tokens_are_recorded_as_unknown_with_warnings(
    make_project, monkeypatch, server, stream
):
    server.script = {
        "default": {"action": "reply", "usage": {"prompt_tokens": 2**70, "completion_tokens": -3}}
    }
    project = openai_project(make_project, monkeypatch, server, agent={"stream": stream})

    result = project.orch("stage", "run", "work")

    assert result.returncode == 0, result.stderr
    usage = manifest(project)["usage"]
    assert "input_tokens" not in usage and "output_tokens" not in usage
    assert usage["warnings"] == [
        "endpoint input_tokens: reported an integer of 71 bits, not a whole number in [0, 1e12); "
        "recorded as unknown",
        "endpoint output_tokens: reported -3, not a whole number in [0, 1e12); recorded as unknown",
    ]
    (promoted,) = [e for e in events(project) if e["event"] == "promoted"]
    assert promoted["usage"]["warnings"] == usage["warnings"]


def test_an_invalid_cost_halts_a_budgeted_run_instead_of_counting_as_zero(make_project, monkeypatch, server):
    server.script = {
        "default": {"action": "reply", "usage": {"prompt_tokens": float("nan"), "completion_tokens": 5}}
    }
    agent = {"price_per_1k_input_usd": 1.0, "price_per_1k_output_usd": 1.0}
    project = openai_project(make_project, monkeypatch, server, n_items=3, agent=agent, max_parallel=1)
    text = (project.root / "orch.yaml").read_text()
    (project.root / "orch.yaml").write_text("max_cost_usd: 100\n" + text)  # a run budget

    result = project.orch("stage", "run", "work")

    assert result.returncode == 3, result.stderr
    assert "run budget max_cost_usd 100 cannot be enforced" in result.stderr
    assert "reported an invalid cost" in result.stderr
    assert len(server.requests) == 1  # the other partitions never started
    assert manifest(project)["usage"]["cost_rejected"] is True


def test_a_claude_agent_reporting_nan_cost_and_2_to_the_64_tokens_cannot_disable_a_stage_budget(
    make_project, tmp_path
):
    config = default_config(3, max_parallel=1, max_cost_usd=1.0)
    config["agents"]["fake"] = {
        "backend": "command",
        "command": [sys.executable, str(FAKES / "claude.py")],
        "usage": "claude-json",
    }
    project = make_project(3, config=config)
    project.script({"default": {"action": "succeed", "cost": float("nan"), "tokens": [2**64, 5]}})

    result = project.orch("stage", "run", "work")

    assert result.returncode == 3, result.stderr
    assert "stage work budget max_cost_usd 1 cannot be enforced" in result.stderr
    usage = manifest(project)["usage"]
    assert usage["cost_rejected"] is True and "cost_usd" not in usage
    assert any("reported nan" in w for w in usage["warnings"])
    assert len(project.invocations()) == 1


# -- waits --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wait",
    [{"retry_after": 100000}, {"retry_after_ms": "inf"}, {"retry_after": "nan"}, {"retry_after": "-5"}],
)
def test_a_hostile_retry_after_is_capped_by_backoff_cap(make_project, monkeypatch, server, wait):
    server.script = {
        "default": {"action": "reply"},
        "item01": [{"action": "status", "status": 429, **wait}, {"action": "reply"}],
    }
    project = openai_project(
        make_project, monkeypatch, server, retries=1, backoff={"base": "0.01s", "cap": "0.5s"}
    )

    started = time.monotonic()
    result = project.orch("stage", "run", "work", timeout=30)

    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 20
    (retried,) = [e for e in events(project) if e["event"] == "retried"]
    assert retried["backoff_s"] <= 0.5


def test_a_trickling_body_cannot_outlast_request_timeout(make_project, monkeypatch, server):
    server.script = {"default": {"action": "trickle", "interval": 0.2}}
    project = openai_project(make_project, monkeypatch, server, agent={"request_timeout": "1s"})

    started = time.monotonic()
    result = project.orch("stage", "run", "work", timeout=30)

    assert result.returncode == 3, result.stderr
    assert time.monotonic() - started < 15
    (failed,) = [e for e in events(project) if e["event"] == "failed"]
    assert failed["error_class"] == "http_5xx"
    assert "exceeded request_timeout 1s (a total deadline per request" in failed["error"]


# -- secrets ------------------------------------------------------------------------


def test_an_error_body_echoing_the_api_key_never_reaches_disk(make_project, monkeypatch, server):
    server.script = {
        "default": {"action": "reply"},
        "item01": {"action": "status", "status": 500, "echo_auth": True},
        "item02": {"action": "status", "status": 400, "echo_auth": True},
    }
    project = openai_project(make_project, monkeypatch, server, n_items=3, retries=1)

    result = project.orch("stage", "run", "work")

    assert result.returncode == 3, result.stderr
    assert any("echo_auth" not in r and KEY in (r["authorization"] or "") for r in server.requests)
    assert files_containing(project.root, KEY) == []
    assert KEY not in result.stderr and KEY not in result.stdout
    errors = [e for e in events(project) if e["event"] in ("retried", "failed")]
    assert errors and all("[redacted HOSTILE_KEY]" in e["error"] for e in errors)
    assert "[redacted HOSTILE_KEY]" in (project.root / "wip/notes.md").read_text()
    shown = project.orch("show", "work", "item01")
    assert KEY not in shown.stdout + shown.stderr


HOSTILE_AGENT = """\
import os, sys
secret = os.environ["AGENT_TOKEN"]
print("token in use:", secret, flush=True)
print("debug: Bearer " + secret, file=sys.stderr, flush=True)
with open("out.md", "w") as f:
    f.write("## Result\\n\\nwritten by a hostile agent\\n")
sys.exit(int(os.environ.get("HOSTILE_EXIT", "0")))
"""


@pytest.mark.parametrize("exit_code", [0, 1])
def test_a_command_agent_printing_its_secret_env_leaves_no_trace_of_it(
    make_project, monkeypatch, tmp_path, exit_code
):
    agent = tmp_path / "hostile_agent.py"
    agent.write_text(textwrap.dedent(HOSTILE_AGENT))
    monkeypatch.setenv("AGENT_TOKEN", SECRET)
    monkeypatch.setenv("HOSTILE_EXIT", str(exit_code))
    config = default_config(2)
    config["agents"]["fake"] = {
        "backend": "command",
        "command": [sys.executable, str(agent)],
        "secret_env": ["AGENT_TOKEN"],
    }
    project = make_project(2, config=config)

    result = project.orch("stage", "run", "work")

    assert result.returncode == (0 if exit_code == 0 else 3), result.stderr
    assert files_containing(project.root, SECRET) == []
    assert SECRET not in result.stderr
    logs = list(project.root.glob("**/.orch/agent.log"))
    assert len(logs) == 2
    assert all("token in use: [redacted AGENT_TOKEN]" in p.read_text() for p in logs)


def test_secret_env_must_name_variables(make_project):
    config = default_config(1)
    config["agents"]["fake"]["secret_env"] = [""]
    project = make_project(1, config=config)

    result = project.orch("plan", "work")

    assert result.returncode == 2
    assert "agents.fake: secret_env: expected a list of environment variable names" in result.stderr


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "inf"}, None),
        ({"retry-after-ms": "nan", "retry-after": "2"}, 2.0),
        ({"retry-after": "Infinity"}, None),
        ({"retry-after": "1e400"}, None),
        ({"retry-after": "-7"}, 0.0),
        ({"retry-after": "soon"}, None),
    ],
)
def test_parse_retry_after_ignores_what_is_not_a_finite_wait(headers, expected):
    assert parse_retry_after(headers) == expected


def test_a_far_future_retry_after_date_is_finite_and_left_to_the_caps():
    value = parse_retry_after({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"})
    assert value is not None and 10**9 < value < float("inf")  # backoff.cap and the limiter bound it
