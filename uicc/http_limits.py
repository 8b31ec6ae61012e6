"""The limits of the GlobalPlatform Amendment B admin protocol's HTTP/1.1 (RFC 9112), stated once for both ends:
the card's admin agent (uicc/ota_agent.py) and the OTA server (ota/server.py, ota/admin.py).

docs/protocols.md, "The OTA server", lists them with the answer each one gets. The card applies the message
limits (header section, body, chunk) to the server's answers; the server applies every limit to its clients.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HttpLimits:
    """How much one peer may make the other hold, and for how long."""

    # bytes of a start line and header section (the server answers 431; h11's max_incomplete_event_size)
    header_bytes: int = 16 * 1024
    # bytes of one message body: the card's own buffer for a command script (the server answers 413)
    body_bytes: int = 1 << 20
    # bytes of one chunk of a chunked body (RFC 9112 7.1; the server answers 413)
    chunk_bytes: int = 64 * 1024
    # requests on one connection; the last one's answer carries Connection: close
    requests_per_connection: int = 100
    # seconds for a whole request, from the end of the previous answer (or the connection's start) to its last
    # byte; also the TLS handshake's deadline (the server answers 408 to a request begun and not finished)
    request_timeout: float = 60.0
    # connections served at once; the next one is answered 503 and closed
    connections: int = 256
    # cards whose progress the server remembers; past it, a completed card is forgotten first (docs/protocols.md)
    cards: int = 10_000


LIMITS = HttpLimits()


class BodyOverLimit(Exception):
    """A message body or one of its chunks passed its limit; the message is answered (or refused) with 413."""


class Body:
    """One message's body as h11 hands it over in Data events, held against the body and chunk limits."""

    def __init__(self, limits: HttpLimits, holder: str = "") -> None:
        self.limits = limits
        self.holder = holder  # whose limit, for the reason ("the card's ")
        self.data = bytearray()
        self.chunked = False
        self._chunk = 0

    def start(self, chunked: bool) -> None:
        self.data.clear()
        self.chunked = chunked
        self._chunk = 0

    def add(self, data: bytes, chunk_start: bool) -> None:
        """Adds one Data event's bytes; raises BodyOverLimit past the body or (chunked) chunk limit."""
        if chunk_start:
            self._chunk = 0
        self._chunk += len(data)
        self.data += data
        if len(self.data) > self.limits.body_bytes:
            raise BodyOverLimit(f"body over the {self.holder}{self.limits.body_bytes} byte limit")
        if self.chunked and self._chunk > self.limits.chunk_bytes:
            raise BodyOverLimit(f"chunk over the {self.holder}{self.limits.chunk_bytes} byte limit")
