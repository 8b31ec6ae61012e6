"""The SIM data sync server (docs/protocols.md, "The sync server"): each subscriber's contacts and messages with a
version, over HTTP/1.1 (RFC 9110/9112 through h11) with a JSON body and per-terminal bearer tokens (RFC 6750).

It sits in ota/ beside the OTA admin server because it is the same thing seen from the terminal: a remote server the
AP reaches over IP. `SyncService` is the sans-IO core (a whole request in, a response out); `SyncServer` is the trio
adapter that frames HTTP with h11 and traces each request and answer (`http.request`, `http.response`,
`http.error`, ends `ap` and `sync`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import trio

from bipsim.ap.sync.merge import RecordError, record_from_json
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer

PREFIX = "/sync/v1/"
MAX_BODY = 1 << 20  # a subscriber's store: 1 MiB of JSON is far beyond a SIM's few hundred records
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    428: "Precondition Required",
    500: "Internal Server Error",
}


@dataclass(frozen=True, slots=True)
class Request:
    """One whole HTTP request: header names lower case."""

    method: str
    target: str
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""  # why a request was refused, for the trace


@dataclass(frozen=True, slots=True)
class Terminal:
    """A terminal the server knows: its bearer token and the subscriber whose store it may read and write."""

    name: str
    token: str
    subscriber: str


def parse_terminal(text: str) -> Terminal:
    """`NAME:TOKEN:SUBSCRIBER` as `--terminal` takes it; ValueError otherwise."""
    parts = text.split(":")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"{text!r} is not NAME:TOKEN:SUBSCRIBER")
    return Terminal(*parts)


@dataclass(slots=True)
class Subscriber:
    version: int = 0
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    by: str = ""  # the terminal that wrote this version


def _json(status: int, obj: object, reason: str = "", **headers: str) -> Response:
    body = json.dumps(obj, sort_keys=True).encode()
    return Response(status, body, {"content-type": "application/json", **headers}, reason)


def _error(status: int, reason: str, **headers: str) -> Response:
    return _json(status, {"error": reason}, reason, **headers)


def check_records(obj: object) -> dict[str, dict[str, Any]]:
    """The `records` object of a PUT: identity -> record JSON with an optional numeric `changed`."""
    if not isinstance(obj, dict):
        raise RecordError("records is a JSON object")
    out: dict[str, dict[str, Any]] = {}
    for identity, value in obj.items():
        if not identity:
            raise RecordError("an empty identity")
        record_from_json(value)
        changed = value.get("changed", 0.0)
        if isinstance(changed, bool) or not isinstance(changed, int | float):
            raise RecordError(f"{identity}: changed is a number")
        if not math.isfinite(changed):
            # Python's json reads NaN and Infinity, which no other JSON reader takes and no merge can order
            raise RecordError(f"{identity}: changed is a finite number")
        out[identity] = dict(value)
    return out


class SyncService:
    """The sans-IO core: subscribers' stores and the rules of the API (docs/protocols.md, "The sync server")."""

    def __init__(self, terminals: list[Terminal], state: Path | None = None) -> None:
        self.terminals = {t.token: t for t in terminals}
        self.state = state
        self.subscribers: dict[str, Subscriber] = {}
        if state is not None and state.exists():
            data = json.loads(state.read_text(encoding="utf-8"))
            for name, sub in data.items():
                self.subscribers[name] = Subscriber(
                    int(sub["version"]), check_records(sub["records"]), sub["by"]
                )

    def save(self) -> None:
        if self.state is None:
            return
        data = {
            n: {"version": s.version, "records": s.records, "by": s.by} for n, s in self.subscribers.items()
        }
        tmp = self.state.with_suffix(self.state.suffix + ".tmp")
        tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
        tmp.replace(self.state)  # atomic: a crash leaves the old version or the new, never half of one

    def handle(self, request: Request) -> Response:
        path = request.target.split("?", 1)[0]
        if not path.startswith(PREFIX) or not path.endswith("/records"):
            return _error(404, f"no resource {path}")
        subscriber = path[len(PREFIX) : -len("/records")]
        if not subscriber or "/" in subscriber:
            return _error(404, f"no resource {path}")
        if request.method not in ("GET", "PUT"):
            return _error(405, f"method {request.method} not allowed", allow="GET, PUT")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        terminal = self.terminals.get(token.strip()) if scheme.lower() == "bearer" else None
        if terminal is None:
            return _error(401, "no valid bearer token", **{"www-authenticate": 'Bearer realm="bipsim-sync"'})
        if terminal.subscriber != subscriber:
            return _error(403, f"terminal {terminal.name} may not reach subscriber {subscriber}")
        store = self.subscribers.get(subscriber) or Subscriber()
        if request.method == "GET":
            return _json(200, {"version": store.version, "records": store.records}, etag=f'"{store.version}"')
        return self._put(terminal, subscriber, store, request)

    def _put(self, terminal: Terminal, subscriber: str, store: Subscriber, request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _error(415, "the body is application/json")
        match = request.headers.get("if-match")
        if match is None:
            return _error(428, "If-Match with the version read is required")
        if match.strip() not in ("*", f'"{store.version}"'):
            # another terminal synchronised since this one read: it reads again and merges again
            return _error(412, f"version is {store.version}", etag=f'"{store.version}"')
        try:
            body = json.loads(request.body)
            if not isinstance(body, dict):
                raise RecordError("the body is a JSON object")
            records = check_records(body.get("records"))
        except (ValueError, RecordError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than the parser's stack (a few KB of `[`)
            return _error(400, f"bad body: {type(exc).__name__}: {str(exc)[:200]}")
        if records != store.records:
            new = Subscriber(store.version + 1, records, terminal.name)
            previous = self.subscribers.get(subscriber)
            self.subscribers[subscriber] = new
            try:
                self.save()
            except OSError as exc:
                # the version a client is told of is the one on disk: a failed save leaves the old one served
                if previous is None:
                    del self.subscribers[subscriber]
                else:
                    self.subscribers[subscriber] = previous
                return _error(500, f"the store could not be saved: {exc}")
            store = new
        return _json(200, {"version": store.version}, etag=f'"{store.version}"')


class SyncServer:
    """The trio adapter: h11 framing, one task per connection, a trace event per request and answer."""

    def __init__(self, service: SyncService, tracer: Tracer = NULL_TRACER) -> None:
        self.service = service
        self.tracer = tracer
        self.requests = 0

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        self.tracer.emit(
            "sync",
            "sync",
            "app",
            f"sync server listening on {host}:{bound}",
            kind=Kind.APP_EVENT,
            fields={"event": "listening", "host": host, "port": bound},
        )
        task_status.started(bound)
        await trio.serve_listeners(self.connection, listeners)

    async def serve_on(self, listener: trio.SocketListener) -> None:
        """Serves on a listening socket made beforehand (a scenario hands its port to the AP before it starts)."""
        await trio.serve_listeners(self.connection, [listener])

    async def connection(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        try:
            async with stream:
                while await self._one(conn, stream):
                    conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def _read(self, conn: h11.Connection, stream: trio.abc.Stream) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await stream.receive_some(65536)
            conn.receive_data(bytes(data))

    async def _one(self, conn: h11.Connection, stream: trio.abc.Stream) -> bool:
        try:
            event = await self._read(conn, stream)
            if not isinstance(event, h11.Request):
                return False
            body = bytearray()
            while True:
                part = await self._read(conn, stream)
                if isinstance(part, h11.Data):
                    body += part.data
                    if len(body) > MAX_BODY:
                        await self._send(conn, stream, _error(413, f"body over {MAX_BODY} bytes"), close=True)
                        return False
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return False
        except h11.RemoteProtocolError as exc:
            self.tracer.emit(
                "ap",
                "sync",
                "http",
                f"malformed HTTP: {exc}",
                kind=Kind.HTTP_ERROR,
                error=True,
                fields={"reason": str(exc)},
            )
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await self._send(
                    conn, stream, _error(exc.error_status_hint, f"malformed request: {exc}"), close=True
                )
            return False
        headers = {name.decode().lower(): value.decode("latin-1") for name, value in event.headers}
        request = Request(event.method.decode(), event.target.decode("latin-1"), headers, bytes(body))
        self.requests += 1
        self.tracer.emit(
            "ap",
            "sync",
            "http",
            f"{request.method} {request.target}",
            bytes(body),
            kind=Kind.HTTP_REQUEST,
            fields={"method": request.method, "target": request.target},
        )
        try:
            response = self.service.handle(request)
        except Exception as exc:  # noqa: BLE001 - one request's fault never ends the server (docs/protocols.md)
            self.tracer.emit(
                "ap",
                "sync",
                "http",
                f"request failed: {type(exc).__name__}",
                kind=Kind.HTTP_ERROR,
                error=True,
                fields={"reason": f"{type(exc).__name__}: {str(exc)[:200]}"},
            )
            response = _error(500, f"internal error: {type(exc).__name__}")
        await self._send(conn, stream, response, close=False)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _send(
        self, conn: h11.Connection, stream: trio.abc.Stream, response: Response, *, close: bool
    ) -> None:
        headers = [(k, v) for k, v in response.headers.items()]
        headers.append(("content-length", str(len(response.body))))
        if close:
            headers.append(("connection", "close"))
        fields: dict[str, Any] = {"status": response.status}
        if response.reason:
            fields["reason"] = response.reason
        self.tracer.emit(
            "sync",
            "ap",
            "http",
            f"{response.status} {REASONS.get(response.status, '')}",
            response.body,
            kind=Kind.HTTP_RESPONSE,
            error=response.status >= 400,
            fields=fields,
        )
        reason = REASONS.get(response.status, "").encode()
        data = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason)) or b""
        data += conn.send(h11.Data(data=response.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(data)
