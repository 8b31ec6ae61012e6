"""Trace overhead of a whole run: embodiment 2 (OTA server, CP and AP as processes on a pty pair) with every
process writing its JSONL trace, against the same run with no --trace; and pcap export speed on that run's real
merged trace (events/s). One JSON line: our figure (traced run), the baseline (untraced run) and their ratio.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from bipsim.scenarios.harness import Harness, RunConfig, RunResult
from bipsim.trace.pcap import export_pcap

ROUNDS = 5


class UntracedHarness(Harness):
    """The scenario harness with every `--trace FILE` argument dropped: the processes record nothing."""

    def _command(self, *args: str) -> list[str]:
        kept: list[str] = []
        skip = False
        for arg in args:
            if skip:
                skip = False
                continue
            if arg == "--trace":
                skip = True
                continue
            kept.append(arg)
        return super()._command(*kept)


def run_once(traced: bool) -> tuple[float, RunResult]:
    import trio

    with tempfile.TemporaryDirectory() as tmp:
        config = RunConfig(session="e2", bearer="ap-proxy")
        harness = (Harness if traced else UntracedHarness)(config, Path(tmp))
        start = time.perf_counter()
        result = trio.run(harness.run)
        seconds = time.perf_counter() - start
    if result.cp_code != 0 or not result.completed:
        raise SystemExit(f"the {'traced' if traced else 'untraced'} run failed: {result.explain()}")
    return seconds, result


def main() -> None:
    traced: list[float] = []
    untraced: list[float] = []
    events = []
    for _ in range(ROUNDS):  # alternate so that drift in machine load hits both equally
        seconds, result = run_once(True)
        traced.append(seconds)
        events = result.events
        untraced.append(run_once(False)[0])
    with tempfile.TemporaryDirectory() as tmp:
        repeats = 20
        start = time.perf_counter()
        for _ in range(repeats):
            packets = export_pcap(events, Path(tmp) / "run.pcap")
        pcap_seconds = (time.perf_counter() - start) / repeats
    traced_s, untraced_s = statistics.median(traced), statistics.median(untraced)
    print(
        json.dumps(
            {
                "bench": "trace_overhead",
                "runs_each": ROUNDS,
                "traced_run_s": round(traced_s, 3),
                "untraced_run_s": round(untraced_s, 3),
                "ratio_traced_to_untraced": round(traced_s / untraced_s, 3),
                "trace_events": len(events),
                "pcap_events_per_s": round(len(events) / pcap_seconds),
                "pcap_packets": packets,
            }
        )
    )


if __name__ == "__main__":
    main()
