"""SACK-driven loss recovery of net/tcp.py: RFC 8985 RACK-TLP (loss marked by time, the tail loss probe), RFC 6675's
pipe with RFC 6937 Proportional Rate Reduction, the RTO backoff after the path answers again, and the receive side's
immediate ACK of out-of-order data (RFC 5681 4.2). The connection is sans-IO: every test passes its own clock, and
one runs the stream adapter on trio's MockClock."""

from __future__ import annotations

from ipaddress import IPv4Address

import trio
import trio.testing

from bipsim.net.tcp import Retransmitted, TcpConfig, TcpConnection, TcpEvent
from bipsim.net.tcp_segment import TcpFlags, TcpSegment
from tests.test_tcp_stream import _open_pair

L = (IPv4Address("198.51.100.2"), 40000)
R = (IPv4Address("203.0.113.10"), 80)
MASK = 0xFFFFFFFF


def _pair(
    client: TcpConfig | None = None, server: TcpConfig | None = None
) -> tuple[TcpConnection, TcpConnection]:
    """A handshake with a 100 ms round trip: the client's SRTT is 0.1 s, its RTO the 1 s minimum."""
    c = TcpConnection.active(L, R, iss=1000, now=0.0, config=client)
    (syn,) = c.outgoing()
    s = TcpConnection.passive(syn, R, L, iss=5000, now=0.05, config=server)
    (syn_ack,) = s.outgoing()
    c.receive(syn_ack, 0.1)
    (ack,) = c.outgoing()
    s.receive(ack, 0.15)
    c.events()
    s.events()
    assert c.srtt == 0.1 and c.rto == 1.0
    return c, s


def _retransmitted(events: list[TcpEvent]) -> list[Retransmitted]:
    return [e for e in events if isinstance(e, Retransmitted)]


def _data(segments: list[TcpSegment]) -> list[TcpSegment]:
    return [x for x in segments if x.payload]


def _acks_of(s: TcpConnection, segments: list[TcpSegment], now: float) -> list[TcpSegment]:
    """What the server answers to `segments`, one at a time (each ACK its own)."""
    out: list[TcpSegment] = []
    for x in segments:
        s.receive(x, now)
        out += s.outgoing()
    return out


def test_rack_resends_a_loss_seen_by_two_duplicates_before_the_rto() -> None:
    # three segments, the first lost: only two duplicate ACKs come back, too few for RFC 5681's fast retransmit;
    # RACK marks it lost RACK.rtt + reo_wnd (min_RTT/4) after it was sent, long before the 1 s RTO
    c, s = _pair()
    mss = c.eff_mss
    c.send(b"r" * (3 * mss), 1.0)
    first, *rest = c.outgoing()
    acks = _acks_of(s, rest, 1.05)
    assert len(acks) == 2 and all(a.sack_blocks for a in acks)
    for a in acks:
        c.receive(a, 1.1)
    assert c.outgoing() == []
    deadline = c.next_deadline()
    assert deadline is not None and deadline < 1.2  # the reordering timer (the PTO would be 1.2, the RTO 2.0)
    c.on_timer(deadline)
    (resent,) = c.outgoing()
    assert resent.seq == first.seq and resent.payload == first.payload
    assert [e.reason for e in _retransmitted(c.events())] == ["fast"]
    assert deadline - 1.0 < 0.1 + 0.1 / 4 + 1e-9  # sent + RACK.rtt + reo_wnd
    c.receive(_acks_of(s, [resent], 1.15)[-1], 1.2)
    assert c.unacknowledged == 0


def test_tail_loss_probe_resends_the_lost_last_segment() -> None:
    # the last segment of a burst is lost: no later segment can show it missing, so without a probe only the RTO
    # (1 s after the ACK) would resend it; RFC 8985 7's probe goes at 2 SRTT (+ the peer's delayed-ACK time)
    c, s = _pair()
    mss = c.eff_mss
    c.send(b"t" * (3 * mss), 1.0)
    one, two, last = c.outgoing()
    (ack,) = _acks_of(s, [one, two], 1.05)
    c.receive(ack, 1.1)
    assert c.unacknowledged == mss
    deadline = c.next_deadline()
    assert deadline is not None
    assert abs(deadline - (1.1 + 2 * c.srtt + 0.2)) < 1e-9 and deadline < 1.1 + c.rto  # type: ignore[operator]
    c.on_timer(deadline)
    (probe,) = c.outgoing()
    assert probe.seq == last.seq and probe.payload == last.payload
    assert [e.reason for e in _retransmitted(c.events())] == ["tlp"]
    s.receive(probe, deadline + 0.05)
    s.on_timer(deadline + 0.25)  # the server's delayed ACK
    for a in s.outgoing():
        c.receive(a, deadline + 0.3)
    assert c.unacknowledged == 0 and c.next_deadline() is None


def test_tail_loss_probe_sends_new_data_when_there_is_some() -> None:
    # RFC 8985 7.3: a probe is a new segment when the windows allow one, not a retransmission
    c, s = _pair(TcpConfig(send_buffer=1 << 20))
    mss = c.eff_mss
    c.send(b"n" * (3 * mss), 1.0)
    sent = c.outgoing()
    c.cwnd = 3 * mss  # hold the fourth segment back by the window (as if the cwnd had not grown)
    c.send(b"n" * mss, 1.01)
    assert c.outgoing() == []
    deadline = c.next_deadline()
    assert deadline is not None and deadline < 2.0
    c.on_timer(deadline)
    (probe,) = c.outgoing()
    assert (probe.seq - sent[-1].seq) & MASK == mss  # the next new segment
    assert _retransmitted(c.events()) == []


def _recovery(c: TcpConnection, s: TcpConnection, window: int) -> tuple[TcpSegment, list[TcpSegment]]:
    """`window` segments in flight at t=1.0 (cwnd opened by earlier traffic), the first one lost; the server's
    duplicate ACKs, each SACKing one more segment."""
    mss = c.eff_mss
    c.cwnd = window * mss
    c.send(b"w" * (2 * window * mss), 1.0)
    first, *rest = c.outgoing()
    assert len(rest) == window - 1
    return first, _acks_of(s, rest, 1.05)


def test_prr_spreads_the_reduction_over_the_recovery() -> None:
    # RFC 6937: while pipe is above ssthresh, new data goes out in proportion to what the ACKs deliver (here one
    # new segment every other ACK); RFC 6675's cwnd = ssthresh alone sends nothing until pipe falls under it
    c, s = _pair(TcpConfig(send_buffer=1 << 20))
    mss = c.eff_mss
    first, acks = _recovery(c, s, 20)
    new_per_ack: list[int] = []
    resent: list[TcpSegment] = []
    for k, a in enumerate(acks):
        c.receive(a, 1.1 + k * 0.001)
        out = _data(c.outgoing())
        resent += [x for x in out if ((x.seq - first.seq) & MASK) < 20 * mss]
        new_per_ack.append(sum(1 for x in out if ((x.seq - first.seq) & MASK) >= 20 * mss))
    assert [x.seq for x in resent] == [first.seq]
    assert c.ssthresh == 10 * mss
    entry = 2  # the third duplicate (three segments SACKed) starts the recovery
    during = new_per_ack[entry:]
    assert max(during) <= 1  # no burst
    assert sum(during[:6]) >= 2  # sending starts at once, not after pipe fell under ssthresh
    # the window halved: over the recovery, ssthresh segments at most, the retransmission included
    assert sum(during) + 1 <= 10


def test_a_lost_retransmission_is_found_by_rack() -> None:
    # the fast retransmission is lost too: new data sent after it arrives and is SACKed, so RACK marks the
    # retransmission lost and sends it again, without waiting for the RTO
    c, s = _pair(TcpConfig(send_buffer=1 << 20))
    first, acks = _recovery(c, s, 12)
    sent_after: list[TcpSegment] = []
    for k, a in enumerate(acks):
        c.receive(a, 1.1 + k * 0.001)
        sent_after += _data(c.outgoing())
    assert sent_after[0].seq == first.seq  # the fast retransmission ...
    new = sent_after[1:]
    assert new  # ... and PRR's new data behind it
    c.events()
    # the retransmission is lost; the new data arrives
    later = _acks_of(s, new, 1.15)
    t = 1.2
    again: list[TcpSegment] = []
    for a in later:
        t += 0.001
        c.receive(a, t)
        again += [x for x in c.outgoing() if x.seq == first.seq]
    deadline = c.next_deadline()
    if not again and deadline is not None and deadline < 2.0:
        c.on_timer(deadline)  # a reordering timer, if the window were not 0
        again += [x for x in c.outgoing() if x.seq == first.seq]
    assert again and t < 1.1 + c.rto
    assert [e.reason for e in _retransmitted(c.events())] == ["fast"]


def test_an_ack_after_timeouts_ends_the_backoff() -> None:
    # RFC 6298 5.5 doubles the RTO per timeout and Karn's rule takes no sample from what was resent, so the
    # backed-off value would stay for the next loss too; once the path answers, the RTO is the estimate again
    c, s = _pair(TcpConfig(tail_loss_probe=False))
    c.send(b"b" * 100, 1.0)
    c.outgoing()
    c.on_timer(2.0)
    c.on_timer(4.0)
    assert c.rto == 4.0
    resent = c.outgoing()[-1]
    s.receive(resent, 4.05)
    s.on_timer(4.3)  # its delayed ACK
    c.receive(s.outgoing()[-1], 4.35)
    assert c.unacknowledged == 0 and c.rto == 1.0


def test_out_of_order_data_is_acknowledged_at_once_with_its_sack_block() -> None:
    # RFC 5681 4.2: the delayed ACK (0.2 s here) never holds back the duplicate that tells the sender of a hole
    c, s = _pair(server=TcpConfig(delayed_ack=0.2))
    mss = c.eff_mss
    c.send(b"o" * (2 * mss), 1.0)
    _first, second = c.outgoing()
    s.receive(second, 1.05)
    (dup,) = s.outgoing()
    assert dup.ack == (c.snd_una & MASK) and dup.sack_blocks == ((second.seq, (second.seq + mss) & MASK),)


def test_default_window_covers_the_lte_bandwidth_delay_product() -> None:
    # lte (net/radio.py): 10 Mbit/s and 2 x 35 ms, about 88 KB in flight; the receive window a default
    # connection advertises after the handshake (scaled, RFC 7323) must hold it, else the window, not the
    # congestion control, bounds the goodput
    c, s = _pair()
    c.send(b"x", 1.0)
    (seg,) = c.outgoing()
    s.receive(seg, 1.05)
    s.on_timer(1.3)
    (ack,) = s.outgoing()
    assert ack.window << s._rcv_wscale >= 10_000_000 // 8 * 0.07


async def test_stream_repairs_a_lost_tail_by_the_probe_not_the_rto(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # the same through the stream adapter on trio's clock: the last segment of a write is lost once; the reader
    # has every byte a tail loss probe later (2 SRTT + 200 ms on this instant link), well before the 1 s RTO
    async with trio.open_nursery() as nursery:
        writer, reader, left, _ = await _open_pair(nursery)
        lost: list[TcpSegment] = []

        def drop(seg: TcpSegment) -> bool:
            if TcpFlags.PSH in seg.flags and not lost:
                lost.append(seg)
                return True
            return False

        left.drop = drop
        start = trio.current_time()
        await writer.send_all(b"p" * 3000)
        got = bytearray()
        while len(got) < 3000:
            got += await reader.receive_some(4096)
        assert lost and bytes(got) == b"p" * 3000
        assert trio.current_time() - start < left.connection.config.min_rto
        # only the lost segment went again: trio runs ready tasks in a random order, and on this instant link
        # (SRTT 0, so the probe is due at once) the probe may leave in the same instant as the ACK that lets RACK
        # resend it as well
        again = [x for x in left.sent if x.payload and x.seq == lost[0].seq]
        assert 1 <= left.connection.retransmissions == len(again) - 1 <= 2
        nursery.cancel_scope.cancel()


async def test_initial_window_is_ten_segments_as_rfc_6928(autojump_clock: trio.testing.MockClock) -> None:
    # the first flight of a connection, before any ACK comes back: RFC 6928's min(10 SMSS, max(2 SMSS, 14600)),
    # the window Linux starts with (docs/performance.md, bench_ip_goodput); RFC 5681's 3 segments with
    # initial_window=0. The reader's ACKs are held, so what left is the initial window and nothing else (no tail
    # loss probe: on this instant link its 2 SRTT is 0)
    for config, segments in (
        (TcpConfig(tail_loss_probe=False), 10),
        (TcpConfig(tail_loss_probe=False, initial_window=0), 3),
    ):
        async with trio.open_nursery() as nursery:
            writer, _reader, left, right = await _open_pair(nursery, config=config)
            right.hold = True
            nursery.start_soon(writer.send_all, b"w" * 30000)
            await trio.testing.wait_all_tasks_blocked()
            flight = _data(left.sent)
            assert [len(x.payload) for x in flight] == [1460] * segments
            assert left.connection.unacknowledged == segments * 1460
            nursery.cancel_scope.cancel()


def test_initial_window_is_capped_at_14600_bytes_and_one_segment_after_a_lost_syn() -> None:
    # RFC 6928 2: 10 segments of a small MSS, 14600 bytes of a large one (4 segments of 4000), and RFC 6928 2 /
    # RFC 5681 3.1: one segment once the SYN was retransmitted
    for mss, window in ((536, 10 * 536), (4000, 14600)):
        c, _ = _pair(TcpConfig(mss=mss), TcpConfig(mss=mss))
        assert c.cwnd == window
    c = TcpConnection.active(L, R, iss=1000, now=0.0, config=TcpConfig())
    c.outgoing()
    c.on_timer(1.0)  # the SYN again
    (syn,) = c.outgoing()
    s = TcpConnection.passive(syn, R, L, iss=5000, now=1.05)
    c.receive(s.outgoing()[0], 1.1)
    assert c.cwnd == c.eff_mss
