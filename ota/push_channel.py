"""The publish server's side of the IP-push connection (embodiment 4 of the push deployment; docs/protocols.md,
"Push deployment", "IP push"): a long-lived TCP connection on which the terminal authenticates once and then hears
of each release.

Framing: each frame is a 4-byte big-endian length and that many bytes of a UTF-8 JSON object with a string "type";
a frame holds at most MAX_FRAME bytes. The exchange: terminal `hello` {imei} -> server `challenge` {nonce} ->
terminal `auth` {mac} -> server `welcome`, or `rejected` {reason} and close. After the welcome the server sends
`release` frames; either side sends `ping`, answered `pong`. A frame that is not one of these in its place is
answered `error` {reason} and the connection closes. The server never sends a release before the welcome.

`FrameDecoder` and `encode_frame` are the codec; `PushServerConnection` is the sans-IO state machine (frames and the
current time in, frames to send and a close out) with its transition table; `PushServer` is the thin trio adapter
that runs one task per connection and keeps the set of welcomed connections for the admin notify.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import trio

from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.transitions import IllegalTransition, TransitionTable

MAX_FRAME = 4096  # bytes of JSON in one frame, the length prefix not counted
KEEPALIVE = 30.0  # seconds of silence from the peer before the server pings it
DEAD_PEER = 90.0  # seconds of silence after which the peer is taken for gone and the connection closed
HANDSHAKE = 30.0  # seconds from the connection's start to the welcome (or rejection)
MAX_CONNECTIONS = 1024  # push connections held at once; the next one is answered `error` and closed
IMEI = re.compile(r"^[0-9]{14,16}$")
MAC = re.compile(r"^[0-9a-fA-F]{64}$")


class FrameError(ValueError):
    """Bytes that are not a frame of this protocol (reason in str())."""


def encode_frame(frame: dict[str, Any]) -> bytes:
    """The length prefix and the compact UTF-8 JSON of `frame`; FrameError past MAX_FRAME."""
    body = json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise FrameError(f"a frame of {len(body)} bytes is over {MAX_FRAME}")
    return len(body).to_bytes(4, "big") + body


def decode_body(body: bytes) -> dict[str, Any]:
    """One frame's JSON object; FrameError when it is not UTF-8 JSON, not an object, or has no string "type"."""
    try:
        frame = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise FrameError("the frame is not UTF-8") from None
    except RecursionError:
        raise FrameError("the frame's JSON is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise FrameError(f"the frame is not JSON: {exc.msg}") from None
    if not isinstance(frame, dict):
        raise FrameError("a frame is a JSON object")
    if not isinstance(frame.get("type"), str):
        raise FrameError('a frame has a string "type"')
    return frame


class FrameDecoder:
    """Bytes in, whole frames out. A length over MAX_FRAME (or 0) is refused at once, before its body arrives."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_frame(self) -> tuple[dict[str, Any], bytes] | None:
        """The next frame and its exact bytes (prefix included), None until a whole one is here; FrameError."""
        if len(self._buffer) < 4:
            return None
        length = int.from_bytes(self._buffer[:4], "big")
        if length == 0 or length > self.max_frame:
            raise FrameError(f"a frame length of {length} (1..{self.max_frame})")
        if len(self._buffer) < 4 + length:
            return None
        raw = bytes(self._buffer[: 4 + length])
        del self._buffer[: 4 + length]
        return decode_body(raw[4:]), raw

    @property
    def pending(self) -> int:
        return len(self._buffer)


class Authenticator(Protocol):
    """What the push connection needs of the server's terminal authentication (ota/publish_server.py)."""

    def challenge(self, imei: str, now: float) -> str: ...

    def verify(self, imei: str, nonce: str, mac: str, now: float) -> str | None:
        """None when the MAC is right for that nonce; otherwise why not. The nonce is used up either way."""
        ...


class PushState(Enum):
    AWAIT_HELLO = "await_hello"
    CHALLENGED = "challenged"
    WELCOMED = "welcomed"
    CLOSED = "closed"


class PushInput(Enum):
    HELLO = "hello"
    AUTH_OK = "auth_ok"
    AUTH_FAILED = "auth_failed"
    PING = "ping"  # a ping or a pong from the peer, or our keep-alive ping
    RELEASE = "release"  # a release frame goes out
    CLOSE = "close"  # a bad frame, a timeout, the peer's close


PUSH_TRANSITIONS: TransitionTable[PushState, PushInput] = TransitionTable(
    "IP push connection",
    {
        (PushState.AWAIT_HELLO, PushInput.HELLO): PushState.CHALLENGED,
        (PushState.CHALLENGED, PushInput.AUTH_OK): PushState.WELCOMED,
        (PushState.CHALLENGED, PushInput.AUTH_FAILED): PushState.CLOSED,
        (PushState.WELCOMED, PushInput.PING): PushState.WELCOMED,
        (PushState.WELCOMED, PushInput.RELEASE): PushState.WELCOMED,
        (PushState.AWAIT_HELLO, PushInput.CLOSE): PushState.CLOSED,
        (PushState.CHALLENGED, PushInput.CLOSE): PushState.CLOSED,
        (PushState.WELCOMED, PushInput.CLOSE): PushState.CLOSED,
    },
)


@dataclass(frozen=True)
class Send:
    """A frame for the peer, with its bytes."""

    frame: dict[str, Any]
    data: bytes


@dataclass(frozen=True)
class Received:
    """A frame the peer sent, with its bytes."""

    frame: dict[str, Any]
    data: bytes


@dataclass(frozen=True)
class Refused:
    """Bytes that were no frame of the protocol in their place (answered `error`, then the close)."""

    reason: str
    data: bytes


@dataclass(frozen=True)
class Authenticated:
    """The terminal's `auth` was checked: `reason` is None when it passed."""

    imei: str
    reason: str | None


@dataclass(frozen=True)
class Close:
    """The connection is over: the adapter closes it after sending what came before."""

    reason: str
    error: bool = False


PushOutput = Send | Received | Refused | Authenticated | Close


@dataclass
class PushServerConnection:
    """One connection's protocol: `receive` and `tick` return what to send and whether to close, in order.
    `state` changes only through PUSH_TRANSITIONS."""

    auth: Authenticator
    start: float = 0.0
    imei: str | None = None
    nonce: str | None = None
    _state: PushState = PushState.AWAIT_HELLO
    _decoder: FrameDecoder = field(default_factory=FrameDecoder)
    _heard: float = 0.0
    _pinged: float | None = None

    def __post_init__(self) -> None:
        self._heard = self.start

    @property
    def state(self) -> PushState:
        return self._state

    @property
    def welcomed(self) -> bool:
        return self._state is PushState.WELCOMED

    def _move(self, event: PushInput) -> None:
        self._state = PUSH_TRANSITIONS.next(self._state, event)

    def _send(self, frame: dict[str, Any]) -> Send:
        return Send(frame, encode_frame(frame))

    def _refuse(self, reason: str, data: bytes) -> list[PushOutput]:
        self._move(PushInput.CLOSE)
        return [Refused(reason, data), self._send({"type": "error", "reason": reason}), Close(reason, True)]

    def receive(self, data: bytes, now: float) -> list[PushOutput]:
        """Bytes from the terminal (b"" is its close)."""
        if self._state is PushState.CLOSED:
            return []
        if not data:
            self._move(PushInput.CLOSE)
            torn = self._decoder.pending > 0
            return [Close("the terminal closed" + (" in the middle of a frame" if torn else ""), torn)]
        self._heard = now
        self._pinged = None
        self._decoder.feed(data)
        out: list[PushOutput] = []
        while self._state is not PushState.CLOSED:
            try:
                got = self._decoder.next_frame()
            except FrameError as exc:
                out += self._refuse(str(exc), data)
                break
            if got is None:
                break
            frame, raw = got
            out.append(Received(frame, raw))
            out += self._frame(frame, raw, now)
        return out

    def _frame(self, frame: dict[str, Any], raw: bytes, now: float) -> list[PushOutput]:
        kind = frame["type"]
        try:
            if kind == "hello" and self._state is PushState.AWAIT_HELLO:
                imei = frame.get("imei")
                if not isinstance(imei, str) or not IMEI.match(imei):
                    return self._refuse("hello: imei is a string of 14 to 16 digits", raw)
                self._move(PushInput.HELLO)
                self.imei = imei
                self.nonce = self.auth.challenge(imei, now)
                return [self._send({"type": "challenge", "nonce": self.nonce})]
            if kind == "auth" and self._state is PushState.CHALLENGED:
                assert self.imei is not None and self.nonce is not None
                mac = frame.get("mac")
                if not isinstance(mac, str) or not MAC.match(mac):
                    return self._refuse("auth: mac is 64 hex digits (HMAC-SHA256)", raw)
                reason = self.auth.verify(self.imei, self.nonce, mac, now)
                self.nonce = None
                if reason is None:
                    self._move(PushInput.AUTH_OK)
                    return [Authenticated(self.imei, None), self._send({"type": "welcome"})]
                self._move(PushInput.AUTH_FAILED)
                return [
                    Authenticated(self.imei, reason),
                    self._send({"type": "rejected", "reason": reason}),
                    Close(f"rejected: {reason}", True),
                ]
            if kind == "ping" and self._state is PushState.WELCOMED:
                self._move(PushInput.PING)
                return [self._send({"type": "pong"})]
            if kind == "pong" and self._state is PushState.WELCOMED:
                self._move(PushInput.PING)
                return []
        except IllegalTransition as exc:  # the checks above follow the table; this is the table's own word
            return self._refuse(str(exc), raw)
        return self._refuse(f"a {kind[:40]!r} frame in state {self._state.value}", raw)

    def release(self, release: dict[str, Any], server: str) -> Send | None:
        """The `release` frame announcing `release` (the catalogue's JSON) of the server at `server`; None before
        the welcome or after the close: a release never reaches a terminal that is not authenticated."""
        if self._state is not PushState.WELCOMED:
            return None
        self._move(PushInput.RELEASE)
        return self._send(
            {
                "type": "release",
                "server": server,
                "location": release["location"],
                "name": release["name"],
                "version": release["version"],
                "timestamp": release["timestamp"],
            }
        )

    def refuse(self, reason: str) -> list[PushOutput]:
        """The server will not serve this connection (over its capacity): `error`, then the close."""
        if self._state is PushState.CLOSED:
            return []
        self._move(PushInput.CLOSE)
        return [self._send({"type": "error", "reason": reason}), Close(reason, True)]

    def deadline(self) -> float:
        """When `tick` has something to do next (the adapter sleeps until then)."""
        if self._state is not PushState.WELCOMED:
            return self.start + HANDSHAKE
        if self._pinged is None:
            return self._heard + KEEPALIVE
        return self._heard + DEAD_PEER

    def tick(self, now: float) -> list[PushOutput]:
        """The clock moved on: the handshake deadline, a keep-alive ping, or the dead peer's close."""
        if self._state is PushState.CLOSED:
            return []
        if self._state is not PushState.WELCOMED:
            if now >= self.start + HANDSHAKE:
                self._move(PushInput.CLOSE)
                return [Close(f"no authentication within {HANDSHAKE:g} s", True)]
            return []
        if now >= self._heard + DEAD_PEER:
            self._move(PushInput.CLOSE)
            return [Close(f"nothing heard for {DEAD_PEER:g} s: the terminal is gone", True)]
        if self._pinged is None and now >= self._heard + KEEPALIVE:
            self._move(PushInput.PING)
            self._pinged = now
            return [self._send({"type": "ping"})]
        return []

    def close(self) -> None:
        """The adapter ends the connection (shutdown, a broken socket)."""
        if self._state is not PushState.CLOSED:
            self._move(PushInput.CLOSE)


class PushServer:
    """The trio adapter: one task per connection; `connections` holds the welcomed ones, which `announce` reaches.
    Every frame each way is a `publish.push` event (`hex`: the frame with its length prefix)."""

    def __init__(
        self,
        auth: Authenticator,
        tracer: Tracer = NULL_TRACER,
        *,
        on_auth: Callable[[Authenticated, str], None] | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.auth = auth
        self.tracer = tracer
        self.on_auth = on_auth  # the server's own trace of an authentication (publish.auth)
        self.connections: dict[int, tuple[PushServerConnection, trio.abc.Stream, trio.Lock]] = {}
        self.opened = 0
        self.active = 0
        self.max_connections = max_connections
        self.changed = trio.Event()  # set (and replaced) whenever a connection is welcomed or closed

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = int(listeners[0].socket.getsockname()[1])
        self.tracer.emit(
            Actor.PUBLISH,
            Actor.PUBLISH,
            Layer.APP,
            f"IP push listening on {host}:{bound}",
            kind=Kind.APP_EVENT,
            fields={"event": "push_listening", "host": host, "port": bound},
        )
        task_status.started(bound)
        await trio.serve_listeners(self.handle, listeners)

    async def serve_on(self, listener: trio.SocketListener) -> None:
        """Serves on a listening socket made beforehand (a scenario hands its port to the AP before it starts)."""
        await trio.serve_listeners(self.handle, [listener])

    def _trace(self, number: int, conn: PushServerConnection, out: PushOutput) -> None:
        imei = conn.imei
        if isinstance(out, Send):
            self.tracer.emit(
                Actor.PUBLISH,
                Actor.AP,
                Layer.TCP,
                f"push {number}: {out.frame['type']}",
                out.data,
                error=out.frame["type"] in ("error", "rejected"),
                kind=Kind.PUBLISH_PUSH,
                fields={"connection": number, "direction": "out", "type": out.frame["type"], "imei": imei},
            )
        elif isinstance(out, Received):
            self.tracer.emit(
                Actor.AP,
                Actor.PUBLISH,
                Layer.TCP,
                f"push {number}: {out.frame['type']} from the terminal",
                out.data,
                kind=Kind.PUBLISH_PUSH,
                fields={"connection": number, "direction": "in", "type": out.frame["type"], "imei": imei},
            )
        elif isinstance(out, Refused):
            self.tracer.emit(
                Actor.AP,
                Actor.PUBLISH,
                Layer.TCP,
                f"push {number}: bad frame: {out.reason}",
                out.data,
                error=True,
                kind=Kind.PUBLISH_PUSH,
                fields={
                    "connection": number,
                    "direction": "in",
                    "type": None,
                    "imei": imei,
                    "reason": out.reason,
                },
            )
        elif isinstance(out, Authenticated):
            if self.on_auth is not None:
                self.on_auth(out, f"push {number}")
        else:
            self.tracer.emit(
                Actor.PUBLISH,
                Actor.AP,
                Layer.TCP,
                f"push {number} closed: {out.reason}",
                error=out.error,
                kind=Kind.PUBLISH_PUSH,
                fields={
                    "connection": number,
                    "direction": "out",
                    "type": "close",
                    "imei": imei,
                    "reason": out.reason,
                },
            )

    async def _act(
        self,
        number: int,
        conn: PushServerConnection,
        stream: trio.abc.Stream,
        lock: trio.Lock,
        outs: list[PushOutput],
    ) -> bool:
        """Traces and carries out `outs`; False once the connection is to close."""
        for out in outs:
            self._trace(number, conn, out)
            if isinstance(out, Send):
                async with lock:
                    await stream.send_all(out.data)
            elif isinstance(out, Close):
                return False
            if conn.welcomed and number not in self.connections:
                self.connections[number] = (conn, stream, lock)
                self._changed()
        return True

    async def handle(self, stream: trio.abc.Stream) -> None:
        """One terminal's connection, from its hello to its close."""
        self.opened += 1
        number = self.opened
        conn = PushServerConnection(self.auth, start=trio.current_time())
        lock = trio.Lock()
        self.active += 1
        try:
            if self.active > self.max_connections:
                # each connection holds memory for as long as its terminal lives: past the cap, a refusal
                reason = f"the server holds its limit of {self.max_connections} connections"
                await self._act(number, conn, stream, lock, conn.refuse(reason))
                await trio.aclose_forcefully(stream)
                return
            async with stream:
                while True:
                    data: bytes | None = None
                    with trio.move_on_at(conn.deadline()):
                        data = bytes(await stream.receive_some(MAX_FRAME + 4))
                    now = trio.current_time()
                    outs = conn.tick(now) if data is None else conn.receive(data, now)
                    if not await self._act(number, conn, stream, lock, outs):
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            conn.close()
            self._trace(number, conn, Close(f"connection lost: {type(exc).__name__}", True))
        except Exception as exc:  # noqa: BLE001 - one connection's fault must not end the publish server
            conn.close()
            self._trace(number, conn, Close(f"connection ended by an internal fault: {exc!r}", True))
            await trio.aclose_forcefully(stream)
        finally:
            self.active -= 1
            conn.close()
            if self.connections.pop(number, None) is not None:
                self._changed()

    async def announce(self, release: dict[str, Any], server: str) -> int:
        """Sends the release frame on every welcomed connection; how many it reached."""
        sent = 0
        for number, (conn, stream, lock) in list(self.connections.items()):
            out = conn.release(release, server)
            if out is None:
                continue
            self._trace(number, conn, out)
            try:
                async with lock:
                    await stream.send_all(out.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue
            sent += 1
        return sent
