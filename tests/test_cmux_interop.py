"""Our 27.010 multiplexer against implementations we did not write.

(a) The Linux kernel's n_gsm line discipline on one end of a pty, our mux on the other, where the running kernel
    allows it (the skip says exactly what refused).
(b) Always: a small 27.010 basic-option peer written here from the specification's tables (section 5.2 frame
    structure, Table 1 C/R, Table 2 control field, section 5.4.6.3 control messages, annex B FCS), sharing no code
    with bipsim.link.cmux*, in both roles, over memory streams and over a real pty.
(c) Published frame vectors checked against both FCS implementations.
"""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import random
import re
import struct
import termios
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from bipsim.link.cmux import CmuxParams, DlcRefused, DlcState, DlcStream, Mux, MuxClosed, MuxRole
from bipsim.link.cmux_frame import FrameParser, FrameType, encode_frame, fcs
from bipsim.link.pty import PtyStream, open_pty, set_raw

# --- the independent peer: constants straight from 3GPP TS 27.010 ------------------------------------------------

FLAG = 0xF9  # section 5.2.6 basic option flag
PF = 0x10  # P/F bit of the control field
# Table 2 (section 5.2.1.3), control field with P/F = 0
SABM, UA, DM, DISC, UIH, UI = 0x2F, 0x63, 0x0F, 0x43, 0xEF, 0x03
# section 5.4.6.3: type octet = type bits | C/R (0x02) | EA (0x01)
PN, CLD, TEST, MSC, NSC, FCON, FCOFF = 0x80, 0xC0, 0x20, 0xE0, 0x10, 0xA0, 0x60
# section 5.4.6.3.7 V.24 signal octet bits
EA, FC, RTC, RTR, IC, DV = 0x01, 0x02, 0x04, 0x08, 0x40, 0x80


def spec_crc(data: bytes, register: int = 0xFF) -> int:
    """Annex B's shift register, bit by bit (no table): generator x^8 + x^2 + x + 1, bits taken LSB first,
    register preset to all ones."""
    for byte in data:
        for bit in range(8):
            feedback = (register ^ (byte >> bit)) & 1
            register >>= 1
            if feedback:
                register ^= 0xE0  # x^8 + x^2 + x + 1 with its bits reversed
    return register


def spec_fcs(data: bytes) -> int:
    """The transmitted FCS: the ones' complement of the register (annex B.2)."""
    return spec_crc(data) ^ 0xFF


def spec_fcs_ok(data: bytes, received: int) -> bool:
    """Annex B.3: the register run over the checked fields and the received FCS ends at 0xCF."""
    return spec_crc(bytes((received,)), spec_crc(data)) == 0xCF


@dataclass(frozen=True)
class PeerFrame:
    dlci: int
    cr: bool
    kind: int  # control field without P/F
    pf: bool
    info: bytes


@dataclass(frozen=True)
class PeerMessage:
    kind: int  # type bits only
    command: bool
    value: bytes


def build_frame(dlci: int, cr: bool, kind: int, pf: bool, info: bytes = b"") -> bytes:
    """Section 5.2.1: flag, address (EA=1, C/R, DLCI), control, length (1 octet with EA=1 up to 127, else 2),
    information, FCS (over address, control, length; and the information unless UIH), flag."""
    n = len(info)
    length = bytes((n << 1 | 1,)) if n < 128 else bytes(((n << 1) & 0xFE, n >> 7))
    header = bytes(((dlci << 2) | (2 if cr else 0) | 1, kind | (PF if pf else 0))) + length
    checked = header if kind == UIH else header + info
    return bytes((FLAG,)) + header + info + bytes((spec_fcs(checked), FLAG))


def build_message(kind: int, command: bool, value: bytes = b"") -> bytes:
    assert len(value) < 128
    return bytes((kind | (2 if command else 0) | 1, len(value) << 1 | 1)) + value


def parse_messages(info: bytes) -> list[PeerMessage]:
    out = []
    i = 0
    while i < len(info):
        octet, length_octet = info[i], info[i + 1]
        assert octet & 1 and length_octet & 1, f"multi-octet type/length in {info.hex()}"
        size = length_octet >> 1
        out.append(PeerMessage(octet & 0xFC, bool(octet & 2), info[i + 2 : i + 2 + size]))
        i += 2 + size
    assert i == len(info), f"control messages overrun their frame: {info.hex()}"
    return out


class SpecPeer:
    """A 27.010 basic-option station over a trio Stream. Every frame it receives is checked: flags, EA bits, FCS
    (annex B) and the C/R bit (Table 1). As responder it answers SABM/DISC itself; in both roles it answers
    control commands (MSC, Test, CLD) and collects data per DLC."""

    def __init__(
        self, stream: trio.abc.Stream, *, initiator: bool, refuse: frozenset[int] = frozenset()
    ) -> None:
        self.stream = stream
        self.initiator = initiator
        self.refuse = refuse
        self.buffer = bytearray()
        self.data: dict[int, bytearray] = defaultdict(bytearray)
        self.data_sizes: dict[int, list[int]] = defaultdict(list)
        self.open: set[int] = set()
        self.signals: dict[int, int] = {}  # DLC -> the V.24 signals the other side sent with MSC
        self.frames_tx, self.frames_rx = trio.open_memory_channel[PeerFrame](100)
        self.answers_tx, self.answers_rx = trio.open_memory_channel[PeerMessage](100)
        self.changed = trio.Event()
        self.closed_down = trio.Event()
        self.errors: list[str] = []
        self.send_lock = trio.Lock()

    # Table 1: a command carries C/R = 1 from the initiator, 0 from the responder; a response the opposite
    def cr_out(self, command: bool) -> bool:
        return command == self.initiator

    def cr_expected(self, command: bool) -> bool:
        return command != self.initiator

    async def send(self, dlci: int, kind: int, *, command: bool, pf: bool, info: bytes = b"") -> None:
        async with self.send_lock:  # the reader task answers commands while a test task sends data
            await self.stream.send_all(build_frame(dlci, self.cr_out(command), kind, pf, info))

    async def send_control(self, kind: int, command: bool, value: bytes = b"") -> None:
        # DLC 0 UIH frames carrying control messages are commands at the frame level whatever the message is
        await self.send(0, UIH, command=True, pf=False, info=build_message(kind, command, value))

    async def send_data(self, dlci: int, data: bytes, n1: int = 31) -> None:
        for i in range(0, len(data), n1):
            await self.send(dlci, UIH, command=True, pf=False, info=data[i : i + n1])

    def _parse(self) -> list[PeerFrame]:
        out = []
        buf = self.buffer
        while True:
            start = buf.find(FLAG)
            if start < 0:
                buf.clear()
                return out
            del buf[:start]
            while len(buf) > 1 and buf[1] == FLAG:  # an idle flag, or a closing flag doubling as opening
                del buf[0]
            if len(buf) < 4:
                return out
            address, control, first = buf[1], buf[2], buf[3]
            if first & 1:
                size, head = first >> 1, 3
            else:
                if len(buf) < 5:
                    return out
                size, head = (first >> 1) | (buf[4] << 7), 4
            end = 1 + head + size + 1  # index of the closing flag
            if len(buf) <= end:
                return out
            header, info = bytes(buf[1 : 1 + head]), bytes(buf[1 + head : 1 + head + size])
            kind = control & ~PF & 0xFF
            checked = header if kind == UIH else header + info
            if buf[end] != FLAG:
                self.errors.append(f"frame not closed by a flag: {bytes(buf[: end + 1]).hex()}")
            elif not address & 1:
                self.errors.append(f"address without EA: {bytes(buf[: end + 1]).hex()}")
            elif not spec_fcs_ok(checked, buf[end - 1]):
                self.errors.append(f"bad FCS: {bytes(buf[: end + 1]).hex()}")
            else:
                out.append(PeerFrame(address >> 2, bool(address & 2), kind, bool(control & PF), info))
            del buf[:end]

    async def run(self) -> None:
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.frames_tx.close()
                return
            self.buffer += data
            for frame in self._parse():
                await self._handle(frame)
            self.changed.set()
            self.changed = trio.Event()

    async def _handle(self, frame: PeerFrame) -> None:
        command = frame.kind in (SABM, DISC, UIH, UI)
        if frame.cr != self.cr_expected(command):
            self.errors.append(f"C/R bit wrong on {frame}")
        if frame.kind in (UIH, UI) and frame.dlci == 0:
            for message in parse_messages(frame.info):
                await self._control(message)
        elif frame.kind in (UIH, UI):
            if frame.dlci not in self.open:
                self.errors.append(f"data on DLC {frame.dlci}, which is not open")
            self.data[frame.dlci] += frame.info
            self.data_sizes[frame.dlci].append(len(frame.info))
        elif frame.kind == SABM and not self.initiator:
            if not frame.pf:
                self.errors.append("SABM without P")
            # the DLC's state changes before the answer is written: once our mux has read the UA (and the test
            # goes on), the peer's state must already say so
            refused = frame.dlci in self.refuse
            if not refused:
                self.open.add(frame.dlci)
            await self.send(frame.dlci, DM if refused else UA, command=False, pf=True)
        elif frame.kind == DISC and not self.initiator:
            known = frame.dlci in self.open
            self.open.discard(frame.dlci)
            await self.send(frame.dlci, UA if known else DM, command=False, pf=True)
        else:
            if frame.kind in (UA, DM) and not frame.pf:
                self.errors.append(f"{frame} answers a P=1 command without F")
            self.frames_tx.send_nowait(frame)

    async def _control(self, message: PeerMessage) -> None:
        if not message.command:
            self.answers_tx.send_nowait(message)
            return
        if message.kind == MSC:
            dlci_octet, signal_octet = message.value[0], message.value[1]
            if not (dlci_octet & 1 and dlci_octet & 2 and signal_octet & 1):
                self.errors.append(f"MSC value malformed: {message.value.hex()}")
            self.signals[dlci_octet >> 2] = signal_octet
            await self.send_control(MSC, False, message.value)
        elif message.kind == TEST:
            await self.send_control(TEST, False, message.value)
        elif message.kind == CLD:
            await self.send_control(CLD, False)
            self.closed_down.set()
        else:
            await self.send_control(NSC, False, bytes((message.kind | 2 | 1,)))

    async def expect(self, dlci: int, kind: int) -> PeerFrame:
        with trio.fail_after(10):
            frame = await self.frames_rx.receive()
        assert (frame.dlci, frame.kind) == (dlci, kind), frame
        return frame

    async def answer(self, kind: int) -> PeerMessage:
        with trio.fail_after(10):
            message = await self.answers_rx.receive()
        assert message.kind == kind, message
        return message

    async def open_dlc(self, dlci: int) -> None:
        await self.send(dlci, SABM, command=True, pf=True)
        await self.expect(dlci, UA)
        self.open.add(dlci)

    async def wait_data(self, dlci: int, size: int) -> bytes:
        with trio.fail_after(20):
            while len(self.data[dlci]) < size:
                await self.changed.wait()
        got = bytes(self.data[dlci][:size])
        del self.data[dlci][:size]
        return got


# payloads: every byte value, runs of the flag and of the advanced option's flag/escape octets (0x7E, 0x7D),
# lengths around the 1/2-octet length boundary
PAYLOAD = bytes(range(256)) * 3 + b"\xf9" * 130 + b"\x7e\x7d\xf9\x7d\x5e" * 20 + bytes(range(255, -1, -1))


@dataclass
class Transport:
    name: str
    make: Callable[[], Awaitable[tuple[trio.abc.Stream, trio.abc.Stream]]]


async def _memory() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    return trio.testing.memory_stream_pair()


async def _pty() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    master, path = open_pty()
    slave = os.open(path, os.O_RDWR | os.O_NOCTTY)
    set_raw(slave)
    return PtyStream(master, name="master"), PtyStream(slave, name=path)


@pytest.fixture(params=[Transport("memory", _memory), Transport("pty", _pty)], ids=lambda t: t.name)
async def line(request: pytest.FixtureRequest) -> AsyncIterator[tuple[trio.abc.Stream, trio.abc.Stream]]:
    a, b = await request.param.make()
    yield a, b
    for stream in (a, b):
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _echo(stream: DlcStream) -> None:
    while True:
        try:
            data = await stream.receive_some()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if not data:
            await stream.aclose()
            return
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


async def test_spec_peer_initiates_against_our_responder(
    line: tuple[trio.abc.Stream, trio.abc.Stream], nursery: trio.Nursery
) -> None:
    ours, theirs = line
    mux = Mux(ours, role=MuxRole.RESPONDER, params=CmuxParams(n1=64))
    peer = SpecPeer(theirs, initiator=True)
    mux_done = trio.Event()

    async def run_mux() -> None:
        await mux.run()
        mux_done.set()

    async def serve() -> None:
        while True:
            try:
                stream = await mux.accept_dlc()
            except MuxClosed:
                return
            nursery.start_soon(_echo, stream)

    nursery.start_soon(run_mux)
    nursery.start_soon(peer.run)
    nursery.start_soon(serve)

    await peer.open_dlc(0)
    await peer.open_dlc(1)
    await peer.open_dlc(3)
    # our mux announced its V.24 signals on each new DLC with MSC (section 5.4.6.3.7), DV set, FC clear
    with trio.fail_after(10):
        while {1, 3} - set(peer.signals):
            await peer.changed.wait()
    assert all(peer.signals[d] & DV and not peer.signals[d] & FC for d in (1, 3))

    # MSC from the peer's side: answered with the same value
    await peer.send_control(MSC, True, bytes((1 << 2 | 3, RTC | RTR | DV | EA)))
    assert (await peer.answer(MSC)).value == bytes((1 << 2 | 3, RTC | RTR | DV | EA))

    # data both ways on two DLCs at once, all byte values, echoed by the mux side
    await peer.send_data(1, PAYLOAD)
    await peer.send_data(3, PAYLOAD[::-1])
    assert await peer.wait_data(1, len(PAYLOAD)) == PAYLOAD
    assert await peer.wait_data(3, len(PAYLOAD)) == PAYLOAD[::-1]
    assert max(peer.data_sizes[1]) <= 64  # our N1

    # flow control: MSC with FC stops our sender on DLC 3 (back-pressure, nothing dropped), FC clear resumes
    await peer.send_control(MSC, True, bytes((3 << 2 | 3, FC | RTC | RTR | DV | EA)))
    await peer.answer(MSC)
    await peer.send_data(3, b"held back")
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert peer.data[3] == b""
    await peer.send_control(MSC, True, bytes((3 << 2 | 3, RTC | RTR | DV | EA)))
    await peer.answer(MSC)
    assert await peer.wait_data(3, 9) == b"held back"

    # Test (section 5.4.6.3.4) echoes its pattern, flags included
    await peer.send_control(TEST, True, b"\xf9ping\x7e\x00\xff")
    assert (await peer.answer(TEST)).value == b"\xf9ping\x7e\x00\xff"
    # PN (section 5.4.6.3.1): answered for the same DLC with an N1 no larger than offered
    pn = bytes((5, 0, 7, 10)) + (64).to_bytes(2, "little") + bytes((3, 2))
    await peer.send_control(PN, True, pn)
    answer = (await peer.answer(PN)).value
    assert answer[0] & 0x3F == 5 and int.from_bytes(answer[4:6], "little") <= 64
    # an unknown type gets NSC naming it (section 5.4.6.3.8)
    await peer.send_control(0x74, True, b"\x01")
    nsc = await peer.answer(NSC)
    assert nsc.value[0] & 0xFC == 0x74 and nsc.value[0] & 1

    # DISC of DLC 3: UA, and the mux side's stream sees end of file (its echo task then ends)
    await peer.send(3, DISC, command=True, pf=True)
    await peer.expect(3, UA)
    # DISC of a DLC that is not open: DM (section 5.3.3)
    await peer.send(7, DISC, command=True, pf=True)
    await peer.expect(7, DM)

    # close-down (section 5.8.2): CLD answered, and the mux leaves multiplexer mode
    await peer.send_control(CLD, True)
    await peer.answer(CLD)
    with trio.fail_after(10):
        await mux_done.wait()
    assert mux.closed and not mux.line_eof
    assert peer.errors == []
    assert mux.parser.bad_fcs == 0 and mux.parser.malformed == 0


async def test_our_initiator_against_the_spec_peer(
    line: tuple[trio.abc.Stream, trio.abc.Stream], nursery: trio.Nursery
) -> None:
    ours, theirs = line
    mux = Mux(ours, role=MuxRole.INITIATOR, params=CmuxParams(n1=127))
    peer = SpecPeer(theirs, initiator=False, refuse=frozenset({4}))
    nursery.start_soon(mux.run)
    nursery.start_soon(peer.run)

    dlc1 = await mux.open_dlc(1)  # opens DLC 0 first
    dlc3 = await mux.open_dlc(3)
    assert peer.open == {0, 1, 3}
    with pytest.raises(DlcRefused):
        await mux.open_dlc(4)
    with trio.fail_after(10):  # our MSC commands after each DLC came up (answered by the peer)
        while {1, 3} - set(peer.signals):
            await peer.changed.wait()

    # the peer (responder) sends its own MSC command: our mux answers it
    await peer.send_control(MSC, True, bytes((1 << 2 | 3, RTC | RTR | DV | EA)))
    await peer.answer(MSC)

    # data from our mux to the peer, all byte values, frames no larger than N1, with the right C/R
    await dlc1.send_all(PAYLOAD)
    await dlc3.send_all(PAYLOAD[::-1])
    assert await peer.wait_data(1, len(PAYLOAD)) == PAYLOAD
    assert await peer.wait_data(3, len(PAYLOAD)) == PAYLOAD[::-1]
    assert max(peer.data_sizes[1]) == 127
    # and from the peer to our mux
    await peer.send_data(1, PAYLOAD, n1=100)
    got = bytearray()
    with trio.fail_after(10):
        while len(got) < len(PAYLOAD):
            got += await dlc1.receive_some()
    assert bytes(got) == PAYLOAD

    assert await mux.test(b"\xf9\xf9 test \x00") == b"\xf9\xf9 test \x00"

    await dlc3.aclose()  # DISC, answered UA by the peer
    assert peer.open == {0, 1}
    await mux.close_down()  # CLD
    with trio.fail_after(10):
        await peer.closed_down.wait()
    assert mux.closed
    assert peer.errors == []
    assert mux.parser.bad_fcs == 0 and mux.parser.malformed == 0


# --- (c) published vectors ----------------------------------------------------------------------------------------

# oFono unit/test-mux.c (test_fill_basic): basic_open, basic_close, basic_data_result, basic_long_frame_result
OFONO_LONG_DATA = bytes.fromhex("123456789ABCDEF0") * 17
VECTORS = [
    ("oFono basic_open", bytes.fromhex("F9073F01DEF9"), (1, FrameType.SABM, True, True, b"")),
    ("oFono basic_close", bytes.fromhex("F90753013FF9"), (1, FrameType.DISC, True, True, b"")),
    (
        "oFono basic_data_result",
        bytes.fromhex("F907EF07123456D3F9"),
        (1, FrameType.UIH, True, False, bytes.fromhex("123456")),
    ),
    (
        "oFono basic_long_frame_result (2-octet length)",
        bytes.fromhex("F907EF1001") + OFONO_LONG_DATA + bytes.fromhex("88F9"),
        (1, FrameType.UIH, True, False, OFONO_LONG_DATA),
    ),
    # Qt Extended tests/shared/gsm0710 tst_gsm0710.cpp: testStartup (SABM on DLC 0, 1, 2, 4) and testOpenClose
    # (DISC frames, and the CLD command the shutdown sends on DLC 0)
    ("Qt Extended testStartup SABM 0", bytes.fromhex("F9033F011CF9"), (0, FrameType.SABM, True, True, b"")),
    ("Qt Extended testStartup SABM 2", bytes.fromhex("F90B3F0159F9"), (2, FrameType.SABM, True, True, b"")),
    ("Qt Extended testStartup SABM 4", bytes.fromhex("F9133F0196F9"), (4, FrameType.SABM, True, True, b"")),
    ("Qt Extended testOpenClose DISC 2", bytes.fromhex("F90B5301B8F9"), (2, FrameType.DISC, True, True, b"")),
    (
        "Qt Extended testOpenClose DISC 13",
        bytes.fromhex("F937530160F9"),
        (13, FrameType.DISC, True, True, b""),
    ),
    (
        "Qt Extended testOpenClose DISC 63",
        bytes.fromhex("F9FF530198F9"),
        (63, FrameType.DISC, True, True, b""),
    ),
    (
        "Qt Extended testOpenClose CLD",
        bytes.fromhex("F903EF05C301F2F9"),
        (0, FrameType.UIH, True, False, bytes.fromhex("C301")),
    ),
    # Linux Documentation/driver-api/tty/n_gsm.rst and many modem manuals: UA on DLC 0
    ("UA DLC 0", bytes.fromhex("F9037301D7F9"), (0, FrameType.UA, True, True, b"")),
]


@pytest.mark.parametrize(("source", "wire", "fields"), VECTORS, ids=[v[0] for v in VECTORS])
def test_published_vectors(
    source: str, wire: bytes, fields: tuple[int, FrameType, bool, bool, bytes]
) -> None:
    dlci, ftype, cr, pf, info = fields
    # both FCS implementations agree with the published octet
    header_end = len(wire) - 2 - len(info)
    checked = wire[1:header_end] if ftype is FrameType.UIH else wire[1:-2]
    assert spec_fcs(checked) == wire[-2]
    assert fcs(checked) == wire[-2]
    assert spec_fcs_ok(checked, wire[-2])
    # our encoder produces the published frame, and the independent encoder too
    assert encode_frame(dlci, ftype, cr, pf, info) == wire
    assert build_frame(dlci, cr, int(ftype), pf, info) == wire
    # our parser takes it back, also split byte by byte
    parser = FrameParser()
    frames = [f for b in wire for f in parser.feed(bytes((b,)))]
    assert [(f.dlci, f.type, f.cr, f.pf, f.info) for f in frames] == [fields]


def test_ofono_extract_input_with_garbage_and_shared_flags() -> None:
    # oFono unit/test-mux.c test_extract_basic: basic_input (garbage, then two frames sharing one flag) and
    # basic_input2 (the same with two flags between the frames)
    basic_input = bytes.fromhex("FFFFFFFFF907EF07123456D3F907EF07123456D3F9")
    basic_input2 = bytes.fromhex("FFFFFFFFF907EF07123456D3F9F907EF07123456D3F9")
    for data in (basic_input, basic_input2):
        parser = FrameParser()
        assert [f.info for f in parser.feed(data)] == [bytes.fromhex("123456")] * 2
        assert parser.bad_fcs == 0


def test_fcs_implementations_agree_everywhere() -> None:
    rng = random.Random(27010)
    for size in (1, 2, 3, 4, 5, 17, 128, 300):
        for _ in range(50):
            data = rng.randbytes(size)
            assert fcs(data) == spec_fcs(data)


# --- (a) the Linux kernel's n_gsm line discipline ------------------------------------------------------------------

N_GSM0710 = 21
N_TTY = 0
GSM_CONFIG = struct.Struct(
    "=19I"
)  # struct gsm_config: adaption .. i, unused[8] (include/uapi/linux/gsmmux.h)
GSMIOC_GETCONF = 0x80000000 | (GSM_CONFIG.size << 16) | (ord("G") << 8) | 0  # _IOR('G', 0, struct gsm_config)
GSMIOC_SETCONF = 0x40000000 | (GSM_CONFIG.size << 16) | (ord("G") << 8) | 1  # _IOW('G', 1, struct gsm_config)
GSMIOC_GETFIRST = 0x80000000 | (4 << 16) | (ord("G") << 8) | 4  # _IOR('G', 4, __u32): the tty number of DLC 1


def _refused(what: str, exc: OSError) -> None:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    why = {
        errno.EINVAL: "line discipline 21 is not registered: kernel built without CONFIG_N_GSM, no module loaded",
        errno.EPERM: "needs CAP_NET_ADMIN",
        errno.EACCES: "permission denied",
    }.get(exc.errno or 0, exc.strerror or "")
    pytest.skip(f"the running kernel ({platform.release()}) refused {what}: {name} ({why})")


def _gsmtty_path(number: int, tmp_path: Path) -> Path:
    """/dev/gsmttyN, made with mknod from /proc/tty/drivers when devtmpfs did not create it."""
    dev = Path(f"/dev/gsmtty{number}")
    if dev.exists():
        return dev
    drivers = Path("/proc/tty/drivers").read_text()
    match = re.search(r"^gsmtty\s+/dev/gsmtty\s+(\d+)\s+(\d+)", drivers, re.M)
    if match is None:
        pytest.fail(f"n_gsm accepted the line but /dev/gsmtty{number} and its driver entry are missing")
    major, first_minor = int(match.group(1)), int(match.group(2))
    node = tmp_path / f"gsmtty{number}"
    try:
        os.mknod(node, 0o600 | 0o020000, os.makedev(major, first_minor + number))
    except OSError as exc:
        _refused(f"mknod of gsmtty{number}", exc)
    return node


@pytest.fixture
def n_gsm_pty() -> Iterator[tuple[int, int]]:
    """A pty pair whose slave end runs the N_GSM0710 line discipline; skips when the kernel refuses it."""
    master, path = open_pty()
    slave = os.open(path, os.O_RDWR | os.O_NOCTTY)
    set_raw(slave)
    try:
        fcntl.ioctl(slave, termios.TIOCSETD, struct.pack("i", N_GSM0710))
    except OSError as exc:
        os.close(slave)
        os.close(master)
        _refused("TIOCSETD N_GSM0710 (21) on a pty", exc)
    yield master, slave
    try:
        fcntl.ioctl(slave, termios.TIOCSETD, struct.pack("i", N_TTY))
    except OSError:
        pass
    os.close(slave)


async def test_linux_n_gsm_initiator_against_our_responder(
    n_gsm_pty: tuple[int, int], nursery: trio.Nursery, tmp_path: Path
) -> None:
    master, slave = n_gsm_pty
    line = PtyStream(master, name="master")
    mux = Mux(line, role=MuxRole.RESPONDER, params=CmuxParams(n1=64))
    nursery.start_soon(mux.run)
    gsmtty = -1
    try:
        raw = bytearray(GSM_CONFIG.size)
        fcntl.ioctl(slave, GSMIOC_GETCONF, raw)
        conf = list(GSM_CONFIG.unpack(raw))
        # adaption 1, basic option (encapsulation 0), the kernel initiates, T1 100 ms, N2 3, MRU = MTU = 64
        conf[0:3] = [1, 0, 1]
        conf[3], conf[6], conf[7], conf[8] = 10, 3, 64, 64
        await trio.to_thread.run_sync(fcntl.ioctl, slave, GSMIOC_SETCONF, GSM_CONFIG.pack(*conf))
        first = bytearray(4)
        fcntl.ioctl(slave, GSMIOC_GETFIRST, first)
        number = struct.unpack("I", first)[0]
        with trio.fail_after(10):
            # the kernel's SABM on DLC 0, answered by our UA
            while mux.connection.dlc_state(0) is not DlcState.OPEN:
                await trio.sleep(0.02)
        device = _gsmtty_path(number, tmp_path)
        gsmtty = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        set_raw(gsmtty)
        with trio.fail_after(10):
            dlc = await mux.accept_dlc()  # opening gsmtty1 made the kernel send SABM on DLC 1
        assert dlc.dlci == 1
        # the kernel sends its MSC once it has taken our UA; data written before that could race the open
        with trio.move_on_after(3):
            while mux.connection.peer_signals(1) is None:
                await trio.sleep(0.02)
        kernel_side = trio.lowlevel.FdStream(os.dup(gsmtty))
        # DTE -> DCE: an AT command and every byte value through the kernel's framing
        sent = b"AT+CGMI\r" + bytes(range(256)) * 2
        await kernel_side.send_all(sent)
        got = bytearray()
        with trio.fail_after(10):
            while len(got) < len(sent):
                got += await dlc.receive_some()
        assert bytes(got) == sent
        # DCE -> DTE: the answer and every byte value back
        answer = b"\r\nbipsim\r\n\r\nOK\r\n" + bytes(range(255, -1, -1)) * 2
        await dlc.send_all(answer)
        got = bytearray()
        with trio.fail_after(10):
            while len(got) < len(answer):
                got += await kernel_side.receive_some(4096)
        assert bytes(got) == answer
        await kernel_side.aclose()
        # the last close of gsmtty1 makes the kernel DISC the DLC: blocking, so off the event loop
        fd, gsmtty = gsmtty, -1
        await trio.to_thread.run_sync(os.close, fd)
        # back to N_TTY: the kernel closes its DLCs and the multiplexer (DISC of DLC 0 or CLD)
        await trio.to_thread.run_sync(fcntl.ioctl, slave, termios.TIOCSETD, struct.pack("i", N_TTY))
        with trio.fail_after(15):
            while not mux.closed:
                await trio.sleep(0.05)
        assert mux.parser.bad_fcs == 0
    finally:
        if gsmtty >= 0:
            os.close(gsmtty)
        await line.aclose()
