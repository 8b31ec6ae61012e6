"""DER encoding and decoding of the SGP.22 RSP messages (GSMA SGP.22 v2.2-2.5, sections 2.5, 5.6, 5.7 and 6).

The types are our own subset of SGP.22's module RSPDefinitions in rsp.asn, compiled once with asn1tools. Every
asn1tools failure leaves this module as Asn1Error, so a peer's bad bytes never escape as another exception.
`es10_request` names an ES10 request by its outer tag, as the ISD-R must before it can decode it (SGP.22 5.7).
`decode` puts right the OBJECT IDENTIFIERs asn1tools 0.167 misreads (`oid_text`) in the values it returns, without
changing asn1tools for anyone else in the process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tempfile
import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import asn1tools

__all__ = [
    "ES10_REQUEST_TAGS",
    "Asn1Error",
    "decode",
    "encode",
    "es10_request",
    "oid_text",
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

    try:
        return asn1tools.compile_dict(parsed(text), "der")
    except Exception:  # noqa: BLE001 - a cache that passed the checks yet does not compile: parse the text
        return asn1tools.compile_dict(parsed(text, use_cache=False), "der")


def cache_dir() -> Path:
    """Where the parsed module is kept between processes: $XDG_CACHE_HOME/bipsim, else ~/.cache/bipsim."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bipsim"


def parsed(text: str, *, use_cache: bool = True) -> dict[str, Any]:
    """asn1tools' parse of the module `text`. Parsing takes half a second, and every process of a scenario (the
    card, the SM-DP+, the LPA) needs it, so the result (plain JSON data, never code) is kept in `cache_dir()`
    under the digest of the text and the asn1tools version. A cache entry is used only when it has the shape of
    a parse of `text` (`_cache_fits`); a missing, unreadable, foreign or damaged one costs the parse and is
    written again; an unwritable cache directory only costs the parse."""
    import asn1tools

    key = hashlib.sha256(f"{asn1tools.__version__}\n{text}".encode()).hexdigest()[:20]
    path = cache_dir() / f"rsp-{key}.json"
    if use_cache:
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if _cache_fits(cached, text):
                return cast("dict[str, Any]", cached)
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


_COMMENT = re.compile(r"--.*?(?:--|$)", re.MULTILINE)  # X.680 12.6: a comment ends at "--" or the line's end
_MODULE = re.compile(
    r"\b([A-Z][\w-]*)\s*(?:\{[^}]*\}\s*)?DEFINITIONS\b.*?::=\s*BEGIN\b(.*?)\bEND\b", re.DOTALL
)
_TYPE = re.compile(r"(?:^|\s)([A-Z][\w-]*)\s*::=")


def declared_types(text: str) -> dict[str, set[str]]:
    """The modules of an ASN.1 text and the type names each assigns (X.680 16.1: a type reference begins with
    an upper-case letter), read with a few expressions: what a parse of `text` must at least hold."""
    plain = _COMMENT.sub(" ", text)
    return {match[1]: set(_TYPE.findall(match[2])) for match in _MODULE.finditer(plain)}


def _cache_fits(cached: Any, text: str) -> bool:
    """Whether a cache entry read back has the shape asn1tools' parse of `text` has: a dict of exactly the
    text's modules, each with a `types` dict holding every type the text assigns, each type a dict naming its
    `type`. Anything else (`{}`, a list, a cut or foreign parse) is parsed again rather than trusted."""
    if not isinstance(cached, dict):
        return False
    declared = declared_types(text)
    if not declared or set(cached) != set(declared):
        return False
    for module, names in declared.items():
        body = cached[module]
        types = body.get("types") if isinstance(body, dict) else None
        if not isinstance(types, dict) or not names <= set(types):
            return False
        if not all(
            isinstance(types[name], dict) and isinstance(types[name].get("type"), str) for name in names
        ):
            return False
    return True


def oid_text(text: str) -> str:
    """An OBJECT IDENTIFIER as asn1tools 0.167's BER/DER decoder gives it, put right. It splits the first
    subidentifier n into (n // 40, n % 40) whatever n is, which is wrong under the arc 2 from 2.40 on (X.690
    8.19.4: the first arc is 2 for every n >= 80): 2.999.10, the example-arc OID of our SM-DP+, comes back as
    26.39.10. A first arc over 2 can only be that mistake, so it maps back to 2.(40a + b - 80); the library
    itself is left as it is."""
    first, _, rest = text.partition(".")
    second, _, tail = rest.partition(".")
    if not (first.isdigit() and second.isdigit()) or int(first) <= 2:
        return text
    fixed = f"2.{40 * int(first) + int(second) - 80}"
    return f"{fixed}.{tail}" if tail else fixed


def _oid_fixer(codec: Any, seen: dict[int, Any]) -> Any:
    """A function that puts every OBJECT IDENTIFIER of a decoded value of the compiled type `codec` right
    (`oid_text`), or None when the type holds none. It follows asn1tools' compiled BER types: members of a
    SEQUENCE/SET, the element of a SEQUENCE OF/SET OF, the alternatives of a CHOICE, explicit tags."""
    from asn1tools.codecs import ber

    key = id(codec)
    if key in seen:
        return seen[key]
    seen[key] = None  # a recursive type: its inner occurrence is handled by the outer one's walk
    fixer: Any = None
    if isinstance(codec, ber.ObjectIdentifier):
        fixer = oid_text
    elif isinstance(codec, (ber.ExplicitTag, ber.Recursive)) and codec.inner is not None:
        fixer = _oid_fixer(codec.inner, seen)
    elif isinstance(codec, ber.ArrayType):
        element = _oid_fixer(codec.element_type, seen)
        if element is not None:
            fixer = functools.partial(_fix_list, element)
    elif isinstance(codec, ber.MembersType):
        members = {
            m.name: f for m in [*codec.root_members, *(codec.additions or [])] if (f := _oid_fixer(m, seen))
        }
        if members:
            fixer = functools.partial(_fix_members, members)
    elif isinstance(codec, ber.Choice):
        members = {m.name: f for m in codec.members if (f := _oid_fixer(m, seen))}
        if members:
            fixer = functools.partial(_fix_choice, members)
    seen[key] = fixer
    return fixer


def _fix_list(element: Any, value: Any) -> Any:
    return [element(item) for item in value] if isinstance(value, list) else value


def _fix_members(members: dict[str, Any], value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    return {name: members[name](item) if name in members else item for name, item in value.items()}


def _fix_choice(members: dict[str, Any], value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] in members:
        return (value[0], members[value[0]](value[1]))
    return value


@functools.cache
def _oid_fixer_of(type_name: str) -> Any:
    return _oid_fixer(rsp().types[type_name].type, {})


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
    fixer = _oid_fixer_of(type_name)
    return value if fixer is None else fixer(value)


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
