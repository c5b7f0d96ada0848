"""FrozenDict: the read-only mapping of the config records, which (unlike `MappingProxyType`) pickles.

Config records cross process boundaries (a Dask worker gets the attempt's agent
settings), so their mappings must pickle; and they are shared by every reader
of a loaded project, so they must not change after loading.
"""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class FrozenDict(dict[K, V]):
    """A dict whose contents cannot change after it is made.

    Reads are a plain dict's (same speed, `json.dumps` and `dict(...)` work);
    every method that would change it raises TypeError. Pickles and copies
    as a FrozenDict; equal to a dict with the same items. Values are not
    frozen in turn: records hold plain values (strings, numbers, tuples) or
    parsed YAML that nothing writes to. Not hashable, like a dict.
    """

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{type(self).__name__} is read-only")

    __setitem__ = _read_only
    __delitem__ = _read_only
    __ior__ = _read_only
    clear = _read_only
    pop = _read_only
    popitem = _read_only
    setdefault = _read_only
    update = _read_only

    def __reduce__(self) -> tuple[type[FrozenDict[K, V]], tuple[dict[K, V]]]:
        # dict's own pickling refills the new object item by item through __setitem__.
        return (type(self), (dict(self),))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict.__repr__(self)})"
