"""Simple BipClients for tests and scenarios: a request/response client that sends a request and is done when
the expected number of bytes came back."""

from __future__ import annotations


class RequestResponseClient:
    """Sends `request` once the link is up; done after `expect` bytes arrived (then the card closes the channel)."""

    def __init__(self, request: bytes, expect: int, *, reconnect: bool = False) -> None:
        self.request = request
        self.expect = expect
        self.received = bytearray()
        self.lost: list[str] = []
        self.connections = 0
        self._reconnect = reconnect

    def connection_made(self) -> bytes:
        self.connections += 1
        self.received.clear()
        return self.request

    def data_received(self, data: bytes) -> bytes:
        self.received += data
        return b""

    def connection_lost(self, reason: str) -> None:
        self.lost.append(reason)

    @property
    def done(self) -> bool:
        return len(self.received) >= self.expect

    @property
    def wants_reconnect(self) -> bool:
        return self._reconnect and not self.done
