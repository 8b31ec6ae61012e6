"""WAP Push on the air (issue 22): the SI in WBXML (WAP-167, WAP-192), the WSP Push PDU (WAP-230 8.2.4), the SMSC's
WDP-over-SMS delivery to port 2948 from 9200 (concatenated when long), and two real peers reading what the SMSC
delivered to a `bipsim cp`: tshark (from the CP's trace as pcap) and gammu `getallsms`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bipsim.net.push_notice import Notice, NoticeError, NoticeVia, parse_wap_push, wap_push_notice
from bipsim.net.sms_pdu import (
    Concatenation,
    PortAddressing,
    SmsDeliver,
    SmsPduError,
    concatenation_of,
    decode_tpdu,
    ports_of,
    split_data,
    user_data_octets,
)
from bipsim.net.smsc import Smsc
from bipsim.net.wap_push import (
    SI_ATTR_START,
    SI_ATTR_VALUES,
    SI_TAGS,
    ServiceIndication,
    WapPushError,
    WbxmlError,
    decode_push_pdu,
    decode_si,
    decode_si_date,
    encode_mb_u_int32,
    encode_push_pdu,
    encode_si,
    encode_si_date,
)
from bipsim.trace.events import TraceEvent
from bipsim.trace.kinds import Kind
from bipsim.trace.pcap import export_pcap
from bipsim.trace.reader import read_file
from tests.cp_process import CpOnPty, gammurc, wait_until
from tests.fuzz._settings import bounded, fuzz_settings

# WAP-167-ServiceInd-20010731-a, 9.2 (the example of an SI in its tokenised form): <si><indication
# href="http://www.xyz.com/email/123/abc.wml" created="1999-06-25T15:23:15Z" si-expires="1999-06-30T00:00:00Z">You
# have 4 new emails</indication></si>, WBXML version 1.2
WAP167_EXAMPLE = bytes.fromhex(
    "02056A00"  # WBXML 1.2, public id 05 (SI 1.0), UTF-8, no string table
    "45C6"  # <si> with content, <indication> with attributes and content
    "0D0378797A0085"  # href: "http://www." "xyz" ".com/"
    "03656D61696C2F3132332F6162632E776D6C00"  # "email/123/abc.wml"
    "0AC30719990625152315"  # created: OPAQUE, 7 octets
    "10C30419990630"  # si-expires: OPAQUE, 4 octets (the trailing 00 octets dropped)
    "01"  # end of the attributes
    "03596F7520686176652034206E657720656D61696C7300"  # "You have 4 new emails"
    "0101"  # </indication></si>
)
WHEN = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
NOTICE = Notice(NoticeVia.WAP, "127.0.0.1:18450", "/v1/packages/app/1.10", "app", "1.10", WHEN)


def _long_notice() -> Notice:
    """A notice whose push needs two short messages."""
    name = "n" * 60
    return Notice(NoticeVia.WAP, "push.example.org:18450", f"/v1/packages/{name}/1.10", name, "1.10", WHEN)


# --- WBXML and the SI -------------------------------------------------------------------------------------------------


def test_wap167_example_decodes_and_encodes_back() -> None:
    si = decode_si(WAP167_EXAMPLE)
    assert si == ServiceIndication(
        href="http://www.xyz.com/email/123/abc.wml",
        created=datetime(1999, 6, 25, 15, 23, 15, tzinfo=UTC),
        si_expires=datetime(1999, 6, 30, tzinfo=UTC),
        text="You have 4 new emails",
    )
    # our encoder writes WBXML 1.3 and otherwise exactly the specification's tokens
    assert encode_si(si) == b"\x03" + WAP167_EXAMPLE[1:]


def test_token_tables_agree_with_gnokii() -> None:
    """Constants as a public implementation has them: pkot/gnokii include/gnokii/wappush.h (its SI tag tokens, the
    attribute start tokens, CONTENT_TYPE 0xae and WAPPush_CHARSET 0x6a); gnokii writes WBXML version 0x01."""
    assert {0x05: "si", 0x06: "indication", 0x07: "info", 0x08: "item"} == SI_TAGS
    gnokii_attrs = {
        0x05: ("action", "signal-none"),
        0x06: ("action", "signal-low"),
        0x07: ("action", "signal-medium"),
        0x08: ("action", "signal-high"),
        0x09: ("action", "delete"),
        0x0A: ("created", ""),
        0x0B: ("href", ""),
        0x0C: ("href", "http://"),
        0x0D: ("href", "http://www."),
        0x0E: ("href", "https://"),
        0x0F: ("href", "https://www."),
        0x10: ("si-expires", ""),
        0x11: ("si-id", ""),
        0x12: ("class", ""),
    }
    assert gnokii_attrs == SI_ATTR_START
    # a push with gnokii's header constants (WBXML_VERSION 0x01, CONTENT_TYPE 0xae): href with the http:// token, no created
    pdu = (
        bytes.fromhex("0006")
        + encode_mb_u_int32(1)
        + b"\xae"
        + bytes.fromhex("01056a00 45 c6 0c 03".replace(" ", ""))
    )
    pdu += b"h:1/v1/packages/a/2\x00" + b"\x01\x03" + b"new\x00" + b"\x01\x01"
    assert parse_wap_push(pdu) == Notice(NoticeVia.WAP, "h:1", "/v1/packages/a/2", "a", "2", None)


def test_si_tokens_dates_and_round_trips() -> None:
    si = ServiceIndication(
        href="https://www.example.com/a.org/b",
        si_id="id-1",
        created=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        si_expires=datetime(2027, 1, 1, tzinfo=UTC),
        action="signal-high",
        text="héllo",
        class_="c",
        items=(("k", "v"), ("k2", "")),
    )
    data = encode_si(si)
    assert data[:4] == bytes.fromhex("03056A00") and data[4:6] == b"\x45\xc6"
    assert data[6] == 0x0F and SI_ATTR_VALUES[0x85] == ".com/" and b"\x85" in data and b"\x88" in data
    assert decode_si(data) == si
    # WAP-167 8.2.2: trailing zero octets dropped; a date in another zone is sent in UTC
    assert encode_si_date(datetime(1999, 6, 30, tzinfo=UTC)) == bytes.fromhex("19990630")
    assert encode_si_date(datetime(2026, 11, 30, 13, tzinfo=timezone(timedelta(hours=1)))) == bytes.fromhex(
        "2026113012"
    )
    assert decode_si_date(bytes.fromhex("2026113012")) == WHEN
    for bad in (b"", bytes(8), bytes.fromhex("1999AA"), bytes.fromhex("19991399")):
        with pytest.raises(WbxmlError):
            decode_si_date(bad)
    with pytest.raises(WbxmlError, match="timezone"):
        encode_si_date(datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(WbxmlError, match="action"):
        encode_si(ServiceIndication(action="loud"))


def test_wbxml_forms_the_decoder_takes() -> None:
    # the public id given by its string, the href by a string table reference, an entity in the text
    table = b"-//WAPFORUM//DTD SI 1.0//EN\x00http://h:1/v1/packages/a/2\x00"
    doc = bytes.fromhex("0300006A") + encode_mb_u_int32(len(table)) + table
    doc += bytes.fromhex("45C60B831C010341000281690101")
    si = decode_si(doc)
    assert si.href == "http://h:1/v1/packages/a/2" and si.text == "Aé"
    # a processing instruction before the body; a created date as text
    doc = bytes.fromhex("03056A00430B0378000145860A03")
    doc += b"2026-11-30T12:00:00Z\x00" + b"\x01\x01"
    assert decode_si(doc).created == WHEN


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
_DATE = st.datetimes(datetime(1000, 1, 1), datetime(9999, 12, 31), timezones=st.just(UTC)).map(
    lambda d: d.replace(microsecond=0)
)


@fuzz_settings(100)
@given(
    st.one_of(
        st.none(),
        st.sampled_from(["http://", "https://www.", "http://www.", "ftp:", ""]).flatmap(
            lambda prefix: _TEXT.map(lambda rest: prefix + rest)
        ),
    ),
    st.one_of(st.none(), _TEXT),
    st.one_of(st.none(), _DATE),
    st.one_of(st.none(), _DATE),
    st.sampled_from(["signal-none", "signal-low", "signal-medium", "signal-high", "delete"]),
    _TEXT,
    st.lists(st.tuples(_TEXT, _TEXT), max_size=3),
)
def test_si_round_trips(
    href: str | None,
    si_id: str | None,
    created: datetime | None,
    expires: datetime | None,
    action: str,
    text: str,
    items: list[tuple[str, str]],
) -> None:
    si = ServiceIndication(href, si_id, created, expires, action, text, None, tuple(items))
    assert decode_si(encode_si(si)) == si
    pdu = encode_push_pdu(encode_si(si), tid=7)
    assert decode_push_pdu(pdu).body == encode_si(si)


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ("03056A0045", "ends before"),
        ("03096A004501", "public identifier"),
        ("03056A0545", "string table"),
        ("0305040045", "charset"),
        ("03056A00 46 01", "root element"),
        ("03056A00 45 01", "no <indication>"),
        ("03056A00 45 86 0B 03 FF 00 01 01", "UTF-8"),
        ("03056A00 45 86 0B 83 05 01 01", "string table index"),
        ("03056A00 45 86 85 01 01", "before any attribute"),
        ("03056A00 45 86 0B 03 61 01 01", "no terminating NUL"),
        ("03056A00 45 86 0B 0300 0B 0300 01 01", "twice"),
        ("03056A00 45 86 13 01 01", "not SI's"),
        ("03056A00 45 86 0A C3 05 1999 01 01", "overruns"),
        ("03056A00 45 86 0A C3 02 99AA 01 01", "BCD"),
        ("03056A00 45 86 0B C3 01 00 01 01", "OPAQUE"),
        ("03056A00 45 46 80 01 01", "extension"),
        ("03056A00 45 46 02 FFFFFFFF0F 01 01", "32 bits"),
        ("03056A00 05 06", "after the document"),
        ("03056A00" + "45" * 20, "deeper"),
    ],
)
def test_malformed_wbxml_is_a_typed_error(doc: str, reason: str) -> None:
    with pytest.raises(WbxmlError, match=reason):
        decode_si(bytes.fromhex(doc.replace(" ", "")))


# --- the WSP Push PDU -------------------------------------------------------------------------------------------------


def test_push_pdu_encoding_and_the_forms_decoded() -> None:
    body = encode_si(ServiceIndication(href="http://h:1/v1/packages/a/2"))
    pdu = encode_push_pdu(body, tid=0x29)
    assert pdu[:6] == bytes.fromhex("290603AEAF82")
    decoded = decode_push_pdu(pdu)
    assert (decoded.tid, decoded.pdu_type, decoded.content_type) == (0x29, 0x06, "application/vnd.wap.sic")
    assert decoded.application_id == "x-wap-application:wml.ua" and decoded.body == body
    # the general form with a charset parameter and a Content-Length header, as many push senders write it
    general = bytes.fromhex("290606 03AE81EA 8DCA") + body
    assert decode_push_pdu(general).content_type == "application/vnd.wap.sic"
    assert parse_wap_push(general) is not None
    # the content type and the application id as text, a shift sequence, an application header
    texts = (
        b"application/vnd.wap.sic\x00" + b"\x7f\x01" + b"X-Wap-Application-Id\x00x-wap-application:wml.ua\x00"
    )
    headers = texts + bytes.fromhex("AF020102")  # then a long-integer id 0x0102, which wins
    pdu = bytes((1, 6)) + encode_mb_u_int32(len(headers)) + headers + body
    assert decode_push_pdu(pdu).application_id == "x-wap-application:0x102"
    assert decode_push_pdu(pdu).content_type == "application/vnd.wap.sic"
    assert encode_mb_u_int32(0x3FFF) == b"\xff\x7f" and encode_mb_u_int32(0x4000) == b"\x81\x80\x00"


@pytest.mark.parametrize(
    ("pdu", "reason"),
    [
        ("", "ends before the TID"),
        ("01", "PDU type"),
        ("0104", "not Push"),
        ("0106", "headers length"),
        ("0106FFFFFFFFFF", "5 octets"),
        ("010605AE", "overruns"),
        ("010602AE00", "cannot start a header"),
        ("010603 AE AF 05", "overruns"),
        ("010603 1F 05 AE", "overruns"),
        ("010602 AE 41", "no terminating NUL"),
    ],
)
def test_malformed_push_pdus_are_typed_errors(pdu: str, reason: str) -> None:
    with pytest.raises(WapPushError, match=reason):
        decode_push_pdu(bytes.fromhex(pdu.replace(" ", "")))


def test_every_truncation_of_a_notice_is_a_notice_error() -> None:
    pdu = wap_push_notice(NOTICE, si_id="app-1.10", text="app 1.10")
    for cut in range(len(pdu)):
        with pytest.raises(NoticeError):
            parse_wap_push(pdu[:cut])


@fuzz_settings(150)
@given(st.binary(max_size=300))
def test_fuzz_push_decoders_raise_only_their_typed_errors(data: bytes) -> None:
    with bounded(5):
        for decode in (decode_push_pdu, decode_si):
            try:
                decode(data)
            except WapPushError:
                pass
        try:
            parse_wap_push(data)
        except NoticeError:
            pass


NOTICE_PDU = wap_push_notice(NOTICE, si_id="app-1.10", text="app 1.10")


@fuzz_settings(150)
@given(st.integers(0, len(NOTICE_PDU) - 1), st.integers(0, 255), st.integers(0, 3))
def test_fuzz_mutated_notices_raise_only_notice_errors(at: int, value: int, how: int) -> None:
    data = bytearray(NOTICE_PDU)
    if how == 0:
        data[at] = value
    elif how == 1:
        data.insert(at, value)
    elif how == 2:
        del data[at]
    else:
        data[at:] = data[at:] * 2
    with bounded(5):
        try:
            notice = parse_wap_push(bytes(data))
        except NoticeError:
            return
        assert notice is None or notice.via is NoticeVia.WAP


# --- the air path: the SMSC's WDP over SMS ----------------------------------------------------------------------------


def test_smsc_delivers_a_push_to_port_2948_from_9200_concatenated_when_long() -> None:
    smsc = Smsc()
    [short] = smsc.inject_mt(data=NOTICE_PDU, port=2948)
    assert isinstance(short.decoded, SmsDeliver) and short.decoded.dcs == 0x04
    assert ports_of(short.decoded.udh) == PortAddressing(2948, 9200)
    assert concatenation_of(short.decoded.udh) is None and short.decoded.ud == NOTICE_PDU
    long_pdu = wap_push_notice(_long_notice(), si_id="s" * 40, text="t" * 40)
    parts = smsc.inject_mt(data=long_pdu, port=2948)
    decoded = [decode_tpdu(p.tpdu) for p in parts]
    assert len(decoded) == 2 and all(isinstance(d, SmsDeliver) for d in decoded)
    assert [concatenation_of(d.udh) for d in decoded] == [Concatenation(2, 2, 1), Concatenation(2, 2, 2)]
    assert all(ports_of(d.udh) == PortAddressing(2948, 9200) for d in decoded)
    assert all(len(user_data_octets(d)) <= 140 for d in decoded)  # type: ignore[arg-type]
    joined = b"".join(d.ud for d in decoded)  # type: ignore[union-attr]
    assert joined == long_pdu and parse_wap_push(joined) == _long_notice()
    # another port: source 0 as before; data without a port still fits one message or is refused
    [other] = smsc.inject_mt(data=b"x", port=5000)
    assert ports_of(other.decoded.udh) == PortAddressing(5000, 0)  # type: ignore[union-attr]
    with pytest.raises(SmsPduError, match="do not fit"):
        smsc.inject_mt(data=bytes(141))
    with pytest.raises(SmsPduError, match="255"):
        split_data(bytes(128 * 256), headers=(PortAddressing(2948, 9200).element(),))


# --- real peers: tshark and gammu read what the SMSC delivered to a bipsim cp -----------------------------------------


@dataclass
class Delivered:
    modem: CpOnPty
    folder: Path
    url: str


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Delivered]:
    """One `bipsim cp` for the module; the long notice pushed through its SMSC (`bipsim sms send-mt --data
    --port 2948`, two parts) and delivered to it (stored on the card)."""
    folder = tmp_path_factory.mktemp("wap_push")
    notice = _long_notice()
    pdu = wap_push_notice(notice, si_id="s" * 40, text="t" * 40)
    with CpOnPty(folder) as modem:
        result = subprocess.run(
            [sys.executable, "-m", "bipsim", "sms", "--connect", modem.smsc, "send-mt"]
            + ["--from", "+15550008450", "--data", pdu.hex(), "--port", "2948"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0 and result.stdout.count("delivered") == 2, result.stdout + result.stderr
        yield Delivered(modem, folder, notice.url)


@pytest.mark.needs("tshark")
def test_tshark_decodes_the_wap_push_the_smsc_delivered(delivered: Delivered) -> None:
    modem = delivered.modem
    assert modem.cp is not None
    found: list[list[TraceEvent]] = []

    def traced() -> bool:  # the CP's recorder writes its events out in batches
        found[:] = (
            [[e for e in read_file(modem.trace) if e.kind == Kind.SMSC_MT]] if modem.trace.exists() else []
        )
        return bool(found) and len(found[0]) == 2

    wait_until("the CP's trace of the two parts", traced, modem.cp, lambda: modem.errors.read_text())
    pcap = delivered.folder / "push.pcap"
    assert export_pcap(found[0], pcap) == 2
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-V"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert (
        "Destination port: UDP/TCP port numbers assigned by IANA" in out
        and "(2948)" in out
        and "(9200)" in out
    )
    assert "Reassembled Short Message" in out
    assert "Wireless Session Protocol, Method: Push (0x06), Content-Type: application/vnd.wap.sic" in out
    assert 'Public ID: "-//WAPFORUM//DTD SI 1.0//EN' in out
    # the href as tshark's WBXML view shows it: the http:// start token, then the inline rest
    start = out.index("href='http://'")
    rest = out[start:].split("'")[3]
    assert "http://" + rest == delivered.url
    # and the created date, tshark's own reading of the OPAQUE date (WAP-167 8.2.2)
    assert "%DateTime: 2026-11-30T12:00:00Z" in out[out.index("created=") :]


@pytest.mark.needs("gammu")
def test_gammu_getallsms_lists_the_wap_push(delivered: Delivered) -> None:
    rc = gammurc(delivered.folder, delivered.modem.device)
    result = subprocess.run(
        ["gammu", "-c", str(rc), "getallsms"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    listing = result.stdout
    # gammu names the 2948/9200 port header after the MMS notification that uses it most
    assert listing.count("User Data Header     : MMS indicator, ID (8 bit)") == 2, listing
    assert "part 1 of 2" in listing and "part 2 of 2" in listing and "Coding               : 8-bit" in listing
    assert '"+15550008450"' in listing and "(hex: 010603AEAF82" in listing, listing
    assert "2 SMS parts in 2 SMS sequences" in listing
