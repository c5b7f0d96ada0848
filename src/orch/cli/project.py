"""Commands that change the project: `orch init`, `orch clean`, `orch accept`."""

from __future__ import annotations

from pathlib import Path

import click

from orch.cli.context import Context, agent_flag, command_line, json_option, pass_ctx, split_only
from orch.errors import BarrierNotMet


@click.command()
@click.argument("stage_name", metavar="STAGE")
@click.option("--only", metavar="ID|GLOB,...", help="Accept only these partition ids or globs.")
@click.option("--agent", metavar="NAME", help="Accept as if running with this agent.")
@json_option
@pass_ctx
def accept(ctx: Context, stage_name: str, only: str | None, agent: str | None) -> None:
    """Mark stale partitions up to date without running them, if their outputs pass."""
    from orch.observe.views import print_json, print_table
    from orch.usecases.accept import accept_stage

    report = accept_stage(ctx.workspace(), stage_name, split_only(only), agent)
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
        rerun = command_line(ctx, "stage", "run", report.stage, *agent_flag(agent), "--only", ids)
        raise BarrierNotMet(
            f"{len(report.refused)} partition(s) of {report.stage} were not accepted (see above)",
            f"rerun them with: {rerun}",
        )


@click.command()
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


@click.command()
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
