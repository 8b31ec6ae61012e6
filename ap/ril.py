"""The AP's use of DLC 1, like a phone's RIL: reads the IMSI (+CIMI, to choose the APN), turns on registration
URCs (+CEREG=1) and polls the signal (+CSQ)."""

from __future__ import annotations

import trio

from bipsim.link.at_chat import AtChat, AtTimeout


class Ril:
    def __init__(self, chat: AtChat) -> None:
        self.chat = chat
        self.imsi_value: str | None = None
        self.registration: str | None = None
        self.signal: str | None = None
        chat.add_urc_handler("+CEREG:", self._registration)
        self.ready = trio.Event()

    def _registration(self, line: str) -> None:
        self.registration = line

    def imsi(self) -> str:
        if self.imsi_value is None:
            raise LookupError("IMSI not read yet")
        return self.imsi_value

    async def run(self, poll: float = 5.0) -> None:
        try:
            response = await self.chat.command("AT+CIMI")
            if response.ok and response.lines:
                self.imsi_value = response.lines[0].strip()
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
