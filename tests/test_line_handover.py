"""The CP's serial line changing hands between the AT server and the 27.010 multiplexer (cp/line_service.py):
no byte lost at a switch (link/pushback.py), and each channel's V.250/27.007 settings profile.

The AP side is raw bytes on a memory stream where the byte layout is the point (frames right behind AT+CMUX=0, AT
text right behind the closing frame), and an initiator Mux (link/cmux.py, as-is) where it is not. MockClock
(the tests ask for it: pytest-trio takes the clock from the test's own arguments) without autojump: time stands still, so an answer that arrives at all arrived without a T1 retry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from bipsim.ap.line_client import open_session, setup_channel
from bipsim.cp.card_driver import CardDriver
from bipsim.cp.commands import ModemCommands
from bipsim.cp.line_service import LineService
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork
from bipsim.cp.proxy_link import ProxyLink
from bipsim.link.at_chat import AtChat
from bipsim.link.cmux import CmuxParams, Mux, MuxRole
from bipsim.link.cmux_frame import ControlMessage, ControlType, FrameParser, FrameType, encode_frame
from bipsim.link.pushback import PushbackStream
from bipsim.trace.recorder import NULL_TRACER

# --- PushbackStream ---------------------------------------------------------------------------------------------


async def _pushback_pair() -> tuple[PushbackStream, PushbackStream]:
    a, b = trio.testing.memory_stream_pair()
    return PushbackStream(a), PushbackStream(b)


async def _clogged_pushback_pair() -> tuple[PushbackStream, PushbackStream]:
    a, b = trio.testing.lockstep_stream_pair()
    return PushbackStream(a), PushbackStream(b)


async def test_pushback_stream_keeps_the_trio_stream_contract() -> None:
    await trio.testing.check_two_way_stream(_pushback_pair, _clogged_pushback_pair)


async def test_unread_bytes_come_first_in_order_and_in_pieces() -> None:
    a, b = trio.testing.memory_stream_pair()
    stream = PushbackStream(b)
    await a.send_all(b"line")
    stream.unread(b"DEF")
    stream.unread(b"ABC")  # unread later: read first (as a reader that hands back in reverse order)
    assert stream.pending == 6
    assert await stream.receive_some(4) == b"ABCD"
    assert await stream.receive_some() == b"EF"
    assert await stream.receive_some() == b"line"  # then the wrapped stream again
    with pytest.raises(ValueError):
        await stream.receive_some(0)


async def test_a_cancelled_receive_keeps_the_pushed_back_bytes() -> None:
    stream = PushbackStream(trio.testing.memory_stream_pair()[0])
    stream.unread(b"kept")
    with trio.CancelScope() as scope:
        scope.cancel()
        await stream.receive_some()
    assert scope.cancelled_caught
    assert await stream.receive_some() == b"kept"


async def test_two_receivers_are_busy_and_aclose_drops_what_was_pushed_back(nursery: trio.Nursery) -> None:
    stream = PushbackStream(trio.testing.memory_stream_pair()[0])
    errors: list[type[BaseException]] = []

    async def blocked_reader() -> None:
        try:
            await stream.receive_some()
        except trio.ClosedResourceError as exc:
            errors.append(type(exc))

    nursery.start_soon(blocked_reader)
    await trio.testing.wait_all_tasks_blocked()
    stream.unread(b"x")
    with pytest.raises(trio.BusyResourceError):
        await stream.receive_some()
    await stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert errors == [trio.ClosedResourceError]  # the blocked reader is told, as by the wrapped stream
    assert stream.pending == 0
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        stream.unread(b"late")


# --- the line service ---------------------------------------------------------------------------------------------


class Collector:
    """Reads a stream in the background; `take` returns what arrived once every task waits (the peer is idle:
    time stands still, so no timer fires meanwhile)."""

    def __init__(self, stream: trio.abc.Stream, nursery: trio.Nursery) -> None:
        self.stream = stream
        self.received = bytearray()
        self.scope = trio.CancelScope()
        nursery.start_soon(self._read)

    async def _read(self) -> None:
        with self.scope:
            while data := await self.stream.receive_some():
                self.received += data

    def stop(self) -> None:
        """Stops reading (no byte lost: a cancelled receive takes none), e.g. to hand the line to a Mux."""
        self.scope.cancel()

    async def take(self) -> bytes:
        await trio.testing.wait_all_tasks_blocked()
        data = bytes(self.received)
        self.received.clear()
        return data

    async def at(self, line: bytes) -> bytes:
        await self.stream.send_all(line + b"\r")
        return await self.take()


@dataclass
class Line:
    """The AP's end of the CP's serial line."""

    ap: Collector
    service: LineService
    nursery: trio.Nursery


@pytest.fixture
async def line(nursery: trio.Nursery) -> AsyncIterator[Line]:
    card, _ = simulated_card(None, None, NULL_TRACER)
    commands = ModemCommands(CardDriver(card), CellularNetwork())
    ap, cp = trio.testing.memory_stream_pair()
    service = LineService(cp, commands, ProxyLink())
    nursery.start_soon(service.run)
    yield Line(Collector(ap, nursery), service, nursery)


def frames_of(data: bytes) -> list[tuple[int, FrameType, bytes]]:
    parser = FrameParser()
    return [(f.dlci, f.type, bytes(f.info)) for f in parser.feed(data)]


SABM_DLC0 = encode_frame(0, FrameType.SABM, True, True)  # from the initiator: C/R set for a command
CLD = encode_frame(0, FrameType.UIH, True, False, ControlMessage(ControlType.CLD, True).encode())


async def test_a_sabm_right_behind_at_cmux_gets_its_ua_at_once(
    line: Line, mock_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    await line.ap.at(b"ATE0")
    await line.ap.stream.send_all(b"AT+CMUX=0\r" + SABM_DLC0)  # one write, as a fast AP (or n_gsm) does
    answer = await line.ap.take()
    assert answer.startswith(b"\r\nOK\r\n"), answer  # no echo of the frame as AT text, no ERROR for it
    assert frames_of(answer[6:]) == [(0, FrameType.UA, b"")]
    assert trio.current_time() == start  # answered without a T1 retry
    assert line.service.mux is not None


async def test_at_text_right_behind_the_close_down_is_answered(
    line: Line, mock_clock: trio.testing.MockClock
) -> None:
    await line.ap.at(b"ATE0")
    await line.ap.at(b"AT+CMUX=0")
    await line.ap.stream.send_all(SABM_DLC0)
    await line.ap.take()
    await line.ap.stream.send_all(CLD + b"AT+CGMI\r")  # one write: the close-down, then plain AT again
    answer = await line.ap.take()
    assert answer.endswith(b"\r\nbipsim\r\n\r\nOK\r\n"), answer
    assert line.service.mux is None
    # a flag byte left behind by a close-down is noise before the AT prefix (V.250 section 5.2.1)
    assert await line.ap.at(b"\xf9AT") == b"\r\nOK\r\n"


async def _multiplexed(line: Line) -> Mux:
    """AT+CMUX=0 on the plain line, then an initiator Mux on the AP's end (the collector stops reading)."""
    assert (await line.ap.at(b"AT+CMUX=0")).endswith(b"\r\nOK\r\n")
    line.ap.stop()
    await trio.testing.wait_all_tasks_blocked()
    mux = Mux(line.ap.stream, role=MuxRole.INITIATOR, params=CmuxParams())
    line.nursery.start_soon(mux.run)
    return mux


async def test_dlc1_starts_from_the_line_settings_and_the_line_keeps_its_own(
    line: Line, mock_clock: trio.testing.MockClock
) -> None:
    await line.ap.at(b"ATE0")
    assert await line.ap.at(b"AT+CMEE=1") == b"\r\nOK\r\n"
    mux = await _multiplexed(line)
    dlc1 = Collector(await mux.open_dlc(1), line.nursery)
    # no echo (E0), numeric +CME ERROR (+CMEE=1) on DLC 1 as on the line
    assert await dlc1.at(b"AT+CMEE?") == b"\r\n+CMEE: 1\r\n\r\nOK\r\n"
    assert await dlc1.at(b"AT+CFUN=7") == b"\r\n+CME ERROR: 50\r\n"
    # DLC 1's own changes stay on DLC 1
    assert await dlc1.at(b"ATE1V0+CMEE=2") == b"0\r"  # its own echo went out before E1 ran
    assert await dlc1.at(b"AT+CFUN=7") == b"AT+CFUN=7\r+CME ERROR: incorrect parameters\r\n"
    await mux.close_down()
    await trio.testing.wait_all_tasks_blocked()
    assert line.service.mux is None
    plain = Collector(line.ap.stream, line.nursery)
    # the plain line after close-down: still E0 and +CMEE=1 (V.250 section 6.2.4: until Z / &F)
    assert await plain.at(b"AT+CMEE?") == b"\r\n+CMEE: 1\r\n\r\nOK\r\n"
    assert await plain.at(b"AT+CFUN=7") == b"\r\n+CME ERROR: 50\r\n"
    assert await plain.at(b"ATZ") == b"\r\nOK\r\n"
    assert await plain.at(b"AT") == b"AT\r\r\nOK\r\n"  # factory settings: echo again


async def test_the_ap_sets_up_dlc1_itself(line: Line, mock_clock: trio.testing.MockClock) -> None:
    """The plain line at factory settings (echo on, +CMEE=0): the AP sends ATE0 and AT+CMEE=1 on DLC 1, as a RIL
    does on each channel, so the AP's SMS-PP retry can read +CME ERROR: 14 there."""
    assert await line.ap.at(b"AT") == b"AT\r\r\nOK\r\n"
    mux = await _multiplexed(line)
    session = await open_session(mux)
    chat = AtChat(session.modem)
    line.nursery.start_soon(chat.run)
    await setup_channel(chat)
    cmee = await chat.command("AT+CMEE?")
    assert cmee.ok and cmee.lines == ("+CMEE: 1",)  # no echo (ATE0) and numeric errors on DLC 1
    assert (await chat.command("AT%SMSPP=1")).cme_error == 50
