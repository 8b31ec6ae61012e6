"""The notices of a software release (push deployment, issue 22): what a publish server sends and an upgrade agent
recognises, as a plain SMS text or as a WAP Push Service Indication.

The plain-SMS syntax is the project's own (docs/protocols.md, "Push deployment", "The notice formats"): one GSM 7-bit
message of at most 160 characters, `UPGRADE` then space-separated `key=value` fields. The WAP Push is a WSP Push PDU
(WAP-230 8.2.4) carrying an SI (WAP-167) in WBXML whose `href` is the package's URL; net/wap_push.py codes both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from bipsim.net.wap_push import (
    ServiceIndication,
    WapPushError,
    decode_push_pdu,
    decode_si,
    encode_push_pdu,
    encode_si,
)
from bipsim.uicc.gsm_text import gsm7_length, is_gsm7


class NoticeVia(Enum):
    SMS = "sms"
    WAP = "wap"
    IP = "ip"
    ACTIVE = "active"


class NoticeError(ValueError):
    """A message that claims to be a notice but is malformed; str() says why."""


@dataclass(frozen=True)
class Notice:
    via: NoticeVia
    server: str  # "host:port" of the publish server
    location: str  # "/v1/packages/<name>/<version>"
    name: str
    version: str | None
    timestamp: datetime | None

    @property
    def url(self) -> str:
        return f"http://{self.server}{self.location}"


SMS_KEYWORD = "UPGRADE"
SMS_LIMIT = 160  # one GSM 7-bit short message (TS 23.038 6.1.2.1.1), so a notice never needs concatenation

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_VERSION = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9}){0,7}")
_HOST = re.compile(r"([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])")
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]{0,199}")
_PACKAGE_PATH = re.compile(r"/v1/packages/([A-Za-z0-9._-]{1,64})/([0-9]{1,9}(?:\.[0-9]{1,9}){0,7})")
_FIELDS = ("server", "location", "name", "version", "time")


def _check_server(server: str) -> str:
    host, sep, port = server.rpartition(":")
    if not sep or not _HOST.fullmatch(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise NoticeError(f"server {server[:80]!r} is not host:port")
    return server


def _format_time(when: datetime) -> str:
    if when.tzinfo is None:
        raise NoticeError("a notice's timestamp must be timezone-aware")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> datetime:
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)", text):
        raise NoticeError(f"time {text[:40]!r} is not ISO 8601 (YYYY-MM-DDThh:mm:ssZ)")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError as exc:
        raise NoticeError(f"time {text[:40]!r}: {exc}") from None


def format_sms_notice(notice: Notice) -> str:
    """`UPGRADE server=H:P location=/path name=N [version=V] [time=YYYY-MM-DDThh:mm:ssZ]`; NoticeError when a field
    cannot be carried (a space, a character outside GSM 7-bit) or the text would not fit one SMS."""
    fields = [("server", _check_server(notice.server)), ("location", notice.location), ("name", notice.name)]
    if notice.version is not None:
        fields.append(("version", notice.version))
    if notice.timestamp is not None:
        fields.append(("time", _format_time(notice.timestamp)))
    for key, value in fields:
        if not value or any(c.isspace() for c in value):
            raise NoticeError(f"{key} {value!r} is empty or holds a space")
    text = " ".join([SMS_KEYWORD, *(f"{k}={v}" for k, v in fields)])
    if not is_gsm7(text) or gsm7_length(text) > SMS_LIMIT:
        raise NoticeError(f"the notice does not fit one GSM 7-bit SMS ({len(text)} characters)")
    parse_sms_notice(text)  # what we send is what we take
    return text


def parse_sms_notice(text: str) -> Notice | None:
    """The notice an SMS text carries; None when it is not one (it does not start with `UPGRADE `); NoticeError
    when it starts like one but a field is missing, repeated, unknown or malformed."""
    stripped = text.strip()
    if stripped != SMS_KEYWORD and not stripped.startswith(SMS_KEYWORD + " "):
        return None
    fields: dict[str, str] = {}
    for word in stripped.split()[1:]:
        key, sep, value = word.partition("=")
        if not sep or key not in _FIELDS:
            raise NoticeError(f"{word[:40]!r} is not one of the fields {', '.join(_FIELDS)}")
        if key in fields:
            raise NoticeError(f"field {key} given twice")
        fields[key] = value
    missing = [k for k in ("server", "location", "name") if k not in fields]
    if missing:
        raise NoticeError(f"the notice lacks {', '.join(missing)}")
    name, location = fields["name"], fields["location"]
    if not _NAME.fullmatch(name):
        raise NoticeError(f"name {name[:80]!r}: 1 to 64 letters, digits, '.', '_', '-'")
    if not _PATH.fullmatch(location):
        raise NoticeError(f"location {location[:80]!r} is not an absolute path")
    version = fields.get("version")
    if version is not None and not _VERSION.fullmatch(version):
        raise NoticeError(f"version {version[:40]!r} is not dotted integers")
    when = _parse_time(fields["time"]) if "time" in fields else None
    return Notice(NoticeVia.SMS, _check_server(fields["server"]), location, name, version, when)


def release_notice(release: dict[str, Any], server: str, via: NoticeVia) -> Notice:
    """The notice of a release as the publish server's API gives it (`name`, `version`, `location`, `timestamp`
    ISO 8601) with `server` ("host:port") as the address to connect to."""
    try:
        name, version, location = str(release["name"]), str(release["version"]), str(release["location"])
        stamp = release.get("timestamp")
    except (KeyError, TypeError) as exc:
        raise NoticeError(f"not a release: {exc}") from None
    when = _parse_time(stamp) if isinstance(stamp, str) else stamp if isinstance(stamp, datetime) else None
    return Notice(via, _check_server(server), location, name, version, when)


def wap_push_notice(notice: Notice, *, si_id: str, text: str) -> bytes:
    """The WSP Push PDU (to x-wap-application:wml.ua) of an SI whose href is the notice's URL, created its
    timestamp."""
    si = ServiceIndication(href=notice.url, si_id=si_id, created=notice.timestamp, text=text)
    try:
        return encode_push_pdu(encode_si(si))
    except WapPushError as exc:
        raise NoticeError(str(exc)) from None


class SiOutcome(Enum):
    """What WAP-167 (section 6, the SI's life cycle) says a terminal does with a received SI."""

    PRESENT = "present"  # a notice to act on (signal-low/-medium/-high)
    EXPIRED = "expired"  # si-expires already past on reception: discarded silently
    DELETE = "delete"  # action=delete: removes the stored SI of that si-id, is itself never presented
    POSTPONED = "postponed"  # action=signal-none: kept, not presented to the user (no prompt)
    NOT_A_NOTICE = "not-a-notice"  # another content type, application or an href that is not a package


@dataclass(frozen=True)
class WapPushReading:
    """The typed result of `read_wap_push`: the notice (when the SI names a package), what to do with it, the SI's
    si-id and action, and why it is not presented, so that the caller traces the discard."""

    outcome: SiOutcome
    notice: Notice | None = None
    si_id: str | None = None
    action: str | None = None
    reason: str = ""


def parse_wap_push(data: bytes, *, now: datetime | None = None) -> Notice | None:
    """The notice a WDP payload to port 2948 carries for presenting; None when it is not an SI push (another
    content type or application), an SI about something other than a package, or an SI WAP-167 says not to present
    (expired at `now`, default the current UTC time; action delete or signal-none); NoticeError when the PDU or its
    WBXML is malformed, or the SI has no usable href. `read_wap_push` says which of these it was."""
    reading = read_wap_push(data, now=now)
    return reading.notice if reading.outcome is SiOutcome.PRESENT else None


def read_wap_push(data: bytes, *, now: datetime | None = None) -> WapPushReading:
    """What a WDP payload to port 2948 is (WapPushReading), with WAP-167's rules applied: an SI whose si-expires is
    not after `now` is EXPIRED, action=delete is DELETE (its si-id names the SI to remove), signal-none is
    POSTPONED; NoticeError as `parse_wap_push`."""
    when = now if now is not None else datetime.now(UTC)
    notice, si = _wap_notice(data)
    if si is None:
        return WapPushReading(SiOutcome.NOT_A_NOTICE)
    si_id, action = si.si_id, si.action
    if si.si_expires is not None and si.si_expires <= when:
        stamp = si.si_expires.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return WapPushReading(SiOutcome.EXPIRED, notice, si_id, action, f"the SI expired at {stamp}")
    if action == "delete":
        # a delete SI only removes the stored SI of its si-id (WAP-167 6); without one it deletes nothing
        why = f"the SI deletes si-id {si_id!r}" if si_id else "a delete SI without si-id"
        return WapPushReading(SiOutcome.DELETE, notice, si_id, action, why)
    if notice is None:
        return WapPushReading(SiOutcome.NOT_A_NOTICE, None, si_id, action)
    if action == "signal-none":
        why = "signal-none: not presented to the user"
        return WapPushReading(SiOutcome.POSTPONED, notice, si_id, action, why)
    return WapPushReading(SiOutcome.PRESENT, notice, si_id, action)


def _wap_notice(data: bytes) -> tuple[Notice | None, ServiceIndication | None]:
    """The notice and the SI of a WDP payload; (None, None) when it is not an SI push, (None, si) when the SI's
    href is not a package."""
    try:
        pdu = decode_push_pdu(data)
    except WapPushError as exc:
        raise NoticeError(f"malformed WSP push: {exc}") from None
    if pdu.content_type != "application/vnd.wap.sic":
        return None, None
    if pdu.application_id not in (None, "x-wap-application:wml.ua", "x-wap-application:*"):
        return None, None
    try:
        si = decode_si(pdu.body)
    except WapPushError as exc:
        raise NoticeError(f"malformed SI: {exc}") from None
    if si.href is None:
        if si.action == "delete":  # WAP-167: a delete SI names what it deletes by si-id; it needs no href
            return None, si
        raise NoticeError("the SI has no href")
    try:
        url = urlsplit(si.href)
        port = url.port
    except ValueError as exc:
        raise NoticeError(f"the SI's href {si.href[:80]!r}: {exc}") from None
    found = _PACKAGE_PATH.fullmatch(url.path)
    if url.scheme != "http" or found is None or url.query or url.fragment:
        return None, si
    if not url.hostname:
        raise NoticeError(f"the SI's href {si.href[:80]!r} names no host")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    server = _check_server(f"{host}:{port or 80}")
    return Notice(NoticeVia.WAP, server, url.path, found.group(1), found.group(2), si.created), si
