"""The vpcd protocol of `bipsim card serve` (uicc/vpcd.py): the sans-IO codec and session against the simulated
card, the trio adapter over memory streams, and its reconnection over loopback TCP. The framing facts (2-byte
big-endian length; control bytes 0 off, 1 on, 2 reset, 4 ATR; only the ATR is answered) are those of vsmartcard's
vpcd (virtualsmartcard/src/vpcd/vpcd.c and vpcd.h)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing

from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from bipsim.uicc.card import ATR, SimCard
from bipsim.uicc.profile import load_profile
from bipsim.uicc.transitions import IllegalSessionEvent
from bipsim.uicc.vpcd import (
    MAX_APDU,
    POWER,
    CardPower,
    CommandApdu,
    Control,
    ControlMessage,
    FramingError,
    ReaderEvent,
    VpcdDecoder,
    VpcdSession,
    apdu_records,
    encode_frame,
    run_connection,
    serve_vpcd,
)


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


def test_every_control_byte_and_an_apdu_split_anywhere() -> None:
    stream = b"".join(frame(bytes((c,))) for c in (0, 1, 2, 4)) + frame(bytes.fromhex("00A4000C023F00"))
    for cut in range(len(stream) + 1):
        decoder = VpcdDecoder()
        messages = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert messages == [
            ControlMessage(Control.POWER_OFF),
            ControlMessage(Control.POWER_ON),
            ControlMessage(Control.RESET),
            ControlMessage(Control.GET_ATR),
            CommandApdu(bytes.fromhex("00A4000C023F00")),
        ]
        assert decoder.end() is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x00", "zero_length"),
        ((MAX_APDU + 1).to_bytes(2, "big") + b"\x00" * 10, "oversize"),
        (b"\xff\xff", "oversize"),
        (frame(b"\x03"), "unknown_control"),
        (frame(b"\x05"), "unknown_control"),
    ],
)
def test_bad_frames_fail_the_decoder_once(data: bytes, reason: str) -> None:
    decoder = VpcdDecoder()
    messages = decoder.feed(frame(b"\x04") + data)
    assert messages[0] == ControlMessage(Control.GET_ATR)
    assert isinstance(messages[1], FramingError) and messages[1].reason == reason
    assert decoder.failed
    assert decoder.feed(frame(b"\x04")) == []  # nothing after the error


def test_a_stream_ending_inside_a_message_is_torn() -> None:
    decoder = VpcdDecoder()
    assert decoder.feed(b"\x00\x07\x00\xa4") == []
    torn = decoder.end()
    assert isinstance(torn, FramingError) and torn.reason == "torn"
    assert VpcdDecoder().end() is None


def test_the_largest_short_apdu_passes() -> None:
    apdu = bytes.fromhex("00D60000FF") + b"\x00" * 255 + b"\x00"
    assert len(apdu) == MAX_APDU
    assert VpcdDecoder().feed(frame(apdu)) == [CommandApdu(apdu)]


def test_encode_frame_refuses_what_vpcd_cannot_carry() -> None:
    assert encode_frame(b"\x90\x00") == b"\x00\x02\x90\x00"
    with pytest.raises(ValueError):
        encode_frame(b"")
    with pytest.raises(ValueError):
        encode_frame(b"\x00" * 0x10000)


def card(tmp_path: Path | None = None) -> SimCard:
    return SimCard(load_profile(), state_path=tmp_path / "state.json" if tmp_path else None)


def test_session_answers_the_atr_only_and_traces_it_once_per_power_on() -> None:
    session = VpcdSession(card())
    exchanges = session.receive(frame(b"\x01") + frame(b"\x04") + frame(b"\x04") + frame(b"\x04"))
    assert [e.frame for e in exchanges] == [b"", frame(ATR), frame(ATR), frame(ATR)]
    kinds = [r.kind for e in exchanges for r in e.records]
    assert kinds == [Kind.VPCD_CONTROL, Kind.APDU_ATR]
    assert session.presence_polls == 2
    again = session.receive(frame(b"\x02") + frame(b"\x04"))
    assert [r.kind for e in again for r in e.records] == [Kind.VPCD_CONTROL, Kind.APDU_ATR]


def test_power_on_and_reset_start_the_card_afresh() -> None:
    session = VpcdSession(card())
    (selected,) = session.receive(frame(bytes.fromhex("00A4000C022FE2")))
    assert selected.frame == frame(b"\x90\x00")
    (read,) = session.receive(frame(bytes.fromhex("00B0000001")))
    assert read.frame[-2:] == b"\x90\x00"
    for control in (b"\x01", b"\x02"):
        session.receive(frame(bytes.fromhex("00A4000C022FE2")))
        session.receive(frame(control))
        (after,) = session.receive(frame(bytes.fromhex("00B0000001")))
        assert after.frame == frame(b"\x69\x86")  # no EF selected after the reset


def test_apdus_and_power_off_save_the_card_state(tmp_path: Path) -> None:
    sim = card(tmp_path)
    session = VpcdSession(sim)
    session.receive(frame(bytes.fromhex("00A4080C047FF06F46")))
    (update,) = session.receive(frame(bytes.fromhex("00D6000001") + b"\x01"))
    assert update.frame == frame(b"\x90\x00")
    # written before the answer went out (the reader may vanish at any time)
    assert json.loads((tmp_path / "state.json").read_text())["files"]["3F00/7FF0/6F46"].startswith("01")
    (tmp_path / "state.json").unlink()
    sim.fs.usim.children[0x6F46].data[1] = 0x42  # a change no APDU made: only the power off writes it
    session.receive(frame(b"\x00"))
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["files"]["3F00/7FF0/6F46"].startswith("0142")
    assert SimCard(load_profile(), state_path=tmp_path / "state.json").fs.usim.children[0x6F46].data[0] == 1


def test_a_bad_frame_is_traced_closes_and_keeps_the_state(tmp_path: Path) -> None:
    sim = card(tmp_path)
    session = VpcdSession(sim)
    session.receive(frame(bytes.fromhex("00A4080C047FF06F46")))
    session.receive(frame(bytes.fromhex("00D6000001") + b"\x02"))
    (bad,) = session.receive(b"\x00\x00")
    assert bad.close and bad.frame == b""
    (record,) = bad.records
    assert record.kind is Kind.VPCD_ERROR and record.error and record.fields == {"reason": "zero_length"}
    assert json.loads((tmp_path / "state.json").read_text())["files"]["3F00/7FF0/6F46"].startswith("02")


def test_apdu_records_name_the_cat_commands_like_the_card_driver() -> None:
    command, response = apdu_records(bytes.fromhex("00A4000C022FE2"), b"\x90\x00")
    assert (command.kind, command.fields, response.kind, response.fields) == (
        Kind.APDU_COMMAND,
        {"cla": "00", "ins": "A4"},
        Kind.APDU_RESPONSE,
        {"sw": "9000"},
    )
    profile, _ = apdu_records(bytes.fromhex("801000000401020304"), b"\x91\x0f")
    assert profile.kind is Kind.CAT_TERMINAL_PROFILE
    # a FETCH answered with a DISPLAY TEXT (TS 102 223 section 6.6.1) becomes cat.proactive with its facts
    display = bytes.fromhex("D00D8103012180820281028D020448") + b"\x90\x00"
    fetch, proactive = apdu_records(bytes.fromhex("801200000F"), display)
    assert fetch.kind is Kind.CAT_FETCH and fetch.fields == {"length": 15}
    assert proactive.kind is Kind.CAT_PROACTIVE
    assert proactive.fields["command"] == "DISPLAY TEXT" and proactive.fields["sw"] == "9000"
    tr, _ = apdu_records(bytes.fromhex("801400000C810301218082028281830100"), b"\x90\x00")
    assert tr.kind is Kind.CAT_TERMINAL_RESPONSE and tr.fields == {"command": "DISPLAY TEXT", "result": 0}
    garbage, _ = apdu_records(bytes.fromhex("8014000002FFFF"), b"\x6f\x00")
    assert garbage.kind is Kind.CAT_TERMINAL_RESPONSE and garbage.fields == {}


class RecordingStream(trio.abc.Stream):
    """One end of a memory stream pair that remembers each send_all (to check one write per answer)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def read_frame(stream: trio.abc.Stream) -> bytes:
    buffer = b""
    while len(buffer) < 2 or len(buffer) < 2 + int.from_bytes(buffer[:2], "big"):
        chunk = await stream.receive_some()
        assert chunk, "the card closed the connection"
        buffer += chunk
    return buffer[2:]


async def test_adapter_answers_each_apdu_in_one_write_and_traces_it() -> None:
    reader, card_end = trio.testing.memory_stream_pair()
    recording = RecordingStream(card_end)
    tracer = Tracer(keep=True)
    session = VpcdSession(card())
    async with trio.open_nursery() as nursery:
        result: list[str] = []

        async def serve() -> None:
            result.append(await run_connection(recording, session, tracer))

        nursery.start_soon(serve)
        await reader.send_all(frame(b"\x01") + frame(b"\x04"))
        assert await read_frame(reader) == ATR
        await reader.send_all(frame(bytes.fromhex("00A40004023F00")))
        assert (await read_frame(reader))[:1] == b"\x61"
        await reader.send_all(frame(bytes.fromhex("00C0000000")))
        fcp = await read_frame(reader)
        assert fcp[0] == 0x62 and fcp[-2:] == b"\x90\x00"
        await reader.aclose()
    assert result == ["closed"]
    assert recording.writes == [frame(ATR), frame(b"\x61" + recording.writes[1][3:]), frame(fcp)]
    kinds = [e.kind for e in tracer.events]
    assert kinds == [
        Kind.VPCD_CONTROL,
        Kind.APDU_ATR,
        Kind.APDU_COMMAND,
        Kind.APDU_RESPONSE,
        Kind.APDU_COMMAND,
        Kind.APDU_RESPONSE,
    ]
    assert {(e.src, e.dst) for e in tracer.events if e.kind == Kind.APDU_COMMAND} == {("reader", "uicc")}


@pytest.mark.parametrize("bad", [b"\x00\x00", b"\x01\x2c" + b"\x00" * 300, frame(b"\x07")])
async def test_adapter_drops_the_connection_on_a_bad_frame(bad: bytes) -> None:
    reader, card_end = trio.testing.memory_stream_pair()
    tracer = Tracer(keep=True)
    async with trio.open_nursery() as nursery:
        result: list[str] = []

        async def serve() -> None:
            result.append(await run_connection(card_end, VpcdSession(card()), tracer))

        nursery.start_soon(serve)
        await reader.send_all(bad)
        assert await reader.receive_some() == b""  # the card hung up
    assert result == ["dropped"]
    assert [e.kind for e in tracer.events] == [Kind.VPCD_ERROR]


async def test_serve_reconnects_when_the_reader_goes_away() -> None:
    """A real loopback listener plays pcscd's vpcd driver: it hangs up after one APDU, and the card connects
    again with a fresh session (pcscd restarted)."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    tracer = Tracer(keep=True)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: serve_vpcd(card(), "127.0.0.1", port, tracer=tracer, max_connections=2)
            )
            for round_ in range(2):
                stream = await listener.accept()
                await stream.send_all(frame(bytes.fromhex("00A4000C022FE2")))
                assert await read_frame(stream) == b"\x90\x00"
                if round_ == 1:
                    await stream.send_all(b"\x00\x00")  # a wrong length: the card drops this connection
                    assert await stream.receive_some() == b""
                await stream.aclose()
    await listener.aclose()
    events = [e.fields.get("event") for e in tracer.events if e.kind == Kind.APP_EVENT]
    assert events == ["vpcd_connected", "vpcd_disconnected", "vpcd_connected", "vpcd_disconnected"]
    reasons = [e.fields["reason"] for e in tracer.events if e.fields.get("event") == "vpcd_disconnected"]
    assert reasons == ["closed", "dropped"]


async def test_serve_waits_for_a_reader_that_is_not_there_yet(autojump_clock: trio.abc.Clock) -> None:
    """Nothing listens: the card retries with backoff (MockClock jumps the sleeps) and says so once."""
    probe = trio.socket.socket()
    await probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]  # bound but not listening: connections are refused
    statuses: list[str] = []
    tracer = Tracer(keep=True)
    with trio.move_on_after(30):
        await serve_vpcd(card(), "127.0.0.1", port, tracer=tracer, on_status=statuses.append)
    probe.close()
    assert len(statuses) == 1 and statuses[0].startswith(f"waiting for the vpcd reader at 127.0.0.1:{port}")
    assert [e.fields["event"] for e in tracer.events] == ["vpcd_waiting"]


def test_the_power_table_is_total_for_a_connected_card_and_empty_once_gone() -> None:
    for state in (CardPower.UNPOWERED, CardPower.POWERED):
        for event in ReaderEvent:
            assert POWER.allows(state, event), (state, event)
    for event in ReaderEvent:
        with pytest.raises(IllegalSessionEvent):
            POWER.next(CardPower.GONE, event)


def test_session_moves_through_the_power_table() -> None:
    session = VpcdSession(card())
    states = [session.state]
    for message in (b"\x04", b"\x01", b"\x00", bytes.fromhex("00A4000C023F00"), b"\x02"):
        session.receive(frame(message))
        states.append(session.state)
    (bad,) = session.receive(b"\x00\x00")
    assert bad.close
    states.append(session.state)
    U, P, G = CardPower.UNPOWERED, CardPower.POWERED, CardPower.GONE
    assert states == [U, U, P, U, P, P, G]
    assert session.receive(frame(b"\x04")) == []  # nothing once gone
