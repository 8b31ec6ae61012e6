"""The sans-IO core of the SIM data sync (docs/protocols.md, "SIM data sync").

Records (contacts as 3GPP TS 27.007 `+CPBR` shows them, messages as TS 27.005 `+CMGL` shows them), a stable
identity per record, the three-way merge of every reachable store against the last synchronised state, and the
classification of a disagreement into the eight inconsistency cases of the sync document (step 002:S13). No I/O:
the AP's sync service reads the stores, hands their contents here and carries out the write plans it gets back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum


class MessageStatus(Enum):
    """A message's 27.005 `<stat>` (section 3.1): what `+CMGL=4` lists and `+CMGW` writes."""

    REC_UNREAD = "REC UNREAD"
    REC_READ = "REC READ"
    STO_UNSENT = "STO UNSENT"
    STO_SENT = "STO SENT"


def _digits(number: str) -> str:
    """A dial string as a phonebook compares it: international '+' kept, separators dropped."""
    return "".join(ch for ch in number if ch.isdigit() or ch in "+*#pP?").upper()


@dataclass(frozen=True, slots=True)
class Contact:
    """A phonebook entry: its text and its dial string (a leading '+' is TON international, type 145)."""

    name: str
    number: str

    def identity(self) -> str:
        """The identity a contact gets the first time a store shows it; kept through later edits."""
        return f"contact:{_digits(self.number)}:{self.name.casefold()}"

    def to_json(self) -> dict[str, str]:
        return {"type": "contact", "name": self.name, "number": self.number}


@dataclass(frozen=True, slots=True)
class Message:
    """A stored short message: status, the other party (originator of a received one, recipient of a sent one),
    text and the service centre time stamp (or the time the terminal stored it) as text."""

    status: MessageStatus
    address: str
    text: str
    timestamp: str

    def identity(self) -> str:
        """Status is left out: reading a message is an edit of it, not a new message."""
        digest = hashlib.sha256(self.text.encode()).hexdigest()[:16]
        return f"message:{_digits(self.address)}:{self.timestamp}:{digest}"

    def to_json(self) -> dict[str, str]:
        return {
            "type": "message",
            "status": self.status.value,
            "address": self.address,
            "text": self.text,
            "timestamp": self.timestamp,
        }


Record = Contact | Message


class RecordError(ValueError):
    """A record in a store's JSON that is not one (a peer's bad input)."""


def record_from_json(obj: object) -> Record:
    """The record a `to_json` dictionary describes; RecordError for anything else."""
    if not isinstance(obj, dict):
        raise RecordError("a record is a JSON object")
    kind = obj.get("type")
    try:
        if kind == "contact":
            name, number = obj["name"], obj["number"]
            if not isinstance(name, str) or not isinstance(number, str):
                raise RecordError("contact name and number are strings")
            return Contact(name, number)
        if kind == "message":
            values = [obj["address"], obj["text"], obj["timestamp"], obj["status"]]
            if not all(isinstance(v, str) for v in values):
                raise RecordError("message fields are strings")
            return Message(MessageStatus(obj["status"]), obj["address"], obj["text"], obj["timestamp"])
    except KeyError as exc:
        raise RecordError(f"record without {exc.args[0]!r}") from None
    except ValueError as exc:
        if isinstance(exc, RecordError):
            raise
        raise RecordError(f"unknown message status {obj.get('status')!r}") from None
    raise RecordError(f"unknown record type {kind!r}")


class StoreKind(Enum):
    """The four kinds of store the sync document names."""

    PHYSICAL = "physical"
    VIRTUAL = "virtual"
    LOCAL = "local"
    SERVER = "server"


# Ties between changes of equal time go to the server, then the terminal's store, then virtual and physical SIMs
# (docs/protocols.md, "SIM data sync": the server breaks ties).
_PRECEDENCE = {StoreKind.SERVER: 3, StoreKind.LOCAL: 2, StoreKind.VIRTUAL: 1, StoreKind.PHYSICAL: 0}


@dataclass(frozen=True, slots=True)
class Entry:
    """A record as a store holds it now, with the time (seconds) its last change was seen: the store's own time
    where it keeps one (the local store, the server), the time the sync service read it otherwise (a SIM)."""

    record: Record
    changed: float = 0.0


@dataclass(frozen=True, slots=True)
class Store:
    """One reachable store at the start of a sync: what it holds now (by identity) and what it held at its last
    sync (`base`; None for a store never synchronised, whose every record is then an addition)."""

    name: str
    kind: StoreKind
    current: Mapping[str, Entry]
    base: Mapping[str, Record] | None = None
    holds: frozenset[type] = frozenset(
        {Contact, Message}
    )  # a SIM read through the phonebook holds contacts only

    def takes(self, record: Record) -> bool:
        return type(record) in self.holds


@dataclass(frozen=True, slots=True)
class Plan:
    """What to write to one store so that it holds the merged set: records to put (new or changed), identities
    to delete, and identities to rename (no write)."""

    put: Mapping[str, Record] = field(default_factory=dict)
    delete: frozenset[str] = frozenset()
    rename: Mapping[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Nothing to write (a rename is bookkeeping of the sync service, not a write)."""
        return not self.put and not self.delete


@dataclass(frozen=True, slots=True)
class Change:
    """One store's change to one record since its last sync; record None is a deletion."""

    store: str
    kind: StoreKind
    record: Record | None
    changed: float


@dataclass(frozen=True, slots=True)
class Conflict:
    """A record changed differently in two or more stores, and the change that won."""

    identity: str
    changes: tuple[Change, ...]
    winner: Change


class Case(IntEnum):
    """The sync document's inconsistencies that call for a sync (step 002:S13), by its numbers."""

    PHYSICAL_PHYSICAL = 1
    VIRTUAL_VIRTUAL = 2
    PHYSICAL_VIRTUAL = 3
    PHYSICAL_LOCAL = 4
    VIRTUAL_LOCAL = 5
    LOCAL_SERVER = 6
    PHYSICAL_VIRTUAL_LOCAL = 7
    ALL_FOUR = 8


_PAIR_CASES: dict[frozenset[StoreKind], Case] = {
    frozenset({StoreKind.PHYSICAL}): Case.PHYSICAL_PHYSICAL,
    frozenset({StoreKind.VIRTUAL}): Case.VIRTUAL_VIRTUAL,
    frozenset({StoreKind.PHYSICAL, StoreKind.VIRTUAL}): Case.PHYSICAL_VIRTUAL,
    frozenset({StoreKind.PHYSICAL, StoreKind.LOCAL}): Case.PHYSICAL_LOCAL,
    frozenset({StoreKind.VIRTUAL, StoreKind.LOCAL}): Case.VIRTUAL_LOCAL,
    frozenset({StoreKind.LOCAL, StoreKind.SERVER}): Case.LOCAL_SERVER,
}


def contents(store: Store) -> frozenset[Record]:
    return frozenset(entry.record for entry in store.current.values())


def classify(stores: Sequence[Store]) -> frozenset[Case]:
    """The inconsistency cases the stores show (empty when every store holds the same records).

    Cases 1-6 are pairs of stores whose contents differ; a physical or virtual SIM that differs from the server
    is no case of its own (the terminal's store stands between them, and differs from one of the two). Case 7 is a
    physical SIM, a virtual SIM and the local store holding three different sets; case 8 those three and the
    server holding four different sets.
    """
    cases: set[Case] = set()
    common = frozenset.intersection(*(store.holds for store in stores)) if stores else frozenset()
    # stores are compared on the record types they all hold (a SIM's phonebook has no messages)
    held = [(store.kind, frozenset(r for r in contents(store) if type(r) in common)) for store in stores]
    for i, (kind_a, set_a) in enumerate(held):
        for kind_b, set_b in held[i + 1 :]:
            case = _PAIR_CASES.get(frozenset({kind_a, kind_b}))
            if case is not None and set_a != set_b:
                cases.add(case)
    by_kind: dict[StoreKind, set[frozenset[Record]]] = {}
    for kind, held_set in held:
        by_kind.setdefault(kind, set()).add(held_set)
    three = (StoreKind.PHYSICAL, StoreKind.VIRTUAL, StoreKind.LOCAL)
    if all(kind in by_kind for kind in three):
        for p in by_kind[StoreKind.PHYSICAL]:
            for v in by_kind[StoreKind.VIRTUAL]:
                for loc in by_kind[StoreKind.LOCAL]:
                    if len({p, v, loc}) == 3:
                        cases.add(Case.PHYSICAL_VIRTUAL_LOCAL)
                        for s in by_kind.get(StoreKind.SERVER, ()):
                            if len({p, v, loc, s}) == 4:
                                cases.add(Case.ALL_FOUR)
    return frozenset(cases)


def changes_of(store: Store, merged: Mapping[str, Record]) -> dict[str, Change]:
    """A store's changes since its last sync, by identity. A record added to a store that the last merged state
    already holds under another identity (a SIM that was synchronised elsewhere) is that record, not a new one."""
    base = store.base or {}
    by_content = {record: identity for identity, record in merged.items()}
    out: dict[str, Change] = {}
    for identity, entry in store.current.items():
        if identity in base:
            if base[identity] != entry.record:
                out[identity] = Change(store.name, store.kind, entry.record, entry.changed)
            continue
        known = by_content.get(entry.record)
        if known is not None:
            continue
        if merged.get(identity) != entry.record:
            out[identity] = Change(store.name, store.kind, entry.record, entry.changed)
    for identity in base:
        if identity not in store.current:
            out[identity] = Change(store.name, store.kind, None, 0.0)
    return out


def _rank(change: Change) -> tuple[float, int, str, str]:
    record = "" if change.record is None else repr(change.record)
    return (change.changed, _PRECEDENCE[change.kind], change.store, record)


def resolve(changes: Sequence[Change]) -> Change:
    """The change that wins: an edit or addition beats a deletion (nothing edited is lost); among edits the newest,
    the server on a tie, then the local store, a virtual SIM, a physical SIM (then by store name, so that the
    outcome never depends on the order the stores were read in)."""
    edits = [change for change in changes if change.record is not None]
    if not edits:
        return min(changes, key=lambda change: change.store)
    return max(edits, key=_rank)


@dataclass(frozen=True, slots=True)
class MergeResult:
    """The outcome of one sync: the merged set, what to write to each store, the conflicts resolved and the
    inconsistency cases the stores showed before."""

    merged: dict[str, Record]
    plans: dict[str, Plan]
    conflicts: tuple[Conflict, ...]
    cases: frozenset[Case]

    @property
    def writes(self) -> bool:
        return any(not plan.empty for plan in self.plans.values())


def merge(previous: Mapping[str, Record], stores: Iterable[Store]) -> MergeResult:
    """Three-way merge: every store's changes against its own last snapshot, applied to the last merged state
    (`previous`), with conflicts resolved by `resolve`; then the plan that brings each store to the result.

    A store that is not reachable is left out; its snapshot keeps its place for its return, when its unchanged
    records take whatever happened to them meanwhile (a record deleted elsewhere is deleted on it too).
    """
    stores = list(stores)
    pending: dict[str, list[Change]] = {}
    for store in stores:
        for identity, change in changes_of(store, previous).items():
            pending.setdefault(identity, []).append(change)
    merged = dict(previous)
    conflicts: list[Conflict] = []
    for identity in sorted(pending):
        changes = pending[identity]
        winner = resolve(changes)
        if len({change.record for change in changes}) > 1:
            conflicts.append(Conflict(identity, tuple(changes), winner))
        if winner.record is None:
            merged.pop(identity, None)
        else:
            merged[identity] = winner.record
    plans = {store.name: plan_for(store, merged) for store in stores}
    return MergeResult(merged, plans, tuple(conflicts), classify(stores))


def plan_for(store: Store, merged: Mapping[str, Record]) -> Plan:
    """What brings a store to the merged set. A record the store holds under another identity than the merged
    set's (added there and matched by content) is renamed, not written: `rename` maps the store's identity to the
    merged one."""
    merged = {identity: record for identity, record in merged.items() if store.takes(record)}
    by_content = {record: identity for identity, record in merged.items()}
    rename: dict[str, str] = {}
    for identity, entry in store.current.items():
        target = by_content.get(entry.record)
        if target is None or target == identity or merged.get(identity) == entry.record:
            continue
        # a duplicate of a record the store already holds under the merged identity is deleted, not renamed
        taken = target in rename.values() or (
            target in store.current and store.current[target].record == entry.record
        )
        if not taken:
            rename[identity] = target
    held = {
        rename.get(identity, identity): entry.record
        for identity, entry in store.current.items()
        if identity in rename or identity in merged
    }
    put = {identity: record for identity, record in merged.items() if held.get(identity) != record}
    delete = frozenset(
        identity for identity in store.current if identity not in rename and identity not in merged
    )
    return Plan(put, delete, rename)


def identify(
    previous: Mapping[int, str], base: Mapping[str, Record], current: Mapping[int, Record]
) -> tuple[dict[str, Record], dict[int, str]]:
    """Identities for a SIM's records, which carry none: the record at an index the last sync saw keeps that
    sync's identity (so an edit at an index is an edit, not a deletion and an addition); a record at a new index
    takes the identity of an equal record of the last sync that is gone from its index (moved), else its own.

    Returns the records by identity and the index of each identity, for the writer.
    """
    records: dict[str, Record] = {}
    index_of: dict[int, str] = {}
    content_ids = {record: identity for identity, record in base.items()}
    used = {previous[i] for i in current if i in previous}
    for index in sorted(current):
        record = current[index]
        identity = previous.get(index)
        if identity is None:
            moved = content_ids.get(record)
            identity = moved if moved is not None and moved not in used else record.identity()
        while identity in records:
            identity = f"{identity}#{index}"
        used.add(identity)
        records[identity] = record
        index_of[index] = identity
    return records, index_of
