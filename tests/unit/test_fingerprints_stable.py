"""Fingerprints of this repository's pipeline stay byte-identical (issue 12: "Manifest
version and fingerprints, byte for byte").

A rehearsal `orch run` of the repository's orch.yaml, blueprints and references in
tmp_path, then `orch plan --json`: every partition's fingerprint must equal the
golden file recorded from the code before the scale work. If you change orch.yaml,
agents/ or references/ on purpose, re-record it:

    PYTHONPATH=src python3 tests/unit/test_fingerprints_stable.py --record
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
GOLDEN = Path(__file__).with_name("fingerprints_golden.json")
PIPELINE = ("orch.yaml", "agents", "references")


def pipeline_fingerprints(root: Path) -> dict[str, str]:
    """Copy the pipeline into `root`, run it with the rehearsal agent; return `stage/id -> fingerprint`."""
    for name in PIPELINE:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name)
        else:
            shutil.copy2(source, root / name)
    env = {k: v for k, v in os.environ.items() if k not in ("ORCH_PROJECT", "ORCH_AGENT")}
    env["PYTHONPATH"] = str(REPO / "src")
    orch = [sys.executable, "-m", "orch"]
    subprocess.run([*orch, "run"], cwd=root, env=env, check=True, capture_output=True, timeout=120)
    plan = subprocess.run(
        [*orch, "plan", "--json"], cwd=root, env=env, check=True, capture_output=True, timeout=120
    )
    return {
        f"{stage['stage']}/{p['id']}": p["fingerprint"]
        for stage in json.loads(plan.stdout)
        for p in stage["partitions"]
    }


def test_pipeline_fingerprints_match_golden(tmp_path: Path) -> None:
    golden = json.loads(GOLDEN.read_text())
    now = pipeline_fingerprints(tmp_path)
    assert len(now) == 135
    changed = sorted(k for k in golden if now.get(k) != golden[k])
    assert not changed, f"{len(changed)} fingerprints changed, first: {changed[:3]}"
    assert sorted(now) == sorted(golden)


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        fingerprints = pipeline_fingerprints(Path(scratch))
    GOLDEN.write_text(json.dumps(fingerprints, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(fingerprints)} fingerprints in {GOLDEN}")
