"""Remote APDU scripts of GlobalPlatform Amendment B (the HTTP admin body) and ETSI TS 102 226, both ends.

Expanded format (TS 102 226 section 5.2): a command script is BER-TLV 'AE' (indefinite length 0x80, ended by
00 00) or 'AA' (definite length), holding C-APDU TLVs '22'; a response script is 'AF' / 'AB' holding R-APDU TLVs
'23' (response data followed by SW1 SW2). Compact format (section 5.1): the command script is the C-APDUs one after
another (lengths from their Lc); the response is the number of commands executed, the last status word and the last
response data.
"""

from __future__ import annotations

from collections.abc import Sequence

from bipsim.uicc.tlv import TlvError, decode_ber_list, encode_length

C_APDU_TAG = 0x22
R_APDU_TAG = 0x23


class RemoteApduError(ValueError):
    pass


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes((tag,)) + encode_length(len(value)) + value


def encode_command_script(apdus: Sequence[bytes], *, expanded: bool = True, definite: bool = False) -> bytes:
    if not expanded:
        return b"".join(apdus)
    body = b"".join(_tlv(C_APDU_TAG, apdu) for apdu in apdus)
    if definite:
        return _tlv(0xAA, body)
    return b"\xae\x80" + body + b"\x00\x00"


def encode_response_script(
    responses: Sequence[bytes], *, expanded: bool = True, definite: bool = False
) -> bytes:
    if not expanded:
        if not responses:
            return b"\x00\x90\x00"
        last = responses[-1]
        return bytes((len(responses),)) + last[-2:] + last[:-2]
    body = b"".join(_tlv(R_APDU_TAG, response) for response in responses)
    if definite:
        return _tlv(0xAB, body)
    return b"\xaf\x80" + body + b"\x00\x00"


def _items(data: bytes, tags: tuple[int, int], inner: int) -> list[bytes]:
    if len(data) < 2 or data[0] not in tags:
        raise RemoteApduError(f"script must start with {tags[0]:02X} or {tags[1]:02X}")
    if data[1] == 0x80:  # indefinite length: contents end with the end-of-contents octets 00 00
        if data[-2:] != b"\x00\x00":
            raise RemoteApduError("indefinite-length script without its 00 00 end")
        body, offset = data, 2
        end = len(data) - 2
    else:
        try:
            outer = decode_ber_list(data)
        except TlvError as exc:
            raise RemoteApduError(f"malformed script: {exc}") from exc
        if len(outer) != 1:
            raise RemoteApduError("trailing data after the script")
        body, offset, end = outer[0].value, 0, len(outer[0].value)
    try:
        items = decode_ber_list(body, offset, end)
    except TlvError as exc:
        raise RemoteApduError(f"malformed script: {exc}") from exc
    out = []
    for item in items:
        if item.tag != inner:
            continue  # other TLVs (e.g. immediate action, error action) are not APDUs
        out.append(item.value)
    return out


def decode_command_script(data: bytes) -> list[bytes]:
    """The C-APDUs of a script in either format."""
    if data[:1] in (b"\xae", b"\xaa"):
        apdus = _items(data, (0xAE, 0xAA), C_APDU_TAG)
        if any(len(apdu) < 4 for apdu in apdus):
            raise RemoteApduError("a C-APDU needs at least 4 bytes")
        return apdus
    out = []
    i = 0
    while i < len(data):
        if len(data) - i < 4:
            raise RemoteApduError(f"compact script: {len(data) - i} stray bytes at offset {i}")
        if len(data) - i == 4:
            out.append(data[i:])
            break
        lc = data[i + 4]
        size = 5 + lc if len(data) - i >= 5 + lc and lc else 5
        out.append(data[i : i + size])
        i += size
    return out


def decode_response_script(data: bytes) -> list[bytes]:
    """The R-APDUs of a response script (compact: only the last one is carried)."""
    if data[:1] in (b"\xaf", b"\xab"):
        return _items(data, (0xAF, 0xAB), R_APDU_TAG)
    if len(data) < 3:
        raise RemoteApduError("compact response shorter than 3 bytes")
    return [data[3:] + data[1:3]]
