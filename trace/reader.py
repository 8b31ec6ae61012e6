"""Reads and merges JSONL trace files (docs/protocols.md, "Traces") from several processes into one timeline.

Every invalid line is reported with its file and line number (never silently dropped): `read_trace` collects them
as TraceProblem values and the CLI prints them; `strict=True` raises on the first one instead. A line is read as
bytes and may hold at most MAX_LINE_BYTES (longer ones are a problem, and are not held in memory whole); it must be
UTF-8 and one JSON object that `TraceEvent.from_dict` accepts.

Merging keeps each message once: when both ends of a boundary record one message (the AP's and the CP's copy of
`AT+CMEE=1`, of a CMUX frame, of BIP data relayed over a DLC), `merge_copies` keeps the sender's copy and puts both
ends' times in its `fields` as `t_src` (when the sender recorded it) and `t_dst` (when the receiver did).
"""

from __future__ import annotations

import heapq
import json
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from bipsim.trace.events import Actor, Layer, TraceEvent

MAX_LINE_BYTES = 16 * 1024 * 1024
"""The longest trace line read (16 MiB, its newline included): an event with 8 MiB of bytes in `hex`."""

MERGE_WINDOW = 5.0
"""Seconds within which the sender's and the receiver's copies of one message are paired (a slow line included)."""


@dataclass(frozen=True, slots=True)
class TraceProblem:
    """An unreadable line: where it is and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class TraceFormatError(ValueError):
    """A trace line that is not a valid event (raised in strict mode)."""

    def __init__(self, problem: TraceProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing key {exc}"
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc.msg} at column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    return str(exc)


def parse_line(line: str) -> TraceEvent:
    """One line's event; raises ValueError (JSON, shape), KeyError, TypeError or RecursionError."""
    return TraceEvent.from_json(line)


def parse_lines(
    lines: Iterable[str], path: str, problems: list[TraceProblem] | None = None
) -> Iterator[TraceEvent]:
    """Yields the events of one file's lines; bad lines go to `problems`, or raise when it is None."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            problem = TraceProblem(path, number, f"line longer than {MAX_LINE_BYTES} bytes")
        else:
            try:
                yield parse_line(line)
                continue
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                problem = TraceProblem(path, number, _reason(exc))
        if problems is None:
            raise TraceFormatError(problem)
        problems.append(problem)


def _raw_lines(handle: BinaryIO, path: str) -> Iterator[str | TraceProblem]:
    """Each line of a binary file as text, or the problem that makes it unreadable (too long, not UTF-8)."""
    number = 0
    while True:
        raw = handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            while raw and not raw.endswith(b"\n"):  # skip the rest of the line without holding it
                raw = handle.readline(1 << 20)
            yield TraceProblem(path, number, f"line longer than {MAX_LINE_BYTES} bytes")
            continue
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield TraceProblem(
                path, number, f"not UTF-8 text (byte 0x{raw[exc.start]:02X} at column {exc.start + 1})"
            )


def read_file(path: str | Path, problems: list[TraceProblem] | None = None) -> list[TraceEvent]:
    """The events of one trace file; bad lines go to `problems`, or raise TraceFormatError when it is None."""
    events: list[TraceEvent] = []
    with Path(path).open("rb") as handle:
        for number, item in enumerate(_raw_lines(handle, str(path)), start=1):
            problem = item if isinstance(item, TraceProblem) else None
            if isinstance(item, str):
                if not item.strip():
                    continue
                try:
                    events.append(parse_line(item))
                    continue
                except (ValueError, KeyError, TypeError, RecursionError) as exc:
                    problem = TraceProblem(str(path), number, _reason(exc))
            assert problem is not None
            if problems is None:
                raise TraceFormatError(problem)
            problems.append(problem)
    return events


def recorder_of(events: Sequence[TraceEvent]) -> Actor | None:
    """The actor that wrote a file: the one end every event of it has (None when that is not one actor)."""
    common: set[Actor] | None = None
    for event in events:
        ends = {event.src, event.dst}
        common = ends if common is None else common & ends
        if not common:
            return None
    return next(iter(common)) if common is not None and len(common) == 1 else None


def copy_key(event: TraceEvent) -> tuple[object, ...] | None:
    """What two copies of one message share: ends, layer, session and bytes (AT lines without their line ends,
    which each side writes its own way); events without bytes only when their kind and fields are equal."""
    if event.src is event.dst:
        return None
    if event.hex:
        payload: object = event.data.strip(b"\r\n") if event.layer is Layer.AT else event.hex
    elif event.kind:
        payload = (event.kind, json.dumps(event.fields or {}, sort_keys=True, default=str))
    else:
        return None
    return (event.src, event.dst, event.layer, event.session, payload)


def merge_copies(
    events: Iterable[TraceEvent], origins: Sequence[int], recorders: Sequence[Actor | None]
) -> list[TraceEvent]:
    """One event per message of a time-ordered merge: `origins[i]` is the file index of event i, `recorders` the
    actor that wrote each file. A copy pairs with the oldest unpaired copy of the same message from another file
    within MERGE_WINDOW; the sender's copy is kept (the earlier one when the writers are unknown), with `t_src` and
    `t_dst` in its fields, its kind, step and error completed from the receiver's copy."""
    out: list[TraceEvent] = []
    # key -> file -> indexes in `out` of that file's unpaired copies, oldest first: one queue per file, so that
    # many identical events of one file are never scanned for a copy from another (quadratic)
    waiting: dict[tuple[object, ...], dict[int, deque[int]]] = {}
    for event, origin in zip(events, origins, strict=True):
        key = copy_key(event)
        if key is not None:
            by_file = waiting.setdefault(key, {})
            best: int | None = None
            for file, queue in by_file.items():
                while queue and event.t - out[queue[0]].t > MERGE_WINDOW:
                    queue.popleft()
                if file != origin and queue and (best is None or queue[0] < by_file[best][0]):
                    best = file
            if best is not None:
                index = by_file[best].popleft()
                out[index] = _merged(out[index], recorders[best], event, recorders[origin])
                continue
            by_file.setdefault(origin, deque()).append(len(out))
        out.append(event)
    out.sort(key=lambda e: e.t)  # a kept copy of the sender that recorded later moves to its own time
    return out


def _merged(
    first: TraceEvent, first_by: Actor | None, second: TraceEvent, second_by: Actor | None
) -> TraceEvent:
    sender, receiver = first, second
    if second_by is second.src and first_by is not first.src:
        sender, receiver = second, first
    fields = {
        **(receiver.fields or {}),
        **(sender.fields or {}),
        "t_src": round(sender.t, 6),
        "t_dst": round(receiver.t, 6),
    }
    return replace(
        sender,
        kind=sender.kind or receiver.kind,
        step=sender.step or receiver.step,
        error=sender.error or receiver.error,
        fields=fields,
    )


def read_trace(
    paths: Iterable[str | Path], *, strict: bool = False, one_copy: bool = True
) -> tuple[list[TraceEvent], list[TraceProblem]]:
    """Reads several trace files and merges them by `t` (ties keep file order, then line order); with `one_copy`
    a message that two files recorded appears once (`merge_copies`)."""
    problems: list[TraceProblem] = []
    per_file = [sorted(read_file(path, None if strict else problems), key=lambda e: e.t) for path in paths]
    tagged = [[(event, index) for event in events] for index, events in enumerate(per_file)]
    pairs = list(heapq.merge(*tagged, key=lambda pair: pair[0].t))
    events = [event for event, _ in pairs]
    if one_copy and len(per_file) > 1:
        events = merge_copies(events, [index for _, index in pairs], [recorder_of(f) for f in per_file])
    return events, problems
