"""Usage parsers for agent CLI output (orch.backends.usage) and the Usage record."""

from __future__ import annotations

import json

import orjson
import pytest

from orch.backends import Usage
from orch.backends.usage import (
    check_cost,
    check_tokens,
    json_objects,
    parse_claude_json,
    parse_codex_json,
    parse_report,
)

CLAUDE_RESULT = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "duration_ms": 12034,
    "duration_api_ms": 11020,
    "num_turns": 2,
    "result": "Wrote out.md.",
    "session_id": "7f3c1e2a-0000-4000-8000-000000000000",
    "total_cost_usd": 0.0123,
    "usage": {
        "input_tokens": 10,
        "cache_creation_input_tokens": 200,
        "cache_read_input_tokens": 3000,
        "output_tokens": 450,
        "server_tool_use": {"web_search_requests": 0},
        "service_tier": "standard",
    },
}
CODEX_EVENTS = [
    {"type": "thread.started", "thread_id": "0199a213-81c0-7800-8aa1-bbab2a035a53"},
    {"type": "turn.started"},
    {"type": "item.completed", "item": {"id": "item_0", "type": "reasoning", "text": "**Planning**"}},
    {
        "type": "item.completed",
        "item": {"id": "item_1", "type": "file_change", "changes": [{"path": "out.md", "kind": "add"}]},
    },
    {"type": "item.completed", "item": {"id": "item_2", "type": "agent_message", "text": "Done."}},
    {
        "type": "turn.completed",
        "usage": {"input_tokens": 24763, "cached_input_tokens": 24448, "output_tokens": 122},
    },
]


def lines(*objects: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objects)


def test_claude_result_gives_tokens_cost_and_turns():
    text = "warming up...\n" + lines(CLAUDE_RESULT)
    report = parse_claude_json(text)
    assert report.found and report.error is None
    assert report.usage == Usage(
        input_tokens=3210,
        output_tokens=450,
        cost_usd=0.0123,
        num_turns=2,
        cached_input_tokens=3000,
        cache_creation_tokens=200,
    )


def test_claude_is_error_is_a_failure_even_when_subtype_says_success():
    result = {**CLAUDE_RESULT, "is_error": True, "result": "API Error: 529 overloaded"}
    report = parse_claude_json(lines(result))
    assert report.error == "claude reported an error: API Error: 529 overloaded"
    assert report.usage is not None and report.usage.cost_usd == 0.0123


def test_claude_pretty_printed_result_after_stderr_noise_is_found():
    text = "[warn] something on stderr\n" + json.dumps(CLAUDE_RESULT, indent=2) + "\n"
    assert parse_claude_json(text).usage is not None


def test_claude_without_a_result_object_reports_nothing():
    report = parse_claude_json('plain text\n{"type": "system"}\n{not json\n')
    assert report.found is False and report.usage is None and report.error is None


def test_codex_turn_completed_usage_is_read():
    report = parse_codex_json(lines(*CODEX_EVENTS))
    assert report.found and report.error is None
    assert report.usage == Usage(input_tokens=24763, output_tokens=122, cached_input_tokens=24448)


def test_codex_turn_failed_is_a_failure():
    events = [
        *CODEX_EVENTS[:2],
        {"type": "turn.failed", "error": {"message": "model response stream ended unexpectedly"}},
    ]
    report = parse_codex_json(lines(*events))
    assert report.error == "codex turn failed: model response stream ended unexpectedly"
    assert report.usage is None


def test_codex_transient_error_followed_by_a_completed_turn_is_not_a_failure():
    events = [*CODEX_EVENTS[:2], {"type": "error", "message": "Reconnecting... 1/5"}, *CODEX_EVENTS[2:]]
    assert parse_codex_json(lines(*events)).error is None


def test_codex_final_error_is_a_failure():
    events = [*CODEX_EVENTS[:2], {"type": "error", "message": "stream error: broken pipe"}]
    assert parse_codex_json(lines(*events)).error == "codex error: stream error: broken pipe"


def test_codex_turns_are_summed():
    report = parse_codex_json(lines(*CODEX_EVENTS, CODEX_EVENTS[1], CODEX_EVENTS[-1]))
    assert report.usage == Usage(input_tokens=49526, output_tokens=244, cached_input_tokens=48896)


def test_none_parser_reads_nothing():
    assert parse_report("none", lines(CLAUDE_RESULT)).found is False


def test_json_objects_skips_non_json_lines_and_non_objects():
    text = 'hello\n[1, 2]\n  {"a": 1}\n{"b": \n2}\n{broken\n{"c": 3} trailing\n'
    assert list(json_objects(text)) == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_usage_sum_keeps_unknown_fields_unknown():
    total = Usage(input_tokens=1, cost_usd=0.5) + Usage(input_tokens=2, output_tokens=3)
    assert total == Usage(input_tokens=3, output_tokens=3, cost_usd=0.5)
    assert total.to_json() == {"input_tokens": 3, "output_tokens": 3, "cost_usd": 0.5}


HOSTILE = [2**64, 2**70, -1, float("nan"), float("inf"), -0.5, "12", True, [1], {"n": 1}, 10**12]


@pytest.mark.parametrize("bad", HOSTILE, ids=repr)
def test_claude_hostile_numbers_become_unknown_with_a_warning(bad):
    result = {**CLAUDE_RESULT, "total_cost_usd": bad, "num_turns": bad}
    result["usage"] = {**CLAUDE_RESULT["usage"], "output_tokens": bad, "cache_read_input_tokens": bad}
    # json.dumps writes NaN/Infinity, which Python's json reads back, as a careless agent's would be
    usage = parse_claude_json(lines(result)).usage
    assert usage is not None
    assert usage.output_tokens is None and usage.num_turns is None and usage.cached_input_tokens is None
    assert usage.input_tokens == 210  # the valid parts still count
    assert usage.cost_usd is None and usage.cost_rejected is True
    assert len(usage.warnings) == 4
    assert usage.warnings[0].startswith("claude cache_read_input_tokens: reported ")
    assert all(w.endswith("recorded as unknown") for w in usage.warnings)
    encoded = orjson.dumps(usage.to_json())  # never refuses: nothing past 64 bits, no NaN
    assert b"warnings" in encoded and b"cost_rejected" in encoded


def test_a_warning_names_the_size_of_a_huge_integer_not_its_digits():
    usage = parse_claude_json(lines({**CLAUDE_RESULT, "num_turns": 2**70})).usage
    assert usage is not None
    (warning,) = usage.warnings
    assert warning == (
        "claude num_turns: reported an integer of 71 bits, not a whole number in [0, 1e12); "
        "recorded as unknown"
    )


def test_claude_cost_not_reported_is_unknown_but_not_rejected():
    result = {k: v for k, v in CLAUDE_RESULT.items() if k != "total_cost_usd"}
    usage = parse_claude_json(lines(result)).usage
    assert usage is not None and usage.cost_usd is None and not usage.cost_rejected and not usage.warnings


def test_whole_floats_count_as_tokens_and_large_valid_costs_are_kept():
    result = {**CLAUDE_RESULT, "total_cost_usd": 999_999, "num_turns": 3.0}
    usage = parse_claude_json(lines(result)).usage
    assert usage is not None and usage.num_turns == 3 and usage.cost_usd == 999_999.0


@pytest.mark.parametrize("bad", [2**64, -5, float("nan"), "many"], ids=repr)
def test_codex_hostile_turn_usage_is_dropped_with_a_warning(bad):
    hostile = {"type": "turn.completed", "usage": {"input_tokens": bad, "output_tokens": 7}}
    usage = parse_codex_json(lines(*CODEX_EVENTS, hostile)).usage
    assert usage is not None
    assert usage.input_tokens == 24763 and usage.output_tokens == 129
    assert usage.warnings and usage.warnings[0].startswith("codex input_tokens: reported ")


def test_usage_sum_keeps_warnings_and_a_rejected_cost():
    total = Usage(input_tokens=1, warnings=("a",), cost_rejected=True) + Usage(warnings=("b",))
    assert total.warnings == ("a", "b") and total.cost_rejected is True
    assert total.to_json() == {"input_tokens": 1, "warnings": ["a", "b"], "cost_rejected": True}


def test_check_cost_bounds():
    warnings: list[str] = []
    assert check_cost(0, "cost_usd", warnings) == (0.0, False)
    assert check_cost(None, "cost_usd", warnings) == (None, False)
    assert check_cost(10**6, "cost_usd", warnings) == (None, True)
    assert check_tokens(0, "input_tokens", warnings) == 0
    assert len(warnings) == 1


def test_a_string_reported_as_a_number_is_described_not_echoed():
    usage = parse_claude_json(lines({**CLAUDE_RESULT, "num_turns": "sk-looks-like-a-secret"})).usage
    assert usage is not None
    assert usage.warnings[0].startswith("claude num_turns: reported a string of 22 characters,")
