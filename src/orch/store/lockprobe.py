"""Ask whether a lock file is held without taking the lock.

On Linux the kernel lists every held flock/POSIX/OFD lock in /proc/locks as
`major:minor:inode`; matching the lock file's device and inode there answers
without touching the lock. A probe that try-locks instead made 15% of a
concurrent run's lock attempts fail while a viewer polled status (issue 12).
"""

from __future__ import annotations

import os
from pathlib import Path

#: The kernel's table of held file locks (Linux); absent or unreadable elsewhere.
PROC_LOCKS = Path("/proc/locks")


def lock_key(st: os.stat_result) -> str:
    """Return how /proc/locks names the file of `st`: `major:minor:inode`, hex device numbers."""
    return f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"


def is_held_in_proc_locks(path: Path, proc_locks: Path | None = None) -> bool | None:
    """Return whether any process holds a lock on `path`, from /proc/locks.

    Reads the lock table once (a few KiB); takes no lock. Waiters (`->`
    lines) do not count as holders.

    Args:
        path: The lock file.
        proc_locks: The table to read; `PROC_LOCKS` by default.

    Returns:
        True or False; False too when `path` does not exist; None when the
        table cannot be read (not Linux, /proc not mounted): use a fallback.
    """
    try:
        key = lock_key(os.stat(path))
    except OSError:
        return False
    try:
        table = (proc_locks or PROC_LOCKS).read_bytes()
    except OSError:
        return None
    wanted = key.encode()
    for line in table.splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] != b"->" and fields[5] == wanted:
            return True
    return False
