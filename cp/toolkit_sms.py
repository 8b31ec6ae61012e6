"""SEND SHORT MESSAGE's packing (ETSI TS 102 223 section 6.4.10, qualifier bit 1 "packing by the terminal
required"): the card gives an SMS-SUBMIT whose user data is GSM default alphabet text in 8-bit form, and the
terminal packs it into 7-bit septets and changes the TP-DCS to say so (3GPP TS 23.038 section 4, TS 23.040
section 9.2.3.16), before the TPDU goes to the network.

And MO SHORT MESSAGE CONTROL by the USIM (3GPP TS 31.111 section 7.3.2): before the ME sends a short message it
gives the card, in an ENVELOPE (tag D5), the service centre address (RP_Destination_Address), the destination
(TP_Destination_Address) and where it is (location information, section 8.19); the card answers 90 00 (allowed),
or a result byte 00 allowed, 01 not allowed, 02 allowed with modifications followed by the addresses to use
(section 7.3.2.2). A malformed answer is taken as not allowed: the card is the one that decides.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

from bipsim.net.sms_pdu import (
    Address,
    Alphabet,
    SmsPduError,
    SmsSubmit,
    TypeOfNumber,
    dcs_alphabet,
    decode_semi_octets,
    decode_tpdu,
    encode_sca,
)
from bipsim.uicc.cat import DeviceId, Envelope, EnvelopeTag, Tag, obj
from bipsim.uicc.tlv import TlvError, decode_ctlvs

PACKING_REQUIRED = 0x01  # SEND SHORT MESSAGE qualifier bit 1 (TS 102 223 section 8.6)


def pack_submit(tpdu: bytes) -> bytes:
    """The SMS-SUBMIT with its 8-bit GSM text packed into septets and its DCS changed to the 7-bit alphabet; the
    TPDU as it is when its DCS is not 8-bit data. Raises SmsPduError (a ValueError) when it is not an SMS-SUBMIT or
    its 8-bit user data holds octets that are not GSM default alphabet characters."""
    message = decode_tpdu(tpdu)
    if not isinstance(message, SmsSubmit):
        raise SmsPduError("SEND SHORT MESSAGE carries an SMS-SUBMIT")
    if dcs_alphabet(message.dcs) is not Alphabet.EIGHT_BIT:
        return tpdu  # already 7-bit (or UCS2): nothing to pack
    if any(octet > 0x7F for octet in message.ud):
        raise SmsPduError("8-bit user data that is not GSM default alphabet text cannot be packed")
    # general data coding (groups 00xx, 01xx): alphabet in bits 3-2; data coding / message class (1111): bit 3
    dcs = message.dcs & ~0x04 if message.dcs >> 4 == 0xF else message.dcs & ~0x0C
    return replace(message, dcs=dcs).encode()


MO_SMS_CONTROL_BYTE, MO_SMS_CONTROL_BIT = 2, 0x08  # TERMINAL PROFILE byte 2 bit 4 (TS 31.111 section 5.2)


def mo_sms_control_supported(terminal_profile: bytes) -> bool:
    """Whether the terminal profile the ME sent declares MO short message control by the USIM."""
    return len(terminal_profile) >= MO_SMS_CONTROL_BYTE and bool(
        terminal_profile[MO_SMS_CONTROL_BYTE - 1] & MO_SMS_CONTROL_BIT
    )


class MoControlResult(IntEnum):
    """The first byte of the card's answer (TS 31.111 section 7.3.2.2)."""

    ALLOWED = 0x00
    NOT_ALLOWED = 0x01
    ALLOWED_MODIFIED = 0x02


@dataclass(frozen=True)
class MoControl:
    """The card's decision: the SC address (27.005 PDU form: length, TOA, digits) and TPDU to send, or refused."""

    result: MoControlResult
    sca: bytes
    tpdu: bytes


def _cat_address(sca_or_tp: bytes) -> bytes:
    """An Address object's value (TS 102 223 section 8.1: TON/NPI, then the BCD digits) from a 27.005 SC address
    (length, TOA, digits) or a TP address field (semi-octet count, TOA, digits): both drop their first octet."""
    return sca_or_tp[1:]


def mo_sms_control_envelope(sca: bytes, tpdu: bytes, location: bytes) -> Envelope:
    """ENVELOPE (MO SHORT MESSAGE CONTROL) for sending `tpdu` (an SMS-SUBMIT) through the SC address `sca` (27.005
    form, not empty). Raises SmsPduError when the TPDU is not an SMS-SUBMIT."""
    message = decode_tpdu(tpdu)
    if not isinstance(message, SmsSubmit):
        raise SmsPduError("MO short message control is for an SMS-SUBMIT")
    return Envelope(
        (
            obj(Tag.DEVICE_IDENTITIES, bytes((DeviceId.TERMINAL, DeviceId.UICC)), cr=True),
            obj(Tag.ADDRESS, _cat_address(sca), cr=True),
            obj(Tag.ADDRESS, _cat_address(message.destination.encode()), cr=True),
            obj(Tag.LOCATION_INFORMATION, location, cr=True),
        ),
        EnvelopeTag.MO_SHORT_MESSAGE_CONTROL,
    )


def _address_of(value: bytes) -> Address:
    if not value:
        raise SmsPduError("an empty address object")
    toa, digits = value[0], value[1:]
    count = 2 * len(digits) - (1 if digits and digits[-1] >> 4 == 0xF else 0)
    return Address(decode_semi_octets(digits, count, "address"), TypeOfNumber((toa >> 4) & 0x07), toa & 0x0F)


def mo_sms_control_answer(answer: bytes, sca: bytes, tpdu: bytes) -> MoControl:
    """What the card's answer to the envelope means for the message: 90 00 without data (`answer` empty) and 00
    keep it, 01 refuses it, 02 changes the SC address and/or the destination to the addresses given (RP first,
    then TP). Anything else is not allowed."""
    if not answer:
        return MoControl(MoControlResult.ALLOWED, sca, tpdu)
    try:
        result = MoControlResult(answer[0])
        if len(answer) < 2 or answer[1] != len(answer) - 2:
            raise ValueError("the length does not match")
        addresses = [o.value for o in decode_ctlvs(answer[2:]) if o.tag == Tag.ADDRESS]
        if result is not MoControlResult.ALLOWED_MODIFIED:
            return MoControl(result, sca, tpdu)
        if addresses:
            sca = encode_sca(_address_of(addresses[0]))
        if len(addresses) > 1:
            message = decode_tpdu(tpdu)
            if isinstance(message, SmsSubmit):
                tpdu = replace(message, destination=_address_of(addresses[1])).encode()
        return MoControl(result, sca, tpdu)
    except (ValueError, TlvError):  # SmsPduError is a ValueError
        return MoControl(MoControlResult.NOT_ALLOWED, sca, tpdu)
