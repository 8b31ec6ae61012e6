"""One TCP connection of the CP's own stack as a sans-IO state machine (docs/protocols.md, "TCP in the CP's stack").

It follows RFC 9293 (segment arrival in every state, section 3.10.7; the states of figure 5 in ONE transition table,
TRANSITIONS), RFC 6298 (retransmission timer: SRTT/RTTVAR, Karn's rule, exponential backoff), RFC 5681 with the
NewReno recovery of RFC 6582 (slow start, congestion avoidance, fast retransmit on three duplicate ACKs, fast
recovery; RFC 6928's initial window; RFC 9438 CUBIC or draft-ietf-ccwg-bbr's BBR, net/tcp_bbr.py, as
options), RFC 1122 4.2.3.2 (delayed ACK), RFC 7323 section 2 (window scale), RFC 5961 (RST and SYN validation by
sequence number, challenge ACKs) and RFC 1122 4.2.2.13 (data arriving after a full close is answered with RST).

Segments and the clock go in (`receive`, `on_timer`, and the user calls `send`, `read`, `shutdown`, `close`,
`abort`, `drop`, each with `now`); segments and events come out (`outgoing`, `events`), and `next_deadline` says
when to call `on_timer`. Nothing here sleeps or does I/O: the stack (net/stack.py) and the stream adapter
(net/tcp_stream.py) do.

Sequence numbers are kept unwrapped (Python ints that grow past 2**32 from the ISS); incoming 32-bit numbers are
unwrapped against the nearest expected value, and segments carry them modulo 2**32.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address

from bipsim.net.tcp_bbr import Bbr, RateSample
from bipsim.net.tcp_segment import MAX_WINDOW_SCALE, TcpFlags, TcpSegment

__all__ = [
    "Closed",
    "Connected",
    "DataArrived",
    "IllegalTcpTransition",
    "PeerFinished",
    "Rejected",
    "Reset",
    "Retransmitted",
    "TRANSITIONS",
    "TcpConfig",
    "TcpConnection",
    "TcpEvent",
    "TcpInput",
    "TcpState",
    "TcpUsageError",
    "TimedOut",
    "WindowProbe",
    "reset_for",
]

_MASK = 0xFFFFFFFF
# what one out-of-order chunk costs beyond its bytes: Linux charges an skb's truesize (some hundreds of bytes of
# metadata) against the receive buffer, which bounds the queue a flood of tiny segments can build (CVE-2018-5390)
OOO_CHUNK_OVERHEAD = 256
MIN_PEER_MSS = 88  # the smallest MSS we send segments of, whatever the peer's SYN says (see _take_syn)
_CUBIC_BETA = 0.7  # RFC 9438 4.6
_CUBIC_C = 0.4  # RFC 9438 5
# BBR paces: a segment goes out when its pacing time is at most this far ahead (trio's timers wake in whole
# milliseconds, so a finer pace would only add wake-ups)
PACING_QUANTUM = 0.001
# a late wake-up (a loaded event loop) may send what it missed, up to this much time's worth at once: without it
# every late timer would lower the rate below the pacing rate
PACING_CATCH_UP = 0.004
Endpoint = tuple[IPv4Address, int]


class TcpState(Enum):
    """The connection states of RFC 9293 section 3.3.2."""

    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"


class TcpInput(Enum):
    """What moves a connection from one state to another (the arrows of RFC 9293 figure 5)."""

    PASSIVE_OPEN = "passive open"
    ACTIVE_OPEN = "active open"
    RECV_SYN = "SYN received"
    RECV_SYN_ACK = "SYN-ACK received"
    RECV_ACK_OF_SYN = "ACK of our SYN received"
    CLOSE = "close"
    RECV_FIN = "FIN received"
    RECV_ACK_OF_FIN = "ACK of our FIN received"
    TIME_WAIT_DONE = "2MSL timeout"
    FIN_WAIT_2_TIMEOUT = "FIN-WAIT-2 timeout"
    RECV_RST = "RST received"
    ABORT = "abort"
    GIVE_UP = "retransmissions exhausted"
    DROP = "link dropped"


class IllegalTcpTransition(RuntimeError):
    """An input that TRANSITIONS does not list for the state: a bug in this module, never a peer's doing."""

    def __init__(self, state: TcpState, event: TcpInput) -> None:
        super().__init__(f"TCP: {event.value} in state {state.value}")
        self.state = state
        self.event = event


def _table() -> dict[tuple[TcpState, TcpInput], TcpState]:
    s, i = TcpState, TcpInput
    rows = {
        (s.CLOSED, i.PASSIVE_OPEN): s.LISTEN,
        (s.CLOSED, i.ACTIVE_OPEN): s.SYN_SENT,
        (s.LISTEN, i.RECV_SYN): s.SYN_RECEIVED,
        (s.LISTEN, i.CLOSE): s.CLOSED,
        (s.SYN_SENT, i.RECV_SYN_ACK): s.ESTABLISHED,
        (s.SYN_SENT, i.RECV_SYN): s.SYN_RECEIVED,  # simultaneous open (RFC 9293 figure 8)
        (s.SYN_SENT, i.CLOSE): s.CLOSED,
        (s.SYN_RECEIVED, i.RECV_ACK_OF_SYN): s.ESTABLISHED,
        (s.ESTABLISHED, i.CLOSE): s.FIN_WAIT_1,
        (s.ESTABLISHED, i.RECV_FIN): s.CLOSE_WAIT,
        (s.FIN_WAIT_1, i.RECV_ACK_OF_FIN): s.FIN_WAIT_2,
        (s.FIN_WAIT_1, i.RECV_FIN): s.CLOSING,  # simultaneous close (RFC 9293 figure 13)
        (s.FIN_WAIT_2, i.RECV_FIN): s.TIME_WAIT,
        (s.FIN_WAIT_2, i.FIN_WAIT_2_TIMEOUT): s.CLOSED,  # a fully closed connection the peer never closes
        (s.CLOSE_WAIT, i.CLOSE): s.LAST_ACK,
        (s.CLOSING, i.RECV_ACK_OF_FIN): s.TIME_WAIT,
        (s.LAST_ACK, i.RECV_ACK_OF_FIN): s.CLOSED,
        (s.TIME_WAIT, i.TIME_WAIT_DONE): s.CLOSED,
    }
    for state in TcpState:
        for event in (i.RECV_RST, i.ABORT, i.GIVE_UP, i.DROP):
            rows[(state, event)] = s.CLOSED
    return rows


TRANSITIONS: dict[tuple[TcpState, TcpInput], TcpState] = _table()

# States in which our side may still send data (or must still retransmit it, or its FIN).
_SENDING = frozenset(
    {TcpState.ESTABLISHED, TcpState.CLOSE_WAIT, TcpState.FIN_WAIT_1, TcpState.CLOSING, TcpState.LAST_ACK}
)
# States in which the peer's data is still taken (RFC 9293 3.10.7.4, "seventh, process the segment text").
_RECEIVING = frozenset({TcpState.ESTABLISHED, TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2})


# ---------------------------------------------------------------------------------------------------------------
# events


@dataclass(frozen=True)
class Connected:
    """The handshake completed (ESTABLISHED)."""


@dataclass(frozen=True)
class DataArrived:
    """`length` in-order bytes were added to the receive buffer."""

    length: int


@dataclass(frozen=True)
class PeerFinished:
    """The peer's FIN was received in order: no more data will come (end of file after the buffer)."""


@dataclass(frozen=True)
class Reset:
    """A valid RST arrived (or our ACK check sent one and gave up); `refused` for an RST answering our SYN."""

    reason: str
    refused: bool = False


@dataclass(frozen=True)
class TimedOut:
    """The SYN or data retransmissions ran out (TcpConfig.syn_retries / data_retries)."""

    reason: str


@dataclass(frozen=True)
class Closed:
    """The connection reached CLOSED; `reason` is None after an orderly close, else what ended it."""

    reason: str | None


@dataclass(frozen=True)
class Retransmitted:
    """A segment sent again: `seq` (32-bit) and payload `length`, the RTO after backoff, "timeout" or "fast"."""

    seq: int
    length: int
    rto: float
    reason: str


@dataclass(frozen=True)
class WindowProbe:
    """The persist timer sent a zero-window probe (RFC 9293 3.8.6.1); `interval` is the next probe's delay."""

    seq: int
    interval: float


@dataclass(frozen=True)
class Rejected:
    """A segment was dropped (out of the window, an RST not at RCV.NXT, an ACK of unsent data, ...)."""

    reason: str
    answered: str  # "ack", "challenge-ack", "rst" or "" (dropped silently)


TcpEvent = (
    Connected
    | DataArrived
    | PeerFinished
    | Reset
    | TimedOut
    | Closed
    | Retransmitted
    | WindowProbe
    | Rejected
)


class TcpUsageError(RuntimeError):
    """The user called send after shutdown, or on a closed connection."""


@dataclass(frozen=True)
class TcpConfig:
    """The knobs of one connection; the defaults are the RFCs' (and Linux's, where an RFC leaves the number open).

    `min_rto` is RFC 6298 2.4's one second; lower it only on links you control. `msl` is the Maximum Segment
    Lifetime of RFC 9293 3.4.2 (TIME-WAIT lasts 2*MSL). `syn_retries` and `data_retries` cap the retransmissions of
    a SYN and of data before the connection fails with TimedOut (Linux's tcp_syn_retries 6 and tcp_retries2 15).
    `delayed_ack` is the RFC 1122 4.2.3.2 delay (at most 0.5 s; 0 acknowledges every segment at once).
    `challenge_acks_per_second` is RFC 5961 section 7's rate limit. `sack` offers and uses selective
    acknowledgments (RFC 2018 blocks in our ACKs; RFC 6675 loss recovery as a sender). `congestion` is "reno"
    (RFC 5681 congestion avoidance, halving on a loss) or "cubic" (RFC 9438: the cubic window growth and a
    decrease to 0.7, as Linux); slow start, fast retransmit and recovery are the same for both; "bbr" is
    draft-ietf-ccwg-bbr's model-based control (net/tcp_bbr.py: paced at the estimated bottleneck bandwidth, no
    window reduction for a random loss), with SACK only (without it the connection falls back to reno). With SACK, loss
    recovery is RFC 8985 RACK (time-based loss marks) with RFC 6675's pipe and RFC 6937 PRR, and
    `tail_loss_probe` sends RFC 8985's probe at 2 SRTT so a lost last segment is not left to the RTO.
    `initial_window` is in segments: 10 is RFC 6928's min(10 SMSS, max(2 SMSS, 14600 bytes)), as Linux uses; 0 is
    RFC 5681 3.1's 2 to 4 segments by SMSS. `fin_wait_2_timeout` ends a connection the
    user closed fully (`close`) whose peer acknowledged our FIN but never sends its own (Linux's tcp_fin_timeout);
    after a half close (`shutdown`) FIN-WAIT-2 lasts as long as the peer keeps sending.
    """

    mss: int = 1460
    # above the bandwidth-delay product of the faster radio profiles (lte: ~90 KB); the send buffer lets the window
    # grow past that product into the radio's queue (lte: 512 KiB, so what is in flight beyond the product still
    # fits it and a lone connection never overflows it), so that a window reduction after a random loss still
    # keeps the link busy, as Linux's autotuned buffers do (docs/performance.md)
    receive_buffer: int = 256 * 1024
    send_buffer: int = 512 * 1024
    initial_rto: float = 1.0
    min_rto: float = 1.0
    max_rto: float = 60.0
    syn_retries: int = 6
    data_retries: int = 15
    delayed_ack: float = 0.2
    msl: float = 30.0
    window_scale: bool = True
    challenge_acks_per_second: int = 10
    sack: bool = True
    congestion: str = "reno"
    fin_wait_2_timeout: float = 60.0
    tail_loss_probe: bool = True
    initial_window: int = 10

    def __post_init__(self) -> None:
        if not MIN_PEER_MSS <= self.mss <= 65495:
            raise ValueError(f"MSS {self.mss} out of range")
        if not 1 <= self.receive_buffer <= 1 << 30 or not 1 <= self.send_buffer <= 1 << 30:
            raise ValueError("buffers must be 1 byte .. 1 GiB")
        if not 0 < self.min_rto <= self.initial_rto <= self.max_rto:
            raise ValueError("need 0 < min_rto <= initial_rto <= max_rto")
        if self.congestion not in ("reno", "cubic", "bbr"):
            raise ValueError(f"congestion control {self.congestion!r}: reno, cubic or bbr")
        if not 0 <= self.delayed_ack <= 0.5:
            raise ValueError("delayed_ack must be 0 .. 0.5 s (RFC 1122 4.2.3.2)")
        if not 0 <= self.initial_window <= 10:
            raise ValueError("initial_window must be 0 (RFC 5681 3.1) .. 10 segments (RFC 6928)")


def _unwrap(wire: int, near: int) -> int:
    """The unwrapped sequence number nearest to `near` whose low 32 bits are `wire`."""
    diff = (wire - near) & _MASK
    if diff >= 1 << 31:
        diff -= 1 << 32
    return near + diff


def reset_for(segment: TcpSegment) -> TcpSegment | None:
    """The RST that answers `segment` sent to a port with no connection (RFC 9293 3.10.7.1), None for an RST."""
    if TcpFlags.RST in segment.flags:
        return None
    if TcpFlags.ACK in segment.flags:
        return TcpSegment(segment.destination_port, segment.source_port, segment.ack, 0, TcpFlags.RST, 0)
    return TcpSegment(
        segment.destination_port,
        segment.source_port,
        0,
        (segment.seq + segment.seg_len) & _MASK,
        TcpFlags.RST | TcpFlags.ACK,
        0,
    )


class TcpConnection:
    """One connection's TCB (RFC 9293 3.3.1) and its rules. Build it with `active` or `passive`."""

    def __init__(self, local: Endpoint, remote: Endpoint, *, iss: int, config: TcpConfig) -> None:
        self.local = local
        self.remote = remote
        self.config = config
        self.state = TcpState.CLOSED
        self.error: str | None = None
        self._events: list[TcpEvent] = []
        self._out: list[TcpSegment] = []
        self._active = False
        # send side (RFC 9293 3.3.1); snd_max is the highest sequence number sent so far (after an RTO, snd_nxt goes
        # back to snd_una and climbs again: go-back-N)
        self.iss = iss & _MASK
        self.snd_una = self.iss
        self.snd_nxt = self.iss
        self.snd_max = self.iss
        self.snd_wnd = 0
        self._snd_wl1 = 0
        self._snd_wl2 = 0
        self._max_snd_wnd = 0
        self._snd_wscale = 0  # the peer's shift, applied to its window field
        self._rcv_wscale = 0  # ours
        self._offer_wscale = 0
        self._snd_wscale_offered = False  # the peer's SYN carried the option
        self._sack_ok = False  # both SYNs carried SACK-permitted (RFC 2018)
        self._sacked: list[tuple[int, int]] = []  # the sender's scoreboard: SACKed ranges above snd_una
        self._ooo_recent = 0  # where the latest out-of-order data went: its block is reported first
        self._send_buf = bytearray()
        self._send_base = self.iss + 1  # sequence number of _send_buf[0]
        self._fin_queued = False  # shutdown called: a FIN follows the data
        self._close_pending = False  # shutdown in SYN-RECEIVED, applied at ESTABLISHED
        self._receive_closed = False  # full close (RFC 1122 4.2.2.13)
        self.peer_mss = 536  # RFC 9293 3.7.1 default when the SYN has no MSS option
        self.eff_mss = min(config.mss, 536)
        # receive side
        self.irs = 0
        self.rcv_nxt = 0
        self._rcv_adv = 0  # right edge of the window we advertised
        self._recv_buf = bytearray()
        self._ooo: list[tuple[int, bytearray]] = []  # out-of-order data, sorted, not overlapping
        self._ooo_cost = 0  # what _ooo holds, charged OOO_CHUNK_OVERHEAD per chunk (see _insert_ooo)
        self._ooo_full = (
            False  # out-of-order data was dropped since the queue last drained (one Rejected each)
        )
        self._peer_fin: int | None = None  # sequence number of the peer's FIN, once seen
        self._fin_received = False
        self._ack_now = False
        self._segments_unacked = 0
        self._ack_deadline: float | None = None
        # RFC 6298
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = config.initial_rto
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self._rto_deadline: float | None = None
        self._retries = 0
        self._syn_retransmitted = False
        # RFC 5681 / RFC 6582
        self.cwnd = 0
        self.ssthresh = 1 << 30
        self._dupacks = 0
        self._bytes_acked = 0
        self._cubic_w_max = 0.0  # RFC 9438 state, in segments
        self._cubic_k = 0.0
        self._cubic_w_est = 0.0
        self._cubic_epoch: float | None = None
        self._in_recovery = False
        self._recover = self.iss
        # RFC 8985 RACK-TLP: every data segment in flight, start -> (end, time sent, resent, SACKed), in sequence
        # order (a timeout's go-back-N starts the log again); `_lost` holds the starts RACK found lost and that
        # wait for their retransmission
        # (an OrderedDict: the front is popped on every ACK, which a dict's iteration would pay for in tombstones)
        self._xmit: OrderedDict[int, tuple[int, float, bool, bool]] = OrderedDict()
        self._resent: set[int] = set()  # the starts in _xmit whose latest transmission was a retransmission
        self._lost: set[int] = set()
        self._sacked_bytes = 0  # what the scoreboard covers (RFC 6675's SACKed bytes)
        self._rack_xmit = -1.0  # RACK.xmit_ts: when the latest delivered segment was sent
        self._rack_end = 0  # RACK.end_seq
        self._rack_rtt = 0.0  # RACK.rtt
        self._rack_fack = 0  # the highest end delivered (RACK.fack), to see reordering
        self._min_rtt = float("inf")
        self._reordering_seen = False
        self._reo_deadline: float | None = None  # RACK's reordering timer
        self._tlp_deadline: float | None = None  # the probe timeout (PTO)
        self._tlp_out = False  # a probe is unanswered: no second one (RFC 8985 7.2)
        # BBR (net/tcp_bbr.py) and its delivery rate samples (draft-cheng-iccrg-delivery-rate-estimation 3.2):
        # per segment in flight, the connection's delivered count, delivered time, first sent time and
        # app-limited mark when it was sent
        self._bbr: Bbr | None = None
        self._delivered = 0
        self._delivered_time = 0.0
        self._first_sent_time = 0.0
        self._app_limited_until = 0
        self._rs: dict[int, tuple[int, float, float, bool]] = {}
        self._pacing_rate = 0.0
        self._pace_next = 0.0
        self._pace_deadline: float | None = None
        self._rate_sample: RateSample | None = None  # from the latest ACK, for _bbr_on_ack
        # RFC 6937 Proportional Rate Reduction
        self._prr_delivered = 0
        self._prr_out = 0
        self._recover_fs = 0
        # persist timer (RFC 9293 3.8.6.1)
        self._persist_deadline: float | None = None
        self._persist_interval = 0.0
        self._probes = 0
        # TIME-WAIT
        self._time_wait_deadline: float | None = None
        self._fin_wait_2_deadline: float | None = None
        # RFC 5961 section 7
        self._challenge_second = -1.0
        self._challenge_count = 0
        # statistics
        self.retransmissions = 0

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def active(
        cls,
        local: Endpoint,
        remote: Endpoint,
        *,
        iss: int,
        now: float,
        mss: int = 1460,
        receive_buffer: int | None = None,
        config: TcpConfig | None = None,
    ) -> TcpConnection:
        """An active open: the connection in SYN-SENT with its SYN in `outgoing()`. A `config` replaces `mss` and
        `receive_buffer`."""
        cfg = _config(config, mss, receive_buffer)
        conn = cls(local, remote, iss=iss, config=cfg)
        conn._active = True
        conn._fire(TcpInput.ACTIVE_OPEN)
        conn._offer_wscale = _wscale_for(cfg.receive_buffer) if cfg.window_scale else 0
        conn._send_syn(now, ack=False)
        conn._rtt_seq, conn._rtt_time = conn.iss + 1, now  # RTT of the handshake, unless the SYN is resent
        conn._arm(now)
        return conn

    @classmethod
    def passive(
        cls,
        syn: TcpSegment,
        local: Endpoint,
        remote: Endpoint,
        *,
        iss: int,
        now: float,
        mss: int = 1460,
        receive_buffer: int | None = None,
        config: TcpConfig | None = None,
    ) -> TcpConnection:
        """A connection for a listener that received `syn`: SYN-RECEIVED with its SYN-ACK in `outgoing()`. A
        `config` replaces `mss` and `receive_buffer`; a `syn` without SYN, or with ACK, RST or FIN, is a ValueError
        (the stack answers such segments itself)."""
        if TcpFlags.SYN not in syn.flags or syn.flags & (TcpFlags.ACK | TcpFlags.RST | TcpFlags.FIN):
            raise ValueError("a passive open takes a segment with SYN and without ACK, RST or FIN")
        cfg = _config(config, mss, receive_buffer)
        conn = cls(local, remote, iss=iss, config=cfg)
        conn._fire(TcpInput.PASSIVE_OPEN)
        conn._take_syn(syn)
        conn._fire(TcpInput.RECV_SYN)
        conn._send_syn(now, ack=True)
        conn._rtt_seq, conn._rtt_time = conn.iss + 1, now
        conn._arm(now)
        return conn

    # -- the user's side ---------------------------------------------------------------------------------------

    @property
    def send_space(self) -> int:
        """How many more bytes `send` takes now."""
        if self._fin_queued or self.state is TcpState.CLOSED:
            return 0
        return max(0, self.config.send_buffer - len(self._send_buf))

    @property
    def readable(self) -> int:
        """Bytes waiting in the receive buffer."""
        return len(self._recv_buf)

    @property
    def at_eof(self) -> bool:
        """The peer's FIN arrived and every byte before it has been read."""
        return self._fin_received and not self._recv_buf

    @property
    def unacknowledged(self) -> int:
        """Bytes (and SYN/FIN) sent and not yet acknowledged."""
        return self.snd_max - self.snd_una

    @property
    def send_buffered(self) -> int:
        """Bytes in the send buffer (sent and unacknowledged, or not yet sent)."""
        return len(self._send_buf)

    @property
    def fin_acked(self) -> bool:
        """Our FIN was acknowledged (or the connection is gone)."""
        return self.state in (TcpState.FIN_WAIT_2, TcpState.TIME_WAIT, TcpState.CLOSED)

    def send(self, data: bytes, now: float) -> int:
        """Queue as much of `data` as the send buffer takes; returns that many bytes."""
        if self.state is TcpState.CLOSED:
            raise TcpUsageError(f"connection closed: {self.error or 'closed'}")
        if self._fin_queued:
            raise TcpUsageError("send after shutdown")
        if self.state in (TcpState.LISTEN,):
            raise TcpUsageError("send on a listening connection")
        n = min(len(data), self.send_space)
        if n:
            self._send_buf += data[:n]
            self._output(now)
            self._arm(now)
        return n

    def read(self, max_bytes: int | None = None) -> bytes:
        """Take up to `max_bytes` from the receive buffer; a window update goes out when the window opened enough."""
        n = len(self._recv_buf) if max_bytes is None else min(max_bytes, len(self._recv_buf))
        data = bytes(self._recv_buf[:n])
        del self._recv_buf[:n]
        if n and self.state in _RECEIVING:
            # RFC 9293 3.8.6.2.2: tell the peer once the window grew by min(buffer/2, MSS)
            if self._rcv_free() - self._advertised() >= self._sws_step():
                self._send_ack()
        return data

    def shutdown(self, now: float) -> None:
        """No more data from us: a FIN follows what is queued (RFC 9293 3.10.4, CLOSE)."""
        if self._fin_queued or self.state is TcpState.CLOSED:
            return
        if self.state in (TcpState.LISTEN, TcpState.SYN_SENT):
            # RFC 9293 3.10.4: a CLOSE before the peer answered deletes the TCB
            self._finish(TcpInput.CLOSE, None)
            return
        self._fin_queued = True
        if self.state is TcpState.SYN_RECEIVED:
            self._close_pending = True  # the FIN follows the handshake
            return
        if self.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            self._fire(TcpInput.CLOSE)
        self._output(now)
        self._arm(now)

    def close(self, now: float) -> None:
        """A full close: shutdown, and the user reads no more; data left unread or arriving later resets the
        connection, so that the peer learns it was lost (RFC 1122 4.2.2.13)."""
        self._receive_closed = True
        if self._recv_buf and self.state is not TcpState.CLOSED:
            self.abort(now, reason="closed with unread data")
            return
        self.shutdown(now)
        if self.state is not TcpState.CLOSED:
            self._arm(now)

    def abort(self, now: float, reason: str = "aborted") -> None:
        """Send RST (in a synchronized state) and go to CLOSED (RFC 9293 3.10.5, ABORT)."""
        if self.state is TcpState.CLOSED:
            return
        if self.state not in (TcpState.LISTEN, TcpState.SYN_SENT):
            self._emit(self.snd_max, TcpFlags.RST | TcpFlags.ACK)
        self._finish(TcpInput.ABORT, reason, error=True)

    def drop(self, reason: str) -> None:
        """The link is gone: CLOSED at once, nothing sent; the stream then raises with "link dropped: <reason>"."""
        if self.state is TcpState.CLOSED:
            return
        self._finish(TcpInput.DROP, f"link dropped: {reason}", error=True)

    def outgoing(self) -> list[TcpSegment]:
        """The segments to send now, in order (drains)."""
        out, self._out = self._out, []
        return out

    def events(self) -> list[TcpEvent]:
        """What happened since the last call (drains)."""
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float | None:
        """The earliest timer: retransmission, tail loss probe, RACK reordering, delayed ACK, persist, TIME-WAIT
        or FIN-WAIT-2; None when none runs."""
        deadlines = [
            d
            for d in (
                self._rto_deadline,
                self._ack_deadline,
                self._persist_deadline,
                self._time_wait_deadline,
                self._fin_wait_2_deadline,
                self._reo_deadline,
                self._tlp_deadline,
                self._pace_deadline,
            )
            if d is not None
        ]
        return min(deadlines) if deadlines else None

    def on_timer(self, now: float) -> None:
        """Fire every timer whose deadline is at or before `now`."""
        if self._time_wait_deadline is not None and now >= self._time_wait_deadline:
            self._time_wait_deadline = None
            self._finish(TcpInput.TIME_WAIT_DONE, None)
            return
        if self._fin_wait_2_deadline is not None and now >= self._fin_wait_2_deadline:
            self._fin_wait_2_deadline = None
            if self.state is TcpState.FIN_WAIT_2:
                self._finish(TcpInput.FIN_WAIT_2_TIMEOUT, "FIN-WAIT-2 timeout")
                return
        if self._ack_deadline is not None and now >= self._ack_deadline:
            self._send_ack()
        if self._reo_deadline is not None and now >= self._reo_deadline:
            self._reo_deadline = None
            self._on_reorder_timer(now)
        if self._tlp_deadline is not None and now >= self._tlp_deadline:
            self._tlp_deadline = None
            self._on_pto(now)
        if self._rto_deadline is not None and now >= self._rto_deadline:
            self._rto_deadline = None
            self._on_rto(now)
        if self._persist_deadline is not None and now >= self._persist_deadline:
            self._persist_deadline = None
            self._on_persist(now)
        if self._pace_deadline is not None and now >= self._pace_deadline:
            self._pace_deadline = None
            self._output(now)
        if self.state is not TcpState.CLOSED:
            self._arm(now)

    # -- segment arrival (RFC 9293 3.10.7) ---------------------------------------------------------------------

    def receive(self, segment: TcpSegment, now: float) -> None:
        """Process one segment from the peer (already checksummed and demultiplexed to this connection)."""
        if self.state in (TcpState.CLOSED, TcpState.LISTEN):
            rst = reset_for(segment)
            if rst is not None:
                self._out.append(rst)
            self._reject("no connection", "rst" if rst else "")
            return
        if self.state is TcpState.SYN_SENT:
            self._receive_syn_sent(segment, now)
        else:
            self._receive_synchronized(segment, now)
        if self.state is not TcpState.CLOSED:
            self._output(now)
            if self._ack_now:
                self._send_ack()
            self._arm(now)

    def _receive_syn_sent(self, seg: TcpSegment, now: float) -> None:
        flags = seg.flags
        ack = _unwrap(seg.ack, self.snd_una)
        if TcpFlags.ACK in flags and not self.snd_una < ack <= self.snd_max:
            # first: an ACK of something we never sent
            if TcpFlags.RST not in flags:
                self._out.append(TcpSegment(self.local[1], self.remote[1], seg.ack, 0, TcpFlags.RST, 0))
            self._reject(
                "ACK in SYN-SENT does not acknowledge our SYN", "" if TcpFlags.RST in flags else "rst"
            )
            return
        if TcpFlags.RST in flags:
            if TcpFlags.ACK in flags:
                self._finish(TcpInput.RECV_RST, "connection refused", error=True, refused=True)
            else:
                self._reject("RST without ACK in SYN-SENT", "")
            return
        if TcpFlags.SYN not in flags:
            self._reject("neither SYN nor RST in SYN-SENT", "")
            return
        self._take_syn(seg)
        if TcpFlags.ACK in flags:
            self.snd_una = ack
            self._snd_wl1, self._snd_wl2 = self.irs, ack
            self._sample_rtt(ack, now)
            self._fire(TcpInput.RECV_SYN_ACK)
            self._established(now)
            self._ack_now = True
            self._take_text_and_fin(seg, self.irs + 1, now)
        else:
            # simultaneous open: answer with SYN-ACK from the same ISS (RFC 9293 3.5, figure 8)
            self._fire(TcpInput.RECV_SYN)
            self._rtt_seq = None
            self._send_syn(now, ack=True)

    def _receive_synchronized(self, seg: TcpSegment, now: float) -> None:
        flags = seg.flags
        state = self.state
        if (
            state is TcpState.SYN_RECEIVED
            and flags & (TcpFlags.SYN | TcpFlags.ACK | TcpFlags.RST) == TcpFlags.SYN
        ):
            if _unwrap(seg.seq, self.rcv_nxt) == self.irs:
                # our SYN-ACK was lost: the peer sent its SYN again
                self._send_syn(now, ack=True)
                self._reject("duplicate SYN in SYN-RECEIVED", "syn-ack")
                return
        seq = _unwrap(seg.seq, self.rcv_nxt)
        wnd = self._rcv_free()
        # first: the sequence number (RFC 9293 3.10.7.4 table)
        ack_only = False
        if not self._acceptable(seq, seg.seg_len, wnd):
            if TcpFlags.RST in flags:
                self._reject("RST outside the receive window", "")
                return
            if wnd == 0 and seq == self.rcv_nxt and TcpFlags.ACK in flags and TcpFlags.SYN not in flags:
                ack_only = True  # "special allowance" for ACKs while our window is closed
            else:
                if state is TcpState.TIME_WAIT and TcpFlags.FIN in flags:
                    self._time_wait_deadline = now + 2 * self.config.msl  # a retransmitted FIN restarts 2MSL
                self._ack_now = True
                self._reject("segment outside the receive window", "ack")
                return
        # second: RST (RFC 5961 3.2: only at exactly RCV.NXT; elsewhere in the window, a challenge ACK)
        if TcpFlags.RST in flags:
            if seq == self.rcv_nxt:
                refused = state is TcpState.SYN_RECEIVED and self._active
                reason = "connection refused" if refused else "connection reset by peer"
                if state in (TcpState.CLOSING, TcpState.LAST_ACK, TcpState.TIME_WAIT):
                    self._finish(TcpInput.RECV_RST, None)
                else:
                    self._finish(TcpInput.RECV_RST, reason, error=True, refused=refused)
            else:
                self._challenge_ack(now, "RST in the window but not at RCV.NXT (RFC 5961 3.2)")
            return
        # fourth: SYN in a synchronized state (RFC 5961 4.2: challenge ACK, drop)
        if TcpFlags.SYN in flags:
            self._challenge_ack(now, "SYN in a synchronized state (RFC 5961 4.2)")
            return
        # fifth: ACK
        if TcpFlags.ACK not in flags:
            self._reject("segment without ACK", "")
            return
        ack = _unwrap(seg.ack, self.snd_una)
        if state is TcpState.SYN_RECEIVED:
            if not self.snd_una < ack <= self.snd_max:
                self._out.append(TcpSegment(self.local[1], self.remote[1], seg.ack, 0, TcpFlags.RST, 0))
                self._reject("ACK in SYN-RECEIVED does not acknowledge our SYN", "rst")
                return
            self._snd_wl1, self._snd_wl2 = seq, ack
            self.snd_wnd = seg.window << self._snd_wscale
            self._max_snd_wnd = max(self._max_snd_wnd, self.snd_wnd)
            self._fire(TcpInput.RECV_ACK_OF_SYN)
            self._established(now)
        if ack > self.snd_max:
            self._ack_now = True
            self._reject("ACK of data not yet sent", "ack")
            return
        if ack < self.snd_una - max(self._max_snd_wnd, 1):
            # RFC 5961 5.2: far too old an ACK
            self._ack_now = True
            self._reject("ACK older than the send window (RFC 5961 5.2)", "ack")
            return
        self._take_ack(seg, seq, ack, now)
        if self.state is TcpState.CLOSED:
            return
        if self.state is TcpState.TIME_WAIT:
            if TcpFlags.FIN in flags:
                self._time_wait_deadline = now + 2 * self.config.msl
                self._ack_now = True
            return
        if ack_only:
            self._ack_now = True
            if seg.payload:
                self._reject("data while our window is zero", "ack")
            return
        self._take_text_and_fin(seg, seq, now)

    def _take_ack(self, seg: TcpSegment, seq: int, ack: int, now: float) -> None:
        window = seg.window << self._snd_wscale
        self._probes = 0
        una_before, sacked_before = self.snd_una, self._sacked_bytes
        if self._sack_ok and seg.sack_blocks:
            self._take_sack(seg.sack_blocks)
        if ack > self.snd_una:
            if self._retries and self.srtt is not None:
                # the path answers again: the backed-off RTO of a timeout goes back to the estimate at once, as
                # Linux does, instead of waiting for a new sample (Karn) while one loss costs every later timeout
                self.rto = self._rto_estimate()
            self._tlp_out = False
            self._tlp_deadline = None  # RFC 8985 7.2: the PTO restarts on an ACK that advances SND.UNA
            acked = ack - self.snd_una - (1 if self.snd_una == self.iss else 0)  # our SYN is not data
            data_end = self._send_base + len(self._send_buf)
            trim = min(ack, data_end) - self._send_base
            if trim > 0:
                del self._send_buf[:trim]
                self._send_base += trim
            self.snd_una = ack
            if self.snd_nxt < ack:
                self.snd_nxt = ack
            self._trim_sack()
            self._sample_rtt(ack, now)
            self._retries = 0
            self._rto_deadline = (
                None  # RFC 6298 5.3: restart (re-armed by _arm) for what is still outstanding
            )
            if self._sack_ok:
                self._sacked_bytes = sum(r - left for left, r in self._sacked)
                self._rack_on_ack(now)
            self._on_new_ack(acked, ack, now)
        elif (
            ack == self.snd_una
            and not seg.payload
            and not seg.flags & (TcpFlags.SYN | TcpFlags.FIN)
            and self.snd_max > self.snd_una
            and window == self.snd_wnd
            and window > 0
        ):
            if self._sack_ok:
                self._sacked_bytes = sum(r - left for left, r in self._sacked)
                self._rack_on_ack(now)
            self._on_dupack(ack, now)
        elif self._sack_ok and seg.sack_blocks:
            # an ACK that is no duplicate in RFC 5681's sense (a window update, data) still reports deliveries
            self._sacked_bytes = sum(r - left for left, r in self._sacked)
            self._rack_on_ack(now)
        if self._bbr is not None:
            self._bbr_on_ack(now)
        elif self._in_recovery and self._sack_ok:
            delivered = (self.snd_una - una_before) + (self._sacked_bytes - sacked_before)
            self._prr_update(max(0, delivered))
        # RFC 9293 3.10.7.4: update the send window from the newest segment only
        if self._snd_wl1 < seq or (self._snd_wl1 == seq and self._snd_wl2 <= ack):
            self.snd_wnd = window
            self._snd_wl1, self._snd_wl2 = seq, ack
            self._max_snd_wnd = max(self._max_snd_wnd, window)
        fin_seq = self._send_base + len(self._send_buf)
        if self._fin_queued and self.snd_una > fin_seq:
            if self.state is TcpState.FIN_WAIT_1:
                self._fire(TcpInput.RECV_ACK_OF_FIN)
            elif self.state is TcpState.CLOSING:
                self._fire(TcpInput.RECV_ACK_OF_FIN)
                self._enter_time_wait(now)
            elif self.state is TcpState.LAST_ACK:
                self._finish(TcpInput.RECV_ACK_OF_FIN, None)

    def _on_new_ack(self, acked: int, ack: int, now: float) -> None:
        mss = self.eff_mss
        self._dupacks = 0
        if self._bbr is not None:
            # BBR sets the window from its model (_bbr_on_ack); a recovery ends with the window it had before
            if self._in_recovery and ack >= self._recover:
                self._in_recovery = False
                self.cwnd = self._bbr.exit_recovery(self.cwnd)
                if self._lost:
                    self._enter_recovery(now)
            return
        if self._in_recovery:
            if ack >= self._recover:
                # RFC 6582 3.2 step 3, its option (2): full acknowledgment, the window is ssthresh (option (1)'s
                # FlightSize + SMSS shrank it to almost nothing after a recovery that sent little new data)
                self.cwnd = self.ssthresh
                self._in_recovery = False
                if self._sack_ok and self._lost:
                    # RACK found data sent during the recovery lost as well: a new loss event (RFC 6675 5.1)
                    self._enter_recovery(now)
            elif self._sack_ok:
                pass  # RACK marked what is lost (_rack_on_ack); PRR sizes what goes out (_prr_update)
            else:
                # partial acknowledgment: the next segment is lost too
                self._retransmit_first(now, "fast")
                self.cwnd = max(self.cwnd - acked + (mss if acked >= mss else 0), mss)
            return
        if self.cwnd < self.ssthresh:
            # slow start counting the bytes acknowledged, up to 2 SMSS per ACK (RFC 3465 2.2, L = 2 SMSS):
            # with delayed ACKs (one ACK per two segments) RFC 5681's one SMSS per ACK would halve the growth
            self.cwnd += min(acked, 2 * mss)
            self._bytes_acked = 0
        elif self.config.congestion == "cubic":
            self._cubic_avoidance(acked, now)
        else:
            # congestion avoidance by byte counting (RFC 5681 3.1): one SMSS per cwnd of acknowledged bytes
            self._bytes_acked += acked
            if self._bytes_acked >= self.cwnd:
                self._bytes_acked -= self.cwnd
                self.cwnd += mss

    def _congestion_event(self, now: float) -> None:
        """A loss: the new ssthresh (RFC 5681 equation (4), or RFC 9438 4.6 with CUBIC's beta 0.7)."""
        mss = self.eff_mss
        flight = self.snd_max - self.snd_una
        if self._bbr is not None:
            return  # BBR keeps no ssthresh: a loss is not taken as the path's capacity (draft-ietf-ccwg-bbr)
        if self.config.congestion == "cubic":
            segments = self.cwnd / mss
            # RFC 9438 4.7 fast convergence: a flow whose window shrank gives up more
            if segments < self._cubic_w_max:
                self._cubic_w_max = segments * (1 + _CUBIC_BETA) / 2
            else:
                self._cubic_w_max = segments
            self._cubic_epoch = None
            self.ssthresh = max(int(flight * _CUBIC_BETA), 2 * mss)
        else:
            self.ssthresh = max(flight // 2, 2 * mss)

    def _cubic_avoidance(self, acked: int, now: float) -> None:
        """RFC 9438 section 4: the window follows W(t) = C (t - K)^3 + W_max, never below the Reno-friendly
        estimate W_est (4.3); in segments, converted to bytes."""
        mss = self.eff_mss
        cwnd = self.cwnd / mss
        if self._cubic_epoch is None:
            self._cubic_epoch = now
            if self._cubic_w_max < cwnd:
                self._cubic_w_max = cwnd
            self._cubic_k = ((self._cubic_w_max - cwnd) / _CUBIC_C) ** (1 / 3)
            self._cubic_w_est = cwnd
        rtt = self.srtt if self.srtt is not None else self.rto
        t = now - self._cubic_epoch
        target = _CUBIC_C * (t + rtt - self._cubic_k) ** 3 + self._cubic_w_max
        target = min(max(target, cwnd), 1.5 * cwnd)
        alpha = 3 * (1 - _CUBIC_BETA) / (1 + _CUBIC_BETA)
        self._cubic_w_est += alpha * (acked / mss) / cwnd
        if self._cubic_w_est > target:
            new = self._cubic_w_est
        else:
            new = cwnd + (target - cwnd) / cwnd * (acked / mss)
        self.cwnd = max(self.cwnd, int(new * mss))

    def _on_dupack(self, ack: int, now: float) -> None:
        mss = self.eff_mss
        self._dupacks += 1
        if self._sack_ok:
            # with SACK, RACK decides what is lost (_rack_on_ack: once three segments are SACKed its reordering
            # window is 0, which is RFC 6675's DupThresh); three duplicates without any SACK block are still RFC
            # 5681's fast retransmit of the first segment
            if not self._in_recovery and self._dupacks == 3 and ack > self._recover and not self._sacked:
                first = next(iter(self._xmit), None)
                if first is not None and first == self.snd_una:
                    self._lost.add(first)
                    self._enter_recovery(now)
            return
        if self._in_recovery:
            self.cwnd += mss  # RFC 5681 3.2 step 4: one segment left the network
            return
        # RFC 6582 3.2 step 2: only an ACK covering more than `recover` starts a new recovery; the duplicates of
        # what a go-back-N resent (ack == recover) must not (RFC 6582 section 6)
        if self._dupacks == 3 and ack > self._recover:
            self._congestion_event(now)
            self._recover = self.snd_max
            self._in_recovery = True
            self._retransmit_first(now, "fast")
            self.cwnd = self.ssthresh + 3 * mss

    # -- SACK-driven loss recovery: RFC 8985 RACK-TLP, RFC 6675 pipe, RFC 6937 PRR ---------------------------------

    def _rto_estimate(self) -> float:
        assert self.srtt is not None
        rto = self.srtt + max(0.001, 4 * self.rttvar)
        return min(max(rto, self.config.min_rto), self.config.max_rto)

    def _covered(self, start: int, end: int) -> bool:
        """[start, end) lies inside one block of the scoreboard."""
        sacked = self._sacked
        k = bisect_right(sacked, start, key=_block_start) - 1
        return k >= 0 and sacked[k][0] <= start and end <= sacked[k][1]

    def _pipe(self) -> int:
        """RFC 6675's pipe: bytes sent and neither acknowledged, SACKed nor known lost (and not yet resent)."""
        lost = sum(self._xmit[s][0] - s for s in self._lost if s in self._xmit)
        return max(0, self.snd_max - self.snd_una - self._sacked_bytes - lost)

    def _rack_on_ack(self, now: float) -> None:
        """RFC 8985 6.2: take the segments this ACK delivered (cumulatively or by SACK) into RACK's state, then
        mark lost every segment sent before the latest delivered one by more than the reordering window."""
        xmit = self._xmit
        una = self.snd_una
        delivered: list[tuple[int, float, bool]] = []
        rs = self._rs
        samples: list[tuple[int, float, bool, tuple[int, float, float, bool] | None]] = []
        while xmit:
            start = next(iter(xmit))
            end, sent, resent, sacked = xmit[start]
            if end > una:
                break
            del xmit[start]
            self._lost.discard(start)
            self._resent.discard(start)
            info = rs.pop(start, None)
            if not sacked:
                delivered.append((end, sent, resent))
                samples.append((end - start, sent, resent, info))
        if self._sacked:
            for start, (end, sent, resent, sacked) in xmit.items():
                if not sacked and self._covered(start, end):
                    xmit[start] = (end, sent, resent, True)  # a value change, not an insertion: order stays
                    self._lost.discard(start)
                    delivered.append((end, sent, resent))
                    samples.append((end - start, sent, resent, rs.get(start)))
        if self._bbr is not None:
            self._rate_sample = self._sample_rate(samples, now)
        for end, sent, resent in delivered:
            rtt = now - sent
            if resent and rtt < self._min_rtt:
                continue  # 6.2 step 2: this ACK is for the original transmission, not the retransmission
            if not resent:
                self._min_rtt = min(self._min_rtt, rtt)
                if end < self._rack_fack:
                    self._reordering_seen = True  # 6.2 step 3: delivered below what was delivered already
            self._rack_fack = max(self._rack_fack, end)
            if sent > self._rack_xmit or (sent == self._rack_xmit and end > self._rack_end):
                self._rack_xmit, self._rack_end, self._rack_rtt = sent, end, rtt
        self._rack_detect(now)

    def _sample_rate(
        self, samples: list[tuple[int, float, bool, tuple[int, float, float, bool] | None]], now: float
    ) -> RateSample | None:
        """draft-cheng-iccrg-delivery-rate-estimation 3.3: count what this ACK delivered and make one rate sample
        from the most recently sent of those segments: bytes delivered since it was sent, over the longer of its
        send and ACK intervals (a sample over less than the min RTT is no sample)."""
        if not samples:
            return None
        acked = 0
        best: tuple[int, float, float, bool, float, bool] | None = None
        for length, sent, resent, info in samples:
            acked += length
            self._delivered += length
            self._delivered_time = now
            if info is None:
                continue
            prior_delivered, prior_time, first_sent, app_limited = info
            if best is None or prior_delivered >= best[0]:
                best = (prior_delivered, prior_time, first_sent, app_limited, sent, resent)
                self._first_sent_time = sent
        if self._app_limited_until and self._delivered > self._app_limited_until:
            self._app_limited_until = 0
        if best is None:
            return RateSample(0, 0.0, -1.0, self._delivered, False, acked)
        prior_delivered, prior_time, first_sent, app_limited, sent, resent = best
        interval = max(sent - first_sent, now - prior_time)
        if interval < self._min_rtt:
            interval = 0.0  # rate 0: not a sample of the bandwidth
        return RateSample(
            self._delivered - prior_delivered,
            interval,
            -1.0 if resent else now - sent,
            prior_delivered,
            app_limited,
            acked,
        )

    def _bbr_on_ack(self, now: float) -> None:
        """Feed BBR this ACK's rate sample and take its window and pacing rate."""
        bbr = self._bbr
        assert bbr is not None
        sample, self._rate_sample = self._rate_sample, None
        inflight = self._pipe()
        bbr.on_ack(sample, self._delivered, inflight, self.cwnd, now)
        self.cwnd = bbr.cwnd(self.cwnd, sample.acked if sample else 0, inflight, self._delivered)
        self._pacing_rate = bbr.pacing_rate(self.srtt)

    def _rs_on_send(self, seq: int, now: float) -> None:
        """Remember, for the rate sample, what the connection had delivered when this segment left."""
        if self._bbr is None:
            return
        if self.snd_max == self.snd_una or not self._xmit:
            self._first_sent_time = self._delivered_time = now  # nothing in flight: a new interval starts
        self._rs[seq] = (
            self._delivered,
            self._delivered_time,
            self._first_sent_time,
            self._app_limited_until > 0,
        )

    def _pace(self, length: int, now: float) -> None:
        """The next segment's pacing time, after `length` bytes left now."""
        if self._bbr is not None and self._pacing_rate > 0:
            self._pace_next = max(self._pace_next, now - PACING_CATCH_UP) + length / self._pacing_rate

    def _reo_wnd(self) -> float:
        """RFC 8985 6.2 step 4: no reordering window until the path has reordered, once in recovery or once
        DupThresh (3) segments are SACKed; else min_RTT/4, at most SRTT."""
        if not self._reordering_seen and (self._in_recovery or self._sacked_bytes >= 3 * self.eff_mss):
            return 0.0
        if self._min_rtt == float("inf"):
            return 0.0
        return min(self._min_rtt / 4, self.srtt if self.srtt is not None else self._min_rtt)

    def _rack_detect(self, now: float) -> None:
        """RFC 8985 6.2 step 5 (and 6.3, the reordering timer): lost is what was sent before RACK's segment and
        has waited RACK.rtt + reo_wnd; what waits less arms the timer; a first loss starts the recovery."""
        self._reo_deadline = None
        if self._rack_xmit < 0:
            return
        reo_wnd = self._reo_wnd()
        rack_xmit, rack_end = self._rack_xmit, self._rack_end
        timeout = 0.0
        newly = False
        xmit = self._xmit
        # first transmissions are in _xmit in the order they were sent: the scan stops at the first one sent after
        # RACK's segment, and only the (few) retransmissions beyond it are looked at besides, not the whole flight
        candidates: list[int] = []
        stop: int | None = None
        for start, (end, sent, resent, _sacked) in xmit.items():
            if not resent and (sent > rack_xmit or (sent == rack_xmit and end >= rack_end)):
                stop = start
                break
            candidates.append(start)
        if stop is not None:
            candidates += [r for r in self._resent if r > stop]
        for start in candidates:
            end, sent, _resent, sacked = xmit[start]
            if sacked or start in self._lost:
                continue
            if sent > rack_xmit or (sent == rack_xmit and end >= rack_end):
                continue  # sent after (or is) the latest delivered segment: nothing known about it yet
            remaining = sent + self._rack_rtt + reo_wnd - now
            if remaining <= 0:
                self._lost.add(start)
                newly = True
            else:
                timeout = max(timeout, remaining)
        if timeout > 0:
            self._reo_deadline = now + timeout
        if newly and not self._in_recovery:
            self._enter_recovery(now)

    def _enter_recovery(self, now: float) -> None:
        """RFC 6675 5.1 with RFC 6937 3: one window reduction, and PRR from here to `recover`."""
        self._congestion_event(now)
        self._recover = self.snd_max
        self._in_recovery = True
        self._tlp_deadline = None
        self._prr_delivered = self._prr_out = 0
        self._recover_fs = max(1, self.snd_max - self.snd_una)
        if self._bbr is not None:
            self.cwnd = self._bbr.enter_recovery(self.cwnd, self._pipe(), self._delivered)
            return
        # RFC 6937 3.1: the first retransmission goes out at once, whatever the proportion says
        self.cwnd = self._pipe() + self.eff_mss

    def _prr_update(self, delivered: int) -> None:
        """RFC 6937 3.1 on each ACK in recovery: send in proportion to what was delivered while pipe is above
        ssthresh; below it, PRR-SSRB grows pipe back towards ssthresh by at most one MSS more than delivered."""
        self._prr_delivered += delivered
        pipe = self._pipe()
        if pipe > self.ssthresh:
            sndcnt = -(-self._prr_delivered * self.ssthresh // self._recover_fs) - self._prr_out
        else:
            limit = max(self._prr_delivered - self._prr_out, delivered) + self.eff_mss
            sndcnt = min(self.ssthresh - pipe, limit)
        self.cwnd = pipe + max(0, sndcnt)

    def _on_reorder_timer(self, now: float) -> None:
        if self.state not in _SENDING:
            return
        was = self._in_recovery
        self._rack_detect(now)
        if self._in_recovery and was and self._lost:
            self.cwnd = max(self.cwnd, self._pipe() + self.eff_mss)  # a timer delivers nothing: let one go
        self._output(now)

    def _on_pto(self, now: float) -> None:
        """RFC 8985 7.3: the tail loss probe, one new segment if the windows allow, else the last one again, so
        that its ACK (and SACK) shows a lost tail to RACK instead of leaving it to the RTO."""
        if self.state not in _SENDING or self._in_recovery or self.snd_max == self.snd_una:
            return
        data_end = self._send_base + len(self._send_buf)
        sent = False
        if self.snd_nxt == self.snd_max and data_end > self.snd_nxt:
            n = min(data_end - self.snd_nxt, self.eff_mss, self.snd_una + self.snd_wnd - self.snd_nxt)
            if n > 0:
                fin_allowed = self.state in (TcpState.FIN_WAIT_1, TcpState.CLOSING, TcpState.LAST_ACK)
                fin = fin_allowed and self.snd_nxt + n == data_end
                self._send_data(self.snd_nxt, n, now, fin=fin)
                sent = True
        if not sent and self._xmit:
            start = next(reversed(self._xmit))
            end, _sent, _resent, sacked = self._xmit[start]
            if not sacked:
                self._resend(start, end, now, "tlp")
                sent = True
        if sent:
            self._tlp_out = True
            self._rto_deadline = now + self.rto

    def _resend(self, start: int, end: int, now: float, reason: str) -> None:
        """Send [start, end) of the send buffer again (with our FIN if it ends where the FIN stands)."""
        data_end = self._send_base + len(self._send_buf)
        end = min(end, data_end, start + self.eff_mss)
        n = max(0, end - start)
        fin = self._fin_queued and self.snd_max > data_end and start + n == data_end
        if n == 0 and not fin:
            return
        offset = start - self._send_base
        flags = TcpFlags.ACK | (TcpFlags.FIN if fin else TcpFlags(0))
        self._note_retransmission(start, n, reason)
        self._emit(start, flags, bytes(self._send_buf[offset : offset + n]))
        if start in self._xmit:
            self._rs_on_send(start, now)
            self._xmit[start] = (self._xmit[start][0], now, True, False)
            self._resent.add(start)
        if self._in_recovery:
            self._prr_out += n

    def _arm_tlp(self, now: float) -> None:
        """RFC 8985 7.2: PTO = 2 SRTT (plus the peer's delayed-ACK time when one segment is in flight), only
        with SACK, outside recovery, one probe at a time, and only when it comes before the RTO."""
        if (
            self._tlp_deadline is not None
            or not self._sack_ok
            or not self.config.tail_loss_probe
            or self.srtt is None
            or self._in_recovery
            or self._tlp_out
            or self._retries
        ):
            return
        pto = 2 * self.srtt
        if self.snd_max - self.snd_una <= self.eff_mss:
            pto += 0.2  # WCDelAckT: the peer may hold a lone segment's ACK that long (RFC 1122 4.2.3.2)
        deadline = now + pto
        if self._rto_deadline is not None and deadline >= self._rto_deadline:
            return
        self._tlp_deadline = deadline

    def _take_sack(self, blocks: tuple[tuple[int, int], ...]) -> None:
        """Merge the peer's SACK blocks (RFC 2018) into the scoreboard; blocks outside what we sent are ignored."""
        merged = list(self._sacked)
        for left_wire, right_wire in blocks:
            left = _unwrap(left_wire, self.snd_una)
            right = _unwrap(right_wire, self.snd_una)
            if self.snd_una <= left < right <= self.snd_max:
                merged.append((left, right))
        merged.sort()
        out: list[tuple[int, int]] = []
        for left, right in merged:
            if out and left <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], right))
            else:
                out.append((left, right))
        self._sacked = out[-32:]  # bounded: a hostile peer cannot grow it

    def _trim_sack(self) -> None:
        self._sacked = [
            (max(left, self.snd_una), right) for left, right in self._sacked if right > self.snd_una
        ]

    def _take_text_and_fin(self, seg: TcpSegment, seq: int, now: float) -> None:
        if seg.payload:
            if self.state in _RECEIVING:
                if self._receive_closed:
                    # RFC 1122 4.2.2.13: nobody will read this
                    self.abort(now, reason="data arrived after close")
                    self._reject("data after close", "rst")
                    return
                self._take_data(seq, seg.payload, now)
            # CLOSE-WAIT, CLOSING, LAST-ACK: the peer already sent its FIN; the text is ignored
        if TcpFlags.FIN in seg.flags and self.state in _RECEIVING | {TcpState.SYN_RECEIVED}:
            fin_seq = seq + len(seg.payload)
            if fin_seq <= self.rcv_nxt + self._rcv_free() and self._peer_fin is None:
                self._peer_fin = fin_seq
            self._ack_now = True
        self._check_peer_fin(now)

    def _take_data(self, seq: int, payload: bytes, now: float) -> None:
        limit = self.rcv_nxt + self._rcv_free()
        start, data = seq, payload
        if start < self.rcv_nxt:
            data = data[self.rcv_nxt - start :]
            start = self.rcv_nxt
        if start + len(data) > limit:
            data = data[: max(0, limit - start)]
        if not data:
            self._ack_now = True  # a duplicate: ACK at once (RFC 5681 4.2)
            return
        if start == self.rcv_nxt:
            had_hole = bool(self._ooo)
            self._recv_buf += data
            self.rcv_nxt += len(data)
            ooo = self._ooo
            taken = 0
            while taken < len(ooo) and ooo[taken][0] <= self.rcv_nxt:
                s, chunk = ooo[taken]
                tail = chunk[self.rcv_nxt - s :]
                self._recv_buf += tail
                self.rcv_nxt += len(tail)
                self._ooo_cost -= len(chunk) + OOO_CHUNK_OVERHEAD
                taken += 1
            del ooo[:taken]  # one slice deletion, not a pop(0) per chunk
            if not ooo:
                self._ooo_full = False
            self._events.append(DataArrived(self.rcv_nxt - start))
            if had_hole:
                self._ack_now = True  # RFC 5681 4.2: a segment that fills a hole is ACKed at once
            else:
                self._segments_unacked += 1
                if self.config.delayed_ack <= 0 or self._segments_unacked >= 2:
                    self._ack_now = True  # RFC 1122 4.2.3.2: every second segment
                elif self._ack_deadline is None:
                    self._ack_deadline = now + self.config.delayed_ack
        else:
            if self._insert_ooo(start, data):
                self._ooo_recent = start
            elif not self._ooo_full:
                self._ooo_full = True
                self._reject("out-of-order queue full: data dropped", "")
            # a duplicate ACK tells the sender about the hole (RFC 5681 4.2), also when the data was dropped
            self._ack_now = True

    def _insert_ooo(self, start: int, data: bytes) -> bool:
        """Merge `data` at `start` into the sorted out-of-order queue; False (nothing stored) past the cap.

        Each chunk is charged OOO_CHUNK_OVERHEAD bytes on top of its length against the receive buffer, as Linux
        charges an skb's truesize (docs/protocols.md, "TCP in the CP's stack"): many tiny out-of-order segments
        cannot make the queue long, so finding the neighbours (bisect), merging and reporting SACK blocks stay cheap.
        """
        ooo = self._ooo
        end = start + len(data)
        i = bisect_left(ooo, start, key=_chunk_start)
        if i > 0 and ooo[i - 1][0] + len(ooo[i - 1][1]) >= start:
            i -= 1  # the chunk before overlaps or touches the new data
        j = i
        while j < len(ooo) and ooo[j][0] <= end:
            j += 1
        touched = ooo[i:j]
        old_cost = sum(len(chunk) + OOO_CHUNK_OVERHEAD for _, chunk in touched)
        new_start = min(start, touched[0][0]) if touched else start
        new_end = max(end, touched[-1][0] + len(touched[-1][1])) if touched else end
        delta = new_end - new_start + OOO_CHUNK_OVERHEAD - old_cost
        if delta > 0 and self._ooo_cost + delta > self.config.receive_buffer:
            return False
        self._ooo_cost += delta
        if len(touched) == 1 and touched[0][0] <= start:
            # the common case, a segment that extends one chunk to the right: grow it in place
            s, chunk = touched[0]
            if end > s + len(chunk):
                chunk += data[s + len(chunk) - start :]
            return True
        merged = bytearray(new_end - new_start)
        for s, chunk in touched:
            merged[s - new_start : s - new_start + len(chunk)] = chunk
        merged[start - new_start : end - new_start] = data
        ooo[i:j] = [(new_start, merged)]
        return True

    def _check_peer_fin(self, now: float) -> None:
        if self._peer_fin is None or self._fin_received or self.rcv_nxt != self._peer_fin:
            return
        self.rcv_nxt += 1
        self._fin_received = True
        self._ack_now = True
        self._events.append(PeerFinished())
        self._fire(TcpInput.RECV_FIN)
        if self.state is TcpState.TIME_WAIT:
            self._enter_time_wait(now)

    # -- sending -----------------------------------------------------------------------------------------------

    def _output(self, now: float) -> None:
        """Send what the windows allow (RFC 9293 3.8.6.2.1 sender SWS avoidance, RFC 5681 cwnd)."""
        if self.state not in _SENDING:
            return
        fin_allowed = self.state in (TcpState.FIN_WAIT_1, TcpState.CLOSING, TcpState.LAST_ACK)
        self._pace_deadline = None
        while True:
            data_end = self._send_base + len(self._send_buf)
            fin_due = fin_allowed and self.snd_nxt <= data_end
            available = data_end - self.snd_nxt
            if self._bbr is not None:
                if available <= 0 and not self._lost and self._pipe() < self.cwnd:
                    # draft-cheng-iccrg-delivery-rate-estimation 3.4: the application, not the path, limits
                    # the rate until what is in flight now is delivered
                    self._app_limited_until = max(self._delivered + self._pipe(), 1)
                if self._pace_next > now + PACING_QUANTUM and (available > 0 or self._lost):
                    self._pace_deadline = self._pace_next
                    break
            if self._in_recovery and self._sack_ok:
                # RFC 6675 NextSeg rule 1 first: the lowest segment RACK marked lost; then new data, while pipe
                # (the bytes really in flight) stays under the cwnd PRR set; the peer's window counts from SND.UNA
                room = self.cwnd - self._pipe()
                if room <= 0:
                    break
                if self._lost:
                    start = min(self._lost)
                    self._lost.discard(start)
                    end = self._xmit[start][0] if start in self._xmit else start
                    self._resend(start, end, now, "fast")
                    self._pace(min(end - start, self.eff_mss), now)
                    continue
                usable = min(room, self.snd_una + self.snd_wnd - self.snd_nxt)
            else:
                usable = min(self.snd_una + self.cwnd, self.snd_una + self.snd_wnd) - self.snd_nxt
            if available > 0:
                if usable <= 0:
                    break
                n = min(available, usable, self.eff_mss)
                if n < available and n < self.eff_mss and n < self._max_snd_wnd // 2:
                    break
                fin = fin_due and self.snd_nxt + n == data_end
                self._send_data(self.snd_nxt, n, now, fin=fin)
                self._pace(n, now)
            elif fin_due:
                self._send_data(self.snd_nxt, 0, now, fin=True)
            else:
                break

    def _send_data(self, seq: int, n: int, now: float, *, fin: bool) -> None:
        offset = seq - self._send_base
        payload = bytes(self._send_buf[offset : offset + n])
        data_end = self._send_base + len(self._send_buf)
        flags = TcpFlags.ACK
        if n and seq + n == data_end:
            flags |= TcpFlags.PSH
        if fin:
            flags |= TcpFlags.FIN
        end = seq + n + (1 if fin else 0)
        if seq < self.snd_max:
            self._note_retransmission(seq, n, "timeout")  # below snd_max only after a timeout's go-back-N
        elif self._rtt_seq is None:
            self._rtt_seq, self._rtt_time = end, now
        if n:
            self._rs_on_send(seq, now)
            self._xmit[seq] = (seq + n, now, seq < self.snd_max, False)
            if seq < self.snd_max:
                self._resent.add(seq)
            if self._in_recovery:
                self._prr_out += n
        self._emit(seq, flags, payload)
        self.snd_nxt = max(self.snd_nxt, end)
        self.snd_max = max(self.snd_max, end)

    def _retransmit_first(self, now: float, reason: str) -> None:
        """Send the first unacknowledged segment again, without moving SND.NXT (fast retransmit)."""
        data_end = self._send_base + len(self._send_buf)
        seq = self.snd_una
        n = min(self.eff_mss, max(0, data_end - seq))
        fin = self._fin_queued and self.snd_max > data_end and seq + n == data_end
        if n == 0 and not fin:
            return
        offset = seq - self._send_base
        flags = TcpFlags.ACK | (TcpFlags.FIN if fin else TcpFlags(0))
        self._note_retransmission(seq, n, reason)
        self._emit(seq, flags, bytes(self._send_buf[offset : offset + n]))

    def _note_retransmission(self, seq: int, length: int, reason: str) -> None:
        self._rtt_seq = None  # Karn's rule: no RTT sample from anything sent twice
        self.retransmissions += 1
        self._events.append(Retransmitted(seq & _MASK, length, self.rto, reason))

    def _send_syn(self, now: float, *, ack: bool) -> None:
        wnd = min(self._rcv_free(), 0xFFFF)
        flags = TcpFlags.SYN | (TcpFlags.ACK if ack else TcpFlags(0))
        # RFC 7323 1.3: a SYN-ACK carries the option only if the SYN did
        offer = self._offer_wscale if (not ack or self._snd_wscale_offered) else None
        if not self.config.window_scale:
            offer = None
        seg = TcpSegment(
            self.local[1],
            self.remote[1],
            self.iss,
            self.rcv_nxt & _MASK if ack else 0,
            flags,
            wnd,
            mss=self.config.mss,
            window_scale=offer,
            # RFC 2018 section 2: offered in a SYN; in a SYN-ACK only if the SYN offered it
            sack_permitted=self.config.sack and (not ack or self._sack_ok),
        )
        self._out.append(seg)
        if ack:
            self._rcv_adv = max(self._rcv_adv, self.rcv_nxt + wnd)
            self._clear_ack()
        self.snd_nxt = max(self.snd_nxt, self.iss + 1)
        self.snd_max = max(self.snd_max, self.iss + 1)

    def _emit(self, seq: int, flags: TcpFlags, payload: bytes = b"") -> None:
        field = self._window_field()
        blocks: tuple[tuple[int, int], ...] = ()
        if self._sack_ok and self._ooo and TcpFlags.ACK in flags and TcpFlags.RST not in flags:
            # RFC 2018 section 4: the block of the latest arrival first, then the others; as many as fit beside
            # the payload in one MSS (a full-sized data segment carries none)
            room = min(3, (self.eff_mss - len(payload) - 4) // 8)
            if room > 0:
                # the chunk holding the latest arrival (bisect), then the highest others: never a scan
                ooo = self._ooo
                k = bisect_right(ooo, self._ooo_recent, key=_chunk_start) - 1
                recent = [k] if k >= 0 and self._ooo_recent < ooo[k][0] + len(ooo[k][1]) else []
                others = [
                    n for n in range(len(ooo) - 1, max(-1, len(ooo) - 1 - room - 1), -1) if n not in recent
                ]
                blocks = tuple(
                    (ooo[n][0] & _MASK, (ooo[n][0] + len(ooo[n][1])) & _MASK)
                    for n in (recent + others)[:room]
                )
        self._out.append(
            TcpSegment(
                self.local[1],
                self.remote[1],
                seq & _MASK,
                self.rcv_nxt & _MASK,
                flags,
                field,
                payload,
                sack_blocks=blocks,
            )
        )
        if TcpFlags.ACK in flags:
            self._clear_ack()

    def _send_ack(self) -> None:
        # SND.NXT of RFC 9293 is our snd_max: after a timeout snd_nxt steps back (go-back-N), but the peer may
        # hold everything up to snd_max already, and would find an ACK from further back out of its window
        self._emit(self.snd_max, TcpFlags.ACK)

    def _clear_ack(self) -> None:
        self._ack_now = False
        self._ack_deadline = None
        self._segments_unacked = 0

    def _challenge_ack(self, now: float, reason: str) -> None:
        second = float(int(now))
        if second != self._challenge_second:
            self._challenge_second, self._challenge_count = second, 0
        if self._challenge_count < self.config.challenge_acks_per_second:
            self._challenge_count += 1
            self._send_ack()
            self._reject(reason, "challenge-ack")
        else:
            self._reject(reason + "; challenge ACK rate limit reached", "")

    # -- windows -----------------------------------------------------------------------------------------------

    def _rcv_free(self) -> int:
        return max(0, self.config.receive_buffer - len(self._recv_buf))

    def _advertised(self) -> int:
        return max(0, self._rcv_adv - self.rcv_nxt)

    def _sws_step(self) -> int:
        return max(1, min(self.config.receive_buffer // 2, self.eff_mss))

    def _window_field(self) -> int:
        free = self._rcv_free()
        current = self._advertised()
        # RFC 9293 3.8.6.2.2 receiver SWS avoidance: open the window only by a useful amount, never shrink it
        wnd = current if free - current < self._sws_step() else free
        wnd = max(wnd, current)
        field = min(wnd >> self._rcv_wscale, 0xFFFF)
        self._rcv_adv = max(self._rcv_adv, self.rcv_nxt + (field << self._rcv_wscale))
        return field

    def _acceptable(self, seq: int, seg_len: int, wnd: int) -> bool:
        nxt = self.rcv_nxt
        if seg_len == 0:
            return seq == nxt if wnd == 0 else nxt <= seq < nxt + wnd
        if wnd == 0:
            return False
        last = seq + seg_len - 1
        return nxt <= seq < nxt + wnd or nxt <= last < nxt + wnd

    # -- timers ------------------------------------------------------------------------------------------------

    def _arm(self, now: float) -> None:
        """Start or stop the retransmission, persist and FIN-WAIT-2 timers after anything changed."""
        if self.state is TcpState.FIN_WAIT_2:
            if self._receive_closed and self._fin_wait_2_deadline is None:
                self._fin_wait_2_deadline = now + self.config.fin_wait_2_timeout
        else:
            self._fin_wait_2_deadline = None
        if self.state in (TcpState.SYN_SENT, TcpState.SYN_RECEIVED):
            if self._rto_deadline is None:
                self._rto_deadline = now + self.rto
            return
        if self.state not in _SENDING:
            self._rto_deadline = self._reo_deadline = self._tlp_deadline = None
            self._persist_deadline = self._pace_deadline = None
            return
        data_end = self._send_base + len(self._send_buf)
        if self.snd_nxt == self.snd_una and data_end > self.snd_nxt:
            # data waits and nothing is in flight: a zero window, or a window too small to be worth a segment
            # (sender SWS avoidance); the persist timer probes it or, RFC 1122 4.2.3.4, overrides the wait
            self._rto_deadline = self._reo_deadline = self._tlp_deadline = None
            if self._persist_deadline is None:
                if self._persist_interval == 0.0:
                    self._persist_interval = self.rto
                self._persist_deadline = now + self._persist_interval
            return
        self._persist_deadline = None
        self._persist_interval = 0.0
        if self.snd_nxt > self.snd_una:
            if self._rto_deadline is None:
                self._rto_deadline = now + self.rto
            self._arm_tlp(now)
        else:
            self._rto_deadline = self._reo_deadline = self._tlp_deadline = None

    def _on_rto(self, now: float) -> None:
        self._retries += 1
        self.rto = min(self.rto * 2, self.config.max_rto)  # RFC 6298 5.5
        if self.state in (TcpState.SYN_SENT, TcpState.SYN_RECEIVED):
            if self._retries > self.config.syn_retries:
                what = "SYN" if self.state is TcpState.SYN_SENT else "SYN-ACK"
                self._time_out(f"connection timed out: no answer to {self.config.syn_retries + 1} {what}s")
                return
            self._syn_retransmitted = True
            self._note_retransmission(self.iss, 0, "timeout")
            self._send_syn(now, ack=self.state is TcpState.SYN_RECEIVED)
            self._rto_deadline = now + self.rto
            return
        if self.snd_max == self.snd_una:
            return
        if self._retries > self.config.data_retries:
            self._time_out(f"connection timed out: {self.config.data_retries} retransmissions unanswered")
            return
        # RFC 5681 3.1 equation (4) and the loss window; RFC 6582 4.2: no fast retransmit for what was sent before
        mss = self.eff_mss
        self._congestion_event(now)
        if self._bbr is not None:
            self._bbr.on_timeout(self.cwnd)
            self._rs.clear()
            self._pace_next = now  # the go-back-N starts at once
        self.cwnd = mss
        self._in_recovery = False
        self._dupacks = 0
        self._recover = self.snd_max
        self._sacked = []  # go-back-N resends everything; the peer may have reneged (RFC 2018 section 8)
        self._sacked_bytes = 0
        self._xmit.clear()  # the go-back-N's transmissions start the log again
        self._resent.clear()
        self._lost.clear()
        self._reo_deadline = self._tlp_deadline = None
        self._tlp_out = False
        self.snd_nxt = self.snd_una
        if self.snd_wnd == 0 and self._send_base + len(self._send_buf) > self.snd_una:
            return  # the persist timer takes over (armed by _arm)
        self._output(now)
        self._rto_deadline = now + self.rto

    def _on_persist(self, now: float) -> None:
        if self.state not in _SENDING:
            return
        if self.snd_wnd != 0:
            # RFC 1122 4.2.3.4: the SWS override timeout sends what the window takes
            data_end = self._send_base + len(self._send_buf)
            n = min(
                data_end - self.snd_nxt,
                self.snd_una + min(self.cwnd, self.snd_wnd) - self.snd_nxt,
                self.eff_mss,
            )
            if n > 0:
                self._send_data(self.snd_nxt, n, now, fin=False)
            return
        self._probes += 1
        if self._probes > self.config.data_retries:
            self._time_out(f"connection timed out: {self.config.data_retries} window probes unanswered")
            return
        # a segment one below SND.UNA that every RFC 9293 receiver answers with an ACK carrying its window
        # (3.10.7.4: not acceptable -> <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>); Linux probes the same way
        self._emit(self.snd_una - 1, TcpFlags.ACK)
        self._persist_interval = min(self._persist_interval * 2, self.config.max_rto)
        self._events.append(WindowProbe((self.snd_una - 1) & _MASK, self._persist_interval))
        self._persist_deadline = now + self._persist_interval

    def _sample_rtt(self, ack: int, now: float) -> None:
        if self._rtt_seq is None or ack < self._rtt_seq:
            return
        r = max(0.0, now - self._rtt_time)
        self._rtt_seq = None
        if self.srtt is None:
            self.srtt, self.rttvar = r, r / 2  # RFC 6298 2.2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)  # 2.3, beta 1/4
            self.srtt = 0.875 * self.srtt + 0.125 * r  # alpha 1/8
        granularity = 0.001  # the clock's resolution G
        rto = self.srtt + max(granularity, 4 * self.rttvar)
        self.rto = min(max(rto, self.config.min_rto), self.config.max_rto)  # 2.4, 2.5

    # -- state changes -----------------------------------------------------------------------------------------

    def _fire(self, event: TcpInput) -> None:
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalTcpTransition(self.state, event) from None

    def _take_syn(self, syn: TcpSegment) -> None:
        self.irs = syn.seq
        self.rcv_nxt = syn.seq + 1
        # RFC 9293 3.7.1 lets a peer announce any MSS; a tiny one (0 or 1) would make us cut every byte into its
        # own segment (the CVE-2019-11479 "SACK slowness" pattern). Linux floors it at 48 (tcp_min_snd_mss); we use
        # TcpConfig's own floor, 88, which still fits any path a real peer can have (576-byte IPv4 datagrams)
        self.peer_mss = max(MIN_PEER_MSS, syn.mss) if syn.mss is not None else 536
        self._sack_ok = self.config.sack and syn.sack_permitted
        self.eff_mss = min(self.config.mss, self.peer_mss)
        if syn.window_scale is not None and self.config.window_scale:
            # RFC 7323 2.3: both sides offered; a shift above 14 is taken as 14
            self._snd_wscale_offered = True
            self._snd_wscale = min(syn.window_scale, MAX_WINDOW_SCALE)
            if not self._active:
                self._offer_wscale = _wscale_for(self.config.receive_buffer)
            self._rcv_wscale = self._offer_wscale
        else:
            self._snd_wscale = self._rcv_wscale = 0
        # the window of a SYN is never scaled (RFC 7323 2.2)
        self.snd_wnd = syn.window
        self._max_snd_wnd = max(self._max_snd_wnd, syn.window)
        self._snd_wl1 = syn.seq

    def _established(self, now: float) -> None:
        mss = self.eff_mss
        if self._syn_retransmitted:
            # RFC 6298 5.7 and RFC 5681 3.1: a lost SYN means RTO 3 s and a one-segment initial window
            self.rto = max(self.rto if self.srtt is not None else 0.0, 3.0)
            self.cwnd = mss
        elif self.config.initial_window:
            # RFC 6928 2: min(IW * SMSS, max(2 SMSS, 14600)); a window of 3 segments left a loss early in slow start
            # with an ssthresh far below the kernel's (docs/performance.md, bench_ip_goodput)
            self.cwnd = min(self.config.initial_window * mss, max(2 * mss, 14600))
        else:
            self.cwnd = 2 * mss if mss > 2190 else 3 * mss if mss > 1095 else 4 * mss  # RFC 5681 3.1 IW
        if self.config.congestion == "bbr" and self._sack_ok:
            # the PROBE_BW phase to start in, which the draft draws at random, from the ISS: a run repeats
            self._bbr = Bbr(mss, self.cwnd, now, cycle_start=2 + self.iss % 6)
            self._pacing_rate = self._bbr.pacing_rate(self.srtt)
        self._retries = 0
        self._rto_deadline = None
        self._send_base = self.iss + 1
        self._events.append(Connected())
        if self._close_pending:
            self._close_pending = False
            self._fire(TcpInput.CLOSE)

    def _enter_time_wait(self, now: float) -> None:
        self._rto_deadline = self._reo_deadline = self._tlp_deadline = self._pace_deadline = None
        self._persist_deadline = None
        self._time_wait_deadline = now + 2 * self.config.msl

    def _time_out(self, reason: str) -> None:
        self._events.append(TimedOut(reason))
        self._finish(TcpInput.GIVE_UP, reason, error=True)

    def _finish(
        self, event: TcpInput, reason: str | None, *, error: bool = False, refused: bool = False
    ) -> None:
        """Go to CLOSED through the table; an abnormal end sets `error` and loses the buffers."""
        self._fire(event)
        if error:
            self.error = reason
            if event is TcpInput.RECV_RST and reason is not None:
                self._events.append(Reset(reason, refused))
            self._send_buf.clear()
            self._recv_buf.clear()
            self._ooo.clear()
            self._ooo_cost = 0
        self._rto_deadline = self._ack_deadline = self._persist_deadline = self._time_wait_deadline = None
        self._fin_wait_2_deadline = self._reo_deadline = self._tlp_deadline = self._pace_deadline = None
        self._events.append(Closed(reason))

    def _reject(self, reason: str, answered: str) -> None:
        self._events.append(Rejected(reason, answered))


def _chunk_start(chunk: tuple[int, bytearray]) -> int:
    return chunk[0]


def _block_start(block: tuple[int, int]) -> int:
    return block[0]


def _config(config: TcpConfig | None, mss: int, receive_buffer: int | None) -> TcpConfig:
    if config is not None:
        return config
    if receive_buffer is None:
        return TcpConfig(mss=mss)
    return TcpConfig(mss=mss, receive_buffer=receive_buffer)


def _wscale_for(buffer: int) -> int:
    """The smallest shift that lets a 16-bit field say `buffer` (RFC 7323 2.3)."""
    shift = 0
    while (buffer >> shift) > 0xFFFF and shift < MAX_WINDOW_SCALE:
        shift += 1
    return shift
