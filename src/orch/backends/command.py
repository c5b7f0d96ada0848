"""The `command` backend: run any headless agent CLI as a subprocess.

The agent runs in the attempt's staging directory, in its own process group
(killed whole: TERM, grace, KILL, on timeout or interrupt), with the prompt
on stdin (or as an argument, or a file path), stdin otherwise `/dev/null`,
stdout and stderr appended to `.orch/agent.log`, and `ORCH_*` variables in
its environment (DESIGN.md §6). Exit 0 alone never proves success.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shlex
import signal
from typing import Any

from orch.backends import AttemptResult, AttemptSpec
from orch.errors import ConfigError
from orch.project import AgentConfig, parse_duration

SETTINGS = {
    "command": "argv list (or a shell-style string) of the agent CLI",
    "prompt_via": "stdin (default), arg (last argument or {prompt}), or file "
    "(path as last argument or {prompt_file})",
    "env": "extra environment variables (mapping of strings)",
    "kill_grace": "seconds between SIGTERM and SIGKILL (default 5s)",
}
NOT_FINGERPRINTED = frozenset({"kill_grace"})
PROMPT_VIA = ("stdin", "arg", "file")
_PR_SET_PDEATHSIG = 1
_LOG_TAIL_BYTES = 4096


def normalize(settings: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate command settings into canonical form (argv as a tuple).

    Raises:
        ConfigError: a missing/empty command, unknown prompt_via, bad env or grace.
    """
    command = settings.get("command")
    if isinstance(command, str):
        command = shlex.split(command)
    if (
        not isinstance(command, list | tuple)
        or not command
        or not all(isinstance(a, str | int | float) for a in command)
    ):
        raise ConfigError(
            f"{where} command: expected a list like [claude, -p, --output-format, json]",
            "give the agent CLI and its arguments as a YAML list",
        )
    settings["command"] = tuple(str(a) for a in command)
    via = settings.setdefault("prompt_via", "stdin")
    if via not in PROMPT_VIA:
        raise ConfigError(f"{where} prompt_via: expected one of {', '.join(PROMPT_VIA)}, got {via!r}")
    env = settings.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
        raise ConfigError(f"{where} env: expected a mapping of NAME: value")
    settings["env"] = {k: str(v) for k, v in env.items()}
    settings["kill_grace"] = parse_duration(settings.get("kill_grace", 5), f"{where} kill_grace")
    return settings


def create(agent: AgentConfig) -> CommandBackend:
    """Return a command backend for `agent`."""
    return CommandBackend(agent)


def _die_with_parent() -> None:
    """In the child: receive SIGKILL if orch dies (Linux), so no agent is orphaned."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class CommandBackend:
    """Runs one agent CLI process per attempt."""

    def __init__(self, agent: AgentConfig) -> None:
        self.agent = agent
        self.argv: tuple[str, ...] = agent.settings["command"]
        self.prompt_via: str = agent.settings.get("prompt_via", "stdin")
        self.env: dict[str, str] = dict(agent.settings.get("env", {}))
        self.kill_grace_s: float = float(agent.settings.get("kill_grace", 5.0))

    def argv_for(self, spec: AttemptSpec) -> list[str]:
        """Return the argv with `{prompt}` / `{prompt_file}` substituted or appended."""
        tokens = {"{prompt}": spec.prompt, "{prompt_file}": str(spec.prompt_file)}
        argv = list(self.argv)
        used = False
        for index, arg in enumerate(argv):
            for token, value in tokens.items():
                if token in arg:
                    argv[index] = arg.replace(token, value)
                    used = True
        if not used and self.prompt_via == "arg":
            argv.append(spec.prompt)
        elif not used and self.prompt_via == "file":
            argv.append(str(spec.prompt_file))
        return argv

    def env_for(self, spec: AttemptSpec) -> dict[str, str]:
        """Return the agent's environment: orch's, the agent's `env`, and ORCH_*."""
        env = dict(os.environ)
        env.update(self.env)
        env.update(
            {
                "ORCH_STAGE": spec.stage,
                "ORCH_PARTITION": spec.partition,
                "ORCH_ATTEMPT": str(spec.attempt),
                "ORCH_OUTPUT_DIR": str(spec.work_dir),
                "ORCH_PROMPT_FILE": str(spec.prompt_file),
                "ORCH_PROJECT_ROOT": str(spec.project_root),
            }
        )
        return env

    async def run(self, spec: AttemptSpec) -> AttemptResult:
        """Start the agent, feed the prompt, wait; kill the group if cancelled."""
        stdin_prompt = self.prompt_via == "stdin" and not any(
            "{prompt}" in a or "{prompt_file}" in a for a in self.argv
        )
        with open(spec.log_path, "ab") as log:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.argv_for(spec),
                    cwd=spec.work_dir,
                    stdin=asyncio.subprocess.PIPE if stdin_prompt else asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=self.env_for(spec),
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as err:
                return AttemptResult(False, f"cannot start {self.argv[0]!r}: {err.strerror}", "agent_error")
            try:
                await proc.communicate(spec.prompt.encode("utf-8") if stdin_prompt else None)
            except asyncio.CancelledError:
                await self._terminate(proc)
                raise
            finally:
                _kill_group(proc.pid, signal.SIGKILL)
        return self.result(proc.returncode, spec)

    def result(self, returncode: int | None, spec: AttemptSpec) -> AttemptResult:
        """Turn an exit status into an AttemptResult (the log's last line as detail)."""
        if returncode == 0:
            return AttemptResult(True, exit_code=0)
        tail = _last_line(spec.log_path)
        if returncode is not None and returncode < 0:
            name = signal.Signals(-returncode).name
            error = f"killed by signal {-returncode} ({name})"
        else:
            error = f"exit code {returncode}"
        return AttemptResult(False, f"{error}: {tail}" if tail else error, "exit", returncode)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """TERM the whole group, wait `kill_grace_s`, then KILL it."""
        _kill_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.shield(asyncio.wait_for(proc.wait(), self.kill_grace_s))
        _kill_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.shield(asyncio.wait_for(proc.wait(), 5))

    async def aclose(self) -> None:
        """Nothing to release."""


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _last_line(path: Any) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - _LOG_TAIL_BYTES))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
