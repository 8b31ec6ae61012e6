"""27.010 mux: frames (published vectors), two muxes over memory streams, DLC streams, control channel, faults."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from bipsim.link.cmux import CmuxParams, DlcRefused, Mux, MuxRole, MuxTimeout
from bipsim.link.cmux_frame import Frame, FrameParser, FrameType, encode_frame, fcs
from bipsim.trace.recorder import Tracer


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


@pytest.mark.parametrize("piece", [1, 7, 1031, 4095, 65536])
def test_parser_gives_the_same_frames_whatever_the_read_size(piece: int) -> None:
    """Reads cut the line anywhere (a pty read is 4 KiB at most): long frames arrive over many feeds, and a long
    frame cut short by a sender that restarted must still give way to the frames after it."""
    long = bytes(range(256)) * 120  # 30720 bytes, 0xF9 included, as in real data
    cut_short = encode_frame(2, FrameType.UIH, True, False, long)[:9000]
    line = (
        encode_frame(1, FrameType.UIH, True, False, long)
        + encode_frame(1, FrameType.UIH, True, False, b"AT\r")
        + encode_frame(3, FrameType.UIH, False, False, long[:1024])
        + cut_short
        + encode_frame(1, FrameType.SABM, True, True)
        + encode_frame(1, FrameType.UIH, True, False, long[:300])
    )
    whole = FrameParser().feed(line)
    assert [(f.dlci, len(f.info)) for f in whole] == [(1, 30720), (1, 3), (3, 1024), (1, 0), (1, 300)]
    parser = FrameParser()
    frames = [f for i in range(0, len(line), piece) for f in parser.feed(line[i : i + piece])]
    assert frames == whole
    assert parser.malformed == 1 and parser.bad_fcs == 0


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


# --- faults: each ends in the specified frame or error, never a hang or a crash ----------------------------------


class Wire:
    """The far end of a line as raw bytes, with our parser to read what the mux under test sent."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.parser = FrameParser()
        self.pending: list[Frame] = []

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def frame(self) -> Frame:
        with trio.fail_after(5):
            while not self.pending:
                self.pending += self.parser.feed(await self.stream.receive_some())
        return self.pending.pop(0)

    async def expect(self, dlci: int, ftype: FrameType) -> Frame:
        frame = await self.frame()
        while frame.dlci == 0 and frame.type is FrameType.UIH:  # control messages (MSC after an open)
            frame = await self.frame()
        assert (frame.dlci, frame.type) == (dlci, ftype), frame
        return frame


@pytest.fixture
async def responder(nursery: trio.Nursery) -> tuple[Mux, Wire]:
    a, b = trio.testing.memory_stream_pair()
    mux = Mux(b, role=MuxRole.RESPONDER)
    nursery.start_soon(mux.run)
    return mux, Wire(a)


@pytest.fixture
async def traced_responder(nursery: trio.Nursery) -> tuple[Mux, Wire, Tracer]:
    a, b = trio.testing.memory_stream_pair()
    tracer = Tracer(keep=True)
    mux = Mux(b, role=MuxRole.RESPONDER, tracer=tracer)
    nursery.start_soon(mux.run)
    return mux, Wire(a), tracer


async def test_corrupted_bytes_are_counted_traced_and_the_mux_carries_on(
    traced_responder: tuple[Mux, Wire, Tracer],
) -> None:
    mux, wire, tracer = traced_responder
    sabm = encode_frame(0, FrameType.SABM, True, True)
    flipped = bytearray(sabm)
    flipped[1] ^= 0x04  # a bit error in the address (DLC 1 now): the FCS no longer matches
    await wire.send(bytes(range(256)) + bytes(flipped) + b"\xf9\x00\xf9" + bytes(40))
    await wire.send(sabm)  # the next good frame is still understood
    await wire.expect(0, FrameType.UA)
    assert mux.parser.bad_fcs >= 1 and mux.parser.malformed >= 1
    dropped = [e for e in tracer.events if e.error and e.summary.startswith("frames dropped")]
    assert dropped and "bad FCS" in dropped[0].summary
    # a control message whose length overruns its frame: traced and ignored, no answer, no crash
    await wire.send(encode_frame(0, FrameType.UIH, True, False, bytes.fromhex("E30903")))
    await wire.send(encode_frame(0, FrameType.UIH, True, False, bytes.fromhex("2303AB")))  # Test, value AB
    reply = await wire.frame()
    assert reply.type is FrameType.UIH and reply.info == bytes.fromhex("2103AB")  # Test response, C/R = 0
    assert not mux.closed


async def test_flag_inside_a_truncated_frame(responder: tuple[Mux, Wire]) -> None:
    mux, wire = responder
    cut = encode_frame(1, FrameType.UIH, True, False, b"lost data")[:6]  # cut short, then a new frame starts
    await wire.send(cut + encode_frame(0, FrameType.SABM, True, True))
    await wire.expect(0, FrameType.UA)
    # the same inside a longer frame's information field, its length octet promising more than arrives
    await wire.send(encode_frame(1, FrameType.SABM, True, True))
    await wire.expect(1, FrameType.UA)
    stream = await mux.accept_dlc()
    await wire.send(b"\xf9\x07\xef\x41hello" + encode_frame(1, FrameType.UIH, True, False, b"intact"))
    with trio.fail_after(5):
        assert await stream.receive_some() == b"intact"
    assert mux.parser.malformed >= 1


async def test_dlc_opened_twice_by_the_peer(responder: tuple[Mux, Wire]) -> None:
    mux, wire = responder
    await wire.send(encode_frame(0, FrameType.SABM, True, True))
    await wire.expect(0, FrameType.UA)
    for _ in range(2):  # a repeated SABM (its UA lost, say) is answered UA again and makes no second DLC
        await wire.send(encode_frame(3, FrameType.SABM, True, True))
        await wire.expect(3, FrameType.UA)
    first = await mux.accept_dlc()
    assert first.dlci == 3
    assert mux.connection.generation(3) == 1  # one establishment: one stream


async def test_data_and_disc_on_unopened_dlcs_get_dm(responder: tuple[Mux, Wire]) -> None:
    mux, wire = responder
    await wire.send(encode_frame(0, FrameType.SABM, True, True))
    await wire.expect(0, FrameType.UA)
    await wire.send(encode_frame(6, FrameType.UIH, True, False, b"nobody"))
    assert (await wire.expect(6, FrameType.DM)).pf
    await wire.send(encode_frame(6, FrameType.DISC, True, True))
    assert (await wire.expect(6, FrameType.DM)).pf
    assert mux.stats.dm_sent == 2 and not mux.closed


async def test_peer_never_answers_sabm(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    a, b = trio.testing.memory_stream_pair()
    params = CmuxParams(t1=0.1, n2=3)
    mux = Mux(a, role=MuxRole.INITIATOR, params=params)
    nursery.start_soon(mux.run)
    start = trio.current_time()
    with pytest.raises(MuxTimeout, match="SABM on DLC 0 after 4 tries"):
        await mux.open_dlc(1)  # DLC 0 first: never answered
    assert trio.current_time() - start >= (params.n2 + 1) * params.t1
    # exactly the first SABM and N2 retransmissions went out, all with P set
    sent = FrameParser().feed(await b.receive_some())
    assert [(f.dlci, f.type, f.pf) for f in sent] == [(0, FrameType.SABM, True)] * (params.n2 + 1)
    assert mux.stats.retransmissions == params.n2
    from bipsim.link.cmux import DlcState

    assert mux.connection.dlc_state(0) is DlcState.CLOSED  # a later attempt starts from scratch


async def test_peer_goes_silent_before_disc(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    a, b = trio.testing.memory_stream_pair()
    initiator = Mux(a, role=MuxRole.INITIATOR, params=CmuxParams(t1=0.1, n2=2))
    nursery.start_soon(initiator.run)
    wire = Wire(b)

    async def answer_opens() -> None:
        for dlci in (0, 2):
            await wire.expect(dlci, FrameType.SABM)
            await wire.send(encode_frame(dlci, FrameType.UA, True, True))

    nursery.start_soon(answer_opens)
    dlc = await initiator.open_dlc(2)
    await dlc.aclose()  # DISC never answered: aclose still returns after T1/N2, the DLC is closed
    with pytest.raises(trio.ClosedResourceError):
        await dlc.send_all(b"x")


async def test_a_stale_stream_of_a_reestablished_dlc_leaves_the_new_one_alone(muxes: tuple[Mux, Mux]) -> None:
    """The peer releases a DLC and establishes it again (a BIP channel closed by the server, then reopened on the
    same DLCI) before our side's user closes its old stream: the old stream reads end of file, cannot write,
    and its late aclose() must not release the new DLC (found by the server-drops scenario under load: the AP's
    late DISC bookkeeping closed the reopened DLC 3 and the channel's data got DM)."""
    initiator, responder = muxes
    old = await responder.open_dlc(3)
    stale = await initiator.accept_dlc()
    await old.aclose()  # the peer (responder) releases DLC 3 ...
    assert await stale.receive_some() == b""
    new = await responder.open_dlc(3)  # ... and establishes it again
    fresh = await initiator.accept_dlc()
    with pytest.raises(trio.BrokenResourceError):
        await stale.send_all(b"old")
    assert await stale.receive_some() == b""  # the new DLC's data is not the old stream's
    with trio.fail_after(5):
        await stale.aclose()  # the late clean-up of the old channel
        await new.send_all(b"new channel")
        assert await fresh.receive_some() == b"new channel"
        await fresh.send_all(b"answer")
        assert await new.receive_some() == b"answer"


async def test_ua_and_a_new_sabm_in_one_read_leave_the_new_dlc_open(responder: tuple[Mux, Wire]) -> None:
    """We release DLC 3; the peer's UA and its SABM establishing DLC 3 again arrive in one line read. The task
    closing the old stream resumes while the mux writes the new UA and must not close the new establishment."""
    mux, wire = responder
    await wire.send(encode_frame(0, FrameType.SABM, True, True) + encode_frame(3, FrameType.SABM, True, True))
    await wire.expect(0, FrameType.UA)
    await wire.expect(3, FrameType.UA)
    old = await mux.accept_dlc()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(old.aclose)
        await wire.expect(3, FrameType.DISC)
        await wire.send(
            encode_frame(3, FrameType.UA, False, True) + encode_frame(3, FrameType.SABM, True, True)
        )
        await wire.expect(3, FrameType.UA)
    new = await mux.accept_dlc()
    await wire.send(encode_frame(3, FrameType.UIH, True, False, b"ClientHello"))
    with trio.fail_after(5):
        assert await new.receive_some() == b"ClientHello"
    assert mux.stats.dm_sent == 0


# --- cancellation: trio's Stream contract says a cancelled receive_some consumed nothing ------------------------


class GatedLine(trio.abc.Stream):
    """A line whose writes wait while `gate` is set and unset: holds the mux's next frame before any byte goes."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.gate: trio.Event | None = None
        self.held = 0  # writes waiting at the gate now

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.gate is not None:
            self.held += 1
            try:
                await self.gate.wait()
            finally:
                self.held -= 1
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def test_a_reader_cancelled_while_flow_control_resumes_loses_no_byte(nursery: trio.Nursery) -> None:
    """The DLC's buffer went over the high mark (we sent MSC FC); a read that takes it below the low mark sends
    MSC without FC first. A reader cancelled while that MSC waits for the line (an AT or BIP timeout) must leave
    every byte in the buffer, and a later read must still turn the peer's flow back on."""
    from bipsim.link.cmux import RX_HIGH, RX_LOW
    from bipsim.link.cmux_frame import MSC_FC, ControlType, decode_control

    a, b = trio.testing.memory_stream_pair()
    line = GatedLine(b)
    mux = Mux(line, role=MuxRole.RESPONDER)
    nursery.start_soon(mux.run)
    wire = Wire(a)
    for dlci in (0, 1):
        await wire.send(encode_frame(dlci, FrameType.SABM, True, True))
        await wire.expect(dlci, FrameType.UA)
    stream = await mux.accept_dlc()

    async def next_msc() -> int:
        """The V.24 signal octet of the mux's next MSC command for DLC 1."""
        while True:
            frame = await wire.frame()
            if frame.dlci or frame.type is not FrameType.UIH:
                continue
            for message in decode_control(frame.info):
                if message.type == ControlType.MSC and message.command and message.value[0] >> 2 == 1:
                    return message.value[1]

    payload = bytes(i % 251 for i in range(RX_HIGH + 9 * 1000))
    for start in range(0, len(payload), 30000):
        await wire.send(encode_frame(1, FrameType.UIH, True, False, payload[start : start + 30000]))
    with trio.fail_after(5):
        while not await next_msc() & MSC_FC:  # skips the MSC announcing the new DLC
            pass

    line.gate = trio.Event()
    got = bytearray()
    scope = trio.CancelScope()

    async def reader() -> None:
        with scope:
            got.extend(await stream.receive_some(len(payload) - RX_LOW + 1))  # leaves the buffer below RX_LOW

    nursery.start_soon(reader)
    await trio.testing.wait_all_tasks_blocked()
    assert line.held == 1  # the reader's MSC waits for the line
    scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert scope.cancelled_caught and not got
    assert mux.connection.unread(1) == len(payload)  # nothing taken by the cancelled read

    gate, line.gate = line.gate, None
    gate.set()
    with trio.fail_after(5):
        while len(got) < len(payload):
            got += await stream.receive_some()
        assert bytes(got) == payload
        assert not await next_msc() & MSC_FC  # the peer may send again


async def test_an_open_cancelled_before_the_answer_can_be_tried_again(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    a, b = trio.testing.memory_stream_pair()
    mux = Mux(a, role=MuxRole.INITIATOR, params=CmuxParams(t1=0.1, n2=3))
    nursery.start_soon(mux.run)
    wire = Wire(b)
    with trio.move_on_after(0.15):  # the caller gives up while DLC 0's SABM waits for its UA
        await mux.open_dlc(0)
    await wire.expect(0, FrameType.SABM)
    async with trio.open_nursery() as inner:

        async def answer() -> None:
            await wire.expect(0, FrameType.SABM)  # a retransmission of the cancelled open, or the new SABM
            await wire.send(encode_frame(0, FrameType.UA, True, True))

        inner.start_soon(answer)
        with trio.fail_after(5):
            await mux.open_dlc(0)  # a new attempt, not "open in state opening"


async def test_an_open_cancelled_while_announcing_its_signals_still_gives_the_stream(
    nursery: trio.Nursery,
) -> None:
    """After the peer's UA the DLC is open at both ends; the MSC that announces our V.24 signals then waits for the
    line. A caller cancelled there must not leave an open DLC that nobody holds: the open completes (trio: an
    operation that happened returns), so the caller has the stream to use or close."""
    a, b = trio.testing.memory_stream_pair()
    line = GatedLine(a)
    mux = Mux(line, role=MuxRole.INITIATOR, params=CmuxParams(t1=0.5))
    nursery.start_soon(mux.run)
    wire = Wire(b)
    opened: list[object] = []
    scope = trio.CancelScope()

    async def opener() -> None:
        with scope:
            opened.append(await mux.open_dlc(1))
            await trio.sleep_forever()

    async def peer() -> None:
        for dlci in (0, 1):
            await wire.expect(dlci, FrameType.SABM)
            if dlci == 1:
                line.gate = trio.Event()  # holds the MSC that follows the UA
            await wire.send(encode_frame(dlci, FrameType.UA, True, True))

    nursery.start_soon(peer)
    nursery.start_soon(opener)
    with trio.fail_after(5):
        while line.held != 1:
            await trio.sleep(0.001)
    scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    gate, line.gate = line.gate, None
    assert gate is not None
    gate.set()
    with trio.fail_after(5):
        while not scope.cancelled_caught:
            await trio.sleep(0.001)
    assert len(opened) == 1  # the open returned its stream before the cancel took effect
    stream = opened[0]
    assert isinstance(stream, trio.abc.Stream)
    await stream.send_all(b"still usable")
    with trio.fail_after(5):
        frame = await wire.frame()
        while frame.dlci != 1:
            frame = await wire.frame()
    assert frame.info == b"still usable"


# --- establishment rules, PN, flow control across establishments, close-down hand-back ---------------------------


async def _open(wire: Wire, *dlcis: int) -> None:
    for dlci in dlcis:
        await wire.send(encode_frame(dlci, FrameType.SABM, True, True))
        await wire.expect(dlci, FrameType.UA)


async def _control_answer(wire: Wire, kind: int) -> bytes:
    """The value of the mux's next control response of this type (MSC commands announcing DLCs are skipped)."""
    from bipsim.link.cmux_frame import decode_control

    while True:
        frame = await wire.frame()
        if frame.dlci == 0 and frame.type is FrameType.UIH:
            for message in decode_control(frame.info):
                if message.type == kind and not message.command:
                    return message.value


async def test_sabm_before_dlc0_and_on_dlci_62_get_dm(responder: tuple[Mux, Wire]) -> None:
    """Section 5.4.1: DLC 0 is established first. DLCI 62 would put the flag F9 in a response's address octet."""
    mux, wire = responder
    await wire.send(encode_frame(1, FrameType.SABM, True, True))
    assert (await wire.expect(1, FrameType.DM)).pf
    await _open(wire, 0)
    await wire.send(encode_frame(62, FrameType.SABM, True, True))
    assert (await wire.expect(62, FrameType.DM)).pf
    await _open(wire, 1)
    with pytest.raises(ValueError, match="62"):
        await mux.open_dlc(62)


async def test_pn_agrees_n1_and_our_frames_keep_to_it(responder: tuple[Mux, Wire]) -> None:
    from bipsim.link.cmux_frame import ControlMessage, ControlType

    mux, wire = responder
    await _open(wire, 0)
    # PN for DLC 1: I=3 and CL=15 (which we do not do), priority 7, T1 10, N1 16, N2 3, k 0
    proposal = bytes((1, 0xF3, 7, 10)) + (16).to_bytes(2, "little") + bytes((3, 0))
    await wire.send(
        encode_frame(0, FrameType.UIH, True, False, ControlMessage(ControlType.PN, True, proposal).encode())
    )
    answer = await _control_answer(wire, ControlType.PN)
    assert answer[1] == 0  # UIH frames, convergence layer type 1: a counter-proposal
    assert int.from_bytes(answer[4:6], "little") == 16
    await _open(wire, 1)
    stream = await mux.accept_dlc()
    await stream.send_all(bytes(100))
    sizes = []
    while sum(sizes) < 100:
        frame = await wire.frame()
        if frame.dlci == 1:
            sizes.append(len(frame.info))
    assert max(sizes) == 16
    # N1 = 0 is no length: answered with our limit instead
    zero = bytes((2, 0, 0, 10, 0, 0, 3, 0))
    await wire.send(
        encode_frame(0, FrameType.UIH, True, False, ControlMessage(ControlType.PN, True, zero).encode())
    )
    assert int.from_bytes((await _control_answer(wire, ControlType.PN))[4:6], "little") >= 1


async def test_a_sender_held_by_flow_control_cannot_write_into_the_next_establishment(
    responder: tuple[Mux, Wire], nursery: trio.Nursery
) -> None:
    from bipsim.link.cmux_frame import MSC_DV, MSC_FC, ControlMessage, ControlType, msc_value

    mux, wire = responder
    await _open(wire, 0, 1)
    old = await mux.accept_dlc()

    async def msc(signals: int) -> None:
        message = ControlMessage(ControlType.MSC, True, msc_value(1, signals))
        await wire.send(encode_frame(0, FrameType.UIH, True, False, message.encode()))
        await _control_answer(wire, ControlType.MSC)

    await msc(MSC_FC | MSC_DV)
    outcome: list[object] = []

    async def stale_sender() -> None:
        try:
            await old.send_all(b"OLD")
            outcome.append("sent")
        except trio.BrokenResourceError:
            outcome.append("broken")

    nursery.start_soon(stale_sender)
    await trio.testing.wait_all_tasks_blocked()
    assert outcome == []  # held by the peer's FC
    await wire.send(encode_frame(1, FrameType.DISC, True, True))
    await wire.expect(1, FrameType.UA)
    with trio.fail_after(5):
        while not outcome:
            await trio.sleep(0.001)
    assert outcome == ["broken"]  # the release ends it, it does not wait for FC to clear
    await _open(wire, 1)
    new = await mux.accept_dlc()
    await new.send_all(b"new")  # a new establishment starts with flow on: FC of the last one is gone
    frame = await wire.frame()
    while frame.dlci != 1:
        frame = await wire.frame()
    assert frame.info == b"new"


async def test_msc_for_a_dlc_that_is_not_open_makes_no_state(
    traced_responder: tuple[Mux, Wire, Tracer],
) -> None:
    from bipsim.link.cmux_frame import MSC_DV, ControlMessage, ControlType, msc_value

    mux, wire, tracer = traced_responder
    await _open(wire, 0)
    message = ControlMessage(ControlType.MSC, True, msc_value(9, MSC_DV))
    await wire.send(encode_frame(0, FrameType.UIH, True, False, message.encode()))
    await wire.send(
        encode_frame(0, FrameType.UIH, True, False, ControlMessage(ControlType.TEST, True, b"x").encode())
    )
    assert await _control_answer(wire, ControlType.MSC) == msc_value(9, MSC_DV)  # answered (the peer's T2)
    assert await _control_answer(wire, ControlType.TEST) == b"x"
    assert 9 not in mux.connection.known_dlcis()  # but no state for it
    assert any("MSC for DLC 9" in e.summary and e.error for e in tracer.events)


async def test_wait_send_all_might_not_block_waits_out_fcoff(responder: tuple[Mux, Wire]) -> None:
    from bipsim.link.cmux_frame import ControlMessage, ControlType

    mux, wire = responder
    await _open(wire, 0, 1)
    stream = await mux.accept_dlc()
    await wire.send(
        encode_frame(0, FrameType.UIH, True, False, ControlMessage(ControlType.FCOFF, True).encode())
    )
    await _control_answer(wire, ControlType.FCOFF)
    with trio.move_on_after(0.2) as held:
        await stream.wait_send_all_might_not_block()
    assert held.cancelled_caught
    await wire.send(
        encode_frame(0, FrameType.UIH, True, False, ControlMessage(ControlType.FCON, True).encode())
    )
    with trio.fail_after(5):
        await stream.wait_send_all_might_not_block()


@pytest.mark.parametrize("answered", [True, False])
async def test_close_down_hands_the_line_back(
    answered: bool, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """After CLD (section 5.8.2) the line is AT again: run() returns at once, and what the peer sent after the
    CLD answer is not eaten as frames but left for the next user of the line. Unanswered, close_down gives up
    after T2 and run() stops reading too."""
    from bipsim.link.cmux_frame import ControlMessage, ControlType

    a, b = trio.testing.memory_stream_pair()
    mux = Mux(a, role=MuxRole.INITIATOR, params=CmuxParams(t2=0.3, n2=2))
    done = trio.Event()

    async def run() -> None:
        await mux.run()
        done.set()

    nursery.start_soon(run)
    wire = Wire(b)

    async def peer() -> None:
        await wire.expect(0, FrameType.SABM)
        await wire.send(encode_frame(0, FrameType.UA, True, True))
        while True:
            frame = await wire.frame()
            if frame.dlci == 0 and frame.type is FrameType.UIH and frame.info[:1] == b"\xc3" and answered:
                cld = ControlMessage(ControlType.CLD, False).encode()
                await wire.send(encode_frame(0, FrameType.UIH, False, False, cld) + b"\r\nOK\r\n")
                return

    nursery.start_soon(peer)
    await mux.open_dlc(0)
    await mux.close_down()
    with trio.fail_after(1):
        await done.wait()
    if answered:
        assert mux.leftover == b"\r\nOK\r\n"
    else:
        await b.send_all(b"AT text for the next reader")
        await trio.testing.wait_all_tasks_blocked()
        assert await a.receive_some() == b"AT text for the next reader"  # run() no longer reads the line


async def test_trace_events_have_kinds_and_fields(traced_responder: tuple[Mux, Wire, Tracer]) -> None:
    """Scenario checks select frames by kind and fields (docs/protocols.md, "Traces"), never by summary."""
    from bipsim.trace.events import Actor, TraceEvent
    from bipsim.trace.kinds import Kind

    mux, wire, tracer = traced_responder
    await _open(wire, 0, 1)
    stream = await mux.accept_dlc()
    await wire.send(encode_frame(1, FrameType.UIH, True, False, b"AT\r"))
    assert await stream.receive_some() == b"AT\r"
    await wire.send(encode_frame(6, FrameType.UIH, True, False, b"nobody"))
    await wire.expect(6, FrameType.DM)
    events = tracer.events

    def having(kind: Kind, **fields: object) -> list[TraceEvent]:
        return [
            e
            for e in events
            if e.kind == kind and all((e.fields or {}).get(k) == v for k, v in fields.items())
        ]

    (ua,) = having(Kind.CMUX_FRAME, frame="UA", dlci=1)
    assert ua.src is Actor.AP and ua.dst is Actor.CP and (ua.fields or {})["pf"] is True
    assert having(Kind.CMUX_FRAME, frame="SABM", dlci=0)
    assert having(Kind.CMUX_CONTROL, message="MSC", dlci=1, command=True)  # our V.24 signals on the new DLC
    assert having(Kind.CMUX_DATA, dlci=1, size=3)
    assert having(Kind.CMUX_FRAME, frame="DM", dlci=6)
    (refused,) = having(Kind.CMUX_ERROR, dlci=6, answer="DM")
    assert refused.error
    assert all(e.kind for e in events)


@pytest.mark.parametrize(
    "unit",
    [b"\xf9", b"\x03\xef\xfe\xff\xf9"],
    ids=["flags", "long-frame-headers"],
)
def test_search_for_frames_after_a_cut_one_tries_each_flag_a_bounded_number_of_times(
    unit: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frame header announcing 32767 bytes, then flags (or headers of more long frames) one read at a time: the
    search for valid frames after a cut one tried every flag of the pending frame again on each read, quadratic
    (4000 reads of one flag took 17 s). Each flag is now tried when it arrives and again only once it can be
    decided, so the tries grow with the reads, not with their square."""
    parser = FrameParser()
    tries = 0
    real = parser._tail_need

    def counted(buf: bytearray, k: int, n: int) -> int:
        nonlocal tries
        tries += 1
        return real(buf, k, n)

    monkeypatch.setattr(parser, "_tail_need", counted)
    parser.feed(b"\xf9\x03\xef\xfe\xff")
    reads = 3000
    for _ in range(reads):
        assert parser.feed(unit) == []
    # a flag is tried on arrival, once its header is here and once its announced length is: three times at most
    assert tries <= 3 * reads
