"""The SM-DP+'s Bound Profile Package (uicc/euicc/bpp_build.py), opened as an eUICC would with nothing but the
SGP.22 ASN.1 (asn1tools) and the primitives of uicc/euicc/crypto.py: structure, smdpSign, the Annex G keys from
the eUICC's side, every segment's MAC and plaintext in order, segment sizes, ReplaceSessionKeys, and refusals.
The round trip through the eUICC's BppLoader is tests/test_euicc_bpp.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from bipsim.uicc.euicc import asn1
from bipsim.uicc.euicc.bpp_build import HOST_ID, BppBuildError, build_bpp
from bipsim.uicc.euicc.crypto import (
    MAX_SEGMENT,
    CryptoError,
    Scp03t,
    SessionKeys,
    derive_session_keys,
    ecka,
    generate_otk,
    isc_signed_part_from_der,
    point_bytes,
    public_from_point,
    signed_data_isc,
    split_tlvs,
    verify_plain,
)
from bipsim.uicc.euicc.pki import Pki, cert_public_key, generate_pki

TID = bytes.fromhex("0123456789abcdef0123456789abcdef")
METADATA: dict[str, Any] = {
    "iccid": bytes.fromhex("98440000000000214365"),
    "serviceProviderName": "bipsim operator",
    "profileName": "op1",
    "profilePolicyRules": (b"\x40", 3),  # ppr1
}


@pytest.fixture(scope="module")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return generate_pki(tmp_path_factory.mktemp("pki") / "p")


def _open(bpp: bytes, pki: Pki, euicc_ot: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """What an eUICC finds in `bpp`: decodes it, checks smdpSign, derives the keys and unwraps every segment."""
    value = asn1.decode("BoundProfilePackage", bpp)
    ((head, body),) = [(t, v) for t, v, _r in split_tlvs(bpp)]
    assert head == 0xBF36
    parts = split_tlvs(body)
    isc = value["initialiseSecureChannelRequest"]
    assert isc["remoteOpId"] == 1 and isc["transactionId"] == TID
    crt = isc["controlRefTemplate"]
    assert (crt["keyType"], crt["keyLen"], crt["hostId"]) == (b"\x88", b"\x10", HOST_ID)
    euicc_otpk = point_bytes(euicc_ot.public_key())
    verify_plain(
        cert_public_key(pki.dppb_cert),
        isc["smdpSign"],
        signed_data_isc(isc_signed_part_from_der(parts[0][2]), euicc_otpk),
    )
    keys = derive_session_keys(
        ecka(euicc_ot, public_from_point(isc["smdpOtpk"])), host_id=HOST_ID, eid=pki.eid
    )
    channel = Scp03t(keys)
    segments = {tag: [raw for _t, _v, raw in split_tlvs(v)] for tag, v, _r in parts[1:]}
    # the ASN.1 view and the raw segments agree: each element is the SCP03t TLV's value
    assert [
        raw[-len(v) :] for raw, v in zip(segments[0xA0], value["firstSequenceOf87"], strict=True)
    ] == value["firstSequenceOf87"]
    out: dict[str, Any] = {"segments": [s for seq in segments.values() for s in seq]}
    assert len(segments[0xA0]) == 1
    out["configure"] = channel.unwrap(segments[0xA0][0], tag=0x87)
    out["metadata"] = b"".join(channel.unwrap_mac_only(s, tag=0x88) for s in segments[0xA1])
    if 0xA2 in segments:
        rsk = asn1.decode("ReplaceSessionKeysRequest", channel.unwrap(segments[0xA2][0], tag=0x87))
        channel = Scp03t(SessionKeys(rsk["ppkEnc"], rsk["ppkCmac"], rsk["initialMacChainingValue"]))
        out["ppk"] = True
    out["upp"] = b"".join(channel.unwrap(s, tag=0x86) for s in segments[0xA3])
    assert [t for t, _v, _r in parts[1:]] == (
        [0xA0, 0xA1, 0xA2, 0xA3] if "ppk" in out else [0xA0, 0xA1, 0xA3]
    )
    return out


def test_a_bpp_opens_on_the_euicc_it_was_bound_to(test_pki: Pki) -> None:
    euicc_ot = generate_otk()
    upp = b'iccid = "8944000000001234567"\nimsi = "001010000000123"\n' + b"# padding\n" * 300
    bpp = build_bpp(
        pki=test_pki,
        transaction_id=TID,
        euicc_otpk=point_bytes(euicc_ot.public_key()),
        eid=test_pki.eid,
        metadata=METADATA,
        upp=upp,
    )
    got = _open(bpp, test_pki, euicc_ot)
    assert got["configure"] == bytes.fromhex("bf2400")
    assert asn1.decode("StoreMetadataRequest", got["metadata"])["profileName"] == "op1"
    assert got["metadata"] == asn1.encode("StoreMetadataRequest", METADATA)
    assert got["upp"] == upp
    assert len(got["segments"]) == 1 + 1 + 4  # 3054 bytes of UPP: four '86' segments of at most 1007
    assert max(len(s) for s in got["segments"]) == MAX_SEGMENT


def test_replace_session_keys_protects_the_profile_with_the_ppk(test_pki: Pki) -> None:
    euicc_ot = generate_otk()
    ppk = SessionKeys(s_enc=bytes(range(16)), s_mac=bytes(range(16, 32)), initial_mcv=bytes(range(32, 48)))
    bpp = build_bpp(
        pki=test_pki,
        transaction_id=TID,
        euicc_otpk=point_bytes(euicc_ot.public_key()),
        eid=test_pki.eid,
        metadata=asn1.encode("StoreMetadataRequest", METADATA),
        upp=b"profile",
        ppk=ppk,
    )
    got = _open(bpp, test_pki, euicc_ot)
    assert got["ppk"] and got["upp"] == b"profile"
    a3 = split_tlvs(split_tlvs(bpp)[0][1])[-1][1]
    assert Scp03t(ppk).unwrap(a3) == b"profile"  # the '86' segment is under the PPK, counter 1


def test_a_bpp_bound_to_another_euicc_does_not_open(test_pki: Pki) -> None:
    ot, other = generate_otk(), generate_otk()
    smdp_ot = generate_otk()
    kwargs: dict[str, Any] = dict(
        pki=test_pki, transaction_id=TID, eid=test_pki.eid, metadata=METADATA, upp=b"x"
    )
    bpp = build_bpp(euicc_otpk=point_bytes(ot.public_key()), smdp_ot_private=smdp_ot, **kwargs)
    # a fixed otSK.DP.ECKA binds the same way twice (ECDSA makes smdpSign differ, nothing else does)
    again = build_bpp(euicc_otpk=point_bytes(ot.public_key()), smdp_ot_private=smdp_ot, **kwargs)
    assert split_tlvs(split_tlvs(again)[0][1])[1:] == split_tlvs(split_tlvs(bpp)[0][1])[1:]
    with pytest.raises(CryptoError):  # smdpSign names ot's public key, not other's
        _open(bpp, test_pki, other)


def test_bad_inputs_are_refused(test_pki: Pki, tmp_path: Path) -> None:
    ot = point_bytes(generate_otk().public_key())
    good: dict[str, Any] = dict(
        pki=test_pki, transaction_id=TID, euicc_otpk=ot, eid=test_pki.eid, metadata=METADATA, upp=b"x"
    )
    for change, match in [
        ({"transaction_id": b""}, "transactionId"),
        ({"transaction_id": bytes(17)}, "transactionId"),
        ({"euicc_otpk": ot[:-1]}, "public key"),
        ({"eid": "123"}, "EID"),
        ({"metadata": {"iccid": b"\x01"}}, "metadata"),
        ({"metadata": b"\x30\x00"}, "metadata"),
        ({"upp": b""}, "empty"),
    ]:
        with pytest.raises(BppBuildError, match=match):
            build_bpp(**{**good, **change})
