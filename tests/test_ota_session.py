"""The OTA session (GlobalPlatform Amd B): a full one in one process (the card's BIP engine and OTA agent, our PSK-TLS client, the CP's BIP service,
and the OTA server (sslpsk3 + ssl) over loopback: a file update and an applet install end with 204); and the session
state machines of both ends (docs/protocols.md, "The OTA server"), row by row, without an event loop."""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import replace
from enum import Enum
from itertools import product
from pathlib import Path
from typing import TypeVar

import h11
import pytest
import trio

from bipsim.cp.bip_service import BipService
from bipsim.cp.card_driver import CardDriver
from bipsim.ota.admin import (
    CARD_TRANSITIONS,
    PROTOCOL,
    RESPONSE_TYPE,
    AdminServer,
    CardEvent,
    CardProgress,
    CardState,
)
from bipsim.ota.campaign import Campaign, CardPlan
from bipsim.ota.http_connection import (
    CONNECTION_TRANSITIONS,
    ConnEvent,
    ConnState,
    HttpRequest,
    Refusal,
    ServerConnection,
)
from bipsim.ota.loadgen import make_card
from bipsim.ota.server import OtaServer, psk_context
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from bipsim.uicc.bip_engine import BipConfig, BipEngine, EngineState, LinkMode
from bipsim.uicc.card import SimCard
from bipsim.uicc.gp_registry import SELECTABLE, GpRegistry
from bipsim.uicc.http_limits import LIMITS
from bipsim.uicc.ota_agent import AGENT_TRANSITIONS, AgentEvent, AgentState, OtaAgent
from bipsim.uicc.profile import load_profile
from bipsim.uicc.remote_apdu import encode_command_script, encode_response_script
from bipsim.uicc.sim_transport import SimulatedCard
from bipsim.uicc.transitions import IllegalTransition, TransitionTable

from .test_bip_session import DirectBearer

S = TypeVar("S", bound=Enum)
E = TypeVar("E", bound=Enum)

APP = bytes.fromhex("A0000005590010FF01")


async def run_ota(
    tmp_path: Path, *, psk: bytes | None = None, tls: bool = True
) -> tuple[SimCard, GpRegistry, OtaAgent, AdminServer, BipEngine]:
    profile = load_profile()
    keys = {profile.psk_identity: profile.psk}
    admin = AdminServer(Campaign.load(), results_path=tmp_path / "results.json")
    server = OtaServer(admin, keys=keys if tls else None)
    tracer = Tracer(keep=True)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        registry = GpRegistry()
        card = SimCard(profile, state_path=tmp_path / "card.json")
        card.attach_state("gp", registry)
        agent = OtaAgent(
            card,
            registry,
            host="127.0.0.1",
            identity=profile.psk_identity.encode(),
            psk=psk or profile.psk,
            tls=tls,
        )
        engine = BipEngine(BipConfig(port=port, link_mode=LinkMode.BACKGROUND), agent)
        card.toolkit = engine
        service = BipService(CardDriver(SimulatedCard(card), tracer=tracer), DirectBearer(), tracer=tracer)
        with trio.fail_after(30):
            await nursery.start(service.run)
            while engine.busy or not service.session_finished.is_set():
                await service.session_finished.wait()
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    return card, registry, agent, admin, engine


async def test_file_update_and_applet_install(tmp_path: Path) -> None:
    card, registry, agent, admin, engine = await run_ota(tmp_path)
    assert agent.log.finished, agent.log.errors
    assert engine.state is EngineState.DONE
    spn = card.fs.usim.children[0x6F46].data
    assert bytes(spn[1:11]) == b"BIPSIM-OTA"
    assert registry.applications[APP].state == SELECTABLE
    results = admin.results()
    (card_result,) = results.values()
    assert card_result["completed"] and card_result["all_ok"], card_result
    # persisted: a fresh card loads the same state
    again = SimCard(load_profile(), state_path=tmp_path / "card.json")
    reloaded = GpRegistry()
    again.attach_state("gp", reloaded)
    assert APP in reloaded.applications and bytes(again.fs.usim.children[0x6F46].data[1:11]) == b"BIPSIM-OTA"


async def test_wrong_psk_leaves_the_card_untouched(tmp_path: Path) -> None:
    card, registry, agent, admin, engine = await run_ota(tmp_path, psk=bytes(16))
    assert not agent.log.finished and any("TLS" in e for e in agent.log.errors)
    assert not registry.applications and bytes(card.fs.usim.children[0x6F46].data[1:7]) == b"bipsim"
    assert not admin.cards or not any(p.log for p in admin.cards.values())


async def test_plain_http_session(tmp_path: Path) -> None:
    _, registry, agent, _, _ = await run_ota(tmp_path, tls=False)
    assert agent.log.finished and APP in registry.applications


# --- the session state machines, without an event loop ------------------------------------------------------------
# Each table is checked whole (every (state, event) pair is its row or IllegalTransition), and each row, legal or
# illegal, is caused through the sans-IO core that owns it, with the protocol's answer checked.


def _whole_table(table: TransitionTable[S, E], states: Iterable[S], events: Iterable[E]) -> set[tuple[S, E]]:
    """Every pair is a row or raises IllegalTransition; returns the illegal pairs."""
    illegal: set[tuple[S, E]] = set()
    for state, event in product(states, events):
        if (state, event) in table.rows:
            assert table.next(state, event) is table.rows[(state, event)]
        else:
            with pytest.raises(IllegalTransition):
                table.next(state, event)
            illegal.add((state, event))
    return illegal


def test_every_pair_of_each_table_is_a_row_or_illegal() -> None:
    assert len(_whole_table(AGENT_TRANSITIONS, AgentState, AgentEvent)) == 5 * 9 - len(AGENT_TRANSITIONS.rows)
    assert len(_whole_table(CONNECTION_TRANSITIONS, ConnState, ConnEvent)) == 4 * 4 - 6
    assert len(_whole_table(CARD_TRANSITIONS, CardState, CardEvent)) == 4 * 6 - 9


# --- the server's connection (ota/http_connection.py) ---------------------------------------------------------

POST_HEAD = (
    "POST /server/adminagent HTTP/1.1\r\nHost: x\r\n"
    f"X-Admin-Protocol: {PROTOCOL}\r\nX-Admin-From: //se-id/iccid/1\r\n"
)


def request_bytes(body: bytes = b"", extra: str = "") -> bytes:
    return f"{POST_HEAD}{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_connection_open_request_answer_open() -> None:
    conn = ServerConnection()
    conn.receive(request_bytes()[:10])
    assert conn.next_event() is None and conn.reading and conn.state is ConnState.OPEN
    conn.receive(request_bytes()[10:])
    request = conn.next_event()
    assert isinstance(request, HttpRequest) and request.method == "POST"
    assert conn.state is ConnState.ANSWERING  # (OPEN, REQUEST)
    out = conn.answer(200, [], b"abc")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nabc")
    assert conn.state is ConnState.OPEN  # (ANSWERING, ANSWER)


def test_connection_204_ends_the_session_and_a_request_after_it_is_refused_400() -> None:
    conn = ServerConnection()
    conn.receive(request_bytes())
    assert isinstance(conn.next_event(), HttpRequest)
    assert conn.answer(204, []).startswith(b"HTTP/1.1 204 No Content\r\n")
    assert conn.state is ConnState.ENDED  # (ANSWERING, END)
    conn.receive(request_bytes())
    refusal = conn.next_event()  # (ENDED, REQUEST) is illegal: answered 400
    assert isinstance(refusal, Refusal) and refusal.status == 400 and "204" in refusal.reason
    out = conn.refuse(refusal, [])
    assert out.startswith(b"HTTP/1.1 400 ") and b"connection: close" in out.lower()
    assert conn.state is ConnState.CLOSING  # (ENDED, CLOSE)
    conn.receive(request_bytes())
    assert conn.next_event() is None  # nothing more is read


def test_connection_refusal_before_a_whole_request_closes() -> None:
    conn = ServerConnection()
    conn.receive(b"HELLO\r\n\r\n")
    refusal = conn.next_event()
    assert isinstance(refusal, Refusal) and refusal.status == 400
    conn.refuse(refusal, [])
    assert conn.state is ConnState.CLOSING  # (OPEN, CLOSE)


def test_connection_answer_with_close() -> None:
    conn = ServerConnection()
    conn.receive(request_bytes())
    assert isinstance(conn.next_event(), HttpRequest)
    assert b"Connection: close" in conn.answer(404, [], b"no", close=True)
    assert conn.state is ConnState.CLOSING  # (ANSWERING, CLOSE)


def test_connection_timeout_after_the_204_with_half_a_request_is_408() -> None:
    conn = ServerConnection()
    conn.receive(request_bytes())
    conn.next_event()
    conn.answer(204, [])
    assert conn.timed_out() is None  # nothing begun: closed silently
    conn.receive(b"POST /")
    assert conn.next_event() is None
    refusal = conn.timed_out()
    assert refusal is not None and refusal.status == 408
    conn.refuse(refusal, [])
    assert conn.state is ConnState.CLOSING


def test_the_client_asking_to_close_closes() -> None:
    conn = ServerConnection()
    conn.receive(request_bytes(extra="Connection: close\r\n"))
    conn.next_event()
    conn.answer(200, [], b"x")
    assert conn.state is ConnState.CLOSING


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (request_bytes(extra=f"X-Big: {'a' * LIMITS.header_bytes}\r\n"), 431),
        (f"{POST_HEAD}Content-Length: {LIMITS.body_bytes + 1}\r\n\r\n".encode(), 413),
        (
            f"{POST_HEAD}Transfer-Encoding: chunked\r\n\r\n{LIMITS.chunk_bytes + 1:X}\r\n".encode()
            + bytes(LIMITS.chunk_bytes + 1),
            413,
        ),
        (f"{POST_HEAD}\r\n".encode(), 411),
        (request_bytes().replace(b"HTTP/1.1", b"HTTP/2.0", 1), 505),
        (request_bytes(extra="Content-Length: 1\r\n"), 400),
    ],
    ids=["headers", "body", "chunk", "no length", "version", "two lengths"],
)
def test_connection_limits_and_framing_rules(data: bytes, status: int) -> None:
    conn = ServerConnection()
    conn.receive(data)
    refusal = conn.next_event()
    assert isinstance(refusal, Refusal) and refusal.status == status, refusal
    assert conn.refuse(refusal, []).startswith(f"HTTP/1.1 {status} ".encode())
    assert conn.state is ConnState.CLOSING


def test_a_chunked_body_within_the_limits_is_taken_whole() -> None:
    conn = ServerConnection()
    body = bytes(range(256)) * 300  # two chunks, the first at the chunk limit
    chunks = f"{LIMITS.chunk_bytes:X}\r\n".encode() + body[: LIMITS.chunk_bytes] + b"\r\n"
    rest = body[LIMITS.chunk_bytes :]
    chunks += f"{len(rest):X}\r\n".encode() + rest + b"\r\n0\r\n\r\n"
    conn.receive(f"{POST_HEAD}Transfer-Encoding: chunked\r\n\r\n".encode() + chunks)
    request = conn.next_event()
    assert isinstance(request, HttpRequest) and request.body == body


def test_the_last_request_of_a_connection_is_answered_with_close() -> None:
    conn = ServerConnection()
    for number in range(1, LIMITS.requests_per_connection + 1):
        conn.receive(request_bytes())
        assert isinstance(conn.next_event(), HttpRequest)
        out = conn.answer(200, [], b"x")
        assert (b"Connection: close" in out) == (number == LIMITS.requests_per_connection)
    assert conn.state is ConnState.CLOSING


def test_over_capacity_is_answered_503() -> None:
    conn = ServerConnection(over_capacity=True)
    conn.receive(request_bytes())
    refusal = conn.next_event()
    assert isinstance(refusal, Refusal) and refusal.status == 503
    assert conn.refuse(refusal, []).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")


# --- the server's card sessions (ota/admin.py) ----------------------------------------------------------------

ICCID = "8988211000000000077"
SCRIPTS = [[bytes.fromhex("00A40004023F00")], [bytes.fromhex("80F24002024F00")]]


def admin_with(scripts: list[list[bytes]], **limits: int) -> AdminServer:
    plan = CardPlan("*", None, scripts=[list(s) for s in scripts], kinds=["apdu"] * len(scripts))
    return AdminServer(Campaign([plan]), limits=replace(LIMITS, **limits))


def card_post(
    admin: AdminServer,
    body: bytes = b"",
    target: str = "/server/adminagent",
    *,
    resume: bool = False,
    iccid: str = ICCID,
) -> tuple[int, bytes, str]:
    headers = {
        "x-admin-protocol": PROTOCOL,
        "x-admin-from": f"//se-id/iccid/{iccid}",
        "content-type": RESPONSE_TYPE,
    }
    if resume:
        headers["x-admin-resume"] = "true"
    answer = admin.handle(HttpRequest("POST", target, headers, body))
    return answer.status, answer.body, dict(answer.headers).get("X-Admin-Next-URI", "")


def answer_to(script: list[bytes]) -> bytes:
    return encode_response_script([b"\x90\x00"] * len(script))


def progress_of(admin: AdminServer, iccid: str = ICCID) -> CardProgress:
    return admin.cards[f"iccid:{iccid}"]


def test_card_new_poll_then_send_awaiting() -> None:
    admin = admin_with(SCRIPTS)
    status, body, uri = card_post(admin)  # (NEW, POLL) -> READY, (READY, SEND) -> AWAITING
    assert status == 200 and body == encode_command_script(SCRIPTS[0]) and uri
    assert progress_of(admin).state is CardState.AWAITING and progress_of(admin).awaiting == 0


def test_card_new_repost_starts_the_plan() -> None:
    admin = admin_with(SCRIPTS)
    status, body, _ = card_post(admin, answer_to(SCRIPTS[0]), "/server/adminagent?seq=9", resume=True)
    assert status == 200 and body == encode_command_script(SCRIPTS[0])  # (NEW, REPOST)


def test_card_new_stray_is_409_and_not_remembered() -> None:
    admin = admin_with(SCRIPTS)
    status, body, _ = card_post(admin, answer_to(SCRIPTS[0]), "/server/adminagent?seq=9")
    assert status == 409 and b"new" in body  # (NEW, STRAY) illegal
    assert admin.cards == {}


def test_card_empty_plan_is_completed_at_once() -> None:
    admin = admin_with([])
    assert card_post(admin)[0] == 204  # (READY, EXHAUSTED)
    assert progress_of(admin).state is CardState.COMPLETED


def test_card_awaiting_poll_answer_repost_stray() -> None:
    admin = admin_with(SCRIPTS)
    _, first, uri = card_post(admin)
    status, again, uri2 = card_post(admin)  # (AWAITING, POLL): the same script again
    assert status == 200 and again == first and uri2 != uri
    status, body, _ = card_post(admin, answer_to(SCRIPTS[0]), uri)  # posted to the old URI, not resumed
    assert status == 409 and progress_of(admin).awaiting == 0  # (AWAITING, STRAY) illegal, nothing changed
    status, body, uri3 = card_post(admin, answer_to(SCRIPTS[0]), uri2)  # (AWAITING, ANSWER)
    assert status == 200 and body == encode_command_script(SCRIPTS[1])
    status, body, _ = card_post(admin, answer_to(SCRIPTS[0]), uri2, resume=True)  # (AWAITING, REPOST)
    assert status == 200 and body == encode_command_script(SCRIPTS[1])
    assert [entry["script"] for entry in progress_of(admin).log] == [0]


def test_card_completed_poll_repost_stray() -> None:
    admin = admin_with(SCRIPTS[:1])
    _, _, uri = card_post(admin)
    assert card_post(admin, answer_to(SCRIPTS[0]), uri)[0] == 204  # (AWAITING, ANSWER), then EXHAUSTED
    assert card_post(admin)[0] == 204  # (COMPLETED, POLL)
    assert card_post(admin, answer_to(SCRIPTS[0]), uri, resume=True)[0] == 204  # (COMPLETED, REPOST)
    assert card_post(admin, answer_to(SCRIPTS[0]), uri)[0] == 409  # (COMPLETED, STRAY) illegal
    assert progress_of(admin).completed and len(progress_of(admin).log) == 1


def test_the_card_table_forgets_completed_cards_first_then_says_which_script_it_drops() -> None:
    admin = admin_with(SCRIPTS[:1], cards=2)
    tracer = Tracer(keep=True)
    admin.tracer = tracer
    _, _, uri = card_post(admin, iccid="1")
    card_post(admin, answer_to(SCRIPTS[0]), uri, iccid="1")  # card 1 completed
    card_post(admin, iccid="2")  # card 2 awaiting script 0
    card_post(admin, iccid="3")  # full: card 1 (completed) goes, quietly
    assert set(admin.cards) == {"iccid:2", "iccid:3"}
    assert not [e for e in tracer.events if e.error]
    card_post(admin, iccid="4")  # full, none completed: card 2, seen least recently, goes with a trace event
    assert set(admin.cards) == {"iccid:3", "iccid:4"} and admin.forgotten == 2
    (event,) = [e for e in tracer.events if e.error]
    assert event.kind == Kind.APP_EVENT and event.fields == {
        "card": "iccid:2",
        "state": "awaiting an answer",
        "pending_script": 0,
    }


# --- the card's agent (uicc/ota_agent.py) ---------------------------------------------------------------------

SCRIPT_TYPE_HEADER = "Content-Type: application/vnd.globalplatform.card-content-mgt;version=1.0\r\n"


def script_answer(extra: str = "") -> bytes:
    script = encode_command_script([bytes.fromhex("00A4000C023F00")])
    return (
        f"HTTP/1.1 200 OK\r\n{SCRIPT_TYPE_HEADER}{extra}Content-Length: {len(script)}\r\n\r\n".encode()
        + script
    )


def plain_agent(tmp_path: Path) -> tuple[OtaAgent, Tracer]:
    load = make_card(tls=False, state_path=tmp_path / "card.json")
    tracer = Tracer(keep=True)
    load.agent.tracer = tracer
    return load.agent, tracer


def test_agent_plain_session_rows(tmp_path: Path) -> None:
    agent, tracer = plain_agent(tmp_path)
    assert agent.connection_made().startswith(b"POST ")  # (IDLE, CONNECT_PLAIN)
    assert agent.state is AgentState.WAIT_RESPONSE
    assert agent.data_received(script_answer()).startswith(b"POST ")  # (WAIT_RESPONSE, SCRIPT)
    assert agent.state is AgentState.WAIT_RESPONSE and agent.log.apdus == 1
    assert agent.data_received(b"HTTP/1.1 204 No Content\r\n\r\n") == b""  # (WAIT_RESPONSE, NO_CONTENT)
    assert agent.state is AgentState.DONE and agent.log.finished
    assert agent.connection_made().startswith(b"POST ")  # (DONE, CONNECT_PLAIN): the next trigger's session
    assert agent.data_received(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n") == b""
    assert agent.state is AgentState.FAILED  # (WAIT_RESPONSE, FAIL)
    (event,) = [e for e in tracer.events if e.error]
    assert event.kind == Kind.HTTP_RESPONSE and event.fields and event.fields["status"] == 500
    assert agent.connection_made().startswith(b"POST ")  # (FAILED, CONNECT_PLAIN)


def test_agent_close_after_a_script_resumes_on_the_next_connection(tmp_path: Path) -> None:
    agent, _ = plain_agent(tmp_path)
    agent.connection_made()
    assert agent.data_received(script_answer("Connection: close\r\n")) == b""  # (WAIT_RESPONSE, CLOSE_AFTER)
    assert agent.state is AgentState.IDLE and agent.wants_reconnect and agent.log.apdus == 1
    assert (
        agent.data_received(b"HTTP/1.1 204 No Content\r\n\r\n") == b""
    )  # ignored: the connection is closing
    agent.connection_lost("closed by the server")  # (IDLE, LOST)
    again = agent.connection_made()
    assert b"X-Admin-Resume: true" in again and again.endswith(b"\x90\x00\x00\x00")  # the answer, resumed


def test_agent_lost_and_giving_up(tmp_path: Path) -> None:
    agent, _ = plain_agent(tmp_path)
    agent.connection_made()
    agent.connection_lost("dropped")  # (WAIT_RESPONSE, LOST)
    assert agent.state is AgentState.IDLE and agent.wants_reconnect
    for _ in range(agent.max_reconnects - 1):
        agent.connection_lost("connect failed")  # (IDLE, LOST)
    assert agent.state is AgentState.IDLE
    agent.connection_lost("connect failed")  # (IDLE, GIVE_UP)
    assert agent.state is AgentState.FAILED and not agent.wants_reconnect


def test_agent_tls_rows(tmp_path: Path) -> None:
    load = make_card(tls=True, state_path=tmp_path / "card.json")
    agent = load.agent
    tracer = Tracer(keep=True)
    agent.tracer = tracer
    assert agent.connection_made()[:1] == b"\x16"  # (IDLE, CONNECT_TLS): a ClientHello
    assert agent.state is AgentState.HANDSHAKE
    agent.connection_lost("dropped")  # (HANDSHAKE, LOST)
    assert agent.state is AgentState.IDLE
    agent.connection_made()
    agent.data_received(b"\x15\x03\x03\x00\x02\x02\x28")  # a fatal handshake_failure alert: (HANDSHAKE, FAIL)
    assert agent.state is AgentState.FAILED
    (event,) = [e for e in tracer.events if e.error]
    assert event.kind == Kind.TLS_ALERT and event.fields and event.fields["description"] == 40
    for _ in range(agent.max_reconnects + 1):
        agent.connection_made()
        agent.connection_lost("dropped")
    assert agent.state is AgentState.FAILED  # (HANDSHAKE, GIVE_UP)


def test_agent_a_channel_opened_during_a_session_ends_it(tmp_path: Path) -> None:
    """(WAIT_RESPONSE, CONNECT_PLAIN) is illegal: the session ends with an error trace event, nothing is sent."""
    agent, tracer = plain_agent(tmp_path)
    agent.connection_made()
    assert agent.connection_made() == b""
    assert agent.state is AgentState.FAILED
    (event,) = [e for e in tracer.events if e.error]
    assert event.kind == Kind.APP_ERROR and event.fields == {"state": "waiting for the server"}


def test_agent_http_client_keeps_h11_framing_per_request(tmp_path: Path) -> None:
    """The card's requests are what h11 reads as requests (an independent check of our framing)."""
    agent, _ = plain_agent(tmp_path)
    server = h11.Connection(h11.SERVER)
    server.receive_data(agent.connection_made())
    request = server.next_event()
    assert isinstance(request, h11.Request) and request.method == b"POST"
    assert isinstance(server.next_event(), h11.EndOfMessage)


class MemoryServer:
    """The OTA server's cores without an event loop: OpenSSL through memory BIOs (the server's PSK context), the
    HTTP connection core and the admin core."""

    def __init__(self, admin: AdminServer, keys: dict[str, bytes]) -> None:
        self.admin = admin
        self.keys = keys
        self.statuses: list[int] = []

    def connect(self) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = psk_context(self.keys).wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.http = ServerConnection()

    def receive(self, data: bytes) -> bytes:
        self.incoming.write(data)
        try:
            self.tls.do_handshake()
            plain = self.tls.read(1 << 20)
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            plain = b""
        if plain:
            self.http.receive(plain)
            event = self.http.next_event()
            assert isinstance(event, HttpRequest), event
            answer = self.admin.handle(event)
            self.statuses.append(answer.status)
            self.tls.write(self.http.answer(answer.status, answer.headers, answer.body, close=answer.close))
        return self.outgoing.read()


def run_memory_session(agent: OtaAgent, server: MemoryServer) -> None:
    server.connect()
    data = agent.connection_made()
    while data and not agent.done:
        data = agent.data_received(server.receive(data))


def test_agent_tls_session_against_the_server_cores_without_an_event_loop(tmp_path: Path) -> None:
    """(HANDSHAKE, SECURED), (WAIT_RESPONSE, SCRIPT) for each script of the built-in campaign, (WAIT_RESPONSE,
    NO_CONTENT); then the next trigger's session, (DONE, CONNECT_TLS), finds nothing pending: 204 at once."""
    load = make_card(tls=True, state_path=tmp_path / "card.json")
    profile = load.card.profile
    server = MemoryServer(AdminServer(Campaign.load()), {profile.psk_identity: profile.psk})
    run_memory_session(load.agent, server)
    assert load.agent.state is AgentState.DONE and load.agent.log.finished, load.agent.log.errors
    assert server.statuses == [200, 200, 200, 200, 204]
    assert load.registry.applications[APP].state == SELECTABLE
    run_memory_session(load.agent, server)
    assert load.agent.state is AgentState.DONE and server.statuses[-1] == 204
    (progress,) = server.admin.cards.values()
    assert progress.state is CardState.COMPLETED and len(progress.log) == 4


def test_agent_gives_up_while_waiting_for_the_server(tmp_path: Path) -> None:
    agent, _ = plain_agent(tmp_path)
    for _ in range(agent.max_reconnects):
        agent.connection_made()
        agent.connection_lost("dropped")  # (WAIT_RESPONSE, LOST)
    agent.connection_made()
    agent.connection_lost("dropped")  # (WAIT_RESPONSE, GIVE_UP)
    assert agent.state is AgentState.FAILED and not agent.wants_reconnect
