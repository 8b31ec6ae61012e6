"""The eUICC profile download with the cloud backup end to end (issue 23, "What it must show"): the AP's LPA drives
the real simulated card (the `euicc` profile, its ISD-R) through the CP's own +CCHO/+CGLA over a memory stream, the
real SM-DP+ core (ota/smdp.py) behind the ES9+ client, and the real cloud store (ota/cloud_store.py) over memory
streams; no process, no socket, so every case is cheap. `esim_process_run` at the end runs one scenario of
scenarios/esim.py with the real processes (`bipsim cp`, `bipsim ap`) once for the module."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from bipsim.ap.lpa.es9_client import Es9Client
from bipsim.ap.lpa.es10_client import Es10Client
from bipsim.ap.lpa.lpa import Lpa, LpaOutcome
from bipsim.ap.lpa.records import decode_record, join_records
from bipsim.ap.lpa.state import LpaMachine, LpaState
from bipsim.ap.lpa.ui_policy import UiPolicy
from bipsim.cp.card_driver import CardDriver
from bipsim.cp.command_sets import build_command_sets
from bipsim.cp.commands import ModemCommands
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork
from bipsim.link.at_chat import AtChat
from bipsim.link.at_server import AtServer
from bipsim.ota import es9_json
from bipsim.ota.cloud_store import CloudClient, CloudServer, CloudService
from bipsim.ota.http_connection import HttpRequest
from bipsim.ota.smdp import SmdpService, builtin_profiles
from bipsim.trace.events import Actor
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from bipsim.uicc.euicc import asn1
from bipsim.uicc.euicc.pki import Pki, ensure_pki
from bipsim.uicc.euicc.upp import builtin_upps, decode_upp
from bipsim.uicc.profile import dump_profile, load_profile

SMDP = "127.0.0.1:8443"
USER, PASSWORD = "alice", "correct horse"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return ensure_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Chain:
    tracer: Tracer
    smdp: SmdpService
    cloud: CloudService
    chat: AtChat
    card: Any
    state: Path
    pki: Pki
    smdp_calls: list[str]

    def lpa(self, ui: str = f"login:{USER}:{PASSWORD}", matching_id: str = "OP1") -> Lpa:
        client = CloudClient("http://127.0.0.1:1", tracer=self.tracer, connect=self._cloud_stream)
        return Lpa(
            activation_code=f"LPA:1${SMDP}${matching_id}",
            machine=LpaMachine.load(self.state),
            ui=UiPolicy.parse(ui),
            es9=Es9Client(SMDP, transport=self._es9, tracer=self.tracer),
            cloud=client,
            cloud_account=(USER, PASSWORD),
            tracer=self.tracer,
        )

    async def _es9(self, target: str, body: bytes) -> tuple[int, bytes]:
        headers = {"x-admin-protocol": es9_json.ADMIN_PROTOCOL, "content-type": "application/json"}
        self.smdp_calls.append(target.rsplit("/", 1)[1])
        answer = self.smdp.handle(HttpRequest("POST", target, headers, body))
        return answer.status, answer.body

    async def _cloud_stream(self) -> trio.abc.Stream:
        a, b = trio.testing.memory_stream_pair()
        self.nursery.start_soon(CloudServer(self.cloud, self.tracer).handle, b)
        return a

    nursery: trio.Nursery = None  # type: ignore[assignment]

    def events(self, kind: str) -> list[Any]:
        return [e for e in self.tracer.events if e.kind == kind]


@asynccontextmanager
async def chain(
    tmp: Path,
    pki: Pki,
    *,
    smdp: SmdpService | None = None,
    cloud: CloudService | None = None,
    tracer: Tracer | None = None,
    **profile: Any,
) -> AsyncIterator[Chain]:
    """The card of the `euicc` profile (with `profile`'s overrides) behind the CP's AT commands; a second chain on
    the same `tmp` is the same card after a power cycle (its state file), with the servers given."""
    tracer = tracer or Tracer(keep=True)
    card_profile = tmp / "card.toml"
    overrides = {"euicc_pki": str(pki.directory), **profile}
    card_profile.write_text(dump_profile(load_profile("euicc").with_overrides(**overrides)))
    card, _ = simulated_card(str(card_profile), str(tmp / "card.json"), tracer)
    core = ModemCommands(CardDriver(card, tracer=tracer), CellularNetwork())
    core.command_sets = build_command_sets(core, tracer, {})
    if cloud is None:
        cloud = CloudService(iterations=1)
        cloud.add_user(USER, PASSWORD)
    smdp = smdp or SmdpService(pki, builtin_profiles(), address=SMDP)
    async with trio.open_nursery() as nursery:
        a, b = trio.testing.memory_stream_pair()
        server = AtServer(b, tracer=tracer, echo=False)
        core.install(server)
        nursery.start_soon(server.run)
        chat = AtChat(a, tracer=tracer, local=Actor.AP, remote=Actor.CP)
        nursery.start_soon(chat.run)
        rig = Chain(tracer, smdp, cloud, chat, card, tmp / "lpa.json", pki, [])
        rig.nursery = nursery
        yield rig
        nursery.cancel_scope.cancel()


def op1() -> Any:
    return decode_upp(builtin_upps()["op1"])


async def test_download_backs_up_installs_deletes_and_the_cp_reads_the_new_imsi(
    tmp_path: Path, pki: Pki
) -> None:
    async with chain(tmp_path, pki) as rig:
        outcome: LpaOutcome = await rig.lpa().run(rig.chat)
        card_imsi = await rig.lpa()._card_imsi(rig.chat)  # the CP's +CRSM read of EF_IMSI the LPA waits for
    assert outcome.ok, outcome.reason
    profile = op1()
    assert card_imsi == profile.imsi
    assert outcome.iccid == profile.iccid and outcome.imsi == profile.imsi  # item 6
    assert rig.smdp_calls.count("getBoundProfilePackage") == 1
    # item 2: the EID GetEID answered is the one the SM-DP+ saw in the eUICC's certificate, and the records' EID
    eid = rig.events(Kind.LPA_ES10)[1].data[-16:].hex().upper()
    assert eid == pki.eid
    # item 6: the cloud got the delete and holds nothing
    assert not rig.cloud.backups and rig.cloud.deletes == 1
    # item 9: every ES10 and ES9+ message decodes with asn1tools from the SGP.22 module
    answers = {
        "GetEID": "GetEuiccDataResponse",
        "GetEUICCInfo1": "EUICCInfo1",
        "GetEUICCChallenge": "GetEuiccChallengeResponse",
        "AuthenticateServer": "AuthenticateServerResponse",
        "PrepareDownload": "PrepareDownloadResponse",
        "LoadBoundProfilePackage": "ProfileInstallationResult",
        "RemoveNotificationFromList": "NotificationSentResponse",
        "EnableProfile": "EnableProfileResponse",
    }
    for event in rig.events(Kind.LPA_ES10):
        function = str(event.field("function"))
        if event.field("direction") == "response":
            asn1.decode(answers[function], event.data)
        elif function != "LoadBoundProfilePackage":  # its segments are parts of one BF36, decoded below
            assert asn1.es10_request(event.data)[0].endswith(("Request", "Package"))
    fields = {
        "euiccInfo1": "EUICCInfo1",
        "authenticateServerResponse": "AuthenticateServerResponse",
        "prepareDownloadResponse": "PrepareDownloadResponse",
        "profileMetadata": "StoreMetadataRequest",
        "serverSigned1": "ServerSigned1",
        "smdpSigned2": "SmdpSigned2",
        "boundProfilePackage": "BoundProfilePackage",
        "pendingNotification": "PendingNotification",
    }
    seen = set()
    for event in rig.events(Kind.LPA_ES9):
        body = json.loads(event.data) if event.data else {}
        for name, type_name in fields.items():
            if name in body:
                asn1.decode(type_name, base64.b64decode(body[name]))
                seen.add(name)
    assert seen == set(fields)
    assert LpaMachine.load(rig.state).state is LpaState.CLOUD_DELETED


def fetches(rig: Chain) -> int:
    return len([e for e in rig.events(Kind.CLOUD_FETCH) if e.field("status") == 200])


async def test_failed_install_is_fetched_once_from_the_cloud_and_installed(tmp_path: Path, pki: Pki) -> None:
    """Item 5 (without the power cycle): the fault at segment 3, one fetch, no second ES9+ request."""
    async with chain(tmp_path, pki, euicc_fault_segment=3) as rig:
        outcome = await rig.lpa().run(rig.chat)
    assert outcome.ok, outcome.reason
    assert outcome.imsi == op1().imsi
    assert fetches(rig) == 1 and rig.smdp_calls.count("getBoundProfilePackage") == 1
    assert rig.smdp_calls.count("initiateAuthentication") == 1
    results = [
        e
        for e in rig.events(Kind.LPA_ES10)
        if e.field("function") == "LoadBoundProfilePackage" and e.field("direction") == "response"
    ]
    first = asn1.decode("ProfileInstallationResult", results[0].data)["profileInstallationResultData"][
        "finalResult"
    ]
    assert first[0] == "errorResult" and first[1]["errorReason"] == 11  # installFailedDueToInterruption
    steps = {e.step for e in rig.tracer.events if e.step}
    assert {"000:203", "000:403", "000:404"} <= steps


async def power_cycled(tmp_path: Path, pki: Pki, keep: bool) -> tuple[Chain, LpaOutcome]:
    """The fault at segment 3, then the power goes while the LPA asks the cloud (the fetch is held): the card and
    the CP start again from the card's state file, the AP's LPA from its own; the second run resumes."""
    hold = trio.Event()
    async with chain(tmp_path, pki, euicc_fault_segment=3, euicc_keep_otpk=keep) as rig:
        connect = rig._cloud_stream

        async def held() -> trio.abc.Stream:
            if LpaMachine.load(rig.state).state is LpaState.CLOUD_FETCH:
                hold.set()
                await trio.sleep_forever()
            return await connect()

        rig._cloud_stream = held  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rig.lpa().run, rig.chat)
            await hold.wait()
            nursery.cancel_scope.cancel()  # the power cut
        assert LpaMachine.load(rig.state).state is LpaState.CLOUD_FETCH
    async with chain(
        tmp_path, pki, smdp=rig.smdp, cloud=rig.cloud, tracer=rig.tracer, euicc_keep_otpk=keep
    ) as again:
        again.smdp_calls = rig.smdp_calls
        outcome = await again.lpa().run(again.chat)
    return again, outcome


async def test_power_cycle_after_the_fault_restores_from_the_cloud(tmp_path: Path, pki: Pki) -> None:
    rig, outcome = await power_cycled(tmp_path, pki, keep=True)
    assert outcome.ok, outcome.reason
    assert outcome.iccid == op1().iccid and outcome.imsi == op1().imsi
    assert fetches(rig) == 1 and rig.smdp_calls.count("getBoundProfilePackage") == 1
    assert (
        len(rig.smdp_calls) == 4
    )  # initiateAuthentication, authenticateClient, getBoundProfilePackage, notification


async def test_without_the_kept_key_the_replay_is_refused_without_a_loop(tmp_path: Path, pki: Pki) -> None:
    """Item 8: euicc_keep_otpk = false: the eUICC erased the session at the failure; the cloud's package is refused
    (invalidTransactionId) and the LPA stops and says so, after one fetch."""
    rig, outcome = await power_cycled(tmp_path, pki, keep=False)
    assert not outcome.ok and outcome.state is LpaState.STOPPED
    assert "errorReason 3" in outcome.reason  # invalidTransactionId
    assert fetches(rig) == 1 and rig.smdp_calls.count("getBoundProfilePackage") == 1
    assert rig.events(Kind.LPA_RESULT)[-1].field("outcome") == "stopped"
    assert rig.cloud.backups  # the backup stays: nothing was installed


async def test_a_power_cut_in_the_install_from_the_cloud_is_retried(tmp_path: Path, pki: Pki) -> None:
    """The fault at segment 3 sends the LPA to the cloud; the power goes in the middle of the install of the cloud's
    copy, so no ProfileInstallationResult comes: after the restart the LPA fetches the copy again and installs it
    (a bounded retry, traced), with no second ES9+ request; the spent fault does not fire again."""
    hold = trio.Event()
    async with chain(tmp_path, pki, euicc_fault_segment=3) as rig:
        command = rig.chat.command
        cloud_segments = [0]

        async def cut(line: str, **kwargs: Any) -> Any:
            record = LpaMachine.load(rig.state).record
            if line.startswith("AT+CGLA") and record.state is LpaState.INSTALLING and record.from_cloud:
                cloud_segments[0] += 1
                if cloud_segments[0] == 4:
                    hold.set()
                    await trio.sleep_forever()
            return await command(line, **kwargs)

        rig.chat.command = cut  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rig.lpa().run, rig.chat)
            await hold.wait()
            nursery.cancel_scope.cancel()  # the power cut
    assert LpaMachine.load(rig.state).state is LpaState.INSTALLING
    async with chain(
        tmp_path, pki, smdp=rig.smdp, cloud=rig.cloud, tracer=rig.tracer, euicc_fault_segment=3
    ) as again:
        again.smdp_calls = rig.smdp_calls
        outcome = await again.lpa().run(again.chat)
    assert outcome.ok, outcome.reason
    assert outcome.iccid == op1().iccid and outcome.imsi == op1().imsi
    assert fetches(again) == 2 and again.smdp_calls.count("getBoundProfilePackage") == 1
    retries = [e for e in again.events(Kind.LPA_RESULT) if e.field("outcome") == "retry"]
    assert len(retries) == 1 and retries[0].field("attempt") == 2


async def test_a_closed_login_page_stops_before_any_es9_request(tmp_path: Path, pki: Pki) -> None:
    async with chain(tmp_path, pki) as rig:
        outcome = await rig.lpa(ui="close").run(rig.chat)
    assert outcome.state is LpaState.STOPPED and rig.smdp_calls == []
    assert len([e for e in rig.events(Kind.LPA_UI) if e.field("action") == "message"]) == 1
    assert not rig.events(Kind.LPA_ES10)


async def test_a_second_download_from_the_smdp_is_refused(tmp_path: Path, pki: Pki) -> None:
    """Item 7: after the download, another terminal with its own eUICC (another EID, its certificate from the same
    EUM) asks the SM-DP+ for the same profile and is refused."""
    from bipsim.scenarios.esim import OTHER_EID

    async with chain(tmp_path, pki) as rig:
        assert (await rig.lpa().run(rig.chat)).ok
    other_card = tmp_path / "other"
    other_card.mkdir()
    async with chain(other_card, pki, smdp=rig.smdp, euicc_eid=OTHER_EID) as other:
        other.smdp_calls = rig.smdp_calls
        outcome = await other.lpa().run(other.chat)
    eids = [
        e.data[-16:].hex().upper()
        for e in other.events(Kind.LPA_ES10)
        if e.field("function") == "GetEID" and e.field("direction") == "response"
    ]
    assert eids == [OTHER_EID] and OTHER_EID != pki.eid
    assert outcome.state is LpaState.STOPPED and "download failed" in outcome.reason
    refused = [e for e in other.events(Kind.LPA_ES9) if e.error]
    # single use (SGP.22 5.6.2): the package was bound once, a new binding is refused 8.2 / 3.7
    assert refused and refused[-1].field("function") == "getBoundProfilePackage"
    assert (refused[-1].field("subject_code"), refused[-1].field("reason_code")) == ("8.2", "3.7")
    assert rig.smdp_calls.count("getBoundProfilePackage") <= 2


@pytest.mark.parametrize("length,count", [(1024, 1), (2048, 2), (2049, 3)])
async def test_chunked_packages_through_the_cloud(length: int, count: int) -> None:
    """Item 4: packages of exactly L bytes travel as ceil(L/1024) records, none over the limit, and come back byte
    for byte through the cloud store."""
    from bipsim.ap.lpa.records import encode_records

    cloud = CloudService(iterations=1)
    cloud.add_user(USER, PASSWORD)
    package = bytes((n * 7) & 0xFF for n in range(length))
    records = encode_records(eid="89049032123451234512345678901235", ppr=2, package=package)
    assert len(records) == count and all(len(decode_record(r).data) <= 1024 for r in records)
    async with trio.open_nursery() as nursery:

        async def connect() -> trio.abc.Stream:
            a, b = trio.testing.memory_stream_pair()
            nursery.start_soon(CloudServer(cloud).handle, b)
            return a

        client = CloudClient("http://127.0.0.1:1", connect=connect)
        await client.login(USER, PASSWORD)
        await client.upload(records)
        back = await client.fetch("89049032123451234512345678901235", "LPA")
    assert join_records(back) == package


# --- the scenarios with the real processes --------------------------------------------------------------------------
# Each process scenario waits mostly (processes starting, the pty, the card's first ES10): the module runs them at
# once, each in a thread of its own with its own trio loop, and each test reads its run. esim-chunked has no process.


def run_scenario(name: str, tmp_path: Path) -> Any:
    """Scenario `name` in `tmp_path`: its ScenarioResult, or what it raised (the test that reads it fails)."""
    from bipsim.scenarios.base import ScenarioOptions
    from bipsim.scenarios.registry import SCENARIOS

    try:
        return SCENARIOS[name](ScenarioOptions(tmp_path / "run"))
    except Exception as exc:  # noqa: BLE001 - handed to the test of this scenario
        return exc


@pytest.fixture(scope="module")
def process_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    tmp_path = tmp_path_factory.mktemp("esim")
    runs = {
        "esim-download": lambda: run_scenario("esim-download", tmp_path / "download"),
        "esim-cloud-retry": lambda: run_scenario("esim-cloud-retry", tmp_path / "retry"),
        "esim-not-logged-in": lambda: run_scenario("esim-not-logged-in", tmp_path / "login"),
        "esim-second-download-refused": lambda: run_scenario("esim-second-download-refused", tmp_path),
        "esim-no-key-kept": lambda: run_scenario("esim-no-key-kept", tmp_path / "nokey"),
    }
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(run) for name, run in runs.items()}
        return {name: future.result() for name, future in futures.items()}


def passed(process_runs: dict[str, Any], name: str) -> Any:
    result = process_runs[name]
    if isinstance(result, BaseException):
        raise AssertionError(f"{name} failed: {result}") from result
    assert result.name == name and result.run.cp_code in (0, -15, 143)
    assert (result.run.directory / "cp.jsonl").exists() and (result.run.directory / "ap.jsonl").exists()
    return result


def test_esim_download_scenario(process_runs: dict[str, Any], tmp_path: Path, need: Any) -> None:
    """The scenario's own checks (items 2, 3, 6), and item 9: tshark finds the STORE DATA sequence (INS E2 on the
    ISD-R's channel) in the GSMTAP pcap of the run."""
    import subprocess

    from bipsim.trace.pcap import export_pcap

    result = passed(process_runs, "esim-download")
    tshark = need("tshark")
    pcap = tmp_path / "esim.pcap"
    export_pcap(result.run.events, pcap)
    out = subprocess.run(
        [tshark, "-r", str(pcap), "-Y", "gsm_sim.apdu.ins == 0xe2", "-T", "fields", "-e", "gsm_sim.apdu.p1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    p1 = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    assert p1 and all(value in ("0x11", "0x91", "17", "145") for value in p1), p1[:5]


def test_esim_cloud_retry_scenario(process_runs: dict[str, Any]) -> None:
    result = passed(process_runs, "esim-cloud-retry")
    assert any(e.kind == Kind.LPA_STATE and e.field("state") == "failed" for e in result.run.events)
    # the user at `bipsim ap --lpa` reads the outcome on its output, not only in the trace
    assert "lpa: installed ICCID 8944476500009876543, IMSI " in result.run.logs.get("ap", ""), (
        result.run.logs.keys()
    )


def test_esim_not_logged_in_scenario(process_runs: dict[str, Any]) -> None:
    result = passed(process_runs, "esim-not-logged-in")
    assert "lpa: stopped: " in result.run.logs.get("ap", ""), result.run.logs.get("ap", "")[-500:]


def test_esim_second_download_refused_scenario(process_runs: dict[str, Any]) -> None:
    from bipsim.scenarios.esim import OTHER_EID

    result = passed(process_runs, "esim-second-download-refused")
    assert any(
        f"by EID {OTHER_EID}: getBoundProfilePackage Failed 8.2/3.7" in note for note in result.notes
    ), result.notes


def test_esim_no_key_kept_scenario(process_runs: dict[str, Any]) -> None:
    passed(process_runs, "esim-no-key-kept")


def test_esim_chunked_scenario(tmp_path: Path) -> None:
    result = run_scenario("esim-chunked", tmp_path)
    assert not isinstance(result, BaseException), result
    assert result.notes == ["L=1024: 1 records", "L=2048: 2 records", "L=2049: 3 records"]


def test_a_host_lpa_reaches_the_euicc_through_bipsim_cp(tmp_path: Path, pki: Pki) -> None:
    """Item 9: as an open-source LPA with an AT backend (lpac's) does, on a line where +CMEE was never set:
    `AT+CCHO="<aid in lower case>"` answered `+CCHO: <n>`, `AT+CGLA=<n>,<hex length>,"81E2..."` with class 81
    whatever channel the modem chose, GET RESPONSE after 61 xx, and only OK / ERROR as final results."""
    import re
    import socket

    from tests.cp_process import start_listening_cp, stop

    profile = tmp_path / "euicc.toml"
    profile.write_text(dump_profile(load_profile("euicc").with_overrides(euicc_pki=str(pki.directory))))
    cp, port = start_listening_cp(
        tmp_path, ["--profile", str(profile), "--state", str(tmp_path / "card.json")]
    )
    finals: list[str] = []
    try:
        line = socket.create_connection(("127.0.0.1", port))
        line.settimeout(30)
        buffer = b""

        def at(command: str) -> list[str]:
            nonlocal buffer
            line.sendall(command.encode() + b"\r")
            while not re.search(rb"\r\n(OK|ERROR|\+CME ERROR: [^\r]*)\r\n", buffer):
                chunk = line.recv(4096)
                assert chunk, f"the CP closed the line after {buffer!r}"
                buffer += chunk
            text, buffer = buffer.decode(), b""
            lines = [part for part in text.split("\r\n") if part.strip() and part.strip() != command]
            finals.append(lines[-1])
            return lines[:-1]

        opened = at('AT+CCHO="a0000005591010ffffffff8900000100"')
        assert len(opened) == 1 and re.fullmatch(r"\+CCHO: \d+", opened[0]), opened
        session = opened[0].split()[1]
        first = at(f'AT+CGLA={session},22,"81E2910006BF3E035C015A"')
        assert first == ['+CGLA: 4,"6115"'], first
        rest = at(f'AT+CGLA={session},10,"00C0000015"')
        assert rest == [f'+CGLA: 46,"BF3E125A10{pki.eid}9000"'], rest
        assert at(f'AT+CGLA={int(session) + 5},22,"81E2910006BF3E035C015A"') == []  # no such session
        assert at(f"AT+CCHC={session}") == []
        line.close()
    finally:
        stop(cp)
    assert finals == ["OK", "OK", "OK", "ERROR", "OK"], finals


@pytest.mark.parametrize("fault", ["garbage", "bad-signature", "corrupt-bpp"])
async def test_an_smdp_that_lies_stops_the_lpa_without_a_profile_or_a_loop(
    tmp_path: Path, pki: Pki, fault: str
) -> None:
    """The issue's bad input through the real ISD-R: an SM-DP+ answering garbage, a serverSignature1 the eUICC
    refuses, a package whose last '86' MAC fails (ota/smdp.py Fault). The LPA stops and says why; nothing is
    installed; the corrupt package is tried once more from the cloud and no more."""
    from bipsim.ota.smdp import Fault

    smdp = SmdpService(pki, builtin_profiles(), address=SMDP, faults=frozenset({Fault(fault)}))
    async with chain(tmp_path, pki, smdp=smdp) as rig:
        outcome = await rig.lpa().run(rig.chat)
        profiles = await Es10Client(rig.chat).get_profiles_info()
    assert not outcome.ok and outcome.state is LpaState.STOPPED, outcome
    assert profiles == []  # no half-installed profile
    assert rig.events(Kind.LPA_RESULT)[-1].field("outcome") == "stopped"
    assert rig.smdp_calls.count("getBoundProfilePackage") <= 1
    installs = [e for e in rig.events(Kind.LPA_STATE) if e.field("state") == "installing"]
    if fault == "corrupt-bpp":
        assert (
            len(installs) == 2 and fetches(rig) == 1 and "errorReason 8" in outcome.reason
        )  # scp03tSecurityError
    else:
        assert installs == [] and not rig.cloud.backups
