"""The AP's proxy service (CN101594614A, docs/protocols.md "The proxy dialect"): answers the CP on CMUX DLC 2 and relays the data of
BIP channel N between DLC 2+N and its own TCP connection (embodiment 2), or hands out the cellular parameters the CP
needs for its own stack (embodiment 1).

+CME ERROR codes (3GPP TS 27.007 section 9.2): 30 no network service (no Wi-Fi for %WEBOPCH, no APN for %GETNET),
3 operation not allowed (destination not on the allowlist), 31 network timeout (connect took longer than 30 s),
100 unknown (the server refused or is unreachable), 50 incorrect parameters, 21 invalid index (no such channel).

AT%WEBCLCH first drains the channel's DLC: whatever the CP sent on DLC 2+N before the command (the CMUX line keeps
frames in order, so it has arrived already; e.g. the card's TLS close_notify, S709) and the chunk the relay is
writing are flushed to TCP, bounded by DRAIN_LIMIT; then the TCP close (FIN), then OK.

The server closing a connection ends its channel with `%WEBEVT: <ch>,"closed"`. A failure in a channel's relay task
(a bug, an error no pump expects) ends that channel alone, with an app.error trace event and
`%WEBEVT: <ch>,"error",100` (+CME ERROR 100, unknown); the proxy and the AP go on (docs/protocols.md).
Command lines on DLC 2 are bounded like every AT line (MAX_LINE in link/at_syntax.py: ERROR past it).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from bipsim.ap.apn_db import ApnDatabase
from bipsim.ap.network import ApNetwork
from bipsim.ap.wlan import WlanLink
from bipsim.link.at_server import AtServer, CmeError
from bipsim.link.at_syntax import AtArg, AtRequest, CommandKind, quote
from bipsim.link.cmux import DlcStream
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer

CONNECT_TIMEOUT = 30.0
TASK_FAILED = 100  # the <n> of %WEBEVT "error" when the channel's relay task failed: +CME ERROR 100, unknown
DRAIN_IDLE = 0.05  # AT%WEBCLCH: the DLC quiet this long means its data up to the command has been relayed
DRAIN_LIMIT = 2.0  # ...and the drain never holds the OK longer than this (a TCP peer that does not read)


@dataclass
class ProxiedChannel:
    channel: int
    # the server's connection (through the Wi-Fi link model with --wlan, ap/wlan.py)
    tcp: trio.abc.HalfCloseableStream
    dlc: DlcStream
    cancel: trio.CancelScope
    closing: bool = False
    # the DLC -> TCP pump: its wait for DLC data (cancelled to switch to draining) and its end
    waiting: trio.CancelScope = field(default_factory=trio.CancelScope)
    drained: trio.Event = field(default_factory=trio.Event)

    @property
    def dlci(self) -> int | None:
        """The data DLC's number (2 + channel on the line; None for a stream that is not a DLC)."""
        dlci = getattr(self.dlc, "dlci", None)
        return dlci if isinstance(dlci, int) else None


def _arg(args: tuple[AtArg, ...], index: int) -> AtArg:
    return args[index] if index < len(args) else None


class ProxyService:
    def __init__(
        self,
        network: ApNetwork,
        apns: ApnDatabase,
        imsi: Callable[[], str | Awaitable[str]],
        *,
        tracer: Tracer = NULL_TRACER,
    ) -> None:
        self.network = network
        self.apns = apns
        self.imsi = imsi
        self.tracer = tracer
        self.channels: dict[int, ProxiedChannel] = {}
        self.data_dlcs: dict[int, DlcStream] = {}
        self._dlc_arrived = trio.Event()
        self.server: AtServer | None = None
        self._nursery: trio.Nursery | None = None
        # the Wi-Fi link model between the relay and the server (bipsim ap --wlan); None: the host's own speed
        self.wlan: WlanLink | None = None

    def data_dlc(self, dlc: DlcStream) -> None:
        """The CP opened DLC 2+N for channel N."""
        self.data_dlcs[dlc.dlci - 2] = dlc
        self._dlc_arrived.set()
        self._dlc_arrived = trio.Event()

    async def serve(self, dlc: DlcStream) -> None:
        """Serves the proxy dialect on DLC 2 until the CP or the line goes away."""
        server = AtServer(dlc, tracer=self.tracer, local=Actor.AP, remote=Actor.CP, echo=False)
        server.cmee = (
            1  # the proxy dialect answers failures with numeric +CME ERROR codes (docs/protocols.md)
        )
        server.register("%GETNET", self.getnet)
        server.register("%WEBOPCH", self.webopch)
        server.register("%WEBCLCH", self.webclch)
        self.server = server
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await server.run()
            finally:
                # the multiplexer is gone (line dropped, CP restarted): its proxied connections go with it, so
                # that the CP's next %WEBOPCH for the same channel starts afresh instead of "in use"
                stale = list(self.channels.values())
                self.channels.clear()
                self.data_dlcs.clear()
                for channel in stale:
                    channel.closing = True
                    channel.cancel.cancel()
                    self.tracer.emit(
                        Actor.AP,
                        Actor.OTA,
                        Layer.TCP,
                        f"TCP FIN (channel {channel.channel}: the CP went away)",
                        kind=Kind.TCP_CLOSE,
                        fields={"channel": channel.channel},
                    )
                    with trio.CancelScope(shield=True):
                        await channel.tcp.aclose()
                nursery.cancel_scope.cancel()
        self.server = None

    async def getnet(self, request: AtRequest) -> list[str] | None:
        if request.kind is CommandKind.TEST:
            return ["%GETNET: (1-7),(1-11)"]
        channel, bearer = _arg(request.args, 0), _arg(request.args, 1)
        if not isinstance(channel, int) or not 1 <= channel <= 7 or not isinstance(bearer, int):
            raise CmeError(50)
        wanted = _arg(request.args, 2)
        if not self.network.cellular:
            raise CmeError(30)
        try:
            # the AP's RIL reads the IMSI now if its start-up +CIMI got none (the card was still starting)
            found = self.imsi()
            imsi = await found if inspect.isawaitable(found) else found
        except LookupError:
            raise CmeError(30) from None
        entry = self.apns.for_imsi(imsi, str(wanted) if wanted else "")
        if entry is None:
            self.tracer.emit(
                Actor.AP,
                Actor.CP,
                Layer.APP,
                f"no APN for IMSI {imsi[:5]}...",
                error=True,
                kind=Kind.APP_ERROR,
                fields={"where": "%GETNET", "error": "no APN", "channel": channel},
            )
            raise CmeError(30)
        assert self.server is not None
        self.server.answer_step = "S403"
        return [f"%NETPAR: {channel},{quote(entry.apn)},{quote(entry.user)},{quote(entry.password)}"]

    async def webopch(self, request: AtRequest) -> list[str] | None:
        if request.kind is CommandKind.TEST:
            return ['%WEBOPCH: (1-7),("TCP","UDP"),,(1-65535)']
        channel, kind, host, port = (_arg(request.args, i) for i in range(4))
        if (
            not isinstance(channel, int)
            or not 1 <= channel <= 7
            or not isinstance(port, int)
            or not isinstance(host, str)
        ):
            raise CmeError(50)
        if str(kind).upper() != "TCP":
            raise CmeError(4)  # UDP relaying is not offered by this proxy
        if channel in self.channels:
            raise CmeError(3)
        if not self.network.wifi:
            self.tracer.emit(
                Actor.AP,
                Actor.CP,
                Layer.APP,
                "no Wi-Fi: cannot open a proxied connection",
                error=True,
                kind=Kind.APP_ERROR,
                fields={"where": "%WEBOPCH", "error": "no Wi-Fi", "channel": channel},
            )
            raise CmeError(30)
        if not self.network.allowed(host, port):
            self.tracer.emit(
                Actor.AP,
                Actor.CP,
                Layer.APP,
                f"{host}:{port} is not on the allowlist",
                error=True,
                kind=Kind.APP_ERROR,
                fields={"where": "%WEBOPCH", "error": "not on the allowlist", "channel": channel},
            )
            raise CmeError(3)
        with trio.move_on_after(5):
            while channel not in self.data_dlcs:
                await self._dlc_arrived.wait()
        dlc = self.data_dlcs.get(channel)
        if dlc is None:
            raise CmeError(21)
        where = {"host": host, "port": port, "channel": channel}
        self.tracer.emit(
            Actor.AP,
            Actor.OTA,
            Layer.TCP,
            f"TCP SYN to {host}:{port} (channel {channel})",
            step="S703",
            kind=Kind.TCP_CONNECT,
            fields=where,
        )
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                tcp = await trio.open_tcp_stream(host, port)
        except trio.TooSlowError:
            self.tracer.emit(
                Actor.AP,
                Actor.OTA,
                Layer.TCP,
                f"TCP connect to {host}:{port} timed out after {CONNECT_TIMEOUT:g} s",
                error=True,
                kind=Kind.TCP_ERROR,
                fields={**where, "error": "timed out"},
            )
            raise CmeError(31) from None
        except OSError as exc:
            self.tracer.emit(
                Actor.OTA,
                Actor.AP,
                Layer.TCP,
                f"TCP connect to {host}:{port} failed: {exc}",
                error=True,
                kind=Kind.TCP_ERROR,
                fields={**where, "error": str(exc)},
            )
            raise CmeError(100) from exc
        self.tracer.emit(
            Actor.OTA,
            Actor.AP,
            Layer.TCP,
            f"TCP SYN-ACK from {host}:{port} (connected)",
            step="S704",
            kind=Kind.TCP_ACCEPT,
            fields=where,
        )
        relayed: trio.abc.HalfCloseableStream = tcp
        if self.wlan is not None and self._nursery is not None:
            relayed = await self._nursery.start(self.wlan.carry, tcp)
        proxied = ProxiedChannel(channel, relayed, dlc, trio.CancelScope())
        self.channels[channel] = proxied
        assert self._nursery is not None
        self._nursery.start_soon(self._relay, proxied)
        assert self.server is not None
        self.server.answer_step = "S705"
        return None

    async def webclch(self, request: AtRequest) -> list[str] | None:
        if request.kind is CommandKind.TEST:
            return ["%WEBCLCH: (1-7)"]
        channel = _arg(request.args, 0)
        proxied = self.channels.pop(channel, None) if isinstance(channel, int) else None
        if proxied is None:
            raise CmeError(21)
        proxied.closing = True
        proxied.waiting.cancel()  # the pump stops waiting and drains what the DLC holds
        with trio.move_on_after(DRAIN_LIMIT) as limit:
            await proxied.drained.wait()
        fields = {"channel": proxied.channel}
        if limit.cancelled_caught:
            self.tracer.emit(
                Actor.AP,
                Actor.OTA,
                Layer.TCP,
                f"channel {proxied.channel}: drain cut short (the server does not read)",
                error=True,
                kind=Kind.TCP_ERROR,
                fields={**fields, "error": "drain cut short"},
            )
        proxied.cancel.cancel()
        self.tracer.emit(
            Actor.AP,
            Actor.OTA,
            Layer.TCP,
            f"TCP FIN (channel {proxied.channel})",
            step="S717",
            kind=Kind.TCP_CLOSE,
            fields=fields,
        )
        await proxied.tcp.aclose()
        self.tracer.emit(
            Actor.OTA,
            Actor.AP,
            Layer.TCP,
            f"TCP close acknowledged (channel {proxied.channel})",
            step="S718",
            kind=Kind.TCP_CLOSED,
            fields=fields,
        )
        self.data_dlcs.pop(proxied.channel, None)
        return None

    async def _relay(self, proxied: ProxiedChannel) -> None:
        """Runs the channel's two pumps; ends the channel when the server closes or a pump fails, never more."""
        failure: Exception | None = None
        try:
            with proxied.cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._dlc_to_tcp, proxied)
                    await self._tcp_to_dlc(proxied)
                    if (
                        not proxied.closing
                    ):  # while AT%WEBCLCH drains, the pump ends on its own (or by its limit)
                        nursery.cancel_scope.cancel()
        except* Exception as group:  # a bug or an error no pump expects: this channel ends, the proxy goes on
            failure = group  # (a cancel from outside that came with it still ends us: except* re-raises it)
            self.tracer.emit(
                Actor.AP,
                Actor.CP,
                Layer.APP,
                f"channel {proxied.channel}: relay failed: {_describe(group)}",
                error=True,
                kind=Kind.APP_ERROR,
                fields={
                    "where": "channel task",
                    "error": _describe(group),
                    "channel": proxied.channel,
                    "dlci": proxied.dlci,
                },
            )
        if proxied.closing:
            return  # AT%WEBCLCH closes the connection and answers
        # the server closed (or the relay failed): tell the CP, and end the data DLC so its reader sees the drop
        if self.channels.get(proxied.channel) is proxied:
            del self.channels[proxied.channel]
        if self.data_dlcs.get(proxied.channel) is proxied.dlc:
            del self.data_dlcs[proxied.channel]
        if failure is None:
            self.tracer.emit(
                Actor.OTA,
                Actor.AP,
                Layer.TCP,
                f"TCP closed by the server (channel {proxied.channel})",
                kind=Kind.TCP_CLOSED,
                fields={"channel": proxied.channel},
            )
        with trio.CancelScope(shield=True):
            await proxied.tcp.aclose()
        event = (
            f'{proxied.channel},"closed"' if failure is None else f'{proxied.channel},"error",{TASK_FAILED}'
        )
        if self.server is not None:
            await self.server.send_urc(f"%WEBEVT: {event}")
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await proxied.dlc.aclose()

    async def _dlc_to_tcp(self, proxied: ProxiedChannel) -> None:
        try:
            await self._pump(proxied)
        finally:
            proxied.drained.set()

    async def _pump(self, proxied: ProxiedChannel) -> None:
        while True:
            data = b""
            if not proxied.closing:
                proxied.waiting = trio.CancelScope()  # a scope serves one `with` only
                with proxied.waiting:  # cancelled by AT%WEBCLCH: nothing is taken from the DLC then
                    data = await proxied.dlc.receive_some(65536)
                    if not data:
                        return
            if proxied.closing and not data:
                with trio.move_on_after(DRAIN_IDLE):
                    data = await proxied.dlc.receive_some(65536)
                if not data:
                    return
            self.tracer.emit(
                Actor.AP,
                Actor.OTA,
                Layer.TCP,
                f"channel {proxied.channel}: {len(data)} bytes",
                data,
                step="S709",
                kind=Kind.TCP_DATA,
                fields={"channel": proxied.channel, "length": len(data), "dlci": proxied.dlci},
            )
            try:
                await proxied.tcp.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async def _tcp_to_dlc(self, proxied: ProxiedChannel) -> None:
        while True:
            try:
                data = bytes(await proxied.tcp.receive_some(65536))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            self.tracer.emit(
                Actor.OTA,
                Actor.AP,
                Layer.TCP,
                f"channel {proxied.channel}: {len(data)} bytes",
                data,
                step="S710",
                kind=Kind.TCP_DATA,
                fields={"channel": proxied.channel, "length": len(data)},
            )
            self.tracer.emit(
                Actor.AP,
                Actor.CP,
                Layer.APP,
                f"channel {proxied.channel}: {len(data)} bytes over DLC {proxied.dlci}",
                data,
                step="S711",
                kind=Kind.APP_EVENT,
                fields={"channel": proxied.channel, "dlci": proxied.dlci},
            )
            try:
                await proxied.dlc.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


def _describe(exc: BaseException) -> str:
    """`Type: message` of an exception, of the first one inside a group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
