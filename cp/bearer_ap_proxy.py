"""Embodiment 2 of CN101594614A: the AP, already on Wi-Fi, connects for the CP (AT%WEBOPCH on DLC 2) and the
channel's bytes travel on CMUX DLC 2+N (docs/protocols.md, "The serial line" and "The proxy dialect"). The CP opens DLC 2+N before asking.

+CME ERROR answers map to TS 102 223 results: 30 (no network service) -> 0x20 "no service"; 3 (operation not
allowed: the AP's allowlist) -> 0x3A "security error"; 4 (operation not supported: UDP) -> 0x3A "transport level
not available"; anything else, or no answer within 30 s -> 0x3A "remote device not reachable" (TS 102 223 8.12.11).
"""

from __future__ import annotations

import trio

from bipsim.cp.bearer import LinkError
from bipsim.cp.proxy_link import ProxyLink
from bipsim.link.at_chat import AtTimeout
from bipsim.link.at_syntax import quote
from bipsim.link.cmux import MuxError
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.cat import BipErrorCause, GeneralResult, OpenChannel, TerminalProblem, TransportProtocol


def _refusal(code: int | None, final: str) -> LinkError:
    if code == 30:
        return LinkError(GeneralResult.TERMINAL_UNABLE, bytes((TerminalProblem.NO_SERVICE,)), f"AP: {final}")
    if code == 3:
        return LinkError(GeneralResult.BIP_ERROR, bytes((BipErrorCause.SECURITY_ERROR,)), f"AP: {final}")
    if code == 4:  # operation not supported: the proxy does not relay this transport (UDP)
        return LinkError(
            GeneralResult.BIP_ERROR, bytes((BipErrorCause.TRANSPORT_NOT_AVAILABLE,)), f"AP: {final}"
        )
    return LinkError(
        GeneralResult.BIP_ERROR, bytes((BipErrorCause.REMOTE_DEVICE_NOT_REACHABLE,)), f"AP: {final}"
    )


class ApProxyBearer:
    embodiment = 2
    name = "ap-proxy"

    def __init__(self, proxy: ProxyLink, *, tracer: Tracer = NULL_TRACER, timeout: float = 30.0) -> None:
        self.proxy = proxy
        self.tracer = tracer
        self.timeout = timeout

    async def connect(self, channel: int, request: OpenChannel) -> trio.abc.Stream:
        attached = await self.proxy.wait(self.timeout)
        if attached is None:
            raise LinkError(
                GeneralResult.TERMINAL_UNABLE, bytes((TerminalProblem.NO_SERVICE,)), "AP proxy not attached"
            )
        mux, chat = attached
        try:
            dlc = await mux.open_dlc(2 + channel)
        except MuxError as exc:
            raise LinkError(
                GeneralResult.BIP_ERROR,
                bytes((BipErrorCause.NO_CHANNEL_AVAILABLE,)),
                f"DLC {2 + channel}: {exc}",
            ) from exc
        kind = "UDP" if request.protocol == TransportProtocol.UDP_CLIENT_REMOTE else "TCP"
        command = f"AT%WEBOPCH={channel},{quote(kind)},{quote(request.destination or '')},{request.port}"
        chat.response_steps["OK"] = "S705"
        try:
            response = await chat.command(command, timeout=self.timeout, step="S702")
        except AtTimeout as exc:
            await dlc.aclose()
            raise LinkError(
                GeneralResult.BIP_ERROR,
                bytes((BipErrorCause.REMOTE_DEVICE_NOT_REACHABLE,)),
                "AP did not answer %WEBOPCH",
            ) from exc
        chat.response_steps.pop("OK", None)
        if not response.ok:
            await dlc.aclose()
            raise _refusal(response.cme_error, response.final)
        return dlc

    async def disconnect(self, channel: int, stream: trio.abc.Stream) -> None:
        attached = await self.proxy.wait(0)
        if attached is not None:
            _, chat = attached
            try:
                await chat.command(f"AT%WEBCLCH={channel}", timeout=self.timeout, step="S716")
            except AtTimeout:
                pass
        await stream.aclose()
