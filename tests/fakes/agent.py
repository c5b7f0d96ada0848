#!/usr/bin/env python3
"""A fake headless agent CLI whose behaviour is scripted per partition and attempt.

orch starts it like any agent CLI: cwd = the staging directory, prompt on stdin,
ORCH_* in the environment. The script is JSON at $FAKE_AGENT_SCRIPT:

    {"default": {"action": "succeed"},
     "1.3_x": [{"action": "fail", "exit": 1}, {"action": "succeed"}]}

A list gives one behaviour per attempt of this run's invocations (the last one
repeats); a mapping applies to every attempt. Actions:

    succeed          write the files (default: out.md with '## Result') and exit 0
    fail             print `message` to stderr and exit `exit` (default 1)
    hang             start a grandchild, write both pids to `pids.txt`, sleep forever
    partial          write only the first file, truncated, then exit 0
    crash            write half of the first file, then SIGKILL itself
    daemon           leave a writer behind that appends to the first file every
                     20 ms: `how` setsid (default), double_fork or env_cleared
                     (setsid, no environment, cwd /); its pid goes to
                     $FAKE_AGENT_LOG.daemons; then `then`: succeed, fail or hang
    sleep            sleep `seconds`, then succeed

Hostile actions write the files like `succeed`, then leave something behind:

    nonutf8_name     a file whose name is not UTF-8 (b"bad-\\xff.txt")
    fifo             a FIFO `pipe`           socket    a listening Unix socket `sock`
    device           a character device `null` (root only)
    deep_tree        directories nested `depth` (default 2000) levels deep
    rm_cwd           removes its own working directory (the staging directory)
    huge_file        `name` (default out.md) grown sparse to `bytes` (default 10 GB)
    symlink_meta     replaces `what` (".orch", ".orch/manifest.json", ".orch/agent.log",
                     ".orch/prompt.md", or ".orch/error.json") by a symlink to `target`
    fill_disk        writes `fill` until the disk is full (ENOSPC ignored)
    fifo_meta        replaces `what` (e.g. ".orch/agent.log") by a FIFO, exits `exit` (default 0)

Every invocation appends a JSON line {partition, stage, attempt, pid, ts, action}
to $FAKE_AGENT_LOG, so tests can count invocations per partition. An invocation
that exits by itself (not hang, not crash) also appends {partition, pid, ts, exit}
to $FAKE_AGENT_LOG.exits as its last act, so tests can check that agent
lifetimes did not overlap.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_FILES = {"out.md": "## Result\n\nFake agent output for {partition}.\n"}


#: Variables a fake CLI records, to prove what orch passed on (presets' env).
WATCHED_ENV = ("DISABLE_TELEMETRY", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "FAKE_EXTRA")


def log_invocation(partition: str, action: str, prompt: str, cli: bool = False) -> None:
    """Append one JSON line to $FAKE_AGENT_LOG; `cli` adds argv and the watched env."""
    log_path = os.environ.get("FAKE_AGENT_LOG")
    if not log_path:
        return
    record = {
        "partition": partition,
        "stage": os.environ.get("ORCH_STAGE"),
        "attempt": os.environ.get("ORCH_ATTEMPT"),
        "pid": os.getpid(),
        "ts": time.time(),
        "action": action,
        "prompt_bytes": len(prompt),
        "cwd": os.getcwd(),
    }
    if cli:
        record["argv"] = sys.argv[1:]
        record["env"] = {k: v for k, v in os.environ.items() if k in WATCHED_ENV}
    with open(log_path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def current_step() -> tuple[str, dict]:
    """Return this invocation's partition id and its scripted behaviour."""
    partition = os.environ.get("ORCH_PARTITION", "?")
    script_path = os.environ.get("FAKE_AGENT_SCRIPT")
    script = json.loads(Path(script_path).read_text()) if script_path else {}
    return partition, behaviour(script, partition, os.environ.get("FAKE_AGENT_LOG"))


def behaviour(script: dict, partition: str, log_path: str | None) -> dict:
    plan = script.get(partition, script.get("default", {"action": "succeed"}))
    if isinstance(plan, dict):
        return plan
    previous = 0
    if log_path and os.path.exists(log_path):
        with open(log_path, encoding="utf-8") as handle:
            previous = sum(1 for line in handle if json.loads(line)["partition"] == partition)
    return plan[min(previous, len(plan) - 1)]


def main() -> int:
    code = act()
    log_path = os.environ.get("FAKE_AGENT_LOG")
    if log_path:
        record = {"partition": os.environ.get("ORCH_PARTITION", "?"), "pid": os.getpid(), "ts": time.time()}
        with open(log_path + ".exits", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({**record, "exit": code}) + "\n")
    return code


def act() -> int:
    partition, step = current_step()
    action = step.get("action", "succeed")
    prompt = sys.stdin.read()
    log_invocation(partition, action, prompt)
    files = step.get("files", DEFAULT_FILES)
    print(f"fake agent: {action} for {partition}", flush=True)
    if action == "fail":
        print(step.get("message", "fake failure"), file=sys.stderr, flush=True)
        return int(step.get("exit", 1))
    if action == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        Path("pids.txt").write_text(f"{os.getpid()} {child.pid}\n")
        time.sleep(3600)
        return 0
    if action == "daemon":
        start_daemon(files, partition, step.get("how", "setsid"))
        action = step.get("then", "succeed")
        if action == "fail":
            return 1
        if action == "hang":
            time.sleep(3600)
    if action == "sleep":
        time.sleep(float(step.get("seconds", 1)))
    name, text = next(iter(files.items()))
    if action == "partial":
        Path(name).write_text(text.format(partition=partition)[:5])
        return 0
    if action == "crash":
        with open(name, "w") as handle:
            handle.write(text.format(partition=partition)[: len(text) // 2])
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    for name, text in files.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(text.format(partition=partition))
    leave_behind(action, step)
    return int(step.get("exit", 0)) if action == "fifo_meta" else 0


def leave_behind(action: str, step: dict) -> None:
    """Do what a hostile action leaves in the staging directory after its outputs."""
    if action == "nonutf8_name":
        Path(os.fsdecode(b"bad-\xff.txt")).write_text("x")
    elif action == "fifo":
        os.mkfifo("pipe")
    elif action == "socket":
        import socket

        server = socket.socket(socket.AF_UNIX)
        server.bind("sock")
        server.listen()
    elif action == "device":
        os.mknod("null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    elif action == "deep_tree":
        here = os.getcwd()
        for _ in range(int(step.get("depth", 2000))):
            os.mkdir("d")
            os.chdir("d")
        Path("leaf.md").write_text("deep\n")
        os.chdir(here)
    elif action == "rm_cwd":
        shutil.rmtree(os.getcwd())
    elif action == "huge_file":
        os.truncate(step.get("name", "out.md"), int(step.get("bytes", 10 * 1024**3)))
    elif action == "symlink_meta":
        what = Path(step.get("what", ".orch"))
        if what.is_dir() and not what.is_symlink():
            shutil.rmtree(what)
        elif what.exists() or what.is_symlink():
            what.unlink()
        what.symlink_to(step["target"])
    elif action == "fifo_meta":
        os.unlink(step["what"])
        os.mkfifo(step["what"])
    elif action == "fill_disk":
        with contextlib.suppress(OSError), open(step.get("fill", "filler.bin"), "wb") as handle:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()


#: The leftover writer: argv = pid file, output file, how.
DAEMON = """
import os, sys, time
pidfile, name, how = sys.argv[1:4]
if how == "double_fork":
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
out = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
if how == "env_cleared":
    os.chdir("/")
with open(pidfile, "a") as handle:
    handle.write(f"{os.getpid()}\\n")
while True:
    time.sleep(0.02)
    os.write(out, b"x")
"""


def start_daemon(files: dict, partition: str, how: str) -> None:
    """Write the files, then start a writer that outlives this agent; wait for its pid."""
    for name, text in files.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(text.format(partition=partition))
    pidfile = os.environ["FAKE_AGENT_LOG"] + ".daemons"
    before = Path(pidfile).read_text().count("\n") if os.path.exists(pidfile) else 0
    argv = [sys.executable, "-c", DAEMON, pidfile, os.path.abspath(next(iter(files))), how]
    env = {} if how == "env_cleared" else None
    child = subprocess.Popen(argv, env=env, start_new_session=how != "double_fork")
    if how == "double_fork":
        child.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if os.path.exists(pidfile) and Path(pidfile).read_text().count("\n") > before:
            return
        time.sleep(0.005)


if __name__ == "__main__":
    sys.exit(main())
