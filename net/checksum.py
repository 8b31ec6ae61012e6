"""The Internet checksum (RFC 1071) and the IPv4 pseudo-header that UDP (RFC 768) and TCP (RFC 9293 section 3.1)
add to it."""

from __future__ import annotations

import ipaddress
import struct


def internet_checksum(data: bytes, initial: int = 0) -> int:
    """The 16-bit one's complement of the one's complement sum of `data` (odd lengths padded with a zero byte)."""
    if len(data) % 2:
        data += b"\x00"
    # the one's complement sum of the 16-bit words is the number they spell modulo 0xFFFF (2**16 = 1 mod 0xFFFF),
    # 0xFFFF for a nonzero multiple: one big-integer remainder instead of a loop over the words (RFC 1071 2.(B))
    value = int.from_bytes(data, "big")
    total = initial + (value % 0xFFFF or (0xFFFF if value else 0))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(
    source: ipaddress.IPv4Address, destination: ipaddress.IPv4Address, protocol: int, length: int
) -> bytes:
    """The 12-byte pseudo-header: source, destination, zero, protocol, and the segment's length."""
    return source.packed + destination.packed + struct.pack("!BBH", 0, protocol, length)


def transport_checksum(
    source: ipaddress.IPv4Address, destination: ipaddress.IPv4Address, protocol: int, segment: bytes
) -> int:
    """The checksum of a UDP datagram or TCP segment whose checksum field is zero."""
    return internet_checksum(pseudo_header(source, destination, protocol, len(segment)) + segment)
