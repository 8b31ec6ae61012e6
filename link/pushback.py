"""A trio Stream with push-back: bytes a reader took from the line but did not use are handed to the next reader.

The serial line changes hands between protocols: the V.250 AT server reads a chunk that holds AT+CMUX=0<CR> and
already the first 27.010 frames behind it; the multiplexer, at close-down, reads the closing frame and the AT text
behind it. Each reader says what it read past its end (AtServer.leftover, Mux.leftover); `unread` puts those bytes
in front of the next `receive_some`, so no byte is lost at a hand-over.

Follows the trio.abc.Stream contract: each call is a checkpoint, two tasks receiving at once get
trio.BusyResourceError, and after aclose every call gets trio.ClosedResourceError (pushed-back bytes are dropped).
"""

from __future__ import annotations

import trio


class PushbackStream(trio.abc.Stream):
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._pending = bytearray()
        self._receiving = False
        self._closed = False

    @property
    def pending(self) -> int:
        """How many pushed-back bytes the next receives return before reading the wrapped stream again."""
        return len(self._pending)

    def unread(self, data: bytes | bytearray | memoryview) -> None:
        """Puts `data` in front of what the next receive_some returns (before bytes unread earlier)."""
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        self._pending[:0] = data

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._receiving = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            if not self._pending:
                return await self.stream.receive_some(max_bytes)
            # checkpoint first, take after: a cancel here leaves the pushed-back bytes in place
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            count = len(self._pending) if max_bytes is None else min(max_bytes, len(self._pending))
            data = bytes(self._pending[:count])
            del self._pending[:count]
            return data
        finally:
            self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("the stream is closed")
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("the stream is closed")
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        self._closed = True
        self._pending.clear()
        await self.stream.aclose()
