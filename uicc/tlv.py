"""BER-TLV and COMPREHENSION-TLV codecs for the card application toolkit (ETSI TS 101 220 section 7.1, TS 102 223
annex C, ISO/IEC 8825-1 for BER tags).

- BER-TLV wraps proactive commands ('D0') and envelopes ('D1'..'D7'), and carries GlobalPlatform data.
- COMPREHENSION-TLV (the simple objects inside) has a 1-byte tag whose bit 8 is the comprehension-required (CR)
  flag, or the 3-byte form '7F' + 2 bytes whose top bit is CR and whose 15 low bits are the tag value.
- Lengths: 1 byte for 0..127, '81' + 1 byte for 128..255, '82' + 2 bytes, '83' + 3 bytes. Non-minimal forms are
  rejected (TS 101 220 section 7.1.2 allows only the shortest), so encode(decode(x)) == x for every accepted x.

Every decode failure raises TlvError naming the byte offset (into the outermost buffer) and the rule broken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, TypeVar

T = TypeVar("T", bound=tuple[int, bytes, bool, bool])


class TlvError(ValueError):
    """Malformed TLV data: `offset` is where in the input the problem is, `rule` what was violated."""

    def __init__(self, offset: int, rule: str) -> None:
        super().__init__(f"offset {offset}: {rule}")
        self.offset = offset
        self.rule = rule


def encode_length(length: int) -> bytes:
    """The shortest length field for `length` (TS 101 220 section 7.1.2)."""
    if length < 0:
        raise ValueError("a length cannot be negative")
    if length < 0x80:
        return bytes((length,))
    if length <= 0xFF:
        return bytes((0x81, length))
    if length <= 0xFFFF:
        return b"\x82" + length.to_bytes(2, "big")
    if length <= 0xFFFFFF:
        return b"\x83" + length.to_bytes(3, "big")
    raise ValueError(f"length {length} does not fit a TLV length field")


def decode_length(data: bytes, offset: int, end: int) -> tuple[int, int]:
    """Reads a length field at `offset`; returns (length, offset of the value). Checks the value fits before `end`."""
    if offset >= end:
        raise TlvError(offset, "truncated: length field missing")
    first = data[offset]
    if first < 0x80:
        length, start = first, offset + 1
    else:
        size = first - 0x80
        if size == 0 or size > 3:
            raise TlvError(offset, f"invalid length field 0x{first:02X}")
        if offset + 1 + size > end:
            raise TlvError(offset, "truncated: length field cut short")
        length = int.from_bytes(data[offset + 1 : offset + 1 + size], "big")
        if length < (0x80 if size == 1 else 1 << (8 * (size - 1))):
            raise TlvError(offset, f"overlong length encoding for {length}")
        start = offset + 1 + size
    if start + length > end:
        raise TlvError(offset, f"truncated: length {length} exceeds the {end - start} bytes left")
    return length, start


def encode_ctlv(tag: int, value: bytes, cr: bool, long_form: bool = False) -> bytes:
    """One COMPREHENSION-TLV: the 1-byte tag form unless `long_form` or the tag needs three bytes."""
    if long_form or tag > 0x7E:
        head = b"\x7f" + ((0x8000 if cr else 0) | tag).to_bytes(2, "big")
    else:
        head = bytes(((0x80 if cr else 0) | tag,))
    return head + encode_length(len(value)) + value


class Ctlv(NamedTuple):
    """One COMPREHENSION-TLV data object. `tag` is the tag value without the CR bit; `long_form` records the
    3-byte tag format so a decoded object re-encodes to the same bytes. (A named tuple: decoding builds one per
    object, and a tuple is the cheapest immutable record Python can build.)"""

    tag: int
    value: bytes
    cr: bool = False
    long_form: bool = False

    def encode(self) -> bytes:
        return encode_ctlv(self.tag, self.value, self.cr, self.long_form)


def split_ctlvs(data: bytes, offset: int, end: int, cls: type[T]) -> list[T]:
    """Splits data[offset:end] into COMPREHENSION-TLV objects of `cls`, a named tuple of (tag, value, cr,
    long_form) such as Ctlv or cat.CatObject.

    One loop with the common case (1-byte tag, 1-byte length) inline, and tuple.__new__ called directly rather
    than the named tuple's Python-level constructor: this is the decoder's hot path."""
    out: list[T] = []
    append = out.append
    new = tuple.__new__
    while offset < end:
        first = data[offset]
        if 0 < first < 0x7F:  # 1-byte tag, CR clear
            tag, cr, long_form, at = first, False, False, offset + 1
        elif 0x80 < first < 0xFF:  # 1-byte tag, CR set
            tag, cr, long_form, at = first & 0x7F, True, False, offset + 1
        elif first == 0x7F:
            if offset + 3 > end:
                raise TlvError(offset, "truncated: three-byte tag cut short")
            raw = (data[offset + 1] << 8) | data[offset + 2]
            tag, cr, long_form, at = raw & 0x7FFF, raw > 0x7FFF, True, offset + 3
        else:
            raise TlvError(offset, f"reserved COMPREHENSION-TLV tag 0x{first:02X}")
        if at >= end:
            raise TlvError(at, "truncated: length field missing")
        length = data[at]
        if length < 0x80:
            start = at + 1
            offset = start + length
            if offset > end:
                raise TlvError(at, f"truncated: length {length} exceeds the {end - start} bytes left")
        else:
            length, start = decode_length(data, at, end)
            offset = start + length
        append(new(cls, (tag, data[start:offset], cr, long_form)))
    return out


def decode_ctlvs(data: bytes, offset: int = 0, end: int | None = None) -> list[Ctlv]:
    """Splits data[offset:end] into COMPREHENSION-TLV objects."""
    return split_ctlvs(data, offset, len(data) if end is None else end, Ctlv)


def encode_ber_tag(tag: int) -> bytes:
    """A BER tag (1 to 3 bytes, ISO/IEC 8825-1 section 8.1.2) given as its integer value, e.g. 0xD0, 0x9F70."""
    return tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")


def decode_ber_tag(data: bytes, offset: int, end: int) -> tuple[int, int]:
    """Reads a BER tag; returns (tag as integer of its bytes, offset after it)."""
    if offset >= end:
        raise TlvError(offset, "truncated: tag missing")
    tag = data[offset]
    at = offset + 1
    if tag & 0x1F == 0x1F:
        while True:
            if at - offset >= 3:  # a fourth tag byte would follow: beyond what TS 101 220 allows
                raise TlvError(offset, "tag longer than 3 bytes")
            if at >= end:
                raise TlvError(offset, "truncated: multi-byte tag cut short")
            byte = data[at]
            tag = (tag << 8) | byte
            at += 1
            if not byte & 0x80:
                break
    return tag, at


@dataclass(frozen=True, slots=True)
class BerTlv:
    tag: int
    value: bytes

    def encode(self) -> bytes:
        return encode_ber_tag(self.tag) + encode_length(len(self.value)) + self.value


def decode_ber(data: bytes, *, expect: set[int] | None = None) -> BerTlv:
    """Decodes exactly one BER-TLV filling `data` (trailing bytes are an error)."""
    tag, at = decode_ber_tag(data, 0, len(data))
    if expect is not None and tag not in expect:
        names = ", ".join(f"{t:02X}" for t in sorted(expect))
        raise TlvError(0, f"unexpected tag 0x{tag:02X} (expected {names})")
    length, start = decode_length(data, at, len(data))
    if start + length != len(data):
        raise TlvError(start + length, f"trailing garbage: {len(data) - start - length} bytes after the TLV")
    return BerTlv(tag, data[start : start + length])


def decode_ber_list(data: bytes, offset: int = 0, end: int | None = None) -> list[BerTlv]:
    """Splits data[offset:end] into consecutive BER-TLVs."""
    end = len(data) if end is None else end
    out: list[BerTlv] = []
    while offset < end:
        tag, at = decode_ber_tag(data, offset, end)
        length, start = decode_length(data, at, end)
        out.append(BerTlv(tag, data[start : start + length]))
        offset = start + length
    return out
