"""The shared trio adapter of an HTTP/1.1 server connection (ota/http_serve.py) over memory streams, with trio's
MockClock where the request deadline is the point: whole requests reach the handler and its replies go out, a
request not completed in time is answered 408, a refusal is traced and closes, a reply may close or send itself."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from bipsim.ota.http_client import exchange
from bipsim.ota.http_connection import HttpRequest, ServerConnection
from bipsim.ota.http_serve import Reply, serve_connection
from bipsim.trace.events import Actor
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from bipsim.uicc.http_limits import LIMITS

HOST = [("host", "test")]
SMALL = replace(LIMITS, request_timeout=5.0, body_bytes=64, chunk_bytes=64)


class Recorder:
    """A handler that keeps the requests it got and answers each with its index."""

    def __init__(self, **reply: object) -> None:
        self.requests: list[HttpRequest] = []
        self.reply = reply

    async def __call__(self, request: HttpRequest) -> Reply:
        self.requests.append(request)
        body = f"answer {len(self.requests)} to {request.method} {request.target}".encode()
        return Reply(200, [("content-type", "text/plain")], body, **self.reply)  # type: ignore[arg-type]


async def run(
    stream: trio.abc.Stream,
    handler: Recorder,
    tracer: Tracer,
    actor: Actor = Actor.CLOUD,
    **options: Any,
) -> None:
    """The adapter as a server runs it: the connection closed once it returns (the servers' guard does that)."""
    try:
        await serve_connection(
            stream, ServerConnection(SMALL), handler, tracer=tracer, actor=actor, **options
        )
    finally:
        await trio.aclose_forcefully(stream)


async def read_to_end(stream: trio.abc.ReceiveStream) -> bytes:
    out = bytearray()
    while data := await stream.receive_some(65536):
        out += data
    return bytes(out)


async def test_two_requests_on_one_connection_reach_the_handler_and_are_answered() -> None:
    client, server = trio.testing.memory_stream_pair()
    handler, tracer = Recorder(), Tracer(keep=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, server, handler, tracer)
        first = await exchange(client, "GET", "/one", HOST, max_answer=1024)
        second = await exchange(
            client, "POST", "/two", [*HOST, ("content-length", "4")], b"data", max_answer=1024
        )
        await client.aclose()
    assert (first.status, first.body) == (200, b"answer 1 to GET /one")
    assert (second.status, second.body) == (200, b"answer 2 to POST /two")
    assert [(r.method, r.target, r.body) for r in handler.requests] == [
        ("GET", "/one", b""),
        ("POST", "/two", b"data"),
    ]
    assert not tracer.events  # the handler traces requests and answers; the adapter only its refusals


async def test_a_request_not_whole_by_the_deadline_gets_408_and_the_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = trio.testing.memory_stream_pair()
    handler, tracer = Recorder(), Tracer(keep=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, server, handler, tracer)
        await client.send_all(b"POST /slow HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc")
        start = trio.current_time()
        answer = await read_to_end(client)  # ends: the server closed after the 408
        waited = trio.current_time() - start
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in answer.lower()
    assert waited >= SMALL.request_timeout  # the virtual clock ran to the deadline, not past another one
    assert not handler.requests
    (event,) = tracer.events
    assert (event.kind, event.src, event.error) == (Kind.HTTP_ERROR, Actor.CLOUD, True)
    assert event.fields is not None and event.fields["status"] == 408


async def test_an_idle_connection_is_closed_in_silence_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = trio.testing.memory_stream_pair()
    handler, tracer = Recorder(), Tracer(keep=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, server, handler, tracer)
        start = trio.current_time()
        answer = await read_to_end(client)
        waited = trio.current_time() - start
    assert answer == b""
    assert waited >= SMALL.request_timeout
    assert not tracer.events and not handler.requests


async def test_a_refusal_is_traced_answered_and_closes_the_connection() -> None:
    """A request without Host (RFC 9112 3.2) is refused 400; the valid request behind it is never read."""
    client, server = trio.testing.memory_stream_pair()
    handler, tracer = Recorder(), Tracer(keep=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(run, server, handler, tracer, Actor.PUBLISH, refusal_headers=[("server", "bipsim")])
        )
        await client.send_all(b"GET /bad HTTP/1.1\r\n\r\nGET /good HTTP/1.1\r\nHost: test\r\n\r\n")
        answer = await read_to_end(client)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.count(b"HTTP/1.1") == 1
    assert b"server: bipsim" in answer.lower()
    assert not handler.requests
    (event,) = tracer.events
    assert (event.kind, event.src, event.dst) == (Kind.HTTP_ERROR, Actor.PUBLISH, Actor.AP)
    assert event.fields is not None and event.fields["status"] == 400
    assert event.summary.startswith("400 Bad Request: ")


async def test_a_body_over_the_limit_is_413() -> None:
    client, server = trio.testing.memory_stream_pair()
    handler, tracer = Recorder(), Tracer(keep=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, server, handler, tracer)
        await client.send_all(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 65\r\n\r\n" + b"x" * 65)
        answer = await read_to_end(client)
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert not handler.requests
    assert [e.fields["status"] for e in tracer.events if e.fields] == [413]


async def test_a_reply_that_closes_ends_the_connection_after_it() -> None:
    client, server = trio.testing.memory_stream_pair()
    handler = Recorder(close=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, server, handler, Tracer())
        await client.send_all(b"GET /a HTTP/1.1\r\nHost: test\r\n\r\nGET /b HTTP/1.1\r\nHost: test\r\n\r\n")
        answer = await read_to_end(client)
    assert answer.count(b"HTTP/1.1 200 ") == 1 and b"connection: close" in answer.lower(), answer
    assert [r.target for r in handler.requests] == ["/a"]


async def test_a_reply_with_its_own_sender_sends_the_bytes_itself() -> None:
    sent: list[bytes] = []

    async def half(stream: trio.abc.Stream, data: bytes) -> None:
        sent.append(data)
        await stream.send_all(data[: len(data) // 2])
        raise trio.BrokenResourceError("cut on purpose")

    client, server = trio.testing.memory_stream_pair()
    errors: list[BaseException] = []

    async def serve() -> None:
        try:
            await run(server, Recorder(send=half), Tracer())
        except trio.BrokenResourceError as exc:
            errors.append(exc)  # the server's connection guard takes it

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client.send_all(b"GET /x HTTP/1.1\r\nHost: test\r\n\r\n")
        answer = await read_to_end(client)
    (whole,) = sent
    assert answer == whole[: len(whole) // 2]
    assert [str(e) for e in errors] == ["cut on purpose"]


async def test_a_lingering_refusal_drains_the_rest_until_the_client_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RFC 9112 9.6: after a refusal the server ends its side (the client reads to its end of stream) but goes on
    reading what the client still sends, until the client closes too."""
    from bipsim.ota import http_serve

    # the linger's own time limit is not the point: a stall of the test's task on a loaded machine must not end it
    monkeypatch.setattr(http_serve, "LINGER_SECONDS", 3600.0)
    client, server = trio.testing.memory_stream_pair()
    tracer = Tracer(keep=True)
    returned = trio.Event()

    async def serve() -> None:
        try:
            await serve_connection(
                server, ServerConnection(SMALL), Recorder(), tracer=tracer, actor=Actor.CLOUD, linger=True
            )
        finally:
            returned.set()
            await trio.aclose_forcefully(server)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client.send_all(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n")
        answer = await read_to_end(client)  # the server's end of stream (send_eof)...
        await trio.testing.wait_all_tasks_blocked()
        assert not returned.is_set()  # ...while it still reads
        await client.send_all(b"y" * 1000)
        await client.send_eof()
        await returned.wait()
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert [e.fields["status"] for e in tracer.events if e.fields] == [413]
