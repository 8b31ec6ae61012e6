"""The HTML ladder in a real browser (Debian's headless Chromium): loads offline, no console errors, every step shown.

A synthetic trace holds every step of both embodiments (one page, one browser load and one screenshot); the
real-run check renders the merged trace of each embodiment's three processes: it lives in tests/test_scenarios.py,
which reads the run of each embodiment that file makes anyway (`check_in_chromium` is shared from here).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bipsim.trace.recorder import Tracer
from bipsim.trace.render import render_html
from bipsim.trace.steps import EMBODIMENT_1, EMBODIMENT_2, Step

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
def test_html_ladder_in_chromium(tmp_path: Path) -> None:
    page = tmp_path / "ladder.html"
    page.write_text(render_html(synthetic(EMBODIMENT_1 + EMBODIMENT_2).events), encoding="utf-8")
    labels = [s.code for s in EMBODIMENT_1 + EMBODIMENT_2]
    check_in_chromium(page, labels, tmp_path, screenshot=tmp_path / "ladder.png")
