"""The `orch` command line: parse, call one function, print. Owns exit codes.

Exit codes (DESIGN.md §7): 0 all good · 1 unexpected error · 2 bad usage,
config or blueprint · 3 some partitions failed · 4 barrier not met ·
129 hung up (SIGHUP) · 130 interrupted. They are assigned in `EXIT_CODES`, nowhere else.
The commands live in `run`, `inspect`, `agents`, `project` and `live`; they are
registered on the `cli` group here.
"""

from __future__ import annotations

import gc
import sys
import traceback

import click

from orch.cli import agents, inspect, live, project, run
from orch.cli.context import Context
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


stage.add_command(inspect.stage_list)
stage.add_command(run.stage_run)
cli.add_command(run.run_all)
cli.add_command(run.worker)
cli.add_command(inspect.plan)
cli.add_command(inspect.status)
cli.add_command(inspect.barrier)
cli.add_command(inspect.show)
cli.add_command(agents.doctor)
cli.add_command(agents.blueprint)
cli.add_command(project.init)
cli.add_command(project.accept)
cli.add_command(project.clean)
cli.add_command(live.logs)
cli.add_command(live.watch)
cli.add_command(live.serve)


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
