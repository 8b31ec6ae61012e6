"""The ARA-M (Access Rule Application Master) of GlobalPlatform Secure Element Access Control (GPD_SPE_013), sans-IO.

AID A00000015141434C00. It answers GET DATA (class 80, INS CA) for:

- FF40, all rules: `FF40 L { REF-AR-DO ... }`, each `E2 { E1 REF-DO { 4F AID-REF-DO | C0 00, C1 DeviceAppID-REF-DO,
  [CA PKG-REF-DO] }, E3 AR-DO { D0 APDU-AR-DO, [D1 NFC-AR-DO], [DB PERM-AR-DO] } }`; no rules is `FF40 00`.
- FF50, the rule of one REF-DO given as command data: `FF50 L AR-DO`, `FF50 00` when no rule has that REF-DO.
- FF60, next: the answers above are cut at Le bytes; the first part carries the whole length in its FF40/FF50
  header and GET DATA next gives the following Le bytes, until all are sent (the terminal counts; GPD_SPE_013
  section 5.1.4, as the Android/SEEK AccessRuleApplet client reads it). A next with nothing left is 6A88.
- DF20, the refresh tag: `DF20 08 <tag>`, which changes whenever the rule set does (also between two boots of a
  card whose state file saw other rules: the card keeps a generation number and the rules' digest).

STORE DATA (INS E2, P1 P2 90 00) changes the rules (GPD_SPE_013 v1.1 section 5.1): F0 stores REF-AR-DOs (6A89
when one's REF-DO is stored already), F1 deletes (all, or by AID-REF-DO, REF-DO, REF-AR-DO; 6A88 when none
matches), F2 only moves the refresh tag on; every change moves the generation on and persists in the state file.

Other P1 P2 are 6A88 (a data object this applet does not hold) when P1 is FF or DF, else 6A86; another instruction
is 6D00, a class that is not proprietary 6E00. docs/protocols.md, "OMAPI and the ARA-M on the card", has the
profile keys that give the rules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bipsim.uicc.applets import (
    SW_CLA_NOT_SUPPORTED,
    SW_INS_NOT_SUPPORTED,
    SW_OK,
    Applet,
    AppletError,
    Command,
)
from bipsim.uicc.tlv import TlvError, decode_ber, decode_ber_list, encode_length

ARA_M_AID = bytes.fromhex("A00000015141434C00")

INS_GET_DATA = 0xCA
INS_STORE_DATA = 0xE2
TAG_ALL = 0xFF40
TAG_SPECIFIC = 0xFF50
TAG_NEXT = 0xFF60
TAG_REFRESH = 0xDF20

SW_WRONG_DATA = 0x6A80
SW_INCORRECT_P1P2 = 0x6A86
SW_NOT_FOUND = 0x6A88
SW_CONFLICTING_RULE = 0x6A89  # GPD_SPE_013 v1.1 section 5.1.2.2: a rule with that REF-DO is already stored
SW_DO_NOT_SUPPORTED = 0x6981

# The test applications' certificates of the built-in `omapi` profiles: fixed bytes standing for a signing
# certificate's DER, whose SHA-1 is the DeviceAppID-REF-DO of the rules (uicc/profiles/omapi.toml). The first is
# granted access to the echo applet, the second is not (the "denied" case). Nothing secret: test data.
TEST_CERTIFICATES = {
    "granted": b"bipsim OMAPI test application certificate 1",
    "denied": b"bipsim OMAPI test application certificate 2",
}


def certificate_hash(certificate: bytes) -> bytes:
    """The DeviceAppID-REF-DO value of a certificate: its SHA-1 (GPD_SPE_013 section 4.2.1; SHA-256 also allowed)."""
    return hashlib.sha1(certificate).digest()


def tlv(tag: int, value: bytes) -> bytes:
    """One BER-TLV with a one- or two-byte tag (ISO/IEC 8825-1)."""
    head = tag.to_bytes(2 if tag > 0xFF else 1, "big")
    return head + encode_length(len(value)) + value


@dataclass(frozen=True)
class Rule:
    """One REF-AR-DO. `aid` None is the default application (C0 00); `apdu` is b"\\x01" (always), b"\\x00" (never)
    or n APDU filters of 8 bytes (header, mask); `nfc` None leaves the NFC-AR-DO out."""

    aid: bytes | None
    hash: bytes
    apdu: bytes = b"\x01"
    nfc: bool | None = None
    package: str | None = None
    perm: bytes | None = None

    def ref_do(self) -> bytes:
        parts = tlv(0xC0, b"") if self.aid is None else tlv(0x4F, self.aid)
        parts += tlv(0xC1, self.hash)
        if self.package is not None:
            parts += tlv(0xCA, self.package.encode("ascii"))
        return tlv(0xE1, parts)

    def ar_do(self) -> bytes:
        parts = tlv(0xD0, self.apdu)
        if self.nfc is not None:
            parts += tlv(0xD1, b"\x01" if self.nfc else b"\x00")
        if self.perm is not None:
            parts += tlv(0xDB, self.perm)
        return tlv(0xE3, parts)

    def encode(self) -> bytes:
        return tlv(0xE2, self.ref_do() + self.ar_do())


def parse_rule(entry: Mapping[str, Any]) -> Rule:
    """A rule of the profile's `ara_m_rules` (an inline table: aid, hash, apdu, nfc, package, perm); ValueError
    says what is wrong."""
    known = {"aid", "hash", "apdu", "nfc", "package", "perm"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ValueError(f"unknown rule keys: {', '.join(unknown)}")
    aid_text = str(entry.get("aid", ""))
    aid = None if aid_text.lower() == "default" else _hex(aid_text, "aid")
    if aid is not None and len(aid) > 16:
        raise ValueError(f"aid {aid_text}: an AID is at most 16 bytes")
    digest = _hex(str(entry.get("hash", "")), "hash")
    if len(digest) not in (0, 20, 32):
        raise ValueError(
            f"hash: {len(digest)} bytes; a certificate hash is 20 (SHA-1) or 32 (SHA-256), or empty"
        )
    apdu_text = str(entry.get("apdu", "always")).lower()
    if apdu_text in ("always", "never"):
        apdu = b"\x01" if apdu_text == "always" else b"\x00"
    else:
        apdu = _hex(apdu_text, "apdu")
        if not apdu or len(apdu) % 8:
            raise ValueError("apdu: always, never, or APDU filters of 8 bytes each (4 header, 4 mask)")
    nfc_text = entry.get("nfc")
    if nfc_text is not None and str(nfc_text).lower() not in ("always", "never"):
        raise ValueError("nfc: always or never")
    nfc = None if nfc_text is None else str(nfc_text).lower() == "always"
    package = entry.get("package")
    if package is not None and (not isinstance(package, str) or not package.isascii()):
        raise ValueError("package: an ASCII package name")
    perm = _hex(str(entry["perm"]), "perm") if "perm" in entry else None
    if perm is not None and len(perm) != 8:
        raise ValueError("perm: 8 bytes of permissions")
    return Rule(aid, digest, apdu, nfc, package, perm)


def decode_rule(data: bytes) -> Rule:
    """A REF-AR-DO (E2) as STORE DATA carries it; TlvError or ValueError when it is not one."""
    parts = {item.tag: item.value for item in decode_ber_list(decode_ber(data, expect={0xE2}).value)}
    if set(parts) != {0xE1, 0xE3}:
        raise ValueError("a REF-AR-DO holds one REF-DO (E1) and one AR-DO (E3)")
    ref = {item.tag: item.value for item in decode_ber_list(parts[0xE1])}
    ar = {item.tag: item.value for item in decode_ber_list(parts[0xE3])}
    if 0xC1 not in ref or (0x4F in ref) == (0xC0 in ref) or set(ref) - {0x4F, 0xC0, 0xC1, 0xCA}:
        raise ValueError(
            "a REF-DO holds an AID-REF-DO (4F or C0), a DeviceAppID-REF-DO (C1), maybe a PKG-REF-DO"
        )
    if 0xD0 not in ar or set(ar) - {0xD0, 0xD1, 0xDB}:
        raise ValueError("an AR-DO holds an APDU-AR-DO (D0), maybe an NFC-AR-DO (D1) and a PERM-AR-DO (DB)")
    apdu, nfc = ar[0xD0], ar.get(0xD1)
    if (len(apdu) != 1 or apdu[0] > 1) and (not apdu or len(apdu) % 8):
        raise ValueError("an APDU-AR-DO is 00, 01 or filters of 8 bytes")
    if nfc is not None and nfc not in (b"\x00", b"\x01"):
        raise ValueError("an NFC-AR-DO is 00 or 01")
    if len(ref[0xC1]) not in (0, 20, 32) or len(ref.get(0x4F, b"")) > 16:
        raise ValueError("a hash is 0, 20 or 32 bytes, an AID at most 16")
    if 0xDB in ar and len(ar[0xDB]) != 8:
        raise ValueError("a PERM-AR-DO is 8 bytes")
    package = ref[0xCA].decode("ascii") if 0xCA in ref else None
    return Rule(
        ref.get(0x4F), ref[0xC1], apdu, None if nfc is None else nfc == b"\x01", package, ar.get(0xDB)
    )


def _hex(text: str, key: str) -> bytes:
    try:
        return bytes.fromhex(text.replace(" ", "").replace(":", ""))
    except ValueError:
        raise ValueError(f"{key} = {text!r} is not hex") from None


def encode_all(rules: Iterable[Rule]) -> bytes:
    """The Response-ALL-REF-AR-DO of a rule set."""
    return tlv(TAG_ALL, b"".join(rule.encode() for rule in rules))


def malformed_all(rules: Iterable[Rule]) -> bytes:
    """A broken Response-ALL-REF-AR-DO for the `ara_m_malformed` profiles: the outer length is right, but the first
    REF-DO claims 16 bytes more than its REF-AR-DO holds (a decoder that checks nested lengths refuses it)."""
    body = b"".join(rule.encode() for rule in rules) or tlv(0xE2, tlv(0xE1, b"") + tlv(0xE3, b"\xd0\x01\x01"))
    # E2 <len> E1 <len>: the REF-DO's length byte is the fourth (every rule here is shorter than 128 bytes)
    broken = bytearray(body)
    at = 3 if broken[1] < 0x80 else 4
    broken[at] = min(broken[at] + 16, 0x7F)
    return tlv(TAG_ALL, bytes(broken))


class AraM(Applet):
    """The ARA-M: the profile's rule set (STORE DATA may change it), and a refresh tag that follows it."""

    name = "ara_m"

    def __init__(self, rules: Iterable[Rule] = (), *, malformed: bool = False) -> None:
        super().__init__(ARA_M_AID)
        self.profile_rules = list(rules)  # what the card was personalised with
        self.rules = list(rules)  # what it holds now (STORE DATA changes them)
        self.malformed = malformed
        # moves on with every change of the rule set: STORE DATA, UpdateRefreshTag, a boot with other profile rules
        # than the state file saw
        self.generation = 0
        self.state_version = 0  # moves when to_dict would answer something else (uicc/card_state.py)
        self._next: dict[int, bytes] = {}  # per channel: what GET DATA next still has to send
        self._profile_digest = hashlib.sha256(encode_all(self.profile_rules)).hexdigest()

    @classmethod
    def of_profile(cls, profile: Any) -> AraM:
        return cls([parse_rule(entry) for entry in profile.ara_m_rules], malformed=profile.ara_m_malformed)

    # --- the rule set and its tag --------------------------------------------------------------------------------

    def all_rules(self) -> bytes:
        return malformed_all(self.rules) if self.malformed else encode_all(self.rules)

    @property
    def refresh_tag(self) -> bytes:
        # a function of the rules and the generation: other rules give another tag, and rules changed back to an
        # earlier set still give a new one because the generation moved on
        digest = hashlib.sha256(self.all_rules()).digest()
        return hashlib.sha256(
            b"bipsim ARA-M refresh tag" + self.generation.to_bytes(4, "big") + digest
        ).digest()[:8]

    def to_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"generation": self.generation, "digest": self._profile_digest}
        if self.rules != self.profile_rules:
            state["rules"] = [rule.encode().hex().upper() for rule in self.rules]
        return state

    def load_dict(self, state: dict[str, Any]) -> None:
        """The saved generation, and the stored rules when the profile's rules are the ones the state file saw;
        other profile rules (a new personalisation) replace what was stored and start a new generation."""
        generation = state.get("generation")
        if not isinstance(generation, int) or generation < 0:
            return
        self.state_version += 1
        if state.get("digest") != self._profile_digest:
            self.generation = generation + 1
            return
        self.generation = generation
        saved = state.get("rules")
        if isinstance(saved, list):
            try:
                self.rules = [decode_rule(bytes.fromhex(item)) for item in saved]
            except (TypeError, ValueError):  # a damaged state file: the profile's rules, and a new generation
                self.rules = list(self.profile_rules)
                self.generation = generation + 1

    def _changed(self) -> None:
        self.generation += 1
        self.state_version += 1
        for channel in list(self._next):  # a chain cut across a change would mix two rule sets
            del self._next[channel]

    # --- APDUs ---------------------------------------------------------------------------------------------------

    def select(self, p2: int, aid: bytes, channel: int) -> tuple[bytes, int]:
        self._next.pop(channel, None)
        return b"", SW_OK

    def deselect(self, channel: int) -> None:
        self._next.pop(channel, None)

    def process(self, command: Command) -> tuple[bytes, int]:
        if not command.cla & 0x80:
            raise AppletError(SW_CLA_NOT_SUPPORTED, "GET DATA of the ARA-M is class 80")
        if command.ins == INS_STORE_DATA:
            return self._store(command)
        if command.ins != INS_GET_DATA:
            raise AppletError(SW_INS_NOT_SUPPORTED)
        tag = (command.p1 << 8) | command.p2
        le = 256 if command.le is None else command.le
        if tag == TAG_NEXT:
            return self._continue(command.channel, le)
        self._next.pop(command.channel, None)
        if tag == TAG_ALL:
            return self._start(command.channel, self.all_rules(), le)
        if tag == TAG_SPECIFIC:
            return self._start(command.channel, self._specific(command.data), le)
        if tag == TAG_REFRESH:
            return tlv(TAG_REFRESH, self.refresh_tag), SW_OK
        raise AppletError(SW_NOT_FOUND if command.p1 in (0xFF, 0xDF) else SW_INCORRECT_P1P2)

    def _store(self, command: Command) -> tuple[bytes, int]:
        """STORE DATA (GPD_SPE_013 v1.1 section 5.1, P1 P2 = 90 00: one block, BER-TLV): Command-Store-REF-AR-DO
        (F0), Command-Delete (F1; empty: every rule), Command-UpdateRefreshTag (F2). A REF-DO already stored is
        6A89 and nothing is stored; deleting what is not there is 6A88."""
        if (command.p1, command.p2) != (0x90, 0x00):
            raise AppletError(SW_INCORRECT_P1P2)
        try:
            do = decode_ber(command.data)
        except TlvError as exc:
            raise AppletError(SW_WRONG_DATA, str(exc)) from None
        if do.tag == 0xF0:
            try:
                new = [decode_rule(item.encode()) for item in decode_ber_list(do.value)]
            except (TlvError, ValueError) as exc:
                raise AppletError(SW_WRONG_DATA, str(exc)) from None
            refs = [rule.ref_do() for rule in self.rules]
            added = [rule.ref_do() for rule in new]
            if not new or len(set(added)) != len(added) or set(added) & set(refs):
                raise AppletError(SW_CONFLICTING_RULE if new else SW_WRONG_DATA)
            self.rules += new
        elif do.tag == 0xF1:
            self.rules = self._delete(do.value)
        elif do.tag == 0xF2:
            pass  # only the tag moves on
        elif 0xF3 <= do.tag <= 0xF8:
            raise AppletError(SW_DO_NOT_SUPPORTED, "an ARA-C command")
        else:
            raise AppletError(SW_WRONG_DATA)
        self._changed()
        return b"", SW_OK

    def _delete(self, value: bytes) -> list[Rule]:
        if not value:
            return []
        try:
            target = decode_ber(value)
        except TlvError as exc:
            raise AppletError(SW_WRONG_DATA, str(exc)) from None
        if target.tag == 0x4F:
            keep = [rule for rule in self.rules if rule.aid != target.value]
        elif target.tag == 0xC0 and not target.value:
            keep = [rule for rule in self.rules if rule.aid is not None]
        elif target.tag == 0xE1:
            keep = [rule for rule in self.rules if rule.ref_do() != value]
        elif target.tag == 0xE2:
            keep = [rule for rule in self.rules if rule.encode() != value]
        else:
            raise AppletError(SW_WRONG_DATA)
        if len(keep) == len(self.rules):
            raise AppletError(SW_NOT_FOUND)
        return keep

    def _specific(self, data: bytes) -> bytes:
        if not data:
            raise AppletError(SW_WRONG_DATA, "GET DATA specific needs a REF-DO")
        for rule in self.rules:
            if rule.ref_do() == data:
                return tlv(TAG_SPECIFIC, rule.ar_do())
        if data[0] != 0xE1:
            raise AppletError(SW_WRONG_DATA, "the command data is not a REF-DO")
        return tlv(TAG_SPECIFIC, b"")

    def _start(self, channel: int, whole: bytes, le: int) -> tuple[bytes, int]:
        if len(whole) > le:
            self._next[channel] = whole[le:]
        return whole[:le], SW_OK

    def _continue(self, channel: int, le: int) -> tuple[bytes, int]:
        rest = self._next.pop(channel, b"")
        if not rest:
            raise AppletError(SW_NOT_FOUND, "GET DATA next with nothing left to send")
        if len(rest) > le:
            self._next[channel] = rest[le:]
        return rest[:le], SW_OK


def describe_response(data: bytes) -> dict[str, Any] | None:
    """What `bipsim decode` shows for the ARA-M's GET DATA answers (the R-APDU data): the rules of an FF40/FF50
    answer, or a refresh tag; None for data that is none of them. A first part of a chained answer (shorter than
    its header says) is `partial`; a TLV that does not decode is reported in `error`."""
    if len(data) < 3 or data[:2] not in (b"\xff\x40", b"\xff\x50", b"\xdf\x20"):
        return None
    tag = int.from_bytes(data[:2], "big")
    out: dict[str, Any] = {"tag": f"{tag:04X}"}
    try:
        if tag == TAG_REFRESH:
            out["refresh_tag"] = decode_ber(data).value.hex().upper()
            return out
        size = data[2]  # the length is read here: a first part of a chain does not decode whole
        start = 3 if size < 0x80 else 3 + (size & 0x7F)
        total = start + (size if size < 0x80 else int.from_bytes(data[3:start], "big"))
        out["length"] = total - start
        if len(data) < total:
            out["partial"] = True
            out["bytes_here"] = len(data)
            return out
        value = decode_ber(data[:total]).value
        if tag == TAG_SPECIFIC:
            out["rules"] = [_ar_fields(decode_ber(value, expect={0xE3}).value)] if value else []
        else:
            out["rules"] = [_rule_fields(decode_rule(item.encode())) for item in decode_ber_list(value)]
    except (TlvError, ValueError) as exc:
        out["error"] = str(exc)
    return out


def _ar_fields(ar_do: bytes) -> dict[str, Any]:
    parts = {item.tag: item.value for item in decode_ber_list(ar_do)}
    if 0xD0 not in parts:
        raise ValueError("an AR-DO without its APDU-AR-DO (D0)")
    nfc = parts.get(0xD1)
    fields = _rule_fields(
        Rule(None, b"", parts[0xD0], None if nfc is None else nfc == b"\x01", None, parts.get(0xDB))
    )
    del fields["aid"], fields["hash"]
    return fields


def _rule_fields(rule: Rule) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    fields["aid"] = "default application" if rule.aid is None else rule.aid.hex().upper()
    fields["hash"] = rule.hash.hex().upper() or "any application"
    if rule.package is not None:
        fields["package"] = rule.package
    fields["apdu"] = {b"\x01": "always", b"\x00": "never"}.get(
        rule.apdu, "filters " + rule.apdu.hex().upper()
    )
    if rule.nfc is not None:
        fields["nfc"] = "always" if rule.nfc else "never"
    if rule.perm is not None:
        fields["perm"] = rule.perm.hex().upper()
    return fields
