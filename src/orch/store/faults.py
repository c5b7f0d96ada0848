"""Faults in orch's own path of a partition: their error classes and records.

An exception while checking, fingerprinting, promoting or archiving one
partition fails that partition only (error class `internal`, or `disk` for a
full, read-only or forbidden filesystem); it never ends the run with exit 1.
"""

from __future__ import annotations

import errno
import traceback

#: errno values that mean the disk, not the partition, is at fault.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})
#: Tracebacks kept in error.json are cut to this many characters (the end is kept).
MAX_TRACEBACK_CHARS = 20_000


def is_disk_fault(err: BaseException) -> bool:
    """True for ENOSPC, EDQUOT, EROFS, EACCES, EPERM and EIO."""
    return isinstance(err, OSError) and err.errno in DISK_ERRNOS


def error_class_of(err: BaseException) -> str:
    """Return `disk` for a disk fault (see `is_disk_fault`), else `internal`."""
    return "disk" if is_disk_fault(err) else "internal"


def describe(err: BaseException) -> str:
    """One line: `<Type>: <message>` (an OSError's message names its path)."""
    text = str(err) or repr(err)
    return f"{type(err).__name__}: {text}".replace("\n", " ")[:500]


def traceback_of(err: BaseException) -> str:
    """The formatted traceback of `err`, its last MAX_TRACEBACK_CHARS characters."""
    text = "".join(traceback.format_exception(err))
    return text[-MAX_TRACEBACK_CHARS:]
