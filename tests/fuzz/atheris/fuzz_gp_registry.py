"""atheris target: remote GP commands (uicc/gp_registry.py GpRegistry.process) as length-prefixed APDUs."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    bytes.fromhex("1680e602001007a0000000871001000000000d80e8800008c4064f04a0000000"),
]


def test_one_input(data: bytes) -> None:
    targets.gp_apdus(targets.records_of(data))


if __name__ == "__main__":
    main(test_one_input, SEEDS)
