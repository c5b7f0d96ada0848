"""The group-commit Promoter (orch.engine.promotion): a failing batch never leaves a waiter hanging."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from orch.engine import promotion
from orch.engine.promotion import Promoter
from orch.store.manifest import read_manifest
from tests.unit.test_state import make_manifest, make_staging


def test_a_manifest_with_an_unserializable_number_is_made_safe_and_promoted(tmp_path: Path) -> None:
    # orjson refuses integers past 64 bits; the manifest writer makes them JSON-safe
    # (orch.redact.json_safe), so neither this promotion nor its batch-mate fails.
    data = tmp_path / "data" / "research"

    async def main() -> list[Any]:
        promoter = Promoter(tmp_path)
        huge = make_manifest(partition="p1", usage={"input_tokens": 2**64})
        return await asyncio.gather(
            promoter.promote(make_staging(data / "p1", 1, {"a": "a"}), data / "p1", huge),
            promoter.promote(
                make_staging(data / "p2", 1, {"b": "b"}), data / "p2", make_manifest(partition="p2")
            ),
            return_exceptions=True,
        )

    first, second = asyncio.run(asyncio.wait_for(main(), 10))
    assert first is None and second is None
    assert read_manifest(data / "p2") is not None
    manifest = read_manifest(data / "p1")
    assert manifest is not None and manifest.usage["input_tokens"] == "<integer of 65 bits>"


def test_a_batch_that_raises_fails_each_waiter_and_the_next_promotion_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data" / "research"
    real = promotion.promote_many
    calls = []

    def broken_once(root: Path, items: list[Any]) -> list[Any]:
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("bug in promote_many")
        return real(root, items)

    monkeypatch.setattr(promotion, "promote_many", broken_once)

    async def main() -> tuple[list[Any], Any]:
        promoter = Promoter(tmp_path)
        batch = await asyncio.gather(
            *(
                promoter.promote(make_staging(data / p, 1, {"x": p}), data / p, make_manifest(partition=p))
                for p in ("p1", "p2")
            ),
            return_exceptions=True,
        )
        later = await promoter.promote(make_staging(data / "p3", 1, {"x": "3"}), data / "p3", make_manifest())
        return batch, later

    batch, later = asyncio.run(asyncio.wait_for(main(), 10))
    assert [type(e) for e in batch] == [RuntimeError, RuntimeError]
    assert later is None
    assert read_manifest(data / "p3") is not None
    assert calls == [2, 1]
