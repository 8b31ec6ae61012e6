"""The card's side of MO short message control by the USIM (3GPP TS 31.111 section 7.3.2): it answers the
terminal's ENVELOPE (MO SHORT MESSAGE CONTROL), tag D5, as the card profile's `mo_sms_control` key says:

- `allow` (the default): 90 00 without data, send the message as it is;
- `refuse`: result 01, not allowed;
- `modify:<sc>,<destination>`: result 02, allowed with modifications, with the SC address (RP_Destination_Address)
  and the destination (TP_Destination_Address) to use instead, each an Address object (TS 102 223 section 8.1:
  TON/NPI, then the digits in swapped BCD; "+" makes the number international). Either may be left empty: the
  answer then repeats the terminal's address for it.

An envelope that is not a well-formed D5 with the two addresses gets 6A 80 (incorrect data, ISO 7816-4).
"""

from __future__ import annotations

from bipsim.uicc.cat import Tag
from bipsim.uicc.phonebook import encode_bcd
from bipsim.uicc.tlv import TlvError, decode_ctlvs, decode_length, encode_ctlv, encode_length
from bipsim.uicc.toolkit import ToolkitError

MO_SMS_CONTROL_TAG = 0xD5
ALLOWED, NOT_ALLOWED, ALLOWED_MODIFIED = 0x00, 0x01, 0x02
SW_INCORRECT_DATA = 0x6A80


def check_setting(setting: str) -> None:
    """ValueError when `setting` is not one of the forms above."""
    if setting in ("allow", "refuse"):
        return
    if not setting.startswith("modify:") or setting.count(",") != 1:
        raise ValueError("use allow, refuse or modify:<sc>,<destination>")
    for number in setting[len("modify:") :].split(","):
        digits = number.removeprefix("+")
        if number and not (digits.isdigit() and digits.isascii() and len(digits) <= 20):
            raise ValueError(f"{number!r} is not a number (+ and up to 20 digits)")


def address_value(number: str) -> bytes:
    """An Address object's value (TS 102 223 section 8.1): TON/NPI (91 international, 81 unknown), swapped BCD."""
    digits = number.removeprefix("+")
    toa = 0x91 if number.startswith("+") else 0x81
    return bytes((toa,)) + encode_bcd(digits, (len(digits) + 1) // 2)


def answer(setting: str, envelope: bytes) -> bytes:
    """The response data to the envelope (empty: 90 00). Raises ToolkitError(6A80) for a malformed envelope."""
    try:
        if not envelope or envelope[0] != MO_SMS_CONTROL_TAG:
            raise TlvError(0, "not an MO SHORT MESSAGE CONTROL envelope")
        length, start = decode_length(envelope, 1, len(envelope))
        if start + length != len(envelope):
            raise TlvError(1, "the envelope's length does not match its data")
        objects = decode_ctlvs(envelope, start, start + length)
    except TlvError as exc:
        raise ToolkitError(SW_INCORRECT_DATA, f"MO SHORT MESSAGE CONTROL: {exc}") from None
    given = [o.value for o in objects if o.tag == Tag.ADDRESS]
    if len(given) < 2:
        raise ToolkitError(SW_INCORRECT_DATA, "MO SHORT MESSAGE CONTROL without its two addresses")
    if setting == "refuse":
        return bytes((NOT_ALLOWED, 0))
    if setting.startswith("modify:"):
        # both objects, the one not changed as the terminal gave it: with one alone the terminal could not
        # tell an RP_Destination_Address from a TP_Destination_Address (TS 31.111 7.3.2.2 orders them)
        numbers = setting[len("modify:") :].split(",")
        data = b"".join(
            encode_ctlv(Tag.ADDRESS, address_value(number) if number else old, cr=True)
            for number, old in zip(numbers, given[:2], strict=True)
        )
        return bytes((ALLOWED_MODIFIED,)) + encode_length(len(data)) + data
    return b""
