"""The dashboard (orch.web) through aiohttp's test client: pages, files, live events, safety."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from orch.config.project import load_project
from orch.config.workspace import Workspace
from orch.web.app import make_app
from tests.conftest import Project

EVIL = (
    "## Result\n\nHello <script>alert('x')</script> <img src=x onerror=alert(1)>\n\n"
    "[click](javascript:alert(1)) and **bold**\n"
)


def workspace(project: Project) -> Workspace:
    return Workspace(load_project(project.root))


def with_client(project: Project, body: Callable[[TestClient[Any, Any]], Awaitable[Any]]) -> Any:
    """Run `body(client)` against a fresh app for the project, inside its own event loop."""

    async def main() -> Any:
        app = make_app(workspace(project), poll_s=0.02)
        async with TestClient(TestServer(app)) as client:
            return await body(client)

    return asyncio.run(main())


def get(project: Project, path: str, **headers: str) -> tuple[int, str]:
    async def body(client: TestClient[Any, Any]) -> tuple[int, str]:
        response = await client.get(path, headers=headers)
        return response.status, await response.text()

    result: tuple[int, str] = with_client(project, body)
    return result


@pytest.fixture
def ran(make_project: Callable[..., Project]) -> Project:
    """Three partitions after one run: item01 wrote hostile Markdown, item02 failed, item03 passed."""
    project = make_project(3)
    project.script(
        {
            "default": {"action": "succeed"},
            "item01": {"action": "succeed", "files": {"out.md": EVIL}},
            "item02": {"action": "fail", "message": "model said <b>no</b>"},
        }
    )
    result = project.orch("run")
    assert result.returncode == 3, result.stderr
    return project


def frames(text: str) -> list[dict[str, str]]:
    """Parse SSE text into frames (field -> value); comments and retry-only blocks skipped."""
    out = []
    for block in text.split("\n\n"):
        frame = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                key, _, value = line.partition(": ")
                frame[key] = value
        if "event" in frame:
            out.append(frame)
    return out


def events_path(project: Project) -> Path:
    return next((project.root / "wip" / "runs").glob("*/events.jsonl"))


# -- pages -----------------------------------------------------------------------------------


def test_overview_shows_counts_barrier_and_the_finished_run(ran: Project):
    status, html = get(ran, "/")
    assert status == 200
    assert 'data-stage="work"' in html
    assert "complete 2" in html and "failed 1" in html
    assert "NOT met (2/3)" in html
    assert "finished" in html and "3 / 3 settled" in html


def test_tree_has_one_chip_per_partition_with_reason_on_hover(ran: Project):
    status, html = get(ran, "/tree")
    assert status == 200
    assert html.count('class="chip st-') == 3
    assert 'data-key="work/item02" data-status="failed"' in html
    assert "model said &lt;b&gt;no&lt;/b&gt;" in html  # the reason in title=, escaped


def test_grid_filters_by_status(ran: Project):
    status, html = get(ran, "/tree?grid=1&status=failed")
    assert status == 200
    assert 'data-key="work/item02"' in html
    assert 'data-key="work/item01"' not in html


def test_partition_page_puts_prompt_beside_outputs_and_script_stays_inert(ran: Project):
    status, html = get(ran, "/p/work/item01")
    assert status == 200
    assert 'id="prompt"' in html and 'id="outputs"' in html
    assert "Work on item01" in html  # the prompt, rendered and raw
    assert "<strong>bold</strong>" in html  # Markdown rendered
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert "<img src=x" not in html and 'href="javascript:' not in html


def test_partition_page_of_a_failed_partition_shows_attempt_error_and_log(ran: Project):
    status, html = get(ran, "/p/work/item02")
    assert status == 200
    assert "failed" in html
    assert "model said &lt;b&gt;no&lt;/b&gt;" in html and "<b>no</b>" not in html
    assert "/p/work/item02/attempts/1/agent.log" in html


def test_stale_partition_page_shows_the_prompt_diff(ran: Project):
    blueprint = ran.root / "agents" / "work.md"
    blueprint.write_text(blueprint.read_text().replace("Topic: <TOPIC>.", "Subject: <TOPIC>."))
    status, html = get(ran, "/p/work/item03")
    assert status == 200
    assert 'id="diff"' in html
    assert "-Topic: testing." in html and "+Subject: testing." in html


def test_timeline_draws_a_bar_per_attempt(ran: Project):
    status, html = get(ran, "/timeline")
    assert status == 200
    assert html.count('<span class="st-') == 3
    assert "st-failed" in html and "st-complete" in html


def test_failures_page_lists_archived_attempts_and_notes(ran: Project):
    status, html = get(ran, "/failures")
    assert status == 200
    assert "work/item02" in html
    assert "wip/notes.md" in html and "<script" not in html


def test_unknown_partition_and_run_are_404(ran: Project):
    assert get(ran, "/p/work/nope")[0] == 404
    assert get(ran, "/p/nostage/item01")[0] == 404
    assert get(ran, "/timeline?run=nope")[0] == 404
    assert get(ran, "/events?run=..")[0] == 404


def test_a_new_event_refreshes_the_shared_snapshot(ran: Project):
    async def body(client: TestClient[Any, Any]) -> tuple[str, str]:
        before = await (await client.get("/tree")).text()
        (ran.root / "data" / "work" / "item03" / "out.md").unlink()
        with open(events_path(ran), "a") as handle:
            handle.write(json.dumps({"ts": 9.0, "event": "cleaned"}) + "\n")
        return before, await (await client.get("/tree")).text()

    before, after = with_client(ran, body)
    assert 'data-key="work/item03" data-status="complete"' in before
    assert 'data-key="work/item03" data-status="incomplete"' in after


def test_only_get_routes(ran: Project):
    async def body(client: TestClient[Any, Any]) -> list[int]:
        return [(await client.request(m, "/")).status for m in ("POST", "PUT", "DELETE")]

    assert with_client(ran, body) == [405, 405, 405]


# -- files -----------------------------------------------------------------------------------


def test_a_listed_output_is_served_as_plain_text(ran: Project):
    async def body(client: TestClient[Any, Any]) -> tuple[int, str, str]:
        response = await client.get("/p/work/item01/files/out.md")
        return response.status, response.headers["Content-Type"], await response.text()

    status, kind, text = with_client(ran, body)
    assert (status, kind, text) == (200, "text/plain; charset=utf-8", EVIL)


@pytest.mark.parametrize(
    "path",
    [
        "/p/work/item01/files/..%2f..%2f..%2forch.yaml",
        "/p/work/item01/files/%2e%2e/%2e%2e/%2e%2e/orch.yaml",
        "/p/work/item01/files/.orch/manifest.json",
        "/p/work/item01/files//etc/passwd",
        "/p/work/item01/files/%2Fetc%2Fpasswd",
        "/p/work/item02/attempts/1/..%2f..%2f..%2f..%2f..%2forch.yaml",
        "/p/work/item02/attempts/..%2f1/agent.log",
        "/p/work/item02/attempts/1/prompt.md",
    ],
)
def test_traversal_attempts_are_404(ran: Project, path: str):
    async def body(client: TestClient[Any, Any]) -> int:
        response = await client.get(path, allow_redirects=False)
        return response.status

    assert with_client(ran, body) in (404, 400)


def test_a_symlinked_output_is_not_followed(ran: Project):
    out = ran.root / "data" / "work" / "item03" / "out.md"
    out.unlink()
    out.symlink_to(ran.root / "orch.yaml")
    status, text = get(ran, "/p/work/item03/files/out.md")
    assert status == 404 and "stages" not in text


def test_archived_attempt_log_is_served(ran: Project):
    status, _ = get(ran, "/p/work/item02/attempts/1/agent.log")
    assert status == 200


def test_a_session_of_requests_leaves_the_project_byte_identical(ran: Project):
    def fingerprint() -> dict[str, tuple[str, int]]:
        found = {}
        for path in sorted(ran.root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                found[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        return found

    before = fingerprint()
    dirs_before = sorted(str(p) for p in ran.root.rglob("*"))

    async def body(client: TestClient[Any, Any]) -> None:
        for path in ("/", "/tree", "/tree?grid=1", "/p/work/item01", "/p/work/item02", "/timeline"):
            assert (await client.get(path)).status == 200
        for path in ("/failures", "/api/snapshot", "/p/work/item01/files/out.md", "/events?run=x"):
            await client.get(path)

    with_client(ran, body)
    assert fingerprint() == before
    assert sorted(str(p) for p in ran.root.rglob("*")) == dirs_before


# -- live events ---------------------------------------------------------------------------


async def read_sse(client: TestClient[Any, Any], path: str, timeout_s: float = 10, **headers: str) -> str:
    response = await client.get(path, headers=headers)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    return await asyncio.wait_for(response.text(), timeout_s)


def test_sse_frames_carry_the_byte_offset_as_id_and_end_at_run_finished(ran: Project):
    path = events_path(ran)
    run_id = path.parent.name
    text = with_client(ran, lambda c: read_sse(c, f"/events?run={run_id}"))
    got = frames(text)
    assert got[0]["event"] == "hello" and json.loads(got[0]["data"]) == {"run_id": run_id}
    changes = [f for f in got if f["event"] == "change"]
    data = path.read_bytes()
    ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    assert [int(f["id"]) for f in changes] == ends
    last = json.loads(changes[-1]["data"])
    assert last["event"] == "run_finished"
    failed = [json.loads(f["data"]) for f in changes if json.loads(f["data"])["partition"] == "item02"]
    assert failed[-1]["status"] == "failed"


def test_sse_resumes_exactly_after_last_event_id(ran: Project):
    path = events_path(ran)
    run_id = path.parent.name
    ends = [i + 1 for i, b in enumerate(path.read_bytes()) if b == ord("\n")]
    resume_at = ends[2]
    headers = {"Last-Event-ID": str(resume_at)}
    text = with_client(ran, lambda c: read_sse(c, f"/events?run={run_id}", **headers))
    ids = [int(f["id"]) for f in frames(text) if f["event"] == "change"]
    assert ids == ends[3:]


def test_sse_waits_for_a_torn_last_line_then_sends_it_whole(ran: Project):
    run_dir = ran.root / "wip" / "runs" / "20990101T000000-1"
    run_dir.mkdir()
    log = run_dir / "events.jsonl"
    item = {"stage": "work", "partition": "item01", "attempt": 1}
    first = json.dumps({"ts": 1.0, "event": "started", **item})
    second = json.dumps({"ts": 2.0, "event": "promoted", **item})
    done = json.dumps({"ts": 3.0, "event": "run_finished", "ok": True})
    log.write_text(first + "\n" + second[:20])

    async def body(client: TestClient[Any, Any]) -> list[dict[str, str]]:
        response = await client.get(f"/events?run={run_dir.name}")
        seen = ""
        while "event: change" not in seen:
            seen += (await asyncio.wait_for(response.content.readany(), 10)).decode()
        await asyncio.sleep(0.1)  # several polls see the torn line
        with open(log, "a") as handle:
            handle.write(second[20:] + "\n" + done + "\n")
        seen += await asyncio.wait_for(response.text(), 10)
        return frames(seen)

    changes = [json.loads(f["data"]) for f in with_client(ran, body) if f["event"] == "change"]
    assert [(c["event"], c["status"]) for c in changes] == [
        ("started", "running"),
        ("promoted", "complete"),
        ("run_finished", None),
    ]


def test_sse_following_the_newest_run_announces_a_newer_one(ran: Project):
    async def body(client: TestClient[Any, Any]) -> list[dict[str, str]]:
        response = await client.get("/events")
        head = (await asyncio.wait_for(response.content.readany(), 10)).decode()
        newer = ran.root / "wip" / "runs" / "20990101T000000-2"
        newer.mkdir()
        (newer / "events.jsonl").write_text(json.dumps({"ts": 1.0, "event": "run_started"}) + "\n")
        return frames(head + await asyncio.wait_for(response.text(), 10))

    got = with_client(ran, body)
    assert got[-1] == {"event": "run", "data": json.dumps({"run_id": "20990101T000000-2"})}


def test_sse_ends_cleanly_on_client_disconnect_and_server_shutdown(ran: Project):
    async def main() -> None:
        app = make_app(workspace(ran), poll_s=0.02)
        runner = web.AppRunner(app, shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert b"event: hello" in await asyncio.wait_for(reader.read(4096), 10)
        writer.close()  # the client goes away
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
        writer2.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer2.drain()
        await asyncio.wait_for(reader2.read(4096), 10)
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(runner.cleanup(), 10)  # the open stream ends with the server
        assert asyncio.get_running_loop().time() - started < 3
        writer2.close()

    asyncio.run(main())
