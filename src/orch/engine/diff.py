"""`orch plan --diff`: the prompt that produced each output against the prompt now."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from orch.engine.plan import PartitionState
from orch.store.checks import META_DIR
from orch.store.state import PROMPT, read_prompt


@dataclass(frozen=True)
class PromptDiff:
    """One partition's prompt difference.

    Attributes:
        stage: Stage name.
        partition: Partition id.
        diff: Unified diff lines (no trailing newlines); empty when the prompts are equal.
        note: Why no diff could be made (no output yet, inputs not complete), or "".
    """

    stage: str
    partition: str
    diff: tuple[str, ...]
    note: str = ""


def prompt_diff(stage: str, state: PartitionState, root: str) -> PromptDiff:
    """Diff `.orch/prompt.md` of `state`'s partition against the prompt that would run now.

    Args:
        stage: The partition's stage.
        state: Its state (the prompt now is `state.prompt`).
        root: The project root (reads `<root>/<out_dir>/.orch/prompt.md`).
    """
    pid = state.partition.id
    stored = f"{state.partition.out_dir}/{META_DIR}/{PROMPT}"
    if state.manifest is None:
        return PromptDiff(stage, pid, (), "no outputs yet: nothing to compare")
    if state.prompt is None:
        return PromptDiff(stage, pid, (), f"{state.reason}: the prompt now is not known until they are")
    old = read_prompt(f"{root}/{state.partition.out_dir}")
    if old is None:
        return PromptDiff(stage, pid, (), f"{stored} is missing or unreadable")
    lines = difflib.unified_diff(
        old.splitlines(keepends=True),
        state.prompt.splitlines(keepends=True),
        fromfile=stored,
        tofile=f"{stage}/{pid} prompt now",
    )
    return PromptDiff(stage, pid, tuple(_visible(line) for line in lines))


def prompt_diffs(root: str, planned: Sequence[tuple[str, Sequence[PartitionState]]]) -> list[PromptDiff]:
    """Return the non-empty prompt diffs (and notes) of planned partitions."""
    result = []
    for stage, states in planned:
        for state in states:
            diff = prompt_diff(stage, state, root)
            if diff.diff or (diff.note and state.manifest is not None):
                result.append(diff)
    return result


def _visible(line: str) -> str:
    """Strip the newline; mark a line that had none (difflib's convention, as diff -u)."""
    if line.endswith("\n"):
        return line[:-1]
    if line.startswith(("---", "+++", "@@")):
        return line
    return line + "\n\\ No newline at end of file"
