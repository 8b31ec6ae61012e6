"""HTTP/1.1 framing (RFC 9112) of the GlobalPlatform Amd B admin protocol on both ends, through h11: what the OTA
server answers to a malformed or abusive request (docs/protocols.md, "The OTA server": its limits and answers),
and how the card's admin agent ends its session on a malformed answer, with its state untouched.

Each test drives the real OtaServer connection handler over a trio memory stream (MockClock where time matters),
or the card's sans-IO agent directly: bytes in, bytes out.
"""

from __future__ import annotations

import re
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from bipsim.ota.admin import PROTOCOL, RESPONSE_TYPE, AdminServer
from bipsim.ota.campaign import Campaign
from bipsim.ota.loadgen import LoadCard, make_card
from bipsim.ota.server import OtaServer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from bipsim.uicc.http_limits import LIMITS, HttpLimits
from bipsim.uicc.remote_apdu import encode_command_script

HEADERS = (
    "Host: 127.0.0.1\r\n"
    f"X-Admin-Protocol: {PROTOCOL}\r\n"
    "X-Admin-From: //se-id/iccid/8988211000000000001\r\n"
    f"Content-Type: {RESPONSE_TYPE}\r\n"
)
HEAD = "POST /server/adminagent HTTP/1.1\r\n" + HEADERS


def post(body: bytes = b"", iccid: str = "8988211000000000001") -> bytes:
    headers = HEADERS.replace("8988211000000000001", iccid)
    return f"POST /server/adminagent HTTP/1.1\r\n{headers}Content-Length: {len(body)}\r\n\r\n".encode() + body


def statuses(answer: bytes | bytearray) -> list[int]:
    """The status codes of the responses in `answer`, read by a regular expression (not by the code under test)."""
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


async def talk(server: OtaServer, chunks: list[bytes], *, pace: float = 0.0) -> bytes:
    """Sends `chunks` (one every `pace` seconds) to one server connection and returns all it answered until it
    closed the connection."""
    client, server_side = trio.testing.memory_stream_pair()
    answer = bytearray()

    async def write() -> None:
        for chunk in chunks:
            try:
                await client.send_all(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if pace:
                await trio.sleep(pace)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, server_side)
        nursery.start_soon(write)
        while True:
            try:
                data = await client.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            if not data:
                break
            answer += data
        nursery.cancel_scope.cancel()
    return bytes(answer)


def plain_server(
    tracer: Tracer | None = None, *, limits: HttpLimits = LIMITS, campaign: Campaign | None = None
) -> OtaServer:
    admin = AdminServer(campaign or Campaign.load(), limits=limits)
    return OtaServer(admin, keys=None, tracer=tracer or Tracer(keep=True))


def http_errors(tracer: Tracer) -> list[str]:
    return [e.summary for e in tracer.events if e.error and e.kind == Kind.HTTP_ERROR]


# --- requests the server must refuse ----------------------------------------------------------------------------

MALFORMED = {
    # a negative chunk size looped the old parser forever (100 % CPU, the whole server stuck)
    "negative chunk size": (HEAD + "Transfer-Encoding: chunked\r\n\r\n-6\r\nabc\r\n0\r\n\r\n").encode(),
    # "0x3" is no chunk size (RFC 9112 7.1: 1*HEXDIG); int(..., 16) accepted it
    "0x chunk size": (HEAD + "Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n").encode(),
    # U+00B2 passes str.isdigit() and int() raised ValueError out of the connection task (exit 70)
    "superscript length": HEAD.encode() + b"Content-Length: \xb2\r\n\r\nab",
    # two different lengths: RFC 9112 6.3 makes the framing invalid (the last one won)
    "conflicting lengths": (HEAD + "Content-Length: 2\r\nContent-Length: 4\r\n\r\nabcd").encode(),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", sorted(MALFORMED))
async def test_malformed_framing_gets_400_and_a_trace_event(
    name: str, autojump_clock: trio.testing.MockClock
) -> None:
    tracer = Tracer(keep=True)
    server = plain_server(tracer)
    answer = await talk(server, [MALFORMED[name]])
    assert statuses(answer) == [400], answer
    assert http_errors(tracer), [e.summary for e in tracer.events]
    assert all(e.kind for e in tracer.events)


async def test_a_chunk_trailer_does_not_break_the_next_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A chunked empty POST with a trailer field, then a second request on the same connection: both answered 200
    (the old parser left the trailer's CRLF in front of the next request and answered it 400)."""
    chunked = (HEAD + "Transfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: 1\r\n\r\n").encode()
    server = plain_server()
    answer = await talk(server, [chunked + post()])
    assert statuses(answer) == [200, 200], answer


async def test_a_byte_a_second_client_gets_408_when_the_whole_request_is_late(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The timeout covers the whole request, not the gap between two bytes."""
    tracer = Tracer(keep=True)
    server = plain_server(tracer, limits=replace(LIMITS, request_timeout=5.0))
    request = post()
    start = trio.current_time()
    answer = await talk(server, [request[i : i + 1] for i in range(len(request))], pace=1.0)
    assert statuses(answer) == [408], answer
    assert trio.current_time() - start < 10
    assert any(e.error and e.fields and e.fields.get("status") == 408 for e in tracer.events)


# --- the process guard ------------------------------------------------------------------------------------------


async def test_an_exception_in_one_connection_ends_that_connection_only(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracer = Tracer(keep=True)
    server = plain_server(tracer)

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a bug in the admin core")

    monkeypatch.setattr(server.admin, "handle", broken)
    answer = await talk(server, [post()])
    assert 200 not in statuses(answer)
    assert all(e.kind for e in tracer.events)
    (event,) = [e for e in tracer.events if e.kind == Kind.APP_ERROR]
    assert event.error and "RuntimeError" in event.summary
    monkeypatch.undo()
    assert statuses(await talk(server, [post()])) == [200]  # the server goes on serving


# --- the card's side --------------------------------------------------------------------------------------------

SCRIPT = encode_command_script([bytes.fromhex("00A4000C023F00")])
SCRIPT_TYPE = "application/vnd.globalplatform.card-content-mgt;version=1.0"


def card_in_session(tmp_path: Path) -> tuple[LoadCard, Tracer, bytes]:
    """A card (plain HTTP) whose first POST went out; returns it, its tracer and its saved state."""
    load = make_card(tls=False, state_path=tmp_path / "card.json")
    tracer = Tracer(keep=True)
    load.agent.tracer = tracer
    load.card.save_state()
    first = load.agent.connection_made()
    assert first.startswith(b"POST /server/adminagent HTTP/1.1\r\n")
    return load, tracer, (tmp_path / "card.json").read_bytes()


BAD_ANSWERS = {
    "negative chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-6\r\nabc\r\n0\r\n\r\n",
    "0x chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
    "superscript length": b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nab",
    "conflicting lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 4\r\n\r\nabcd",
    # no Content-Length, no chunking: the body runs to the connection's close (RFC 9112 6.3), which an admin
    # session cannot wait for; it was read as an empty body
    "no length": f"HTTP/1.1 200 OK\r\nContent-Type: {SCRIPT_TYPE}\r\n\r\n".encode() + SCRIPT,
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", sorted(BAD_ANSWERS))
def test_a_malformed_answer_ends_the_card_session_with_an_error_event(tmp_path: Path, name: str) -> None:
    load, tracer, before = card_in_session(tmp_path)
    out = load.agent.data_received(BAD_ANSWERS[name])
    assert load.agent.done and not load.agent.log.finished and not load.agent.wants_reconnect
    assert b"POST" not in out  # nothing more is asked of the server
    assert load.agent.log.apdus == 0
    errors = [e for e in tracer.events if e.error]
    assert errors and all(e.kind for e in errors), [e.summary for e in tracer.events]
    assert (tmp_path / "card.json").read_bytes() == before


def test_a_chunk_trailer_in_an_answer_does_not_break_the_next_answer(tmp_path: Path) -> None:
    load, tracer, _ = card_in_session(tmp_path)
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {SCRIPT_TYPE}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    answer = head + f"{len(SCRIPT):X}\r\n".encode() + SCRIPT + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
    second = load.agent.data_received(answer)
    assert second.startswith(b"POST ") and load.agent.log.apdus == 1
    load.agent.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert load.agent.log.finished, load.agent.log.errors
    assert not [e for e in tracer.events if e.error]


# --- limits through the server's adapter --------------------------------------------------------------------------


async def test_past_the_connection_cap_a_client_gets_503_and_the_others_are_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracer = Tracer(keep=True)
    server = plain_server(tracer, limits=replace(LIMITS, connections=1))
    held, held_server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, held_server)  # the one connection the cap allows, kept open
        await trio.testing.wait_all_tasks_blocked()
        assert server.active == 1
        answer = await talk(server, [post()])
        assert statuses(answer) == [503], answer
        assert any(
            e.kind == Kind.HTTP_ERROR and e.fields and e.fields["status"] == 503 for e in tracer.events
        )
        await held.send_all(post())
        first = await held.receive_some(65536)
        assert statuses(first) == [200]  # the connection within the cap is served
        nursery.cancel_scope.cancel()
    assert server.active == 0
    assert statuses(await talk(server, [post()])) == [200]  # below the cap again


def test_an_answer_head_over_the_card_limit_ends_the_session(tmp_path: Path) -> None:
    load, tracer, before = card_in_session(tmp_path)
    junk = "X-Junk: " + "a" * LIMITS.header_bytes + "\r\n"
    load.agent.data_received(f"HTTP/1.1 204 No Content\r\n{junk}\r\n".encode())
    assert load.agent.done and not load.agent.log.finished
    (event,) = [e for e in tracer.events if e.error]
    assert event.kind == Kind.HTTP_ERROR and event.fields and event.fields["status"] == 431
    assert (tmp_path / "card.json").read_bytes() == before


@pytest.mark.timeout(60)
async def test_a_malformed_answer_through_the_bip_channel_closes_it_and_the_cp_goes_on(
    tmp_path: Path,
) -> None:
    """The whole card path: the server answers the first POST with a chunk size of -6. The card's session ends
    with an error event, the card closes its BIP channel (CLOSE CHANNEL), its state file is unchanged, and the CP's
    BIP service finishes the session normally and keeps running."""
    from bipsim.cp.bip_service import BipService
    from bipsim.cp.card_driver import CardDriver
    from bipsim.uicc.bip_engine import BipConfig, BipEngine, EngineState, LinkMode
    from bipsim.uicc.sim_transport import SimulatedCard

    from .test_bip_session import DirectBearer

    load = make_card(tls=False, state_path=tmp_path / "card.json")
    tracer = Tracer(keep=True)
    load.agent.tracer = tracer
    load.card.save_state()
    before = (tmp_path / "card.json").read_bytes()
    closed = trio.Event()

    async def bad_server(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(BAD_ANSWERS["negative chunk size"])
        while await stream.receive_some(65536):
            pass
        closed.set()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), bad_server, 0)
            engine = BipEngine(
                BipConfig(port=listener.socket.getsockname()[1], link_mode=LinkMode.BACKGROUND), load.agent
            )
            load.card.toolkit = engine
            cp_tracer = Tracer(keep=True)
            service = BipService(
                CardDriver(SimulatedCard(load.card), tracer=cp_tracer), DirectBearer(), tracer=cp_tracer
            )
            await nursery.start(service.run)
            await closed.wait()  # the channel's TCP connection was closed by the CP, as the card asked
            await service.session_finished.wait()
            assert engine.state is EngineState.DONE and not engine.busy
            nursery.cancel_scope.cancel()
    assert load.agent.done and not load.agent.log.finished
    assert any(e.error and e.kind == Kind.HTTP_ERROR for e in tracer.events)
    assert (tmp_path / "card.json").read_bytes() == before


async def test_a_server_closing_after_each_request_still_completes_the_campaign(tmp_path: Path) -> None:
    """requests_per_connection = 1: every 200 comes with Connection: close; the card answers each script on a new
    connection (X-Admin-Resume), and these planned closes are not counted as lost connections."""
    from bipsim.ota.loadgen import run_card

    admin = AdminServer(Campaign.load(), limits=replace(LIMITS, requests_per_connection=1))
    server = OtaServer(admin, keys=None)
    load = make_card(tls=False, state_path=tmp_path / "card.json")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            agent = await run_card(load, "127.0.0.1", port)
            nursery.cancel_scope.cancel()
    assert agent.log.finished, agent.log.errors
    assert load.connections == 5  # four scripts and the 204, one connection each
    (progress,) = admin.cards.values()
    assert progress.completed and [entry["script"] for entry in progress.log] == [0, 1, 2, 3]
