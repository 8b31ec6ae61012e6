"""The SIM data sync's review defects (issue 20; ap/sync/service.py, ap/sync/journal.py; docs/protocols.md, "SIM
data sync"), each against the in-process rig of tests/test_sync_service.py (the real 27.007 commands of a CP with two
card slots, over AT chats on memory streams): the plan journal resuming a cycle a pulled SIM stopped, a record with a
bad BCD number left alone, the line's slot shared with the RIL, the CP's %SLOTEV URCs as triggers, SIMs keyed by
ICCID with an IMSI-keyed journal migrated, an edit made during a cycle, and a failed security check asking nothing
of the server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import trio
import trio.testing

from bipsim.ap.omapi.ril import SeRil
from bipsim.ap.ril import Ril
from bipsim.ap.slot_lock import slot_lock
from bipsim.ap.sync.journal import Op, SyncState, migrate, reconcile
from bipsim.ap.sync.merge import Contact, Entry
from bipsim.ap.sync.service import LocalStore, Security, SyncService, Trigger, TriggerKind
from bipsim.ap.sync.sim_at import parse_cpbr, parse_cpbs, parse_crsm, ucs2
from bipsim.link.at_chat import AtChat, AtResponse
from tests.test_sync_service import (
    SUB,
    A,
    B,
    C,
    Rig,
    iccid_of,
    local_contacts,
    rig,
    seed_local_and_server,
    server_records,
)

D = Contact("Dave", "+441632960004")
SIM1 = f"sim:{iccid_of('001010000000001')}"
SIM2 = f"sim:{iccid_of('001010000000002')}"
EF_ADN = 0x4F3A  # the USIM phonebook's EF_ADN (EF_PBR of the default profile), under ADF USIM / DF_PHONEBOOK
PHONEBOOK = "7FFF5F3A"


class Hook:
    """The sync's AT port with a hook that runs before a command line goes out (the user, the RIL, another host
    acting at that moment); it is the same line, so it shares the line's slot lock."""

    def __init__(self, inner: AtChat, before: Callable[[str], object]) -> None:
        self.inner = inner
        self.before = before
        self.slot_lock = slot_lock(inner)
        self.add_urc_handler = inner.add_urc_handler

    async def command(
        self, line: str, *, timeout: float | None = None, step: str | None = None
    ) -> AtResponse:
        done = self.before(line)
        if hasattr(done, "__await__"):
            await done  # type: ignore[misc]
        return await self.inner.command(line, timeout=timeout, step=step)


async def sim_entries(r: Rig, slot: int) -> list[Contact]:
    """Every contact of the SIM in `slot`, duplicates kept."""
    port = r.service.port
    assert port is not None
    await port.command(f"AT%SLOT={slot}")
    await port.command('AT+CSCS="UCS2"')
    await port.command('AT+CPBS="SM"')
    _, total = parse_cpbs((await port.command("AT+CPBS?")).lines)
    answer = await port.command(f"AT+CPBR=1,{total}")
    await port.command("AT%SLOT=1")
    return sorted(parse_cpbr(answer.lines).values(), key=repr)


def events(r: Rig, name: str) -> list[dict[str, object]]:
    return [e.fields or {} for e in r.tracer.events if e.field("event") == name]


async def until(check: Callable[[], bool], limit: float = 60.0) -> None:
    """Waits (on the test's clock) for `check`; fails after `limit` seconds of it."""
    with trio.fail_after(limit):
        while not check():
            await trio.sleep(0.05)


# 1. the plan journal ---------------------------------------------------------------------------------------------


async def test_a_pulled_sims_half_done_write_is_resumed_and_its_echo_never_beats_a_newer_user_edit(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, [A, C], None) as r:
        assert (await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))).ran
        # on the server: Carol renamed and Dave added (another terminal's sync)
        smith = Contact("Carol Smith", C.number)
        server_put(r, {C.identity(): (smith, time.time()), D.identity(): (D, time.time())})
        chat = r.service.port
        assert isinstance(chat, AtChat)
        writes = 0

        def pull_after_the_first_write(line: str) -> None:
            nonlocal writes
            if line.startswith("AT+CPBW="):
                writes += 1
                if writes == 2:  # "Carol Smith" is on the SIM; the card goes before Dave's write
                    r.slots[0].transport.remove()  # type: ignore[attr-defined]

        r.service.port = Hook(chat, pull_after_the_first_write)
        first = await r.service.cycle(Trigger(TriggerKind.EDIT, "server"))
        assert not first.ran and "+CME ERROR: 10" in first.aborted
        plan = json.loads(r.local.plan_path.read_text(encoding="utf-8"))
        done = {(op["identity"], op["done"]) for op in plan["ops"][SIM1]}
        assert done == {(C.identity(), True), (D.identity(), False)}  # the plan says what landed
        # while the SIM is out, the user renames Carol on the terminal, after the server's rename
        records, state = r.local.load()
        jones = Contact("Carol Jones", C.number)
        records[C.identity()] = Entry(jones, time.time())
        r.local.save(records, state)
        r.slots[0].transport.insert()  # type: ignore[attr-defined]
        await r.slots[0].power_on()
        r.service.port = chat
        again = await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))
        assert again.ran, again.aborted
        resumed = events(r, "sync_resumed")
        assert resumed and resumed[-1]["landed"] == 1  # type: ignore[operator]
        # the SIM's "Carol Smith" is the sync's own write, not an edit read just now: the user's newer edit wins
        assert local_contacts(r) == {A, jones, D} == server_records(r)
        assert await sim_entries(r, 1) == sorted([A, jones, D], key=repr)  # once each
        assert not r.local.plan_path.exists()  # the journal is complete again
        mark = len(r.tracer.events)
        idle = await r.service.cycle(Trigger(TriggerKind.EDIT, "nothing"))
        assert idle.ran and not [line for line in r.commands(mark) if line.startswith("AT+CPBW")]


def server_put(r: Rig, records: dict[str, tuple[Contact, float]]) -> None:
    """Another terminal's write on the server: `records` (with their change times) over what it holds."""
    from bipsim.ota.sync_server import Request

    assert r.server is not None
    sub = r.server.subscribers[SUB]
    body = {**sub.records, **{i: {**c.to_json(), "changed": t} for i, (c, t) in records.items()}}
    answer = r.server.handle(
        Request(
            "PUT",
            f"/sync/v1/{SUB}/records",
            {"authorization": "Bearer tok", "content-type": "application/json", "if-match": "*"},
            json.dumps({"records": body}).encode(),
        )
    )
    assert answer.status == 200


# 2. a bad BCD number on the card ---------------------------------------------------------------------------------


async def test_a_record_with_a_bad_bcd_number_stays_out_of_the_merge_and_is_never_overwritten(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, [A, B], None, server=False) as r:
        assert (await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))).ran
        assert local_contacts(r) == {A, B}
        port = r.service.port
        assert port is not None
        await port.command('AT+CSCS="UCS2"')
        index = next(i for i, c in parse_cpbr((await port.command("AT+CPBR=1,10")).lines).items() if c == B)
        await port.command('AT+CSCS="IRA"')
        sw, raw = parse_crsm((await port.command(f'AT+CRSM=178,{EF_ADN},{index},4,0,,"{PHONEBOOK}"')).lines)
        assert sw == 0x9000
        tail = len(raw) - 14  # TS 31.102 4.4.2.3: the alpha identifier, then the BCD number's length octet
        bad = raw[:tail] + b"\x2a" + raw[tail + 1 :]  # 42 octets: no number a record can hold
        update = f'AT+CRSM=220,{EF_ADN},{index},4,{len(bad)},"{bad.hex().upper()}","{PHONEBOOK}"'
        assert parse_crsm((await port.command(update)).lines)[0] == 0x9000
        # the user edits Bob on the terminal and adds Carol: the bad record must not take either
        edited = Contact("Bobby", B.number)
        report = await r.service.edit_local({B.identity(): edited, C.identity(): C})
        assert report.ran, report.aborted
        kept = events(r, "sync_record_kept")
        assert [(k["store"], k["index"]) for k in kept] == [(SIM1, index)]
        assert not [c for c in local_contacts(r) if isinstance(c, Contact) and not c.number]
        assert local_contacts(r) == {A, edited, C}  # Bob's edit kept on the terminal, not deleted
        after = parse_crsm((await port.command(f'AT+CRSM=178,{EF_ADN},{index},4,0,,"{PHONEBOOK}"')).lines)
        assert after == (0x9000, bad)  # the card's record as it was
        assert set(await sim_entries(r, 1)) == {A, C, Contact("Bob", "")}
        assert report.skipped.get(SIM1) == (B.identity(),)


# 3. the line's slot, shared with the RIL -------------------------------------------------------------------------


async def test_the_sync_on_slot_2_and_the_rils_slot_1_commands_never_interleave(tmp_path: Path) -> None:
    async with rig(tmp_path, [A], [B], server=False) as r:
        chat = r.service.port
        assert isinstance(chat, AtChat) and r.nursery is not None
        ril = Ril(chat)
        se = SeRil(chat, slots=2)
        present: list[tuple[bool, str]] = []
        slot = 1

        async def others_meanwhile(line: str) -> None:
            nonlocal slot
            if line.startswith("AT%SLOT="):
                slot = int(line.split("=")[1])
            if line == "AT+CPBS?" and slot == 2 and not present:
                # the AP's IMSI read and an OMAPI request come while the sync has the line on slot 2
                r.nursery.start_soon(ril.read_imsi)  # type: ignore[union-attr]

                async def card_present() -> None:
                    present.append(await se.card_present(1))

                r.nursery.start_soon(card_present)  # type: ignore[union-attr]
                await trio.testing.wait_all_tasks_blocked()

        r.service.port = Hook(chat, others_meanwhile)
        assert (await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 2"))).ran
        await until(lambda: bool(present) and ril.imsi_value is not None)
        assert ril.imsi_value == "001010000000001"  # slot 1's card, not the one the sync was reading
        sent = r.commands()
        on_two = sent.index("AT%SLOT=2")
        back = sent.index("AT%SLOT=1", on_two)
        assert not [line for line in sent[on_two:back] if line in ("AT+CPIN?",)]
        assert "AT+CPIN?" in sent[back:] and present == [(True, "READY")]


# 4. the CP's URCs as triggers ------------------------------------------------------------------------------------


async def test_another_hosts_cpbw_reaches_the_sync_by_urc_and_starts_one_cycle(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, [A], None, server=False) as r:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.service.watch, 1.0)
            await until(lambda: len(r.service.cycles) == 1)
            other = await r.other_line()
            mark = len(r.tracer.events)
            assert (await other.command('AT+CPBS="SM"')).ok
            assert (await other.command(f'AT+CPBW=,"{C.number}",145,"{C.name}"')).ok
            await until(lambda: len(r.service.cycles) == 2)
            assert r.service.cycles[1].trigger == Trigger(TriggerKind.EDIT, "slot 1")
            urcs = [e.summary for e in r.tracer.events[mark:] if e.kind == "at.urc"]
            assert urcs == ['%SLOTEV: 1,"changed"']  # to the sync's line alone, not back to the writer
            assert local_contacts(r) == {A, C}
            idle = len(r.tracer.events)
            await trio.sleep(5)
            assert len(r.service.cycles) == 2  # its own writes are no trigger
            assert r.commands(idle) == []  # and presence is not polled: nothing goes out between cycles
            nursery.cancel_scope.cancel()


# 5. SIMs by ICCID ------------------------------------------------------------------------------------------------


async def test_two_cards_with_one_imsi_are_two_sims_by_iccid_and_an_imsi_journal_is_migrated(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, [A], [B], server=False, imsi2="001010000000001") as r:
        first = await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 2"))
        assert first.ran and first.result is not None
        assert set(first.writes) >= {SIM1, SIM2}
        assert set(await sim_entries(r, 1)) == set(await sim_entries(r, 2)) == {A, B}
        # the journal as it was written when SIMs were keyed by IMSI (slot 1's card only)
        data = json.loads(r.local.path.read_text(encoding="utf-8"))
        sync = data["sync"]
        sync["snapshots"] = {k: v for k, v in sync["snapshots"].items() if k != SIM2}
        sync["snapshots"]["sim:001010000000001"] = sync["snapshots"].pop(SIM1)
        sync["indexes"] = {"sim:001010000000001": sync["indexes"][SIM1]}
        r.local.path.write_text(json.dumps(data), encoding="utf-8")
        mark = len(r.tracer.events)
        again = await r.service.cycle(Trigger(TriggerKind.EDIT, "nothing"))
        assert again.ran, again.aborted
        migrated = events(r, "sync_journal_migrated")
        assert [(m["old"], m["new"]) for m in migrated] == [("sim:001010000000001", SIM1)]
        _, state = r.local.load()
        assert SIM1 in state.snapshots and "sim:001010000000001" not in state.snapshots
        assert not [line for line in r.commands(mark) if line.startswith("AT+CPBW")]


# 6. edits made during a cycle ------------------------------------------------------------------------------------


async def test_an_edit_made_while_a_cycle_runs_starts_the_next_one_and_is_not_lost(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, [A], None, server=False) as r:
        await seed_local_and_server(r, [D])
        chat = r.service.port
        assert isinstance(chat, AtChat)
        other = await r.other_line()
        edited = False

        async def edits_meanwhile(line: str) -> None:
            nonlocal edited
            if line.startswith("AT+CPBW=") and not edited:
                edited = True
                # the user's contacts app adds Carol to the terminal's store, and another host writes Bob on the SIM
                records, state = r.local.load()
                records[C.identity()] = Entry(C, time.time())
                r.local.save(records, state)
                # (in UCS2: +CSCS is the modem's, and the sync has it on UCS2 while it writes)
                assert (await other.command(f'AT+CPBW=5,"{B.number}",129,"{ucs2(B.name)}"')).ok

        r.service.port = Hook(chat, edits_meanwhile)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.service.watch, 1.0)
            await until(lambda: local_contacts(r) == {A, B, C, D} and r.service.cycles[-1].ran)
            await trio.sleep(3)
            assert r.service.cycles[-1].ran
            nursery.cancel_scope.cancel()
        assert set(await sim_entries(r, 1)) == {A, B, C, D}
        assert not r.local.plan_path.exists()
        first = r.service.cycles[0]
        assert not first.ran and "changed during the cycle" in first.aborted
        # each change met during the first cycle is a trigger of its own for the next ones
        later = [c.trigger for c in r.service.cycles[1:]]
        assert Trigger(TriggerKind.EDIT, "local") in later and Trigger(TriggerKind.EDIT, "slot 1") in later


# 7. a failed security check asks nothing of the server -----------------------------------------------------------


async def test_with_the_security_check_failing_the_watch_sends_no_request_to_the_server(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, [A], [B], security=Security.FAIL) as r:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.service.watch, 1.0)
            await until(lambda: len(r.service.cycles) == 2)
            await trio.sleep(10)
            r.slots[1].transport.remove()  # type: ignore[attr-defined]
            await until(lambda: len(r.service.cycles) == 3)
            assert [c.ran for c in r.service.cycles] == [False] * 3
            assert not [e for e in r.tracer.events if e.kind.startswith("http.")]
            # the policy passes again: the next trigger is the retry, and the server is asked again
            r.service.security = Security.PASS
            r.slots[1].transport.insert()  # type: ignore[attr-defined]
            await r.slots[1].power_on()
            await until(lambda: len(r.service.cycles) == 4)
            assert r.service.cycles[-1].ran
            nursery.cancel_scope.cancel()
        assert local_contacts(r) == {A, B} == server_records(r)


# the pieces: the CP's %SLOTEV, the URC parser, the journal's reconciliation --------------------------------------


async def test_slotev_goes_to_the_lines_that_asked_and_only_for_writes_that_landed(tmp_path: Path) -> None:
    async with rig(tmp_path, [A], [B], server=False) as r:
        listener, writer = await r.other_line(), await r.other_line()
        assert (await listener.command("AT%SLOTEV=?")).lines == ("%SLOTEV: (0,1)",)
        assert (await listener.command("AT%SLOTEV=2")).final == "+CME ERROR: 50"
        assert (await listener.command("AT%SLOTEV=1")).ok
        assert (await listener.command("AT%SLOTEV?")).lines == ("%SLOTEV: 1",)
        assert (await writer.command("AT%SLOTEV=1")).ok

        heard: list[str] = []
        listener.add_urc_handler("%SLOTEV:", lambda line: heard.append(f"listener {line}"))
        writer.add_urc_handler("%SLOTEV:", lambda line: heard.append(f"writer {line}"))

        def urcs(since: int) -> list[str]:
            return heard[since:]

        mark = len(heard)
        assert (await writer.command("AT%SLOT=2")).ok
        assert (await writer.command(f'AT+CRSM=178,{EF_ADN},1,4,0,,"{PHONEBOOK}"')).ok  # a read: no change
        assert (await writer.command('AT+CPBW=1,"12X",129,"x"')).final.startswith("+CME ERROR")  # refused
        assert urcs(mark) == []
        assert (await writer.command(f'AT+CPBW=3,"{C.number}",145,"{C.name}"')).ok
        await until(lambda: len(urcs(mark)) == 1)
        assert urcs(mark) == ['listener %SLOTEV: 2,"changed"']  # not to the writer: its own write
        mark = len(heard)
        r.slots[0].transport.remove()  # type: ignore[attr-defined]
        await until(lambda: len(urcs(mark)) == 2)
        assert sorted(urcs(mark)) == ['listener %SLOTEV: 1,"removed"', 'writer %SLOTEV: 1,"removed"']
        r.slots[0].transport.insert()  # type: ignore[attr-defined]
        await r.slots[0].power_on()
        await until(lambda: len(urcs(mark)) == 4)
        assert sorted(urcs(mark)[2:]) == ['listener %SLOTEV: 1,"inserted"', 'writer %SLOTEV: 1,"inserted"']
        assert (await listener.command("ATZ")).ok
        assert (await listener.command("AT%SLOTEV?")).lines == ("%SLOTEV: 0",)


async def test_a_urc_the_sync_does_not_know_is_traced_and_no_trigger(tmp_path: Path) -> None:
    async with rig(tmp_path, [A], None, server=False) as r:
        r.service._slot_event('%SLOTEV: 1,"melted"')
        r.service._slot_event('%SLOTEV: 2,"changed"')
        assert r.service._pending == [Trigger(TriggerKind.EDIT, "slot 2")]
        assert [e["line"] for e in events(r, "sync_bad_urc")] == ['%SLOTEV: 1,"melted"']


def test_reconcile_takes_landed_writes_keeps_an_absent_stores_and_counts_the_rest() -> None:
    state = SyncState(
        {C.identity(): C},
        {"sim:1": {C.identity(): C}, "server": {C.identity(): C}},
        {"sim:1": {1: C.identity()}},
    )
    smith = Contact("Carol Smith", C.number)
    plan = {
        "sim:1": [Op(C.identity(), smith, "adn", 1, done=True), Op(D.identity(), D, "adn", 2)],
        "sim:2": [Op(C.identity(), smith, "adn", 4, done=True), Op(D.identity(), D, "adn", 5)],
        "server": [Op(D.identity(), D), Op(C.identity(), None)],
    }
    seen_sim = {1: smith}  # Dave's write never landed on sim:1
    landed = {
        "sim:1": lambda op: seen_sim.get(op.index) == op.record,
        "server": lambda op: op.record == D,  # the PUT landed for Dave, Carol's deletion did not
    }
    done, missed, pending = reconcile(state, [plan], landed)
    assert (done, missed) == (3, 2)
    assert state.snapshots["sim:1"] == {C.identity(): smith}
    assert state.indexes["sim:1"] == {1: C.identity()}
    assert state.snapshots["sim:2"] == {C.identity(): smith} and state.indexes["sim:2"] == {4: C.identity()}
    assert state.snapshots["server"] == {C.identity(): C, D.identity(): D}
    assert pending == {"sim:2": [plan["sim:2"][1]]}  # kept for the SIM's return
    assert migrate(state, "sim:2", "sim:8988") and "sim:8988" in state.indexes
    assert not migrate(state, "sim:nothing", "sim:x")
    assert [Op.from_json(op.to_json()) for op in plan["sim:1"]] == plan["sim:1"]


async def test_an_ap_killed_mid_cycle_is_resumed_from_the_plan_by_a_new_service(tmp_path: Path) -> None:
    class Killed(Exception):
        """The AP process dies here: nothing after this write runs, nothing in memory survives."""

    async with rig(tmp_path, [A], None) as r:
        await seed_local_and_server(r, [C, D])
        chat = r.service.port
        assert isinstance(chat, AtChat)
        writes = 0

        def kill_at_the_second_write(line: str) -> None:
            nonlocal writes
            if line.startswith("AT+CPBW="):
                writes += 1
                if writes == 2:
                    raise Killed()

        r.service.port = Hook(chat, kill_at_the_second_write)
        try:
            await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))
        except Killed:
            pass
        else:
            raise AssertionError("the cycle was not killed")
        assert r.local.plan_path.exists()
        reborn = SyncService(
            chat, LocalStore(r.local.path), r.service.virtual, r.service.server, tracer=r.tracer
        )
        report = await reborn.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))
        assert report.ran, report.aborted
        assert events(r, "sync_resumed")[-1]["landed"] == 2  # the server's PUT and Carol on the SIM
        assert await sim_entries(r, 1) == sorted([A, C, D], key=repr)
        assert local_contacts(r) == {A, C, D} == server_records(r)
        assert not r.local.plan_path.exists()


async def test_a_malformed_plan_aborts_the_cycle_and_is_left_as_it_was(tmp_path: Path) -> None:
    async with rig(tmp_path, [A], None, server=False) as r:
        r.local.plan_path.write_text('{"state": {}, "merged": {}, "ops": {"sim:1": [{"file": "x"}]}}')
        report = await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))
        assert not report.ran and "the journal's plan" in report.aborted
        assert r.local.plan_path.read_text().endswith('"x"}]}}') and not r.local.path.exists()
        assert not [line for line in r.commands() if line.startswith(("AT+CPBR", "AT+CPBW"))]
