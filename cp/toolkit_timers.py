"""The terminal's toolkit timers (ETSI TS 102 223 sections 6.4.21 TIMER MANAGEMENT and 7.5 TIMER EXPIRATION),
sans-IO: commands and the current time in, the terminal response's result and objects and the timer to start or
stop out. The adapter (cp/bip_service.py) runs the clock and reports an expiry with `expired`.

Timers 1 to 8 (section 8.37). Qualifier bits 1-2 (section 8.6): 00 start (with its timer value), 01 deactivate,
10 get the current value. The value (section 8.38) is hours, minutes and seconds, each a swapped BCD byte. A timer
that is not running cannot be deactivated or read: result 0x24 (action in contradiction with the current timer
state). Starting a running timer starts it again. The TERMINAL RESPONSE carries the timer identifier, and for
deactivate and get the time left; the TIMER EXPIRATION envelope (tag D7) the timer identifier and the value it was
started with. A card that answers that envelope 93 00 (toolkit busy, TS 102 221 section 7.4.2.2) gets it again
later (TS 102 223 section 7.5: the terminal retries), every BUSY_RETRY_SECONDS, at most BUSY_RETRIES times.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bipsim.net.sms_pdu import decode_semi_octets, encode_semi_octets
from bipsim.uicc.cat import (
    CatObject,
    DeviceId,
    Envelope,
    EnvelopeTag,
    GeneralResult,
    ProactiveCommand,
    Tag,
    obj,
)

TIMERS = range(1, 9)
START, DEACTIVATE, GET_VALUE = 0, 1, 2
MAX_SECONDS = 24 * 3600 - 1
SW_BUSY = 0x9300  # the card's toolkit is busy: the envelope was not taken (TS 102 221 section 10.2.1.1)
BUSY_RETRY_SECONDS = 1.0  # a TIMER EXPIRATION the card refused busy is offered again after this long
BUSY_RETRIES = 10  # ... this many times at most, so a card that stays busy does not hold the loop forever


def timer_value(seconds: int) -> bytes:
    """Section 8.38: hours, minutes, seconds in swapped BCD."""
    seconds = max(0, min(seconds, MAX_SECONDS))
    return encode_semi_octets(f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}")


def _digit_pairs(value: bytes) -> list[str]:
    try:
        digits = decode_semi_octets(value, 2 * len(value), "timer value")
    except ValueError as exc:
        raise ValueError(f"timer value {value.hex().upper()} is not BCD") from exc
    if not digits.isdigit():
        raise ValueError(f"timer value {value.hex().upper()} is not BCD")
    return [digits[i : i + 2] for i in range(0, len(digits), 2)]


def seconds_of(value: bytes) -> int:
    """The seconds a timer value holds; ValueError when it is not 3 BCD bytes with minutes and seconds < 60."""
    if len(value) != 3:
        raise ValueError("a timer value is 3 bytes")
    hours, minutes, seconds = (int(pair) for pair in _digit_pairs(value))
    if minutes > 59 or seconds > 59:
        raise ValueError("minutes and seconds are below 60")
    return hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True)
class TimerChange:
    """Start (`seconds` set) or stop (`seconds` None) timer `timer`; `generation` tells a late expiry of an
    earlier start from the current one."""

    timer: int
    seconds: float | None
    generation: int


@dataclass
class ToolkitTimers:
    """The running timers: identifier -> (deadline, seconds started with, generation)."""

    running: dict[int, tuple[float, int, int]] = field(default_factory=dict)
    busy_refusals: dict[int, int] = field(default_factory=dict)  # timer -> times its expiry was refused busy
    _generation: int = 0

    def on_command(
        self, command: ProactiveCommand, now: float
    ) -> tuple[int, bytes, list[CatObject], TimerChange | None]:
        """TIMER MANAGEMENT: (general result, additional information, objects of the TR, the timer change)."""
        action = command.qualifier & 0x03
        identifier = command.get(Tag.TIMER_IDENTIFIER)
        if identifier is None or len(identifier.value) != 1:
            return GeneralResult.REQUIRED_VALUES_MISSING, b"", [], None
        timer = identifier.value[0]
        if timer not in TIMERS or action not in (START, DEACTIVATE, GET_VALUE):
            return GeneralResult.DATA_NOT_UNDERSTOOD, b"", [], None
        ident = obj(Tag.TIMER_IDENTIFIER, bytes((timer,)), cr=True)
        if action == START:
            value = command.get(Tag.TIMER_VALUE)
            if value is None:
                return GeneralResult.REQUIRED_VALUES_MISSING, b"", [], None
            try:
                seconds = seconds_of(value.value)
            except ValueError:
                return GeneralResult.DATA_NOT_UNDERSTOOD, b"", [], None
            self._generation += 1
            self.running[timer] = (now + seconds, seconds, self._generation)
            return GeneralResult.OK, b"", [ident], TimerChange(timer, seconds, self._generation)
        state = self.running.get(timer)
        if state is None:
            return GeneralResult.ACTION_CONTRADICTS_TIMER, b"", [], None
        deadline, _, generation = state
        left = obj(Tag.TIMER_VALUE, timer_value(round(max(0.0, deadline - now))), cr=False)
        if action == GET_VALUE:
            return GeneralResult.OK, b"", [ident, left], None
        del self.running[timer]
        return GeneralResult.OK, b"", [ident, left], TimerChange(timer, None, generation)

    def expired(self, timer: int, generation: int) -> Envelope | None:
        """The TIMER EXPIRATION envelope of a timer that ran out, None when that start was deactivated or
        restarted meanwhile."""
        state = self.running.get(timer)
        if state is None or state[2] != generation:
            return None
        del self.running[timer]
        return Envelope(
            (
                obj(Tag.DEVICE_IDENTITIES, bytes((DeviceId.TERMINAL, DeviceId.UICC)), cr=True),
                obj(Tag.TIMER_IDENTIFIER, bytes((timer,)), cr=True),
                obj(Tag.TIMER_VALUE, timer_value(state[1]), cr=True),
            ),
            EnvelopeTag.TIMER_EXPIRATION,
        )

    def expiry_answered(self, timer: int, sw: int) -> int | None:
        """The card's status word for a TIMER EXPIRATION envelope: the number of the retry to make (1, 2, ...)
        when it answered 93 00 and retries are left, else None (taken, refused otherwise, or given up)."""
        if sw != SW_BUSY:
            self.busy_refusals.pop(timer, None)
            return None
        refusals = self.busy_refusals.get(timer, 0) + 1
        if refusals > BUSY_RETRIES:
            del self.busy_refusals[timer]
            return None
        self.busy_refusals[timer] = refusals
        return refusals

    def clear(self) -> list[int]:
        """The card went away: every timer stops; returns their identifiers."""
        timers = sorted(self.running)
        self.running.clear()
        self.busy_refusals.clear()
        return timers
