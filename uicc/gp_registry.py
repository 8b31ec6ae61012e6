"""The card's GlobalPlatform registry (GP Card Specification v2.3 sections 5, 9 and 11): the issuer security
domain, load files, their modules, and applications with their life-cycle states, driven by INSTALL (for load, for
install, make selectable), LOAD, DELETE, GET STATUS and SET STATUS, answering with GP status words.

Persistence: the registry is one part of the card's state file (uicc/card.py attach_state). The data of a load in
progress is not: each LOAD block is appended to a journal (uicc/card_state.py Journal) before the block is
answered 90 00 (made durable by `sync_state`, once per remote script), and the state file only names that journal,
so a load costs one append per block instead of a rewrite of everything received so far. A card without a state file keeps it all in memory.
`state_version` moves on with every command that may change what `to_dict` returns (not GET STATUS, not a LOAD
block that only went to the journal), so the card encodes this part of its state only then.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bipsim.uicc.card_state import Journal
from bipsim.uicc.tlv import TlvError, decode_ber_list, encode_length

ISD_AID = bytes.fromhex("A000000151000000")

# life cycle states (GP 11.1.1): load files, applications
LOADED = 0x01
INSTALLED = 0x03
SELECTABLE = 0x07
PERSONALIZED = 0x0F
LOCKED = 0x80

SW_OK = 0x9000
SW_WRONG_LENGTH = 0x6700
SW_CONDITIONS = 0x6985
SW_WRONG_DATA = 0x6A80
SW_NOT_FOUND = 0x6A88
SW_MEMORY = 0x6A84
SW_WRONG_P1P2 = 0x6A86
SW_INS = 0x6D00
SW_REFERENCED_DATA = 0x6A88
SW_MEMORY_FAILURE = 0x6581

_BLOCK_NUMBER = struct.Struct(">I")  # journal record: block index (not wrapped), then the block's data
_LAST = 0x80000000  # flag in a journal record's block index: the LOAD that ended the load file (P1 b8)


class GpError(Exception):
    def __init__(self, sw: int, reason: str) -> None:
        super().__init__(reason)
        self.sw = sw


@dataclass
class LoadFile:
    aid: bytes
    modules: list[bytes] = field(default_factory=list)
    state: int = LOADED
    size: int = 0


@dataclass
class Application:
    aid: bytes
    load_file: bytes
    module: bytes
    privileges: bytes = b"\x00"
    state: int = INSTALLED


def _lv(data: bytes, at: int) -> tuple[bytes, int]:
    if at >= len(data):
        raise GpError(SW_WRONG_DATA, "length byte missing")
    size = data[at]
    if at + 1 + size > len(data):
        raise GpError(SW_WRONG_DATA, "field runs past the data")
    return data[at + 1 : at + 1 + size], at + 1 + size


class GpRegistry:
    def __init__(self) -> None:
        self.load_files: dict[bytes, LoadFile] = {}
        self.applications: dict[bytes, Application] = {}
        self._loading: bytes | None = None  # load file AID of an INSTALL [for load] in progress
        self._load_data = bytearray()
        self._next_block = 0
        self._state_path: Path | None = None
        self._journal: Journal | None = None  # the LOAD blocks of the load in progress, when persistent
        self._journal_serial = 0  # makes each load's journal a new file (see _start_journal)
        self.state_version = 0  # dirty tracking for the card's state file (uicc/card_state.py)

    @property
    def load_in_progress(self) -> tuple[bytes, int, bytes] | None:
        """The load file AID, the next LOAD block number (not wrapped) and the data received, during a load."""
        if self._loading is None:
            return None
        return self._loading, self._next_block, bytes(self._load_data)

    # persistence (uicc/card.py attach_state)
    def bind_state_path(self, path: Path) -> None:
        """The card's state file: load data journals live next to it."""
        self._state_path = path

    def _journal_path(self, name: str) -> Path:
        assert self._state_path is not None
        return self._state_path.parent / name

    def _journal_prefix(self) -> str:
        assert self._state_path is not None
        return f"{self._state_path.name}.load-"

    def state_saved(self) -> None:
        """The state file was written: journals it no longer names can go (a kill before this leaves them for the
        next save or restore to remove)."""
        self._collect(self._journal.path.name if self._journal is not None else None)

    def sync_state(self) -> None:
        """Makes the LOAD blocks answered so far durable (the card calls it before its answers leave it)."""
        if self._journal is not None:
            try:
                self._journal.sync()
            except OSError:
                pass  # the blocks stay written; a disk that cannot fsync cannot do better

    def _collect(self, keep: str | None) -> None:
        if self._state_path is None:
            return
        for path in self._state_path.parent.glob(f"{self._journal_prefix()}*.journal"):
            if path.name != keep:
                path.unlink(missing_ok=True)

    def _start_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._state_path is None:
            return
        # a new file per load: the state file on disk may still name the previous journal, which must stay whole
        # until the state naming the new one has replaced it
        self._journal_serial += 1
        name = f"{self._journal_prefix()}{self._journal_serial}.journal"
        self._journal = Journal.create(self._journal_path(name))

    def _end_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "load_files": {
                a.hex(): {"modules": [m.hex() for m in f.modules], "state": f.state, "size": f.size}
                for a, f in self.load_files.items()
            },
            "applications": {
                a.hex(): {
                    "load_file": x.load_file.hex(),
                    "module": x.module.hex(),
                    "privileges": x.privileges.hex(),
                    "state": x.state,
                }
                for a, x in self.applications.items()
            },
            "loading": self._loading_dict(),
            "journal_serial": self._journal_serial,
        }

    def _loading_dict(self) -> dict[str, Any] | None:
        if self._loading is None:
            return None
        if self._journal is not None:
            # blocks and data are in the journal: this part stays the same for the whole load
            return {"aid": self._loading.hex(), "journal": self._journal.path.name}
        return {"aid": self._loading.hex(), "next_block": self._next_block, "data": self._load_data.hex()}

    def load_dict(self, state: dict[str, Any]) -> None:
        self.state_version += 1
        self.load_files = {
            bytes.fromhex(a): LoadFile(
                bytes.fromhex(a), [bytes.fromhex(m) for m in f["modules"]], f["state"], f.get("size", 0)
            )
            for a, f in state.get("load_files", {}).items()
        }
        self.applications = {
            bytes.fromhex(a): Application(
                bytes.fromhex(a),
                bytes.fromhex(x["load_file"]),
                bytes.fromhex(x["module"]),
                bytes.fromhex(x["privileges"]),
                x["state"],
            )
            for a, x in state.get("applications", {}).items()
        }
        self._journal_serial = max(self._journal_serial, int(state.get("journal_serial", 0)))
        self._end_journal()
        self._loading, self._load_data, self._next_block = None, bytearray(), 0
        loading = state.get("loading")
        named = loading.get("journal") if isinstance(loading, dict) else None
        if loading:
            self._loading = bytes.fromhex(loading["aid"])
            if "journal" in loading and self._state_path is not None:
                self._restore_journal(self._journal_path(loading["journal"]))
            else:
                self._next_block = loading.get("next_block", 0)
                self._load_data = bytearray(bytes.fromhex(loading.get("data", "")))
        self._collect(named)  # the state file on disk names this one only: any other journal is stale

    def _restore_journal(self, path: Path) -> None:
        if not path.exists():
            # named but gone (removed by hand): the load restarts from block 0 in a journal of that name
            self._journal = Journal.create(path)
            return
        journal, records = Journal.reopen(path)
        self._journal = journal
        for record in records:
            (index,) = _BLOCK_NUMBER.unpack_from(record)
            if index & ~_LAST != self._next_block:
                break  # cannot happen for a journal we wrote; keep the consistent prefix
            self._load_data += record[_BLOCK_NUMBER.size :]
            self._next_block += 1
            if index & _LAST:
                # killed after answering the last block and before the state file said so: finish it now
                try:
                    self._finish_load()
                except GpError:
                    pass  # it was answered with that error already; the load is abandoned as it was then
                break

    def handles(self, apdu: bytes) -> bool:
        return (
            len(apdu) >= 4
            and apdu[0] & 0xF0 in (0x80, 0x84, 0x00)
            and apdu[1] in (0xE6, 0xE8, 0xE4, 0xF2, 0xF0)
            and apdu[0] & 0x80 == 0x80
        )

    def process(self, apdu: bytes) -> bytes:
        """One GP command APDU; returns response data + SW."""
        data = apdu[5 : 5 + apdu[4]] if len(apdu) > 5 else b""
        if len(apdu) > 4 and len(apdu) < 5 + apdu[4]:
            return SW_WRONG_LENGTH.to_bytes(2, "big")
        journalled = apdu[1] == 0xE8 and self._journal is not None and not apdu[2] & 0x80
        if apdu[1] != 0xF2 and not journalled:
            # a journalled block leaves to_dict as it was: the state names the journal, not its blocks
            self.state_version += 1
        try:
            handler = {
                0xE6: self._install,
                0xE8: self._load,
                0xE4: self._delete,
                0xF2: self._get_status,
                0xF0: self._set_status,
            }[apdu[1]]
            out = handler(apdu[2], apdu[3], data)
        except GpError as exc:
            return exc.sw.to_bytes(2, "big")
        return out + SW_OK.to_bytes(2, "big")

    def _install(self, p1: int, p2: int, data: bytes) -> bytes:
        if p1 & 0x02:  # for load
            load_file, at = _lv(data, 0)
            _sd, at = _lv(data, at)
            if not 5 <= len(load_file) <= 16:
                raise GpError(SW_WRONG_DATA, "load file AID length")
            if load_file in self.load_files:
                raise GpError(SW_CONDITIONS, "load file already present")
            try:
                self._start_journal()
            except OSError as exc:
                raise GpError(SW_MEMORY_FAILURE, f"load journal: {exc}") from exc
            self._loading, self._load_data, self._next_block = load_file, bytearray(), 0
            return b"\x00"
        if p1 & 0x04 or p1 & 0x08:  # for install (and make selectable)
            load_file, at = _lv(data, 0)
            module, at = _lv(data, at)
            aid, at = _lv(data, at)
            privileges, at = _lv(data, at)
            package = self.load_files.get(load_file)
            if package is None or module not in package.modules:
                raise GpError(SW_REFERENCED_DATA, "load file or module not found")
            if aid in self.applications:
                raise GpError(SW_CONDITIONS, "application already installed")
            state = SELECTABLE if p1 & 0x08 else INSTALLED
            self.applications[aid] = Application(aid, load_file, module, privileges or b"\x00", state)
            return b"\x00"
        if p1 == 0x08:
            pass
        raise GpError(SW_WRONG_P1P2, f"INSTALL P1 0x{p1:02X} not supported")

    def _load(self, p1: int, p2: int, data: bytes) -> bytes:
        if self._loading is None:
            raise GpError(SW_CONDITIONS, "LOAD without INSTALL [for load]")
        if p2 != self._next_block & 0xFF:
            raise GpError(SW_WRONG_P1P2, f"LOAD block {p2}, expected {self._next_block}")
        last = bool(p1 & 0x80)
        if self._journal is not None:
            try:
                self._journal.append(
                    _BLOCK_NUMBER.pack(self._next_block | (_LAST if last else 0)) + data, sync=False
                )
            except OSError as exc:
                raise GpError(SW_MEMORY_FAILURE, f"load journal: {exc}") from exc
        self._load_data += data
        self._next_block += 1
        if last:
            self._finish_load()
        return b"\x00"

    def _finish_load(self) -> None:
        """The last block is in: parse the 'C4' load file data block and register the package."""
        assert self._loading is not None
        whole, loading = bytes(self._load_data), self._loading
        self._loading, self._load_data, self._next_block = None, bytearray(), 0
        self._end_journal()  # the file stays until the state file no longer names it (state_saved)
        try:
            items = decode_ber_list(whole)
        except TlvError as exc:
            raise GpError(SW_WRONG_DATA, f"load file data: {exc}") from exc
        cap = next((i.value for i in items if i.tag == 0xC4), None)
        if cap is None:
            raise GpError(SW_WRONG_DATA, "no C4 load file data block")
        self.load_files[loading] = LoadFile(loading, self._modules(cap), LOADED, len(cap))

    @staticmethod
    def _modules(cap: bytes) -> list[bytes]:
        """Module AIDs carried in the load file data as '4F' TLVs (bipsim's simulated CAP format); at least one."""
        try:
            items = decode_ber_list(cap)
        except TlvError:
            items = []
        modules = [i.value for i in items if i.tag == 0x4F]
        return modules or [cap[:16]]

    def _delete(self, p1: int, p2: int, data: bytes) -> bytes:
        try:
            items = decode_ber_list(data)
        except TlvError as exc:
            raise GpError(SW_WRONG_DATA, str(exc)) from exc
        aid = next((i.value for i in items if i.tag == 0x4F), None)
        if aid is None:
            raise GpError(SW_WRONG_DATA, "no AID")
        if aid in self.applications:
            del self.applications[aid]
            return b"\x00"
        if aid in self.load_files:
            if p2 & 0x80:  # delete related objects
                for app in [a for a in self.applications.values() if a.load_file == aid]:
                    del self.applications[app.aid]
            elif any(a.load_file == aid for a in self.applications.values()):
                raise GpError(SW_CONDITIONS, "load file has applications")
            del self.load_files[aid]
            return b"\x00"
        raise GpError(SW_NOT_FOUND, "AID not found")

    def _get_status(self, p1: int, p2: int, data: bytes) -> bytes:
        entries: list[tuple[bytes, int, bytes]] = []
        if p1 & 0x80:
            entries.append((ISD_AID, PERSONALIZED, b"\x9e"))
        if p1 & 0x40:
            entries += [(a.aid, a.state, a.privileges) for a in self.applications.values()]
        if p1 & 0x20 or p1 & 0x10:
            entries += [(f.aid, f.state, b"\x00") for f in self.load_files.values()]
        if not entries:
            raise GpError(SW_NOT_FOUND, "nothing matches")
        out = b""
        for aid, state, privileges in entries:
            body = (
                b"\x4f"
                + encode_length(len(aid))
                + aid
                + b"\x9f\x70\x01"
                + bytes((state,))
                + b"\xc5"
                + encode_length(len(privileges))
                + privileges
            )
            out += b"\xe3" + encode_length(len(body)) + body
        return out

    def _set_status(self, p1: int, p2: int, data: bytes) -> bytes:
        app = self.applications.get(data)
        if app is None:
            raise GpError(SW_NOT_FOUND, "application not found")
        if p2 & LOCKED:
            app.state |= LOCKED
        else:
            if p2 not in (SELECTABLE, PERSONALIZED) and not (
                app.state & LOCKED and p2 == app.state & ~LOCKED
            ):
                raise GpError(SW_WRONG_P1P2, "invalid life-cycle transition")
            app.state = p2 if not app.state & LOCKED else app.state & ~LOCKED
        return b"\x00"
