"""net/stack.py: two IpStacks joined by memory on trio's MockClock (pytest-trio's autojump_clock: RTOs and TIME-WAIT
cost no real time) (TCP through net/tcp.py's connection: connect,
transfer, close, refused, timed out, ICMP unreachable, abort_all; UDP both ways; ping; port and protocol
unreachable; fragments; promiscuous flows), bad packets dropped with an ip.dropped event, and the trace holding
every packet's exact bytes."""

from __future__ import annotations

import errno
import io
import math
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Address

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP
from scapy.layers.inet import TCP as ScapyTCP
from scapy.packet import Raw, raw

from bipsim.net.icmp import IcmpMessage, Unreachable, destination_unreachable, echo_request
from bipsim.net.ipv4 import ICMP, TCP, UDP, Ipv4Packet
from bipsim.net.stack import EPHEMERAL_PORTS, FlowRequest, IpStack, TcpListener
from bipsim.net.tcp import TcpConfig
from bipsim.net.tcp_segment import TcpFlags, TcpSegment
from bipsim.net.udp import UdpDatagram
from bipsim.trace.events import Actor, Layer, TraceEvent
from bipsim.trace.kinds import Kind
from bipsim.trace.reader import parse_lines
from bipsim.trace.recorder import Tracer

CP = IPv4Address("198.51.100.2")
NET = IPv4Address("203.0.113.10")


@dataclass
class Wire:
    """Packets from one stack to the other through a memory channel, with a hook that may drop or answer."""

    sent: list[bytes] = field(default_factory=list)
    hook: Callable[[bytes], bool] | None = None  # False: the packet is lost

    def __post_init__(self) -> None:
        self.send_channel, self.receive_channel = trio.open_memory_channel[bytes](math.inf)

    def transmit(self, packet: bytes) -> None:
        self.sent.append(packet)
        if self.hook is None or self.hook(packet):
            self.send_channel.send_nowait(packet)

    async def deliver(self, stack: IpStack) -> None:
        async for packet in self.receive_channel:
            stack.receive_packet(packet)


@dataclass
class Pair:
    cp: IpStack
    net: IpStack
    up: Wire  # cp -> net
    down: Wire  # net -> cp
    cp_trace: Tracer
    net_trace: Tracer

    def kinds(self, tracer: Tracer, kind: str) -> list[TraceEvent]:
        return [e for e in tracer.events if e.kind == kind]


FAST = TcpConfig(min_rto=0.2, initial_rto=1.0, delayed_ack=0.04)


@asynccontextmanager
async def joined(*, promiscuous: bool = False, config: TcpConfig | None = FAST) -> AsyncIterator[Pair]:
    up, down = Wire(), Wire()
    # the traces run on trio's clock, so event times are MockClock times
    cp_trace = Tracer(keep=True, clock=trio.current_time, origin=0.0)
    net_trace = Tracer(keep=True, clock=trio.current_time, origin=0.0)
    cp = IpStack(CP, up.transmit, tracer=cp_trace, rng=random.Random(1), tcp_config=config)
    net = IpStack(
        NET,
        down.transmit,
        tracer=net_trace,
        actor=Actor.NET,
        peer=Actor.CP,
        rng=random.Random(2),
        promiscuous=promiscuous,
        tcp_config=config,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(cp.run)
        await nursery.start(net.run)
        nursery.start_soon(up.deliver, net)
        nursery.start_soon(down.deliver, cp)
        yield Pair(cp, net, up, down, cp_trace, net_trace)
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------------------------------- TCP


async def test_tcp_connect_transfer_and_close_both_ways(autojump_clock: trio.testing.MockClock) -> None:
    async with joined() as pair:
        listener = await pair.net.listen_tcp(443)
        data = random.Random(5).randbytes(200_000)
        received = bytearray()

        async def server() -> None:
            stream = await listener.accept()
            while chunk := await stream.receive_some():
                received.extend(chunk)
            await stream.send_all(b"thanks")
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server)
            stream = await pair.cp.open_tcp(NET, 443)
            local = stream.connection.local
            assert local[0] == CP and local[1] in EPHEMERAL_PORTS
            await stream.send_all(data)
            await stream.send_eof()
            answer = b""
            while chunk := await stream.receive_some():
                answer += chunk
            await stream.aclose()
        assert bytes(received) == data and answer == b"thanks"

    # the trace holds every packet the CP sent, byte for byte, and the handshake as tcp.syn
    sent = [e for e in pair.cp_trace.events if e.src == Actor.CP and e.hex]
    assert [e.data for e in sent] == pair.up.sent
    syns = pair.kinds(pair.cp_trace, Kind.TCP_SYN)
    assert [e.fields["flags"] for e in syns] == ["SYN", "SYN|ACK"]  # type: ignore[index]
    assert syns[0].src == Actor.CP and syns[1].src == Actor.NET
    # scapy reads each packet as TCP with the fields we traced
    for event in pair.kinds(pair.cp_trace, Kind.TCP_SEGMENT):
        parsed = IP(event.data)
        assert parsed[ScapyTCP].seq == event.fields["seq"] and parsed[ScapyTCP].ack == event.fields["ack"]  # type: ignore[index]
        assert len(parsed[ScapyTCP].payload) == event.fields["len"]  # type: ignore[index]
    # and computes the same IP and TCP checksums for every packet either side sent
    for packet in pair.up.sent + pair.down.sent:
        parsed = IP(packet)
        del parsed.chksum
        del parsed[ScapyTCP].chksum
        assert raw(parsed) == packet
    flags = [e.fields["flags"] for e in pair.kinds(pair.cp_trace, Kind.TCP_SEGMENT)]  # type: ignore[index]
    assert sum("FIN" in f for f in flags) == 2 and not any("RST" in f for f in flags)
    assert pair.cp._connections == {} or all(  # TIME-WAIT is all that may be left
        h.connection.state.name == "TIME_WAIT" for h in pair.cp._connections.values()
    )


async def test_time_wait_ends_and_the_connection_is_forgotten(autojump_clock: trio.testing.MockClock) -> None:
    async with joined() as pair:
        listener = await pair.net.listen_tcp(80)
        async with trio.open_nursery() as nursery:

            async def server() -> None:
                stream = await listener.accept()
                assert await stream.receive_some() == b""
                await stream.aclose()

            nursery.start_soon(server)
            stream = await pair.cp.open_tcp(NET, 80)
            await stream.aclose()
        assert len(pair.cp._connections) == 1  # the active closer waits in TIME-WAIT (RFC 9293 3.6)
        await trio.sleep(2 * FAST.msl + 1)
        assert pair.cp._connections == {} and pair.net._connections == {}


async def test_connect_to_a_closed_port_is_refused_by_rst(autojump_clock: trio.testing.MockClock) -> None:
    async with joined() as pair:
        with pytest.raises(ConnectionRefusedError):
            await pair.cp.open_tcp(NET, 81)
        rst = pair.kinds(pair.net_trace, Kind.TCP_SEGMENT)[-1]
        assert rst.src == Actor.NET and rst.fields["flags"] == "RST|ACK"  # type: ignore[index]
        syn = pair.kinds(pair.net_trace, Kind.TCP_SYN)[0]
        assert rst.fields["ack"] == (syn.fields["seq"] + 1) & 0xFFFFFFFF  # type: ignore[index]
        assert pair.cp._connections == {}


async def test_connect_times_out_when_the_syns_run_out(autojump_clock: trio.testing.MockClock) -> None:
    async with joined() as pair:
        pair.up.hook = lambda packet: False  # the radio takes nothing through
        start = trio.current_time()
        with pytest.raises(TimeoutError):
            await pair.cp.open_tcp(NET, 443)
        retransmits = pair.kinds(pair.cp_trace, Kind.TCP_RETRANSMIT)
        assert len(retransmits) == FAST.syn_retries
        # RFC 6298 5.5: the timer backs off, each wait twice the one before
        gaps = [
            b.t - a.t
            for a, b in zip(
                [pair.kinds(pair.cp_trace, Kind.TCP_SYN)[0], *retransmits[:-1]], retransmits, strict=True
            )
        ]
        assert gaps == pytest.approx([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
        assert trio.current_time() - start >= sum(gaps)
        assert pair.cp._connections == {}


async def test_connect_with_a_timeout_gives_up_without_rst(autojump_clock: trio.testing.MockClock) -> None:
    async with joined() as pair:
        pair.up.hook = lambda packet: False
        with pytest.raises(TimeoutError):
            await pair.cp.open_tcp(NET, 443, timeout=2.5)
        assert all(Ipv4Packet.decode(p).protocol == TCP for p in pair.up.sent)
        assert not any(
            TcpSegment.decode(Ipv4Packet.decode(p).payload, CP, NET).flags & TcpFlags.RST
            for p in pair.up.sent
        )
        assert pair.cp._connections == {}


async def test_icmp_network_unreachable_fails_the_connect(autojump_clock: trio.testing.MockClock) -> None:
    async with joined() as pair:

        def unreachable(packet: bytes) -> bool:
            ip = Ipv4Packet.decode(packet)
            message = destination_unreachable(Unreachable.NETWORK, packet)
            answer = Ipv4Packet(IPv4Address("198.51.100.1"), ip.source, ICMP, message.encode()).encode()
            pair.down.send_channel.send_nowait(answer)
            return False

        pair.up.hook = unreachable
        with pytest.raises(OSError) as caught:
            await pair.cp.open_tcp(IPv4Address("192.0.2.1"), 443)
        assert caught.value.errno == errno.ENETUNREACH
        assert pair.cp._connections == {}
        icmp = pair.kinds(pair.cp_trace, Kind.ICMP_MESSAGE)
        assert icmp[0].src == Actor.NET and icmp[0].fields["type"] == 3  # type: ignore[index]


async def test_abort_all_breaks_streams_and_sends_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with joined() as pair:
        listener = await pair.net.listen_tcp(443)
        async with trio.open_nursery() as nursery:
            accepted: list[object] = []

            async def server() -> None:
                accepted.append(await listener.accept())

            nursery.start_soon(server)
            stream = await pair.cp.open_tcp(NET, 443)
        socket = await pair.cp.open_udp()
        cp_listener = await pair.cp.listen_tcp(7000)
        before = len(pair.up.sent)
        received = trio.Event()
        failure: list[BaseException] = []

        async def reader() -> None:
            try:
                await stream.receive_some()
            except trio.BrokenResourceError as exc:
                failure.append(exc)
            received.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            pair.cp.abort_all("context deactivated")
        assert received.is_set() and "link dropped: context deactivated" in str(failure[0])
        with pytest.raises(trio.BrokenResourceError, match="link dropped"):
            await stream.send_all(b"more")
        with pytest.raises(trio.BrokenResourceError, match="link dropped"):
            await socket.receive_from()
        with pytest.raises(trio.BrokenResourceError, match="link dropped"):
            await cp_listener.accept()
        with pytest.raises(trio.BrokenResourceError, match="link dropped"):
            await pair.cp.open_tcp(NET, 443)
        assert len(pair.up.sent) == before, "no RST: the radio is gone"
        assert pair.cp._connections == {}
        assert stream.connection.state.name == "CLOSED"
        # a packet from the network now is dropped with its reason, not raised
        pair.cp.receive_packet(Ipv4Packet(NET, CP, UDP, UdpDatagram(1, 2, b"x").encode(NET, CP)).encode())
        assert "link dropped" in pair.kinds(pair.cp_trace, Kind.IP_DROPPED)[-1].fields["reason"]  # type: ignore[index]


async def test_listen_backlog_bounds_half_open_connections(autojump_clock: trio.testing.MockClock) -> None:
    async with joined() as pair:
        pair.net.backlog = 2
        listener = await pair.net.listen_tcp(443)
        pair.down.hook = lambda packet: False  # the SYN-ACKs never arrive: the connections stay half open
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(partial(pair.cp.open_tcp, NET, 443, timeout=0.5))
            await trio.testing.wait_all_tasks_blocked()
            assert listener.embryonic == 2
            dropped = pair.kinds(pair.net_trace, Kind.IP_DROPPED)
            assert [e.fields["reason"] for e in dropped] == ["listen queue full"]  # type: ignore[index]
            nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------------------------------- UDP


async def test_udp_both_ways(autojump_clock: trio.testing.MockClock) -> None:
    async with joined() as pair:
        server = await pair.net.open_udp(5000)
        client = await pair.cp.open_udp()
        await client.send_to(b"question", (NET, 5000))
        data, source = await server.receive_from()
        assert data == b"question" and source == (CP, client.port) and client.port in EPHEMERAL_PORTS
        await server.send_to(b"answer", source)
        assert await client.receive_from() == (b"answer", (NET, 5000))
        events = pair.kinds(pair.cp_trace, Kind.UDP_DATAGRAM)
        assert [(e.src, e.fields["len"]) for e in events] == [(Actor.CP, 8), (Actor.NET, 6)]  # type: ignore[index]
        assert events[0].data == pair.up.sent[0]
        with pytest.raises(OSError):
            await pair.net.open_udp(5000)


async def test_udp_to_a_closed_port_gets_port_unreachable(autojump_clock: trio.testing.MockClock) -> None:
    async with joined() as pair:
        client = await pair.cp.open_udp()
        await client.send_to(b"anyone?", (NET, 9))
        await trio.testing.wait_all_tasks_blocked()
        (icmp,) = pair.kinds(pair.cp_trace, Kind.ICMP_MESSAGE)
        assert icmp.src == Actor.NET and (icmp.fields["type"], icmp.fields["code"]) == (3, 3)  # type: ignore[index]
        quoted = IcmpMessage.decode(Ipv4Packet.decode(icmp.data).payload).quoted()
        assert quoted is not None and quoted.payload[:2] == client.port.to_bytes(2, "big")


async def test_the_udp_receive_queue_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    async with joined() as pair:
        pair.net.udp_queue = 4
        server = await pair.net.open_udp(5000)
        client = await pair.cp.open_udp()
        for i in range(6):
            await client.send_to(bytes([i]), (NET, 5000))
        await trio.testing.wait_all_tasks_blocked()
        assert server.dropped == 2
        assert len(pair.kinds(pair.net_trace, Kind.IP_DROPPED)) == 2
        assert [(await server.receive_from())[0] for _ in range(4)] == [b"\x00", b"\x01", b"\x02", b"\x03"]


async def test_a_large_datagram_travels_in_fragments(autojump_clock: trio.testing.MockClock) -> None:
    async with joined() as pair:
        server = await pair.net.open_udp(5000)
        client = await pair.cp.open_udp()
        payload = random.Random(3).randbytes(4000)
        await client.send_to(payload, (NET, 5000))
        assert (await server.receive_from())[0] == payload
        fragments = pair.kinds(pair.cp_trace, Kind.IP_FRAGMENT)
        assert len(fragments) == 3 and [e.data for e in fragments] == pair.up.sent
        received = pair.kinds(pair.net_trace, Kind.IP_FRAGMENT)
        assert [e.fields.get("complete", False) for e in received] == [False, False, True]  # type: ignore[union-attr]


async def test_a_datagram_missing_a_fragment_expires_with_time_exceeded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with joined() as pair:
        await pair.net.open_udp(5000)
        client = await pair.cp.open_udp()
        count = 0

        def lose_second(packet: bytes) -> bool:
            nonlocal count
            count += 1
            return count != 2

        pair.up.hook = lose_second
        await client.send_to(bytes(4000), (NET, 5000))
        await trio.sleep(31)
        icmp = pair.kinds(pair.cp_trace, Kind.ICMP_MESSAGE)
        assert [(e.fields["type"], e.fields["code"]) for e in icmp] == [(11, 1)]  # type: ignore[index]
        assert len(pair.net.reassembler) == 0


# ------------------------------------------------------------------------------------------------------ ICMP


async def test_ping(autojump_clock: trio.testing.MockClock) -> None:
    async with joined() as pair:
        rtt = await pair.cp.ping(NET, data=b"hello")
        assert rtt >= 0
        kinds = [(e.src, e.fields["type"]) for e in pair.kinds(pair.cp_trace, Kind.ICMP_MESSAGE)]  # type: ignore[index]
        assert kinds == [(Actor.CP, 8), (Actor.NET, 0)]
        pair.up.hook = lambda packet: False
        with pytest.raises(TimeoutError):
            await pair.cp.ping(NET, timeout=1.0)


async def test_an_unknown_protocol_gets_protocol_unreachable(autojump_clock: trio.testing.MockClock) -> None:
    async with joined() as pair:
        pair.up.send_channel.send_nowait(Ipv4Packet(CP, NET, 99, b"?").encode())
        await trio.testing.wait_all_tasks_blocked()
        (packet,) = pair.kinds(pair.net_trace, Kind.IP_PACKET)
        (icmp,) = pair.kinds(pair.net_trace, Kind.ICMP_MESSAGE)
        assert packet.fields["protocol"] == 99 and icmp.fields["code"] == Unreachable.PROTOCOL  # type: ignore[index]


# --------------------------------------------------------------------------------------------- promiscuous


async def test_promiscuous_flows_are_offered_accepted_and_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with joined(promiscuous=True) as pair:
        offered: list[FlowRequest] = []
        pair.net.on_flow = offered.append
        async with trio.open_nursery() as nursery:
            result: list[object] = []

            async def connect() -> None:
                stream = await pair.cp.open_tcp(IPv4Address("192.0.2.7"), 8443)
                await stream.send_all(b"hi")
                result.append(stream)

            nursery.start_soon(connect)
            await trio.testing.wait_all_tasks_blocked()
            (request,) = offered
            assert request.protocol == TCP and request.destination == (IPv4Address("192.0.2.7"), 8443)
            assert request.source[0] == CP
            stream = await pair.net.accept_flow(request)
            assert stream.connection.local == (IPv4Address("192.0.2.7"), 8443)
            assert await stream.receive_some() == b"hi"
        # a refused flow: RST to the client
        async with trio.open_nursery() as nursery:
            errors: list[BaseException] = []

            async def refused() -> None:
                try:
                    await pair.cp.open_tcp(IPv4Address("192.0.2.8"), 25)
                except ConnectionRefusedError as exc:
                    errors.append(exc)

            nursery.start_soon(refused)
            await trio.testing.wait_all_tasks_blocked()
            pair.net.refuse_flow(offered[-1])
        assert len(errors) == 1
        with pytest.raises(ValueError):
            pair.net.refuse_flow(offered[-1])  # answered once
        # UDP: the first datagrams wait in the flow, the socket answers as the destination
        client = await pair.cp.open_udp()
        await client.send_to(b"q1", (IPv4Address("192.0.2.53"), 53))
        await client.send_to(b"q2", (IPv4Address("192.0.2.53"), 53))
        await trio.testing.wait_all_tasks_blocked()
        udp_request = offered[-1]
        assert udp_request.protocol == UDP and len(offered) == 3
        flow = pair.net.accept_udp_flow(udp_request)
        assert [(await flow.receive_from())[0] for _ in range(2)] == [b"q1", b"q2"]
        await flow.send(b"a1")
        assert await client.receive_from() == (b"a1", (IPv4Address("192.0.2.53"), 53))
        # a refused UDP flow gets ICMP port unreachable
        await client.send_to(b"x", (IPv4Address("192.0.2.54"), 54))
        await trio.testing.wait_all_tasks_blocked()
        pair.net.refuse_flow(offered[-1])
        await trio.testing.wait_all_tasks_blocked()
        assert pair.kinds(pair.cp_trace, Kind.ICMP_MESSAGE)[-1].fields["code"] == Unreachable.PORT  # type: ignore[index]


# ------------------------------------------------------------------------------------------------ bad input


def _fixed_clock() -> float:
    return 0.0


def _stack() -> tuple[IpStack, list[bytes], Tracer]:
    sent: list[bytes] = []
    tracer = Tracer(keep=True)
    return IpStack(CP, sent.append, tracer=tracer, rng=random.Random(0), clock=_fixed_clock), sent, tracer


def _tcp_packet(flags: str, *, sport: int = 4000, dport: int = 443, seq: int = 1000) -> bytes:
    return raw(IP(src=str(NET), dst=str(CP)) / ScapyTCP(sport=sport, dport=dport, flags=flags, seq=seq))


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"", "truncated"),
        (b"\x45\x00\x00\x1f" + bytes(27), "checksum"),
        (raw(IP(src=str(NET), dst=str(CP), version=6)), "version"),
        (raw(IP(src=str(NET), dst="198.51.100.3") / Raw(b"x")), "not addressed"),
        (raw(IP(src="224.0.0.1", dst=str(CP), proto=17) / Raw(bytes(8))), "invalid source"),
        (raw(IP(src="255.255.255.255", dst=str(CP), proto=17) / Raw(bytes(8))), "invalid source"),
        (raw(IP(src=str(NET), dst=str(CP), proto=6) / Raw(b"short")), "TCP segment of 5 bytes"),
        (_tcp_packet("SF"), "impossible TCP flags"),
        (_tcp_packet("SR"), "impossible TCP flags"),
        (_tcp_packet("S")[:36] + b"\x00\x00" + _tcp_packet("S")[38:], "TCP checksum"),
        (
            raw(IP(src=str(NET), dst=str(CP), proto=17) / Raw(b"\x00\x01\x00\x02\x00\x30\x00\x00")),
            "UDP length",
        ),
        (
            raw(IP(src=str(NET), dst=str(CP), proto=1) / Raw(b"\x08\x00\x00\x00\x00\x00\x00\x01")),
            "ICMP checksum",
        ),
    ],
)
def test_bad_packets_are_dropped_with_a_trace_event(packet: bytes, reason: str) -> None:
    stack, sent, tracer = _stack()
    stack.receive_packet(packet)
    (event,) = [e for e in tracer.events if e.kind == Kind.IP_DROPPED]
    assert reason in event.fields["reason"] and event.error  # type: ignore[index]
    assert event.data == packet and event.src == Actor.NET
    assert sent == [], "nothing is answered to a packet that is not one"


def test_segments_to_no_connection_are_answered_by_rst_as_rfc_9293_says() -> None:
    stack, sent, _ = _stack()
    stack.receive_packet(_tcp_packet("A", seq=5))
    stack.receive_packet(_tcp_packet("R"))  # no answer to an RST
    stack.receive_packet(_tcp_packet("S", seq=77))
    answers = [IP(p)[ScapyTCP] for p in sent]
    # an ACK: <SEQ=SEG.ACK><CTL=RST>; a SYN: <SEQ=0><ACK=SEG.SEQ+1><CTL=RST,ACK>
    assert [(str(a.flags), a.seq) for a in answers] == [("R", 0), ("RA", 0)]
    assert answers[1].ack == 78


def test_an_echo_request_is_answered_without_a_running_loop() -> None:
    stack, sent, _ = _stack()
    request = echo_request(7, 9, b"data").encode()
    stack.receive_packet(Ipv4Packet(NET, CP, ICMP, request).encode())
    (reply,) = sent
    message = IcmpMessage.decode(Ipv4Packet.decode(reply).payload)
    assert (message.type, message.identifier, message.sequence, message.payload) == (0, 7, 9, b"data")


def test_no_error_is_sent_about_an_icmp_error() -> None:
    stack, sent, _ = _stack()
    error = destination_unreachable(Unreachable.PORT, Ipv4Packet(CP, NET, UDP, bytes(8)).encode())
    stack.receive_packet(Ipv4Packet(NET, CP, ICMP, error.encode()).encode())
    assert sent == []


@pytest.mark.parametrize("seed", range(3))
def test_random_garbage_never_raises(seed: int) -> None:
    rnd = random.Random(seed)
    stack, _, tracer = _stack()
    listener_key = (CP, 443)
    for _ in range(300):
        kind = rnd.randrange(3)
        if kind == 0:
            data = rnd.randbytes(rnd.randrange(60))
        else:
            proto = (6, 17, 1)[rnd.randrange(3)]
            data = Ipv4Packet(NET, CP, proto, rnd.randbytes(rnd.randrange(40))).encode()
        stack.receive_packet(data)
    assert not any("stack error" in str(e.fields) for e in tracer.events), listener_key


async def test_an_icmp_error_about_an_established_connection_leaves_it_to_tcp(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with joined() as pair:
        listener = await pair.net.listen_tcp(443)
        async with trio.open_nursery() as nursery:
            streams: list[object] = []

            async def server() -> None:
                streams.append(await listener.accept())

            nursery.start_soon(server)
            stream = await pair.cp.open_tcp(NET, 443)
        # RFC 1122 4.2.3.9: a soft error; the connection goes on
        message = destination_unreachable(Unreachable.HOST, pair.up.sent[-1])
        pair.down.send_channel.send_nowait(Ipv4Packet(NET, CP, ICMP, message.encode()).encode())
        await trio.testing.wait_all_tasks_blocked()
        assert stream.connection.state.name == "ESTABLISHED"
        await stream.send_all(b"still here")
        assert await streams[0].receive_some() == b"still here"  # type: ignore[attr-defined]


async def test_the_promiscuous_stack_answers_pings_to_any_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with joined(promiscuous=True) as pair:
        await pair.cp.ping(IPv4Address("192.0.2.99"))
        reply = pair.kinds(pair.net_trace, Kind.ICMP_MESSAGE)[-1]
        assert reply.src == Actor.NET and reply.fields["src"] == "192.0.2.99"  # type: ignore[index]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from([443, 444]),
            st.integers(0, 0xFF),
            st.integers(0, 0xFFFFFFFF),
            st.integers(0, 0xFFFFFFFF),
            st.integers(0, 0xFFFF),
            st.binary(max_size=40),
        ),
        max_size=30,
    )
)
def test_arbitrary_segments_through_the_stack_never_raise(
    segments: list[tuple[int, int, int, int, int, bytes]],
) -> None:
    """Valid packets carrying arbitrary TCP segments (any flags, numbers, windows) to a listening port and a closed
    one: each is traced, and nothing escapes receive_packet (the stack's last guard would say "stack error")."""
    stack, _, tracer = _stack()
    stack._listeners[(CP, 443)] = TcpListener(stack, (CP, 443), 4)
    for dport, flags, seq, ack, window, payload in segments:
        segment = TcpSegment(4000, dport, seq, ack, TcpFlags(flags), window, payload)
        before = len(tracer.events)
        stack.receive_packet(Ipv4Packet(NET, CP, TCP, segment.encode(NET, CP)).encode())
        assert len(tracer.events) > before
    assert not any("stack error" in str(e.fields) for e in tracer.events)


def test_icmp_errors_are_rate_limited() -> None:
    now = [0.0]
    sent: list[bytes] = []
    stack = IpStack(CP, sent.append, rng=random.Random(0), clock=lambda: now[0])
    flood = Ipv4Packet(NET, CP, UDP, UdpDatagram(4000, 9, b"x").encode(NET, CP)).encode()
    for _ in range(300):
        stack.receive_packet(flood)
    assert len(sent) == stack.icmp_errors_per_second == 100
    assert stack.counters["icmp_limited"] == 200
    now[0] = 0.5  # the bucket refills at the rate: half a second, half as many
    for _ in range(300):
        stack.receive_packet(flood)
    assert len(sent) == 150
    # echo replies are not errors and are not limited
    request = Ipv4Packet(NET, CP, ICMP, echo_request(1, 1).encode()).encode()
    stack.receive_packet(request)
    assert len(sent) == 151


async def test_a_flow_nobody_answers_is_forgotten(autojump_clock: trio.testing.MockClock) -> None:
    async with joined(promiscuous=True) as pair:
        offered: list[FlowRequest] = []
        pair.net.on_flow = offered.append
        client = await pair.cp.open_udp()
        await client.send_to(b"q", (IPv4Address("192.0.2.53"), 53))
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(61)
        with pytest.raises(ValueError):
            pair.net.accept_udp_flow(offered[0])
        await client.send_to(b"q", (IPv4Address("192.0.2.53"), 53))
        await trio.testing.wait_all_tasks_blocked()
        assert len(offered) == 2 and offered[1] == offered[0]  # offered afresh


async def test_udp_socket_errors_are_the_socket_api_s(autojump_clock: trio.testing.MockClock) -> None:
    async with joined() as pair:
        socket = await pair.cp.open_udp(6000)
        with pytest.raises(OSError) as too_big:
            await socket.send_to(bytes(70_000), (NET, 9))
        assert too_big.value.errno == errno.EMSGSIZE
        with pytest.raises(OSError, match="out of range"):
            await socket.send_to(b"x", (NET, 0))
        with pytest.raises(OSError, match="without a peer"):
            await socket.send(b"x")
        assert pair.up.sent == []
        await socket.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await socket.receive_from()
        with pytest.raises(trio.ClosedResourceError):
            await socket.send_to(b"x", (NET, 9))
        again = await pair.cp.open_udp(6000)  # the port is free again after close
        assert again.port == 6000


def test_the_stack_s_events_are_json_lines_the_trace_reader_takes() -> None:
    sink = io.StringIO()
    sent: list[bytes] = []
    stack = IpStack(CP, sent.append, tracer=Tracer(sink), rng=random.Random(0), clock=_fixed_clock)
    stack.receive_packet(Ipv4Packet(NET, CP, ICMP, echo_request(1, 2, b"x").encode()).encode())
    stack.receive_packet(Ipv4Packet(NET, CP, UDP, UdpDatagram(4000, 9, b"x").encode(NET, CP)).encode())
    stack.receive_packet(_tcp_packet("S"))
    stack.receive_packet(b"\x45junk")
    events = list(parse_lines(sink.getvalue().splitlines(), "stack.jsonl"))
    assert [e.kind for e in events] == [
        Kind.ICMP_MESSAGE,
        Kind.ICMP_MESSAGE,
        Kind.UDP_DATAGRAM,
        Kind.ICMP_MESSAGE,
        Kind.TCP_SYN,
        Kind.TCP_SEGMENT,
        Kind.IP_DROPPED,
    ]
    assert [e.data for e in events if e.src == Actor.CP] == sent
    assert events[1].fields == {"src": str(CP), "dst": str(NET), "type": 0, "code": 0, "id": 1, "seq": 2}
    assert events[3].fields["code"] == 3 and events[5].fields["flags"] == "RST|ACK"  # type: ignore[index]
    assert events[-1].error and events[-1].layer == "ip"


async def test_icmp_unreachable_quoting_another_sequence_number_is_ignored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # RFC 5927 4.1: an ICMP error whose quoted TCP sequence number is not one we sent (a blind attacker guessing
    # the ports) is dropped with a trace event; the connect goes on and succeeds
    async with joined() as pair:
        forged: list[bytes] = []

        def blind(packet: bytes) -> bool:
            ip = Ipv4Packet.decode(packet)
            if ip.protocol == TCP and not forged:
                wrong = bytearray(packet)
                seq_at = 20 + 4  # no IP options: the TCP header's sequence number
                wrong[seq_at : seq_at + 4] = (
                    (int.from_bytes(packet[seq_at : seq_at + 4], "big") + 1000) & 0xFFFFFFFF
                ).to_bytes(4, "big")
                message = destination_unreachable(Unreachable.NETWORK, bytes(wrong))
                answer = Ipv4Packet(IPv4Address("198.51.100.1"), ip.source, ICMP, message.encode()).encode()
                forged.append(answer)
                pair.down.send_channel.send_nowait(answer)
            return True

        pair.up.hook = blind
        await pair.net.listen_tcp(443)
        stream = await pair.cp.open_tcp(NET, 443)
        assert forged
        await stream.aclose()
        dropped = [e for e in pair.kinds(pair.cp_trace, Kind.IP_DROPPED) if "outside the window" in e.summary]
        assert len(dropped) == 1 and dropped[0].error


async def test_a_segment_tcp_refuses_is_traced_with_its_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # bad input from the peer gets TCP's own answer and a trace event: here an ACK of data never sent (RFC 9293
    # 3.10.7.4: answered with an ACK and dropped)
    async with joined() as pair:
        await pair.net.listen_tcp(443)
        stream = await pair.cp.open_tcp(NET, 443)
        (handle,) = pair.cp._connections.values()
        conn = handle.connection
        bogus = TcpSegment(
            443,
            conn.local[1],
            conn.rcv_nxt & 0xFFFFFFFF,
            (conn.snd_max + 100_000) & 0xFFFFFFFF,
            TcpFlags.ACK,
            65535,
        )
        pair.down.send_channel.send_nowait(Ipv4Packet(NET, CP, TCP, bogus.encode(NET, CP)).encode())
        await trio.testing.wait_all_tasks_blocked()
        refused = [e for e in pair.kinds(pair.cp_trace, Kind.IP_DROPPED) if e.layer is Layer.TCP]
        assert len(refused) == 1 and refused[0].fields["answered"] == "ack"  # type: ignore[index]
        assert pair.cp.counters["tcp_rejected"] == 1
        await stream.aclose()
