"""The OTA server on trio: TCP on 127.0.0.1 by default, TLS 1.2 PSK through the standard ssl module with sslpsk3,
HTTP/1.1 through h11 (ota/http_connection.py) and the GlobalPlatform Amd B admin protocol of ota/admin.py for many
cards at once, within the limits of uicc/http_limits.py (docs/protocols.md, "The OTA server"): each request has a
deadline for the whole of it, connections past the cap get 503, and an exception in one connection's task ends that
connection with an app.error trace event, never the process.

sslpsk3 hooks OpenSSL's PSK callbacks into ssl.SSLContext: its SSLPSKContext makes wrap_bio() return an SSLObject
subclass that installs the callbacks in do_handshake(), which is what trio.SSLStream calls, so PSK-TLS runs under
trio without threads. One subclass is needed: trio calls do_handshake() again after every WANT_READ, and sslpsk3's
setup also calls SSL_set_accept_state(), which restarts the handshake; PskObject installs the callbacks once.
The SHA-1 suite needs "@SECLEVEL=0" on OpenSSL 3.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import trio
from sslpsk3.sslpsk3 import SSLPSKContext, SSLPSKObject

from bipsim.ota.admin import PROTOCOL, AdminServer, Answer
from bipsim.ota.http_connection import REASONS, ConnState, HttpRequest, Refusal, ServerConnection
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.http_limits import HttpLimits

CIPHERS = "PSK-AES128-CBC-SHA256:PSK-AES128-CBC-SHA:PSK-AES128-GCM-SHA256:@SECLEVEL=0"


class PskObject(SSLPSKObject):
    """An SSLObject whose PSK callbacks are installed at the first do_handshake() only; `psk_identity` is the
    identity the client sent, once the server's callback has seen it."""

    _psk_ready = False
    psk_identity: str | None = None

    def do_handshake(self) -> None:
        if not self._psk_ready:
            self.context.setup_psk_callbacks(self)
            self._psk_ready = True
        # OpenSSL calls the PSK callback inside this call, for this object: the context notes whose handshake runs
        context = self.context
        previous = getattr(context, "handshaking", None)
        context.handshaking = self
        try:
            ssl.SSLObject.do_handshake(self)
        finally:
            context.handshaking = previous


class PskContext(SSLPSKContext):
    """One context for every connection of a server (building one costs about as much as a PSK handshake):
    `handshaking` is the object whose do_handshake() runs, `last_wrapped` the object wrap_bio() made last."""

    sslobject_class = PskObject
    handshaking: PskObject | None = None
    last_wrapped: ssl.SSLObject | None = None

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        obj = super().wrap_bio(*args, **kwargs)
        self.last_wrapped = obj
        return obj


def psk_context(keys: dict[str, bytes], seen: Callable[[str | None], None] | None = None) -> PskContext:
    """A TLS 1.2 PSK server context; an unknown identity gets no key, so the handshake fails with an alert."""
    context = PskContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)

    def lookup(identity: str | None) -> bytes:
        if context.handshaking is not None:
            context.handshaking.psk_identity = identity
        if seen is not None:
            seen(identity)
        return keys.get(identity or "", b"")

    context.set_psk_server_callback(lookup)
    return context


async def reuse_port_listener(host: str, port: int, backlog: int = 1024) -> trio.SocketListener:
    """A TCP listener with SO_REUSEPORT on host:port, so that several worker processes listen on one port and the
    kernel hashes each new connection to one of them (Linux socket(7))."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        await sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


class OtaServer:
    """The trio adapter: accepts connections, runs TLS, reads and times requests, writes answers. Protocol rules
    live in ota/http_connection.py (HTTP) and ota/admin.py (the admin protocol); limits in uicc/http_limits.py.

    Each connection is one task, and whatever goes wrong in it ends that connection only: a bug raising in the
    admin core is traced (app.error) and the connection closed, never the process.
    """

    def __init__(
        self,
        admin: AdminServer,
        *,
        keys: dict[str, bytes] | None,
        tracer: Tracer = NULL_TRACER,
        drop_after: int | None = None,
        idle_timeout: float | None = None,
        limits: HttpLimits | None = None,
    ) -> None:
        self.admin = admin
        base = limits if limits is not None else admin.limits
        # `idle_timeout` (seconds) overrides the limits' request_timeout: a whole request (or the TLS handshake)
        # must arrive within it, however its bytes trickle in
        self.limits = base if idle_timeout is None else replace(base, request_timeout=idle_timeout)
        if admin.tracer is NULL_TRACER:  # the admin core's events (a card forgotten) go to the server's trace
            admin.tracer = tracer
        self.timeouts = 0
        # fault injection: close the first connection abruptly when this many requests arrived on it
        self.drop_after = drop_after
        self.keys = keys
        self._context: PskContext | None = None  # one TLS context for all connections, made at the first
        self._context_keys: dict[str, bytes] | None = None
        self.tracer = tracer
        self.connections = 0
        self.active = 0
        self.handshake_failures = 0
        self.refused = 0
        self.crashes = 0
        self.cpu_start = time.process_time()

    @property
    def idle_timeout(self) -> float:
        return self.limits.request_timeout

    async def serve(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accepts connections on host:port until cancelled. With `reuse_port`, the listener is one of several
        processes' on the same port (SO_REUSEPORT: the kernel spreads new connections over them)."""
        listeners: list[trio.SocketListener]
        if reuse_port:
            listeners = [await reuse_port_listener(host, port)]
        else:
            listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        self.cpu_start = time.process_time()  # the CPU serving costs is counted from here (not the imports)
        async with trio.open_nursery() as nursery:
            task_status.started(int(bound))
            await trio.serve_listeners(self.handle, listeners, handler_nursery=nursery)

    async def handle(self, stream: trio.abc.Stream) -> None:
        """One connection, guarded: any exception of this task ends this connection with an app.error event."""
        self.connections += 1
        self.active += 1
        number = self.connections
        try:
            await self._connection(stream, over_capacity=self.active > self.limits.connections)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            self.tracer.emit(
                Actor.OTA,
                Actor.NET,
                Layer.TCP,
                f"connection {number} lost: {type(exc).__name__}",
                kind=Kind.TCP_CLOSED,
                fields={"connection": number, "reason": str(exc) or type(exc).__name__},
            )
        except Exception as exc:  # the process guard: a bug ends its connection, not the server
            self.crashes += 1
            self.tracer.emit(
                Actor.OTA,
                Actor.OTA,
                Layer.APP,
                f"connection {number} ended by {type(exc).__name__}: {exc}",
                error=True,
                kind=Kind.APP_ERROR,
                fields={"connection": number, "exception": type(exc).__name__, "message": str(exc)},
            )
        finally:
            self.active -= 1
            await trio.aclose_forcefully(stream)

    async def _connection(self, stream: trio.abc.Stream, *, over_capacity: bool) -> None:
        if self.keys is None:
            await self.http_loop(stream, None, over_capacity=over_capacity)
            return
        if self._context is None or self._context_keys is not self.keys:
            self._context, self._context_keys = psk_context(self.keys), self.keys
        context = self._context
        tls = trio.SSLStream(stream, context, server_side=True)
        wrapped = context.last_wrapped  # made by the line above, for this connection
        identity: list[str | None] = [None]
        try:
            with trio.fail_after(self.limits.request_timeout):
                try:
                    await tls.do_handshake()
                finally:
                    identity[0] = getattr(wrapped, "psk_identity", None)
        except trio.TooSlowError:
            self.timeouts += 1
            self.tracer.emit(
                Actor.OTA,
                Actor.NET,
                Layer.TLS,
                "TLS handshake timed out",
                error=True,
                kind=Kind.TLS_HANDSHAKE,
                fields={"timeout": self.limits.request_timeout},
            )
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
                kind=Kind.TLS_ALERT,
                fields={"identity": identity[0], "description": alert},
            )
            try:
                await stream.send_all(record)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            return
        cipher = tls.cipher()
        self.tracer.emit(
            Actor.OTA,
            Actor.NET,
            Layer.TLS,
            f"TLS 1.2 PSK session with {identity[0]!r} ({cipher[0] if cipher else '?'})",
            kind=Kind.TLS_HANDSHAKE,
            fields={"identity": identity[0], "cipher": cipher[0] if cipher else None},
        )
        await self.http_loop(tls, identity[0], over_capacity=over_capacity)

    async def http_loop(
        self, stream: trio.abc.Stream, identity: str | None, *, over_capacity: bool = False
    ) -> None:
        """Requests in, answers out, until the connection closes. The deadline of each request starts when the
        previous answer went out (or the connection began) and is not moved by the bytes that trickle in."""
        connection = ServerConnection(self.limits, over_capacity=over_capacity)
        deadline = trio.current_time() + self.limits.request_timeout
        while True:
            event = connection.next_event()
            if event is None:
                if connection.peer_closed or connection.state is ConnState.CLOSING:
                    return
                data: bytes | bytearray = b""
                with trio.move_on_at(deadline) as waiting:
                    data = await stream.receive_some(65536)
                if waiting.cancelled_caught:
                    await self._timed_out(stream, connection)
                    return
                if not data:  # the peer closed: between requests, or mid-request with nobody left to answer
                    if connection.state is ConnState.ENDED:
                        await self._drain_transport(stream)
                    return
                connection.receive(bytes(data))
                continue
            if isinstance(event, Refusal):
                await self._refuse(stream, connection, event)
                return
            if self.drop_after is not None and connection.requests > self.drop_after:
                self.drop_after = None
                self.tracer.emit(
                    Actor.OTA,
                    Actor.NET,
                    Layer.TCP,
                    f"dropping the connection after {connection.requests - 1} requests (fault injection)",
                    error=True,
                    kind=Kind.TCP_ERROR,
                    fields={"requests": connection.requests - 1},
                )
                raise trio.BrokenResourceError("connection dropped on purpose")
            self.tracer.emit(
                Actor.NET,
                Actor.OTA,
                Layer.HTTP,
                f"{event.method} {event.target} ({len(event.body)} bytes, from {event.header('x-admin-from')})",
                event.body or None,
                kind=Kind.HTTP_REQUEST,
                fields={"method": event.method, "target": event.target, "from": event.header("x-admin-from")},
            )
            answer = await self.answer(event, identity)
            data_out = connection.answer(
                answer.status,
                answer.headers,
                answer.body,
                close=answer.close,
                chunked=event.header("te") == "chunked",
            )
            self.tracer.emit(
                Actor.OTA,
                Actor.NET,
                Layer.HTTP,
                f"{answer.status} ({len(answer.body)} bytes)",
                answer.body or None,
                error=answer.status >= 400,
                kind=Kind.HTTP_RESPONSE,
                fields={"status": answer.status},
            )
            await stream.send_all(data_out)
            if connection.state is ConnState.CLOSING:
                return
            deadline = trio.current_time() + self.limits.request_timeout

    async def answer(self, request: HttpRequest, identity: str | None) -> Answer:
        """The admin core's answer to a request (ota/server_pool.py routes it to the process owning the card)."""
        return self.admin.handle(request, psk_identity=identity)

    async def _refuse(self, stream: trio.abc.Stream, connection: ServerConnection, refusal: Refusal) -> None:
        """A request the server will not serve: its 4xx/5xx, an http.error event, then the close."""
        self.refused += 1
        self.tracer.emit(
            Actor.OTA,
            Actor.NET,
            Layer.HTTP,
            f"{refusal.status} {REASONS.get(refusal.status, '')}: {refusal.reason}",
            error=True,
            kind=Kind.HTTP_ERROR,
            fields={"status": refusal.status, "reason": refusal.reason, "state": connection.state.value},
        )
        await stream.send_all(connection.refuse(refusal, [("X-Admin-Protocol", PROTOCOL)]))

    async def _timed_out(self, stream: trio.abc.Stream, connection: ServerConnection) -> None:
        if connection.state is not ConnState.ENDED:  # after a 204, the card's close is only waited for
            self.timeouts += 1
        refusal = connection.timed_out()
        if refusal is not None:  # half a request: tell the card (RFC 9110 408), then close
            self.refused += 1
            self.tracer.emit(
                Actor.OTA,
                Actor.NET,
                Layer.HTTP,
                f"{refusal.status} request timed out: {refusal.reason}",
                error=True,
                kind=Kind.HTTP_ERROR,
                fields={"status": refusal.status, "reason": refusal.reason, "state": connection.state.value},
            )
            await stream.send_all(connection.refuse(refusal, [("X-Admin-Protocol", PROTOCOL)]))
            return
        self.tracer.emit(
            Actor.OTA,
            Actor.NET,
            Layer.HTTP,
            "idle connection timed out",
            error=connection.state is not ConnState.ENDED,
            kind=Kind.HTTP_ERROR if connection.state is not ConnState.ENDED else Kind.TCP_CLOSE,
            fields={"timeout": self.limits.request_timeout, "state": connection.state.value},
        )

    async def _drain_transport(self, stream: trio.abc.Stream) -> None:
        """After the 204 the card ends the session: TLS close_notify, then its terminal closes the TCP connection
        when the card closes the BIP channel (the patent's S414/S716). The server waits for that instead of
        closing first, so the close is acknowledged, not initiated, by the server."""
        if isinstance(stream, trio.SSLStream):
            with trio.move_on_after(self.limits.request_timeout):
                while await stream.transport_stream.receive_some(65536):
                    pass
