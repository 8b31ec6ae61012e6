"""The CP's card slots (SIM1, SIM2): the card each slot holds, whether it is there, and how the CP notices that it
went away or came back (docs/protocols.md, "Card slots and card presence on DLC 1").

A slot wraps its card's ApduTransport (uicc/transport.py) and is itself one, so the card driver talks to the slot.
Presence is one small state machine (SlotPresence, TRANSITIONS): a card is UNPOWERED until the CP resets it,
READY once power_on answered an ATR, ABSENT from the moment its transport raised CardRemoved (or the simulated card
said it was pulled) until power_on succeeds again. While ABSENT every APDU fails at once with CardRemoved without
reaching the reader: the AT commands answer +CME ERROR: 10 (3GPP TS 27.007 section 9.2.1, SIM not inserted) and
the BIP service ends its channels. Each change is an app.event trace event (`card_removed`, `card_inserted`) with
the slot and the reason.

The CP brings a card back by trying power_on again with exponential backoff on trio's clock (RETRY_MIN doubling
to RETRY_MAX seconds), at once when the transport says a card was inserted (SimulatedCard.on_insert), as a phone's
card-detect switch does. A READY slot that no BIP loop polls is asked STATUS (TS 102 221 section 11.1.2) every
PRESENCE_POLL seconds, as a terminal checks that an idle card is still there, so a reader that went away is noticed.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum, StrEnum

import trio

from bipsim.cp.card_driver import CardDriver
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer, TracerView
from bipsim.uicc.transitions import TransitionTable
from bipsim.uicc.transport import ApduTransport, CardRemoved

RETRY_MIN = 0.5  # seconds before the first power-on retry of an empty slot
RETRY_MAX = 8.0  # the backoff's ceiling: an empty reader costs one power-on attempt every 8 s
PRESENCE_POLL = 5.0  # seconds between STATUS commands to a READY card that nothing else talks to


class SlotState(Enum):
    UNPOWERED = "unpowered"  # present as far as the CP knows, not reset by it yet
    READY = "ready"  # power_on answered an ATR
    ABSENT = "absent"  # no card (pulled, reader gone, never there) until power_on succeeds again


class SlotEvent(StrEnum):
    POWERED = "powered"  # power_on answered an ATR
    REMOVED = "removed"  # the transport raised CardRemoved, or the card's holder said it was pulled


TRANSITIONS = TransitionTable[SlotState, SlotEvent](
    "card slot",
    {
        (SlotState.UNPOWERED, SlotEvent.POWERED): SlotState.READY,
        (SlotState.UNPOWERED, SlotEvent.REMOVED): SlotState.ABSENT,
        (SlotState.READY, SlotEvent.POWERED): SlotState.READY,  # a reset
        (SlotState.READY, SlotEvent.REMOVED): SlotState.ABSENT,
        (SlotState.ABSENT, SlotEvent.POWERED): SlotState.READY,  # the card came back
        (SlotState.ABSENT, SlotEvent.REMOVED): SlotState.ABSENT,  # a retry that found no card
    },
)


class Change(StrEnum):
    """What a presence event meant, for the trace: nothing, a card gone, a card back."""

    NONE = "none"
    REMOVED = "card_removed"
    INSERTED = "card_inserted"


class SlotPresence:
    """Sans-IO: the presence state of one slot; `move` returns what changed."""

    def __init__(self, state: SlotState = SlotState.UNPOWERED) -> None:
        self.state = state

    def move(self, event: SlotEvent) -> Change:
        old, self.state = self.state, TRANSITIONS.next(self.state, event)
        if self.state is SlotState.ABSENT and old is not SlotState.ABSENT:
            return Change.REMOVED
        if old is SlotState.ABSENT and self.state is not SlotState.ABSENT:
            return Change.INSERTED
        return Change.NONE


class NoCard:
    """An empty slot (`--card2 none`): there is no card to power on or talk to."""

    async def power_on(self) -> bytes:
        await trio.lowlevel.checkpoint()
        raise CardRemoved("the slot is empty")

    async def transmit(self, command: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        raise CardRemoved("the slot is empty")

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()


class CardSlot:
    """One card slot: an ApduTransport in front of the card's, with the card's presence and its driver.

    `listeners` are told (synchronously) when the card goes away: the AT commands invalidate the slot's +CCHO
    sessions there. `driver` may be given when a caller already drives the card (tests wrapping one driver).
    """

    def __init__(
        self,
        number: int,
        transport: ApduTransport,
        *,
        tracer: Tracer = NULL_TRACER,
        driver: CardDriver | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.number = number
        self.transport = transport
        self.notice = notice  # the user is told of a presence change in one line too (the modem: stderr)
        # every event of a slot other than 1 carries `slot`, so two cards' APDUs in one trace are told apart
        self.tracer = (
            tracer
            if number == 1 or isinstance(tracer, TracerView)
            else TracerView(tracer, extra={"slot": number})
        )
        self.presence = SlotPresence(
            SlotState.ABSENT if isinstance(transport, NoCard) else SlotState.UNPOWERED
        )
        self.driver = driver if driver is not None else CardDriver(self, tracer=self.tracer)
        self.listeners: list[Callable[[CardRemoved], None]] = []
        # told of every presence change (a card gone, a card back): a vendor dialect's SIM-state URCs
        self.change_listeners: list[Callable[[Change], None]] = []
        self.reason = "the slot is empty" if self.absent else ""
        self.powered = 0  # how many times power_on answered an ATR
        self._inserted = trio.Event()
        self._gone = trio.Event()
        # a simulated card says at once when it is pulled or put back (its card-detect switch)
        if hasattr(transport, "on_insert"):
            transport.on_insert = self.inserted
        if hasattr(transport, "on_remove"):
            transport.on_remove = lambda: self.gone(CardRemoved("card pulled from the simulated slot"))

    @property
    def state(self) -> SlotState:
        return self.presence.state

    @property
    def absent(self) -> bool:
        return self.presence.state is SlotState.ABSENT

    # --- the ApduTransport the driver talks to --------------------------------------------------------------------

    async def power_on(self) -> bytes:
        try:
            atr = await self.transport.power_on()
        except CardRemoved as exc:
            self.gone(exc)
            raise
        self.powered += 1
        self._move(SlotEvent.POWERED, "power-on answered", atr)
        return atr

    async def transmit(self, command: bytes) -> bytes:
        if self.absent:
            # no APDU reaches an empty slot: the caller learns at once (the retry task owns power-on attempts)
            await trio.lowlevel.checkpoint()
            raise CardRemoved(self.reason or f"no card in slot {self.number}")
        try:
            return await self.transport.transmit(command)
        except CardRemoved as exc:
            if self.state is not SlotState.UNPOWERED:
                self.gone(exc)
                raise
            first = exc
        # a card nobody has reset yet (a PC/SC reader before the toolkit starts) may need its power-on first: one
        # reset, then the command again; no card at all is CardRemoved as ever
        await self.power_on()
        try:
            return await self.transport.transmit(command)
        except CardRemoved as exc:
            self.gone(exc)
            raise exc from first

    async def close(self) -> None:
        await self.transport.close()

    # --- presence -------------------------------------------------------------------------------------------------

    def gone(self, exc: CardRemoved) -> None:
        """The card went away (a transport's CardRemoved, or the holder's word): ABSENT, traced once."""
        if self._move(SlotEvent.REMOVED, exc.reason) is Change.REMOVED:
            self.reason = exc.reason
            self.driver.card_gone()
            self._gone.set()
            for listener in list(self.listeners):
                listener(exc)

    def inserted(self) -> None:
        """The holder says a card was put in: wake the retry at once instead of at its next backoff step."""
        self._inserted.set()

    def _move(self, event: SlotEvent, reason: str, atr: bytes = b"") -> Change:
        change = self.presence.move(event)
        if change is Change.NONE:
            return change
        fields: dict[str, object] = {"event": change.value, "slot": self.number, "reason": reason}
        if atr:
            fields["atr"] = atr.hex().upper()
        summary = f"slot {self.number}: {'card removed' if change is Change.REMOVED else 'card inserted'} ({reason})"
        self.tracer.emit(
            Actor.UICC,
            Actor.CP,
            Layer.APP,
            summary,
            error=change is Change.REMOVED,
            kind=Kind.APP_EVENT,
            fields=fields,
        )
        if self.notice is not None:
            self.notice(summary)
        if change is Change.INSERTED:
            self._gone = trio.Event()
        for listener in list(self.change_listeners):
            listener(change)
        return change

    async def wait_gone(self) -> None:
        """Returns once the card is ABSENT."""
        while not self.absent:
            await self._gone.wait()

    async def wait_for_card(self, delay: float) -> None:
        """Sleeps `delay` seconds on trio's clock, or less when the holder says a card was inserted."""
        with trio.move_on_after(delay):
            await self._inserted.wait()
        self._inserted = trio.Event()

    async def keep_powered(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """For a slot without a toolkit (SIM2): power the card on, check it is still there every PRESENCE_POLL
        seconds, and when it is gone retry power-on with backoff until it is back. Runs until cancelled."""
        delay = RETRY_MIN
        started = False
        while True:
            if self.absent:
                if not started:
                    task_status.started()
                    started = True
                await self.wait_for_card(delay)
                delay = min(2 * delay, RETRY_MAX)
            try:
                atr = await self.power_on()
            except CardRemoved:
                continue
            self.tracer.emit(
                Actor.UICC,
                Actor.CP,
                Layer.APDU,
                f"ATR (slot {self.number})",
                atr,
                kind=Kind.APDU_ATR,
                fields={"length": len(atr), "slot": self.number},
            )
            delay = RETRY_MIN
            if not started:
                task_status.started()
                started = True
            await self._watch_ready()

    async def _watch_ready(self) -> None:
        """While READY: STATUS at the presence-poll interval; returns when the card is gone."""
        while not self.absent:
            with trio.move_on_after(PRESENCE_POLL):
                await self.wait_gone()
            if self.absent:
                return
            try:
                await self.driver.poll()
            except CardRemoved:
                return
