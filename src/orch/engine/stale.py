"""Why a partition is stale: name the changed child, row field, var or agent key, or prompt lines.

Compares a manifest's stored fingerprint parts (and per-key hashes, where the
manifest has them) with the current `Fingerprint`, most specific first.
"""

from __future__ import annotations

from typing import Any

from orch.config.partitions import Partition
from orch.config.stages import Stage
from orch.config.workspace import Fingerprint
from orch.store.manifest import Manifest


def stale_reason(
    manifest: Manifest,
    fp: Fingerprint,
    partition: Partition,
    stage: Stage,
    old_prompt: str | None = None,
    new_prompt: str | None = None,
) -> str:
    """Explain which input of the fingerprint changed, most specific first.

    Names the changed children, row fields, var or agent keys (manifests
    written before per-key hashes were stored name none), and the first
    changed prompt lines when both prompts are given (`old_prompt`: the
    partition's `.orch/prompt.md`).
    """
    old = manifest.parts
    if old.get("inputs") != dict(fp.inputs):
        before = old.get("inputs") or {}
        changed = [k.split("/", 1)[1] for k, v in fp.inputs.items() if before.get(k) != v]
        changed += [k.split("/", 1)[1] for k in before if k not in fp.inputs]
        if changed:
            label = "child" if len(changed) == 1 else "children"
            return f"stale: {label} {_first(changed)} changed"
    if old.get("prompt") != fp.prompt:
        now = fp.explain()
        where = prompt_change(old_prompt, new_prompt)
        if old.get("row") != now["row"]:
            source = partition.source.split(":", 1)[0]
            keys = changed_keys(old.get("row_keys"), fp.keys().get("row_keys"))
            return f"stale: {source} row changed" + (f" (field {_first(keys)})" if keys else "")
        if old.get("vars") != now["vars"]:
            keys = changed_keys(old.get("vars_keys"), fp.keys().get("vars_keys"))
            return f"stale: vars changed (orch.yaml{': ' + _first(keys) if keys else ''})"
        if old.get("blueprint") != now["blueprint"]:
            return f"stale: prompt changed{where} (blueprint {stage.blueprint})"
        return f"stale: prompt changed{where}"
    if old.get("agent") != fp.agent:
        keys = changed_keys(old.get("agent_keys"), fp.keys().get("agent_keys"))
        return "stale: agent settings changed" + (f" ({_first(keys)})" if keys else "")
    if old.get("expect") != fp.expect:
        return "stale: expect rules changed"
    return "stale: fingerprint changed"


def changed_keys(before: Any, now: Any) -> list[str]:
    """Keys whose value hash differs between two `key -> hash` maps (added and removed too).

    Returns [] when either map is absent (a manifest from before per-key hashes).
    """
    if not isinstance(before, dict) or not isinstance(now, dict):
        return []
    return sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))


def prompt_change(old: str | None, new: str | None) -> str:
    """Describe where `new` differs from `old`: " at line 3", " at lines 3-9, whitespace only".

    Lines are 1-based lines of the new prompt, from the first to the last that
    differ (two linear scans: `orch status` may explain thousands of stale
    partitions; a full diff is `orch plan --diff`). "" when either prompt is
    unknown or they are equal.
    """
    if old is None or new is None or old == new:
        return ""
    old_lines, new_lines = old.splitlines(), new.splitlines()
    first = next(
        (i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=False)) if a != b),
        min(len(old_lines), len(new_lines)),
    )
    tail = next(
        (i for i, (a, b) in enumerate(zip(reversed(old_lines), reversed(new_lines), strict=False)) if a != b),
        min(len(old_lines), len(new_lines)),
    )
    keep = min(tail, len(old_lines) - first, len(new_lines) - first)  # common tail after `first`
    window = (old_lines[first : len(old_lines) - keep], new_lines[first : len(new_lines) - keep])
    blank = ", whitespace only" if " ".join(window[0]).split() == " ".join(window[1]).split() else ""
    last = max(len(new_lines) - tail, first + 1)
    first = min(first + 1, max(len(new_lines), 1))  # only the final newline differs: the last line
    last = min(max(last, first), max(len(new_lines), 1))
    where = f"line {first}" if first == last else f"lines {first}-{last}"
    return f" at {where}{blank}"


def _first(names: list[str], limit: int = 3) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
