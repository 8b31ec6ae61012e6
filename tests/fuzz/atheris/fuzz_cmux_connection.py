"""atheris target: the 27.010 connection core (link/cmux_connection.py CmuxConnection) on a peer's bytes; the first byte picks the role."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    bytes.fromhex("0000f9033f01ccf9"),
    bytes.fromhex("0100f901ef07e30307f9f9"),
]


def test_one_input(data: bytes) -> None:
    targets.cmux_connection(targets.chunks_of(data[1:]), initiator=bool(data[:1] and data[0] & 1))


if __name__ == "__main__":
    main(test_one_input, SEEDS)
