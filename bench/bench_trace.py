"""Trace costs: events recorded per second (JSONL writer) and pcap export speed (events/s), one JSON line.

The event mix is one OTA session's shape repeated: APDU exchanges, AT lines, CMUX frames and TCP segments.
The whole-run overhead (a real embodiment-2 run with and without --trace) is bench_trace_overhead.py.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time

from bipsim.trace.pcap import export_pcap
from bipsim.trace.recorder import Tracer

ROUNDS = 2000


def record(tracer: Tracer) -> None:
    fetch, data = bytes.fromhex("8012000024"), os.urandom(240)
    for _ in range(ROUNDS):
        tracer.emit("cp", "uicc", "apdu", "FETCH", fetch)
        tracer.emit("uicc", "cp", "apdu", "SEND DATA", data + b"\x90\x00")
        tracer.emit("cp", "ap", "cmux", "UIH DLC3", b"\xf9\x0f\xef" + data[:100] + b"\x00\xf9")
        tracer.emit("cp", "ap", "at", "AT%WEBOPCH", b'AT%WEBOPCH=1,"TCP","127.0.0.1",4443\r')
        tracer.emit("ap", "ota", "tcp", "data", data)
        tracer.emit("ota", "ap", "tcp", "data", data[:64])


def main() -> None:
    sink = io.StringIO()
    writer = Tracer(sink)
    start = time.perf_counter()
    record(writer)
    write_rate = 6 * ROUNDS / (time.perf_counter() - start)

    keeper = Tracer(keep=True)
    record(keeper)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        packets = export_pcap(keeper.events, os.path.join(tmp, "bench.pcap"))
        pcap_seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "bench": "trace",
                "events": len(keeper.events),
                "record_events_per_s": round(write_rate),
                "pcap_events_per_s": round(len(keeper.events) / pcap_seconds),
                "pcap_packets": packets,
                "ratio_pcap_to_record": round((len(keeper.events) / pcap_seconds) / write_rate, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
