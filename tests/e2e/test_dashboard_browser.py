"""`orch serve` in a real browser: Debian's chromium driven by Python playwright.

The project is this repository's pipeline copied to tmp_path, run with the
offline rehearsal agent. Screenshots land in tmp_path/screenshots; with
ORCH_UPDATE_SCREENSHOT=1 the overview is also copied to docs/dashboard.png.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

CHROMIUM = shutil.which("chromium")
playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="the system chromium is not installed")


def orch_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ORCH_PROJECT", None)
    env["PYTHONPATH"] = str(REPO / "src")
    return env


def orch(root: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orch", *args],
        cwd=root,
        env=orch_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    """This repository's pipeline, run to completion with the rehearsal agent."""
    root = tmp_path / "pipeline"
    root.mkdir()
    shutil.copy(REPO / "orch.yaml", root / "orch.yaml")
    shutil.copytree(REPO / "agents", root / "agents")
    shutil.copytree(REPO / "references", root / "references")
    result = orch(root, "run")
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture
def server(pipeline: Path) -> Iterator[str]:
    """`orch serve --port 0` on the pipeline; yields its URL (read from stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "orch", "serve", "--port", "0"],
        cwd=pipeline,
        env=orch_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+/", line)
    try:
        assert match, f"no URL in {line!r}"
        yield match.group(0)
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stderr.close()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 900})
        finally:
            browser.close()


def shot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / "screenshots" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(path), full_page=False)
    return path


def test_overview_tree_partition_diff_and_a_live_chip(
    pipeline: Path, server: str, page: Any, tmp_path: Path
) -> None:
    page.goto(server)
    row = page.locator('tr[data-stage="deep_research"]')
    assert "complete 55" in row.locator(".counts").inner_text()
    assert page.locator('tr[data-stage="overall_synthesis"] .barrier').inner_text().startswith("met")
    overview_png = shot(page, tmp_path, "overview")
    if os.environ.get("ORCH_UPDATE_SCREENSHOT"):
        shutil.copy(overview_png, REPO / "docs" / "dashboard.png")

    page.goto(server + "tree")
    chips = page.locator("#tree .chip")
    statuses = set(chips.evaluate_all("els => els.map(e => e.dataset.status)"))
    assert statuses == {"complete"}
    overall = page.locator('#tree [data-key^="overall_synthesis/"]').first
    overall_key = overall.get_attribute("data-key")
    shot(page, tmp_path, "tree")

    deep = page.locator('[data-key^="deep_research/"]').first.get_attribute("data-key")
    page.goto(f"{server}p/{deep}")
    prompt, outputs = page.locator("#prompt"), page.locator("#outputs")
    assert "Deep research" in prompt.inner_text()
    assert "## Summary" in outputs.locator("pre.raw").first.text_content()
    left, right = prompt.bounding_box(), outputs.bounding_box()
    assert left["x"] + left["width"] <= right["x"] and abs(left["y"] - right["y"]) < 5  # side by side
    shot(page, tmp_path, "partition")

    blueprint = pipeline / "agents" / "06.overall_synthesizer.md"
    blueprint.write_text(blueprint.read_text() + "\nAlso name the three biggest risks.\n")
    page.goto(f"{server}p/{overall_key}")
    assert "+Also name the three biggest risks." in page.locator("#diff").inner_text()
    shot(page, tmp_path, "stale-diff")

    page.goto(server + "tree")
    chip = page.locator(f'#tree [data-key="{overall_key}"]').first
    assert chip.get_attribute("data-status") == "stale"
    page.evaluate("window.notReloaded = true")
    run = orch(pipeline, "stage", "run", "overall_synthesis")
    assert run.returncode == 0, run.stderr
    started = time.monotonic()
    page.wait_for_selector(f'#tree [data-key="{overall_key}"][data-status="complete"]', timeout=20_000)
    assert page.evaluate("window.notReloaded") is True
    assert "st-complete" in chip.get_attribute("class")
    assert time.monotonic() - started < 20
    shot(page, tmp_path, "live")
