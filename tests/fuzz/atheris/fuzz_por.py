"""atheris target: PoR response packets as the OTA platform reads them (uicc/ota_trigger.py parse_por)."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    bytes.fromhex("027100000e0ab0001100000000000000016132"),
]


def test_one_input(data: bytes) -> None:
    targets.por(data)


if __name__ == "__main__":
    main(test_one_input, SEEDS)
