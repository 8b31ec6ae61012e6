"""The AT lines of the SIM data sync, sans-IO (docs/protocols.md, "SIM data sync"): 3GPP TS 27.007 `+CPBS`
(8.11), `+CPBR` (8.12) and `+CPBW` (8.14) answers parsed into contacts and contacts made into command lines, with
`+CSCS="UCS2"` (5.5) so that every name survives the trip (four hex digits a UTF-16 unit); and the messages of
EF_SMS (3GPP TS 31.102 4.2.25: status octet, SC address, TPDU of TS 23.040) read and written record by record with
`+CRSM` (27.007 8.18) READ RECORD / UPDATE RECORD."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from bipsim.ap.sync.merge import Contact, Message, MessageStatus
from bipsim.net.sms_pdu import (
    Address,
    Alphabet,
    SmsDeliver,
    SmsPduError,
    SmsSubmit,
    dcs_alphabet,
    dcs_compressed,
    decode_sca,
    decode_tpdu,
    encode_sca,
)

TYPE_INTERNATIONAL = 145  # 27.007 8.12 <type>: TON international, ISDN numbering plan (TS 24.008 10.5.4.7)
TYPE_UNKNOWN = 129
_CPBR = re.compile(r'^\+CPBR: (\d+),"([^"]*)",(\d+),"([0-9A-Fa-f]*)"')
_CPBS = re.compile(r'^\+CPBS: "([A-Z]+)",(\d+),(\d+)')
_DIAL = re.compile(r"^\+?[0-9*#pP?]*$")


class SimDataError(ValueError):
    """An answer of the modem that is not what 27.007 says (a bad line, a bad UCS2 string, a bad dial string)."""


def ucs2(text: str) -> str:
    return text.encode("utf-16-be").hex().upper()


def from_ucs2(text: str) -> str:
    if len(text) % 4:
        raise SimDataError(f"UCS2 text {text!r} is not whole units")
    try:
        return bytes.fromhex(text).decode("utf-16-be")
    except (ValueError, UnicodeDecodeError) as exc:
        raise SimDataError(f"UCS2 text {text!r}: {exc}") from None


def parse_cpbs(lines: Iterable[str]) -> tuple[int, int]:
    """`+CPBS: "<storage>",<used>,<total>` -> (used, total)."""
    for line in lines:
        found = _CPBS.match(line)
        if found:
            return int(found.group(2)), int(found.group(3))
    raise SimDataError("no +CPBS: <storage>,<used>,<total> line")


def parse_cpbr(lines: Iterable[str]) -> dict[int, Contact]:
    """Each `+CPBR: <index>,"<number>",<type>,"<text>"` line (text in UCS2 hex) -> index: contact. Type 145 makes
    the number international: a '+' the modem left out is put back."""
    out: dict[int, Contact] = {}
    for line in lines:
        if not line.startswith("+CPBR:"):
            continue
        found = _CPBR.match(line)
        if not found:
            raise SimDataError(f"not a +CPBR entry: {line!r}")
        index, number, kind, text = int(found.group(1)), found.group(2), int(found.group(3)), found.group(4)
        if not _DIAL.match(number):
            raise SimDataError(f"record {index}: invalid dial string {number!r}")
        if kind == TYPE_INTERNATIONAL and not number.startswith("+"):
            number = "+" + number
        if index in out:
            raise SimDataError(f"record {index} listed twice")
        out[index] = Contact(from_ucs2(text), number)
    return out


def cpbw(index: int, contact: Contact) -> str:
    """The `+CPBW` that writes `contact` at `index` (text as UCS2 hex, under +CSCS="UCS2")."""
    kind = TYPE_INTERNATIONAL if contact.number.startswith("+") else TYPE_UNKNOWN
    return f'AT+CPBW={index},"{contact.number}",{kind},"{ucs2(contact.name)}"'


def cpbw_delete(index: int) -> str:
    return f"AT+CPBW={index}"


# --- EF_SMS through +CRSM (27.007 8.18; TS 31.102 4.2.25) ----------------------------------------------------------
# +CMGL marks the unread messages it lists as read and 27.005 follows slot 1 alone, so the sync reads and writes the
# card's EF_SMS records themselves: READ RECORD leaves a message's status as it is.

EF_SMS = 0x6F3C
SMS_PATH = "7FFF"  # 27.007 8.18 <pathid> from the MF, 7FFF standing for the USIM's ADF (TS 102 221 8.4.2)
SMS_RECORD = 176  # status octet, then 175 octets of SC address and TPDU
CRSM_READ_RECORD, CRSM_GET_RESPONSE, CRSM_UPDATE_RECORD = 178, 192, 220
# TS 31.102 4.2.25 status octet: b1 used, b3-b2 the state (b5-b4 of a sent one: status report bits, kept as read)
STATUS_OCTET = {
    MessageStatus.REC_READ: 0x01,
    MessageStatus.REC_UNREAD: 0x03,
    MessageStatus.STO_SENT: 0x05,
    MessageStatus.STO_UNSENT: 0x07,
}
_STATUS_OF_OCTET = {octet: status for status, octet in STATUS_OCTET.items()}
FREE_RECORD = b"\x00" + b"\xff" * (SMS_RECORD - 1)  # a deletion: status 00 and FF padding
_CRSM = re.compile(r'^\+CRSM:\s*(\d+),(\d+)(?:,"?([0-9A-Fa-f]*)"?)?\s*$')
_SCTS = re.compile(r"^(\d\d)/(\d\d)/(\d\d),(\d\d):(\d\d):(\d\d)([+-])(\d\d)$")


class RecordUnfit(ValueError):
    """A record the SIM's EF cannot hold (a text over one message, an address past 20 digits, a time stamp that is
    not a 27.005 <scts>): it is skipped for that SIM and kept everywhere else."""


EF_ICCID = 0x2FE2  # TS 102 221 13.2: the card's identification number, under the MF


def crsm_read_iccid() -> str:
    """READ BINARY of EF_ICCID's 10 octets (`<pathid>` 3F00: the MF)."""
    return f'AT+CRSM=176,{EF_ICCID},0,0,10,,"3F00"'


def decode_iccid(data: bytes) -> str:
    """EF_ICCID's nibble-swapped BCD (TS 102 221 13.2) to its digits, up to the 'F' padding; SimDataError for a
    nibble that is no digit."""
    digits: list[str] = []
    for byte in data:
        for nibble in (byte & 0x0F, byte >> 4):
            if nibble == 0xF:
                return "".join(digits)
            if nibble > 9:
                raise SimDataError(f"EF_ICCID {data.hex().upper()}: nibble {nibble:X} is no digit")
            digits.append(str(nibble))
    return "".join(digits)


def crsm_get_response() -> str:
    return f'AT+CRSM={CRSM_GET_RESPONSE},{EF_SMS},0,0,0,,"{SMS_PATH}"'


def crsm_read_record(index: int) -> str:
    """READ RECORD, absolute mode (P2 04), of one whole EF_SMS record."""
    return f'AT+CRSM={CRSM_READ_RECORD},{EF_SMS},{index},4,{SMS_RECORD},,"{SMS_PATH}"'


def crsm_update_record(index: int, record: bytes) -> str:
    return (
        f'AT+CRSM={CRSM_UPDATE_RECORD},{EF_SMS},{index},4,{len(record)},"{record.hex().upper()}","{SMS_PATH}"'
    )


def parse_crsm(lines: Iterable[str]) -> tuple[int, bytes]:
    """`+CRSM: <sw1>,<sw2>[,"<response>"]` -> (status word, response bytes)."""
    for line in lines:
        found = _CRSM.match(line.strip())
        if found:
            data = found.group(3) or ""
            if len(data) % 2:
                raise SimDataError(f"odd hex in {line!r}")
            sw1, sw2 = int(found.group(1)), int(found.group(2))
            if sw1 > 255 or sw2 > 255:
                raise SimDataError(f"status word out of range in {line!r}")
            return sw1 << 8 | sw2, bytes.fromhex(data)
    raise SimDataError("no +CRSM: <sw1>,<sw2>,<response> line")


def sw_ok(sw: int) -> bool:
    """90 00, or 91 xx (a proactive command pending, TS 102 221 10.2.1.1)."""
    return sw == 0x9000 or sw >> 8 == 0x91


def fcp_records(fcp: bytes) -> tuple[int, int]:
    """(record length, record count) from an FCP template's '82' file descriptor (TS 102 221 11.1.1.4.3)."""
    at = 2 if fcp[:1] == b"\x62" else 0
    while at + 2 <= len(fcp):
        tag, size = fcp[at], fcp[at + 1]
        value = fcp[at + 2 : at + 2 + size]
        if tag == 0x82 and len(value) >= 5:
            return int.from_bytes(value[2:4], "big"), value[4]
        at += 2 + size
    raise SimDataError("the FCP has no record file descriptor")


def _address_end(tpdu: bytes, at: int) -> int:
    if at >= len(tpdu) or tpdu[at] > 20:
        raise SimDataError("address field missing or past 20 digits")
    return at + 2 + (tpdu[at] + 1) // 2


def _tpdu_extent(tpdu: bytes, submit: bool) -> int:
    """The TPDU's length from its own fields (TS 23.040 9.2.2.1, 9.2.2.2): a record pads with FF, not a length."""
    if submit:  # MR, DA, PID, DCS, VP (none, 1 or 7 octets by TP-VPF), UDL
        end = _address_end(tpdu, 2)
        head = end + 2 + {0: 0, 2: 1, 1: 7, 3: 7}[(tpdu[0] >> 3) & 0x03] + 1
    else:  # OA, PID, DCS, SCTS, UDL
        end = _address_end(tpdu, 1)
        head = end + 2 + 7 + 1
    if head > len(tpdu):
        raise SimDataError("TPDU ends inside its header")
    dcs, udl = tpdu[end + 1], tpdu[head - 1]
    septets = dcs_alphabet(dcs) is Alphabet.GSM7 and not dcs_compressed(dcs)
    return head + ((udl * 7 + 7) // 8 if septets else udl)


def _scts_text(when: datetime) -> str:
    """27.005 3.1 <scts> without its quotes: "yy/MM/dd,hh:mm:ss±zz", zz in quarters of an hour."""
    quarters = int((when.utcoffset() or timedelta(0)).total_seconds() // 900)
    return f"{when:%y/%m/%d,%H:%M:%S}{'-' if quarters < 0 else '+'}{abs(quarters):02d}"


def _scts_parse(text: str) -> datetime:
    found = _SCTS.match(text)
    if not found:
        raise RecordUnfit(f'time stamp {text!r} is not "yy/MM/dd,hh:mm:ss±zz"')
    yy, mo, dd, hh, mi, ss, sign, zz = found.groups()
    try:
        zone = timezone(timedelta(minutes=15 * int(zz) * (-1 if sign == "-" else 1)))
        return datetime(2000 + int(yy), int(mo), int(dd), int(hh), int(mi), int(ss), tzinfo=zone)
    except ValueError as exc:
        raise RecordUnfit(f"time stamp {text!r}: {exc}") from None


def decode_sms_record(record: bytes) -> Message | None:
    """One EF_SMS record -> the message (None for a free record, status b1 0). SimDataError for a used record that
    holds no message the sync can carry as text (bad fields, 8-bit data): the sync leaves such a record alone."""
    if not record or not record[0] & 0x01:
        return None
    status = _STATUS_OF_OCTET[record[0] & 0x07]
    body = record[1:]
    try:
        _, rest = decode_sca(body)
        submit = status in (MessageStatus.STO_SENT, MessageStatus.STO_UNSENT)
        tpdu = decode_tpdu(rest[: _tpdu_extent(rest, submit)])
    except (SmsPduError, IndexError) as exc:
        raise SimDataError(f"not a message: {exc}") from None
    if isinstance(tpdu, SmsDeliver) and not submit:
        address, stamp = str(tpdu.originator), _scts_text(tpdu.scts)
    elif isinstance(tpdu, SmsSubmit) and submit:
        address, stamp = str(tpdu.destination), ""  # an SMS-SUBMIT carries no time stamp
    else:
        raise SimDataError(f"a {type(tpdu).__name__} with status {status.value}")
    if tpdu.text is None:
        raise SimDataError("8-bit data or compressed text, not a text message")
    return Message(status, address, tpdu.text, stamp)


def encode_sms_record(message: Message) -> bytes:
    """The EF_SMS record of `message`: status, no SC address (00: the ME's own), the SMS-DELIVER of a received one
    or the SMS-SUBMIT of a stored one, FF to 176 octets. RecordUnfit for what one record cannot hold."""
    try:
        if message.status in (MessageStatus.STO_SENT, MessageStatus.STO_UNSENT):
            address = Address.parse(message.address) if message.address else Address("")
            parts: list[SmsDeliver] | list[SmsSubmit] = SmsSubmit.for_text(address, message.text)
        else:
            when = _scts_parse(message.timestamp)
            parts = SmsDeliver.for_text(message.address, message.text, when)
        if len(parts) != 1:
            raise RecordUnfit(f"a text of {len(parts)} messages does not fit one record")
        body = bytes((STATUS_OCTET[message.status],)) + encode_sca(None) + parts[0].encode()
    except SmsPduError as exc:
        raise RecordUnfit(exc.reason) from None
    if len(body) > SMS_RECORD:
        raise RecordUnfit(f"{len(body)} octets do not fit a {SMS_RECORD}-octet record")
    return body.ljust(SMS_RECORD, b"\xff")


def with_status(record: bytes, status: MessageStatus) -> bytes:
    """The same record with another status (a message read): its SC address and TPDU kept byte for byte."""
    return bytes((STATUS_OCTET[status],)) + record[1:]


def sim_form(message: Message) -> Message | None:
    """What the SIM gives back for `message` written there (an SMS-SUBMIT loses its time stamp), None when it
    cannot be written."""
    try:
        return decode_sms_record(encode_sms_record(message))
    except (RecordUnfit, SimDataError):
        return None
