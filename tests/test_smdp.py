"""The SM-DP+ (ota/smdp.py) and the ES9+ JSON binding (ota/es9_json.py) of SGP.22 6.5: codec, activation codes,
the ES9+ functions over an in-memory stream, single use, bad input and the persisted state."""

from __future__ import annotations

import base64
import json

import pytest

from bipsim.ota import es9_json
from bipsim.ota.es9_json import (
    ActivationCode,
    ActivationCodeError,
    Es9Error,
    Es9FormatError,
    decode_request,
    decode_response,
    encode_failure,
    encode_request,
    encode_response,
    parse_activation_code,
)


def test_request_round_trip_carries_header_and_base64() -> None:
    body = encode_request(
        "initiateAuthentication",
        {"euiccChallenge": b"\x01" * 16, "smdpAddress": "127.0.0.1:8443"},
        requester="lpa-x",
        call_id="c1",
    )
    value = json.loads(body)
    assert value["header"] == {"functionRequesterIdentifier": "lpa-x", "functionCallIdentifier": "c1"}
    assert base64.b64decode(value["euiccChallenge"]) == b"\x01" * 16
    decoded = decode_request(body)
    assert es9_json.b64_field(decoded, "euiccChallenge") == b"\x01" * 16
    assert es9_json.text_field(decoded, "smdpAddress") == "127.0.0.1:8443"
    with pytest.raises(ValueError):
        encode_request("downloadEverything", {})


def test_response_success_and_failure() -> None:
    ok = decode_response(encode_response({"transactionId": "0A0B", "serverSigned1": b"\x30\x00"}))
    assert ok["header"]["functionExecutionStatus"]["status"] == "Executed-Success"
    assert es9_json.b64(ok["serverSigned1"]) == b"\x30\x00"
    with pytest.raises(Es9Error) as caught:
        decode_response(encode_failure(Es9Error("8.2.6", "3.8", "Refused")))
    assert (caught.value.subject_code, caught.value.reason_code, caught.value.message) == (
        "8.2.6",
        "3.8",
        "Refused",
    )
    assert decode_response(b"") == {}  # handleNotification's 204


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"header": {}}',
        b'{"header": {"functionExecutionStatus": {"status": "Great"}}}',
        b"\xff\xfe",
    ],
)
def test_garbage_answer_is_a_format_error(body: bytes) -> None:
    with pytest.raises(Es9FormatError):
        decode_response(body)


def test_field_errors_are_sgp22_format_codes() -> None:
    body = decode_request(b'{"transactionId": "zz", "euiccInfo1": "***", "n": 5}')
    with pytest.raises(Es9Error) as missing:
        es9_json.b64_field(body, "euiccChallenge")
    assert (missing.value.subject_code, missing.value.reason_code) == ("1.6", "2.2")
    with pytest.raises(Es9Error) as invalid:
        es9_json.b64_field(body, "euiccInfo1")
    assert invalid.value.reason_code == "2.1"
    with pytest.raises(Es9Error):
        es9_json.hex_field(body, "transactionId")
    with pytest.raises(Es9Error):
        es9_json.text_field(body, "n")
    with pytest.raises(Es9FormatError):
        decode_request(b'{"header": "me"}')


def test_activation_codes() -> None:
    code = parse_activation_code("LPA:1$127.0.0.1:8443$OP1-0001")
    assert code == ActivationCode("127.0.0.1:8443", "OP1-0001")
    assert str(code) == "LPA:1$127.0.0.1:8443$OP1-0001"
    assert parse_activation_code(
        str(ActivationCode("smdp.example", "X", "", True))
    ).confirmation_code_required
    for bad in ("LPA:2$host$X", "LPA:1$host", "LPA:1$ho st$X", "LPA:1$host$X$oid$7", "hello"):
        with pytest.raises(ActivationCodeError):
            parse_activation_code(bad)
    assert es9_json.function_of("/gsma/rsp2/es9plus/getBoundProfilePackage") == "getBoundProfilePackage"
    assert es9_json.function_of("/gsma/rsp2/es9plus/other") is None


# --- the SM-DP+ core (sans-IO) with a small eUICC of the test's own, built from SGP.22's ASN.1 and crypto ---

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import trio  # noqa: E402
import trio.testing  # noqa: E402

from bipsim.ota.http_connection import HttpRequest  # noqa: E402
from bipsim.ota.smdp import (  # noqa: E402
    ProfileState,
    SmdpError,
    SmdpServer,
    SmdpService,
    load_profiles,
    server_ssl_context,
)
from bipsim.trace.kinds import Kind  # noqa: E402
from bipsim.trace.recorder import Tracer  # noqa: E402
from bipsim.uicc.euicc import crypto  # noqa: E402
from bipsim.uicc.euicc.asn1 import decode, encode  # noqa: E402
from bipsim.uicc.euicc.pki import Pki, cert_der, generate_pki  # noqa: E402

ADDRESS = "127.0.0.1:8443"
VERSION = b"\x02\x02\x00"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return generate_pki(tmp_path_factory.mktemp("pki"))


def post(function: str, fields: dict[str, Any], *, headers: dict[str, str] | None = None) -> HttpRequest:
    base = {"x-admin-protocol": "gsma/rsp/v2.2.0", "content-type": "application/json;charset=UTF-8"}
    return HttpRequest(
        "POST", es9_json.ES9_PATH + function, {**base, **(headers or {})}, encode_request(function, fields)
    )


def answer_json(answer: Any) -> dict[str, Any]:
    assert answer.status == 200, answer.body
    return decode_response(answer.body)


class MiniEuicc:
    """The eUICC's side of SGP.22 3.1.3 that the SM-DP+ checks: euiccInfo1, AuthenticateServer's answer signed
    with the eUICC key, PrepareDownload's one-time key and euiccSignature2, the signed install result."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.challenge = b"\xc1" * 16
        self.otsk = crypto.generate_otk()

    def info1(self) -> bytes:
        ids = [self.pki.ci_pkid]
        return encode(
            "EUICCInfo1",
            {"svn": VERSION, "euiccCiPKIdListForVerification": ids, "euiccCiPKIdListForSigning": ids},
        )

    def initiate(self, address: str = ADDRESS) -> HttpRequest:
        return post(
            "initiateAuthentication",
            {"euiccChallenge": self.challenge, "euiccInfo1": self.info1(), "smdpAddress": address},
        )

    def authenticate(
        self, init: dict[str, Any], matching_id: str, *, break_signature: bool = False
    ) -> HttpRequest:
        signed1 = decode("ServerSigned1", es9_json.b64(init["serverSigned1"]))
        info2 = {
            "profileVersion": VERSION,
            "svn": VERSION,
            "euiccFirmwareVer": VERSION,
            "extCardResource": b"",
            "uiccCapability": (b"\x00", 8),
            "rspCapability": (b"\x00", 4),
            "euiccCiPKIdListForVerification": [self.pki.ci_pkid],
            "euiccCiPKIdListForSigning": [self.pki.ci_pkid],
            "ppVersion": VERSION,
            "sasAcreditationNumber": "bipsim",
        }
        euicc_signed1 = {
            "transactionId": signed1["transactionId"],
            "serverAddress": signed1["serverAddress"],
            "serverChallenge": signed1["serverChallenge"],
            "euiccInfo2": info2,
            "ctxParams1": (
                "ctxParamsForCommonAuthentication",
                {
                    "matchingId": matching_id,
                    "deviceInfo": {"tac": b"\x35\x29\x06\x11", "deviceCapabilities": {}},
                },
            ),
        }
        signature = crypto.sign_plain(self.pki.euicc_key, encode("EuiccSigned1", euicc_signed1))
        if break_signature:
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        self.signature1 = signature
        response = encode(
            "AuthenticateServerResponse",
            (
                "authenticateResponseOk",
                {
                    "euiccSigned1": euicc_signed1,
                    "euiccSignature1": signature,
                    "euiccCertificate": cert_der(self.pki.euicc_cert),
                    "eumCertificate": cert_der(self.pki.eum_cert),
                },
            ),
        )
        return post(
            "authenticateClient",
            {"transactionId": init["transactionId"], "authenticateServerResponse": response},
        )

    def prepare(self, auth: dict[str, Any]) -> HttpRequest:
        transaction_id = bytes.fromhex(auth["transactionId"])
        smdp_signature2 = es9_json.b64(auth["smdpSignature2"])[3:]  # the 5F37 40 data object's value
        signed2 = {"transactionId": transaction_id, "euiccOtpk": crypto.point_bytes(self.otsk.public_key())}
        signature2 = crypto.sign_plain(
            self.pki.euicc_key, crypto.signed_data_euicc2(encode("EUICCSigned2", signed2), smdp_signature2)
        )
        response = encode(
            "PrepareDownloadResponse",
            ("downloadResponseOk", {"euiccSigned2": signed2, "euiccSignature2": signature2}),
        )
        return post(
            "getBoundProfilePackage",
            {"transactionId": auth["transactionId"], "prepareDownloadResponse": response},
        )

    def install_result(self, transaction_id: str, *, ok: bool = True, forge: bool = False) -> HttpRequest:
        from bipsim.uicc.euicc.upp import iccid_bytes

        result: tuple[str, dict[str, Any]] = (
            (
                "successResult",
                {"aid": bytes.fromhex("A0000005591010FFFFFFFF8900001000"), "simaResponse": b"\x30\x00"},
            )
            if ok
            else ("errorResult", {"bppCommandId": 5, "errorReason": 11})
        )
        data = {
            "transactionId": bytes.fromhex(transaction_id),
            "notificationMetadata": {
                "seqNumber": 1,
                "profileManagementOperation": (b"\x80", 1),
                "notificationAddress": ADDRESS,
                "iccid": iccid_bytes("8944476500001234567"),
            },
            "smdpOid": self.pki.smdp_oid,
            "finalResult": result,
        }
        key = crypto.generate_otk() if forge else self.pki.euicc_key
        signature = crypto.sign_plain(
            key, crypto.signed_data_pir(encode("ProfileInstallationResultData", data))
        )
        notification = encode(
            "PendingNotification",
            ("profileInstallationResult", {"profileInstallationResultData": data, "euiccSignPIR": signature}),
        )
        return post("handleNotification", {"pendingNotification": notification})


def service(pki: Pki, state: Path | None = None, **kwargs: Any) -> SmdpService:
    return SmdpService(pki, load_profiles(None), address=ADDRESS, state_path=state, **kwargs)


def download(smdp: SmdpService, euicc: MiniEuicc, matching_id: str = "OP1") -> tuple[dict[str, Any], Any]:
    init = answer_json(smdp.handle(euicc.initiate()))
    auth = answer_json(smdp.handle(euicc.authenticate(init, matching_id)))
    return auth, smdp.handle(euicc.prepare(auth))


def test_download_binds_the_profile_to_the_euicc_and_is_served_once(pki: Pki, tmp_path: Path) -> None:
    state = tmp_path / "smdp.json"
    smdp, euicc = service(pki, state), MiniEuicc(pki)
    init = answer_json(smdp.handle(euicc.initiate()))
    signed1_der = es9_json.b64(init["serverSigned1"])
    signature1 = es9_json.b64(init["serverSignature1"])
    assert signature1[:3] == b"\x5f\x37\x40"  # SGP.22: the 5F37 data object, as AuthenticateServer takes it
    crypto.verify_plain(pki.dpauth_cert.public_key(), signature1[3:], signed1_der)  # type: ignore[arg-type]
    assert decode("ServerSigned1", signed1_der)["euiccChallenge"] == euicc.challenge
    assert es9_json.b64(init["euiccCiPKIdToBeUsed"]) == b"\x04\x14" + pki.ci_pkid
    auth = answer_json(smdp.handle(euicc.authenticate(init, "OP1")))
    metadata = decode("StoreMetadataRequest", es9_json.b64(auth["profileMetadata"]))
    assert metadata["serviceProviderName"] == "Operator One" and "profilePolicyRules" not in metadata
    smdp_signed2 = es9_json.b64(auth["smdpSigned2"])
    crypto.verify_plain(
        pki.dppb_cert.public_key(),  # type: ignore[arg-type]
        es9_json.b64(auth["smdpSignature2"])[3:],
        crypto.signed_data_smdp2(smdp_signed2, euicc.signature1),
    )
    bpp_answer = answer_json(smdp.handle(euicc.prepare(auth)))
    bpp = decode("BoundProfilePackage", es9_json.b64(bpp_answer["boundProfilePackage"]))
    isc = encode("InitialiseSecureChannelRequest", bpp["initialiseSecureChannelRequest"])
    # bound to this eUICC's one-time key: smdpSign covers otPK.EUICC.ECKA (SGP.22 5.5.1)
    crypto.verify_plain(
        pki.dppb_cert.public_key(),  # type: ignore[arg-type]
        bpp["initialiseSecureChannelRequest"]["smdpSign"],
        crypto.signed_data_isc(
            crypto.isc_signed_part_from_der(isc), crypto.point_bytes(euicc.otsk.public_key())
        ),
    )
    assert smdp.profiles["OP1"].state is ProfileState.DOWNLOADED
    assert json.loads(state.read_text())["profiles"]["OP1"]["state"] == "downloaded"
    # the same session asks again, and a new session of the same eUICC: both refused, 8.2 / 3.7 (SGP.22 5.6.2)
    with pytest.raises(Es9Error) as same:
        decode_response(smdp.handle(euicc.prepare(auth)).body)
    assert (same.value.subject_code, same.value.reason_code) == ("8.2", "3.7")
    _, second = download(smdp, MiniEuicc(pki))
    with pytest.raises(Es9Error) as refused:
        decode_response(second.body)
    assert (refused.value.subject_code, refused.value.reason_code) == ("8.2", "3.7")
    # and after a restart of the server, from its state file
    _, third = download(service(pki, state), MiniEuicc(pki))
    with pytest.raises(Es9Error) as restarted:
        decode_response(third.body)
    assert restarted.value.reason_code == "3.7"
    # the other built-in profile is still served
    _, other = download(smdp, MiniEuicc(pki), "OP2")
    assert "boundProfilePackage" in answer_json(other)


def failure(answer: Any) -> tuple[str, str]:
    assert answer.status == 200 and answer.error, answer.body
    with pytest.raises(Es9Error) as caught:
        decode_response(answer.body)
    return caught.value.subject_code, caught.value.reason_code


def test_install_notification_moves_the_profile_only_when_signed(pki: Pki, tmp_path: Path) -> None:
    state = tmp_path / "smdp.json"
    smdp, euicc = service(pki, state), MiniEuicc(pki)
    auth, bpp = download(smdp, euicc)
    answer_json(bpp)
    forged = smdp.handle(euicc.install_result(auth["transactionId"], forge=True))
    assert forged.status == 204 and smdp.profiles["OP1"].state is ProfileState.DOWNLOADED
    assert [n.fields["verified"] for n in forged.notes] == [False]
    taken = smdp.handle(euicc.install_result(auth["transactionId"], ok=False))
    assert taken.status == 204 and taken.body == b""
    assert smdp.profiles["OP1"].state is ProfileState.ERROR
    kinds = [(n.kind, n.fields.get("result")) for n in taken.notes]
    assert (Kind.ES9_NOTIFICATION, "installFailedDueToInterruption") in kinds
    assert json.loads(state.read_text())["profiles"]["OP1"]["state"] == "error"
    # the session ended with the result; a failed install does not make the profile downloadable again
    assert failure(smdp.handle(euicc.prepare(auth))) == ("8.10.1", "3.9")
    _, again = download(smdp, MiniEuicc(pki))
    assert failure(again) == ("8.2", "3.7")


def test_a_success_notification_after_a_restart_finds_the_profile(pki: Pki, tmp_path: Path) -> None:
    state = tmp_path / "smdp.json"
    smdp, euicc = service(pki, state), MiniEuicc(pki)
    auth, bpp = download(smdp, euicc)
    answer_json(bpp)
    restarted = service(pki, state)  # its sessions are gone; the state file names the download and its eUICC
    forged = restarted.handle(euicc.install_result(auth["transactionId"], forge=True))
    assert forged.status == 204 and restarted.profiles["OP1"].state is ProfileState.DOWNLOADED
    answer = restarted.handle(euicc.install_result(auth["transactionId"]))
    assert answer.status == 204 and restarted.profiles["OP1"].state is ProfileState.INSTALLED
    assert answer.notes[0].fields["matching_id"] == "OP1" and answer.notes[0].fields["verified"] is True
    assert json.loads(state.read_text())["profiles"]["OP1"]["state"] == "installed"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown matchingId", ("8.2.6", "3.8")),
        ("bad euiccSignature1", ("8.1", "6.1")),
        ("unknown transactionId", ("8.10.1", "3.9")),
        ("authenticate twice", ("8.10.1", "3.9")),
    ],
)
def test_authenticate_client_refusals(pki: Pki, case: str, expected: tuple[str, str]) -> None:
    smdp, euicc = service(pki), MiniEuicc(pki)
    init = answer_json(smdp.handle(euicc.initiate()))
    if case == "unknown matchingId":
        request = euicc.authenticate(init, "NOPE-1")
    elif case == "bad euiccSignature1":
        request = euicc.authenticate(init, "OP1", break_signature=True)
    elif case == "unknown transactionId":
        request = euicc.authenticate({**init, "transactionId": "00" * 16}, "OP1")
    else:
        answer_json(smdp.handle(euicc.authenticate(init, "OP1")))
        request = euicc.authenticate(init, "OP1")
    assert failure(smdp.handle(request)) == expected
    assert smdp.profiles["OP1"].state is ProfileState.RELEASED


def test_initiate_authentication_refusals(pki: Pki, tmp_path: Path) -> None:
    smdp, euicc = service(pki), MiniEuicc(pki)
    assert failure(smdp.handle(euicc.initiate("smdp.example.com"))) == ("8.8.1", "3.8")
    stranger = MiniEuicc(generate_pki(tmp_path / "other"))  # an eUICC of another CI
    assert failure(smdp.handle(stranger.initiate())) == ("8.8.2", "3.1")
    short = post(
        "initiateAuthentication",
        {"euiccChallenge": b"1", "euiccInfo1": euicc.info1(), "smdpAddress": ADDRESS},
    )
    assert failure(smdp.handle(short)) == ("1.6", "2.1")
    garbage = post(
        "initiateAuthentication",
        {"euiccChallenge": b"1" * 16, "euiccInfo1": b"\xbf\x20\x05", "smdpAddress": ADDRESS},
    )
    assert failure(smdp.handle(garbage)) == ("1.6", "2.1")
    missing = post("initiateAuthentication", {"euiccChallenge": b"1" * 16})
    assert failure(smdp.handle(missing)) == ("1.6", "2.2")
    assert not smdp.sessions


def test_an_euicc_of_another_ci_cannot_authenticate(pki: Pki, tmp_path: Path) -> None:
    smdp, euicc = service(pki), MiniEuicc(pki)
    init = answer_json(smdp.handle(euicc.initiate()))
    other = generate_pki(tmp_path / "other")
    euicc.pki = other  # the challenge was ours, the certificates and signature are another CI's
    assert failure(smdp.handle(euicc.authenticate(init, "OP1"))) == ("8.11.1", "3.9")


def test_requests_that_name_no_function_are_refused(pki: Pki) -> None:
    smdp = service(pki)
    good = MiniEuicc(pki).initiate()
    cases = [
        (HttpRequest("POST", "/gsma/rsp2/es9plus/steal", good.headers, good.body), 404),
        (HttpRequest("GET", good.target, good.headers, b""), 405),
        (HttpRequest("POST", good.target, {"content-type": "application/json"}, good.body), 400),
        (HttpRequest("POST", good.target, {**good.headers, "content-type": "text/plain"}, good.body), 415),
        (HttpRequest("POST", good.target, good.headers, b"{not json"), 400),
        (HttpRequest("POST", good.target, good.headers, b'{"header": 7}'), 400),
    ]
    for request, status in cases:
        answer = smdp.handle(request)
        assert (answer.status, answer.refused) == (status, True), request
    assert not smdp.sessions


def test_profiles_folder(tmp_path: Path) -> None:
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "acme.toml").write_text(
        "# padding comment kept in the package\n"
        'iccid = "8944476500009999991"\nimsi = "001010000009999"\n\n'
        '[smdp]\nmatching_id = "ACME-1"\nppr_ids = ["ppr1", "ppr2"]\nservice_provider_name = "Acme"\n'
    )
    profiles = load_profiles(folder, builtin=False)
    acme = profiles["ACME-1"]
    assert acme.upp.startswith(b"# padding comment") and b"[smdp]" not in acme.upp
    assert acme.ppr() == 3
    metadata = decode("StoreMetadataRequest", encode("StoreMetadataRequest", acme.metadata()))
    assert metadata["profilePolicyRules"] == (b"\x60", 3)
    from bipsim.ap.lpa.records import ppr_from_ids

    assert ppr_from_ids(metadata["profilePolicyRules"]) == 3
    assert str(acme.activation_code("127.0.0.1:9")) == "LPA:1$127.0.0.1:9$ACME-1"
    assert set(load_profiles(folder)) == {"OP1", "OP2", "ACME-1"}
    for bad in (
        'iccid = "8944476500009999991"\nimsi = "001010000009999"\n',  # no [smdp]
        'iccid = "8944476500009999991"\nimsi = "001010000009999"\n[smdp]\nmatching_id = "X"\ncolour = 1\n',
        'iccid = "89"\nimsi = "001010000009999"\n[smdp]\nmatching_id = "X"\n',
        'iccid = "8944476500009999991"\nimsi = "001010000009999"\n[smdp]\nmatching_id = "X"\nppr_ids = ["ppr9"]\n',
        'iccid = "8944476500009999991"\nimsi = "001010000009999"\n[smdp]\nmatching_id = "A B"\n',
    ):
        (folder / "acme.toml").write_text(bad)
        with pytest.raises(SmdpError):
            load_profiles(folder)


def test_a_state_file_that_cannot_be_written_refuses_the_download(pki: Pki, tmp_path: Path) -> None:
    gone = tmp_path / "gone" / "smdp.json"
    smdp = service(pki)
    smdp.state_path = gone  # its directory does not exist: the download cannot be recorded
    _, answer = download(smdp, MiniEuicc(pki))
    assert failure(answer) == ("8.8", "4.2")
    assert smdp.profiles["OP1"].state is ProfileState.RELEASED
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SmdpError):
        service(pki, tmp_path / "bad.json")


async def https_exchange(
    stream: trio.abc.Stream, requests: list[tuple[str, bytes, dict[str, str]]]
) -> list[tuple[int, dict[str, str], bytes]]:
    """An HTTP/1.1 client of the test's own (h11, client role) over `stream`: each request, then its answer."""
    import h11

    client = h11.Connection(h11.CLIENT)
    out: list[tuple[int, dict[str, str], bytes]] = []
    for target, body, headers in requests:
        fields = [("Host", "localhost"), ("Content-Length", str(len(body))), *headers.items()]
        await stream.send_all(client.send(h11.Request(method="POST", target=target, headers=fields)) or b"")
        await stream.send_all(
            (client.send(h11.Data(data=body)) or b"") + (client.send(h11.EndOfMessage()) or b"")
        )
        status, got, data = 0, {}, b""
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                got = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        out.append((status, got, data))
        if client.our_state is h11.MUST_CLOSE or client.their_state is h11.MUST_CLOSE:
            break
        client.start_next_cycle()
    return out


async def test_es9_over_tls_with_its_access_log(pki: Pki) -> None:
    from bipsim.uicc.euicc.pki import client_ssl_context

    tracer = Tracer(keep=True)
    server = SmdpServer(service(pki), tracer, ssl_context=server_ssl_context(pki))
    client_raw, server_raw = trio.testing.memory_stream_pair()
    euicc = MiniEuicc(pki)
    good = euicc.initiate()
    headers = dict(es9_json.REQUEST_HEADERS)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, server_raw, "127.0.0.1")
        tls = trio.SSLStream(client_raw, client_ssl_context(pki), server_hostname="localhost")
        answers = await https_exchange(
            tls, [(good.target, good.body, headers), (good.target, b"{not json", headers)]
        )
        await tls.aclose()
    (status, got, body), (bad_status, _, _) = answers
    assert status == 200 and got["x-admin-protocol"].startswith("gsma/rsp/v2.")
    assert got["content-type"].startswith("application/json")
    assert decode_response(body)["transactionId"]
    assert bad_status == 400
    kinds = [e.kind for e in tracer.events]
    assert kinds == [Kind.ES9_REQUEST, Kind.ES9_RESPONSE, Kind.ES9_REQUEST, Kind.ES9_REFUSED]
    request, response = tracer.events[0], tracer.events[1]
    assert request.fields["function"] == "initiateAuthentication" and request.data == good.body
    assert response.fields["status"] == "Executed-Success" and response.data == body
    assert tracer.events[3].error and tracer.events[3].fields["status"] == 400


async def test_a_client_that_does_not_trust_our_ci_gets_no_answer(pki: Pki, tmp_path: Path) -> None:
    from bipsim.uicc.euicc.pki import client_ssl_context

    tracer = Tracer(keep=True)
    server = SmdpServer(service(pki), tracer, ssl_context=server_ssl_context(pki))
    client_raw, server_raw = trio.testing.memory_stream_pair()
    stranger = client_ssl_context(generate_pki(tmp_path / "other"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, server_raw, "127.0.0.1")
        tls = trio.SSLStream(client_raw, stranger, server_hostname="localhost")
        with pytest.raises(trio.BrokenResourceError):
            await tls.do_handshake()
        await trio.aclose_forcefully(tls)
    assert server.requests == 0
    assert [e.kind for e in tracer.events] == [Kind.TLS_ALERT]


def test_the_command_serves_es9_over_https_to_a_stdlib_client(pki: Pki, tmp_path: Path) -> None:
    """`bipsim smdp` as a process: activation codes for the bound port, an HTTPS peer of its own (the standard
    library's http.client trusting only our CI) gets initiateAuthentication answered, the trace and the summary."""
    import http.client
    import os
    import re
    import select
    import signal
    import subprocess
    import sys
    import time

    from bipsim.trace.reader import read_trace
    from bipsim.uicc.euicc.pki import client_ssl_context

    trace = tmp_path / "smdp.jsonl"
    command = [sys.executable, "-m", "bipsim", "smdp", "--listen", "127.0.0.1:0", "--pki", str(pki.directory)]
    command += ["--trace", str(trace)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    printed = b""
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(rb"^listening on 127\.0\.0\.1:(\d+)", printed, re.M)):
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no readiness line within 30 s: {printed!r}"
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"the server exited before listening: {printed!r}"
            printed += chunk
        port = int(found.group(1))
        codes = re.findall(rb"activation code: (LPA:1\S+)", printed)
        assert [parse_activation_code(c.decode()).matching_id for c in codes] == ["OP1", "OP2"]
        address = parse_activation_code(codes[0].decode()).smdp_address
        assert address == f"127.0.0.1:{port}"
        connection = http.client.HTTPSConnection(
            "localhost", port, timeout=10, context=client_ssl_context(pki)
        )
        request = MiniEuicc(pki).initiate(address)
        connection.request("POST", request.target, request.body, dict(es9_json.REQUEST_HEADERS))
        answer = connection.getresponse()
        body = answer.read()
        connection.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=10)
        printed += rest
    assert answer.status == 200 and answer.getheader("X-Admin-Protocol", "").startswith("gsma/rsp/v2.")
    assert decode_response(body)["serverCertificate"]
    assert proc.returncode == 0, printed
    assert b'"requests": 1' in printed
    kinds = [e.kind for e in read_trace([trace])[0] if e.kind.startswith("es9.")]
    assert kinds == ["es9.request", "es9.response"]
    assert (tmp_path / "smdp.jsonl.smdp-state.json").exists() is False  # nothing downloaded, nothing written


def test_listening_everywhere_needs_an_advertised_address(capsys: pytest.CaptureFixture[str]) -> None:
    from bipsim.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["smdp", "--listen", "0.0.0.0:0"])
    assert stopped.value.code == 2
    assert "--advertise" in capsys.readouterr().err


def cancel(pki: Pki, transaction_id: str, *, key: Any = None) -> HttpRequest:
    signed = {"transactionId": bytes.fromhex(transaction_id), "smdpOid": pki.smdp_oid, "reason": 0}
    signature = crypto.sign_plain(key or pki.euicc_key, encode("EuiccCancelSessionSigned", signed))
    response = encode(
        "CancelSessionResponse",
        (
            "cancelSessionResponseOk",
            {"euiccCancelSessionSigned": signed, "euiccCancelSessionSignature": signature},
        ),
    )
    return post("cancelSession", {"transactionId": transaction_id, "cancelSessionResponse": response})


def test_cancel_session_before_authenticate_client_is_refused_and_the_session_goes_on(pki: Pki) -> None:
    """SGP.22 5.6.5 verifies the signature with the eUICC's key, which only authenticateClient brings: before it, a
    cancel (signed or not) proves nothing and must not end the session."""
    smdp, euicc = service(pki), MiniEuicc(pki)
    init = answer_json(smdp.handle(euicc.initiate()))
    for key in (None, crypto.generate_otk()):
        assert failure(smdp.handle(cancel(pki, init["transactionId"], key=key))) == ("8.1", "6.1")
    auth = answer_json(smdp.handle(euicc.authenticate(init, "OP1")))
    assert auth["transactionId"] == init["transactionId"]


def test_cancel_session_ends_it_when_the_euicc_signed_it(pki: Pki) -> None:
    smdp, euicc = service(pki), MiniEuicc(pki)
    init = answer_json(smdp.handle(euicc.initiate()))
    auth = answer_json(smdp.handle(euicc.authenticate(init, "OP1")))
    assert failure(smdp.handle(cancel(pki, auth["transactionId"], key=crypto.generate_otk()))) == (
        "8.1",
        "6.1",
    )
    assert (
        answer_json(smdp.handle(cancel(pki, auth["transactionId"])))["transactionId"] == auth["transactionId"]
    )
    assert failure(smdp.handle(euicc.prepare(auth))) == ("8.10.1", "3.9")
    assert failure(smdp.handle(cancel(pki, auth["transactionId"]))) == ("8.10.1", "3.9")
    assert smdp.profiles["OP1"].state is ProfileState.RELEASED  # cancelled before the package: still served
    _, bpp = download(smdp, MiniEuicc(pki))
    assert "boundProfilePackage" in answer_json(bpp)


def test_other_notifications_are_recorded_with_their_signature_checked(pki: Pki) -> None:
    from bipsim.uicc.euicc.upp import iccid_bytes

    smdp = service(pki)
    metadata = {
        "seqNumber": 7,
        "profileManagementOperation": (b"\x40", 2),  # notificationEnable
        "notificationAddress": ADDRESS,
        "iccid": iccid_bytes("8944476500001234567"),
    }

    def notification(key: Any) -> HttpRequest:
        value = {
            "tbsOtherNotification": metadata,
            "euiccNotificationSignature": crypto.sign_plain(key, encode("NotificationMetadata", metadata)),
            "euiccCertificate": cert_der(pki.euicc_cert),
            "eumCertificate": cert_der(pki.eum_cert),
        }
        return post(
            "handleNotification",
            {"pendingNotification": encode("PendingNotification", ("otherSignedNotification", value))},
        )

    good = smdp.handle(notification(pki.euicc_key))
    assert good.status == 204
    assert good.notes[0].fields == {
        "notification": "enable",
        "iccid": "8944476500001234567",
        "seq_number": 7,
        "result": None,
        "verified": True,
    }
    assert smdp.handle(notification(crypto.generate_otk())).notes[0].fields["verified"] is False
    garbage = post("handleNotification", {"pendingNotification": b"\xbf\x37\x03\x01\x02\x03"})
    assert failure(smdp.handle(garbage)) == ("1.6", "2.1")


def isd_r_download(smdp: SmdpService, isd_r: Any, matching_id: str = "OP2") -> tuple[Any, Any]:
    """One download as the LPA runs it (SGP.22 3.1.3): ES10b requests to the ISD-R built from the ES9+ answers, its
    answers sent on. The answers of authenticateClient and getBoundProfilePackage (the latter None when the former
    failed)."""

    def es10(type_name: str, value: Any) -> bytes:
        return bytes(isd_r.handle(encode(type_name, value)))

    info1 = es10("GetEuiccInfo1Request", {})
    challenge = decode("GetEuiccChallengeResponse", es10("GetEuiccChallengeRequest", {}))["euiccChallenge"]
    init = answer_json(
        smdp.handle(
            post(
                "initiateAuthentication",
                {"euiccChallenge": challenge, "euiccInfo1": info1, "smdpAddress": ADDRESS},
            )
        )
    )
    device = {"tac": b"\x35\x29\x06\x11", "deviceCapabilities": {}}
    response = es10(
        "AuthenticateServerRequest",
        {
            "serverSigned1": decode("ServerSigned1", es9_json.b64(init["serverSigned1"])),
            "serverSignature1": es9_json.b64(init["serverSignature1"])[3:],
            "euiccCiPKIdToBeUsed": es9_json.b64(init["euiccCiPKIdToBeUsed"])[2:],
            "serverCertificate": es9_json.b64(init["serverCertificate"]),
            "ctxParams1": (
                "ctxParamsForCommonAuthentication",
                {"matchingId": matching_id, "deviceInfo": device},
            ),
        },
    )
    auth_answer = smdp.handle(
        post(
            "authenticateClient",
            {"transactionId": init["transactionId"], "authenticateServerResponse": response},
        )
    )
    if auth_answer.error:
        return auth_answer, None
    auth = answer_json(auth_answer)
    prepared = es10(
        "PrepareDownloadRequest",
        {
            "smdpSigned2": decode("SmdpSigned2", es9_json.b64(auth["smdpSigned2"])),
            "smdpSignature2": es9_json.b64(auth["smdpSignature2"])[3:],
            "smdpCertificate": es9_json.b64(auth["smdpCertificate"]),
        },
    )
    bpp = smdp.handle(
        post(
            "getBoundProfilePackage",
            {"transactionId": auth["transactionId"], "prepareDownloadResponse": prepared},
        )
    )
    return auth_answer, bpp


def load_bpp(isd_r: Any, bpp_answer: Any) -> tuple[bytes, Any]:
    """LoadBoundProfilePackage in the segments of SGP.22 2.5.5 (F's LPA's split): the PIR and its finalResult."""
    from bipsim.ap.lpa.es10_client import bpp_segments

    bpp = es9_json.b64(answer_json(bpp_answer)["boundProfilePackage"])
    answers = [bytes(isd_r.handle(segment)) for segment in bpp_segments(bpp)]
    pir = answers[-1]
    assert pir[:2] == b"\xbf\x37" and all(a in (b"", pir) for a in answers)
    return pir, decode("ProfileInstallationResult", pir)["profileInstallationResultData"]["finalResult"]


def test_the_isd_r_downloads_and_installs_from_this_smdp(pki: Pki, tmp_path: Path) -> None:
    """ES9+ answers as the LPA hands them to the ISD-R (uicc/applets/isd_r.py) in ES10b requests, and the ISD-R's
    answers back: the profile installs once, its install result moves it to installed at the SM-DP+, and the second
    download of it is refused at getBoundProfilePackage."""
    from bipsim.uicc.applets.isd_r import IsdR

    smdp = service(pki, tmp_path / "smdp.json")
    isd_r = IsdR(keys=pki)
    _, bpp_answer = isd_r_download(smdp, isd_r)
    pir, result = load_bpp(isd_r, bpp_answer)
    assert result[0] == "successResult", result
    assert "8944476500001234575" in [p.iccid for p in isd_r.profile_store.profiles]
    taken = smdp.handle(post("handleNotification", {"pendingNotification": pir}))
    assert taken.status == 204 and taken.notes[0].fields["verified"] is True
    assert smdp.profiles["OP2"].state is ProfileState.INSTALLED
    _, again = isd_r_download(smdp, isd_r)
    assert failure(again) == ("8.2", "3.7")


def test_flipped_bytes_in_every_client_message_get_an_es9_answer(pki: Pki) -> None:
    """Seeded byte flips in the eUICC's messages (certificates, signatures, DER structure): every one is answered
    200 with an SGP.22 status, or executed when the flip changed nothing that matters; never a fault."""
    import random

    rng = random.Random(23)
    smdp, euicc = service(pki), MiniEuicc(pki)
    failed = 0
    for round_ in range(60):
        init = answer_json(smdp.handle(euicc.initiate()))
        auth_request = euicc.authenticate(init, "OP1")
        body = json.loads(auth_request.body)
        der = bytearray(base64.b64decode(body["authenticateServerResponse"]))
        der[rng.randrange(len(der))] ^= 1 << rng.randrange(8)
        body["authenticateServerResponse"] = base64.b64encode(bytes(der)).decode()
        answer = smdp.handle(
            HttpRequest(
                auth_request.method, auth_request.target, auth_request.headers, json.dumps(body).encode()
            )
        )
        assert answer.status == 200, (round_, answer.body)
        status = json.loads(answer.body)["header"]["functionExecutionStatus"]
        failed += status["status"] == "Failed"
        if status["status"] == "Failed":
            assert status["statusCodeData"]["subjectCode"] in {
                "1.6",
                "8.1",
                "8.1.2",
                "8.1.3",
                "8.11.1",
                "8.10.1",
                "8.2.6",
            }
    assert failed >= 50  # almost every flip lands in something signed or certified
    assert smdp.profiles["OP1"].state is ProfileState.RELEASED


def test_faults_make_the_smdp_lie_as_asked(pki: Pki) -> None:
    from bipsim.ota.smdp import Fault
    from bipsim.uicc.applets.isd_r import IsdR

    garbage = service(pki, faults=frozenset({Fault.GARBAGE}))
    answer = garbage.handle(MiniEuicc(pki).initiate())
    assert answer.status == 200 and answer.fields["fault"] == "garbage"
    with pytest.raises(Es9FormatError):
        decode_response(answer.body)
    refused = garbage.handle(MiniEuicc(pki).initiate("elsewhere.example"))  # a failure is garbage too
    assert refused.status == 200 and refused.error and refused.body == answer.body
    assert refused.fields["subject_code"] == "8.8.1"  # the trace still says what the function answered
    # a bad serverSignature1: the eUICC refuses AuthenticateServer (invalidSignature), the SM-DP+ ends with 8.1/3.8
    liar = service(pki, faults=frozenset({Fault.BAD_SIGNATURE}))
    refused, nothing = isd_r_download(liar, IsdR(keys=pki))
    assert failure(refused) == ("8.1", "3.8") and nothing is None
    message = json.loads(refused.body)["header"]["functionExecutionStatus"]["statusCodeData"]["message"]
    assert "authenticateErrorCode 2" in message  # invalidSignature(2), SGP.22 5.7.13
    # a corrupt package: the eUICC's install fails at the last segment (scp03tSecurityError), nothing installed
    corrupt = service(pki, faults=frozenset({Fault.CORRUPT_BPP}))
    isd_r = IsdR(keys=pki)
    _, bad = isd_r_download(corrupt, isd_r)
    assert bad.fields["fault"] == "corrupt-bpp"
    _, result = load_bpp(isd_r, bad)
    assert result[0] == "errorResult" and result[1]["errorReason"] == 8, result
    assert not isd_r.profile_store.profiles


# --- signatures over the bytes sent, the smdpOid of cancelSession, the CI chosen from the eUICC's lists ---

# '9F7F' 01 00: a context [127] field of a later version, which asn1tools skips under EXTENSIBILITY IMPLIED and so
# drops when it encodes the value again
UNKNOWN_FIELD = bytes.fromhex("9F7F0100")


def widen(der: bytes) -> bytes:
    """The DER of a SEQUENCE with a field of a later version appended: decodable, not what a re-encoding gives."""
    ((tag, value, _raw),) = crypto.split_tlvs(der)
    return crypto.tlv(tag, value + UNKNOWN_FIELD)


def test_euicc_signatures_are_checked_over_the_bytes_the_euicc_sent(pki: Pki) -> None:
    smdp, euicc = service(pki), MiniEuicc(pki)
    init = answer_json(smdp.handle(euicc.initiate()))
    plain = es9_json.b64(json.loads(euicc.authenticate(init, "OP1").body)["authenticateServerResponse"])
    _kind, ok = decode("AuthenticateServerResponse", plain)
    signed1 = widen(encode("EuiccSigned1", ok["euiccSigned1"]))
    assert encode("EuiccSigned1", decode("EuiccSigned1", signed1)) != signed1  # a re-encoding loses the field
    certificates = cert_der(pki.euicc_cert) + cert_der(pki.eum_cert)

    def authenticate(signed_over: bytes) -> Any:
        signature = crypto.sign_plain(pki.euicc_key, signed_over)
        body = signed1 + crypto.signature_do(signature) + certificates
        response = crypto.tlv(
            0xBF38, crypto.tlv(0xA0, body)
        )  # AuthenticateServerResponse, authenticateResponseOk
        fields = {"transactionId": init["transactionId"], "authenticateServerResponse": response}
        return smdp.handle(post("authenticateClient", fields))

    # signed over the canonical re-encoding, sent wider: what the eUICC signed is not what it sent
    assert failure(authenticate(encode("EuiccSigned1", ok["euiccSigned1"]))) == ("8.1", "6.1")
    auth = answer_json(authenticate(signed1))  # signed over its own bytes: verifies
    transaction_id = bytes.fromhex(auth["transactionId"])
    smdp_signature2 = es9_json.b64(auth["smdpSignature2"])[3:]
    signed2 = widen(
        encode(
            "EUICCSigned2",
            {"transactionId": transaction_id, "euiccOtpk": crypto.point_bytes(euicc.otsk.public_key())},
        )
    )
    signature2 = crypto.sign_plain(pki.euicc_key, crypto.signed_data_euicc2(signed2, smdp_signature2))
    response2 = crypto.tlv(0xBF21, crypto.tlv(0xA0, signed2 + crypto.signature_do(signature2)))
    bpp = smdp.handle(
        post(
            "getBoundProfilePackage",
            {"transactionId": auth["transactionId"], "prepareDownloadResponse": response2},
        )
    )
    assert "boundProfilePackage" in answer_json(bpp)
    # the install result: ProfileInstallationResultData 'BF27' with a later field, signed as sent
    notification = es9_json.b64(
        json.loads(euicc.install_result(auth["transactionId"]).body)["pendingNotification"]
    )
    _choice, result = decode("PendingNotification", notification)
    data = widen(encode("ProfileInstallationResultData", result["profileInstallationResultData"]))
    signature = crypto.sign_plain(pki.euicc_key, data)
    wide = crypto.tlv(0xBF37, data + crypto.signature_do(signature))
    answer = smdp.handle(post("handleNotification", {"pendingNotification": wide}))
    assert answer.status == 204 and answer.notes[0].fields["verified"] is True
    assert smdp.profiles["OP1"].state is ProfileState.INSTALLED


def test_other_notifications_and_cancel_session_verify_the_bytes_sent(pki: Pki) -> None:
    from bipsim.uicc.euicc.upp import iccid_bytes

    smdp, euicc = service(pki), MiniEuicc(pki)
    metadata = {
        "seqNumber": 9,
        "profileManagementOperation": (b"\x10", 4),  # notificationDelete
        "notificationAddress": ADDRESS,
        "iccid": iccid_bytes("8944476500001234567"),
    }
    tbs = widen(encode("NotificationMetadata", metadata))
    signature = crypto.sign_plain(pki.euicc_key, tbs)
    body = tbs + crypto.signature_do(signature) + cert_der(pki.euicc_cert) + cert_der(pki.eum_cert)
    answer = smdp.handle(post("handleNotification", {"pendingNotification": crypto.tlv(0x30, body)}))
    assert answer.notes[0].fields["notification"] == "delete" and answer.notes[0].fields["verified"] is True
    init = answer_json(smdp.handle(euicc.initiate()))
    auth = answer_json(smdp.handle(euicc.authenticate(init, "OP1")))
    signed = widen(
        encode(
            "EuiccCancelSessionSigned",
            {"transactionId": bytes.fromhex(auth["transactionId"]), "smdpOid": pki.smdp_oid, "reason": 1},
        )
    )
    signature = crypto.sign_plain(pki.euicc_key, signed)
    response = crypto.tlv(0xBF41, crypto.tlv(0xA0, signed + crypto.signature_do(signature)))
    cancelled = smdp.handle(
        post("cancelSession", {"transactionId": auth["transactionId"], "cancelSessionResponse": response})
    )
    assert answer_json(cancelled)["transactionId"] == auth["transactionId"]


def test_cancel_session_naming_another_smdp_oid_is_refused(pki: Pki) -> None:
    smdp, euicc = service(pki), MiniEuicc(pki)
    init = answer_json(smdp.handle(euicc.initiate()))
    auth = answer_json(smdp.handle(euicc.authenticate(init, "OP1")))
    transaction_id = auth["transactionId"]

    def cancel_for(oid: str) -> Any:
        signed = {"transactionId": bytes.fromhex(transaction_id), "smdpOid": oid, "reason": 0}
        signature = crypto.sign_plain(pki.euicc_key, encode("EuiccCancelSessionSigned", signed))
        ok = {"euiccCancelSessionSigned": signed, "euiccCancelSessionSignature": signature}
        response = encode("CancelSessionResponse", ("cancelSessionResponseOk", ok))
        return smdp.handle(
            post("cancelSession", {"transactionId": transaction_id, "cancelSessionResponse": response})
        )

    for other in ("2.999.11", "1.3.6.1.4.1.31746.1", "2.23.146.1.2.1.3"):
        refused = cancel_for(other)
        assert failure(refused) == ("8.8", "3.10")  # SGP.22 5.6.5: SM-DP+ - Invalid Association
        assert refused.fields["smdp_oid"] == other
    assert smdp.sessions[bytes.fromhex(transaction_id)].state.value == "authenticated"  # the session goes on
    assert (
        answer_json(cancel_for(pki.smdp_oid))["transactionId"] == transaction_id
    )  # ours: 2.999.10 read right
    assert failure(smdp.handle(euicc.prepare(auth))) == ("8.10.1", "3.9")


def test_the_ci_is_chosen_from_the_euiccs_lists(pki: Pki, tmp_path: Path) -> None:
    smdp = service(pki)
    other = generate_pki(tmp_path / "other").ci_pkid

    def initiate(verification: list[bytes], signing: list[bytes]) -> Any:
        info1 = encode(
            "EUICCInfo1",
            {
                "svn": VERSION,
                "euiccCiPKIdListForVerification": verification,
                "euiccCiPKIdListForSigning": signing,
            },
        )
        fields = {"euiccChallenge": b"\xc1" * 16, "euiccInfo1": info1, "smdpAddress": ADDRESS}
        return smdp.handle(post("initiateAuthentication", fields))

    # the eUICC verifies only another CI's certificates: no CERT.DPauth of ours chains to it (SGP.22 5.6.1)
    assert failure(initiate([other], [pki.ci_pkid])) == ("8.8.4", "3.7")
    assert failure(initiate([], [pki.ci_pkid])) == ("8.8.4", "3.7")
    # it signs only under another CI: none of its CI public key identifiers is supported
    assert failure(initiate([pki.ci_pkid], [other])) == ("8.8.2", "3.1")
    assert not smdp.sessions
    # ours further down both lists is found and used
    chosen = answer_json(initiate([other, pki.ci_pkid], [other, pki.ci_pkid]))
    assert es9_json.b64(chosen["euiccCiPKIdToBeUsed"]) == bytes([0x04, len(pki.ci_pkid)]) + pki.ci_pkid
    assert len(smdp.sessions) == 1
