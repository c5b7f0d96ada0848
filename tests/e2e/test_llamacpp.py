"""The `openai` backend against a real llama.cpp server (SmolLM2-135M), through the real CLI.

The server is llama.cpp's own C++ server from the `xllamacpp` wheel, started
once per session by tests/llamacpp_server.py on 127.0.0.1 (a free port, 2
slots). The model is far too small to do the work: these tests assert the
plumbing — reply file, usage, transcript, checks, barrier verdict — never
that the model's output passes the checks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, default_config

pytest.importorskip(
    "xllamacpp",
    exc_type=ImportError,
    reason="xllamacpp is not installed (pip install -e '.[dev]' installs it)",
)

SERVER_SCRIPT = REPO / "tests" / "llamacpp_server.py"
START_TIMEOUT_S = 60.0
#: temperature 0 for repeatable replies; cache_prompt false so a reply never
#: depends on what an earlier request left in the slot's cache; max_tokens keeps
#: each request to a few seconds on two loaded cores.
OPTIONS = {"temperature": 0, "cache_prompt": False, "max_tokens": 48}


@pytest.fixture(scope="session")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start the llama.cpp server once; yield its base_url (http://127.0.0.1:PORT/v1); stop it."""
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"
    with open(log, "w") as err:
        process = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), "--port", "0", "--slots", "2"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert process.stdout is not None
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(START_TIMEOUT_S)  # the script prints the URL once /health answers
    try:
        url = first[0].strip() if first else ""
        if not url.startswith("http://"):
            raise AssertionError(
                f"llama.cpp server did not start within {START_TIMEOUT_S:g}s "
                f"(exit code {process.poll()}); its log:\n{log.read_text()[-2000:]}"
            )
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def llama_project(make_project, url: str, n_items: int = 2, agent: dict[str, Any] | None = None, **stage):
    """A project whose default agent is the llama.cpp server, in reply mode unless `agent` says otherwise."""
    config = default_config(n_items, **stage)
    config["agents"]["smollm2"] = {
        "backend": "openai",
        "base_url": url,
        "model": "smollm2",
        "api_key_env": None,
        "options": dict(OPTIONS),
        **(agent or {"reply_file": "out.md"}),
    }
    config["agents"]["default"] = "smollm2"
    return make_project(n_items, config=config)


def attempt_dirs(project, item: str) -> list[Path]:
    """Where the partition's attempts ended: the promoted output and/or archived failures."""
    promoted = project.root / f"data/work/{item}"
    archived = sorted(project.root.glob(f"wip/attempts/work/{item}/*"))
    return ([promoted] if promoted.is_dir() else []) + archived


def attempt_record(directory: Path) -> dict[str, Any]:
    """The last attempt's record: from the manifest if promoted, else from error.json."""
    manifest = directory / ".orch/manifest.json"
    if manifest.exists():
        return json.loads(manifest.read_text())["attempts"][-1]
    return json.loads((directory / ".orch/error.json").read_text())


def transcript(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (directory / ".orch/agent.log").read_text().splitlines()]


def test_reply_mode_writes_the_reply_records_usage_and_the_barrier_judges_it(make_project, llama_url):
    project = llama_project(make_project, llama_url, n_items=2)

    result = project.orch("stage", "run", "work", timeout=120)

    assert result.returncode in (0, 3), result.stderr
    failed = []
    for item in ("item01", "item02"):
        (directory,) = attempt_dirs(project, item)  # retries: 0, so exactly one attempt
        assert (directory / "out.md").read_text().strip(), "the reply file is written, pass or fail"
        kinds = [line["orch"] for line in transcript(directory)]
        assert kinds == ["request", "response", "wrote"]
        request, response = transcript(directory)[:2]
        assert request["options"] == OPTIONS and "tools" not in request
        assert response["usage"]["prompt_tokens"] > 0
        record = attempt_record(directory)
        assert record["usage"]["input_tokens"] == response["usage"]["prompt_tokens"]
        assert record["usage"]["output_tokens"] == response["usage"]["completion_tokens"] > 0
        if record["outcome"] == "failed":
            # the checks ran on the real reply and said what is wrong with it
            assert record["error_class"] == "checks", record
            assert record["error"].startswith("output checks failed: out.md: ")
            failed.append((item, record["error"]))
    barrier = project.orch("barrier", "work")
    assert barrier.returncode == (4 if failed else 0), barrier.stderr
    assert (result.returncode == 3) == bool(failed)
    if failed:  # the barrier names each failed partition with its checks' finding
        assert f"error: barrier work: {2 - len(failed)} of 2 partitions complete" in barrier.stderr
        for item, error in failed:
            (row,) = [line for line in barrier.stdout.splitlines() if line.startswith(item)]
            assert error in row


def test_a_prompt_longer_than_the_context_is_a_request_error_tried_once(make_project, llama_url):
    # 2048 tokens per slot; this prompt is about 3,000
    project = llama_project(make_project, llama_url, n_items=1, retries=2)
    project.write("agents/work.md", "# Work on <ITEM_ID>\n\n" + "Consider the topic carefully. " * 600)

    result = project.orch("stage", "run", "work", timeout=120)

    assert result.returncode == 3, result.stderr
    (directory,) = attempt_dirs(project, "item01")
    record = attempt_record(directory)
    assert record["error_class"] == "request_error"
    assert record["error"].startswith(f"HTTP 400 from {llama_url}: request (")
    assert "exceeds the available context size" in record["error"]
    kinds = [line["orch"] for line in transcript(directory)]
    assert kinds == ["request", "http_error", "failed"]


def test_tools_mode_offers_write_file_and_the_attempt_ends_with_a_named_class(make_project, llama_url):
    agent = {"mode": "tools", "max_turns": 2}
    project = llama_project(make_project, llama_url, n_items=1, agent=agent)

    result = project.orch("stage", "run", "work", timeout=120)

    assert result.returncode in (0, 3), result.stderr
    (directory,) = attempt_dirs(project, "item01")
    lines = transcript(directory)
    first = lines[0]
    assert first["orch"] == "request" and first["tool_choice"] == "auto"
    assert [t["function"]["name"] for t in first["tools"]] == ["write_file"]
    responses = [line for line in lines if line["orch"] == "response"]
    assert 1 <= len(responses) <= 2 and all(r["usage"]["prompt_tokens"] > 0 for r in responses)
    record = attempt_record(directory)
    assert record["usage"]["num_turns"] == len(responses)
    if result.returncode == 3:
        # SmolLM2 answers in text rather than calling write_file: out.md is missing
        assert record["error_class"] in ("checks", "request_error", "agent_error"), record
        assert record["error"]
