"""The card's phonebook records: EF_ADN, EF_FDN, EF_SDN and EF_MSISDN entries with their EF_EXT1 extensions, and the
USIM phonebook's EF_PBR (3GPP TS 31.102 sections 4.2.24, 4.2.26, 4.2.29, 4.4.2.1, 4.4.2.3; 3GPP TS 51.011 sections
10.5.1 and 10.5.10), as pure codecs: text and numbers in, record bytes out, and back.

An ADN-type record is X octets of alpha identifier (TS 102 221 annex A, uicc/gsm_text.py) then 14 octets: the length
of the BCD number contents (TON/NPI octet plus number octets, 'FF' when empty), TON/NPI, 10 octets of BCD (20 digits,
nibble-swapped, 'F' padded), a capability/configuration identifier and an extension record identifier ('FF' none).
A number of more than 20 digits goes on in EF_EXT1 records of 13 octets: record type '02' (additional data), the
count of octets of additional data, 10 octets of BCD and the next extension record's number ('FF' the last).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bipsim.uicc.gsm_text import TextTooLong, alpha_decode, alpha_encode

if TYPE_CHECKING:
    from bipsim.uicc.fs import File, FileSystem
    from bipsim.uicc.profile import CardProfile

ADN_TAIL = 14  # the octets after the alpha identifier (TS 51.011 10.5.1)
EXT_RECORD_LENGTH = 13  # EF_EXT1 (TS 51.011 10.5.10)
MAIN_DIGITS = 20  # 10 octets of BCD in the ADN record itself
EXT_DIGITS = 20  # 10 octets of BCD in one extension record
MAX_EXT_RECORDS = 3  # a chain this long gives 80 digits, the longest dial string we accept (27.007 <number>)
MAX_DIGITS = MAIN_DIGITS + EXT_DIGITS * MAX_EXT_RECORDS
NO_EXT = 0xFF

# TON/NPI octet (TS 24.008 10.5.4.7): b7..b5 type of number, b4..b1 numbering plan; 0x81 unknown/ISDN, 0x91
# international/ISDN; 27.007 <type> 145 and 129 are the same octets
TON_INTERNATIONAL = 0x91
TON_UNKNOWN = 0x81

# BCD digits of TS 31.102 table 4.4 (and TS 24.008 10.5.4.7): 'A' is '*', 'B' '#', 'C' the DTMF control digit
# separator (written 'p' or ',' in a dial string), 'D' the wild value '?'
_TO_NIBBLE = {**{str(d): d for d in range(10)}, "*": 0xA, "#": 0xB, "p": 0xC, "P": 0xC, ",": 0xC, "?": 0xD}
_FROM_NIBBLE = "0123456789*#p?"


class PhonebookError(ValueError):
    """A value a record cannot hold. `reason` names it: "text too long", "number too long", "invalid characters in
    text", "invalid characters in number"; the phonebook commands answer these with the 27.007 9.2 codes."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Entry:
    """One phonebook entry: `number` as a dial string ("+" first for an international number, then digits and
    "*#p?"), `name` as text."""

    name: str
    number: str

    @property
    def ton_npi(self) -> int:
        return TON_INTERNATIONAL if self.number.startswith("+") else TON_UNKNOWN

    @property
    def digits(self) -> str:
        return self.number.lstrip("+")


def check_number(number: str) -> str:
    """The digits of a dial string ("+" allowed first); PhonebookError for other characters or more than
    MAX_DIGITS digits."""
    digits = number[1:] if number.startswith("+") else number
    bad = next((ch for ch in digits if ch not in _TO_NIBBLE), None)
    if bad is not None:
        raise PhonebookError("invalid characters in number", f"{bad!r} in {number!r}")
    if len(digits) > MAX_DIGITS:
        raise PhonebookError("number too long", f"{len(digits)} digits, at most {MAX_DIGITS}")
    return digits


def encode_bcd(digits: str, octets: int) -> bytes:
    """Digits as nibble-swapped BCD (the first digit in the low nibble), 'F' padded to `octets` octets."""
    nibbles = [_TO_NIBBLE[ch] for ch in digits] + [0xF] * (2 * octets - len(digits))
    return bytes(nibbles[i] | (nibbles[i + 1] << 4) for i in range(0, 2 * octets, 2))


def decode_bcd(data: bytes) -> str:
    """Nibble-swapped BCD to digits, up to the first 'F' nibble (an 'E' expansion nibble, RFU, is skipped)."""
    out: list[str] = []
    for byte in data:
        for nibble in (byte & 0x0F, byte >> 4):
            if nibble == 0xF:
                return "".join(out)
            if nibble < len(_FROM_NIBBLE):
                out.append(_FROM_NIBBLE[nibble])
    return "".join(out)


def alpha_size(record_length: int) -> int:
    return record_length - ADN_TAIL


def encode_ext(digits: str, next_record: int = NO_EXT) -> bytes:
    """An EF_EXT1 record of additional data: up to EXT_DIGITS digits, then the next record's number."""
    if len(digits) > EXT_DIGITS:
        raise ValueError(f"an extension record holds {EXT_DIGITS} digits, not {len(digits)}")
    return b"\x02" + bytes(((len(digits) + 1) // 2,)) + encode_bcd(digits, 10) + bytes((next_record,))


def decode_ext(record: bytes) -> tuple[str, int] | None:
    """(digits, next record number or NO_EXT) of an EF_EXT1 record of additional data; None when it is not one
    (free, a subaddress, or malformed)."""
    if len(record) != EXT_RECORD_LENGTH or record[0] & 0x03 != 0x02:
        return None
    count = record[1]
    if count > 10:
        return None
    return decode_bcd(record[2 : 2 + count]), record[12]


def is_free(record: bytes) -> bool:
    """An ADN-type record with no number and no name is free (TS 51.011 10.5.1: unused bytes are 'FF')."""
    return all(byte == 0xFF for byte in record)


def ext_chunks(digits: str) -> list[str]:
    """The digits that go to extension records, one string per record (none for 20 digits or fewer)."""
    rest = digits[MAIN_DIGITS:]
    return [rest[i : i + EXT_DIGITS] for i in range(0, len(rest), EXT_DIGITS)]


def encode_entry(
    entry: Entry, record_length: int, ext_records: Sequence[int] = ()
) -> tuple[bytes, list[bytes]]:
    """The ADN-type record of `entry` and its extension records, in the order of `ext_records` (the EF_EXT1 record
    numbers to use, as many as ext_chunks(entry.digits) needs). PhonebookError when the name or the number does
    not fit."""
    digits = check_number(entry.number)
    chunks = ext_chunks(digits)
    if len(ext_records) < len(chunks):
        raise ValueError(f"{len(chunks)} extension records needed, {len(ext_records)} given")
    try:
        alpha = alpha_encode(entry.name, alpha_size(record_length))
    except TextTooLong as exc:
        raise PhonebookError("text too long", str(exc)) from None
    except ValueError as exc:
        raise PhonebookError("invalid characters in text", str(exc)) from None
    main = digits[:MAIN_DIGITS]
    if digits:
        head = bytes((1 + (len(main) + 1) // 2, entry.ton_npi)) + encode_bcd(main, 10)
    else:
        head = b"\xff\xff" + b"\xff" * 10
    first_ext = ext_records[0] if chunks else NO_EXT
    record = alpha + head + b"\xff" + bytes((first_ext,))
    exts = [
        encode_ext(chunk, ext_records[i + 1] if i + 1 < len(chunks) else NO_EXT)
        for i, chunk in enumerate(chunks)
    ]
    return record, exts


def decode_entry(record: bytes, ext_file: list[bytes] | None = None) -> Entry | None:
    """The entry of an ADN-type record (None when free), its number completed from `ext_file` (the EF_EXT1
    records, the first at index 0) when the record names an extension. A chain that loops or names a missing
    record ends there: the digits read so far are the number."""
    if len(record) < ADN_TAIL or is_free(record):
        return None
    alpha, tail = record[:-ADN_TAIL], record[-ADN_TAIL:]
    name = alpha_decode(alpha)
    length, ton = tail[0], tail[1]
    digits = ""
    if length != 0xFF and 1 <= length <= 11:
        digits = decode_bcd(tail[2 : 2 + length - 1])
    seen: set[int] = set()
    ext = tail[13]
    while ext != NO_EXT and ext_file is not None and 1 <= ext <= len(ext_file) and ext not in seen:
        seen.add(ext)
        found = decode_ext(ext_file[ext - 1])
        if found is None:
            break
        more, ext = found
        digits += more
    if not digits and not name:
        return None
    number = ("+" if ton == TON_INTERNATIONAL and digits else "") + digits
    return Entry(name, number)


def ext_chain(record: bytes, ext_file: list[bytes]) -> list[int]:
    """The EF_EXT1 record numbers an ADN-type record's number uses (to free them when it is overwritten)."""
    if len(record) < ADN_TAIL:
        return []
    chain: list[int] = []
    ext = record[-1]
    while ext != NO_EXT and 1 <= ext <= len(ext_file) and ext not in chain:
        found = decode_ext(ext_file[ext - 1])
        if found is None:
            break
        chain.append(ext)
        ext = found[1]
    return chain


def free_ext_records(ext_file: list[bytes]) -> list[int]:
    """The numbers of EF_EXT1 records that hold nothing (all 'FF', or record type 00)."""
    return [i + 1 for i, rec in enumerate(ext_file) if all(b == 0xFF for b in rec) or rec[:1] == b"\x00"]


EMPTY_EXT = b"\xff" * EXT_RECORD_LENGTH


def empty_record(record_length: int) -> bytes:
    return b"\xff" * record_length


# --- EF_PBR (TS 31.102 4.4.2.1) ------------------------------------------------------------------------------------

PBR_TYPE1 = 0xA8  # files with as many records as EF_ADN, one to one
PBR_TYPE3 = 0xAA  # files addressed through a record identifier (EF_EXT1)
PBR_ADN = 0xC0
PBR_EXT1 = 0xC2


def encode_pbr(adn_fid: int, ext1_fid: int, record_length: int) -> bytes:
    """One EF_PBR record: the 'A8' template naming EF_ADN, the 'AA' template naming EF_EXT1, 'FF' padded."""
    type1 = bytes((PBR_ADN, 2)) + adn_fid.to_bytes(2, "big")
    type3 = bytes((PBR_EXT1, 2)) + ext1_fid.to_bytes(2, "big")
    body = bytes((PBR_TYPE1, len(type1))) + type1 + bytes((PBR_TYPE3, len(type3))) + type3
    return body.ljust(record_length, b"\xff")


def decode_pbr(record: bytes) -> dict[int, int]:
    """The file tags of one EF_PBR record and their FIDs ({0xC0: 0x4F3A, 0xC2: 0x4F4A}); templates and entries
    it cannot parse end the walk (the rest is padding or damage)."""
    files: dict[int, int] = {}
    at = 0
    while at + 2 <= len(record) and record[at] in (0xA8, 0xA9, 0xAA):
        length = record[at + 1]
        body = record[at + 2 : at + 2 + length]
        if len(body) != length:
            break
        inner = 0
        while inner + 2 <= len(body):
            tag, size = body[inner], body[inner + 1]
            value = body[inner + 2 : inner + 2 + size]
            if len(value) != size or size < 2:
                break
            files[tag] = int.from_bytes(value[:2], "big")
            inner += 2 + size
        at += 2 + length
    return files


# --- the card profile's phonebook and messages (uicc/profile.py keys contacts, fdn, sdn, msisdn, sms) --------------

# profile key -> the file its entries go to: EF_ADN of DF_TELECOM (and of the USIM phonebook), the others of ADF_USIM
PROFILE_FILES = {"contacts": 0x6F3A, "fdn": 0x6F3B, "sdn": 0x6F49, "msisdn": 0x6F40}
SMS_RECORD_LENGTH = 176  # EF_SMS (TS 31.102 4.2.25): status octet, then 175 octets of SC address and TPDU
SMS_STATUS = {"free": 0x00, "read": 0x01, "unread": 0x03, "sent": 0x05, "unsent": 0x07}


def _entry(item: object, key: str, number: int) -> Entry:
    if not isinstance(item, dict):
        raise PhonebookError("not a table", f"{key} #{number}")
    unknown = sorted(set(item) - {"name", "number"})
    if unknown:
        raise PhonebookError("unknown keys", f"{key} #{number}: {', '.join(unknown)} (use name, number)")
    name, dial = item.get("name", ""), item.get("number", "")
    if not isinstance(name, str) or not isinstance(dial, str):
        raise PhonebookError("name and number must be strings", f"{key} #{number}")
    return Entry(name, dial)


def profile_entries(profile: CardProfile) -> dict[str, list[Entry]]:
    """The profile's entries by key (contacts, fdn, sdn, msisdn), each checked against the records it goes to:
    PhonebookError (naming the key and the entry) when a name or number does not fit, when there are more
    entries than records, or when the long numbers need more EF_EXT1 records than the card has."""
    from bipsim.uicc.fs import EXT1_RECORDS, FDN_RECORDS, MSISDN_RECORDS, PHONEBOOK_RECORD_LENGTH, SDN_RECORDS

    limits = {
        "contacts": profile.adn_records,
        "fdn": FDN_RECORDS,
        "sdn": SDN_RECORDS,
        "msisdn": MSISDN_RECORDS,
    }
    out: dict[str, list[Entry]] = {}
    ext_needed = 0
    for key in PROFILE_FILES:
        items = getattr(profile, key, ())
        entries = [_entry(item, key, number) for number, item in enumerate(items, 1)]
        if len(entries) > limits[key]:
            raise PhonebookError(
                "too many entries", f"{key}: {len(entries)}, the file has {limits[key]} records"
            )
        for number, entry in enumerate(entries, 1):
            try:
                chunks = ext_chunks(check_number(entry.number))
                encode_entry(entry, PHONEBOOK_RECORD_LENGTH, list(range(1, len(chunks) + 1)))
            except PhonebookError as exc:
                raise PhonebookError(exc.reason, f"{key} #{number} ({entry.name!r}): {exc}") from None
            if key == "contacts":
                ext_needed += len(chunks)
        out[key] = entries
    if ext_needed > EXT1_RECORDS:
        raise PhonebookError(
            "too many long numbers", f"they need {ext_needed} EF_EXT1 records of {EXT1_RECORDS}"
        )
    return out


def sms_records(items: Sequence[object]) -> list[bytes]:
    """EF_SMS records from the profile's `sms`: a hex string is a record (status octet first; shorter ones are
    'FF' padded), a table {status = "read"|"unread"|"sent"|"unsent", pdu = hex} is a status and the 27.005 PDU
    (SC address then TPDU). PhonebookError names a bad one."""
    records: list[bytes] = []
    for number, item in enumerate(items, 1):
        if isinstance(item, str):
            try:
                raw = bytes.fromhex(item)
            except ValueError:
                raise PhonebookError("not hex", f"sms #{number}") from None
        elif isinstance(item, dict):
            status = item.get("status", "read")
            if status not in SMS_STATUS or status == "free":
                raise PhonebookError(
                    "bad status", f"sms #{number}: {status!r} (use read, unread, sent, unsent)"
                )
            pdu = item.get("pdu", "")
            try:
                raw = bytes((SMS_STATUS[status],)) + bytes.fromhex(pdu if isinstance(pdu, str) else "")
            except ValueError:
                raise PhonebookError("not hex", f"sms #{number} pdu") from None
            if not pdu:
                raise PhonebookError("no pdu", f"sms #{number}")
        else:
            raise PhonebookError("not a hex string nor a table", f"sms #{number}")
        if not raw or len(raw) > SMS_RECORD_LENGTH:
            raise PhonebookError(
                "bad length", f"sms #{number}: {len(raw)} octets, a record has {SMS_RECORD_LENGTH}"
            )
        records.append(raw.ljust(SMS_RECORD_LENGTH, b"\xff"))
    return records


def load_phonebook(fs: FileSystem, profile: CardProfile) -> None:
    """Writes the profile's entries and messages into a new card's files (before its state file, which has the
    last word, is loaded): contacts to DF_TELECOM's EF_ADN and the USIM phonebook's (found through EF_PBR), with
    their EF_EXT1 records; fdn, sdn, msisdn to the USIM's EF_FDN, EF_SDN, EF_MSISDN; sms to EF_SMS from record 1."""
    usim = fs.usim
    telecom = fs.mf.children[0x7F10]
    entries = profile_entries(profile)
    targets: list[tuple[File, File | None, str]] = [
        (telecom.children[0x6F3A], telecom.children[0x6F4A], "contacts"),
        *((usim.children[PROFILE_FILES[key]], None, key) for key in ("fdn", "sdn", "msisdn")),
    ]
    book = usim.children.get(0x5F3A)
    if book is not None and 0x4F30 in book.children:
        files = decode_pbr(bytes(book.children[0x4F30].data[: book.children[0x4F30].record_length]))
        adn, ext = book.children.get(files.get(PBR_ADN, -1)), book.children.get(files.get(PBR_EXT1, -1))
        if adn is not None:
            targets.append((adn, ext, "contacts"))
    for adn_file, ext_file, key in targets:
        next_ext = 1
        for index, entry in enumerate(entries[key]):
            chunks = ext_chunks(check_number(entry.number))
            numbers = list(range(next_ext, next_ext + len(chunks)))
            next_ext += len(chunks)
            record, exts = encode_entry(entry, adn_file.record_length, numbers)
            start = index * adn_file.record_length
            adn_file.data[start : start + adn_file.record_length] = record
            if ext_file is not None:
                for number, ext_record in zip(numbers, exts, strict=True):
                    at = (number - 1) * EXT_RECORD_LENGTH
                    ext_file.data[at : at + EXT_RECORD_LENGTH] = ext_record
    sms_file = usim.children.get(0x6F3C)
    if sms_file is not None:
        for index, record in enumerate(sms_records(profile.sms)[: sms_file.records]):
            start = index * sms_file.record_length
            sms_file.data[start : start + sms_file.record_length] = record[: sms_file.record_length]
    smsp = usim.children.get(0x6F42)
    # EF_SMSP record 1's TS-Service Centre Address (TS 31.102 4.2.27), after the alpha identifier, the parameter
    # indicators and the TP-Destination Address
    if smsp is not None and profile.smsp_sca:
        fixed = smsp.record_length - 28
        digits = profile.smsp_sca.removeprefix("+")
        value = encode_bcd(digits, (len(digits) + 1) // 2)
        toa = 0x91 if profile.smsp_sca.startswith("+") else 0x81
        smsp.data[fixed] &= ~0x02 & 0xFF  # bit 2 zero: the address is there
        smsp.data[fixed + 13 : fixed + 25] = (bytes((1 + len(value), toa)) + value).ljust(12, b"\xff")


# --- EF_ECC (TS 31.102 4.2.21): emergency call codes ----------------------------------------------------------------

ECC_ALPHA = 14  # the alpha identifier's octets in our records
# 3 octets of BCD (6 digits), the alpha identifier, the service category
ECC_RECORD_LENGTH = 3 + ECC_ALPHA + 1


def encode_ecc(code: str, name: str = "", category: int = 0) -> bytes:
    """One EF_ECC record: the emergency call code (up to 6 digits, BCD, 'F' padded), its alpha identifier and the
    emergency service category octet (TS 24.008 10.5.4.33 bits; 0 none given)."""
    if not code.isdigit() or not 1 <= len(code) <= 6:
        raise PhonebookError("invalid characters in number", f"emergency call code {code!r}")
    return encode_bcd(code, 3) + alpha_encode(name, ECC_ALPHA) + bytes((category,))


def decode_ecc(record: bytes) -> Entry | None:
    """The entry of an EF_ECC record (its code as the number), None when free."""
    if len(record) < 4 or record[:3] == b"\xff\xff\xff":
        return None
    return Entry(alpha_decode(record[3:-1]), decode_bcd(record[:3]))
