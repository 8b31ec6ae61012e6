"""The one APDU-exchange interface through which the CP talks to "a card" (ISO/IEC 7816-4, TS 102 221 semantics).

The simulated card is one implementation; a PC/SC reader (`--card pcsc:N`) and a recorded card (`--card trace:F`)
are others. Responses are the response data followed by SW1 SW2, exactly as on the wire after T=0 GET RESPONSE
handling is left to the caller (a 61 xx answer is returned as is).
"""

from __future__ import annotations

from typing import Protocol


class ApduTransport(Protocol):
    """A card reachable by APDUs. Implementations may block in a worker thread; callers await them."""

    async def power_on(self) -> bytes:
        """Resets the card and returns its ATR."""
        ...

    async def transmit(self, command: bytes) -> bytes:
        """Sends one command APDU (header + data [+ Le]); returns response data + SW1 SW2."""
        ...

    async def close(self) -> None:
        """Powers the card off and releases the reader."""
        ...
