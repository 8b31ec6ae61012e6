"""Shared by the embodiment benchmarks: runs one OTA session per embodiment through the scenario harness (three
processes on a pty pair) and reads figures off its trace. Not a benchmark itself (no bench_ prefix)."""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from bipsim.scenarios.base import check_ota_completed, check_steps
from bipsim.scenarios.campaigns import SPN_UPDATE, campaign, ram_install, ram_load
from bipsim.scenarios.embodiments import embodiment_config
from bipsim.scenarios.harness import Harness, RunResult
from bipsim.trace.events import TraceEvent
from bipsim.trace.reader import read_trace

STEP_OPEN = {1: "S401", 2: "S701"}
STEP_LINK = {1: "S406", 2: "S706"}


def download_campaign(total: int, parts: int = 2) -> str:
    """EF_SPN, then `total` bytes of load files in `parts` load files (A00000055900 10, 11, ...), then the applet.

    The card accepts an HTTP body of at most 1 MiB (uicc/http_limits.py LIMITS.body_bytes), so a 1 MiB download is two load files.
    """
    sizes = [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
    load_files = [f"A00000055900{0x10 + i:02X}" for i in range(parts)]
    loads = [ram_load(f, f + "FF", size) for f, size in zip(load_files, sizes, strict=True)]
    return campaign(SPN_UPDATE, *loads, ram_install())


@dataclass
class Session:
    run: RunResult
    wall: float  # seconds, process start-up included
    per_file: dict[str, list[TraceEvent]]  # "cp", "ap", "ota": what each process recorded itself
    line_bytes: int  # both directions through the harness's pty pair


def run_session(
    embodiment: int, *, campaign: str | None = None, baud: int | None = None, timeout: float = 60.0
) -> Session:
    """One checked session of `embodiment` (raises ScenarioFailed when a check fails)."""
    directory = Path(tempfile.mkdtemp(prefix=f"bipsim-bench-e{embodiment}-"))
    config = embodiment_config(embodiment, campaign=campaign, baud=baud, timeout=timeout)
    harness = Harness(config, directory)
    started = time.monotonic()
    try:
        run = trio.run(harness.run)
        wall = time.monotonic() - started
        check_ota_completed(run)
        check_steps(run, embodiment)
        per_file = {
            name: read_trace([directory / f"{name}.jsonl"])[0]
            for name in ("cp", "ap", "ota")
            if (directory / f"{name}.jsonl").exists()
        }
        line = sum(s.bytes for s in harness.pair.stats) if harness.pair is not None else 0
    except BaseException:
        print(
            f"bench: session of embodiment {embodiment} failed; its files are in {directory}", file=sys.stderr
        )
        raise
    shutil.rmtree(directory, ignore_errors=True)
    return Session(run, wall, per_file, line)


def first(events: list[TraceEvent], step: str) -> TraceEvent:
    return next(e for e in events if e.step == step)


def session_window(run: RunResult) -> tuple[float, float]:
    """From the FETCH OPEN CHANNEL to the last patent step (the server's close acknowledgement)."""
    stepped = [e for e in run.events if e.step is not None]
    return stepped[0].t, stepped[-1].t


def bytes_from_server(run: RunResult) -> int:
    return sum(len(e.data) for e in run.events if e.layer.value == "tcp" and e.src.value == "ota")


def loopback_tcp_rate(size: int, rounds: int = 5) -> float:
    """Best bytes/s of `size` bytes over a plain loopback TCP connection (the baseline)."""
    payload = bytes(size)
    best = 0.0
    for _ in range(rounds):
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]

            def send() -> None:
                connection, _ = server.accept()
                with connection:
                    connection.sendall(payload)

            sender = threading.Thread(target=send)
            sender.start()
            with socket.create_connection(("127.0.0.1", port)) as client:
                started = time.perf_counter()
                got = 0
                while got < size:
                    chunk = client.recv(65536)
                    if not chunk:
                        break
                    got += len(chunk)
                elapsed = time.perf_counter() - started
            sender.join()
        best = max(best, got / elapsed)
    return best
