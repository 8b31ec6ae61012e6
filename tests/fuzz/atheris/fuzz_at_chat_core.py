"""atheris target: the V.250 DTE's matching rules (link/at_chat_core.py AtChatCore) on a DCE's bytes with time passing; the first byte of each read picks the step."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    b"\x00\x00AT+CEREG?\r\n+CEREG: 0,1\r\nOK\r\n",
    b'\x00\x03%NETPAR: 1,"a","b","c"\r\nOK\r\n',
]


def test_one_input(data: bytes) -> None:
    reads = targets.chunks_of(data)
    targets.at_chat_core([r[1:] for r in reads], [r[0] if r else 0 for r in reads])


if __name__ == "__main__":
    main(test_one_input, SEEDS)
