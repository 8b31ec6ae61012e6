"""The packet gateway (docs/protocols.md, "The packet gateway"): where the IPv4 packets of each PDP context's radio
bearer (net/radio.py) leave the simulated network. It plays the 3GPP PDN gateway (TS 23.401 section 4.4.3.3): it
owns the context addresses of 198.51.100.0/24 (RFC 5737 TEST-NET-2), with 198.51.100.1 as the gateway and DNS
server, and routes packets between the contexts and the outside.

Two modes:

- `nat` (default, no privileges): like slirp or passt, the gateway terminates each of the CP's flows in an IPv4
  stack of its own (net/stack.py, promiscuous: it answers as any destination) and opens a host socket (trio) to the
  same destination, copying both ways with half-close; a refused host port is an RST, an unreachable one too; UDP
  datagrams travel through host UDP sockets, and their errors come back as ICMP port unreachable. Host ports can
  be forwarded to a context's address and port (the UICC server mode of TS 102 223 section 6.4.27.3).
- `tun`: packets are written as they are into a TUN interface inside a network namespace the gateway makes for
  itself (net/tun.py), where the OTA server listens at 203.0.113.10: the far end of every TCP connection is the
  Linux kernel's TCP. Packets toward an address with no context get ICMP host unreachable (RFC 792).

In both modes the gateway answers DNS queries to 198.51.100.1:53 (net/dns.py) from its table and the host's
resolver, for OPEN CHANNEL's DNS server request (TS 102 223 section 6.4.27). `detach` is the context's deletion:
its flows end at once (host sockets closed, nothing more sent toward its address) and its bearer end is closed.
"""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import trio

from bipsim.net import dns
from bipsim.net.errors import PacketError
from bipsim.net.icmp import Unreachable, destination_unreachable, may_answer_with_error
from bipsim.net.ipv4 import ICMP, TCP, UDP, Ipv4Packet
from bipsim.net.radio import LinkEnd
from bipsim.net.tun import TunNamespace, open_tun_namespace
from bipsim.net.udp import UdpDatagram
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer, TracerView

__all__ = ["CORE_ROUTER", "GATEWAY", "POOL", "SERVER_ADDRESS", "Pgw", "PgwCounters", "PgwMode", "PortForward"]

POOL = IPv4Network("198.51.100.0/24")
GATEWAY = IPv4Address("198.51.100.1")
SERVER_ADDRESS = IPv4Address("203.0.113.10")  # the OTA server inside the tun mode's namespace
# the source of the gateway's ICMP errors into the namespace: a router of the core network (RFC 5737 TEST-NET-3),
# not the gateway's own address, which the namespace's kernel holds itself and would take for a martian
CORE_ROUTER = IPv4Address("203.0.113.1")
COPY_CHUNK = 65536
UDP_IDLE = 60.0  # a UDP mapping without traffic is forgotten after this long (RFC 4787 REQ-5: at least 2 min
# is advised for NATs of real users; a simulated modem's flows are short)


class PgwMode(StrEnum):
    NAT = "nat"
    TUN = "tun"


@dataclass(frozen=True)
class PortForward:
    """Connections to host `host`:`host_port` go to the context address `address`:`port` (nat mode)."""

    host_port: int
    address: IPv4Address
    port: int
    host: str = "127.0.0.1"


@dataclass
class PgwCounters:
    packets_up: int = 0  # from the contexts
    packets_down: int = 0  # toward the contexts
    dropped: int = 0  # spoofed sources, packets for no context, what the TUN refused, not IPv4
    flows: int = 0
    refused: int = 0
    dns_queries: int = 0


@dataclass
class _Context:
    address: IPv4Address
    end: LinkEnd
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)  # its reader
    flows: set[trio.CancelScope] = field(default_factory=set)  # each flow's task (nat), ended by detach


class Pgw:
    """The gateway; `run` it in a nursery, then `attach` each context's bearer end."""

    def __init__(
        self,
        mode: PgwMode | str = PgwMode.NAT,
        *,
        tracer: Tracer = NULL_TRACER,
        gateway: IPv4Address = GATEWAY,
        dns_table: Mapping[str, IPv4Address] | None = None,
        host_resolver: bool = True,
        aliases: Mapping[IPv4Address, str] | None = None,
        forwards: Iterable[PortForward] = (),
        connect_timeout: float = 10.0,
        tun: TunNamespace | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.mode = PgwMode(mode)
        self.tracer = tracer
        self.gateway = gateway
        self.dns_table = {name.lower().rstrip("."): address for name, address in (dns_table or {}).items()}
        self.host_resolver = host_resolver
        # nat: a destination the CP names that the host reaches at another address: the gateway is the host's
        # loopback (as slirp's 10.0.2.2 is), and so is the tun mode's server address, so that the same scenario
        # runs in both modes
        self.aliases = {gateway: "127.0.0.1", SERVER_ADDRESS: "127.0.0.1", **(aliases or {})}
        self.forwards = tuple(forwards)
        if self.forwards and self.mode is PgwMode.TUN:
            raise ValueError(
                "port forwards are for --network nat; in tun mode the namespace reaches the contexts"
            )
        self.connect_timeout = connect_timeout
        self.tun = tun
        self._own_tun = False  # a namespace given by the caller is the caller's to close
        # the nat stack's initial sequence numbers, IP identifications and ports: from the run's seed, so that a
        # run repeats (--seed); None draws them from the system
        self.rng = rng
        self.counters = PgwCounters()
        self._contexts: dict[IPv4Address, _Context] = {}
        self._nursery: trio.Nursery | None = None
        self._stack: Any = None  # net.stack.IpStack in nat mode
        # the port each forward listens on (host_port 0: the system chose), and the scope that ends it
        self.forward_ports: dict[PortForward, int] = {}
        self._forward_scopes: dict[PortForward, trio.CancelScope] = {}

    @property
    def dns_servers(self) -> tuple[IPv4Address, ...]:
        return (self.gateway,)

    # --- life ---------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs the gateway until cancelled; `task_status.started()` once it takes contexts."""
        if self.mode is PgwMode.TUN and self.tun is None:
            # TunUnavailable (with its reason) goes to the caller as it is
            # everything not local to the namespace goes into the TUN, as behind a gateway
            self.tun = await open_tun_namespace(
                gateway=f"{self.gateway}/{POOL.prefixlen}", routes=("0.0.0.0/0",)
            )
            self._own_tun = True
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.mode is PgwMode.TUN:
                    assert self.tun is not None
                    nursery.start_soon(self._tun_reader, self.tun)
                else:
                    await self._start_nat(nursery)
                self._event("pgw_up", mode=self.mode.value, gateway=str(self.gateway))
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for context in list(self._contexts.values()):
                context.end.close()
            self._contexts.clear()
            if self.tun is not None and self._own_tun:
                self.tun.close()
                self.tun = None

    async def attach(self, address: IPv4Address, end: LinkEnd) -> None:
        """Takes the packets of the context `address` from its bearer end (and sends it its packets) until
        `detach`."""
        if self._nursery is None:
            raise RuntimeError("the gateway is not running")
        if address not in POOL or address == self.gateway:
            raise ValueError(f"{address} is not a context address of {POOL}")
        if address in self._contexts:
            raise ValueError(f"{address} is attached already")
        context = _Context(address, end)
        self._contexts[address] = context
        await self._nursery.start(self._context_reader, context)
        self._event("pgw_attach", address=str(address))

    def detach(self, address: IPv4Address, reason: str) -> None:
        """The context is deleted: its flows end now (host sockets closed; nothing is sent toward it any more)
        and its bearer end is closed."""
        context = self._contexts.pop(address, None)
        if context is None:
            return
        context.scope.cancel()
        for scope in context.flows:
            scope.cancel()
        context.end.close()
        self._event("pgw_detach", address=str(address), reason=reason)

    # --- shared -------------------------------------------------------------------------------------------

    def _event(self, event: str, *, error: bool = False, **fields: Any) -> None:
        self.tracer.emit(
            Actor.PGW,
            Actor.PGW,
            Layer.APP,
            f"pgw: {event} " + " ".join(f"{k}={v}" for k, v in fields.items()),
            kind=Kind.APP_ERROR if error else Kind.APP_EVENT,
            error=error,
            fields={"event": event, **fields} if not error else {"where": "pgw", "error": event, **fields},
        )

    def _to_context(self, packet: bytes) -> None:
        """A packet toward a context: onto its bearer, or dropped when there is none (the context is gone)."""
        if len(packet) < 20:
            self.counters.dropped += 1
            return
        context = self._contexts.get(IPv4Address(packet[16:20]))
        if context is None or context.end.closed:
            self.counters.dropped += 1
            return
        self.counters.packets_down += 1
        context.end.send_nowait(packet)

    async def _context_reader(
        self, context: _Context, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with context.scope:
            task_status.started()
            while True:
                try:
                    packet = await context.end.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    break
                if len(packet) < 20 or packet[0] >> 4 != 4 or IPv4Address(packet[12:16]) != context.address:
                    # RFC 2827 ingress filtering: a context sends from its own address only
                    self.counters.dropped += 1
                    self._event(
                        "spoofed or not IPv4", error=True, address=str(context.address), length=len(packet)
                    )
                    continue
                self.counters.packets_up += 1
                if IPv4Address(packet[16:20]) == self.gateway and packet[9] == UDP and self._is_dns(packet):
                    assert self._nursery is not None
                    self._nursery.start_soon(self._answer_dns_packet, packet)
                elif self.mode is PgwMode.TUN:
                    assert self.tun is not None
                    if not self.tun.write_packet(packet):
                        self.counters.dropped += 1
                else:
                    self._stack.receive_packet(packet)
        # the context went (detach) or its bearer closed
        if self._contexts.get(context.address) is context:
            self.detach(context.address, "bearer closed")

    # --- DNS ----------------------------------------------------------------------------------------------

    @staticmethod
    def _is_dns(packet: bytes) -> bool:
        header = (packet[0] & 0x0F) * 4
        return (
            len(packet) >= header + 8
            and int.from_bytes(packet[header + 2 : header + 4], "big") == dns.DNS_PORT
        )

    async def resolve(self, name: str) -> tuple[list[IPv4Address], dns.Rcode]:
        """The gateway's answer for `name`: its table, then the host's resolver."""
        key = name.lower().rstrip(".")
        if key in self.dns_table:
            return [self.dns_table[key]], dns.Rcode.NOERROR
        try:
            return [IPv4Address(key)], dns.Rcode.NOERROR
        except ValueError:
            pass
        if not self.host_resolver:
            return [], dns.Rcode.NXDOMAIN
        try:
            with trio.fail_after(5):
                infos = await trio.socket.getaddrinfo(key, None, socket.AF_INET, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                return [], dns.Rcode.NXDOMAIN
            return [], dns.Rcode.SERVFAIL
        except (TimeoutError, trio.TooSlowError, OSError):
            return [], dns.Rcode.SERVFAIL
        addresses = list(dict.fromkeys(IPv4Address(info[4][0]) for info in infos))
        return addresses, dns.Rcode.NOERROR

    async def answer_dns(self, query: bytes) -> bytes | None:
        """The response to one DNS message (None: dropped, not even a header to answer)."""
        self.counters.dns_queries += 1
        try:
            parsed = dns.parse_query(query)
        except PacketError as exc:
            self.tracer.emit(
                Actor.CP,
                Actor.PGW,
                Layer.DNS,
                f"DNS query refused: {exc}",
                query,
                kind=Kind.DNS_ANSWER,
                error=True,
                fields={"rcode": int(dns.Rcode.FORMERR), "error": str(exc)},
            )
            return dns.formerr_for(query)
        if parsed.qtype == dns.TYPE_A:
            addresses, rcode = await self.resolve(parsed.name)
        else:
            addresses, rcode = [], dns.Rcode.NOERROR
        response = dns.build_response(parsed, addresses, rcode)
        self.tracer.emit(
            Actor.PGW,
            Actor.CP,
            Layer.DNS,
            f"DNS {parsed.name}: {', '.join(map(str, addresses)) or rcode.name}",
            response,
            kind=Kind.DNS_ANSWER,
            fields={
                "name": parsed.name,
                "qtype": parsed.qtype,
                "rcode": int(rcode),
                "addresses": [str(a) for a in addresses],
            },
        )
        return response

    async def _answer_dns_packet(self, packet: bytes) -> None:
        """DNS over UDP to the gateway, answered here in both modes (the packet is not passed on)."""
        try:
            ip = Ipv4Packet.decode(packet)
            datagram = UdpDatagram.decode(ip.payload, ip.source, ip.destination)
        except PacketError as exc:
            self.counters.dropped += 1
            self._event("bad DNS packet", error=True, reason=str(exc))
            return
        response = await self.answer_dns(datagram.payload)
        if response is None:
            return
        reply = UdpDatagram(dns.DNS_PORT, datagram.source_port, response)
        self._to_context(
            Ipv4Packet(self.gateway, ip.source, UDP, reply.encode(self.gateway, ip.source)).encode()
        )

    # --- tun ----------------------------------------------------------------------------------------------

    async def _tun_reader(self, tun: TunNamespace) -> None:
        while True:
            try:
                packet = await tun.read_packet()
            except (OSError, trio.ClosedResourceError) as exc:
                # the TUN went away under the gateway (closed, the namespace gone): said once, the contexts stay
                self._event("tun failed", error=True, reason=str(exc) or type(exc).__name__)
                return
            if len(packet) < 20 or packet[0] >> 4 != 4:
                self.counters.dropped += 1
                continue
            destination = IPv4Address(packet[16:20])
            if destination in self._contexts:
                self._to_context(packet)
                continue
            self.counters.dropped += 1
            if destination in POOL:
                # no context holds the address (deleted, or never there): tell the sender, as a router does
                try:
                    offending = Ipv4Packet.decode(packet)
                except PacketError:
                    continue
                if offending.protocol == ICMP or not may_answer_with_error(offending):
                    continue
                message = destination_unreachable(Unreachable.HOST, packet)
                tun.write_packet(Ipv4Packet(CORE_ROUTER, offending.source, ICMP, message.encode()).encode())

    # --- nat ----------------------------------------------------------------------------------------------

    async def _start_nat(self, nursery: trio.Nursery) -> None:
        from bipsim.net.stack import IpStack  # net/stack.py is the promiscuous stack of the nat mode

        stack = IpStack(
            self.gateway,
            self._to_context,
            # the CP's stack traces every packet of the link already; the gateway's adds only what it drops
            tracer=self.tracer if self.tracer is NULL_TRACER else TracerView(self.tracer, errors_only=True),
            actor=Actor.PGW,
            peer=Actor.CP,
            promiscuous=True,
            rng=self.rng,
        )
        stack.on_flow = self._on_flow
        self._stack = stack
        await nursery.start(stack.run)
        for forward in self.forwards:
            await nursery.start(self._serve_forward, forward)

    def _context_of(self, address: IPv4Address) -> _Context | None:
        return self._contexts.get(address)

    def _on_flow(self, request: Any) -> None:
        """A new flow from a context (a TCP SYN or a UDP datagram to some destination): opened toward the host
        in a task of the context's scope."""
        source = IPv4Address(request.source[0])
        context = self._contexts.get(source)
        if context is None or self._nursery is None:
            self._stack.refuse_flow(request)
            return
        self.counters.flows += 1
        if request.protocol == TCP:
            self._nursery.start_soon(self._in_context, context, self._tcp_flow, request)
        else:
            self._nursery.start_soon(self._in_context, context, self._udp_flow, request)

    async def _in_context(
        self, context: _Context, flow: Callable[[Any], Awaitable[None]], request: Any
    ) -> None:
        # every flow runs in a scope its context holds, so that detach ends them all
        with trio.CancelScope() as scope:
            if context.scope.cancel_called:
                return
            context.flows.add(scope)
            try:
                await flow(request)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # one flow's failure (the CP gave up during the handshake, the link dropped) ends that flow only
                self._event(
                    "flow failed",
                    error=True,
                    source=f"{request.source[0]}:{request.source[1]}",
                    destination=f"{request.destination[0]}:{request.destination[1]}",
                    reason=str(exc) or type(exc).__name__,
                )
            finally:
                context.flows.discard(scope)

    def _host_destination(self, address: IPv4Address) -> str:
        return self.aliases.get(address, str(address))

    async def _tcp_flow(self, request: Any) -> None:
        address, port = IPv4Address(request.destination[0]), int(request.destination[1])
        host = self._host_destination(address)
        try:
            with trio.fail_after(self.connect_timeout):
                upstream = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            # slirp/passt answer a refused or unreachable host port with an RST toward the client
            self.counters.refused += 1
            self._stack.refuse_flow(request)
            self._event(
                "tcp flow refused",
                error=True,
                source=f"{request.source[0]}:{request.source[1]}",
                destination=f"{address}:{port}",
                reason=getattr(exc, "strerror", None) or type(exc).__name__,
            )
            return
        try:
            stream = await self._stack.accept_flow(request, timeout=self.connect_timeout * 6)
        except BaseException:
            await trio.aclose_forcefully(upstream)
            raise
        self._event(
            "tcp_flow",
            source=f"{request.source[0]}:{request.source[1]}",
            destination=f"{address}:{port}",
            host=f"{host}:{port}",
        )
        await _splice(stream, upstream)

    async def _udp_flow(self, request: Any) -> None:
        address, port = IPv4Address(request.destination[0]), int(request.destination[1])
        source = (IPv4Address(request.source[0]), int(request.source[1]))
        host = self._host_destination(address)
        channel = self._stack.accept_udp_flow(
            request
        )  # the stack's endpoint of this flow, first datagrams in it
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        last = b""
        try:
            try:
                await sock.connect((host, port))
            except OSError as exc:
                self._event("udp flow refused", error=True, destination=f"{address}:{port}", reason=str(exc))
                self._udp_unreachable(source, (address, port), b"", Unreachable.NETWORK)
                return
            self._event("udp_flow", source=f"{source[0]}:{source[1]}", destination=f"{address}:{port}")
            async with trio.open_nursery() as nursery:

                async def down() -> None:
                    while True:
                        try:
                            data = await sock.recv(COPY_CHUNK)
                        except OSError as exc:
                            # the host's ICMP error for our last datagram (Linux reports it on the connected
                            # socket), passed on to the context as the router would (RFC 792)
                            code = {
                                errno.ECONNREFUSED: Unreachable.PORT,
                                errno.EHOSTUNREACH: Unreachable.HOST,
                            }
                            self._udp_unreachable(source, (address, port), last, code.get(exc.errno or 0, 0))
                            continue
                        await channel.send(data)

                nursery.start_soon(down)
                while True:
                    with trio.move_on_after(UDP_IDLE) as idle:
                        last, _ = await channel.receive_from()
                    if idle.cancelled_caught:
                        break
                    try:
                        await sock.send(last)
                    except OSError as exc:
                        code = {errno.ECONNREFUSED: Unreachable.PORT, errno.EHOSTUNREACH: Unreachable.HOST}
                        self._udp_unreachable(source, (address, port), last, code.get(exc.errno or 0, 0))
                nursery.cancel_scope.cancel()
        finally:
            sock.close()
            channel.close()

    def _udp_unreachable(
        self, source: tuple[IPv4Address, int], destination: tuple[IPv4Address, int], payload: bytes, code: int
    ) -> None:
        """ICMP destination unreachable toward the context about its datagram `payload` (RFC 792: the error
        quotes the offending datagram's header and first bytes, rebuilt here from the flow's addresses)."""
        original = Ipv4Packet(
            source[0],
            destination[0],
            UDP,
            UdpDatagram(source[1], destination[1], payload).encode(source[0], destination[0]),
        ).encode()
        message = destination_unreachable(code, original)
        self._to_context(
            Ipv4Packet(destination[0], source[0], ICMP, message.encode(), dont_fragment=False).encode()
        )

    async def add_forward(self, forward: PortForward) -> int:
        """Starts forwarding `forward` while the gateway runs (a card's UICC server channel opened); returns the
        host port it listens on. OSError when the host port cannot be had."""
        if self.mode is not PgwMode.NAT:
            raise ValueError(
                "port forwards are for --network nat; in tun mode the namespace reaches the contexts"
            )
        if self._nursery is None:
            raise RuntimeError("the gateway is not running")
        if forward in self._forward_scopes:
            return self.forward_ports[forward]
        await self._nursery.start(self._serve_forward, forward)
        return self.forward_ports[forward]

    def remove_forward(self, forward: PortForward) -> None:
        """Stops `forward` (the server channel closed): its listener and the connections it carries end."""
        scope = self._forward_scopes.pop(forward, None)
        if scope is not None:
            scope.cancel()
            self.forward_ports.pop(forward, None)
            self._event("pgw_forward_removed", destination=f"{forward.address}:{forward.port}")

    async def add_tun_relay(self, port: int, host: str, host_port: int) -> None:
        """tun mode (`bipsim cp --tun-relay`): the namespace's kernel listens at SERVER_ADDRESS:`port`, and each
        connection it accepts from a context is carried to `host`:`host_port` on the host both ways (half-close
        kept, as the nat mode's flows). OSError when the namespace refuses the listener."""
        from bipsim.net.tun import listen_in_namespace

        if self.tun is None or self._nursery is None:
            raise RuntimeError("--tun-relay needs --network tun and a running gateway")
        listener = await listen_in_namespace(self.tun.command, str(SERVER_ADDRESS), port)

        async def carry(inside: trio.SocketStream) -> None:
            try:
                outside = await trio.open_tcp_stream(host, host_port)
            except OSError as exc:
                self._event(
                    str(exc), error=True, relay=f"{SERVER_ADDRESS}:{port}", host=f"{host}:{host_port}"
                )
                await trio.aclose_forcefully(inside)
                return
            await _splice(inside, outside)

        self._nursery.start_soon(
            partial(trio.serve_listeners, handler_nursery=self._nursery), carry, [listener]
        )
        self.tracer.emit(
            Actor.PGW,
            Actor.PGW,
            Layer.APP,
            f"tun relay: {SERVER_ADDRESS}:{port} in the namespace to {host}:{host_port}",
            kind=Kind.APP_EVENT,
            fields={
                "event": "tun_relay",
                "inside": f"{SERVER_ADDRESS}:{port}",
                "host": f"{host}:{host_port}",
            },
        )

    async def _serve_forward(
        self, forward: PortForward, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(forward.host_port, host=forward.host)
        self.forward_ports[forward] = listeners[0].socket.getsockname()[1]
        self._event(
            "pgw_forward",
            host=f"{forward.host}:{self.forward_ports[forward]}",
            destination=f"{forward.address}:{forward.port}",
        )

        async def handler(client: trio.SocketStream) -> None:
            await self._forwarded(forward, client)

        with trio.CancelScope() as scope:
            self._forward_scopes[forward] = scope
            try:
                async with trio.open_nursery() as nursery:
                    # the listeners end with the scope; connections they carried end with their context
                    await nursery.start(trio.serve_listeners, handler, listeners)
                    task_status.started()
            finally:
                for listener in listeners:
                    await trio.aclose_forcefully(listener)

    async def _forwarded(self, forward: PortForward, client: trio.abc.HalfCloseableStream) -> None:
        context = self._contexts.get(forward.address)
        async with client:
            if context is None:
                self._event(
                    "forward to no context", error=True, destination=f"{forward.address}:{forward.port}"
                )
                return
            with trio.CancelScope() as scope:
                context.flows.add(scope)
                try:
                    try:
                        stream = await self._stack.open_tcp(
                            forward.address, forward.port, timeout=self.connect_timeout
                        )
                    except (OSError, trio.BrokenResourceError) as exc:
                        self._event(
                            "forward refused",
                            error=True,
                            destination=f"{forward.address}:{forward.port}",
                            reason=str(exc),
                        )
                        return
                    await _splice(stream, client)
                finally:
                    context.flows.discard(scope)


async def _splice(a: trio.abc.HalfCloseableStream, b: trio.abc.HalfCloseableStream) -> None:
    """Copies both ways with half-close (a FIN one way is send_eof the other way) until both directions ended;
    a reset or failure on either side ends both at once (an RST on the CP's side)."""

    async def copy(source: trio.abc.HalfCloseableStream, sink: trio.abc.HalfCloseableStream) -> None:
        while True:
            data = await source.receive_some(COPY_CHUNK)
            if not data:
                await sink.send_eof()
                return
            await sink.send_all(data)

    failed = False
    try:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(copy, a, b)
                nursery.start_soon(copy, b, a)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            failed = True
    except BaseException:
        # cancelled (the context was deleted): close without waiting for any peer
        await trio.aclose_forcefully(a)
        await trio.aclose_forcefully(b)
        raise
    if failed:
        await trio.aclose_forcefully(a)
        await trio.aclose_forcefully(b)
    else:
        await a.aclose()
        await b.aclose()
