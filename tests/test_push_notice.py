"""The release notices of issue 22 (net/push_notice.py): the plain-SMS syntax, the notice of a publish server's
release, and the WAP Push notice with the URL as the SI's href (docs/protocols.md, "The notice formats")."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bipsim.net.push_notice import (
    Notice,
    NoticeError,
    NoticeVia,
    SiOutcome,
    format_sms_notice,
    parse_sms_notice,
    parse_wap_push,
    read_wap_push,
    release_notice,
    wap_push_notice,
)
from bipsim.net.wap_push import ServiceIndication, encode_push_pdu, encode_si
from bipsim.uicc.gsm_text import gsm7_length, is_gsm7

WHEN = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
NOTICE = Notice(NoticeVia.SMS, "127.0.0.1:18450", "/v1/packages/app/1.10", "app", "1.10", WHEN)


def test_sms_notice_syntax_and_round_trip() -> None:
    text = format_sms_notice(NOTICE)
    assert text == (
        "UPGRADE server=127.0.0.1:18450 location=/v1/packages/app/1.10 name=app version=1.10 "
        "time=2026-11-30T12:00:00Z"
    )
    assert is_gsm7(text) and gsm7_length(text) <= 160
    assert parse_sms_notice(text) == NOTICE
    assert NOTICE.url == "http://127.0.0.1:18450/v1/packages/app/1.10"
    # fields in any order, around spaces; version and time optional; an IPv6 server
    back = parse_sms_notice("  UPGRADE name=a location=/p server=[::1]:80  ")
    assert back == Notice(NoticeVia.SMS, "[::1]:80", "/p", "a", None, None)
    assert back.url == "http://[::1]:80/p"
    # a time with an offset is read as UTC
    later = parse_sms_notice("UPGRADE server=h:1 location=/p name=a time=2026-11-30T13:00:00+01:00")
    assert later is not None and later.timestamp == WHEN


@pytest.mark.parametrize(
    "text",
    ["", "hello", "Upgrade now! call 555", "UPGRADES server=h:1", "upgrade server=h:1 location=/p name=a"],
)
def test_other_texts_are_not_notices(text: str) -> None:
    assert parse_sms_notice(text) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("UPGRADE", "lacks server, location, name"),
        ("UPGRADE server=h:1 location=/p", "lacks name"),
        ("UPGRADE server=h:1 location=/p name=a name=b", "twice"),
        ("UPGRADE server=h:1 location=/p name=a colour=red", "not one of the fields"),
        ("UPGRADE server=h:1 location=/p name=a junk", "not one of the fields"),
        ("UPGRADE server=h location=/p name=a", "host:port"),
        ("UPGRADE server=h:0 location=/p name=a", "host:port"),
        ("UPGRADE server=h:99999 location=/p name=a", "host:port"),
        ("UPGRADE server=h:1 location=p name=a", "absolute path"),
        ("UPGRADE server=h:1 location=/p name=a/b", "letters, digits"),
        ("UPGRADE server=h:1 location=/p name=a version=1.x", "dotted integers"),
        ("UPGRADE server=h:1 location=/p name=a time=yesterday", "ISO 8601"),
        ("UPGRADE server=h:1 location=/p name=a time=2026-13-01T00:00:00Z", "time"),
        ("UPGRADE server=h:1 location=/v1/pack", "lacks name"),  # a notice cut short
    ],
)
def test_look_alikes_are_notice_errors(text: str, reason: str) -> None:
    with pytest.raises(NoticeError, match=reason):
        parse_sms_notice(text)


def test_a_notice_that_cannot_be_one_sms_is_refused() -> None:
    long = Notice(NoticeVia.SMS, "h:1", "/v1/packages/" + "n" * 64 + "/1", "n" * 64, "1", WHEN)
    with pytest.raises(NoticeError, match="one GSM 7-bit SMS"):
        format_sms_notice(long)
    with pytest.raises(NoticeError, match="space"):
        format_sms_notice(Notice(NoticeVia.SMS, "h:1", "/a b", "n", None, None))
    with pytest.raises(NoticeError, match="host:port"):
        format_sms_notice(Notice(NoticeVia.SMS, "nohost", "/p", "n", None, None))
    with pytest.raises(NoticeError, match="timezone"):
        format_sms_notice(Notice(NoticeVia.SMS, "h:1", "/p", "n", None, datetime(2026, 1, 1)))  # noqa: DTZ001


def test_release_notice_from_the_servers_release() -> None:
    release = {
        "name": "app",
        "version": "1.10",
        "location": "/v1/packages/app/1.10",
        "size": 3,
        "sha256": "00" * 32,
        "timestamp": "2026-11-30T12:00:00Z",
    }
    notice = release_notice(release, "127.0.0.1:18450", NoticeVia.WAP)
    assert notice == Notice(NoticeVia.WAP, "127.0.0.1:18450", "/v1/packages/app/1.10", "app", "1.10", WHEN)
    with pytest.raises(NoticeError, match="not a release"):
        release_notice({"name": "app"}, "h:1", NoticeVia.SMS)
    with pytest.raises(NoticeError, match="host:port"):
        release_notice(release, "h", NoticeVia.SMS)


def test_wap_push_notice_round_trip() -> None:
    pdu = wap_push_notice(NOTICE, si_id="app-1.10", text="app 1.10")
    assert pdu[:6] == bytes.fromhex(
        "010603AEAF82"
    )  # TID, Push, headers 3, vnd.wap.sic, X-Wap-Application-Id wml.ua
    notice = parse_wap_push(pdu)
    assert notice == Notice(NoticeVia.WAP, NOTICE.server, NOTICE.location, "app", "1.10", WHEN)
    assert notice.url == NOTICE.url
    # without a timestamp the SI has no created attribute, and the notice none
    bare = parse_wap_push(
        wap_push_notice(Notice(NoticeVia.WAP, "h:1", "/v1/packages/a/2", "a", "2", None), si_id="x", text="")
    )
    assert bare == Notice(NoticeVia.WAP, "h:1", "/v1/packages/a/2", "a", "2", None)
    # no port in the href: HTTP's 80
    si = encode_si(ServiceIndication(href="http://example.org/v1/packages/a/2"))
    assert parse_wap_push(encode_push_pdu(si)) == Notice(
        NoticeVia.WAP, "example.org:80", "/v1/packages/a/2", "a", "2", None
    )


def test_wap_pushes_that_are_not_notices() -> None:
    def push(href: str | None, **kwargs: object) -> bytes:
        return encode_push_pdu(encode_si(ServiceIndication(href=href)), **kwargs)  # type: ignore[arg-type]

    assert parse_wap_push(push("http://www.example.com/news")) is None  # an SI about something else
    assert parse_wap_push(push("https://h:1/v1/packages/a/2")) is None  # not the publish server's http
    assert parse_wap_push(push("http://h:1/v1/packages/a/2?x=1")) is None
    assert parse_wap_push(push("http://h:1/v1/packages/a/2", content_type=0x30)) is None  # an SL, not an SI
    assert parse_wap_push(push("http://h:1/v1/packages/a/2", application_id=0x04)) is None  # to the MMS agent
    assert parse_wap_push(push("http://h:1/v1/packages/a/2", application_id=None)) is not None


def test_malformed_wap_pushes_are_notice_errors() -> None:
    good = wap_push_notice(NOTICE, si_id="app-1.10", text="app 1.10")
    with pytest.raises(NoticeError, match="no href"):
        parse_wap_push(encode_push_pdu(encode_si(ServiceIndication(si_id="x"))))
    with pytest.raises(NoticeError, match="malformed WSP push"):
        parse_wap_push(b"")
    with pytest.raises(NoticeError, match="malformed WSP push"):
        parse_wap_push(b"\x01\x08\x00")  # not a push PDU type
    with pytest.raises(NoticeError, match="malformed SI"):
        parse_wap_push(good[:-1])  # the last END missing
    with pytest.raises(NoticeError, match="malformed SI"):
        parse_wap_push(good[:6] + b"\x03\x01\x6a\x00\x45\x01")  # a WML document's public id, not SI's
    with pytest.raises(NoticeError, match="out of range"):
        parse_wap_push(encode_push_pdu(encode_si(ServiceIndication(href="http://h:99999/v1/packages/a/2"))))


def _si_push(**fields: object) -> bytes:
    si = ServiceIndication(
        href=fields.pop("href", "http://127.0.0.1:18450/v1/packages/app/1.10"),  # type: ignore[arg-type]
        si_id="app-1.10",
        created=WHEN,
        **fields,  # type: ignore[arg-type]
    )
    return encode_push_pdu(encode_si(si))


def test_an_expired_si_is_discarded_with_its_reason() -> None:
    """WAP-167 section 6: an SI whose si-expires has passed on reception is discarded, never presented."""
    from datetime import timedelta

    data = _si_push(si_expires=WHEN + timedelta(hours=1))
    before = read_wap_push(data, now=WHEN)
    assert before.outcome is SiOutcome.PRESENT and before.notice is not None
    assert before.notice.location == "/v1/packages/app/1.10" and before.si_id == "app-1.10"
    assert parse_wap_push(data, now=WHEN) == before.notice
    after = read_wap_push(data, now=WHEN + timedelta(hours=1))
    assert after.outcome is SiOutcome.EXPIRED and "2026-11-30T13:00:00Z" in after.reason
    assert parse_wap_push(data, now=WHEN + timedelta(hours=2)) is None
    # without `now`, the current UTC time: an SI that expired in 2000 is not presented
    assert parse_wap_push(_si_push(si_expires=datetime(2000, 1, 1, tzinfo=UTC))) is None


@pytest.mark.parametrize(
    ("action", "outcome"),
    [("delete", SiOutcome.DELETE), ("signal-none", SiOutcome.POSTPONED), ("signal-high", SiOutcome.PRESENT)],
)
def test_the_si_action_is_honoured(action: str, outcome: SiOutcome) -> None:
    reading = read_wap_push(_si_push(action=action), now=WHEN)
    assert reading.outcome is outcome and reading.action == action and reading.si_id == "app-1.10"
    # only a presented SI prompts: parse_wap_push (the agent's call) gives no notice for the others
    assert (parse_wap_push(_si_push(action=action), now=WHEN) is not None) is (outcome is SiOutcome.PRESENT)
    if outcome is not SiOutcome.PRESENT:
        assert reading.reason


def test_a_delete_si_needs_no_href_and_other_pushes_are_not_notices() -> None:
    reading = read_wap_push(_si_push(action="delete", href=None), now=WHEN)
    assert reading.outcome is SiOutcome.DELETE and reading.notice is None and "app-1.10" in reading.reason
    with pytest.raises(NoticeError, match="no href"):
        read_wap_push(_si_push(href=None), now=WHEN)
    other = read_wap_push(_si_push(href="http://127.0.0.1:18450/news"), now=WHEN)
    assert other.outcome is SiOutcome.NOT_A_NOTICE and other.notice is None
