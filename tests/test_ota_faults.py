"""Faults on the OTA link (GlobalPlatform Amd B over TLS 1.2 PSK): a wrong key, a server that drops the connection
mid-script (the card reconnects and resumes with X-Admin-Resume), malformed HTTP from either side (an HTTP error
status, no crash), and a card process killed with SIGKILL between LOAD blocks (its state file stays whole).

Run as a script (`python tests/test_ota_faults.py card STATE PORT PAUSE`) this file is the card process of the kill
test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from bipsim.ota.admin import PROTOCOL, RESPONSE_TYPE, AdminServer
from bipsim.ota.campaign import LOAD_BLOCK, Campaign, load_file_data
from bipsim.ota.http_connection import HttpRequest
from bipsim.ota.loadgen import make_card, run_card
from bipsim.ota.server import OtaServer
from bipsim.trace.recorder import Tracer
from bipsim.uicc.gp_registry import SELECTABLE, GpRegistry
from bipsim.uicc.http_limits import LIMITS
from bipsim.uicc.ota_agent import SCRIPT_TYPE, AgentState
from bipsim.uicc.profile import load_profile
from bipsim.uicc.remote_apdu import encode_response_script
from tests.http_peer import Message, MessageParser, render  # absolute: this file also runs as a script

APP = bytes.fromhex("A0000005590010FF01")
LOAD_FILE = bytes.fromhex("A0000005590010")
MODULE = bytes.fromhex("A0000005590010FF")
BIG_LOAD = 30000  # bytes of load file data: 150 LOAD blocks
MAX_BODY = LIMITS.body_bytes  # the card's limit on a command script's HTTP body


def big_campaign() -> Campaign:
    return Campaign.from_mapping(
        {
            "card": [
                {
                    "iccid": "*",
                    "step": [
                        {"kind": "rfm", "path": "7FFF/6F46", "data": "0142495053494D2D4F5441FFFFFFFFFFFF"},
                        {
                            "kind": "ram-load",
                            "load_file": LOAD_FILE.hex(),
                            "module": MODULE.hex(),
                            "size": BIG_LOAD,
                        },
                        {
                            "kind": "ram-install",
                            "load_file": LOAD_FILE.hex(),
                            "module": MODULE.hex(),
                            "application": APP.hex(),
                        },
                    ],
                }
            ]
        },
        "test",
    )


def server_keys() -> dict[str, bytes]:
    profile = load_profile()
    return {profile.psk_identity: profile.psk}


# --- wrong PSK -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "psk", "alert"),
    [
        (None, bytes(16), "decrypt_error"),  # known identity, wrong key: our Finished does not verify
        ("nobody", None, "unknown_psk_identity"),
    ],
)
async def test_wrong_psk_gets_an_alert_and_leaves_the_card_untouched(
    tmp_path: Path, identity: str | None, psk: bytes | None, alert: str
) -> None:
    state = tmp_path / "card.json"
    card = make_card(identity=identity, psk=psk, state_path=state)
    card.card.save_state()
    before = state.read_bytes()
    admin = AdminServer(Campaign.load(), results_path=tmp_path / "results.json")
    tracer = Tracer(keep=True)
    server = OtaServer(admin, keys=server_keys(), tracer=tracer)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            agent = await run_card(card, "127.0.0.1", port)
            nursery.cancel_scope.cancel()
    assert agent.state is AgentState.FAILED and not agent.log.finished
    assert any(alert in e for e in agent.log.errors), agent.log.errors
    assert card.connections == 1  # a refused key is not retried
    assert server.handshake_failures == 1
    assert any(e.error and "TLS handshake failed" in e.summary for e in tracer.events)
    assert admin.cards == {}  # no session
    assert state.read_bytes() == before and not card.registry.applications


# --- server drops the connection mid-script ---------------------------------------------------------------------


@pytest.mark.parametrize("drop_after", [1, 2, 3])
async def test_server_drop_mid_script_then_card_resumes(tmp_path: Path, drop_after: int) -> None:
    admin = AdminServer(Campaign.load(), results_path=tmp_path / "results.json")
    tracer = Tracer(keep=True)
    server = OtaServer(admin, keys=server_keys(), tracer=tracer, drop_after=drop_after)
    card = make_card(state_path=tmp_path / "card.json")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            agent = await run_card(card, "127.0.0.1", port)
            nursery.cancel_scope.cancel()
    assert agent.log.finished, agent.log.errors
    assert card.connections == 2 and any("connection lost" in e for e in agent.log.errors)
    assert any("fault injection" in e.summary for e in tracer.events)
    (progress,) = admin.cards.values()
    assert progress.completed and progress.resumed == 1
    # every script logged once, in order, and all succeeded: nothing lost, nothing applied twice
    assert [entry["kind"] for entry in progress.log] == ["rfm", "ram-load", "ram-install", "ram-status"]
    assert admin.results()[progress.card]["all_ok"]
    assert agent.log.scripts == 4
    assert card.registry.applications[APP].state == SELECTABLE
    assert bytes(card.card.fs.usim.children[0x6F46].data[1:11]) == b"BIPSIM-OTA"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved[progress.card]["resumed"] == 1 and saved[progress.card]["completed"]


# --- malformed HTTP to the server -------------------------------------------------------------------------------

GOOD_HEADERS = (
    "Host: 127.0.0.1\r\n"
    f"X-Admin-Protocol: {PROTOCOL}\r\n"
    "X-Admin-From: //se-id/iccid/8988211000000000001\r\n"
    f"Content-Type: {RESPONSE_TYPE}\r\n"
)


def post(
    head: str = "POST /server/adminagent HTTP/1.1", headers: str = GOOD_HEADERS, body: bytes = b""
) -> bytes:
    return f"{head}\r\n{headers}Content-Length: {len(body)}\r\n\r\n".encode() + body


BAD_REQUESTS = {
    "bad request line": (b"HELLO\r\n\r\n", 400),
    "bad header line": (b"POST /server/adminagent HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    "bad version": (b"POST /server/adminagent HTTP/2.0\r\nContent-Length: 0\r\n\r\n", 505),
    "bad chunk size": (
        b"POST /server/adminagent HTTP/1.1\r\n"
        + GOOD_HEADERS.encode()
        + b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "missing length": (b"POST /server/adminagent HTTP/1.1\r\n" + GOOD_HEADERS.encode() + b"\r\n", 411),
    "bad length": (
        b"POST /server/adminagent HTTP/1.1\r\n" + GOOD_HEADERS.encode() + b"Content-Length: -5\r\n\r\n",
        400,
    ),
    "oversize body": (
        b"POST /server/adminagent HTTP/1.1\r\n" + GOOD_HEADERS.encode() + b"Content-Length: 99999999\r\n\r\n",
        413,
    ),
    "oversize headers": (b"POST /server/adminagent HTTP/1.1\r\nX-Junk: " + b"a" * 20000, 431),
    "missing X-Admin-Protocol": (post(headers="Host: x\r\nX-Admin-From: //se-id/iccid/1\r\n"), 400),
    "missing X-Admin-From": (post(headers=f"X-Admin-Protocol: {PROTOCOL}\r\n"), 400),
    "wrong content type": (
        post(headers=GOOD_HEADERS.replace(RESPONSE_TYPE, "text/plain"), body=b"\xaf\x80\x00\x00"),
        415,
    ),
    "wrong method": (b"GET /server/adminagent HTTP/1.1\r\nHost: x\r\n\r\n", 405),  # HTTP/1.1 needs Host
    "wrong path": (post("POST /elsewhere HTTP/1.1"), 404),
}


async def exchange(port: int, request: bytes, *, until_closed: bool) -> Message:
    """Sends a request and reads one HTTP answer; with `until_closed`, also waits for the server to close."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    parser = MessageParser(requests=False)
    messages: list[Message] = []
    async with stream:
        await stream.send_all(request)
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            messages += parser.feed(data)
            if messages and not until_closed:
                break
    assert len(messages) == 1, messages
    return messages[0]


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
async def test_malformed_requests_get_an_http_error_and_the_server_keeps_serving(name: str) -> None:
    request, status = BAD_REQUESTS[name]
    admin = AdminServer(Campaign.load())
    tracer = Tracer(keep=True)
    server = OtaServer(admin, keys=None, tracer=tracer)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            message = await exchange(port, request, until_closed=True)  # an error answer ends the connection
            assert message.status == status, message
            assert message.header("x-admin-protocol") == PROTOCOL and message.body
            assert any(e.error and e.summary.startswith(str(status)) for e in tracer.events)
            # the server survived and nothing was recorded for a card
            assert not any(p.log for p in admin.cards.values())
            good = await exchange(port, post(), until_closed=False)
            assert good.status == 200
            nursery.cancel_scope.cancel()


async def test_a_malformed_response_script_gets_400() -> None:
    admin = AdminServer(Campaign.load())
    server = OtaServer(admin, keys=None)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            parser = MessageParser(requests=False)
            await stream.send_all(post())
            first: list[Message] = []
            while not first:
                first = parser.feed(await stream.receive_some(65536))
            assert first[0].status == 200
            await stream.send_all(post(body=b"\xaf\x80\x23\x05\x90\x00\x00\x00"))  # R-APDU length runs past
            answer: list[Message] = []
            while not answer:
                answer = parser.feed(await stream.receive_some(65536))
            assert answer[0].status == 400 and b"response script" in answer[0].body
            await stream.aclose()
            nursery.cancel_scope.cancel()
    (progress,) = admin.cards.values()
    assert progress.log == [] and progress.awaiting == 0  # the script stays unacknowledged


async def test_silent_peers_are_dropped_not_waited_for_forever() -> None:
    """No ClientHello, or half a request: the server gives up after its idle timeout (408 for the half request)."""
    admin = AdminServer(Campaign.load())
    tracer = Tracer(keep=True)
    tls_server = OtaServer(admin, keys=server_keys(), tracer=tracer, idle_timeout=0.2)
    plain_server = OtaServer(admin, keys=None, tracer=tracer, idle_timeout=0.2)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            tls_port = await nursery.start(tls_server.serve, "127.0.0.1", 0)
            plain_port = await nursery.start(plain_server.serve, "127.0.0.1", 0)
            silent = await trio.open_tcp_stream("127.0.0.1", tls_port)
            assert await silent.receive_some(100) == b""  # closed by the server
            half = post()[:40]
            message = await exchange(plain_port, half, until_closed=True)
            assert message.status == 408
            nursery.cancel_scope.cancel()
    assert tls_server.timeouts == 1 and plain_server.timeouts == 1
    assert sum("timed out" in e.summary for e in tracer.events) == 2


# --- malformed HTTP to the card ---------------------------------------------------------------------------------

BAD_ANSWERS = {
    "garbage status line": b"SPLAT\r\n\r\n",
    "bad status code": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "bad chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nQQ\r\n",
    "oversize body": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
    "server error": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    "bad request answer": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_ANSWERS))
async def test_malformed_answers_fail_the_card_cleanly(tmp_path: Path, name: str) -> None:
    state = tmp_path / "card.json"
    card = make_card(tls=False, state_path=state)
    card.card.save_state()
    before = state.read_bytes()
    requests: list[bytes] = []

    async def fake_server(stream: trio.SocketStream) -> None:
        data = await stream.receive_some(65536)
        requests.append(data)
        await stream.send_all(BAD_ANSWERS[name])
        await trio.sleep_forever()  # the card must end the session, not the server

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), fake_server, 0)
            port = listener.socket.getsockname()[1]
            agent = await run_card(card, "127.0.0.1", port)
            nursery.cancel_scope.cancel()
    assert agent.state is AgentState.FAILED and not agent.log.finished
    assert any(e.startswith(("HTTP", "server answered")) for e in agent.log.errors), agent.log.errors
    assert len(requests) == 1 and requests[0].startswith(b"POST /server/adminagent HTTP/1.1")
    assert state.read_bytes() == before


async def test_a_bad_command_script_is_answered_with_a_script_status(tmp_path: Path) -> None:
    """A 200 whose body is no remote APDU script: the card says so (X-Admin-Script-Status) and executes nothing."""
    card = make_card(tls=False)
    posts: list[bytes] = []

    async def fake_server(stream: trio.SocketStream) -> None:
        parser = MessageParser(requests=True)
        answers = [
            b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.globalplatform.card-content-mgt;version=1.0\r\n"
            b"Content-Length: 3\r\n\r\n\xae\x80\x22",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ]
        while answers:
            for message in parser.feed(await stream.receive_some(65536)):
                posts.append(message.header("x-admin-script-status").encode())
                await stream.send_all(answers.pop(0))
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), fake_server, 0)
            agent = await run_card(card, "127.0.0.1", listener.socket.getsockname()[1])
            nursery.cancel_scope.cancel()
    assert agent.log.finished and agent.log.apdus == 0
    assert posts == [b"", b"unknown-application"]
    assert any("bad script" in e for e in agent.log.errors)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("extra", [0, 1])
async def test_a_body_over_the_card_limit_ends_the_session_with_a_trace_event(
    tmp_path: Path, chunked: bool, extra: int
) -> None:
    """A 200 whose body is MAX_BODY + 1 bytes: the card executes nothing, ends the session without reconnecting,
    traces why (error), and keeps its state; exactly MAX_BODY bytes is still taken (here: not a script)."""
    state = tmp_path / "card.json"
    card = make_card(tls=False, state_path=state)
    tracer = Tracer(keep=True)
    card.agent.tracer = tracer
    card.card.save_state()
    before = state.read_bytes()
    posts: list[str] = []
    body = bytes(MAX_BODY + extra)
    head = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.globalplatform.card-content-mgt;version=1.0\r\n"
    answer = (
        render("HTTP/1.1 200 OK", [("Content-Type", SCRIPT_TYPE)], body, chunked=True)
        if chunked
        else f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    )

    async def fake_server(stream: trio.SocketStream) -> None:
        parser = MessageParser(requests=True)
        answers = [answer, b"HTTP/1.1 204 No Content\r\n\r\n"]
        with trio.move_on_after(5):
            while answers:
                data = await stream.receive_some(65536)
                if not data:
                    return
                for message in parser.feed(data):
                    posts.append(message.header("x-admin-script-status"))
                    await stream.send_all(answers.pop(0))
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), fake_server, 0)
            agent = await run_card(card, "127.0.0.1", listener.socket.getsockname()[1])
            nursery.cancel_scope.cancel()
    assert agent.log.apdus == 0 and card.connections == 1
    if extra:
        assert agent.state is AgentState.FAILED and not agent.log.finished
        assert posts == [""]  # the first POST only: nothing is reported for a script that never arrived
        assert any("413" in e for e in agent.log.errors), agent.log.errors
        (event,) = [e for e in tracer.events if e.error]
        assert "limit" in event.summary and "not executed" in event.summary
        assert state.read_bytes() == before
    else:
        assert agent.log.finished and posts == ["", "unknown-application"]  # taken, then found no script
        assert not [e for e in tracer.events if e.error]


# --- kill -9 between LOAD blocks --------------------------------------------------------------------------------


def check_state(path: Path, answered: int = 0) -> dict[str, Any]:
    """The state file parses, and with the load journal it names it is one consistent snapshot: a load in progress
    holds exactly the first `next_block` blocks of the load file data (at least the `answered` blocks the card had
    answered 90 00), a finished load the whole of it."""
    state = json.loads(path.read_text(encoding="utf-8"))
    assert "files" in state
    blob = load_file_data(MODULE, BIG_LOAD)
    gp = state["gp"]
    if gp["loading"] is not None:
        assert gp["loading"]["aid"] == LOAD_FILE.hex()
        assert (path.parent / gp["loading"]["journal"]).exists()  # the state file names a whole journal
    # what a restarted card sees: the state file plus the journal
    registry = GpRegistry()
    registry.bind_state_path(path)
    registry.load_dict(gp)
    if registry.load_in_progress is not None:
        _, next_block, data = registry.load_in_progress
        assert len(data) == min(next_block * LOAD_BLOCK, len(blob))
        assert data == blob[: len(data)]
        assert next_block >= answered, (next_block, answered)
    elif answered:
        assert LOAD_FILE in registry.load_files  # every block answered, the last one too
    if LOAD_FILE in registry.load_files:
        assert registry.load_files[LOAD_FILE].size == len(blob) - 4  # the C4 block's value
    return state


def card_process_main(state: str, port: int, pause: str) -> None:
    """The card process: one admin session; a line on stdout after every state save and every LOAD answered.

    `pause` ("none", or "<moment>:<n>") makes the card stop itself, print "paused" and wait to be killed, at a
    moment of its own progress: `saved:n` right after its nth state save (between two LOAD blocks),
    `answered:n` right after its nth LOAD block was journalled and answered (before the state save that
    follows), `renaming:n` inside the first state file write from its nth save on (the temporary file written,
    not yet renamed). The kill then lands exactly there however fast or loaded the machine is.
    """
    moment, _, number = pause.partition(":")
    at = int(number) if number else 0
    card = make_card(state_path=state)
    save = card.card.save_state
    process = card.registry.process
    replace = os.replace
    count = 0
    loads = 0

    def pause_here() -> None:
        print("paused", flush=True)
        while True:
            signal.pause()  # until the test's SIGKILL

    def save_and_tell() -> None:
        nonlocal count
        save()
        count += 1
        print(f"saved {count}", flush=True)
        if moment == "saved" and count == at:
            pause_here()

    def process_and_tell(apdu: bytes) -> bytes:
        nonlocal loads
        answer = process(apdu)
        if apdu[1] == 0xE8 and answer[-2:] == b"\x90\x00":
            loads += 1
            print(f"answered {loads}", flush=True)  # the server may take this block as done from here on
            if moment == "answered" and loads == at:
                pause_here()
        return answer

    def replace_and_tell(src: Any, dst: Any) -> None:
        if moment == "renaming" and count + 1 >= at and Path(dst) == Path(state):
            pause_here()
        replace(src, dst)

    card.card.save_state = save_and_tell  # type: ignore[method-assign]
    card.registry.process = process_and_tell  # type: ignore[method-assign]
    os.replace = replace_and_tell  # this process is the card's alone
    agent = trio.run(run_card, card, "127.0.0.1", port)
    print("finished" if agent.log.finished else f"failed {agent.log.errors}", flush=True)


def answered_blocks(lines: list[str]) -> int:
    return max((int(line.split()[1]) for line in lines if line.startswith("answered")), default=0)


async def run_card_process(state: Path, port: int, pause: str | None) -> list[str]:
    """Runs the card process until it ends, or, with `pause`, until it paused there, and kills it with SIGKILL."""
    process = await trio.lowlevel.open_process(
        [sys.executable, __file__, "card", str(state), str(port), pause or "none"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert process.stdout is not None and process.stderr is not None
    lines: list[str] = []
    buffer = b""
    killed = False
    async for chunk in process.stdout:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        lines += [line.decode() for line in complete]
        if pause is not None and not killed and "paused" in lines:
            process.send_signal(signal.SIGKILL)
            killed = True
    code = await process.wait()
    errors = (await process.stderr.receive_some(65536)).decode(errors="replace")
    assert (code == -signal.SIGKILL) if pause is not None else code == 0, (code, lines[-3:], errors[-2000:])
    return lines


async def test_kill_9_between_load_blocks_keeps_a_whole_state_file(tmp_path: Path) -> None:
    state = tmp_path / "card.json"
    admin = AdminServer(big_campaign(), results_path=tmp_path / "results.json")
    server = OtaServer(admin, keys=server_keys())
    # where each kill lands, in the card's own progress (card_process_main): the card stops itself there
    moments = ["saved:2", "renaming:3", "saved:5", "answered:20", "saved:40", "answered:60", "renaming:90"]
    moments += ["saved:120"]
    with trio.fail_after(170):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            seen_loading = 0
            for moment in moments:
                lines = await run_card_process(state, port, moment)
                assert "finished" not in lines, "the card finished before it was killed"
                snapshot = check_state(state, answered_blocks(lines))
                seen_loading += snapshot["gp"]["loading"] is not None
            assert seen_loading >= 3  # most kills landed in the middle of the load
            lines = await run_card_process(state, port, None)
            assert lines[-1] == "finished", lines[-5:]
            nursery.cancel_scope.cancel()
    final = check_state(state)
    assert final["gp"]["loading"] is None
    assert APP.hex() in final["gp"]["applications"] and LOAD_FILE.hex() in final["gp"]["load_files"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".card.json.")]  # no stale temporary files
    assert not list(tmp_path.glob("card.json.load-*"))  # the finished load's journal is gone


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "card":
    card_process_main(sys.argv[2], int(sys.argv[3]), sys.argv[4])


async def test_server_drop_mid_script_through_the_bip_channel(tmp_path: Path) -> None:
    """The same resume, with the card's BIP engine and the CP's BIP service carrying the session: the engine
    closes the dropped channel and opens a new one, the agent resumes."""
    from bipsim.cp.bip_service import BipService
    from bipsim.cp.card_driver import CardDriver
    from bipsim.uicc.bip_engine import BipConfig, BipEngine, EngineState, LinkMode
    from bipsim.uicc.sim_transport import SimulatedCard

    from .test_bip_session import DirectBearer

    admin = AdminServer(Campaign.load())
    server = OtaServer(admin, keys=server_keys(), drop_after=2)
    card = make_card(state_path=tmp_path / "card.json")
    tracer = Tracer(keep=True)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            engine = BipEngine(BipConfig(port=port, link_mode=LinkMode.BACKGROUND), card.agent)
            card.card.toolkit = engine
            service = BipService(
                CardDriver(SimulatedCard(card.card), tracer=tracer),
                DirectBearer(),
                tracer=tracer,
                poll_interval=0.05,
            )
            await nursery.start(service.run)
            while not (card.agent.done and not engine.busy):
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    assert card.agent.log.finished, (card.agent.log.errors, engine.failures)
    assert engine.state is EngineState.DONE and engine.sessions == 2
    (progress,) = admin.cards.values()
    assert progress.completed and progress.resumed == 1 and len(progress.log) == 4
    assert card.registry.applications[APP].state == SELECTABLE


def test_a_resumed_card_reposting_an_acknowledged_answer_gets_the_pending_script_again() -> None:
    """The connection broke while the server's next script was on its way: the card never saw its answer
    acknowledged and, resuming, posts it again to the URI it last had. That body answers the script before, not
    the pending one, so the server sends the pending script again and logs each script once (found by the
    line-drop scenario: a lost RAM LOAD script was logged as answered, and INSTALL then failed with 6A88)."""
    admin = AdminServer(Campaign.load())
    headers = {
        "x-admin-protocol": PROTOCOL,
        "x-admin-from": "//se-id/iccid/8988211000000000001",
        "content-type": RESPONSE_TYPE,
    }

    def request(target: str, body: bytes = b"", **extra: str) -> HttpRequest:
        return HttpRequest("POST", target, {**headers, **extra}, body)

    first = admin.handle(request("/server/adminagent"))
    first_uri = dict(first.headers)["X-Admin-Next-URI"]
    answer = encode_response_script(
        [b"\x90\x00"] * len(admin.cards["iccid:8988211000000000001"].plan.scripts[0])
    )
    second = admin.handle(request(first_uri, answer))
    assert second.status == 200
    pending = admin.cards["iccid:8988211000000000001"].awaiting
    assert pending == 1
    # the second script is lost with the connection; the card resumes with its last answer
    again = admin.handle(request(first_uri, answer, **{"x-admin-resume": "true"}))
    assert again.status == 200 and again.body == second.body
    progress = admin.cards["iccid:8988211000000000001"]
    assert [entry["script"] for entry in progress.log] == [0]
    assert progress.awaiting == 1 and progress.resumed == 1
    # the answer to the resent script, posted where the resent script said, is logged as script 1
    third = admin.handle(request(dict(again.headers)["X-Admin-Next-URI"], answer))
    assert third.status in (200, 204)
    assert [entry["script"] for entry in progress.log] == [0, 1]
