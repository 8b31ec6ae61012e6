"""TIMER MANAGEMENT and TIMER EXPIRATION carried out by the CP (cp/toolkit_timers.py, TS 102 223 sections 6.4.21,
7.5, 8.37, 8.38): the sans-IO timers, and the BIP service running them on trio's (mock) clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from bipsim.cp.bip_gateway import BipGateway, SendTerminalResponse, SendTimerExpiration
from bipsim.cp.bip_service import BipService
from bipsim.cp.card_driver import CardDriver
from bipsim.cp.modem import simulated_card
from bipsim.cp.toolkit_timers import (
    BUSY_RETRIES,
    SW_BUSY,
    TimerChange,
    ToolkitTimers,
    seconds_of,
    timer_value,
)
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from bipsim.uicc.cat import CommandType, GeneralResult, ProactiveCommand, Tag, decode_envelope, obj


def timer_command(action: int, timer: int = 1, value: bytes | None = None) -> ProactiveCommand:
    objects = [obj(Tag.TIMER_IDENTIFIER, bytes((timer,)))]
    if value is not None:
        objects.append(obj(Tag.TIMER_VALUE, value))
    return ProactiveCommand.build(CommandType.TIMER_MANAGEMENT, objects, qualifier=action)


def test_timer_values_are_swapped_bcd() -> None:
    assert timer_value(5) == bytes.fromhex("000050")  # 0 h, 0 min, 05 s
    assert timer_value(3723) == bytes.fromhex("102030")  # 1 h 02 min 03 s
    assert seconds_of(bytes.fromhex("102030")) == 3723
    assert seconds_of(bytes.fromhex("000070")) == 7
    for bad in ("0000", "00006A", "000006"):  # too short, not BCD, 60 seconds
        with pytest.raises(ValueError):
            seconds_of(bytes.fromhex(bad))


def test_start_get_deactivate_and_expiry() -> None:
    timers = ToolkitTimers()
    general, _, objects, change = timers.on_command(timer_command(0, 2, timer_value(30)), now=100.0)
    assert general == GeneralResult.OK and change == TimerChange(2, 30, 1)
    assert [(o.tag, o.value) for o in objects] == [(Tag.TIMER_IDENTIFIER, b"\x02")]
    general, _, objects, change = timers.on_command(timer_command(2, 2), now=110.0)
    assert change is None and objects[1].value == timer_value(20)
    general, _, objects, change = timers.on_command(timer_command(1, 2), now=125.0)
    assert change == TimerChange(2, None, 1) and objects[1].value == timer_value(5)
    assert timers.expired(2, 1) is None  # deactivated: no envelope
    general, *_ = timers.on_command(timer_command(2, 2), now=126.0)
    assert general == GeneralResult.ACTION_CONTRADICTS_TIMER
    timers.on_command(timer_command(0, 3, timer_value(1)), now=0.0)
    timers.on_command(
        timer_command(0, 3, timer_value(9)), now=0.5
    )  # started again: the first expiry is stale
    assert timers.expired(3, 2) is None
    envelope = timers.expired(3, 3)
    assert envelope is not None and envelope.encode()[:1] == b"\xd7"
    decoded = decode_envelope(envelope.encode())
    assert decoded.get(Tag.TIMER_IDENTIFIER).value == b"\x03"  # type: ignore[union-attr]
    assert decoded.get(Tag.TIMER_VALUE).value == timer_value(9)  # type: ignore[union-attr]
    assert timers.on_command(timer_command(0, 9, timer_value(1)), 0)[0] == GeneralResult.DATA_NOT_UNDERSTOOD
    assert timers.on_command(timer_command(0, 1), 0)[0] == GeneralResult.REQUIRED_VALUES_MISSING


def test_gateway_answers_and_expires() -> None:
    gateway = BipGateway()
    gateway.clock = lambda: 50.0
    tr, change = gateway.on_command(timer_command(0, 1, timer_value(2)))
    assert isinstance(tr, SendTerminalResponse) and tr.response.result == (GeneralResult.OK, b"")
    assert isinstance(change, TimerChange) and change.seconds == 2
    (expiry,) = gateway.on_timer_expired(1, change.generation)
    assert isinstance(expiry, SendTimerExpiration) and expiry.timer == 1
    assert gateway.on_timer_expired(1, change.generation) == []


async def test_the_service_sends_timer_expiration_on_time(autojump_clock: trio.testing.MockClock) -> None:
    tracer = Tracer(keep=True)
    card, _ = simulated_card("usat-menu", None, tracer)
    service = BipService(CardDriver(card, tracer=tracer), None, tracer=tracer)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        start = trio.current_time()
        await service._apply(service.gateway.on_command(timer_command(0, 4, timer_value(90))))
        with trio.fail_after(200):
            while not [e for e in tracer.events if e.field("envelope") == "timer_expiration"]:
                await trio.sleep(1)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert 90 <= elapsed <= 92  # the mock clock: the envelope left when the timer ran out, not before
    (event,) = [
        e for e in tracer.events if e.kind == Kind.CAT_ENVELOPE and e.field("envelope") == "timer_expiration"
    ]
    assert event.data[5] == 0xD7


def test_a_busy_card_gets_the_expiry_again_a_bounded_number_of_times() -> None:
    timers = ToolkitTimers()
    assert timers.expiry_answered(1, 0x9000) is None  # taken at once
    assert [timers.expiry_answered(1, SW_BUSY) for _ in range(BUSY_RETRIES)] == list(
        range(1, BUSY_RETRIES + 1)
    )
    assert timers.expiry_answered(1, SW_BUSY) is None  # given up
    assert timers.expiry_answered(1, SW_BUSY) == 1  # a later expiry starts counting again
    assert timers.expiry_answered(1, 0x9000) is None and timers.busy_refusals == {}


class BusyForTimers:
    """The simulated card, but its toolkit answers the first `refusals` TIMER EXPIRATION envelopes 93 00."""

    def __init__(self, card: object, refusals: int) -> None:
        self.card = card
        self.refusals = refusals

    def __getattr__(self, name: str) -> object:
        return getattr(self.card, name)

    async def transmit(self, command: bytes) -> bytes:
        if command[1] == 0xC2 and command[5] == 0xD7 and self.refusals:
            self.refusals -= 1
            await trio.lowlevel.checkpoint()
            return b"\x93\x00"
        return await self.card.transmit(command)  # type: ignore[attr-defined, no-any-return]


async def expiries(refusals: int) -> tuple[list[object], list[object]]:
    tracer = Tracer(keep=True)
    card, _ = simulated_card("usat-menu", None, tracer)
    busy = BusyForTimers(card, refusals)
    service = BipService(CardDriver(busy, tracer=tracer), None, tracer=tracer)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await service._apply(service.gateway.on_command(timer_command(0, 4, timer_value(5))))
        with trio.fail_after(200):
            while not [
                e
                for e in tracer.events
                if e.field("event") in ("timer_expiration_delivered", "timer_expiration_given_up")
            ]:
                await trio.sleep(1)
        nursery.cancel_scope.cancel()
    sent = [
        e for e in tracer.events if e.kind == Kind.CAT_ENVELOPE and e.field("envelope") == "timer_expiration"
    ]
    told = [e for e in tracer.events if str(e.field("event") or "").startswith("timer_expiration_")]
    return sent, told


async def test_the_service_offers_a_refused_expiry_again(autojump_clock: trio.testing.MockClock) -> None:
    sent, told = await expiries(2)
    assert len(sent) == 3  # refused twice busy, taken the third time
    assert [e.field("event") for e in told] == [  # type: ignore[attr-defined]
        "timer_expiration_retry",
        "timer_expiration_retry",
        "timer_expiration_delivered",
    ]
    sent, told = await expiries(BUSY_RETRIES + 5)
    assert len(sent) == BUSY_RETRIES + 1  # the first offer and the retries, then it gives up
    assert told[-1].field("event") == "timer_expiration_given_up"  # type: ignore[attr-defined]
