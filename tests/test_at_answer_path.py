"""The AT server's answer path (bipsim.link.at_server): the work it skips when nothing records a trace, and the
fields it still gives a tracer that records (docs/performance.md, "MO SMS through +CMGS over CMUX")."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import bipsim.link.at_server as at_server
from bipsim.link.at_server import AtServer
from bipsim.trace.recorder import NULL_TRACER, Tracer


async def _answer(server: AtServer, host: trio.abc.Stream, line: bytes) -> bytes:
    await host.send_all(line)
    got = b""
    with trio.fail_after(5):
        while b"OK\r\n" not in got:
            got += await host.receive_some(4096)
    return got


async def test_untraced_answers_never_parse_the_line_for_trace_fields(
    monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery
) -> None:
    def refused(line: str) -> dict[str, object]:
        raise AssertionError(f"trace fields built for {line!r} with nothing recording them")

    monkeypatch.setattr(at_server, "command_fields", refused)
    host, modem = trio.testing.memory_stream_pair()
    server = AtServer(modem, tracer=NULL_TRACER, echo=False)
    server.register("+CGMI", _maker)
    nursery.start_soon(server.run)
    assert await _answer(server, host, b"AT+CGMI\r") == b"\r\nbipsim\r\n\r\nOK\r\n"
    assert await _answer(server, host, b"ATE0;+CGMI\r") == b"\r\nbipsim\r\n\r\nOK\r\n"


async def test_a_recording_tracer_still_gets_each_events_fields(nursery: trio.Nursery) -> None:
    tracer = Tracer(keep=True)
    host, modem = trio.testing.memory_stream_pair()
    server = AtServer(modem, tracer=tracer, echo=False)
    server.register("+CGMI", _maker)
    nursery.start_soon(server.run)
    await _answer(server, host, b"AT+CGMI\r")
    by_kind = {event.kind: event for event in tracer.events}
    assert by_kind["at.command"].fields == at_server.command_fields("AT+CGMI")
    assert by_kind["at.info"].fields == at_server.command_fields("AT+CGMI")
    assert by_kind["at.final"].fields == {"result": "OK", **at_server.command_fields("AT+CGMI")}


async def _maker(request: object) -> list[str]:
    await trio.lowlevel.checkpoint()
    return ["bipsim"]
