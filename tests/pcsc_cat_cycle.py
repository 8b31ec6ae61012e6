"""A PC/SC client run as a subprocess by tests/test_card_tools.py (libpcsclite reads PCSCLITE_CSOCK_NAME once per
process): through pyscard, TERMINAL PROFILE, FETCH of the pending proactive command and its TERMINAL RESPONSE,
as a terminal does after power-on (TS 102 221 section 14.5, TS 102 223 section 6.2), with T=0 GET RESPONSE
handling (61 xx). Prints one JSON object: the status words and the fetched command."""

from __future__ import annotations

import json
import sys

from smartcard.System import readers

from bipsim.cp.card_driver import TERMINAL_PROFILE
from bipsim.uicc.cat import GeneralResult, TerminalResponse, decode_proactive


def main(reader_name: str) -> None:
    reader = next(r for r in readers() if str(r) == reader_name)
    connection = reader.createConnection()
    connection.connect()

    def transmit(apdu: bytes) -> tuple[bytes, int]:
        data, sw1, sw2 = connection.transmit(list(apdu))
        return bytes(data), sw1 << 8 | sw2

    out: dict[str, object] = {"atr": bytes(connection.getATR()).hex().upper()}
    _, sw = transmit(b"\x80\x10\x00\x00" + bytes((len(TERMINAL_PROFILE),)) + TERMINAL_PROFILE)
    out["terminal_profile"] = f"{sw:04X}"
    if sw >> 8 == 0x91:
        data, fetch_sw = transmit(bytes((0x80, 0x12, 0, 0, sw & 0xFF)))
        out["fetch"] = f"{fetch_sw:04X}"
        command = decode_proactive(data)
        out["command"] = command.type_name
        body = TerminalResponse.build(command, GeneralResult.OK).encode()
        _, tr_sw = transmit(b"\x80\x14\x00\x00" + bytes((len(body),)) + body)
        out["terminal_response"] = f"{tr_sw:04X}"
    connection.disconnect()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
