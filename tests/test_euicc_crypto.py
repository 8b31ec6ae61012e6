"""SGP.22 cryptography (uicc/euicc/crypto.py) against published vectors: RFC 4493 (AES-CMAC), RFC 6979 A.2.5
(ECDSA P-256/SHA-256), RFC 5903 section 8.1 (ECDH P-256), and for the Annex G KDF and SCP03t the vectors of osmocom
pySim's tests/unittests/test_esim_bsp.py (hex dumps of a third-party SM-DP+ log, and a bound profile package with
its keys); then the error paths the eUICC relies on."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from bipsim.uicc.euicc import crypto
from bipsim.uicc.euicc.crypto import (
    CryptoError,
    Scp03t,
    Scp03tSecurityError,
    Scp03tStructureError,
    SessionKeys,
    derive_session_keys,
    ecka,
    isc_signed_part,
    isc_signed_part_from_der,
    point_bytes,
    public_from_point,
    sign_plain,
    signature_do,
    signed_data_euicc2,
    signed_data_isc,
    signed_data_smdp2,
    split_tlvs,
    tlv,
    verify_plain,
)

H = bytes.fromhex
EID = "89049032123451234512345678901235"


def test_aes_cmac_rfc4493_example2() -> None:
    assert crypto._cmac(H("2b7e151628aed2a6abf7158809cf4f3c"), H("6bc1bee22e409f96e93d7e117393172a")) == H(
        "070a16b46b4d4144f79bdd9dd04a287c"
    )


def _rfc6979_key() -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(
        int("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721", 16), ec.SECP256R1()
    )


def test_verify_plain_rfc6979_vector_and_its_negatives() -> None:
    pub = _rfc6979_key().public_key()
    assert point_bytes(pub) == H(
        "0460FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6"
        "7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299"
    )
    sig = H(
        "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716"
        "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8"
    )
    verify_plain(pub, sig, b"sample")
    with pytest.raises(CryptoError, match="does not verify"):
        verify_plain(pub, sig, b"samplf")
    with pytest.raises(CryptoError, match="64"):
        verify_plain(pub, sig[:63], b"sample")
    with pytest.raises(CryptoError, match="zero"):
        verify_plain(pub, bytes(32) + sig[32:], b"sample")


def test_sign_plain_is_64_bytes_and_verifies() -> None:
    key = _rfc6979_key()
    sig = sign_plain(key, b"euiccSigned1")
    assert len(sig) == 64
    verify_plain(key.public_key(), sig, b"euiccSigned1")
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CryptoError):
        verify_plain(other.public_key(), sig, b"euiccSigned1")
    with pytest.raises(CryptoError, match="P-256"):
        sign_plain(ec.generate_private_key(ec.SECP384R1()), b"x")


def test_ecka_rfc5903_p256() -> None:
    i = ec.derive_private_key(
        int("C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433", 16), ec.SECP256R1()
    )
    gr = public_from_point(
        H(
            "04D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63"
            "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB"
        )
    )
    assert ecka(i, gr) == H("D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE")


def test_public_from_point_refuses_bad_points() -> None:
    good = point_bytes(_rfc6979_key().public_key())
    assert point_bytes(public_from_point(good)) == good
    with pytest.raises(CryptoError, match="65"):
        public_from_point(good[1:])
    with pytest.raises(CryptoError, match="65"):
        public_from_point(b"\x02" + good[1:])
    with pytest.raises(CryptoError, match="not on"):
        public_from_point(good[:-1] + bytes([good[-1] ^ 1]))


@pytest.mark.parametrize(
    ("secret", "eid", "s_enc", "s_mac", "mcv"),
    [
        # pySim test_esim_bsp.py, BSP_Test.test_kdf
        (
            "8902dca391bbb22570fe60c176076246f568b1941265dff1d729e63039658089",
            "89049032123451234512345678901335",
            "d782d575b22a38334556a3d9a1e2ae6b",
            "a35addc192ae8f934e2932116c7e89e7",
            "734bc93ddb10c71c5ad13d420dc08b5b",
        ),
        # pySim test_esim_bsp.py, BSP_Test_mode51.test_kdf (a third-party SM-DP+'s log)
        (
            "c9a993dd4879a8f7161f2085410edd4f9652f1df37be097ba96ba2ca6be528fe",
            EID,
            "472f5bfadd97f21d34f3ce9b51b92751",
            "9ec07f5b36a13e12a991d66e294e6242",
            "406d507b448a699e7a36a38494debbde",
        ),
    ],
)
def test_annex_g_kdf(secret: str, eid: str, s_enc: str, s_mac: str, mcv: str) -> None:
    keys = derive_session_keys(H(secret), host_id=b"\x80" * 8, eid=eid)
    assert keys == SessionKeys(s_enc=H(s_enc), s_mac=H(s_mac), initial_mcv=H(mcv))
    assert derive_session_keys(H(secret), host_id=b"\x80" * 8, eid=H(eid)) == keys


def test_kdf_refuses_crt_values_sgp22_does_not_define() -> None:
    with pytest.raises(CryptoError, match="keyType"):
        derive_session_keys(bytes(32), host_id=b"h", eid=EID, key_type=0x80)
    with pytest.raises(CryptoError, match="keyType"):
        derive_session_keys(bytes(32), host_id=b"h", eid=EID, key_length=32)
    with pytest.raises(CryptoError, match="hostId"):
        derive_session_keys(bytes(32), host_id=bytes(17), eid=EID)
    with pytest.raises(CryptoError, match="EID"):
        derive_session_keys(bytes(32), host_id=b"h", eid="8904")


MODE51 = SessionKeys(
    s_enc=H("472f5bfadd97f21d34f3ce9b51b92751"),
    s_mac=H("9ec07f5b36a13e12a991d66e294e6242"),
    initial_mcv=H("406d507b448a699e7a36a38494debbde"),
)
# (tag, encrypted, plaintext, segment): pySim test_esim_bsp.py, BSP_Test_mode51.test_ciphering, in order
MODE51_SEGMENTS = [
    (0x87, True, "bf2400", "8718f6fe031e4b9cfe87c8e1e62f3fde85c49412d7722a6a2d89"),
    (
        0x88,
        False,
        "bf252d5a0a98001032547698103214910947534d415f54455354921147534d415f544553545f50524f46494c45950100",
        "8838bf252d5a0a98001032547698103214910947534d415f54455354921147534d415f544553545f50524f46494c45950100"
        "8a62cc9adbb5ccbc",
    ),
    (
        0x87,
        True,
        "bf26368010000102030405060708090a0b0c0d0e0f8110010102030405060708090a0b0c0d0e0f8210020102030405060708090a"
        "0b0c0d0e0f",
        "8748a14c800a001992351cd46ad2945654674369701d82b7b46567652bc8fbed234939fc57fba748015525fd6c651e9d3d133065"
        "2d42a0cfad950e912122af4ec5362d3c0bc535729c40",
    ),
]


def test_scp03t_wrap_matches_a_third_party_smdp() -> None:
    sm = Scp03t(MODE51)
    for tag, encrypted, plain, segment in MODE51_SEGMENTS:
        out = sm.wrap(tag, H(plain)) if encrypted else sm.wrap_mac_only(tag, H(plain))
        assert out == H(segment)


def test_scp03t_unwrap_the_same_segments_and_state_survives_a_power_cycle() -> None:
    card = Scp03t(MODE51)
    for tag, encrypted, plain, segment in MODE51_SEGMENTS:
        # a power cycle between two segments: the state goes through JSON-able values only
        card = Scp03t.from_state(dict(card.state()))
        got = card.unwrap(H(segment), tag=tag) if encrypted else card.unwrap_mac_only(H(segment), tag=tag)
        assert got == H(plain)
    assert card.counter == 4


def test_scp03t_unwraps_a_third_party_bound_profile_package() -> None:
    # pySim test_esim_bsp.py, TestBSPdecode: the start of its BPP (BF36: BF23, A0, A1) and the keys it gives.
    # That SM-DP+ put each SCP03t TLV inside its '87'/'88' OCTET STRING; the inner TLVs are the segments.
    bpp_head = H(
        "bf2381ae8201018010df9c0ef4041a47ee9bfdcf0ab10770eda61080018881011084086d61686c7a6569745f49410428050c72"
        "ffa166c71fdc2dd13bc5691134de52ce355bbdcc896e4c40a2b3d791a66fb871c84c8f6c7215034e250a1d5dde3939ad906307"
        "f872af6d61e4fd329c5f374077b0f81b36cf7a73eed22f84d0c84ddc15a497ee2c15a39cb768575a5b34398655fd200f7656cb"
        "86c2766cc42631f6c370d5e16472377d53cfe3f614a7ccbaf8"
        "a01c871a871850e770f3e03c33f0f2f662ebdd46b909d2b0402e4f8a44b6"
        "a13788358833bf25285a0a89000123456789012341910a4f736d6f636f6d53504e920e4f736d6f636f6d50726f66696c65"
        "d4df77c0bb135eb9"
    )
    isc, first87, seq88 = split_tlvs(bpp_head)
    keys = SessionKeys(
        s_enc=H("f11b921c302efb1df6bf218bf2de0dd8"),
        s_mac=H("8cd4d3a761eeac108641d5f4531a137e"),
        initial_mcv=H("ee3140eafd692b68eff40119b363bc6c"),
    )
    card = Scp03t(keys)
    assert card.unwrap(split_tlvs(first87[1])[0][1], tag=0x87) == H("bf2400")
    assert card.unwrap_mac_only(split_tlvs(seq88[1])[0][1], tag=0x88) == H(
        "bf25285a0a89000123456789012341910a4f736d6f636f6d53504e920e4f736d6f636f6d50726f66696c65"
    )
    # what smdpSign covers: remoteOpId, transactionId, the CRT (AES, 16, hostId "mahlzeit") and smdpOtpk
    signed = isc_signed_part_from_der(isc[2])
    parts = split_tlvs(signed)
    assert [t for t, _v, _r in parts] == [0x82, 0x80, 0xA6, 0x5F49]
    assert signed == isc_signed_part(
        transaction_id=parts[1][1], host_id=b"mahlzeit", smdp_otpk=parts[3][1], key_type=0x88, key_length=16
    )


def test_scp03t_round_trip_and_segment_limits() -> None:
    sm, card = Scp03t(MODE51), Scp03t(MODE51)
    data = bytes(range(256)) * 9  # 2304 bytes: three encrypted segments
    segments = sm.wrap_segments(0x86, data)
    assert len(segments) == 3
    assert max(len(s) for s in segments) == crypto.MAX_SEGMENT
    assert b"".join(card.unwrap(s, tag=0x86) for s in segments) == data
    meta = sm.wrap_segments(0x88, bytes(1009), encrypted=False)
    assert [len(s) for s in meta] == [1020, 1 + 1 + 1 + 8]
    assert b"".join(card.unwrap_mac_only(s) for s in meta) == bytes(1009)
    for n in (0, 15, 16, 17):  # the padding is always 1..16 bytes
        assert card.unwrap(sm.wrap(0x86, bytes(n))) == bytes(n)
    with pytest.raises(CryptoError, match="fit"):
        sm.wrap(0x86, bytes(1008))
    # a sender that applies the 1020 bytes to the plaintext before padding makes 1036-byte segments: accepted
    long_segment = sm._finish(0x86, _encrypt(sm, bytes(1008) + b"\x80" + bytes(15)))
    assert len(long_segment) == 1036
    assert card.unwrap(long_segment) == bytes(1008)


def test_scp03t_refuses_bad_segments_without_losing_its_state() -> None:
    sm = Scp03t(MODE51)
    seg = sm.wrap(0x86, b"profile elements")
    nxt = sm.wrap(0x86, b"more")
    card = Scp03t(MODE51)
    before = card.state()
    bad_mac = seg[:-1] + bytes([seg[-1] ^ 1])
    bad_ct = seg[:5] + bytes([seg[5] ^ 1]) + seg[6:]
    with pytest.raises(Scp03tSecurityError, match="MAC"):
        card.unwrap(bad_mac)
    with pytest.raises(Scp03tSecurityError, match="MAC"):
        card.unwrap(bad_ct)
    with pytest.raises(Scp03tSecurityError, match="MAC"):
        card.unwrap(nxt)  # out of order: the chain does not match
    with pytest.raises(Scp03tStructureError, match="tag"):
        card.unwrap(seg, tag=0x87)
    with pytest.raises(Scp03tStructureError, match="after the TLV"):
        card.unwrap(seg + b"\x00")
    with pytest.raises(Scp03tStructureError):
        card.unwrap(seg[:-1])
    with pytest.raises(Scp03tStructureError):
        card.unwrap(b"")
    with pytest.raises(Scp03tStructureError, match="shorter"):
        card.unwrap(H("860400000000"))
    assert card.state() == before
    assert card.unwrap(seg) == b"profile elements"
    assert card.unwrap(nxt) == b"more"


def _encrypt(sm: Scp03t, padded: bytes) -> bytes:
    """AES-CBC of already padded bytes under `sm`'s next ICV (a sender that pads its own way)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(sm.keys.s_enc), modes.CBC(sm._icv(sm.counter))).encryptor()
    return enc.update(padded) + enc.finalize()


def test_scp03t_bad_padding_under_a_good_mac_is_a_security_error() -> None:
    # a sender that encrypts without the '80' marker: the MAC is right, the padding is not
    sm = Scp03t(MODE51)
    segment = sm._finish(0x86, _encrypt(sm, bytes(16)))
    with pytest.raises(Scp03tSecurityError, match="padding"):
        Scp03t(MODE51).unwrap(segment)


def test_scp03t_from_state_refuses_garbage() -> None:
    good = Scp03t(MODE51).state()
    for broken in ({}, {**good, "counter": "1"}, {**good, "s_enc": "zz"}, {**good, "mac_chain": "00"}):
        with pytest.raises(CryptoError):
            Scp03t.from_state(broken)


def test_signed_data_concatenations() -> None:
    sig1, sig2 = bytes(range(64)), bytes(range(64, 128))
    assert signed_data_smdp2(b"\x30\x00", sig1) == b"\x30\x00\x5f\x37\x40" + sig1
    assert signed_data_euicc2(b"\x30\x00", sig2) == b"\x30\x00\x5f\x37\x40" + sig2
    otpk = point_bytes(_rfc6979_key().public_key())
    part = isc_signed_part(transaction_id=H("0102"), host_id=b"h", smdp_otpk=otpk)
    assert part.startswith(H("820101800201 02a609800188810110840168".replace(" ", "")))
    assert signed_data_isc(part, otpk) == part + b"\x5f\x49\x41" + otpk
    with pytest.raises(CryptoError):
        signature_do(bytes(63))
    assert tlv(0xBF23, bytes(200))[:4] == H("bf2381c8")


def test_isc_signed_part_from_der_refuses_malformed() -> None:
    otpk = point_bytes(_rfc6979_key().public_key())
    part = isc_signed_part(transaction_id=H("01"), host_id=b"h", smdp_otpk=otpk)
    good = tlv(0xBF23, part + signature_do(bytes(64)))
    assert isc_signed_part_from_der(good) == part
    for bad in (tlv(0xBF24, part + signature_do(bytes(64))), tlv(0xBF23, part), good[:-1], good + b"\x00"):
        with pytest.raises(CryptoError):
            isc_signed_part_from_der(bad)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.binary(max_size=600), st.sampled_from([0x86, 0x87, 0x88]))
def test_peer_bytes_only_ever_raise_crypto_error(data: bytes, tag: int) -> None:
    """Whatever a peer sends where a segment, a TLV list, an InitialiseSecureChannelRequest or a point belongs,
    the answer is a value or a CryptoError (the eUICC's SGP.22 error), never another exception."""
    card = Scp03t(MODE51)
    state = card.state()
    for call in (
        lambda: card.unwrap(data),
        lambda: card.unwrap(bytes([tag]) + data, tag=tag),
        lambda: card.unwrap_mac_only(data),
        lambda: split_tlvs(data),
        lambda: isc_signed_part_from_der(b"\xbf\x23" + data),
        lambda: public_from_point(b"\x04" + data),
    ):
        try:
            call()
        except CryptoError:
            pass
    assert card.state() == state  # random bytes never pass the MAC
