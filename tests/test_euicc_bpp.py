"""The eUICC's Bound Profile Package loader (uicc/euicc/bpp_loader.py, GSMA SGP.22 sections 2.5.5, 5.5, 5.7.6):
installs only when the last segment arrived intact, answers every failure with a signed ProfileInstallationResult
naming the SGP.22 bppCommandId and errorReason, and keeps or erases the download session as `euicc_keep_otpk`
says. In-process: a test PKI in a temporary folder, no card, no sockets.

The packages are built here from the crypto primitives (an SM-DP+ written from SGP.22 5.5 independently of the
project's uicc/euicc/bpp_build.py), and once more with bpp_build.py itself (the round trip both sides agree on).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from bipsim.uicc.euicc.asn1 import decode, encode
from bipsim.uicc.euicc.bpp_loader import (
    BppCommand,
    BppLoader,
    ErrorReason,
    LoadResult,
    segment_bpp,
)
from bipsim.uicc.euicc.crypto import (
    Scp03t,
    SessionKeys,
    derive_session_keys,
    ecka,
    generate_otk,
    isc_signed_part,
    point_bytes,
    public_from_point,
    sign_plain,
    signature_do,
    signed_data_isc,
    signed_data_pir,
    split_tlvs,
    tlv,
    verify_plain,
)
from bipsim.uicc.euicc.pki import Pki, cert_der, generate_pki
from bipsim.uicc.euicc.profile_store import ProfileState, ProfileStore
from bipsim.uicc.euicc.session import DownloadSession, SessionEvent, SessionPhase
from bipsim.uicc.euicc.upp import builtin_upps, encode_upp, iccid_bytes

OP1_ICCID = "8944476500001234567"
HOST_ID = b"bipsim-smdp"
TID = bytes.fromhex("0123456789ABCDEF0123456789ABCDEF")
PPK = SessionKeys(s_enc=bytes(16), s_mac=bytes([1]) * 16, initial_mcv=bytes(range(16)))
PPK_VALUE = {"initialMacChainingValue": PPK.initial_mcv, "ppkEnc": PPK.s_enc, "ppkCmac": PPK.s_mac}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return generate_pki(Path(tmp_path_factory.mktemp("pki")))


def prepared_session(pki: Pki, transaction_id: bytes = TID) -> DownloadSession:
    """A session as AuthenticateServer and PrepareDownload leave it (SGP.22 3.1.3)."""
    session = DownloadSession(
        transaction_id=transaction_id,
        server_address="127.0.0.1:8443",
        server_challenge=bytes(16),
        euicc_challenge=bytes(range(16)),
        dpauth_certificate=cert_der(pki.dpauth_cert),
        dppb_certificate=cert_der(pki.dppb_cert),
    )
    session.set_one_time_key(generate_otk())
    session.advance(SessionEvent.PREPARE)
    return session


def metadata(iccid: str = OP1_ICCID, **extra: Any) -> bytes:
    value: dict[str, Any] = {
        "iccid": iccid_bytes(iccid),
        "serviceProviderName": "Operator One",
        "profileName": "op1",
        "profilePolicyRules": (b"\x40", 2),  # ppr1 (bit 1)
    }
    value.update(extra)
    return encode("StoreMetadataRequest", value)


def build(
    pki: Pki,
    session: DownloadSession,
    *,
    upp: bytes | None = None,
    smr: bytes | None = None,
    transaction_id: bytes = TID,
    signer: ec.EllipticCurvePrivateKey | None = None,
    key_type: int = 0x88,
    remote_op_id: int = 1,
    replace_keys: bool = False,
) -> bytes:
    """A BPP as an SM-DP+ binds it to this eUICC's one-time key (SGP.22 5.5.1-5.5.4, section 2.5.4)."""
    assert session.ot_public is not None
    smdp_ot = generate_otk()
    part = isc_signed_part(
        transaction_id=transaction_id,
        host_id=HOST_ID,
        smdp_otpk=point_bytes(smdp_ot.public_key()),
        key_type=key_type,
        remote_op_id=remote_op_id,
    )
    sign = sign_plain(signer or pki.dppb_key, signed_data_isc(part, session.ot_public))
    isc = tlv(0xBF23, part + signature_do(sign))
    keys = derive_session_keys(
        ecka(smdp_ot, public_from_point(session.ot_public)), host_id=HOST_ID, eid=pki.eid
    )
    channel = Scp03t(keys)
    body = isc + tlv(0xA0, channel.wrap(0x87, encode("ConfigureISDPRequest", {})))
    body += tlv(0xA1, b"".join(channel.wrap_segments(0x88, smr or metadata(), encrypted=False)))
    if replace_keys:
        body += tlv(0xA2, channel.wrap(0x87, encode("ReplaceSessionKeysRequest", PPK_VALUE)))
        channel = Scp03t(PPK)
    body += tlv(
        0xA3, b"".join(channel.wrap_segments(0x86, upp if upp is not None else builtin_upps()["op1"]))
    )
    return tlv(0xBF36, body)


def loader(pki: Pki, session: DownloadSession | None, store: ProfileStore, **kwargs: Any) -> BppLoader:
    return BppLoader(session, euicc_key=pki.euicc_key, eid=pki.eid, store=store, **kwargs)


def feed_all(load: BppLoader, segments: list[bytes]) -> tuple[list[LoadResult], ProfileStore]:
    results = []
    for segment in segments:
        result = load.feed(segment)
        results.append(result)
        if result.done:
            break
    return results, load.store


def pir(pki: Pki, result: LoadResult) -> dict[str, Any]:
    """The ProfileInstallationResult, decoded with the SGP.22 ASN.1 and its euiccSignPIR checked."""
    assert result.result_der is not None
    value = decode("ProfileInstallationResult", result.result_der)
    public = pki.euicc_cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    verify_plain(public, bytes(value["euiccSignPIR"]), signed_data_pir(data_der(result)))
    return dict(value["profileInstallationResultData"])


def data_der(result: LoadResult) -> bytes:
    """The DER of ProfileInstallationResultData inside the result."""
    assert result.result_der is not None
    ((_tag, inner, _raw),) = split_tlvs(result.result_der)
    return split_tlvs(inner)[0][2]


def oid_der(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER's DER (X.690 8.19), written out here as a check independent of asn1tools."""
    arcs = [int(arc) for arc in dotted.split(".")]
    body = b""
    for number in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [number & 0x7F]
        while number > 0x7F:
            number >>= 7
            chunk.insert(0, 0x80 | (number & 0x7F))
        body += bytes(chunk)
    return bytes([0x06, len(body)]) + body


def error_of(pki: Pki, result: LoadResult) -> tuple[int, int]:
    data = pir(pki, result)
    kind, final = data["finalResult"]
    assert kind == "errorResult"
    return final["bppCommandId"], final["errorReason"]


# --- the whole package -----------------------------------------------------------------------------------------


def test_segments_are_those_of_sgp22_2_5_5(pki: Pki) -> None:
    session = prepared_session(pki)
    bpp = build(pki, session, upp=encode_upp(builtin_upps()["op1"].decode() + "#" * 2100 + "\n"))
    segments = segment_bpp(bpp)
    tags = [segment[:2].hex().upper() if segment[0] == 0xBF else f"{segment[0]:02X}" for segment in segments]
    # BF36+BF23, A0+87, A1, 88, A3, three 86 (2 KiB of profile elements, at most 1020 bytes a segment)
    assert tags == ["BF36", "A0", "A1", "88", "A3", "86", "86", "86"]
    assert segments[0][5:7] == b"\xbf\x23" and segments[1][2] == 0x87  # BF36 82 LLLL, A0 L
    assert all(len(segment) <= 1020 for segment in segments[3:])
    assert b"".join(segments) == bpp


def test_installs_after_the_last_segment_only(pki: Pki) -> None:
    session = prepared_session(pki)
    store = ProfileStore()
    segments = segment_bpp(build(pki, session))
    load = loader(pki, session, store, seq_number=7)
    for segment in segments[:-1]:
        assert load.feed(segment) == LoadResult(done=False, segment=load.segments)
        assert store.profiles == []  # nothing installed half-way
    result = load.feed(segments[-1])
    assert result.done and result.error is None and result.iccid == OP1_ICCID
    assert result.keep_session is False  # SGP.22 3.1.3.3: the session ends with the install
    data = pir(pki, result)
    assert data["transactionId"] == TID
    # the DPpb certificate's SM-DP+ OID, compared as DER: asn1tools decodes an OID whose first two arcs make a
    # subidentifier over 127 (2.999...) wrongly, though it encodes it right
    assert oid_der(pki.smdp_oid) in data_der(result)
    assert data["notificationMetadata"]["seqNumber"] == 7
    assert data["notificationMetadata"]["iccid"] == iccid_bytes(OP1_ICCID)
    assert data["notificationMetadata"]["notificationAddress"] == "127.0.0.1:8443"
    assert data["finalResult"] == ("successResult", {"aid": result.aid, "simaResponse": b""})
    (profile,) = store.profiles
    assert (profile.iccid, profile.state, profile.ppr_ids) == (OP1_ICCID, ProfileState.DISABLED, ("ppr1",))
    assert (profile.name, profile.provider, profile.upp) == ("op1", "Operator One", builtin_upps()["op1"])
    assert load.feed(segments[-1]).result_der is None  # after the end: no second result


def test_replace_session_keys_protects_the_elements(pki: Pki) -> None:
    session = prepared_session(pki)
    segments = segment_bpp(build(pki, session, replace_keys=True))
    assert [s[0] for s in segments[:6]] == [0xBF, 0xA0, 0xA1, 0x88, 0xA2, 0xA3]
    results, store = feed_all(loader(pki, session, ProfileStore()), segments)
    assert results[-1].error is None and [p.iccid for p in store.profiles] == [OP1_ICCID]


@pytest.mark.parametrize("ppk", [None, PPK])
def test_round_trip_with_the_smdp_builder(pki: Pki, ppk: SessionKeys | None) -> None:
    """The SM-DP+'s own builder (uicc/euicc/bpp_build.py) and this loader agree, with and without profile
    protection keys."""
    from bipsim.uicc.euicc.bpp_build import build_bpp

    session = prepared_session(pki)
    assert session.ot_public is not None
    bpp = build_bpp(
        pki=pki,
        transaction_id=TID,
        euicc_otpk=session.ot_public,
        eid=pki.eid,
        metadata=metadata(profileClass=1),
        upp=builtin_upps()["op1"],
        ppk=ppk,
    )
    decode("BoundProfilePackage", bpp)  # SGP.22's ASN.1 reads it too
    results, store = feed_all(loader(pki, session, ProfileStore()), segment_bpp(bpp))
    assert results[-1].done and results[-1].error is None
    assert [(p.iccid, int(p.profile_class)) for p in store.profiles] == [(OP1_ICCID, 1)]


# --- failures: the SGP.22 error codes, nothing installed ------------------------------------------------------


def test_wrong_mac_is_a_security_error(pki: Pki) -> None:
    session = prepared_session(pki)
    segments = segment_bpp(build(pki, session))
    segments[-1] = segments[-1][:-1] + bytes([segments[-1][-1] ^ 1])
    results, store = feed_all(loader(pki, session, ProfileStore()), segments)
    assert results[-1].error == "scp03tSecurityError" and "wrong MAC" in results[-1].why
    assert error_of(pki, results[-1]) == (BppCommand.LOAD_PROFILE_ELEMENTS, ErrorReason.SCP03T_SECURITY_ERROR)
    assert store.profiles == []


def test_smdp_sign_of_another_key_is_invalid_signature(pki: Pki) -> None:
    session = prepared_session(pki)
    segments = segment_bpp(build(pki, session, signer=pki.dpauth_key))
    results, store = feed_all(loader(pki, session, ProfileStore()), segments)
    assert len(results) == 1 and results[0].done
    assert error_of(pki, results[0]) == (BppCommand.INITIALISE_SECURE_CHANNEL, ErrorReason.INVALID_SIGNATURE)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"transaction_id": bytes(16)}, ErrorReason.INVALID_TRANSACTION_ID),
        ({"key_type": 0x80}, ErrorReason.UNSUPPORTED_CRT_VALUES),
        ({"remote_op_id": 2}, ErrorReason.UNSUPPORTED_REMOTE_OPERATION_TYPE),
    ],
)
def test_initialise_secure_channel_checks(pki: Pki, change: dict[str, Any], reason: ErrorReason) -> None:
    session = prepared_session(pki)
    results, _ = feed_all(loader(pki, session, ProfileStore()), segment_bpp(build(pki, session, **change)))
    assert error_of(pki, results[0]) == (BppCommand.INITIALISE_SECURE_CHANNEL, reason)


def test_iccid_already_installed_stops_at_store_metadata(pki: Pki) -> None:
    session = prepared_session(pki)
    store = ProfileStore()
    store.install(iccid=OP1_ICCID, upp=builtin_upps()["op1"])
    results, _ = feed_all(loader(pki, session, store), segment_bpp(build(pki, session)))
    assert error_of(pki, results[-1]) == (
        BppCommand.STORE_METADATA,
        ErrorReason.INSTALL_FAILED_DUE_TO_ICCID_ALREADY_EXISTS_ON_EUICC,
    )
    assert len(store.profiles) == 1


def test_package_iccid_other_than_the_metadata_is_a_data_mismatch(pki: Pki) -> None:
    session = prepared_session(pki)
    results, store = feed_all(
        loader(pki, session, ProfileStore()), segment_bpp(build(pki, session, upp=builtin_upps()["op2"]))
    )
    assert results[-1].error == "installFailedDueToDataMismatch" and store.profiles == []


def test_profile_elements_that_are_no_package(pki: Pki) -> None:
    session = prepared_session(pki)
    results, store = feed_all(
        loader(pki, session, ProfileStore()), segment_bpp(build(pki, session, upp=b"\xff"))
    )
    assert results[-1].error == "installFailedDueToPEProcessingError" and store.profiles == []


def test_segments_out_of_order_and_garbage(pki: Pki) -> None:
    session = prepared_session(pki)
    segments = segment_bpp(build(pki, session))
    skipped = [segments[0], *segments[2:]]  # no ConfigureISDP
    results, _ = feed_all(loader(pki, session, ProfileStore()), skipped)
    assert error_of(pki, results[-1]) == (BppCommand.STORE_METADATA, ErrorReason.SCP03T_STRUCTURE_ERROR)
    with_keys = segment_bpp(build(pki, session, replace_keys=True))
    early = [with_keys[0], with_keys[4]]  # ReplaceSessionKeys right after InitialiseSecureChannel
    results, _ = feed_all(loader(pki, session, ProfileStore()), early)
    assert results[-1].segment == 2 and results[-1].error == "scp03tStructureError"
    assert error_of(pki, results[-1])[0] == BppCommand.REPLACE_SESSION_KEYS
    results, _ = feed_all(loader(pki, prepared_session(pki), ProfileStore()), [b"\x30\x00"])
    assert error_of(pki, results[0]) == (
        BppCommand.INITIALISE_SECURE_CHANNEL,
        ErrorReason.INCORRECT_INPUT_VALUES,
    )
    results, _ = feed_all(loader(pki, prepared_session(pki), ProfileStore()), [b""])
    assert results[0].error == "incorrectInputValues"


# --- the fault hook and the one-time key across a power cycle ------------------------------------------------


def test_fault_then_power_cycle_then_same_package_installs_when_the_key_is_kept(pki: Pki) -> None:
    session = prepared_session(pki)
    segments = segment_bpp(build(pki, session))
    store = ProfileStore()
    results, _ = feed_all(loader(pki, session, store, fault_at_segment=5, keep_otpk=True), segments)
    assert len(results) == 5 and results[-1].interrupted
    assert error_of(pki, results[-1]) == (
        BppCommand.LOAD_PROFILE_ELEMENTS,
        ErrorReason.INSTALL_FAILED_DUE_TO_INTERRUPTION,
    )
    assert results[-1].keep_session and store.profiles == []
    assert session.phase is SessionPhase.PREPARED  # waiting for the package again
    # the power cycle: the card keeps the session in its state file, the store too
    restored = DownloadSession.from_dict(session.to_dict())
    store_after = ProfileStore()
    store_after.load_dict(store.to_dict())
    # the card profile still names the fault: it fired once already, the retry goes through
    results, _ = feed_all(loader(pki, restored, store_after, fault_at_segment=5), segments)
    assert results[-1].error is None and [p.iccid for p in store_after.profiles] == [OP1_ICCID]


def test_without_the_kept_key_the_replayed_package_is_refused(pki: Pki) -> None:
    session = prepared_session(pki)
    segments = segment_bpp(build(pki, session))
    results, _ = feed_all(loader(pki, session, ProfileStore(), fault_at_segment=2, keep_otpk=False), segments)
    assert results[-1].interrupted and results[-1].keep_session is False
    # the ISD-R erased the session: the same package again meets no session it was bound to
    results, store = feed_all(loader(pki, None, ProfileStore(), keep_otpk=False), segments)
    assert len(results) == 1
    assert error_of(pki, results[0]) == (
        BppCommand.INITIALISE_SECURE_CHANNEL,
        ErrorReason.INVALID_TRANSACTION_ID,
    )
    assert store.profiles == []
    # and a new session (a new PrepareDownload, another one-time key) does not take the old package either
    results, _ = feed_all(loader(pki, prepared_session(pki, bytes(16)), ProfileStore()), segments)
    assert results[0].error == "invalidTransactionId"


def test_damaged_segments_never_install_and_never_raise(pki: Pki) -> None:
    """A changed bit, a cut or an added byte, a changed tag, anywhere in a package: an SGP.22 error result (no
    exception out of the loader), and nothing installed. Seeded, so every run damages the same way."""
    rng = random.Random(23)
    tried = 0
    while tried < 40:
        session = prepared_session(pki)
        segments = segment_bpp(build(pki, session, replace_keys=bool(tried % 2)))
        k = rng.randrange(len(segments))
        damaged = bytearray(segments[k])
        how = tried % 4
        if how == 0:
            damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        elif how == 1:
            damaged = damaged[: rng.randrange(len(damaged))]
        elif how == 2:
            damaged.append(rng.randrange(256))
        else:
            damaged[0] ^= 0x20
        segments[k] = bytes(damaged)
        results, store = feed_all(loader(pki, session, ProfileStore()), segments)
        assert results[-1].done and results[-1].error is not None and results[-1].result_der is not None
        assert store.profiles == []
        tried += 1
