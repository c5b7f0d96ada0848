"""Find and stop agent processes orphaned by an orchestrator that died (kill -9).

An agent CLI dies with orch (PR_SET_PDEATHSIG), but processes it started
(a shell, a tool) may outlive both. Each agent's environment carries
`ORCH_OUTPUT_DIR=<its staging directory>`, unique per attempt, so a later run
cleaning that staging directory can find exactly those processes in /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def kill_orphans(staging: Path) -> list[int]:
    """SIGKILL every process whose environment names `staging` as ORCH_OUTPUT_DIR.

    Reads /proc/<pid>/environ (Linux; elsewhere nothing is found). Processes of
    other users, or that exit meanwhile, are skipped.

    Returns:
        The pids signalled, sorted.
    """
    marker = b"\0ORCH_OUTPUT_DIR=" + os.fsencode(str(staging)) + b"\0"
    killed = []
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    own = os.getpid()
    for pid in pids:
        if pid == own:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = b"\0" + handle.read()
        except OSError:
            continue
        if marker in environ:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return sorted(killed)
