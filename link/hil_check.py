"""The checks of `bipsim hil check`: is a bench's null-modem pair a faithful serial line? (docs/hil.md)

Four checks, each a row of one table: every byte value both ways (patterns that show a dropped, swapped or stuck
bit and the bytes a tty eats or rewrites: XON/XOFF, CR/LF, the 8th bit), the byte rate against the 8N1 bound of the
baud rate (10 bits a byte: start, 8 data, stop), RTS/CTS flow control (a reader that stops reading must stop the
writer) and a DTR hang-up seen by the other side as DSR/DCD (the null-modem wiring of EIA-232 / ITU-T V.24).
The RTS/CTS row runs when asked for (`rtscts`) and the DTR row unless turned off (`dtr=False`, for a bench whose
cable has no DTR/DSR/DCD wires): a row turned off reads "skipped", with the option that turned it off, never "pass".

The judgements are pure functions of what was sent, received and measured (`compare_bytes`, `judge_rate`,
`judge_flow`, `judge_hangup`, `exit_status`); the trio adapters (`check_*`, `run_checks`) only move the bytes and
read the modem lines, over any trio Stream and any `ModemLines`, so the rules are tested without hardware.
A pseudo-terminal has no line rate and no modem lines: those rows say "not testable on a pty", never "pass".
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import struct
import termios
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

import serial
import trio

from bipsim.link.pty import PtyStream

BITS_PER_BYTE = 10  # 8N1: a start bit, 8 data bits, a stop bit
# a Unix98 pty slave (/dev/pts/N) has one of these major device numbers (Linux Documentation/admin-guide/devices.txt)
PTY_SLAVE_MAJORS = range(136, 144)
RATE_TOLERANCE = (
    0.95,
    1.02,
)  # measured / bound: a little under for USB and scheduling latency, never much over
RATE_SECONDS = 2.0  # line time of the rate check's payload
QUIET = 0.5  # seconds without a byte after which a reader decides the rest is not coming


class Outcome(enum.Enum):
    """The result column of the table."""

    PASS = "pass"
    FAIL = "fail"
    NOT_TESTABLE_PTY = "not testable on a pty"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class CheckResult:
    """One row: the check's name, its outcome, a one-line detail and the figures measured (for --json)."""

    check: str
    outcome: Outcome
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "result": self.outcome.value, "detail": self.detail, **self.figures}


# ---------------------------------------------------------------------------------------------------------------
# the bytes


def byte_pattern() -> bytes:
    """Every value up and down, walking ones and zeros (a stuck or swapped data bit), 0x55/0xAA (alternate bits),
    and the bytes a cooked tty eats or rewrites, next to neighbours that show which: XON 0x11, XOFF 0x13, CR, LF,
    NUL, DEL, ^C, ^D, ^Z, ^\\, 0xFF (the PARMRK escape)."""
    up = bytes(range(256))
    walking = bytes(1 << i for i in range(8)) + bytes(0xFF ^ (1 << i) for i in range(8))
    alternate = b"\x55\xaa" * 8
    control = b"\x11\x13\x11\x11\x13\x13\x00\x0d\x0a\x0a\x0d\x0d\x0d\x0a\x7f\x03\x04\x1a\x1c\xff\xff\x00\x11"
    return up + walking + alternate + control + up[::-1]


def _hex(data: bytes | list[int]) -> str:
    return " ".join(f"{b:02X}" for b in data)


def compare_bytes(direction: str, sent: bytes, received: bytes) -> CheckResult:
    """Judges one direction of the byte check; the detail names the likely cause of a difference."""
    name = f"bytes {direction}"
    values = len(set(sent))
    if received == sent:
        return CheckResult(
            name, Outcome.PASS, f"{len(sent)} bytes intact, all {values} values", {"bytes": len(sent)}
        )
    figures: dict[str, Any] = {"sent": len(sent), "received": len(received)}
    missing = Counter(sent) - Counter(received)
    extra = Counter(received) - Counter(sent)
    causes: list[str] = []
    if received and missing.keys() & {0x11, 0x13} and set(missing) <= {0x11, 0x13} and not extra:
        causes.append("XON/XOFF eaten (software flow control, IXON/IXOFF, is on)")
    if 0x0D in missing and 0x0A in extra:
        causes.append("CR turned into LF (ICRNL)")
    if 0x0A in missing and 0x0D in extra:
        causes.append("LF turned into CR (INLCR)")
    if 0x0D in extra and 0x0A not in missing and 0x0D not in missing:
        causes.append("CR added before LF (ONLCR)")
    if len(received) == len(sent):
        flipped = 0
        stuck_low = stuck_high = 0xFF
        for s, r in zip(sent, received, strict=True):
            flipped |= s ^ r
            stuck_low &= ~r & 0xFF  # bits that were never 1 in what arrived
            stuck_high &= r  # bits that were never 0
        high_bits = [b for b in range(8) if stuck_high >> b & 1]
        low_bits = [b for b in range(8) if stuck_low >> b & 1 and flipped >> b & 1]
        if low_bits == [7]:
            causes.append("the 8th bit is stripped (ISTRIP, 7-bit framing or parity on)")
        elif low_bits:
            causes.append(f"data bit(s) {','.join(map(str, low_bits))} stuck at 0")
        if high_bits:
            causes.append(f"data bit(s) {','.join(map(str, high_bits))} stuck at 1")
        if flipped and not low_bits and not high_bits:
            causes.append(f"bits flipped (mask 0x{flipped:02X}): noise, or a baud rate or framing mismatch")
        figures["flipped_mask"] = flipped
    first = next((i for i, (s, r) in enumerate(zip(sent, received, strict=False)) if s != r), None)
    if first is None:
        first = min(len(sent), len(received))
    where = f"first difference at byte {first}: sent {_hex(sent[first : first + 4]) or '(end)'}"
    where += f", got {_hex(received[first : first + 4]) or '(nothing)'}"
    parts = [f"{len(received)} of {len(sent)} bytes"]
    if missing:
        parts.append(f"missing {_hex(sorted(missing))[:47]}")
    if extra:
        parts.append(f"unexpected {_hex(sorted(extra))[:47]}")
    if not causes and len(received) < len(sent):
        causes.append("bytes lost (an overrun, or the line stopped)")
    detail = "; ".join([*causes, *parts, where])
    figures["first_difference"] = first
    return CheckResult(name, Outcome.FAIL, detail, figures)


# ---------------------------------------------------------------------------------------------------------------
# the rate


def bound_bytes_per_second(baud: int) -> float:
    """What an 8N1 line at `baud` can carry at most: 10 bits a byte."""
    return baud / BITS_PER_BYTE


def judge_rate(count: int, seconds: float, baud: int, *, pty: bool) -> CheckResult:
    """`count` bytes arrived `seconds` after the first was written: the rate against 8N1."""
    bound = bound_bytes_per_second(baud)
    if seconds <= 0 or count <= 0:
        return CheckResult(
            "rate", Outcome.FAIL, "too few bytes arrived to measure a rate", {"bound_Bps": bound}
        )
    rate = count / seconds
    ratio = rate / bound
    figures = {"measured_Bps": round(rate, 1), "bound_Bps": bound, "ratio": round(ratio, 4)}
    text = f"{rate:.0f} B/s, {ratio:.3f} of the 8N1 bound ({bound:.0f} B/s at {baud} baud)"
    low, high = RATE_TOLERANCE
    if ratio > high:
        if pty:
            return CheckResult(
                "rate",
                Outcome.NOT_TESTABLE_PTY,
                f"{text}: a pty has no line rate (`bipsim pty-pair --baud N` paces one)",
                figures,
            )
        return CheckResult(
            "rate", Outcome.FAIL, f"{text}: faster than the line can be; another baud rate?", figures
        )
    if ratio < low:
        return CheckResult("rate", Outcome.FAIL, f"{text}: slower than the line (below {low})", figures)
    return CheckResult("rate", Outcome.PASS, text, figures)


# ---------------------------------------------------------------------------------------------------------------
# flow control and hang-up


@dataclass(frozen=True)
class FlowObservation:
    """What the RTS/CTS check saw: side B stopped reading while side A wrote."""

    written: int  # bytes A's writes took before it stopped (or the limit)
    stopped: bool  # A's writes made no progress for the stall time
    limit: int  # bytes A would have written at most
    cts_while_stopped: bool | None  # A's CTS input while stopped (None: unreadable)
    received_ok: bool  # once B read again, everything A wrote arrived in order (a prefix of the pattern)
    received: int


def judge_flow(obs: FlowObservation) -> CheckResult:
    figures = {"written": obs.written, "received": obs.received, "cts_while_stopped": obs.cts_while_stopped}
    if not obs.stopped:
        return CheckResult(
            "rts/cts",
            Outcome.FAIL,
            f"the writer never stopped ({obs.written} bytes while the reader did not read): RTS/CTS not wired "
            "or not honoured",
            figures,
        )
    if obs.received == 0:
        return CheckResult(
            "rts/cts",
            Outcome.FAIL,
            "the writer stopped and nothing crossed even when the reader read: its CTS never rose "
            "(CTS not wired to the other side's RTS?)",
            figures,
        )
    if not obs.received_ok:
        return CheckResult(
            "rts/cts",
            Outcome.FAIL,
            f"the writer stopped but bytes were lost or changed ({obs.received} of {obs.written} arrived intact): "
            "the receiver overran before RTS dropped",
            figures,
        )
    if obs.cts_while_stopped:
        return CheckResult(
            "rts/cts",
            Outcome.FAIL,
            f"the writer stopped after {obs.written} bytes but its CTS stayed up: it stopped for another reason",
            figures,
        )
    return CheckResult(
        "rts/cts",
        Outcome.PASS,
        f"the writer stopped after {obs.written} bytes with CTS down; all arrived once the reader read again",
        figures,
    )


@dataclass(frozen=True)
class HangupObservation:
    """One direction of the DTR check: `side` dropped DTR; the other side's (DSR, DCD) before, during, after."""

    side: str
    before: tuple[bool, bool]
    dropped: tuple[bool, bool]
    raised: tuple[bool, bool]


def judge_hangup(observations: list[HangupObservation]) -> CheckResult:
    problems: list[str] = []
    seen: list[str] = []
    for obs in observations:
        other = "B" if obs.side == "A" else "A"
        changed = [name for i, name in enumerate(("DSR", "DCD")) if obs.before[i] and not obs.dropped[i]]
        if not changed:
            problems.append(f"{other} saw no DSR/DCD drop when {obs.side} dropped DTR")
            continue
        back = [name for i, name in enumerate(("DSR", "DCD")) if obs.raised[i]]
        if not back:
            problems.append(f"{other}'s {'/'.join(changed)} did not come back when {obs.side} raised DTR")
            continue
        seen.append(f"{obs.side} DTR -> {other} {'+'.join(changed)}")
    figures = {"seen": seen}
    if problems:
        return CheckResult(
            "dtr hang-up",
            Outcome.FAIL,
            "; ".join(problems) + " (DTR-DSR/DCD not wired? on a bench without them give --no-dtr)",
            figures,
        )
    return CheckResult("dtr hang-up", Outcome.PASS, "; ".join(seen), figures)


def exit_status(results: list[CheckResult], *, requested: Collection[str] = ()) -> int:
    """0: no check failed and every check asked for by name (`requested`: "rts/cts" for --rtscts, "dtr hang-up"
    for --dtr) passed; 1: a check failed; 3: none failed but a check asked for by name could not be tested (a pty).
    A row skipped because it was not asked for (no --rtscts) or turned off (--no-dtr) never changes the status."""
    if any(r.outcome is Outcome.FAIL for r in results):
        return 1
    if any(r.check in requested and r.outcome is not Outcome.PASS for r in results):
        return 3
    return 0


def render_table(results: list[CheckResult]) -> str:
    """The summary table: check, result, detail."""
    rows = [("check", "result", "detail")] + [(r.check, r.outcome.value, r.detail) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
    lines.insert(1, f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * 6}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# the adapters


class ModemLines(Protocol):
    """The modem control lines of one end (a pyserial port; a fake in tests). Reads raise OSError on a pty."""

    def lines(self) -> dict[str, bool]:
        """The inputs: "cts", "dsr", "cd" (DCD)."""
        ...

    def set_dtr(self, level: bool) -> None: ...


@dataclass
class End:
    """One end of the pair under test: its byte stream, its modem lines, and whether it is a pty."""

    name: str
    stream: trio.abc.Stream
    modem: ModemLines | None
    pty: bool


def is_pty(fd: int) -> bool:
    """True for a pseudo-terminal slave (/dev/pts/N) or master."""
    rdev = os.fstat(fd).st_rdev
    if os.major(rdev) in PTY_SLAVE_MAJORS:
        return True
    try:  # a pty master answers TIOCGPTN (its slave's number); a serial device does not
        fcntl.ioctl(fd, termios.TIOCGPTN, struct.pack("I", 0))  # type: ignore[attr-defined]
    except OSError as exc:
        return exc.errno not in (errno.ENOTTY, errno.EINVAL)
    return True


async def _read_until(end: End, size: int, deadline: float) -> tuple[bytes, float | None, float | None, int]:
    """Reads until `size` bytes, the deadline, or QUIET seconds without a byte after the first. Returns the bytes,
    when the first and the last read returned, and the size of the first read."""
    got = bytearray()
    first_at: float | None = None
    last_at: float | None = None
    first_size = 0
    while len(got) < size:
        limit = deadline if last_at is None else min(deadline, last_at + QUIET)
        with trio.move_on_at(limit):
            data = await end.stream.receive_some(65536)
            if not data:
                break
            now = trio.current_time()
            if first_at is None:
                first_at, first_size = now, len(data)
            last_at = now
            got += data
            continue
        break
    return bytes(got), first_at, last_at, first_size


async def _drain(end: End, seconds: float) -> bytes:
    """Whatever arrives within `seconds` (bytes left over from an earlier check, or extra bytes)."""
    got = bytearray()
    with trio.move_on_after(seconds):
        while True:
            data = await end.stream.receive_some(65536)
            if not data:
                break
            got += data
    return bytes(got)


async def check_bytes(src: End, dst: End, baud: int) -> CheckResult:
    """Sends the byte pattern from src to dst and compares."""
    pattern = byte_pattern()
    line_time = len(pattern) / bound_bytes_per_second(baud)
    await _drain(dst, 0.05)
    received = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(src.stream.send_all, pattern)
        received, *_ = await _read_until(dst, len(pattern), trio.current_time() + line_time * 2 + 2.0)
        nursery.cancel_scope.cancel()  # a writer held for good (CTS never up): what came is the answer
    received += await _drain(dst, 0.1)  # bytes a tty added (CR before LF) come after the count is reached
    return compare_bytes(f"{src.name}->{dst.name}", pattern, received)


async def check_rate(src: End, dst: End, baud: int) -> CheckResult:
    """RATE_SECONDS of line time from src to dst, timed from the first write to the last byte read: the last
    byte cannot arrive sooner than the line takes to carry them all, so a true line never measures above 1 (but
    for its baud-rate error); latency (USB polling, the reader's wake-up) makes it read a little low."""
    size = max(512, int(bound_bytes_per_second(baud) * RATE_SECONDS))
    payload = bytes(i % 251 for i in range(size))
    await _drain(dst, 0.05)
    received = b""
    last_at = None
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        nursery.start_soon(src.stream.send_all, payload)
        deadline = started + RATE_SECONDS / RATE_TOLERANCE[0] * 2 + 2.0
        received, _, last_at, _ = await _read_until(dst, size, deadline)
        nursery.cancel_scope.cancel()  # a writer stuck on a line that stopped
    if received != payload[: len(received)] or len(received) < size:
        return CheckResult(
            "rate", Outcome.FAIL, f"{len(received)} of {size} bytes arrived intact; no rate measured"
        )
    return judge_rate(len(received), (last_at or started) - started, baud, pty=src.pty or dst.pty)


async def check_flow(a: End, b: End, baud: int, *, stall: float | None = None) -> CheckResult:
    """B stops reading; A writes until its writes stop for `stall` seconds (RTS/CTS held it) or a limit; then B
    reads everything, which must be exactly what A wrote."""
    if a.pty or b.pty or a.modem is None:
        return CheckResult("rts/cts", Outcome.NOT_TESTABLE_PTY, "a pty has no RTS/CTS lines")
    rate = bound_bytes_per_second(baud)
    chunk = 64
    stall = stall if stall is not None else max(0.5, 4096 / rate)  # longer than a tty's buffer takes to drain
    limit = min(65536, max(16384, int(rate * 12)))
    pattern = bytes(i % 251 for i in range(limit))
    written = 0
    stopped = False
    cts: bool | None = None
    while written < limit:
        with trio.move_on_after(stall) as scope:
            await a.stream.send_all(pattern[written : written + chunk])
        if scope.cancelled_caught:
            stopped = True
            try:
                cts = a.modem.lines()["cts"]
            except OSError:
                cts = None
            break
        written += chunk
    received, *_ = await _read_until(b, limit, trio.current_time() + limit / rate * 2 + 5.0)
    # a write cut by the stall may have put part of its chunk on the line: what arrived must be a prefix
    intact = received == pattern[: len(received)] and written <= len(received) <= written + chunk
    obs = FlowObservation(written, stopped, limit, cts, intact, len(received))
    return judge_flow(obs)


async def _wait_lines(
    modem: ModemLines, want: Callable[[tuple[bool, bool]], bool], timeout: float
) -> tuple[bool, bool]:
    """Polls DSR and DCD until `want` holds or `timeout` passes (modem-line changes have no portable wake-up)."""
    deadline = trio.current_time() + timeout
    while True:
        lines = modem.lines()
        state = (lines["dsr"], lines["cd"])
        if want(state) or trio.current_time() >= deadline:
            return state
        await trio.sleep(0.01)


async def check_hangup(a: End, b: End, *, timeout: float = 1.0) -> CheckResult:
    """Each side drops DTR, then raises it; the other side must see DSR or DCD follow."""
    if a.pty or b.pty or a.modem is None or b.modem is None:
        return CheckResult("dtr hang-up", Outcome.NOT_TESTABLE_PTY, "a pty has no DTR, DSR or DCD lines")
    try:
        return judge_hangup(await _hangups(a, b, timeout))
    except OSError as exc:  # an adapter without DTR or modem-status support
        return CheckResult(
            "dtr hang-up",
            Outcome.FAIL,
            f"cannot drive DTR or read DSR/DCD: {exc} (an adapter without them: give --no-dtr)",
        )


async def _hangups(a: End, b: End, timeout: float) -> list[HangupObservation]:
    observations: list[HangupObservation] = []
    for side, other in ((a, b), (b, a)):
        assert side.modem is not None and other.modem is not None
        lines = other.modem.lines()
        before = (lines["dsr"], lines["cd"])
        side.modem.set_dtr(False)

        # wait until every line that was up has dropped (a bench may wire DTR to DSR only: then DCD never
        # moves and the wait ends at the timeout)
        def all_dropped(state: tuple[bool, bool], was: tuple[bool, bool] = before) -> bool:
            return not any(now and then for now, then in zip(state, was, strict=True))

        dropped = await _wait_lines(other.modem, all_dropped, timeout)
        side.modem.set_dtr(True)
        raised = await _wait_lines(other.modem, lambda s: any(s), timeout)
        observations.append(HangupObservation(side.name, before, dropped, raised))
    return observations


async def run_checks(
    a: End,
    b: End,
    baud: int,
    *,
    rtscts: bool,
    dtr: bool = True,
    progress: Callable[[str], Awaitable[None] | None] | None = None,
) -> list[CheckResult]:
    """All checks in order: bytes both ways, rate, RTS/CTS (with `rtscts`), DTR hang-up (unless `dtr` is False:
    then that row is skipped, "(--no-dtr)")."""
    results: list[CheckResult] = []

    async def step(what: str, check: Awaitable[CheckResult]) -> None:
        if progress is not None:
            note = progress(what)
            if note is not None:
                await note
        results.append(await check)

    await step("bytes A->B", check_bytes(a, b, baud))
    await step("bytes B->A", check_bytes(b, a, baud))
    await step("rate", check_rate(a, b, baud))
    if rtscts or a.pty or b.pty:
        await step("rts/cts", check_flow(a, b, baud))
    else:
        results.append(
            CheckResult("rts/cts", Outcome.SKIPPED, "not asked: give --rtscts when RTS/CTS are wired")
        )
    if dtr:
        await step("dtr hang-up", check_hangup(a, b))
    else:
        results.append(
            CheckResult(
                "dtr hang-up",
                Outcome.SKIPPED,
                "(--no-dtr) not checked: the bench has no DTR-DSR/DCD wires (a 3-wire or RTS/CTS-only cable)",
                {"skipped_by": "--no-dtr"},
            )
        )
    return results


class SerialModemLines:
    """The modem lines of a pyserial port; a pty answers every ioctl with ENOTTY (raised as OSError)."""

    def __init__(self, port: Any) -> None:
        self._port = port

    def lines(self) -> dict[str, bool]:
        try:
            return {"cts": bool(self._port.cts), "dsr": bool(self._port.dsr), "cd": bool(self._port.cd)}
        except serial.SerialException as exc:
            raise OSError(str(exc)) from exc

    def set_dtr(self, level: bool) -> None:
        try:
            self._port.dtr = level
        except serial.SerialException as exc:
            raise OSError(str(exc)) from exc


def open_end(path: str, name: str, *, baud: int, rtscts: bool) -> End:
    """Opens a tty device (a USB-serial adapter, a board's UART, a pty) through pyserial in raw 8N1 at `baud`,
    with hardware flow control when `rtscts`; I/O goes through its descriptor (bipsim.link.pty.PtyStream)."""
    if "://" in path:
        raise ValueError(
            f"{path}: hil check needs a tty device path (a URL port has no modem lines to check)"
        )
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no such serial line", path)
    try:
        port = serial.Serial(path, baudrate=baud, rtscts=rtscts, timeout=None, exclusive=True)
    except (serial.SerialException, ValueError) as exc:
        raise OSError(errno.EIO, f"cannot open serial line ({exc})", path) from exc
    fd = port.fd
    assert isinstance(fd, int)
    # pyserial leaves VMIN = VTIME = 0 (it times reads with select), so a read of an empty tty returns b"", which
    # a Stream reads as end of file; VMIN = 1 makes an empty non-blocking tty answer EAGAIN instead
    attrs = termios.tcgetattr(fd)
    attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    return End(name, PtyStream(fd, name=path, on_close=port.close), SerialModemLines(port), is_pty(fd))
