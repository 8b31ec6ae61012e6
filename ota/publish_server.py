"""The publish server of the push deployment (docs/protocols.md, "Push deployment"): a release catalogue, terminal
authentication by challenge and response, package downloads, the version check of embodiment 3, the terminals'
result reports, and the admin notify that sends a release's notice as a plain SMS or a WAP Push (WAP-230 WSP Push
PDU carrying a WAP-167 Service Indication, through the CP's SMSC control socket) or over the IP-push connections
of ota/push_channel.py. HTTP/1.1 (RFC 9110/9112) through h11 with the limits of ota/http_connection.py; JSON bodies.

Authentication: the server knows each terminal's IMEI and a token; `POST /v1/auth/challenge` issues a single-use
nonce, the terminal answers mac = HMAC-SHA256(token, nonce || IMEI) (RFC 2104), and a right answer opens a session
that later requests present as `Authorization: Bearer <session>` (RFC 6750). The token never crosses the wire.

`PublishService` is the sans-IO core (a whole request and the time in, an answer out; a notify comes out as a
`NotifyOrder` the adapter carries out); `PublishServer` is the trio adapter. Every answered request is one
`publish.*` event (the access log) after its `http.request`.

`Fault` makes the server lie on purpose so that the terminal's handling of bad input can be shown: a corrupt
package, a wrong advertised size, a download dropped half way, every authentication refused.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import tomllib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import trio

from bipsim.ota.http_connection import REASONS, HttpRequest, ServerConnection
from bipsim.ota.http_serve import Reply, serve_connection
from bipsim.ota.push_channel import Authenticated, PushServer
from bipsim.ota.release_catalogue import (
    Catalogue,
    CatalogueError,
    Release,
    VersionError,
    load_catalogue,
    newer,
    parse_version,
)
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.http_limits import HttpLimits

MAX_BODY = 16 * 1024  # bytes of a request's JSON body: the largest (a report's reason) is far below
LIMITS = HttpLimits(header_bytes=8 * 1024, body_bytes=MAX_BODY, request_timeout=30.0, connections=256)
NONCE_TTL = 60.0  # seconds a nonce may be answered
SESSION_TTL = 600.0  # seconds a session opened by a right answer lasts
MAX_NONCES = 4096  # nonces outstanding at once; past it the oldest is forgotten (a flood cannot grow memory)
MAX_SESSIONS = 4096
MAX_REPORTS = 1000
IMEI = re.compile(r"^[0-9]{14,16}$")
MSISDN = re.compile(r"^\+[0-9]{1,20}$")
MAC = re.compile(r"^[0-9a-fA-F]{64}$")  # HMAC-SHA256 in hex; anything else never reaches compare_digest
WAP_PUSH_PORT = (
    2948  # WDP port of the connectionless push session service (WAP-259); the SMSC sends from 9200
)
REALM = 'Bearer realm="bipsim-publish"'
STEP_AUTH = "001:203"  # the server authenticates the terminal
STEP_DOWNLOAD = "001:204"  # download (install, configure, report are the terminal's)

# JSR-118 (MIDP 2.0) OTA status codes (docs/protocols.md, "Push deployment": the result codes)
JSR118 = {
    900: "Success",
    901: "Insufficient Memory",
    902: "User Cancelled",
    903: "Loss of Service",
    904: "JAR Size Mismatch",
    905: "Attribute Mismatch",
    906: "Invalid Descriptor",
    907: "Invalid JAR",
    908: "Incompatible Configuration or Profile",
    909: "Application Authentication Failure",
    910: "Application Authorization Failure",
    911: "Push Registration Failure",
    912: "Deletion Notification",
}


class Fault(StrEnum):
    """How the server lies when told to (`--fault`)."""

    CORRUPT_PACKAGE = (
        "corrupt-package"  # one byte of each package flipped; size and the hash header as listed
    )
    WRONG_SIZE = "wrong-size"  # every release advertises one byte more than its package has
    DROP_DOWNLOAD = "drop-download"  # the download's headers and half its bytes, then the connection breaks
    REJECT_AUTH = "reject-auth"  # every MAC is refused, right or not (HTTP 403, IP push `rejected`)


class TerminalsError(ValueError):
    """The terminals file is not `[terminals] "<imei>" = "<token hex>"` (reason in str())."""


def load_terminals(path: Path) -> dict[str, bytes]:
    """IMEI -> token from a TOML file with a `[terminals]` table of hex strings."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TerminalsError(f"{path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TerminalsError(f"{path}: not TOML: {exc}") from None
    table = data.get("terminals")
    if not isinstance(table, dict):
        raise TerminalsError(f'{path}: no [terminals] table ("<imei>" = "<token hex>")')
    out: dict[str, bytes] = {}
    for imei, token in table.items():
        if not IMEI.match(imei):
            raise TerminalsError(f"{path}: {imei[:40]!r} is not an IMEI (14 to 16 digits)")
        try:
            key = bytes.fromhex(token) if isinstance(token, str) else b""
        except ValueError:
            key = b""
        if len(key) < 16:
            raise TerminalsError(f"{path}: the token of {imei} is not hex of 16 bytes or more")
        out[imei] = key
    return out


def terminal_mac(token: bytes, nonce: str, imei: str) -> str:
    """HMAC-SHA256(token, nonce bytes || IMEI in ASCII), hex: the terminal's answer to a challenge."""
    return hmac.new(token, bytes.fromhex(nonce) + imei.encode("ascii"), hashlib.sha256).hexdigest()


class TerminalAuth:
    """Nonces, their answers and the sessions they open. Pure: the time comes in with each call."""

    def __init__(
        self,
        terminals: dict[str, bytes],
        *,
        reject_all: bool = False,
        random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.terminals = terminals
        self.reject_all = reject_all
        self.random = random
        self.nonces: OrderedDict[str, tuple[str, float]] = OrderedDict()  # nonce -> (imei, issued)
        self.sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()  # session -> (imei, expires)

    def challenge(self, imei: str, now: float) -> str:
        """A fresh nonce for `imei`, known or not (the answer does not tell which terminals the server knows)."""
        nonce = self.random(16).hex()
        self.nonces[nonce] = (imei, now)
        while len(self.nonces) > MAX_NONCES:
            self.nonces.popitem(last=False)
        return nonce

    def verify(self, imei: str, nonce: str, mac: str, now: float) -> str | None:
        """None when `mac` answers `nonce` for `imei`; else the reason. The nonce is used up either way."""
        issued = self.nonces.pop(nonce.lower(), None)
        if not MAC.match(mac):
            return "the mac is not 64 hex digits"
        if issued is None:
            return "unknown or already used nonce"
        if issued[0] != imei:
            return "the nonce was issued to another IMEI"
        if now - issued[1] > NONCE_TTL:
            return f"the nonce expired ({NONCE_TTL:g} s)"
        # an unknown IMEI is checked against a random key, so that it takes the same path as a wrong MAC
        token = self.terminals.get(imei) or self.random(32)
        right = terminal_mac(token, nonce.lower(), imei)
        if not hmac.compare_digest(right, mac.lower()) or imei not in self.terminals or self.reject_all:
            return "authentication failed"
        return None

    def open_session(self, imei: str, now: float) -> str:
        session = self.random(16).hex()
        self.sessions[session] = (imei, now + SESSION_TTL)
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return session

    def session(self, authorization: str, now: float) -> str | None:
        """The IMEI of a live session named by an `Authorization: Bearer` value; None otherwise."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        found = self.sessions.get(token.strip())
        if found is None:
            return None
        if now >= found[1]:
            del self.sessions[token.strip()]
            return None
        return found[0]


@dataclass(frozen=True)
class Answer:
    """An answer and its access-log event. `package`: the body is a package (not copied into the trace);
    `cut_at`: the adapter sends only that many body bytes and then breaks the connection (drop-download)."""

    status: int
    body: bytes
    kind: Kind
    fields: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()
    package: bool = False
    cut_at: int | None = None
    close: bool = False
    step: str | None = None


@dataclass(frozen=True)
class NotifyOrder:
    """An admin notify the core checked: the adapter sends `texts` or the WDP `datagrams` (to port 2948) through the
    SMSC (sms, wap) or the
    release frame over the push connections (ip), then asks the core for the answer (`PublishService.notified`)."""

    release: Release
    advertised: dict[str, Any]
    via: str
    msisdn: str | None
    texts: tuple[str, ...] = ()
    datagrams: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Report:
    imei: str
    name: str
    version: str
    status: int
    reason: str


class _Refuse(Exception):
    def __init__(
        self,
        status: int,
        reason: str,
        kind: Kind = Kind.PUBLISH_REFUSED,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.kind = kind
        self.headers = headers


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


def _str(body: dict[str, Any], key: str, limit: int = 256) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise _Refuse(400, f"{key}: give a string of 1 to {limit} characters")
    return value


class PublishService:
    """The rules of the HTTP API (docs/protocols.md, "Push deployment"); pure but for the catalogue it holds."""

    def __init__(
        self,
        catalogue: Catalogue,
        auth: TerminalAuth,
        *,
        advertise: str,
        faults: frozenset[Fault] = frozenset(),
        sms_from: str = "+15550008450",
        smsc: bool = True,
        source: Path | None = None,
    ) -> None:
        self.catalogue = catalogue
        # the directory the catalogue came from: an admin notify reads it again when catalogue.toml changed, so a
        # release published while the server runs is announced without a restart
        self.source = source
        self._stamp = self._source_stamp()
        self.auth = auth
        self.advertise = advertise
        self.faults = faults
        self.sms_from = sms_from
        self.smsc = smsc  # whether sms/wap notices have an SMSC to go through
        self.reports: list[Report] = []
        self.downloads = 0

    def _source_stamp(self) -> tuple[int, int] | None:
        if self.source is None:
            return None
        try:
            info = (self.source / "catalogue.toml").stat()
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    def refresh(self) -> None:
        """Reads the catalogue again when catalogue.toml changed; a broken one is refused (409) and the old kept."""
        stamp = self._source_stamp()
        if self.source is None or stamp == self._stamp:
            return
        try:
            catalogue = load_catalogue(self.source)
        except CatalogueError as exc:
            raise _Refuse(
                409, f"catalogue.toml was changed and is not valid: {exc}", Kind.PUBLISH_NOTIFY
            ) from None
        self.catalogue, self._stamp = catalogue, stamp

    # --- what the notices and answers say of a release ---

    def advertised(self, release: Release) -> dict[str, Any]:
        return release.as_json(size=release.size + 1 if Fault.WRONG_SIZE in self.faults else None)

    def handle(self, request: HttpRequest, *, loopback: bool, now: float) -> Answer | NotifyOrder:
        path = request.target.split("?", 1)[0]
        base: dict[str, Any] = {"method": request.method, "target": request.target[:200]}
        try:
            return self._route(request, path, base, loopback=loopback, now=now)
        except _Refuse as exc:
            fields = {**base, "status": exc.status, "reason": exc.reason}
            return Answer(exc.status, _json({"error": exc.reason}), exc.kind, fields, exc.headers)

    def _route(
        self, request: HttpRequest, path: str, base: dict[str, Any], *, loopback: bool, now: float
    ) -> Answer | NotifyOrder:
        routes: dict[str, tuple[str, Callable[..., Answer | NotifyOrder]]] = {
            "/v1/auth/challenge": ("POST", self._challenge),
            "/v1/auth/response": ("POST", self._response),
            "/v1/check": ("POST", self._check),
            "/v1/report": ("POST", self._report),
            "/v1/admin/notify": ("POST", self._notify),
        }
        if path in routes:
            method, handler = routes[path]
        elif path.startswith("/v1/catalogue/"):
            method, handler = "GET", self._catalogue
        elif path.startswith("/v1/packages/"):
            method, handler = "GET", self._download
        else:
            raise _Refuse(404, f"no resource {path[:100]}")
        if request.method != method:
            raise _Refuse(405, f"{path[:100]} takes {method}", headers=(("allow", method),))
        if handler == self._notify and not loopback:
            raise _Refuse(403, "the admin API answers loopback peers only")
        body: dict[str, Any] = {}
        if method == "POST":
            body = self._body(request)
        imei: str | None = None
        if handler in (self._check, self._report, self._catalogue, self._download):
            imei = self.auth.session(request.header("authorization"), now)
            if imei is None:
                raise _Refuse(
                    401, "no valid session: authenticate first", headers=(("www-authenticate", REALM),)
                )
            base["imei"] = imei
        return handler(request=request, path=path, body=body, base=base, imei=imei, now=now)

    def _body(self, request: HttpRequest) -> dict[str, Any]:
        try:
            body = json.loads(request.body.decode("utf-8"))
        except RecursionError:
            raise _Refuse(400, "the body's JSON is nested too deeply") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Refuse(400, f"the body is not UTF-8 JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _Refuse(400, "the body is a JSON object")
        return body

    def _challenge(self, *, body: dict[str, Any], base: dict[str, Any], now: float, **_: Any) -> Answer:
        imei = _str(body, "imei", 16)
        if not IMEI.match(imei):
            raise _Refuse(400, "imei: 14 to 16 digits")
        nonce = self.auth.challenge(imei, now)
        return Answer(
            200,
            _json({"nonce": nonce}),
            Kind.PUBLISH_CHALLENGE,
            {**base, "status": 200, "imei": imei, "channel": "http"},
        )

    def _response(self, *, body: dict[str, Any], base: dict[str, Any], now: float, **_: Any) -> Answer:
        imei, nonce, mac = _str(body, "imei", 16), _str(body, "nonce", 32), _str(body, "mac", 64)
        if not MAC.match(mac):
            # hmac.compare_digest refuses non-ASCII text with TypeError: the shape is checked first
            raise _Refuse(400, "mac: 64 hex digits (HMAC-SHA256)")
        fields = {**base, "imei": imei, "channel": "http"}
        reason = self.auth.verify(imei, nonce, mac, now)
        if reason is None:
            session = self.auth.open_session(imei, now)
            fields.update(status=200, ok=True)
            return Answer(
                200,
                _json({"session": session, "expires": SESSION_TTL}),
                Kind.PUBLISH_AUTH,
                fields,
                step=STEP_AUTH,
            )
        fields.update(status=403, ok=False, reason=reason, known=imei in self.auth.terminals)
        if self.auth.reject_all:
            fields["fault"] = Fault.REJECT_AUTH.value
        return Answer(403, _json({"error": reason}), Kind.PUBLISH_AUTH, fields, step=STEP_AUTH)

    def _catalogue(self, *, path: str, base: dict[str, Any], **_: Any) -> Answer:
        name = path[len("/v1/catalogue/") :]
        release = self.catalogue.latest(name)
        if release is None:
            raise _Refuse(404, f"no release of {name[:64]!r}", Kind.PUBLISH_CATALOGUE)
        fields = {**base, "status": 200, "name": name, "version": release.version}
        return Answer(200, _json(self.advertised(release)), Kind.PUBLISH_CATALOGUE, fields)

    def _check(self, *, body: dict[str, Any], base: dict[str, Any], **_: Any) -> Answer:
        name, version = _str(body, "name", 64), _str(body, "version", 64)
        try:
            parse_version(version)
        except VersionError as exc:
            raise _Refuse(400, f"version: {exc}", Kind.PUBLISH_CHECK) from None
        latest = self.catalogue.latest(name)
        update = latest is not None and newer(latest.version, version)
        fields = {
            **base,
            "status": 200,
            "name": name,
            "version": version,
            "update": update,
            "latest": latest.version if latest else None,
        }
        answer: dict[str, Any] = {"update": update}
        if update and latest is not None:
            answer["release"] = self.advertised(latest)
        return Answer(200, _json(answer), Kind.PUBLISH_CHECK, fields)

    def _download(self, *, path: str, base: dict[str, Any], **_: Any) -> Answer:
        release = self.catalogue.find(path)
        if release is None:
            raise _Refuse(404, f"no package at {path[:100]}", Kind.PUBLISH_DOWNLOAD)
        data = release.data
        fault: str | None = None
        cut_at: int | None = None
        if Fault.CORRUPT_PACKAGE in self.faults:
            fault = Fault.CORRUPT_PACKAGE.value
            at = len(data) // 2
            data = data[:at] + bytes((data[at] ^ 0xFF,)) + data[at + 1 :] if data else b"\x00"
        if Fault.DROP_DOWNLOAD in self.faults:
            fault = Fault.DROP_DOWNLOAD.value
            cut_at = len(data) // 2
        if Fault.WRONG_SIZE in self.faults and fault is None:
            fault = Fault.WRONG_SIZE.value
        self.downloads += 1
        fields = {
            **base,
            "status": 200,
            "name": release.name,
            "version": release.version,
            "size": len(data) if cut_at is None else cut_at,
            "sha256": release.sha256,
            "fault": fault,
        }
        headers = (("content-type", "application/octet-stream"), ("x-package-sha256", release.sha256))
        return Answer(
            200,
            data,
            Kind.PUBLISH_DOWNLOAD,
            fields,
            headers,
            package=True,
            cut_at=cut_at,
            step=STEP_DOWNLOAD,
        )

    def _report(self, *, body: dict[str, Any], base: dict[str, Any], imei: str, **_: Any) -> Answer:
        name, version = _str(body, "name", 64), _str(body, "version", 64)
        status = body.get("status")
        if isinstance(status, bool) or not isinstance(status, int) or not 900 <= status <= 999:
            raise _Refuse(400, "status: a JSR-118 status code (900..999)", Kind.PUBLISH_REPORT)
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason) > 1024:
            raise _Refuse(400, "reason: a string of up to 1024 characters", Kind.PUBLISH_REPORT)
        self.reports.append(Report(imei, name, version, status, reason))
        del self.reports[:-MAX_REPORTS]
        fields = {
            **base,
            "status": 204,
            "name": name,
            "version": version,
            "result": status,
            "result_name": JSR118.get(status),
            "reason": reason,
        }
        # the report ends the terminal's flow; the connection closes after the 204
        return Answer(204, b"", Kind.PUBLISH_REPORT, fields, close=True)

    def _notify(self, *, body: dict[str, Any], **_: Any) -> NotifyOrder:
        name, via = _str(body, "name", 64), _str(body, "via", 8)
        self.refresh()
        if via not in ("sms", "wap", "ip"):
            raise _Refuse(400, "via: sms, wap or ip", Kind.PUBLISH_NOTIFY)
        release = self.catalogue.latest(name)
        if release is None:
            raise _Refuse(404, f"no release of {name[:64]!r}", Kind.PUBLISH_NOTIFY)
        msisdn: str | None = None
        if via != "ip":
            msisdn = _str(body, "msisdn", 21)
            if not MSISDN.match(msisdn):
                raise _Refuse(400, "msisdn: '+' and up to 20 digits", Kind.PUBLISH_NOTIFY)
            if not self.smsc:
                raise _Refuse(
                    503, "no SMSC to send through (bipsim publish-server --smsc)", Kind.PUBLISH_NOTIFY
                )
        advertised = self.advertised(release)
        if via == "ip":
            return NotifyOrder(release, advertised, via, None)
        from bipsim.net.push_notice import NoticeVia, format_sms_notice, release_notice, wap_push_notice

        notice = release_notice(advertised, self.advertise, NoticeVia(via))
        if via == "sms":
            text = format_sms_notice(notice)
            return NotifyOrder(release, advertised, via, msisdn, texts=(text,))
        payload = wap_push_notice(
            notice,
            si_id=f"{release.name}-{release.version}",  # short: the SI and its href fit one SMS more often
            text=f"{release.name} {release.version}",
        )
        return NotifyOrder(release, advertised, via, msisdn, datagrams=(payload,))

    def notified(
        self,
        order: NotifyOrder,
        *,
        sent: int,
        messages: list[dict[str, Any]],
        error: str | None,
        base: dict[str, Any],
    ) -> Answer:
        """The answer to an admin notify once the adapter carried it out (`error`: the SMSC's refusal)."""
        fields = {
            **base,
            "name": order.release.name,
            "version": order.release.version,
            "via": order.via,
            "msisdn": order.msisdn,
            "sent": sent,
        }
        if error is not None:
            fields.update(status=502, reason=error)
            return Answer(502, _json({"error": error}), Kind.PUBLISH_NOTIFY, fields)
        fields["status"] = 200
        answer = {
            "name": order.release.name,
            "version": order.release.version,
            "via": order.via,
            "msisdn": order.msisdn,
            "sent": sent,
            "messages": messages,
            "release": order.advertised,
        }
        return Answer(200, _json(answer), Kind.PUBLISH_NOTIFY, fields)


SmscRequest = Callable[[dict[str, Any]], Any]


def _loopback(peer: str | None) -> bool:
    if peer is None:
        return False
    try:
        return ipaddress.ip_address(peer.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class PublishServer:
    """The trio adapter of the HTTP API: one task per connection, h11 through ota/http_connection.py, a deadline
    per request; the admin notify's SMSC requests and push announcements. Each request is an `http.request`
    event (hex: its body) and its answer one `publish.*` event (hex: the answer's JSON, not a package's bytes)."""

    def __init__(
        self,
        service: PublishService,
        tracer: Tracer = NULL_TRACER,
        *,
        push: PushServer | None = None,
        smsc: tuple[str, int] | None = None,
        limits: HttpLimits = LIMITS,
    ) -> None:
        self.service = service
        self.tracer = tracer
        self.push = push
        self.smsc = smsc
        self.limits = limits
        self.requests = 0
        self.active = 0
        if push is not None and push.on_auth is None:
            push.on_auth = self.trace_push_auth

    def trace_push_auth(self, outcome: Authenticated, where: str) -> None:
        """The IP push's authentication in the access log, as the HTTP one is."""
        ok = outcome.reason is None
        fields: dict[str, Any] = {"imei": outcome.imei, "ok": ok, "channel": "push", "connection": where}
        if not ok:
            fields["reason"] = outcome.reason
            if self.service.auth.reject_all:
                fields["fault"] = Fault.REJECT_AUTH.value
        self.tracer.emit(
            Actor.PUBLISH,
            Actor.AP,
            Layer.APP,
            f"{where}: terminal {outcome.imei} {'authenticated' if ok else 'rejected: ' + str(outcome.reason)}",
            step=STEP_AUTH,
            error=not ok,
            kind=Kind.PUBLISH_AUTH,
            fields=fields,
        )

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = int(listeners[0].socket.getsockname()[1])
        self.tracer.emit(
            Actor.PUBLISH,
            Actor.PUBLISH,
            Layer.APP,
            f"publish server listening on {host}:{bound}",
            kind=Kind.APP_EVENT,
            fields={
                "event": "listening",
                "host": host,
                "port": bound,
                "releases": len(self.service.catalogue),
            },
        )
        task_status.started(bound)
        await trio.serve_listeners(self.handle, listeners)

    async def serve_on(self, listener: trio.SocketListener) -> None:
        """Serves on a listening socket made beforehand (a scenario hands its port to the AP before it starts)."""
        await trio.serve_listeners(self.handle, [listener])

    async def handle(self, stream: trio.abc.Stream, peer: str | None = None) -> None:
        """One connection; `peer` is its remote address (read from the socket when not given)."""
        if peer is None and isinstance(stream, trio.SocketStream):
            try:
                peer = str(stream.socket.getpeername()[0])
            except OSError:
                peer = None
        self.active += 1
        try:
            await self._loop(stream, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # noqa: BLE001 - one connection's fault never ends the server
            self.tracer.emit(
                Actor.PUBLISH,
                Actor.PUBLISH,
                Layer.APP,
                f"connection ended by {type(exc).__name__}: {exc}",
                error=True,
                kind=Kind.APP_ERROR,
                fields={"where": "publish connection", "error": f"{type(exc).__name__}: {str(exc)[:200]}"},
            )
        finally:
            self.active -= 1
            await trio.aclose_forcefully(stream)

    async def _loop(self, stream: trio.abc.Stream, peer: str | None) -> None:
        connection = ServerConnection(self.limits, over_capacity=self.active > self.limits.connections)

        async def respond(event: HttpRequest) -> Reply:
            return await self._respond(event, peer)

        await serve_connection(stream, connection, respond, tracer=self.tracer, actor=Actor.PUBLISH)

    async def _respond(self, event: HttpRequest, peer: str | None) -> Reply:
        """One whole request: its `http.request` event, the core's answer (a notify carried out) and its
        access-log event."""
        self.requests += 1
        self.tracer.emit(
            Actor.AP,
            Actor.PUBLISH,
            Layer.HTTP,
            f"{event.method} {event.target[:200]}",
            event.body or None,
            kind=Kind.HTTP_REQUEST,
            fields={"method": event.method, "target": event.target[:200], "peer": peer},
        )
        try:
            outcome = self.service.handle(event, loopback=_loopback(peer), now=trio.current_time())
            if isinstance(outcome, NotifyOrder):
                outcome = await self._notify(outcome, event)
        except Exception as exc:  # noqa: BLE001 - a fault of the core is this request's 500, not the server's end
            reason = f"internal error: {type(exc).__name__}: {str(exc)[:200]}"
            outcome = Answer(
                500,
                _json({"error": reason}),
                Kind.PUBLISH_REFUSED,
                {"method": event.method, "target": event.target[:200], "status": 500, "reason": reason},
            )
        return self._answer(outcome)

    def _answer(self, answer: Answer) -> Reply:
        headers = list(answer.headers)
        if answer.body and not answer.package:
            headers.append(("content-type", "application/json"))
        reason = answer.fields.get("reason")
        self.tracer.emit(
            Actor.PUBLISH,
            Actor.AP,
            Layer.HTTP,
            f"{answer.status} {REASONS.get(answer.status, '')} {answer.kind.value}"
            + (f": {reason}" if answer.status >= 400 and reason else ""),
            None if answer.package or not answer.body else answer.body,
            step=answer.step if answer.status < 400 or answer.kind is Kind.PUBLISH_AUTH else None,
            error=answer.status >= 400,
            kind=answer.kind,
            fields=answer.fields,
        )
        cut_at = answer.cut_at
        if cut_at is None:
            return Reply(answer.status, headers, answer.body, close=answer.close)

        async def cut(stream: trio.abc.Stream, data: bytes) -> None:
            # the lie of drop-download: the whole Content-Length announced, half the bytes, then a broken line
            head = len(data) - len(answer.body)
            await stream.send_all(data[: head + cut_at])
            self.tracer.emit(
                Actor.PUBLISH,
                Actor.AP,
                Layer.TCP,
                f"download dropped after {cut_at} of {len(answer.body)} bytes (fault injection)",
                error=True,
                kind=Kind.TCP_ERROR,
                fields={"sent": cut_at, "size": len(answer.body), "fault": Fault.DROP_DOWNLOAD.value},
            )
            raise trio.BrokenResourceError("download dropped on purpose")

        return Reply(answer.status, headers, answer.body, close=answer.close, send=cut)

    async def _notify(self, order: NotifyOrder, request: HttpRequest) -> Answer:
        base = {"method": request.method, "target": request.target[:200]}
        if order.via == "ip":
            sent = await self.push.announce(order.advertised, self.service.advertise) if self.push else 0
            return self.service.notified(order, sent=sent, messages=[], error=None, base=base)
        assert self.smsc is not None, "the core refuses sms/wap without an SMSC"
        from bipsim.net.smsc import request as smsc_request

        host, port = self.smsc
        messages: list[dict[str, Any]] = []
        asks: list[dict[str, Any]] = [
            {"op": "send-mt", "text": text, "from": self.service.sms_from, "wait": 0} for text in order.texts
        ]
        # 8-bit data to port 2948: the SMSC adds the port element (from 9200, WAP-259 6.5) and splits a long one
        # into concatenated parts (TS 23.040 9.2.3.24.1)
        asks += [
            {
                "op": "send-mt",
                "data": data.hex().upper(),
                "port": WAP_PUSH_PORT,
                "from": self.service.sms_from,
                "wait": 0,
            }
            for data in order.datagrams
        ]
        for ask in asks:
            try:
                answer = await smsc_request(host, port, ask, timeout=10.0)
            except (OSError, ConnectionError, ValueError, trio.TooSlowError) as exc:
                error = f"the SMSC at {host}:{port} did not take the notice: {type(exc).__name__}: {exc}"
                return self.service.notified(
                    order, sent=len(messages), messages=messages, error=error, base=base
                )
            if not answer.get("ok"):
                error = f"the SMSC refused the notice: {answer.get('error', 'no reason given')}"
                return self.service.notified(
                    order, sent=len(messages), messages=messages, error=error, base=base
                )
            messages += [m for m in answer.get("messages", []) if isinstance(m, dict)]
        return self.service.notified(order, sent=len(messages), messages=messages, error=None, base=base)
