"""Every line reader is bounded by MAX_LINE (link/at_syntax.py): the AT server answers ERROR past it, a chat drops
the line, each with an at.error event; a runaway line costs linear work and bounded memory; lines nobody asked
for are not kept. The chat runs as the CP's on DLC 2 (reading the AP's answers) and the AP's on DLC 1 alike.
"""

from __future__ import annotations

import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio
import trio.testing

from bipsim.ap.apn_db import ApnDatabase
from bipsim.ap.network import ApNetwork
from bipsim.ap.proxy import ProxyService
from bipsim.link.at_chat import AtChat
from bipsim.link.at_server import AtServer
from bipsim.link.at_syntax import MAX_LINE, OverlongLine, ResponseSplitter
from bipsim.trace.events import Actor, Layer, TraceEvent
from bipsim.trace.recorder import Tracer

RUNAWAY = 3_800_000  # the 3.8 MB line without CR/LF that once held the CP at 100% CPU for a minute
CHUNK = 65536
MEMORY_BOUND = 1 << 20  # what reading a runaway line may hold, whatever its length


class CountingTracer(Tracer):
    """Counts events by kind and keeps only the first few flagged as errors (so that counting, say, 10 000
    dropped lines does not itself cost memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: Counter[str] = Counter()
        self.errors: list[TraceEvent] = []

    def emit(
        self, src: Actor | str, dst: Actor | str, layer: Layer | str, summary: str, data: bytes | None = None,
        **kwargs: Any,
    ) -> TraceEvent:  # fmt: skip
        event = super().emit(src, dst, layer, summary, data, **kwargs)
        self.kinds[event.kind] += 1
        if event.error and len(self.errors) < 10:
            self.errors.append(event)
        return event


@contextmanager
def memory_growth() -> Iterator[Callable[[], int]]:
    """Traces allocations; yields a function telling how much more memory is held than at the start."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield lambda: tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


def test_the_response_splitter_looks_at_each_byte_once_and_keeps_at_most_a_line() -> None:
    splitter = ResponseSplitter()
    fed = 0
    for _ in range(RUNAWAY // CHUNK + 1):
        assert splitter.feed(b"x" * CHUNK) == []
        fed += CHUNK
        assert splitter.buffered <= MAX_LINE + 1
    assert splitter.scanned == fed  # each byte examined once, not once per read
    [line, ok] = splitter.feed(b"\r\nOK\r\n")
    assert isinstance(line, OverlongLine) and line.length == fed and len(line) == MAX_LINE
    assert ok == "OK"


async def test_a_runaway_line_from_the_dce_is_dropped_in_linear_work_and_bounded_memory(
    nursery: trio.Nursery,
) -> None:
    """The CP's chat on DLC 2 while the AP answers AT%GETNET: 3.8 MB without CR/LF, then the real answer."""
    cp_end, ap_end = trio.testing.memory_stream_pair()
    tracer = CountingTracer()
    chat = AtChat(cp_end, tracer=tracer, local=Actor.CP, remote=Actor.AP, timeout=60)
    nursery.start_soon(chat.run)
    answer: list[Any] = []

    async def ask() -> None:
        answer.append(await chat.command("AT%GETNET=1,3"))

    nursery.start_soon(ask)
    await ap_end.receive_some()  # the command line
    with memory_growth() as held:
        for _ in range(RUNAWAY // CHUNK):
            await ap_end.send_all(b"\x00garbage" * (CHUNK // 8))
            await trio.testing.wait_all_tasks_blocked()  # the chat has read it all
            assert held() < MEMORY_BOUND
    tail = b'\r\n%NETPAR: 1,"internet","",""\r\n\r\nOK\r\n'
    await ap_end.send_all(tail)
    await trio.testing.wait_all_tasks_blocked()
    assert answer[0].ok and answer[0].lines == ('%NETPAR: 1,"internet","",""',)
    assert chat.core.splitter.scanned == RUNAWAY // CHUNK * CHUNK + len(tail)  # each byte once
    [dropped] = [e for e in tracer.errors if e.kind == "at.error"]
    assert dropped.fields == {"reason": "overlong", "length": RUNAWAY // CHUNK * CHUNK}


async def test_unmatched_lines_are_traced_and_dropped_not_kept(nursery: trio.Nursery) -> None:
    """The AP's %WEBEVT URCs reach a CP chat with no handler for them, and a DCE sends lines nobody asked for:
    each is traced when it arrives and nothing of it is kept while the DLC stays open."""
    cp_end, ap_end = trio.testing.memory_stream_pair()
    tracer = CountingTracer()
    chat = AtChat(cp_end, tracer=tracer, local=Actor.CP, remote=Actor.AP)
    nursery.start_soon(chat.run)
    lines = 10_000
    with memory_growth() as held:
        for n in range(lines // 100):
            await ap_end.send_all(
                b"".join(b'\r\n%%WEBEVT: %d,"closed"\r\nnoise %d\r\n' % (i, i) for i in range(50))
            )
            await trio.testing.wait_all_tasks_blocked()
            assert held() < 256 * 1024, f"after {n * 100} lines"
    assert tracer.kinds["at.urc"] == lines // 2 and tracer.kinds["at.error"] == lines // 2
    assert chat.unsolicited == ()


async def _until(stream: trio.abc.Stream, end: bytes) -> bytes:
    got = bytearray()
    with trio.fail_after(30):
        while not got.endswith(end):
            got += await stream.receive_some()
    return bytes(got)


async def test_the_at_server_answers_a_runaway_command_line_error_in_bounded_memory(
    nursery: trio.Nursery,
) -> None:
    dte, dce = trio.testing.memory_stream_pair()
    tracer = CountingTracer()
    server = AtServer(dce, tracer=tracer, echo=False)
    nursery.start_soon(server.run)
    with memory_growth() as held:
        await dte.send_all(b"AT+CSIM=")
        for _ in range(RUNAWAY // CHUNK):
            await dte.send_all(b"0" * CHUNK)
            await trio.testing.wait_all_tasks_blocked()
            assert held() < MEMORY_BOUND
    await dte.send_all(b"\rATE0\r")
    assert await _until(dte, b"OK\r\n") == b"\r\nERROR\r\n\r\nOK\r\n"
    [too_long] = [e for e in tracer.errors if e.kind == "at.error"]
    assert (
        too_long.summary
        == f"command line too long ({RUNAWAY // CHUNK * CHUNK + 8} characters, at most {MAX_LINE})"
    )


async def test_the_ap_proxy_answers_an_overlong_line_error(nursery: trio.Nursery) -> None:
    cp_end, ap_end = trio.testing.memory_stream_pair()
    tracer = CountingTracer()
    service = ProxyService(ApNetwork(), ApnDatabase.load(), lambda: "001010123456789", tracer=tracer)
    nursery.start_soon(service.serve, ap_end)  # a memory stream stands for DLC 2
    await cp_end.send_all(b'AT%GETNET=1,3,"' + b"a" * (MAX_LINE + 1) + b'"\r')
    assert await _until(cp_end, b"\r\n") == b"\r\nERROR\r\n"
    assert [e.kind for e in tracer.errors] == ["at.error", "at.final"]


async def _echo_upper(line: bytes) -> bytes:
    return line.upper()


async def test_a_control_socket_answers_each_line_and_refuses_an_overlong_one_then_goes_on() -> None:
    """link/line_requests.py: the loop of the OMAPI and card-control sockets keeps at most max_line bytes."""
    from trio.testing import memory_stream_pair

    from bipsim.link.line_requests import serve_line_requests

    client, server = memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_line_requests(server, _echo_upper, max_line=8, too_long=b"TOO LONG"))
        await client.send_all(b"ab\ncd")
        await client.send_all(b"\n" + b"x" * 20)  # past max_line: refused once, dropped up to its LF
        await client.send_all(b"y" * 20 + b"\nok\n")
        await client.send_all(b"z" * 9 + b"\nfine\n")  # an overlong line that arrives whole: refused too
        received = b""
        while received.count(b"\n") < 6:
            received += await client.receive_some(100)
        assert received == b"AB\nCD\nTOO LONG\nOK\nTOO LONG\nFINE\n"
        await client.aclose()


async def test_a_control_socket_without_a_refusal_ends_the_connection_on_an_overlong_line() -> None:
    from trio.testing import memory_stream_pair

    from bipsim.link.line_requests import serve_line_requests

    client, server = memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_line_requests(server, _echo_upper, max_line=8))
        await client.send_all(b"a\n" + b"z" * 9)
        assert await client.receive_some(100) == b"A\n"
        assert await client.receive_some(100) == b""  # the server closed its end
    client, server = memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_line_requests(server, _echo_upper, max_line=8))
        await client.send_all(b"b\n" + b"z" * 9 + b"\nc\n")  # overlong but whole in one read: the same
        assert await client.receive_some(100) == b"B\n"
        assert await client.receive_some(100) == b""
