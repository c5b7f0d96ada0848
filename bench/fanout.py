#!/usr/bin/env python3
"""Fan-out overhead of `orch stage run` against `xargs -P` and GNU `parallel`.

For each N, a throwaway project with N partitions whose agent is a trivial
shell command (`sh -c 'printf "## Result ..." > out.md'`) runs through the real
CLI (`sys.executable -m orch stage run work --max-parallel JOBS`): staging
directory, prompt, agent log, expect checks, manifest, atomic promote, lock,
events. The same N commands (each creating its own directory and writing the
same file) run through `xargs -P JOBS` and, when installed, `parallel -j JOBS`.

    python bench/fanout.py --n 200,1000,2000 --jobs 8 [--repeat 3]
    python bench/fanout.py --n 1000 --profile /tmp/orch.prof   # cProfile the orch run
    python bench/fanout.py --memory 1000,10000   # orch's peak RSS growth per partition

Target (the fan-out issue): orch's time per partition within 3x of xargs -P,
below GNU parallel, and linear from 200 to 2,000 partitions. Memory (issue 12,
item 8): the orchestrator's peak RSS grows by at most 4 KB per partition in
scope, measured as (rss(N2) - rss(N1)) / (N2 - N1) over two orch-only runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: What each job does, in every runner: write one small Markdown file in its directory.
WRITE = 'printf "## Result\\n\\nok ok ok\\n" > out.md'
BLUEPRINT = """\
---
description: fan-out benchmark
params:
  ITEM_ID: the item
---
# Item <ITEM_ID>
Write out.md with a '## Result' heading.
"""


@dataclass
class Row:
    """One N: wall seconds per runner (None when the runner is not installed)."""

    n: int
    jobs: int
    orch_s: float
    xargs_s: float
    parallel_s: float | None

    def ms(self, seconds: float | None) -> float | None:
        return None if seconds is None else seconds * 1000 / self.n


def make_project(root: Path, n: int) -> None:
    """Write orch.yaml, the blueprint and N partition rows under `root`."""
    (root / "agents").mkdir(parents=True)
    (root / "references").mkdir()
    (root / "agents/work.md").write_text(BLUEPRINT)
    rows = "".join(f"  - ITEM_ID: item{i:05d}\n" for i in range(n))
    (root / "references/items.yaml").write_text("items:\n" + rows)
    config = {
        "agents": {"default": "sh", "sh": {"backend": "command", "command": ["sh", "-c", WRITE]}},
        "stages": {
            "work": {
                "blueprint": "agents/work.md",
                "partitions": {"from": "references/items.yaml", "path": "items", "id": "ITEM_ID"},
                "output": "data/work/<ITEM_ID>",
                "expect": [{"file": "out.md", "min_bytes": 10, "headings": ["## Result"]}],
            }
        },
    }
    (root / "orch.yaml").write_text(json.dumps(config, indent=2))  # JSON is YAML


def orch_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ORCH_PROJECT", None)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_orch(root: Path, jobs: int, profile: Path | None = None) -> float:
    """Run `orch stage run work` in `root`; return wall seconds. Checks every partition landed."""
    return run_orch_rss(root, jobs, profile)[0]


def run_orch_rss(root: Path, jobs: int, profile: Path | None = None) -> tuple[float, float]:
    """Run `orch stage run work` in `root`; return wall seconds and the orch process's peak RSS (KB).

    The RSS is os.wait4's rusage of the orch process alone (its agents are
    other processes, reaped by orch: Linux counts a reaped child's RSS in the
    parent's children figure, not in its own).
    """
    prefix = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else [sys.executable]
    argv = [*prefix, "-m", "orch", "stage", "run", "work", "--max-parallel", str(jobs)]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(argv, cwd=root, env=orch_env(), stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            out.seek(0)
            err.seek(0)
            raise SystemExit(f"orch exited {code}:\n{out.read().decode()}\n{err.read().decode()}")
    done = sum(1 for p in (root / "data/work").iterdir() if (p / ".orch/manifest.json").exists())
    expected = len((root / "references/items.yaml").read_text().splitlines()) - 1
    if done != expected:
        raise SystemExit(f"orch promoted {done} of {expected} partitions")
    return elapsed, float(usage.ru_maxrss)  # KiB on Linux


def print_memory(counts: list[int], jobs: int, scratch: Path) -> None:
    """Peak RSS of orch alone at each N, and the growth per partition between the smallest and largest."""
    peaks = {}
    for n in counts:
        project = scratch / f"memory-{n}"
        make_project(project, n)
        seconds, peaks[n] = run_orch_rss(project, jobs)
        shutil.rmtree(project, ignore_errors=True)
        print(f"memory N={n}: orch peak RSS {peaks[n] / 1024:.1f} MB ({seconds:.1f} s)", flush=True)
    low, high = min(peaks), max(peaks)
    if high > low:
        per = (peaks[high] - peaks[low]) / (high - low)
        verdict = "met" if per <= 4 else "NOT met"
        print(f"memory: {per:.2f} KB per partition from N={low} to N={high} (target <= 4 KB: {verdict})")


def job_dirs(base: Path, n: int) -> bytes:
    return b"".join(f"{base}/item{i:05d}\0".encode() for i in range(n))


def run_xargs(base: Path, n: int, jobs: int) -> float:
    """N jobs through `xargs -P JOBS`, each `mkdir DIR && cd DIR && printf ... > out.md`."""
    script = f'mkdir -p "$1" && cd "$1" && {WRITE}'
    argv = ["xargs", "-0", "-n", "1", "-P", str(jobs), "sh", "-c", script, "_"]
    return _timed(argv, job_dirs(base, n), base, n)


def run_parallel(base: Path, n: int, jobs: int) -> float:
    """The same N jobs through GNU `parallel -j JOBS` (-q: pass the script to sh unchanged)."""
    script = f'mkdir -p "$1" && cd "$1" && {WRITE}'
    argv = ["parallel", "--will-cite", "-0", "-q", "-j", str(jobs), "sh", "-c", script, "_"]
    return _timed(argv, job_dirs(base, n), base, n)


def _timed(argv: list[str], stdin: bytes, base: Path, n: int) -> float:
    base.mkdir(parents=True)
    started = time.perf_counter()
    subprocess.run(argv, input=stdin, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    written = sum(1 for p in base.iterdir() if (p / "out.md").exists())
    if written != n:
        raise SystemExit(f"{argv[0]} wrote {written} of {n} files")
    return elapsed


def measure(n: int, jobs: int, scratch: Path, repeat: int = 1) -> Row:
    """Run the three runners for one N in fresh directories; keep each runner's best of `repeat`."""
    orch, xargs, par = [], [], []
    for r in range(repeat):
        project = scratch / f"orch-{n}-{r}"
        make_project(project, n)
        orch.append(run_orch(project, jobs))
        xargs.append(run_xargs(scratch / f"xargs-{n}-{r}", n, jobs))
        if shutil.which("parallel"):
            par.append(run_parallel(scratch / f"parallel-{n}-{r}", n, jobs))
        for done in (project, scratch / f"xargs-{n}-{r}", scratch / f"parallel-{n}-{r}"):
            shutil.rmtree(done, ignore_errors=True)
    return Row(n, jobs, min(orch), min(xargs), min(par) if par else None)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[Row]) -> None:
    head = (
        f"{'N':>6} {'jobs':>4} {'orch s':>8} {'orch ms/p':>9} {'xargs s':>8} {'xargs ms/p':>10} "
        f"{'parallel s':>10} {'par ms/p':>8} {'orch/xargs':>10} {'orch/par':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio_x = r.orch_s / r.xargs_s
        ratio_p = r.orch_s / r.parallel_s if r.parallel_s else None
        print(
            f"{r.n:>6} {r.jobs:>4} {r.orch_s:>8.2f} {r.ms(r.orch_s):>9.2f} {r.xargs_s:>8.2f} "
            f"{r.ms(r.xargs_s):>10.2f} {_fmt(r.parallel_s, '.2f'):>10} "
            f"{_fmt(r.ms(r.parallel_s), '.2f'):>8} {ratio_x:>10.2f} {_fmt(ratio_p, '.2f'):>8}"
        )


def print_verdict(rows: list[Row]) -> None:
    """Linearity and the targets, stated plainly."""
    ordered = sorted(rows, key=lambda r: r.n)
    small, large = ordered[0], ordered[-1]
    if large.n > small.n:
        growth = large.orch_s * small.n / (small.orch_s * large.n)
        print(
            f"linearity: orch {small.ms(small.orch_s):.2f} ms/partition at N={small.n}, "
            f"{large.ms(large.orch_s):.2f} at N={large.n} (x{growth:.2f}; 1.0 = linear)"
        )
        # Totals include a fixed start-up cost; the marginal cost between Ns shows growth alone.
        for a, b in itertools.pairwise(ordered):
            marginal = (b.orch_s - a.orch_s) * 1000 / (b.n - a.n)
            xmarginal = (b.xargs_s - a.xargs_s) * 1000 / (b.n - a.n)
            print(
                f"marginal N={a.n}->{b.n}: orch {marginal:.2f} ms per extra partition (xargs {xmarginal:.2f})"
            )
    for r in rows:
        within = r.orch_s <= 3 * r.xargs_s
        below = r.parallel_s is None or r.orch_s < r.parallel_s
        print(
            f"N={r.n}: within 3x of xargs -P: {'yes' if within else 'NO'}; "
            f"below GNU parallel: {'yes' if below else 'NO'}"
            + ("" if r.parallel_s is not None else " (parallel not installed)")
        )


def print_profile(path: Path, limit: int) -> None:
    stats = pstats.Stats(str(path))
    print(f"\ncProfile of an orch run at the largest N ({path}), top {limit} by own time:")
    stats.sort_stats("tottime").print_stats(limit)
    print(f"top {limit} by cumulative time:")
    stats.sort_stats("cumulative").print_stats(limit)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", default="200,1000,2000", help="comma-separated partition counts")
    parser.add_argument("--jobs", type=int, default=8, help="concurrency for every runner")
    parser.add_argument("--profile", type=Path, help="cProfile the orch run of the largest N into this file")
    parser.add_argument("--profile-lines", type=int, default=25, help="rows of the profile to print")
    parser.add_argument("--repeat", type=int, default=1, help="runs per runner and N; the best is kept")
    parser.add_argument("--keep", action="store_true", help="keep the profiled project's scratch directory")
    parser.add_argument("--memory", help="only measure orch's peak RSS at these comma-separated Ns")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.n.split(",") if x.strip()]
    scratch = Path(tempfile.mkdtemp(prefix="orch-fanout-"))
    if args.memory:
        try:
            print_memory([int(x) for x in args.memory.split(",") if x.strip()], args.jobs, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return 0
    rows = []
    try:
        for n in counts:
            rows.append(measure(n, args.jobs, scratch, args.repeat))
            print(f"N={n}: done", file=sys.stderr, flush=True)
        if args.profile:  # a separate, untimed run: cProfile slows the measured one
            project = scratch / "profiled"
            make_project(project, max(counts))
            run_orch(project, args.jobs, args.profile)
    finally:
        if args.keep:
            print(f"scratch kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, orch from {REPO / 'src'}, "
        f"best of {args.repeat}"
    )
    print_table(rows)
    print_verdict(rows)
    if args.profile:
        print_profile(args.profile, args.profile_lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
