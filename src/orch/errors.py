"""The OrchError tree: every expected failure orch reports to a user.

    OrchError                   anything orch expected and can explain
    ├── ConfigError             orch.yaml, references/, output templates (exit 2)
    │   ├── BlueprintError      agents/*.md: front matter, syntax, missing values
    │   └── PartitionError      bad, unsafe or duplicate partition ids and rows
    ├── UsageError              a command line that names what does not exist (exit 2)
    ├── StageBlocked            an upstream barrier is unmet, so a stage may not start (exit 4)
    ├── PartitionsFailed        a run ended with partitions not complete (exit 3)
    ├── BarrierNotMet           outputs on disk fail their expect rules (exit 4)
    └── Interrupted             Ctrl-C / SIGTERM stopped a run (exit 130)
        └── HungUp              SIGHUP (a closed terminal) stopped a run (exit 129)

Exit codes are assigned in exactly one place, `orch.cli`.
"""

from __future__ import annotations


class OrchError(Exception):
    """An expected failure with a message fit for a person.

    Args:
        message: What failed, where (`path:line`, stage/partition) and why.
        hint: What to do next, printed on its own line.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(OrchError):
    """orch.yaml, a references file or an output template is invalid."""


class BlueprintError(ConfigError):
    """A blueprint cannot be parsed or rendered."""


class PartitionError(ConfigError):
    """A partition row is malformed, unsafe or duplicated."""


class UsageError(OrchError):
    """The command line asks for something that does not exist."""


class StageBlocked(OrchError):
    """A stage may not start because an upstream barrier is unmet."""


class PartitionsFailed(OrchError):
    """A run finished with one or more partitions not complete."""


class BarrierNotMet(OrchError):
    """A barrier check found partitions whose outputs fail their expect rules."""


class Interrupted(OrchError):
    """A run was interrupted by Ctrl-C or SIGTERM."""


class HungUp(Interrupted):
    """A run was stopped by SIGHUP (its terminal closed); handled like SIGTERM."""


def did_you_mean(name: str, choices: object) -> str:
    """Return "; did you mean 'x'?" for the nearest of `choices`, or "".

    Case-insensitive difflib ratio with its usual 0.6 cutoff, so only
    plausible typos (`Id` for `ID`) get a suggestion.
    """
    import difflib

    options = [str(c) for c in choices]  # type: ignore[attr-defined]
    by_lower = {o.lower(): o for o in options}
    matches = difflib.get_close_matches(name.lower(), list(by_lower), n=1)
    return f"; did you mean '{by_lower[matches[0]]}'?" if matches else ""
