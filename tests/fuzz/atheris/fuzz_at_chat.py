"""atheris target: the V.250 DTE over a stream (link/at_chat.py AtChat) and the proxy dialect's %NETPAR/%WEBEVT lines."""

from __future__ import annotations

import atheris
import trio

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    b'\x00\r\n%NETPAR: 1,"apn","u","p"\r\n\r\nOK\r\n',
    b'\x07%WEBEVT: 1,"closed"\r\n+CME ERROR: 50\r\n',
]


def test_one_input(data: bytes) -> None:
    trio.run(targets.at_chat_session, targets.chunks_of(data))


if __name__ == "__main__":
    main(test_one_input, SEEDS)
