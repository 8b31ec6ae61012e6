"""CAT decode throughput: simple objects per second through the full typed decode (bipsim.uicc.cat.decode_any:
BER-TLV envelope, COMPREHENSION-TLV objects with tag/CR/form, command details, device identities and the message
class), against the floor of Python parsing: a bare tag/length/value splitter written here, run on the same
published vectors (tests/cat_vectors.py) in the same process. Prints one JSON line with both rates and the ratio.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bipsim.uicc.cat import decode_any  # noqa: E402
from tests.cat_vectors import VECTORS  # noqa: E402

WINDOW = 0.5  # seconds per timed window
ROUNDS = 6  # windows of each, interleaved so that load on the machine hits both alike


def bare_split(data: bytes) -> list[tuple[int, bytes]]:
    """Tag/length/value splitting and nothing else: one outer BER-TLV when the first byte is D0..D7, then 1-byte
    or 7F-prefixed tags with 1-, 2- or 3-byte lengths. No checks, no objects, no names."""
    pos, end = 0, len(data)
    if 0xD0 <= data[0] <= 0xD7:
        first = data[1]
        pos = 2 if first < 0x80 else 2 + (first - 0x80)
    out = []
    while pos < end:
        tag = data[pos]
        if tag == 0x7F:
            tag = (data[pos + 1] << 8) | data[pos + 2]
            pos += 3
        else:
            pos += 1
        length = data[pos]
        if length < 0x80:
            pos += 1
        else:
            size = length - 0x80
            length = int.from_bytes(data[pos + 1 : pos + 1 + size], "big")
            pos += 1 + size
        out.append((tag, data[pos : pos + length]))
        pos += length
    return out


def typed_objects(data: bytes) -> int:
    return len(decode_any(data).items)


def bare_objects(data: bytes) -> int:
    return len(bare_split(data))


def rate(count: Callable[[bytes], int], corpus: list[bytes]) -> float:
    """Objects per second over whole passes of the corpus during one timed window."""
    objects, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < WINDOW:
        for data in corpus:
            objects += count(data)
    return objects / elapsed


def main() -> None:
    corpus = [vector.data for vector in VECTORS]
    # both must see the same objects, or the comparison means nothing
    assert [bare_objects(d) for d in corpus] == [typed_objects(d) for d in corpus]
    typed = bare = 0.0
    for _ in range(ROUNDS):  # best window of each
        typed = max(typed, rate(typed_objects, corpus))
        bare = max(bare, rate(bare_objects, corpus))
    print(
        json.dumps(
            {
                "bench": "decode",
                "vectors": len(corpus),
                "objects_per_pass": sum(bare_objects(d) for d in corpus),
                "typed_objects_per_s": round(typed),
                "bare_split_objects_per_s": round(bare),
                "ratio": round(typed / bare, 3),
                "target_ratio": 0.2,
            }
        )
    )


if __name__ == "__main__":
    main()
