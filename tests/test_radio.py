"""The link models of net/radio.py: the `--radio` grammar, the sans-IO scheduler (delay, serialisation at the rate,
tail drop, seeded loss and jitter without reordering) and the trio adapter on trio's MockClock."""

from __future__ import annotations

import dataclasses
import random

import hypothesis
import hypothesis.strategies
import pytest
import trio
import trio.testing

from bipsim.net.radio import PROFILES, Fate, LinkDirection, LinkProfile, parse_link_spec, radio_link
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer


def test_parse_link_spec_overrides_the_profile() -> None:
    profile = parse_link_spec("gprs,delay=300,loss=0.05")
    assert profile.name == "gprs"
    assert profile.delay == pytest.approx(0.300)
    assert profile.loss == pytest.approx(0.05)
    assert profile.rate == PROFILES["gprs"].rate
    lte = parse_link_spec("LTE, jitter=2 ,rate=512,loss=1%,queue=1000")
    assert (lte.jitter, lte.rate, lte.loss, lte.queue) == (
        pytest.approx(0.002),
        512_000,
        pytest.approx(0.01),
        1000,
    )
    assert parse_link_spec("ideal") == PROFILES["ideal"]
    # describe() is the same grammar, read back to the same profile
    for profile in PROFILES.values():
        assert parse_link_spec(profile.describe()) == profile


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("wimax", "unknown link profile 'wimax'"),
        ("gprs,loss=2", "loss takes a probability"),
        ("gprs,loss=-0.1", "loss takes a probability"),
        ("gprs,delay=fast", "delay takes milliseconds"),
        ("gprs,rate=-1", "rate takes kbit/s"),
        ("gprs,speed=3", "unknown link option 'speed'"),
        ("gprs,delay", "expected KEY=VALUE"),
        ("gprs,delay=1,delay=2", "delay given twice"),
        ("gprs,delay=nan", "delay takes milliseconds"),
    ],
)
def test_parse_link_spec_says_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_link_spec(spec)


def test_every_profile_but_ideal_is_slower_than_the_next() -> None:
    order = ["gprs", "edge", "umts", "lte"]
    for slow, fast in zip(order, order[1:], strict=False):
        assert PROFILES[slow].delay > PROFILES[fast].delay
        assert PROFILES[slow].rate < PROFILES[fast].rate
    assert PROFILES["ideal"] == LinkProfile("ideal")


def test_serialisation_at_the_rate_and_the_delay() -> None:
    # 8000 bit/s: a 100-byte packet takes 0.1 s on the air, then 0.5 s of delay
    direction = LinkDirection(LinkProfile("t", delay=0.5, rate=8000), random.Random(1))
    assert direction.offer(b"a" * 100, now=0.0) is Fate.QUEUED
    assert direction.offer(b"b" * 100, now=0.0) is Fate.QUEUED
    assert direction.next_deadline() == pytest.approx(0.6)
    assert direction.due(0.59) == []
    assert direction.due(0.6) == [b"a" * 100]
    assert direction.next_deadline() == pytest.approx(0.7)  # serialised behind the first
    assert direction.due(1.0) == [b"b" * 100]
    # an idle transmitter starts at once
    direction.offer(b"c" * 100, now=5.0)
    assert direction.next_deadline() == pytest.approx(5.6)


def test_tail_drop_when_the_queue_is_full() -> None:
    direction = LinkDirection(LinkProfile("t", rate=8000, queue=250), random.Random(1))
    fates = [direction.offer(b"x" * 100, now=0.0) for _ in range(3)]
    assert fates == [Fate.QUEUED, Fate.QUEUED, Fate.QUEUE_FULL]
    assert direction.queued_bytes(0.0) == 200
    # 0.1 s later the first packet has left the transmitter: room again
    assert direction.offer(b"x" * 100, now=0.1) is Fate.QUEUED
    assert direction.counters.queue_drops == 1
    assert direction.counters.sent == 4


def test_seeded_loss_is_reproducible_and_near_its_rate() -> None:
    profile = LinkProfile("t", loss=0.2, jitter=0.01, delay=0.05)

    def fates(seed: int) -> list[Fate]:
        direction = LinkDirection(profile, random.Random(seed))
        return [direction.offer(bytes([i % 256]), now=i * 0.001) for i in range(2000)]

    first = fates(7)
    assert first == fates(7)
    assert first != fates(8)
    lost = first.count(Fate.LOST)
    assert 300 < lost < 500  # 20 % of 2000, well inside 5 standard deviations


def test_jitter_never_reorders_unless_the_profile_says_so() -> None:
    def order(reorder: bool) -> list[int]:
        direction = LinkDirection(LinkProfile("t", delay=0.1, jitter=0.09, reorder=reorder), random.Random(3))
        for i in range(200):
            direction.offer(i.to_bytes(2, "big"), now=i * 0.001)
        return [int.from_bytes(p, "big") for p in direction.due(10.0)]

    assert order(False) == list(range(200))
    shuffled = order(True)
    assert sorted(shuffled) == list(range(200))
    assert shuffled != list(range(200))


async def test_the_trio_link_delivers_at_the_delay(autojump_clock: trio.testing.MockClock) -> None:
    tracer = Tracer(keep=True, clock=trio.current_time, origin=0.0)
    a, b, link = radio_link(LinkProfile("t", delay=0.25, rate=80_000), seed=1, tracer=tracer)
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        start = trio.current_time()
        a.send_nowait(b"x" * 1000)  # 0.1 s on the air at 80 kbit/s
        assert await b.receive() == b"x" * 1000
        assert trio.current_time() - start == pytest.approx(0.35)
        b.send_nowait(b"reply")
        assert await a.receive() == b"reply"
        assert link.counters["up"].delivered == 1
        assert link.counters["down"].delivered == 1
        assert link.counters["up"].bytes_delivered == 1000
        nursery.cancel_scope.cancel()


async def test_outage_drops_everything_then_the_link_recovers(autojump_clock: trio.testing.MockClock) -> None:
    tracer = Tracer(keep=True, clock=trio.current_time, origin=0.0)
    a, b, link = radio_link(PROFILES["lte"], seed=5, tracer=tracer)
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        link.set_profile(dataclasses.replace(PROFILES["lte"], loss=1.0))
        for _ in range(10):
            a.send_nowait(b"lost")
        await trio.sleep(5)
        assert link.counters["up"].lost == 10
        assert link.counters["up"].delivered == 0
        lost = [e for e in tracer.events if e.kind == Kind.IP_LOST]
        assert len(lost) == 10
        assert lost[0].field("reason") == "lost" and lost[0].field("direction") == "up"
        assert lost[0].data == b"lost"
        link.set_profile(PROFILES["lte"])
        a.send_nowait(b"back")
        assert await b.receive() == b"back"
        nursery.cancel_scope.cancel()


async def test_same_seed_same_run_through_the_adapter(autojump_clock: trio.testing.MockClock) -> None:
    async def run(seed: int) -> list[tuple[float, bytes]]:
        a, b, link = radio_link(
            LinkProfile("t", delay=0.05, jitter=0.02, loss=0.3, rate=1_000_000), seed=seed
        )
        got: list[tuple[float, bytes]] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run)
            start = trio.current_time()
            for i in range(100):
                a.send_nowait(i.to_bytes(4, "big") * 50)
                await trio.sleep(0.001)
            with trio.move_on_after(2):
                while True:
                    packet = await b.receive()
                    got.append((round(trio.current_time() - start, 9), packet))
            nursery.cancel_scope.cancel()
        return got

    first = await run(11)
    assert 50 < len(first) < 90
    assert first == await run(11)
    assert first != await run(12)


async def test_closing_an_end(autojump_clock: trio.testing.MockClock) -> None:
    a, b, link = radio_link(LinkProfile("t", delay=1.0), seed=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        a.send_nowait(b"in flight")
        b.close()
        with pytest.raises(trio.ClosedResourceError):
            await b.receive()
        with pytest.raises(trio.ClosedResourceError):
            b.send_nowait(b"x")
        with pytest.raises(trio.EndOfChannel):
            await a.receive()
        a.send_nowait(b"to nobody")  # the radio side never blocks, the packet is dropped
        await trio.sleep(2)
        assert link.counters["up"].closed_drops == 2
        assert link.counters["up"].delivered == 0
        nursery.cancel_scope.cancel()


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    sends=hypothesis.strategies.lists(
        hypothesis.strategies.tuples(
            hypothesis.strategies.floats(0, 0.05), hypothesis.strategies.integers(20, 1500)
        ),
        max_size=60,
    ),
    loss=hypothesis.strategies.sampled_from([0.0, 0.1, 0.5, 1.0]),
    rate=hypothesis.strategies.sampled_from([0, 9600, 1_000_000]),
    queue=hypothesis.strategies.sampled_from([0, 1500, 10_000]),
    jitter=hypothesis.strategies.sampled_from([0.0, 0.02]),
    seed=hypothesis.strategies.integers(0, 1000),
)
def test_the_scheduler_keeps_its_promises(
    sends: list[tuple[float, int]], loss: float, rate: int, queue: int, jitter: float, seed: int
) -> None:
    profile = LinkProfile("t", delay=0.03, jitter=jitter, loss=loss, rate=rate, queue=queue)
    direction = LinkDirection(profile, random.Random(seed))
    now = 0.0
    sent_at: dict[bytes, float] = {}
    delivered: list[tuple[float, bytes]] = []
    for index, (gap, size) in enumerate(sends):
        now += gap
        for packet in direction.due(now):
            delivered.append((now, packet))
        packet = index.to_bytes(2, "big") + bytes(size - 2)
        sent_at[packet] = now
        direction.offer(packet, now)
    while (deadline := direction.next_deadline()) is not None:
        delivered.extend((deadline, p) for p in direction.due(deadline))
    counters = direction.counters
    assert counters.sent == len(sends)
    assert counters.delivered == len(delivered)
    assert counters.delivered + counters.lost + counters.queue_drops == counters.sent
    order = [int.from_bytes(p[:2], "big") for _, p in delivered]
    assert order == sorted(order)  # never reordered
    for at, packet in delivered:
        # never earlier than the propagation delay less the jitter allows, plus its own time on the air
        air = len(packet) * 8 / rate if rate else 0.0
        assert at >= sent_at[packet] + air + max(0.0, 0.03 - jitter) - 1e-9
    if loss == 1.0:
        assert delivered == []
    if loss == 0.0 and (rate == 0 or queue == 0):
        assert counters.delivered == counters.sent
