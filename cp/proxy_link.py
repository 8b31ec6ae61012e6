"""The CP's view of the AP proxy: the current CMUX session and the AtChat on DLC 2 (docs/protocols.md, "The serial
line" and "The proxy dialect").

The line service attaches them when the AP opens DLC 2 and detaches them when the multiplexer or the line goes
away; bearers wait here (briefly) for the proxy instead of failing while the AP is (re)connecting. The chat reads
the AP's answers bounded like every AT line (MAX_LINE, link/at_syntax.py); a %WEBEVT or other line with no handler
in `urc_handlers` is traced and dropped when it arrives, never kept for the life of the DLC.
"""

from __future__ import annotations

import trio

from bipsim.link.at_chat import AtChat, UrcHandler
from bipsim.link.cmux import Mux


class ProxyLink:
    def __init__(self) -> None:
        self.mux: Mux | None = None
        self.chat: AtChat | None = None
        self.ready = trio.Event()
        # no AP to wait for: a standard host drives a line that never entered CMUX, or the AP never attached in
        # the CP's wait for it (docs/protocols.md "BIP with a standard host"); a bearer falls back at once
        self.absent = False
        self.absent_reason = ""
        # the AP attached once, or it was found absent: the CP's start waits for it
        self.settled = trio.Event()
        # (prefix, handler) given to each chat attached
        self.urc_handlers: list[tuple[str, UrcHandler]] = []

    def attach(self, mux: Mux, chat: AtChat) -> None:
        self.mux, self.chat = mux, chat
        self.absent = False
        self.ready.set()
        self.settled.set()

    def give_up(self, reason: str) -> bool:
        """No AP is coming for now (`reason` says why); True the first time. `attach` undoes it, and so does
        `expect` (a line entering CMUX: maybe our AP after all)."""
        if self.absent or self.ready.is_set():
            return False
        self.absent, self.absent_reason = True, reason
        self.settled.set()
        return True

    def expect(self) -> None:
        """A line entered CMUX: bearers wait for the proxy again."""
        self.absent = False

    def detach(self, chat: AtChat) -> None:
        if self.chat is chat:
            self.mux, self.chat = None, None
            self.ready = trio.Event()

    async def wait(self, timeout: float) -> tuple[Mux, AtChat] | None:
        """The attached proxy, waiting up to `timeout` seconds for the AP to attach.

        A multiplexer that has already closed (the line just went away, the line service has not detached it
        yet) does not count: the caller waits for the AP's next attach instead of failing on a dead line.
        """
        if self.absent and not self.ready.is_set():
            return None  # a standard host: nobody will answer %GETNET or carry the channel
        with trio.move_on_after(timeout):
            while True:
                await self.ready.wait()
                if self.mux is not None and self.chat is not None and not self.mux.closed:
                    return self.mux, self.chat
                await trio.sleep(0.05)  # detaching is imminent; then `ready` is a fresh event
        if self.mux is None or self.chat is None or self.mux.closed:
            return None
        return self.mux, self.chat
