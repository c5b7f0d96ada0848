"""The `openai` backend through the real CLI against a fake Chat Completions server.

The fake (tests/fakes/openai_server.py) listens on 127.0.0.1 port 0 in this
process and speaks the real protocol — JSON and server-sent events — to the
official SDK in the orch subprocess.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from orch.backends.openai_replies import parse_retry_after
from orch.backends.openai_tools import PathRejected, write_confined
from tests.conftest import default_config
from tests.fakes.openai_server import DEFAULT_TEXT

KEY = "sk-test-not-a-real-key-4b1d"
THREE_FILES = {
    "out.md": "## Result\n\nFindings for {key}.\n",
    "notes.md": "Notes for {key}.\n",
    "data/facts.json": '{{"id": "{key}"}}\n',
}


def openai_project(make_project, monkeypatch, server, n_items=1, agent=None, **stage):
    """A project whose default agent is `model`: the openai backend against `server`."""
    monkeypatch.setenv("FAKE_OPENAI_KEY", KEY)
    config = default_config(n_items, **stage)
    config["agents"]["model"] = {
        "backend": "openai",
        "base_url": server.url,
        "model": "fake-model",
        "api_key_env": "FAKE_OPENAI_KEY",
        **(agent or {}),
    }
    config["agents"]["default"] = "model"
    return make_project(n_items, config=config)


def manifest(project, item="item01") -> dict[str, Any]:
    return json.loads((project.root / f"data/work/{item}/.orch/manifest.json").read_text())


def events(project) -> list[dict[str, Any]]:
    (path,) = project.root.glob("wip/runs/*/events.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def transcript(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_reply_mode_writes_the_reply_file_and_records_usage_and_cost(make_project, monkeypatch, server):
    agent = {"reply_file": "out.md", "price_per_1k_input_usd": 1.0, "price_per_1k_output_usd": 2.0}
    project = openai_project(make_project, monkeypatch, server, n_items=2, agent=agent)

    result = project.orch("stage", "run", "work")

    assert result.returncode == 0, result.stderr
    out = project.root / "data/work/item01"
    assert (out / "out.md").read_text() == DEFAULT_TEXT.format(key="default")
    (request,) = [r for r in server.requests if "item01" in r["body"]["messages"][0]["content"]]
    assert request["authorization"] == f"Bearer {KEY}"
    assert request["model"] == "fake-model"
    usage = manifest(project)["usage"]
    prompt_tokens = sum(len(m["content"]) // 4 + 1 for m in request["body"]["messages"])
    completion_tokens = len(DEFAULT_TEXT.format(key="default")) // 4 + 1
    assert usage == {
        "input_tokens": prompt_tokens,
        "output_tokens": completion_tokens,
        "num_turns": 1,
        "cost_usd": pytest.approx(prompt_tokens / 1000 * 1.0 + completion_tokens / 1000 * 2.0),
    }
    log = (out / ".orch/agent.log").read_text()
    assert KEY not in log
    kinds = [line["orch"] for line in transcript(out / ".orch/agent.log")]
    assert kinds == ["request", "response", "wrote"]
    status = project.orch("status", "work", "--json", check=True)
    rows = {row["id"]: row for row in json.loads(status.stdout)["partitions"]}
    assert rows["item01"]["tokens"] == prompt_tokens + completion_tokens
    assert rows["item01"]["cost_usd"] == usage["cost_usd"]


def test_tools_mode_writes_three_files_through_write_file(make_project, monkeypatch, server):
    server.script = {"default": {"action": "tools", "files": THREE_FILES}}
    expect = [
        {"file": "out.md", "headings": ["## Result"]},
        {"file": "notes.md", "non_empty": True},
        {"file": "data/facts.json", "json": True},
    ]
    project = openai_project(make_project, monkeypatch, server, expect=expect)

    result = project.orch("stage", "run", "work")

    assert result.returncode == 0, result.stderr
    out = project.root / "data/work/item01"
    assert (out / "notes.md").read_text() == "Notes for default.\n"
    assert json.loads((out / "data/facts.json").read_text()) == {"id": "default"}
    assert len(server.requests) == 4  # one write_file call per turn, then the final answer
    last = server.requests[-1]["body"]["messages"]
    assert [m["content"] for m in last if m["role"] == "tool"] == [
        f"wrote {path} ({len(text.format(key='default'))} bytes)" for path, text in THREE_FILES.items()
    ]
    assert last[0]["role"] == "system" and "write_file" in last[0]["content"]
    assert manifest(project)["usage"]["num_turns"] == 4


def test_a_tool_call_escaping_the_output_directory_is_rejected_and_told_to_the_model(
    make_project, monkeypatch, server
):
    files = {"../escape.md": "gotcha\n", "out.md": "## Result\n\nFine.\n"}
    server.script = {"default": {"action": "tools", "files": files}}
    project = openai_project(make_project, monkeypatch, server)

    result = project.orch("stage", "run", "work")

    assert result.returncode == 0, result.stderr
    assert not [p for p in project.tree() if p.endswith("escape.md")]
    second = server.requests[1]["body"]["messages"]
    assert second[-1] == {
        "role": "tool",
        "tool_call_id": "call_0",
        "content": "error: path '../escape.md' rejected: "
        "'..' is not allowed; stay inside your output directory",
    }
    log = transcript(project.root / "data/work/item01/.orch/agent.log")
    (rejected,) = [line for line in log if line["orch"] == "tool_rejected"]
    assert rejected["path"] == "../escape.md"


def test_a_429_with_retry_after_is_retried_after_the_wait(make_project, monkeypatch, server):
    server.script = {
        "default": {"action": "reply"},
        "item01": [{"action": "status", "status": 429, "retry_after": 1}, {"action": "reply"}],
    }
    # backoff.cap bounds any Retry-After, so it must allow the 1 s asked for here
    backoff = {"base": "0.01s", "cap": "5s"}
    project = openai_project(
        make_project, monkeypatch, server, agent={"reply_file": "out.md"}, retries=2, backoff=backoff
    )

    result = project.orch("stage", "run", "work")

    assert result.returncode == 0, result.stderr
    first, second = server.requests_for("item01")
    assert second["ts"] - first["ts"] >= 1.0
    attempts = manifest(project)["attempts"]
    assert [a["error_class"] for a in attempts] == ["http_429", None]
    assert attempts[0]["error"].startswith(f"HTTP 429 from {server.url}: fake 429")
    (retried,) = [e for e in events(project) if e["event"] == "retried"]
    assert retried["backoff_s"] >= 1.0


def test_a_persistent_500_fails_the_partition_with_the_error_recorded(make_project, monkeypatch, server):
    server.script = {"default": {"action": "status", "status": 500, "message": "model exploded"}}
    project = openai_project(make_project, monkeypatch, server, agent={"reply_file": "out.md"}, retries=1)

    result = project.orch("stage", "run", "work")

    assert result.returncode == 3, result.stderr
    assert len(server.requests) == 2
    error = f"HTTP 500 from {server.url}: model exploded"
    archived = sorted(project.root.glob("wip/attempts/work/item01/*/.orch/error.json"))
    records = [json.loads(p.read_text()) for p in archived]
    assert [(r["error_class"], r["error"]) for r in records] == [("http_5xx", error)] * 2
    shown = project.orch("show", "work", "item01")
    assert f"last error: {error}" in shown.stdout


def test_a_200_that_is_not_a_chat_completion_fails_the_attempt_saying_so(make_project, monkeypatch, server):
    server.script = {"default": {"action": "page"}}
    project = openai_project(make_project, monkeypatch, server, agent={"reply_file": "out.md"}, retries=0)

    result = project.orch("stage", "run", "work")

    assert result.returncode == 3, result.stderr
    (archived,) = project.root.glob("wip/attempts/work/item01/*/.orch/error.json")
    record = json.loads(archived.read_text())
    assert record["error_class"] == "agent_error"
    assert record["error"].startswith(f"{server.url} did not answer like a Chat Completions endpoint")
    assert "Sign in to continue" in record["error"]
    assert not (project.root / "data/work/item01").exists()


def test_a_stage_timeout_abandons_the_request_and_keeps_the_transcript(make_project, monkeypatch, server):
    server.script = {"default": {"action": "reply", "delay": 20}}
    project = openai_project(
        make_project, monkeypatch, server, agent={"reply_file": "out.md"}, timeout="1s", retries=0
    )

    result = project.orch("stage", "run", "work", timeout=15)

    assert result.returncode == 3, result.stderr
    (archive,) = project.root.glob("wip/attempts/work/item01/*")
    assert json.loads((archive / ".orch/error.json").read_text())["error_class"] == "timeout"
    assert not (archive / "out.md").exists()
    kinds = [line["orch"] for line in transcript(archive / ".orch/agent.log")]
    assert kinds == ["request", "cancelled"]


def test_streaming_in_tools_mode_writes_files_and_records_usage(make_project, monkeypatch, server):
    server.script = {"default": {"action": "tools", "files": THREE_FILES, "per_turn": 3}}
    project = openai_project(make_project, monkeypatch, server, agent={"stream": True})

    result = project.orch("stage", "run", "work")

    assert result.returncode == 0, result.stderr
    assert [r["stream"] for r in server.requests] == [True, True]
    assert server.requests[0]["body"]["stream_options"] == {"include_usage": True}
    out = project.root / "data/work/item01"
    assert (out / "data/facts.json").read_text() == '{"id": "default"}\n'
    usage = manifest(project)["usage"]
    assert usage["num_turns"] == 2
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0


def test_streaming_reply_mode(make_project, monkeypatch, server):
    project = openai_project(
        make_project, monkeypatch, server, agent={"stream": True, "reply_file": "out.md"}
    )

    result = project.orch("stage", "run", "work")

    assert result.returncode == 0, result.stderr
    assert (project.root / "data/work/item01/out.md").read_text() == DEFAULT_TEXT.format(key="default")
    assert manifest(project)["usage"]["output_tokens"] == len(DEFAULT_TEXT.format(key="default")) // 4 + 1


def test_a_missing_api_key_stops_the_run_before_any_request(make_project, monkeypatch, server):
    # Was exit 3 after failing every attempt; the pre-flight (orch.engine.preflight) now says it once.
    project = openai_project(make_project, monkeypatch, server, agent={"reply_file": "out.md"})
    monkeypatch.delenv("FAKE_OPENAI_KEY")

    result = project.orch("stage", "run", "work")

    assert result.returncode == 2
    assert server.requests == []
    assert (
        "environment variable FAKE_OPENAI_KEY (api_key_env) is not set; export the API key in it, "
        "or set api_key_env: null for an endpoint without keys" in result.stderr
    )
    assert not (project.root / "wip").exists()


def test_a_bad_setting_is_a_config_error_naming_the_key(make_project, monkeypatch, server):
    project = openai_project(make_project, monkeypatch, server, agent={"mode": "reply"})

    result = project.orch("plan", "work")

    assert result.returncode == 2
    assert "agents.model: reply_file: reply mode writes the reply to one file; name it" in result.stderr


def test_write_confined_refuses_paths_that_leave_the_directory(tmp_path):
    root = tmp_path / "staging"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    (root / "file-link").symlink_to(tmp_path / "outside" / "target.md")
    for path in (
        "/etc/passwd",
        "../x.md",
        "a/../../x.md",
        "link/x.md",
        "file-link",
        ".orch/manifest.json",
        "",
    ):
        with pytest.raises(PathRejected):
            write_confined(root, path, "x")
    assert list((tmp_path / "outside").iterdir()) == []
    assert write_confined(root, "./sub//dir/ok.md", "ok") == "sub/dir/ok.md"
    assert (root / "sub/dir/ok.md").read_text() == "ok"


def test_parse_retry_after_reads_milliseconds_seconds_and_dates():
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({}) is None


def test_a_429_storm_halves_the_agent_concurrency_and_the_rest_wait_instead_of_failing(
    make_project, monkeypatch, server
):
    refused = {"action": "status", "status": 429, "retry_after_ms": 300}
    server.script = {"default": [refused] * 4 + [{"action": "reply"}]}
    agent = {"reply_file": "out.md", "max_concurrency": 4}
    project = openai_project(make_project, monkeypatch, server, n_items=8, agent=agent, retries=1)

    result = project.orch("stage", "run", "work", "--max-parallel", "8")

    assert result.returncode == 0, result.stderr
    assert len(server.requests) == 8 + 4  # only the 4 requests in flight were refused
    started = [e for e in events(project) if e["event"] == "started"]
    # "started" is emitted when the limiter admits an attempt: the first four at
    # limit 4, everything after the storm at the halved limit
    first_tries = [e["limit"] for e in started if e["reason"] != "retry"]
    assert first_tries[:4] == [4, 4, 4, 4]
    assert set(first_tries[4:]) == {2}
    assert {e["limit"] for e in started if e["reason"] == "retry"} == {2}


def test_an_unreachable_endpoint_is_an_http_5xx_failure_naming_the_cause(make_project, monkeypatch, server):
    # The endpoint answers orch's pre-flight probe, then goes away (a dead
    # endpoint at the start is the pre-flight's: tests/e2e/test_preflight.py).
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    closed_url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"

    def answer_probe_then_close() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        listener.close()  # before answering: the run's requests find the port closed
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
        conn.close()

    threading.Thread(target=answer_probe_then_close, daemon=True).start()
    agent = {"base_url": closed_url, "reply_file": "out.md"}
    project = openai_project(make_project, monkeypatch, server, agent=agent)

    assert project.orch("stage", "run", "work").returncode == 3
    (path,) = project.root.glob("wip/attempts/work/item01/*/.orch/error.json")
    error = json.loads(path.read_text())
    assert error["error_class"] == "http_5xx"
    assert error["error"].startswith(f"cannot reach {closed_url}: ConnectionRefusedError: ")


def test_tools_requests_send_tool_choice_auto_and_never_a_null_content(make_project, monkeypatch, server):
    server.script = {"default": {"action": "tools", "files": THREE_FILES}}
    project = openai_project(make_project, monkeypatch, server)

    result = project.orch("stage", "run", "work")

    assert result.returncode == 0, result.stderr
    bodies = [r["body"] for r in server.requests]
    assert len(bodies) == 4
    assert [(b["tool_choice"], [t["function"]["name"] for t in b["tools"]]) for b in bodies] == [
        ("auto", ["write_file"])
    ] * 4
    echoed = [m for m in bodies[-1]["messages"] if m["role"] == "assistant"]
    assert [m["content"] for m in echoed] == ["", "", ""]
    assert all(m["tool_calls"] for m in echoed)
    first = transcript(project.root / "data/work/item01/.orch/agent.log")[0]
    assert first["tool_choice"] == "auto"


def test_a_tool_choice_in_options_is_sent_as_given(make_project, monkeypatch, server):
    server.script = {"default": {"action": "tools", "files": {"out.md": "## Result\n\nFine.\n"}}}
    agent = {"options": {"tool_choice": "required"}, "max_turns": 2}
    project = openai_project(make_project, monkeypatch, server, agent=agent)

    assert project.orch("stage", "run", "work").returncode == 0
    assert {r["body"]["tool_choice"] for r in server.requests} == {"required"}


def test_reply_mode_sends_no_tools_and_no_tool_choice(make_project, monkeypatch, server):
    project = openai_project(make_project, monkeypatch, server, agent={"reply_file": "out.md"})

    assert project.orch("stage", "run", "work").returncode == 0
    (request,) = server.requests
    assert "tools" not in request["body"] and "tool_choice" not in request["body"]


LLAMA_CPP_CONTEXT = {
    "action": "status",
    "status": 400,
    "type": "exceed_context_size_error",
    "message": "request (9031 tokens) exceeds the available context size (2048 tokens), try increasing it",
}
OPENAI_CONTEXT_IN_A_500 = {
    "action": "status",
    "status": 500,
    "code": "context_length_exceeded",
    "message": "This model's maximum context length is 8192 tokens.",
}
CONTEXT_HINT = (
    " (the request is longer than the model's context window: shorten the prompt, "
    "lower max_tokens, or serve the model with a larger context)"
)


@pytest.mark.parametrize("step", [LLAMA_CPP_CONTEXT, OPENAI_CONTEXT_IN_A_500], ids=["llama.cpp-400", "500"])
def test_a_context_length_error_is_a_request_error_tried_once(make_project, monkeypatch, server, step):
    server.script = {"default": step}
    project = openai_project(make_project, monkeypatch, server, agent={"reply_file": "out.md"}, retries=2)

    result = project.orch("stage", "run", "work")

    assert result.returncode == 3, result.stderr
    assert len(server.requests) == 1
    (archived,) = project.root.glob("wip/attempts/work/item01/*/.orch/error.json")
    record = json.loads(archived.read_text())
    assert record["error_class"] == "request_error"
    assert record["error"] == f"HTTP {step['status']} from {server.url}: {step['message']}{CONTEXT_HINT}"


@pytest.mark.parametrize(
    ("status", "retry_on", "error_class", "n_requests"),
    [
        (422, None, "request_error", 1),
        (401, None, "request_error", 1),
        (409, None, "http_5xx", 2),
        (400, ["request_error"], "request_error", 2),
    ],
    ids=["422", "401", "409-retried", "400-opted-in"],
)
def test_4xx_other_than_408_409_429_is_not_retried_unless_retry_on_names_request_error(
    make_project, monkeypatch, server, status, retry_on, error_class, n_requests
):
    server.script = {"default": {"action": "status", "status": status, "message": "no"}}
    stage = {"retries": 1, **({"retry_on": retry_on} if retry_on else {})}
    project = openai_project(make_project, monkeypatch, server, agent={"reply_file": "out.md"}, **stage)

    result = project.orch("stage", "run", "work")

    assert result.returncode == 3, result.stderr
    assert len(server.requests) == n_requests
    records = [
        json.loads(p.read_text()) for p in project.root.glob("wip/attempts/work/item01/*/.orch/error.json")
    ]
    assert [r["error_class"] for r in records] == [error_class] * n_requests
