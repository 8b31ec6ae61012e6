"""The cloud store of the eUICC profile backup (docs/protocols.md, "eUICC and the cloud backup": "The cloud store"):
a login and registration website, the upload of a bound profile package's records (ap/lpa/records.py) one per request
with a size limit, the fetch by (EID, management file) and the delete, over HTTP/1.1 (RFC 9110/9112 through h11,
with the limits of ota/http_connection.py). Sessions are cookies (RFC 6265); passwords are kept as PBKDF2-HMAC-SHA256
(RFC 8018) with a per-user salt.

`CloudService` is the sans-IO core (a whole request and the time in, an answer out); `CloudServer` the trio adapter
that frames HTTP and writes the access log: an `http.request` event per request, then one `cloud.*` event per answer.
`CloudClient` is the terminal's side (the LPA's): login, registration, upload, fetch and delete, raising CloudError.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
import secrets
import ssl
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import h11
import trio

from bipsim.ap.lpa.records import (
    DEFAULT_LIMIT,
    MAX_PACKAGE,
    RecordError,
    check_identity,
    decode_record,
    join_records,
    record_size_limit,
)
from bipsim.ota.http_client import Failure, HttpAnswer, HttpClientError, Opener, request
from bipsim.ota.http_connection import REASONS, HttpRequest, ServerConnection
from bipsim.ota.http_serve import Reply, serve_connection
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.http_limits import HttpLimits

COOKIE = "bipsim_cloud"
SESSION_TTL = 3600.0  # seconds a login lasts
MAX_SESSIONS = 4096  # sessions at once; past it the oldest is forgotten (a login flood cannot grow memory)
MAX_USERS = 10_000
MAX_BACKUPS = 10_000  # (EID, module) backups held at once; an upload of a new one past it is 507
PBKDF2_ITERATIONS = 100_000  # for new registrations; each user's count is stored with its hash
USER = re.compile(r"^[A-Za-z0-9_.@+-]{1,64}$")
MIN_PASSWORD, MAX_PASSWORD = 4, 256
FORM = "application/x-www-form-urlencoded"
REQUEST_TIMEOUT = 30.0  # seconds one request may take, server and client
# bytes of an answer the client reads: the records of the largest package (hex doubles it) with room for their fields
MAX_ANSWER = 8 * MAX_PACKAGE
REASONS_MORE = {
    **REASONS,
    201: "Created",
    303: "See Other",
    401: "Unauthorized",
    403: "Forbidden",
    507: "Insufficient Storage",
}


class CloudError(Exception):
    """A request the cloud refused (`status`: the HTTP status) or could not answer (`status` 0: no connection, a
    timeout, an answer that is not HTTP); `reason` says why as the server or the transport told it."""

    def __init__(self, status: int, reason: str, *, location: str = "") -> None:
        super().__init__(f"{status} {reason}" if status else reason)
        self.status = status
        self.reason = reason
        self.location = location


class NotRegistered(CloudError):
    """The login named a user the cloud does not know: the website sends the terminal to its registration page."""


class StoreError(ValueError):
    """The users or state file cannot be read (reason in str())."""


# --- the sans-IO core -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer of the core and its access-log event (`kind`, `fields`)."""

    status: int
    body: bytes
    kind: Kind
    fields: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def is_page(self) -> bool:
        """An HTML page: the access log keeps its bytes out (a form, nothing a tool reads)."""
        return any(name == "content-type" and value.startswith("text/html") for name, value in self.headers)


@dataclass(frozen=True, slots=True)
class UserEntry:
    salt: bytes
    iterations: int
    digest: bytes

    def to_json(self) -> dict[str, Any]:
        return {"salt": self.salt.hex(), "iterations": self.iterations, "pbkdf2_sha256": self.digest.hex()}


def _hash(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)


def make_user(password: str, iterations: int = PBKDF2_ITERATIONS) -> UserEntry:
    salt = secrets.token_bytes(16)
    return UserEntry(salt, iterations, _hash(password, salt, iterations))


@dataclass(slots=True)
class Backup:
    """The records of one (EID, module) backup, by upload index; `count`, `profile_len` and `ppr` are the set's."""

    owner: str
    count: int
    profile_len: int
    ppr: int
    records: dict[int, str] = field(default_factory=dict)

    def missing(self) -> list[int]:
        return [i for i in range(self.count) if i not in self.records]

    def to_json(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "count": self.count,
            "profile_len": self.profile_len,
            "ppr": self.ppr,
            "records": {str(i): text for i, text in sorted(self.records.items())},
        }


class _Refuse(Exception):
    def __init__(self, status: int, reason: str, *, headers: tuple[tuple[str, str], ...] = (), **fields: Any):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers
        self.fields = fields


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


def _page(title: str, body: str) -> bytes:
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
        + html.escape(title)
        + "</title></head>\n<body><h1>"
        + html.escape(title)
        + "</h1>\n"
        + body
        + "\n</body></html>\n"
    ).encode("utf-8")


def _form(action: str, button: str, user: str = "", message: str = "") -> str:
    note = f'<p class="message">{html.escape(message)}</p>\n' if message else ""
    return (
        f'{note}<form method="post" action="{action}">\n'
        f'<label>User <input name="user" value="{html.escape(user, quote=True)}" autocomplete="username"></label>\n'
        '<label>Password <input name="password" type="password"></label>\n'
        f'<button type="submit">{html.escape(button)}</button>\n</form>'
    )


HTML = (("content-type", "text/html; charset=utf-8"),)
TEXT = (("content-type", "text/plain; charset=us-ascii"),)
JSON = (("content-type", "application/json"),)


class CloudService:
    """The sans-IO core: users, sessions, backups and the rules of the website and the API (docs/protocols.md,
    "The cloud store"). `users_path` and `state_path` are JSON files written atomically at each change."""

    def __init__(
        self,
        *,
        limit: int = DEFAULT_LIMIT,
        users_path: Path | None = None,
        state_path: Path | None = None,
        iterations: int = PBKDF2_ITERATIONS,
    ) -> None:
        if limit < 1:
            raise ValueError(f"a limit of {limit} package bytes carries nothing")
        self.limit = limit
        self.users_path = users_path
        self.state_path = state_path
        self.iterations = iterations
        self.users: dict[str, UserEntry] = {}
        self.sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.backups: dict[tuple[str, str], Backup] = {}
        self.uploads = self.fetches = self.deletes = 0
        if users_path is not None and users_path.exists():
            self.users = _load_users(users_path)
        if state_path is not None and state_path.exists():
            self.backups = _load_state(state_path)

    @property
    def body_limit(self) -> int:
        """Bytes of one upload's body: the longest record that carries `limit` package bytes."""
        return record_size_limit(self.limit)

    # persistence

    def add_user(self, user: str, password: str) -> None:
        """A user known from the start (`--user`), kept in the users file when there is one."""
        _check_credentials(user, password)
        self.users[user] = make_user(password, self.iterations)
        self._save_users()

    def _save_users(self) -> None:
        if self.users_path is not None:
            _write_atomically(
                self.users_path,
                {"users": {name: entry.to_json() for name, entry in sorted(self.users.items())}},
            )

    def _save_state(self) -> None:
        if self.state_path is not None:
            _write_atomically(
                self.state_path,
                {
                    "limit": self.limit,
                    "backups": [
                        {"eid": eid, "module": module, **backup.to_json()}
                        for (eid, module), backup in sorted(self.backups.items())
                    ],
                },
            )

    # sessions

    def _open_session(self, user: str, now: float) -> str:
        token = secrets.token_urlsafe(24)
        self.sessions[token] = (user, now + SESSION_TTL)
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return token

    def session_user(self, request: HttpRequest, now: float) -> str | None:
        """The user whose live session the request's cookie names, or None."""
        for part in request.header("cookie").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                entry = self.sessions.get(value)
                if entry is not None:
                    user, expires = entry
                    if now < expires and user in self.users:
                        return user
                    del self.sessions[value]
        return None

    def _cookie(self, token: str) -> tuple[str, str]:
        return (
            "set-cookie",
            f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={int(SESSION_TTL)}",
        )

    # requests

    def handle(self, request: HttpRequest, now: float) -> Answer:
        """One whole request; never raises for anything a client sends."""
        split = urlsplit(request.target)
        path = split.path
        base: dict[str, Any] = {"method": request.method, "target": request.target[:200]}
        routes: dict[str, dict[str, Callable[..., Answer]]] = {
            "/": {"GET": self._home},
            "/login": {"GET": self._login_page, "POST": self._login},
            "/register": {"GET": self._register_page, "POST": self._register},
            "/logout": {"POST": self._logout},
            "/session": {"GET": self._session},
            "/profiles": {"POST": self._upload, "GET": self._fetch, "DELETE": self._delete},
        }
        try:
            methods = routes.get(path)
            if methods is None:
                raise _Refuse(404, f"no resource {path[:100]}")
            handler = methods.get(request.method)
            if handler is None:
                raise _Refuse(
                    405,
                    f"method {request.method} not allowed on {path}",
                    headers=(("allow", ", ".join(methods)),),
                )
            query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
            return handler(request=request, query=query, now=now, base=base)
        except _Refuse as refusal:
            fields = {**base, "status": refusal.status, "reason": refusal.reason, **refusal.fields}
            headers = refusal.headers + JSON
            return Answer(
                refusal.status, _json({"error": refusal.reason}), Kind.CLOUD_REFUSED, fields, headers
            )

    def _user_or_401(self, request: HttpRequest, now: float) -> str:
        user = self.session_user(request, now)
        if user is None:
            raise _Refuse(401, "log in first (POST /login): no live session cookie")
        return user

    def _form_of(self, request: HttpRequest) -> tuple[str, str]:
        if request.header("content-type").split(";")[0].strip().lower() != FORM:
            raise _Refuse(415, f"the body is {FORM}")
        try:
            form = parse_qs(request.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except (UnicodeDecodeError, ValueError) as exc:
            raise _Refuse(400, f"the form is not UTF-8 {FORM}: {exc}") from None
        user = form.get("user", [None])[0]
        password = form.get("password", [None])[0]
        if user is None or password is None:
            raise _Refuse(400, "the form has user and password", field="user" if user is None else "password")
        return user, password

    # the website

    def _home(self, *, request: HttpRequest, now: float, base: dict[str, Any], **_: Any) -> Answer:
        user = self.session_user(request, now)
        if user is None:
            return Answer(
                303,
                b"",
                Kind.CLOUD_PAGE,
                {**base, "status": 303, "page": "home", "user": None},
                (("location", "/login"),),
            )
        backups = sorted(f"{module} {eid}" for (eid, module), b in self.backups.items() if b.owner == user)
        listing = "".join(f"<li>{html.escape(b)}</li>" for b in backups) or "<li>no backups</li>"
        body = _page(
            "bipsim cloud",
            f"<p>Logged in as {html.escape(user)}.</p>\n<ul>{listing}</ul>\n"
            '<form method="post" action="/logout"><button type="submit">Log out</button></form>',
        )
        return Answer(200, body, Kind.CLOUD_PAGE, {**base, "status": 200, "page": "home", "user": user}, HTML)

    def _login_page(self, *, query: dict[str, str], base: dict[str, Any], **_: Any) -> Answer:
        body = _page(
            "Log in to the bipsim cloud",
            _form("/login", "Log in", query.get("user", "")[:64])
            + '\n<p><a href="/register">Register</a></p>',
        )
        return Answer(200, body, Kind.CLOUD_PAGE, {**base, "status": 200, "page": "login"}, HTML)

    def _register_page(self, *, query: dict[str, str], base: dict[str, Any], **_: Any) -> Answer:
        body = _page(
            "Register with the bipsim cloud", _form("/register", "Register", query.get("user", "")[:64])
        )
        return Answer(200, body, Kind.CLOUD_PAGE, {**base, "status": 200, "page": "register"}, HTML)

    def _login(self, *, request: HttpRequest, now: float, base: dict[str, Any], **_: Any) -> Answer:
        user, password = self._form_of(request)
        entry = self.users.get(user)
        fields = {**base, "user": user[:64]}
        if entry is None:
            # the document's rule: a user who never registered is sent to the registration page
            location = f"/register?user={quote(user[:64], safe='')}"
            return Answer(
                303,
                b"",
                Kind.CLOUD_LOGIN,
                {**fields, "status": 303, "ok": False, "reason": "unknown user: registration page"},
                (("location", location),),
            )
        if len(password) > MAX_PASSWORD or not hmac.compare_digest(
            _hash(password, entry.salt, entry.iterations), entry.digest
        ):
            body = _page("Log in to the bipsim cloud", _form("/login", "Log in", user, "Wrong password."))
            return Answer(
                401,
                body,
                Kind.CLOUD_LOGIN,
                {**fields, "status": 401, "ok": False, "reason": "wrong password"},
                HTML,
            )
        token = self._open_session(user, now)
        return Answer(
            303,
            b"",
            Kind.CLOUD_LOGIN,
            {**fields, "status": 303, "ok": True},
            (("location", "/"), self._cookie(token)),
        )

    def _register(self, *, request: HttpRequest, now: float, base: dict[str, Any], **_: Any) -> Answer:
        user, password = self._form_of(request)
        fields = {**base, "user": user[:64]}
        try:
            _check_credentials(user, password)
        except ValueError as exc:
            body = _page("Register with the bipsim cloud", _form("/register", "Register", "", str(exc)))
            return Answer(
                400,
                body,
                Kind.CLOUD_REGISTER,
                {**fields, "status": 400, "ok": False, "reason": str(exc)},
                HTML,
            )
        if user in self.users:
            body = _page(
                "Register with the bipsim cloud",
                _form("/register", "Register", user, "That user is registered: log in."),
            )
            return Answer(
                409,
                body,
                Kind.CLOUD_REGISTER,
                {**fields, "status": 409, "ok": False, "reason": "user exists"},
                HTML,
            )
        if len(self.users) >= MAX_USERS:
            raise _Refuse(507, f"the cloud holds its limit of {MAX_USERS} users")
        self.users[user] = make_user(password, self.iterations)
        try:
            self._save_users()
        except OSError as exc:
            del self.users[user]
            raise _Refuse(500, f"the users file could not be saved: {exc.strerror or exc}") from None
        token = self._open_session(user, now)
        return Answer(
            303,
            b"",
            Kind.CLOUD_REGISTER,
            {**fields, "status": 303, "ok": True},
            (("location", "/"), self._cookie(token)),
        )

    def _logout(self, *, request: HttpRequest, now: float, base: dict[str, Any], **_: Any) -> Answer:
        user = self.session_user(request, now)
        for part in request.header("cookie").split(";"):
            name, equals, value = part.strip().partition("=")
            if name == COOKIE and equals:
                self.sessions.pop(value, None)
        return Answer(
            303,
            b"",
            Kind.CLOUD_LOGIN,
            {**base, "status": 303, "ok": True, "user": user, "logout": True},
            (("location", "/login"), ("set-cookie", f"{COOKIE}=; Path=/; Max-Age=0")),
        )

    def _session(self, *, request: HttpRequest, now: float, base: dict[str, Any], **_: Any) -> Answer:
        user = self.session_user(request, now)
        if user is None:
            return Answer(
                401,
                _json({"user": None, "limit": self.limit}),
                Kind.CLOUD_LOGIN,
                {**base, "status": 401, "ok": False, "reason": "not logged in", "check": True},
                JSON,
            )
        return Answer(
            200,
            _json({"user": user, "limit": self.limit}),
            Kind.CLOUD_LOGIN,
            {**base, "status": 200, "ok": True, "user": user, "check": True},
            JSON,
        )

    # the API

    def _identity(self, query: dict[str, str]) -> tuple[str, str]:
        eid, module = query.get("eid"), query.get("module")
        if eid is None or module is None:
            raise _Refuse(400, "the query names eid and module", field="eid" if eid is None else "module")
        try:
            check_identity(eid, module)
        except RecordError as exc:
            raise _Refuse(400, f"the query's {exc}", field=exc.field) from None
        return eid, module

    def _owned(self, key: tuple[str, str], user: str) -> Backup | None:
        backup = self.backups.get(key)
        if backup is not None and backup.owner != user:
            raise _Refuse(403, f"the backup of {key[1]} {key[0]} belongs to another account")
        return backup

    @staticmethod
    def _header_int(request: HttpRequest, name: str) -> int:
        text = request.header(name).strip()
        if not re.fullmatch(r"0|[1-9][0-9]{0,7}", text):
            raise _Refuse(400, f"{name} is a decimal number: {text[:20]!r}", field=name)
        return int(text)

    def _upload(self, *, request: HttpRequest, now: float, base: dict[str, Any], **_: Any) -> Answer:
        user = self._user_or_401(request, now)
        if (
            len(request.body) > self.body_limit
        ):  # the connection refuses a stated length; this is a chunked body
            raise _Refuse(
                413, f"a record of {len(request.body)} bytes, over the {self.body_limit} byte limit"
            )
        index = self._header_int(request, "x-record-index")
        count = self._header_int(request, "x-record-count")
        if not 0 <= index < count:
            raise _Refuse(
                400, f"X-Record-Index {index} is not below X-Record-Count {count}", field="x-record-index"
            )
        try:
            text = request.body.decode("ascii")
            record = decode_record(text.strip("\r\n"))
        except UnicodeDecodeError:
            raise _Refuse(400, "a record is ASCII text", field="profile_data") from None
        except RecordError as exc:
            raise _Refuse(400, f"malformed record: {exc}", field=exc.field) from None
        if len(record.data) > self.limit:
            raise _Refuse(
                413,
                f"a record of {len(record.data)} package bytes, over the {self.limit} byte limit",
                field="profile_data",
            )
        fields = {
            **base,
            "user": user,
            "eid": record.eid,
            "module": record.module,
            "index": index,
            "count": count,
            "bytes": len(record.data),
            "profile_len": record.profile_len,
            "ppr": record.ppr,
        }
        least = -(-record.profile_len // self.limit)
        if not least <= count <= record.profile_len:
            raise _Refuse(
                400,
                f"X-Record-Count {count} cannot carry profile_len {record.profile_len} in records of "
                f"at most {self.limit} bytes",
                field="x-record-count",
            )
        if index < count - 1 and -(-record.profile_len // len(record.data)) != count:
            raise _Refuse(
                400,
                f"record {index} of {count} carries {len(record.data)} bytes: {count} records of it do "
                f"not make profile_len {record.profile_len}",
                field="profile_data",
            )
        key = (record.eid, record.module)
        stored = self._owned(key, user)
        if index == 0:
            # index 0 starts a backup: a package downloaded again replaces the one held
            backup = Backup(user, count, record.profile_len, record.ppr)
        else:
            if stored is None or (stored.count, stored.profile_len, stored.ppr) != (
                count,
                record.profile_len,
                record.ppr,
            ):
                raise _Refuse(
                    409,
                    f"record {index} of a backup that was not begun (upload index 0 first) or "
                    "of another one (count, profile_len or PPR differ)",
                    **{k: fields[k] for k in ("eid", "module", "index")},
                )
            backup = Backup(stored.owner, stored.count, stored.profile_len, stored.ppr, dict(stored.records))
        if stored is None and len(self.backups) >= MAX_BACKUPS:
            raise _Refuse(507, f"the cloud holds its limit of {MAX_BACKUPS} backups")
        backup.records[index] = record.text()
        if not backup.missing():
            # the last record in: the set must give the package back, or the upload that completes it is refused
            try:
                join_records([backup.records[i] for i in range(backup.count)], limit=self.limit)
            except RecordError as exc:
                raise _Refuse(400, f"the records do not join: {exc}", field=exc.field) from None
        previous = self.backups.get(key)
        self.backups[key] = backup
        try:
            self._save_state()
        except OSError as exc:
            if previous is None:
                del self.backups[key]
            else:
                self.backups[key] = previous
            raise _Refuse(500, f"the store could not be saved: {exc.strerror or exc}") from None
        self.uploads += 1
        complete = not backup.missing()
        return Answer(
            201,
            _json({"index": index, "count": count, "complete": complete}),
            Kind.CLOUD_UPLOAD,
            {**fields, "status": 201, "complete": complete},
            JSON,
        )

    def _fetch(
        self, *, request: HttpRequest, query: dict[str, str], now: float, base: dict[str, Any], **_: Any
    ) -> Answer:
        user = self._user_or_401(request, now)
        eid, module = self._identity(query)
        backup = self._owned((eid, module), user)
        self.fetches += 1
        fields = {**base, "user": user, "eid": eid, "module": module}
        if backup is None:
            return Answer(
                404,
                _json({"error": f"no backup of {module} {eid}"}),
                Kind.CLOUD_FETCH,
                {**fields, "status": 404, "records": 0, "reason": "no backup"},
                JSON,
            )
        missing = backup.missing()
        reason = ""
        if missing:
            reason = f"incomplete: records {missing[:20]} of {backup.count} missing"
        else:
            try:
                # served as accepted: a restart with a smaller --limit still gives back what it took before
                join_records([backup.records[i] for i in range(backup.count)])
            except RecordError as exc:
                reason = f"the records do not join: {exc}"
        if reason:
            return Answer(
                409,
                _json({"error": reason, "missing": missing, "count": backup.count}),
                Kind.CLOUD_FETCH,
                {
                    **fields,
                    "status": 409,
                    "records": len(backup.records),
                    "count": backup.count,
                    "missing": missing[:20],
                    "reason": reason,
                },
                JSON,
            )
        body = "".join(backup.records[i] + "\n" for i in range(backup.count)).encode("ascii")
        return Answer(
            200,
            body,
            Kind.CLOUD_FETCH,
            {**fields, "status": 200, "records": backup.count, "profile_len": backup.profile_len},
            (*TEXT, ("x-record-count", str(backup.count))),
        )

    def _delete(
        self, *, request: HttpRequest, query: dict[str, str], now: float, base: dict[str, Any], **_: Any
    ) -> Answer:
        user = self._user_or_401(request, now)
        key = self._identity(query)
        backup = self._owned(key, user)
        fields = {**base, "user": user, "eid": key[0], "module": key[1]}
        if backup is None:
            return Answer(
                404,
                _json({"error": f"no backup of {key[1]} {key[0]}"}),
                Kind.CLOUD_DELETE,
                {**fields, "status": 404, "records": 0, "reason": "no backup"},
                JSON,
            )
        del self.backups[key]
        try:
            self._save_state()
        except OSError as exc:
            self.backups[key] = backup
            raise _Refuse(500, f"the store could not be saved: {exc.strerror or exc}") from None
        self.deletes += 1
        return Answer(
            200,
            _json({"deleted": len(backup.records)}),
            Kind.CLOUD_DELETE,
            {**fields, "status": 200, "records": len(backup.records)},
            JSON,
        )


def _check_credentials(user: str, password: str) -> None:
    if not USER.match(user):
        raise ValueError("a user name is 1 to 64 letters, digits or _ . @ + -")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValueError(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters")


def _write_atomically(path: Path, obj: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, sort_keys=True, indent=1), encoding="utf-8")
    tmp.replace(path)  # a crash leaves the old file or the new, never half of one


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StoreError(f"{path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StoreError(f"{path}: not a JSON object")
    return data


def _load_users(path: Path) -> dict[str, UserEntry]:
    data = _read_json(path)
    out: dict[str, UserEntry] = {}
    try:
        for name, entry in data["users"].items():
            if not USER.match(name):
                raise StoreError(f"{path}: {name[:40]!r} is not a user name")
            out[name] = UserEntry(
                bytes.fromhex(entry["salt"]), int(entry["iterations"]), bytes.fromhex(entry["pbkdf2_sha256"])
            )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StoreError(
            f'{path}: not {{"users": {{NAME: {{salt, iterations, pbkdf2_sha256}}}}}}: {exc}'
        ) from None
    return out


def _load_state(path: Path) -> dict[tuple[str, str], Backup]:
    data = _read_json(path)
    out: dict[tuple[str, str], Backup] = {}
    try:
        for item in data["backups"]:
            backup = Backup(
                str(item["owner"]), int(item["count"]), int(item["profile_len"]), int(item["ppr"])
            )
            for index, text in item["records"].items():
                record = decode_record(text)
                if (record.eid, record.module) != (item["eid"], item["module"]):
                    raise StoreError(f"{path}: record {index} is not of {item['module']} {item['eid']}")
                backup.records[int(index)] = text
            out[(str(item["eid"]), str(item["module"]))] = backup
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StoreError(f"{path}: not a cloud state file: {exc}") from None
    return out


# --- the trio adapter ---------------------------------------------------------------------------------------------


class CloudServer:
    """The trio adapter of the cloud store: one task per connection, h11 through ota/http_connection.py with a body
    limit of one record, a deadline per request. Each request is an `http.request` event (hex: an upload's record;
    never a login form, which holds a password) and its answer one `cloud.*` event (the access log)."""

    def __init__(
        self,
        service: CloudService,
        tracer: Tracer = NULL_TRACER,
        *,
        connections: int = 256,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.service = service
        self.tracer = tracer
        self.ssl_context = ssl_context  # HTTPS when given (`--tls-cert`/`--tls-key`)
        self.limits = HttpLimits(
            header_bytes=8 * 1024,
            body_bytes=service.body_limit,
            chunk_bytes=service.body_limit,
            request_timeout=REQUEST_TIMEOUT,
            connections=connections,
        )
        self.requests = 0
        self.active = 0

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = int(listeners[0].socket.getsockname()[1])
        self.tracer.emit(
            Actor.CLOUD,
            Actor.CLOUD,
            Layer.APP,
            f"cloud store listening on {host}:{bound}",
            kind=Kind.APP_EVENT,
            fields={"event": "listening", "host": host, "port": bound, "limit": self.service.limit},
        )
        task_status.started(bound)
        await trio.serve_listeners(self.handle, listeners)

    async def serve_on(self, listener: trio.SocketListener) -> None:
        """Serves on a listening socket made beforehand (a scenario hands its port to the AP before it starts)."""
        await trio.serve_listeners(self.handle, [listener])

    async def handle(self, stream: trio.abc.Stream) -> None:
        """One connection (TLS first when the server has a certificate)."""
        self.active += 1
        try:
            if self.ssl_context is not None:
                secured = await self._handshake(stream)
                if secured is None:
                    return
                stream = secured
            await self._loop(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # noqa: BLE001 - one connection's fault never ends the server
            self.tracer.emit(
                Actor.CLOUD,
                Actor.CLOUD,
                Layer.APP,
                f"connection ended by {type(exc).__name__}: {exc}",
                error=True,
                kind=Kind.APP_ERROR,
                fields={"where": "cloud connection", "error": f"{type(exc).__name__}: {str(exc)[:200]}"},
            )
        finally:
            self.active -= 1
            await trio.aclose_forcefully(stream)

    async def _handshake(self, stream: trio.abc.Stream) -> trio.SSLStream[trio.abc.Stream] | None:
        """The TLS handshake within the request deadline; a `tls.handshake` event either way (None: failed)."""
        assert self.ssl_context is not None
        tls = trio.SSLStream(stream, self.ssl_context, server_side=True, https_compatible=True)
        reason = ""
        with trio.move_on_after(self.limits.request_timeout) as waiting:
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError as exc:
                reason = f"{type(exc.__cause__ or exc).__name__}: {exc.__cause__ or exc}"[:200]
        if waiting.cancelled_caught:
            reason = f"no handshake within {self.limits.request_timeout:g} s"
        if reason:
            self.tracer.emit(
                Actor.CLOUD,
                Actor.AP,
                Layer.TLS,
                f"TLS handshake failed: {reason}",
                error=True,
                kind=Kind.TLS_HANDSHAKE,
                fields={"ok": False, "reason": reason},
            )
            return None
        version = tls.version()
        self.tracer.emit(
            Actor.CLOUD,
            Actor.AP,
            Layer.TLS,
            f"TLS handshake done ({version})",
            kind=Kind.TLS_HANDSHAKE,
            fields={"ok": True, "version": version},
        )
        return tls

    async def _loop(self, stream: trio.abc.Stream) -> None:
        connection = ServerConnection(self.limits, over_capacity=self.active > self.limits.connections)
        # a refusal lingers: a body refused on its length is still arriving (RFC 9112 9.6)
        await serve_connection(
            stream, connection, self._respond, tracer=self.tracer, actor=Actor.CLOUD, linger=True
        )

    async def _respond(self, event: HttpRequest) -> Reply:
        """One whole request: its `http.request` event, the core's answer and its access-log event."""
        self.requests += 1
        path = event.target.split("?", 1)[0]
        self.tracer.emit(
            Actor.AP,
            Actor.CLOUD,
            Layer.HTTP,
            f"{event.method} {event.target[:200]}",
            event.body if event.body and path == "/profiles" else None,
            kind=Kind.HTTP_REQUEST,
            fields={"method": event.method, "target": event.target[:200]},
        )
        try:
            answer = self.service.handle(event, trio.current_time())
        except Exception as exc:  # noqa: BLE001 - a fault of the core is this request's 500, not the server's end
            reason = f"internal error: {type(exc).__name__}: {str(exc)[:200]}"
            answer = Answer(
                500,
                _json({"error": reason}),
                Kind.CLOUD_REFUSED,
                {"method": event.method, "target": event.target[:200], "status": 500, "reason": reason},
                JSON,
            )
        why = answer.fields.get("reason")
        self.tracer.emit(
            Actor.CLOUD,
            Actor.AP,
            Layer.HTTP,
            f"{answer.status} {REASONS_MORE.get(answer.status, '')} {answer.kind.value}"
            + (f": {why}" if answer.status >= 400 and why else ""),
            answer.body if answer.body and not answer.is_page else None,
            error=answer.status >= 400,
            kind=answer.kind,
            fields=answer.fields,
        )
        return Reply(answer.status, answer.headers, answer.body)


# --- the client ---------------------------------------------------------------------------------------------------

Connect = Opener


def parse_cloud_url(url: str) -> tuple[str, int]:
    """HOST and PORT of `http://HOST:PORT`, `https://HOST:PORT` (or `HOST:PORT`); ValueError otherwise."""
    split = urlsplit(url if "://" in url else f"http://{url}")
    if (
        split.scheme not in ("http", "https")
        or not split.hostname
        or split.path not in ("", "/")
        or split.query
    ):
        raise ValueError(f"{url!r} is not http://HOST:PORT or https://HOST:PORT")
    try:
        port = split.port
    except ValueError:
        port = None
    if port is None:
        raise ValueError(f"{url!r} names no port")
    return split.hostname, port


class CloudClient:
    """The terminal's side of the cloud store (the LPA's): one HTTP/1.1 connection per request, the session cookie
    kept from login or registration, an `http.request` / `http.response` event per exchange (never the password).

    `connect` opens the connection (default: TCP to the URL's host and port; a scenario passes the AP's network);
    an `https://` URL runs TLS over it (`ssl_context`: the anchors that the server's certificate must chain to).
    Every refusal is CloudError(status, reason); a login of a user the cloud does not know is NotRegistered.
    After a login, a 401 (the server restarted and forgot the session, or it expired) logs in again once."""

    def __init__(
        self,
        url: str,
        *,
        tracer: Tracer = NULL_TRACER,
        connect: Connect | None = None,
        timeout: float = REQUEST_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port = parse_cloud_url(url)
        # https: TLS over whatever `connect` opens, the server's certificate checked against `ssl_context`'s
        # anchors (default: the system's) and the URL's host
        self.ssl_context = (
            (ssl_context or ssl.create_default_context()) if url.startswith("https://") else None
        )
        self.tracer = tracer
        self.timeout = timeout
        self._connect = connect or self._tcp
        self.cookie: str | None = None
        self.deleted = 0  # records the last delete removed
        self.limit: int | None = None  # the cloud's single-upload maximum, as the session check told it
        self.user: str | None = None
        self._password: str | None = None

    async def _tcp(self) -> trio.abc.Stream:
        return await trio.open_tcp_stream(self.host, self.port)

    async def _open(self) -> trio.abc.Stream:
        """The connection of one request: `connect`'s, with TLS over it for an https:// URL."""
        stream = await self._connect()
        if self.ssl_context is not None:
            return trio.SSLStream(stream, self.ssl_context, server_hostname=self.host, https_compatible=True)
        return stream

    async def _exchange(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
        *,
        secret: bool = False,
    ) -> HttpAnswer:
        fields: list[tuple[str, str]] = [
            ("host", f"{self.host}:{self.port}"),
            ("connection", "close"),
            *headers,
        ]
        if self.cookie is not None:
            fields.append(("cookie", f"{COOKIE}={self.cookie}"))
        if method in ("POST", "PUT") or body:
            fields.append(("content-length", str(len(body))))
        self.tracer.emit(
            Actor.AP,
            Actor.CLOUD,
            Layer.HTTP,
            f"{method} {target[:200]}",
            None if secret or not body else body,
            kind=Kind.HTTP_REQUEST,
            fields={"method": method, "target": target[:200], "host": self.host, "port": self.port},
        )
        try:
            reply = await request(
                self._open, method, target, fields, body, max_answer=MAX_ANSWER, timeout=self.timeout
            )
        except HttpClientError as exc:
            if exc.status >= 400 and (
                exc.failure is Failure.TOO_LARGE
                or isinstance(exc.cause, trio.BrokenResourceError | h11.ProtocolError)
            ):
                # a refusal's head came before the server closed (a 413 on a long body): the status is the answer
                reply = HttpAnswer(exc.status, exc.headers, exc.body)
            else:
                # SSLStream's BrokenResourceError holds the TLS error as its cause
                cause = exc.cause.__cause__ or exc.cause if exc.cause is not None else exc
                reason = f"{method} {target[:100]}: {type(cause).__name__}: {cause}"[:300]
                self.tracer.emit(
                    Actor.CLOUD,
                    Actor.AP,
                    Layer.HTTP,
                    f"cloud store failed: {reason}",
                    error=True,
                    kind=Kind.HTTP_ERROR,
                    fields={"reason": reason, "received": len(exc.body)},
                )
                raise CloudError(0, reason) from None
        status, answer_headers, answer = reply.status, reply.headers, reply.body
        self.tracer.emit(
            Actor.CLOUD,
            Actor.AP,
            Layer.HTTP,
            f"{status} {REASONS_MORE.get(status, '')} ({len(answer)} bytes)",
            answer if answer and not answer_headers.get("content-type", "").startswith("text/html") else None,
            error=status >= 400,
            kind=Kind.HTTP_RESPONSE,
            fields={"status": status, "length": len(answer), "method": method, "target": target[:200]},
        )
        cookie = answer_headers.get("set-cookie", "")
        name, _, rest = cookie.partition("=")
        if name.strip() == COOKIE:
            value = rest.split(";", 1)[0].strip()
            self.cookie = value or None
        return reply

    @staticmethod
    def _reason(reply: HttpAnswer) -> str:
        if reply.headers.get("content-type", "").startswith("application/json"):
            try:
                data = json.loads(reply.body)
                if isinstance(data, dict) and isinstance(data.get("error"), str):
                    return str(data["error"])
            except ValueError:
                pass
        text = reply.body.decode("utf-8", "replace")
        found = re.search(r'<p class="message">([^<]*)</p>', text)
        if found:
            return html.unescape(found.group(1))
        return REASONS_MORE.get(reply.status, "") or text[:200].strip() or f"status {reply.status}"

    async def _api(
        self, method: str, target: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> HttpAnswer:
        reply = await self._exchange(method, target, body, headers)
        if reply.status == 401 and self.user is not None and self._password is not None:
            await self.login(self.user, self._password)
            reply = await self._exchange(method, target, body, headers)
        return reply

    async def _credentials(self, path: str, user: str, password: str) -> HttpAnswer:
        body = f"user={quote(user, safe='')}&password={quote(password, safe='')}".encode()
        return await self._exchange("POST", path, body, [("content-type", FORM)], secret=True)

    async def login(self, user: str, password: str) -> None:
        """Logs in (the session cookie is kept); NotRegistered for an unknown user, CloudError(401) for a wrong
        password."""
        reply = await self._credentials("/login", user, password)
        location = reply.headers.get("location", "")
        if reply.status == 303 and location.startswith("/register"):
            raise NotRegistered(303, f"user {user} is not registered", location=location)
        if reply.status != 303 or self.cookie is None:
            raise CloudError(reply.status, self._reason(reply), location=location)
        self.user, self._password = user, password

    async def register(self, user: str, password: str) -> None:
        """Registers and logs in; CloudError(409) when the user exists, (400) for a name or password refused."""
        reply = await self._credentials("/register", user, password)
        if reply.status != 303 or self.cookie is None:
            raise CloudError(reply.status, self._reason(reply), location=reply.headers.get("location", ""))
        self.user, self._password = user, password

    async def logged_in(self) -> str | None:
        """The user of this terminal's live session, or None: the LPA's login check. The answer also gives the
        cloud's single-upload maximum in package bytes (`limit`), the records' size for `encode_records`."""
        reply = await self._exchange("GET", "/session")
        if reply.status not in (200, 401):
            raise CloudError(reply.status, self._reason(reply))
        try:
            data = json.loads(reply.body)
            user, limit = data.get("user"), data.get("limit")
        except (ValueError, AttributeError):
            raise CloudError(0, "the session answer is not JSON") from None
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            self.limit = limit
        return user if isinstance(user, str) else None

    async def logout(self) -> None:
        await self._exchange("POST", "/logout")
        self.cookie = self.user = self._password = None

    async def upload(self, records: Sequence[str]) -> None:
        """Uploads the records of one package in index order, one request each (step 4015)."""
        for index, record in enumerate(records):
            reply = await self._api(
                "POST",
                "/profiles",
                record.encode("ascii"),
                [
                    ("content-type", "text/plain; charset=us-ascii"),
                    ("x-record-index", str(index)),
                    ("x-record-count", str(len(records))),
                ],
            )
            if reply.status != 201:
                raise CloudError(reply.status, f"record {index}: {self._reason(reply)}")

    @staticmethod
    def _query(eid: str, module: str) -> str:
        return f"/profiles?eid={quote(eid, safe='')}&module={quote(module, safe='')}"

    async def fetch(self, eid: str, module: str = "LPA") -> list[str]:
        """The records of the backup of (EID, module) in index order (step 403); CloudError(404) when there is
        none, (409) when it is incomplete."""
        reply = await self._api("GET", self._query(eid, module))
        if reply.status != 200:
            raise CloudError(reply.status, self._reason(reply))
        try:
            lines = reply.body.decode("ascii").splitlines()
        except UnicodeDecodeError:
            raise CloudError(0, "the fetched records are not ASCII text") from None
        count = reply.headers.get("x-record-count", "")
        if count != str(len(lines)):
            raise CloudError(0, f"{len(lines)} records fetched, X-Record-Count says {count or 'nothing'}")
        return lines

    async def delete(self, eid: str, module: str = "LPA") -> None:
        """Deletes the backup of (EID, module) (`deleted` then holds the number of records it had); CloudError(404)
        when there is none."""
        reply = await self._api("DELETE", self._query(eid, module))
        if reply.status != 200:
            raise CloudError(reply.status, self._reason(reply))
        try:
            self.deleted = int(json.loads(reply.body)["deleted"])
        except (ValueError, KeyError, TypeError):
            raise CloudError(0, "the delete answer is not JSON with deleted") from None
