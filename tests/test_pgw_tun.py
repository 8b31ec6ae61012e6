"""The packet gateway's tun mode (net/pgw.py, net/tun.py) against the Linux kernel in a network namespace the
gateway makes itself: ICMP echo, DNS on the gateway's address, ICMP host unreachable for an address with no
context, spoofed sources dropped; and the CP's own TCP (net/stack.py) against the kernel's TCP over a radio link:
handshake, 1 MiB both ways, loss on our side, simultaneous close, RST.

The namespace needs root (CI) or unprivileged user namespaces; where unshare is refused the tests skip with the
gateway's reason (and fail under CI=true, where they must run)."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address
from typing import NoReturn

import pytest
import trio

from bipsim.net.icmp import IcmpMessage, IcmpType, echo_request
from bipsim.net.ipv4 import ICMP, UDP, Ipv4Packet
from bipsim.net.pgw import GATEWAY, SERVER_ADDRESS, Pgw
from bipsim.net.radio import PROFILES, LinkEnd, LinkProfile, RadioLink, radio_link
from bipsim.net.stack import IpStack
from bipsim.net.tcp import TcpState
from bipsim.net.tun import TunUnavailable, open_tun_namespace
from bipsim.net.udp import UdpDatagram
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from tests.conftest import missing

pytestmark = pytest.mark.needs("unshare", "ip", "nsenter")

CP = IPv4Address("198.51.100.2")


def skip_without_tun(exc: TunUnavailable) -> NoReturn:
    """Skips a tun test with the reason where the machine refuses namespaces or TUN; fails under CI=true."""
    missing(f"tun mode is refused here: {exc}")


async def require_tun() -> None:
    """Makes (and closes) a TUN namespace first: where that is refused, the test skips with the reason (fails
    under CI=true) rather than failing somewhere deeper."""
    try:
        namespace = await open_tun_namespace(name="bipsimprobe")
    except TunUnavailable as exc:
        skip_without_tun(exc)
    namespace.close()


async def _start(
    nursery: trio.Nursery, profile: LinkProfile = PROFILES["ideal"], seed: int = 1
) -> tuple[Pgw, LinkEnd, RadioLink, Tracer]:
    tracer = Tracer(keep=True)
    pgw = Pgw("tun", tracer=tracer, dns_table={"ota.example": SERVER_ADDRESS}, host_resolver=False)
    try:
        await nursery.start(pgw.run)
    except TunUnavailable as exc:
        skip_without_tun(exc)
    cp, pgw_end, link = radio_link(profile, seed, tracer=tracer)
    await nursery.start(link.run)
    await pgw.attach(CP, pgw_end)
    return pgw, cp, link, tracer


@pytest.fixture
async def rig(nursery: trio.Nursery) -> AsyncIterator[tuple[Pgw, LinkEnd, RadioLink, Tracer]]:
    pgw, cp, link, tracer = await _start(nursery)
    yield pgw, cp, link, tracer


async def _receive_from(end: LinkEnd, protocol: int) -> Ipv4Packet:
    with trio.fail_after(10):
        while True:
            packet = Ipv4Packet.decode(await end.receive())
            if packet.protocol == protocol:
                return packet


async def test_the_kernel_answers_an_echo_through_the_gateway(
    rig: tuple[Pgw, LinkEnd, RadioLink, Tracer],
) -> None:
    pgw, cp, _link, _tracer = rig
    request = echo_request(0x1234, 7, b"bipsim tun")
    cp.send_nowait(Ipv4Packet(CP, SERVER_ADDRESS, ICMP, request.encode()).encode())
    reply = await _receive_from(cp, ICMP)
    message = IcmpMessage.decode(reply.payload)
    assert (reply.source, reply.destination) == (SERVER_ADDRESS, CP)
    assert message.type == IcmpType.ECHO_REPLY
    assert (message.identifier, message.sequence, message.payload) == (0x1234, 7, b"bipsim tun")
    assert pgw.counters.packets_up == 1 and pgw.counters.packets_down == 1


async def test_dns_on_the_gateway_address(rig: tuple[Pgw, LinkEnd, RadioLink, Tracer]) -> None:
    scapy_dns = pytest.importorskip("scapy.layers.dns")
    pgw, cp, _link, tracer = rig
    assert pgw.dns_servers == (GATEWAY,)
    for name, qid in (("ota.example", 0x4242), ("nowhere.example", 0x4343)):
        query = bytes(scapy_dns.DNS(id=qid, rd=1, qd=scapy_dns.DNSQR(qname=name, qtype="A")))
        datagram = UdpDatagram(40000, 53, query)
        cp.send_nowait(Ipv4Packet(CP, GATEWAY, UDP, datagram.encode(CP, GATEWAY)).encode())
        reply = await _receive_from(cp, UDP)
        answer = UdpDatagram.decode(reply.payload, reply.source, reply.destination)
        assert (reply.source, answer.source_port, answer.destination_port) == (GATEWAY, 53, 40000)
        parsed = scapy_dns.DNS(answer.payload)  # scapy is the independent decoder
        assert parsed.id == qid and parsed.qr == 1 and parsed.rd == 1
        if name == "ota.example":
            assert parsed.rcode == 0 and parsed.ancount == 1
            assert parsed.an[0].rdata == str(SERVER_ADDRESS)
        else:
            assert parsed.rcode == 3 and parsed.ancount == 0  # NXDOMAIN
    answers = [e for e in tracer.events if e.kind == Kind.DNS_ANSWER]
    assert [e.field("name") for e in answers] == ["ota.example", "nowhere.example"]


async def test_a_malformed_dns_query_gets_formerr(rig: tuple[Pgw, LinkEnd, RadioLink, Tracer]) -> None:
    _pgw, cp, _link, tracer = rig
    query = bytes.fromhex("abcd0100000100000000000003") + b"\xc0\x0c"  # a compressed question name
    datagram = UdpDatagram(40001, 53, query)
    cp.send_nowait(Ipv4Packet(CP, GATEWAY, UDP, datagram.encode(CP, GATEWAY)).encode())
    reply = await _receive_from(cp, UDP)
    answer = UdpDatagram.decode(reply.payload, reply.source, reply.destination).payload
    assert answer[:2] == b"\xab\xcd" and answer[2] & 0x80 and answer[3] & 0x0F == 1  # QR, FORMERR
    assert any(e.kind == Kind.DNS_ANSWER and e.error for e in tracer.events)


async def test_spoofed_source_is_dropped(rig: tuple[Pgw, LinkEnd, RadioLink, Tracer]) -> None:
    pgw, cp, _link, tracer = rig
    request = echo_request(1, 1, b"spoof")
    cp.send_nowait(Ipv4Packet(IPv4Address("198.51.100.9"), SERVER_ADDRESS, ICMP, request.encode()).encode())
    cp.send_nowait(b"\x60" + bytes(39))  # IPv6: not on this plane
    # an honest echo after them comes back, so the two before it were handled (and dropped)
    cp.send_nowait(Ipv4Packet(CP, SERVER_ADDRESS, ICMP, echo_request(1, 2, b"ok").encode()).encode())
    reply = IcmpMessage.decode((await _receive_from(cp, ICMP)).payload)
    assert reply.sequence == 2
    assert pgw.counters.dropped >= 2
    assert sum(1 for e in tracer.events if e.kind == Kind.APP_ERROR and e.field("where") == "pgw") == 2


PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
# IP_RECVERR: Linux reports host unreachable (a soft error, RFC 1122 4.2.3.9) to a socket that asks for errors
s.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_RECVERR", 11), 1)
s.connect((sys.argv[1], 9))
s.send(b"anyone?")
try:
    s.recv(100)
except OSError as exc:
    print(exc.errno)
"""


async def test_an_address_without_context_is_host_unreachable(
    rig: tuple[Pgw, LinkEnd, RadioLink, Tracer],
) -> None:
    import errno

    pgw, _cp, _link, _tracer = rig
    assert pgw.tun is not None
    done = await trio.run_process(
        pgw.tun.command([sys.executable, "-c", PROBE, "198.51.100.77"]), capture_stdout=True, check=True
    )
    assert done.stdout.decode().strip() == str(errno.EHOSTUNREACH)


async def test_tun_unavailable_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TunUnavailable, match="needs the unshare program"):
        await open_tun_namespace()


# the kernel's TCP peer inside the namespace: "both N" sends N bytes while reading to EOF and prints the count and
# the SHA-256 of what it read; "close" reads one byte then closes (its FIN); "abort" reads one byte then resets
SERVER = r"""
import hashlib, socket, struct, sys, threading
mode, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("203.0.113.10", port))
ls.listen(1)
print("ready", flush=True)
c, peer = ls.accept()
if mode == "both":
    def send():
        c.sendall(bytes(i % 251 for i in range(n)))
        c.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send)
    t.start()
    h, got = hashlib.sha256(), 0
    while True:
        d = c.recv(65536)
        if not d:
            break
        h.update(d)
        got += len(d)
    t.join()
    print(got, h.hexdigest(), flush=True)
elif mode == "close":
    assert c.recv(1) == b"x"
    c.shutdown(socket.SHUT_WR)
    print("eof" if c.recv(10) == b"" else "data", flush=True)
elif mode == "abort":
    assert c.recv(1) == b"x"
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    print("reset", flush=True)
c.close()
"""

PATTERN_SIZE = 1 << 20
# each way through 2 % loss: about 180 data segments and as many ACKs on each direction of the radio, so both lose
# some and both TCPs repair it. The time of such a run is mostly waiting, not work: a lost retransmission stalls the
# flow for a whole retransmission timeout (at least 1 s, RFC 6298 2.4), and 1 MiB met several of them
LOSSY_SIZE = 1 << 18


def _pattern(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


class Server:
    """The kernel peer's process, and its output lines."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""

    async def line(self) -> str:
        assert self.process.stdout is not None
        with trio.fail_after(60):
            while b"\n" not in self._buffer:
                chunk = await self.process.stdout.receive_some(4096)
                if not chunk:
                    raise AssertionError(f"the namespace's server ended early: {self._buffer!r}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()


async def _server(nursery: trio.Nursery, pgw: Pgw, mode: str, port: int, n: int = 0) -> Server:
    assert pgw.tun is not None
    process = await trio.lowlevel.open_process(
        pgw.tun.command([sys.executable, "-c", SERVER, mode, str(port), str(n)]), stdout=subprocess.PIPE
    )

    async def reap() -> None:
        # a test that fails leaves no server behind (nor, through it, the namespace)
        try:
            await trio.sleep_forever()
        finally:
            process.kill()

    nursery.start_soon(reap)
    server = Server(process)
    assert await server.line() == "ready"
    return server


async def _cp_stack(
    nursery: trio.Nursery,
    cp: LinkEnd,
    tracer: Tracer,
    *,
    hold: Callable[[bytes], bool] | None = None,
    on_receive: Callable[[bytes], None] | None = None,
) -> IpStack:
    """The CP's own stack on the bearer end `cp`; `hold(packet)` keeps an outgoing packet back (True), and
    `on_receive(packet)` sees each packet before the stack does."""

    def transmit(packet: bytes) -> None:
        if hold is None or not hold(packet):
            cp.send_nowait(packet)

    stack = IpStack(CP, transmit, tracer=tracer, rng=random.Random(4))
    await nursery.start(stack.run)

    async def reader() -> None:
        while True:
            try:
                packet = await cp.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            if on_receive is not None:
                on_receive(packet)
            stack.receive_packet(packet)

    nursery.start_soon(reader)
    return stack


async def _both_ways(stream: trio.abc.HalfCloseableStream, n: int) -> bytes:
    received = bytearray()

    async def rx() -> None:
        while chunk := await stream.receive_some(65536):
            received.extend(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(rx)
        await stream.send_all(_pattern(n))
        await stream.send_eof()
    return bytes(received)


async def test_kernel_tcp_handshake_and_1_mib_both_ways(
    nursery: trio.Nursery, rig: tuple[Pgw, LinkEnd, RadioLink, Tracer]
) -> None:
    pgw, cp, _link, tracer = rig
    server = await _server(nursery, pgw, "both", 5000, PATTERN_SIZE)
    stack = await _cp_stack(nursery, cp, tracer)
    stream = await stack.open_tcp(SERVER_ADDRESS, 5000, timeout=10)
    syns = [e for e in tracer.events if e.kind == Kind.TCP_SYN]
    # our SYN up, the kernel's SYN-ACK down
    assert [(e.src, e.field("flags")) for e in syns[:2]] == [("cp", "SYN"), ("net", "SYN|ACK")]
    assert stream.connection.state is TcpState.ESTABLISHED
    received = await _both_ways(stream, PATTERN_SIZE)
    assert received == _pattern(PATTERN_SIZE)
    assert await server.line() == f"{PATTERN_SIZE} {hashlib.sha256(_pattern(PATTERN_SIZE)).hexdigest()}"
    await stream.aclose()
    assert await server.process.wait() == 0


async def test_kernel_tcp_with_loss_on_our_radio(nursery: trio.Nursery) -> None:
    lossy = dataclasses.replace(PROFILES["lte"], loss=0.02)
    pgw, cp, link, tracer = await _start(nursery, lossy, seed=3)
    server = await _server(nursery, pgw, "both", 5002, LOSSY_SIZE)
    stack = await _cp_stack(nursery, cp, tracer)
    stream = await stack.open_tcp(SERVER_ADDRESS, 5002, timeout=30)
    received = await _both_ways(stream, LOSSY_SIZE)
    assert received == _pattern(LOSSY_SIZE)
    assert await server.line() == f"{LOSSY_SIZE} {hashlib.sha256(_pattern(LOSSY_SIZE)).hexdigest()}"
    assert link.counters["up"].lost > 0 and link.counters["down"].lost > 0
    # our stack repaired what the radio lost on the way up; the kernel what it lost on the way down
    assert any(e.kind == Kind.TCP_RETRANSMIT for e in tracer.events)
    await stream.aclose()


def _is_fin(packet: bytes) -> bool:
    header = (packet[0] & 0x0F) * 4
    return packet[9] == 6 and len(packet) >= header + 14 and bool(packet[header + 13] & 0x01)


async def test_kernel_tcp_simultaneous_close(
    nursery: trio.Nursery, rig: tuple[Pgw, LinkEnd, RadioLink, Tracer]
) -> None:
    pgw, cp, _link, tracer = rig
    server = await _server(nursery, pgw, "close", 5003)
    held: list[bytes] = []
    released = False

    def hold(packet: bytes) -> bool:
        # our FIN waits on the radio until the kernel has sent its own: the two FINs cross (RFC 9293 3.6, case 2)
        if not released and _is_fin(packet):
            held.append(packet)
            return True
        return False

    def on_receive(packet: bytes) -> None:
        nonlocal released
        if _is_fin(packet) and not released:
            assert held, "the kernel's FIN came before ours was sent"
            released = True
            for fin in held:
                cp.send_nowait(fin)

    stack = await _cp_stack(nursery, cp, tracer, hold=hold, on_receive=on_receive)
    stream = await stack.open_tcp(SERVER_ADDRESS, 5003, timeout=10)
    await stream.send_all(b"x")
    await stream.send_eof()
    with trio.fail_after(30):
        await stream.aclose()
    assert released
    assert await server.line() == "eof"
    ours = [
        e for e in tracer.events if e.kind == Kind.TCP_SEGMENT and "FIN" in e.field("flags") and e.src == "cp"
    ]
    theirs = [
        e for e in tracer.events if e.kind == Kind.TCP_SEGMENT and "FIN" in e.field("flags") and e.dst == "cp"
    ]
    assert ours and theirs
    # the kernel's FIN acknowledges nothing of ours: it was sent before our FIN reached it
    assert theirs[0].field("ack") == ours[0].field("seq")
    assert stream.connection.state in (TcpState.TIME_WAIT, TcpState.CLOSED)
    assert await server.process.wait() == 0


async def test_kernel_tcp_refused_and_reset(
    nursery: trio.Nursery, rig: tuple[Pgw, LinkEnd, RadioLink, Tracer]
) -> None:
    pgw, cp, _link, tracer = rig
    stack = await _cp_stack(nursery, cp, tracer)
    with pytest.raises(ConnectionRefusedError):
        await stack.open_tcp(SERVER_ADDRESS, 5999, timeout=10)  # nothing listens: the kernel's RST
    server = await _server(nursery, pgw, "abort", 5004)
    stream = await stack.open_tcp(SERVER_ADDRESS, 5004, timeout=10)
    await stream.send_all(b"x")
    assert await server.line() == "reset"
    with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
        while await stream.receive_some(100):
            pass
    assert any(
        e.kind == Kind.TCP_SEGMENT and "RST" in e.field("flags") and e.dst == "cp" for e in tracer.events
    )
    await server.process.wait()


async def test_the_user_namespace_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # what a user without root gets: unshare -Urn, and nsenter joining the user namespace before the network one
    # (here root takes that path too, so that CI checks it)
    monkeypatch.setattr("bipsim.net.tun.os.geteuid", lambda: 1000)
    try:
        tun = await open_tun_namespace()
    except TunUnavailable as exc:
        missing(f"a user namespace is refused here: {exc}")
    try:
        assert tun.userns_fd is not None
        assert any(part.startswith("--user=") for part in tun.command(["true"]))
        async with trio.open_nursery() as nursery:
            pgw = Pgw("tun", tun=tun)
            await nursery.start(pgw.run)
            cp, pgw_end, link = radio_link(PROFILES["ideal"], 1)
            await nursery.start(link.run)
            await pgw.attach(CP, pgw_end)
            cp.send_nowait(
                Ipv4Packet(CP, SERVER_ADDRESS, ICMP, echo_request(9, 9, b"userns").encode()).encode()
            )
            reply = IcmpMessage.decode((await _receive_from(cp, ICMP)).payload)
            assert (reply.type, reply.payload) == (IcmpType.ECHO_REPLY, b"userns")
            done = await trio.run_process(tun.command(["ip", "-br", "addr"]), capture_stdout=True)
            assert b"198.51.100.1/24" in done.stdout and b"203.0.113.10/32" in done.stdout
            nursery.cancel_scope.cancel()
    finally:
        tun.close()  # the caller's namespace: the gateway leaves it open


async def test_a_tun_closed_under_the_gateway_is_reported(
    rig: tuple[Pgw, LinkEnd, RadioLink, Tracer],
) -> None:
    pgw, cp, _link, tracer = rig
    assert pgw.tun is not None
    pgw.tun.close()
    with trio.fail_after(10):
        while not any(e.kind == Kind.APP_ERROR and e.field("error") == "tun failed" for e in tracer.events):
            await trio.sleep(0.01)
    # the gateway itself goes on: a packet for the namespace is dropped, DNS is its own
    cp.send_nowait(Ipv4Packet(CP, SERVER_ADDRESS, ICMP, echo_request(3, 3, b"gone").encode()).encode())
    query = bytes.fromhex("123401000001000000000000036f7461076578616d706c650000010001")  # ota.example A
    cp.send_nowait(Ipv4Packet(CP, GATEWAY, UDP, UdpDatagram(40002, 53, query).encode(CP, GATEWAY)).encode())
    reply = await _receive_from(cp, UDP)
    assert UdpDatagram.decode(reply.payload, reply.source, reply.destination).payload[:2] == b"\x12\x34"
