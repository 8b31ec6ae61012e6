"""atheris target: BER-TLV and COMPREHENSION-TLV decoding (uicc/tlv.py)."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    bytes.fromhex("8103014001820281820500350103390205783c030200c8"),
]


def test_one_input(data: bytes) -> None:
    targets.tlv(data)


if __name__ == "__main__":
    main(test_one_input, SEEDS)
