"""atheris target: the card's APDU processor (uicc/card.py SimCard.process) on a sequence of C-APDUs (length-prefixed records)."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    bytes.fromhex("0700a40004023f000500c0000000098010000004ffffffff"),
]


def test_one_input(data: bytes) -> None:
    targets.card_apdus(targets.make_card(), targets.records_of(data))


if __name__ == "__main__":
    main(test_one_input, SEEDS)
