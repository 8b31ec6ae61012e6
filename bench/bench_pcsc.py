"""APDUs through PC/SC: the simulated card served by `bipsim card serve --vpcd` to a private pcscd (vsmartcard's
vpcd reader, tests/pcsc_peer.py), driven by pyscard, against the same APDUs on the in-process card
(bipsim.uicc.card.SimCard.process) in the same run. The APDUs are what a terminal explores a UICC with: SELECT
MF / EF_ICCID / ADF_USIM by AID, READ BINARY (by FID and by SFI), READ RECORD of EF_DIR, STATUS.

Prints one JSON line: both rates, their ratio, and the per-APDU latency through PC/SC (median and 99th
percentile). Needs pcscd, the vpcd driver, `unshare -m` (root) and pyscard; prints {"skipped": reason} without.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bipsim.uicc.card import ATR, SimCard  # noqa: E402
from bipsim.uicc.fs import USIM_AID  # noqa: E402
from bipsim.uicc.profile import load_profile  # noqa: E402

MIX = [
    bytes.fromhex(text)
    for text in (
        "00A4000C023F00",
        "00A4000C022FE2",
        "00B000000A",
        "00A4000C022F00",
        "00B2010420",
        "00A4040C10" + USIM_AID.hex(),
        "00B0870009",
        "80F2000C00",
    )
]
ROUNDS = 300  # passes over the mix through PC/SC (2400 APDUs)
INPROC_ROUNDS = 3000


def skip(reason: str) -> None:
    print(json.dumps({"bench": "pcsc", "skipped": reason}))
    sys.exit(0)


def in_process() -> float:
    card = SimCard(load_profile())
    start = time.perf_counter()
    for _ in range(INPROC_ROUNDS):
        for apdu in MIX:
            card.process(apdu)
    return INPROC_ROUNDS * len(MIX) / (time.perf_counter() - start)


def main() -> None:
    try:
        from tests.pcsc_peer import PcscPeer, _free_port_pair, skip_reason
    except ImportError as exc:
        skip(f"tests/pcsc_peer.py not importable: {exc}")
    try:
        reason = skip_reason()
    except BaseException as exc:  # pytest's skip/fail outcome when pcscd is missing
        skip(str(exc))
    if reason is not None:
        skip(reason)
    with tempfile.TemporaryDirectory() as tmp:
        peer = PcscPeer(Path(tmp), _free_port_pair())
        peer.start()
        card = subprocess.Popen(
            [sys.executable, "-m", "bipsim", "card", "serve", "--vpcd", f"127.0.0.1:{peer.vpcd_port}"],
            cwd=REPO,
            stderr=subprocess.DEVNULL,
        )
        try:
            # libpcsclite reads the socket's name once, at this process's first PC/SC call
            os.environ["PCSCLITE_CSOCK_NAME"] = peer.socket
            try:
                from smartcard.Exceptions import NoCardException
                from smartcard.System import readers
            except ImportError as exc:
                skip(f"pyscard is not installed: {exc}")
            reader = next(r for r in readers() if str(r) == peer.reader)
            connection = reader.createConnection()
            deadline = time.monotonic() + 30
            while True:  # the card connects to vpcd and pcscd notices it: poll with a deadline
                try:
                    connection.connect()
                    break
                except NoCardException:
                    if time.monotonic() > deadline:
                        skip("the served card never appeared in the reader")
                    time.sleep(0.05)
            assert bytes(connection.getATR()) == ATR
            commands = [list(apdu) for apdu in MIX]
            for command in commands:  # warm-up
                connection.transmit(command)
            latencies = []
            start = time.perf_counter()
            for _ in range(ROUNDS):
                for command in commands:
                    t0 = time.perf_counter()
                    connection.transmit(command)
                    latencies.append(time.perf_counter() - t0)
            pcsc_rate = len(latencies) / (time.perf_counter() - start)
            connection.disconnect()
            connection.release()  # before pcscd goes: the context is released while it is there
        finally:
            card.terminate()
            card.wait(10)
            peer.stop()
    inproc_rate = in_process()
    latencies.sort()
    print(
        json.dumps(
            {
                "bench": "pcsc",
                "apdus": len(latencies),
                "pcsc_apdus_per_s": round(pcsc_rate, 1),
                "inprocess_apdus_per_s": round(inproc_rate, 1),
                "ratio": round(pcsc_rate / inproc_rate, 5),
                "pcsc_latency_ms_median": round(statistics.median(latencies) * 1000, 3),
                "pcsc_latency_ms_p99": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
                "inprocess_latency_ms": round(1000 / inproc_rate, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
