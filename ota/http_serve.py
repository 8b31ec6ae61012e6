"""The trio adapter of one HTTP/1.1 server connection (RFC 9112 through the sans-IO ota/http_connection.py), shared
by the servers that speak HTTP over h11: the cloud store (ota/cloud_store.py), the publish server
(ota/publish_server.py) and the SM-DP+ (ota/smdp.py); docs/protocols.md, "The OTA server" for the limits.

`serve_connection` reads with a deadline on each whole request (the limits' request_timeout: a request begun and
not completed in time is answered 408, an idle connection is closed in silence), hands each whole request to the
server's handler and sends the `Reply` it returns, refuses what the connection refuses (its 4xx/5xx status, an
`http.error` trace event, the close) and returns once the connection is over. The handler emits the server's own
trace events (the request, the access log); the stream's errors are left to the server's connection guard.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from bipsim.ota.http_connection import REASONS, ConnState, HttpRequest, Refusal, ServerConnection
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer

RECEIVE_SIZE = 65536  # bytes asked of the stream at a time
# how long and how much a refused client's rest is read and dropped
LINGER_SECONDS, LINGER_BYTES = 2.0, 4 << 20

# sends an answer's bytes in place of stream.send_all (a fault injection that cuts a download)
Sender = Callable[[trio.abc.Stream, bytes], Awaitable[None]]


@dataclass(frozen=True)
class Reply:
    """The server's answer to one request. `close` asks for Connection: close; `send`, when given, sends the
    answer's bytes instead of the adapter."""

    status: int
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    close: bool = False
    send: Sender | None = None


Handler = Callable[[HttpRequest], Awaitable[Reply]]


async def serve_connection(
    stream: trio.abc.Stream,
    connection: ServerConnection,
    handler: Handler,
    *,
    tracer: Tracer,
    actor: Actor,
    refusal_headers: Sequence[tuple[str, str]] = (),
    linger: bool = False,
) -> None:
    """Serves `connection` over `stream` until it is over: the peer closed, a refusal or an answer closed it, or a
    request's deadline passed. `actor` is the server in the trace; `refusal_headers` go on every refusal; `linger`
    reads and drops what the client still sends after a refusal (see `lingering_close`)."""
    timeout = connection.limits.request_timeout
    deadline = trio.current_time() + timeout
    while True:
        event = connection.next_event()
        if event is None:
            if connection.peer_closed or connection.state is ConnState.CLOSING:
                return
            data = b""
            with trio.move_on_at(deadline) as waiting:
                data = bytes(await stream.receive_some(RECEIVE_SIZE))
            if waiting.cancelled_caught:
                refusal = connection.timed_out()
                if refusal is not None:
                    await _refuse(stream, connection, refusal, tracer, actor, refusal_headers, linger)
                return
            if not data:
                return
            connection.receive(data)
            continue
        if isinstance(event, Refusal):
            await _refuse(stream, connection, event, tracer, actor, refusal_headers, linger)
            return
        reply = await handler(event)
        data = connection.answer(reply.status, list(reply.headers), reply.body, close=reply.close)
        if reply.send is not None:
            await reply.send(stream, data)
        else:
            await stream.send_all(data)
        if connection.state is ConnState.CLOSING:
            return
        deadline = trio.current_time() + timeout


async def _refuse(
    stream: trio.abc.Stream,
    connection: ServerConnection,
    refusal: Refusal,
    tracer: Tracer,
    actor: Actor,
    headers: Sequence[tuple[str, str]],
    linger: bool,
) -> None:
    """Malformed HTTP or a limit passed: the status, an http.error event, the close."""
    tracer.emit(
        actor,
        Actor.AP,
        Layer.HTTP,
        f"{refusal.status} {REASONS.get(refusal.status, '')}: {refusal.reason}",
        error=True,
        kind=Kind.HTTP_ERROR,
        fields={"status": refusal.status, "reason": refusal.reason},
    )
    await stream.send_all(connection.refuse(refusal, list(headers)))
    if linger:
        await lingering_close(stream)


async def lingering_close(stream: trio.abc.Stream) -> None:
    """A lingering close (RFC 9112 9.6): our side ended, what the client is still sending (the rest of a body
    refused on its length) is read and dropped for a while. Closing at once with unread bytes would make the
    kernel answer with a reset, which can destroy the refusal before the client has read it."""
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        return  # TLS has no half close: the refusal goes out and the connection closes
    with trio.move_on_after(LINGER_SECONDS):
        try:
            await stream.send_eof()
            drained = 0
            while drained < LINGER_BYTES:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
