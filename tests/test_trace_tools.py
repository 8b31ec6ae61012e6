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


def at(t: float, src: str, dst: str, kind: str, data: bytes, **extra: object) -> dict[str, object]:
    out: dict[str, object] = {"t": t, "src": src, "dst": dst, "layer": "at", "kind": kind, "summary": "x"}
    return out | {"hex": data.hex().upper()} | extra


def test_a_merged_trace_holds_each_message_once_with_both_ends_times(tmp_path: Path) -> None:
    cp, ap = tmp_path / "cp.jsonl", tmp_path / "ap.jsonl"
    # each side writes line ends its own way: the sender's bytes are the ones kept
    write_trace(
        ap,
        [
            at(1.0, "ap", "cp", "at.command", b"AT+CMEE=1\r"),
            at(1.3, "cp", "ap", "at.final", b"OK\r\n"),
            at(2.0, "ap", "cp", "at.command", b"AT+CMEE=1\r"),  # sent again later: a second message
        ],
    )
    write_trace(
        cp,
        [
            at(1.1, "ap", "cp", "at.command", b"AT+CMEE=1\r"),
            at(1.2, "cp", "ap", "at.final", b"\r\nOK\r\n", step="S705"),
            {"t": 1.25, "src": "uicc", "dst": "cp", "layer": "apdu", "summary": "ATR", "hex": "3B00"},
        ],
    )
    events, problems = read_trace([cp, ap])
    assert not problems
    assert [(e.t, e.src.value, e.hex) for e in events] == [
        (1.0, "ap", "41542B434D45453D310D"),
        (1.2, "cp", "0D0A4F4B0D0A"),
        (1.25, "uicc", "3B00"),
        (2.0, "ap", "41542B434D45453D310D"),
    ]
    assert events[0].fields == {"t_src": 1.0, "t_dst": 1.1}
    assert events[1].fields == {"t_src": 1.2, "t_dst": 1.3} and events[1].step == "S705"
    assert events[3].fields is None  # no copy from the CP: recorded once
    both, _ = read_trace([cp, ap], one_copy=False)
    assert len(both) == 6
    # one file alone is never merged with itself, even where two messages are alike
    single, _ = read_trace([ap])
    assert len(single) == 3


def test_the_ladder_draws_one_arrow_per_message_labelled_by_kind_and_folds_repeats(tmp_path: Path) -> None:
    cp, ap = tmp_path / "cp.jsonl", tmp_path / "ap.jsonl"
    frame = {
        "t": 1.001,
        "src": "ap",
        "dst": "cp",
        "layer": "cmux",
        "kind": "cmux.data",
        "summary": "UIH DLC1",
    }
    frame["hex"] = (b"\xf9\x07\xef\x15AT+CEREG?\r\x00\xf9").hex().upper()  # the command on DLC 1
    write_trace(
        ap,
        [
            at(1.0, "ap", "cp", "at.command", b"AT+CEREG?\r"),
            frame,
            at(1.15, "cp", "ap", "at.echo", b"AT+CEREG?\r\n"),
            at(1.25, "cp", "ap", "at.info", b"+CEREG: 1,1\r\n"),
            at(1.35, "cp", "ap", "at.final", b"OK\r\n"),
        ],
    )
    segments = [
        {
            "t": 2 + i / 10,
            "src": "ota",
            "dst": "cp",
            "layer": "tcp",
            "kind": "tcp.data",
            "summary": f"{i}",
            "hex": "AA",
        }
        for i in range(4)
    ]
    write_trace(
        cp,
        [
            at(1.05, "ap", "cp", "at.command", b"AT+CEREG?\r"),
            at(1.1, "cp", "ap", "at.echo", b"AT+CEREG?\r"),
            at(1.2, "cp", "ap", "at.info", b"\r\n+CEREG: 1,1\r\n"),
            at(1.3, "cp", "ap", "at.final", b"\r\nOK\r\n"),
            *segments,
        ],
    )
    events, _ = read_trace([cp, ap])
    text = render(events, "text", fold=True)
    assert text.count("AT+CEREG?") == 2  # the command once, the echo once
    assert "echo: AT+CEREG?" in text and "info: +CEREG: 1,1" in text and text.count("OK") == 1
    assert "~ repeated 3 more times" in text and text.count("--->") + text.count("<---") == 5
    assert "UIH DLC1" not in text  # the frame carries the command drawn above it: one arrow for one message
    everything = render(events, "text")
    assert len(everything.splitlines()) == 2 + 9 and "UIH DLC1" in everything


def test_steps_are_keyed_on_kind_ends_and_fields() -> None:
    from bipsim.trace.steps import mislabelled, step_of

    tracer = Tracer(keep=True, origin=0.0, clock=iter(range(100)).__next__)
    fetch = tracer.emit(
        "uicc",
        "cp",
        "apdu",
        "x",
        b"\xd0\x00",
        kind="cat.proactive",
        fields={"command": "OPEN CHANNEL"},
        step="S701",
    )
    webopch = tracer.emit("cp", "ap", "at", "x", b'AT%WEBOPCH=1,"TCP"\r', kind="at.command", step="S702")
    webclch = tracer.emit("cp", "ap", "at", "x", b"AT%WEBCLCH=1\r", kind="at.command", step="S716")
    segment = tracer.emit("ota", "ap", "tcp", "x", b"\x17", kind="tcp.data", step="S710")
    wrong = tracer.emit("cp", "uicc", "apdu", "x", b"\x80\x14", kind="cat.terminal_response", step="S701")
    other = tracer.emit(
        "cp",
        "uicc",
        "apdu",
        "x",
        b"\x80\x14",
        kind="cat.terminal_response",
        fields={"command": "SET UP EVENT LIST"},
    )
    old = tracer.emit(
        "uicc", "cp", "apdu", "FETCH: OPEN CHANNEL", b"\xd0\x00", step="S707"
    )  # no kind: not judged
    assert [step_of(e, 2) for e in (fetch, webopch, webclch, segment, other)] == [
        "S701",
        "S702",
        "S716",
        "S710",
        None,
    ]
    assert step_of(fetch, 1) == "S401" and step_of(segment, 1) is None
    problems = mislabelled([fetch, webopch, webclch, segment, wrong, other, old], 2)
    assert len(problems) == 1 and problems[0].startswith("S701 labels cat.terminal_response cp->uicc")
