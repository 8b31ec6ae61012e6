"""atheris target: V.250 command lines, the DCE side (link/at_syntax.py LineAssembler, parse_line)."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    b'\x00AT+CMEE=1;%GETNET=1,3,"apn"\rATS3?\r',
    b"\x03ATE\xb2\rA/\r",
]


def test_one_input(data: bytes) -> None:
    targets.at_command_lines(targets.chunks_of(data))


if __name__ == "__main__":
    main(test_one_input, SEEDS)
