"""atheris target: the proxy dialect on the AP's side (ap/proxy.py %GETNET/%WEBOPCH/%WEBCLCH behind its AtServer)."""

from __future__ import annotations

import atheris
import trio

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    b'\x00AT%GETNET=1,3,"internet"\rAT%WEBOPCH=1,"TCP","127.0.0.1",4443\rAT%WEBCLCH=1\r',
    b"\x05AT%GETNET=?\rAT%WEBOPCH=\r",
]


def test_one_input(data: bytes) -> None:
    trio.run(targets.ap_proxy_session, targets.chunks_of(data))


if __name__ == "__main__":
    main(test_one_input, SEEDS)
