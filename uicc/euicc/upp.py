"""The Unprotected Profile Package (UPP) this simulator installs on its eUICC, and its built-in operator profiles.

GSMA SGP.22 section 2.5.2 leaves the UPP's content to the profile package format (the TCA/SIMalliance
"eUICC Profile Package" ASN.1 of profile elements); this simulator carries something far smaller that its card
can really become: the UTF-8 text of a TOML card profile (uicc/profile.py, the keys a `--profile FILE` takes)
limited to the subscription's own keys, `iccid`, `imsi` and `mnc_length` (docs/protocols.md, "eUICC and the cloud
backup"). The SM-DP+ protects these bytes as the profile elements of the Bound Profile Package (the '86'
segments of SGP.22 section 2.5.5); the eUICC decodes them after the last segment and, once the profile is
enabled, its EF_ICCID, EF_IMSI and EF_AD become the profile's.

TOML comments are part of the text: a comment line pads a package to a chosen size (the chunking scenarios).
"""

from __future__ import annotations

import tomllib
from dataclasses import replace
from typing import Any

from bipsim.uicc.profile import CardProfile, load_profile

# the keys a UPP may carry: what enabling the profile writes into the card's files (bipsim.uicc.card)
UPP_KEYS = ("iccid", "imsi", "mnc_length")
REQUIRED_KEYS = ("iccid", "imsi")
MAX_UPP = (
    64 * 1024
)  # bytes: the eUICC refuses a bigger package (installFailedDueToInsufficientMemoryForProfile)


class UppError(ValueError):
    """The bytes are not a UPP of this simulator: not UTF-8, not TOML, a key it does not know or a bad value."""


def check_iccid(iccid: object) -> str:
    """The ICCID's digits: 18 to 20 decimal digits (ITU-T E.118), what SGP.22's 10-byte Iccid holds."""
    if not (isinstance(iccid, str) and iccid.isascii() and iccid.isdigit() and 18 <= len(iccid) <= 20):
        raise UppError(f"iccid = {iccid!r}: use 18 to 20 digits")
    return iccid


def iccid_bytes(iccid: str) -> bytes:
    """SGP.22's Iccid (and EF_ICCID, TS 102 221 section 13.2): 10 bytes of nibble-swapped BCD padded with F."""
    digits = check_iccid(iccid)
    text = digits.ljust(20, "F")
    return bytes(int(text[i + 1] + text[i], 16) for i in range(0, 20, 2))


def iccid_digits(data: bytes) -> str:
    """The digits of a 10-byte Iccid (the inverse of iccid_bytes); UppError when it is not one."""
    if len(data) != 10:
        raise UppError(f"an Iccid is 10 bytes, not {len(data)}")
    text = "".join(f"{byte & 0x0F:X}{byte >> 4:X}" for byte in data).rstrip("F")
    return check_iccid(text)


def _check(data: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(data) - set(UPP_KEYS))
    if unknown:
        raise UppError(
            f"keys a profile package cannot carry: {', '.join(unknown)} (use {', '.join(UPP_KEYS)})"
        )
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise UppError(f"missing {', '.join(missing)}")
    check_iccid(data["iccid"])
    imsi = data["imsi"]
    if not (isinstance(imsi, str) and imsi.isascii() and imsi.isdigit() and 6 <= len(imsi) <= 15):
        raise UppError(f"imsi = {imsi!r}: use 6 to 15 digits (3GPP TS 23.003 section 2.2)")
    mnc_length = data.get("mnc_length", 2)
    if mnc_length not in (2, 3) or isinstance(mnc_length, bool):
        raise UppError(f"mnc_length = {mnc_length!r}: use 2 or 3")
    return data


def upp_fields(data: bytes) -> dict[str, Any]:
    """The keys of a UPP as TOML gives them, checked; UppError when the bytes are not one."""
    if len(data) > MAX_UPP:
        raise UppError(f"{len(data)} bytes: a profile package is at most {MAX_UPP}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UppError(f"not UTF-8 at byte {exc.start}") from None
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UppError(f"not TOML: {exc}") from None
    return _check(parsed)


def encode_upp(profile_toml: str) -> bytes:
    """The UPP of a TOML card profile text (checked as decode_upp checks it): its UTF-8 bytes."""
    data = profile_toml.encode("utf-8")
    upp_fields(data)
    return data


def decode_upp(data: bytes) -> CardProfile:
    """The card profile a UPP makes: the built-in default card's keys with the package's iccid, imsi and
    mnc_length. UppError when the bytes are not a UPP."""
    fields = upp_fields(data)
    return replace(load_profile(), **fields)


# Operator profiles the SM-DP+ serves without a --profiles folder. ICCIDs in the 89 44 (UK) range with a test
# issuer, IMSIs in the 3GPP test network 001-01 and distinct from the default card's 001010123456789.
_BUILTIN = {
    "op1": ("8944476500001234567", "001010000000123", "Operator One"),
    "op2": ("8944476500001234575", "001010000000456", "Operator Two"),
}


def builtin_upp_text(name: str) -> str:
    """The TOML text of a built-in operator profile (KeyError when there is none of that name)."""
    iccid, imsi, operator = _BUILTIN[name]
    return (
        f"# bipsim built-in operator profile {name} ({operator}): an unprotected profile package\n"
        f'iccid = "{iccid}"\nimsi = "{imsi}"\nmnc_length = 2\n'
    )


def builtin_upps() -> dict[str, bytes]:
    """The built-in operator profiles by name ("op1", "op2"): their UPPs."""
    return {name: encode_upp(builtin_upp_text(name)) for name in _BUILTIN}
