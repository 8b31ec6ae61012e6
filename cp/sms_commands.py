"""The CP's 3GPP TS 27.005 SMS command set: storages, PDU and text mode, new-message indications, the network side.

Commands (27.005 section 3): +CSMS, +CPMS, +CMGF, +CSCA, +CSMP, +CSDH, +CNMI, +CNMA, +CMGL, +CMGR, +CMGS, +CMGW,
+CMSS, +CMGD, +CMMS; URCs +CMT, +CMTI, +CDS, +CDSI; errors +CMS ERROR of section 3.2.5, each one also an sms.error
trace event. +CMGS, +CMGW and +CNMA take their PDU or text after the `> ` prompt (section 3.5.1) through the AT
server's text entry; ESC cancels and nothing is sent or written.

Storages (docs/protocols.md, "SMS through 27.005"): "SM" is the card's EF_SMS (TS 31.102 section 4.2.25: one
record per message, a status byte then 175 bytes holding the service centre address and the TPDU, padded with FF),
read and written with READ RECORD / UPDATE RECORD through slot 1's card driver at each command, so that what
another party writes to the card (an OTA RFM script, +CRSM) is what the TE sees; "ME" is the modem's own memory;
"MT" is SM then ME (indexes 1..n of SM, then ME's); "SR" holds the status reports that +CNMI <ds>=2 stores.

The network side is the network model's SMSC (net/smsc.py): MO messages (+CMGS, +CMSS) are submitted to it and
answered with its TP-MR; MT messages it delivers are stored or routed per +CNMI, and a (U)SIM data download (TP-PID
7F, message class 2) goes to the card as the ENVELOPE (SMS-PP DOWNLOAD) of cp/commands.py, its PoR back to the SMSC.

The TPDU rules (lengths, TP-UDL against the data, the address and validity period fields) follow 3GPP TS 23.040
section 9.2; the data coding scheme TS 23.038 section 4.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, Any, Protocol

import trio

from bipsim.cp.card_driver import CardFile, FileNotSelected
from bipsim.cp.local_info import LocalInfo, location_information
from bipsim.cp.toolkit_sms import (
    MoControlResult,
    mo_sms_control_answer,
    mo_sms_control_envelope,
    mo_sms_control_supported,
)
from bipsim.link.at_server import AtCommandError, AtServer, CmeError, CmsError
from bipsim.link.at_syntax import AtArg, AtRequest, CommandKind
from bipsim.net.sms_pdu import (
    Address,
    Alphabet,
    InformationElement,
    RelativeValidity,
    SmsDeliver,
    SmsPduError,
    SmsStatusReport,
    SmsSubmit,
    Tpdu,
    dcs_alphabet,
    dcs_class,
    dcs_compressed,
    decode_sca,
    decode_tpdu,
    encode_sca,
    user_data_from_octets,
    user_data_octets,
)
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.uicc.fs import USIM_AID
from bipsim.uicc.gsm_text import gsm7_encode, te_decode, te_encode, te_shown
from bipsim.uicc.phonebook import SMS_RECORD_LENGTH, SMS_STATUS
from bipsim.uicc.transport import CardRemoved

if TYPE_CHECKING:
    from bipsim.cp.card_slot import CardSlot
    from bipsim.cp.commands import ModemCommands
    from bipsim.trace.recorder import Tracer

# +CMS ERROR codes (27.005 section 3.2.5)
CMS_ME_FAILURE = 300
CMS_NOT_ALLOWED = 302
CMS_NOT_SUPPORTED = 303
CMS_INVALID_PDU_PARAMETER = 304
CMS_INVALID_TEXT_PARAMETER = 305
CMS_SIM_NOT_INSERTED = 310
CMS_SIM_PIN_REQUIRED = 311
CMS_SIM_PUK_REQUIRED = 312
CMS_SIM_FAILURE = 313
CMS_SIM_BUSY = 314
CMS_MEMORY_FAILURE = 320
CMS_INVALID_INDEX = 321
CMS_MEMORY_FULL = 322
CMS_SMSC_UNKNOWN = 330
CMS_NO_NETWORK = 331
CMS_NO_CNMA_EXPECTED = 340
CMS_UNKNOWN = 500

EF_SMS = 0x6F3C
SMS_PATH = (USIM_AID, EF_SMS.to_bytes(2, "big"))  # ADF USIM by its AID, then EF_SMS (TS 31.102 4.2.25)
EF_SMS_RECORD = SMS_RECORD_LENGTH  # TS 31.102 4.2.25: status byte + 175 bytes
ME_CAPACITY = 20
EF_SMSP = 0x6F42
SMSP_PATH = (USIM_AID, EF_SMSP.to_bytes(2, "big"))  # TS 31.102 4.2.27
SMSP_FIXED = 28  # EF_SMSP's octets after the alpha identifier: indicators, TP-DA, TS-SCA, PID, DCS, VP
SR_CAPACITY = 10
MAX_TPDU = (
    164  # the longest TPDU (an SMS-SUBMIT with a 20-digit address, relative VP... and 140 octets of data)
)
MAX_SCA = 12  # the SC address field: length octet, type of address, up to 20 digits
TEXT_LIMIT = 2048  # characters a text entry keeps: a UCS2 text in hex of a 140-octet message is 280
# +CSMP defaults (27.005 3.3.2): SMS-SUBMIT with a relative validity period of 24 hours, PID 0, GSM 7-bit
CSMP_DEFAULT = (17, 167, 0, 0)
# the TP-SCTS of an SMS-DELIVER written by +CMGW in text mode when +CSMP gave no <scts> (27.005 3.3.2): a fixed
# stamp, not the clock, so that the same commands store the same bytes
CMGW_SCTS_DEFAULT = datetime(2000, 1, 1, tzinfo=UTC)
OWN_NUMBER = "+15550000001"  # the ME's MSISDN when the network model names none
CMMS_HOLD = 5.0  # +CMMS=1: seconds between sends that keep the link (27.005 3.5.6 says 1-5 s)
MEMORIES1 = ("SM", "ME", "MT", "SR")
MEMORIES23 = ("SM", "ME", "MT")


class Stat(IntEnum):
    """<stat> of 27.005 section 3.1 (PDU mode numbers; text mode says STAT_TEXT)."""

    REC_UNREAD = 0
    REC_READ = 1
    STO_UNSENT = 2
    STO_SENT = 3


STAT_TEXT = {
    Stat.REC_UNREAD: "REC UNREAD",
    Stat.REC_READ: "REC READ",
    Stat.STO_UNSENT: "STO UNSENT",
    Stat.STO_SENT: "STO SENT",
}
ALL_STAT = 4  # +CMGL=4 / "ALL"
# +CMGD <delflag> 1..4 (27.005 3.5.4): the <stat>s it deletes
DELETED_BY_FLAG: dict[int, frozenset[Stat]] = {
    1: frozenset({Stat.REC_READ}),
    2: frozenset({Stat.REC_READ, Stat.STO_SENT}),
    3: frozenset({Stat.REC_READ, Stat.STO_SENT, Stat.STO_UNSENT}),
    4: frozenset(Stat),
}
# EF_SMS status byte (TS 31.102 4.2.25, as TS 51.011 10.5.3): b1 used, b3-b2 the state; 0x00 a free record
EF_STATUS = {
    Stat.REC_READ: SMS_STATUS["read"],
    Stat.REC_UNREAD: SMS_STATUS["unread"],
    Stat.STO_SENT: SMS_STATUS["sent"],
    Stat.STO_UNSENT: SMS_STATUS["unsent"],
}
_STAT_OF_STATUS = {value: stat for stat, value in EF_STATUS.items()}


class BadPdu(ValueError):
    """A TPDU whose fields do not add up (TS 23.040 9.2): +CMS ERROR: 304 from a TE, a record skipped on a card."""


# --- TPDU extents (TS 23.040 9.2.2, TS 23.038 4) -------------------------------------------------------------------


def _user_data_octets(dcs: int, udl: int) -> int:
    if dcs_alphabet(dcs) is Alphabet.GSM7 and not dcs_compressed(dcs):
        if udl > 160:
            raise BadPdu(f"TP-UDL {udl} septets is over 160")
        return (udl * 7 + 7) // 8
    if udl > 140:
        raise BadPdu(f"TP-UDL {udl} octets is over 140")
    return udl


def _address_end(tpdu: bytes, at: int) -> int:
    """The index past the address field at `at` (TS 23.040 9.1.2.5): digit count, type of address, semi-octets."""
    if at >= len(tpdu):
        raise BadPdu("TPDU ends before its address")
    digits = tpdu[at]
    if digits > 20:
        raise BadPdu(f"address of {digits} digits (at most 20)")
    return at + 2 + (digits + 1) // 2


def tpdu_extent(tpdu: bytes, *, mobile_originated: bool) -> int:
    """The length of the TPDU at the head of `tpdu`, read from its fields: an EF_SMS record stores no length and
    pads with FF (TS 31.102 4.2.25). SMS-SUBMIT travels from the ME, SMS-DELIVER and SMS-STATUS-REPORT to it
    (TS 23.040 9.2.3.1); BadPdu for anything else or for fields that do not fit."""
    if not tpdu:
        raise BadPdu("empty TPDU")
    first = tpdu[0]
    mti = first & 0x03
    if mobile_originated and mti == 0x01:  # SMS-SUBMIT: MR, DA, PID, DCS, VP, UDL
        end = _address_end(tpdu, 2)
        vp = {0: 0, 2: 1, 1: 7, 3: 7}[(first >> 3) & 0x03]  # TP-VPF: none, relative, enhanced, absolute
        head = end + 2 + vp + 1
        if len(tpdu) < head:
            raise BadPdu("SMS-SUBMIT ends inside its header")
        return head + _user_data_octets(tpdu[end + 1], tpdu[head - 1])
    if not mobile_originated and mti == 0x00:  # SMS-DELIVER: OA, PID, DCS, SCTS, UDL
        end = _address_end(tpdu, 1)
        head = end + 2 + 7 + 1
        if len(tpdu) < head:
            raise BadPdu("SMS-DELIVER ends inside its header")
        return head + _user_data_octets(tpdu[end + 1], tpdu[head - 1])
    if not mobile_originated and mti == 0x02:  # SMS-STATUS-REPORT: MR, RA, SCTS, DT, ST [, PI, PID, DCS, UDL]
        end = _address_end(tpdu, 2) + 7 + 7 + 1
        if len(tpdu) < end:
            raise BadPdu("SMS-STATUS-REPORT ends inside its header")
        if len(tpdu) == end or tpdu[end] == 0xFF:  # no TP-PI (a record's padding reads FF)
            return end
        pi, at = tpdu[end], end + 1
        dcs = tpdu[at + (1 if pi & 0x01 else 0)] if pi & 0x02 and at + 1 < len(tpdu) else 0
        at += (1 if pi & 0x01 else 0) + (1 if pi & 0x02 else 0)
        if pi & 0x04:
            if at >= len(tpdu):
                raise BadPdu("SMS-STATUS-REPORT ends before its TP-UDL")
            at += 1 + _user_data_octets(dcs, tpdu[at])
        return at
    raise BadPdu(f"TP-MTI {mti} is not a TPDU {'an ME sends' if mobile_originated else 'an ME receives'}")


# --- stored messages (EF_SMS records) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredSms:
    """One stored message: its <stat>, SC address field (sca_field form) and TPDU. `raw` is set for a record the
    card marks used whose bytes hold no message the modem can decode: they are the record's bytes after the status
    byte, kept as they are (listed in hex, written back unchanged when only the status changes)."""

    stat: Stat
    sca: bytes
    tpdu: bytes
    raw: bytes | None = None

    @property
    def mobile_originated(self) -> bool:
        return self.stat in (Stat.STO_UNSENT, Stat.STO_SENT)

    def record(self) -> bytes:
        """The EF_SMS record (TS 31.102 4.2.25): status, SC address, TPDU, FF to 176 bytes."""
        content = self.raw if self.raw is not None else self.sca + self.tpdu
        body = bytes((EF_STATUS[self.stat],)) + content
        if len(body) > EF_SMS_RECORD:
            raise BadPdu(f"message of {len(body)} bytes does not fit a {EF_SMS_RECORD}-byte EF_SMS record")
        return body.ljust(EF_SMS_RECORD, b"\xff")

    @classmethod
    def from_record(cls, record: bytes) -> StoredSms | None:
        """A record back to a message: None for a free record (status b1 = 0, TS 31.102 4.2.25). A used record
        whose bytes hold no message is still a message (the card's content is the card's: it is never taken for
        a free record and overwritten): its SC address field if the length octet allows one, the rest up to the
        FF padding as its TPDU, and the bytes in `raw`."""
        if not record or not record[0] & 0x01:
            return None
        stat = _STAT_OF_STATUS[record[0] & 0x07]  # b1 set: 1, 3, 5 or 7, each a <stat>
        body = record[1:]
        if body and body[0] <= MAX_SCA - 1:
            sca, rest = body[: 1 + body[0]], body[1 + body[0] :]
            try:
                length = tpdu_extent(rest, mobile_originated=stat >= Stat.STO_UNSENT)
            except BadPdu:
                length = len(rest) + 1
            if length <= len(rest):
                return cls(stat, sca, rest[:length])
        else:
            sca, rest = b"\x00", body  # no SC address field the modem can read: all of it shows as the TPDU
        return cls(stat, sca, rest.rstrip(b"\xff"), raw=body)


FREE_RECORD = b"\x00" + b"\xff" * (EF_SMS_RECORD - 1)


class SmsStorage(Protocol):
    """A message storage of +CPMS: indexes from 1."""

    name: str

    async def capacity(self) -> int: ...

    async def read_all(self) -> dict[int, StoredSms]: ...

    async def read(self, index: int) -> StoredSms | None: ...

    async def write(self, index: int, sms: StoredSms | None) -> None: ...


class MemoryStorage:
    """Messages in the modem's memory ("ME", and "SR" for status reports)."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.messages: dict[int, StoredSms] = {}

    async def capacity(self) -> int:
        return self.size

    async def read_all(self) -> dict[int, StoredSms]:
        return dict(sorted(self.messages.items()))

    async def read(self, index: int) -> StoredSms | None:
        self._check(index)
        return self.messages.get(index)

    async def write(self, index: int, sms: StoredSms | None) -> None:
        self._check(index)
        if sms is None:
            self.messages.pop(index, None)
        else:
            self.messages[index] = sms

    def _check(self, index: int) -> None:
        if not 1 <= index <= self.size:
            raise CmsError(CMS_INVALID_INDEX, f"index {index} past {self.name} (1-{self.size})")


class CardStorage:
    """ "SM": the card's EF_SMS in ADF USIM, through the slot's card driver. Each access is one file session of the
    driver (SELECT ADF USIM, SELECT EF_SMS, its records), which holds the basic channel's current file against
    +CRSM and the phonebook on other lines, and reads what is on the card now."""

    name = "SM"

    def __init__(self, slot: Callable[[], CardSlot]) -> None:
        self._slot = slot

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[CardFile]:
        slot = self._slot()
        if slot.absent:
            raise CmsError(CMS_SIM_NOT_INSERTED, "no card in slot 1")
        try:
            async with slot.driver.file_session(SMS_PATH, "EF_SMS") as ef:
                if not ef.record_count:
                    raise CmsError(CMS_SIM_FAILURE, "EF_SMS answered no record count")
                yield ef
        except FileNotSelected as exc:
            raise CmsError(
                _card_cms(exc.sw), f"SELECT {exc.part.hex().upper()}: card answered {exc.sw:04X}"
            ) from None
        except CardRemoved as exc:
            slot.gone(exc)
            raise CmsError(CMS_SIM_NOT_INSERTED, "the card went away") from exc

    @staticmethod
    async def _read_record(ef: CardFile, index: int) -> bytes:
        data, sw = await ef.read_record(index)
        _check_sw(sw, f"READ RECORD EF_SMS {index}")
        return data

    async def capacity(self) -> int:
        async with self._session() as ef:
            return ef.record_count

    async def read_all(self) -> dict[int, StoredSms]:
        found: dict[int, StoredSms] = {}
        async with self._session() as ef:
            for index in range(1, ef.record_count + 1):
                sms = StoredSms.from_record(await self._read_record(ef, index))
                if sms is not None:
                    found[index] = sms
        return found

    async def read(self, index: int) -> StoredSms | None:
        async with self._session() as ef:
            if not 1 <= index <= ef.record_count:
                raise CmsError(CMS_INVALID_INDEX, f"index {index} past SM (1-{ef.record_count})")
            return StoredSms.from_record(await self._read_record(ef, index))

    async def write(self, index: int, sms: StoredSms | None) -> None:
        record = FREE_RECORD if sms is None else sms.record()
        async with self._session() as ef:
            if not 1 <= index <= ef.record_count:
                raise CmsError(CMS_INVALID_INDEX, f"index {index} past SM (1-{ef.record_count})")
            _check_sw(await ef.update_record(index, record), f"UPDATE RECORD EF_SMS {index}")


def _card_cms(sw: int) -> int:
    """The +CMS ERROR of a card's refusal (27.005 3.2.5): 6982 security status not satisfied is 311 (SIM PIN
    required: TS 31.102 guards the subscriber's files with PIN1), 6983 a blocked PIN 312 (SIM PUK required), 6A83
    no such record 321, anything else 313 (SIM failure)."""
    return {0x6982: CMS_SIM_PIN_REQUIRED, 0x6983: CMS_SIM_PUK_REQUIRED, 0x6A83: CMS_INVALID_INDEX}.get(
        sw, CMS_SIM_FAILURE
    )


def _check_sw(sw: int, summary: str) -> None:
    if sw != 0x9000 and sw >> 8 != 0x91:
        raise CmsError(_card_cms(sw), f"{summary}: card answered {sw:04X}")


class CombinedStorage:
    """ "MT": SM's indexes first, then ME's (27.005 3.1: "all storages associated with the ME")."""

    name = "MT"

    def __init__(self, first: SmsStorage, second: SmsStorage) -> None:
        self.first, self.second = first, second

    async def capacity(self) -> int:
        return await self.first.capacity() + await self.second.capacity()

    async def read_all(self) -> dict[int, StoredSms]:
        size = await self.first.capacity()
        found = await self.first.read_all()
        found.update({size + index: sms for index, sms in (await self.second.read_all()).items()})
        return found

    async def _where(self, index: int) -> tuple[SmsStorage, int]:
        size = await self.first.capacity()
        if 1 <= index <= size:
            return self.first, index
        if index > size:
            return self.second, index - size
        raise CmsError(CMS_INVALID_INDEX, f"index {index} past MT")

    async def read(self, index: int) -> StoredSms | None:
        storage, at = await self._where(index)
        return await storage.read(at)

    async def write(self, index: int, sms: StoredSms | None) -> None:
        storage, at = await self._where(index)
        await storage.write(at, sms)


async def free_index(storage: SmsStorage) -> int:
    """The lowest free index, else +CMS ERROR: 322 (memory full)."""
    used = await storage.read_all()
    for index in range(1, await storage.capacity() + 1):
        if index not in used:
            return index
    raise CmsError(CMS_MEMORY_FULL, f"{storage.name} is full")


# --- the command set ---------------------------------------------------------------------------------------------


@dataclass
class LineSettings:
    """What 27.005 keeps per line (per CMUX DLC): +CMGF and +CSDH."""

    text_mode: bool = False
    show_header: bool = False


@dataclass(frozen=True)
class Cnmi:
    """+CNMI <mode>,<mt>,<bm>,<ds>,<bfr> (27.005 section 3.4.1)."""

    mode: int = 0
    mt: int = 0
    bm: int = 0
    ds: int = 0
    bfr: int = 0


# how long the ME waits for +CNMA before it answers the network RP-ERROR: TS 24.011's TR2M, 12 to 20 s
CNMA_TIMEOUT = 15.0
URC_BUFFER = 32  # indications the TA keeps while +CNMI <mode> 0 (or 2 with the line reserved) holds them


def _int_arg(args: tuple[AtArg, ...], index: int, low: int, high: int, default: int | None, code: int) -> int:
    value = args[index] if index < len(args) else None
    if value is None:
        if default is None:
            raise CmsError(code, f"parameter {index + 1} missing")
        return default
    if not isinstance(value, int) or not low <= value <= high:
        raise CmsError(code, f"parameter {index + 1} ({value!r}) not in {low}-{high}")
    return value


class SmsCommands:
    """The 27.005 command set of one modem (cp/command_sets.py builds it around the 27.007 core). It takes no
    `bipsim cp` option (`settings` is the interface of every set)."""

    def __init__(
        self, core: ModemCommands, tracer: Tracer, settings: dict[str, object] | None = None
    ) -> None:
        self.core = core
        self.tracer = tracer
        self.sm = CardStorage(
            lambda: core.slots[1]
        )  # the card of slot 1 holds the subscription, and its EF_SMS
        self.me = MemoryStorage("ME", ME_CAPACITY)
        self.sr = MemoryStorage("SR", SR_CAPACITY)
        self.storages: dict[str, SmsStorage] = {
            "SM": self.sm,
            "ME": self.me,
            "MT": CombinedStorage(self.sm, self.me),
            "SR": self.sr,
        }
        self.memories = ["SM", "SM", "SM"]  # +CPMS <mem1>,<mem2>,<mem3>
        self.service = 0  # +CSMS
        self.csmp = CSMP_DEFAULT
        self.cmgw_scts = CMGW_SCTS_DEFAULT  # +CSMP's <scts> for text-mode +CMGW of received messages
        self.sca = ""  # +CSCA; empty: the network's SMSC
        self.sca_type = 145
        self.cnmi = Cnmi()
        self.cmms = 0
        self._cmms_until = 0.0
        self.lines: dict[AtServer, LineSettings] = {}
        self._urc_line: AtServer | None = None  # the line that set +CNMI gets the indications
        self._buffer: list[str] = []
        self._entering: set[AtServer] = set()
        self._acks: list[PendingAck] = []  # +CMT/+CDS routed under +CSMS 1, awaiting +CNMA, oldest first
        # one allocation at a time (a +CMGW on one DLC, an MT message, a +CMGW on another): never one free index twice
        self._store_lock = trio.Lock()
        self.mr = 0  # the TP-MR of the last MO message (the SMSC's, or ours without one)
        # the network's MT messages come here (net/smsc.py runs the delivery task)
        smsc = getattr(core.network, "smsc", None)
        if smsc is not None and hasattr(smsc, "subscribe"):
            smsc.subscribe(self.deliver)

    # --- installation ---------------------------------------------------------------------------------------------

    def install(self, server: AtServer) -> None:
        self.lines[server] = LineSettings()
        table: dict[str, Callable[[AtRequest, AtServer], Awaitable[list[str] | None]]] = {
            "+CSMS": self.csms,
            "+CPMS": self.cpms,
            "+CMGF": self.cmgf,
            "+CSCA": self.csca,
            "+CSAS": self.csas,
            "+CRES": self.cres,
            "+CSMP": self.csmp_command,
            "+CSDH": self.csdh,
            "+CNMI": self.cnmi_command,
            "+CNMA": self.cnma,
            "+CMGL": self.cmgl,
            "+CMGR": self.cmgr,
            "+CMGS": self.cmgs,
            "+CMGW": self.cmgw,
            "+CMSS": self.cmss,
            "+CMGD": self.cmgd,
            "+CMMS": self.cmms_command,
        }
        for name, handler in table.items():
            server.register(name, self._bound(server, name, handler))
        server.reset_hooks.append(lambda: self.lines.__setitem__(server, LineSettings()))

    def forget(self, server: AtServer) -> None:
        self.lines.pop(server, None)
        self._entering.discard(server)
        if self._urc_line is server:
            self._urc_line = None

    def _bound(
        self,
        server: AtServer,
        name: str,
        handler: Callable[[AtRequest, AtServer], Awaitable[list[str] | None]],
    ) -> Callable[[AtRequest], Awaitable[list[str] | None]]:
        async def call(request: AtRequest) -> list[str] | None:
            try:
                return await handler(request, server)
            except CmsError as exc:
                self._refused(name, exc.code, exc.reason or str(exc), server)
                raise
            except (
                CmeError
            ) as exc:  # the shared card code speaks 27.007: the same meaning in 27.005's numbers
                code = {
                    10: CMS_SIM_NOT_INSERTED,
                    11: CMS_SIM_PIN_REQUIRED,
                    12: CMS_SIM_PUK_REQUIRED,
                    13: CMS_SIM_FAILURE,
                    14: CMS_SIM_BUSY,
                }.get(exc.code, CMS_UNKNOWN)
                self._refused(name, code, str(exc), server)
                raise CmsError(code, str(exc)) from exc

        return call

    def _refused(self, command: str, code: int, reason: str, server: AtServer | None) -> None:
        fields: dict[str, Any] = {"command": command, "code": code, "reason": reason}
        dlci = getattr(server.stream, "dlci", None) if server is not None else None
        if isinstance(dlci, int):
            fields["dlci"] = dlci
        self.tracer.emit(
            Actor.CP,
            Actor.AP,
            Layer.SMS,
            f"{command} refused: +CMS ERROR: {code} ({reason})",
            error=True,
            kind=Kind.SMS_ERROR,
            fields=fields,
        )

    def _line(self, server: AtServer) -> LineSettings:
        return self.lines.setdefault(server, LineSettings())

    def _bad(self, server: AtServer) -> int:
        """The invalid-parameter code of the line's mode: 304 in PDU mode, 305 in text mode."""
        return CMS_INVALID_TEXT_PARAMETER if self._line(server).text_mode else CMS_INVALID_PDU_PARAMETER

    def _pdu_mode(self, server: AtServer) -> bool:
        return not self._line(server).text_mode

    # --- settings -------------------------------------------------------------------------------------------------

    async def csms(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CSMS=<service> (27.005 3.2.1): 0 phase 2, 1 phase 2+ (+CMT/+CDS then need +CNMA). MT, MO and CBM are
        all supported: +CSMS: 1,1,1."""
        if request.kind is CommandKind.TEST:
            return ["+CSMS: (0,1)"]
        if request.kind is CommandKind.READ:
            return [f"+CSMS: {self.service},1,1,1"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        self.service = _int_arg(request.args, 0, 0, 1, None, CMS_NOT_SUPPORTED)
        return ["+CSMS: 1,1,1"]

    async def cpms(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CPMS=<mem1>[,<mem2>[,<mem3>]] (27.005 3.2.2): mem1 read/list/delete, mem2 write/send, mem3 where
        received messages go."""
        if request.kind is CommandKind.TEST:
            first = ",".join(f'"{m}"' for m in MEMORIES1)
            other = ",".join(f'"{m}"' for m in MEMORIES23)
            return [f"+CPMS: ({first}),({other}),({other})"]
        if request.kind is CommandKind.READ:
            parts = []
            for name in self.memories:
                used, total = await self._usage(name)
                parts.append(f'"{name}",{used},{total}')
            return ["+CPMS: " + ",".join(parts)]
        if request.kind is not CommandKind.SET or not 1 <= len(request.args) <= 3:
            raise AtCommandError()
        chosen = list(self.memories)
        for index, value in enumerate(request.args):
            if value is None:
                continue
            name = str(value).upper()
            allowed = MEMORIES1 if index == 0 else MEMORIES23
            if name not in allowed:
                raise CmsError(CMS_NOT_SUPPORTED, f"storage {name!r} is not one of {', '.join(allowed)}")
            chosen[index] = name
        usage = [await self._usage(name) for name in chosen]  # SM without a card: 310, nothing changed
        self.memories = chosen
        return ["+CPMS: " + ",".join(f"{used},{total}" for used, total in usage)]

    async def _usage(self, name: str) -> tuple[int, int]:
        storage = self.storages[name]
        return len(await storage.read_all()), await storage.capacity()

    def _line_flag(
        self, request: AtRequest, server: AtServer, command: str, attribute: str
    ) -> list[str] | None:
        """A per-line 0/1 setting: `=?` lists (0,1), `?` reads it, `=[<n>]` sets it (0 when left out)."""
        if request.kind is CommandKind.TEST:
            return [f"{command}: (0,1)"]
        line = self._line(server)
        if request.kind is CommandKind.READ:
            return [f"{command}: {int(getattr(line, attribute))}"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        setattr(line, attribute, bool(_int_arg(request.args, 0, 0, 1, 0, CMS_NOT_SUPPORTED)))
        return None

    async def cmgf(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CMGF=[<mode>] (27.005 3.2.3): 0 PDU mode, 1 text mode; per line."""
        return self._line_flag(request, server, "+CMGF", "text_mode")

    def _default_sca(self) -> str:
        """The network's SMSC number; "" when the network names none, and then a message without an SC address
        gets +CMS ERROR: 330 (27.005 3.2.5, SMSC address unknown)."""
        smsc = getattr(self.core.network, "smsc", None)
        address = getattr(smsc, "address", None)
        if not isinstance(address, str) or not address.lstrip("+"):
            address = self.core.network.config.smsc
        number = address.lstrip("+")
        return "+" + number if number else ""

    def service_centre(self) -> str:
        """+CSCA's number, or the network's SMSC when the TE set none."""
        return self.sca or self._default_sca()

    async def csca(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CSCA=<sca>[,<tosca>] (27.005 3.3.1): the service centre address of MO messages whose PDU has none;
        <sca> in the +CSCS character set."""
        if request.kind is CommandKind.TEST:
            return None
        charset = self.core.charset
        if request.kind is CommandKind.READ:
            on_card = await self._smsp_sca() if not self.core.slots[1].absent else None
            number = on_card or self.service_centre()
            toa = 145 if number.startswith("+") else self.sca_type
            return [f'+CSCA: "{te_encode(number, charset)}",{toa}']
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        try:
            number = te_decode(str(request.args[0] if request.args else ""), charset)
            toa = _int_arg(
                request.args, 1, 128, 255, 145 if number.startswith("+") else 129, self._bad(server)
            )
            encode_sca(number)
        except (ValueError, SmsPduError) as exc:
            raise CmsError(self._bad(server), f"service centre address: {exc}") from exc
        if toa & 0x70 == 0x10 and not number.startswith("+"):
            number = "+" + number
        if not self.core.slots[1].absent:  # kept on the card too, in EF_SMSP record 1 (TS 31.102 4.2.27)
            await self._smsp_sca(number)
        self.sca, self.sca_type = number, toa
        return None

    async def _smsp_sca(self, new: str | None = None) -> str | None:
        """EF_SMSP record 1's service centre address, None when it marks none (or holds no valid one); with
        `new` (not empty), writes that there first, the record's other fields kept."""
        async with self._smsp() as ef:
            data, sw = await ef.read_record(1)
            _check_sw(sw, "EF_SMSP READ RECORD")
            head, fixed = data[:-SMSP_FIXED], bytearray(data[-SMSP_FIXED:])
            if new:
                fixed[13:25] = encode_sca(new).ljust(12, b"\xff")
                fixed[0] &= ~0x02 & 0xFF  # bit 2 zero: the TS-Service Centre Address is there
                _check_sw(await ef.update_record(1, head + bytes(fixed)), "EF_SMSP UPDATE RECORD")
        if fixed[0] & 0x02:
            return None
        try:
            address, _ = decode_sca(bytes(fixed[13:25]))
        except SmsPduError:
            return None
        return str(address) if address is not None else None

    @asynccontextmanager
    async def _smsp(self) -> AsyncIterator[CardFile]:
        """EF_SMSP (TS 31.102 4.2.27) in one file session of slot 1's driver."""
        slot = self.core.slots[1]
        if slot.absent:
            raise CmsError(CMS_SIM_NOT_INSERTED, "no card in slot 1")
        try:
            async with slot.driver.file_session(SMSP_PATH, "EF_SMSP") as ef:
                if not ef.record_count or ef.record_length < SMSP_FIXED:
                    raise CmsError(CMS_SIM_FAILURE, "EF_SMSP is not a record file of 28 octets or more")
                yield ef
        except FileNotSelected as exc:
            raise CmsError(
                _card_cms(exc.sw), f"SELECT {exc.part.hex().upper()}: card answered {exc.sw:04X}"
            ) from None
        except CardRemoved as exc:
            slot.gone(exc)
            raise CmsError(CMS_SIM_NOT_INSERTED, "the card went away") from exc

    async def csas(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CSAS[=<profile>] (27.005 3.3.4): saves +CSCA's address and +CSMP's <pid>, <dcs>, <vp> to EF_SMSP
        record <profile>+1 (TS 31.102 4.2.27; <fo> has no place there)."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind not in (CommandKind.SET, CommandKind.EXEC):
            raise AtCommandError()
        async with self._smsp() as ef:
            profile = _int_arg(request.args, 0, 0, ef.record_count - 1, 0, CMS_NOT_SUPPORTED)
            _, vp, pid, dcs = self.csmp
            sca = encode_sca(self.sca) if self.sca else b""
            absent = 0xE0 | 0x01 | (0 if sca else 0x02)  # TP-DA not kept; PID, DCS, VP kept (bits 3-5 zero)
            record = (
                b"\xff" * (ef.record_length - SMSP_FIXED)
                + bytes((absent,))
                + b"\xff" * 12
                + sca.ljust(12, b"\xff")
                + bytes((pid, dcs, vp))
            )
            _check_sw(await ef.update_record(profile + 1, record), "EF_SMSP UPDATE RECORD")
        return None

    async def cres(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CRES[=<profile>] (27.005 3.3.5): restores +CSCA and +CSMP's <pid>, <dcs>, <vp> from EF_SMSP record
        <profile>+1; what the record marks absent keeps its value."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind not in (CommandKind.SET, CommandKind.EXEC):
            raise AtCommandError()
        async with self._smsp() as ef:
            profile = _int_arg(request.args, 0, 0, ef.record_count - 1, 0, CMS_NOT_SUPPORTED)
            data, sw = await ef.read_record(profile + 1)
            _check_sw(sw, "EF_SMSP READ RECORD")
        fixed = data[-SMSP_FIXED:]
        absent = fixed[0]
        if not absent & 0x02:
            try:
                address, _ = decode_sca(fixed[13:25])
            except SmsPduError as exc:
                raise CmsError(CMS_SIM_FAILURE, f"EF_SMSP's service centre address: {exc}") from exc
            if address is not None:
                self.sca, self.sca_type = str(address), address.type_of_address
        fo, vp, pid, dcs = self.csmp
        self.csmp = (
            fo,
            vp if absent & 0x10 else fixed[27],
            pid if absent & 0x04 else fixed[25],
            dcs if absent & 0x08 else fixed[26],
        )
        return None

    async def csmp_command(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CSMP=[<fo>[,<vp>[,<pid>[,<dcs>]]]] (27.005 3.3.2): how text mode builds an SMS-SUBMIT."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is CommandKind.READ:
            return ["+CSMP: {},{},{},{}".format(*self.csmp)]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        code = CMS_INVALID_TEXT_PARAMETER
        fo = _int_arg(request.args, 0, 0, 255, self.csmp[0], code)
        if fo & 0x03 != 0x01:
            raise CmsError(code, f"<fo> {fo} is not an SMS-SUBMIT (TP-MTI 01)")
        if (fo >> 3) & 0x03 not in (0, 2):
            raise CmsError(CMS_NOT_SUPPORTED, "only the relative validity period (or none) is supported")
        if len(request.args) > 1 and isinstance(request.args[1], str):
            # 27.005 3.3.2: a time stamp in <vp> is the <scts> of the SMS-DELIVERs +CMGW then stores in text mode
            try:
                self.cmgw_scts = _parse_scts(request.args[1])
            except ValueError as exc:
                raise CmsError(code, f"<vp> {request.args[1]!r}: {exc}") from exc
            vp = self.csmp[1]
        else:
            vp = _int_arg(request.args, 1, 0, 255, self.csmp[1], code)
        pid = _int_arg(request.args, 2, 0, 255, self.csmp[2], code)
        dcs = _int_arg(request.args, 3, 0, 255, self.csmp[3], code)
        self.csmp = (fo, vp, pid, dcs)
        return None

    async def csdh(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CSDH=[<show>] (27.005 3.3.3): text mode shows the header values too."""
        return self._line_flag(request, server, "+CSDH", "show_header")

    async def cnmi_command(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CNMI=[<mode>[,<mt>[,<bm>[,<ds>[,<bfr>]]]]] (27.005 3.4.1). The line that sets it gets the
        indications. <mode> 1-3 with <bfr> 0 flushes the indications buffered meanwhile to it; <bfr> 1 clears
        them."""
        if request.kind is CommandKind.TEST:
            return ["+CNMI: (0-3),(0-3),(0),(0-2),(0,1)"]
        if request.kind is CommandKind.READ:
            c = self.cnmi
            return [f"+CNMI: {c.mode},{c.mt},{c.bm},{c.ds},{c.bfr}"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        args, code = request.args, CMS_NOT_SUPPORTED
        setting = Cnmi(
            _int_arg(args, 0, 0, 3, self.cnmi.mode, code),
            _int_arg(args, 1, 0, 3, self.cnmi.mt, code),
            _int_arg(args, 2, 0, 0, self.cnmi.bm, code),
            _int_arg(args, 3, 0, 2, self.cnmi.ds, code),
            _int_arg(args, 4, 0, 1, self.cnmi.bfr, code),
        )
        self.cnmi = setting
        self._urc_line = server
        if setting.mode and setting.bfr == 1:
            self._buffer.clear()
        elif setting.mode and self._buffer:
            server.after_response(self._flush)  # "OK response shall be given before flushing the codes"
        return None

    async def cmms_command(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CMMS=[<n>] (27.005 3.5.6): keep the relay link to the SMSC open between sends; 1 falls back to 0 when
        5 s pass between one send's answer and the next send."""
        if request.kind is CommandKind.TEST:
            return ["+CMMS: (0-2)"]
        if request.kind is CommandKind.READ:
            self._cmms_expire()
            return [f"+CMMS: {self.cmms}"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        self.cmms = _int_arg(request.args, 0, 0, 2, 0, CMS_NOT_SUPPORTED)
        self._cmms_until = trio.current_time() + CMMS_HOLD
        return None

    def _cmms_expire(self) -> None:
        if self.cmms == 1 and trio.current_time() > self._cmms_until:
            self.cmms = 0

    # --- presenting messages (27.005 3.1 <pdu>, 3.4.1 and 4.x text mode forms) ------------------------------------

    def _memory(self, which: int) -> SmsStorage:
        return self.storages[self.memories[which]]

    def _te(self, text: str) -> str:
        """Text in the +CSCS set; a character the set cannot carry shows as '?' (the message stays as it is)."""
        return te_shown(text, self.core.charset)

    def _address(self, address: Address) -> tuple[str, int]:
        return f'"{self._te(str(address))}"', address.type_of_address

    def _user_text(self, tpdu: SmsDeliver | SmsSubmit) -> tuple[str, int]:
        """The data line of text mode and its <length> (27.005 3.1 <data>, <length>): the text in the TE's set,
        counted in the message's characters (not those of the TE's encoding, +CSCS "UCS2"); hex of the octets
        for 8-bit and UCS2 data; with TP-UDHI set, hex of the whole user data, its header included."""
        if tpdu.udh:
            data = user_data_octets(tpdu).hex().upper()
            return data, len(data)
        if dcs_alphabet(tpdu.dcs) is Alphabet.GSM7 and tpdu.text is not None:
            return self._te(tpdu.text), len(tpdu.text)
        data = tpdu.ud.hex().upper()
        return data, len(data)

    def _pdu_form(self, sms: StoredSms) -> tuple[str, int]:
        return (sms.sca + sms.tpdu).hex().upper(), len(sms.tpdu)

    def _text_form(
        self, sms: StoredSms, server: AtServer, *, listing: bool, stat: str | None
    ) -> tuple[str, str | None]:
        """(header parameters, data line or None) of a stored or delivered message in text mode."""
        show = self._line(server).show_header
        fo = sms.tpdu[0] if sms.tpdu else 0
        try:
            tpdu = decode_tpdu(sms.tpdu)
        except SmsPduError:
            return (f"{stat}," if stat else "") + '"",,', sms.tpdu.hex().upper()
        lead = f"{stat}," if stat else ""
        sca, tosca = decode_sca(sms.sca)[0], 129
        sca_text = f'"{self._te(str(sca))}"' if sca is not None else '""'
        if sca is not None:
            tosca = sca.type_of_address
        if isinstance(tpdu, SmsStatusReport):
            ra, tora = self._address(tpdu.recipient)
            return (
                f"{lead}{fo},{tpdu.mr},{ra},{tora},{_scts(tpdu.scts)},{_scts(tpdu.discharge)},{tpdu.status}",
                None,
            )
        data, length = self._user_text(tpdu)
        if isinstance(tpdu, SmsDeliver):
            oa, tooa = self._address(tpdu.originator)
            if listing:
                tail = f",{tooa},{length}" if show else ""
                return f"{lead}{oa},,{_scts(tpdu.scts)}{tail}", data
            tail = f",{tooa},{fo},{tpdu.pid},{tpdu.dcs},{sca_text},{tosca},{length}" if show else ""
            return f"{lead}{oa},,{_scts(tpdu.scts)}{tail}", data
        da, toda = self._address(tpdu.destination)
        if listing:
            tail = f",{toda},{length}" if show else ""
            return f"{lead}{da},,{tail}", data
        vp = tpdu.validity.octet if isinstance(tpdu.validity, RelativeValidity) else ""
        tail = f",{toda},{fo},{tpdu.pid},{tpdu.dcs},{vp},{sca_text},{tosca},{length}" if show else ""
        return f"{lead}{da},{tail}", data

    # --- reading, listing, deleting ---------------------------------------------------------------------------------

    async def cmgr(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CMGR=<index> (27.005 3.4.3) from <mem1>; a REC UNREAD message becomes REC READ."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        index = _int_arg(request.args, 0, 0, 65535, None, CMS_INVALID_INDEX)
        storage = self._memory(0)
        sms = await storage.read(index)
        if sms is None:
            raise CmsError(CMS_INVALID_INDEX, f"{storage.name} {index} is empty")
        if sms.stat is Stat.REC_UNREAD:
            await storage.write(index, replace(sms, stat=Stat.REC_READ))
        if self._pdu_mode(server):
            pdu, length = self._pdu_form(sms)
            return [f"+CMGR: {int(sms.stat)},,{length}\r\n{pdu}"]
        header, data = self._text_form(sms, server, listing=False, stat=f'"{STAT_TEXT[sms.stat]}"')
        return [f"+CMGR: {header}" + (f"\r\n{data}" if data is not None else "")]

    def _stat_filter(self, request: AtRequest, server: AtServer) -> int:
        value = request.args[0] if request.args else None
        if self._pdu_mode(server):
            return _int_arg(request.args, 0, 0, ALL_STAT, int(Stat.REC_UNREAD), CMS_INVALID_PDU_PARAMETER)
        if value is None:
            return int(Stat.REC_UNREAD)
        names = {text: int(stat) for stat, text in STAT_TEXT.items()} | {"ALL": ALL_STAT}
        if str(value).upper() not in names:
            raise CmsError(CMS_INVALID_TEXT_PARAMETER, f"<stat> {value!r} is not one of {', '.join(names)}")
        return names[str(value).upper()]

    async def cmgl(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CMGL[=<stat>] (27.005 3.4.2) of <mem1>; listed REC UNREAD messages become REC READ."""
        if request.kind is CommandKind.TEST:
            if self._pdu_mode(server):
                return ["+CMGL: (0-4)"]
            return ['+CMGL: ("REC UNREAD","REC READ","STO UNSENT","STO SENT","ALL")']
        if request.kind not in (CommandKind.SET, CommandKind.EXEC):
            raise AtCommandError()
        wanted = self._stat_filter(request, server)
        storage = self._memory(0)
        lines = []
        for index, sms in (await storage.read_all()).items():
            if wanted != ALL_STAT and int(sms.stat) != wanted:
                continue
            if sms.stat is Stat.REC_UNREAD:
                await storage.write(index, replace(sms, stat=Stat.REC_READ))
            if self._pdu_mode(server):
                pdu, length = self._pdu_form(sms)
                lines.append(f"+CMGL: {index},{int(sms.stat)},,{length}\r\n{pdu}")
                continue
            header, data = self._text_form(sms, server, listing=True, stat=f'"{STAT_TEXT[sms.stat]}"')
            lines.append(f"+CMGL: {index},{header}" + (f"\r\n{data}" if data is not None else ""))
        return lines

    async def cmgd(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CMGD=<index>[,<delflag>] (27.005 3.5.4) in <mem1>: <delflag> 0 the index, 1 all read, 2 read and sent,
        3 read, sent and unsent, 4 all."""
        storage = self._memory(0)
        if request.kind is CommandKind.TEST:
            used = ",".join(str(i) for i in await storage.read_all())
            return [f"+CMGD: ({used}),(0-4)"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        flag = _int_arg(request.args, 1, 0, 4, 0, self._bad(server))
        if flag == 0:
            index = _int_arg(request.args, 0, 0, 65535, None, CMS_INVALID_INDEX)
            if index == 0 or index > await storage.capacity():
                raise CmsError(CMS_INVALID_INDEX, f"index {index} past {storage.name}")
            if await storage.read(index) is not None:
                await storage.write(index, None)
            return None
        doomed = DELETED_BY_FLAG[flag]
        for index, sms in (await storage.read_all()).items():
            if sms.stat in doomed:
                await storage.write(index, None)
        return None

    # --- sending and writing ----------------------------------------------------------------------------------------

    async def _entry(self, server: AtServer) -> bytes | None:
        """The text after the `> ` prompt; None when ESC cancelled it (the command then answers OK and does
        nothing). Under +CNMI <mode> 1/2 the line is reserved meanwhile: indications are dropped/held."""
        self._entering.add(server)
        try:
            entry = await server.read_text(limit=TEXT_LIMIT)
        finally:
            self._entering.discard(server)
            if self._buffer and self.cnmi.mode == 2 and server is self._urc_line:
                server.after_response(self._flush)
        if entry.cancelled:
            return None
        if entry.overflow:
            raise CmsError(self._bad(server), f"text entry over {TEXT_LIMIT} characters")
        return entry.text

    def _pdu_entry(self, text: bytes, length: int, *, mobile_originated: bool) -> tuple[bytes, bytes, Tpdu]:
        """A PDU mode entry: hex of the SC address field and a TPDU of `length` octets (27.005 3.1 <pdu>), whose
        fields add up. +CMS ERROR: 304 otherwise."""
        code = CMS_INVALID_PDU_PARAMETER
        hex_text = text.decode("latin-1").strip()
        try:
            data = bytes.fromhex(hex_text)
        except ValueError as exc:
            raise CmsError(code, f"PDU is not hexadecimal: {exc}") from exc
        try:
            sca_address, tpdu = decode_sca(data)
        except SmsPduError as exc:
            raise CmsError(exc.cms_code, f"SC address: {exc}") from exc
        if len(tpdu) != length:
            raise CmsError(code, f"<length> {length} but the TPDU has {len(tpdu)} octets")
        try:
            message = decode_tpdu(tpdu)
        except SmsPduError as exc:
            raise CmsError(exc.cms_code, f"TPDU: {exc}") from exc
        wanted = SmsSubmit if mobile_originated else SmsDeliver
        if not isinstance(message, wanted):
            raise CmsError(code, f"the TPDU is an {type(message).__name__}, not an {wanted.__name__}")
        return data[: len(data) - len(tpdu)], tpdu, message

    def _text_user_data(self, text: bytes, dcs: int) -> bytes:
        """Text mode user data (27.005 3.1 <data>): characters in the +CSCS set for the GSM 7-bit alphabet (the
        septets returned), hex of the octets for 8-bit and UCS2 data. A character the DCS of +CSMP cannot carry
        is 305: the TE sets +CSMP's <dcs> (8 for UCS2) first."""
        code = CMS_INVALID_TEXT_PARAMETER
        raw = text.decode("latin-1")
        alphabet = dcs_alphabet(dcs)
        if alphabet is Alphabet.GSM7:
            try:
                return gsm7_encode(te_decode(raw, self.core.charset))
            except ValueError as exc:
                raise CmsError(code, f"{exc}; +CSMP <dcs> {dcs} is GSM 7-bit") from exc
        try:
            data = bytes.fromhex(raw.strip())
        except ValueError as exc:
            raise CmsError(code, f"{alphabet.name} data is not hexadecimal: {exc}") from exc
        if alphabet is Alphabet.UCS2 and len(data) % 2:
            raise CmsError(code, f"UCS2 data of {len(data)} octets is not whole characters")
        return data

    def _text_address(self, value: AtArg, toa: int | None, server: AtServer) -> Address:
        code = CMS_INVALID_TEXT_PARAMETER
        try:
            number = te_decode(str(value if value is not None else ""), self.core.charset)
            if not number:
                raise ValueError("empty address")
            address = Address.parse(number)
        except (ValueError, SmsPduError) as exc:
            raise CmsError(code, f"address {value!r}: {exc}") from exc
        if toa is not None and toa & 0x70 == 0x10 and address.ton is not address.ton.INTERNATIONAL:
            address = replace(address, ton=address.ton.INTERNATIONAL)
        return address

    def _submit_from_text(self, destination: Address, text: bytes) -> bytes:
        fo, vp, pid, dcs = self.csmp
        udh: tuple[InformationElement, ...] = ()
        if fo & 0x40:  # TP-UDHI in +CSMP's <fo>: the text is hex of all TP-UD, header included (27.005 3.1)
            try:
                udh, ud = user_data_from_octets(dcs, bytes.fromhex(text.decode("latin-1").strip()))
            except ValueError as exc:  # SmsPduError is a ValueError
                raise CmsError(CMS_INVALID_TEXT_PARAMETER, f"TP-UDHI user data: {exc}") from exc
        else:
            ud = self._text_user_data(text, dcs)
        submit = SmsSubmit(
            destination,
            pid=pid,
            dcs=dcs,
            udh=udh,
            validity=RelativeValidity(vp) if (fo >> 3) & 0x03 == 0x02 else None,
            ud=ud,
            status_report_request=bool(fo & 0x20),
            reject_duplicates=bool(fo & 0x04),
            reply_path=bool(fo & 0x80),
        )
        try:
            return submit.encode()
        except SmsPduError as exc:
            raise CmsError(CMS_INVALID_TEXT_PARAMETER, str(exc)) from exc

    async def cmgs(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """PDU mode +CMGS=<length><CR><pdu><ctrl-Z>; text mode +CMGS=<da>[,<toda>]<CR><text><ctrl-Z> (27.005
        3.5.1): the SMS-SUBMIT goes to the SMSC; answered +CMGS: <mr>."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        if self._pdu_mode(server):
            length = _int_arg(request.args, 0, 1, MAX_TPDU, None, CMS_INVALID_PDU_PARAMETER)
            text = await self._entry(server)
            if text is None:
                return None
            sca, tpdu, _ = self._pdu_entry(text, length, mobile_originated=True)
        else:
            toda = _int_arg(request.args, 1, 128, 255, 129, CMS_INVALID_TEXT_PARAMETER)
            destination = self._text_address(request.args[0] if request.args else None, toda, server)
            text = await self._entry(server)
            if text is None:
                return None
            sca, tpdu = b"\x00", self._submit_from_text(destination, text)
        mr = await self._send(tpdu, sca)
        return [f"+CMGS: {mr}"]

    async def _mo_control(self, sca: bytes, tpdu: bytes) -> tuple[bytes, bytes]:
        """MO short message control by the USIM (TS 31.111 7.3.2, cp/toolkit_sms.py), when the terminal profile
        the CP sent declares it: the card allows the message, refuses it (+CMS ERROR: 302, operation not
        allowed) or sends it to other addresses. A status word other than 90 00/91 xx leaves it allowed."""
        slot = self.core.slots[1]
        if slot.absent or not mo_sms_control_supported(slot.driver.profile):
            return sca, tpdu
        from bipsim.cp.commands import CELL_ID, LAC_TAC  # at run time: cp/commands.py builds this set

        config = self.core.network.config
        where = LocalInfo(config.mcc, config.mnc, int(LAC_TAC, 16), int(CELL_ID, 16), config.rat)
        rp = sca if sca not in (b"", b"\x00") else encode_sca(self.service_centre())
        try:
            envelope = mo_sms_control_envelope(rp, tpdu, location_information(where))
            data, sw = await slot.driver.envelope(envelope, "ENVELOPE: MO SHORT MESSAGE CONTROL")
        except SmsPduError as exc:
            raise CmsError(exc.cms_code, f"MO short message control: {exc}") from exc
        except CardRemoved as exc:
            slot.gone(exc)
            raise CmsError(CMS_SIM_NOT_INSERTED, "the card went away") from exc
        if sw != 0x9000 and sw >> 8 != 0x91:
            return sca, tpdu
        decision = mo_sms_control_answer(data, rp, tpdu)
        if decision.result is MoControlResult.NOT_ALLOWED:
            raise CmsError(CMS_NOT_ALLOWED, "MO short message control: the card did not allow it")
        if decision.result is MoControlResult.ALLOWED_MODIFIED:
            return decision.sca, decision.tpdu
        return sca, tpdu

    async def _send(self, tpdu: bytes, sca: bytes, *, fields: dict[str, Any] | None = None) -> int:
        """An SMS-SUBMIT to the network's SMSC: the ME sets TP-MR (TS 23.040 9.2.3.6: one more than the last);
        the SMSC's answer is the MR +CMGS/+CMSS report. +CMS ERROR: 331 unregistered, 330 without an SMSC."""
        self._cmms_expire()
        if not self.core.network.registered:
            raise CmsError(CMS_NO_NETWORK, "not registered")
        if sca in (b"", b"\x00") and not self.service_centre():
            raise CmsError(CMS_SMSC_UNKNOWN, "no SC address in the PDU nor +CSCA")
        smsc = getattr(self.core.network, "smsc", None)
        if smsc is None:
            raise CmsError(CMS_SMSC_UNKNOWN, "the network has no SMSC")
        sca, tpdu = await self._mo_control(sca, tpdu)
        self.mr = (self.mr + 1) % 256
        tpdu = tpdu[:1] + bytes((self.mr,)) + tpdu[2:]
        try:
            mr = int(smsc.submit(tpdu, origin=self.own_number()))
        except SmsPduError as exc:
            raise CmsError(exc.cms_code, f"the SMSC refused the TPDU: {exc}") from exc
        self.tracer.emit(
            Actor.CP,
            Actor.NET,
            Layer.SMS,
            f"SMS-SUBMIT to the SMSC (TP-MR {mr})",
            tpdu,
            kind=Kind.SMS_SUBMIT,
            fields={"mr": mr, **(fields or {})},
        )
        if self.cmms == 1:
            self._cmms_until = trio.current_time() + CMMS_HOLD
        return mr

    def own_number(self) -> str:
        """The ME's MSISDN as the SMSC knows it (the origin of MO messages, where status reports return)."""
        number = getattr(self.core.network.config, "msisdn", None)
        return str(number) if number else OWN_NUMBER

    async def cmgw(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """PDU mode +CMGW=<length>[,<stat>]; text mode +CMGW[=<oa/da>[,<tooa/toda>[,<stat>]]] (27.005 3.5.3):
        the message after the prompt is stored in <mem2> (default <stat>: STO UNSENT); answered +CMGW: <index>."""
        if request.kind is CommandKind.TEST:
            return None
        storage = self._memory(1)
        if self._pdu_mode(server):
            if request.kind is not CommandKind.SET:
                raise AtCommandError()
            code = CMS_INVALID_PDU_PARAMETER
            length = _int_arg(request.args, 0, 1, MAX_TPDU, None, code)
            stat = Stat(_int_arg(request.args, 1, 0, 3, int(Stat.STO_UNSENT), code))
            text = await self._entry(server)
            if text is None:
                return None
            mobile_originated = stat in (Stat.STO_UNSENT, Stat.STO_SENT)
            sca, tpdu, _ = self._pdu_entry(text, length, mobile_originated=mobile_originated)
        else:
            code = CMS_INVALID_TEXT_PARAMETER
            stat = Stat.STO_UNSENT
            if len(request.args) > 2 and request.args[2] is not None:
                names = {v: k for k, v in STAT_TEXT.items()}
                if str(request.args[2]).upper() not in names:
                    raise CmsError(code, f"<stat> {request.args[2]!r}")
                stat = names[str(request.args[2]).upper()]
            toa = _int_arg(request.args, 1, 128, 255, 129, code)
            address = (
                self._text_address(request.args[0], toa, server)
                if request.args and request.args[0] not in (None, "")
                else Address("")
            )
            text = await self._entry(server)
            if text is None:
                return None
            sca = b"\x00"
            if stat in (Stat.STO_UNSENT, Stat.STO_SENT):
                tpdu = self._submit_from_text(address, text)
            else:
                tpdu = self._deliver_from_text(address, text)
        async with self._store_lock:
            index = await free_index(storage)
            await storage.write(index, StoredSms(stat, sca, tpdu))
        return [f"+CMGW: {index}"]

    def _deliver_from_text(self, originator: Address, text: bytes) -> bytes:
        _, _, pid, dcs = self.csmp
        deliver = SmsDeliver(originator, self.cmgw_scts, pid, dcs, ud=self._text_user_data(text, dcs))
        try:
            return deliver.encode()
        except SmsPduError as exc:
            raise CmsError(CMS_INVALID_TEXT_PARAMETER, str(exc)) from exc

    async def cmss(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CMSS=<index>[,<da>[,<toda>]] (27.005 3.5.2): sends a stored SMS-SUBMIT of <mem2>, to <da> when given;
        it becomes STO SENT; answered +CMSS: <mr>."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        storage = self._memory(1)
        index = _int_arg(request.args, 0, 0, 65535, None, CMS_INVALID_INDEX)
        sms = await storage.read(index)
        if sms is None:
            raise CmsError(CMS_INVALID_INDEX, f"{storage.name} {index} is empty")
        if not sms.mobile_originated:
            raise CmsError(CMS_NOT_ALLOWED, f"{storage.name} {index} is a received message")
        tpdu = sms.tpdu
        if len(request.args) > 1 and request.args[1] is not None:
            toda = _int_arg(request.args, 2, 128, 255, 129, self._bad(server))
            destination = self._text_address(request.args[1], toda, server)
            try:
                message = decode_tpdu(tpdu)
                if not isinstance(message, SmsSubmit):
                    raise SmsPduError("not an SMS-SUBMIT")
                tpdu = replace(message, destination=destination).encode()
            except SmsPduError as exc:
                raise CmsError(CMS_NOT_ALLOWED, f"{storage.name} {index}: {exc}") from exc
        mr = await self._send(tpdu, sms.sca, fields={"storage": storage.name, "index": index})
        if sms.stat is not Stat.STO_SENT:
            await storage.write(index, replace(sms, stat=Stat.STO_SENT))
        return [f"+CMSS: {mr}"]

    async def cnma(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CNMA (27.005 3.4.4): the TE acknowledges a +CMT or +CDS under +CSMS=1; in PDU mode
        +CNMA=<n>[,<length><CR><pdu><ctrl-Z>], <n> 0/1 RP-ACK, 2 RP-ERROR. Nothing to acknowledge: 340."""
        if request.kind is CommandKind.TEST:
            return ["+CNMA: (0-2)"] if self._pdu_mode(server) else None
        if request.kind not in (CommandKind.SET, CommandKind.EXEC):
            raise AtCommandError()
        if self.service != 1:
            raise CmsError(CMS_NOT_ALLOWED, "+CSMS is 0: +CMT and +CDS need no acknowledgement")
        if not self._acks:
            raise CmsError(CMS_NO_CNMA_EXPECTED, "no +CMT or +CDS awaits an acknowledgement")
        code = self._bad(server)
        n = _int_arg(request.args, 0, 0, 2, 0, code)
        report = b""
        if len(request.args) > 1 and request.args[1] is not None:
            length = _int_arg(request.args, 1, 1, MAX_TPDU, None, code)
            text = await self._entry(server)
            if text is None:
                return None
            try:
                report = bytes.fromhex(text.decode("latin-1").strip())
            except ValueError as exc:
                raise CmsError(code, f"acknowledgement PDU is not hexadecimal: {exc}") from exc
            if len(report) != length:
                raise CmsError(code, f"<length> {length} but the PDU has {len(report)} octets")
        pending = self._acks.pop(0)
        pending.ack = n != 2
        pending.done.set()
        self.tracer.emit(
            Actor.CP,
            Actor.NET,
            Layer.SMS,
            "RP-ERROR" if n == 2 else "RP-ACK",
            report or None,
            kind=Kind.SMS_ACK,
            fields={"ack": n != 2},
        )
        return None

    # --- the network's deliveries -------------------------------------------------------------------------------------

    async def deliver(self, tpdu: bytes) -> MtResult:
        """One TPDU the SMSC delivers to this ME (an SMS-DELIVER or SMS-STATUS-REPORT), routed per +CNMI
        (27.005 3.4.1): stored in <mem3> with +CMTI, shown with +CMT, a (U)SIM data download handed to the card
        (its PoR returned), a status report shown with +CDS or stored with +CDSI. One delivery at a time, so that
        two messages never take the same free index."""
        async with self._store_lock:
            outcome = await self._deliver(tpdu)
        if isinstance(outcome, PendingAck):  # the storage is free for others while the TE acknowledges
            return await self._acknowledged(outcome, tpdu)
        return outcome

    async def _deliver(self, tpdu: bytes) -> MtResult | PendingAck:
        try:
            message = decode_tpdu(tpdu)
        except SmsPduError as exc:
            self._delivery_event(tpdu, "dropped", reason=str(exc), error=True)
            return MtResult(False, cause="malformed TPDU")
        if isinstance(message, SmsStatusReport):
            return await self._status_report(tpdu)
        if not isinstance(message, SmsDeliver):
            self._delivery_event(tpdu, "dropped", reason="not an SMS-DELIVER", error=True)
            return MtResult(False, cause="not an SMS-DELIVER")
        if message.is_data_download:
            return await self._download(tpdu)
        sca = encode_sca(self._default_sca())
        message_class = dcs_class(message.dcs)
        route = deliver_route(self.cnmi.mt, message_class, message.dcs)
        if route is Route.CMT:
            self._delivery_event(tpdu, "cmt")
            pending = await self._route_cmt(StoredSms(Stat.REC_UNREAD, sca, tpdu))
            return pending or MtResult(True)
        storage = self.sm if route is Route.STORE_SM else self._memory(2)
        try:
            index = await free_index(storage)
            await storage.write(index, StoredSms(Stat.REC_UNREAD, sca, tpdu))
        except CmsError as exc:
            self._delivery_event(tpdu, "dropped", reason=exc.reason, error=True, storage=storage.name)
            # TS 23.040 9.2.3.22: memory capacity exceeded (D3) for a full storage, else unspecified (FF)
            return MtResult(False, cause=exc.reason, failure=0xD3 if exc.code == CMS_MEMORY_FULL else 0xFF)
        self._delivery_event(tpdu, "cmti", storage=storage.name, index=index)
        if self.cnmi.mt:
            await self._indicate(f'+CMTI: "{storage.name}",{index}')
        return MtResult(True)

    async def _download(self, tpdu: bytes) -> MtResult:
        """A (U)SIM data download: to the card as ENVELOPE (SMS-PP DOWNLOAD) by the core's shared code, never to
        the TE; the card's response data is the PoR the network gets back (TS 31.111 7.1.1.1)."""
        self._delivery_event(tpdu, "download")
        try:
            data, sw = await self.core.sms_pp_download(tpdu)
        except CmeError as exc:
            self.tracer.emit(
                Actor.CP,
                Actor.NET,
                Layer.SMS,
                f"SMS-PP download not delivered: {exc}",
                error=True,
                kind=Kind.SMS_ERROR,
                fields={"command": "SMS-PP DOWNLOAD", "code": exc.code, "reason": str(exc)},
            )
            return MtResult(False, cause=str(exc), failure=0xD4 if exc.code == 14 else 0xD5)
        ok = sw == 0x9000 or sw >> 8 == 0x91
        # TS 31.111 7.1.1.1: 62 xx / 63 xx / 93 00 make the ME answer RP-ERROR with the data (D5: (U)SIM data
        # download error; D4: the toolkit is busy)
        failure = None if ok else (0xD4 if sw == 0x9300 else 0xD5)
        return MtResult(ok, por=data, sw=sw, failure=failure, cause="" if ok else f"card answered {sw:04X}")

    async def _status_report(self, tpdu: bytes) -> MtResult | PendingAck:
        sca = encode_sca(self._default_sca())
        ds = self.cnmi.ds
        if ds == 1:
            self._delivery_event(tpdu, "cds", kind=Kind.SMS_STATUS_REPORT)
            line = self._urc_line
            if line is not None and not self._pdu_mode(line):
                header, _ = self._text_form(
                    StoredSms(Stat.REC_UNREAD, sca, tpdu), line, listing=False, stat=None
                )
                text = f"+CDS: {header}"
            else:
                text = f"+CDS: {len(tpdu)}\r\n{(sca + tpdu).hex().upper()}"
            pending = self._expect_ack()
            await self._indicate(text)
            return pending or MtResult(True)
        if ds == 2:
            try:
                index = await free_index(self.sr)
            except CmsError as exc:
                self._delivery_event(
                    tpdu, "dropped", reason=exc.reason, error=True, kind=Kind.SMS_STATUS_REPORT
                )
                return MtResult(False, cause=exc.reason, failure=0xD3)
            await self.sr.write(index, StoredSms(Stat.REC_UNREAD, sca, tpdu))
            self._delivery_event(tpdu, "cdsi", storage="SR", index=index, kind=Kind.SMS_STATUS_REPORT)
            await self._indicate(f'+CDSI: "SR",{index}')
            return MtResult(True)
        self._delivery_event(tpdu, "dropped", reason="+CNMI <ds> 0", kind=Kind.SMS_STATUS_REPORT)
        return MtResult(True)

    async def _route_cmt(self, sms: StoredSms) -> PendingAck | None:
        line = self._urc_line
        if line is not None and not self._pdu_mode(line):
            header, data = self._text_form(sms, line, listing=False, stat=None)
            text = f"+CMT: {header}\r\n{data}"
        else:
            pdu, length = self._pdu_form(sms)
            text = f"+CMT: ,{length}\r\n{pdu}"
        pending = self._expect_ack()
        await self._indicate(text)
        return pending

    def _expect_ack(self) -> PendingAck | None:
        """Under +CSMS=1 a +CMT or +CDS waits for the TE's +CNMA before the network gets its RP-ACK."""
        if self.service != 1:
            return None
        pending = PendingAck()
        self._acks.append(pending)
        return pending

    async def _acknowledged(self, pending: PendingAck, tpdu: bytes) -> MtResult:
        """The network's answer once the TE acknowledged (RP-ACK, or RP-ERROR for +CNMA=2), or once CNMA_TIMEOUT
        passed without it: RP-ERROR, and the TA turns +CMT and +CDS routing off (<mt> and <ds> 0, 27.005 3.4.1)."""
        with trio.move_on_after(CNMA_TIMEOUT):
            await pending.done.wait()
        if pending.done.is_set():
            if pending.ack:
                return MtResult(True)
            return MtResult(False, cause="the TE answered RP-ERROR (+CNMA=2)", failure=0xFF)
        if pending in self._acks:
            self._acks.remove(pending)
        self.cnmi = replace(self.cnmi, mt=0, ds=0)
        self.tracer.emit(
            Actor.CP,
            Actor.NET,
            Layer.SMS,
            f"no +CNMA in {CNMA_TIMEOUT:g} s: RP-ERROR, +CNMI <mt> and <ds> set to 0",
            tpdu,
            error=True,
            kind=Kind.SMS_ACK,
            fields={"ack": False, "reason": "timeout"},
        )
        return MtResult(False, cause="no +CNMA from the TE", failure=0xFF)

    def _delivery_event(
        self, tpdu: bytes, route: str, *, kind: Kind = Kind.SMS_DELIVER, error: bool = False, **fields: Any
    ) -> None:
        self.tracer.emit(
            Actor.NET,
            Actor.CP,
            Layer.SMS,
            f"{kind.value.split('.')[1]} from the SMSC: {route}",
            tpdu,
            error=error,
            kind=kind,
            fields={"route": route, **fields},
        )

    async def _indicate(self, text: str) -> None:
        """A new-message indication per +CNMI <mode>: 0 held in the TA; 1 dropped while the line is reserved (a
        text entry), else sent; 2 held while reserved and sent after; 3 sent at once."""
        line = self._urc_line
        action = indication_action(
            self.cnmi.mode, line_up=line is not None and not line.gone, reserved=line in self._entering
        )
        if action is Indication.HOLD or line is None:
            self._buffer.append(text)
            del self._buffer[:-URC_BUFFER]  # the oldest go first when the buffer is full (27.005 3.4.1)
            return
        if action is Indication.DROP:
            self.tracer.emit(
                Actor.CP,
                Actor.AP,
                Layer.AT,
                f"indication dropped (+CNMI mode 1, line reserved): {text}",
                kind=Kind.AT_ERROR,
                fields={"dropped": "cnmi mode 1"},
            )
            return
        await line.send_urc(text)

    async def _flush(self) -> None:
        line = self._urc_line
        if line is None:
            return
        pending, self._buffer = self._buffer, []
        for text in pending:
            await line.send_urc(text)


class Route(Enum):
    """Where an SMS-DELIVER goes (27.005 3.4.1 <mt>)."""

    CMT = "cmt"  # routed to the TE, not stored
    STORE_SM = "store_sm"  # stored on the (U)SIM, +CMTI
    STORE_MEM3 = "store_mem3"  # stored in <mem3>, +CMTI unless <mt> 0


def deliver_route(mt: int, message_class: int | None, dcs: int = 0) -> Route:
    """27.005 3.4.1: <mt> 2 routes classes 0, 1, 3 and none directly (+CMT), <mt> 3 class 3; class 2 is always
    stored on the (U)SIM (TS 23.038 4: "(U)SIM specific message"); the rest go to <mem3>. A message of the
    message waiting indication groups "store message" (TP-DCS 1101xxxx, 1110xxxx, TS 23.038 4) is stored and
    indicated under <mt> 2 too: 27.005 routes only the "discard message" group (1100xxxx) directly."""
    if message_class == 2:
        return Route.STORE_SM
    if mt == 2 and dcs >> 4 in (0xD, 0xE):
        return Route.STORE_MEM3
    if mt == 2 or (mt == 3 and message_class == 3):
        return Route.CMT
    return Route.STORE_MEM3


class Indication(Enum):
    SEND = "send"
    HOLD = "hold"  # kept in the TA's buffer
    DROP = "drop"


def indication_action(mode: int, *, line_up: bool, reserved: bool) -> Indication:
    """27.005 3.4.1 <mode>: 0 buffer in the TA; 1 discard while the TA-TE link is reserved (here: a text entry),
    else forward; 2 buffer while reserved, else forward; 3 forward always. Without a line to the TE: buffer."""
    if not line_up or mode == 0 or (mode == 2 and reserved):
        return Indication.HOLD
    if mode == 1 and reserved:
        return Indication.DROP
    return Indication.SEND


@dataclass
class PendingAck:
    """A +CMT or +CDS waiting for the TE's +CNMA: `ack` False for RP-ERROR (+CNMA=2)."""

    done: trio.Event = field(default_factory=trio.Event)
    ack: bool = True


@dataclass(frozen=True)
class MtResult:
    """What the ME answers the network for one MT TPDU (TS 24.011 RP-ACK / RP-ERROR): `delivered`, the card's
    response data and status word of a data download (`por`, `sw`), the TP-FCS of a failure (TS 23.040
    9.2.3.22), and why, for the SMSC's log."""

    delivered: bool
    por: bytes = b""
    sw: int | None = None
    failure: int | None = None
    cause: str = ""


def _parse_scts(text: str) -> datetime:
    """27.005 3.1 <scts> "yy/MM/dd,hh:mm:ss±zz" (zz in quarters of an hour); ValueError when it is not one."""
    if len(text) != 20 or text[17] not in "+-":
        raise ValueError('not "yy/MM/dd,hh:mm:ss±zz"')
    when = datetime.strptime(text[:17], "%y/%m/%d,%H:%M:%S")
    quarters = int(text[18:])
    if not text[18:].isdigit() or quarters > 79:
        raise ValueError("time zone beyond 79 quarters of an hour")
    sign = -1 if text[17] == "-" else 1
    return when.replace(tzinfo=timezone(timedelta(minutes=15 * quarters * sign)))


def _scts(when: datetime) -> str:
    """A time stamp in text mode (27.005 3.1 <scts>): "yy/MM/dd,hh:mm:ss±zz", zz in quarters of an hour."""
    offset = when.utcoffset() or timedelta(0)
    quarters = int(offset.total_seconds() // 900)
    sign = "-" if quarters < 0 else "+"
    return f'"{when:%y/%m/%d,%H:%M:%S}{sign}{abs(quarters):02d}"'
