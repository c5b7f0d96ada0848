"""Benchmark: `orch serve` — page times on a large project, and promoted-event → browser latency.

1. Pages: builds the project of bench/status.py with N partitions (or reuses
   --keep DIR), starts the real `orch serve --port 0` in a subprocess and times
   the first GET / (which computes the snapshot), then GET / (overview), /tree
   (a grid above 2,000 partitions) and /api/snapshot, best of --repeat after a
   warm-up. Target: overview under 0.5 s at 10,000.
2. Latency: a project of --live-n partitions (rehearsal agent) open on /tree in
   the system chromium; `orch stage run work --force` runs while a
   MutationObserver stamps when each chip turns complete (Date.now(), the same
   clock as the event's `ts`). Latency = browser stamp − `promoted` event ts.
   Target: median under 0.5 s.

    python bench/serve.py --n 10000 --keep /tmp/serve-bench
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

OBSERVER = """
window.seen = {};
new MutationObserver(records => {
  for (const r of records) {
    const el = r.target;
    const key = el.dataset.key;
    if (el.dataset.status === "complete" && !(key in window.seen)) window.seen[key] = Date.now();
  }
}).observe(document.body, {subtree: true, attributes: true, attributeFilter: ["data-status"]});
"""


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.pop("ORCH_PROJECT", None)
    out["PYTHONPATH"] = str(SRC)
    return out


def build(root: Path, n: int) -> None:
    """Build the project of bench/status.py (one stage `work`, run once with the rehearsal)."""
    spec = importlib.util.spec_from_file_location("bench_status", Path(__file__).parent / "status.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(root, n)


@contextmanager
def serving(root: Path) -> Iterator[str]:
    """Run `orch serve --port 0` on `root`; yield its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "orch", "serve", "--port", "0"],
        cwd=root,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    match = re.search(r"http://\S+/", process.stderr.readline())
    try:
        assert match, "orch serve printed no URL"
        yield match.group(0)
    finally:
        process.terminate()
        process.wait(timeout=10)


def fetch_s(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        size = len(response.read())
    return time.perf_counter() - started, size


def bench_pages(root: Path, repeat: int) -> None:
    with serving(root) as url:
        cold, _ = fetch_s(url)
        print(f"  GET / first request (start-up snapshot) {cold:6.3f} s; then from the shared snapshot:")
        for path in ("", "tree", "api/snapshot"):
            fetch_s(url + path)  # warm-up
            times = [fetch_s(url + path) for _ in range(repeat)]
            best, median = min(t for t, _ in times), statistics.median(t for t, _ in times)
            size_kb = times[0][1] / 1e3
            print(f"  GET /{path:<14} best {best:6.3f} s  median {median:6.3f} s  {size_kb:7.0f} KB")


def bench_latency(root: Path) -> list[float]:
    from playwright.sync_api import sync_playwright

    with serving(root) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url + "tree")
        page.evaluate(OBSERVER)
        # the chips start complete: mark them stale so the change is visible
        page.evaluate("document.querySelectorAll('.chip').forEach(e => e.dataset.status = 'old')")
        page.evaluate("window.seen = {}")
        time.sleep(0.5)
        runs_before = set(os.listdir(root / "wip" / "runs"))
        subprocess.run(
            [sys.executable, "-m", "orch", "stage", "run", "work", "--force"],
            cwd=root,
            env=env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        new_run = next(iter(set(os.listdir(root / "wip" / "runs")) - runs_before))
        promoted = {}
        for line in (root / "wip" / "runs" / new_run / "events.jsonl").read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "promoted":
                promoted[f"{event['stage']}/{event['partition']}"] = event["ts"]
        deadline = time.monotonic() + 30
        seen: dict[str, float] = {}
        while time.monotonic() < deadline and len(seen) < len(promoted):
            seen = page.evaluate("window.seen")
            time.sleep(0.2)
        browser.close()
    missing = len(promoted) - len(seen)
    if missing:
        print(f"  {missing} promoted partitions never changed colour in the browser")
    return [seen[k] / 1000.0 - ts for k, ts in promoted.items() if k in seen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--live-n", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="directory to build or reuse the projects in")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="orch-bench-serve-"))
    large, small = base / f"p{args.n}", base / f"live{args.live_n}"
    for root, n in ((large, args.n), (small, args.live_n)):
        if not (root / "data" / "work").exists():
            root.mkdir(parents=True, exist_ok=True)
            build(root, n)
    print(f"{args.n} partitions, pages served by `orch serve` (best of {args.repeat}):")
    bench_pages(large, args.repeat)
    latencies = bench_latency(small)
    if latencies:
        print(f"promoted event -> browser chip, {len(latencies)} partitions of a live run:")
        print(f"  median {statistics.median(latencies) * 1000:6.0f} ms   max {max(latencies) * 1000:6.0f} ms")


if __name__ == "__main__":
    main()
