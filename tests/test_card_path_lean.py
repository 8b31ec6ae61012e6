"""The card path of a download kept lean (issue 21; docs/performance.md, "The card path"): the CP's Rx buffer takes
the bytes its link read while the card was reading without a Data Available envelope per read, the link is read
once per third of the buffer instead of once per RECEIVE DATA (the reader counting what it handed over already), the card lock hands the card over in order (a waiter
cancelled while it waits is gone), and a trace line's fields are the JSON `TraceEvent.to_json` writes."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import trio
import trio.testing

from bipsim.cp.bip_gateway import BipGateway, SendEnvelope
from bipsim.cp.bip_service import BipService, LinkData, LinkDown
from bipsim.cp.card_driver import CardDriver, type_name
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import _ENCODER, Tracer, _fields_text
from bipsim.uicc.bip_engine import BipConfig, BipEngine
from bipsim.uicc.card import SimCard
from bipsim.uicc.cat import CommandType, OpenChannel, TransportProtocol, channel_data_length, receive_data
from bipsim.uicc.profile import load_profile
from bipsim.uicc.sim_transport import SimulatedCard
from bipsim.uicc.test_clients import RequestResponseClient
from tests.test_gateway import open_command, opened, the_tr

SIZE = 24000  # about 100 RECEIVE DATA rounds of 237 bytes through a 1400-byte Rx buffer


class MemoryBearer:
    """A bearer whose link is one end of an in-memory stream pair; the test holds the server's end."""

    embodiment = 2
    name = "memory"

    def __init__(self, server_end: trio.abc.Stream, client_end: trio.abc.Stream) -> None:
        self.server_end = server_end
        self.client_end = client_end

    async def connect(self, channel: int, request: OpenChannel) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        return self.client_end

    async def disconnect(self, channel: int, stream: trio.abc.Stream) -> None:
        await stream.aclose()


async def download(size: int) -> tuple[list[dict[str, Any]], RequestResponseClient]:
    """One session whose server answers `size` bytes at once; the CP's trace lines and the card's client."""
    client = RequestResponseClient(b"GET / HTTP/1.1\r\n\r\n", size)
    engine = BipEngine(BipConfig(buffer_size=1400), client)
    sink = io.StringIO()
    tracer = Tracer(sink, session="lean")
    driver = CardDriver(SimulatedCard(SimCard(load_profile(None), toolkit=engine)), tracer=tracer)
    server_end, client_end = trio.testing.memory_stream_pair()
    service = BipService(driver, MemoryBearer(server_end, client_end), tracer=tracer)

    async def server() -> None:
        request = await server_end.receive_some(65536)
        assert request.startswith(b"GET")
        await server_end.send_all(bytes(i % 251 for i in range(size)))
        while await server_end.receive_some(65536):  # until the card's close
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        await nursery.start(service.run)
        await service.session_finished.wait()
        nursery.cancel_scope.cancel()
    assert not engine.failures, engine.failures
    return [json.loads(line) for line in sink.getvalue().splitlines()], client


async def test_bytes_read_while_the_card_reads_need_no_new_data_available(autojump_clock: Any) -> None:
    lines, client = await download(SIZE)
    assert bytes(client.received) == bytes(i % 251 for i in range(SIZE))
    available = [
        e for e in lines if e["kind"] == Kind.CAT_ENVELOPE and e["fields"].get("event") == "data_available"
    ]
    rounds = [
        e for e in lines if e["kind"] == Kind.CAT_PROACTIVE and e["fields"]["command"] == "RECEIVE DATA"
    ]
    reads = [e for e in lines if e["kind"] == Kind.APP_EVENT and e["fields"].get("event") == "channel_data"]
    reads = [e for e in reads if e["src"] == "ap"]
    assert len(rounds) >= SIZE // 237
    # one Data Available per read was the old way (as many as `reads`: the card emptied the buffer before the
    # next read's bytes were handed to it); now one for the answer (the card holds two thirds of its buffer, four
    # rounds, when the next read is asked for; two leaves room for a reader slower than that)
    assert len(available) <= 2, [e["summary"] for e in available]
    # the link is read once per third of the buffer at most, not once per round (1400 / 3: 467 bytes or more)
    assert len(reads) <= SIZE // 467 + 1, [e["fields"]["length"] for e in reads]
    assert all(e["fields"]["length"] >= 467 for e in reads[:-1])


async def test_the_service_absorbs_only_the_queues_head_of_data() -> None:
    engine = BipEngine(BipConfig(), RequestResponseClient(b"GET", 1))
    driver = CardDriver(SimulatedCard(SimCard(load_profile(None), toolkit=engine)))
    service = BipService(driver, MemoryBearer(*trio.testing.memory_stream_pair()))
    gateway = service.gateway
    channel = opened(gateway, size=1000)
    service._generation[channel] = 1
    gateway.on_data(channel, b"a" * 100)  # its Data Available went to the card
    for event in (
        LinkData(channel, b"b" * 50, 1),
        LinkData(channel, b"c" * 60, 0),  # of an older link: not this channel's bytes
        LinkData(channel, b"d" * 70, 1),
    ):
        service._events_tx.send_nowait(event)
    service._absorb_data()
    assert gateway.rx_pending(channel) == 150  # the head only: the stale event stops it, and waits its turn
    assert service._held == LinkData(channel, b"c" * 60, 0)
    service._absorb_data()  # nothing more while an event is held (the order of events is kept)
    assert gateway.rx_pending(channel) == 150
    service._held = None
    service._events_tx.send_nowait(LinkDown(channel, 1))
    service._absorb_data()
    assert gateway.rx_pending(channel) == 220
    assert service._held == LinkDown(channel, 1)


def test_the_gateway_absorbs_data_only_while_its_data_available_stands() -> None:
    gateway = BipGateway()
    channel = opened(gateway, size=1000)
    assert not gateway.absorb(channel, b"x" * 10)  # no Data Available given yet: on_data must send one
    actions = gateway.on_data(channel, b"x" * 300)
    assert [type(a) for a in actions] == [SendEnvelope]
    assert gateway.absorb(channel, b"y" * 200)  # the card is reading: the bytes join its buffer
    assert not gateway.absorb(7, b"z")  # no such channel
    tr = the_tr(gateway.on_command(receive_data(channel, 237, number=2)))
    assert channel_data_length(tr) == 0xFF  # 263 left: "more than 255" (TS 102 223 8.54)
    tr = the_tr(gateway.on_command(receive_data(channel, 237, number=3)))
    assert channel_data_length(tr) == 26
    tr = the_tr(gateway.on_command(receive_data(channel, 26, number=4)))
    assert channel_data_length(tr) == 0
    assert not gateway.absorb(channel, b"w")  # the buffer ran dry: the next bytes get their Data Available


def test_a_datagram_channel_never_absorbs() -> None:
    gateway = BipGateway()
    channel = opened(gateway, protocol=TransportProtocol.UDP_CLIENT_REMOTE)
    gateway.on_data(channel, b"datagram one")
    assert not gateway.absorb(channel, b"datagram two")


def test_the_link_is_read_again_once_a_third_of_the_buffer_is_free() -> None:
    gateway = BipGateway()
    channel = opened(gateway, size=1200)
    assert gateway.rx_refill(channel) == 1200  # empty: read what fits
    assert gateway.rx_refill(channel, queued=100) == 1100  # 100 bytes on their way: the rest
    gateway.on_data(channel, b"x" * 1200)
    assert gateway.rx_refill(channel) == 0
    gateway.on_command(receive_data(channel, 237, number=2))
    assert gateway.rx_refill(channel) == 0  # 237 free: wait
    gateway.on_command(receive_data(channel, 237, number=3))
    assert gateway.rx_refill(channel) == 474
    assert gateway.rx_refill(channel, queued=100) == 0  # 374 of them still to come: wait
    assert gateway.rx_refill(5) == 0
    assert open_command().type == CommandType.OPEN_CHANNEL


def test_a_datagram_channel_is_read_one_datagram_at_a_time() -> None:
    gateway = BipGateway()
    channel = opened(gateway, protocol=TransportProtocol.UDP_CLIENT_REMOTE)
    assert gateway.rx_refill(channel) > 0
    assert gateway.rx_refill(channel, queued=20) == 0  # one on its way
    gateway.on_data(channel, b"d" * 20)
    assert gateway.rx_refill(channel) == 0  # one buffered


async def test_a_waiter_cancelled_at_the_card_lock_does_not_keep_the_card() -> None:
    engine = BipEngine(BipConfig(), RequestResponseClient(b"GET", 1))
    driver = CardDriver(SimulatedCard(SimCard(load_profile(None), toolkit=engine)))
    order: list[str] = []

    async def poll(name: str, scope: trio.CancelScope) -> None:
        with scope:
            await driver.poll()
            order.append(name)

    first, second = trio.CancelScope(), trio.CancelScope()
    async with trio.open_nursery() as nursery:
        await driver._lock.__aenter__()  # an AT command's exchange holds the card
        nursery.start_soon(poll, "first", first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(poll, "second", second)
        await trio.testing.wait_all_tasks_blocked()
        first.cancel()  # gives up while it waits
        await trio.testing.wait_all_tasks_blocked()
        await driver._lock.__aexit__(None, None, None)
    assert order == ["second"]
    with trio.move_on_after(1) as stuck:  # free again: taken at once
        await driver.poll()
    assert not stuck.cancelled_caught


def test_type_names_are_the_commands_own() -> None:
    for type_ in (CommandType.RECEIVE_DATA, CommandType.OPEN_CHANNEL, 0x7E):
        assert type_name(type_) == receive_data(1, 1).__class__((), 1, type_).type_name
    assert type_name(CommandType.RECEIVE_DATA) == "RECEIVE DATA"


@pytest.mark.parametrize(
    "fields",
    [
        {"command": "RECEIVE DATA", "number": 3, "qualifier": 0, "sw": "9000"},
        {"text": 'quote " backslash \\ é \u2028 \x01', "nested": {"list": [1, 2.5, None, True, False]}},
        {"nan": float("nan"), "inf": float("inf"), "big": 10**30, "kind": Kind.APDU_RESPONSE},
    ],
)
def test_fields_are_encoded_as_the_event_encodes_them(fields: dict[str, Any]) -> None:
    assert _fields_text(fields) == _ENCODER.encode(fields)
    sink = io.StringIO()
    tracer = Tracer(sink, origin=0.0, clock=lambda: 1.25)
    event = tracer.emit(Actor.CP, Actor.UICC, Layer.APDU, "x", b"\x01", kind=Kind.APDU_COMMAND, fields=fields)
    assert sink.getvalue() == event.to_json() + "\n"


def test_a_failed_fields_encoding_leaves_the_next_one_whole() -> None:
    circular: dict[str, Any] = {}
    circular["self"] = circular
    for _ in range(3):
        with pytest.raises(ValueError):
            _fields_text({"a": [circular]})
    with pytest.raises(TypeError):
        _fields_text({"a": [object()]})
    again = {"a": [1, {"b": 2}]}
    assert _fields_text(again) == _ENCODER.encode(again)
