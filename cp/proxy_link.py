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
        # (prefix, handler) given to each chat attached
        self.urc_handlers: list[tuple[str, UrcHandler]] = []

    def attach(self, mux: Mux, chat: AtChat) -> None:
        self.mux, self.chat = mux, chat
        self.ready.set()

    def detach(self, chat: AtChat) -> None:
        if self.chat is chat:
            self.mux, self.chat = None, None
            self.ready = trio.Event()

    async def wait(self, timeout: float) -> tuple[Mux, AtChat] | None:
        """The attached proxy, waiting up to `timeout` seconds for the AP to attach.

        A multiplexer that has already closed (the line just went away, the line service has not detached it
        yet) does not count: the caller waits for the AP's next attach instead of failing on a dead line.
        """
        with trio.move_on_after(timeout):
            while True:
                await self.ready.wait()
                if self.mux is not None and self.chat is not None and not self.mux.closed:
                    return self.mux, self.chat
                await trio.sleep(0.05)  # detaching is imminent; then `ready` is a fresh event
        if self.mux is None or self.chat is None or self.mux.closed:
            return None
        return self.mux, self.chat
