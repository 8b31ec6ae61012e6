"""3GPP TS 27.010 basic option framing, sans-IO: frames, the FCS of annex B, a resynchronising parser and the
control-channel messages of section 5.4.6.3.

Frame: F9 | address (EA, C/R, DLCI) | control (SABM/UA/DM/DISC/UIH/UI, P/F) | length (EA, 1 or 2 bytes) |
information | FCS | F9. The FCS covers address, control and length for UIH frames and also the information for
the others (section 5.2.1.6). A frame with a bad FCS is dropped and counted, never delivered.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

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


def fcs(data: bytes) -> int:
    crc = 0xFF
    for byte in data:
        crc = CRC_TABLE[crc ^ byte]
    return 0xFF - crc


def fcs_ok(data: bytes, received: int) -> bool:
    crc = 0xFF
    for byte in data:
        crc = CRC_TABLE[crc ^ byte]
    return CRC_TABLE[crc ^ received] == FCS_GOOD


@dataclass(frozen=True, slots=True)
class Frame:
    dlci: int
    type: FrameType
    cr: bool
    pf: bool = False
    info: bytes = b""

    def encode(self) -> bytes:
        return encode_frame(self.dlci, self.type, self.cr, self.pf, self.info)

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


_header_fcs: dict[bytes, int] = {}


def encode_frame(dlci: int, ftype: FrameType, cr: bool, pf: bool, info: bytes = b"") -> bytes:
    header = bytes(((dlci << 2) | (2 if cr else 0) | 1, ftype | (PF if pf else 0))) + length_field(len(info))
    if ftype is FrameType.UIH:
        check = _header_fcs.get(header)
        if check is None:
            check = _header_fcs.setdefault(header, fcs(header))
    else:
        check = fcs(header + info)
    return b"\xf9" + header + info + bytes((check, FLAG))


class FrameParser:
    """Feeds line bytes, yields frames. Counts frames dropped for a bad FCS or a bad structure."""

    def __init__(self, max_info: int = 32767) -> None:
        self.max_info = max_info
        self._buffer = bytearray()
        self.bad_fcs = 0
        self.malformed = 0

    def feed(self, data: bytes | bytearray) -> list[Frame]:
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        while True:
            start = buffer.find(FLAG)
            if start < 0:
                if buffer:
                    self.malformed += 1 if any(b != FLAG for b in buffer) else 0
                buffer.clear()
                break
            # skip the opening flag(s); a closing flag may also open the next frame
            i = start
            while i < len(buffer) and buffer[i] == FLAG:
                i += 1
            if start or i - start > 1:
                del buffer[: i - 1]
            # buffer[0] is now the opening flag
            if len(buffer) < 5:
                break
            address, control, first_len = buffer[1], buffer[2], buffer[3]
            if first_len & 1:
                size, head = first_len >> 1, 4
            else:
                if len(buffer) < 6:
                    break
                size, head = (first_len >> 1) | (buffer[4] << 7), 5
            total = head + size + 2
            if not address & 1 or size > self.max_info:
                self.malformed += 1
                del buffer[:1]
                continue
            if len(buffer) < total:
                # a flag inside what should be this frame's body means it was cut short: resynchronise there
                nxt = buffer.find(FLAG, 1)
                if 0 < nxt < len(buffer) and nxt < head and buffer[nxt - 1] != FLAG:
                    self.malformed += 1
                    del buffer[:nxt]
                    continue
                break
            if buffer[total - 1] != FLAG:
                self.malformed += 1
                nxt = buffer.find(FLAG, 1)
                del buffer[: nxt if nxt > 0 else len(buffer)]
                continue
            info = bytes(buffer[head : head + size])
            try:
                ftype = FrameType(control & ~PF)
            except ValueError:
                self.malformed += 1
                del buffer[: total - 1]
                continue
            checked = bytes(buffer[1:head]) if ftype is FrameType.UIH else bytes(buffer[1 : head + size])
            if not fcs_ok(checked, buffer[head + size]):
                self.bad_fcs += 1
                del buffer[: total - 1]
                continue
            frames.append(Frame(address >> 2, ftype, bool(address & 2), bool(control & PF), info))
            del buffer[: total - 1]  # keep the closing flag: it may open the next frame
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
