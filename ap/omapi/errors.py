"""The exceptions of the GlobalPlatform Open Mobile API (OMAPI v3.3, the Java binding's names) that the AP's
OMAPI service raises to applications; each carries the reason the trace records (docs/protocols.md, "OMAPI on the
AP")."""

from __future__ import annotations


class OmapiError(Exception):
    """Base of the OMAPI exceptions; `name` is the exception's name in the OMAPI specification."""

    name = "OmapiError"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OmapiIOException(OmapiError):
    """java.io.IOException: the reader or the secure element cannot be reached (card removed, modem error)."""

    name = "IOException"


class OmapiNoSuchElementException(OmapiError):
    """java.util.NoSuchElementException: the AID is not on the secure element or cannot be selected."""

    name = "NoSuchElementException"


class OmapiSecurityException(OmapiError):
    """java.lang.SecurityException: the calling application may not reach the applet (access rules, or the
    terminal's gate: enforceCarrierPrivilege false)."""

    name = "SecurityException"


class OmapiIllegalStateException(OmapiError):
    """java.lang.IllegalStateException: the SEService, session or channel is closed."""

    name = "IllegalStateException"


class OmapiIllegalArgumentException(OmapiError):
    """java.lang.IllegalArgumentException: an APDU shorter than 4 bytes, a MANAGE CHANNEL or a SELECT by DF name
    given to transmit, an AID of the wrong length."""

    name = "IllegalArgumentException"


EXCEPTIONS: dict[str, type[OmapiError]] = {
    cls.name: cls
    for cls in (
        OmapiIOException,
        OmapiNoSuchElementException,
        OmapiSecurityException,
        OmapiIllegalStateException,
        OmapiIllegalArgumentException,
    )
}
