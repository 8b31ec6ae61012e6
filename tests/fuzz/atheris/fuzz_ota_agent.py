"""atheris target: the card's OTA agent without TLS (uicc/ota_agent.py) on a server's answers, remote APDU scripts included (length-prefixed reads)."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets, targets_http

from tests.fuzz.atheris._run import main

SEEDS = [
    b"\x7fHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n\xaa\x07\x22\x05\x00\xa4\x00\x04\x00",
]


def test_one_input(data: bytes) -> None:
    targets_http.ota_agent(targets.records_of(data))


if __name__ == "__main__":
    main(test_one_input, SEEDS)
