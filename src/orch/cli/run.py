"""`orch run`, `orch stage run` and `orch worker`: run stages, show progress, print the summary."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import click

from orch.cli.context import Context, agent_option, json_option, pass_ctx
from orch.errors import StageBlocked


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


@click.command("run")
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


@click.command("run")
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


@click.command("worker")
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
