"""atheris target: 27.010 frames (link/cmux_frame.py FrameParser); the first byte sets the read size, its top bit pause_on_control."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    bytes.fromhex("01f903ef09414243afd4f9f9073f01dcf9"),
    b"\x40\xf9\x03\xef\xfe\xff" + b"\xf9" * 64,
]


def test_one_input(data: bytes) -> None:
    targets.cmux_frames(targets.chunks_of(data), pause_on_control=bool(data[:1] and data[0] & 0x80))


if __name__ == "__main__":
    main(test_one_input, SEEDS)
