"""The trace event format of docs/protocols.md, "Traces"."""

import io
import json

from bipsim.trace.events import Actor, Layer, TraceEvent
from bipsim.trace.recorder import Tracer


def test_event_round_trips_through_json() -> None:
    sink = io.StringIO()
    clock = iter([10.0, 10.5]).__next__
    tracer = Tracer(sink, session="e1", origin=10.0, clock=clock)
    tracer.emit("uicc", "cp", "apdu", "FETCH: OPEN CHANNEL", b"\xd0\x01", step="S401", kind="cat.proactive")
    tracer.emit(Actor.CP, Actor.AP, Layer.AT, "AT%GETNET", error=True)
    lines = sink.getvalue().splitlines()
    first = json.loads(lines[0])
    assert first == {
        "t": 0.0,
        "src": "uicc",
        "dst": "cp",
        "layer": "apdu",
        "kind": "cat.proactive",
        "summary": "FETCH: OPEN CHANNEL",
        "hex": "D001",
        "step": "S401",
        "session": "e1",
    }
    second = TraceEvent.from_json(lines[1])
    assert second.t == 0.5 and second.error and second.hex is None and second.data == b""
    assert TraceEvent.from_json(lines[0]).data == b"\xd0\x01"
