"""Records trace events to a JSON Lines file (or memory) against one clock origin shared by every process.

Processes of one run share the origin through the environment variable BIPSIM_T0, a `time.monotonic()` value
(CLOCK_MONOTONIC is system-wide on Linux, so the AP, CP and OTA server files merge by `t`). The demo sets it
before starting its children; a process started alone takes its own start as the origin.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from bipsim.trace.events import Actor, Layer, TraceEvent

T0_ENV = "BIPSIM_T0"


def shared_origin() -> float:
    """The run's clock origin: BIPSIM_T0 when set (and valid), else now."""
    raw = os.environ.get(T0_ENV)
    if raw:
        try:
            return float(raw)
        except ValueError:
            pass
    return time.monotonic()


class Tracer:
    """Turns calls to `emit` into TraceEvents, keeps them in memory when asked, and writes them as JSONL.

    `clock` returns the current time on the origin's scale (tests pass trio's MockClock-driven clock).
    `session` is the default session label of events. A Tracer with no sink and keep=False costs one call.
    """

    def __init__(
        self,
        sink: TextIO | None = None,
        *,
        session: str | None = None,
        origin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        keep: bool = False,
    ) -> None:
        self._sink = sink
        self._owned = False
        self.session = session
        self.origin = shared_origin() if origin is None else origin
        self._clock = clock
        self.events: list[TraceEvent] = []
        self._keep = keep
        self._lock = threading.Lock()  # pyserial worker threads may emit too
        self._listeners: list[Callable[[TraceEvent], None]] = []

    @classmethod
    def to_file(cls, path: str | os.PathLike[str], **kwargs: object) -> Tracer:
        """A tracer writing to `path` (truncated), line-buffered so a killed process leaves whole lines."""
        sink = Path(path).open("w", encoding="utf-8", buffering=1)
        tracer = cls(sink, **kwargs)  # type: ignore[arg-type]
        tracer._owned = True
        return tracer

    def subscribe(self, listener: Callable[[TraceEvent], None]) -> None:
        """Calls `listener` with every event as it is emitted (the live ladder uses this)."""
        self._listeners.append(listener)

    def emit(
        self,
        src: Actor | str,
        dst: Actor | str,
        layer: Layer | str,
        summary: str,
        data: bytes | None = None,
        *,
        step: str | None = None,
        session: str | None = None,
        error: bool = False,
        kind: str = "",
        fields: dict[str, Any] | None = None,
    ) -> TraceEvent:
        event = TraceEvent(
            t=self._clock() - self.origin,
            src=Actor(src),
            dst=Actor(dst),
            layer=Layer(layer),
            summary=summary,
            hex=data.hex().upper() if data is not None else None,
            step=step,
            session=session if session is not None else self.session,
            error=error,
            kind=kind,
            fields=fields,
        )
        with self._lock:
            if self._keep:
                self.events.append(event)
            if self._sink is not None:
                self._sink.write(event.to_json() + "\n")
        for listener in self._listeners:
            listener(event)
        return event

    def close(self) -> None:
        if self._sink is not None and self._owned:
            self._sink.close()
        self._sink = None


NULL_TRACER = Tracer()
"""A tracer that records nothing: the default of components built without one."""
