"""The SM-DP+ side of profile binding: builds the Bound Profile Package for one eUICC (GSMA SGP.22 2.5.5, 5.5).

BoundProfilePackage (BF36) holds, in this order (SGP.22 2.5.5 and the ASN.1 of section 5.5):

- InitialiseSecureChannelRequest (BF23): remoteOpId installBoundProfilePackage, the session's transactionId, the
  control reference template (AES '88', 16-byte keys, our hostId), the SM-DP+'s one-time key otPK.DP.ECKA ('5F49')
  and smdpSign ('5F37', the DPpb key over those data objects and the eUICC's otPK.EUICC.ECKA, SGP.22 5.5.1);
- firstSequenceOf87 (A0): ConfigureISDPRequest (BF24) in one '87' segment, encrypted and MACed with the session
  keys of Annex G (uicc/euicc/crypto.py: ECKA of otSK.DP.ECKA with otPK.EUICC.ECKA, then the X9.63 KDF);
- sequenceOf88 (A1): StoreMetadataRequest (BF25, the profile metadata the SM-DP+ also sent in authenticateClient)
  in '88' segments, MACed only so the LPA can read it;
- secondSequenceOf87 (A2), only with profile protection keys: ReplaceSessionKeysRequest (BF26) in one '87'
  segment; the '86' segments then use those keys (a new SCP03t chain; the protected profile package of SGP.22 2.5.3);
- sequenceOf86 (A3): the profile package (here the UPP of uicc/euicc/upp.py) in '86' segments of at most 1020
  bytes with tag, length and MAC.

Each element of the SEQUENCE OF is the SCP03t TLV itself (its '87'/'88'/'86' tag and length are the element's),
so the package decodes as BoundProfilePackage with the ASN.1 of uicc/euicc/rsp.asn. The eUICC side is
uicc/euicc/bpp_loader.py. See docs/protocols.md, "eUICC and the cloud backup".
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from bipsim.uicc.euicc.asn1 import Asn1Error, decode, encode
from bipsim.uicc.euicc.crypto import (
    CryptoError,
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
    tlv,
)
from bipsim.uicc.euicc.pki import Pki

__all__ = ["HOST_ID", "BppBuildError", "build_bpp"]

# the hostId of the control reference template (SGP.22 5.5.1: 1..16 bytes chosen by the SM-DP+)
HOST_ID = b"bipsim-smdp+"


class BppBuildError(ValueError):
    """The inputs cannot make a Bound Profile Package (a bad one-time key, transactionId, metadata or UPP)."""


def build_bpp(
    *,
    pki: Pki,
    transaction_id: bytes,
    euicc_otpk: bytes,
    eid: str,
    metadata: dict[str, Any] | bytes,
    upp: bytes,
    smdp_ot_private: ec.EllipticCurvePrivateKey | None = None,
    ppk: SessionKeys | None = None,
    host_id: bytes = HOST_ID,
) -> bytes:
    """The DER of the BoundProfilePackage binding `upp` to the eUICC whose PrepareDownload gave `euicc_otpk`.

    `metadata` is StoreMetadataRequest as an asn1tools value (or its DER); `ppk`, when given, are the profile
    protection keys of ReplaceSessionKeys; `smdp_ot_private` fixes otSK.DP.ECKA (a fresh one otherwise).
    BppBuildError says which input is wrong.
    """
    if not 1 <= len(transaction_id) <= 16:
        raise BppBuildError(f"transactionId of {len(transaction_id)} bytes, SGP.22 allows 1..16")
    if not upp:
        raise BppBuildError("empty profile package")
    try:
        metadata_der = metadata if isinstance(metadata, bytes) else encode("StoreMetadataRequest", metadata)
        decode("StoreMetadataRequest", metadata_der)
    except Asn1Error as exc:
        raise BppBuildError(f"profile metadata: {exc}") from None
    try:
        euicc_public = public_from_point(euicc_otpk)
        smdp_ot = smdp_ot_private if smdp_ot_private is not None else generate_otk()
        smdp_otpk = point_bytes(smdp_ot.public_key())
        keys = derive_session_keys(ecka(smdp_ot, euicc_public), host_id=host_id, eid=eid)
    except CryptoError as exc:
        raise BppBuildError(str(exc)) from None

    signed_part = isc_signed_part(transaction_id=transaction_id, host_id=host_id, smdp_otpk=smdp_otpk)
    smdp_sign = sign_plain(pki.dppb_key, signed_data_isc(signed_part, euicc_otpk))
    isc = tlv(0xBF23, signed_part + signature_do(smdp_sign))

    channel = Scp03t(keys)
    body = isc
    body += tlv(0xA0, b"".join(channel.wrap_segments(0x87, encode("ConfigureISDPRequest", {}))))
    body += tlv(0xA1, b"".join(channel.wrap_segments(0x88, metadata_der, encrypted=False)))
    if ppk is not None:
        replace = encode(
            "ReplaceSessionKeysRequest",
            {"initialMacChainingValue": ppk.initial_mcv, "ppkEnc": ppk.s_enc, "ppkCmac": ppk.s_mac},
        )
        body += tlv(0xA2, b"".join(channel.wrap_segments(0x87, replace)))
        channel = Scp03t(ppk)
    body += tlv(0xA3, b"".join(channel.wrap_segments(0x86, upp)))
    return tlv(0xBF36, body)
