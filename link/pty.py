"""Pseudo-terminals as trio Streams: the virtual serial lines between the AP and CP processes.

A pty pair stands in for a null-modem cable between two USB-serial adapters. Both ends are put in raw mode (no echo,
no CR/LF translation, no signals, 8 bits), as `socat pty,raw,echo=0` does, so every one of the 256 byte values
passes unchanged. I/O waits on the descriptor in the event loop (wait_readable/wait_writable): no threads, no polling.

Linux reports EIO on a pty master whose slave has no open descriptor (the peer closed the line); a line that went
away is end-of-file to its reader, so EIO reads become b"" and EIO writes become BrokenResourceError.
"""

from __future__ import annotations

import errno
import operator
import os
import select
import termios
import tty
from collections.abc import Callable

import trio


def set_raw(fd: int, baud: int | None = None) -> None:
    """Puts a tty descriptor in raw 8N1 mode without echo (cfmakeraw), optionally at `baud`."""
    tty.setraw(fd, termios.TCSANOW)
    attrs = termios.tcgetattr(fd)
    attrs[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    attrs[2] |= termios.CLOCAL | termios.CREAD
    if baud is not None:
        speed = getattr(termios, f"B{baud}", None)
        if speed is None:
            raise ValueError(f"unsupported baud rate {baud}")
        attrs[4] = attrs[5] = speed
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def open_pty() -> tuple[int, str]:
    """Creates a raw pseudo-terminal; returns (master fd, slave path). The slave descriptor is closed."""
    master, slave = os.openpty()
    try:
        set_raw(slave)
        set_raw(master)
        path = os.ttyname(slave)
    finally:
        os.close(slave)
    return master, path


class PtyStream(trio.abc.Stream):
    """A tty descriptor (pty master or slave, or a serial device) as a trio Stream; owns the descriptor.

    `on_close` replaces os.close for descriptors owned by someone else (a pyserial port closes its own).
    """

    def __init__(self, fd: int, *, name: str = "", on_close: Callable[[], None] | None = None) -> None:
        self.name = name or f"fd{fd}"
        self._fd = fd
        self._on_close = on_close
        os.set_blocking(fd, False)
        self._closed = False
        self._broken = False
        self._sending = False
        self._receiving = False

    @classmethod
    def open(cls, path: str, *, baud: int | None = None) -> PtyStream:
        """Opens a tty device path (a pty slave, /dev/ttyUSB0...) in raw mode."""
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        try:
            set_raw(fd, baud)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, name=path)

    def fileno(self) -> int:
        return self._fd

    def _enter(self, busy: bool, what: str) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"{self.name} is closed")
        if busy:
            raise trio.BusyResourceError(f"another task is already {what} on {self.name}")

    def _hung_up(self) -> bool:
        """True when the other end has gone (a pty master whose slave has no open descriptor reports POLLHUP)."""
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in poller.poll(0))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._enter(self._sending, "sending")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data).cast("B")
            waited = False
            while view:
                if self._broken:
                    raise trio.BrokenResourceError(f"{self.name}: line went away")
                try:
                    sent = os.write(self._fd, view)
                except BlockingIOError:
                    # A pty master never fails a write when its slave is gone; it just stops draining.
                    if self._hung_up():
                        self._broken = True
                        continue
                    await trio.lowlevel.wait_writable(self._fd)
                    waited = True
                    continue
                except OSError as exc:
                    if self._closed:
                        raise trio.ClosedResourceError(f"{self.name} is closed") from exc
                    self._broken = True
                    raise trio.BrokenResourceError(f"{self.name}: line went away ({exc.strerror})") from exc
                view = view[sent:]
            if not waited:  # waiting for the line was this call's schedule point already
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        self._enter(self._sending, "sending")
        self._sending = True
        try:
            await trio.lowlevel.wait_writable(self._fd)
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and operator.index(max_bytes) < 1:
            raise ValueError("max_bytes must be at least 1")
        self._enter(self._receiving, "receiving")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while True:
                try:
                    data = os.read(self._fd, max_bytes or 65536)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(self._fd)
                    waited = True
                    continue
                except OSError as exc:
                    if self._closed:
                        raise trio.ClosedResourceError(f"{self.name} is closed") from exc
                    if exc.errno == errno.EIO:  # the other end closed: end of file
                        data = b""
                    else:
                        raise trio.BrokenResourceError(f"{self.name}: {exc.strerror}") from exc
                if not waited:  # one schedule point per call: a wait for the line was one already
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return data
        finally:
            self._receiving = False

    def receive_available(self, max_bytes: int) -> bytes:
        """The bytes already waiting, without waiting for more (b"" when none, or when the other end closed).

        The paced relay (bipsim.link.pty_relay) refills its FIFO with this between releases: bytes that are here
        keep the line busy, as a UART driver keeps its FIFO topped up.
        """
        if operator.index(max_bytes) < 1:
            raise ValueError("max_bytes must be at least 1")
        self._enter(self._receiving, "receiving")
        try:
            return os.read(self._fd, max_bytes)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:  # the other end closed: receive_some says end of file
                return b""
            raise trio.BrokenResourceError(f"{self.name}: {exc.strerror}") from exc

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._fd)
            if self._on_close is not None:
                self._on_close()
            else:
                os.close(self._fd)
        await trio.lowlevel.checkpoint()


async def open_line(url: str, *, baud: int = 115200) -> trio.abc.Stream:
    """Opens a line named as in docs/protocols.md, "The serial line": a tty device path, or any pyserial URL.

    Device paths use the descriptor directly (termios raw mode at `baud`); URLs such as loop://, socket:// or
    rfc2217:// go through pyserial (bipsim.link.serial_line).
    """
    if "://" not in url:
        if not os.path.exists(url):
            raise FileNotFoundError(errno.ENOENT, "no such serial line", url)
        try:
            return PtyStream.open(url, baud=baud)
        except termios.error as exc:
            raise OSError(errno.ENOTTY, f"not a serial line ({exc.args[-1]})", url) from exc
    from bipsim.link.serial_line import open_serial  # pyserial is only needed for URLs

    return await open_serial(url, baud=baud)
