"""Records trace events to a JSON Lines file (or memory) against one clock origin shared by every process.

Processes of one run share the origin through the environment variable BIPSIM_T0, a `time.monotonic()` value
(CLOCK_MONOTONIC is system-wide on Linux, so the AP, CP and OTA server files merge by `t`). The demo sets it
before starting its children; a process started alone takes its own start as the origin.

Recording is cheap on the hot path (docs/protocols.md, "Traces"): `emit` builds the event (its bytes as hex and a
few fields) and queues it; a trace file's JSON lines are encoded and written in batches, by the emitting thread
once BATCH_EVENTS are queued, by a flusher thread every FLUSH_INTERVAL seconds, and at `close`, at interpreter
exit and before a forced exit (`flush_all`). A process killed with SIGKILL loses at most the events of its last
FLUSH_INTERVAL seconds (and never more than BATCH_EVENTS); every line that reaches the file is whole. A tracer
given its own sink (a StringIO in a test) writes each line at once, as before, unless asked to batch.

The hot path (`record`, used where every APDU is traced) does even less when nothing reads the event in the
process (no `keep`, no listener, a plain Tracer): it queues the call's arguments as they are, the bytes and the
fields, and the flush builds the TraceEvent's line from them (the hex, the rounding of `t`, the JSON), so the
emitting task pays for a clock read, two dict look-ups and an append.
"""

from __future__ import annotations

import atexit
import json
import json.encoder
import os
import threading
import time
from collections.abc import Callable
from math import isfinite
from pathlib import Path
from typing import Any, TextIO

from bipsim.trace.events import Actor, Layer, TraceEvent

T0_ENV = "BIPSIM_T0"
BATCH_EVENTS = 256  # queued events that make the emitting thread write them at once
FLUSH_INTERVAL = 0.05  # seconds: the most a queued event waits for its line (and what a SIGKILL may lose)

_ENCODER = json.JSONEncoder(separators=(", ", ": "), ensure_ascii=False)  # as TraceEvent.to_json
_string: Callable[[str], str] = json.encoder.encode_basestring
# the C accelerator's encoder factory (None where it is missing; typeshed does not list it)
_make_encoder: Callable[..., Callable[[Any, int], Any]] | None = getattr(json.encoder, "c_make_encoder", None)
_threads = threading.local()  # each thread's own field encoder (its circular-reference markers are its own)
_ACTORS: dict[object, Actor] = dict(Actor._value2member_map_)
_LAYERS: dict[object, Layer] = dict(Layer._value2member_map_)


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
    `batch` > 1 queues up to that many events before encoding and writing them (see the module's docstring);
    a tracer made by `to_file` batches, one given a sink writes every line at once unless told otherwise.
    """

    def __init__(
        self,
        sink: TextIO | None = None,
        *,
        session: str | None = None,
        origin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        keep: bool = False,
        batch: int = 1,
    ) -> None:
        self._sink = sink
        self._owned = False
        self.session = session
        self.origin = shared_origin() if origin is None else origin
        self._clock = clock
        self.events: list[TraceEvent] = []
        self._keep = keep
        self._lock = threading.Lock()  # pyserial worker threads may emit too
        self._write_lock = threading.Lock()  # one batch written at a time: the flusher, an emitter, close
        self._listeners: list[Callable[[TraceEvent], None]] = []
        self._batch = max(1, batch)
        # queued: TraceEvents (from emit) and the raw arguments of `record` (a _Raw tuple), in their order
        self._pending: list[TraceEvent | _Raw] = []
        # `record` may skip building the event only when `emit` is this class's own (a subclass that overrides it
        # sees every event)
        self._plain = type(self).emit is Tracer.emit
        if sink is not None and self._batch > 1:
            _Flusher.register(self)

    @classmethod
    def to_file(cls, path: str | os.PathLike[str], **kwargs: object) -> Tracer:
        """A tracer writing to `path` (truncated) in batches of whole lines (at most FLUSH_INTERVAL late)."""
        sink = Path(path).open("w", encoding="utf-8")
        kwargs.setdefault("batch", BATCH_EVENTS)
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
        # the enum lookups by value, not Actor(src): the hot path of every APDU and frame
        event = TraceEvent(
            t=self._clock() - self.origin,
            src=_ACTORS.get(src) or Actor(src),
            dst=_ACTORS.get(dst) or Actor(dst),
            layer=_LAYERS.get(layer) or Layer(layer),
            summary=summary,
            hex=data.hex().upper() if data is not None else None,
            step=step,
            session=session if session is not None else self.session,
            error=error,
            kind=kind,
            # a copy: the line is encoded later, and a caller may reuse its dict
            fields=dict(fields) if fields else fields,
        )
        full = False
        with self._lock:
            if self._keep:
                self.events.append(event)
            if self._sink is not None:
                self._pending.append(event)
                full = len(self._pending) >= self._batch
        if full:
            self.flush()
        for listener in self._listeners:
            listener(event)
        return event

    def record(
        self,
        src: Actor | str,
        dst: Actor | str,
        layer: Layer | str,
        summary: str,
        data: bytes | None = None,
        *,
        step: str | None = None,
        error: bool = False,
        kind: str = "",
        fields: dict[str, Any] | None = None,
    ) -> None:
        """`emit` for the hot path: the same line in the trace file, but no TraceEvent is returned, so none is built
        unless something in this process reads events (keep, a listener, a subclass's own emit).

        `data` must not change after the call (bytes, or a bytearray the caller does not reuse): its hex is taken
        at the flush. `fields` is copied, as by emit."""
        if self._keep or self._listeners or not self._plain:
            self.emit(src, dst, layer, summary, data, step=step, error=error, kind=kind, fields=fields)
            return
        sink = self._sink
        if sink is None:
            return  # a tracer that records nothing
        raw = (
            self._clock() - self.origin,
            _ACTORS.get(src) or Actor(src),
            _ACTORS.get(dst) or Actor(dst),
            _LAYERS.get(layer) or Layer(layer),
            summary,
            data,
            step,
            self.session,
            error,
            kind,
            dict(fields) if fields else None,
        )
        with self._lock:
            pending = self._pending
            pending.append(raw)
            full = len(pending) >= self._batch
        if full:
            self.flush()

    def flush(self, *, timeout: float = -1) -> None:
        """Encodes and writes every queued event now. With a `timeout`, gives up when a write stays busy that long.

        The queue is taken under the emitters' lock and encoded outside it (an emit never waits for an encoding);
        the write lock keeps the batches in their order."""
        if not self._write_lock.acquire(timeout=timeout):
            return
        try:
            with self._lock:
                pending, self._pending = self._pending, []
                sink = self._sink
            if sink is not None and pending:
                sink.write(
                    "".join(
                        [_line(item) if isinstance(item, TraceEvent) else _raw_line(item) for item in pending]
                    )
                )
                sink.flush()
        except (OSError, ValueError):
            pass  # a closed or failing sink (a full disk): the process goes on, its trace ends here
        finally:
            self._write_lock.release()

    def close(self) -> None:
        self.flush()
        _Flusher.unregister(self)
        with self._write_lock, self._lock:
            if self._sink is not None and self._owned:
                self._sink.close()
            self._sink = None


# what `record` queues: t, src, dst, layer, summary, data, step, session, error, kind, fields
_Raw = tuple[
    float, Actor, Actor, Layer, str, bytes | None, str | None, str | None, bool, str, dict[str, Any] | None
]


def _raw_line(raw: _Raw) -> str:
    """The line of the TraceEvent that `emit` would have built from the same arguments (built without it)."""
    t, src, dst, layer, summary, data, step, session, error, kind, fields = raw
    return _text(
        t,
        src,
        dst,
        layer,
        summary,
        data.hex().upper() if data is not None else None,
        step,
        session,
        error,
        kind,
        fields,
    )


def _line(event: TraceEvent) -> str:
    """`event.to_json()` and a newline."""
    return _text(
        event.t,
        event.src,
        event.dst,
        event.layer,
        event.summary,
        event.hex,
        event.step,
        event.session,
        event.error,
        event.kind,
        event.fields,
    )


def _fields_text(fields: dict[str, Any]) -> str:
    """`_ENCODER.encode(fields)`, the same text, without building the C encoder again for every event: `encode`
    makes a new one per call, which was half the cost of a small dict's encoding (docs/performance.md, "The card
    path"). One encoder per thread, so that two flushing threads never share its markers."""
    encoder = getattr(_threads, "encoder", None)
    if encoder is None:
        if _make_encoder is None:
            return _ENCODER.encode(fields)
        encoder = _threads.encoder = _make_encoder(
            {},  # markers: a circular value is a ValueError, as with _ENCODER
            _ENCODER.default,
            _string,  # ensure_ascii=False
            None,
            _ENCODER.key_separator,
            _ENCODER.item_separator,
            False,  # sort_keys
            False,  # skipkeys
            True,  # allow_nan
        )
    try:
        return "".join(encoder(fields, 0))
    except Exception:
        _threads.encoder = None  # a failed encoding may leave its markers behind: the next one starts clean
        raise


def _text(
    t: float,
    src: Actor,
    dst: Actor,
    layer: Layer,
    summary: str,
    hex_: str | None,
    step: str | None,
    session: str | None,
    error: bool,
    kind: str,
    fields: dict[str, Any] | None,
) -> str:
    """A TraceEvent's `to_json()` and a newline, built piece by piece: the same text (the keys in to_dict's order,
    strings escaped by json's own encoder, `t` as json writes a float) in about half the time of a dict and an
    encode."""
    rounded = round(t, 6)
    if not isfinite(rounded):
        event = TraceEvent(t, src, dst, layer, summary, hex_, step, session, error, kind, fields)
        return event.to_json() + "\n"
    # src, dst and layer are StrEnum members: their text is their value, plain ASCII without quotes to escape
    parts = [
        '{"t": ',
        float.__repr__(rounded) if isinstance(rounded, float) else _ENCODER.encode(rounded),
        ', "src": "',
        src,
        '", "dst": "',
        dst,
        '", "layer": "',
        layer,
        '", "kind": ',
        _string(kind),
        ', "summary": ',
        _string(summary),
    ]
    if hex_ is not None:
        parts += (', "hex": "', hex_, '"')
    if step is not None:
        parts += (', "step": ', _string(step))
    if session is not None:
        parts += (', "session": ', _string(session))
    if error:
        parts.append(', "error": true')
    if fields:
        parts += (', "fields": ', _fields_text(fields))
    parts.append("}\n")
    return "".join(parts)


class _Flusher:
    """One daemon thread per process that writes the queued events of every batching tracer each
    FLUSH_INTERVAL seconds, and an exit hook that writes them at interpreter exit."""

    _tracers: set[Tracer] = set()  # until closed: an unclosed tracer's queue is still written at exit
    _thread: threading.Thread | None = None
    _guard = threading.Lock()

    @classmethod
    def register(cls, tracer: Tracer) -> None:
        with cls._guard:
            cls._tracers.add(tracer)
            if cls._thread is None or not cls._thread.is_alive():
                cls._thread = threading.Thread(target=cls._run, name="trace-flusher", daemon=True)
                cls._thread.start()

    @classmethod
    def unregister(cls, tracer: Tracer) -> None:
        with cls._guard:
            cls._tracers.discard(tracer)

    @classmethod
    def flush_all(cls, timeout: float = -1) -> None:
        with cls._guard:
            tracers = list(cls._tracers)
        for tracer in tracers:
            tracer.flush(timeout=timeout)

    @classmethod
    def _run(cls) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            cls.flush_all()


def flush_all(timeout: float = 0.5) -> None:
    """Writes the queued events of every tracer of this process (before a forced exit: os._exit skips atexit).
    A tracer whose lock stays busy `timeout` seconds (a thread stopped inside emit) is skipped."""
    _Flusher.flush_all(timeout)


def _after_fork_in_child() -> None:
    """A child made by fork() (without exec) starts with its parent's queues, which the parent writes itself, and
    with locks some parent thread may have held: it gets empty queues, new locks and its own flusher thread."""
    _Flusher._guard = threading.Lock()
    _Flusher._thread = None
    tracers = list(_Flusher._tracers)
    _Flusher._tracers = set()
    for tracer in tracers:
        tracer._lock = threading.Lock()
        tracer._write_lock = threading.Lock()
        tracer._pending = []
        _Flusher.register(tracer)


atexit.register(_Flusher.flush_all)
os.register_at_fork(after_in_child=_after_fork_in_child)


NULL_TRACER = Tracer()
"""A tracer that records nothing: the default of components built without one."""


class TracerView(Tracer):
    """A tracer that hands its events to another (`inner`), with `extra` fields added to each (a card slot's
    number), or, with `errors_only`, only the events marked as errors (a gateway whose every packet the CP's stack
    already records keeps only its refusals). What it does not pass on is recorded nowhere."""

    def __init__(
        self, inner: Tracer, *, extra: dict[str, Any] | None = None, errors_only: bool = False
    ) -> None:
        super().__init__(session=inner.session, origin=inner.origin)
        self.inner = inner
        self.extra = dict(extra or {})
        self.errors_only = errors_only

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
        if self.errors_only and not error:
            return NULL_TRACER.emit(src, dst, layer, summary, data, step=step, session=session, kind=kind)
        if self.extra:
            fields = {**(fields or {}), **self.extra}
        return self.inner.emit(
            src, dst, layer, summary, data, step=step, session=session, error=error, kind=kind, fields=fields
        )

    def record(
        self,
        src: Actor | str,
        dst: Actor | str,
        layer: Layer | str,
        summary: str,
        data: bytes | None = None,
        *,
        step: str | None = None,
        error: bool = False,
        kind: str = "",
        fields: dict[str, Any] | None = None,
    ) -> None:
        if self.errors_only and not error:
            return
        if self.extra:
            fields = {**(fields or {}), **self.extra}
        self.inner.record(src, dst, layer, summary, data, step=step, error=error, kind=kind, fields=fields)
