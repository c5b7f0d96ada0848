"""Benchmark: `take_snapshot` (the read model) on a generated project of N partitions.

Builds the same project as bench/status.py (or reuses one with --keep), then
times, in one process, best of --repeat: the planner alone (what `orch status`
pays), the run's event log folded alone, and the whole snapshot (planner +
fold + join), as wall and CPU seconds (CPU is steadier on a shared machine).

    python bench/snapshot.py --n 10000 --keep DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orch.config.project import load_project
from orch.config.workspace import Workspace
from orch.engine.plan import Planner
from orch.observe.events import latest_run
from orch.observe.snapshot import RunProgress, take_snapshot


def build(root: Path, n: int) -> None:
    """Build the project of bench/status.py (same blueprint, rows and run)."""
    spec = importlib.util.spec_from_file_location("bench_status", Path(__file__).parent / "status.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(root, n)


def best_of(repeat: int, work: Callable[[], Any]) -> tuple[float, float]:
    """Best (wall, cpu) seconds of `repeat` calls."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="project directory to build or reuse")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="orch-bench-snapshot-"))
    if not (root / "orch.yaml").exists() or not (root / "data/work").exists():
        build(root, args.n)
    ws = Workspace(load_project(root))
    run = latest_run(root)
    assert run is not None, "the project has no run to fold"

    def planner() -> None:
        plan = Planner(ws)
        for name in ws.project.stages:
            plan.stage_states(name)

    rows = [
        ("planner alone (orch status's work)", best_of(args.repeat, planner)),
        ("fold the run's events.jsonl", best_of(args.repeat, lambda: RunProgress.from_log(run.events_path))),
        ("take_snapshot (planner + fold + join)", best_of(args.repeat, lambda: take_snapshot(ws))),
    ]
    size_mb = run.events_path.stat().st_size / 1e6
    n = sum(len(ws.partitions.for_stage(name)) for name in ws.project.stages)
    print(f"{n} partitions, events.jsonl {size_mb:.1f} MB, best of {args.repeat}:")
    for label, (wall, cpu) in rows:
        print(f"  {label:<40} wall {wall:6.3f} s   cpu {cpu:6.3f} s")


if __name__ == "__main__":
    main()
