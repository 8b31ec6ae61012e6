"""The trio adapter of a UDP port on the CP's own stack (RFC 768 datagrams, net/udp.py): `UdpSocket`, made by
`IpStack.open_udp` (net/stack.py), with `send_to` and `receive_from` like a datagram socket's.

The receive queue is bounded (`queue` datagrams, 64 by default): a datagram that finds it full is dropped and
traced, as a kernel drops on a full socket buffer (UDP gives no delivery guarantee, RFC 768), so a peer that
floods cannot grow the modem's memory. When the link under the stack goes (`IpStack.abort_all`), both calls
raise trio.BrokenResourceError("link dropped: <reason>"); after `aclose` they raise trio.ClosedResourceError.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Protocol

import trio

Address = tuple[IPv4Address, int]
DEFAULT_QUEUE = 64


class UdpHost(Protocol):
    """What a UdpSocket needs of its stack (IpStack implements it)."""

    def send_udp(self, local: Address, data: bytes, remote: Address) -> None: ...

    def release_udp(self, socket: UdpSocket) -> None: ...


class UdpSocket:
    """A bound UDP port. `remote` is set for a flow the PGW accepted (net/stack.py `accept_udp_flow`): it then
    carries only that peer's datagrams, and `send` answers it."""

    def __init__(
        self, host: UdpHost, local: Address, *, remote: Address | None = None, queue: int = DEFAULT_QUEUE
    ) -> None:
        self._host = host
        self.local = local
        self.remote = remote
        self._send, self._receive = trio.open_memory_channel[tuple[bytes, Address]](max(1, queue))
        self._broken: str | None = None
        self._closed = False
        self.dropped = 0  # datagrams dropped on a full queue

    @property
    def port(self) -> int:
        return self.local[1]

    def __repr__(self) -> str:
        return f"<UdpSocket {self.local[0]}:{self.local[1]}>"

    async def send_to(self, data: bytes, address: tuple[IPv4Address | str, int]) -> None:
        """Sends one datagram to (address, port); OSError for one that cannot be sent (too large, no port)."""
        await trio.lowlevel.checkpoint()
        self._check()
        host, port = address
        if not 0 < port <= 0xFFFF:
            raise OSError(f"UDP port {port} out of range")
        self._host.send_udp(self.local, bytes(data), (IPv4Address(host), port))

    async def send(self, data: bytes) -> None:
        """Sends to the flow's peer (a socket with a `remote`)."""
        if self.remote is None:
            raise OSError("send on a UDP socket without a peer; use send_to")
        await self.send_to(data, self.remote)

    async def receive_from(self) -> tuple[bytes, Address]:
        """The next datagram and who sent it."""
        self._check()
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            self._check()
            raise trio.ClosedResourceError("UDP socket closed") from None

    def deliver(self, data: bytes, source: Address) -> bool:
        """The stack hands a datagram in; False when the queue is full (the datagram is dropped)."""
        if self._closed or self._broken is not None:
            return False
        try:
            self._send.send_nowait((data, source))
        except trio.WouldBlock:
            self.dropped += 1
            return False
        return True

    def fail(self, reason: str) -> None:
        """The link went: waiting and later calls raise BrokenResourceError."""
        if self._broken is None and not self._closed:
            self._broken = reason
            self._send.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._send.close()
            self._host.release_udp(self)

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def _check(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("UDP socket closed")
        if self._broken is not None:
            raise trio.BrokenResourceError(f"link dropped: {self._broken}")

    async def __aenter__(self) -> UdpSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
