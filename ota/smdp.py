"""The SM-DP+ of GSMA SGP.22 (RSP Technical Specification v2.2-2.5): the ES9+ functions of section 5.6 in the JSON
binding of section 6.5 (ota/es9_json.py) over HTTPS, for the download of section 3.1.3; docs/protocols.md, "eUICC
and the cloud backup".

- initiateAuthentication (5.6.1): checks the SM-DP+ address, chooses the CIs from euiccInfo1's lists (one the
  eUICC signs under, euiccCiPKIdListForSigning: else 8.8.2 / 3.1; one our DPauth certificate chains to that the
  eUICC verifies with, euiccCiPKIdListForVerification: else 8.8.4 / 3.7), opens an RSP session (transactionId,
  serverChallenge) and signs serverSigned1 with the DPauth key.
- authenticateClient (5.6.3): checks the EUM and eUICC certificates up to the CI, euiccSignature1 and the session's
  challenge, takes the EID from the eUICC certificate and the matchingId from ctxParams1, and answers the profile
  metadata (StoreMetadataRequest with its pprIds) and smdpSigned2/smdpSignature2 signed with the DPpb key.
- getBoundProfilePackage (5.6.2): checks euiccSignature2, binds the profile to the eUICC's one-time key
  (uicc/euicc/bpp_build.py) and marks it downloaded first: a profile is served ONCE, a later request for it is
  refused with 8.2 / 3.7 "BPP is not available for a new binding" (5.6.2; the ASN.1 binding's
  bppRebindingRefused), which is the premise of the cloud backup.
- handleNotification (5.6.4): the install result (ProfileInstallationResult, signature checked) moves the profile
  to installed or error; other notifications are recorded.
- cancelSession (5.6.5): ends a session the eUICC cancelled with a valid signature and our smdpOid (another
  SM-DP+'s OID: 8.8 / 3.10).

Every eUICC signature is checked over the signed element's bytes as received, never over a re-encoding.

`SmdpService` is the sans-IO core (a whole request in, an answer and its trace notes out); `SmdpServer` the trio
adapter: TLS with the DPauth certificate (SGP.22 2.6.6), h11 through ota/http_connection.py and the shared
connection loop of ota/http_serve.py. The served profiles' states persist in a JSON file written before the
answer leaves, so single use survives a restart.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import tempfile
import tomllib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

from bipsim.ota import es9_json
from bipsim.ota.es9_json import ActivationCode, Es9Error, Es9FormatError
from bipsim.ota.http_connection import REASONS, HttpRequest, ServerConnection
from bipsim.ota.http_serve import Reply, serve_connection
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.http_limits import HttpLimits
from bipsim.uicc.transitions import IllegalTransition, TransitionTable

if TYPE_CHECKING:
    from bipsim.uicc.euicc.pki import Pki

# ES9+ requests are small (the largest, authenticateClient, carries two certificates); answers may be larger
LIMITS = HttpLimits(header_bytes=8 * 1024, body_bytes=64 * 1024, request_timeout=30.0, connections=256)
MAX_SESSIONS = (
    1024  # RSP sessions held at once; past it the oldest is forgotten (its transactionId is unknown)
)
STATE_VERSION = 1
DEFAULT_PORT = 8443

# The status codes of SGP.22 section 5.6 (subject code, reason code) this server answers
SMDP_ADDRESS_REFUSED = ("8.8.1", "3.8")  # 5.6.1 SM-DP+ Address - Refused
CI_NOT_SUPPORTED = ("8.8.2", "3.1")  # 5.6.1 Security configuration - Unsupported (no CI PKID we know)
TRANSACTION_UNKNOWN = ("8.10.1", "3.9")  # 5.6.2/5.6.3/5.6.5 TransactionId - Unknown
EUM_CERT_INVALID = ("8.1.2", "6.1")  # 5.6.3 EUM Certificate - Verification failed
EUICC_CERT_INVALID = ("8.1.3", "6.1")  # 5.6.3 eUICC Certificate - Verification failed
EUICC_SIGNATURE_INVALID = ("8.1", "6.1")  # 5.6.2/5.6.3 eUICC - Verification failed
CI_UNKNOWN = ("8.11.1", "3.9")  # 5.6.3 CI Public Key - Unknown
MATCHING_ID_REFUSED = ("8.2.6", "3.8")  # 5.6.3 Matching ID - Refused (no download order behind it)
EID_REFUSED = ("8.1.1", "3.8")  # 5.6.3 EID - Refused (the order is for another eUICC)
BPP_NOT_AVAILABLE = ("8.2", "3.7")  # 5.6.2 Profile - Unavailable: BPP is not available for a new binding
EUICC_REFUSED = ("8.1", "3.8")  # the eUICC's own error (authenticateResponseError, downloadResponseError)
SMDP_OID_INVALID = ("8.8", "3.10")  # 5.6.5 SM-DP+ - Invalid Association: the smdpOid is not ours
# 5.6.1 SM-DP+ Certificate - Unavailable: no CERT.DPauth of ours chains to a CI the eUICC verifies with
NO_DPAUTH_FOR_CI = ("8.8.4", "3.7")
EXECUTION_ERROR = ("8.8", "4.2")  # the server could not do its part (the state file cannot be written)

PPR_BITS = {"ppr1": 1, "ppr2": 2}  # SGP.22 2.4.1.1 PprIds: bit 0 pprUpdateControl carries no rule
PROFILE_CLASSES = {"test": 0, "provisioning": 1, "operational": 2}  # SGP.22 ProfileClass


class Fault(StrEnum):
    """How the SM-DP+ lies when told to (`--fault`), so that the LPA's and the eUICC's handling of bad input can
    be shown."""

    GARBAGE = "garbage"  # every function's answer is HTTP 200 with a body that is not JSON
    BAD_SIGNATURE = (
        "bad-signature"  # serverSignature1 with one bit flipped: AuthenticateServer's invalidSignature
    )
    CORRUPT_BPP = (
        "corrupt-bpp"  # one byte of the last '86' segment's MAC flipped: the eUICC's scp03tSecurityError
    )


GARBAGE_BODY = b"<html>503 upstream temporarily unavailable</html>\n"  # what a broken proxy might answer


class SmdpError(ValueError):
    """A profiles folder, state file or PKI the SM-DP+ cannot serve from (reason in str())."""


class ProfileState(Enum):
    """A served profile's state at the SM-DP+ (the ES2+ states of SGP.22 3.1.3 this server uses)."""

    RELEASED = "released"  # ready to be downloaded once
    DOWNLOADED = "downloaded"  # its BPP was served: never again
    INSTALLED = "installed"  # the eUICC notified a successful install
    ERROR = "error"  # the eUICC notified a failed install


class ProfileEvent(Enum):
    DOWNLOAD = "download"
    INSTALLED = "installed"
    FAILED = "failed"


PROFILE_TRANSITIONS: TransitionTable[ProfileState, ProfileEvent] = TransitionTable(
    "SM-DP+ profile",
    {
        (ProfileState.RELEASED, ProfileEvent.DOWNLOAD): ProfileState.DOWNLOADED,
        (ProfileState.DOWNLOADED, ProfileEvent.INSTALLED): ProfileState.INSTALLED,
        (ProfileState.DOWNLOADED, ProfileEvent.FAILED): ProfileState.ERROR,
    },
)


class SessionState(Enum):
    """An RSP session (SGP.22 3.1.3) at the SM-DP+."""

    INITIATED = "initiated"  # initiateAuthentication answered serverSigned1
    AUTHENTICATED = "authenticated"  # authenticateClient checked the eUICC and chose the profile
    BOUND = "bound"  # getBoundProfilePackage served the BPP
    ENDED = "ended"  # the install result came, or the session was cancelled


class SessionEvent(Enum):
    AUTHENTICATE = "authenticate"
    BIND = "bind"
    END = "end"


SESSION_TRANSITIONS: TransitionTable[SessionState, SessionEvent] = TransitionTable(
    "SM-DP+ RSP session",
    {
        (SessionState.INITIATED, SessionEvent.AUTHENTICATE): SessionState.AUTHENTICATED,
        (SessionState.AUTHENTICATED, SessionEvent.BIND): SessionState.BOUND,
        (SessionState.INITIATED, SessionEvent.END): SessionState.ENDED,
        (SessionState.AUTHENTICATED, SessionEvent.END): SessionState.ENDED,
        (SessionState.BOUND, SessionEvent.END): SessionState.ENDED,
    },
)


@dataclass
class ServedProfile:
    """One download order: a UPP, its metadata and its state. `eid`: the one eUICC it may go to (None: any)."""

    matching_id: str
    name: str
    upp: bytes
    iccid: str
    service_provider_name: str
    profile_name: str
    ppr_ids: tuple[str, ...] = ()
    profile_class: str = "operational"
    eid: str | None = None
    state: ProfileState = ProfileState.RELEASED
    downloaded_by: str | None = None  # the EID it went to
    transaction_id: str | None = None  # of the session that downloaded it
    result: str | None = None  # the install notification's result ("success" or the error reason)
    # the DER of the eUICC certificate of the download: the install result's signature is checked with it, also
    # after a restart has forgotten the session
    euicc_certificate: bytes | None = None

    def metadata(self) -> dict[str, Any]:
        """StoreMetadataRequest (SGP.22 5.4.1 / 5.7.5) as asn1tools takes it."""
        from bipsim.uicc.euicc.upp import iccid_bytes

        value: dict[str, Any] = {
            "iccid": iccid_bytes(self.iccid),
            "serviceProviderName": self.service_provider_name,
            "profileName": self.profile_name,
            "profileClass": PROFILE_CLASSES[self.profile_class],
        }
        bits = ppr_bit_string(self.ppr_ids)
        if bits is not None:
            value["profilePolicyRules"] = bits
        return value

    def activation_code(self, address: str) -> ActivationCode:
        return ActivationCode(address, self.matching_id)

    def ppr(self) -> int:
        """The record's PPR digit (docs/protocols.md): 0 none, 1 ppr1, 2 ppr2, 3 both."""
        return sum(PPR_BITS[name] for name in set(self.ppr_ids))


def ppr_bit_string(ppr_ids: tuple[str, ...]) -> tuple[bytes, int] | None:
    """PprIds as asn1tools encodes a BIT STRING: (bytes, bit count), in the DER form of a named bit list (no
    trailing zero bits: SGP.22's ASN.1 names the bits); None when no rule is set."""
    bits = [PPR_BITS[name] for name in set(ppr_ids)]
    if not bits:
        return None
    value = 0
    for bit in bits:
        value |= 0x80 >> bit
    return bytes([value]), max(bits) + 1


@dataclass
class RspSession:
    transaction_id: bytes
    euicc_challenge: bytes
    server_challenge: bytes
    state: SessionState = SessionState.INITIATED
    matching_id: str | None = None
    eid: str | None = None
    euicc_certificate: x509.Certificate | None = None
    smdp_signature2: bytes = b""  # the 64 r||s bytes euiccSignature2 covers


@dataclass(frozen=True)
class Note:
    """A trace event of the core besides the request's answer: a profile's state change, a notification."""

    kind: Kind
    summary: str
    fields: dict[str, Any]
    error: bool = False


@dataclass(frozen=True)
class Answer:
    """What the adapter sends: the HTTP status, the JSON body, and the events of the access log."""

    status: int
    body: bytes
    function: str | None
    fields: dict[str, Any]
    notes: tuple[Note, ...] = ()
    error: bool = False
    refused: bool = False  # refused before any function ran (es9.refused)


# --- the served profiles -----------------------------------------------------------------------------------------

_BUILTIN_NAMES = {"op1": "Operator One", "op2": "Operator Two"}
SMDP_KEYS = {"matching_id", "ppr_ids", "service_provider_name", "profile_name", "profile_class", "eid"}


def builtin_profiles() -> dict[str, ServedProfile]:
    """The built-in UPPs of uicc/euicc/upp.py, one order each: matchingId the name in upper case, no PPR."""
    from bipsim.uicc.euicc.upp import builtin_upps, decode_upp

    out: dict[str, ServedProfile] = {}
    for name, upp in builtin_upps().items():
        card = decode_upp(upp)
        provider = _BUILTIN_NAMES.get(name, f"Operator {name}")
        out[name.upper()] = ServedProfile(
            name.upper(), name, upp, card.iccid, provider, f"{provider} ({name})"
        )
    return out


def _upp_text(text: str, where: str) -> str:
    """The file's text before its `[smdp]` table: the UPP (comments kept, they may pad it on purpose)."""
    lines = text.splitlines(keepends=True)
    for at, line in enumerate(lines):
        if line.strip() == "[smdp]":
            rest = "".join(lines[at + 1 :])
            if any(raw.strip().startswith("[") for raw in rest.splitlines()):
                raise SmdpError(f"{where}: [smdp] must be the file's last table")
            return "".join(lines[:at])
    raise SmdpError(f"{where}: no [smdp] table (matching_id, ppr_ids, ...)")


def load_profile_file(path: Path) -> ServedProfile:
    """One served profile from a TOML file: the UPP's keys (iccid, imsi, mnc_length: uicc/euicc/upp.py) and last
    an `[smdp]` table: matching_id (required), ppr_ids (["ppr1", "ppr2"]), service_provider_name, profile_name,
    profile_class (test, provisioning, operational), eid (the one eUICC it may go to)."""
    from bipsim.uicc.euicc.upp import UppError, decode_upp, encode_upp

    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        raise SmdpError(f"{where}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SmdpError(f"{where}: not TOML: {exc}") from None
    meta = data.get("smdp")
    if not isinstance(meta, dict):
        raise SmdpError(f"{where}: no [smdp] table (matching_id, ppr_ids, ...)")
    unknown = sorted(set(meta) - SMDP_KEYS)
    if unknown:
        raise SmdpError(f"{where}: [smdp] keys it does not know: {', '.join(unknown)}")
    try:
        upp = encode_upp(_upp_text(text, where))
        card = decode_upp(upp)
    except UppError as exc:
        raise SmdpError(f"{where}: {exc}") from None
    matching_id = meta.get("matching_id")
    if not isinstance(matching_id, str) or not es9_json.MATCHING_ID.match(matching_id) or not matching_id:
        raise SmdpError(f"{where}: matching_id: 1 to 64 letters, digits or '-'")
    ppr_ids = meta.get("ppr_ids", [])
    if not isinstance(ppr_ids, list) or not all(name in PPR_BITS for name in ppr_ids):
        raise SmdpError(f'{where}: ppr_ids: a list of "ppr1", "ppr2"')
    profile_class = meta.get("profile_class", "operational")
    if profile_class not in PROFILE_CLASSES:
        raise SmdpError(f"{where}: profile_class: {', '.join(PROFILE_CLASSES)}")
    eid = meta.get("eid")
    if eid is not None and not (isinstance(eid, str) and len(eid) == 32 and eid.isdigit()):
        raise SmdpError(f"{where}: eid: 32 digits")
    names: dict[str, str] = {}
    for key, limit in (("service_provider_name", 32), ("profile_name", 64)):
        value = meta.get(key, path.stem if key == "profile_name" else "bipsim operator")
        if not isinstance(value, str) or len(value) > limit:
            raise SmdpError(f"{where}: {key}: a string of up to {limit} characters")
        names[key] = value
    return ServedProfile(
        matching_id,
        path.stem,
        upp,
        card.iccid,
        names["service_provider_name"],
        names["profile_name"],
        tuple(ppr_ids),
        profile_class,
        eid,
    )


def load_profiles(directory: Path | None, *, builtin: bool = True) -> dict[str, ServedProfile]:
    """The orders to serve by matchingId: the built-ins and every *.toml of `directory` (sorted by name)."""
    profiles = builtin_profiles() if builtin else {}
    if directory is not None:
        if not directory.is_dir():
            raise SmdpError(f"{directory}: not a directory")
        for path in sorted(directory.glob("*.toml")):
            profile = load_profile_file(path)
            if profile.matching_id in profiles:
                raise SmdpError(f"{path}: matching_id {profile.matching_id} is served already")
            profiles[profile.matching_id] = profile
    if not profiles:
        raise SmdpError("no profile to serve")
    return profiles


# --- the persisted state ----------------------------------------------------------------------------------------


def load_state(path: Path, profiles: dict[str, ServedProfile]) -> dict[str, dict[str, Any]]:
    """Applies a state file to `profiles` (states, who downloaded them); returns every entry, also those of orders
    no longer served, so that writing it back keeps them. A missing file is an empty state."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SmdpError(f"{path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
        entries = data["profiles"]
        if data.get("version") != STATE_VERSION or not isinstance(entries, dict):
            raise ValueError("not a state of this version")
        for matching_id, entry in entries.items():
            state = ProfileState(entry["state"])
            profile = profiles.get(matching_id)
            if profile is not None:
                profile.state = state
                profile.downloaded_by = entry.get("eid")
                profile.transaction_id = entry.get("transaction_id")
                profile.result = entry.get("result")
                certificate = entry.get("euicc_certificate")
                profile.euicc_certificate = bytes.fromhex(certificate) if certificate else None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SmdpError(f"{path}: not an SM-DP+ state file: {exc}") from None
    return {str(k): dict(v) for k, v in entries.items()}


def write_state(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Writes the state atomically (a temporary file beside it, fsync, rename): a crash leaves the old or the new."""
    text = json.dumps({"version": STATE_VERSION, "profiles": entries}, sort_keys=True, indent=1)
    handle, temp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


# --- the ES9+ functions ------------------------------------------------------------------------------------------


def _fail(code: tuple[str, str], message: str) -> Es9Error:
    return Es9Error(code[0], code[1], message)


def _asn1(type_name: str, data: bytes, field_name: str) -> Any:
    from bipsim.uicc.euicc.asn1 import Asn1Error, decode

    try:
        return decode(type_name, data)
    except Asn1Error as exc:
        raise Es9Error(
            es9_json.SUBJECT_FUNCTION,
            es9_json.REASON_INVALID,
            f"{field_name}: not the DER of {type_name}: {exc}",
        ) from None


def _der(type_name: str, value: Any) -> bytes:
    from bipsim.uicc.euicc.asn1 import encode

    return encode(type_name, value)


def _received(der: bytes, field_name: str, tag: int, *path: int) -> bytes:
    """The whole TLV at `path` inside the received DER `der`, exactly as the eUICC sent it: each index picks a TLV
    among its parent's contents, all but the last are descended into. SGP.22 signs the bytes sent (5.7.13,
    5.7.5, 5.7.6, 5.7.14); asn1tools' value encoded again need not be those bytes (a field of a later version
    it skipped under EXTENSIBILITY IMPLIED, a length not in its shortest form), so every eUICC signature is
    checked over what this cuts out. Es9Error when the element is not there or has not `tag`."""
    from bipsim.uicc.euicc import crypto

    try:
        items = crypto.split_tlvs(der)
        for index in path[:-1]:
            items = crypto.split_tlvs(items[index][1])
        found, _value, raw = items[path[-1]]
    except (crypto.CryptoError, IndexError) as exc:
        raise Es9Error(es9_json.SUBJECT_FUNCTION, es9_json.REASON_INVALID, f"{field_name}: {exc}") from None
    if found != tag:
        raise Es9Error(
            es9_json.SUBJECT_FUNCTION,
            es9_json.REASON_INVALID,
            f"{field_name}: '{found:X}' where the signed '{tag:X}' belongs",
        )
    return raw


def _ski_der(ski: bytes) -> bytes:
    """The DER of SubjectKeyIdentifier (an OCTET STRING), the form euiccCiPKIdToBeUsed travels in."""
    return bytes([0x04, len(ski)]) + ski


def _authority_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
    except (
        x509.ExtensionNotFound,
        ValueError,
    ):  # cryptography parses extensions on first use: bad ones raise
        return None
    value = ext.value
    return value.key_identifier if isinstance(value, x509.AuthorityKeyIdentifier) else None


def _eid_of(cert: x509.Certificate) -> str | None:
    """The EID in the eUICC certificate's subject serialNumber (SGP.22 4.5.2.1.0.2)."""
    try:
        names = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    except ValueError:
        return None
    value = names[0].value if names else None
    return value if isinstance(value, str) and len(value) == 32 and value.isdigit() else None


class SmdpService:
    """The rules of ES9+ (SGP.22 5.6), pure but for the state file it writes; the adapter brings the requests."""

    def __init__(
        self,
        pki: Pki,
        profiles: dict[str, ServedProfile],
        *,
        address: str,
        state_path: Path | None = None,
        random: Callable[[int], bytes] = secrets.token_bytes,
        faults: frozenset[Fault] = frozenset(),
    ) -> None:
        self.pki = pki
        self.faults = faults
        self.profiles = profiles
        self.address = address  # the SM-DP+ address of our activation codes, what serverSigned1 carries
        self.state_path = state_path
        self.random = random
        from bipsim.uicc.euicc.pki import cert_smdp_oid

        # our OID: the registeredID of the DPauth certificate (SGP.22 4.5.2.1.0.3), the PKI's when it names none
        self.smdp_oid = cert_smdp_oid(pki.dpauth_cert) or pki.smdp_oid
        self.sessions: OrderedDict[bytes, RspSession] = OrderedDict()
        self.entries: dict[str, dict[str, Any]] = {}
        if state_path is not None:
            self.entries = load_state(state_path, profiles)
        self.downloads = 0
        self.notifications = 0

    # --- HTTP ---

    def handle(self, request: HttpRequest) -> Answer:
        """One whole request: an ES9+ function's answer, or the refusal of a request that names none."""
        base: dict[str, Any] = {"method": request.method, "target": request.target[:200]}
        function = es9_json.function_of(request.target)
        if function is None:
            return self._refused(404, f"no ES9+ function at {request.target[:100]}", base)
        if request.method != "POST":
            return self._refused(405, f"{function} takes POST", base)
        protocol = request.header("x-admin-protocol")
        if not es9_json.ADMIN_PROTOCOL_RE.match(protocol.strip()):
            return self._refused(400, "X-Admin-Protocol: gsma/rsp/v2.x.y is required (SGP.22 6.5.1)", base)
        content_type = request.header("content-type").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            return self._refused(415, "Content-Type: application/json is required (SGP.22 6.5.1)", base)
        try:
            body = es9_json.decode_request(request.body)
        except Es9FormatError as exc:
            return self._refused(400, exc.message, base)
        answer = self._call(function, body)
        if Fault.GARBAGE in self.faults:
            # the function ran (a download is used up); only its answer is lost
            fields = {**answer.fields, "fault": Fault.GARBAGE.value}
            return Answer(200, GARBAGE_BODY, function, fields, answer.notes, error=answer.error)
        return answer

    def _call(self, function: str, body: dict[str, Any]) -> Answer:
        fields: dict[str, Any] = {"function": function}
        notes: list[Note] = []
        try:
            handler = getattr(self, f"_{function}")
            result: dict[str, Any] | None = handler(body, fields, notes)
        except Es9Error as exc:
            fields.update(
                http_status=200,
                status=es9_json.FAILED,
                subject_code=exc.subject_code,
                reason_code=exc.reason_code,
                message=exc.message,
            )
            return Answer(200, es9_json.encode_failure(exc), function, fields, tuple(notes), error=True)
        if result is None:  # handleNotification: 204 without a body (SGP.22 6.5.2.9)
            fields.update(http_status=204, status=es9_json.SUCCESS)
            return Answer(204, b"", function, fields, tuple(notes))
        fields.update(http_status=200, status=es9_json.SUCCESS)
        return Answer(200, es9_json.encode_response(result), function, fields, tuple(notes))

    def _refused(self, status: int, reason: str, base: dict[str, Any]) -> Answer:
        body = json.dumps({"error": reason}).encode()
        return Answer(
            status, body, None, {**base, "status": status, "reason": reason}, error=True, refused=True
        )

    # --- sessions and profiles ---

    def _session(self, transaction_id: bytes, fields: dict[str, Any]) -> RspSession:
        fields["transaction_id"] = transaction_id.hex().upper()
        session = self.sessions.get(transaction_id)
        if session is None or session.state is SessionState.ENDED:
            raise _fail(TRANSACTION_UNKNOWN, "the RSP session identified by the transactionId is unknown")
        return session

    def _move_session(self, session: RspSession, event: SessionEvent) -> None:
        try:
            session.state = SESSION_TRANSITIONS.next(session.state, event)
        except IllegalTransition:
            raise _fail(
                TRANSACTION_UNKNOWN,
                f"the RSP session is {session.state.value}: {event.value} does not follow",
            ) from None

    def _move_profile(
        self, profile: ServedProfile, event: ProfileEvent, notes: list[Note], **extra: Any
    ) -> None:
        """A profile's state change, written to the state file before anything else happens."""
        previous = profile.state
        profile.state = PROFILE_TRANSITIONS.next(previous, event)
        entry = {
            "state": profile.state.value,
            "eid": profile.downloaded_by,
            "transaction_id": profile.transaction_id,
            "iccid": profile.iccid,
            "result": profile.result,
            "euicc_certificate": profile.euicc_certificate.hex() if profile.euicc_certificate else None,
        }
        old = self.entries.get(profile.matching_id)
        self.entries[profile.matching_id] = entry
        if self.state_path is not None:
            try:
                write_state(self.state_path, self.entries)
            except OSError as exc:
                profile.state = previous
                if old is None:
                    self.entries.pop(profile.matching_id, None)
                else:
                    self.entries[profile.matching_id] = old
                raise _fail(EXECUTION_ERROR, f"the download could not be recorded: {exc}") from None
        notes.append(
            Note(
                Kind.ES9_PROFILE,
                f"profile {profile.matching_id} (ICCID {profile.iccid}) {previous.value} -> {profile.state.value}",
                {
                    "matching_id": profile.matching_id,
                    "iccid": profile.iccid,
                    "state": profile.state.value,
                    "previous": previous.value,
                    "eid": profile.downloaded_by,
                    "transaction_id": profile.transaction_id,
                    **extra,
                },
            )
        )

    # --- 5.6.1 initiateAuthentication ---

    def _initiateAuthentication(
        self, body: dict[str, Any], fields: dict[str, Any], notes: list[Note]
    ) -> dict[str, Any]:
        challenge = es9_json.b64_field(body, "euiccChallenge")
        info1_der = es9_json.b64_field(body, "euiccInfo1")
        address = es9_json.text_field(body, "smdpAddress")
        if len(challenge) != 16:
            raise Es9Error(es9_json.SUBJECT_FUNCTION, es9_json.REASON_INVALID, "euiccChallenge: 16 bytes")
        info1 = _asn1("EUICCInfo1", info1_der, "euiccInfo1")
        if address.lower() != self.address.lower():
            raise _fail(SMDP_ADDRESS_REFUSED, f"this SM-DP+ is {self.address}, not {address[:100]}")
        # 5.6.1: the CIs are chosen from the eUICC's lists, in its order of preference. Ours: the CI of our one
        # test PKI, which issued both our DPauth/DPpb certificates and (if it is this eUICC's CI) its EUM.
        ours = {self.pki.ci_pkid}
        for_signing = [bytes(k) for k in info1.get("euiccCiPKIdListForSigning", [])]
        for_verification = [bytes(k) for k in info1.get("euiccCiPKIdListForVerification", [])]
        # euiccCiPKIdToBeUsed: a CI the eUICC signs under (its certificate chain) that we can verify
        ci = next((pkid for pkid in for_signing if pkid in ours), None)
        if ci is None:
            raise _fail(CI_NOT_SUPPORTED, "none of the eUICC's CI public key identifiers is supported")
        # our CERT.DPauth must chain to a CI the eUICC verifies with (AuthenticateServer checks serverCertificate)
        verifier = next((pkid for pkid in for_verification if pkid in ours), None)
        if verifier is None:
            raise _fail(
                NO_DPAUTH_FOR_CI,
                "no CERT.DPauth of this SM-DP+ chains to a CI in euiccCiPKIdListForVerification",
            )
        fields["ci_pkid"] = verifier.hex().upper()
        transaction_id = self.random(16)
        server_challenge = self.random(16)
        signed1 = {
            "transactionId": transaction_id,
            "euiccChallenge": challenge,
            "serverAddress": self.address,
            "serverChallenge": server_challenge,
        }
        signed1_der = _der("ServerSigned1", signed1)
        from bipsim.uicc.euicc import crypto
        from bipsim.uicc.euicc.pki import cert_der

        signature = crypto.sign_plain(self.pki.dpauth_key, crypto.signed_data_server1(signed1_der))
        if Fault.BAD_SIGNATURE in self.faults:
            signature = bytes([signature[0] ^ 0x01]) + signature[1:]
            fields["fault"] = Fault.BAD_SIGNATURE.value
        self.sessions[transaction_id] = RspSession(transaction_id, challenge, server_challenge)
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        fields["transaction_id"] = transaction_id.hex().upper()
        return {
            "transactionId": transaction_id.hex().upper(),
            "serverSigned1": signed1_der,
            "serverSignature1": crypto.signature_do(signature),
            "euiccCiPKIdToBeUsed": _ski_der(ci),
            "serverCertificate": cert_der(self.pki.dpauth_cert),
        }

    # --- 5.6.3 authenticateClient ---

    def _authenticateClient(
        self, body: dict[str, Any], fields: dict[str, Any], notes: list[Note]
    ) -> dict[str, Any]:
        from bipsim.uicc.euicc import crypto
        from bipsim.uicc.euicc.pki import cert_public_key, verify_chain

        transaction_id = es9_json.hex_field(body, "transactionId", limit=16)
        response_der = es9_json.b64_field(body, "authenticateServerResponse")
        session = self._session(transaction_id, fields)
        choice, response = _asn1("AuthenticateServerResponse", response_der, "authenticateServerResponse")
        if choice != "authenticateResponseOk":
            code = response.get("authenticateErrorCode")
            raise _fail(EUICC_REFUSED, f"the eUICC refused AuthenticateServer: authenticateErrorCode {code}")
        if session.state is not SessionState.INITIATED:
            raise _fail(TRANSACTION_UNKNOWN, f"the RSP session is {session.state.value}, not initiated")
        try:
            eum = x509.load_der_x509_certificate(bytes(response["eumCertificate"]))
        except ValueError as exc:
            raise _fail(EUM_CERT_INVALID, f"eumCertificate is not X.509 DER: {exc}") from None
        try:
            euicc = x509.load_der_x509_certificate(bytes(response["euiccCertificate"]))
        except ValueError as exc:
            raise _fail(EUICC_CERT_INVALID, f"euiccCertificate is not X.509 DER: {exc}") from None
        if _authority_key_id(eum) != self.pki.ci_pkid:
            raise _fail(CI_UNKNOWN, "the EUM certificate was not issued by a CI this SM-DP+ knows")
        try:
            verify_chain(eum, self.pki.ci_cert)
        except ValueError as exc:  # CryptoError, or an extension cryptography cannot parse
            raise _fail(EUM_CERT_INVALID, f"EUM certificate: {exc}") from None
        try:
            verify_chain(euicc, eum)
        except ValueError as exc:
            raise _fail(EUICC_CERT_INVALID, f"eUICC certificate: {exc}") from None
        signed1 = response["euiccSigned1"]
        # BF38 { A0 authenticateResponseOk { 30 euiccSigned1, 5F37, ... } }: the signed bytes as received
        signed1_der = _received(response_der, "authenticateServerResponse", 0x30, 0, 0, 0)
        try:
            crypto.verify_plain(
                cert_public_key(euicc),
                bytes(response["euiccSignature1"]),
                crypto.signed_data_euicc1(signed1_der),
            )
        except (crypto.CryptoError, TypeError) as exc:
            raise _fail(EUICC_SIGNATURE_INVALID, f"euiccSignature1: {exc}") from None
        if bytes(signed1["transactionId"]) != transaction_id:
            raise _fail(TRANSACTION_UNKNOWN, "euiccSigned1 names another transactionId")
        if bytes(signed1["serverChallenge"]) != session.server_challenge:
            raise _fail(EUICC_SIGNATURE_INVALID, "euiccSigned1 answers another serverChallenge")
        eid = _eid_of(euicc)
        if eid is None:
            raise _fail(EUICC_CERT_INVALID, "the eUICC certificate's subject carries no EID (serialNumber)")
        session.eid = eid
        fields["eid"] = eid
        _ctx, params = signed1["ctxParams1"]
        matching_id = params.get("matchingId") or ""
        fields["matching_id"] = matching_id
        profile = self.profiles.get(matching_id)
        if profile is None:
            raise _fail(MATCHING_ID_REFUSED, f"no download order for matchingId {matching_id[:64]!r}")
        if profile.eid is not None and profile.eid != eid:
            raise _fail(EID_REFUSED, f"the order of {matching_id} is for another eUICC")
        session.matching_id = matching_id
        session.euicc_certificate = euicc
        self._move_session(session, SessionEvent.AUTHENTICATE)
        from bipsim.uicc.euicc.pki import cert_der

        smdp_signed2 = {"transactionId": transaction_id, "ccRequiredFlag": False}
        signed2_der = _der("SmdpSigned2", smdp_signed2)
        signature2 = crypto.sign_plain(
            self.pki.dppb_key,
            crypto.signed_data_smdp2(signed2_der, bytes(response["euiccSignature1"])),
        )
        session.smdp_signature2 = signature2
        return {
            "transactionId": transaction_id.hex().upper(),
            "profileMetadata": _der("StoreMetadataRequest", profile.metadata()),
            "smdpSigned2": signed2_der,
            "smdpSignature2": crypto.signature_do(signature2),
            "smdpCertificate": cert_der(self.pki.dppb_cert),
        }

    # --- 5.6.2 getBoundProfilePackage ---

    def _getBoundProfilePackage(
        self, body: dict[str, Any], fields: dict[str, Any], notes: list[Note]
    ) -> dict[str, Any]:
        from bipsim.uicc.euicc import crypto
        from bipsim.uicc.euicc.bpp_build import build_bpp
        from bipsim.uicc.euicc.pki import cert_der, cert_public_key

        transaction_id = es9_json.hex_field(body, "transactionId", limit=16)
        response_der = es9_json.b64_field(body, "prepareDownloadResponse")
        session = self._session(transaction_id, fields)
        fields.update(matching_id=session.matching_id, eid=session.eid)
        choice, response = _asn1("PrepareDownloadResponse", response_der, "prepareDownloadResponse")
        if choice != "downloadResponseOk":
            code = response.get("downloadErrorCode")
            raise _fail(EUICC_REFUSED, f"the eUICC refused PrepareDownload: downloadErrorCode {code}")
        if session.state is SessionState.INITIATED or session.euicc_certificate is None:
            raise _fail(TRANSACTION_UNKNOWN, "the RSP session was not authenticated (authenticateClient)")
        signed2 = response["euiccSigned2"]
        # BF21 { A0 downloadResponseOk { 30 euiccSigned2, 5F37 } }: the signed bytes as received
        signed2_der = _received(response_der, "prepareDownloadResponse", 0x30, 0, 0, 0)
        try:
            crypto.verify_plain(
                cert_public_key(session.euicc_certificate),
                bytes(response["euiccSignature2"]),
                crypto.signed_data_euicc2(signed2_der, session.smdp_signature2),
            )
        except (crypto.CryptoError, TypeError) as exc:
            raise _fail(EUICC_SIGNATURE_INVALID, f"euiccSignature2: {exc}") from None
        if bytes(signed2["transactionId"]) != transaction_id:
            raise _fail(TRANSACTION_UNKNOWN, "euiccSigned2 names another transactionId")
        profile = self.profiles[session.matching_id or ""]
        if profile.state is not ProfileState.RELEASED or session.state is not SessionState.AUTHENTICATED:
            # single use: the order was consumed by the first getBoundProfilePackage (the document's premise)
            raise _fail(
                BPP_NOT_AVAILABLE,
                f"BPP is not available for a new binding: profile {profile.matching_id} was "
                f"{profile.state.value} already",
            )
        otpk = bytes(signed2["euiccOtpk"])
        try:
            crypto.public_from_point(otpk)
        except crypto.CryptoError as exc:
            raise Es9Error(es9_json.SUBJECT_FUNCTION, es9_json.REASON_INVALID, f"euiccOtpk: {exc}") from None
        bpp = build_bpp(
            pki=self.pki,
            transaction_id=transaction_id,
            euicc_otpk=otpk,
            eid=session.eid or "",
            metadata=profile.metadata(),
            upp=profile.upp,
        )
        if Fault.CORRUPT_BPP in self.faults:
            bpp = _corrupt_last_segment(bpp)
            fields["fault"] = Fault.CORRUPT_BPP.value
        profile.downloaded_by = session.eid
        profile.euicc_certificate = cert_der(session.euicc_certificate)
        profile.transaction_id = transaction_id.hex().upper()
        # recorded (and written) before the answer: a crash after it never serves the profile twice
        self._move_profile(profile, ProfileEvent.DOWNLOAD, notes, size=len(bpp))
        self._move_session(session, SessionEvent.BIND)
        self.downloads += 1
        fields["size"] = len(bpp)
        return {"transactionId": transaction_id.hex().upper(), "boundProfilePackage": bpp}

    # --- 5.6.4 handleNotification ---

    def _handleNotification(self, body: dict[str, Any], fields: dict[str, Any], notes: list[Note]) -> None:
        from bipsim.uicc.euicc import crypto
        from bipsim.uicc.euicc.pki import cert_public_key, load_cert_der

        notification_der = es9_json.b64_field(body, "pendingNotification")
        choice, value = _asn1("PendingNotification", notification_der, "pendingNotification")
        self.notifications += 1
        if choice == "profileInstallationResult":
            data = value["profileInstallationResultData"]
            transaction_id = bytes(data["transactionId"])
            fields["transaction_id"] = transaction_id.hex().upper()
            session = self.sessions.get(transaction_id)
            metadata = data["notificationMetadata"]
            kind, result = data["finalResult"]
            outcome = "success" if kind == "successResult" else _error_reason(result)
            profile = self._profile_of(session, transaction_id)
            certificate = session.euicc_certificate if session is not None else None
            if certificate is None and profile is not None and profile.euicc_certificate is not None:
                certificate = load_cert_der(
                    profile.euicc_certificate
                )  # the session was forgotten by a restart
            verified = False
            # BF37 { BF27 profileInstallationResultData, 5F37 }: the signed bytes as received
            data_der = _received(notification_der, "pendingNotification", 0xBF27, 0, 0)
            if certificate is not None:
                try:
                    crypto.verify_plain(
                        cert_public_key(certificate),
                        bytes(value["euiccSignPIR"]),
                        crypto.signed_data_pir(data_der),
                    )
                    verified = True
                except (crypto.CryptoError, TypeError):
                    verified = False
            note_fields = {
                "notification": "install",
                "iccid": _iccid(metadata.get("iccid")),
                "seq_number": metadata.get("seqNumber"),
                "result": outcome,
                "verified": verified,
                "transaction_id": transaction_id.hex().upper(),
                "matching_id": profile.matching_id if profile else None,
            }
            notes.append(
                Note(
                    Kind.ES9_NOTIFICATION,
                    f"install result {outcome}" + ("" if verified else " (signature not verified: ignored)"),
                    note_fields,
                    error=not verified,
                )
            )
            # only a result the eUICC signed moves the profile on; a forged one is recorded and ignored
            if verified and profile is not None and profile.state is ProfileState.DOWNLOADED:
                profile.result = outcome
                event = ProfileEvent.INSTALLED if outcome == "success" else ProfileEvent.FAILED
                self._move_profile(profile, event, notes)
            if verified and session is not None and session.state is not SessionState.ENDED:
                self._move_session(session, SessionEvent.END)
            return None
        metadata = value["tbsOtherNotification"]
        operation = _operation(metadata.get("profileManagementOperation"))
        notes.append(
            Note(
                Kind.ES9_NOTIFICATION,
                f"{operation} notification for ICCID {_iccid(metadata.get('iccid'))}",
                {
                    "notification": operation,
                    "iccid": _iccid(metadata.get("iccid")),
                    "seq_number": metadata.get("seqNumber"),
                    "result": None,
                    # 30 { BF2F tbsOtherNotification, 5F37, ... }: the signed bytes as received
                    "verified": _verify_other(
                        value, _received(notification_der, "pendingNotification", 0xBF2F, 0, 0), self.pki
                    ),
                },
            )
        )
        return None

    def _profile_of(self, session: RspSession | None, transaction_id: bytes) -> ServedProfile | None:
        if session is not None and session.matching_id is not None:
            return self.profiles.get(session.matching_id)
        wanted = transaction_id.hex().upper()  # a session forgotten by a restart: the state file names it
        for profile in self.profiles.values():
            if profile.transaction_id == wanted:
                return profile
        return None

    # --- 5.6.5 cancelSession ---

    def _cancelSession(
        self, body: dict[str, Any], fields: dict[str, Any], notes: list[Note]
    ) -> dict[str, Any]:
        from bipsim.uicc.euicc import crypto
        from bipsim.uicc.euicc.pki import cert_public_key

        transaction_id = es9_json.hex_field(body, "transactionId", limit=16)
        response_der = es9_json.b64_field(body, "cancelSessionResponse")
        session = self._session(transaction_id, fields)
        fields.update(matching_id=session.matching_id, eid=session.eid)
        choice, value = _asn1("CancelSessionResponse", response_der, "cancelSessionResponse")
        if choice != "cancelSessionResponseOk":
            raise _fail(EUICC_REFUSED, f"the eUICC refused CancelSession: {value}")
        signed = value["euiccCancelSessionSigned"]
        if bytes(signed["transactionId"]) != transaction_id:
            raise _fail(TRANSACTION_UNKNOWN, "euiccCancelSessionSigned names another transactionId")
        if session.euicc_certificate is None:
            # 5.6.5: the signature is verified with PK.EUICC.ECDSA, which authenticateClient brings; before it
            # nothing proves the eUICC sent this, and whoever saw the transactionId could end the session
            raise _fail(
                EUICC_SIGNATURE_INVALID,
                "euiccCancelSessionSignature cannot be verified before authenticateClient gave the eUICC certificate",
            )
        # BF41 { A0 cancelSessionResponseOk { 30 euiccCancelSessionSigned, 5F37 } }: the signed bytes as received
        signed_der = _received(response_der, "cancelSessionResponse", 0x30, 0, 0, 0)
        try:
            crypto.verify_plain(
                cert_public_key(session.euicc_certificate),
                bytes(value["euiccCancelSessionSignature"]),
                signed_der,
            )
        except (crypto.CryptoError, TypeError) as exc:
            raise _fail(EUICC_SIGNATURE_INVALID, f"euiccCancelSessionSignature: {exc}") from None
        # 5.6.5: the eUICC names the SM-DP+ it cancels with, the OID of our certificates (asn1.decode reads
        # OIDs under 2.40+ right); another SM-DP+'s cancellation is refused and the session goes on
        ours = self.smdp_oid
        fields["smdp_oid"] = signed.get("smdpOid")
        if signed.get("smdpOid") != ours:
            raise _fail(
                SMDP_OID_INVALID, f"smdpOid {str(signed.get('smdpOid'))[:64]} is not this SM-DP+'s ({ours})"
            )
        fields["reason"] = signed.get("reason")
        self._move_session(session, SessionEvent.END)
        return {"transactionId": transaction_id.hex().upper()}


def _corrupt_last_segment(bpp: bytes) -> bytes:
    """The package with the last byte of its last '86' segment (a byte of that segment's C-MAC) flipped: the
    DER still decodes, the SCP03t check of that segment fails (SGP.22 2.6.4)."""
    from bipsim.uicc.euicc.asn1 import decode, encode

    value = decode("BoundProfilePackage", bpp)
    last = bytearray(value["sequenceOf86"][-1])
    last[-1] ^= 0x01
    value["sequenceOf86"][-1] = bytes(last)
    return encode("BoundProfilePackage", value)


_ERROR_REASONS = {
    1: "incorrectInputValues",
    2: "invalidSignature",
    3: "invalidTransactionId",
    4: "unsupportedCrtValues",
    5: "unsupportedRemoteOperationType",
    6: "unsupportedProfileClass",
    7: "scp03tStructureError",
    8: "scp03tSecurityError",
    9: "installFailedDueToIccidAlreadyExistsOnEuicc",
    10: "installFailedDueToInsufficientMemoryForProfile",
    11: "installFailedDueToInterruption",
    12: "installFailedDueToPEProcessingError",
    13: "installFailedDueToDataMismatch",
    14: "testProfileInstallFailedDueToInvalidNaaKey",
    15: "pprNotAllowed",
    127: "installFailedDueToUnknownError",
}


def _error_reason(result: Any) -> str:
    """ErrorResult's errorReason by its SGP.22 name (5.5.1)."""
    reason = result.get("errorReason") if isinstance(result, dict) else None
    if isinstance(reason, str):
        return reason
    return _ERROR_REASONS.get(reason if isinstance(reason, int) else -1, f"errorReason {reason}")


def _iccid(value: Any) -> str | None:
    from bipsim.uicc.euicc.upp import UppError, iccid_digits

    if not isinstance(value, (bytes, bytearray)):
        return None
    try:
        return iccid_digits(bytes(value))
    except UppError:
        return bytes(value).hex().upper()


def _operation(bits: Any) -> str:
    """NotificationEvent (SGP.22 5.7.9): bit 0 install, 1 enable, 2 disable, 3 delete."""
    if isinstance(bits, tuple) and len(bits) == 2 and isinstance(bits[0], (bytes, bytearray)) and bits[0]:
        first = bits[0][0]
        for bit, name in enumerate(("install", "enable", "disable", "delete")):
            if first & (0x80 >> bit):
                return name
    return "unknown"


def _verify_other(value: dict[str, Any], signed: bytes, pki: Pki) -> bool:
    """An enable/disable/delete notification's signature over `signed` (tbsOtherNotification as received), with
    its own eUICC and EUM certificates (SGP.22 5.7.9)."""
    from bipsim.uicc.euicc import crypto
    from bipsim.uicc.euicc.pki import cert_public_key, verify_chain

    try:
        eum = x509.load_der_x509_certificate(bytes(value["eumCertificate"]))
        euicc = x509.load_der_x509_certificate(bytes(value["euiccCertificate"]))
        verify_chain(eum, pki.ci_cert)
        verify_chain(euicc, eum)
        crypto.verify_plain(
            cert_public_key(euicc),
            bytes(value["euiccNotificationSignature"]),
            signed,
        )
    except (ValueError, TypeError, KeyError):
        return False
    return True


# --- the trio adapter -------------------------------------------------------------------------------------------


def server_ssl_context(pki: Pki) -> ssl.SSLContext:
    """TLS of ES9+ (SGP.22 2.6.6): the DPauth certificate and key (uicc/euicc/pki.py), TLS 1.2 or later; for TLS 1.2
    the ECDHE-ECDSA AES suites SGP.22 names."""
    from bipsim.uicc.euicc.pki import server_ssl_context as pki_context

    context = pki_context(pki)
    context.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-SHA256")
    return context


RESPONSE_HEADERS = (("X-Admin-Protocol", es9_json.ADMIN_PROTOCOL), ("Content-Type", es9_json.CONTENT_TYPE))


@dataclass
class SmdpServer:
    """One task per connection: TLS (unless `ssl_context` is None, for tests of the HTTP rules), h11 through
    ota/http_connection.py with the limits above, a deadline per request. Each request is an `es9.request` event
    and its answer one `es9.response` (or `es9.refused`), with the core's `es9.profile`/`es9.notification` notes."""

    service: SmdpService
    tracer: Tracer = NULL_TRACER
    ssl_context: ssl.SSLContext | None = None
    limits: HttpLimits = LIMITS
    requests: int = 0
    active: int = 0
    _next_id: int = field(default=0, repr=False)

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = int(listeners[0].socket.getsockname()[1])
        self.tracer.emit(
            Actor.SMDP,
            Actor.SMDP,
            Layer.APP,
            f"SM-DP+ listening on {host}:{bound}",
            kind=Kind.APP_EVENT,
            fields={
                "event": "listening",
                "host": host,
                "port": bound,
                "profiles": len(self.service.profiles),
            },
        )
        task_status.started(bound)
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, stream: trio.abc.Stream, peer: str | None = None) -> None:
        """One connection (TLS first when the server has a context)."""
        if peer is None and isinstance(stream, trio.SocketStream):
            try:
                peer = str(stream.socket.getpeername()[0])
            except OSError:
                peer = None
        self.active += 1
        self._next_id += 1
        where = f"c{self._next_id}"
        wire: trio.abc.Stream = stream
        try:
            if self.ssl_context is not None:
                tls = trio.SSLStream(stream, self.ssl_context, server_side=True)
                with trio.move_on_after(self.limits.request_timeout) as waiting:
                    await tls.do_handshake()
                if waiting.cancelled_caught:
                    raise trio.BrokenResourceError("TLS handshake not completed in time")
                wire = tls
            await self._loop(wire, peer, where)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if self.ssl_context is not None and isinstance(exc.__cause__, ssl.SSLError):
                self.tracer.emit(
                    Actor.SMDP,
                    Actor.AP,
                    Layer.TLS,
                    f"{where}: TLS failed: {exc.__cause__}",
                    error=True,
                    kind=Kind.TLS_ALERT,
                    fields={"connection": where, "peer": peer, "reason": str(exc.__cause__)[:200]},
                )
        except Exception as exc:  # noqa: BLE001 - one connection's fault never ends the server
            self.tracer.emit(
                Actor.SMDP,
                Actor.SMDP,
                Layer.APP,
                f"{where}: connection ended by {type(exc).__name__}: {exc}",
                error=True,
                kind=Kind.APP_ERROR,
                fields={"where": "smdp connection", "error": f"{type(exc).__name__}: {str(exc)[:200]}"},
            )
        finally:
            self.active -= 1
            await trio.aclose_forcefully(wire)

    async def _loop(self, stream: trio.abc.Stream, peer: str | None, where: str) -> None:
        connection = ServerConnection(self.limits, over_capacity=self.active > self.limits.connections)

        async def respond(event: HttpRequest) -> Reply:
            return self._respond(event, peer, where)

        await serve_connection(
            stream,
            connection,
            respond,
            tracer=self.tracer,
            actor=Actor.SMDP,
            refusal_headers=RESPONSE_HEADERS[:1],
        )

    def _respond(self, event: HttpRequest, peer: str | None, where: str) -> Reply:
        """One whole request: its `es9.request` event, the core's answer, its notes and its `es9.*` event."""
        self.requests += 1
        function = es9_json.function_of(event.target)
        self.tracer.emit(
            Actor.AP,
            Actor.SMDP,
            Layer.HTTP,
            f"{event.method} {event.target[:200]}",
            event.body or None,
            kind=Kind.ES9_REQUEST,
            fields={
                "function": function,
                "method": event.method,
                "peer": peer,
                "connection": where,
                **_request_ids(event.body),
            },
        )
        try:
            answer = self.service.handle(event)
        except Exception as exc:  # noqa: BLE001 - a fault of the core is this request's 500, not the server's
            reason = f"internal error: {type(exc).__name__}: {str(exc)[:200]}"
            answer = Answer(
                500,
                json.dumps({"error": reason}).encode(),
                function,
                {"function": function, "http_status": 500, "reason": reason},
                error=True,
            )
        for note in answer.notes:
            self.tracer.emit(
                Actor.SMDP,
                Actor.SMDP,
                Layer.APP,
                note.summary,
                error=note.error,
                kind=note.kind,
                fields=note.fields,
            )
        fields = answer.fields
        if answer.refused:
            summary = f"{answer.status} {REASONS.get(answer.status, '')}: {fields.get('reason')}"
            kind = Kind.ES9_REFUSED
        elif fields.get("status") == es9_json.FAILED:
            summary = (
                f"{answer.function}: Failed {fields.get('subject_code')}/{fields.get('reason_code')} "
                f"{fields.get('message', '')}"
            )
            kind = Kind.ES9_RESPONSE
        else:
            summary = f"{answer.function}: {answer.status} {fields.get('status', '')}"
            kind = Kind.ES9_RESPONSE
        self.tracer.emit(
            Actor.SMDP,
            Actor.AP,
            Layer.HTTP,
            summary[:300],
            answer.body or None,
            error=answer.error,
            kind=kind,
            fields=fields,
        )
        return Reply(answer.status, RESPONSE_HEADERS, answer.body)


def _request_ids(body: bytes) -> dict[str, Any]:
    """The transactionId and functionCallIdentifier a request names, for its trace event (nothing when unreadable)."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return {}
    if not isinstance(value, dict):
        return {}
    out: dict[str, Any] = {}
    if isinstance(value.get("transactionId"), str):
        out["transaction_id"] = value["transactionId"][:64]
    header = value.get("header")
    if isinstance(header, dict) and isinstance(header.get("functionCallIdentifier"), str):
        out["call_id"] = header["functionCallIdentifier"][:64]
    return out
