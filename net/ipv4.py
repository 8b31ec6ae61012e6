"""The IPv4 header codec and fragment reassembly of the CP's own stack (RFC 791; RFC 815 for the hole list;
RFC 1122 section 3.3.2 for the host's duties; RFC 5722's rule on overlapping fragments, applied to IPv4).

`Ipv4Packet` is one datagram or one fragment as it travels: `encode` builds the 20-byte header (no options) with
its checksum, `decode` checks version, header length, total length and the header checksum, skips options, and
raises `PacketError` for anything it cannot take. Bytes after the total length (a link's padding) are ignored.

`Reassembler` puts fragments back together, sans-IO with an injected clock (`now` arguments). What it chose:

- the datagrams in progress are bounded (`max_datagrams`, 16 by default): a fragment that would start one more
  is refused, so a flood of first fragments cannot eat the memory of the modem;
- a datagram is at most 65 535 bytes, header included (RFC 791's total length);
- a datagram not complete `timeout` seconds (30, RFC 1122 section 3.3.2's upper figure is 60-120; Linux uses 30)
  after its first fragment arrived is dropped; `expire` says whether its first fragment had come, so the stack
  can send ICMP time exceeded, code 1, as RFC 792 and RFC 1122 ask;
- a fragment that overlaps one already held is refused and the whole datagram dropped; its later fragments are
  dropped as well until the timeout (RFC 5722 section 4 says this for IPv6; overlaps are how evasion attacks
  and the "teardrop" bug happen). An exact duplicate (same offset, same bytes) is harmless and ignored.
- holes are tracked as RFC 815 describes: the list of byte ranges still missing; a fragment must fill part of one
  hole exactly inside it, otherwise it overlaps.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address

from bipsim.net.checksum import internet_checksum
from bipsim.net.errors import PacketError

ICMP = 1
TCP = 6
UDP = 17

HEADER_LENGTH = 20
MAX_PACKET = 65535
DEFAULT_TTL = 64  # RFC 1700's recommended default, and Linux's

_HEADER = struct.Struct("!BBHHHBBH4s4s")
_FLAG_RESERVED = 0x8000
_FLAG_DF = 0x4000
_FLAG_MF = 0x2000
_OFFSET_MASK = 0x1FFF

PROTOCOL_NAMES = {ICMP: "icmp", TCP: "tcp", UDP: "udp"}


@dataclass(frozen=True)
class Ipv4Packet:
    """One IPv4 datagram or fragment. `fragment_offset` is in bytes (a multiple of 8 unless last)."""

    source: IPv4Address
    destination: IPv4Address
    protocol: int
    payload: bytes
    ttl: int = DEFAULT_TTL
    identification: int = 0
    dont_fragment: bool = True
    tos: int = 0
    more_fragments: bool = False
    fragment_offset: int = 0

    @property
    def is_fragment(self) -> bool:
        return self.more_fragments or self.fragment_offset != 0

    def encode(self) -> bytes:
        """The packet's bytes: a 20-byte header with its checksum, then the payload."""
        total = HEADER_LENGTH + len(self.payload)
        if total > MAX_PACKET:
            raise PacketError(f"IPv4 packet of {total} bytes is over {MAX_PACKET}")
        if self.fragment_offset % 8 or not 0 <= self.fragment_offset >> 3 <= _OFFSET_MASK:
            raise PacketError(f"fragment offset {self.fragment_offset} is not a multiple of 8 in range")
        flags = (_FLAG_DF if self.dont_fragment else 0) | (_FLAG_MF if self.more_fragments else 0)
        header = _HEADER.pack(
            0x45,
            self.tos & 0xFF,
            total,
            self.identification & 0xFFFF,
            flags | (self.fragment_offset >> 3),
            self.ttl & 0xFF,
            self.protocol & 0xFF,
            0,
            self.source.packed,
            self.destination.packed,
        )
        checksum = internet_checksum(header)
        return header[:10] + struct.pack("!H", checksum) + header[12:] + self.payload

    @classmethod
    def decode(cls, data: bytes) -> Ipv4Packet:
        """Parses one packet; raises PacketError (what is wrong in its message) for bytes that are not one."""
        if len(data) < HEADER_LENGTH:
            raise PacketError(f"IPv4 header truncated: {len(data)} bytes")
        (vihl, tos, total, ident, flags_offset, ttl, protocol, _checksum, src, dst) = _HEADER.unpack_from(
            data
        )
        if vihl >> 4 != 4:
            raise PacketError(f"IP version {vihl >> 4}, not 4")
        header_length = (vihl & 0x0F) * 4
        if header_length < HEADER_LENGTH:
            raise PacketError(f"IPv4 header length {header_length} under 20")
        if total < header_length:
            raise PacketError(f"IPv4 total length {total} under the header length {header_length}")
        if len(data) < total:
            raise PacketError(f"IPv4 packet truncated: total length {total}, {len(data)} bytes")
        if internet_checksum(data[:header_length]) != 0:
            raise PacketError("IPv4 header checksum wrong")
        if flags_offset & _FLAG_RESERVED:
            raise PacketError("IPv4 reserved flag set")
        offset = (flags_offset & _OFFSET_MASK) << 3
        more = bool(flags_offset & _FLAG_MF)
        dont = bool(flags_offset & _FLAG_DF)
        if dont and (more or offset):
            # RFC 791: a datagram marked don't-fragment is never fragmented, so such a fragment is forged
            raise PacketError("IPv4 fragment with don't-fragment set")
        if offset + total - header_length > MAX_PACKET - HEADER_LENGTH:
            raise PacketError(f"IPv4 fragment at offset {offset} reaches past 65535 bytes")
        return cls(
            source=IPv4Address(src),
            destination=IPv4Address(dst),
            protocol=protocol,
            payload=bytes(data[header_length:total]),
            ttl=ttl,
            identification=ident,
            dont_fragment=dont,
            tos=tos,
            more_fragments=more,
            fragment_offset=offset,
        )


def fragment(packet: Ipv4Packet, mtu: int) -> list[Ipv4Packet]:
    """The fragments of `packet` for a link of `mtu` bytes (RFC 791 section 3.2, "fragmentation"); the packet
    itself when it fits. Raises PacketError when it does not fit and must not be fragmented."""
    if HEADER_LENGTH + len(packet.payload) <= mtu:
        return [packet]
    if packet.dont_fragment:
        raise PacketError(f"packet of {HEADER_LENGTH + len(packet.payload)} bytes over MTU {mtu} with DF set")
    step = (mtu - HEADER_LENGTH) // 8 * 8
    if step <= 0:
        raise PacketError(f"MTU {mtu} too small to fragment")
    pieces = []
    payload = packet.payload
    for start in range(0, len(payload), step):
        last = start + step >= len(payload)
        pieces.append(
            replace(
                packet,
                payload=payload[start : start + step],
                fragment_offset=packet.fragment_offset + start,
                more_fragments=packet.more_fragments or not last,
            )
        )
    return pieces


class ReassemblyError(PacketError):
    """A fragment refused (overlap, too large, too many datagrams in progress); `reason` is a short tag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


FragmentKey = tuple[IPv4Address, IPv4Address, int, int]  # source, destination, protocol, identification


@dataclass
class _Partial:
    started: float
    holes: list[tuple[int, int]] = field(default_factory=lambda: [(0, MAX_PACKET)])  # [first, last) missing
    pieces: dict[int, bytes] = field(default_factory=dict)
    first: Ipv4Packet | None = None  # the fragment at offset 0 (the header ICMP quotes)
    poisoned: bool = False  # an overlap was seen: drop everything of it until the timeout


@dataclass(frozen=True)
class Expired:
    """A datagram dropped by the timeout; `first` is its first fragment when that had arrived."""

    key: FragmentKey
    first: Ipv4Packet | None


class Reassembler:
    """Fragments in, whole datagrams out (see the module's docstring for the bounds and the overlap rule)."""

    def __init__(self, *, max_datagrams: int = 16, timeout: float = 30.0) -> None:
        self.max_datagrams = max_datagrams
        self.timeout = timeout
        self._partials: dict[FragmentKey, _Partial] = {}

    def __len__(self) -> int:
        # a poisoned datagram counts too: it is small, but a flood of them must stay bounded
        return len(self._partials)

    def next_deadline(self) -> float | None:
        return min((p.started + self.timeout for p in self._partials.values()), default=None)

    def expire(self, now: float) -> list[Expired]:
        """Drops the datagrams whose time is up; the ones that had their first fragment are returned."""
        out = []
        for key, partial in list(self._partials.items()):
            if now >= partial.started + self.timeout:
                del self._partials[key]
                if not partial.poisoned:
                    out.append(Expired(key, partial.first))
        return out

    def push(self, packet: Ipv4Packet, now: float) -> Ipv4Packet | None:
        """Takes a fragment; returns the whole datagram when this one completed it, else None.

        Raises ReassemblyError for a fragment it refuses (the stack traces the reason and drops it)."""
        if not packet.is_fragment:
            return packet
        self.expire(now)
        key = (packet.source, packet.destination, packet.protocol, packet.identification)
        partial = self._partials.get(key)
        if partial is None:
            if len(self) >= self.max_datagrams:
                raise ReassemblyError("too_many", f"{self.max_datagrams} datagrams already in reassembly")
            partial = self._partials[key] = _Partial(started=now)
        if partial.poisoned:
            raise ReassemblyError("overlap", "fragment of a datagram dropped for overlapping fragments")
        first = packet.fragment_offset
        last = first + len(packet.payload)  # exclusive
        if packet.more_fragments and len(packet.payload) % 8:
            self._poison(partial)
            raise ReassemblyError("bad_length", "a fragment other than the last is not a multiple of 8 bytes")
        if first in partial.pieces and partial.pieces[first] == packet.payload:
            if packet.more_fragments or self._ends_at(partial) == last:
                return None  # an exact duplicate
        hole = next((h for h in partial.holes if h[0] <= first and last <= h[1]), None)
        if hole is None or (not packet.more_fragments and hole[1] != MAX_PACKET and last != hole[1]):
            self._poison(partial)
            raise ReassemblyError("overlap", f"fragment {first}..{last} overlaps data already received")
        # RFC 815 section 3: the hole is replaced by what is left of it on either side
        partial.holes.remove(hole)
        if hole[0] < first:
            partial.holes.append((hole[0], first))
        if packet.more_fragments and last < hole[1]:
            partial.holes.append((last, hole[1]))
        if not packet.more_fragments:
            # the last fragment: nothing beyond it may come (a later fragment past it overlaps "the end")
            partial.holes = [h for h in partial.holes if h[1] <= last]
            partial.pieces[-1] = b""  # marks that the end is known
        partial.pieces[first] = packet.payload
        if first == 0:
            partial.first = packet
        if not partial.holes and -1 in partial.pieces:
            del self._partials[key]
            body = b"".join(partial.pieces[offset] for offset in sorted(partial.pieces) if offset >= 0)
            head = partial.first if partial.first is not None else packet
            return replace(head, payload=body, more_fragments=False, fragment_offset=0)
        return None

    @staticmethod
    def _ends_at(partial: _Partial) -> int | None:
        if -1 not in partial.pieces:
            return None
        return max(o + len(p) for o, p in partial.pieces.items() if o >= 0)

    @staticmethod
    def _poison(partial: _Partial) -> None:
        partial.poisoned = True
        partial.pieces.clear()
        partial.first = None
