"""Trace costs, one JSON line: nanoseconds per recorded event and pcap export speed.

The event mix is one OTA session's shape repeated: APDU exchanges, AT lines, CMUX frames and TCP segments.

- `record_ns_per_event`: CPU time per event of a trace file as the processes write it (Tracer.to_file: queued,
  encoded and written in batches; the flusher thread's CPU included), from the first emit to close.
- `emit_ns_per_event` and `encode_ns_per_event`: the same split in two, the emitting thread (emit, queueing the event)
  and the batch work (JSON encoding and writing) measured apart.
- `hot_record_ns_per_event`, `hot_queue_ns_per_event`, `hot_encode_ns_per_event`: the same three through
  `Tracer.record`, the hot path's call (the arguments queued, the event's line built at the flush);
  `ratio_emit_to_hot_record` and `ratio_emit_to_hot_queue` compare emit's with them (whole, emitting thread), and
  `same_lines_hot` says both files are the same bytes.
- `unbatched_ns_per_event`: the same events written as before, one JSON line encoded and written per event to a
  line-buffered file; `ratio_unbatched_to_batched` is how much cheaper recording got.
- `pcap_events_per_s`: export of the recorded events to pcap (packets built with struct); `pcap_scapy_events_per_s`
  builds the same packets with scapy (the exporter of before, what `pcap_speedup` compares with).

The whole-run overhead (a real embodiment-2 run with and without --trace) is bench_trace_overhead.py.
"""

from __future__ import annotations

import itertools
import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bipsim.trace import recorder
from bipsim.trace.pcap import PcapExporter, export_pcap
from bipsim.trace.recorder import Tracer

ROUNDS = 2000
EVENTS = 6 * ROUNDS


def clock() -> Callable[[], float]:
    """The same times for every run (the files of two runs compare byte for byte)."""
    ticks = itertools.count()
    return lambda: next(ticks) * 0.000125


def record(tracer: Tracer, *, hot: bool = False) -> None:
    """The mix through `emit`, or with `hot` through `record` (the hot path's call: no TraceEvent returned)."""
    fetch, data = bytes.fromhex("8012000024"), random.Random(7).randbytes(240)
    call = tracer.record if hot else tracer.emit
    for _ in range(ROUNDS):
        call("cp", "uicc", "apdu", "FETCH", fetch, kind="cat.fetch", fields={"length": 36})
        call("uicc", "cp", "apdu", "SEND DATA", data + b"\x90\x00", kind="cat.proactive")
        call("cp", "ap", "cmux", "UIH DLC3", b"\xf9\x0f\xef" + data[:100] + b"\x00\xf9", kind="cmux.data")
        call("cp", "ap", "at", "AT%WEBOPCH", b'AT%WEBOPCH=1,"TCP","127.0.0.1",4443\r', kind="at.command")
        call("ap", "ota", "tcp", "data", data, kind="tcp.data", fields={"channel": 1, "length": 240})
        call("ota", "ap", "tcp", "data", data[:64], kind="tcp.data")


def ns_per_event(seconds: float) -> float:
    return round(seconds / EVENTS * 1e9, 1)


def batched(directory: Path, *, hot: bool = False) -> tuple[float, float, float]:
    """(whole, emit only, encode and write only) CPU seconds of a batching file tracer (`hot`: through record)."""
    start = time.process_time()
    tracer = Tracer.to_file(directory / f"batched{'_hot' if hot else ''}.jsonl", origin=0.0, clock=clock())
    record(tracer, hot=hot)
    tracer.close()
    whole = time.process_time() - start
    # the split: a batch larger than the run and no flusher, so emit only queues; then one flush does the rest
    tracer = Tracer.to_file(directory / "split.jsonl", batch=EVENTS + 1)
    recorder._Flusher.unregister(tracer)
    start = time.process_time()
    record(tracer, hot=hot)
    emitted = time.process_time()
    tracer.close()
    return whole, emitted - start, time.process_time() - emitted


def unbatched(directory: Path) -> float:
    """CPU seconds of the recorder of before: each line encoded with json.dumps and written at once."""
    with (directory / "unbatched.jsonl").open("w", encoding="utf-8", buffering=1) as sink:
        keeper = Tracer(keep=True, origin=0.0, clock=clock())
        start = time.process_time()
        original = keeper.emit

        def emit(*args: Any, **kwargs: Any) -> Any:
            event = original(*args, **kwargs)
            sink.write(json.dumps(event.to_dict(), separators=(", ", ": "), ensure_ascii=False) + "\n")
            return event

        keeper.emit = emit  # type: ignore[method-assign]
        record(keeper)
        return time.process_time() - start


def scapy_export(exporter: PcapExporter) -> float:
    """Seconds scapy takes to build the exporter's packets (as the exporter of before did) and write them."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.packet import Raw

    decoded = [IP(packet.data) for packet in exporter.packets]
    start = time.perf_counter()
    built = []
    for packet in decoded:
        layer = IP(src=packet["IP"].src, dst=packet["IP"].dst)
        if packet.haslayer(TCP):
            tcp = packet["TCP"]
            layer = layer / TCP(sport=tcp.sport, dport=tcp.dport, flags=tcp.flags, seq=tcp.seq, ack=tcp.ack)
        else:
            layer = layer / UDP(sport=packet["UDP"].sport, dport=packet["UDP"].dport)
        if packet.haslayer(Raw):
            layer = layer / Raw(packet["Raw"].load)
        built.append(bytes(layer))
    seconds = time.perf_counter() - start
    assert built == [packet.data for packet in exporter.packets]  # the same bytes
    return seconds


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        whole, emit_only, encode_only = batched(directory)
        hot_whole, hot_queue, hot_encode = batched(directory, hot=True)
        same_hot = (directory / "batched.jsonl").read_bytes() == (
            directory / "batched_hot.jsonl"
        ).read_bytes()
        before = unbatched(directory)
        same = (directory / "batched.jsonl").read_bytes() == (directory / "unbatched.jsonl").read_bytes()
        keeper = Tracer(keep=True)
        record(keeper)
        start = time.perf_counter()
        packets = export_pcap(keeper.events, directory / "bench.pcap")
        pcap_seconds = time.perf_counter() - start
        exporter = PcapExporter()
        sample = keeper.events[: 6 * 200]  # scapy is slow: a tenth of the events
        for event in sample:
            exporter.add(event)
        scapy_seconds = scapy_export(exporter)
    pcap_rate = len(keeper.events) / pcap_seconds
    scapy_rate = len(sample) / scapy_seconds
    print(
        json.dumps(
            {
                "bench": "trace",
                "events": EVENTS,
                "record_ns_per_event": ns_per_event(whole),
                "emit_ns_per_event": ns_per_event(emit_only),
                "encode_ns_per_event": ns_per_event(encode_only),
                "hot_record_ns_per_event": ns_per_event(hot_whole),
                "hot_queue_ns_per_event": ns_per_event(hot_queue),
                "hot_encode_ns_per_event": ns_per_event(hot_encode),
                "ratio_emit_to_hot_record": round(whole / hot_whole, 3),
                "ratio_emit_to_hot_queue": round(emit_only / hot_queue, 3),
                "same_lines_hot": same_hot,
                "unbatched_ns_per_event": ns_per_event(before),
                "ratio_unbatched_to_batched": round(before / whole, 3),
                "same_lines": same,
                "record_events_per_s": round(EVENTS / whole),
                "pcap_events_per_s": round(pcap_rate),
                "pcap_scapy_events_per_s": round(scapy_rate),
                "pcap_speedup": round(pcap_rate / scapy_rate, 1),
                "pcap_packets": packets,
            }
        )
    )


if __name__ == "__main__":
    main()
