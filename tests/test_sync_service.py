"""The AP's SIM data sync service (ap/sync/service.py; docs/protocols.md, "SIM data sync") against a CP with two card
slots (the real 27.007 phonebook commands over an AT chat on a memory stream), JSON stores and the real sync server on
loopback: triggers, the security check, the three-way merge carried to EF_ADN through +CPBW, idempotence, a failing
server, and the sans-IO AT codec."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import trio
import trio.testing

from bipsim.ap.sync.merge import Contact, Message, MessageStatus
from bipsim.ap.sync.service import (
    LocalStore,
    Security,
    ServerClient,
    SyncService,
    SyncState,
    Trigger,
    TriggerKind,
    VirtualSims,
    parse_slots,
    presence_triggers,
)
from bipsim.ap.sync.sim_at import (
    FREE_RECORD,
    RecordUnfit,
    SimDataError,
    cpbw,
    crsm_read_record,
    decode_sms_record,
    encode_sms_record,
    fcp_records,
    parse_cpbr,
    parse_cpbs,
    parse_crsm,
    sim_form,
)
from bipsim.cp.card_slot import CardSlot
from bipsim.cp.command_sets import build_command_sets
from bipsim.cp.commands import ModemCommands
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork
from bipsim.link.at_chat import AtChat
from bipsim.link.at_server import AtServer
from bipsim.ota.sync_server import SyncServer, Terminal
from bipsim.ota.sync_server import SyncService as ServerCore
from bipsim.trace.recorder import Tracer
from bipsim.trace.steps import STEPS
from bipsim.uicc.profile import dump_profile, load_profile

A = Contact("Alice", "+441632960001")
B = Contact("Bob", "01632960002")
C = Contact("Carol", "+441632960003")
SUB = "001010123456789"


def iccid_of(imsi: str) -> str:
    """A card's ICCID (19 digits, TS 102 221 13.2) from its IMSI: each test card is its own card."""
    return "8988211" + imsi[-12:]


def card(
    tmp: Path,
    name: str,
    imsi: str,
    contacts: list[Contact],
    sms: tuple[object, ...] = (),
    iccid: str | None = None,
) -> object:
    path = tmp / f"{name}.toml"
    profile = load_profile().with_overrides(
        imsi=imsi,
        iccid=iccid or iccid_of(imsi),
        contacts=tuple({"name": c.name, "number": c.number} for c in contacts),
        sms=sms,
    )
    path.write_text(dump_profile(profile))
    transport, _ = simulated_card(str(path), str(tmp / f"{name}.state.json"), Tracer())
    return transport


@dataclass
class Rig:
    service: SyncService
    tracer: Tracer
    slots: list[CardSlot]
    local: LocalStore
    virtual: VirtualSims
    server: ServerCore | None
    modem: ModemCommands | None = None
    nursery: trio.Nursery | None = None

    async def other_line(self) -> AtChat:
        """Another host's AT line on the same CP (a second serial port or DLC): its own %SLOT, its own +CSCS use."""
        assert self.modem is not None and self.nursery is not None
        a, b = trio.testing.memory_stream_pair()
        server = AtServer(b, echo=False)
        self.modem.install(server)
        self.nursery.start_soon(server.run)
        chat = AtChat(a, tracer=self.tracer)
        self.nursery.start_soon(chat.run)
        await chat.command("AT+CMEE=1")
        return chat

    def commands(self, since: int = 0) -> list[str]:
        return [e.summary for e in self.tracer.events[since:] if e.kind == "at.command"]


async def read_sim(rig: Rig, slot: int) -> set[Contact]:
    """The contacts of the SIM in `slot`, read with the AP's own AT line (not through the service's code)."""
    port = rig.service.port
    assert port is not None
    await port.command(f"AT%SLOT={slot}")
    await port.command('AT+CSCS="UCS2"')
    await port.command('AT+CPBS="SM"')
    _, total = parse_cpbs((await port.command("AT+CPBS?")).lines)
    answer = await port.command(f"AT+CPBR=1,{total}")
    await port.command("AT%SLOT=1")
    return set(parse_cpbr(answer.lines).values())


@asynccontextmanager
async def rig(
    tmp_path: Path,
    sim1: list[Contact],
    sim2: list[Contact] | None,
    *,
    server: bool = True,
    security: Security = Security.PASS,
    sms1: tuple[object, ...] = (),
    sms2: tuple[object, ...] = (),
    imsi2: str = "001010000000002",
) -> AsyncIterator[Rig]:
    tracer = Tracer(keep=True)
    slots = [CardSlot(1, card(tmp_path, "sim1", "001010000000001", sim1, sms1), tracer=tracer)]  # type: ignore[arg-type]
    if sim2 is not None:
        two = card(tmp_path, "sim2", imsi2, sim2, sms2, iccid=iccid_of("001010000000002"))
        slots.append(CardSlot(2, two, tracer=tracer))  # type: ignore[arg-type]
    commands = ModemCommands(slots[0].driver, CellularNetwork(), slots=slots)
    commands.command_sets = build_command_sets(commands, tracer, {})
    (tmp_path / "virtual").mkdir(exist_ok=True)
    async with trio.open_nursery() as nursery:
        a, b = trio.testing.memory_stream_pair()
        at_server = AtServer(b, echo=False)
        commands.install(at_server)
        nursery.start_soon(at_server.run)
        chat = AtChat(a, tracer=tracer)
        nursery.start_soon(chat.run)
        await chat.command("AT+CMEE=1")
        core = None
        client = None
        if server:
            core = ServerCore([Terminal("phone1", "tok", SUB)])
            port = await nursery.start(SyncServer(core, tracer).serve, "127.0.0.1", 0)
            client = ServerClient(f"http://127.0.0.1:{port}/sync/v1/{SUB}/records", "tok", tracer)
        local = LocalStore(tmp_path / "local.json")
        virtual = VirtualSims(tmp_path / "virtual")
        service = SyncService(chat, local, virtual, client, security=security, tracer=tracer)
        yield Rig(service, tracer, slots, local, virtual, core, commands, nursery)
        nursery.cancel_scope.cancel()
    # every run, the aborting ones too: each event labelled with a step of seed 002 is one that step names
    wrong = [(e.step, e.kind, e.summary) for e in tracer.events if e.step and not STEPS[e.step].matches(e)]
    assert not wrong


def local_contacts(rig_: Rig) -> set[object]:
    records, _ = rig_.local.load()
    return {entry.record for entry in records.values()}


def server_records(rig_: Rig) -> set[object]:
    from bipsim.ap.sync.merge import record_from_json

    assert rig_.server is not None
    sub = rig_.server.subscribers.get(SUB)
    return {record_from_json(v) for v in sub.records.values()} if sub else set()


async def seed_local_and_server(rig_: Rig, records: list[Contact | Message]) -> None:
    """The terminal's store and the server agree on `records` (an earlier sync with no SIM: a service without a
    modem line)."""
    service = rig_.service
    no_sim = SyncService(None, service.local, service.virtual, service.server, tracer=Tracer())
    await no_sim.edit_local({r.identity(): r for r in records})


async def test_insert_sim_with_a_b_into_terminal_holding_c(tmp_path: Path) -> None:
    async with rig(tmp_path, [A, B], None) as r:
        await seed_local_and_server(r, [C])
        assert local_contacts(r) == {C} and server_records(r) == {C}
        report = await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))
        assert report.ran, report.aborted
        assert local_contacts(r) == {A, B, C} == server_records(r)
        assert await read_sim(r, 1) == {A, B, C}
        # case 4 (a physical SIM and the terminal's store)
        assert report.result is not None and 4 in report.result.cases


async def test_case_1_two_sims_end_identical_and_a_second_sync_writes_nothing(tmp_path: Path) -> None:
    async with rig(tmp_path, [A], [B, C]) as r:
        first = await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 2"))
        assert first.ran and first.result is not None and 1 in first.result.cases
        assert await read_sim(r, 1) == await read_sim(r, 2) == {A, B, C}
        version = r.server.subscribers[SUB].version if r.server else None
        mark = len(r.tracer.events)
        second = await r.service.cycle(Trigger(TriggerKind.EDIT, "nothing"))
        assert second.ran and second.result is not None and not second.result.writes
        sent = r.commands(mark)
        assert not [line for line in sent if line.startswith("AT+CPBW")]
        assert not [
            e for e in r.tracer.events[mark:] if e.kind == "http.request" and e.field("method") == "PUT"
        ]
        assert r.server is not None and r.server.subscribers[SUB].version == version


async def test_case_6_server_edit_reaches_local_and_every_sim_in_ucs2_and_international(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, [A], [A]) as r:
        assert (await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))).ran
        assert r.server is not None
        edited = Contact("Zoë Ωμ", "+4930123456")  # 6 characters: the 18-octet alpha field in UCS2
        sub = r.server.subscribers[SUB]
        records = {**sub.records, A.identity(): {**edited.to_json(), "changed": 1e12}}
        from bipsim.ota.sync_server import Request

        answer = r.server.handle(
            Request(
                "PUT",
                f"/sync/v1/{SUB}/records",
                {"authorization": "Bearer tok", "content-type": "application/json", "if-match": "*"},
                json.dumps({"records": records}).encode(),
            )
        )
        assert answer.status == 200
        report = await r.service.cycle(Trigger(TriggerKind.EDIT, "server"))
        assert report.ran and report.result is not None, report.aborted
        assert 6 in report.result.cases
        assert local_contacts(r) == {edited}
        assert await read_sim(r, 1) == await read_sim(r, 2) == {edited}
        writes = [line for line in r.commands() if line.startswith("AT+CPBW=1,")]
        assert f'AT+CPBW=1,"+4930123456",145,"{edited.name.encode("utf-16-be").hex().upper()}"' in writes


async def test_failed_security_check_reads_and_writes_nothing(tmp_path: Path) -> None:
    async with rig(tmp_path, [A, B], None, security=Security.FAIL) as r:
        before = r.local.path.exists()
        report = await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))
        assert not report.ran and report.aborted == "security check failed"
        assert r.commands() == ["AT+CMEE=1"]  # no %SLOTS?, +CPBR or +CPBW
        assert not [e for e in r.tracer.events if e.kind.startswith("http.request")]
        assert r.local.path.exists() == before
        r.service.security = Security.PASS
        assert (await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))).ran
        assert any(line.startswith("AT+CPBR=") for line in r.commands())


async def test_server_down_aborts_with_every_store_as_before_and_the_next_trigger_finishes(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, [A], None, server=False) as r:
        with trio.socket.socket() as sock:
            await sock.bind(("127.0.0.1", 0))
            dead = sock.getsockname()[1]
        r.service.server = ServerClient(f"http://127.0.0.1:{dead}/sync/v1/{SUB}/records", "tok", r.tracer)
        await r.service.edit_local({C.identity(): C})
        assert local_contacts(r) == {C}
        assert await read_sim(r, 1) == {A}
        errors = [e for e in r.tracer.events if e.kind == "http.error"]
        assert errors and any(e.field("event") == "sync_aborted" for e in r.tracer.events)
        r.service.server = None
        assert (await r.service.cycle(Trigger(TriggerKind.EDIT, "retry"))).ran
        assert await read_sim(r, 1) == {A, C} and local_contacts(r) == {A, C}


async def test_virtual_sim_added_gets_the_union_and_messages_reach_it(tmp_path: Path) -> None:
    msg = Message(MessageStatus.REC_UNREAD, "+441632960009", "hello", "26/11/30,10:00:00+00")
    async with rig(tmp_path, [A], None) as r:
        await seed_local_and_server(r, [msg])
        r.virtual.save("esim1", {})
        report = await r.service.cycle(Trigger(TriggerKind.VIRTUAL_ADDED, "esim1"))
        assert report.ran
        assert {e.record for e in r.virtual.load("esim1").values()} == {A, msg}
        assert local_contacts(r) == {A, msg} == server_records(r)
        assert await read_sim(r, 1) == {A}  # messages do not go into the phonebook


async def test_bad_record_from_the_modem_aborts_without_writing(tmp_path: Path) -> None:
    class Garbled:
        def __init__(self, inner: AtChat) -> None:
            self.inner = inner

        async def command(self, line: str, *, timeout: float | None = None, step: str | None = None):  # type: ignore[no-untyped-def]
            answer = await self.inner.command(line, timeout=timeout, step=step)
            if line.startswith("AT+CPBR="):
                from bipsim.link.at_chat import AtResponse

                return AtResponse(answer.command, ('+CPBR: 1,"12X4",129,"0041"',), "OK")
            return answer

    async with rig(tmp_path, [A], None) as r:
        assert isinstance(r.service.port, AtChat)
        r.service.port = Garbled(r.service.port)
        report = await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))
        assert not report.ran and "invalid dial string" in report.aborted
        assert not [line for line in r.commands() if line.startswith("AT+CPBW")]
        assert not r.local.path.exists()
        assert any(e.field("event") == "sync_bad_record" for e in r.tracer.events)


async def test_watch_starts_one_cycle_per_presence_change(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, [A], [B], server=False) as r:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.service.watch, 1.0)
            await trio.sleep(0.5)
            assert [c.trigger.kind for c in r.service.cycles] == [TriggerKind.SIM_INSERTED] * 2
            mark = len(r.tracer.events)
            await trio.sleep(5)
            assert len(r.service.cycles) == 2  # no trigger, no cycle
            # and no read of a SIM: nothing goes out at all, the CP's %SLOTEV URCs tell the presence (issue 20, test 1)
            assert r.commands(mark) == []
            r.slots[1].transport.remove()  # type: ignore[attr-defined]
            await trio.sleep(2)
            assert [c.trigger for c in r.service.cycles[2:]] == [Trigger(TriggerKind.SIM_REMOVED, "slot 2")]
            r.virtual.save("esim1", {})
            await trio.sleep(1.5)
            assert r.service.cycles[-1].trigger == Trigger(TriggerKind.VIRTUAL_ADDED, "esim1")
            count = len(r.service.cycles)
            await trio.sleep(3)
            assert len(r.service.cycles) == count  # its own writes are no edit
            from bipsim.ap.sync.merge import Entry

            r.virtual.save("esim1", {C.identity(): Entry(C, 1.0), **r.virtual.load("esim1")})
            await trio.sleep(1.5)
            assert [c.trigger for c in r.service.cycles[count:]] == [
                Trigger(TriggerKind.EDIT, "virtual:esim1")
            ]
            assert await read_sim(r, 1) == {A, B, C}
            nursery.cancel_scope.cancel()


def test_steps_label_the_sync_events(tmp_path: Path) -> None:
    assert {"002:S11", "002:S12", "002:S13"} <= set(STEPS)


def test_at_codec() -> None:
    assert parse_cpbr(['+CPBR: 3,"441632960001",145,"0041"']) == {3: Contact("A", "+441632960001")}
    assert parse_cpbs(['+CPBS: "SM",2,50']) == (2, 50)
    assert cpbw(2, Contact("Zoë", "0123")) == 'AT+CPBW=2,"0123",129,"005A006F00EB"'
    for bad in ['+CPBR: 1,"12X",129,"0041"', '+CPBR: 1,"1",129,"004"', "+CPBR: x", '+CPBR: 1,"1",129,"D800"']:
        with pytest.raises(SimDataError):
            parse_cpbr([bad])
    with pytest.raises(SimDataError):
        parse_cpbr(['+CPBR: 1,"1",129,"0041"', '+CPBR: 1,"2",129,"0042"'])
    assert parse_slots(["%SLOTS: 1,1,2,0"]) == {1: True, 2: False}
    assert presence_triggers({1: True, 2: False}, {1: False, 2: True}) == [
        Trigger(TriggerKind.SIM_REMOVED, "slot 1"),
        Trigger(TriggerKind.SIM_INSERTED, "slot 2"),
    ]


async def test_limits_long_number_via_ext1_and_too_long_name_refused_without_touching_neighbours(
    tmp_path: Path,
) -> None:
    long_number = Contact("Long", "+123456789012345678901234")  # 24 digits: EF_EXT1
    async with rig(tmp_path, [A, B], None, server=False) as r:
        assert (await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))).ran
        assert (await r.service.edit_local({long_number.identity(): long_number})).ran
        assert await read_sim(r, 1) == {A, B, long_number}
        too_long = Contact("A name far longer than eighteen octets", "+441632960005")
        report = await r.service.edit_local({too_long.identity(): too_long})
        # skipped for this SIM with a trace event, kept on the terminal; the cycle completes
        assert report.ran, report.aborted
        assert report.skipped == {f"sim:{iccid_of('001010000000001')}": (too_long.identity(),)}
        unfit = [e for e in r.tracer.events if e.field("event") == "sync_record_unfit"]
        assert unfit and unfit[-1].field("reason") == "+CME ERROR: 24"
        assert await read_sim(r, 1) == {A, B, long_number}  # the neighbours as they were
        assert too_long in local_contacts(r)  # the user's edit is kept on the terminal
        # the next cycle tries again (and skips again): no deletion of it anywhere, nothing else written
        mark = len(r.tracer.events)
        again = await r.service.cycle(Trigger(TriggerKind.EDIT, "nothing"))
        assert again.ran and again.skipped == report.skipped
        assert too_long in local_contacts(r)
        assert [line for line in r.commands(mark) if line.startswith("AT+CPBW")] == [
            line for line in r.commands(mark) if "0041002000" in line
        ]


async def test_sim_removed_mid_sync_leaves_the_stores_as_before_and_the_next_trigger_finishes(
    tmp_path: Path,
) -> None:
    class PullOnWrite:
        """The user pulls the SIM just as the first +CPBW goes out."""

        def __init__(self, inner: AtChat, rig_: Rig) -> None:
            self.inner, self.rig, self.pulled = inner, rig_, False

        async def command(self, line: str, *, timeout: float | None = None, step: str | None = None):  # type: ignore[no-untyped-def]
            if line.startswith("AT+CPBW=") and not self.pulled:
                self.pulled = True
                self.rig.slots[0].transport.remove()  # type: ignore[attr-defined]
            return await self.inner.command(line, timeout=timeout, step=step)

    async with rig(tmp_path, [A], None) as r:
        await seed_local_and_server(r, [C])
        before = r.local.path.read_bytes()
        chat = r.service.port
        assert isinstance(chat, AtChat)
        r.service.port = PullOnWrite(chat, r)
        report = await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))
        assert not report.ran and "+CME ERROR: 10" in report.aborted
        assert r.local.path.read_bytes() == before  # the journal and the terminal's store as before
        r.slots[0].transport.insert()  # type: ignore[attr-defined]
        await r.slots[0].power_on()  # what the CP's slot task does at once on an insertion
        r.service.port = chat
        again = await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))
        assert again.ran, again.aborted
        assert await read_sim(r, 1) == {A, C}
        assert local_contacts(r) == {A, C} == server_records(r)
        # the server was written by the first cycle already; the second found it complete: no duplicates
        assert r.server is not None and len(r.server.subscribers[SUB].records) == 2


# --- messages on the physical SIMs: EF_SMS through +CRSM (TS 31.102 4.2.25) ----------------------------------------

M_IN = Message(MessageStatus.REC_UNREAD, "+441632960009", "See you at 8", "26/11/30,10:00:00+04")
M_OUT = Message(MessageStatus.STO_SENT, "+441632960001", "On my way", "")
M_LOCAL = Message(MessageStatus.REC_READ, "+441632960003", "Zoë says hi", "26/11/29,09:30:00+00")


def sms_item(message: Message) -> dict[str, str]:
    """A profile's `sms` entry (uicc/default_profile.toml) for `message`, built with the PDU codec of net/."""
    from bipsim.net.sms_pdu import SmsDeliver, SmsSubmit, encode_sca

    if message.status is MessageStatus.STO_SENT:
        tpdu = SmsSubmit.for_text(message.address, message.text)[0].encode()
        return {"status": "sent", "pdu": (encode_sca("+441632000000") + tpdu).hex()}
    stamp = datetime.strptime(message.timestamp[:17], "%y/%m/%d,%H:%M:%S").replace(
        tzinfo=timezone(timedelta(minutes=15 * int(message.timestamp[17:])))
    )
    tpdu = SmsDeliver.for_text(message.address, message.text, stamp)[0].encode()
    status = "unread" if message.status is MessageStatus.REC_UNREAD else "read"
    return {"status": status, "pdu": (encode_sca("+441632000000") + tpdu).hex()}


async def ef_sms(rig_: Rig, slot: int) -> dict[int, bytes]:
    """The used EF_SMS records of the SIM in `slot`, read with the AP's own AT line (+CRSM READ RECORD)."""
    port = rig_.service.port
    assert port is not None
    await port.command(f"AT%SLOT={slot}")
    out = {}
    for index in range(1, 11):
        sw, record = parse_crsm((await port.command(crsm_read_record(index))).lines)
        assert sw == 0x9000
        if record[0] & 0x01:
            out[index] = record
    await port.command("AT%SLOT=1")
    return out


async def sim_messages(rig_: Rig, slot: int) -> set[Message]:
    found = set()
    for record in (await ef_sms(rig_, slot)).values():
        message = decode_sms_record(record)
        assert message is not None
        found.add(message)
    return found


def local_messages(rig_: Rig) -> set[object]:
    return {record for record in local_contacts(rig_) if isinstance(record, Message)}


def updates(rig_: Rig, since: int = 0) -> list[str]:
    return [line for line in rig_.commands(since) if line.startswith("AT+CRSM=220,")]


async def test_messages_both_ways_on_two_physical_sims_status_kept_and_idempotent(tmp_path: Path) -> None:
    async with rig(tmp_path, [A], [B], sms1=(sms_item(M_IN),), sms2=(sms_item(M_OUT),)) as r:
        await seed_local_and_server(r, [M_LOCAL])
        report = await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))
        assert report.ran, report.aborted
        everything = {M_IN, M_OUT, M_LOCAL}
        assert local_messages(r) == everything
        assert {m for m in server_records(r) if isinstance(m, Message)} == everything
        # each SIM holds every message (an SMS-SUBMIT shows no time stamp: M_OUT has none), status included
        assert await sim_messages(r, 1) == await sim_messages(r, 2) == everything
        # reading did not mark the unread message read: its record's status octet is still 03
        records1 = await ef_sms(r, 1)
        assert records1[1][0] == 0x03
        assert not [line for line in r.commands() if line.startswith(("AT+CMGL", "AT+CMGR"))]
        # the SIM's own record kept its SC address and TPDU; the new ones went into free records
        assert records1[1] == (bytes((0x03,)) + bytes.fromhex(sms_item(M_IN)["pdu"])).ljust(176, b"\xff")
        # 27.005 on slot 1 lists the same messages with the same <stat>
        port = r.service.port
        assert port is not None
        await port.command("AT+CMGF=1")
        await port.command('AT+CSCS="GSM"')
        listing = await port.command('AT+CMGL="ALL"')
        heads = [line for line in listing.lines if line.startswith("+CMGL:")]
        assert sorted(h.split(",")[1] for h in heads) == sorted(f'"{m.status.value}"' for m in everything), (
            listing.lines
        )
        assert "See you at 8" in listing.lines and "On my way" in listing.lines
        # +CMGL marked the unread one read on the card: that is an edit the next cycle carries everywhere
        mark = len(r.tracer.events)
        read = await r.service.cycle(Trigger(TriggerKind.EDIT, "nothing"))
        assert read.ran, read.aborted
        now_read = Message(MessageStatus.REC_READ, M_IN.address, M_IN.text, M_IN.timestamp)
        assert local_messages(r) == {now_read, M_OUT, M_LOCAL}
        assert now_read in await sim_messages(r, 2)
        # on slot 2 only the status octet changed: one UPDATE RECORD, the rest of the record as it was
        assert len([line for line in updates(r, mark)]) == 1
        # a third cycle with nothing changed writes nothing: no UPDATE RECORD, no +CPBW, no PUT
        mark = len(r.tracer.events)
        idle = await r.service.cycle(Trigger(TriggerKind.EDIT, "nothing"))
        assert idle.ran and idle.result is not None and not idle.result.writes
        assert not updates(r, mark) and not [c for c in r.commands(mark) if c.startswith("AT+CPBW")]


async def test_message_status_and_deletion_from_the_terminal_reach_ef_sms(tmp_path: Path) -> None:
    async with rig(tmp_path, [A], None, server=False, sms1=(sms_item(M_IN), sms_item(M_OUT))) as r:
        assert (await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))).ran
        before = await ef_sms(r, 1)
        now_read = Message(MessageStatus.REC_READ, M_IN.address, M_IN.text, M_IN.timestamp)
        mark = len(r.tracer.events)
        report = await r.service.edit_local({now_read.identity(): now_read}, delete=[M_OUT.identity()])
        assert report.ran, report.aborted
        after = await ef_sms(r, 1)
        # read: status 01, the SC address and TPDU byte for byte; deleted: the record is free (00, then FF)
        assert after == {1: b"\x01" + before[1][1:]}
        assert any(line.startswith('AT+CRSM=220,28476,2,4,176,"00' + "FF" * 175) for line in updates(r, mark))
        assert local_messages(r) == {now_read}


async def test_message_too_long_for_a_record_is_skipped_for_the_sim_and_kept_elsewhere(
    tmp_path: Path,
) -> None:
    long_text = Message(MessageStatus.REC_UNREAD, "+441632960009", "x" * 161, "26/11/30,10:00:00+00")
    async with rig(tmp_path, [A], None, server=False) as r:
        assert (await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))).ran
        report = await r.service.edit_local({long_text.identity(): long_text, M_LOCAL.identity(): M_LOCAL})
        assert report.ran, report.aborted
        assert report.skipped == {f"sim:{iccid_of('001010000000001')}": (long_text.identity(),)}
        assert any(
            e.field("event") == "sync_record_unfit" and e.field("identity") == long_text.identity()
            for e in r.tracer.events
        )
        assert await sim_messages(r, 1) == {M_LOCAL}
        again = await r.service.cycle(Trigger(TriggerKind.EDIT, "nothing"))
        assert again.ran and local_messages(r) == {long_text, M_LOCAL}  # not taken for a deletion on the SIM


async def test_a_sim_record_the_sync_cannot_read_is_left_alone_and_never_overwritten(tmp_path: Path) -> None:
    garbage = "03" + "00" + "04FF"  # used (unread), no SC address, an SMS-DELIVER cut short
    async with rig(tmp_path, [A], None, server=False, sms1=(garbage,)) as r:
        report = await r.service.edit_local({M_LOCAL.identity(): M_LOCAL})
        assert report.ran, report.aborted
        kept = [e for e in r.tracer.events if e.field("event") == "sync_record_kept"]
        assert kept and kept[0].field("index") == 1
        records = await ef_sms(r, 1)
        assert records[1] == bytes.fromhex(garbage).ljust(176, b"\xff")  # untouched
        assert decode_sms_record(records[2]) == M_LOCAL  # the message went to the next free record


async def test_a_stored_message_keeps_its_time_stamp_off_the_sim_and_is_written_once(tmp_path: Path) -> None:
    draft = Message(MessageStatus.STO_UNSENT, "+441632960001", "Draft", "26/11/30,11:00:00+00")
    async with rig(tmp_path, [A], None) as r:
        assert (await r.service.edit_local({draft.identity(): draft})).ran
        assert await sim_messages(r, 1) == {Message(MessageStatus.STO_UNSENT, draft.address, draft.text, "")}
        mark = len(r.tracer.events)
        again = await r.service.cycle(Trigger(TriggerKind.EDIT, "nothing"))
        assert again.ran and again.result is not None and not again.result.writes
        assert not updates(r, mark)
        assert local_messages(r) == {draft} and draft in server_records(r)


async def test_a_card_refusing_update_record_aborts_with_the_journal_as_before(tmp_path: Path) -> None:
    class Refusing:
        def __init__(self, inner: AtChat) -> None:
            self.inner = inner

        async def command(self, line: str, *, timeout: float | None = None, step: str | None = None):  # type: ignore[no-untyped-def]
            answer = await self.inner.command(line, timeout=timeout, step=step)
            if line.startswith("AT+CRSM=220,"):
                from bipsim.link.at_chat import AtResponse

                return AtResponse(answer.command, ('+CRSM: 101,130,""',), "OK")  # 65 82: memory problem
            return answer

    async with rig(tmp_path, [A], None, server=False) as r:
        assert (await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))).ran
        assert isinstance(r.service.port, AtChat)
        r.service.port = Refusing(r.service.port)
        report = await r.service.edit_local({M_LOCAL.identity(): M_LOCAL})
        assert not report.ran and "6582" in report.aborted
        refused = [e for e in r.tracer.events if e.field("event") == "sync_write_refused"]
        assert refused and refused[-1].field("result") == "6582"
        records, state = r.local.load()
        assert M_LOCAL in {e.record for e in records.values()}  # the user's edit is kept
        assert M_LOCAL not in state.merged.values()  # the journal as before: the next trigger redoes it


def test_ef_sms_codec() -> None:
    for message in (M_IN, M_LOCAL, Message(MessageStatus.STO_UNSENT, "", "no recipient yet", "")):
        record = encode_sms_record(message)
        assert len(record) == 176 and decode_sms_record(record) == message
    assert decode_sms_record(FREE_RECORD) is None
    assert sim_form(Message(MessageStatus.STO_SENT, "123", "hi", "t")) == Message(
        MessageStatus.STO_SENT, "123", "hi", ""
    )
    with pytest.raises(RecordUnfit):
        encode_sms_record(Message(MessageStatus.REC_READ, "+1", "hi", "yesterday"))
    with pytest.raises(RecordUnfit):
        encode_sms_record(Message(MessageStatus.REC_READ, "+1", "ж" * 71, "26/11/30,10:00:00+00"))
    with pytest.raises(SimDataError):
        decode_sms_record(bytes.fromhex("0100").ljust(176, b"\xff"))
    assert parse_crsm(['+CRSM: 144,0,"0102"']) == (0x9000, b"\x01\x02")
    assert parse_crsm(["+CRSM: 106,130"]) == (0x6A82, b"")
    with pytest.raises(SimDataError):
        parse_crsm(['+CRSM: 144,0,"012"'])
    assert fcp_records(bytes.fromhex("6207820542210050FF")) == (0x50, 0xFF)  # TS 102 221 11.1.1.4.3


async def test_sim_pulled_between_two_update_records_the_next_trigger_finishes_without_duplicates(
    tmp_path: Path,
) -> None:
    draft = Message(MessageStatus.STO_UNSENT, "+441632960001", "Draft", "26/11/30,11:00:00+00")

    class PullOnSecondUpdate:
        """The user pulls the SIM as the second UPDATE RECORD goes out: the draft is on EF_SMS, M_LOCAL is not."""

        def __init__(self, inner: AtChat, rig_: Rig) -> None:
            self.inner, self.rig, self.updates = inner, rig_, 0

        async def command(self, line: str, *, timeout: float | None = None, step: str | None = None):  # type: ignore[no-untyped-def]
            if line.startswith("AT+CRSM=220,"):
                self.updates += 1
                if self.updates == 2:
                    self.rig.slots[0].transport.remove()  # type: ignore[attr-defined]
            return await self.inner.command(line, timeout=timeout, step=step)

    async with rig(tmp_path, [A], None, sms1=(sms_item(M_IN),)) as r:
        await seed_local_and_server(r, [draft, M_LOCAL])
        chat = r.service.port
        assert isinstance(chat, AtChat)
        r.service.port = PullOnSecondUpdate(chat, r)
        report = await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))
        assert not report.ran and "+CME ERROR: 10" in report.aborted
        _, state = r.local.load()
        assert not state.merged.get(M_IN.identity())  # the journal as before
        r.slots[0].transport.insert()  # type: ignore[attr-defined]
        await r.slots[0].power_on()
        r.service.port = chat
        # the draft is on the SIM without its time stamp; the retry takes it for the terminal's draft
        assert Message(MessageStatus.STO_UNSENT, draft.address, draft.text, "") in await sim_messages(r, 1)
        again = await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))
        assert again.ran, again.aborted
        assert local_messages(r) == {M_IN, draft, M_LOCAL}
        assert {m for m in server_records(r) if isinstance(m, Message)} == {M_IN, draft, M_LOCAL}
        assert len(await ef_sms(r, 1)) == 3


# issue 20 review: a bad file, a vanishing virtual SIM, a non-finite time stamp, the modem's +CSCS


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[1, 2]",  # not the layout LocalStore writes
        '{"records": {"x": {"type": "contact", "name": "A", "number": "1", "changed": NaN}}}',
        '{"records": {"x": {"type": "contact", "name": "A", "number": "1", "changed": Infinity}}}',
        '{"records": ' + "[" * 100_000,
    ],
)
async def test_a_malformed_local_store_aborts_the_cycle_and_is_left_as_it_was(
    tmp_path: Path, text: str
) -> None:
    async with rig(tmp_path, [A], None, server=False) as r:
        r.local.path.write_text(text, encoding="utf-8")
        report = await r.service.cycle(Trigger(TriggerKind.EDIT, "local"))
        assert not report.ran and "terminal's store" in report.aborted
        aborted = [e for e in r.tracer.events if e.field("event") == "sync_aborted"]
        assert len(aborted) == 1 and aborted[0].error
        assert r.local.path.read_text(encoding="utf-8") == text
        assert await read_sim(r, 1) == {A}
        assert (await r.service.cycle(Trigger(TriggerKind.EDIT, "again"))).aborted  # and the service goes on


async def test_a_virtual_sim_vanishing_between_names_and_load_aborts_the_cycle(tmp_path: Path) -> None:
    class Vanishing(VirtualSims):
        def names(self) -> set[str]:
            return {"ghost"}  # listed, then gone before load() (an eSIM profile deleted meanwhile)

    async with rig(tmp_path, [A], None, server=False) as r:
        r.service.virtual = Vanishing(tmp_path / "virtual")
        report = await r.service.cycle(Trigger(TriggerKind.VIRTUAL_ADDED, "ghost"))
        assert not report.ran and "virtual SIM ghost" in report.aborted
        assert any(e.field("event") == "sync_aborted" for e in r.tracer.events)


async def test_the_sync_gives_the_modem_its_character_set_back(tmp_path: Path) -> None:
    async with rig(tmp_path, [A], None, server=False) as r:
        port = r.service.port
        assert port is not None
        assert (await port.command('AT+CSCS="IRA"')).ok
        assert (await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))).ran
        assert list((await port.command("AT+CSCS?")).lines) == ['+CSCS: "IRA"']
        # and after an aborted cycle as well
        r.local.path.write_text("{not json", encoding="utf-8")
        assert not (await r.service.cycle(Trigger(TriggerKind.EDIT, "local"))).ran
        assert list((await port.command("AT+CSCS?")).lines) == ['+CSCS: "IRA"']


async def test_a_terminal_store_that_cannot_be_written_aborts_the_cycle(tmp_path: Path) -> None:
    async with rig(tmp_path, [A], None, server=False) as r:
        r.service.local = LocalStore(tmp_path / "no-such-folder" / "local.json")
        report = await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))
        assert not report.ran and "terminal's store" in report.aborted
        assert [
            e.field("event") for e in r.tracer.events if e.field("event") in ("sync_aborted", "sync_done")
        ] == ["sync_aborted"]


async def test_the_watch_survives_a_malformed_store_and_syncs_once_it_is_mended(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, [A], None, server=False) as r:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.service.watch, 1.0)
            await trio.sleep(0.5)
            assert [c.ran for c in r.service.cycles] == [True]
            r.local.path.write_text("{not json", encoding="utf-8")
            await trio.sleep(2)
            assert [c.ran for c in r.service.cycles] == [
                True,
                False,
            ]  # one aborted cycle, and the watch goes on
            r.local.save({}, SyncState())  # mended by hand: an empty store that never synced
            await trio.sleep(2)
            assert r.service.cycles[-1].ran and local_contacts(r) == {A}
            nursery.cancel_scope.cancel()


async def test_a_server_answer_nested_past_the_parser_is_garbage_and_aborts_the_cycle(tmp_path: Path) -> None:
    from bipsim.ota.sync_server import Response

    async with rig(tmp_path, [A], None) as r:
        assert r.server is not None
        nested = Response(
            200, b'{"records": ' + b"[" * 100_000, {"content-type": "application/json", "etag": '"1"'}
        )
        r.server.handle = lambda request: nested  # type: ignore[method-assign]
        report = await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))
        assert not report.ran and "garbage" in report.aborted
        assert any(e.kind == "http.error" for e in r.tracer.events)
        assert not r.local.path.exists() and await read_sim(r, 1) == {A}
