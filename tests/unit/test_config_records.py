"""Config records are frozen and picklable: every record a loaded project holds survives pickle equal.

A Dask worker receives an attempt's agent settings pickled, so a record that
cannot pickle (a `MappingProxyType` field did not) breaks the cluster executor.
Checked on this repository's orch.yaml and on a config that uses every kind of
agent, the executor, budgets, fan-in, needs and every expect rule.
"""

from __future__ import annotations

import dataclasses
import pickle
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from orch.config.executor import ExecutorConfig
from orch.config.frozen import FrozenDict
from orch.config.partitions import Partition, PartitionIndex
from orch.config.project import AgentConfig, Project, load_project
from orch.config.stages import ExpectRule, FanIn, PartitionSource, Stage

REPO_ROOT = Path(__file__).resolve().parents[2]

RICH_CONFIG = """\
vars: {INDUSTRY: ev, PERIOD: 2025-09}
max_parallel: 6
max_cost_usd: 12.5
executor: {kind: dask, scheduler: "tcp://127.0.0.1:8786", latency_wait: 5s, connect_timeout: 10s}
agents:
  default: offline
  offline: {backend: rehearsal, delay: 0.01}
  claude: {backend: command, preset: claude, max_concurrency: 8, requests_per_minute: 30}
  script:
    backend: command
    command: [python3, -c, "print('hi')"]
    prompt_via: file
    env: {ORCH_X: "1"}
    kill_grace: 2s
    resources: {GPU: 1}
    run_on_cluster: true
  chat:
    backend: openai
    model: gpt-4o-mini
    base_url: http://127.0.0.1:9/v1
    api_key_env: null
    reply_file: findings.md
    options: {temperature: 0.2, max_tokens: 400, extra_headers: {X-Team: research}}
    stream: true
    request_timeout: 2m
    price_per_1k_input_usd: 0.00015
    price_per_1k_output_usd: 0.0006
    max_concurrency: 4
  writer: {backend: openai, model: m, base_url: http://127.0.0.1:9/v1, mode: tools, max_turns: 5}
stages:
  research:
    blueprint: agents/a.md
    partitions: {from: references/items.yaml, path: items, id: ITEM_ID}
    output: data/<INDUSTRY>/research/<ITEM_ID>
    agent: chat
    expect:
      - findings.md
      - {file: sources.json, schema: references/s.schema.json}
      - {glob: "notes/*.md", min: 2, non_empty: true, min_bytes: 10, headings: ["## A"]}
    max_parallel: 3
    retries: 1
    retry_on: [timeout, http_429, 3]
    backoff: {base: 1s, cap: 30s}
    timeout: 20m
    max_cost_usd: 4
    vars: {DEPTH: deep}
  review:
    blueprint: agents/a.md
    partitions: {from: references/items.yaml, path: items, id: ITEM_ID}
    needs: [research]
    output: data/<INDUSTRY>/review/<ITEM_ID>
    agent: writer
    timeout: none
  synthesis:
    blueprint: agents/a.md
    fan_in: {from: review, by: GROUP}
    output: data/<INDUSTRY>/synthesis/<GROUP>
    agent: claude
"""

ITEMS = """\
items:
  - {ITEM_ID: "1.1", GROUP: g1, priority: 2, title: One}
  - {ITEM_ID: "1.2", GROUP: g1, title: Two}
  - {ITEM_ID: "2.1", GROUP: g2, title: Three, tags: [a, b], meta: {k: v}}
"""


def rich_project(root: Path) -> Project:
    files = {
        "orch.yaml": RICH_CONFIG,
        "agents/a.md": "Write <ITEM_ID>.\n",
        "references/items.yaml": ITEMS,
        "references/s.schema.json": "{}\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text), encoding="utf-8")
    return load_project(root)


def records(value: Any) -> Iterator[Any]:
    """Yield every dataclass record reachable from `value` (through mappings, tuples, fields)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        yield value
        for f in dataclasses.fields(value):
            yield from records(getattr(value, f.name))
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from records(item)
    elif isinstance(value, tuple | list):
        for item in value:
            yield from records(item)


def all_records(project: Project) -> list[Any]:
    index = PartitionIndex(project)
    partitions = [p for name in project.stages for p in index.for_stage(name)]
    return [*records(project), *partitions]


@pytest.fixture(params=["this repository", "every kind of config"])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Project:
    if request.param == "this repository":
        return load_project(REPO_ROOT)
    return rich_project(tmp_path)


def test_the_configs_hold_every_kind_of_record(project: Project) -> None:
    kinds = {type(r) for r in all_records(project)}
    assert {Project, AgentConfig, Stage, ExpectRule, PartitionSource, Partition} <= kinds


def test_the_rich_config_holds_the_rarer_records(tmp_path: Path) -> None:
    project = rich_project(tmp_path)
    kinds = {type(r) for r in all_records(project)}
    assert {ExecutorConfig, FanIn} <= kinds
    assert {a.backend for a in project.agents.values()} == {"rehearsal", "command", "openai"}


def test_every_record_pickles_and_round_trips_equal(project: Project) -> None:
    for record in all_records(project):
        copy = pickle.loads(pickle.dumps(record))
        assert type(copy) is type(record)
        assert copy == record, type(record).__name__


def test_a_whole_project_pickles_in_one_piece(project: Project) -> None:
    assert pickle.loads(pickle.dumps(project)) == project


def test_every_record_is_frozen(project: Project) -> None:
    for record in all_records(project):
        name = dataclasses.fields(record)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, name, getattr(record, name))


def test_every_mapping_field_is_read_only(project: Project) -> None:
    seen = 0
    for record in all_records(project):
        for f in dataclasses.fields(record):
            value = getattr(record, f.name)
            if isinstance(value, Mapping):
                seen += 1
                with pytest.raises(TypeError):  # FrozenDict, or a Mapping without __setitem__
                    value["new"] = 1  # type: ignore[index]
                assert "new" not in value, (type(record).__name__, f.name)
    assert seen > 0


def test_a_frozen_dict_refuses_every_change_and_stays_a_dict() -> None:
    frozen = FrozenDict({"a": 1})
    changes = [
        lambda: frozen.__setitem__("b", 2),
        lambda: frozen.__delitem__("a"),
        lambda: frozen.update(b=2),
        lambda: frozen.setdefault("b", 2),
        lambda: frozen.pop("a"),
        lambda: frozen.popitem(),
        lambda: frozen.clear(),
        lambda: frozen.__ior__({"b": 2}),
    ]
    for change in changes:
        with pytest.raises(TypeError, match="FrozenDict is read-only"):
            change()
    assert frozen == {"a": 1}
    assert pickle.loads(pickle.dumps(frozen)) == {"a": 1}
    assert type(pickle.loads(pickle.dumps(frozen))) is FrozenDict
    assert frozen | {"b": 2} == {"a": 1, "b": 2}
