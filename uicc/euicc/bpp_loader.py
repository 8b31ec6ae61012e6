"""The eUICC side of ES10b.LoadBoundProfilePackage (GSMA SGP.22 sections 2.5.5, 3.1.3.3, 5.5 and 5.7.6), sans-IO.

The LPA cuts the Bound Profile Package (BF36) into the segments SGP.22 section 2.5.5 lists and sends each in its
own STORE DATA sequence; the ISD-R hands each segment to `BppLoader.feed`, which answers a `LoadResult`:

1. the BF36 tag and length with InitialiseSecureChannelRequest (BF23): remoteOpId, the session's transactionId,
   the control reference template (AES, 16-byte keys, hostId), the SM-DP+'s one-time key and smdpSign, which must
   verify with the DPpb certificate of PrepareDownload (SGP.22 5.5.1). The session keys come from ECKA of the
   eUICC's one-time key otSK.EUICC.ECKA with that key and the KDF of Annex G (uicc/euicc/crypto.py);
2. A0 (firstSequenceOf87) with its one '87' segment: ConfigureISDPRequest (BF24), encrypted and MACed (SCP03t);
3. A1 (sequenceOf88)'s tag and length, then each '88' segment: StoreMetadataRequest (BF25), MACed only; the
   ICCID, profile class and names it gives are checked (an ICCID already installed ends the load here);
4. optionally A2 (secondSequenceOf87) with one '87': ReplaceSessionKeysRequest (BF26), after which the profile
   protection keys it carries protect the '86' segments (a new SCP03t chain from its initial MAC chaining value);
5. A3 (sequenceOf86)'s tag and length, then each '86' segment: the profile elements, here the Unprotected Profile
   Package of uicc/euicc/upp.py.

Every segment before the last answers "not done" (the ISD-R answers 90 00 with no data). The profile is installed
into the ProfileStore only after the last '86' arrived intact, so a load that stops anywhere leaves no trace of a
profile. The first error ends the load with a ProfileInstallationResult (BF37) naming the failing command
(bppCommandId) and the SGP.22 errorReason, signed by the eUICC like a success (euiccSignPIR over the DER of
ProfileInstallationResultData, SGP.22 5.5.1).

`fault_at_segment` is the test hook of docs/protocols.md ("eUICC and the cloud backup"): the load stops at that
segment (counted from 1, the BF23 segment) with installFailedDueToInterruption, as a power loss would, once per
eUICC (the store remembers it fired, in the card's state file). Whether the
download session (and with it otSK.EUICC.ECKA) outlives a failed load is the card profile's `euicc_keep_otpk`:
`LoadResult.keep_session` tells the ISD-R what to do with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from bipsim.uicc.euicc.asn1 import Asn1Error, decode, encode
from bipsim.uicc.euicc.crypto import (
    AES_KEY_TYPE,
    CryptoError,
    Scp03t,
    Scp03tSecurityError,
    Scp03tStructureError,
    SessionKeys,
    derive_session_keys,
    ecka,
    isc_signed_part_from_der,
    public_from_point,
    sign_plain,
    signature_do,
    signed_data_isc,
    signed_data_pir,
    split_tlvs,
    tlv,
    verify_plain,
)
from bipsim.uicc.euicc.pki import SMDP_OID, cert_smdp_oid
from bipsim.uicc.euicc.profile_store import PPR_NAMES, ProfileClass, ProfileStore, StoreError
from bipsim.uicc.euicc.session import DownloadSession, SessionError, SessionEvent
from bipsim.uicc.euicc.upp import MAX_UPP, UppError, iccid_bytes, iccid_digits
from bipsim.uicc.transitions import TransitionTable

TAG_BPP = 0xBF36
TAG_ISC = 0xBF23
TAG_FIRST_87 = 0xA0
TAG_SEQ_88 = 0xA1
TAG_SECOND_87 = 0xA2
TAG_SEQ_86 = 0xA3
INSTALL_REMOTE_OP = 1  # RemoteOpId installBoundProfilePackage


class BppCommand(IntEnum):
    """SGP.22 BppCommandId: the command of the BPP that failed."""

    INITIALISE_SECURE_CHANNEL = 0
    CONFIGURE_ISDP = 1
    STORE_METADATA = 2
    STORE_METADATA2 = 3
    REPLACE_SESSION_KEYS = 4
    LOAD_PROFILE_ELEMENTS = 5


class ErrorReason(IntEnum):
    """SGP.22 ErrorReason of a ProfileInstallationResult."""

    INCORRECT_INPUT_VALUES = 1
    INVALID_SIGNATURE = 2
    INVALID_TRANSACTION_ID = 3
    UNSUPPORTED_CRT_VALUES = 4
    UNSUPPORTED_REMOTE_OPERATION_TYPE = 5
    UNSUPPORTED_PROFILE_CLASS = 6
    SCP03T_STRUCTURE_ERROR = 7
    SCP03T_SECURITY_ERROR = 8
    INSTALL_FAILED_DUE_TO_ICCID_ALREADY_EXISTS_ON_EUICC = 9
    INSTALL_FAILED_DUE_TO_INSUFFICIENT_MEMORY_FOR_PROFILE = 10
    INSTALL_FAILED_DUE_TO_INTERRUPTION = 11
    INSTALL_FAILED_DUE_TO_PE_PROCESSING_ERROR = 12
    INSTALL_FAILED_DUE_TO_DATA_MISMATCH = 13
    TEST_PROFILE_INSTALL_FAILED_DUE_TO_INVALID_NAA_KEY = 14
    PPR_NOT_ALLOWED = 15
    INSTALL_FAILED_DUE_TO_UNKNOWN_ERROR = 127

    @property
    def asn1_name(self) -> str:
        """The name SGP.22's ASN.1 gives the value (installFailedDueToInterruption, scp03tSecurityError...)."""
        return _REASON_NAMES[self]


_REASON_NAMES = {
    ErrorReason.INCORRECT_INPUT_VALUES: "incorrectInputValues",
    ErrorReason.INVALID_SIGNATURE: "invalidSignature",
    ErrorReason.INVALID_TRANSACTION_ID: "invalidTransactionId",
    ErrorReason.UNSUPPORTED_CRT_VALUES: "unsupportedCrtValues",
    ErrorReason.UNSUPPORTED_REMOTE_OPERATION_TYPE: "unsupportedRemoteOperationType",
    ErrorReason.UNSUPPORTED_PROFILE_CLASS: "unsupportedProfileClass",
    ErrorReason.SCP03T_STRUCTURE_ERROR: "scp03tStructureError",
    ErrorReason.SCP03T_SECURITY_ERROR: "scp03tSecurityError",
    ErrorReason.INSTALL_FAILED_DUE_TO_ICCID_ALREADY_EXISTS_ON_EUICC: "installFailedDueToIccidAlreadyExistsOnEuicc",
    ErrorReason.INSTALL_FAILED_DUE_TO_INSUFFICIENT_MEMORY_FOR_PROFILE: "installFailedDueToInsufficientMemoryForProfile",
    ErrorReason.INSTALL_FAILED_DUE_TO_INTERRUPTION: "installFailedDueToInterruption",
    ErrorReason.INSTALL_FAILED_DUE_TO_PE_PROCESSING_ERROR: "installFailedDueToPEProcessingError",
    ErrorReason.INSTALL_FAILED_DUE_TO_DATA_MISMATCH: "installFailedDueToDataMismatch",
    ErrorReason.TEST_PROFILE_INSTALL_FAILED_DUE_TO_INVALID_NAA_KEY: "testProfileInstallFailedDueToInvalidNaaKey",
    ErrorReason.PPR_NOT_ALLOWED: "pprNotAllowed",
    ErrorReason.INSTALL_FAILED_DUE_TO_UNKNOWN_ERROR: "installFailedDueToUnknownError",
}


class LoadState(Enum):
    """Where the load of one BPP stands."""

    START = "start"
    SECURE_CHANNEL = "secure-channel"  # InitialiseSecureChannel accepted, session keys derived
    ISDP_CONFIGURED = "isdp-configured"  # ConfigureISDP accepted
    METADATA = "metadata"  # sequenceOf88 under way
    KEYS_REPLACED = "keys-replaced"  # ReplaceSessionKeys accepted
    ELEMENTS = "elements"  # sequenceOf86 under way
    INSTALLED = "installed"
    FAILED = "failed"


class Segment(Enum):
    """What a segment is, by its first tag (SGP.22 2.5.5)."""

    INITIALISE = "initialise"  # BF36 + BF23
    CONFIGURE_ISDP = "configure-isdp"  # A0 + 87
    METADATA_HEADER = "metadata-header"  # A1
    METADATA = "metadata"  # 88
    REPLACE_KEYS = "replace-keys"  # A2 + 87
    ELEMENTS_HEADER = "elements-header"  # A3
    ELEMENT = "element"  # 86
    LAST_ELEMENT = "last-element"  # the 86 that completes A3
    FAIL = "fail"


LOAD_TABLE: TransitionTable[LoadState, Segment] = TransitionTable(
    "BPP load",
    {
        (LoadState.START, Segment.INITIALISE): LoadState.SECURE_CHANNEL,
        (LoadState.SECURE_CHANNEL, Segment.CONFIGURE_ISDP): LoadState.ISDP_CONFIGURED,
        (LoadState.ISDP_CONFIGURED, Segment.METADATA_HEADER): LoadState.METADATA,
        (LoadState.METADATA, Segment.METADATA): LoadState.METADATA,
        (LoadState.METADATA, Segment.REPLACE_KEYS): LoadState.KEYS_REPLACED,
        (LoadState.METADATA, Segment.ELEMENTS_HEADER): LoadState.ELEMENTS,
        (LoadState.KEYS_REPLACED, Segment.ELEMENTS_HEADER): LoadState.ELEMENTS,
        (LoadState.ELEMENTS, Segment.ELEMENT): LoadState.ELEMENTS,
        (LoadState.ELEMENTS, Segment.LAST_ELEMENT): LoadState.INSTALLED,
        **{
            (state, Segment.FAIL): LoadState.FAILED
            for state in LoadState
            if state not in (LoadState.INSTALLED, LoadState.FAILED)
        },
    },
)

_SEGMENT_TAGS = {
    TAG_BPP: Segment.INITIALISE,
    TAG_FIRST_87: Segment.CONFIGURE_ISDP,
    TAG_SEQ_88: Segment.METADATA_HEADER,
    0x88: Segment.METADATA,
    TAG_SECOND_87: Segment.REPLACE_KEYS,
    TAG_SEQ_86: Segment.ELEMENTS_HEADER,
    0x86: Segment.ELEMENT,
}
_COMMANDS = {
    Segment.INITIALISE: BppCommand.INITIALISE_SECURE_CHANNEL,
    Segment.CONFIGURE_ISDP: BppCommand.CONFIGURE_ISDP,
    Segment.METADATA_HEADER: BppCommand.STORE_METADATA,
    Segment.METADATA: BppCommand.STORE_METADATA,
    Segment.REPLACE_KEYS: BppCommand.REPLACE_SESSION_KEYS,
    Segment.ELEMENTS_HEADER: BppCommand.LOAD_PROFILE_ELEMENTS,
    Segment.ELEMENT: BppCommand.LOAD_PROFILE_ELEMENTS,
}


@dataclass(frozen=True)
class LoadResult:
    """What one segment did. `done` once the load ended (installed or failed): `result_der` is then the
    ProfileInstallationResult (BF37) the ISD-R answers, `error` the SGP.22 errorReason's name (None on success).
    `keep_session`: whether the ISD-R keeps the download session after this segment (always while the load goes
    on; after the end only for a failure with `euicc_keep_otpk`). A segment fed after the end answers done with
    neither result nor PIR (`error` says so): the ISD-R answers it as a command out of sequence."""

    done: bool
    result_der: bytes | None = None
    error: str | None = None
    keep_session: bool = True
    bpp_command: BppCommand | None = None
    reason: ErrorReason | None = None
    iccid: str | None = None  # the installed profile's ICCID on success
    aid: bytes | None = None  # its ISD-P AID
    segment: int = 0  # the number of this segment in the load, from 1
    interrupted: bool = False  # the fault hook stopped the load here
    why: str = ""  # what exactly was wrong, for a trace or a log (never sent to the LPA)


class LoadFailure(Exception):
    """The load ends with this SGP.22 errorReason."""

    def __init__(self, reason: ErrorReason, why: str, command: BppCommand | None = None) -> None:
        super().__init__(f"{reason.asn1_name}: {why}")
        self.reason = reason
        self.why = why
        self.command = command


def smdp_oid(certificate: x509.Certificate | None) -> str:
    """The SM-DP+ OID of a DPpb certificate: its subjectAltName registeredID (SGP.22 section 4.5.2.1)."""
    found = cert_smdp_oid(certificate) if certificate is not None else None
    return found or SMDP_OID


def _profile_class(value: Any) -> int:
    """profileClass as asn1tools gives it (a number, or the name of a named number such as its DEFAULT
    'operational') -> the number; -1 (unsupported) for anything else."""
    if value is None:
        return int(ProfileClass.OPERATIONAL)
    if isinstance(value, str):
        return {"test": 0, "provisioning": 1, "operational": 2}.get(value, -1)
    return value if isinstance(value, int) else -1


def _ppr_names(value: Any) -> tuple[str, ...]:
    """pprIds as asn1tools decodes a BIT STRING ((bytes, bit count)) -> the names of the bits set."""
    if not isinstance(value, tuple) or len(value) != 2:
        return ()
    data, count = value
    return tuple(
        name for bit, name in enumerate(PPR_NAMES) if bit < count and data[bit // 8] & (0x80 >> (bit % 8))
    )


class BppLoader:
    """Loads one Bound Profile Package, segment by segment, into `store`."""

    def __init__(
        self,
        session: DownloadSession | None,
        *,
        euicc_key: ec.EllipticCurvePrivateKey,
        eid: str,
        store: ProfileStore,
        fault_at_segment: int | None = None,
        keep_otpk: bool = True,
        seq_number: int = 0,
        smdp_oid_of: Callable[[x509.Certificate | None], str] = smdp_oid,
    ) -> None:
        self.session = session
        self.euicc_key = euicc_key
        self.eid = eid
        self.store = store
        self.fault_at_segment = fault_at_segment
        self.keep_otpk = keep_otpk
        self.seq_number = seq_number
        self._smdp_oid_of = smdp_oid_of
        self.state = LoadState.START
        self.segments = 0
        self._transaction_id: bytes | None = None
        self._channel: Scp03t | None = None
        self._bpp_left = 0  # bytes of BF36's value not yet received
        self._seq_left = 0  # bytes of the current A1/A3 sequence not yet received
        self._metadata = b""
        self._metadata_value: dict[str, Any] | None = None
        self._elements = b""

    # --- the ISD-R's entry point ------------------------------------------------------------------------------

    def feed(self, segment: bytes) -> LoadResult:
        """One segment of the BPP (the data of one STORE DATA sequence)."""
        if self.state in (LoadState.INSTALLED, LoadState.FAILED):
            return LoadResult(
                done=True, error="the package's load has ended", keep_session=self._keeps_session()
            )
        self.segments += 1
        kind = self._kind(segment)
        command = _COMMANDS.get(kind, BppCommand.INITIALISE_SECURE_CHANNEL)
        try:
            fault = self.fault_at_segment
            if fault is not None and self.segments == fault and self.store.fault_armed(fault):
                self.store.spend_fault(fault)  # once per eUICC: the retry after the power cycle goes through
                raise LoadFailure(
                    ErrorReason.INSTALL_FAILED_DUE_TO_INTERRUPTION, f"fault hook at segment {self.segments}"
                )
            return self._segment(kind, segment)
        except LoadFailure as failure:
            return self._fail(failure.command or command, failure.reason, failure.why)

    # --- the segments -----------------------------------------------------------------------------------------

    def _kind(self, segment: bytes) -> Segment:
        try:
            tag = _first_tag(segment)  # the tag only: a segment may hold a sequence's first bytes alone
        except CryptoError:
            return Segment.FAIL
        kind = _SEGMENT_TAGS.get(tag, Segment.FAIL)
        if kind is Segment.ELEMENT and self._seq_left == len(segment):
            return Segment.LAST_ELEMENT
        return kind

    def _advance(self, kind: Segment) -> None:
        if not LOAD_TABLE.allows(self.state, kind):
            command = _COMMANDS.get(kind, BppCommand.INITIALISE_SECURE_CHANNEL)
            if self.state is LoadState.START:
                raise LoadFailure(
                    ErrorReason.INCORRECT_INPUT_VALUES,
                    "the package does not start with BF36 BF23",
                    BppCommand.INITIALISE_SECURE_CHANNEL,
                )
            raise LoadFailure(
                ErrorReason.SCP03T_STRUCTURE_ERROR,
                f"segment {self.segments} ({kind.value}) out of order after {self.state.value}",
                command,
            )
        self.state = LOAD_TABLE.next(self.state, kind)

    def _segment(self, kind: Segment, segment: bytes) -> LoadResult:
        if kind is Segment.FAIL:
            if self.state is LoadState.START:
                raise LoadFailure(
                    ErrorReason.INCORRECT_INPUT_VALUES,
                    "the package does not start with BF36 BF23",
                    BppCommand.INITIALISE_SECURE_CHANNEL,
                )
            raise LoadFailure(ErrorReason.SCP03T_STRUCTURE_ERROR, f"segment {self.segments}: unknown tag")
        if kind is Segment.INITIALISE:
            self._advance(kind)
            self._initialise(segment)
        elif kind is Segment.CONFIGURE_ISDP:
            self._advance(kind)
            self._configure_isdp(self._header_and_one(segment, TAG_FIRST_87, BppCommand.CONFIGURE_ISDP))
        elif kind is Segment.METADATA_HEADER:
            self._advance(kind)
            self._seq_left = self._sequence_header(segment, TAG_SEQ_88, BppCommand.STORE_METADATA)
        elif kind is Segment.METADATA:
            self._advance(kind)
            self._store_metadata(segment)
        elif kind is Segment.REPLACE_KEYS:
            self._advance(kind)  # only right after the '88' segments
            self._metadata_done()
            self._replace_keys(self._header_and_one(segment, TAG_SECOND_87, BppCommand.REPLACE_SESSION_KEYS))
        elif kind is Segment.ELEMENTS_HEADER:
            after_metadata = self.state is LoadState.METADATA
            self._advance(kind)
            if after_metadata:
                self._metadata_done()
            self._seq_left = self._sequence_header(segment, TAG_SEQ_86, BppCommand.LOAD_PROFILE_ELEMENTS)
        elif kind in (Segment.ELEMENT, Segment.LAST_ELEMENT):
            self._advance(kind)
            self._element(segment)
            if kind is Segment.LAST_ELEMENT:
                return self._install()
        return LoadResult(done=False, segment=self.segments)

    def _count(self, size: int, command: BppCommand) -> None:
        """`size` more bytes of BF36's value arrived: more than it announced is a structure error."""
        if size > self._bpp_left:
            raise LoadFailure(ErrorReason.SCP03T_STRUCTURE_ERROR, "more bytes than BF36's length", command)
        self._bpp_left -= size

    def _initialise(self, segment: bytes) -> None:
        """Segment 1: BF36's tag and length, then the InitialiseSecureChannelRequest (SGP.22 5.5.1)."""
        try:
            header, announced = _header(segment, TAG_BPP)
        except CryptoError as exc:
            raise LoadFailure(ErrorReason.INCORRECT_INPUT_VALUES, f"BF36: {exc}") from None
        isc = segment[header:]
        self._bpp_left = announced
        self._count(len(isc), BppCommand.INITIALISE_SECURE_CHANNEL)
        try:
            value = decode("InitialiseSecureChannelRequest", isc)
            signed_part = isc_signed_part_from_der(isc)
        except (Asn1Error, CryptoError) as exc:
            raise LoadFailure(
                ErrorReason.INCORRECT_INPUT_VALUES, f"InitialiseSecureChannelRequest: {exc}"
            ) from None
        self._transaction_id = bytes(value["transactionId"])
        if value["remoteOpId"] != INSTALL_REMOTE_OP:
            raise LoadFailure(
                ErrorReason.UNSUPPORTED_REMOTE_OPERATION_TYPE, f"remoteOpId {value['remoteOpId']}"
            )
        session = self.session
        if session is None or session.transaction_id != self._transaction_id:
            # no download session, or another one: the package was bound for a session this eUICC no longer has
            raise LoadFailure(
                ErrorReason.INVALID_TRANSACTION_ID, f"transactionId {self._transaction_id.hex()}"
            )
        crt = value["controlRefTemplate"]
        key_type, key_length, host_id = bytes(crt["keyType"]), bytes(crt["keyLen"]), bytes(crt["hostId"])
        if key_type != bytes([AES_KEY_TYPE]) or key_length != b"\x10":
            raise LoadFailure(
                ErrorReason.UNSUPPORTED_CRT_VALUES, f"keyType {key_type.hex()} keyLen {key_length.hex()}"
            )
        try:
            dppb = session.dppb()
            ot_private = session.ot_private_key()
            euicc_otpk = session.ot_public or b""
        except SessionError as exc:
            # PrepareDownload never ran in this session: there is no key this package can be bound to
            raise LoadFailure(ErrorReason.INVALID_TRANSACTION_ID, str(exc)) from None
        public = dppb.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise LoadFailure(ErrorReason.INVALID_SIGNATURE, "the DPpb key is not an EC key")
        try:
            verify_plain(public, bytes(value["smdpSign"]), signed_data_isc(signed_part, euicc_otpk))
        except CryptoError as exc:
            raise LoadFailure(ErrorReason.INVALID_SIGNATURE, f"smdpSign: {exc}") from None
        try:
            smdp_otpk = public_from_point(bytes(value["smdpOtpk"]))
            keys = derive_session_keys(
                ecka(ot_private, smdp_otpk), host_id=host_id, eid=self.eid, key_length=key_length[0]
            )
        except CryptoError as exc:
            raise LoadFailure(ErrorReason.UNSUPPORTED_CRT_VALUES, str(exc)) from None
        self._channel = Scp03t(keys)
        try:
            session.advance(SessionEvent.LOAD)
        except SessionError as exc:
            raise LoadFailure(ErrorReason.INVALID_TRANSACTION_ID, str(exc)) from None

    def _sequence_header(self, segment: bytes, tag: int, command: BppCommand) -> int:
        """A1 or A3 alone: its tag and length; the length of the '88'/'86' segments that follow."""
        try:
            header, announced = _header(segment, tag)
        except CryptoError as exc:
            raise LoadFailure(ErrorReason.SCP03T_STRUCTURE_ERROR, str(exc), command) from None
        if header != len(segment) or announced == 0:
            raise LoadFailure(
                ErrorReason.SCP03T_STRUCTURE_ERROR, f"{tag:02X}: not a tag and length alone", command
            )
        self._count(header, command)
        if announced > self._bpp_left:
            raise LoadFailure(ErrorReason.SCP03T_STRUCTURE_ERROR, f"{tag:02X} longer than BF36", command)
        return announced

    def _header_and_one(self, segment: bytes, tag: int, command: BppCommand) -> bytes:
        """A0 or A2 with the one '87' segment it holds (SGP.22 2.5.5: "plus the first '87' TLV")."""
        try:
            header, announced = _header(segment, tag)
        except CryptoError as exc:
            raise LoadFailure(ErrorReason.SCP03T_STRUCTURE_ERROR, str(exc), command) from None
        inner = segment[header:]
        if announced != len(inner):
            raise LoadFailure(
                ErrorReason.SCP03T_STRUCTURE_ERROR, f"{tag:02X}: one '87' segment expected", command
            )
        self._count(len(segment), command)
        return self._unwrap(inner, 0x87, command)

    def _unwrap(self, data: bytes, tag: int, command: BppCommand, *, mac_only: bool = False) -> bytes:
        assert self._channel is not None  # the table lets no protected segment before InitialiseSecureChannel
        try:
            if mac_only:
                return self._channel.unwrap_mac_only(data, tag=tag)
            return self._channel.unwrap(data, tag=tag)
        except Scp03tSecurityError as exc:
            raise LoadFailure(ErrorReason.SCP03T_SECURITY_ERROR, str(exc), command) from None
        except (Scp03tStructureError, CryptoError) as exc:
            raise LoadFailure(ErrorReason.SCP03T_STRUCTURE_ERROR, str(exc), command) from None

    def _configure_isdp(self, plain: bytes) -> None:
        try:
            decode("ConfigureISDPRequest", plain)
        except Asn1Error as exc:
            raise LoadFailure(
                ErrorReason.INCORRECT_INPUT_VALUES, str(exc), BppCommand.CONFIGURE_ISDP
            ) from None

    def _store_metadata(self, segment: bytes) -> None:
        if len(segment) > self._seq_left:
            raise LoadFailure(
                ErrorReason.SCP03T_STRUCTURE_ERROR, "'88' beyond A1's length", BppCommand.STORE_METADATA
            )
        self._seq_left -= len(segment)
        self._count(len(segment), BppCommand.STORE_METADATA)
        self._metadata += self._unwrap(segment, 0x88, BppCommand.STORE_METADATA, mac_only=True)

    def _metadata_done(self) -> None:
        """The '88' segments are all in (the next segment is A2 or A3): decode and check StoreMetadataRequest."""
        command = BppCommand.STORE_METADATA
        if self._seq_left:
            raise LoadFailure(
                ErrorReason.SCP03T_STRUCTURE_ERROR, f"{self._seq_left} bytes of A1 missing", command
            )
        try:
            value = decode("StoreMetadataRequest", self._metadata)
            iccid = iccid_digits(bytes(value["iccid"]))
        except (Asn1Error, UppError) as exc:
            raise LoadFailure(
                ErrorReason.INCORRECT_INPUT_VALUES, f"StoreMetadataRequest: {exc}", command
            ) from None
        try:
            self.store.check_install(iccid, _profile_class(value.get("profileClass")))
        except StoreError as exc:
            raise LoadFailure(ErrorReason(int(exc.reason)), exc.why, command) from None
        self._metadata_value = dict(value, iccid_digits=iccid)

    def _replace_keys(self, plain: bytes) -> None:
        command = BppCommand.REPLACE_SESSION_KEYS
        try:
            value = decode("ReplaceSessionKeysRequest", plain)
            keys = SessionKeys(
                s_enc=bytes(value["ppkEnc"]),
                s_mac=bytes(value["ppkCmac"]),
                initial_mcv=bytes(value["initialMacChainingValue"]),
            )
        except (Asn1Error, CryptoError) as exc:
            raise LoadFailure(
                ErrorReason.INCORRECT_INPUT_VALUES, f"ReplaceSessionKeysRequest: {exc}", command
            ) from None
        self._channel = Scp03t(keys)

    def _element(self, segment: bytes) -> None:
        command = BppCommand.LOAD_PROFILE_ELEMENTS
        if len(segment) > self._seq_left:
            raise LoadFailure(ErrorReason.SCP03T_STRUCTURE_ERROR, "'86' beyond A3's length", command)
        self._seq_left -= len(segment)
        self._count(len(segment), command)
        self._elements += self._unwrap(segment, 0x86, command)
        if len(self._elements) > MAX_UPP:
            raise LoadFailure(
                ErrorReason.INSTALL_FAILED_DUE_TO_INSUFFICIENT_MEMORY_FOR_PROFILE,
                f"profile package over {MAX_UPP} bytes",
                command,
            )

    def _install(self) -> LoadResult:
        """The last '86' arrived: the whole package is here, installed all at once or not at all."""
        command = BppCommand.LOAD_PROFILE_ELEMENTS
        if self._bpp_left:
            raise LoadFailure(
                ErrorReason.SCP03T_STRUCTURE_ERROR, f"{self._bpp_left} bytes of BF36 missing", command
            )
        metadata = self._metadata_value
        assert metadata is not None  # the table lets no '86' before the metadata was checked
        try:
            profile = self.store.install(
                iccid=metadata["iccid_digits"],
                upp=self._elements,
                name=str(metadata.get("profileName", "")),
                provider=str(metadata.get("serviceProviderName", "")),
                profile_class=_profile_class(metadata.get("profileClass")),
                ppr_ids=_ppr_names(metadata.get("profilePolicyRules")),
                metadata_der=self._metadata,
                smdp_address=self.session.server_address if self.session is not None else "",
            )
        except StoreError as exc:
            raise LoadFailure(ErrorReason(int(exc.reason)), exc.why, command) from None
        final = ("successResult", {"aid": profile.aid, "simaResponse": b""})
        return LoadResult(
            done=True,
            result_der=self._pir(final, profile.iccid),
            keep_session=False,  # SGP.22 3.1.3.3: the installed package's keys are of no further use
            iccid=profile.iccid,
            aid=profile.aid,
            segment=self.segments,
        )

    # --- the end ----------------------------------------------------------------------------------------------

    def _keeps_session(self) -> bool:
        return self.state is LoadState.FAILED and self.keep_otpk

    def _fail(self, command: BppCommand, reason: ErrorReason, why: str) -> LoadResult:
        if self.state not in (LoadState.INSTALLED, LoadState.FAILED):
            self.state = LOAD_TABLE.next(self.state, Segment.FAIL)
        keep = self.keep_otpk
        if keep and self.session is not None and self._channel is not None:
            try:
                self.session.advance(SessionEvent.INTERRUPTED)  # the kept session waits for the package again
            except SessionError:
                keep = False
        iccid = self._metadata_value["iccid_digits"] if self._metadata_value else None
        final = ("errorResult", {"bppCommandId": int(command), "errorReason": int(reason)})
        return LoadResult(
            done=True,
            result_der=self._pir(final, iccid),
            error=reason.asn1_name,
            keep_session=keep,
            bpp_command=command,
            reason=reason,
            segment=self.segments,
            interrupted=reason is ErrorReason.INSTALL_FAILED_DUE_TO_INTERRUPTION,
            why=why,
        )

    def _pir(self, final: tuple[str, dict[str, Any]], iccid: str | None) -> bytes:
        """ProfileInstallationResult (BF37): the data, signed with SK.EUICC.ECDSA over its DER (SGP.22 5.5.1)."""
        session = self.session
        dppb: x509.Certificate | None = None
        if session is not None and session.dppb_certificate is not None:
            try:
                dppb = session.dppb()
            except SessionError:
                dppb = None
        metadata: dict[str, Any] = {
            "seqNumber": self.seq_number,
            "profileManagementOperation": (b"\x80", 1),  # notificationInstall
            "notificationAddress": session.server_address if session is not None else "",
        }
        if iccid is not None:
            metadata["iccid"] = iccid_bytes(iccid)
        transaction_id = self._transaction_id or (session.transaction_id if session is not None else b"\x00")
        data = encode(
            "ProfileInstallationResultData",
            {
                "transactionId": transaction_id,
                "notificationMetadata": metadata,
                "smdpOid": self._smdp_oid_of(dppb),
                "finalResult": final,
            },
        )
        signature = sign_plain(self.euicc_key, signed_data_pir(data))
        return tlv(0xBF37, data + signature_do(signature))


def _first_tag(data: bytes) -> int:
    if not data:
        raise CryptoError("empty segment")
    tag = data[0]
    if tag & 0x1F != 0x1F:
        return tag
    for index in range(1, min(len(data), 4)):
        tag = (tag << 8) | data[index]
        if not data[index] & 0x80:
            return tag
    raise CryptoError("tag cut short")


def _header(data: bytes, tag: int) -> tuple[int, int]:
    """(size of the tag and length fields, the length announced) of a TLV starting `data` that must have `tag`;
    the value may be cut (it arrives in later segments). CryptoError when it is not so."""
    if _first_tag(data) != tag:
        raise CryptoError(f"expected tag {tag:X}, got {data[:2].hex().upper()}")
    at = 2 if tag > 0xFF else 1
    if at >= len(data):
        raise CryptoError(f"{tag:X}: no length")
    first = data[at]
    if first < 0x80:
        return at + 1, first
    count = first & 0x7F
    if not 1 <= count <= 3 or at + 1 + count > len(data):
        raise CryptoError(f"{tag:X}: bad length field")
    return at + 1 + count, int.from_bytes(data[at + 1 : at + 1 + count], "big")


def segment_bpp(bpp: bytes) -> list[bytes]:
    """The segments the LPA sends a BPP in (SGP.22 section 2.5.5): BF36's tag and length with BF23; A0's with its
    '87'; A1's alone and each '88'; A2's with its '87' when present; A3's alone and each '86'. CryptoError when
    `bpp` is not a BoundProfilePackage of that shape."""
    items = split_tlvs(bpp)
    if len(items) != 1 or items[0][0] != TAG_BPP:
        raise CryptoError("not one BF36 TLV")
    head = len(bpp) - len(items[0][1])
    parts = split_tlvs(items[0][1])
    if not parts or parts[0][0] != TAG_ISC:
        raise CryptoError("BF36 does not start with BF23")
    out = [bpp[:head] + parts[0][2]]
    for tag, value, raw in parts[1:]:
        inner = split_tlvs(value)
        cut = len(raw) - len(value)
        if tag in (TAG_FIRST_87, TAG_SECOND_87):
            if len(inner) != 1:
                raise CryptoError(f"{tag:02X} holds {len(inner)} segments, one expected")
            out.append(raw)
        elif tag in (TAG_SEQ_88, TAG_SEQ_86):
            out.append(raw[:cut])
            out.extend(item[2] for item in inner)
        else:
            raise CryptoError(f"unexpected tag {tag:X} in BF36")
    return out
