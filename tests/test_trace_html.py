"""The HTML ladder in a real browser (Debian's headless Chromium): loads offline, no console errors, every step shown.

A synthetic trace holds every step of both embodiments; the real-run tests render the merged trace of each
embodiment's three processes (bipsim.scenarios.harness).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bipsim.scenarios.embodiments import embodiment_config
from bipsim.scenarios.harness import run_processes
from bipsim.trace.events import TraceEvent
from bipsim.trace.recorder import Tracer
from bipsim.trace.render import render_html
from bipsim.trace.steps import EMBODIMENT_1, EMBODIMENT_2, Step, embodiment_steps

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


def check_in_chromium(page: Path, labels: list[str], tmp_path: Path, screenshot: Path | None = None) -> None:
    """Loads `page` in headless Chromium: asserts no console errors and every label present in the DOM."""
    common = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    for label in labels:
        assert label in dom.stdout, f"{label} not shown"
    if screenshot is not None:
        shot = subprocess.run(
            [*common, f"--screenshot={screenshot}", "--window-size=1400,900", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shot.returncode == 0 and screenshot.exists()


def synthetic(steps: tuple[Step, ...]) -> Tracer:
    tracer = Tracer(keep=True, origin=0.0, clock=iter(x / 10 for x in range(1000)).__next__)
    for step in steps:
        tracer.emit("cp", "uicc", "apdu", step.description, b"\x80\x12\x00\x00\x10", step=step.code)
    tracer.emit("ap", "cp", "at", "+CME ERROR: 30", b"\r\n+CME ERROR: 30\r\n", error=True)
    return tracer


@pytest.mark.needs("chromium")
@pytest.mark.parametrize("steps", [EMBODIMENT_1, EMBODIMENT_2], ids=["embodiment1", "embodiment2"])
def test_html_ladder_in_chromium(steps: tuple[Step, ...], tmp_path: Path) -> None:
    page = tmp_path / "ladder.html"
    page.write_text(render_html(synthetic(steps).events), encoding="utf-8")
    check_in_chromium(page, [s.code for s in steps], tmp_path, screenshot=tmp_path / "ladder.png")


@pytest.fixture(scope="module", params=[1, 2], ids=["embodiment1", "embodiment2"])
def real_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, list[TraceEvent]]:
    number: int = request.param
    config = embodiment_config(number)
    run = run_processes(config, tmp_path_factory.mktemp(f"e{number}"))
    assert run.cp_code == 0 and run.completed, run.explain()
    return number, run.events


@pytest.mark.needs("chromium")
def test_html_ladder_of_a_real_embodiment_run(real_run: tuple[int, list[TraceEvent]], tmp_path: Path) -> None:
    number, events = real_run
    page = tmp_path / "ladder.html"
    page.write_text(render_html(events, title=f"embodiment {number}"), encoding="utf-8")
    labels = [s.code for s in embodiment_steps(number)]
    check_in_chromium(page, labels, tmp_path, screenshot=tmp_path / "ladder.png")
