"""`orch init`: write a minimal project that runs at once on the rehearsal agent.

The templates are strings here (no package data to forget in a wheel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from orch.errors import UsageError

ORCH_YAML = """\
# orch project: one stage, one partition per topic in references/topics.yaml.
#
#   orch plan            what a run would do for each partition, and why
#   orch run             run it (the default agent is a rehearsal: no model, no cost)
#   orch status          counts per status
#   orch show summaries intro     everything about one partition
#
# The default agent `offline` writes labelled placeholders that pass every
# expect rule, so the pipeline runs anywhere. For a real agent, uncomment one
# below and set `default:` to it (or run with `--agent claude`).

vars:
  PROJECT_NAME: My project

agents:
  default: offline
  offline: {backend: rehearsal}
  # claude:                       # Claude Code, headless (needs `claude` on PATH)
  #   backend: command
  #   preset: claude
  #   max_concurrency: 4
  # gpt:                          # any OpenAI-compatible endpoint
  #   backend: openai
  #   model: gpt-4o-mini
  #   api_key_env: OPENAI_API_KEY
  #   mode: tools

stages:
  summaries:
    blueprint: agents/summarize.md
    partitions: {from: references/topics.yaml, path: topics, id: TOPIC_ID}
    output: data/summaries/<TOPIC_ID>
    expect:
      - {file: summary.md, min_bytes: 200, headings: ["## Summary", "## Open questions"]}
    max_parallel: 4
    retries: 1
    timeout: 10m
"""

BLUEPRINT = """\
---
description: Summarize one topic of the project.
params:
  TOPIC_ID: the topic's id (its directory name under data/summaries/)
  TOPIC_TITLE: the topic's title
  PROJECT_NAME: the project's name (from vars in orch.yaml)
---
# Summarize: <TOPIC_TITLE> (<TOPIC_ID>)

You are working on <PROJECT_NAME>. Write `summary.md` in the current directory,
at least 200 bytes, with these sections:

## Summary
What is known about <TOPIC_TITLE>, in a few paragraphs.

## Open questions
What still needs an answer.
"""

TOPICS = """\
# One partition per entry: TOPIC_ID names the partition, every field is a param.
topics:
  - TOPIC_ID: intro
    TOPIC_TITLE: Introduction
  - TOPIC_ID: methods
    TOPIC_TITLE: Methods
  - TOPIC_ID: results
    TOPIC_TITLE: Results
"""

GITIGNORE = """\
# orch outputs and run records (see README: "Clean up")
data/
wip/
"""

#: Relative path -> content, in the order they are written.
FILES: dict[str, str] = {
    "orch.yaml": ORCH_YAML,
    "agents/summarize.md": BLUEPRINT,
    "references/topics.yaml": TOPICS,
    ".gitignore": GITIGNORE,
}
DIRS = ("data", "wip")


@dataclass
class InitReport:
    """What `orch init` did: files written, files kept as they were."""

    root: Path
    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def init_project(root: Path) -> InitReport:
    """Write a minimal project into `root` (created if missing).

    Writes orch.yaml, agents/summarize.md, references/topics.yaml, .gitignore
    and the empty data/ and wip/ directories. Other existing files are kept
    untouched and listed in `kept`.

    Raises:
        UsageError: `root/orch.yaml` already exists, or `root` is not a
            directory that can be written.
    """
    if (root / "orch.yaml").exists():
        raise UsageError(
            f"{root / 'orch.yaml'}: already exists; orch init never overwrites a project",
            "run orch init in an empty directory, e.g. orch init my-project",
        )
    report = InitReport(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for rel, text in FILES.items():
            path = root / rel
            if path.exists():
                report.kept.append(rel)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            report.written.append(rel)
        for name in DIRS:
            (root / name).mkdir(exist_ok=True)
    except OSError as err:
        raise UsageError(
            f"{root}: cannot write the project: {err.strerror or err}",
            "choose a directory you can write to",
        ) from err
    return report
