"""Read-only commands: `orch stage list`, `plan`, `status`, `barrier`, `show`."""

from __future__ import annotations

from typing import Any

import click

from orch.cli.context import Context, agent_option, command_line, json_option, pass_ctx, split_only
from orch.errors import BarrierNotMet


@click.command("list")
@json_option
@pass_ctx
def stage_list(ctx: Context) -> None:
    """List stages: blueprint, partitions, output template."""
    from orch.observe.views import print_json, print_table
    from orch.usecases.inspect import list_stages

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


@click.command()
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
    from orch.usecases.inspect import plan_summary

    ws = ctx.workspace()
    planned, summary = plan_summary(ws, stage_name, agent, split_only(only))
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


@click.command()
@click.argument("stage_name", metavar="[STAGE]", required=False)
@agent_option
@json_option
@pass_ctx
def status(ctx: Context, stage_name: str | None, agent: str | None) -> None:
    """Counts per status for every stage, or a per-partition table for one."""
    from orch.observe.views import STATUS_ORDER, print_json, print_table, usage_cells
    from orch.usecases.inspect import stage_status, status_usage

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


@click.command()
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
            f"rerun the missing ones with: {command_line(ctx, 'stage', 'run', stage_name)}",
        )
    if not ctx.json:
        ctx.out.print(f"barrier {stage_name}: met ({report.total} of {report.total} complete)")


@click.command()
@click.argument("stage_name", metavar="STAGE")
@click.argument("partition_id", metavar="PARTITION")
@click.option("--all", "all_attempts", is_flag=True, help="Show every archived attempt, not just the newest.")
@agent_option
@json_option
@pass_ctx
def show(ctx: Context, stage_name: str, partition_id: str, all_attempts: bool, agent: str | None) -> None:
    """Everything about one partition: paths, prompt, manifest, attempts, errors."""
    from orch.observe.views import print_json
    from orch.usecases.inspect import show_partition

    data = show_partition(ctx.workspace(), stage_name, partition_id, agent)
    if ctx.json:
        print_json(ctx.out, data)
        return
    from orch.usecases.inspect import format_show

    ctx.out.file.write(format_show(data, all_attempts))
