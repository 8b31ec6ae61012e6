"""DER encoding and decoding of the SGP.22 RSP messages (GSMA SGP.22 v2.2-2.5, sections 2.5, 5.6, 5.7 and 6).

The types are our own subset of SGP.22's module RSPDefinitions in rsp.asn, compiled once with asn1tools. Every
asn1tools failure leaves this module as Asn1Error, so a peer's bad bytes never escape as another exception.
`es10_request` names an ES10 request by its outer tag, as the ISD-R must before it can decode it (SGP.22 5.7).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asn1tools

__all__ = [
    "ES10_REQUEST_TAGS",
    "Asn1Error",
    "decode",
    "encode",
    "es10_request",
    "outer_tag",
    "rsp",
]


class Asn1Error(ValueError):
    """Bytes that are not the DER of the named SGP.22 type, or a value that cannot be encoded as it."""


# SGP.22 5.7: the ES10 functions the ISD-R serves, by the tag of their request (the tag in rsp.asn).
ES10_REQUEST_TAGS: dict[int, str] = {
    0xBF20: "GetEuiccInfo1Request",
    0xBF21: "PrepareDownloadRequest",
    0xBF22: "GetEuiccInfo2Request",
    0xBF28: "ListNotificationRequest",
    0xBF29: "SetNicknameRequest",
    0xBF2B: "RetrieveNotificationsListRequest",
    0xBF2D: "ProfileInfoListRequest",
    0xBF2E: "GetEuiccChallengeRequest",
    0xBF30: "NotificationSentRequest",
    0xBF31: "EnableProfileRequest",
    0xBF32: "DisableProfileRequest",
    0xBF33: "DeleteProfileRequest",
    0xBF36: "BoundProfilePackage",
    0xBF38: "AuthenticateServerRequest",
    0xBF3C: "EuiccConfiguredAddressesRequest",
    0xBF3E: "GetEuiccDataRequest",
    0xBF3F: "SetDefaultDpAddressRequest",
    0xBF41: "CancelSessionRequest",
    0xBF43: "GetRatRequest",
}


@functools.cache
def rsp() -> asn1tools.compiler.Specification:
    """The compiled RSPDefinitions subset (DER), made on first use only."""
    text = resources.files(__package__).joinpath("rsp.asn").read_text(encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pyparsing's, as asn1tools builds its grammar
        import asn1tools  # a third of a second to import: only the processes that speak RSP pay it

    _fix_object_identifiers()
    return asn1tools.compile_dict(parsed(text), "der")


def cache_dir() -> Path:
    """Where the parsed module is kept between processes: $XDG_CACHE_HOME/bipsim, else ~/.cache/bipsim."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bipsim"


def parsed(text: str) -> dict[str, Any]:
    """asn1tools' parse of the module `text`. Parsing takes half a second, and every process of a scenario (the
    card, the SM-DP+, the LPA) needs it, so the result (plain JSON data, never code) is kept in `cache_dir()`
    under the digest of the text and the asn1tools version; a missing, unreadable or unwritable cache only costs
    the parse."""
    import asn1tools

    key = hashlib.sha256(f"{asn1tools.__version__}\n{text}".encode()).hexdigest()[:20]
    path = cache_dir() / f"rsp-{key}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(cached, dict):
            return cached
    except (OSError, ValueError):
        pass
    with warnings.catch_warnings():
        # asn1tools' grammar still calls pyparsing's old names (a DeprecationWarning per call, none of ours)
        warnings.simplefilter("ignore", DeprecationWarning)
        result: dict[str, Any] = asn1tools.parse_string(text)
    temporary: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
            temporary = handle.name
            json.dump(result, handle)
        os.replace(temporary, path)  # whole or absent, also when two processes write it at once
    except OSError:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
    return result


def _fix_object_identifiers() -> None:
    """asn1tools 0.167 decodes the first subidentifier of an OBJECT IDENTIFIER as (n // 40, n % 40), which is
    wrong under the arc 2 from 2.40 on (X.690 8.19.4: the first arc is 2 for every n >= 80): 2.999.10, the
    example-arc OID of our SM-DP+, came back as 26.39.10. Its BER/DER decoder reads the module function at each
    call, so the corrected one replaces it for every asn1tools user in the process."""
    from asn1tools.codecs import ber

    def decode_object_identifier(data: bytes, offset: int, end_offset: int) -> str:
        first, offset = ber.decode_object_identifier_subidentifier(data, offset)
        top = min(first // 40, 2)
        arcs = [top, first - 40 * top]
        while offset < end_offset:
            arc, offset = ber.decode_object_identifier_subidentifier(data, offset)
            arcs.append(arc)
        return ".".join(str(arc) for arc in arcs)

    ber.decode_object_identifier = decode_object_identifier


def _errors() -> type[Exception]:
    import asn1tools

    error: type[Exception] = asn1tools.Error
    return error


def encode(type_name: str, value: Any) -> bytes:
    """The DER of `value` as the SGP.22 type `type_name`; Asn1Error when the value does not fit the type."""
    spec = rsp()
    try:
        return bytes(spec.encode(type_name, value))
    except _errors() as exc:
        raise Asn1Error(f"{type_name}: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
        # asn1tools reports a wrong Python shape (a missing member, a str for bytes) with builtin errors.
        raise Asn1Error(f"{type_name}: cannot encode: {exc!r}") from exc


def decode(type_name: str, data: bytes) -> Any:
    """The value of the DER `data` as the SGP.22 type `type_name`.

    Raises Asn1Error (and nothing else) on bad DER, a wrong tag, or bytes left over after the value: DER is one
    value exactly, and trailing bytes inside a STORE DATA are a malformed request (SGP.22 5.7.1).
    """
    spec = rsp()
    try:
        value, length = spec.decode_with_length(type_name, bytes(data))
    except _errors() as exc:
        raise Asn1Error(f"{type_name}: {exc}") from exc
    except KeyError as exc:
        raise Asn1Error(f"unknown type {type_name}") from exc
    except (TypeError, ValueError, AttributeError, IndexError, OverflowError, RecursionError) as exc:
        raise Asn1Error(f"{type_name}: malformed DER: {exc!r}") from exc
    if length != len(data):
        raise Asn1Error(f"{type_name}: {len(data) - length} bytes after the value")
    return value


def outer_tag(data: bytes) -> int:
    """The BER tag at the start of `data` as an integer (0xBF2E for 'BF 2E'); Asn1Error when there is none."""
    if not data:
        raise Asn1Error("empty data: no tag")
    first = data[0]
    if first & 0x1F != 0x1F:
        return first
    tag = first
    for index in range(1, min(len(data), 4)):
        tag = (tag << 8) | data[index]
        if not data[index] & 0x80:
            return tag
    raise Asn1Error(f"truncated or over-long tag {data[:4].hex()}")


def es10_request(data: bytes) -> tuple[str, Any]:
    """The ES10 request in `data`, named by its outer tag (BF2E -> "GetEuiccChallengeRequest") and decoded.

    Raises Asn1Error when the tag is not an ES10 request this eUICC serves or the DER does not decode.
    """
    tag = outer_tag(data)
    name = ES10_REQUEST_TAGS.get(tag)
    if name is None:
        raise Asn1Error(f"no ES10 request has the tag {tag:X}")
    return name, decode(name, data)
