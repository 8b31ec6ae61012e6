"""The V.250 DTE over a trio Stream (a serial line or a CMUX DLC): sends commands one at a time and gives each its
answer, routes unsolicited result codes to their handlers, times out per command (like oFono's gatchat).

The matching rules (echo, final results, information text, URCs, stale/late/torn answers, unmatched and overlong
lines) are in the sans-IO `AtChatCore` (link/at_chat_core.py, docs/architecture.md "Timing rules of the line");
this adapter only reads, writes, sleeps until the core's next deadline, calls URC handlers and emits the core's
trace events. Its one I/O rule: a command line is written whole, shielded from the caller's cancel for at most
`send_bound` seconds (a bound that runs out is reported to the core as a held, maybe torn, line).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable

import trio

from bipsim.link.at_chat_core import (
    NUMERIC_FINALS,
    RESYNC_QUIET,
    SEND_BOUND,
    Answered,
    AtChatCore,
    AtResponse,
    ChatEvent,
    Command,
    Failed,
    Traced,
    UrcLine,
    Write,
    is_final,
)
from bipsim.trace.events import Actor, Layer
from bipsim.trace.recorder import NULL_TRACER, Tracer

__all__ = ["NUMERIC_FINALS", "AtChat", "AtResponse", "AtTimeout", "UrcHandler", "is_final"]

UrcHandler = Callable[[str], Awaitable[None] | None]


class AtTimeout(Exception):
    """No final result within the command's timeout (or its line could not be written)."""


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
        self.core = AtChatCore(resync_quiet=resync_quiet)
        self._urc: dict[str, UrcHandler] = {}
        self._lock = (
            trio.Lock()
        )  # callers queue here: one command in the core at a time, first come first served
        self._changed = trio.Event()  # set whenever the core produced events
        self._write: bytes | None = None  # what the core asked the command's task to write
        self._outcomes: dict[Command, Answered | Failed] = {}
        self._nursery: trio.Nursery | None = None
        dlci = getattr(stream, "dlci", None)
        self._fields = {"dlci": dlci} if isinstance(dlci, int) else {}

    @property
    def response_steps(self) -> dict[str, str]:
        """Response line prefix -> patent step label of the next such line answering a command (set by callers)."""
        return self.core.response_steps

    @property
    def unsolicited(self) -> tuple[str, ...]:
        """Always empty: a line no command or URC handler takes is dropped at once with a trace event, not kept
        (kept for callers that read it)."""
        return ()

    def add_urc_handler(self, prefix: str, handler: UrcHandler) -> None:
        if prefix not in self._urc:  # the first handler of a prefix gets its lines
            self._urc[prefix] = handler
            self.core.urc_prefixes.append(prefix)

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
                    self.core.receive_data(data, trio.current_time())
                    self._apply()
            finally:
                self.core.receive_eof(trio.current_time())
                self._apply()

    def _apply(self) -> None:
        """Carries out the core's events: trace, URC handlers, the write it asks for; wakes the command's task."""
        events: list[ChatEvent] = self.core.events()
        for event in events:
            if isinstance(event, Traced):
                src, dst = (self.remote, self.local) if event.incoming else (self.local, self.remote)
                fields = {**self._fields, **(event.fields or {})} or None
                self.tracer.emit(
                    src,
                    dst,
                    Layer.AT,
                    event.summary,
                    event.data,
                    step=event.step,
                    error=event.error,
                    kind=event.kind,
                    fields=fields,
                )
            elif isinstance(event, UrcLine):
                result = self._urc[event.prefix](event.line)
                if inspect.isawaitable(result):
                    assert self._nursery is not None, "an async URC handler needs run()"
                    self._nursery.start_soon(_await, result)
            elif isinstance(event, Write):
                self._write = event.data
            else:
                self._outcomes[event.command] = event
        if events:
            self._changed.set()
            self._changed = trio.Event()

    async def command(
        self, line: str, *, timeout: float | None = None, step: str | None = None
    ) -> AtResponse:
        """Sends `line` (without CR) and returns its response; raises AtTimeout. The timeout covers waiting out
        a stale command's late answer and then this command's own answer, not the write (see `send_bound`)."""
        async with self._lock:
            now = trio.current_time()
            command = self.core.command(line, now, self.timeout if timeout is None else timeout, step)
            try:
                outcome = await self._drive(command)
            except BaseException:
                self._outcomes.pop(command, None)
                if not command.done:  # cancelled by the caller: the core decides what is owed
                    self._write = None
                    self.core.cancel(trio.current_time())
                    self._apply()
                raise
        if isinstance(outcome, Failed):
            await trio.lowlevel.checkpoint_if_cancelled()  # a caller's cancel wins over our timeout
            raise AtTimeout(outcome.reason)
        return outcome.response

    async def _drive(self, command: Command) -> Answered | Failed:
        """Writes what the core asks for and sleeps until its next deadline or event, until `command` is done."""
        while True:
            self._apply()
            outcome = self._outcomes.pop(command, None)
            if outcome is not None:
                return outcome
            if self._write is not None:
                data, self._write = self._write, None
                await self._send(data)
                continue
            changed, deadline = self._changed, self.core.deadline
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await changed.wait()
            self.core.expire(trio.current_time())

    async def _send(self, data: bytes) -> None:
        """Writes `data` whole: shielded from the caller's cancel so no half line is left on the wire, and bounded
        so a held line cannot hang us. Reports the outcome to the core before any checkpoint."""
        try:
            with trio.CancelScope(deadline=trio.current_time() + self.send_bound, shield=True) as scope:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # the line or DLC went away under the command: the DCE's answer is NO CARRIER, never a raise
            self.core.gone(trio.current_time(), type(exc).__name__)
        else:
            if scope.cancelled_caught:
                self.core.send_held(trio.current_time())
            else:
                self.core.sent(trio.current_time())


async def _await(result: Awaitable[None]) -> None:
    await result
