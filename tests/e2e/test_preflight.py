"""Pre-flight: a misconfigured agent is one exit-2 message before anything starts.

Each case drives the real `orch` and then proves nothing started: no staging
directory, no attempt folder, no event log, no agent invocation. `orch doctor`
runs the same checks on demand.
"""

from __future__ import annotations

import json
import socket
import sys

import pytest

from tests.conftest import FAKE_AGENT, default_config
from tests.fakes.openai_server import FakeOpenAI

KEY = "sk-test-preflight-0000"
#: An `llm`-style CLI: reads the prompt on stdin, prints a reply document.
PRINT_REPLY = "import sys; sys.stdin.read(); print('## Result\\n\\nA reply long enough to pass.')"


@pytest.fixture
def server():
    with FakeOpenAI(api_key=KEY) as fake:
        yield fake


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def project_with(make_project, agent: dict, n_items: int = 2, **stage):
    """A project whose default agent is `agent` (named `broken`)."""
    config = default_config(n_items, **stage)
    config["agents"]["broken"] = agent
    config["agents"]["default"] = "broken"
    return make_project(n_items, config=config)


def assert_nothing_started(project, result, *messages: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: pre-flight: ")
    assert lines[0].endswith("agent(s) cannot run; nothing was started:")
    problems = [line.strip() for line in lines[1:] if line.startswith("  ")]
    assert problems == list(messages)
    assert lines[-1] == "hint: fix orch.yaml or the environment, then check with: orch doctor"
    assert not list(project.root.glob("data/**/.*.attempt-*"))
    assert not (project.root / "wip").exists()  # no attempts, no runs, no notes
    assert project.invocations() == []


def test_a_missing_binary(make_project):
    project = project_with(make_project, {"backend": "command", "command": ["no-such-agent-cli-7f"]})

    result = project.orch("run")

    assert_nothing_started(
        project,
        result,
        "agent broken: command 'no-such-agent-cli-7f' not found on PATH "
        "(orch.yaml:13: agents.broken.command); install it, or give its path",
    )


def test_a_missing_key(make_project, server, monkeypatch):
    monkeypatch.delenv("ORCH_TEST_KEY", raising=False)
    agent = {"backend": "openai", "model": "m", "base_url": server.url, "api_key_env": "ORCH_TEST_KEY"}
    project = project_with(make_project, agent)

    result = project.orch("stage", "run", "work")

    assert_nothing_started(
        project,
        result,
        "agent broken: environment variable ORCH_TEST_KEY (api_key_env) is not set; export the API "
        "key in it, or set api_key_env: null for an endpoint without keys",
    )
    assert server.probes == 0 and server.requests == []


def test_a_refused_key(make_project, server, monkeypatch):
    monkeypatch.setenv("ORCH_TEST_KEY", "sk-wrong")
    agent = {"backend": "openai", "model": "m", "base_url": server.url, "api_key_env": "ORCH_TEST_KEY"}
    project = project_with(make_project, agent)

    result = project.orch("stage", "run", "work")

    assert_nothing_started(
        project,
        result,
        f"agent broken: endpoint {server.url}/models refused the API key (HTTP 401); check the key's value",
    )
    assert server.probes == 1 and server.requests == []


def test_a_dead_endpoint(make_project):
    url = closed_port_url()
    project = project_with(
        make_project, {"backend": "openai", "model": "m", "base_url": url, "api_key_env": None}
    )

    result = project.orch("stage", "run", "work")

    assert_nothing_started(
        project,
        result,
        f"agent broken: endpoint {url}/models does not answer within 3s ([Errno 111] Connection "
        "refused); is the server running and base_url right?",
    )


@pytest.mark.parametrize(
    "agent",
    [
        {"backend": "command", "preset": "llm", "command": [sys.executable, "-c", PRINT_REPLY]},
        {"backend": "openai", "model": "m", "base_url": "URL", "api_key_env": "ORCH_TEST_KEY"},
    ],
    ids=["llm-preset", "openai-reply"],
)
def test_a_reply_mode_agent_that_cannot_satisfy_the_stage(make_project, server, monkeypatch, agent):
    monkeypatch.setenv("ORCH_TEST_KEY", KEY)
    agent = {**agent, "reply_file": "out.md"}
    if agent.get("base_url") == "URL":
        agent["base_url"] = server.url
    expect = [{"file": "out.md", "min_bytes": 10}, {"file": "sources.json", "json": True}]
    project = project_with(make_project, agent, expect=expect)

    result = project.orch("stage", "run", "work")

    assert_nothing_started(
        project,
        result,
        "agent broken: writes one file (out.md, its reply) but stage work expects sources.json; "
        "use an agent that writes files (mode: tools, or an agent CLI) for this stage",
    )
    assert server.requests == []


def test_the_llm_preset_runs_a_stage_that_expects_its_one_file(make_project):
    agent = {
        "backend": "command",
        "preset": "llm",
        "command": [sys.executable, "-c", PRINT_REPLY],
        "reply_file": "out.md",
    }
    project = project_with(make_project, agent)

    result = project.orch("stage", "run", "work")

    assert result.returncode == 0, result.stderr
    assert (project.root / "data/work/item01/out.md").read_text().startswith("## Result")


def test_one_message_per_broken_agent_and_only_agents_in_scope(make_project, monkeypatch):
    monkeypatch.delenv("ORCH_TEST_KEY", raising=False)
    config = default_config(1)
    config["agents"]["nobin"] = {"backend": "command", "command": ["no-such-agent-cli-7f"]}
    config["agents"]["nokey"] = {"backend": "openai", "model": "m", "api_key_env": "ORCH_TEST_KEY"}
    config["agents"]["unused"] = {"backend": "command", "command": ["also-missing-cli-7f"]}
    config["stages"]["work"]["agent"] = "nobin"
    config["stages"]["more"] = {**config["stages"]["work"], "agent": "nokey", "output": "data/more/<ITEM_ID>"}
    project = make_project(1, config=config)

    result = project.orch("run")

    assert_nothing_started(
        project,
        result,
        "agent nobin: command 'no-such-agent-cli-7f' not found on PATH "
        "(orch.yaml:13: agents.nobin.command); install it, or give its path",
        "agent nokey: environment variable ORCH_TEST_KEY (api_key_env) is not set; export the API "
        "key in it, or set api_key_env: null for an endpoint without keys",
    )
    # An override replaces both; the rehearsal agent always passes.
    assert project.orch("run", "--agent", "offline").returncode == 0


def test_a_relative_command_path_resolves_against_the_project_root(make_project):
    project = project_with(make_project, {"backend": "command", "command": ["bin/agent.sh"]})
    script = project.write("bin/agent.sh", f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_AGENT}" "$@"\n')
    script.chmod(0o755)

    result = project.orch("stage", "run", "work")

    assert result.returncode == 0, result.stderr
    assert len(project.invocations()) == 2
    script.unlink()
    missing = project.orch("stage", "run", "work", "--force")
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[1].strip() == (
        f"agent broken: command 'bin/agent.sh' not found or not executable at {project.root}/bin/agent.sh "
        "(orch.yaml:13: agents.broken.command; a relative path is resolved against the project root)"
    )


def test_doctor_checks_every_agent_and_prints_versions(make_project, server, monkeypatch):
    monkeypatch.setenv("ORCH_TEST_KEY", KEY)
    config = default_config(1)
    config["agents"]["model"] = {
        "backend": "openai",
        "model": "m",
        "base_url": server.url,
        "api_key_env": "ORCH_TEST_KEY",
    }
    project = make_project(1, config=config)

    result = project.orch("doctor")
    data = json.loads(project.orch("doctor", "--json", check=True).stdout)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "doctor: 3 agent(s) ready"
    by_name = {c["agent"]: c for c in data}
    assert by_name["fake"]["version"] == f"Python {sys.version.split()[0]}"
    assert by_name["fake"]["stages"] == ["work"]
    assert by_name["model"]["version"].startswith("openai SDK ")
    assert by_name["offline"]["version"].startswith("orch ")
    assert all(c["ok"] and c["problems"] == [] for c in data)
    assert project.invocations() == []  # `--version` ran the interpreter, not the agent
    assert not (project.root / "wip").exists()


def test_doctor_fails_with_one_message_per_broken_agent(make_project):
    config = default_config(1)
    config["agents"]["nobin"] = {"backend": "command", "command": ["no-such-agent-cli-7f"]}
    project = make_project(1, config=config)

    result = project.orch("doctor")
    scoped = project.orch("doctor", "work")

    assert result.returncode == 2
    assert "nobin    command    -       FAIL   -" in result.stdout
    assert [line for line in result.stderr.splitlines() if "agent nobin:" in line] == [
        "  agent nobin: command 'no-such-agent-cli-7f' not found on PATH "
        "(orch.yaml:13: agents.nobin.command); install it, or give its path"
    ]
    assert scoped.returncode == 0, scoped.stderr  # stage work runs with `fake` only


def test_several_problems_of_one_agent_are_one_line(make_project):
    agent = {"backend": "command", "preset": "llm", "command": ["no-such-llm-7f"], "reply_file": "out.md"}
    expect = [{"file": "out.md", "min_bytes": 10}, {"file": "sources.json", "json": True}]
    project = project_with(make_project, agent, expect=expect)

    result = project.orch("stage", "run", "work")

    assert_nothing_started(
        project,
        result,
        "agent broken: command 'no-such-llm-7f' not found on PATH (orch.yaml:13: agents.broken.command); "
        "install it, or give its path; and writes one file (out.md, its reply) but stage work expects "
        "sources.json; use an agent that writes files (mode: tools, or an agent CLI) for this stage",
    )
