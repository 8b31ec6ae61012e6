"""The recorder's hot path (trace/recorder.py `Tracer.record`, issue 21): the same JSON lines as `emit`, built at the
flush from the queued arguments, and every reader of events in the process (keep, a listener, a subclass's emit, a
TracerView's extra fields or error filter) still served as by emit."""

from __future__ import annotations

import io
import json
from typing import Any

from bipsim.trace.events import TraceEvent
from bipsim.trace.recorder import NULL_TRACER, Tracer, TracerView


class Clock:
    """A clock the test moves: each call answers the next of a fixed list (two tracers see the same times)."""

    def __init__(self) -> None:
        self.times = iter([0.5, 1.25, 2.0000004, 3.1234567, 4.0, 5.5, 6.0, 7.0, 8.0])

    def __call__(self) -> float:
        return next(self.times)


def calls(target: Any) -> None:
    """A mix of what the card driver records: APDUs with fields, non-ASCII and quotes, steps, errors, no bytes."""
    fields = {"sw": "9000"}
    target("cp", "uicc", "apdu", "FETCH", b"\x80\x12\x00\x00\x10", kind="cat.fetch", fields={"length": 16})
    target("uicc", "cp", "apdu", "answer", b"\x90\x00", kind="apdu.response", fields=fields)
    fields["sw"] = "6F00"  # the caller reuses its dict: the line keeps what it was at the call
    target("ap", "cp", "at", 'AT%NETPAR "é\\\n"', b'"\xc3\xa9"\r', step="S403", kind="at.info")
    target("ota", "ap", "tcp", "refused", error=True, kind="tcp.error", fields={"n": [1, 2.5, None]})
    target("uicc", "cp", "apdu", "empty", b"", kind="apdu.response")


def lines(batch: int, how: str) -> list[str]:
    sink = io.StringIO()
    tracer = Tracer(sink, session="s1", origin=0.25, clock=Clock(), batch=batch)
    calls(tracer.record if how == "record" else tracer.emit)
    tracer.close()
    return sink.getvalue().splitlines()


def test_record_writes_the_lines_emit_writes() -> None:
    for batch in (1, 3, 256):
        recorded = lines(batch, "record")
        assert recorded == lines(batch, "emit")
        assert len(recorded) == 5
        # and they read back as the events emit would have built
        second = TraceEvent.from_json(recorded[1])
        assert second.data == b"\x90\x00" and second.field("sw") == "9000" and second.session == "s1"
        assert json.loads(recorded[0])["t"] == 0.25


def test_record_builds_no_event_for_a_plain_file_tracer() -> None:
    sink = io.StringIO()
    tracer = Tracer(sink, batch=256)
    tracer.record("cp", "uicc", "apdu", "STATUS", b"\x80\xf2\x00\x0c\x00", kind="apdu.command")
    assert [type(item) for item in tracer._pending] == [tuple]  # the arguments queued, no TraceEvent yet
    tracer.flush()
    assert tracer._pending == [] and '"hex": "80F2000C00"' in sink.getvalue()


def test_record_serves_every_reader_of_events() -> None:
    kept = Tracer(keep=True)
    kept.record("cp", "uicc", "apdu", "STATUS", b"\x01", kind="apdu.command")
    assert [event.hex for event in kept.events] == ["01"]

    seen: list[TraceEvent] = []
    listened = Tracer(io.StringIO())
    listened.subscribe(seen.append)
    listened.record("cp", "uicc", "apdu", "STATUS", b"\x02", kind="apdu.command")
    assert [event.hex for event in seen] == ["02"]

    class Spy(Tracer):
        def emit(self, *args: Any, **kwargs: Any) -> TraceEvent:  # type: ignore[override]
            event = super().emit(*args, **kwargs)
            seen.append(event)
            return event

    Spy(io.StringIO()).record("cp", "uicc", "apdu", "STATUS", b"\x03", kind="apdu.command")
    assert [event.hex for event in seen] == ["02", "03"]

    sink = io.StringIO()
    inner = Tracer(sink)
    TracerView(inner, extra={"slot": 2}).record(
        "cp", "uicc", "apdu", "STATUS", b"\x04", fields={"sw": "9000"}
    )
    TracerView(inner, errors_only=True).record("cp", "uicc", "apdu", "quiet", b"\x05")
    TracerView(inner, errors_only=True).record("cp", "uicc", "apdu", "loud", b"\x06", error=True)
    written = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [(line["hex"], line.get("fields")) for line in written] == [
        ("04", {"sw": "9000", "slot": 2}),
        ("06", None),
    ]

    NULL_TRACER.record("cp", "uicc", "apdu", "nothing", b"\x07")  # records nowhere, costs a check
    assert NULL_TRACER.events == [] and NULL_TRACER._pending == []
