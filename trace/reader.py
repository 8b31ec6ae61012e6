"""Reads and merges JSONL trace files (PROTOCOL.md section 4) from several processes into one timeline.

Every invalid line is reported with its file and line number (never silently dropped): `read_trace` collects them
as TraceProblem values and the CLI prints them; `strict=True` raises on the first one instead.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bipsim.trace.events import TraceEvent


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


def parse_lines(
    lines: Iterable[str], path: str, problems: list[TraceProblem] | None = None
) -> Iterator[TraceEvent]:
    """Yields the events of one file's lines; bad lines go to `problems`, or raise when it is None."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield TraceEvent.from_json(line)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            reason = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            problem = TraceProblem(path, number, reason)
            if problems is None:
                raise TraceFormatError(problem) from exc
            problems.append(problem)


def read_file(path: str | Path, problems: list[TraceProblem] | None = None) -> list[TraceEvent]:
    with Path(path).open(encoding="utf-8") as handle:
        return list(parse_lines(handle, str(path), problems))


def read_trace(
    paths: Iterable[str | Path], *, strict: bool = False
) -> tuple[list[TraceEvent], list[TraceProblem]]:
    """Reads several trace files and merges them by `t` (ties keep file order, then line order)."""
    problems: list[TraceProblem] = []
    per_file = [read_file(path, None if strict else problems) for path in paths]
    merged = list(heapq.merge(*(sorted(events, key=lambda e: e.t) for events in per_file), key=lambda e: e.t))
    return merged, problems
