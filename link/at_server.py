"""The V.250 DCE: serves AT command lines on any trio Stream (a serial line or a CMUX DLC).

Handlers are registered by command name and return information text lines; the server adds the final result.
E (echo), V (verbose), Q (quiet), Z / &F (defaults), S3/S4/S5 and +CMEE (3GPP TS 27.007 section 9.1: 0 "ERROR",
1 numeric, 2 verbose "+CME ERROR") are handled here for every server. Unknown commands get ERROR; a handler raising
CmeError gets "+CME ERROR: <n>" per +CMEE (a final result code: ATQ1 suppresses it, V.250 section 6.2.5); any other
exception from a handler is a bug answered +CME ERROR: 100 (unknown) with an error trace event. A bad line never
ends the server; a stream that went away (end of file, or an answer or URC that can no longer be written) ends it
quietly with a trace event.

Settings (E, V, Q, +CMEE, S3, S4, S5) belong to one server, i.e. one channel: `settings` reads and sets them as
an AtSettings, so that a CMUX DLC can start from the line's profile (27.007 practice) and the line keeps its own.
A handler that stops the server (`stop_after_response`, +CMUX) leaves in `leftover` the raw bytes that arrived
behind its command line, for whoever takes the stream over.

A handler may take a text entry (3GPP TS 27.005 section 3.5.1: the `> ` prompt, text up to Ctrl-Z, ESC cancels)
with `read_text`, and end its command with +CMS ERROR by raising CmsError.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from bipsim.link.at_syntax import (
    DIGITS,
    MAX_LINE,
    AtRequest,
    AtSyntaxError,
    CommandKind,
    Formatter,
    LineAssembler,
    OverlongLine,
    command_fields,
    parse_line,
)
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer

Handler = Callable[[AtRequest], Awaitable[list[str] | None]]
MAX_HELD_URCS = 64  # URCs kept for command mode while a data call owns the line; older ones are dropped

CME_TEXT = {
    0: "phone failure",
    1: "no connection to phone",
    3: "operation not allowed",
    4: "operation not supported",
    5: "PH-SIM PIN required",
    10: "SIM not inserted",
    11: "SIM PIN required",
    13: "SIM failure",
    14: "SIM busy",
    16: "incorrect password",
    17: "SIM PIN2 required",
    18: "SIM PUK2 required",
    20: "memory full",
    21: "invalid index",
    22: "not found",
    23: "memory failure",
    24: "text string too long",
    25: "invalid characters in text string",
    26: "dial string too long",
    27: "invalid characters in dial string",
    30: "no network service",
    31: "network timeout",
    32: "network not allowed - emergency calls only",
    50: "incorrect parameters",
    100: "unknown",
    148: "unspecified GPRS error",
    149: "PDP authentication failure",
    533: "missing or unknown APN",
}


class CmeError(Exception):
    """Ends the command line with +CME ERROR: <code> (or plain ERROR under +CMEE=0)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"+CME ERROR: {code} ({CME_TEXT.get(code, 'unknown')})")
        self.code = code


class AtCommandError(Exception):
    """Ends the command line with ERROR."""


class ResultCode(Exception):
    """Ends the command line with a final result code other than OK and ERROR (V.250 section 5.7.2): NO CARRIER,
    BUSY, NO ANSWER... e.g. ATO with no data call to return to, ATD<n>; to a busy number."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class CmsError(Exception):
    """Ends the command line with +CMS ERROR: <code>, the final result of the message service commands (3GPP TS
    27.005 section 3.2.5). It is numeric whatever +CMEE says: 27.005 ties it to no setting."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"+CMS ERROR: {code}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class TextEntry:
    """What the DTE typed after the `> ` prompt of 27.005 section 3.5.1 (+CMGS, +CMGW, +CNMA): `text` up to
    Ctrl-Z, `cancelled` when ESC ended it (or the stream did), `overflow` when it ran past the limit (the part
    past it is not kept)."""

    text: bytes
    cancelled: bool = False
    overflow: bool = False


@dataclass(frozen=True)
class _Part:
    """One traced piece of a write: its bytes and its trace event's kind, summary and fields."""

    data: bytes
    kind: Kind
    summary: str
    error: bool = False
    step: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AtSettings:
    """One channel's V.250 / 27.007 settings profile."""

    echo: bool = True
    verbose: bool = True
    quiet: bool = False
    cmee: int = 0
    s3: int = 13
    s4: int = 10
    s5: int = 8
    # V.250 6.3.8 / 6.2.8 / 6.2.9 / 6.2.5, 6.3.12-6.3.13 / 6.2.11-6.2.10 and the other S-registers (6.3.x): kept,
    # reported and stored (&W) per channel; what the simulated line does with them is in docs/protocols.md
    s0: int = 0  # rings before the ME answers an incoming call itself (0: never)
    s6: int = 2
    s7: int = 50
    s8: int = 2
    s10: int = 14
    s12: int = 50  # the escape guard time of a data call's "+++", in fiftieths of a second (cp/data_mode.py)
    dcd: int = 1  # &C: 0 DCD always on, 1 DCD follows the data carrier
    dtr: int = 2  # &D: 0 ignore DTR, 1 to command mode, 2 hang up the data call
    x_level: int = 4  # X: result codes reported
    ifc: tuple[int, int] = (2, 2)  # +IFC: flow control DCE by DTE, DTE by DCE (2: RTS/CTS)
    icf: tuple[int, int] = (3, 3)  # +ICF: 8 data bits, 1 stop bit, no parity
    ipr: int = 115200  # +IPR: the rate the DCE reports (0: autobaud)


class AtServer:
    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        tracer: Tracer = NULL_TRACER,
        local: Actor = Actor.CP,
        remote: Actor = Actor.AP,
        echo: bool = True,
    ) -> None:
        self.stream = stream
        self.tracer = tracer
        self.local, self.remote = local, remote
        self.default_echo = echo
        self.handlers: dict[str, Handler] = {}
        self.assembler = LineAssembler()
        self.cmee = 0
        self.echo = echo
        self.format = Formatter()
        self._line = AtSettings()  # the settings that are not the formatter's or the assembler's
        self._write_lock = trio.Lock()
        self._stop = False
        self.gone = False  # the stream went away under a write: run() ends as on end of file
        self.reset_hooks: list[Callable[[], None]] = []
        # a handler may name the patent step its answer is: the next response lines carry it
        self.answer_step: str | None = None
        # after a stop: bytes read past the S3 of the command line that stopped the server
        self.leftover = b""
        # bytes read past the command line being executed: a text entry (read_text) takes them first
        self._unread = b""
        self._text_taken = False
        self._after: list[Callable[[], Awaitable[None]]] = []
        self.online_data = False  # a data call owns the stream (take_over): URCs are held in held_urcs
        self.held_urcs: list[str] = []
        # told each command before it runs (the CP's line service tells our AP's handshake from a standard host)
        self.command_listeners: list[Callable[[AtRequest], None]] = []
        dlci = getattr(stream, "dlci", None)
        self._fields: dict[str, Any] = {"dlci": dlci} if isinstance(dlci, int) else {}

    @property
    def settings(self) -> AtSettings:
        return replace(
            self._line,
            echo=self.echo,
            verbose=self.format.verbose,
            quiet=self.format.quiet,
            cmee=self.cmee,
            s3=self.format.s3,
            s4=self.format.s4,
            s5=self.assembler.s5,
        )

    @settings.setter
    def settings(self, value: AtSettings) -> None:
        self._line = value
        self.echo, self.cmee = value.echo, value.cmee
        self.format.verbose, self.format.quiet = value.verbose, value.quiet
        self.format.s3 = self.assembler.s3 = value.s3
        self.format.s4, self.assembler.s5 = value.s4, value.s5

    def register(self, name: str, handler: Handler) -> None:
        self.handlers[name.upper()] = handler

    def stop_after_response(self) -> None:
        self._stop = True

    def after_response(self, job: Callable[[], Awaitable[None]]) -> None:
        """Runs `job` once the command line's final result is written (27.005 +CNMI: the OK comes before the
        indications it releases)."""
        self._after.append(job)

    def reset(self) -> None:
        """Z / &F: factory settings (echo on, verbose, not quiet, +CMEE=0)."""
        self.echo = self.default_echo
        self.format = Formatter()
        self.cmee = 0
        self.assembler.s3, self.assembler.s5 = 13, 8
        self._line = AtSettings()
        for hook in self.reset_hooks:
            hook()

    def _trace(
        self,
        incoming: bool,
        kind: Kind,
        summary: str,
        data: bytes | None = None,
        *,
        error: bool = False,
        step: str | None = None,
        **fields: Any,
    ) -> None:
        src, dst = (self.remote, self.local) if incoming else (self.local, self.remote)
        all_fields = {**self._fields, **fields} or None
        self.tracer.emit(
            src, dst, Layer.AT, summary, data, error=error, step=step, kind=kind, fields=all_fields
        )

    async def _write(
        self,
        data: bytes,
        kind: Kind,
        summary: str,
        *,
        error: bool = False,
        step: str | None = None,
        **fields: Any,
    ) -> None:
        await self._write_parts([_Part(data, kind, summary, error, step, fields)])

    async def _write_parts(self, parts: list[_Part]) -> None:
        """Writes the parts in one write (one CMUX frame, one pty write), each traced as its own event."""
        parts = [part for part in parts if part.data]
        if not parts or self.gone:
            return
        # a free lock is taken without a schedule point: the stream's send_all is this write's checkpoint, and a
        # yield before it would hold every answer back one turn of the event loop (docs/performance.md, "MO SMS
        # through +CMGS")
        try:
            self._write_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._write_lock.acquire()
        try:
            if self.tracer is not NULL_TRACER:
                for part in parts:
                    self._trace(
                        False,
                        part.kind,
                        part.summary,
                        part.data,
                        error=part.error,
                        step=part.step,
                        **part.fields,
                    )
            try:
                await self.stream.send_all(b"".join(part.data for part in parts))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # the peer hung up or the DLC closed: nobody is left to answer, like an end of file
                self.gone = True
                self._trace(False, Kind.AT_ERROR, f"stream went away ({type(exc).__name__})", error=True)
        finally:
            self._write_lock.release()

    async def _final(
        self, text: str, summary: str, line: str, *, step: str | None = None, held: list[_Part] | None = None
    ) -> None:
        """A final result code (V.250 section 5.7.2, 27.007 9.2): written unless quiet (Q1), traced either way.
        `held` information text goes out in the same write (a whole answer is one burst, as a modem sends it: on
        CMUX one frame instead of one per line)."""
        error = text not in ("OK", "CONNECT")
        if self.format.quiet:  # nothing written: the trace still says how the line ended
            await self._write_parts(held or [])
            self._trace(False, Kind.AT_FINAL, f"{summary} (quiet)", error=error, result=text, quiet=True)
            return
        info = text.startswith(("+CME ERROR", "+CMS ERROR"))
        data = self.format.info(text) if info else self.format.result(text)
        # the trace's fields only when something records them (parsing the line again costs per answer)
        fields = {"result": text, **command_fields(line)} if self.tracer is not NULL_TRACER else {}
        await self._write_parts([*(held or []), _Part(data, Kind.AT_FINAL, summary, error, step, fields)])

    async def send_urc(self, line: str) -> None:
        if self.online_data:  # the line carries a data call's bytes: URCs wait for command mode
            self.held_urcs.append(line)
            if len(self.held_urcs) > MAX_HELD_URCS:
                # a call online for hours must not grow the modem without bound: the oldest goes, traced
                dropped = self.held_urcs.pop(0)
                self._trace(
                    False,
                    Kind.AT_URC,
                    f"URC dropped while online (over {MAX_HELD_URCS} held): {dropped}",
                    error=True,
                    dropped=dropped,
                )
            return
        await self._write(self.format.info(line), Kind.AT_URC, line)

    async def send_result(self, text: str) -> None:
        """A final result code outside a command's answer: OK when a data call's +++ returned to command mode,
        NO CARRIER when the call ended (V.250 6.3.1, 5.7.2); then the URCs held while the line was online."""
        await self._final(text, text, "")
        held, self.held_urcs = self.held_urcs, []
        for line in held:
            await self.send_urc(line)

    def take_over(self) -> bytes:
        """For a job run after its command's answer that reads the stream itself (a data call's online state): the
        bytes that arrived behind the command line, now the job's. While the job sets `online_data`, URCs are
        held for `send_result`."""
        self._text_taken = True
        pending, self._unread = self._unread, b""
        return pending

    async def run(self) -> None:
        """Serves until end of file, a write to a stream that went away, or a handler asking to stop after its
        response. Never raises for the stream going away."""
        self._stop = False
        self.leftover = b""
        while not self._stop and not self.gone:
            try:
                data = await self.stream.receive_some(4096)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            pos = 0
            while pos < len(data):
                # one line at a time, echo included: what follows a line that stops the server is not ours
                line, pos = self.assembler.feed_line(data, pos)
                if self.echo and self.assembler.echo:
                    await self._write(bytes(self.assembler.echo), Kind.AT_ECHO, "echo")
                if line is None or self.gone:
                    break
                if isinstance(line, OverlongLine):
                    await self._overlong(line)
                    continue
                if self.tracer is not NULL_TRACER:
                    self._trace(
                        True,
                        Kind.AT_COMMAND,
                        line.strip(),
                        line.encode("latin-1") + b"\r",
                        **command_fields(line),
                    )
                self._unread, self._text_taken = bytes(data[pos:]), False
                await self.execute(line)
                while self._after and not self.gone:
                    await self._after.pop(0)()
                self._after.clear()
                if self._text_taken:  # a text entry read on: go on with what followed its Ctrl-Z/ESC
                    data, pos = self._unread, 0
                self._unread = b""
                if self._stop or self.gone:
                    self.leftover = bytes(data[pos:])
                    return

    async def read_text(self, *, limit: int = MAX_LINE) -> TextEntry:
        """The text entry of 3GPP TS 27.005 section 3.5.1, for a handler: writes the prompt (S3, S4, `> `), then
        takes characters up to Ctrl-Z (0x1A, the text ends) or ESC (0x1B, cancelled). Bytes that came behind the
        command line are the text's first; bytes behind the Ctrl-Z/ESC are command lines again. The text is
        traced (at.text) and not echoed, whatever ATE says (V.250 echo is of command lines; oFono's parser takes an
        echoed PDU for an answer line and then misses the next unsolicited PDU). At most `limit` characters are
        kept."""
        self._text_taken = True
        prompt = bytes((self.format.s3, self.format.s4)) + b"> "
        await self._write(prompt, Kind.AT_INFO, "> (text entry)", prompt=True)
        text = bytearray()
        overflow = False
        pending = self._unread
        self._unread = b""
        while True:
            ends = [i for i in (pending.find(b"\x1a"), pending.find(b"\x1b")) if i >= 0]
            cut = min(ends) if ends else len(pending)
            part = pending[:cut]
            room = limit - len(text)
            overflow = overflow or len(part) > room
            text += part[: max(room, 0)]
            if ends:
                cancelled = pending[cut] == 0x1B
                self._unread = pending[cut + 1 :]
                break
            try:
                pending = bytes(await self.stream.receive_some(4096)) if not self.gone else b""
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pending = b""
            if not pending:  # the stream ended inside the text: nothing is sent for it
                self.gone = True
                cancelled = True
                break
        entry = TextEntry(bytes(text), cancelled=cancelled, overflow=overflow)
        summary = "text entry cancelled (ESC)" if cancelled else f"text entry ({len(text)} characters)"
        self._trace(True, Kind.AT_TEXT, summary, entry.text, cancelled=cancelled, overflow=overflow)
        return entry

    async def _overlong(self, line: OverlongLine) -> None:
        """A command line longer than MAX_LINE: not executed; ERROR if it was one (V.250 ignores other lines)."""
        summary = f"command line too long ({line.length} characters, at most {MAX_LINE})"
        self._trace(True, Kind.AT_ERROR, summary, line[:80].encode("latin-1"), error=True, length=line.length)
        if line.lstrip()[:2].upper() == "AT":
            await self._final("ERROR", "ERROR (line too long)", line[:80])

    async def execute(self, line: str) -> None:
        try:
            requests = parse_line(line)
        except AtSyntaxError:
            if line.strip()[:2].upper() != "AT":
                return  # not a command line: V.250 ignores it
            await self._final("ERROR", "ERROR (syntax)", line)
            return
        self.answer_step = None
        held: list[_Part] = []
        for index, request in enumerate(requests):
            if self.gone:  # the rest of a concatenated line is not executed for nobody
                return
            try:
                lines = await self._dispatch(request)
            except CmeError as exc:
                if self.cmee == 0:
                    text = "ERROR"
                elif self.cmee == 1:
                    text = f"+CME ERROR: {exc.code}"
                else:
                    text = f"+CME ERROR: {CME_TEXT.get(exc.code, 'unknown')}"
                # +CME ERROR is a final result code too: quiet (Q1) suppresses it like ERROR
                await self._final(text, text, line)
                return
            except AtCommandError:
                await self._final("ERROR", f"ERROR ({request.raw})", line)
                return
            except CmsError as exc:
                await self._final(f"+CMS ERROR: {exc.code}", f"+CMS ERROR: {exc.code}", line)
                return
            except ResultCode as exc:
                await self._final(exc.text, exc.text, line)
                return
            fields = command_fields("AT" + request.raw) if self.tracer is not NULL_TRACER else {}
            answer = [
                _Part(self.format.info(text), Kind.AT_INFO, text, False, self.answer_step, fields)
                for text in lines or []
            ]
            if index == len(requests) - 1:
                held = answer  # the last command's lines go with the final result
            else:
                await self._write_parts(answer)
        await self._final("OK", "OK", line, step=self.answer_step, held=held)
        self.answer_step = None

    async def _dispatch(self, request: AtRequest) -> list[str] | None:
        name, kind = request.name, request.kind
        for listener in self.command_listeners:
            listener(request)
        handler = self.handlers.get(name)
        if name in ("E", "V", "Q") and handler is None:
            value = request.args[0] if request.args else 0
            if kind is CommandKind.READ or value not in (0, 1):
                raise AtCommandError()
            if name == "E":
                self.echo = bool(value)
            elif name == "V":
                self.format.verbose = bool(value)
            else:
                self.format.quiet = bool(value)
            return None
        if name in ("Z", "&F") and handler is None:
            self.reset()
            return None
        if name.startswith("S") and name[1:] and set(name[1:]) <= DIGITS:
            return self._s_register(request)
        if name == "+CMEE" and handler is None:
            if kind is CommandKind.TEST:
                return ["+CMEE: (0-2)"]
            if kind is CommandKind.READ:
                return [f"+CMEE: {self.cmee}"]
            value = request.args[0] if request.args else 0
            if value not in (0, 1, 2):
                raise CmeError(50)
            self.cmee = int(value)
            return None
        if handler is None:
            raise AtCommandError()
        try:
            return await handler(request)
        except (CmeError, CmsError, AtCommandError, ResultCode):
            raise
        except Exception as exc:
            # a handler bug must not end the line service: the DTE gets an error, the trace says what happened
            problem = f"{type(exc).__name__}: {exc}"
            self.tracer.emit(
                self.local,
                self.remote,
                Layer.AT,
                f"handler of {request.raw} failed: {problem}",
                request.raw.encode("latin-1", errors="replace"),
                error=True,
                kind=Kind.APP_ERROR,
                fields={**self._fields, "where": "AT handler", "error": problem, "command": request.name},
            )
            raise CmeError(100) from exc

    def _s_register(self, request: AtRequest) -> list[str] | None:
        number = int(request.name[1:])
        registers = {0: "s0", 3: "s3", 4: "s4", 5: "s5", 6: "s6", 7: "s7", 8: "s8", 10: "s10", 12: "s12"}
        if number not in registers:
            raise AtCommandError()
        if request.kind is CommandKind.READ:
            current = getattr(self.settings, registers[number])
            return [f"{current:03d}"]
        value = request.args[0] if request.args else None
        # V.250 6.2.1-6.3.x ranges: S0 0-255, S3/S4/S5 0-127, S6 2-10, S7 1-255, S8 0-255, S10 1-254
        low, high = {0: (0, 255), 6: (2, 10), 7: (1, 255), 8: (0, 255), 10: (1, 254), 12: (0, 255)}.get(
            number, (0, 127)
        )
        if not isinstance(value, int) or not low <= value <= high:
            raise AtCommandError()
        if number not in (3, 4, 5):
            changes: dict[str, Any] = {registers[number]: value}
            self._line = replace(self._line, **changes)
        elif number == 3:
            self.format.s3 = self.assembler.s3 = value
        elif number == 4:
            self.format.s4 = value
        else:
            self.assembler.s5 = value
        return None
