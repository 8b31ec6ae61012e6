"""The cryptography of GSMA SGP.22 (RSP Technical Specification v2.2-2.5) that the eUICC and the SM-DP+ share.

- Signatures (SGP.22 section 2.6, 5.5-5.7): ECDSA on NIST P-256 with SHA-256, carried in the plain r||s form of
  BSI TR-03111 (64 bytes, the value of the '5F37' data objects), never the DER form X.509 uses. What exactly is
  signed for each signature is in the `signed_data_*` helpers.
- Key agreement (SGP.22 section 2.6, Annex G): ECKA-DH of TR-03111 (the shared secret is the x coordinate) between
  the one-time keys otSK.EUICC.ECKA / otPK.DP.ECKA, then the X9.63 KDF with SHA-256 over the shared secret and the
  shared info keyType || keyLength || L(hostId) || hostId || L(EID) || EID, whose 48 bytes are the initial MAC
  chaining value, S-ENC and S-MAC (`derive_session_keys`).
- SCP03t (SGP.22 section 2.6; called BSP from v3.0, its section 2.6.4): each Bound Profile Package segment is a TLV ('86',
  '87', '88') whose value is AES-128-CBC ciphertext (padding '80 00..', ICV = AES(S-ENC, block counter)) followed by
  the 8-byte C-MAC, an AES-CMAC over the MAC chaining value, the tag, the final length and the ciphertext; the full
  16-byte CMAC is the next chaining value. '88' segments (the profile metadata) are MAC only; the counter moves on
  for them too. A segment we make is at most 1020 bytes with its tag, length and MAC (section 2.5.5); a longer one
  is accepted (some SM-DP+s apply the limit to the plaintext before its padding).

Public keys travel as 65-byte uncompressed points ('04' || X || Y, the value of the '5F49' data objects).
See docs/protocols.md, "eUICC and the cloud backup".
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "AES_KEY_TYPE",
    "MAX_SEGMENT",
    "CryptoError",
    "Scp03t",
    "Scp03tSecurityError",
    "Scp03tStructureError",
    "SessionKeys",
    "derive_session_keys",
    "ecka",
    "eid_bytes",
    "generate_otk",
    "isc_signed_part",
    "isc_signed_part_from_der",
    "point_bytes",
    "public_from_point",
    "sign_plain",
    "signature_do",
    "signed_data_euicc1",
    "signed_data_euicc2",
    "signed_data_isc",
    "signed_data_pir",
    "signed_data_server1",
    "signed_data_smdp2",
    "split_tlvs",
    "tlv",
    "verify_plain",
]

CURVE = ec.SECP256R1()
SIGNATURE_LEN = 64
POINT_LEN = 65
# GlobalPlatform Card Specification table 11-16 as SGP.22's ControlRefTemplate uses it: '88' is AES; SGP.22 knows
# only 16-byte keys.
AES_KEY_TYPE = 0x88
AES_KEY_LENGTH = 16
MAC_LEN = 8
BLOCK = 16
# SGP.22 section 2.5.5: a segment of the Bound Profile Package, tag, length and MAC included.
MAX_SEGMENT = 1020
SIGNATURE_TAG = 0x5F37
OTPK_TAG = 0x5F49


class CryptoError(ValueError):
    """A signature, key, certificate or protected segment that does not check out (the message says which)."""


class Scp03tStructureError(CryptoError):
    """An SCP03t segment that is not a well-formed TLV of the expected tag and length (scp03tStructureError)."""


class Scp03tSecurityError(CryptoError):
    """An SCP03t segment whose MAC or padding is wrong (scp03tSecurityError)."""


# --- DER/BER-TLV, as far as SGP.22's data objects need it --------------------------------------------------------


def _encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, value: bytes) -> bytes:
    """A DER TLV with a one- or two-byte tag (tags such as '5F37' are given as 0x5F37)."""
    tag_bytes = tag.to_bytes(2 if tag > 0xFF else 1, "big")
    return tag_bytes + _encode_length(len(value)) + value


def _read_tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the TLV at `pos`; CryptoError when it is cut."""
    if pos >= len(data):
        raise CryptoError("TLV: no tag")
    tag = data[pos]
    pos += 1
    if tag & 0x1F == 0x1F:  # ISO 7816-4 / X.690: more tag bytes follow, each with b8 set but the last
        while True:
            if pos >= len(data):
                raise CryptoError("TLV: tag cut short")
            tag = (tag << 8) | data[pos]
            pos += 1
            if not data[pos - 1] & 0x80:
                break
    if pos >= len(data):
        raise CryptoError("TLV: no length")
    first = data[pos]
    pos += 1
    if first < 0x80:
        length = first
    elif first in (0x81, 0x82, 0x83):
        count = first & 0x7F
        if pos + count > len(data):
            raise CryptoError("TLV: length cut short")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    else:
        raise CryptoError(f"TLV: unsupported length byte {first:02X}")
    if pos + length > len(data):
        raise CryptoError(f"TLV: value of {length} bytes, {len(data) - pos} present")
    return tag, pos, pos + length


def split_tlvs(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """The TLVs that make up `data`, each as (tag, value, the whole TLV's bytes); CryptoError on a cut TLV."""
    out: list[tuple[int, bytes, bytes]] = []
    pos = 0
    while pos < len(data):
        tag, vstart, vend = _read_tlv(data, pos)
        out.append((tag, data[vstart:vend], data[pos:vend]))
        pos = vend
    return out


# --- ECDSA in the TR-03111 plain form --------------------------------------------------------------------------


def _check_curve(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> None:
    if not isinstance(key.curve, ec.SECP256R1):
        raise CryptoError(f"key on curve {key.curve.name}, SGP.22 here uses NIST P-256")


def sign_plain(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA-SHA256 over `data`, as the 64-byte r||s of TR-03111 that SGP.22's '5F37' objects carry."""
    _check_curve(key)
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify_plain(pub: ec.EllipticCurvePublicKey, sig: bytes, data: bytes) -> None:
    """Checks a TR-03111 r||s signature over `data`; CryptoError when it is not 64 bytes or does not verify."""
    _check_curve(pub)
    if len(sig) != SIGNATURE_LEN:
        raise CryptoError(f"signature of {len(sig)} bytes, r||s is {SIGNATURE_LEN}")
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (0 < r and 0 < s):
        raise CryptoError("signature: r or s is zero")
    try:
        pub.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CryptoError("signature does not verify") from None


def signature_do(sig: bytes) -> bytes:
    """The '5F37' data object of a signature (what SGP.22 concatenates into the next signed data)."""
    if len(sig) != SIGNATURE_LEN:
        raise CryptoError(f"signature of {len(sig)} bytes, r||s is {SIGNATURE_LEN}")
    return tlv(SIGNATURE_TAG, sig)


# --- what each SGP.22 signature covers -------------------------------------------------------------------------


def signed_data_server1(server_signed1_der: bytes) -> bytes:
    """serverSignature1 (SM-DP+, DPauth key; SGP.22 5.6.1/5.7.13): over the DER of ServerSigned1, tag '30' included."""
    return server_signed1_der


def signed_data_euicc1(euicc_signed1_der: bytes) -> bytes:
    """euiccSignature1 (eUICC key; SGP.22 5.7.13): over the DER of EuiccSigned1, tag '30' included."""
    return euicc_signed1_der


def signed_data_smdp2(smdp_signed2_der: bytes, euicc_signature1: bytes) -> bytes:
    """smdpSignature2 (DPpb key; SGP.22 5.6.3/5.7.5): over the DER of SmdpSigned2 followed by euiccSignature1 as
    its '5F37' data object."""
    return smdp_signed2_der + signature_do(euicc_signature1)


def signed_data_euicc2(euicc_signed2_der: bytes, smdp_signature2: bytes) -> bytes:
    """euiccSignature2 (eUICC key; SGP.22 5.7.5): over the DER of EUICCSigned2 followed by smdpSignature2 as its
    '5F37' data object."""
    return euicc_signed2_der + signature_do(smdp_signature2)


def signed_data_pir(pir_data_der: bytes) -> bytes:
    """euiccSignPIR (eUICC key; SGP.22 5.7.6 ProfileInstallationResult): over the DER of
    ProfileInstallationResultData, tag 'BF27' included."""
    return pir_data_der


def isc_signed_part(
    *,
    transaction_id: bytes,
    host_id: bytes,
    smdp_otpk: bytes,
    key_type: int = AES_KEY_TYPE,
    key_length: int = AES_KEY_LENGTH,
    remote_op_id: int = 1,
) -> bytes:
    """The data objects of InitialiseSecureChannelRequest (SGP.22 5.5.1) that smdpSign covers, in their order:
    remoteOpId '82' (installBoundProfilePackage = 1), transactionId '80', controlRefTemplate 'A6' (keyType '80',
    keyLen '81', hostId '84') and smdpOtpk '5F49'. The request is these followed by smdpSign '5F37'."""
    crt = tlv(0x80, bytes([key_type])) + tlv(0x81, bytes([key_length])) + tlv(0x84, host_id)
    return (
        tlv(0x82, bytes([remote_op_id]))
        + tlv(0x80, transaction_id)
        + tlv(0xA6, crt)
        + tlv(OTPK_TAG, smdp_otpk)
    )


def isc_signed_part_from_der(isc_der: bytes) -> bytes:
    """The bytes smdpSign covers, cut from a received InitialiseSecureChannelRequest ('BF23'): every data object
    before smdpSign exactly as sent. CryptoError when it is not a 'BF23' TLV ending in a '5F37'."""
    items = split_tlvs(isc_der)
    if len(items) != 1 or items[0][0] != 0xBF23:
        raise CryptoError("InitialiseSecureChannelRequest: not one 'BF23' TLV")
    inner = split_tlvs(items[0][1])
    if not inner or inner[-1][0] != SIGNATURE_TAG:
        raise CryptoError("InitialiseSecureChannelRequest: smdpSign '5F37' is not its last data object")
    return b"".join(raw for _tag, _value, raw in inner[:-1])


def signed_data_isc(signed_part: bytes, euicc_otpk: bytes) -> bytes:
    """smdpSign (DPpb key; SGP.22 5.5.1): over remoteOpId, transactionId, controlRefTemplate and smdpOtpk (see
    `isc_signed_part`) followed by the eUICC's otPK.EUICC.ECKA as a '5F49' data object, which binds the package to
    the one-time key of this eUICC's PrepareDownload."""
    return signed_part + tlv(OTPK_TAG, euicc_otpk)


# --- keys ------------------------------------------------------------------------------------------------------


def point_bytes(pub: ec.EllipticCurvePublicKey) -> bytes:
    """The 65-byte uncompressed point '04' || X || Y of a P-256 public key."""
    _check_curve(pub)
    return pub.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def public_from_point(data: bytes) -> ec.EllipticCurvePublicKey:
    """The P-256 public key of an uncompressed point; CryptoError when it is not 65 bytes '04'.. on the curve."""
    if len(data) != POINT_LEN or data[0] != 0x04:
        raise CryptoError(f"public key: {len(data)} bytes, an uncompressed P-256 point is 65 starting '04'")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(CURVE, data)
    except ValueError:
        raise CryptoError("public key: the point is not on P-256") from None


def generate_otk() -> ec.EllipticCurvePrivateKey:
    """A fresh one-time ECKA key pair (otSK/otPK.EUICC.ECKA or .DP.ECKA) on P-256."""
    return ec.generate_private_key(CURVE)


def ecka(private: ec.EllipticCurvePrivateKey, peer_public: ec.EllipticCurvePublicKey) -> bytes:
    """ECKA-DH of TR-03111: the 32-byte x coordinate of private * peer_public (the shared secret ShS)."""
    _check_curve(private)
    _check_curve(peer_public)
    return private.exchange(ec.ECDH(), peer_public)


def eid_bytes(eid: str | bytes) -> bytes:
    """The EID as the 16 bytes SGP.22 carries ('5A' data object): its 32 decimal digits packed two a byte."""
    if isinstance(eid, bytes):
        if len(eid) != 16:
            raise CryptoError(f"EID of {len(eid)} bytes, not 16")
        return eid
    if len(eid) != 32 or not eid.isdigit():
        raise CryptoError(f"EID {eid!r}: not 32 decimal digits")
    return bytes.fromhex(eid)


@dataclass(frozen=True)
class SessionKeys:
    """The SCP03t session keys of one download (or the PPK keys of ReplaceSessionKeys): 16 bytes each."""

    s_enc: bytes
    s_mac: bytes
    initial_mcv: bytes

    def __post_init__(self) -> None:
        for name in ("s_enc", "s_mac", "initial_mcv"):
            if len(getattr(self, name)) != AES_KEY_LENGTH:
                raise CryptoError(f"session key {name}: {len(getattr(self, name))} bytes, not 16")


def derive_session_keys(
    shared_secret: bytes,
    *,
    host_id: bytes,
    eid: str | bytes,
    key_type: int = AES_KEY_TYPE,
    key_length: int = AES_KEY_LENGTH,
) -> SessionKeys:
    """SGP.22 Annex G: X9.63 KDF with SHA-256 over ShS with the shared info keyType || keyLength ||
    L(hostId) || hostId || L(EID) || EID; output initial MCV || S-ENC || S-MAC. CryptoError for a control
    reference template SGP.22 does not define (keyType other than AES '88', keyLength other than 16, hostId not
    1..16 bytes): the eUICC answers those with unsupportedCrtValues."""
    if key_type != AES_KEY_TYPE or key_length != AES_KEY_LENGTH:
        raise CryptoError(f"control reference template: keyType {key_type:02X} keyLength {key_length}")
    if not 1 <= len(host_id) <= 16:
        raise CryptoError(f"control reference template: hostId of {len(host_id)} bytes, 1..16")
    eid16 = eid_bytes(eid)
    shared_info = (
        bytes([key_type, key_length]) + _encode_length(len(host_id)) + host_id + _encode_length(16) + eid16
    )
    out = X963KDF(algorithm=hashes.SHA256(), length=3 * AES_KEY_LENGTH, sharedinfo=shared_info).derive(
        shared_secret
    )
    return SessionKeys(s_enc=out[16:32], s_mac=out[32:48], initial_mcv=out[0:16])


# --- SCP03t ----------------------------------------------------------------------------------------------------


def _cmac(key: bytes, data: bytes) -> bytes:
    mac = CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def _aes_ecb_block(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


class Scp03t:
    """One direction of one SCP03t session (SGP.22 2.6): the block counter and MAC chaining value live here, so
    segments must pass through it in the order they are sent. `wrap*` for the SM-DP+, `unwrap*` for the eUICC; a
    segment that fails to unwrap leaves the state as it was. `state()`/`from_state()` keep it across a power cycle.
    ReplaceSessionKeys starts a new instance with the PPK keys (counter 1, its initial MCV)."""

    def __init__(self, keys: SessionKeys, *, counter: int = 1, mac_chain: bytes | None = None) -> None:
        self.keys = keys
        self.counter = counter
        self.mac_chain = keys.initial_mcv if mac_chain is None else mac_chain
        if len(self.mac_chain) != BLOCK or not 1 <= counter < 1 << 128:
            raise CryptoError("SCP03t state: bad MAC chaining value or counter")

    # the state across a power cycle
    def state(self) -> dict[str, str | int]:
        """A JSON-able dict of the keys, the counter and the MAC chaining value."""
        return {
            "s_enc": self.keys.s_enc.hex(),
            "s_mac": self.keys.s_mac.hex(),
            "initial_mcv": self.keys.initial_mcv.hex(),
            "mac_chain": self.mac_chain.hex(),
            "counter": self.counter,
        }

    @classmethod
    def from_state(cls, state: dict[str, str | int]) -> Scp03t:
        """The instance `state()` described; CryptoError when the dict is not one."""
        try:
            keys = SessionKeys(
                s_enc=bytes.fromhex(str(state["s_enc"])),
                s_mac=bytes.fromhex(str(state["s_mac"])),
                initial_mcv=bytes.fromhex(str(state["initial_mcv"])),
            )
            counter = state["counter"]
            if not isinstance(counter, int) or isinstance(counter, bool):
                raise CryptoError("SCP03t state: counter is not an integer")
            return cls(keys, counter=counter, mac_chain=bytes.fromhex(str(state["mac_chain"])))
        except (KeyError, ValueError, TypeError) as exc:
            if isinstance(exc, CryptoError):
                raise
            raise CryptoError(f"SCP03t state: {exc}") from None

    # segment sizes
    @staticmethod
    def max_plain(*, encrypted: bool = True) -> int:
        """The most plaintext one segment carries so that tag, length, value and MAC fit MAX_SEGMENT (1020): 1007
        bytes encrypted (the padding always adds 1..16 bytes), 1008 MAC only."""
        room = MAX_SEGMENT - 1 - len(_encode_length(MAX_SEGMENT)) - MAC_LEN  # 1008
        return room - 1 if encrypted else room

    # protecting
    def _icv(self, counter: int) -> bytes:
        # SGP.22 2.6 (v3.0: 2.6.4.4): the block counter, left-padded with zeroes to a block, encrypted with S-ENC.
        return _aes_ecb_block(self.keys.s_enc, counter.to_bytes(BLOCK, "big"))

    def _mac(self, chain: bytes, header: bytes, body: bytes) -> bytes:
        return _cmac(self.keys.s_mac, chain + header + body)

    def wrap(self, tag: int, plaintext: bytes) -> bytes:
        """One encrypted and MACed segment: tag || L || AES-CBC(pad(plaintext)) || C-MAC."""
        if len(plaintext) > self.max_plain(encrypted=True):
            raise CryptoError(f"SCP03t: {len(plaintext)} bytes do not fit one segment")
        padded = plaintext + b"\x80" + bytes(-(len(plaintext) + 1) % BLOCK)
        enc = Cipher(algorithms.AES(self.keys.s_enc), modes.CBC(self._icv(self.counter))).encryptor()
        ciphertext = enc.update(padded) + enc.finalize()
        return self._finish(tag, ciphertext)

    def wrap_mac_only(self, tag: int, data: bytes) -> bytes:
        """One MAC-only segment ('88', the profile metadata the LPA may read): tag || L || data || C-MAC."""
        if len(data) > self.max_plain(encrypted=False):
            raise CryptoError(f"SCP03t: {len(data)} bytes do not fit one segment")
        return self._finish(tag, data)

    def _finish(self, tag: int, body: bytes) -> bytes:
        if not 0 <= tag <= 0xFF:
            raise CryptoError(f"SCP03t: tag {tag:X} is not one byte")
        header = bytes([tag]) + _encode_length(len(body) + MAC_LEN)
        full = self._mac(self.mac_chain, header, body)
        self.mac_chain = full
        self.counter += 1
        return header + body + full[:MAC_LEN]

    def wrap_segments(self, tag: int, data: bytes, *, encrypted: bool = True) -> list[bytes]:
        """`data` cut into as many segments as it needs (at least one), each wrapped."""
        size = self.max_plain(encrypted=encrypted)
        chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        if encrypted:
            return [self.wrap(tag, chunk) for chunk in chunks]
        return [self.wrap_mac_only(tag, chunk) for chunk in chunks]

    # checking
    def _check(self, segment: bytes, tag: int | None) -> tuple[int, bytes, bytes]:
        """(tag, body, full MAC) of a segment whose MAC is right, the state untouched."""
        try:
            got_tag, vstart, vend = _read_tlv(segment, 0)
        except CryptoError as exc:
            raise Scp03tStructureError(f"SCP03t segment: {exc}") from None
        if vend != len(segment):
            raise Scp03tStructureError(f"SCP03t segment: {len(segment) - vend} bytes after the TLV")
        if got_tag > 0xFF or (tag is not None and got_tag != tag):
            want = "any" if tag is None else f"{tag:02X}"
            raise Scp03tStructureError(f"SCP03t segment: tag {got_tag:02X}, expected {want}")
        if vend - vstart < MAC_LEN:
            raise Scp03tStructureError("SCP03t segment shorter than its MAC")
        body = segment[vstart : vend - MAC_LEN]
        full = self._mac(self.mac_chain, segment[:vstart], body)
        if not hmac.compare_digest(full[:MAC_LEN], segment[vend - MAC_LEN : vend]):
            raise Scp03tSecurityError("SCP03t segment: wrong MAC")
        return got_tag, body, full

    def unwrap(self, tlv_bytes: bytes, *, tag: int | None = None) -> bytes:
        """The plaintext of an encrypted segment ('86'/'87'); Scp03tStructureError for a malformed TLV or a
        ciphertext that is not whole blocks, Scp03tSecurityError for a wrong MAC or padding."""
        _tag, body, full = self._check(tlv_bytes, tag)
        if not body or len(body) % BLOCK:
            raise Scp03tStructureError(f"SCP03t segment: ciphertext of {len(body)} bytes is not whole blocks")
        dec = Cipher(algorithms.AES(self.keys.s_enc), modes.CBC(self._icv(self.counter))).decryptor()
        padded = dec.update(body) + dec.finalize()
        stripped = padded.rstrip(b"\x00")
        if not stripped or stripped[-1] != 0x80 or len(padded) - len(stripped) >= BLOCK:
            raise Scp03tSecurityError("SCP03t segment: wrong padding")
        self.mac_chain = full
        self.counter += 1
        return stripped[:-1]

    def unwrap_mac_only(self, tlv_bytes: bytes, *, tag: int | None = None) -> bytes:
        """The data of a MAC-only segment ('88'); the errors of `unwrap`."""
        _tag, body, full = self._check(tlv_bytes, tag)
        self.mac_chain = full
        self.counter += 1
        return body
