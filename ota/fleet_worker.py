"""One worker process of `bipsim fleet --engine local` (ota/fleet.py): `python -m bipsim.ota.fleet_worker SPEC`, with
SPEC the worker's specification as JSON. It runs the worker's cards under trio and writes the worker events of
ota/fleet.py to stdout, one JSON object a line; it exits 0 once it wrote "done", else non-zero with one line on
stderr saying why. SIGTERM ends it at once; SIGINT is ignored (a terminal's Ctrl-C goes to the coordinator, which
stops its workers itself)."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

from bipsim.ota.fleet import WorkerSpec, worker_main


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m bipsim.ota.fleet_worker SPEC_JSON\n")
        return 2
    # Ctrl-C in a terminal reaches the whole process group: the coordinator decides when a worker stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        spec = WorkerSpec.from_dict(json.loads(argv[1]))
    except (ValueError, TypeError) as exc:
        sys.stderr.write(f"fleet worker: bad specification: {exc}\n")
        return 2
    try:
        worker_main(spec, emit)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1  # the coordinator is gone: nobody to report to
    except Exception as exc:  # a bug of the worker: one line, the coordinator counts it as died
        sys.stderr.write(f"fleet worker {spec.worker}: {type(exc).__name__}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
