"""The paced line (bipsim.link.pty_relay): UartPacer's byte counts per interval, the catch-up after a late wake-up,
the one-FIFO limit, and the 8N1 bound over every window; the trio adapter on trio's MockClock."""

from __future__ import annotations

import math
import os
import select
import sys
import threading

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from bipsim.link.pty import PtyStream, open_pty, set_raw
from bipsim.link.pty_relay import (
    DirectionStats,
    PtyPair,
    TimerFd,
    UartPacer,
    copy_paced,
    copy_paced_blocking,
    default_chunk,
    default_fifo,
    relay_sleeper,
)

RATE = 1000.0  # bytes a second: 10 000 baud 8N1, round numbers for the arithmetic
FIFO = 50
CHUNK = 5


def test_pacer_releases_exactly_the_bytes_whose_time_has_passed() -> None:
    pacer = UartPacer(RATE, fifo=FIFO)
    pacer.start(0.0)
    assert pacer.take(0.0, 1000) == 0  # an idle line has no credit: the first byte needs its 10 bit times
    assert pacer.due(1) == pytest.approx(0.001)
    assert pacer.take(0.001, 1000) == 1
    assert pacer.take(0.0105, 1000) == 9
    assert pacer.take(0.0105, 1000) == 0
    assert pacer.due(5) == pytest.approx(0.015)
    assert pacer.take(0.015, 1000) == 5  # exactly on the due time, not one byte short (float rounding)
    assert pacer.wire_free == pytest.approx(0.015)


def test_pacer_catches_up_a_late_wake_up_from_its_buffer() -> None:
    pacer = UartPacer(RATE, fifo=FIFO)
    pacer.start(0.0)
    assert pacer.take(0.005, 1000) == 5
    # the caller slept until 0.010 but woke at 0.040: the 30 ms are not lost, the buffer had the bytes
    assert pacer.take(0.040, 1000) == 35
    assert pacer.lost == 0
    # bounded by the buffered bytes: only 3 were there; the rest of the budget waits for more bytes
    assert pacer.take(0.060, 3) == 3
    assert pacer.take(0.060, 1000) == 17


def test_pacer_makes_up_at_most_one_fifo() -> None:
    pacer = UartPacer(RATE, fifo=FIFO)
    pacer.start(0.0)
    assert pacer.take(0.010, 1000) == 10
    assert pacer.take(1.010, 1000) == FIFO  # a one-second stall: one FIFO goes at once, the rest is lost
    assert pacer.lost == pytest.approx(1.0 - FIFO / RATE)
    assert pacer.take(1.010, 1000) == 0
    assert pacer.take(1.011, 1000) == 1  # then the line rate again


def test_an_idle_line_starts_again_without_a_burst() -> None:
    pacer = UartPacer(RATE, fifo=FIFO)
    pacer.start(0.0)
    assert pacer.take(0.010, 10) == 10
    pacer.start(5.0)  # bytes arrive after 5 s of silence
    assert pacer.take(5.0, 10) == 0
    assert pacer.take(5.0099, 10) == 9
    assert pacer.take(5.010, 10) == 1


def test_a_start_while_the_wire_is_busy_queues_behind_it() -> None:
    pacer = UartPacer(RATE, fifo=FIFO)
    pacer.start(0.0)
    assert pacer.take(0.010, 10) == 10
    pacer.start(0.005)  # a caller with a stale clock: the wire is free only at 0.010
    assert pacer.take(0.010, 10) == 0
    assert pacer.take(0.011, 10) == 1


@pytest.mark.parametrize("rate, fifo", [(0.0, 1), (-5.0, 1), (1.0, 0)])
def test_bad_pacer_parameters_are_refused(rate: float, fifo: int) -> None:
    with pytest.raises(ValueError):
        UartPacer(rate, fifo=fifo)


def check_bound(samples: list[tuple[float, int]], rate: float, fifo: int, origin: float) -> None:
    """Cumulative bytes never above the 8N1 line since the busy period began; any window at most one FIFO over."""
    for t, total in samples:
        assert total <= math.floor((t - origin) * rate + 1e-6), (t, total)
    for i, (a, before) in enumerate(samples):
        for b, after in samples[i:]:
            assert after - before <= (b - a) * rate + fifo + 1e-6, (a, b, after - before)


@settings(max_examples=200, deadline=None)
@given(
    wakes=st.lists(st.floats(min_value=0.0, max_value=0.2), min_size=1, max_size=60),
    buffered=st.lists(st.integers(min_value=0, max_value=400), min_size=60, max_size=60),
)
def test_pacer_never_beats_the_line_over_any_window(wakes: list[float], buffered: list[int]) -> None:
    pacer = UartPacer(RATE, fifo=FIFO)
    pacer.start(0.0)
    now = 0.0
    total = 0
    samples = [(0.0, 0)]
    for gap, held in zip(wakes, buffered, strict=False):
        now += gap
        total += pacer.take(now, held)
        samples.append((now, total))
    check_bound(samples, RATE, FIFO, 0.0)


class FakeSource:
    """A source whose bytes the test puts in (the pty's kernel buffer)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self._arrived = trio.Event()

    def feed(self, data: bytes) -> None:
        self.data += data
        self._arrived.set()

    def close(self) -> None:
        self.closed = True
        self._arrived.set()

    def receive_available(self, max_bytes: int) -> bytes:
        out = bytes(self.data[:max_bytes])
        del self.data[:max_bytes]
        return out

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while not self.data and not self.closed:
            self._arrived = trio.Event()
            await self._arrived.wait()
        return self.receive_available(max_bytes or 65536)


class FakeLine(trio.abc.SendStream):
    """Records when each byte left; `stall` makes one send take that long (a relay that was not scheduled)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self.total = 0
        self.received = bytearray()
        self.stall: tuple[int, float] | None = None  # (on the send that brings total past N, for S seconds)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.total += len(data)
        self.received += data
        self.samples.append((trio.current_time(), self.total))
        if self.stall is not None and self.total >= self.stall[0]:
            seconds = self.stall[1]
            self.stall = None
            await trio.sleep(seconds)
        else:
            await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def run_relay(source: FakeSource, line: FakeLine, pacer: UartPacer) -> None:
    await copy_paced(source, line, pacer, chunk=CHUNK)


async def test_relay_sends_exact_counts_per_interval(autojump_clock: trio.testing.MockClock) -> None:
    source, line, pacer = FakeSource(), FakeLine(), UartPacer(RATE, fifo=FIFO)
    payload = bytes(range(256)) * 8
    source.feed(payload)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_relay, source, line, pacer)
        while line.total < len(payload):
            await trio.sleep(0.001)
        source.close()
    assert bytes(line.received) == payload
    # on time, every release is one chunk, at the moment the chunk's last stop bit is due
    sizes = [b - a for (_, a), (_, b) in zip([(start, 0), *line.samples], line.samples, strict=False)]
    assert sizes == [CHUNK] * (len(payload) // CHUNK) + [len(payload) % CHUNK]
    for t, total in line.samples:
        assert total == round((t - start) * RATE)
    assert line.samples[-1][0] - start == pytest.approx(len(payload) / RATE)


class SlowLine(FakeLine):
    """A line whose every write takes `seconds` (a pty write that wakes the reader and is preempted by it)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.total += len(data)
        self.received += data
        self.samples.append((trio.current_time(), self.total))
        await trio.sleep(self.seconds)


async def test_relay_sends_whole_chunks_when_writes_are_slow(autojump_clock: trio.testing.MockClock) -> None:
    # each write takes 1.5 byte times: the bytes that fell due meanwhile wait for their chunk, never a byte or two
    # on their own (each such write wakes the reader for nothing: docs/performance.md, "MO SMS through +CMGS")
    source, line, pacer = FakeSource(), SlowLine(1.5 / RATE), UartPacer(RATE, fifo=FIFO)
    source.feed(bytes(23))
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_relay, source, line, pacer)
        while line.total < 23:
            await trio.sleep(0.001)
        source.close()
    sizes = [b - a for (_, a), (_, b) in zip([(start, 0), *line.samples], line.samples, strict=False)]
    assert sizes == [5, 5, 5, 5, 3]
    # and each at its last byte's time: the slow writes never delay a chunk
    assert [t - start for t, _ in line.samples] == pytest.approx([0.005, 0.010, 0.015, 0.020, 0.023])


async def test_relay_catches_up_after_a_late_wake_up(autojump_clock: trio.testing.MockClock) -> None:
    source, line, pacer = FakeSource(), FakeLine(), UartPacer(RATE, fifo=FIFO)
    line.stall = (100, 0.0303)  # after 100 bytes the relay is away for 30.3 ms
    source.feed(bytes(500))
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_relay, source, line, pacer)
        while line.total < 500:
            await trio.sleep(0.001)
        source.close()
    after = [(t, total) for t, total in line.samples if total > 100]
    # the first send after the stall holds the 30 ms of bytes the wire would have carried: nothing lost
    t_back, total_back = after[0]
    assert t_back - start == pytest.approx(0.1303)
    assert total_back == 130
    for t, total in line.samples:
        assert total == math.floor((t - start) * RATE + 1e-6)
    assert line.samples[-1][0] - start == pytest.approx(0.5)
    assert pacer.lost == 0
    check_bound(line.samples, RATE, FIFO, start)


async def test_relay_after_a_long_stall_bursts_one_fifo_only(autojump_clock: trio.testing.MockClock) -> None:
    source, line, pacer = FakeSource(), FakeLine(), UartPacer(RATE, fifo=FIFO)
    line.stall = (100, 0.5)
    source.feed(bytes(400))
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_relay, source, line, pacer)
        while line.total < 400:
            await trio.sleep(0.001)
        source.close()
    after = [(t, total) for t, total in line.samples if total > 100]
    assert after[0] == (pytest.approx(start + 0.6), 100 + FIFO)
    assert pacer.lost == pytest.approx(0.5 - FIFO / RATE)
    check_bound(line.samples, RATE, FIFO, start)


async def test_relay_late_wake_up_on_a_clock_jump(mock_clock: trio.testing.MockClock) -> None:
    """The relay asleep until its next chunk is due; the clock jumps 20 ms past it (a late wake-up)."""
    source, line, pacer = FakeSource(), FakeLine(), UartPacer(RATE, fifo=FIFO)
    source.feed(bytes(300))
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_relay, source, line, pacer)
        await trio.testing.wait_all_tasks_blocked()
        assert line.total == 0
        mock_clock.jump(0.005)
        await trio.testing.wait_all_tasks_blocked()
        assert line.total == 5
        mock_clock.jump(0.025)  # due at 0.010, woken at 0.030
        await trio.testing.wait_all_tasks_blocked()
        assert line.total == 30
        mock_clock.jump(0.0049)
        await trio.testing.wait_all_tasks_blocked()
        assert line.total == 30  # the next chunk is due at 0.035, not before
        mock_clock.jump(0.0001)
        await trio.testing.wait_all_tasks_blocked()
        assert line.total == 35
        nursery.cancel_scope.cancel()
    assert trio.current_time() - start == pytest.approx(0.035)


async def test_relay_idle_line_restarts_without_a_burst(autojump_clock: trio.testing.MockClock) -> None:
    source, line, pacer = FakeSource(), FakeLine(), UartPacer(RATE, fifo=FIFO)
    source.feed(b"AT\r")
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_relay, source, line, pacer)
        await trio.sleep(2.0)  # the line sits idle
        assert line.samples == [(pytest.approx(start + 0.003), 3)]
        source.feed(b"ATI\r")
        while line.total < 7:
            await trio.sleep(0.0001)
        source.close()
    assert line.samples[-1] == (pytest.approx(start + 2.004), 7)  # 4 byte times after it came, not at once


async def test_relay_ends_when_the_source_ends(autojump_clock: trio.testing.MockClock) -> None:
    source, line, pacer = FakeSource(), FakeLine(), UartPacer(RATE, fifo=FIFO)
    source.feed(b"x" * 20)
    source.close()
    with trio.fail_after(5):
        await run_relay(source, line, pacer)
    assert bytes(line.received) == b"x" * 20


def test_defaults_of_the_paced_pair() -> None:
    assert default_fifo(11520.0) == 4096  # a Linux serial driver's transmit buffer
    assert default_fifo(400000.0) == 8000  # 20 ms at 4 Mbaud
    assert default_chunk(11520.0) == 57
    assert default_chunk(10.0) == 1
    with pytest.raises(ValueError):
        PtyPair.create(baud=115200, fifo=0)


async def test_receive_available_on_a_pty_returns_only_what_is_there() -> None:
    master, path = open_pty()
    slave = os.open(path, os.O_RDWR | os.O_NOCTTY)
    set_raw(slave)
    stream = PtyStream(master, name=path)
    try:
        assert stream.receive_available(16) == b""
        os.write(slave, b"\x00\x11\x13\xff")
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(5):
            got = b""
            while len(got) < 4:  # the kernel moves a pty's bytes in its own time: wait for them
                await trio.lowlevel.wait_readable(master)
                got += stream.receive_available(16)
        assert got == b"\x00\x11\x13\xff"
        with pytest.raises(ValueError):
            stream.receive_available(0)
    finally:
        os.close(slave)
        await stream.aclose()


def test_idle_time_is_counted_between_busy_periods() -> None:
    pacer = UartPacer(RATE, fifo=FIFO)
    pacer.start(0.0)
    assert pacer.take(0.010, 10) == 10
    pacer.start(0.510)
    assert pacer.idle == pytest.approx(0.5)
    assert pacer.lost == 0


def test_a_timeline_counts_the_bytes_of_a_window() -> None:
    from bipsim.link.pty_relay import DirectionStats

    stats = DirectionStats(timeline=[(1.0, 10), (2.0, 25), (3.0, 40)])
    assert stats.bytes_between(1.5, 3.0) == 30
    assert stats.bytes_between(0.0, 1.0) == 10
    assert stats.bytes_between(3.0, 9.0) == 0
    with pytest.raises(ValueError):
        DirectionStats().bytes_between(0.0, 1.0)


async def test_relay_waits_with_the_sleeper_it_is_given(autojump_clock: trio.testing.MockClock) -> None:
    """copy_paced sleeps through its `sleep_until` (the pair's timerfd), until each chunk's due time."""
    source, line, pacer = FakeSource(), FakeLine(), UartPacer(RATE, fifo=FIFO)
    deadlines: list[float] = []

    async def sleeper(deadline: float) -> None:
        deadlines.append(deadline)
        await trio.sleep_until(deadline)

    source.feed(bytes(12))
    source.close()
    start = trio.current_time()
    await copy_paced(source, line, pacer, chunk=CHUNK, sleep_until=sleeper)
    assert bytes(line.received) == bytes(12)
    assert [round(d - start, 6) for d in deadlines] == [0.005, 0.010, 0.012]


async def test_relay_sleeps_on_trio_under_a_mock_clock(mock_clock: trio.testing.MockClock) -> None:
    # a timerfd runs on the real clock: under virtual time the relay must keep trio's sleeps
    assert relay_sleeper() == (trio.sleep_until, None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")
async def test_timerfd_sleep_never_wakes_before_its_deadline() -> None:
    sleep_until, timer = relay_sleeper()
    assert isinstance(timer, TimerFd)
    try:
        assert sleep_until == timer.sleep_until
        for delay in (0.0, -1.0, 1e-6, 2e-4, 1.7e-3):
            deadline = trio.current_time() + delay
            await timer.sleep_until(deadline)
            assert trio.current_time() >= deadline
        # a sleep cancelled while it waits leaves the timer armed for a minute; the next sleep re-arms it and
        # still waits for its own deadline
        with trio.move_on_after(0.002) as scope:
            await timer.sleep_until(trio.current_time() + 60)
        assert scope.cancelled_caught
        deadline = trio.current_time() + 5e-4
        await timer.sleep_until(deadline)
        assert trio.current_time() >= deadline
    finally:
        timer.close()
    assert timer.fd == -1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")
async def test_a_paced_pair_on_timerfd_carries_every_byte() -> None:
    pair = PtyPair.create(baud=115200)
    assert pair.timerfd
    a, b = PtyStream.open(pair.paths[0]), PtyStream.open(pair.paths[1])
    payload = bytes(range(256)) * 2
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pair.run)
            await a.send_all(payload)
            got = b""
            with trio.fail_after(10):
                while len(got) < len(payload):
                    got += await b.receive_some(4096)
            nursery.cancel_scope.cancel()
    finally:
        await a.aclose()
        await b.aclose()
        await pair.aclose()
    assert got == payload
    assert pair.stats[0].pacer is not None and pair.stats[0].pacer.lost == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")
def test_the_relay_thread_sends_whole_chunks_in_order_and_stops_when_told() -> None:
    # the paced pair's worker thread on the real clock (copy_paced_blocking), between two pipes: every byte in
    # order, never a write shorter than a chunk but the one that empties the buffer (a late wake-up only makes a
    # write longer), and it leaves when its stop pipe is written
    src_read, src_write = os.pipe()
    dst_read, dst_write = os.pipe()
    stop_read, stop_write = os.pipe()
    os.set_blocking(src_read, False)
    os.set_blocking(dst_write, False)
    payload = bytes(range(256)) * 4
    stats = DirectionStats(timeline=[])
    pacer = UartPacer(200_000.0, fifo=4096)
    worker = threading.Thread(
        target=copy_paced_blocking,
        args=(src_read, dst_write, pacer),
        kwargs={"chunk": 64, "stop": stop_read, "stats": stats},
    )
    worker.start()
    try:
        os.write(src_write, payload)
        got = bytearray()
        while len(got) < len(payload):
            ready, _, _ = select.select([dst_read], [], [], 10)
            assert ready, "the relay thread stopped sending"
            got += os.read(dst_read, 65536)
        assert bytes(got) == payload
    finally:
        os.write(stop_write, b"x")
        worker.join(10)
        for fd in (src_read, src_write, dst_read, dst_write, stop_read, stop_write):
            os.close(fd)
    assert not worker.is_alive()
    assert stats.timeline is not None
    sizes = [b - a for (_, a), (_, b) in zip([(0.0, 0), *stats.timeline], stats.timeline, strict=False)]
    assert sum(sizes) == len(payload)
    assert all(size >= 64 for size in sizes[:-1])
    assert pacer.lost == 0
