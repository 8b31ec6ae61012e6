"""The simulated card as an ApduTransport (uicc/transport.py): what `bipsim cp --card sim` talks to.

It can be pulled and put back (`remove()` / `insert()`), so that tests and scenarios exercise the CP's handling of
a card that goes away (a card without power keeps what its non-volatile memory holds and loses the rest).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from bipsim.uicc.card import SimCard
from bipsim.uicc.transport import CardRemoved


class SimulatedCard:
    """Wraps a SimCard; APDUs are processed in the caller's task (the card is pure and fast)."""

    def __init__(self, card: SimCard) -> None:
        self.card = card
        self.present = True
        # Set by whoever powers the card (the CP's slot) to learn of remove()/insert() at once (a card-detect switch)
        # instead of at its next APDU or retry.
        self.on_insert: Callable[[], None] | None = None
        self.on_remove: Callable[[], None] | None = None
        # Called with the card at the first power-on after a removal: a card without power has lost its volatile
        # state, the toolkit's sessions among it (the CP's simulated_card rebuilds the toolkit here).
        self.on_power_loss: Callable[[SimCard], None] | None = None
        # True from a removal until the next successful power_on: a card that comes back must be reset before use.
        self._needs_reset = False

    def remove(self) -> None:
        """Pulls the card: every later power_on/transmit raises CardRemoved until insert(). Persistent state is saved."""
        if not self.present:
            return
        self.present = False
        self._needs_reset = True
        # A pulled card keeps only what it wrote to its non-volatile memory.
        self.card.save_state()
        if self.on_remove is not None:
            self.on_remove()

    def insert(self) -> None:
        """Puts the card back; it answers again after the next power_on (a reset), as a real card would."""
        if self.present:
            return
        self.present = True
        if self.on_insert is not None:
            self.on_insert()

    async def power_on(self) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self.present:
            raise CardRemoved("no card in the simulated slot")
        if self._needs_reset and self.on_power_loss is not None:
            self.on_power_loss(self.card)
        self._needs_reset = False
        return self.card.reset()

    async def transmit(self, command: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self.present:
            raise CardRemoved("card removed from the simulated slot")
        if self._needs_reset:
            # Inserted again but not yet reset: a real card has no power and answers nothing.
            raise CardRemoved("card inserted but not powered on")
        return self.card.process(command)

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()
        self.card.save_state()
