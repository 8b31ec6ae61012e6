"""HTTP/1.1 message framing (RFC 9112), sans-IO: what the card's admin client and the OTA server both speak.

A MessageParser takes bytes and yields complete requests or responses: start line, headers (names lower-cased),
and a body delimited by Content-Length or chunked transfer coding. Malformed input raises HttpError with the status
a server should answer (400, 411, 413, 431, 505).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_HEADERS = 16 * 1024
MAX_BODY = 1 << 20


class HttpError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


@dataclass
class Message:
    start: tuple[str, str, str]  # request: method, target, version; response: version, status, reason
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def status(self) -> int:
        return int(self.start[1])

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}


def render(start: str, headers: list[tuple[str, str]], body: bytes = b"", *, chunked: bool = False) -> bytes:
    lines = [start]
    lines += [f"{name}: {value}" for name, value in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        chunks = b"".join(
            f"{len(body[i : i + 512]):X}\r\n".encode() + body[i : i + 512] + b"\r\n"
            for i in range(0, len(body), 512)
        )
        return head + chunks + b"0\r\n\r\n"
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class MessageParser:
    """Incremental parser for a stream of messages of one kind (requests or responses)."""

    def __init__(self, *, requests: bool) -> None:
        self.requests = requests
        self._buffer = bytearray()

    @property
    def pending(self) -> bool:
        """Bytes of an incomplete message are buffered."""
        return bool(self._buffer)

    def feed(self, data: bytes | bytearray) -> list[Message]:
        self._buffer += data
        out: list[Message] = []
        while True:
            message = self._one()
            if message is None:
                return out
            out.append(message)

    def _one(self) -> Message | None:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEADERS:
                raise HttpError(431, "header section too large")
            return None
        try:
            head = buffer[:end].decode("latin-1")
        except UnicodeDecodeError as exc:
            raise HttpError(400, "undecodable header") from exc
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 3 and not (not self.requests and len(parts) == 2):
            raise HttpError(400, f"malformed start line {lines[0]!r}")
        if len(parts) == 2:
            parts.append("")
        version = parts[2] if self.requests else parts[0]
        if not version.startswith("HTTP/1."):
            raise HttpError(505 if version.startswith("HTTP/") else 400, f"unsupported version {version!r}")
        if not self.requests and not parts[1].isdigit():
            raise HttpError(400, f"bad status {parts[1]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HttpError(400, f"malformed header line {line!r}")
            headers[name.lower()] = value.strip()
        at = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                line_end = buffer.find(b"\r\n", at)
                if line_end < 0:
                    return None
                size_text = buffer[at:line_end].split(b";")[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError as exc:
                    raise HttpError(400, "bad chunk size") from exc
                if len(body) + size > MAX_BODY:
                    raise HttpError(413, "body too large")
                if size == 0:
                    trailer_end = buffer.find(b"\r\n", line_end + 2)
                    if trailer_end < 0:
                        return None
                    at = trailer_end + 2
                    break
                if len(buffer) < line_end + 2 + size + 2:
                    return None
                body += buffer[line_end + 2 : line_end + 2 + size]
                at = line_end + 2 + size + 2
            message = Message((parts[0], parts[1], parts[2]), headers, bytes(body))
        else:
            length_text = headers.get("content-length")
            if length_text is None:
                length = 0
                if self.requests and parts[0] == "POST":
                    raise HttpError(411, "POST without Content-Length")
            else:
                if not length_text.isdigit():
                    raise HttpError(400, "bad Content-Length")
                length = int(length_text)
            if length > MAX_BODY:
                raise HttpError(413, "body too large")
            if len(buffer) < at + length:
                return None
            message = Message((parts[0], parts[1], parts[2]), headers, bytes(buffer[at : at + length]))
            at += length
        del buffer[:at]
        return message
