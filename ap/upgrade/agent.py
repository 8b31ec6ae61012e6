"""The AP's upgrade agent (docs/protocols.md, "Push deployment", "The upgrade agent"): a publish server's release
notice arrives (a plain SMS or a WAP Push through 3GPP TS 27.005: +CNMI, +CMTI, +CMGR in PDU mode; a frame on the
IP-push connection; or the user's active check), the user is asked, the agent connects to the address in the notice,
is authenticated (HMAC-SHA256 challenge-response, RFC 2104), downloads, verifies the size and SHA-256, installs
over the old version or fresh (ap/upgrade/registry.py) and reports a JSR-118 (MIDP 2.0 OTA) status code to the user
and to the server.

The decisions are sans-IO: `classify_tpdu` (with `Reassembly` for concatenated parts) says what an SMS is,
`Flow` walks one notice through the states of the transition table `TRANSITIONS`, `check_release` and
`check_package` compare what the notice, the catalogue and the download say. The trio adapter `UpgradeAgent`
reads the modem line, talks HTTP/1.1 (h11, ota/http_client.py) to the publish server and holds the IP-push
connection. Steps: 001:201 notice and prompt, 001:202 connect, 001:203 authentication (the server's), 001:204
download, install, result; the embodiments' own 001:e<k>.<n> (trace/steps.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any

import trio

from bipsim.ap.network import ApNetwork
from bipsim.ap.upgrade.policy import Policy
from bipsim.ap.upgrade.registry import Registry, RegistryError
from bipsim.link.at_chat import AtResponse, AtTimeout
from bipsim.net.push_notice import (
    Notice,
    NoticeError,
    NoticeVia,
    SiOutcome,
    WapPushReading,
    parse_sms_notice,
    read_wap_push,
)
from bipsim.net.sms_pdu import SmsDeliver, SmsPduError, concatenation_of, decode_sca, decode_tpdu, ports_of
from bipsim.ota.http_client import Failure, HttpAnswer, HttpClientError
from bipsim.ota.http_client import request as http_request
from bipsim.ota.push_channel import FrameDecoder, FrameError, encode_frame
from bipsim.ota.release_catalogue import KINDS, VersionError, newer, parse_version
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer

WAP_PUSH_PORT = 2948  # WDP port of the connectionless push (WAP-259 table 8)
REQUEST_TIMEOUT = 30.0  # seconds one HTTP request may take
MAX_PACKAGE = 64 * 1024 * 1024  # bytes of a package the agent accepts (a larger one: insufficient memory)
MAX_ANSWER = 64 * 1024  # bytes of a JSON answer
KEEPALIVE = 30.0  # IP push: ping after this much silence (docs/protocols.md, "IP push")
DEAD_PEER = 90.0  # IP push: the server is gone after this much silence
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0  # IP push reconnection backoff, doubling
REASSEMBLY_LIMIT = 16  # concatenated messages being put together at once (the oldest is dropped past it)
IMEI = re.compile(r"[0-9]{14,16}")
NONCE = r"(?:[0-9a-fA-F]{2}){1,32}"  # whole bytes: bytes.fromhex refuses an odd digit count
IMEI_WAIT = 30.0  # seconds a flow waits for the modem's IMEI before 903 "IMEI unknown"
SEEN_LIMIT = 1024  # notice keys remembered against repeats (the oldest forgotten past it)
READ_ATTEMPTS, READ_RETRY = 20, 0.5  # +CMGR while the card is busy (27.005 3.2.5: 314 SIM busy; 27.007 14)
BUSY = ("+CMS ERROR: 314", "+CME ERROR: 14")

STEP_NOTICE = "001:201"
STEP_CONNECT = "001:202"
STEP_RESULT = "001:204"
STEP_LISTEN = "001:e1.1"  # embodiment 1: the agent listens for SMS from boot
STEP_SMS = "001:e1.2"  # the notice SMS (address, location, name, timestamp)
STEP_WAP = "001:e2.1"  # embodiment 2: the WAP Push SI
STEP_CHECK = "001:e3.1"  # embodiment 3: the installed name and version sent to the server
STEP_PUSH_AUTH = "001:e4.1"  # embodiment 4: the long-lived connection authenticated at boot
STEP_PUSH_RELEASE = "001:e4.2"  # the release message on it


class ResultCode(IntEnum):
    """JSR-118 (MIDP 2.0) OTA install status codes, the set the agent reports."""

    SUCCESS = 900
    INSUFFICIENT_MEMORY = 901
    USER_CANCELLED = 902
    LOSS_OF_SERVICE = 903
    SIZE_MISMATCH = 904
    ATTRIBUTE_MISMATCH = 905
    INVALID_DESCRIPTOR = 906
    INVALID_PACKAGE = 907
    INCOMPATIBLE = 908
    AUTHENTICATION_FAILURE = 909
    AUTHORIZATION_FAILURE = 910

    @property
    def label(self) -> str:
        return LABELS[self]


LABELS = {
    ResultCode.SUCCESS: "Success",
    ResultCode.INSUFFICIENT_MEMORY: "Insufficient Memory",
    ResultCode.USER_CANCELLED: "User Cancelled",
    ResultCode.LOSS_OF_SERVICE: "Loss of Service",
    ResultCode.SIZE_MISMATCH: "Size Mismatch",
    ResultCode.ATTRIBUTE_MISMATCH: "Attribute Mismatch",
    ResultCode.INVALID_DESCRIPTOR: "Invalid Descriptor",
    ResultCode.INVALID_PACKAGE: "Invalid Package",
    ResultCode.INCOMPATIBLE: "Incompatible Configuration or Profile",
    ResultCode.AUTHENTICATION_FAILURE: "Authentication Failure",
    ResultCode.AUTHORIZATION_FAILURE: "Authorization Failure",
}


class FlowFailed(Exception):
    """A flow ends with `code` (not Success) for `reason`."""

    def __init__(self, code: ResultCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# ---------------------------------------------------------------------------------------------------------- sans-IO


@dataclass(frozen=True)
class Heard:
    """What one SMS was to the agent: a notice, a look-alike (`error`: it claims to be a notice but is not one),
    a part of a concatenated message still waiting for the rest, an SI that WAP-167 section 6 says not to present
    (`discarded`: expired, delete or signal-none), or another SMS (`notice` and `error` None)."""

    via: NoticeVia | None
    notice: Notice | None = None
    error: str | None = None
    waiting: bool = False
    discarded: WapPushReading | None = None


@dataclass
class Reassembly:
    """Concatenated SMS (TS 23.040 9.2.3.24.1) put together by (originator, reference); parts in any order."""

    parts: dict[tuple[str, int], dict[int, SmsDeliver]] = field(default_factory=dict)

    def add(self, sms: SmsDeliver) -> list[SmsDeliver] | None:
        """All parts in order once `sms` completes its message (a message of one part at once), else None."""
        concat = concatenation_of(sms.udh)
        if concat is None or concat.total <= 1:
            return [sms]
        key = (str(sms.originator), concat.reference)
        held = self.parts.setdefault(key, {})
        held[concat.sequence] = sms
        if len(self.parts) > REASSEMBLY_LIMIT:
            self.parts.pop(next(iter(self.parts)))
        if len(held) < concat.total:
            return None
        self.parts.pop(key, None)
        return [held[n] for n in sorted(held)]


def classify_tpdu(tpdu: bytes, reassembly: Reassembly) -> Heard:
    """What an SMS-DELIVER TPDU is: a WAP Push to port 2948 (its WSP payload through net/push_notice.py), a plain
    text notice, or something else; a message that claims to be a notice but is malformed is a look-alike."""
    try:
        sms = decode_tpdu(tpdu)
    except SmsPduError as exc:
        return Heard(None, error=f"not an SMS-DELIVER: {exc}")
    if not isinstance(sms, SmsDeliver):
        return Heard(None)
    parts = reassembly.add(sms)
    if parts is None:
        return Heard(None, waiting=True)
    ports = ports_of(sms.udh)
    if ports is not None and ports.destination == WAP_PUSH_PORT:
        payload = b"".join(part.ud for part in parts)
        try:
            reading = read_wap_push(payload)
        except (NoticeError, ValueError) as exc:
            return Heard(NoticeVia.WAP, error=str(exc) or type(exc).__name__)
        if reading.outcome is SiOutcome.PRESENT:
            return Heard(NoticeVia.WAP, reading.notice)
        if reading.outcome is SiOutcome.NOT_A_NOTICE:
            return Heard(None)
        return Heard(NoticeVia.WAP, discarded=reading)
    if ports is not None:
        return Heard(None)
    texts = [part.text for part in parts]
    if any(text is None for text in texts):
        return Heard(None)
    try:
        notice = parse_sms_notice("".join(text or "" for text in texts))
    except (NoticeError, ValueError) as exc:
        return Heard(NoticeVia.SMS, error=str(exc) or type(exc).__name__)
    return Heard(NoticeVia.SMS, notice) if notice is not None else Heard(None)


class FlowState(Enum):
    NOTICED = "noticed"
    ASKING = "asking"
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    CHECKING = "checking"  # the release looked up (catalogue, or the active check)
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    REPORTING = "reporting"
    DONE = "done"


class FlowInput(Enum):
    ASK = "ask"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    CONNECTED = "connected"
    AUTHENTICATED = "authenticated"
    RELEASE = "release"
    NO_UPDATE = "no_update"
    DOWNLOADED = "downloaded"
    INSTALLED = "installed"
    FAILED = "failed"  # any failure after the connection: report it
    UNREACHABLE = "unreachable"  # no connection or no session: nothing to report to
    REPORTED = "reported"


S, In = FlowState, FlowInput
TRANSITIONS: dict[tuple[FlowState, FlowInput], FlowState] = {
    (S.NOTICED, In.ASK): S.ASKING,
    (S.NOTICED, In.ACCEPTED): S.CONNECTING,  # the active check: the user started it
    (S.ASKING, In.ACCEPTED): S.CONNECTING,
    (S.ASKING, In.DECLINED): S.DONE,
    (S.CONNECTING, In.CONNECTED): S.AUTHENTICATING,
    (S.CONNECTING, In.UNREACHABLE): S.DONE,
    (S.AUTHENTICATING, In.AUTHENTICATED): S.CHECKING,
    (S.AUTHENTICATING, In.UNREACHABLE): S.DONE,
    (S.CHECKING, In.RELEASE): S.DOWNLOADING,
    (S.CHECKING, In.NO_UPDATE): S.DONE,
    (S.CHECKING, In.FAILED): S.REPORTING,
    (S.DOWNLOADING, In.DOWNLOADED): S.INSTALLING,
    (S.DOWNLOADING, In.FAILED): S.REPORTING,
    (S.INSTALLING, In.INSTALLED): S.REPORTING,
    (S.INSTALLING, In.FAILED): S.REPORTING,
    (S.REPORTING, In.REPORTED): S.DONE,
    (S.REPORTING, In.UNREACHABLE): S.DONE,
}
del S, In


class FlowError(RuntimeError):
    """An input the flow's state does not take (a bug of the adapter, never a peer's doing)."""


@dataclass
class Flow:
    """One notice's way through the agent; `history` the states passed."""

    notice: Notice
    state: FlowState = FlowState.NOTICED
    history: list[FlowState] = field(default_factory=lambda: [FlowState.NOTICED])

    def move(self, event: FlowInput) -> FlowState:
        target = TRANSITIONS.get((self.state, event))
        if target is None:
            raise FlowError(f"{event.value} in state {self.state.value}")
        self.state = target
        self.history.append(target)
        return target


def check_release(release: Any, notice: Notice) -> dict[str, Any]:
    """The catalogue's (or the check's) release, validated against the notice; FlowFailed 906 when it is not a
    release, 905 when it names another package or location than the notice."""
    if not isinstance(release, dict):
        raise FlowFailed(ResultCode.INVALID_DESCRIPTOR, "the server's release is not a JSON object")
    try:
        name, version, location = release["name"], release["version"], release["location"]
        size, sha256 = release["size"], release["sha256"]
        if not all(isinstance(v, str) for v in (name, version, location, sha256)):
            raise TypeError("name, version, location and sha256 are strings")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise TypeError("size is a whole number")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise TypeError("sha256 is 64 hex digits")
        # the release says what it is (docs/protocols.md "Push deployment"); a server without `kind` sends software
        if release.setdefault("kind", "software") not in KINDS:
            raise TypeError(f"kind is one of {', '.join(KINDS)}")
        parse_version(version)
    except (KeyError, TypeError, VersionError) as exc:
        raise FlowFailed(ResultCode.INVALID_DESCRIPTOR, f"the server's release: {exc}") from None
    if name != notice.name:
        raise FlowFailed(
            ResultCode.ATTRIBUTE_MISMATCH, f"the release is {name!r}, the notice {notice.name!r}"
        )
    if notice.via is not NoticeVia.ACTIVE and location != notice.location:
        raise FlowFailed(
            ResultCode.ATTRIBUTE_MISMATCH, f"the release is at {location}, the notice named {notice.location}"
        )
    return release


def check_package(release: dict[str, Any], data: bytes, header_sha256: str | None) -> None:
    """FlowFailed 904 when the package's size is not the release's, 907 when its SHA-256 is not the release's (or
    the download's header's)."""
    if len(data) != release["size"]:
        raise FlowFailed(
            ResultCode.SIZE_MISMATCH, f"the package has {len(data)} bytes, the release says {release['size']}"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != str(release["sha256"]).lower():
        raise FlowFailed(ResultCode.INVALID_PACKAGE, f"the package's SHA-256 is {digest}, not the release's")
    if header_sha256 is not None and header_sha256.lower() != digest:
        raise FlowFailed(
            ResultCode.INVALID_PACKAGE, "the package's SHA-256 is not the X-Package-Sha256 header's"
        )


def next_backoff(previous: float, welcomed: bool) -> float:
    """The IP push's wait before the next connection: 1 s after a connection that was welcomed (then lost),
    else twice the previous wait, at most 60 s."""
    return BACKOFF_FIRST if welcomed else min(previous * 2, BACKOFF_MAX)


def terminal_mac(token: bytes, nonce: str, imei: str) -> str:
    """HMAC-SHA256(token, nonce bytes || IMEI in ASCII), hex (docs/protocols.md, "Terminal authentication")."""
    return hmac.new(token, bytes.fromhex(nonce) + imei.encode("ascii"), hashlib.sha256).hexdigest()


# ------------------------------------------------------------------------------------------------------ trio adapter


@dataclass
class UpgradeOptions:
    """`bipsim ap --upgrade...` (docs/protocols.md, "The upgrade agent")."""

    registry: Path
    token: bytes
    policy: str = "accept"
    server: tuple[str, int] | None = None  # the active check's publish server (HTTP)
    ip_push: tuple[str, int] | None = None  # the IP-push address (embodiment 4)
    check: bool = False  # run the active check once the agent knows its IMEI (embodiment 3)
    imei: str | None = None  # None: read from the modem (AT+CGSN=1)
    trust: tuple[tuple[str, int], ...] = ()  # publish servers a notice may name besides `server`

    def trusted(self, server: str) -> bool:
        """Whether a notice naming `server` ("host:port") may be followed (docs/protocols.md, "The upgrade agent":
        a notice is plain SMS or HTTP, so only servers configured by the user are contacted)."""
        host, _, port = server.rpartition(":")
        if not port.isdigit():
            return False
        wanted = (host.strip("[]"), int(port))
        return any(
            (h.strip("[]"), p) == wanted for h, p in (*([self.server] if self.server else []), *self.trust)
        )


@dataclass(frozen=True)
class Outcome:
    """What the user was told at the end of one flow."""

    name: str
    version: str | None
    code: ResultCode | None  # None: nothing to do (no new version)
    reason: str
    via: str


class PublishClient:
    """The publish server's HTTP API (docs/protocols.md, "The publish server") at `server`, one connection per
    request; every request an `http.request` event (ap -> publish), every answer an `http.response`."""

    def __init__(self, server: str, tracer: Tracer = NULL_TRACER, via: str = "") -> None:
        host, sep, port = server.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise FlowFailed(ResultCode.INVALID_DESCRIPTOR, f"{server[:60]!r} is not HOST:PORT")
        self.host, self.port = host.strip("[]"), int(port)
        self.tracer = tracer
        self.session: str | None = None
        self.via = via
        self.connections = 0  # connections opened so far

    async def request(
        self,
        method: str,
        target: str,
        body: Any = None,
        *,
        step: str | None = None,
        limit: int = MAX_ANSWER,
        too_large: ResultCode = ResultCode.INSUFFICIENT_MEMORY,
    ) -> HttpAnswer:
        """One request; FlowFailed 903 when the server cannot be reached or the answer breaks off, `too_large`
        when its body (or its Content-Length) is larger than `limit`."""
        data = b"" if body is None else json.dumps(body).encode()
        host = (
            f"[{self.host}]" if ":" in self.host else self.host
        )  # RFC 7230 5.4 / RFC 3986 3.2.2: IPv6 in []
        headers = [("host", f"{host}:{self.port}"), ("connection", "close")]
        if body is not None:
            headers += [("content-type", "application/json"), ("content-length", str(len(data)))]
        if self.session is not None:
            headers.append(("authorization", f"Bearer {self.session}"))
        self.tracer.emit(
            Actor.AP,
            Actor.PUBLISH,
            Layer.HTTP,
            f"{method} {target}",
            data,
            step=step,
            kind=Kind.HTTP_REQUEST,
            fields={"method": method, "target": target, "host": self.host, "port": self.port},
        )
        try:
            answer = await http_request(
                self._open, method, target, headers, data, max_answer=limit, timeout=REQUEST_TIMEOUT
            )
        except HttpClientError as exc:
            if exc.failure is Failure.TOO_LARGE:
                raise FlowFailed(too_large, str(exc)) from None
            reason = f"{method} {target}: {exc.cause or exc}"
            self.tracer.emit(
                Actor.PUBLISH,
                Actor.AP,
                Layer.HTTP,
                f"publish server failed: {reason}",
                error=True,
                kind=Kind.HTTP_ERROR,
                fields={"reason": reason, "received": len(exc.body)},
            )
            raise FlowFailed(ResultCode.LOSS_OF_SERVICE, reason) from None
        self.tracer.emit(
            Actor.PUBLISH,
            Actor.AP,
            Layer.HTTP,
            f"{answer.status} ({len(answer.body)} bytes)",
            b"" if answer.headers.get("content-type", "").startswith("application/octet") else answer.body,
            error=answer.status >= 400,
            kind=Kind.HTTP_RESPONSE,
            fields={"status": answer.status, "length": len(answer.body)},
        )
        return answer

    async def _open(self) -> trio.abc.Stream:
        stream = await trio.open_tcp_stream(self.host, self.port)
        self._connected(stream)
        return stream

    def _connected(self, stream: trio.abc.Stream) -> None:
        """The `tcp.connect` event once a connection is open, with the peer the socket reached (the first one is
        step 001:202)."""
        host, port = self.host, self.port
        if isinstance(stream, trio.SocketStream):
            try:
                peer = stream.socket.getpeername()
                host, port = str(peer[0]), int(peer[1])
            except OSError:
                pass
        self.tracer.emit(
            Actor.AP,
            Actor.PUBLISH,
            Layer.TCP,
            f"connected to {host}:{port}" + (f" (from the {self.via} notice)" if self.via else ""),
            step=STEP_CONNECT if not self.connections else None,
            kind=Kind.TCP_CONNECT,
            fields={"host": host, "port": port, "via": self.via},
        )
        self.connections += 1

    async def authenticate(self, imei: str, token: bytes) -> None:
        """Challenge-response (docs/protocols.md, "Terminal authentication"): FlowFailed 909 when refused."""
        answer = await self.request("POST", "/v1/auth/challenge", {"imei": imei})
        body = answer.json()
        nonce = body.get("nonce") if answer.status == 200 and isinstance(body, dict) else None
        if not isinstance(nonce, str) or not re.fullmatch(NONCE, nonce):
            raise FlowFailed(ResultCode.AUTHENTICATION_FAILURE, f"no challenge (HTTP {answer.status})")
        mac = terminal_mac(token, nonce, imei)
        answer = await self.request("POST", "/v1/auth/response", {"imei": imei, "nonce": nonce, "mac": mac})
        body = answer.json() if answer.status == 200 else None
        session = body.get("session") if isinstance(body, dict) else None
        if not isinstance(session, str) or not re.fullmatch(r"[!-~]{1,256}", session):
            error = (answer.json() or {}).get("error") if isinstance(answer.json(), dict) else None
            raise FlowFailed(
                ResultCode.AUTHENTICATION_FAILURE, f"authentication refused (HTTP {answer.status}: {error})"
            )
        self.session = session


class UpgradeAgent:
    """The agent of one AP process: notices in (from the modem line, the IP push or the active check), one flow
    at a time, each outcome an `upgrade.result` event and a report to the server."""

    def __init__(
        self, options: UpgradeOptions, tracer: Tracer = NULL_TRACER, network: ApNetwork | None = None
    ) -> None:
        self.options = options
        self.network = network  # the AP's bearers and allowlist (ap/network.py); None: the host's own network
        self.tracer = tracer
        self.registry = Registry(options.registry)
        self.policy = Policy.parse(options.policy)
        self.reassembly = Reassembly()
        self.imei: str | None = options.imei
        self.imei_known = trio.Event()
        if self.imei is not None:
            self.imei_known.set()
        self._send, self._receive = trio.open_memory_channel[tuple[Notice, bool]](64)
        self._seen: dict[
            tuple[str, str, str | None], None
        ] = {}  # insertion-ordered: the oldest forgotten first
        self.outcomes: list[Outcome] = []
        self.changed = trio.Event()  # set (and renewed) at each outcome
        self.push_connected = False
        self.push_rejected = False
        self.chat: Any = None  # the current modem session's DLC 1 chat (an applet's push goes through it)
        self._lock = trio.Lock()  # one flow at a time: notices and the active check take turns

    # --------------------------------------------------------------------------------------------- events

    def _event(
        self, kind: Kind, summary: str, *, step: str | None = None, error: bool = False, **fields: Any
    ) -> None:
        self.tracer.emit(
            Actor.AP, Actor.AP, Layer.APP, summary, step=step, error=error, kind=kind, fields=fields or None
        )

    def _tell(self, notice: Notice, code: ResultCode | None, reason: str) -> Outcome:
        outcome = Outcome(notice.name, notice.version, code, reason, notice.via.value)
        self.outcomes.append(outcome)
        label = "no new version" if code is None else f"{int(code)} {code.label}"
        self._event(
            Kind.UPGRADE_RESULT,
            f"{notice.name}: {label}" + (f": {reason}" if reason else ""),
            step=STEP_RESULT,
            error=code is not None and code is not ResultCode.SUCCESS,
            name=notice.name,
            version=notice.version,
            result=None if code is None else int(code),
            result_name="No New Version" if code is None else code.label,
            reason=reason,
            via=notice.via.value,
            installed=self.registry.version(notice.name),
        )
        self.changed.set()
        self.changed = trio.Event()
        return outcome

    # ---------------------------------------------------------------------------------------- notices in

    def offer(self, notice: Notice) -> bool:
        """Queues a notice for its prompt; False (and a trace event) when it names a server the agent does not
        trust (result 909, no connection), repeats one already taken, or finds the queue full (result 903)."""
        if notice.via is not NoticeVia.ACTIVE and not self.options.trusted(notice.server):
            reason = (
                f"{notice.server[:60]} is not a trusted publish server (--upgrade-server, --upgrade-trust)"
            )
            return self._refuse(
                notice, f" refused: {reason}", ResultCode.AUTHENTICATION_FAILURE, reason, untrusted=True
            )
        key = _key(notice)
        if key in self._seen:
            return self._refuse(notice, " repeated: no second prompt", None, None, repeated=True)
        try:
            self._send.send_nowait((notice, True))
        except trio.WouldBlock:
            reason = "too many notices waiting: dropped"
            return self._refuse(notice, f": {reason}", ResultCode.LOSS_OF_SERVICE, reason, dropped=True)
        self._seen[key] = None
        while len(self._seen) > SEEN_LIMIT:
            del self._seen[next(iter(self._seen))]
        return True

    def _refuse(
        self, notice: Notice, what: str, code: ResultCode | None, reason: str | None, **flag: bool
    ) -> bool:
        """Traces a notice not queued (an error when it has a result code) and tells its server that code."""
        details: dict[str, Any] = {"reason": reason} if reason else {"version": notice.version}
        details.update(flag)
        self._event(
            Kind.UPGRADE_NOTICE,
            f"{notice.via.value} notice of {notice.name}{what}",
            error=code is not None,
            via=notice.via.value,
            name=notice.name,
            server=notice.server,
            location=notice.location,
            **details,
        )
        if code is not None:
            self._tell(notice, code, reason or "")
        return False

    def heard_sms(self, tpdu: bytes) -> Heard:
        """An SMS-DELIVER read from the modem: a notice is queued, a look-alike traced (result 906, no prompt)."""
        heard = classify_tpdu(tpdu, self.reassembly)
        if heard.waiting:
            return heard
        if heard.notice is not None:
            notice = heard.notice
            self._event(
                Kind.UPGRADE_NOTICE,
                f"{notice.via.value} notice: {notice.name} {notice.version} at {notice.url}",
                step=STEP_WAP if notice.via is NoticeVia.WAP else STEP_SMS,
                via=notice.via.value,
                name=notice.name,
                version=notice.version,
                server=notice.server,
                location=notice.location,
                timestamp=None if notice.timestamp is None else notice.timestamp.isoformat(),
            )
            self.offer(notice)
        elif heard.discarded is not None:
            # WAP-167 section 6: an expired SI, a delete SI and a signal-none SI are never presented (no prompt)
            reading = heard.discarded
            found = reading.notice
            self._event(
                Kind.UPGRADE_NOTICE,
                f"wap notice discarded ({reading.outcome.value}): {reading.reason}",
                step=STEP_WAP,
                via=NoticeVia.WAP.value,
                name=None if found is None else found.name,
                version=None if found is None else found.version,
                location=None if found is None else found.location,
                si_id=reading.si_id,
                action=reading.action,
                discarded=reading.outcome.value,
                reason=reading.reason,
            )
        elif heard.error is not None:
            via = heard.via.value if heard.via is not None else "sms"
            self._event(
                Kind.UPGRADE_NOTICE,
                f"not a notice ({via}): {heard.error}",
                error=True,
                via=via,
                reason=heard.error,
                look_alike=True,
            )
            self.outcomes.append(Outcome("", None, ResultCode.INVALID_DESCRIPTOR, heard.error, via))
            self.changed.set()
            self.changed = trio.Event()
        else:
            self._event(Kind.UPGRADE_NOTICE, "an SMS that is not a notice: ignored", via="sms", ignored=True)
        return heard

    # ------------------------------------------------------------------------------------------ the flows

    async def run(self) -> None:
        """Takes queued notices one at a time."""
        async for notice, ask in self._receive:
            outcome = await self._guarded(notice, ask)
            if outcome is None or outcome.code not in (ResultCode.SUCCESS, ResultCode.USER_CANCELLED):
                # a failed flow (no service, refused authentication...): the server's re-notice gets a new prompt
                # (a decline stands: the user answered it)
                self._seen.pop(_key(notice), None)

    async def _guarded(self, notice: Notice, ask: bool) -> Outcome | None:
        """A flow whose unforeseen fault is an app.error event, never the end of the agent or of the AP."""
        try:
            return await self.flow(notice, ask=ask)
        except Exception as exc:  # noqa: BLE001 - one notice's fault never ends the agent
            self.tracer.emit(
                Actor.AP,
                Actor.AP,
                Layer.APP,
                f"upgrade flow ended by {type(exc).__name__}: {exc}",
                error=True,
                kind=Kind.APP_ERROR,
                fields={"where": "upgrade flow", "error": f"{type(exc).__name__}: {str(exc)[:200]}"},
            )
            return None

    async def flow(self, notice: Notice, *, ask: bool = True) -> Outcome:
        """One notice from the prompt to the result (the active check's notice is not asked: the user started it)."""
        async with self._lock:
            return await self._flow(notice, ask)

    async def _flow(self, notice: Notice, ask: bool) -> Outcome:
        flow = Flow(notice)
        if ask:
            flow.move(FlowInput.ASK)
            accepted = self.policy.ask()
            self._event(
                Kind.UPGRADE_PROMPT,
                f"install {notice.name} {notice.version or ''}? {'accepted' if accepted else 'declined'}",
                step=STEP_NOTICE,
                name=notice.name,
                version=notice.version,
                via=notice.via.value,
                installed=self.registry.version(notice.name),
                answer="accept" if accepted else "decline",
                prompt=self.policy.asked,
            )
            if not accepted:
                flow.move(FlowInput.DECLINED)
                return self._tell(notice, ResultCode.USER_CANCELLED, "the user declined")
        flow.move(FlowInput.ACCEPTED)
        with trio.move_on_after(IMEI_WAIT):
            await self.imei_known.wait()
        if self.imei is None:
            flow.move(FlowInput.UNREACHABLE)
            return self._tell(notice, ResultCode.LOSS_OF_SERVICE, "IMEI unknown: the modem did not give it")
        client = (
            PublishClient(notice.server, self.tracer, notice.via.value)
            if _is_address(notice.server)
            else None
        )
        if client is None:
            flow.move(FlowInput.UNREACHABLE)
            return self._tell(
                notice, ResultCode.INVALID_DESCRIPTOR, f"{notice.server[:60]!r} is not HOST:PORT"
            )
        unreachable = self.unreachable(client.host, client.port)
        if unreachable is not None:
            flow.move(FlowInput.UNREACHABLE)
            return self._tell(notice, ResultCode.LOSS_OF_SERVICE, unreachable)
        release: dict[str, Any] | None = None
        try:
            try:
                await client.authenticate(str(self.imei), self.options.token)
            except FlowFailed:
                flow.move(FlowInput.UNREACHABLE)
                raise
            flow.move(FlowInput.CONNECTED)
            flow.move(FlowInput.AUTHENTICATED)
            release = await self._release(client, notice)
            if release is None:
                flow.move(FlowInput.NO_UPDATE)
                return self._tell(notice, None, "no new version")
            flow.move(FlowInput.RELEASE)
            data = await self._download(client, release)
            flow.move(FlowInput.DOWNLOADED)
            await self._install(release, data)
            flow.move(FlowInput.INSTALLED)
            code, reason = ResultCode.SUCCESS, ""
        except FlowFailed as failure:
            if flow.state is FlowState.DONE:
                return self._tell(notice, failure.code, failure.reason)
            if flow.state is not FlowState.REPORTING:
                flow.move(FlowInput.FAILED)
            code, reason = failure.code, failure.reason
        version = str(release["version"]) if release is not None else notice.version
        done = Notice(notice.via, notice.server, notice.location, notice.name, version, notice.timestamp)
        try:  # the server first, then the user: once the user has the result the flow is over
            answer = await client.request(
                "POST",
                "/v1/report",
                {"name": notice.name, "version": version or "", "status": int(code), "reason": reason[:200]},
            )
            if answer.status >= 300:
                raise FlowFailed(ResultCode.LOSS_OF_SERVICE, f"report refused (HTTP {answer.status})")
            flow.move(FlowInput.REPORTED)
        except FlowFailed:
            flow.move(FlowInput.UNREACHABLE)
        return self._tell(done, code, reason)

    async def _release(self, client: PublishClient, notice: Notice) -> dict[str, Any] | None:
        if notice.via is NoticeVia.ACTIVE:
            installed = self.registry.version(notice.name) or "0"
            answer = await client.request(
                "POST", "/v1/check", {"name": notice.name, "version": installed}, step=STEP_CHECK
            )
            body = answer.json()
            if answer.status != 200 or not isinstance(body, dict) or not isinstance(body.get("update"), bool):
                raise FlowFailed(ResultCode.INVALID_DESCRIPTOR, f"the check answered HTTP {answer.status}")
            if not body["update"]:
                return None
            return check_release(body.get("release"), notice)
        answer = await client.request("GET", f"/v1/catalogue/{notice.name}")
        if answer.status != 200:
            raise FlowFailed(
                ResultCode.INVALID_DESCRIPTOR, f"no release of {notice.name} (HTTP {answer.status})"
            )
        release = check_release(answer.json(), notice)
        current = self.registry.version(notice.name)
        if current is not None and not newer(release["version"], current):
            raise FlowFailed(
                ResultCode.ATTRIBUTE_MISMATCH,
                f"{release['version']} is not newer than the installed {current}",
            )
        return release

    async def _download(self, client: PublishClient, release: dict[str, Any]) -> bytes:
        limit = min(int(release["size"]), MAX_PACKAGE)  # never more than the release announced
        answer = await client.request(
            "GET", release["location"], limit=limit, too_large=ResultCode.SIZE_MISMATCH
        )
        if answer.status != 200:
            raise FlowFailed(ResultCode.INVALID_DESCRIPTOR, f"the download answered HTTP {answer.status}")
        check_package(release, answer.body, answer.headers.get("x-package-sha256"))
        return answer.body

    async def _install(self, release: dict[str, Any], data: bytes) -> None:
        # the release's `kind`, never the package's bytes, makes it an applet (a software package may begin with
        # anything); the registry keeps its own names: "app" for software, "applet"
        kind = "app"
        if release.get("kind") == "applet":
            await self._install_applet(release, data)
            kind = "applet"
        try:
            self.registry.install(release["name"], release["version"], data, release["sha256"], kind=kind)
        except RegistryError as exc:
            codes = {"name": ResultCode.INVALID_DESCRIPTOR, "version": ResultCode.INVALID_DESCRIPTOR}
            codes["hash"] = ResultCode.INVALID_PACKAGE
            raise FlowFailed(codes.get(exc.cause, ResultCode.INSUFFICIENT_MEMORY), str(exc)) from None

    async def _install_applet(self, release: dict[str, Any], data: bytes) -> None:
        """A card applet's release: its descriptor carries the OTA platform's secured SMS-PP push (ETSI TS 102 225,
        GlobalPlatform Amendment B session triggering), which the agent hands to the card (AT%SMSPP on DLC 1) so
        that the card opens its session with the OTA server, whose campaign loads and installs the applet by RAM
        (GlobalPlatform Card Specification section 11). The card's PoR says whether it took the push."""
        try:
            descriptor = tomllib.loads(data.decode("utf-8"))
            trigger = bytes.fromhex(str(descriptor["trigger"]))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, ValueError) as exc:
            raise FlowFailed(ResultCode.INVALID_PACKAGE, f"the applet descriptor: {exc}") from None
        if self.chat is None:
            raise FlowFailed(ResultCode.LOSS_OF_SERVICE, "no modem session to reach the card")
        self.tracer.emit(
            Actor.AP,
            Actor.CP,
            Layer.SMS,
            f"SMS-PP data download for applet {release['name']} {release['version']}: {len(trigger)} bytes",
            trigger,
            kind=Kind.SMS_PP,
            fields={"length": len(trigger), "applet": release["name"]},
        )
        response = None
        for _ in range(READ_ATTEMPTS):
            response = await self._command(self.chat, f'AT%SMSPP="{trigger.hex().upper()}"')
            if response is None or response.ok or response.final not in BUSY:
                break
            await trio.sleep(READ_RETRY)
        if response is None or not response.ok:
            final = "no answer" if response is None else response.final
            raise FlowFailed(ResultCode.LOSS_OF_SERVICE, f"the card did not get the push: {final}")
        por_hex = next((line.split('"')[1] for line in response.lines if line.count('"') >= 2), "")
        try:
            por = bytes.fromhex(por_hex)
        except ValueError:
            por = b""
        # an unciphered PoR (TS 31.115 4.4, TS 102 225 table 5.5): UDH 02 71 00 ... the status at offset 15
        status = por[15] if por[:3] == b"\x02\x71\x00" and len(por) >= 16 else None
        self.tracer.emit(
            Actor.CP,
            Actor.AP,
            Layer.SMS,
            f"SMS-PP PoR for applet {release['name']}: status {'none' if status is None else f'{status:02X}'}",
            por,
            error=status != 0,
            kind=Kind.SMS_POR,
            fields={"status": f"{status:02X}"} if status is not None else {},
        )
        if status != 0:
            raise FlowFailed(
                ResultCode.AUTHORIZATION_FAILURE, f"the card refused the applet's push (PoR {por_hex})"
            )

    # --------------------------------------------------------------------------------- embodiments 3 and 4

    async def active_check(self) -> list[Outcome]:
        """Embodiment 3: the installed name and version of every registry entry to the configured server."""
        if self.options.server is None:
            return []
        host, port = self.options.server
        out = []
        for name in sorted(self.registry.entries):
            notice = Notice(NoticeVia.ACTIVE, f"{host}:{port}", "", name, self.registry.version(name), None)
            outcome = await self._guarded(notice, False)
            if outcome is not None:
                out.append(outcome)
        return out

    async def ip_push(self) -> None:
        """Embodiment 4: holds the authenticated connection, reconnecting with a doubling backoff; a rejected
        authentication ends it (result 909 to the user), as retrying a refused token cannot succeed."""
        if self.options.ip_push is None:
            return
        await self.imei_known.wait()
        backoff = BACKOFF_FIRST / 2  # the first failed attempt waits BACKOFF_FIRST
        while True:
            welcomed = False
            try:
                welcomed = await self._push_session()
            except (
                OSError,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                FrameError,
                trio.TooSlowError,
            ) as exc:
                self._event(
                    Kind.UPGRADE_PUSH,
                    f"IP push connection lost: {exc or type(exc).__name__}",
                    error=True,
                    type="close",
                    direction="in",
                    reason=str(exc) or type(exc).__name__,
                )
            except Exception as exc:  # noqa: BLE001 - a server's fault never ends the AP: trace, back off, retry
                self.tracer.emit(
                    Actor.AP,
                    Actor.AP,
                    Layer.APP,
                    f"IP push ended by {type(exc).__name__}: {exc}",
                    error=True,
                    kind=Kind.APP_ERROR,
                    fields={"where": "upgrade ip push", "error": f"{type(exc).__name__}: {str(exc)[:200]}"},
                )
            finally:
                self.push_connected = False
            if self.push_rejected:
                return
            backoff = next_backoff(backoff, welcomed)
            await trio.sleep(backoff)

    def unreachable(self, host: str, port: int) -> str | None:
        """Why the AP's network cannot carry a connection to host:port (no bearer up: neither Wi-Fi nor the CP's
        data path; or a destination outside the AP's allowlist, as for the proxy), None when it can."""
        if self.network is None:
            return None
        if not (self.network.wifi or self.network.cellular):
            return "no bearer is up (Wi-Fi and cellular data are off)"
        if not self.network.allowed(host, port):
            return f"the AP's network does not reach {host}:{port} (not in its allowlist)"
        return None

    async def _push_session(self) -> bool:
        assert self.options.ip_push is not None
        host, port = self.options.ip_push
        unreachable = self.unreachable(host, port)
        if unreachable is not None:
            raise OSError(unreachable)
        return await self.push_session(await trio.open_tcp_stream(host, port), f"{host}:{port}")

    async def push_session(self, stream: trio.abc.Stream, where: str) -> bool:
        """One IP-push connection on `stream` until it ends; whether it was welcomed. Raises what ends it
        (trio.TooSlowError: the server silent for DEAD_PEER seconds, FrameError: a bad frame, a broken stream)."""
        decoder = FrameDecoder()
        welcomed = False
        async with stream:

            async def send(frame: dict[str, Any], step: str | None = None) -> None:
                data = encode_frame(frame)
                self.tracer.emit(
                    Actor.AP,
                    Actor.PUBLISH,
                    Layer.APP,
                    f"push: {frame['type']}",
                    data,
                    step=step,
                    kind=Kind.UPGRADE_PUSH,
                    fields={"type": frame["type"], "direction": "out"},
                )
                await stream.send_all(data)

            await send({"type": "hello", "imei": self.imei}, STEP_PUSH_AUTH)
            last_heard = trio.current_time()
            pinged = False  # a ping went out since the server was last heard
            while True:
                got = decoder.next_frame()
                if got is None:
                    # one ping after KEEPALIVE seconds of silence, then the server is gone at DEAD_PEER
                    limit = KEEPALIVE if welcomed and not pinged else DEAD_PEER
                    wait = limit - (trio.current_time() - last_heard)
                    data = b""
                    with trio.move_on_after(max(wait, 0)) as idle:
                        data = bytes(await stream.receive_some(4096))
                        if not data:
                            raise trio.BrokenResourceError("the server closed the connection")
                    if idle.cancelled_caught:
                        if trio.current_time() - last_heard >= DEAD_PEER:
                            raise trio.TooSlowError(f"no word from the server in {DEAD_PEER:g} s")
                        await send({"type": "ping"})
                        pinged = True
                        continue
                    decoder.feed(data)
                    last_heard, pinged = trio.current_time(), False
                    continue
                frame, raw = got
                kind = frame["type"]
                self.tracer.emit(
                    Actor.PUBLISH,
                    Actor.AP,
                    Layer.APP,
                    f"push: {kind}",
                    raw,
                    step=STEP_PUSH_RELEASE if kind == "release" and welcomed else None,
                    kind=Kind.UPGRADE_PUSH,
                    fields={"type": kind, "direction": "in"},
                )
                if kind == "challenge" and not welcomed:
                    nonce = frame.get("nonce")
                    if not isinstance(nonce, str) or not re.fullmatch(NONCE, nonce):
                        raise FrameError("a challenge without a hex nonce")
                    await send(
                        {"type": "auth", "mac": terminal_mac(self.options.token, nonce, str(self.imei))}
                    )
                elif kind == "welcome" and not welcomed:
                    welcomed = self.push_connected = True
                    self._event(Kind.UPGRADE_PUSH, "IP push authenticated", type="welcomed", direction="in")
                elif kind == "rejected":
                    self.push_rejected = True
                    reason = str(frame.get("reason", ""))[:200]
                    push_notice = Notice(NoticeVia.IP, where, "", "ip-push", None, None)
                    self._tell(push_notice, ResultCode.AUTHENTICATION_FAILURE, f"IP push rejected: {reason}")
                    return False
                elif kind == "release" and welcomed:
                    notice = _release_frame(frame)
                    if notice is None:
                        self._event(
                            Kind.UPGRADE_NOTICE,
                            "a release frame that is no notice",
                            error=True,
                            via="ip",
                            look_alike=True,
                            reason="malformed release frame",
                        )
                        continue
                    self._event(
                        Kind.UPGRADE_NOTICE,
                        f"ip notice: {notice.name} {notice.version} at {notice.url}",
                        via="ip",
                        name=notice.name,
                        version=notice.version,
                        server=notice.server,
                        location=notice.location,
                    )
                    self.offer(notice)
                elif kind == "ping" and welcomed:
                    await send({"type": "pong"})
                elif kind == "pong" and welcomed:
                    pass
                elif kind == "error":
                    return welcomed
                else:
                    await send({"type": "error", "reason": f"unexpected {kind[:40]}"})
                    return welcomed

    # --------------------------------------------------------------------------------------- the modem line

    async def listen(self, chat: Any) -> None:
        """On one modem session: read the IMEI, set PDU mode and +CNMI so that each new message is indicated
        (+CMTI), read what is already stored unread, then read and delete each indicated message (+CMGR, +CMGD).
        A message is deleted only once it was read; a read refused while the card is busy is tried again."""
        if self.imei is None:
            for command in ("AT+CGSN=1", "AT+CGSN"):
                response = await self._command(chat, command)
                found = (
                    IMEI.search(" ".join(response.lines)) if response is not None and response.ok else None
                )
                if found is not None:
                    self.imei = found.group(0)
                    self.imei_known.set()
                    break
        indicated: trio.MemorySendChannel[int]
        indicated, waiting = trio.open_memory_channel[int](64)

        def cmti(line: str) -> None:
            index = line.rsplit(",", 1)[-1].strip()
            if index.isdigit():
                try:
                    indicated.send_nowait(int(index))
                except trio.WouldBlock:
                    pass

        chat.add_urc_handler("+CMTI:", cmti)
        self.chat = chat
        await self._command(chat, "AT+CMGF=0")
        await self._command(chat, "AT+CNMI=2,1,0,0,0", step=STEP_LISTEN)
        listing = await self._command(chat, "AT+CMGL=0")  # received unread: what came before the indications
        if listing is not None and listing.ok:
            for line in listing.lines:
                if line.startswith("+CMGL:"):
                    stored = line[6:].split(",", 1)[0].strip()
                    if stored.isdigit():
                        cmti(f"+CMTI: ,{stored}")
        async for index in waiting:
            response = None
            for _ in range(READ_ATTEMPTS):
                response = await self._command(chat, f"AT+CMGR={index}")
                if response is None or response.ok or response.final not in BUSY:
                    break
                await trio.sleep(READ_RETRY)
            if response is None or not response.ok:
                continue
            await self._command(chat, f"AT+CMGD={index}")
            pdu_line = next((line for line in response.lines if not line.startswith("+CMGR")), None)
            try:
                if pdu_line is None:
                    raise ValueError("no PDU after +CMGR")
                _, tpdu = decode_sca(bytes.fromhex(pdu_line.strip()))
            except (ValueError, SmsPduError) as exc:
                self._event(
                    Kind.UPGRADE_NOTICE, f"unreadable message {index}: {exc}", error=True, reason=str(exc)
                )
                continue
            self.heard_sms(tpdu)

    async def _command(self, chat: Any, line: str, *, step: str | None = None) -> AtResponse | None:
        """One AT command; None (and an app.error event) when the modem does not answer in time."""
        try:
            response: AtResponse = await chat.command(line, step=step)
        except AtTimeout as exc:
            self.tracer.emit(
                Actor.AP,
                Actor.CP,
                Layer.APP,
                f"no answer to {line}",
                error=True,
                kind=Kind.APP_ERROR,
                fields={"where": "upgrade agent", "error": f"AtTimeout: {exc}"[:200]},
            )
            return None
        return response


def _key(notice: Notice) -> tuple[str, str, str | None]:
    """What makes a notice a repeat: the same server, location and timestamp."""
    return (
        notice.server,
        notice.location,
        None if notice.timestamp is None else notice.timestamp.isoformat(),
    )


def _is_address(server: str) -> bool:
    host, sep, port = server.rpartition(":")
    return bool(sep and host and port.isdigit() and int(port) < 65536)


def _release_frame(frame: dict[str, Any]) -> Notice | None:
    try:
        server, location, name = frame["server"], frame["location"], frame["name"]
        version, timestamp = frame.get("version"), frame.get("timestamp")
        if not all(isinstance(v, str) for v in (server, location, name)):
            return None
        if version is not None and not isinstance(version, str):
            return None
        when = (
            datetime.fromisoformat(timestamp.replace("Z", "+00:00")) if isinstance(timestamp, str) else None
        )
    except (KeyError, ValueError):
        return None
    if not _is_address(server):
        return None
    return Notice(NoticeVia.IP, server, location, name, version, when)
