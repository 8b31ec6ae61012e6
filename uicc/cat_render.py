"""Presentations of decoded CAT messages: the JSON of PROTOCOL.md section 5, an indented tree for people, and a
one-line description for trace tools. Also decodes a whole command APDU (TERMINAL PROFILE, FETCH response data,
TERMINAL RESPONSE, ENVELOPE) to the CAT message inside (TS 102 221 section 10.1.2)."""

from __future__ import annotations

from typing import Any

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
from bipsim.uicc.tlv import TlvError

KINDS = ("proactive", "terminal_response", "envelope", "apdu", "auto")

# CAT instructions of TS 102 221 section 10.1.2 (class 80)
CAT_INSTRUCTIONS = {0x10: "TERMINAL PROFILE", 0x12: "FETCH", 0x14: "TERMINAL RESPONSE", 0xC2: "ENVELOPE"}


def decode_as(data: bytes, kind: str) -> CatMessage:
    """Decodes `data` as the given kind; `apdu` strips a command APDU header first."""
    if kind == "proactive":
        return decode_proactive(data)
    if kind == "terminal_response":
        return decode_terminal_response(data)
    if kind == "envelope":
        return decode_envelope(data)
    if kind == "apdu":
        return decode_apdu(data)
    if kind == "auto":
        if len(data) >= 5 and data[0] in (0x80, 0xA0) and data[1] in CAT_INSTRUCTIONS:
            return decode_apdu(data)
        return decode_any(data)
    raise ValueError(f"unknown kind {kind!r}")


def decode_apdu(data: bytes) -> CatMessage:
    """A CAT command APDU: CLA INS P1 P2 Lc + data. TERMINAL RESPONSE and ENVELOPE carry a CAT message;
    a FETCH response (data + SW) may be given as the proactive command followed by its status word."""
    if len(data) < 4:
        raise TlvError(0, "an APDU needs at least CLA INS P1 P2")
    ins = data[1]
    if ins not in CAT_INSTRUCTIONS:
        raise TlvError(1, f"INS 0x{ins:02X} does not carry a CAT message")
    if len(data) < 5:
        raise TlvError(4, "Lc missing")
    lc = data[4]
    if ins == 0x12:  # FETCH: P3 is Le; any data after the header is the response (plus SW)
        body = data[5:]
        if body[-2:-1] in (b"\x90", b"\x91") and len(body) == lc + 2:
            body = body[:-2]
        return decode_proactive(body)
    if 5 + lc != len(data):
        raise TlvError(4, f"Lc {lc} does not match the {len(data) - 5} data bytes")
    body = data[5:]
    if ins == 0x14:
        return decode_terminal_response(body)
    if ins == 0xC2:
        return decode_envelope(body)
    raise TlvError(1, "TERMINAL PROFILE carries a capability bitmap, not a CAT message")


def kind_of(message: CatMessage) -> str:
    if isinstance(message, ProactiveCommand):
        return "proactive_command"
    if isinstance(message, TerminalResponse):
        return "terminal_response"
    return "envelope"


def to_json(message: CatMessage) -> dict[str, Any]:
    """The shape of PROTOCOL.md section 5."""
    out: dict[str, Any] = {"kind": kind_of(message)}
    if isinstance(message, Envelope):
        out["envelope_tag"] = message.tag
    if isinstance(message, ProactiveCommand | TerminalResponse):
        out["command"] = {
            "number": message.number,
            "type": message.type,
            "type_name": message.type_name,
            "qualifier": message.qualifier,
        }
    source, destination = message.devices
    out["device"] = {"source": device_name(source), "destination": device_name(destination)}
    out["objects"] = [
        {"name": item.name, "tag": item.tag, "cr": item.cr, "fields": item.fields()}
        for item in message.objects
    ]
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


def to_tree(message: CatMessage) -> str:
    """An indented tree with the specification's names."""
    data = to_json(message)
    lines = [title(message)]
    if "command" in data:
        c = data["command"]
        lines.append(
            f"  command details: number {c['number']}, type 0x{c['type']:02X}, qualifier 0x{c['qualifier']:02X}"
        )
    lines.append(f"  device identities: {data['device']['source']} -> {data['device']['destination']}")
    for item in data["objects"]:
        cr = " (CR)" if item["cr"] else ""
        lines.append(f"  {item['name'].replace('_', ' ')}{cr}:")
        for key, value in item["fields"].items():
            lines.append(f"    {key}: {value}")
    return "\n".join(lines) + "\n"


def describe_bytes(data: bytes) -> str:
    """One line: what these card bytes are (used by trace diff and replay). Raises ValueError when undecodable."""
    if len(data) == 2:
        return f"status word {data.hex().upper()}"
    message = decode_as(data, "auto") if data[:1] not in (b"\x80", b"\xa0") else decode_apdu(data)
    return title(message)
