"""GlobalPlatform Secure Element Access Control (GP SEAC v1.1) on the terminal side, sans-IO: the GET DATA commands
the Framework sends to the ARA-M, the parser of their answers (the Response-ALL-REF-AR-DO `FF40`, its continuation,
the refresh tag `DF20`) and the Access Control Enforcer's decision for one (applet AID, application) pair
(docs/protocols.md, "OMAPI on the AP").

Structures (GP SEAC v1.1 section 6): REF-AR-DO `E2` = REF-DO `E1` {AID-REF-DO `4F` (empty: every applet) or `C0`
(the implicitly selected applet), DeviceAppID-REF-DO `C1` (a certificate hash; empty: every application),
optional PKG-REF-DO `CA`} + AR-DO `E3` {APDU-AR-DO `D0`, NFC-AR-DO `D1`, PERM-AR-DO `DB`}.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from bipsim.uicc.tlv import BerTlv, TlvError, decode_ber_list, decode_ber_tag

ARA_M_AID = bytes.fromhex("A00000015141434C00")
GET_ALL = bytes.fromhex("80CAFF4000")  # GET DATA [All]: the Response-ALL-REF-AR-DO
GET_NEXT = bytes.fromhex("80CAFF6000")  # GET DATA [Next]: the rest of a long rule set
GET_REFRESH = bytes.fromhex("80CADF2000")  # GET DATA [Refresh tag]

TAG_ALL = 0xFF40
TAG_REFRESH = 0xDF20
TAG_REF_AR_DO = 0xE2
TAG_REF_DO = 0xE1
TAG_AR_DO = 0xE3
TAG_AID_REF = 0x4F
TAG_DEFAULT_APP = 0xC0
TAG_HASH_REF = 0xC1
TAG_PKG_REF = 0xCA
TAG_APDU_AR = 0xD0
TAG_NFC_AR = 0xD1
TAG_PERM_AR = 0xDB

MAX_RULE_BYTES = 0x10000  # a rule set announced as longer is refused rather than read for ever


class RuleFormatError(ValueError):
    """The ARA-M's answer is not a well-formed rule set; `offset` is where the problem is."""

    def __init__(self, offset: int, rule: str) -> None:
        super().__init__(f"offset {offset}: {rule}")
        self.offset = offset
        self.rule = rule


class ApduAccess(Enum):
    NEVER = "never"
    ALWAYS = "always"
    FILTERED = "filtered"  # only the APDUs matching one of the header/mask filters


@dataclass(frozen=True, slots=True)
class AccessRule:
    """One REF-AR-DO. `aid` None means every applet (empty AID-REF-DO), b"" the implicitly selected one (C0);
    `cert_hash` None means every application (empty DeviceAppID-REF-DO)."""

    aid: bytes | None
    cert_hash: bytes | None
    package: str | None
    apdu: ApduAccess
    filters: tuple[tuple[bytes, bytes], ...] = ()  # (4-byte header, 4-byte mask) pairs
    nfc: bool | None = None
    permissions: bytes | None = None

    def describe(self) -> str:
        aid = "every applet" if self.aid is None else (self.aid.hex().upper() or "default applet")
        who = "every app" if self.cert_hash is None else self.cert_hash.hex().upper()
        return f"{aid} / {who}: {self.apdu.value}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The enforcer's answer for one (applet, application) pair."""

    granted: bool
    reason: str
    filters: tuple[tuple[bytes, bytes], ...] = ()  # empty with granted: every APDU allowed

    def allows(self, apdu: bytes) -> bool:
        """Whether `apdu` may be sent on a channel opened under this decision (GP SEAC 3.1.3: the header, CLA's
        channel bits cleared, masked and compared with each filter)."""
        if not self.granted:
            return False
        if not self.filters:
            return True
        header = bytes((apdu[0] & 0xFC,)) + apdu[1:4]
        return any(
            bytes(h & m for h, m in zip(header, mask, strict=True))
            == bytes(w & m for w, m in zip(want, mask, strict=True))
            for want, mask in self.filters
        )


def _node_list(data: bytes, where: int) -> list[BerTlv]:
    try:
        return decode_ber_list(data)
    except TlvError as exc:
        raise RuleFormatError(where + exc.offset, exc.rule) from None


def _one(nodes: list[BerTlv], tags: set[int], where: int, what: str) -> BerTlv | None:
    found = [node for node in nodes if node.tag in tags]
    if len(found) > 1:
        raise RuleFormatError(where, f"{what} appears {len(found)} times")
    return found[0] if found else None


def parse_ref_ar_do(value: bytes, where: int = 0) -> AccessRule:
    """One REF-AR-DO's value (E1 + E3)."""
    nodes = _node_list(value, where)
    ref = _one(nodes, {TAG_REF_DO}, where, "REF-DO")
    ar = _one(nodes, {TAG_AR_DO}, where, "AR-DO")
    if ref is None or ar is None:
        raise RuleFormatError(where, "a REF-AR-DO needs a REF-DO (E1) and an AR-DO (E3)")
    refs = _node_list(ref.value, where)
    aid_node = _one(refs, {TAG_AID_REF, TAG_DEFAULT_APP}, where, "AID-REF-DO")
    if aid_node is None:
        raise RuleFormatError(where, "REF-DO without an AID-REF-DO (4F or C0)")
    if aid_node.tag == TAG_DEFAULT_APP:
        if aid_node.value:
            raise RuleFormatError(where, "C0 (default applet) must be empty")
        aid: bytes | None = b""
    elif not aid_node.value:
        aid = None
    elif 5 <= len(aid_node.value) <= 16:
        aid = aid_node.value
    else:
        raise RuleFormatError(where, f"AID-REF-DO of {len(aid_node.value)} bytes (5 to 16, or empty)")
    hash_node = _one(refs, {TAG_HASH_REF}, where, "DeviceAppID-REF-DO")
    if hash_node is None:
        raise RuleFormatError(where, "REF-DO without a DeviceAppID-REF-DO (C1)")
    if hash_node.value and len(hash_node.value) not in (20, 32):
        raise RuleFormatError(
            where, f"DeviceAppID-REF-DO of {len(hash_node.value)} bytes (SHA-1 20, SHA-256 32)"
        )
    pkg_node = _one(refs, {TAG_PKG_REF}, where, "PKG-REF-DO")
    package = None
    if pkg_node is not None:
        try:
            package = pkg_node.value.decode("ascii")
        except UnicodeDecodeError:
            raise RuleFormatError(where, "PKG-REF-DO is not ASCII") from None
    rights = _node_list(ar.value, where)
    apdu_node = _one(rights, {TAG_APDU_AR}, where, "APDU-AR-DO")
    nfc_node = _one(rights, {TAG_NFC_AR}, where, "NFC-AR-DO")
    perm_node = _one(rights, {TAG_PERM_AR}, where, "PERM-AR-DO")
    if apdu_node is None and nfc_node is None and perm_node is None:
        raise RuleFormatError(where, "an AR-DO without APDU-AR-DO, NFC-AR-DO or PERM-AR-DO")
    filters: tuple[tuple[bytes, bytes], ...] = ()
    if apdu_node is None:
        apdu = ApduAccess.NEVER  # GP SEAC: a rule with NFC rights only gives no APDU access
    elif len(apdu_node.value) == 1 and apdu_node.value[0] in (0, 1):
        apdu = ApduAccess.ALWAYS if apdu_node.value[0] else ApduAccess.NEVER
    elif apdu_node.value and len(apdu_node.value) % 8 == 0:
        apdu = ApduAccess.FILTERED
        raw = apdu_node.value
        filters = tuple((raw[i : i + 4], raw[i + 4 : i + 8]) for i in range(0, len(raw), 8))
    else:
        raise RuleFormatError(where, f"APDU-AR-DO of {len(apdu_node.value)} bytes (1, or 8 per filter)")
    nfc = None
    if nfc_node is not None:
        if len(nfc_node.value) != 1 or nfc_node.value[0] > 1:
            raise RuleFormatError(where, "NFC-AR-DO must be one byte, 00 or 01")
        nfc = bool(nfc_node.value[0])
    permissions = None
    if perm_node is not None:
        if len(perm_node.value) != 8:
            raise RuleFormatError(where, "PERM-AR-DO must be 8 bytes")
        permissions = perm_node.value
    return AccessRule(aid, hash_node.value or None, package, apdu, filters, nfc, permissions)


def parse_rules(data: bytes) -> tuple[AccessRule, ...]:
    """The rules of a complete Response-ALL-REF-AR-DO (`FF40` L {REF-AR-DO}); an empty FF40 is an empty set."""
    try:
        tag, at = decode_ber_tag(data, 0, len(data))
    except TlvError as exc:
        raise RuleFormatError(exc.offset, exc.rule) from None
    if tag != TAG_ALL:
        raise RuleFormatError(0, f"expected the tag FF40, not {tag:X}")
    nodes = _node_list(data, 0)
    if len(nodes) != 1:
        raise RuleFormatError(0, "bytes after the FF40 object")
    rules = []
    offset = len(data) - len(nodes[0].value)
    for node in _node_list(nodes[0].value, offset):
        if node.tag != TAG_REF_AR_DO:
            raise RuleFormatError(offset, f"expected a REF-AR-DO (E2), not {node.tag:X}")
        rules.append(parse_ref_ar_do(node.value, offset))
    return tuple(rules)


def announced_length(first: bytes) -> int:
    """The whole length (header included) of the FF40 object whose first part is `first`: how many bytes the
    Framework must collect with GET DATA [Next] (GP SEAC 5.1.5)."""
    try:
        tag, at = decode_ber_tag(first, 0, len(first))
    except TlvError as exc:
        raise RuleFormatError(exc.offset, exc.rule) from None
    if tag != TAG_ALL:
        raise RuleFormatError(0, f"expected the tag FF40, not {tag:X}")
    if at >= len(first):
        raise RuleFormatError(at, "truncated: length field missing")
    size_byte = first[at]
    if size_byte < 0x80:
        return at + 1 + size_byte
    size = size_byte - 0x80
    if size == 0 or size > 3 or at + 1 + size > len(first):
        raise RuleFormatError(at, f"invalid length field 0x{size_byte:02X}")
    length = int.from_bytes(first[at + 1 : at + 1 + size], "big")
    total = at + 1 + size + length
    if total > MAX_RULE_BYTES:
        raise RuleFormatError(
            at, f"a rule set of {length} bytes is more than bipsim reads ({MAX_RULE_BYTES})"
        )
    return total


def parse_refresh_tag(data: bytes) -> bytes:
    """The 8-byte refresh tag of a `DF20 08 <tag>` answer."""
    try:
        nodes = decode_ber_list(data)
    except TlvError as exc:
        raise RuleFormatError(exc.offset, exc.rule) from None
    if len(nodes) != 1 or nodes[0].tag != TAG_REFRESH or len(nodes[0].value) != 8:
        raise RuleFormatError(0, "expected DF20 with an 8-byte refresh tag")
    return nodes[0].value


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules one card's ARA-M gave; `decide` is GP SEAC v1.1 section 3.4's search: a rule for this applet
    and this application, else this applet and every application, else every applet and this application, else
    every applet and every application; a level whose rules name only other applications denies."""

    rules: tuple[AccessRule, ...]

    def decide(self, aid: bytes, cert_hash: bytes, package: str | None = None) -> Decision:
        def for_app(rule: AccessRule) -> bool:
            return rule.cert_hash == cert_hash and (rule.package is None or rule.package == package)

        def combine(found: list[AccessRule], level: str) -> Decision:
            if any(rule.apdu is ApduAccess.NEVER for rule in found):
                return Decision(False, f"{level}: APDU access NEVER")
            if any(rule.apdu is ApduAccess.ALWAYS for rule in found):
                return Decision(True, f"{level}: APDU access ALWAYS")
            filters = tuple(f for rule in found for f in rule.filters)
            return Decision(True, f"{level}: {len(filters)} APDU filters", filters)

        specific = [rule for rule in self.rules if rule.aid == aid]
        generic = [rule for rule in self.rules if rule.aid is None]
        for rules, name in ((specific, "rule for this applet"), (generic, "rule for every applet")):
            mine = [rule for rule in rules if for_app(rule)]
            if mine:
                return combine(mine, f"{name} and this application")
            anyone = [rule for rule in rules if rule.cert_hash is None]
            if anyone:
                return combine(anyone, f"{name} and every application")
            if rules:
                return Decision(False, f"{name} names other applications only")
        return Decision(False, "no rule grants this applet")


# ---- the access rule files (ARF): GP SEAC v1.1 section 8, the fallback when the card has no ARA-M -----------------
#
# A PKCS#15 application (ISO/IEC 7816-15) whose DER files the Framework reads with SELECT by file identifier and
# READ BINARY: EF_ODF -> EF_DODF (the OidDO with the access control OID) -> EF_ACMain (refresh tag, EF_ACRules'
# path) -> EF_ACRules (per applet, the path of its EF_ACConditions) -> EF_ACConditions (per application a rule).
# The card side is uicc/applets/arf.py; the rules come out as the same AccessRule model as the ARA-M's.

PKCS15_AID = bytes.fromhex("A000000063504B43532D3135")
EF_ODF = bytes.fromhex("5031")
AC_OID = bytes.fromhex("2A864886FC6B81480101")  # 1.2.840.114283.200.1.1, GlobalPlatform's access control OID
TAG_ODF_DODF = 0xA7
TAG_SEQUENCE = 0x30
TAG_OCTETS = 0x04
TAG_OID = 0x06


def _der(data: bytes, what: str) -> list[BerTlv]:
    try:
        return decode_ber_list(data)
    except TlvError as exc:
        raise RuleFormatError(exc.offset, f"{what}: {exc.rule}") from None


def _path(node: BerTlv, what: str) -> bytes:
    """A PKCS#15 Path `30 { 04 path }`: the file identifiers, two bytes each (the last one names the EF)."""
    if node.tag != TAG_SEQUENCE:
        raise RuleFormatError(0, f"{what}: a Path is a SEQUENCE (30), not {node.tag:X}")
    inner = _der(node.value, what)
    if not inner or inner[0].tag != TAG_OCTETS or len(inner[0].value) < 2 or len(inner[0].value) % 2:
        raise RuleFormatError(0, f"{what}: a Path holds an OCTET STRING of file identifiers")
    return inner[0].value


def parse_odf(data: bytes) -> bytes:
    """EF_ODF: the path of EF_DODF (its `A7` entry)."""
    for node in _der(data, "EF_ODF"):
        if node.tag == TAG_ODF_DODF:
            return _path(_der(node.value, "EF_ODF")[0], "EF_ODF")
    raise RuleFormatError(0, "EF_ODF names no DODF (A7)")


def parse_dodf(data: bytes) -> bytes:
    """EF_DODF: the path of EF_ACMain, from the OidDO whose OID is GlobalPlatform's access control OID."""
    for node in _der(data, "EF_DODF"):
        if node.tag != 0xA1:  # an OidDO; other data objects are not ours
            continue
        parts = _der(node.value, "EF_DODF")
        if not parts or parts[-1].tag != 0xA1:
            continue
        typed = _der(parts[-1].value, "EF_DODF")
        if not typed or typed[0].tag != TAG_SEQUENCE:
            continue
        fields = _der(typed[0].value, "EF_DODF")
        if len(fields) >= 2 and fields[0].tag == TAG_OID and fields[0].value == AC_OID:
            return _path(fields[1], "EF_DODF")
    raise RuleFormatError(0, "EF_DODF has no access control OidDO (1.2.840.114283.200.1.1)")


def parse_ac_main(data: bytes) -> tuple[bytes, bytes]:
    """EF_ACMain `30 { 04 08 refresh tag, 30 { 04 path } }`: (refresh tag, EF_ACRules' path)."""
    nodes = _der(data, "EF_ACMain")
    if len(nodes) != 1 or nodes[0].tag != TAG_SEQUENCE:
        raise RuleFormatError(0, "EF_ACMain is one SEQUENCE")
    fields = _der(nodes[0].value, "EF_ACMain")
    if len(fields) < 2 or fields[0].tag != TAG_OCTETS or len(fields[0].value) != 8:
        raise RuleFormatError(0, "EF_ACMain: an 8-byte refresh tag, then EF_ACRules' path")
    return fields[0].value, _path(fields[1], "EF_ACMain")


def parse_ac_rules(data: bytes) -> list[tuple[bytes | None, bytes]]:
    """EF_ACRules: (applet, EF_ACConditions' path) per entry; the applet is its AID (`A0 { 04 AID }`), b"" for
    the default applet (`81`) or None for every applet (`82`), as AccessRule.aid has them."""
    out: list[tuple[bytes | None, bytes]] = []
    for node in _der(data, "EF_ACRules"):
        if node.tag != TAG_SEQUENCE:
            raise RuleFormatError(0, f"EF_ACRules: an entry is a SEQUENCE (30), not {node.tag:X}")
        fields = _der(node.value, "EF_ACRules")
        if len(fields) != 2:
            raise RuleFormatError(0, "EF_ACRules: an entry is an applet and a Path")
        target, where = fields
        aid: bytes | None
        if target.tag == 0xA0:
            inner = _der(target.value, "EF_ACRules")
            if len(inner) != 1 or inner[0].tag != TAG_OCTETS or not 5 <= len(inner[0].value) <= 16:
                raise RuleFormatError(0, "EF_ACRules: A0 holds an AID of 5 to 16 bytes")
            aid = inner[0].value
        elif target.tag == 0x81:
            aid = b""
        elif target.tag == 0x82:
            aid = None
        else:
            raise RuleFormatError(0, f"EF_ACRules: applet tag {target.tag:X} (A0, 81 or 82)")
        out.append((aid, _path(where, "EF_ACRules")))
    return out


def parse_ac_conditions(data: bytes, aid: bytes | None) -> tuple[AccessRule, ...]:
    """EF_ACConditions of `aid`: per entry `30 { [04 SHA-1], [A0 { A0 {80 01 00|01} | A0 {A1 {04 filter...}},
    [A1 {80 01 nfc}] }] }`; no hash: every application; no A0: every APDU. An empty file denies every application
    (GP SEAC 8.2.4)."""
    entries = _der(data, "EF_ACConditions")
    if not entries:
        return (AccessRule(aid, None, None, ApduAccess.NEVER),)
    rules = []
    for entry in entries:
        if entry.tag != TAG_SEQUENCE:
            raise RuleFormatError(0, f"EF_ACConditions: an entry is a SEQUENCE (30), not {entry.tag:X}")
        cert_hash: bytes | None = None
        apdu, nfc = ApduAccess.ALWAYS, None
        filters: tuple[tuple[bytes, bytes], ...] = ()
        for field in _der(entry.value, "EF_ACConditions"):
            if field.tag == TAG_OCTETS:
                if len(field.value) not in (0, 20):
                    raise RuleFormatError(
                        0, f"EF_ACConditions: a certificate hash of {len(field.value)} bytes"
                    )
                cert_hash = field.value or None
            elif field.tag == 0xA0:
                for access in _der(field.value, "EF_ACConditions"):
                    rule = _der(access.value, "EF_ACConditions")
                    if access.tag == 0xA0 and rule and rule[0].tag == 0x80 and len(rule[0].value) == 1:
                        apdu = ApduAccess.ALWAYS if rule[0].value[0] else ApduAccess.NEVER
                    elif access.tag == 0xA0 and rule and rule[0].tag == 0xA1:
                        raw = [f.value for f in _der(rule[0].value, "EF_ACConditions") if f.tag == TAG_OCTETS]
                        if not raw or any(len(item) != 8 for item in raw):
                            raise RuleFormatError(0, "EF_ACConditions: an APDU filter has 8 bytes")
                        apdu = ApduAccess.FILTERED
                        filters = tuple((item[:4], item[4:]) for item in raw)
                    elif access.tag == 0xA1 and rule and rule[0].tag == 0x80 and len(rule[0].value) == 1:
                        nfc = bool(rule[0].value[0])
                    else:
                        raise RuleFormatError(
                            0, f"EF_ACConditions: an access rule {access.tag:X} not understood"
                        )
            else:
                raise RuleFormatError(0, f"EF_ACConditions: field {field.tag:X} (04 or A0)")
        rules.append(AccessRule(aid, cert_hash, None, apdu, filters, nfc))
    return tuple(rules)
