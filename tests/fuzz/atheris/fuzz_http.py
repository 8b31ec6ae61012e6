"""atheris target: HTTP/1.1 over h11 as the card's admin client (uicc/admin_http.py) and the OTA server's connection
(ota/http_connection.py) read it; the first byte's top bit picks the server."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets, targets_http

from tests.fuzz.atheris._run import main

SEEDS = [
    b"\x80POST /server/adminagent HTTP/1.1\r\nContent-Length: 2\r\n\r\nok",
    b"\x00HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
]


def test_one_input(data: bytes) -> None:
    if data[:1] and data[0] & 0x80:
        targets_http.server_connection(targets.chunks_of(data))
    else:
        targets_http.admin_client(targets.chunks_of(data))


if __name__ == "__main__":
    main(test_one_input, SEEDS)
