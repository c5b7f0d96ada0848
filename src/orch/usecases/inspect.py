"""Use cases that read: list stages, plan, status, show one partition."""

from __future__ import annotations

import fnmatch
import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orch.config.workspace import Workspace
from orch.engine.plan import PartitionState, Planner
from orch.errors import (
    UsageError,
    did_you_mean,
)
from orch.observe.views import current_error, status_overview, status_rows
from orch.store.checks import META_DIR
from orch.store.layout import AGENT_LOG, list_attempts, read_error

if TYPE_CHECKING:
    pass


def list_stages(ws: Workspace) -> list[dict[str, Any]]:
    """Return one dict per stage: name, partition count, kind, blueprint, output."""
    rows = []
    for name, stage in ws.project.stages.items():
        if stage.fan_in:
            kind = f"fan-in from {stage.fan_in.from_stage}" + (
                f" by {stage.fan_in.by}" if stage.fan_in.by else " (all)"
            )
        else:
            kind = f"fan-out over {stage.partitions.path if stage.partitions else '?'}"
        if stage.needs:
            kind += f"; needs {', '.join(stage.needs)}"
        rows.append(
            {
                "stage": name,
                "partitions": len(ws.partitions.for_stage(name)),
                "kind": kind,
                "blueprint": stage.blueprint,
                "output": stage.output,
                "agent": stage.agent or ws.project.default_agent,
            }
        )
    return rows


def plan_stages(
    ws: Workspace,
    stage: str | None,
    agent: str | None = None,
    only: Sequence[str] | None = None,
    planner: Planner | None = None,
) -> list[tuple[str, list[PartitionState]]]:
    """Return `(stage, states)` for one stage or all, narrowed to `only` ids.

    Raises:
        UsageError: `agent` (or $ORCH_AGENT) names no agent of orch.yaml.
    """
    planner = planner or Planner(ws, agent)
    names = [ws.project.stage(stage).name] if stage else list(ws.project.stages)
    selected = set(select_only(ws, names, only)) if only else None
    result = []
    for name in names:
        states = planner.stage_states(name)
        if selected is not None:
            states = [s for s in states if s.partition.id in selected]
        result.append((name, states))
    return result


def status_all(ws: Workspace, agent: str | None = None) -> list[dict[str, Any]]:
    """Return counts per status for every stage, judged for `agent` (the run-wide
    override), with its `usage` so far (see `status_usage`)."""
    return status_usage(ws, agent)[0]


def status_usage(
    ws: Workspace, agent: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any]]:
    """Return the stage overview, usage per agent, and usage in all, across runs.

    Each overview row gains `usage`: the stage's tokens, cost and attempts
    counted from manifests and archived attempts (`orch.engine.costs.spending`).
    """
    from orch.engine.costs import spending

    planner = Planner(ws, agent, lines=False, index=True)  # counts only: no stale reasons shown
    overview = status_overview(planner)
    spent = spending(planner)
    planner.save_index()
    for row in overview:
        row["usage"] = spent.by_stage[row["stage"]].to_json()
    by_agent = {name: t.to_json() for name, t in sorted(spent.by_agent.items())}
    return overview, by_agent, spent.total.to_json()


@dataclass
class PlanSummary:
    """The last line of `orch plan`: counts by action and the estimated cost."""

    actions: dict[str, int]
    cost_usd: float
    no_history: list[str]

    @property
    def line(self) -> str:
        """E.g. "2 to run · 53 up to date · est. $0.40", or "... · no cost history for agent x"."""
        words = {
            "run": "to run",
            "wait": "waiting for inputs",
            "held": "held by another run",
            "kept": "kept (made by a real agent)",
        }
        parts = [f"{n} {words[a]}" for a, n in self.actions.items() if a != "skip" and n]
        parts = parts or ["nothing to run"]
        parts.append(f"{self.actions.get('skip', 0)} up to date")
        if self.actions.get("run", 0) + self.actions.get("wait", 0):
            if self.cost_usd or not self.no_history:
                known = " (for agents with history)" if self.no_history else ""
                parts.append(f"est. ${self.cost_usd:.2f}{known}")
            if self.no_history:
                label = "agent" if len(self.no_history) == 1 else "agents"
                parts.append(f"no cost history for {label} {', '.join(self.no_history)}")
        return " · ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "actions": self.actions,
            "est_cost_usd": round(self.cost_usd, 6),
            "no_cost_history": self.no_history,
        }


def plan_summary(
    ws: Workspace, stage: str | None, agent: str | None = None, only: Sequence[str] | None = None
) -> tuple[list[tuple[str, list[PartitionState]]], PlanSummary]:
    """Plan as `plan_stages`, and estimate the cost of what would run (`orch.engine.costs`)."""
    from orch.engine.costs import estimate, spending
    from orch.observe.views import plan_action

    planner = Planner(ws, agent, index=True)
    planned = plan_stages(ws, stage, agent, only, planner)
    actions = {"run": 0, "wait": 0, "held": 0, "kept": 0, "skip": 0}
    for _, states in planned:
        for state in states:
            actions[plan_action(state)] += 1
    dollars, unknown = 0.0, list[str]()
    if actions["run"] or actions["wait"]:  # the history is read only when something would run
        dollars, unknown = estimate(planner, planned, spending(planner))
    planner.save_index()
    return planned, PlanSummary(actions, dollars, unknown)


def stage_status(ws: Workspace, stage: str, agent: str | None = None) -> list[dict[str, Any]]:
    """Return the per-partition status rows of one stage, judged for `agent`."""
    planner = Planner(ws, agent, index=True)
    rows = status_rows(planner, planner.stage_states(ws.project.stage(stage).name))
    planner.save_index()
    return rows


def select_only(ws: Workspace, names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """Expand `--only` ids and globs (fnmatch: `1.*`, `*_targets`) into partition ids.

    An exact id is taken as is, even if it holds glob characters. Returns the
    matched ids of `names`' partitions, sorted, without duplicates.

    Raises:
        UsageError: an id or glob that matches no partition, with a did-you-mean.
    """
    known = sorted({p.id for n in names for p in ws.partitions.for_stage(n)})
    selected: set[str] = set()
    for pattern in patterns:
        matched = [pattern] if pattern in known else fnmatch.filter(known, pattern)
        if not matched:
            kind = "partition" if pattern == glob.escape(pattern) else "partition matches"
            raise UsageError(
                f"--only: no {kind} '{pattern}' in stage(s) {', '.join(names)}{did_you_mean(pattern, known)}",
                f"list partitions with: orch plan {names[0]}",
            )
        selected.update(matched)
    return sorted(selected)


def show_partition(ws: Workspace, stage: str, partition_id: str, agent: str | None = None) -> dict[str, Any]:
    """Return everything about one partition (paths relative to the project root), judged for `agent`."""
    stage_name = ws.project.stage(stage).name
    partition = ws.partitions.get(stage_name, partition_id)
    planner = Planner(ws, agent)
    state = planner.state(stage_name, partition_id)
    out_dir = ws.root / partition.out_dir
    attempts = []
    for number, path in list_attempts(ws.root, stage_name, partition_id):
        error = read_error(path) or {}
        attempts.append(
            {
                "n": number,
                "path": str(path.relative_to(ws.root)),
                "outcome": error.get("outcome", "replaced by a later run"),
                "error": error.get("error"),
                "error_class": error.get("error_class"),
                "worker": error.get("worker"),
                "log_tail": _tail(path / META_DIR / AGENT_LOG),
            }
        )
    manifest = state.manifest
    from orch.observe.logs import find_live_log

    live = find_live_log(ws, stage_name, partition_id)
    return {
        "stage": stage_name,
        "partition": partition_id,
        "status": state.status.value,
        "reason": state.reason,
        "source": partition.source,
        "out_dir": partition.out_dir,
        "params": {k: v for k, v in partition.params.items()},
        "inputs": [f"{s}/{p}" for s, p in partition.children],
        "outputs": [{"path": f"{partition.out_dir}/{o.path}", "bytes": o.bytes} for o in manifest.outputs]
        if manifest
        else [],
        "prompt_file": f"{partition.out_dir}/{META_DIR}/prompt.md" if manifest else None,
        "log_file": f"{partition.out_dir}/{META_DIR}/{AGENT_LOG}" if manifest else None,
        "live_log": str(live.path.relative_to(ws.root)) if live else None,
        "manifest": f"{partition.out_dir}/{META_DIR}/manifest.json" if manifest else None,
        "manifest_data": _manifest_summary(manifest),
        "findings": [str(f) for f in state.findings],
        "attempts": attempts,
        "last_error": (current_error(planner, state) or {}).get("error"),
        "worker": manifest.attempts[-1].get("worker") if manifest and manifest.attempts else None,
        "prompt": state.prompt,
        "exists": out_dir.exists(),
    }


def _manifest_summary(manifest: Any) -> dict[str, Any] | None:
    if manifest is None:
        return None
    return {
        "attempt": manifest.attempt,
        "fingerprint": manifest.fingerprint,
        "agent": manifest.agent,
        "usage": manifest.usage,
        "run_id": manifest.run_id,
        "duration_s": manifest.duration_s,
        "attempts": manifest.attempts,
    }


def _tail(path: Path, lines: int = 10) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


#: How many archived attempts `orch show` prints without `--all` (the newest).
SHOW_ATTEMPTS = 3


def format_show(data: dict[str, Any], all_attempts: bool = False) -> str:
    """Return `orch show` as text: status, paths, attempts with log tails, prompt head.

    Only the newest `SHOW_ATTEMPTS` archived attempts are shown unless
    `all_attempts`; a line says how many were hidden and how to see them.
    """
    out = [
        f"{data['stage']} / {data['partition']}: {data['status']} — {data['reason']}",
        f"  source     {data['source']}",
        f"  directory  {data['out_dir']}",
    ]
    if data["inputs"]:
        out.append(f"  inputs     {', '.join(data['inputs'])}")
    for key, label in (("prompt_file", "prompt"), ("log_file", "log"), ("manifest", "manifest")):
        if data[key]:
            out.append(f"  {label:<10} {data[key]}")
    if data.get("live_log"):
        out.append(
            f"  live log   {data['live_log']}"
            f" (running; follow it: orch logs -f {data['stage']} {data['partition']})"
        )
    for output in data["outputs"]:
        out.append(f"  output     {output['path']} ({output['bytes']} bytes)")
    for finding in data["findings"]:
        out.append(f"  problem    {finding}")
    manifest = data["manifest_data"]
    if manifest:
        usage = ", ".join(f"{k}={v}" for k, v in sorted(manifest["usage"].items())) or "unknown"
        out.append(
            f"  promoted   attempt {manifest['attempt']} by {manifest['agent']['name']} "
            f"in {manifest['duration_s']}s (run {manifest['run_id']}); usage: {usage}"
        )
    if data.get("worker"):
        out.append(f"  worker     {data['worker']} (the Dask worker that ran the promoted attempt)")
    if data["attempts"]:
        shown = data["attempts"] if all_attempts else data["attempts"][-SHOW_ATTEMPTS:]
        hidden = len(data["attempts"]) - len(shown)
        out.append("attempts kept in wip/attempts:")
        if hidden:
            out.append(
                f"  ({hidden} older attempt(s) hidden; all of them: "
                f"orch show {data['stage']} {data['partition']} --all)"
            )
        for attempt in shown:
            out.append(
                f"  #{attempt['n']} {attempt['outcome']}: {attempt['error'] or '-'}  ({attempt['path']})"
                + (f" on {attempt['worker']}" if attempt.get("worker") else "")
            )
            out.extend(f"      | {line}" for line in attempt["log_tail"])
    if data["last_error"]:
        out.append(f"last error: {data['last_error']}")
    if data["prompt"]:
        head = data["prompt"].splitlines()[:8]
        out.append(f"prompt (first lines; full: orch blueprint render {data['stage']} {data['partition']}):")
        out.extend(f"  > {line}" for line in head)
    return "\n".join(out) + "\n"
