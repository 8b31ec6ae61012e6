"""The access rule files (ARF) of GlobalPlatform Secure Element Access Control (GPD_SPE_013 section 8): the same
rules as the ARA-M's, as PKCS#15 files (ISO/IEC 7816-15) that a terminal without an ARA-M reads.

`install_arf` puts a PKCS#15 application (ADF, AID A000000063504B43532D3135, FID 5015) into the card's file system,
DER-encoded as the Android/SEEK ARF reader parses it:

- EF_ODF 5031: `A7 { 30 { 04 path } }`, the DODF's path.
- EF_DODF 5207: an OidDO `A1 { 30 {} common object attributes, 30 { 0C label } common data object attributes,
  A1 { 30 { 06 OID 1.2.840.114283.200.1.1, 30 { 04 path } } } }` naming EF_ACMain.
- EF_ACMain 4200: `30 { 04 08 refresh tag, 30 { 04 path } }`, the path of EF_ACRules.
- EF_ACRules 4300: one `30 { A0 { 04 AID } | 81 00 (default application) | 82 00 (any application),
  30 { 04 path } }` per AID, each naming its EF_ACConditions (4310, 4311, ...).
- EF_ACConditions: one `30 { [04 SHA-1 hash], A0 { A0 { 80 01 00|01 } | A0 { A1 { 04 filter ... } },
  [A1 { 80 01 00|01 }] } }` per rule of that AID (APDU rule, NFC rule).

The ARF names certificates by SHA-1 only: a rule with a SHA-256 hash is left out of the files. The refresh tag is
a digest of the rules, so it changes when the profile's rules do. The files follow the profile: they are written
at every start of the card, whatever its state file held.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from bipsim.uicc.applets.ara_m import Rule
from bipsim.uicc.fs import File, FileKind, FileSystem
from bipsim.uicc.tlv import encode_length

PKCS15_AID = bytes.fromhex("A000000063504B43532D3135")
PKCS15_FID = 0x5015
ODF_FID = 0x5031
DODF_FID = 0x5207
AC_MAIN_FID = 0x4200
AC_RULES_FID = 0x4300
AC_CONDITIONS_FIRST_FID = 0x4310
# 1.2.840.114283.200.1.1, the access control OID of GlobalPlatform, DER: 2A (1.2), 86 48 (840), 86 FC 6B
# (114283), 81 48 (200), 01, 01
AC_OID = bytes.fromhex("2A864886FC6B81480101")
LABEL = b"GP SE Acc Ctl"


def der(tag: int, value: bytes) -> bytes:
    return bytes((tag,)) + encode_length(len(value)) + value


def path(fid: int) -> bytes:
    """PKCS#15 Path: a SEQUENCE holding the file identifier (relative to the PKCS#15 application)."""
    return der(0x30, der(0x04, fid.to_bytes(2, "big")))


def refresh_tag(rules: Iterable[Rule]) -> bytes:
    return hashlib.sha256(b"bipsim ARF refresh tag" + b"".join(rule.encode() for rule in rules)).digest()[:8]


def condition(rule: Rule) -> bytes:
    """One entry of EF_ACConditions for `rule`."""
    if len(rule.apdu) == 1:
        apdu_rule = der(0xA0, der(0x80, rule.apdu))
    else:
        filters = b"".join(der(0x04, rule.apdu[i : i + 8]) for i in range(0, len(rule.apdu), 8))
        apdu_rule = der(0xA0, der(0xA1, filters))
    access = apdu_rule
    if rule.nfc is not None:
        access += der(0xA1, der(0x80, b"\x01" if rule.nfc else b"\x00"))
    cert = der(0x04, rule.hash) if rule.hash else b""
    return der(0x30, cert + der(0xA0, access))


def arf_files(rules: Iterable[Rule]) -> dict[int, bytes]:
    """The contents of the PKCS#15 files by file identifier."""
    usable = [rule for rule in rules if len(rule.hash) in (0, 20)]  # the ARF knows SHA-1 only
    groups: dict[bytes | None, list[Rule]] = {}
    for rule in usable:
        groups.setdefault(rule.aid, []).append(rule)
    files: dict[int, bytes] = {}
    entries = b""
    for number, (aid, members) in enumerate(groups.items()):
        fid = AC_CONDITIONS_FIRST_FID + number
        if aid is None:
            target = der(0x81, b"")  # the default application
        elif not aid:
            target = der(0x82, b"")  # any application (an empty AID-REF-DO)
        else:
            target = der(0xA0, der(0x04, aid))
        entries += der(0x30, target + path(fid))
        files[fid] = b"".join(condition(rule) for rule in members)
    files[AC_RULES_FID] = entries
    files[AC_MAIN_FID] = der(0x30, der(0x04, refresh_tag(usable)) + path(AC_RULES_FID))
    oid_do = der(0x30, der(0x06, AC_OID) + path(AC_MAIN_FID))
    files[DODF_FID] = der(0xA1, der(0x30, b"") + der(0x30, der(0x0C, LABEL)) + der(0xA1, oid_do))
    files[ODF_FID] = der(0xA7, path(DODF_FID))
    return files


def install_arf(fs: FileSystem, rules: Iterable[Rule]) -> File:
    """Adds (or replaces) the PKCS#15 application holding `rules` under the MF; returns its ADF."""
    names = {ODF_FID: "EF_ODF", DODF_FID: "EF_DODF", AC_MAIN_FID: "EF_ACMain", AC_RULES_FID: "EF_ACRules"}
    adf = File(PKCS15_FID, "ADF_PKCS15", FileKind.ADF, aid=PKCS15_AID)
    for fid, content in sorted(arf_files(rules).items()):
        name = names.get(fid, "EF_ACConditions")
        adf.add(File(fid, name, FileKind.TRANSPARENT, bytearray(content)))
    return fs.mf.add(adf)
