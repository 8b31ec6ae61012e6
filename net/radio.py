"""Link models for the packet plane (docs/protocols.md, "Radio and Wi-Fi link models"): the radio bearer of a PDP
context between the CP's stack and the packet gateway (`--radio`), and the AP's Wi-Fi (`--wlan`).

A link carries whole IPv4 packets in two directions. Each direction is a sans-IO scheduler (`LinkDirection`):
a packet offered at time `now` is serialised at the profile's `rate` behind the packets already queued (tail drop
when the queue's bytes would pass `queue`), lost with probability `loss`, and delivered `delay` plus a jitter
sample later; loss and jitter come from `random.Random(seed)`, so a run with the same seed and the same packets is
the same run. Jitter never reorders packets unless the profile says `reorder`. `RadioLink` is the thin trio
adapter: one task per direction sleeps until the next delivery and hands packets to the receiving `LinkEnd`.

The profiles' figures come from public references cited beside each one; a profile is a model of a typical
loaded cell, not a promise about any network.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field, replace
from enum import Enum

import trio

from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer

__all__ = [
    "PROFILES",
    "Delivery",
    "Fate",
    "LinkCounters",
    "LinkDirection",
    "LinkEnd",
    "LinkProfile",
    "RadioLink",
    "parse_link_spec",
    "radio_link",
]


@dataclass(frozen=True)
class LinkProfile:
    """One direction's figures (both directions of a link use the same profile).

    `delay` and `jitter` in seconds (one way), `loss` a probability 0..1 (1.0 is an outage), `rate` in bit/s
    (0: no serialisation delay), `queue` in bytes waiting to be serialised before tail drop (0: unbounded),
    `reorder` lets jitter deliver a later packet before an earlier one."""

    name: str
    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    rate: int = 0
    queue: int = 0
    reorder: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.delay) and self.delay >= 0):
            raise ValueError(f"delay must be a non-negative number of seconds, not {self.delay}")
        if not (math.isfinite(self.jitter) and self.jitter >= 0):
            raise ValueError(f"jitter must be a non-negative number of seconds, not {self.jitter}")
        if not (0.0 <= self.loss <= 1.0):
            raise ValueError(f"loss must be a probability from 0 to 1, not {self.loss}")
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0 bit/s (0: unlimited), not {self.rate}")
        if self.queue < 0:
            raise ValueError(f"queue must be >= 0 bytes (0: unbounded), not {self.queue}")

    def describe(self) -> str:
        """The profile in the `--radio` grammar (milliseconds, kbit/s), as parse_link_spec reads it back."""
        parts = [
            self.name,
            f"delay={self.delay * 1000:g}",
            f"jitter={self.jitter * 1000:g}",
            f"loss={self.loss:g}",
            f"rate={self.rate / 1000:g}",
            f"queue={self.queue}",
        ]
        return ",".join(parts)


# Figures, one way. Cellular links run acknowledged-mode RLC (3GPP TS 44.060 for GPRS/EDGE, TS 25.322 for UMTS,
# TS 36.322 for LTE), which retransmits radio-block errors below IP: what IP sees is extra delay and jitter and
# a residual loss of about 1e-3 or less (the SDU error ratios of 3GPP TS 23.107 table 4 for interactive traffic),
# so the profiles keep loss at 0 and leave loss to `loss=` and the scenarios.
PROFILES: dict[str, LinkProfile] = {
    # no delay, no loss, no rate limit: the protocol alone
    "ideal": LinkProfile("ideal"),
    # GPRS: CS-2 at 13.4 kbit/s per timeslot, 3-4 downlink slots (3GPP TS 45.003 / TS 43.064), about 40 kbit/s;
    # RTTs of 600 ms to over 1 s measured by Chakravorty, Cartwright and Pratt, "Practical experience with TCP
    # over GPRS", IEEE Globecom 2002; the deep per-user buffers they report (tens of kB) are the queue
    "gprs": LinkProfile("gprs", delay=0.300, jitter=0.100, rate=40_000, queue=32_768),
    # EDGE: MCS-9 at 59.2 kbit/s per slot, 4 slots (3GPP TS 43.064) is 236.8 kbit/s peak, about 200 kbit/s in
    # use; round trips of some hundreds of milliseconds on GPRS/EDGE in the network-wide TCP measurements of
    # Ricciato et al., "Network-wide measurements of TCP RTT in 3G", TMA 2009 (taken here as 300 ms)
    "edge": LinkProfile("edge", delay=0.150, jitter=0.050, rate=200_000, queue=65_536),
    # UMTS Release 99: the 384 kbit/s bearer (3GPP TS 25.306 UE categories, TS 22.105 bearer services); round
    # trips of about 150 ms on R99 bearers in Serrano et al., "Latency in broad-band mobile networks" (Vodafone,
    # IEEE VTC 2009); Jiang et al., "Tackling bufferbloat in 3G/4G networks", IMC 2012, report the large
    # base-station buffers taken as the queue
    "umts": LinkProfile("umts", delay=0.075, jitter=0.020, rate=384_000, queue=131_072),
    # LTE: median RTT about 70 ms (so 35 ms one way with the core network) and median downlink about 13 Mbit/s in
    # Huang et al., "A close examination of performance and power characteristics of 4G LTE networks",
    # MobiSys 2012 (its median uplink is about half that: 10 Mbit/s is taken both ways); 3GPP TR 36.913 targets
    # 5 ms for the radio part alone
    "lte": LinkProfile("lte", delay=0.035, jitter=0.005, rate=10_000_000, queue=524_288),
}


def parse_link_spec(spec: str) -> LinkProfile:
    """`PROFILE[,delay=MS][,jitter=MS][,loss=P][,rate=KBIT][,queue=BYTES]` as `--radio` and `--wlan` take it.

    delay and jitter in milliseconds, loss a probability 0..1 (or a percentage such as `5%`), rate in kbit/s
    (0: unlimited), queue in bytes (0: unbounded). Raises ValueError with a message for the command line."""
    parts = [part.strip() for part in spec.split(",")]
    name = parts[0].lower()
    if name not in PROFILES:
        raise ValueError(f"unknown link profile {parts[0]!r}: choose one of {', '.join(PROFILES)}")
    profile = PROFILES[name]
    seen: set[str] = set()
    for part in parts[1:]:
        key, sep, text = part.partition("=")
        key = key.strip().lower()
        text = text.strip()
        if not sep or not key or not text:
            raise ValueError(f"{part!r} in {spec!r}: expected KEY=VALUE (delay, jitter, loss, rate, queue)")
        if key in seen:
            raise ValueError(f"{key} given twice in {spec!r}")
        seen.add(key)
        try:
            if key == "loss":
                value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
                if not 0.0 <= value <= 1.0:
                    raise ValueError
                profile = replace(profile, loss=value)
            elif key in ("delay", "jitter"):
                ms = float(text)
                if not (math.isfinite(ms) and ms >= 0):
                    raise ValueError
                profile = (
                    replace(profile, delay=ms / 1000)
                    if key == "delay"
                    else replace(profile, jitter=ms / 1000)
                )
            elif key == "rate":
                kbit = float(text)
                if not (math.isfinite(kbit) and kbit >= 0):
                    raise ValueError
                profile = replace(profile, rate=round(kbit * 1000))
            elif key == "queue":
                profile = replace(profile, queue=int(text))
                if profile.queue < 0:
                    raise ValueError
            else:
                raise ValueError(
                    f"unknown link option {key!r} in {spec!r}: use delay, jitter, loss, rate, queue"
                )
        except ValueError as exc:
            if str(exc).startswith("unknown link option"):
                raise
            units = {
                "loss": "a probability from 0 to 1 or a percentage (0.05, 5%)",
                "delay": "milliseconds >= 0",
                "jitter": "milliseconds >= 0",
                "rate": "kbit/s >= 0 (0: unlimited)",
                "queue": "bytes >= 0 (0: unbounded)",
            }
            raise ValueError(f"{key}={text!r} in {spec!r}: {key} takes {units[key]}") from None
    return profile


class Fate(Enum):
    """What the scheduler did with an offered packet."""

    QUEUED = "queued"
    LOST = "lost"  # the loss draw (the radio lost it; it still took its time on the air)
    QUEUE_FULL = "queue_full"  # tail drop
    CLOSED = "closed"  # the receiving end is gone


@dataclass
class LinkCounters:
    """One direction's counts: packets offered, delivered, and dropped by reason; bytes delivered."""

    sent: int = 0
    delivered: int = 0
    lost: int = 0
    queue_drops: int = 0
    closed_drops: int = 0
    bytes_delivered: int = 0

    @property
    def dropped(self) -> int:
        return self.lost + self.queue_drops + self.closed_drops


@dataclass(order=True)
class Delivery:
    """A packet due at `at` (order by time, then by offer order)."""

    at: float
    order: int
    packet: bytes = field(compare=False)


class LinkDirection:
    """The sans-IO scheduler of one direction: `offer` packets with a time, `due` packets out at their time.

    The transmitter serialises one packet after another at `rate`; the bytes whose serialisation has not finished
    are the queue. A packet that would make the queue pass `queue` bytes is dropped at the tail. Then one draw
    decides loss and one the jitter (in that order, always both, so the random stream depends only on the packets
    offered); delivery is at the end of serialisation plus `delay` plus a jitter uniform in [-jitter, +jitter]
    (never before the end of serialisation), and no earlier than the previous delivery unless `reorder`."""

    def __init__(self, profile: LinkProfile, rng: random.Random) -> None:
        self.profile = profile
        self.rng = rng
        self.counters = LinkCounters()
        self._tx_free = -math.inf  # when the transmitter finishes the last queued packet
        self._in_tx: deque[tuple[float, int]] = deque()  # (end of serialisation, size) of queued packets
        self._queued_bytes = 0
        self._heap: list[Delivery] = []
        self._last_delivery = -math.inf
        self._order = 0

    def set_profile(self, profile: LinkProfile) -> None:
        """New figures for packets offered from now on (packets in flight keep theirs)."""
        self.profile = profile

    def queued_bytes(self, now: float) -> int:
        """Bytes still waiting for (or in) serialisation at `now`."""
        self._drain_tx(now)
        return self._queued_bytes

    def _drain_tx(self, now: float) -> None:
        while self._in_tx and self._in_tx[0][0] <= now:
            self._queued_bytes -= self._in_tx.popleft()[1]

    def offer(self, packet: bytes, now: float) -> Fate:
        """Takes one packet sent at `now`; says whether it was queued for delivery or dropped (and why)."""
        profile = self.profile
        self.counters.sent += 1
        size = len(packet)
        if profile.rate:
            self._drain_tx(now)
            if profile.queue and self._queued_bytes + size > profile.queue:
                self.counters.queue_drops += 1
                return Fate.QUEUE_FULL
            start = max(now, self._tx_free)
            sent_at = start + size * 8 / profile.rate
            self._tx_free = sent_at
            self._in_tx.append((sent_at, size))
            self._queued_bytes += size
        else:
            sent_at = now
        lost = self.rng.random() < profile.loss
        offset = self.rng.uniform(-profile.jitter, profile.jitter) if profile.jitter else 0.0
        if lost:
            self.counters.lost += 1
            return Fate.LOST
        at = sent_at + max(0.0, profile.delay + offset)
        if not profile.reorder:
            at = max(at, self._last_delivery)
            self._last_delivery = at
        self._order += 1
        heapq.heappush(self._heap, Delivery(at, self._order, packet))
        return Fate.QUEUED

    def next_deadline(self) -> float | None:
        """When the next packet is due (None when nothing is in flight)."""
        return self._heap[0].at if self._heap else None

    def due(self, now: float) -> list[bytes]:
        """The packets due by `now`, in delivery order (drains them)."""
        out: list[bytes] = []
        while self._heap and self._heap[0].at <= now:
            packet = heapq.heappop(self._heap).packet
            out.append(packet)
        self.counters.delivered += len(out)
        self.counters.bytes_delivered += sum(map(len, out))
        return out

    def discard(self) -> int:
        """Drops every packet in flight (the receiving end is gone); returns how many."""
        count = len(self._heap)
        self._heap.clear()
        self.counters.closed_drops += count
        return count

    @property
    def in_flight(self) -> int:
        return len(self._heap)


class LinkEnd:
    """One end of a link: `send_nowait` puts a packet on the air (never blocks), `receive` takes the next packet
    the other end sent (in delivery order). `close` ends this end: its `receive` raises trio.ClosedResourceError,
    packets sent toward it are dropped, and the other end's `receive` raises trio.EndOfChannel."""

    def __init__(self, link: RadioLink, name: str, outgoing: LinkDirection) -> None:
        self._link = link
        self.name = name
        self._outgoing = outgoing
        self._send, self._recv = trio.open_memory_channel[bytes](math.inf)
        self.closed = False
        self._peer: LinkEnd | None = None

    def send_nowait(self, packet: bytes) -> None:
        """Offers `packet` to the link now (queued, paced, perhaps dropped); raises trio.ClosedResourceError when
        this end is closed."""
        if self.closed:
            raise trio.ClosedResourceError(f"link end {self.name} is closed")
        self._link._offer(self, packet)

    async def receive(self) -> bytes:
        """The next packet delivered to this end; trio.EndOfChannel when the other end closed."""
        if self.closed:
            raise trio.ClosedResourceError(f"link end {self.name} is closed")
        try:
            return await self._recv.receive()
        except trio.ClosedResourceError:
            if self.closed:
                raise
            raise trio.EndOfChannel from None

    def _deliver(self, packet: bytes) -> bool:
        try:
            self._send.send_nowait(packet)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    def close(self) -> None:
        """Ends this end (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._recv.close()
        self._link._end_closed(self)


class RadioLink:
    """The trio adapter over two LinkDirections: `run` delivers packets at their times; `set_profile` changes the
    figures at run time (an outage is `loss=1.0`); `counters` per direction ("up" from end a to end b, "down"
    back)."""

    def __init__(
        self,
        profile: LinkProfile,
        seed: int,
        *,
        tracer: Tracer = NULL_TRACER,
        ends: tuple[Actor, Actor] = (Actor.CP, Actor.PGW),
    ) -> None:
        self.profile = profile
        self.seed = seed
        self.tracer = tracer
        self.actors = ends
        # one generator per direction, both from the seed: what one direction draws never shifts the other's
        self.up = LinkDirection(profile, random.Random(f"{seed}/up"))
        self.down = LinkDirection(profile, random.Random(f"{seed}/down"))
        self.a = LinkEnd(self, "a", self.up)
        self.b = LinkEnd(self, "b", self.down)
        self.a._peer, self.b._peer = self.b, self.a
        self._wake = {id(self.up): trio.Event(), id(self.down): trio.Event()}
        self._closed = False

    @property
    def counters(self) -> dict[str, LinkCounters]:
        return {"up": self.up.counters, "down": self.down.counters}

    def set_profile(self, profile: LinkProfile) -> None:
        """New figures for both directions, for packets sent from now on."""
        self.profile = profile
        self.up.set_profile(profile)
        self.down.set_profile(profile)
        self.tracer.emit(
            Actor.NET,
            Actor.NET,
            Layer.APP,
            f"link profile {profile.describe()}",
            kind=Kind.APP_EVENT,
            fields={"event": "link_profile", "profile": profile.describe(), "loss": profile.loss},
        )

    def _offer(self, end: LinkEnd, packet: bytes) -> None:
        direction = end._outgoing
        peer = end._peer
        assert peer is not None
        if peer.closed:
            direction.counters.sent += 1
            direction.counters.closed_drops += 1
            fate = Fate.CLOSED
        else:
            fate = direction.offer(packet, trio.current_time())
        if fate is Fate.QUEUED:
            self._wake[id(direction)].set()
            return
        src, dst = self.actors if end is self.a else self.actors[::-1]
        self.tracer.emit(
            src,
            dst,
            Layer.IP,
            f"link dropped a {len(packet)}-byte packet ({fate.value})",
            packet,
            kind=Kind.IP_LOST,
            fields={
                "direction": "up" if end is self.a else "down",
                "reason": fate.value,
                "length": len(packet),
            },
        )

    def _end_closed(self, end: LinkEnd) -> None:
        incoming = self.down if end is self.a else self.up
        incoming.discard()
        peer = end._peer
        assert peer is not None
        # the other end hears that the link is gone once it has taken what it already received
        peer._send.close()
        for event in self._wake.values():
            event.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Delivers both directions until both ends are closed (or the caller cancels)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, self.up, self.b)
            nursery.start_soon(self._pump, self.down, self.a)
            task_status.started()

    async def _pump(self, direction: LinkDirection, to: LinkEnd) -> None:
        key = id(direction)
        while not (self.a.closed and self.b.closed):
            deadline = direction.next_deadline()
            now = trio.current_time()
            if deadline is not None and deadline <= now:
                for packet in direction.due(now):
                    if not to._deliver(packet):
                        direction.counters.closed_drops += 1
                        direction.counters.delivered -= 1
                        direction.counters.bytes_delivered -= len(packet)
                continue
            self._wake[key] = trio.Event()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._wake[key].wait()


def radio_link(
    profile: LinkProfile,
    seed: int,
    *,
    tracer: Tracer = NULL_TRACER,
    ends: tuple[Actor, Actor] = (Actor.CP, Actor.PGW),
) -> tuple[LinkEnd, LinkEnd, RadioLink]:
    """A link with `profile` in both directions: (end a, end b, the link to run). `ends` names the actors of a and
    b in the trace of dropped packets (the CP and the PGW for a radio bearer, the AP and the network for Wi-Fi)."""
    link = RadioLink(profile, seed, tracer=tracer, ends=ends)
    return link.a, link.b, link
