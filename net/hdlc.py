"""HDLC-like framing for PPP (RFC 1662), sans-IO: frames to escaped bytes between flags, and bytes back to frames.

Follows RFC 1662 sections 3-4 and 7: flag 0x7E, control escape 0x7D (the next byte XOR 0x20), the Async-Control-
Character-Map (ACCM) of the characters 0x00-0x1F that are escaped on sending and, when they arrive unescaped, dropped
on receiving (section 4.2: a DCE may insert them, e.g. XON/XOFF), the 16-bit FCS of appendix C.2, and the
all-stations address / UI control field (0xFF 0x03), which Address-and-Control-Field-Compression (RFC 1661 6.6) may
leave out. The deframer bounds a frame's size and drops, with a reason, a frame with a bad FCS, a runt (fewer than
4 bytes between flags, section 4.3), an over-long frame and an aborted one (0x7D 0x7E, section 4.4.1).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

FLAG = 0x7E
ESCAPE = 0x7D
ADDRESS = 0xFF  # all-stations (RFC 1662 3.1)
CONTROL = 0x03  # Unnumbered Information
DEFAULT_ACCM = 0xFFFFFFFF  # every control character escaped until LCP negotiates otherwise (RFC 1662 7.1)
FCS_INIT = 0xFFFF
FCS_GOOD = 0xF0B8  # the FCS over a frame and its own FCS (RFC 1662 C.2)
MIN_FRAME = 4  # bytes between flags, FCS included: shorter is a runt (RFC 1662 4.3)
# the largest frame the deframer keeps: a 1500-byte MRU, protocol, address/control and FCS, with room for a peer
# that negotiated a larger MRU up to the 16-bit length IP itself has
DEFAULT_MAX_FRAME = 1500 + 8


def _table() -> tuple[int, ...]:
    """The FCS-16 lookup table of RFC 1662 C.2 (polynomial x^16 + x^12 + x^5 + 1, bits reversed: 0x8408)."""
    table = []
    for byte in range(256):
        value = byte
        for _ in range(8):
            value = (value >> 1) ^ 0x8408 if value & 1 else value >> 1
        table.append(value & 0xFFFF)
    return tuple(table)


_FCS_TABLE = _table()


def fcs16(data: bytes | bytearray | memoryview, fcs: int = FCS_INIT) -> int:
    """The running FCS-16 of RFC 1662 C.2 over `data` (not complemented)."""
    table = _FCS_TABLE
    for byte in bytes(data):
        fcs = (fcs >> 8) ^ table[(fcs ^ byte) & 0xFF]
    return fcs


def frame_check(data: bytes | bytearray | memoryview) -> bytes:
    """The two FCS bytes sent after `data`: the complement, least significant byte first (RFC 1662 C.2)."""
    fcs = fcs16(data) ^ 0xFFFF
    return bytes((fcs & 0xFF, fcs >> 8))


def _escape_set(accm: int) -> frozenset[int]:
    return frozenset({FLAG, ESCAPE} | {c for c in range(32) if accm >> c & 1})


def encode_frame(frame: bytes, accm: int = DEFAULT_ACCM) -> bytes:
    """One frame on the wire: `frame` (address/control if any, protocol, information) with its FCS, every byte of
    the ACCM, the flag and the escape escaped, between two flags."""
    body = frame + frame_check(frame)
    escaped = _escape_set(accm)
    out = bytearray((FLAG,))
    for byte in body:
        if byte in escaped:
            out += bytes((ESCAPE, byte ^ 0x20))
        else:
            out.append(byte)
    out.append(FLAG)
    return bytes(out)


class DropReason(StrEnum):
    """Why the deframer dropped what it read (trace field `reason`)."""

    BAD_FCS = "bad_fcs"
    RUNT = "runt"
    TOO_LONG = "too_long"
    ABORTED = "aborted"  # 0x7D 0x7E: the sender abandoned the frame (RFC 1662 4.4.1)


@dataclass(frozen=True, slots=True)
class Frame:
    """A good frame: its bytes without the FCS (address/control as sent, then protocol and information), and the
    bytes it took on the wire, flags excluded."""

    data: bytes
    wire: bytes


@dataclass(frozen=True, slots=True)
class Dropped:
    """What the deframer dropped: the reason and the bytes it had (at most `max_frame` of them)."""

    reason: DropReason
    wire: bytes
    length: int


class Deframer:
    """Bytes in, Frame and Dropped out. `accm` is the receive ACCM: a control character it names that arrives
    unescaped is dropped (RFC 1662 4.2). Between frames, several flags count as one, and bytes before the first
    flag (the host's chat, a CONNECT it did not read) start a frame like any others: they end as a runt or a bad
    FCS."""

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME, accm: int = DEFAULT_ACCM) -> None:
        self.max_frame = max_frame
        self.accm = accm
        self._body = bytearray()
        self._wire = bytearray()
        self._escaped = False
        self._overflow = 0  # bytes past max_frame in the frame being read (not kept)
        self.good = 0
        self.dropped = 0
        self._ignore: tuple[int, frozenset[int]] = (-1, frozenset())

    def _drop_set(self) -> frozenset[int]:
        if self._ignore[0] != self.accm:
            self._ignore = (self.accm, frozenset(c for c in range(32) if self.accm >> c & 1))
        return self._ignore[1]

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | Dropped]:
        return list(self.frames(data))

    def frames(self, data: bytes | bytearray | memoryview) -> Iterator[Frame | Dropped]:
        """As feed, one frame at a time: a change of `accm` made after a frame applies to the bytes after it (the
        peer's ACCM takes effect right after the Configure-Ack that opens LCP, perhaps in the same read)."""
        ignore = self._drop_set()
        for byte in bytes(data):
            body, wire = self._body, self._wire  # new buffers after each frame
            if byte == FLAG:
                if self._escaped:
                    yield self._drop(DropReason.ABORTED)
                    ignore = self._drop_set()
                elif body or self._overflow:
                    yield self._end()
                    ignore = self._drop_set()
                continue
            if byte in ignore:
                continue  # inserted by the line, not sent by the peer (RFC 1662 4.2)
            if len(wire) < self.max_frame * 2:
                wire.append(byte)
            if byte == ESCAPE:
                self._escaped = True
                continue
            if self._escaped:
                byte ^= 0x20
                self._escaped = False
            if len(body) < self.max_frame + 2:
                body.append(byte)
            else:
                self._overflow += 1

    def _reset(self) -> None:
        self._body = bytearray()
        self._wire = bytearray()
        self._escaped = False
        self._overflow = 0

    def _drop(self, reason: DropReason) -> Dropped:
        dropped = Dropped(reason, bytes(self._wire), len(self._body) + self._overflow)
        self.dropped += 1
        self._reset()
        return dropped

    def _end(self) -> Frame | Dropped:
        body = self._body
        if self._overflow:
            return self._drop(DropReason.TOO_LONG)
        if len(body) < MIN_FRAME:
            return self._drop(DropReason.RUNT)
        if fcs16(body) != FCS_GOOD:
            return self._drop(DropReason.BAD_FCS)
        frame = Frame(bytes(body[:-2]), bytes(self._wire))
        self.good += 1
        self._reset()
        return frame


def strip_address(data: bytes) -> bytes:
    """A frame without its address and control field (0xFF 0x03), which a peer may leave out once ACFC is
    negotiated (RFC 1661 6.6): a frame that starts otherwise is returned as it is."""
    if data[:2] == bytes((ADDRESS, CONTROL)):
        return data[2:]
    return data
