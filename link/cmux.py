"""3GPP TS 27.010 multiplexer (basic option) over any trio Stream, in either role; each open DLC is a trio Stream.

- DLC establishment with SABM/UA (DM refuses), release with DISC/UA, T1 retries up to N2 (section 5.4.1-5.4.4,
  5.7); DLC 0 opens first and its DISC, or a CLD, closes the multiplexer and returns the line to AT mode.
- Control channel (section 5.4.6.3): MSC (answered, its FC bit stops our sender for that DLC), PN (answered with
  our parameters), Test (echoed), FCon/FCoff (all DLCs), CLD, and NSC for any type we do not know.
- C/R bit per section 5.2.1.2: commands from the initiator and responses from the responder carry C/R = 1.
- Flow control applies back-pressure: our receive buffers announce FC with MSC when they fill, and a sender whose
  peer said FCoff/FC waits instead of dropping data.
- Cancellation follows trio's Stream contract: a cancelled DlcStream.receive_some consumed nothing (every await,
  the flow-control MSC included, comes before data leaves the DLC's buffer); a cancelled send_all leaves that DLC's
  stream in an unknown state (some frames sent); an open_dlc that has its UA completes and returns the stream
  even when cancelled while it announces its signals (the DLC is open at both ends by then). A frame cut short
  on the line by a cancel is dropped by the peer's parser at the next flag; it is not shielded, since a stalled
  line must not make a cancel hang.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import trio

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
from bipsim.trace.events import Actor, Layer
from bipsim.trace.recorder import NULL_TRACER, Tracer


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
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"


TRANSITIONS: dict[tuple[DlcState, str], DlcState] = {
    (DlcState.CLOSED, "open"): DlcState.OPENING,
    (DlcState.CLOSED, "peer_sabm"): DlcState.OPEN,
    (DlcState.OPENING, "ua"): DlcState.OPEN,
    (DlcState.OPENING, "dm"): DlcState.CLOSED,
    (DlcState.OPENING, "timeout"): DlcState.CLOSED,
    (DlcState.OPEN, "close"): DlcState.CLOSING,
    (DlcState.OPEN, "peer_disc"): DlcState.CLOSED,
    (DlcState.CLOSING, "ua"): DlcState.CLOSED,
    (DlcState.CLOSING, "dm"): DlcState.CLOSED,
    (DlcState.CLOSING, "timeout"): DlcState.CLOSED,
    (DlcState.CLOSING, "peer_disc"): DlcState.CLOSED,
}


class MuxError(Exception):
    pass


class DlcRefused(MuxError):
    """The peer answered SABM with DM."""


class MuxTimeout(MuxError):
    """No answer after N2 retransmissions of T1."""


class MuxClosed(MuxError):
    """The multiplexer has closed down (CLD, DLC 0 DISC, or the line went away)."""


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
    rx: bytearray = field(default_factory=bytearray)
    rx_event: trio.Event = field(default_factory=trio.Event)
    answer: trio.Event = field(default_factory=trio.Event)
    answered: FrameType | None = None
    peer_fc: bool = False  # the peer asked us to stop sending (MSC FC)
    peer_signals: int | None = None  # the V.24 signal octet of the peer's last MSC, None before any
    our_fc: bool = False  # we asked the peer to stop
    fc_event: trio.Event = field(default_factory=trio.Event)
    eof: bool = False
    local_closed: bool = False
    stream: DlcStream | None = None
    n1: int | None = None  # the maximum information length agreed by PN for this DLC; None: the mux's N1
    # counts the DLC's establishments: a stream belongs to one, so a stale stream of a DLC that was released and
    # established again (a BIP channel reopened on the same DLCI) can neither read, write nor close the new one
    generation: int = 0

    def fresh_flow(self) -> None:
        """A new establishment starts with flow on both ways; a sender still held by the last one's flow control
        wakes up to find its establishment gone."""
        self.peer_fc = self.our_fc = False
        self.peer_signals = None
        self.fc_event.set()

    def move(self, event: str) -> None:
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise MuxError(f"DLC {self.dlci}: {event} in state {self.state.value}")
        self.state = nxt


RX_HIGH = 256 * 1024  # announce FC above this many unread bytes on a DLC
RX_LOW = 64 * 1024
TRACE_DROPPED_MAX = 1024
# a DLC send of more than N1 bytes writes its frames this many bytes of data at a time
WRITE_BATCH = 64 * 1024


class Mux:
    """One multiplexer session on `line`. Start `run()` in a nursery; it returns at close-down or line EOF."""

    def __init__(
        self,
        line: trio.abc.Stream,
        *,
        role: MuxRole,
        params: CmuxParams | None = None,
        tracer: Tracer = NULL_TRACER,
        local: Actor = Actor.AP,
        remote: Actor = Actor.CP,
        accept: Callable[[int], bool] = lambda dlci: 1 <= dlci <= 63,
    ) -> None:
        self.line = line
        self.role = role
        self.params = params or CmuxParams()
        self.tracer = tracer
        self.local, self.remote = local, remote
        self.accept_filter = accept
        self.parser = FrameParser(max_info=max(self.params.n1, 32767))
        self.stats = MuxStats()
        self._dlcs: dict[int, _Dlc] = {}
        # frames must not interleave on the line: a flag and a parking lot, cheaper than trio.Lock per frame
        self._line_busy = False
        self._line_waiters = trio.lowlevel.ParkingLot()
        # +CMUX allows N1 = 32768; the length field stops at 32767
        self._n1 = min(max(1, self.params.n1), 32767)
        self._accepted_tx, self._accepted_rx = trio.open_memory_channel[DlcStream](64)
        self._closed = trio.Event()
        self._peer_fcoff = False
        self._control_answer: dict[int, tuple[trio.Event, list[ControlMessage]]] = {}
        self._trace_frames = tracer is not NULL_TRACER
        self.line_eof = False  # run() ended because the line went away (not a close-down)
        self.leftover = b""  # after a close-down: line bytes that followed the closing frame (see run)
        self.parser.pause_on_control = True
        self._read_scope: trio.CancelScope | None = None
        self._reader: trio.lowlevel.Task | None = None

    # --- C/R (section 5.2.1.2) -------------------------------------------------------------------------------

    @property
    def _initiator(self) -> bool:
        return self.role is MuxRole.INITIATOR

    def _cr(self, command: bool) -> bool:
        return command == self._initiator

    def _dlc(self, dlci: int) -> _Dlc:
        dlc = self._dlcs.get(dlci)
        if dlc is None:
            dlc = self._dlcs[dlci] = _Dlc(dlci)
        return dlc

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # --- output ------------------------------------------------------------------------------------------------

    async def _send_frame(
        self,
        dlci: int,
        ftype: FrameType,
        command: bool,
        pf: bool,
        info: bytes | bytearray | memoryview = b"",
    ) -> None:
        await self._send_frames(dlci, ftype, command, pf, (info,))

    async def _send_frames(
        self,
        dlci: int,
        ftype: FrameType,
        command: bool,
        pf: bool,
        infos: Sequence[bytes | bytearray | memoryview],
    ) -> None:
        """One frame per information field, all in one write of the line (its per-write cost paid once)."""
        cr = self._cr(command)
        frames = [encode_frame(dlci, ftype, cr, pf, info) for info in infos]
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        # the free line is taken without a schedule point: line.send_all is this write's checkpoint
        if self._line_busy:
            await self._line_waiters.park()  # the releaser hands the line over to us (fair, as trio.Lock)
        else:
            self._line_busy = True
        try:
            if self._trace_frames:
                for info, frame in zip(infos, frames, strict=True):
                    name = f"{ftype.name} DLC{dlci}{' P/F' if pf else ''}" + (
                        f" ({len(info)} bytes)" if info else ""
                    )
                    self.tracer.emit(self.local, self.remote, Layer.CMUX, name, frame)
            try:
                await self.line.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._closed.set()
                raise MuxClosed("the line went away") from exc
        finally:
            if self._line_waiters:
                self._line_waiters.unpark()  # stays busy: owned by the task woken
            else:
                self._line_busy = False
        self.stats.frames_out += len(frames)
        self.stats.bytes_out += len(data)

    async def _send_control(self, message: ControlMessage) -> None:
        await self._send_frame(0, FrameType.UIH, True, False, message.encode())

    # --- input ---------------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reads the line and dispatches frames until close-down or end of file. After a close-down, `leftover`
        holds what the line brought after the frame that closed the multiplexer (AT text for the next user)."""
        self._reader = trio.lowlevel.current_task()
        task_status.started()
        try:
            # one scope for the whole loop (a scope per read costs more than the read): a close-down that ends
            # without the peer's answer cancels it, so that this loop does not read the line's next AT bytes
            with trio.CancelScope() as self._read_scope:
                await self._read_loop()
        finally:
            self._read_scope = None
            if not self.line_eof:
                self.leftover = self.parser.take_rest()
            self._shutdown()

    async def _read_loop(self) -> None:
        while not self._closed.is_set():
            try:
                data = await self.line.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.line_eof = True
                return
            self.stats.bytes_in += len(data)
            dropped = self.parser.bad_fcs + self.parser.malformed
            frames = self.parser.feed(data)
            if self.parser.bad_fcs + self.parser.malformed != dropped:
                self._trace_dropped(data)
            while True:
                for frame in frames:
                    self.stats.frames_in += 1
                    if self._trace_frames:
                        self.tracer.emit(
                            self.remote, self.local, Layer.CMUX, frame.describe(), frame.encode()
                        )
                    elif frame.type is FrameType.UIH and frame.dlci:
                        # fast path for user data on an open DLC below the flow-control mark
                        dlc = self._dlcs.get(frame.dlci)
                        if dlc is not None and dlc.state is DlcState.OPEN and len(dlc.rx) < RX_HIGH:
                            dlc.rx += frame.info
                            dlc.rx_event.set()
                            continue
                    await self._handle(frame)
                # the parser stops after each DLC 0 frame: if that one closed us, the rest is not ours to parse
                if self._closed.is_set() or not self.parser.paused:
                    break
                frames = self.parser.feed(b"")

    def _closing_done(self) -> None:
        """The multiplexer is closed (CLD or DLC 0 released): the reader stops at once, the line is AT again."""
        self._closed.set()
        if self._read_scope is not None and trio.lowlevel.current_task() is not self._reader:
            self._read_scope.cancel()

    def _trace_dropped(self, data: bytes | bytearray) -> None:
        """27.010 discards a frame with a bad FCS or structure without an answer (section 5.2.1.6); the trace
        still says so, with the read that held it (its first TRACE_DROPPED_MAX bytes)."""
        shown = bytes(data[:TRACE_DROPPED_MAX])
        more = f", first {len(shown)} of {len(data)} bytes" if len(data) > len(shown) else ""
        self.tracer.emit(
            self.remote,
            self.local,
            Layer.CMUX,
            f"frames dropped: {self.parser.bad_fcs} bad FCS, {self.parser.malformed} malformed so far{more}",
            shown,
            error=True,
        )

    def _shutdown(self) -> None:
        self._closed.set()
        for dlc in self._dlcs.values():
            dlc.state = DlcState.CLOSED
            dlc.eof = True
            dlc.rx_event.set()
            dlc.answer.set()
            dlc.fc_event.set()
        for event, _ in self._control_answer.values():
            event.set()
        self._accepted_tx.close()

    async def _handle(self, frame: Frame) -> None:
        dlc = self._dlc(frame.dlci)
        if frame.type is FrameType.SABM:
            # DLC 0 comes first (section 5.4.1); DLCI 62 cannot be used in the basic option: a response on it has
            # the address octet F9, the flag
            if frame.dlci == 0 or (
                frame.dlci != 62 and self._dlc(0).state is DlcState.OPEN and self.accept_filter(frame.dlci)
            ):
                fresh = dlc.state is not DlcState.OPEN
                if fresh:
                    # a new establishment, in the same step as the state: a task closing the previous one may run
                    # while the UA is written and must see that the DLC is no longer its to close
                    dlc.state = DlcState.OPEN
                    dlc.generation += 1
                    dlc.eof = False
                    dlc.local_closed = False
                    dlc.rx.clear()
                    dlc.fresh_flow()
                await self._send_frame(frame.dlci, FrameType.UA, False, True)
                if fresh and frame.dlci != 0:
                    stream = DlcStream(self, frame.dlci, dlc.generation)
                    dlc.stream = stream
                    await self._announce_signals(dlc)
                    try:
                        self._accepted_tx.send_nowait(stream)
                    except trio.WouldBlock:
                        pass
            else:
                self.stats.dm_sent += 1
                await self._send_frame(frame.dlci, FrameType.DM, False, True)
        elif frame.type is FrameType.DISC:
            if dlc.state is DlcState.CLOSED:
                self.stats.dm_sent += 1
                await self._send_frame(frame.dlci, FrameType.DM, False, True)
                return
            await self._send_frame(frame.dlci, FrameType.UA, False, True)
            dlc.state = DlcState.CLOSED
            dlc.eof = True
            dlc.rx_event.set()
            dlc.answer.set()
            dlc.fc_event.set()  # a sender held by flow control finds the DLC released
            dlc.n1 = None
            if frame.dlci == 0:
                self._closing_done()
        elif frame.type in (FrameType.UA, FrameType.DM):
            dlc.answered = frame.type
            dlc.answer.set()
            if frame.dlci == 0 and dlc.state is DlcState.CLOSING:
                self._closing_done()  # the answer to our DISC of DLC 0 (section 5.8.1): the line is AT again
        elif frame.type in (FrameType.UIH, FrameType.UI):
            if frame.dlci == 0:
                await self._control(frame.info)
            elif dlc.state is DlcState.OPEN or dlc.state is DlcState.CLOSING:
                dlc.rx += frame.info
                dlc.rx_event.set()
                if len(dlc.rx) > RX_HIGH and not dlc.our_fc:
                    dlc.our_fc = True
                    await self._send_control(
                        ControlMessage(
                            ControlType.MSC, True, msc_value(dlc.dlci, MSC_FC | MSC_RTC | MSC_RTR | MSC_DV)
                        )
                    )
            else:
                self.stats.dm_sent += 1
                self.tracer.emit(
                    self.remote,
                    self.local,
                    Layer.CMUX,
                    f"data on DLC {frame.dlci} in state {dlc.state.value} (establishment {dlc.generation}): DM",
                    frame.info,
                    error=True,
                )
                await self._send_frame(frame.dlci, FrameType.DM, False, True)

    async def _control(self, info: bytes) -> None:
        try:
            messages = decode_control(info)
        except ValueError:
            self.tracer.emit(
                self.remote, self.local, Layer.CMUX, "malformed control message", info, error=True
            )
            return
        for message in messages:
            if not message.command:
                waiter = self._control_answer.get(message.type)
                if waiter is not None:
                    waiter[1].append(message)
                    waiter[0].set()
                    if message.type == ControlType.CLD:
                        self._closing_done()  # our close-down is answered: nothing after it is a frame
                continue
            kind = message.type
            if kind == ControlType.MSC and message.value:
                target = self._dlcs.get(message.value[0] >> 2)
                if target is None or target.state is DlcState.CLOSED or not target.dlci:
                    # answered below, so the peer's T2 does not run out, but no state is made for a DLC that is
                    # not there (Linux n_gsm ignores it altogether)
                    self.tracer.emit(
                        self.remote,
                        self.local,
                        Layer.CMUX,
                        f"MSC for DLC {message.value[0] >> 2}, which is not open: answered, signals not kept",
                        message.encode(),
                        error=True,
                    )
                else:
                    signals = message.value[1] if len(message.value) > 1 else 0
                    target.peer_signals = signals
                    target.peer_fc = bool(signals & MSC_FC)
                    if not target.peer_fc:
                        target.fc_event.set()
                await self._send_control(ControlMessage(kind, False, message.value))
            elif kind == ControlType.PN and len(message.value) == 8:
                await self._send_control(ControlMessage(kind, False, self._answer_pn(message.value)))
            elif kind == ControlType.TEST:
                await self._send_control(ControlMessage(kind, False, message.value))
            elif kind == ControlType.FCOFF:
                self._peer_fcoff = True
                await self._send_control(ControlMessage(kind, False))
            elif kind == ControlType.FCON:
                self._peer_fcoff = False
                for each in self._dlcs.values():
                    each.fc_event.set()
                await self._send_control(ControlMessage(kind, False))
            elif kind == ControlType.CLD:
                await self._send_control(ControlMessage(kind, False))
                self._closing_done()
            elif kind == ControlType.PSC:
                await self._send_control(ControlMessage(kind, False, message.value))
            else:
                self.stats.nsc_sent += 1
                await self._send_control(ControlMessage(ControlType.NSC, False, bytes((kind | 2 | 1,))))

    def _answer_pn(self, proposal: bytes) -> bytes:
        """Our PN response (section 5.4.6.3.1), and the N1 it agrees kept for the DLC's sending: UIH frames and
        convergence layer type 1 (the only ones we do) whatever was proposed; the proposed N1 when it is 1..our
        limit, else our limit (+CMUX's N1, or any length when +CMUX left it at its default of 31)."""
        value = bytearray(proposal)
        dlci = value[0] & 0x3F
        limit = self._n1 if self.params.n1 > 31 else 32767
        proposed = int.from_bytes(value[4:6], "little")
        n1 = proposed if 1 <= proposed <= limit else limit
        value[1] = 0  # I = 0 (UIH), CL = 0 (type 1)
        value[4:6] = n1.to_bytes(2, "little")
        if dlci and dlci != 62:
            self._dlc(dlci).n1 = n1
        return bytes(value)

    # --- DLC management --------------------------------------------------------------------------------------

    async def _exchange(self, dlci: int, ftype: FrameType, event_ok: str) -> FrameType:
        """Sends SABM or DISC and waits for UA/DM, retrying N2 times at T1."""
        dlc = self._dlc(dlci)
        for attempt in range(self.params.n2 + 1):
            if attempt:
                self.stats.retransmissions += 1
            dlc.answer = trio.Event()
            dlc.answered = None
            await self._send_frame(dlci, ftype, True, True)
            # T1 grows with each retry (T1, 2 T1, 3 T1...): 27.010 keeps it fixed, but a peer that is slow under
            # load (a scenario on 2 busy cores) answers late rather than never, and a fixed 100 ms gave up on it
            with trio.move_on_after(self.params.t1 * (1 + attempt)):
                await dlc.answer.wait()
            if dlc.answered is not None:
                return dlc.answered
            if self._closed.is_set():
                raise MuxClosed("the multiplexer closed")
        raise MuxTimeout(f"no answer to {ftype.name} on DLC {dlci} after {self.params.n2 + 1} tries")

    async def open_dlc(self, dlci: int) -> DlcStream:
        if self._closed.is_set():
            raise MuxClosed("the multiplexer is closed")
        if not 0 <= dlci <= 63 or dlci == 62:
            raise ValueError(
                f"DLCI {dlci} is not 0..61 or 63 (62's responses would have the flag as address)"
            )
        if dlci != 0 and self._dlc(0).state is not DlcState.OPEN:
            await self.open_dlc(0)
        dlc = self._dlc(dlci)
        if dlc.state is DlcState.OPEN:
            raise MuxError(f"DLC {dlci} is already open")
        dlc.move("open")
        try:
            answer = await self._exchange(dlci, FrameType.SABM, "ua")
        except BaseException:
            # cancelled too (a caller's timeout): OPENING would refuse every later attempt on this DLC
            dlc.state = DlcState.CLOSED
            raise
        if answer is FrameType.DM:
            dlc.move("dm")
            raise DlcRefused(f"the peer refused DLC {dlci} (DM)")
        dlc.move("ua")
        dlc.eof = False
        dlc.local_closed = False
        dlc.generation += 1
        dlc.fresh_flow()
        stream = DlcStream(self, dlci, dlc.generation)
        dlc.stream = stream
        if dlci != 0:
            # the DLC is open at both ends now: a cancel must not lose the stream of it, so the MSC that follows
            # is shielded (within T1) and the open completes; the caller's next checkpoint sees the cancel
            with trio.CancelScope(shield=True), trio.move_on_after(self.params.t1):
                try:
                    await self._announce_signals(dlc)
                except MuxClosed:
                    pass  # the line went away: the stream reports it at its first use
        return stream

    async def _announce_signals(self, dlc: _Dlc) -> None:
        """MSC with our V.24 signals: section 5.4.6.3.7 wants one sent on a new DLC before any user data (and
        Linux n_gsm raises the DLC's carrier from its DV bit)."""
        signals = MSC_RTC | MSC_RTR | MSC_DV | (MSC_FC if dlc.our_fc else 0)
        await self._send_control(ControlMessage(ControlType.MSC, True, msc_value(dlc.dlci, signals)))

    async def accept_dlc(self) -> DlcStream:
        try:
            return await self._accepted_rx.receive()
        except trio.EndOfChannel as exc:
            raise MuxClosed("the multiplexer closed") from exc

    async def close_down(self) -> None:
        """CLD (section 5.8.2): both sides leave multiplexer mode; run() returns."""
        if self._closed.is_set():
            return
        event = trio.Event()
        self._control_answer[ControlType.CLD] = (event, [])
        try:
            await self._send_control(ControlMessage(ControlType.CLD, True))
            with trio.move_on_after(self.params.t2 * (self.params.n2 + 1)):
                await event.wait()
        except MuxClosed:
            pass
        finally:
            self._control_answer.pop(ControlType.CLD, None)
            self._closing_done()

    async def test(self, pattern: bytes) -> bytes:
        """Test command (section 5.4.6.3.4): returns the peer's echo."""
        event = trio.Event()
        answers: list[ControlMessage] = []
        self._control_answer[ControlType.TEST] = (event, answers)
        try:
            await self._send_control(ControlMessage(ControlType.TEST, True, pattern))
            with trio.fail_after(self.params.t2 * (self.params.n2 + 1)):
                await event.wait()
        finally:
            self._control_answer.pop(ControlType.TEST, None)
        if not answers:
            raise MuxClosed("the multiplexer closed")
        return answers[0].value

    async def send_fc(self, off: bool) -> None:
        """FCoff / FCon for the whole multiplexer (section 5.4.6.3.5-6)."""
        await self._send_control(ControlMessage(ControlType.FCOFF if off else ControlType.FCON, True))

    # --- DLC I/O (used by DlcStream) -----------------------------------------------------------------------------

    async def _wait_flow(self, dlc: _Dlc, generation: int) -> None:
        """Returns once we may send on this establishment of the DLC (no MSC FC, no FCoff); raises
        BrokenResourceError once it is gone (released, closed, re-established for another stream)."""
        while True:
            if dlc.generation != generation or dlc.state is not DlcState.OPEN or self._closed.is_set():
                raise trio.BrokenResourceError(f"DLC {dlc.dlci} is closed")
            if not (dlc.peer_fc or self._peer_fcoff):
                return
            if dlc.fc_event.is_set():
                dlc.fc_event = trio.Event()
                continue  # look again before waiting on the fresh event: nothing is missed
            await dlc.fc_event.wait()

    async def _dlc_send(self, dlc: _Dlc, data: bytes | bytearray | memoryview, generation: int) -> None:
        n1 = dlc.n1 or self._n1
        view = memoryview(data)
        while view:
            await self._wait_flow(dlc, generation)
            # up to WRITE_BATCH bytes of frames in one write; flow control is looked at between batches (a batch
            # is like bytes already on the wire when the peer's FC arrives)
            batch = view[:WRITE_BATCH]
            view = view[WRITE_BATCH:]
            try:
                await self._send_frames(
                    dlc.dlci,
                    FrameType.UIH,
                    True,
                    False,
                    [batch[i : i + n1] for i in range(0, len(batch), n1)],
                )
            except MuxClosed as exc:
                raise trio.BrokenResourceError("the line went away") from exc

    async def _dlc_receive(self, dlci: int, max_bytes: int, generation: int) -> tuple[bytes, bool]:
        """Up to max_bytes of the DLC's data, and whether it had to wait for them (a schedule point).

        trio's Stream contract: a cancelled receive_some consumed nothing. So every await (waiting for data, and
        the MSC that turns the peer's flow back on when this read takes the buffer below RX_LOW) comes before the
        data leaves the buffer; the take itself is synchronous. A read cancelled during that MSC keeps `our_fc`
        set, so the next read sends it again."""
        dlc = self._dlc(dlci)
        waited = False
        while True:
            while not dlc.rx or dlc.generation != generation:
                if dlc.generation != generation:
                    return b"", waited  # released (and maybe established again for a new stream): end of file
                if dlc.local_closed:
                    raise trio.ClosedResourceError(f"DLC {dlci} is closed")
                if dlc.eof or dlc.state is DlcState.CLOSED or self._closed.is_set():
                    return b"", waited
                dlc.rx_event = trio.Event()
                await dlc.rx_event.wait()
                waited = True
            if not (dlc.our_fc and len(dlc.rx) - min(len(dlc.rx), max_bytes) < RX_LOW):
                break
            try:
                await self._send_control(
                    ControlMessage(ControlType.MSC, True, msc_value(dlci, MSC_RTC | MSC_RTR | MSC_DV))
                )
            except MuxClosed:
                pass
            # only once the peer has been told: the buffer may have changed meanwhile, so look at it again
            dlc.our_fc = False
        return _take(dlc.rx, max_bytes), waited

    async def _dlc_close(self, dlci: int, generation: int) -> None:
        dlc = self._dlc(dlci)
        if dlc.generation != generation:
            return  # the peer released it already and it was established again: not ours to close
        if dlc.state is not DlcState.OPEN or self._closed.is_set():
            dlc.state = DlcState.CLOSED
            return
        dlc.move("close")
        dlc.fc_event.set()  # a sender of this stream held by flow control finds it closed
        try:
            await self._exchange(dlci, FrameType.DISC, "ua")
        except MuxError:
            pass
        finally:
            if dlci == 0:
                self._closing_done()  # DISC of DLC 0 closes the multiplexer (section 5.8.1), answered or not
        if dlc.generation == generation:
            dlc.state = DlcState.CLOSED
            dlc.n1 = None


def _take(rx: bytearray, max_bytes: int) -> bytes:
    """Takes up to max_bytes from the front of a DLC's receive buffer."""
    if len(rx) <= max_bytes:
        data = bytes(rx)
        rx.clear()
    else:
        data = bytes(rx[:max_bytes])
        del rx[:max_bytes]
    return data


class DlcStream(trio.abc.Stream):
    """One open DLC. aclose() sends DISC; receive_some returns b"" once the peer closed it (or the mux closed)."""

    def __init__(self, mux: Mux, dlci: int, generation: int) -> None:
        self.mux = mux
        self.dlci = dlci
        self.generation = generation
        self._closed = False
        self._sending = False
        self._receiving = False

    def _enter(self, busy: bool, what: str) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"DLC {self.dlci} is closed")
        if busy:
            raise trio.BusyResourceError(f"another task is already {what} on DLC {self.dlci}")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._enter(self._sending, "sending")
        self._sending = True
        try:
            mux = self.mux
            dlc = mux._dlcs.get(self.dlci)
            if (
                data
                and dlc is not None
                and dlc.generation == self.generation
                and dlc.state is DlcState.OPEN
                and len(data) <= (dlc.n1 or mux._n1)
                and not (dlc.peer_fc or mux._peer_fcoff or mux._closed.is_set())
            ):
                # the common case, one frame and nothing to wait for: the line's send_all is the checkpoint; no
                # copy here, the frame is joined (copied) before its write and nothing is kept after we return
                try:
                    await mux._send_frame(self.dlci, FrameType.UIH, True, False, data)
                except MuxClosed as exc:
                    raise trio.BrokenResourceError("the line went away") from exc
                return
            # the line's send_all is the schedule point of a non-empty send; an empty one checkpoints here
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._closed:
                raise trio.ClosedResourceError(f"DLC {self.dlci} is closed")
            if self.mux._dlc(self.dlci).generation != self.generation:
                raise trio.BrokenResourceError(f"DLC {self.dlci} was released")
            if data:
                await self.mux._dlc_send(self.mux._dlc(self.dlci), data, self.generation)
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                if self.mux._dlc(self.dlci).state is not DlcState.OPEN:
                    raise trio.BrokenResourceError(f"DLC {self.dlci} is closed")
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        self._enter(self._sending, "sending")
        mux = self.mux
        dlc = mux._dlc(self.dlci)
        if dlc.generation == self.generation and (dlc.peer_fc or mux._peer_fcoff):
            try:
                await mux._wait_flow(dlc, self.generation)
            except trio.BrokenResourceError:
                pass  # a send now would not block: it fails at once
        else:
            await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and operator.index(max_bytes) < 1:
            raise ValueError("max_bytes must be at least 1")
        self._enter(self._receiving, "receiving")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            dlc = self.mux._dlcs.get(self.dlci)
            if dlc is not None and dlc.rx and dlc.generation == self.generation and not dlc.our_fc:
                # data already here and no flow-control MSC to send: the common case of a busy DLC
                data = _take(dlc.rx, max_bytes or 65536)
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            data, waited = await self.mux._dlc_receive(self.dlci, max_bytes or 65536, self.generation)
            if self._closed:
                raise trio.ClosedResourceError(f"DLC {self.dlci} is closed")
            if not waited:  # waiting for the data was this call's schedule point already
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        dlc = self.mux._dlc(self.dlci)
        if dlc.generation != self.generation:
            # released already, and maybe established again for another stream: nothing of ours to close
            await trio.lowlevel.checkpoint()
            return
        dlc.local_closed = True
        dlc.rx_event.set()
        with trio.CancelScope(shield=True), trio.move_on_after(self.mux.params.t1 * (self.mux.params.n2 + 2)):
            await self.mux._dlc_close(self.dlci, self.generation)
        await trio.lowlevel.checkpoint()
