"""The shared trio adapter of one HTTP/1.1 exchange on the client's side (ota/http_client.py) against scripted
servers over memory streams, MockClock for the deadline: a whole answer, an answer over the limit (announced or
read), a server that closes early, one that never answers, and `request` opening and closing its own stream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import h11
import pytest
import trio
import trio.testing

from bipsim.ota.http_client import Failure, HttpAnswer, HttpClientError, exchange, request

HEADERS = [("host", "test"), ("content-length", "5")]
Script = Callable[[trio.abc.Stream, bytes], Awaitable[None]]


async def read_request(stream: trio.abc.Stream) -> bytes:
    """The request's bytes up to the end of its 5-byte body."""
    data = bytearray()
    while not (b"\r\n\r\n" in data and len(data) >= data.index(b"\r\n\r\n") + 4 + 5):
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def scripted(*answer: bytes, close: bool = True) -> Script:
    """A server that reads the request, sends `answer` piece by piece and closes (or waits forever)."""

    async def serve(stream: trio.abc.Stream, _request: bytes) -> None:
        for piece in answer:
            await stream.send_all(piece)
            await trio.testing.wait_all_tasks_blocked()  # the client takes in each piece on its own
        if close:
            await stream.aclose()
        else:
            await trio.sleep_forever()

    return serve


async def talk(
    script: Script, *, max_answer: int = 1024, timeout: float | None = 10.0
) -> tuple[HttpAnswer, bytes]:
    client, server = trio.testing.memory_stream_pair()
    got: list[bytes] = []

    async def serve() -> None:
        got.append(await read_request(server))
        await script(server, got[0])

    outcome: list[HttpAnswer | HttpClientError] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        try:
            outcome.append(
                await exchange(
                    client, "POST", "/x", HEADERS, b"hello", max_answer=max_answer, timeout=timeout
                )
            )
        except HttpClientError as exc:
            outcome.append(exc)  # raised again below: out of the nursery, not inside an exception group
        nursery.cancel_scope.cancel()
    (answer,) = outcome
    if isinstance(answer, HttpClientError):
        raise answer
    return answer, got[0]


async def test_a_whole_answer_with_its_headers_and_body() -> None:
    answer, sent = await talk(
        scripted(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n", b'{"a": 1}'
        )
    )
    assert sent.startswith(b"POST /x HTTP/1.1\r\n") and sent.endswith(b"\r\n\r\nhello")
    assert (answer.status, answer.body, answer.json()) == (200, b'{"a": 1}', {"a": 1})
    assert answer.headers["content-type"] == "application/json"


async def test_an_informational_answer_is_skipped_and_an_unreadable_body_is_no_json() -> None:
    answer, _ = await talk(
        scripted(b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnot")
    )
    assert (answer.status, answer.body, answer.json()) == (404, b"not", None)


async def test_an_announced_length_over_the_limit_fails_at_the_head() -> None:
    with pytest.raises(HttpClientError) as caught:
        await talk(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n"), max_answer=1000)
    error = caught.value
    assert (error.failure, error.status, error.body) == (Failure.TOO_LARGE, 200, b"")
    assert str(error) == "the answer announces 2000 bytes, over 1000"


async def test_a_chunked_answer_over_the_limit_fails_with_what_was_read() -> None:
    chunks = [b"HTTP/1.1 413 Content Too Large\r\nTransfer-Encoding: chunked\r\n\r\n"]
    chunks += [b"200\r\n" + b"z" * 0x200 + b"\r\n"] * 3
    with pytest.raises(HttpClientError) as caught:
        await talk(scripted(*chunks, close=False), max_answer=1000)
    error = caught.value
    assert (error.failure, error.status, len(error.body)) == (Failure.TOO_LARGE, 413, 1024)
    assert str(error) == "the answer is over 1000 bytes"


async def test_a_server_that_closes_before_answering_is_broken() -> None:
    with pytest.raises(HttpClientError) as caught:
        await talk(scripted())
    error = caught.value
    assert (error.failure, error.status) == (Failure.BROKEN, 0)
    assert isinstance(error.cause, h11.RemoteProtocolError)  # h11: a close where the answer was due


async def test_a_server_that_closes_within_the_body_is_broken_with_the_head_kept() -> None:
    with pytest.raises(HttpClientError) as caught:
        await talk(scripted(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 10\r\n\r\nrefu"))
    error = caught.value
    assert (error.failure, error.status, error.body) == (Failure.BROKEN, 413, b"refu")
    assert isinstance(error.cause, h11.ProtocolError)


async def test_an_answer_that_is_not_http_is_broken() -> None:
    with pytest.raises(HttpClientError) as caught:
        await talk(scripted(b"SSH-2.0-OpenSSH\r\n\r\n"))
    assert caught.value.failure is Failure.BROKEN


async def test_no_answer_by_the_deadline_is_a_timeout(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(HttpClientError) as caught:
        await talk(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nslo", close=False), timeout=5.0)
    error = caught.value
    assert (error.failure, error.status, error.body) == (Failure.TIMEOUT, 200, b"slo")
    assert isinstance(error.cause, trio.TooSlowError)


async def test_request_opens_exchanges_and_closes_its_stream() -> None:
    client, server = trio.testing.memory_stream_pair()
    opened: list[trio.abc.Stream] = []

    async def open_stream() -> trio.abc.Stream:
        opened.append(client)
        return client

    async def serve() -> None:
        await read_request(server)
        await server.send_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        assert await server.receive_some(10) == b""  # the client closed its side once it had the answer

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        answer = await request(open_stream, "POST", "/r", HEADERS, b"hello", max_answer=10, timeout=10.0)
    assert (answer.status, answer.body, opened) == (201, b"", [client])


async def test_request_that_cannot_connect_is_unreachable() -> None:
    async def refused() -> trio.abc.Stream:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(HttpClientError) as caught:
        await request(refused, "GET", "/", [("host", "test")], max_answer=10, timeout=10.0)
    error = caught.value
    assert error.failure is Failure.UNREACHABLE
    assert isinstance(error.cause, ConnectionRefusedError)
    assert "Connection refused" in str(error)


async def test_request_that_cannot_connect_in_time_is_a_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def never() -> trio.abc.Stream:
        await trio.sleep_forever()
        raise AssertionError

    with pytest.raises(HttpClientError) as caught:
        await request(never, "GET", "/", [("host", "test")], max_answer=10, timeout=3.0)
    assert caught.value.failure is Failure.TIMEOUT
