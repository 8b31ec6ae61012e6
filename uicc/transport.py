"""The one APDU-exchange interface through which the CP talks to "a card" (ISO/IEC 7816-4, TS 102 221 semantics).

The simulated card is one implementation; a PC/SC reader (`--card pcsc:N`) and a recorded card (`--card trace:F`)
are others. Responses are the response data followed by SW1 SW2, exactly as on the wire after T=0 GET RESPONSE
handling is left to the caller (a 61 xx answer is returned as is).

A card that is pulled, or a reader that is unplugged, is not an error of one APDU but a change of the card's
presence: every transport raises `CardRemoved` for it from `power_on` and `transmit`, so that the CP can mark the
slot empty (27.007 +CME ERROR 10, "SIM not inserted") and power the card on again when it returns.
"""

from __future__ import annotations

from typing import Protocol


class CardRemoved(Exception):
    """The card, or the reader holding it, is gone: no APDU can reach it until `power_on` succeeds again.

    Raised by `power_on` (no card to reset) and by `transmit` (the card went away before or during the exchange;
    the command may or may not have reached it). `reason` is one line for humans and traces.
    """

    def __init__(self, reason: str = "card removed") -> None:
        super().__init__(reason)
        self.reason = reason


class ApduTransport(Protocol):
    """A card reachable by APDUs. Implementations may block in a worker thread; callers await them."""

    async def power_on(self) -> bytes:
        """Resets the card and returns its ATR; raises CardRemoved when there is no card to reset."""
        ...

    async def transmit(self, command: bytes) -> bytes:
        """Sends one command APDU (header + data [+ Le]); returns response data + SW1 SW2.

        Raises CardRemoved when the card or reader went away; the caller must power the card on again.
        """
        ...

    async def close(self) -> None:
        """Powers the card off and releases the reader."""
        ...
