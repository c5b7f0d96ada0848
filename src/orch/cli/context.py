"""What every command shares: the global options (`Context`), plain output, common options."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console


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


def command_line(ctx: Context, *words: str) -> str:
    """A pasteable `orch` command on this project (with `--project` when given)."""
    from orch.engine.hints import Invocation

    return Invocation(tuple(words), ctx.project).line()


def agent_flag(agent: str | None) -> tuple[str, ...]:
    """Return `--agent NAME` as words for a hint that repeats the command, or nothing."""
    return ("--agent", agent) if agent else ()


def split_only(only: str | None) -> list[str] | None:
    """Split `--only a,b*` into ids and globs (None when not given)."""
    return [i.strip() for i in only.split(",") if i.strip()] if only else None
