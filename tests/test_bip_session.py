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
