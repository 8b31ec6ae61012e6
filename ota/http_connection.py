"""One HTTP/1.1 connection seen from the OTA server (RFC 9112 through h11, SERVER role), sans-IO: bytes in,
complete requests or refusals out; an answer in, bytes out. No sockets, no clock: the adapter (ota/server.py)
reads, times and writes.

h11 does the framing. This module adds the limits of uicc/http_limits.py (header section 431, body and chunk 413,
requests per connection, the over-capacity 503), the admin protocol's framing rules (HTTP/1.x only, 505; a POST
states its length, 411) and the connection's session state (docs/protocols.md, "The OTA server"):

    OPEN       waiting for a request, or reading one
    ANSWERING  a whole request is with the admin core
    ENDED      a 204 ended the card's admin session; the server waits for the card to close (the patent's S415)
    CLOSING    an answer with Connection: close went out; nothing more is read

Every change goes through CONNECTION_TRANSITIONS. A request the table does not allow (one after the 204 that
ended the session) raises IllegalTransition, which `next_event` turns into a 400 refusal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import h11

from bipsim.uicc.http_limits import LIMITS, Body, BodyOverLimit, HttpLimits
from bipsim.uicc.transitions import IllegalTransition, TransitionTable

REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class ConnState(Enum):
    OPEN = "open"
    ANSWERING = "answering"
    ENDED = "ended"
    CLOSING = "closing"


class ConnEvent(Enum):
    REQUEST = "request"  # a whole request was read
    ANSWER = "answer"  # an answer went out and the connection stays open
    END = "end"  # a 204 went out: the card's admin session is over
    CLOSE = "close"  # an answer with Connection: close went out (an error, a refusal, the request limit)


CONNECTION_TRANSITIONS: TransitionTable[ConnState, ConnEvent] = TransitionTable(
    "OTA server connection",
    {
        (ConnState.OPEN, ConnEvent.REQUEST): ConnState.ANSWERING,
        (ConnState.OPEN, ConnEvent.CLOSE): ConnState.CLOSING,  # a refusal before a whole request (4xx, 408)
        (ConnState.ANSWERING, ConnEvent.ANSWER): ConnState.OPEN,
        (ConnState.ANSWERING, ConnEvent.END): ConnState.ENDED,
        (ConnState.ANSWERING, ConnEvent.CLOSE): ConnState.CLOSING,
        (
            ConnState.ENDED,
            ConnEvent.CLOSE,
        ): ConnState.CLOSING,  # a refusal after the 204 (a request, a bad byte)
    },
)


@dataclass(frozen=True)
class HttpRequest:
    """One whole request: header names lower-case (repeated fields joined by ", "), the whole body."""

    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclass(frozen=True)
class Refusal:
    """A request the server answers with `status` and closes on, without giving it to the admin core."""

    status: int
    reason: str


class ServerConnection:
    """The server's side of one connection; `state` moves only through CONNECTION_TRANSITIONS."""

    def __init__(self, limits: HttpLimits = LIMITS, *, over_capacity: bool = False) -> None:
        self.limits = limits
        self.over_capacity = over_capacity
        self.requests = 0
        self._state = ConnState.OPEN
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.header_bytes)
        self._request: h11.Request | None = None
        self._body = Body(limits)

    @property
    def state(self) -> ConnState:
        return self._state

    def _move(self, event: ConnEvent) -> None:
        self._state = CONNECTION_TRANSITIONS.next(self._state, event)

    @property
    def reading(self) -> bool:
        """Part of a request has arrived (a timeout now is answered 408)."""
        return self._request is not None or bool(self._h11.trailing_data[0])

    def receive(self, data: bytes) -> None:
        """Bytes from the peer; b"" is its end of stream."""
        if self._state is not ConnState.CLOSING:
            self._h11.receive_data(data)

    def next_event(self) -> HttpRequest | Refusal | None:
        """The next whole request, a refusal to answer (then close), or None when more bytes are needed (or the
        peer closed: see `peer_closed`)."""
        if self._state is ConnState.CLOSING:
            return None
        try:
            return self._next()
        except h11.RemoteProtocolError as exc:
            return Refusal(exc.error_status_hint, f"malformed request: {exc}")
        except _Refuse as exc:
            return exc.refusal

    @property
    def peer_closed(self) -> bool:
        return self._h11.their_state is h11.CLOSED

    def _next(self) -> HttpRequest | Refusal | None:
        while True:
            if self._h11.their_state is h11.DONE and self._h11.our_state is h11.DONE:
                self._h11.start_next_cycle()
            event = self._h11.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Request):
                self._start(event)
            elif isinstance(event, h11.Data):
                self._data(event)
            elif isinstance(event, h11.EndOfMessage):
                return self._complete()

    def _start(self, event: h11.Request) -> None:
        # h11 checks the limit only on a head that is still incomplete; a whole one read at once is measured here
        size = len(event.method) + len(event.target) + 12 + sum(len(n) + len(v) + 4 for n, v in event.headers)
        if size > self.limits.header_bytes:
            raise _Refuse(
                431, f"header section of {size} bytes over the {self.limits.header_bytes} byte limit"
            )
        if event.http_version not in (b"1.0", b"1.1"):
            raise _Refuse(505, f"HTTP/{event.http_version.decode('ascii', 'replace')} is not HTTP/1.1")
        names = {name for name, _ in event.headers}
        if event.method == b"POST" and b"content-length" not in names and b"transfer-encoding" not in names:
            raise _Refuse(411, "a POST states its length (Content-Length or chunked)")
        for name, value in event.headers:
            if name == b"content-length" and int(value) > self.limits.body_bytes:  # h11 checked the digits
                raise _Refuse(413, f"body of {int(value)} bytes over the {self.limits.body_bytes} byte limit")
        self._request = event
        self._body.start(
            chunked=any(n == b"transfer-encoding" and b"chunked" in v.lower() for n, v in event.headers)
        )

    def _data(self, event: h11.Data) -> None:
        try:
            self._body.add(event.data, event.chunk_start)
        except BodyOverLimit as exc:
            raise _Refuse(413, str(exc)) from None

    def _complete(self) -> HttpRequest | Refusal:
        request = self._request
        assert request is not None
        self._request = None
        headers: dict[str, str] = {}
        for name, value in request.headers:
            key, text = name.decode("ascii"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        try:
            self._move(ConnEvent.REQUEST)
        except IllegalTransition as exc:
            return Refusal(400, f"{exc}: the admin session ended with 204")
        self.requests += 1
        if self.over_capacity:
            return Refusal(503, f"the server is at its limit of {self.limits.connections} connections")
        return HttpRequest(
            request.method.decode("ascii"), request.target.decode("latin-1"), headers, bytes(self._body.data)
        )

    def timed_out(self) -> Refusal | None:
        """The request deadline passed: a 408 when a request was begun, else None (close silently)."""
        if self.reading and self._state is not ConnState.CLOSING:
            return Refusal(408, f"request not completed within {self.limits.request_timeout:g} s")
        return None

    def answer(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        *,
        close: bool = False,
        chunked: bool = False,
    ) -> bytes:
        """The bytes of an answer to the request being answered (or of a refusal); moves the state on."""
        refusal = self._state is not ConnState.ANSWERING
        close = close or refusal or self.requests >= self.limits.requests_per_connection
        fields = list(headers)
        if close:
            fields.append(("Connection", "close"))
        if not chunked or status == 204:
            if status != 204:
                fields.append(("Content-Length", str(len(body))))
        out = bytearray()
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            out += (
                self._h11.send(
                    h11.Response(status_code=status, headers=fields, reason=REASONS.get(status, "").encode())
                )
                or b""
            )
            if body and status != 204:
                step = 512 if chunked else len(body)
                for at in range(0, len(body), step):
                    out += self._h11.send(h11.Data(data=body[at : at + step])) or b""
            out += self._h11.send(h11.EndOfMessage()) or b""
        if close or self._h11.our_state is h11.MUST_CLOSE:  # also: the client asked for Connection: close
            self._move(ConnEvent.CLOSE)
        elif status == 204:
            self._move(ConnEvent.END)
        else:
            self._move(ConnEvent.ANSWER)
        return bytes(out)

    def refuse(self, refusal: Refusal, headers: list[tuple[str, str]]) -> bytes:
        """The bytes of a refusal (its reason as a text body); the connection closes after them."""
        return self.answer(
            refusal.status,
            [*headers, ("Content-Type", "text/plain")],
            refusal.reason.encode("utf-8", "replace") + b"\n",
            close=True,
        )


class _Refuse(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.refusal = Refusal(status, reason)
