"""Why a partition is stale (orch.engine.stale.stale_reason): one reason per changed fingerprint part."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest

from orch.config.partitions import Partition
from orch.config.stages import Stage
from orch.config.workspace import Fingerprint, digest
from orch.engine.stale import prompt_change, stale_reason
from orch.store.manifest import Manifest

STAGE = Stage(name="synthesis", blueprint="agents/x.md", output="data/synthesis/<ID>")
PARTITION = Partition(
    stage="synthesis",
    id="f1",
    params=MappingProxyType({"ID": "f1"}),
    row=MappingProxyType({"ID": "f1"}),
    out_dir="data/synthesis/f1",
    source="references/framework.yaml:120",
    children=(("research", "a"), ("research", "b")),
)
INPUTS = {"research/a": digest("a v1"), "research/b": digest("b v1")}
EXPLAIN = {"row": digest({"ID": "f1"}), "vars": digest({"PERIOD": "2025-09"}), "blueprint": digest("bp v1")}


def fingerprint(
    prompt: str = "prompt v1",
    agent: str = "agent v1",
    expect: str = "expect v1",
    inputs: dict[str, str] | None = None,
    **explain: str,
) -> Fingerprint:
    """A fingerprint from named parts; `explain` overrides row/vars/blueprint hashes."""
    parts = {**EXPLAIN, **{k: v for k, v in explain.items() if not k.endswith("_keys")}}
    keys = {k: v for k, v in explain.items() if k.endswith("_keys")}
    return Fingerprint(
        value=digest([prompt, agent, expect, inputs, parts]),
        prompt=digest(prompt),
        agent=digest(agent),
        expect=digest(expect),
        inputs=MappingProxyType(dict(INPUTS if inputs is None else inputs)),
        explain=lambda: dict(parts),
        keys=lambda: dict(keys),
    )


def manifest_of(fp: Fingerprint) -> Manifest:
    return Manifest(
        stage="synthesis",
        partition="f1",
        fingerprint=fp.value,
        parts=fp.parts(),
        output_fingerprint=digest("out"),
        attempt=1,
        attempts=[],
        agent={"name": "offline", "backend": "rehearsal"},
        outputs=[],
    )


OLD = manifest_of(fingerprint())


def reason(fp: Fingerprint, old: Manifest = OLD) -> str:
    return stale_reason(old, fp, PARTITION, STAGE)


def not_called() -> dict[str, str]:
    raise AssertionError("explain() must not be computed when the prompt did not change")


def test_one_child_changed():
    fp = fingerprint(inputs={**INPUTS, "research/a": digest("a v2")})
    assert reason(fp) == "stale: child a changed"


def test_several_children_changed():
    fp = fingerprint(inputs={"research/a": digest("a v2"), "research/b": digest("b v2")})
    assert reason(fp) == "stale: children a, b changed"


def test_more_than_three_children_changed():
    old_inputs = {f"research/c{i}": digest(f"c{i} v1") for i in range(1, 6)}
    new_inputs = {k: digest(v + " v2") for k, v in old_inputs.items()}
    old = manifest_of(fingerprint(inputs=old_inputs))
    assert reason(fingerprint(inputs=new_inputs), old) == "stale: children c1, c2, c3 and 2 more changed"


def test_exactly_three_children_changed_has_no_more():
    old_inputs = {f"research/c{i}": digest(f"c{i}") for i in range(1, 4)}
    old = manifest_of(fingerprint(inputs=old_inputs))
    fp = fingerprint(inputs={k: "" for k in old_inputs})  # children no longer complete
    assert reason(fp, old) == "stale: children c1, c2, c3 changed"


def test_added_and_removed_children_count_as_changed():
    fp = fingerprint(inputs={"research/a": INPUTS["research/a"], "research/new": digest("n")})
    assert reason(fp) == "stale: children new, b changed"


def test_changed_child_wins_over_the_prompt_it_changed():
    fp = fingerprint(prompt="prompt inlining a v2", inputs={**INPUTS, "research/b": digest("b v2")})
    assert reason(fp) == "stale: child b changed"


def test_row_changed_names_the_references_file():
    fp = fingerprint(prompt="prompt v2", row=digest({"ID": "f1", "NAME": "new"}))
    assert reason(fp) == "stale: references/framework.yaml row changed"


def test_row_changed_wins_over_vars_and_blueprint():
    fp = fingerprint(prompt="prompt v2", row=digest("r2"), vars=digest("v2"), blueprint=digest("bp v2"))
    assert reason(fp) == "stale: references/framework.yaml row changed"


def test_vars_changed():
    fp = fingerprint(prompt="prompt v2", vars=digest({"PERIOD": "2025-10"}))
    assert reason(fp) == "stale: vars changed (orch.yaml)"


def test_blueprint_changed_names_the_blueprint():
    fp = fingerprint(prompt="prompt v2", blueprint=digest("bp v2"))
    assert reason(fp) == "stale: prompt changed (blueprint agents/x.md)"


def test_prompt_changed_for_another_reason():
    assert reason(fingerprint(prompt="prompt v2")) == "stale: prompt changed"


def test_agent_settings_changed():
    fp = replace(fingerprint(agent="agent v2"), explain=not_called)
    assert reason(fp) == "stale: agent settings changed"


def test_agent_settings_change_names_the_key():
    before = {"backend": digest("command"), "model": digest("a"), "effort": digest("low")}
    old = manifest_of(fingerprint(agent_keys=before))  # type: ignore[arg-type]
    now = {"backend": digest("command"), "model": digest("b"), "env": digest({"X": "1"})}
    fp = fingerprint(agent="agent v2", agent_keys=now)  # type: ignore[arg-type]
    assert reason(fp, old) == "stale: agent settings changed (effort, env, model)"


def test_vars_change_names_the_key():
    old = manifest_of(fingerprint(vars_keys={"PERIOD": digest("2025-09"), "X": digest(1)}))  # type: ignore[arg-type]
    fp = fingerprint(
        prompt="prompt v2",
        vars=digest({"PERIOD": "2025-10"}),
        vars_keys={"PERIOD": digest("2025-10"), "X": digest(1)},  # type: ignore[arg-type]
    )
    assert reason(fp, old) == "stale: vars changed (orch.yaml: PERIOD)"


def test_row_change_names_the_fields():
    old = manifest_of(fingerprint(row_keys={"ID": digest("f1"), "NOTE": digest("a")}))  # type: ignore[arg-type]
    fp = fingerprint(
        prompt="prompt v2",
        row=digest({"ID": "f1", "NOTE": "b"}),
        row_keys={"ID": digest("f1"), "NOTE": digest("b")},  # type: ignore[arg-type]
    )
    assert reason(fp, old) == "stale: references/framework.yaml row changed (field NOTE)"


def test_blueprint_change_names_the_prompt_lines():
    fp = fingerprint(prompt="prompt v2", blueprint=digest("bp v2"))
    got = stale_reason(OLD, fp, PARTITION, STAGE, "# T\nkeep\nold line\nend\n", "# T\nkeep\nnew line\nend\n")
    assert got == "stale: prompt changed at line 3 (blueprint agents/x.md)"


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("a\nb\n", "a\nb", " at line 2, whitespace only"),
        ("a\nb\n", "a \nb\n", " at line 1, whitespace only"),
        ("a\nb\nc\nd\ne\n", "A\nb\nC\nd\nE\nF\n", " at lines 1-6"),
        ("a\nb\nc\nd\n", "a\nB\nC\nd\n", " at lines 2-3"),
        ("a\nb\nc\n", "a\nc\n", " at line 2"),
        ("a\nc\n", "a\nb\nc\n", " at line 2"),
        ("a\n", "a\n\n", " at line 2, whitespace only"),
        ("a\n", "a\n", ""),
        (None, "a\n", ""),
    ],
)
def test_prompt_change_locates_lines(old, new, where):
    assert prompt_change(old, new) == where


def test_expect_rules_changed():
    fp = replace(fingerprint(expect="expect v2"), explain=not_called)
    assert reason(fp) == "stale: expect rules changed"


def test_agent_reported_before_expect():
    assert reason(fingerprint(agent="agent v2", expect="expect v2")) == "stale: agent settings changed"


def test_no_part_differs():
    assert reason(replace(fingerprint(), value="sha256:other", explain=not_called)) == (
        "stale: fingerprint changed"
    )


def test_old_manifest_without_inputs_and_no_children_falls_through():
    """A fan-out partition (no children) is never stale because of inputs."""
    old_parts = {k: v for k, v in OLD.parts.items() if k != "inputs"}
    old = replace(OLD, parts=old_parts)
    assert reason(fingerprint(inputs={}, expect="expect v2"), old) == "stale: expect rules changed"


@pytest.mark.parametrize(
    "part", ["prompt", "agent", "expect", "row", "vars", "blueprint"], ids=lambda p: f"missing-{p}"
)
def test_manifest_missing_a_part_still_gets_a_reason(part: str):
    old = replace(OLD, parts={k: v for k, v in OLD.parts.items() if k != part})
    assert (
        reason(fingerprint(), old)
        == {
            "prompt": "stale: prompt changed",
            "agent": "stale: agent settings changed",
            "expect": "stale: expect rules changed",
            "row": "stale: fingerprint changed",
            "vars": "stale: fingerprint changed",
            "blueprint": "stale: fingerprint changed",
        }[part]
    )
