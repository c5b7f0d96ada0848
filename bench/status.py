"""Benchmark: `orch status` and `orch plan` on a generated project of N partitions.

Target (issue "Barriers, resume and staleness"): each under 1 s at 10,000
partitions on the 2-core development machine. The peer, side by side, is the
floor any tool pays to look at the same disk state: a bare Python loop that
reads every manifest and stats every expected output (no rendering, no
fingerprints), plus the interpreter start-up with orch imported.

    python bench/status.py --n 10000            # builds the project once, in a temp dir
    python bench/status.py --n 10000 --keep DIR # reuse/keep the project in DIR

The project is populated by `orch stage run` on the offline rehearsal agent
(minutes at 10k: file creation on this disk is slow); timings are best of
--repeat runs of the real CLI in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BLUEPRINT = (
    """\
---
description: benchmark blueprint
params:
  ITEM_ID: item
  GROUP: group
  QUESTIONS: questions
---
# Item <ITEM_ID> (group <GROUP>)
{% for q in QUESTIONS %}- {{ q }}
{% endfor %}
{% if GROUP == "g007" %}Extra guidance for one group.{% endif %}
"""
    + "An instruction line of realistic length for an analyst's blueprint.\n" * 60
)


def build(root: Path, n: int) -> None:
    """Write orch.yaml, a blueprint and N reference rows, then run the stage once."""
    import yaml

    (root / "agents").mkdir(parents=True, exist_ok=True)
    (root / "references").mkdir(exist_ok=True)
    (root / "agents/work.md").write_text(BLUEPRINT)
    rows = [
        {
            "ITEM_ID": f"item{i:05d}",
            "GROUP": f"g{i % 100:03d}",
            "QUESTIONS": [f"question one about item {i}", "question two"],
        }
        for i in range(n)
    ]
    (root / "references/items.yaml").write_text(yaml.safe_dump({"items": rows}))
    config = {
        "agents": {"default": "offline", "offline": {"backend": "rehearsal"}},
        "stages": {
            "work": {
                "blueprint": "agents/work.md",
                "partitions": {"from": "references/items.yaml", "path": "items", "id": "ITEM_ID"},
                "output": "data/work/<ITEM_ID>",
                "expect": [
                    {"file": "out.md", "min_bytes": 50, "headings": ["## Result"]},
                    {"file": "data.json", "json": True},
                ],
                "max_parallel": 64,
            }
        },
    }
    (root / "orch.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "orch", "stage", "run", "work"],
        cwd=root,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    print(f"populated {n} partitions in {time.perf_counter() - started:.1f} s")


def best_of(argv: list[str], cwd: Path, repeat: int) -> float:
    """Best wall time (s) of `repeat` runs of argv."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return min(times)


FLOOR = """
import json, os, sys
import orch.cli  # same imports as the CLI
base = "data/work"
for name in os.listdir(base):
    d = os.path.join(base, name)
    with open(os.path.join(d, ".orch/manifest.json"), "rb") as h:
        json.loads(h.read())
    os.stat(os.path.join(d, "out.md")); os.stat(os.path.join(d, "data.json"))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="project directory to build or reuse")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="orch-bench-status-"))
    if not (root / "orch.yaml").exists() or not (root / "data/work").exists():
        build(root, args.n)
    n = len(os.listdir(root / "data/work"))
    orch = [sys.executable, "-m", "orch"]
    rows = [
        ("orch status", best_of([*orch, "status"], root, args.repeat)),
        ("orch status work", best_of([*orch, "status", "work"], root, args.repeat)),
        ("orch plan work", best_of([*orch, "plan", "work"], root, args.repeat)),
        ("orch plan work --json", best_of([*orch, "plan", "work", "--json"], root, args.repeat)),
        ("floor: read manifests + stat outputs", best_of([sys.executable, "-c", FLOOR], root, args.repeat)),
    ]
    check = json.loads(
        subprocess.run(
            [*orch, "status", "--json"], cwd=root, check=True, capture_output=True, text=True
        ).stdout
    )
    print(f"{n} partitions ({check[0]['counts']['complete']} complete), best of {args.repeat}:")
    floor = rows[-1][1]
    for label, seconds in rows:
        print(
            f"  {label:<40} {seconds:6.3f} s  {seconds / n * 1e6:7.1f} µs/partition  "
            f"{seconds / floor:4.1f}x floor"
        )
    verdict = all(s < 1.0 for label, s in rows[:3])
    print(f"target (< 1 s at 10k for status and plan): {'met' if verdict else 'NOT met'}")


if __name__ == "__main__":
    main()
