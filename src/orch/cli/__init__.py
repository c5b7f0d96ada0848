"""The `orch` command line: parse, call one function, print. Owns exit codes.

Exit codes (DESIGN.md §7): 0 all good · 1 unexpected error · 2 bad usage,
config or blueprint · 3 some partitions failed · 4 barrier not met ·
129 hung up (SIGHUP) · 130 interrupted. They are assigned in `EXIT_CODES`, nowhere else.
"""

from __future__ import annotations

import gc
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

from orch.errors import (
    BarrierNotMet,
    ConfigError,
    HungUp,
    Interrupted,
    OrchError,
    PartitionsFailed,
    StageBlocked,
    UsageError,
)

EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (HungUp, 129),
    (Interrupted, 130),
    (BarrierNotMet, 4),
    (StageBlocked, 4),
    (PartitionsFailed, 3),
    (UsageError, 2),
    (ConfigError, 2),
    (OrchError, 1),
)


@dataclass
class Context:
    """Global options shared by every command."""

    project: str | None = None
    json: bool = False
    debug: bool = False

    def workspace(self, checked: bool = True) -> Any:
        """Load the project (walking up from cwd unless --project/ORCH_PROJECT);
        `checked`: run the load-time checks (Workspace.check) before returning."""
        from orch.config.project import find_root, load_project
        from orch.config.workspace import Workspace

        ws = Workspace(load_project(find_root(explicit=self.project)))
        if checked:
            ws.check()
        return ws

    @property
    def out(self) -> Console | PlainOut:
        """A rich Console on a terminal; plain writes to stdout otherwise (pipes,
        files, scripts: no colour, no wrapping, and no rich import)."""
        if not sys.stdout.isatty():
            return PlainOut(sys.stdout)
        from rich.console import Console

        return Console(file=sys.stdout, highlight=False)

    @property
    def err(self) -> Console:
        """Console on stderr for progress and messages."""
        from rich.console import Console

        return Console(file=sys.stderr, highlight=False)


class PlainOut:
    """The part of rich's Console that data output uses, for non-terminals."""

    is_terminal = False

    def __init__(self, file: Any) -> None:
        self.file = file

    def print(self, text: str, **_style: Any) -> None:
        """Write `text` and a newline (style arguments are ignored)."""
        self.file.write(f"{text}\n")


pass_ctx = click.make_pass_decorator(Context)

AGENT_HELP = "Use this agent for every stage (else $ORCH_AGENT, else orch.yaml)."


def agent_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--agent NAME`, the run-wide agent choice every command honours."""
    return click.option("--agent", metavar="NAME", help=AGENT_HELP)(func)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--json` to a command (same as the global --json)."""

    def set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.ensure_object(Context).json = True

    return click.option(
        "--json",
        "json_",
        is_flag=True,
        expose_value=False,
        callback=set_json,
        help="Machine-readable output on stdout.",
    )(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--project",
    "project",
    metavar="DIR",
    help="Project directory (else $ORCH_PROJECT, else walk up from cwd).",
)
@click.option("--json", "json_", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="orch", prog_name="orch")
@click.pass_context
def cli(ctx: click.Context, project: str | None, json_: bool, debug: bool) -> None:
    """orch: run prompt-defined agents per partition, with disk as the bus."""
    obj = ctx.ensure_object(Context)
    obj.project, obj.json, obj.debug = project, obj.json or json_, debug


# -- stages -------------------------------------------------------------------------


@cli.group()
def stage() -> None:
    """List and run stages."""


@stage.command("list")
@json_option
@pass_ctx
def stage_list(ctx: Context) -> None:
    """List stages: blueprint, partitions, output template."""
    from orch.observe.views import print_json, print_table
    from orch.usecases import list_stages

    rows = list_stages(ctx.workspace())
    if ctx.json:
        print_json(ctx.out, rows)
        return
    print_table(
        ctx.out,
        None,
        ["stage", "partitions", "kind", "blueprint", "output"],
        [[r["stage"], r["partitions"], r["kind"], r["blueprint"], r["output"]] for r in rows],
    )


def run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by `orch stage run` and `orch run`."""
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option("--only", metavar="ID,...", help="Run only these partition ids or globs (e.g. '1.*')."),
        click.option("--retry-failed", is_flag=True, help="Run only partitions whose last attempt failed."),
        click.option(
            "--force", is_flag=True, help="Run every partition; old outputs are kept in wip/attempts/."
        ),
        click.option("--max-parallel", type=click.IntRange(min=1), metavar="N", help="Concurrency limit."),
        agent_option,
        click.option("--keep-going", is_flag=True, help="Run every partition, report at the end (default)."),
        click.option("--halt-on", metavar="N%", help="Stop starting partitions once N% have failed."),
        click.option(
            "--wait-locks",
            type=click.FloatRange(min=0),
            default=0,
            metavar="SECONDS",
            help="Wait this long for partitions held by another orch run (default: skip them).",
        ),
        click.option("--dry-run", is_flag=True, help="Show what would run; write nothing."),
        click.option(
            "--executor",
            metavar="URL",
            help="Where attempts run: local, or dask://host:8786 (default: orch.yaml's executor).",
        ),
        json_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


@stage.command("run")
@click.argument("stage_name", metavar="STAGE")
@run_options
@pass_ctx
def stage_run(ctx: Context, stage_name: str, **options: Any) -> None:
    """Run one stage: every partition that is not complete."""
    from orch.api import Project

    kwargs = _run_kwargs(ctx, options)
    invocation = _invocation(ctx, ("stage", "run", stage_name), kwargs)
    project = Project(ctx.workspace())
    try:
        prepared = project.prepare_run([stage_name], **kwargs)
    except StageBlocked as err:
        first = project.workspace.project.stage(stage_name).upstream[0]
        upstream = replace(invocation, command=("stage", "run", first), only=(), force=False)
        err.hint = (
            f"run the upstream stage first ({upstream.line()}), or run the pipeline "
            f"up to {stage_name} with: {replace(invocation.pipeline(), until=stage_name).line()}"
        )
        raise
    _finish_run(ctx, _drive(prepared), invocation)


@cli.command("run")
@click.option("--until", metavar="STAGE", help="Stop after this stage (and what it reads).")
@click.option("--from", "from_", metavar="STAGE", help="Start at this stage (upstream must be complete).")
@run_options
@pass_ctx
def run_all(ctx: Context, until: str | None, from_: str | None, **options: Any) -> None:
    """Run the whole pipeline; a fan-in partition starts when its inputs pass."""
    from orch.api import Project

    kwargs = _run_kwargs(ctx, options)
    prepared = Project(ctx.workspace()).prepare_run(None, until=until, from_=from_, **kwargs)
    _finish_run(ctx, _drive(prepared), _invocation(ctx, ("run",), kwargs, until, from_))


def _drive(prepared: Any) -> Any:
    """Run a prepared run on this process's event loop; return its `orch.records.RunReport`.

    The CLI owns the process, so it alone installs the SIGINT/SIGTERM/SIGHUP
    handlers (they stop the run: agents are ended and recorded, exit 130; 129
    for SIGHUP, a closed terminal) and the pidfd
    child watcher. A dry run's report passes through.
    """
    import asyncio
    import contextlib
    import signal

    from orch.api import drive

    STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    from orch.executors.processes import use_pidfd_watcher
    from orch.records import RunReport

    if isinstance(prepared, RunReport):
        return prepared

    async def with_signals() -> RunReport:
        loop = asyncio.get_running_loop()
        use_pidfd_watcher(loop)
        for sig in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, prepared.stop, sig.name)
        try:
            return await drive(prepared)
        finally:
            for sig in STOP_SIGNALS:
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)

    return asyncio.run(with_signals())


def _invocation(
    ctx: Context,
    command: tuple[str, ...],
    kwargs: dict[str, Any],
    until: str | None = None,
    from_: str | None = None,
) -> Any:
    """The command as typed, for hints that repeat it (orch.engine.hints)."""
    from orch.engine.hints import Invocation

    return Invocation(
        command,
        ctx.project,
        kwargs.get("agent"),
        tuple(kwargs.get("only") or ()),
        until,
        from_,
        bool(kwargs.get("force")),
    )


def _command(ctx: Context, *words: str) -> str:
    """A pasteable `orch` command on this project (with `--project` when given)."""
    from orch.engine.hints import Invocation

    return Invocation(tuple(words), ctx.project).line()


@cli.command("worker")
@click.argument("scheduler", metavar="SCHEDULER")
@click.option("--slots", type=click.IntRange(min=1), metavar="N", help="Agents run at once (default: CPUs).")
@click.option("--resources", metavar="NAME=N,...", help="Resources offered, e.g. claude=4,codex=2.")
@click.option("--name", metavar="NAME", help="Worker name shown by Dask (default: its address).")
def worker(scheduler: str, slots: int | None, resources: str | None, name: str | None) -> None:
    """Serve a Dask cluster: run orch's attempts on this host (execs `dask worker`)."""
    import os

    from orch.executors.dask_worker import worker_argv

    argv = worker_argv(scheduler, slots, resources, name)
    sys.stdout.flush()
    os.execv(argv[0], argv)


def _run_kwargs(ctx: Context, options: dict[str, Any]) -> dict[str, Any]:
    if options.pop("keep_going") and options.get("halt_on"):
        raise click.UsageError("--keep-going and --halt-on exclude each other")
    halt = options.pop("halt_on")
    options["halt_on_pct"] = _percent(halt) if halt else None
    only = options.pop("only")
    options["only"] = [i.strip() for i in only.split(",") if i.strip()] if only else None
    options["sinks_factory"] = lambda: _reporter(ctx)
    return options


def _percent(text: str) -> float:
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise click.BadParameter(
            f"expected a percentage like 10%, got {text!r}", param_hint="--halt-on"
        ) from None
    if not 0 < value <= 100:
        raise click.BadParameter("expected a percentage in (0, 100]", param_hint="--halt-on")
    return value


def _reporter(ctx: Context) -> Any:
    from orch.observe.display import LiveReporter, PlainReporter

    err = ctx.err
    return LiveReporter(err) if err.is_terminal and not ctx.json else PlainReporter(sys.stderr)


def _finish_run(ctx: Context, report: Any, invocation: Any) -> None:
    from orch.observe.views import (
        DETAIL_COLUMNS,
        SUMMARY_COLUMNS,
        detail_rows,
        plan_json,
        plan_rows,
        print_json,
        print_table,
        summary_json,
        summary_rows,
    )

    result = report.result
    result.invocation = invocation
    if result.dry_run is not None:
        if ctx.json:
            print_json(ctx.out, [plan_json(s, states) for s, states in result.dry_run])
        else:
            for stage_name, states in result.dry_run:
                print_table(
                    ctx.out,
                    f"{stage_name} (dry run: nothing written)",
                    ["partition", "status", "action", "why", "output"],
                    plan_rows(states),
                )
        return
    summary = result.summary
    if ctx.json:
        data = summary_json(summary)
        data["barriers"] = [b.to_json() for b in result.barriers]
        print_json(ctx.out, data)
    else:
        details = detail_rows(summary)
        if details:
            print_table(ctx.out, None, DETAIL_COLUMNS, details)
        print_table(ctx.out, None, SUMMARY_COLUMNS, summary_rows(summary))
        ctx.out.print(result.headline, highlight=False, markup=False)
    report.raise_for_status()


# -- inspection ---------------------------------------------------------------------


@cli.command()
@click.argument("stage_name", metavar="[STAGE]", required=False)
@agent_option
@click.option("--only", metavar="ID|GLOB,...", help="Plan only these partition ids or globs.")
@click.option(
    "--diff", "diff", is_flag=True, help="Show how each prompt differs from the one that made its outputs."
)
@json_option
@pass_ctx
def plan(ctx: Context, stage_name: str | None, agent: str | None, only: str | None, diff: bool) -> None:
    """Show what a run would do for each partition, and why; end with an estimate."""
    from orch.observe.views import plan_json, plan_rows, print_json, print_table
    from orch.usecases import plan_summary

    ws = ctx.workspace()
    planned, summary = plan_summary(ws, stage_name, agent, _split_only(only))
    if diff:
        _print_diffs(ctx, ws, planned)
        return
    if ctx.json:
        data = [plan_json(s, states) for s, states in planned]
        if stage_name:
            print_json(ctx.out, {**data[0], "summary": summary.to_json()})
        else:
            print_json(ctx.out, data)
        return
    for name, states in planned:
        print_table(
            ctx.out,
            f"{name}: {len(states)} partitions",
            ["partition", "status", "action", "why", "output"],
            plan_rows(states),
        )
    ctx.out.print(summary.line, highlight=False, markup=False)


def _agent_flag(agent: str | None) -> tuple[str, ...]:
    return ("--agent", agent) if agent else ()


def _split_only(only: str | None) -> list[str] | None:
    return [i.strip() for i in only.split(",") if i.strip()] if only else None


def _print_diffs(ctx: Context, ws: Any, planned: Any) -> None:
    """Print `plan --diff`: a unified diff per partition whose prompt changed."""
    from orch.engine.diff import prompt_diffs
    from orch.observe.views import print_json

    diffs = prompt_diffs(str(ws.root), planned)
    if ctx.json:
        print_json(
            ctx.out,
            [
                {"stage": d.stage, "partition": d.partition, "diff": list(d.diff), "note": d.note}
                for d in diffs
            ],
        )
        return
    for d in diffs:
        text = "\n".join(d.diff) if d.diff else f"# {d.stage}/{d.partition}: {d.note}"
        ctx.out.file.write(text + "\n")
    changed = sum(1 for d in diffs if d.diff)
    total = sum(len(states) for _, states in planned)
    ctx.err.print(
        f"{changed} of {total} prompt(s) differ from the prompt that produced their outputs", markup=False
    )


@cli.command()
@click.argument("stage_name", metavar="STAGE")
@click.option("--only", metavar="ID|GLOB,...", help="Accept only these partition ids or globs.")
@click.option("--agent", metavar="NAME", help="Accept as if running with this agent.")
@json_option
@pass_ctx
def accept(ctx: Context, stage_name: str, only: str | None, agent: str | None) -> None:
    """Mark stale partitions up to date without running them, if their outputs pass."""
    from orch.observe.views import print_json, print_table
    from orch.store.accept import accept_stage

    report = accept_stage(ctx.workspace(), stage_name, _split_only(only), agent)
    if ctx.json:
        print_json(
            ctx.out,
            {"stage": report.stage, "run_id": report.run_id, "partitions": [vars(i) for i in report.items]},
        )
    else:
        shown = [[i.partition, i.outcome, i.detail] for i in report.items if i.outcome != "up to date"]
        if shown:
            print_table(ctx.out, None, ["partition", "outcome", "detail"], shown)
        ctx.out.print(
            f"{report.count('accepted')} accepted · {report.count('up to date')} already up to date"
            + (f" · {len(report.refused)} not accepted" if report.refused else ""),
            highlight=False,
            markup=False,
        )
    if report.refused:
        ids = ",".join(i.partition for i in report.refused[:20])
        rerun = _command(ctx, "stage", "run", report.stage, *_agent_flag(agent), "--only", ids)
        raise BarrierNotMet(
            f"{len(report.refused)} partition(s) of {report.stage} were not accepted (see above)",
            f"rerun them with: {rerun}",
        )


@cli.command()
@click.argument("stage_name", metavar="[STAGE]", required=False)
@agent_option
@json_option
@pass_ctx
def status(ctx: Context, stage_name: str | None, agent: str | None) -> None:
    """Counts per status for every stage, or a per-partition table for one."""
    from orch.observe.views import STATUS_ORDER, print_json, print_table, usage_cells
    from orch.usecases import stage_status, status_usage

    ws = ctx.workspace()
    if stage_name is None:
        overview, by_agent, total = status_usage(ws, agent)
        if ctx.json:
            print_json(ctx.out, overview)
            return
        print_table(
            ctx.out,
            None,
            ["stage", "partitions", *STATUS_ORDER, "tokens", "cost"],
            [
                [o["stage"], o["partitions"], *o["counts"].values(), *usage_cells(o["usage"])]
                for o in overview
            ],
        )
        if by_agent:
            print_table(
                ctx.out,
                None,
                ["agent", "attempts", "tokens", "cost"],
                [[name, u["attempts"], *usage_cells(u)] for name, u in by_agent.items()],
            )
        tokens, cost = usage_cells(total)
        ctx.out.print(
            f"in all: {total['attempts']} attempt(s) · {tokens or 0} tokens · {cost or 'no cost reported'}",
            highlight=False,
            markup=False,
        )
        return
    rows = stage_status(ws, stage_name, agent)
    if ctx.json:
        print_json(ctx.out, {"stage": stage_name, "partitions": rows})
        return
    workers = any(r["worker"] for r in rows)  # ran on a Dask cluster: say where
    print_table(
        ctx.out,
        None,
        ["partition", "status", "attempts", "seconds", "tokens", "cost", "last error"]
        + (["worker"] if workers else []),
        [
            [
                r["id"],
                r["status"],
                r["attempts"],
                r["duration_s"],
                r["tokens"],
                r["cost_usd"],
                r["last_error"],
            ]
            + ([r["worker"]] if workers else [])
            for r in rows
        ],
    )


@cli.command()
@click.argument("stage_name", metavar="STAGE")
@agent_option
@json_option
@pass_ctx
def barrier(ctx: Context, stage_name: str, agent: str | None) -> None:
    """Check a stage's outputs on disk now; report what is missing where."""
    from orch.observe.views import print_json, print_table
    from orch.store.barriers import check_barrier

    report = check_barrier(ctx.workspace(), stage_name, agent)
    if ctx.json:
        print_json(ctx.out, report.to_json())
    elif report.entries:
        print_table(
            ctx.out,
            None,
            ["partition", "status", "file", "rule", "detail"],
            [[e.partition, e.status, e.file, e.rule, e.detail] for e in report.entries],
        )
    if not report.met:
        raise BarrierNotMet(
            f"barrier {stage_name}: {report.complete} of {report.total} partitions complete",
            f"rerun the missing ones with: {_command(ctx, 'stage', 'run', stage_name)}",
        )
    if not ctx.json:
        ctx.out.print(f"barrier {stage_name}: met ({report.total} of {report.total} complete)")


@cli.command()
@click.argument("stage_name", metavar="STAGE")
@click.argument("partition_id", metavar="PARTITION")
@click.option("--all", "all_attempts", is_flag=True, help="Show every archived attempt, not just the newest.")
@agent_option
@json_option
@pass_ctx
def show(ctx: Context, stage_name: str, partition_id: str, all_attempts: bool, agent: str | None) -> None:
    """Everything about one partition: paths, prompt, manifest, attempts, errors."""
    from orch.observe.views import print_json
    from orch.usecases import show_partition

    data = show_partition(ctx.workspace(), stage_name, partition_id, agent)
    if ctx.json:
        print_json(ctx.out, data)
        return
    from orch.usecases import format_show

    ctx.out.file.write(format_show(data, all_attempts))


@cli.command()
@click.argument("stage_name", metavar="STAGE")
@click.argument("partition_id", metavar="PARTITION")
@click.option("-f", "--follow", is_flag=True, help="Follow the running attempt's log until it ends.")
@pass_ctx
def logs(ctx: Context, stage_name: str, partition_id: str, follow: bool) -> None:
    """Print the agent log of a partition's running attempt, else of its last one."""
    from orch.observe.logs import find_agent_log, follow_log, relocate_log, run_is_alive

    ws = ctx.workspace()
    log = find_agent_log(ws, stage_name, partition_id)
    click.echo(f"# {log.path.relative_to(ws.root)} (attempt {log.attempt}, {log.kind})", err=True)
    out = sys.stdout.buffer
    relocate = relocate_log(ws, stage_name, partition_id, log.attempt)
    try:
        for chunk in follow_log(log if follow else _finished(log), run_is_alive(ws.root), relocate=relocate):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        raise click.exceptions.Exit(130) from None


def _finished(log: Any) -> Any:
    """The same log, read once (no following)."""
    from dataclasses import replace

    return replace(log, kind="read-once") if log.is_live else log


@cli.command()
@click.option(
    "--run",
    "run_id",
    metavar="ID",
    is_flag=False,
    flag_value="",
    help="Watch this run (default: the newest). With --plan and no ID: also run what went stale.",
)
@click.option("--follow", is_flag=True, help="After the run ends, wait for the next one.")
@click.option(
    "--plan", "plan_", is_flag=True, help="Watch orch.yaml, agents/, references/; print what goes stale."
)
@agent_option
@pass_ctx
def watch(ctx: Context, run_id: str | None, follow: bool, plan_: bool, agent: str | None) -> None:
    """Watch a run live (from any terminal), or with --plan, watch the project for edits."""
    try:
        if plan_:
            from orch.observe.planwatch import watch_plan

            watch_plan(ctx.project, agent, run_stale=run_id is not None, out=sys.stdout)
            return
        if run_id == "":
            raise UsageError("--run needs a run id (see wip/runs/), or use it with --plan")
        from orch.observe.watch import watch_runs

        watch_runs(ctx.workspace(), run_id, follow=follow, agent=agent)
    except KeyboardInterrupt:
        raise click.exceptions.Exit(130) from None


# -- agents -------------------------------------------------------------------------


@cli.command()
@click.argument("stage_names", metavar="[STAGE]...", nargs=-1)
@agent_option
@json_option
@pass_ctx
def doctor(ctx: Context, stage_names: tuple[str, ...], agent: str | None) -> None:
    """Check agents: command found, key set, endpoint answers, reply-mode fits; versions.

    Without STAGE: every agent in orch.yaml (or the --agent/$ORCH_AGENT one).
    """
    from orch.engine.preflight import check_agents, doctor_scope, raise_for_problems
    from orch.observe.views import print_json, print_table

    ws = ctx.workspace()
    checks = check_agents(ws.project, doctor_scope(ws, stage_names, agent), versions=True)
    if ctx.json:
        print_json(ctx.out, [c.to_json() for c in checks])
    else:
        print_table(
            ctx.out,
            None,
            ["agent", "backend", "stages", "check", "version"],
            [
                [c.agent, c.backend, _few(c.stages), "ok" if c.ok else "FAIL", c.version or "-"]
                for c in checks
            ],
        )
    raise_for_problems(checks, doctor=True)
    if not ctx.json:
        ctx.out.print(f"doctor: {len(checks)} agent(s) ready", highlight=False, markup=False)


def _few(names: tuple[str, ...]) -> str:
    return ", ".join(names[:2]) + (f" +{len(names) - 2}" if len(names) > 2 else "") if names else "-"


# -- blueprints ---------------------------------------------------------------------


@cli.group()
def blueprint() -> None:
    """Render and check blueprints."""


@blueprint.command("render")
@click.argument("stage_name", metavar="STAGE")
@click.argument("partition_id", metavar="PARTITION")
@agent_option
@json_option
@pass_ctx
def blueprint_render(ctx: Context, stage_name: str, partition_id: str, agent: str | None) -> None:
    """Print exactly the prompt the agent of STAGE/PARTITION receives."""
    from orch.observe.views import print_json
    from orch.usecases import render_prompt

    prompt = render_prompt(ctx.workspace(), stage_name, partition_id, agent)
    if ctx.json:
        print_json(ctx.out, {"stage": stage_name, "partition": partition_id, "prompt": prompt})
    else:
        sys.stdout.write(prompt)


@blueprint.command("check")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@json_option
@pass_ctx
def blueprint_check(ctx: Context, file: Path | None) -> None:
    """Check blueprints: syntax, every partition renders, params declared and used."""
    from orch.observe.views import print_json
    from orch.usecases import check_blueprints

    report = check_blueprints(ctx.workspace(checked=False), file)
    if ctx.json:
        print_json(ctx.out, report.to_json())
    else:
        for line in report.lines():
            ctx.out.print(line, highlight=False, markup=False, soft_wrap=True)
    report.raise_for_errors()


# -- project hygiene ----------------------------------------------------------------


@cli.command()
@click.argument("directory", metavar="[DIR]", default=".", type=click.Path(path_type=Path))
@json_option
@pass_ctx
def init(ctx: Context, directory: Path) -> None:
    """Start a new project in DIR (default: here) that runs at once, offline."""
    from orch.config.scaffold import init_project
    from orch.observe.views import print_json

    report = init_project(directory)
    if ctx.json:
        print_json(ctx.out, {"root": str(report.root), "written": report.written, "kept": report.kept})
        return
    for rel in report.written:
        ctx.out.print(f"wrote {directory / rel}", markup=False)
    for rel in report.kept:
        ctx.out.print(f"kept  {directory / rel} (already there)", markup=False)
    where = "" if directory == Path(".") else f"cd {directory} && "
    ctx.out.print(f"next: {where}orch run", markup=False)


@cli.command()
@click.option("--older-than", metavar="AGE", help="Remove what is older than AGE (e.g. 12h, 7d, 2w).")
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    metavar="N",
    help="Keep the N newest attempts per partition, and N newest runs.",
)
@click.option("--dry-run", is_flag=True, help="List what would go and the bytes freed; remove nothing.")
@json_option
@pass_ctx
def clean(ctx: Context, older_than: str | None, keep: int | None, dry_run: bool) -> None:
    """Prune wip/attempts and wip/runs by age or count; never touches data/."""
    from orch.config.project import find_root
    from orch.observe.views import print_json, print_table
    from orch.store.clean import clean as clean_wip
    from orch.store.clean import parse_age

    age_s = parse_age(older_than) if older_than is not None else None
    report = clean_wip(find_root(explicit=ctx.project), age_s, keep, dry_run)
    if ctx.json:
        print_json(ctx.out, report.to_json())
        return
    if report.removals:
        print_table(ctx.out, None, ["kind", "path", "size", "age"], report.rows())
    for line in report.skipped:
        ctx.out.print(f"kept {line}", markup=False)
    ctx.out.print(report.headline(), markup=False)


# -- entry point --------------------------------------------------------------------


@cli.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback only by default)."
)
@click.option(
    "--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port; 0 picks a free one."
)
@pass_ctx
def serve(ctx: Context, host: str, port: int) -> None:
    """Read-only web dashboard over the project's files (GET only; no writes, no locks)."""
    from orch.web.app import serve as serve_app

    def ready(url: str) -> None:
        click.echo(f"orch serve: dashboard at {url} (Ctrl-C to stop)", err=True)

    try:
        serve_app(ctx.workspace(), host, port, on_ready=ready)
    except OSError as err:
        raise UsageError(
            f"cannot listen on {host}:{port}: {err.strerror or err}", "pick another --port"
        ) from err


def exit_code_for(error: BaseException) -> int:
    """Return the exit code of an error (the one mapping, see EXIT_CODES)."""
    for kind, code in EXIT_CODES:
        if isinstance(error, kind):
            return code
    return 1


def with_project(hint: str, project: str | None) -> str:
    """Add `--project DIR` to every `orch <command>` in a hint, so it works pasted anywhere.

    Hints built by `orch.engine.hints` already carry it; library hints ("list them
    with: orch plan work") get it here.
    """
    if not project:
        return hint
    import re
    import shlex

    commands = "|".join(re.escape(name) for name in cli.commands)
    return re.sub(rf"\borch (?=(?:{commands})\b)", f"orch --project {shlex.quote(project)} ", hint)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; print errors as `error: ...` / `hint: ...`; return the exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    # orch builds many small long-lived records (partitions, manifests); with
    # CPython's default gen-0 threshold (700) `orch status` on 10k partitions
    # spent ~40% of its time in the cyclic collector (bench/status.py).
    gc.set_threshold(50_000, 20, 20)
    context = Context()
    try:
        code = cli.main(args=argv, prog_name="orch", standalone_mode=False, obj=context)
        # a command that ends quietly with click.exceptions.Exit (e.g. Ctrl-C in `orch logs -f`)
        return code if type(code) is int else 0
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.ClickException as err:
        err.show()
        return 2
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("error: interrupted", err=True)
        return 130
    except OrchError as err:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {err.message}", err=True)
        if err.hint:
            click.echo(f"hint: {with_project(err.hint, context.project)}", err=True)
        return exit_code_for(err)
    except BrokenPipeError:
        return 1
    except Exception:  # an orch bug: say so, with the traceback
        traceback.print_exc()
        click.echo(
            "error: unexpected internal error (a bug in orch; please report it with the traceback above)",
            err=True,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
