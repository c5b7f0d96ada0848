"""The operation behind each CLI command, returning data for the CLI to print.

Nothing here prints or exits; errors are OrchError subclasses that `orch.cli`
maps to exit codes.
"""

from __future__ import annotations

import fnmatch
import glob
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orch.config.blueprints import check_params, list_blueprint_files, load_blueprint
from orch.config.partitions import Partition
from orch.config.workspace import ChildKey, Workspace
from orch.engine.hints import Invocation
from orch.engine.plan import PartitionState, Planner, upstream_blockers
from orch.errors import (
    BarrierNotMet,
    BlueprintError,
    ConfigError,
    HungUp,
    Interrupted,
    PartitionsFailed,
    UsageError,
    did_you_mean,
)
from orch.observe.views import current_error, status_overview, status_rows
from orch.store.barriers import BarrierReport
from orch.store.checks import META_DIR
from orch.store.state import AGENT_LOG, Manifest, list_attempts, read_error

if TYPE_CHECKING:
    from orch.engine.runtime import RunSummary, Scheduler
    from orch.store.runlog import EventSink


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

    planner = Planner(ws, agent, lines=False)  # counts only: no stale reasons shown
    overview = status_overview(planner)
    spent = spending(planner)
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

    planner = Planner(ws, agent)
    planned = plan_stages(ws, stage, agent, only, planner)
    actions = {"run": 0, "wait": 0, "held": 0, "kept": 0, "skip": 0}
    for _, states in planned:
        for state in states:
            actions[plan_action(state)] += 1
    dollars, unknown = estimate(planner, planned, spending(planner))
    return planned, PlanSummary(actions, dollars, unknown)


def stage_status(ws: Workspace, stage: str, agent: str | None = None) -> list[dict[str, Any]]:
    """Return the per-partition status rows of one stage, judged for `agent`."""
    planner = Planner(ws, agent)
    return status_rows(planner, planner.stage_states(ws.project.stage(stage).name))


def render_prompt(ws: Workspace, stage: str, partition_id: str, agent: str | None = None) -> str:
    """Return the prompt of one partition; inputs not yet complete (for `agent`) show as placeholders."""
    partition = ws.partitions.get(ws.project.stage(stage).name, partition_id)
    return ws.render(partition, preview_manifests(Planner(ws, agent), partition), preview=True)


@dataclass
class BlueprintReport:
    """Result of `orch blueprint check`: errors fail it, warnings do not."""

    checked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rendered: int = 0

    def lines(self) -> list[str]:
        """Human-readable lines: errors, warnings, then a total."""
        out = [f"error: {e}" for e in self.errors] + [f"warning: {w}" for w in self.warnings]
        out.append(
            f"checked {len(self.checked)} blueprint(s), rendered {self.rendered} "
            f"partition prompt(s): {len(self.errors)} error(s), "
            f"{len(self.warnings)} warning(s)"
        )
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "checked": self.checked,
            "errors": self.errors,
            "warnings": self.warnings,
            "rendered": self.rendered,
            "ok": not self.errors,
        }

    def raise_for_errors(self) -> None:
        """Raise BlueprintError (exit 2) when any blueprint has errors."""
        if self.errors:
            raise BlueprintError(
                f"{len(self.errors)} blueprint error(s), see above",
                "fix them and run orch blueprint check again",
            )


def check_blueprints(ws: Workspace, file: Path | None) -> BlueprintReport:
    """Parse blueprints, render every partition of the stages using them, check params.

    Args:
        ws: The workspace.
        file: One blueprint to check, or None for `agents/*.md` and every
            blueprint a stage names.
    """
    stages_by_file: dict[str, list[str]] = {}
    for name, stage in ws.project.stages.items():
        stages_by_file.setdefault(stage.blueprint, []).append(name)
    if file is not None:
        target = (Path.cwd() / file).resolve()
        try:
            files = [str(target.relative_to(ws.root.resolve()))]
        except ValueError:
            raise UsageError(f"{file}: not inside the project {ws.root}") from None
    else:
        files = list_blueprint_files(ws.root, stages_by_file)
    report = BlueprintReport()
    planner = Planner(ws)
    failures: dict[str, list[str]] = {}
    for rel in files:
        report.checked.append(rel)
        try:
            blueprint = load_blueprint(ws.root, rel)
        except ConfigError as err:
            report.errors.append(err.message)
            continue
        report.warnings.extend(check_params(blueprint))
        if rel not in stages_by_file:
            report.warnings.append(f"{rel}: not used by any stage in orch.yaml")
        for stage_name in stages_by_file.get(rel, []):
            for partition in ws.partitions.for_stage(stage_name):
                try:
                    ws.render(partition, preview_manifests(planner, partition), preview=True)
                    report.rendered += 1
                except BlueprintError as err:
                    message = _CONTEXT.sub("", err.message)
                    failures.setdefault(message, []).append(f"{stage_name}/{partition.id}")
    for message, where in failures.items():
        shown = ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else "")
        report.errors.append(f"{message} (partitions {shown})")
    return report


_CONTEXT = re.compile(r" \(stage [^,()]+, partition [^()]+\)$")


def preview_manifests(planner: Planner, partition: Partition) -> dict[ChildKey, Manifest | None]:
    """Children's manifests where complete; none at all if the children cannot be
    assessed (e.g. their own blueprint is broken): a preview still renders."""
    if not partition.children:
        return {}
    try:
        for child_stage in {s for s, _ in partition.children}:
            planner.stage_states(child_stage)
    except ConfigError:
        return {}
    return planner.child_manifests(partition)


@dataclass
class RunResult:
    """What `orch stage run` / `orch run` produced, for the CLI to print."""

    summary: RunSummary | None = None
    barriers: list[BarrierReport] = field(default_factory=list)
    dry_run: list[tuple[str, list[PartitionState]]] | None = None
    invocation: Invocation = field(default_factory=Invocation)

    @property
    def headline(self) -> str:
        """One line: counts, time, and where the event log is."""
        summary = self.summary
        assert summary is not None
        total = len(summary.outcomes)
        ran = summary.count("complete")
        if total and ran == 0 and summary.ok:
            return f"nothing to do: all {total} partition(s) up to date ({summary.duration_s}s)"
        parts = [f"{summary.count('complete')} completed now", f"{summary.count('up-to-date')} up to date"]
        for status in ("failed", "blocked", "held", "halted", "interrupted", "skipped"):
            if summary.count(status):
                parts.append(f"{summary.count(status)} {status}")
        cost = f" · ${summary.cost_usd:.4f}" if summary.cost_usd else ""
        barriers = " · ".join(
            f"barrier {b.stage}: {'met' if b.met else f'NOT met ({b.complete}/{b.total})'}"
            for b in self.barriers
        )
        return (
            f"{' · '.join(parts)} of {total} in {summary.duration_s}s{cost}\n{barriers}\n"
            f"events: {summary.events_path}"
        )

    def raise_for_status(self) -> None:
        """Raise the error that sets the exit code: 129, 130, 3, 4 or none.

        Hints are commands built from `invocation`, to paste as printed.
        """
        summary = self.summary
        if summary is None:
            return
        again = self.invocation
        unfinished = [o.partition for o in summary.outcomes if o.status not in ("complete", "up-to-date")]
        if summary.interrupted and summary.stop_signal == "SIGHUP":
            raise HungUp(
                "run stopped by SIGHUP (its terminal closed); running agents were terminated and recorded",
                _resume_hint(again, unfinished, "resume with: ")
                + " (under nohup, tmux or screen to outlive the terminal)",
            )
        if summary.interrupted:
            raise Interrupted(
                "run interrupted; running agents were terminated and recorded",
                _resume_hint(again, unfinished, "resume with: "),
            )
        bad = [o for o in summary.outcomes if o.status in ("failed", "blocked", "halted", "interrupted")]
        if bad and all(o.status == "halted" for o in bad):
            raise PartitionsFailed(
                f"{len(bad)} of {len(summary.outcomes)} partitions were not started: "
                f"{summary.halted or bad[0].reason}",
                _resume_hint(again, unfinished, "continue with: ")
                + " (raise max_cost_usd in orch.yaml if a budget stopped the run)",
            )
        if bad:
            first = next((o for o in bad if o.status == "failed"), bad[0])
            blocked = any(o.status == "blocked" for o in bad)
            rerun = (
                f"rerun the failed ones and the partitions they block with: {again.pipeline().line()}"
                if blocked
                else f"rerun the failed ones with: {again.line('--retry-failed')}"
            )
            raise PartitionsFailed(
                f"{len(bad)} of {len(summary.outcomes)} partitions did not complete "
                f"({', '.join(f'{o.stage}/{o.partition}' for o in bad[:5])}"
                f"{' ...' if len(bad) > 5 else ''}); see wip/notes.md"
                + (f"\n{summary.disk_fault}" if summary.disk_fault else ""),
                f"inspect with: {again.other('show', first.stage, first.partition).line()}; {rerun}",
            )
        unmet = [b for b in self.barriers if not b.met]
        if unmet:
            held = [o for o in summary.outcomes if o.status == "held"]
            raise BarrierNotMet(
                f"barrier not met for {', '.join(b.stage for b in unmet)}"
                + (f" ({len(held)} partition(s) held by another orch run)" if held else ""),
                f"check with: {again.other('barrier', unmet[0].stage).line()}",
            )


def _resume_hint(again: Invocation, unfinished: list[str], label: str) -> str:
    """The command that picks up where a stopped run left off.

    Repeating `--force` would redo what the run finished, so a forced run's
    hint forces only the partitions it did not finish.
    """
    if again.force and unfinished:
        return (
            f"force only the {len(unfinished)} partition(s) this run did not finish: "
            f"{again.with_only(unfinished).line('--force')}"
        )
    return f"{label}{again.line()}"


def run_stages(ws: Workspace, stages: list[str], **options: Any) -> RunResult:
    """Run `stages` (upstream first) and check their barriers; see `prepare_run`.

    Drives the run with `asyncio.run` in this thread (no signal handlers of its own).
    """
    prepared = prepare_run(ws, stages, **options)
    if isinstance(prepared, RunResult):
        return prepared
    import asyncio

    return asyncio.run(prepared.run())


@dataclass
class PreparedRun:
    """A run that passed every check before it writes anything: await `run()`.

    `stop()` (on the loop's thread) stops starting partitions and ends the
    running agents, as Ctrl-C does; `run()` then returns the interrupted result.
    """

    scheduler: Scheduler
    reporter: EventSink | None = None

    async def run(self) -> RunResult:
        """Run it; return what it did (never raises for a failed partition)."""
        try:
            summary = await self.scheduler.run()
        finally:
            if self.reporter is not None and hasattr(self.reporter, "close"):
                self.reporter.close()
        return RunResult(summary=summary, barriers=summary.barriers)

    def stop(self, signal_name: str | None = None) -> None:
        """Stop the run: no new partitions; running agents are terminated and recorded.

        Args:
            signal_name: The signal that asked for it (SIGHUP sets exit code 129).
        """
        self.scheduler.stop(signal_name)


def prepare_run(
    ws: Workspace,
    stages: list[str],
    *,
    only: list[str] | None = None,
    retry_failed: bool = False,
    force: bool = False,
    max_parallel: int | None = None,
    agent: str | None = None,
    halt_on_pct: float | None = None,
    wait_locks: float = 0.0,
    dry_run: bool = False,
    sinks_factory: Callable[[], EventSink] | None = None,
    executor: str | None = None,
) -> PreparedRun | RunResult:
    """Check a run of `stages` (upstream first) and set it up; a dry run returns its plan.

    `executor` is `--executor`'s value (`local`, `dask://host:port`); None
    takes orch.yaml's `executor:`, else local.

    Returns:
        A `PreparedRun` to await, or for `dry_run` a `RunResult` with `dry_run` set.

    Raises:
        ConfigError / BlueprintError: before anything runs, if any prompt in
            scope cannot be rendered (nothing is written).
        UsageError: unknown partition ids in `only`, or an unknown agent.
        PreflightFailed: an agent the run needs cannot work (before anything
            is written: no staging directory, attempt folder or event log).
        StageBlocked: a partition's upstream input is not complete (single
            stage runs only; `orch run` blocks per partition instead).
    """
    names = [ws.project.stage(s).name for s in stages]
    planner = Planner(ws, agent)
    agent = planner.agent_override
    if only:
        only = select_only(ws, names, only)
    in_run = set(names)
    for name in names:
        stage = ws.project.stage(name)
        if not set(stage.upstream) <= in_run:
            upstream_blockers(planner, stage, only)
        planner.stage_states(name)
    if dry_run:
        return RunResult(
            dry_run=[
                (n, [s for s in planner.stage_states(n) if not only or s.partition.id in only]) for n in names
            ]
        )
    from orch.engine.preflight import check_agents, raise_for_problems, run_scope

    raise_for_problems(check_agents(ws.project, run_scope(planner, names, only, retry_failed, force)))
    from orch.engine.runtime import RunOptions, Scheduler

    options = RunOptions(
        stages=tuple(names),
        only=frozenset(only) if only else None,
        max_parallel=max_parallel,
        agent=agent,
        halt_on_pct=halt_on_pct,
        retry_failed=retry_failed,
        force=force,
        wait_locks_s=wait_locks,
    )
    reporter = sinks_factory() if sinks_factory else None
    scheduler = Scheduler(ws, options, [reporter] if reporter else [], _executor(ws, executor))
    return PreparedRun(scheduler, reporter)


def _executor(ws: Workspace, url: str | None) -> Any:
    """The executor for `--executor URL`, else orch.yaml's `executor:`, else None (local)."""
    from orch.config.executor import executor_from_url

    config = executor_from_url(url, ws.project.executor) if url else ws.project.executor
    if config is None or config.kind == "local":
        return None
    from orch.executors.dask import DaskExecutor, require_distributed

    require_distributed()
    return DaskExecutor(config, ws.root)


def run_pipeline(ws: Workspace, until: str | None, from_: str | None, **options: Any) -> RunResult:
    """Run every stage between `from_` and `until` as one partition-level DAG."""
    return run_stages(ws, pipeline_stages(ws, until, from_), **options)


def pipeline_stages(ws: Workspace, until: str | None, from_: str | None) -> list[str]:
    """Return the stages between `from_` and `until` (both optional), upstream first.

    Raises:
        UsageError: no stage lies between them.
    """
    stages = list(ws.project.stages)
    if until:
        keep = _ancestors(ws, ws.project.stage(until).name)
        stages = [s for s in stages if s in keep]
    if from_:
        keep = _descendants(ws, ws.project.stage(from_).name)
        stages = [s for s in stages if s in keep]
    if not stages:
        raise UsageError(f"no stages between --from {from_} and --until {until}")
    return stages


def _ancestors(ws: Workspace, name: str) -> set[str]:
    found = {name}
    for upstream in ws.project.stage(name).upstream:
        found |= _ancestors(ws, upstream)
    return found


def _descendants(ws: Workspace, name: str) -> set[str]:
    found = {name}
    changed = True
    while changed:
        changed = False
        for stage_name, stage in ws.project.stages.items():
            if stage_name not in found and set(stage.upstream) & found:
                found.add(stage_name)
                changed = True
    return found


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
            )
            out.extend(f"      | {line}" for line in attempt["log_tail"])
    if data["last_error"]:
        out.append(f"last error: {data['last_error']}")
    if data["prompt"]:
        head = data["prompt"].splitlines()[:8]
        out.append(f"prompt (first lines; full: orch blueprint render {data['stage']} {data['partition']}):")
        out.extend(f"  > {line}" for line in head)
    return "\n".join(out) + "\n"
