"""The seam between the card's APDU processor and its CAT application (TS 102 221 section 14, TS 102 223).

The APDU processor owns the status words; the toolkit owns proactive commands. After every APDU the processor asks
`pending_length()` and answers 91 xx instead of 90 00 while a proactive command waits for FETCH.
"""

from __future__ import annotations

from typing import Protocol


class ToolkitError(Exception):
    """Raised by a toolkit method to make the APDU processor answer with status word `sw` (e.g. 0x6F00, 0x9300)."""

    def __init__(self, sw: int, reason: str) -> None:
        super().__init__(f"{sw:04X}: {reason}")
        self.sw = sw
        self.reason = reason


class Toolkit(Protocol):
    """What the card's CAT application offers the APDU processor. All methods are synchronous and pure."""

    def terminal_profile(self, profile: bytes) -> None:
        """TERMINAL PROFILE (80 10): the terminal's capabilities; may queue the first proactive command."""
        ...

    def pending_length(self) -> int:
        """Length of the proactive command waiting for FETCH, 0 when none (then the answer is 90 00)."""
        ...

    def fetch(self) -> bytes:
        """FETCH (80 12): the pending proactive command (BER-TLV 'D0'); raises ToolkitError when none."""
        ...

    def terminal_response(self, data: bytes) -> None:
        """TERMINAL RESPONSE (80 14): the result of the last fetched command; raises ToolkitError on bad data."""
        ...

    def envelope(self, data: bytes) -> bytes:
        """ENVELOPE (80 C2): event download, SMS-PP download, timer expiration; returns response data (may be
        empty). Raises ToolkitError(0x9300) when the toolkit is busy, or another status word on bad data."""
        ...
