"""The OTA server on trio: TCP on 127.0.0.1 by default, TLS 1.2 PSK through the standard ssl module with sslpsk3,
and the admin protocol of ota/admin.py for many cards at once.

sslpsk3 hooks OpenSSL's PSK callbacks into ssl.SSLContext: its SSLPSKContext makes wrap_bio() return an SSLObject
subclass that installs the callbacks in do_handshake(), which is what trio.SSLStream calls, so PSK-TLS runs under
trio without threads. One subclass is needed: trio calls do_handshake() again after every WANT_READ, and sslpsk3's
setup also calls SSL_set_accept_state(), which restarts the handshake; PskObject installs the callbacks once.
The SHA-1 suite needs "@SECLEVEL=0" on OpenSSL 3.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import trio
from sslpsk3.sslpsk3 import SSLPSKContext, SSLPSKObject

from bipsim.ota.admin import AdminServer, bad_request
from bipsim.trace.events import Actor, Layer
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.http11 import HttpError, MessageParser

CIPHERS = "PSK-AES128-CBC-SHA256:PSK-AES128-CBC-SHA:PSK-AES128-GCM-SHA256:@SECLEVEL=0"


class PskObject(SSLPSKObject):
    """An SSLObject whose PSK callbacks are installed at the first do_handshake() only."""

    _psk_ready = False

    def do_handshake(self) -> None:
        if not self._psk_ready:
            self.context.setup_psk_callbacks(self)
            self._psk_ready = True
        ssl.SSLObject.do_handshake(self)


class PskContext(SSLPSKContext):
    sslobject_class = PskObject


def psk_context(keys: dict[str, bytes], seen: Callable[[str | None], None] | None = None) -> ssl.SSLContext:
    """A TLS 1.2 PSK server context; an unknown identity gets no key, so the handshake fails with an alert."""
    context = PskContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)

    def lookup(identity: str | None) -> bytes:
        if seen is not None:
            seen(identity)
        return keys.get(identity or "", b"")

    context.set_psk_server_callback(lookup)
    return context


class OtaServer:
    def __init__(
        self,
        admin: AdminServer,
        *,
        keys: dict[str, bytes] | None,
        tracer: Tracer = NULL_TRACER,
        drop_after: int | None = None,
        idle_timeout: float = 60.0,
    ) -> None:
        self.admin = admin
        # a card silent this long (no ClientHello, half a request, no next POST) is dropped: never a hung task
        self.idle_timeout = idle_timeout
        self.timeouts = 0
        # fault injection: close the first connection abruptly when this many requests arrived on it
        self.drop_after = drop_after
        self.keys = keys
        self.tracer = tracer
        self.connections = 0
        self.handshake_failures = 0

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(int(bound))
            await trio.serve_listeners(self.handle, listeners, handler_nursery=nursery)

    async def handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        identity: list[str | None] = [None]
        try:
            if self.keys is not None:
                context = psk_context(self.keys, lambda i: identity.__setitem__(0, i))
                tls = trio.SSLStream(stream, context, server_side=True)
                try:
                    with trio.fail_after(self.idle_timeout):
                        await tls.do_handshake()
                except trio.TooSlowError:
                    self.timeouts += 1
                    self.tracer.emit(Actor.OTA, Actor.NET, Layer.TLS, "TLS handshake timed out", error=True)
                    return
                except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
                    self.handshake_failures += 1
                    # trio drops OpenSSL's pending alert with the failed handshake; send it ourselves (our write
                    # side is still unencrypted): unknown_psk_identity (115) or decrypt_error (51, wrong key)
                    alert = 115 if identity[0] not in self.keys else 51
                    record = bytes((21, 3, 3, 0, 2, 2, alert))
                    self.tracer.emit(
                        Actor.OTA,
                        Actor.NET,
                        Layer.TLS,
                        f"TLS handshake failed (identity {identity[0]!r}): {exc}; alert {alert}",
                        record,
                        error=True,
                    )
                    try:
                        await stream.send_all(record)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    await trio.aclose_forcefully(stream)
                    return
                self.tracer.emit(
                    Actor.OTA,
                    Actor.NET,
                    Layer.TLS,
                    f"TLS 1.2 PSK session with {identity[0]!r} ({tls.cipher()[0] if tls.cipher() else '?'})",
                )
                await self.http_loop(tls, identity[0])
            else:
                await self.http_loop(stream, None)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def http_loop(self, stream: trio.abc.Stream, identity: str | None) -> None:
        parser = MessageParser(requests=True)
        handled = 0
        while True:
            data: bytes | bytearray = b""
            with trio.move_on_after(self.idle_timeout) as idle:
                data = await stream.receive_some(65536)
            if idle.cancelled_caught:
                self.timeouts += 1
                if parser.pending:  # half a request: tell the card (RFC 9110 408), then close
                    answer = bad_request(HttpError(408, "request not completed in time"))
                    await stream.send_all(answer.encode())
                self.tracer.emit(Actor.OTA, Actor.NET, Layer.HTTP, "idle connection timed out", error=True)
                return
            if not data:
                return
            try:
                requests = parser.feed(data)
            except HttpError as exc:
                answer = bad_request(exc)
                self.tracer.emit(Actor.OTA, Actor.NET, Layer.HTTP, f"{exc.status} {exc.reason}", error=True)
                await stream.send_all(answer.encode())
                return
            for request in requests:
                handled += 1
                if self.drop_after is not None and handled > self.drop_after:
                    self.drop_after = None
                    self.tracer.emit(
                        Actor.OTA,
                        Actor.NET,
                        Layer.TCP,
                        f"dropping the connection after {handled - 1} requests (fault injection)",
                        error=True,
                    )
                    raise trio.BrokenResourceError("connection dropped on purpose")
                self.tracer.emit(
                    Actor.NET,
                    Actor.OTA,
                    Layer.HTTP,
                    f"{request.start[0]} {request.start[1]} ({len(request.body)} bytes, from {request.header('x-admin-from')})",
                    request.body or None,
                )
                answer = self.admin.handle(request, psk_identity=identity)
                self.tracer.emit(
                    Actor.OTA,
                    Actor.NET,
                    Layer.HTTP,
                    f"{answer.status} ({len(answer.body)} bytes)",
                    answer.body or None,
                    error=answer.status >= 400,
                )
                await stream.send_all(answer.encode(chunked=request.header("te") == "chunked"))
                if answer.close:
                    return
                if answer.status == 204:
                    await self.linger(stream)
                    return

    async def linger(self, stream: trio.abc.Stream, timeout: float = 30.0) -> None:
        """After 204 the card ends the session: TLS close_notify, then its terminal closes the TCP connection when
        the card closes the BIP channel (the patent's S414/S716). The server waits for that instead of closing
        first, so the close is acknowledged, not initiated, by the server."""
        with trio.move_on_after(timeout):
            try:
                while await stream.receive_some(65536):
                    pass
                if isinstance(stream, trio.SSLStream):
                    while await stream.transport_stream.receive_some(65536):
                        pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
                pass
