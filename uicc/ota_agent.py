"""The card's OTA agent: the BipClient that runs a GlobalPlatform Amendment B (SCP81) admin session over the BIP
channel: TLS 1.2 PSK with the card as client (uicc/tls_psk_client.py), the HTTP POST loop with the X-Admin-*
headers, and the execution of the remote APDUs it receives (GP commands by the registry, file commands by the
card's APDU processor). The card state is saved after every APDU (a write only when it changed; LOAD data goes to
an append-only journal) and made durable before the response script is posted, so a session killed mid-way loses
nothing already acknowledged; a session that loses its connection asks to reconnect and resumes (X-Admin-Resume).
HTTP is h11's (uicc/admin_http.py) within the limits of uicc/http_limits.py; the session's state moves only through
AGENT_TRANSITIONS, and whatever the server sends, a failure ends the session with one error trace event and leaves
the card's persistent state as it was (docs/protocols.md, "The OTA server").

The card's randoms (TLS client_random, CBC IVs) come from `random`: os.urandom, or, when the environment sets
BIPSIM_CARD_SEED (hex), a deterministic stream from that seed, so that a recorded run can be replayed byte for byte
against a recorded server (`bipsim trace replay --as server`). A seed is for tests and replay, never for a real card.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.admin_http import AdminHttpClient, AdminResponse, HttpFailure
from bipsim.uicc.card import SimCard
from bipsim.uicc.gp_registry import GpRegistry
from bipsim.uicc.http_limits import LIMITS, HttpLimits
from bipsim.uicc.remote_apdu import RemoteApduError, decode_command_script, encode_response_script
from bipsim.uicc.tls_psk_client import TlsAlert, TlsError, TlsPskClient
from bipsim.uicc.transitions import IllegalTransition, TransitionTable

PROTOCOL = "globalplatform-remote-admin/1.0"
REQUEST_TYPE = "application/vnd.globalplatform.card-content-mgt-response;version=1.0"
SCRIPT_TYPE = "application/vnd.globalplatform.card-content-mgt;version=1.0"
SEED_ENV = "BIPSIM_CARD_SEED"


class SeededRandom:
    """A deterministic byte stream: SHA-256(seed || counter) blocks, consumed in order (not for real keys)."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self._counter = 0
        self._buffer = b""

    def __call__(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._buffer += hashlib.sha256(self.seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def card_random(seed: str | None = None) -> Callable[[int], bytes]:
    """The card's random source: seeded from `seed` or $BIPSIM_CARD_SEED when given, else os.urandom.

    The seed is hex; other text is taken as its UTF-8 bytes, so that no seed value can stop the card.
    """
    text = (seed if seed is not None else os.environ.get(SEED_ENV, "")).strip()
    if not text:
        return os.urandom
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = text.encode()
    return SeededRandom(value)


class AgentState(Enum):
    IDLE = "idle"
    HANDSHAKE = "tls handshake"
    WAIT_RESPONSE = "waiting for the server"
    DONE = "done"
    FAILED = "failed"


class AgentEvent(Enum):
    CONNECT_TLS = "channel open, TLS"  # connection_made with TLS: the ClientHello goes out
    CONNECT_PLAIN = "channel open, plain HTTP"  # connection_made without TLS: the first POST goes out
    SECURED = "TLS handshake done"  # the first POST goes out
    SCRIPT = "200 with a command script"  # executed (or refused by script status); its POST goes out
    NO_CONTENT = "204 No Content"  # nothing pending: the admin session is complete
    CLOSE_AFTER = "200 with Connection: close"  # executed; the answer goes out on a new connection (resume)
    FAIL = "failure"  # TLS failure, an error status, a malformed answer, a limit passed
    LOST = "connection lost"  # the channel dropped: reconnect and resume
    GIVE_UP = "connection lost too often"


# Amd B section 3 as the card runs it: one row per (state, event); everything else is IllegalTransition
AGENT_TRANSITIONS: TransitionTable[AgentState, AgentEvent] = TransitionTable(
    "OTA agent",
    {
        (AgentState.IDLE, AgentEvent.CONNECT_TLS): AgentState.HANDSHAKE,
        (AgentState.IDLE, AgentEvent.CONNECT_PLAIN): AgentState.WAIT_RESPONSE,
        (AgentState.IDLE, AgentEvent.LOST): AgentState.IDLE,  # a connect that failed
        (AgentState.IDLE, AgentEvent.GIVE_UP): AgentState.FAILED,
        (AgentState.HANDSHAKE, AgentEvent.SECURED): AgentState.WAIT_RESPONSE,
        (AgentState.HANDSHAKE, AgentEvent.FAIL): AgentState.FAILED,
        (AgentState.HANDSHAKE, AgentEvent.LOST): AgentState.IDLE,
        (AgentState.HANDSHAKE, AgentEvent.GIVE_UP): AgentState.FAILED,
        (AgentState.WAIT_RESPONSE, AgentEvent.SCRIPT): AgentState.WAIT_RESPONSE,
        (AgentState.WAIT_RESPONSE, AgentEvent.NO_CONTENT): AgentState.DONE,
        (AgentState.WAIT_RESPONSE, AgentEvent.CLOSE_AFTER): AgentState.IDLE,
        (AgentState.WAIT_RESPONSE, AgentEvent.FAIL): AgentState.FAILED,
        (AgentState.WAIT_RESPONSE, AgentEvent.LOST): AgentState.IDLE,
        (AgentState.WAIT_RESPONSE, AgentEvent.GIVE_UP): AgentState.FAILED,
        # the next trigger opens a new channel: a new session
        (AgentState.DONE, AgentEvent.CONNECT_TLS): AgentState.HANDSHAKE,
        (AgentState.DONE, AgentEvent.CONNECT_PLAIN): AgentState.WAIT_RESPONSE,
        (AgentState.FAILED, AgentEvent.CONNECT_TLS): AgentState.HANDSHAKE,
        (AgentState.FAILED, AgentEvent.CONNECT_PLAIN): AgentState.WAIT_RESPONSE,
    },
)


@dataclass
class AgentLog:
    scripts: int = 0
    apdus: int = 0
    statuses: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    finished: bool = False


class OtaAgent:
    """One admin session per trigger; `log` says what happened, `state` moves only through AGENT_TRANSITIONS."""

    def __init__(
        self,
        card: SimCard,
        registry: GpRegistry,
        *,
        host: str,
        identity: bytes,
        psk: bytes,
        tls: bool = True,
        path: str = "/server/adminagent",
        max_reconnects: int = 3,
        random: Callable[[int], bytes] | None = None,
        tracer: Tracer = NULL_TRACER,
        limits: HttpLimits = LIMITS,
    ) -> None:
        self.card = card
        self.tracer = tracer
        # one source for the agent's whole life: a reconnect draws fresh (but, when seeded, reproducible) randoms
        self.random = random if random is not None else card_random()
        self.registry = registry
        self.host = host
        self.identity = identity
        self.psk = psk
        self.tls_enabled = tls
        self.path = path
        self.max_reconnects = max_reconnects
        self.limits = limits
        self._state = AgentState.IDLE
        self.log = AgentLog()
        self._tls: TlsPskClient | None = None
        self._http = AdminHttpClient(limits)
        self._next_uri = path
        self._resume = False
        self._lost = 0
        self._unacknowledged: bytes | None = None  # the last response script posted and not yet answered
        self._planned_close = False  # the server ended the connection after its answer (Connection: close)

    @property
    def state(self) -> AgentState:
        return self._state

    def _move(self, event: AgentEvent) -> None:
        self._state = AGENT_TRANSITIONS.next(self._state, event)

    @classmethod
    def of_profile(
        cls,
        card: SimCard,
        registry: GpRegistry,
        *,
        host: str | None = None,
        tls: bool | None = None,
        tracer: Tracer = NULL_TRACER,
    ) -> OtaAgent:
        """The agent the card's profile describes (server host, PSK identity and key, TLS, admin path); `host`
        and `tls` override the profile's, e.g. for a second channel to another server."""
        profile = card.profile
        return cls(
            card,
            registry,
            host=profile.ota_host if host is None else host,
            identity=profile.psk_identity.encode(),
            psk=profile.psk,
            tls=profile.ota_tls if tls is None else tls,
            path=profile.admin_path,
            tracer=tracer,
        )

    # --- BipClient ---------------------------------------------------------------------------------------------

    def connection_made(self) -> bytes:
        """A channel is open: the session starts (a new one after DONE or FAILED: the next trigger's). A channel
        opened while a session runs is an illegal event: that session ends, with an error trace event."""
        try:
            self._move(AgentEvent.CONNECT_TLS if self.tls_enabled else AgentEvent.CONNECT_PLAIN)
        except IllegalTransition as exc:
            self._fail(
                f"protocol: {exc}", Kind.APP_ERROR, f"channel opened during a session ({exc}): session ended"
            )
            return b""
        self._http = AdminHttpClient(self.limits)
        self._planned_close = False
        if self.tls_enabled:
            self._tls = TlsPskClient(self.identity, self.psk, random=self.random)
            return self._tls.start()
        self._tls = None
        return self._first_post()

    def _first_post(self) -> bytes:
        """The session's first POST: empty, or on resume the response the server never acknowledged."""
        return self._post(self._unacknowledged or b"", "ok")

    def data_received(self, data: bytes) -> bytes:
        """Bytes from the channel in, bytes for it out. Whatever the server sends, this returns: a failure ends
        the admin session (FAILED, an error trace event, TLS close_notify) and leaves the card's state alone."""
        if self._state not in (AgentState.HANDSHAKE, AgentState.WAIT_RESPONSE):
            # after the session, or on a connection closing after Connection: close: close_notify, or noise
            return b""
        out = bytearray()
        try:
            if self._tls is not None:
                plain = self._tls.receive(data)
                out += self._tls.data_to_send()
                if self._state is AgentState.HANDSHAKE and self._tls.connected:
                    self._move(AgentEvent.SECURED)
                    out += self._first_post()
            else:
                plain = data
            if plain:
                for response in self._http.receive(plain):
                    if self._state in (AgentState.DONE, AgentState.FAILED):
                        break
                    out += self._response(response)
        except (TlsError, TlsAlert) as exc:
            out += self._tls_failure(exc)
        except HttpFailure as exc:
            out += self._http_failure(exc)
        except IllegalTransition as exc:
            out += self._fail(
                f"HTTP: {exc}", Kind.HTTP_ERROR, f"answer out of turn ({exc}): admin session ended"
            )
        except Exception as exc:  # a bug of the card's own code: the session ends, the terminal goes on
            out += self._fail(
                f"internal: {type(exc).__name__}: {exc}",
                Kind.APP_ERROR,
                f"admin session ended by {type(exc).__name__}: {exc}",
            )
        return bytes(out)

    def _fail(self, error: str, kind: Kind, summary: str, fields: dict[str, object] | None = None) -> bytes:
        """Ends the admin session: FAILED, one error trace event, the TLS close_notify (when TLS is up)."""
        self.log.errors.append(error)
        layer = {Kind.HTTP_ERROR: Layer.HTTP, Kind.HTTP_RESPONSE: Layer.HTTP, Kind.TLS_ALERT: Layer.TLS}
        self.tracer.emit(
            Actor.UICC,
            Actor.OTA,
            layer.get(kind, Layer.APP),
            summary,
            error=True,
            kind=kind,
            fields={"state": self._state.value, **(fields or {})},
        )
        if self._state not in (AgentState.DONE, AgentState.FAILED):
            self._move(AgentEvent.FAIL)
        if self._tls is None:
            return b""
        out = self._tls.data_to_send()
        if self._tls.connected:
            try:
                out += self._tls.close()
            except (TlsError, TlsAlert):
                pass
        return out

    def _tls_failure(self, exc: TlsError | TlsAlert) -> bytes:
        return self._fail(
            f"TLS: {exc}", Kind.TLS_ALERT, f"TLS failed: {exc}", {"description": int(exc.description)}
        )

    def _http_failure(self, exc: HttpFailure) -> bytes:
        """An answer the card cannot take ends the admin session, with nothing of it executed.

        The card is the HTTP client: it has no status code to answer with, and Amd B's X-Admin-Script-Status
        values (ok, unknown-application, not-a-security-domain, security-error) report how a received script
        executed, not a script that never arrived whole; an empty-bodied POST would only make the server send the
        same script again. So the card closes the session (TLS close_notify), does not reconnect (the same answer
        would come back), and its state stays as it was; the server sees the script unacknowledged.
        """
        if exc.status == 413:
            detail = f"HTTP response over the card's limit ({exc.reason}): admin session ended, not executed"
        else:
            detail = f"malformed HTTP response ({exc}): admin session ended"
        return self._fail(
            f"HTTP: {exc}", Kind.HTTP_ERROR, detail, {"status": exc.status, "reason": exc.reason}
        )

    def connection_lost(self, reason: str) -> None:
        if self._state in (AgentState.DONE, AgentState.FAILED):
            return
        if self._planned_close:  # the server said Connection: close: a planned end, not a loss
            self._planned_close = False
            self._move(AgentEvent.LOST)
            return
        self.log.errors.append(f"connection lost: {reason}")
        self._lost += 1
        self._resume = True
        self._move(AgentEvent.LOST if self._lost <= self.max_reconnects else AgentEvent.GIVE_UP)

    @property
    def done(self) -> bool:
        return self._state in (AgentState.DONE, AgentState.FAILED)

    @property
    def wants_reconnect(self) -> bool:
        return self._state is AgentState.IDLE and self._resume and self._lost <= self.max_reconnects

    # --- admin protocol ----------------------------------------------------------------------------------------

    def _post(self, body: bytes, status: str) -> bytes:
        headers = [
            ("Host", self.host),
            ("X-Admin-Protocol", PROTOCOL),
            ("X-Admin-From", f"//se-id/iccid/{self.card.profile.iccid}"),
            ("Content-Type", REQUEST_TYPE),
        ]
        if body or status != "ok":
            headers.append(("X-Admin-Script-Status", status))
        if self._resume:
            headers.append(("X-Admin-Resume", "true"))
            self._resume = False
        request = self._http.request(self._next_uri, headers, body)
        return self._tls.send(request) if self._tls is not None else request

    def _response(self, response: AdminResponse) -> bytes:
        if response.status == 204:
            self._move(AgentEvent.NO_CONTENT)
            self._unacknowledged = None
            self.log.finished = True
            self.card.save_state()
            return self._tls.close() if self._tls is not None else b""
        if response.status != 200:
            return self._fail(
                f"server answered {response.status}",
                Kind.HTTP_RESPONSE,
                f"server answered {response.status}: admin session ended",
                {"status": response.status},
            )
        self._unacknowledged = None
        self._next_uri = response.header("x-admin-next-uri") or self.path
        content_type = response.header("content-type")
        if content_type and not content_type.startswith("application/vnd.globalplatform.card-content-mgt"):
            return self._answer(response, b"", "unknown-application")
        try:
            apdus = decode_command_script(response.body)
        except RemoteApduError as exc:
            self.log.errors.append(f"bad script: {exc}")
            return self._answer(response, b"", "unknown-application")
        expanded = response.body[:1] in (b"\xae", b"\xaa")
        responses = []
        for apdu in apdus:
            responses.append(self.execute(apdu))
            # each APDU is atomic, as on a real card: a card killed between LOAD blocks keeps the blocks before
            self.card.save_state()
        self.card.sync_state()  # group commit: the 90 00s below are on disk before the server can see them
        self.log.scripts += 1
        self.log.apdus += len(apdus)
        self.log.statuses += [r[-2:].hex().upper() for r in responses]
        self._unacknowledged = encode_response_script(responses, expanded=expanded)
        return self._answer(response, self._unacknowledged, "ok")

    def _answer(self, response: AdminResponse, body: bytes, status: str) -> bytes:
        """Posts the answer to a script; when the server closes the connection after its 200 (its request limit
        per connection), the answer waits for the next connection, which resumes (X-Admin-Resume)."""
        if response.keep_alive:
            self._move(AgentEvent.SCRIPT)
            return self._post(body, status)
        self._move(AgentEvent.CLOSE_AFTER)
        self._unacknowledged = body if body else None
        self._resume = True
        self._planned_close = True
        return self._tls.close() if self._tls is not None else b""

    def execute(self, apdu: bytes) -> bytes:
        """One remote APDU: GP commands to the registry, everything else to the card's APDU processor."""
        if self.registry.handles(apdu):
            return self.registry.process(apdu)
        return self.card.internal_apdu(apdu)
