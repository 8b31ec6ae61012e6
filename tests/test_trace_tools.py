"""Trace reader/merger, ladder rendering and diff (issue 8), on small hand-made traces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bipsim.trace.diff import first_divergence
from bipsim.trace.reader import read_trace
from bipsim.trace.recorder import Tracer
from bipsim.trace.render import render
from bipsim.trace.steps import check_step_order


def write_trace(path: Path, rows: list[dict[str, object]], bad: list[str] | None = None) -> None:
    lines = [json.dumps(row) for row in rows] + (bad or [])
    path.write_text("\n".join(lines) + "\n")


def row(
    t: float, src: str, dst: str, layer: str, summary: str, hex_: str | None = None, step: str | None = None
):
    out: dict[str, object] = {"t": t, "src": src, "dst": dst, "layer": layer, "summary": summary}
    if hex_:
        out["hex"] = hex_
    if step:
        out["step"] = step
    return out


def test_merge_orders_by_time_and_reports_bad_lines(tmp_path: Path) -> None:
    cp, ap = tmp_path / "cp.jsonl", tmp_path / "ap.jsonl"
    write_trace(cp, [row(0.1, "uicc", "cp", "apdu", "FETCH"), row(0.3, "cp", "ap", "at", "AT%GETNET")])
    write_trace(ap, [row(0.2, "ap", "cp", "at", "boot")], bad=["{not json", '{"t": 1}'])
    events, problems = read_trace([cp, ap])
    assert [e.t for e in events] == [0.1, 0.2, 0.3]
    assert [(p.line, p.path) for p in problems] == [(2, str(ap)), (3, str(ap))]
    assert "missing key" in problems[1].reason


def test_step_order_check() -> None:
    tracer = Tracer(keep=True, origin=0.0, clock=iter(range(100)).__next__)
    tracer.emit("uicc", "cp", "apdu", "OPEN CHANNEL", step="S401")
    tracer.emit("cp", "ap", "at", "GETNET", step="S403")
    tracer.emit("cp", "ap", "at", "GETNET", step="S402")
    problems = check_step_order(tracer.events, 1)
    assert any("S405 missing" in p for p in problems)
    assert any(p.startswith("S403") and "before S402" in p for p in problems)


def test_render_formats(tmp_path: Path) -> None:
    tracer = Tracer(keep=True, origin=0.0, clock=iter(range(100)).__next__)
    tracer.emit("uicc", "cp", "apdu", "FETCH: OPEN CHANNEL", b"\xd0\x00", step="S401")
    tracer.emit("ap", "cp", "at", "+CME ERROR: 30", b"+CME ERROR: 30\r\n", error=True)
    text = render(tracer.events, "text", show_hex=True)
    assert "S401 FETCH: OPEN CHANNEL" in text and "D000" in text and "!" in text
    mermaid = render(tracer.events, "mermaid")
    assert "uicc->>cp: S401 FETCH: OPEN CHANNEL" in mermaid and "ap-xcp" in mermaid
    page = render(tracer.events, "html")
    assert (
        page.startswith("<!DOCTYPE html>")
        and "<script" not in page
        and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )
    assert "D000" in page and "#c00" in page


def test_diff_finds_the_first_divergence() -> None:
    a = Tracer(keep=True, origin=0.0, clock=iter(range(100)).__next__)
    b = Tracer(keep=True, origin=0.0, clock=iter(range(100)).__next__)
    for tracer, last in ((a, b"\x90\x00"), (b, b"\x6f\x00")):
        tracer.emit("cp", "uicc", "apdu", "FETCH", b"\x80\x12\x00\x00\x10")
        tracer.emit("uicc", "cp", "apdu", "SW", last, step="S402")
    assert first_divergence(a.events, a.events) is None
    divergence = first_divergence(a.events, b.events)
    assert divergence is not None and divergence.index == 1
    assert "6F00" in divergence.describe() and "[S402]" in divergence.describe()


def test_cli_render_and_diff(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    write_trace(trace, [row(0.0, "cp", "uicc", "apdu", "FETCH", "8012000010", "S401")])
    other = tmp_path / "u.jsonl"
    write_trace(other, [row(0.0, "cp", "uicc", "apdu", "FETCH", "8012000011", "S401")])
    run = [sys.executable, "-m", "bipsim", "trace"]
    out = subprocess.run([*run, "render", str(trace)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "S401 FETCH" in out.stdout
    same = subprocess.run([*run, "diff", str(trace), str(trace)], capture_output=True, text=True, timeout=60)
    assert same.returncode == 0 and "match" in same.stdout
    differ = subprocess.run(
        [*run, "diff", str(trace), str(other)], capture_output=True, text=True, timeout=60
    )
    assert differ.returncode == 1 and "8012000011" in differ.stdout
