"""The card's OTA agent: the BipClient that runs a GlobalPlatform Amendment B (SCP81) admin session over the BIP
channel: TLS 1.2 PSK with the card as client (uicc/tls_psk_client.py), the HTTP POST loop with the X-Admin-*
headers, and the execution of the remote APDUs it receives (GP commands by the registry, file commands by the
card's APDU processor). The card state is saved after every APDU (a write only when it changed; LOAD data goes to
an append-only journal) and made durable before the response script is posted, so a session killed mid-way loses
nothing already acknowledged; a session that loses its connection asks to reconnect and resumes (X-Admin-Resume).

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
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.card import SimCard
from bipsim.uicc.gp_registry import GpRegistry
from bipsim.uicc.http11 import MAX_BODY, HttpError, MessageParser, render
from bipsim.uicc.remote_apdu import RemoteApduError, decode_command_script, encode_response_script
from bipsim.uicc.tls_psk_client import TlsAlert, TlsError, TlsPskClient

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


@dataclass
class AgentLog:
    scripts: int = 0
    apdus: int = 0
    statuses: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    finished: bool = False


class OtaAgent:
    """One admin session per trigger; `log` says what happened."""

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
        self.state = AgentState.IDLE
        self.log = AgentLog()
        self._tls: TlsPskClient | None = None
        self._http = MessageParser(requests=False)
        self._next_uri = path
        self._resume = False
        self._lost = 0
        self._closing = False
        self._unacknowledged: bytes | None = None  # the last response script posted and not yet answered

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
        self._http = MessageParser(requests=False)
        self._closing = False
        if self.tls_enabled:
            self._tls = TlsPskClient(self.identity, self.psk, random=self.random)
            self.state = AgentState.HANDSHAKE
            return self._tls.start()
        self.state = AgentState.WAIT_RESPONSE
        return self._first_post()

    def _first_post(self) -> bytes:
        """The session's first POST: empty, or on resume the response the server never acknowledged."""
        return self._post(self._unacknowledged or b"", "ok")

    def data_received(self, data: bytes) -> bytes:
        if self.state in (AgentState.DONE, AgentState.FAILED):
            return b""
        out = bytearray()
        try:
            if self._tls is not None:
                plain = self._tls.receive(data)
                out += self._tls.data_to_send()
                if self.state is AgentState.HANDSHAKE and self._tls.connected:
                    self.state = AgentState.WAIT_RESPONSE
                    out += self._first_post()
            else:
                plain = data
            if plain:
                for message in self._http.feed(plain):
                    out += self._response(
                        message.status,
                        message.header("x-admin-next-uri"),
                        message.body,
                        message.header("content-type"),
                    )
        except (TlsError, TlsAlert) as exc:
            self.log.errors.append(f"TLS: {exc}")
            self.state = AgentState.FAILED
            if self._tls is not None:
                out += self._tls.data_to_send()
        except HttpError as exc:
            out += self._http_failure(exc)
        return bytes(out)

    def _http_failure(self, exc: HttpError) -> bytes:
        """An answer the card cannot take ends the admin session, with nothing of it executed.

        The card is the HTTP client: it has no status code to answer with, and Amd B's X-Admin-Script-Status
        values (ok, unknown-application, not-a-security-domain, security-error) report how a received script
        executed, not a script that never arrived whole; an empty-bodied POST would only make the server send the
        same script again. So the card closes the session (TLS close_notify), does not reconnect (the same answer
        would come back), and its state stays as it was; the server sees the script unacknowledged.
        """
        if exc.status == 413:
            detail = (
                f"HTTP response body over the card's {MAX_BODY} byte limit: admin session ended, not executed"
            )
        else:
            detail = f"malformed HTTP response ({exc}): admin session ended"
        self.log.errors.append(f"HTTP: {exc}")
        self.tracer.emit(Actor.UICC, Actor.OTA, Layer.HTTP, detail, error=True)
        self.state = AgentState.FAILED
        return self._tls.close() if self._tls is not None else b""

    def connection_lost(self, reason: str) -> None:
        if self.state not in (AgentState.DONE, AgentState.FAILED):
            self.log.errors.append(f"connection lost: {reason}")
            self._lost += 1
            self._resume = True
            self.state = AgentState.IDLE if self._lost <= self.max_reconnects else AgentState.FAILED

    @property
    def done(self) -> bool:
        return self.state in (AgentState.DONE, AgentState.FAILED)

    @property
    def wants_reconnect(self) -> bool:
        return self.state is AgentState.IDLE and self._resume and self._lost <= self.max_reconnects

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
        request = render(f"POST {self._next_uri} HTTP/1.1", headers, body)
        return self._tls.send(request) if self._tls is not None else request

    def _response(self, status: int, next_uri: str, body: bytes, content_type: str) -> bytes:
        self._unacknowledged = None
        if status == 204:
            self.state = AgentState.DONE
            self.log.finished = True
            self.card.save_state()
            return self._tls.close() if self._tls is not None else b""
        if status != 200:
            self.log.errors.append(f"server answered {status}")
            self.state = AgentState.FAILED
            return self._tls.close() if self._tls is not None else b""
        self._next_uri = next_uri or self.path
        if content_type and not content_type.startswith("application/vnd.globalplatform.card-content-mgt"):
            return self._post(b"", "unknown-application")
        try:
            apdus = decode_command_script(body)
        except RemoteApduError as exc:
            self.log.errors.append(f"bad script: {exc}")
            return self._post(b"", "unknown-application")
        expanded = body[:1] in (b"\xae", b"\xaa")
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
        return self._post(self._unacknowledged, "ok")

    def execute(self, apdu: bytes) -> bytes:
        """One remote APDU: GP commands to the registry, everything else to the card's APDU processor."""
        if self.registry.handles(apdu):
            return self.registry.process(apdu)
        return self.card.internal_apdu(apdu)
