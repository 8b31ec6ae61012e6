"""SEND SHORT MESSAGE's packing (ETSI TS 102 223 section 6.4.10, qualifier bit 1 "packing by the terminal
required"): the card gives an SMS-SUBMIT whose user data is GSM default alphabet text in 8-bit form, and the
terminal packs it into 7-bit septets and changes the TP-DCS to say so (3GPP TS 23.038 section 4, TS 23.040
section 9.2.3.16), before the TPDU goes to the network.
"""

from __future__ import annotations

from dataclasses import replace

from bipsim.net.sms_pdu import Alphabet, SmsPduError, SmsSubmit, dcs_alphabet, decode_tpdu

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
