"""The AT lines of the SIM data sync, sans-IO (docs/protocols.md, "SIM data sync"): 3GPP TS 27.007 `+CPBS`
(8.11), `+CPBR` (8.12) and `+CPBW` (8.14) answers parsed into contacts and contacts made into command lines, with
`+CSCS="UCS2"` (5.5) so that every name survives the trip (four hex digits a UTF-16 unit)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from bipsim.ap.sync.merge import Contact

TYPE_INTERNATIONAL = 145  # 27.007 8.12 <type>: TON international, ISDN numbering plan (TS 24.008 10.5.4.7)
TYPE_UNKNOWN = 129
_CPBR = re.compile(r'^\+CPBR: (\d+),"([^"]*)",(\d+),"([0-9A-Fa-f]*)"')
_CPBS = re.compile(r'^\+CPBS: "([A-Z]+)",(\d+),(\d+)')
_DIAL = re.compile(r"^\+?[0-9*#pP?]*$")


class SimDataError(ValueError):
    """An answer of the modem that is not what 27.007 says (a bad line, a bad UCS2 string, a bad dial string)."""


def ucs2(text: str) -> str:
    return text.encode("utf-16-be").hex().upper()


def from_ucs2(text: str) -> str:
    if len(text) % 4:
        raise SimDataError(f"UCS2 text {text!r} is not whole units")
    try:
        return bytes.fromhex(text).decode("utf-16-be")
    except (ValueError, UnicodeDecodeError) as exc:
        raise SimDataError(f"UCS2 text {text!r}: {exc}") from None


def parse_cpbs(lines: Iterable[str]) -> tuple[int, int]:
    """`+CPBS: "<storage>",<used>,<total>` -> (used, total)."""
    for line in lines:
        found = _CPBS.match(line)
        if found:
            return int(found.group(2)), int(found.group(3))
    raise SimDataError("no +CPBS: <storage>,<used>,<total> line")


def parse_cpbr(lines: Iterable[str]) -> dict[int, Contact]:
    """Each `+CPBR: <index>,"<number>",<type>,"<text>"` line (text in UCS2 hex) -> index: contact. Type 145 makes
    the number international: a '+' the modem left out is put back."""
    out: dict[int, Contact] = {}
    for line in lines:
        if not line.startswith("+CPBR:"):
            continue
        found = _CPBR.match(line)
        if not found:
            raise SimDataError(f"not a +CPBR entry: {line!r}")
        index, number, kind, text = int(found.group(1)), found.group(2), int(found.group(3)), found.group(4)
        if not _DIAL.match(number):
            raise SimDataError(f"record {index}: invalid dial string {number!r}")
        if kind == TYPE_INTERNATIONAL and not number.startswith("+"):
            number = "+" + number
        if index in out:
            raise SimDataError(f"record {index} listed twice")
        out[index] = Contact(from_ucs2(text), number)
    return out


def cpbw(index: int, contact: Contact) -> str:
    """The `+CPBW` that writes `contact` at `index` (text as UCS2 hex, under +CSCS="UCS2")."""
    kind = TYPE_INTERNATIONAL if contact.number.startswith("+") else TYPE_UNKNOWN
    return f'AT+CPBW={index},"{contact.number}",{kind},"{ucs2(contact.name)}"'


def cpbw_delete(index: int) -> str:
    return f"AT+CPBW={index}"
