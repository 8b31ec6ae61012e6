"""The V.250 DTE's matching rules, sans-IO: which command an answer line belongs to.

V.250 (section 5.7) answers carry no tag, so command and answer are matched by order alone; the rules below keep
that order (docs/architecture.md, "Timing rules of the line"). The core takes bytes read from the DCE, the outcome
of each write, and timer expiries in as calls (every call is given the time `now`), and returns events: bytes to
write, trace events, URC lines, a command's answer or failure. It never sleeps, reads or writes; `AtChat`
(link/at_chat.py) is its trio adapter. The model is oFono's gatchat (a DTE chat engine over a syntax scanner).

- One command at a time (callers queue on the adapter's lock); a command that arrives while the line is not in
  step (a stale or torn command before it) is held here until it is.
- Lines: a line starting with a registered URC prefix is an unsolicited result code (27.007 section 3), except
  when the command in progress answers with that prefix (AT+CEREG? answers "+CEREG: ..."); a line equal to the
  command line is the DCE's echo (V.250 E1); OK, ERROR, +CME ERROR / +CMS ERROR (27.007 9.2, 27.005 3.2.5) and the
  other final result codes, verbose or numeric, end the command; anything else is information text.
- A line with no command to belong to and no URC handler is dropped at once with a trace event (never kept).
- A line longer than MAX_LINE (link/at_syntax.py) is dropped with an at.error event.
- A command line is written whole or known not to be: when the write's bound runs out the line may be torn, and
  the next command first writes S3 alone so that the DCE ends the fragment (and answers it, usually ERROR).
- A command ended without its final result (timeout, cancel, torn line) is *stale*: until its final arrives, or
  the DCE has said nothing more for `resync_quiet` seconds, every line that is not a URC is its late answer,
  dropped with an at.error event. The next command waits for that, at most half of its own timeout.

The state machine is `TABLE`: (state, input) -> (next state, action). Any pair not in it raises ChatStateError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from bipsim.link.at_syntax import (
    FINAL_RESULTS,
    MAX_LINE,
    OverlongLine,
    ResponseSplitter,
    command_fields,
    prefix_of,
)
from bipsim.trace.kinds import Kind

NUMERIC_FINALS = {
    "0": "OK",
    "1": "CONNECT",
    "3": "NO CARRIER",
    "4": "ERROR",
    "6": "NO DIALTONE",
    "7": "BUSY",
    "8": "NO ANSWER",
}
# Why these rules (facts read in oFono gatchat/gatchat.c and ModemManager src/mm-port-serial.c):
# - oFono never cuts a command line: g_at_chat_cancel() on a command whose bytes are already partly written
#   only nulls its callback; the writer finishes the line and the command stays at the head of the queue,
#   swallowing its own final, before the next command is written. The adapter does the same with a shielded write.
# - ModemManager bounds a write (about 3 s of EAGAIN, then "send failed" and a timed-out signal) and only
#   arms cancellation and the response timeout once the command is fully sent. Its port_serial_timed_out()
#   carries a FIXME: a late response "will get" attributed to the next command waiting. The stale rule
#   is the fix for that: hold the timed-out command until its final or a quiet spell.
SEND_BOUND = 3.0  # seconds a command line may take to leave (ModemManager's EAGAIN budget)
RESYNC_QUIET = 5.0  # seconds of silence about a stale command after which its answer is deemed lost
# lines a DCE sends unasked that are result codes (V.250 RING, a dropped connection's NO CARRIER), besides the
# "+NAME:" / "%NAME:" form of 27.007 and vendor URCs
_UNSOLICITED_CODES = ("RING", "NO CARRIER")


def is_final(line: str) -> bool:
    return line in FINAL_RESULTS or line.startswith(("+CME ERROR:", "+CMS ERROR:")) or line in NUMERIC_FINALS


def _error_code(final: str, prefix: str) -> int | None:
    if not final.startswith(prefix):
        return None
    try:
        return int(final[len(prefix) :].strip())
    except ValueError:
        return -1  # verbose form (+CMEE=2): no number


class ChatError(StrEnum):
    """Why the chat wrote an at.error event (its `reason` field)."""

    TORN = "torn"  # a command line not written whole within the write's bound; S3 ends it
    GONE = "gone"  # the stream went away under a command
    UNMATCHED = "unmatched"  # a line no command and no URC handler takes, dropped
    OVERLONG = "overlong"  # a line past the maximum length, dropped
    TIMEOUT = "timeout"  # no final result within the command's timeout
    LATE = "late"  # a line of a timed-out or cancelled command's answer, given to nobody
    QUIET = "quiet"  # the stale command's window closed without a late answer
    GIVE_UP = "give_up"  # a held command goes ahead with half its timeout
    HELD = "held"  # a command not sent: the line is still held by a torn one
    ENDED = "ended"  # a command not sent: the stream has ended


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


@dataclass(eq=False)
class Command:
    """One command line and what is known of its answer. `done` once its answer or failure was given out."""

    line: str
    deadline: float  # when its answer is due, counting from when it was handed in (the write's time is added)
    step: str | None = None
    give_up: float = 0.0  # while held behind a stale command: when it goes ahead anyway
    write_at: float = 0.0  # when its line was handed out for writing
    answer_deadline: float = 0.0
    lines: list[str] = field(default_factory=list)
    final: str = ""
    done: bool = False


# --- events out -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """Bytes to write to the DCE, whole; report the outcome with sent(), send_held() or gone()."""

    data: bytes


@dataclass(frozen=True)
class Traced:
    """A trace event: `incoming` from the DCE (remote) to us, else ours to the DCE."""

    incoming: bool
    kind: Kind
    summary: str
    data: bytes | None = None
    error: bool = False
    step: str | None = None
    fields: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class UrcLine:
    """An unsolicited result code for the handler registered with `prefix`."""

    line: str
    prefix: str


@dataclass(frozen=True)
class Answered:
    """A command's answer is complete (its final result, or NO CARRIER when the stream went away)."""

    command: Command
    response: AtResponse


@dataclass(frozen=True)
class Failed:
    """A command ended without its answer: timed out, or its line could not be written."""

    command: Command
    reason: str


ChatEvent = Write | Traced | UrcLine | Answered | Failed


# --- the state machine ------------------------------------------------------------------------------------------


class ChatState(Enum):
    IDLE = "idle"  # the line is in step, no command in progress
    SENDING = "sending"  # a command line handed out for writing
    ANSWERED_SENDING = "answered_sending"  # its final arrived before the write was reported done
    WAITING = "waiting"  # the line is out, its answer being collected
    STALE = "stale"  # a command ended without its final: lines not URCs are its late answer
    TORN = "torn"  # a command line may be on the wire without its S3
    ENDING_TORN = "ending_torn"  # the S3 that ends a torn line handed out for writing
    CLOSED = "closed"  # the stream ended: every command is answered NO CARRIER


class ChatInput(Enum):
    COMMAND = "command"  # a command to send
    SENT = "sent"  # the write handed out is done, whole
    SEND_HELD = "send_held"  # the write's bound ran out: part of it may be out
    GONE = "gone"  # the write failed: the stream went away
    CANCEL = "cancel"  # the caller gave up on its command
    ECHO = "echo"  # a line equal to the command line
    INFO = "info"  # a line that is none of the others
    FINAL = "final"  # a final result code
    URC = "urc"  # a line with a registered URC prefix
    OVERLONG = "overlong"  # a line longer than MAX_LINE
    ANSWER_TIMEOUT = "answer_timeout"  # the command's answer is overdue
    QUIET = "quiet"  # the DCE said nothing about the stale command for resync_quiet seconds
    GIVE_UP = "give_up"  # the held command spent half its timeout waiting: it goes ahead
    EOF = "eof"  # the stream ended


class ChatStateError(Exception):
    """An input the state does not accept (a bug in the adapter, not the DCE's doing)."""

    def __init__(self, state: ChatState, event: ChatInput) -> None:
        super().__init__(f"{event.value} is not accepted in state {state.value}")
        self.state, self.event = state, event


S, In = ChatState, ChatInput  # short names: the table reads as a table
# (state, input) -> (next state, action). Everything else is illegal.
TABLE: dict[tuple[ChatState, ChatInput], tuple[ChatState, str]] = {
    (S.IDLE, In.COMMAND): (S.SENDING, "write_command"),
    (S.IDLE, In.INFO): (S.IDLE, "unmatched"),
    (S.IDLE, In.FINAL): (S.IDLE, "unmatched"),
    (S.IDLE, In.URC): (S.IDLE, "urc"),
    (S.IDLE, In.OVERLONG): (S.IDLE, "overlong"),
    (S.IDLE, In.EOF): (S.CLOSED, "closed"),
    (S.SENDING, In.SENT): (S.WAITING, "arm_answer_timer"),
    (S.SENDING, In.SEND_HELD): (S.TORN, "torn"),
    (S.SENDING, In.GONE): (S.IDLE, "gone"),
    (S.SENDING, In.CANCEL): (S.IDLE, "withdraw"),  # before its write started (the write itself is shielded)
    (S.SENDING, In.ECHO): (S.SENDING, "echo"),
    (S.SENDING, In.INFO): (S.SENDING, "info"),
    (S.SENDING, In.FINAL): (S.ANSWERED_SENDING, "final_early"),
    (S.SENDING, In.URC): (S.SENDING, "urc"),
    (S.SENDING, In.OVERLONG): (S.SENDING, "overlong"),
    (S.SENDING, In.EOF): (S.CLOSED, "closed"),
    (S.ANSWERED_SENDING, In.SENT): (S.IDLE, "answer"),
    (S.ANSWERED_SENDING, In.SEND_HELD): (S.IDLE, "answer"),  # the DCE answered: it had the whole line
    (S.ANSWERED_SENDING, In.GONE): (S.IDLE, "answer"),
    (S.ANSWERED_SENDING, In.ECHO): (S.ANSWERED_SENDING, "unmatched"),  # after the final: not the command's
    (S.ANSWERED_SENDING, In.INFO): (S.ANSWERED_SENDING, "unmatched"),
    (S.ANSWERED_SENDING, In.FINAL): (S.ANSWERED_SENDING, "unmatched"),
    (S.ANSWERED_SENDING, In.URC): (S.ANSWERED_SENDING, "urc"),
    (S.ANSWERED_SENDING, In.OVERLONG): (S.ANSWERED_SENDING, "overlong"),
    (S.ANSWERED_SENDING, In.EOF): (S.CLOSED, "closed"),
    (S.WAITING, In.ECHO): (S.WAITING, "echo"),
    (S.WAITING, In.INFO): (S.WAITING, "info"),
    (S.WAITING, In.FINAL): (S.IDLE, "final"),
    (S.WAITING, In.URC): (S.WAITING, "urc"),
    (S.WAITING, In.OVERLONG): (S.WAITING, "overlong"),
    (S.WAITING, In.ANSWER_TIMEOUT): (S.STALE, "timed_out"),
    (S.WAITING, In.CANCEL): (S.STALE, "cancelled"),
    (S.WAITING, In.EOF): (S.CLOSED, "closed"),
    (S.STALE, In.COMMAND): (S.STALE, "hold"),
    (S.STALE, In.CANCEL): (S.STALE, "unhold"),
    (S.STALE, In.ECHO): (S.STALE, "late"),
    (S.STALE, In.INFO): (S.STALE, "late"),
    (S.STALE, In.FINAL): (S.IDLE, "late_final"),
    (S.STALE, In.URC): (S.STALE, "urc"),
    (S.STALE, In.OVERLONG): (S.STALE, "overlong"),
    (S.STALE, In.QUIET): (S.IDLE, "quiet"),
    (S.STALE, In.GIVE_UP): (S.IDLE, "give_up"),
    (S.STALE, In.EOF): (S.CLOSED, "closed"),
    (S.TORN, In.COMMAND): (S.ENDING_TORN, "write_s3"),
    (S.TORN, In.ECHO): (S.TORN, "late"),
    (S.TORN, In.INFO): (S.TORN, "late"),
    (S.TORN, In.FINAL): (S.TORN, "late"),  # the S3 is still owed, whatever the DCE said
    (S.TORN, In.URC): (S.TORN, "urc"),
    (S.TORN, In.OVERLONG): (S.TORN, "overlong"),
    (S.TORN, In.EOF): (S.CLOSED, "closed"),
    (S.ENDING_TORN, In.SENT): (S.STALE, "torn_ended"),
    (S.ENDING_TORN, In.SEND_HELD): (S.TORN, "still_held"),
    (S.ENDING_TORN, In.GONE): (S.TORN, "gone"),
    (S.ENDING_TORN, In.CANCEL): (S.TORN, "withdraw"),
    (S.ENDING_TORN, In.ECHO): (S.ENDING_TORN, "late"),
    (S.ENDING_TORN, In.INFO): (S.ENDING_TORN, "late"),
    (S.ENDING_TORN, In.FINAL): (S.ENDING_TORN, "late"),
    (S.ENDING_TORN, In.URC): (S.ENDING_TORN, "urc"),
    (S.ENDING_TORN, In.OVERLONG): (S.ENDING_TORN, "overlong"),
    (S.ENDING_TORN, In.EOF): (S.CLOSED, "closed"),
    (S.CLOSED, In.COMMAND): (S.CLOSED, "no_carrier"),
    # the stream ended while a write was under way: its outcome no longer matters
    (S.CLOSED, In.SENT): (S.CLOSED, "nothing"),
    (S.CLOSED, In.SEND_HELD): (S.CLOSED, "nothing"),
    (S.CLOSED, In.GONE): (S.CLOSED, "nothing"),
    (S.CLOSED, In.EOF): (S.CLOSED, "nothing"),  # a reader started again on an ended stream
}
# rows that need a held command (the caller who gave up, the command that goes ahead): refused without one
NEEDS_HELD = {(S.STALE, In.CANCEL), (S.STALE, In.GIVE_UP)}
del S, In


class AtChatCore:
    """The DTE chat's state: one command in progress or held, the stale command and its window, the partial
    line. Every input goes through `handle` and `TABLE`; the methods below are its named entry points."""

    def __init__(self, *, resync_quiet: float = RESYNC_QUIET, max_line: int = MAX_LINE) -> None:
        self.resync_quiet = resync_quiet
        self.state = ChatState.IDLE
        self.splitter = ResponseSplitter(max_line)
        self.urc_prefixes: list[str] = []
        # response line prefix -> patent step label of the next such line answering a command (set by callers)
        self.response_steps: dict[str, str] = {}
        self.current: Command | None = None  # the command being written or answered
        self.held: Command | None = None  # a command waiting for the line to be in step
        self.stale: Command | None = None  # the command whose late answer is dropped (also a torn one)
        self.stale_until = 0.0
        self._events: list[ChatEvent] = []
        self._line = ""
        self._now = 0.0

    # --- entry points ---------------------------------------------------------------------------------------

    def command(self, line: str, now: float, timeout: float, step: str | None = None) -> Command:
        """Hands in a command line (without CR); its answer, failure or Write comes out of `events()`."""
        command = Command(line, now + timeout, step)
        self.handle(ChatInput.COMMAND, now, command=command)
        return command

    def receive_data(self, data: bytes | bytearray, now: float) -> None:
        """Bytes read from the DCE. Overdue timers fire first: a line after a window closed is not in it."""
        self.expire(now)
        for line in self.splitter.feed(data):
            self.handle(self.classify(line), now, line=line)

    def receive_eof(self, now: float) -> None:
        self.handle(ChatInput.EOF, now)

    def sent(self, now: float) -> None:
        self.handle(ChatInput.SENT, now)

    def send_held(self, now: float) -> None:
        self.handle(ChatInput.SEND_HELD, now)

    def gone(self, now: float, reason: str) -> None:
        self.handle(ChatInput.GONE, now, line=reason)

    def cancel(self, now: float) -> None:
        self.handle(ChatInput.CANCEL, now)

    @property
    def deadline(self) -> float | None:
        """When `expire` next has something to do (None: no timer runs)."""
        if self.state is ChatState.WAITING and self.current is not None:
            return self.current.answer_deadline
        if self.state is ChatState.STALE:
            return min(self.stale_until, self.held.give_up) if self.held else self.stale_until
        return None

    def expire(self, now: float) -> None:
        """Fires the timer that is due at `now`, if any: the stale window first, then a held command's budget."""
        if self.state is ChatState.STALE and now >= self.stale_until:
            self.handle(ChatInput.QUIET, now)
        elif self.state is ChatState.STALE and self.held is not None and now >= self.held.give_up:
            self.handle(ChatInput.GIVE_UP, now)
        elif self.state is ChatState.WAITING and self.current and now >= self.current.answer_deadline:
            self.handle(ChatInput.ANSWER_TIMEOUT, now)

    def events(self) -> list[ChatEvent]:
        """The events produced since the last call, in order."""
        out, self._events = self._events, []
        return out

    def classify(self, line: str) -> ChatInput:
        """What a line read from the DCE is, given the command it may belong to."""
        if isinstance(line, OverlongLine):
            return ChatInput.OVERLONG
        owner = self.current or self.stale
        for prefix in self.urc_prefixes:
            if line.startswith(prefix) and not (owner and prefix_of(owner.line) == prefix.rstrip(":")):
                return ChatInput.URC
        if owner is not None and line == owner.line.strip():
            return ChatInput.ECHO
        return ChatInput.FINAL if is_final(line) else ChatInput.INFO

    def handle(self, event: ChatInput, now: float, *, line: str = "", command: Command | None = None) -> None:
        """The one way the state changes. Raises ChatStateError for an input the state does not accept."""
        row = TABLE.get((self.state, event))
        if row is None or ((self.state, event) in NEEDS_HELD and self.held is None):
            raise ChatStateError(self.state, event)
        if command is not None:
            if self.held is not None:  # one command at a time: the adapter queues the others
                raise ChatStateError(self.state, event)
            self.held = command  # a new command waits here until the action takes it
        self._now, self._line = now, line
        self.state, action = row
        getattr(self, "_" + action)()
        if self.state is ChatState.IDLE and self.held is not None:
            self.handle(ChatInput.COMMAND, now)  # the line is in step again: the held command goes

    # --- actions ----------------------------------------------------------------------------------------------

    def _emit(self, event: ChatEvent) -> None:
        self._events.append(event)

    def _trace_in(self, kind: Kind, summary: str, *, error: bool = False, **fields: Any) -> None:
        data = self._line.encode("latin-1") + b"\r\n"
        step = None
        if kind in (Kind.AT_INFO, Kind.AT_FINAL, Kind.AT_ECHO) and self.current is not None:
            step = self.response_steps.pop(self._line.split(":")[0], None)
        self._emit(Traced(True, kind, summary, data, error, step, fields or None))

    def _trace_error(
        self,
        reason: ChatError,
        summary: str,
        *,
        incoming: bool = False,
        data: bytes | None = None,
        **fields: Any,
    ) -> None:
        """An at.error event; `reason` (fields.reason) says which rule applied, for tools and tests."""
        self._emit(
            Traced(incoming, Kind.AT_ERROR, summary, data, True, fields={"reason": reason.value, **fields})
        )

    def _finish(self, command: Command, outcome: Answered | Failed) -> None:
        command.done = True
        self._emit(outcome)

    def _write_command(self) -> None:
        command, self.held = self.held, None
        assert command is not None
        self.current = command
        command.write_at = self._now
        data = command.line.encode("latin-1") + b"\r"
        self._emit(
            Traced(
                False,
                Kind.AT_COMMAND,
                command.line,
                data,
                step=command.step,
                fields=command_fields(command.line),
            )
        )
        self._emit(Write(data))

    def _arm_answer_timer(self) -> None:
        assert self.current is not None
        # the write's own time is not the DCE's: the answer timer starts once the line is out (as in MM)
        self.current.answer_deadline = self.current.deadline + self._now - self.current.write_at

    def _torn(self) -> None:
        command, self.current = self.current, None
        assert command is not None
        self.stale = command
        self._trace_error(
            ChatError.TORN,
            f"{command.line}: not sent within the write's bound (line held); S3 will end it",
            command=command.line,
        )
        self._finish(command, Failed(command, f"could not send {command.line!r}"))

    def _gone(self) -> None:
        command = self.current or self.held
        self.current = self.held = None
        assert command is not None
        self._trace_error(
            ChatError.GONE, f"{command.line}: stream went away ({self._line})", command=command.line
        )
        self._finish(command, Answered(command, AtResponse(command.line, (), "NO CARRIER")))

    def _withdraw(self) -> None:
        """The caller gave up before the write it was handed started: nothing of it is on the wire."""
        command = self.current or self.held
        self.current = self.held = None
        assert command is not None
        command.done = True

    def _echo(self) -> None:
        assert self.current is not None
        self._trace_in(Kind.AT_ECHO, self._line, **command_fields(self.current.line))

    def _info(self) -> None:
        assert self.current is not None
        self.current.lines.append(self._line)
        self._trace_in(Kind.AT_INFO, self._line, **command_fields(self.current.line))

    def _record_final(self) -> Command:
        command = self.current
        assert command is not None
        command.final = NUMERIC_FINALS.get(self._line, self._line)
        error = command.final.startswith(("+CME", "+CMS", "ERROR"))
        self._trace_in(
            Kind.AT_FINAL, self._line, error=error, result=command.final, **command_fields(command.line)
        )
        return command

    def _final(self) -> None:
        self._record_final()
        self._answer()

    def _final_early(self) -> None:
        self._record_final()

    def _answer(self) -> None:
        command, self.current = self.current, None
        assert command is not None
        self._finish(
            command, Answered(command, AtResponse(command.line, tuple(command.lines), command.final))
        )

    def _urc(self) -> None:
        prefix = next(p for p in self.urc_prefixes if self._line.startswith(p))
        self._trace_in(Kind.AT_URC, self._line)
        self._emit(UrcLine(self._line, prefix))

    def _unmatched(self) -> None:
        """No command to belong to and no handler: dropped at once, never kept."""
        if self._line.startswith(("+", "%")) or self._line in _UNSOLICITED_CODES:
            self._trace_in(Kind.AT_URC, f"{self._line} (no handler: dropped)", handled=False)
        else:
            self._trace_in(
                Kind.AT_ERROR,
                f"unsolicited line dropped: {self._line}",
                error=True,
                reason=ChatError.UNMATCHED.value,
            )

    def _overlong(self) -> None:
        length = getattr(self._line, "length", len(self._line))
        summary = f"line too long ({length} characters, at most {self.splitter.max_line}): dropped"
        self._trace_error(
            ChatError.OVERLONG, summary, incoming=True, data=self._line[:80].encode("latin-1"), length=length
        )

    def _timed_out(self) -> None:
        command = self.current
        assert command is not None
        self._trace_error(ChatError.TIMEOUT, f"{command.line}: no answer (timeout)", command=command.line)
        self._make_stale()
        self._finish(command, Failed(command, f"no answer to {command.line!r}"))

    def _cancelled(self) -> None:
        command = self.current
        assert command is not None
        self._make_stale()
        command.done = True

    def _make_stale(self) -> None:
        self.stale, self.current = self.current, None
        self.stale_until = self._now + self.resync_quiet

    def _hold(self) -> None:
        """A command behind a stale one: it may spend half its budget waiting, and keeps the rest for its answer."""
        assert self.held is not None
        self.held.give_up = self._now + (self.held.deadline - self._now) / 2

    def _unhold(self) -> None:
        assert self.held is not None
        self.held.done = True
        self.held = None

    def _late(self) -> None:
        """A line of the stale command's answer: an error event, given to nobody; the DCE is still talking about
        the command, so its window stays open."""
        assert self.stale is not None
        self._trace_in(
            Kind.AT_ERROR,
            f"late answer to {self.stale.line}: {self._line}",
            error=True,
            reason=ChatError.LATE.value,
            command=self.stale.line,
        )
        self.stale_until = self._now + self.resync_quiet

    def _late_final(self) -> None:
        self._late()
        self.stale = None

    def _quiet(self) -> None:
        assert self.stale is not None
        self._trace_error(
            ChatError.QUIET,
            f"no late answer to {self.stale.line} within {self.resync_quiet:g} s: line deemed in step",
            command=self.stale.line,
        )
        self.stale = None

    def _give_up(self) -> None:
        assert self.stale is not None and self.held is not None
        self._trace_error(
            ChatError.GIVE_UP,
            f"no late answer to {self.stale.line} yet: {self.held.line} goes ahead with half its timeout",
            command=self.stale.line,
        )
        self.stale = None

    def _write_s3(self) -> None:
        assert self.stale is not None and self.held is not None
        self._hold()
        summary = f"S3 to end the torn line of {self.stale.line}"
        self._emit(Traced(False, Kind.AT_COMMAND, summary, b"\r", fields={"command": "S3"}))
        self._emit(Write(b"\r"))

    def _torn_ended(self) -> None:
        """The DCE answers the fragment now: that answer is the torn command's."""
        self.stale_until = self._now + self.resync_quiet

    def _still_held(self) -> None:
        command, self.held = self.held, None
        assert command is not None
        self._trace_error(
            ChatError.HELD, f"{command.line}: not sent, the line is still held", command=command.line
        )
        self._finish(command, Failed(command, f"line still held: {command.line!r} not sent"))

    def _closed(self) -> None:
        for command in (self.current, self.held):
            if command is not None and not command.done:
                final = command.final or "NO CARRIER"
                self._finish(
                    command, Answered(command, AtResponse(command.line, tuple(command.lines), final))
                )
        self.current = self.held = self.stale = None

    def _no_carrier(self) -> None:
        command, self.held = self.held, None
        assert command is not None
        self._trace_error(
            ChatError.ENDED, f"{command.line}: not sent, the stream has ended", command=command.line
        )
        self._finish(command, Answered(command, AtResponse(command.line, (), "NO CARRIER")))

    def _nothing(self) -> None:
        pass
