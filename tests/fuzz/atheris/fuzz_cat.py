"""atheris target: CAT proactive commands, terminal responses and envelopes (uicc/cat.py)."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    bytes.fromhex("d01a8103014001820281823501033902057839030200c83e0521c0a80001"),
    bytes.fromhex("810301400182028281830100"),
    bytes.fromhex("d60e990109820282813802810137010a"),
]


def test_one_input(data: bytes) -> None:
    targets.cat_message(data)


if __name__ == "__main__":
    main(test_one_input, SEEDS)
