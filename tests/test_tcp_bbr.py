"""BBR in the CP's TCP (net/tcp_bbr.py, `TcpConfig(congestion="bbr")`): the model's phases from rate samples
(draft-ietf-ccwg-bbr), and two IpStacks over the `lte` radio model (net/radio.py) on trio's MockClock: a loss early
in slow start costs BBR no window, where RFC 5681 halves it (the difference bench_ip_goodput measured against the
kernel's BBR, docs/performance.md run 4), and BBR paces its first flight instead of sending it in one burst."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from ipaddress import IPv4Address

import pytest
import trio
import trio.testing

from bipsim.net.ipv4 import Ipv4Packet
from bipsim.net.radio import PROFILES, LinkProfile, radio_link
from bipsim.net.stack import IpStack
from bipsim.net.tcp import PACING_CATCH_UP, PACING_QUANTUM, TcpConfig, TcpConnection
from bipsim.net.tcp_bbr import BBR_TRANSITIONS, HIGH_GAIN, Bbr, BbrInput, BbrState, RateSample
from bipsim.net.tcp_segment import TcpSegment

CP = IPv4Address("198.51.100.2")
NET = IPv4Address("203.0.113.10")
MSS = 1460


def _sample(rate: float, rtt: float, prior_delivered: int, acked: int = 2 * MSS) -> RateSample:
    return RateSample(int(rate * rtt), rtt, rtt, prior_delivered, False, acked)


def test_the_phases_follow_the_bandwidth_estimate() -> None:
    # 10 Mbit/s (1.25 MB/s) and 70 ms: STARTUP until the estimate stops growing by 25 % for three rounds, DRAIN
    # until the queue it built is gone, then PROBE_BW's gain cycle with about twice the product in flight
    bbr = Bbr(MSS, 10 * MSS, 0.0)
    assert bbr.state is BbrState.STARTUP and bbr.pacing_gain == HIGH_GAIN
    delivered, now, rate = 0, 0.0, 200_000.0
    for _ in range(12):
        now += 0.07
        rate = min(rate * 2, 1_250_000.0)  # doubles per round, until the link's rate
        prior, delivered = delivered, delivered + int(rate * 0.07)
        bbr.on_ack(_sample(rate, 0.07, prior), delivered, 3 * int(rate * 0.07), 100 * MSS, now)
        if bbr.state is not BbrState.STARTUP:
            break
    assert bbr.filled_pipe and bbr.state is BbrState.DRAIN
    assert bbr.btl_bw == pytest.approx(1_250_000.0) and bbr.rt_prop == 0.07
    assert bbr.pacing_gain == pytest.approx(1 / HIGH_GAIN)
    bdp = 1_250_000 * 0.07
    bbr.on_ack(_sample(rate, 0.07, delivered), delivered + 1000, int(bdp) - MSS, 100 * MSS, now + 0.01)
    assert bbr.state is BbrState.PROBE_BW and bbr.cwnd_gain == 2.0
    assert bbr.bdp(2.0) == pytest.approx(2 * bdp + 3 * MSS, abs=2)
    # the window grows by what is delivered up to 2 BDP, never past it
    assert bbr.cwnd(int(2 * bdp), 10 * MSS, int(bdp), delivered) == bbr.bdp(2.0)
    gains = set()
    for k in range(10):  # one phase per min RTT: 1.25 (probe), 0.75 (drain), six of 1
        bbr.on_ack(
            _sample(rate, 0.07, delivered),
            delivered,
            int(1.3 * bdp) + 3 * MSS,
            200 * MSS,
            now + 0.1 * (k + 1),
        )
        gains.add(bbr.pacing_gain)
    assert gains == {1.25, 0.75, 1.0}


def test_a_10_s_old_min_rtt_is_probed_with_four_segments_then_the_window_comes_back() -> None:
    bbr = Bbr(MSS, 10 * MSS, 0.0)
    bbr.on_ack(_sample(1e6, 0.07, 0), 70_000, 50 * MSS, 80 * MSS, 0.07)
    bbr.on_ack(None, 70_000, 50 * MSS, 80 * MSS, 10.2)
    assert bbr.state is BbrState.PROBE_RTT and bbr.cwnd(80 * MSS, MSS, 50 * MSS, 70_000) == 4 * MSS
    bbr.on_ack(
        None, 70_000, 4 * MSS, 4 * MSS, 10.3
    )  # in flight down to 4 segments: 200 ms and a round from here
    bbr.on_ack(_sample(1e6, 0.08, 70_000), 80_000, 4 * MSS, 4 * MSS, 10.6)
    assert bbr.state is BbrState.STARTUP  # the pipe was never filled
    assert bbr.cwnd(4 * MSS, MSS, 4 * MSS, 80_000) >= 80 * MSS  # the window PROBE_RTT saved
    assert (BbrState.PROBE_RTT, BbrInput.PROBE_RTT_DONE_FILLED) in BBR_TRANSITIONS


def test_bbr_is_a_congestion_option() -> None:
    assert TcpConfig(congestion="bbr").congestion == "bbr"


async def _upload(
    config: TcpConfig, size: int, drop: Callable[[int], bool], profile: LinkProfile = PROFILES["lte"]
) -> tuple[list[tuple[float, int, bool]], list[float], float]:
    """`size` bytes from a CP stack to a server stack over the `lte` model (35 ms each way, 10 Mbit/s), with
    the data segments `drop` picks (by their number) lost on the way up: the client's (time, cwnd, in recovery)
    after every packet it takes in, the times its data segments left, and when the server had every byte."""
    cp_end, net_end, link = radio_link(profile, 1)
    numbered = 0
    departures: list[float] = []

    def up(packet: bytes) -> None:
        nonlocal numbered
        segment = TcpSegment.decode(Ipv4Packet.decode(packet).payload, CP, NET)
        if segment.payload:
            numbered += 1
            departures.append(trio.current_time())
            if drop(numbered):
                return
        cp_end.send_nowait(packet)

    cp = IpStack(CP, up, rng=random.Random(1), tcp_config=config)
    net = IpStack(NET, net_end.send_nowait, rng=random.Random(2))
    windows: list[tuple[float, int, bool]] = []
    done = 0.0
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        await nursery.start(cp.run)
        await nursery.start(net.run)

        async def carry(end: Callable[[], object], stack: IpStack, watch: bool) -> None:
            while True:
                packet = await end()  # type: ignore[misc]
                stack.receive_packet(packet)
                if watch and cp._connections:
                    (handle,) = cp._connections.values()
                    c = handle.connection
                    windows.append((trio.current_time(), c.cwnd, c._in_recovery))

        nursery.start_soon(carry, cp_end.receive, cp, True)
        nursery.start_soon(carry, net_end.receive, net, False)
        listener = await net.listen_tcp(80)
        got = 0

        async def server() -> None:
            nonlocal got, done
            stream = await listener.accept()
            while chunk := await stream.receive_some():
                got += len(chunk)
            done = trio.current_time()

        nursery.start_soon(server)
        stream = await cp.open_tcp(NET, 80)
        await stream.send_all(bytes(size))
        await stream.send_eof()
        while not done:
            await trio.sleep(0.01)
        assert got == size
        nursery.cancel_scope.cancel()
    return windows, departures, done


async def test_an_early_loss_costs_bbr_no_window_where_reno_halves_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # the 30th data segment is lost, early in slow start (as seed 8 of bench_ip_goodput's lossy upload): RFC 5681
    # leaves the recovery with half the flight as its window; BBR with at least the window it had at the loss
    size = 400 * MSS
    for congestion in ("reno", "bbr"):
        windows, _, _ = await _upload(TcpConfig(congestion=congestion), size, lambda n: n == 30)
        start = next(k for k, (_, _, recovering) in enumerate(windows) if recovering)
        end = next(k for k in range(start, len(windows)) if not windows[k][2])
        before, after = windows[start - 1][1], windows[end][1]
        if congestion == "reno":
            assert after <= before // 2 + MSS
        else:
            assert after >= before
            # and it keeps a window of about twice the bandwidth-delay product (10 Mbit/s x 70 ms = 87.5 kB)
            assert max(w for _, w, _ in windows) >= 120_000


async def test_bbr_paces_its_segments(autojump_clock: trio.testing.MockClock) -> None:
    # reno sends its initial window in one instant; BBR spreads every flight at its pacing rate
    _, reno, _ = await _upload(TcpConfig(), 20 * MSS, lambda n: False)
    _, bbr, _ = await _upload(TcpConfig(congestion="bbr"), 20 * MSS, lambda n: False)
    assert len(set(reno[:10])) == 1
    assert len(set(bbr[:10])) >= 3 and bbr[9] > bbr[0]


async def test_bbr_moves_every_byte_through_a_lossy_link(autojump_clock: trio.testing.MockClock) -> None:
    # 5 % loss both ways (radio-lossy's figure): recoveries, probes and timeouts under BBR still deliver it all
    lossy = dataclasses.replace(PROFILES["lte"], loss=0.05)
    windows, departures, done = await _upload(TcpConfig(congestion="bbr"), 300 * MSS, lambda n: False, lossy)
    assert done > 0 and len(departures) > 300  # every byte arrived (_upload checks), some of them twice
    assert any(recovering for _, _, recovering in windows)


def test_a_late_timer_sends_what_the_pace_missed() -> None:
    # sans-IO: the pacing timer fires 20 ms late (a loaded event loop); the segments whose pacing times passed
    # meanwhile, up to 4 ms' worth, go at once, so that late wake-ups do not pace below the pacing rate
    config = TcpConfig(congestion="bbr")
    c = TcpConnection.active((CP, 40000), (NET, 80), iss=1000, now=0.0, config=config)
    (syn,) = c.outgoing()
    s = TcpConnection.passive(syn, (NET, 80), (CP, 40000), iss=5000, now=0.05, config=config)
    c.receive(s.outgoing()[0], 0.1)  # SRTT 0.1 s: 2.89 x 14600 bytes per 0.1 s, 3.5 ms per segment
    c.outgoing()
    c.send(bytes(20 * MSS), 1.0)
    first = c.outgoing()
    deadline = c.next_deadline()
    assert first and deadline is not None and deadline < 1.01  # the pacing timer, not the RTO
    per_segment = MSS / c._pacing_rate
    assert per_segment > 3 * PACING_QUANTUM
    c.on_timer(deadline + 0.020)
    late = c.outgoing()
    assert len(late) == 1 + int(PACING_CATCH_UP / per_segment)  # the due one and the catch-up
