"""What every atheris target shares: seeding its corpus folder, and starting libFuzzer on `test_one_input`.

libFuzzer's own -timeout (per input) bounds the work of one input here, as hypothesis' deadline and
tests/fuzz/_settings.bounded do under pytest (both use SIGALRM, so the targets do not call `bounded`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import atheris


def main(test_one_input: Callable[[bytes], None], seeds: Sequence[bytes] = ()) -> None:
    """Writes `seeds` into the corpus folder (the first argument that is not a -flag) when it is empty, then
    fuzzes until libFuzzer's -max_total_time or -runs is reached or an input fails."""
    folders = [Path(arg) for arg in sys.argv[1:] if not arg.startswith("-")]
    if folders:
        folders[0].mkdir(parents=True, exist_ok=True)
        if not any(folders[0].iterdir()):
            for number, seed in enumerate(seeds):
                (folders[0] / f"seed-{number}").write_bytes(seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
