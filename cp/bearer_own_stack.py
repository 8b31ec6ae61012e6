"""Embodiment 1 of CN101594614A: the CP asks the AP for network parameters (AT%GETNET -> %NETPAR on DLC 2),
activates a packet data context in the simulated network, and connects through its own IPv4 stack (docs/protocols.md,
"The proxy dialect", "The patent's steps" and "The packet data plane").

`PacketPlane` is the CP's side of the packet data plane: the packet gateway (net/pgw.py, `--network nat|tun`) and,
for each active context, an IpStack (net/stack.py) at the context's address joined to the gateway by a radio link
(net/radio.py, `--radio`). A deactivated context (AT+CGACT=0, a detach, or the network) takes its stack with it: the
stack's flows abort (`IpStack.abort_all`: nothing more can be sent, the radio is gone), the gateway detaches the
address, and the channel's reader sees its stream break, which reaches the card as Channel Status "link dropped"
(TS 102 223 7.5.11). Without a plane (`OwnStackBearer(plane=None)`) the bearer connects from a host socket, as
before the plane existed: bench/bench_e1_stack.py compares the two.

Channels: TCP client (the stack's TcpStream), UDP client (`DatagramStream`: each SEND DATA one datagram, each
datagram one unit for RECEIVE DATA) and the UICC server mode (TS 102 223 6.4.27.5: the stack listens on the card's
port, the gateway forwards a host port to it, and the first connection is the channel's stream). The context's DNS
servers are kept per channel for the OPEN CHANNEL's terminal response (TS 102 223 8.6 qualifier bit 4, 8.104).

Its TCP events are tcp.connect/tcp.accept/tcp.error/tcp.close/tcp.closed with the channel (and host and port); the
packets themselves are traced by the stack.

Failures map to TS 102 223 results: no proxy or +CME ERROR: 30 -> 0x20 "no service" (8.12.2); the network's
refusal -> 0x21 with the SM cause, bit 8 set (8.12.?); TCP refused, unreachable or timed out -> 0x3A "remote
device not reachable" (8.12.11).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

import trio

from bipsim.cp.bearer import LinkError
from bipsim.cp.network import CellularNetwork, PdpContext, PdpError
from bipsim.cp.pdp_choice import HostContexts, choose_pdp, trace_choice
from bipsim.cp.proxy_link import ProxyLink
from bipsim.link.at_chat import AtTimeout
from bipsim.link.at_syntax import AtSyntaxError, parse_args, quote
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.cat import (
    BipErrorCause,
    GeneralResult,
    OpenChannel,
    TerminalProblem,
    TransportProtocol,
)

if TYPE_CHECKING:
    from bipsim.net.pgw import Pgw, PortForward
    from bipsim.net.radio import LinkEnd, LinkProfile, RadioLink
    from bipsim.net.stack import IpStack
    from bipsim.net.udp_socket import UdpSocket

NO_SERVICE = LinkError(
    GeneralResult.TERMINAL_UNABLE, bytes((TerminalProblem.NO_SERVICE,)), "no network service"
)
CLOSE_TIME = 5.0  # seconds a TCP close (FIN and its answer) may take before the context goes anyway


def unreachable(where: str, exc: BaseException) -> LinkError:
    """TS 102 223 8.12.11: result 0x3A, "remote device not reachable"."""
    return LinkError(
        GeneralResult.BIP_ERROR,
        bytes((BipErrorCause.REMOTE_DEVICE_NOT_REACHABLE,)),
        f"connect {where}: {exc or type(exc).__name__}",
    )


class DatagramStream(trio.abc.Stream):
    """A UDP client channel as a Stream (TS 102 223 6.4.27, transport level 01 "UDP, UICC in client mode"): each
    send_all is one datagram to the channel's destination; each receive_some returns one datagram (cut to
    `max_bytes`, as a datagram socket truncates), so a datagram stays one unit for the card's RECEIVE DATA."""

    def __init__(self, socket: UdpSocket, destination: tuple[IPv4Address, int]) -> None:
        self.socket = socket
        self.destination = destination
        self.truncated = 0  # datagrams longer than the reader asked for

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            await trio.lowlevel.checkpoint()
            return
        await self.socket.send_to(bytes(data), self.destination)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while True:
            data, source = await self.socket.receive_from()
            if source != self.destination:
                continue  # not the channel's peer: a client channel carries its destination's datagrams only
            if max_bytes is not None and len(data) > max_bytes:
                self.truncated += 1
                data = data[:max_bytes]
            return data

    async def aclose(self) -> None:
        await self.socket.aclose()


@dataclass
class PlaneOptions:
    """The packet data plane of `bipsim cp`: --radio, --network, --seed (docs/protocols.md, "The packet data
    plane")."""

    radio: str = "ideal"
    network: str = "nat"
    seed: int = 0
    # tun mode: (port, host, host port): the namespace's kernel listens at SERVER_ADDRESS:port (203.0.113.10) and
    # each connection it accepts is carried to host:host port on the host (`bipsim cp --tun-relay`)
    tun_relays: tuple[tuple[int, str, int], ...] = ()


@dataclass
class ContextLink:
    """What one active context carries: its stack, the radio link to the gateway, and the scope of their tasks."""

    context: PdpContext
    stack: IpStack
    end: LinkEnd
    link: RadioLink
    scope: trio.CancelScope
    forwards: list[int] = field(default_factory=list)  # host ports the gateway forwards to this context
    port_forwards: list[PortForward] = field(default_factory=list)  # what the gateway removes when it goes


class PacketPlane:
    """The CP's side of the packet data plane: the gateway, and an IpStack with its radio link per active context.

    `run` must be running (it holds the gateway and every context's tasks) before `bring_up` is called."""

    def __init__(
        self,
        network: CellularNetwork,
        options: PlaneOptions | None = None,
        *,
        tracer: Tracer = NULL_TRACER,
        pgw: Pgw | None = None,
    ) -> None:
        from bipsim.net.radio import parse_link_spec

        self.network = network
        self.options = options or PlaneOptions()
        self.profile: LinkProfile = parse_link_spec(self.options.radio)
        self.tracer = tracer
        self.pgw = pgw
        self.links: dict[int, ContextLink] = {}  # by context identifier
        # contexts the bearer is releasing itself (its channel closed): their end is orderly, not a dropped link
        self.releasing: set[int] = set()
        self.ready = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._count = 0
        network.deactivation_listeners.append(self._deactivated)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from bipsim.net.pgw import Pgw

        if self.pgw is None:
            self.pgw = Pgw(
                mode=self.options.network,
                tracer=self.tracer,
                rng=random.Random(f"{self.options.seed}/pgw"),  # a run repeats (--seed)
            )
        async with trio.open_nursery() as nursery:
            await nursery.start(self.pgw.run)
            self._nursery = nursery
            if self.options.tun_relays:
                await self._start_tun_relays()
            self.ready.set()
            task_status.started()
            await trio.sleep_forever()

    async def _start_tun_relays(self) -> None:
        assert self.pgw is not None
        for port, host, host_port in self.options.tun_relays:
            await self.pgw.add_tun_relay(port, host, host_port)

    def set_radio(self, spec: str) -> str:
        """New link figures (the `--radio` grammar) for every radio bearer, now and to come; returns the profile as
        the grammar spells it. ValueError for a spec the grammar does not read."""
        from bipsim.net.radio import parse_link_spec

        self.profile = parse_link_spec(spec)
        for carried in self.links.values():
            carried.link.set_profile(self.profile)
        return self.profile.describe()

    def link_of(self, address: str) -> ContextLink | None:
        return next((link for link in self.links.values() if link.context.address == address), None)

    async def bring_up(self, context: PdpContext) -> IpStack:
        """The stack of `context`, joined to the gateway by a new radio link (one per context activation)."""
        from bipsim.net.radio import radio_link
        from bipsim.net.stack import IpStack

        await self.ready.wait()
        assert self._nursery is not None and self.pgw is not None
        self._count += 1
        # each activation draws its own loss and jitter from the run's seed: a repeated run is the same run
        seed = self.options.seed * 1000 + self._count
        cp_end, pgw_end, link = radio_link(self.profile, seed, tracer=self.tracer, ends=(Actor.CP, Actor.PGW))

        def transmit(packet: bytes) -> None:
            if not cp_end.closed:  # a stack whose context is gone sends nothing (the radio is down)
                cp_end.send_nowait(packet)

        address = IPv4Address(context.address)
        stack = IpStack(
            address,
            transmit,
            tracer=self.tracer,
            actor=Actor.CP,
            peer=Actor.NET,
            rng=random.Random(f"{self.options.seed}/stack/{self._count}"),
        )
        scope = trio.CancelScope()
        carried = ContextLink(context, stack, cp_end, link, scope)
        pgw = self.pgw

        async def carry(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(link.run)
                    await nursery.start(stack.run)
                    nursery.start_soon(self._pump, cp_end, stack)
                    await pgw.attach(address, pgw_end)
                    task_status.started()

        self.links[context.cid] = carried
        await self._nursery.start(carry)
        self.tracer.emit(
            Actor.CP,
            Actor.PGW,
            Layer.IP,
            f"context {context.cid} on the radio bearer ({self.profile.describe()}): {address}",
            kind=Kind.APP_EVENT,
            fields={
                "event": "bearer_up",
                "cid": context.cid,
                "address": context.address,
                "radio": self.profile.describe(),
                "network": self.options.network,
            },
        )
        return stack

    async def forward(self, context: PdpContext, port: int) -> int | None:
        """Has the gateway forward a host port (127.0.0.1, chosen by the system) to the context's `port`, for the
        UICC server mode; returns the host port, or None in tun mode, where the namespace reaches the context's
        address itself."""
        from bipsim.net.pgw import PgwMode, PortForward

        pgw = self.pgw
        assert pgw is not None
        if pgw.mode is PgwMode.TUN:
            return None
        forward = PortForward(0, IPv4Address(context.address), port)
        carried = self.links.get(context.cid)
        if carried is None:
            raise RuntimeError(f"context {context.cid} has no bearer")
        # the host port closes when the context goes (_deactivated removes it)
        host_port = await pgw.add_forward(forward)
        carried.port_forwards.append(forward)
        carried.forwards.append(host_port)
        return host_port

    @staticmethod
    async def _pump(end: LinkEnd, stack: IpStack) -> None:
        """The radio's packets into the stack, until the link ends."""
        while True:
            try:
                packet = await end.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            stack.receive_packet(packet)

    def _deactivated(self, context: PdpContext, reason: str) -> None:
        """A deactivation listener of the network: the context's flows end at once (nothing can be sent on a radio
        that is gone), the gateway forgets the address, and the context's tasks end."""
        carried = self.links.pop(context.cid, None)
        if carried is None:
            return
        # our own release (the channel closed) is orderly; AT+CGACT=0, a detach or the network is not
        carried.stack.abort_all(reason, orderly=context.cid in self.releasing)
        if self.pgw is not None:
            self.pgw.detach(IPv4Address(context.address), reason)
        carried.end.close()
        carried.scope.cancel()
        if self.pgw is not None:
            for forward in carried.port_forwards:
                self.pgw.remove_forward(forward)
        self.tracer.emit(
            Actor.NET,
            Actor.CP,
            Layer.IP,
            f"context {context.cid} deactivated ({reason}): its flows end",
            kind=Kind.APP_EVENT,
            fields={
                "event": "pdp_deactivated",
                "cid": context.cid,
                "address": context.address,
                "reason": reason,
            },
        )


class OwnStackBearer:
    embodiment = 1
    name = "own-stack"
    serves_uicc_server_mode = (
        True  # with a plane (without one, the server mode's OPEN CHANNEL fails with 0x3A 03)
    )

    def __init__(
        self,
        proxy: ProxyLink,
        network: CellularNetwork,
        *,
        tracer: Tracer = NULL_TRACER,
        timeout: float = 30.0,
        plane: PacketPlane | None = None,
    ) -> None:
        self.proxy = proxy
        self.network = network
        self.tracer = tracer
        self.timeout = timeout
        self.plane = plane
        self.contexts: dict[int, PdpContext] = {}  # channel -> the context its link is on
        self.dns: dict[int, tuple[str, ...]] = {}  # channel -> its context's DNS servers
        self._streams: dict[int, PdpContext] = {}  # id(stream) -> its context (a channel number is reused)
        # the DNS servers the network gives every context: what an OPEN CHANNEL asking for them is told
        self.dns_servers: tuple[str, ...] = tuple(network.config.dns)
        # a standard host's +CGDCONT/+CGAUTH contexts (cp/pdp_choice.py): used when no AP answers %GETNET
        self.host_contexts: HostContexts | None = None

    async def network_parameters(self, channel: int, request: OpenChannel) -> tuple[str, str, str]:
        attached = await self.proxy.wait(self.timeout)
        if attached is None:
            raise NO_SERVICE
        _, chat = attached
        command = f"AT%GETNET={channel},{request.bearer_type}" + (
            f",{quote(request.apn)}" if request.apn else ""
        )
        chat.response_steps["%NETPAR"] = "S403"
        try:
            response = await chat.command(command, timeout=self.timeout, step="S402")
        except AtTimeout as exc:
            raise LinkError(
                GeneralResult.TERMINAL_UNABLE,
                bytes((TerminalProblem.NO_SERVICE,)),
                "AP did not answer %GETNET",
            ) from exc
        if not response.ok:
            raise LinkError(
                GeneralResult.TERMINAL_UNABLE,
                bytes((TerminalProblem.NO_SERVICE,)),
                f"AP answered {response.final}",
            )
        for line in response.lines:
            if line.startswith("%NETPAR:"):
                try:
                    args = parse_args(line[len("%NETPAR:") :])
                except AtSyntaxError:
                    break
                if len(args) >= 4 and args[0] == channel:
                    return str(args[1] or ""), str(args[2] or ""), str(args[3] or "")
        raise LinkError(
            GeneralResult.TERMINAL_UNABLE,
            bytes((TerminalProblem.NO_SERVICE,)),
            "no %NETPAR in the AP's answer",
        )

    async def _activate(self, channel: int, request: OpenChannel) -> PdpContext:
        try:
            apn, user, password = await self.network_parameters(channel, request)
        except LinkError as exc:
            # no proxy on DLC 2, or %GETNET unanswered: a standard host's modem chooses itself (issue 16 item 9)
            if self.host_contexts is None or not (exc is NO_SERVICE or isinstance(exc.__cause__, AtTimeout)):
                raise
            definitions, authentications = self.host_contexts()
            choice = choose_pdp(
                card_apn=request.apn,
                card_user=request.login or "",
                card_password=request.password or "",
                definitions=definitions,
                authentications=authentications,
                network_apns=self.network.config.apns,
            )
            trace_choice(self.tracer, choice, channel)
            if choice is None:
                raise
            apn, user, password = choice.apn, choice.user, choice.password
        # the card's own credentials win over the AP's defaults (TS 102 223 6.4.27.2)
        user, password = request.login or user, request.password or password
        try:
            context = self.network.activate(request.apn or apn, user, password)
        except PdpError as exc:
            self.tracer.emit(
                Actor.NET,
                Actor.CP,
                Layer.IP,
                f"PDP context refused: {exc}",
                error=True,
                kind=Kind.APP_EVENT,
                fields={"event": "pdp_refused", "channel": channel, "cause": int(exc.cause)},
            )
            raise LinkError(GeneralResult.NETWORK_UNABLE, bytes((0x80 | exc.cause,)), str(exc)) from exc
        self.contexts[channel] = context
        self.dns[channel] = context.dns
        self.tracer.emit(
            Actor.NET,
            Actor.CP,
            Layer.IP,
            f"PDP context {context.cid} active: APN {context.apn}, address {context.address}",
            kind=Kind.APP_EVENT,
            fields={
                "event": "pdp_active",
                "channel": channel,
                "cid": context.cid,
                "apn": context.apn,
                "address": context.address,
                "dns": list(context.dns),
            },
        )
        return context

    async def connect(self, channel: int, request: OpenChannel) -> trio.abc.Stream:
        context = await self._activate(channel, request)
        stream = await self._connect(channel, request, context)
        self._streams[id(stream)] = context
        return stream

    async def _connect(self, channel: int, request: OpenChannel, context: PdpContext) -> trio.abc.Stream:
        try:
            if request.protocol == TransportProtocol.TCP_SERVER:
                return await self._serve(channel, request, context)
            assert request.destination is not None
            where = f"{request.destination}:{request.port}"
            address = {"host": request.destination, "port": request.port, "channel": channel}
            udp = request.protocol == TransportProtocol.UDP_CLIENT_REMOTE
            if not udp:
                self.tracer.emit(
                    Actor.CP,
                    Actor.OTA,
                    Layer.TCP,
                    f"TCP SYN to {where} (channel {channel})",
                    step="S404",
                    kind=Kind.TCP_CONNECT,
                    fields=address,
                )
            try:
                if self.plane is None:
                    if udp:
                        raise LinkError(
                            GeneralResult.BIP_ERROR,
                            bytes((BipErrorCause.TRANSPORT_NOT_AVAILABLE,)),
                            "UDP needs the packet data plane",
                        )
                    with trio.fail_after(self.timeout):
                        stream: trio.abc.Stream = await trio.open_tcp_stream(
                            request.destination, request.port
                        )
                else:
                    stack = await self.plane.bring_up(context)
                    destination = IPv4Address(request.destination)
                    if udp:
                        socket = await stack.open_udp()
                        return DatagramStream(socket, (destination, request.port))
                    stream = await stack.open_tcp(destination, request.port, timeout=self.timeout)
            except (OSError, trio.TooSlowError, ValueError, trio.BrokenResourceError) as exc:
                self.tracer.emit(
                    Actor.OTA,
                    Actor.CP,
                    Layer.UDP if udp else Layer.TCP,
                    f"connect to {where} failed: {exc}",
                    error=True,
                    kind=Kind.TCP_ERROR,
                    fields={**address, "error": str(exc) or type(exc).__name__},
                )
                raise unreachable(where, exc) from exc
            self.tracer.emit(
                Actor.OTA,
                Actor.CP,
                Layer.TCP,
                f"TCP SYN-ACK from {where} (connected)",
                step="S405",
                kind=Kind.TCP_ACCEPT,
                fields=address,
            )
            return stream
        except BaseException:  # refused, cancelled, anything: the context does not outlive the attempt
            self._release(channel, context)
            raise

    async def _serve(self, channel: int, request: OpenChannel, context: PdpContext) -> trio.abc.Stream:
        """UICC server mode (TS 102 223 6.4.27.5): listen on the card's port at the context's address, have the
        gateway forward a host port to it, and return the first connection."""
        if self.plane is None:
            raise LinkError(
                GeneralResult.BIP_ERROR,
                bytes((BipErrorCause.TRANSPORT_NOT_AVAILABLE,)),
                "the UICC server mode needs the packet data plane",
            )
        stack = await self.plane.bring_up(context)
        listener = await stack.listen_tcp(request.port)
        host_port = await self.plane.forward(context, request.port)
        self.tracer.emit(
            Actor.CP,
            Actor.NET,
            Layer.TCP,
            f"channel {channel}: listening on {context.address}:{request.port} (host port {host_port})",
            kind=Kind.APP_EVENT,
            fields={
                "event": "uicc_server_listening",
                "channel": channel,
                "address": context.address,
                "port": request.port,
                "host_port": host_port,
            },
        )
        try:
            stream = await listener.accept()
        finally:
            await listener.aclose()
        self.tracer.emit(
            Actor.NET,
            Actor.CP,
            Layer.TCP,
            f"channel {channel}: a client connected to {context.address}:{request.port}",
            kind=Kind.TCP_ACCEPT,
            fields={"channel": channel, "host": context.address, "port": request.port, "server": True},
        )
        return stream

    async def disconnect(self, channel: int, stream: trio.abc.Stream) -> None:
        self.tracer.emit(
            Actor.CP,
            Actor.OTA,
            Layer.TCP,
            f"TCP FIN (close channel {channel})",
            step="S414",
            kind=Kind.TCP_CLOSE,
            fields={"channel": channel},
        )
        try:
            with trio.move_on_after(CLOSE_TIME):
                await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the link was already gone (a deactivated context): nothing left to close
        finally:
            # whatever the close did, the context goes
            self._release(channel, self._streams.pop(id(stream), None))
        self.tracer.emit(
            Actor.OTA,
            Actor.CP,
            Layer.TCP,
            f"TCP close acknowledged (channel {channel})",
            step="S415",
            kind=Kind.TCP_CLOSED,
            fields={"channel": channel},
        )

    def _release(self, channel: int, context: PdpContext | None) -> None:
        """Deactivates the packet data context of the channel's link: its address goes back to the network's pool
        (and its stack, with the plane, ends). A context the network already ended is left alone: its identifier
        may carry a new context by now."""
        if self.contexts.get(channel) is context:
            self.contexts.pop(channel, None)
            self.dns.pop(channel, None)
        if context is not None and self.network.contexts.get(context.cid) is context:
            releasing = self.plane.releasing if self.plane is not None else set()
            releasing.add(context.cid)
            try:
                self.network.deactivate(context.cid, f"channel {channel} closed")
            finally:
                releasing.discard(context.cid)
