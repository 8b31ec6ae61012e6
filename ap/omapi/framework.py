"""The Framework layer of the AP's OMAPI stack (docs/protocols.md, "OMAPI on the AP", steps 004:201..004:206):
at start-up, per card slot, it checks that a card is present, loads the card's access rules from its ARA-M (GP SEAC
v1.1: SELECT by `+CCHO`, GET DATA `80CAFF4000` and `80CAFF6000` by `+CGLA`, the refresh tag `80CADF2000`, `+CCHC`)
and sets the variable `enforceCarrierPrivilege` of that card to whether the load succeeded. The rules are kept for
the access enforcement; they are loaded again only at the next start-up or when the card's refresh tag changed.

Two variants for a slot without a card: mode 1 does not try to load (202 -> 206), mode 2 tries once and fails.
Each card's state goes through one transition table (docs/architecture.md, "Explicit state machines").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from bipsim.ap.omapi.errors import OmapiError
from bipsim.ap.omapi.ril import NoChannelAvailable, SeRil, reader_name
from bipsim.ap.omapi.seac import (
    ARA_M_AID,
    GET_ALL,
    GET_NEXT,
    GET_REFRESH,
    RuleFormatError,
    RuleSet,
    announced_length,
    parse_refresh_tag,
    parse_rules,
)
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.transitions import TransitionTable

SW_OK = b"\x90\x00"
SW_NO_DATA = b"\x6a\x88"  # GP SEAC 5.1.5: the ARA-M holds no rule ("referenced data not found")
MAX_NEXT = 64  # GET DATA [Next] rounds at most (64 * 253 bytes > MAX_RULE_BYTES)


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
    history: list[CardState] = field(default_factory=list)

    def apply(self, event: CardEvent) -> None:
        self.history.append(self.state)
        self.state = CARD_TABLE.next(self.state, event)
        if self.state in (CardState.ENFORCED, CardState.NOT_ENFORCED):
            self.enforce_carrier_privilege = self.state is CardState.ENFORCED


class LoadFailed(Exception):
    pass


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
            f"loading the access rules of {reader_name(record.slot)} from the ARA-M",
            slot=record.slot,
            event="load_rules",
            aid=ARA_M_AID.hex().upper(),
        )
        try:
            rules, tag = await self._read_rules(record.slot)
        except (OmapiError, NoChannelAvailable, LoadFailed, RuleFormatError) as exc:
            record.apply(CardEvent.FAILED)
            record.rules = None
            record.refresh_tag = None
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
            record.reason = f"{len(rules.rules)} rules"
            self._trace(
                "004:204",
                f"rules loaded: {len(rules.rules)}",
                slot=record.slot,
                event="loaded",
                loaded=True,
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

    async def _read_rules(self, slot: int) -> tuple[RuleSet, bytes | None]:
        """The ARA-M's rule set and refresh tag, through one logical channel closed again afterwards."""
        session = await self.ril.open_channel(slot, ARA_M_AID, step="004:203")
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
        return rules, tag

    async def refresh(self, slot: int) -> bool:
        """Reads the refresh tag of a card whose rules were loaded; when it differs from the loaded one, loads the
        rules again and sets the variable anew. Returns whether the rules were loaded again."""
        record = self.cards.get(slot)
        if record is None or record.state is not CardState.ENFORCED:
            return False
        try:
            session = await self.ril.open_channel(slot, ARA_M_AID)
            try:
                answer = await self.ril.exchange(slot, session, GET_REFRESH)
            finally:
                await self.ril.close_channel(slot, session)
            tag = parse_refresh_tag(answer[:-2]) if answer[-2:] == SW_OK else None
        except (OmapiError, NoChannelAvailable, RuleFormatError) as exc:
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
