"""Throughput of `bipsim pty-pair` against a socat pty pair on the same 1 MiB random transfer, and of
`bipsim pty-pair --baud 115200` against the 8N1 bound (11 520 B/s), alone and beside two CPU burners.

Prints one JSON line: both rates in MB/s and their ratio (bipsim / socat); `paced_ratio` and
`paced_ratio_2_burners`: the paced pair's rate over the bound (at most 1: the pacer never beats the line; how far
under 1 is what a loaded machine costs it). Needs socat on PATH.
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
PACED_BAUD = 115200
PACED_SIZE = 32 * 1024  # about 2.8 s at 115200 baud


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


def paced_ratio(payload: bytes, burners: int) -> float:
    """The rate of `bipsim pty-pair --baud PACED_BAUD` over the 8N1 bound, with `burners` CPU burners beside it."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(burners)]
    pair = subprocess.Popen(
        [sys.executable, "-m", "bipsim", "pty-pair", "--baud", str(PACED_BAUD)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert pair.stdout is not None
        paths = pair.stdout.readline().strip(), pair.stdout.readline().strip()
        seconds = transfer(paths[0], paths[1], payload)
    finally:
        pair.terminate()
        pair.wait(10)
        for hog in hogs:
            hog.kill()
            hog.wait()
    return len(payload) / seconds / (PACED_BAUD / 10)


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
                "paced_baud": PACED_BAUD,
                "paced_ratio": round(paced_ratio(payload[:PACED_SIZE], 0), 4),
                "paced_ratio_2_burners": round(paced_ratio(payload[:PACED_SIZE], 2), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
