"""Compares two traces message by message and reports the first divergence with both sides' bytes and meaning.

Timing differs from run to run, so only what crossed a boundary is compared: the ordered messages that carry bytes
(per layer set), by source, destination, layer and exact bytes. Used by `bipsim trace diff` and by replay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from bipsim.trace.events import Layer, TraceEvent

DEFAULT_LAYERS = frozenset({Layer.APDU, Layer.AT, Layer.TCP})


@dataclass(frozen=True)
class Divergence:
    """Where two traces part: the index among compared messages and the two events (None past an end)."""

    index: int
    expected: TraceEvent | None
    actual: TraceEvent | None

    def describe(self, explain: Callable[[TraceEvent], str] | None = None) -> str:
        lines = [f"divergence at message {self.index + 1}:"]
        for name, event in (("expected", self.expected), ("actual", self.actual)):
            if event is None:
                lines.append(f"  {name}: (nothing: the trace ended)")
                continue
            step = f" [{event.step}]" if event.step else ""
            lines.append(
                f"  {name}{step}: {event.src.value}->{event.dst.value} {event.layer.value}: {event.summary}"
            )
            lines.append(f"    bytes: {event.hex or '(none)'}")
            if explain is not None:
                meaning = explain(event)
                if meaning:
                    lines.append(f"    meaning: {meaning}")
        if self.expected is not None and self.actual is not None and self.expected.hex and self.actual.hex:
            offset = first_difference(self.expected.data, self.actual.data)
            if offset is not None:
                lines.append(f"  first differing byte at offset {offset}")
        return "\n".join(lines)


def first_difference(expected: bytes, actual: bytes) -> int | None:
    """Offset of the first byte that differs (or where the shorter one ends); None when equal."""
    for offset, (a, b) in enumerate(zip(expected, actual, strict=False)):
        if a != b:
            return offset
    return None if len(expected) == len(actual) else min(len(expected), len(actual))


def comparable(events: Iterable[TraceEvent], layers: frozenset[Layer] = DEFAULT_LAYERS) -> list[TraceEvent]:
    return [e for e in events if e.layer in layers and e.hex]


def first_divergence(
    expected: Sequence[TraceEvent], actual: Sequence[TraceEvent], layers: frozenset[Layer] = DEFAULT_LAYERS
) -> Divergence | None:
    a, b = comparable(expected, layers), comparable(actual, layers)
    for index in range(max(len(a), len(b))):
        left = a[index] if index < len(a) else None
        right = b[index] if index < len(b) else None
        if left is None or right is None:
            return Divergence(index, left, right)
        if (left.src, left.dst, left.layer, left.hex) != (right.src, right.dst, right.layer, right.hex):
            return Divergence(index, left, right)
    return None
