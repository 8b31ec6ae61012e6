"""Fuzzing the eSIM side (issue 23's bad input, tests/fuzz/targets_esim.py): the eUICC's ISD-R on chained STORE DATA
(GSMA SGP.22 5.7), and the LPA's parsers of its peers' answers: the eUICC's ES10 DER, the cloud's backup records,
the SM-DP+'s ES9+ JSON and activation codes.

Requests are built around the ES10 functions' own tags (so that the ISD-R decodes them with the SGP.22 ASN.1 module
and reaches each function's checks) as well as random bytes; records and JSON around valid ones.
"""

from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from bipsim.ap.lpa import records
from bipsim.ap.lpa.es10_client import iccid_bytes, tlv
from tests.fuzz import targets_esim
from tests.fuzz._settings import bounded, fuzz_settings

EID = "89049032123451234512345678901235"
BPP_TAGS = [0xA0, 0xA1, 0xA2, 0xA3, 0x86, 0x87, 0x88]  # a BoundProfilePackage's segments (SGP.22 2.5.5)


def _tag_bytes(tag: int) -> bytes:
    return tag.to_bytes(2 if tag > 0xFF else 1, "big")


der_leaf = st.builds(
    lambda tag, value: tlv(bytes((tag,)), value),
    st.sampled_from([0x5A, 0x4F, 0x80, 0x81, 0x82, 0x5C, 0x04, 0x06, 0x9F, 0x99]),
    st.binary(max_size=20),
)
der_content = st.lists(st.one_of(der_leaf, st.binary(max_size=8)), max_size=5).map(b"".join)


def _lpa_requests(iccid: bytes) -> list[bytes]:
    """Requests as an LPA sends them (ap/lpa/es10_client.py) about one of the installed profiles: the functions
    that change the eUICC's state, each with its SGP.22 5.7 fields."""
    profile = tlv(b"\xa0", tlv(b"\x5a", iccid))
    return [
        tlv(b"\xbf\x31", profile + tlv(b"\x81", b"\xff")),  # EnableProfile, refreshFlag
        tlv(b"\xbf\x31", profile + tlv(b"\x81", b"\x00")),
        tlv(b"\xbf\x32", profile + tlv(b"\x81", b"\xff")),  # DisableProfile
        tlv(b"\xbf\x33", tlv(b"\x5a", iccid)),  # DeleteProfile
        tlv(b"\xbf\x29", tlv(b"\x5a", iccid) + tlv(b"\x90", "é nick".encode())),  # SetNickname
        tlv(b"\xbf\x2d", tlv(b"\xa0", tlv(b"\x5a", iccid))),  # ProfileInfoList, searchCriteria
        tlv(b"\xbf\x30", tlv(b"\x80", b"\x01")),  # NotificationSent (RemoveNotificationFromList)
        tlv(b"\xbf\x3f", tlv(b"\x80", b"smdp.example")),  # SetDefaultDpAddress
        tlv(b"\xbf\x41", tlv(b"\x80", bytes(16)) + tlv(b"\x81", b"\x01")),  # CancelSession
        bytes.fromhex("BF3E035C015A"),  # GetEuiccData (GetEID)
        bytes.fromhex("BF2800"),
        bytes.fromhex("BF2B00"),
    ]


LPA_REQUESTS = [
    request for iccid in targets_esim.builtin_iccids() for request in _lpa_requests(iccid_bytes(iccid))
]


@st.composite
def es10_requests(draw: st.DrawFn) -> bytes:
    """An LPA's request (as sent, or with one byte changed), an ES10 function's tag around fuzzed DER (a right or a
    wrong length), a BPP segment, or random bytes."""
    kind = draw(st.sampled_from(["lpa", "function", "segment", "raw"]))
    if kind == "raw":
        return draw(st.binary(max_size=60))
    if kind == "lpa":
        request = bytearray(draw(st.sampled_from(LPA_REQUESTS)))
        if draw(st.booleans()):
            request[draw(st.integers(0, len(request) - 1))] = draw(st.integers(0, 255))
        return bytes(request)
    tags = targets_esim.es10_request_tags() if kind == "function" else BPP_TAGS
    tag = _tag_bytes(draw(st.sampled_from(tags)))
    content = draw(der_content)
    if draw(st.booleans()):
        return tlv(tag, content)
    return tag + bytes((draw(st.integers(0, 0x84)),)) + content  # a length that need not match


@fuzz_settings(40)
@given(
    st.lists(
        st.tuples(es10_requests(), st.sampled_from([255, 64, 7, 1]), st.integers(0, 6)),
        min_size=1,
        max_size=4,
    )
)
def test_isd_r_on_store_data(requests: list[tuple[bytes, int, int]]) -> None:
    with bounded(20):
        targets_esim.isd_r(requests)


@fuzz_settings(150)
@given(st.one_of(es10_requests(), st.binary(max_size=60)))
def test_lpa_reads_es10_answers(der: bytes) -> None:
    with bounded(5):
        targets_esim.es10_answers(der)


_package = bytes(range(256)) * 5
_valid_records = records.encode_records(eid=EID, ppr=1, package=_package[:2049], limit=1024)


@st.composite
def record_texts(draw: st.DrawFn) -> list[str]:
    """The three records of a 2049-byte package, some left out, swapped or cut, with fields changed."""
    texts = list(_valid_records)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(texts) - 1)) if texts else 0
        how = draw(st.sampled_from(["drop", "swap", "cut", "insert", "replace"]))
        if not texts:
            texts.append(draw(st.text(max_size=40)))
        elif how == "drop":
            texts.pop(at)
        elif how == "swap":
            texts[0], texts[at] = texts[at], texts[0]
        elif how == "cut":
            texts[at] = texts[at][: draw(st.integers(0, len(texts[at])))]
        elif how == "insert":
            where = draw(st.integers(0, len(texts[at])))
            texts[at] = (
                texts[at][:where]
                + draw(st.sampled_from(["$", "=", "PPR=9", "$x=1", "0", "é"]))
                + texts[at][where:]
            )
        else:
            texts[at] = texts[at].replace(
                draw(st.sampled_from(["PPR=1", "profile_len=2049", "LPA", EID[:6]])),
                draw(st.text(max_size=6)),
            )
    return texts


@fuzz_settings(120)
@given(record_texts(), st.sampled_from([1024, 512, 4096]))
def test_lpa_joins_cloud_records(texts: list[str], limit: int) -> None:
    with bounded(5):
        targets_esim.cloud_records(texts, EID, limit)


es9_values = st.one_of(
    st.text(max_size=12),
    st.integers(),
    st.none(),
    st.booleans(),
    st.sampled_from([base64.b64encode(b"\x01\x02").decode(), "0123456789ABCDEF0123456789ABCDEF", "=="]),
    st.lists(st.integers(), max_size=2),
)
es9_objects = st.dictionaries(
    st.sampled_from(["header", "transactionId", "euiccSigned1", "boundProfilePackage", "x"]),
    es9_values,
    max_size=4,
)


@fuzz_settings(150)
@given(st.one_of(es9_objects.map(lambda o: json.dumps(o).encode()), st.binary(max_size=60)))
def test_es9_bodies(body: bytes) -> None:
    with bounded(5):
        targets_esim.es9_bodies(body)


@fuzz_settings(150)
@given(
    st.one_of(
        st.lists(
            st.sampled_from(["LPA:", "1", "$", "127.0.0.1:8443", "host", "MATCH", "1.3.6.1", ":", " ", "é"]),
            max_size=8,
        ).map("".join),
        st.text(max_size=40),
    )
)
def test_activation_codes(text: str) -> None:
    with bounded(5):
        targets_esim.activation_code(text)
