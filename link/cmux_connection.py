"""3GPP TS 27.010 basic-option multiplexer as a sans-IO connection (in the style of h11): line bytes and timer
expiries in, frames to write and events out; no trio, no I/O, no clock. `link/cmux.py` is its trio adapter.

- DLC states (section 5.4.1-5.4.4, 5.8.1) live in one table, `TRANSITIONS`: every state change goes through
  `_move`, and an event the table does not have raises `DlcStateError`. A peer's frame that raises it gets the
  protocol's answer here (DM for SABM, DISC or data on a DLC that is not open; nothing for a stray UA or DM); a
  local command that raises it reaches its caller.
- Control channel (section 5.4.6.3): MSC (answered; its FC bit stops our sender on that DLC), PN (answered with our
  parameters, section 5.4.6.3.1), Test (echoed), FCon/FCoff (all DLCs), PSC (acknowledged), CLD (section 5.8.2),
  and NSC for a type we do not know (`UnknownControl`).
- Timers (section 5.7): T1 and N2 for SABM and DISC, T2 and N2 for our CLD and Test. The connection keeps which
  timers run and for how long (`timer_seconds`); the adapter sleeps and calls `timer_expired`, which retransmits
  or gives up.
- C/R bit per section 5.2.1.2: commands from the initiator and responses from the responder carry C/R = 1.
- Flow control: our receive side announces FC with MSC once more than `rx_high` bytes wait unread on a DLC, and
  lifts it when a read takes them below `rx_low` (`resume_frame`, then `flow_resumed` once written).

The connection never raises for a peer's bytes: whatever they are, they become events, answers and counters
(docs/protocols.md, "The serial line"; bipsim principle "errors are data").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from bipsim.link.cmux_frame import (
    MSC_DV,
    MSC_FC,
    MSC_RTC,
    MSC_RTR,
    ControlMessage,
    ControlType,
    Frame,
    FrameParser,
    FrameType,
    decode_control,
    encode_frame,
    msc_value,
)


class MuxRole(Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


@dataclass(frozen=True)
class CmuxParams:
    """AT+CMUX parameters (3GPP TS 27.007 section 5.7); times in seconds, n1 the maximum information length."""

    mode: int = 0
    subset: int = 0
    port_speed: int | None = None
    n1: int = 31
    t1: float = 0.1
    n2: int = 3
    t2: float = 0.3
    t3: float = 10.0
    k: int | None = None


class DlcState(Enum):
    CLOSED = "closed"
    OPENING = "opening"  # our SABM sent, waiting for UA/DM
    OPEN = "open"
    CLOSING = "closing"  # our DISC sent, waiting for UA/DM


class DlcInput(Enum):
    """What can happen to a DLC: our commands, the peer's frames, timers."""

    OPEN = "open"  # we send SABM
    CLOSE = "close"  # we send DISC
    PEER_SABM = "peer_sabm"
    PEER_DISC = "peer_disc"
    UA = "ua"
    DM = "dm"
    DATA = "data"  # UIH/UI with user data
    TIMEOUT = "timeout"  # T1 ran out N2 + 1 times
    ABANDON = "abandon"  # the caller of an open or a close gave up waiting for the answer
    SHUTDOWN = "shutdown"  # the multiplexer closed (close-down, DLC 0 released, line gone)


class CloseReason(Enum):
    REFUSED = "refused"  # DM answered our SABM
    RELEASED = "released"  # UA or DM answered our DISC
    PEER_DISC = "peer_disc"
    TIMEOUT = "timeout"
    ABANDONED = "abandoned"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True, slots=True)
class Transition:
    """A row's outcome: the next state, the frame answering the peer's command (UA or DM, with F set), and
    whether the DLC starts a new establishment (section 5.4.1: a stream belongs to one establishment)."""

    next: DlcState
    answer: FrameType | None = None
    establish: bool = False
    reason: CloseReason | None = None  # for a move to CLOSED: why


_C, _OG, _O, _CG = DlcState.CLOSED, DlcState.OPENING, DlcState.OPEN, DlcState.CLOSING
_I = DlcInput
_UA, _DM = FrameType.UA, FrameType.DM

# The one table of DLC states. A (state, input) that is not here is illegal: DlcStateError.
TRANSITIONS: dict[tuple[DlcState, DlcInput], Transition] = {
    # closed (section 5.4.1, 5.3.3: DISC of a disconnected DLC is answered DM; a late answer is dropped)
    (_C, _I.OPEN): Transition(_OG),
    (_C, _I.PEER_SABM): Transition(_O, _UA, establish=True),
    (_C, _I.PEER_DISC): Transition(_C, _DM),
    (_C, _I.UA): Transition(_C),
    (_C, _I.DM): Transition(_C),
    (_C, _I.SHUTDOWN): Transition(_C),
    # opening: our SABM waits for its answer, retransmitted at T1 up to N2 times (section 5.7.1)
    (_OG, _I.UA): Transition(_O, establish=True),
    (_OG, _I.DM): Transition(_C, reason=CloseReason.REFUSED),
    (_OG, _I.TIMEOUT): Transition(_C, reason=CloseReason.TIMEOUT),
    (_OG, _I.ABANDON): Transition(_C, reason=CloseReason.ABANDONED),
    (_OG, _I.PEER_SABM): Transition(_O, _UA, establish=True),  # both ends opened at once
    (_OG, _I.PEER_DISC): Transition(_C, _UA, reason=CloseReason.PEER_DISC),
    (_OG, _I.SHUTDOWN): Transition(_C, reason=CloseReason.SHUTDOWN),
    # open
    (_O, _I.CLOSE): Transition(_CG),
    (_O, _I.DATA): Transition(_O),
    (_O, _I.PEER_SABM): Transition(_O, _UA),  # a repeated SABM (its UA lost): no second establishment
    (_O, _I.UA): Transition(_O),  # the answer to a retransmitted SABM
    (_O, _I.PEER_DISC): Transition(_C, _UA, reason=CloseReason.PEER_DISC),
    (_O, _I.SHUTDOWN): Transition(_C, reason=CloseReason.SHUTDOWN),
    # closing: our DISC waits for its answer; data sent before the peer saw it is still delivered
    (_CG, _I.UA): Transition(_C, reason=CloseReason.RELEASED),
    (_CG, _I.DM): Transition(_C, reason=CloseReason.RELEASED),
    (_CG, _I.TIMEOUT): Transition(_C, reason=CloseReason.TIMEOUT),
    (_CG, _I.ABANDON): Transition(_C, reason=CloseReason.ABANDONED),
    (_CG, _I.DATA): Transition(_CG),
    (_CG, _I.PEER_DISC): Transition(_C, _UA, reason=CloseReason.PEER_DISC),
    (_CG, _I.PEER_SABM): Transition(_O, _UA, establish=True),  # released and established again at once
    (_CG, _I.SHUTDOWN): Transition(_C, reason=CloseReason.SHUTDOWN),
}


# --- errors ----------------------------------------------------------------------------------------------------


class MuxError(Exception):
    pass


class DlcStateError(MuxError):
    """An event the transition table does not allow in the DLC's state."""

    def __init__(self, dlci: int, state: DlcState, event: DlcInput) -> None:
        super().__init__(f"DLC {dlci}: {event.value} in state {state.value}")
        self.dlci, self.state, self.event = dlci, state, event


class DlcNotAccepted(MuxError):
    """A SABM we refuse (section 5.4.1: DLC 0 first; DLCI 62 unusable; a DLC this side does not serve): DM."""


class UnknownControl(MuxError):
    """A control message type we do not know (section 5.4.6.3.8): NSC."""

    def __init__(self, type_octet: int) -> None:
        super().__init__(f"unknown control message type {type_octet:#04x}")
        self.type_octet = type_octet


class MalformedControl(MuxError):
    """A DLC 0 information field that is not a list of control messages: dropped without an answer."""


class DlcRefused(MuxError):
    """The peer answered SABM with DM."""


class MuxTimeout(MuxError):
    """No answer after N2 retransmissions."""


class MuxClosed(MuxError):
    """The multiplexer has closed down (CLD, DLC 0 DISC, or the line went away)."""


# --- events out ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DlcOpened:
    dlci: int
    generation: int  # the establishment (counts per DLCI)
    by_peer: bool


@dataclass(frozen=True, slots=True)
class DlcClosed:
    dlci: int
    generation: int
    reason: CloseReason


class Data(NamedTuple):
    """User data on an open DLC. A named tuple, unlike the other events: one is made per frame of a busy line, and
    a tuple is made in less than half the time of a frozen dataclass."""

    dlci: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ModemStatus:
    """The peer's MSC for an open DLC (section 5.4.6.3.7): its V.24 signals; FC set stops our sending."""

    dlci: int
    signals: int

    @property
    def flow_stopped(self) -> bool:
        return bool(self.signals & MSC_FC)


@dataclass(frozen=True, slots=True)
class FlowControl:
    """The peer's FCoff (stopped) or FCon for every DLC (section 5.4.6.3.5-6)."""

    stopped: bool


@dataclass(frozen=True, slots=True)
class TestAnswer:
    """The peer's echo of our Test command (section 5.4.6.3.4)."""

    __test__ = False  # a protocol event, not a pytest class
    pattern: bytes


@dataclass(frozen=True, slots=True)
class CloseDown:
    """The multiplexer closed (section 5.8): what follows on the line is AT text (`take_leftover`)."""

    by_peer: bool
    answered: bool = True


@dataclass(frozen=True, slots=True)
class FrameReceived:
    """A valid frame from the peer, before it is acted on (only with `record_frames`: for traces)."""

    frame: Frame


@dataclass(frozen=True, slots=True)
class FramesDropped:
    """Section 5.2.1.6: frames with a bad FCS or structure are discarded without an answer; counters so far and
    the bytes fed that held them."""

    bad_fcs: int
    malformed: int
    data: bytes


@dataclass(frozen=True, slots=True)
class PeerError:
    """A peer's frame broke a rule; `answer` is what we sent for it ("DM", "NSC") or None."""

    error: MuxError
    dlci: int
    data: bytes
    answer: str | None
    summary: str = ""  # for a trace event's human summary


Event = (
    DlcOpened
    | DlcClosed
    | Data
    | ModemStatus
    | FlowControl
    | TestAnswer
    | CloseDown
    | FrameReceived
    | FramesDropped
    | PeerError
)


@dataclass(frozen=True, slots=True)
class Timer:
    """A timer the adapter runs: T1 of a DLC's SABM/DISC (`dlci`), T2 of our CLD or Test (`control`)."""

    name: str  # "T1" or "T2"
    key: int  # the DLCI for T1, the ControlType for T2


@dataclass
class MuxStats:
    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    retransmissions: int = 0
    nsc_sent: int = 0
    dm_sent: int = 0

    def snapshot(self, parser: FrameParser) -> dict[str, int]:
        return {**self.__dict__, "bad_fcs": parser.bad_fcs, "malformed": parser.malformed}


@dataclass
class _Dlc:
    dlci: int
    state: DlcState = DlcState.CLOSED
    generation: int = 0
    closed_reason: CloseReason | None = None
    peer_fc: bool = False  # the peer asked us to stop sending (MSC FC)
    peer_signals: int | None = None  # the V.24 signal octet of the peer's last MSC, None before any
    our_fc: bool = False  # we asked the peer to stop
    unread: int = 0  # bytes delivered as Data and not yet consumed by the reader
    n1: int | None = None  # the maximum information length agreed by PN; None: the multiplexer's N1


RX_HIGH = 256 * 1024  # announce FC above this many unread bytes on a DLC
RX_LOW = 64 * 1024
_UIH = FrameType.UIH
_OPEN = DlcState.OPEN
_CLOSING = DlcState.CLOSING
# the V.24 signals we announce on a new DLC (section 5.4.6.3.7; Linux n_gsm raises the carrier from DV)
SIGNALS = MSC_RTC | MSC_RTR | MSC_DV


class CmuxConnection:
    """One 27.010 multiplexer session, either role. Feed the line's bytes to `receive_data`, write what
    `data_to_send` returns, act on `next_events`; commands return the bytes to write."""

    def __init__(
        self,
        role: MuxRole,
        params: CmuxParams | None = None,
        *,
        accept: Callable[[int], bool] = lambda dlci: 1 <= dlci <= 63,
        record_frames: bool = False,
        rx_high: int = RX_HIGH,
        rx_low: int = RX_LOW,
    ) -> None:
        self.role = role
        self.params = params or CmuxParams()
        self.accept = accept
        self.record_frames = record_frames
        self.rx_high, self.rx_low = rx_high, rx_low
        self.parser = FrameParser(max_info=max(self.params.n1, 32767))
        # a multiplexer may close down on any DLC 0 frame; what follows it is then AT text, not frames
        self.parser.pause_on_control = True
        self.stats = MuxStats()
        # +CMUX allows N1 = 32768; the length field stops at 32767
        self.n1 = min(max(1, self.params.n1), 32767)
        self.closed = False
        self.peer_fcoff = False
        self._dlcs: dict[int, _Dlc] = {}
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._timers: dict[Timer, int] = {}  # running timer -> retransmissions so far
        self._test_pattern = b""

    # --- C/R (section 5.2.1.2) -------------------------------------------------------------------------------

    def _cr(self, command: bool) -> bool:
        return command == (self.role is MuxRole.INITIATOR)

    def _frame(self, dlci: int, ftype: FrameType, command: bool, info: bytes = b"") -> bytes:
        data = encode_frame(dlci, ftype, self._cr(command), ftype is not _UIH, info)
        self.stats.frames_out += 1
        self.stats.bytes_out += len(data)
        return data

    def _control_frame(self, message: ControlMessage) -> bytes:
        # DLC 0 UIH frames are commands at the frame level whatever the message is
        return self._frame(0, _UIH, True, message.encode())

    # --- public state ----------------------------------------------------------------------------------------

    def dlc_state(self, dlci: int) -> DlcState:
        dlc = self._dlcs.get(dlci)
        return dlc.state if dlc is not None else DlcState.CLOSED

    def generation(self, dlci: int) -> int:
        dlc = self._dlcs.get(dlci)
        return dlc.generation if dlc is not None else 0

    def closed_reason(self, dlci: int) -> CloseReason | None:
        dlc = self._dlcs.get(dlci)
        return dlc.closed_reason if dlc is not None else None

    def peer_signals(self, dlci: int) -> int | None:
        dlc = self._dlcs.get(dlci)
        return dlc.peer_signals if dlc is not None else None

    def our_fc(self, dlci: int) -> bool:
        dlc = self._dlcs.get(dlci)
        return dlc is not None and dlc.our_fc

    def readable(self, dlci: int, generation: int) -> bool:
        """Whether a reader of this establishment may take data without first lifting our flow control."""
        dlc = self._dlcs.get(dlci)
        return dlc is not None and dlc.generation == generation and not dlc.our_fc

    def unread(self, dlci: int) -> int:
        dlc = self._dlcs.get(dlci)
        return dlc.unread if dlc is not None else 0

    def dlc_n1(self, dlci: int) -> int:
        """The largest information field we send on this DLC (PN's N1, else the multiplexer's)."""
        dlc = self._dlcs.get(dlci)
        return (dlc.n1 if dlc is not None else None) or self.n1

    def known_dlcis(self) -> list[int]:
        """The DLCIs this connection keeps state for (established once, being established, or set by PN)."""
        return sorted(self._dlcs)

    def is_open(self, dlci: int, generation: int) -> bool:
        """Whether this establishment of the DLC is still open (a stream belongs to one establishment)."""
        dlc = self._dlcs.get(dlci)
        return dlc is not None and dlc.generation == generation and dlc.state is _OPEN and not self.closed

    def may_send(self, dlci: int, generation: int) -> bool:
        """Whether data on this establishment may go now: open, and neither MSC FC nor FCoff from the peer."""
        dlc = self._dlcs.get(dlci)
        return (
            dlc is not None
            and dlc.generation == generation
            and dlc.state is _OPEN
            and not (dlc.peer_fc or self.peer_fcoff or self.closed)
        )

    def timer_seconds(self, timer: Timer) -> float | None:
        """How long the running `timer` lasts from its last (re)start; None when it is not running. T1 grows
        with each retry (T1, 2 T1, 3 T1...): 27.010 keeps it fixed, but a peer slow under load (a scenario on two
        busy cores) answers late rather than never, and a fixed 100 ms gave up on it."""
        tries = self._timers.get(timer)
        if tries is None:
            return None
        if timer.name == "T1":
            return self.params.t1 * (1 + tries)
        return self.params.t2

    # --- output ------------------------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """The answers queued by `receive_data` and `timer_expired`, in order; empties the queue."""
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def next_events(self) -> list[Event]:
        """The events since the last call, in order; empties the queue."""
        events = self._events
        self._events = []
        return events

    # --- the table -----------------------------------------------------------------------------------------------

    def _dlc(self, dlci: int) -> _Dlc:
        dlc = self._dlcs.get(dlci)
        if dlc is None:
            dlc = self._dlcs[dlci] = _Dlc(dlci)
        return dlc

    def _move(self, dlc: _Dlc, event: DlcInput) -> Transition:
        """Every DLC state change goes through here."""
        step = TRANSITIONS.get((dlc.state, event))
        if step is None:
            raise DlcStateError(dlc.dlci, dlc.state, event)
        before = dlc.state
        dlc.state = step.next
        if step.establish:
            # a new establishment starts with flow on both ways and an empty receive side
            dlc.generation += 1
            dlc.closed_reason = None
            dlc.peer_fc = dlc.our_fc = False
            dlc.peer_signals = None
            dlc.unread = 0
            self._timers.pop(Timer("T1", dlc.dlci), None)
            # both ends opening at once: the DLC is our opener's
            by_peer = event is DlcInput.PEER_SABM and before is not DlcState.OPENING
            self._events.append(DlcOpened(dlc.dlci, dlc.generation, by_peer))
        elif step.next is DlcState.CLOSED and before is not DlcState.CLOSED:
            self._timers.pop(Timer("T1", dlc.dlci), None)
            reason = step.reason or CloseReason.SHUTDOWN
            dlc.closed_reason = reason
            dlc.n1 = None
            self._events.append(DlcClosed(dlc.dlci, dlc.generation, reason))
            # DISC of DLC 0, either way, answered or not, closes the multiplexer (section 5.8.1); an open of
            # DLC 0 that failed never opened it
            if dlc.dlci == 0 and before is not DlcState.OPENING and not self.closed:
                self._close_down(by_peer=event is DlcInput.PEER_DISC)
        return step

    def _close_down(self, *, by_peer: bool, answered: bool = True) -> None:
        self.closed = True
        self._timers.clear()
        self._events.append(CloseDown(by_peer, answered))
        for dlc in self._dlcs.values():
            if dlc.state is not DlcState.CLOSED:
                self._move(dlc, DlcInput.SHUTDOWN)

    # --- commands ------------------------------------------------------------------------------------------------

    def open_dlc(self, dlci: int) -> bytes:
        """SABM (section 5.4.1) and T1 started; DLC 0 must be open first (the adapter opens it)."""
        if self.closed:
            raise MuxClosed("the multiplexer is closed")
        if not 0 <= dlci <= 63 or dlci == 62:
            raise ValueError(
                f"DLCI {dlci} is not 0..61 or 63 (62's responses would have the flag as address)"
            )
        if dlci and self.dlc_state(0) is not _OPEN:
            raise MuxError(f"DLC 0 is established before DLC {dlci} (section 5.4.1)")
        dlc = self._dlc(dlci)
        if dlc.state is _OPEN:
            raise MuxError(f"DLC {dlci} is already open")
        self._move(dlc, DlcInput.OPEN)
        self._timers[Timer("T1", dlci)] = 0
        return self._frame(dlci, FrameType.SABM, True)

    def close_dlc(self, dlci: int, generation: int) -> bytes:
        """DISC (section 5.4.4) of this establishment and T1 started; b"" when it is not open any more (released
        by the peer, maybe established again for another stream) or the multiplexer is closed."""
        dlc = self._dlcs.get(dlci)
        if dlc is None or dlc.generation != generation or dlc.state is not _OPEN or self.closed:
            return b""
        self._move(dlc, DlcInput.CLOSE)
        self._timers[Timer("T1", dlci)] = 0
        return self._frame(dlci, FrameType.DISC, True)

    def abandon(self, dlci: int) -> None:
        """The caller of an open or close stopped waiting (cancelled): an opening DLC is closed, so a later
        attempt starts from scratch; a closing one is taken as released."""
        dlc = self._dlcs.get(dlci)
        if dlc is not None and dlc.state in (DlcState.OPENING, DlcState.CLOSING):
            self._move(dlc, DlcInput.ABANDON)

    def send_data(self, dlci: int, generation: int, data: bytes | bytearray | memoryview) -> bytes:
        """UIH frames of at most N1 bytes carrying `data` on this establishment. Flow control is the caller's
        to respect (`may_send`); a DLC that is not open raises DlcStateError."""
        dlc = self._dlcs.get(dlci)
        if dlc is None or dlc.generation != generation or dlc.state is not _OPEN or self.closed:
            state = dlc.state if dlc is not None and dlc.generation == generation else DlcState.CLOSED
            raise DlcStateError(dlci, state, DlcInput.DATA)
        n1 = dlc.n1 or self.n1
        cr = self.role is MuxRole.INITIATOR  # UIH carrying data is a command
        stats = self.stats
        if len(data) <= n1:
            frame = encode_frame(dlci, _UIH, cr, False, data)
            stats.frames_out += 1
            stats.bytes_out += len(frame)
            return frame
        view = memoryview(data)
        frames = [encode_frame(dlci, _UIH, cr, False, view[i : i + n1]) for i in range(0, len(view), n1)]
        out = b"".join(frames)
        stats.frames_out += len(frames)
        stats.bytes_out += len(out)
        return out

    def resume_frame(self, dlci: int, remaining: int) -> bytes | None:
        """The MSC without FC to send before a read leaves `remaining` bytes unread, when we had stopped the peer
        and that is below the low mark; None otherwise. Changes nothing: call `flow_resumed` once it is written
        (a read cancelled while writing it keeps FC set, and the next read sends it again)."""
        dlc = self._dlcs.get(dlci)
        if dlc is None or not dlc.our_fc or remaining >= self.rx_low:
            return None
        return self._control_frame(ControlMessage(ControlType.MSC, True, msc_value(dlci, SIGNALS)))

    def flow_resumed(self, dlci: int) -> None:
        dlc = self._dlcs.get(dlci)
        if dlc is not None:
            dlc.our_fc = False

    def consumed(self, dlci: int, size: int) -> None:
        """The reader took `size` bytes of the DLC's Data."""
        dlc = self._dlcs.get(dlci)
        if dlc is not None:
            dlc.unread = max(0, dlc.unread - size)

    def close_down(self) -> bytes:
        """CLD (section 5.8.2) and T2 started; b"" when already closed."""
        if self.closed:
            return b""
        self._timers[Timer("T2", ControlType.CLD)] = 0
        return self._control_frame(ControlMessage(ControlType.CLD, True))

    def test(self, pattern: bytes) -> bytes:
        """Test command (section 5.4.6.3.4) and T2 started; the echo comes as TestAnswer."""
        if self.closed:
            raise MuxClosed("the multiplexer is closed")
        self._timers[Timer("T2", ControlType.TEST)] = 0
        self._test_pattern = pattern
        return self._control_frame(ControlMessage(ControlType.TEST, True, pattern))

    def send_fc(self, off: bool) -> bytes:
        """FCoff / FCon for the whole multiplexer (section 5.4.6.3.5-6)."""
        return self._control_frame(ControlMessage(ControlType.FCOFF if off else ControlType.FCON, True))

    def shutdown(self) -> None:
        """The line went away or the adapter gave up: every DLC closed, no close-down exchange."""
        if not self.closed:
            self._close_down(by_peer=False, answered=False)

    def take_leftover(self) -> bytes:
        """After a close-down: the line bytes that followed the frame that closed the multiplexer (AT text)."""
        return self.parser.take_rest()

    # --- timers --------------------------------------------------------------------------------------------------

    def timer_expired(self, timer: Timer) -> bytes:
        """The adapter's `timer_seconds(timer)` passed: the command is sent again (N2 times), or given up (a DLC
        closes with reason TIMEOUT, an unanswered CLD closes the multiplexer all the same, an unanswered Test
        ends without TestAnswer). b"" for a timer that no longer runs."""
        tries = self._timers.get(timer)
        if tries is None:
            return b""
        if tries < self.params.n2:
            self._timers[timer] = tries + 1
            self.stats.retransmissions += 1
            if timer.name == "T1":
                ftype = FrameType.SABM if self.dlc_state(timer.key) is DlcState.OPENING else FrameType.DISC
                return self._frame(timer.key, ftype, True)
            if timer.key == ControlType.CLD:
                return self._control_frame(ControlMessage(ControlType.CLD, True))
            return self._control_frame(ControlMessage(ControlType.TEST, True, self._test_pattern))
        del self._timers[timer]
        if timer.name == "T1":
            self._move(self._dlc(timer.key), DlcInput.TIMEOUT)
        elif timer.key == ControlType.CLD and not self.closed:
            self._close_down(by_peer=False, answered=False)
        return b""

    # --- input ---------------------------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feeds line bytes: events and answers queue up. Stops at the frame that closes the multiplexer; the
        bytes after it stay for `take_leftover`. Bytes fed after the close are kept for it too."""
        parser = self.parser
        if self.closed:
            parser.hold(data)  # AT text for the next user of the line
            return
        self.stats.bytes_in += len(data)
        dropped = parser.bad_fcs + parser.malformed
        frames = parser.feed(data)
        if parser.bad_fcs + parser.malformed != dropped:
            self._events.append(FramesDropped(parser.bad_fcs, parser.malformed, bytes(data)))
        events = self._events
        dlcs = self._dlcs
        record = self.record_frames
        while True:
            self.stats.frames_in += len(frames)
            for frame in frames:
                if record:
                    events.append(FrameReceived(frame))
                if frame.type is _UIH and frame.dlci:
                    # the bulk of a busy line, (OPEN, DATA) -> OPEN of the table without its lookup
                    dlc = dlcs.get(frame.dlci)
                    if dlc is not None and dlc.state is _OPEN:
                        dlc.unread += len(frame.info)
                        events.append(Data(frame.dlci, frame.info))
                        if dlc.unread > self.rx_high and not dlc.our_fc:
                            self._stop_peer(dlc)
                        continue
                self._handle(frame)
            # the parser stops after each DLC 0 frame: if that one closed us, the rest is not ours to parse
            if self.closed or not parser.paused:
                break
            frames = parser.feed(b"")

    def _stop_peer(self, dlc: _Dlc) -> None:
        dlc.our_fc = True
        self._out.append(
            self._control_frame(ControlMessage(ControlType.MSC, True, msc_value(dlc.dlci, SIGNALS | MSC_FC)))
        )

    def _can_answer(self, dlci: int) -> bool:
        """Whether a response on `dlci` can be written: on DLCI 62 a response with C/R 0 (the initiator's) has the
        address octet F9, the flag, which no receiver can take for an address (section 5.2.6)."""
        return dlci != 62 or self._cr(False)

    def _answer(self, dlci: int, ftype: FrameType) -> None:
        if not self._can_answer(dlci):
            return
        if ftype is FrameType.DM:
            self.stats.dm_sent += 1
        self._out.append(self._frame(dlci, ftype, False))

    def _refuse(
        self, error: MuxError, dlci: int, data: bytes, answer: FrameType | None, summary: str
    ) -> None:
        """The protocol's answer to a peer's frame that broke a rule, and the event saying so."""
        if answer is not None and not self._can_answer(dlci):
            answer, summary = (
                None,
                f"{error}: no answer (a response on DLCI 62 would have the flag as address)",
            )
        if answer is not None:
            self._answer(dlci, answer)
        self._events.append(
            PeerError(error, dlci, data, answer.name if answer is not None else None, summary)
        )

    def _handle(self, frame: Frame) -> None:
        ftype = frame.type
        dlci = frame.dlci
        if ftype is FrameType.SABM:
            # DLC 0 comes first (section 5.4.1); DLCI 62 cannot be used in the basic option: a response on it
            # has the address octet F9, the flag
            if dlci and (dlci == 62 or self.dlc_state(0) is not _OPEN or not self.accept(dlci)):
                error = DlcNotAccepted(f"SABM on DLC {dlci} refused")
                self._refuse(error, dlci, b"", FrameType.DM, f"{error}: DM")
                return
            self._on_dlc(dlci, DlcInput.PEER_SABM, frame)
        elif ftype is FrameType.DISC:
            self._on_dlc(dlci, DlcInput.PEER_DISC, frame)
        elif ftype is FrameType.UA or ftype is FrameType.DM:
            event = DlcInput.UA if ftype is FrameType.UA else DlcInput.DM
            self._on_dlc(dlci, event, frame)
        elif dlci == 0:  # UIH/UI on the control channel
            self._control(frame.info)
        else:
            self._on_dlc(dlci, DlcInput.DATA, frame)

    def _on_dlc(self, dlci: int, event: DlcInput, frame: Frame) -> None:
        dlc = self._dlcs.get(dlci)
        if dlc is None:
            if event is not DlcInput.PEER_SABM:
                # no state is made for a DLC that is not there: the table's CLOSED row, without a record
                if event is DlcInput.PEER_DISC:
                    self._answer(dlci, FrameType.DM)  # the table's (CLOSED, PEER_DISC) row
                elif event is DlcInput.DATA:
                    error = DlcStateError(dlci, DlcState.CLOSED, event)
                    summary = f"data on DLC {dlci} in state closed (establishment 0): DM"
                    self._refuse(error, dlci, frame.info, FrameType.DM, summary)
                return
            dlc = self._dlc(dlci)
        try:
            step = self._move(dlc, event)
        except DlcStateError as error:
            # data on a DLC that is not open gets DM (section 5.3.3); a stray UA or DM is dropped
            if event is DlcInput.DATA:
                summary = (
                    f"data on DLC {dlci} in state {dlc.state.value} (establishment {dlc.generation}): DM"
                )
                self._refuse(error, dlci, frame.info, FrameType.DM, summary)
            else:
                self._refuse(
                    error, dlci, b"", None, f"{frame.type.name} on DLC {dlci} in state {dlc.state.value}"
                )
            return
        if step.answer is not None:
            self._answer(dlci, step.answer)
        if event is DlcInput.DATA:
            dlc.unread += len(frame.info)
            self._events.append(Data(dlci, frame.info))
            if dlc.unread > self.rx_high and not dlc.our_fc:
                self._stop_peer(dlc)
        elif step.establish and dlci:
            # section 5.4.6.3.7: an MSC with our V.24 signals on a new DLC before any user data
            signals = SIGNALS | (MSC_FC if dlc.our_fc else 0)
            self._out.append(
                self._control_frame(ControlMessage(ControlType.MSC, True, msc_value(dlci, signals)))
            )

    # --- control channel (section 5.4.6.3) -------------------------------------------------------------------

    def _control(self, info: bytes) -> None:
        try:
            messages = decode_control(info)
        except ValueError as exc:
            self._refuse(MalformedControl(str(exc)), 0, info, None, f"malformed control message: {exc}")
            return
        for message in messages:
            if self.closed:
                return
            if message.command:
                try:
                    self._control_command(message)
                except UnknownControl as error:
                    self.stats.nsc_sent += 1
                    nsc = ControlMessage(ControlType.NSC, False, bytes((error.type_octet | 2 | 1,)))
                    self._out.append(self._control_frame(nsc))
                    summary = f"{error}: NSC"
                    self._events.append(PeerError(error, 0, message.encode(), "NSC", summary))
            else:
                self._control_response(message)

    def _control_response(self, message: ControlMessage) -> None:
        kind = message.type
        if kind == ControlType.CLD and self._timers.pop(Timer("T2", ControlType.CLD), None) is not None:
            self._close_down(by_peer=False)  # our close-down is answered: nothing after it is a frame
        elif kind == ControlType.TEST and self._timers.pop(Timer("T2", ControlType.TEST), None) is not None:
            self._events.append(TestAnswer(message.value))
        # MSC, PN, FCon/FCoff responses, NSC: nothing waits for them

    def _control_command(self, message: ControlMessage) -> None:
        kind = message.type
        value = message.value
        if kind == ControlType.MSC and value:
            target = self._dlcs.get(value[0] >> 2)
            if target is None or target.state is DlcState.CLOSED or not target.dlci:
                # answered below, so the peer's T2 does not run out, but no state is made for a DLC that is not
                # there (Linux n_gsm ignores it altogether)
                dlci = value[0] >> 2
                error = DlcStateError(dlci, DlcState.CLOSED, DlcInput.DATA)
                summary = f"MSC for DLC {dlci}, which is not open: answered, signals not kept"
                self._events.append(PeerError(error, dlci, message.encode(), None, summary))
            else:
                signals = value[1] if len(value) > 1 else 0
                target.peer_signals = signals
                target.peer_fc = bool(signals & MSC_FC)
                self._events.append(ModemStatus(target.dlci, signals))
            answer = value
        elif kind == ControlType.PN and len(value) == 8:
            answer = self._answer_pn(value)
        elif kind == ControlType.TEST or kind == ControlType.PSC:
            answer = value
        elif kind == ControlType.FCOFF or kind == ControlType.FCON:
            self.peer_fcoff = kind == ControlType.FCOFF
            self._events.append(FlowControl(self.peer_fcoff))
            answer = b""
        elif kind == ControlType.CLD:
            self._out.append(self._control_frame(ControlMessage(kind, False)))
            self._close_down(by_peer=True)
            return
        else:
            raise UnknownControl(kind)
        self._out.append(self._control_frame(ControlMessage(kind, False, answer)))

    def _answer_pn(self, proposal: bytes) -> bytes:
        """Our PN response (section 5.4.6.3.1), and the N1 it agrees kept for the DLC's sending: UIH frames and
        convergence layer type 1 (the only ones we do) whatever was proposed; the proposed N1 when it is 1..our
        limit, else our limit (+CMUX's N1, or any length when +CMUX left it at its default of 31)."""
        value = bytearray(proposal)
        dlci = value[0] & 0x3F
        limit = self.n1 if self.params.n1 > 31 else 32767
        proposed = int.from_bytes(value[4:6], "little")
        n1 = proposed if 1 <= proposed <= limit else limit
        value[1] = 0  # I = 0 (UIH), CL = 0 (type 1)
        value[4:6] = n1.to_bytes(2, "little")
        if dlci and dlci != 62:
            self._dlc(dlci).n1 = n1
        return bytes(value)
