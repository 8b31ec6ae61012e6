"""3GPP TS 27.010 basic option framing, sans-IO: frames, the FCS of annex B, a resynchronising parser and the
control-channel messages of section 5.4.6.3.

Frame: F9 | address (EA, C/R, DLCI) | control (SABM/UA/DM/DISC/UIH/UI, P/F) | length (EA, 1 or 2 bytes) |
information | FCS | F9. The FCS covers address, control and length for UIH frames and also the information for
the others (section 5.2.1.6). A frame with a bad FCS is dropped and counted, never delivered.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

FLAG = 0xF9
PF = 0x10


class FrameType(IntEnum):
    SABM = 0x2F
    UA = 0x63
    DM = 0x0F
    DISC = 0x43
    UIH = 0xEF
    UI = 0x03


class ControlType(IntEnum):
    """Control channel message types (section 5.4.6.3), as the type octet without its C/R and EA bits."""

    PN = 0x80
    PSC = 0x40
    CLD = 0xC0
    TEST = 0x20
    FCON = 0xA0
    FCOFF = 0x60
    MSC = 0xE0
    NSC = 0x10
    RPN = 0x90
    RLS = 0x50
    SNC = 0xD0


def _crc_table() -> list[int]:
    """The reversed CRC-8 table of annex B (polynomial x^8 + x^2 + x + 1, processed LSB first)."""
    table = []
    for value in range(256):
        crc = value
        for _ in range(8):
            crc = (crc >> 1) ^ 0xE0 if crc & 1 else crc >> 1
        table.append(crc)
    return table


CRC_TABLE = _crc_table()
FCS_GOOD = 0xCF  # the CRC over the checked fields plus a correct FCS (annex B.3)


def _crc(data: bytes | bytearray) -> int:
    crc = 0xFF
    for byte in data:
        crc = CRC_TABLE[crc ^ byte]
    return crc


def fcs(data: bytes | bytearray) -> int:
    return 0xFF - _crc(data)


def fcs_ok(data: bytes, received: int) -> bool:
    crc = 0xFF
    for byte in data:
        crc = CRC_TABLE[crc ^ byte]
    return CRC_TABLE[crc ^ received] == FCS_GOOD


class Frame(NamedTuple):
    """One received or built frame. A named tuple: the parser makes one per frame, and a tuple is made in about
    half the time of a frozen dataclass."""

    dlci: int
    type: FrameType
    cr: bool
    pf: bool = False
    info: bytes = b""

    def encode(self) -> bytes:
        return encode_frame(self.dlci, self.type, self.cr, self.pf, self.info)

    @property
    def is_data(self) -> bool:
        """User data: UIH or UI on a DLC other than the control channel (section 5.4.6.1)."""
        return self.dlci != 0 and (self.type is FrameType.UIH or self.type is FrameType.UI)

    def describe(self) -> str:
        pf = " P/F" if self.pf else ""
        size = f" ({len(self.info)} bytes)" if self.info else ""
        return f"{self.type.name} DLC{self.dlci}{pf}{size}"


def length_field(size: int) -> bytes:
    if size <= 0x7F:
        return bytes(((size << 1) | 1,))
    if size > 0x7FFF:
        raise ValueError(f"a 27.010 frame carries at most 32767 bytes, not {size}")
    return bytes(((size << 1) & 0xFE, size >> 7))


# UIH frames carry an FCS over their header only, and headers repeat (same DLC, same size): both sides cache per
# header. Bounded, so that a peer sending every possible length cannot grow them without limit.
_CACHE_MAX = 4096
_UIH_ENDS: dict[tuple[int, bool, bool, int], tuple[bytes, bytes]] = {}  # -> (flag + header, FCS + flag)
_HEADER_CRC: dict[bytes, int] = {}  # receive side: header -> CRC register after it
# receive side, fast path: address | length octets << 8 -> CRC register after them
_UIH_CRC: dict[int, int] = {}
_UIH = FrameType.UIH
_UIH_CONTROL = int(FrameType.UIH)
_TYPES = {t.value: t for t in FrameType}
_FLAG_BYTE = bytes((FLAG,))


def _uih_ends(dlci: int, cr: bool, pf: bool, size: int) -> tuple[bytes, bytes]:
    key = (dlci, cr, pf, size)
    ends = _UIH_ENDS.get(key)
    if ends is None:
        header = bytes(((dlci << 2) | (2 if cr else 0) | 1, FrameType.UIH | (PF if pf else 0)))
        header += length_field(size)
        ends = (_FLAG_BYTE + header, bytes((fcs(header), FLAG)))
        if len(_UIH_ENDS) < _CACHE_MAX:
            _UIH_ENDS[key] = ends
    return ends


def encode_frame(
    dlci: int, ftype: FrameType, cr: bool, pf: bool, info: bytes | bytearray | memoryview = b""
) -> bytes:
    if ftype is FrameType.UIH:
        head, tail = _uih_ends(dlci, cr, pf, len(info))
        return b"".join((head, info, tail))  # one copy of the information field
    header = bytes(((dlci << 2) | (2 if cr else 0) | 1, ftype | (PF if pf else 0))) + length_field(len(info))
    check = fcs(header + bytes(info))
    return b"".join((_FLAG_BYTE, header, info, bytes((check, FLAG))))


class FrameParser:
    """Feeds line bytes, yields frames. Counts frames dropped for a bad FCS or a bad structure.

    The basic option has no transparency: 0xF9 may occur inside a frame, so a frame is delimited by its length.
    A frame that turns out invalid (no closing flag, unknown control, bad FCS) is dropped and parsing resumes at
    the next flag after its opening one. A frame cut short (the sender restarted mid-frame) would otherwise swallow
    the frames after it until its length is reached; so when the bytes so far end in complete, valid frames that
    start at a flag inside the pending one, the pending one is taken as truncated and dropped.
    """

    _INCOMPLETE = -1
    _BAD = -2

    def __init__(self, max_info: int = 32767) -> None:
        self.max_info = max_info
        self._buffer = bytearray()
        self._wanted = 0  # see _wanted_length: feed only keeps bytes until the buffer is this long
        # A multiplexer may close down on any DLC 0 frame (CLD, DISC), and what follows it on the line is then
        # AT text, not frames: with pause_on_control, feed stops after each DLC 0 frame (paused is set) and keeps
        # the rest unparsed, for feed(b"") to go on or take_rest() to hand back.
        self.pause_on_control = False
        self.paused = False
        self.bad_fcs = 0
        self.malformed = 0
        self._error = ""
        self._need = 0  # when _at answers _INCOMPLETE: the buffer length at which it can decide
        # The search for frames after a cut one (see feed) remembers, for the pending frame at the buffer's start,
        # how far it has looked for flags and which flags wait for more bytes before they can be decided, so that
        # a peer writing flags one read at a time does not have every flag rescanned on each read (quadratic).
        # Offsets are relative to the pending frame's opening flag.
        self._tail_scanned = 0
        self._tail_waiting: list[tuple[int, int]] = []  # heap of (buffer length needed, flag offset)

    def _at(self, buf: bytearray, i: int, n: int) -> tuple[int, Frame | None]:
        """The frame opening at flag buf[i]: (index of its closing flag, frame), or (_INCOMPLETE/_BAD, None)."""
        if n - i < 5:
            self._need = i + 5
            return self._INCOMPLETE, None
        address, control, first = buf[i + 1], buf[i + 2], buf[i + 3]
        if first & 1:
            size, head = first >> 1, 4
        else:
            if n - i < 6:
                self._need = i + 6
                return self._INCOMPLETE, None
            size, head = (first >> 1) | (buf[i + 4] << 7), 5
        if not address & 1 or size > self.max_info:
            self._error = "malformed"
            return self._BAD, None
        end = i + head + size + 1
        if end >= n:
            self._need = end + 1
            return self._INCOMPLETE, None
        ftype = _TYPES.get(control & ~PF)
        if buf[end] != FLAG or ftype is None:
            self._error = "malformed"
            return self._BAD, None
        if ftype is FrameType.UIH:
            header = bytes(buf[i + 1 : i + head])
            crc = _HEADER_CRC.get(header)
            if crc is None:
                crc = _crc(header)
                if len(_HEADER_CRC) < _CACHE_MAX:
                    _HEADER_CRC[header] = crc
        else:
            crc = _crc(buf[i + 1 : end - 1])
        if CRC_TABLE[crc ^ buf[end - 1]] != FCS_GOOD:
            self._error = "bad_fcs"
            return self._BAD, None
        info = bytes(buf[i + head : end - 1])
        return end, Frame(address >> 2, ftype, bool(address & 2), bool(control & PF), info)

    def _tail_need(self, buf: bytearray, k: int, n: int) -> int:
        """Whether buf[k:] (k at a flag) is nothing but complete, valid frames: 0 when it is, -1 when it never can
        be (an invalid frame: its bytes are all here), else the buffer length at which it can be decided."""
        while True:
            end, frame = self._at(buf, k, n)
            if frame is None:
                return self._need if end == self._INCOMPLETE else -1
            if end == n - 1:
                return 0
            k = end
            while k + 1 < n and buf[k + 1] == FLAG:
                k += 1

    def _cut_short_at(self, buf: bytearray, pos: int, n: int) -> int:
        """The flag inside the pending frame at buf[pos] from which the rest of the buffer is complete, valid
        frames (the pending one was cut short by a sender that restarted), or 0. Each flag is tried when it first
        arrives and again only once enough bytes are here to decide it."""
        waiting = self._tail_waiting
        candidates: list[int] = []
        while waiting and waiting[0][0] <= n - pos:
            candidates.append(heapq.heappop(waiting)[1])
        k = buf.find(FLAG, pos + max(1, self._tail_scanned))
        while 0 < k < n - 1:
            candidates.append(k - pos)
            k = buf.find(FLAG, k + 1)
        self._tail_scanned = n - 1 - pos  # the last flag is tried once bytes follow it
        for offset in sorted(candidates):
            need = self._tail_need(buf, pos + offset, n)
            if need == 0:
                return pos + offset
            if need > 0:
                heapq.heappush(waiting, (need - pos, offset))
        return 0

    def _forget_tail_search(self) -> None:
        self._tail_scanned = 0
        self._tail_waiting.clear()

    def _wanted_length(self, buf: bytearray) -> int:
        """For a buffer holding the start of one frame at buf[0]: the buffer length at which that frame is
        complete (as _at counts it), or 0 when its header is not all here or is invalid."""
        if len(buf) < 5 or buf[0] != FLAG or buf[1] == FLAG or not buf[1] & 1:
            return 0
        first = buf[3]
        size, head = (first >> 1, 4) if first & 1 else ((first >> 1) | (buf[4] << 7), 5)
        return head + size + 2 if size <= self.max_info else 0

    def hold(self, data: bytes | bytearray) -> None:
        """Keeps bytes without parsing them (they follow a close-down: AT text), for take_rest."""
        self._buffer += data
        self._wanted = 0
        self._forget_tail_search()

    def take_rest(self) -> bytes:
        """The bytes fed but not parsed (after a pause, less the closing flag of the frame paused at)."""
        rest = bytes(self._buffer[1:] if self.paused and self._buffer[:1] == _FLAG_BYTE else self._buffer)
        self._buffer.clear()
        self._wanted = 0
        self.paused = False
        self._forget_tail_search()
        return rest

    def feed(self, data: bytes | bytearray) -> list[Frame]:
        self.paused = False
        buf = self._buffer
        wanted = self._wanted
        if wanted and len(buf) + len(data) < wanted and data and data[-1] != FLAG:
            # the middle of a long frame: nothing can complete, and (no flag at the end) nothing can show that
            # the pending frame was cut short, so the bytes are only kept (one pty read is 4 KiB at most)
            buf += data
            return []
        buf += data
        n = len(buf)
        frames: list[Frame] = []
        pos = 0
        max_info = self.max_info
        while True:
            # fast path, the bulk of a busy line: a UIH frame without P/F opens here, after the closing flag of
            # the frame before (senders that do not share flags put two)
            if n - pos > 6 and buf[pos] == FLAG and buf[pos + 1] == FLAG:
                pos += 1
            if n - pos > 5 and buf[pos] == FLAG and buf[pos + 2] == _UIH_CONTROL:
                address, first = buf[pos + 1], buf[pos + 3]
                if first & 1:
                    size, head, key = first >> 1, 4, address | first << 8
                else:
                    size, head = (first >> 1) | (buf[pos + 4] << 7), 5
                    key = address | first << 8 | buf[pos + 4] << 16
                end = pos + head + size + 1
                if address & 1 and address != FLAG and size <= max_info and end < n and buf[end] == FLAG:
                    crc = _UIH_CRC.get(key)
                    if crc is None:
                        crc = _crc(buf[pos + 1 : pos + head])
                        if len(_UIH_CRC) < _CACHE_MAX:
                            _UIH_CRC[key] = crc
                    if CRC_TABLE[crc ^ buf[end - 1]] == FCS_GOOD:
                        frames.append(
                            Frame(
                                address >> 2, _UIH, bool(address & 2), False, bytes(buf[pos + head : end - 1])
                            )
                        )
                        pos = end
                        if address < 4 and self.pause_on_control:
                            self.paused = True
                            break
                        continue
            start = buf.find(FLAG, pos)
            if start < 0:
                if pos < n:
                    self.malformed += 1  # bytes outside any frame
                pos = n
                break
            if start > pos:
                self.malformed += 1
            # repeated flags: the last one opens the frame (a closing flag may also open the next)
            while start + 1 < n and buf[start + 1] == FLAG:
                start += 1
            pos = start
            end, frame = self._at(buf, pos, n)
            if frame is not None:
                frames.append(frame)
                pos = end
                if frame.dlci == 0 and self.pause_on_control:
                    self.paused = True
                    break
                continue
            if end == self._BAD:
                if self._error == "bad_fcs":
                    self.bad_fcs += 1
                else:
                    self.malformed += 1
                nxt = buf.find(FLAG, pos + 1)
                pos = nxt if nxt > 0 else n
                continue
            # incomplete: is it a truncated frame followed by complete ones?
            if buf[n - 1] == FLAG and n - pos > 2:
                if pos:  # a frame other than the one pending at the start of this read
                    self._forget_tail_search()
                k = self._cut_short_at(buf, pos, n)
                if k:
                    self.malformed += 1
                    self._forget_tail_search()
                    pos = k
                    continue
            break
        if (pos or frames) and (self._tail_scanned or self._tail_waiting):
            self._forget_tail_search()  # the pending frame the search remembered is decided
        if pos:
            del buf[:pos]
        self._wanted = self._wanted_length(buf)
        return frames


# --- control channel messages (section 5.4.6.3) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControlMessage:
    type: int  # ControlType value, or an unknown type octet (without C/R, EA)
    command: bool
    value: bytes = b""

    def encode(self) -> bytes:
        return (
            bytes((self.type | (2 if self.command else 0) | 1,)) + length_field(len(self.value)) + self.value
        )


def decode_control(info: bytes) -> list[ControlMessage]:
    """Splits a DLC 0 UIH information field into messages; raises ValueError when malformed."""
    out = []
    i = 0
    while i < len(info):
        octet = info[i]
        if not octet & 1:
            raise ValueError("multi-octet control types are not used by 27.010")
        i += 1
        size = 0
        shift = 0
        while True:
            if i >= len(info):
                raise ValueError("control message length cut short")
            b = info[i]
            i += 1
            size |= (b >> 1) << shift
            shift += 7
            if b & 1:
                break
        if i + size > len(info):
            raise ValueError("control message value cut short")
        out.append(ControlMessage(octet & 0xFC, bool(octet & 2), bytes(info[i : i + size])))
        i += size
    return out


# V.24 signals of MSC (section 5.4.6.3.7): FC flow control, RTC, RTR, IC, DV
MSC_FC = 0x02
MSC_RTC = 0x04
MSC_RTR = 0x08
MSC_IC = 0x40
MSC_DV = 0x80


def msc_value(dlci: int, signals: int) -> bytes:
    return bytes(((dlci << 2) | 2 | 1, signals | 1))
