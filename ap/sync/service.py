"""The AP's SIM data sync service (docs/protocols.md, "SIM data sync"): trigger detection (step 002:S11), the
security check, reading every reachable store (002:S12) and writing the merge back (002:S13).

Stores: the physical SIMs in the CP's slots, read and written over 3GPP TS 27.007 on DLC 1 (`AT%SLOT`, `+CIMI`,
`+CPBS`, `+CPBR`, `+CPBW` for EF_ADN; `+CRSM` READ RECORD / UPDATE RECORD for EF_SMS, TS 31.102 4.2.25); the
virtual SIMs, which the AP holds as JSON files in a directory (one file a profile, named after it: adding the file
adds the virtual SIM); the terminal's own store, a JSON file that also keeps the
sync's state (the last merged set and each store's snapshot, so it is the journal: it is replaced, atomically,
only once every other store is written, and while a cycle writes, its plan sits beside it, each write marked done as
it lands: `bipsim.ap.sync.journal`); and the sync server (ota/sync_server.py) over HTTP. A SIM is named by its
ICCID. Triggers are the CP's `%SLOTEV` URCs for the cards and the files' and the server's versions for the rest.
The rules are in `bipsim.ap.sync.merge`; this module only moves records and traces what it does.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import h11
import trio

from bipsim.ap.slot_lock import slot_lock
from bipsim.ap.sync.journal import (
    Op,
    migrate,
    ops_from_json,
    ops_to_json,
    reconcile,
    sms_index_key,
)
from bipsim.ap.sync.journal import SyncState as SyncState
from bipsim.ap.sync.merge import (
    Contact,
    Entry,
    MergeResult,
    Message,
    MessageStatus,
    Plan,
    Record,
    RecordError,
    Store,
    StoreKind,
    identify,
    merge,
    record_from_json,
)
from bipsim.ap.sync.sim_at import (
    FREE_RECORD,
    SMS_RECORD,
    RecordUnfit,
    SimDataError,
    cpbw,
    cpbw_delete,
    crsm_get_response,
    crsm_read_iccid,
    crsm_read_record,
    crsm_update_record,
    decode_iccid,
    decode_sms_record,
    encode_sms_record,
    fcp_records,
    parse_cpbr,
    parse_cpbs,
    parse_crsm,
    sim_form,
    sw_ok,
    with_status,
)
from bipsim.link.at_chat import AtResponse, AtTimeout
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer

S11, S12, S13 = "002:S11", "002:S12", "002:S13"
COMMAND_TIMEOUT = 10.0
_SLOTS = re.compile(r"^%SLOTS:\s*([\d,\s]+)$")
_SLOTEV = re.compile(r'^%SLOTEV:\s*(\d+),"?([a-z]+)"?$')
# +CPBW's refusals of an entry the record cannot hold (27.007 9.2.1: text string / dial string too long)
_UNFIT = {
    "+CME ERROR: 24",
    "+CME ERROR: 26",
    "+CME ERROR: text string too long",
    "+CME ERROR: dial string too long",
}
SW_FILE_NOT_FOUND = 0x6A82  # a card without EF_SMS: its SIM store holds contacts only


def _message_key(message: Message) -> tuple[str, str, str, bool]:
    """A message as the SIM shows it, status left out (reading one is an edit of it, not another message)."""
    stored = message.status in (MessageStatus.STO_SENT, MessageStatus.STO_UNSENT)
    return message.address, message.text, message.timestamp, stored


class AtPort(Protocol):
    """What the sync needs of DLC 1: the AP's AT chat (bipsim.link.at_chat.AtChat) or a test's fake."""

    async def command(
        self, line: str, *, timeout: float | None = None, step: str | None = None
    ) -> AtResponse: ...


class Security(Enum):
    """The security check's policy (the document's password, face, fingerprint... here decided in advance)."""

    PASS = "pass"
    FAIL = "fail"


class TriggerKind(Enum):
    """The preset operations of step 002:S11."""

    SIM_INSERTED = "sim_inserted"
    SIM_REMOVED = "sim_removed"
    VIRTUAL_ADDED = "virtual_added"
    VIRTUAL_DELETED = "virtual_deleted"
    EDIT = "edit"  # records added, deleted or edited on a store (the terminal's, a virtual SIM, the server)


@dataclass(frozen=True, slots=True)
class Trigger:
    kind: TriggerKind
    detail: str = ""


# what reading a store's JSON file raises when the file is missing, not JSON, or not the layout LocalStore and
# VirtualSims write (AttributeError/TypeError: a list where an object belongs; RecursionError: absurd nesting)
BAD_FILE = (OSError, ValueError, RecordError, KeyError, TypeError, AttributeError, RecursionError)


# the CP's %SLOTEV events (docs/protocols.md, "Card slots and card presence on DLC 1") as triggers of 002:S11
_SLOTEV_KINDS = {
    "inserted": TriggerKind.SIM_INSERTED,
    "removed": TriggerKind.SIM_REMOVED,
    "changed": TriggerKind.EDIT,
}


class SyncAborted(Exception):
    """A cycle stopped before the journal was written: every store is as before or was written completely with
    the merged set, and the next trigger finishes the job."""


def parse_slots(lines: Iterable[str]) -> dict[int, bool]:
    """`%SLOTS: 1,<p1>,2,<p2>` -> {slot: present}."""
    for line in lines:
        found = _SLOTS.match(line.strip())
        if found:
            numbers = [int(n) for n in found.group(1).replace(" ", "").split(",") if n]
            if len(numbers) % 2:
                raise SimDataError(f"odd %SLOTS answer {line!r}")
            return {numbers[i]: bool(numbers[i + 1]) for i in range(0, len(numbers), 2)}
    raise SimDataError("no %SLOTS: line")


def presence_triggers(before: Mapping[int, bool], after: Mapping[int, bool]) -> list[Trigger]:
    """The insertions and removals between two presence readings (a slot first seen full counts as inserted)."""
    out = []
    for slot in sorted(after):
        was, now = before.get(slot, False), after[slot]
        if now and not was:
            out.append(Trigger(TriggerKind.SIM_INSERTED, f"slot {slot}"))
        elif was and not now:
            out.append(Trigger(TriggerKind.SIM_REMOVED, f"slot {slot}"))
    return out


def _entries_from_json(obj: object) -> dict[str, Entry]:
    if not isinstance(obj, dict):
        raise RecordError("records is a JSON object")
    out = {}
    for identity, value in obj.items():
        record = record_from_json(value)
        changed = value.get("changed", 0.0)
        if isinstance(changed, bool) or not isinstance(changed, int | float):
            raise RecordError(f"{identity}: changed is a number")
        if not math.isfinite(changed):
            # Python's json reads NaN and Infinity: a NaN compares false with everything and breaks the merge's order
            raise RecordError(f"{identity}: changed is a finite number")
        out[str(identity)] = Entry(record, float(changed))
    return out


def _entries_to_json(entries: Mapping[str, Entry]) -> dict[str, Any]:
    return {
        identity: {**entry.record.to_json(), "changed": entry.changed} for identity, entry in entries.items()
    }


def _records_to_json(records: Mapping[str, Record]) -> dict[str, Any]:
    return {identity: record.to_json() for identity, record in records.items()}


def _records_from_json(obj: object) -> dict[str, Record]:
    if not isinstance(obj, dict):
        raise RecordError("a snapshot is a JSON object")
    return {str(identity): record_from_json(value) for identity, value in obj.items()}


def write_json(path: Path, data: object) -> None:
    """Replaces `path` atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _state_from_json(sync: Any) -> SyncState:
    return SyncState(
        _records_from_json(sync.get("merged", {})),
        {name: _records_from_json(snap) for name, snap in sync.get("snapshots", {}).items()},
        {name: {int(i): str(v) for i, v in idx.items()} for name, idx in sync.get("indexes", {}).items()},
        ops_from_json(sync.get("pending", {})),
    )


def _state_to_json(state: SyncState) -> dict[str, Any]:
    return {
        "merged": _records_to_json(state.merged),
        "snapshots": {name: _records_to_json(snap) for name, snap in state.snapshots.items()},
        "indexes": {name: {str(i): v for i, v in idx.items()} for name, idx in state.indexes.items()},
        "pending": ops_to_json(state.pending),
    }


@dataclass(slots=True)
class PlanFile:
    """A cycle's plan as the journal keeps it while the cycle writes: the state it started from (reconciled), the
    merged target, and its writes per store, each marked done as it lands."""

    state: SyncState
    merged: dict[str, Record]
    ops: dict[str, list[Op]]


class LocalStore:
    """The terminal's own store: `{"records": {...}, "sync": {...}}` in one JSON file, and beside it, while a
    cycle writes, the cycle's plan (`<file>.plan`, docs/protocols.md "The journal and its plan")."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def plan_path(self) -> Path:
        return self.path.with_name(self.path.name + ".plan")

    def load(self) -> tuple[dict[str, Entry], SyncState]:
        if not self.path.exists():
            return {}, SyncState()
        data = json.loads(self.path.read_text(encoding="utf-8"))
        return _entries_from_json(data.get("records", {})), _state_from_json(data.get("sync", {}))

    def save(self, records: Mapping[str, Entry], state: SyncState) -> None:
        write_json(self.path, {"records": _entries_to_json(records), "sync": _state_to_json(state)})

    def load_plan(self) -> PlanFile | None:
        if not self.plan_path.exists():
            return None
        data = json.loads(self.plan_path.read_text(encoding="utf-8"))
        return PlanFile(
            _state_from_json(data["state"]), _records_from_json(data["merged"]), ops_from_json(data["ops"])
        )

    def save_plan(self, plan: PlanFile) -> None:
        write_json(
            self.plan_path,
            {
                "state": _state_to_json(plan.state),
                "merged": _records_to_json(plan.merged),
                "ops": ops_to_json(plan.ops),
            },
        )

    def drop_plan(self) -> None:
        self.plan_path.unlink(missing_ok=True)


class VirtualSims:
    """The virtual SIMs: one JSON file `<profile>.json` holding `{"records": {...}}` per profile in a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def names(self) -> set[str]:
        return {path.stem for path in self.directory.glob("*.json")} if self.directory.is_dir() else set()

    def load(self, name: str) -> dict[str, Entry]:
        data = json.loads((self.directory / f"{name}.json").read_text(encoding="utf-8"))
        return _entries_from_json(data.get("records", {}) if isinstance(data, dict) else None)

    def save(self, name: str, records: Mapping[str, Entry]) -> None:
        write_json(self.directory / f"{name}.json", {"records": _entries_to_json(records)})


class ServerError(Exception):
    """The sync server failed (no connection, garbage, an HTTP error status)."""


class ServerClient:
    """The sync server's API (docs/protocols.md, "The sync server") over one HTTP/1.1 connection per request."""

    def __init__(self, url: str, token: str, tracer: Tracer = NULL_TRACER) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.path.endswith("/records"):
            raise ValueError(f"{url!r} is not http://HOST:PORT/sync/v1/<subscriber>/records")
        self.host, self.port, self.path = parts.hostname, parts.port or 80, parts.path
        self.token = token
        self.tracer = tracer

    async def _request(
        self, method: str, body: bytes = b"", headers: Iterable[tuple[str, str]] = (), step: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = h11.Connection(h11.CLIENT)
        all_headers = [
            ("host", f"{self.host}:{self.port}"),
            ("authorization", f"Bearer {self.token}"),
            ("content-length", str(len(body))),
            ("connection", "close"),
            *headers,
        ]
        self.tracer.emit(
            "ap",
            "sync",
            "http",
            f"{method} {self.path}",
            body,
            step=step,
            kind=Kind.HTTP_REQUEST,
            fields={"method": method, "target": self.path},
        )
        try:
            with trio.fail_after(COMMAND_TIMEOUT):
                stream = await trio.open_tcp_stream(self.host, self.port)
                async with stream:
                    data = conn.send(h11.Request(method=method, target=self.path, headers=all_headers)) or b""
                    data += conn.send(h11.Data(data=body)) or b""
                    data += conn.send(h11.EndOfMessage()) or b""
                    await stream.send_all(data)
                    status, answer_headers, answer = 0, {}, bytearray()
                    while True:
                        event = conn.next_event()
                        if event is h11.NEED_DATA:
                            conn.receive_data(bytes(await stream.receive_some(65536)))
                        elif isinstance(event, h11.Response):
                            status = event.status_code
                            answer_headers = {
                                k.decode().lower(): v.decode("latin-1") for k, v in event.headers
                            }
                        elif isinstance(event, h11.Data):
                            answer += event.data
                        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                            break
        except (OSError, trio.TooSlowError, h11.ProtocolError, trio.BrokenResourceError) as exc:
            self.tracer.emit(
                "sync",
                "ap",
                "http",
                f"sync server failed: {exc}",
                kind=Kind.HTTP_ERROR,
                error=True,
                fields={"reason": str(exc) or type(exc).__name__},
            )
            raise ServerError(f"sync server: {exc or type(exc).__name__}") from None
        self.tracer.emit(
            "sync",
            "ap",
            "http",
            f"{status}",
            bytes(answer),
            kind=Kind.HTTP_RESPONSE,
            error=status >= 400,
            fields={"status": status},
        )
        if status != 200:
            raise ServerError(f"sync server answered {status}")
        return status, answer_headers, bytes(answer)

    async def get(self, step: str | None = S12) -> tuple[str, dict[str, Entry]]:
        """The server's version (its ETag) and records."""
        _, headers, body = await self._request("GET", step=step)
        try:
            data = json.loads(body)
            return headers.get("etag", '"0"'), _entries_from_json(data["records"])
        except (ValueError, KeyError, TypeError, RecordError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than the parser's stack, garbage like any other
            self.tracer.emit(
                "sync",
                "ap",
                "http",
                "garbage from the sync server",
                kind=Kind.HTTP_ERROR,
                error=True,
                fields={"reason": str(exc)},
            )
            raise ServerError(f"sync server sent garbage: {exc}") from None

    async def put(self, etag: str, records: Mapping[str, Entry]) -> str:
        """Replaces the server's records if it still has version `etag`; the new version's ETag."""
        body = json.dumps({"records": _entries_to_json(records)}, sort_keys=True).encode()
        headers = [("content-type", "application/json"), ("if-match", etag)]
        _, answer_headers, _ = await self._request("PUT", body, headers, step=S13)
        return answer_headers.get("etag", etag)

    async def version(self) -> str:
        """The server's version (ETag) alone, to notice an edit made there (002:S11)."""
        _, headers, _ = await self._request("GET", step=S11)
        return headers.get("etag", "")


@dataclass(slots=True)
class SimRead:
    """One physical SIM as read: its store name (by ICCID), slot, EF_ADN's records in use and size, the EF_ADN
    records the sync leaves alone (no number it can read), and EF_SMS's: the messages by record number, each used
    record's bytes, the used records that hold no message the sync carries (left alone, never taken for free) and
    the record count (0: the card has no EF_SMS). `imsi` names it in a journal written before ICCIDs."""

    name: str
    slot: int
    by_index: dict[int, Record]
    total: int
    imsi: str = ""
    adn_kept: set[int] = field(default_factory=set)
    sms_by_index: dict[int, Message] = field(default_factory=dict)
    sms_raw: dict[int, bytes] = field(default_factory=dict)
    sms_kept: set[int] = field(default_factory=set)
    sms_total: int = 0


@dataclass(slots=True)
class SimWrite:
    """One planned write of a SIM: the plan's write, its AT line, what the SIM holds there now (a refusal leaves
    it) and whether the modem may refuse it as too long for the record (+CPBW)."""

    op: Op
    line: str
    held: Record | None
    skippable: bool = False


@dataclass(frozen=True, slots=True)
class CycleReport:
    """What one cycle did: its trigger, whether it ran, the merge, and the writes per store."""

    trigger: Trigger
    ran: bool
    result: MergeResult | None = None
    writes: Mapping[str, int] = field(default_factory=dict)
    aborted: str = ""
    skipped: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # per SIM: records it could not hold


def _sim_landed(sim: SimRead) -> Callable[[Op], bool]:
    """Whether the SIM as read shows a planned write: the record at its record number (a message as the SIM gives
    back what was written), or the record number free for a deletion."""

    def landed(op: Op) -> bool:
        if op.index is None:
            return False
        if op.file == "adn":
            if op.index in sim.adn_kept:
                return False
            return sim.by_index.get(op.index) == op.record
        if op.file == "sms":
            held = sim.sms_by_index.get(op.index)
            if op.record is None:
                return held is None and op.index not in sim.sms_kept
            return isinstance(op.record, Message) and held is not None and sim_form(op.record) == held
        return False

    return landed


def _whole_landed(current: Mapping[str, Entry]) -> Callable[[Op], bool]:
    """Whether a store written whole (the server, a virtual SIM) holds a planned write."""

    def landed(op: Op) -> bool:
        entry = current.get(op.identity)
        return entry is None if op.record is None else entry is not None and entry.record == op.record

    return landed


class SyncService:
    """The sync service of one terminal. `cycle` runs one sync for one trigger; `watch` detects the triggers."""

    def __init__(
        self,
        port: AtPort | None,
        local: LocalStore,
        virtual: VirtualSims | None = None,
        server: ServerClient | None = None,
        *,
        security: Security = Security.PASS,
        tracer: Tracer = NULL_TRACER,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.port = port
        self.local = local
        self.virtual = virtual
        self.server = server
        self.security = security
        self.tracer = tracer
        # wall-clock time: a SIM's change is compared with the times the terminal's store and the server keep
        self.clock = clock or time.time
        self.cycles: list[CycleReport] = []
        self._lock = trio.Lock()  # one cycle at a time: a trigger during a cycle waits for it
        self._seen: dict[str, tuple[int, int]] = {}  # the store files as the last cycle left them
        self._written: dict[str, tuple[int, int] | None] = {}  # the store files the running cycle wrote
        self._server_etag: str | None = None  # the server's version as the last cycle left it
        self._pending: list[Trigger] = []  # changes the CP reported (URCs) or a cycle met, not yet synced
        self._wake = trio.Event()  # set when one is added: the watch runs its cycle at once

    @staticmethod
    def _fingerprint(path: Path) -> tuple[int, int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _fingerprints(self) -> dict[str, tuple[int, int]]:
        """(mtime, size) of the terminal's store and of each virtual SIM's file: a change is an edit (002:S11)."""
        paths = {"local": self.local.path}
        if self.virtual is not None:
            paths.update(
                {f"virtual:{name}": self.virtual.directory / f"{name}.json" for name in self.virtual.names()}
            )
        out = {}
        for name, path in paths.items():
            found = self._fingerprint(path)
            if found is not None:
                out[name] = found
        return out

    def _event(
        self, event: str, summary: str, step: str | None = None, error: bool = False, **facts: Any
    ) -> None:
        self.tracer.emit(
            "ap",
            "ap",
            "app",
            summary,
            step=step,
            error=error,
            kind=Kind.APP_EVENT,
            fields={"event": event, **facts},
        )

    async def _at(self, line: str, step: str | None) -> AtResponse:
        assert self.port is not None
        try:
            return await self.port.command(line, timeout=COMMAND_TIMEOUT, step=step)
        except AtTimeout as exc:
            raise SyncAborted(f"no answer to {line}: {exc}") from None

    async def _ok(self, line: str, step: str | None) -> AtResponse:
        answer = await self._at(line, step)
        if not answer.ok:
            raise SyncAborted(f"{line}: {answer.final}")
        return answer

    async def slots(self, step: str | None = S11) -> dict[int, bool]:
        """The CP's card presence (`AT%SLOTS?`)."""
        if self.port is None:
            return {}
        answer = await self._ok("AT%SLOTS?", step)
        try:
            return parse_slots(answer.lines)
        except SimDataError as exc:
            raise SyncAborted(str(exc)) from None

    async def _charset(self) -> str | None:
        """The modem's +CSCS set before the cycle changes it (None: no port, or the modem does not say)."""
        if self.port is None:
            return None
        answer = await self._at("AT+CSCS?", None)
        for line in answer.lines if answer.ok else ():
            found = re.match(r'\s*\+CSCS:\s*"([^"]+)"', line)
            if found:
                return found.group(1)
        return None

    async def _select(self, slot: int) -> None:
        await self._ok(f"AT%SLOT={slot}", None)

    async def _read_sim(self, slot: int) -> SimRead:
        """Reads the SIM in `slot` with the line's slot held (ap/slot_lock.py) and set back to slot 1 after."""
        assert self.port is not None
        async with slot_lock(self.port):
            try:
                await self._select(slot)
                return await self._read_selected(slot)
            finally:
                with trio.CancelScope(shield=True):
                    await self._back_to_slot_1()

    async def _back_to_slot_1(self) -> None:
        try:
            await self._at("AT%SLOT=1", None)
        except SyncAborted:
            pass

    async def _read_selected(self, slot: int) -> SimRead:
        await self._ok('AT+CSCS="UCS2"', S12)
        imsi = next((line.strip() for line in (await self._ok("AT+CIMI", S12)).lines if line.strip()), "")
        iccid = ""
        sw, data = await self._crsm(crsm_read_iccid(), S12)
        try:
            iccid = decode_iccid(data) if sw_ok(sw) else ""
        except SimDataError as exc:
            self._event(
                "sync_bad_record", f"SIM in slot {slot}: {exc}", S12, error=True, slot=slot, reason=str(exc)
            )
            raise SyncAborted(f"slot {slot}: {exc}") from None
        await self._ok('AT+CPBS="SM"', S12)
        try:
            _, total = parse_cpbs((await self._ok("AT+CPBS?", S12)).lines)
            by_index: dict[int, Record] = dict(parse_cpbr((await self._ok(f"AT+CPBR=1,{total}", S12)).lines))
        except SimDataError as exc:
            self._event(
                "sync_bad_record", f"SIM in slot {slot}: {exc}", S12, error=True, slot=slot, reason=str(exc)
            )
            raise SyncAborted(f"slot {slot}: {exc}") from None
        # the card's identity is its ICCID (TS 102 221 13.2); a card without EF_ICCID falls back to its IMSI
        sim = SimRead(f"sim:{iccid or imsi or slot}", slot, by_index, total, imsi=imsi)
        for index, record in sorted(by_index.items()):
            if isinstance(record, Contact) and not record.number:
                # the CP shows a number it cannot decode (a bad BCD digit or length, TS 31.102 4.4.2.3) as none: the
                # record stays out of the merge, as it is on the card, and is never taken for a free one
                del sim.by_index[index]
                sim.adn_kept.add(index)
                self._event(
                    "sync_record_kept",
                    f"{sim.name}: EF_ADN record {index} left alone: no number that can be read",
                    S12,
                    store=sim.name,
                    index=index,
                    reason="no number that can be read (bad BCD)",
                )
        await self._read_sms(sim)
        return sim

    async def _crsm(self, line: str, step: str | None) -> tuple[int, bytes]:
        answer = await self._ok(line, step)
        try:
            return parse_crsm(answer.lines)
        except SimDataError as exc:
            raise SyncAborted(f"{line}: {exc}") from None

    async def _read_sms(self, sim: SimRead) -> None:
        """EF_SMS record by record (+CRSM READ RECORD: a message's status stays as it is). A used record that holds
        no message the sync can carry is `sync_record_kept` and left alone; a card without EF_SMS has none."""
        sw, fcp = await self._crsm(crsm_get_response(), S12)
        if sw == SW_FILE_NOT_FOUND:
            return
        try:
            if not sw_ok(sw):
                raise SimDataError(f"EF_SMS: card answered {sw:04X}")
            length, total = fcp_records(fcp)
            if length != SMS_RECORD:
                raise SimDataError(f"EF_SMS records of {length} octets, not {SMS_RECORD}")
        except SimDataError as exc:
            self._event(
                "sync_bad_record", f"{sim.name}: {exc}", S12, error=True, slot=sim.slot, reason=str(exc)
            )
            raise SyncAborted(f"slot {sim.slot}: {exc}") from None
        sim.sms_total = total
        for index in range(1, total + 1):
            sw, record = await self._crsm(crsm_read_record(index), S12)
            if not sw_ok(sw) or len(record) != SMS_RECORD:
                raise SyncAborted(
                    f"{sim.name}: READ RECORD {index} of EF_SMS: {sw:04X}, {len(record)} octets"
                )
            try:
                message = decode_sms_record(record)
            except SimDataError as exc:
                sim.sms_kept.add(index)
                self._event(
                    "sync_record_kept",
                    f"{sim.name}: EF_SMS record {index} left alone: {exc}",
                    S12,
                    store=sim.name,
                    index=index,
                    reason=str(exc),
                )
                continue
            if message is not None:
                sim.sms_by_index[index] = message
                sim.sms_raw[index] = record

    def _sim_ops(
        self,
        sim: SimRead,
        plan: Plan,
        index_of: dict[int, str],
        sms_index_of: dict[int, str],
        current: Mapping[str, Entry],
    ) -> tuple[list[SimWrite], dict[str, int], dict[str, int], dict[str, Record | None]]:
        """Plans `plan` on the SIM: contacts with +CPBW, messages with +CRSM UPDATE RECORD, each write with the
        record number it goes to. Returns the writes, the identity -> record number maps before them (renames
        made), and the records skipped (what the SIM holds under that identity instead, None for nothing). A record
        the SIM cannot hold (a message over one record) is `sync_record_unfit`, a record with no free place
        `sync_sim_full`, an EF_ADN record the sync leaves alone (no number it can read) is never written: skipped
        for this SIM and kept everywhere else."""
        by_identity = {identity: index for index, identity in index_of.items()}
        sms_by_identity = {identity: index for index, identity in sms_index_of.items()}
        for old, new in plan.rename.items():
            for table in (by_identity, sms_by_identity):
                if old in table:
                    table[new] = table.pop(old)
        before = (dict(by_identity), dict(sms_by_identity))
        writes: list[SimWrite] = []
        skipped: dict[str, Record | None] = {}
        for identity in sorted(plan.delete):
            if identity in by_identity:
                index = by_identity.pop(identity)
                if index in sim.adn_kept:
                    kept = current.get(identity)
                    skipped[identity] = kept.record if kept is not None else None
                    continue
                writes.append(SimWrite(Op(identity, None, "adn", index), cpbw_delete(index), None))
            elif identity in sms_by_identity:
                index = sms_by_identity.pop(identity)
                writes.append(
                    SimWrite(Op(identity, None, "sms", index), crsm_update_record(index, FREE_RECORD), None)
                )
        used = set(by_identity.values()) | sim.adn_kept
        free = (i for i in range(1, sim.total + 1) if i not in used)
        sms_used = set(sms_by_identity.values()) | sim.sms_kept
        sms_free = (i for i in range(1, sim.sms_total + 1) if i not in sms_used)
        for identity in sorted(plan.put):
            record = plan.put[identity]
            if isinstance(record, Contact):
                at = by_identity.get(identity)
                held = sim.by_index.get(at) if at is not None else None
                if at is not None and at in sim.adn_kept:
                    kept = current.get(identity)
                    skipped[identity] = kept.record if kept is not None else None
                    continue
                if at is None:
                    at = next(free, None)
                    if at is None:
                        self._full(sim, identity, skipped)
                        continue
                by_identity[identity] = at
                writes.append(SimWrite(Op(identity, record, "adn", at), cpbw(at, record), held, True))
                continue
            at = sms_by_identity.get(identity)
            was_message = sim.sms_by_index.get(at) if at is not None else None
            try:
                if (
                    was_message is not None
                    and at is not None
                    and replace(was_message, status=record.status) == record
                ):
                    data = with_status(sim.sms_raw[at], record.status)  # read, sent: the status octet alone
                else:
                    data = encode_sms_record(record)
            except RecordUnfit as exc:
                self._unfit(sim, identity, str(exc), skipped, was_message)
                continue
            if at is None:
                at = next(sms_free, None)
                if at is None:
                    self._full(sim, identity, skipped)
                    continue
                sms_by_identity[identity] = at
            writes.append(
                SimWrite(Op(identity, record, "sms", at), crsm_update_record(at, data), was_message)
            )
        return writes, before[0], before[1], skipped

    async def _write_sim(
        self,
        sim: SimRead,
        planned: tuple[list[SimWrite], dict[str, int], dict[str, int], dict[str, Record | None]],
        landed: Callable[[], None],
    ) -> tuple[int, dict[int, str], dict[int, str], dict[str, Record | None]]:
        """Carries out the SIM's planned writes with the line's slot held (ap/slot_lock.py), each marked done in
        the plan as it lands (`landed`). Returns the writes, the new EF_ADN and EF_SMS index maps and the records
        skipped. A +CPBW the modem refuses as too long (+CME ERROR: 24 or 26) is `sync_record_unfit` and skipped;
        any other refusal aborts the cycle."""
        writes, by_identity, sms_by_identity, skipped = planned
        count = 0
        assert self.port is not None
        async with slot_lock(self.port):
            try:
                await self._select(sim.slot)
                await self._ok('AT+CSCS="UCS2"', S13)
                await self._ok('AT+CPBS="SM"', S13)
                for write in writes:
                    op = write.op
                    if op.file == "adn":
                        if not await self._write(write.line, sim, skippable=write.skippable):
                            skipped[op.identity] = write.held
                            continue
                    else:
                        await self._write_crsm(write.line, sim)
                    op.done = True
                    landed()
                    count += 1
                    table = by_identity if op.file == "adn" else sms_by_identity
                    if op.record is None:
                        table.pop(op.identity, None)
                    else:
                        assert op.index is not None
                        table[op.identity] = op.index
            finally:
                with trio.CancelScope(shield=True):
                    await self._back_to_slot_1()
        return (
            count,
            {index: identity for identity, index in by_identity.items()},
            {index: identity for identity, index in sms_by_identity.items()},
            skipped,
        )

    def _full(self, sim: SimRead, identity: str, skipped: dict[str, Record | None]) -> None:
        self._event(
            "sync_sim_full",
            f"{sim.name} is full: {identity} not written",
            S13,
            error=True,
            store=sim.name,
            identity=identity,
        )
        skipped[identity] = None

    def _unfit(
        self, sim: SimRead, identity: str, reason: str, skipped: dict[str, Record | None], held: Record | None
    ) -> None:
        self._event(
            "sync_record_unfit",
            f"{sim.name} cannot hold {identity}: {reason}",
            S13,
            error=True,
            store=sim.name,
            identity=identity,
            reason=reason,
        )
        skipped[identity] = held

    async def _write(self, line: str, sim: SimRead, skippable: bool = False) -> bool:
        """Sends one +CPBW; False when the modem refused it as too long for the record (and `skippable`)."""
        answer = await self._at(line, S13)
        if answer.ok:
            return True
        if skippable and answer.final in _UNFIT:
            self._event(
                "sync_record_unfit",
                f"{sim.name}: {line} -> {answer.final}",
                S13,
                error=True,
                store=sim.name,
                reason=answer.final,
            )
            return False
        self._event(
            "sync_write_refused",
            f"{sim.name}: {line} -> {answer.final}",
            S13,
            error=True,
            store=sim.name,
            result=answer.final,
        )
        raise SyncAborted(f"{sim.name} refused {line}: {answer.final}")

    async def _write_crsm(self, line: str, sim: SimRead) -> None:
        """One UPDATE RECORD of EF_SMS; the card's refusal (its status word) aborts the cycle."""
        answer = await self._at(line, S13)
        result = answer.final
        if answer.ok:
            try:
                sw, _ = parse_crsm(answer.lines)
            except SimDataError as exc:
                sw, result = 0, str(exc)
            else:
                if sw_ok(sw):
                    return
                result = f"{sw:04X}"
        self._event(
            "sync_write_refused",
            f"{sim.name}: {line} -> {result}",
            S13,
            error=True,
            store=sim.name,
            result=result,
        )
        raise SyncAborted(f"{sim.name} refused {line}: {result}")

    async def cycle(self, trigger: Trigger) -> CycleReport:
        """One sync for one trigger (a trigger during a cycle waits for it)."""
        async with self._lock:
            self._event(
                "sync_trigger",
                f"sync trigger: {trigger.kind.value} {trigger.detail}",
                S11,
                trigger=trigger.kind.value,
                detail=trigger.detail,
            )
            self._event(
                "sync_security",
                f"security check: {self.security.value}",
                None,
                error=self.security is Security.FAIL,
                result=self.security.value,
            )
            # the store files as the cycle found them: an edit made while it runs is one the next cycle takes
            before = self._fingerprints()
            self._written = {}
            if self.security is Security.FAIL:
                report = CycleReport(trigger, False, aborted="security check failed")
                self._event(
                    "sync_aborted",
                    "sync aborted: security check failed",
                    None,
                    error=True,
                    reason=report.aborted,
                )
            else:
                charset: str | None = None
                try:
                    charset = await self._charset()
                    report = await self._run(trigger, before)
                except SyncAborted as exc:
                    # no step: an abort ends the cycle in S12 or S13 alike, and is neither reading nor synchronising
                    self._event("sync_aborted", f"sync aborted: {exc}", None, error=True, reason=str(exc))
                    report = CycleReport(trigger, False, aborted=str(exc))
                finally:
                    # +CSCS is the modem's for every TE user (27.007 5.5): the AP's other users of the line get
                    # back the set they had before the sync chose UCS2
                    if self.port is not None and charset is not None and charset != "UCS2":
                        with trio.CancelScope(shield=True):
                            try:
                                await self._at(f'AT+CSCS="{charset}"', None)
                            except SyncAborted:
                                pass
            self._seen = {**before, **{k: v for k, v in self._written.items() if v is not None}}
            self.cycles.append(report)
            return report

    def _again(self, trigger: Trigger) -> None:
        """A change noticed while a cycle runs (a URC, a file edited under it): the next cycle is for it."""
        self._pending.append(trigger)
        self._wake.set()

    def _changed_since(self, name: str, path: Path, before: Mapping[str, tuple[int, int]]) -> bool:
        """Whether the file of store `name` changed since the cycle read it (an external edit meanwhile)."""
        return self._fingerprint(path) != before.get(name)

    async def _run(self, trigger: Trigger, before: Mapping[str, tuple[int, int]]) -> CycleReport:
        now = self.clock()
        try:
            local_records, state = self.local.load()
        except BAD_FILE as exc:
            # a store edited by hand or by another program: the cycle stops and the file is left for the user
            raise SyncAborted(
                f"the terminal's store {self.local.path}: {type(exc).__name__}: {exc}"
            ) from None
        try:
            interrupted = self.local.load_plan()
        except BAD_FILE as exc:
            raise SyncAborted(
                f"the journal's plan {self.local.plan_path}: {type(exc).__name__}: {exc}"
            ) from None
        plans: list[Mapping[str, list[Op]]] = [state.pending]
        if interrupted is not None:
            # a cycle stopped while it wrote: its plan starts from the state it started from, and its target is the
            # last merged set as far as this cycle is concerned
            state = interrupted.state
            state.merged = dict(interrupted.merged)
            plans = [state.pending, interrupted.ops]
        stores: list[Store] = [Store("local", StoreKind.LOCAL, local_records, state.snapshots.get("local"))]
        # 002:S12: read every reachable store
        reads = [
            await self._read_sim(slot) for slot, present in sorted((await self.slots(S12)).items()) if present
        ]
        for sim in reads:
            if sim.imsi and migrate(state, f"sim:{sim.imsi}", sim.name):
                # a journal from before SIMs were keyed by their ICCID: the card's snapshot and record numbers
                self._event(
                    "sync_journal_migrated",
                    f"journal: sim:{sim.imsi} is now {sim.name}",
                    None,
                    old=f"sim:{sim.imsi}",
                    new=sim.name,
                )
        landed: dict[str, Callable[[Op], bool]] = {sim.name: _sim_landed(sim) for sim in reads}
        virtual_names = sorted(self.virtual.names()) if self.virtual else []
        virtual_entries: dict[str, dict[str, Entry]] = {}
        for name in virtual_names:
            assert self.virtual is not None
            try:
                virtual_entries[name] = self.virtual.load(name)
            except BAD_FILE as exc:
                # OSError: the profile's file went between names() and load() (deleted, or the eSIM removed)
                raise SyncAborted(f"virtual SIM {name}: {type(exc).__name__}: {exc}") from None
            landed[f"virtual:{name}"] = _whole_landed(virtual_entries[name])
        etag = ""
        server_entries: dict[str, Entry] = {}
        if self.server is not None:
            try:
                etag, server_entries = await self.server.get()
                self._server_etag = etag
            except ServerError as exc:
                raise SyncAborted(str(exc)) from None
            landed["server"] = _whole_landed(server_entries)
        done, missed, state.pending = reconcile(state, plans, landed)
        if interrupted is not None or done or missed:
            self._event(
                "sync_resumed",
                f"journal: {done} planned writes had landed, {missed} had not",
                None,
                landed=done,
                missed=missed,
                pending=sorted(state.pending),
            )
        for name in virtual_names:
            stores.append(
                Store(
                    f"virtual:{name}",
                    StoreKind.VIRTUAL,
                    virtual_entries[name],
                    state.snapshots.get(f"virtual:{name}"),
                )
            )
        if self.server is not None:
            stores.append(Store("server", StoreKind.SERVER, server_entries, state.snapshots.get("server")))
        sims, sim_stores = self._sim_stores(reads, state, stores, now)
        stores[1:1] = sim_stores
        result = merge(state.merged, stores)
        self._event(
            "sync_merged",
            f"merged {len(result.merged)} records",
            S13,
            cases=sorted(int(case) for case in result.cases),
            conflicts=len(result.conflicts),
            records=len(result.merged),
            stores=[store.name for store in stores],
        )
        changed = {
            identity: max(
                (
                    s.current[identity].changed
                    for s in stores
                    if identity in s.current and s.current[identity].record == record
                ),
                default=now,
            )
            for identity, record in result.merged.items()
        }
        entries_out = {
            identity: Entry(record, changed[identity]) for identity, record in result.merged.items()
        }
        # the plan, in the journal before the first write (docs/protocols.md, "The journal and its plan")
        by_name = {store.name: store for store in stores}
        ops: dict[str, list[Op]] = {}
        for name in ["server", *(f"virtual:{v}" for v in virtual_names)]:
            if name in result.plans and not result.plans[name].empty:
                plan = result.plans[name]
                ops[name] = [Op(i, r) for i, r in sorted(plan.put.items())] + [
                    Op(i, None) for i in sorted(plan.delete)
                ]
        sim_plans = {}
        for name, (sim, index_of, sms_index_of) in sims.items():
            sim_plans[name] = self._sim_ops(
                sim, result.plans[name], index_of, sms_index_of, by_name[name].current
            )
            if sim_plans[name][0]:
                ops[name] = [write.op for write in sim_plans[name][0]]
        journal = PlanFile(copy.deepcopy(state), dict(result.merged), ops)

        def landed_one() -> None:
            try:
                self.local.save_plan(journal)
            except OSError as exc:
                raise SyncAborted(f"the journal {self.local.plan_path}: {exc}") from None

        if ops:
            landed_one()
        # 002:S13: the server first (its If-Match refuses a stale write), then the SIMs, the virtual SIMs, and the
        # terminal's store last with the journal: until then the plan says what has landed.
        writes: dict[str, int] = {}
        skipped: dict[str, dict[str, Record | None]] = {}
        if "server" in ops:
            assert self.server is not None
            try:
                self._server_etag = await self.server.put(etag, entries_out)
            except ServerError as exc:
                if "412" in str(exc):
                    self._again(Trigger(TriggerKind.EDIT, "server"))  # another terminal wrote meanwhile
                raise SyncAborted(str(exc)) from None
            for op in ops["server"]:
                op.done = True
            landed_one()
            writes["server"] = 1
        for name, (sim, _, _) in sims.items():
            count, state.indexes[name], sms_indexes, skipped[name] = await self._write_sim(
                sim, sim_plans[name], landed_one
            )
            if sim.sms_total:
                state.indexes[sms_index_key(name)] = sms_indexes
            writes[name] = count
        untouched: set[str] = set()
        for name in virtual_names:
            assert self.virtual is not None
            store_name = f"virtual:{name}"
            if store_name not in ops:
                continue
            path = self.virtual.directory / f"{name}.json"
            if self._changed_since(store_name, path, before):
                # edited while the cycle ran: not overwritten; the next cycle merges the edit
                untouched.add(store_name)
                self._again(Trigger(TriggerKind.EDIT, store_name))
                continue
            try:
                self.virtual.save(name, entries_out)
            except OSError as exc:
                raise SyncAborted(f"virtual SIM {name}: {exc}") from None
            self._written[store_name] = self._fingerprint(path)
            for op in ops[store_name]:
                op.done = True
            landed_one()
            writes[store_name] = 1
        for store in stores:
            if store.name in untouched:
                continue
            snapshot = {i: r for i, r in result.merged.items() if store.takes(r)}
            # a record the SIM could not hold: its snapshot is what the SIM holds, so it is no change of the SIM's
            for identity, held in skipped.get(store.name, {}).items():
                if held is None:
                    snapshot.pop(identity, None)
                else:
                    snapshot[identity] = held
            state.snapshots[store.name] = snapshot
        state.merged = dict(result.merged)
        writes["local"] = int(not result.plans["local"].empty)
        if self._changed_since("local", self.local.path, before):
            # the user's store was edited while the cycle ran: it is not overwritten; the plan stays in the journal
            # and the next cycle takes the edit with what this one wrote
            self._again(Trigger(TriggerKind.EDIT, "local"))
            raise SyncAborted(f"the terminal's store {self.local.path} changed during the cycle")
        try:
            self.local.save(entries_out, state)
            self._written["local"] = self._fingerprint(self.local.path)
            self.local.drop_plan()
        except OSError as exc:
            # the journal stays as it was (write_json replaces atomically): the next trigger redoes the cycle
            raise SyncAborted(f"the terminal's store {self.local.path}: {exc}") from None
        self._event("sync_done", f"sync done: {sum(writes.values())} writes", None, writes=writes)
        unheld = {name: tuple(sorted(ids)) for name, ids in skipped.items() if ids}
        return CycleReport(trigger, True, result, writes, skipped=unheld)

    def _sim_stores(
        self, reads: list[SimRead], state: SyncState, others: list[Store], now: float
    ) -> tuple[dict[str, tuple[SimRead, dict[int, str], dict[int, str]]], list[Store]]:
        """Each SIM read as a store. A message the SIM holds as written from another store's (an SMS-SUBMIT keeps
        no time stamp) is taken for that store's record: the one at a record number the last sync wrote, else an
        equal one of the merged set or of another store; the record numbers give identities (merge.identify)."""
        known: dict[tuple[str, str, str, bool], Message] = {}
        for record in [*state.merged.values(), *(e.record for s in others for e in s.current.values())]:
            if isinstance(record, Message):
                form = sim_form(record)
                if form is not None:
                    known.setdefault(_message_key(form), record)
        sims: dict[str, tuple[SimRead, dict[int, str], dict[int, str]]] = {}
        stores: list[Store] = []
        for sim in reads:
            base = state.snapshots.get(sim.name)
            previous_sms = state.indexes.get(sms_index_key(sim.name), {})
            for index, message in list(sim.sms_by_index.items()):
                was = (base or {}).get(previous_sms.get(index, ""))
                form = sim_form(was) if isinstance(was, Message) else None
                if (
                    isinstance(was, Message)
                    and form is not None
                    and _message_key(form) == _message_key(message)
                ):
                    sim.sms_by_index[index] = replace(was, status=message.status)
                else:
                    found = known.get(_message_key(message))
                    if found is not None:
                        sim.sms_by_index[index] = replace(found, status=message.status)
            contacts_base = {i: r for i, r in (base or {}).items() if isinstance(r, Contact)}
            messages_base = {i: r for i, r in (base or {}).items() if isinstance(r, Message)}
            contacts, index_of = identify(state.indexes.get(sim.name, {}), contacts_base, sim.by_index)
            for index in sorted(sim.adn_kept):
                # a record the sync leaves alone (no number it can read) that the last sync knew: for the merge the SIM
                # still holds it as it was, so it is neither deleted elsewhere nor written over (_sim_ops skips it)
                kept_id = state.indexes.get(sim.name, {}).get(index)
                if (
                    kept_id is not None
                    and kept_id not in contacts
                    and isinstance(contacts_base.get(kept_id), Contact)
                ):
                    contacts[kept_id] = contacts_base[kept_id]
                    index_of[index] = kept_id
            messages, sms_index_of = identify(previous_sms, messages_base, dict(sim.sms_by_index))
            records = {**contacts, **messages}
            entries = {
                identity: Entry(record, 0.0 if base and base.get(identity) == record else now)
                for identity, record in records.items()
            }
            holds = frozenset({Contact, Message}) if sim.sms_total else frozenset({Contact})
            stores.append(Store(sim.name, StoreKind.PHYSICAL, entries, base, holds))
            sims[sim.name] = (sim, index_of, sms_index_of)
        return sims, stores

    def _slot_event(self, line: str) -> None:
        """A `%SLOTEV: <slot>,"<event>"` URC of the CP (docs/protocols.md, "Card slots and card presence on DLC 1"):
        a card inserted or removed, or its phonebook or messages written by another line, is a trigger of 002:S11,
        for the next cycle (at once when none runs)."""
        found = _SLOTEV.match(line.strip())
        kind = _SLOTEV_KINDS.get(found.group(2)) if found else None
        if found is None or kind is None:
            self._event("sync_bad_urc", f"not a %SLOTEV the sync knows: {line!r}", error=True, line=line)
            return
        self._again(Trigger(kind, f"slot {found.group(1)}"))

    async def _listen(self) -> bool:
        """Asks the CP for its `%SLOTEV` URCs on this line; False when there is no line or the CP does not know them
        (card presence is then asked with `AT%SLOTS?` at every poll)."""
        add = getattr(self.port, "add_urc_handler", None)
        if self.port is None or add is None:
            return False
        add("%SLOTEV:", self._slot_event)
        try:
            return (await self._at("AT%SLOTEV=1", None)).ok
        except SyncAborted:
            return False

    async def watch(self, poll: float = 1.0) -> None:
        """Detects the triggers of 002:S11: card presence once at start (`AT%SLOTS?`), then the CP's `%SLOTEV` URCs
        (a card inserted or removed, its records written by another line; a CP without them is asked `AT%SLOTS?`
        every `poll` seconds); every `poll` seconds, virtual SIMs added or deleted (their directory), edits of the
        terminal's store or a virtual SIM (their files changed since the cycle read them) and, while the security
        policy passes, edits on the server (its version moved). Each change runs one cycle, and a change met while
        a cycle runs runs the next one; nothing else does."""
        virtual: set[str] = set()
        self._seen = self._fingerprints()
        urcs = await self._listen()
        presence: dict[int, bool] = {}
        first = True
        while True:
            self._wake = trio.Event()
            triggers: list[Trigger] = []
            if self.port is not None and (first or not urcs):
                try:
                    now = await self.slots(S11)
                except SyncAborted as exc:
                    self._event(
                        "sync_presence_failed", f"card presence unknown: {exc}", error=True, reason=str(exc)
                    )
                    now = presence
                triggers += presence_triggers(presence, now)
                presence = now
            first = False
            triggers += self._pending
            self._pending = []
            names = self.virtual.names() if self.virtual else set()
            triggers += [Trigger(TriggerKind.VIRTUAL_ADDED, name) for name in sorted(names - virtual)]
            triggers += [Trigger(TriggerKind.VIRTUAL_DELETED, name) for name in sorted(virtual - names)]
            seen = self._fingerprints()
            triggers += [
                Trigger(TriggerKind.EDIT, name)
                for name in sorted(seen)
                if name in self._seen and seen[name] != self._seen[name]
            ]
            if "local" in seen and "local" not in self._seen:
                triggers.append(Trigger(TriggerKind.EDIT, "local"))
            self._seen = seen
            virtual = names
            # a failed security check means no request anywhere (issue 20): the server is not asked either, and
            # the next trigger from elsewhere is the retry
            if self.server is not None and self.security is Security.PASS:
                try:
                    etag = await self.server.version()
                except ServerError as exc:
                    self._event("sync_server_unreachable", str(exc), error=True, reason=str(exc))
                else:
                    if self._server_etag is not None and etag != self._server_etag:
                        triggers.append(Trigger(TriggerKind.EDIT, "server"))
                    self._server_etag = etag
            # one change seen twice (a URC and the file compare, a cycle's own report and the next look) is one
            for trigger in dict.fromkeys(triggers):
                await self.cycle(trigger)
            if self._pending:
                continue
            with trio.move_on_after(poll):
                await self._wake.wait()

    async def edit_local(self, put: Mapping[str, Record] = {}, delete: Iterable[str] = ()) -> CycleReport:
        """An edit on the terminal's store (the user's contacts app): written, then a cycle runs for it."""
        async with self._lock:
            records, state = self.local.load()
            now = self.clock()
            for identity in delete:
                records.pop(identity, None)
            for identity, record in put.items():
                records[identity] = Entry(record, now)
            self.local.save(records, state)
        return await self.cycle(Trigger(TriggerKind.EDIT, "local"))


@dataclass(frozen=True, slots=True)
class SyncOptions:
    """`bipsim ap --sync URL ...`: where the server is, the terminal's token, the terminal's store file, the
    virtual SIMs' directory, the security policy and how often card presence is asked."""

    url: str | None
    token: str
    local: Path
    virtual: Path | None = None
    security: Security = Security.PASS
    poll: float = 1.0

    def service(self, port: AtPort, tracer: Tracer = NULL_TRACER) -> SyncService:
        server = ServerClient(self.url, self.token, tracer) if self.url else None
        virtual = VirtualSims(self.virtual) if self.virtual else None
        return SyncService(
            port, LocalStore(self.local), virtual, server, security=self.security, tracer=tracer
        )
