"""3GPP TS 27.010 multiplexer (basic option) over any trio Stream, in either role; each open DLC is a trio Stream.

A thin trio adapter around the sans-IO `CmuxConnection` (link/cmux_connection.py), which holds every rule of
27.010: DLC states and their table, the answers to the peer's frames, the control channel, T1/T2/N2 and flow
control. This module only owns the line, the tasks and the streams:

- one task (`run`) reads the line, feeds the connection, hands each DLC its data and writes the connection's
  answers; senders write their frames directly, one write at a time (frames never interleave on the line);
- a task waiting for an answer (open, close, close-down, Test) runs the connection's timer and calls
  `timer_expired` when it runs out;
- every frame written or read, and every frame the connection refuses, is a trace event (kinds cmux.frame,
  cmux.control, cmux.data, cmux.error of bipsim.trace.kinds).

Cancellation follows trio's Stream contract: a cancelled DlcStream.receive_some consumed nothing (every await, the
flow-control MSC included, comes before data leaves the DLC's buffer); a cancelled send_all leaves that DLC's
stream in an unknown state (some frames sent); an open_dlc that has its UA returns the stream (the DLC is open at
both ends; the MSC announcing our signals is written by the reader). A frame cut short on the line by a cancel is
dropped by the peer's parser at the next flag; it is not shielded, since a stalled line must not make a cancel
hang.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from bipsim.link.cmux_connection import (
    RX_HIGH,
    RX_LOW,
    CloseDown,
    CloseReason,
    CmuxConnection,
    CmuxParams,
    Data,
    DlcClosed,
    DlcOpened,
    DlcRefused,
    DlcState,
    Event,
    FlowControl,
    FrameReceived,
    FramesDropped,
    ModemStatus,
    MuxClosed,
    MuxError,
    MuxRole,
    MuxStats,
    MuxTimeout,
    PeerError,
    TestAnswer,
    Timer,
)
from bipsim.link.cmux_frame import ControlType, Frame, FrameParser, FrameType, decode_control
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer

__all__ = [
    "RX_HIGH",
    "RX_LOW",
    "CmuxParams",
    "DlcRefused",
    "DlcState",
    "DlcStream",
    "Mux",
    "MuxClosed",
    "MuxError",
    "MuxRole",
    "MuxStats",
    "MuxTimeout",
]

TRACE_DROPPED_MAX = 1024
# a DLC send of more than N1 bytes writes its frames this many bytes of data at a time
WRITE_BATCH = 64 * 1024
_CONTROL_NAMES = {int(t): t.name for t in ControlType}


@dataclass
class _Dlc:
    """The adapter's side of a DLC: its receive buffer and the tasks waiting on it. States live in the
    connection."""

    rx: bytearray = field(default_factory=bytearray)
    rx_event: trio.Event = field(default_factory=trio.Event)
    answer: trio.Event = field(default_factory=trio.Event)  # an open or close got its outcome
    fc_event: trio.Event = field(default_factory=trio.Event)
    local_closed: bool = False


def frame_trace(frame: Frame) -> tuple[str, Kind, dict[str, Any]]:
    """The summary, kind and fields of a frame's trace event (docs/protocols.md, "Traces")."""
    summary = frame.describe()
    if frame.type is not FrameType.UIH and frame.type is not FrameType.UI:
        return summary, Kind.CMUX_FRAME, {"dlci": frame.dlci, "frame": frame.type.name, "pf": frame.pf}
    if frame.dlci:
        return summary, Kind.CMUX_DATA, {"dlci": frame.dlci, "size": len(frame.info)}
    try:
        messages = decode_control(frame.info)
    except ValueError:
        return summary, Kind.CMUX_CONTROL, {"message": "malformed"}
    fields: dict[str, Any] = {
        "message": ",".join(_CONTROL_NAMES.get(m.type, f"{m.type:#04x}") for m in messages),
        "command": all(m.command for m in messages),
    }
    if messages and messages[0].type == ControlType.MSC and messages[0].value:
        fields["dlci"] = messages[0].value[0] >> 2
        if len(messages[0].value) > 1:
            fields["signals"] = messages[0].value[1]
    return summary, Kind.CMUX_CONTROL, fields


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
        self._trace_frames = tracer is not NULL_TRACER
        self.connection = CmuxConnection(role, self.params, accept=accept, record_frames=self._trace_frames)
        self._dlcs: dict[int, _Dlc] = {}
        # told (dlci, V.24 signal octet) of each MSC the peer sends: a data call watches DTR (RTC) for V.250 &D
        self.signal_listeners: list[Callable[[int, int], None]] = []
        # frames must not interleave on the line: a flag and a parking lot, cheaper than trio.Lock per frame
        self._line_busy = False
        self._line_waiters = trio.lowlevel.ParkingLot()
        self._accepted_tx, self._accepted_rx = trio.open_memory_channel[DlcStream](64)
        self._test_event = trio.Event()  # a TestAnswer arrived
        self._cld_event = trio.Event()  # the multiplexer closed
        self._test_answer: bytes | None = None
        self._out_parser = FrameParser()  # reads back what we write, for its trace events
        self.line_eof = False  # run() ended because the line went away (not a close-down)
        self.leftover = b""  # after a close-down: line bytes that followed the closing frame (see run)
        self._read_scope: trio.CancelScope | None = None
        self._reader: trio.lowlevel.Task | None = None

    @property
    def parser(self) -> FrameParser:
        return self.connection.parser

    @property
    def stats(self) -> MuxStats:
        return self.connection.stats

    @property
    def closed(self) -> bool:
        return self.connection.closed

    def _dlc(self, dlci: int) -> _Dlc:
        dlc = self._dlcs.get(dlci)
        if dlc is None:
            dlc = self._dlcs[dlci] = _Dlc()
        return dlc

    # --- output ------------------------------------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        """Writes whole frames to the line, one write at a time."""
        # the free line is taken without a schedule point: line.send_all is this write's checkpoint
        if self._line_busy:
            await self._line_waiters.park()  # the releaser hands the line over to us (fair, as trio.Lock)
        else:
            self._line_busy = True
        try:
            if self._trace_frames:
                self._trace_out(data)
            try:
                await self.line.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.connection.shutdown()
                self._dispatch()
                raise MuxClosed("the line went away") from exc
        finally:
            if self._line_waiters:
                self._line_waiters.unpark()  # stays busy: owned by the task woken
            else:
                self._line_busy = False

    def _trace_out(self, data: bytes) -> None:
        for frame in self._out_parser.feed(data):
            summary, kind, fields = frame_trace(frame)
            self.tracer.emit(
                self.local, self.remote, Layer.CMUX, summary, frame.encode(), kind=kind, fields=fields
            )

    # --- events --------------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        dlcs = self._dlcs
        for event in self.connection.next_events():
            if type(event) is Data:
                dlc = dlcs.get(event.dlci) or self._dlc(event.dlci)
                dlc.rx += event.data
                dlc.rx_event.set()
            else:
                self._on_event(event)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, FrameReceived):
            summary, kind, fields = frame_trace(event.frame)
            self.tracer.emit(
                self.remote, self.local, Layer.CMUX, summary, event.frame.encode(), kind=kind, fields=fields
            )
        elif isinstance(event, DlcOpened):
            dlc = self._dlc(event.dlci)
            dlc.rx.clear()
            dlc.local_closed = False
            self._wake(dlc)
            if event.by_peer and event.dlci:
                try:
                    self._accepted_tx.send_nowait(DlcStream(self, event.dlci, event.generation))
                except (trio.WouldBlock, trio.ClosedResourceError):
                    pass
        elif isinstance(event, DlcClosed):
            self._wake(self._dlc(event.dlci))
        elif isinstance(event, ModemStatus):
            if not event.flow_stopped:
                self._dlc(event.dlci).fc_event.set()
            for listener in list(self.signal_listeners):
                listener(event.dlci, event.signals)
        elif isinstance(event, FlowControl):
            if not event.stopped:
                for dlc in self._dlcs.values():
                    dlc.fc_event.set()
        elif isinstance(event, TestAnswer):
            self._test_answer = event.pattern
            self._test_event.set()
        elif isinstance(event, CloseDown):
            self._cld_event.set()
            self._closing_done()
        elif isinstance(event, FramesDropped):
            # 27.010 discards a frame with a bad FCS or structure without an answer (section 5.2.1.6); the trace
            # still says so, with the read that held it (its first TRACE_DROPPED_MAX bytes)
            shown = event.data[:TRACE_DROPPED_MAX]
            more = f", first {len(shown)} of {len(event.data)} bytes" if len(event.data) > len(shown) else ""
            self.tracer.emit(
                self.remote,
                self.local,
                Layer.CMUX,
                f"frames dropped: {event.bad_fcs} bad FCS, {event.malformed} malformed so far{more}",
                shown,
                error=True,
                kind=Kind.CMUX_ERROR,
                fields={"bad_fcs": event.bad_fcs, "malformed": event.malformed},
            )
        elif isinstance(event, PeerError):
            self.tracer.emit(
                self.remote,
                self.local,
                Layer.CMUX,
                event.summary,
                event.data,
                error=True,
                kind=Kind.CMUX_ERROR,
                fields={"dlci": event.dlci, "error": type(event.error).__name__, "answer": event.answer},
            )

    @staticmethod
    def _wake(dlc: _Dlc) -> None:
        """An establishment began or ended: readers, senders held by flow control and the opener look again."""
        dlc.rx_event.set()
        dlc.answer.set()
        dlc.fc_event.set()

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
                self.leftover = self.connection.take_leftover()
            self._shutdown()

    async def _read_loop(self) -> None:
        connection = self.connection
        receive = self.line.receive_some
        while not connection.closed:
            try:
                data = await receive(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.line_eof = True
                return
            connection.receive_data(data)
            # events first, then the answers: a task woken by them (an opener given its UA) has its outcome even
            # if the answer's write then waits for the line
            self._dispatch()
            answers = connection.data_to_send()
            if answers:
                await self._write(answers)

    def _closing_done(self) -> None:
        """The multiplexer is closed (CLD or DLC 0 released): the reader stops at once, the line is AT again."""
        if self._read_scope is not None and trio.lowlevel.current_task() is not self._reader:
            self._read_scope.cancel()

    def _shutdown(self) -> None:
        self.connection.shutdown()
        self._dispatch()
        for dlc in self._dlcs.values():
            self._wake(dlc)
        self._test_event.set()
        self._cld_event.set()
        self._accepted_tx.close()

    # --- DLC management --------------------------------------------------------------------------------------

    async def _run_timer(
        self, timer: Timer, done: Callable[[], bool], event: Callable[[], trio.Event]
    ) -> None:
        """Waits until `done()` or the timer stops, sending the connection's retransmissions when it runs out."""
        while not done():
            seconds = self.connection.timer_seconds(timer)
            if seconds is None:
                return
            with trio.move_on_after(seconds):
                await event().wait()
            if done():
                return
            if self.connection.timer_seconds(timer) is None:
                return
            data = self.connection.timer_expired(timer)
            self._dispatch()
            if data:
                await self._write(data)

    async def _exchange(self, dlci: int, command: bytes, generation: int) -> None:
        """Writes SABM or DISC and waits for the answer, retransmitting at T1 (the connection decides)."""
        dlc = self._dlc(dlci)
        connection = self.connection
        pending = DlcState.OPENING if connection.dlc_state(dlci) is DlcState.OPENING else DlcState.CLOSING

        def done() -> bool:
            return connection.generation(dlci) != generation or connection.dlc_state(dlci) is not pending

        def event() -> trio.Event:
            dlc.answer = trio.Event()
            return dlc.answer

        try:
            await self._write(command)
            await self._run_timer(Timer("T1", dlci), done, event)
        except BaseException:
            # cancelled too (a caller's timeout): OPENING would refuse every later attempt on this DLC
            if connection.generation(dlci) == generation:
                connection.abandon(dlci)
                self._dispatch()
            raise

    async def open_dlc(self, dlci: int) -> DlcStream:
        connection = self.connection
        if connection.closed:
            raise MuxClosed("the multiplexer is closed")
        if 0 < dlci <= 63 and dlci != 62 and connection.dlc_state(0) is not DlcState.OPEN:
            await self.open_dlc(0)
        generation = connection.generation(dlci)
        command = connection.open_dlc(dlci)
        await self._exchange(dlci, command, generation)
        if connection.generation(dlci) != generation:
            return DlcStream(self, dlci, generation + 1)
        reason = connection.closed_reason(dlci)
        if reason is CloseReason.REFUSED:
            raise DlcRefused(f"the peer refused DLC {dlci} (DM)")
        if reason is CloseReason.TIMEOUT:
            raise MuxTimeout(f"no answer to SABM on DLC {dlci} after {self.params.n2 + 1} tries")
        raise MuxClosed("the multiplexer closed")

    async def accept_dlc(self) -> DlcStream:
        try:
            return await self._accepted_rx.receive()
        except trio.EndOfChannel as exc:
            raise MuxClosed("the multiplexer closed") from exc

    async def close_down(self) -> None:
        """CLD (section 5.8.2): both sides leave multiplexer mode; run() returns."""
        connection = self.connection
        command = connection.close_down()
        if not command:
            return

        def event() -> trio.Event:
            self._cld_event = trio.Event()
            return self._cld_event

        try:
            await self._write(command)
            await self._run_timer(Timer("T2", ControlType.CLD), lambda: connection.closed, event)
        except MuxClosed:
            pass
        finally:
            if not connection.closed:
                connection.shutdown()
                self._dispatch()
            self._closing_done()

    async def test(self, pattern: bytes) -> bytes:
        """Test command (section 5.4.6.3.4): returns the peer's echo."""
        self._test_answer = None

        def event() -> trio.Event:
            self._test_event = trio.Event()
            return self._test_event

        await self._write(self.connection.test(pattern))
        await self._run_timer(Timer("T2", ControlType.TEST), lambda: self._test_answer is not None, event)
        if self._test_answer is None:
            if self.connection.closed:
                raise MuxClosed("the multiplexer closed")
            raise MuxTimeout("no answer to Test")
        return self._test_answer

    async def send_fc(self, off: bool) -> None:
        """FCoff / FCon for the whole multiplexer (section 5.4.6.3.5-6)."""
        await self._write(self.connection.send_fc(off))

    # --- DLC I/O (used by DlcStream) -----------------------------------------------------------------------------

    async def _wait_flow(self, dlci: int, generation: int) -> None:
        """Returns once we may send on this establishment of the DLC (no MSC FC, no FCoff); raises
        BrokenResourceError once it is gone (released, closed, re-established for another stream)."""
        connection = self.connection
        dlc = self._dlc(dlci)
        while True:
            if not connection.is_open(dlci, generation):
                raise trio.BrokenResourceError(f"DLC {dlci} is closed")
            if connection.may_send(dlci, generation):
                return
            if dlc.fc_event.is_set():
                dlc.fc_event = trio.Event()
                continue  # look again before waiting on the fresh event: nothing is missed
            await dlc.fc_event.wait()

    async def _dlc_send(self, dlci: int, data: bytes | bytearray | memoryview, generation: int) -> None:
        view = memoryview(data)
        while view:
            await self._wait_flow(dlci, generation)
            # up to WRITE_BATCH bytes of frames in one write; flow control is looked at between batches (a batch
            # is like bytes already on the wire when the peer's FC arrives)
            batch = view[:WRITE_BATCH]
            view = view[WRITE_BATCH:]
            try:
                await self._write(self.connection.send_data(dlci, generation, batch))
            except MuxClosed as exc:
                raise trio.BrokenResourceError("the line went away") from exc

    async def _dlc_receive(self, dlci: int, max_bytes: int, generation: int) -> tuple[bytes, bool]:
        """Up to max_bytes of the DLC's data, and whether it had to wait for them (a schedule point).

        trio's Stream contract: a cancelled receive_some consumed nothing. So every await (waiting for data, and
        the MSC that turns the peer's flow back on when this read takes the buffer below RX_LOW) comes before the
        data leaves the buffer; the take itself is synchronous. A read cancelled during that MSC leaves the
        connection's FC set, so the next read sends it again."""
        connection = self.connection
        dlc = self._dlc(dlci)
        waited = False
        while True:
            while not dlc.rx or connection.generation(dlci) != generation:
                if connection.generation(dlci) != generation:
                    return b"", waited  # released (and maybe established again for a new stream): end of file
                if dlc.local_closed:
                    raise trio.ClosedResourceError(f"DLC {dlci} is closed")
                if connection.dlc_state(dlci) is DlcState.CLOSED or connection.closed:
                    return b"", waited
                dlc.rx_event = trio.Event()
                await dlc.rx_event.wait()
                waited = True
            resume = connection.resume_frame(dlci, len(dlc.rx) - min(len(dlc.rx), max_bytes))
            if resume is None:
                break
            try:
                await self._write(resume)
            except MuxClosed:
                pass
            # only once the peer has been told: the buffer may have changed meanwhile, so look at it again
            connection.flow_resumed(dlci)
        data = _take(dlc.rx, max_bytes)
        connection.consumed(dlci, len(data))
        return data, waited

    async def _dlc_close(self, dlci: int, generation: int) -> None:
        command = self.connection.close_dlc(dlci, generation)
        if not command:
            return  # released already, maybe established again: not ours to close
        self._dlc(dlci).fc_event.set()  # a sender of this stream held by flow control finds it closed
        try:
            await self._exchange(dlci, command, generation)
        except MuxError:
            pass


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
            connection = mux.connection
            if data and connection.may_send(self.dlci, self.generation):
                # the common case, nothing to wait for: the line's send_all is the checkpoint; the frames are
                # joined (copied) before their write and nothing is kept after we return
                if len(data) <= WRITE_BATCH:
                    try:
                        await mux._write(connection.send_data(self.dlci, self.generation, data))
                    except MuxClosed as exc:
                        raise trio.BrokenResourceError("the line went away") from exc
                    return
            # the line's send_all is the schedule point of a non-empty send; an empty one checkpoints here
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._closed:
                raise trio.ClosedResourceError(f"DLC {self.dlci} is closed")
            if connection.generation(self.dlci) != self.generation:
                raise trio.BrokenResourceError(f"DLC {self.dlci} was released")
            if data:
                await mux._dlc_send(self.dlci, data, self.generation)
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                if connection.dlc_state(self.dlci) is not DlcState.OPEN:
                    raise trio.BrokenResourceError(f"DLC {self.dlci} is closed")
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        self._enter(self._sending, "sending")
        connection = self.mux.connection
        if connection.is_open(self.dlci, self.generation) and not connection.may_send(
            self.dlci, self.generation
        ):
            try:
                await self.mux._wait_flow(self.dlci, self.generation)
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
            mux = self.mux
            dlc = mux._dlcs.get(self.dlci)
            connection = mux.connection
            if dlc is not None and dlc.rx and connection.readable(self.dlci, self.generation):
                # data already here and no flow-control MSC to send: the common case of a busy DLC
                data = _take(dlc.rx, max_bytes or 65536)
                connection.consumed(self.dlci, len(data))
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            data, waited = await mux._dlc_receive(self.dlci, max_bytes or 65536, self.generation)
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
        mux = self.mux
        if mux.connection.generation(self.dlci) != self.generation:
            # released already, and maybe established again for another stream: nothing of ours to close
            await trio.lowlevel.checkpoint()
            return
        dlc = mux._dlc(self.dlci)
        dlc.local_closed = True
        dlc.rx_event.set()
        with trio.CancelScope(shield=True), trio.move_on_after(mux.params.t1 * (mux.params.n2 + 2)):
            await mux._dlc_close(self.dlci, self.generation)
        await trio.lowlevel.checkpoint()
