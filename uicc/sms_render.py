"""SMS TPDUs as the card sees them, field by field: SMS-DELIVER and SMS-SUBMIT (3GPP TS 23.040 section 9.2.2), their
user data header (9.2.3.24), and the secured packets an OTA SMS carries (ETSI TS 102 225 section 5, in its SMS form of
3GPP TS 31.115 section 4: command packet behind the '70' CPI element, response packet (PoR) behind '71').

The field names follow 3GPP TS 23.040 (tp_mti, tp_oa, tp_pid, ...) and TS 31.115 (cpl, chl, spi, kic, kid, tar,
cntr, pcntr); values keep their raw number with a `<field>_name` beside it, as the rest of `bipsim decode` does.
Malformed input raises TlvError with the byte offset and the rule, like the TLV codecs. uicc/ota_trigger.py
builds and checks these packets; this module only reads them.
"""

from __future__ import annotations

from typing import Any

from bipsim.uicc.cat import gsm_decode, unpack_7bit
from bipsim.uicc.cat_names import dcs_name, name_of
from bipsim.uicc.tlv import TlvError

# TS 23.040 9.2.3.1 TP-MTI, SC to MS direction (and MS to SC for SUBMIT)
MESSAGE_TYPES = {0: "SMS-DELIVER", 1: "SMS-SUBMIT", 2: "SMS-COMMAND / SMS-STATUS-REPORT"}

# TS 23.040 9.2.3.2 TP-MMS
MORE_MESSAGES = {
    0: "More messages are waiting for the MS in this SC",
    1: "No more messages are waiting for the MS in this SC",
}

# TS 23.040 9.2.3.9 TP-PID values of the card's concern
PROTOCOL_IDENTIFIERS = {
    0x00: "default (no telematic interworking, SME-to-SME protocol)",
    0x40: "Short Message Type 0",
    0x7C: "ANSI-136 R-DATA",
    0x7D: "ME Data download",
    0x7E: "ME De-personalization Short Message",
    0x7F: "(U)SIM Data download",
}

# TS 23.040 9.2.3.24 information element identifiers (those of TS 31.115 section 4 and the usual ones)
INFORMATION_ELEMENTS = {
    0x00: "Concatenated short messages, 8-bit reference number",
    0x08: "Concatenated short messages, 16-bit reference number",
    0x70: "(U)SIM Toolkit Security Headers: command packet identifier (CPI)",
    0x71: "(U)SIM Toolkit Security Headers: response packet identifier (RPI)",
}

# TS 102 225 5.1.1 SPI first octet
SPI_CHECKS = {
    0: "No RC, CC or DS",
    1: "Redundancy Check",
    2: "Cryptographic Checksum",
    3: "Digital Signature",
}
SPI_COUNTERS = {
    0: "No counter available",
    1: "Counter available; no replay or sequence checking",
    2: "Process if and only if counter value is higher than the value in the RE",
    3: "Process if and only if counter value is one higher than the value in the RE",
}
# SPI second octet b2b1
POR_REQUESTS = {0: "No PoR reply to the Sending Entity (SE)", 1: "PoR required to be sent to the SE",
                2: "PoR required only when an error has occured", 3: "Reserved"}  # fmt: skip

# TS 102 225 5.1.2 / 5.1.3 KIc and KID: b2b1 algorithm family, b4b3 the mode within DES / AES
KEY_ALGORITHMS = {0: "Algorithm known implicitly by both entities", 1: "DES", 2: "AES", 3: "proprietary"}
DES_MODES = {0: "DES in CBC mode", 1: "triple DES in outer-CBC mode using two different keys",
             2: "triple DES in outer-CBC mode using three different keys", 3: "reserved"}  # fmt: skip

# TS 102 225 table 5.5 response status codes
POR_STATUS = {
    0x00: "PoR OK",
    0x01: "RC/CC/DS failed",
    0x02: "CNTR low",
    0x03: "CNTR high",
    0x04: "CNTR Blocked",
    0x05: "Ciphering error",
    0x06: "Unidentified security error",
    0x07: "Insufficient memory to process incoming message",
    0x08: 'This status code "more time" should be used if the Receiving Entity/Application needs more time',
    0x09: "TAR Unknown",
    0x0A: "Insufficient security level",
}

# TS 101 220 annex D toolkit application reference of the issuer security domain
TARS = {bytes(3): "Issuer Security Domain"}


def _need(data: bytes, at: int, count: int, what: str) -> None:
    if at + count > len(data):
        raise TlvError(
            min(at, len(data)), f"truncated: {what} needs {count} bytes, {max(len(data) - at, 0)} left"
        )


def _digits(data: bytes) -> str:
    """Semi-octets (TS 23.040 9.1.2.3): low nibble first, 'F' filler dropped."""
    out = []
    for byte in data:
        for nibble in (byte & 0x0F, byte >> 4):
            if nibble != 0x0F:
                out.append("0123456789*#abc"[nibble])
    return "".join(out)


def _address(data: bytes, at: int, what: str) -> tuple[dict[str, Any], int]:
    """TS 23.040 9.1.2.5 address: length in digits, TON/NPI, semi-octets."""
    _need(data, at, 2, what)
    count, ton_npi = data[at], data[at + 1]
    if count > 20:
        raise TlvError(at, f"{what} length {count} exceeds the 20 digits of TS 23.040 9.1.2.5")
    size = (count + 1) // 2
    _need(data, at + 2, size, what)
    raw = data[at + 2 : at + 2 + size]
    ton = (ton_npi >> 4) & 0x07
    number = raw.hex().upper() if ton == 5 else _digits(raw)[:count]  # alphanumeric: keep the packed bytes
    return {
        "length": count,
        "ton_npi": ton_npi,
        "ton": ton,
        "npi": ton_npi & 0x0F,
        "number": number,
    }, at + 2 + size


def _scts(raw: bytes) -> str:
    """TS 23.040 9.2.3.11: YY-MM-DD hh:mm:ss and the time zone in quarters of an hour."""
    d = [_digits(bytes((b,))).ljust(2, "0")[:2] for b in raw]
    tz = raw[6]
    quarters = (tz & 0x07) * 10 + (
        tz >> 4
    )  # semi-octets: tens in the low nibble (bit 4 the sign), units high
    sign = "-" if tz & 0x08 else "+"
    return f"{d[0]}-{d[1]}-{d[2]} {d[3]}:{d[4]}:{d[5]} {sign}{quarters // 4:02d}:{quarters % 4 * 15:02d}"


def decode_tpdu(data: bytes) -> dict[str, Any]:
    """An SMS-DELIVER or SMS-SUBMIT TPDU, field by field. Raises TlvError."""
    if not data:
        raise TlvError(0, "empty input")
    first = data[0]
    mti = first & 0x03
    out: dict[str, Any] = {"tp_mti": mti, "tp_mti_name": MESSAGE_TYPES.get(mti, "reserved")}
    if mti == 0:
        out["tp_mms"] = int(bool(first & 0x04))
        out["tp_mms_name"] = MORE_MESSAGES[out["tp_mms"]]
        out["tp_sri"] = int(bool(first & 0x20))
        at = 1
        out["tp_oa"], at = _address(data, at, "TP-OA")
        _need(data, at, 9, "TP-PID, TP-DCS and TP-SCTS")
        pid, dcs = data[at], data[at + 1]
        out.update(_pid_dcs(pid, dcs))
        out["tp_scts"] = _scts(data[at + 2 : at + 9])
        at += 9
    elif mti == 1:
        vpf = (first >> 3) & 0x03
        out["tp_rd"] = int(bool(first & 0x04))
        out["tp_vpf"] = vpf
        out["tp_srr"] = int(bool(first & 0x20))
        _need(data, 1, 1, "TP-MR")
        out["tp_mr"] = data[1]
        out["tp_da"], at = _address(data, 2, "TP-DA")
        _need(data, at, 2, "TP-PID and TP-DCS")
        out.update(_pid_dcs(data[at], data[at + 1]))
        dcs = data[at + 1]
        at += 2
        vp_size = {0: 0, 2: 1, 1: 7, 3: 7}[vpf]
        _need(data, at, vp_size, "TP-VP")
        if vp_size:
            out["tp_vp_hex"] = data[at : at + vp_size].hex().upper()
        at += vp_size
    else:
        raise TlvError(0, f"TP-MTI {mti}: only SMS-DELIVER and SMS-SUBMIT are decoded")
    out["tp_udhi"] = int(bool(first & 0x40))
    out["tp_rp"] = int(bool(first & 0x80))
    _need(data, at, 1, "TP-UDL")
    udl = data[at]
    out["tp_udl"] = udl
    at += 1
    septets = dcs & 0xC0 == 0 and (dcs >> 2) & 0x03 == 0 or dcs & 0xF4 == 0xF0
    size = (udl * 7 + 7) // 8 if septets else udl
    rest = data[at:]
    if len(rest) < size:
        raise TlvError(at - 1, f"TP-UDL {udl} needs {size} octets of user data, {len(rest)} follow")
    if len(rest) > size:
        # pySim's OTA test TPDUs carry TP-UDL 3 before a whole command packet: decode what is there, and say so
        out["note"] = f"TP-UDL {udl} but {len(rest)} octets follow; all of them decoded as user data"
        size = len(rest)
    user_data = rest[:size]
    out["tp_ud_hex"] = user_data.hex().upper()
    if out["tp_udhi"] and not septets:
        out.update(decode_user_data(user_data, offset=at))
    elif not out["tp_udhi"]:
        text = _text(user_data, udl, septets, dcs)
        if text is not None:
            out["tp_ud_text"] = text
    return out


def _text(user_data: bytes, udl: int, septets: bool, dcs: int) -> str | None:
    """The user data as text (TS 23.038): GSM 7 bit, UCS2, or 8 bit data when it is printable ASCII."""
    if septets:
        return gsm_decode(unpack_7bit(user_data)[:udl])
    if dcs & 0xC0 == 0 and (dcs >> 2) & 0x03 == 2:
        return user_data.decode("utf-16-be", errors="replace")
    if all(0x20 <= b < 0x7F or b in (0x0A, 0x0D) for b in user_data):
        return user_data.decode("ascii")
    return None


def _pid_dcs(pid: int, dcs: int) -> dict[str, Any]:
    return {
        "tp_pid": pid,
        "tp_pid_name": name_of(PROTOCOL_IDENTIFIERS, pid),
        "tp_dcs": dcs,
        "tp_dcs_name": dcs_name(dcs),
    }


def decode_user_data(data: bytes, offset: int = 0) -> dict[str, Any]:
    """User data with a header (TS 23.040 9.2.3.24); a '70' or '71' element makes the rest a secured packet."""
    if not data:
        raise TlvError(offset, "truncated: UDHL missing")
    udhl = data[0]
    _need(data, 1, udhl, "user data header")
    elements = []
    i = 1
    while i < 1 + udhl:
        _need(data, i, 2, "information element")
        iei, length = data[i], data[i + 1]
        if i + 2 + length > 1 + udhl:
            raise TlvError(offset + i + 1, f"information element length {length} exceeds the header")
        elements.append(
            {
                "iei": iei,
                "iei_name": name_of(INFORMATION_ELEMENTS, iei),
                "value_hex": data[i + 2 : i + 2 + length].hex().upper(),
            }
        )
        i += 2 + length
    out: dict[str, Any] = {"udh": elements}
    body = data[1 + udhl :]
    ieis = {e["iei"] for e in elements}
    if 0x70 in ieis:
        out["command_packet"] = decode_command_packet(body, offset + 1 + udhl)
    elif 0x71 in ieis:
        out["response_packet"] = decode_response_packet(body, offset + 1 + udhl)
    return out


def _spi(spi: bytes) -> dict[str, Any]:
    first, second = spi
    return {
        "spi": spi.hex().upper(),
        "spi_check": first & 0x03,
        "spi_check_name": SPI_CHECKS[first & 0x03],
        "spi_ciphering": bool(first & 0x04),
        "spi_counter": (first >> 3) & 0x03,
        "spi_counter_name": SPI_COUNTERS[(first >> 3) & 0x03],
        "spi_por": second & 0x03,
        "spi_por_name": POR_REQUESTS[second & 0x03],
        "spi_por_check": (second >> 2) & 0x03,
        "spi_por_check_name": SPI_CHECKS[(second >> 2) & 0x03],
        "spi_por_ciphered": bool(second & 0x10),
        "spi_por_via": "SMS-SUBMIT" if second & 0x20 else "SMS-DELIVER-REPORT",
    }


def _key(name: str, value: int) -> dict[str, Any]:
    algorithm = value & 0x03
    text = KEY_ALGORITHMS[algorithm]
    if algorithm == 1:
        text = f"{text}: {DES_MODES[(value >> 2) & 0x03]}"
    elif algorithm == 2:
        text = (
            f"{text}: {'CBC' if name == 'kic' else 'CMAC'} mode"
            if (value >> 2) & 0x03 == 0
            else f"{text}: reserved"
        )
    return {name: value, f"{name}_name": f"{text}, key version {value >> 4}"}


def decode_command_packet(data: bytes, offset: int = 0) -> dict[str, Any]:
    """A command packet from CPL on (TS 31.115 4.2; TS 102 225 5.1)."""
    _need(data, 0, 10, "command packet header (CPL, CHL, SPI, KIc, KID, TAR)")
    cpl = int.from_bytes(data[:2], "big")
    chl = data[2]
    out: dict[str, Any] = {"cpl": cpl, "chl": chl}
    if cpl != len(data) - 2:
        out["note"] = f"CPL {cpl} but {len(data) - 2} octets follow it"
    out.update(_spi(data[3:5]))
    out.update(_key("kic", data[5]))
    out.update(_key("kid", data[6]))
    tar = data[7:10]
    out["tar"] = tar.hex().upper()
    out["tar_name"] = TARS.get(tar, "")
    if out["spi_ciphering"]:
        out["ciphered_hex"] = data[10:].hex().upper()
        return out
    if chl < 13:
        raise TlvError(offset + 2, f"CHL {chl} is shorter than the 13 octets of SPI..PCNTR")
    _need(data, 10, chl - 7, "counter, padding counter and checksum")
    out["cntr"] = int.from_bytes(data[10:15], "big")
    out["pcntr"] = data[15]
    out["cc_hex"] = data[16 : 3 + chl].hex().upper()
    out["secured_data_hex"] = data[3 + chl :].hex().upper()
    return out


def decode_response_packet(data: bytes, offset: int = 0) -> dict[str, Any]:
    """A response packet (PoR) from RPL on (TS 31.115 4.4; TS 102 225 5.2)."""
    _need(data, 0, 13, "response packet header (RPL, RHL, TAR, CNTR, PCNTR, status)")
    rpl = int.from_bytes(data[:2], "big")
    rhl = data[2]
    out: dict[str, Any] = {"rpl": rpl, "rhl": rhl}
    if rpl != len(data) - 2:
        out["note"] = f"RPL {rpl} but {len(data) - 2} octets follow it"
    tar = data[3:6]
    out["tar"] = tar.hex().upper()
    out["tar_name"] = TARS.get(tar, "")
    out["cntr"] = int.from_bytes(data[6:11], "big")
    out["pcntr"] = data[11]
    out["status"] = data[12]
    out["status_name"] = name_of(POR_STATUS, data[12])
    if rhl < 10:
        raise TlvError(offset + 2, f"RHL {rhl} is shorter than the 10 octets of TAR..status")
    out["cc_hex"] = data[13 : 3 + rhl].hex().upper()
    out["data_hex"] = data[3 + rhl :].hex().upper()
    return out


def looks_like_tpdu(data: bytes) -> bool:
    """Whether `data` reads as an SMS-DELIVER whose addresses and lengths all fit."""
    if len(data) < 13 or data[0] & 0x03 != 0 or not data[2] & 0x80:
        return False
    try:
        decode_tpdu(data)
    except TlvError:
        return False
    return True


def looks_like_secured_user_data(data: bytes) -> bool:
    """SMS user data that is a secured packet: UDHL then a '70' or '71' element first."""
    return len(data) >= 16 and data[0] >= 2 and data[1] in (0x70, 0x71) and data[2] == 0
