"""The AP's Wi-Fi as a link model (`bipsim ap --wlan SPEC`, docs/protocols.md "The packet data plane"): the proxy's
relay (embodiment 2) carries each channel's bytes over the AP's own TCP connection to the server, and this puts the
same link model as the CP's radio bearer (net/radio.py: delay, jitter, rate, queue, loss from a seed) between the
relay and that connection.

The relay's connection is a byte stream, so the model works on segments of at most MSS bytes, each one way through a
`LinkDirection` scheduler. A segment the model loses is offered again after a retransmission timeout (RETRANSMIT:
the 200 ms floor of Linux's TCP, RFC 6298 allows it), as TCP under the relay would resend it: on Wi-Fi, loss shows
as delay and as lower goodput, never as missing bytes. Each resend is an app.event `wlan_resend` in the trace.
"""

from __future__ import annotations

import math
import random

import trio

from bipsim.net.radio import Fate, LinkDirection, LinkProfile
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer

MSS = 1460  # bytes of one segment on the modelled link (an Ethernet-sized IPv4/TCP packet's payload)
RETRANSMIT = 0.2  # seconds before a lost segment is sent again


class WlanStream(trio.abc.HalfCloseableStream):
    """`inner` (the AP's connection to the server) seen through the Wi-Fi link model. Its pumps run in
    WlanLink.carry; send_all returns once the bytes are on the modelled link (paced by its rate)."""

    def __init__(self, inner: trio.abc.HalfCloseableStream, link: WlanLink, number: int) -> None:
        self.inner = inner
        self.link = link
        seed = f"{link.seed}/wlan/{number}"
        self.up = LinkDirection(link.profile, random.Random(seed + "/up"))
        self.down = LinkDirection(link.profile, random.Random(seed + "/down"))
        self._up_changed = trio.Event()
        self._down_changed = trio.Event()
        self._down_send, self._down_receive = trio.open_memory_channel[bytes](math.inf)
        self._pending = b""
        self._down_eof = False
        self._up_idle = trio.Event()
        self._up_idle.set()
        self.closed = trio.Event()
        self.broken: str | None = None  # the connection to the server failed under the model

    # --- the Stream ----------------------------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed.is_set():
            raise trio.ClosedResourceError("the Wi-Fi stream is closed")
        if self.broken is not None:
            raise trio.BrokenResourceError(f"the server's connection failed: {self.broken}")
        view = bytes(data)
        for at in range(0, len(view), MSS):
            await self._offer(self.up, view[at : at + MSS], "up")
            self._up_idle = trio.Event()
            self._up_changed.set()
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await self._up_idle.wait()  # what was sent arrives before the FIN
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._pending:
            try:
                self._pending = await self._down_receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return b""
        size = len(self._pending) if max_bytes is None else max_bytes
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    async def aclose(self) -> None:
        self.closed.set()
        await self.inner.aclose()

    # --- the model -----------------------------------------------------------------------------------------------

    async def _offer(self, direction: LinkDirection, segment: bytes, name: str) -> None:
        """Puts `segment` on the link; a lost one is sent again after RETRANSMIT, a full queue waits for room."""
        while True:
            fate = direction.offer(segment, trio.current_time())
            if fate is Fate.QUEUED:
                return
            if fate is Fate.LOST:
                self.link.tracer.emit(
                    Actor.AP,
                    Actor.NET,
                    Layer.APP,
                    f"Wi-Fi lost a {len(segment)}-byte segment ({name}): sent again in {RETRANSMIT:g} s",
                    kind=Kind.APP_EVENT,
                    fields={"event": "wlan_resend", "direction": name, "length": len(segment)},
                )
                await trio.sleep(RETRANSMIT)
            else:  # tail drop: wait for the transmitter to make room
                rate = direction.profile.rate or 1_000_000
                await trio.sleep(len(segment) * 8 / rate)

    async def _deliver_up(self) -> None:
        while True:
            deadline = self.up.next_deadline()
            if deadline is None:
                self._up_idle.set()
                self._up_changed = trio.Event()
                await self._up_changed.wait()
                continue
            await trio.sleep_until(deadline)
            for segment in self.up.due(trio.current_time()):
                try:
                    await self.inner.send_all(segment)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    # the server's side went: the relay hears it as the end of the stream, never as a crash
                    self.broken = repr(exc)
                    self._down_eof = True
                    self.down.discard()
                    self._down_changed.set()
                    self._up_idle.set()
                    return

    async def _read_down(self) -> None:
        while True:
            try:
                data = await self.inner.receive_some(MSS)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            if not data:
                self._down_eof = True
                self._down_changed.set()
                return
            await self._offer(self.down, bytes(data), "down")
            self._down_changed.set()

    async def _deliver_down(self) -> None:
        while True:
            deadline = self.down.next_deadline()
            if deadline is None:
                if self._down_eof:
                    await self._down_send.aclose()
                    return
                self._down_changed = trio.Event()
                await self._down_changed.wait()
                continue
            await trio.sleep_until(deadline)
            for segment in self.down.due(trio.current_time()):
                self._down_send.send_nowait(segment)


class WlanLink:
    """The Wi-Fi link model of one AP: `carry` wraps each relay connection in a WlanStream with `profile`."""

    def __init__(self, profile: LinkProfile, seed: int = 0, *, tracer: Tracer = NULL_TRACER) -> None:
        self.profile = profile
        self.seed = seed
        self.tracer = tracer
        self.count = 0

    async def carry(
        self,
        inner: trio.abc.HalfCloseableStream,
        *,
        task_status: trio.TaskStatus[WlanStream] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Runs the model for `inner` until the stream is closed; started() hands out the WlanStream."""
        self.count += 1
        stream = WlanStream(inner, self, self.count)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream._deliver_up)
            nursery.start_soon(stream._read_down)
            nursery.start_soon(stream._deliver_down)
            task_status.started(stream)
            await stream.closed.wait()
            nursery.cancel_scope.cancel()
