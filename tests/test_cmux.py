"""27.010 mux: frames (published vectors), two muxes over memory streams, DLC streams, control channel, faults."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from bipsim.link.cmux import CmuxParams, DlcRefused, Mux, MuxRole, MuxTimeout
from bipsim.link.cmux_frame import FrameParser, FrameType, encode_frame, fcs


def test_published_frames() -> None:
    # 3GPP TS 27.010 annex / the Linux n_gsm documentation examples: SABM and UA on DLC 0 with their FCS
    assert encode_frame(0, FrameType.SABM, True, True) == bytes.fromhex("F9033F011CF9")
    assert encode_frame(0, FrameType.UA, True, True) == bytes.fromhex("F9037301D7F9")
    # DISC DLC 0 (F9 03 53 01 FD F9): also in the n_gsm examples
    assert encode_frame(0, FrameType.DISC, True, True) == bytes.fromhex("F9035301FDF9")
    assert fcs(bytes.fromhex("033F01")) == 0x1C


def test_parser_drops_bad_fcs_and_resynchronises() -> None:
    parser = FrameParser()
    good = encode_frame(1, FrameType.UIH, True, False, b"AT\r")
    bad = bytearray(good)
    bad[-2] ^= 0xFF
    truncated = good[:4]  # a flag follows inside what would be its body
    frames = parser.feed(b"\x00garbage" + bytes(bad) + truncated + good + good)
    assert [f.info for f in frames] == [b"AT\r", b"AT\r"]
    assert parser.bad_fcs == 1


@pytest.fixture
async def muxes(nursery: trio.Nursery) -> tuple[Mux, Mux]:
    a, b = trio.testing.memory_stream_pair()
    params = CmuxParams(n1=127)
    initiator = Mux(a, role=MuxRole.INITIATOR, params=params)
    responder = Mux(b, role=MuxRole.RESPONDER, params=params)
    nursery.start_soon(initiator.run)
    nursery.start_soon(responder.run)
    return initiator, responder


async def test_dlc_open_data_close(muxes: tuple[Mux, Mux]) -> None:
    initiator, responder = muxes
    dlc = await initiator.open_dlc(2)
    peer = await responder.accept_dlc()
    assert peer.dlci == 2
    await dlc.send_all(b"x" * 1000)
    got = b""
    while len(got) < 1000:
        got += await peer.receive_some()
    assert got == b"x" * 1000
    await dlc.aclose()
    assert await peer.receive_some() == b""


async def test_dlcs_are_two_way_streams(nursery: trio.Nursery) -> None:
    async def maker() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        a, b = trio.testing.memory_stream_pair()
        initiator = Mux(a, role=MuxRole.INITIATOR, params=CmuxParams(n1=512))
        responder = Mux(b, role=MuxRole.RESPONDER, params=CmuxParams(n1=512))
        nursery.start_soon(initiator.run)
        nursery.start_soon(responder.run)
        local = await initiator.open_dlc(3)
        return local, await responder.accept_dlc()

    await trio.testing.check_two_way_stream(maker, None)


async def test_control_channel(muxes: tuple[Mux, Mux]) -> None:
    initiator, responder = muxes
    await initiator.open_dlc(0)
    assert await initiator.test(b"ping") == b"ping"
    await initiator.close_down()
    with trio.fail_after(2):
        while not responder.closed:
            await trio.sleep(0.01)


async def test_refused_and_silent_peer(nursery: trio.Nursery) -> None:
    a, b = trio.testing.memory_stream_pair()
    initiator = Mux(a, role=MuxRole.INITIATOR, params=CmuxParams(t1=0.05, n2=2))
    responder = Mux(b, role=MuxRole.RESPONDER, accept=lambda dlci: dlci != 9)
    nursery.start_soon(initiator.run)
    nursery.start_soon(responder.run)
    with pytest.raises(DlcRefused):
        await initiator.open_dlc(9)
    await initiator.open_dlc(1)
    with pytest.raises(Exception, match="already open"):
        await initiator.open_dlc(1)

    c, d = trio.testing.memory_stream_pair()  # nobody reads d: SABM is never answered
    lonely = Mux(c, role=MuxRole.INITIATOR, params=CmuxParams(t1=0.05, n2=2))
    nursery.start_soon(lonely.run)
    with pytest.raises(MuxTimeout):
        await lonely.open_dlc(0)
    assert lonely.stats.retransmissions == 2


async def test_disc_of_unopened_dlc_gets_dm(nursery: trio.Nursery) -> None:
    a, b = trio.testing.memory_stream_pair()
    responder = Mux(b, role=MuxRole.RESPONDER)
    nursery.start_soon(responder.run)
    await a.send_all(encode_frame(5, FrameType.DISC, True, True))
    parser = FrameParser()
    frames = []
    with trio.fail_after(2):
        while not frames:
            frames = parser.feed(await a.receive_some())
    assert frames[0].type is FrameType.DM and frames[0].dlci == 5
