"""atheris target: the card's TLS-PSK client on arbitrary server bytes (uicc/tls_psk_client.py)."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    bytes.fromhex("00160303002d020000260303" + "00" * 32 + "0000ae00" + "0e000000"),
]


def test_one_input(data: bytes) -> None:
    targets.tls_server_bytes(targets.chunks_of(data))


if __name__ == "__main__":
    main(test_one_input, SEEDS)
