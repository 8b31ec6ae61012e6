"""Throughput of `bipsim pty-pair` against a socat pty pair on the same 1 MiB random transfer.

Prints one JSON line: both rates in MB/s and their ratio (bipsim / socat). Needs socat on PATH.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import shutil
import subprocess
import sys
import threading
import time

from bipsim.link.pty import set_raw

SIZE = 1 << 20
ROUNDS = 5


def transfer(a_path: str, b_path: str, payload: bytes) -> float:
    """Seconds to move payload from side A to side B (writer thread, reader here)."""
    a = os.open(a_path, os.O_RDWR | os.O_NOCTTY)
    b = os.open(b_path, os.O_RDWR | os.O_NOCTTY)
    set_raw(a)
    set_raw(b)

    def write() -> None:
        view = memoryview(payload)
        while view:
            view = view[os.write(a, view[:4096]) :]

    try:
        start = time.perf_counter()
        writer = threading.Thread(target=write)
        writer.start()
        got = 0
        while got < len(payload):
            if not select.select([b], [], [], 10)[0]:
                raise TimeoutError(f"stalled after {got} bytes")
            got += len(os.read(b, 65536))
        writer.join()
        return time.perf_counter() - start
    finally:
        os.close(a)
        os.close(b)


def best_rate(a_path: str, b_path: str, payload: bytes) -> float:
    return max(len(payload) / transfer(a_path, b_path, payload) for _ in range(ROUNDS)) / 1e6


def main() -> None:
    if shutil.which("socat") is None:
        sys.exit("bench_pty_pair: socat is not installed")
    payload = random.Random(0).randbytes(SIZE)
    ours = subprocess.Popen([sys.executable, "-m", "bipsim", "pty-pair"], stdout=subprocess.PIPE, text=True)
    socat = subprocess.Popen(
        ["socat", "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"], stderr=subprocess.PIPE, text=True
    )
    try:
        assert ours.stdout is not None and socat.stderr is not None
        our_paths = ours.stdout.readline().strip(), ours.stdout.readline().strip()
        socat_paths: list[str] = []
        while len(socat_paths) < 2:
            match = re.search(r"PTY is (\S+)", socat.stderr.readline())
            if match:
                socat_paths.append(match.group(1))
        bipsim_rate = best_rate(*our_paths, payload)
        socat_rate = best_rate(socat_paths[0], socat_paths[1], payload)
    finally:
        ours.terminate()
        socat.terminate()
        ours.wait(10)
        socat.wait(10)
    print(
        json.dumps(
            {
                "bench": "pty_pair_throughput",
                "bytes": SIZE,
                "bipsim_MBps": round(bipsim_rate, 2),
                "socat_MBps": round(socat_rate, 2),
                "ratio": round(bipsim_rate / socat_rate, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
