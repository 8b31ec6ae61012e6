"""The payload a card's BIP channel carries: a pluggable, sans-IO client (ETSI TS 102 223 section 6.4.27ff).

The card's BIP engine opens the channel, then moves bytes between the channel and a BipClient: the OTA agent
(GlobalPlatform Amd B over PSK-TLS) in production, a simple request/response client in tests.
"""

from __future__ import annotations

from typing import Protocol


class BipClient(Protocol):
    """The application end of one BIP channel, as seen from the card."""

    def connection_made(self) -> bytes:
        """The channel's link is established; returns the first bytes to send (may be empty)."""
        ...

    def data_received(self, data: bytes) -> bytes:
        """Bytes from the remote end arrived; returns bytes to send now (may be empty)."""
        ...

    def connection_lost(self, reason: str) -> None:
        """The link dropped, the channel was refused or the terminal reported a BIP error."""
        ...

    @property
    def done(self) -> bool:
        """True when the session is complete: the engine closes the channel once everything is sent."""
        ...

    @property
    def wants_reconnect(self) -> bool:
        """True when, after a lost connection, the client wants the engine to open the channel again (resume)."""
        ...
