"""A card that answers from a recorded trace (`--card trace:F`, `bipsim trace replay --as card`).

The trace's "apdu" events between the CP and the UICC are played back in order: each command the live terminal
sends is compared with the recorded one, and the recorded response is returned. The first command that differs
stops the replay with a ReplayDivergence that carries both commands and the step the recording labelled; the card
then answers 6F 00 (technical problem, no precise diagnosis) so that the terminal sees a card error, not a hang.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bipsim.trace.events import Actor, Layer, TraceEvent

SW_TECHNICAL_PROBLEM = b"\x6f\x00"


@dataclass(frozen=True)
class RecordedExchange:
    command: TraceEvent
    response: TraceEvent


class ReplayDivergence(Exception):
    """The live terminal sent something else than the recording at exchange `index`."""

    def __init__(self, index: int, expected: TraceEvent | None, actual: bytes) -> None:
        self.index = index
        self.expected = expected
        self.actual = actual
        step = f" ({expected.step})" if expected is not None and expected.step else ""
        wanted = expected.hex if expected is not None else "(end of the recording)"
        super().__init__(f"APDU {index + 1}{step}: expected {wanted}, got {actual.hex().upper()}")


def exchanges(events: Iterable[TraceEvent]) -> list[RecordedExchange]:
    """Pairs each recorded cp->uicc command with the uicc->cp response that follows it."""
    pairs: list[RecordedExchange] = []
    pending: TraceEvent | None = None
    for event in events:
        if event.layer is not Layer.APDU or not event.hex:
            continue
        if event.src is Actor.CP and event.dst is Actor.UICC:
            pending = event
        elif event.src is Actor.UICC and event.dst is Actor.CP and pending is not None:
            pairs.append(RecordedExchange(pending, event))
            pending = None
    return pairs


class RecordedCard:
    """An ApduTransport (bipsim.uicc.transport) playing back a recording; `divergence` is set on the first miss."""

    def __init__(
        self,
        events: Iterable[TraceEvent],
        atr: bytes = bytes.fromhex("3B9F96801FC78031A073BE21136743200718000001A5"),
    ) -> None:
        self._exchanges = exchanges(events)
        self._next = 0
        self._atr = atr
        self.divergence: ReplayDivergence | None = None

    @property
    def finished(self) -> bool:
        """True once every recorded exchange has been played."""
        return self._next >= len(self._exchanges)

    @property
    def played(self) -> int:
        return self._next

    def exchange(self, command: bytes) -> bytes:
        """The synchronous core: checks `command` against the recording and returns the recorded response."""
        if self.divergence is not None:
            return SW_TECHNICAL_PROBLEM
        if self._next >= len(self._exchanges):
            self.divergence = ReplayDivergence(self._next, None, command)
            return SW_TECHNICAL_PROBLEM
        recorded = self._exchanges[self._next]
        if recorded.command.data != command:
            self.divergence = ReplayDivergence(self._next, recorded.command, command)
            return SW_TECHNICAL_PROBLEM
        self._next += 1
        return recorded.response.data

    async def power_on(self) -> bytes:
        self._next = 0
        self.divergence = None
        return self._atr

    async def transmit(self, command: bytes) -> bytes:
        return self.exchange(command)

    async def close(self) -> None:
        return None
