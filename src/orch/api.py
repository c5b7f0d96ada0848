"""The Python API: open a project, plan, inspect, run, follow events. The CLI sits on top.

Every method returns typed records (`orch.records`, `orch.observe`), never
text; expected errors are the `orch.errors.OrchError` tree. Nothing here
prints, exits, or installs a signal handler or a child watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orch.errors import ConfigError, UsageError
from orch.records import (
    PartitionDetail,
    Plan,
    RunReport,
    StageStatus,
    StatusReport,
    partition_detail,
    partition_status,
    plan_record,
    run_report,
)

if TYPE_CHECKING:
    from orch.config.workspace import Workspace
    from orch.observe.events import Event
    from orch.observe.snapshot import Snapshot
    from orch.store.runlog import EventSink
    from orch.usecases.run import PreparedRun

#: Seconds between looks at a followed event log once caught up.
FOLLOW_POLL_S = 0.1


def open_project(path: str | os.PathLike[str] | None = None) -> Project:
    """Find and load a project, and run the CLI's load-time checks.

    Args:
        path: A directory in the project; orch.yaml is looked for there and in
            its parents. None: `$ORCH_PROJECT`, else the current directory and
            its parents, as the CLI without `--project` does.

    Raises:
        ConfigError: no orch.yaml found, or orch.yaml, a blueprint or the
            partition data is invalid (the messages `orch` prints, exit 2).
    """
    from orch.config.project import CONFIG_NAME, find_root, load_project
    from orch.config.workspace import Workspace

    if path is None:
        root = find_root()
    else:
        start = Path(path).expanduser().resolve()
        found = next((d for d in (start, *start.parents) if (d / CONFIG_NAME).is_file()), None)
        if found is None:
            raise ConfigError(
                f"no {CONFIG_NAME} found in {start} or any parent directory",
                "pass a directory inside a project to open_project()",
            )
        root = find_root(explicit=found)
    workspace = Workspace(load_project(root))
    workspace.check()
    return Project(workspace)


class Project:
    """One loaded orch project: what the `orch` commands do, as methods.

    Args:
        workspace: The loaded, checked project (see `open_project`).
    """

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    @property
    def root(self) -> Path:
        """The project directory (holding orch.yaml)."""
        return Path(self.workspace.root)

    def __repr__(self) -> str:
        return f"<orch.Project {self.root}>"

    # -- inspection -----------------------------------------------------------

    def plan(
        self, stage: str | None = None, *, only: Sequence[str] | None = None, agent: str | None = None
    ) -> Plan:
        """Return what a run would do for each partition, and why (`orch plan`).

        Args:
            stage: One stage, or None for all.
            only: Partition ids or globs (`1.*`) to narrow to.
            agent: The agent to judge for (else `$ORCH_AGENT`, else orch.yaml).

        Raises:
            UsageError: An unknown stage, agent or `only` id.
        """
        from orch.usecases.inspect import plan_summary

        planned, summary = plan_summary(self.workspace, stage, agent, list(only) if only else None)
        return plan_record(planned, summary)

    def status(self, stage: str | None = None, *, agent: str | None = None) -> StatusReport:
        """Return counts per status and usage for every stage, or one stage's partitions.

        Args:
            stage: None: `stages`, `usage_by_agent` and `usage_total` are filled;
                a name: `partitions` lists that stage's partitions.
            agent: The agent to judge for (else `$ORCH_AGENT`, else orch.yaml).
        """
        from orch.usecases.inspect import stage_status, status_usage

        if stage is not None:
            name = self.workspace.project.stage(stage).name
            rows = stage_status(self.workspace, name, agent)
            return StatusReport(partitions=tuple(partition_status(name, r) for r in rows))
        overview, by_agent, total = status_usage(self.workspace, agent)
        stages = tuple(StageStatus(o["stage"], o["partitions"], o["counts"], o["usage"]) for o in overview)
        return StatusReport(stages=stages, usage_by_agent=by_agent, usage_total=total)

    def show(self, stage: str, partition: str, *, agent: str | None = None) -> PartitionDetail:
        """Return everything about one partition (`orch show`): paths, manifest, attempts, prompt.

        Raises:
            UsageError: An unknown stage or partition.
        """
        from orch.usecases.inspect import show_partition

        return partition_detail(show_partition(self.workspace, stage, partition, agent))

    def snapshot(self, agent: str | None = None, run_id: str | None = None) -> Snapshot:
        """Return the read model: each partition's status on disk joined with its phase in a run.

        Args:
            agent: The agent to judge for.
            run_id: The run to join; None: the newest one.

        Raises:
            UsageError: `run_id` names no run under `wip/runs/`.
        """
        from orch.observe.snapshot import take_snapshot

        return take_snapshot(self.workspace, agent, run_id)

    def events(
        self, run_id: str | None = None, follow: bool = False, *, timeout_s: float | None = None
    ) -> Iterator[Event]:
        """Yield the typed events of a run's `wip/runs/<run_id>/events.jsonl`.

        Args:
            run_id: The run; None: the newest one.
            follow: Keep yielding new events until `run_finished`, or until the
                run's process is gone (then the events on disk are yielded and
                the iterator ends), polling every `FOLLOW_POLL_S`.
            timeout_s: With `follow`, also end when no event came for this long.

        Raises:
            UsageError: No run yet, or `run_id` names no run.
        """
        from orch.observe.events import EventReader, is_process_alive, latest_run, read_run

        if run_id is None:
            run = latest_run(self.root)
            if run is None:
                raise UsageError("no run yet: wip/runs/ is empty", "start one with: orch run")
        else:
            run_dir = self.root / "wip" / "runs" / run_id
            if not (run_dir / "events.jsonl").is_file():
                raise UsageError(f"no run {run_id!r} under wip/runs/", "list runs with: ls wip/runs")
            run = read_run(run_dir)
        reader = EventReader(run.events_path)
        if not follow:
            return iter(reader.read())
        pid, started_at = run.pid, run.started_at

        def is_gone() -> bool:
            return pid is None or not is_process_alive(pid, started_at)

        return reader.follow(poll_s=FOLLOW_POLL_S, stop=is_gone, timeout_s=timeout_s)

    # -- running ----------------------------------------------------------------

    def prepare_run(
        self,
        stages: str | Sequence[str] | None = None,
        *,
        until: str | None = None,
        from_: str | None = None,
        sinks_factory: Callable[[], EventSink] | None = None,
        **options: Any,
    ) -> PreparedRun | RunReport:
        """Check a run and set it up without starting it (what `run` does first).

        Returns a `orch.usecases.run.PreparedRun` to await (the CLI drives it with
        its own signal handlers), or for `dry_run=True` the `RunReport` with
        `planned` set. Arguments and errors as `run`.
        """
        from orch.usecases.run import RunResult, pipeline_stages, prepare_run

        ws = self.workspace
        if stages is None:
            names = pipeline_stages(ws, until, from_)
        elif until or from_:
            raise UsageError("give stages, or until/from_, not both")
        else:
            names = [stages] if isinstance(stages, str) else list(stages)
        if options.get("only"):
            options["only"] = list(options["only"])
        prepared = prepare_run(ws, names, sinks_factory=sinks_factory, **options)
        return run_report(prepared) if isinstance(prepared, RunResult) else prepared

    def run(
        self,
        stages: str | Sequence[str] | None = None,
        *,
        only: Sequence[str] | None = None,
        agent: str | None = None,
        force: bool = False,
        retry_failed: bool = False,
        max_parallel: int | None = None,
        halt_on_pct: float | None = None,
        dry_run: bool = False,
        until: str | None = None,
        from_: str | None = None,
        wait_locks_s: float = 0.0,
        executor: str | None = None,
    ) -> RunReport:
        """Run stages (or the pipeline) and return what happened; blocks until done.

        Works with or without a running event loop (Jupyter): the run gets its
        own loop in a worker thread. Installs no signal handler. A
        KeyboardInterrupt while waiting stops the run, waits for its agents to
        end, and is raised again.

        Args:
            stages: A stage name or names (upstream first); None: the whole
                pipeline between `from_` and `until`, as `orch run`.
            only: Partition ids or globs.
            agent: The agent for every stage (else `$ORCH_AGENT`, else orch.yaml).
            force: Run every partition in scope, even complete ones.
            retry_failed: Run only partitions whose last attempt failed.
            max_parallel: Concurrency limit.
            halt_on_pct: Stop starting partitions once this % has failed.
            dry_run: Return the plan (`RunReport.planned`); write nothing.
            until: Last stage of the pipeline (with `stages=None`).
            from_: First stage of the pipeline (with `stages=None`).
            wait_locks_s: Wait this long for partitions another orch run holds.
            executor: Where attempts run, as `--executor`: `local` or
                `dask://host:port`; None: orch.yaml's `executor:`, else local.

        Returns:
            The `RunReport`; a failed partition is not an exception here: call
            `report.raise_for_status()` to raise the CLI's error.

        Raises:
            ConfigError / BlueprintError: A prompt in scope cannot be rendered.
            UsageError: Unknown stage, agent or partition ids.
            PreflightFailed: An agent the run needs cannot work (nothing written).
            StageBlocked: A stage's upstream input is not complete.
        """
        prepared = self.prepare_run(
            stages,
            until=until,
            from_=from_,
            only=only,
            agent=agent,
            force=force,
            retry_failed=retry_failed,
            max_parallel=max_parallel,
            halt_on_pct=halt_on_pct,
            dry_run=dry_run,
            wait_locks=wait_locks_s,
            executor=executor,
        )
        if isinstance(prepared, RunReport):
            return prepared
        return _run_in_thread(prepared)

    async def arun(
        self,
        stages: str | Sequence[str] | None = None,
        *,
        only: Sequence[str] | None = None,
        agent: str | None = None,
        force: bool = False,
        retry_failed: bool = False,
        max_parallel: int | None = None,
        halt_on_pct: float | None = None,
        dry_run: bool = False,
        until: str | None = None,
        from_: str | None = None,
        wait_locks_s: float = 0.0,
        executor: str | None = None,
    ) -> RunReport:
        """The async twin of `run`, on the caller's event loop.

        The checks before the run (rendering, pre-flight) run in a worker
        thread. Cancelling the task stops the run: no new partitions, running
        agents are terminated (within their `kill_grace`) and recorded as
        interrupted; then `asyncio.CancelledError` propagates. The event log
        ends with `run_finished` (`interrupted: true`).

        Args and Raises: as `run`.
        """
        prepared = await asyncio.to_thread(
            self.prepare_run,
            stages,
            until=until,
            from_=from_,
            only=only,
            agent=agent,
            force=force,
            retry_failed=retry_failed,
            max_parallel=max_parallel,
            halt_on_pct=halt_on_pct,
            dry_run=dry_run,
            wait_locks=wait_locks_s,
            executor=executor,
        )
        if isinstance(prepared, RunReport):
            return prepared
        return await drive(prepared)


async def drive(prepared: PreparedRun) -> RunReport:
    """Await a prepared run; if cancelled, stop it, wait until its agents ended, re-raise.

    Raises:
        asyncio.CancelledError: The awaiting task was cancelled (after the
            run's agents ended and the run was recorded as interrupted).
    """
    task = asyncio.ensure_future(prepared.run())
    try:
        return run_report(await asyncio.shield(task))
    except asyncio.CancelledError:
        prepared.stop()
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                continue  # cancelled again: agents are being ended; wait for them
        raise


def _run_in_thread(prepared: PreparedRun) -> RunReport:
    """Run `prepared` on a new event loop in a worker thread; wait for it here.

    A thread keeps the caller's loop (Jupyter's) untouched, and asyncio installs
    no SIGINT handler off the main thread.
    """
    loop = asyncio.new_event_loop()
    box: dict[str, Any] = {}
    # Completion is signalled by an Event, not Thread.join: on Python 3.11 a
    # KeyboardInterrupt that lands inside join(timeout) can leave the thread
    # marked stopped, so a later join() returns while the run still goes on.
    done = threading.Event()

    def work() -> None:
        asyncio.set_event_loop(loop)
        try:
            box["report"] = loop.run_until_complete(drive(prepared))
        except BaseException as err:  # handed to the caller's thread below
            box["error"] = err
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            done.set()

    worker = threading.Thread(target=work, name="orch-run", daemon=True)
    worker.start()
    try:
        while not done.wait(0.1):
            pass
    except KeyboardInterrupt:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to stop
            loop.call_soon_threadsafe(prepared.stop)
        while not done.wait(0.1):  # the run ends its agents and writes run_finished
            pass
        raise
    if "error" in box:
        raise box["error"]
    report: RunReport = box["report"]
    return report
