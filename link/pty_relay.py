"""Two linked raw pseudo-terminals: a null-modem cable in software (what `socat pty,raw,echo=0 pty,raw,echo=0` does).

Each side is a pty whose slave path a process opens as its serial line; the relay copies bytes between the two
masters, exactly (raw mode: all 256 values, no CR/LF translation, no echo). The relay keeps its own descriptor on
each slave open, so a process may close its end and open it again without the pair coming apart.

With `baud`, the relay paces each direction like a UART at that rate with 8N1 framing (10 bits a byte, so
baud/10 bytes a second; docs/protocols.md, "The serial line"): a pty has no line rate of its own (its termios
speed is ignored), so the relay releases bytes only once the time their bits would take on the wire has passed.
The rule is the sans-IO `UartPacer`: a byte-time budget counted against the clock from the moment the line last
went busy, so a late wake-up is caught up from the relay's buffer (a serial driver keeps sending from its
transmit buffer while its writer sleeps) instead of being lost, and at most one FIFO's worth (4 KiB by default)
of lateness is ever made up. Bytes
the relay has not taken yet wait in the kernel's pty buffer, which blocks the writer as a full UART FIFO would.

The relay sleeps until a release is due on a Linux timerfd (`TimerFd`, timerfd_create(2), nanosecond deadlines)
when trio runs on its system clock: trio's own sleeps wait in epoll_wait(2), whose timeout is whole milliseconds
rounded up, so each release would come up to a millisecond late. On a line that carries one short frame at a time
(an AT command, a prompt, an answer: docs/performance.md, "MO SMS through +CMGS") that lateness was a third of
the frame's own line time. Bytes still never leave before their time; only the wake-up is closer to it.
On trio's system clock each direction runs in a worker thread of its own (`copy_paced_blocking`, the same pacer
and rule on the raw descriptors, waiting in poll(2)): a turn of the event loop per wake-up cost more than the
timerfd had saved. Under a MockClock the trio adapter `copy_paced` runs, on virtual time.
"""

from __future__ import annotations

import ctypes
import math
import os
import select
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from bipsim.link.pty import PtyStream, open_pty, set_raw

# 1e-9 of a byte: (t - origin) * rate computed in floating point may land a hair below a whole byte exactly at
# the time that byte is due; without it the relay would sleep again for nothing.
_EPSILON = 1e-9


def default_fifo(bytes_per_second: float) -> int:
    """The relay's FIFO: 4096 bytes, the transmit buffer a Linux serial driver keeps sending from without its
    writer (the serial core's UART_XMIT_SIZE, one page; usb-serial's write FIFO is one page too), or 20 ms of line
    time when that is more."""
    return max(4096, int(bytes_per_second * 0.02))


def default_chunk(bytes_per_second: float) -> int:
    """Bytes released together when the relay is on time: about 5 ms of line time (fewer wake-ups)."""
    return max(1, int(bytes_per_second / 200))


class UartPacer:
    """When the bytes of one direction of an 8N1 line may leave: sans-IO, times in, byte counts out.

    A busy period starts when bytes arrive on an idle line (`start`). From then on byte k (counting from 1) may leave
    at origin + k / rate and no earlier, so over the busy period the line never carries more than rate bytes a
    second. `take` releases every byte whose time has passed, however late the caller is, up to the bytes the caller
    holds: the budget is kept against the clock, not against the caller's wake-ups. A caller more than `fifo` bytes
    behind loses the rest (the origin moves forward), so over any window the line carries at most the window's
    bytes plus one FIFO: a burst after a long stall is one FIFO, never the whole stall.
    """

    def __init__(self, bytes_per_second: float, *, fifo: int) -> None:
        if bytes_per_second <= 0:
            raise ValueError(f"rate must be positive, got {bytes_per_second}")
        if fifo < 1:
            raise ValueError(f"fifo must be at least 1 byte, got {fifo}")
        self.rate = float(bytes_per_second)
        self.fifo = fifo
        self._origin: float | None = (
            None  # when byte 1 of the busy period started on the wire; None: never busy
        )
        self._count = 0  # bytes released since _origin
        self.lost = 0.0  # seconds of lateness dropped because the caller was more than a FIFO behind
        self.idle = 0.0  # seconds the wire sat idle between busy periods (nothing to send)

    @property
    def wire_free(self) -> float:
        """When the last byte released so far has left the wire (its stop bit sent)."""
        if self._origin is None:
            return -math.inf
        return self._origin + self._count / self.rate

    def start(self, now: float) -> None:
        """Bytes arrived on an idle line at `now`: an idle line has no budget to burst with, so it starts now
        (or when the wire is free, if the previous byte is still on it)."""
        if self._origin is not None and now > self.wire_free:
            self.idle += now - self.wire_free
        self._origin = max(now, self.wire_free)
        self._count = 0

    def allowance(self, now: float) -> int:
        """Bytes that may leave at `now`, at most one FIFO (lateness beyond that is dropped).

        A pacer that was never started starts at `now`."""
        if self._origin is None:
            self.start(now)
        assert self._origin is not None
        due = math.floor((now - self._origin) * self.rate + _EPSILON) - self._count
        if due > self.fifo:
            # more than a FIFO behind: a UART's FIFO could not have held that much; keep one FIFO's worth
            self.lost += (due - self.fifo) / self.rate
            self._origin = now - (self._count + self.fifo) / self.rate
            due = self.fifo
        return max(0, due)

    def take(self, now: float, buffered: int) -> int:
        """Releases what may leave at `now` of `buffered` bytes; returns how many (0: wait until `due`)."""
        count = min(self.allowance(now), buffered)
        self._count += count
        return count

    def due(self, count: int) -> float:
        """When `count` more bytes may leave (each byte leaves once its 10 bit times have passed)."""
        if self._origin is None:
            raise RuntimeError("the pacer has not started: call start() or take() first")
        return self._origin + (self._count + count) / self.rate


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


# <time.h>; Python's perf_counter, which trio's system clock reads, is this clock on Linux
_CLOCK_MONOTONIC = 1


def _libc_timerfd() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc_timerfd()


def _arm_timer(fd: int, seconds: float) -> None:
    """Arms the one-shot timerfd `fd` to expire `seconds` from now (timerfd_settime(2), relative)."""
    nanoseconds = max(1, math.ceil(seconds * 1e9))  # 0 would disarm the timer
    spec = _Itimerspec(_Timespec(0, 0), _Timespec(nanoseconds // 1_000_000_000, nanoseconds % 1_000_000_000))
    if _LIBC is None or _LIBC.timerfd_settime(fd, 0, ctypes.byref(spec), None) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


class TimerFd:
    """A one-shot Linux timerfd (timerfd_create(2)) to sleep on with sub-millisecond precision under trio.

    `sleep_until(deadline)` takes a deadline on trio's clock, like trio.sleep_until, and returns at or after it;
    trio's own sleeps are rounded up to the next millisecond by epoll_wait(2). Only for trio's system clock (the
    timer runs on the real monotonic clock): `relay_sleeper` picks it. Cancellable; close() releases the
    descriptor.
    """

    def __init__(self) -> None:
        if _LIBC is None:
            raise OSError("timerfd is not available on this system")
        fd = _LIBC.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        self.fd: int = fd

    def _arm(self, seconds: float) -> None:
        _arm_timer(self.fd, seconds)

    async def sleep_until(self, deadline: float) -> None:
        """Returns once trio's clock has reached `deadline` (at once, after a checkpoint, if it has)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while (remaining := deadline - trio.current_time()) > 0:
            self._arm(remaining)  # settime also clears an expiry left over from a cancelled sleep
            await trio.lowlevel.wait_readable(self.fd)
            waited = True
            try:
                os.read(self.fd, 8)  # the expiry count: read to make the descriptor unreadable again
            except BlockingIOError:
                pass
        if not waited:
            # waiting for the timer was this call's schedule point already: another turn of the event loop
            # would only make the release that follows later
            await trio.lowlevel.cancel_shielded_checkpoint()

    def close(self) -> None:
        if self.fd >= 0:
            trio.lowlevel.notify_closing(self.fd)
            os.close(self.fd)
            self.fd = -1


SleepUntil = Callable[[float], Awaitable[None]]


def relay_sleeper() -> tuple[SleepUntil, TimerFd | None]:
    """How the relay sleeps until a release is due: on a TimerFd under trio's system clock (returned too, for the
    caller to close), trio.sleep_until otherwise (a MockClock's virtual time, or no timerfd on this system)."""
    if _LIBC is None or type(trio.lowlevel.current_clock()).__name__ != "SystemClock":
        return trio.sleep_until, None
    try:
        timer = TimerFd()
    except OSError:
        return trio.sleep_until, None
    return timer.sleep_until, timer


class PacedSource(Protocol):
    """What the paced relay reads: a trio receive stream that can also say what is already buffered."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...

    def receive_available(self, max_bytes: int) -> bytes: ...


async def copy_paced(
    src: PacedSource,
    dst: trio.abc.SendStream,
    pacer: UartPacer,
    *,
    chunk: int,
    stats: DirectionStats | None = None,
    sleep_until: SleepUntil = trio.sleep_until,
) -> None:
    """Copies src to dst at the pacer's rate until src ends: the trio adapter of `UartPacer`.

    The relay's buffer is the UART's FIFO (`pacer.fifo` bytes). While it holds bytes, the relay sleeps until a
    `chunk` of them (or all it holds, when fewer) is due and then sends every byte that is due (all of them after
    a late wake-up) in one write. It never sends a part of that: bytes that fell due while the last write was
    going out wait for the rest of their chunk, so a short frame reaches the reader in one piece at its last
    byte's time rather than a byte or two at a time, each waking the reader (docs/performance.md, "MO SMS
    through +CMGS"). When it runs empty, bytes already waiting in the source keep the busy period going (the
    driver refills the FIFO); only when nothing is waiting does the line go idle, and the next bytes start a new
    busy period. `stats` gets the bytes sent and the time spent waiting for `dst` to take them (a reader that
    does not read). `sleep_until` is how it waits for a release (`relay_sleeper`: a TimerFd on trio's system
    clock).
    """
    buffer = bytearray()
    while True:
        if not buffer:
            data = src.receive_available(pacer.fifo)
            if not data:
                data = await src.receive_some(pacer.fifo)
                if not data:
                    return
                pacer.start(trio.current_time())
            buffer += data
        elif len(buffer) < pacer.fifo:
            buffer += src.receive_available(pacer.fifo - len(buffer))
        release = min(len(buffer), chunk)
        if pacer.allowance(trio.current_time()) < release:
            await sleep_until(pacer.due(release))
            continue
        count = pacer.take(trio.current_time(), len(buffer))
        before = trio.current_time()
        await dst.send_all(bytes(buffer[:count]))
        del buffer[:count]
        if stats is not None:
            stats.send_wait += trio.current_time() - before
            stats.add(count)


def _read_available(fd: int, max_bytes: int) -> bytes | None:
    """What a non-blocking descriptor holds now (b"" when nothing), None at end of file (EIO: the other side
    closed)."""
    try:
        return os.read(fd, max_bytes)
    except BlockingIOError:
        return b""
    except OSError:
        return None


def copy_paced_blocking(
    src: int, dst: int, pacer: UartPacer, *, chunk: int, stop: int, stats: DirectionStats | None = None
) -> None:
    """`copy_paced` for a worker thread, on raw non-blocking descriptors: the same pacer and the same release rule,
    with blocking waits (poll(2) on the source, on a TimerFd until a release is due, on the destination when it is
    full) instead of trio's event loop. Returns when `stop` (a pipe's read end) becomes readable or the source
    ends.

    Why a thread: through the event loop each wake-up (the bytes arriving, the release falling due) costs a turn
    of trio's run loop and a schedule point on the way to the write, 0.1 to 0.3 ms each on a loaded 2-core
    machine, three times a frame; a short frame's line time is 1 to 2 ms (docs/performance.md, "MO SMS through
    +CMGS"). Times are time.perf_counter's (CLOCK_MONOTONIC), the timer's clock."""
    timer = _LIBC.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC) if _LIBC is not None else -1
    if timer < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno) if errno else "timerfd is not available on this system")
    now = time.perf_counter
    hang_up = select.POLLHUP | select.POLLERR | select.POLLNVAL

    def waiter(fd: int, events: int) -> select.poll:
        poller = select.poll()
        poller.register(fd, events)
        poller.register(stop, select.POLLIN)
        return poller

    for_source, for_timer = waiter(src, select.POLLIN), waiter(timer, select.POLLIN)
    for_destination = waiter(dst, select.POLLOUT)
    buffer = bytearray()
    try:
        while True:
            if not buffer:
                data = _read_available(src, pacer.fifo)
                while data == b"":
                    events = dict(for_source.poll())
                    if stop in events:
                        return
                    data = _read_available(src, pacer.fifo)
                    if data == b"" and events.get(src, 0) & hang_up:
                        return  # the source went away for good: end as copy_paced does at end of file
                if data is None:
                    return
                pacer.start(now())
                buffer += data
            elif len(buffer) < pacer.fifo:
                buffer += _read_available(src, pacer.fifo - len(buffer)) or b""
            release = min(len(buffer), chunk)
            if pacer.allowance(now()) < release:
                remaining = pacer.due(release) - now()
                if remaining > 0:
                    _arm_timer(timer, remaining)
                    if stop in dict(for_timer.poll()):
                        return
                    try:
                        os.read(timer, 8)  # the expiry count
                    except BlockingIOError:
                        pass
                continue
            count = pacer.take(now(), len(buffer))
            view = memoryview(bytes(buffer[:count]))
            before = now()
            while view:
                try:
                    view = view[os.write(dst, view) :]
                except BlockingIOError:
                    # the reader's pty is full (it does not read): wait as a UART held by the far end's FIFO
                    if stop in dict(for_destination.poll()):
                        return
            del buffer[:count]
            if stats is not None:
                stats.send_wait += now() - before
                stats.add(count)
    finally:
        os.close(timer)


async def run_paced_thread(
    src: int, dst: int, pacer: UartPacer, *, chunk: int, stats: DirectionStats | None = None
) -> None:
    """Runs `copy_paced_blocking` in a trio worker thread until the source ends or this task is cancelled; on a
    cancel the thread is told to stop and is off the descriptors before this returns (the caller closes them)."""
    stop_read, stop_write = os.pipe()
    done = threading.Event()

    def work() -> None:
        try:
            copy_paced_blocking(src, dst, pacer, chunk=chunk, stop=stop_read, stats=stats)
        finally:
            done.set()

    try:
        await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    finally:
        os.write(stop_write, b"x")
        done.wait(5.0)  # the thread sees the stop at its next wait, microseconds away
        os.close(stop_read)
        os.close(stop_write)


@dataclass
class DirectionStats:
    """Bytes copied one way and when the first and last of them moved (monotonic seconds).

    `timeline`, when a list, gets (time, bytes so far) after every copy: a benchmark's way to count the bytes of a
    window (`bytes_between`); off by default, since it grows with the traffic.
    """

    bytes: int = 0
    first: float | None = None
    last: float | None = None
    timeline: list[tuple[float, int]] | None = None
    send_wait: float = 0.0  # paced: seconds spent waiting for the other side's pty to take bytes
    pacer: UartPacer | None = None  # paced: the direction's pacer (its `idle` and `lost` seconds)

    def add(self, count: int) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.last = now
        self.bytes += count
        if self.timeline is not None:
            self.timeline.append((now, self.bytes))

    @property
    def rate(self) -> float:
        """Throughput in bytes per second over the active period (0 when fewer than two chunks moved)."""
        if self.first is None or self.last is None or self.last <= self.first:
            return 0.0
        return self.bytes / (self.last - self.first)

    def bytes_between(self, start: float, end: float) -> int:
        """Bytes copied after monotonic time `start` up to `end` (needs a timeline)."""
        if self.timeline is None:
            raise ValueError("this direction keeps no timeline")
        before = 0
        upto = 0
        for when, total in self.timeline:
            if when <= start:
                before = total
            if when <= end:
                upto = total
        return upto - before


@dataclass
class PtyPair:
    """Two linked ptys. `paths` are the slave paths to hand to the two processes."""

    paths: tuple[str, str]
    _masters: tuple[PtyStream, PtyStream]
    _slave_fds: tuple[int, int]
    stats: tuple[DirectionStats, DirectionStats] = field(
        default_factory=lambda: (DirectionStats(), DirectionStats())
    )
    baud: int | None = None  # None: as fast as the ptys go; else 8N1 pacing, baud/10 bytes/s per direction
    fifo: int | None = None  # the paced relay's FIFO in bytes (default_fifo of the rate when None)
    # paced: wake on a timerfd when due, in a thread per direction on trio's system clock (copy_paced_blocking);
    # False: the event loop's own sleeps, late by up to a millisecond (a benchmark's "before" figure)
    timerfd: bool = True

    @classmethod
    def create(cls, *, baud: int | None = None, fifo: int | None = None, timerfd: bool = True) -> PtyPair:
        if baud is not None and baud <= 0:
            raise ValueError(f"baud must be positive, got {baud}")
        if fifo is not None and fifo < 1:
            raise ValueError(f"fifo must be at least 1 byte, got {fifo}")
        (ma, pa), (mb, pb) = open_pty(), open_pty()
        slaves: list[int] = []
        for path in (pa, pb):
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            set_raw(fd)
            slaves.append(fd)
        return cls(
            (pa, pb),
            (PtyStream(ma, name=pa), PtyStream(mb, name=pb)),
            (slaves[0], slaves[1]),
            baud=baud,
            fifo=fifo,
            timerfd=timerfd,
        )

    @property
    def bytes_per_second(self) -> float | None:
        """The paced rate of each direction (8N1: 10 bits on the wire per byte); None when unpaced."""
        return None if self.baud is None else self.baud / 10

    async def _copy(self, src: PtyStream, dst: PtyStream, stats: DirectionStats) -> None:
        if self.baud is not None:
            await self._copy_paced(src, dst, stats, self.baud / 10)
            return
        while True:
            data = await src.receive_some(65536)
            if not data:  # cannot happen while we hold the slave open; stop cleanly if it does
                return
            await dst.send_all(data)
            stats.add(len(data))

    async def _copy_paced(self, src: PtyStream, dst: PtyStream, stats: DirectionStats, rate: float) -> None:
        pacer = UartPacer(rate, fifo=self.fifo or default_fifo(rate))
        stats.pacer = pacer
        if (
            self.timerfd
            and _LIBC is not None
            and type(trio.lowlevel.current_clock()).__name__ == "SystemClock"
        ):
            # on the real clock the relay runs in a thread of its own (copy_paced_blocking says why)
            await run_paced_thread(src.fileno(), dst.fileno(), pacer, chunk=default_chunk(rate), stats=stats)
            return
        sleep_until, timer = relay_sleeper() if self.timerfd else (trio.sleep_until, None)
        try:
            await copy_paced(src, dst, pacer, chunk=default_chunk(rate), stats=stats, sleep_until=sleep_until)
        finally:
            if timer is not None:
                timer.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Copies both ways until cancelled."""
        a, b = self._masters
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._copy, a, b, self.stats[0])
            nursery.start_soon(self._copy, b, a, self.stats[1])
            task_status.started()

    async def aclose(self) -> None:
        # close every descriptor before the first checkpoint: a cancelled aclose must still close both ends
        # (trio's aclose contract), or the other process never sees the line go away
        for fd in self._slave_fds:
            os.close(fd)
        for master in self._masters:
            with trio.CancelScope(shield=True):
                await master.aclose()
