"""The error every packet codec of net/ raises for bytes it cannot take (a truncated header, a bad checksum, a length
that lies): the stack drops the packet and traces the reason, as RFC 1122 section 3.2.1 and RFC 9293 say."""

from __future__ import annotations


class PacketError(ValueError):
    """A malformed packet; the message says what is wrong (it goes into the trace event)."""
