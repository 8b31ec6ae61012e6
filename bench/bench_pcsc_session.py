"""A whole embodiment-2 OTA session with the CP's card behind PC/SC against the same session with the in-process
card (issue 18's target: ratio >= 0.5).

PC/SC path: `bipsim card serve --vpcd` (the simulated card, its own process) -> a private pcscd with the vpcd
reader (tests/pcsc_peer.py) -> pyscard in `bipsim cp --card pcsc:0`. In-process path: `bipsim cp --card sim`. Both
run the built-in campaign through the scenario harness (CP, AP, OTA server as processes on a pty pair), checked as
the embodiment2 scenario checks it. The session time is from the OPEN CHANNEL (S701) to the server's close
acknowledgement (S718) in the merged trace, so process start-up is left out; the per-APDU latency is the CP's
command-to-response time of its card APDUs. Runs alternate between the two paths; medians are reported.

Prints one JSON line: session seconds both ways, ratio = in-process / PC/SC (1.0 = as fast; >= 0.5 is the
target), APDUs per session and the median per-APDU latency both ways. Needs pcscd, the vpcd driver and `unshare -m`
(root); exits 2 with a one-line reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/pcsc_peer.py: the private pcscd the tests use

from bipsim.scenarios.base import check_ota_completed, check_steps  # noqa: E402
from bipsim.scenarios.embodiments import embodiment_config  # noqa: E402
from bipsim.scenarios.harness import RunResult, run_processes  # noqa: E402
from bipsim.trace.kinds import Kind  # noqa: E402
from bipsim.uicc.profile import dump_profile, load_profile  # noqa: E402

ROUNDS = 3
READY_DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def session_seconds(run: RunResult) -> float:
    """From the first OPEN CHANNEL (S701) to the last close acknowledgement (S718) of the merged trace."""
    first = min(e.t for e in run.events if e.step == "S701")
    return max(e.t for e in run.events if e.step == "S718") - first


def apdu_latencies(run: RunResult) -> list[float]:
    """The CP's own record: each card command and the response after it (the driver holds the card meanwhile)."""
    out: list[float] = []
    sent: float | None = None
    for event in run.events:
        if event.layer.value != "apdu":
            continue
        if event.src.value == "cp" and event.dst.value == "uicc":
            sent = event.t
        elif event.src.value == "uicc" and event.dst.value == "cp" and sent is not None:
            if event.kind != Kind.APDU_ATR:
                out.append(event.t - sent)
            sent = None
    return out


def checked(run: RunResult) -> RunResult:
    check_ota_completed(run)
    check_steps(run, 2)
    return run


def run_sim(directory: Path) -> RunResult:
    return checked(run_processes(embodiment_config(2, timeout=60.0), directory))


def run_pcsc(directory: Path, vpcd_port: int, env: dict[str, str]) -> RunResult:
    port = free_port()
    directory.mkdir(parents=True)
    profile = directory / "card-profile.toml"
    profile.write_text(dump_profile(load_profile().with_overrides(ota_port=port)))
    state, trace = directory / "card-state.json", directory / "card.jsonl"
    with (directory / "card.log").open("wb") as log:
        card = subprocess.Popen(
            [sys.executable, "-m", "bipsim", "card", "serve", "--vpcd", f"127.0.0.1:{vpcd_port}"]
            + ["--profile", str(profile), "--state", str(state), "--trace", str(trace)],
            stdout=log,
            stderr=log,
            env=env,
        )
    try:
        deadline = time.monotonic() + READY_DEADLINE
        while '"vpcd_connected"' not in (trace.read_text() if trace.exists() else ""):
            if card.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"the card server did not reach vpcd: {(directory / 'card.log').read_text()}"
                )
            time.sleep(0.05)
        config = embodiment_config(
            2, card="pcsc:0", ota_listen=f"127.0.0.1:{port}", card_state=state, timeout=60.0
        )
        return checked(run_processes(config, directory / "run"))
    finally:
        card.terminate()
        card.wait(timeout=10)


def main() -> None:
    from tests.pcsc_peer import PcscPeer, _free_port_pair, unshare_refusal

    missing = [tool for tool in ("pcscd", "unshare") if shutil.which(tool) is None]
    reason = f"{', '.join(missing)} not installed" if missing else unshare_refusal()
    if reason:
        print(f"bench_pcsc_session: cannot run: {reason}", file=sys.stderr)
        raise SystemExit(2)
    root = Path(tempfile.mkdtemp(prefix="bipsim-bench-pcsc-"))
    peer = PcscPeer(root / "pcscd", _free_port_pair())
    peer.directory.mkdir(parents=True)
    peer.start()
    env = peer.env()
    os.environ["PCSCLITE_CSOCK_NAME"] = peer.socket  # for the harness's CP processes
    sim: list[RunResult] = []
    pcsc: list[RunResult] = []
    try:
        for n in range(ROUNDS):
            sim.append(run_sim(root / f"sim-{n}"))
            pcsc.append(run_pcsc(root / f"pcsc-{n}", peer.vpcd_port, env))
    finally:
        peer.stop()
        shutil.rmtree(root, ignore_errors=True)
    sim_s = statistics.median(session_seconds(r) for r in sim)
    pcsc_s = statistics.median(session_seconds(r) for r in pcsc)
    sim_apdu = statistics.median(x for r in sim for x in apdu_latencies(r))
    pcsc_apdu = statistics.median(x for r in pcsc for x in apdu_latencies(r))
    print(
        json.dumps(
            {
                "bench": "pcsc_session",
                "rounds": ROUNDS,
                "session_s_in_process": round(sim_s, 4),
                "session_s_pcsc": round(pcsc_s, 4),
                "ratio": round(sim_s / pcsc_s, 3),
                "target_ratio": 0.5,
                "apdus_per_session_pcsc": round(statistics.median(len(apdu_latencies(r)) for r in pcsc)),
                "apdu_ms_in_process": round(sim_apdu * 1000, 3),
                "apdu_ms_pcsc": round(pcsc_apdu * 1000, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
