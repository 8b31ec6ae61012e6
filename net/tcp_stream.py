"""TcpStream: a trio.abc.HalfCloseableStream over one TcpConnection (net/tcp.py) that a stack drives
(docs/protocols.md, "TCP in the CP's stack"). It decides no protocol rule: every rule is in the sans-IO connection;
this adapter only waits.

The driver (net/stack.py's TcpHandle; any object with the TcpDriver shape) owns the connection and its timer:

- `driver.connection` is the TcpConnection; `driver.now()` the clock the connection runs on;
- after the stream calls into the connection (send, read, shutdown, close, abort) it calls `driver.kick()`, and the
  driver sends what the connection emitted, handles its events and re-arms its timer;
- `await driver.wait_changed()` returns after anything happened to the connection (a segment fed to it, a timer
  fired, a kick, the link dropped); the driver wakes every waiter then;
- `driver.failure` is set when the connection ended for a reason outside TCP (the link dropped, an ICMP error):
  the stream raises trio.BrokenResourceError with its message.

Semantics: `send_all` returns once the send buffer has taken all the data (waiting for space as ACKs free it);
`receive_some` returns buffered data, b"" after the peer's FIN; `send_eof` is the RFC 9293 CLOSE call (FIN after
the queued data); `aclose` is a full close (RFC 1122 4.2.2.13: unread or later data resets the connection) that
waits until the peer acknowledged our FIN, and aborts with RST when cancelled. A reset or dropped connection raises
trio.BrokenResourceError; a stream this side closed raises trio.ClosedResourceError.
"""

from __future__ import annotations

import operator
from ipaddress import IPv4Address
from types import TracebackType
from typing import Protocol

import trio

from bipsim.net.tcp import TcpConnection, TcpState

__all__ = ["DEFAULT_RECEIVE_SIZE", "TcpDriver", "TcpStream"]

DEFAULT_RECEIVE_SIZE = 65536


class TcpDriver(Protocol):
    """What a stack gives a stream (net/stack.py's TcpHandle)."""

    @property
    def connection(self) -> TcpConnection: ...

    @property
    def failure(self) -> BaseException | None: ...

    def now(self) -> float: ...

    def kick(self) -> None: ...

    async def wait_changed(self) -> None: ...


class _Conflict:
    """Raises trio.BusyResourceError when two tasks use the same direction of the stream at once."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._held = False

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(f"another task is already {self._what} on this TCP stream")
        self._held = True

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._held = False


class TcpStream(trio.abc.HalfCloseableStream):
    """One TCP connection as a trio stream; see the module docstring for the driver it needs."""

    def __init__(self, driver: TcpDriver) -> None:
        self._driver = driver
        self._closed = False
        self._eof_sent = False
        self._send_conflict = _Conflict("sending")
        self._receive_conflict = _Conflict("receiving")

    @property
    def connection(self) -> TcpConnection:
        """The sans-IO connection underneath (for its state, counters and addresses)."""
        return self._driver.connection

    @property
    def local(self) -> tuple[IPv4Address, int]:
        """Our address and port."""
        return self._driver.connection.local

    @property
    def remote(self) -> tuple[IPv4Address, int]:
        """The peer's address and port."""
        return self._driver.connection.remote

    def _broken(self) -> trio.BrokenResourceError | None:
        failure = self._driver.failure
        if failure is not None:
            if isinstance(failure, trio.BrokenResourceError):
                return failure
            broken = trio.BrokenResourceError(str(failure))
            broken.__cause__ = failure
            return broken
        conn = self._driver.connection
        if conn.error is not None:
            return trio.BrokenResourceError(conn.error)
        return None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Queue all of `data` in the connection's send buffer, waiting for space as the peer acknowledges."""
        with self._send_conflict:
            await trio.lowlevel.checkpoint()
            if self._closed or self._eof_sent:
                raise trio.ClosedResourceError("the TCP stream is closed for sending")
            view = memoryview(data).cast("B")
            conn = self._driver.connection
            while True:
                broken = self._broken()
                if broken is not None:
                    raise broken
                if conn.state is TcpState.CLOSED:
                    raise trio.BrokenResourceError("the TCP connection is closed")
                if not view:
                    return
                space = conn.send_space
                if space:
                    taken = conn.send(bytes(view[:space]), self._driver.now())
                    view = view[taken:]
                    self._driver.kick()
                    continue
                await self._driver.wait_changed()
                if self._closed:
                    raise trio.ClosedResourceError("the TCP stream was closed while sending")

    async def wait_send_all_might_not_block(self) -> None:
        """Return once the send buffer has room (or the connection is broken: send_all then raises)."""
        with self._send_conflict:
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("the TCP stream is closed")
            conn = self._driver.connection
            while conn.send_space == 0 and self._broken() is None and conn.state is not TcpState.CLOSED:
                await self._driver.wait_changed()
                if self._closed:
                    raise trio.ClosedResourceError("the TCP stream was closed while waiting")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to `max_bytes` received bytes; b"" once the peer sent FIN and everything before it was read."""
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be a positive integer")
        with self._receive_conflict:
            await trio.lowlevel.checkpoint()
            conn = self._driver.connection
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("the TCP stream is closed")
                if conn.readable:
                    data = conn.read(max_bytes or DEFAULT_RECEIVE_SIZE)
                    self._driver.kick()  # a window update may be due
                    return data
                if conn.at_eof:
                    return b""
                broken = self._broken()
                if broken is not None:
                    raise broken
                if conn.state is TcpState.CLOSED:
                    return b""
                await self._driver.wait_changed()

    async def send_eof(self) -> None:
        """Send FIN after the queued data (RFC 9293 3.10.4); receiving goes on. A second call does nothing."""
        with self._send_conflict:
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("the TCP stream is closed")
            if self._eof_sent:
                return
            self._eof_sent = True
            broken = self._broken()
            if broken is not None:
                raise broken
            self._driver.connection.shutdown(self._driver.now())
            self._driver.kick()

    async def aclose(self) -> None:
        """Close both directions and wait until the peer acknowledged our FIN; RST if cancelled meanwhile."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        conn = self._driver.connection
        try:
            if conn.state is not TcpState.CLOSED and self._driver.failure is None:
                conn.close(self._driver.now())
            self._driver.kick()  # also wakes tasks blocked in this stream: they raise ClosedResourceError
            while not conn.fin_acked and self._driver.failure is None:
                await self._driver.wait_changed()
            await trio.lowlevel.checkpoint()
        except BaseException:
            if conn.state is not TcpState.CLOSED:
                conn.abort(self._driver.now())
                self._driver.kick()
            raise
