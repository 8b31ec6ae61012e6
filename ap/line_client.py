"""The AP side of the serial line (the DTE, like a phone's RIL): probe the modem with AT, ATE0, AT+CMEE=1, switch
to 27.010 with AT+CMUX=0, start the multiplexer as initiator and open DLC 0, 1 (modem control) and 2 (proxy).
On DLC 1 it sends ATE0 and AT+CMEE=1 again, as a RIL does on each channel it opens: settings are per channel on
real modems, and the AP's SMS-PP retry reads the numeric +CME ERROR there.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from bipsim.link.at_chat import AtChat, AtTimeout
from bipsim.link.cmux import CmuxParams, DlcStream, Mux
from bipsim.trace.events import Actor
from bipsim.trace.recorder import NULL_TRACER, Tracer


class ModemNotAnswering(Exception):
    pass


@dataclass
class MuxSession:
    mux: Mux
    modem: DlcStream  # DLC 1
    proxy: DlcStream  # DLC 2


async def probe_and_switch(
    line: trio.abc.Stream, params: CmuxParams, *, tracer: Tracer = NULL_TRACER, attempts: int = 20
) -> None:
    """Plain-AT handshake and AT+CMUX; raises ModemNotAnswering when the CP stays silent."""
    chat = AtChat(line, tracer=tracer, local=Actor.AP, remote=Actor.CP, timeout=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(chat.run)
        for _ in range(attempts):
            try:
                if (await chat.command("AT", timeout=0.5)).ok:
                    break
            except AtTimeout:
                continue
        else:
            nursery.cancel_scope.cancel()
            raise ModemNotAnswering("the modem did not answer AT")
        for command in ("ATE0", "AT+CMEE=1"):
            if not (await chat.command(command)).ok:
                nursery.cancel_scope.cancel()
                raise ModemNotAnswering(f"the modem refused {command}")
        t1, t2 = max(1, round(params.t1 * 100)), max(2, round(params.t2 * 100))
        response = await chat.command(f"AT+CMUX=0,0,5,{params.n1},{t1},{params.n2},{t2}")
        nursery.cancel_scope.cancel()  # stop reading: from here on the line carries 27.010 frames
    if not response.ok:
        raise ModemNotAnswering(f"the modem refused AT+CMUX: {response.final}")


CHANNEL_SETUP = ("ATE0", "AT+CMEE=1")


async def open_session(mux: Mux) -> MuxSession:
    modem = await mux.open_dlc(1)
    proxy = await mux.open_dlc(2)
    return MuxSession(mux, modem, proxy)


async def setup_channel(chat: AtChat) -> None:
    """ATE0 and AT+CMEE=1 on a freshly opened modem channel, through the chat that reads it for the session (a
    chat of its own would lose what it had read when it stopped); raises ModemNotAnswering when refused."""
    for command in CHANNEL_SETUP:
        try:
            response = await chat.command(command, timeout=5.0)
        except AtTimeout as exc:
            raise ModemNotAnswering(f"no answer to {command} on the modem channel") from exc
        if not response.ok:
            raise ModemNotAnswering(f"the modem refused {command} on the modem channel: {response.final}")
