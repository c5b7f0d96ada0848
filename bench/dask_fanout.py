#!/usr/bin/env python3
"""Fan-out overhead of the Dask executor: local vs `--executor dask://` vs a bare
`client.submit` loop, on the same N trivial attempts (issue 14).

Starts a `dask scheduler` and two `orch worker` processes (JOBS/2 slots each)
on 127.0.0.1. Each runner does N times: make a directory, run
`sh -c 'printf "## Result ..." > out.md'` in it. The orch runs go through the
real CLI (`orch stage run work --max-parallel JOBS [--executor ...]`: staging,
claim, checks, manifest, promotion, events); the bare loop is a Python process
that connects a `Client`, submits N tasks that each run the command with
`subprocess.run`, and awaits them one by one.

Every runner is timed the same way: the wall time of its whole process, once
with N attempts and once with 1. The one-attempt run is its start-up (Python
imports, loading the project, connecting to and checking the workers); the
per-attempt cost is (wall(N) - wall(1)) / (N - 1), as the issue's table keeps
start-up apart from the cost per attempt. The bare loop's own timer (connected
client, first submit to last result) is printed too. CPU is the runner's (with
its children's) plus the scheduler's and workers' (with their agents'), so it
is less sensitive to load from other jobs than the wall time.

    python bench/dask_fanout.py --n 1000 --jobs 8 [--repeat 3]   (median of the repeats)

Targets (issue 14): Dask adds at most 10 ms per attempt over local, and orch
on Dask costs at most 1.5x the bare `client.submit` loop per attempt.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fanout import WRITE, make_project, orch_env

#: The bare peer: N tasks, each mkdir + the same command; awaited in order.
BARE = r"""
import os, subprocess, sys, time
from distributed import Client
address, base, n, WRITE = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def job(path):
    os.makedirs(path, exist_ok=True)
    subprocess.run(["sh", "-c", WRITE], cwd=path, check=True)
    return path
with Client(address) as client:
    started = time.perf_counter()
    futures = [client.submit(job, f"{base}/item{i:05d}", pure=False) for i in range(n)]
    for future in futures:
        future.result()
        future.release()
    print(time.perf_counter() - started)
"""


def start(argv: list[str], log: Path, pattern: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start a cluster process; return it and the address its log announces (60 s bound)."""
    with open(log, "wb") as handle:
        proc = subprocess.Popen(argv, env=orch_env(), stdout=handle, stderr=handle)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text(errors="replace"))
        if match:
            return proc, match.group(1)
        if proc.poll() is not None:
            raise SystemExit(f"{argv} exited:\n{log.read_text()}")
        time.sleep(0.1)
    raise SystemExit(f"{argv} did not start in 60 s")


def cpu_s(procs: list[subprocess.Popen[bytes]]) -> float:
    """CPU seconds so far of this process's waited-for children and of `procs` with theirs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    for proc in procs:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def run_orch(root: Path, jobs: int, executor: str) -> float:
    """`orch stage run work` in `root`; wall seconds (checks every partition landed)."""
    argv = [sys.executable, "-m", "orch", "stage", "run", "work", "--max-parallel", str(jobs)]
    started = time.perf_counter()
    result = subprocess.run([*argv, "--executor", executor], cwd=root, env=orch_env(), capture_output=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"orch exited {result.returncode}:\n{result.stderr.decode()}")
    return elapsed


#: The runners, in the order they run in each repeat, and their labels.
RUNNERS = {"local": "orch local", "dask": "orch --executor dask", "bare": "bare client.submit"}


def run_once(
    runner: str, root: Path, n: int, jobs: int, address: str, url: str
) -> tuple[float, float | None]:
    """Run `runner` with `n` attempts in `root` (removed after).

    Returns:
        The whole process's wall seconds, and for the bare loop its own timer's seconds.
    """
    try:
        if runner != "bare":
            make_project(root, n)
            return run_orch(root, jobs, "local" if runner == "local" else url), None
        argv = [sys.executable, "-c", BARE, address, str(root), str(n), WRITE]
        started = time.perf_counter()
        out = subprocess.run(argv, env=orch_env(), capture_output=True, text=True, check=True)
        return time.perf_counter() - started, float(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report(
    n: int,
    jobs: int,
    repeat: int,
    walls: dict[tuple[str, int], list[float]],
    cpu: dict[str, list[float]],
    loops: list[float],
) -> None:
    """Print each runner's wall, start-up, per-attempt cost and CPU (medians), and the ratios."""
    print(f"N={n} attempts, {jobs} slots (2 workers x {jobs // 2}), median of {repeat}")
    print(f"  {'':<22} {'wall (N)':>9} {'start-up':>9} {'per attempt':>12} {'CPU/attempt':>12}")
    per: dict[str, float] = {}
    whole: dict[str, float] = {}
    for runner, label in RUNNERS.items():
        wall_n, wall_1 = statistics.median(walls[(runner, n)]), statistics.median(walls[(runner, 1)])
        per[runner] = (wall_n - wall_1) * 1000 / (n - 1)
        whole[runner] = wall_n * 1000 / n
        cpu_ms = statistics.median(cpu[runner]) * 1000 / n
        print(f"  {label:<22} {wall_n:7.2f} s {wall_1:7.2f} s {per[runner]:9.2f} ms {cpu_ms:9.2f} ms")
    loop_ms = statistics.median(loops) * 1000 / n
    print(f"  bare loop's own timer (connected client, all N): {loop_ms:.2f} ms/attempt")
    print(f"  dask over local: {per['dask'] - per['local']:+.2f} ms/attempt (target <= 10)")
    print(f"  orch on dask / bare submit, per attempt: x{per['dask'] / per['bare']:.2f} (target <= 1.5)")
    print(f"  the same with start-up included (wall(N) / N): x{whole['dask'] / whole['bare']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="orch-dask-bench-"))
    procs = []
    try:
        scheduler, address = start(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard"],
            scratch / "scheduler.log",
            r"Scheduler at:\s+(tcp://[0-9.:]+)",
        )  # fmt: skip
        procs.append(scheduler)
        for name in ("w1", "w2"):
            worker_argv = [sys.executable, "-m", "orch", "worker", address, "--slots", str(args.jobs // 2)]
            worker, _ = start(
                [*worker_argv, "--name", name], scratch / f"{name}.log", r"Start worker at:\s+(tcp://\S+)"
            )
            procs.append(worker)
        url = "dask://" + address.removeprefix("tcp://")
        walls: dict[tuple[str, int], list[float]] = {}
        cpu: dict[str, list[float]] = {}
        loops: list[float] = []
        for r in range(args.repeat):
            for runner in RUNNERS:
                for n in (1, args.n):
                    cpu_before = cpu_s(procs)
                    seconds, loop = run_once(
                        runner, scratch / f"{runner}-{r}-{n}", n, args.jobs, address, url
                    )
                    walls.setdefault((runner, n), []).append(seconds)
                    if n == args.n:
                        cpu.setdefault(runner, []).append(cpu_s(procs) - cpu_before)
                        if loop is not None:
                            loops.append(loop)
        report(args.n, args.jobs, args.repeat, walls, cpu, loops)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    os.environ.pop("ORCH_PROJECT", None)
    main()
