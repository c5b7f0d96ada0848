"""`Containment` forgets an agent once asyncio has reaped it (orch.executors.processes)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from orch.executors.processes import Containment


def test_an_ended_agents_pid_is_not_kept_for_a_later_process_to_reuse(tmp_path: Path) -> None:
    """A pid kept as a live agent's would spare a later leftover that reuses it, and the
    set grew by one pid per attempt for a whole run (or a Dask worker's lifetime)."""

    async def one_agent(containment: Containment) -> int:
        with containment.spawning():
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
            containment.started(tmp_path, proc.pid)
        await proc.wait()
        assert await containment.ended(tmp_path, proc.pid) == []
        return proc.pid

    containment = Containment()
    try:
        pids = [asyncio.run(one_agent(containment)) for _ in range(3)]
    finally:
        containment.close()
    assert not set(pids) & containment._agents
