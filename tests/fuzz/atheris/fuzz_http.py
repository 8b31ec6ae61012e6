"""atheris target: HTTP/1.1 framing as the card's admin client and the OTA server read it (uicc/http11.py MessageParser); the first byte's top bit: requests."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    b"\x80POST /server/adminagent HTTP/1.1\r\nContent-Length: 2\r\n\r\nok",
    b"\x00HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
]


def test_one_input(data: bytes) -> None:
    targets.http_messages(targets.chunks_of(data), requests=bool(data[:1] and data[0] & 0x80))


if __name__ == "__main__":
    main(test_one_input, SEEDS)
