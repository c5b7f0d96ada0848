"""Commands about agents and their prompts: `orch doctor`, `orch blueprint render|check`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from orch.cli.context import Context, agent_option, json_option, pass_ctx


@click.command()
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


@click.group()
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
    from orch.usecases.blueprints import render_prompt

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
    from orch.usecases.blueprints import check_blueprints

    report = check_blueprints(ctx.workspace(checked=False), file)
    if ctx.json:
        print_json(ctx.out, report.to_json())
    else:
        for line in report.lines():
            ctx.out.print(line, highlight=False, markup=False, soft_wrap=True)
    report.raise_for_errors()
