"""OMAPI on the AP (docs/protocols.md, "OMAPI on the AP"): one run of the real AP and CP with the `omapi` card,
an application that opens a channel to the echo applet and transmits N APDUs, figures read off the merged trace.

Prints one JSON line: the Framework's rule load at start-up (004:201 to 004:205), an application's open (the
SEService of 004:401 to the channel of 004:407), the mean transmit (an `omapi.call` transmit after the previous
one), and the ratios of the load and the open to one transmit (measured in this one run, on this machine).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

from bipsim.scenarios.base import ScenarioOptions
from bipsim.scenarios.omapi import OmapiRun, app_request, run_omapi
from bipsim.trace.kinds import Kind

APDUS = 50


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else APDUS
    run = OmapiRun("bench-omapi", requests=[app_request("SIM1", apdus=("000A0000",) * count)])
    with tempfile.TemporaryDirectory() as folder:
        result = run_omapi(run, ScenarioOptions(Path(folder)))
    first: dict[str, float] = {}
    for event in result.events:
        if event.step and event.step not in first:
            first[event.step] = event.t
    calls = [e for e in result.events if e.kind == Kind.OMAPI_CALL and e.src.value == "ap"]
    transmits = [e.t for e in calls if e.field("api") == "transmit"]
    opened = next(e.t for e in calls if e.field("api") == "openLogicalChannel")
    gaps = [b - a for a, b in zip([opened, *transmits], transmits, strict=False)]
    load = first["004:205"] - first["004:201"]
    open_time = opened - first["004:401"]
    per_apdu = statistics.mean(gaps)
    print(
        json.dumps(
            {
                "bench": "omapi",
                "apdus": len(transmits),
                "rule_load_s": round(load, 4),
                "open_s": round(open_time, 4),
                "transmit_ms": round(per_apdu * 1000, 3),
                "rule_load_over_transmit": round(load / per_apdu, 2),
                "open_over_transmit": round(open_time / per_apdu, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
