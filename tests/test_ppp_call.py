"""A host dials a PPP data call (3GPP TS 27.007 10.2.1.1 ATD*99#, 10.1.12 +CGDATA) through the CP's AT server and
fetches a page through the packet gateway (docs/protocols.md, "Data calls").

The host's PPP is written here from RFC 1661/1662/1334/1994/1332/1877 (its own bitwise FCS, its own escaping, scapy's
PPP layers to build and read the control packets): an independent peer of net/ppp.py. Its IP stack is the
project's IpStack at the address IPCP gave it: what is under test is the PPP and the routing, not TCP.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import trio
import trio.testing
from scapy.layers.ppp import PPP

from bipsim.cp.bearer_own_stack import PacketPlane
from bipsim.cp.card_driver import CardDriver
from bipsim.cp.command_sets import build_command_sets
from bipsim.cp.commands import ModemCommands
from bipsim.cp.data_mode import DataCommands, EscapeDetector, parse_dial
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork
from bipsim.link.at_server import AtServer
from bipsim.net.ppp import PppConfig
from bipsim.net.stack import IpStack
from bipsim.trace.events import TraceEvent
from bipsim.trace.pcap import export_pcap, ppp_pcap_path
from bipsim.trace.recorder import Tracer

# --- the host's PPP, from the RFCs ------------------------------------------------------------------------------


def fcs16_bitwise(data: bytes) -> int:
    """RFC 1662 C.2's FCS computed bit by bit (not the table of net/hdlc.py)."""
    fcs = 0xFFFF
    for byte in data:
        fcs ^= byte
        for _ in range(8):
            fcs = (fcs >> 1) ^ 0x8408 if fcs & 1 else fcs >> 1
    return fcs


def host_frame(protocol: int, payload: bytes, *, fcs_ok: bool = True) -> bytes:
    body = b"\xff\x03" + struct.pack("!H", protocol) + payload
    fcs = fcs16_bitwise(body) ^ 0xFFFF
    if not fcs_ok:
        fcs ^= 0x0101
    body += struct.pack("<H", fcs)
    out = bytearray(b"\x7e")
    for byte in body:
        if byte < 0x20 or byte in (0x7E, 0x7D):  # the host escapes every control character: ACCM 0xFFFFFFFF
            out += bytes((0x7D, byte ^ 0x20))
        else:
            out.append(byte)
    return bytes(out + b"\x7e")


def control(code: int, ident: int, data: bytes) -> bytes:
    return struct.pack("!BBH", code, ident, 4 + len(data)) + data


def options(items: list[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes((kind, 2 + len(value))) + value for kind, value in items)


def read_options(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        out.append((data[0], data[2 : data[1]]))
        data = data[data[1] :]
    return out


@dataclass
class HostPpp:
    """The dialling host: takes whatever the modem sends, answers as a PPP client would."""

    user: str = ""
    password: str = ""
    prefer_pap: bool = False
    prefer_chap: bool = False  # naks the modem's PAP, suggesting CHAP-MD5 (RFC 1661 6.2)
    refuse_auth: bool = False  # rejects the Authentication-Protocol option (a host without secrets)
    sent: list[tuple[int, bytes]] = field(default_factory=list)
    magic: int = 0x1234ABCD
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    address: IPv4Address | None = None
    dns: list[IPv4Address] = field(default_factory=list)
    ip_packets: list[bytes] = field(default_factory=list)
    out: bytearray = field(default_factory=bytearray)
    lcp_acked_ours: bool = False
    lcp_acked_theirs: bool = False
    auth: str = "none"
    ipcp_open: bool = False
    ipcp_acked_theirs: bool = False
    terminated: bool = False
    buffer: bytearray = field(default_factory=bytearray)
    ident: int = 0
    escaped_ok: bool = True

    def send(self, protocol: int, payload: bytes) -> None:
        self.sent.append((protocol, payload))
        self.out += host_frame(protocol, payload)

    def start(self) -> None:
        self.ident += 1
        self._lcp_req = options([(5, struct.pack("!I", self.magic)), (2, b"\x00\x00\x00\x00")])
        self.send(0xC021, control(1, self.ident, self._lcp_req))

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            start = self.buffer.find(b"\x7e")
            if start < 0:
                return
            end = self.buffer.find(b"\x7e", start + 1)
            if end < 0:
                del self.buffer[:start]
                return
            raw = bytes(self.buffer[start + 1 : end])
            del self.buffer[:end]
            if not raw:
                continue
            body = bytearray()
            it = iter(raw)
            for byte in it:
                body.append(next(it) ^ 0x20 if byte == 0x7D else byte)
            assert fcs16_bitwise(bytes(body)) == 0xF0B8, f"bad FCS from the modem: {raw.hex()}"
            self._frame(bytes(body[:-2]))

    def _frame(self, frame: bytes) -> None:
        if frame[:2] == b"\xff\x03":
            frame = frame[2:]
        decoded = PPP(frame)  # scapy reads the protocol field, compressed or not
        protocol = decoded.proto
        payload = bytes(decoded.payload)
        self.frames.append((protocol, payload))
        if protocol == 0x0021:
            self.ip_packets.append(payload)
            return
        code, ident, length = struct.unpack("!BBH", payload[:4])
        data = payload[4:length]
        if protocol == 0xC021:
            self._lcp(code, ident, data)
        elif protocol == 0xC023 and code == 2:
            self._network()
        elif protocol == 0xC223 and code == 1:
            size = data[0]
            challenge = data[1 : 1 + size]
            value = hashlib.md5(bytes((ident,)) + self.password.encode() + challenge).digest()
            self.send(0xC223, control(2, ident, bytes((16,)) + value + self.user.encode()))
        elif protocol == 0xC223 and code == 3:
            self._network()
        elif protocol == 0x8021:
            self._ipcp(code, ident, data)

    def _lcp(self, code: int, ident: int, data: bytes) -> None:
        if code == 1:
            opts = read_options(data)
            auth = next((value for kind, value in opts if kind == 3), None)
            if auth is not None and self.prefer_pap and auth[:2] != b"\xc0\x23":
                self.send(0xC021, control(3, ident, options([(3, b"\xc0\x23")])))
                return
            if auth is not None and self.refuse_auth:
                self.send(0xC021, control(4, ident, options([(3, auth)])))
                return
            if auth is not None and self.prefer_chap and auth[:2] != b"\xc2\x23":
                self.send(0xC021, control(3, ident, options([(3, b"\xc2\x23\x05")])))
                return
            if auth is not None:
                self.auth = "pap" if auth[:2] == b"\xc0\x23" else "chap"
            self.send(0xC021, control(2, ident, data))
            self.lcp_acked_theirs = True
        elif code == 2:
            self.lcp_acked_ours = True
        elif code == 5:
            self.send(0xC021, control(6, ident, b""))
            self.terminated = True
        elif code == 9:
            self.send(0xC021, control(10, ident, struct.pack("!I", self.magic) + data[4:]))
        if self.lcp_acked_ours and self.lcp_acked_theirs and code in (1, 2):
            if self.auth == "pap":
                body = bytes((len(self.user),)) + self.user.encode()
                body += bytes((len(self.password),)) + self.password.encode()
                self.send(0xC023, control(1, 1, body))
            elif self.auth == "none":
                self._network()

    def _network(self) -> None:
        self.ident += 1
        self.send(0xC021 - 0xC021 + 0x8021, control(1, self.ident, self._ipcp_options()))

    def _ipcp_options(self) -> bytes:
        address = (self.address or IPv4Address(0)).packed
        dns1 = (self.dns[0] if self.dns else IPv4Address(0)).packed
        dns2 = (self.dns[1] if len(self.dns) > 1 else IPv4Address(0)).packed
        return options([(3, address), (129, dns1), (131, dns2)])

    def _ipcp(self, code: int, ident: int, data: bytes) -> None:
        if code == 1:
            self.send(0x8021, control(2, ident, data))
            self.ipcp_acked_theirs = True
        elif code == 3:  # Nak: the values the modem gives us
            got = dict(read_options(data))
            self.address = IPv4Address(got.get(3, (self.address or IPv4Address(0)).packed))
            self.dns = [IPv4Address(got[k]) for k in (129, 131) if k in got]
            self.ident += 1
            self.send(0x8021, control(1, self.ident, self._ipcp_options()))
        elif code == 2:
            self.ipcp_open = True

    def take(self) -> bytes:
        out, self.out = bytes(self.out), bytearray()
        return out


# --- the modem side -----------------------------------------------------------------------------------------------


class ListTracer(Tracer):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[TraceEvent] = []

    def emit(self, *args: object, **kwargs: object) -> TraceEvent:  # type: ignore[override]
        event = super().emit(*args, **kwargs)  # type: ignore[arg-type]
        self.events.append(event)
        return event


@dataclass
class Rig:
    host: trio.abc.Stream
    server: AtServer
    core: ModemCommands
    network: CellularNetwork
    data: DataCommands
    tracer: ListTracer
    buffer: bytearray = field(default_factory=bytearray)

    async def at(self, line: str, final: tuple[str, ...] = ("OK", "ERROR", "CONNECT", "NO CARRIER")) -> str:
        await self.host.send_all(line.encode() + b"\r")
        return await self.result(final)

    async def result(
        self, final: tuple[str, ...] = ("OK", "ERROR", "CONNECT", "NO CARRIER"), timeout: float = 10
    ) -> str:
        with trio.fail_after(timeout):
            while True:
                text = self.buffer.decode("latin-1")
                for word in final:
                    marker = f"\r\n{word}"
                    if marker in text:
                        end = (
                            text.index("\r\n", text.index(marker) + 2) + 2
                            if "\r\n" in text[text.index(marker) + 2 :]
                            else -1
                        )
                        if end > 0:
                            del self.buffer[:end]
                            return text[:end]
                self.buffer += await self.host.receive_some(65536)


class FakeMux:
    def __init__(self) -> None:
        self.signal_listeners: list[Callable[[int, int], None]] = []

    def msc(self, dlci: int, signals: int) -> None:
        """What link/cmux.py's Mux tells its listeners of the DTE's MSC (3GPP TS 27.010 5.4.6.3.7)."""
        for listener in list(self.signal_listeners):
            listener(dlci, signals)


class FakeDlc(trio.abc.Stream):
    """A stream that is DLC 1 of a multiplexer whose MSC signals the test sets (DTR is the RTC bit)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.mux = FakeMux()
        self.dlci = 1

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.inner.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def rig(config: PppConfig | None = None, dlc: bool = False) -> AsyncIterator[Rig]:
    tracer = ListTracer()
    card, _ = simulated_card(None, None, tracer)
    network = CellularNetwork()
    core = ModemCommands(CardDriver(card, tracer=tracer), network)
    core.command_sets = build_command_sets(core, tracer, {"ppp_config": config} if config else {})
    data = next(s for s in core.command_sets if isinstance(s, DataCommands))
    plane = PacketPlane(network, tracer=tracer)
    data.attach_plane(plane)
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        a, b = trio.testing.memory_stream_pair()
        server = AtServer(FakeDlc(b) if dlc else b, tracer=tracer, echo=False)
        core.install(server)
        nursery.start_soon(server.run)
        yield Rig(a, server, core, network, data, tracer)
        nursery.cancel_scope.cancel()


async def negotiate(
    r: Rig, host: HostPpp, until: str = "ipcp", timeout: float = 10, *, started: bool = False
) -> None:
    """Runs the host's PPP against the modem until IPCP is open (or LCP, `until="lcp"`); `timeout` is a bound
    for a stalled negotiation, generous where the modem is a separate process on a busy machine. `started`: the
    host's first Configure-Request went out already (with its dial command)."""
    if not started:
        host.start()
    if r.buffer:  # the modem's first frames, read together with its CONNECT: the host's, not the chat's
        host.feed(bytes(r.buffer))
        r.buffer.clear()
    with trio.fail_after(timeout):
        while True:
            out = host.take()
            if out:
                await r.host.send_all(out)
            if until == "ipcp" and host.ipcp_open and host.ipcp_acked_theirs:
                return
            if until == "lcp" and host.lcp_acked_ours and host.lcp_acked_theirs:
                return
            data = b""
            with trio.move_on_after(3):  # RFC 1661 4.6: the Restart timer (3 s) resends an unanswered request
                data = await r.host.receive_some(65536)
            if data:
                host.feed(data)
            elif not host.lcp_acked_ours:
                host.start()


async def serve_http(nursery: trio.Nursery, body: bytes) -> int:
    async def handler(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            request += chunk
        assert request.startswith(b"GET /page HTTP/1.0")
        await stream.send_all(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


# --- tests ------------------------------------------------------------------------------------------------------


def test_dial_strings_of_27_007_10_2_1_1() -> None:
    assert parse_dial("*99#") == ("PPP", [])
    assert parse_dial("*99***1#") == ("PPP", [1])
    assert parse_dial("*99**PPP*2#") == ("PPP", [2])
    assert parse_dial("*99*123*1*3#") == ("1", [3])
    assert parse_dial("5551234;") is None
    assert parse_dial("*991#") is None
    with pytest.raises(ValueError):
        parse_dial("*99***x#")


def test_escape_needs_the_guard_time_both_sides() -> None:
    """V.250's escape: +++ only after and before a guard time of silence; otherwise the pluses are data."""
    detector = EscapeDetector(1.0, now=0.0)
    assert detector.feed(b"+++", 1.5) == b""  # held: maybe an escape
    assert detector.feed(b"x", 1.6) == b"+++x"  # data after it: it was data
    assert not detector.expired(10.0)
    assert detector.feed(b"+++", 3.0) == b""
    assert detector.deadline == 4.0
    assert not detector.expired(3.9)
    assert detector.expired(4.0)
    mid = EscapeDetector(1.0, now=0.0)
    assert mid.feed(b"a+++", 5.0) == b"a+++"  # no silence before the pluses
    assert mid.deadline is None


def test_pluses_further_apart_than_the_guard_time_are_no_escape() -> None:
    """Each plus after a guard time of silence starts the count anew: `+ (2 s) + (2 s) +` is no +++."""
    detector = EscapeDetector(1.0, now=0.0)
    assert detector.feed(b"+", 2.0) == b""
    assert detector.feed(b"+", 4.0) == b"+"  # the first plus was data; this one may begin an escape
    assert detector.feed(b"+", 6.0) == b"+"
    assert detector.deadline is None and not detector.expired(100.0)
    assert detector.feed(b"++", 6.5) == b""  # with the held plus: +++ within one guard time
    assert detector.expired(7.5)


async def test_a_host_dials_gets_an_address_and_dns_and_fetches_a_page() -> None:
    body = b"hello through PPP " * 200
    async with rig() as r, trio.open_nursery() as nursery:
        port = await serve_http(nursery, body)
        assert "OK" in await r.at("ATS12=5")  # 0.1 s guard time for the +++ at the end
        assert "CONNECT" in await r.at("ATD*99#")
        host = HostPpp()
        await negotiate(r, host)
        assert host.address is not None
        assert str(host.address) == r.network.contexts[1].address
        assert host.dns == [IPv4Address("198.51.100.1")] * 2
        # the host's IP stack at its IPCP address, its packets in PPP frames over the line
        wake = [trio.Event()]

        def transmit(packet: bytes) -> None:
            host.send(0x0021, packet)
            wake[0].set()

        stack = IpStack(host.address, transmit)

        async def reader() -> None:
            while True:
                host.feed(await r.host.receive_some(65536))
                for packet in host.ip_packets:
                    stack.receive_packet(packet)
                host.ip_packets.clear()
                wake[0].set()

        async def writer() -> None:
            while True:
                await wake[0].wait()
                wake[0] = trio.Event()
                out = host.take()
                if out:
                    await r.host.send_all(out)

        async with trio.open_nursery() as host_side:
            await host_side.start(stack.run)
            host_side.start_soon(reader)
            host_side.start_soon(writer)
            with trio.fail_after(10):
                tcp = await stack.open_tcp("198.51.100.1", port)
                await tcp.send_all(b"GET /page HTTP/1.0\r\n\r\n")
                got = b""
                while True:
                    chunk = await tcp.receive_some(65536)
                    if not chunk:
                        break
                    got += chunk
            host_side.cancel_scope.cancel()
        assert got.endswith(body) and got.startswith(b"HTTP/1.0 200 OK")
        kinds = {e.kind for e in r.tracer.events}
        assert {"ppp.lcp", "ppp.ipcp", "ppp.ip", "ppp.call"} <= kinds
        # a fence: once the Echo-Reply is back the modem has read every byte before it, so the silence before
        # +++ is at least the sleep below however the processes are scheduled
        await r.host.send_all(host_frame(0xC021, control(9, 77, struct.pack("!I", host.magic))))
        with trio.fail_after(10):
            while not any(p == 0xC021 and d[0] == 10 and d[1] == 77 for p, d in host.frames):
                host.feed(await r.host.receive_some(65536))
        await trio.sleep(0.15)  # the guard time before +++
        await r.host.send_all(b"+++")
        assert "OK" in await r.result(("OK",))
        answer = await r.at("AT%DATACNT=1")
        found = re.search(r"%DATACNT: 1,(\d+),(\d+)", answer)
        assert found, answer
        assert int(found.group(1)) >= len(body) and int(found.group(2)) > 0  # IPv4 bytes to and from the host
        nursery.cancel_scope.cancel()


@pytest.mark.needs("tshark")
async def test_tshark_reads_the_ppp_pcap_without_malformed_frames(tmp_path: Path) -> None:
    async with rig() as r:
        assert "OK" in await r.at('AT+CGDCONT=2,"IP","ota.bipsim"')
        assert "CONNECT" in await r.at("ATD*99***2#")
        host = HostPpp(user="ota", password="secret", prefer_chap=True)
        await negotiate(r, host)
        await r.host.send_all(host_frame(0x8057, control(1, 9, b"")))  # gets a Protocol-Reject
        with trio.fail_after(5):
            while not any(p == 0xC021 and d[0] == 8 for p, d in host.frames):
                host.feed(await r.host.receive_some(65536))
        pcap = tmp_path / "call.pcap"
        export_pcap(r.tracer.events, pcap)
    ppp = ppp_pcap_path(pcap)
    assert ppp.name == "call.ppp.pcap"
    fields = ["frame.number", "ppp.direction", "ppp.protocol", "_ws.malformed"]
    result = subprocess.run(
        ["tshark", "-r", str(ppp), "-T", "fields", *(arg for f in fields for arg in ("-e", f))],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) >= 10
    assert all(not row[3] for row in rows), result.stdout
    protocols = {int(row[2], 16) for row in rows if row[2]}
    assert {0xC021, 0xC223, 0x8021} <= protocols  # LCP, CHAP, IPCP decoded
    assert {row[1] for row in rows} >= {"1", "0"} or {row[1] for row in rows} >= {"Sent", "Received"}


@pytest.mark.parametrize("prefer_chap", [False, True])
async def test_the_hosts_pap_or_chap_credentials_activate_the_context(prefer_chap: bool) -> None:
    """No +CGAUTH: the modem asks PAP (CHAP when the host naks it) and activates the context with what the host
    sent; the network, not the modem, knows the APN's secret."""
    async with rig() as r:
        assert "OK" in await r.at('AT+CGDCONT=2,"IP","ota.bipsim"')
        assert "CONNECT" in await r.at("ATD*99***2#")
        assert 2 not in r.network.contexts  # nothing to activate with before the host answers
        host = HostPpp(user="ota", password="secret", prefer_chap=prefer_chap)
        await negotiate(r, host)
        first = next(d for p, d in host.frames if p == 0xC021 and d[0] == 1)
        assert b"\x03\x04\xc0\x23" in first  # PAP asked first
        assert host.auth == ("chap" if prefer_chap else "pap")
        assert str(host.address) == r.network.contexts[2].address
        assert r.network.contexts[2].user == "ota"
        auth = [
            e for e in r.tracer.events if e.kind == "ppp.call" and e.fields.get("event") == "authenticated"
        ]
        assert auth and auth[0].fields["method"] == host.auth


@pytest.mark.parametrize("prefer_chap", [False, True])
async def test_wrong_password_ends_the_call_with_no_carrier_and_at_is_served(prefer_chap: bool) -> None:
    async with rig() as r:
        assert "OK" in await r.at('AT+CGDCONT=2,"IP","ota.bipsim"')
        assert "CONNECT" in await r.at('AT+CGDATA="PPP",2')
        host = HostPpp(user="ota", password="wrong", prefer_chap=prefer_chap)
        host.start()
        text = b""
        with trio.fail_after(10):
            while b"NO CARRIER" not in text:
                out = host.take()
                if out:
                    await r.host.send_all(out)
                data = await r.host.receive_some(65536)
                text += data
                host.feed(data.split(b"\r\n")[0] if b"NO CARRIER" in data else data)
        # the host heard the network's refusal: PAP Authenticate-Nak or CHAP Failure
        assert any(p == (0xC223 if prefer_chap else 0xC023) and d[0] in (3, 4) for p, d in host.frames)
        assert "OK" in await r.at("AT")
        assert 2 not in r.network.contexts  # never activated
        assert "SM cause #29" in await r.at("AT+CEER")  # user authentication failed (TS 24.008 10.5.6.6)


async def test_escape_then_ato_then_ath(autojump_clock: trio.testing.MockClock) -> None:
    async with rig() as r:
        assert "CONNECT" in await r.at("ATD*99#")
        host = HostPpp()
        await negotiate(r, host)
        await trio.sleep(1.5)  # S12's 1 s guard time, on the mock clock
        await r.host.send_all(b"+++")
        assert "OK" in await r.result()  # after the second guard time: online command mode
        assert "OK" in await r.at("AT")
        assert "CONNECT" in await r.at("ATO")
        events = [e.fields.get("event") for e in r.tracer.events if e.kind == "ppp.call"]
        assert "escape" in events and "resumed" in events
        # the link survived: an LCP Echo-Request is answered
        await r.host.send_all(host_frame(0xC021, control(9, 7, struct.pack("!I", host.magic))))
        with trio.fail_after(5):
            while not any(p == 0xC021 and d[0] == 10 for p, d in host.frames):
                host.feed(await r.host.receive_some(65536))
        await trio.sleep(1.5)
        await r.host.send_all(b"+++")
        assert "OK" in await r.result()
        answer = await r.at("ATH")
        assert answer == "\r\nOK\r\n"  # no LCP Terminate-Request into a line in command mode
        assert 1 not in r.network.contexts
        assert "NO CARRIER" in await r.at("ATO")


@pytest.mark.parametrize("ender", ["context", "bearer"])
async def test_a_call_ended_in_online_command_mode_says_no_carrier(
    ender: str, autojump_clock: trio.testing.MockClock
) -> None:
    """The network deactivates the context (or the bearer goes) while the line is in command mode: an unsolicited
    NO CARRIER, and no PPP bytes into the AT line."""
    async with rig() as r:
        assert "CONNECT" in await r.at("ATD*99#")
        host = HostPpp()
        await negotiate(r, host)
        await trio.sleep(1.5)
        await r.host.send_all(b"+++")
        assert "OK" in await r.result(("OK",))
        if ender == "context":
            assert r.network.network_deactivate(1, "test")
        else:
            plane = r.data.plane
            assert plane is not None and plane.pgw is not None
            plane.pgw.detach(IPv4Address(r.network.contexts[1].address), "test")
        text = await r.result(("NO CARRIER",))
        assert text == "\r\nNO CARRIER\r\n"
        assert 1 not in r.network.contexts
        assert "NO CARRIER" in await r.at("ATO")


async def test_bad_fcs_runt_and_unknown_protocol() -> None:
    async with rig() as r:
        assert "CONNECT" in await r.at("ATD*99#")
        host = HostPpp()
        await negotiate(r, host, until="lcp")
        await r.host.send_all(host_frame(0xC021, control(9, 1, b"\0\0\0\0"), fcs_ok=False))
        await r.host.send_all(b"\x7e\x01\x02\x7e")  # a runt
        await r.host.send_all(host_frame(0x8057, control(1, 1, b"")))  # IPv6CP: not carried
        with trio.fail_after(5):
            while not any(p == 0xC021 and d[0] == 8 for p, d in host.frames):
                host.feed(await r.host.receive_some(65536))
        reject = next(d for p, d in host.frames if p == 0xC021 and d[0] == 8)
        assert reject[4:6] == b"\x80\x57"  # Protocol-Reject names the protocol (RFC 1661 5.7)
        reasons = {e.fields.get("reason") for e in r.tracer.events if e.kind == "ppp.dropped"}
        assert {"bad_fcs", "runt"} <= reasons
        # no Echo-Reply to the frame with the bad FCS
        assert not any(p == 0xC021 and d[0] == 10 for p, d in host.frames)


async def test_a_host_that_never_answers_lcp_gets_no_carrier_after_max_configure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """RFC 1661 4.6 defaults: 10 Configure-Requests 3 s apart, then the link is finished: NO CARRIER after 30 s (on
    trio's mock clock), and the line serves AT again."""
    async with rig() as r:
        start = trio.current_time()
        assert "CONNECT" in await r.at("ATD*99#")
        text = await r.result(("NO CARRIER",), timeout=60)
        assert text.count("\x7e\xff\x7d\x23\xc0\x21\x7d\x21") == 10  # Configure-Requests, then give up
        assert trio.current_time() - start == pytest.approx(30.0)
        assert "OK" in await r.at("AT")
        ended = [e for e in r.tracer.events if e.kind == "ppp.call" and e.fields.get("event") == "ended"]
        assert ended and 1 not in r.network.contexts


async def test_the_network_deactivating_the_context_ends_the_call() -> None:
    async with rig() as r:
        assert "CONNECT" in await r.at("ATD*99#")
        host = HostPpp()
        await negotiate(r, host)
        assert r.network.network_deactivate(1, "test")
        text = b""
        with trio.fail_after(5):
            while b"NO CARRIER" not in text:
                text += await r.host.receive_some(65536)
        host.feed(text[: text.rindex(b"\x7e") + 1])
        assert any(p == 0xC021 and d[0] == 5 for p, d in host.frames)  # Terminate-Request first
        assert "OK" in await r.at("AT")
        assert "NO CARRIER" in await r.at("ATO")  # nothing to go back to


@pytest.mark.parametrize("dtr_mode", [1, 2])
async def test_dtr_drop_on_a_dlc_follows_and_d(dtr_mode: int) -> None:
    """V.250 6.2.9: &D1 goes to online command mode (OK), &D2 clears the call (NO CARRIER); DTR is the MSC's RTC bit
    on the DLC, and &D0 ignores it."""
    async with rig(dlc=True) as r:
        assert "OK" in await r.at("AT&D0")
        assert "CONNECT" in await r.at("ATD*99#")
        host = HostPpp()
        await negotiate(r, host)
        stream = r.server.stream
        assert isinstance(stream, FakeDlc)
        stream.mux.msc(1, 0x01 | 0x08 | 0x80)  # RTC (DTR) low, &D0: nothing happens
        await r.host.send_all(host_frame(0xC021, control(9, 3, struct.pack("!I", host.magic))))
        with trio.fail_after(5):
            while not any(p == 0xC021 and d[0] == 10 for p, d in host.frames):
                host.feed(await r.host.receive_some(65536))
        r.server.settings = replace(r.server.settings, dtr=dtr_mode)
        stream.mux.msc(2, 0x01 | 0x08 | 0x80)  # another DLC's DTR: not this call's
        stream.mux.msc(1, 0x01 | 0x08 | 0x80)
        if dtr_mode == 1:
            assert "OK" in await r.result(("OK",))
            assert 1 in r.network.contexts
            assert "CONNECT" in await r.at("ATO")
        else:
            assert "NO CARRIER" in await r.result(("NO CARRIER",))
            assert 1 not in r.network.contexts
            assert "OK" in await r.at("AT")


async def test_garbage_in_the_guard_time_keeps_the_call_online(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with rig() as r:
        assert "CONNECT" in await r.at("ATD*99#")
        host = HostPpp()
        await negotiate(r, host)
        await trio.sleep(1.5)
        await r.host.send_all(b"+++")
        await r.host.send_all(b"junk")  # within the guard time: the pluses were data
        await r.host.send_all(host_frame(0xC021, control(9, 5, struct.pack("!I", host.magic))))
        with trio.fail_after(5):
            while not any(p == 0xC021 and d[0] == 10 for p, d in host.frames):
                host.feed(await r.host.receive_some(65536))
        assert not any(e.fields.get("event") == "escape" for e in r.tracer.events if e.kind == "ppp.call")
        assert any(e.kind == "ppp.dropped" for e in r.tracer.events)  # "+++junk" read as a broken frame


def lcp_requests(events: list[TraceEvent], sender: str) -> int:
    """How many LCP Configure-Requests (RFC 1661 5.1) `sender` ("cp" or "ap", the host) put on the line."""
    return sum(
        1
        for e in events
        if e.kind == "ppp.lcp" and e.src.value == sender and e.data.startswith(b"\xff\x03\xc0\x21\x01")
    )


async def test_frames_right_behind_connect_and_behind_atd_are_not_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Neither end loses the first frame the other wrote at the switch to PPP: the host's Configure-Request in the
    same write as its ATD*99# (the AT server's bytes behind the command line, taken over by the call), and the
    modem's Configure-Request in the same read as its CONNECT (the host's chat read them together). Each side
    sends one Configure-Request; a lost one would show as a second, on the RFC 1661 4.6 restart timer (3 s, which
    the mock clock would jump to)."""
    async with rig() as r:
        host = HostPpp()
        host.start()
        await r.host.send_all(b"ATD*99#\r" + host.take())
        with trio.fail_after(
            10
        ):  # the modem's request is written: it shares the host's next read with CONNECT
            while not lcp_requests(r.tracer.events, "cp"):
                await trio.sleep(0.01)
        assert "CONNECT" in await r.result()
        await negotiate(r, host, started=True)
        assert lcp_requests(r.tracer.events, "cp") == 1
        assert sum(1 for protocol, data in host.sent if protocol == 0xC021 and data[0] == 1) == 1
        assert host.address is not None


async def test_a_dial_without_a_context_does_not_share_the_cards_and_outlives_it() -> None:
    """ATD*99# with no context defined takes a context of its own: the one the card's BIP channel activated
    (context 1, on the own-stack bearer) ends when the card closes its channel, and must not end the host's call
    with it (a running CP's card opens its channel at power-on, while a host may be dialling)."""
    async with rig() as r:
        cards = r.network.activate("internet")  # what the own-stack bearer does for the card's OPEN CHANNEL
        assert cards.cid == 1
        assert "CONNECT" in await r.at("ATD*99#")
        host = HostPpp()
        await negotiate(r, host)
        (call,) = r.data.calls.values()
        assert call.cid != cards.cid and host.address is not None and str(host.address) != cards.address
        r.network.deactivate(cards.cid, "channel 1 closed")  # the card's CLOSE CHANNEL releases its context
        assert call.online and not call.ended
        assert str(host.address) == r.network.contexts[call.cid].address


def test_a_running_bipsim_cp_takes_a_data_call(tmp_path: Path) -> None:
    """The product: `bipsim cp --listen` answers ATD*99# with CONNECT and gives the host an address by IPCP."""
    import os
    import re
    import select
    import signal
    import sys
    import time

    trace = tmp_path / "cp.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "bipsim", "cp", "--listen", "127.0.0.1:0", "--trace", str(trace)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        port = 0
        deadline = time.monotonic() + 20
        while not port:  # the CP says its port on stderr once the socket is bound
            assert time.monotonic() < deadline, "bipsim cp did not say its port"
            ready, _, _ = select.select([process.stderr], [], [], 0.5)
            if ready:
                found = re.search(r"tcp://127\.0\.0\.1:(\d+)", process.stderr.readline())
                port = int(found.group(1)) if found else 0

        async def call() -> HostPpp:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            r = Rig(stream, None, None, None, None, None)  # type: ignore[arg-type]
            assert "OK" in await r.at("ATE0")
            assert "CONNECT" in await r.at("ATD*99#")
            host = HostPpp()
            await negotiate(r, host, timeout=60)
            await stream.aclose()
            return host

        host = trio.run(call)
        assert host.address is not None and host.address in IPv4Network("198.51.100.0/24")
        assert host.dns == [IPv4Address("198.51.100.1")] * 2
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert any(e.get("kind") == "ppp.ipcp" for e in events)
    assert os.path.getsize(trace) > 0
    out = tmp_path / "cp.pcap"
    result = subprocess.run(
        [sys.executable, "-m", "bipsim", "trace", "pcap", str(trace), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert f"PPP frames of data calls to {tmp_path / 'cp.ppp.pcap'}" in result.stdout
    assert (tmp_path / "cp.ppp.pcap").read_bytes()[20:24] == (204).to_bytes(4, "little")


def test_pppd_gets_an_address_and_fetches_a_page(tmp_path: Path, need: Callable[[str], str]) -> None:
    """The real peer: pppd on one side of `bipsim pty-pair`, `bipsim cp` on the other; pppd dials with chat, gets an
    address by IPCP and the kernel fetches a page from a server on 127.0.0.1 through the gateway 198.51.100.1."""
    import http.server
    import os
    import sys
    import threading
    import time
    import urllib.request

    if not os.path.exists("/dev/ppp"):
        pytest.skip(
            "no /dev/ppp: this kernel has no PPP (CONFIG_PPP), so pppd cannot run; the RFC peer above does"
        )
    pppd = need("pppd")
    chat = need("chat")
    body = b"page through pppd\n" * 50

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.HTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pair = subprocess.Popen([sys.executable, "-m", "bipsim", "pty-pair"], stdout=subprocess.PIPE, text=True)
    processes = [pair]
    try:
        assert pair.stdout is not None
        side_a, side_b = pair.stdout.readline().strip(), pair.stdout.readline().strip()
        cp = subprocess.Popen(
            [sys.executable, "-m", "bipsim", "cp", "--port", side_a], stderr=subprocess.PIPE
        )
        processes.append(cp)
        log = tmp_path / "pppd.log"
        script = f"{chat} -v -t 10 '' AT OK ATD*99# CONNECT"
        ppp = subprocess.Popen(
            [
                pppd,
                side_b,
                "115200",
                "nodetach",
                "noauth",
                "local",
                "nocrtscts",
                "noipdefault",
                "usepeerdns",
                "nodefaultroute",
                "logfile",
                str(log),
                "connect",
                script,
            ],
        )
        processes.append(ppp)
        deadline = time.monotonic() + 30
        while "local  IP address" not in (log.read_text() if log.exists() else ""):
            assert ppp.poll() is None, log.read_text() if log.exists() else "pppd ended"
            assert time.monotonic() < deadline, "pppd got no address"
            time.sleep(0.2)
        text = log.read_text()
        assert "remote IP address 198.51.100.1" in text
        assert "primary   DNS address 198.51.100.1" in text
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://198.51.100.1:{port}/", timeout=10) as answer:
            assert answer.read() == body
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        server.shutdown()


async def test_a_data_call_on_cmux_dlc_1() -> None:
    """The call on a 27.010 DLC of the CP's line service: the other DLCs and the mux go on."""
    from bipsim.cp.line_service import LineService
    from bipsim.cp.proxy_link import ProxyLink
    from bipsim.link.cmux import CmuxParams, Mux, MuxRole

    tracer = ListTracer()
    card, _ = simulated_card(None, None, tracer)
    network = CellularNetwork()
    core = ModemCommands(CardDriver(card, tracer=tracer), network)
    core.command_sets = build_command_sets(core, tracer, {})
    data = next(s for s in core.command_sets if isinstance(s, DataCommands))
    plane = PacketPlane(network, tracer=tracer)
    data.attach_plane(plane)
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        ap, cp = trio.testing.memory_stream_pair()
        nursery.start_soon(LineService(cp, core, ProxyLink(), tracer=tracer).run)
        line = Rig(ap, None, core, network, data, tracer)  # type: ignore[arg-type]
        assert "OK" in await line.at("ATE0")
        assert "OK" in await line.at("AT+CMUX=0")
        mux = Mux(ap, role=MuxRole.INITIATOR, params=CmuxParams(n1=1500))
        nursery.start_soon(mux.run)
        dlc = await mux.open_dlc(1)
        r = Rig(dlc, None, core, network, data, tracer)  # type: ignore[arg-type]
        assert "CONNECT" in await r.at("ATD*99***1#")
        host = HostPpp()
        await negotiate(r, host)
        assert str(host.address) == network.contexts[1].address
        frames = [e for e in tracer.events if e.kind == "ppp.ipcp"]
        assert frames and all(e.fields.get("dlci") == 1 for e in frames)
        nursery.cancel_scope.cancel()


async def test_cgauth_activates_with_its_credentials_and_asks_the_host_nothing() -> None:
    """+CGAUTH=<cid>,1,... (27.007 10.1.31): the context is activated with those credentials at the dial and the
    host is not asked to authenticate."""
    async with rig() as r:
        assert "OK" in await r.at('AT+CGDCONT=2,"IP","ota.bipsim"')
        assert "OK" in await r.at('AT+CGAUTH=2,1,"ota","secret"')
        assert "CONNECT" in await r.at("ATD*99***2#")
        assert r.network.contexts[2].user == "ota"
        host = HostPpp()
        await negotiate(r, host)
        assert host.auth == "none"
        assert not any(p in (0xC023, 0xC223) for p, _ in host.frames)
        assert not any(
            kind == 3 for p, d in host.frames if p == 0xC021 and d[0] == 1 for kind, _ in read_options(d[4:])
        )


async def test_cgauth_with_wrong_credentials_refuses_the_dial() -> None:
    async with rig() as r:
        assert "OK" in await r.at("AT+CMEE=1")
        assert "OK" in await r.at('AT+CGDCONT=2,"IP","ota.bipsim"')
        assert "OK" in await r.at('AT+CGAUTH=2,1,"ota","wrong"')
        assert "+CME ERROR: 149" in await r.at("ATD*99***2#", ("+CME ERROR", "CONNECT"))
        assert 2 not in r.network.contexts


@pytest.mark.parametrize("cgauth", [False, True])
async def test_no_bearer_leaves_no_context_behind(cgauth: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The context's bearer cannot be had after the call activated it: the call deactivates what it created."""
    async with rig() as r:

        async def busy(*_: object) -> None:
            raise ValueError("the address carries another bearer")

        monkeypatch.setattr(r.data, "_bearer", busy)
        if cgauth:
            assert "OK" in await r.at('AT+CGAUTH=1,0,"",""')
            assert "ERROR" in await r.at("ATD*99#", ("OK", "ERROR", "CONNECT"))
        else:
            assert "CONNECT" in await r.at("ATD*99#")
            host = HostPpp()
            host.start()
            text = b""
            with trio.fail_after(10):
                while b"NO CARRIER" not in text:
                    out = host.take()
                    if out:
                        await r.host.send_all(out)
                    data = await r.host.receive_some(65536)
                    text += data
                    host.feed(data.split(b"\r\n")[0] if b"NO CARRIER" in data else data)
            assert "another bearer" in await r.at("AT+CEER")
        assert r.network.contexts == {}
        assert "OK" in await r.at("AT")


async def test_a_host_that_rejects_authentication_goes_on_without_credentials() -> None:
    """A host with no secrets rejects the Authentication-Protocol option: the context is activated with none."""
    async with rig() as r:
        assert "CONNECT" in await r.at("ATD*99#")
        host = HostPpp(refuse_auth=True)
        await negotiate(r, host)
        assert host.auth == "none"
        assert any(p == 0xC021 and d[0] == 4 for p, d in host.sent)  # it did reject
        assert str(host.address) == r.network.contexts[1].address


def test_the_call_moves_only_by_its_table() -> None:
    from bipsim.cp.data_mode import CALL_TABLE, CallEvent, CallState

    assert CALL_TABLE[(CallState.ONLINE, CallEvent.ESCAPE)] is CallState.COMMAND
    assert CALL_TABLE[(CallState.COMMAND, CallEvent.RESUME)] is CallState.ONLINE
    assert (CallState.ONLINE, CallEvent.RESUME) not in CALL_TABLE  # ATO while online is not a resume
    assert (CallState.ENDED, CallEvent.RESUME) not in CALL_TABLE  # an ended call never comes back


async def test_urcs_held_while_online_are_capped_oldest_dropped_and_traced() -> None:
    """A data call online for long must not grow the held URCs without bound (link/at_server.py MAX_HELD_URCS)."""
    from bipsim.link.at_server import MAX_HELD_URCS

    tracer = ListTracer()
    a, b = trio.testing.memory_stream_pair()
    server = AtServer(b, tracer=tracer, echo=False)
    server.online_data = True
    for n in range(MAX_HELD_URCS + 3):
        await server.send_urc(f"+CGEV: test {n}")
    assert len(server.held_urcs) == MAX_HELD_URCS
    assert (
        server.held_urcs[0] == "+CGEV: test 3" and server.held_urcs[-1] == f"+CGEV: test {MAX_HELD_URCS + 2}"
    )
    dropped = [e for e in tracer.events if e.error and (e.fields or {}).get("dropped")]
    assert [e.fields["dropped"] for e in dropped if e.fields] == [
        "+CGEV: test 0",
        "+CGEV: test 1",
        "+CGEV: test 2",
    ]
    await a.aclose()


async def test_an_apn_over_100_octets_is_refused() -> None:
    """TS 23.003 9.1: an APN is at most 100 octets encoded (one length octet per label): 99 characters are the
    most +CGDCONT takes."""
    async with rig() as r:
        assert "OK" in await r.at("AT+CMEE=1")
        longest = ".".join(["a" * 49, "b" * 49])  # 99 characters, 100 octets encoded
        assert "OK" in await r.at(f'AT+CGDCONT=3,"IP","{longest}"')
        answer = await r.at(f'AT+CGDCONT=4,"IP","{longest}c"', ("OK", "+CME ERROR"))
        assert "+CME ERROR: 50" in answer
        assert 4 not in r.core.definitions and r.core.definitions[3] == ("IP", longest)


def test_cp_cli_listen_nonsense_is_a_usage_error_and_pcap_help_names_the_ppp_file() -> None:
    import sys

    bad = subprocess.run(
        [sys.executable, "-m", "bipsim", "cp", "--listen", "nonsense"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "is not HOST:PORT" in bad.stderr and "Traceback" not in bad.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "bipsim", "cp", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "F.ppp.pcap" in " ".join(shown.split())
