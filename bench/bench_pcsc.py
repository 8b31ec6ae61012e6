"""APDUs through PC/SC: the simulated card served by `bipsim card serve --vpcd` to a private pcscd (vsmartcard's
vpcd reader, tests/pcsc_peer.py), driven by pyscard, against the same APDUs on the in-process card
(bipsim.uicc.card.SimCard.process) in the same run. The APDUs are what a terminal explores a UICC with: SELECT
MF / EF_ICCID / ADF_USIM by AID, READ BINARY (by FID and by SFI), READ RECORD of EF_DIR, STATUS.

Prints one JSON line: both rates, their ratio, and the per-APDU latency through PC/SC (median and 99th
percentile); and, on the same reader, a few APDUs to a card written without TCP_NODELAY and TCP_QUICKACK, the
trap docs/protocols.md describes (quickack_speedup: how many times faster `card serve` is). Needs pcscd, the vpcd driver, `unshare -m` (root) and pyscard; prints {"skipped": reason} without.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

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
NAIVE_ROUNDS = 5  # the same through a card without TCP_QUICKACK: 40 APDUs, each may wait for a delayed ACK
INPROC_ROUNDS = 3000


def skip(reason: str) -> None:
    print(json.dumps({"bench": "pcsc", "skipped": reason}))
    sys.exit(0)


def naive_card(port: int, stop: threading.Event) -> None:
    """A vpcd card as one would first write it: blocking socket, one write per answer, but neither TCP_NODELAY
    nor TCP_QUICKACK. Runs in a thread of the bench until `stop` and the connection ends."""
    card = SimCard(load_profile())
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(0.2)
        buffer = b""
        while not stop.is_set():
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                return
            buffer += chunk
            while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2], "big"):
                size = int.from_bytes(buffer[:2], "big")
                payload, buffer = buffer[2 : 2 + size], buffer[2 + size :]
                if size == 1:
                    if payload[0] in (1, 2):
                        card.reset()
                    answer = ATR if payload[0] == 4 else b""
                else:
                    answer = card.process(payload)
                if answer:
                    sock.sendall(len(answer).to_bytes(2, "big") + answer)


def connect(readers_of: Any, reader_name: str, no_card: type[Exception]) -> Any:
    """A connection to the card in `reader_name`, polling (with a deadline) until pcscd has noticed the card."""
    reader = next(r for r in readers_of() if str(r) == reader_name)
    connection = reader.createConnection()
    deadline = time.monotonic() + 30
    while True:
        try:
            connection.connect()
            return connection
        except no_card:
            if time.monotonic() > deadline:
                skip("the card never appeared in the reader")
            time.sleep(0.05)


def timed(connection: Any, rounds: int) -> tuple[list[float], float]:
    """Per-APDU latencies of `rounds` passes over MIX, and the APDUs per second."""
    commands = [list(apdu) for apdu in MIX]
    for command in commands:  # warm-up
        connection.transmit(command)
    latencies = []
    start = time.perf_counter()
    for _ in range(rounds):
        for command in commands:
            t0 = time.perf_counter()
            connection.transmit(command)
            latencies.append(time.perf_counter() - t0)
    return latencies, len(latencies) / (time.perf_counter() - start)


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
            connection = connect(readers, peer.reader, NoCardException)
            assert bytes(connection.getATR()) == ATR
            latencies, pcsc_rate = timed(connection, ROUNDS)
            connection.disconnect()
            connection.release()  # before pcscd goes: the context is released while it is there
            card.terminate()
            card.wait(10)
            # the same reader with the naive card: what TCP_QUICKACK and TCP_NODELAY are for
            stop = threading.Event()
            naive = threading.Thread(target=naive_card, args=(peer.vpcd_port, stop), daemon=True)
            naive.start()
            connection = connect(readers, peer.reader, NoCardException)
            naive_latencies, naive_rate = timed(connection, NAIVE_ROUNDS)
            connection.disconnect()
            connection.release()
            stop.set()
        finally:
            if card.poll() is None:
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
                "naive_card_apdus_per_s": round(naive_rate, 1),
                "naive_card_latency_ms_median": round(statistics.median(naive_latencies) * 1000, 3),
                "quickack_speedup": round(pcsc_rate / naive_rate, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
