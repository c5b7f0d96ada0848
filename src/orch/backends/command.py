"""The `command` backend: run any headless agent CLI as a subprocess.

The agent runs in the attempt's staging directory, in its own process group
(killed whole: TERM, grace, KILL, on timeout or interrupt; whatever it left
running is ended with the attempt, see `orch.executors.processes`), with the prompt
on stdin (or as an argument, or a file path), stdin otherwise `/dev/null`,
stdout and stderr appended to `.orch/agent.log`, and `ORCH_*` variables in
its environment (DESIGN.md §6). Exit 0 alone never proves success.

Presets (`preset: claude | codex | llm`) fill in the command, the usage
parser and the environment of a known agent CLI; explicit keys override them.
A usage parser (`orch.backends.usage`) reads tokens, cost and the agent's own
error report from the log; `reply_file` captures stdout into an output file
for CLIs that print their reply (`llm`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import stat
from pathlib import Path
from typing import Any

from orch.backends import AttemptResult, AttemptSpec
from orch.backends.agent_pipes import communicate
from orch.backends.usage import PARSERS, AgentReport, parse_report
from orch.config.node import parse_duration
from orch.config.project import AgentConfig
from orch.errors import ConfigError, did_you_mean
from orch.executors.processes import Containment
from orch.redact import Redactor

SETTINGS = {
    "command": "argv list (or a shell-style string) of the agent CLI",
    "preset": "claude, codex or llm: defaults for command, usage, prompt_via and env",
    "args": "extra arguments added to the command (before a final '-'), e.g. [--model, opus]",
    "usage": "parser for tokens, cost and errors in the output: claude-json, codex-json or none",
    "reply_file": "file in the output directory that receives the agent's stdout (for llm)",
    "prompt_via": "stdin (default), arg (last argument or {prompt}), or file "
    "(path as last argument or {prompt_file})",
    "env": "extra environment variables (mapping of strings)",
    "secret_env": "names of environment variables (in env or orch's own) whose values orch "
    "redacts from everything it writes, e.g. [ANTHROPIC_API_KEY]",
    "kill_grace": "seconds between SIGTERM and SIGKILL (default 5s)",
}
#: `usage` and `preset` only change how orch reads the run (the preset's
#: expansion — command, env — is fingerprinted itself).
NOT_FINGERPRINTED = frozenset({"kill_grace", "usage", "preset", "secret_env"})
PROMPT_VIA = ("stdin", "arg", "file")
#: Known agent CLIs run headless. Sources: `claude -p --output-format json`
#: prints one result object (Claude Code docs, "Run Claude Code
#: programmatically"); DISABLE_TELEMETRY and
#: CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC switch off telemetry and other
#: non-essential traffic (Claude Code docs, "Environment variables");
#: `--permission-mode acceptEdits` lets it write files without asking.
#: `codex exec --json` prints JSONL events and reads the prompt from stdin when
#: it is "-"; it refuses to run outside a git repository without
#: `--skip-git-repo-check` and is read-only without `--sandbox workspace-write`
#: (Codex docs, "Non-interactive mode"). `llm` reads the prompt from stdin and
#: prints the reply; `--no-log` keeps it out of llm's own SQLite log.
PRESETS: dict[str, dict[str, Any]] = {
    "claude": {
        "command": ("claude", "-p", "--output-format", "json", "--permission-mode", "acceptEdits"),
        "usage": "claude-json",
        "prompt_via": "stdin",
        "env": {"DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"},
    },
    "codex": {
        "command": (
            "codex", "exec", "--json", "--skip-git-repo-check", "--sandbox", "workspace-write", "-",
        ),
        "usage": "codex-json",
        "prompt_via": "stdin",
        "env": {},
    },
    "llm": {"command": ("llm", "--no-log"), "usage": "none", "prompt_via": "stdin", "env": {}},
}  # fmt: skip
_LOG_TAIL_BYTES = 4096


def normalize(settings: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate command settings into canonical form (argv as a tuple, preset expanded).

    A preset fills `command`, `usage`, `prompt_via` and `env` where they are
    not given (explicit `env` entries override the preset's one by one);
    `args` are then added to the command, before a final "-" (stdin marker).

    Raises:
        ConfigError: an unknown preset or usage parser, a missing/empty command,
            unknown prompt_via, bad args, env, grace or reply_file, or the llm
            preset without reply_file.
    """
    preset = settings.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(
                f"{where} preset: unknown preset {preset!r}{did_you_mean(str(preset), PRESETS)}",
                f"presets: {', '.join(PRESETS)}",
            )
        defaults = PRESETS[preset]
        for key in ("command", "usage", "prompt_via"):
            settings.setdefault(key, defaults[key])
        env = settings.get("env", {})
        if isinstance(env, dict):
            settings["env"] = {**defaults["env"], **env}
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
            "give the agent CLI and its arguments as a YAML list, or a preset: claude, codex or llm",
        )
    argv = tuple(str(a) for a in command)
    if "args" in settings:
        args = settings["args"]
        if isinstance(args, str):
            args = shlex.split(args)
        if not isinstance(args, list | tuple) or not all(isinstance(a, str | int | float) for a in args):
            raise ConfigError(f"{where} args: expected a list of arguments like [--model, opus]")
        settings["args"] = tuple(str(a) for a in args)
        extra = settings["args"]
        argv = (*argv[:-1], *extra, "-") if argv[-1] == "-" else (*argv, *extra)
    settings["command"] = argv
    via = settings.setdefault("prompt_via", "stdin")
    if via not in PROMPT_VIA:
        raise ConfigError(f"{where} prompt_via: expected one of {', '.join(PROMPT_VIA)}, got {via!r}")
    usage = settings.get("usage", "none")
    if usage not in PARSERS:
        raise ConfigError(
            f"{where} usage: unknown parser {usage!r}{did_you_mean(str(usage), PARSERS)}",
            f"parsers: {', '.join(PARSERS)}",
        )
    env = settings.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
        raise ConfigError(f"{where} env: expected a mapping of NAME: value")
    settings["env"] = {k: str(v) for k, v in env.items()}
    secret = settings.get("secret_env", [])
    if isinstance(secret, str):
        secret = [secret]
    if not isinstance(secret, list | tuple) or not all(isinstance(n, str) and n.strip() for n in secret):
        raise ConfigError(
            f"{where} secret_env: expected a list of environment variable names like [ANTHROPIC_API_KEY]",
            "name the variables; their values never go in orch.yaml",
        )
    settings["secret_env"] = tuple(secret)
    settings["kill_grace"] = parse_duration(settings.get("kill_grace", 5), f"{where} kill_grace")
    if "reply_file" in settings:
        settings["reply_file"] = check_relative_file(settings["reply_file"], f"{where} reply_file")
    elif preset == "llm":
        raise ConfigError(
            f"{where} reply_file: the llm preset prints its reply on stdout, so it needs reply_file",
            "name the output file that receives the reply, e.g. reply_file: findings.md",
        )
    return settings


def check_relative_file(value: Any, where: str) -> str:
    """Return `value` if it is a safe file path inside an output directory.

    Raises:
        ConfigError: not a string, empty, absolute, with `..`, a NUL, or inside `.orch/`.
    """
    parts = value.replace("\\", "/").split("/") if isinstance(value, str) else []
    if (
        not isinstance(value, str)
        or not value.strip()
        or value.startswith("/")
        or "\0" in value
        or any(part in ("", ".", "..") for part in parts)
        or parts[0] == ".orch"
    ):
        raise ConfigError(
            f"{where} expected a relative file path inside the output directory, got {value!r}",
            "use a path like findings.md or notes/summary.md (no '..', not under .orch/)",
        )
    return value


def create(agent: AgentConfig) -> CommandBackend:
    """Return a command backend for `agent`."""
    return CommandBackend(agent)


def _executable(name: str, root: Path, path_env: str | None) -> str | None:
    """Resolve argv[0]: a bare name on PATH; a relative path against the project
    root `root` (not the staging directory the agent runs in; orch.engine.preflight)."""
    if os.sep in name:
        candidate = name if os.path.isabs(name) else os.path.join(root, name)
        return candidate if os.path.isfile(candidate) and os.access(candidate, os.X_OK) else None
    return shutil.which(name, path=path_env)


class CommandBackend:
    """Runs one agent CLI process per attempt."""

    def __init__(self, agent: AgentConfig) -> None:
        self.agent = agent
        self.argv: tuple[str, ...] = agent.settings["command"]
        self.prompt_via: str = agent.settings.get("prompt_via", "stdin")
        self.env: dict[str, str] = dict(agent.settings.get("env", {}))
        self.kill_grace_s: float = float(agent.settings.get("kill_grace", 5.0))
        self.usage: str = agent.settings.get("usage", "none")
        self.reply_file: str | None = agent.settings.get("reply_file")
        # every process an agent starts ends with its attempt (orch.executors.processes);
        # the executor shares one Containment between backends (use_containment)
        self._containment = Containment()
        self._own_containment = True
        self._which: dict[str, str | None] = {}
        self.redactor = Redactor.for_agents([agent])

    def use_containment(self, containment: Containment) -> None:
        """Share the run's `containment` (one per run knows every live agent)."""
        if self._own_containment:
            self._containment.close()
        self._containment, self._own_containment = containment, False

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
        prompt = spec.prompt.encode("utf-8") if stdin_prompt else None
        log_start = _size(spec.log_path)
        env = self.env_for(spec)
        argv = self.argv_for(spec)
        if os.sep in argv[0]:
            executable = _executable(argv[0], spec.project_root, None)
        else:  # PATH does not change during a run: look each name up once
            if argv[0] not in self._which:
                self._which[argv[0]] = _executable(argv[0], spec.project_root, env.get("PATH"))
            executable = self._which[argv[0]]
        if executable is None:
            return AttemptResult(
                False,
                f"cannot start {argv[0]!r}: No such file or directory (or not executable)",
                "agent_error",
            )
        contain = self._containment
        with open(spec.log_path, "ab") as log:
            try:
                with contain.spawning():
                    proc = await asyncio.create_subprocess_exec(
                        executable,
                        *argv[1:],
                        cwd=spec.work_dir,
                        stdin=asyncio.subprocess.PIPE if stdin_prompt else asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.PIPE if self.reply_file else log,
                        stderr=log,
                        env=env,
                        start_new_session=True,
                    )
                    contain.started(spec.work_dir, proc.pid)
            except OSError as err:
                return AttemptResult(False, f"cannot start {argv[0]!r}: {err.strerror}", "agent_error")
            try:
                reply = spec.work_dir / self.reply_file if self.reply_file else None
                await communicate(proc, prompt, reply, log, self.kill_grace_s)
            except asyncio.CancelledError:
                await self._terminate(proc)
                self._redact_log(spec, log_start)  # no await: the task is being cancelled
                raise
            finally:
                _kill_group(proc.pid, signal.SIGKILL)
                killed = await contain.ended(spec.work_dir, proc.pid)
        _drop_stdin_cycle(proc)
        if self.redactor:  # no thread hop per attempt when there is nothing to redact
            await asyncio.to_thread(self._redact_log, spec, log_start)
        result = self.result(proc.returncode, spec, log_start)
        if killed:  # after reading the log: its last line is the agent's, for errors
            _append(spec.log_path, f"orch: killed {len(killed)} process(es) the agent left running\n")
        return result

    def _redact_log(self, spec: AttemptSpec, log_start: int) -> None:
        """Rewrite this attempt's part of `agent.log` without the agent's secrets (blocking).

        Runs once the agent has ended, before the log is parsed, checked or
        promoted. A log that cannot be rewritten is removed rather than kept
        with a secret in it.
        """
        if not self.redactor:
            return
        try:
            self.redactor.file(spec.log_path, log_start)
        except OSError:
            with contextlib.suppress(OSError):
                spec.log_path.unlink()

    def report(self, spec: AttemptSpec, log_start: int = 0) -> AgentReport:
        """Parse the attempt's log (from byte `log_start`) with the `usage` parser."""
        if self.usage == "none":
            return AgentReport()
        try:
            with os.fdopen(_open_log(spec.log_path, os.O_RDONLY), "rb") as handle:
                handle.seek(log_start)
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return AgentReport()
        return parse_report(self.usage, text)

    def result(self, returncode: int | None, spec: AttemptSpec, log_start: int = 0) -> AttemptResult:
        """Turn an exit status and the agent's own report into an AttemptResult.

        The agent's report wins over exit 0: claude's `is_error: true` or a
        failed codex turn is an `agent_error` with the agent's message. Other
        failures carry the log's last line as detail.
        """
        report = self.report(spec, log_start)
        if report.error:
            return AttemptResult(False, report.error, "agent_error", returncode, report.usage)
        if returncode == 0:
            if self.usage != "none" and not report.found:
                _append(spec.log_path, f"orch: no {self.usage} output found; usage unknown\n")
            return AttemptResult(True, exit_code=0, usage=report.usage)
        tail = _last_line(spec.log_path)
        if returncode is not None and returncode < 0:
            name = signal.Signals(-returncode).name
            error = f"killed by signal {-returncode} ({name})"
        else:
            error = f"exit code {returncode}"
        return AttemptResult(False, f"{error}: {tail}" if tail else error, "exit", returncode, report.usage)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """TERM the whole group, wait `kill_grace_s`, then KILL it."""
        _kill_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.shield(asyncio.wait_for(proc.wait(), self.kill_grace_s))
        _kill_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.shield(asyncio.wait_for(proc.wait(), 5))

    async def aclose(self) -> None:
        """Let the reaper go, unless the executor owns it (every agent has ended by now)."""
        if self._own_containment:
            self._containment.close()


def _size(path: Any) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _open_log(path: Any, flags: int) -> int:
    """Open the attempt's log; never through a link the agent made, never blocking on a FIFO.

    Raises:
        OSError: `.orch` or the log is a symlink, or the log is not a regular file.
    """
    if os.path.islink(os.path.dirname(path)):
        raise OSError(40, "a symlink", os.path.dirname(path))
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(22, "not a regular file", str(path))
    return fd


def _append(path: Any, text: str) -> None:
    with (
        contextlib.suppress(OSError),
        os.fdopen(_open_log(path, os.O_WRONLY | os.O_APPEND), "a", encoding="utf-8") as handle,
    ):
        handle.write(text)


def _drop_stdin_cycle(proc: asyncio.subprocess.Process) -> None:
    """Break asyncio's stdin writer <-> protocol reference cycle once the agent ended.

    Left alone, each attempt's pipe objects (~1.5 KB) wait for the cyclic
    collector, which orch's gc thresholds make rare: a run's memory grew with
    every partition (bench/fanout.py --memory).
    """
    protocol = getattr(proc, "_protocol", None)
    if getattr(protocol, "stdin", None) is not None:
        protocol.stdin = None  # type: ignore[union-attr]


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _last_line(path: Any) -> str:
    try:
        with os.fdopen(_open_log(path, os.O_RDONLY), "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - _LOG_TAIL_BYTES))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
