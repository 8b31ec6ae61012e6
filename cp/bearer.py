"""The one interface behind which the CP's bearers sit (ROADMAP item 1): a bearer turns an OPEN CHANNEL request into
a byte stream to the remote end, and tears it down again. The BIP service moves the bytes and reports link events.

Two implementations follow CN101594614A: the CP's own stack (embodiment 1, cp/bearer_own_stack.py) and the AP's
proxy over CMUX (embodiment 2, cp/bearer_ap_proxy.py). A failure raises LinkError with the TS 102 223 result and
additional information the card should see.
"""

from __future__ import annotations

from typing import Protocol

import trio

from bipsim.uicc.cat import OpenChannel


class LinkError(Exception):
    """The link could not be set up: `general` result (0x20, 0x21, 0x3A...) and `additional` information."""

    def __init__(self, general: int, additional: bytes, reason: str) -> None:
        super().__init__(reason)
        self.general = general
        self.additional = additional
        self.reason = reason


class Bearer(Protocol):
    """How the CP reaches the remote end of a BIP channel."""

    embodiment: int  # 1: own stack, 2: AP proxy (selects the patent step labels)
    name: str

    async def connect(self, channel: int, request: OpenChannel) -> trio.abc.Stream:
        """Sets up the link for `channel`; returns the stream of its payload bytes or raises LinkError."""
        ...

    async def disconnect(self, channel: int, stream: trio.abc.Stream) -> None:
        """Tears the link down (TCP close, or AT%WEBCLCH and DISC of the data DLC)."""
        ...
