"""The fuzz properties of HTTP/1.1 as the admin protocol speaks it over h11: the card's client
(uicc/admin_http.py AdminHttpClient, and the OTA agent around it, uicc/ota_agent.py) and the OTA server's
connection (ota/http_connection.py ServerConnection, driven as ota/server.py drives it). Kept apart from targets.py
so that the other targets do not depend on the HTTP modules."""

from __future__ import annotations

from collections.abc import Sequence

from bipsim.ota.http_connection import HttpRequest, Refusal, ServerConnection
from bipsim.uicc.admin_http import AdminHttpClient, HttpFailure
from bipsim.uicc.gp_registry import GpRegistry
from bipsim.uicc.http_limits import LIMITS
from bipsim.uicc.ota_agent import OtaAgent
from tests.fuzz.targets import make_card

PATH = "/server/adminagent"


def admin_client(reads: Sequence[bytes]) -> None:
    """AdminHttpClient after a POST, on a server's bytes: responses, or HttpFailure with a 4xx/5xx status; the
    next POST goes out after each kept-alive response."""
    client = AdminHttpClient()
    client.request(PATH, [("Host", "ota")], b"")
    for data in reads:
        try:
            responses = client.receive(data)
        except HttpFailure as exc:
            assert 400 <= exc.status < 600, exc.status
            return
        for response in responses:
            assert len(response.body) <= LIMITS.body_bytes
            if not response.keep_alive:
                return
            client.request(PATH, [("Host", "ota")], b"")


def server_connection(reads: Sequence[bytes]) -> None:
    """ServerConnection on a client's bytes, then its end of stream: requests (answered 200) or a refusal with a
    4xx/5xx status (answered, then the connection is closed, as ota/server.py does)."""
    conn = ServerConnection()
    for data in [*reads, b""]:
        conn.receive(data)
        while True:
            event = conn.next_event()
            if event is None:
                break
            if isinstance(event, Refusal):
                assert 400 <= event.status < 600, event
                conn.refuse(event, [("Server", "bipsim")])
                return
            assert isinstance(event, HttpRequest)
            assert len(event.body) <= LIMITS.body_bytes
            conn.answer(
                200, [("Content-Type", "application/vnd.globalplatform.card-content-mgt;version=1.0")]
            )
        if conn.peer_closed:
            return
    conn.timed_out()


def ota_agent(reads: Sequence[bytes]) -> list[str]:
    """The card's OTA agent without TLS, on a server's bytes (remote APDU scripts included): data_received never
    raises and never ends the session by an internal error (a bug of the card's code), and the card still
    answers afterwards."""
    card = make_card()
    registry = GpRegistry()
    agent = OtaAgent(card, registry, host="127.0.0.1", identity=b"card", psk=bytes(16), tls=False)
    agent.connection_made()
    for data in reads:
        out = agent.data_received(data)
        assert isinstance(out, bytes)
    internal = [error for error in agent.log.errors if error.startswith("internal:")]
    assert not internal, internal
    assert card.process(bytes.fromhex("00A40004023F00"))[-2] == 0x61
    return agent.log.errors
