"""Fuzzing the card: TLV and CAT decoding (uicc/tlv.py, uicc/cat.py), the APDU processor (uicc/card.py), SMS-PP
secured packets (uicc/ota_trigger.py) and the card's TLS-PSK client on server bytes (uicc/tls_psk_client.py).

Inputs are built from valid pieces (objects, APDU headers, packets, records) as well as random bytes, so that the
fuzzer reaches the code behind the first length check.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bipsim.uicc.cat import PROACTIVE_TAG, EnvelopeTag, Tag
from bipsim.uicc.ota_trigger import (
    Keyset,
    Spi,
    command_packet,
    push_script,
    sms_deliver,
    sms_pp_download,
    sms_user_data,
)
from bipsim.uicc.tlv import Ctlv, encode_length
from tests.fuzz import targets
from tests.fuzz._settings import bounded, fuzz_settings

ctlv = st.builds(
    lambda tag, value, cr, long_form: Ctlv(tag, value, cr, long_form).encode(),
    st.one_of(st.sampled_from([int(t) for t in Tag]), st.integers(1, 0x7E), st.integers(0x7F, 0x7FFF)),
    st.binary(max_size=40),
    st.booleans(),
    st.booleans(),
)
ctlv_lists = st.lists(st.one_of(ctlv, st.binary(max_size=6)), max_size=8).map(b"".join)


@st.composite
def cat_bytes(draw: st.DrawFn) -> bytes:
    """A proactive command, an envelope or a terminal response shape around fuzzed objects."""
    head = draw(
        st.sampled_from(
            [b"", b"\x81\x03\x01\x40\x01", b"\x01\x03\x01\x43\x01\x02\x02\x81\x82", b"\x82\x02\x82\x81"]
        )
    )
    body = head + draw(ctlv_lists)
    kind = draw(st.sampled_from(["proactive", "envelope", "response", "raw"]))
    if kind == "proactive":
        return bytes((PROACTIVE_TAG,)) + encode_length(len(body)) + body
    if kind == "envelope":
        return bytes((draw(st.sampled_from(list(EnvelopeTag))),)) + encode_length(len(body)) + body
    if kind == "response":
        return body
    return draw(st.binary(max_size=60))


@fuzz_settings(150)
@given(st.one_of(ctlv_lists, st.binary(max_size=80)))
def test_tlv(data: bytes) -> None:
    with bounded(5):
        targets.tlv(data)


@fuzz_settings(150)
@given(cat_bytes())
def test_cat_messages(data: bytes) -> None:
    with bounded(5):
        targets.cat_message(data)


@st.composite
def apdu(draw: st.DrawFn) -> bytes:
    cla = draw(st.sampled_from([0x00, 0x01, 0x03, 0x40, 0x4F, 0x80, 0x81, 0xA0, 0xC0, 0x20, 0xFF]))
    ins = draw(
        st.sampled_from([0xA4, 0xB0, 0xD6, 0xB2, 0xDC, 0xC0, 0x70, 0xF2, 0x10, 0x12, 0x14, 0xC2, 0x00, 0xE2])
    )
    p1, p2 = draw(st.integers(0, 255)), draw(st.integers(0, 255))
    data = draw(
        st.one_of(
            st.binary(max_size=24), cat_bytes(), st.sampled_from([b"\x3f\x00", b"\x7f\xff", b"\x6f\x07"])
        )
    )
    shape = draw(st.sampled_from(["case1", "case2", "case3", "case4", "raw"]))
    header = bytes((cla, ins, p1, p2))
    if shape == "case1":
        return header
    if shape == "case2":
        return header + bytes((draw(st.integers(0, 255)),))
    lc = bytes((len(data) & 0xFF,))
    if shape == "case3":
        return header + lc + data
    if shape == "case4":
        return header + lc + data + bytes((draw(st.integers(0, 255)),))
    return draw(st.binary(max_size=12))


@fuzz_settings(25)
@given(st.lists(apdu(), max_size=25))
def test_card_apdus(apdus: list[bytes]) -> None:
    with bounded(10):
        targets.card_apdus(targets.make_card(), apdus)


KEYS = Keyset(
    1, bytes.fromhex("101112131415161718191A1B1C1D1E1F"), bytes.fromhex("202122232425262728292A2B2C2D2E2F")
)


@st.composite
def user_data(draw: st.DrawFn) -> bytes:
    """SMS user data: a command packet built right (with fuzzed script, SPI and counter) and then perhaps damaged,
    or a fuzzed header around random bytes."""
    script = draw(
        st.one_of(
            st.binary(max_size=40),
            st.just(push_script()),
            st.builds(
                lambda objs: push_script([Ctlv(t, v) for t, v in objs]),
                st.lists(
                    st.tuples(
                        st.sampled_from(
                            [
                                int(Tag.TRANSPORT_LEVEL),
                                int(Tag.OTHER_ADDRESS),
                                int(Tag.BUFFER_SIZE),
                                int(Tag.BEARER_DESCRIPTION),
                            ]
                        ),
                        st.binary(max_size=6),
                    ),
                    max_size=4,
                ),
            ),
            st.builds(lambda a: b"\xaa" + encode_length(len(a)) + a, st.binary(max_size=30)),
        )
    )
    spi = Spi(cipher=draw(st.booleans()), counter=draw(st.sampled_from(list(range(4)))))  # type: ignore[arg-type]
    packet = command_packet(script, spi=spi, keys=KEYS, counter=draw(st.integers(0, 5)))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(packet) - 1))
        packet = packet[:at] + bytes((draw(st.integers(0, 255)),)) + packet[at + 1 :]
    if draw(st.booleans()):
        packet = packet[: draw(st.integers(0, len(packet)))]
    data = sms_user_data(packet)
    return draw(
        st.one_of(
            st.just(data), st.binary(max_size=40).map(lambda b: b"\x02\x70\x00" + b), st.binary(max_size=40)
        )
    )


@fuzz_settings(80)
@given(user_data())
def test_sms_packets(data: bytes) -> None:
    with bounded(5):
        targets.sms_user_data_packet(data)


@fuzz_settings(40)
@given(st.one_of(user_data().map(lambda u: sms_pp_download(sms_deliver(u))), cat_bytes()))
def test_sms_pp_envelope(data: bytes) -> None:
    with bounded(5):
        targets.sms_pp_envelope(data)


@fuzz_settings(100)
@given(st.one_of(st.binary(max_size=40), st.binary(max_size=30).map(lambda b: b"\x02\x71\x00" + b)))
def test_por(data: bytes) -> None:
    targets.por(data)


record = st.builds(
    targets.tls_record,
    st.sampled_from([20, 21, 22, 23, 24, 0]),
    st.one_of(
        st.binary(max_size=60),
        st.builds(
            lambda kind, body: bytes((kind,)) + len(body).to_bytes(3, "big") + body,
            st.sampled_from([2, 12, 14, 20, 1, 0]),
            st.binary(max_size=50),
        ),
    ),
)


@fuzz_settings(100)
@given(
    st.lists(st.one_of(record, st.binary(max_size=20)), max_size=5),
    st.sampled_from([(0x00AE,), (0x008C,), (0x00A8,), (0x00AE, 0x008C, 0x00A8)]),
)
def test_tls_server_bytes(reads: list[bytes], suites: tuple[int, ...]) -> None:
    with bounded(5):
        targets.tls_server_bytes(reads, suites)


plaintext = st.tuples(
    st.sampled_from([20, 21, 22, 23, 99]),
    st.one_of(
        st.binary(max_size=40),
        st.builds(
            lambda kind, body: bytes((kind,)) + len(body).to_bytes(3, "big") + body,
            st.sampled_from([2, 12, 14, 20, 0]),
            st.binary(max_size=30),
        ),
    ),
)


@fuzz_settings(50)
@given(st.sampled_from([0x00AE, 0x008C, 0x00A8]), st.lists(plaintext, max_size=4), st.binary(max_size=20))
def test_tls_after_handshake(suite: int, records: list[tuple[int, bytes]], tail: bytes) -> None:
    with bounded(5):
        targets.tls_protected_records(suite, records, tail)


def _lv(value: bytes) -> bytes:
    return bytes((len(value),)) + value


@st.composite
def gp_apdu(draw: st.DrawFn) -> bytes:
    """GP commands of a remote script (GlobalPlatform Card Specification section 11) around few AIDs, so that
    INSTALL, LOAD, DELETE and SET STATUS meet each other's objects."""
    aids = [bytes.fromhex("A0000000871001"), bytes.fromhex("A000000087100101"), b"\xa0\x00\x00\x00"]
    aid = draw(st.one_of(st.sampled_from(aids), st.binary(max_size=17)))
    module = draw(st.one_of(st.sampled_from(aids), st.binary(max_size=6)))
    kind = draw(st.sampled_from(["install-load", "install", "load", "delete", "status", "set", "raw"]))
    if kind == "install-load":
        ins, p1, p2, data = 0xE6, 0x02, 0, _lv(aid) + _lv(b"") + draw(st.binary(max_size=6))
    elif kind == "install":
        ins, p1, p2 = 0xE6, draw(st.sampled_from([0x04, 0x08, 0x0C, 0x00, 0x10])), 0
        data = _lv(aid) + _lv(module) + _lv(draw(st.sampled_from(aids))) + _lv(draw(st.binary(max_size=3)))
    elif kind == "load":
        body = draw(st.one_of(st.binary(max_size=30), st.just(b"\xc4\x09\x4f\x07" + aids[0])))
        ins, p1, p2, data = 0xE8, draw(st.sampled_from([0x00, 0x80])), draw(st.integers(0, 3)), body
    elif kind == "delete":
        ins, p1, p2, data = 0xE4, 0, draw(st.sampled_from([0x00, 0x80])), b"\x4f" + _lv(aid)
    elif kind == "status":
        ins, p1, p2, data = 0xF2, draw(st.integers(0, 255)), 0, b"\x4f\x00"
    elif kind == "set":
        ins, p1, p2, data = 0xF0, 0x40, draw(st.sampled_from([0x07, 0x0F, 0x83, 0x80, 0x00, 0xFF])), aid
    else:
        return bytes((0x80, draw(st.sampled_from([0xE6, 0xE8, 0xE4, 0xF2, 0xF0])))) + draw(
            st.binary(max_size=10)
        )
    apdu = bytes((0x80, ins, p1, p2)) + _lv(data[:255])
    return apdu if draw(st.booleans()) else apdu[: draw(st.integers(4, len(apdu)))]


@fuzz_settings(40)
@given(st.lists(gp_apdu(), max_size=10))
def test_gp_registry(apdus: list[bytes]) -> None:
    with bounded(5):
        targets.gp_apdus(apdus)


@fuzz_settings(15)
@given(st.lists(apdu(), max_size=25))
def test_card_apdus_persisted(apdus: list[bytes]) -> None:
    with bounded(10):
        targets.card_apdus_persisted(apdus)
