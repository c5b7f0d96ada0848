"""`orch watch` beside a run (in a real terminal, via tmux), and `orch watch --plan [--run]` (issue 13)."""

from __future__ import annotations

import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import BLUEPRINT
from tests.e2e.test_execution import (
    kill_leftover_agents,  # noqa: F401 - autouse fixture
    wait_until,
)

needs_tmux = pytest.mark.skipif(
    subprocess.run(["sh", "-c", "command -v tmux"], capture_output=True).returncode != 0,
    reason="tmux is not installed (.ci/run installs it)",
)


class Terminal:
    """One tmux session on a private server socket, running a shell command."""

    def __init__(self, project, command: str) -> None:
        self.socket = f"orch-test-{uuid.uuid4().hex[:8]}"
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in project.env().items() if k.isidentifier())
        script = f"cd {shlex.quote(str(project.root))} && env {env} {command}; echo WATCH-EXIT=$?; sleep 60"
        self._tmux("new-session", "-d", "-x", "120", "-y", "40", "sh", "-c", script)

    def _tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        return result.stdout

    def screen(self) -> str:
        """The visible pane, as text."""
        return self._tmux("capture-pane", "-p")

    def wait_for(self, text: str, timeout_s: float = 20.0) -> str:
        """Wait until `text` is on the screen; return the screen."""

        def shown() -> str | None:
            screen = self.screen()
            return screen if text in screen else None

        return wait_until(shown, timeout_s, what=f"{text!r} on the screen")

    def close(self) -> None:
        self._tmux("kill-server")


@pytest.fixture
def terminal() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for term in opened:
        term.close()


WATCH = f"{shlex.quote(sys.executable)} -m orch watch"


@needs_tmux
def test_watch_in_a_terminal_shows_stages_and_running_partitions_and_exits_at_run_finished(
    make_project, terminal
):
    project = make_project(n_items=3)
    project.script({"default": {"action": "sleep", "seconds": 3}})
    run = project.popen("run", "--max-parallel", "2")
    try:
        wait_until(lambda: list((project.root / "wip" / "runs").glob("*/events.jsonl")), what="the run")
        term = Terminal(project, WATCH)
        terminal.append(term)
        screen = term.wait_for("work/item0")
        assert "running" in screen
        assert "stage" in screen and "queued" in screen and "backing off" in screen
        assert "missing" in screen  # why each started
        assert "agent limits: fake=" in screen
        screen = term.wait_for("WATCH-EXIT=0", timeout_s=40)
        assert ": finished" in screen
        assert "3/3" in screen
        assert run.wait(timeout=30) == 0
    finally:
        if run.poll() is None:
            run.kill()
        run.communicate()


@needs_tmux
def test_watch_after_kill_9_of_the_run_shows_interrupted_and_exits(make_project, terminal):
    project = make_project(n_items=2)
    project.script({"default": {"action": "hang"}})
    run = project.popen("run")
    try:
        wait_until(lambda: len(project.invocations()) == 2, what="two hanging agents")
        term = Terminal(project, WATCH)
        terminal.append(term)
        term.wait_for("work/item02")
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)  # reaped, as a shell would: a zombie still looks alive
        screen = term.wait_for("WATCH-EXIT=0", timeout_s=20)
        assert ": interrupted" in screen
        assert "orchestrator is gone" in screen
    finally:
        if run.poll() is None:
            run.kill()
        run.communicate()


def test_watch_without_a_terminal_prints_plain_lines_until_run_finished(make_project):
    project = make_project(n_items=2)
    project.script(
        {"default": {"action": "sleep", "seconds": 1.5}, "item02": {"action": "fail", "message": "nope"}}
    )
    run = project.popen("run")
    try:
        wait_until(lambda: list((project.root / "wip" / "runs").glob("*/events.jsonl")), what="the run")
        result = project.orch("watch", timeout=40, check=True)
    finally:
        run.communicate(timeout=30)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("run ")
    assert "\x1b[" not in result.stdout  # no terminal codes
    assert "done work/item01 #1" in lines
    assert "run finished: not ok" in lines
    assert lines[-3].endswith("failed, elapsed " + lines[-3].rsplit("elapsed ", 1)[1])
    assert "  work: 1/2 done, 0 running, 0 queued, 0 backing off, 1 failed, 0 stale" in lines
    assert any(line.startswith("  failed work/item02 attempt 1: exit: ") and "nope" in line for line in lines)


def test_watch_of_a_finished_run_prints_the_final_screen_and_exits(make_project):
    project = make_project(n_items=2)
    project.orch("run", check=True)
    result = project.orch("watch", check=True)
    assert (
        result.stdout.splitlines()[1]
        == "  work: 2/2 done, 0 running, 0 queued, 0 backing off, 0 failed, 0 stale"
    )
    assert ": finished, elapsed" in result.stdout.splitlines()[0]


def test_watch_without_runs_is_a_usage_error(make_project):
    project = make_project(n_items=1)
    result = project.orch("watch")
    assert result.returncode == 2
    assert "no run yet" in result.stderr


class Lines:
    """Collects a process's stdout lines in a thread, with arrival times."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, prefix: str, after: int = 0, timeout_s: float = 20.0) -> tuple[int, float, str]:
        """Wait for a line starting with `prefix` at index >= `after`; return (index, time, line)."""

        def found() -> tuple[int, float, str] | None:
            for i, (at, line) in enumerate(self.lines[after:], after):
                if line.startswith(prefix):
                    return i, at, line
            return None

        return wait_until(found, timeout_s, what=f"a line {prefix!r}; got {[t for _, t in self.lines]}")


def stop(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C the process (SIGINT), wait for it, and return its stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    proc.stderr.close()
    return stderr


def test_watch_plan_reports_a_blueprint_edit_within_a_second_and_survives_a_broken_file(make_project):
    project = make_project(n_items=2)
    project.orch("run", check=True)
    proc = project.popen("watch", "--plan")
    lines = Lines(proc)
    try:
        index, _, first = lines.wait_for("watching orch.yaml, agents/, references/")
        assert first.endswith("2 partitions, 0 to run")
        latencies = []
        original = (project.root / "agents/work.md").read_text()
        for n in range(3):  # edit, then revert: each save changes the plan
            saved = time.monotonic()
            project.write("agents/work.md", original + f"Edit {n}.\n")
            index, at, line = lines.wait_for("replanned in", after=index + 1)
            latencies.append(at - saved)
            assert line.endswith(": 2 to run (2 new)")
            index = lines.wait_for("  stale work/item01: stale: prompt changed", after=index)[0]
            saved = time.monotonic()
            project.write("agents/work.md", original)
            index, at, line = lines.wait_for("replanned in", after=index + 1)
            latencies.append(at - saved)
            assert line.endswith(": 0 to run (0 new)")
        median_s = statistics.median(latencies)
        print(f"orch watch --plan: a blueprint save reported in {median_s * 1000:.0f} ms (median of 6)")
        assert median_s < 1.0, latencies

        good = (project.root / "orch.yaml").read_text()
        project.write("orch.yaml", "stages: [\n")
        index, _, error = lines.wait_for("error: ", after=index + 1)
        assert "orch.yaml" in error
        assert proc.poll() is None  # still watching
        project.write("orch.yaml", good)
        lines.wait_for("replanned in", after=index + 1)
    finally:
        stderr = stop(proc)
    assert proc.returncode == 130
    assert "Traceback" not in stderr


def test_watch_plan_run_runs_what_went_stale_and_queues_one_follow_up_run(make_project):
    project = make_project(n_items=2)
    project.orch("run", check=True)
    project.script({"default": {"action": "sleep", "seconds": 2}})
    proc = project.popen("watch", "--plan", "--run")
    lines = Lines(proc)
    try:
        index, _, _ = lines.wait_for("watching orch.yaml")
        project.write(
            "references/items.yaml", "items:\n  - ITEM_ID: item01\n  - ITEM_ID: item02\n  - ITEM_ID: item03\n"
        )
        index = lines.wait_for("starting: orch run", after=index)[0]
        wait_until(lambda: project.invocations()[2:], what="item03's agent to start")
        before = index
        for n in range(2):  # two edits while the run runs: one follow-up run
            project.write("agents/work.md", BLUEPRINT + f"Edit {n}.\n")
            index = lines.wait_for("replanned in", after=index + 1)[0]
        lines.wait_for("a run is in progress: one follow-up run queued", after=before)
        index, _, first = lines.wait_for("run finished", after=index, timeout_s=30)
        assert first == "run finished (exit 0)"  # the running attempt was not killed
        index = lines.wait_for("starting: orch run", after=index)[0]
        index, _, second = lines.wait_for("run finished", after=index, timeout_s=30)
        assert second == "run finished (exit 0)"
        time.sleep(0.5)  # the runs' own writes must not start another run
        texts = [t for _, t in lines.lines]
    finally:
        stderr = stop(proc)
    assert texts.count("a run is in progress: one follow-up run queued") == 1
    assert texts.count("starting: orch run") == 2
    assert "Traceback" not in stderr
    runs = sorted(i["partition"] for i in project.invocations())
    assert runs == ["item01", "item01", "item02", "item02", "item03", "item03"]
    assert (project.root / "data/work/item03/out.md").exists()
