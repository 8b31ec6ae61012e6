"""Text codings of the GSM world, in one place: the GSM 7-bit default alphabet and its extension table
(3GPP TS 23.038 sections 6.2.1 and 6.2.1.1), septet packing (TS 23.038 section 6.1.2.1.1), UCS2, the alpha
identifiers of card files (ETSI TS 102 221 annex A: GSM unpacked, or UCS2 in its '80', '81' and '82' forms), and the
TE character sets of `+CSCS` (3GPP TS 27.007 section 5.5).

The SMS codecs (net/sms_pdu.py), the CAT text objects (uicc/cat.py), the phonebook record codecs and the AT command
sets all use these functions, so that one character maps to one code everywhere. Encoders raise ValueError naming
the character or the byte they cannot take; decoders of data from peers are tolerant where the specification says so
(an unknown escape shows its base character, TS 23.038 6.2.1.1).
"""

from __future__ import annotations

# TS 23.038 6.2.1: the default alphabet, one character per septet value. 0x1B is the escape to the extension table;
# it is kept as a placeholder here and never produced or accepted as a character.
ESCAPE = 0x1B
GSM7_BASIC: str = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
assert len(GSM7_BASIC) == 128

# TS 23.038 6.2.1.1: the extension table reached by ESC. 0x0A is a page break (form feed); 0x0D (CR2) and 0x1B
# (SS2) are control codes with no character and are left out.
GSM7_EXTENSION: dict[int, str] = {
    0x0A: "\x0c",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}

_BASIC_CODE = {ch: i for i, ch in enumerate(GSM7_BASIC) if i != ESCAPE}
_EXTENSION_CODE = {ch: code for code, ch in GSM7_EXTENSION.items()}

# The +CSCS character sets this module converts (27.007 5.5).
TE_CHARSETS = ("IRA", "GSM", "UCS2", "HEX", "8859-1")


class TextTooLong(ValueError):
    """Encoded text does not fit the field it is meant for (27.007 +CME ERROR 24, "text string too long")."""


def is_gsm7(text: str) -> bool:
    """True when every character has a code in the default alphabet or its extension table."""
    return all(ch in _BASIC_CODE or ch in _EXTENSION_CODE for ch in text)


def gsm7_length(text: str) -> int:
    """Septets `text` needs: one per character, two per character of the extension table."""
    return sum(2 if ch in _EXTENSION_CODE else 1 for ch in text)


def gsm7_encode(text: str) -> bytes:
    """Text to unpacked septets (one per byte), extension characters as ESC + code; ValueError names a character
    with no code."""
    out = bytearray()
    for ch in text:
        code = _BASIC_CODE.get(ch)
        if code is not None:
            out.append(code)
            continue
        code = _EXTENSION_CODE.get(ch)
        if code is None:
            raise ValueError(f"character {ch!r} (U+{ord(ch):04X}) is not in the GSM 7-bit default alphabet")
        out += bytes((ESCAPE, code))
    return bytes(out)


def gsm7_decode(septets: bytes, *, strict: bool = False) -> str:
    """Unpacked septets to text. An escape followed by a code the extension table lacks shows the default-alphabet
    character of that code (TS 23.038 6.2.1.1); a lone escape at the end shows a space. A byte above 0x7F is not a
    septet: ValueError when `strict`, '?' otherwise (card files pad with 0xFF, which callers strip)."""
    out: list[str] = []
    escaped = False
    for at, value in enumerate(septets):
        if value > 0x7F:
            if strict:
                raise ValueError(f"byte 0x{value:02X} at offset {at} is not a GSM 7-bit septet")
            out.append("?")
            escaped = False
            continue
        if escaped:
            escaped = False
            ext = GSM7_EXTENSION.get(value)
            if ext is not None:
                out.append(ext)
            elif value == ESCAPE:
                out.append(" ")
            else:
                out.append(GSM7_BASIC[value])
            continue
        if value == ESCAPE:
            escaped = True
            continue
        out.append(GSM7_BASIC[value])
    if escaped:
        out.append(" ")
    return "".join(out)


def pack_7bit(septets: bytes, fill_bits: int = 0) -> bytes:
    """Pack septets eight to seven octets, least significant bit first (TS 23.038 6.1.2.1.1). `fill_bits` zero bits
    come first, so that the septets start on a septet boundary after a user data header (TS 23.040 9.2.3.24)."""
    if not 0 <= fill_bits <= 6:
        raise ValueError(f"fill_bits must be 0..6, not {fill_bits}")
    out = bytearray()
    acc = 0
    bits = fill_bits
    for at, septet in enumerate(septets):
        if septet > 0x7F:
            raise ValueError(f"byte 0x{septet:02X} at offset {at} is not a septet")
        acc |= septet << bits
        bits += 7
        while bits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            bits -= 8
    if bits:
        out.append(acc & 0xFF)
    return bytes(out)


def unpack_7bit(data: bytes, count: int, fill_bits: int = 0) -> bytes:
    """`count` septets from packed `data`, skipping `fill_bits` leading bits; ValueError when `data` is too short."""
    if not 0 <= fill_bits <= 6:
        raise ValueError(f"fill_bits must be 0..6, not {fill_bits}")
    if count < 0:
        raise ValueError(f"septet count {count} is negative")
    need = (fill_bits + 7 * count + 7) // 8
    if len(data) < need:
        raise ValueError(f"{count} septets need {need} octets, {len(data)} given")
    value = int.from_bytes(data[:need], "little") >> fill_bits
    return bytes((value >> (7 * i)) & 0x7F for i in range(count))


def septets_in(data: bytes, fill_bits: int = 0) -> int:
    """How many whole septets `data` holds after `fill_bits` leading bits."""
    return max(0, (8 * len(data) - fill_bits) // 7)


def ucs2_encode(text: str) -> bytes:
    """Text to UCS2, big-endian (TS 23.038 section 6.2.3). Characters beyond the BMP become UTF-16 surrogate pairs,
    as phones send them."""
    return text.encode("utf-16-be", errors="surrogatepass")


def ucs2_decode(data: bytes) -> str:
    """UCS2 (UTF-16 big-endian) to text; ValueError on an odd length or a lone surrogate."""
    if len(data) % 2:
        raise ValueError(f"UCS2 data has an odd length ({len(data)} octets)")
    try:
        return data.decode("utf-16-be")
    except UnicodeDecodeError as exc:
        raise ValueError(f"UCS2 data is not valid UTF-16 at offset {exc.start}: {exc.reason}") from None


# --- alpha identifiers (TS 102 221 annex A) -------------------------------------------------------------------------


def _alpha_81(text: str) -> bytes | None:
    """The '81' form: one base pointer (bits 15..8 of a 16-bit base, bit 16 zero), or None when it cannot hold
    `text`."""
    return _alpha_based(text, two_byte_base=False)


def _alpha_based(text: str, *, two_byte_base: bool) -> bytes | None:
    wide = [ord(ch) for ch in text if ch not in _BASIC_CODE]
    if len(text) > 255:
        return None
    if not wide:
        base = 0
    elif two_byte_base:
        base = min(wide)
    else:
        base = min(wide) & ~0x7F
    if any(not 0 <= c - base <= 0x7F for c in wide) or base > 0xFFFF:
        return None
    body = bytes(_BASIC_CODE[ch] if ch in _BASIC_CODE else (ord(ch) - base) | 0x80 for ch in text)
    if two_byte_base:
        return bytes((0x82, len(text))) + base.to_bytes(2, "big") + body
    if base >> 15:
        return None
    return bytes((0x81, len(text), base >> 7)) + body


def alpha_encode(text: str, size: int | None = None) -> bytes:
    """An alpha identifier (TS 102 221 annex A): the GSM default alphabet unpacked when every character has a code,
    otherwise the shortest of the UCS2 forms '80', '81' and '82'. With `size`, the result is padded with 0xFF to
    `size` octets, and TextTooLong is raised when it does not fit."""
    if is_gsm7(text):
        data = gsm7_encode(text)
    else:
        candidates = []
        if all(ord(c) <= 0xFFFF for c in text):
            candidates.append(b"\x80" + text.encode("utf-16-be"))
        for form in (_alpha_81(text), _alpha_based(text, two_byte_base=True)):
            if form is not None:
                candidates.append(form)
        if not candidates:
            bad = next(ch for ch in text if ord(ch) > 0xFFFF)
            raise ValueError(f"character {bad!r} (U+{ord(bad):04X}) has no UCS2 code")
        data = min(candidates, key=len)
    if size is None:
        return data
    if len(data) > size:
        raise TextTooLong(f"{text!r} needs {len(data)} octets, the field holds {size}")
    return data + b"\xff" * (size - len(data))


def alpha_decode(data: bytes) -> str:
    """An alpha identifier (TS 102 221 annex A) to text: '80' UCS2 up to the 0xFFFF padding, '81'/'82' with their
    base pointer, or the GSM default alphabet unpacked with its 0xFF padding removed."""
    if data[:1] == b"\x80":
        body = data[1:]
        chars: list[str] = []
        for at in range(0, len(body) - 1, 2):
            unit = int.from_bytes(body[at : at + 2], "big")
            if unit == 0xFFFF:
                break
            chars.append(chr(unit))
        return "".join(chars)
    if data[:1] in (b"\x81", b"\x82") and len(data) >= 3:
        count = data[1]
        if data[0] == 0x81:
            base, codes = data[2] << 7, data[3 : 3 + count]
        else:
            if len(data) < 4:
                return ""
            base, codes = int.from_bytes(data[2:4], "big"), data[4 : 4 + count]
        out: list[str] = []
        escaped = False
        for c in codes:
            if c & 0x80:
                out.append(chr(base + (c & 0x7F)))
                escaped = False
            elif escaped:
                out.append(GSM7_EXTENSION.get(c, GSM7_BASIC[c] if c != ESCAPE else " "))
                escaped = False
            elif c == ESCAPE:
                escaped = True
            else:
                out.append(GSM7_BASIC[c])
        return "".join(out)
    end = len(data)
    while end and data[end - 1] == 0xFF:
        end -= 1
    return gsm7_decode(data[:end])


# --- +CSCS character sets (27.007 5.5) --------------------------------------------------------------------------


def _charset(name: str) -> str:
    upper = name.upper()
    if upper not in TE_CHARSETS:
        raise ValueError(f"character set {name!r} is not one of {', '.join(TE_CHARSETS)}")
    return upper


def _hex(value: str, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not a string of hex octets") from None


def te_encode(text: str, charset: str) -> str:
    """Text as the TE reads it in `charset` (27.007 5.5): "IRA" (ITU-T T.50, i.e. ASCII), "GSM" (the default
    alphabet, one character per septet value), "UCS2" (four hex digits per UCS2 unit), "HEX" (hex of the GSM
    septets, the ME's own set), "8859-1" (Latin-1). ValueError names a character the set cannot carry."""
    name = _charset(charset)
    if name == "IRA":
        for ch in text:
            if ord(ch) > 0x7F:
                raise ValueError(f"character {ch!r} (U+{ord(ch):04X}) is not in IRA (T.50)")
        return text
    if name == "GSM":
        return "".join(chr(s) for s in gsm7_encode(text))
    if name == "UCS2":
        return ucs2_encode(text).hex().upper()
    if name == "HEX":
        return gsm7_encode(text).hex().upper()
    try:
        return text.encode("latin-1").decode("latin-1")
    except UnicodeEncodeError as exc:
        ch = text[exc.start]
        raise ValueError(f"character {ch!r} (U+{ord(ch):04X}) is not in ISO 8859-1") from None


def te_shown(text: str, charset: str) -> str:
    """`text` as te_encode gives it, with each character the set cannot carry shown as '?' (27.007 leaves what
    the TE then sees open; the stored text stays as it is)."""
    try:
        return te_encode(text, charset)
    except ValueError:
        shown = []
        for ch in text:
            try:
                shown.append(te_encode(ch, charset))
            except ValueError:
                shown.append(te_encode("?", charset))
        return "".join(shown)


def te_decode(value: str, charset: str) -> str:
    """A TE string in `charset` (27.007 5.5) back to text; ValueError on bad hex, odd UCS2, or a character outside
    the set."""
    name = _charset(charset)
    if name == "IRA":
        for ch in value:
            if ord(ch) > 0x7F:
                raise ValueError(f"character {ch!r} (U+{ord(ch):04X}) is not in IRA (T.50)")
        return value
    if name == "GSM":
        bad = next((ch for ch in value if ord(ch) > 0x7F), None)
        if bad is not None:
            raise ValueError(f"character {bad!r} is not a GSM 7-bit code")
        return gsm7_decode(bytes(ord(ch) for ch in value))
    if name == "UCS2":
        if len(value) % 4:
            raise ValueError(f"UCS2 string {value!r} is not a whole number of 4-digit units")
        return ucs2_decode(_hex(value, "UCS2 string"))
    if name == "HEX":
        return gsm7_decode(_hex(value, "HEX string"), strict=True)
    for ch in value:
        if ord(ch) > 0xFF:
            raise ValueError(f"character {ch!r} (U+{ord(ch):04X}) is not in ISO 8859-1")
    return value
