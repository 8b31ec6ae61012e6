"""`bipsim hil check` (bipsim.link.hil_check): the judgements on made-up observations, the RTS/CTS and DTR checks
on simulated modem lines (MockClock), and the command on real pty pairs: `bipsim pty-pair`, a socat pair, and
broken pairs built here (a relay that eats XON or flips a bit) that must fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from bipsim.link.hil_check import (
    CheckResult,
    End,
    FlowObservation,
    HangupObservation,
    Outcome,
    byte_pattern,
    check_flow,
    check_hangup,
    compare_bytes,
    exit_status,
    judge_flow,
    judge_hangup,
    judge_rate,
    render_table,
    run_checks,
)
from bipsim.link.pty import PtyStream, open_pty, set_raw

BIPSIM = [sys.executable, "-m", "bipsim"]


# ---------------------------------------------------------------------------------------------------------------
# the judgements


def test_the_pattern_holds_every_value_and_the_bytes_a_tty_eats() -> None:
    pattern = byte_pattern()
    assert set(pattern) == set(range(256))
    for value in (0x11, 0x13, 0x0D, 0x0A, 0x00, 0xFF, 0x7F):
        assert pattern.count(value) >= 3
    assert all(bytes([1 << i]) in pattern for i in range(8))


def test_identical_bytes_pass() -> None:
    pattern = byte_pattern()
    result = compare_bytes("A->B", pattern, pattern)
    assert result.outcome is Outcome.PASS
    assert "all 256 values" in result.detail


def test_xon_xoff_eaten_fails_and_says_so() -> None:
    pattern = byte_pattern()
    received = bytes(b for b in pattern if b not in (0x11, 0x13))
    result = compare_bytes("A->B", pattern, received)
    assert result.outcome is Outcome.FAIL
    assert "XON/XOFF" in result.detail
    assert result.figures["first_difference"] == 0x11


def test_stripped_eighth_bit_fails_and_says_so() -> None:
    pattern = byte_pattern()
    result = compare_bytes("B->A", pattern, bytes(b & 0x7F for b in pattern))
    assert result.outcome is Outcome.FAIL
    assert "8th bit" in result.detail


def test_one_flipped_bit_fails_with_its_mask() -> None:
    pattern = byte_pattern()
    received = bytearray(pattern)
    received[0x41] ^= 0x08
    result = compare_bytes("A->B", pattern, bytes(received))
    assert result.outcome is Outcome.FAIL
    assert result.figures["flipped_mask"] == 0x08
    assert result.figures["first_difference"] == 0x41


def test_a_stuck_data_bit_is_named() -> None:
    pattern = byte_pattern()
    result = compare_bytes("A->B", pattern, bytes(b | 0x04 for b in pattern))
    assert result.outcome is Outcome.FAIL
    assert "bit(s) 2 stuck at 1" in result.detail


def test_cr_lf_translations_are_named() -> None:
    pattern = byte_pattern()
    icrnl = compare_bytes("A->B", pattern, pattern.replace(b"\r", b"\n"))
    assert "ICRNL" in icrnl.detail
    onlcr = compare_bytes("A->B", pattern, pattern.replace(b"\n", b"\r\n"))
    assert "ONLCR" in onlcr.detail


def test_nothing_received_is_not_blamed_on_xon() -> None:
    result = compare_bytes("A->B", byte_pattern(), b"")
    assert result.outcome is Outcome.FAIL
    assert "XON" not in result.detail
    assert "bytes lost" in result.detail


@pytest.mark.parametrize(
    "count, seconds, pty, outcome",
    [
        (11520, 1.0, False, Outcome.PASS),
        (11000, 1.0, False, Outcome.PASS),
        (10000, 1.0, False, Outcome.FAIL),  # 0.87 of the bound
        (12000, 1.0, False, Outcome.FAIL),  # faster than 8N1 can be: another baud rate
        (12000, 1.0, True, Outcome.NOT_TESTABLE_PTY),  # an unpaced pty: no line rate
        (10000, 1.0, True, Outcome.FAIL),  # a paced pty pair that is too slow still fails
        (0, 0.0, False, Outcome.FAIL),
    ],
)
def test_rate_against_the_8n1_bound(count: int, seconds: float, pty: bool, outcome: Outcome) -> None:
    result = judge_rate(count, seconds, 115200, pty=pty)
    assert result.outcome is outcome
    if count:
        assert result.figures["ratio"] == pytest.approx(count / seconds / 11520, abs=1e-4)


def test_flow_judgement() -> None:
    good = FlowObservation(6000, True, 65536, False, True, 6000)
    assert judge_flow(good).outcome is Outcome.PASS
    never = FlowObservation(65536, False, 65536, True, False, 4096)
    assert "never stopped" in judge_flow(never).detail
    lost = FlowObservation(6000, True, 65536, False, False, 5000)
    assert judge_flow(lost).outcome is Outcome.FAIL
    never_sent = FlowObservation(4096, True, 65536, False, False, 0)
    assert "CTS never rose" in judge_flow(never_sent).detail
    cts_up = FlowObservation(6000, True, 65536, True, True, 6000)
    assert "CTS stayed up" in judge_flow(cts_up).detail


def test_hangup_judgement() -> None:
    up, down = (True, True), (False, False)
    good = [HangupObservation("A", up, down, up), HangupObservation("B", up, (False, True), up)]
    result = judge_hangup(good)
    assert result.outcome is Outcome.PASS
    assert result.figures["seen"] == ["A DTR -> B DSR+DCD", "B DTR -> A DSR"]
    unwired = [HangupObservation("A", up, up, up), HangupObservation("B", up, down, up)]
    assert judge_hangup(unwired).outcome is Outcome.FAIL
    stuck = [HangupObservation("A", up, down, down), HangupObservation("B", up, down, up)]
    assert "did not come back" in judge_hangup(stuck).detail


def test_exit_status_and_table() -> None:
    ok = CheckResult("bytes A->B", Outcome.PASS, "fine")
    pty = CheckResult("rts/cts", Outcome.NOT_TESTABLE_PTY, "a pty has no RTS/CTS lines")
    bad = CheckResult("rate", Outcome.FAIL, "slow")
    assert exit_status([ok, pty]) == 0
    assert exit_status([ok, pty], requested={"rts/cts"}) == 3
    assert exit_status([ok, pty, bad], requested={"rts/cts"}) == 1
    assert exit_status([ok, CheckResult("rts/cts", Outcome.PASS, "")], requested={"rts/cts"}) == 0
    table = render_table([ok, pty, bad]).splitlines()
    assert table[0].split() == ["check", "result", "detail"]
    assert "not testable on a pty" in table[3]


# ---------------------------------------------------------------------------------------------------------------
# RTS/CTS and DTR on simulated lines


class SimLine:
    """One direction of a null-modem line at `rate` bytes/s into a receiver buffer of `capacity` bytes. With
    flow control wired, the receiver's RTS (the writer's CTS) drops when the buffer is full and the writer waits;
    without it, bytes past the buffer are lost (an overrun)."""

    def __init__(self, rate: float, capacity: int, *, wired: bool) -> None:
        self.rate, self.capacity, self.wired = rate, capacity, wired
        self.buffer = bytearray()
        self.changed = trio.Event()

    @property
    def cts(self) -> bool:
        return not self.wired or len(self.buffer) < self.capacity

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class SimWriter(trio.abc.Stream):
    def __init__(self, line: SimLine) -> None:
        self.line = line

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        data, line, sent = bytes(data), self.line, 0
        while sent < len(data):
            while not line.cts:
                await line.changed.wait()
            # with flow control, no more than the receiver has room for; without, the whole rest
            room = line.capacity - len(line.buffer) if line.wired else len(data) - sent
            count = min(len(data) - sent, max(1, room))
            await trio.sleep(count / line.rate)
            line.buffer += data[sent : sent + count][: max(0, line.capacity - len(line.buffer))]  # overrun
            line._wake()
            sent += count

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        return b""

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class SimReader(SimWriter):
    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while not self.line.buffer:
            await self.line.changed.wait()
        data = bytes(self.line.buffer[: max_bytes or 65536])
        del self.line.buffer[: len(data)]
        self.line._wake()
        return data


class SimModem:
    """Modem lines wired as a null-modem cable: DSR and DCD follow the peer's DTR where `wired` says so."""

    def __init__(self, line: SimLine | None = None) -> None:
        self.line = line
        self.peer: SimModem | None = None
        self.dtr = True
        self.wired: tuple[bool, bool] = (True, True)  # (DSR, DCD)

    def lines(self) -> dict[str, bool]:
        assert self.peer is not None
        return {
            "cts": self.line.cts if self.line is not None else True,
            "dsr": self.peer.dtr if self.wired[0] else True,
            "cd": self.peer.dtr if self.wired[1] else True,
        }

    def set_dtr(self, level: bool) -> None:
        self.dtr = level


def sim_ends(*, rate: float = 11520, capacity: int = 4096, wired: bool = True) -> tuple[End, End, SimLine]:
    line = SimLine(rate, capacity, wired=wired)
    modem_a, modem_b = SimModem(line), SimModem()
    modem_a.peer, modem_b.peer = modem_b, modem_a
    return End("A", SimWriter(line), modem_a, False), End("B", SimReader(line), modem_b, False), line


async def test_rts_cts_wired_stops_the_writer(autojump_clock: trio.testing.MockClock) -> None:
    a, b, _ = sim_ends(wired=True)
    result = await check_flow(a, b, 115200)
    assert result.outcome is Outcome.PASS, result.detail
    assert 4096 <= result.figures["written"] <= 4096 + 64
    assert result.figures["cts_while_stopped"] is False


async def test_rts_cts_not_wired_fails(autojump_clock: trio.testing.MockClock) -> None:
    a, b, _ = sim_ends(wired=False)
    result = await check_flow(a, b, 115200)
    assert result.outcome is Outcome.FAIL
    assert "never stopped" in result.detail


async def test_rts_cts_on_a_pty_is_not_testable() -> None:
    a, b, _ = sim_ends()
    a.pty = True
    result = await check_flow(a, b, 115200)
    assert result.outcome is Outcome.NOT_TESTABLE_PTY


async def test_dtr_hangup_wired_passes(autojump_clock: trio.testing.MockClock) -> None:
    a, b, _ = sim_ends()
    result = await check_hangup(a, b)
    assert result.outcome is Outcome.PASS, result.detail
    assert result.figures["seen"] == ["A DTR -> B DSR+DCD", "B DTR -> A DSR+DCD"]


async def test_dtr_to_dsr_only_passes_and_says_which(autojump_clock: trio.testing.MockClock) -> None:
    a, b, _ = sim_ends()
    assert isinstance(b.modem, SimModem)
    b.modem.wired = (True, False)
    result = await check_hangup(a, b)
    assert result.outcome is Outcome.PASS
    assert result.figures["seen"][0] == "A DTR -> B DSR"


async def test_dtr_not_wired_fails(autojump_clock: trio.testing.MockClock) -> None:
    a, b, _ = sim_ends()
    assert isinstance(a.modem, SimModem)
    a.modem.wired = (False, False)  # A sees nothing of B's DTR
    result = await check_hangup(a, b)
    assert result.outcome is Outcome.FAIL
    assert "A saw no DSR/DCD drop when B dropped DTR" in result.detail


class PacedStream(trio.abc.Stream):
    """One end of a full-duplex 8N1 line at `rate` bytes/s (a memory stream pair under MockClock): what a check
    writes arrives after its line time, so the byte and rate rows pass and only the modem lines are in question."""

    def __init__(self, inner: trio.abc.Stream, rate: float) -> None:
        self.inner, self.rate = inner, rate

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.sleep(len(data) / self.rate)
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def three_wire_bench(*, dsr_dcd_wired: bool) -> tuple[End, End]:
    """Two real (not pty) ends on a paced line with simulated modem lines; without DSR/DCD wires each side's DSR
    and DCD stay up whatever the other's DTR does (a 3-wire cable with the inputs tied or pulled up)."""
    left, right = trio.testing.memory_stream_pair()
    modem_a, modem_b = SimModem(), SimModem()
    modem_a.peer, modem_b.peer = modem_b, modem_a
    if not dsr_dcd_wired:
        modem_a.wired = modem_b.wired = (False, False)
    return (
        End("A", PacedStream(left, 11520), modem_a, False),
        End("B", PacedStream(right, 11520), modem_b, False),
    )


async def test_no_dtr_skips_the_row_and_a_three_wire_bench_exits_0(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = three_wire_bench(dsr_dcd_wired=False)

    def never(level: bool) -> None:
        raise AssertionError("--no-dtr must not touch DTR")

    for end in (a, b):
        assert end.modem is not None
        end.modem.set_dtr = never  # type: ignore[method-assign]
    results = await run_checks(a, b, 115200, rtscts=False, dtr=False)
    by_name = {r.check: r for r in results}
    assert by_name["dtr hang-up"].outcome is Outcome.SKIPPED
    assert by_name["dtr hang-up"].detail.startswith("(--no-dtr)")
    table_row = render_table(results).splitlines()[-1].split()
    assert table_row[:4] == ["dtr", "hang-up", "skipped", "(--no-dtr)"]
    assert [r.outcome for r in results[:3]] == [Outcome.PASS] * 3, render_table(results)
    assert exit_status(results) == 0


async def test_the_dtr_row_still_fails_when_asked_and_not_wired(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = three_wire_bench(dsr_dcd_wired=False)
    results = await run_checks(a, b, 115200, rtscts=False, dtr=True)
    row = results[-1]
    assert row.check == "dtr hang-up"
    assert row.outcome is Outcome.FAIL
    assert "B saw no DSR/DCD drop when A dropped DTR" in row.detail
    assert "--no-dtr" in row.detail  # the failure names the way out for a bench without the wires
    assert exit_status(results) == 1
    assert exit_status(results, requested={"dtr hang-up"}) == 1
    wired = await run_checks(*three_wire_bench(dsr_dcd_wired=True), 115200, rtscts=False, dtr=True)
    assert wired[-1].outcome is Outcome.PASS, wired[-1].detail
    assert exit_status(wired, requested={"dtr hang-up"}) == 0


# ---------------------------------------------------------------------------------------------------------------
# the command on real pty pairs


def run_check(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BIPSIM, "hil", "check", *args], capture_output=True, text=True, timeout=timeout)


def rows(stdout: str) -> dict[str, tuple[str, str]]:
    """check -> (result, detail) from the table."""
    out: dict[str, tuple[str, str]] = {}
    for line in stdout.splitlines()[3:]:
        check, rest = line[:11].strip(), line[13:]
        result = "not testable on a pty" if rest.startswith("not testable on a pty") else rest.split()[0]
        out[check] = (result, rest[len(result) :].strip())
    return out


@pytest.fixture
def pty_pair_paths() -> list[str]:
    proc = subprocess.Popen([*BIPSIM, "pty-pair"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    paths = [proc.stdout.readline().strip(), proc.stdout.readline().strip()]
    yield paths  # type: ignore[misc]
    proc.terminate()
    proc.wait(10)


def test_check_on_a_pty_pair(pty_pair_paths: list[str]) -> None:
    done = run_check("--port", pty_pair_paths[0], "--port", pty_pair_paths[1])
    assert done.returncode == 0, done.stdout + done.stderr
    table = rows(done.stdout)
    assert table["bytes A->B"][0] == "pass"
    assert table["bytes B->A"][0] == "pass"
    assert table["rate"][0] == "not testable on a pty"  # unpaced: far faster than 115200 baud
    assert table["rts/cts"][0] == "not testable on a pty"
    assert table["dtr hang-up"][0] == "not testable on a pty"


def test_rtscts_asked_on_a_pty_exits_3_with_json(pty_pair_paths: list[str]) -> None:
    done = run_check("--port", pty_pair_paths[0], "--port", pty_pair_paths[1], "--rtscts", "--json")
    assert done.returncode == 3, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["exit"] == 3
    results = {c["check"]: c["result"] for c in report["checks"]}
    assert results == {
        "bytes A->B": "pass",
        "bytes B->A": "pass",
        "rate": "not testable on a pty",
        "rts/cts": "not testable on a pty",
        "dtr hang-up": "not testable on a pty",
    }


@pytest.mark.parametrize(
    "flag, status, dtr_result",
    [
        ("--no-dtr", 0, "skipped"),  # turned off: skipped, never pass
        ("--dtr", 3, "not testable on a pty"),  # asked for explicitly: a pty cannot show it
    ],
)
def test_dtr_options_on_a_pty_pair(
    pty_pair_paths: list[str], flag: str, status: int, dtr_result: str
) -> None:
    done = run_check("--port", pty_pair_paths[0], "--port", pty_pair_paths[1], flag)
    assert done.returncode == status, done.stdout + done.stderr
    table = rows(done.stdout)
    assert table["dtr hang-up"][0] == dtr_result
    if flag == "--no-dtr":
        assert table["dtr hang-up"][1].startswith("(--no-dtr)")
        assert "DTR check off" in done.stdout.splitlines()[0]


def test_check_on_a_paced_pair_measures_the_rate() -> None:
    proc = subprocess.Popen([*BIPSIM, "pty-pair", "--baud", "19200"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        a, b = proc.stdout.readline().strip(), proc.stdout.readline().strip()
        done = run_check("--port", a, "--port", b, "--baud", "19200", "--json")
    finally:
        proc.terminate()
        proc.wait(10)
    report = json.loads(done.stdout)
    rate = next(c for c in report["checks"] if c["check"] == "rate")
    # a paced pair has a line rate, and the rate row must pass: 0.95 to 1.02 of the 8N1 bound. Above 1 it cannot
    # go (timed from the first write, and the pacer never exceeds 8N1 since the line went busy); below 0.95 it
    # would take 100 ms of lateness at the end of the 2 s payload, where this machine (2 cores, load average 5
    # with the CI loop running) measured 0.9987 to 0.9996 (1 to 3 ms) in six runs
    assert rate["bound_Bps"] == 1920
    assert 0.95 <= rate["ratio"] <= 1.0001, rate
    assert rate["result"] == "pass", rate
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.needs("socat")
def test_check_on_a_socat_pair() -> None:
    import re

    proc = subprocess.Popen(
        ["socat", "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"], stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        paths: list[str] = []
        while len(paths) < 2:
            match = re.search(r"PTY is (\S+)", proc.stderr.readline())
            if match:
                paths.append(match.group(1))
        done = run_check("--port", paths[0], "--port", paths[1])
    finally:
        proc.terminate()
        proc.wait(10)
    assert done.returncode == 0, done.stdout + done.stderr
    assert rows(done.stdout)["bytes A->B"][0] == "pass"


async def broken_relay_check(
    transform: Callable[[bytes], bytes], *args: str
) -> subprocess.CompletedProcess[bytes]:
    """Runs `bipsim hil check` on a pty pair whose relay (here) applies `transform` to A->B bytes."""
    (ma, pa), (mb, pb) = open_pty(), open_pty()
    slaves = []
    for path in (pa, pb):  # held open, so the masters never read end of file between the command's opens
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        set_raw(fd)
        slaves.append(fd)
    a, b = PtyStream(ma, name=pa), PtyStream(mb, name=pb)

    async def copy(src: PtyStream, dst: PtyStream, change: Callable[[bytes], bytes]) -> None:
        while data := await src.receive_some(65536):
            out = change(data)
            if out:
                await dst.send_all(out)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy, a, b, transform)
            nursery.start_soon(copy, b, a, lambda d: d)
            done = await trio.run_process(
                [*BIPSIM, "hil", "check", "--port", pa, "--port", pb, *args], capture_stdout=True, check=False
            )
            nursery.cancel_scope.cancel()
    finally:
        for fd in slaves:
            os.close(fd)
        await a.aclose()
        await b.aclose()
    return done


async def test_a_relay_that_eats_xon_fails_the_check() -> None:
    done = await broken_relay_check(lambda d: d.replace(b"\x11", b""))
    assert done.returncode == 1
    table = rows(done.stdout.decode())
    assert table["bytes A->B"][0] == "fail"
    assert "missing 11" in table["bytes A->B"][1]
    assert table["bytes B->A"][0] == "pass"


async def test_a_relay_that_flips_a_bit_fails_the_check() -> None:
    done = await broken_relay_check(lambda d: d.replace(b"A", b"I"), "--json")  # 0x41 -> 0x49: bit 3
    assert done.returncode == 1
    report = json.loads(done.stdout)
    a_to_b = report["checks"][0]
    assert a_to_b["result"] == "fail"
    assert a_to_b["flipped_mask"] == 0x08
    assert a_to_b["first_difference"] == 0x41


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "/dev/null"], "--port must be given twice"),
        (["--port", "/tmp/x", "--port", "/tmp/x"], "must differ"),
        (["--port", "loop://", "--port", "socket://127.0.0.1:1"], "needs a tty device path"),
        (["--port", "/nonexistent/a", "--port", "/nonexistent/b"], "no such serial line"),
        (["--port", "a", "--port", "b", "--baud", "fast"], "--baud"),
    ],
)
def test_bad_arguments_are_one_line(args: list[str], message: str) -> None:
    done = run_check(*args)
    assert done.returncode in (1, 2)
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_help_explains_the_exit_status() -> None:
    done = subprocess.run([*BIPSIM, "hil", "check", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for words in (
        "not testable on a pty",
        "--rtscts",
        "--no-dtr",
        "skipped (--no-dtr)",
        "Exit status",
        "8N1",
    ):
        assert words in " ".join(done.stdout.split())


def test_docs_describe_the_bench() -> None:
    text = (Path(__file__).parent.parent / "docs" / "hil.md").read_text()
    for words in (
        "bipsim hil check",
        "null-modem",
        "dialout",
        "/dev/serial/by-id",
        "not testable on a pty",
        "--no-dtr",
        "skipped (--no-dtr)",
    ):
        assert words in text


async def test_a_line_that_goes_away_mid_check_is_one_line() -> None:
    """The pair vanishes (an adapter unplugged) while the rate check runs: one line on stderr, exit 1."""
    (ma, pa), (mb, pb) = open_pty(), open_pty()
    slaves = []
    for path in (pa, pb):
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        set_raw(fd)
        slaves.append(fd)
    a, b = PtyStream(ma, name=pa), PtyStream(mb, name=pb)

    async def copy(src: PtyStream, dst: PtyStream, limit: int | None = None) -> None:
        moved = 0
        while data := await src.receive_some(65536):
            await dst.send_all(data)
            moved += len(data)
            if limit is not None and moved >= limit:
                await trio.sleep_forever()  # hold the rest: the rate check cannot finish before the pair goes

    process = await trio.lowlevel.open_process(
        [*BIPSIM, "hil", "check", "--port", pa, "--port", pb, "--baud", "9600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(copy, a, b, len(byte_pattern()))  # the byte check A->B, then nothing
        nursery.start_soon(copy, b, a)
        assert process.stderr is not None
        seen = b""
        with trio.fail_after(60):
            while b"checking rate" not in seen:
                chunk = await process.stderr.receive_some(4096)
                assert chunk, seen
                seen += chunk
        nursery.cancel_scope.cancel()  # the relay stops...
    for fd in slaves:  # ...and the pair goes away under the running check
        os.close(fd)
    await a.aclose()
    await b.aclose()
    with trio.fail_after(60):
        rest = await process.stderr.receive_some(65536) if process.stderr is not None else b""
        while more := await process.stderr.receive_some(65536):
            rest += more
        await process.wait()
    assert process.returncode == 1, rest
    assert b"Traceback" not in rest
    assert b"internal error" not in rest
    assert process.stdout is not None
    table = b""
    while more := await process.stdout.receive_some(65536):
        table += more
    # the line ended under the check: either the reader saw the end (the rate row fails) or the writer did (the
    # command stops with one line naming the line's failure)
    if table:
        assert rows(table.decode())["rate"][0] == "fail"
    else:
        assert b"a line failed during the check" in rest
        assert len([line for line in rest.splitlines() if b"error" in line]) == 1


async def test_an_adapter_without_dtr_fails_the_row_in_one_line(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b, _ = sim_ends()

    def no_dtr(level: bool) -> None:
        raise OSError(25, "Inappropriate ioctl for device")

    assert a.modem is not None
    a.modem.set_dtr = no_dtr  # type: ignore[method-assign]
    result = await check_hangup(a, b)
    assert result.outcome is Outcome.FAIL
    assert "cannot drive DTR" in result.detail


async def test_a_writer_held_for_good_does_not_hang_the_byte_check(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from bipsim.link.hil_check import check_bytes

    a, b, _ = sim_ends(wired=True, capacity=0)  # A's CTS is never up: nothing crosses, A's write never ends
    result = await check_bytes(a, b, 115200)
    assert result.outcome is Outcome.FAIL
    assert result.figures["received"] == 0
