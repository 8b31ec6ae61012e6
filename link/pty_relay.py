"""Two linked raw pseudo-terminals: a null-modem cable in software (what `socat pty,raw,echo=0 pty,raw,echo=0` does).

Each side is a pty whose slave path a process opens as its serial line; the relay copies bytes between the two
masters, exactly (raw mode: all 256 values, no CR/LF translation, no echo). The relay keeps its own descriptor on
each slave open, so a process may close its end and open it again without the pair coming apart.

With `baud`, the relay paces each direction like a UART at that rate with 8N1 framing (10 bits a byte, so
baud/10 bytes a second): a pty has no line rate of its own (its termios speed is ignored), so the relay reads
small chunks and releases each only once the time its bits would take on the wire has passed. Unread bytes wait
in the kernel's pty buffer, which blocks the writer as a full UART FIFO would.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import trio

from bipsim.link.pty import PtyStream, open_pty, set_raw


@dataclass
class DirectionStats:
    """Bytes copied one way and when the first and last of them moved (monotonic seconds)."""

    bytes: int = 0
    first: float | None = None
    last: float | None = None

    def add(self, count: int) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.last = now
        self.bytes += count

    @property
    def rate(self) -> float:
        """Throughput in bytes per second over the active period (0 when fewer than two chunks moved)."""
        if self.first is None or self.last is None or self.last <= self.first:
            return 0.0
        return self.bytes / (self.last - self.first)


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

    @classmethod
    def create(cls, *, baud: int | None = None) -> PtyPair:
        if baud is not None and baud <= 0:
            raise ValueError(f"baud must be positive, got {baud}")
        (ma, pa), (mb, pb) = open_pty(), open_pty()
        slaves: list[int] = []
        for path in (pa, pb):
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            set_raw(fd)
            slaves.append(fd)
        return cls(
            (pa, pb), (PtyStream(ma, name=pa), PtyStream(mb, name=pb)), (slaves[0], slaves[1]), baud=baud
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
        chunk = max(1, int(rate / 200))  # about 5 ms of line time per chunk
        wire_free = trio.current_time()
        while True:
            data = await src.receive_some(chunk)
            if not data:
                return
            # an idle line has no credit to burst with: the wire is free at the earliest now
            wire_free = max(wire_free, trio.current_time()) + len(data) / rate
            await trio.sleep_until(wire_free)
            await dst.send_all(data)
            stats.add(len(data))

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
