"""The offline rehearsal backend (orch.backends.rehearsal): placeholders that pass the checks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from orch.backends import AttemptSpec
from orch.backends.rehearsal import LABEL, RehearsalBackend, example_instance
from orch.config.stages import ExpectRule
from orch.errors import ConfigError
from orch.store.checks import SchemaStore, check_outputs

REPO_SCHEMAS = Path(__file__).parents[2] / "references" / "schemas"


def assert_valid(instance: Any, schema: dict[str, Any]) -> None:
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    errors = [e.message for e in cls(schema).iter_errors(instance)]
    assert errors == [], f"{instance!r} is invalid: {errors}"


# example_instance


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        pytest.param({"type": "string"}, "rehearsal placeholder (value)", id="string"),
        pytest.param(
            {"type": "string", "minLength": 40}, "rehearsal placeholder (value)" + "." * 11, id="minLength"
        ),
        pytest.param({"type": "integer", "minimum": 3}, 3, id="minimum"),
        pytest.param({"type": "integer", "exclusiveMinimum": 3}, 4, id="exclusiveMinimum"),
        pytest.param({"type": "number", "exclusiveMinimum": 0.5}, 1.5, id="number-exclusiveMinimum"),
        pytest.param({"type": "number"}, 0.0, id="number"),
        pytest.param({"type": "boolean"}, False, id="boolean"),
        pytest.param({"type": "null"}, None, id="null"),
        pytest.param({"type": ["null", "integer"], "minimum": 2}, 2, id="type-list"),
        pytest.param({"enum": ["low", "medium", "high"]}, "low", id="enum"),
        pytest.param({"const": {"k": [1]}}, {"k": [1]}, id="const"),
        pytest.param(
            {"type": "array", "items": {"type": "integer"}, "minItems": 3}, [0, 0, 0], id="minItems"
        ),
        pytest.param({"type": "array"}, ["rehearsal placeholder (value)"], id="array-default-items"),
    ],
)
def test_example_instance_scalars_and_arrays(schema: dict[str, Any], expected: Any):
    instance = example_instance(schema, "p1")
    assert instance == expected
    assert type(instance) is type(expected)
    assert_valid(instance, schema)


NESTED = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "title": {"type": "string", "minLength": 3},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "weight": {"type": "number", "exclusiveMinimum": 0},
        "kind": {"const": "function"},
        "confidence": {"enum": ["low", "high"]},
        "tags": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 2},
        "owner": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "ids": {"type": "array", "items": {"type": "integer"}},
            },
            "required": ["name", "ids"],
            "additionalProperties": False,
        },
        "rows": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {"id": {"type": "string"}, "ok": {"type": "boolean"}},
                "required": ["id", "ok"],
            },
        },
    },
    "required": ["id", "title", "score", "weight", "kind", "confidence", "tags", "owner", "rows"],
    "additionalProperties": False,
}


def test_example_instance_nested_objects_and_arrays():
    instance = example_instance(NESTED, "1.1_control")
    assert instance == {
        "id": "1.1_control",
        "title": "rehearsal placeholder (title)",
        "score": 1,
        "weight": 1.0,
        "kind": "function",
        "confidence": "low",
        "tags": ["rehearsal placeholder (tags)"] * 2,
        "owner": {"name": "rehearsal placeholder (name)", "ids": [0]},
        "rows": [{"id": "1.1_control", "ok": False}],
    }
    assert_valid(instance, NESTED)


@pytest.mark.parametrize("path", sorted(REPO_SCHEMAS.glob("*.json")), ids=lambda p: p.name)
def test_example_instance_is_valid_for_the_repo_schemas(path: Path):
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert_valid(example_instance(schema, "p1"), schema)


def test_the_repo_schemas_are_there():
    assert sorted(p.name for p in REPO_SCHEMAS.glob("*.json")) == ["score.schema.json", "sources.schema.json"]


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param({"type": "integer", "maximum": -1}, id="maximum"),
        pytest.param({"type": "number", "exclusiveMaximum": 0}, id="exclusiveMaximum"),
    ],
)
def test_example_instance_honours_maximum(schema: dict[str, Any]):
    assert_valid(example_instance(schema, "p1"), schema)


def test_example_instance_honours_minimum_and_exclusive_minimum_together():
    schema = {"type": "integer", "minimum": 0, "exclusiveMinimum": 0}
    assert_valid(example_instance(schema, "p1"), schema)


def test_example_instance_fills_required_keys_not_in_properties():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "b"]}
    assert_valid(example_instance(schema, "p1"), schema)


# RehearsalBackend.run


@pytest.fixture
def project(tmp_path: Path) -> Path:
    schemas = tmp_path / "references" / "schemas"
    schemas.mkdir(parents=True)
    for path in REPO_SCHEMAS.glob("*.json"):
        (schemas / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (schemas / "nested.schema.json").write_text(json.dumps(NESTED), encoding="utf-8")
    return tmp_path


def make_spec(root: Path, rules: Sequence[ExpectRule], partition: str = "1.1_control") -> AttemptSpec:
    out_dir = root / "data" / "research" / partition
    work_dir = out_dir.parent / f".{partition}.attempt-1"
    (work_dir / ".orch").mkdir(parents=True)
    prompt_file = work_dir / ".orch" / "prompt.md"
    prompt_file.write_text("the prompt\n", encoding="utf-8")
    return AttemptSpec(
        stage="research",
        partition=partition,
        attempt=1,
        prompt="the prompt\n",
        work_dir=work_dir,
        out_dir=out_dir,
        prompt_file=prompt_file,
        log_path=work_dir / ".orch" / "agent.log",
        expect=tuple(rules),
        project_root=root,
    )


RULES = (
    ExpectRule(file="findings.md", min_bytes=2000, headings=("## Summary", "## Evidence")),
    ExpectRule(file="sources.json", json=True, schema="references/schemas/sources.schema.json"),
    ExpectRule(file="score.json", json=True, schema="references/schemas/score.schema.json"),
    ExpectRule(file="deep/nested.json", json=True, schema="references/schemas/nested.schema.json"),
    ExpectRule(file="plain.json", json=True),
    ExpectRule(glob="chapters/ch-*.md", min_count=3, min_bytes=100, headings=("## Notes",)),
    ExpectRule(file="notes.txt", non_empty=True),
)


def test_run_writes_outputs_that_pass_the_checks(project: Path):
    spec = make_spec(project, RULES)
    result = asyncio.run(RehearsalBackend().run(spec))
    assert result.ok is True and result.error is None
    assert result.usage is not None and result.usage.to_json() == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": 0.0,
    }
    assert check_outputs(spec.work_dir, RULES, SchemaStore(project)) == []
    written = sorted(str(p.relative_to(spec.work_dir)) for p in spec.work_dir.rglob("*") if p.is_file())
    assert written == [
        ".orch/agent.log",
        ".orch/prompt.md",
        "chapters/ch-rehearsal-1.md",
        "chapters/ch-rehearsal-2.md",
        "chapters/ch-rehearsal-3.md",
        "deep/nested.json",
        "findings.md",
        "notes.txt",
        "plain.json",
        "score.json",
        "sources.json",
    ]
    assert not spec.out_dir.exists()


def test_run_log_says_it_is_a_rehearsal_placeholder(project: Path):
    spec = make_spec(project, RULES[:2])
    spec.log_path.write_text("earlier line\n", encoding="utf-8")
    asyncio.run(RehearsalBackend().run(spec))
    assert spec.log_path.read_text(encoding="utf-8") == (
        f"earlier line\n{LABEL}\nwrote: findings.md, sources.json\n"
    )
    assert LABEL.startswith("REHEARSAL PLACEHOLDER")


def test_run_without_rules_logs_that(project: Path):
    spec = make_spec(project, ())
    assert asyncio.run(RehearsalBackend().run(spec)).ok
    assert spec.log_path.read_text(encoding="utf-8") == f"{LABEL}\nwrote: (no expect rules)\n"


def test_every_markdown_file_carries_the_label(project: Path):
    spec = make_spec(project, RULES)
    asyncio.run(RehearsalBackend().run(spec))
    markdown = sorted(p for p in spec.work_dir.rglob("*.md") if ".orch" not in p.parts)
    assert len(markdown) == 4
    for path in markdown:
        assert "REHEARSAL PLACEHOLDER" in path.read_text(encoding="utf-8"), path


def test_markdown_placeholder_layout(project: Path):
    rule = ExpectRule(file="findings.md", headings=("## Summary", "## Evidence"))
    spec = make_spec(project, [rule], partition="p1")
    asyncio.run(RehearsalBackend().run(spec))
    assert (spec.work_dir / "findings.md").read_text(encoding="utf-8") == (
        f"# research / p1\n\n> {LABEL}\n\n"
        "## Summary\n\nPlaceholder text for Summary.\n\n"
        "## Evidence\n\nPlaceholder text for Evidence.\n"
    )


def test_open_json_gets_the_label_closed_json_does_not(project: Path):
    spec = make_spec(project, RULES[1:5])
    asyncio.run(RehearsalBackend().run(spec))
    plain = json.loads((spec.work_dir / "plain.json").read_text(encoding="utf-8"))
    assert plain == {"rehearsal": LABEL}
    sources = json.loads((spec.work_dir / "sources.json").read_text(encoding="utf-8"))
    assert "rehearsal" not in sources  # additionalProperties: false
    assert sources["sources"][0]["url"] == "rehearsal placeholder (url)"


def test_glob_with_a_negated_class_gets_matching_names(project: Path):
    spec = make_spec(project, [ExpectRule(glob="[!a]*.md", min_count=2)])
    asyncio.run(RehearsalBackend().run(spec))
    names = sorted(p.name for p in spec.work_dir.glob("*.md"))
    assert len(names) == 2 and not any(n.startswith("a") for n in names)


def test_glob_with_too_few_distinct_names_is_a_config_error(project: Path):
    spec = make_spec(project, [ExpectRule(glob="?.md", min_count=40)])
    with pytest.raises(ConfigError) as info:
        asyncio.run(RehearsalBackend().run(spec))
    assert str(info.value) == "rehearsal cannot make 40 distinct file names matching '?.md'"


@pytest.mark.parametrize("glob", ["part-?.md", "part-[0-9].md"])
def test_glob_without_star_gets_enough_distinct_files(project: Path, glob: str):
    rules = (ExpectRule(glob=glob, min_count=3),)
    spec = make_spec(project, rules)
    asyncio.run(RehearsalBackend().run(spec))
    assert check_outputs(spec.work_dir, rules, SchemaStore(project)) == []


def test_json_label_respects_additional_properties_schema(project: Path):
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "additionalProperties": {"type": "integer"},
    }
    (project / "references" / "schemas" / "counts.schema.json").write_text(json.dumps(schema))
    rules = (ExpectRule(file="counts.json", json=True, schema="references/schemas/counts.schema.json"),)
    spec = make_spec(project, rules)
    asyncio.run(RehearsalBackend().run(spec))
    assert check_outputs(spec.work_dir, rules, SchemaStore(project)) == []
