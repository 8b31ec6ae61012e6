"""atheris target: V.250 response lines, the DTE side (link/at_syntax.py ResponseSplitter)."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    b"\x03\r\nOK\r\n+CME ERROR: 50\r\n",
]


def test_one_input(data: bytes) -> None:
    targets.response_lines(targets.chunks_of(data), max_line=64)


if __name__ == "__main__":
    main(test_one_input, SEEDS)
