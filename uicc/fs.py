"""The card's file system (ETSI TS 102 221 section 8, 3GPP TS 31.102 section 4): a small but real tree.

MF 3F00 with EF_ICCID 2FE2 and EF_DIR 2F00, DF_TELECOM 7F10 (the 2G phonebook: EF_ADN 6F3A, EF_EXT1 6F4A), and
ADF_USIM with EF_IMSI 6F07, EF_AD 6FAD, EF_UST 6F38, EF_EST 6F56, EF_SPN 6F46, EF_SMS 6F3C (linear fixed), EF_SMSP 6F42 (linear
fixed), EF_FDN 6F3B, EF_SDN 6F49, EF_MSISDN 6F40, EF_ECC 6FB7 and the USIM phonebook DF_PHONEBOOK 5F3A (EF_PBR
4F30 naming its EF_ADN 4F3A and EF_EXT1 4F4A). Files answer SELECT with an FCP template (TS 102 221 section
11.1.1.3). The contents come from the card profile and round-trip through `to_dict` for the
card's persistent state.

Dirty tracking: every change to the tree (an EF's contents written in place, a file added, removed or given new
attributes) moves the tree's `state_version` on, so the card's state file is encoded and written only after an
APDU that changed something (uicc/card.py `save_state`, uicc/card_state.py). The contents are a `TrackedBytes`,
a bytearray that reports its own in-place writes, so no command handler has to remember to say so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, SupportsIndex

from bipsim.uicc.tlv import encode_length

USIM_AID = bytes.fromhex("A0000000871002FF33FF018900000100")

# USIM service table (TS 31.102 section 4.2.8): services this card offers. 28 data download via SMS-PP (the OTA
# push trigger), 29 via SMS-CB, 30/31 call and MO-SMS control, 33 "shall be set to 1", 10/12 SMS and SMSP, and
# for BIP: 72 additional TERMINAL PROFILE after UICC activation, 80 connectivity parameters for USIM IP
# connections (the UST has no BIP bit of its own; BIP support is negotiated in the TERMINAL PROFILE); 2 FDN, 4 SDN
# and 21 MSISDN for the phonebook files of the ADF.
UST_SERVICES = (2, 4, 10, 12, 21, 28, 29, 30, 31, 33, 72, 80)


# EF_ARR records (TS 102 221 section 9.2.7, expanded format of ISO/IEC 7816-4 section 9.3.3): access mode DO '80'
# (b1 READ, b2 UPDATE) then its security condition: '90 00' always, or 'A4' a user authentication with key
# reference 0A (ADM1), 01 (PIN1) or 81 (PIN2), usage qualifier 08. A PIN1 condition is met while PIN1 is disabled.
ARR_ALWAYS = 1
ARR_ADM_UPDATE = 2
ARR_PIN2_UPDATE = 3  # READ after PIN1, UPDATE after PIN2 (key reference 81): EF_FDN (TS 31.102 4.2.24)
ARR_PIN1 = 4  # READ and UPDATE after PIN1 (key reference 01): the subscriber's files (EF_SMS, EF_ADN...)
ARR_PIN1_READ_ADM_UPDATE = 5  # READ after PIN1, UPDATE with ADM: EF_IMSI, EF_SDN
ARR_RECORDS = (
    bytes.fromhex("8001039000"),
    bytes.fromhex("80010190008001 02A40683010A950108".replace(" ", "")),
    bytes.fromhex("800101 A406830101950108 800102 A406830181950108".replace(" ", "")),
    bytes.fromhex("800103 A406830101950108".replace(" ", "")),
    bytes.fromhex("800101 A406830101950108 800102 A40683010A950108".replace(" ", "")),
)
# the records whose READ (b1 of the access mode) or UPDATE (b2) needs PIN1 while it is enabled
PIN1_READ = frozenset((ARR_PIN2_UPDATE, ARR_PIN1, ARR_PIN1_READ_ADM_UPDATE))
PIN1_UPDATE = frozenset((ARR_PIN1,))
ARR_RECORD_LENGTH = 24  # the longest record: two access modes with a PIN each (11 bytes each)
AVAILABLE_MEMORY = 0x8000  # bytes free for new files, as the MF's proprietary information reports it
# Phonebook files (TS 51.011 10.5, TS 31.102 4.4.2): record length (18 octets of alpha identifier and 14 of
# number) and record counts; EF_ADN's count comes from the card profile (adn_records)
PHONEBOOK_RECORD_LENGTH = 32
FDN_RECORDS = 10
SDN_RECORDS = 10
MSISDN_RECORDS = 2
EXT1_RECORDS = 10
PBR_RECORD_LENGTH = 20
# EF_DIR record (TS 102 221 section 13.1): application template '61' with the AID '4F' and a label '50'
DIR_RECORD_LENGTH = 32


def dir_record(aid: bytes, label: bytes) -> bytes:
    body = b"\x4f" + bytes((len(aid),)) + aid + b"\x50" + bytes((len(label),)) + label
    return (b"\x61" + bytes((len(body),)) + body).ljust(DIR_RECORD_LENGTH, b"\xff")


def arr_file(fid: int) -> File:
    records = b"".join(record.ljust(ARR_RECORD_LENGTH, b"\xff") for record in ARR_RECORDS)
    return File(fid, "EF_ARR", FileKind.LINEAR_FIXED, bytearray(records), ARR_RECORD_LENGTH, sfi=0x06)


class FileKind(Enum):
    DF = "df"
    ADF = "adf"
    TRANSPARENT = "transparent"
    LINEAR_FIXED = "linear_fixed"


class _Changes:
    """The change counter one tree shares: every File of the tree holds the same one."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class TrackedBytes(bytearray):
    """A File's contents: a bytearray that counts its in-place writes on its owner's tree (reads are untouched)."""

    __slots__ = ("_changes",)

    def __init__(
        self, data: Iterable[SupportsIndex] | bytes | bytearray = b"", changes: _Changes | None = None
    ) -> None:
        super().__init__(data)
        self._changes = changes if changes is not None else _Changes()

    def _touch(self) -> None:
        self._changes.count += 1

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._touch()

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._touch()

    def __iadd__(self, other: Any) -> TrackedBytes:  # type: ignore[misc]  # bytearray's own is typed narrower
        super().__iadd__(other)
        self._touch()
        return self

    def __imul__(self, count: Any) -> TrackedBytes:  # type: ignore[misc]
        super().__imul__(count)
        self._touch()
        return self

    def append(self, item: SupportsIndex) -> None:
        super().append(item)
        self._touch()

    def extend(self, items: Any) -> None:
        super().extend(items)
        self._touch()

    def insert(self, index: SupportsIndex, item: SupportsIndex) -> None:
        super().insert(index, item)
        self._touch()

    def pop(self, index: int = -1) -> int:
        value = super().pop(index)
        self._touch()
        return value

    def remove(self, value: int) -> None:
        super().remove(value)
        self._touch()

    def clear(self) -> None:
        super().clear()
        self._touch()

    def reverse(self) -> None:
        super().reverse()
        self._touch()


class TrackedChildren(dict[int, "File"]):
    """A DF's children by FID: adding or removing a file counts as a change of the tree."""

    __slots__ = ("_changes",)

    def __init__(self, items: Any = (), changes: _Changes | None = None) -> None:
        super().__init__(items)
        self._changes = changes if changes is not None else _Changes()

    def _touch(self) -> None:
        self._changes.count += 1

    def __setitem__(self, key: int, value: File) -> None:
        super().__setitem__(key, value)
        self._touch()

    def __delitem__(self, key: int) -> None:
        super().__delitem__(key)
        self._touch()

    def pop(self, key: int, *default: Any) -> Any:
        value = super().pop(key, *default)
        self._touch()
        return value

    def popitem(self) -> tuple[int, File]:
        item = super().popitem()
        self._touch()
        return item

    def clear(self) -> None:
        super().clear()
        self._touch()

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._touch()

    def setdefault(self, key: int, default: Any = None) -> Any:
        value = super().setdefault(key, default)
        self._touch()
        return value


@dataclass
class File:
    fid: int
    name: str
    kind: FileKind
    data: bytearray = field(default_factory=bytearray)
    record_length: int = 0
    children: dict[int, File] = field(default_factory=dict)
    parent: File | None = field(default=None, repr=False)
    aid: bytes = b""
    sfi: int | None = None
    # the EF_ARR record holding this file's access rules (TS 102 221 section 9.2.7): ARR_ALWAYS or ARR_ADM_UPDATE
    arr_record: int = 1

    def __setattr__(self, name: str, value: Any) -> None:
        # every attribute of a file is part of the tree's state: contents and children are wrapped so that their
        # own in-place changes count too (see TrackedBytes)
        changes: _Changes | None = self.__dict__.get("_changes")
        if changes is None:
            changes = _Changes()
            object.__setattr__(self, "_changes", changes)
        if name == "data" and not (isinstance(value, TrackedBytes) and value._changes is changes):
            value = TrackedBytes(value, changes)
        elif name == "children" and not (isinstance(value, TrackedChildren) and value._changes is changes):
            value = TrackedChildren(value, changes)
        object.__setattr__(self, name, value)
        changes.count += 1

    def _share_changes(self, changes: _Changes) -> None:
        """Makes this file and its subtree count their changes on `changes` (the tree it was added to)."""
        object.__setattr__(self, "_changes", changes)
        if isinstance(self.data, TrackedBytes):  # always (see __setattr__); the check is for the type checker
            self.data._changes = changes
        if isinstance(self.children, TrackedChildren):
            self.children._changes = changes
        for child in self.children.values():
            child._share_changes(changes)

    @property
    def state_version(self) -> int:
        """Moves on with every change of this file's tree (contents, files, attributes)."""
        changes: _Changes = self.__dict__["_changes"]
        return changes.count

    @property
    def is_dir(self) -> bool:
        return self.kind in (FileKind.DF, FileKind.ADF)

    @property
    def records(self) -> int:
        return len(self.data) // self.record_length if self.record_length else 0

    def add(self, child: File) -> File:
        child._share_changes(self.__dict__["_changes"])
        child.parent = self
        self.children[child.fid] = child
        return child

    def fcp(self, pin_status: int = 0x00) -> bytes:
        """The FCP template '62' returned by SELECT (TS 102 221 section 11.1.1.3). `pin_status` is a DF's PS_DO
        (9.5.2): b8 set when PIN1 is enabled, b7 when PIN2 is."""

        def tlv(tag: int, value: bytes) -> bytes:
            return bytes((tag,)) + encode_length(len(value)) + value

        # The order and coding of TS 102 221 tables 11.3 (MF, DF, ADF) and 11.4 (EF), as pySim's FcpTemplate
        # (pySim/ts_102_221.py) decodes them: '82' descriptor with data coding byte 21, '8B' referencing EF_ARR.
        parts = []
        if self.is_dir:
            parts.append(tlv(0x82, b"\x78\x21"))  # DF or ADF, shareable
        elif self.kind is FileKind.TRANSPARENT:
            parts.append(tlv(0x82, b"\x41\x21"))  # working EF, transparent, shareable
        else:
            parts.append(
                tlv(0x82, b"\x42\x21" + self.record_length.to_bytes(2, "big") + bytes((self.records,)))
            )
        parts.append(tlv(0x83, self.fid.to_bytes(2, "big")))
        if self.aid:
            parts.append(tlv(0x84, self.aid))
        if self.fid == 0x3F00:  # proprietary information, mandatory for the MF (11.1.1.4.6)
            # UICC characteristics 71: clock stop allowed, no preferred level (11.1.1.4.6.1); available memory
            parts.append(tlv(0xA5, tlv(0x80, b"\x71") + tlv(0x83, AVAILABLE_MEMORY.to_bytes(4, "big"))))
        parts.append(tlv(0x8A, b"\x05"))  # life cycle: operational, activated (11.1.1.4.9)
        parts.append(tlv(0x8B, self.arr_file().to_bytes(2, "big") + bytes((self.arr_record,))))
        if self.is_dir:
            # PIN status template DO (9.5.2): PS_DO, then the key references it covers, PIN1 (01) and PIN2 (81)
            parts.append(tlv(0xC6, tlv(0x90, bytes((pin_status,))) + tlv(0x83, b"\x01") + tlv(0x83, b"\x81")))
        else:
            parts.append(tlv(0x80, len(self.data).to_bytes(2, "big")))
            # '88' with the SFI in b8..b4; '88' empty: no SFI (without the tag the FID's 5 low bits would be one)
            parts.append(tlv(0x88, bytes((self.sfi << 3,)) if self.sfi is not None else b""))
        body = b"".join(parts)
        return b"\x62" + encode_length(len(body)) + body

    def arr_file(self) -> int:
        """The EF_ARR this file's '8B' refers to: the ADF's own (6F06) inside an ADF, else the MF's (2F06)."""
        node: File | None = self if self.is_dir else self.parent
        while node is not None:
            if node.kind is FileKind.ADF:
                return 0x6F06
            node = node.parent
        return 0x2F06

    def update_needs_adm(self) -> bool:
        """Whether UPDATE needs the ADM key (records ARR_ADM_UPDATE, ARR_PIN1_READ_ADM_UPDATE), which the
        terminal never presents."""
        return self.arr_record in (ARR_ADM_UPDATE, ARR_PIN1_READ_ADM_UPDATE)

    def read_needs_pin1(self) -> bool:
        """Whether READ needs PIN1 verified (when it is enabled): the subscriber's files (TS 31.102 section 4.2)."""
        return self.arr_record in PIN1_READ

    def update_needs_pin1(self) -> bool:
        return self.arr_record in PIN1_UPDATE

    def update_needs_pin2(self) -> bool:
        """Whether UPDATE needs PIN2 verified first (record ARR_PIN2_UPDATE: EF_FDN)."""
        return self.arr_record == ARR_PIN2_UPDATE


# Key references of VERIFY PIN (TS 102 221 section 9.5.1, table 9.3) and their attempts before blocking
PIN1, PIN2, ADM1 = 0x01, 0x81, 0x0A
PIN_ATTEMPTS = {PIN1: 3, PIN2: 3, ADM1: 10}
UNBLOCK_ATTEMPTS = 10  # an UNBLOCK PIN (PUK) allows 10 false presentations (TS 102 221 section 11.1.13)
# status words of the PIN commands (TS 102 221 section 10.2.1)
SW_PIN_OK = 0x9000
SW_BLOCKED = 0x6983  # authentication/PIN method blocked
SW_INVALIDATED = 0x6984  # referenced data invalidated: the PIN is disabled
SW_NO_KEY = 0x6A88  # referenced data not found


def pin_block(pin: str) -> bytes:
    """A PIN as VERIFY PIN carries it: its digits in ASCII, padded with FF to 8 bytes (TS 102 221 section 9.5.1)."""
    return pin.encode("ascii").ljust(8, b"\xff")


class Pins:
    """The card's PINs, their UNBLOCK PINs (PUKs) and attempt counters, and which PINs are enabled (all of it
    persistent: a power cycle gives no attempt back), and which were verified since the last reset (volatile).

    The methods answer the status words of TS 102 221 section 11.1: `verify` (11.1.9), `change` (11.1.10),
    `disable` (11.1.11), `enable` (11.1.12) and `unblock` (11.1.13): 9000; 63CX after a false presentation with X
    attempts left (63C0 on the one that blocks); 6983 once blocked; 6984 a disabled PIN presented for verification
    or change; 6A88 no such key reference. A false presentation also ends the PIN's verified state."""

    def __init__(
        self,
        values: dict[int, str],
        *,
        unblock: dict[int, str] | None = None,
        attempts: dict[int, int] | None = None,
        unblock_attempts: dict[int, int] | None = None,
        disabled: set[int] | None = None,
    ) -> None:
        self._values = {key: pin_block(pin) for key, pin in values.items()}
        self.initial = {key: (attempts or {}).get(key, PIN_ATTEMPTS.get(key, 3)) for key in values}
        self.remaining = dict(self.initial)
        self._puks = {key: pin_block(puk) for key, puk in (unblock or {}).items() if key in values}
        self.unblock_initial = {
            key: (unblock_attempts or {}).get(key, UNBLOCK_ATTEMPTS) for key in self._puks
        }
        self.unblock_remaining = dict(self.unblock_initial)
        # a PIN is enabled unless the profile or a DISABLE VERIFICATION disabled it; ADM1 cannot be disabled
        self.enabled = {key for key in values if key not in (disabled or set()) or key == ADM1}
        self.verified: set[int] = set()
        # moves on when the persistent part changes (uicc/card_state.py writes only then)
        self.state_version = 0

    # --- state ---------------------------------------------------------------------------------------------

    def satisfied(self, key: int) -> bool:
        """Whether an access condition on `key` is met: verified since the reset, or the PIN disabled (TS 102 221
        section 11.1.11: files behind a disabled PIN are accessible as if marked ALWAYS)."""
        return key in self.verified or key not in self.enabled

    def blocked(self, key: int) -> bool:
        return self.remaining.get(key, 0) == 0

    def _changed(self) -> None:
        self.state_version += 1

    def _false(self, key: int) -> int:
        self.remaining[key] = max(0, self.remaining[key] - 1)
        self.verified.discard(key)
        self._changed()
        return 0x63C0 | self.remaining[key]

    def _good(self, key: int) -> None:
        if self.remaining[key] != self.initial[key]:
            self.remaining[key] = self.initial[key]
            self._changed()

    # --- commands ------------------------------------------------------------------------------------------

    def verify(self, key: int, block: bytes | None) -> int:
        if key not in self._values:
            return SW_NO_KEY
        if block is None:  # no data: 9000 when no verification is needed, else the attempts left (63CX)
            return SW_PIN_OK if self.satisfied(key) else 0x63C0 | self.remaining[key]
        if self.blocked(key):
            return SW_BLOCKED
        if key not in self.enabled:
            return SW_INVALIDATED
        if block != self._values[key]:
            return self._false(key)
        self._good(key)
        self.verified.add(key)
        return SW_PIN_OK

    def change(self, key: int, old: bytes, new: bytes) -> int:
        if key not in self._values:
            return SW_NO_KEY
        if self.blocked(key):
            return SW_BLOCKED
        if key not in self.enabled:
            return SW_INVALIDATED
        if old != self._values[key]:
            return self._false(key)
        self._values[key] = new
        self._good(key)
        self.verified.add(key)
        self._changed()
        return SW_PIN_OK

    def disable(self, key: int, block: bytes) -> int:
        return self._switch(key, block, enable=False)

    def enable(self, key: int, block: bytes) -> int:
        return self._switch(key, block, enable=True)

    def _switch(self, key: int, block: bytes, *, enable: bool) -> int:
        if key not in self._values:
            return SW_NO_KEY
        if key == ADM1:
            return 0x6985  # conditions of use not satisfied: the issuer's key is never disabled
        if self.blocked(key):
            return SW_BLOCKED
        if block != self._values[key]:
            return self._false(key)
        self._good(key)
        if enable:
            self.enabled.add(key)
            self.verified.add(key)  # the PIN was just presented: its access condition is met
        else:
            self.enabled.discard(key)
        self._changed()
        return SW_PIN_OK

    def unblock(self, key: int, puk: bytes | None, new: bytes | None) -> int:
        if key not in self._puks:
            return SW_NO_KEY
        if puk is None or new is None:  # no data: the UNBLOCK PIN's attempts left (11.1.13.1.2)
            return 0x63C0 | self.unblock_remaining[key]
        if self.unblock_remaining[key] == 0:
            return SW_BLOCKED
        if puk != self._puks[key]:
            self.unblock_remaining[key] -= 1
            self._changed()
            return 0x63C0 | self.unblock_remaining[key]
        # the new PIN, both counters back to their initial values, the PIN enabled and verified (11.1.13.1.1)
        self._values[key] = new
        self.remaining[key] = self.initial[key]
        self.unblock_remaining[key] = self.unblock_initial[key]
        self.enabled.add(key)
        self.verified.add(key)
        self._changed()
        return SW_PIN_OK

    def reset(self) -> None:
        self.verified.clear()

    def to_dict(self) -> dict[str, Any]:
        return {
            **{f"{key:02X}": left for key, left in sorted(self.remaining.items())},
            "unblock": {f"{key:02X}": left for key, left in sorted(self.unblock_remaining.items())},
            "enabled": sorted(f"{key:02X}" for key in self.enabled),
            "values": {f"{key:02X}": block.hex() for key, block in sorted(self._values.items())},
        }

    def load_dict(self, state: dict[str, Any]) -> None:
        """Restores the counters, enabled PINs and PIN values; a state file from before PUKs existed holds only
        the PIN counters ({"01": 3, ...}) and keeps the profile's other settings. Values that cannot be right (a
        counter past its initial value, a PIN block of the wrong size) are ignored."""

        def keys(part: Any) -> dict[int, Any]:
            found: dict[int, Any] = {}
            if isinstance(part, dict):
                for text, value in part.items():
                    try:
                        found[int(text, 16)] = value
                    except (TypeError, ValueError):
                        continue
            return found

        others = ("unblock", "enabled", "values")
        counters = {text: left for text, left in state.items() if text not in others}
        for key, left in keys(counters).items():
            if key in self.remaining and isinstance(left, int) and 0 <= left <= self.initial[key]:
                self.remaining[key] = left
        for key, left in keys(state.get("unblock")).items():
            initial = self.unblock_initial.get(key)
            if initial is not None and isinstance(left, int) and 0 <= left <= initial:
                self.unblock_remaining[key] = left
        enabled = state.get("enabled")
        if isinstance(enabled, list) and all(isinstance(text, str) for text in enabled):
            chosen = set(keys({text: True for text in enabled}))
            if len(chosen) == len(enabled) and chosen <= set(self._values):
                self.enabled = chosen | {ADM1}
        for key, text in keys(state.get("values")).items():
            if key in self._values and isinstance(text, str):
                try:
                    block = bytes.fromhex(text)
                except ValueError:
                    continue
                if len(block) == 8:
                    self._values[key] = block
        self._changed()


def bcd_swapped(digits: str, length: int, pad: str = "F") -> bytes:
    """Nibble-swapped BCD (TS 102 221 section 13.2 for ICCID) padded with F to `length` bytes."""
    text = (digits + pad * (2 * length))[: 2 * length]
    return bytes(int(text[i + 1] + text[i], 16) for i in range(0, len(text), 2))


def imsi_bytes(imsi: str) -> bytes:
    """EF_IMSI (TS 31.102 section 4.2.2): length, then parity nibble + digits, nibble-swapped."""
    odd = len(imsi) % 2 == 1
    first = (int(imsi[0]) << 4) | (0x9 if odd else 0x1)
    rest = bcd_swapped(imsi[1:], 7)
    return bytes((8, first)) + rest


def ust_bytes(services: tuple[int, ...] = UST_SERVICES, length: int = 10) -> bytes:
    table = bytearray(length)
    for service in services:
        table[(service - 1) // 8] |= 1 << ((service - 1) % 8)
    return bytes(table)


class FileSystem:
    """The tree and its contents; paths are tuples of FIDs from the MF (3F00)."""

    def __init__(
        self, iccid: str, imsi: str, mnc_length: int = 2, sms_records: int = 10, adn_records: int = 50
    ) -> None:
        self.mf = File(0x3F00, "MF", FileKind.DF)
        # EF_ICCID is written once by the issuer: UPDATE needs ADM (6982 from the terminal), READ is free
        iccid_file = File(
            0x2FE2, "EF_ICCID", FileKind.TRANSPARENT, bytearray(bcd_swapped(iccid, 10)), sfi=0x02
        )
        iccid_file.arr_record = ARR_ADM_UPDATE
        self.mf.add(iccid_file)
        # EF_DIR lists the applications (TS 102 221 section 13.1), SFI 1E; applets such as an ARA-M are not in it
        usim_record = dir_record(USIM_AID, b"USIM")
        self.mf.add(
            File(0x2F00, "EF_DIR", FileKind.LINEAR_FIXED, bytearray(usim_record), DIR_RECORD_LENGTH, sfi=0x1E)
        )
        self.mf.add(arr_file(0x2F06))
        telecom = self.mf.add(File(0x7F10, "DF_TELECOM", FileKind.DF))
        # the 2G phonebook (TS 51.011 10.5.1, 10.5.10): EF_ADN records of PHONEBOOK_RECORD_LENGTH octets (an alpha
        # identifier of 18 and the 14 of the number); numbers over 20 digits go on in EF_EXT1
        telecom.add(
            File(
                0x6F3A,
                "EF_ADN",
                FileKind.LINEAR_FIXED,
                bytearray(b"\xff" * PHONEBOOK_RECORD_LENGTH * adn_records),
                PHONEBOOK_RECORD_LENGTH,
            )
        )
        telecom.add(
            File(0x6F4A, "EF_EXT1", FileKind.LINEAR_FIXED, bytearray(b"\xff" * 13 * EXT1_RECORDS), 13)
        )
        self.usim = self.mf.add(File(0x7FF0, "ADF_USIM", FileKind.ADF, aid=USIM_AID))
        self.usim.add(arr_file(0x6F06))
        self.usim.add(File(0x6F07, "EF_IMSI", FileKind.TRANSPARENT, bytearray(imsi_bytes(imsi)), sfi=0x07))
        self.usim.add(
            File(0x6FAD, "EF_AD", FileKind.TRANSPARENT, bytearray(bytes((0, 0, 0, mnc_length))), sfi=0x03)
        )
        self.usim.add(File(0x6F38, "EF_UST", FileKind.TRANSPARENT, bytearray(ust_bytes()), sfi=0x04))
        self.usim.add(
            File(
                0x6F3C, "EF_SMS", FileKind.LINEAR_FIXED, bytearray(b"\x00" + b"\xff" * 175) * sms_records, 176
            )
        )
        self.usim.add(File(0x6F42, "EF_SMSP", FileKind.LINEAR_FIXED, bytearray(b"\xff" * 40), 40))
        # service provider name (TS 31.102 section 4.2.12): display condition + 16 bytes of name, a typical RFM target
        spn = b"\x00" + b"bipsim".ljust(16, b"\xff")
        self.usim.add(File(0x6F46, "EF_SPN", FileKind.TRANSPARENT, bytearray(spn), sfi=None))
        # fixed and service dialling numbers and the own numbers (TS 31.102 4.2.24, 4.2.29, 4.2.26), ADN-type
        # records; EF_FDN is updated only after PIN2
        for fid, name, count in (
            (0x6F3B, "EF_FDN", FDN_RECORDS),
            (0x6F49, "EF_SDN", SDN_RECORDS),
            (0x6F40, "EF_MSISDN", MSISDN_RECORDS),
        ):
            self.usim.add(
                File(
                    fid,
                    name,
                    FileKind.LINEAR_FIXED,
                    bytearray(b"\xff" * PHONEBOOK_RECORD_LENGTH * count),
                    PHONEBOOK_RECORD_LENGTH,
                )
            )
        self.usim.children[0x6F3B].arr_record = ARR_PIN2_UPDATE
        # emergency call codes (TS 31.102 4.2.21): 112 and 911, the numbers TS 22.101 10.1.1 has every ME know
        from bipsim.uicc.phonebook import ECC_RECORD_LENGTH, encode_ecc

        ecc = b"".join(encode_ecc(code, "Emergency") for code in ("112", "911"))
        ecc_file = File(0x6FB7, "EF_ECC", FileKind.LINEAR_FIXED, bytearray(ecc), ECC_RECORD_LENGTH)
        ecc_file.arr_record = ARR_ADM_UPDATE  # the issuer's list: the terminal reads it only
        self.usim.add(ecc_file)
        # the USIM phonebook (TS 31.102 4.4.2): DF_PHONEBOOK with EF_PBR naming its EF_ADN and EF_EXT1
        from bipsim.uicc.phonebook import encode_pbr

        book = self.usim.add(File(0x5F3A, "DF_PHONEBOOK", FileKind.DF))
        pbr = encode_pbr(0x4F3A, 0x4F4A, PBR_RECORD_LENGTH)
        book.add(File(0x4F30, "EF_PBR", FileKind.LINEAR_FIXED, bytearray(pbr), PBR_RECORD_LENGTH))
        book.add(
            File(
                0x4F3A,
                "EF_ADN",
                FileKind.LINEAR_FIXED,
                bytearray(b"\xff" * PHONEBOOK_RECORD_LENGTH * adn_records),
                PHONEBOOK_RECORD_LENGTH,
            )
        )
        book.add(File(0x4F4A, "EF_EXT1", FileKind.LINEAR_FIXED, bytearray(b"\xff" * 13 * EXT1_RECORDS), 13))
        # enabled services (TS 31.102 4.2.47): service 1, fixed dialling, is off; switched with PIN2 (+CLCK "FD")
        est = self.usim.add(File(0x6F56, "EF_EST", FileKind.TRANSPARENT, bytearray(b"\x00"), sfi=0x05))
        est.arr_record = ARR_PIN2_UPDATE
        # the subscriber's files are read (and written) after PIN1, as TS 31.102 section 4.2 gives their access
        # conditions; while PIN1 is disabled that is no condition at all (TS 102 221 section 11.1.11)
        self.usim.children[0x6F07].arr_record = ARR_PIN1_READ_ADM_UPDATE  # EF_IMSI
        self.usim.children[0x6F49].arr_record = ARR_PIN1_READ_ADM_UPDATE  # EF_SDN
        for subscriber in (
            self.usim.children[0x6F3C],  # EF_SMS
            self.usim.children[0x6F42],  # EF_SMSP
            self.usim.children[0x6F40],  # EF_MSISDN
            telecom.children[0x6F3A],  # EF_ADN
            telecom.children[0x6F4A],  # EF_EXT1
            *book.children.values(),  # EF_PBR, EF_ADN, EF_EXT1 of the USIM phonebook
        ):
            subscriber.arr_record = ARR_PIN1

    @property
    def state_version(self) -> int:
        """Moves on with every change of the tree: the card re-encodes this part of its state only then."""
        return self.mf.state_version

    def walk(self) -> list[tuple[tuple[int, ...], File]]:
        out: list[tuple[tuple[int, ...], File]] = []

        def visit(node: File, path: tuple[int, ...]) -> None:
            out.append((path, node))
            for child in node.children.values():
                visit(child, (*path, child.fid))

        visit(self.mf, (0x3F00,))
        return out

    def by_aid(self, aid: bytes) -> File | None:
        """An ADF whose AID starts with `aid` (partial AID selection, TS 102 221 section 11.1.1.2)."""
        for _, node in self.walk():
            if node.aid and node.aid.startswith(aid):
                return node
        return None

    def to_dict(self) -> dict[str, Any]:
        """Contents of every EF by path (hex), for the card's state file."""
        return {
            "/".join(f"{fid:04X}" for fid in path): node.data.hex()
            for path, node in self.walk()
            if not node.is_dir
        }

    def load_dict(self, state: dict[str, Any]) -> None:
        files = {"/".join(f"{fid:04X}" for fid in path): node for path, node in self.walk()}
        for key, value in state.items():
            node = files.get(key)
            if node is not None and not node.is_dir and isinstance(value, str):
                node.data = bytearray(bytes.fromhex(value))
