"""atheris target: the card's TLS-PSK client after a good handshake: fuzzed plaintexts (length-prefixed records, content type first) protected as the server would."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    bytes.fromhex("00061768656c6c6f"),
    bytes.fromhex("0103150228"),
]


def test_one_input(data: bytes) -> None:
    suite = (0x00AE, 0x008C, 0x00A8)[data[0] % 3] if data else 0x00AE
    records = [(r[0], r[1:]) for r in targets.records_of(data[1:]) if r]
    targets.tls_protected_records(suite, records)


if __name__ == "__main__":
    main(test_one_input, SEEDS)
