"""Secret redaction and JSON-safe records (orch.redact)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from orch import redact
from orch.redact import MIN_SECRET_CHARS, Redactor, json_safe, secret_names

SECRET = "sk-proj-ABCdef0123456789"


def test_text_and_bytes_are_redacted_naming_the_variable():
    redactor = Redactor({"OPENAI_API_KEY": SECRET})
    assert redactor.text(f"Bearer {SECRET}!") == "Bearer [redacted OPENAI_API_KEY]!"
    assert redactor.data(f"{SECRET}{SECRET}".encode()) == b"[redacted OPENAI_API_KEY]" * 2


def test_short_values_are_not_redacted():
    redactor = Redactor({"DEBUG": "1", "ALMOST": "x" * (MIN_SECRET_CHARS - 1)})
    assert not redactor
    assert redactor.text("x" * 20 + " 1") == "x" * 20 + " 1"


def test_the_json_escaped_form_of_a_secret_is_redacted_too():
    secret = 'pa"ss\\word-12345'
    redactor = Redactor({"TOKEN": secret})
    line = json.dumps({"error": f"bad {secret}"})
    assert secret not in json.loads(redactor.text(line)).get("error", "")
    assert "[redacted TOKEN]" in redactor.text(line)


def test_for_agents_reads_api_key_env_and_secret_env_from_env_or_the_agent(monkeypatch):
    agents = [
        SimpleNamespace(settings={"api_key_env": "KEY_A"}),
        SimpleNamespace(settings={"secret_env": ("TOKEN_B",), "env": {"TOKEN_B": "from-the-agent-env"}}),
    ]
    redactor = Redactor.for_agents(agents, {"KEY_A": "value-of-key-a", "TOKEN_B": "not-this-one"})
    assert redactor.text("value-of-key-a from-the-agent-env not-this-one") == (
        "[redacted KEY_A] [redacted TOKEN_B] not-this-one"
    )
    assert secret_names({"api_key_env": None, "secret_env": ["X"]}) == ["X"]


@pytest.mark.parametrize("start", [0, 7])
def test_a_file_is_redacted_in_place_from_an_offset_across_chunk_boundaries(
    tmp_path: Path, monkeypatch, start
):
    monkeypatch.setattr(redact, "_CHUNK_BYTES", 16)  # secrets straddle many chunk boundaries
    path = tmp_path / "agent.log"
    head = b"previous attempt "  # before `start` nothing changes
    body = b"".join(f"line {i}: {SECRET}\n".encode() for i in range(50))
    path.write_bytes(head[:start] + body)
    assert Redactor({"K": SECRET}).file(path, start) is True
    assert path.read_bytes() == head[:start] + body.replace(SECRET.encode(), b"[redacted K]")
    assert [p.name for p in tmp_path.iterdir()] == ["agent.log"]


def test_a_file_without_secrets_or_missing_is_left_alone(tmp_path: Path):
    path = tmp_path / "agent.log"
    path.write_text("nothing to see\n")
    before = path.stat().st_ino
    redactor = Redactor({"K": SECRET})
    assert redactor.file(path) is False and path.stat().st_ino == before
    assert redactor.file(tmp_path / "missing.log") is False


def test_json_safe_makes_huge_ints_and_nan_writable():
    record = {"a": 2**64, "b": [float("inf"), 1.5, -(2**70)], "c": (1, "x"), 3: Path("p")}
    safe = json_safe(record)
    assert safe == {
        "a": "<integer of 65 bits>",
        "b": [None, 1.5, "<integer of 71 bits>"],
        "c": [1, "x"],
        "3": "p",
    }
    orjson.dumps(safe)
