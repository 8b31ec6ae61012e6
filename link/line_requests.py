"""One request a line, one answer a line: the loop behind the local control sockets (the AP's OMAPI control socket
of docs/protocols.md "OMAPI on the AP", the CP's card-control socket of "Card slots and card presence on DLC 1").

Lines end with LF; a line longer than `max_line` bytes is not a request. The peer is told so (`too_long` gives the
answer line) and the connection stays usable, or, when `too_long` is None, the connection ends. Bytes are looked at
once: the search for LF starts where the last one stopped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio


async def serve_line_requests(
    stream: trio.abc.Stream,
    answer: Callable[[bytes], Awaitable[bytes]],
    *,
    max_line: int,
    too_long: bytes | None = None,
) -> None:
    """Answers each line of `stream` with `answer(line)` + LF until the peer closes or the line breaks; closes
    `stream` at the end."""
    buffer = bytearray()
    scanned = 0
    discarding = False  # inside an overlong line: drop bytes up to its LF
    try:
        while True:
            data = await stream.receive_some(4096)
            if not data:
                return
            buffer += data
            while (end := buffer.find(b"\n", scanned)) >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                scanned = 0
                if discarding:
                    discarding = False
                    continue
                if len(line) > max_line:  # arrived whole in one read: as overlong as one seen in parts
                    if too_long is None:
                        return
                    await stream.send_all(too_long + b"\n")
                    continue
                await stream.send_all(await answer(line) + b"\n")
            scanned = len(buffer)
            if len(buffer) > max_line:
                if too_long is None:
                    return  # not this protocol: nothing a peer of it would send
                buffer.clear()
                scanned = 0
                if not discarding:
                    discarding = True
                    await stream.send_all(too_long + b"\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        await trio.aclose_forcefully(stream)
