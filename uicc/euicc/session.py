"""The eUICC's download session of GSMA SGP.22 section 3.1.3 (Profile Download and Installation), sans-IO.

ES10b.AuthenticateServer opens it (the transactionId, the SM-DP+'s address and challenge, the eUICC challenge it
answered, the DPauth certificate), ES10b.PrepareDownload adds the DPpb certificate and the one-time key pair
otPK/otSK.EUICC.ECKA (SGP.22 5.7.5), ES10b.LoadBoundProfilePackage (the BPP loader, bpp_loader.py) uses it, and
it ends with the install, ES10b.CancelSession, or a new AuthenticateServer. `to_dict`/`from_dict` put it in the
card's state file, so a session the card keeps (the profile option `euicc_keep_otpk`, docs/protocols.md "eUICC and
the cloud backup") survives a power cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["DownloadSession", "SessionError", "SessionEvent", "SessionPhase"]


class SessionError(ValueError):
    """A session event not allowed in the current phase, or a saved session that does not read back."""


class SessionPhase(Enum):
    """Where the download of SGP.22 3.1.3 stands on the eUICC."""

    AUTHENTICATED = "authenticated"  # AuthenticateServer answered euiccSigned1
    PREPARED = "prepared"  # PrepareDownload made otPK/otSK.EUICC.ECKA; the BPP may come
    LOADING = "loading"  # InitialiseSecureChannel of a BPP was accepted; segments follow


class SessionEvent(Enum):
    PREPARE = "prepare"
    LOAD = "load"
    INTERRUPTED = (
        "interrupted"  # a load stopped before its end; the kept session waits for the same BPP again
    )


# SGP.22 3.1.3: PrepareDownload follows AuthenticateServer; a second PrepareDownload in a session reuses the
# one-time key (the bppEuiccOtpk retry of 5.7.5); a BPP is loaded after PrepareDownload, and again after an
# interrupted load when the session was kept.
TRANSITIONS: dict[tuple[SessionPhase, SessionEvent], SessionPhase] = {
    (SessionPhase.AUTHENTICATED, SessionEvent.PREPARE): SessionPhase.PREPARED,
    (SessionPhase.PREPARED, SessionEvent.PREPARE): SessionPhase.PREPARED,
    (SessionPhase.PREPARED, SessionEvent.LOAD): SessionPhase.LOADING,
    (SessionPhase.LOADING, SessionEvent.INTERRUPTED): SessionPhase.PREPARED,
    (SessionPhase.LOADING, SessionEvent.LOAD): SessionPhase.LOADING,
}


def _hex(data: dict[str, Any], key: str, *, optional: bool = False) -> bytes | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise SessionError(f"saved session: {key} missing or not a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise SessionError(f"saved session: {key} is not hex") from None


@dataclass
class DownloadSession:
    """One download session on the eUICC. Bytes are as they travel (transactionId, challenges, certificates' DER);
    `ot_private` is the 32-byte private value of otSK.EUICC.ECKA, `ot_public` the 65-byte uncompressed point."""

    transaction_id: bytes
    server_address: str
    server_challenge: bytes
    euicc_challenge: bytes
    dpauth_certificate: bytes
    dppb_certificate: bytes | None = None
    ot_private: bytes | None = None
    ot_public: bytes | None = None
    hash_cc: bytes | None = None
    phase: SessionPhase = SessionPhase.AUTHENTICATED
    # what smdpSignature2 of PrepareDownload covers after smdpSigned2 (SGP.22 5.7.5)
    euicc_signature1: bytes | None = None

    def advance(self, event: SessionEvent) -> SessionPhase:
        """Moves the phase by the transition table; SessionError when the event is not allowed now."""
        target = TRANSITIONS.get((self.phase, event))
        if target is None:
            raise SessionError(f"{event.value} not allowed in phase {self.phase.value}")
        self.phase = target
        return target

    # --- keys ----------------------------------------------------------------------------------------------------

    def set_one_time_key(self, key: ec.EllipticCurvePrivateKey) -> None:
        """Keeps otSK.EUICC.ECKA (and its public point) of PrepareDownload."""
        self.ot_private = key.private_numbers().private_value.to_bytes(32, "big")
        self.ot_public = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def ot_private_key(self) -> ec.EllipticCurvePrivateKey:
        """otSK.EUICC.ECKA as a key; SessionError when PrepareDownload has not made one."""
        if self.ot_private is None:
            raise SessionError("no one-time key: PrepareDownload has not run in this session")
        return ec.derive_private_key(int.from_bytes(self.ot_private, "big"), ec.SECP256R1())

    def dppb(self) -> x509.Certificate:
        """CERT.DPpb.ECDSA of PrepareDownload; SessionError when there is none or it does not parse."""
        if self.dppb_certificate is None:
            raise SessionError("no DPpb certificate: PrepareDownload has not run in this session")
        try:
            return x509.load_der_x509_certificate(self.dppb_certificate)
        except ValueError as exc:
            raise SessionError(f"DPpb certificate: {exc}") from exc

    def dpauth(self) -> x509.Certificate:
        """CERT.DPauth.ECDSA of AuthenticateServer."""
        try:
            return x509.load_der_x509_certificate(self.dpauth_certificate)
        except ValueError as exc:
            raise SessionError(f"DPauth certificate: {exc}") from exc

    # --- state file ------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        def opt(value: bytes | None) -> str | None:
            return None if value is None else value.hex()

        return {
            "transaction_id": self.transaction_id.hex(),
            "server_address": self.server_address,
            "server_challenge": self.server_challenge.hex(),
            "euicc_challenge": self.euicc_challenge.hex(),
            "dpauth_certificate": self.dpauth_certificate.hex(),
            "dppb_certificate": opt(self.dppb_certificate),
            "ot_private": opt(self.ot_private),
            "ot_public": opt(self.ot_public),
            "hash_cc": opt(self.hash_cc),
            "phase": self.phase.value,
            "euicc_signature1": opt(self.euicc_signature1),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DownloadSession:
        """The session `to_dict` saved; SessionError when the saved form is damaged."""
        if not isinstance(data, dict):
            raise SessionError("saved session: not a table")
        address = data.get("server_address")
        if not isinstance(address, str):
            raise SessionError("saved session: server_address missing")
        try:
            phase = SessionPhase(data.get("phase", SessionPhase.AUTHENTICATED.value))
        except ValueError:
            raise SessionError(f"saved session: unknown phase {data.get('phase')!r}") from None
        session = cls(
            transaction_id=_hex(data, "transaction_id") or b"",
            server_address=address,
            server_challenge=_hex(data, "server_challenge") or b"",
            euicc_challenge=_hex(data, "euicc_challenge") or b"",
            dpauth_certificate=_hex(data, "dpauth_certificate") or b"",
            dppb_certificate=_hex(data, "dppb_certificate", optional=True),
            ot_private=_hex(data, "ot_private", optional=True),
            ot_public=_hex(data, "ot_public", optional=True),
            hash_cc=_hex(data, "hash_cc", optional=True),
            phase=phase,
            euicc_signature1=_hex(data, "euicc_signature1", optional=True),
        )
        if not 1 <= len(session.transaction_id) <= 16:
            raise SessionError("saved session: a transactionId is 1 to 16 bytes")
        if session.ot_private is not None and len(session.ot_private) != 32:
            raise SessionError("saved session: otSK is 32 bytes")
        if phase is not SessionPhase.AUTHENTICATED and session.ot_private is None:
            raise SessionError(f"saved session: phase {phase.value} without a one-time key")
        return session
