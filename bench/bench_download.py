"""Goodput of a 1 MiB OTA download per embodiment against raw loopback TCP and against the card path's floor
(issues 7 and 21).

Each embodiment runs a real session (OTA server, CP and AP as processes on the built-in pty pair, every process
tracing to its file) whose campaign loads 1 MiB of applet code (two 512 KiB load files: the card takes HTTP bodies
up to 1 MiB). Goodput is those 1 MiB over the session's time from FETCH OPEN CHANNEL to the server's close
acknowledgement (TLS, HTTP, every RECEIVE DATA round of at most 237 bytes, and in embodiment 2 the CMUX relay
included). The CP's CPU time in that window is read from /proc/<pid>/stat while it runs (`cp_cpu_s_per_MiB`).

Two references are measured in the same run:
- the loopback baseline moves the same 1 MiB over a plain loopback TCP connection in this process;
- the floor runs the same RECEIVE DATA rounds between the card's BIP engine and the CP's card driver in this one
  process: no gateway, no line, no trace, no TLS, HTTP or GP work on the card (its client only counts the bytes):
  ENVELOPE Data Available for each buffer's worth (the terminal's buffer of the OPEN CHANNEL), FETCH RECEIVE DATA
  and TERMINAL RESPONSE with up to 237 bytes until the buffer is drained. `e<n>.ratio_to_floor` is the embodiment's
  goodput over the floors' measured right before and after it (issue 21's target for e2: >= 0.6).

Each embodiment runs BIPSIM_BENCH_ROUNDS times (default 3, in turns, a floor after each run): its median run (by
`ratio_to_floor`) is the one reported, with every run's ratio in `ratio_to_floor_runs`, since single runs on this
project's machines scatter by about a quarter (docs/performance.md, "The card path").

`python bench/bench_download.py [BYTES]` changes the size (for a quick look). Prints one JSON line.

With BIPSIM_BENCH_PROFILE=DIR and py-spy on the PATH (`pip install py-spy`), each embodiment's CP process is
sampled by `py-spy record --format raw` into DIR/cp-e<n>.txt (collapsed stacks, one line each with its count; the
last round's): the profile docs/performance.md quotes ("The card path"). The sampler costs the machine some CPU,
so the figures of a profiled run are not the ones to compare.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from _embodiment_runs import bytes_from_server, download_campaign, loopback_tcp_rate, session_window

from bipsim.cp.card_driver import CardDriver
from bipsim.scenarios.base import check_ota_completed, check_steps
from bipsim.scenarios.embodiments import embodiment_config
from bipsim.scenarios.harness import Harness, RunResult
from bipsim.uicc.bip_engine import BipConfig, BipEngine
from bipsim.uicc.card import SimCard
from bipsim.uicc.cat import (
    CatObject,
    CommandType,
    DeviceId,
    Envelope,
    Event,
    GeneralResult,
    ProactiveCommand,
    Tag,
    TerminalResponse,
    buffer_size_object,
    channel_data_length,
    channel_data_length_object,
    channel_status_object,
    obj,
)
from bipsim.uicc.profile import load_profile
from bipsim.uicc.sim_transport import SimulatedCard
from bipsim.uicc.test_clients import RequestResponseClient

SIZE = 1 << 20
MIB = 1 << 20
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (proc(5) fields 14 and 15)


class CpuSampler:
    """Samples the CP's CPU time every few milliseconds while the session runs (the harness's `during` hook)."""

    def __init__(self, profile: Path | None = None) -> None:
        self.pid = 0
        self.samples: list[tuple[float, float]] = []  # (time.monotonic(), CPU seconds)
        self.profile = profile  # where py-spy writes the CP's stacks (BIPSIM_BENCH_PROFILE), or None
        self.profiler: subprocess.Popen[bytes] | None = None

    def on_process(self, name: str, pid: int) -> None:
        if name == "cp":
            self.pid = pid
            spy = shutil.which("py-spy")
            if self.profile is not None and spy is not None:
                self.profiler = subprocess.Popen(
                    [spy, "record", "--pid", str(pid), "--rate", "500", "--format", "raw", "--nonblocking"]
                    + ["-o", str(self.profile)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )

    async def during(self, harness: Harness) -> None:
        while True:
            if self.pid:
                cpu = cpu_seconds(self.pid)
                if cpu is not None:
                    self.samples.append((time.monotonic(), cpu))
            await trio.sleep(0.005)

    def between(self, start: float, end: float) -> float:
        """CPU seconds spent between two monotonic times (the last sample at or before each)."""

        def at(moment: float) -> float:
            before = [cpu for when, cpu in self.samples if when <= moment]
            return before[-1] if before else self.samples[0][1]

        return at(end) - at(start)


def measure(embodiment: int, size: int) -> dict[str, float]:
    profiles = os.environ.get("BIPSIM_BENCH_PROFILE")
    sampler = CpuSampler(Path(profiles) / f"cp-e{embodiment}.txt" if profiles else None)
    if profiles:
        Path(profiles).mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=f"bipsim-bench-e{embodiment}-"))
    config = embodiment_config(
        embodiment,
        campaign=download_campaign(size),
        timeout=300,
        on_process=sampler.on_process,
        during=sampler.during,
    )
    harness = Harness(config, directory)
    try:
        run: RunResult = trio.run(harness.run)
        check_ota_completed(run)
        check_steps(run, embodiment)
    except BaseException:
        print(
            f"bench: session of embodiment {embodiment} failed; its files are in {directory}", file=sys.stderr
        )
        raise
    if sampler.profiler is not None:
        sampler.profiler.wait(timeout=60)  # py-spy writes its file once the CP has exited
    line = sum(s.bytes for s in harness.pair.stats) if harness.pair is not None else 0
    shutil.rmtree(directory, ignore_errors=True)
    start, end = session_window(run)
    cpu = sampler.between(harness.origin + start, harness.origin + end)
    rounds = sum(1 for e in run.events if e.kind == "cat.proactive" and e.field("command") == "RECEIVE DATA")
    return {
        "payload_bytes": size,
        "tcp_bytes_from_server": bytes_from_server(run),
        "serial_line_bytes": line,
        "seconds": round(end - start, 3),
        "goodput_kBps": round(size / (end - start) / 1e3, 2),
        "goodput_MBps": round(size / (end - start) / 1e6, 4),
        "receive_data_rounds": rounds,
        "us_per_round": round((end - start) / max(rounds, 1) * 1e6, 1),
        "cp_cpu_s": round(cpu, 3),
        "cp_cpu_s_per_MiB": round(cpu * MIB / size, 3),
    }


class _Floor:
    """The terminal side of the floor: answers the engine's commands itself (what the gateway would answer)."""

    def __init__(self, driver: CardDriver, size: int) -> None:
        self.driver = driver
        self.left = size
        self.buffered = 0  # bytes the terminal holds for the card (at most the channel's buffer)
        self.buffer = 0
        self.rounds = 0
        self.opened = 0.0
        self.closed = 0.0

    async def run(self) -> None:
        await self.driver.start()
        while not self.closed:
            if not self.driver.proactive_pending:
                raise RuntimeError("the engine stopped before the download ended")
            command, _ = await self.driver.fetch()
            assert command is not None
            await self.answer(command)

    async def answer(self, command: ProactiveCommand) -> None:
        objects: list[CatObject] = []
        general = GeneralResult.OK
        if command.type == CommandType.OPEN_CHANNEL:
            self.opened = time.perf_counter()
            request_size = next(o for o in command.objects if o.tag == Tag.BUFFER_SIZE).value
            self.buffer = int.from_bytes(request_size, "big")
            objects = [
                channel_status_object(1, False),
                obj(Tag.BEARER_DESCRIPTION, b"\x03"),
                buffer_size_object(self.buffer),
            ]
        elif command.type == CommandType.SEND_DATA:
            objects = [channel_data_length_object(0xFF)]
        elif command.type == CommandType.RECEIVE_DATA:
            want = min(channel_data_length(command) or 0, self.buffered)
            self.buffered -= want
            self.left -= want
            self.rounds += 1
            objects = [
                obj(Tag.CHANNEL_DATA, bytes(want)),
                channel_data_length_object(min(self.buffered, 0xFF)),
            ]
        elif command.type == CommandType.CLOSE_CHANNEL:
            self.closed = time.perf_counter()
        await self.driver.terminal_response(TerminalResponse.build(command, general, b"", objects))
        if command.type == CommandType.OPEN_CHANNEL:
            await self.envelope(Event.CHANNEL_STATUS, [channel_status_object(1, True)])
        if (
            command.type in (CommandType.SEND_DATA, CommandType.RECEIVE_DATA)
            and not self.buffered
            and self.left
        ):
            self.buffered = min(self.left, self.buffer)  # the next buffer's worth arrived from the network
            length = channel_data_length_object(min(self.buffered, 0xFF))
            await self.envelope(Event.DATA_AVAILABLE, [channel_status_object(1, True), length])

    async def envelope(self, event: Event, objects: list[CatObject]) -> None:
        envelope = Envelope.event_download(event, DeviceId.TERMINAL, objects)
        await self.driver.envelope(envelope, "ENVELOPE")


def floor(size: int) -> dict[str, float]:
    """The card path alone: RECEIVE DATA rounds between the engine and the driver in this process."""
    client = RequestResponseClient(b"GET / HTTP/1.1\r\n\r\n", size)
    engine = BipEngine(BipConfig(buffer_size=1400), client)
    card = SimCard(load_profile(None), toolkit=engine)
    terminal = _Floor(CardDriver(SimulatedCard(card)), size)
    cpu = time.process_time()
    trio.run(terminal.run)
    cpu = time.process_time() - cpu
    seconds = terminal.closed - terminal.opened
    assert len(client.received) == size and not engine.failures, engine.failures
    return {
        "seconds": round(seconds, 3),
        "rounds": terminal.rounds,
        "goodput_kBps": round(size / seconds / 1e3, 2),
        "goodput_MBps": round(size / seconds / 1e6, 4),
        "us_per_round": round(seconds / terminal.rounds * 1e6, 1),
        "cpu_s_per_MiB": round(cpu * MIB / size, 3),
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose `ratio_to_floor` is the median of `runs` (the lower middle of an even count), with every run's
    ratio beside it (`ratio_to_floor_runs`, in the order run)."""
    ordered = sorted(runs, key=lambda run: run["ratio_to_floor"])
    return {
        **ordered[(len(ordered) - 1) // 2],
        "ratio_to_floor_runs": [run["ratio_to_floor"] for run in runs],
    }


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else SIZE
    rounds = int(os.environ.get("BIPSIM_BENCH_ROUNDS", "3"))
    loopback = loopback_tcp_rate(size) / 1e3
    # the floor right before and after each embodiment: each ratio divides by the floors measured beside it, so a
    # machine whose load changes during the run skews the ratios less; ROUNDS rounds of e1 and e2, the median run
    # of each reported (this machine's runs scatter by a quarter: docs/performance.md, "The card path")
    floors = [floor(size)]
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for _ in range(rounds):
        for embodiment in (1, 2):
            run = measure(embodiment, size)
            floors.append(floor(size))
            beside = (floors[-2]["goodput_kBps"] + floors[-1]["goodput_kBps"]) / 2
            run["ratio"] = round(run["goodput_kBps"] / loopback, 6)
            run["ratio_to_floor"] = round(run["goodput_kBps"] / beside, 4)
            runs[embodiment].append(run)
    base = {key: round(sum(f[key] for f in floors) / len(floors), 4) for key in floors[0]}
    result = {
        "bench": "ota_download_goodput",
        "rounds": rounds,
        "e1": median_run(runs[1]),
        "e2": median_run(runs[2]),
        "floor": {**base, "goodput_kBps_runs": [f["goodput_kBps"] for f in floors]},
        "loopback_tcp_kBps": round(loopback, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
