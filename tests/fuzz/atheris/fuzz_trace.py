"""atheris target: trace JSONL lines and files (trace/events.py TraceEvent.from_json, trace/reader.py parse_lines and read_file)."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    b'{"t": 1.5, "src": "cp", "dst": "uicc", "layer": "apdu", "kind": "apdu.command", "summary": "x", "hex": "00"}\n',
]


def test_one_input(data: bytes) -> None:
    targets.trace_line(data.decode("utf-8", "replace"))
    targets.trace_file(data)


if __name__ == "__main__":
    main(test_one_input, SEEDS)
