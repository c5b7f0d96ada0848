"""Pre-flight: check every agent in scope once, before anything starts.

A run checks the agents it is about to use (`check_agents`) and stops with
exit 2 and one message per broken agent before a staging directory, an
attempt folder or an event log exists. `orch doctor` runs the same checks on
demand and adds versions. Checks: the command is found (a relative path with
a `/` resolves against the project root), the API key variable is set, the
endpoint answers `GET {base_url}/models` within `PROBE_TIMEOUT_S`, and a
reply-mode agent (one reply file) can satisfy every stage it runs.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orch.config.project import AgentConfig, Project
from orch.config.stages import Stage
from orch.config.workspace import Workspace
from orch.engine.plan import PartitionState, Planner, Status
from orch.errors import ConfigError

#: Bound on the endpoint probe: long enough for a loaded local server, short
#: enough that a dead one costs seconds, not a run.
PROBE_TIMEOUT_S = 3.0
#: Bound on `<command> --version` (doctor only).
VERSION_TIMEOUT_S = 5.0
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class PreflightFailed(ConfigError):
    """One or more agents in scope cannot work (exit 2, before anything starts)."""


@dataclass(frozen=True)
class AgentCheck:
    """The pre-flight verdict on one agent.

    Attributes:
        agent: Agent name.
        backend: Its backend.
        stages: Stages in scope that run with it.
        problems: One line per failed check; empty when the agent is ready.
        version: `<command> --version`'s first line, the SDK version, or None.
    """

    agent: str
    backend: str
    stages: tuple[str, ...]
    problems: tuple[str, ...]
    version: str | None = None

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.problems

    def to_json(self) -> dict[str, object]:
        """Return the verdict as a JSON-ready dict."""
        return {
            "agent": self.agent,
            "backend": self.backend,
            "stages": list(self.stages),
            "ok": self.ok,
            "problems": list(self.problems),
            "version": self.version,
        }


def run_scope(
    planner: Planner, names: Sequence[str], only: Sequence[str] | None, retry_failed: bool, force: bool
) -> dict[str, list[Stage]]:
    """Return agent name -> stages for the stages with a partition a run would start.

    The pre-flight checks exactly these agents: an agent whose partitions are
    all complete (or kept) is not needed, so it cannot stop the run.
    """
    scope: dict[str, list[Stage]] = {}
    for name in names:
        stage = planner.ws.project.stage(name)
        for state in planner.stage_states(name):
            if only and state.partition.id not in only:
                continue
            if force or (state.status is Status.FAILED if retry_failed else _would_run(state)):
                scope.setdefault(planner.agent_for(stage).name, []).append(stage)
                break
    return scope


def _would_run(state: PartitionState) -> bool:
    return not state.is_complete and state.kept is None and not state.is_held


def doctor_scope(ws: Workspace, stages: Sequence[str], agent: str | None = None) -> dict[str, list[Stage]]:
    """Return agent name -> stages for `orch doctor`.

    Named stages (or all, with `agent` / $ORCH_AGENT): the agents they run with.
    No stage and no override: every agent in orch.yaml, each with the stages
    that run with it.
    """
    planner = Planner(ws, agent)
    names = [ws.project.stage(s).name for s in stages] or list(ws.project.stages)
    scope: dict[str, list[Stage]] = {}
    if not stages and planner.agent_override is None:
        scope = {name: [] for name in ws.project.agents}
    for name in names:
        stage = ws.project.stage(name)
        scope.setdefault(planner.agent_for(stage).name, []).append(stage)
    return scope


def resolve_command(argv0: str, root: Path, path_env: str | None = None) -> str | None:
    """Return the executable an agent's `command[0]` names, or None if not found.

    A name with a `/` is a path: absolute as is, relative against the project
    root (never the staging directory the agent runs in). A bare name is
    looked up on PATH (`path_env`, default `$PATH`).
    """
    if "/" in argv0:
        candidate = argv0 if os.path.isabs(argv0) else str(root / argv0)
        return candidate if os.path.isfile(candidate) and os.access(candidate, os.X_OK) else None
    return shutil.which(argv0, path=path_env)


def check_agents(
    project: Project,
    scope: Mapping[str, Sequence[Stage]],
    versions: bool = False,
    environ: Mapping[str, str] | None = None,
    on_workers: Collection[str] = (),
) -> list[AgentCheck]:
    """Check each agent of `scope` (agent name -> the stages it runs), in name order.

    Args:
        project: The loaded project.
        scope: Agents to check and the stages each one runs in scope.
        versions: Also ask each agent for its version (`orch doctor`).
        environ: Environment to check keys and PATH in (default os.environ).
        on_workers: Command agents whose attempts run only on cluster workers: their
            command is not looked up here (the Dask executor looks it up on the workers).
    """
    env = os.environ if environ is None else environ
    checks = []
    for name in sorted(scope):
        agent = project.agent(name)
        stages = tuple(scope[name])
        problems = _problems(project, agent, stages, env, agent.name in on_workers)
        version = _version(project, agent, env) if versions and not problems else None
        checks.append(
            AgentCheck(name, agent.backend, tuple(s.name for s in stages), tuple(problems), version)
        )
    return checks


def raise_for_problems(checks: Sequence[AgentCheck], doctor: bool = False) -> None:
    """Raise PreflightFailed naming every problem: one line per agent.

    Args:
        checks: The verdicts.
        doctor: Word the message for `orch doctor` rather than a run.

    Raises:
        PreflightFailed: any check failed.
    """
    bad = [c for c in checks if not c.ok]
    if not bad:
        return
    lines = "\n  ".join(f"agent {c.agent}: {'; and '.join(c.problems)}" for c in bad)
    if doctor:
        raise PreflightFailed(
            f"doctor: {len(bad)} agent(s) cannot run:\n  {lines}",
            "fix orch.yaml or the environment, then run orch doctor again",
        )
    raise PreflightFailed(
        f"pre-flight: {len(bad)} agent(s) cannot run; nothing was started:\n  {lines}",
        "fix orch.yaml or the environment, then check with: orch doctor",
    )


def _problems(
    project: Project,
    agent: AgentConfig,
    stages: Sequence[Stage],
    env: Mapping[str, str],
    on_workers: bool = False,
) -> list[str]:
    settings = agent.settings
    problems: list[str] = []
    if agent.backend == "command" and not on_workers:
        argv0 = str(settings["command"][0])
        path_env = dict(settings.get("env", {})).get("PATH", env.get("PATH"))
        if resolve_command(argv0, project.root, path_env) is None:
            problems.append(_not_found(argv0, project.root, agent))
    elif agent.backend == "openai":
        key_env = settings.get("api_key_env")
        key = env.get(key_env) if key_env else None
        if key_env and not key:
            problems.append(
                f"environment variable {key_env} (api_key_env) is not set; export the API key in it, "
                "or set api_key_env: null for an endpoint without keys"
            )
        else:
            problem = probe_endpoint(settings.get("base_url") or DEFAULT_BASE_URL, key)
            if problem:
                problems.append(problem)
    reply_file = settings.get("reply_file")
    if reply_file and (agent.backend == "command" or settings.get("mode") == "reply"):
        problems += [
            f"writes one file ({reply_file}, its reply) but stage {stage.name} expects {other}; use an "
            "agent that writes files (mode: tools, or an agent CLI) for this stage"
            for stage in stages
            if (other := _unsatisfied(stage, str(reply_file)))
        ]
    return problems


def _not_found(argv0: str, root: Path, agent: AgentConfig) -> str:
    where = f"orch.yaml:{agent.line}: agents.{agent.name}.command"
    if "/" not in argv0:
        return f"command {argv0!r} not found on PATH ({where}); install it, or give its path"
    resolved = argv0 if os.path.isabs(argv0) else str(root / argv0)
    return (
        f"command {argv0!r} not found or not executable at {resolved} ({where}; a relative "
        "path is resolved against the project root)"
    )


def _unsatisfied(stage: Stage, reply_file: str) -> str:
    """Name the expected files a single reply file cannot provide ("" if none)."""
    missing = []
    for rule in stage.expect:
        if rule.file is not None and rule.file != reply_file:
            missing.append(rule.file)
        elif rule.glob is not None and (rule.min_count > 1 or not fnmatch.fnmatch(reply_file, rule.glob)):
            missing.append(f"{rule.glob} (at least {rule.min_count})")
    return ", ".join(missing)


def probe_endpoint(base_url: str, key: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """GET `{base_url}/models` once; return a problem line, or "" if it answers.

    Any HTTP answer counts as alive (some servers have no /models), except
    401 and 403: the key is refused, so every request would fail.
    """
    url = base_url.rstrip("/") + "/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return ""
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return f"endpoint {url} refused the API key (HTTP {err.code}); check the key's value"
        return ""
    except (urllib.error.URLError, OSError, ValueError) as err:
        why = getattr(err, "reason", err)
        return (
            f"endpoint {url} does not answer within {timeout_s:g}s ({why}); "
            "is the server running and base_url right?"
        )


def _version(project: Project, agent: AgentConfig, env: Mapping[str, str]) -> str | None:
    if agent.backend == "openai":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"openai SDK {version('openai')}"
        except PackageNotFoundError:
            return None
    if agent.backend != "command":
        from orch import __version__

        return f"orch {__version__}"
    argv0 = str(agent.settings["command"][0])
    executable = resolve_command(argv0, project.root, env.get("PATH"))
    return _run_version(executable) if executable else None


def _run_version(executable: str) -> str | None:
    """First output line of `<executable> --version`, run in an empty temp dir, bounded."""
    with tempfile.TemporaryDirectory(prefix="orch-doctor-") as cwd:
        try:
            proc = subprocess.Popen(
                [executable, "--version"],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError:
            return None
        try:
            out, _ = proc.communicate(timeout=VERSION_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return f"(no answer to --version within {VERSION_TIMEOUT_S:g}s)"
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
    lines = [line.strip() for line in out.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[0][:120] if lines else None
