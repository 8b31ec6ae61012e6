"""uicc/gsm_text.py: the GSM 7-bit alphabet, septet packing, UCS2, alpha identifiers and the +CSCS sets.

Vectors marked "python-gsmmodem" come from python-gsmmodem's test/test_pdu.py (TestGsm7, TestUcs2), an independent
implementation; the alphabet rows are read off 3GPP TS 23.038 6.2.1/6.2.1.1.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bipsim.uicc import cat, gsm_text
from bipsim.uicc.gsm_text import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    TextTooLong,
    alpha_decode,
    alpha_encode,
    gsm7_decode,
    gsm7_encode,
    gsm7_length,
    pack_7bit,
    te_decode,
    te_encode,
    ucs2_decode,
    ucs2_encode,
    unpack_7bit,
)

# (text, unpacked septets, packed octets): python-gsmmodem test/test_pdu.py TestGsm7
GSMMODEM_VECTORS = [
    ("123", b"123", bytes([49, 217, 12])),
    ("12345678", b"12345678", bytes([49, 217, 140, 86, 179, 221, 112])),
    ("123456789", b"123456789", bytes([49, 217, 140, 86, 179, 221, 112, 57])),
    ("Hello World!", b"Hello World!", bytes([200, 50, 155, 253, 6, 93, 223, 114, 54, 57, 4])),
    (
        "[{abc}]~",
        bytes([0x1B, 0x3C, 0x1B, 0x28, 0x61, 0x62, 0x63, 0x1B, 0x29, 0x1B, 0x3E, 0x1B, 0x3D]),
        bytes([27, 222, 6, 21, 22, 143, 55, 169, 141, 111, 211, 3]),
    ),
    (
        "{åΦΓΛΩΠΨΣΘ€}",
        bytes([27, 40, 15, 18, 19, 20, 21, 22, 23, 24, 25, 27, 101, 27, 41]),
        bytes([27, 212, 67, 50, 161, 84, 44, 23, 76, 102, 83, 222, 164, 0]),
    ),
    (
        "a[]{}€",
        bytes([97, 27, 60, 27, 62, 27, 40, 27, 41, 27, 101]),
        bytes([225, 13, 111, 227, 219, 160, 54, 169, 77, 25]),
    ),
]


@pytest.mark.parametrize(("text", "septets", "packed"), GSMMODEM_VECTORS)
def test_gsmmodem_vectors(text: str, septets: bytes, packed: bytes) -> None:
    assert gsm7_encode(text) == septets
    assert gsm7_decode(septets) == text
    assert pack_7bit(septets) == packed
    assert unpack_7bit(packed, len(septets)) == septets
    assert gsm7_length(text) == len(septets)


def test_alphabet_rows_of_23038() -> None:
    # TS 23.038 6.2.1: a sample of the table's cells, including those an old copy of the table had wrong (0x1F)
    assert [
        GSM7_BASIC[i] for i in (0x00, 0x01, 0x09, 0x10, 0x1C, 0x1F, 0x24, 0x40, 0x5F, 0x60, 0x7F)
    ] == list("@£Ç\u0394ÆÉ¤¡§¿à")
    assert GSM7_EXTENSION[0x65] == "€" and GSM7_EXTENSION[0x0A] == "\x0c"
    assert len(set(GSM7_BASIC)) == 128


def test_hellohello_packs_to_the_classic_pdu_text() -> None:
    # the "hellohello" example of the 3GPP TS 23.038 packing section, as dreamfabric's SMS PDU page shows it
    assert pack_7bit(gsm7_encode("hellohello")).hex().upper() == "E8329BFD4697D9EC37"


def test_encode_names_the_bad_character() -> None:
    with pytest.raises(ValueError, match="U\\+4E16"):
        gsm7_encode("a世b")


def test_unknown_escape_shows_the_base_character() -> None:
    # TS 23.038 6.2.1.1: a code the extension table lacks is shown as the default-alphabet character
    assert gsm7_decode(bytes([0x1B, 0x41, 0x42])) == "AB"
    assert gsm7_decode(bytes([0x41, 0x1B])) == "A "


def test_strict_decode_refuses_non_septets() -> None:
    assert gsm7_decode(b"\x41\x80") == "A?"
    with pytest.raises(ValueError, match="0x80"):
        gsm7_decode(b"\x41\x80", strict=True)


def test_fill_bits_after_a_header() -> None:
    # a 6-octet UDH leaves 1 fill bit before the first septet (TS 23.040 9.2.3.24): the first octet's bit 0 is fill
    packed = pack_7bit(gsm7_encode("Hi"), fill_bits=1)
    assert packed == bytes([0x90, 0x69])
    assert unpack_7bit(packed, 2, fill_bits=1) == b"Hi"
    with pytest.raises(ValueError):
        pack_7bit(b"A", fill_bits=7)


def test_unpack_refuses_short_data() -> None:
    with pytest.raises(ValueError, match="need"):
        unpack_7bit(b"\x31", 3)


@given(st.binary(max_size=200).map(lambda b: bytes(x & 0x7F for x in b)), st.integers(0, 6))
def test_pack_unpack_round_trip(septets: bytes, fill: int) -> None:
    assert unpack_7bit(pack_7bit(septets, fill), len(septets), fill) == septets


_GSM_CHARS = st.sampled_from(sorted(set(GSM7_BASIC.replace("\x1b", "")) | set(GSM7_EXTENSION.values())))


@given(st.text(alphabet=_GSM_CHARS, max_size=80))
def test_text_round_trip(text: str) -> None:
    assert gsm7_decode(gsm7_encode(text)) == text
    assert te_decode(te_encode(text, "HEX"), "HEX") == text
    assert te_decode(te_encode(text, "GSM"), "GSM") == text


def test_ucs2_vectors() -> None:
    # python-gsmmodem test/test_pdu.py TestUcs2
    assert ucs2_encode("あ叶葉") == bytes([0x30, 0x42, 0x53, 0xF6, 0x84, 0x49])
    assert ucs2_decode(bytes([0x30, 0x6F, 0x30, 0x44])) == "はい"
    with pytest.raises(ValueError, match="odd"):
        ucs2_decode(b"\x30\x42\x53")
    with pytest.raises(ValueError):
        ucs2_decode(b"\xd8\x00")


def test_alpha_forms_of_102221_annex_a() -> None:
    assert alpha_encode("Home", 8) == b"Home\xff\xff\xff\xff"
    assert alpha_decode(b"Home\xff\xff\xff\xff") == "Home"
    # annex A's '81' example: base pointer 0x0A << 7 = 0x0500, Cyrillic letters as 0x80 | offset
    data = alpha_encode("ЖЖ1")
    assert data[0] in (0x81, 0x82)
    assert alpha_decode(data) == "ЖЖ1"
    assert (
        alpha_decode(bytes.fromhex("810302" + "9A" + "9B" + "31"))
        == chr(0x100 + 0x1A) + chr(0x100 + 0x1B) + "1"
    )
    assert alpha_decode(bytes.fromhex("82020410" + "8131")) == chr(0x411) + "1"
    assert alpha_decode(bytes.fromhex("80041F0435FFFF")) == "\u041f\u0435"
    # '80' is chosen when the characters are too far apart for a base pointer
    spread = "世a\u0416"
    assert alpha_encode(spread)[0] == 0x80 and alpha_decode(alpha_encode(spread)) == spread
    with pytest.raises(TextTooLong):
        alpha_encode("toolong", 4)


# U+FFFF is the '80' form's padding (TS 102 221 annex A), so it cannot be a character of an alpha identifier
_ALPHA_CHARS = st.characters(max_codepoint=0xFFFE, exclude_categories=("Cs",))


@given(st.text(alphabet=_ALPHA_CHARS, max_size=30))
def test_alpha_round_trip(text: str) -> None:
    data = alpha_encode(text)
    assert alpha_decode(data) == text
    assert alpha_decode(data + b"\xff" * 4) == text


def test_te_charsets_of_27007() -> None:
    assert te_encode("Hi", "UCS2") == "00480069"
    assert te_decode("00480069", "ucs2") == "Hi"
    assert te_encode("Hi", "HEX") == "4869"
    assert te_encode("@", "GSM") == "\x00"
    assert te_encode("é", "8859-1") == "é"
    assert te_encode("Hi", "IRA") == "Hi"
    with pytest.raises(ValueError, match="IRA"):
        te_encode("é", "IRA")
    with pytest.raises(ValueError, match="8859-1"):
        te_encode("€", "8859-1")
    with pytest.raises(ValueError, match="4-digit"):
        te_decode("004", "UCS2")
    with pytest.raises(ValueError, match="hex"):
        te_decode("00GG", "UCS2")
    with pytest.raises(ValueError, match="hex"):
        te_decode("4", "HEX")
    with pytest.raises(ValueError, match="character set"):
        te_encode("x", "PCCP437")


def test_cat_helpers_delegate() -> None:
    assert cat.gsm_encode("é") == b"\x05"  # not 0x1F, which is É (TS 23.038 6.2.1)
    assert cat.gsm_decode(b"\x1b\x65") == "€"
    assert cat.unpack_7bit(bytes([200, 50, 155, 253, 6, 93, 223, 114, 54, 57, 4]))[:12] == b"Hello World!"
    assert cat.alpha_decode(b"\x80\x00\x41\xff\xff") == "A"
    assert gsm_text.septets_in(b"\x00" * 7) == 8
