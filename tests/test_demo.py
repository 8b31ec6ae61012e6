"""`bipsim demo` as a user runs it: real processes on a real pty pair (docs/protocols.md "The serial line", issue 7)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bipsim.cli import main
from bipsim.trace.reader import read_trace
from bipsim.trace.steps import EMBODIMENT_1, EMBODIMENT_2, check_step_order

CODES_1 = [s.code for s in EMBODIMENT_1]
CODES_2 = [s.code for s in EMBODIMENT_2]
GENEROUS = ("--timeout", "90")  # a loaded CI machine must not turn a slow session into a failed one


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bipsim", "demo", *args], capture_output=True, text=True, timeout=120
    )


def demo_here(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """`bipsim demo ARGS` through the console script's own entry point (bipsim.cli.main) in this process: the
    checks that start no session need no interpreter of their own (`test_unknown_option_is_one_line` keeps one)."""
    with pytest.raises(SystemExit) as exit_:
        main(["demo", *args])
    out, err = capsys.readouterr()
    code = exit_.value.code
    return subprocess.CompletedProcess(["demo", *args], code if isinstance(code, int) else 1, out, err)


def ladder_codes(stdout: str) -> list[str]:
    """The step labels of the ladder rows, in printed order."""
    return re.findall(r"^\s+\d+\.\d{3}\s+(S\d{3})\s", stdout, flags=re.MULTILINE)


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_both_embodiments_pass_with_ladders_trace_and_pcap(tmp_path: Path) -> None:
    trace = tmp_path / "demo.jsonl"
    pcap = tmp_path / "demo.pcap"
    result = demo("--trace", str(trace), "--pcap", str(pcap), *GENEROUS)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert result.stderr == ""
    # piped output: plain text, no escape codes
    assert "\x1b" not in result.stdout
    printed = ladder_codes(result.stdout)
    assert set(printed) == set(CODES_1) | set(CODES_2)
    # the first ladder is embodiment 1's, the second embodiment 2's, each in the patent's order
    first_rows = list(dict.fromkeys(printed))
    assert first_rows == CODES_1 + CODES_2
    assert result.stdout.count("PASSED") == 2
    assert "EF_SPN 'BIPSIM-OTA'" in result.stdout
    assert "A0000005590010FF01" in result.stdout
    assert "last answer 204" in result.stdout
    assert "demo passed" in result.stdout

    events, problems = read_trace([trace])
    assert problems == []
    for number, session in ((1, "e1"), (2, "e2")):
        of_session = [e for e in events if e.session == session]
        assert check_step_order(of_session, number) == []
    # one clock for both sessions: embodiment 2 starts after embodiment 1 ended
    last_e1 = max(e.t for e in events if e.session == "e1")
    first_e2 = min(e.t for e in events if e.session == "e2")
    assert first_e2 > last_e1
    capture = pcap.read_bytes()
    assert capture[:4] == b"\xd4\xc3\xb2\xa1"  # little-endian pcap, microseconds (trace/pcap.py)
    assert len(capture) > 24 + 100 * 16  # the global header and at least a hundred packets


@pytest.mark.slow
@pytest.mark.needs("socat")
def test_one_embodiment_over_a_socat_pair_runs_only_that_one(tmp_path: Path) -> None:
    """`--embodiment 2` on socat's pair with `--keep`: only embodiment 2 runs, on the given lines, and its files are
    kept (one demo run makes both checks)."""
    keep = tmp_path / "files"
    socat = subprocess.Popen(
        ["socat", "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"], stderr=subprocess.PIPE, text=True
    )
    try:
        assert socat.stderr is not None
        paths: list[str] = []
        while len(paths) < 2:
            line = socat.stderr.readline()
            assert line, "socat exited before printing its ptys"
            match = re.search(r"PTY is (\S+)", line)
            if match:
                paths.append(match.group(1))
        result = demo(
            "--embodiment", "2", "--port-a", paths[0], "--port-b", paths[1], "--keep", str(keep), *GENEROUS
        )
    finally:
        socat.terminate()
        socat.wait(10)
        if socat.stderr is not None:
            socat.stderr.close()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert set(ladder_codes(result.stdout)) == set(CODES_2)
    assert "Embodiment 1" not in result.stdout
    assert f"{paths[0]} <-> {paths[1]}" in result.stdout
    assert (keep / "e2" / "cp.jsonl").exists()
    assert not (keep / "e1").exists()


def test_bad_embodiment_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    result = demo_here(capsys, "--embodiment", "3")
    assert_one_line_error(result)
    assert "--embodiment" in result.stderr
    assert result.stdout == ""


def test_unknown_option_is_one_line() -> None:
    result = demo("--no-such-option")
    assert_one_line_error(result)
    assert "--no-such-option" in result.stderr


def test_trace_in_missing_directory_is_one_line_and_runs_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    result = demo_here(capsys, "--trace", "/nonexistent/dir/x.jsonl")
    assert_one_line_error(result)
    assert "/nonexistent/dir" in result.stderr
    assert result.stdout == ""


def test_missing_device_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    result = demo_here(capsys, "--port-a", "/nonexistent/ttyA", "--port-b", "/nonexistent/ttyB")
    assert_one_line_error(result)
    assert "/nonexistent/ttyA" in result.stderr


def test_port_a_needs_port_b(capsys: pytest.CaptureFixture[str]) -> None:
    result = demo_here(capsys, "--port-a", "/dev/null")
    assert_one_line_error(result)
    assert "--port-b" in result.stderr


@pytest.mark.slow
def test_a_failed_session_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    # a pair whose far end nobody relays: the CP never hears the AP, so the session cannot complete
    import os
    import pty

    master_a, slave_a = pty.openpty()
    master_b, slave_b = pty.openpty()
    try:
        result = demo(
            "--embodiment",
            "1",
            "--port-a",
            os.ttyname(slave_a),
            "--port-b",
            os.ttyname(slave_b),
            "--timeout",
            "1",  # nobody relays: no session can complete, however long it is given
            "--keep",
            str(tmp_path / "files"),
        )
    finally:
        for fd in (master_a, slave_a, master_b, slave_b):
            os.close(fd)
    assert_one_line_error(result)
    assert "embodiment 1" in result.stderr
    assert "FAILED" in result.stdout
    assert str(tmp_path / "files") in result.stderr  # where to look


def test_help_explains_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    result = demo_here(capsys, "--help")
    assert result.returncode == 0
    for word in ("--embodiment", "--trace", "--pcap", "--port-a", "--port-b", "S401", "S701", "Exit status"):
        assert word in result.stdout


def test_the_live_ladder_shows_each_message_once_labelled_by_kind_and_counts_repeats() -> None:
    from io import StringIO

    from rich.console import Console

    from bipsim.commands.demo import Ladder
    from bipsim.trace.events import Actor, Layer, TraceEvent

    def event(t: float, src: str, dst: str, layer: str, kind: str, data: bytes, step: str) -> TraceEvent:
        return TraceEvent(
            t, Actor(src), Actor(dst), Layer(layer), "text", data.hex().upper(), step, "e1", kind=kind
        )

    out = StringIO()
    ladder = Ladder(Console(file=out, width=200, color_system=None), 1, verbose=False)
    netpar = b'%NETPAR: 1,"internet","",""'
    ladder.feed(
        [
            ("ap", event(1.0, "ap", "cp", "at", "at.info", b"\r\n" + netpar + b"\r\n", "S403")),
            ("cp", event(1.01, "ap", "cp", "at", "at.info", netpar + b"\r\n", "S403")),  # the CP's copy
            ("cp", event(2.0, "uicc", "cp", "apdu", "cat.proactive", b"\xd0\x00\x90\x00", "S407")),
            (
                "cp",
                event(3.0, "uicc", "cp", "apdu", "cat.proactive", b"\xd0\x00\x90\x00", "S407"),
            ),  # next round
        ]
    )
    ladder.release(None)
    text = out.getvalue()
    assert text.count("S403") == 1 and f"info: {netpar.decode()}" in text
    assert ladder.rows == 2 and "repeated: S407 x1" in text


def test_the_live_ladder_draws_actors_without_a_lane_on_the_network_side() -> None:
    from io import StringIO

    from rich.console import Console

    from bipsim.commands.demo import Ladder
    from bipsim.trace.events import Actor, Layer, TraceEvent

    out = StringIO()
    ladder = Ladder(Console(file=out, width=200, color_system=None), 1, verbose=False)
    failure = TraceEvent(
        1.0, Actor.PGW, Actor.CP, Layer.TCP, "reset by the gateway", error=True, kind="tcp.error"
    )
    ladder.feed([("cp", failure)])
    ladder.release(None)
    assert ladder.rows == 1 and "reset by the gateway" in out.getvalue()
