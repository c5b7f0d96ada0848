#!/usr/bin/env python3
"""Fan-out overhead of the Dask executor: local vs `--executor dask://` vs a bare
`client.submit` loop, on the same N trivial attempts (issue 14).

Starts a `dask scheduler` and two `orch worker` processes (JOBS/2 slots each)
on 127.0.0.1. Each runner does N times: make a directory, run
`sh -c 'printf "## Result ..." > out.md'` in it. The orch runs go through the
real CLI (`orch stage run work --max-parallel JOBS [--executor ...]`: staging,
claim, checks, manifest, promotion, events); the bare loop submits N tasks
that each run the command with `subprocess.run`, then awaits them one by one. CPU is
the runner's (with its children's) plus the scheduler's and workers' (with their agents'),
so it is less sensitive to load from other jobs than the wall time.

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
        runs: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        for r in range(args.repeat):
            for runner in ("local", "dask", "bare"):
                root = scratch / f"{runner}-{r}"
                if runner != "bare":
                    make_project(root, args.n)
                cpu_before = cpu_s(procs)
                if runner == "bare":
                    out = subprocess.run(
                        [sys.executable, "-c", BARE, address, str(root), str(args.n), WRITE],
                        env=orch_env(), capture_output=True, text=True, check=True,
                    )  # fmt: skip
                    seconds = float(out.stdout.strip().splitlines()[-1])
                else:
                    seconds = run_orch(root, args.jobs, "local" if runner == "local" else url)
                runs.setdefault(runner, []).append(seconds)
                cpu.setdefault(runner, []).append(cpu_s(procs) - cpu_before)
                shutil.rmtree(root, ignore_errors=True)
        best = {k: statistics.median(v) for k, v in runs.items()}
        ms = {k: v * 1000 / args.n for k, v in best.items()}
        slots = f"{args.jobs} slots (2 workers x {args.jobs // 2})"
        print(f"N={args.n} attempts, {slots}, median of {args.repeat}")
        labels = {"local": "orch local", "dask": "orch --executor dask", "bare": "bare client.submit"}
        for runner, label in labels.items():
            cpu_ms = statistics.median(cpu[runner]) * 1000 / args.n
            wall = f"{best[runner]:7.2f} s  {ms[runner]:6.2f} ms/attempt"
            print(f"  {label:<22} {wall}  CPU {cpu_ms:5.2f} ms/attempt")
        print(f"  dask over local: {ms['dask'] - ms['local']:+.2f} ms/attempt (target <= 10)")
        print(f"  orch on dask / bare submit: x{ms['dask'] / ms['bare']:.2f} (target <= 1.5)")
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
