"""pyserial ports (real USB-serial lines and pyserial URLs such as loop://, socket://, rfc2217://) as trio Streams.

pyserial is blocking. A port with an operating-system descriptor (a POSIX serial device) is configured by pyserial
(baud, RTS/CTS, DTR) and then driven through that descriptor by bipsim.link.pty.PtyStream: the event loop waits on
it, no thread, no polling. URL ports have no such descriptor: each direction runs its blocking call in a worker
thread that sleeps in the port until data comes (read timeout None) and is woken by cancel_read()/close() on aclose.
"""

from __future__ import annotations

import operator
from typing import Any

import serial
import trio

from bipsim.link.pty import PtyStream


async def open_serial(url: str, *, baud: int = 115200, rtscts: bool = False) -> trio.abc.Stream:
    """Opens a pyserial port: a PtyStream over its descriptor when it has one, else a threaded SerialStream."""
    try:
        port = await trio.to_thread.run_sync(
            lambda: serial.serial_for_url(url, baudrate=baud, timeout=None, rtscts=rtscts)
        )
    except (serial.SerialException, ValueError) as exc:
        raise OSError(f"cannot open serial line {url}: {exc}") from exc
    fd = getattr(port, "fd", None) if isinstance(port, serial.Serial) else None
    if isinstance(fd, int):
        return PtyStream(fd, name=url, on_close=port.close)
    return SerialStream(port, name=url)


class SerialStream(trio.abc.Stream):
    """A pyserial port without a descriptor (URL handlers) as a trio Stream, one worker thread per direction."""

    def __init__(self, port: Any, *, name: str = "") -> None:
        self.port = port
        self.name = name or str(getattr(port, "portstr", "serial"))
        self._receiving = False
        self._sending = False
        self._closed = False
        self._recv_scope: trio.CancelScope | None = None

    def _enter(self, busy: bool, what: str) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"{self.name} is closed")
        if busy:
            raise trio.BusyResourceError(f"another task is already {what} on {self.name}")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._enter(self._sending, "sending")
        self._sending = True
        try:
            payload = bytes(data)
            await trio.lowlevel.checkpoint()
            if payload:
                await trio.to_thread.run_sync(self.port.write, payload)
        except (OSError, serial.SerialException) as exc:
            if self._closed:
                raise trio.ClosedResourceError(f"{self.name} is closed") from exc
            raise trio.BrokenResourceError(f"{self.name} failed: {exc}") from exc
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        self._enter(self._sending, "sending")
        await trio.lowlevel.checkpoint()

    def _blocking_read(self, max_bytes: int) -> bytes:
        try:
            first: bytes = self.port.read(1)  # blocks until a byte arrives or cancel_read()/close()
        except serial.SerialException:
            # URL handlers report the far end going away (socket:// "socket disconnected") this way:
            # like a pty whose peer closed, a line that went away is end of file.
            return b""
        if not first or max_bytes == 1:
            return first
        # then whatever else is already there, without blocking (in_waiting is 0/1 for socket://)
        self.port.timeout = 0
        try:
            rest: bytes = self.port.read(max_bytes - 1)
        except serial.SerialException:
            rest = b""
        finally:
            self.port.timeout = None
        return first + rest

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and operator.index(max_bytes) < 1:
            raise ValueError("max_bytes must be at least 1")
        self._enter(self._receiving, "receiving")
        self._receiving = True
        data = b""
        try:
            # aclose() cancels this scope: the blocked worker is abandoned and wakes when the port closes
            with trio.CancelScope() as self._recv_scope:
                data = await trio.to_thread.run_sync(
                    self._blocking_read, max_bytes or 65536, abandon_on_cancel=True
                )
        except (OSError, serial.SerialException, TypeError, AttributeError) as exc:
            # pyserial raises odd types from a port closed under a blocked read
            if self._closed:
                raise trio.ClosedResourceError(f"{self.name} is closed") from exc
            raise trio.BrokenResourceError(f"{self.name} failed: {exc}") from exc
        finally:
            self._receiving = False
            self._recv_scope = None
        if self._closed:
            raise trio.ClosedResourceError(f"{self.name} is closed")
        return data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._recv_scope is not None:
                self._recv_scope.cancel()
            cancel = getattr(self.port, "cancel_read", None)
            if cancel is not None:
                try:
                    cancel()
                except (OSError, serial.SerialException, NotImplementedError):
                    pass
            self.port.close()
        await trio.lowlevel.checkpoint()
