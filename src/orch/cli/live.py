"""Commands that follow a run live: `orch logs [-f]`, `orch watch`, `orch serve`."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

import click

from orch.cli.context import Context, agent_option, pass_ctx
from orch.errors import UsageError


@click.command()
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

    return replace(log, kind="read-once") if log.is_live else log


@click.command()
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


@click.command()
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
