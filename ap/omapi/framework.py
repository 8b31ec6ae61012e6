"""The Framework layer of the AP's OMAPI stack (docs/protocols.md, "OMAPI on the AP", steps 004:201..004:206):
at start-up, per card slot, it checks that a card is present, loads the card's access rules from its ARA-M (GP SEAC
v1.1: SELECT by `+CCHO`, GET DATA `80CAFF4000` and `80CAFF6000` by `+CGLA`, the refresh tag `80CADF2000`, `+CCHC`)
or, when the card has no ARA-M (+CME ERROR: 22), from its access rule files (ARF: the PKCS#15 application read by
SELECT by file identifier and READ BINARY, GP SEAC's fallback), and sets the variable `enforceCarrierPrivilege` of
that card to whether the load succeeded. The rules are kept for the access enforcement; they are loaded again only
at the next start-up or when the card's refresh tag changed.

Two variants for a slot without a card: mode 1 does not try to load (202 -> 206), mode 2 tries once and fails.
Each card's state goes through one transition table (docs/architecture.md, "Explicit state machines").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from bipsim.ap.omapi.errors import OmapiError, OmapiNoSuchElementException
from bipsim.ap.omapi.ril import NoChannelAvailable, SeRil, reader_name
from bipsim.ap.omapi.seac import (
    ARA_M_AID,
    EF_ODF,
    GET_ALL,
    GET_NEXT,
    GET_REFRESH,
    MAX_RULE_BYTES,
    PKCS15_AID,
    AccessRule,
    RuleFormatError,
    RuleSet,
    announced_length,
    parse_ac_conditions,
    parse_ac_main,
    parse_ac_rules,
    parse_dodf,
    parse_odf,
    parse_refresh_tag,
    parse_rules,
)
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.tlv import TlvError, decode_ber, decode_ber_list
from bipsim.uicc.transitions import TransitionTable

SW_OK = b"\x90\x00"
SW_NO_DATA = b"\x6a\x88"  # GP SEAC 5.1.5: the ARA-M holds no rule ("referenced data not found")
MAX_NEXT = 64  # GET DATA [Next] rounds at most (64 * 253 bytes > MAX_RULE_BYTES)
READ_CHUNK = 253  # READ BINARY of an ARF file in parts of this many bytes (a short Le, as the Android reader)
MAX_ARF_FILES = 64  # EF_ACConditions files read at most for one card


class NoCardMode(Enum):
    """The document's two variants for a slot without a card."""

    SKIP = 1  # mode 1: do not try to load the rules
    TRY = 2  # mode 2: try once, fail, variable false


class CardState(Enum):
    UNCHECKED = "unchecked"
    PRESENT = "present"
    ABSENT = "absent"
    LOADING = "loading"
    ENFORCED = "enforced"  # rules loaded: enforceCarrierPrivilege true
    NOT_ENFORCED = "not_enforced"  # enforceCarrierPrivilege false


class CardEvent(Enum):
    FOUND = "card found"
    MISSING = "no card"
    LOAD = "load rules"
    LOADED = "rules loaded"
    FAILED = "load failed"
    SKIP = "skip the load"
    REFRESH = "refresh tag changed"


CARD_TABLE: TransitionTable[CardState, CardEvent] = TransitionTable(
    "Framework card",
    {
        (CardState.UNCHECKED, CardEvent.FOUND): CardState.PRESENT,
        (CardState.UNCHECKED, CardEvent.MISSING): CardState.ABSENT,
        (CardState.PRESENT, CardEvent.LOAD): CardState.LOADING,
        (CardState.ABSENT, CardEvent.LOAD): CardState.LOADING,  # mode 2
        (CardState.ABSENT, CardEvent.SKIP): CardState.NOT_ENFORCED,  # mode 1
        (CardState.LOADING, CardEvent.LOADED): CardState.ENFORCED,
        (CardState.LOADING, CardEvent.FAILED): CardState.NOT_ENFORCED,
        (CardState.ENFORCED, CardEvent.REFRESH): CardState.LOADING,
    },
)


@dataclass
class CardRecord:
    """What the Framework knows of one slot's card."""

    slot: int
    state: CardState = CardState.UNCHECKED
    enforce_carrier_privilege: bool = False  # set only at 205/206
    present: bool = False  # the card check of 202
    rules: RuleSet | None = None
    refresh_tag: bytes | None = None
    reason: str = ""
    loads: int = 0  # rule loads tried since start-up (refresh reloads included)
    source: str | None = None  # where the loaded rules came from: "ARA-M", or "ARF" (the access rule files)
    history: list[CardState] = field(default_factory=list)

    def apply(self, event: CardEvent) -> None:
        self.history.append(self.state)
        self.state = CARD_TABLE.next(self.state, event)
        if self.state in (CardState.ENFORCED, CardState.NOT_ENFORCED):
            self.enforce_carrier_privilege = self.state is CardState.ENFORCED


class LoadFailed(Exception):
    pass


def _file_size(fcp: bytes) -> int | None:
    """The file size (tag 80, else 81) of an FCP template `62 {...}`; None when it has none."""
    try:
        template = decode_ber(fcp, expect={0x62})
        fields = {node.tag: node.value for node in decode_ber_list(template.value)}
    except TlvError:
        return None
    raw = fields.get(0x80, fields.get(0x81))
    return int.from_bytes(raw, "big") if raw else None


class Framework:
    """Holds each slot's CardRecord; `boot` runs steps 201..206 for every slot, `refresh` re-reads a card's
    refresh tag and loads the rules again when it changed."""

    def __init__(
        self, ril: SeRil, slots: int = 1, *, mode: NoCardMode = NoCardMode.SKIP, tracer: Tracer = NULL_TRACER
    ) -> None:
        self.ril = ril
        self.mode = mode
        self.tracer = tracer
        self.cards: dict[int, CardRecord] = {slot: CardRecord(slot) for slot in range(1, slots + 1)}
        self.booted = False

    def variable(self, slot: int) -> bool:
        """enforceCarrierPrivilege of the card in `slot` as last set (never recomputed here)."""
        record = self.cards.get(slot)
        return bool(record and record.enforce_carrier_privilege)

    def _trace(
        self, step: str | None, summary: str, *, slot: int | None = None, error: bool = False, **facts: object
    ) -> None:
        fields: dict[str, object] = {"layer": "Framework", **facts}
        if slot is not None:
            fields["reader"] = reader_name(slot)
        self.tracer.emit(
            Actor.AP,
            Actor.AP,
            Layer.APP,
            f"Framework: {summary}",
            step=step,
            error=error,
            kind=Kind.OMAPI_FRAMEWORK,
            fields=fields,
        )

    async def boot(self) -> None:
        """Steps 201..206 for every slot, one after the other."""
        self._trace(
            "004:201", "terminal powered on", event="power_on", mode=self.mode.value, slots=len(self.cards)
        )
        for record in self.cards.values():
            await self._boot_card(record)
        self.booted = True

    async def _boot_card(self, record: CardRecord) -> None:
        slot = record.slot
        present, why = await self.ril.card_present(slot, step="004:202")
        record.apply(CardEvent.FOUND if present else CardEvent.MISSING)
        record.present = present
        self._trace(
            "004:202",
            f"card in {reader_name(slot)}: {'yes' if present else 'no'} ({why})",
            slot=slot,
            event="card_check",
            present=present,
            reason=why,
        )
        if not present and self.mode is NoCardMode.SKIP:
            record.apply(CardEvent.SKIP)
            record.reason = why
            self._set(record)
            return
        await self._load(record)

    async def _load(self, record: CardRecord, event: CardEvent = CardEvent.LOAD) -> None:
        record.apply(event)
        record.loads += 1
        self._trace(
            "004:203",
            f"loading the access rules of {reader_name(record.slot)} from the ARA-M (else the ARF)",
            slot=record.slot,
            event="load_rules",
            aid=ARA_M_AID.hex().upper(),
        )
        try:
            rules, tag, source = await self._read_rules(record.slot)
        except (OmapiError, NoChannelAvailable, LoadFailed, RuleFormatError) as exc:
            record.apply(CardEvent.FAILED)
            record.rules = None
            record.refresh_tag = None
            record.source = None
            record.reason = str(exc)
            self._trace(
                "004:204",
                f"rules not loaded: {exc}",
                slot=record.slot,
                event="loaded",
                loaded=False,
                reason=str(exc),
                error=True,
            )
        else:
            record.apply(CardEvent.LOADED)
            record.rules = rules
            record.refresh_tag = tag
            record.source = source
            record.reason = f"{len(rules.rules)} rules" + (f" from the {source}" if source != "ARA-M" else "")
            self._trace(
                "004:204",
                f"rules loaded: {len(rules.rules)} from the {source}",
                slot=record.slot,
                event="loaded",
                loaded=True,
                source=source,
                rules=len(rules.rules),
                refresh_tag=tag.hex().upper() if tag is not None else None,
            )
        self._set(record)

    def _set(self, record: CardRecord) -> None:
        value = record.enforce_carrier_privilege
        self._trace(
            "004:205" if value else "004:206",
            f"enforceCarrierPrivilege of {reader_name(record.slot)} = {str(value).lower()}",
            slot=record.slot,
            event="variable",
            variable=value,
            reason=record.reason,
        )

    async def _read_rules(self, slot: int) -> tuple[RuleSet, bytes | None, str]:
        """The rule set, its refresh tag and where they came from: the ARA-M's through one logical channel closed
        again afterwards, or, when the card has no ARA-M (its SELECT failed: +CME ERROR: 22), the access rule
        files (GP SEAC: ARA-M first, then the ARF)."""
        try:
            session = await self.ril.open_channel(slot, ARA_M_AID, step="004:203")
        except OmapiNoSuchElementException as no_ara_m:
            self._trace(
                "004:203",
                f"no ARA-M on {reader_name(slot)} ({no_ara_m.reason}): reading the access rule files (ARF)",
                slot=slot,
                event="load_rules",
                source="ARF",
                aid=PKCS15_AID.hex().upper(),
            )
            try:
                arf_rules, arf_tag = await self._read_arf(slot, step="004:203")
            except OmapiNoSuchElementException as no_arf:
                raise LoadFailed(f"no ARA-M ({no_ara_m.reason}) and no ARF ({no_arf.reason})") from None
            return arf_rules, arf_tag, "ARF"
        try:
            answer = await self.ril.exchange(slot, session, GET_ALL, step="004:203")
            if answer[-2:] == SW_NO_DATA:
                rules = RuleSet(())
            else:
                if answer[-2:] != SW_OK:
                    raise LoadFailed(f"GET DATA [All] answered {answer[-2:].hex().upper()}")
                data = answer[:-2]
                total = announced_length(data)
                for _ in range(MAX_NEXT):
                    if len(data) >= total:
                        break
                    more = await self.ril.exchange(slot, session, GET_NEXT, step="004:203")
                    if more[-2:] != SW_OK or len(more) == 2:
                        raise LoadFailed(f"GET DATA [Next] answered {more[-2:].hex().upper()}")
                    data += more[:-2]
                if len(data) != total:
                    raise LoadFailed(f"the rule set has {len(data)} bytes, its header announced {total}")
                rules = RuleSet(parse_rules(data))
            tag_answer = await self.ril.exchange(slot, session, GET_REFRESH, step="004:203")
            tag = parse_refresh_tag(tag_answer[:-2]) if tag_answer[-2:] == SW_OK else None
        finally:
            try:
                await self.ril.close_channel(slot, session, step="004:203")
            except OmapiError:
                pass  # a channel the modem cannot close is gone already; the load's own outcome stands
        return rules, tag, "ARA-M"

    async def _read_arf(
        self, slot: int, *, step: str | None = None, tag_only: bool = False
    ) -> tuple[RuleSet, bytes]:
        """The access rule files of the card's PKCS#15 application (seac.py, "the access rule files"), through one
        logical channel (+CCHO of its AID, SELECT by file identifier and READ BINARY by +CGLA, +CCHC): the rules in
        the ARA-M's model and EF_ACMain's refresh tag. With `tag_only`, the refresh tag alone (the rules empty)."""
        session = await self.ril.open_channel(slot, PKCS15_AID, step=step)
        try:

            async def read(path: bytes) -> bytes:
                return await self._read_ef(slot, session, path, step=step)

            dodf = parse_odf(await read(EF_ODF))
            tag, rules_path = parse_ac_main(await read(parse_dodf(await read(dodf))))
            if tag_only:
                return RuleSet(()), tag
            entries = parse_ac_rules(await read(rules_path))
            if len(entries) > MAX_ARF_FILES:
                raise LoadFailed(f"EF_ACRules names {len(entries)} files (at most {MAX_ARF_FILES} are read)")
            rules: list[AccessRule] = []
            for aid, conditions in entries:
                rules.extend(parse_ac_conditions(await read(conditions), aid))
        finally:
            try:
                await self.ril.close_channel(slot, session, step=step)
            except OmapiError:
                pass
        return RuleSet(tuple(rules)), tag

    async def _read_ef(self, slot: int, session: int, path: bytes, *, step: str | None = None) -> bytes:
        """One transparent EF of the PKCS#15 application: SELECT by file identifier (the Path's last one, relative
        to the application; P2 04: the FCP), then READ BINARY of the FCP's file size."""
        fid = path[-2:]
        answer = await self.ril.exchange(slot, session, b"\x00\xa4\x00\x04\x02" + fid, step=step)
        if answer[-2:] != SW_OK:
            raise LoadFailed(f"SELECT of EF {fid.hex().upper()} answered {answer[-2:].hex().upper()}")
        size = _file_size(answer[:-2])
        if size is None or size > MAX_RULE_BYTES:
            raise LoadFailed(f"EF {fid.hex().upper()}: no usable file size in its FCP ({size})")
        data = b""
        while len(data) < size:
            count = min(size - len(data), READ_CHUNK)
            command = bytes((0x00, 0xB0, len(data) >> 8, len(data) & 0xFF, count))
            part = await self.ril.exchange(slot, session, command, step=step)
            if part[-2:] != SW_OK or len(part) == 2:
                raise LoadFailed(f"READ BINARY of EF {fid.hex().upper()} answered {part[-2:].hex().upper()}")
            data += part[:-2]
        return data[:size]

    async def refresh(self, slot: int) -> bool:
        """Reads the refresh tag of a card whose rules were loaded; when it differs from the loaded one, loads the
        rules again and sets the variable anew. Returns whether the rules were loaded again."""
        record = self.cards.get(slot)
        if record is None or record.state is not CardState.ENFORCED:
            return False
        try:
            if record.source == "ARF":  # EF_ACMain's refresh tag
                _, arf_tag = await self._read_arf(slot, tag_only=True)
                tag: bytes | None = arf_tag
            else:
                session = await self.ril.open_channel(slot, ARA_M_AID)
                try:
                    answer = await self.ril.exchange(slot, session, GET_REFRESH)
                finally:
                    await self.ril.close_channel(slot, session)
                tag = parse_refresh_tag(answer[:-2]) if answer[-2:] == SW_OK else None
        except (OmapiError, NoChannelAvailable, RuleFormatError, LoadFailed) as exc:
            self._trace(
                None,
                f"refresh tag of {reader_name(slot)} unreadable: {exc}",
                slot=slot,
                event="refresh",
                changed=False,
                reason=str(exc),
                error=True,
            )
            return False
        changed = tag != record.refresh_tag
        self._trace(
            None,
            f"refresh tag of {reader_name(slot)} {'changed' if changed else 'unchanged'}",
            slot=slot,
            event="refresh",
            changed=changed,
            refresh_tag=tag.hex().upper() if tag is not None else None,
        )
        if changed:
            await self._load(record, CardEvent.REFRESH)
        return changed
