"""The cloud backup's record format (ap/lpa/records.py; docs/protocols.md, "eUICC and the cloud backup")."""

from __future__ import annotations

import os

import pytest

from bipsim.ap.lpa.records import (
    FIELDS,
    MAX_PACKAGE,
    Record,
    RecordError,
    decode_record,
    encode_records,
    ids_from_ppr,
    join_records,
    ppr_from_ids,
    record_size_limit,
)

EID = "89049032123451234512345678901235"
OTHER_EID = "89049032123451234512345678909999"


def package(size: int) -> bytes:
    # a package whose every 1024-byte chunk differs, so a swapped or repeated chunk is seen
    return bytes((i * 7 + i // 1024) % 256 for i in range(size))


@pytest.mark.parametrize(("size", "count"), [(1, 1), (1023, 1), (1024, 1), (1025, 2), (2048, 2), (2049, 3)])
def test_records_are_ceil_of_length_over_limit_and_join_back(size: int, count: int) -> None:
    data = package(size)
    records = encode_records(eid=EID, ppr=3, package=data)
    assert len(records) == count
    decoded = [decode_record(r) for r in records]
    assert all(len(r.data) <= 1024 for r in decoded)
    assert all(r.profile_len == size for r in decoded)
    assert all(len(r) <= record_size_limit(1024) for r in records)
    assert join_records(records, limit=1024) == data
    assert join_records(decoded) == data


def test_record_keeps_the_document_fields_order_and_separator() -> None:
    (record,) = encode_records(eid=EID, ppr=2, package=bytes.fromhex("BF3603010203"))
    assert record == f"module=LPA$EID={EID}$PPR=2$profile_len=6$profile_data=BF3603010203"
    assert [part.split("=")[0] for part in record.split("$")] == list(FIELDS)


def test_every_chunk_carries_identity_module_and_whole_length() -> None:
    data = package(2049)
    records = encode_records(eid=EID, ppr=1, package=data, limit=1024, module="LPA")
    assert [r.split("$profile_data=")[0] for r in records] == [
        f"module=LPA$EID={EID}$PPR=1$profile_len=2049"
    ] * 3
    assert [len(decode_record(r).data) for r in records] == [1024, 1024, 1]
    assert decode_record(records[1]).data == data[1024:2048]


def test_a_smaller_limit_makes_more_records() -> None:
    data = os.urandom(300)
    records = encode_records(eid=EID, ppr=0, package=data, limit=100)
    assert len(records) == 3
    assert join_records(records, limit=100) == data
    with pytest.raises(RecordError) as caught:
        join_records(records, limit=99)
    assert caught.value.field == "profile_data"


def test_lower_case_hex_is_read() -> None:
    record = decode_record(f"module=LPA$EID={EID}$PPR=0$profile_len=2$profile_data=bf36")
    assert record == Record("LPA", EID, 0, 2, b"\xbf\x36")
    assert record.text().endswith("profile_data=BF36")


GOOD = f"module=LPA$EID={EID}$PPR=3$profile_len=4$profile_data=01020304"


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (f"module=LPA$EID={EID}$PPR=3$profile_len=4", "profile_data", "missing"),
        (f"EID={EID}$PPR=3$profile_len=4$profile_data=01020304", "module", "missing"),
        ("module=LPA$PPR=3$profile_len=4$profile_data=01020304", "EID", "missing"),
        (f"module=LPA$PPR=3$EID={EID}$profile_len=4$profile_data=01020304", "PPR", "out of order"),
        (f"module=LPA$EID={EID}$PPR=3$PPR=3$profile_len=4$profile_data=01020304", "PPR", "repeated"),
        (GOOD + "$imei=123", "imei", "extra"),
        (GOOD + "$PPR=1", "PPR", "repeated"),
        (f"module=LPA$EID={EID}$colour=red$PPR=3$profile_len=4$profile_data=01020304", "colour", "extra"),
        (f"module=LPA$EID={EID}$PPR$profile_len=4$profile_data=01020304", "PPR", "'='"),
        (f"module=LPA$EID={EID}$PPR=4$profile_len=4$profile_data=01020304", "PPR", "0..3"),
        (f"module=LPA$EID={EID}$PPR=-1$profile_len=4$profile_data=01020304", "PPR", "0..3"),
        (f"module=LPA$EID={EID}$PPR=03$profile_len=4$profile_data=01020304", "PPR", "0..3"),
        ("module=LPA$EID=1234$PPR=3$profile_len=4$profile_data=01020304", "EID", "32 decimal"),
        (f"module=LPA$EID={EID}$PPR=3$profile_len=4$profile_data=0102030", "profile_data", "hex"),
        (f"module=LPA$EID={EID}$PPR=3$profile_len=4$profile_data=0102030g", "profile_data", "hex"),
        (f"module=LPA$EID={EID}$PPR=3$profile_len=4$profile_data=", "profile_data", "hex"),
        (f"module=LPA$EID={EID}$PPR=3$profile_len=3$profile_data=01020304", "profile_data", "more than"),
        (f"module=LPA$EID={EID}$PPR=3$profile_len=0x4$profile_data=01020304", "profile_len", "decimal"),
        (f"module=LPA$EID={EID}$PPR=3$profile_len=0$profile_data=01", "profile_len", "1.."),
        (
            f"module=LPA$EID={EID}$PPR=3$profile_len={MAX_PACKAGE + 1}$profile_data=01",
            "profile_len",
            "1..",
        ),
        (f"module=L$A$EID={EID}$PPR=3$profile_len=4$profile_data=01020304", "A", "extra"),
        (f"module=$EID={EID}$PPR=3$profile_len=4$profile_data=01020304", "module", "letters"),
        ("", "module", "missing"),
    ],
)
def test_a_malformed_record_names_its_field(text: str, field: str, words: str) -> None:
    with pytest.raises(RecordError) as caught:
        decode_record(text)
    assert caught.value.field == field, str(caught.value)
    assert words in str(caught.value)


def test_the_good_record_of_the_table_decodes() -> None:
    # the table above is built by breaking this one
    assert decode_record(GOOD) == Record("LPA", EID, 3, 4, b"\x01\x02\x03\x04")


def test_join_checks_agreement_count_and_total() -> None:
    data = package(2049)
    records = encode_records(eid=EID, ppr=3, package=data)
    other = encode_records(eid=OTHER_EID, ppr=3, package=data)
    cases: list[tuple[list[str], str]] = [
        ([], "profile_data"),
        (records[:2], "profile_len"),  # one missing
        (records + records[2:], "profile_len"),  # one too many
        ([records[0], other[1], records[2]], "EID"),
        ([records[0], records[1].replace("PPR=3", "PPR=1"), records[2]], "PPR"),
        ([records[0], records[1].replace("module=LPA", "module=XYZ"), records[2]], "module"),
        ([records[0], records[1], records[2].replace("profile_len=2049", "profile_len=2050")], "profile_len"),
        ([records[0], records[2], records[1]], "profile_data"),  # out of index order: a short record inside
    ]
    for given, field in cases:
        with pytest.raises(RecordError) as caught:
            join_records(given)
        assert caught.value.field == field, (field, str(caught.value))


def test_join_refuses_another_terminals_module_or_policy() -> None:
    """The backup fetched back must be this terminal's: its EID, the LPA's management file and the profile's PPR."""
    records = encode_records(eid=EID, ppr=2, package=bytes(range(200)), limit=64)
    assert join_records(records, eid=EID, module="LPA", ppr=2) == bytes(range(200))
    other = "89049032123451234512345678901243"
    for kwargs, field in (
        ({"eid": other}, "EID"),
        ({"module": "OTA"}, "module"),
        ({"ppr": 3}, "PPR"),
    ):
        with pytest.raises(RecordError) as info:
            join_records(records, **kwargs)  # type: ignore[arg-type]
        assert info.value.field == field and "this terminal's" in str(info.value)


def test_join_refuses_a_total_short_of_the_length() -> None:
    # two records that agree with each other but carry 2047 of the 2048 bytes they announce
    a, b = encode_records(eid=EID, ppr=0, package=package(2048))
    short = b[:-2]
    with pytest.raises(RecordError) as caught:
        join_records([a, short])
    assert caught.value.field == "profile_len"
    assert "2047" in str(caught.value)


def test_encode_refuses_what_no_record_can_carry() -> None:
    for kwargs, field in [
        ({"eid": "8904", "ppr": 0, "package": b"x"}, "EID"),
        ({"eid": EID, "ppr": 4, "package": b"x"}, "PPR"),
        ({"eid": EID, "ppr": True, "package": b"x"}, "PPR"),
        ({"eid": EID, "ppr": 0, "package": b""}, "profile_len"),
        ({"eid": EID, "ppr": 0, "package": b"x", "module": "L$A"}, "module"),
        ({"eid": EID, "ppr": 0, "package": b"x", "limit": 0}, "profile_data"),
        ({"eid": EID, "ppr": 0, "package": bytes(MAX_PACKAGE + 1)}, "profile_len"),
    ]:
        with pytest.raises(RecordError) as caught:
            encode_records(**kwargs)  # type: ignore[arg-type]
        assert caught.value.field == field


@pytest.mark.parametrize(
    ("ids", "ppr"),
    [
        (None, 0),
        ((b"\x00", 3), 0),
        ((b"\x40", 3), 1),  # ppr1 is bit 1: the first byte's second bit
        ((b"\x20", 3), 2),  # ppr2 is bit 2
        ((b"\x60", 3), 3),
        ((b"\xe0", 3), 3),  # pprUpdateControl (bit 0) carries no rule
        ((b"\x80", 1), 0),
        ((b"\x40", 1), 0),  # a bit past the BIT STRING's length is not set
        (set(), 0),
        ({"ppr1"}, 1),
        (["ppr2"], 2),
        (("ppr1", "ppr2"), 3),
        ("ppr2", 2),
    ],
)
def test_ppr_from_the_metadata_pprids(ids: object, ppr: int) -> None:
    assert ppr_from_ids(ids) == ppr


def test_ids_from_ppr_is_the_inverse() -> None:
    assert [ids_from_ppr(n) for n in range(4)] == [set(), {"ppr1"}, {"ppr2"}, {"ppr1", "ppr2"}]
    assert all(ppr_from_ids(ids_from_ppr(n)) == n for n in range(4))
    with pytest.raises(RecordError):
        ids_from_ppr(4)
    with pytest.raises(RecordError):
        ppr_from_ids(7)


@pytest.mark.parametrize(
    ("der", "ppr"),
    [
        # PprIds in DER written by hand (X.690 8.6 and 11.2.2: a named bit list drops its trailing 0 bits):
        ("030100", 0),  # no rule
        ("03020640", 1),  # ppr1 (bit 1): 2 bits used, 6 unused
        ("03020520", 2),  # ppr2 (bit 2)
        ("03020560", 3),  # both
        ("030206C0", 1),  # pprUpdateControl and ppr1: the update control bit counts for nothing
    ],
)
def test_ppr_from_pprids_as_asn1tools_decodes_them(der: str, ppr: int) -> None:
    from bipsim.uicc.euicc.asn1 import decode

    assert ppr_from_ids(decode("PprIds", bytes.fromhex(der))) == ppr
