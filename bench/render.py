#!/usr/bin/env python3
"""Benchmark: rendering every partition's prompt through orch, against plain jinja2.

For each N, a throwaway project gets N partition rows (references/functions.yaml)
and a realistic blueprint (about 100 lines: front matter, loops over questions,
keywords and sources, conditionals, filters, a `\\<NAME>` literal). Measured:

    load     in-process `load_project` + `Workspace(...).partitions.for_stage`:
             parse orch.yaml and the references, check ids and output directories
    orch     `Workspace.render(partition)` for every partition: the real code path
             of `orch blueprint render` and of every run (fresh workspace per repeat,
             so one blueprint parse + compile is included, as in a real command)
    jinja2   the peer: the same template written in Jinja2 syntax, compiled once
             by a bare `jinja2.Environment` with the same options and rendered with
             the same values (the rows over the vars, built without orch)
    plan     `sys.executable -m orch plan STAGE` end to end in a subprocess
             (first run, then best of the rest: big YAML references may be cached)
    floor    `sys.executable -c "import orch.cli"`: interpreter start-up + imports

Every orch prompt is checked to equal the jinja2 one, so both do the same work.

    python bench/render.py                        # n = 1000
    python bench/render.py --n 200,1000,5000 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

import jinja2  # noqa: E402
import yaml  # noqa: E402

from orch.config.project import load_project  # noqa: E402
from orch.config.workspace import Workspace  # noqa: E402

STAGE = "analysis"
VARS = {"INDUSTRY_ID": "new_energy_vehicles", "INDUSTRY_NAME": "New energy vehicles", "PERIOD": "2025-09"}

FRONT_MATTER = """\
---
description: Analyse one function item of the framework from its research
params:
  INDUSTRY_ID: industry slug
  INDUSTRY_NAME: industry name
  PERIOD: reference period, e.g. 2025-09
  FUNCTION_ID: function item id, e.g. 1.1_control_strategic_sectors
  FUNCTION_NAME: human-readable function name
  DIMENSION_ID: dimension the item belongs to
  FEATURE_ID: feature the item belongs to
  DEFINITION: one-sentence definition of the item
  QUESTIONS: guiding questions (list)
  KEYWORDS: search keywords (list)
  SOURCES: suggested sources (list of name, kind, url)
  EMPHASIS: high or normal
---
"""

BODY = """\
# Analysis: <FUNCTION_NAME> (<FUNCTION_ID>)

## Your role

You are an analyst specialised in industrial policy and in **<INDUSTRY_NAME>**.
You assess one function item of a framework that judges the industry as a
national strategic capability, as of <PERIOD>. Another analyst gathered the
evidence; you weigh it and give a score with a rationale a reviewer can check.

## The item

- Industry: <INDUSTRY_NAME> (`<INDUSTRY_ID>`), as of <PERIOD>
- Dimension: `<DIMENSION_ID>`
- Feature: `<FEATURE_ID>`
- Function: **<FUNCTION_NAME>** (`<FUNCTION_ID>`)
- Definition: <DEFINITION>

{% if EMPHASIS == "high" %}
> This item is marked **high emphasis**: the board reads it first. Be
> especially careful with the evidence and state every uncertainty.
{% else %}
> Standard emphasis: keep the analysis proportionate.
{% endif %}

## Guiding questions

{% for q in QUESTIONS %}
{{ loop.index }}. {{ q }}
{% endfor %}

Answer every question explicitly, even if the answer is "no evidence found".

## Keywords

{% if KEYWORDS %}
Search and cross-check with: {{ KEYWORDS | join(", ") }}.
{% else %}
No keywords were given: derive your own from the definition.
{% endif %}

## Suggested sources

{% for source in SOURCES %}
- {{ source.name }} ({{ source.kind | upper }}){% if source.url %}: <{{ source.url }}>{% endif %}

{% endfor %}
{% if SOURCES | length < 3 %}
Fewer than three sources were suggested: add at least two of your own.
{% endif %}

## Method

1. Read the research notes for <FUNCTION_ID> in full before writing.
2. Separate facts (with a source) from judgements (with a reason).
3. Compare the reference state with at least one other major producer.
4. Look for evidence against your first impression, and report it.
5. Score on the 1-5 scale below; half points are not allowed.
6. Give the three facts that weigh most in your score.
7. Name what would change your score, and in which direction.

## Scale

| Score | Meaning |
|-------|---------|
| 1 | The capability is absent or ineffective |
| 2 | Partial, with serious gaps |
| 3 | Adequate, with notable gaps |
| 4 | Strong, with minor gaps |
| 5 | World-leading and resilient |

## Output

Write two files in the current directory:

- `analysis.md` with the sections `## Assessment`, `## Evidence` and
  `## Score rationale`, at least 400 bytes;
- `score.json`: `{"function_id": "<FUNCTION_ID>", "score": N, "confidence": "low|medium|high"}`.

Name every file you cite by its path, and write \\<FILE_NAME> where a name is
still unknown. Do not write outside the current directory.

## Quality checklist

- [ ] Every guiding question answered ({{ QUESTIONS | length }} in all)
- [ ] Every claim has a source or a reason
- [ ] The score matches the rationale
- [ ] Uncertainties are stated
{% if EMPHASIS == "high" %}
- [ ] A second reading done, as the item is high emphasis
{% endif %}

## Context

The framework has several dimensions; this item belongs to `<DIMENSION_ID>`,
feature `<FEATURE_ID>`. Items of the same feature are analysed by colleagues:
mention overlaps only briefly, and never score another item.

Industry: <INDUSTRY_NAME>. Period: <PERIOD>. Item: <FUNCTION_ID>.
"""

_PLACEHOLDER = re.compile(r"(\\?)<([A-Z][A-Z0-9_]*)>")


def jinja_syntax(body: str) -> str:
    """The blueprint body in plain Jinja2 syntax (written here, not by orch)."""
    return _PLACEHOLDER.sub(
        lambda m: "{{ '<" + m.group(2) + ">' }}" if m.group(1) else "{{ " + m.group(2) + " }}", body
    )


def make_rows(n: int) -> list[dict[str, Any]]:
    """N varied partition rows: 3-5 questions, 0-4 keywords, 1-4 sources, some high emphasis."""
    rows = []
    for i in range(n):
        dim, feat, item = i % 4 + 1, i % 12 + 1, i + 1
        rows.append(
            {
                "FUNCTION_ID": f"{dim}.{item}_function_{item:05d}",
                "FUNCTION_NAME": f"Function number {item} of feature {feat}",
                "DIMENSION_ID": f"d{dim}_dimension",
                "FEATURE_ID": f"f{feat:02d}_feature",
                "DEFINITION": f"The state's ability to steer segment {item} of the value chain "
                "towards its strategic goals, measured against peers.",
                "QUESTIONS": [
                    f"Question {q} about function {item}: which instruments exist, and do they work?"
                    for q in range(1, 3 + i % 3 + 1)
                ],
                "KEYWORDS": [f"keyword-{item}-{k}" for k in range(i % 5)],
                "SOURCES": [
                    {
                        "name": f"Source {s} for {item}",
                        "kind": ("report", "law", "statistics")[s % 3],
                        "url": f"https://example.org/{item}/{s}" if s % 2 == 0 else "",
                    }
                    for s in range(1 + i % 4)
                ],
                "EMPHASIS": "high" if i % 10 == 0 else "normal",
            }
        )
    return rows


def build(root: Path, rows: list[dict[str, Any]]) -> None:
    """Write orch.yaml, agents/analyst.md and references/functions.yaml under `root`."""
    (root / "agents").mkdir(parents=True)
    (root / "references").mkdir()
    (root / "agents" / "analyst.md").write_text(FRONT_MATTER + BODY, encoding="utf-8")
    (root / "references" / "functions.yaml").write_text(
        yaml.safe_dump({"functions": rows}, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    config = {
        "vars": VARS,
        "agents": {"default": "offline", "offline": {"backend": "rehearsal"}},
        "stages": {
            STAGE: {
                "blueprint": "agents/analyst.md",
                "partitions": {"from": "references/functions.yaml", "path": "functions", "id": "FUNCTION_ID"},
                "output": "data/<INDUSTRY_ID>/analysis/<FUNCTION_ID>",
                "expect": [{"file": "analysis.md", "min_bytes": 400}, {"file": "score.json", "json": True}],
            }
        },
    }
    (root / "orch.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def best_of(repeat: int, run: Callable[[], Any]) -> tuple[float, Any]:
    """Best wall time (s) of `repeat` calls of `run`, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), result


def orch_load(root: Path) -> Workspace:
    """Load the project and its partitions, as every orch command does first."""
    ws = Workspace(load_project(root))
    ws.partitions.for_stage(STAGE)
    return ws


def orch_render(root: Path, repeat: int) -> tuple[list[float], float, list[str], list[str]]:
    """Return (load s per repeat, best render s, partition ids, prompts).

    Each repeat starts from a fresh workspace; the first load is cold.
    """
    load_times, render_times, ids, prompts = [], [], [], []
    for _ in range(repeat):
        started = time.perf_counter()
        ws = orch_load(root)
        loaded = time.perf_counter()
        partitions = ws.partitions.for_stage(STAGE)
        prompts = [ws.render(p) for p in partitions]
        render_times.append(time.perf_counter() - loaded)
        load_times.append(loaded - started)
        ids = [p.id for p in partitions]
    return load_times, min(render_times), ids, prompts


def jinja_render(rows: list[dict[str, Any]], repeat: int, order: list[str]) -> tuple[float, list[str]]:
    """The peer: compile once with a bare Environment, render every row over the vars, in `order`."""
    by_id = {row["FUNCTION_ID"]: row for row in rows}
    values = [{**VARS, **by_id[pid]} for pid in order]
    source = jinja_syntax(BODY)

    def run() -> list[str]:
        env = jinja2.Environment(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True
        )
        template = env.from_string(source)
        return [template.render(v) for v in values]

    return best_of(repeat, run)


def cli_times(argv: list[str], root: Path, repeat: int) -> tuple[float, float]:
    """(first, best of the rest) wall seconds of a subprocess, output discarded."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("ORCH_PROJECT", None)
    times = []
    for _ in range(max(repeat, 2)):
        started = time.perf_counter()
        subprocess.run(argv, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times[0], min(times[1:])


def measure(n: int, repeat: int) -> dict[str, float]:
    rows = make_rows(n)
    with tempfile.TemporaryDirectory(prefix="orch-bench-render-") as tmp:
        root = Path(tmp)
        build(root, rows)
        load_times, orch_s, ids, prompts = orch_render(root, repeat)
        jinja_s, expected = jinja_render(rows, repeat, ids)
        if prompts != expected:
            raise SystemExit("orch and jinja2 rendered different prompts: the comparison is void")
        leftover = {name for p in prompts for name in re.findall(r"<([A-Z][A-Z0-9_]*)>", p)} - {"FILE_NAME"}
        if leftover:
            raise SystemExit(f"placeholders left in the prompts: {sorted(leftover)}")
        shutil.rmtree(root / "wip", ignore_errors=True)  # whatever the loads cached: the first plan is cold
        plan_first, plan_best = cli_times([sys.executable, "-m", "orch", "plan", STAGE], root, repeat)
        _, floor_best = cli_times([sys.executable, "-c", "import orch.cli"], root, repeat)
        return {
            "n": n,
            "yaml_kb": (root / "references" / "functions.yaml").stat().st_size / 1024,
            "prompt_kb": sum(map(len, prompts)) / n / 1024,
            "load_first": load_times[0],
            "load_best": min(load_times[1:] or load_times),
            "orch": orch_s,
            "jinja": jinja_s,
            "plan_first": plan_first,
            "plan_best": plan_best,
            "floor": floor_best,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", default="1000", help="partition counts, comma-separated (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats; best is reported (default 3)")
    args = parser.parse_args()
    counts = [int(v) for v in args.n.split(",") if v.strip()]
    lines = len((FRONT_MATTER + BODY).splitlines())
    print(
        f"blueprint {lines} lines; best of {args.repeat}; "
        f"python {sys.version.split()[0]}, jinja2 {jinja2.__version__}"
    )
    header = (
        f"{'n':>6}  {'refs KB':>7}  {'load s (first/best)':>19}  {'orch s':>7}  {'µs/part':>7}  "
        f"{'jinja2 s':>8}  {'µs/part':>7}  {'ratio':>5}  {'plan CLI s (first/best)':>23}  {'floor s':>7}"
    )
    print(header)
    for n in counts:
        r = measure(n, args.repeat)
        print(
            f"{n:>6}  {r['yaml_kb']:>7.0f}  {r['load_first']:>9.3f} / {r['load_best']:<7.3f}  "
            f"{r['orch']:>7.3f}  {r['orch'] / n * 1e6:>7.1f}  "
            f"{r['jinja']:>8.3f}  {r['jinja'] / n * 1e6:>7.1f}  {r['orch'] / r['jinja']:>5.2f}  "
            f"{r['plan_first']:>11.3f} / {r['plan_best']:<9.3f}  {r['floor']:>7.3f}"
        )
    print(
        f"ratio = orch render / jinja2 render (prompts about {r['prompt_kb']:.1f} KB each); load is in "
        "neither render column; first = cold (nothing cached), best = best of the later repeats"
    )


if __name__ == "__main__":
    main()
