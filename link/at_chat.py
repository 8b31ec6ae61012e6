"""The V.250 DTE: sends commands one at a time, matches responses, detects final results (including
+CME ERROR / +CMS ERROR), routes unsolicited result codes, and times out per command (like oFono's gatchat).
Runs over any trio Stream: a serial line or a CMUX DLC.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from bipsim.link.at_syntax import FINAL_RESULTS
from bipsim.trace.events import Actor, Layer
from bipsim.trace.recorder import NULL_TRACER, Tracer

UrcHandler = Callable[[str], Awaitable[None] | None]
NUMERIC_FINALS = {
    "0": "OK",
    "1": "CONNECT",
    "3": "NO CARRIER",
    "4": "ERROR",
    "6": "NO DIALTONE",
    "7": "BUSY",
    "8": "NO ANSWER",
}


@dataclass(frozen=True)
class AtResponse:
    command: str
    lines: tuple[str, ...]
    final: str

    @property
    def ok(self) -> bool:
        return self.final == "OK"

    @property
    def cme_error(self) -> int | None:
        return _error_code(self.final, "+CME ERROR:")

    @property
    def cms_error(self) -> int | None:
        return _error_code(self.final, "+CMS ERROR:")


def _error_code(final: str, prefix: str) -> int | None:
    if not final.startswith(prefix):
        return None
    try:
        return int(final[len(prefix) :].strip())
    except ValueError:
        return -1  # verbose form (+CMEE=2): no number


def is_final(line: str) -> bool:
    return line in FINAL_RESULTS or line.startswith(("+CME ERROR:", "+CMS ERROR:")) or line in NUMERIC_FINALS


class AtTimeout(Exception):
    """No final result within the command's timeout."""


class AtChat:
    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        tracer: Tracer = NULL_TRACER,
        local: Actor = Actor.AP,
        remote: Actor = Actor.CP,
        timeout: float = 30.0,
    ) -> None:
        self.stream = stream
        self.tracer = tracer
        self.local, self.remote = local, remote
        self.timeout = timeout
        self._urc: list[tuple[str, UrcHandler]] = []
        self._lock = trio.Lock()
        self._pending: str | None = None
        self._lines: list[str] = []
        self._done: trio.Event | None = None
        self._final = ""
        self._buffer = bytearray()
        self._eof = trio.Event()
        self.unsolicited: list[str] = []
        self._nursery: trio.Nursery | None = None
        # line -> patent step label of the next time that exact response line is seen (set by callers)
        self.response_steps: dict[str, str] = {}

    def add_urc_handler(self, prefix: str, handler: UrcHandler) -> None:
        self._urc.append((prefix, handler))

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                while True:
                    try:
                        data = await self.stream.receive_some(4096)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    if not data:
                        break
                    self._buffer += data
                    for line in self._split():
                        await self._line(line)
            finally:
                self._eof.set()
                if self._done is not None:
                    self._final = "NO CARRIER"
                    self._done.set()

    def _split(self) -> list[str]:
        out: list[str] = []
        while True:
            cut = -1
            for i, byte in enumerate(self._buffer):
                if byte in (13, 10):
                    cut = i
                    break
            if cut < 0:
                return out
            line = self._buffer[:cut].decode("latin-1").strip()
            del self._buffer[: cut + 1]
            if line:
                out.append(line)

    async def _line(self, line: str) -> None:
        pending = self._pending
        for prefix, handler in self._urc:
            if line.startswith(prefix) and not (pending and _prefix_of(pending) == prefix.rstrip(":")):
                self.tracer.emit(self.remote, self.local, Layer.AT, line, line.encode("latin-1"))
                result = handler(line)
                if inspect.isawaitable(result):
                    assert self._nursery is not None
                    self._nursery.start_soon(_await, result)
                return
        step = self.response_steps.pop(line.split(":")[0], None) if pending else None
        self.tracer.emit(
            self.remote,
            self.local,
            Layer.AT,
            line,
            line.encode("latin-1") + b"\r\n",
            step=step,
            error=line.startswith(("+CME", "ERROR")),
        )
        if pending is None:
            self.unsolicited.append(line)
            return
        if line == pending.strip():  # the DCE's echo
            return
        if is_final(line):
            self._final = NUMERIC_FINALS.get(line, line)
            if self._done is not None:
                self._done.set()
            return
        self._lines.append(line)

    async def command(
        self, line: str, *, timeout: float | None = None, step: str | None = None
    ) -> AtResponse:
        """Sends `line` (without CR) and returns its response; raises AtTimeout."""
        async with self._lock:
            if self._eof.is_set():
                return AtResponse(line, (), "NO CARRIER")
            self._pending = line
            self._lines = []
            self._final = ""
            self._done = trio.Event()
            data = line.encode("latin-1") + b"\r"
            self.tracer.emit(self.local, self.remote, Layer.AT, line, data, step=step)
            try:
                await self.stream.send_all(data)
                with trio.move_on_after(self.timeout if timeout is None else timeout) as scope:
                    await self._done.wait()
                if scope.cancelled_caught:
                    self.tracer.emit(
                        self.local, self.remote, Layer.AT, f"{line}: no answer (timeout)", error=True
                    )
                    raise AtTimeout(f"no answer to {line!r}")
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # the line or DLC went away under the command: the DCE's answer is NO CARRIER, never a raise
                self.tracer.emit(
                    self.local,
                    self.remote,
                    Layer.AT,
                    f"{line}: stream went away ({type(exc).__name__})",
                    error=True,
                )
                self._final = "NO CARRIER"
            finally:
                self._pending = None
                self._done = None
            return AtResponse(line, tuple(self._lines), self._final)


def _prefix_of(command: str) -> str:
    """The response prefix of a command: AT+CREG? -> +CREG."""
    body = command[2:] if command[:2].upper() == "AT" else command
    end = 0
    while end < len(body) and body[end] not in "=?;":
        end += 1
    return body[:end].upper()


async def _await(result: Awaitable[None]) -> None:
    await result
