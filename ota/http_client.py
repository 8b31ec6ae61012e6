"""The trio adapter of one HTTP/1.1 exchange on the client's side (RFC 9112 through h11, CLIENT role), shared by the
terminal's clients: the LPA's cloud client (ota/cloud_store.py), its ES9+ client (ap/lpa/es9_client.py) and the
upgrade agent's publish client (ap/upgrade/agent.py); docs/protocols.md, "eUICC and the cloud backup" and "Push
deployment".

`exchange` sends one request on an open stream and reads its whole answer, with a limit on the answer's body (an
announced Content-Length over it fails at once) and a deadline; `request` opens the stream itself (the caller's
`open_stream`: TCP, TLS, a scenario's network), exchanges and closes, all within one deadline. Whatever goes wrong is
one typed error, HttpClientError, saying which failure it was and holding what of the answer had arrived (a
refusal's head may come before the server closes on a long body). The trace events stay the callers': each names
its own peer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import h11
import trio

RECEIVE_SIZE = 65536  # bytes asked of the stream at a time

# opens the connection a request goes over (and runs TLS on it when the caller wants HTTPS)
Opener = Callable[[], Awaitable[trio.abc.Stream]]


class Failure(Enum):
    UNREACHABLE = (
        "unreachable"  # the connection could not be opened (refused, no route, TLS handshake failed)
    )
    BROKEN = "broken"  # it broke off, the server closed before a whole answer, or the answer is not HTTP/1.1
    TIMEOUT = "timeout"  # no whole answer before the deadline
    TOO_LARGE = "too large"  # the answer's body (or its Content-Length) is over the caller's limit


@dataclass(frozen=True)
class HttpAnswer:
    """A whole answer: header names lower-case (a repeated one: the last), the whole body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            return None


class HttpClientError(Exception):
    """No whole answer. `cause` is the error underneath (None for TOO_LARGE); `status` and `headers` are those of
    an answer's head that did arrive (0 and {} when none did), `body` the part of its body read so far."""

    def __init__(
        self,
        failure: Failure,
        message: str,
        *,
        cause: BaseException | None = None,
        status: int = 0,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(message)
        self.failure = failure
        self.cause = cause
        self.status = status
        self.headers = headers or {}
        self.body = body


async def exchange(
    stream: trio.abc.Stream,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes = b"",
    *,
    max_answer: int,
    timeout: float | None = None,
) -> HttpAnswer:
    """One request on `stream` (the caller gives every header, Host and Content-Length included) and its whole
    answer, within `timeout` seconds (None: no deadline); HttpClientError otherwise. The stream stays open."""
    deadline = math.inf if timeout is None else trio.current_time() + timeout
    return await _exchange(stream, method, target, headers, body, max_answer, deadline)


async def request(
    open_stream: Opener,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes = b"",
    *,
    max_answer: int,
    timeout: float,
) -> HttpAnswer:
    """Opens a connection with `open_stream`, exchanges one request on it and closes it, all within `timeout`
    seconds; HttpClientError otherwise (UNREACHABLE when the connection could not be opened)."""
    deadline = trio.current_time() + timeout
    try:
        with trio.fail_at(deadline):
            stream = await open_stream()
    except trio.TooSlowError as exc:
        raise HttpClientError(Failure.TIMEOUT, f"not connected within {timeout:g} s", cause=exc) from None
    except (OSError, trio.BrokenResourceError) as exc:
        cause = exc.__cause__ or exc  # SSLStream's BrokenResourceError holds the TLS error as its cause
        raise HttpClientError(Failure.UNREACHABLE, f"{type(cause).__name__}: {cause}", cause=exc) from None
    try:
        return await _exchange(stream, method, target, headers, body, max_answer, deadline)
    finally:
        with trio.move_on_at(
            deadline
        ) as closing:  # TLS says close_notify first, if the peer takes it in time
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the answer is read (or failed already): how the connection ends adds nothing
        if closing.cancelled_caught:
            await trio.aclose_forcefully(stream)


async def _exchange(
    stream: trio.abc.Stream,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    max_answer: int,
    deadline: float,
) -> HttpAnswer:
    conn = h11.Connection(h11.CLIENT)
    status, fields, answer = 0, dict[str, str](), bytearray()

    def failed(failure: Failure, message: str, cause: BaseException | None) -> HttpClientError:
        return HttpClientError(
            failure, message, cause=cause, status=status, headers=fields, body=bytes(answer)
        )

    try:
        with trio.fail_at(deadline):
            out = conn.send(h11.Request(method=method, target=target, headers=list(headers))) or b""
            if body:
                out += conn.send(h11.Data(data=body)) or b""
            out += conn.send(h11.EndOfMessage()) or b""
            await stream.send_all(out)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    fields = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
                    length = fields.get("content-length", "")
                    if length.isdigit() and int(length) > max_answer:
                        raise failed(
                            Failure.TOO_LARGE, f"the answer announces {length} bytes, over {max_answer}", None
                        )
                elif isinstance(event, h11.Data):
                    answer += event.data
                    if len(answer) > max_answer:
                        raise failed(Failure.TOO_LARGE, f"the answer is over {max_answer} bytes", None)
                elif isinstance(event, h11.EndOfMessage):
                    return HttpAnswer(status, fields, bytes(answer))
                elif isinstance(event, h11.ConnectionClosed):
                    raise h11.RemoteProtocolError("the server closed the connection")
                # an informational (1xx) answer is skipped: the final one follows (RFC 9110 15.2)
    except trio.TooSlowError as exc:
        raise failed(Failure.TIMEOUT, "no whole answer in time", exc) from None
    except (OSError, h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise failed(Failure.BROKEN, str(exc) or type(exc).__name__, exc) from None
