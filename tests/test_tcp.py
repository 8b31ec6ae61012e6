"""TCP of the CP's own stack: the header codec (net/tcp_segment.py, RFC 9293 3.1, checked against scapy as the
independent decoder) and the sans-IO connection (net/tcp.py: RFC 9293, RFC 6298, RFC 5681, RFC 7323, RFC 5961),
driven segment by segment on an injected clock."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bipsim.net.checksum import transport_checksum
from bipsim.net.errors import PacketError
from bipsim.net.tcp_segment import TcpFlags, TcpSegment

A = IPv4Address("198.51.100.2")
B = IPv4Address("203.0.113.10")


# ---------------------------------------------------------------------------------------------------------------
# the codec


def test_segment_round_trip_with_options() -> None:
    seg = TcpSegment(
        40000, 443, 0xFFFFFFF0, 0, TcpFlags.SYN, 65535, mss=1460, window_scale=7, sack_permitted=True
    )
    raw = seg.encode(A, B)
    assert (raw[12] >> 4) * 4 == 32  # 20 + MSS 4 + NOP NOP SACKP 4 + NOP WS 4
    assert TcpSegment.decode(raw, A, B) == seg
    assert seg.seg_len == 1


def test_segment_parses_in_scapy_with_valid_checksum() -> None:
    from scapy.layers.inet import IP, TCP

    seg = TcpSegment(
        1234,
        80,
        1000,
        2000,
        TcpFlags.SYN | TcpFlags.ACK,
        29200,
        mss=1400,
        window_scale=3,
        sack_permitted=True,
    )
    raw = seg.encode(A, B)
    ip = IP(src=str(A), dst=str(B), proto=6) / raw
    parsed = IP(bytes(ip))
    tcp = parsed[TCP]
    assert tcp.sport == 1234 and tcp.dport == 80 and tcp.seq == 1000 and tcp.ack == 2000
    assert str(tcp.flags) == "SA"
    assert tcp.window == 29200
    opts = dict((name, value) for name, value in tcp.options if name != "NOP")
    assert opts["MSS"] == 1400 and opts["WScale"] == 3 and "SAckOK" in opts
    # scapy's own checksum of the same bytes equals ours
    checksum = tcp.chksum
    del tcp.chksum
    assert IP(bytes(parsed))[TCP].chksum == checksum


def test_segment_decodes_what_scapy_builds_with_unknown_options() -> None:
    from scapy.layers.inet import IP, TCP

    pkt = (
        IP(src=str(A), dst=str(B))
        / TCP(
            sport=5,
            dport=6,
            seq=7,
            ack=8,
            flags="PA",
            window=100,
            options=[("MSS", 536), ("Timestamp", (1, 2)), ("SAck", (10, 20)), ("NOP", None), ("WScale", 2)],
        )
        / b"hello"
    )
    raw = bytes(pkt)[20:]
    seg = TcpSegment.decode(raw, A, B)
    assert seg.payload == b"hello"
    assert seg.flags == TcpFlags.PSH | TcpFlags.ACK
    assert seg.mss == 536 and seg.window_scale == 2 and not seg.sack_permitted


def _with_options(options: bytes, payload: bytes = b"") -> bytes:
    header = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, ((20 + len(options)) // 4) << 4, 0x10, 100, 0, 0)
    seg = header + options + payload
    c = transport_checksum(A, B, 6, seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (bytes((1, 1, 2, 4)), "bad length"),  # MSS running past the options
        (bytes((30, 0, 0, 0)), "bad length"),  # length 0
        (bytes((30, 1, 0, 0)), "bad length"),  # length 1
        (bytes((1, 1, 1, 2)), "no length byte"),  # kind 2 at the last byte
        (bytes((2, 3, 5, 0)), "not 4"),  # MSS of length 3
        (bytes((3, 4, 1, 1)), "not 3"),
    ],
)
def test_bad_option_is_packet_error(options: bytes, reason: str) -> None:
    with pytest.raises(PacketError, match=reason):
        TcpSegment.decode(_with_options(options), A, B)


def test_unknown_option_skipped_and_eol_stops() -> None:
    seg = TcpSegment.decode(_with_options(bytes((99, 4, 0xAA, 0xBB, 2, 4, 1, 0))), A, B)
    assert seg.mss == 256
    # after EOL, nothing is read (the garbage would be a bad length otherwise)
    seg = TcpSegment.decode(_with_options(bytes((0, 30, 0, 0))), A, B)
    assert seg.mss is None


def test_bad_offset_checksum_and_short() -> None:
    raw = TcpSegment(1, 2, 3, 4, TcpFlags.ACK, 10, b"data").encode(A, B)
    with pytest.raises(PacketError, match="shorter"):
        TcpSegment.decode(raw[:19], A, B)
    with pytest.raises(PacketError, match="checksum"):
        TcpSegment.decode(raw[:-1] + bytes([raw[-1] ^ 1]), A, B)
    with pytest.raises(PacketError, match="checksum"):
        TcpSegment.decode(raw, A, IPv4Address("203.0.113.11"))  # pseudo-header covers the addresses
    low = bytearray(raw)
    low[12] = 4 << 4
    with pytest.raises(PacketError, match="below 5"):
        TcpSegment.decode(bytes(low), A, B)
    high = bytearray(raw)
    high[12] = 15 << 4
    with pytest.raises(PacketError, match="runs past"):
        TcpSegment.decode(bytes(high), A, B)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_decode_never_raises_other_than_packet_error(data: bytes) -> None:
    try:
        TcpSegment.decode(data, A, B)
    except PacketError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFF),
    st.integers(0, 0xFFFF),
    st.binary(max_size=64),
    st.none() | st.integers(0, 0xFFFF),
    st.none() | st.integers(0, 14),
    st.booleans(),
)
def test_encode_decode_round_trip(
    sp: int,
    dp: int,
    seq: int,
    ack: int,
    flags: int,
    win: int,
    payload: bytes,
    mss: int | None,
    ws: int | None,
    sackp: bool,
) -> None:
    seg = TcpSegment(sp, dp, seq, ack, TcpFlags(flags), win, payload, mss, ws, sackp)
    assert TcpSegment.decode(seg.encode(A, B), A, B) == seg
