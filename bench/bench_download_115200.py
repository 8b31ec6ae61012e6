"""The 1 MiB OTA download with the serial line paced at 115200 baud, against the baud-rate bound (issue 7, bench c).

The harness's built-in pty pair releases at most 115200/10 bytes a second each way (8N1: start, 8 data, stop
bits; RunConfig.baud). In embodiment 2 the whole download crosses the line inside CMUX frames, so its goodput is
bounded by 11 520 bytes/s; the ratio says how close the relay (CMUX framing, TLS records, the RECEIVE DATA rounds)
comes to the bound. In embodiment 1 the CP's own stack carries the data and only AT%GETNET crosses the line, so
its ratio shows the line no longer limits it. Prints one JSON line.

`python bench/bench_download_115200.py [BYTES]` changes the size (1 MiB takes about 100 s in embodiment 2).
"""

from __future__ import annotations

import json
import sys

from _embodiment_runs import bytes_from_server, download_campaign, run_session, session_window

SIZE = 1 << 20
BAUD = 115200


def measure(embodiment: int, size: int) -> dict[str, float]:
    session = run_session(
        embodiment, campaign=download_campaign(size), baud=BAUD, timeout=size / (BAUD / 10) * 3 + 60
    )
    start, end = session_window(session.run)
    goodput = size / (end - start)
    bound = BAUD / 10
    return {
        "payload_bytes": size,
        "tcp_bytes_from_server": bytes_from_server(session.run),
        "serial_line_bytes": session.line_bytes,
        "seconds": round(end - start, 3),
        "goodput_Bps": round(goodput, 1),
        "ratio": round(goodput / bound, 4),
    }


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else SIZE
    result = {
        "bench": "ota_download_at_115200_baud",
        "baud_bound_Bps": BAUD / 10,
        "e2": measure(2, size),
        "e1": measure(1, size),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
