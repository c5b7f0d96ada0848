"""Use cases that run: choose the stages and partitions, prepare a run, report its result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orch.config.workspace import Workspace
from orch.engine.hints import Invocation
from orch.engine.plan import PartitionState, Planner, upstream_blockers
from orch.errors import (
    BarrierNotMet,
    HungUp,
    Interrupted,
    PartitionsFailed,
    UsageError,
)
from orch.store.barriers import BarrierReport

if TYPE_CHECKING:
    from orch.engine.runtime import RunSummary, Scheduler
    from orch.store.runlog import EventSink
from orch.usecases.inspect import select_only


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

    scope = run_scope(planner, names, only, retry_failed, force)
    cluster = _executor(ws, executor)
    on_workers: set[str] = set()
    if cluster is not None:  # command agents run on the workers: their commands are looked up there
        cluster.defer_command_checks([ws.project.agent(name) for name in scope])
        on_workers = set(cluster.command_agents)
    raise_for_problems(check_agents(ws.project, scope, on_workers=on_workers))
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
    scheduler = Scheduler(ws, options, [reporter] if reporter else [], cluster)
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
