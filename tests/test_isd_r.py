"""The ISD-R applet (uicc/applets/isd_r.py): STORE DATA assembly and answers, the ES10 functions of SGP.22 5.7
against a small in-test SM-DP+ (signatures with the test PKI's DPauth/DPpb keys, the BPP from bpp_build), the
download session across a failed install and a power cycle, and the function's own error codes for bad input.
In-process: the applet behind an AppletHost (61 xx and GET RESPONSE as the card shapes them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from bipsim.uicc.applets import AppletHost, Command
from bipsim.uicc.applets.isd_r import ISD_R_AID, IsdR
from bipsim.uicc.euicc import asn1, crypto
from bipsim.uicc.euicc.bpp_build import build_bpp
from bipsim.uicc.euicc.bpp_loader import segment_bpp
from bipsim.uicc.euicc.pki import Pki, cert_der, cert_public_key, generate_pki, verify_path
from bipsim.uicc.euicc.upp import builtin_upps, iccid_bytes

CHANNEL = 1
OP1_ICCID = "8944476500001234567"
ADDRESS = "127.0.0.1:8443"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return generate_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_ci(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second PKI: certificates whose CI the eUICC does not know."""
    return generate_pki(tmp_path_factory.mktemp("other-pki"))


class Card:
    """The ISD-R selected on logical channel 1 of an AppletHost: STORE DATA blocks in, the whole answer out."""

    def __init__(self, isd_r: IsdR) -> None:
        self.isd_r = isd_r
        self.host = AppletHost([isd_r])
        assert self.host.select(CHANNEL, isd_r, 0x00, ISD_R_AID, None) == (b"", 0x9000)

    def apdu(self, cla: int, ins: int, p1: int, p2: int, data: bytes = b"") -> tuple[bytes, int]:
        return self.host.process(Command(cla, ins, p1, p2, data, None, CHANNEL))

    def es10(self, request: bytes, *, block: int = 255) -> bytes:
        """One ES10 request in STORE DATA blocks (class 81, P1 11/91, P2 from 00), its answer fetched with
        GET RESPONSE while the card says 61 xx."""
        parts = [request[i : i + block] for i in range(0, len(request), block)]
        for number, part in enumerate(parts):
            last = number == len(parts) - 1
            data, sw = self.apdu(0x81, 0xE2, 0x91 if last else 0x11, number, part)
            if not last:
                assert (data, sw) == (b"", 0x9000)
        answer = b""
        while sw >> 8 == 0x61:
            more, sw = self.apdu(0x01, 0xC0, 0, 0)
            answer += more
        assert sw == 0x9000, f"{sw:04X}"
        return data + answer


class Es10(Protocol):
    def es10(self, request: bytes) -> bytes: ...


class Smdp:
    """The SM-DP+ side of SGP.22 3.1.3 as far as the eUICC sees it: signed requests from the test PKI's keys."""

    def __init__(self, keys: Pki, transaction_id: bytes = b"\x71" * 16) -> None:
        self.keys = keys
        self.transaction_id = transaction_id
        self.server_challenge = b"\x5c" * 16
        self.euicc_signature1 = b"\x01" * 64  # until AuthenticateServer gives the real one

    def authenticate(
        self,
        euicc_challenge: bytes,
        *,
        ci_pkid: bytes | None = None,
        certificate: bytes | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> bytes:
        signed1 = {
            "transactionId": self.transaction_id,
            "euiccChallenge": euicc_challenge,
            "serverAddress": ADDRESS,
            "serverChallenge": self.server_challenge,
        }
        signature = crypto.sign_plain(
            key or self.keys.dpauth_key, crypto.signed_data_server1(asn1.encode("ServerSigned1", signed1))
        )
        return asn1.encode(
            "AuthenticateServerRequest",
            {
                "serverSigned1": signed1,
                "serverSignature1": signature,
                "euiccCiPKIdToBeUsed": ci_pkid or self.keys.ci_pkid,
                "serverCertificate": certificate or cert_der(self.keys.dpauth_cert),
                "ctxParams1": (
                    "ctxParamsForCommonAuthentication",
                    {
                        "matchingId": "MATCH-1",
                        "deviceInfo": {"tac": b"\x35\x29\x06\x11", "deviceCapabilities": {}},
                    },
                ),
            },
        )

    def prepare(
        self,
        *,
        transaction_id: bytes | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
        otpk: bytes | None = None,
    ) -> bytes:
        signed2: dict[str, Any] = {
            "transactionId": transaction_id or self.transaction_id,
            "ccRequiredFlag": False,
        }
        if otpk is not None:
            signed2["bppEuiccOtpk"] = otpk
        der = asn1.encode("SmdpSigned2", signed2)
        self.smdp_signature2 = crypto.sign_plain(
            key or self.keys.dppb_key, crypto.signed_data_smdp2(der, self.euicc_signature1)
        )
        return asn1.encode(
            "PrepareDownloadRequest",
            {
                "smdpSigned2": signed2,
                "smdpSignature2": self.smdp_signature2,
                "smdpCertificate": cert_der(self.keys.dppb_cert),
            },
        )

    def bpp(self, otpk: bytes, *, iccid: str = OP1_ICCID, ppr: tuple[bytes, int] = (b"", 0)) -> bytes:
        metadata: dict[str, Any] = {
            "iccid": iccid_bytes(iccid),
            "serviceProviderName": "Operator One",
            "profileName": "op1",
            # enable, disable and delete notifications to the SM-DP+ (SGP.22 5.5.3)
            "notificationConfigurationInfo": [
                {"profileManagementOperation": (b"\x70", 4), "notificationAddress": ADDRESS}
            ],
        }
        if ppr[1]:
            metadata["profilePolicyRules"] = ppr
        return build_bpp(
            pki=self.keys,
            transaction_id=self.transaction_id,
            euicc_otpk=otpk,
            eid=self.keys.eid,
            metadata=metadata,
            upp=builtin_upps()["op1"],
        )


def challenge(card: Es10) -> bytes:
    answer = asn1.decode("GetEuiccChallengeResponse", card.es10(bytes.fromhex("BF2E00")))
    return bytes(answer["euiccChallenge"])


def authenticated(card: Es10, smdp: Smdp) -> dict[str, Any]:
    kind, answer = asn1.decode("AuthenticateServerResponse", card.es10(smdp.authenticate(challenge(card))))
    assert kind == "authenticateResponseOk", answer
    smdp.euicc_signature1 = answer["euiccSignature1"]
    return dict(answer)


def prepared(card: Es10, smdp: Smdp) -> bytes:
    authenticated(card, smdp)
    kind, answer = asn1.decode("PrepareDownloadResponse", card.es10(smdp.prepare()))
    assert kind == "downloadResponseOk", answer
    return bytes(answer["euiccSigned2"]["euiccOtpk"])


def load(card: Es10, bpp: bytes) -> dict[str, Any]:
    """The BPP segment by segment (SGP.22 2.5.5); every answer but the last is empty; the decoded PIR data."""
    segments = segment_bpp(bpp)
    answers = []
    for segment in segments:
        answers.append(card.es10(segment))
        if answers[-1]:  # the load ended here, as the LPA sees it: it sends nothing more (SGP.22 5.7.6)
            break
    assert answers[-1], "a ProfileInstallationResult at the last segment at the latest"
    data = dict(asn1.decode("ProfileInstallationResult", answers[-1])["profileInstallationResultData"])
    if data["finalResult"][0] == "successResult":
        assert len(answers) == len(segments)
    return data


def new_card(keys: Pki, **options: Any) -> Card:
    return Card(IsdR(keys=keys, **options))


# --- STORE DATA ------------------------------------------------------------------------------------------------


def test_get_eid_answers_the_eid_as_sgp22_and_the_contract_show_it(keys: Pki) -> None:
    card = new_card(keys)
    data, sw = card.apdu(0x80, 0xE2, 0x91, 0x00, bytes.fromhex("BF3E035C015A"))
    assert sw == 0x6115  # 21 bytes wait for GET RESPONSE
    data, sw = card.apdu(0x00, 0xC0, 0x00, 0x00)
    assert (data.hex().upper(), sw) == ("BF3E125A10" + keys.eid, 0x9000)


def test_a_request_in_many_blocks_is_assembled_and_a_long_answer_chained(keys: Pki) -> None:
    card = new_card(keys)
    request = asn1.encode("GetEuiccInfo2Request", {})
    info2 = asn1.decode("EUICCInfo2", card.es10(request + b"", block=1))  # 3 blocks of one byte
    assert info2["svn"] == bytes((2, 2, 0))
    assert info2["euiccCiPKIdListForVerification"] == [keys.ci_pkid]
    info1 = asn1.decode("EUICCInfo1", card.es10(bytes.fromhex("BF2000")))
    assert info1["euiccCiPKIdListForSigning"] == [keys.ci_pkid]


@pytest.mark.parametrize(
    ("blocks", "sw"),
    [
        ([(0x11, 0, "BF3E"), (0x91, 2, "035C015A")], 0x6A80),  # block 2 after block 0
        ([(0x91, 1, "BF3E035C015A")], 0x6A80),  # the first block is not 00
        ([(0x12, 0, "BF3E035C015A")], 0x6A86),  # P1 neither 11 nor 91
        ([(0x91, 0, "")], 0x6700),  # no data
        ([(0x91, 0, "BF34025A00")], 0x6A80),  # a function this eUICC does not serve (eUICCMemoryReset)
        ([(0x91, 0, "5A")], 0x6A80),  # not even a TLV
        ([(0x91, 0, "BF3E035C014F")], 0x6A80),  # GetEID asking for another tag
        ([(0x91, 0, "BF3E035C01")], 0x6A80),  # GetEID, broken DER: that function has no error answer
    ],
)
def test_a_malformed_store_data_is_refused_with_its_status_word(
    keys: Pki, blocks: list[tuple[int, int, str]], sw: int
) -> None:
    card = new_card(keys)
    answers = [card.apdu(0x81, 0xE2, p1, p2, bytes.fromhex(data)) for p1, p2, data in blocks]
    assert answers[-1] == (b"", sw)
    # the assembly is gone: a good request after it is answered
    assert card.es10(bytes.fromhex("BF3E035C015A")).hex().upper() == "BF3E125A10" + keys.eid


def test_a_request_over_64_kib_is_6700_and_the_applet_goes_on(keys: Pki) -> None:
    card = new_card(keys)
    chunk = b"\x00" * 4096  # extended-length blocks, so that 64 KiB fits in the 256 block numbers of P2
    results = [card.apdu(0x81, 0xE2, 0x11, number, chunk)[1] for number in range(17)]
    assert results[:16] == [0x9000] * 16  # 64 KiB exactly is still taken
    assert results[16] == 0x6700
    assert card.es10(bytes.fromhex("BF3E035C015A")).startswith(b"\xbf\x3e")


def test_other_instructions_and_classes_are_refused(keys: Pki) -> None:
    card = new_card(keys)
    assert card.apdu(0x81, 0xCA, 0x00, 0x5A) == (b"", 0x6D00)
    assert card.apdu(0x01, 0xE2, 0x91, 0x00, bytes.fromhex("BF3E035C015A")) == (b"", 0x6E00)


# --- the download --------------------------------------------------------------------------------------------


def test_a_whole_download_installs_the_profile_and_leaves_an_install_notification(keys: Pki) -> None:
    card = new_card(keys)
    smdp = Smdp(keys)
    answer = authenticated(card, smdp)
    # euiccSigned1 is signed by the eUICC, whose certificate chains through the EUM to the CI
    euicc_cert = crypto_cert(answer["euiccCertificate"])
    verify_path([euicc_cert, crypto_cert(answer["eumCertificate"])], keys.ci_cert)
    signed1 = answer["euiccSigned1"]
    assert signed1["transactionId"] == smdp.transaction_id
    assert signed1["serverChallenge"] == smdp.server_challenge
    assert signed1["ctxParams1"][1]["matchingId"] == "MATCH-1"
    crypto.verify_plain(
        cert_public_key(euicc_cert), answer["euiccSignature1"], asn1.encode("EuiccSigned1", signed1)
    )
    kind, prepared_answer = asn1.decode("PrepareDownloadResponse", card.es10(smdp.prepare()))
    assert kind == "downloadResponseOk"
    signed2 = prepared_answer["euiccSigned2"]
    crypto.verify_plain(
        cert_public_key(euicc_cert),
        prepared_answer["euiccSignature2"],
        crypto.signed_data_euicc2(asn1.encode("EUICCSigned2", signed2), smdp.smdp_signature2),
    )
    result = load(card, smdp.bpp(bytes(signed2["euiccOtpk"])))
    assert result["finalResult"][0] == "successResult", result
    assert card.isd_r.session is None  # SGP.22 3.1.3.3: the session ends with the install
    kind, profiles = asn1.decode("ProfileInfoListResponse", card.es10(bytes.fromhex("BF2D00")))
    assert [(p["iccid"], p["profileState"], p["serviceProviderName"]) for p in profiles] == [
        (iccid_bytes(OP1_ICCID), 0, "Operator One")
    ]
    kind, notes = asn1.decode("ListNotificationResponse", card.es10(bytes.fromhex("BF2800")))
    assert [(n["seqNumber"], n["profileManagementOperation"]) for n in notes] == [(1, (b"\x80", 1))]
    kind, pending = asn1.decode("RetrieveNotificationsListResponse", card.es10(bytes.fromhex("BF2B00")))
    assert pending[0][0] == "profileInstallationResult"
    assert asn1.decode("NotificationSentResponse", card.es10(bytes.fromhex("BF3003800101"))) == {
        "deleteNotificationStatus": 0
    }
    assert asn1.decode("NotificationSentResponse", card.es10(bytes.fromhex("BF3003800101"))) == {
        "deleteNotificationStatus": 1  # nothingToDelete
    }


def crypto_cert(der: bytes) -> Any:
    from bipsim.uicc.euicc.pki import load_cert_der

    return load_cert_der(bytes(der))


def test_enable_disable_delete_answer_sgp22_codes_and_notify(keys: Pki) -> None:
    card = new_card(keys)
    smdp = Smdp(keys)
    assert load(card, smdp.bpp(prepared(card, smdp)))["finalResult"][0] == "successResult"
    by_iccid = ("iccid", iccid_bytes(OP1_ICCID))
    unknown = ("iccid", iccid_bytes("8944476500009999999"))

    def enable(which: Any) -> int:
        request = asn1.encode("EnableProfileRequest", {"profileIdentifier": which, "refreshFlag": False})
        return int(asn1.decode("EnableProfileResponse", card.es10(request))["enableResult"])

    def disable(which: Any) -> int:
        request = asn1.encode("DisableProfileRequest", {"profileIdentifier": which, "refreshFlag": False})
        return int(asn1.decode("DisableProfileResponse", card.es10(request))["disableResult"])

    def delete(which: Any) -> int:
        return int(
            asn1.decode("DeleteProfileResponse", card.es10(asn1.encode("DeleteProfileRequest", which)))[
                "deleteResult"
            ]
        )

    assert enable(unknown) == 1  # iccidOrAidNotFound
    assert disable(by_iccid) == 2  # profileNotInEnabledState
    assert enable(by_iccid) == 0
    assert enable(by_iccid) == 2  # profileNotInDisabledState
    assert delete(by_iccid) == 2  # an enabled profile is not deleted
    assert disable(("isdpAid", card.isd_r.profile_store.profiles[0].aid)) == 0
    assert delete(by_iccid) == 0
    assert delete(by_iccid) == 1
    kind, notes = asn1.decode("ListNotificationResponse", card.es10(bytes.fromhex("BF2800")))
    events = [n["profileManagementOperation"] for n in notes]
    # install, enable, disable, delete, in sequence numbers 1..4
    assert events == [(b"\x80", 1), (b"\x40", 2), (b"\x20", 3), (b"\x10", 4)]
    assert [n["seqNumber"] for n in notes] == [1, 2, 3, 4]
    # the signed ones verify with the eUICC's key
    kind, pending = asn1.decode(
        "RetrieveNotificationsListResponse", card.es10(bytes.fromhex("BF2B05A003800102"))
    )
    other = pending[0][1]
    crypto.verify_plain(
        cert_public_key(keys.euicc_cert),
        other["euiccNotificationSignature"],
        asn1.encode("NotificationMetadata", other["tbsOtherNotification"]),
    )


def test_policy_rules_are_listed_and_enforced(keys: Pki) -> None:
    card = new_card(keys)
    smdp = Smdp(keys)
    otpk = prepared(card, smdp)
    assert load(card, smdp.bpp(otpk, ppr=(b"\x20", 3)))["finalResult"][0] == "successResult"  # ppr2
    kind, profiles = asn1.decode("ProfileInfoListResponse", card.es10(bytes.fromhex("BF2D00")))
    assert profiles[0]["profilePolicyRules"] == (b"\x20", 3)
    request = asn1.encode("DeleteProfileRequest", ("iccid", iccid_bytes(OP1_ICCID)))
    assert asn1.decode("DeleteProfileResponse", card.es10(request)) == {
        "deleteResult": 3
    }  # disallowedByPolicy
    # a tag list keeps only what it names
    request = asn1.encode("ProfileInfoListRequest", {"tagList": bytes.fromhex("5A9F70")})
    kind, profiles = asn1.decode("ProfileInfoListResponse", card.es10(request))
    assert profiles == [{"iccid": iccid_bytes(OP1_ICCID), "profileState": 0}]


# --- AuthenticateServer and PrepareDownload refusals ----------------------------------------------------------


def auth_error(card: Card, request: bytes) -> int:
    kind, answer = asn1.decode("AuthenticateServerResponse", card.es10(request))
    assert kind == "authenticateResponseError"
    return int(answer["authenticateErrorCode"])


def test_authenticate_server_refusals_have_sgp22_codes(keys: Pki, other_ci: Pki) -> None:
    card = new_card(keys)
    smdp = Smdp(keys)
    assert auth_error(card, smdp.authenticate(challenge(card), ci_pkid=b"\x01" * 20)) == 7  # ciPKUnknown
    foreign = cert_der(other_ci.dpauth_cert)
    assert (
        auth_error(card, smdp.authenticate(challenge(card), certificate=foreign)) == 1
    )  # invalidCertificate
    dppb = cert_der(keys.dppb_cert)  # a certificate of the CI, but not for authentication
    assert auth_error(card, smdp.authenticate(challenge(card), certificate=dppb, key=keys.dppb_key)) == 5
    assert auth_error(card, smdp.authenticate(challenge(card), key=keys.dppb_key)) == 2  # invalidSignature
    assert auth_error(card, smdp.authenticate(b"\x00" * 16)) == 6  # euiccChallengeMismatch
    # the challenge serves one attempt: the right one again, after a failure, is a mismatch
    fresh = challenge(card)
    assert auth_error(card, smdp.authenticate(b"\x00" * 16)) == 6
    assert auth_error(card, smdp.authenticate(fresh)) == 6
    assert card.isd_r.session is None


def test_authenticate_server_that_does_not_decode_is_undefined_error(keys: Pki) -> None:
    card = new_card(keys)
    broken = bytes.fromhex("BF38083006800471717171")  # ServerSigned1 with no challenge, address...
    kind, answer = asn1.decode("AuthenticateServerResponse", card.es10(broken))
    assert kind == "authenticateResponseError"
    assert answer["authenticateErrorCode"] == 127
    assert answer["transactionId"] == b"\x71\x71\x71\x71"  # what could be read of the request


def test_prepare_download_refusals_have_sgp22_codes(keys: Pki) -> None:
    card = new_card(keys)
    smdp = Smdp(keys)

    def code(request: bytes) -> int:
        kind, answer = asn1.decode("PrepareDownloadResponse", card.es10(request))
        assert kind == "downloadResponseError"
        return int(answer["downloadErrorCode"])

    assert code(smdp.prepare()) == 4  # noSessionContext: no AuthenticateServer before
    authenticated(card, smdp)
    assert code(smdp.prepare(transaction_id=b"\x99" * 16)) == 5  # invalidTransactionId
    assert code(smdp.prepare(key=keys.dpauth_key)) == 2  # invalidSignature (signed with the wrong key)
    assert card.isd_r.session is not None and card.isd_r.session.ot_private is None
    assert code(b"\xbf\x21\x03\x30\x01\x00") == 127  # undefinedError: does not decode
    # a retry naming the one-time key already made gets the same key back (SGP.22 5.7.5 bppEuiccOtpk)
    kind, first = asn1.decode("PrepareDownloadResponse", card.es10(smdp.prepare()))
    otpk = first["euiccSigned2"]["euiccOtpk"]
    kind, again = asn1.decode("PrepareDownloadResponse", card.es10(smdp.prepare(otpk=otpk)))
    assert again["euiccSigned2"]["euiccOtpk"] == otpk


def test_cancel_session_signs_and_ends_the_session(keys: Pki) -> None:
    card = new_card(keys)
    smdp = Smdp(keys)
    prepared(card, smdp)
    wrong = asn1.encode("CancelSessionRequest", {"transactionId": b"\x01", "reason": 0})
    assert asn1.decode("CancelSessionResponse", card.es10(wrong)) == ("cancelSessionResponseError", 5)
    right = asn1.encode("CancelSessionRequest", {"transactionId": smdp.transaction_id, "reason": 1})
    kind, answer = asn1.decode("CancelSessionResponse", card.es10(right))
    assert kind == "cancelSessionResponseOk"
    signed = answer["euiccCancelSessionSigned"]
    assert (signed["transactionId"], signed["reason"], signed["smdpOid"]) == (
        smdp.transaction_id,
        1,
        keys.smdp_oid,
    )
    crypto.verify_plain(
        cert_public_key(keys.euicc_cert),
        answer["euiccCancelSessionSignature"],
        asn1.encode("EuiccCancelSessionSigned", signed),
    )
    assert card.isd_r.session is None
    assert asn1.decode("CancelSessionResponse", card.es10(right)) == ("cancelSessionResponseError", 5)


# --- an interrupted install, a power cycle, the same package again ----------------------------------------------


def power_cycle(card: Card, keys: Pki, **options: Any) -> Card:
    """What the card's state file carries over a restart: to_dict, then load_dict into a new applet."""
    state = card.isd_r.to_dict()
    fresh = IsdR(keys=keys, **options)
    fresh.load_dict(state)
    return Card(fresh)


def test_a_fault_at_segment_k_kept_session_and_a_power_cycle_then_the_same_bpp_installs(keys: Pki) -> None:
    card = new_card(keys, fault_at_segment=4, keep_otpk=True)
    smdp = Smdp(keys)
    bpp = smdp.bpp(prepared(card, smdp))
    result = load(card, bpp)
    assert result["finalResult"][0] == "errorResult"
    assert result["finalResult"][1]["errorReason"] == 11  # installFailedDueToInterruption
    assert card.isd_r.profile_store.profiles == []  # nothing half-installed
    card = power_cycle(card, keys, fault_at_segment=4, keep_otpk=True)
    assert card.isd_r.session is not None and card.isd_r.session.ot_private is not None
    result = load(card, bpp)  # the package as the cloud gives it back, byte for byte
    assert result["finalResult"][0] == "successResult", result
    assert [p.iccid for p in card.isd_r.profile_store.profiles] == [OP1_ICCID]


def test_the_fault_fires_once_until_it_is_armed_again(keys: Pki) -> None:
    card = new_card(keys, fault_at_segment=2, keep_otpk=True)
    smdp = Smdp(keys)
    bpp = smdp.bpp(prepared(card, smdp))
    assert load(card, bpp)["finalResult"][1]["errorReason"] == 11
    assert load(card, bpp)["finalResult"][0] == "successResult"  # the same card, no restart
    # armed again on the running card (what the CP's card control does): it fires on the next load
    card.isd_r.profile_store.rearm_fault()
    smdp2 = Smdp(keys, transaction_id=b"\x72" * 16)
    bpp2 = smdp2.bpp(prepared(card, smdp2), iccid="8944476500001234575")
    assert load(card, bpp2)["finalResult"][1]["errorReason"] == 11


def test_a_fault_set_on_the_running_card_outlives_a_power_cycle_so_it_fires_once(keys: Pki) -> None:
    """The card control's setting (uicc/card.py set_euicc_fault) is kept in the card state: after a power cycle the
    card profile's fault does not come back to fire again (issue 23, the hook fires exactly once)."""
    card = new_card(keys, fault_at_segment=4, keep_otpk=True)
    smdp = Smdp(keys)
    bpp = smdp.bpp(prepared(card, smdp))
    assert load(card, bpp)["finalResult"][1]["errorReason"] == 11  # fired at 4
    # moved to segment 6 on the running card (what 'euicc-fault N 6' does), and that one fires too
    card.isd_r.fault_at_segment = 6
    card.isd_r.profile_store.rearm_fault()
    assert load(card, bpp)["finalResult"][1]["errorReason"] == 11
    card = power_cycle(card, keys, fault_at_segment=4, keep_otpk=True)  # the profile still says 4
    assert card.isd_r.fault_at_segment == 6
    assert load(card, bpp)["finalResult"][0] == "successResult"  # neither fault fires a second time
    # switched off on the running card: off after a power cycle too
    card.isd_r.fault_at_segment = 0
    card.isd_r.profile_store.rearm_fault()
    card = power_cycle(card, keys, fault_at_segment=4, keep_otpk=True)
    assert card.isd_r.fault_at_segment is None


def test_a_card_profile_edited_after_the_running_card_s_setting_is_the_newer_word(keys: Pki) -> None:
    """The setting made on the running card stands over the card profile's segment it replaced; a card profile that
    names another segment since (the user edited it) is in force at the next start, and the setting is gone."""
    card = new_card(keys, fault_at_segment=4, keep_otpk=True)
    card.isd_r.fault_at_segment = 6  # 'euicc-fault N 6' over the profile's 4
    assert power_cycle(card, keys, fault_at_segment=4).isd_r.fault_at_segment == 6
    card = power_cycle(card, keys, fault_at_segment=5)  # the profile now says 5
    assert card.isd_r.fault_at_segment == 5
    store = card.isd_r.profile_store
    assert (store.fault_set, store.fault_over) == (None, None)
    # the setting does not return with the profile's old segment
    assert power_cycle(card, keys, fault_at_segment=4).isd_r.fault_at_segment == 4
    # switched off on the running card over a profile without a fault: a profile that adds one is the newer word
    card = new_card(keys, keep_otpk=True)
    card.isd_r.fault_at_segment = 0
    assert power_cycle(card, keys).isd_r.fault_at_segment is None
    assert power_cycle(card, keys, fault_at_segment=3).isd_r.fault_at_segment == 3
    # a state file written before the replaced segment was kept: the setting stands, as it did
    state = card.isd_r.to_dict()
    state["store"].pop("fault_over")
    fresh = IsdR(keys=keys, fault_at_segment=3)
    fresh.load_dict(state)
    assert fresh.fault_at_segment is None


def test_without_the_kept_key_the_replayed_bpp_is_refused_once_and_nothing_loops(keys: Pki) -> None:
    card = new_card(keys, fault_at_segment=4, keep_otpk=False)
    smdp = Smdp(keys)
    bpp = smdp.bpp(prepared(card, smdp))
    assert load(card, bpp)["finalResult"][1]["errorReason"] == 11
    assert card.isd_r.session is None  # erased at the failure
    card = power_cycle(card, keys, fault_at_segment=4, keep_otpk=False)
    answers = [card.es10(segment) for segment in segment_bpp(bpp)[:1]]
    pir = asn1.decode("ProfileInstallationResult", answers[0])["profileInstallationResultData"]
    assert pir["finalResult"] == (
        "errorResult",
        {"bppCommandId": 0, "errorReason": 3},
    )  # invalidTransactionId
    assert card.isd_r.profile_store.profiles == []
    # the rest of the package is not taken for a load: each segment is refused on its own
    data, sw = card.apdu(0x81, 0xE2, 0x91, 0x00, segment_bpp(bpp)[1])
    assert sw == 0x6A80


def test_a_damaged_state_file_part_is_dropped_not_raised(keys: Pki) -> None:
    isd_r = IsdR(keys=keys)
    isd_r.load_dict(
        {
            "store": {"profiles": [{"iccid": "x"}]},
            "notifications": [{"seq": "a"}, {"seq": 1, "event": "nope"}],
            "next_seq": "x",
            "session": {"transaction_id": "zz"},
        }
    )
    assert (isd_r.notifications, isd_r.session, isd_r.next_seq) == ([], None, 1)
    assert isd_r.profile_store.profiles == []


def test_state_round_trips(keys: Pki, tmp_path: Path) -> None:
    card = new_card(keys)
    smdp = Smdp(keys)
    load(card, smdp.bpp(prepared(card, smdp)))
    again = power_cycle(card, keys)
    assert again.isd_r.to_dict() == card.isd_r.to_dict()
    assert (
        asn1.decode("ListNotificationResponse", again.es10(bytes.fromhex("BF2800")))[1][0]["seqNumber"] == 1
    )


def test_the_card_routes_es10_on_a_logical_channel_as_lpac_sends_it(keys: Pki) -> None:
    from bipsim.uicc.card import SimCard
    from bipsim.uicc.profile import load_profile

    card = SimCard(load_profile().with_overrides(applets=("isd-r",), euicc_pki=str(keys.directory)))
    opened = card.process(bytes.fromhex("0070000001"))
    assert opened[-2:] == b"\x90\x00"
    channel = opened[0]
    selected = card.process(bytes((channel, 0xA4, 0x04, 0x00, 16)) + ISD_R_AID)
    assert selected[-2:] in (b"\x90\x00",) or selected[-2] == 0x61
    # class 81 for channel 1, as the CP recodes AT+CGLA's APDU for the channel it opened
    answer = card.process(bytes((0x80 | channel,)) + bytes.fromhex("E2910006BF3E035C015A"))
    assert answer == bytes.fromhex("6115")
    answer = card.process(bytes((channel,)) + bytes.fromhex("C0000015"))
    assert answer.hex().upper() == "BF3E125A10" + keys.eid + "9000"


class SimCardEs10:
    """ES10 through a whole SimCard: a logical channel, the ISD-R selected on it, STORE DATA and GET RESPONSE as
    APDUs (what the CP sends for AT+CGLA)."""

    def __init__(self, card: Any) -> None:
        self.card = card
        opened = card.process(bytes.fromhex("0070000001"))
        assert opened[-2:] == b"\x90\x00"
        self.channel = opened[0]
        selected = card.process(bytes((self.channel, 0xA4, 0x04, 0x00, 16)) + ISD_R_AID)
        assert selected[-2:] == b"\x90\x00" or selected[-2] == 0x61

    def es10(self, request: bytes) -> bytes:
        parts = [request[i : i + 255] for i in range(0, len(request), 255)]
        for number, part in enumerate(parts):
            p1 = 0x91 if number == len(parts) - 1 else 0x11
            answer = self.card.process(bytes((0x80 | self.channel, 0xE2, p1, number, len(part))) + part)
        data = b""
        while answer[-2] == 0x61:
            data += answer[:-2]
            answer = self.card.process(bytes((self.channel, 0xC0, 0, 0, answer[-1])))
        assert answer[-2:] == b"\x90\x00", answer[-2:].hex()
        return data + answer[:-2]


def test_an_install_and_enable_survive_a_restart_of_the_card_in_its_state_file(
    keys: Pki, tmp_path: Path
) -> None:
    from bipsim.uicc.card import SimCard
    from bipsim.uicc.profile import load_profile

    profile = load_profile().with_overrides(applets=("isd-r",), euicc_pki=str(keys.directory))
    state = tmp_path / "card.json"
    card = SimCardEs10(SimCard(profile, state_path=state))
    smdp = Smdp(keys)
    otpk = prepared(card, smdp)
    assert load(card, smdp.bpp(otpk))["finalResult"][0] == "successResult"
    request = asn1.encode(
        "EnableProfileRequest", {"profileIdentifier": ("iccid", iccid_bytes(OP1_ICCID)), "refreshFlag": True}
    )
    assert asn1.decode("EnableProfileResponse", card.es10(request)) == {"enableResult": 0}
    again = SimCardEs10(SimCard(profile, state_path=state))  # a power cycle: only the state file is left
    kind, profiles = asn1.decode("ProfileInfoListResponse", again.es10(bytes.fromhex("BF2D00")))
    assert [(p["iccid"], p["profileState"]) for p in profiles] == [(iccid_bytes(OP1_ICCID), 1)]
    kind, notes = asn1.decode("ListNotificationResponse", again.es10(bytes.fromhex("BF2800")))
    assert [n["seqNumber"] for n in notes] == [1, 2]  # install, enable


def test_seeded_bit_flips_in_every_request_are_answered_never_raised(keys: Pki) -> None:
    """Bad input from the LPA gets a status word or the function's error code; an exception out of the applet
    (the card's 6F00) would fail here."""
    import random

    rng = random.Random(23)
    card = new_card(keys)
    smdp = Smdp(keys)
    otpk = prepared(card, smdp)
    requests = [
        smdp.authenticate(b"\x00" * 16),
        smdp.prepare(),
        *segment_bpp(smdp.bpp(otpk))[:3],
        bytes.fromhex("BF2D065C045A9F7095"),
        asn1.encode("EnableProfileRequest", {"profileIdentifier": ("iccid", bytes(10)), "refreshFlag": True}),
        bytes.fromhex("BF2B05A003800101"),
        bytes.fromhex("BF3003800101"),
        asn1.encode("CancelSessionRequest", {"transactionId": smdp.transaction_id, "reason": 1}),
    ]
    statuses: set[int] = set()
    for _ in range(12):
        for request in requests:
            broken = bytearray(request)
            for _flip in range(rng.randint(1, 3)):
                broken[rng.randrange(len(broken))] ^= 1 << rng.randrange(8)
            data, sw = card.host.process(Command(0x81, 0xE2, 0x91, 0x00, bytes(broken), None, CHANNEL))
            while sw >> 8 == 0x61:
                data, sw = card.apdu(0x01, 0xC0, 0, 0)
            statuses.add(sw)
    assert statuses <= {0x9000, 0x6A80}
    assert 0x9000 in statuses and 0x6A80 in statuses
    # and the eUICC still serves a good request
    assert card.es10(bytes.fromhex("BF3E035C015A")).hex().upper() == "BF3E125A10" + keys.eid


async def test_through_the_cp_a_malformed_store_data_is_6a80_in_the_trace(
    keys: Pki, monkeypatch: pytest.MonkeyPatch, nursery: Any
) -> None:
    """The `euicc` card behind the CP's AT+CCHO/AT+CGLA (lower-case AID, class 81 as lpac sends it): GetEID
    answered, a STORE DATA with a wrong block number answered 6A80 and recorded at the card boundary."""
    import re

    import trio.testing

    from bipsim.cp.card_driver import CardDriver
    from bipsim.cp.commands import ModemCommands
    from bipsim.cp.modem import simulated_card
    from bipsim.cp.network import CellularNetwork
    from bipsim.link.at_server import AtServer
    from bipsim.trace.recorder import Tracer

    monkeypatch.setenv("BIPSIM_PKI", str(keys.directory))
    tracer = Tracer(keep=True)
    card, _ = simulated_card("euicc", None, tracer)
    commands = ModemCommands(CardDriver(card, tracer=tracer), CellularNetwork())
    dte_end, cp_end = trio.testing.memory_stream_pair()
    server = AtServer(cp_end)
    commands.install(server)
    nursery.start_soon(server.run)
    buffer = bytearray()

    async def at(line: str) -> list[str]:
        await dte_end.send_all(line.encode("ascii") + b"\r")
        with trio.fail_after(5):
            while not re.search(rb"\r\n(OK|ERROR|\+CME ERROR: \d+)\r\n$", buffer):
                buffer.extend(await dte_end.receive_some())
        lines = [item for item in buffer.decode("ascii").split("\r\n") if item and item.rstrip("\r") != line]
        buffer.clear()
        return lines

    assert await at("ATE0") == ["OK"]
    assert await at(f'AT+CCHO="{ISD_R_AID.hex()}"') == ["+CCHO: 1", "OK"]
    assert await at('AT+CGLA=1,22,"81E2910006BF3E035C015A"') == ['+CGLA: 4,"6115"', "OK"]
    assert await at('AT+CGLA=1,10,"81C0000015"') == [f'+CGLA: 46,"BF3E125A10{keys.eid}9000"', "OK"]
    assert await at('AT+CGLA=1,22,"81E2910206BF3E035C015A"') == ['+CGLA: 4,"6A80"', "OK"]
    refused = [e for e in tracer.events if e.kind == "apdu.response" and (e.fields or {}).get("sw") == "6A80"]
    assert len(refused) == 1


def test_rules_authorisation_table_and_default_dp_address(keys: Pki) -> None:
    card = new_card(keys, default_dp_address="profile.example")
    rat = asn1.decode("GetRatResponse", card.es10(bytes.fromhex("BF4300")))["rat"]
    assert [(r["pprIds"], r["allowedOperators"], r["pprFlags"]) for r in rat] == [
        ((b"\x60", 3), [{"mccMnc": b"\xee\xee\xee"}], (b"\x80", 1))  # PPR1+PPR2, any operator, consent
    ]
    addresses = asn1.decode("EuiccConfiguredAddressesResponse", card.es10(bytes.fromhex("BF3C00")))
    assert addresses == {"defaultDpAddress": "profile.example", "rootDsAddress": "lpa.ds.gsma.com"}
    request = asn1.encode("SetDefaultDpAddressRequest", {"defaultDpAddress": ADDRESS})
    assert asn1.decode("SetDefaultDpAddressResponse", card.es10(request)) == {"setDefaultDpAddressResult": 0}
    card = power_cycle(card, keys, default_dp_address="profile.example")  # the state file has the last word
    addresses = asn1.decode("EuiccConfiguredAddressesResponse", card.es10(bytes.fromhex("BF3C00")))
    assert addresses["defaultDpAddress"] == ADDRESS


def test_pending_notifications_are_bounded_the_oldest_going_first(keys: Pki) -> None:
    from bipsim.uicc.applets.isd_r import MAX_NOTIFICATIONS

    card = new_card(keys)
    smdp = Smdp(keys)
    assert load(card, smdp.bpp(prepared(card, smdp)))["finalResult"][0] == "successResult"
    which = ("iccid", iccid_bytes(OP1_ICCID))
    for _ in range(MAX_NOTIFICATIONS):  # each round: an enable and a disable notification
        card.es10(asn1.encode("EnableProfileRequest", {"profileIdentifier": which, "refreshFlag": False}))
        card.es10(asn1.encode("DisableProfileRequest", {"profileIdentifier": which, "refreshFlag": False}))
    kind, notes = asn1.decode("ListNotificationResponse", card.es10(bytes.fromhex("BF2800")))
    seqs = [n["seqNumber"] for n in notes]
    assert len(seqs) == MAX_NOTIFICATIONS and seqs[-1] == 1 + 2 * MAX_NOTIFICATIONS
    assert seqs == sorted(seqs) and 1 not in seqs  # the install notification, the oldest, went first
