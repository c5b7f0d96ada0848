"""A second, undeletable partition lock: an abstract-namespace unix socket (Linux).

A lock file can be deleted while held (`rm -rf wip/`), and a new file then
locks afresh. A socket bound in Linux's abstract namespace has no file to
delete: the name is free again only when its holder closes it or dies (the
kernel closes it, even on kill -9). Elsewhere `NameLock` always succeeds and
the lock file alone excludes other runs.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import socket
import sys


class NameLock:
    """Hold a machine-wide name, derived from `key`, while acquired.

    The name is `orch-lock:` + sha256 of `key` (64 hex digits; abstract names
    may be up to 107 bytes). Another process, or another `NameLock` of this
    one, cannot bind it meanwhile. The socket is not inherited by agents.
    """

    def __init__(self, key: str) -> None:
        self._name = (
            b"\0orch-lock:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest().encode()
        )
        self._sock: socket.socket | None = None

    @property
    def is_supported(self) -> bool:
        """True where abstract unix sockets exist (Linux)."""
        return sys.platform.startswith("linux")

    def try_acquire(self) -> bool:
        """Bind the name; False if another holder has it."""
        if self._sock is not None or not self.is_supported:
            return True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self._name)
        except OSError as err:
            sock.close()
            # another error (a sandbox without unix sockets): the lock file still excludes
            return err.errno != errno.EADDRINUSE
        self._sock = sock
        return True

    def release(self) -> None:
        """Free the name if held."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def is_bound(self) -> bool | None:
        """Whether any process holds the name, read from /proc/net/unix (binds nothing).

        Returns None where that table cannot be read (not Linux): use
        `is_held_elsewhere`, which binds the name for a moment.
        """
        if not self.is_supported:
            return False
        try:
            with open("/proc/net/unix", "rb") as handle:
                table = handle.read()
        except OSError:
            return None
        return b" @" + self._name[1:] + b"\n" in table

    def is_held_elsewhere(self) -> bool:
        """True if another holder has the name now (this one holds nothing)."""
        if self._sock is not None:
            return False
        if not self.try_acquire():
            return True
        self.release()
        return False


def lock_key(root: str, stage: str, partition: str) -> str:
    """The key of a partition's name lock: real project root, stage and partition."""
    return "\0".join((_real_root(root), stage, partition))


@functools.lru_cache(maxsize=4)
def _real_root(root: str) -> str:
    # one realpath per project, not per partition (0.06 ms each in bench/fanout.py)
    return os.path.realpath(root)
