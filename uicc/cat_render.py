"""What `bipsim decode` reads and how it shows it (docs/protocols.md, "Decoding what traces show").

Input forms, told apart by `decode_input(data, "auto")` in this order:

- a bare status word, e.g. '90 00', '91 0F', '6C 12' (ISO/IEC 7816-4 section 5.1.3, TS 102 221 section 10.2);
- a BER-TLV CAT message: a proactive command ('D0') or an envelope ('D1'..'D7') (TS 102 223 section 6, 7), or the
  R-APDU of a FETCH: the proactive command followed by its status word;
- a C-APDU (TS 102 221 section 10.1): TERMINAL PROFILE, FETCH, TERMINAL RESPONSE, ENVELOPE with the CAT message inside,
  or any other instruction of TS 102 221 table 10.5 (SELECT, READ BINARY, MANAGE CHANNEL, GET DATA...); a FETCH or
  GET RESPONSE header may be followed by the card's answer and status word;
- a terminal response in simple-TLV (command details first, TS 102 223 section 6.8);
- SMS user data holding a secured packet, or an SMS-DELIVER TPDU (3GPP TS 23.040, TS 31.115; uicc/sms_render.py);
- any other data followed by a status word: an R-APDU.

The JSON of a CAT message keeps the shape of docs/protocols.md (`to_json`), with the names of values added beside the
numbers (uicc/cat_names.py); C-APDUs add an `apdu` object, R-APDUs a `status_word` object. The tree is for people.
Every malformed input raises TlvError (offset into the whole input, and the rule), never anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bipsim.uicc.apdu_names import (
    CAT_INSTRUCTIONS,
    GET_DATA_TAGS,
    INSTRUCTIONS,
    KNOWN_AIDS,
    CommandApdu,
    StatusWord,
    is_known_class,
    is_status_word,
    looks_like_command,
    parse_command,
)
from bipsim.uicc.applets.ara_m import describe_response
from bipsim.uicc.cat import (
    CatMessage,
    Envelope,
    EnvelopeTag,
    ProactiveCommand,
    TerminalResponse,
    decode_any,
    decode_envelope,
    decode_proactive,
    decode_terminal_response,
    device_name,
)
from bipsim.uicc.cat_names import ENVELOPE_TAGS, TIME_UNITS, name_of, object_names, qualifier_name
from bipsim.uicc.sms_render import (
    decode_tpdu,
    decode_user_data,
    looks_like_secured_user_data,
    looks_like_tpdu,
)
from bipsim.uicc.tlv import TlvError, decode_length

# The kinds `decode_as` accepts (it answers a CAT message); `bipsim decode --as` takes INPUT_KINDS
KINDS = ("proactive", "terminal_response", "envelope", "apdu", "auto")
INPUT_KINDS = ("auto", "proactive", "terminal_response", "envelope", "tlv", "apdu", "rapdu", "sms")

_BER_CAT_TAGS = frozenset({0xD0} | {t.value for t in EnvelopeTag})
_ANSWERED = frozenset({0x12, 0xC0})  # FETCH, GET RESPONSE: a trace may show the header, the answer and its SW

# TS 102 221 section 11.1.1.2 SELECT P1, section 11.1.17 MANAGE CHANNEL P1 (Wireshark's chan_op_vals)
_SELECT_P1 = {
    0x00: "select by file identifier",
    0x04: "select by DF name (AID)",
    0x08: "select by path from MF",
    0x09: "select by path from current DF",
}
_MANAGE_CHANNEL_P1 = {0x00: "Open Channel", 0x80: "Close Channel"}
# File identifiers of TS 102 221 and TS 31.102 (a few; Wireshark's gsm_sim mf_dfs table names them so)
_FILES = {
    0x3F00: "MF",
    0x7FFF: "ADF",
    0x2F00: "EF.DIR",
    0x2FE2: "EF.ICCID",
    0x2F05: "EF.ELP",
    0x6F07: "EF.IMSI",
    0x6F38: "EF.UST",
    0x6FAD: "EF.AD",
    0x6F7E: "EF.LOCI",
    0x6F73: "EF.PSLOCI",
}


@dataclass(frozen=True)
class Decoded:
    """One decoded input. `form`: "cat" (a bare CAT message), "command_apdu", "response_apdu", "sms_tpdu" or
    "sms_user_data". `message` is the CAT message inside, if any; `sms` the decoded SMS fields, if any."""

    form: str
    message: CatMessage | None = None
    command: CommandApdu | None = None
    status: StatusWord | None = None
    data: bytes = b""
    sms: dict[str, Any] | None = None


def _shifted(error: TlvError, by: int) -> TlvError:
    return TlvError(error.offset + by, error.rule)


def _cat(data: bytes, offset: int, decoder: Any = decode_any) -> CatMessage:
    try:
        message: CatMessage = decoder(data)
    except TlvError as exc:
        raise _shifted(exc, offset) from exc
    return message


def _response(data: bytes) -> Decoded:
    """An R-APDU: data (maybe none) and the status word."""
    if len(data) < 2:
        raise TlvError(len(data), "an R-APDU needs at least its two status bytes")
    sw1, sw2 = data[-2], data[-1]
    if not is_status_word(sw1, sw2):
        raise TlvError(len(data) - 2, f"SW1 0x{sw1:02X} is not a status word ('61'..'6F', '90'..'9F')")
    body, status = data[:-2], StatusWord(sw1, sw2)
    if body[:1] and body[0] in _BER_CAT_TAGS:
        return Decoded("response_apdu", _cat(body, 0), status=status, data=body)
    if looks_like_secured_user_data(body):
        return Decoded("response_apdu", status=status, data=body, sms=decode_user_data(body))
    return Decoded("response_apdu", status=status, data=body)


def _command(data: bytes) -> Decoded:
    """A C-APDU; for a CAT instruction the message inside. A FETCH or GET RESPONSE may carry its answer and SW."""
    if len(data) > 5 and data[1] in _ANSWERED and len(data) == 5 + data[4] + 2:
        command = CommandApdu(data[0], data[1], data[2], data[3], None, b"", data[4])
        try:
            answer = _response(data[5:])
        except TlvError as exc:
            raise _shifted(exc, 5) from exc
        if (
            answer.message is not None
            and data[1] == 0x12
            and not isinstance(answer.message, ProactiveCommand)
        ):
            raise TlvError(5, "a FETCH answers a proactive command ('D0')")
        return Decoded("command_apdu", answer.message, command, answer.status, answer.data, answer.sms)
    command = parse_command(data)
    message: CatMessage | None = None
    if data[0] & 0x80 or data[0] == 0xA0:
        if command.ins == 0x14:
            message = _cat(command.data, 5, decode_terminal_response)
        elif command.ins == 0xC2:
            message = _cat(command.data, 5, decode_envelope)
    return Decoded("command_apdu", message, command, data=command.data)


def _fits_packet(user_data: bytes) -> bool:
    """Whether secured-packet user data ends where its CPL/RPL says."""
    at = 1 + user_data[0]
    return (
        len(user_data) >= at + 2 and int.from_bytes(user_data[at : at + 2], "big") == len(user_data) - at - 2
    )


def _ber_extent(data: bytes) -> int | None:
    """Where the BER-TLV starting at data[0] ends, or None when its length field cannot be read."""
    try:
        length, start = decode_length(data, 1, len(data))
    except TlvError:
        return None
    return start + length


def _auto(data: bytes) -> Decoded:
    if not data:
        raise TlvError(0, "empty input")
    if len(data) == 2 and is_status_word(data[0], data[1]):
        return Decoded("response_apdu", status=StatusWord(data[0], data[1]))
    if data[0] in _BER_CAT_TAGS:
        if _ber_extent(data) == len(data) - 2 and is_status_word(data[-2], data[-1]):
            return _response(data)
        return Decoded("cat", _cat(data, 0))
    if len(data) > 5 and data[1] in _ANSWERED and data[0] & 0x80 and len(data) == 5 + data[4] + 2:
        if is_status_word(data[-2], data[-1]):
            return _command(data)
    if len(data) >= 5 and data[0] in (0x80, 0xA0) and data[1] in CAT_INSTRUCTIONS or looks_like_command(data):
        return _command(data)
    if data[0] in (0x01, 0x81):
        return Decoded("cat", _cat(data, 0, decode_terminal_response))
    if looks_like_secured_user_data(data) and _fits_packet(data):
        return Decoded("sms_user_data", data=data, sms=decode_user_data(data))
    if looks_like_tpdu(data):
        return Decoded("sms_tpdu", data=data, sms=decode_tpdu(data))
    if len(data) > 2 and is_status_word(data[-2], data[-1]):
        return _response(data)
    if len(data) >= 4 and is_known_class(data[0]) and data[1] in INSTRUCTIONS:
        return _command(data)  # a C-APDU whose lengths do not fit: say which
    return Decoded("cat", _cat(data, 0, decode_terminal_response))


def decode_input(data: bytes, kind: str = "auto") -> Decoded:
    """Decodes `data` as `kind` (one of INPUT_KINDS). Raises TlvError, and only TlvError, for malformed input."""
    if kind == "auto":
        return _auto(data)
    if not data:
        raise TlvError(0, "empty input")
    if kind == "proactive":
        return Decoded("cat", decode_proactive(data))
    if kind == "terminal_response":
        return Decoded("cat", decode_terminal_response(data))
    if kind == "envelope":
        return Decoded("cat", decode_envelope(data))
    if kind == "tlv":
        return Decoded("cat", decode_any(data))
    if kind == "apdu":
        return _command(data)
    if kind == "rapdu":
        return _response(data)
    if kind == "sms":
        if looks_like_secured_user_data(data):
            return Decoded("sms_user_data", data=data, sms=decode_user_data(data))
        return Decoded("sms_tpdu", data=data, sms=decode_tpdu(data))
    raise ValueError(f"unknown kind {kind!r}")


def decode_as(data: bytes, kind: str) -> CatMessage:
    """The CAT message in `data` read as `kind` (one of KINDS); `apdu` takes a command APDU (a FETCH header may be
    followed by the proactive command and its status word). Raises TlvError when there is none."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    decoded = decode_input(data, kind)
    if decoded.message is None:
        if decoded.command is not None:
            raise TlvError(1, f"INS 0x{decoded.command.ins:02X} does not carry a CAT message")
        raise TlvError(0, "no CAT message in these bytes")
    return decoded.message


def decode_apdu(data: bytes) -> CatMessage:
    """A CAT command APDU (TS 102 221 section 10.1.2) to the CAT message inside."""
    return decode_as(data, "apdu")


def kind_of(message: CatMessage) -> str:
    if isinstance(message, ProactiveCommand):
        return "proactive_command"
    if isinstance(message, TerminalResponse):
        return "terminal_response"
    return "envelope"


def _tpdu(message: CatMessage) -> dict[str, Any] | None:
    """The fields of the message's SMS TPDU object (TS 102 223 section 8.13), when it reads as one."""
    item = message.get(0x0B)
    if item is None or not item.value:
        return None
    try:
        return decode_tpdu(item.value)
    except TlvError:
        return None


def to_json(message: CatMessage) -> dict[str, Any]:
    """The JSON of a CAT message (docs/protocols.md, "Decoding what traces show"), names beside the numbers."""
    out: dict[str, Any] = {"kind": kind_of(message)}
    if isinstance(message, Envelope):
        out["envelope_tag"] = message.tag
        out["envelope_tag_name"] = name_of(ENVELOPE_TAGS, message.tag)
    if isinstance(message, ProactiveCommand | TerminalResponse):
        out["command"] = {
            "number": message.number,
            "type": message.type,
            "type_name": message.type_name,
            "qualifier": message.qualifier,
            "qualifier_name": qualifier_name(message.type, message.qualifier),
        }
    source, destination = message.devices
    out["device"] = {"source": device_name(source), "destination": device_name(destination)}
    out["objects"] = [
        {
            "name": item.name,
            "tag": item.tag,
            "cr": item.cr,
            "fields": object_names(item.tag, item.fields()),
        }
        for item in message.objects
    ]
    tpdu = _tpdu(message)
    if tpdu is not None:
        out["sms_tpdu"] = tpdu
    return out


def _apdu_json(command: CommandApdu) -> dict[str, Any]:
    out = command.to_json()
    details = _command_details(command)
    if details:
        out["details"] = details
    return out


def _command_details(command: CommandApdu) -> dict[str, Any]:
    """What P1/P2/data mean for the instructions where that is fixed (TS 102 221 section 11.1)."""
    if command.ins == 0xA4:
        out: dict[str, Any] = {"p1": command.p1, "p1_name": _SELECT_P1.get(command.p1, "")}
        if command.p1 == 0x04:
            out["aid"] = command.data.hex().upper()
            if out["aid"] in KNOWN_AIDS:
                out["aid_name"] = KNOWN_AIDS[out["aid"]]
        elif len(command.data) % 2 == 0 and command.data:
            ids = [int.from_bytes(command.data[i : i + 2], "big") for i in range(0, len(command.data), 2)]
            out["files"] = [f"{fid:04X}" + (f" ({_FILES[fid]})" if fid in _FILES else "") for fid in ids]
        return out
    if command.ins in (0xB0, 0xD6) and not command.p1 & 0x80:
        return {"offset": command.p1 << 8 | command.p2}
    if command.ins in (0xB2, 0xDC):
        return {"record": command.p1}
    if command.ins == 0x70:
        return {"p1": command.p1, "p1_name": _MANAGE_CHANNEL_P1.get(command.p1, ""), "channel": command.p2}
    # GET DATA of the ARA-M's tags (GPD_SPE_013 section 5.1)
    if command.ins == 0xCA and (command.p1 << 8 | command.p2) in GET_DATA_TAGS:
        tag = command.p1 << 8 | command.p2
        return {"tag": f"{tag:04X}", "tag_name": GET_DATA_TAGS[tag]}
    if command.ins in (0x12, 0xC0) and command.le is not None:
        return {"length": command.le}
    return {}


def render_json(decoded: Decoded) -> dict[str, Any]:
    """The JSON `bipsim decode --json` prints (docs/protocols.md)."""
    if decoded.message is not None:
        out = to_json(decoded.message)
    elif decoded.form == "sms_tpdu":
        return {"kind": "sms_tpdu", "tpdu": decoded.sms}
    elif decoded.form == "sms_user_data":
        return {"kind": "sms_user_data", "user_data": decoded.sms}
    elif decoded.form == "command_apdu":
        out = {"kind": "command_apdu"}
    else:
        out = {"kind": decoded.form, "data_hex": decoded.data.hex().upper()}
        if decoded.sms is not None:
            out["user_data"] = decoded.sms
    if decoded.command is not None:
        out["apdu"] = _apdu_json(decoded.command)
    if decoded.status is not None:
        out["status_word"] = decoded.status.to_json()
        rules = describe_response(decoded.data) if decoded.message is None else None
        if rules is not None:
            out["access_rules"] = rules
    return out


def title(message: CatMessage) -> str:
    if isinstance(message, ProactiveCommand):
        return f"PROACTIVE COMMAND: {message.type_name}"
    if isinstance(message, TerminalResponse):
        general, _ = message.result
        return f"TERMINAL RESPONSE: {message.type_name} (result 0x{general:02X})"
    assert isinstance(message, Envelope)
    try:
        name = EnvelopeTag(message.tag).name.replace("_", " ")
    except ValueError:
        name = f"0x{message.tag:02X}"
    return f"ENVELOPE: {name}"


# Fields the specifications write in hexadecimal
_HEX = frozenset(
    {"general", "additional_information", "dcs", "tp_dcs", "tp_pid", "ton_npi", "iei", "kic", "kid", "status",
     "further_info", "events", "cla", "ins", "p1", "p2", "envelope_tag"}
)  # fmt: skip


def _value(key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        return str(value)
    return f"0x{value:02X}" if key in _HEX else str(value)


def _field_lines(fields: dict[str, Any], indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    for key, value in fields.items():
        if (
            key.endswith("_name")
            and key[:-5] in fields
            or key.endswith("_names")
            and key[:-6] + "s" in fields
        ):
            continue  # shown beside its value
        if key.endswith("_hex") and value == "":
            continue
        label = key.replace("_", " ")
        if isinstance(value, dict):
            lines.append(f"{pad}{label}:")
            lines.extend(_field_lines(value, indent + 2))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{label}:")
            for item in value:
                sub = _field_lines(item, 0)
                lines.append(f"{pad}  - " + "; ".join(sub))
        elif isinstance(value, list):
            names = fields.get(key[:-1] + "_names")
            shown = [
                _value(key, v) + (f" ({names[i]})" if isinstance(names, list) and i < len(names) else "")
                for i, v in enumerate(value)
            ]
            lines.append(f"{pad}{label}: {', '.join(shown)}")
        else:
            name = fields.get(key + "_name")
            lines.append(f"{pad}{label}: {_value(key, value)}" + (f" ({name})" if name else ""))
    return lines


def to_tree(message: CatMessage) -> str:
    """An indented tree with the specification's names, the raw value beside each name."""
    data = to_json(message)
    lines = [title(message)]
    if "command" in data:
        c = data["command"]
        qualifier = f" ({c['qualifier_name']})" if c["qualifier_name"] else ""
        lines.append(
            f"  command details: number {c['number']}, type 0x{c['type']:02X} ({c['type_name']}), "
            f"qualifier 0x{c['qualifier']:02X}{qualifier}"
        )
    lines.append(f"  device identities: {data['device']['source']} -> {data['device']['destination']}")
    for item in data["objects"]:
        cr = " (CR)" if item["cr"] else ""
        lines.append(f"  {item['name'].replace('_', ' ')}{cr}:")
        fields = item["fields"]
        if item["tag"] == 0x04 and "unit" in fields:  # duration: the unit's name in the tree only (8.8)
            fields = {**fields, "unit_name": name_of(TIME_UNITS, fields["unit"])}
        lines.extend(_field_lines(fields, 4))
        if item["tag"] == 0x0B and "sms_tpdu" in data:
            lines.append(f"    {data['sms_tpdu']['tp_mti_name']}:")
            lines.extend(_field_lines(data["sms_tpdu"], 6))
    return "\n".join(lines) + "\n"


def render_tree(decoded: Decoded) -> str:
    """The tree `bipsim decode` prints: the APDU header or status word, then what the data holds."""
    lines: list[str] = []
    if decoded.command is not None:
        c = decoded.command
        lines.append(f"COMMAND APDU: {c.name}")
        lines.append(f"  {c.header_line()}")
        details = _command_details(c)
        lines.extend(_field_lines(details, 2))
        if decoded.message is None and c.data and not {"aid", "files"} & set(details):
            lines.append(f"  data: {c.data.hex().upper()}")
    if decoded.status is not None:
        s = decoded.status
        lines.append(f"RESPONSE APDU: status word {s.value:04X} ({s.group}: {s.name})")
        if decoded.message is None and decoded.data and decoded.sms is None:
            lines.append(f"  data ({len(decoded.data)} bytes): {decoded.data.hex().upper()}")
            rules = describe_response(decoded.data)
            if rules is not None:  # the ARA-M's GET DATA answer (GPD_SPE_013 section 5.1)
                lines.append("  access rules (ARA-M):")
                lines.extend(_field_lines(rules, 4))
    text = "\n".join(lines) + "\n" if lines else ""
    if decoded.message is not None:
        return text + to_tree(decoded.message)
    if decoded.form == "sms_tpdu" and decoded.sms is not None:
        return (
            text
            + "SMS TPDU: "
            + str(decoded.sms["tp_mti_name"])
            + "\n"
            + "\n".join(_field_lines(decoded.sms, 2))
            + "\n"
        )
    if decoded.sms is not None:
        return text + "SMS USER DATA (secured packet)\n" + "\n".join(_field_lines(decoded.sms, 2)) + "\n"
    return text


def headline(decoded: Decoded) -> str:
    """One line: what the bytes are."""
    if decoded.message is not None:
        text = title(decoded.message)
    elif decoded.command is not None:
        text = decoded.command.name
    elif decoded.form == "sms_tpdu" and decoded.sms is not None:
        text = str(decoded.sms["tp_mti_name"])
    elif decoded.sms is not None:
        text = (
            "secured packet"
            if decoded.status is None
            else f"response data ({len(decoded.data)} bytes, secured packet)"
        )
    elif decoded.data:
        text = f"response data ({len(decoded.data)} bytes)"
    else:
        text = ""
    if decoded.status is not None:
        sw = f"status word {decoded.status.value:04X}"
        text = f"{text}, {sw}" if text else f"{sw}: {decoded.status.name}"
    return text


def describe_bytes(data: bytes) -> str:
    """One line: what these card bytes are (used by trace diff and replay). Raises ValueError when undecodable."""
    return headline(decode_input(data, "auto"))
