"""orch.yaml: durations, validation errors (exact text, file:line, key path), stage order, root finding."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from orch.config.node import CONFIG_NAME, parse_duration
from orch.config.project import Project, find_root, load_project
from orch.config.stages import ExpectRule, FanIn, PartitionSource
from orch.errors import ConfigError

# Line 1 is `stages:`; a stage's own keys start on line 6 (see `with_stage_keys`).
ONE_STAGE = """\
stages:
  work:
    blueprint: agents/work.md
    partitions: {from: references/items.yaml, path: items, id: ITEM_ID}
    output: data/<ITEM_ID>
"""


def load(tmp_path: Path, text: str) -> Project:
    (tmp_path / CONFIG_NAME).write_text(textwrap.dedent(text), encoding="utf-8")
    return load_project(tmp_path)


def load_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value


def with_stage_keys(extra: str) -> str:
    """ONE_STAGE plus `extra` (dedented YAML) under stages.work, starting on line 6."""
    return ONE_STAGE + textwrap.indent(textwrap.dedent(extra), "    ")


# -- durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20m", 1200.0),
        ("1h30m", 5400.0),
        ("90s", 90.0),
        ("2.5s", 2.5),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("1h 30m", 5400.0),
        ("1h2m3s", 3723.0),
        (" 20m ", 1200.0),
        ("0s", 0.0),
        (45, 45.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration_accepts_units_and_plain_seconds(text, seconds):
    assert parse_duration(text, "orch.yaml:3: stages.w.timeout") == seconds


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("", "''"),
        ("   ", "'   '"),
        ("20", "'20'"),
        ("m", "'m'"),
        ("20x", "'20x'"),
        ("1d", "'1d'"),
        ("1h30", "'1h30'"),
        ("30m1h", "'30m1h'"),
        ("-5s", "'-5s'"),
        ("1.5.2s", "'1.5.2s'"),
        ("20 minutes", "'20 minutes'"),
        (-1, "-1"),
        (True, "True"),
        (None, "None"),
        ([], "[]"),
    ],
)
def test_parse_duration_rejects_with_location_and_example(value, shown):
    with pytest.raises(ConfigError) as info:
        parse_duration(value, "orch.yaml:3: stages.w.timeout")
    assert info.value.message == (
        f"orch.yaml:3: stages.w.timeout: expected a duration like 20m, 90s or 1h30m, got {shown}"
    )


def test_stage_durations_are_loaded_in_seconds(tmp_path):
    project = load(tmp_path, with_stage_keys("timeout: 1h30m\nbackoff: {base: 2.5s, cap: 90s}\n"))
    stage = project.stage("work")
    assert (stage.timeout_s, stage.backoff_base_s, stage.backoff_cap_s) == (5400.0, 2.5, 90.0)


@pytest.mark.parametrize("value", ["none", "None", "null"])
def test_timeout_none_switches_the_default_time_limit_off(tmp_path, value):
    project = load(tmp_path, with_stage_keys(f"timeout: {value}\n"))
    assert project.stage("work").timeout_s is None


def test_bad_timeout_in_config_names_line_and_key(tmp_path):
    error = load_error(tmp_path, with_stage_keys("timeout: 20 minutes\n"))
    assert error.message == (
        "orch.yaml:6: stages.work.timeout: expected a duration like 20m, 90s or 1h30m, got '20 minutes'"
    )


# -- a valid config ----------------------------------------------------------------------


def test_minimal_stage_gets_documented_defaults(tmp_path):
    project = load(tmp_path, ONE_STAGE)
    stage = project.stage("work")
    assert stage.partitions == PartitionSource("references/items.yaml", "items", "ITEM_ID")
    assert (stage.fan_in, stage.needs, stage.expect, stage.agent) == (None, (), (), None)
    assert (stage.retries, stage.retry_on, stage.timeout_s, stage.max_parallel) == (2, None, 3600.0, None)
    assert (stage.backoff_base_s, stage.backoff_cap_s) == (2.0, 60.0)
    assert project.default_agent == "offline"
    assert project.agent(None).backend == "rehearsal"


def test_vars_merge_is_available_per_stage(tmp_path):
    project = load(tmp_path, "vars: {INDUSTRY_ID: ev, PERIOD: 2025-09}\n" + with_stage_keys("vars: {X: 1}\n"))
    assert dict(project.vars) == {"INDUSTRY_ID": "ev", "PERIOD": "2025-09"}
    assert dict(project.stage("work").vars) == {"X": 1}


def test_expect_rules_load_with_schema_implying_json(tmp_path):
    project = load(
        tmp_path,
        with_stage_keys(
            """\
            expect:
              - findings.md
              - {file: sources.json, schema: references/s.json}
              - {glob: "notes/*.md", min: 3, non_empty: true, headings: ["## A"]}
            """
        ),
    )
    assert project.stage("work").expect == (
        ExpectRule(file="findings.md"),
        ExpectRule(file="sources.json", json=True, schema="references/s.json"),
        ExpectRule(glob="notes/*.md", min_count=3, non_empty=True, headings=("## A",)),
    )


def test_retry_on_accepts_classes_and_exit_codes(tmp_path):
    project = load(tmp_path, with_stage_keys("retry_on: [timeout, 3, http_429]\n"))
    assert project.stage("work").retry_on == frozenset({"timeout", 3, "http_429"})


# -- unknown keys and names, with suggestions ------------------------------------------------


def test_typo_in_stage_key_names_line_path_and_suggestion(tmp_path):
    error = load_error(tmp_path, ONE_STAGE.replace("    blueprint:", "    blueprnt:"))
    assert (
        error.message
        == "orch.yaml:3: stages.work.blueprnt: unknown key 'blueprnt'; did you mean 'blueprint'?"
    )
    assert error.hint == (
        "valid keys here: agent, backoff, blueprint, description, expect, fan_in, max_cost_usd, "
        "max_parallel, needs, output, partitions, retries, retry_on, timeout, vars"
    )


def test_typo_in_top_level_key(tmp_path):
    error = load_error(tmp_path, "vars: {A: 1}\nstage: {x: 1}\n")
    assert error.message == "orch.yaml:2: stage: unknown key 'stage'; did you mean 'stages'?"


def test_typo_in_key_holding_a_block_mapping_names_the_key_line(tmp_path):
    error = load_error(tmp_path, "vars: {A: 1}\nstage:\n  x: 1\n")
    assert error.message == "orch.yaml:2: stage: unknown key 'stage'; did you mean 'stages'?"
    assert load(tmp_path, ONE_STAGE).stage("work").line == 2


def test_typo_in_nested_keys(tmp_path):
    partitions = load_error(tmp_path, ONE_STAGE.replace("path: items", "pth: items"))
    assert (
        partitions.message
        == "orch.yaml:4: stages.work.partitions.pth: unknown key 'pth'; did you mean 'path'?"
    )
    backoff = load_error(tmp_path, with_stage_keys("backoff: {base: 1s, cpa: 2s}\n"))
    assert backoff.message == "orch.yaml:6: stages.work.backoff.cpa: unknown key 'cpa'; did you mean 'cap'?"


def test_unknown_key_far_from_any_valid_one_gets_no_suggestion(tmp_path):
    error = load_error(tmp_path, with_stage_keys("zzz: 1\n"))
    assert error.message == "orch.yaml:6: stages.work.zzz: unknown key 'zzz'"


def test_unknown_agent_on_stage_suggests_nearest(tmp_path):
    agents = (
        "agents:\n  default: offline\n  offline: {backend: rehearsal}\n"
        "  claude: {backend: command, command: [x]}\n"
    )
    error = load_error(tmp_path, agents + with_stage_keys("agent: claud\n"))
    assert error.message == "orch.yaml:10: stages.work.agent: unknown agent 'claud'; did you mean 'claude'?"
    assert error.hint == "agents defined: offline, claude"


def test_unknown_default_agent_suggests_nearest(tmp_path):
    error = load_error(tmp_path, "agents:\n  default: ofline\n  offline: {backend: rehearsal}\n" + ONE_STAGE)
    assert error.message == "orch.yaml:2: agents.default: unknown agent 'ofline'; did you mean 'offline'?"


def test_project_stage_and_agent_lookups_suggest_nearest(tmp_path):
    project = load(tmp_path, ONE_STAGE)
    with pytest.raises(ConfigError) as stage:
        project.stage("wrk")
    assert (stage.value.message, stage.value.hint) == (
        "unknown stage 'wrk'; did you mean 'work'?",
        "stages in orch.yaml: work",
    )
    with pytest.raises(ConfigError) as agent:
        project.agent("ofline")
    assert agent.value.message == "unknown agent 'ofline'; did you mean 'offline'?"


def test_unknown_upstream_stage_in_needs_and_fan_in(tmp_path):
    research = (
        "  research:\n    blueprint: a.md\n    partitions: {from: r.yaml, id: ID}\n    output: data/r/<ID>\n"
    )
    needs = load_error(
        tmp_path,
        "stages:\n  a:\n    blueprint: a.md\n    partitions: {from: r.yaml, id: ID}\n"
        "    needs: [reserch]\n    output: data/a/<ID>\n" + research,
    )
    assert needs.message == "orch.yaml:5: stages.a.needs: unknown stage 'reserch'; did you mean 'research'?"
    fan_in = load_error(
        tmp_path,
        "stages:\n  a:\n    blueprint: a.md\n    fan_in: {from: reserch, by: X}\n    output: data/a/<X>\n"
        + research,
    )
    assert fan_in.message == "orch.yaml:4: stages.a.fan_in: unknown stage 'reserch'; did you mean 'research'?"


# -- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("retries: -1\n", "orch.yaml:6: stages.work.retries: expected an integer ≥ 0, got -1"),
        ("max_parallel: 0\n", "orch.yaml:6: stages.work.max_parallel: expected an integer ≥ 1, got 0"),
        ("max_parallel: true\n", "orch.yaml:6: stages.work.max_parallel: expected an integer ≥ 1, got True"),
        ("max_cost_usd: 0\n", "orch.yaml:6: stages.work.max_cost_usd: expected a number > 0, got 0"),
        ("needs: [1]\n", "orch.yaml:6: stages.work.needs: expected a list of strings, got the list [1]"),
    ],
)
def test_bad_values_name_line_key_and_expectation(tmp_path, extra, message):
    assert load_error(tmp_path, with_stage_keys(extra)).message == message


def test_missing_required_key(tmp_path):
    error = load_error(tmp_path, "stages:\n  work: {partitions: {from: r.yaml, id: ID}, output: data/<ID>}\n")
    assert error.message == "orch.yaml:2: stages.work: missing required key 'blueprint'"


def test_stage_without_partitions_or_fan_in(tmp_path):
    error = load_error(tmp_path, "stages:\n  work: {blueprint: a.md, output: data/x}\n")
    assert error.message == (
        "orch.yaml:2: stages.work: a stage needs 'partitions' (fan-out over a references file) "
        "or 'fan_in' (one partition per group of an upstream stage)"
    )


def test_absolute_output_template_is_rejected_at_load(tmp_path):
    error = load_error(tmp_path, ONE_STAGE.replace("data/<ITEM_ID>", "/srv/out/<ITEM_ID>"))
    assert error.message == (
        "orch.yaml:5: stages.work.output: expected a path relative to the project root, "
        "got '/srv/out/<ITEM_ID>'"
    )


def test_lowercase_variable_name_is_rejected_with_rename_hint(tmp_path):
    error = load_error(tmp_path, "vars: {industry: x}\n" + ONE_STAGE)
    assert error.message == "orch.yaml:1: vars.industry: variable name 'industry' must match [A-Z][A-Z0-9_]*"
    assert error.hint == "rename it, e.g. 'INDUSTRY', and use it as <INDUSTRY> in blueprints"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "orch.yaml: no stages defined"),
        ("vars: {A: 1}\n", "orch.yaml: no stages defined"),
        ("- a\n", "orch.yaml:1: expected a mapping, got the list ['a']"),
        (
            "stages:\n  a:\n    blueprint: a.md\n    blueprint: b.md\n",
            "orch.yaml:4: invalid YAML: duplicate key 'blueprint'",
        ),
        ("stages:\n\twork: 1\n", "orch.yaml:2: invalid YAML: found character that cannot start any token"),
    ],
)
def test_empty_or_malformed_config(tmp_path, text, message):
    assert load_error(tmp_path, text).message == message


def test_fan_in_group_rows_must_use_the_by_field_as_id(tmp_path):
    error = load_error(
        tmp_path,
        """\
        stages:
          f:
            blueprint: a.md
            partitions: {from: r.yaml, id: FID}
            output: data/f/<FID>
          feat:
            blueprint: a.md
            fan_in: {from: f, by: FEAT}
            partitions: {from: g.yaml, id: NAME}
            output: data/feat/<FEAT>
        """,
    )
    assert error.message == (
        "orch.yaml:9: stages.feat.partitions.id: a fan-in stage's partitions list its groups, "
        "so 'id' must be the fan_in 'by' field ('FEAT'), got 'NAME'"
    )


# -- retry_on ----------------------------------------------------------------------------------


def test_retry_on_typo_suggests_class(tmp_path):
    error = load_error(tmp_path, with_stage_keys("retry_on: [timeout, chekcs]\n"))
    assert (
        error.message
        == "orch.yaml:6: stages.work.retry_on[1]: unknown retry class 'chekcs'; did you mean 'checks'?"
    )
    assert error.hint == (
        "use timeout, checks, agent_error, http_429, http_5xx, request_error, worker_lost "
        "or an exit code such as 1"
    )


def test_retry_on_must_be_a_list(tmp_path):
    error = load_error(tmp_path, with_stage_keys("retry_on: timeout\n"))
    assert error.message == (
        "orch.yaml:6: stages.work.retry_on: expected a list of timeout, checks, agent_error, "
        "http_429, http_5xx, request_error, worker_lost or exit codes, got 'timeout'"
    )


def test_retry_on_rejects_booleans(tmp_path):
    error = load_error(tmp_path, with_stage_keys("retry_on: [true]\n"))
    assert error.message == "orch.yaml:6: stages.work.retry_on[0]: unknown retry class True"


# -- expect rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "{file: a.md, glob: '*.md'}",
            "orch.yaml:7: stages.work.expect[0]: a rule needs exactly one of 'file' or 'glob'",
        ),
        (
            "{min_bytes: 3}",
            "orch.yaml:7: stages.work.expect[0]: a rule needs exactly one of 'file' or 'glob'",
        ),
        (
            "{file: a.md, min: 2}",
            "orch.yaml:7: stages.work.expect[0].min: 'min' applies only to a 'glob' rule",
        ),
        ("{glob: '*.md', min: 0}", "orch.yaml:7: stages.work.expect[0].min: expected an integer ≥ 1, got 0"),
        (
            "{file: a.md, min_byte: 3}",
            "orch.yaml:7: stages.work.expect[0].min_byte: unknown key 'min_byte'; did you mean 'min_bytes'?",
        ),
    ],
)
def test_expect_rule_shape_errors(tmp_path, rule, message):
    assert load_error(tmp_path, with_stage_keys(f"expect:\n  - {rule}\n")).message == message


@pytest.mark.parametrize(
    ("rule", "key", "shown"),
    [
        ("{file: ../a.md}", ".file", "'../a.md'"),
        ("{glob: 'x/../../*.md'}", ".glob", "'x/../../*.md'"),
        ("{file: /etc/passwd}", ".file", "'/etc/passwd'"),
        ("../x.md", "", "'../x.md'"),
        (".orch/manifest.json", "", "'.orch/manifest.json'"),
    ],
)
def test_expect_paths_must_stay_in_the_partition_directory(tmp_path, rule, key, shown):
    error = load_error(tmp_path, with_stage_keys(f"expect:\n  - {rule}\n"))
    assert error.message == (
        f"orch.yaml:7: stages.work.expect[0]{key}: expected a path inside the partition directory "
        f"(relative, no '..', not .orch/), got {shown}"
    )


def test_expect_must_be_a_list(tmp_path):
    error = load_error(tmp_path, with_stage_keys("expect: {file: a.md}\n"))
    assert error.message == (
        "orch.yaml:6: stages.work.expect: expected a list of rules like {file: findings.md, min_bytes: 400}, "
        "got a mapping"
    )


# -- the stage graph ---------------------------------------------------------------------------


def test_cycle_between_two_stages_is_named(tmp_path):
    error = load_error(
        tmp_path,
        """\
        stages:
          a: {blueprint: a.md, partitions: {from: r.yaml, id: ID}, needs: [b], output: "data/a/<ID>"}
          b: {blueprint: b.md, partitions: {from: r.yaml, id: ID}, needs: [a], output: "data/b/<ID>"}
        """,
    )
    assert error.message == "orch.yaml:2: stages form a cycle: a -> b -> a"
    assert error.hint == "a stage may only read from stages that do not read from it"


def test_cycle_through_fan_ins_lists_every_stage(tmp_path):
    error = load_error(
        tmp_path,
        """\
        stages:
          a: {blueprint: a.md, fan_in: {from: c}, output: data/a}
          b: {blueprint: b.md, fan_in: {from: a}, output: data/b}
          c: {blueprint: c.md, fan_in: {from: b}, output: data/c}
        """,
    )
    assert error.message == "orch.yaml:2: stages form a cycle: a -> c -> b -> a"


def test_stage_reading_itself(tmp_path):
    error = load_error(
        tmp_path,
        "stages:\n"
        '  work: {blueprint: a.md, partitions: {from: r.yaml, id: ID}, needs: [work], output: "d/<ID>"}\n',
    )
    assert error.message == "orch.yaml:2: stages.work: stage 'work' reads from itself"


def test_stages_are_ordered_upstream_first(tmp_path):
    project = load(
        tmp_path,
        """\
        stages:
          summary: {blueprint: s.md, fan_in: {from: analysis, by: GROUP}, output: data/s/<GROUP>}
          analysis:
            blueprint: a.md
            partitions: {from: r.yaml, id: ID}
            needs: [research]
            output: data/a/<ID>
          research: {blueprint: r.md, partitions: {from: r.yaml, id: ID}, output: data/r/<ID>}
        """,
    )
    assert list(project.stages) == ["research", "analysis", "summary"]
    assert project.stage("summary").fan_in == FanIn("analysis", "GROUP")
    assert project.stage("summary").upstream == ("analysis",)
    assert project.stage("analysis").upstream == ("research",)


# -- finding the root --------------------------------------------------------------------------


def test_find_root_walks_up_from_a_subdirectory(tmp_path, monkeypatch):
    monkeypatch.delenv("ORCH_PROJECT", raising=False)
    (tmp_path / CONFIG_NAME).write_text(ONE_STAGE)
    deep = tmp_path / "data" / "a" / "b"
    deep.mkdir(parents=True)
    assert find_root(deep) == tmp_path.resolve()


def test_find_root_prefers_explicit_then_environment(tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    for root in (one, two):
        root.mkdir()
        (root / CONFIG_NAME).write_text(ONE_STAGE)
    monkeypatch.setenv("ORCH_PROJECT", str(two))
    assert find_root(one) == two.resolve()
    assert find_root(two, explicit=one) == one.resolve()


def test_find_root_without_a_project(tmp_path, monkeypatch):
    monkeypatch.delenv("ORCH_PROJECT", raising=False)
    with pytest.raises(ConfigError) as info:
        find_root(tmp_path)
    assert info.value.message == f"no orch.yaml found in {tmp_path.resolve()} or any parent directory"
    assert info.value.hint == "run orch inside a project, or pass --project DIR"


def test_find_root_explicit_directory_without_config(tmp_path, monkeypatch):
    monkeypatch.delenv("ORCH_PROJECT", raising=False)
    with pytest.raises(ConfigError) as info:
        find_root(explicit=tmp_path)
    assert info.value.message == f"{tmp_path.resolve()}: no orch.yaml in the project directory"
