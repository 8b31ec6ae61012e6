"""net/sms_pdu.py: SMS-DELIVER, SMS-SUBMIT and SMS-STATUS-REPORT against independent decoders and known PDUs.

Known PDUs: python-gsmmodem's test/test_pdu.py (TestSmsPdu.test_decode, test_encodeSmsSubmit,
test_encodeSmsSubmit_concatenated, TestSmsPduAddressFields, TestSmsPduSmscFields, TestTimestamp,
TestRelativeValidityPeriod, TestUdhConcatenation, TestUdhPortAddress), which collects PDUs captured from real modems
and networks, and the "hellohello" SMS-DELIVER of dreamfabric's SMS PDU page (the TS 23.040 layout worked by hand).
tshark (Wireshark's GSM SMS dissector) decodes what we encode, inside the card's ENVELOPE / proactive command as a
GSMTAP SIM APDU, the way trace/pcap.py exports them.
"""

from __future__ import annotations

import struct
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bipsim.net.sms_pdu import (
    Address,
    Alphabet,
    Concatenation,
    EnhancedValidity,
    InformationElement,
    PortAddressing,
    RelativeValidity,
    SmsDeliver,
    SmsPduError,
    SmsStatusReport,
    SmsSubmit,
    TypeOfNumber,
    concatenation_of,
    decode_sca,
    decode_timestamp,
    decode_tpdu,
    encode_sca,
    encode_timestamp,
    make_dcs,
    ports_of,
    split_text,
)
from bipsim.trace.pcap import gsmtap_header, udp_packet
from bipsim.uicc.gsm_text import GSM7_BASIC, GSM7_EXTENSION, gsm7_encode

# (27.005 <pdu> hex, type, SC address, address, text): python-gsmmodem TestSmsPdu.test_decode
KNOWN = [
    (
        "06917228195339040B917228214365F700003130805120618005D4F29C2E03",
        SmsDeliver,
        "+2782913593",
        "+27821234567",
        "Test2",
    ),
    (
        "07915892000000F0040B915892214365F700007040213252242331493A283D0795C3F33C88FE06C9CB6132885EC6D341EDF27C1E3E97"
        "E7207B3A0C0A5241E377BB1D7693E72E",
        SmsDeliver,
        "+85290000000",
        "+85291234567",
        "It is easy to read text messages via AT commands.",
    ),
    (
        "06917228195339040B917228214365F70000313062315352800A800D8A5E98D337A910",
        SmsDeliver,
        "+2782913593",
        "+27821234567",
        "@{tést}!",
    ),
    (
        "07911326040000F0310D0B911326880736F40000A90FF7FBDD454E87CDE1B0DB357EB701",
        SmsSubmit,
        "+31624000000",
        "+31628870634",
        "www.diafaan.com",
    ),
    ("0006D60B911326880736F4111011719551401110117195714000", SmsStatusReport, None, "+31628870634", None),
    (
        "07914346466554F601000B914316565811F9000806304253F68449",
        SmsSubmit,
        "+34646456456",
        "+34616585119",
        "あ叶葉",
    ),
    (
        "07919762020033F1400DD0CDF2396C7EBB010008415072411084618C0500035602010053004D005300200063006F00640065003A0020"
        "0034003800350036002C00200063006F006E006600690072006D006100740069006F006E0020006F0066002000610073007300"
        "6F00630069006100740069006F006E0020006200650074007700650065006E0020006100630063006F0075006E00740020006100"
        "6E00640020004D00650067",
        SmsDeliver,
        "+79262000331",
        "Megafon",
        "SMS code: 4856, confirmation of association between account and Meg",
    ),
    # dreamfabric's SMS-DELIVER: originator of type "subscriber", national numbering plan (TOA C8)
    (
        "07917283010010F5040BC87238880900F10000993092516195800AE8329BFD4697D9EC37",
        SmsDeliver,
        "+27381000015",
        "27838890001",
        "hellohello",
    ),
]


@pytest.mark.parametrize(("pdu", "kind", "sca", "address", "text"), KNOWN)
def test_known_pdus_decode_and_encode_back(
    pdu: str, kind: type, sca: str | None, address: str, text: str | None
) -> None:
    sc, tpdu = decode_sca(bytes.fromhex(pdu))
    assert (str(sc) if sc else None) == sca
    decoded = decode_tpdu(tpdu)
    assert type(decoded) is kind
    other = decoded.recipient if isinstance(decoded, SmsStatusReport) else None
    other = other or getattr(decoded, "originator", None) or getattr(decoded, "destination", None)
    assert str(other) == address
    assert getattr(decoded, "text", None) == text
    assert decoded.encode() == tpdu
    assert encode_sca(sc) + decoded.encode() == bytes.fromhex(pdu)


def test_known_fields() -> None:
    # python-gsmmodem: time stamps, validity, the status report's reference, the 8-bit data SUBMIT
    deliver = decode_tpdu(decode_sca(bytes.fromhex(KNOWN[1][0]))[1])
    assert isinstance(deliver, SmsDeliver)
    assert deliver.scts == datetime(2007, 4, 12, 23, 25, 42, tzinfo=timezone(timedelta(hours=8)))
    submit = decode_tpdu(decode_sca(bytes.fromhex(KNOWN[3][0]))[1])
    assert isinstance(submit, SmsSubmit)
    assert isinstance(submit.validity, RelativeValidity) and submit.validity.duration == timedelta(days=3)
    report = decode_tpdu(bytes.fromhex(KNOWN[4][0])[1:])
    assert isinstance(report, SmsStatusReport) and report.mr == 214 and report.status == 0
    eight_bit = decode_tpdu(
        bytes.fromhex("0591721891F101000B917228214365F700040C48656C6C6F20776F726C6421")[6:]
    )
    assert isinstance(eight_bit, SmsSubmit) and eight_bit.ud == b"Hello world!" and eight_bit.text is None
    absolute = decode_tpdu(
        bytes.fromhex("0019000B917228001011F100003170013193008017D474BB3CA787DB70903DCC4E93D3F43C885E9ED301")[
            1:
        ]
    )
    assert isinstance(absolute, SmsSubmit)
    assert absolute.validity == datetime(2013, 7, 10, 13, 39, tzinfo=timezone(timedelta(hours=2)))
    assert absolute.text == "Timestamp validity test"


def test_concatenated_deliver_from_a_network() -> None:
    # python-gsmmodem: a real network's part 1 of 1 with an 8-bit reference; its fill bit is 1 (TS 23.040 says 0),
    # so the part decodes, and our encoding differs in that bit only
    pdu = bytes.fromhex(
        "0591721891F1400781721881F800003160526104848059050003C30101916536FB1DCABEEB2074D85E064941B19CAB060319A5C5"
        "22289C96D3D3ED32286C0FA7D96131BBEC024941B19CAB0603DDD36C36A88C87A7E565D0DB0D82C55EB0DB4B068BCD5C20"
    )
    deliver = decode_tpdu(pdu[6:])
    assert isinstance(deliver, SmsDeliver)
    assert str(deliver.originator) == "2781188"
    assert (
        deliver.text == "Hello!You have R 19.50 FREE airtime available. R 19.50 will expire on 01/07/2013. "
    )
    assert deliver.concatenation == Concatenation(0xC3, 1, 1)
    ours, theirs = deliver.encode(), pdu[6:]
    assert ours[:23] + ours[24:] == theirs[:23] + theirs[24:] and ours[23] == theirs[23] & 0xFE


def test_submit_encodings_of_gsmmodem() -> None:
    hello = SmsSubmit.for_text("+27820001111", "Hello World!")
    assert [p.encode().hex().upper() for p in hello] == ["01000B917228001011F100000CC8329BFD065DDF72363904"]
    ucs2 = SmsSubmit.for_text(
        "+123456789", "世界您好！", validity=RelativeValidity.at_least(timedelta(weeks=52))
    )
    assert encode_sca("+44000000000") + ucs2[0].encode() == bytes.fromhex(
        "07914400000000F01100099121436587F90008F40A4E16754C60A8597DFF01"
    )


LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipisicing elit, sed do eiusmod tempor incididunt ut labore et dolore "
    "magna aliqua.Ut enim ad minim veniam, quinostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo "
    "consequat.Duis aute irure dolor in reprehenderit in voluptate velit esse cillum doloe eu fugiat nulla pariatur."
    "Excepteur sint occaecat cupidatat non proident, sunt in culpa qui officia deserunt mollit anim id est laborum"
)
LOREM_PDUS = [
    "0045000B915121551532F40000A0050003000301986F79B90D4AC3E7F53688FC66BFE5A0799A0E0AB7CB741668FC76CFCB637A995E9783"
    "C2E4343C3D4F8FD3EE33A8CC4ED359A079990C22BF41E5747DDE7E9341F4721BFE9683D2EE719A9C26D7DD74509D0E6287C56F791954A6"
    "83C86FF65B5E06B5C36777181466A7E3F5B0AB4A0795DDE936284C06B5D3EE741B642FBBD3E1360B14AFA7DD",
    "0045000B915121551532F40000A0050003000302DE73BABC4E0695F165F9384D0FD3D36F37A8CE6687DBE337881D16BFE5E939C89D9EA7"
    "41753A28CC4EC7EB6938A88C0795C3A0F1BBDD7E93DFA0F1DB3D2FC7EB61BA8B584FCF41E13ABD0C4ACBEBF23288FC66BFE5A0B41B242F"
    "C3E56574D94D2ECBD37450DA0DB2BFD975383D4C2F83EC65769A0E2ACFE765D038CD66D7DB20F29BFD2E83CA",
    "0045000B915121551532F400008C050003000303EA2073FD9C0ED341EE3A9B1D06C1C3F274985E97BB8AF871194E2FD7E5A079DA4D07BD"
    "C7E370791CA683C675789A1CA687E920F7DB0D82CBDF6972D94D6781E675371D947683C675363C0C8AD7D3A0B7D99C1EA7C32072795E96"
    "D7DD7450FBCD66A7E9A0B03BDD06A5C9A0F29C0E6287C56F79BD0D",
]


def test_concatenated_submit_of_gsmmodem() -> None:
    parts = SmsSubmit.for_text("+15125551234", LOREM, reference=0, reject_duplicates=True)
    assert [encode_sca(None) + p.encode() for p in parts] == [bytes.fromhex(h) for h in LOREM_PDUS]
    joined = "".join(decode_tpdu(bytes.fromhex(h)[1:]).text or "" for h in LOREM_PDUS)  # type: ignore[union-attr]
    assert joined == LOREM


@pytest.mark.parametrize(
    ("address", "hex_field"),
    [
        (Address.parse("+9876543210"), "0A918967452301"),
        (Address.parse("+987654321"), "099189674523F1"),
        (Address.parse("+27829135934"), "0B917228195339F4"),
        (Address.parse("abc"), "06D061F118"),
        (Address.parse("FRANCOIS"), "0ED04669D0397C26A7"),
        (Address.parse("a[]{}€"), "14D0E10D6FE3DBA036A94D19"),
        (Address("0129998765", TypeOfNumber.NATIONAL), "0AA11092997856"),
    ],
)
def test_address_fields_of_gsmmodem(address: Address, hex_field: str) -> None:
    assert address.encode().hex().upper() == hex_field
    deliver = SmsDeliver(address, datetime(2026, 1, 1, tzinfo=UTC))
    assert decode_tpdu(deliver.encode()) == deliver


def test_address_parse_refuses_what_it_cannot_code() -> None:
    for text in ("", "+", "+12a4", "+١٢٣", "twelve chars", "+" + "1" * 21):
        with pytest.raises(SmsPduError):
            Address.parse(text)
    assert Address.parse("*100#") == Address("*100#", TypeOfNumber.UNKNOWN)
    assert Address.parse("Bank").ton is TypeOfNumber.ALPHANUMERIC


def test_sc_address_fields_of_gsmmodem() -> None:
    for number, field in (("+9876543210", "06918967452301"), ("+987654321", "069189674523F1")):
        assert encode_sca(number).hex().upper() == field
        sca, rest = decode_sca(bytes.fromhex(field) + b"\x01\x02")
        assert str(sca) == number and rest == b"\x01\x02"
    assert encode_sca(None) == b"\x00" and decode_sca(b"\x00\x11") == (None, b"\x11")
    with pytest.raises(SmsPduError) as err:
        encode_sca("BIPSIM")
    assert err.value.cms_code == 330
    with pytest.raises(SmsPduError):
        decode_sca(b"\x07\x91\x11")


def test_timestamps_and_validity_of_gsmmodem() -> None:
    for when, field in (
        (datetime(2015, 11, 27, tzinfo=UTC), "51117200000000"),
        (datetime(2015, 11, 27, tzinfo=timezone(timedelta(hours=2))), "51117200000080"),
        (datetime(2007, 4, 12, 23, 25, 42, tzinfo=timezone(timedelta(hours=8))), "70402132522423"),
        (datetime(2007, 4, 12, 23, 25, 42, tzinfo=timezone(timedelta(hours=-8))), "7040213252242B"),
    ):
        assert encode_timestamp(when).hex().upper() == field
        assert decode_timestamp(bytes.fromhex(field)) == when
    for duration, octet in (
        (timedelta(minutes=30), 5),
        (timedelta(hours=16), 151),
        (timedelta(days=3), 169),
        (timedelta(weeks=5), 197),
    ):
        assert RelativeValidity.at_least(duration) == RelativeValidity(octet)
        assert RelativeValidity(octet).duration == duration
    with pytest.raises(SmsPduError, match="decimal"):
        decode_timestamp(bytes.fromhex("5111720000A000"))
    with pytest.raises(SmsPduError):
        decode_timestamp(bytes.fromhex("51317200000000"))  # month 13


def test_information_elements_of_gsmmodem() -> None:
    assert Concatenation(23, 3, 1).element().encode().hex() == "0003170301"
    assert Concatenation(384, 4, 2, sixteen_bit=True).element().encode().hex() == "080401800402"
    assert PortAddressing(1234, 5222).element().encode().hex().upper() == "050404D21466"
    assert ports_of([InformationElement(0x04, bytes([100, 50]))]) == PortAddressing(100, 50)
    assert concatenation_of([InformationElement(0x08, bytes.fromhex("01800402"))]) == Concatenation(
        384, 4, 2, True
    )


def test_wap_push_ports_travel_in_an_8bit_deliver() -> None:
    ports = PortAddressing(2948, 9200).element()
    deliver = SmsDeliver(
        Address.parse("+15550001111"),
        datetime(2026, 1, 1, tzinfo=UTC),
        dcs=make_dcs(Alphabet.EIGHT_BIT),
        udh=(ports,),
    )
    back = decode_tpdu(replace_ud(deliver, b"\x01\x06\x03\xbe\xaf\x84"))
    assert isinstance(back, SmsDeliver) and ports_of(back.udh) == PortAddressing(2948, 9200)


def replace_ud(deliver: SmsDeliver, ud: bytes) -> bytes:
    from dataclasses import replace

    return replace(deliver, ud=ud).encode()


def test_split_text_limits() -> None:
    assert len(split_text("a" * 160)) == 1
    parts = split_text("a" * 161, reference=7)
    assert [len(p.ud) for p in parts] == [153, 8]
    assert [concatenation_of(p.udh) for p in parts] == [Concatenation(7, 2, 1), Concatenation(7, 2, 2)]
    assert [len(p.ud) for p in split_text("a" * 161, sixteen_bit=True)] == [152, 9]
    # an escape pair is never cut: 152 plain septets then '€' (two septets) starts part 2
    parts = split_text("a" * 152 + "€" + "b" * 10)
    assert len(parts[0].ud) == 152 and parts[1].ud[:2] == b"\x1b\x65"
    ucs2 = split_text("Ж" * 70)
    assert len(ucs2) == 1 and ucs2[0].alphabet is Alphabet.UCS2
    assert [len(p.ud) for p in split_text("Ж" * 71)] == [134, 8]
    # a surrogate pair is never cut
    parts = split_text("Ж" * 66 + "😀" + "ЖЖЖ")
    assert len(parts[0].ud) == 132 and parts[1].ud[:4] == "😀".encode("utf-16-be")
    with pytest.raises(SmsPduError) as err:
        split_text("a" * 153 * 256)
    assert err.value.cms_code == 305
    with pytest.raises(SmsPduError):
        split_text("世", alphabet=Alphabet.GSM7)


def test_malformed_pdus_name_what_is_wrong() -> None:
    good = SmsSubmit.for_text("+27820001111", "Hello World!")[0].encode()
    with pytest.raises(SmsPduError, match="TP-UDL 32") as err:
        decode_tpdu(good[:-12] + b"\x20" + good[-11:])  # a UDL that lies about the user data
    assert err.value.cms_code == 304
    with pytest.raises(SmsPduError, match="follow"):
        decode_tpdu(good + b"\x00")
    with pytest.raises(SmsPduError, match="follow"):
        decode_tpdu(good[:-1])
    # python-gsmmodem's "invalid" UCS2 PDU: a TP-DA length one digit too long and a TP-UDL of 160 octets
    with pytest.raises(SmsPduError):
        decode_tpdu(bytes.fromhex("41010C910661345542F60008A0050003000301306F3044"))
    with pytest.raises(SmsPduError, match="over 140"):
        decode_tpdu(bytes.fromhex("41010B910661345542F60008A0050003000301306F3044"))
    with pytest.raises(SmsPduError, match="header"):
        decode_tpdu(bytes.fromhex("41010B910661345542F600080409050003"))
    with pytest.raises(SmsPduError, match="reserved"):
        decode_tpdu(b"\x03\x00")
    with pytest.raises(SmsPduError, match="empty"):
        decode_tpdu(b"")


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_sms_pdu_error(data: bytes) -> None:
    try:
        decoded = decode_tpdu(data)
    except SmsPduError:
        return
    assert decode_tpdu(decoded.encode()) == decoded


_GSM_CHARS = sorted(set(GSM7_BASIC.replace("\x1b", "")) | set(GSM7_EXTENSION.values()))
_ZONES = st.integers(-79, 79).map(lambda q: timezone(timedelta(minutes=15 * q)))
_TIMES = st.builds(
    datetime,
    st.integers(2000, 2089),
    st.integers(1, 12),
    st.integers(1, 28),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    tzinfo=_ZONES,
)
_ADDRESSES = st.one_of(
    st.builds(
        Address,
        st.text(alphabet="0123456789*#abc", min_size=1, max_size=20),
        st.sampled_from([t for t in TypeOfNumber if t is not TypeOfNumber.ALPHANUMERIC]),
        st.integers(0, 15),
    ),
    st.builds(
        Address,
        st.text(
            alphabet=st.sampled_from([c for c in _GSM_CHARS if c not in GSM7_EXTENSION.values()]), max_size=11
        ),
        st.just(TypeOfNumber.ALPHANUMERIC),
        st.integers(0, 15),
    ),
)
_ELEMENTS = st.lists(
    st.builds(InformationElement, st.integers(0, 255), st.binary(max_size=8)), max_size=3
).map(tuple)


@st.composite
def _user_data(draw: st.DrawFn) -> tuple[int, tuple[InformationElement, ...], bytes]:
    alphabet = draw(st.sampled_from(list(Alphabet)))
    dcs = make_dcs(alphabet, draw(st.none() | st.integers(0, 3)))
    udh = draw(_ELEMENTS)
    header = sum(2 + len(e.data) for e in udh) + (1 if udh else 0)
    if alphabet is Alphabet.GSM7:
        room = 160 - (8 * header + 6) // 7
        ud = bytes(draw(st.lists(st.integers(0, 127), max_size=room)))
    else:
        ud = draw(st.binary(max_size=140 - header))
    return dcs, udh, ud


@given(_ADDRESSES, _TIMES, st.integers(0, 255), _user_data(), st.booleans(), st.booleans())
def test_deliver_round_trip(
    address: Address,
    scts: datetime,
    pid: int,
    user_data: tuple[int, tuple[InformationElement, ...], bytes],
    mms: bool,
    sri: bool,
) -> None:
    dcs, udh, ud = user_data
    deliver = SmsDeliver(address, scts, pid, dcs, udh, ud, more_messages=mms, status_report_indication=sri)
    assert decode_tpdu(deliver.encode()) == deliver


_VALIDITY = st.one_of(
    st.none(),
    st.integers(0, 255).map(RelativeValidity),
    _TIMES,
    st.binary(min_size=7, max_size=7).map(EnhancedValidity),
)


@given(_ADDRESSES, st.integers(0, 255), _VALIDITY, _user_data(), st.booleans())
def test_submit_round_trip(
    address: Address,
    mr: int,
    validity: RelativeValidity | datetime | EnhancedValidity | None,
    user_data: tuple[int, tuple[InformationElement, ...], bytes],
    srr: bool,
) -> None:
    dcs, udh, ud = user_data
    submit = SmsSubmit(address, mr, 0, dcs, validity, udh, ud, status_report_request=srr)
    assert decode_tpdu(submit.encode()) == submit


@given(_ADDRESSES, st.integers(0, 255), _TIMES, _TIMES, st.integers(0, 255), st.booleans())
def test_status_report_round_trip(
    address: Address, mr: int, scts: datetime, dt: datetime, status: int, with_params: bool
) -> None:
    report = SmsStatusReport(mr, address, scts, dt, status)
    if with_params:
        report = SmsStatusReport(mr, address, scts, dt, status, pid=0, dcs=0, ud=gsm7_encode("ok"))
    assert decode_tpdu(report.encode()) == report


# --- tshark, the independent decoder --------------------------------------------------------------------------------


def _pcap(path: Path, apdus: list[bytes]) -> None:
    """GSMTAP SIM APDUs (command + response data + status word) in UDP, as trace/pcap.py exports them."""
    chunks = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)]
    for number, apdu in enumerate(apdus):
        packet = udp_packet(
            bytes((192, 0, 2, 2)), bytes((192, 0, 2, 1)), 40002, 4729, gsmtap_header(number) + apdu
        )
        chunks.append(struct.pack("<IIII", 1_700_000_000 + number, 0, len(packet), len(packet)) + packet)
    path.write_bytes(b"".join(chunks))


def _envelope(tpdu: bytes) -> bytes:
    """ENVELOPE (SMS-PP DOWNLOAD) carrying `tpdu`: the SC-to-MS direction, as the card receives it."""
    body = bytes.fromhex("82028381") + bytes((0x8B, len(tpdu))) + tpdu
    envelope = bytes((0xD1, len(body))) + body
    return bytes((0x80, 0xC2, 0, 0, len(envelope))) + envelope + b"\x90\x00"


def _send_short_message(tpdu: bytes) -> bytes:
    """FETCH answered by SEND SHORT MESSAGE carrying `tpdu`: the MS-to-SC direction."""
    body = bytes.fromhex("810301130082028183") + bytes((0x8B, len(tpdu))) + tpdu
    command = bytes((0xD0, len(body))) + body
    return bytes((0x80, 0x12, 0, 0, len(command))) + command + b"\x90\x00"


@pytest.mark.needs("tshark")
def test_tshark_decodes_our_tpdus_without_malformed_fields(tmp_path: Path) -> None:
    when = datetime(2026, 11, 30, 15, 0, 0, tzinfo=timezone(timedelta(hours=-5)))
    deliver = SmsDeliver.for_text("+15551234567", "Hello from the SMSC {€}", when)[0]
    long_parts = SmsDeliver.for_text("BIPSIM", "x" * 200, when, reference=0x42)
    submit = SmsSubmit.for_text(
        "+15557654321", "Привет", mr=9, status_report_request=True, validity=RelativeValidity(167)
    )[0]
    report = SmsStatusReport(9, Address.parse("+15557654321"), when, when + timedelta(seconds=3), 0x46)
    push = SmsDeliver(
        Address.parse("+15550001111"),
        when,
        dcs=make_dcs(Alphabet.EIGHT_BIT),
        udh=(PortAddressing(2948, 9200).element(),),
        ud=b"\x01\x06\x03\xbe\xaf\x84",
    )
    apdus = [_envelope(deliver.encode()), *(_envelope(p.encode()) for p in long_parts)]
    apdus += [_send_short_message(submit.encode()), _envelope(report.encode()), _envelope(push.encode())]
    path = tmp_path / "sms.pcap"
    _pcap(path, apdus)
    malformed = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "_ws.malformed || _ws.expert.severity == error"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert malformed.returncode == 0 and malformed.stdout.strip() == ""
    fields = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "gsm_sms.tp-mti",
            "-e",
            "gsm_sms.tp-oa",
            "-e",
            "gsm_sms.tp-da",
            "-e",
            "gsm_sms.sms_text",
            "-e",
            "gsm_sms.tp-mr",
            "-e",
            "gsm_sms.udh.mm.msg_part",
            "-e",
            "gsm_sms.destination_port",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    rows = [line.split("|") for line in fields]
    # columns: MTI, OA, DA, text, MR, concatenated part, destination port
    assert rows[0][:4] == ["0", "15551234567", "", "Hello from the SMSC {€}"]
    assert [r[5] for r in rows[1:3]] == ["1", "2"]
    assert rows[3][:5] == ["1", "", "15557654321", "Привет", "9"]
    assert rows[4][0] == "2" and rows[4][4] == "9"
    assert rows[5][6] == "2948"
