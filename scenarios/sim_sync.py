"""The SIM data sync scenarios (docs/protocols.md, "SIM data sync"; steps 002:S11..S13): the real AP (`bipsim ap
--sync`), the real CP with its card slots and card-control socket, and the sync server in the harness's own
process, driven through card insertion and removal, a virtual SIM, an edit on the server and a conflict."""

from __future__ import annotations

import json
import socket
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bipsim.ap.sync.merge import Contact, Entry, Record
from bipsim.ap.sync.service import LocalStore, SyncState, VirtualSims
from bipsim.ota.sync_server import Request, Subscriber, SyncServer, SyncService, Terminal
from bipsim.scenarios.base import ScenarioFailed, ScenarioOptions, ScenarioResult, check
from bipsim.scenarios.harness import EventQuery, Harness, RunConfig, RunResult, run_processes
from bipsim.trace.kinds import Kind

SUBSCRIBER = "001010123456789"
TOKEN = "scenario-token"
A = Contact("Alice", "+441632960001")
B = Contact("Bob", "01632960002")
C = Contact("Carol", "+441632960003")
WAIT = 60.0


# a cycle's end: done, or aborted (its merge, sync_merged, comes before its writes)
MERGED = EventQuery(Kind.APP_EVENT, lambda f: f.get("event") in ("sync_done", "sync_aborted"))


STORES = EventQuery(Kind.APP_EVENT, lambda f: f.get("event") == "sync_merged")


def _trigger(kind: str) -> EventQuery:
    return EventQuery(Kind.APP_EVENT, lambda f: f.get("event") == "sync_trigger" and f.get("trigger") == kind)


@dataclass
class SyncRun:
    name: str
    sim1: list[Contact]
    sim2: list[Contact] | None = None
    seed: list[Record] = field(
        default_factory=list
    )  # what the terminal's store and the server agreed on before
    act: Callable[[SyncRun, Harness], Awaitable[None]] | None = None
    ap_args: list[str] = field(default_factory=list)  # more `bipsim ap` options (--security fail)
    directory: Path = Path()
    server: SyncService = field(default_factory=lambda: SyncService([Terminal("phone", TOKEN, SUBSCRIBER)]))
    failure: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def local(self) -> LocalStore:
        return LocalStore(self.directory / "local.json")

    def local_records(self) -> set[Record]:
        return {entry.record for entry in self.local.load()[0].values()}

    def server_records(self) -> set[Record]:
        from bipsim.ap.sync.merge import record_from_json

        sub = self.server.subscribers.get(SUBSCRIBER)
        return {record_from_json(value) for value in sub.records.values()} if sub else set()

    def server_edit(self, identity: str, record: Record, changed: float) -> None:
        sub = self.server.subscribers.get(SUBSCRIBER) or Subscriber()
        records = {**sub.records, identity: {**record.to_json(), "changed": changed}}
        answer = self.server.handle(
            Request(
                "PUT",
                f"/sync/v1/{SUBSCRIBER}/records",
                {"authorization": f"Bearer {TOKEN}", "content-type": "application/json", "if-match": "*"},
                json.dumps({"records": records}).encode(),
            )
        )
        if answer.status != 200:
            raise ScenarioFailed(f"the server refused the edit: {answer.status}")


def iccid_of(imsi: str) -> str:
    """A scenario card's ICCID (19 digits, TS 102 221 13.2), made from its IMSI."""
    return "8988211" + imsi[-12:]


SIM2 = f"sim:{iccid_of('001010000000002')}"  # the second slot's card as the sync names it


def _profile(contacts: list[Contact], imsi: str) -> dict[str, Any]:
    # trigger manual: no BIP session of the card ends the CP's run; the scenario ends it when the syncs are done
    return {
        "imsi": imsi,
        "iccid": iccid_of(imsi),  # each card its own: the sync keys a SIM by its ICCID
        "trigger": "manual",
        "contacts": tuple({"name": c.name, "number": c.number} for c in contacts),
    }


async def _drive(run: SyncRun, listener: socket.socket, harness: Harness) -> None:
    async with trio.open_nursery() as nursery:
        server = SyncServer(run.server)
        nursery.start_soon(server.serve_on, trio.SocketListener(trio.socket.from_stdlib_socket(listener)))
        try:
            boots = 1 + (run.sim2 is not None)
            if await harness.wait_for_event("ap", MERGED, count=boots, timeout=WAIT) is None:
                run.failure = f"the AP did not sync {boots} inserted SIM(s)"
            elif run.act is not None:
                await run.act(run, harness)
        except ScenarioFailed as exc:
            run.failure = str(exc)
        finally:
            cp = harness.processes.get("cp")
            if cp is not None and cp.returncode is None:
                cp.terminate()
            nursery.cancel_scope.cancel()


def run_sync(run: SyncRun, options: ScenarioOptions) -> RunResult:
    directory = options.directory or Path(tempfile.mkdtemp(prefix=f"bipsim-{run.name}-"))
    directory.mkdir(parents=True, exist_ok=True)
    run.directory = directory
    if run.seed:
        seeded = {record.identity(): record for record in run.seed}
        state = SyncState(dict(seeded), {"local": dict(seeded), "server": dict(seeded)})
        run.local.save({i: Entry(r, 1.0) for i, r in seeded.items()}, state)
        run.server.subscribers[SUBSCRIBER] = Subscriber(
            1, {i: {**r.to_json(), "changed": 1.0} for i, r in seeded.items()}, "seed"
        )
    (directory / "virtual").mkdir(exist_ok=True)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    ap_args = [
        "--sync",
        f"http://127.0.0.1:{port}/sync/v1/{SUBSCRIBER}/records",
        "--sync-token",
        TOKEN,
        "--sync-store",
        str(directory / "local.json"),
        "--virtual-sims",
        str(directory / "virtual"),
        *run.ap_args,
    ]
    config = RunConfig(
        session=run.name,
        profile=_profile(run.sim1, SUBSCRIBER),
        ap_args=ap_args,
        card2="sim" if run.sim2 is not None else None,
        profile2=_profile(run.sim2, "001010000000002") if run.sim2 is not None else {},
        card_control=True,
        server=False,
        port_a=options.port_a,
        port_b=options.port_b,
        timeout=180.0,
        during=lambda harness: _drive(run, listener, harness),
    )
    result = run_processes(config, directory)
    check(run.failure is None, f"{run.name}: {run.failure}", result)
    if "fail" not in run.ap_args:
        _check_steps(result)
    return result


def _check_steps(result: RunResult) -> None:
    """Every sync labels 002:S11, S12 and S13, first occurrences in that order."""
    first: dict[str, float] = {}
    for event in result.events:
        if event.step and event.step.startswith("002:") and event.step not in first:
            first[event.step] = event.t
    codes = ["002:S11", "002:S12", "002:S13"]
    check(all(code in first for code in codes), f"steps seen: {sorted(first)}", result)
    check(sorted(codes, key=first.__getitem__) == codes, f"steps out of order: {first}", result)


def _cpbw(result: RunResult) -> list[str]:
    return [
        e.summary for e in result.events if e.kind == Kind.AT_COMMAND and e.summary.startswith("AT+CPBW=")
    ]


def _ucs2(text: str) -> str:
    return text.encode("utf-16-be").hex().upper()


def _scenario(run: SyncRun, options: ScenarioOptions, checks: Callable[[RunResult], None]) -> ScenarioResult:
    result = run_sync(run, options)
    checks(result)
    return ScenarioResult(run.name, result, run.notes)


def sim_sync_insert(options: ScenarioOptions) -> ScenarioResult:
    """A SIM with Alice and Bob goes into a terminal whose store and server hold Carol: all end with the three.

    002:S11 the SIM inserted, S12 read, S13 written back with +CPBW and to the server."""
    run = SyncRun("sim-sync-insert", [A, B], seed=[C])

    def checks(result: RunResult) -> None:
        check(run.local_records() == {A, B, C}, f"terminal's store: {run.local_records()}", result)
        check(run.server_records() == {A, B, C}, f"server: {run.server_records()}", result)
        writes = _cpbw(result)
        check(
            any(f'"{C.number}",145,"{_ucs2(C.name)}"' in line for line in writes), f"+CPBW: {writes}", result
        )
        run.notes.append(f"{len(writes)} +CPBW; every store holds {len(run.local_records())} contacts")

    return _scenario(run, options, checks)


async def _remove_insert(run: SyncRun, harness: Harness) -> None:
    await harness.remove_card(2)
    if await harness.wait_for_event("ap", _trigger("sim_removed"), timeout=WAIT) is None:
        raise ScenarioFailed("no sync trigger for the removed SIM")
    removed = await harness.wait_for_event("ap", STORES, count=3, timeout=WAIT)
    if removed is None or SIM2 in removed["fields"]["stores"]:
        raise ScenarioFailed(f"the sync after the removal: {removed}")
    await harness.insert_card(2)
    if await harness.wait_for_event("ap", _trigger("sim_inserted"), count=3, timeout=WAIT) is None:
        raise ScenarioFailed("no sync trigger for the SIM put back")
    back = await harness.wait_for_event("ap", STORES, count=4, timeout=WAIT)
    if back is None or SIM2 not in back["fields"]["stores"]:
        raise ScenarioFailed(f"the sync after the insertion: {back}")
    await _cycle_end(harness, STORES, 4)
    run.notes.append("removal and insertion each started one sync")


def sim_sync_remove(options: ScenarioOptions) -> ScenarioResult:
    """Two SIMs, Alice on one and Bob on the other, end with both; one pulled and put back starts one sync each.

    Case 1: the second SIM is pulled (one sync, without it) and put back (one sync, with it)."""
    run = SyncRun("sim-sync-remove", [A], [B], act=_remove_insert)

    def checks(result: RunResult) -> None:
        check(run.local_records() == {A, B}, f"terminal's store: {run.local_records()}", result)
        triggers = [
            e.field("trigger")
            for e in result.events
            if e.kind == Kind.APP_EVENT and e.field("event") == "sync_trigger"
        ]
        check(triggers.count("sim_removed") == 1, f"triggers: {triggers}", result)

    return _scenario(run, options, checks)


async def _done(harness: Harness, count: int, what: str) -> None:
    """The `count`th cycle of the run ended, and finished: its writes are in every store the checks read."""
    end = await harness.wait_for_event("ap", MERGED, count=count, timeout=WAIT)
    if end is None:
        raise ScenarioFailed(f"{what} started no sync")
    if end["fields"].get("event") != "sync_done":
        raise ScenarioFailed(f"the sync after {what} did not finish: {end['fields']}")


EDITED = Contact("Alice Smith", A.number)


async def _server_edit(run: SyncRun, harness: Harness) -> None:
    run.server_edit(A.identity(), EDITED, 4e9)
    await _done(harness, 2, "the server's edit")


def sim_sync_edit(options: ScenarioOptions) -> ScenarioResult:
    """Alice renamed on the server reaches the terminal's store and the SIM's EF_ADN (case 6).

    The SIM is written with +CPBW, the number international (145), the name in UCS2."""
    run = SyncRun("sim-sync-edit", [A], seed=[A], act=_server_edit)

    def checks(result: RunResult) -> None:
        check(run.local_records() == {EDITED}, f"terminal's store: {run.local_records()}", result)
        writes = _cpbw(result)
        wanted = f'"{A.number}",145,"{_ucs2(EDITED.name)}"'
        check(any(wanted in line for line in writes), f"+CPBW: {writes}", result)

    return _scenario(run, options, checks)


async def _add_virtual(run: SyncRun, harness: Harness) -> None:
    VirtualSims(run.directory / "virtual").save("esim1", {B.identity(): Entry(B, 2.0)})
    if await harness.wait_for_event("ap", _trigger("virtual_added"), timeout=WAIT) is None:
        raise ScenarioFailed("the virtual SIM's arrival started no sync")
    await _done(harness, 2, "the virtual SIM's arrival")


def sim_sync_virtual(options: ScenarioOptions) -> ScenarioResult:
    """A virtual SIM holding Bob joins a terminal whose SIM holds Alice: every store ends with both (case 3).

    The virtual SIM is an eSIM profile's file; the terminal's store and the server end with both as well."""
    run = SyncRun("sim-sync-virtual", [A], act=_add_virtual)

    def checks(result: RunResult) -> None:
        virtual = {e.record for e in VirtualSims(run.directory / "virtual").load("esim1").values()}
        check(virtual == {A, B}, f"virtual SIM: {virtual}", result)
        check(run.local_records() == {A, B} == run.server_records(), f"stores: {run.local_records()}", result)
        check(
            any(f'"{B.number}",129,"{_ucs2(B.name)}"' in line for line in _cpbw(result)),
            "no +CPBW of Bob",
            result,
        )

    return _scenario(run, options, checks)


LOCAL_EDIT = Contact("Alice Local", A.number)
SERVER_EDIT = Contact("Alice Server", A.number)


async def _conflict(run: SyncRun, harness: Harness) -> None:
    records, state = run.local.load()
    records[A.identity()] = Entry(LOCAL_EDIT, 3e9)
    run.server_edit(A.identity(), SERVER_EDIT, 3.5e9)  # the newer change
    run.local.save(records, state)
    conflict = EventQuery(
        Kind.APP_EVENT, lambda f: f.get("event") == "sync_merged" and f.get("conflicts", 0) > 0
    )
    if await harness.wait_for_event("ap", conflict, timeout=WAIT) is None:
        raise ScenarioFailed("no sync resolved the conflict")
    await _cycle_end(harness, conflict)


async def _cycle_end(harness: Harness, merged: EventQuery, nth: int = 1) -> dict[str, Any]:
    """Waits for the end of the cycle whose merge is the `nth` event matching `merged`: cycles run one at a time
    and each traces its sync_merged before its sync_done or sync_aborted, so that end is the first MERGED event
    after it. The stores the checks read are written when it is sync_done; anything else fails the scenario."""
    seen = harness.events_so_far("ap")
    at = [i for i, obj in enumerate(seen) if merged.matches_dict(obj)][nth - 1 : nth]
    if not at:
        raise ScenarioFailed("the cycle's merge is not in the AP's trace")
    before = sum(1 for obj in seen[: at[0]] if MERGED.matches_dict(obj))
    end = await harness.wait_for_event("ap", MERGED, count=before + 1, timeout=WAIT)
    if end is None:
        raise ScenarioFailed("the cycle that merged never ended")
    if end["fields"].get("event") != "sync_done":
        raise ScenarioFailed(f"the cycle that merged did not finish: {end['fields']}")
    return end


def sim_sync_conflict(options: ScenarioOptions) -> ScenarioResult:
    """Alice is edited on the terminal and later on the server: the newer edit, the server's, wins everywhere."""
    run = SyncRun("sim-sync-conflict", [A], seed=[A], act=_conflict)

    def checks(result: RunResult) -> None:
        check(run.local_records() == {SERVER_EDIT} == run.server_records(), f"{run.local_records()}", result)
        wanted = f'"{A.number}",145,"{_ucs2(SERVER_EDIT.name)}"'
        check(any(wanted in line for line in _cpbw(result)), f"+CPBW: {_cpbw(result)}", result)

    return _scenario(run, options, checks)
