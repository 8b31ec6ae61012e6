"""The CP's own IPv4 host stack (RFC 1122 "Requirements for Internet Hosts"; RFC 791, 792, 768 and 9293 through
net/ipv4.py, net/icmp.py, net/udp.py and net/tcp.py): `IpStack` owns one IPv4 address (a PDP context's, or in
promiscuous mode the packet gateway's "everyone else" side) and turns packets from the link into TCP streams and
UDP sockets, and their writes into packets for the link.

What it does, and where the rule comes from:

- Demultiplexing by protocol and by 4-tuple (RFC 9293 section 3.10.7): a segment for a known connection goes to
  its `TcpConnection` (net/tcp.py, the sans-IO state machine); a SYN to a listening port starts a passive one; any
  other segment to no connection is answered by a RST as RFC 9293 section 3.10.7.1 says (none for a RST).
- UDP to a closed port is answered by ICMP port unreachable, an unknown protocol by protocol unreachable, an echo
  request by its reply (RFC 1122 sections 3.2.2 and 4.1.3.1), never about an ICMP error, a broadcast or a later
  fragment (net/icmp.py `may_answer_with_error`), and at most `icmp_errors_per_second` errors (100) a second
  (RFC 1812 section 4.3.2.8), so a flood toward closed ports does not fill the radio with answers. A destination
  unreachable about a connection still in SYN-SENT fails its `open_tcp` (RFC 1122 section 4.2.3.9 lets a host
  abort on it; with one radio bearer and no other route, waiting out the SYN retries tells the card nothing more).
- Ephemeral ports come from 49152-65535 (RFC 6335 section 6) and initial sequence numbers from the stack's
  random generator: seeded, so a run repeats exactly, and unpredictable from the outside in the spirit of
  RFC 6528 (a peer cannot guess the next connection's ISS from this one's).
- Fragments are reassembled with the bounds of net/ipv4.py `Reassembler`; a datagram that timed out after its
  first fragment came is answered with ICMP time exceeded, code 1 (RFC 792).
- Timers: one task (`run`) sleeps until the earliest deadline of all connections (RTO, delayed ACK, persist,
  TIME-WAIT) and of the reassembly, and fires the due ones; the connections decide what a timer means.
- Promiscuous mode (the PGW in `nat` mode terminates every flow of a context): a new TCP SYN or UDP datagram to
  any address is offered to `on_flow` as a `FlowRequest`; the owner accepts it (`accept_flow`,
  `accept_udp_flow`: the stack answers as that destination) or refuses it (`refuse_flow`: RST, or ICMP port
  unreachable). A flow its owner has not answered in 60 seconds is forgotten.
- `abort_all(reason)`: the bearer is gone (PDP context deactivated), so nothing can be sent: every connection goes
  to CLOSED at once without a RST, and streams, sockets and listeners raise BrokenResourceError("link dropped").

Every packet sent or received is one trace event with its exact bytes (docs/protocols.md, "Traces": kinds
`tcp.syn`, `tcp.segment`, `tcp.retransmit`, `udp.datagram`, `icmp.message`, `ip.fragment`, `ip.packet`,
`ip.dropped`). Bad input (a wrong checksum, a truncated header, impossible flags, a refused fragment) is dropped
with an `ip.dropped` event; nothing raises out of `receive_packet`.
"""

from __future__ import annotations

import errno
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

import trio

from bipsim.net.errors import PacketError
from bipsim.net.icmp import (
    IcmpMessage,
    IcmpType,
    TimeExceeded,
    Unreachable,
    destination_unreachable,
    echo_reply,
    echo_request,
    may_answer_with_error,
    time_exceeded,
)
from bipsim.net.ipv4 import ICMP, TCP, UDP, Ipv4Packet, Reassembler, ReassemblyError, fragment
from bipsim.net.tcp import (
    Connected,
    Rejected,
    Reset,
    Retransmitted,
    TcpConfig,
    TcpConnection,
    TcpState,
    TimedOut,
    reset_for,
)
from bipsim.net.tcp_segment import TcpFlags, TcpSegment
from bipsim.net.tcp_stream import TcpStream
from bipsim.net.udp import UdpDatagram
from bipsim.net.udp_socket import DEFAULT_QUEUE, Address, UdpSocket
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer

__all__ = ["FlowRequest", "IpStack", "TcpHandle", "TcpListener", "EPHEMERAL_PORTS"]

EPHEMERAL_PORTS = range(49152, 65536)  # RFC 6335 section 6: the dynamic ports
MAX_PENDING_FLOWS = 64  # flows offered to on_flow and not yet answered
MAX_PENDING_DATAGRAMS = 8  # UDP datagrams kept for a flow not yet answered
DEFAULT_BACKLOG = 16
ICMP_ERRORS_PER_SECOND = (
    100  # Linux's icmp_ratelimit is one per 1 ms per destination with a burst; ours is global
)
PENDING_FLOW_TIMEOUT = 60.0  # a flow the owner never answered is forgotten (its SYNs have stopped by then)

ConnectionKey = tuple[IPv4Address, int, IPv4Address, int]  # local address, local port, remote address, port


@dataclass(frozen=True)
class FlowRequest:
    """A new flow seen in promiscuous mode: `protocol` (6 TCP, 17 UDP), to `destination`, from `source`."""

    protocol: int
    destination: Address
    source: Address


class TcpHandle:
    """One TCP connection as the stack drives it; the stream (net/tcp_stream.py) works through it.

    The stream calls the connection's `send`/`read`/`shutdown`/`abort` with `now()`, then `kick()` so that the
    stack sends what the connection emitted and re-arms its timer; it waits for anything new with
    `wait_changed()`. `failure` is set when the connection ended for a reason outside TCP (the link dropped,
    an ICMP error): the stream raises it."""

    def __init__(self, stack: IpStack, connection: TcpConnection, key: ConnectionKey) -> None:
        self.connection = connection
        self.key = key
        self.failure: BaseException | None = None
        self.connect_error: OSError | None = None  # why the handshake failed (RST, SYN retries out)
        self.connected = False
        self.listener: TcpListener | None = None
        self._stack = stack
        self._changed = trio.Event()

    @property
    def local(self) -> Address:
        return (self.key[0], self.key[1])

    @property
    def remote(self) -> Address:
        return (self.key[2], self.key[3])

    def now(self) -> float:
        return self._stack.now()

    def kick(self) -> None:
        """Sends what the connection has to send, delivers its events, re-arms the timer."""
        self._stack._pump(self)

    async def wait_changed(self) -> None:
        """Waits for the next change (a segment in, a timer, a kick, the link dropped)."""
        await self._changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()


class TcpListener(trio.abc.Listener[TcpStream]):
    """A listening TCP port (`IpStack.listen_tcp`); `accept` returns each connection once established."""

    def __init__(self, stack: IpStack, local: Address, backlog: int) -> None:
        self._stack = stack
        self.local = local
        self.backlog = backlog
        self.embryonic = 0  # connections in SYN-RECEIVED for this port
        self._send, self._receive = trio.open_memory_channel[TcpStream](backlog)
        self._broken: str | None = None
        self._closed = False

    @property
    def full(self) -> bool:
        return self.embryonic + self._send.statistics().current_buffer_used >= self.backlog

    async def accept(self) -> TcpStream:
        if self._broken is not None:
            raise trio.BrokenResourceError(f"link dropped: {self._broken}")
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._broken is not None:
                raise trio.BrokenResourceError(f"link dropped: {self._broken}") from None
            raise trio.ClosedResourceError("listener closed") from None

    def _established(self, stream: TcpStream) -> bool:
        try:
            self._send.send_nowait(stream)
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        return True

    def _fail(self, reason: str) -> None:
        if self._broken is None and not self._closed:
            self._broken = reason
            self._send.close()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._stack._release_listener(self)
            self._send.close()
            # the connections that came up but were never accepted are aborted (RST), as a closed socket's are
            while True:
                try:
                    stream = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                await stream.aclose()
        await trio.lowlevel.checkpoint()


@dataclass
class _PendingFlow:
    request: FlowRequest
    packet: Ipv4Packet  # the SYN's or first datagram's packet (what a refusal quotes)
    segment: TcpSegment | None = None
    datagrams: list[tuple[bytes, Address]] = field(default_factory=list)
    offered: float = 0.0


class IpStack:
    """One IPv4 address's host stack (see the module's docstring). `transmit(packet)` must not block."""

    def __init__(
        self,
        address: IPv4Address,
        transmit: Callable[[bytes], None],
        *,
        tracer: Tracer = NULL_TRACER,
        actor: Actor = Actor.CP,
        peer: Actor = Actor.NET,
        rng: random.Random | None = None,
        promiscuous: bool = False,
        mss: int = 1460,
        mtu: int = 1500,
        clock: Callable[[], float] | None = None,
        udp_queue: int = DEFAULT_QUEUE,
        backlog: int = DEFAULT_BACKLOG,
        reassembler: Reassembler | None = None,
        tcp_config: TcpConfig | None = None,
    ) -> None:
        self.address = IPv4Address(address)
        self._transmit = transmit
        self.tracer = tracer
        # the null tracer records nothing: then the fields and summaries of a packet are not even built (they cost
        # as much CPU as the TCP rules themselves)
        self._tracing = tracer is not NULL_TRACER
        self.actor = actor
        self.peer = peer
        self.rng = rng if rng is not None else random.Random()
        self.promiscuous = promiscuous
        self.mss = mss
        self.mtu = mtu
        self.tcp_config = (
            tcp_config  # every connection's knobs (net/tcp.py); None: the RFC defaults and `mss`
        )
        self._clock = clock if clock is not None else trio.current_time
        self.udp_queue = udp_queue
        self.backlog = backlog
        self.on_flow: Callable[[FlowRequest], None] | None = None
        self.reassembler = reassembler if reassembler is not None else Reassembler()
        self._ident = self.rng.getrandbits(16)
        self._connections: dict[ConnectionKey, TcpHandle] = {}
        self._listeners: dict[Address, TcpListener] = {}
        self._udp_bound: dict[Address, UdpSocket] = {}
        self._udp_flows: dict[ConnectionKey, UdpSocket] = {}
        self._pending: dict[tuple[int, ConnectionKey], _PendingFlow] = {}
        self._pings: dict[tuple[int, int], trio.Event] = {}
        self._ping_ident = self.rng.getrandbits(16)
        self._ping_seq = 0
        self._down: str | None = None
        self._released = False  # the link went in an orderly way (abort_all(orderly=True) with nothing open)
        self._wake = trio.Event()
        self._armed_at = math.inf
        self.counters = {"sent": 0, "received": 0, "dropped": 0, "icmp_limited": 0, "tcp_rejected": 0}
        self.icmp_errors_per_second = ICMP_ERRORS_PER_SECOND
        self._icmp_tokens = float(ICMP_ERRORS_PER_SECOND)
        self._icmp_refilled = -math.inf

    # ----------------------------------------------------------------------------------------------- the clock

    def now(self) -> float:
        return self._clock()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The timer wheel: fires every connection's and the reassembly's due timers. Runs until cancelled."""
        task_status.started()
        while True:
            deadline = self._next_deadline()
            self._wake = trio.Event()
            self._armed_at = deadline
            with trio.move_on_at(deadline):
                await self._wake.wait()
            self._fire(self.now())

    def _next_deadline(self) -> float:
        deadlines = [h.connection.next_deadline() for h in self._connections.values()]
        deadlines.append(self.reassembler.next_deadline())
        if self._pending:
            deadlines.append(min(p.offered for p in self._pending.values()) + PENDING_FLOW_TIMEOUT)
        return min((d for d in deadlines if d is not None), default=math.inf)

    def _rearm(self, deadline: float | None) -> None:
        if deadline is not None and deadline < self._armed_at:
            self._armed_at = deadline
            self._wake.set()

    def _fire(self, now: float) -> None:
        for handle in list(self._connections.values()):
            deadline = handle.connection.next_deadline()
            if deadline is not None and deadline <= now:
                handle.connection.on_timer(now)
                self._pump(handle)
        for key, pending in list(self._pending.items()):
            if now >= pending.offered + PENDING_FLOW_TIMEOUT:
                del self._pending[key]  # the owner never answered (a bug of its own): the flow is let go
        for expired in self.reassembler.expire(now):
            first = expired.first
            if first is not None and may_answer_with_error(first) and self._is_ours(first.destination):
                original = first.encode()
                self._send_icmp(
                    first.destination, first.source, time_exceeded(TimeExceeded.REASSEMBLY, original)
                )

    # ---------------------------------------------------------------------------------------------- receiving

    def receive_packet(self, packet: bytes) -> None:
        """One IPv4 packet from the link. Never raises: bad input is dropped with an `ip.dropped` event."""
        self.counters["received"] += 1
        try:
            self._receive(bytes(packet))
        except Exception as exc:  # a bug must not take the modem down with the card's session; say it
            self._drop(bytes(packet), f"stack error: {exc!r}", Layer.IP)

    def _is_ours(self, address: IPv4Address) -> bool:
        return self.promiscuous or address == self.address

    def _receive(self, data: bytes) -> None:
        if self._down is not None:
            if self._released:
                # after an orderly release a straggler (the peer's last ACK or FIN) is expected, not a fault
                self.counters["dropped"] += 1
                self._trace(
                    Kind.IP_DROPPED,
                    Layer.IP,
                    data,
                    {"reason": f"link released: {self._down}", "length": len(data)},
                    f"dropped: link released: {self._down}",
                    sent=False,
                )
            else:
                self._drop(data, f"link dropped: {self._down}", Layer.IP)
            return
        try:
            packet = Ipv4Packet.decode(data)
        except PacketError as exc:
            self._drop(data, str(exc), Layer.IP)
            return
        if not self._is_ours(packet.destination) or _not_unicast(packet.destination):
            self._drop(data, f"not addressed to {self.address}", Layer.IP)
            return
        if _not_unicast(packet.source):
            # RFC 1122 3.2.1.3: a source that cannot be one host is silently discarded (nothing may answer it)
            self._drop(data, f"invalid source address {packet.source}", Layer.IP)
            return
        if packet.is_fragment:
            try:
                whole = self.reassembler.push(packet, self.now())
            except ReassemblyError as exc:
                self._drop(data, str(exc), Layer.IP, reason_tag=exc.reason)
                return
            self._trace_fragment(packet, data, sent=False, complete=whole is not None)
            self._rearm(self.reassembler.next_deadline())
            if whole is None:
                return
            packet, data = whole, b""
        if packet.protocol == TCP:
            self._receive_tcp(packet, data)
        elif packet.protocol == UDP:
            self._receive_udp(packet, data)
        elif packet.protocol == ICMP:
            self._receive_icmp(packet, data)
        else:
            self._trace_packet(data, packet, sent=False, summary=f"IP protocol {packet.protocol}")
            if may_answer_with_error(packet):
                original = data or packet.encode()
                message = destination_unreachable(Unreachable.PROTOCOL, original)
                self._send_icmp(packet.destination, packet.source, message)

    # ------------------------------------------------------------------------------------------------------ TCP

    def _receive_tcp(self, packet: Ipv4Packet, data: bytes) -> None:
        try:
            segment = TcpSegment.decode(packet.payload, packet.source, packet.destination)
        except PacketError as exc:
            self._drop(data or None, str(exc), Layer.TCP)
            return
        flags = segment.flags
        if TcpFlags.SYN in flags and TcpFlags.FIN in flags or TcpFlags.SYN in flags and TcpFlags.RST in flags:
            # no state of RFC 9293 accepts these together; a scanner's probe, dropped as Linux does
            self._drop(data or None, f"impossible TCP flags {flags.names()}", Layer.TCP)
            return
        if data:
            self._trace_tcp(segment, packet, data, sent=False)
        key = (packet.destination, segment.destination_port, packet.source, segment.source_port)
        handle = self._connections.get(key)
        if handle is not None:
            handle.connection.receive(segment, self.now())
            self._pump(handle)
            return
        if TcpFlags.RST in flags:
            return  # RFC 9293 3.10.7.1: an incoming RST to no connection is discarded
        if TcpFlags.SYN in flags and TcpFlags.ACK not in flags:
            listener = self._listeners.get((packet.destination, segment.destination_port))
            if listener is not None:
                if listener.full:
                    self._drop(data or None, "listen queue full", Layer.TCP)
                    return
                self._accept_syn(segment, key, listener)
                return
            if self.promiscuous and self.on_flow is not None:
                self._offer(TCP, key, packet, segment=segment)
                return
        self._reset_for(packet, segment)

    def _accept_syn(self, syn: TcpSegment, key: ConnectionKey, listener: TcpListener | None) -> TcpHandle:
        connection = TcpConnection.passive(
            syn,
            (key[0], key[1]),
            (key[2], key[3]),
            iss=self._iss(),
            now=self.now(),
            mss=self.mss,
            config=self.tcp_config,
        )
        handle = TcpHandle(self, connection, key)
        handle.listener = listener
        if listener is not None:
            listener.embryonic += 1
        self._connections[key] = handle
        self._pump(handle)
        return handle

    def _reset_for(self, packet: Ipv4Packet, segment: TcpSegment) -> None:
        """RFC 9293 3.10.7.1 (CLOSED): <SEQ=SEG.ACK><CTL=RST>, or <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>."""
        reset = reset_for(segment)
        if reset is not None:
            self._send_tcp(packet.destination, packet.source, reset)

    def _pump(self, handle: TcpHandle) -> None:
        """After anything touched a connection: send its segments, act on its events, wake its stream."""
        connection = handle.connection
        events = connection.events()
        segments = connection.outgoing()
        if self._down is None and handle.failure is None:
            retransmitted = {e.seq: e for e in events if isinstance(e, Retransmitted)}
            local, remote = handle.key[0], handle.key[2]
            for segment in segments:
                self._send_tcp(local, remote, segment, retransmitted.get(segment.seq))
        for event in events:
            if isinstance(event, Rejected):
                # a segment the connection's rules refused (RFC 9293 3.10.7, RFC 5961) or out-of-order data past
                # the queue's cap: TCP's own answer (an ACK, a challenge ACK, an RST or nothing) is already out;
                # the trace says why, without the error flag, as loss and retransmission cause some normally
                self.counters["tcp_rejected"] += 1
                self._trace(
                    Kind.IP_DROPPED,
                    Layer.TCP,
                    None,
                    {"reason": event.reason, "answered": event.answered},
                    f"TCP segment refused: {event.reason}",
                    sent=False,
                )
            if isinstance(event, Reset) and not handle.connected:
                handle.connect_error = (
                    ConnectionRefusedError(errno.ECONNREFUSED, f"connection refused: {event.reason}")
                    if event.refused
                    else ConnectionResetError(errno.ECONNRESET, f"connection reset: {event.reason}")
                )
            elif isinstance(event, TimedOut) and not handle.connected:
                handle.connect_error = TimeoutError(errno.ETIMEDOUT, f"connection timed out: {event.reason}")
            if isinstance(event, Connected) and not handle.connected:
                handle.connected = True
                listener = handle.listener
                if listener is not None:
                    listener.embryonic -= 1
                    handle.listener = None
                    if not listener._established(TcpStream(handle)):
                        # the accept queue filled or closed meanwhile: the connection cannot be taken
                        connection.abort(self.now())
                        self._pump(handle)
                        return
        if connection.state is TcpState.CLOSED:
            self._forget(handle)
        handle._notify()
        self._rearm(connection.next_deadline())

    def _forget(self, handle: TcpHandle) -> None:
        if self._connections.get(handle.key) is handle:
            del self._connections[handle.key]
        if handle.listener is not None:
            handle.listener.embryonic -= 1
            handle.listener = None

    async def open_tcp(
        self, address: IPv4Address | str, port: int, *, timeout: float | None = None
    ) -> TcpStream:
        """Connects to (address, port) from an ephemeral port.

        Raises ConnectionRefusedError on a RST, TimeoutError when the SYN retries run out (or `timeout` passes),
        OSError(ENETUNREACH/EHOSTUNREACH/ECONNREFUSED) on an ICMP destination unreachable, BrokenResourceError
        when the link drops meanwhile."""
        remote = (IPv4Address(address), port)
        if not 0 < port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"TCP port {port} out of range")
        self._check_up()
        local_port = self._ephemeral(lambda p: all(k[1] != p for k in self._connections))
        key = (self.address, local_port, remote[0], remote[1])
        connection = TcpConnection.active(
            (self.address, local_port),
            remote,
            iss=self._iss(),
            now=self.now(),
            mss=self.mss,
            config=self.tcp_config,
        )
        handle = TcpHandle(self, connection, key)
        self._connections[key] = handle
        self._pump(handle)
        await self._wait_connected(handle, timeout)
        return TcpStream(handle)

    async def _wait_connected(self, handle: TcpHandle, timeout: float | None) -> None:
        connection = handle.connection
        done = False
        try:
            with trio.fail_after(math.inf if timeout is None else timeout):
                while not handle.connected:
                    if handle.failure is not None:
                        raise handle.failure
                    if connection.state is TcpState.CLOSED:
                        raise handle.connect_error or ConnectionError(connection.error or "connection closed")
                    await handle.wait_changed()
            done = True
        except trio.TooSlowError:
            raise TimeoutError(f"TCP connect to {handle.remote[0]}:{handle.remote[1]} timed out") from None
        finally:
            if not done and connection.state is not TcpState.CLOSED:
                connection.abort(self.now())  # RFC 9293 ABORT: in SYN-SENT no RST, the TCB just goes
                self._pump(handle)
                self._forget(handle)

    async def listen_tcp(self, port: int, *, address: IPv4Address | None = None) -> TcpListener:
        """A listener on `port` of the stack's address (or `address` in promiscuous mode)."""
        await trio.lowlevel.checkpoint()
        self._check_up()
        local = (self.address if address is None else IPv4Address(address), port)
        if local in self._listeners:
            raise OSError(errno.EADDRINUSE, f"TCP port {port} already listening")
        listener = TcpListener(self, local, self.backlog)
        self._listeners[local] = listener
        return listener

    def _release_listener(self, listener: TcpListener) -> None:
        if self._listeners.get(listener.local) is listener:
            del self._listeners[listener.local]

    # ------------------------------------------------------------------------------------------------------ UDP

    async def open_udp(self, port: int = 0) -> UdpSocket:
        """A UDP socket on `port` of the stack's address (an ephemeral port for 0)."""
        await trio.lowlevel.checkpoint()
        self._check_up()
        if port == 0:
            port = self._ephemeral(lambda p: (self.address, p) not in self._udp_bound)
        elif (self.address, port) in self._udp_bound:
            raise OSError(errno.EADDRINUSE, f"UDP port {port} in use")
        socket = UdpSocket(self, (self.address, port), queue=self.udp_queue)
        self._udp_bound[socket.local] = socket
        return socket

    def send_udp(self, local: Address, data: bytes, remote: Address) -> None:
        """UdpSocket's way out: one datagram, fragmented when it does not fit the MTU (RFC 791)."""
        self._check_up()
        datagram = UdpDatagram(local[1], remote[1], data)
        try:
            payload = datagram.encode(local[0], remote[0])
            packet = Ipv4Packet(
                local[0], remote[0], UDP, payload, identification=self._next_id(), dont_fragment=False
            )
            pieces = fragment(packet, self.mtu)
        except PacketError as exc:
            raise OSError(errno.EMSGSIZE, str(exc)) from None
        if len(pieces) == 1:
            raw = packet.encode()
            self._trace(
                Kind.UDP_DATAGRAM,
                Layer.UDP,
                raw,
                _udp_fields(packet, datagram),
                _udp_summary(packet, datagram),
                sent=True,
            )
            self._send_raw(raw)
            return
        for piece in pieces:
            raw = piece.encode()
            self._trace_fragment(piece, raw, sent=True, complete=False)
            self._send_raw(raw)

    def release_udp(self, socket: UdpSocket) -> None:
        if self._udp_bound.get(socket.local) is socket:
            del self._udp_bound[socket.local]
        if socket.remote is not None:
            key = (socket.local[0], socket.local[1], socket.remote[0], socket.remote[1])
            if self._udp_flows.get(key) is socket:
                del self._udp_flows[key]

    def _receive_udp(self, packet: Ipv4Packet, data: bytes) -> None:
        try:
            datagram = UdpDatagram.decode(packet.payload, packet.source, packet.destination)
        except PacketError as exc:
            self._drop(data or None, str(exc), Layer.UDP)
            return
        if data:
            self._trace(
                Kind.UDP_DATAGRAM,
                Layer.UDP,
                data,
                _udp_fields(packet, datagram),
                _udp_summary(packet, datagram),
                sent=False,
            )
        key = (packet.destination, datagram.destination_port, packet.source, datagram.source_port)
        source = (packet.source, datagram.source_port)
        socket = self._udp_flows.get(key) or self._udp_bound.get(
            (packet.destination, datagram.destination_port)
        )
        if socket is not None:
            if not socket.deliver(datagram.payload, source):
                self._drop(
                    data or None, f"UDP receive queue of port {datagram.destination_port} full", Layer.UDP
                )
            return
        if self.promiscuous and self.on_flow is not None:
            pending = self._pending.get((UDP, key))
            if pending is not None:
                if len(pending.datagrams) < MAX_PENDING_DATAGRAMS:
                    pending.datagrams.append((datagram.payload, source))
                return
            self._offer(UDP, key, packet, datagram=(datagram.payload, source))
            return
        if may_answer_with_error(packet):
            message = destination_unreachable(Unreachable.PORT, data or packet.encode())
            self._send_icmp(packet.destination, packet.source, message)

    # ------------------------------------------------------------------------------------------- promiscuous

    def _offer(
        self,
        protocol: int,
        key: ConnectionKey,
        packet: Ipv4Packet,
        *,
        segment: TcpSegment | None = None,
        datagram: tuple[bytes, Address] | None = None,
    ) -> None:
        if (protocol, key) in self._pending:
            return  # a retransmitted SYN while the owner decides
        if len(self._pending) >= MAX_PENDING_FLOWS:
            self._drop(None, "too many flows waiting for the gateway", Layer.IP)
            return
        request = FlowRequest(protocol, (key[0], key[1]), (key[2], key[3]))
        pending = _PendingFlow(request, packet, segment=segment, offered=self.now())
        if datagram is not None:
            pending.datagrams.append(datagram)
        self._pending[(protocol, key)] = pending
        self._rearm(pending.offered + PENDING_FLOW_TIMEOUT)
        assert self.on_flow is not None
        self.on_flow(request)

    def _take_pending(self, request: FlowRequest) -> _PendingFlow:
        key = (request.destination[0], request.destination[1], request.source[0], request.source[1])
        pending = self._pending.pop((request.protocol, key), None)
        if pending is None:
            raise ValueError(f"no flow waiting for an answer: {request}")
        return pending

    async def accept_flow(self, request: FlowRequest, *, timeout: float | None = None) -> TcpStream:
        """Answers a TCP flow's SYN as its destination and returns the stream once established."""
        if request.protocol != TCP:
            raise ValueError("accept_flow takes TCP flows; use accept_udp_flow for UDP")
        pending = self._take_pending(request)
        assert pending.segment is not None
        key = (request.destination[0], request.destination[1], request.source[0], request.source[1])
        handle = self._accept_syn(pending.segment, key, None)
        await self._wait_connected(handle, timeout)
        return TcpStream(handle)

    def accept_udp_flow(self, request: FlowRequest) -> UdpSocket:
        """A socket for a UDP flow: it gets the flow's datagrams (the first ones included) and `send` answers
        from the flow's destination."""
        if request.protocol != UDP:
            raise ValueError("accept_udp_flow takes UDP flows; use accept_flow for TCP")
        pending = self._take_pending(request)
        socket = UdpSocket(self, request.destination, remote=request.source, queue=self.udp_queue)
        key = (request.destination[0], request.destination[1], request.source[0], request.source[1])
        self._udp_flows[key] = socket
        for payload, source in pending.datagrams:
            socket.deliver(payload, source)
        return socket

    def refuse_flow(self, request: FlowRequest) -> None:
        """Refuses a flow: a RST for a SYN, ICMP port unreachable for a datagram."""
        pending = self._take_pending(request)
        if pending.segment is not None:
            self._reset_for(pending.packet, pending.segment)
        elif may_answer_with_error(pending.packet):
            message = destination_unreachable(Unreachable.PORT, pending.packet.encode())
            self._send_icmp(pending.packet.destination, pending.packet.source, message)

    # ----------------------------------------------------------------------------------------------------- ICMP

    def _receive_icmp(self, packet: Ipv4Packet, data: bytes) -> None:
        try:
            message = IcmpMessage.decode(packet.payload)
        except PacketError as exc:
            self._drop(data or None, str(exc), Layer.IP)
            return
        if data:
            self._trace_icmp(packet, message, data, sent=False)
        if message.type == IcmpType.ECHO_REQUEST:
            self._send_icmp(packet.destination, packet.source, echo_reply(message))
        elif message.type == IcmpType.ECHO_REPLY:
            waiter = self._pings.get((message.identifier, message.sequence))
            if waiter is not None:
                waiter.set()
        elif message.type == IcmpType.DESTINATION_UNREACHABLE:
            self._icmp_unreachable(message, data)

    def _icmp_unreachable(self, message: IcmpMessage, data: bytes) -> None:
        quoted = message.quoted()
        if quoted is None or quoted.protocol != TCP or len(quoted.payload) < 8:
            return
        sport = int.from_bytes(quoted.payload[0:2], "big")
        dport = int.from_bytes(quoted.payload[2:4], "big")
        handle = self._connections.get((quoted.source, sport, quoted.destination, dport))
        if handle is None or handle.connected:
            # RFC 1122 4.2.3.9: on an established connection these are soft errors; TCP's timers decide
            return
        # RFC 5927 4.1: only an error quoting a sequence number we have sent and not had acknowledged
        # (SND.UNA <= SEG.SEQ < SND.NXT) is about this connection; anyone else's would be a blind reset
        conn = handle.connection
        quoted_seq = int.from_bytes(quoted.payload[4:8], "big")
        if (quoted_seq - conn.snd_una) & 0xFFFFFFFF >= conn.snd_max - conn.snd_una:
            self._drop(
                data or None,
                f"ICMP destination unreachable quoting sequence number {quoted_seq}, outside the window",
                Layer.IP,
            )
            return
        number = {
            int(Unreachable.NETWORK): errno.ENETUNREACH,
            int(Unreachable.HOST): errno.EHOSTUNREACH,
            int(Unreachable.PORT): errno.ECONNREFUSED,
        }.get(message.code, errno.ENETUNREACH)
        handle.failure = OSError(
            number, f"ICMP destination unreachable (code {message.code}) from the network"
        )
        handle.connection.drop(f"ICMP destination unreachable, code {message.code}")
        self._pump(handle)
        self._forget(handle)

    async def ping(
        self, address: IPv4Address | str, *, data: bytes = b"bipsim", timeout: float = 5.0
    ) -> float:
        """Sends an echo request and returns the round-trip time; TimeoutError when no reply comes."""
        self._check_up()
        self._ping_seq = (self._ping_seq + 1) & 0xFFFF
        key = (self._ping_ident, self._ping_seq)
        waiter = self._pings[key] = trio.Event()
        start = self.now()
        try:
            self._send_icmp(self.address, IPv4Address(address), echo_request(*key, data))
            with trio.fail_after(timeout):
                await waiter.wait()
        except trio.TooSlowError:
            raise TimeoutError(f"no echo reply from {address}") from None
        finally:
            del self._pings[key]
        self._check_up()
        return self.now() - start

    def _send_icmp(self, source: IPv4Address, destination: IPv4Address, message: IcmpMessage) -> None:
        if message.is_error and not self._icmp_error_allowed():
            self.counters["icmp_limited"] += 1
            return
        packet = Ipv4Packet(
            source, destination, ICMP, message.encode(), identification=self._next_id(), dont_fragment=False
        )
        raw = packet.encode()
        self._trace_icmp(packet, message, raw, sent=True)
        self._send_raw(raw)

    def _icmp_error_allowed(self) -> bool:
        """RFC 1812 4.3.2.8 and RFC 1122 3.2.2: the rate of ICMP errors is limited, so a peer that floods closed
        ports cannot make the radio carry as many errors back (a token bucket of `icmp_errors_per_second`)."""
        now = self.now()
        rate = self.icmp_errors_per_second
        self._icmp_tokens = min(float(rate), self._icmp_tokens + (now - self._icmp_refilled) * rate)
        self._icmp_refilled = now
        if self._icmp_tokens < 1.0:
            return False
        self._icmp_tokens -= 1.0
        return True

    # ---------------------------------------------------------------------------------------------- the link

    def abort_all(self, reason: str, *, orderly: bool = False) -> None:
        """The bearer went away: nothing can be sent any more. Every connection is CLOSED at once (no RST),
        and every stream, socket, listener and ping raises trio.BrokenResourceError("link dropped: <reason>").

        `orderly` says the bearer's owner released it on purpose (the channel was closed): the trace shows an
        error only if a connection was still open then (one whose FIN the peer had not acknowledged: data may be lost)."""
        if self._down is not None:
            return
        self._down = reason
        # a connection whose FIN the peer acknowledged lost nothing we sent: only the others are a fault
        live = [handle for handle in self._connections.values() if not handle.connection.fin_acked]
        error = not orderly or bool(live)
        self._released = not error
        for handle in list(self._connections.values()):
            handle.failure = trio.BrokenResourceError(f"link dropped: {reason}")
            handle.connection.drop(reason)
            self._pump(handle)
            self._forget(handle)
        for socket in [*self._udp_bound.values(), *self._udp_flows.values()]:
            socket.fail(reason)
        for listener in list(self._listeners.values()):
            listener._fail(reason)
        self._pending.clear()
        for waiter in self._pings.values():
            waiter.set()
        self._trace(
            Kind.IP_DROPPED,
            Layer.IP,
            None,
            {"reason": f"link dropped: {reason}", "orderly": orderly, "open_connections": len(live)},
            f"link dropped: {reason}" if error else f"link released: {reason}",
            sent=False,
            error=error,
        )

    def _check_up(self) -> None:
        if self._down is not None:
            raise trio.BrokenResourceError(f"link dropped: {self._down}")

    def _send_raw(self, raw: bytes) -> None:
        self.counters["sent"] += 1
        try:
            self._transmit(raw)
        except (trio.ClosedResourceError, trio.BrokenResourceError, OSError) as exc:
            self._drop(raw, f"link refused the packet: {exc}", Layer.IP, sent=True)

    def _send_tcp(
        self,
        source: IPv4Address,
        destination: IPv4Address,
        segment: TcpSegment,
        retransmitted: Retransmitted | None = None,
    ) -> None:
        packet = Ipv4Packet(
            source, destination, TCP, segment.encode(source, destination), identification=self._next_id()
        )
        raw = packet.encode()
        self._trace_tcp(segment, packet, raw, sent=True, retransmitted=retransmitted)
        self._send_raw(raw)

    def _next_id(self) -> int:
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def _iss(self) -> int:
        return self.rng.getrandbits(32)

    def _ephemeral(self, free: Callable[[int], bool]) -> int:
        for _ in range(64):
            port = self.rng.randrange(EPHEMERAL_PORTS.start, EPHEMERAL_PORTS.stop)
            if free(port):
                return port
        for port in EPHEMERAL_PORTS:
            if free(port):
                return port
        raise OSError(errno.EADDRNOTAVAIL, "no ephemeral port left")

    # --------------------------------------------------------------------------------------------------- traces

    def _trace(
        self,
        kind: Kind,
        layer: Layer,
        data: bytes | None,
        fields: dict[str, Any],
        summary: str,
        *,
        sent: bool,
        error: bool = False,
    ) -> None:
        if not self._tracing:
            return
        src, dst = (self.actor, self.peer) if sent else (self.peer, self.actor)
        self.tracer.emit(src, dst, layer, summary, data, kind=kind, fields=fields, error=error)

    def _drop(
        self,
        data: bytes | None,
        reason: str,
        layer: Layer,
        *,
        reason_tag: str | None = None,
        sent: bool = False,
    ) -> None:
        # `data` is None for a datagram put back together from fragments: those bytes were never one packet
        self.counters["dropped"] += 1
        fields: dict[str, Any] = {"reason": reason, "length": len(data) if data is not None else 0}
        if reason_tag is not None:
            fields["tag"] = reason_tag
        self._trace(Kind.IP_DROPPED, layer, data, fields, f"dropped: {reason}", sent=sent, error=True)

    def _trace_tcp(
        self,
        segment: TcpSegment,
        packet: Ipv4Packet,
        raw: bytes,
        *,
        sent: bool,
        retransmitted: Retransmitted | None = None,
    ) -> None:
        if not self._tracing:
            return
        flags = _flag_names(segment.flags)
        fields: dict[str, Any] = {
            "src": _text(packet.source),
            "sport": segment.source_port,
            "dst": _text(packet.destination),
            "dport": segment.destination_port,
            "flags": flags,
            "seq": segment.seq,
            "ack": segment.ack,
            "win": segment.window,
            "len": len(segment.payload),
        }
        if retransmitted is not None:
            kind = Kind.TCP_RETRANSMIT
            fields["rto"] = getattr(retransmitted, "rto", None)
            fields["reason"] = getattr(retransmitted, "reason", None)
        elif TcpFlags.SYN in segment.flags:
            kind = Kind.TCP_SYN
        else:
            kind = Kind.TCP_SEGMENT
        summary = (
            f"TCP {packet.source}:{segment.source_port} > {packet.destination}:{segment.destination_port} "
            f"[{flags}] seq={segment.seq} ack={segment.ack} win={segment.window} len={len(segment.payload)}"
        )
        self._trace(kind, Layer.TCP, raw, fields, summary, sent=sent)

    def _trace_icmp(self, packet: Ipv4Packet, message: IcmpMessage, raw: bytes, *, sent: bool) -> None:
        if not self._tracing:
            return
        fields: dict[str, Any] = {
            "src": _text(packet.source),
            "dst": _text(packet.destination),
            "type": message.type,
            "code": message.code,
        }
        if message.type in (IcmpType.ECHO_REQUEST, IcmpType.ECHO_REPLY):
            fields["id"] = message.identifier
            fields["seq"] = message.sequence
        name = (
            IcmpType(message.type).name.lower()
            if message.type in IcmpType._value2member_map_
            else str(message.type)
        )
        summary = f"ICMP {packet.source} > {packet.destination} {name} code {message.code}"
        self._trace(Kind.ICMP_MESSAGE, Layer.IP, raw, fields, summary, sent=sent)

    def _trace_fragment(self, packet: Ipv4Packet, raw: bytes, *, sent: bool, complete: bool) -> None:
        if not self._tracing:
            return
        fields: dict[str, Any] = {
            "src": _text(packet.source),
            "dst": _text(packet.destination),
            "protocol": packet.protocol,
            "id": packet.identification,
            "offset": packet.fragment_offset,
            "more": packet.more_fragments,
            "len": len(packet.payload),
        }
        if complete:
            fields["complete"] = True
        summary = (
            f"IP fragment {packet.source} > {packet.destination} id={packet.identification} "
            f"offset={packet.fragment_offset} len={len(packet.payload)}{' MF' if packet.more_fragments else ''}"
        )
        self._trace(Kind.IP_FRAGMENT, Layer.IP, raw, fields, summary, sent=sent)

    def _trace_packet(self, raw: bytes, packet: Ipv4Packet, *, sent: bool, summary: str) -> None:
        if not self._tracing:
            return
        fields: dict[str, Any] = {
            "src": _text(packet.source),
            "dst": _text(packet.destination),
            "protocol": packet.protocol,
        }
        self._trace(
            Kind.IP_PACKET,
            Layer.IP,
            raw or None,
            fields,
            f"{summary}: {packet.source} > {packet.destination}",
            sent=sent,
        )


_BROADCAST = IPv4Address("255.255.255.255")


def _not_unicast(address: IPv4Address) -> bool:
    """Multicast, the limited broadcast or 0.0.0.0: no host's address (the stack carries unicast only)."""
    return address.is_multicast or address.is_unspecified or address == _BROADCAST


_TEXT: dict[IPv4Address, str] = {}
_FLAG_NAMES: dict[int, str] = {}


def _text(address: IPv4Address) -> str:
    """str(address), remembered: a stack sees few addresses and formats them for every packet."""
    text = _TEXT.get(address)
    if text is None:
        if len(_TEXT) > 4096:
            _TEXT.clear()
        text = _TEXT[address] = str(address)
    return text


def _flag_names(flags: TcpFlags) -> str:
    names = _FLAG_NAMES.get(flags)
    if names is None:
        names = _FLAG_NAMES[flags] = flags.names()
    return names


def _udp_fields(packet: Ipv4Packet, datagram: UdpDatagram) -> dict[str, Any]:
    return {
        "src": _text(packet.source),
        "sport": datagram.source_port,
        "dst": _text(packet.destination),
        "dport": datagram.destination_port,
        "len": len(datagram.payload),
    }


def _udp_summary(packet: Ipv4Packet, datagram: UdpDatagram) -> str:
    return (
        f"UDP {packet.source}:{datagram.source_port} > {packet.destination}:{datagram.destination_port} "
        f"len={len(datagram.payload)}"
    )
