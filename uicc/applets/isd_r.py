"""The ISD-R of the eUICC (GSMA SGP.22 v2.2-2.5): the ES10a/b/c functions of section 5.7 over STORE DATA, sans-IO.

AID A0000005591010FFFFFFFF8900000100, installed by the profile name `isd-r` (the built-in card profile `euicc`).
An ES10 request is the DER of its SGP.22 type, carried by STORE DATA (GlobalPlatform Card Specification 11.11,
SGP.22 5.7.1): class 80-83 or C0-CF, INS E2, P1 11 for a block with more to come and 91 for the last, P2 the block
number from 00. A block out of order (or not 00 first) is 6A80, a request over 64 KiB 6700, another P1 6A86, an
empty block 6700, another instruction 6D00, a class that is not proprietary 6E00; the assembly is dropped on any
of them. The answer to the last block is the DER of the response, which the card hands out with 61 xx and GET
RESPONSE (uicc/applets/__init__.py). A request the eUICC cannot read (a tag it does not serve, DER that does not
decode) is 6A80 when the function has no error answer of its own, else that function's SGP.22 error code
(undefinedError 127, or the code SGP.22 names for the case) in a normal 90 00 answer.

Functions, by the tag of their request: GetEUICCInfo1 BF20 and GetEUICCInfo2 BF22, GetEID BF3E, GetEUICCChallenge
BF2E, GetEuiccConfiguredAddresses BF3C, SetDefaultDpAddress BF3F, GetRAT BF43 (the Rules Authorisation Table),
AuthenticateServer BF38 (checks the RSP server certificate against the CI the request names, serverSignature1,
the challenge; answers euiccSigned1 signed with SK.EUICC.ECDSA and the eUICC and EUM certificates),
PrepareDownload BF21 (checks CERT.DPpb.ECDSA, the
transactionId and smdpSignature2; makes otPK/otSK.EUICC.ECKA), LoadBoundProfilePackage (a STORE DATA sequence per
BPP segment starting with BF36: the BPP loader, uicc/euicc/bpp_loader.py, answers 90 00 with no data until the
last segment or a failure, then the ProfileInstallationResult BF37), GetProfilesInfo BF2D, EnableProfile BF31,
DisableProfile BF32, DeleteProfile BF33, SetNickname BF29, ListNotification BF28, RetrieveNotificationsList BF2B,
RemoveNotificationFromList BF30, CancelSession BF41. An EnableProfile or DisableProfile that succeeded with
refreshFlag true makes a proactive REFRESH pending (SGP.22 3.2.1 and 5.7.16-17: the eUICC asks the terminal to
take the new profile): mode 09 "eUICC Profile State Change" when the terminal profile has that bit (TS 102 223
section 5.2, byte 34 bit 6), else 04 "UICC Reset"; the card hands it out with its 91 xx (uicc/card.py,
`take_proactive`). The download session, the installed profiles and the pending
notifications persist in the card's state file; what docs/protocols.md ("eUICC and the cloud backup") says of
keeping the one-time key across a failed install and a power cycle is the profile option `euicc_keep_otpk`.

Every APDU is traced where it crosses the card boundary (the CP's apdu.command / apdu.response events with the
status word), so a refused STORE DATA is in the trace as its 6A80.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from bipsim.uicc import terminal_profile as tp
from bipsim.uicc.applets import (
    SW_CLA_NOT_SUPPORTED,
    SW_INS_NOT_SUPPORTED,
    SW_OK,
    SW_WRONG_LENGTH,
    Applet,
    AppletError,
    Command,
)
from bipsim.uicc.cat import CommandType, ProactiveCommand
from bipsim.uicc.euicc import asn1, crypto, pki
from bipsim.uicc.euicc.asn1 import Asn1Error
from bipsim.uicc.euicc.crypto import CryptoError
from bipsim.uicc.euicc.profile_store import (
    MEMORY,
    DisableResult,
    EnableResult,
    InstalledProfile,
    ProfileState,
    ProfileStore,
)
from bipsim.uicc.euicc.session import DownloadSession, SessionError, SessionEvent, SessionPhase
from bipsim.uicc.euicc.upp import iccid_bytes, iccid_digits

__all__ = [
    "ISD_R_AID",
    "IsdR",
    "Notification",
]

ISD_R_AID = bytes.fromhex("A0000005591010FFFFFFFF8900000100")

INS_STORE_DATA = 0xE2
P1_MORE = 0x11
P1_LAST = 0x91
MAX_REQUEST = 64 * 1024  # the longest ES10 request assembled from STORE DATA blocks
MAX_NOTIFICATIONS = 32  # pending notifications kept (the oldest goes first)

SW_WRONG_DATA = 0x6A80
SW_INCORRECT_P1P2 = 0x6A86

# REFRESH qualifiers (TS 102 223 section 8.6): 09 "eUICC Profile State Change" since Release 13 (as the
# sim-apdu-analyzer's Proactive.py names it), 04 "UICC Reset" for an older terminal
REFRESH_PROFILE_STATE_CHANGE = 0x09
REFRESH_UICC_RESET = 0x04
PROFILE_STATE_CHANGE_FACILITY = "refresh_with_euicc_profile_state_change_mode"

# what the eUICC reports of itself in EUICCInfo1/2 (SGP.22 5.7.8)
SVN = bytes((2, 2, 0))  # SGP.22 v2.2.0
PROFILE_VERSION = bytes((2, 1, 0))  # SIMalliance eUICC Profile Package v2.1
FIRMWARE_VERSION = bytes((1, 0, 0))
PP_VERSION = bytes((1, 0, 0))
SAS_NUMBER = "bipsim-TEST-SAS-0000"
# SGP.22 2.9 / GSMA's root SM-DS for consumer devices
ROOT_DS_ADDRESS = "lpa.ds.gsma.com"

# NotificationEvent bits (SGP.22 5.7.9)
EVENTS = ("install", "enable", "disable", "delete")

# SGP.22 error codes this module answers by name
UNDEFINED_ERROR = 127
AUTH_INVALID_CERTIFICATE = 1
AUTH_INVALID_SIGNATURE = 2
AUTH_UNSUPPORTED_CURVE = 3
AUTH_INVALID_OID = 5
AUTH_CHALLENGE_MISMATCH = 6
AUTH_CI_PK_UNKNOWN = 7
DL_INVALID_CERTIFICATE = 1
DL_INVALID_SIGNATURE = 2
DL_UNSUPPORTED_CURVE = 3
DL_NO_SESSION = 4
DL_INVALID_TRANSACTION_ID = 5
CANCEL_INVALID_TRANSACTION_ID = 5

# the tags of ProfileInfo (SGP.22 5.7.15) a tagList may ask for, by field
PROFILE_INFO_TAGS = {
    0x5A: "iccid",
    0x4F: "isdpAid",
    0x9F70: "profileState",
    0x90: "profileNickname",
    0x91: "serviceProviderName",
    0x92: "profileName",
    0x93: "iconType",
    0x94: "icon",
    0x95: "profileClass",
    0xB6: "notificationConfigurationInfo",
    0xB7: "profileOwner",
    0xB8: "dpProprietaryData",
    0x99: "profilePolicyRules",
}
# what a BPP's segments after the first start with (SGP.22 2.5.5): the sequence headers A0-A3 and the 86/87/88
# TLVs
BPP_CONTINUATION_TAGS = frozenset({0xA0, 0xA1, 0xA2, 0xA3, 0x86, 0x87, 0x88})


def bits(names: tuple[str, ...] | list[str], order: tuple[str, ...]) -> tuple[bytes, int]:
    """An ASN.1 named BIT STRING as asn1tools takes it (bytes, number of bits), trailing zero bits left out as
    DER wants (X.690 11.2.2)."""
    positions = [order.index(name) for name in names if name in order]
    if not positions:
        return b"", 0
    length = max(positions) + 1
    value = bytearray((length + 7) // 8)
    for position in positions:
        value[position // 8] |= 0x80 >> (position % 8)
    return bytes(value), length


def bit_names(value: tuple[bytes, int], order: tuple[str, ...]) -> list[str]:
    """The names of the bits set in an asn1tools BIT STRING value."""
    if not (isinstance(value, tuple) and len(value) == 2):
        return []  # what asn1tools gives for a BIT STRING without its unused-bits byte
    data, length = value
    return [
        name
        for position, name in enumerate(order)
        if position < length and position // 8 < len(data) and data[position // 8] & (0x80 >> (position % 8))
    ]


def event_bits(event: str) -> tuple[bytes, int]:
    return bits((event,), EVENTS)


def _tags(data: bytes) -> list[int]:
    """The BER tags in a tagList (SGP.22 5.7.15): tags one after another, no lengths."""
    tags: list[int] = []
    pos = 0
    while pos < len(data):
        tag = data[pos]
        pos += 1
        if tag & 0x1F == 0x1F:
            while True:
                if pos >= len(data):
                    raise Asn1Error("tagList: truncated tag")
                tag = (tag << 8) | data[pos]
                pos += 1
                if not data[pos - 1] & 0x80:
                    break
        tags.append(tag)
    return tags


@dataclass
class Notification:
    """One pending notification (SGP.22 3.5): its metadata and the PendingNotification's DER the LPA sends on."""

    seq: int
    event: str
    address: str
    iccid: str | None
    pending: bytes  # DER of PendingNotification: a ProfileInstallationResult or an OtherSignedNotification

    def metadata(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "seqNumber": self.seq,
            "profileManagementOperation": event_bits(self.event),
            "notificationAddress": self.address,
        }
        if self.iccid is not None:
            value["iccid"] = iccid_bytes(self.iccid)
        return value

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "event": self.event,
            "address": self.address,
            "iccid": self.iccid,
            "pending": self.pending.hex(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Notification:
        """ValueError (or KeyError, TypeError) when the saved entry is not one."""
        event = str(data["event"])
        if event not in EVENTS:
            raise ValueError(f"notification event {event!r}")
        iccid = data.get("iccid")
        return cls(
            seq=int(data["seq"]),
            event=event,
            address=str(data["address"]),
            iccid=None if iccid is None else str(iccid),
            pending=bytes.fromhex(str(data["pending"])),
        )


class IsdR(Applet):
    """The ISD-R: ES10 over STORE DATA, the download session, the profile store and the notifications."""

    name = "isd_r"

    def __init__(
        self,
        *,
        eid: str | None = None,
        keys: pki.Pki | None = None,
        pki_dir: Path | None = None,
        keep_otpk: bool = True,
        fault_at_segment: int | None = None,
        default_dp_address: str | None = None,
    ) -> None:
        super().__init__(ISD_R_AID)
        self._eid = eid
        self._pki = keys
        self.pki_dir = pki_dir
        self.keep_otpk = keep_otpk
        # SGP.22 fault injection of the card profile (`euicc_fault_segment`): the BPP segment whose arrival aborts
        # the install with installFailedDueToInterruption; settable on a running card (`fault_at_segment`)
        # (it fires once per eUICC: the profile store remembers the segment that fired, across restarts)
        self._profile_fault = fault_at_segment
        self.default_dp_address = default_dp_address
        self._dp_address_set = False  # SetDefaultDpAddress ran: its address outlives a restart
        self.profile_store = ProfileStore()
        self.notifications: list[Notification] = []
        self.next_seq = 1
        self.session: DownloadSession | None = None
        self._challenge: bytes | None = None
        self._loader: Any = None  # the BppLoader of the BPP being loaded
        self._blocks: dict[
            int, tuple[bytearray, int]
        ] = {}  # per channel: the request so far, next block number
        self._version = 0
        self.refresh_pending = False  # an Enable/Disable with refreshFlag: REFRESH for the terminal
        # the card's word: a proactive command is open or queued, so a REFRESH could not be issued now
        self.proactive_busy = False

    # --- profile and keys ------------------------------------------------------------------------------------

    def configure(self, profile: Any) -> None:
        """Takes the card profile's eUICC options (uicc/profile.py): the EID, the PKI directory, whether the
        one-time key is kept across an interrupted install, the fault segment, the default SM-DP+ address."""
        eid = getattr(profile, "euicc_eid", None)
        if eid:
            self._eid = str(eid)
        pki_dir = getattr(profile, "euicc_pki", None)
        if pki_dir:
            self.pki_dir = Path(pki_dir)
        keep = getattr(profile, "euicc_keep_otpk", None)
        if keep is not None:
            self.keep_otpk = bool(keep)
        fault = getattr(profile, "euicc_fault_segment", None)
        self._profile_fault = fault if isinstance(fault, int) and fault > 0 else None
        address = getattr(profile, "euicc_default_dp_address", None)
        if address:
            self.default_dp_address = str(address)

    @property
    def fault_at_segment(self) -> int | None:
        """The fault segment in force: the one set on the running card (kept in the card state, so a power cycle
        does not bring the card profile's back to fire a second time) over the card profile's, until a card profile
        names another segment than the one it replaced (load_dict)."""
        running = self.profile_store.fault_set
        if running is not None:
            return running or None
        return self._profile_fault

    @fault_at_segment.setter
    def fault_at_segment(self, segment: int | None) -> None:
        # the CP's card control on a running card (uicc/card.py set_euicc_fault)
        self.profile_store.set_fault(segment, over=self._profile_fault or 0)

    @property
    def keys(self) -> pki.Pki:
        """The eUICC's certificates and keys (SGP.22 4.5), made on first use in the per-user PKI directory
        ($BIPSIM_PKI) or the profile's `euicc_pki`, for this card's EID."""
        if self._pki is None:
            self._pki = pki.ensure_pki(self.pki_dir, eid=self._eid)
        return self._pki

    @property
    def eid(self) -> str:
        return self._eid if self._eid else self.keys.eid

    @property
    def state_version(self) -> int:
        return self._version + self.profile_store.state_version

    def _changed(self) -> None:
        self._version += 1

    # --- APDUs -----------------------------------------------------------------------------------------------

    def select(self, p2: int, aid: bytes, channel: int) -> tuple[bytes, int]:
        self._blocks.pop(channel, None)
        return b"", SW_OK

    def deselect(self, channel: int) -> None:
        self._blocks.pop(channel, None)
        if self._loader is not None:
            self._interrupt_load()  # the channel closed or the card was reset in the middle of a BPP

    def process(self, command: Command) -> tuple[bytes, int]:
        if not command.cla & 0x80:
            raise AppletError(SW_CLA_NOT_SUPPORTED, "ES10 uses the proprietary class")
        if command.ins != INS_STORE_DATA:
            raise AppletError(SW_INS_NOT_SUPPORTED)
        request = self._assemble(command)
        if request is None:
            return b"", SW_OK
        return self.handle(request), SW_OK

    def _assemble(self, command: Command) -> bytes | None:
        """Adds one STORE DATA block; the whole request after the last block, None before it."""
        channel = command.channel
        if command.p1 not in (P1_MORE, P1_LAST):
            self._blocks.pop(channel, None)
            raise AppletError(SW_INCORRECT_P1P2, f"STORE DATA P1 {command.p1:02X}: 11 or 91")
        if not command.data:
            self._blocks.pop(channel, None)
            raise AppletError(SW_WRONG_LENGTH, "STORE DATA without data")
        if command.p2 == 0:
            so_far, expected = bytearray(), 0  # block 00 starts a new request, dropping an unfinished one
        else:
            so_far, expected = self._blocks.pop(channel, (bytearray(), 0))
        if command.p2 != expected:
            raise AppletError(SW_WRONG_DATA, f"STORE DATA block {command.p2}, expected {expected}")
        if len(so_far) + len(command.data) > MAX_REQUEST:
            raise AppletError(SW_WRONG_LENGTH, f"ES10 request over {MAX_REQUEST} bytes")
        so_far += command.data
        if command.p1 == P1_MORE:
            if expected >= 0xFF:
                raise AppletError(SW_WRONG_DATA, "STORE DATA: more than 256 blocks")
            self._blocks[channel] = (so_far, expected + 1)
            return None
        return bytes(so_far)

    # --- ES10 dispatch ----------------------------------------------------------------------------------------

    def handle(self, request: bytes) -> bytes:
        """The DER answer to one assembled ES10 request; AppletError(6A80) when there is no SGP.22 answer for it."""
        try:
            tag = asn1.outer_tag(request)
        except Asn1Error as exc:
            raise AppletError(SW_WRONG_DATA, str(exc)) from None
        if self._loader is not None:
            if tag in BPP_CONTINUATION_TAGS:
                return self._load_segment(request)
            self._interrupt_load()  # another function while a BPP was loading: that load is over
        if tag == 0xBF36:
            return self._load_start(request)
        name = asn1.ES10_REQUEST_TAGS.get(tag)
        handler = _HANDLERS.get(name or "")
        if name is None or handler is None:
            raise AppletError(SW_WRONG_DATA, f"no ES10 function has the tag {tag:X}")
        try:
            value = asn1.decode(name, request)
        except Asn1Error as exc:
            return self._malformed(name, request, exc)
        try:
            answer: bytes = handler(self, value, request)
        except (Asn1Error, KeyError, TypeError, ValueError, IndexError) as exc:
            # DER that decodes into a value the function cannot use (a BIT STRING with no bits, an ICCID that is
            # not BCD): the function's own error, as for DER that does not decode
            return self._malformed(name, request, Asn1Error(f"{name}: {exc!r}"))
        return answer

    def _malformed(self, name: str, request: bytes, exc: Asn1Error) -> bytes:
        """The function's own error answer to a request whose DER does not decode (SGP.22 5.7)."""
        error = _MALFORMED.get(name)
        if error is None:
            raise AppletError(SW_WRONG_DATA, str(exc))
        return error(self, request)

    # --- ES10a / ES10c: information ---------------------------------------------------------------------------

    def _info1(self, value: Any, raw: bytes) -> bytes:
        ci = self.keys.ci_pkid
        return asn1.encode(
            "EUICCInfo1",
            {"svn": SVN, "euiccCiPKIdListForVerification": [ci], "euiccCiPKIdListForSigning": [ci]},
        )

    def info2(self) -> dict[str, Any]:
        """EUICCInfo2 (SGP.22 5.7.8): versions, free memory (ETSI TS 102 226 8.2.1.3.2: installed applications,
        free non-volatile and volatile memory), capabilities and the CI PKIDs."""
        free = max(0, MEMORY - self.profile_store.memory_used())
        resource = (
            bytes((0x81, 1, len(self.profile_store.profiles)))
            + bytes((0x82, 4))
            + free.to_bytes(4, "big")
            + bytes((0x83, 4))
            + (16 * 1024).to_bytes(4, "big")
        )
        ci = self.keys.ci_pkid
        return {
            "profileVersion": PROFILE_VERSION,
            "svn": SVN,
            "euiccFirmwareVer": FIRMWARE_VERSION,
            "extCardResource": resource,
            # usimSupport(1), isimSupport(2), akaMilenage(4), javacard(14)
            "uiccCapability": (bytes((0x68, 0x02)), 15),
            # additionalProfile(0), testProfileSupport(3)
            "rspCapability": (bytes((0x90,)), 4),
            "euiccCiPKIdListForVerification": [ci],
            "euiccCiPKIdListForSigning": [ci],
            "ppVersion": PP_VERSION,
            "sasAcreditationNumber": SAS_NUMBER,
        }

    def _info2(self, value: Any, raw: bytes) -> bytes:
        return asn1.encode("EUICCInfo2", self.info2())

    def _eid_request(self, value: Any, raw: bytes) -> bytes:
        if value["tagList"] != b"\x5a":
            raise AppletError(SW_WRONG_DATA, "GetEID: the tag list asks for 5A only")
        return asn1.encode("GetEuiccDataResponse", {"eidValue": crypto.eid_bytes(self.eid)})

    def _addresses(self, value: Any, raw: bytes) -> bytes:
        answer: dict[str, Any] = {"rootDsAddress": ROOT_DS_ADDRESS}
        if self.default_dp_address:
            answer["defaultDpAddress"] = self.default_dp_address
        return asn1.encode("EuiccConfiguredAddressesResponse", answer)

    def _set_default_dp(self, value: Any, raw: bytes) -> bytes:
        """SGP.22 5.7.4: the address GetEuiccConfiguredAddresses answers from now on ("" removes it); it
        persists in the card's state file over the profile's `euicc_default_dp_address`."""
        self.default_dp_address = value["defaultDpAddress"] or None
        self._dp_address_set = True
        self._changed()
        return asn1.encode("SetDefaultDpAddressResponse", {"setDefaultDpAddressResult": 0})

    def _rat(self, value: Any, raw: bytes) -> bytes:
        """SGP.22 5.7.22 / 2.9.2.2: the Rules Authorisation Table. This eUICC lets any operator ('E' wildcard
        digits in mccMnc) set PPR1 and PPR2, with the end user's consent."""
        rule = {
            "pprIds": bits(("ppr1", "ppr2"), ("pprUpdateControl", "ppr1", "ppr2")),
            "allowedOperators": [{"mccMnc": b"\xee\xee\xee"}],
            "pprFlags": (b"\x80", 1),  # consentRequired
        }
        return asn1.encode("GetRatResponse", {"rat": [rule]})

    def _challenge_request(self, value: Any, raw: bytes) -> bytes:
        self._challenge = os.urandom(16)
        return asn1.encode("GetEuiccChallengeResponse", {"euiccChallenge": self._challenge})

    # --- ES10b.AuthenticateServer (SGP.22 5.7.13) ------------------------------------------------------------

    def _server_key(self, der: bytes, role: Any) -> tuple[ec.EllipticCurvePublicKey | None, str]:
        """The public key of an RSP server certificate the eUICC accepts (DER X.509 with a P-256 key, issued by
        the eUICC's CI, with the id-rspRole policy `role`), or None and what failed: "certificate", "curve",
        "role"."""
        try:
            certificate = pki.load_cert_der(der)
        except Exception:  # noqa: BLE001 - cryptography has many exception types for broken certificates
            return None, "certificate"
        try:
            public = pki.cert_public_key(certificate)
        except Exception:  # noqa: BLE001 - an unknown curve is UnsupportedAlgorithm, not CryptoError
            return None, "curve"
        try:
            pki.verify_chain(certificate, self.keys.ci_cert)
            allowed = pki.has_policy(certificate, role)
        except Exception:  # noqa: BLE001 - extensions that do not parse raise on access
            return None, "certificate"
        return (public, "") if allowed else (None, "role")

    def _auth_error(self, transaction_id: bytes, code: int) -> bytes:
        return asn1.encode(
            "AuthenticateServerResponse",
            (
                "authenticateResponseError",
                {"transactionId": transaction_id or b"\x00", "authenticateErrorCode": code},
            ),
        )

    def _authenticate(self, value: Any, raw: bytes) -> bytes:
        signed = value["serverSigned1"]
        transaction_id = signed["transactionId"]
        challenge, self._challenge = self._challenge, None  # one challenge, one attempt
        if value["euiccCiPKIdToBeUsed"] != self.keys.ci_pkid:
            return self._auth_error(transaction_id, AUTH_CI_PK_UNKNOWN)
        public, fault = self._server_key(bytes(value["serverCertificate"]), pki.ROLE_DP_AUTH)
        if public is None:
            code = {"curve": AUTH_UNSUPPORTED_CURVE, "role": AUTH_INVALID_OID}.get(
                fault, AUTH_INVALID_CERTIFICATE
            )
            return self._auth_error(transaction_id, code)
        # the signature covers ServerSigned1 exactly as sent: the first data object inside BF38
        server_signed1 = _inner(raw)[0]
        try:
            crypto.verify_plain(public, value["serverSignature1"], crypto.signed_data_server1(server_signed1))
        except CryptoError:
            return self._auth_error(transaction_id, AUTH_INVALID_SIGNATURE)
        if challenge is None or signed["euiccChallenge"] != challenge:
            return self._auth_error(transaction_id, AUTH_CHALLENGE_MISMATCH)
        euicc_signed1 = {
            "transactionId": transaction_id,
            "serverAddress": signed["serverAddress"],
            "serverChallenge": signed["serverChallenge"],
            "euiccInfo2": self.info2(),
            "ctxParams1": value["ctxParams1"],
        }
        signature = crypto.sign_plain(
            self.keys.euicc_key, crypto.signed_data_euicc1(asn1.encode("EuiccSigned1", euicc_signed1))
        )
        self._set_session(
            DownloadSession(
                transaction_id=transaction_id,
                server_address=signed["serverAddress"],
                server_challenge=signed["serverChallenge"],
                euicc_challenge=challenge,
                dpauth_certificate=bytes(value["serverCertificate"]),
                euicc_signature1=signature,
            )
        )
        return asn1.encode(
            "AuthenticateServerResponse",
            (
                "authenticateResponseOk",
                {
                    "euiccSigned1": euicc_signed1,
                    "euiccSignature1": signature,
                    "euiccCertificate": pki.cert_der(self.keys.euicc_cert),
                    "eumCertificate": pki.cert_der(self.keys.eum_cert),
                },
            ),
        )

    # --- ES10b.PrepareDownload (SGP.22 5.7.5) ----------------------------------------------------------------

    def _download_error(self, transaction_id: bytes, code: int) -> bytes:
        return asn1.encode(
            "PrepareDownloadResponse",
            (
                "downloadResponseError",
                {"transactionId": transaction_id or b"\x00", "downloadErrorCode": code},
            ),
        )

    def _prepare(self, value: Any, raw: bytes) -> bytes:
        signed = value["smdpSigned2"]
        transaction_id = signed["transactionId"]
        session = self.session
        if session is None or session.euicc_signature1 is None:
            return self._download_error(transaction_id, DL_NO_SESSION)
        public, fault = self._server_key(bytes(value["smdpCertificate"]), pki.ROLE_DP_PB)
        if public is None:
            code = DL_UNSUPPORTED_CURVE if fault == "curve" else DL_INVALID_CERTIFICATE
            return self._download_error(transaction_id, code)
        if transaction_id != session.transaction_id:
            return self._download_error(transaction_id, DL_INVALID_TRANSACTION_ID)
        smdp_signed2 = _inner(raw)[0]
        try:
            crypto.verify_plain(
                public,
                value["smdpSignature2"],
                crypto.signed_data_smdp2(smdp_signed2, session.euicc_signature1),
            )
        except CryptoError:
            return self._download_error(transaction_id, DL_INVALID_SIGNATURE)
        try:
            session.advance(SessionEvent.PREPARE)
        except SessionError:
            return self._download_error(transaction_id, DL_NO_SESSION)
        reuse = signed.get("bppEuiccOtpk")
        if reuse is None or reuse != session.ot_public:
            # SGP.22 5.7.5: a fresh one-time key unless the SM-DP+ names the one this session already made
            session.set_one_time_key(crypto.generate_otk())
        session.dppb_certificate = bytes(value["smdpCertificate"])
        session.hash_cc = value.get("hashCc")
        self._changed()
        euicc_signed2: dict[str, Any] = {"transactionId": transaction_id, "euiccOtpk": session.ot_public}
        if session.hash_cc is not None:
            euicc_signed2["hashCc"] = session.hash_cc
        signature = crypto.sign_plain(
            self.keys.euicc_key,
            crypto.signed_data_euicc2(asn1.encode("EUICCSigned2", euicc_signed2), value["smdpSignature2"]),
        )
        return asn1.encode(
            "PrepareDownloadResponse",
            ("downloadResponseOk", {"euiccSigned2": euicc_signed2, "euiccSignature2": signature}),
        )

    # --- ES10b.LoadBoundProfilePackage (SGP.22 5.7.6) --------------------------------------------------------

    def _load_start(self, segment: bytes) -> bytes:
        from bipsim.uicc.euicc.bpp_loader import BppLoader

        self._loader = BppLoader(
            self.session,
            euicc_key=self.keys.euicc_key,
            eid=self.eid,
            store=self.profile_store,
            fault_at_segment=self._armed_fault(),
            keep_otpk=self.keep_otpk,
            seq_number=self.next_seq,
        )
        return self._load_segment(segment)

    def _armed_fault(self) -> int | None:
        segment = self.fault_at_segment
        return segment if segment is not None and self.profile_store.fault_armed(segment) else None

    def _load_segment(self, segment: bytes) -> bytes:
        loader = self._loader
        phase = self.session.phase if self.session is not None else None
        result = loader.feed(segment)
        if not result.done:
            if self.session is not None and self.session.phase is not phase:
                self._changed()  # the session is loading now (kept in the state file as such)
            return b""
        self._loader = None
        if result.result_der is None:
            raise AppletError(SW_WRONG_DATA, result.error or "BPP segment out of sequence")
        pir = bytes(result.result_der)
        self._note_result(pir)  # a fired fault was spent by the loader as it fired (one place, once)
        if not result.keep_session:
            # SGP.22 3.1.3.3: installed, or a failure that erases otSK (`euicc_keep_otpk`)
            self.session = None
        self._changed()
        return pir

    def _note_result(self, pir: bytes) -> None:
        """Keeps the ProfileInstallationResult as the pending install notification (SGP.22 3.5) when it names
        where to send it."""
        try:
            value = asn1.decode("ProfileInstallationResult", pir)
            meta = value["profileInstallationResultData"]["notificationMetadata"]
            iccid = iccid_digits(meta["iccid"]) if "iccid" in meta else None
            seq = int(meta["seqNumber"])
        except (Asn1Error, ValueError, KeyError, TypeError):
            return
        self.next_seq = max(self.next_seq, seq + 1)
        if meta["notificationAddress"]:
            self._pend(Notification(seq, "install", meta["notificationAddress"], iccid, pir))

    def _interrupt_load(self) -> None:
        self._loader = None
        if self.session is not None and self.session.phase is SessionPhase.LOADING:
            if self.keep_otpk:
                self.session.advance(SessionEvent.INTERRUPTED)
            else:
                self.session = None
            self._changed()

    # --- ES10b.CancelSession (SGP.22 5.7.14) -----------------------------------------------------------------

    def _cancel(self, value: Any, raw: bytes) -> bytes:
        session = self.session
        if session is None or value["transactionId"] != session.transaction_id:
            return asn1.encode(
                "CancelSessionResponse", ("cancelSessionResponseError", CANCEL_INVALID_TRANSACTION_ID)
            )
        try:
            oid = pki.cert_smdp_oid(session.dpauth()) or self.keys.smdp_oid
        except SessionError:
            oid = self.keys.smdp_oid
        signed = {"transactionId": session.transaction_id, "smdpOid": oid, "reason": value["reason"]}
        signature = crypto.sign_plain(self.keys.euicc_key, asn1.encode("EuiccCancelSessionSigned", signed))
        self._loader = None
        self._set_session(None)
        return asn1.encode(
            "CancelSessionResponse",
            (
                "cancelSessionResponseOk",
                {"euiccCancelSessionSigned": signed, "euiccCancelSessionSignature": signature},
            ),
        )

    def _set_session(self, session: DownloadSession | None) -> None:
        self.session = session
        self._changed()

    # --- ES10c: local profile management (SGP.22 5.7.15-5.7.21) ----------------------------------------------

    def profile_info(self, profile: InstalledProfile) -> dict[str, Any]:
        info: dict[str, Any] = {
            "iccid": iccid_bytes(profile.iccid),
            "isdpAid": profile.aid,
            "profileState": 1 if profile.state is ProfileState.ENABLED else 0,
            "profileNickname": profile.nickname,
            "serviceProviderName": profile.provider,
            "profileName": profile.name,
            "profileClass": int(profile.profile_class),
        }
        if profile.ppr_ids:
            info["profilePolicyRules"] = bits(profile.ppr_ids, ("pprUpdateControl", "ppr1", "ppr2"))
        metadata = _metadata(profile)
        for key in ("iconType", "icon", "notificationConfigurationInfo", "profileOwner"):
            if key in metadata:
                info[key] = metadata[key]
        return info

    def _profiles(self, value: Any, raw: bytes) -> bytes:
        profiles = list(self.profile_store.profiles)
        criteria = value.get("searchCriteria")
        if criteria is not None:
            kind, wanted = criteria
            if kind == "isdpAid":
                profiles = [p for p in profiles if p.aid == wanted]
            elif kind == "iccid":
                profiles = [p for p in profiles if iccid_bytes(p.iccid) == wanted]
            else:
                profiles = [p for p in profiles if int(p.profile_class) == wanted]
        fields: set[str] | None = None
        if "tagList" in value:
            try:
                fields = {PROFILE_INFO_TAGS[t] for t in _tags(value["tagList"]) if t in PROFILE_INFO_TAGS}
            except Asn1Error:
                return asn1.encode("ProfileInfoListResponse", ("profileInfoListError", 1))
        infos = []
        for profile in profiles:
            info = self.profile_info(profile)
            if fields is not None:
                info = {key: item for key, item in info.items() if key in fields}
            infos.append(info)
        return asn1.encode("ProfileInfoListResponse", ("profileInfoListOk", infos))

    @staticmethod
    def _identifier(choice: tuple[str, bytes]) -> dict[str, Any]:
        kind, wanted = choice
        if kind == "isdpAid":
            return {"aid": bytes(wanted)}
        return {"iccid": iccid_digits(wanted)}

    def take_proactive(self, profile: bytes) -> list[bytes]:
        """The proactive commands the ISD-R wants sent (the card queues them behind its 91 xx), given the
        terminal's TERMINAL PROFILE `profile`: the REFRESH of a profile switch with refreshFlag, once."""
        if not self.refresh_pending:
            return []
        self.refresh_pending = False
        mode = (
            REFRESH_PROFILE_STATE_CHANGE
            if tp.supports(profile, PROFILE_STATE_CHANGE_FACILITY)
            else REFRESH_UICC_RESET
        )
        return [ProactiveCommand.build(CommandType.REFRESH, qualifier=mode).encode()]

    def _cat_busy(self, value: Any) -> bool:
        """Whether a switch with refreshFlag must be refused catBusy(5) and not made: its REFRESH cannot be
        issued while a proactive session is open (SGP.22 5.7.16-17, TS 102 223 section 6.4)."""
        return bool(value.get("refreshFlag")) and (self.proactive_busy or self.refresh_pending)

    def _enable(self, value: Any, raw: bytes) -> bytes:
        which = self._identifier(value["profileIdentifier"])
        before = self.profile_store.enabled()
        target = self.profile_store.find(**which)
        if target is not None and target is not before and self._cat_busy(value):
            return asn1.encode("EnableProfileResponse", {"enableResult": int(EnableResult.CAT_BUSY)})
        result = self.profile_store.enable(**which)
        if result == 0:
            self.refresh_pending = bool(value.get("refreshFlag"))
            if before is not None:
                self._notify(before, "disable")
            enabled = self.profile_store.enabled()
            if enabled is not None:
                self._notify(enabled, "enable")
        return asn1.encode("EnableProfileResponse", {"enableResult": int(result)})

    def _disable(self, value: Any, raw: bytes) -> bytes:
        which = self._identifier(value["profileIdentifier"])
        target = self.profile_store.find(**which)
        if target is not None and target is self.profile_store.enabled() and self._cat_busy(value):
            return asn1.encode("DisableProfileResponse", {"disableResult": int(DisableResult.CAT_BUSY)})
        result = self.profile_store.disable(**which)
        if result == 0:
            self.refresh_pending = bool(value.get("refreshFlag"))
        if result == 0 and target is not None:
            self._notify(target, "disable")
        return asn1.encode("DisableProfileResponse", {"disableResult": int(result)})

    def _delete(self, value: Any, raw: bytes) -> bytes:
        which = self._identifier(value)
        target = self.profile_store.find(**which)
        result = self.profile_store.delete(**which)
        if result == 0 and target is not None:
            self._notify(target, "delete")
        return asn1.encode("DeleteProfileResponse", {"deleteResult": int(result)})

    def _nickname(self, value: Any, raw: bytes) -> bytes:
        result = self.profile_store.set_nickname(iccid_digits(value["iccid"]), value["profileNickname"])
        return asn1.encode("SetNicknameResponse", {"setNicknameResult": int(result)})

    # --- notifications (SGP.22 3.5, 5.7.9-5.7.11) ------------------------------------------------------------

    def _notify(self, profile: InstalledProfile, event: str) -> None:
        """A signed notification of `event` when the profile's metadata asks for one (SGP.22 5.7.16-18:
        notificationConfigurationInfo names the events and the address to send them to)."""
        address = None
        for entry in _metadata(profile).get("notificationConfigurationInfo", ()):
            if event in bit_names(entry["profileManagementOperation"], EVENTS):
                address = entry["notificationAddress"]
                break
        if address is None:
            return
        seq = self.next_seq
        self.next_seq += 1
        note = Notification(seq, event, address, profile.iccid, b"")
        tbs = asn1.encode("NotificationMetadata", note.metadata())
        signature = crypto.sign_plain(self.keys.euicc_key, tbs)
        note.pending = asn1.encode(
            "PendingNotification",
            (
                "otherSignedNotification",
                {
                    "tbsOtherNotification": note.metadata(),
                    "euiccNotificationSignature": signature,
                    "euiccCertificate": pki.cert_der(self.keys.euicc_cert),
                    "eumCertificate": pki.cert_der(self.keys.eum_cert),
                },
            ),
        )
        self._pend(note)
        self._changed()

    def _pend(self, note: Notification) -> None:
        """Keeps a notification until the LPA removes it; past MAX_NOTIFICATIONS the oldest goes (an eUICC's room
        for them is bounded, and SGP.22 3.5 leaves which to drop to the eUICC)."""
        self.notifications.append(note)
        del self.notifications[:-MAX_NOTIFICATIONS]

    def _list_notifications(self, value: Any, raw: bytes) -> bytes:
        wanted = value.get("profileManagementOperation")
        events = set(bit_names(wanted, EVENTS)) if wanted is not None else set(EVENTS)
        listed = [n.metadata() for n in self.notifications if n.event in events]
        return asn1.encode("ListNotificationResponse", ("notificationMetadataList", listed))

    def _retrieve_notifications(self, value: Any, raw: bytes) -> bytes:
        chosen = self.notifications
        criteria = value.get("searchCriteria")
        if criteria is not None:
            kind, wanted = criteria
            if kind == "seqNumber":
                chosen = [n for n in chosen if n.seq == wanted]
            else:
                events = set(bit_names(wanted, EVENTS))
                chosen = [n for n in chosen if n.event in events]
        pending = [asn1.decode("PendingNotification", n.pending) for n in chosen]
        return asn1.encode("RetrieveNotificationsListResponse", ("notificationList", pending))

    def _notification_sent(self, value: Any, raw: bytes) -> bytes:
        seq = value["seqNumber"]
        kept = [n for n in self.notifications if n.seq != seq]
        status = 0 if len(kept) != len(self.notifications) else 1
        if status == 0:
            self.notifications = kept
            self._changed()
        return asn1.encode("NotificationSentResponse", {"deleteNotificationStatus": status})

    # --- state ------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "store": self.profile_store.to_dict(),
            "notifications": [n.to_dict() for n in self.notifications],
            "next_seq": self.next_seq,
        }
        if self._dp_address_set:
            state["default_dp_address"] = self.default_dp_address or ""
        # only a kept session outlives a power cycle (`euicc_keep_otpk`); otherwise it lived in RAM
        if self.session is not None and self.keep_otpk:
            state["session"] = self.session.to_dict()
        return state

    def load_dict(self, state: dict[str, Any]) -> None:
        store = state.get("store")
        if isinstance(store, dict):
            self.profile_store.load_dict(store)
            over = self.profile_store.fault_over
            if over is not None and over != (self._profile_fault or 0):
                # the card profile names another fault segment than the one the running card's setting replaced:
                # the profile was edited since, and its segment is the one in force now
                self.profile_store.drop_fault_setting()
        notes: list[Notification] = []
        for entry in state.get("notifications", ()):
            try:
                notes.append(Notification.from_dict(entry))
            except (KeyError, TypeError, ValueError):
                continue  # a damaged entry is dropped, never a traceback at boot
        self.notifications = notes[-MAX_NOTIFICATIONS:]
        address = state.get("default_dp_address")
        if isinstance(address, str):
            self.default_dp_address, self._dp_address_set = address or None, True
        seq = state.get("next_seq")
        top = max((n.seq + 1 for n in notes), default=1)
        self.next_seq = max(seq if isinstance(seq, int) else 1, top)
        self.session = None
        saved = state.get("session")
        if isinstance(saved, dict) and self.keep_otpk:
            try:
                session = DownloadSession.from_dict(saved)
            except SessionError:
                session = None
            if session is not None and session.phase is SessionPhase.LOADING:
                session.advance(SessionEvent.INTERRUPTED)  # the power went during a load
            self.session = session
        self._loader = None
        self._challenge = None
        self._version += 1


def _inner(request: bytes) -> list[bytes]:
    """The data objects inside a request's outer TLV, each as sent (tag, length and value)."""
    try:
        outer = crypto.split_tlvs(request)
        return [raw for _tag, _value, raw in crypto.split_tlvs(outer[0][1])]
    except CryptoError as exc:
        raise AppletError(SW_WRONG_DATA, str(exc)) from None


def _metadata(profile: InstalledProfile) -> dict[str, Any]:
    """The StoreMetadataRequest the profile was installed with, decoded ({} when there is none)."""
    if not profile.metadata_der:
        return {}
    try:
        value = asn1.decode("StoreMetadataRequest", profile.metadata_der)
    except Asn1Error:
        return {}
    return value if isinstance(value, dict) else {}


def _transaction_id(request: bytes) -> bytes:
    """The transactionId of a request that does not decode, when its first data objects still hold one ('80')."""
    try:
        for tag, value, _raw in crypto.split_tlvs(crypto.split_tlvs(request)[0][1]):
            if tag == 0x80 and 1 <= len(value) <= 16:
                return value
            if tag == 0x30:
                for inner_tag, inner_value, _ in crypto.split_tlvs(value):
                    if inner_tag == 0x80 and 1 <= len(inner_value) <= 16:
                        return inner_value
                    break
    except (CryptoError, IndexError):
        pass
    return b"\x00"


_HANDLERS: dict[str, Any] = {
    "GetEuiccInfo1Request": IsdR._info1,
    "GetEuiccInfo2Request": IsdR._info2,
    "GetEuiccDataRequest": IsdR._eid_request,
    "GetEuiccChallengeRequest": IsdR._challenge_request,
    "EuiccConfiguredAddressesRequest": IsdR._addresses,
    "SetDefaultDpAddressRequest": IsdR._set_default_dp,
    "GetRatRequest": IsdR._rat,
    "AuthenticateServerRequest": IsdR._authenticate,
    "PrepareDownloadRequest": IsdR._prepare,
    "CancelSessionRequest": IsdR._cancel,
    "ProfileInfoListRequest": IsdR._profiles,
    "EnableProfileRequest": IsdR._enable,
    "DisableProfileRequest": IsdR._disable,
    "DeleteProfileRequest": IsdR._delete,
    "SetNicknameRequest": IsdR._nickname,
    "ListNotificationRequest": IsdR._list_notifications,
    "RetrieveNotificationsListRequest": IsdR._retrieve_notifications,
    "NotificationSentRequest": IsdR._notification_sent,
}

# SGP.22's error answers to a request that does not decode, by request type (the others are 6A80)
_MALFORMED: dict[str, Any] = {
    "AuthenticateServerRequest": lambda self, raw: self._auth_error(_transaction_id(raw), UNDEFINED_ERROR),
    "PrepareDownloadRequest": lambda self, raw: self._download_error(_transaction_id(raw), UNDEFINED_ERROR),
    "SetDefaultDpAddressRequest": lambda self, raw: asn1.encode(
        "SetDefaultDpAddressResponse", {"setDefaultDpAddressResult": UNDEFINED_ERROR}
    ),
    "CancelSessionRequest": lambda self, raw: asn1.encode(
        "CancelSessionResponse", ("cancelSessionResponseError", UNDEFINED_ERROR)
    ),
    "ProfileInfoListRequest": lambda self, raw: asn1.encode(
        "ProfileInfoListResponse", ("profileInfoListError", UNDEFINED_ERROR)
    ),
    "EnableProfileRequest": lambda self, raw: asn1.encode(
        "EnableProfileResponse", {"enableResult": UNDEFINED_ERROR}
    ),
    "DisableProfileRequest": lambda self, raw: asn1.encode(
        "DisableProfileResponse", {"disableResult": UNDEFINED_ERROR}
    ),
    "DeleteProfileRequest": lambda self, raw: asn1.encode(
        "DeleteProfileResponse", {"deleteResult": UNDEFINED_ERROR}
    ),
    "SetNicknameRequest": lambda self, raw: asn1.encode(
        "SetNicknameResponse", {"setNicknameResult": UNDEFINED_ERROR}
    ),
    "ListNotificationRequest": lambda self, raw: asn1.encode(
        "ListNotificationResponse", ("listNotificationsResultError", UNDEFINED_ERROR)
    ),
    "RetrieveNotificationsListRequest": lambda self, raw: asn1.encode(
        "RetrieveNotificationsListResponse", ("notificationsListResultError", UNDEFINED_ERROR)
    ),
    "NotificationSentRequest": lambda self, raw: asn1.encode(
        "NotificationSentResponse", {"deleteNotificationStatus": UNDEFINED_ERROR}
    ),
}
