"""Goodput of a 1 MiB OTA download per embodiment against raw loopback TCP (issue 7, bench b).

Each embodiment runs a real session (OTA server, CP and AP as processes on the built-in pty pair) whose campaign
loads 1 MiB of applet code (two 512 KiB load files: the card takes HTTP bodies up to 1 MiB). Goodput is those
1 MiB over the session's time from FETCH OPEN CHANNEL to the server's close acknowledgement (TLS, HTTP, every
RECEIVE DATA round of at most 237 bytes, and in embodiment 2 the CMUX relay included). The baseline moves the
same 1 MiB over a plain loopback TCP connection in this process. Prints one JSON line.

`python bench/bench_download.py [BYTES]` changes the size (for a quick look).
"""

from __future__ import annotations

import json
import sys

from _embodiment_runs import (
    bytes_from_server,
    download_campaign,
    loopback_tcp_rate,
    run_session,
    session_window,
)

SIZE = 1 << 20


def measure(embodiment: int, size: int) -> dict[str, float]:
    session = run_session(embodiment, campaign=download_campaign(size), timeout=300)
    start, end = session_window(session.run)
    return {
        "payload_bytes": size,
        "tcp_bytes_from_server": bytes_from_server(session.run),
        "serial_line_bytes": session.line_bytes,
        "seconds": round(end - start, 3),
        "goodput_kBps": round(size / (end - start) / 1e3, 2),
    }


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else SIZE
    e1, e2 = measure(1, size), measure(2, size)
    loopback = loopback_tcp_rate(size) / 1e3
    result = {
        "bench": "ota_download_goodput",
        "e1": {**e1, "ratio": round(e1["goodput_kBps"] / loopback, 6)},
        "e2": {**e2, "ratio": round(e2["goodput_kBps"] / loopback, 6)},
        "loopback_tcp_kBps": round(loopback, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
