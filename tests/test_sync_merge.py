"""The SIM data sync's merge core (ap/sync/merge.py; docs/protocols.md, "SIM data sync"): the policy of each of the
sync document's eight inconsistency cases, one test per case, the conflict rules, SIM record identities, and
hypothesis properties: a sync is idempotent, convergent, and loses no record that was not deleted somewhere."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bipsim.ap.sync.merge import (
    Case,
    Contact,
    Entry,
    Message,
    MessageStatus,
    Plan,
    Record,
    RecordError,
    Store,
    StoreKind,
    classify,
    identify,
    merge,
    record_from_json,
)

P, V, L, S = StoreKind.PHYSICAL, StoreKind.VIRTUAL, StoreKind.LOCAL, StoreKind.SERVER
A = Contact("Alice", "+441632960001")
B = Contact("Bob", "01632960002")
C = Contact("Carol", "+441632960003")
D = Contact("Dave", "+441632960004")


def ids(*records: Record) -> dict[str, Record]:
    return {record.identity(): record for record in records}


def store(
    name: str,
    kind: StoreKind,
    current: Mapping[str, Record],
    base: Mapping[str, Record] | None = None,
    changed: float = 0.0,
) -> Store:
    return Store(name, kind, {i: Entry(r, changed) for i, r in current.items()}, base)


def applied(st_: Store, plan: Plan) -> dict[str, Record]:
    held = {plan.rename.get(i, i): e.record for i, e in st_.current.items() if i not in plan.delete}
    held.update(plan.put)
    return held


def assert_converged(
    stores: list[Store], result_merged: Mapping[str, Record], plans: Mapping[str, Plan]
) -> None:
    for s in stores:
        assert applied(s, plans[s.name]) == dict(result_merged), s.name


# --- the eight cases: each shows its case, and the policy docs/protocols.md states for it ---------------------


def test_case_1_two_physical_sims_differ_get_the_union() -> None:
    sim1 = store("sim1", P, ids(A, B))
    sim2 = store("sim2", P, ids(C))
    result = merge({}, [sim1, sim2])
    assert Case.PHYSICAL_PHYSICAL in result.cases
    assert set(result.merged.values()) == {A, B, C}
    assert result.plans["sim1"].put == ids(C) and result.plans["sim2"].put == ids(A, B)
    assert_converged([sim1, sim2], result.merged, result.plans)


def test_case_2_two_virtual_sims_a_deletion_spreads() -> None:
    before = ids(A, B)
    v1 = store("esim1", V, ids(A), base=before)  # B deleted on the first profile
    v2 = store("esim2", V, before, base=before)
    result = merge(before, [v1, v2])
    assert result.cases == {Case.VIRTUAL_VIRTUAL}
    assert result.merged == ids(A)
    assert result.plans["esim2"].delete == {B.identity()} and result.plans["esim1"].empty


def test_case_3_physical_and_virtual_edit_on_both_newest_wins() -> None:
    before = ids(A)
    a_phys = Contact("Alice Smith", A.number)
    a_virt = Contact("Alice Jones", A.number)
    sim = Store("sim1", P, {A.identity(): Entry(a_phys, 10.0)}, before)
    esim = Store("esim1", V, {A.identity(): Entry(a_virt, 20.0)}, before)
    result = merge(before, [sim, esim])
    assert result.cases == {Case.PHYSICAL_VIRTUAL}
    assert result.merged == {A.identity(): a_virt}
    (conflict,) = result.conflicts
    assert conflict.winner.store == "esim1"
    assert result.plans["sim1"].put == {A.identity(): a_virt}


def test_case_4_physical_and_local_sim_inserted_adds_everywhere() -> None:
    sim = store("sim1", P, ids(A, B))  # never synchronised: everything on it is new
    local = store("local", L, ids(C), base=ids(C))
    result = merge(ids(C), [sim, local])
    assert result.cases == {Case.PHYSICAL_LOCAL}
    assert set(result.merged.values()) == {A, B, C}
    assert_converged([sim, local], result.merged, result.plans)


def test_case_5_virtual_and_local_edit_against_delete_keeps_the_edit() -> None:
    before = ids(B)
    b2 = Contact("Bobby", B.number)
    esim = store("esim1", V, {B.identity(): b2}, base=before, changed=5.0)
    local = store("local", L, {}, base=before)  # deleted on the terminal
    result = merge(before, [esim, local])
    assert result.cases == {Case.VIRTUAL_LOCAL}
    assert result.merged == {B.identity(): b2}
    assert result.plans["local"].put == {B.identity(): b2}


def test_case_6_local_and_server_tie_goes_to_the_server() -> None:
    before = ids(C)
    c_local = Contact("Carol L", C.number)
    c_server = Contact("Carol S", C.number)
    local = Store("local", L, {C.identity(): Entry(c_local, 7.0)}, before)
    server = Store("server", S, {C.identity(): Entry(c_server, 7.0)}, before)
    result = merge(before, [local, server])
    assert result.cases == {Case.LOCAL_SERVER}
    assert result.merged == {C.identity(): c_server}
    assert result.conflicts[0].winner.kind is S


def test_case_7_physical_virtual_local_all_differ() -> None:
    sim = store("sim1", P, ids(A))
    esim = store("esim1", V, ids(B))
    local = store("local", L, ids(C), base=ids(C))
    result = merge(ids(C), [sim, esim, local])
    assert Case.PHYSICAL_VIRTUAL_LOCAL in result.cases and Case.ALL_FOUR not in result.cases
    assert {Case.PHYSICAL_VIRTUAL, Case.PHYSICAL_LOCAL, Case.VIRTUAL_LOCAL} <= result.cases
    assert set(result.merged.values()) == {A, B, C}
    assert_converged([sim, esim, local], result.merged, result.plans)


def test_case_8_all_four_differ() -> None:
    base = ids(D)
    sim = store("sim1", P, ids(A))
    esim = store("esim1", V, ids(B))
    local = store("local", L, ids(C, D), base=base)
    server = store("server", S, {}, base=base)  # D deleted on the server
    result = merge(base, [sim, esim, local, server])
    assert Case.ALL_FOUR in result.cases
    assert set(result.merged.values()) == {A, B, C}
    assert_converged([sim, esim, local, server], result.merged, result.plans)


def test_no_case_when_all_agree_and_nothing_written() -> None:
    same = ids(A, B)
    stores = [store("sim1", P, same, same), store("local", L, same, same), store("server", S, same, same)]
    result = merge(same, stores)
    assert result.cases == frozenset() and not result.writes and not result.conflicts


def test_sim_against_server_alone_is_no_named_case() -> None:
    assert classify([store("sim1", P, ids(A)), store("server", S, ids(B))]) == frozenset()


# --- rules around the cases ------------------------------------------------------------------------------------


def test_stale_store_returning_takes_what_happened_meanwhile() -> None:
    old = ids(A, B)
    a2 = Contact("Alice Smith", A.number)
    now = {A.identity(): a2}  # while sim2 was out, A was edited and B deleted
    sim2 = store("sim2", P, old, base=old)
    result = merge(now, [sim2, store("local", L, now, now)])
    assert result.merged == now
    assert result.plans["sim2"].put == {A.identity(): a2}
    assert result.plans["sim2"].delete == {B.identity()}


def test_sim_synced_elsewhere_is_not_duplicated() -> None:
    a2 = Contact("Alice Smith", A.number)
    merged = {A.identity(): a2}  # identity kept from before the edit
    sim = store("sim9", P, ids(a2))  # a new SIM holding the edited contact under its own content identity
    result = merge(merged, [sim, store("local", L, merged, merged)])
    assert result.merged == merged
    plan = result.plans["sim9"]
    assert plan.empty and plan.rename == {a2.identity(): A.identity()}


def test_same_contact_added_on_two_sims_is_one_record() -> None:
    result = merge({}, [store("sim1", P, ids(A)), store("sim2", P, ids(A))])
    assert result.merged == ids(A) and not result.writes and not result.conflicts


def test_messages_read_status_is_an_edit_of_the_same_message() -> None:
    unread = Message(MessageStatus.REC_UNREAD, "+441632960009", "hello", "26/11/30,10:00:00+00")
    read = Message(MessageStatus.REC_READ, unread.address, unread.text, unread.timestamp)
    assert unread.identity() == read.identity()
    before = ids(unread)
    sim = store("sim1", P, before, before)
    local = store("local", L, {unread.identity(): read}, before, changed=3.0)
    result = merge(before, [sim, local])
    assert result.merged == {unread.identity(): read}
    assert result.plans["sim1"].put == {unread.identity(): read}


def test_identify_keeps_identity_through_an_edit_and_a_move() -> None:
    base = ids(A, B)
    previous = {1: A.identity(), 2: B.identity()}
    a2 = Contact("Alice Smith", A.number)
    records, index_of = identify(previous, base, {1: a2, 5: B, 6: C})
    assert records == {A.identity(): a2, B.identity(): B, C.identity(): C}
    assert index_of == {1: A.identity(), 5: B.identity(), 6: C.identity()}


def test_identify_two_equal_records_on_a_sim_stay_two() -> None:
    records, index_of = identify({}, {}, {1: A, 2: A})
    assert len(records) == 2 and len(set(index_of.values())) == 2


def test_records_round_trip_json_and_bad_input_is_a_record_error() -> None:
    msg = Message(MessageStatus.STO_SENT, "123", "hi", "t")
    for record in (A, msg):
        assert record_from_json(record.to_json()) == record
    for bad in (
        [],
        {"type": "x"},
        {"type": "contact", "name": 1, "number": "1"},
        {"type": "contact"},
        {"type": "message", "status": "NEW", "address": "1", "text": "", "timestamp": ""},
    ):
        with pytest.raises(RecordError):
            record_from_json(bad)


# --- properties ------------------------------------------------------------------------------------------------

NAMES = st.sampled_from(["Ann", "Ben", "Cy", "Di"])
NUMBERS = st.sampled_from(["+1", "2", "+3"])
CONTACTS = st.builds(Contact, NAMES, NUMBERS)
KINDS = st.sampled_from(list(StoreKind))


@st.composite
def scenario(draw: st.DrawFn) -> tuple[dict[str, Record], list[Store]]:
    previous = {c.identity(): c for c in draw(st.lists(CONTACTS, max_size=4))}
    stores = []
    for n in range(draw(st.integers(1, 4))):
        synced = draw(st.booleans())
        base = dict(previous) if synced else None
        current: dict[str, Record] = dict(previous) if synced else {}
        for identity in list(current):
            op = draw(st.sampled_from(["keep", "keep", "delete", "edit"]))
            if op == "delete":
                del current[identity]
            elif op == "edit":
                current[identity] = Contact(draw(NAMES) + "!", draw(NUMBERS))
        for added in draw(st.lists(CONTACTS, max_size=3)):
            current[added.identity()] = added
        entries = {i: Entry(r, float(draw(st.integers(0, 3)))) for i, r in current.items()}
        stores.append(Store(f"s{n}", draw(KINDS), entries, base))
    return previous, stores


@settings(max_examples=300, deadline=None)
@given(scenario())
def test_property_convergent_and_idempotent(case: tuple[dict[str, Record], list[Store]]) -> None:
    previous, stores = case
    first = merge(previous, stores)
    assert_converged(stores, first.merged, first.plans)
    after = [
        Store(s.name, s.kind, {i: Entry(r) for i, r in applied(s, first.plans[s.name]).items()}, first.merged)
        for s in stores
    ]
    second = merge(first.merged, after)
    assert second.merged == first.merged
    assert not second.writes and not second.conflicts and second.cases == frozenset()


@settings(max_examples=300, deadline=None)
@given(scenario())
def test_property_no_record_lost_that_was_not_deleted(case: tuple[dict[str, Record], list[Store]]) -> None:
    previous, stores = case
    result = merge(previous, stores)
    deleted = {i for s in stores for i in (s.base or {}) if i not in s.current}
    kept = set(result.merged.values())
    for s in stores:
        for identity, entry in s.current.items():
            assert identity in result.merged or entry.record in kept or identity in deleted
    for identity in previous:
        assert identity in result.merged or identity in deleted
