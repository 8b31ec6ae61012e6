"""The V.250 DTE: sends commands one at a time, matches responses, detects final results (including
+CME ERROR / +CMS ERROR), routes unsolicited result codes, and times out per command (like oFono's gatchat).
Runs over any trio Stream: a serial line or a CMUX DLC.

V.250 answers carry no tag, so command and answer are matched by order alone. Two rules keep that order:

- A command line is sent whole or the chat knows it was not. Once its first byte may be out, the write is
  shielded from the caller's cancel, with a bound (`send_bound`); if the bound fires the line may be torn, and
  the next command first sends S3 alone so the DCE ends the fragment (and answers it, usually ERROR).
- Stale replies: a command that ends without its final result (timeout, cancel, torn line) stays *stale*.
  Until its final arrives, or the DCE has said nothing more about it for `resync_quiet` seconds, every line that
  is not a URC (and every line with the stale command's response prefix) is its late answer: dropped, with an
  error trace event "late answer to <cmd>: <line>". The next command waits for that (resynchronises) before it
  is sent, within its own timeout, so its answer is its own. URCs are routed to their handlers throughout.
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


# Why these rules (facts read in oFono gatchat/gatchat.c and ModemManager src/mm-port-serial.c):
# - oFono never cuts a command line: g_at_chat_cancel() on a command whose bytes are already partly written
#   only nulls its callback; the writer finishes the line and the command stays at the head of the queue,
#   swallowing its own final, before the next command is written. We do the same with a shielded write.
# - ModemManager bounds a write (about 3 s of EAGAIN, then "send failed" and a timed-out signal) and only
#   arms cancellation and the response timeout once the command is fully sent. Its port_serial_timed_out()
#   carries a FIXME: a late response "will get" attributed to the next command waiting. The stale rule
#   above is the fix for that: hold the timed-out command until its final or a quiet spell.
SEND_BOUND = 3.0  # seconds a command line may take to leave (ModemManager's EAGAIN budget)
RESYNC_QUIET = 5.0  # seconds of silence about a stale command after which its answer is deemed lost


class AtChat:
    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        tracer: Tracer = NULL_TRACER,
        local: Actor = Actor.AP,
        remote: Actor = Actor.CP,
        timeout: float = 30.0,
        send_bound: float = SEND_BOUND,
        resync_quiet: float = RESYNC_QUIET,
    ) -> None:
        self.stream = stream
        self.tracer = tracer
        self.local, self.remote = local, remote
        self.timeout = timeout
        self.send_bound = send_bound
        self.resync_quiet = resync_quiet
        self._urc: list[tuple[str, UrcHandler]] = []
        self._lock = trio.Lock()
        self._pending: str | None = None
        self._lines: list[str] = []
        self._done: trio.Event | None = None
        self._final = ""
        self._buffer = bytearray()
        self._eof = trio.Event()
        # the command whose final result is still owed, and when its resync window closes
        self._stale: str | None = None
        self._stale_until = 0.0
        self._stale_done = trio.Event()
        self._torn: str | None = None  # a command whose line may be on the wire without its S3
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
                self._stale_done.set()
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

    def _stale_owner(self) -> str | None:
        """The stale command, while its resync window is open."""
        if self._stale is not None and trio.current_time() >= self._stale_until:
            self.tracer.emit(
                self.local,
                self.remote,
                Layer.AT,
                f"no late answer to {self._stale} within {self.resync_quiet:g} s: line deemed in step",
                error=True,
            )
            self._stale = None
            self._stale_done.set()
        return self._stale

    def _make_stale(self, line: str) -> None:
        self._stale = line
        self._stale_until = trio.current_time() + self.resync_quiet
        self._stale_done = trio.Event()

    def _late(self, stale: str, line: str) -> None:
        """A line of the stale command's answer: traced as an error, never given to anybody."""
        self.tracer.emit(
            self.remote,
            self.local,
            Layer.AT,
            f"late answer to {stale}: {line}",
            line.encode("latin-1") + b"\r\n",
            error=True,
        )
        if is_final(line):
            self._stale = None
            self._stale_done.set()
        else:  # the DCE is still talking about it: keep the window open
            self._stale_until = trio.current_time() + self.resync_quiet

    async def _line(self, line: str) -> None:
        pending = self._pending
        stale = self._stale_owner() if pending is None else None
        owner = pending or stale
        for prefix, handler in self._urc:
            if line.startswith(prefix) and not (owner and _prefix_of(owner) == prefix.rstrip(":")):
                self.tracer.emit(self.remote, self.local, Layer.AT, line, line.encode("latin-1"))
                result = handler(line)
                if inspect.isawaitable(result):
                    assert self._nursery is not None
                    self._nursery.start_soon(_await, result)
                return
        if stale is not None:
            self._late(stale, line)
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
        """Sends `line` (without CR) and returns its response; raises AtTimeout. The timeout covers waiting out
        a stale command's late answer and then this command's own answer, not the send (see `send_bound`)."""
        async with self._lock:
            if self._eof.is_set():
                return AtResponse(line, (), "NO CARRIER")
            deadline = trio.current_time() + (self.timeout if timeout is None else timeout)
            try:
                await self._resync(line, deadline)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._went_away(line, exc)
                return AtResponse(line, (), "NO CARRIER")
            if self._eof.is_set():
                return AtResponse(line, (), "NO CARRIER")
            self._pending = line
            self._lines = []
            self._final = ""
            done = self._done = trio.Event()
            data = line.encode("latin-1") + b"\r"
            self.tracer.emit(self.local, self.remote, Layer.AT, line, data, step=step)
            gone = torn = False
            try:
                sent_at = trio.current_time()
                if not await self._send(data):
                    torn = True
                    self.tracer.emit(
                        self.local,
                        self.remote,
                        Layer.AT,
                        f"{line}: not sent within {self.send_bound:g} s (line held); S3 will end it",
                        error=True,
                    )
                    await trio.lowlevel.checkpoint_if_cancelled()  # a caller's cancel wins over our timeout
                    raise AtTimeout(f"could not send {line!r}")
                # the send's own time is not the DCE's: the answer timer starts once the line is out (as in MM)
                with trio.move_on_at(deadline + trio.current_time() - sent_at) as scope:
                    await done.wait()
                if scope.cancelled_caught:
                    self.tracer.emit(
                        self.local, self.remote, Layer.AT, f"{line}: no answer (timeout)", error=True
                    )
                    raise AtTimeout(f"no answer to {line!r}")
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # the line or DLC went away under the command: the DCE's answer is NO CARRIER, never a raise
                gone = True
                self._went_away(line, exc)
                self._final = "NO CARRIER"
            finally:
                self._pending = None
                self._done = None
                if torn:
                    self._torn = line
                    self._make_stale(line)
                elif not (gone or done.is_set()):  # timed out or cancelled by the caller: its final is owed
                    self._make_stale(line)
            return AtResponse(line, tuple(self._lines), self._final)

    async def _send(self, data: bytes) -> bool:
        """Writes `data` whole: shielded from the caller's cancel so no half line is left on the wire, and
        bounded so a held line cannot hang us. False when the bound ran out (part of `data` may be out)."""
        with trio.CancelScope(deadline=trio.current_time() + self.send_bound, shield=True) as scope:
            await self.stream.send_all(data)
        return not scope.cancelled_caught

    async def _resync(self, line: str, deadline: float) -> None:
        """Before `line` is sent: ends a torn line with S3, then waits until no command is stale (its final came,
        or the DCE was quiet about it for `resync_quiet` s, or half of `line`'s time to `deadline` is spent)."""
        if self._torn is not None:
            torn = self._torn
            self.tracer.emit(self.local, self.remote, Layer.AT, f"S3 to end the torn line of {torn}", b"\r")
            if not await self._send(b"\r"):
                self.tracer.emit(
                    self.local, self.remote, Layer.AT, f"{line}: not sent, the line is still held", error=True
                )
                raise AtTimeout(f"line still held: {line!r} not sent")
            self._torn = None
            self._make_stale(torn)  # the DCE answers the fragment now: that answer is the torn command's
        # resync may spend half the command's budget at most, so the command keeps the rest for its own answer
        give_up = trio.current_time() + (deadline - trio.current_time()) / 2
        while (stale := self._stale_owner()) is not None and not self._eof.is_set():
            if trio.current_time() >= give_up:
                self.tracer.emit(
                    self.local,
                    self.remote,
                    Layer.AT,
                    f"no late answer to {stale} yet: {line} goes ahead with half its timeout",
                    error=True,
                )
                self._stale = None
                break
            with trio.move_on_at(min(self._stale_until, give_up)):
                await self._stale_done.wait()

    def _went_away(self, line: str, exc: Exception) -> None:
        self.tracer.emit(
            self.local,
            self.remote,
            Layer.AT,
            f"{line}: stream went away ({type(exc).__name__})",
            error=True,
        )


def _prefix_of(command: str) -> str:
    """The response prefix of a command: AT+CREG? -> +CREG."""
    body = command[2:] if command[:2].upper() == "AT" else command
    end = 0
    while end < len(body) and body[end] not in "=?;":
        end += 1
    return body[:end].upper()


async def _await(result: Awaitable[None]) -> None:
    await result
