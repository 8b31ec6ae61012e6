"""The AP's LPA (ap/lpa/: es10_client, es9_client, state, ui_policy, lpa) against in-process fakes: a fake modem
whose +CCHO/+CGLA reach a fake eUICC that assembles STORE DATA, a fake SM-DP+ behind the ES9+ client's transport,
and a fake cloud store. What the issue's list asks of the LPA's own rules (no ES9+ before the login check, one preset
message, records before the install, one fetch after a failure and no second ES9+ request, no loop when the cloud's
package fails too) is checked here; tests/test_esim_scenarios.py runs the real card, CP, SM-DP+ and cloud."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from bipsim.ap.lpa.es9_client import Es9Client
from bipsim.ap.lpa.es10_client import (
    Es10Client,
    Es10Error,
    bpp_segments,
    iccid_bytes,
    iccid_digits,
    read_tlv,
    store_data_apdus,
    tlv,
)
from bipsim.ap.lpa.lpa import Lpa
from bipsim.ap.lpa.records import decode_record, join_records
from bipsim.ap.lpa.state import LpaEvent, LpaMachine, LpaRecord, LpaState, StateFileError
from bipsim.ap.lpa.ui_policy import CLOSED_MESSAGE, UiKind, UiPolicy, UiPolicyError
from bipsim.link.at_chat_core import AtResponse
from bipsim.ota import es9_json
from bipsim.ota.cloud_store import CloudError
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from bipsim.uicc.euicc import asn1
from bipsim.uicc.transitions import IllegalSessionEvent

EID = "89049032123451234512345678901235"
ICCID = "8944476500001234567"
OLD_IMSI = "001010123456789"
NEW_IMSI = "001010000000123"


# --- fakes ----------------------------------------------------------------------------------------------------------


def make_bpp(segments86: int = 3, size86: int = 300) -> bytes:
    """A BoundProfilePackage of the right shape (contents not protected: the fake eUICC does not unwrap them)."""
    return asn1.encode(
        "BoundProfilePackage",
        {
            "initialiseSecureChannelRequest": {
                "remoteOpId": 1,
                "transactionId": b"\x01" * 16,
                "controlRefTemplate": {"keyType": b"\x88", "keyLen": b"\x10", "hostId": b"\x01" * 16},
                "smdpOtpk": b"\x04" + b"\x02" * 64,
                "smdpSign": b"\x03" * 64,
            },
            "firstSequenceOf87": [b"\x87" * 40],
            "sequenceOf88": [b"\x88" * 60, b"\x89" * 20],
            "sequenceOf86": [bytes([n]) * size86 for n in range(segments86)],
        },
    )


def installation_result(ok: bool, seq: int = 7) -> bytes:
    final: tuple[str, dict[str, Any]] = (
        ("successResult", {"aid": bytes.fromhex("A0000005591010FFFFFFFF8900001100"), "simaResponse": b""})
        if ok
        else ("errorResult", {"bppCommandId": 5, "errorReason": 11})
    )
    return asn1.encode(
        "ProfileInstallationResult",
        {
            "profileInstallationResultData": {
                "transactionId": b"\x01" * 16,
                "notificationMetadata": {
                    "seqNumber": seq,
                    "profileManagementOperation": (b"\x80", 4),
                    "notificationAddress": "127.0.0.1",
                    "iccid": iccid_bytes(ICCID),
                },
                "smdpOid": "2.999.10",
                "finalResult": final,
            },
            "euiccSignPIR": b"\x05" * 64,
        },
    )


@dataclass
class FakeEuicc:
    """The ISD-R's ES10 as far as the LPA sees it: STORE DATA assembled, answers by outer tag, 61 xx chaining."""

    fail_installs: int = 0  # the first n installs answer installFailedDueToInterruption
    installed: list[str] = field(default_factory=list)
    enabled: str = ""
    requests: list[str] = field(default_factory=list)
    segments: list[bytes] = field(default_factory=list)
    _buffer: bytes = b""
    _pending: bytes = b""
    _bpp_left: int = 0

    def apdu(self, command: bytes) -> bytes:
        if command[1] == 0xC0:
            out, self._pending = self._pending[: command[4] or 256], self._pending[command[4] or 256 :]
            return out + (bytes((0x61, min(len(self._pending), 255))) if self._pending else b"\x90\x00")
        assert command[0] == 0x81 and command[1] == 0xE2, command.hex()
        block = command[5 : 5 + command[4]]
        assert command[3] == len(self._buffer) // 255 if command[2] == 0x11 else True
        self._buffer += block
        if command[2] == 0x11:
            return b"\x90\x00"
        request, self._buffer = self._buffer, b""
        answer = self.es10(request)
        if not answer:
            return b"\x90\x00"
        self._pending = answer
        return bytes((0x61, min(len(answer), 255)))

    def es10(self, request: bytes) -> bytes:
        if self._bpp_left:
            self.segments.append(request)
            self._bpp_left -= len(request)
            return self._bpp_done() if self._bpp_left == 0 else b""
        tag = request[:2]
        self.requests.append(tag.hex().upper())
        if tag == b"\xbf\x3e":
            return tlv(b"\xbf\x3e", tlv(b"\x5a", bytes.fromhex(EID)))
        if tag == b"\xbf\x20":
            return bytes.fromhex("BF2003820102")
        if tag == b"\xbf\x2e":
            return tlv(b"\xbf\x2e", tlv(b"\x80", b"\x11" * 16))
        if tag == b"\xbf\x38":
            return tlv(b"\xbf\x38", tlv(b"\x30", b"euicc signed1"))
        if tag == b"\xbf\x21":
            return tlv(b"\xbf\x21", tlv(b"\x30", b"euicc signed2"))
        if tag == b"\xbf\x36":
            outer, _ = read_tlv(request[:8] + b"\x00" * 65536)
            self.segments = [request]
            self._bpp_left = len(outer.header) + len(outer.value) - len(request)
            return b""
        if tag == b"\xbf\x2d":
            infos = b"".join(tlv(b"\xe3", tlv(b"\x5a", iccid_bytes(i))) for i in self.installed)
            return tlv(b"\xbf\x2d", tlv(b"\xa0", infos))
        if tag == b"\xbf\x31":
            self.enabled = ICCID
            return bytes.fromhex("BF3103800100")
        if tag == b"\xbf\x30":
            return bytes.fromhex("BF3003800100")
        return tlv(tag, tlv(b"\x80", b"\x7f"))

    def _bpp_done(self) -> bytes:
        if self.fail_installs:
            self.fail_installs -= 1
            return installation_result(False)
        self.installed.append(ICCID)
        return installation_result(True)


@dataclass(eq=False)  # hashable: the line's slot lock is kept per port (ap/slot_lock.py)
class FakeModem:
    """The CP's AT surface the LPA uses: +CCHO/+CGLA/+CCHC to the fake eUICC, +CIMI from the enabled profile."""

    card: FakeEuicc
    lines: list[str] = field(default_factory=list)
    lost_at: int | None = None  # the line goes away at this CGLA (a power cycle)
    new_imsi: str = NEW_IMSI  # the enabled profile's IMSI
    crsm: bool = False  # answers AT+CRSM READ BINARY of EF_IMSI (else ERROR, as a modem without +CRSM)

    async def command(
        self, line: str, *, timeout: float | None = None, step: str | None = None
    ) -> AtResponse:
        self.lines.append(line)
        await trio.sleep(0)
        if line.startswith("AT+CCHO="):
            return AtResponse(line, ("+CCHO: 2",), "OK")
        if line.startswith("AT+CCHC="):
            return AtResponse(line, (), "OK")
        if line == "AT+CIMI":
            return AtResponse(line, (self.new_imsi if self.card.enabled else OLD_IMSI,), "OK")
        if line.startswith("AT+CRSM=176,28423,") and self.crsm:
            ef = ef_imsi(self.new_imsi if self.card.enabled else OLD_IMSI)
            return AtResponse(line, (f'+CRSM: 144,0,"{ef.hex().upper()}"',), "OK")
        if line.startswith("AT+CGLA="):
            if self.lost_at is not None and sum(x.startswith("AT+CGLA") for x in self.lines) >= self.lost_at:
                self.lost_at = None
                raise trio.BrokenResourceError("the line went away")
            session, length, quoted = line[8:].split(",", 2)
            apdu = bytes.fromhex(quoted.strip('"'))
            assert int(length) == 2 * len(apdu) and session == "2"
            answer = self.card.apdu(apdu)
            return AtResponse(line, (f'+CGLA: {2 * len(answer)},"{answer.hex().upper()}"',), "OK")
        return AtResponse(line, (), "ERROR")


def ef_imsi(imsi: str) -> bytes:
    """EF_IMSI of TS 31.102 4.2.2 (the length, the parity nibble 9 or 1 before the first digit, BCD, F filler)."""
    digits = [int(d) for d in imsi]
    nibbles = [9 if len(digits) % 2 else 1, *digits] + ([] if len(digits) % 2 else [15])
    body = bytes(nibbles[i] | nibbles[i + 1] << 4 for i in range(0, len(nibbles), 2))
    return bytes((len(body),)) + body.ljust(8, b"\xff")


class FakeCloudError(CloudError):
    def __init__(self, status: int, reason: str, location: str = "") -> None:
        super().__init__(status, reason, location=location)


@dataclass
class FakeCloud:
    users: dict[str, str] = field(default_factory=lambda: {"alice": "secret"})
    store: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    session: bool = False
    snapshot_at_install: list[str] | None = None

    async def login(self, user: str, password: str) -> None:
        self.calls.append("login")
        if user not in self.users:
            raise FakeCloudError(303, "not registered", "/register")
        if self.users[user] != password:
            raise FakeCloudError(401, "wrong password")
        self.session = True

    async def register(self, user: str, password: str) -> None:
        self.calls.append("register")
        self.users[user] = password
        self.session = True

    async def upload(self, records: list[str]) -> None:
        assert self.session
        self.calls.append("upload")
        first = decode_record(records[0])
        self.store[(first.eid, first.module)] = list(records)

    async def fetch(self, eid: str, module: str) -> list[str]:
        assert self.session
        self.calls.append("fetch")
        if (eid, module) not in self.store:
            raise FakeCloudError(404, "no backup")
        return list(self.store[(eid, module)])

    async def delete(self, eid: str, module: str) -> None:
        assert self.session
        self.calls.append("delete")
        self.store.pop((eid, module), None)


@dataclass
class FakeSmdp:
    """ES9+ answers as the JSON binding gives them; single use of the package, as the SM-DP+ enforces."""

    package: bytes
    ppr_ids: tuple[bytes, int] | None = None
    calls: list[str] = field(default_factory=list)
    served: bool = False
    requests_before_login: int = 0

    async def __call__(self, target: str, body: bytes) -> tuple[int, bytes]:
        function = target.rsplit("/", 1)[1]
        self.calls.append(function)
        request = json.loads(body)
        assert request["header"]["functionRequesterIdentifier"]
        if function == "initiateAuthentication":
            assert request["smdpAddress"] == "127.0.0.1:8443"
            return 200, es9_json.encode_response(
                {
                    "transactionId": "01" * 16,
                    "serverSigned1": tlv(b"\x30", b"signed1"),
                    "serverSignature1": b"\x00" * 64,  # the bare signature: the client adds 5F37
                    "euiccCiPKIdToBeUsed": tlv(b"\x04", b"\x0a" * 20),
                    "serverCertificate": tlv(b"\x30", b"cert"),
                }
            )
        if function == "authenticateClient":
            metadata: dict[str, Any] = {
                "iccid": iccid_bytes(ICCID),
                "serviceProviderName": "op1",
                "profileName": "op1 profile",
            }
            if self.ppr_ids is not None:
                metadata["profilePolicyRules"] = self.ppr_ids
            return 200, es9_json.encode_response(
                {
                    "transactionId": "01" * 16,
                    "profileMetadata": asn1.encode("StoreMetadataRequest", metadata),
                    "smdpSigned2": tlv(b"\x30", b"signed2"),
                    "smdpSignature2": tlv(b"\x5f\x37", b"\x00" * 64),
                    "smdpCertificate": tlv(b"\x30", b"cert"),
                }
            )
        if function == "getBoundProfilePackage":
            if self.served:
                return 200, es9_json.encode_failure(es9_json.Es9Error("8.2.6", "3.8", "already downloaded"))
            self.served = True
            return 200, es9_json.encode_response(
                {"transactionId": "01" * 16, "boundProfilePackage": self.package}
            )
        if function == "handleNotification":
            return 204, b""
        return 404, b""


@dataclass
class Rig:
    card: FakeEuicc
    modem: FakeModem
    cloud: FakeCloud
    smdp: FakeSmdp
    tracer: Tracer
    state: Path

    def lpa(self, ui: str = "login:alice:secret", limit: int = 1024) -> Lpa:
        return Lpa(
            activation_code="LPA:1$127.0.0.1:8443$OP1",
            machine=LpaMachine.load(self.state),
            ui=UiPolicy.parse(ui),
            es9=Es9Client("127.0.0.1:8443", transport=self.smdp, tracer=self.tracer),
            cloud=self.cloud,
            cloud_account=("alice", "secret"),
            limit=limit,
            tracer=self.tracer,
        )

    def events(self, kind: str) -> list[Any]:
        return [e for e in self.tracer.events if e.kind == kind]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    card = FakeEuicc()
    return Rig(
        card,
        FakeModem(card),
        FakeCloud(),
        FakeSmdp(make_bpp()),
        Tracer(keep=True),
        tmp_path / "lpa.json",
    )


# --- ES10 transport -------------------------------------------------------------------------------------------------


def test_store_data_blocks_of_255_numbered_with_p1_11_then_91() -> None:
    data = bytes(range(256)) * 3  # 768 bytes: 255 + 255 + 255 + 3
    apdus = store_data_apdus(data)
    assert [a[:5].hex().upper() for a in apdus] == ["81E21100FF", "81E21101FF", "81E21102FF", "81E2910303"]
    assert b"".join(a[5:] for a in apdus) == data
    assert store_data_apdus(bytes.fromhex("BF3E035C015A")) == [bytes.fromhex("81E2910006BF3E035C015A")]


def test_bpp_segments_follow_sgp22_2_5_5() -> None:
    bpp = make_bpp(segments86=3)
    segments = bpp_segments(bpp)
    # BF36 header + BF23; A0 whole; A1 header; two 88; A3 header; three 86
    header = read_tlv(bpp)[0].header
    assert segments[0].startswith(header) and segments[0][len(header) :][:2] == b"\xbf\x23"
    assert [s[:1].hex() for s in segments[1:]] == ["a0", "a1", "88", "88", "a3", "86", "86", "86"]
    assert b"".join(segments) == bpp
    with pytest.raises(Es10Error):
        bpp_segments(b"\xbf\x37\x00")


def test_iccid_swapped_bcd_round_trip() -> None:
    assert iccid_bytes(ICCID).hex().upper() == "98447456000021436 5F7".replace(" ", "")
    assert iccid_digits(iccid_bytes(ICCID)) == ICCID
    assert iccid_bytes("89").hex().upper() == "98FFFFFFFFFFFFFFFFFF"


async def test_es10_get_eid_over_ccho_and_cgla_with_get_response(rig: Rig) -> None:
    client = Es10Client(rig.modem, tracer=rig.tracer)
    assert await client.get_eid() == EID
    assert rig.modem.lines[0] == 'AT+CCHO="a0000005591010ffffffff8900000100"'
    assert rig.modem.lines[1] == 'AT+CGLA=2,22,"81E2910006BF3E035C015A"'
    assert rig.modem.lines[2].startswith('AT+CGLA=2,10,"00C00000')  # the 61 xx rest
    es10 = rig.events(Kind.LPA_ES10)
    assert [e.field("direction") for e in es10] == ["request", "response"]
    assert es10[0].data == bytes.fromhex("BF3E035C015A")


async def test_es10_error_status_word_is_an_es10_error(rig: Rig) -> None:
    client = Es10Client(rig.modem)

    def refuse(command: bytes) -> bytes:
        return b"\x6a\x80"

    rig.card.apdu = refuse  # type: ignore[method-assign]
    with pytest.raises(Es10Error) as info:
        await client.get_eid()
    assert info.value.sw == 0x6A80


# --- state machine and UI policy -----------------------------------------------------------------------------------


def test_state_machine_persists_each_change_and_refuses_what_the_table_lacks(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    machine = LpaMachine.load(path)
    machine.fire(LpaEvent.LOGGED_IN)
    machine.fire(LpaEvent.DOWNLOADED, eid=EID, package=b"\xbf\x36\x00", ppr=3)
    again = LpaMachine.load(path)
    assert (
        again.state is LpaState.DOWNLOADED
        and again.record.package == b"\xbf\x36\x00"
        and again.record.ppr == 3
    )
    with pytest.raises(IllegalSessionEvent):
        again.fire(LpaEvent.INSTALL_OK)  # DOWNLOADED must upload first
    assert LpaMachine.load(path).state is LpaState.DOWNLOADED
    assert not path.with_name("s.json.tmp").exists()
    path.write_text("{not json")
    with pytest.raises(StateFileError):
        LpaMachine.load(path)
    with pytest.raises(StateFileError):
        LpaRecord.from_json({"state": "nowhere"})


def test_after_a_failed_install_the_only_ways_are_the_cloud_or_stop() -> None:
    from bipsim.ap.lpa.state import LPA_TABLE

    assert {e for (s, e) in LPA_TABLE.rows if s is LpaState.FAILED} == {LpaEvent.FETCH, LpaEvent.GIVE_UP}
    # no state after REQUESTING leads back to it: a second ES9+ request has no row
    assert all(
        to is not LpaState.REQUESTING
        for (s, _), to in LPA_TABLE.rows.items()
        if s is not LpaState.LOGIN_CHECK
    )


def test_ui_policy_parse() -> None:
    assert UiPolicy.parse("logged-in").kind is UiKind.LOGGED_IN
    assert UiPolicy.parse("close").shows_login_page
    assert UiPolicy.parse("register:bob:pw") == UiPolicy(UiKind.REGISTER, "bob", "pw")
    for bad in ("login", "login:bob", "register::pw", "closed", "logged-in:x:y"):
        with pytest.raises(UiPolicyError):
            UiPolicy.parse(bad)


# --- the flow ---------------------------------------------------------------------------------------------------


async def test_download_uploads_records_before_install_then_deletes_and_enables(rig: Rig) -> None:
    rig.smdp.ppr_ids = (b"\x60", 3)  # ppr1 and ppr2
    uploaded_before_install: list[list[str]] = []
    apdu = rig.card.apdu

    def watch(command: bytes) -> bytes:
        if command[5:7] == b"\xbf\x36" and not uploaded_before_install:
            uploaded_before_install.append(list(rig.cloud.store.get((EID, "LPA"), [])))
        return apdu(command)

    rig.card.apdu = watch  # type: ignore[method-assign]
    outcome = await rig.lpa().run(rig.modem)
    assert outcome.ok and outcome.iccid == ICCID and outcome.imsi == NEW_IMSI
    assert rig.smdp.calls == [
        "initiateAuthentication",
        "authenticateClient",
        "getBoundProfilePackage",
        "handleNotification",
    ]
    # item 3: before the install the cloud held the records, in the document's field order, PPR = both
    records = uploaded_before_install[0]
    assert records and all(r.split("$")[0] == "module=LPA" for r in records)
    assert [part.split("=")[0] for part in records[0].split("$")] == [
        "module",
        "EID",
        "PPR",
        "profile_len",
        "profile_data",
    ]
    assert decode_record(records[0]).ppr == 3 and decode_record(records[0]).eid == EID
    assert join_records(records) == rig.smdp.package
    # item 6: the delete came, nothing is left
    assert rig.cloud.calls[-1] == "delete" and not rig.cloud.store
    assert LpaMachine.load(rig.state).state is LpaState.CLOUD_DELETED
    steps = [e.step for e in rig.tracer.events if e.step]
    for step in (
        "000:401",
        "000:4011",
        "000:4012",
        "000:4013",
        "000:4014",
        "000:4015",
        "000:201",
        "000:202",
        "000:402",
        "000:203",
    ):
        assert step in steps, step
    assert "000:403" not in steps
    assert rig.card.requests.count("BF31") == 1 and "BF30" in rig.card.requests


async def test_no_es9_request_before_the_login_check_and_one_preset_message(rig: Rig) -> None:
    outcome = await rig.lpa(ui="close").run(rig.modem)
    assert not outcome.ok and outcome.state is LpaState.STOPPED
    assert rig.smdp.calls == [] and rig.modem.lines == []
    messages = [e for e in rig.events(Kind.LPA_UI) if e.field("action") == "message"]
    assert len(messages) == 1 and messages[0].field("message") == CLOSED_MESSAGE
    # the flow stays stopped: a second run shows nothing new
    again = await rig.lpa(ui="close").run(rig.modem)
    assert again.state is LpaState.STOPPED and rig.smdp.calls == []
    assert len([e for e in rig.events(Kind.LPA_UI) if e.field("action") == "message"]) == 1


async def test_a_refused_login_is_a_failed_check(rig: Rig) -> None:
    outcome = await rig.lpa(ui="login:alice:wrong").run(rig.modem)
    assert outcome.state is LpaState.STOPPED and rig.smdp.calls == []


async def test_register_page_then_login(rig: Rig) -> None:
    outcome = await rig.lpa(ui="register:carol:pw").run(rig.modem)
    assert outcome.ok
    assert rig.cloud.calls[:2] == ["login", "register"]
    pages = [(e.field("page"), e.field("action")) for e in rig.events(Kind.LPA_UI)]
    assert pages[:4] == [
        ("login", "shown"),
        ("login", "login"),
        ("register", "shown"),
        ("register", "register"),
    ]


async def test_an_unknown_user_with_the_login_policy_gets_no_download(rig: Rig) -> None:
    outcome = await rig.lpa(ui="login:nobody:pw").run(rig.modem)
    assert outcome.state is LpaState.STOPPED and rig.smdp.calls == [] and "register" not in rig.cloud.calls


async def test_failed_install_fetches_once_from_the_cloud_and_installs(rig: Rig) -> None:
    rig.card.fail_installs = 1
    outcome = await rig.lpa().run(rig.modem)
    assert outcome.ok
    assert rig.cloud.calls.count("fetch") == 1
    assert rig.smdp.calls.count("getBoundProfilePackage") == 1
    assert b"".join(rig.card.segments) == rig.smdp.package  # the second install: the cloud's bytes
    states = [e.field("state") for e in rig.events(Kind.LPA_STATE)]
    assert states[states.index("failed") :][:4] == ["failed", "cloud_fetch", "parsing", "installing"]


async def test_a_failure_of_the_clouds_package_stops_without_a_loop(rig: Rig) -> None:
    rig.card.fail_installs = 5
    outcome = await rig.lpa().run(rig.modem)
    assert not outcome.ok and outcome.state is LpaState.STOPPED
    assert rig.cloud.calls.count("fetch") == 1 and rig.smdp.calls.count("getBoundProfilePackage") == 1
    assert "errorReason 11" in outcome.reason
    result = rig.events(Kind.LPA_RESULT)[-1]
    assert result.field("outcome") == "stopped"


async def test_power_cycle_during_install_resumes_from_the_cloud(rig: Rig) -> None:
    rig.modem.lost_at = 12  # the line goes away in the middle of the segments
    with pytest.raises(trio.BrokenResourceError):
        await rig.lpa().run(rig.modem)
    assert LpaMachine.load(rig.state).state is LpaState.INSTALLING
    rig.card._bpp_left = 0  # the card's power cycle drops the half-loaded package
    rig.card.segments = []
    outcome = await rig.lpa().run(rig.modem)  # a new AP process: its machine from the file
    assert outcome.ok
    assert rig.cloud.calls.count("fetch") == 1
    assert rig.smdp.calls.count("getBoundProfilePackage") == 1 and "BF2D" in rig.card.requests


async def test_refused_download_stops_and_uploads_nothing(rig: Rig) -> None:
    rig.smdp.served = True  # the profile was downloaded before: 8.2.6 / 3.8
    outcome = await rig.lpa().run(rig.modem)
    assert outcome.state is LpaState.STOPPED and "3.8" in outcome.reason
    assert "upload" not in rig.cloud.calls and "BF36" not in rig.card.requests
    refused = [e for e in rig.events(Kind.LPA_ES9) if e.error]
    assert refused and refused[0].field("reason_code") == "3.8"


async def test_records_of_the_chunk_limit(rig: Rig) -> None:
    rig.smdp.package = make_bpp(segments86=4, size86=600)
    await rig.lpa(limit=1024).run(rig.modem)
    encapsulate = [e for e in rig.events(Kind.LPA_RECORDS) if e.field("part") == "encapsulate"][0]
    length = len(rig.smdp.package)
    assert encapsulate.field("count") == -(-length // 1024) and encapsulate.field("length") == length


async def test_garbage_from_the_smdp_stops_with_a_trace_event(rig: Rig) -> None:
    async def garbage(target: str, body: bytes) -> tuple[int, bytes]:
        return 200, b"<html>nope</html>"

    lpa = rig.lpa()
    lpa.es9 = Es9Client("127.0.0.1:8443", transport=garbage, tracer=rig.tracer)
    outcome = await lpa.run(rig.modem)
    assert outcome.state is LpaState.STOPPED
    assert any(e.error for e in rig.events(Kind.LPA_ES9))


async def test_every_000_step_label_is_its_steps_message(rig: Rig) -> None:
    from bipsim.trace.steps import STEPS

    rig.card.fail_installs = 1
    assert (await rig.lpa().run(rig.modem)).ok
    labelled = [e for e in rig.tracer.events if e.step and e.step.startswith("000:")]
    assert {e.step for e in labelled} == {s for s in STEPS if s.startswith("000:")}
    assert all(STEPS[e.step].matches(e) for e in labelled if e.step)


def test_the_lpas_own_der_agrees_with_asn1tools() -> None:
    """ctx_params1, parse_metadata and parse_installation_result against uicc/euicc/rsp.asn through asn1tools."""
    from bipsim.ap.lpa.es10_client import ctx_params1, parse_installation_result, parse_metadata

    tac = bytes.fromhex("35290611")
    assert ctx_params1("OP1", tac) == asn1.encode(
        "CtxParams1",
        (
            "ctxParamsForCommonAuthentication",
            {"matchingId": "OP1", "deviceInfo": {"tac": tac, "deviceCapabilities": {}}},
        ),
    )
    for ppr_ids, expected in (((b"\x60", 3), 3), ((b"\x40", 2), 1), (None, 0)):
        value: dict[str, Any] = {"iccid": iccid_bytes(ICCID), "serviceProviderName": "op", "profileName": "p"}
        if ppr_ids is not None:
            value["profilePolicyRules"] = ppr_ids
        metadata = parse_metadata(asn1.encode("StoreMetadataRequest", value))
        assert metadata.iccid == ICCID
        from bipsim.ap.lpa.records import ppr_from_ids

        assert ppr_from_ids(metadata.ppr_ids) == expected
    ok = parse_installation_result(installation_result(True, seq=9))
    assert ok.ok and ok.seq_number == 9
    failed = parse_installation_result(installation_result(False))
    assert not failed.ok and (failed.bpp_command_id, failed.error_reason) == (5, 11)
    with pytest.raises(Es10Error):
        parse_installation_result(bytes.fromhex("BF3700"))
    with pytest.raises(Es10Error):
        parse_metadata(bytes.fromhex("BF2500"))


async def test_a_bad_record_from_the_cloud_stops_without_a_loop(rig: Rig) -> None:
    """A cloud record with a wrong length: the parse (000:404) names the field, the flow stops, one fetch."""
    rig.card.fail_installs = 1
    upload = rig.cloud.upload

    async def corrupt(records: list[str]) -> None:
        await upload(records)
        key = next(iter(rig.cloud.store))
        first = rig.cloud.store[key][0]
        rig.cloud.store[key][0] = first[:-2]  # one byte short of profile_len

    rig.cloud.upload = corrupt  # type: ignore[method-assign]
    outcome = await rig.lpa().run(rig.modem)
    assert outcome.state is LpaState.STOPPED and "records are bad" in outcome.reason
    assert rig.cloud.calls.count("fetch") == 1 and rig.smdp.calls.count("getBoundProfilePackage") == 1
    parse = [e for e in rig.events(Kind.LPA_RECORDS) if e.field("part") == "parse"]
    assert parse and parse[0].error and parse[0].step == "000:404"


def drop_cloud_installs(rig: Rig, drops: int) -> list[int]:
    """The card resets (the CP answers ERROR, the half-loaded package is gone) in the middle of each of the first
    `drops` installs from the cloud: no ProfileInstallationResult comes. Returns the installs seen so far."""
    command = rig.modem.command
    installs = [0]
    cut = [0]

    async def resetting(line: str, *, timeout: float | None = None, step: str | None = None) -> AtResponse:
        if line.startswith("AT+CGLA=") and '"81E2' in line and line.split('"')[1][10:14] == "BF36":
            installs[0] += 1
            cut[0] = 3 if 2 <= installs[0] <= drops + 1 else 0  # the first install is the SM-DP+'s
        elif line.startswith("AT+CGLA=") and cut[0]:
            cut[0] -= 1
            if not cut[0]:
                rig.card._bpp_left = 0
                rig.card.segments = []
                return AtResponse(line, (), "ERROR")
        return await command(line, timeout=timeout, step=step)

    rig.modem.command = resetting  # type: ignore[method-assign]
    return installs


async def test_an_interrupted_install_from_the_cloud_is_retried(rig: Rig) -> None:
    """No ProfileInstallationResult (the card reset) during the install from the cloud: the eUICC never judged
    the package, so the LPA fetches it and installs again, each retry an lpa.result `retry` event."""
    rig.card.fail_installs = 1  # the SM-DP+'s package: a ProfileInstallationResult error
    installs = drop_cloud_installs(rig, drops=2)
    outcome = await rig.lpa().run(rig.modem)
    assert outcome.ok, outcome.reason
    assert installs[0] == 4 and rig.cloud.calls.count("fetch") == 3
    assert rig.smdp.calls.count("getBoundProfilePackage") == 1
    retries = [e for e in rig.events(Kind.LPA_RESULT) if e.field("outcome") == "retry"]
    assert [e.field("attempt") for e in retries] == [2, 3]


async def test_interrupted_installs_from_the_cloud_are_bounded(rig: Rig) -> None:
    from bipsim.ap.lpa.lpa import CLOUD_INSTALL_ATTEMPTS

    rig.card.fail_installs = 1
    installs = drop_cloud_installs(rig, drops=99)
    outcome = await rig.lpa().run(rig.modem)
    assert not outcome.ok and outcome.state is LpaState.STOPPED
    assert f"{CLOUD_INSTALL_ATTEMPTS} installs from the cloud" in outcome.reason
    assert installs[0] == 1 + CLOUD_INSTALL_ATTEMPTS
    assert rig.cloud.calls.count("fetch") == CLOUD_INSTALL_ATTEMPTS
    assert LpaMachine.load(rig.state).record.interrupted  # the last one too was cut off, not refused


def test_imsi_from_ef_imsi() -> None:
    from bipsim.ap.lpa.lpa import imsi_from_ef

    # TS 31.102 4.2.2: 15 digits, parity nibble 9 (odd) before the first digit
    assert imsi_from_ef(bytes.fromhex("080910101032547698")) == "001010123456789"
    assert ef_imsi("001010123456789") == bytes.fromhex("080910101032547698")
    assert imsi_from_ef(ef_imsi("00101012345678")) == "00101012345678"  # an even count: F filler
    for bad in ("", "00", "09", "0809101010325476", "08091010103254769A"):
        assert imsi_from_ef(bytes.fromhex(bad)) == ""


async def test_an_unchanged_imsi_after_enable_is_taken_at_once(rig: Rig) -> None:
    """The enabled profile has the IMSI of the one before: the card's EF_IMSI (AT+CRSM) says what to expect, so the
    first AT+CIMI that answers it ends the wait (no 20 reads)."""
    rig.modem.new_imsi = OLD_IMSI
    rig.modem.crsm = True
    outcome = await rig.lpa().run(rig.modem)
    assert outcome.ok and outcome.imsi == OLD_IMSI
    assert rig.modem.lines.count("AT+CIMI") == 2  # before EnableProfile, and the one that answered
    assert any(line.startswith("AT+CRSM=176,28423,0,0,9") for line in rig.modem.lines)


async def test_a_resumed_run_that_enables_nothing_reads_the_imsi_once(rig: Rig) -> None:
    """Without +CRSM and with the profile enabled by an earlier run, nothing switches now: one read is the IMSI."""
    assert (await rig.lpa().run(rig.modem)).ok
    assert LpaMachine.load(rig.state).record.enabled
    rig.modem.lines.clear()
    outcome = await rig.lpa().run(rig.modem)  # the end of the flow again (a run after the power went)
    assert outcome.ok and outcome.imsi == NEW_IMSI
    assert rig.modem.lines.count("AT+CIMI") == 2


@pytest.mark.parametrize(
    ("field", "forged"),
    [
        ("EID", {"eid": "89049032123451234512345678901243"}),
        ("module", {"module": "OTA"}),
        ("PPR", {"ppr": 3}),
    ],
)
async def test_the_clouds_backup_of_another_eid_module_or_ppr_is_refused(
    rig: Rig, field: str, forged: dict[str, Any]
) -> None:
    """Records that agree among themselves but are another terminal's backup (EID), another management file's
    (module) or carry another PPR than the profile's metadata: the parse (000:404) refuses them, the flow stops
    with the reason, and nothing of them goes to the eUICC."""
    from bipsim.ap.lpa.records import encode_records

    rig.card.fail_installs = 1
    upload = rig.cloud.upload

    async def swapped(records: list[str]) -> None:
        await upload(records)
        key = next(iter(rig.cloud.store))
        first = decode_record(records[0])
        facts: dict[str, Any] = {"eid": first.eid, "ppr": first.ppr, "module": first.module, **forged}
        rig.cloud.store[key] = encode_records(package=join_records(records), **facts)

    rig.cloud.upload = swapped  # type: ignore[method-assign]
    outcome = await rig.lpa().run(rig.modem)
    assert outcome.state is LpaState.STOPPED and field in outcome.reason, outcome.reason
    assert rig.cloud.calls.count("fetch") == 1 and rig.card.requests.count("BF36") == 1
    parse = [e for e in rig.events(Kind.LPA_RECORDS) if e.field("part") == "parse"]
    assert len(parse) == 1 and parse[0].error and parse[0].field("field") == field


async def test_no_install_without_a_backup_and_the_next_run_uploads(rig: Rig) -> None:
    upload = rig.cloud.upload

    async def refused(records: list[str]) -> None:
        raise FakeCloudError(413, "over the limit")

    rig.cloud.upload = refused  # type: ignore[method-assign]
    first = await rig.lpa().run(rig.modem)
    assert not first.ok and LpaMachine.load(rig.state).state is LpaState.DOWNLOADED
    assert "BF36" not in rig.card.requests  # nothing went to the eUICC without its backup
    assert rig.events(Kind.LPA_RESULT)[-1].field("outcome") == "pending"
    rig.cloud.upload = upload  # type: ignore[method-assign]
    second = await rig.lpa().run(rig.modem)
    assert second.ok and rig.smdp.calls.count("getBoundProfilePackage") == 1


async def test_records_fit_the_limit_the_clouds_session_check_gives(rig: Rig) -> None:
    rig.smdp.package = make_bpp(segments86=4, size86=300)

    async def logged_in() -> str | None:
        rig.cloud.limit = 512  # type: ignore[attr-defined]
        return "alice" if rig.cloud.session else None

    rig.cloud.logged_in = logged_in  # type: ignore[attr-defined]
    assert (await rig.lpa(limit=1024).run(rig.modem)).ok
    encapsulate = [e for e in rig.events(Kind.LPA_RECORDS) if e.field("part") == "encapsulate"][0]
    assert encapsulate.field("count") == -(-len(rig.smdp.package) // 512)


async def test_es9_tls_trusts_the_ci_only(tmp_path: Path) -> None:
    """The SM-DP+'s TLS certificate (DPauth) must chain to the CI the LPA trusts: another PKI's CI refuses the
    handshake (Es9Unreachable, traced), the right one gets the SM-DP+'s own answer."""
    from bipsim.ap.lpa.es9_client import Es9Unreachable
    from bipsim.ota.smdp import SmdpServer, SmdpService, builtin_profiles, server_ssl_context
    from bipsim.uicc.euicc.pki import client_ssl_context, ensure_pki

    ours, other = ensure_pki(tmp_path / "ours"), ensure_pki(tmp_path / "other")
    async with trio.open_nursery() as nursery:
        server = SmdpServer(
            SmdpService(ours, builtin_profiles(), address="127.0.0.1:1"), ssl_context=server_ssl_context(ours)
        )
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        tracer = Tracer(keep=True)
        stranger = Es9Client(f"127.0.0.1:{port}", context=client_ssl_context(other), tracer=tracer)
        with pytest.raises(Es9Unreachable):
            await stranger.initiate_authentication(
                euicc_challenge=b"\x00" * 16, euicc_info1=b"\xbf\x20\x00", smdp_address="x"
            )
        assert tracer.events[-1].kind == Kind.LPA_ES9 and tracer.events[-1].error
        trusted = Es9Client(f"127.0.0.1:{port}", context=client_ssl_context(ours))
        with pytest.raises(
            es9_json.Es9Error
        ) as refused:  # over TLS: the SM-DP+ itself refuses the bad EUICCInfo1
            await trusted.initiate_authentication(
                euicc_challenge=b"\x00" * 16, euicc_info1=b"\xbf\x20\x00", smdp_address="x"
            )
        assert refused.value.status == "Failed"
        nursery.cancel_scope.cancel()


async def test_a_card_still_starting_is_asked_again(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    import bipsim.ap.lpa.es10_client as es10_module

    monkeypatch.setattr(es10_module, "SIM_BUSY_RETRY", 0)
    busy = [2]
    command = rig.modem.command

    async def starting(line: str, *, timeout: float | None = None, step: str | None = None) -> AtResponse:
        if line.startswith("AT+CCHO") and busy[0]:
            busy[0] -= 1
            return AtResponse(line, (), "+CME ERROR: 14")
        return await command(line, timeout=timeout, step=step)

    rig.modem.command = starting  # type: ignore[method-assign]
    assert (await rig.lpa().run(rig.modem)).ok and busy == [0]


async def test_no_euicc_leaves_the_request_for_the_next_session(rig: Rig) -> None:
    """A card without an ISD-R (+CCHO refused): nothing was asked of the SM-DP+, the flow waits in REQUESTING."""
    command = rig.modem.command

    async def no_isd_r(line: str, *, timeout: float | None = None, step: str | None = None) -> AtResponse:
        if line.startswith("AT+CCHO"):
            return AtResponse(line, (), "+CME ERROR: 22")
        return await command(line, timeout=timeout, step=step)

    rig.modem.command = no_isd_r  # type: ignore[method-assign]
    outcome = await rig.lpa().run(rig.modem)
    assert not outcome.ok and outcome.state is LpaState.REQUESTING and rig.smdp.calls == []
    rig.modem.command = command  # type: ignore[method-assign]
    assert (await rig.lpa().run(rig.modem)).ok


# --- the state file belongs to one activation code and one eUICC ----------------------------------------------------


def test_a_state_file_of_another_activation_code_is_refused(rig: Rig) -> None:
    from bipsim.ap.lpa.state import open_state

    machine = LpaMachine(rig.state)
    machine.note(activation_code="LPA:1$127.0.0.1:8443$OTHER", eid=EID)
    machine.fire(LpaEvent.LOGGED_IN)
    with pytest.raises(StateFileError) as info:
        open_state(rig.state, "LPA:1$127.0.0.1:8443$OP1")
    assert "OTHER" in str(info.value) and "OP1" in str(info.value) and "its own state file" in str(info.value)
    with pytest.raises(StateFileError):
        rig.lpa()  # the LPA itself refuses the machine of another code
    with pytest.raises(StateFileError):  # not even when asked: the flow is not this code's
        open_state(rig.state, "LPA:1$127.0.0.1:8443$OP1", new_flow=True)
    assert LpaMachine.load(rig.state).state is LpaState.REQUESTING  # the other flow is left as it was


async def test_a_finished_flow_starts_again_only_when_asked(rig: Rig) -> None:
    from bipsim.ap.lpa.state import open_state

    code = "LPA:1$127.0.0.1:8443$OP1"
    stopped = await rig.lpa(ui="close").run(rig.modem)
    assert stopped.state is LpaState.STOPPED
    with pytest.raises(StateFileError) as info:
        open_state(rig.state, code)
    assert "has ended" in str(info.value) and "--lpa-new-flow" in str(info.value)
    machine = open_state(rig.state, code, new_flow=True)
    assert machine.state is LpaState.LOGIN_CHECK and machine.record.activation_code == code
    assert any("a new flow" in line for line in machine.record.history)  # the old flow's lines are kept
    assert LpaMachine.load(rig.state).state is LpaState.LOGIN_CHECK  # saved
    assert (await rig.lpa().run(rig.modem)).ok
    with pytest.raises(StateFileError, match="installed"):
        open_state(rig.state, code)


def test_the_default_state_file_is_per_matching_id() -> None:
    from bipsim.ap.lpa.lpa import LpaOptions

    one = LpaOptions("LPA:1$127.0.0.1:8443$OP1", "http://a:b@h:1")
    two = LpaOptions("LPA:1$127.0.0.1:8443$OP2", "http://a:b@h:1")
    assert one.state_path() == Path("bipsim-lpa-OP1.json") and two.state_path() == Path("bipsim-lpa-OP2.json")
    assert LpaOptions(one.activation_code, "x", state=Path("s.json")).state_path() == Path("s.json")


async def test_a_resumed_flow_goes_on_only_with_the_eid_it_downloaded_for(rig: Rig) -> None:
    rig.modem.lost_at = 12  # the line goes in the middle of the segments
    with pytest.raises(trio.BrokenResourceError):
        await rig.lpa().run(rig.modem)
    rig.card._bpp_left = 0  # the card's power cycle drops the half-loaded package
    machine = LpaMachine.load(rig.state)
    machine.note(eid="89049032123451234512345678901243")  # as if the flow had downloaded for another eUICC
    outcome = await rig.lpa().run(rig.modem)
    assert not outcome.ok and "89049032123451234512345678901243" in outcome.reason
    assert LpaMachine.load(rig.state).state is LpaState.INSTALLING  # left for that eUICC
    assert "fetch" not in rig.cloud.calls and rig.card.requests[-1] == "BF3E"


async def test_a_flow_resumed_before_its_upload_checks_the_eid_too(rig: Rig) -> None:
    """DOWNLOADED: the package is bound to the eUICC that asked for it; uploading and installing it with another
    eUICC in the terminal would lose it (the SM-DP+ binds it once), so the resumed run stops first."""

    async def refused(records: list[str]) -> None:
        raise FakeCloudError(413, "over the limit")

    upload = rig.cloud.upload
    rig.cloud.upload = refused  # type: ignore[method-assign]
    assert not (await rig.lpa().run(rig.modem)).ok
    rig.cloud.upload = upload  # type: ignore[method-assign]
    machine = LpaMachine.load(rig.state)
    assert machine.state is LpaState.DOWNLOADED
    machine.note(eid="89049032123451234512345678901243")  # as if the flow had downloaded for another eUICC
    outcome = await rig.lpa().run(rig.modem)
    assert not outcome.ok and "89049032123451234512345678901243" in outcome.reason
    assert LpaMachine.load(rig.state).state is LpaState.DOWNLOADED  # left for that eUICC
    assert "upload" not in rig.cloud.calls and "BF36" not in rig.card.requests


def test_the_cli_refuses_a_state_file_of_another_code_or_a_finished_flow(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bipsim.cli import cli
    from bipsim.errors import CliError

    state = tmp_path / "lpa.json"
    machine = LpaMachine(state)
    machine.note(activation_code="LPA:1$127.0.0.1:1$OTHER")
    base = ["ap", "--port", "/nonexistent/line", "--lpa-cloud", "http://a:b@h:1", "--lpa-state", str(state)]
    result = CliRunner().invoke(cli, [*base, "--lpa", "LPA:1$127.0.0.1:1$X"])
    assert isinstance(result.exception, CliError) and str(result.exception).startswith("--lpa-state")
    assert "OTHER" in str(result.exception)
    machine = LpaMachine(state)
    machine.note(activation_code="LPA:1$127.0.0.1:1$X")
    machine.fire(LpaEvent.LOGIN_REFUSED, reason="closed")
    result = CliRunner().invoke(cli, [*base, "--lpa", "LPA:1$127.0.0.1:1$X"])
    assert isinstance(result.exception, CliError) and "--lpa-new-flow" in str(result.exception)
    asked = [*base, "--lpa", "LPA:1$127.0.0.1:1$X", "--lpa-new-flow", "--lpa-pki", str(tmp_path / "pki")]
    result = CliRunner().invoke(cli, asked)  # gets past the state (the line that is not there ends it)
    assert "--lpa-state" not in str(result.exception)
    assert LpaMachine.load(state).state is LpaState.LOGIN_CHECK


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lpa", "LPA:1$127.0.0.1:8443$OP1"], "--lpa-cloud"),
        (["--lpa", "nope", "--lpa-cloud", "http://a:b@127.0.0.1:1"], "--lpa:"),
        (
            ["--lpa", "LPA:1$127.0.0.1:8443$OP1", "--lpa-cloud", "http://a:b@h:1", "--lpa-ui", "maybe"],
            "--lpa-ui",
        ),
        (["--lpa", "LPA:1$127.0.0.1:8443$OP1", "--lpa-cloud", "http://127.0.0.1:1"], "USER:PASS@"),
    ],
)
def test_bad_lpa_options_are_usage_errors(args: list[str], message: str) -> None:
    from click.testing import CliRunner

    from bipsim.cli import cli
    from bipsim.errors import CliError

    result = CliRunner().invoke(cli, ["ap", "--port", "/nonexistent/line", *args])
    assert isinstance(result.exception, CliError) and result.exception.exit_code == 2
    assert message in str(result.exception)


def test_ap_help_explains_the_lpa_options() -> None:
    from click.testing import CliRunner

    from bipsim.cli import cli

    text = CliRunner().invoke(cli, ["ap", "--help"]).output
    for option in (
        "--lpa ",
        "--lpa-cloud",
        "--lpa-ui",
        "--lpa-state",
        "--lpa-pki",
        "--lpa-limit",
        "--lpa-new-flow",
        "<matchingId>",
        "activation",
    ):
        assert option in text


def test_a_damaged_state_file_or_pki_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bipsim.cli import cli
    from bipsim.errors import CliError

    bad_state = tmp_path / "lpa.json"
    bad_state.write_text("{not json")
    bad_pki = tmp_path / "pki"
    bad_pki.mkdir()
    (bad_pki / "ci.pem").write_text("junk")
    base = [
        "ap",
        "--port",
        "/nonexistent/line",
        "--lpa",
        "LPA:1$127.0.0.1:1$X",
        "--lpa-cloud",
        "http://a:b@h:1",
    ]
    for extra, option in (
        (["--lpa-state", str(bad_state)], "--lpa-state"),
        (["--lpa-state", str(tmp_path / "new.json"), "--lpa-pki", str(bad_pki)], "--lpa-pki"),
    ):
        result = CliRunner().invoke(cli, [*base, *extra])
        assert isinstance(result.exception, CliError) and str(result.exception).startswith(option), (
            result.exception
        )
