"""The aiohttp application of `orch serve`: GET-only pages, raw files by name, and live events.

Read-only: the handlers open project files for reading, take no partition
lock and write nothing. A raw file is served only when a manifest or an
archived attempt lists it by that name, so no request path reaches the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import time
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from orch.config.workspace import Workspace
from orch.errors import OrchError
from orch.observe.events import READ_CHUNK_BYTES, EventName, EventReader, latest_run
from orch.observe.snapshot import Snapshot, take_snapshot
from orch.store.checks import META_DIR
from orch.store.layout import AGENT_LOG, ERROR, list_attempts
from orch.store.manifest import read_manifest
from orch.web import pages
from orch.web.cache import SnapshotCache

WORKSPACE: web.AppKey[ProjectWatch] = web.AppKey("workspace")
TEMPLATES = web.AppKey("templates", jinja2.Environment)
STOPPING = web.AppKey("stopping", asyncio.Event)
SNAPSHOTS = web.AppKey("snapshots", SnapshotCache)
POLL_S = web.AppKey("poll_s", float)
# A comment line keeps idle SSE connections alive through proxies (seconds).
HEARTBEAT_S = 15.0
# How often an SSE stream that follows the newest run lists runs for a newer one,
# besides at once when wip/runs' mtime changes (seconds).
NEW_RUN_CHECK_S = 5.0


class ProjectWatch:
    """The loaded project, reloaded when orch.yaml, agents/ or references/ change.

    A blueprint edited while the dashboard runs must show as stale, with its
    diff, on the next page load. Each request stats those files (a few dozen
    here); a config that fails to load (a half-saved file) keeps the previous one.
    """

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.root = workspace.root
        self.signature = self._signature()

    def current(self) -> Workspace:
        """Return the workspace, reloaded first if its input files changed."""
        signature = self._signature()
        if signature != self.signature:
            from orch.config.project import load_project

            try:
                self.workspace = Workspace(load_project(self.root))
            except OrchError:
                return self.workspace
            self.signature = signature
        return self.workspace

    def _signature(self) -> tuple[tuple[str, int, int], ...]:
        found = []
        for base in (self.root / "orch.yaml", self.root / "agents", self.root / "references"):
            paths = [base] if not base.is_dir() else sorted(base.rglob("*"))
            for path in paths:
                try:
                    stat = path.stat()
                except OSError:
                    continue
                found.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(found)


async def _workspace(request: web.Request) -> Workspace:
    return await asyncio.to_thread(request.app[WORKSPACE].current)


def make_app(workspace: Workspace, poll_s: float = 0.1) -> web.Application:
    """Build the dashboard application for one loaded project.

    Args:
        workspace: The loaded project (config, blueprints, partitions).
        poll_s: Seconds between looks at events.jsonl once an SSE stream caught up.
    """
    app = web.Application()
    app[WORKSPACE] = ProjectWatch(workspace)
    app[TEMPLATES] = jinja2.Environment(
        loader=jinja2.PackageLoader("orch.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    app[STOPPING] = asyncio.Event()
    app[SNAPSHOTS] = SnapshotCache()
    app[POLL_S] = poll_s
    app.on_startup.append(_warm_snapshot)
    app.on_shutdown.append(_stop_streams)
    app.router.add_get("/", overview)
    app.router.add_get("/tree", tree)
    app.router.add_get("/timeline", timeline)
    app.router.add_get("/failures", failures)
    app.router.add_get("/events", events)
    app.router.add_get("/api/snapshot", snapshot_json)
    app.router.add_get("/p/{stage}/{partition}", partition)
    app.router.add_get("/p/{stage}/{partition}/files/{name:.+}", output_file)
    app.router.add_get("/p/{stage}/{partition}/attempts/{n}/{name}", attempt_file)
    return app


async def _warm_snapshot(app: web.Application) -> None:
    """Take the first snapshot before the server accepts connections, so the first
    page is served from the cache too (about 2.5 s at 10,000 partitions otherwise,
    bench/serve.py). A project that cannot be read now is left to the first request."""
    with contextlib.suppress(Exception):
        await app[SNAPSHOTS].get(app[WORKSPACE].current())


async def _stop_streams(app: web.Application) -> None:
    app[STOPPING].set()


def _render(request: web.Request, template: str, **context: Any) -> web.Response:
    env = request.app[TEMPLATES]
    html = env.get_template(template).render(page=template.split(".")[0], **context)
    return web.Response(text=html, content_type="text/html")


async def _snapshot(request: web.Request, run_id: str | None = None) -> Snapshot:
    workspace = await _workspace(request)
    if run_id is None:
        return await request.app[SNAPSHOTS].get(workspace)
    try:
        return await asyncio.to_thread(take_snapshot, workspace, None, run_id)
    except OrchError as err:
        raise web.HTTPNotFound(text=str(err)) from err


# -- pages -----------------------------------------------------------------------------------


async def overview(request: web.Request) -> web.Response:
    """Per-stage status bars, usage against budgets, barrier verdicts, run progress and ETA."""
    snap = await _snapshot(request)
    data = await asyncio.to_thread(pages.overview, request.app[WORKSPACE].workspace, snap)
    return _render(request, "overview.html", **data)


async def tree(request: web.Request) -> web.Response:
    """The fan-in tree; per-stage grids with a status filter for large projects or `?grid=1`."""
    snap = await _snapshot(request)
    status = request.query.get("status") or None
    stage = request.query.get("stage") or None
    total = sum(len(s.partitions) for s in snap.stages)
    as_grid = bool(status or stage or request.query.get("grid")) or total > pages.TREE_MAX_PARTITIONS
    workspace = request.app[WORKSPACE].workspace
    roots = [] if as_grid else await asyncio.to_thread(pages.fan_in_tree, workspace, snap)
    grids = pages.stage_grid(snap, stage, status) if as_grid else []
    return _render(
        request,
        "tree.html",
        roots=roots,
        grids=grids,
        status=status or "",
        stage=stage or "",
        stages=[s.name for s in snap.stages],
        statuses=sorted({pages.chip_status(p) for s in snap.stages for p in s.partitions}),
        offset=snap.progress.offset if snap.progress else 0,
        run_id=snap.run.run_id if snap.run else "",
    )


async def partition(request: web.Request) -> web.Response:
    """Prompt beside outputs (raw and rendered), status, findings, attempts, manifest, stale diff."""
    from orch.usecases.inspect import show_partition

    workspace = await _workspace(request)
    stage, pid = request.match_info["stage"], request.match_info["partition"]
    try:
        data = await asyncio.to_thread(show_partition, workspace, stage, pid)
    except (OrchError, KeyError) as err:
        raise web.HTTPNotFound(text=f"no partition {stage}/{pid}: {err}") from err
    page = await asyncio.to_thread(pages.partition_page, workspace, data)
    manifest_json = json.dumps(data["manifest_data"], indent=2, sort_keys=True, default=str)
    return _render(request, "partition.html", p=page, manifest_json=manifest_json)


async def timeline(request: web.Request) -> web.Response:
    """A Gantt chart of one run's attempts (`?run=ID`, else the newest run)."""
    from orch.observe.events import list_runs

    root = request.app[WORKSPACE].root
    runs = await asyncio.to_thread(list_runs, root)
    wanted = request.query.get("run")
    run = next((r for r in runs if r.run_id == wanted), None) if wanted else (runs[-1] if runs else None)
    if wanted and run is None:
        raise web.HTTPNotFound(text=f"no run {wanted!r} under wip/runs")
    chart = await asyncio.to_thread(pages.timeline, run.events_path if run else None)
    return _render(
        request, "timeline.html", chart=chart, run_id=run.run_id if run else "", runs=[r.run_id for r in runs]
    )


async def failures(request: web.Request) -> web.Response:
    """wip/notes.md and the archived attempts with their errors."""
    data = await asyncio.to_thread(pages.failures, request.app[WORKSPACE].root)
    return _render(request, "failures.html", **data)


async def snapshot_json(request: web.Request) -> web.Response:
    """The snapshot as JSON (`?run=ID` to follow another run)."""
    snap = await _snapshot(request, request.query.get("run") or None)
    return web.json_response(snap.to_json())


# -- files -----------------------------------------------------------------------------------


def _file_response(path: Path) -> web.StreamResponse:
    """Serve a regular file that is not a symlink, as text or bytes; 404 otherwise."""
    try:
        if path.is_symlink() or not path.is_file():
            raise web.HTTPNotFound(text="not a regular file")
    except OSError as err:
        raise web.HTTPNotFound(text="unreadable") from err
    text_like = path.suffix in (".md", ".txt", ".json", ".log", ".csv", ".yaml", ".yml", "")
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'"}
    if text_like:
        headers["Content-Type"] = "text/plain; charset=utf-8"
    else:
        headers["Content-Type"] = "application/octet-stream"
    return web.FileResponse(path, headers=headers)


async def output_file(request: web.Request) -> web.StreamResponse:
    """One output file, looked up by name in the partition's manifest (nothing else is served)."""
    workspace = await _workspace(request)
    stage, pid, name = (request.match_info[k] for k in ("stage", "partition", "name"))
    try:
        out_dir = workspace.root / workspace.partitions.get(stage, pid).out_dir
    except (OrchError, KeyError) as err:
        raise web.HTTPNotFound(text=f"no partition {stage}/{pid}") from err
    manifest = await asyncio.to_thread(read_manifest, out_dir)
    listed = {o.path: o for o in manifest.outputs} if manifest else {}
    if name not in listed or not _is_inside(listed[name].path):
        raise web.HTTPNotFound(text=f"{name!r} is not an output listed in the manifest of {stage}/{pid}")
    return _file_response(out_dir / listed[name].path)


def _is_inside(rel: str) -> bool:
    """True if a manifest's relative path stays inside its directory (a tampered one may not)."""
    norm = posixpath.normpath(rel)
    return not (rel.startswith("/") or norm.startswith("..") or "\0" in rel)


async def attempt_file(request: web.Request) -> web.StreamResponse:
    """The agent log or error record of one archived attempt, looked up in the attempt list."""
    workspace = await _workspace(request)
    stage, pid, n, name = (request.match_info[k] for k in ("stage", "partition", "n", "name"))
    attempts = {path.name: path for _, path in list_attempts(workspace.root, stage, pid)}
    allowed = {AGENT_LOG: AGENT_LOG, ERROR: ERROR}
    if stage not in workspace.project.stages or n not in attempts or name not in allowed:
        raise web.HTTPNotFound(text=f"no attempt file {stage}/{pid}/{n}/{name}")
    return _file_response(attempts[n] / META_DIR / allowed[name])


# -- live events -----------------------------------------------------------------------------


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events tailing a run's events.jsonl: one compact diff per event.

    `?run=ID` pins a run (add `follow=1` to start there but still move on);
    otherwise the newest run is followed, and when a
    newer one starts an `event: run` frame names it and the stream ends (the
    page reconnects to it). Each frame's `id:` is the byte offset just past
    its line, so `Last-Event-ID` (or `?offset=`) resumes exactly. Every wait is
    bounded by `poll_s`; the stream ends on client disconnect and server shutdown.
    """
    app = request.app
    root = app[WORKSPACE].root
    wanted = request.query.get("run") or None
    pinned = wanted is not None and not request.query.get("follow")
    run = await asyncio.to_thread(_run_path, root, wanted)
    if run is None:
        if wanted:
            raise web.HTTPNotFound(text=f"no run {wanted!r} under wip/runs")
        run_id, path = "", None
    else:
        run_id, path = run
    offset = _offset(request.headers.get("Last-Event-ID") or request.query.get("offset"))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
        await _stream(app, response, root, run_id, path, offset, pinned)
    return response


async def _stream(
    app: web.Application,
    response: web.StreamResponse,
    root: Path,
    run_id: str,
    path: Path | None,
    offset: int,
    pinned: bool,
) -> None:
    poll_s, stopping = app[POLL_S], app[STOPPING]
    reader = EventReader(path, offset) if path is not None else None
    await response.write(f"retry: 1000\nevent: hello\ndata: {json.dumps({'run_id': run_id})}\n\n".encode())
    last_write = last_check = time.monotonic()
    seen_mtime = _mtime_ns(root / "wip" / "runs")
    while not stopping.is_set():
        batch = reader.read(max_bytes=READ_CHUNK_BYTES) if reader is not None else []
        for event in batch:
            change = pages.live_change(event)
            frame = f"id: {event.offset}\nevent: change\ndata: {json.dumps(change)}\n\n"
            await response.write(frame.encode())
            last_write = time.monotonic()
            if event.name is EventName.RUN_FINISHED and pinned:
                return
        if batch:
            continue
        now = time.monotonic()
        runs_mtime = _mtime_ns(root / "wip" / "runs")
        if not pinned and (runs_mtime != seen_mtime or now - last_check >= NEW_RUN_CHECK_S):
            # a new run directory changes wip/runs' mtime: one stat per poll finds it at once
            last_check, seen_mtime = now, runs_mtime
            newest = await asyncio.to_thread(_run_path, root, None)
            if newest is not None and newest[0] != run_id:
                await response.write(f"event: run\ndata: {json.dumps({'run_id': newest[0]})}\n\n".encode())
                return
        if now - last_write >= HEARTBEAT_S:
            await response.write(b": keep-alive\n\n")
            last_write = now
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=poll_s)


def _run_path(root: Path, run_id: str | None) -> tuple[str, Path] | None:
    if run_id is None:
        run = latest_run(root)
        return (run.run_id, run.events_path) if run else None
    run_dir = root / "wip" / "runs" / run_id
    if "/" in run_id or run_id in ("", ".", "..") or not run_dir.is_dir():
        return None
    return run_id, run_dir / "events.jsonl"


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _offset(value: str | None) -> int:
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        return 0


def serve(workspace: Workspace, host: str, port: int, on_ready: Any = None) -> None:
    """Serve the dashboard until interrupted (blocks).

    Args:
        workspace: The loaded project.
        host: Address to bind (127.0.0.1 by default in the CLI).
        port: TCP port; 0 picks a free one.
        on_ready: Called with the URL once listening (the CLI prints it on stderr).
    """
    asyncio.run(_serve(workspace, host, port, on_ready))


async def _serve(workspace: Workspace, host: str, port: int, on_ready: Any) -> None:
    runner = web.AppRunner(make_app(workspace), shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    url = f"http://{host if ':' not in host else f'[{host}]'}:{bound}/"
    if on_ready is not None:
        on_ready(url)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
