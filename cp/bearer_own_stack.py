"""Embodiment 1 of CN101594614A: the CP asks the AP for network parameters (AT%GETNET -> %NETPAR on DLC 2),
activates a packet data context in the simulated network, and connects from its own process (docs/protocols.md,
"The proxy dialect" and "The patent's steps"). Its TCP events are tcp.connect/tcp.accept/tcp.error/tcp.close/
tcp.closed with the channel (and host and port).

Failures map to TS 102 223 results: no proxy or +CME ERROR: 30 -> 0x20 "no service" (8.12.2); the network's
refusal -> 0x21 with the SM cause, bit 8 set (8.12.?); TCP refused or unreachable -> 0x3A "remote device not
reachable" (8.12.11).
"""

from __future__ import annotations

import trio

from bipsim.cp.bearer import LinkError
from bipsim.cp.network import CellularNetwork, PdpError
from bipsim.cp.proxy_link import ProxyLink
from bipsim.link.at_chat import AtTimeout
from bipsim.link.at_syntax import AtSyntaxError, parse_args, quote
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.cat import BipErrorCause, GeneralResult, OpenChannel, TerminalProblem

NO_SERVICE = LinkError(
    GeneralResult.TERMINAL_UNABLE, bytes((TerminalProblem.NO_SERVICE,)), "no network service"
)


class OwnStackBearer:
    embodiment = 1
    name = "own-stack"

    def __init__(
        self,
        proxy: ProxyLink,
        network: CellularNetwork,
        *,
        tracer: Tracer = NULL_TRACER,
        timeout: float = 30.0,
    ) -> None:
        self.proxy = proxy
        self.network = network
        self.tracer = tracer
        self.timeout = timeout
        self.contexts: dict[int, int] = {}

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

    async def connect(self, channel: int, request: OpenChannel) -> trio.abc.Stream:
        apn, user, password = await self.network_parameters(channel, request)
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
        self.contexts[channel] = context.cid
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
            },
        )
        assert request.destination is not None
        where = f"{request.destination}:{request.port}"
        address = {"host": request.destination, "port": request.port, "channel": channel}
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
            with trio.fail_after(self.timeout):
                stream = await trio.open_tcp_stream(request.destination, request.port)
        except (OSError, trio.TooSlowError) as exc:
            self._release(channel)
            self.tracer.emit(
                Actor.OTA,
                Actor.CP,
                Layer.TCP,
                f"TCP connect to {where} failed: {exc}",
                error=True,
                kind=Kind.TCP_ERROR,
                fields={**address, "error": str(exc) or type(exc).__name__},
            )
            raise LinkError(
                GeneralResult.BIP_ERROR,
                bytes((BipErrorCause.REMOTE_DEVICE_NOT_REACHABLE,)),
                f"connect {where}: {exc}",
            ) from exc
        except BaseException:  # cancelled, or anything else: the context does not outlive the attempt
            self._release(channel)
            raise
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
            await stream.aclose()
        finally:
            self._release(channel)  # whatever the close did, the context goes
        self.tracer.emit(
            Actor.OTA,
            Actor.CP,
            Layer.TCP,
            f"TCP close acknowledged (channel {channel})",
            step="S415",
            kind=Kind.TCP_CLOSED,
            fields={"channel": channel},
        )

    def _release(self, channel: int) -> None:
        """Deactivates the channel's packet data context: its address goes back to the network's pool."""
        cid = self.contexts.pop(channel, None)
        if cid is not None:
            self.network.deactivate(cid)
