"""A partition's params: its row's fields over the vars its stage shares, without a dict each."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


class Params(Mapping[str, Any]):
    """A partition's params: its row's fields over the vars its whole stage shares.

    Reads as `{**shared, **row}` (keys in that order, read-only) without a
    dict per partition: `shared` is one mapping for every partition of a stage.
    """

    __slots__ = ("_row", "_shared")

    def __init__(self, shared: Mapping[str, Any], row: Mapping[str, Any]) -> None:
        self._shared = shared
        self._row = row

    def __getitem__(self, key: str) -> Any:
        if key in self._row:
            return self._row[key]
        return self._shared[key]

    def __contains__(self, key: object) -> bool:
        return key in self._row or key in self._shared

    def __iter__(self) -> Iterator[str]:
        yield from self._shared
        yield from (key for key in self._row if key not in self._shared)

    def __len__(self) -> int:
        return len(self._shared) + sum(1 for key in self._row if key not in self._shared)

    def __repr__(self) -> str:
        return f"Params({dict(self)!r})"
