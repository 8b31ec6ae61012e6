"""atheris target: the V.250 DCE over a stream (link/at_server.py AtServer): basic commands, S registers, +CMEE."""

from __future__ import annotations

import atheris
import trio

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    b"\x00ATE0V0Q0S3=13;+CMEE=2\rAT+X\r",
    b"\x05ATS3=10\nAT\n",
]


def test_one_input(data: bytes) -> None:
    trio.run(targets.at_server_session, targets.chunks_of(data))


if __name__ == "__main__":
    main(test_one_input, SEEDS)
