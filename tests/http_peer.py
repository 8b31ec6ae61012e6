"""An independent HTTP/1.1 peer for the OTA tests (RFC 9112 through h11, not through bipsim's own glue): read
whole requests or responses out of a byte stream, and write messages byte for byte as a test wants them, including
ones the code under test would never write (chunked with a trailer, over a limit)."""

from __future__ import annotations

from dataclasses import dataclass, field

import h11


@dataclass
class Message:
    """A request (start: method, target, version) or a response (start: version, status, reason)."""

    start: tuple[str, str, str]
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def status(self) -> int:
        return int(self.start[1])

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


class MessageParser:
    """Whole messages of one kind out of a byte stream, one h11 connection per message (so a client's reader
    need not have sent the requests, and a server's need not answer)."""

    def __init__(self, *, requests: bool) -> None:
        self.requests = requests
        self._conn = self._new()
        self._head: h11.Request | h11.Response | None = None
        self._body = bytearray()

    def _new(self) -> h11.Connection:
        conn = h11.Connection(h11.SERVER if self.requests else h11.CLIENT, max_incomplete_event_size=1 << 24)
        if not self.requests:  # a client reads responses only after a request: send a throwaway one
            conn.send(
                h11.Request(method="POST", target="/", headers=[("Host", "x"), ("Content-Length", "0")])
            )
            conn.send(h11.EndOfMessage())
        return conn

    def feed(self, data: bytes | bytearray) -> list[Message]:
        self._conn.receive_data(bytes(data))
        out: list[Message] = []
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                return out
            if isinstance(event, (h11.Request, h11.Response)):
                self._head = event
                self._body.clear()
            elif isinstance(event, h11.Data):
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                out.append(self._message())
                rest = bytes(self._conn.trailing_data[0])
                self._conn = self._new()
                if rest:
                    self._conn.receive_data(rest)

    def _message(self) -> Message:
        head = self._head
        assert head is not None
        headers: dict[str, str] = {}
        for name, value in head.headers:
            key, text = name.decode(), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        version = "HTTP/" + head.http_version.decode()
        if isinstance(head, h11.Request):
            start = (head.method.decode(), head.target.decode("latin-1"), version)
        else:
            start = (version, str(head.status_code), head.reason.decode("latin-1"))
        return Message(start, headers, bytes(self._body))


def render(start: str, headers: list[tuple[str, str]], body: bytes = b"", *, chunked: bool = False) -> bytes:
    """A message as raw bytes: Content-Length framing, or chunked in 512-byte chunks."""
    lines = [start, *(f"{name}: {value}" for name, value in headers)]
    if not chunked:
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    lines.append("Transfer-Encoding: chunked")
    chunks = b"".join(
        f"{len(body[i : i + 512]):X}\r\n".encode() + body[i : i + 512] + b"\r\n"
        for i in range(0, len(body), 512)
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + chunks + b"0\r\n\r\n"
