"""The simulated card as an ApduTransport (uicc/transport.py): what `bipsim cp --card sim` talks to."""

from __future__ import annotations

import trio

from bipsim.uicc.card import SimCard


class SimulatedCard:
    """Wraps a SimCard; APDUs are processed in the caller's task (the card is pure and fast)."""

    def __init__(self, card: SimCard) -> None:
        self.card = card

    async def power_on(self) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.card.reset()

    async def transmit(self, command: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.card.process(command)

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()
        self.card.save_state()
