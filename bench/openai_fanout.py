#!/usr/bin/env python3
"""Benchmark: 1,000 partitions through the `openai` backend at concurrency 100.

Starts the fake Chat Completions server (tests/fakes/openai_server.py) as its
own process with a fixed latency, makes a throw-away project whose stage has
`max_parallel: 100` and whose agent has `max_concurrency: 100` (reply mode),
runs `orch stage run` as a child process and reports:

* wall time against the ideal, ceil(partitions / concurrency) x latency;
* orch's CPU time (user + system, from wait4's rusage of the orch child only,
  not the server) per partition.

Usage:
    python bench/openai_fanout.py [--partitions 1000] [--concurrency 100]
                                  [--latency 0.5] [--stream] [--json]

Exits 1 if orch fails or the wall time exceeds `--target` x ideal (default 1.5).
"""

from __future__ import annotations

import argparse
import json
import math
import os
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


def run_orch(root: Path) -> tuple[int, float, float, str]:
    """Run `orch stage run fanout`; return (exit code, wall s, CPU s of the orch child, stderr tail)."""
    env = dict(os.environ, FAKE_OPENAI_KEY="bench-key", PYTHONPATH=str(REPO / "src"))
    env.pop("ORCH_PROJECT", None)
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-m", "orch", "--project", str(root), "stage", "run", "fanout"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert child.stderr is not None
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall_s = time.monotonic() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, wall_s, usage.ru_utime + usage.ru_stime, stderr[-2000:]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark once and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.5, help="server latency per request (s)")
    parser.add_argument("--stream", action="store_true", help="stream responses (SSE)")
    parser.add_argument("--target", type=float, default=1.5, help="allowed wall time / ideal")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    server, port = start_server(args.latency)
    try:
        with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
            root = Path(tmp) / "project"
            make_project(root, f"http://127.0.0.1:{port}/v1", args)
            code, wall_s, cpu_s, stderr = run_orch(root)
            done = len(list(root.glob("data/fanout/*/.orch/manifest.json")))
    finally:
        server.terminate()
        server.wait(10)
    ideal_s = math.ceil(args.partitions / args.concurrency) * args.latency
    figures = {
        "partitions": args.partitions,
        "concurrency": args.concurrency,
        "latency_s": args.latency,
        "stream": args.stream,
        "exit_code": code,
        "complete": done,
        "wall_s": round(wall_s, 2),
        "ideal_s": ideal_s,
        "wall_over_ideal": round(wall_s / ideal_s, 2),
        "orch_cpu_s": round(cpu_s, 2),
        "orch_cpu_ms_per_partition": round(cpu_s * 1000 / args.partitions, 2),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(
            f"{done}/{args.partitions} partitions complete (exit {code}) in {wall_s:.2f}s; "
            f"ideal {ideal_s:g}s ({figures['wall_over_ideal']}x, target <= {args.target:g}x)\n"
            f"orch CPU {cpu_s:.2f}s = {figures['orch_cpu_ms_per_partition']} ms per partition"
        )
    if code != 0:
        print(stderr, file=sys.stderr)
    return 0 if code == 0 and wall_s <= args.target * ideal_s else 1


if __name__ == "__main__":
    sys.exit(main())
