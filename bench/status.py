"""Benchmark: `orch status` and `orch plan` on a generated project of N partitions.

Targets: each under 1 s at 10,000 partitions (issue "Barriers, resume and
staleness"); within 2 s and 300 MB peak RSS at 100,000 (issue 12, item 8), on
the 2-core development machine. The peer, side by side, is the
floor any tool pays to look at the same disk state: a bare Python loop that
reads every manifest and stats every expected output (no rendering, no
fingerprints), plus the interpreter start-up with orch imported.

    python bench/status.py --n 10000            # builds the project once, in a temp dir
    python bench/status.py --n 10000 --keep DIR # reuse/keep the project in DIR
    python bench/status.py --n 10000,100000 --keep DIR  # one project per N: DIR/n10000, ...

The project is populated by `orch stage run` on the offline rehearsal agent
(minutes at 10k: file creation on this disk is slow); timings are best of
--repeat runs of the real CLI in a subprocess; peak RSS is the largest of those
runs (os.wait4's rusage of that child, not of the bench).
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


def best_of(argv: list[str], cwd: Path, repeat: int) -> tuple[float, float]:
    """Best wall time (s) and largest peak RSS (MB) of `repeat` runs of argv."""
    times, peaks = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        child = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        times.append(time.perf_counter() - started)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {child.returncode}")
        peaks.append(usage.ru_maxrss / 1024)  # KiB on Linux
    return min(times), max(peaks)


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


def measure(root: Path, repeat: int) -> None:
    """Time status and plan on the project in `root`; print a table and the verdicts."""
    n = len(os.listdir(root / "data/work"))
    orch = [sys.executable, "-m", "orch"]
    rows = [
        ("orch status", best_of([*orch, "status"], root, repeat)),
        ("orch status --json", best_of([*orch, "status", "--json"], root, repeat)),
        ("orch status work", best_of([*orch, "status", "work"], root, repeat)),
        ("orch plan work", best_of([*orch, "plan", "work"], root, repeat)),
        ("orch plan work --json", best_of([*orch, "plan", "work", "--json"], root, repeat)),
        ("floor: read manifests + stat outputs", best_of([sys.executable, "-c", FLOOR], root, repeat)),
    ]
    check = json.loads(
        subprocess.run(
            [*orch, "status", "--json"], cwd=root, check=True, capture_output=True, text=True
        ).stdout
    )
    print(f"{n} partitions ({check[0]['counts']['complete']} complete), best of {repeat}:")
    floor = rows[-1][1][0]
    for label, (seconds, rss_mb) in rows:
        print(
            f"  {label:<40} {seconds:6.3f} s  {seconds / n * 1e6:7.1f} µs/partition  "
            f"{seconds / floor:4.1f}x floor  {rss_mb:6.0f} MB peak RSS"
        )
    orch_rows = rows[:-1]
    if n <= 10_000:
        met = all(s < 1.0 for _, (s, _) in orch_rows)
        print(f"target (< 1 s at 10k for status and plan): {'met' if met else 'NOT met'}")
    if n >= 100_000:
        met = all(s <= 2.0 and mb <= 300 for _, (s, mb) in orch_rows)
        print(f"target (<= 2 s and <= 300 MB at 100k for status and plan): {'met' if met else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="10000", help="comma-separated partition counts, e.g. 10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="project directory to build or reuse")
    args = parser.parse_args()
    counts = [int(x) for x in args.n.split(",") if x.strip()]
    for n in counts:
        if args.keep is None:
            root = Path(tempfile.mkdtemp(prefix="orch-bench-status-"))
        else:
            root = args.keep if len(counts) == 1 else args.keep / f"n{n}"
        if not (root / "orch.yaml").exists() or not (root / "data/work").exists():
            build(root, n)
        measure(root, args.repeat)


if __name__ == "__main__":
    main()
