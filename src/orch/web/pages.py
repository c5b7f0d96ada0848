"""What each dashboard page shows, as plain dicts built from the snapshot and the disk.

Read-only: files are opened for reading only, no partition lock is taken.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from orch.config.workspace import Workspace
from orch.observe.events import Event, EventName, EventReader
from orch.observe.snapshot import PartitionView, Snapshot
from orch.store.checks import META_DIR
from orch.store.state import PROMPT, read_error

# Above this many partitions the tree page shows per-stage grids with a status filter.
TREE_MAX_PARTITIONS = 2000
# At most this many bytes of an output, prompt or note are shown inline.
INLINE_MAX_BYTES = 256 << 10
# At most this many rows on the timeline (the earliest-starting attempts).
TIMELINE_MAX_ROWS = 2000
# Statuses whose tree branches open by default.
OPEN_STATUSES = frozenset({"failed", "stale", "incomplete", "modified"})
# Event name -> chip status shown live in the browser.
LIVE_STATUS: dict[str, str] = {
    EventName.STARTED: "running",
    EventName.RETRIED: "backing_off",
    EventName.PROMOTED: "complete",
    EventName.FAILED: "failed",
    EventName.BLOCKED: "blocked",
    EventName.SKIPPED: "skipped",
    EventName.INTERRUPTED: "interrupted",
    EventName.HALTED: "halted",
}


def markdown_html(text: str) -> str:
    """Render untrusted Markdown to HTML: CommonMark, raw HTML off, unsafe links dropped.

    markdown-it escapes every raw HTML tag and its `validateLink` refuses
    `javascript:`, `vbscript:`, `file:` and non-image `data:` URLs.
    """
    return MarkdownIt("commonmark", {"html": False}).render(text)


def chip_status(view: PartitionView) -> str:
    """Return the colour class of a partition chip: its live phase, else its status on disk."""
    if view.phase is not None and view.phase.value not in ("done", "queued"):
        return view.phase.value
    return view.status


def chip_title(view: PartitionView) -> str:
    """Return a chip's hover text: id, status and why."""
    parts = [f"{view.stage}/{view.id}: {view.status}", view.reason]
    if view.live_reason:
        parts.append(view.live_reason)
    if view.error:
        parts.append(f"error: {view.error}")
    return " — ".join(p for p in parts if p)


def live_change(event: Event) -> dict[str, Any]:
    """Return the compact diff sent to browsers for one event (no re-plan).

    Shape: `{"event", "ts", "stage", "partition", "attempt", "status"}`;
    `status` is the chip colour for partition events, else None.
    """
    name = event.name
    status = LIVE_STATUS.get(name) if isinstance(name, EventName) and event.partition else None
    return {
        "event": str(name),
        "ts": event.ts,
        "stage": event.stage,
        "partition": event.partition,
        "attempt": event.attempt,
        "status": status,
    }


# -- overview --------------------------------------------------------------------------


def overview(workspace: Workspace, snapshot: Snapshot) -> dict[str, Any]:
    """Return per-stage status bars, usage against budgets, barriers and run progress."""
    project = workspace.project
    stages = []
    for view in snapshot.stages:
        total = len(view.partitions) or 1
        bars = [
            {"status": s, "n": n, "pct": round(100.0 * n / total, 3)} for s, n in view.counts.items() if n
        ]
        stages.append(
            {
                "name": view.name,
                "total": len(view.partitions),
                "bars": bars,
                "counts": {s: n for s, n in view.counts.items() if n},
                "phases": {p: n for p, n in view.phases.items() if n},
                "barrier": view.barrier,
                "cost_usd": view.cost_usd,
                "tokens": view.tokens,
                "budget_usd": project.stages[view.name].max_cost_usd,
            }
        )
    progress = snapshot.progress
    run = None
    if snapshot.run is not None and progress is not None:
        run = {
            "id": snapshot.run.run_id,
            "alive": snapshot.run.alive,
            "finished": progress.finished,
            "ok": progress.ok,
            "total": progress.total,
            "settled": progress.settled,
            "pct": round(100.0 * progress.settled / progress.total, 1) if progress.total else 0.0,
            "eta_s": progress.eta_s(),
            "running": [p.to_json(snapshot.taken_at) for p in progress.running()][:50],
            "usage": progress.usage.to_json(),
            "halted": progress.halted,
        }
    return {
        "stages": stages,
        "totals": snapshot.totals(),
        "budget_usd": project.max_cost_usd,
        "run": run,
        "offset": progress.offset if progress else 0,
        "run_id": snapshot.run.run_id if snapshot.run else "",
    }


# -- fan-in tree -------------------------------------------------------------------------


@dataclass
class TreeNode:
    """One partition in the fan-in tree, with the partitions it reads."""

    key: str
    view: PartitionView
    status: str
    title: str
    children: list[TreeNode] = field(default_factory=list)
    is_open: bool = False


def fan_in_tree(workspace: Workspace, snapshot: Snapshot) -> list[TreeNode]:
    """Return the roots (partitions no other partition reads) with their children.

    A branch is open when it or a descendant is failing or stale. A partition
    read by several parents appears under each.
    """
    views = {(v.stage, v.id): v for s in snapshot.stages for v in s.partitions}
    children: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
    read: set[tuple[str, str]] = set()
    for stage in snapshot.stages:
        for partition in workspace.partitions.for_stage(stage.name):
            kids = tuple(k for k in partition.children if k in views)
            children[(partition.stage, partition.id)] = kids
            read.update(kids)
    memo: dict[tuple[str, str], TreeNode] = {}

    def build(key: tuple[str, str]) -> TreeNode:
        if key in memo:
            return memo[key]
        view = views[key]
        status = chip_status(view)
        node = TreeNode(f"{key[0]}/{key[1]}", view, status, chip_title(view))
        node.children = [build(k) for k in children.get(key, ())]
        node.is_open = status in OPEN_STATUSES or any(
            c.is_open or c.status in OPEN_STATUSES for c in node.children
        )
        memo[key] = node
        return node

    return [build(key) for key in views if key not in read]


def stage_grid(snapshot: Snapshot, stage: str | None, status: str | None) -> list[dict[str, Any]]:
    """Return, per stage (or one), its chips filtered by status (chip colour or disk status)."""
    grids = []
    for view in snapshot.stages:
        if stage and view.name != stage:
            continue
        chips: list[dict[str, Any]] = [
            {"key": f"{p.stage}/{p.id}", "view": p, "status": chip_status(p), "title": chip_title(p)}
            for p in view.partitions
        ]
        if status:
            chips = [c for c in chips if status in (c["status"], c["view"].status)]
        grids.append({"name": view.name, "total": len(view.partitions), "chips": chips})
    return grids


# -- partition page --------------------------------------------------------------------------


def read_text(path: Path, max_bytes: int = INLINE_MAX_BYTES) -> tuple[str | None, bool]:
    """Return up to `max_bytes` of a regular, non-symlinked file as text, and whether it was cut."""
    try:
        if path.is_symlink() or not path.is_file():
            return None, False
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError:
        return None, False
    return data[:max_bytes].decode("utf-8", errors="replace"), len(data) > max_bytes


def partition_page(workspace: Workspace, data: dict[str, Any]) -> dict[str, Any]:
    """Add to `orch.usecases.show_partition` data: outputs' text, prompt then, and the stale diff.

    Args:
        workspace: The loaded project.
        data: What `show_partition` returned for the partition.
    """
    root = workspace.root
    out_dir = root / data["out_dir"]
    outputs = []
    for output in data["outputs"]:
        name = output["path"][len(data["out_dir"]) + 1 :]
        text, cut = read_text(root / output["path"])
        is_md = name.endswith((".md", ".markdown"))
        outputs.append(
            {
                "name": name,
                "bytes": output["bytes"],
                "text": text,
                "cut": cut,
                "html": markdown_html(text) if is_md and text is not None else None,
            }
        )
    prompt_then, _ = read_text(out_dir / META_DIR / PROMPT)
    prompt_now = data.get("prompt")
    diff = None
    if data["status"] == "stale" and prompt_then is not None and prompt_now is not None:
        diff = "".join(
            difflib.unified_diff(
                prompt_then.splitlines(keepends=True),
                prompt_now.splitlines(keepends=True),
                fromfile="prompt then (.orch/prompt.md)",
                tofile="prompt now (blueprint rendered now)",
            )
        )
    prompt = prompt_then if prompt_then is not None else prompt_now
    return {
        **data,
        "outputs_text": outputs,
        "prompt_text": prompt,
        "prompt_html": markdown_html(prompt) if prompt is not None else None,
        "prompt_is_then": prompt_then is not None,
        "diff": diff,
    }


# -- timeline ------------------------------------------------------------------------------


def timeline(events_path: Path | None) -> dict[str, Any]:
    """Return a Gantt chart of a run's attempts from its events.jsonl.

    Each row is one partition; each bar one attempt (`started` to its
    `promoted`/`failed`/`retried`), positioned in percent of the run's span;
    the gap before a retry's next `started` is its backoff.
    """
    events = EventReader(events_path).read() if events_path is not None else []
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    open_bars: dict[tuple[str, str], dict[str, Any]] = {}
    t0 = next((e.ts for e in events if e.ts), 0.0)
    t1 = max((e.ts for e in events), default=t0)
    for event in events:
        if event.stage is None or event.partition is None:
            continue
        key = (event.stage, event.partition)
        if event.name is EventName.STARTED:
            bar = {
                "attempt": event.attempt,
                "start": event.ts,
                "end": None,
                "outcome": "running",
                "retry": False,
            }
            rows.setdefault(key, []).append(bar)
            open_bars[key] = bar
        elif event.name in (EventName.PROMOTED, EventName.FAILED, EventName.RETRIED, EventName.INTERRUPTED):
            ended = open_bars.pop(key, None)
            if ended is not None:
                ended["end"] = event.ts
                retried = event.name is EventName.RETRIED
                ended["outcome"] = "failed" if retried else LIVE_STATUS.get(event.name, "failed")
                ended["retry"] = retried
    span = max(t1 - t0, 1e-6)
    chart: list[dict[str, Any]] = []
    for (stage, pid), bars in sorted(rows.items(), key=lambda kv: kv[1][0]["start"])[:TIMELINE_MAX_ROWS]:
        drawn = []
        for item in bars:
            start: float = item["start"]
            end: float = item["end"] if item["end"] is not None else t1
            drawn.append(
                {
                    **item,
                    "left": round(100.0 * (start - t0) / span, 3),
                    "width": round(max(0.2, 100.0 * (end - start) / span), 3),
                    "duration_s": round(end - start, 2),
                }
            )
        chart.append({"stage": stage, "partition": pid, "key": f"{stage}/{pid}", "bars": drawn})
    return {"rows": chart, "span_s": round(span, 2), "attempts": sum(len(r["bars"]) for r in chart)}


# -- failures --------------------------------------------------------------------------------


def failures(root: Path) -> dict[str, Any]:
    """Return wip/notes.md (raw and rendered) and every archived attempt with its error."""
    notes, cut = read_text(root / "wip" / "notes.md")
    attempts = []
    base = root / "wip" / "attempts"
    for stage in _dirs(base):
        for partition in _dirs(base / stage):
            for number in _dirs(base / stage / partition):
                error = read_error(base / stage / partition / number) or {}
                attempts.append(
                    {
                        "stage": stage,
                        "partition": partition,
                        "n": number,
                        "error": error.get("error"),
                        "error_class": error.get("error_class"),
                    }
                )
    return {
        "notes": notes,
        "notes_cut": cut,
        "notes_html": markdown_html(notes) if notes else None,
        "attempts": attempts,
    }


def _dirs(path: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []
