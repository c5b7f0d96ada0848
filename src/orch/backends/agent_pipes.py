"""An agent process's pipes: feed its prompt on stdin, copy its stdout, and stop once it exited.

A process the agent leaves behind (a daemon in a new session) inherits its
pipes and can hold them open for ever. asyncio's `Process.communicate()` and
`wait()` wait for every pipe to close, so orch waits for the agent's exit
itself and then reads what is left for a bounded time; the processes left
behind are killed with the rest of the attempt (`orch.executors.processes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import IO, Any

#: Bytes read from the agent's stdout at a time.
CHUNK_BYTES = 65536
#: How often orch looks whether an agent that still holds pipes open has exited (seconds).
#: An agent whose pipes close as it exits (the usual case) is not polled at all.
EXIT_POLL_S = 0.25
#: Once the agent has exited, orch stops reading its stdout after this long without data (seconds).
DRAIN_IDLE_S = 1.0


async def communicate(
    proc: asyncio.subprocess.Process,
    prompt: bytes | None,
    reply_path: Path | None,
    log: IO[bytes],
    drain_s: float,
) -> None:
    """Feed `prompt` to the agent's stdin and, with `reply_path`, copy its stdout there
    and to `log`; return once the agent has exited.

    Once the agent has exited, orch stops feeding stdin and reads stdout only
    until it has been quiet for `DRAIN_IDLE_S`, for `drain_s` seconds at most:
    what the agent wrote before it exited is in the pipe and is read at once.

    Args:
        proc: The agent, started with stdin a pipe (or DEVNULL when `prompt` is
            None) and, with `reply_path`, stdout a pipe.
        prompt: The prompt's bytes for stdin, or None.
        reply_path: The file that receives stdout (created, with its directory), or None.
        log: The attempt's `agent.log`, open for appending; gets stdout's bytes too.
        drain_s: Bound on reading stdout after the agent exited (seconds).
    """
    loop = asyncio.get_running_loop()
    last_data = [loop.time()]

    async def pump(reply: IO[bytes]) -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(CHUNK_BYTES):
            last_data[0] = loop.time()
            reply.write(chunk)
            log.write(chunk)
            log.flush()

    with contextlib.ExitStack() as stack:
        tasks = [asyncio.ensure_future(_feed(proc, prompt)), asyncio.ensure_future(proc.wait())]
        pumping = None
        if reply_path is not None:
            os.makedirs(reply_path.parent, exist_ok=True)
            pumping = asyncio.ensure_future(pump(stack.enter_context(open(reply_path, "wb"))))
            tasks.append(pumping)
        try:
            while proc.returncode is None:  # wait() also waits for the pipes: poll for the exit
                await asyncio.wait(tasks, timeout=EXIT_POLL_S)
            if pumping is not None and not pumping.done():
                await _drain(pumping, last_data, drain_s)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if proc.stdin is not None:
                proc.stdin.close()


async def _feed(proc: asyncio.subprocess.Process, prompt: bytes | None) -> None:
    """Write `prompt` to stdin and close it."""
    if proc.stdin is None:
        return
    try:
        if prompt:
            proc.stdin.write(prompt)
            await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the agent exited without reading its whole prompt; its exit code says why
    finally:
        proc.stdin.close()


async def _drain(pumping: asyncio.Future[Any], last_data: list[float], drain_s: float) -> None:
    """Let `pumping` read on until stdout ends, stays quiet `DRAIN_IDLE_S`, or `drain_s` passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + drain_s
    last_data[0] = max(last_data[0], loop.time())  # a full quiet spell from the exit on
    while not pumping.done():
        now = loop.time()
        quiet_until = last_data[0] + DRAIN_IDLE_S
        if now >= deadline or now >= quiet_until:
            return
        await asyncio.wait([pumping], timeout=min(deadline, quiet_until) - now)
