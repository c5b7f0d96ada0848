#!/usr/bin/env python3
"""Benchmark: 1,000 partitions through the `openai` backend at concurrency 100, beside a peer.

Starts the fake Chat Completions server (tests/fakes/openai_server.py) as its
own process with a fixed latency, makes a throw-away project whose stage has
`max_parallel: 100` and whose agent has `max_concurrency: 100` (reply mode),
runs `orch stage run` as a child process, and — as the peer — the same
fan-out written by hand with the SDK alone (bench/openai_peer.py: one client,
a semaphore, each reply to a file; no locks, staging, manifests or checks).
Each run gets a fresh project and output directory; with `--repeat N` the two
alternate N times. Reported per program:

* wall time (process start to exit, SDK import included) against the ideal,
  ceil(partitions / concurrency) x latency;
* CPU time (user + system) of that child only, not the server's, per partition.

Usage:
    python bench/openai_fanout.py [--partitions 1000] [--concurrency 100]
                                  [--latency 0.5] [--stream] [--repeat 1]
                                  [--no-peer] [--json]

Exits 1 if orch fails or its median wall time exceeds `--target` x ideal
(default 1.5, the target of issue 6).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
SERVER = REPO / "tests" / "fakes" / "openai_server.py"
BLUEPRINT = """\
---
description: fan-out benchmark
params:
  ITEM_ID: the item
---
# Item <ITEM_ID>
Write a short note with a '## Result' heading.
"""


def make_project(root: Path, url: str, args: argparse.Namespace) -> None:
    """Write orch.yaml, the blueprint and `args.partitions` reference rows under `root`."""
    agent: dict[str, Any] = {
        "backend": "openai",
        "base_url": url,
        "model": "fake-model",
        "api_key_env": "FAKE_OPENAI_KEY",
        "reply_file": "out.md",
        "max_concurrency": args.concurrency,
        "stream": args.stream,
    }
    config = {
        "agents": {"default": "model", "model": agent},
        "stages": {
            "fanout": {
                "blueprint": "agents/item.md",
                "partitions": {"from": "references/items.yaml", "path": "items", "id": "ITEM_ID"},
                "output": "data/fanout/<ITEM_ID>",
                "expect": [{"file": "out.md", "headings": ["## Result"]}],
                "max_parallel": args.concurrency,
                "retries": 0,
            }
        },
    }
    (root / "agents").mkdir(parents=True)
    (root / "references").mkdir()
    (root / "orch.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (root / "agents" / "item.md").write_text(BLUEPRINT)
    rows = "".join(f"  - ITEM_ID: item{i:05d}\n" for i in range(args.partitions))
    (root / "references" / "items.yaml").write_text("items:\n" + rows)


def start_server(latency_s: float) -> tuple[subprocess.Popen[str], int]:
    """Start the fake server process; return it and the port it printed."""
    server = subprocess.Popen(
        [sys.executable, str(SERVER), "--port", "0", "--latency", str(latency_s)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line.strip().isdigit():
        server.kill()
        raise SystemExit(f"fake server did not print its port (got {line!r})")
    return server, int(line)


def timed(command: list[str]) -> tuple[int, float, str, str]:
    """Run `command`; return (exit code, wall s, stdout, stderr tail)."""
    env = dict(os.environ, FAKE_OPENAI_KEY="bench-key", PYTHONPATH=str(REPO / "src"))
    env.pop("ORCH_PROJECT", None)
    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    stdout, stderr = child.communicate()
    return child.returncode, time.monotonic() - started, stdout, stderr[-2000:]


def run_one(program: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run orch or the peer once in a fresh directory; return its figures.

    CPU time is the change in RUSAGE_CHILDREN around the run: the child's
    own, as the server (also our child) is reaped only at the end.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        root = Path(tmp) / "project"
        if program == "orch":
            make_project(root, url, args)
            command = [sys.executable, "-m", "orch", "--project", str(root), "stage", "run", "fanout"]
        else:
            command = [
                sys.executable,
                str(REPO / "bench" / "openai_peer.py"),
                f"--base-url={url}",
                f"--out={root}",
                f"--partitions={args.partitions}",
                f"--concurrency={args.concurrency}",
            ]
        code, wall_s, stdout, stderr = timed(command)
        if program == "orch":
            done = len(list(root.glob("data/fanout/*/.orch/manifest.json")))
        else:
            done = int(stdout.strip() or 0) if code == 0 else 0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"exit_code": code, "complete": done, "wall_s": wall_s, "cpu_s": cpu_s, "stderr": stderr}


def summarize(runs: list[dict[str, Any]], args: argparse.Namespace, ideal_s: float) -> dict[str, Any]:
    """Median wall and CPU over `runs`, with every run's wall time."""
    walls = [r["wall_s"] for r in runs]
    wall_s = statistics.median(walls)
    cpu_s = statistics.median(r["cpu_s"] for r in runs)
    return {
        "exit_codes": [r["exit_code"] for r in runs],
        "complete": min(r["complete"] for r in runs),
        "wall_s": round(wall_s, 2),
        "wall_runs_s": [round(w, 2) for w in walls],
        "wall_over_ideal": round(wall_s / ideal_s, 2),
        "cpu_s": round(cpu_s, 2),
        "cpu_ms_per_partition": round(cpu_s * 1000 / args.partitions, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.5, help="server latency per request (s)")
    parser.add_argument("--stream", action="store_true", help="stream responses (SSE; orch only)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each program, alternating")
    parser.add_argument("--no-peer", action="store_true", help="run orch only")
    parser.add_argument("--target", type=float, default=1.5, help="allowed orch wall time / ideal")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    programs = ["orch"] if args.no_peer else ["peer", "orch"]
    server, port = start_server(args.latency)
    url = f"http://127.0.0.1:{port}/v1"
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in programs}
    try:
        for _ in range(args.repeat):
            for name in programs:
                runs[name].append(run_one(name, url, args))
    finally:
        server.terminate()
        server.wait(10)
    ideal_s = math.ceil(args.partitions / args.concurrency) * args.latency
    figures: dict[str, Any] = {
        "partitions": args.partitions,
        "concurrency": args.concurrency,
        "latency_s": args.latency,
        "stream": args.stream,
        "ideal_s": ideal_s,
        "runs": args.repeat,
        **{name: summarize(runs[name], args, ideal_s) for name in programs},
    }
    orch = figures["orch"]
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(
            f"{args.partitions} partitions, concurrency {args.concurrency}, latency {args.latency:g}s: "
            f"ideal {ideal_s:g}s; median of {args.repeat} run(s) each"
        )
        header = f"{'program':<8} {'complete':>9} {'wall s':>7} {'x ideal':>8} {'CPU ms/partition':>17}"
        print(f"{header}  runs (s)")
        for name in programs:
            row = figures[name]
            print(
                f"{name:<8} {row['complete']:>9} {row['wall_s']:>7.2f} {row['wall_over_ideal']:>8.2f} "
                f"{row['cpu_ms_per_partition']:>17.2f}  {' '.join(f'{w:.2f}' for w in row['wall_runs_s'])}"
            )
        print(f"target: orch <= {args.target:g}x ideal")
    failed = [r for r in runs["orch"] if r["exit_code"] != 0 or r["complete"] != args.partitions]
    for run in failed[:1]:
        print(run["stderr"], file=sys.stderr)
    return 0 if not failed and orch["wall_s"] <= args.target * ideal_s else 1


if __name__ == "__main__":
    sys.exit(main())
