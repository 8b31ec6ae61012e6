"""TcpStream (net/tcp_stream.py): trio's own stream conformance checks over two TcpConnections joined by memory,
with a minimal in-test driver standing for the stack (the TcpDriver shape: connection, failure, now, kick,
wait_changed), on trio's MockClock; and the stream's answers to a reset, a dropped link and cancellation."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from ipaddress import IPv4Address

import pytest
import trio
import trio.testing

from bipsim.net.tcp import TcpConfig, TcpConnection, TcpState
from bipsim.net.tcp_segment import TcpFlags, TcpSegment
from bipsim.net.tcp_stream import TcpStream

A = IPv4Address("198.51.100.2")
B = IPv4Address("203.0.113.10")


class _Driver:
    """What the stack does for one connection, and nothing else: encode what it emits and put the bytes on the
    peer's queue (losing them with probability `loss`), decode and feed what arrives, fire the timer, wake the
    stream."""

    def __init__(self, connection: TcpConnection, loss: float = 0.0, seed: int = 0) -> None:
        self.connection = connection
        self.failure: BaseException | None = None
        self.peer: _Driver | None = None
        self.inbox_send, self.inbox = trio.open_memory_channel[bytes](math.inf)
        self._changed = trio.Event()
        self._scope: trio.CancelScope | None = None
        self.loss = loss
        self.rng = random.Random(seed)
        self.sent: list[TcpSegment] = []
        self.hold = False  # the test holds what this side sends (a link that stopped delivering)
        self.drop: Callable[[TcpSegment], bool] | None = None  # the test loses the segments it picks

    def now(self) -> float:
        return trio.current_time()

    def kick(self) -> None:
        conn = self.connection
        for seg in conn.outgoing():
            self.sent.append(seg)
            if self.peer is None or self.hold or self.rng.random() < self.loss:
                continue
            if self.drop is not None and self.drop(seg):
                continue
            try:
                self.peer.inbox_send.send_nowait(seg.encode(conn.local[0], conn.remote[0]))
            except trio.ClosedResourceError:
                pass
        conn.events()
        if self._scope is not None:
            deadline = conn.next_deadline()
            self._scope.deadline = math.inf if deadline is None else deadline
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    async def run(self) -> None:
        conn = self.connection
        while True:
            deadline = conn.next_deadline()
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self._scope = scope
                raw = await self.inbox.receive()
                conn.receive(TcpSegment.decode(raw, conn.remote[0], conn.local[0]), self.now())
            self._scope = None
            if scope.cancelled_caught:
                conn.on_timer(self.now())
            self.kick()


async def _open_pair(
    nursery: trio.Nursery, *, loss: float = 0.0, seed: int = 0, config: TcpConfig | None = None
) -> tuple[TcpStream, TcpStream, _Driver, _Driver]:
    """Two connections after a handshake done by hand, each under a driver task in `nursery`."""
    now = trio.current_time()
    client = TcpConnection.active(
        (A, 40000), (B, 443), iss=random.Random(seed).getrandbits(32), now=now, config=config
    )
    (syn,) = client.outgoing()
    server = TcpConnection.passive(syn, (B, 443), (A, 40000), iss=12345, now=now, config=config)
    (synack,) = server.outgoing()
    client.receive(synack, now)
    (ack,) = client.outgoing()
    server.receive(ack, now)
    assert client.state is TcpState.ESTABLISHED and server.state is TcpState.ESTABLISHED
    left, right = _Driver(client, loss, seed), _Driver(server, loss, seed + 1)
    left.peer, right.peer = right, left
    nursery.start_soon(left.run)
    nursery.start_soon(right.run)
    return TcpStream(left), TcpStream(right), left, right


async def test_check_half_closeable_stream(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:

        async def maker() -> tuple[TcpStream, TcpStream]:
            s1, s2, _, _ = await _open_pair(nursery)
            return s1, s2

        await trio.testing.check_half_closeable_stream(maker, None)
        nursery.cancel_scope.cancel()


async def test_check_half_closeable_stream_over_a_lossy_link(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        seeds = iter(range(100, 1000))

        async def maker() -> tuple[TcpStream, TcpStream]:
            s1, s2, _, _ = await _open_pair(nursery, loss=0.02, seed=next(seeds))
            return s1, s2

        await trio.testing.check_half_closeable_stream(maker, None)
        nursery.cancel_scope.cancel()


async def test_one_mebibyte_each_way_through_small_buffers(autojump_clock: trio.testing.MockClock) -> None:
    payload = random.Random(3).randbytes(1 << 20)
    config = TcpConfig(send_buffer=8192, receive_buffer=4096)
    async with trio.open_nursery() as nursery:
        s1, s2, d1, _ = await _open_pair(nursery, loss=0.03, seed=9, config=config)

        async def pump(stream: TcpStream, data: bytes) -> None:
            await stream.send_all(data)
            await stream.send_eof()

        async def drain(stream: TcpStream, into: bytearray) -> None:
            while chunk := await stream.receive_some(3000):
                into += chunk

        got1, got2 = bytearray(), bytearray()
        async with trio.open_nursery() as inner:
            inner.start_soon(pump, s1, payload)
            inner.start_soon(pump, s2, payload[::-1])
            inner.start_soon(drain, s1, got1)
            inner.start_soon(drain, s2, got2)
        assert bytes(got2) == payload and bytes(got1) == payload[::-1]
        assert s1.connection.retransmissions + s2.connection.retransmissions > 0  # the loss was real
        await s1.aclose()
        await s2.aclose()
        nursery.cancel_scope.cancel()


async def test_reset_makes_the_stream_broken(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        s1, s2, _, d2 = await _open_pair(nursery)
        got: list[BaseException] = []

        async def reader() -> None:
            try:
                await s1.receive_some()
            except trio.BrokenResourceError as exc:
                got.append(exc)

        async with trio.open_nursery() as inner:
            inner.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            d2.connection.abort(trio.current_time())
            d2.kick()
        assert got and "reset by peer" in str(got[0])
        with pytest.raises(trio.BrokenResourceError):
            await s1.send_all(b"x")
        await s1.aclose()
        nursery.cancel_scope.cancel()


async def test_link_drop_breaks_the_stream_with_the_reason(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        s1, _, d1, _ = await _open_pair(nursery)
        d1.failure = trio.BrokenResourceError("link dropped: PDP context deactivated")
        d1.connection.drop("PDP context deactivated")
        d1.kick()
        with pytest.raises(trio.BrokenResourceError, match="PDP context deactivated"):
            await s1.receive_some()
        with pytest.raises(trio.BrokenResourceError, match="PDP context deactivated"):
            await s1.send_all(b"x")
        nursery.cancel_scope.cancel()


async def test_send_all_waits_for_buffer_space(autojump_clock: trio.testing.MockClock) -> None:
    config = TcpConfig(send_buffer=2000, receive_buffer=2000)
    async with trio.open_nursery() as nursery:
        s1, s2, _, _ = await _open_pair(nursery, config=config)
        done = trio.Event()

        async def writer() -> None:
            await s1.send_all(b"b" * 10000)
            done.set()

        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        assert s1.connection.send_buffered == 2000 and s2.connection.readable == 2000  # both buffers full
        got = bytearray()
        while len(got) < 10000:
            got += await s2.receive_some()
        await done.wait()
        assert bytes(got) == b"b" * 10000
        nursery.cancel_scope.cancel()


async def test_aclose_waits_for_the_fin_to_be_acknowledged(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        s1, s2, d1, d2 = await _open_pair(nursery)
        d2.hold = True  # the peer's ACK of our FIN does not come back yet
        closed = trio.Event()

        async def closer() -> None:
            await s1.aclose()
            closed.set()

        nursery.start_soon(closer)
        await trio.testing.wait_all_tasks_blocked()
        assert not closed.is_set() and s1.connection.state is TcpState.FIN_WAIT_1
        d2.hold = False
        await closed.wait()  # the FIN's retransmission is acknowledged
        assert s1.connection.state is TcpState.FIN_WAIT_2
        assert await s2.receive_some() == b""
        nursery.cancel_scope.cancel()


async def test_cancelled_aclose_sends_rst(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        s1, s2, d1, d2 = await _open_pair(nursery)
        d2.hold = True
        with trio.move_on_after(0.5):
            await s1.aclose()
        assert s1.connection.state is TcpState.CLOSED
        assert any(TcpFlags.RST in seg.flags for seg in d1.sent)
        with pytest.raises(trio.ClosedResourceError):
            await s1.send_all(b"x")
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------------------------
# the same checks over the stack that drives connections in the product (net/stack.py), two stacks joined by memory


async def _stack_pair(nursery: trio.Nursery, seed: int) -> tuple[TcpStream, TcpStream]:
    from bipsim.net.stack import IpStack

    to_server, server_inbox = trio.open_memory_channel[bytes](math.inf)
    to_client, client_inbox = trio.open_memory_channel[bytes](math.inf)
    client = IpStack(A, to_server.send_nowait, rng=random.Random(seed))
    server = IpStack(B, to_client.send_nowait, rng=random.Random(seed + 1))

    async def deliver(inbox: trio.MemoryReceiveChannel[bytes], stack: IpStack) -> None:
        async for packet in inbox:
            stack.receive_packet(packet)

    await nursery.start(client.run)
    await nursery.start(server.run)
    nursery.start_soon(deliver, server_inbox, server)
    nursery.start_soon(deliver, client_inbox, client)
    listener = await server.listen_tcp(443)
    near = await client.open_tcp(B, 443)
    far = await listener.accept()
    return near, far


async def test_check_half_closeable_stream_over_ip_stacks(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        seeds = iter(range(1, 1000, 2))

        async def maker() -> tuple[TcpStream, TcpStream]:
            return await _stack_pair(nursery, next(seeds))

        await trio.testing.check_half_closeable_stream(maker, None)
        nursery.cancel_scope.cancel()
