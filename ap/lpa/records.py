"""The cloud backup's record format (docs/protocols.md, "eUICC and the cloud backup": "The record format"), sans-IO.

A bound profile package (the DER of the BoundProfilePackage of GSMA SGP.22 2.5.5, as getBoundProfilePackage gives it)
travels to the cloud store as text records of the document's form

    module=LPA$EID=<eid>$PPR=<0..3>$profile_len=<L>$profile_data=<hex>

fields in that order, separated by `$`. A package over the cloud's single-upload limit (1024 package bytes by
default) is split into ⌈L/limit⌉ records: each keeps every field, `profile_len` is the whole package's length, and
`profile_data` the hex of this record's bytes; the record's index and the count travel in the upload request, not in
the record. PPR is the profile's policy rules as the profile metadata names them (SGP.22 2.9; StoreMetadataRequest's
profilePolicyRules, ASN.1 PprIds): 0 none, 1 PPR1 (the profile cannot be disabled), 2 PPR2 (it cannot be deleted),
3 both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

MODULE = "LPA"
DEFAULT_LIMIT = 1024  # package bytes a record carries at most: the cloud's default single-upload maximum
FIELDS = ("module", "EID", "PPR", "profile_len", "profile_data")
SEPARATOR = "$"
# a whole package: SGP.22 profiles are tens of kilobytes; 1 MiB keeps a forged profile_len from reserving memory
MAX_PACKAGE = 1 << 20
MAX_MODULE = 16  # characters of a management file's name
EID_DIGITS = 32  # SGP.29 2.2: an EID is 32 decimal digits
_MODULE = re.compile(r"^[A-Za-z0-9_.-]{1,16}$")
_EID = re.compile(r"^[0-9]{32}$")
_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,9})$")
_HEX = re.compile(r"^(?:[0-9A-Fa-f]{2})+$")
# SGP.22's ASN.1 PprIds: a BIT STRING whose named bits are pprUpdateControl(0), ppr1(1), ppr2(2)
PPR_BITS = {"ppr1": 1, "ppr2": 2}


class RecordError(ValueError):
    """A record (or a set of records) that is not the format; `field` names the field at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Record:
    """One decoded record: `data` is this record's share of the package, `profile_len` the whole package's length."""

    module: str
    eid: str
    ppr: int
    profile_len: int
    data: bytes

    def text(self) -> str:
        """The record as it travels (the hex upper case)."""
        values = (self.module, self.eid, str(self.ppr), str(self.profile_len), self.data.hex().upper())
        return SEPARATOR.join(f"{name}={value}" for name, value in zip(FIELDS, values, strict=True))


def record_size_limit(limit: int = DEFAULT_LIMIT) -> int:
    """Characters of the longest record that carries `limit` package bytes: what a cloud store takes in one upload."""
    fixed = sum(len(name) + 1 for name in FIELDS) + len(FIELDS) - 1
    return fixed + MAX_MODULE + EID_DIGITS + 1 + len(str(MAX_PACKAGE)) + 2 * limit


def _check_module(module: str) -> None:
    if not _MODULE.match(module):
        raise RecordError(
            "module", f"{module[:40]!r} is not 1 to {MAX_MODULE} letters, digits, '_', '.' or '-'"
        )


def _check_eid(eid: str) -> None:
    if not _EID.match(eid):
        raise RecordError("EID", f"{eid[:40]!r} is not {EID_DIGITS} decimal digits")


def _check_ppr(ppr: int) -> None:
    if isinstance(ppr, bool) or not isinstance(ppr, int) or not 0 <= ppr <= 3:
        raise RecordError("PPR", f"{ppr!r} is not 0..3")


def check_identity(eid: str, module: str = MODULE) -> None:
    """RecordError unless `eid` and `module` can name a backup (the EID and management file of a record)."""
    _check_module(module)
    _check_eid(eid)


def encode_records(
    *, eid: str, ppr: int, package: bytes, limit: int = DEFAULT_LIMIT, module: str = MODULE
) -> list[str]:
    """The records of `package`: ⌈L/limit⌉ of them, each carrying at most `limit` of its bytes, in order."""
    _check_module(module)
    _check_eid(eid)
    _check_ppr(ppr)
    if limit < 1:
        raise RecordError("profile_data", f"a limit of {limit} bytes carries nothing")
    if not package:
        raise RecordError("profile_len", "an empty package")
    if len(package) > MAX_PACKAGE:
        raise RecordError("profile_len", f"{len(package)} bytes over the {MAX_PACKAGE} byte maximum")
    return [
        Record(module, eid, ppr, len(package), package[at : at + limit]).text()
        for at in range(0, len(package), limit)
    ]


def decode_record(text: str) -> Record:
    """One record; RecordError naming the field that is missing, extra, out of order or wrong."""
    if not isinstance(text, str):
        raise RecordError("module", "a record is text")
    parts = text.split(SEPARATOR)
    names = [part.partition("=")[0] for part in parts]
    values: list[str] = []
    for position, part in enumerate(parts):
        name, equals, value = part.partition("=")
        shown = name[:40] or "(empty)"
        if position >= len(FIELDS):
            raise RecordError(shown, "repeated field" if name in FIELDS else "extra field")
        expected = FIELDS[position]
        if name != expected:
            if name in names[:position]:
                raise RecordError(name, "repeated field")
            if expected not in names:
                raise RecordError(expected, f"missing field (field {position + 1} is {shown!r})")
            if name in FIELDS:
                raise RecordError(name, f"out of order (field {position + 1} is {expected})")
            raise RecordError(shown, "extra field")
        if not equals:
            raise RecordError(expected, "no '=' after the name")
        values.append(value)
    if len(values) < len(FIELDS):
        raise RecordError(FIELDS[len(values)], "missing field")
    module, eid, ppr_text, len_text, data_text = values
    _check_module(module)
    _check_eid(eid)
    if not re.fullmatch(r"[0-3]", ppr_text):
        raise RecordError("PPR", f"{ppr_text[:40]!r} is not 0..3")
    if not _DECIMAL.match(len_text):
        raise RecordError("profile_len", f"{len_text[:40]!r} is not a decimal length")
    length = int(len_text)
    if not 1 <= length <= MAX_PACKAGE:
        raise RecordError("profile_len", f"{length} is not 1..{MAX_PACKAGE}")
    if not _HEX.match(data_text):
        raise RecordError("profile_data", "not an even number of hex digits (at least one byte)")
    data = bytes.fromhex(data_text)
    if len(data) > length:
        raise RecordError("profile_data", f"{len(data)} bytes, more than profile_len {length}")
    return Record(module, eid, int(ppr_text), length, data)


def join_records(
    records: Sequence[str | Record],
    *,
    limit: int | None = None,
    eid: str | None = None,
    module: str | None = None,
    ppr: int | None = None,
) -> bytes:
    """The package the records carry, in the order given (their upload index order).

    Checks that they agree (module, EID, PPR, profile_len), that every record but the last carries as many bytes as
    the first and the last no more, that there are ⌈L/chunk⌉ of them and that they add up to L; with `limit`, that
    no record carries more than it; with `eid`, `module`, `ppr`, that they are the backup of that terminal's
    management file with that policy (a backup of another eUICC or module is not this one's package). RecordError
    otherwise."""
    if not records:
        raise RecordError("profile_data", "no records")
    decoded = [r if isinstance(r, Record) else decode_record(r) for r in records]
    first = decoded[0]
    for name, expected, got in (
        ("EID", eid, first.eid),
        ("module", module, first.module),
        ("PPR", ppr, first.ppr),
    ):
        if expected is not None and got != expected:
            raise RecordError(name, f"the records carry {got!r}, this terminal's is {expected!r}")
    for index, record in enumerate(decoded):
        for name, mine, theirs in (
            ("module", record.module, first.module),
            ("EID", record.eid, first.eid),
            ("PPR", record.ppr, first.ppr),
            ("profile_len", record.profile_len, first.profile_len),
        ):
            if mine != theirs:
                raise RecordError(name, f"record {index} has {mine!r}, record 0 {theirs!r}")
    chunk = len(first.data)
    if limit is not None and chunk > limit:
        raise RecordError("profile_data", f"record 0 carries {chunk} bytes, over the {limit} byte limit")
    expected = -(-first.profile_len // chunk)
    if len(decoded) != expected:
        raise RecordError(
            "profile_len",
            f"{len(decoded)} records of {chunk} bytes for {first.profile_len} bytes: {expected} expected",
        )
    for index, record in enumerate(decoded[:-1]):
        if len(record.data) != chunk:
            raise RecordError(
                "profile_data", f"record {index} carries {len(record.data)} bytes, record 0 {chunk}"
            )
    package = b"".join(r.data for r in decoded)
    if len(package) != first.profile_len:
        raise RecordError(
            "profile_len", f"the records carry {len(package)} bytes, profile_len is {first.profile_len}"
        )
    return package


def ppr_from_ids(ppr_ids: Any) -> int:
    """The record's PPR from the profile metadata's pprIds: 0 none, 1 ppr1, 2 ppr2, 3 both.

    `ppr_ids` as asn1tools decodes the BIT STRING PprIds (a (bytes, bit count) pair; bit 0 is the first byte's high
    bit), as names ("ppr1", "ppr2"; "pprUpdateControl" carries no rule and is ignored), or None (absent)."""
    if ppr_ids is None:
        return 0
    if isinstance(ppr_ids, tuple) and len(ppr_ids) == 2 and isinstance(ppr_ids[0], bytes | bytearray):
        bits, count = ppr_ids
        names = {
            name
            for name, bit in PPR_BITS.items()
            if bit < count and bit // 8 < len(bits) and bits[bit // 8] & (0x80 >> (bit % 8))
        }
    elif isinstance(ppr_ids, str):
        names = {ppr_ids}
    elif isinstance(ppr_ids, Iterable):
        names = {str(name) for name in ppr_ids}
    else:
        raise RecordError("PPR", f"pprIds {ppr_ids!r} is neither a BIT STRING nor names")
    return (1 if "ppr1" in names else 0) | (2 if "ppr2" in names else 0)


def ids_from_ppr(ppr: int) -> set[str]:
    """The pprIds names a record's PPR stands for (the inverse of `ppr_from_ids`)."""
    _check_ppr(ppr)
    return {name for name, value in (("ppr1", 1), ("ppr2", 2)) if ppr & value}
