"""RFC 1662 HDLC-like framing (net/hdlc.py): FCS-16, escaping by the ACCM, the deframer's drops and bounds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.ppp import HDLC, PPP, PPP_LCP_Configure

from bipsim.net.hdlc import (
    DEFAULT_ACCM,
    Deframer,
    Dropped,
    DropReason,
    Frame,
    encode_frame,
    fcs16,
    frame_check,
    strip_address,
)


def test_fcs_of_rfc_1662_c2() -> None:
    # the good final value over a frame and its FCS (RFC 1662 C.2: PPPGOODFCS16 0xf0b8)
    data = b"\xff\x03\xc0\x21\x01\x01\x00\x04"
    assert fcs16(data + frame_check(data)) == 0xF0B8
    # "123456789" gives 0x906E with the reflected CCITT polynomial and final complement (the CRC catalogue's
    # CRC-16/X-25 check value), the same FCS that RFC 1662 C.2 computes
    assert fcs16(b"123456789") ^ 0xFFFF == 0x906E


def test_escaping_follows_the_accm() -> None:
    frame = bytes([0xFF, 0x03, 0xC0, 0x21, 0x11, 0x7E, 0x7D, 0x20])
    default = encode_frame(frame)
    assert default[0] == 0x7E and default[-1] == 0x7E
    inner = default[1:-1]
    assert 0x11 not in inner and 0x7E not in inner  # every control character escaped with the default ACCM
    assert b"\x7d\x31" in inner and b"\x7d\x5e" in inner and b"\x7d\x5d" in inner
    open_map = encode_frame(frame, accm=0)
    assert 0x11 in open_map[1:-1]  # ACCM 0: control characters go as they are, flag and escape still escaped
    assert b"\x7d\x5e" in open_map


def test_scapy_reads_what_we_frame() -> None:
    lcp = bytes(PPP(proto=0xC021) / PPP_LCP_Configure(code=1, id=7))
    wire = encode_frame(b"\xff\x03" + lcp)
    (frame,) = Deframer().feed(wire)
    assert isinstance(frame, Frame)
    decoded = HDLC(frame.data)
    assert decoded.address == 0xFF and decoded.control == 3
    assert decoded[PPP].proto == 0xC021 and decoded[PPP_LCP_Configure].id == 7


def test_drops_with_their_reasons() -> None:
    good = encode_frame(b"\xff\x03\xc0\x21\x09\x01\x00\x08\x00\x00\x00\x00")
    bad = bytearray(good)
    bad[5] ^= 0x01
    deframer = Deframer(max_frame=64)
    out = deframer.feed(bytes(bad) + b"\x7e\x41\x42\x7e" + encode_frame(b"\xff\x03" + bytes(100)) + good)
    reasons = [item.reason for item in out if isinstance(item, Dropped)]
    assert reasons == [DropReason.BAD_FCS, DropReason.RUNT, DropReason.TOO_LONG]
    assert isinstance(out[-1], Frame)
    assert deframer.dropped == 3 and deframer.good == 1
    aborted = Deframer().feed(b"\x7e\xff\x03\xc0\x21\x7d\x7e" + good)
    assert isinstance(aborted[0], Dropped) and aborted[0].reason is DropReason.ABORTED
    assert isinstance(aborted[1], Frame)


def test_unescaped_control_characters_in_the_accm_are_dropped() -> None:
    """RFC 1662 4.2: a character of the receive ACCM that arrives unescaped was put there by the line (XON/XOFF)."""
    body = b"\xff\x03\x00\x21" + b"abc"
    wire = encode_frame(body, accm=0)
    with_xon = wire[:3] + b"\x11" + wire[3:]
    (frame,) = Deframer(accm=1 << 0x11).feed(with_xon)
    assert isinstance(frame, Frame) and frame.data == body
    (kept,) = Deframer(accm=0).feed(with_xon)
    assert isinstance(kept, Dropped)  # kept as data: the FCS no longer matches


def test_strip_address() -> None:
    assert strip_address(b"\xff\x03\x00\x21") == b"\x00\x21"
    assert strip_address(b"\x21\x45") == b"\x21\x45"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.integers(0, DEFAULT_ACCM))
def test_frames_survive_any_accm_and_any_split(frames: list[bytes], accm: int) -> None:
    wire = b"".join(encode_frame(frame, accm) for frame in frames)
    deframer = Deframer(max_frame=400, accm=0)
    out = []
    for at in range(0, len(wire), 7):
        out += deframer.feed(wire[at : at + 7])
    got = [item.data for item in out if isinstance(item, Frame)]
    # frames of fewer than 2 bytes are runts with their FCS (RFC 1662 4.3): dropped, every other comes back
    assert got == [frame for frame in frames if len(frame) >= 2]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_the_deframer_takes_any_bytes_within_its_bound(data: bytes) -> None:
    deframer = Deframer(max_frame=128)
    for item in deframer.feed(data):
        if isinstance(item, Frame):
            assert len(item.data) <= 128
            assert fcs16(item.data + frame_check(item.data)) == 0xF0B8
        else:
            assert len(item.wire) <= 256
