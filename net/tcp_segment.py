"""The TCP header codec of the CP's own stack (RFC 9293 section 3.1): ports, sequence and acknowledgment numbers, data
offset, control bits (with ECE/CWR of RFC 3168), the raw 16-bit window field, the checksum over the IPv4
pseudo-header, and the options a handshake carries: End of Option List, No-Operation, Maximum Segment Size (RFC 9293
3.2), Window Scale (RFC 7323 section 2), SACK-permitted and SACK blocks (RFC 2018). Other options are skipped by their length
byte (RFC 9293 3.2: "must be prepared to handle an arbitrary option"); a length that lies is a PacketError.

Pure functions on bytes: no I/O. The window in a TcpSegment is the header's field as sent; scaling by the peer's
window-scale shift is the connection's business (net/tcp.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntFlag
from ipaddress import IPv4Address

from bipsim.net.checksum import transport_checksum
from bipsim.net.errors import PacketError

__all__ = ["PROTOCOL_TCP", "TcpFlags", "TcpSegment", "HEADER_LENGTH"]

PROTOCOL_TCP = 6
HEADER_LENGTH = 20
_HEADER = struct.Struct("!HHIIBBHHH")

_OPT_EOL = 0
_OPT_NOP = 1
_OPT_MSS = 2
_OPT_WSCALE = 3
_OPT_SACK_PERMITTED = 4
_OPT_SACK = 5
MAX_SACK_BLOCKS = 4  # RFC 2018 section 3: 2 + 8n bytes of the 40 an option area has
# RFC 7323 section 2.3: a shift above 14 is used as 14.
MAX_WINDOW_SCALE = 14


class TcpFlags(IntFlag):
    """The control bits of RFC 9293 3.1, with RFC 3168's ECE and CWR."""

    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80

    def names(self) -> str:
        """The set bits as "SYN|ACK" (the order of the header, low bit first), "" for none."""
        return "|".join(flag.name or "" for flag in TcpFlags if flag in self)


_FLAGS = [TcpFlags(value) for value in range(256)]  # decode builds no enum member per segment


@dataclass(frozen=True)
class TcpSegment:
    """One TCP segment; `window` is the header field as sent (not scaled), `seq`/`ack` are 32-bit, `sack_blocks`
    the (left edge, right edge) pairs of a SACK option (RFC 2018 section 3), 32-bit too."""

    source_port: int
    destination_port: int
    seq: int
    ack: int
    flags: TcpFlags
    window: int
    payload: bytes = b""
    mss: int | None = None
    window_scale: int | None = None
    sack_permitted: bool = False
    urgent: int = 0
    sack_blocks: tuple[tuple[int, int], ...] = ()

    @property
    def seg_len(self) -> int:
        """SEG.LEN of RFC 9293 3.4: the payload plus one for SYN and one for FIN."""
        return (
            len(self.payload)
            + (1 if TcpFlags.SYN in self.flags else 0)
            + (1 if TcpFlags.FIN in self.flags else 0)
        )

    def options_bytes(self) -> bytes:
        """The options area, padded to a multiple of four bytes with End of Option List."""
        out = bytearray()
        if self.mss is not None:
            if not 0 <= self.mss <= 0xFFFF:
                raise ValueError(f"MSS {self.mss} out of range")
            out += struct.pack("!BBH", _OPT_MSS, 4, self.mss)
        if self.sack_permitted:
            out += bytes((_OPT_NOP, _OPT_NOP, _OPT_SACK_PERMITTED, 2))
        if self.window_scale is not None:
            if not 0 <= self.window_scale <= 0xFF:
                raise ValueError(f"window scale {self.window_scale} out of range")
            out += bytes((_OPT_NOP, _OPT_WSCALE, 3, self.window_scale))
        if self.sack_blocks:
            room = (40 - len(out) - 2) // 8
            blocks = self.sack_blocks[: min(room, MAX_SACK_BLOCKS)]
            out += bytes((_OPT_NOP, _OPT_NOP, _OPT_SACK, 2 + 8 * len(blocks)))
            for left, right in blocks:
                out += struct.pack("!II", left & 0xFFFFFFFF, right & 0xFFFFFFFF)
        while len(out) % 4:
            out.append(_OPT_EOL)
        return bytes(out)

    def encode(self, source: IPv4Address, destination: IPv4Address) -> bytes:
        """The segment's bytes with its checksum over the pseudo-header of `source` -> `destination`."""
        for name, value, limit in (
            ("source port", self.source_port, 0xFFFF),
            ("destination port", self.destination_port, 0xFFFF),
            ("window", self.window, 0xFFFF),
            ("urgent pointer", self.urgent, 0xFFFF),
        ):
            if not 0 <= value <= limit:
                raise ValueError(f"{name} {value} out of range")
        options = self.options_bytes()
        offset = (HEADER_LENGTH + len(options)) // 4
        header = _HEADER.pack(
            self.source_port,
            self.destination_port,
            self.seq & 0xFFFFFFFF,
            self.ack & 0xFFFFFFFF,
            offset << 4,
            int(self.flags) & 0xFF,
            self.window,
            0,
            self.urgent,
        )
        segment = header + options + self.payload
        checksum = transport_checksum(source, destination, PROTOCOL_TCP, segment)
        return segment[:16] + struct.pack("!H", checksum) + segment[18:]

    @classmethod
    def decode(cls, data: bytes, source: IPv4Address, destination: IPv4Address) -> TcpSegment:
        """Parse `data` (the IPv4 payload); PacketError for a short header, a bad offset, checksum or option."""
        if len(data) < HEADER_LENGTH:
            raise PacketError(f"TCP segment of {len(data)} bytes is shorter than the 20-byte header")
        sport, dport, seq, ack, offset_byte, flag_byte, window, _checksum, urgent = _HEADER.unpack_from(data)
        offset = (offset_byte >> 4) * 4
        if offset < HEADER_LENGTH:
            raise PacketError(f"TCP data offset {offset // 4} is below 5")
        if offset > len(data):
            raise PacketError(f"TCP data offset {offset} runs past the {len(data)}-byte segment")
        # RFC 1071: the sum over the whole segment including its checksum field is zero when it is right.
        if transport_checksum(source, destination, PROTOCOL_TCP, data) != 0:
            raise PacketError("TCP checksum mismatch")
        mss, wscale, sack_permitted, sack_blocks = _parse_options(data[HEADER_LENGTH:offset])
        return cls(
            source_port=sport,
            destination_port=dport,
            seq=seq,
            ack=ack,
            flags=_FLAGS[flag_byte],
            window=window,
            payload=bytes(data[offset:]),
            mss=mss,
            window_scale=wscale,
            sack_permitted=sack_permitted,
            urgent=urgent,
            sack_blocks=sack_blocks,
        )


def _parse_options(
    options: bytes,
) -> tuple[int | None, int | None, bool, tuple[tuple[int, int], ...]]:
    mss: int | None = None
    wscale: int | None = None
    sack_permitted = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == _OPT_EOL:
            break
        if kind == _OPT_NOP:
            i += 1
            continue
        if i + 1 >= len(options):
            raise PacketError(f"TCP option {kind} has no length byte")
        length = options[i + 1]
        if length < 2 or i + length > len(options):
            raise PacketError(f"TCP option {kind} has a bad length {length}")
        body = options[i + 2 : i + length]
        if kind == _OPT_MSS:
            if length != 4:
                raise PacketError(f"TCP MSS option of length {length}, not 4")
            mss = struct.unpack("!H", body)[0]
        elif kind == _OPT_WSCALE:
            if length != 3:
                raise PacketError(f"TCP window scale option of length {length}, not 3")
            wscale = body[0]
        elif kind == _OPT_SACK_PERMITTED:
            if length != 2:
                raise PacketError(f"TCP SACK-permitted option of length {length}, not 2")
            sack_permitted = True
        elif kind == _OPT_SACK:
            if (length - 2) % 8 or length < 10:
                raise PacketError(f"TCP SACK option of length {length}, not 2 + 8n")
            sack_blocks = tuple((left, right) for left, right in struct.iter_unpack("!II", body))
        # any other kind (SACK blocks, timestamps, ...) is skipped by its length
        i += length
    return mss, wscale, sack_permitted, sack_blocks
