"""The packet gateway's DNS responder (RFC 1035 sections 4.1 and 4.2.1): enough for the DNS server request of
OPEN CHANNEL (ETSI TS 102 223 section 6.4.27) and a host resolving the OTA server's name over a PDP context.

Sans-IO: `parse_query` reads one query (one question, names without compression, as stub resolvers send them),
`build_response` writes the answer: the A records given, NXDOMAIN, NODATA for a type other than A, FORMERR for a
query it cannot read, SERVFAIL when the lookup failed. The gateway (net/pgw.py) looks names up in its own table
first and then asks the host's resolver.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address

from bipsim.net.errors import PacketError

__all__ = ["DnsQuery", "Rcode", "TYPE_A", "build_response", "formerr_for", "parse_query"]

DNS_PORT = 53
TYPE_A = 1
CLASS_IN = 1
TTL = 60
_HEADER = struct.Struct("!HHHHHH")
_QR = 0x8000
_OPCODE = 0x7800
_RD = 0x0100
_RA = 0x0080


class Rcode(IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4


@dataclass(frozen=True)
class DnsQuery:
    """One question: its id, flags (to copy RD and the opcode), the name (lower case, no final dot), type, class,
    and the question's bytes as sent (the answer repeats them)."""

    ident: int
    flags: int
    name: str
    qtype: int
    qclass: int
    question: bytes


def parse_query(data: bytes) -> DnsQuery:
    """Reads a query; PacketError says why a message is not one this responder answers."""
    if len(data) < _HEADER.size:
        raise PacketError(f"DNS message truncated: {len(data)} bytes")
    ident, flags, qdcount, _an, _ns, _ar = _HEADER.unpack_from(data)
    if flags & _QR:
        raise PacketError("DNS message is a response, not a query")
    if qdcount != 1:
        raise PacketError(f"DNS query with {qdcount} questions (one is answered)")
    labels: list[str] = []
    offset = _HEADER.size
    while True:
        if offset >= len(data):
            raise PacketError("DNS name runs past the message")
        length = data[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0:
            raise PacketError("DNS query name compressed or with an extended label type")
        if offset + length > len(data):
            raise PacketError("DNS label runs past the message")
        labels.append(data[offset : offset + length].decode("ascii", errors="replace").lower())
        offset += length
        if offset - _HEADER.size > 255:
            raise PacketError("DNS name over 255 bytes")
    if offset + 4 > len(data):
        raise PacketError("DNS question without its type and class")
    qtype, qclass = struct.unpack_from("!HH", data, offset)
    question = bytes(data[_HEADER.size : offset + 4])
    return DnsQuery(ident, flags, ".".join(labels), qtype, qclass, question)


def build_response(query: DnsQuery, addresses: list[IPv4Address], rcode: Rcode = Rcode.NOERROR) -> bytes:
    """The response to `query`: one A record per address (with rcode NOERROR), or none with `rcode`."""
    opcode = query.flags & _OPCODE
    if opcode:
        rcode, addresses = Rcode.NOTIMP, []
    if query.qtype != TYPE_A or query.qclass != CLASS_IN:
        addresses = []  # NODATA: the name may exist, but this responder has only A records
    flags = _QR | opcode | (query.flags & _RD) | _RA | int(rcode)
    answers = b"".join(
        struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, TTL, 4) + address.packed for address in addresses
    )
    return _HEADER.pack(query.ident, flags, 1, len(addresses), 0, 0) + query.question + answers


def formerr_for(data: bytes) -> bytes | None:
    """FORMERR for a message whose header can be read (RFC 1035 4.1.1), None when not even that (then dropped)."""
    if len(data) < _HEADER.size:
        return None
    ident, flags, *_ = _HEADER.unpack_from(data)
    if flags & _QR:
        return None  # never answer a response: two responders would loop
    return _HEADER.pack(ident, _QR | (flags & (_OPCODE | _RD)) | _RA | Rcode.FORMERR, 0, 0, 0, 0)
