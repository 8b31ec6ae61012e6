"""The lean APDU round trip (cp/card_driver.py over uicc/sim_transport.py, uicc/bip_engine.py): a RECEIVE DATA
round, FETCH and TERMINAL RESPONSE, is one schedule point per APDU when nobody else holds the card, and the engine
encodes its proactive command once however often the card asks its length."""

from __future__ import annotations

from typing import Any

import trio
import trio.lowlevel
import trio.testing

from bipsim.cp.card_driver import CardDriver
from bipsim.uicc.bip_engine import BipConfig, BipEngine
from bipsim.uicc.card import SimCard
from bipsim.uicc.cat import (
    CommandType,
    DeviceId,
    Envelope,
    Event,
    GeneralResult,
    ProactiveCommand,
    Tag,
    TerminalResponse,
    buffer_size_object,
    channel_data_length_object,
    channel_status_object,
    obj,
)
from bipsim.uicc.profile import load_profile
from bipsim.uicc.sim_transport import SimulatedCard
from bipsim.uicc.test_clients import RequestResponseClient


class TaskSteps(trio.abc.Instrument):
    """Counts the scheduler's steps of one task (each is one schedule point it went through)."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


def answer(command: ProactiveCommand, data: bytes = b"", left: int = 0) -> TerminalResponse:
    """What a terminal answers (no gateway here): open with a 1400-byte buffer, data with what is left."""
    objects = []
    if command.type == CommandType.OPEN_CHANNEL:
        objects = [
            channel_status_object(1, False),
            obj(Tag.BEARER_DESCRIPTION, b"\x03"),
            buffer_size_object(1400),
        ]
    elif command.type == CommandType.SEND_DATA:
        objects = [channel_data_length_object(0xFF)]
    elif command.type == CommandType.RECEIVE_DATA:
        objects = [obj(Tag.CHANNEL_DATA, data), channel_data_length_object(left)]
    return TerminalResponse.build(command, GeneralResult.OK, b"", objects)


async def test_a_receive_data_round_is_one_schedule_point_per_apdu() -> None:
    client = RequestResponseClient(b"GET", 10_000)
    engine = BipEngine(BipConfig(), client)
    driver = CardDriver(SimulatedCard(SimCard(load_profile(None), toolkit=engine)))
    await driver.start()
    command: Any = None
    for expected in (CommandType.SET_UP_EVENT_LIST, CommandType.OPEN_CHANNEL, CommandType.SEND_DATA):
        command, _ = await driver.fetch()
        assert command is not None and command.type == expected
        await driver.terminal_response(answer(command))
        if expected == CommandType.OPEN_CHANNEL:
            up = Envelope.event_download(
                Event.CHANNEL_STATUS, DeviceId.TERMINAL, [channel_status_object(1, True)]
            )
            await driver.envelope(up, "link up")
    available = Envelope.event_download(
        Event.DATA_AVAILABLE,
        DeviceId.TERMINAL,
        [channel_status_object(1, True), channel_data_length_object(0xFF)],
    )
    await driver.envelope(available, "data available")
    counter = TaskSteps(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(counter)
    for _ in range(3):  # three rounds of RECEIVE DATA, each FETCH + TERMINAL RESPONSE
        command, _ = await driver.fetch()
        assert command is not None and command.type == CommandType.RECEIVE_DATA
        await driver.terminal_response(answer(command, bytes(237), 0xFF))
    trio.lowlevel.remove_instrument(counter)
    assert len(client.received) == 3 * 237
    assert counter.steps == 3 * 2  # one per APDU (trio.Lock's acquire and the transmit were two)


async def test_a_busy_card_lock_is_waited_for_in_order() -> None:
    engine = BipEngine(BipConfig(), RequestResponseClient(b"GET", 1))
    driver = CardDriver(SimulatedCard(SimCard(load_profile(None), toolkit=engine)))
    order: list[str] = []

    async def poll(name: str) -> None:
        await driver.poll()
        order.append(name)

    async with trio.open_nursery() as nursery:
        await driver._lock.__aenter__()  # an AT command's exchange holds the card
        nursery.start_soon(poll, "first")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(poll, "second")
        await trio.testing.wait_all_tasks_blocked()
        assert order == []  # both wait
        order.append("holder")
        await driver._lock.__aexit__(None, None, None)
    assert order == ["holder", "first", "second"]


def test_the_engine_encodes_its_pending_command_once(monkeypatch: Any) -> None:
    engine = BipEngine(BipConfig(), RequestResponseClient(b"GET", 1))
    card = SimCard(load_profile(None), toolkit=engine)
    encodes = 0
    real = ProactiveCommand.encode

    def counted(self: ProactiveCommand) -> bytes:
        nonlocal encodes
        encodes += 1
        return real(self)

    monkeypatch.setattr(ProactiveCommand, "encode", counted)
    answer_ = card.process(bytes.fromhex("801000000AFFFFFFFFFFFFFFFFFFFF"))
    assert answer_[0] == 0x91
    for _ in range(5):
        assert card.process(bytes.fromhex("80F2000C00"))[0] == 0x91  # STATUS: the card says 91 xx each time
    assert card.process(bytes((0x80, 0x12, 0, 0, answer_[1])))[-2:] == b"\x90\x00"
    assert encodes == 1
