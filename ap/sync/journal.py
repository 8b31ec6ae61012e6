"""The SIM data sync's journal, sans-IO (docs/protocols.md, "SIM data sync", "The journal and its plan").

The journal is the sync's state (the last merged set, each store's snapshot, each SIM's record numbers) and, while a
cycle writes, its plan: the merged target and every write it makes, per store, each marked done as it lands. A cycle
that stops half way (a SIM pulled, a server that drops, the AP killed) leaves the plan; the next cycle reconciles
it: a write that is marked done, or that the store shows as planned (the record at the planned record number, or
under the planned identity), has landed, so the store's snapshot takes it and it is no edit of that store's; a write
that has not landed is planned again from the new merge. Writes of a store that is away stay pending in the journal
until it comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bipsim.ap.sync.merge import Record, RecordError, record_from_json


def sms_index_key(name: str) -> str:
    """The journal's key of a SIM's EF_SMS record numbers (its EF_ADN numbers are under the SIM's own name)."""
    return f"{name}/EF_SMS"


@dataclass(slots=True)
class SyncState:
    """What the journal keeps: the last merged set, each store's snapshot after its last sync, for each SIM which
    record number holds which identity, and the writes of stores that were away when their plan was made."""

    merged: dict[str, Record] = field(default_factory=dict)
    snapshots: dict[str, dict[str, Record]] = field(default_factory=dict)
    indexes: dict[str, dict[int, str]] = field(default_factory=dict)
    pending: dict[str, list[Op]] = field(default_factory=dict)


@dataclass(slots=True)
class Op:
    """One write of a plan: `record` under `identity` (None: deleted), at record number `index` of a SIM's EF_ADN
    (`file` "adn") or EF_SMS ("sms"), or in a store written whole (`file` "")."""

    identity: str
    record: Record | None
    file: str = ""
    index: int | None = None
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "record": None if self.record is None else self.record.to_json(),
            "file": self.file,
            "index": self.index,
            "done": self.done,
        }

    @staticmethod
    def from_json(obj: object) -> Op:
        if not isinstance(obj, dict):
            raise RecordError("a planned write is a JSON object")
        record = obj.get("record")
        index = obj.get("index")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
            raise RecordError("a planned write's index is a number")
        file = obj.get("file", "")
        if file not in ("", "adn", "sms"):
            raise RecordError(f"a planned write of file {file!r}")
        return Op(
            str(obj["identity"]),
            None if record is None else record_from_json(record),
            file,
            index,
            bool(obj.get("done", False)),
        )


def ops_to_json(ops: Mapping[str, list[Op]]) -> dict[str, Any]:
    return {name: [op.to_json() for op in store_ops] for name, store_ops in ops.items()}


def ops_from_json(obj: object) -> dict[str, list[Op]]:
    if not isinstance(obj, dict):
        raise RecordError("planned writes are a JSON object")
    out: dict[str, list[Op]] = {}
    for name, store_ops in obj.items():
        if not isinstance(store_ops, list):
            raise RecordError("a store's planned writes are a list")
        out[str(name)] = [Op.from_json(op) for op in store_ops]
    return out


def apply_landed(state: SyncState, store: str, op: Op) -> None:
    """A write that landed: the store's snapshot (and a SIM's record numbers) as the write left it."""
    base = state.snapshots.setdefault(store, {})
    if op.record is None:
        base.pop(op.identity, None)
    else:
        base[op.identity] = op.record
    if op.file and op.index is not None:
        key = store if op.file == "adn" else sms_index_key(store)
        numbers = state.indexes.setdefault(key, {})
        for index, identity in list(numbers.items()):
            if identity == op.identity or index == op.index:
                del numbers[index]
        if op.record is not None:
            numbers[op.index] = op.identity


def reconcile(
    state: SyncState, plans: list[Mapping[str, list[Op]]], landed: Mapping[str, Callable[[Op], bool]]
) -> tuple[int, int, dict[str, list[Op]]]:
    """Folds the writes of `plans` (oldest first) into `state`: a write marked done, or one a reachable store shows
    (`landed[store](op)`), has landed. Returns how many landed, how many had not, and the writes of stores that
    are not reachable and not known to have landed (kept pending for their return)."""
    done = missed = 0
    pending: dict[str, list[Op]] = {}
    for plan in plans:
        for store, store_ops in plan.items():
            seen = landed.get(store)
            for op in store_ops:
                if op.done or (seen is not None and seen(op)):
                    apply_landed(state, store, op)
                    done += 1
                elif seen is None:
                    pending.setdefault(store, []).append(op)
                else:
                    missed += 1
    return done, missed, pending


def migrate(state: SyncState, old: str, new: str) -> bool:
    """Renames store `old` to `new` in the journal (a SIM once named by its IMSI, now by its ICCID); False when
    there is nothing under `old` or `new` is already there."""
    if old == new or old not in state.snapshots or new in state.snapshots:
        return False
    state.snapshots[new] = state.snapshots.pop(old)
    for key_old, key_new in ((old, new), (sms_index_key(old), sms_index_key(new))):
        if key_old in state.indexes:
            state.indexes[key_new] = state.indexes.pop(key_old)
    if old in state.pending:
        state.pending[new] = state.pending.pop(old)
    return True
