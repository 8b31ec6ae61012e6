"""A card that answers from a recorded trace (`--card trace:F`, `bipsim trace replay --as card`).

The trace's "apdu" events between the CP and the UICC are played back in order: each command the live terminal
sends is compared with the recorded one, and the recorded response is returned. The first command that differs
stops the replay with a ReplayDivergence that carries both commands and the step the recording labelled; the card
then answers 6F 00 (technical problem, no precise diagnosis, ISO 7816-4) so that the terminal sees a card error,
not a hang.

Two kinds of traffic share the card interface and are independent of each other: the card application toolkit
(TERMINAL PROFILE, FETCH, TERMINAL RESPONSE, ENVELOPE, STATUS: CLA 80, TS 102 221 section 10) and file access
(SELECT, READ/UPDATE, GET RESPONSE, VERIFY ...), which the CP issues when the AP asks it for something (AT+CIMI).
How the two interleave depends on when the AP's command arrived, not on the modem's logic, so each kind is played
in its own recorded order and their interleaving is not compared.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from bipsim.trace.events import Actor, Layer, TraceEvent

SW_TECHNICAL_PROBLEM = b"\x6f\x00"
# TS 102 221 section 10.1.2: the toolkit instructions, all with CLA 80
TOOLKIT_INS = frozenset({0x10, 0x12, 0x14, 0xC2, 0xF2, 0xAA})


class ApduKind(StrEnum):
    TOOLKIT = "toolkit"
    FILES = "files"


def apdu_kind(command: bytes) -> ApduKind:
    """Toolkit for CLA 80 with a toolkit instruction, file access for everything else."""
    if len(command) >= 2 and command[0] == 0x80 and command[1] in TOOLKIT_INS:
        return ApduKind.TOOLKIT
    return ApduKind.FILES


@dataclass(frozen=True)
class RecordedExchange:
    command: TraceEvent
    response: TraceEvent

    @property
    def kind(self) -> ApduKind:
        return apdu_kind(self.command.data)


class ReplayDivergence(Exception):
    """The live terminal sent something else than the recording at exchange `index` (of the whole recording).

    `expected` is the recorded command (None when the recording of that kind had ended); `actual` the live bytes.
    """

    def __init__(self, index: int, expected: TraceEvent | None, actual: bytes) -> None:
        self.index = index
        self.expected = expected
        self.actual = actual
        step = f" ({expected.step})" if expected is not None and expected.step else ""
        wanted = expected.hex if expected is not None else "(end of the recording)"
        super().__init__(f"APDU {index + 1}{step}: expected {wanted}, got {actual.hex().upper()}")


def exchanges(events: Iterable[TraceEvent]) -> list[RecordedExchange]:
    """Pairs each recorded cp->uicc command with the uicc->cp response that answers it.

    The CP records a command when it is issued, and a second command may be issued (queued behind the first)
    before the first one's response is recorded; the CP holds the card for one exchange at a time and the card
    answers in order, so a response pairs with the oldest unanswered command of its session (as trace/pcap.py
    pairs them).
    """
    pairs: list[RecordedExchange] = []
    pending: list[TraceEvent] = []
    for event in events:
        if event.layer is not Layer.APDU or not event.hex:
            continue
        if event.src is Actor.CP and event.dst is Actor.UICC:
            pending.append(event)
        elif event.src is Actor.UICC and event.dst is Actor.CP and pending:
            same = [c for c in pending if c.session == event.session]
            command = same[0] if same else pending[0]
            pending.remove(command)
            pairs.append(RecordedExchange(command, event))
    return pairs


class RecordedCard:
    """An ApduTransport (bipsim.uicc.transport) playing back a recording; `divergence` is set on the first miss."""

    def __init__(
        self,
        events: Iterable[TraceEvent],
        atr: bytes = bytes.fromhex("3B9F96801FC78031A073BE21136743200718000001A5"),
    ) -> None:
        self.recorded = exchanges(events)
        self._queues: dict[ApduKind, list[int]] = {kind: [] for kind in ApduKind}
        for index, exchange in enumerate(self.recorded):
            self._queues[exchange.kind].append(index)
        self._cursor: dict[ApduKind, int] = dict.fromkeys(ApduKind, 0)
        self._atr = atr
        self.divergence: ReplayDivergence | None = None

    @property
    def played(self) -> int:
        """How many recorded exchanges the terminal has matched so far."""
        return sum(self._cursor.values())

    @property
    def finished(self) -> bool:
        """True once every recorded exchange has been played."""
        return self.played >= len(self.recorded)

    def next_unplayed(self) -> RecordedExchange | None:
        """The earliest recorded exchange not played yet (what a terminal that stopped early still owed)."""
        waiting = [
            self._queues[kind][self._cursor[kind]]
            for kind in ApduKind
            if self._cursor[kind] < len(self._queues[kind])
        ]
        return self.recorded[min(waiting)] if waiting else None

    def exchange(self, command: bytes) -> bytes:
        """The synchronous core: checks `command` against the recording and returns the recorded response."""
        if self.divergence is not None:
            return SW_TECHNICAL_PROBLEM
        kind = apdu_kind(command)
        queue, cursor = self._queues[kind], self._cursor[kind]
        if cursor >= len(queue):
            self.divergence = ReplayDivergence(len(self.recorded), None, command)
            return SW_TECHNICAL_PROBLEM
        index = queue[cursor]
        recorded = self.recorded[index]
        if recorded.command.data != command:
            self.divergence = ReplayDivergence(index, recorded.command, command)
            return SW_TECHNICAL_PROBLEM
        self._cursor[kind] = cursor + 1
        return recorded.response.data

    async def power_on(self) -> bytes:
        self._cursor = dict.fromkeys(ApduKind, 0)
        self.divergence = None
        return self._atr

    async def transmit(self, command: bytes) -> bytes:
        return self.exchange(command)

    async def close(self) -> None:
        return None
