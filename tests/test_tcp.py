"""TCP of the CP's own stack: the header codec (net/tcp_segment.py, RFC 9293 3.1, checked against scapy as the
independent decoder) and the sans-IO connection (net/tcp.py: RFC 9293, RFC 6298, RFC 5681, RFC 7323, RFC 5961),
driven segment by segment on an injected clock."""

from __future__ import annotations

import dataclasses
import heapq
import random
import struct
from ipaddress import IPv4Address
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bipsim.net.checksum import transport_checksum
from bipsim.net.errors import PacketError
from bipsim.net.tcp import (
    MIN_PEER_MSS,
    OOO_CHUNK_OVERHEAD,
    TRANSITIONS,
    Closed,
    Connected,
    DataArrived,
    IllegalTcpTransition,
    PeerFinished,
    Rejected,
    Reset,
    Retransmitted,
    TcpConfig,
    TcpConnection,
    TcpEvent,
    TcpInput,
    TcpState,
    TcpUsageError,
    TimedOut,
    WindowProbe,
    reset_for,
)
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


# ---------------------------------------------------------------------------------------------------------------
# the connection: helpers

L = (A, 40000)
R = (B, 443)


def _only(conn: TcpConnection) -> TcpSegment:
    out = conn.outgoing()
    assert len(out) == 1, out
    return out[0]


def _of(events: list[TcpEvent], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def _pair(
    client_config: TcpConfig | None = None,
    server_config: TcpConfig | None = None,
    *,
    iss_c: int = 1000,
    iss_s: int = 5000,
) -> tuple[TcpConnection, TcpConnection]:
    """A client and a server after the three-way handshake at t=0.01 (every segment delivered)."""
    c = TcpConnection.active(L, R, iss=iss_c, now=0.0, config=client_config)
    syn = _only(c)
    s = TcpConnection.passive(syn, R, L, iss=iss_s, now=0.0, config=server_config)
    c.receive(_only(s), 0.01)
    s.receive(_only(c), 0.01)
    assert c.state is TcpState.ESTABLISHED and s.state is TcpState.ESTABLISHED
    c.events()
    s.events()
    return c, s


def _seg(
    conn: TcpConnection,
    flags: TcpFlags,
    *,
    seq: int | None = None,
    ack: int | None = None,
    payload: bytes = b"",
    window: int = 65535,
) -> TcpSegment:
    """A segment from `conn`'s peer: by default at RCV.NXT acknowledging SND.NXT."""
    return TcpSegment(
        conn.remote[1],
        conn.local[1],
        (conn.rcv_nxt if seq is None else seq) & 0xFFFFFFFF,
        (conn.snd_nxt if ack is None else ack) & 0xFFFFFFFF,
        flags,
        window,
        payload,
    )


# ---------------------------------------------------------------------------------------------------------------
# handshake


def test_three_way_handshake_with_mss_and_window_scale() -> None:
    big = TcpConfig(receive_buffer=1 << 20)
    c = TcpConnection.active(L, R, iss=1000, now=0.0, config=big)
    assert c.state is TcpState.SYN_SENT
    syn = _only(c)
    assert syn.flags == TcpFlags.SYN and syn.seq == 1000 and syn.mss == 1460
    assert syn.window_scale == 5  # 1 MiB >> 5 = 32768 fits the 16-bit field (RFC 7323 2.3)
    assert syn.window == 0xFFFF  # a SYN's window is never scaled
    s = TcpConnection.passive(syn, R, L, iss=5000, now=0.0, mss=1400)
    synack = _only(s)
    assert synack.flags == TcpFlags.SYN | TcpFlags.ACK and synack.ack == 1001 and synack.seq == 5000
    assert synack.mss == 1400 and synack.window_scale == 3  # the default 256 KiB buffer needs a shift of 3
    assert s.state is TcpState.SYN_RECEIVED
    c.receive(synack, 0.05)
    assert c.state is TcpState.ESTABLISHED and _of(c.events(), Connected)
    assert c.eff_mss == 1400 and c.srtt == pytest.approx(0.05)
    ack = _only(c)
    assert ack.flags == TcpFlags.ACK and ack.seq == 1001 and ack.ack == 5001
    assert ack.window == (1 << 20) >> 5  # now scaled by our shift
    s.receive(ack, 0.05)
    assert s.state is TcpState.ESTABLISHED and _of(s.events(), Connected)
    assert s.snd_wnd == 1 << 20  # the server applies the client's shift
    assert s.next_deadline() is None and c.next_deadline() is None


def test_window_scale_needs_both_sides() -> None:
    c = TcpConnection.active(
        L, R, iss=1, now=0.0, config=TcpConfig(receive_buffer=1 << 20, window_scale=True)
    )
    syn = _only(c)
    s = TcpConnection.passive(
        syn, R, L, iss=2, now=0.0, config=TcpConfig(receive_buffer=1 << 20, window_scale=False)
    )
    synack = _only(s)
    assert synack.window_scale is None
    c.receive(synack, 0.0)
    ack = _only(c)
    assert ack.window == 0xFFFF  # no scaling: the field saturates
    s.receive(ack, 0.0)
    assert s.snd_wnd == 0xFFFF


def test_peer_without_mss_option_gets_536() -> None:
    syn = TcpSegment(1234, 443, 77, 0, TcpFlags.SYN, 8192)
    s = TcpConnection.passive(syn, R, (A, 1234), iss=9, now=0.0)
    assert s.eff_mss == 536


def test_passive_refuses_a_non_syn() -> None:
    with pytest.raises(ValueError):
        TcpConnection.passive(TcpSegment(1, 2, 3, 4, TcpFlags.ACK, 5), R, L, iss=1, now=0.0)


def test_syn_retransmitted_with_backoff_then_times_out() -> None:
    c = TcpConnection.active(L, R, iss=1, now=0.0, config=TcpConfig(syn_retries=3))
    c.outgoing()
    times = []
    while c.state is not TcpState.CLOSED:
        deadline = c.next_deadline()
        assert deadline is not None
        times.append(deadline)
        c.on_timer(deadline)
        for seg in c.outgoing():
            assert seg.flags == TcpFlags.SYN and seg.seq == 1
    assert times == [1.0, 3.0, 7.0, 15.0]  # RFC 6298 5.5: 1, 2, 4, 8 s
    events = c.events()
    assert [e.rto for e in _of(events, Retransmitted)] == [2.0, 4.0, 8.0]
    assert _of(events, TimedOut) and c.error is not None and "SYN" in c.error
    assert c.next_deadline() is None


def test_lost_syn_means_rto_3s_and_one_segment_window() -> None:
    c = TcpConnection.active(L, R, iss=1, now=0.0)
    c.outgoing()
    c.on_timer(1.0)
    syn = _only(c)
    s = TcpConnection.passive(syn, R, L, iss=2, now=1.0)
    c.receive(_only(s), 1.1)
    assert c.srtt is None  # Karn: the SYN was sent twice
    assert c.rto == 3.0 and c.cwnd == c.eff_mss  # RFC 6298 5.7, RFC 5681 3.1


def test_rst_answering_syn_is_refused_and_bad_ack_is_ignored() -> None:
    c = TcpConnection.active(L, R, iss=100, now=0.0)
    c.outgoing()
    c.receive(TcpSegment(443, 40000, 0, 50, TcpFlags.RST | TcpFlags.ACK, 0), 0.1)  # wrong ACK
    assert c.state is TcpState.SYN_SENT and c.outgoing() == []
    c.receive(TcpSegment(443, 40000, 0, 0, TcpFlags.RST, 0), 0.1)  # no ACK
    assert c.state is TcpState.SYN_SENT
    c.receive(TcpSegment(443, 40000, 0, 101, TcpFlags.RST | TcpFlags.ACK, 0), 0.1)
    assert c.state is TcpState.CLOSED
    reset = _of(c.events(), Reset)
    assert reset and reset[0].refused and c.error == "connection refused"


def test_bad_ack_in_syn_sent_gets_rst() -> None:
    c = TcpConnection.active(L, R, iss=100, now=0.0)
    c.outgoing()
    c.receive(TcpSegment(443, 40000, 7, 999, TcpFlags.SYN | TcpFlags.ACK, 100), 0.1)
    rst = _only(c)
    assert rst.flags == TcpFlags.RST and rst.seq == 999
    assert c.state is TcpState.SYN_SENT


def test_simultaneous_open() -> None:
    a = TcpConnection.active(L, R, iss=100, now=0.0)
    b = TcpConnection.active(R, L, iss=900, now=0.0)
    syn_a, syn_b = _only(a), _only(b)
    a.receive(syn_b, 0.1)
    b.receive(syn_a, 0.1)
    assert a.state is TcpState.SYN_RECEIVED and b.state is TcpState.SYN_RECEIVED
    synack_a, synack_b = _only(a), _only(b)
    assert synack_a.flags == TcpFlags.SYN | TcpFlags.ACK and synack_a.seq == 100 and synack_a.ack == 901
    a.receive(synack_b, 0.2)
    b.receive(synack_a, 0.2)
    ack_a, ack_b = _only(a), _only(b)
    a.receive(ack_b, 0.3)
    b.receive(ack_a, 0.3)
    assert a.state is TcpState.ESTABLISHED and b.state is TcpState.ESTABLISHED
    assert a.snd_una == 101 and b.snd_una == 901


def test_lost_synack_peer_resends_syn() -> None:
    c = TcpConnection.active(L, R, iss=1, now=0.0)
    syn = _only(c)
    s = TcpConnection.passive(syn, R, L, iss=2, now=0.0)
    s.outgoing()  # lost
    s.receive(syn, 1.0)  # the client's retransmitted SYN
    synack = _only(s)
    assert synack.flags == TcpFlags.SYN | TcpFlags.ACK
    assert s.state is TcpState.SYN_RECEIVED


# ---------------------------------------------------------------------------------------------------------------
# data, windows, RTO


def test_data_in_mss_segments_and_ack_frees_the_buffer() -> None:
    c, s = _pair(TcpConfig(initial_window=0))
    data = bytes(range(256)) * 20  # 5120 bytes
    assert c.send(data, 1.0) == len(data)
    segs = c.outgoing()
    # RFC 5681 3.1's initial window, 3 * 1460 (initial_window=0): three segments, the rest waits
    assert [len(x.payload) for x in segs] == [1460, 1460, 1460]
    assert c.snd_nxt - c.snd_una == 3 * 1460
    for seg in segs:
        s.receive(seg, 1.05)
    acks = s.outgoing()
    assert len(acks) == 1 and acks[0].ack == (1001 + 2 * 1460)  # every second segment ACKed at once
    assert s.next_deadline() == pytest.approx(1.25)  # the third waits for the delayed-ACK timer
    s.on_timer(1.25)
    acks += s.outgoing()
    for ack in acks:
        c.receive(ack, 1.3)
    more = c.outgoing()
    assert sum(len(x.payload) for x in more) == len(data) - 3 * 1460
    assert more[-1].flags == TcpFlags.ACK | TcpFlags.PSH
    for seg in more:
        s.receive(seg, 1.35)
    assert s.read() == data
    assert c.send_buffered == 5120 - 3 * 1460


def test_send_buffer_is_bounded() -> None:
    c, _ = _pair(TcpConfig(send_buffer=1000))
    assert c.send(b"x" * 3000, 1.0) == 1000
    assert c.send_space == 0 and c.send(b"y", 1.0) == 0


def test_rto_backoff_and_karn() -> None:
    c, s = _pair(
        TcpConfig(tail_loss_probe=False)
    )  # the RTO itself: no tail loss probe before it (RFC 8985 7)
    rto0 = c.rto
    assert rto0 == 1.0  # min_rto (RFC 6298 2.4) above SRTT + 4 RTTVAR of a 10 ms handshake
    c.send(b"a" * 100, 2.0)
    first = _only(c)
    assert c.next_deadline() == pytest.approx(3.0)
    c.on_timer(3.0)
    again = _only(c)
    assert again.seq == first.seq and again.payload == first.payload
    (ev,) = _of(c.events(), Retransmitted)
    assert ev.reason == "timeout" and ev.rto == 2.0 and ev.length == 100
    assert c.next_deadline() == pytest.approx(5.0)
    c.on_timer(5.0)
    assert _only(c).seq == first.seq and c.rto == 4.0
    srtt = c.srtt
    s.receive(again, 5.5)
    s.on_timer(5.7)
    c.receive(_only(s), 5.7)
    assert c.srtt == srtt  # Karn: no sample from a retransmitted segment
    assert c.snd_una == c.snd_nxt and c.next_deadline() is None
    # the next new segment is timed again and the sample recomputes the RTO (clearing the backoff)
    c.send(b"b", 6.0)
    s.receive(_only(c), 6.1)
    s.on_timer(6.3)
    c.receive(_only(s), 6.3)
    assert c.srtt != srtt and c.rto == 1.0


def test_rto_measured_rtt_above_min() -> None:
    c = TcpConnection.active(L, R, iss=1, now=0.0)
    s = TcpConnection.passive(_only(c), R, L, iss=2, now=0.0)
    c.receive(_only(s), 0.8)
    # RFC 6298 2.2: SRTT = R, RTTVAR = R/2, RTO = SRTT + 4 RTTVAR
    assert c.srtt == pytest.approx(0.8) and c.rttvar == pytest.approx(0.4) and c.rto == pytest.approx(2.4)


def test_data_retransmissions_capped() -> None:
    c, _ = _pair(
        TcpConfig(data_retries=2, max_rto=4.0, tail_loss_probe=False)
    )  # the RTO itself: no tail loss probe before it (RFC 8985 7)
    c.send(b"z", 1.0)
    c.outgoing()
    while c.state is not TcpState.CLOSED:
        deadline = c.next_deadline()
        assert deadline is not None
        c.on_timer(deadline)
    events = c.events()
    assert len(_of(events, Retransmitted)) == 2
    (timed_out,) = _of(events, TimedOut)
    assert "2 retransmissions" in timed_out.reason and c.error == timed_out.reason
    assert _of(events, Closed)


def test_max_rto_caps_backoff() -> None:
    c, _ = _pair(TcpConfig(max_rto=3.0, data_retries=5))
    c.send(b"z", 1.0)
    c.outgoing()
    for _ in range(4):
        deadline = c.next_deadline()
        assert deadline is not None
        c.on_timer(deadline)
    assert c.rto == 3.0


def test_fast_retransmit_and_recovery() -> None:
    # without SACK: RFC 5681 and RFC 6582 alone
    c, s = _pair(TcpConfig(send_buffer=1 << 20, sack=False), TcpConfig(receive_buffer=1 << 20, sack=False))
    mss = 1460
    c.cwnd = 10 * mss  # as if slow start had run
    c.send(b"q" * (10 * mss), 1.0)
    segs = c.outgoing()
    assert len(segs) == 10
    lost = segs[1]
    for seg in [segs[0], *segs[2:7]]:
        s.receive(seg, 1.05)
    acks = s.outgoing()
    # segment 0 in order (its ACK delayed), then five out-of-order segments each ACKed at once with RCV.NXT:
    # the first of those acknowledges segment 0, the other four are duplicates
    dup = [a for a in acks if a.ack == segs[1].seq]
    assert len(dup) == 5
    for ack in dup[:3]:
        c.receive(ack, 1.1)
    assert c.outgoing() == []  # two duplicates are not enough
    c.receive(dup[3], 1.1)
    out = c.outgoing()
    assert out[0].seq == lost.seq and out[0].payload == lost.payload
    (ev,) = _of(c.events(), Retransmitted)
    assert ev.reason == "fast"
    flight = 9 * mss
    assert c.ssthresh == flight // 2 and c.cwnd == c.ssthresh + 3 * mss  # RFC 5681 3.2 steps 2 and 3
    c.receive(dup[4], 1.1)
    assert c.cwnd == c.ssthresh + 4 * mss  # inflated per further duplicate (step 4)
    s.receive(lost, 1.15)
    full = [a for a in s.outgoing() if a.ack == segs[7].seq]
    assert full
    c.receive(full[0], 1.2)
    # segments 7..9 were never delivered, so this ACK is partial (RFC 6582): 7 is resent at once
    resent = [x for x in c.outgoing() if x.seq == segs[7].seq]
    assert resent and _of(c.events(), Retransmitted)[0].reason == "fast"
    for seg in segs[7:]:
        s.receive(seg, 1.25)
    s.on_timer(1.5)
    for ack in s.outgoing():
        c.receive(ack, 1.5)
    assert c.snd_una == c.snd_max and c.cwnd <= c.ssthresh + mss  # full ACK: recovery over, window deflated
    assert s.read() == b"q" * (10 * mss)


def test_three_dupacks_needed() -> None:
    c, s = _pair()
    c.send(b"w" * 4000, 1.0)
    segs = c.outgoing()
    s.receive(segs[1], 1.05)
    s.receive(segs[2], 1.05)
    dups = s.outgoing()
    assert len(dups) == 2
    for d in dups:
        c.receive(d, 1.1)
    assert c.outgoing() == [] and not _of(c.events(), Retransmitted)


def test_delayed_ack_at_most_200ms() -> None:
    c, s = _pair()
    c.send(b"one", 1.0)
    s.receive(_only(c), 1.0)
    assert s.outgoing() == []
    assert s.next_deadline() == pytest.approx(1.2)
    s.on_timer(1.19)
    assert s.outgoing() == []
    s.on_timer(1.2)
    ack = _only(s)
    assert ack.ack == c.snd_nxt


def test_delayed_ack_piggybacks_on_data() -> None:
    c, s = _pair(server_config=TcpConfig(receive_buffer=65535))  # a window the handshake already announced
    c.send(b"question", 1.0)
    s.receive(_only(c), 1.0)
    assert s.outgoing() == []
    assert s.read() == b"question"
    s.send(b"answer", 1.01)
    reply = _only(s)
    assert reply.payload == b"answer" and reply.ack == c.snd_nxt
    assert s.next_deadline() != pytest.approx(1.2)  # no pending delayed ACK; only the RTO


def test_delayed_ack_disabled() -> None:
    c, s = _pair(server_config=TcpConfig(delayed_ack=0.0))
    c.send(b"x", 1.0)
    s.receive(_only(c), 1.0)
    assert _only(s).ack == c.snd_nxt


def test_zero_window_and_persist_probe() -> None:
    c, s = _pair(
        TcpConfig(tail_loss_probe=False), TcpConfig(receive_buffer=2920, delayed_ack=0.0)
    )  # the RTO itself: no tail loss probe before it (RFC 8985 7)
    c.send(b"p" * 5000, 1.0)
    segs = c.outgoing()
    assert sum(len(x.payload) for x in segs) == 2920  # the peer's window
    for seg in segs:
        s.receive(seg, 1.05)
    acks = s.outgoing()
    assert acks[-1].window == 0
    for ack in acks:
        c.receive(ack, 1.1)
    assert c.snd_wnd == 0 and c.outgoing() == []
    deadline = c.next_deadline()
    assert deadline == pytest.approx(1.1 + c.rto)
    c.on_timer(deadline)
    probe = _only(c)
    assert probe.seq == (c.snd_una - 1) & 0xFFFFFFFF and probe.payload == b""
    (wp,) = _of(c.events(), WindowProbe)
    assert wp.interval == 2 * c.rto
    s.receive(probe, deadline + 0.05)
    answer = _only(s)  # out of window: answered with an ACK saying the window
    assert answer.window == 0
    c.receive(answer, deadline + 0.1)
    second = c.next_deadline()
    assert second == pytest.approx(deadline + 2 * c.rto)  # probes back off
    assert s.read(1500) == b"p" * 1500
    update = _only(s)  # the window opened by more than an MSS: a window update
    assert update.window >= 1460
    c.receive(update, second - 0.5)
    resumed = c.outgoing()
    assert resumed and resumed[0].payload[:1] == b"p"
    assert c.next_deadline() == pytest.approx(second - 0.5 + c.rto)  # the RTO, no longer the persist timer


def test_receiver_sws_avoidance_no_tiny_window_update() -> None:
    c, s = _pair(server_config=TcpConfig(receive_buffer=4000, delayed_ack=0.0))
    c.send(b"k" * 4000, 1.0)
    for seg in c.outgoing():
        s.receive(seg, 1.0)
    s.outgoing()
    s.read(100)
    assert s.outgoing() == []  # 100 bytes is not worth a window update (RFC 9293 3.8.6.2.2)
    s.read(1400)
    assert _only(s).window == 1500


def test_out_of_window_segment_is_acked_and_dropped() -> None:
    c, s = _pair()
    far = _seg(s, TcpFlags.ACK, seq=s.rcv_nxt + (1 << 20), payload=b"far")
    s.receive(far, 1.0)
    ack = _only(s)
    assert ack.flags == TcpFlags.ACK and ack.ack == s.rcv_nxt & 0xFFFFFFFF
    assert s.readable == 0
    (rej,) = _of(s.events(), Rejected)
    assert rej.answered == "ack"
    old = _seg(s, TcpFlags.ACK, seq=s.rcv_nxt - 10, payload=b"old")
    s.receive(old, 1.0)
    assert _only(s).ack == s.rcv_nxt & 0xFFFFFFFF and s.readable == 0


def test_ack_of_unsent_data_is_acked_and_dropped() -> None:
    c, s = _pair()
    s.receive(_seg(s, TcpFlags.ACK, ack=s.snd_nxt + 5000, payload=b"data"), 1.0)
    assert _only(s).flags == TcpFlags.ACK
    assert s.readable == 0 and s.snd_una == s.snd_nxt


def test_out_of_order_data_reassembled() -> None:
    c, s = _pair()
    base = s.rcv_nxt
    s.receive(_seg(s, TcpFlags.ACK, seq=base + 6, payload=b"world"), 1.0)
    s.receive(_seg(s, TcpFlags.ACK, seq=base + 3, payload=b"lo wo"), 1.0)  # overlaps the first
    assert s.readable == 0
    s.receive(_seg(s, TcpFlags.ACK, seq=base, payload=b"hel"), 1.0)
    assert s.read() == b"hello world"
    assert s.rcv_nxt == base + 11


def test_sequence_numbers_wrap() -> None:
    c, s = _pair(iss_c=0xFFFFFF00, iss_s=0xFFFFFFF0)
    data = b"w" * 3000
    c.send(data, 1.0)
    for seg in c.outgoing():
        s.receive(seg, 1.0)
    s.on_timer(1.2)
    for ack in s.outgoing():
        c.receive(ack, 1.2)
    assert s.read() == data
    assert c.snd_una == c.snd_nxt == 0xFFFFFF01 + 3000  # unwrapped internally
    s.outgoing()  # the window update
    s.send(b"back", 1.3)
    c.receive(_only(s), 1.3)
    assert c.read() == b"back"


# ---------------------------------------------------------------------------------------------------------------
# FIN in every state, close, TIME-WAIT


def test_orderly_close_and_time_wait() -> None:
    c, s = _pair(TcpConfig(msl=5.0))
    c.shutdown(1.0)
    assert c.state is TcpState.FIN_WAIT_1
    fin = _only(c)
    assert fin.flags == TcpFlags.FIN | TcpFlags.ACK
    s.receive(fin, 1.1)
    assert s.state is TcpState.CLOSE_WAIT and _of(s.events(), PeerFinished) and s.at_eof
    c.receive(_only(s), 1.2)
    assert c.state is TcpState.FIN_WAIT_2
    s.shutdown(1.3)
    assert s.state is TcpState.LAST_ACK
    c.receive(_only(s), 1.4)
    assert c.state is TcpState.TIME_WAIT
    s.receive(_only(c), 1.5)
    assert s.state is TcpState.CLOSED and _of(s.events(), Closed) == [Closed(None)]
    assert c.next_deadline() == pytest.approx(11.4)  # 2 * MSL
    c.on_timer(11.3)
    assert c.state is TcpState.TIME_WAIT
    c.on_timer(11.4)
    assert c.state is TcpState.CLOSED and c.error is None


def test_time_wait_default_msl_is_30s() -> None:
    assert TcpConfig().msl == 30.0


def test_fin_after_data_and_fin_retransmitted() -> None:
    c, s = _pair()
    c.send(b"last words", 1.0)
    c.shutdown(1.0)
    data, fin = c.outgoing()
    assert data.payload == b"last words" and fin.flags == TcpFlags.FIN | TcpFlags.ACK
    assert fin.seq == data.seq + 10
    c.on_timer(2.0)
    again = _only(c)  # go-back-N after the timeout: the data and the FIN in one segment
    assert again.payload == b"last words" and TcpFlags.FIN in again.flags
    s.receive(again, 2.1)
    assert s.read() == b"last words" and s.at_eof
    with pytest.raises(TcpUsageError):
        c.send(b"more", 2.2)


@pytest.mark.parametrize(
    ("setup", "before", "after"),
    [
        ("established", TcpState.ESTABLISHED, TcpState.CLOSE_WAIT),
        ("fin_wait_1", TcpState.FIN_WAIT_1, TcpState.CLOSING),
        ("fin_wait_2", TcpState.FIN_WAIT_2, TcpState.TIME_WAIT),
        ("close_wait", TcpState.CLOSE_WAIT, TcpState.CLOSE_WAIT),
        ("closing", TcpState.CLOSING, TcpState.CLOSING),
        ("last_ack", TcpState.LAST_ACK, TcpState.LAST_ACK),
        ("time_wait", TcpState.TIME_WAIT, TcpState.TIME_WAIT),
    ],
)
def test_fin_in_every_synchronized_state(setup: str, before: TcpState, after: TcpState) -> None:
    c, s = _pair()
    fin_seq = c.rcv_nxt
    if setup in ("fin_wait_1", "fin_wait_2", "closing", "time_wait"):
        c.shutdown(1.0)
        our_fin = _only(c)
        if setup in ("fin_wait_2", "time_wait"):
            s.receive(our_fin, 1.0)
            c.receive(_only(s), 1.0)
    if setup in ("close_wait", "closing", "last_ack", "time_wait"):
        c.receive(_seg(c, TcpFlags.FIN | TcpFlags.ACK, ack=c.snd_una), 1.0)  # the peer's FIN, first time
        c.outgoing()
        if setup == "last_ack":
            c.shutdown(1.0)
            c.outgoing()
    assert c.state is before
    c.events()
    c.receive(_seg(c, TcpFlags.FIN | TcpFlags.ACK, seq=fin_seq, ack=c.snd_una), 2.0)
    assert c.state is after
    ack = [x for x in c.outgoing() if x.flags == TcpFlags.ACK]
    assert ack and ack[-1].ack == c.rcv_nxt & 0xFFFFFFFF  # every FIN is acknowledged
    if after is TcpState.TIME_WAIT:
        assert c.next_deadline() == pytest.approx(2.0 + 60.0)  # (re)started by this FIN


def test_fin_in_syn_received_with_ack() -> None:
    c = TcpConnection.active(L, R, iss=1, now=0.0)
    s = TcpConnection.passive(_only(c), R, L, iss=50, now=0.0)
    s.outgoing()
    s.receive(TcpSegment(40000, 443, 2, 51, TcpFlags.FIN | TcpFlags.ACK, 1000), 0.1)
    assert s.state is TcpState.CLOSE_WAIT and s.at_eof


def test_fin_in_syn_sent_dropped() -> None:
    c = TcpConnection.active(L, R, iss=1, now=0.0)
    c.outgoing()
    c.receive(TcpSegment(443, 40000, 9, 2, TcpFlags.FIN | TcpFlags.ACK, 10), 0.1)
    assert c.state is TcpState.SYN_SENT and c.outgoing() == []


def test_simultaneous_close() -> None:
    c, s = _pair(TcpConfig(msl=1.0), TcpConfig(msl=1.0))
    c.shutdown(1.0)
    s.shutdown(1.0)
    fin_c, fin_s = _only(c), _only(s)
    c.receive(fin_s, 1.1)
    s.receive(fin_c, 1.1)
    assert c.state is TcpState.CLOSING and s.state is TcpState.CLOSING
    ack_c, ack_s = _only(c), _only(s)
    c.receive(ack_s, 1.2)
    s.receive(ack_c, 1.2)
    assert c.state is TcpState.TIME_WAIT and s.state is TcpState.TIME_WAIT
    c.on_timer(3.2)
    s.on_timer(3.2)
    assert c.state is TcpState.CLOSED and s.state is TcpState.CLOSED


def test_shutdown_in_syn_received_waits_for_handshake() -> None:
    c = TcpConnection.active(L, R, iss=1, now=0.0)
    s = TcpConnection.passive(_only(c), R, L, iss=50, now=0.0)
    s.outgoing()
    s.shutdown(0.05)
    assert s.state is TcpState.SYN_RECEIVED and s.outgoing() == []
    s.receive(TcpSegment(40000, 443, 2, 51, TcpFlags.ACK, 1000), 0.1)
    assert s.state is TcpState.FIN_WAIT_1
    assert TcpFlags.FIN in _only(s).flags


def test_shutdown_in_syn_sent_closes() -> None:
    c = TcpConnection.active(L, R, iss=1, now=0.0)
    c.outgoing()
    c.shutdown(0.1)
    assert c.state is TcpState.CLOSED and c.next_deadline() is None


def test_close_with_unread_data_resets() -> None:
    c, s = _pair()
    c.send(b"unread", 1.0)
    s.receive(_only(c), 1.0)
    s.close(1.1)
    rst = _only(s)
    assert TcpFlags.RST in rst.flags and s.state is TcpState.CLOSED
    c.receive(rst, 1.2)
    assert c.state is TcpState.CLOSED and c.error == "connection reset by peer"


def test_data_after_full_close_resets() -> None:
    c, s = _pair(server_config=TcpConfig(delayed_ack=0.0))
    s.close(1.0)
    c.receive(_only(s), 1.0)
    s.receive(_only(c), 1.0)  # ACK of the FIN: FIN-WAIT-2
    assert s.state is TcpState.FIN_WAIT_2
    c.send(b"too late", 1.1)
    s.receive(_only(c), 1.1)
    assert s.state is TcpState.CLOSED
    assert any(TcpFlags.RST in x.flags for x in s.outgoing())


def test_half_close_keeps_receiving() -> None:
    c, s = _pair()
    c.shutdown(1.0)
    s.receive(_only(c), 1.0)
    c.receive(_only(s), 1.0)
    assert c.state is TcpState.FIN_WAIT_2
    s.send(b"still talking", 1.1)
    c.receive(_only(s), 1.1)
    assert c.read() == b"still talking"


# ---------------------------------------------------------------------------------------------------------------
# RST and SYN validation (RFC 9293 3.10.7.4, RFC 5961)


def test_rst_exactly_at_rcv_nxt_resets() -> None:
    c, s = _pair()
    s.receive(_seg(s, TcpFlags.RST), 1.0)
    assert s.state is TcpState.CLOSED
    (reset,) = _of(s.events(), Reset)
    assert reset.reason == "connection reset by peer" and not reset.refused
    assert s.outgoing() == []


def test_rst_in_window_not_at_rcv_nxt_gets_challenge_ack() -> None:
    c, s = _pair()
    s.receive(_seg(s, TcpFlags.RST, seq=s.rcv_nxt + 100), 1.0)
    assert s.state is TcpState.ESTABLISHED
    ack = _only(s)
    assert ack.flags == TcpFlags.ACK and ack.ack == s.rcv_nxt & 0xFFFFFFFF
    (rej,) = _of(s.events(), Rejected)
    assert rej.answered == "challenge-ack"
    # the honest peer's answer to the challenge ACK is an RST at exactly RCV.NXT
    s.receive(_seg(s, TcpFlags.RST), 1.1)
    assert s.state is TcpState.CLOSED


def test_rst_outside_window_dropped_silently() -> None:
    c, s = _pair()
    s.receive(_seg(s, TcpFlags.RST, seq=s.rcv_nxt + 1_000_000), 1.0)
    s.receive(_seg(s, TcpFlags.RST, seq=s.rcv_nxt - 1), 1.0)
    assert s.state is TcpState.ESTABLISHED and s.outgoing() == []


def test_syn_in_established_gets_challenge_ack() -> None:
    c, s = _pair()
    s.receive(_seg(s, TcpFlags.SYN, seq=s.rcv_nxt + 5), 1.0)
    assert s.state is TcpState.ESTABLISHED
    assert _only(s).flags == TcpFlags.ACK


def test_challenge_acks_rate_limited() -> None:
    c, s = _pair(server_config=TcpConfig(challenge_acks_per_second=3))
    for i in range(10):
        s.receive(_seg(s, TcpFlags.RST, seq=s.rcv_nxt + 10 + i), 5.5)
    assert len(s.outgoing()) == 3
    s.receive(_seg(s, TcpFlags.RST, seq=s.rcv_nxt + 10), 6.5)
    assert len(s.outgoing()) == 1
    assert s.state is TcpState.ESTABLISHED


def test_rst_in_time_wait_closes_quietly() -> None:
    c, s = _pair()
    c.shutdown(1.0)
    s.receive(_only(c), 1.0)
    c.receive(_only(s), 1.0)
    s.shutdown(1.0)
    c.receive(_only(s), 1.0)
    assert c.state is TcpState.TIME_WAIT
    c.receive(_seg(c, TcpFlags.RST), 2.0)
    assert c.state is TcpState.CLOSED and c.error is None


def test_abort_sends_rst_and_drop_sends_nothing() -> None:
    c, s = _pair()
    c.abort(1.0)
    rst = _only(c)
    assert TcpFlags.RST in rst.flags and rst.seq == c.snd_max & 0xFFFFFFFF
    s.receive(rst, 1.0)
    assert s.state is TcpState.CLOSED and s.error == "connection reset by peer"
    c2, _ = _pair()
    c2.send(b"pending", 1.0)
    c2.outgoing()
    c2.drop("PDP context deactivated")
    assert c2.state is TcpState.CLOSED and c2.outgoing() == [] and c2.next_deadline() is None
    assert c2.error == "link dropped: PDP context deactivated"


def test_segment_to_closed_connection_gets_rst() -> None:
    c, s = _pair()
    s.drop("gone")
    s.receive(_seg(s, TcpFlags.ACK, payload=b"x"), 1.0)
    rst = _only(s)
    assert rst.flags == TcpFlags.RST
    assert reset_for(TcpSegment(1, 2, 10, 0, TcpFlags.SYN, 0)) == TcpSegment(
        2, 1, 0, 11, TcpFlags.RST | TcpFlags.ACK, 0
    )
    assert reset_for(TcpSegment(1, 2, 10, 0, TcpFlags.RST, 0)) is None


def test_transition_table_is_the_only_way() -> None:
    # every state has the abnormal exits; an input the table lacks is a typed error
    for state in TcpState:
        assert TRANSITIONS[(state, TcpInput.RECV_RST)] is TcpState.CLOSED
    c, _ = _pair()
    with pytest.raises(IllegalTcpTransition):
        c._fire(TcpInput.ACTIVE_OPEN)


def test_sws_override_sends_a_small_window_after_a_while() -> None:
    c, s = _pair(server_config=TcpConfig(receive_buffer=2000, delayed_ack=0.0))
    c.send(b"o" * 5000, 1.0)
    assert sum(len(x.payload) for x in c.outgoing()) == 1460
    c.receive(_seg(c, TcpFlags.ACK, window=540), 1.1)
    assert c.outgoing() == []  # 540 bytes: less than an MSS and half the largest window (RFC 9293 3.8.6.2.1)
    deadline = c.next_deadline()
    assert deadline is not None
    c.on_timer(deadline)
    assert len(_only(c).payload) == 540  # RFC 1122 4.2.3.4 override


# ---------------------------------------------------------------------------------------------------------------
# two connections back to back through a lossy pipe, on a fake clock


class _Pipe:
    """Segments encoded to bytes, lost with probability `loss`, duplicated with probability `duplicate`, delayed by
    `delay` plus up to `jitter` (so they may overtake one another), decoded again at the far end; all randomness
    from one seed."""

    def __init__(self, loss: float, delay: float, jitter: float, seed: int, duplicate: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.loss, self.delay, self.jitter, self.duplicate = loss, delay, jitter, duplicate
        self.heap: list[tuple[float, int, int, bytes]] = []
        self.count = 0
        self.dropped = 0

    def ship(self, conn: TcpConnection, to: int, now: float) -> None:
        for seg in conn.outgoing():
            raw = seg.encode(conn.local[0], conn.remote[0])
            if self.rng.random() < self.loss:
                self.dropped += 1
                continue
            for _ in range(2 if self.rng.random() < self.duplicate else 1):
                self.count += 1
                at = now + self.delay + self.rng.uniform(0.0, self.jitter)
                heapq.heappush(self.heap, (at, self.count, to, raw))


def _transfer(
    payload: bytes,
    *,
    loss: float,
    seed: int,
    delay: float = 0.05,
    jitter: float = 0.01,
    duplicate: float = 0.0,
) -> dict[str, Any]:
    pipe = _Pipe(loss, delay, jitter, seed, duplicate)
    config = TcpConfig(send_buffer=1 << 17, receive_buffer=1 << 17, data_retries=30, syn_retries=30)
    now = 0.0
    client = TcpConnection.active(L, R, iss=0xFFFF0000, now=now, config=config)
    server: TcpConnection | None = None
    sent = 0
    received = bytearray()
    retransmitted = 0
    while now < 3600.0:
        # the applications: the client writes all then closes, the server reads all and closes at EOF
        if client.state in (TcpState.ESTABLISHED, TcpState.SYN_SENT) and sent < len(payload):
            sent += client.send(payload[sent : sent + client.send_space], now)
            if sent == len(payload):
                client.shutdown(now)
        if server is not None:
            received += server.read()
            if server.at_eof and server.state is TcpState.CLOSE_WAIT:
                server.shutdown(now)
        for conn in (client, server):
            if conn is not None:
                retransmitted += len(_of(conn.events(), Retransmitted))
                assert conn.error is None, conn.error
        pipe.ship(client, 1, now)
        if server is not None:
            pipe.ship(server, 0, now)
        if client.state is TcpState.TIME_WAIT and server is not None and server.state is TcpState.CLOSED:
            break
        deadlines = [d for d in (client.next_deadline(), server and server.next_deadline()) if d is not None]
        if pipe.heap:
            deadlines.append(pipe.heap[0][0])
        assert deadlines, "nothing left to happen: a deadlock"
        now = max(now, min(deadlines))
        while pipe.heap and pipe.heap[0][0] <= now:
            _, _, to, raw = heapq.heappop(pipe.heap)
            if to == 0:
                client.receive(TcpSegment.decode(raw, B, A), now)
            else:
                seg = TcpSegment.decode(raw, A, B)
                if server is None:
                    assert TcpFlags.SYN in seg.flags
                    server = TcpConnection.passive(seg, R, L, iss=0x7FFFFF00, now=now, config=config)
                else:
                    server.receive(seg, now)
        for conn in (client, server):
            deadline = conn.next_deadline() if conn is not None else None
            if conn is not None and deadline is not None and deadline <= now:
                conn.on_timer(now)
    return {"received": bytes(received), "time": now, "dropped": pipe.dropped, "retransmitted": retransmitted}


def test_one_mebibyte_through_a_lossy_pipe() -> None:
    payload = random.Random(7).randbytes(1 << 20)
    result = _transfer(payload, loss=0.05, seed=15, duplicate=0.02)
    assert result["received"] == payload
    # about half the losses are ACKs, which the next cumulative ACK covers; the other half must be resent
    assert result["dropped"] > 50 and result["retransmitted"] >= result["dropped"] // 4


def test_one_mebibyte_ideal_pipe_no_retransmissions() -> None:
    payload = random.Random(8).randbytes(1 << 20)
    result = _transfer(payload, loss=0.0, seed=1, jitter=0.0)
    assert result["received"] == payload and result["retransmitted"] == 0


# ---------------------------------------------------------------------------------------------------------------
# hypothesis: arbitrary segments and calls never raise and never break the invariants

_FUZZ_CONFIG = TcpConfig(
    send_buffer=4000, receive_buffer=3000, mss=536, data_retries=4, syn_retries=2, msl=1.0
)

_segments = st.builds(
    lambda rel_seq, rel_ack, flags, window, payload, absolute, sack: (
        rel_seq,
        rel_ack,
        flags,
        window,
        payload,
        absolute,
        sack,
    ),
    st.integers(-5000, 5000),
    st.integers(-5000, 5000),
    st.integers(0, 0xFF),
    st.integers(0, 0xFFFF),
    st.binary(max_size=700),
    st.booleans(),
    st.lists(st.tuples(st.integers(-3000, 6000), st.integers(-100, 3000)), max_size=4),  # SACK blocks
)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("segment"), _segments),
        st.tuples(st.just("send"), st.integers(0, 5000)),
        st.tuples(st.just("read"), st.integers(1, 4000)),
        st.tuples(st.just("time"), st.floats(0.0, 5.0)),
        st.tuples(st.just("shutdown"), st.none()),
        st.tuples(st.just("close"), st.none()),
        st.tuples(st.just("abort"), st.none()),
    ),
    max_size=40,
)


def _check_invariants(conn: TcpConnection) -> None:
    assert conn.snd_una <= conn.snd_nxt <= conn.snd_max
    assert conn.send_buffered <= conn.config.send_buffer
    stored = conn.readable + sum(len(chunk) for _, chunk in conn._ooo)
    assert stored <= conn.config.receive_buffer
    assert 0 <= conn.send_space <= conn.config.send_buffer
    assert len(conn._sacked) <= 32 and all(
        conn.snd_una <= left < right <= conn.snd_max for left, right in conn._sacked
    )
    if conn.state is TcpState.CLOSED:
        assert conn.next_deadline() is None
    for seg in conn.outgoing():
        assert 0 <= seg.seq <= 0xFFFFFFFF and 0 <= seg.ack <= 0xFFFFFFFF and 0 <= seg.window <= 0xFFFF
        assert len(seg.payload) <= conn.eff_mss
        seg.encode(A, B)
    for event in conn.events():
        assert isinstance(
            event,
            (
                Connected,
                DataArrived,
                PeerFinished,
                Reset,
                TimedOut,
                Closed,
                Retransmitted,
                WindowProbe,
                Rejected,
            ),
        )


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["client", "server", "established"]), st.sampled_from(["reno", "cubic", "bbr"]), _ops)
def test_arbitrary_segments_never_raise(start: str, congestion: str, ops: list[tuple[str, Any]]) -> None:
    now = 0.0
    config = dataclasses.replace(_FUZZ_CONFIG, congestion=congestion)
    if start == "client":
        conn = TcpConnection.active(L, R, iss=0xFFFFFE00, now=now, config=config)
    elif start == "server":
        syn = TcpSegment(
            40000, 443, 0xFFFFFFF0, 0, TcpFlags.SYN, 1000, mss=536, window_scale=2, sack_permitted=True
        )
        conn = TcpConnection.passive(syn, R, L, iss=77, now=now, config=config)
    else:
        conn, _ = _pair(config, config)
    _check_invariants(conn)
    for op, arg in ops:
        if op == "segment":
            rel_seq, rel_ack, flags, window, payload, absolute, sack = arg
            seq = rel_seq & 0xFFFFFFFF if absolute else (conn.rcv_nxt + rel_seq) & 0xFFFFFFFF
            ack = rel_ack & 0xFFFFFFFF if absolute else (conn.snd_una + rel_ack) & 0xFFFFFFFF
            blocks = tuple(
                ((conn.snd_una + left) & 0xFFFFFFFF, (conn.snd_una + left + size) & 0xFFFFFFFF)
                for left, size in sack
            )
            segment = TcpSegment(443, 40000, seq, ack, TcpFlags(flags), window, payload, sack_blocks=blocks)
            conn.receive(segment, now)
        elif op == "send":
            try:
                conn.send(b"s" * arg, now)
            except TcpUsageError:
                assert conn.state is TcpState.CLOSED or conn.send_space == 0
        elif op == "read":
            conn.read(arg)
        elif op == "time":
            now += arg
            deadline = conn.next_deadline()
            if deadline is not None and deadline <= now:
                conn.on_timer(now)
        elif op == "shutdown":
            conn.shutdown(now)
        elif op == "close":
            conn.close(now)
        else:
            conn.abort(now)
        _check_invariants(conn)


def test_ack_after_timeout_carries_the_highest_sequence_sent() -> None:
    # after an RTO snd_nxt steps back to snd_una (go-back-N) while the peer may already hold everything: an ACK
    # from further back would be out of the peer's window, and two such peers would trade ACKs forever
    c, s = _pair(
        TcpConfig(tail_loss_probe=False)
    )  # the RTO itself: no tail loss probe before it (RFC 8985 7)
    c.send(b"g" * 2000, 1.0)
    for seg in c.outgoing():
        s.receive(seg, 1.0)
    s.outgoing()  # the ACKs are lost
    c.on_timer(2.0)
    c.outgoing()
    assert c.snd_nxt < c.snd_max
    s.send(b"reply", 2.1)
    c.receive(_only(s), 2.1)
    c.on_timer(2.4)
    ack = [x for x in c.outgoing() if not x.payload]
    assert ack and ack[0].seq == c.snd_max & 0xFFFFFFFF
    s.receive(ack[0], 2.5)
    assert not _of(s.events(), Rejected)
    assert s.snd_una == s.snd_max


def _into(state: TcpState) -> TcpConnection:
    """A connection (our side of a pair) driven into `state` by real segments."""
    if state is TcpState.SYN_SENT:
        c = TcpConnection.active(L, R, iss=10, now=0.0)
        c.outgoing()
        return c
    if state is TcpState.SYN_RECEIVED:
        s = TcpConnection.passive(TcpSegment(443, 40000, 99, 0, TcpFlags.SYN, 1000), L, R, iss=10, now=0.0)
        s.outgoing()
        return s
    c, s = _pair()
    if state in (TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2, TcpState.CLOSING, TcpState.TIME_WAIT):
        c.shutdown(1.0)
        fin = _only(c)
        if state in (TcpState.FIN_WAIT_2, TcpState.TIME_WAIT):
            s.receive(fin, 1.0)
            c.receive(_only(s), 1.0)
    if state in (TcpState.CLOSE_WAIT, TcpState.CLOSING, TcpState.LAST_ACK, TcpState.TIME_WAIT):
        c.receive(_seg(c, TcpFlags.FIN | TcpFlags.ACK, ack=c.snd_una), 1.0)
        if state is TcpState.LAST_ACK:
            c.shutdown(1.0)
    c.outgoing()
    c.events()
    assert c.state is state
    return c


_SYNCHRONIZED = [
    TcpState.SYN_RECEIVED,
    TcpState.ESTABLISHED,
    TcpState.FIN_WAIT_1,
    TcpState.FIN_WAIT_2,
    TcpState.CLOSE_WAIT,
    TcpState.CLOSING,
    TcpState.LAST_ACK,
    TcpState.TIME_WAIT,
]


@pytest.mark.parametrize("state", _SYNCHRONIZED, ids=lambda s: s.name)
def test_rst_in_every_synchronized_state(state: TcpState) -> None:
    # RFC 5961 3.2: in the window but not at RCV.NXT: a challenge ACK, nothing else
    c = _into(state)
    c.receive(_seg(c, TcpFlags.RST, seq=c.rcv_nxt + 1), 2.0)
    assert c.state is state
    challenge = _only(c)
    assert challenge.flags == TcpFlags.ACK and challenge.ack == c.rcv_nxt & 0xFFFFFFFF
    # outside the window: dropped without an answer
    c.receive(_seg(c, TcpFlags.RST, seq=c.rcv_nxt + (1 << 20)), 2.0)
    assert c.state is state and c.outgoing() == []
    # exactly at RCV.NXT: the connection is gone, an error only where data could still be lost
    c.receive(_seg(c, TcpFlags.RST, seq=c.rcv_nxt), 2.0)
    assert c.state is TcpState.CLOSED and c.outgoing() == [] and c.next_deadline() is None
    events = c.events()
    if state in (TcpState.CLOSING, TcpState.LAST_ACK, TcpState.TIME_WAIT):
        assert c.error is None and not _of(events, Reset)
    else:
        assert c.error is not None and _of(events, Reset)


@pytest.mark.parametrize("state", [TcpState.SYN_SENT, *_SYNCHRONIZED], ids=lambda s: s.name)
def test_abort_and_drop_in_every_state(state: TcpState) -> None:
    c = _into(state)
    c.abort(3.0)
    sent = c.outgoing()
    assert c.state is TcpState.CLOSED and c.next_deadline() is None
    assert [TcpFlags.RST in x.flags for x in sent] == ([] if state is TcpState.SYN_SENT else [True])
    d = _into(state)
    d.drop("radio gone")
    assert d.state is TcpState.CLOSED and d.outgoing() == [] and d.error == "link dropped: radio gone"


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFF),
    st.binary(max_size=100),
    st.none() | st.integers(0, 0xFFFF),
    st.none() | st.integers(0, 14),
    st.booleans(),
)
def test_every_segment_we_build_parses_in_scapy(
    port: int, seq: int, flags: int, payload: bytes, mss: int | None, ws: int | None, sackp: bool
) -> None:
    from scapy.layers.inet import IP, TCP

    seg = TcpSegment(port, 443, seq, seq ^ 0x5A5A5A5A, TcpFlags(flags), 1000, payload, mss, ws, sackp)
    raw = seg.encode(A, B)
    parsed = IP(bytes(IP(src=str(A), dst=str(B), proto=6) / raw))
    tcp = parsed[TCP]
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack, int(tcp.flags)) == (
        port,
        443,
        seq,
        seq ^ 0x5A5A5A5A,
        flags,
    )
    assert bytes(tcp.payload) == payload
    options = dict((k, v) for k, v in tcp.options if k not in ("NOP", "EOL"))
    assert options.get("MSS") == mss and options.get("WScale") == ws and ("SAckOK" in options) == sackp
    checksum = tcp.chksum
    del tcp.chksum
    assert IP(bytes(parsed))[TCP].chksum == checksum  # scapy computes the same checksum over our bytes


def test_slow_start_and_congestion_avoidance_growth() -> None:
    c, _ = _pair(TcpConfig(send_buffer=1 << 20, initial_window=0))
    mss = c.eff_mss
    assert c.cwnd == 3 * mss  # RFC 5681 3.1 initial window for a 1460-byte SMSS (initial_window=0)
    c.send(b"c" * (200 * mss), 1.0)
    c.outgoing()
    # slow start: an ACK of two segments (a delayed ACK) opens the window by 2 SMSS (RFC 3465, L = 2 SMSS)
    c.receive(_seg(c, TcpFlags.ACK, ack=c.snd_una + 2 * mss), 1.1)
    assert c.cwnd == 5 * mss
    c.receive(_seg(c, TcpFlags.ACK, ack=c.snd_una + 3 * mss), 1.1)
    assert c.cwnd == 7 * mss  # at most 2 SMSS per ACK however much it covers
    c.outgoing()
    # congestion avoidance: one SMSS per window's worth of acknowledged bytes (RFC 5681 3.1 byte counting)
    c.ssthresh = c.cwnd
    window = c.cwnd
    for _ in range(window // mss - 1):
        c.receive(_seg(c, TcpFlags.ACK, ack=c.snd_una + mss), 1.2)
        c.outgoing()
    assert c.cwnd == window
    c.receive(_seg(c, TcpFlags.ACK, ack=c.snd_una + mss), 1.2)
    assert c.cwnd == window + mss


def test_timeout_collapses_the_window() -> None:
    c, _ = _pair(
        TcpConfig(send_buffer=1 << 20, tail_loss_probe=False)
    )  # the RTO itself: no tail loss probe before it (RFC 8985 7)
    mss = c.eff_mss
    c.send(b"t" * (3 * mss), 1.0)
    assert len(c.outgoing()) == 3
    c.on_timer(2.0)
    assert c.cwnd == mss and c.ssthresh == 2 * mss  # RFC 5681 (4): max(FlightSize / 2, 2 SMSS); loss window 1
    assert len(c.outgoing()) == 1  # go-back-N starts with one segment


def test_fin_wait_2_ends_after_a_full_close_only() -> None:
    c, s = _pair(TcpConfig(fin_wait_2_timeout=10.0))
    c.close(1.0)
    s.receive(_only(c), 1.0)
    c.receive(_only(s), 1.1)
    assert c.state is TcpState.FIN_WAIT_2
    assert c.next_deadline() == pytest.approx(11.1)
    c.on_timer(11.0)
    assert c.state is TcpState.FIN_WAIT_2
    c.on_timer(11.1)
    assert c.state is TcpState.CLOSED and c.outgoing() == [] and c.error is None
    assert _of(c.events(), Closed) == [Closed("FIN-WAIT-2 timeout")]
    # a half close keeps FIN-WAIT-2 for as long as the peer likes: it may still be sending
    h, t = _pair(TcpConfig(fin_wait_2_timeout=10.0))
    h.shutdown(1.0)
    t.receive(_only(h), 1.0)
    h.receive(_only(t), 1.1)
    assert h.state is TcpState.FIN_WAIT_2 and h.next_deadline() is None


def test_sack_blocks_round_trip_and_parse_in_scapy() -> None:
    from scapy.layers.inet import IP, TCP

    blocks = ((1000, 2000), (0xFFFFFF00, 0x10), (5, 6))
    seg = TcpSegment(1, 2, 3, 4, TcpFlags.ACK, 100, sack_blocks=blocks)
    raw = seg.encode(A, B)
    assert TcpSegment.decode(raw, A, B) == seg
    tcp = IP(bytes(IP(src=str(A), dst=str(B), proto=6) / raw))[TCP]
    sack = dict((k, v) for k, v in tcp.options if k == "SAck")["SAck"]
    assert sack == (1000, 2000, 0xFFFFFF00, 0x10, 5, 6)
    # the option area holds at most four blocks (RFC 2018 section 3)
    many = TcpSegment(1, 2, 3, 4, TcpFlags.ACK, 100, sack_blocks=tuple((i, i + 1) for i in range(6)))
    assert len(TcpSegment.decode(many.encode(A, B), A, B).sack_blocks) == 4
    with pytest.raises(PacketError, match="2 \\+ 8n"):
        TcpSegment.decode(_with_options(bytes((5, 6, 0, 0, 0, 0, 0, 0))), A, B)


def test_sack_permitted_negotiated_only_when_both_offer() -> None:
    c = TcpConnection.active(L, R, iss=1, now=0.0)
    syn = _only(c)
    assert syn.sack_permitted
    s = TcpConnection.passive(syn, R, L, iss=2, now=0.0)
    assert _only(s).sack_permitted and s._sack_ok
    plain = TcpSegment(40000, 443, 9, 0, TcpFlags.SYN, 1000, mss=1460)
    t = TcpConnection.passive(plain, R, L, iss=2, now=0.0)
    assert not _only(t).sack_permitted and not t._sack_ok
    off = TcpConnection.passive(syn, R, L, iss=2, now=0.0, config=TcpConfig(sack=False))
    assert not _only(off).sack_permitted


def test_receiver_reports_out_of_order_data_in_sack_blocks() -> None:
    c, s = _pair()
    c.send(b"r" * (5 * 1460), 1.0)
    segs = c.outgoing()[:3]
    s.receive(segs[2], 1.05)
    first = _only(s)
    assert first.ack == segs[0].seq and first.sack_blocks == ((segs[2].seq, segs[2].seq + 1460),)
    s.receive(segs[1], 1.06)  # adjacent below: one block, reported first as the latest arrival
    second = _only(s)
    assert second.sack_blocks == ((segs[1].seq, segs[2].seq + 1460),)
    s.receive(segs[0], 1.07)  # the hole fills: a plain cumulative ACK at once
    third = _only(s)
    assert third.ack == (segs[2].seq + 1460) & 0xFFFFFFFF and third.sack_blocks == ()


def test_sack_sender_repairs_several_holes_in_one_round_trip() -> None:
    config = TcpConfig(send_buffer=1 << 20, receive_buffer=1 << 20)
    c, s = _pair(config, config)
    mss = 1460
    c.cwnd = 10 * mss
    c.send(b"h" * (10 * mss), 1.0)
    segs = c.outgoing()
    lost = {1, 3, 5}
    for i, seg in enumerate(segs):
        if i not in lost:
            s.receive(seg, 1.05)
    acks = s.outgoing()
    assert all(a.sack_blocks for a in acks[1:])
    resent: list[int] = []
    for ack in acks:
        c.receive(ack, 1.1)
        resent += [x.seq for x in c.outgoing() if x.payload and x.seq in {segs[i].seq for i in lost}]
    # the three holes go out on the duplicate ACKs of the same round trip, not one per round trip as NewReno's
    assert resent == [segs[1].seq, segs[3].seq, segs[5].seq]
    assert all(e.reason == "fast" for e in _of(c.events(), Retransmitted))
    for seq in resent:
        s.receive(next(x for x in segs if x.seq == seq), 1.15)
    s.on_timer(1.4)
    for ack in s.outgoing():
        c.receive(ack, 1.4)
    assert c.snd_una == c.snd_max and s.read() == b"h" * (10 * mss)


def test_sack_blocks_outside_what_was_sent_are_ignored() -> None:
    c, s = _pair()
    c.send(b"i" * 3000, 1.0)
    c.outgoing()
    bogus = (((c.snd_max + 10) & 0xFFFFFFFF, (c.snd_max + 20) & 0xFFFFFFFF), (5, 1))
    c.receive(TcpSegment(443, 40000, c.rcv_nxt, c.snd_una, TcpFlags.ACK, 1000, sack_blocks=bogus), 1.1)
    assert c._sacked == []


def test_cubic_decrease_and_window_curve() -> None:
    c, _ = _pair(TcpConfig(congestion="cubic"))
    mss = c.eff_mss
    c.cwnd = 100 * mss
    c.snd_max = c.snd_nxt = c.snd_una + 100 * mss  # as if a full window were in flight
    c._congestion_event(10.0)
    assert c.ssthresh == int(100 * mss * 0.7)  # RFC 9438 4.6: beta 0.7
    c.cwnd = c.ssthresh
    c.srtt = 0.1
    k = ((100 - 70) / 0.4) ** (1 / 3)  # RFC 9438 (2): about 4.2 s back to W_max
    now = 10.0
    at: dict[str, float] = {}
    while now < 10.0 + 2 * k:
        now += 0.1
        for _ in range(10):  # a window's worth of ACKs per round trip
            c._cubic_avoidance(c.cwnd // 10, now)
        if "half" not in at and now >= 10.0 + k / 2:
            at["half"] = c.cwnd / mss
        if "k" not in at and now >= 10.0 + k:
            at["k"] = c.cwnd / mss
    at["end"] = c.cwnd / mss
    # concave up to W_max (most of the way back in half the time), a plateau near it, then convex beyond
    assert 85 < at["half"] < 100 and 95 < at["k"] < 105 and at["end"] > 120


def test_congestion_control_is_checked() -> None:
    with pytest.raises(ValueError, match="reno, cubic or bbr"):
        TcpConfig(congestion="vegas")


# ---------------------------------------------------------------------------------------------------------------
# review of issue 15: hostile peers


def test_out_of_order_flood_is_capped_per_chunk() -> None:
    # one-byte segments into every other byte of the window: each chunk is charged OOO_CHUNK_OVERHEAD against the
    # receive buffer (as Linux's truesize), so the queue, and the work per segment, stays bounded
    cap = 64 * 1024
    _, s = _pair(server_config=TcpConfig(receive_buffer=cap))
    base = s.rcv_nxt
    sent = 2000
    for off in range(2, 2 * sent + 2, 2):
        s.receive(_seg(s, TcpFlags.ACK, seq=base + off, payload=b"z"), 1.0)
    acks = s.outgoing()
    assert len(s._ooo) <= cap // (OOO_CHUNK_OVERHEAD + 1) < sent
    assert s._ooo_cost == sum(len(c) + OOO_CHUNK_OVERHEAD for _, c in s._ooo) <= cap
    # every segment, stored or dropped, is still acknowledged (RFC 5681 4.2), with at most three SACK blocks
    assert len(acks) == sent and all(a.ack == base & 0xFFFFFFFF for a in acks)
    assert all(len(a.sack_blocks) <= 3 for a in acks)
    dropped = [e for e in _of(s.events(), Rejected) if "out-of-order" in e.reason]
    assert len(dropped) == 1  # one Rejected per overflow, not one per segment
    # the first hole filled: the chunk behind it is drained in order, the cost charged for it given back
    held = len(s._ooo)
    s.receive(_seg(s, TcpFlags.ACK, seq=base, payload=b"a" * 2), 1.1)
    assert s.read() == b"aaz" and len(s._ooo) == held - 1
    assert s._ooo_cost == sum(len(c) + OOO_CHUNK_OVERHEAD for _, c in s._ooo)


def test_out_of_order_chunks_merge_and_sack_the_latest_first() -> None:
    _, s = _pair()
    base = s.rcv_nxt
    for off in (100, 300, 200, 150, 250):  # 150 and 250 bridge 100..160 / 200..260 / 300..360 into one chunk
        s.receive(_seg(s, TcpFlags.ACK, seq=base + off, payload=b"m" * 60), 1.0)
    assert [(start - base, len(chunk)) for start, chunk in s._ooo] == [(100, 260)]
    assert s._ooo_cost == 260 + OOO_CHUNK_OVERHEAD
    s.receive(_seg(s, TcpFlags.ACK, seq=base + 500, payload=b"n" * 10), 1.0)
    last = s.outgoing()[-1]
    assert last.sack_blocks == (
        ((base + 500) & 0xFFFFFFFF, (base + 510) & 0xFFFFFFFF),
        ((base + 100) & 0xFFFFFFFF, (base + 360) & 0xFFFFFFFF),
    )
    s.receive(_seg(s, TcpFlags.ACK, seq=base, payload=b"a" * 100), 1.1)
    assert s.read() == b"a" * 100 + b"m" * 260 and [(st - base, len(c)) for st, c in s._ooo] == [(500, 10)]


def test_peer_mss_zero_is_floored() -> None:
    # CVE-2019-11479: a SYN announcing MSS 0 (or 1) must not make us send one-byte segments
    c = TcpConnection.active(L, R, iss=1000, now=0.0)
    syn = _only(c)
    answer = TcpSegment(443, 40000, 5000, syn.seq + 1, TcpFlags.SYN | TcpFlags.ACK, 65535, mss=0)
    c.receive(answer, 0.01)
    c.outgoing()
    assert c.state is TcpState.ESTABLISHED and c.eff_mss == MIN_PEER_MSS == 88
    c.send(b"x" * 1000, 0.1)
    assert {len(seg.payload) for seg in c.outgoing()} == {MIN_PEER_MSS}


def test_duplicates_of_a_go_back_n_do_not_start_fast_recovery() -> None:
    # RFC 6582 3.2 step 2 / section 6: after a timeout `recover` is SND.MAX; duplicate ACKs that do not cover more
    # than it (the peer answering the segments go-back-N resent) must not trigger a fast retransmit
    c, _ = _pair(TcpConfig(send_buffer=1 << 20, sack=False))
    mss = c.eff_mss
    c.send(b"t" * (3 * mss), 1.0)
    c.outgoing()
    c.on_timer(2.0)  # RTO: recover = snd_max
    c.outgoing()
    recover = c.snd_max
    c.receive(_seg(c, TcpFlags.ACK, ack=recover), 2.1)
    c.send(b"u" * (4 * mss), 2.2)
    assert c.outgoing()
    c.events()
    for _ in range(3):
        c.receive(_seg(c, TcpFlags.ACK, ack=recover), 2.3)
    assert not _of(c.events(), Retransmitted) and not c._in_recovery
    # three fresh duplicates above recover do start it
    c.receive(_seg(c, TcpFlags.ACK, ack=recover + mss), 2.4)
    for _ in range(3):
        c.receive(_seg(c, TcpFlags.ACK, ack=recover + mss), 2.5)
    assert [e.reason for e in _of(c.events(), Retransmitted)] == ["fast"]
