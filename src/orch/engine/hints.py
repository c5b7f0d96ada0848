"""Commands orch suggests in hints: pasted as printed, each does what the hint says.

An `Invocation` remembers the flags of the command that ran (`--project`,
`--agent`, `--only`, `--until`, `--from`, `--force`), so a hint can repeat the
ones that matter and drop the ones that would do harm (`--force` on resume).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Invocation:
    """The `orch` command a user ran, as far as hints need it.

    Attributes:
        command: The subcommand and its arguments: `("stage", "run", "work")` or `("run",)`.
        project: `--project DIR` when given.
        agent: `--agent NAME` when given.
        only: `--only` ids when given.
        until: `orch run --until STAGE`.
        from_: `orch run --from STAGE`.
        force: `--force` was given.
    """

    command: tuple[str, ...] = ("run",)
    project: str | None = None
    agent: str | None = None
    only: tuple[str, ...] = ()
    until: str | None = None
    from_: str | None = None
    force: bool = False

    def line(self, *flags: str) -> str:
        """Return the command line to paste: the same command without `--force`, plus `flags`."""
        words = ["orch"]
        if self.project:
            words += ["--project", self.project]
        words += list(self.command)
        if self.until:
            words += ["--until", self.until]
        if self.from_:
            words += ["--from", self.from_]
        if self.agent:
            words += ["--agent", self.agent]
        if self.only:
            words += ["--only", ",".join(self.only)]
        words += flags
        return shlex.join(words)

    def pipeline(self) -> Invocation:
        """The whole pipeline (`orch run`, same agent, project and range), every partition."""
        command = ("run",)
        return replace(self, command=command, only=(), force=False)

    def with_only(self, ids: list[str]) -> Invocation:
        """The same command narrowed to partition `ids`."""
        return replace(self, only=tuple(ids))

    def other(self, *command: str) -> Invocation:
        """Another command on the same project (no run flags)."""
        return Invocation(command=command, project=self.project)
