"""A host LPA reaches the eUICC through a real `bipsim cp --profile euicc` as open-source LPAs with an AT backend do
(issue 23, "What it must show" item 9; docs/protocols.md, "eUICC and the cloud backup"). The host side is
tests/lpac_host.py: raw serial I/O on the DTE end of a pty pair, no bipsim code, doing what lpac's AT driver does
(AT+CCHO with the AID in lower case, AT+CGLA with class 81 whatever session the modem chose, GET RESPONSE after 61xx,
only OK and ERROR as final results, +CMEE never set). The answers are decoded with asn1tools from the project's
SGP.22 module (uicc/euicc/rsp.asn) compiled in the test, and the eUICC's signature and certificates are checked with
`cryptography` alone.

The host also downloads a profile from a real `bipsim smdp` as `lpac profile download` does (ES9+ over HTTPS with
the standard library, the Bound Profile Package cut into SGP.22 2.5.5's segments by the host) and enables it, and
the CP then answers AT+CIMI with the profile's IMSI.

One CP process and one SM-DP+ process serve the whole module: the fixture runs the host's session once, stops the
CP so its trace is complete, and each test reads the part of that run it checks."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.cp_process import BIPSIM, CpOnPty, stop, wait_until
from tests.lpac_host import (
    ISD_R_AID,
    AtLine,
    Es9Failed,
    Es9Host,
    Exchange,
    HostLpa,
    HostPki,
    authenticate_server_request,
    b64,
    bpp_segments,
    der,
    rsp_spec,
    tagged,
    tlvs,
    unb64,
    verify_plain,
)

EID = "89049032123451234512345678901235"  # the `euicc` profile's EID (uicc/profiles/euicc.toml)
GET_EID = bytes.fromhex("BF3E035C015A")  # SGP.22 5.7.20: GetEuiccDataRequest with tagList '5A'
TRANSACTION_ID = bytes.fromhex("0102030405060708090A0B0C0D0E0F10")
SERVER_CHALLENGE = bytes(range(0x20, 0x30))
MATCHING_ID = "OP1"  # a profile `bipsim smdp` serves built in (docs/protocols.md, "The SM-DP+ (ES9+)")


@dataclass
class Run:
    """What the host saw in the module's session, step by step (a value, or what the step raised), the CP's
    trace once it stopped, and the line's transcript."""

    steps: dict[str, Any] = field(default_factory=dict)
    transcript: list[Exchange] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)
    keys: HostPki | None = None
    spec: Any = None  # uicc/euicc/rsp.asn compiled by asn1tools

    def step(self, name: str, action: Callable[[], Any]) -> None:
        try:
            self.steps[name] = action()
        except Exception as exc:  # noqa: BLE001 - handed to the test that reads this step
            self.steps[name] = exc

    def __getitem__(self, name: str) -> Any:
        value = self.steps[name]
        if isinstance(value, Exception):
            raise AssertionError(f"step {name} failed: {value!r}") from value
        return value

    def exchanges(self, prefix: str) -> list[Exchange]:
        return [e for e in self.transcript if e.command.startswith(prefix)]

    def card_exchanges(self) -> list[tuple[bytes, bytes]]:
        """The APDUs the CP sent its card and the card's answers, in order, from the CP's trace."""
        commands = [bytes.fromhex(e["hex"]) for e in self.trace if e.get("kind") == "apdu.command"]
        answers = [bytes.fromhex(e["hex"]) for e in self.trace if e.get("kind") == "apdu.response"]
        assert len(commands) == len(answers)
        return list(zip(commands, answers, strict=True))

    def opened(self) -> list[int]:
        """The logical channels the card's MANAGE CHANNEL open gave (ISO/IEC 7816-4 11.1.2), in order."""
        return [answer[0] for command, answer in self.card_exchanges() if command[1:4] == b"\x70\x00\x00"]


def host_download(run: Run, lpac: HostLpa, channel: int, es9: Es9Host) -> dict[str, Any]:
    """`lpac profile download` of the activation code's profile (SGP.22 3.1.3): GetEUICCChallenge and
    GetEUICCInfo1, initiateAuthentication, AuthenticateServer, authenticateClient, PrepareDownload,
    getBoundProfilePackage, LoadBoundProfilePackage in the segments of 2.5.5, handleNotification. The ES10
    requests are put together from the DER the SM-DP+ sent, as an LPA must (the signatures cover those bytes)."""
    spec = run.spec
    challenge = spec.decode("GetEuiccChallengeResponse", lpac.store_data(channel, bytes.fromhex("BF2E00")))
    info1 = lpac.store_data(channel, bytes.fromhex("BF2000"))
    init = es9.call(
        "initiateAuthentication",
        {
            "euiccChallenge": b64(challenge["euiccChallenge"]),
            "euiccInfo1": b64(info1),
            "smdpAddress": es9.address,
        },
    )
    transaction_id = init["transactionId"]
    ctx_params1 = spec.encode(
        "CtxParams1",
        (
            "ctxParamsForCommonAuthentication",
            {
                "matchingId": MATCHING_ID,
                "deviceInfo": {"tac": bytes.fromhex("35290611"), "deviceCapabilities": {}},
            },
        ),
    )
    authenticate = der(
        b"\xbf\x38",
        unb64(init["serverSigned1"])
        + tagged(unb64(init["serverSignature1"]), b"\x5f\x37")
        + tagged(unb64(init["euiccCiPKIdToBeUsed"]), b"\x04")
        + unb64(init["serverCertificate"])
        + ctx_params1,
    )
    authenticated = lpac.store_data(channel, authenticate)
    client = es9.call(
        "authenticateClient",
        {"transactionId": transaction_id, "authenticateServerResponse": b64(authenticated)},
    )
    prepare = der(
        b"\xbf\x21",
        unb64(client["smdpSigned2"])
        + tagged(unb64(client["smdpSignature2"]), b"\x5f\x37")
        + unb64(client["smdpCertificate"]),
    )
    prepared = lpac.store_data(channel, prepare)
    package = es9.call(
        "getBoundProfilePackage", {"transactionId": transaction_id, "prepareDownloadResponse": b64(prepared)}
    )
    bpp = unb64(package["boundProfilePackage"])
    segments = bpp_segments(bpp)
    first = len(lpac.sent)
    result = b""
    loaded = 0
    for segment in segments:
        result = lpac.store_data(channel, segment)
        loaded += 1
        if result:
            break  # the ProfileInstallationResult: after the last segment, or at the one that failed
    sent = slice(first, len(lpac.sent))
    es9.call("handleNotification", {"pendingNotification": b64(result)})
    return {
        "challenge": challenge["euiccChallenge"],
        "smdp": es9.address,
        "init": init,
        "client": client,
        "bpp": bpp,
        "authenticated": authenticated,
        "metadata": unb64(client["profileMetadata"]),
        "prepared": prepared,
        "segments": segments,
        "loaded": loaded,
        "sent": sent,
        "result": result,
        "calls": list(es9.calls),
    }


def host_enable(run: Run, lpac: HostLpa) -> dict[str, Any]:
    """EnableProfile of the downloaded profile (refreshFlag true, as lpac's `profile enable`) on a new session,
    then AT+CIMI until the CP reads the new subscription (the card's REFRESH makes it read EF_IMSI again)."""
    metadata = run.spec.decode("StoreMetadataRequest", run["download"]["metadata"])
    before = lpac.line.command("AT+CIMI")
    channel = lpac.open_channel(ISD_R_AID)
    request = run.spec.encode(
        "EnableProfileRequest", {"profileIdentifier": ("iccid", metadata["iccid"]), "refreshFlag": True}
    )
    answer = lpac.store_data(channel, request)
    imsi = before
    until = time.monotonic() + 60
    while time.monotonic() < until:  # the CP's own pace: polled like a daemon's readiness, with a deadline
        imsi = lpac.line.command("AT+CIMI")
        if imsi.lines != before.lines and imsi.final == "OK":
            break
        time.sleep(0.1)
    closed = lpac.close_channel(channel)
    return {"answer": answer, "before": before, "after": imsi, "closed": closed}


def host_session(run: Run, device: Path, es9: Es9Host) -> None:
    """The host's whole session: lpac's connect probe; another application on the line holds the first session
    (so the modem gives lpac a session other than 1, and lpac still sends class 81); the ES10 functions; bad
    STORE DATA commands; a profile download from `es9`; closing; a session on an extended channel; enabling the
    downloaded profile."""
    line = AtLine(device)
    try:
        other, lpac = HostLpa(line), HostLpa(line)
        run.step("connect", lpac.connect)
        run.step("other", lambda: other.open_channel(ISD_R_AID))
        run.step("open", lambda: lpac.open_channel(ISD_R_AID))
        if isinstance(run.steps["open"], Exception):
            return
        channel = run.steps["open"]
        run.steps["sessions"] = [other.channels[1], lpac.channels[channel]]
        run.step("eid", lambda: lpac.store_data(channel, GET_EID))
        run.step("info1", lambda: lpac.store_data(channel, bytes.fromhex("BF2000")))
        run.step("info2", lambda: lpac.store_data(channel, bytes.fromhex("BF2200")))
        run.step("profiles", lambda: lpac.store_data(channel, bytes.fromhex("BF2D00")))
        run.step("challenge", lambda: lpac.store_data(channel, bytes.fromhex("BF2E00")))

        def authenticate() -> tuple[bytes, bytes, slice]:
            challenge = run.spec.decode("GetEuiccChallengeResponse", run["challenge"])["euiccChallenge"]
            assert run.keys is not None
            request = authenticate_server_request(
                run.spec,
                run.keys,
                challenge=challenge,
                transaction_id=TRANSACTION_ID,
                server_challenge=SERVER_CHALLENGE,
            )
            first = len(lpac.sent)
            answer = lpac.store_data(channel, request)
            return request, answer, slice(first, len(lpac.sent))

        run.step("authenticate", authenticate)

        def refused(apdus: list[str]) -> list[bytes]:
            """Raw APDUs (no ES10 framing) and the modem's answers."""
            return [lpac.transmit(channel, bytes.fromhex(apdu)) for apdu in apdus]

        # block 01 where a request starts at 00 (SGP.22 5.7.1: P2 is the block number)
        run.step("wrong_block", lambda: refused(["81E2910106" + GET_EID.hex()]))
        # a TLV whose length says three bytes and the block carries two
        run.step("truncated", lambda: refused(["81E2910005BF3E035C01"]))
        # a request in two blocks, the second numbered 02
        run.step("skipped_block", lambda: refused(["81E2110003BF3E03", "81E29102035C015A"]))
        run.step("eid_after", lambda: lpac.store_data(channel, GET_EID))
        run.step("download", lambda: host_download(run, lpac, channel, es9))
        run.step("profiles_after", lambda: lpac.store_data(channel, bytes.fromhex("BF2D00")))
        run.step("second_download", lambda: host_download(run, lpac, channel, es9))  # refused, test below
        run.step("close", lambda: lpac.close_channel(channel))
        session = run.steps["sessions"][1]
        run.step("closed_cgla", lambda: line.command(f'AT+CGLA={session},10,"81c0000000"'))

        def extended() -> tuple[str, bytes]:
            """Three more sessions of the other application, so that lpac's next one is on a logical channel
            from 4 up, which TS 102 221 10.1.1 codes in the further interindustry class (b7 set); lpac sends
            class 81 there too."""
            for _ in range(3):
                other.open_channel(ISD_R_AID)
            again = lpac.open_channel(ISD_R_AID)
            session = lpac.channels[again]
            eid = lpac.store_data(again, GET_EID)
            lpac.close_channel(again)
            return session, eid

        run.step("extended", extended)
        run.step("close_other", lambda: [other.close_channel(index) for index in list(other.channels)])
        run.step("enable", lambda: host_enable(run, lpac))
    finally:
        run.transcript = line.transcript
        run.sent = lpac.sent
        line.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    from bipsim.uicc.euicc.pki import ensure_pki

    folder = tmp_path_factory.mktemp("host_lpa")
    pki = folder / "pki"
    ensure_pki(pki)  # the test PKI the card (through $BIPSIM_PKI) and the host (its PEM files) share
    result = Run(keys=HostPki.load(pki), spec=rsp_spec())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BIPSIM_PKI", str(pki))
        smdp_log = folder / "smdp.out"
        with smdp_log.open("wb") as out:  # started first: it gets ready while the CP starts
            smdp = subprocess.Popen(
                [
                    *BIPSIM,
                    "smdp",
                    "--listen",
                    "127.0.0.1:0",
                    "--pki",
                    str(pki),
                    "--trace",
                    str(folder / "smdp.jsonl"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            modem = CpOnPty(folder, ["--profile", "euicc"])
            with modem:
                found: list[str] = []

                def listening() -> bool:
                    found[:] = re.findall(r"listening on (\S+:\d+)", smdp_log.read_text(errors="replace"))
                    return bool(found)

                wait_until("bipsim smdp", listening, smdp, lambda: smdp_log.read_text(errors="replace"))
                host_session(result, modem.device, Es9Host(found[0], pki / "ci.pem"))
                modem.stop_cp()  # SIGTERM: the CP writes the rest of its trace
        finally:
            stop(smdp)
        result.trace = [json.loads(text) for text in modem.trace.read_text().splitlines() if text.strip()]
    yield result


def test_connect_probe_and_the_channel_open_as_lpac_sends_them(run: Run) -> None:
    run["connect"]
    commands = [e.command for e in run.transcript]
    assert commands[:4] == ["AT", "AT+CCHO=?", "AT+CCHC=?", "AT+CGLA=?"]
    opens = run.exchanges('AT+CCHO="')
    assert [e.command for e in opens] == ['AT+CCHO="a0000005591010ffffffff8900000100"'] * 7
    # the answer keeps its "+CCHO: " prefix, and the modem chose a session of its own for lpac's channel 1
    assert opens[1].lines == [f"+CCHO: {run.steps['sessions'][1]}"] and opens[1].final == "OK"
    assert run["open"] == 1 and run.steps["sessions"][1] != "1"


def test_get_eid_through_61xx_and_get_response(run: Run) -> None:
    """SGP.22 5.7.20 through the modem: 80E2910006BF3E035C015A (class 81 as lpac sends it) -> 61 15, then GET
    RESPONSE -> BF3E125A10<EID> 9000."""
    assert run["eid"] == bytes.fromhex("BF3E125A10" + EID)
    assert run.sent[:2] == [bytes.fromhex("81E2910006BF3E035C015A"), bytes.fromhex("81C0000015")]
    session = run.steps["sessions"][1]
    cgla = run.exchanges(f"AT+CGLA={session},")
    assert cgla[0].command == f'AT+CGLA={session},22,"81e2910006bf3e035c015a"'
    assert cgla[0].lines == ['+CGLA: 4,"6115"']
    assert cgla[1].lines == [f'+CGLA: 46,"BF3E125A10{EID}9000"']
    assert run["eid_after"] == run["eid"]


def cla_on(channel: int) -> int:
    """Class 80 (proprietary) addressing `channel`: TS 102 221 10.1.1, channels 0-3 in b2..b1, 4-19 with b7 set
    and channel - 4 in b4..b1."""
    return 0x80 | channel if channel < 4 else 0xC0 | (channel - 4)


def test_the_cp_recodes_class_81_to_the_channel_it_opened(run: Run) -> None:
    """The host always sends class 81; the card gets each APDU with the class of the channel the CP's MANAGE
    CHANNEL opened for that +CCHO session (27.007 8.43 leaves the channel to the MT), the rest of it unchanged."""
    opened = run.opened()
    sessions = [line[len("+CCHO: ") :] for e in run.exchanges('AT+CCHO="') for line in e.lines]
    assert len(sessions) == len(opened) == 7
    channel_of = dict(zip(sessions, opened, strict=True))
    host = [
        (match.group(1), bytes.fromhex(match.group(2)))
        for e in run.exchanges("AT+CGLA=")
        if e.final == "OK" and (match := re.fullmatch(r'AT\+CGLA=([^,]+),\d+,"([0-9a-fA-F]*)"', e.command))
    ]
    card = [
        command for command, _ in run.card_exchanges() if command[1] in (0xE2, 0xC0) and command[0] & 0x80
    ]
    assert len(host) == len(card) > 50
    for (session, apdu), command in zip(host, card, strict=True):
        assert apdu[0] == 0x81 and command[1:] == apdu[1:]
        assert command[0] == cla_on(channel_of[session]), (session, command.hex())
    assert channel_of[run.steps["sessions"][1]] != 1  # lpac's first session is not on channel 1
    assert channel_of[run["extended"][0]] >= 4  # and one is on an extended channel
    assert run["extended"][1] == bytes.fromhex("BF3E125A10" + EID)


def test_es10_answers_decode_with_asn1tools_from_the_sgp22_module(run: Run) -> None:
    spec = run.spec
    assert run.keys is not None
    info1 = spec.decode("EUICCInfo1", run["info1"])
    assert info1["euiccCiPKIdListForVerification"] == [run.keys.ci_pkid]
    assert info1["euiccCiPKIdListForSigning"] == [run.keys.ci_pkid]
    assert len(info1["svn"]) == 3 and info1["svn"][0] == 2  # SGP.22 v2.x
    info2 = spec.decode("EUICCInfo2", run["info2"])
    assert info2["euiccCiPKIdListForSigning"] == [run.keys.ci_pkid]
    kind, profiles = spec.decode("ProfileInfoListResponse", run["profiles"])
    assert kind == "profileInfoListOk" and isinstance(profiles, list)
    assert all("iccid" in profile for profile in profiles)
    assert len(spec.decode("GetEuiccChallengeResponse", run["challenge"])["euiccChallenge"]) == 16
    assert spec.decode("GetEuiccDataResponse", run["eid"])["eidValue"].hex() == EID


def test_authenticate_server_in_120_byte_blocks_signed_by_the_euicc(run: Run) -> None:
    """ES10b.AuthenticateServer made as an SM-DP+ would (DPauth signature over serverSigned1): sent in lpac's
    120-byte STORE DATA blocks (P1 11 then 91, P2 0, 1, 2...), answered through several 61xx/GET RESPONSE; the
    eUICC's euiccSignature1 verifies with its certificate, which chains through the EUM to the CI."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    spec = run.spec
    request, answer, sent = run["authenticate"]
    blocks = [apdu for apdu in run.sent[sent] if apdu[1] == 0xE2]
    assert len(blocks) == -(-len(request) // 120) >= 3
    assert [(b[2], b[3]) for b in blocks] == [(0x11, n) for n in range(len(blocks) - 1)] + [
        (0x91, len(blocks) - 1)
    ]
    assert b"".join(b[5:] for b in blocks) == request and all(len(b) <= 5 + 120 for b in blocks)
    assert len([apdu for apdu in run.sent[sent] if apdu[1] == 0xC0]) >= 2  # the answer came in pieces
    kind, ok = spec.decode("AuthenticateServerResponse", answer)
    assert kind == "authenticateResponseOk", ok
    signed1 = ok["euiccSigned1"]
    assert signed1["transactionId"] == TRANSACTION_ID and signed1["serverChallenge"] == SERVER_CHALLENGE
    # euiccSignature1 covers euiccSigned1 exactly as the eUICC sent it (SGP.22 5.7.13)
    ((_, body, _),) = tlvs(answer)
    ((_, inner, _),) = tlvs(body)
    signed1_der = tlvs(inner)[0][2]
    euicc = x509.load_der_x509_certificate(bytes(ok["euiccCertificate"]))
    eum = x509.load_der_x509_certificate(bytes(ok["eumCertificate"]))
    verify_plain(euicc, ok["euiccSignature1"], signed1_der)
    assert run.keys is not None
    euicc.verify_directly_issued_by(eum)
    eum.verify_directly_issued_by(run.keys.ci)
    serial = euicc.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    assert [attribute.value for attribute in serial] == [EID]  # SGP.22 4.5.2.1: the EID in the subject


def test_a_bad_store_data_gets_its_status_word_and_the_line_goes_on(run: Run) -> None:
    assert run["wrong_block"] == [bytes.fromhex("6A80")]
    assert run["truncated"] == [bytes.fromhex("6A80")]
    first, second = run["skipped_block"]
    assert first == bytes.fromhex("9000") and second == bytes.fromhex("6A80")
    assert run["eid_after"] == bytes.fromhex("BF3E125A10" + EID)
    # each refusal is a trace event at the card boundary
    refusals = [
        e for e in run.trace if e.get("kind") == "apdu.response" and e.get("fields", {}).get("sw") == "6A80"
    ]
    assert len(refusals) == 3


def test_only_ok_and_error_are_final_results_without_cmee(run: Run) -> None:
    assert not any(e.command.upper().startswith("AT+CMEE") for e in run.transcript)
    finals = {e.final for e in run.transcript}
    assert finals <= {"OK", "ERROR"}, [e for e in run.transcript if e.final not in ("OK", "ERROR")]
    assert "ERROR" in finals  # the +CGLA on a closed session below


def test_cchc_closes_the_channel(run: Run) -> None:
    assert run["close"].final == "OK" and [e.final for e in run["close_other"]] == ["OK"] * 4
    assert run["closed_cgla"].final == "ERROR" and run["closed_cgla"].lines == []
    closes = [command for command, _ in run.card_exchanges() if command[1:3] == b"\x70\x80"]
    assert sorted(command[3] for command in closes) == sorted(run.opened())


def test_a_download_as_lpac_makes_it_installs_the_profile(run: Run) -> None:
    """SGP.22 3.1.3 driven by the host: the SM-DP+ (`bipsim smdp`) answers each ES9+ function, the eUICC each ES10
    one; the package goes in the segments of 2.5.5, each its own STORE DATA sequence from block 0; the eUICC's
    ProfileInstallationResult is a success signed with its key; GetProfilesInfo then lists the profile."""
    from cryptography import x509

    spec = run.spec
    download = run["download"]
    assert download["calls"] == [
        ("initiateAuthentication", 200),
        ("authenticateClient", 200),
        ("getBoundProfilePackage", 200),
        ("handleNotification", 204),
    ]
    kind, ok = spec.decode("AuthenticateServerResponse", download["authenticated"])
    assert kind == "authenticateResponseOk"
    assert spec.decode("PrepareDownloadResponse", download["prepared"])[0] == "downloadResponseOk"
    segments = download["segments"]
    assert download["loaded"] == len(segments) >= 6
    heads = [segment[:2] if segment[0] == 0xBF else segment[:1] for segment in segments]
    assert heads[:3] == [b"\xbf\x36", b"\xa0", b"\xa1"] and b"\xa3" in heads and heads[-1] == b"\x86"
    firsts = [apdu for apdu in run.sent[download["sent"]] if apdu[1] == 0xE2 and apdu[3] == 0]
    assert [apdu[5:7] for apdu in firsts] == [segment[:2] for segment in segments]
    result = spec.decode("ProfileInstallationResult", download["result"])
    data = result["profileInstallationResultData"]
    assert data["finalResult"][0] == "successResult", data["finalResult"]
    assert data["transactionId"] == ok["euiccSigned1"]["transactionId"]
    # euiccSignPIR covers ProfileInstallationResultData as the eUICC sent it (SGP.22 5.7.6)
    ((_, body, _),) = tlvs(download["result"])
    signed = tlvs(body)[0][2]
    verify_plain(
        x509.load_der_x509_certificate(bytes(ok["euiccCertificate"])), result["euiccSignPIR"], signed
    )
    metadata = spec.decode("StoreMetadataRequest", download["metadata"])
    kind, profiles = spec.decode("ProfileInfoListResponse", run["profiles_after"])
    listed = {profile["iccid"]: profile for profile in profiles}
    assert kind == "profileInfoListOk" and metadata["iccid"] in listed
    assert listed[metadata["iccid"]]["profileState"] == 0  # disabled until EnableProfile


def test_enabling_the_profile_switches_the_imsi_the_cp_answers(run: Run) -> None:
    from bipsim.uicc.euicc.upp import builtin_upps, decode_upp

    enable = run["enable"]
    assert run.spec.decode("EnableProfileResponse", enable["answer"])["enableResult"] == 0
    assert enable["after"].final == "OK" and enable["after"].lines != enable["before"].lines
    assert enable["after"].lines == [decode_upp(builtin_upps()[MATCHING_ID.lower()]).imsi]
    assert enable["closed"].final == "OK"


def test_the_es9_answers_decode_and_every_signature_verifies(run: Run) -> None:
    """What the SM-DP+ sent, decoded by asn1tools from the SGP.22 module and checked with `cryptography` alone:
    serverSignature1 (DPauth) over ServerSigned1, smdpSignature2 (DPpb) over SmdpSigned2 and euiccSignature1,
    the eUICC's euiccSignature2 over EUICCSigned2 and smdpSignature2, and the package's smdpSign over
    InitialiseSecureChannel's data objects and the eUICC's one-time key (SGP.22 5.6.1, 5.7.5, 2.5.3), each server
    certificate issued by the CI."""
    from cryptography import x509

    spec = run.spec
    download = run["download"]
    init, client = download["init"], download["client"]
    transaction_id = bytes.fromhex(init["transactionId"])
    assert run.keys is not None
    ci = run.keys.ci

    signed1 = unb64(init["serverSigned1"])
    value = spec.decode("ServerSigned1", signed1)
    assert value["transactionId"] == transaction_id and value["euiccChallenge"] == download["challenge"]
    assert value["serverAddress"] == download["smdp"]
    dpauth = x509.load_der_x509_certificate(unb64(init["serverCertificate"]))
    dpauth.verify_directly_issued_by(ci)
    verify_plain(dpauth, tlvs(tagged(unb64(init["serverSignature1"]), b"\x5f\x37"))[0][1], signed1)

    _, ok = spec.decode("AuthenticateServerResponse", download["authenticated"])
    signed2 = unb64(client["smdpSigned2"])
    assert spec.decode("SmdpSigned2", signed2)["transactionId"] == transaction_id
    dppb = x509.load_der_x509_certificate(unb64(client["smdpCertificate"]))
    dppb.verify_directly_issued_by(ci)
    smdp_signature2 = tlvs(tagged(unb64(client["smdpSignature2"]), b"\x5f\x37"))[0][1]
    verify_plain(dppb, smdp_signature2, signed2 + der(b"\x5f\x37", ok["euiccSignature1"]))

    kind, prepared = spec.decode("PrepareDownloadResponse", download["prepared"])
    assert kind == "downloadResponseOk" and prepared["euiccSigned2"]["transactionId"] == transaction_id
    ((_, body, _),) = tlvs(download["prepared"])
    ((_, inner, _),) = tlvs(body)
    euicc_signed2 = tlvs(inner)[0][2]
    euicc = x509.load_der_x509_certificate(bytes(ok["euiccCertificate"]))
    verify_plain(euicc, prepared["euiccSignature2"], euicc_signed2 + der(b"\x5f\x37", smdp_signature2))

    package = spec.decode("BoundProfilePackage", download["bpp"])
    channel = package["initialiseSecureChannelRequest"]
    assert channel["transactionId"] == transaction_id and package["sequenceOf86"]
    ((_, bpp_body, _),) = tlvs(download["bpp"])
    (_, bf23, _) = tlvs(bpp_body)[0]
    objects = tlvs(bf23)
    assert [tag for tag, _, _ in objects] == [0x82, 0x80, 0xA6, 0x5F49, 0x5F37]
    one_time_key = der(b"\x5f\x49", prepared["euiccSigned2"]["euiccOtpk"])
    verify_plain(dppb, channel["smdpSign"], b"".join(raw for _, _, raw in objects[:4]) + one_time_key)


def test_a_second_download_of_the_profile_is_refused_by_the_smdp(run: Run) -> None:
    """Issue 23's premise, seen by an independent client: the SM-DP+ serves a profile once, and the same
    activation code again gets a Failed ES9+ answer with an SGP.22 status code (6.5.1.4 statusCodeData)."""
    refused = run.steps["second_download"]
    assert isinstance(refused, Es9Failed), refused
    assert (
        refused.function == "getBoundProfilePackage"
    )  # the issue: "a second getBoundProfilePackage ... is refused"
    assert refused.status["status"] == "Failed"
    codes = refused.status["statusCodeData"]
    assert re.fullmatch(r"\d+(\.\d+)+", codes["subjectCode"]) and re.fullmatch(
        r"\d+(\.\d+)+", codes["reasonCode"]
    )
    assert run["download"]["calls"].count(("getBoundProfilePackage", 200)) == 1
