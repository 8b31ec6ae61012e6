"""The card's persistent state: one JSON file written atomically, plus append-only journals for bulk data.

The state file (`save_state`) is written to a temporary file in the same directory, fsynced, renamed over the old
one, and the directory fsynced: a card killed at any moment keeps either the old or the new state, never a mix.
`StateFile` skips the write when the state did not change since its last one, so that a caller may save after
every APDU and pay only for the APDUs that changed something. The card saves its state as named parts
(`save_parts`): a part whose component has a `state_version` (a number the component moves on whenever its content
changes: the file system, the GP registry) is encoded again only when that number moved; the file is the parts'
cached JSON joined, byte for byte what `json.dumps(state, sort_keys=True)` writes. When no part moved, a save costs
one attribute read per part: no encoding, no stat, no write. A part without `state_version` has its `to_dict()`
compared at every save with the value it last encoded to (kept decoded), and is encoded only when that differs. Either way the file is written before the save returns, so "durable before the
card's answer leaves it" holds wherever the card saves today.

Bulk data that grows block by block (the load file data of a GlobalPlatform LOAD sequence) does not belong in that
file: rewriting it whole after every block is quadratic. It goes to a `Journal`: an append-only file of records,
each with its length and a CRC-32. An append is written at once (a killed process loses nothing it wrote: the
kernel has it) and made durable by `sync`, which the card calls once per remote script, before its response
script leaves the card (group commit: nobody outside the card has seen a 90 00 before that). A record torn by a kill
fails its check and is dropped with everything after it, so a journal always reads as a whole prefix of what was
appended. The state file names the journal; a new journal is created (and made durable) before the state file
that names it is saved, and an old one is deleted only after the state file stopped naming it.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

_RECORD_HEAD = struct.Struct(">II")  # payload length, CRC-32 of the payload


def save_state(path: Path, state: dict[str, Any]) -> None:
    _write_atomically(path, json.dumps(state, sort_keys=True).encode("utf-8"))


def _write_atomically(path: Path, payload: bytes) -> None:
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    # a writer killed between mkstemp and rename leaves its temporary file behind: one writer per state file,
    # so any such file is stale
    for stale in directory.glob(f".{glob.escape(path.name)}.*"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_state(path: Path) -> dict[str, Any]:
    """The saved state; a file that is not a JSON object is treated as no state (and reported by the caller)."""
    with path.open(encoding="utf-8") as handle:
        data = json.load(handle)
    return data if isinstance(data, dict) else {}


@functools.lru_cache(maxsize=64)
def _json_key(name: str) -> str:
    return json.dumps(name)


class Part(Protocol):
    """A component of the card's state (uicc/card.py Persistent); `state_version` is optional (see save_parts)."""

    def to_dict(self) -> dict[str, Any]: ...


class StateFile:
    """One card's state file, saved atomically and only when its content changed.

    `writes` counts the files written, `encodes` the JSON encodings of a state or of a part (what the tests of
    dirty tracking count per APDU).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writes = 0
        self.encodes = 0
        self._last: bytes | None = None
        self._stat: tuple[int, int, int] | None = None  # inode, size, mtime of our last write
        # what the file holds, part by part: the component's state_version when encoded (None: it has none), the
        # part's JSON, and for a part without a version that JSON decoded (what its next to_dict is compared with)
        self._parts: dict[str, tuple[int | None, str, Any]] = {}

    def save(self, state: dict[str, Any]) -> bool:
        """Writes `state` unless the file already holds exactly it (as we wrote it); True when it wrote."""
        payload = json.dumps(state, sort_keys=True).encode("utf-8")
        self.encodes += 1
        self._parts = {}  # the file no longer holds the parts of save_parts
        if payload == self._last and self._stat is not None and self._stat == self._current_stat():
            return False
        self._write(payload)
        return True

    def save_parts(self, parts: Mapping[str, Part]) -> bool:
        """Writes the state `{name: part.to_dict()}` when a part changed since the last write; True when it wrote.

        A part with an int `state_version` equal to the one of its last encoding is not encoded again. Nothing
        is remembered as written until the write succeeded: a failed write is tried again at the next save.
        """
        fresh: dict[str, tuple[int | None, str, Any]] = {}
        changed = parts.keys() != self._parts.keys()  # a part attached since the last write
        for name, part in parts.items():
            version = getattr(part, "state_version", None)
            cached = self._parts.get(name)
            if version is not None:
                if cached is not None and cached[0] == version:
                    continue
                value = part.to_dict()
            else:
                value = part.to_dict()
                if cached is not None and cached[0] is None and value == cached[2]:
                    continue
            encoded = json.dumps(value, sort_keys=True)
            self.encodes += 1
            fresh[name] = (version, encoded, json.loads(encoded) if version is None else None)
            if cached is None or cached[1] != encoded:
                changed = True
        if not fresh and not changed:
            return False  # the common case: an APDU that changed nothing
        merged = {name: fresh.get(name) or self._parts[name] for name in parts}
        if not changed and self._stat is not None and self._stat == self._current_stat():
            self._parts = merged  # the same content under new versions: nothing to write
            return False
        # json.dumps(state, sort_keys=True) of the whole state, from the parts' own encodings
        payload = (
            "{" + ", ".join(f"{_json_key(name)}: {merged[name][1]}" for name in sorted(merged)) + "}"
        ).encode("utf-8")
        self._write(payload)
        self._parts = merged
        return True

    def _write(self, payload: bytes) -> None:
        _write_atomically(self.path, payload)
        self._last, self._stat = payload, self._current_stat()
        self.writes += 1

    def _current_stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns


class Journal:
    """An append-only file of checksummed records; `read` gives the whole records, in order."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._unsynced = False

    @classmethod
    def create(cls, path: Path) -> Journal:
        """A new, empty journal (an old file of that name is emptied), durable before it is named anywhere."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        os.fsync(fd)
        _fsync_directory(path.parent)
        return cls(path, fd)

    @classmethod
    def reopen(cls, path: Path) -> tuple[Journal, list[bytes]]:
        """An existing journal and its records; a torn tail is cut off so that appends follow whole records."""
        records, good = read_journal(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        if os.fstat(fd).st_size != good:
            os.ftruncate(fd, good)
            os.fsync(fd)
        return cls(path, fd), records

    def append(self, record: bytes, *, sync: bool = True) -> None:
        """Appends one record; with `sync`, returns once it is on disk, else once the kernel has it."""
        data = _RECORD_HEAD.pack(len(record), zlib.crc32(record)) + record
        written = os.write(self._fd, data)
        while written < len(data):
            written += os.write(self._fd, data[written:])
        self._unsynced = True
        if sync:
            self.sync()

    def sync(self) -> None:
        """Makes every append so far durable (one fsync, none when there is nothing new)."""
        if self._unsynced and self._fd >= 0:
            os.fsync(self._fd)
            self._unsynced = False

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1


def read_journal(path: Path) -> tuple[list[bytes], int]:
    """The whole records of a journal file and the byte length they span (a missing file has none)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    records: list[bytes] = []
    at = 0
    while at + _RECORD_HEAD.size <= len(data):
        size, crc = _RECORD_HEAD.unpack_from(data, at)
        end = at + _RECORD_HEAD.size + size
        if end > len(data) or zlib.crc32(data[at + _RECORD_HEAD.size : end]) != crc:
            break  # torn by a kill mid-append: this record and anything after it never completed
        records.append(data[at + _RECORD_HEAD.size : end])
        at = end
    return records, at
