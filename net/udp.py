"""The UDP datagram codec of the CP's own stack (RFC 768): the 8-byte header and the checksum over the IPv4
pseudo-header (net/checksum.py). On receive a checksum of 0 means the sender computed none and is accepted
(RFC 768, RFC 1122 section 4.1.3.4); on send a computed 0 is sent as 0xFFFF, as RFC 768 says."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from bipsim.net.checksum import transport_checksum
from bipsim.net.errors import PacketError
from bipsim.net.ipv4 import UDP

HEADER_LENGTH = 8
_HEADER = struct.Struct("!HHHH")


@dataclass(frozen=True)
class UdpDatagram:
    source_port: int
    destination_port: int
    payload: bytes

    def encode(self, source: IPv4Address, destination: IPv4Address) -> bytes:
        length = HEADER_LENGTH + len(self.payload)
        if length > 0xFFFF:
            raise PacketError(f"UDP datagram of {length} bytes is over 65535")
        header = _HEADER.pack(self.source_port & 0xFFFF, self.destination_port & 0xFFFF, length, 0)
        checksum = transport_checksum(source, destination, UDP, header + self.payload) or 0xFFFF
        return header[:6] + struct.pack("!H", checksum) + self.payload

    @classmethod
    def decode(cls, data: bytes, source: IPv4Address, destination: IPv4Address) -> UdpDatagram:
        """Parses a datagram carried from `source` to `destination`; PacketError on a bad length or checksum."""
        if len(data) < HEADER_LENGTH:
            raise PacketError(f"UDP header truncated: {len(data)} bytes")
        source_port, destination_port, length, checksum = _HEADER.unpack_from(data)
        if length < HEADER_LENGTH:
            raise PacketError(f"UDP length {length} under 8")
        if length > len(data):
            raise PacketError(f"UDP length {length} over the {len(data)} bytes carried")
        datagram = bytes(data[:length])
        if checksum and transport_checksum(source, destination, UDP, datagram) != 0:
            raise PacketError("UDP checksum wrong")
        return cls(source_port, destination_port, datagram[HEADER_LENGTH:])
