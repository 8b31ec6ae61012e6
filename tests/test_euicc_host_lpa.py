"""A host LPA reaches the eUICC through a real `bipsim cp --profile euicc` as open-source LPAs with an AT backend do
(issue 23, "What it must show" item 9; docs/protocols.md, "eUICC and the cloud backup"). The host side is
tests/lpac_host.py: raw serial I/O on the DTE end of a pty pair, no bipsim code, doing what lpac's AT driver does
(AT+CCHO with the AID in lower case, AT+CGLA with class 81 whatever session the modem chose, GET RESPONSE after 61xx,
only OK and ERROR as final results, +CMEE never set). The answers are decoded with asn1tools from the project's
SGP.22 module (uicc/euicc/rsp.asn) compiled in the test, and the eUICC's signature and certificates are checked with
`cryptography` alone.

One CP process serves the whole module: the fixture runs the host's session once (as `lpac chip info`, `lpac
profile list` and the first ES10 steps of a download would), stops the CP so its trace is complete, and each test
reads the part of that run it checks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.cp_process import CpOnPty
from tests.lpac_host import (
    ISD_R_AID,
    AtLine,
    Exchange,
    HostLpa,
    HostPki,
    authenticate_server_request,
    rsp_spec,
    tlvs,
    verify_plain,
)

EID = "89049032123451234512345678901235"  # the `euicc` profile's EID (uicc/profiles/euicc.toml)
GET_EID = bytes.fromhex("BF3E035C015A")  # SGP.22 5.7.20: GetEuiccDataRequest with tagList '5A'
TRANSACTION_ID = bytes.fromhex("0102030405060708090A0B0C0D0E0F10")
SERVER_CHALLENGE = bytes(range(0x20, 0x30))


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


def host_session(run: Run, device: Path) -> None:
    """The host's whole session: lpac's connect probe; another application on the line holds the first session
    (so the modem gives lpac a session other than 1, and lpac still sends class 81); the ES10 functions; bad
    STORE DATA commands; closing."""
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
        modem = CpOnPty(folder, ["--profile", "euicc"])
        with modem:
            host_session(result, modem.device)
            modem.stop_cp()  # SIGTERM: the CP writes the rest of its trace
        result.trace = [json.loads(text) for text in modem.trace.read_text().splitlines() if text.strip()]
    yield result


def test_connect_probe_and_the_channel_open_as_lpac_sends_them(run: Run) -> None:
    run["connect"]
    commands = [e.command for e in run.transcript]
    assert commands[:4] == ["AT", "AT+CCHO=?", "AT+CCHC=?", "AT+CGLA=?"]
    opens = run.exchanges('AT+CCHO="')
    assert [e.command for e in opens] == ['AT+CCHO="a0000005591010ffffffff8900000100"'] * 6
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


def test_the_cp_recodes_class_81_to_the_channel_it_opened(run: Run) -> None:
    """The host always sends class 81; the CP's trace shows the card got the class of the channel its MANAGE
    CHANNEL opened for lpac's session (27.007 8.43 leaves the channel to the MT)."""
    opened = run.opened()
    assert len(opened) == 6 and opened[1] != 1 and opened[-1] >= 4
    es10 = [command for command, _ in run.card_exchanges() if command[1] in (0xE2, 0xC0)]
    first = [
        command[0] for command in es10[:-2]
    ]  # all but the GetEID on the last channel: 61 15, GET RESPONSE
    assert first and set(first) == {0x80 | opened[1]}
    # channel n from 4: b8 (proprietary) kept, b7 set, n - 4 in b4..b1
    assert [command[0] for command in es10[-2:]] == [0xC0 | (opened[-1] - 4)] * 2
    assert all(apdu[0] == 0x81 for apdu in run.sent)
    session, eid = run["extended"]
    assert eid == bytes.fromhex("BF3E125A10" + EID) and session not in run.steps["sessions"]


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
