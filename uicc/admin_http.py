"""The card's HTTP/1.1 client for the GlobalPlatform Amendment B admin protocol (RFC 9112 through h11), sans-IO:
the agent hands it a POST and gets the bytes to send, feeds it the bytes its TLS channel delivered and gets the
complete responses back.

h11 does the framing (status line, headers, Content-Length and chunked bodies, trailers). On top of it this module
applies the card's limits (uicc/http_limits.py: header section, body, chunk) and the admin protocol's one framing
rule: an answer other than 1xx/204/304 carries a Content-Length or is chunked, because a body that runs to the
connection's close (RFC 9112 6.3, rule 8) leaves no connection for the card's next POST. Anything else raises
HttpFailure with the status a server would have used for the same fault (400, 413, 431).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h11

from bipsim.uicc.http_limits import LIMITS, Body, BodyOverLimit, HttpLimits


class HttpFailure(Exception):
    """A response the card cannot take; `status` is the HTTP status naming the fault (400, 413, 431)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class AdminResponse:
    """One complete response: header names lower-case, the whole body, and whether the connection stays open."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    keep_alive: bool = True

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


def _headers(event: h11.Response) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in event.headers:
        key = name.decode("ascii")
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


class AdminHttpClient:
    """One HTTP/1.1 connection seen from the card (h11 CLIENT role)."""

    def __init__(self, limits: HttpLimits = LIMITS) -> None:
        self.limits = limits
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=limits.header_bytes)
        self._response: h11.Response | None = None
        self._body = Body(limits, "card's ")

    def request(self, target: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
        """The bytes of one POST with `body` (Content-Length framing)."""
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        out = self._h11.send(
            h11.Request(method="POST", target=target, headers=[*headers, ("Content-Length", str(len(body)))])
        )
        out = (out or b"") + (self._h11.send(h11.Data(data=body)) or b"") if body else (out or b"")
        return out + (self._h11.send(h11.EndOfMessage()) or b"")

    def receive(self, data: bytes) -> list[AdminResponse]:
        """The responses that `data` completes; raises HttpFailure for a malformed one or a limit passed."""
        try:
            self._h11.receive_data(data)
            return self._events()
        except h11.RemoteProtocolError as exc:
            raise HttpFailure(exc.error_status_hint, str(exc)) from None
        except h11.LocalProtocolError as exc:  # a response before our request, or after a close
            raise HttpFailure(400, f"response out of turn: {exc}") from None

    def _events(self) -> list[AdminResponse]:
        out: list[AdminResponse] = []
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return out
            if isinstance(event, h11.Response):
                self._start(event)
            elif isinstance(event, h11.Data):
                self._data(event)
            elif isinstance(event, h11.EndOfMessage):
                assert self._response is not None
                out.append(
                    AdminResponse(
                        self._response.status_code,
                        _headers(self._response),
                        bytes(self._body.data),
                        keep_alive=self._h11.their_state is h11.DONE and self._h11.our_state is h11.DONE,
                    )
                )
                self._response = None
                self._body.start(chunked=False)
            elif isinstance(event, h11.ConnectionClosed):
                return out
            # InformationalResponse (1xx) carries nothing for the admin protocol

    def _start(self, event: h11.Response) -> None:
        # h11 checks the limit only on a head that is still incomplete; a whole one read at once is measured here
        size = len(event.reason) + 15 + sum(len(n) + len(v) + 4 for n, v in event.headers)
        if size > self.limits.header_bytes:
            raise HttpFailure(
                431, f"header section of {size} bytes over the card's {self.limits.header_bytes} limit"
            )
        headers = _headers(event)
        bodiless = event.status_code in (204, 304)
        if not bodiless and "content-length" not in headers and "transfer-encoding" not in headers:
            raise HttpFailure(400, f"{event.status_code} response without Content-Length or chunked coding")
        length = headers.get("content-length")
        if length is not None and int(length) > self.limits.body_bytes:  # h11 checked it is decimal digits
            raise HttpFailure(
                413, f"body of {length} bytes over the card's {self.limits.body_bytes} byte limit"
            )
        self._response = event
        self._body.start(chunked="chunked" in headers.get("transfer-encoding", "").lower())

    def _data(self, event: h11.Data) -> None:
        try:
            self._body.add(event.data, event.chunk_start)
        except BodyOverLimit as exc:
            raise HttpFailure(413, str(exc)) from None
