"""BBR congestion control for the CP's TCP (`TcpConfig(congestion="bbr")`, docs/protocols.md "TCP in the CP's stack").

It follows the BBR of the IETF's congestion control working group (draft-ietf-ccwg-bbr, the model of Linux's
tcp_bbr.c, "BBR v1" there): the sender estimates the bottleneck bandwidth (the largest delivery rate of the last
10 round trips) and the round-trip propagation time (the smallest RTT of the last 10 s), paces at a gain times
that bandwidth and keeps about twice their product in flight. A random loss is repaired without a window
reduction (one round of packet conservation in recovery, then the window it had); the phases are STARTUP (gain
2/ln 2 until the bandwidth stops growing by 25 % in three rounds), DRAIN, PROBE_BW (gains 1.25, 0.75 and six of 1,
one per min RTT) and PROBE_RTT (4 segments for 200 ms when the min RTT is 10 s old). The rate samples come from the
connection (net/tcp.py) as draft-cheng-iccrg-delivery-rate-estimation describes them.

Sans-IO: `on_ack` takes a rate sample and the connection's figures, and `cwnd` and `pacing_rate` say what to do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

__all__ = ["BBR_TRANSITIONS", "Bbr", "BbrInput", "BbrState", "RateSample"]

HIGH_GAIN = 2 / math.log(
    2
)  # draft-ietf-ccwg-bbr: the smallest gain that doubles the delivery rate each round
PROBE_BW_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
BTL_BW_ROUNDS = 10
RT_PROP_SECONDS = 10.0
PROBE_RTT_SECONDS = 0.2
MIN_SEGMENTS = 4  # BBRMinPipeCwnd


class BbrState(Enum):
    """The phases of draft-ietf-ccwg-bbr."""

    STARTUP = "STARTUP"
    DRAIN = "DRAIN"
    PROBE_BW = "PROBE_BW"
    PROBE_RTT = "PROBE_RTT"


class BbrInput(Enum):
    """What moves BBR from one phase to another."""

    PIPE_FILLED = "bandwidth stopped growing"
    QUEUE_DRAINED = "in flight down to the estimated BDP"
    MIN_RTT_EXPIRED = "min RTT estimate 10 s old"
    PROBE_RTT_DONE_FILLED = "PROBE_RTT done, pipe filled"
    PROBE_RTT_DONE_EMPTY = "PROBE_RTT done, pipe not yet filled"


BBR_TRANSITIONS: dict[tuple[BbrState, BbrInput], BbrState] = {
    (BbrState.STARTUP, BbrInput.PIPE_FILLED): BbrState.DRAIN,
    (BbrState.DRAIN, BbrInput.QUEUE_DRAINED): BbrState.PROBE_BW,
    (BbrState.STARTUP, BbrInput.MIN_RTT_EXPIRED): BbrState.PROBE_RTT,
    (BbrState.DRAIN, BbrInput.MIN_RTT_EXPIRED): BbrState.PROBE_RTT,
    (BbrState.PROBE_BW, BbrInput.MIN_RTT_EXPIRED): BbrState.PROBE_RTT,
    (BbrState.PROBE_RTT, BbrInput.PROBE_RTT_DONE_FILLED): BbrState.PROBE_BW,
    (BbrState.PROBE_RTT, BbrInput.PROBE_RTT_DONE_EMPTY): BbrState.STARTUP,
}


@dataclass(frozen=True)
class RateSample:
    """One delivery rate sample (draft-cheng-iccrg-delivery-rate-estimation 3.3): `delivered` bytes over
    `interval` seconds, `rtt` of the newest segment this ACK delivered (negative: none, it was resent),
    `prior_delivered` the connection's delivered count when that segment was sent, `app_limited` when the sender
    had nothing to send then, `acked` the bytes this ACK delivered."""

    delivered: int
    interval: float
    rtt: float
    prior_delivered: int
    app_limited: bool
    acked: int

    @property
    def rate(self) -> float:
        """Bytes per second; 0 when the interval is no interval."""
        return self.delivered / self.interval if self.interval > 0 else 0.0


class Bbr:
    """One connection's BBR state. `mss` in bytes, `initial_cwnd` in bytes, `cycle_start` the PROBE_BW phase to
    start in (the draft draws it at random; the caller passes a number it derives from its ISS, so that a run
    repeats)."""

    def __init__(self, mss: int, initial_cwnd: int, now: float, *, cycle_start: int = 2) -> None:
        self.mss = mss
        self.initial_cwnd = initial_cwnd
        self.state = BbrState.STARTUP
        self.pacing_gain = HIGH_GAIN
        self.cwnd_gain = HIGH_GAIN
        self._bw_samples: list[tuple[int, float]] = []  # (round, rate): the windowed max filter
        self.rt_prop = math.inf
        self._rt_prop_stamp = now
        self.round_count = 0
        self._next_round_delivered = 0
        self.round_start = False
        self.filled_pipe = False
        self._full_bw = 0.0
        self._full_bw_count = 0
        self._cycle_index = cycle_start % len(PROBE_BW_GAINS)
        self._cycle_stamp = now
        self._probe_rtt_done: float | None = None
        self._probe_rtt_round_done = False
        self.prior_cwnd = 0
        self._restore = False  # PROBE_RTT ended: the next window is the one it had before
        self._conservation_until: int | None = None  # the delivered count at which packet conservation ends

    # -- the model --------------------------------------------------------------------------------------------

    @property
    def btl_bw(self) -> float:
        """The bottleneck bandwidth estimate, bytes per second (0 before a sample)."""
        return max((rate for _, rate in self._bw_samples), default=0.0)

    def bdp(self, gain: float) -> int:
        """`gain` times the estimated bandwidth-delay product, in bytes; the initial window before estimates."""
        if self.rt_prop == math.inf or self.btl_bw == 0:
            return self.initial_cwnd
        # 3 segments of quantization budget (draft-ietf-ccwg-bbr, BBRQuantizationBudget): delayed and
        # aggregated ACKs
        return int(gain * self.btl_bw * self.rt_prop) + 3 * self.mss

    def pacing_rate(self, srtt: float | None) -> float:
        """Bytes per second to pace at: the gain times the bandwidth estimate, or before any estimate the initial
        window per SRTT (per millisecond without an SRTT) times the startup gain."""
        if self.btl_bw > 0:
            return self.pacing_gain * self.btl_bw
        return HIGH_GAIN * self.initial_cwnd / (srtt if srtt else 0.001)

    def _fire(self, event: BbrInput) -> None:
        self.state = BBR_TRANSITIONS[(self.state, event)]
        if self.state is BbrState.DRAIN:
            self.pacing_gain, self.cwnd_gain = 1 / HIGH_GAIN, HIGH_GAIN
        elif self.state is BbrState.PROBE_BW:
            self.cwnd_gain = 2.0
            self.pacing_gain = PROBE_BW_GAINS[self._cycle_index]
        elif self.state is BbrState.STARTUP:
            self.pacing_gain = self.cwnd_gain = HIGH_GAIN
        else:
            self.pacing_gain, self.cwnd_gain = 1.0, 1.0

    def on_ack(self, sample: RateSample | None, delivered: int, inflight: int, cwnd: int, now: float) -> None:
        """Update the model from one ACK: the rate sample (None when the ACK delivered nothing new), the
        connection's delivered count after it, the bytes still in flight and the window."""
        self.round_start = False
        if sample is not None:
            if sample.prior_delivered >= self._next_round_delivered:
                self._next_round_delivered = delivered
                self.round_count += 1
                self.round_start = True
            rate = sample.rate
            if rate > 0 and (rate >= self.btl_bw or not sample.app_limited):
                self._bw_samples.append((self.round_count, rate))
            self._bw_samples = [(r, b) for r, b in self._bw_samples if r > self.round_count - BTL_BW_ROUNDS]
            if len(self._bw_samples) > 64:  # keep the running maximum of each round only
                best: dict[int, float] = {}
                for r, b in self._bw_samples:
                    best[r] = max(best.get(r, 0.0), b)
                self._bw_samples = sorted(best.items())
        if self.state is BbrState.PROBE_BW:
            self._advance_cycle(sample, inflight, now)
        if sample is not None and self.round_start and not self.filled_pipe and not sample.app_limited:
            if self.btl_bw >= self._full_bw * 1.25:
                self._full_bw, self._full_bw_count = self.btl_bw, 0
            else:
                self._full_bw_count += 1
                self.filled_pipe = self._full_bw_count >= 3
        if self.state is BbrState.STARTUP and self.filled_pipe:
            self._fire(BbrInput.PIPE_FILLED)
        if self.state is BbrState.DRAIN and inflight <= self.bdp(1.0):
            self._fire(BbrInput.QUEUE_DRAINED)
            self._cycle_stamp = now
        expired = now > self._rt_prop_stamp + RT_PROP_SECONDS
        if sample is not None and sample.rtt >= 0 and (sample.rtt <= self.rt_prop or expired):
            self.rt_prop, self._rt_prop_stamp = sample.rtt, now
        if expired and self.state is not BbrState.PROBE_RTT:
            self.prior_cwnd = cwnd
            self._fire(BbrInput.MIN_RTT_EXPIRED)
            self._probe_rtt_done = None
        if self.state is BbrState.PROBE_RTT:
            self._probe_rtt(inflight, now)

    def _advance_cycle(self, sample: RateSample | None, inflight: int, now: float) -> None:
        """PROBE_BW's gain cycle: one phase per min RTT; the 1.25 phase lasts until the probe filled the pipe, the
        0.75 phase ends as soon as what is in flight is down to the estimate."""
        elapsed = now - self._cycle_stamp > self.rt_prop
        gain = self.pacing_gain
        if gain > 1:
            done = elapsed and inflight >= self.bdp(gain)
        elif gain < 1:
            done = elapsed or inflight <= self.bdp(1.0)
        else:
            done = elapsed
        if done:
            self._cycle_index = (self._cycle_index + 1) % len(PROBE_BW_GAINS)
            self._cycle_stamp = now
            self.pacing_gain = PROBE_BW_GAINS[self._cycle_index]

    def _probe_rtt(self, inflight: int, now: float) -> None:
        if self._probe_rtt_done is None:
            if inflight <= MIN_SEGMENTS * self.mss:
                self._probe_rtt_done = now + PROBE_RTT_SECONDS
                self._probe_rtt_round_done = False
            return
        if self.round_start:
            self._probe_rtt_round_done = True
        if self._probe_rtt_round_done and now >= self._probe_rtt_done:
            self._rt_prop_stamp = now
            self._restore = True
            self._fire(BbrInput.PROBE_RTT_DONE_FILLED if self.filled_pipe else BbrInput.PROBE_RTT_DONE_EMPTY)
            self._cycle_stamp = now

    # -- the window -------------------------------------------------------------------------------------------

    def enter_recovery(self, cwnd: int, inflight: int, delivered: int) -> int:
        """A loss starts a recovery: remember the window, and hold what is in flight for one round (packet
        conservation); returns the new cwnd."""
        self.prior_cwnd = cwnd
        self._conservation_until = delivered + max(inflight, self.mss)
        return max(inflight + self.mss, MIN_SEGMENTS * self.mss)

    def exit_recovery(self, cwnd: int) -> int:
        """The recovery ended: the window it had before, if that is larger."""
        self._conservation_until = None
        return max(cwnd, self.prior_cwnd)

    def on_timeout(self, cwnd: int) -> None:
        """An RTO: remember the window (the connection drops to one segment and regrows towards the target)."""
        self.prior_cwnd = max(self.prior_cwnd, cwnd)
        self._conservation_until = None

    def cwnd(self, cwnd: int, acked: int, inflight: int, delivered: int) -> int:
        """The window after an ACK that delivered `acked` bytes (draft-ietf-ccwg-bbr, BBRSetCwnd)."""
        if self.state is BbrState.PROBE_RTT:
            return MIN_SEGMENTS * self.mss
        if self._restore:
            self._restore = False
            cwnd = max(cwnd, self.prior_cwnd)
        if self._conservation_until is not None:
            if delivered < self._conservation_until:
                return max(cwnd, inflight + acked)
            self._conservation_until = None
        target = self.bdp(self.cwnd_gain)
        if self.filled_pipe:
            cwnd = min(cwnd + acked, target)
        elif cwnd < target or delivered < self.initial_cwnd:
            cwnd += acked
        return max(cwnd, MIN_SEGMENTS * self.mss)
