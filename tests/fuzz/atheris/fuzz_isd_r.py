"""atheris target: the eUICC's ISD-R (uicc/applets/isd_r.py) on ES10 requests in chained STORE DATA, as
tests/fuzz/targets_esim.py isd_r: each length-prefixed record is one request, its first byte choosing the block size
(low two bits: 255, 64, 7 or 1 bytes) and a damage to the chaining (the other bits)."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets, targets_esim

from tests.fuzz.atheris._run import main

SIZES = (255, 64, 7, 1)
SEEDS = [
    bytes.fromhex("0400BF20000701BF3E035C015A0400BF2D00"),
    bytes.fromhex("1400BF3111A00C5A0A984474560000214365F78101FF0403BF2800"),
]


def test_one_input(data: bytes) -> None:
    requests = [
        (record[1:], SIZES[record[0] & 3], record[0] >> 2) for record in targets.records_of(data) if record
    ]
    if requests:
        targets_esim.isd_r(requests[:6])


if __name__ == "__main__":
    main(test_one_input, SEEDS)
