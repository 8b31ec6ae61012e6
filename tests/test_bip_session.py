"""A full BIP session in one process: the card's engine, the APDU processor, the CP's card driver, gateway and
service, and a real loopback TCP server, in each link mode (TS 102 223 section 6.4.27ff)."""

from __future__ import annotations

import pytest
import trio

from bipsim.cp.bearer import LinkError
from bipsim.cp.bip_service import BipService
from bipsim.cp.card_driver import CardDriver
from bipsim.trace.recorder import Tracer
from bipsim.trace.steps import check_step_order
from bipsim.uicc.bip_engine import BipConfig, BipEngine, EngineState, LinkMode
from bipsim.uicc.card import SimCard
from bipsim.uicc.cat import BipErrorCause, GeneralResult, OpenChannel
from bipsim.uicc.profile import load_profile
from bipsim.uicc.sim_transport import SimulatedCard
from bipsim.uicc.test_clients import RequestResponseClient


class DirectBearer:
    """Connects from this process straight to the server (the own stack without its AT%GETNET step)."""

    embodiment = 1
    name = "direct"

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse

    async def connect(self, channel: int, request: OpenChannel) -> trio.abc.Stream:
        if self.refuse:
            raise LinkError(
                GeneralResult.BIP_ERROR, bytes((BipErrorCause.REMOTE_DEVICE_NOT_REACHABLE,)), "refused"
            )
        assert request.destination is not None
        try:
            return await trio.open_tcp_stream(request.destination, request.port)
        except OSError as exc:
            raise LinkError(
                GeneralResult.BIP_ERROR, bytes((BipErrorCause.REMOTE_DEVICE_NOT_REACHABLE,)), str(exc)
            ) from exc

    async def disconnect(self, channel: int, stream: trio.abc.Stream) -> None:
        await stream.aclose()


async def serve_answer(answer_size: int, nursery: trio.Nursery) -> int:
    async def handler(stream: trio.SocketStream) -> None:
        request = await stream.receive_some(65536)
        assert request.startswith(b"GET")
        payload = bytes(i % 251 for i in range(answer_size))
        await stream.send_all(payload)
        await stream.receive_some(1)  # wait for the card's close

    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    return int(listeners[0].socket.getsockname()[1])


async def run_session(
    mode: LinkMode, answer_size: int, *, refuse: bool = False
) -> tuple[BipEngine, RequestResponseClient, Tracer]:
    tracer = Tracer(keep=True, session="test")
    async with trio.open_nursery() as nursery:
        port = await serve_answer(answer_size, nursery)
        client = RequestResponseClient(b"GET /", answer_size)
        engine = BipEngine(BipConfig(port=port, link_mode=mode, bearer_type=2, buffer_size=1400), client)
        card = SimCard(load_profile(), toolkit=engine)
        service = BipService(
            CardDriver(SimulatedCard(card), tracer=tracer), DirectBearer(refuse), tracer=tracer
        )
        with trio.fail_after(60):
            await nursery.start(service.run)
            await service.session_finished.wait()
        nursery.cancel_scope.cancel()
    return engine, client, tracer


@pytest.mark.parametrize("mode", list(LinkMode))
async def test_session_in_each_link_mode(mode: LinkMode) -> None:
    engine, client, tracer = await run_session(mode, 3000)
    assert engine.state is EngineState.DONE, engine.failures
    assert bytes(client.received) == bytes(i % 251 for i in range(3000))
    if mode is LinkMode.BACKGROUND:
        # every step of embodiment 1 the CP observes, in the patent's order (AP and server steps come from them)
        cp_steps = [e for e in tracer.events if e.step]
        problems = check_step_order(cp_steps, 1)
        assert all(p.split()[0] in {"S403", "S404", "S405", "S415"} for p in problems), problems


async def test_seventy_thousand_byte_download() -> None:
    engine, client, tracer = await run_session(LinkMode.BACKGROUND, 70_000)
    assert len(client.received) == 70_000 and engine.state is EngineState.DONE
    receives = [e for e in tracer.events if e.summary == "FETCH: RECEIVE DATA"]
    assert len(receives) >= 70_000 // 237


async def test_refused_open_channel() -> None:
    engine, client, _ = await run_session(LinkMode.IMMEDIATE, 10, refuse=True)
    assert engine.state is EngineState.FAILED
    assert engine.failures[0][1:] == (
        GeneralResult.BIP_ERROR,
        bytes((BipErrorCause.REMOTE_DEVICE_NOT_REACHABLE,)),
    )
    assert client.lost and not client.received


# --- errors are data: an exception in a channel's task or in the card's client ends that session only -------------


class ExplodingClient(RequestResponseClient):
    """A client that raises on the first bytes of its first session, as an OTA agent may on a malformed HTTP
    answer; later sessions work."""

    def __init__(self, request: bytes, expect: int) -> None:
        super().__init__(request, expect)
        self.exploded = False

    def data_received(self, data: bytes) -> bytes:
        if not self.exploded:
            self.exploded = True
            raise ValueError("malformed HTTP answer")
        return super().data_received(data)


class BreakingStream(trio.abc.Stream):
    """A channel stream whose first read raises something no bearer expects."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await self.inner.receive_some(max_bytes)
        raise KeyError("a bug in the channel's stream")

    async def aclose(self) -> None:
        await self.inner.aclose()


class BreakingOnceBearer(DirectBearer):
    """The first channel's stream breaks mid-session; later ones are plain TCP."""

    def __init__(self) -> None:
        super().__init__()
        self.connections = 0

    async def connect(self, channel: int, request: OpenChannel) -> trio.abc.Stream:
        stream = await super().connect(channel, request)
        self.connections += 1
        return BreakingStream(stream) if self.connections == 1 else stream


async def _at_works(driver: CardDriver) -> None:
    """The modem's AT side, on the same card driver, still answers (here +CIMI, which reads the card)."""
    from bipsim.cp.commands import ModemCommands
    from bipsim.cp.network import CellularNetwork
    from bipsim.link.at_server import AtServer
    from tests.test_cp_commands import Dte

    dte_end, modem_end = trio.testing.memory_stream_pair()
    server = AtServer(modem_end)
    ModemCommands(driver, CellularNetwork()).install(server)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)
        answer = await Dte(dte_end).at("AT+CIMI")
        assert answer.endswith("\r\nOK\r\n") and load_profile().imsi in answer, answer
        nursery.cancel_scope.cancel()


async def _two_sessions(
    client: RequestResponseClient, bearer: DirectBearer
) -> tuple[BipEngine, SimCard, Tracer]:
    """A session that meets the fault, then the AT side, then a second session the card starts."""
    tracer = Tracer(keep=True, session="test")
    async with trio.open_nursery() as nursery:
        port = await serve_answer(500, nursery)
        engine = BipEngine(BipConfig(port=port, bearer_type=2), client)
        card = SimCard(load_profile(), toolkit=engine)
        driver = CardDriver(SimulatedCard(card), tracer=tracer)
        service = BipService(driver, bearer, tracer=tracer, poll_interval=0.05)
        with trio.fail_after(30):
            await nursery.start(service.run)
            await service.session_finished.wait()
            assert engine.state is EngineState.DONE and service.sessions_done == 1
            await _at_works(driver)
            service.session_finished = trio.Event()
            engine.trigger()  # the card's next session (as an SMS push or a timer would start it)
            await service.session_finished.wait()
        nursery.cancel_scope.cancel()
    assert service.sessions_done == 2 and engine.state is EngineState.DONE, engine.failures
    return engine, card, tracer


async def test_a_card_client_that_raises_mid_session_ends_that_session_and_the_next_one_works() -> None:
    client = ExplodingClient(b"GET /", 500)
    engine, card, tracer = await _two_sessions(client, DirectBearer())
    assert engine.failures[0][0] == "client failed in data_received: ValueError('malformed HTTP answer')"
    assert not card.faults  # the card contained it as a closed channel, not as a fault
    assert bytes(client.received) == bytes(i % 251 for i in range(500))  # the second session got it all
    closes = [
        e for e in tracer.events if e.kind == "cat.proactive" and e.fields["command"] == "CLOSE CHANNEL"
    ]
    assert len(closes) == 2


async def test_an_exception_in_a_channels_task_drops_that_channel_and_the_next_session_works() -> None:
    client = RequestResponseClient(b"GET /", 500)
    engine, _, tracer = await _two_sessions(client, BreakingOnceBearer())
    (error,) = [e for e in tracer.events if e.kind == "app.error"]
    assert error.fields == {
        "where": "channel task",
        "error": 'KeyError("a bug in the channel\'s stream")',
        "channel": 1,
    }
    dropped = [e for e in tracer.events if e.kind == "cat.envelope" and e.fields.get("link") == "dropped"]
    assert dropped and dropped[0].fields == {
        "envelope": "event_download",
        "event": "channel_status",
        "channel": 1,
        "link": "dropped",
    }
    assert engine.failures[0] == ("link dropped", GeneralResult.BIP_ERROR, b"\x05")
    assert len(client.received) == 500


class FaultyTransport(SimulatedCard):
    """A card transport that raises once, on the test's own STATUS (P1 = 01, which the BIP service's polls never
    send: the fault cannot be taken by a poll that happens to run first)."""

    FAULTY = b"\x80\xf2\x01\x0c\x00"

    def __init__(self, card: SimCard) -> None:
        super().__init__(card)
        self.raised = False

    async def transmit(self, command: bytes) -> bytes:
        if command == self.FAULTY and not self.raised:
            self.raised = True
            raise OSError("reader removed")
        return await super().transmit(command)


async def test_an_exception_out_of_the_card_transport_is_6f00_and_an_app_error() -> None:
    tracer = Tracer(keep=True, session="test")
    card = SimCard(load_profile())
    driver = CardDriver(FaultyTransport(card), tracer=tracer)
    async with trio.open_nursery() as nursery:
        service = BipService(driver, DirectBearer(), tracer=tracer, poll_interval=0.01)
        await nursery.start(service.run)
        assert await driver.transmit(FaultyTransport.FAULTY, "STATUS") == (b"", 0x6F00)
        await _at_works(driver)
        nursery.cancel_scope.cancel()
    (error,) = [e for e in tracer.events if e.kind == "app.error"]
    assert error.fields == {"where": "card", "apdu": "80F2010C", "error": "OSError('reader removed')"}
    assert [e.fields for e in tracer.events if e.kind == "apdu.response"][-1] == {"sw": "9000"}


async def test_every_cp_event_of_a_session_has_its_kind_and_fields() -> None:
    """Scenario checks select events by kind and fields (docs/protocols.md, "Traces"), never by summary."""
    _, _, tracer = await run_session(LinkMode.BACKGROUND, 300)
    events = tracer.events
    assert all(e.kind for e in events), [e.summary for e in events if not e.kind]
    kinds = {e.kind for e in events}
    assert {
        "apdu.atr",
        "cat.terminal_profile",
        "cat.fetch",
        "cat.proactive",
        "cat.terminal_response",
    } <= kinds
    assert {"cat.envelope", "apdu.response", "tcp.data"} <= kinds
    (open_channel,) = [
        e for e in events if e.kind == "cat.proactive" and e.fields["command"] == "OPEN CHANNEL"
    ]
    assert (
        open_channel.fields["qualifier"] == LinkMode.BACKGROUND.qualifier
        and open_channel.fields["number"] >= 1
    )
    (open_tr,) = [
        e for e in events if e.kind == "cat.terminal_response" and e.fields["command"] == "OPEN CHANNEL"
    ]
    assert open_tr.fields["result"] == 0 and isinstance(open_tr.fields["result"], int)
    envelopes = [e.fields for e in events if e.kind == "cat.envelope"]
    assert envelopes[0] == {
        "envelope": "event_download",
        "event": "channel_status",
        "channel": 1,
        "link": "established",
    }
    assert any(f["event"] == "data_available" and f["channel"] == 1 for f in envelopes)
    assert all(
        e.fields["sw"] in ("9000",) or e.fields["sw"].startswith("91")
        for e in events
        if e.kind == "apdu.response"
    )
    data = [e for e in events if e.kind == "tcp.data"]
    assert sum(e.fields["length"] for e in data if e.src == "ota") == 300 and all(
        e.fields["channel"] == 1 for e in data
    )
