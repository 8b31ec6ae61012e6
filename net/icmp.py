"""ICMP messages of the CP's own stack (RFC 792, with RFC 1191's next-hop MTU and RFC 1812 section 4.3.2.3 on how
much of the offending datagram an error quotes): echo request and reply, destination unreachable (network, host,
protocol, port, fragmentation needed), time exceeded; each with its checksum over the whole message.

`IcmpMessage` is the sans-IO codec; the builders below make the messages the stack sends. RFC 1122 section 3.2.2
says which messages a host must not answer with an error (an error about an ICMP error, a broadcast, a fragment
other than the first): `may_answer_with_error` holds that rule.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address

from bipsim.net.checksum import internet_checksum
from bipsim.net.errors import PacketError
from bipsim.net.ipv4 import HEADER_LENGTH, ICMP, Ipv4Packet


class IcmpType(IntEnum):
    ECHO_REPLY = 0
    DESTINATION_UNREACHABLE = 3
    ECHO_REQUEST = 8
    TIME_EXCEEDED = 11


class Unreachable(IntEnum):
    """Destination unreachable codes (RFC 792; 4 with the next-hop MTU of RFC 1191)."""

    NETWORK = 0
    HOST = 1
    PROTOCOL = 2
    PORT = 3
    FRAGMENTATION_NEEDED = 4


class TimeExceeded(IntEnum):
    TTL = 0  # time to live exceeded in transit
    REASSEMBLY = 1  # fragment reassembly time exceeded


_HEADER = struct.Struct("!BBHI")
# RFC 1812 section 4.3.2.3: an error quotes as much of the datagram as fits in 576 bytes
_QUOTE_LIMIT = 576 - HEADER_LENGTH - _HEADER.size

_BROADCAST = IPv4Address("255.255.255.255")
ERROR_TYPES = frozenset({IcmpType.DESTINATION_UNREACHABLE, IcmpType.TIME_EXCEEDED, 4, 5, 12})


@dataclass(frozen=True)
class IcmpMessage:
    """One ICMP message: type, code, the 32-bit "rest of header" word, and the data after it."""

    type: int
    code: int
    rest: int = 0
    payload: bytes = b""

    @property
    def identifier(self) -> int:
        """Echo: the identifier (high half of the rest word)."""
        return self.rest >> 16

    @property
    def sequence(self) -> int:
        """Echo: the sequence number (low half of the rest word)."""
        return self.rest & 0xFFFF

    @property
    def next_hop_mtu(self) -> int:
        """Fragmentation needed: the MTU of the next hop (RFC 1191 section 4)."""
        return self.rest & 0xFFFF

    @property
    def is_error(self) -> bool:
        return self.type in ERROR_TYPES

    def quoted(self) -> Ipv4Packet | None:
        """An error's quoted datagram header (and the start of its payload), when it parses as one."""
        if not self.is_error or len(self.payload) < HEADER_LENGTH:
            return None
        header_length = (self.payload[0] & 0x0F) * 4
        total = struct.unpack_from("!H", self.payload, 2)[0]
        # the quote is cut short: give the decoder a datagram whose total length is what was quoted
        cut = bytearray(self.payload)
        if len(cut) < total:
            struct.pack_into("!H", cut, 2, len(cut))
            struct.pack_into("!H", cut, 10, 0)
            struct.pack_into("!H", cut, 10, internet_checksum(bytes(cut[:header_length])))
        try:
            return Ipv4Packet.decode(bytes(cut))
        except PacketError:
            return None

    def encode(self) -> bytes:
        body = _HEADER.pack(self.type & 0xFF, self.code & 0xFF, 0, self.rest & 0xFFFFFFFF) + self.payload
        checksum = internet_checksum(body)
        return body[:2] + struct.pack("!H", checksum) + body[4:]

    @classmethod
    def decode(cls, data: bytes) -> IcmpMessage:
        """Parses an ICMP message; PacketError when it is too short or its checksum is wrong."""
        if len(data) < _HEADER.size:
            raise PacketError(f"ICMP message truncated: {len(data)} bytes")
        if internet_checksum(data) != 0:
            raise PacketError("ICMP checksum wrong")
        type_, code, _checksum, rest = _HEADER.unpack_from(data)
        return cls(type_, code, rest, bytes(data[_HEADER.size :]))


def echo_request(identifier: int, sequence: int, data: bytes = b"") -> IcmpMessage:
    return IcmpMessage(IcmpType.ECHO_REQUEST, 0, (identifier & 0xFFFF) << 16 | (sequence & 0xFFFF), data)


def echo_reply(request: IcmpMessage) -> IcmpMessage:
    """RFC 792: the reply carries the request's identifier, sequence and data back."""
    return IcmpMessage(IcmpType.ECHO_REPLY, 0, request.rest, request.payload)


def _quote(original: bytes) -> bytes:
    return original[:_QUOTE_LIMIT]


def destination_unreachable(code: int, original: bytes, *, next_hop_mtu: int = 0) -> IcmpMessage:
    """Destination unreachable about `original` (the offending datagram's bytes, header first)."""
    rest = next_hop_mtu & 0xFFFF if code == Unreachable.FRAGMENTATION_NEEDED else 0
    return IcmpMessage(IcmpType.DESTINATION_UNREACHABLE, code, rest, _quote(original))


def time_exceeded(code: int, original: bytes) -> IcmpMessage:
    return IcmpMessage(IcmpType.TIME_EXCEEDED, code, 0, _quote(original))


def may_answer_with_error(packet: Ipv4Packet) -> bool:
    """RFC 1122 section 3.2.2: no ICMP error about an ICMP error, a fragment other than the first, or a datagram
    to or from a broadcast, multicast or unspecified address."""
    if packet.fragment_offset:
        return False
    for address in (packet.source, packet.destination):
        if address.is_multicast or address.is_unspecified or address == _BROADCAST:
            return False
    if packet.protocol == ICMP and packet.payload:
        return packet.payload[0] not in ERROR_TYPES
    return True
