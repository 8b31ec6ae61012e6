"""The phonebook commands of 3GPP TS 27.007 (sections 8.11 +CPBS, 8.12 +CPBR, 8.13 +CPBF, 8.14 +CPBW, 7.1 +CNUM),
answered from the card's files through the slot's card driver (SELECT, READ RECORD, UPDATE RECORD, VERIFY PIN2).

Storages (docs/protocols.md, "Phonebook"): "SM" the USIM phonebook's EF_ADN, found through EF_PBR (TS 31.102
4.4.2.1), or DF_TELECOM's EF_ADN on a card without one, with EF_EXT1 for numbers over 20 digits (an edit of the
USIM's is written to DF_TELECOM's EF_ADN too, so the 2G phonebook stays the same book); the USIM's
"FD" EF_FDN (its updates need PIN2: `+CPBS="FD","<PIN2>"` verifies it), "SD" EF_SDN (read only), "ON"
EF_MSISDN (the own numbers +CNUM lists) and "EN" EF_ECC (the emergency call codes, read only). Record codecs:
uicc/phonebook.py. Texts are in the +CSCS character set (27.007 5.5, uicc/gsm_text.py te_shown/te_decode);
numbers are dial strings whatever the set, as 27.007 8.12 gives <number> with its <type> (129 unknown, 145
international) and only <text> in the TE set.

Errors (27.007 9.2.1): 3 not allowed (a read-only storage, FDN without PIN2), 4 an unknown storage, 16 wrong PIN2,
20 memory full (no free record or EF_EXT1 record), 21 invalid index, 22 nothing found (+CPBF), 24 text string too
long, 25 invalid characters in text, 26 dial string too long, 27 invalid characters in dial string, 50 bad
parameters; the card's refusals 11 (69 82: SIM PIN required), 12 (69 83: SIM PUK required), otherwise 13 (SIM
failure). Each is the command's final result and so its
`at.final` trace event, and nothing is written to the card.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from bipsim.cp.card_driver import FileNotSelected
from bipsim.link.at_server import AtCommandError, AtServer, CmeError
from bipsim.link.at_syntax import AtArg, AtRequest, CommandKind
from bipsim.uicc.fs import USIM_AID, pin_block
from bipsim.uicc.gsm_text import te_decode, te_shown
from bipsim.uicc.phonebook import (
    ECC_ALPHA,
    EMPTY_EXT,
    EXT_DIGITS,
    MAIN_DIGITS,
    MAX_EXT_RECORDS,
    PBR_ADN,
    PBR_EXT1,
    TON_INTERNATIONAL,
    Entry,
    PhonebookError,
    alpha_size,
    check_number,
    decode_ecc,
    decode_entry,
    decode_pbr,
    empty_record,
    encode_entry,
    ext_chain,
    ext_chunks,
    free_ext_records,
    is_free,
)

if TYPE_CHECKING:
    from bipsim.cp.card_slot import CardSlot
    from bipsim.cp.commands import ModemCommands
    from bipsim.trace.recorder import Tracer

CME_NOT_ALLOWED = 3
CME_NOT_SUPPORTED = 4
CME_SIM_PIN_REQUIRED = 11
CME_SIM_PUK_REQUIRED = 12
CME_SIM_FAILURE = 13
CME_INCORRECT_PASSWORD = 16
CME_SIM_PUK2_REQUIRED = 18
CME_MEMORY_FULL = 20
CME_INVALID_INDEX = 21
CME_NOT_FOUND = 22
CME_TEXT_TOO_LONG = 24
CME_INVALID_TEXT = 25
CME_DIAL_STRING_TOO_LONG = 26
CME_INVALID_DIAL_STRING = 27
CME_BAD_PARAMETERS = 50

TYPE_UNKNOWN, TYPE_INTERNATIONAL = 129, 145
MF, DF_TELECOM, ADF_USIM = b"\x3f\x00", b"\x7f\x10", USIM_AID  # an AID part: SELECT by DF name
DF_PHONEBOOK, EF_PBR = b"\x5f\x3a", b"\x4f\x30"
EF_FDN = b"\x6f\x3b"


@dataclass(frozen=True)
class Storage:
    """A 27.007 phonebook storage: the path of its EF from the MF (FIDs; ADF_USIM stands for the USIM's AID), of
    its EF_EXT1 (None: numbers of 20 digits at most), whether +CPBW may write it and whether that needs PIN2."""

    name: str
    path: tuple[bytes, ...]
    ext: tuple[bytes, ...] | None
    writable: bool = True
    pin2: bool = False
    ecc: bool = False  # EF_ECC records (TS 31.102 4.2.21) instead of ADN-type ones


TELECOM_SM = Storage("SM", (MF, DF_TELECOM, b"\x6f\x3a"), (MF, DF_TELECOM, b"\x6f\x4a"))
STORAGES = {
    "SM": TELECOM_SM,
    "FD": Storage("FD", (MF, ADF_USIM, EF_FDN), None, pin2=True),
    "SD": Storage("SD", (MF, ADF_USIM, b"\x6f\x49"), None, writable=False),
    "ON": Storage("ON", (MF, ADF_USIM, b"\x6f\x40"), None),
    "EN": Storage("EN", (MF, ADF_USIM, b"\x6f\xb7"), None, writable=False, ecc=True),
}


@dataclass
class Book:
    """A storage's records as read from the card: the EF's records and its EF_EXT1's (empty without one)."""

    storage: Storage
    path: tuple[bytes, ...]
    ext_path: tuple[bytes, ...] | None
    records: list[bytes]
    ext: list[bytes]

    @property
    def record_length(self) -> int:
        return len(self.records[0]) if self.records else 0

    @property
    def used(self) -> int:
        return sum(1 for record in self.records if not is_free(record))

    def entry(self, index: int) -> Entry | None:
        if self.storage.ecc:
            return decode_ecc(self.records[index - 1])
        return decode_entry(self.records[index - 1], self.ext)

    @property
    def text_length(self) -> int:
        return ECC_ALPHA if self.storage.ecc else alpha_size(self.record_length)

    @property
    def max_digits(self) -> int:
        if self.storage.ecc:
            return 6
        if self.ext_path is None or not self.ext:
            return MAIN_DIGITS
        return MAIN_DIGITS + EXT_DIGITS * min(MAX_EXT_RECORDS, len(self.ext))


def _str_arg(args: tuple[AtArg, ...], index: int) -> str | None:
    value = args[index] if index < len(args) else None
    if value is None:
        return None
    if not isinstance(value, str):
        raise CmeError(CME_BAD_PARAMETERS)
    return value


def _int_arg(args: tuple[AtArg, ...], index: int) -> int | None:
    value = args[index] if index < len(args) else None
    if value is None:
        return None
    if not isinstance(value, int):
        raise CmeError(CME_BAD_PARAMETERS)
    return value


def _card_cme(sw: int) -> int:
    """The +CME ERROR of a card's refusal (27.007 9.2.1): 6982 security status not satisfied is 11 (SIM PIN
    required: TS 31.102 guards the phonebook with PIN1), 6983 a blocked PIN 12 (SIM PUK required), anything else
    13 (SIM failure)."""
    return {0x6982: CME_SIM_PIN_REQUIRED, 0x6983: CME_SIM_PUK_REQUIRED}.get(sw, CME_SIM_FAILURE)


_PHONEBOOK_ERRORS = {
    "text too long": CME_TEXT_TOO_LONG,
    "invalid characters in text": CME_INVALID_TEXT,
    "number too long": CME_DIAL_STRING_TOO_LONG,
    "invalid characters in number": CME_INVALID_DIAL_STRING,
}


class PhonebookCommands:
    """The phonebook command set (cp/command_sets.py): +CPBS, +CPBR, +CPBF, +CPBW, +CNUM on every AT server of
    the modem. The selected storage is the modem's (27.007 8.11: the ME's memory), "SM" at start."""

    def __init__(self, core: ModemCommands, tracer: Tracer) -> None:
        self.core = core
        self.tracer = tracer
        self.storage = "SM"
        self._lock = (
            trio.Lock()
        )  # one phonebook command at a time on the card: its SELECTs and records go together

    def install(self, server: AtServer) -> None:
        table: dict[str, Callable[[AtRequest, CardSlot], Awaitable[list[str] | None]]] = {
            "+CPBS": self.cpbs,
            "+CPBR": self.cpbr,
            "+CPBF": self.cpbf,
            "+CPBW": self.cpbw,
            "+CNUM": self.cnum,
        }
        for name, handler in table.items():
            server.register(name, self._on_slot(server, handler))

    def forget(self, server: AtServer) -> None:
        pass  # nothing is kept per server

    def _on_slot(
        self, server: AtServer, handler: Callable[[AtRequest, CardSlot], Awaitable[list[str] | None]]
    ) -> Callable[[AtRequest], Awaitable[list[str] | None]]:
        """The handler on the slot this line chose (AT%SLOT), with +CME ERROR: 10 while it is empty, as the core's
        SIM commands."""

        async def call(request: AtRequest) -> list[str] | None:
            slot = self.core.slots[self.core._slot_of.get(server, 1)]

            async def run() -> list[str] | None:
                async with self._lock:
                    return await handler(request, slot)

            if request.kind is CommandKind.TEST and request.name in ("+CPBS", "+CNUM"):
                return await handler(request, slot)  # no card needed for the forms
            return await self.core._with_card(slot, run)

        return call

    # --- the card -------------------------------------------------------------------------------------------------

    async def _read_file(self, slot: CardSlot, path: tuple[bytes, ...]) -> list[bytes] | None:
        """The records of the EF at `path`, read in one file session of the card driver (no other line's SELECT
        lands between); None when the card has no such file."""
        try:
            async with slot.driver.file_session(path, "phonebook") as ef:
                records = []
                for number in range(1, ef.record_count + 1):
                    data, sw = await ef.read_record(number)
                    if sw != 0x9000 and sw >> 8 != 0x91:
                        raise CmeError(_card_cme(sw))
                    if len(data) != ef.record_length:
                        raise CmeError(CME_SIM_FAILURE)
                    records.append(data)
                return records
        except FileNotSelected as exc:
            if exc.sw in (0x6982, 0x6983):
                raise CmeError(_card_cme(exc.sw)) from None
            return None

    async def _update(self, slot: CardSlot, path: tuple[bytes, ...], number: int, data: bytes) -> None:
        try:
            async with slot.driver.file_session(path, "phonebook") as ef:
                sw = await ef.update_record(number, data)
        except FileNotSelected as exc:
            raise CmeError(_card_cme(exc.sw)) from None
        if sw == 0x6982 and path[-1] == EF_FDN:  # EF_FDN's update needs PIN2 (TS 31.102 4.2.24)
            raise CmeError(CME_NOT_ALLOWED)
        if sw != 0x9000 and sw >> 8 != 0x91:
            raise CmeError(_card_cme(sw))

    async def _usim_phonebook(self, slot: CardSlot) -> Storage | None:
        """The "SM" storage of the USIM phonebook, from EF_PBR's first record (TS 31.102 4.4.2.1), or None."""
        records = await self._read_file(slot, (MF, ADF_USIM, DF_PHONEBOOK, EF_PBR))
        if not records:
            return None
        files = decode_pbr(records[0])
        if PBR_ADN not in files:
            return None
        adn = (MF, ADF_USIM, DF_PHONEBOOK, files[PBR_ADN].to_bytes(2, "big"))
        ext = (MF, ADF_USIM, DF_PHONEBOOK, files[PBR_EXT1].to_bytes(2, "big")) if PBR_EXT1 in files else None
        return Storage("SM", adn, ext)

    async def _book(self, slot: CardSlot, name: str | None = None) -> Book:
        storage = STORAGES[name or self.storage]
        if storage.name == "SM":
            storage = await self._usim_phonebook(slot) or TELECOM_SM
        records = await self._read_file(slot, storage.path)
        if records is None:
            raise CmeError(CME_NOT_SUPPORTED)  # the card lacks this storage's file
        ext = await self._read_file(slot, storage.ext) if storage.ext is not None else None
        return Book(storage, storage.path, storage.ext if ext else None, records, ext or [])

    # --- texts in the TE character set --------------------------------------------------------------------------

    def _te_text(self, text: str) -> str:
        """`text` in the +CSCS set; a character the set cannot carry is shown as '?' (27.007 leaves it open)."""
        return te_shown(text, self.core.charset)

    def _from_te(self, value: str) -> str:
        try:
            return te_decode(value, self.core.charset)
        except ValueError:
            raise CmeError(CME_INVALID_TEXT) from None

    def _line(self, prefix: str, index: int, entry: Entry) -> str:
        kind = TYPE_INTERNATIONAL if entry.number.startswith("+") else TYPE_UNKNOWN
        return f'{prefix}: {index},"{entry.number}",{kind},"{self._te_text(entry.name)}"'

    # --- the commands ---------------------------------------------------------------------------------------------

    async def cpbs(self, request: AtRequest, slot: CardSlot) -> list[str] | None:
        """+CPBS=<storage>[,<password>] (27.007 8.11); ? the storage with <used>,<total>; =? the storages."""
        if request.kind is CommandKind.TEST:
            return ["+CPBS: (" + ",".join(f'"{name}"' for name in STORAGES) + ")"]
        if request.kind is CommandKind.READ:
            book = await self._book(slot)
            return [f'+CPBS: "{self.storage}",{book.used},{len(book.records)}']
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        if len(request.args) > 2:
            raise CmeError(CME_BAD_PARAMETERS)
        name = (_str_arg(request.args, 0) or "").upper()
        if name not in STORAGES:
            raise CmeError(CME_NOT_SUPPORTED)
        password = _str_arg(request.args, 1)
        if password is not None:
            if not STORAGES[name].pin2:
                raise CmeError(CME_NOT_ALLOWED)  # only FD has a password (PIN2) in 27.007 8.11
            if not password.isdigit() or not 4 <= len(password) <= 8:
                raise CmeError(CME_INCORRECT_PASSWORD)
            _, sw = await slot.driver.transmit(b"\x00\x20\x00\x81\x08" + pin_block(password), "VERIFY PIN2")
            if sw == 0x6983:
                raise CmeError(CME_SIM_PUK2_REQUIRED)
            if sw != 0x9000:
                raise CmeError(CME_INCORRECT_PASSWORD)
        await self._book(slot, name)  # the card must have the storage's file
        self.storage = name
        return []

    def _range(self, request: AtRequest, book: Book) -> tuple[int, int]:
        if len(request.args) > 2:
            raise CmeError(CME_BAD_PARAMETERS)
        first = _int_arg(request.args, 0)
        if first is None:
            raise CmeError(CME_BAD_PARAMETERS)
        last = _int_arg(request.args, 1)
        last = first if last is None else last
        total = len(book.records)
        if not (1 <= first <= total and 1 <= last <= total and first <= last):
            raise CmeError(CME_INVALID_INDEX)
        return first, last

    async def cpbr(self, request: AtRequest, slot: CardSlot) -> list[str] | None:
        """+CPBR=<index1>[,<index2>] (27.007 8.12): the entries in that range (free ones are left out)."""
        book = await self._book(slot)
        if request.kind is CommandKind.TEST:
            return [f"+CPBR: (1-{len(book.records)}),{book.max_digits},{book.text_length}"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        first, last = self._range(request, book)
        lines = []
        for index in range(first, last + 1):
            entry = book.entry(index)
            if entry is not None:
                lines.append(self._line("+CPBR", index, entry))
        return lines

    async def cpbf(self, request: AtRequest, slot: CardSlot) -> list[str] | None:
        """+CPBF=<findtext> (27.007 8.13): the entries whose text starts with <findtext> (case ignored); +CME ERROR:
        22 when none does."""
        book = await self._book(slot)
        if request.kind is CommandKind.TEST:
            return [f"+CPBF: {book.max_digits},{book.text_length}"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        if len(request.args) != 1:
            raise CmeError(CME_BAD_PARAMETERS)
        wanted = self._from_te(_str_arg(request.args, 0) or "").casefold()
        lines = []
        for index in range(1, len(book.records) + 1):
            entry = book.entry(index)
            if entry is not None and entry.name.casefold().startswith(wanted):
                lines.append(self._line("+CPBF", index, entry))
        if not lines:
            raise CmeError(CME_NOT_FOUND)
        return lines

    async def cpbw(self, request: AtRequest, slot: CardSlot) -> list[str] | None:
        """+CPBW=[<index>][,<number>[,<type>[,<text>]]] (27.007 8.14): write at <index> or the first free record;
        <index> alone deletes. A number over 20 digits takes EF_EXT1 records; those of the entry it replaces are
        freed."""
        book = await self._book(slot)
        if request.kind is CommandKind.TEST:
            return [
                f"+CPBW: (1-{len(book.records)}),{book.max_digits},({TYPE_UNKNOWN},{TYPE_INTERNATIONAL}),"
                f"{book.text_length}"
            ]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        args = request.args
        if len(args) > 4:
            raise CmeError(CME_BAD_PARAMETERS)
        if not book.storage.writable:
            raise CmeError(CME_NOT_ALLOWED)
        index = _int_arg(args, 0)
        number = _str_arg(args, 1)
        kind = _int_arg(args, 2)
        text = _str_arg(args, 3)
        total = len(book.records)
        if index is not None and not 1 <= index <= total:
            raise CmeError(CME_INVALID_INDEX)
        if number is None and text is None and kind is None:
            if index is None:
                raise CmeError(CME_BAD_PARAMETERS)
            await self._delete(slot, book, index)
            return []
        entry = self._new_entry(number or "", kind, self._from_te(text or ""), book)
        if index is None:
            index = next((i for i, record in enumerate(book.records, 1) if is_free(record)), 0)
            if not index:
                raise CmeError(CME_MEMORY_FULL)
        await self._write(slot, book, index, entry)
        return []

    def _new_entry(self, number: str, kind: int | None, name: str, book: Book) -> Entry:
        if kind is not None and not 128 <= kind <= 255:
            raise CmeError(CME_BAD_PARAMETERS)
        if kind == TYPE_INTERNATIONAL and number and not number.startswith("+"):
            number = "+" + number  # <type> 145 says international; the record keeps it in TON/NPI
        entry = Entry(name, number)
        try:
            digits = check_number(number)
            if len(digits) > book.max_digits:
                raise PhonebookError("number too long", f"{len(digits)} digits, at most {book.max_digits}")
            encode_entry(entry, book.record_length, list(range(1, len(ext_chunks(digits)) + 1)))
        except PhonebookError as exc:
            raise CmeError(_PHONEBOOK_ERRORS.get(exc.reason, CME_BAD_PARAMETERS)) from None
        return entry

    async def _write(self, slot: CardSlot, book: Book, index: int, entry: Entry) -> None:
        old_chain = ext_chain(book.records[index - 1], book.ext) if book.ext_path is not None else []
        needed = len(ext_chunks(check_number(entry.number)))
        available = sorted(set(free_ext_records(book.ext)) | set(old_chain))
        if needed > len(available):
            raise CmeError(CME_MEMORY_FULL)  # no EF_EXT1 record left for the rest of the number
        numbers = available[:needed]
        record, exts = encode_entry(entry, book.record_length, numbers)
        updates: list[tuple[bool, int, bytes]] = [
            (True, number, data) for number, data in zip(numbers, exts, strict=True)
        ]
        updates.append((False, index, record))
        updates += [(True, number, EMPTY_EXT) for number in old_chain if number not in numbers]
        await self._apply(slot, book, updates)

    async def _delete(self, slot: CardSlot, book: Book, index: int) -> None:
        chain = ext_chain(book.records[index - 1], book.ext) if book.ext_path is not None else []
        updates = [(False, index, empty_record(book.record_length))]
        updates += [(True, number, EMPTY_EXT) for number in chain]
        await self._apply(slot, book, updates)

    async def _apply(self, slot: CardSlot, book: Book, updates: list[tuple[bool, int, bytes]]) -> None:
        """Writes `updates` ((to EF_EXT1?, record number, record)) to the book's EFs. An edit of the USIM
        phonebook's EF_ADN goes to DF_TELECOM's EF_ADN and EF_EXT1 too, at the same record numbers, where the card
        has them with the same record length: the 2G phonebook stays the USIM's "SM" (docs/protocols.md,
        "Phonebook")."""
        copies = [(book.path, book.ext_path)]
        if book.storage.name == "SM" and book.path != TELECOM_SM.path:
            copies.append((TELECOM_SM.path, TELECOM_SM.ext if book.ext_path is not None else None))
        for copy, (path, ext_path) in enumerate(copies):
            for to_ext, number, data in updates:
                target = ext_path if to_ext else path
                if target is None:
                    continue
                if copy == 0:
                    await self._update(slot, target, number, data)
                else:
                    await self._mirror(slot, target, number, data)

    async def _mirror(self, slot: CardSlot, path: tuple[bytes, ...], number: int, data: bytes) -> None:
        """One record of DF_TELECOM's copy: skipped where the card lacks the file or its record differs in length
        (it is then not a copy of the USIM's book)."""
        try:
            async with slot.driver.file_session(path, "phonebook") as ef:
                if ef.record_length != len(data) or number > ef.record_count:
                    return
                sw = await ef.update_record(number, data)
        except FileNotSelected:
            return
        if sw != 0x9000 and sw >> 8 != 0x91:
            raise CmeError(_card_cme(sw))

    async def cnum(self, request: AtRequest, slot: CardSlot) -> list[str] | None:
        """+CNUM (27.007 7.1): the subscriber's own numbers from EF_MSISDN, `+CNUM: <alpha>,<number>,<type>`."""
        if request.kind is CommandKind.TEST:
            return []
        if request.kind is not CommandKind.EXEC:
            raise AtCommandError()
        book = await self._book(slot, "ON")
        lines = []
        for index in range(1, len(book.records) + 1):
            entry = book.entry(index)
            if entry is not None and entry.number:
                kind = TYPE_INTERNATIONAL if entry.number.startswith("+") else TYPE_UNKNOWN
                lines.append(f'+CNUM: "{self._te_text(entry.name)}","{entry.number}",{kind}')
        return lines


__all__ = ["STORAGES", "PhonebookCommands", "Storage", "TON_INTERNATIONAL"]
