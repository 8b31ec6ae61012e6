"""The eUICC profile download with a cloud backup (docs/protocols.md, "eUICC and the cloud backup"; issue 23): a real
CP (`bipsim cp --profile` the built-in `euicc` card, its ISD-R reached over AT+CCHO/+CGLA) and a real AP running the
LPA (`bipsim ap --lpa`), with the SM-DP+ (ES9+ over HTTPS, traced to smdp.jsonl) and the cloud store (traced to
cloud.jsonl) in the scenario's process. Steps 000:* (trace/steps.py).

`esim-download`: the profile (PPR1 and PPR2) is downloaded, backed up, installed, the backup deleted, the profile
enabled and the CP's AT+CIMI answers its IMSI. `esim-cloud-retry`: the eUICC aborts the install at segment 3, the
power goes while the LPA asks the cloud, and after the restart the profile is installed from the cloud's copy.
`esim-not-logged-in`: the user closes the login page: one preset message, no ES9+ request. `esim-chunked`: packages
of 1024, 2048 and 2049 bytes through the cloud store as 1, 2 and 3 records. `esim-second-download-refused`: after the
download another eUICC asks the SM-DP+ for the same profile and is refused. `esim-no-key-kept`: as the retry, with a
card that does not keep its one-time key: the cloud's package is refused and the LPA stops without a loop.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bipsim.scenarios.base import ScenarioFailed, ScenarioOptions, ScenarioResult, check
from bipsim.scenarios.harness import EventQuery, Harness, RunConfig, RunResult, run_processes
from bipsim.trace.events import TraceEvent
from bipsim.trace.kinds import Kind
from bipsim.trace.reader import read_trace
from bipsim.trace.recorder import Tracer
from bipsim.trace.steps import STEPS

USER, PASSWORD = "watch-owner", "correct horse battery"
MATCHING_ID = "WATCH-PLAN-1"  # the served profile of the scenarios: ICCID and IMSI below, PPR1 and PPR2
ICCID = "8944476500009876543"
IMSI = "001010000000456"
FAULT_SEGMENT = 3
# the second terminal's eUICC in esim-second-download-refused: another EID (SGP.29 check digits), its own eUICC
# certificate from the same EUM
OTHER_EID = "89049032123451234512345678909965"
WAIT = 60.0  # seconds for a moment of the run on a loaded machine; a broken run ends sooner (a process exits)

FINAL = EventQuery(Kind.LPA_RESULT, lambda f: f.get("outcome") in ("installed", "stopped"))
NEW_SESSION = EventQuery(Kind.AT_COMMAND, src="ap", data_prefix=b"AT+CMUX")

PROFILE_TOML = f"""# the operator profile the scenarios' SM-DP+ serves (ota/smdp.py load_profile_file)
iccid = "{ICCID}"
imsi = "{IMSI}"

[smdp]
matching_id = "{MATCHING_ID}"
ppr_ids = ["ppr1", "ppr2"]
service_provider_name = "Watch Operator"
profile_name = "Watch plan"
"""


@dataclass
class EsimRun:
    name: str
    ui: str = f"login:{USER}:{PASSWORD}"
    fault: int = 0  # euicc_fault_segment of the card
    keep_otpk: bool = True
    power_cycle: bool = False  # the power goes while the LPA asks the cloud (the fetch is held until then)
    failure: str | None = None
    smdp_events: list[TraceEvent] = field(default_factory=list)
    cloud_events: list[TraceEvent] = field(default_factory=list)
    cloud_url: str = ""
    smdp_address: str = ""
    directory: Path = Path()
    boots: int = 0


def _listener() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener


class _Prefixed(trio.abc.Stream):
    """A stream whose first bytes were read already (to see the request line) and are given again."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self.prefix = prefix

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.prefix:
            out, self.prefix = self.prefix, b""
            return out
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _drive(
    run: EsimRun, smdp: Any, cloud: Any, listeners: list[socket.socket], harness: Harness
) -> None:
    fetch_held = trio.Event()
    released = trio.Event()
    if not run.power_cycle:
        released.set()

    async def cloud_connection(stream: trio.SocketStream) -> None:
        # with a power cycle, the first fetch (GET /profiles) is held unread until the power is back and then
        # closed: the power cut interrupts it, and the cloud never serves it (item 5 counts what it served); the
        # fetch of the AP's next session passes at once, even before the scenario has seen that session begin
        if released.is_set():
            await cloud.handle(stream)
            return
        head = b""
        with trio.move_on_after(WAIT):
            while b"\r\n" not in head and len(head) < 4096:
                data = await stream.receive_some(4096)
                if not data:
                    break
                head += data
        if head.startswith(b"GET /profiles") and not fetch_held.is_set():  # the first fetch only
            fetch_held.set()
            await released.wait()
            await stream.aclose()
            return
        await cloud.handle(_Prefixed(stream, head))

    async with trio.open_nursery() as nursery:
        smdp_socket, cloud_socket = (
            trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in listeners
        )
        nursery.start_soon(trio.serve_listeners, smdp.handle, [smdp_socket])
        nursery.start_soon(trio.serve_listeners, cloud_connection, [cloud_socket])
        try:
            if run.power_cycle:
                with trio.move_on_after(WAIT):
                    await fetch_held.wait()
                check(fetch_held.is_set(), "the LPA did not turn to the cloud after the failed install")
                await harness.power_cycle_cp()
                run.boots += 1
                # the AP's second AT+CMUX: its old modem session (and the LPA's run in it) has ended, so the held
                # fetch is closed under nobody and the LPA's next run asks again
                again = await harness.wait_for_event("ap", NEW_SESSION, count=2, timeout=WAIT)
                check(again is not None, "the AP did not start a new modem session after the power cycle")
                released.set()
            final = await harness.wait_for_event("ap", FINAL, timeout=WAIT)
            check(final is not None, "the LPA told no outcome")
        except ScenarioFailed as exc:
            run.failure = str(exc)
        finally:
            released.set()
            cp = harness.processes.get("cp")
            if cp is not None and cp.returncode is None:
                cp.terminate()
            nursery.cancel_scope.cancel()


def run_esim(run: EsimRun, options: ScenarioOptions) -> RunResult:
    from bipsim.ota.cloud_store import CloudServer, CloudService
    from bipsim.ota.smdp import SmdpServer, SmdpService, load_profiles, server_ssl_context
    from bipsim.uicc.euicc.pki import ensure_pki
    from bipsim.uicc.profile import dump_profile, load_profile

    directory = options.directory or Path(tempfile.mkdtemp(prefix=f"bipsim-{run.name}-"))
    directory.mkdir(parents=True, exist_ok=True)
    run.directory = directory
    for stale in ("smdp.jsonl", "cloud.jsonl", "lpa.json", "smdp-state.json", "cloud-state.json"):
        (directory / stale).unlink(missing_ok=True)
    pki = ensure_pki(directory / "pki")
    profiles = directory / "profiles"
    profiles.mkdir(exist_ok=True)
    (profiles / "watch.toml").write_text(PROFILE_TOML)
    card = load_profile("euicc").with_overrides(
        euicc_pki=str(pki.directory),
        euicc_fault_segment=run.fault,
        euicc_keep_otpk=run.keep_otpk,
        trigger="manual",  # no BIP session: nothing of the OTA server in this story
    )
    (directory / "euicc.toml").write_text(dump_profile(card))
    listeners = [_listener(), _listener()]
    smdp_port, cloud_port = (s.getsockname()[1] for s in listeners)
    run.smdp_address = f"127.0.0.1:{smdp_port}"
    run.cloud_url = f"http://127.0.0.1:{cloud_port}"
    smdp_tracer = Tracer.to_file(directory / "smdp.jsonl", session=run.name)
    cloud_tracer = Tracer.to_file(directory / "cloud.jsonl", session=run.name)
    smdp = SmdpServer(
        SmdpService(
            pki,
            load_profiles(profiles),
            address=run.smdp_address,
            state_path=directory / "smdp-state.json",
        ),
        tracer=smdp_tracer,
        ssl_context=server_ssl_context(pki),
    )
    service = CloudService(state_path=directory / "cloud-state.json", iterations=1000)
    service.add_user(USER, PASSWORD)
    cloud = CloudServer(service, cloud_tracer)
    ap_args = [
        "--lpa",
        f"LPA:1${run.smdp_address}${MATCHING_ID}",
        "--lpa-cloud",
        f"http://{USER}:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{cloud_port}",
        "--lpa-ui",
        run.ui,
        "--lpa-state",
        str(directory / "lpa.json"),
        "--lpa-pki",
        str(pki.directory),
    ]
    config = RunConfig(
        session=run.name,
        ap_args=ap_args,
        cp_args=["--profile", str(directory / "euicc.toml")],
        server=False,
        port_a=options.port_a,
        port_b=options.port_b,
        timeout=120.0,
        during=lambda harness: _drive(run, smdp, cloud, listeners, harness),
    )
    try:
        result = run_processes(config, directory)
    finally:
        smdp_tracer.close()
        cloud_tracer.close()
        for listener in listeners:
            listener.close()
    run.smdp_events, _ = read_trace([directory / "smdp.jsonl"])
    run.cloud_events, _ = read_trace([directory / "cloud.jsonl"])
    # the run's trace with the servers' (the SM-DP+ and the cloud ran in this process): `--trace` shows it all
    boots = sorted(directory.glob("cp-boot*.jsonl"))
    files = [
        directory / "cp.jsonl",
        directory / "ap.jsonl",
        *boots,
        directory / "smdp.jsonl",
        directory / "cloud.jsonl",
    ]
    result.events, _ = read_trace([path for path in files if path.exists()])
    check(run.failure is None, f"{run.name}: {run.failure}", result)
    return result


# --- checks ----------------------------------------------------------------------------------------------------


def _of(
    events: list[TraceEvent], kind: str, test: Callable[[TraceEvent], bool] = lambda e: True
) -> list[TraceEvent]:
    return [e for e in events if e.kind == kind and test(e)]


def _ap(
    result: RunResult, kind: str, test: Callable[[TraceEvent], bool] = lambda e: True
) -> list[TraceEvent]:
    return [e for e in _of(result.events, kind, test) if e.src.value in ("ap", "uicc", "smdp", "cloud")]


def _outcome(result: RunResult) -> TraceEvent:
    finals = _ap(result, Kind.LPA_RESULT, lambda e: e.field("outcome") in ("installed", "stopped"))
    check(bool(finals), "the LPA told no outcome", result)
    return finals[-1]


def _smdp_calls(run: EsimRun, function: str) -> list[TraceEvent]:
    return _of(run.smdp_events, Kind.ES9_REQUEST, lambda e: e.field("function") == function)


def _served_fetches(run: EsimRun) -> list[TraceEvent]:
    return _of(run.cloud_events, Kind.CLOUD_FETCH, lambda e: e.field("status") == 200)


def _check_steps(result: RunResult, codes: tuple[str, ...]) -> None:
    labelled = [e for e in result.events if e.step is not None and e.step.startswith("000:")]
    wrong = [(e.step, str(e.kind)) for e in labelled if not STEPS[str(e.step)].matches(e)]
    check(not wrong, f"events labelled with steps they are not: {wrong}", result)
    first: dict[str, float] = {}
    for event in labelled:
        first.setdefault(str(event.step), event.t)
    missing = [code for code in codes if code not in first]
    check(not missing, f"steps missing: {missing}", result)
    order = [first[code] for code in codes]
    check(order == sorted(order), f"steps out of order: {sorted(codes, key=lambda c: first[c])}", result)


def _check_installed(run: EsimRun, result: RunResult) -> None:
    """Items 2, 3 and 6 of the issue: the EID of GetEID is the SM-DP+'s, the cloud held the records before the
    install, the delete came, the profile is on the card and the CP reads its IMSI."""
    outcome = _outcome(result)
    check(outcome.field("outcome") == "installed", f"the LPA ended {outcome.field('reason')!r}", result)
    check(outcome.field("iccid") == ICCID, f"installed {outcome.field('iccid')}, not {ICCID}", result)
    check(outcome.field("imsi") == IMSI, f"AT+CIMI answered {outcome.field('imsi')}, not {IMSI}", result)
    # item 1: no ES9+ request before the login check passed
    passed = _ap(result, Kind.LPA_STATE, lambda e: e.field("event") == "logged_in")
    calls = _ap(result, Kind.LPA_ES9)
    check(bool(passed) and bool(calls), "no login check or no ES9+ request", result)
    check(passed[0].t <= calls[0].t, "an ES9+ request before the login check passed", result)
    # item 2: the EID GetEID answered is the one the SM-DP+ authenticated (the eUICC certificate's)
    eids = _ap(
        result,
        Kind.LPA_ES10,
        lambda e: e.field("function") == "GetEID" and e.field("direction") == "response",
    )
    check(bool(eids), "no GetEID answer", result)
    eid = eids[0].data[-16:].hex().upper()
    smdp_eids = {e.field("eid") for e in _of(run.smdp_events, Kind.ES9_RESPONSE) if e.field("eid")}
    check(smdp_eids == {eid}, f"the SM-DP+ saw {smdp_eids}, GetEID said {eid}", result)
    # item 3: the cloud stored the records (document's field order, PPR 3 for ppr1+ppr2) before the install
    uploads = _of(run.cloud_events, Kind.CLOUD_UPLOAD, lambda e: e.field("status") in (None, 201))
    check(bool(uploads), "the cloud stored no record", result)
    check(
        {(e.field("eid"), e.field("ppr"), e.field("module")) for e in uploads} == {(eid, 3, "LPA")},
        f"the records carry {[(e.field('eid'), e.field('ppr')) for e in uploads]}",
        result,
    )
    bodies = [e.data.decode("ascii", "replace") for e in _of(run.cloud_events, Kind.HTTP_REQUEST) if e.data]
    records = [b for b in bodies if b.startswith("module=")]
    names = {tuple(part.split("=", 1)[0] for part in r.split("$")) for r in records}
    check(
        names == {("module", "EID", "PPR", "profile_len", "profile_data")},
        f"record fields {names}",
        result,
    )
    uploaded = _ap(result, Kind.LPA_CLOUD, lambda e: e.field("op") == "upload" and not e.error)
    installs = _ap(result, Kind.LPA_ES10, lambda e: e.field("function") == "LoadBoundProfilePackage")
    check(bool(uploaded) and bool(installs), "no upload or no install", result)
    check(uploaded[0].t < installs[0].t, "the install began before the upload ended", result)
    # item 6: the delete came and nothing is left; the card lists the ICCID
    deletes = _of(run.cloud_events, Kind.CLOUD_DELETE, lambda e: e.field("status") == 200)
    check(len(deletes) == 1, f"{len(deletes)} deletes at the cloud", result)
    check(ICCID in str(result.card_state), "the card's state does not hold the new ICCID", result)


def _later_fetch_finds_nothing(run: EsimRun, result: RunResult) -> None:
    """Item 6: a fetch after the run finds no backup (the cloud restarted on its saved state answers 404)."""
    from bipsim.ota.cloud_store import CloudClient, CloudError, CloudServer, CloudService

    async def main() -> int:
        service = CloudService(state_path=run.directory / "cloud-state.json", iterations=1000)
        service.add_user(USER, PASSWORD)
        status = 200
        async with trio.open_nursery() as nursery:
            port = await nursery.start(CloudServer(service).serve, "127.0.0.1", 0)
            client = CloudClient(f"http://127.0.0.1:{port}")
            await client.login(USER, PASSWORD)
            try:
                await client.fetch(_outcome_eid(result), "LPA")
            except CloudError as exc:
                status = exc.status
            nursery.cancel_scope.cancel()
        return status

    status = trio.run(main)
    check(status == 404, f"a later fetch of the backup answered {status}, not 404", result)


def _outcome_eid(result: RunResult) -> str:
    eids = _ap(
        result,
        Kind.LPA_ES10,
        lambda e: e.field("function") == "GetEID" and e.field("direction") == "response",
    )
    return eids[0].data[-16:].hex().upper() if eids else "0" * 32


DOWNLOAD_STEPS = ("000:401", "000:4011", "000:4012", "000:4013", "000:4014", "000:4015", "000:201", "000:202")


def esim_download(options: ScenarioOptions) -> ScenarioResult:
    """The LPA downloads the profile, backs it up to the cloud, installs it, deletes the backup and enables it."""
    run = EsimRun("esim-download")
    result = run_esim(run, options)
    _check_installed(run, result)
    _later_fetch_finds_nothing(run, result)
    _check_steps(result, (*DOWNLOAD_STEPS, "000:402", "000:203"))
    check(
        len(_smdp_calls(run, "getBoundProfilePackage")) == 1, "more than one getBoundProfilePackage", result
    )
    return ScenarioResult(run.name, result, [f"installed {ICCID}, IMSI {IMSI}"])


def _retry(run: EsimRun, options: ScenarioOptions) -> RunResult:
    result = run_esim(run, options)
    check(run.boots == 1, "the CP was not power cycled", result)
    fetches = _served_fetches(run)
    check(len(fetches) == 1, f"the cloud served {len(fetches)} fetches, not exactly one", result)
    calls = _of(run.smdp_events, Kind.ES9_REQUEST, lambda e: e.field("function") != "handleNotification")
    check(
        [e.field("function") for e in calls]
        == ["initiateAuthentication", "authenticateClient", "getBoundProfilePackage"],
        f"the SM-DP+ got {[e.field('function') for e in calls]}: a second request",
        result,
    )
    return result


def esim_cloud_retry(options: ScenarioOptions) -> ScenarioResult:
    """The eUICC aborts the install at segment 3, the power goes, and the profile is installed from the cloud."""
    run = EsimRun("esim-cloud-retry", fault=FAULT_SEGMENT, power_cycle=True)
    result = _retry(run, options)
    _check_installed(run, result)
    _check_steps(result, (*DOWNLOAD_STEPS, "000:402", "000:203", "000:403", "000:404"))
    return ScenarioResult(
        run.name, result, [f"fault at segment {FAULT_SEGMENT}, one fetch, installed {ICCID}"]
    )


def esim_no_key_kept(options: ScenarioOptions) -> ScenarioResult:
    """The card erases its one-time key at the failed install: the cloud's package is refused and the LPA stops."""
    run = EsimRun("esim-no-key-kept", fault=FAULT_SEGMENT, keep_otpk=False, power_cycle=True)
    result = _retry(run, options)
    outcome = _outcome(result)
    check(outcome.field("outcome") == "stopped", f"the LPA ended {outcome.field('outcome')}", result)
    check(
        "errorReason 3" in str(outcome.field("reason")),
        f"not invalidTransactionId: {outcome.field('reason')}",
        result,
    )
    installs = _ap(result, Kind.LPA_STATE, lambda e: e.field("state") == "installing")
    check(len(installs) == 2, f"{len(installs)} installs: a loop, or no retry", result)
    check(ICCID not in str(result.card_state), "a refused package left a profile on the card", result)
    return ScenarioResult(run.name, result, ["the replayed package was refused (invalidTransactionId)"])


def esim_not_logged_in(options: ScenarioOptions) -> ScenarioResult:
    """The user closes the cloud's login page: one preset message and no request to the SM-DP+."""
    run = EsimRun("esim-not-logged-in", ui="close")
    result = run_esim(run, options)
    check(
        not run.smdp_events or not _of(run.smdp_events, Kind.ES9_REQUEST), "an ES9+ request went out", result
    )
    messages = _ap(result, Kind.LPA_UI, lambda e: e.field("action") == "message")
    check(len(messages) == 1, f"{len(messages)} preset messages, not one", result)
    check(_outcome(result).field("outcome") == "stopped", "the LPA did not stop", result)
    check(not _ap(result, Kind.LPA_ES10), "the LPA talked to the eUICC", result)
    return ScenarioResult(run.name, result, [str(messages[0].field("message"))])


def esim_second_download_refused(options: ScenarioOptions) -> ScenarioResult:
    """After the download, a second request for the same profile from another eUICC is refused by the SM-DP+."""
    from bipsim.ota.smdp import BPP_NOT_AVAILABLE

    run = EsimRun("esim-second-download-refused")
    result = run_esim(run, options)
    _check_installed(run, result)
    first_eid = _outcome_eid(result)
    refused, second_eid = trio.run(_second_download, run)
    check(
        second_eid == OTHER_EID and second_eid != first_eid,
        f"the second terminal's eUICC answered GetEID {second_eid}, the first {first_eid}: not another eUICC",
        result,
    )
    # single use (SGP.22 5.6.2): the order's package was bound once, so getBoundProfilePackage refuses a new binding
    # with 8.2/3.7; any other failure (an address, a certificate) would not show what this scenario is about
    check(
        refused[:3] == ("Failed", *BPP_NOT_AVAILABLE) and refused[3] == "getBoundProfilePackage",
        f"the second download was {refused}, not getBoundProfilePackage's single-use refusal 8.2/3.7",
        result,
    )
    return ScenarioResult(
        run.name,
        result,
        [f"second download by EID {second_eid}: {refused[3]} {refused[0]} {refused[1]}/{refused[2]}"],
    )


async def _second_download(run: EsimRun) -> tuple[tuple[str, str, str, str], str]:
    """Another terminal's LPA with its own eUICC (EID OTHER_EID, its certificate from the same EUM) asks for the
    same matchingId from the SM-DP+ restarted on its saved state (single use survives a restart). Returns the
    SM-DP+'s answer (status, subject code, reason code) and the EID that eUICC's GetEID answered."""
    import trio.testing

    from bipsim.ap.lpa.es9_client import Es9Client
    from bipsim.ap.lpa.lpa import Lpa
    from bipsim.ap.lpa.state import LpaMachine
    from bipsim.ap.lpa.ui_policy import UiPolicy
    from bipsim.cp.card_driver import CardDriver
    from bipsim.cp.command_sets import build_command_sets
    from bipsim.cp.commands import ModemCommands
    from bipsim.cp.modem import simulated_card
    from bipsim.cp.network import CellularNetwork
    from bipsim.link.at_chat import AtChat
    from bipsim.link.at_server import AtServer
    from bipsim.ota.smdp import SmdpServer, SmdpService, load_profiles, server_ssl_context
    from bipsim.trace.events import Actor
    from bipsim.uicc.euicc.pki import client_ssl_context, ensure_pki
    from bipsim.uicc.profile import dump_profile, load_profile

    directory = run.directory
    pki = ensure_pki(directory / "pki")
    other = directory / "other-euicc.toml"
    other.write_text(
        dump_profile(
            load_profile("euicc").with_overrides(
                euicc_pki=str(pki.directory), euicc_eid=OTHER_EID, trigger="manual"
            )
        )
    )
    tracer = Tracer.to_file(directory / "second.jsonl", session=run.name, keep=True)
    card, _ = simulated_card(str(other), str(directory / "other-card.json"), tracer)
    core = ModemCommands(CardDriver(card, tracer=tracer), CellularNetwork())
    core.command_sets = build_command_sets(core, tracer, {})
    service = SmdpService(
        pki,
        load_profiles(directory / "profiles"),
        address=run.smdp_address,
        state_path=directory / "smdp-state.json",
    )
    server = SmdpServer(service, tracer=tracer, ssl_context=server_ssl_context(pki))

    class NoCloud:
        async def login(self, user: str, password: str) -> None: ...
        async def register(self, user: str, password: str) -> None: ...
        async def upload(self, records: list[str]) -> None: ...
        async def fetch(self, eid: str, module: str) -> list[str]:
            return []

        async def delete(self, eid: str, module: str) -> None: ...

    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        a, b = trio.testing.memory_stream_pair()
        at_server = AtServer(b, tracer=tracer, echo=False)
        core.install(at_server)
        nursery.start_soon(at_server.run)
        chat = AtChat(a, tracer=tracer, local=Actor.AP, remote=Actor.CP)
        nursery.start_soon(chat.run)
        address = f"127.0.0.1:{port}"
        # the restarted SM-DP+ listens on another port: its address must be the one the activation code names, or
        # initiateAuthentication refuses the address (8.8.1/3.8) before single use is ever asked
        service.address = address
        lpa = Lpa(
            activation_code=f"LPA:1${address}${MATCHING_ID}",
            machine=LpaMachine(None),
            ui=UiPolicy.parse("logged-in"),
            es9=Es9Client(address, context=client_ssl_context(pki), tracer=tracer),
            cloud=NoCloud(),
            cloud_account=(USER, PASSWORD),
            tracer=tracer,
        )
        await lpa.run(chat)
        nursery.cancel_scope.cancel()
    tracer.close()
    eids = [
        e.data[-16:].hex().upper()
        for e in tracer.events
        if e.kind == Kind.LPA_ES10 and e.field("function") == "GetEID" and e.field("direction") == "response"
    ]
    eid = eids[0] if eids else ""
    failed = [e for e in tracer.events if e.kind == Kind.LPA_ES9 and e.error]
    if not failed:
        return ("Executed-Success", "", "", ""), eid
    last = failed[-1]
    return (
        "Failed",
        str(last.field("subject_code")),
        str(last.field("reason_code")),
        str(last.field("function")),
    ), eid


def esim_chunked(options: ScenarioOptions) -> ScenarioResult:
    """Packages of 1024, 2048 and 2049 bytes travel through the cloud store as 1, 2 and 3 records, byte for byte."""
    from bipsim.ap.lpa.records import decode_record, encode_records, join_records
    from bipsim.ota.cloud_store import CloudClient, CloudServer, CloudService

    directory = options.directory or Path(tempfile.mkdtemp(prefix="bipsim-esim-chunked-"))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cloud.jsonl").unlink(missing_ok=True)
    tracer = Tracer.to_file(directory / "cloud.jsonl", session="esim-chunked", keep=True)
    eid = "89049032123451234512345678901235"
    notes: list[str] = []
    problems: list[str] = []

    async def main() -> None:
        service = CloudService(iterations=1000)
        service.add_user(USER, PASSWORD)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(CloudServer(service, tracer).serve, "127.0.0.1", 0)
            client = CloudClient(f"http://127.0.0.1:{port}", tracer=tracer)
            await client.login(USER, PASSWORD)
            for length, count in ((1024, 1), (2048, 2), (2049, 3)):
                package = bytes((n * 31 + length) & 0xFF for n in range(length))
                records = encode_records(eid=eid, ppr=0, package=package)
                if len(records) != count or any(len(decode_record(r).data) > 1024 for r in records):
                    problems.append(f"L={length}: {len(records)} records")
                await client.upload(records)
                back = await client.fetch(eid, "LPA")
                if join_records(back) != package:
                    problems.append(f"L={length}: the joined records are not the package")
                await client.delete(eid, "LPA")
                notes.append(f"L={length}: {len(records)} records")
            nursery.cancel_scope.cancel()

    trio.run(main)
    tracer.close()
    from bipsim.scenarios.harness import RunResult as Result

    result = Result(
        RunConfig(session="esim-chunked", server=False), 0, list(tracer.events), {}, {}, directory, {}
    )
    check(not problems, "; ".join(problems), result)
    uploads = [e for e in tracer.events if e.kind == Kind.CLOUD_UPLOAD]
    check(len(uploads) == 6, f"the cloud stored {len(uploads)} records, not 1 + 2 + 3", result)
    return ScenarioResult("esim-chunked", result, notes)
