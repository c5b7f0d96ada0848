"""The typed records the Python API returns (`orch.api`): plans, statuses, one partition, a run.

Built from what `orch.usecases` computes for the CLI, so the API and the
`--json` output always agree; field names follow the `--json` keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orch.engine.plan import PartitionState, Status

if TYPE_CHECKING:
    from orch.engine.hints import Invocation
    from orch.engine.runtime import Outcome
    from orch.store.barriers import BarrierReport
    from orch.usecases.inspect import PlanSummary
    from orch.usecases.run import RunResult


@dataclass(frozen=True)
class PlannedPartition:
    """What a run would do with one partition, and why (a row of `orch plan`).

    Attributes:
        stage: Stage name.
        id: Partition id.
        status: Its status on disk now.
        action: `run`, `skip`, `wait` (inputs not complete), `held` (another
            orch run holds it) or `kept` (real outputs the rehearsal won't replace).
        reason: Why: "missing", "stale: prompt changed (...)", ...
        out_dir: Output directory, relative to the project root.
        source: Where the partition comes from (file and row).
        fingerprint: The current fingerprint; None while inputs are not complete.
    """

    stage: str
    id: str
    status: Status
    action: str
    reason: str
    out_dir: str
    source: str
    fingerprint: str | None


@dataclass(frozen=True)
class StagePlan:
    """The plan of one stage: its partitions in order, and counts by status."""

    stage: str
    partitions: tuple[PlannedPartition, ...]
    counts: dict[str, int]


@dataclass(frozen=True)
class Plan:
    """What a run would do (`orch plan`): per stage, plus totals and a cost estimate.

    Attributes:
        stages: One `StagePlan` per stage planned, upstream first.
        actions: How many partitions would `run`, `wait`, be `held` or `skip`.
        est_cost_usd: Estimated cost of what would run, from past attempts (USD).
        no_cost_history: Agents without past attempts to estimate from.
    """

    stages: tuple[StagePlan, ...]
    actions: dict[str, int]
    est_cost_usd: float
    no_cost_history: tuple[str, ...]

    def stage(self, name: str) -> StagePlan:
        """Return the plan of stage `name` (KeyError if it was not planned)."""
        for plan in self.stages:
            if plan.stage == name:
                return plan
        raise KeyError(name)


@dataclass(frozen=True)
class StageStatus:
    """One stage in `orch status`: partition count, counts by status, usage so far.

    `usage` holds `attempts`, `input_tokens`, `output_tokens` and `cost_usd`
    across runs (manifests and archived attempts).
    """

    stage: str
    partitions: int
    counts: dict[str, int]
    usage: dict[str, Any]


@dataclass(frozen=True)
class PartitionStatus:
    """One partition in `orch status STAGE`.

    Attributes:
        stage: Stage name.
        id: Partition id.
        status: Its status on disk.
        reason: The status reason.
        attempts: Attempts kept on disk.
        duration_s: Seconds the promoted attempt took; None if none was promoted.
        tokens: Input plus output tokens of the promoted attempt, if reported.
        cost_usd: Its cost, if reported.
        last_error: The latest attempt error, if any.
        worker: The Dask worker that ran the latest attempt (None: ran locally).
    """

    stage: str
    id: str
    status: Status
    reason: str
    attempts: int
    duration_s: float | None
    tokens: int | None
    cost_usd: float | None
    last_error: str | None
    worker: str | None = None


@dataclass(frozen=True)
class StatusReport:
    """`orch status`: every stage's counts, or one stage's partitions.

    Attributes:
        stages: One `StageStatus` per stage (empty when one stage was asked for).
        partitions: The asked-for stage's partitions (empty otherwise).
        usage_by_agent: Usage per agent name, across runs (all stages only).
        usage_total: Usage in all, across runs (all stages only).
    """

    stages: tuple[StageStatus, ...] = ()
    partitions: tuple[PartitionStatus, ...] = ()
    usage_by_agent: dict[str, dict[str, Any]] = field(default_factory=dict)
    usage_total: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputFile:
    """One promoted output: path relative to the project root, size in bytes."""

    path: str
    bytes: int


@dataclass(frozen=True)
class AttemptRecord:
    """One archived attempt under `wip/attempts/<stage>/<partition>/<n>/`
    (`worker`: the Dask worker that ran it; None when it ran locally)."""

    n: int
    path: str
    outcome: str
    error: str | None
    error_class: str | None
    log_tail: tuple[str, ...]
    worker: str | None = None


@dataclass(frozen=True)
class PartitionDetail:
    """Everything about one partition (`orch show`); paths relative to the project root.

    `manifest` holds the promoted attempt's summary (attempt, fingerprint,
    agent, usage, run_id, duration_s, attempts) or None.
    """

    stage: str
    partition: str
    status: Status
    reason: str
    source: str
    out_dir: str
    exists: bool
    params: dict[str, Any]
    inputs: tuple[str, ...]
    outputs: tuple[OutputFile, ...]
    prompt_file: str | None
    log_file: str | None
    manifest_file: str | None
    manifest: dict[str, Any] | None
    findings: tuple[str, ...]
    attempts: tuple[AttemptRecord, ...]
    last_error: str | None
    prompt: str | None


@dataclass(frozen=True)
class RunReport:
    """What a run did. A failed partition is not an exception: call `raise_for_status`.

    Attributes:
        ok: Every partition in scope is complete or up to date, and no barrier is unmet.
        run_id: The run's id (`wip/runs/<run_id>/`); None for a dry run.
        outcomes: One `orch.engine.runtime.Outcome` per partition in scope (status
            `complete`, `up-to-date`, `failed`, `blocked`, `held`, `halted`,
            `interrupted` or `skipped`, and why).
        barriers: The barrier of each stage run.
        interrupted: The run was stopped (cancelled, Ctrl-C, SIGTERM).
        halted: Why `--halt-on` or a budget stopped starting partitions, or None.
        disk_fault: Why a disk fault ended the run early, or None.
        duration_s: Wall-clock seconds.
        cost_usd: Cost reported by agents in this run (USD).
        events_path: The run's `events.jsonl`.
        planned: For a dry run, what would run (else None).
        result: The CLI's view of the same run (prints the summary tables).
    """

    ok: bool
    run_id: str | None = None
    outcomes: tuple[Outcome, ...] = ()
    barriers: tuple[BarrierReport, ...] = ()
    interrupted: bool = False
    halted: str | None = None
    disk_fault: str | None = None
    duration_s: float = 0.0
    cost_usd: float = 0.0
    events_path: Path | None = None
    planned: tuple[StagePlan, ...] | None = None
    result: RunResult | None = field(default=None, repr=False, compare=False)

    def raise_for_status(self, invocation: Invocation | None = None) -> None:
        """Raise the error a failed run ends with; return if the run is ok.

        Args:
            invocation: The command the hints should repeat; `orch run` by default.

        Raises:
            Interrupted: The run was stopped (CLI exit 130).
            PartitionsFailed: Partitions failed, were blocked or halted (exit 3).
            BarrierNotMet: A stage's barrier is not met, e.g. partitions held
                by another orch run (exit 4).
        """
        if self.result is None:
            return
        result = self.result if invocation is None else replace(self.result, invocation=invocation)
        result.raise_for_status()


def planned_partition(stage: str, state: PartitionState) -> PlannedPartition:
    """Return the plan record of one partition state."""
    from orch.observe.views import plan_action

    return PlannedPartition(
        stage=stage,
        id=state.partition.id,
        status=state.status,
        action=plan_action(state),
        reason=state.reason,
        out_dir=state.partition.out_dir,
        source=state.partition.source,
        fingerprint=state.fingerprint.value if state.fingerprint else None,
    )


def stage_plans(planned: Sequence[tuple[str, Sequence[PartitionState]]]) -> tuple[StagePlan, ...]:
    """Return one `StagePlan` per `(stage, states)` pair of `orch.usecases.inspect.plan_stages`."""
    from orch.observe.views import counts

    return tuple(
        StagePlan(name, tuple(planned_partition(name, s) for s in states), counts(states))
        for name, states in planned
    )


def plan_record(planned: Sequence[tuple[str, Sequence[PartitionState]]], summary: PlanSummary) -> Plan:
    """Return the `Plan` of `orch.usecases.inspect.plan_summary`'s result."""
    return Plan(stage_plans(planned), dict(summary.actions), summary.cost_usd, tuple(summary.no_history))


def partition_status(stage: str, row: dict[str, Any]) -> PartitionStatus:
    """Return the record of one `orch.observe.views.status_rows` row."""
    return PartitionStatus(
        stage=stage,
        id=row["id"],
        status=Status(row["status"]),
        reason=row["reason"],
        attempts=row["attempts"],
        duration_s=row["duration_s"],
        tokens=row["tokens"],
        cost_usd=row["cost_usd"],
        last_error=row["last_error"],
        worker=row.get("worker"),
    )


def partition_detail(data: dict[str, Any]) -> PartitionDetail:
    """Return the record of `orch.usecases.inspect.show_partition`'s result."""
    return PartitionDetail(
        stage=data["stage"],
        partition=data["partition"],
        status=Status(data["status"]),
        reason=data["reason"],
        source=data["source"],
        out_dir=data["out_dir"],
        exists=data["exists"],
        params=dict(data["params"]),
        inputs=tuple(data["inputs"]),
        outputs=tuple(OutputFile(o["path"], o["bytes"]) for o in data["outputs"]),
        prompt_file=data["prompt_file"],
        log_file=data["log_file"],
        manifest_file=data["manifest"],
        manifest=data["manifest_data"],
        findings=tuple(data["findings"]),
        attempts=tuple(
            AttemptRecord(
                a["n"],
                a["path"],
                a["outcome"],
                a["error"],
                a["error_class"],
                tuple(a["log_tail"]),
                a.get("worker"),
            )
            for a in data["attempts"]
        ),
        last_error=data["last_error"],
        prompt=data["prompt"],
    )


def run_report(result: RunResult) -> RunReport:
    """Return the `RunReport` of `orch.usecases.run.RunResult` (a run or a dry run)."""
    summary = result.summary
    if summary is None:
        return RunReport(ok=True, planned=stage_plans(result.dry_run or ()), result=result)
    return RunReport(
        ok=summary.ok and all(b.met for b in result.barriers),
        run_id=summary.run_id,
        outcomes=tuple(summary.outcomes),
        barriers=tuple(result.barriers),
        interrupted=summary.interrupted,
        halted=summary.halted,
        disk_fault=summary.disk_fault,
        duration_s=summary.duration_s,
        cost_usd=summary.cost_usd,
        events_path=summary.events_path,
        result=result,
    )
