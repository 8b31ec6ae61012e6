"""The AP's use of DLC 1, like a phone's RIL: reads the IMSI (+CIMI, to choose the APN), turns on registration
URCs (+CEREG=1) and polls the signal (+CSQ).

The IMSI is read at start and, when that read got no IMSI (the modem's card still starting: +CME ERROR: 14 "SIM
busy", TS 27.007 9.2.1, or any other failure), again when the proxy needs it for %GETNET: by then the card has
issued its OPEN CHANNEL, so it is up. A "SIM busy" answer is retried at SIM_BUSY_RETRY intervals, as 27.007 means
it (a transient state), a bounded number of times.
"""

from __future__ import annotations

import contextlib

import trio

from bipsim.ap.slot_lock import slot_lock
from bipsim.link.at_chat import AtChat, AtTimeout

SIM_BUSY = 14
SIM_BUSY_RETRY = 0.2
SIM_BUSY_ATTEMPTS = 25


class Ril:
    def __init__(self, chat: AtChat) -> None:
        self.chat = chat
        self.imsi_value: str | None = None
        self.registration: str | None = None
        self.signal: str | None = None
        chat.add_urc_handler("+CEREG:", self._registration)
        self.ready = trio.Event()
        self._imsi_lock = trio.Lock()  # one +CIMI at a time: the start-up read and a %GETNET's

    def _registration(self, line: str) -> None:
        self.registration = line

    def imsi(self) -> str:
        if self.imsi_value is None:
            raise LookupError("IMSI not read yet")
        return self.imsi_value

    async def read_imsi(self) -> str:
        """The IMSI, read with +CIMI unless already known; LookupError when the modem gives none."""
        async with self._imsi_lock:
            for _ in range(SIM_BUSY_ATTEMPTS):
                if self.imsi_value is not None:
                    break
                try:
                    # +CIMI answers for the slot the line chose: never while another user has it on slot 2
                    async with slot_lock(self.chat):
                        response = await self.chat.command("AT+CIMI")
                except AtTimeout:
                    break
                if response.ok and response.lines:
                    self.imsi_value = response.lines[0].strip()
                elif response.cme_error == SIM_BUSY:
                    await trio.sleep(SIM_BUSY_RETRY)
                else:
                    break
        return self.imsi()

    async def run(self, poll: float = 5.0) -> None:
        try:
            with contextlib.suppress(LookupError):  # read again when %GETNET needs it
                await self.read_imsi()
            await self.chat.command("AT+CEREG=1")
            response = await self.chat.command("AT+CEREG?")
            self.registration = response.lines[0] if response.lines else None
        except AtTimeout:
            pass
        self.ready.set()
        while True:
            await trio.sleep(poll)
            try:
                response = await self.chat.command("AT+CSQ")
            except AtTimeout:
                continue
            if response.final == "NO CARRIER":
                return
            self.signal = response.lines[0] if response.lines else None
