"""The 1 MiB OTA download with the serial line paced at 115200 baud, against the baud-rate bound (issues 7 and 21).

The harness's built-in pty pair releases at most 115200/10 bytes a second each way (8N1: start, 8 data, stop
bits; RunConfig.baud), like a UART that keeps sending from its FIFO when the relay wakes late
(bipsim.link.pty_relay.UartPacer). In embodiment 2 the whole download crosses the line inside CMUX frames, so its
goodput is bounded by 11 520 bytes/s. Reported per run:

- `ratio`: goodput over the bound (target >= 0.92 in embodiment 2);
- `line_utilisation`: the bytes the line carried towards the CP during the session over what it could carry in
  that time (target >= 0.97): the rest is time the line sat idle;
- `protocol_efficiency`: payload over those line bytes (TLS records, HTTP, CMUX framing are the difference).

`ratio` = `protocol_efficiency` x `line_utilisation`. Embodiment 2 runs twice, the second time with two CPU
burners (`python3 -c 'while 1: pass'`) started beside it and killed at the end (key `e2_with_2_burners`). In
embodiment 1 the CP's own stack carries the data and only AT%GETNET crosses the line, so its ratio shows the line
no longer limits it. Prints one JSON line.

`python bench/bench_download_115200.py [BYTES]` changes the size (1 MiB takes about 100 s in embodiment 2).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import _embodiment_runs
from _embodiment_runs import bytes_from_server, download_campaign, run_session, session_window

import bipsim.scenarios.harness as harness_module
from bipsim.link.pty_relay import PtyPair
from bipsim.scenarios.harness import Harness

SIZE = 1 << 20
BAUD = 115200
BOUND = BAUD / 10  # bytes a second, 8N1


class TimedPair(PtyPair):
    """The harness's pty pair with a timeline per direction, so the bytes of the session window can be counted."""

    made: list[PtyPair] = []

    @classmethod
    def create(cls, *, baud: int | None = None, fifo: int | None = None) -> PtyPair:
        pair = super().create(baud=baud, fifo=fifo)
        for stats in pair.stats:
            stats.timeline = []
        cls.made.append(pair)
        return pair


class TimedHarness(Harness):
    """The harness, remembered: its origin (a time.monotonic() value) is where the trace's times count from."""

    made: list[Harness] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        TimedHarness.made.append(self)


def measure(embodiment: int, size: int) -> dict[str, Any]:
    TimedPair.made.clear()
    TimedHarness.made.clear()
    session = run_session(
        embodiment, campaign=download_campaign(size), baud=BAUD, timeout=size / BOUND * 3 + 60
    )
    start, end = session_window(session.run)
    seconds = end - start
    goodput = size / seconds
    result: dict[str, Any] = {
        "payload_bytes": size,
        "tcp_bytes_from_server": bytes_from_server(session.run),
        "serial_line_bytes": session.line_bytes,
        "seconds": round(seconds, 3),
        "goodput_Bps": round(goodput, 1),
        "ratio": round(goodput / BOUND, 4),
    }
    if TimedPair.made and TimedHarness.made:
        # trace times count from the harness's origin, a time.monotonic() value, as the timeline does
        pair = TimedPair.made[-1]
        origin = TimedHarness.made[-1].origin
        towards_cp = pair.stats[0].bytes_between(origin + start, origin + end)  # side A is the AP
        towards_ap = pair.stats[1].bytes_between(origin + start, origin + end)
        result["line_bytes_towards_cp"] = towards_cp
        result["line_bytes_towards_ap"] = towards_ap
        result["line_utilisation"] = round(towards_cp / (seconds * BOUND), 4)
        result["protocol_efficiency"] = round(size / towards_cp, 4) if towards_cp else None
        # where the rest of the line's time went (whole run, towards the CP): the line had nothing to send
        # (`idle`), the pacer dropped lateness beyond one FIFO (`lost`), the CP's side did not read (`send_wait`)
        down = pair.stats[0]
        if down.pacer is not None:
            result["relay_idle_s"] = round(down.pacer.idle, 3)
            result["relay_lost_s"] = round(down.pacer.lost, 3)
        result["relay_send_wait_s"] = round(down.send_wait, 3)
        result["idle_gaps_in_session"] = idle_gaps(down.timeline or [], origin + start, origin + end)
    return result


def idle_gaps(timeline: list[tuple[float, int]], start: float, end: float) -> dict[str, float]:
    """Seconds the line towards the CP sat idle inside the session, by the length of each idle stretch. The bytes
    of a release at time t left the wire by t: they went out back to back after the previous ones when the wire
    was still busy (a catch-up), else in the n/rate seconds before t, after an idle stretch."""
    buckets: dict[str, float] = {"under_10ms_s": 0.0, "10_to_100ms_s": 0.0, "over_100ms_s": 0.0}
    count = 0
    busy_until: float | None = None
    previous_total = 0
    for t, total in timeline:
        size = total - previous_total
        previous_total = total
        began = t - size / BOUND
        if busy_until is not None and began > busy_until and start <= busy_until and began <= end:
            gap = began - busy_until
            key = "under_10ms_s" if gap < 0.01 else "10_to_100ms_s" if gap < 0.1 else "over_100ms_s"
            buckets[key] += gap
            count += gap >= 0.1
        busy_until = max(busy_until if busy_until is not None else began, began) + size / BOUND
    return {**{key: round(value, 3) for key, value in buckets.items()}, "over_100ms_count": count}


def with_burners(count: int, embodiment: int, size: int) -> dict[str, Any]:
    burners = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(count)]
    try:
        return measure(embodiment, size)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else SIZE
    harness_module.PtyPair = TimedPair  # type: ignore[misc]
    _embodiment_runs.Harness = TimedHarness  # type: ignore[misc]
    result = {
        "bench": "ota_download_at_115200_baud",
        "baud_bound_Bps": BOUND,
        "e2": measure(2, size),
        "e2_with_2_burners": with_burners(2, 2, size),
        "e1": measure(1, size),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
