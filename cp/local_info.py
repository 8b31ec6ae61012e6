"""PROVIDE LOCAL INFORMATION carried out by the modem (ETSI TS 102 223 section 6.4.15, 3GPP TS 31.111 section
6.4.15), sans-IO: the command and what the terminal knows in, the result and its objects out.

Qualifiers (section 8.6) the CP answers: 00 location information (TS 31.111 section 8.19: MCC and MNC as in TS
24.008 section 10.5.1.3, then LAC and cell identity, or TAC and the 28-bit E-UTRAN cell identity on E-UTRAN), 01
the IMEI and 08 the IMEISV (TS 24.008 section 10.5.1.4 mobile identity digits, without the IEI and length; the
IMEI's check digit goes as the spare digit 0, TS 23.003 section 6.2.1), 03
date, time and time zone (section 8.39: semi-octets, the zone in quarter hours), 04 the language (section 8.45:
two GSM characters of ISO 639), 06 the access technology (section 8.61). Any other qualifier is beyond the
terminal's capabilities (0x30).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from bipsim.net.sms_pdu import encode_semi_octets, encode_timestamp
from bipsim.uicc.cat import CatObject, GeneralResult, ProactiveCommand, Tag, obj

E_UTRAN = 7  # 27.007 <AcT>
ACCESS_TECHNOLOGY = {0: 0x00, 2: 0x03, 7: 0x08}  # 27.007 <AcT> -> TS 102 223 8.61: GSM, UTRAN, E-UTRAN


@dataclass(frozen=True)
class LocalInfo:
    """What the terminal reports: the serving cell, its identity, the language."""

    mcc: str = "001"
    mnc: str = "01"
    lac_tac: int = 0x0001
    cell_id: int = 0x00000A1B
    rat: int = E_UTRAN
    imei: str = "490154203237518"
    svn: str = "01"
    language: str = "en"


def plmn(mcc: str, mnc: str) -> bytes:
    """MCC and MNC in three octets (TS 24.008 section 10.5.1.3); a two-digit MNC has F as its third digit."""
    third = mnc[2] if len(mnc) == 3 else "F"
    return bytes(
        (
            int(mcc[1]) << 4 | int(mcc[0]),
            int(third, 16) << 4 | int(mcc[2]),
            int(mnc[1]) << 4 | int(mnc[0]),
        )
    )


def mobile_identity(digits: str, identity_type: int) -> bytes:
    """Identity digits (TS 24.008 section 10.5.1.4): the first digit with the odd/even flag and the type of
    identity (2 IMEI, 3 IMEISV), then the others two a byte, F-filled."""
    odd = len(digits) % 2
    first = int(digits[0]) << 4 | odd << 3 | identity_type
    return bytes((first,)) + encode_semi_octets(digits[1:])


def location_information(info: LocalInfo) -> bytes:
    """The location information object's value (TS 31.111 section 8.19): MCC/MNC, then LAC and cell identity, or
    on E-UTRAN the TAC and the 28-bit E-UTRAN cell identity followed by 1111."""
    if info.rat == E_UTRAN:
        cell = info.lac_tac.to_bytes(2, "big") + (info.cell_id << 4 | 0xF).to_bytes(4, "big")
    else:
        cell = info.lac_tac.to_bytes(2, "big") + (info.cell_id & 0xFFFF).to_bytes(2, "big")
    return plmn(info.mcc, info.mnc) + cell


def date_time(now: datetime) -> bytes:
    """Date, time and time zone (TS 102 223 section 8.39): coded as TP-SCTS (TS 23.040 section 9.2.3.11), YY MM DD
    hh mm ss in semi-octets, the zone in quarter hours from UTC (bit 4 of its first semi-octet the sign)."""
    return encode_timestamp(now)


def provide_local_information(
    command: ProactiveCommand, info: LocalInfo, now: datetime | None = None
) -> tuple[int, list[CatObject]]:
    """The general result and objects of the TERMINAL RESPONSE to PROVIDE LOCAL INFORMATION."""
    qualifier = command.qualifier
    if qualifier == 0x00:
        return GeneralResult.OK, [obj(Tag.LOCATION_INFORMATION, location_information(info), cr=False)]
    if qualifier == 0x01:
        # the check digit is sent as the spare digit, 0 (TS 23.003 section 6.2.1, TS 24.008 section 10.5.1.4)
        return GeneralResult.OK, [obj(Tag.IMEI, mobile_identity(info.imei[:14] + "0", 2), cr=False)]
    if qualifier == 0x03:
        stamp = date_time(now if now is not None else datetime.now(UTC))
        return GeneralResult.OK, [obj(Tag.DATE_TIME_AND_TIME_ZONE, stamp, cr=False)]
    if qualifier == 0x04:
        return GeneralResult.OK, [obj(Tag.LANGUAGE, info.language.encode("ascii"), cr=False)]
    if qualifier == 0x06:
        technology = ACCESS_TECHNOLOGY.get(info.rat, 0x08)
        return GeneralResult.OK, [obj(Tag.ACCESS_TECHNOLOGY, bytes((technology,)), cr=False)]
    if qualifier == 0x08:
        return GeneralResult.OK, [obj(Tag.IMEISV, mobile_identity(info.imei[:14] + info.svn, 3), cr=False)]
    return GeneralResult.BEYOND_TERMINAL_CAPABILITIES, []
