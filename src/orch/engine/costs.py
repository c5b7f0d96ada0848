"""Tokens and cost spent so far, per stage and per agent, and what a plan would cost.

Sources, across runs: every promoted manifest (the current one and those
replaced into `wip/attempts/`) counts its successful attempt; every failed or
interrupted attempt counts the usage in its `.orch/error.json`. Each attempt is
counted once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orch.engine.plan import PartitionState, Planner
from orch.engine.states import success_usage
from orch.store.layout import read_error
from orch.store.manifest import Manifest, read_manifest


@dataclass
class Totals:
    """Summed usage of some attempts.

    Attributes:
        input_tokens: Input tokens reported.
        output_tokens: Output tokens reported.
        cost_usd: Dollars reported (attempts that reported none add nothing).
        attempts: Attempts counted.
        priced: Partitions with at least one attempt that reported a cost.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    attempts: int = 0
    priced: set[tuple[str, str]] = field(default_factory=set)

    @property
    def tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def add(self, key: tuple[str, str], tokens: tuple[int, int], cost: float | None) -> None:
        """Add one attempt of partition `key`: `(input, output)` tokens and dollars (None: unknown)."""
        self.attempts += 1
        self.input_tokens += tokens[0]
        self.output_tokens += tokens[1]
        if cost is not None:
            self.cost_usd += cost
            self.priced.add(key)

    def mean_cost_usd(self) -> float | None:
        """Mean dollars per partition that reported a cost; None with no history."""
        return self.cost_usd / len(self.priced) if self.priced else None

    def to_json(self) -> dict[str, Any]:
        """JSON form: tokens, cost, attempts and priced partitions."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "attempts": self.attempts,
            "priced_partitions": len(self.priced),
        }


@dataclass
class Spending:
    """Usage so far by stage, by agent, and in all."""

    by_stage: dict[str, Totals] = field(default_factory=dict)
    by_agent: dict[str, Totals] = field(default_factory=dict)
    total: Totals = field(default_factory=Totals)
    _trios: dict[tuple[str, str], tuple[Totals, Totals, Totals]] = field(
        default_factory=dict, repr=False, compare=False
    )
    _parsed: dict[int, tuple[dict[str, Any], tuple[int, int], float | None]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def add(self, stage: str, agent: str, key: tuple[str, str], usage: dict[str, Any]) -> None:
        """Count one attempt of partition `key` by `agent` (untrusted numbers are skipped)."""
        parsed = self._parsed.get(id(usage))
        if parsed is None or parsed[0] is not usage:
            tokens, cost = (0, 0), None
            if usage:  # rehearsal and many CLIs report nothing
                tokens = (_count(usage.get("input_tokens")), _count(usage.get("output_tokens")))
                cost = _dollars(usage.get("cost_usd"))
            # usage records shared by many manifests (the status index) are read once
            parsed = self._parsed[id(usage)] = (usage, tokens, cost)
        _, tokens, cost = parsed
        trio = self._trios.get((stage, agent))
        if trio is None:
            trio = self._trios[stage, agent] = (
                self.by_stage.setdefault(stage, Totals()),
                self.by_agent.setdefault(agent, Totals()),
                self.total,
            )
        for totals in trio:
            totals.add(key, tokens, cost)


def spending(planner: Planner, stages: Iterable[str] | None = None) -> Spending:
    """Return the usage recorded on disk for the partitions of `stages` (default: all).

    Reads each partition's manifest (already loaded by the planner) and the
    `.orch/error.json` or `.orch/manifest.json` of its archived attempts.
    Attempts recorded without an agent name count for the stage's agent.
    """
    result = Spending()
    for name in stages or planner.ws.project.stages:
        default_agent = planner.agent_for(planner.ws.project.stage(name)).name
        result.by_stage.setdefault(name, Totals())
        for state in planner.stage_states(name):
            pid, made = state.success_usage()
            key = (name, pid)
            if made is not None:
                result.add(name, made[0], key, made[1])
            if not planner.has_archived(name, pid):
                continue
            for _, path in planner.archived(state.partition):
                error = read_error(Path(path))
                if error is not None:
                    if isinstance(error.get("usage"), dict):
                        agent = str(error.get("agent") or default_agent)
                        result.add(name, agent, key, error["usage"])
                    continue
                replaced = read_manifest(path)
                if replaced is not None:
                    _add_manifest(result, key, replaced)
    return result


def _add_manifest(result: Spending, key: tuple[str, str], manifest: Manifest) -> None:
    """Count the successful attempt of a manifest (its failed ones are archived apart)."""
    agent, usage = success_usage(manifest)
    result.add(key[0], agent, key, usage)


def estimate(
    planner: Planner, planned: Sequence[tuple[str, Sequence[PartitionState]]], history: Spending
) -> tuple[float, list[str]]:
    """Estimate the dollars of running what `planned` would run.

    Each partition to run costs its stage agent's mean cost per priced
    partition so far.

    Returns:
        `(dollars, agents without cost history that would run)`.
    """
    from orch.observe.views import plan_action

    dollars = 0.0
    unknown: list[str] = []
    for name, states in planned:
        to_run = sum(1 for s in states if plan_action(s) in ("run", "wait"))
        if not to_run:
            continue
        agent = planner.agent_for(planner.ws.project.stage(name)).name
        mean = history.by_agent.get(agent, Totals()).mean_cost_usd()
        if mean is None:
            if agent not in unknown:
                unknown.append(agent)
        else:
            dollars += mean * to_run
    return dollars, unknown


def _count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
        return value
    return 0


def _dollars(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return None
