"""SMS transfer-layer PDUs (3GPP TS 23.040 section 9.2): SMS-DELIVER, SMS-SUBMIT and SMS-STATUS-REPORT as frozen
dataclasses with encode() and one decoder, decode_tpdu, plus what they are made of: addresses (9.1.2.5, numeric and
alphanumeric), the service centre time stamp with its time zone (9.2.3.11), the validity period in its relative,
absolute and enhanced formats (9.2.3.12), the data coding scheme (3GPP TS 23.038 section 4), the user data header
(9.2.3.24: concatenation with 8- and 16-bit references, application port addressing) and the splitting of a long
text into concatenated parts. The service centre address that precedes a TPDU in 27.005 PDU mode (3GPP TS 27.005
section 3.1, `<pdu>`; TS 24.011 8.2.5.1 RP address) has encode_sca/decode_sca.

The codec is sans-IO. Malformed bytes raise SmsPduError with the reason and the +CMS ERROR code of TS 27.005
section 3.2.5 an AT command set answers with (304, invalid PDU mode parameter, unless said otherwise); nothing else
escapes decode_tpdu.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from enum import IntEnum

from bipsim.uicc.gsm_text import (
    gsm7_decode,
    gsm7_encode,
    is_gsm7,
    pack_7bit,
    ucs2_encode,
    unpack_7bit,
)

# +CMS ERROR codes of TS 27.005 section 3.2.5 that the codec's errors carry
CMS_INVALID_PDU = 304  # invalid PDU mode parameter
CMS_INVALID_TEXT = 305  # invalid text mode parameter
CMS_SMSC_UNKNOWN = 330  # SMSC address unknown

MAX_UD_OCTETS = 140  # TS 23.040 9.2.3.16: the user data field holds at most 140 octets
MAX_UD_SEPTETS = 160


class SmsPduError(ValueError):
    """A TPDU or an address that is not well formed. `cms_code` is the +CMS ERROR (TS 27.005 3.2.5) to answer."""

    def __init__(self, reason: str, cms_code: int = CMS_INVALID_PDU) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cms_code = cms_code


class MessageType(IntEnum):
    """TP-MTI (TS 23.040 9.2.3.1), as seen in the direction each type travels."""

    DELIVER = 0  # SC -> MS
    SUBMIT = 1  # MS -> SC
    STATUS_REPORT = 2  # SC -> MS


# --- addresses (TS 23.040 9.1.2.5) ----------------------------------------------------------------------------------


class TypeOfNumber(IntEnum):
    UNKNOWN = 0
    INTERNATIONAL = 1
    NATIONAL = 2
    NETWORK_SPECIFIC = 3
    SUBSCRIBER = 4
    ALPHANUMERIC = 5  # coded in the GSM 7-bit default alphabet (TS 23.038)
    ABBREVIATED = 6


NPI_ISDN = 1  # numbering plan: ISDN/telephone (E.164/E.163)

# TS 23.040 9.1.2.3: semi-octet values beyond the digits
_BCD_DIGITS = "0123456789*#abc"
MAX_ADDRESS_DIGITS = 20  # TS 23.040 9.1.2.5: the address field is at most 12 octets


@dataclass(frozen=True)
class Address:
    """An address field: `value` is the digits (with '*', '#', 'a', 'b', 'c' for the other semi-octets), or the text
    of an alphanumeric address."""

    value: str
    ton: TypeOfNumber = TypeOfNumber.UNKNOWN
    npi: int = NPI_ISDN

    @classmethod
    def parse(cls, text: str) -> Address:
        """ "+<digits>" is international, digits alone are of unknown type (the network decides, as 27.005's
        `<toda>` 129 says), anything else is alphanumeric. SmsPduError when it cannot be coded."""
        if not text:
            raise SmsPduError("an empty address")
        if text.startswith("+"):
            if not text[1:].isdigit() or not text[1:].isascii():
                raise SmsPduError(f"international number {text!r}: give '+' and decimal digits")
            address = cls(text[1:], TypeOfNumber.INTERNATIONAL)
        elif text and all(ch in "0123456789*#" for ch in text):
            address = cls(text, TypeOfNumber.UNKNOWN)
        else:
            address = cls(text, TypeOfNumber.ALPHANUMERIC, 0)
        address.encode()  # raises for what cannot be coded
        return address

    @property
    def type_of_address(self) -> int:
        """The TON/NPI octet (bit 8 always 1)."""
        return 0x80 | (int(self.ton) & 0x07) << 4 | (self.npi & 0x0F)

    def __str__(self) -> str:
        return "+" + self.value if self.ton is TypeOfNumber.INTERNATIONAL else self.value

    def _value_octets(self) -> tuple[bytes, int]:
        """The address value and its length in semi-octets."""
        if self.ton is TypeOfNumber.ALPHANUMERIC:
            try:
                septets = gsm7_encode(self.value)
            except ValueError as exc:
                raise SmsPduError(f"alphanumeric address {self.value!r}: {exc}") from None
            packed = pack_7bit(septets)
            if len(packed) > 10:
                raise SmsPduError(f"alphanumeric address {self.value!r} is longer than 11 characters")
            return packed, (len(septets) * 7 + 3) // 4
        digits = self.value.lower()
        if len(digits) > MAX_ADDRESS_DIGITS:
            raise SmsPduError(f"address {self.value!r} has more than {MAX_ADDRESS_DIGITS} digits")
        bad = next((ch for ch in digits if ch not in _BCD_DIGITS), None)
        if bad is not None:
            raise SmsPduError(f"address {self.value!r}: {bad!r} is not a digit of TS 23.040 9.1.2.3")
        return encode_semi_octets(digits), len(digits)

    def encode(self) -> bytes:
        """The TP address field: length in useful semi-octets, type of address, value."""
        value, semi_octets = self._value_octets()
        return bytes((semi_octets, self.type_of_address)) + value


def encode_semi_octets(digits: str) -> bytes:
    """Swapped semi-octets, 0xF filler (TS 23.040 9.1.2.3, TS 24.008 10.5.1.4): the one swapped-BCD encoder of the
    SMS, toolkit and local-information codecs."""
    codes = [_BCD_DIGITS.index(ch) for ch in digits]
    if len(codes) % 2:
        codes.append(0xF)
    return bytes(codes[i] | codes[i + 1] << 4 for i in range(0, len(codes), 2))


def decode_semi_octets(data: bytes, count: int, what: str) -> str:
    """The first `count` digits of swapped semi-octets (TS 23.040 9.1.2.3); SmsPduError on a filler among them."""
    out: list[str] = []
    for byte in data:
        for nibble in (byte & 0x0F, byte >> 4):
            if len(out) == count:
                break
            if nibble == 0xF:
                raise SmsPduError(f"{what}: filler semi-octet inside the digits")
            out.append(_BCD_DIGITS[nibble])
    return "".join(out)


def _decode_address(data: bytes, at: int, what: str) -> tuple[Address, int]:
    """The address field at `at`; returns it and the offset after it."""
    if at + 2 > len(data):
        raise SmsPduError(f"{what} is cut short at offset {at}")
    semi_octets, toa = data[at], data[at + 1]
    if semi_octets > MAX_ADDRESS_DIGITS:
        raise SmsPduError(f"{what} length {semi_octets} is over {MAX_ADDRESS_DIGITS} semi-octets")
    size = (semi_octets + 1) // 2
    end = at + 2 + size
    if end > len(data):
        raise SmsPduError(
            f"{what} needs {size} octets of value at offset {at + 2}, {len(data) - at - 2} follow"
        )
    value = data[at + 2 : end]
    ton = TypeOfNumber((toa >> 4) & 0x07) if (toa >> 4) & 0x07 != 7 else TypeOfNumber.UNKNOWN
    if ton is TypeOfNumber.ALPHANUMERIC:
        text = gsm7_decode(unpack_7bit(value, semi_octets * 4 // 7))
        return Address(text, ton, toa & 0x0F), end
    return Address(decode_semi_octets(value, semi_octets, what), ton, toa & 0x0F), end


def encode_sca(address: Address | str | None) -> bytes:
    """The service centre address before the TPDU in 27.005 PDU mode: its length in octets, the type of address and
    the BCD digits (TS 24.011 8.2.5.1); a single 00 when there is none (the ME uses +CSCA's)."""
    if address is None or address == "":
        return b"\x00"
    if isinstance(address, str):
        address = Address.parse(address)
    if address.ton is TypeOfNumber.ALPHANUMERIC:
        raise SmsPduError(f"service centre address {address.value!r} is not a number", CMS_SMSC_UNKNOWN)
    value, _ = address._value_octets()
    if len(value) > 10:
        raise SmsPduError("service centre address longer than 10 octets", CMS_SMSC_UNKNOWN)
    return bytes((1 + len(value), address.type_of_address)) + value


def decode_sca(pdu: bytes) -> tuple[Address | None, bytes]:
    """Splits a 27.005 `<pdu>` into the service centre address (None when its length is 0) and the TPDU."""
    if not pdu:
        raise SmsPduError("empty PDU")
    size = pdu[0]
    if size == 0:
        return None, pdu[1:]
    if size > 11 or 1 + size > len(pdu):
        raise SmsPduError(f"service centre address length {size} does not fit the PDU")
    toa = pdu[1]
    ton = TypeOfNumber((toa >> 4) & 0x07) if (toa >> 4) & 0x07 != 7 else TypeOfNumber.UNKNOWN
    if ton is TypeOfNumber.ALPHANUMERIC:
        raise SmsPduError("service centre address is alphanumeric", CMS_SMSC_UNKNOWN)
    value = pdu[2 : 1 + size]
    digits = 2 * len(value) - (1 if value and value[-1] >> 4 == 0xF else 0)
    return Address(decode_semi_octets(value, digits, "service centre address"), ton, toa & 0x0F), pdu[
        1 + size :
    ]


# --- time stamps and validity periods (TS 23.040 9.2.3.11, 9.2.3.12) -------------------------------------------------


def _swap(value: int) -> int:
    return (value % 10) << 4 | value // 10


def _unswap(byte: int, what: str) -> int:
    low, high = byte & 0x0F, byte >> 4
    if low > 9 or high > 9:
        raise SmsPduError(f"{what}: octet {byte:02X} is not two decimal semi-octets")
    return low * 10 + high


def encode_timestamp(when: datetime) -> bytes:
    """Seven semi-octet pairs: year, month, day, hour, minute, second, time zone in quarters of an hour (bit 3 of
    the zone octet is the sign). A naive datetime counts as UTC."""
    offset = when.utcoffset() or timedelta(0)
    quarters = int(offset.total_seconds()) // 900
    if abs(quarters) > 79:
        raise SmsPduError(f"time zone {offset} is beyond what TP-SCTS holds")
    zone = _swap(abs(quarters)) | (0x08 if quarters < 0 else 0)
    return bytes(
        _swap(v) for v in (when.year % 100, when.month, when.day, when.hour, when.minute, when.second)
    ) + (bytes((zone,)))


def decode_timestamp(data: bytes, what: str = "TP-SCTS") -> datetime:
    if len(data) != 7:
        raise SmsPduError(f"{what} needs 7 octets, {len(data)} given")
    year, month, day, hour, minute, second = (_unswap(b, what) for b in data[:6])
    zone = data[6]
    quarters = _unswap(zone & 0xF7, what)
    if quarters > 79:
        raise SmsPduError(f"{what}: time zone of {quarters} quarters of an hour")
    sign = -1 if zone & 0x08 else 1
    try:
        return datetime(
            2000 + year if year < 90 else 1900 + year,
            month,
            day,
            hour,
            minute,
            second,
            tzinfo=timezone(timedelta(minutes=15 * quarters * sign)),
        )
    except ValueError as exc:
        raise SmsPduError(f"{what}: {exc}") from None


@dataclass(frozen=True)
class RelativeValidity:
    """TP-VP relative format (9.2.3.12.1): one octet, a duration from 5 minutes to 63 weeks."""

    octet: int

    @property
    def duration(self) -> timedelta:
        v = self.octet
        if v <= 143:
            return timedelta(minutes=(v + 1) * 5)
        if v <= 167:
            return timedelta(hours=12, minutes=(v - 143) * 30)
        if v <= 196:
            return timedelta(days=v - 166)
        return timedelta(weeks=v - 192)

    @classmethod
    def at_least(cls, duration: timedelta) -> RelativeValidity:
        """The shortest relative validity period not shorter than `duration` (63 weeks at most)."""
        for octet in range(256):
            if RelativeValidity(octet).duration >= duration:
                return cls(octet)
        return cls(255)


@dataclass(frozen=True)
class EnhancedValidity:
    """TP-VP enhanced format (9.2.3.12.3): seven octets, the first being the functionality indicator."""

    octets: bytes

    def __post_init__(self) -> None:
        if len(self.octets) != 7:
            raise SmsPduError(f"an enhanced validity period has 7 octets, not {len(self.octets)}")


Validity = RelativeValidity | datetime | EnhancedValidity | None


def _encode_validity(vp: Validity) -> tuple[int, bytes]:
    if vp is None:
        return 0, b""
    if isinstance(vp, RelativeValidity):
        if not 0 <= vp.octet <= 255:
            raise SmsPduError(f"relative validity octet {vp.octet} is not 0..255")
        return 0b10, bytes((vp.octet,))
    if isinstance(vp, EnhancedValidity):
        return 0b01, vp.octets
    return 0b11, encode_timestamp(vp)


# --- data coding scheme (TS 23.038 section 4) ------------------------------------------------------------------------


class Alphabet(IntEnum):
    GSM7 = 0
    EIGHT_BIT = 1
    UCS2 = 2


def dcs_alphabet(dcs: int) -> Alphabet:
    """The character set a TP-DCS names; reserved codings count as the GSM 7-bit default alphabet (TS 23.038 4)."""
    group = dcs >> 4
    if group <= 0x7:  # general data coding and automatic deletion groups
        bits = (dcs >> 2) & 0x03
        return Alphabet(bits) if bits != 3 else Alphabet.GSM7
    if group == 0xE:  # message waiting indication, store, UCS2
        return Alphabet.UCS2
    if group == 0xF:  # data coding / message class
        return Alphabet.EIGHT_BIT if dcs & 0x04 else Alphabet.GSM7
    return Alphabet.GSM7


def dcs_compressed(dcs: int) -> bool:
    """TS 23.038 4: bit 5 of the general groups marks text compressed (TS 23.042)."""
    return dcs >> 6 in (0, 1) and bool(dcs & 0x20)


def dcs_class(dcs: int) -> int | None:
    """The message class (0..3) the DCS gives, or None."""
    if dcs >> 6 in (0, 1) and dcs & 0x10:
        return dcs & 0x03
    if dcs >> 4 == 0xF:
        return dcs & 0x03
    return None


def make_dcs(alphabet: Alphabet = Alphabet.GSM7, message_class: int | None = None) -> int:
    """The general-data-coding DCS for an alphabet and an optional message class."""
    if message_class is None:
        return int(alphabet) << 2
    if not 0 <= message_class <= 3:
        raise SmsPduError(f"message class {message_class} is not 0..3")
    return 0x10 | int(alphabet) << 2 | message_class


# --- user data header (TS 23.040 9.2.3.24) ---------------------------------------------------------------------------

IEI_CONCAT_8 = 0x00
IEI_PORTS_8 = 0x04
IEI_PORTS_16 = 0x05
IEI_CONCAT_16 = 0x08

WAP_PUSH_PORT = 2948  # WDP port of the WAP push connectionless session service (WAP-259)
WAP_PUSH_SOURCE_PORT = 9200  # WDP port of the connectionless WSP session service, a push's source (WAP-259)


@dataclass(frozen=True)
class InformationElement:
    iei: int
    data: bytes

    def encode(self) -> bytes:
        return bytes((self.iei, len(self.data))) + self.data


@dataclass(frozen=True)
class Concatenation:
    """Concatenated short message: reference, parts in all, this part's number (1-based)."""

    reference: int
    total: int
    sequence: int
    sixteen_bit: bool = False

    def element(self) -> InformationElement:
        if self.sixteen_bit:
            return InformationElement(
                IEI_CONCAT_16, self.reference.to_bytes(2, "big") + bytes((self.total, self.sequence))
            )
        return InformationElement(IEI_CONCAT_8, bytes((self.reference & 0xFF, self.total, self.sequence)))


@dataclass(frozen=True)
class PortAddressing:
    """Application port addressing with 16-bit ports (IEI 05): e.g. a WAP push to port 2948."""

    destination: int
    source: int = 0

    def element(self) -> InformationElement:
        return InformationElement(
            IEI_PORTS_16, self.destination.to_bytes(2, "big") + self.source.to_bytes(2, "big")
        )


def encode_udh(elements: Sequence[InformationElement]) -> bytes:
    """The header with its UDHL octet; empty when there are no elements."""
    if not elements:
        return b""
    body = b"".join(e.encode() for e in elements)
    return bytes((len(body),)) + body


def decode_udh(header: bytes, at: int = 0) -> tuple[InformationElement, ...]:
    """The elements of a header without its UDHL octet; SmsPduError when an element overruns it."""
    out: list[InformationElement] = []
    i = 0
    while i < len(header):
        if i + 2 > len(header):
            raise SmsPduError(f"user data header element cut short at offset {at + i}")
        iei, size = header[i], header[i + 1]
        if i + 2 + size > len(header):
            raise SmsPduError(
                f"user data header element {iei:02X} of {size} octets overruns the header at {at + i}"
            )
        out.append(InformationElement(iei, header[i + 2 : i + 2 + size]))
        i += 2 + size
    return tuple(out)


def concatenation_of(elements: Sequence[InformationElement]) -> Concatenation | None:
    for e in elements:
        if e.iei == IEI_CONCAT_8 and len(e.data) == 3:
            return Concatenation(e.data[0], e.data[1], e.data[2])
        if e.iei == IEI_CONCAT_16 and len(e.data) == 4:
            return Concatenation(int.from_bytes(e.data[:2], "big"), e.data[2], e.data[3], sixteen_bit=True)
    return None


def ports_of(elements: Sequence[InformationElement]) -> PortAddressing | None:
    for e in elements:
        if e.iei == IEI_PORTS_16 and len(e.data) == 4:
            return PortAddressing(int.from_bytes(e.data[:2], "big"), int.from_bytes(e.data[2:], "big"))
        if e.iei == IEI_PORTS_8 and len(e.data) == 2:
            return PortAddressing(e.data[0], e.data[1])
    return None


# --- user data (TS 23.040 9.2.3.16, 9.2.3.24) ------------------------------------------------------------------------


def user_data_octets(message: SmsDeliver | SmsSubmit) -> bytes:
    """The TP-UD field as sent (TS 23.040 9.2.3.24): the header, fill bits and packed septets or octets, without
    TP-UDL; 27.005 text mode shows it as hex when TP-UDHI is set."""
    return _encode_user_data(message.dcs, message.udh, message.ud)[1:]


def _encode_user_data(dcs: int, udh: Sequence[InformationElement], ud: bytes) -> bytes:
    """TP-UDL and TP-UD. For the GSM 7-bit alphabet `ud` holds unpacked septets; otherwise octets."""
    header = encode_udh(udh)
    if dcs_alphabet(dcs) is Alphabet.GSM7 and not dcs_compressed(dcs):
        header_bits = 8 * len(header)
        fill = (7 - header_bits % 7) % 7
        udl = (header_bits + fill) // 7 + len(ud)
        if udl > MAX_UD_SEPTETS:
            raise SmsPduError(f"user data of {udl} septets is over {MAX_UD_SEPTETS}")
        try:
            body = pack_7bit(ud, fill)
        except ValueError as exc:
            raise SmsPduError(f"user data: {exc}") from None
        return bytes((udl,)) + header + body
    udl = len(header) + len(ud)
    if udl > MAX_UD_OCTETS:
        raise SmsPduError(f"user data of {udl} octets is over {MAX_UD_OCTETS}")
    return bytes((udl,)) + header + ud


def user_data_from_octets(dcs: int, octets: bytes) -> tuple[tuple[InformationElement, ...], bytes]:
    """The header and the data (septets for GSM 7-bit) of a TP-UD with TP-UDHI set given without its TP-UDL, as
    27.005 text mode takes it in hex: a GSM 7-bit one holds as many septets as fit, less a last @ that is only the
    padding of a whole octet (the ambiguity TS 23.038 6.1.2.3.1 notes). SmsPduError when it is not one."""
    if dcs_alphabet(dcs) is Alphabet.GSM7 and not dcs_compressed(dcs):
        udl = len(octets) * 8 // 7
        udh, ud = _decode_user_data(bytes((min(udl, 255),)) + octets, 0, dcs, True)
        if ud and ud[-1] == 0 and len(octets) * 8 % 7 == 0:
            ud = ud[:-1]
        return udh, ud
    return _decode_user_data(bytes((min(len(octets), 255),)) + octets, 0, dcs, True)


def _decode_user_data(
    data: bytes, at: int, dcs: int, udhi: bool
) -> tuple[tuple[InformationElement, ...], bytes]:
    """TP-UDL at `at` and the user data after it, which must be exactly what TP-UDL says (TS 23.040 9.2.3.16)."""
    if at >= len(data):
        raise SmsPduError(f"TP-UDL missing at offset {at}")
    udl = data[at]
    rest = data[at + 1 :]
    septets = dcs_alphabet(dcs) is Alphabet.GSM7 and not dcs_compressed(dcs)
    if septets:
        if udl > MAX_UD_SEPTETS:
            raise SmsPduError(f"TP-UDL {udl} is over {MAX_UD_SEPTETS} septets")
        size = (udl * 7 + 7) // 8
    else:
        if udl > MAX_UD_OCTETS:
            raise SmsPduError(f"TP-UDL {udl} is over {MAX_UD_OCTETS} octets")
        size = udl
    if len(rest) != size:
        raise SmsPduError(f"TP-UDL {udl} means {size} octets of user data, {len(rest)} follow")
    udh: tuple[InformationElement, ...] = ()
    header_size = 0
    if udhi:
        if not rest:
            raise SmsPduError("TP-UDHI set but there is no user data")
        header_size = 1 + rest[0]
        if header_size > size:
            raise SmsPduError(
                f"user data header of {header_size} octets is longer than the user data ({size})"
            )
        udh = decode_udh(rest[1:header_size], at + 2)
    if not septets:
        return udh, rest[header_size:]
    fill = (7 - (8 * header_size) % 7) % 7
    header_septets = (8 * header_size + fill) // 7
    if header_septets > udl:
        raise SmsPduError(f"user data header takes {header_septets} septets, TP-UDL is {udl}")
    return udh, unpack_7bit(rest[header_size:], udl - header_septets, fill)


def _text_of(dcs: int, ud: bytes) -> str | None:
    """The user data as text, tolerant of what a peer sent; None for 8-bit data and compressed text."""
    if dcs_compressed(dcs):
        return None
    alphabet = dcs_alphabet(dcs)
    if alphabet is Alphabet.GSM7:
        return gsm7_decode(ud)
    if alphabet is Alphabet.UCS2:
        return ud[: len(ud) // 2 * 2].decode("utf-16-be", errors="replace")
    return None


@dataclass(frozen=True)
class UserDataPart:
    """One part of a text: the DCS alphabet, the header elements and the user data (septets for GSM 7-bit)."""

    alphabet: Alphabet
    udh: tuple[InformationElement, ...]
    ud: bytes


def _headroom(elements: Sequence[InformationElement], alphabet: Alphabet) -> int:
    """Characters units left beside a header: septets for GSM 7-bit, octets otherwise."""
    header = len(encode_udh(elements))
    if alphabet is Alphabet.GSM7:
        return MAX_UD_SEPTETS - (8 * header + 6) // 7
    return MAX_UD_OCTETS - header


def split_text(
    text: str,
    *,
    reference: int = 0,
    alphabet: Alphabet | None = None,
    sixteen_bit: bool = False,
    headers: Sequence[InformationElement] = (),
) -> list[UserDataPart]:
    """The user data parts of `text`: one when it fits, otherwise concatenated parts (TS 23.040 9.2.3.24.1) with
    `reference`. The alphabet is GSM 7-bit when every character has a code, else UCS2 (or as given). An escape
    pair and a UTF-16 surrogate pair are never cut. SmsPduError when more than 255 parts would be needed."""
    if alphabet is None:
        alphabet = Alphabet.GSM7 if is_gsm7(text) else Alphabet.UCS2
    units: list[bytes]
    if alphabet is Alphabet.GSM7:
        try:
            units = [gsm7_encode(ch) for ch in text]
        except ValueError as exc:
            raise SmsPduError(str(exc), CMS_INVALID_TEXT) from None
    elif alphabet is Alphabet.UCS2:
        units = [ucs2_encode(ch) for ch in text]
    else:
        try:
            units = [ch.encode("latin-1") for ch in text]
        except UnicodeEncodeError as exc:
            raise SmsPduError(f"character {text[exc.start]!r} is not 8-bit data", CMS_INVALID_TEXT) from None
    whole = b"".join(units)
    base = tuple(headers)
    if len(whole) <= _headroom(base, alphabet):
        return [UserDataPart(alphabet, base, whole)]
    room = _headroom((*base, Concatenation(reference, 1, 1, sixteen_bit).element()), alphabet)
    chunks: list[bytes] = []
    current = b""
    for unit in units:
        if len(current) + len(unit) > room:
            chunks.append(current)
            current = b""
        current += unit
    chunks.append(current)
    if len(chunks) > 255:
        raise SmsPduError(
            f"text needs {len(chunks)} parts, a concatenated message has at most 255", CMS_INVALID_TEXT
        )
    total = len(chunks)
    return [
        UserDataPart(alphabet, (*base, Concatenation(reference, total, i + 1, sixteen_bit).element()), chunk)
        for i, chunk in enumerate(chunks)
    ]


def split_data(
    data: bytes, *, reference: int = 0, headers: Sequence[InformationElement] = ()
) -> list[UserDataPart]:
    """8-bit `data` as user data parts beside `headers` (e.g. the application ports of a WDP datagram, WAP-259
    6.5): one part when it fits, otherwise concatenated parts with `reference` (TS 23.040 9.2.3.24.1). SmsPduError
    when more than 255 parts would be needed."""
    base = tuple(headers)
    if len(data) <= _headroom(base, Alphabet.EIGHT_BIT):
        return [UserDataPart(Alphabet.EIGHT_BIT, base, data)]
    room = _headroom((*base, Concatenation(reference, 1, 1).element()), Alphabet.EIGHT_BIT)
    chunks = [data[i : i + room] for i in range(0, len(data), room)]
    if len(chunks) > 255:
        raise SmsPduError(
            f"{len(data)} octets need {len(chunks)} parts, a concatenated message has at most 255"
        )
    return [
        UserDataPart(Alphabet.EIGHT_BIT, (*base, Concatenation(reference, len(chunks), n).element()), chunk)
        for n, chunk in enumerate(chunks, 1)
    ]


# --- the TPDUs -------------------------------------------------------------------------------------------------------


def _user_data_fields(part: UserDataPart, message_class: int | None) -> dict[str, object]:
    return {"dcs": make_dcs(part.alphabet, message_class), "udh": part.udh, "ud": part.ud}


class _UserData:
    """What SMS-DELIVER and SMS-SUBMIT read alike from their TP-DCS, TP-UDH and TP-UD (TS 23.040 9.2.3.24)."""

    dcs: int
    udh: tuple[InformationElement, ...]
    ud: bytes

    @property
    def text(self) -> str | None:
        return _text_of(self.dcs, self.ud)

    @property
    def concatenation(self) -> Concatenation | None:
        return concatenation_of(self.udh)

    @property
    def message_class(self) -> int | None:
        return dcs_class(self.dcs)


@dataclass(frozen=True)
class SmsDeliver(_UserData):
    """SMS-DELIVER (TS 23.040 9.2.2.1), SC to MS."""

    originator: Address
    scts: datetime
    pid: int = 0
    dcs: int = 0
    udh: tuple[InformationElement, ...] = ()
    ud: bytes = b""  # unpacked septets when the DCS is GSM 7-bit, else octets
    more_messages: bool = False  # TP-MMS is 0 when more messages wait (9.2.3.2)
    status_report_indication: bool = False
    reply_path: bool = False
    loop_prevention: bool = False

    mti = MessageType.DELIVER

    @property
    def is_data_download(self) -> bool:
        """PID 7F and class 2: the ME gives it to the card as an SMS-PP DOWNLOAD (TS 31.111 7.1.1)."""
        return self.pid == 0x7F and self.message_class == 2

    def encode(self) -> bytes:
        first = (
            MessageType.DELIVER
            | (0 if self.more_messages else 0x04)
            | (0x08 if self.loop_prevention else 0)
            | (0x20 if self.status_report_indication else 0)
            | (0x40 if self.udh else 0)
            | (0x80 if self.reply_path else 0)
        )
        return (
            bytes((first,))
            + self.originator.encode()
            + bytes((self.pid & 0xFF, self.dcs & 0xFF))
            + encode_timestamp(self.scts)
            + _encode_user_data(self.dcs, self.udh, self.ud)
        )

    @classmethod
    def for_text(
        cls,
        originator: Address | str,
        text: str,
        scts: datetime,
        *,
        reference: int = 0,
        message_class: int | None = None,
        **fields: object,
    ) -> list[SmsDeliver]:
        """The SMS-DELIVERs of `text`, concatenated when it needs more than one."""
        if isinstance(originator, str):
            originator = Address.parse(originator)
        parts = split_text(text, reference=reference)
        return [
            cls(originator, scts, **(fields | _user_data_fields(p, message_class)))  # type: ignore[arg-type]
            for p in parts
        ]


@dataclass(frozen=True)
class SmsSubmit(_UserData):
    """SMS-SUBMIT (TS 23.040 9.2.2.2), MS to SC."""

    destination: Address
    mr: int = 0
    pid: int = 0
    dcs: int = 0
    validity: Validity = None
    udh: tuple[InformationElement, ...] = ()
    ud: bytes = b""
    status_report_request: bool = False
    reject_duplicates: bool = False
    reply_path: bool = False

    mti = MessageType.SUBMIT

    def encode(self) -> bytes:
        vpf, vp = _encode_validity(self.validity)
        first = (
            MessageType.SUBMIT
            | (0x04 if self.reject_duplicates else 0)
            | vpf << 3
            | (0x20 if self.status_report_request else 0)
            | (0x40 if self.udh else 0)
            | (0x80 if self.reply_path else 0)
        )
        if not 0 <= self.mr <= 255:
            raise SmsPduError(f"TP-MR {self.mr} is not 0..255")
        return (
            bytes((first, self.mr))
            + self.destination.encode()
            + bytes((self.pid & 0xFF, self.dcs & 0xFF))
            + vp
            + _encode_user_data(self.dcs, self.udh, self.ud)
        )

    @classmethod
    def for_text(
        cls,
        destination: Address | str,
        text: str,
        *,
        reference: int = 0,
        message_class: int | None = None,
        **fields: object,
    ) -> list[SmsSubmit]:
        """The SMS-SUBMITs of `text`, concatenated when it needs more than one."""
        if isinstance(destination, str):
            destination = Address.parse(destination)
        parts = split_text(text, reference=reference)
        return [
            cls(destination, **(fields | _user_data_fields(p, message_class)))  # type: ignore[arg-type]
            for p in parts
        ]


class ReportStatus(IntEnum):
    """TP-ST values (TS 23.040 9.2.3.15) the SMSC uses."""

    RECEIVED = 0x00  # short message received by the SME
    FORWARDED_UNCONFIRMED = 0x01
    REPLACED = 0x02
    TEMPORARY_CONGESTION = 0x20
    TEMPORARY_SME_BUSY = 0x21
    TEMPORARY_NO_RESPONSE = 0x22
    REMOTE_PROCEDURE_ERROR = 0x40
    INCOMPATIBLE_DESTINATION = 0x41
    NOT_OBTAINABLE = 0x43
    VALIDITY_EXPIRED = 0x46
    DELETED_BY_ORIGINATOR = 0x47
    DELETED_BY_SC = 0x48


def status_meaning(st: int) -> str:
    """What a TP-ST value says, by its range (TS 23.040 9.2.3.15)."""
    if st <= 0x1F:
        return "transaction completed"
    if st <= 0x3F:
        return "temporary error, SC still trying"
    if st <= 0x5F:
        return "permanent error, SC not trying any more"
    if st <= 0x7F:
        return "temporary error, SC not trying any more"
    return "reserved"


@dataclass(frozen=True)
class SmsStatusReport:
    """SMS-STATUS-REPORT (TS 23.040 9.2.2.3), SC to MS: what became of the SUBMIT with TP-MR `mr`."""

    mr: int
    recipient: Address
    scts: datetime  # when the SC received the SUBMIT
    discharge: datetime  # when it was delivered, or when the SC gave up
    status: int = ReportStatus.RECEIVED
    pid: int | None = None
    dcs: int | None = None
    udh: tuple[InformationElement, ...] = ()
    ud: bytes | None = None
    more_messages: bool = False
    loop_prevention: bool = False
    status_report_qualifier: bool = False  # 1: the report answers an SMS-COMMAND

    mti = MessageType.STATUS_REPORT

    def encode(self) -> bytes:
        has_ud = self.ud is not None or bool(self.udh)
        first = (
            MessageType.STATUS_REPORT
            | (0 if self.more_messages else 0x04)
            | (0x08 if self.loop_prevention else 0)
            | (0x20 if self.status_report_qualifier else 0)
            | (0x40 if self.udh else 0)
        )
        out = (
            bytes((first, self.mr & 0xFF))
            + self.recipient.encode()
            + encode_timestamp(self.scts)
            + encode_timestamp(self.discharge)
            + bytes((self.status & 0xFF,))
        )
        pi = (
            (0x01 if self.pid is not None else 0)
            | (0x02 if self.dcs is not None else 0)
            | (0x04 if has_ud else 0)
        )
        if not pi:
            return out
        out += bytes((pi,))
        if self.pid is not None:
            out += bytes((self.pid & 0xFF,))
        if self.dcs is not None:
            out += bytes((self.dcs & 0xFF,))
        if has_ud:
            out += _encode_user_data(self.dcs or 0, self.udh, self.ud or b"")
        return out


Tpdu = SmsDeliver | SmsSubmit | SmsStatusReport


def _byte(data: bytes, at: int, what: str) -> int:
    if at >= len(data):
        raise SmsPduError(f"{what} missing at offset {at} (the TPDU has {len(data)} octets)")
    return data[at]


def _decode_deliver(data: bytes) -> SmsDeliver:
    first = data[0]
    originator, at = _decode_address(data, 1, "TP-OA")
    pid = _byte(data, at, "TP-PID")
    dcs = _byte(data, at + 1, "TP-DCS")
    if at + 9 > len(data):
        raise SmsPduError(f"TP-SCTS cut short at offset {at + 2}")
    scts = decode_timestamp(data[at + 2 : at + 9])
    udh, ud = _decode_user_data(data, at + 9, dcs, bool(first & 0x40))
    return SmsDeliver(
        originator,
        scts,
        pid,
        dcs,
        udh,
        ud,
        more_messages=not first & 0x04,
        status_report_indication=bool(first & 0x20),
        reply_path=bool(first & 0x80),
        loop_prevention=bool(first & 0x08),
    )


def _decode_submit(data: bytes) -> SmsSubmit:
    first = data[0]
    mr = _byte(data, 1, "TP-MR")
    destination, at = _decode_address(data, 2, "TP-DA")
    pid = _byte(data, at, "TP-PID")
    dcs = _byte(data, at + 1, "TP-DCS")
    at += 2
    vpf = (first >> 3) & 0x03
    validity: Validity = None
    if vpf == 0b10:
        validity = RelativeValidity(_byte(data, at, "TP-VP"))
        at += 1
    elif vpf in (0b01, 0b11):
        if at + 7 > len(data):
            raise SmsPduError(f"TP-VP cut short at offset {at}")
        raw = data[at : at + 7]
        validity = EnhancedValidity(raw) if vpf == 0b01 else decode_timestamp(raw, "TP-VP")
        at += 7
    udh, ud = _decode_user_data(data, at, dcs, bool(first & 0x40))
    return SmsSubmit(
        destination,
        mr,
        pid,
        dcs,
        validity,
        udh,
        ud,
        status_report_request=bool(first & 0x20),
        reject_duplicates=bool(first & 0x04),
        reply_path=bool(first & 0x80),
    )


def _decode_status_report(data: bytes) -> SmsStatusReport:
    first = data[0]
    mr = _byte(data, 1, "TP-MR")
    recipient, at = _decode_address(data, 2, "TP-RA")
    if at + 15 > len(data):
        raise SmsPduError(f"TP-SCTS, TP-DT and TP-ST cut short at offset {at}")
    scts = decode_timestamp(data[at : at + 7])
    discharge = decode_timestamp(data[at + 7 : at + 14], "TP-DT")
    status = data[at + 14]
    at += 15
    report = SmsStatusReport(
        mr,
        recipient,
        scts,
        discharge,
        status,
        more_messages=not first & 0x04,
        loop_prevention=bool(first & 0x08),
        status_report_qualifier=bool(first & 0x20),
    )
    if at == len(data):
        return report
    pi = data[at]
    at += 1
    extension = pi
    while extension & 0x80:  # TP-PI extension octets (9.2.3.27): none defined, skipped
        extension = _byte(data, at, "TP-PI extension")
        at += 1
    pid = dcs = None
    if pi & 0x01:
        pid = _byte(data, at, "TP-PID")
        at += 1
    if pi & 0x02:
        dcs = _byte(data, at, "TP-DCS")
        at += 1
    udh: tuple[InformationElement, ...] = ()
    ud: bytes | None = None
    if pi & 0x04:
        udh, ud = _decode_user_data(data, at, dcs or 0, bool(first & 0x40))
    elif at != len(data):
        raise SmsPduError(f"{len(data) - at} octets after the status report's last field")
    return replace(report, pid=pid, dcs=dcs, udh=udh, ud=ud)


def decode_tpdu(data: bytes) -> Tpdu:
    """One TPDU, by its TP-MTI: 0 SMS-DELIVER, 1 SMS-SUBMIT, 2 SMS-STATUS-REPORT (the types that travel between
    the SMSC and the ME in the directions modelled here). SmsPduError for anything malformed."""
    if not data:
        raise SmsPduError("empty TPDU")
    mti = data[0] & 0x03
    try:
        if mti == MessageType.DELIVER:
            return _decode_deliver(data)
        if mti == MessageType.SUBMIT:
            return _decode_submit(data)
        if mti == MessageType.STATUS_REPORT:
            return _decode_status_report(data)
    except SmsPduError:
        raise
    except (ValueError, IndexError) as exc:  # a codec helper's own check: still the peer's malformed bytes
        raise SmsPduError(str(exc)) from None
    raise SmsPduError("TP-MTI 3 is reserved")


def tpdu_length(pdu: bytes) -> int:
    """The `<length>` 27.005 PDU mode gives for `pdu` (SCA + TPDU): the TPDU's octets only (27.005 3.1)."""
    _, tpdu = decode_sca(pdu)
    return len(tpdu)
