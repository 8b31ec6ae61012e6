"""Packet data calls of the CP: `ATD*99[***<cid>]#` and `AT+CGDATA="PPP",<cid>` (3GPP TS 27.007 10.2.1.1 and
10.1.12) answer CONNECT and switch that line or CMUX DLC to PPP (net/ppp.py), whose IPv4 packets go through the
radio bearer of that PDP context to the packet gateway (the packet plane of docs/protocols.md; not the CP's own
stack: the host is the IP end).

V.250 around it: `+++` between two guard times of S12 fiftieths of a second (V.250 leaves the escape from online
data state to the manufacturer; this is the Hayes convention modems follow, docs/protocols.md "Data calls")
returns to online command mode with OK; `ATO` (V.250 6.3.7) resumes the call with CONNECT; `ATH` (6.3.6) ends it; the call ending
(LCP terminated, the host gone silent past Max-Configure, the context deactivated) is NO CARRIER and the line
serves AT again. `AT%DATACNT[=<cid>]` reports each data call's byte counters (a private command: 27.007 has no
per-context volume counter).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

import trio

from bipsim.cp.network import PdpError
from bipsim.link.at_server import AtCommandError, AtServer, CmeError, Handler, ResultCode
from bipsim.link.at_syntax import AtRequest, CommandKind
from bipsim.link.cmux_frame import MSC_RTC
from bipsim.net.ppp import (
    CODE_NAMES,
    PROTO_CHAP,
    PROTO_IP,
    PROTO_IPCP,
    PROTO_LCP,
    PROTO_PAP,
    Authenticated,
    AuthMethod,
    Credentials,
    FrameDropped,
    FrameReceived,
    FrameSent,
    IpPacket,
    LinkDown,
    LinkUp,
    NetworkUp,
    PppConfig,
    PppConnection,
    PppEvent,
    ProtocolRejected,
)
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer

if TYPE_CHECKING:
    from bipsim.cp.bearer_own_stack import PacketPlane
    from bipsim.cp.commands import ModemCommands
    from bipsim.cp.network import PdpContext
    from bipsim.net.radio import LinkEnd

GPRS_SC = "*99"  # the GPRS service code of the dial string (27.007 10.2.1.1)
DEFAULT_APN = "internet"
# without +CGAUTH the host's own credentials activate the context: PAP asked first (it hands them over as they
# are), CHAP when the host naks PAP (the network checks its response: docs/protocols.md "Data calls")
HOST_METHODS = (AuthMethod.PAP, AuthMethod.CHAP)
ESCAPE_CHAR = 0x2B  # S2's default, "+"
DEFAULT_S12 = 50  # guard time in fiftieths of a second: 1 s
CME_NOT_SUPPORTED = 4
CME_NOT_ALLOWED = 3
CME_BAD_PARAMETERS = 50
CME_GPRS = 148  # unspecified GPRS error (27.007 9.2.2)
_KIND = {
    PROTO_LCP: Kind.PPP_LCP,
    PROTO_PAP: Kind.PPP_AUTH,
    PROTO_CHAP: Kind.PPP_AUTH,
    PROTO_IPCP: Kind.PPP_IPCP,
    PROTO_IP: Kind.PPP_IP,
}
_NAMES = {PROTO_LCP: "LCP", PROTO_PAP: "PAP", PROTO_CHAP: "CHAP", PROTO_IPCP: "IPCP", PROTO_IP: "IP"}


def parse_dial(dial: str) -> tuple[str, list[int]] | None:
    """A packet-domain dial string `*99[*[<called_address>][*[<L2P>][*[<cid>[,<cid>...]]]]]#` (27.007
    10.2.1.1): (L2P, cids), or None when it is not one. ValueError when it is one that is malformed."""
    text = dial.strip().rstrip(";").upper()
    if not text.startswith(GPRS_SC) or not text.endswith("#"):
        return None
    inner = text[len(GPRS_SC) : -1]
    if inner and not inner.startswith("*"):
        return None  # *991#... is another service code
    parts = inner[1:].split("*") if inner else []
    if len(parts) > 3:
        raise ValueError("too many fields")
    l2p = parts[1] if len(parts) > 1 and parts[1] else "PPP"
    cids: list[int] = []
    if len(parts) > 2 and parts[2]:
        for item in parts[2].split(","):
            if not item.isdigit():
                raise ValueError(f"cid {item!r}")
            cids.append(int(item))
    return l2p, cids


class _BearerBusy(Exception):
    """The context's radio bearer could not be had (its address carries another bearer: the card's BIP)."""


# --- the escape sequence ---------------------------------------------------------------------------------------


class Escape(Enum):
    """Where the line is in `+++` (guard, three escape characters, guard)."""

    DATA = "data"
    ONE = "one"
    TWO = "two"
    THREE = "three"


class EscInput(Enum):
    PLUS_AFTER_GUARD = "plus after a guard time of silence"
    PLUS = "plus"
    OTHER = "other byte"


# (state, input) -> state; what is not here goes back to DATA with the held characters passed on as data (a plus
# after a guard time of silence starts a new count there: the three escape characters come within one guard time
# of each other, docs/protocols.md "Data calls")
ESCAPE_TABLE: dict[tuple[Escape, EscInput], Escape] = {
    (Escape.DATA, EscInput.PLUS_AFTER_GUARD): Escape.ONE,
    (Escape.ONE, EscInput.PLUS): Escape.TWO,
    (Escape.TWO, EscInput.PLUS): Escape.THREE,
}


class EscapeDetector:
    """Sans-IO `+++` detection: bytes with their arrival time in, the bytes that are data out; `deadline` is when
    the escape completes if nothing more arrives, and `expired(now)` says it has."""

    def __init__(self, guard: float, char: int = ESCAPE_CHAR, *, now: float = 0.0) -> None:
        self.guard = guard
        self.char = char
        self.state = Escape.DATA
        self._held = bytearray()
        self._last = now  # the online state starts with silence (CONNECT was just sent)

    @property
    def deadline(self) -> float | None:
        return self._last + self.guard if self.state is Escape.THREE else None

    def expired(self, now: float) -> bool:
        return self.state is Escape.THREE and now - self._last >= self.guard

    def feed(self, data: bytes, now: float) -> bytes:
        out = bytearray()
        silent = now - self._last >= self.guard
        for byte in data:
            if byte == self.char:
                kind = EscInput.PLUS_AFTER_GUARD if silent else EscInput.PLUS
            else:
                kind = EscInput.OTHER
            new = ESCAPE_TABLE.get((self.state, kind))
            if new is None:
                out += self._held
                self._held.clear()
                if kind is EscInput.PLUS_AFTER_GUARD:  # "+" after silence restarts the count
                    self._held.append(byte)
                    self.state = Escape.ONE
                else:
                    out.append(byte)
                    self.state = Escape.DATA
            else:
                self._held.append(byte)
                self.state = new
            silent = False
        if data:
            self._last = now
        return bytes(out)


# --- the call --------------------------------------------------------------------------------------------------


class CallState(Enum):
    """Where a data call is (V.250 6.3.1: online data state, online command state)."""

    ONLINE = "online data"
    COMMAND = "online command"  # suspended: AT served, ATO resumes
    ENDED = "ended"


class CallEvent(Enum):
    ESCAPE = "escape"  # +++, or DTR dropped under &D1
    RESUME = "ATO"
    END = "end"  # NO CARRIER: LCP down, hang-up, deactivation, the line gone


CALL_TABLE: dict[tuple[CallState, CallEvent], CallState] = {
    (CallState.ONLINE, CallEvent.ESCAPE): CallState.COMMAND,
    (CallState.COMMAND, CallEvent.RESUME): CallState.ONLINE,
    (CallState.ONLINE, CallEvent.END): CallState.ENDED,
    (CallState.COMMAND, CallEvent.END): CallState.ENDED,
    (CallState.ENDED, CallEvent.END): CallState.ENDED,
}


@dataclass
class DataCall:
    """One data call: its context, its PPP link, the radio bearer's end, and where its AT server is. Context,
    end and scope are None until the host's credentials activated the context (no +CGAUTH for it)."""

    cid: int
    context: PdpContext | None
    conn: PppConnection
    server: AtServer
    end: LinkEnd | None
    scope: trio.CancelScope | None
    apn: str = DEFAULT_APN
    state: CallState = CallState.ONLINE
    reason: str = ""
    write_lock: trio.Lock = field(default_factory=trio.Lock)
    dropped_down: int = 0  # packets toward the host while it was in command mode
    dtr_dropped: bool = False
    last_words: bytes = b""  # what goes to the host before NO CARRIER when the call ended under the loop
    waiting: trio.CancelScope | None = None  # the online loop's wait for the line, cancelled by wake()
    implicit_cid: bool = (
        False  # the dial named no context and the host defined none: `cid` is the modem's choice
    )

    def fire(self, event: CallEvent) -> None:
        """Moves the call by CALL_TABLE; an event its state does not take is a bug of the caller."""
        new = CALL_TABLE.get((self.state, event))
        if new is None:
            raise RuntimeError(f"data call: {event.value} while {self.state.value}")
        self.state = new

    @property
    def online(self) -> bool:
        return self.state is CallState.ONLINE

    @property
    def ended(self) -> bool:
        return self.state is CallState.ENDED

    def wake(self) -> None:
        """Ends the online loop's wait (DTR dropped, the call ended from elsewhere)."""
        if self.waiting is not None:
            self.waiting.cancel()


class DataCommands:
    """The command set (cp/command_sets.py) of packet data calls: D (packet domain dial strings; others go to the
    D handler installed before), +CGDATA, O, H, %DATACNT."""

    def __init__(self, core: ModemCommands, tracer: Tracer, settings: dict[str, object]) -> None:
        self.core = core
        self.tracer = tracer
        self.plane: PacketPlane | None = None
        config = settings.get("ppp_config")
        self.config = config if isinstance(config, PppConfig) else PppConfig()
        self.calls: dict[AtServer, DataCall] = {}
        # bytes each context carried, kept after its calls end: cid -> [tx to host, rx from host]
        self.volumes: dict[int, list[int]] = {}
        self._count = 0
        core.network.deactivation_listeners.append(self._deactivated)

    def attach_plane(self, plane: PacketPlane | None) -> None:
        self.plane = plane

    def install(self, server: AtServer) -> None:
        previous = {name: server.handlers.get(name) for name in ("D", "O", "H")}

        def bind(handler: Callable[[AtRequest, AtServer, Handler | None], Any], name: str) -> Handler:
            async def call(request: AtRequest) -> list[str] | None:
                result: list[str] | None = await handler(request, server, previous.get(name))
                return result

            return call

        server.register("D", bind(self.dial, "D"))
        server.register("O", bind(self.online, "O"))
        server.register("H", bind(self.hang_up, "H"))

        async def cgdata(request: AtRequest) -> list[str] | None:
            return await self.cgdata(request, server)

        async def datacnt(request: AtRequest) -> list[str] | None:
            return self.datacnt(request)

        server.register("+CGDATA", cgdata)
        server.register("%DATACNT", datacnt)

    def forget(self, server: AtServer) -> None:
        call = self.calls.pop(server, None)
        if call is not None:
            self._end(call, "the line went away", announce=False)  # nobody left to tell

    # --- commands ---
    async def dial(self, request: AtRequest, server: AtServer, previous: Handler | None) -> list[str] | None:
        dial = str(request.args[0]) if request.args else ""
        try:
            parsed = parse_dial(dial)
        except ValueError as exc:
            raise CmeError(CME_BAD_PARAMETERS) from exc
        if parsed is None:
            if previous is None:
                raise AtCommandError()
            return await previous(request)
        l2p, cids = parsed
        if l2p not in ("PPP", "1"):
            raise CmeError(CME_NOT_SUPPORTED)  # only PPP (27.007 10.1.12 <L2P>)
        await self._start(server, cids[0] if cids else None)
        return None  # not reached: _start ends the command with CONNECT

    async def cgdata(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CGDATA[=<L2P>[,<cid>[,<cid>...]]] (27.007 10.1.12)."""
        if request.kind is CommandKind.TEST:
            return ['+CGDATA: ("PPP")']
        if request.kind is CommandKind.READ:
            raise AtCommandError()
        args = request.args
        l2p = str(args[0]).upper() if args and args[0] is not None else "PPP"
        if l2p != "PPP":
            raise CmeError(CME_NOT_SUPPORTED)
        cids = [a for a in args[1:] if a is not None]
        if not all(isinstance(c, int) for c in cids) or len(cids) > 1:
            raise CmeError(CME_BAD_PARAMETERS)  # one context per PPP link
        await self._start(server, int(cids[0]) if cids else None)
        return None

    async def online(
        self, request: AtRequest, server: AtServer, previous: Handler | None
    ) -> list[str] | None:
        """O: back to the suspended call with CONNECT; without one, the handler before (NO CARRIER)."""
        call = self.calls.get(server)
        if call is None or call.ended:
            if previous is None:
                raise ResultCode("NO CARRIER")
            return await previous(request)
        call.fire(CallEvent.RESUME)
        self._trace_call(call, "resumed", "ATO: back online")
        server.after_response(lambda: self._serve(call))
        raise ResultCode("CONNECT")

    async def hang_up(
        self, request: AtRequest, server: AtServer, previous: Handler | None
    ) -> list[str] | None:
        """H: ends this line's suspended data call (LCP Terminate-Request first), then what the set before does."""
        call = self.calls.get(server)
        if call is not None:
            # online command state: the line is AT's, so no LCP Terminate-Request goes into it (V.250 6.3.6)
            self._end(call, "ATH", announce=False)
            if previous is None:
                return None
        if previous is None:
            if request.args and request.args[0] not in (0, None):
                raise AtCommandError()
            return None
        return await previous(request)

    def datacnt(self, request: AtRequest) -> list[str] | None:
        """%DATACNT[=<cid>]: `%DATACNT: <cid>,<bytes to the host>,<bytes from the host>` per context that carried
        a data call."""
        if request.kind is CommandKind.TEST:
            return ["%DATACNT: (1-16)"]
        wanted = request.args[0] if request.kind is CommandKind.SET and request.args else None
        if wanted is not None and not isinstance(wanted, int):
            raise CmeError(CME_BAD_PARAMETERS)
        lines = []
        for cid, (tx, rx) in sorted(self._volumes().items()):
            if wanted is None or cid == wanted:
                lines.append(f"%DATACNT: {cid},{tx},{rx}")
        return lines

    def _volumes(self) -> dict[int, list[int]]:
        volumes = {cid: list(v) for cid, v in self.volumes.items()}
        for call in self.calls.values():
            total = volumes.setdefault(call.cid, [0, 0])
            total[0] += call.conn.counters.tx_bytes
            total[1] += call.conn.counters.rx_bytes
        return volumes

    # --- the call's life ---
    async def _start(self, server: AtServer, cid: int | None) -> None:
        if server in self.calls and not self.calls[server].ended:
            raise CmeError(CME_NOT_ALLOWED)  # one call per line: ATO resumes it, ATH ends it
        plane = self.plane
        if plane is None:
            raise CmeError(CME_NOT_SUPPORTED)  # --network host: no packet plane to route the host's packets
        core = self.core
        definitions = core.definitions
        # a dial that names no context, on a modem where the host defined none: a context of its own, never one
        # that is active for another user (the card's BIP channel), whose end would end this call too
        implicit = cid is None and not definitions and not core.authentications
        if cid is None:
            cid = min(definitions) if definitions else self._free_cid()
        if not 1 <= cid <= 16:
            raise CmeError(CME_BAD_PARAMETERS)
        apn = (definitions[cid][1] if cid in definitions else DEFAULT_APN) or DEFAULT_APN
        auth = core.authentications.get(cid)
        gateway = IPv4Address(core.network.gateway)
        self._count += 1
        rng = random.Random(f"ppp/{self._count}")
        if auth is not None:
            # +CGAUTH (27.007 10.1.31) gave the credentials: the context is activated now and the host is not
            # asked to authenticate (the modem would have nothing to check its answer against)
            from bipsim.cp.commands import PDP_CME

            try:
                context, end, scope = await self._activate(plane, apn, cid, auth[1], auth[2])
            except PdpError as exc:
                raise CmeError(PDP_CME.get(exc.cause, CME_GPRS)) from exc
            except _BearerBusy as exc:
                raise CmeError(CME_NOT_ALLOWED) from exc
            conn = PppConnection(
                gateway,
                IPv4Address(context.address),
                tuple(IPv4Address(d) for d in context.dns),
                auth_methods=(),
                config=self.config,
                rng=rng,
            )
            call = DataCall(cid, context, conn, server, end, scope, apn=apn)
            summary = f"data call on context {cid} ({context.address})"
        else:
            # the host's PAP/CHAP answer activates the context (the network checks it), as modems do
            conn = PppConnection(
                gateway,
                IPv4Address(0),
                auth_methods=HOST_METHODS,
                config=self.config,
                rng=rng,
                relay_auth=True,
            )
            call = DataCall(cid, None, conn, server, None, None, apn=apn, implicit_cid=implicit)
            summary = f"data call on context {cid}: the host's credentials activate it"
        self.calls[server] = call
        self._trace_call(call, "connect", summary, apn=apn)
        server.after_response(lambda: self._begin(call))
        raise ResultCode("CONNECT")

    def _free_cid(self) -> int:
        """The lowest context identifier no active context has (1 when all are taken: the activation then meets
        the network's own rule for an identifier in use)."""
        active = self.core.network.contexts
        return next((cid for cid in range(1, 17) if cid not in active), 1)

    async def _activate(
        self,
        plane: PacketPlane,
        apn: str,
        cid: int,
        user: str,
        password: str,
        chap: tuple[int, bytes, bytes] | None = None,
    ) -> tuple[PdpContext, LinkEnd, trio.CancelScope]:
        """Activates the context and opens its bearer; what this activated is deactivated again when the bearer
        cannot be had. PdpError (the network's cause) or _BearerBusy."""
        network = self.core.network
        before = network.contexts.get(cid)
        context = network.activate(apn, user, password, cid=cid, chap=chap)
        created = context is not before
        try:
            end, scope = await self._bearer(plane, context)
        except (ValueError, CmeError) as exc:  # the address carries another bearer already (the card's BIP)
            if created and network.contexts.get(cid) is context:
                network.deactivate(cid, "data call: no bearer")
            raise _BearerBusy(str(exc)) from exc
        return context, end, scope

    async def _authorize(self, call: DataCall, credentials: Credentials) -> None:
        """The host's credentials: activate the call's context with them; the host hears the network's verdict
        (PAP Ack/Nak, CHAP Success/Failure). A refusal ends the call (NO CARRIER) with the cause for +CEER."""
        plane = self.plane
        now = trio.current_time()
        if call.implicit_cid and call.cid in self.core.network.contexts:
            call.cid = self._free_cid()  # taken since the dial (the card opened a channel): another one
        try:
            if plane is None:
                raise _BearerBusy("no packet plane")
            context, end, scope = await self._activate(
                plane, call.apn, call.cid, credentials.user, credentials.password, credentials.chap
            )
        except (PdpError, _BearerBusy) as exc:
            cause = f"PDP activation of <cid> {call.cid} rejected: {exc}"
            self.core.last_cause = cause
            self._trace_call(call, "activation_failed", cause, error=True, user=credentials.user)
            events = call.conn.authorize(False, now, reason=str(exc))
        else:
            call.context, call.end, call.scope = context, end, scope
            if call.ended:  # the call ended while the bearer came up
                self._release(call, "the call ended during activation")
                return
            events = call.conn.authorize(
                True,
                now,
                address=IPv4Address(context.address),
                dns=tuple(IPv4Address(d) for d in context.dns),
            )
        await self._events(call, events)

    async def _bearer(self, plane: PacketPlane, context: PdpContext) -> tuple[LinkEnd, trio.CancelScope]:
        """The context's radio link to the gateway, its packets for the host's PPP link."""
        from bipsim.net.radio import radio_link

        await plane.ready.wait()
        nursery = plane._nursery  # the plane's tasks live as long as the CP; so does a bearer
        pgw = plane.pgw
        if nursery is None or pgw is None:
            raise CmeError(CME_GPRS)
        self._count += 1
        cp_end, pgw_end, link = radio_link(
            plane.profile, plane.options.seed * 1000 + 500 + self._count, tracer=self.tracer
        )
        scope = trio.CancelScope()
        address = IPv4Address(context.address)

        async def carry(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                async with trio.open_nursery() as inner:
                    await inner.start(link.run)
                    await pgw.attach(address, pgw_end)
                    task_status.started()
                    inner.start_soon(self._downlink, context.cid, cp_end)

        await nursery.start(carry)
        return cp_end, scope

    async def _downlink(self, cid: int, end: LinkEnd) -> None:
        """The gateway's packets for the host: into PPP while the call is online, else dropped."""
        while True:
            try:
                ip_packet = await end.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                gone = next((c for c in self.calls.values() if c.end is end), None)
                if gone is not None and not gone.ended:  # the radio bearer went, not the call's own end
                    self._ended_elsewhere(gone, "the radio bearer went away")
                return
            call = next((c for c in self.calls.values() if c.end is end), None)
            if call is None or call.ended:
                return
            if not call.online:
                call.dropped_down += 1
                continue
            events = call.conn.send_ip(ip_packet)
            await self._events(call, events)

    async def _begin(self, call: DataCall) -> None:
        events = call.conn.open(trio.current_time())
        await self._events(call, events)
        await self._serve(call)

    async def _serve(self, call: DataCall) -> None:
        """The online data state on the call's line until +++ or DTR dropped under &D1 (OK, command mode) or the
        call's end (NO CARRIER)."""
        server = call.server
        stream = server.stream
        escape = EscapeDetector(server.settings.s12 / 50, now=trio.current_time())
        pending = server.take_over()
        server.online_data = True
        call.dtr_dropped = False
        mux, dlci = getattr(stream, "mux", None), getattr(stream, "dlci", None)
        listeners = getattr(mux, "signal_listeners", None)

        def on_signals(changed: int, signals: int) -> None:
            # the DTE's DTR is the MSC's RTC bit on its DLC (3GPP TS 27.010 5.4.6.3.7)
            if changed == dlci and not signals & MSC_RTC and server.settings.dtr != 0:
                call.dtr_dropped = True
                call.wake()

        if isinstance(listeners, list):
            listeners.append(on_signals)
        try:
            while not call.ended:
                if pending:
                    data, pending = pending, b""
                else:
                    deadlines = [d for d in (call.conn.deadline, escape.deadline) if d is not None]
                    data = None
                    with trio.move_on_at(min(deadlines) if deadlines else math.inf) as scope:
                        call.waiting = scope
                        try:
                            data = bytes(await stream.receive_some(65536))
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            data = b""
                    call.waiting = None
                now = trio.current_time()
                if call.dtr_dropped:
                    call.dtr_dropped = False
                    if server.settings.dtr == 2:  # &D2: clear the call down (V.250 6.2.9)
                        self._trace_call(call, "dtr", "DTR dropped (&D2): hang up")
                        await self._terminate(call, "DTR dropped")
                        break
                    server.online_data = False  # &D1: online command state, OK
                    call.fire(CallEvent.ESCAPE)
                    self._trace_call(call, "dtr", "DTR dropped (&D1): online command mode")
                    await server.send_result("OK")
                    return
                if call.ended:
                    break
                if data is None:
                    if escape.expired(now):
                        server.online_data = False
                        call.fire(CallEvent.ESCAPE)
                        self._trace_call(call, "escape", "+++: online command mode")
                        await server.send_result("OK")
                        return
                    await self._events(call, call.conn.handle_timer(now))
                    continue
                if not data:  # the line is gone: the call with it
                    server.gone = True
                    await self._events(call, call.conn.lower_down(now))
                    return
                passed = escape.feed(data, now)
                if passed:
                    await self._events(call, call.conn.receive_data(passed, now))
        finally:
            server.online_data = False
            if isinstance(listeners, list) and on_signals in listeners:
                listeners.remove(on_signals)
        if call.ended and not server.gone:
            if call.last_words:
                async with call.write_lock:
                    try:
                        await stream.send_all(call.last_words)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        server.gone = True
                        return
            await server.send_result("NO CARRIER")

    async def _events(self, call: DataCall, events: list[PppEvent]) -> None:
        for event in events:
            self._trace(call, event)
            if isinstance(event, IpPacket):
                try:
                    if call.end is not None:
                        call.end.send_nowait(event.packet)
                except trio.ClosedResourceError:
                    pass
            elif isinstance(event, LinkDown):
                self._end(call, event.reason)
            elif isinstance(event, Credentials) and not call.ended:
                await self._authorize(call, event)
        data = call.conn.data_to_send()
        if data and not call.server.gone:
            async with call.write_lock:
                try:
                    await call.server.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    call.server.gone = True
                    self._end(call, "the line went away")

    async def _terminate(self, call: DataCall, reason: str) -> None:
        """Ends the call from our side: LCP Terminate-Request, and the call is over (the host's Terminate-Ack is
        not waited for in command mode: nobody reads the line for PPP then)."""
        events = call.conn.close(reason, trio.current_time())
        await self._events(call, events)
        self._end(call, reason)

    def _end(self, call: DataCall, reason: str, *, announce: bool = True) -> None:
        """The call is over. In online data state its loop says NO CARRIER; in online command state nobody
        would, so it goes out here unsolicited (V.250 5.7.2) unless `announce` is off (ATH answers OK)."""
        if call.ended:
            return
        suspended = call.state is CallState.COMMAND
        call.fire(CallEvent.END)
        call.reason = reason
        counters = call.conn.counters
        total = self.volumes.setdefault(call.cid, [0, 0])
        total[0] += counters.tx_bytes
        total[1] += counters.rx_bytes
        if self.calls.get(call.server) is call:
            del self.calls[call.server]
        self._trace_call(
            call,
            "ended",
            f"data call on context {call.cid} ended: {reason}",
            reason=reason,
            tx_bytes=counters.tx_bytes,
            rx_bytes=counters.rx_bytes,
            dropped_in_command_mode=call.dropped_down,
        )
        self._release(call, reason)
        nursery = self.plane._nursery if self.plane is not None else None
        if suspended and announce and not call.server.gone and nursery is not None:
            nursery.start_soon(call.server.send_result, "NO CARRIER")

    def _release(self, call: DataCall, reason: str) -> None:
        """The call's bearer and its context."""
        if call.end is not None:
            call.end.close()
        if call.scope is not None:
            call.scope.cancel()
        context = call.context
        if context is None:
            return
        if self.plane is not None and self.plane.pgw is not None:
            self.plane.pgw.detach(IPv4Address(context.address), reason)
        if self.core.network.contexts.get(call.cid) is context:
            self.core.network.deactivate(call.cid, "data call ended")

    def _deactivated(self, context: PdpContext, reason: str) -> None:
        for call in list(self.calls.values()):
            if call.context is None:
                continue
            if call.context is context or call.context.address == context.address and call.cid == context.cid:
                self._ended_elsewhere(call, f"context deactivated: {reason}")

    def _ended_elsewhere(self, call: DataCall, reason: str) -> None:
        """The network ended the call: online, the host gets a Terminate-Request before NO CARRIER from the
        call's loop; in online command mode no PPP goes into the AT line and NO CARRIER comes unsolicited."""
        if call.online:
            call.conn.close(reason, trio.current_time())
            call.last_words = call.conn.data_to_send()
        self._end(call, reason)
        call.wake()

    # --- traces ---
    def _ends(self, call: DataCall, incoming: bool) -> tuple[Actor, Actor]:
        return (Actor.AP, Actor.CP) if incoming else (Actor.CP, Actor.AP)

    def _fields(self, call: DataCall, **more: Any) -> dict[str, Any]:
        dlci = getattr(call.server.stream, "dlci", None)
        fields: dict[str, Any] = {"cid": call.cid, **more}
        if isinstance(dlci, int):
            fields["dlci"] = dlci
        return fields

    def _trace(self, call: DataCall, event: PppEvent) -> None:
        tracer = self.tracer
        if isinstance(event, (FrameSent, FrameReceived, IpPacket)):
            incoming = not isinstance(event, FrameSent)
            protocol = PROTO_IP if isinstance(event, IpPacket) else event.protocol
            payload = event.packet if isinstance(event, IpPacket) else event.payload
            kind = _KIND.get(protocol, Kind.PPP_FRAME)
            name = _NAMES.get(protocol, f"0x{protocol:04X}")
            code = payload[0] if payload and protocol != PROTO_IP else None
            what = CODE_NAMES.get(code or 0, f"code {code}") if protocol in (PROTO_LCP, PROTO_IPCP) else ""
            if protocol in (PROTO_PAP, PROTO_CHAP) and code is not None:
                what = f"code {code}"
            src, dst = self._ends(call, incoming)
            fields = self._fields(call, protocol=protocol, direction="in" if incoming else "out")
            if code is not None:
                fields["code"] = code
            fields["length"] = len(payload)
            tracer.emit(src, dst, Layer.PPP, f"{name} {what}".strip(), event.frame, kind=kind, fields=fields)
        elif isinstance(event, FrameDropped):
            src, dst = self._ends(call, True)
            tracer.emit(
                src,
                dst,
                Layer.PPP,
                f"PPP frame dropped: {event.reason}",
                event.frame[:256],
                error=True,
                kind=Kind.PPP_DROPPED,
                fields=self._fields(call, reason=event.reason),
            )
        elif isinstance(event, ProtocolRejected):
            self._trace_call(
                call, "protocol_reject", f"Protocol-Reject of 0x{event.protocol:04X}", protocol=event.protocol
            )
        elif isinstance(event, LinkUp):
            self._trace_call(
                call, "link_up", f"LCP opened (auth {event.auth})", mru=event.mru, auth=event.auth
            )
        elif isinstance(event, Authenticated):
            self._trace_call(
                call,
                "authenticated" if event.ok else "auth_failed",
                f"{event.method} {'ok' if event.ok else 'failed'} for {event.user!r}",
                error=not event.ok,
                method=event.method,
                user=event.user,
            )
        elif isinstance(event, NetworkUp):
            self._trace_call(
                call,
                "network_up",
                f"IPCP opened: host {event.address}",
                address=str(event.address),
                dns=[str(d) for d in event.dns],
            )
        elif isinstance(event, LinkDown):
            self._trace_call(call, "link_down", f"PPP link down: {event.reason}", reason=event.reason)

    def _trace_call(
        self, call: DataCall, event: str, summary: str, *, error: bool = False, **fields: Any
    ) -> None:
        self.tracer.emit(
            Actor.CP,
            Actor.AP,
            Layer.PPP,
            summary,
            error=error,
            kind=Kind.PPP_CALL,
            fields=self._fields(call, event=event, **fields),
        )
