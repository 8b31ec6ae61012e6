"""What the card's applet routing (uicc/applets/, uicc/card.py) costs per APDU, and how fast the ARA-M serves a long
rule set, one JSON line.

In one run, on one `omapi` card: APDUs to the echo applet selected on channel 1 (INS 06, no data) against READ
BINARY of EF_ICCID on channel 2 (the file system's path through the same `SimCard.process`), interleaved rounds,
the best of each kept, in CPU time of this process. `ratio_applet_to_file` is the applet's APDU rate over the file
system's (1.0: routing is free). `rule_set_reads_per_s`: complete reads of a 32-rule set (GET DATA all, then
GET DATA next at Le = F0 until the whole length, as the Android client reads it).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

from bipsim.uicc.card import SimCard
from bipsim.uicc.profile import load_profile

ROUNDS = 7
APDUS = 5000
RULES = 32


def rate(card: SimCard, apdu: bytes) -> float:
    start = time.process_time()  # CPU time: a neighbour's load stretches wall time, not this
    for _ in range(APDUS):
        card.process(apdu)
    return APDUS / (time.process_time() - start)


def read_rules(card: SimCard) -> int:
    first = card.process(bytes.fromhex("81CAFF40F0"))[:-2]
    total = 5 + int.from_bytes(first[3:5], "big")  # FF 40 82 xx xx
    got = len(first)
    while got < total:
        got += len(card.process(bytes((0x81, 0xCA, 0xFF, 0x60, min(total - got, 0xF0))))) - 2
    return got


def main() -> dict[str, float]:
    card = SimCard(load_profile("omapi"))
    assert card.process(bytes.fromhex("0070000001")) == b"\x01\x90\x00"
    assert card.process(bytes.fromhex("01A4040010A000000476416E64726F696443545331")) == b"\x90\x00"
    assert card.process(bytes.fromhex("0070000001")) == b"\x02\x90\x00"
    assert card.process(bytes.fromhex("02A4000C022FE2")) == b"\x90\x00"
    applet, file = bytes.fromhex("01060000"), bytes.fromhex("02B000000A")
    assert card.process(applet) == b"\x90\x00" and card.process(file)[-2:] == b"\x90\x00"
    applet_rates, file_rates = [], []
    for round_ in range(ROUNDS):  # alternate which goes first, so a busy moment hits both alike
        if round_ % 2:
            file_rates.append(rate(card, file))
            applet_rates.append(rate(card, applet))
        else:
            applet_rates.append(rate(card, applet))
            file_rates.append(rate(card, file))

    rules = ",\n".join(
        f'{{aid = "A000000476416E64726F6964435453{n:02X}", hash = "{hashlib.sha256(bytes((n,))).hexdigest()}"}}'
        for n in range(RULES)
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rules.toml"
        path.write_text(f"ara_m = true\nara_m_rules = [\n{rules}\n]\n", encoding="utf-8")
        big = SimCard(load_profile(path))
    assert big.process(bytes.fromhex("0070000001")) == b"\x01\x90\x00"
    assert big.process(bytes.fromhex("01A4040009A00000015141434C00")) == b"\x90\x00"
    size = read_rules(big)
    reads = 200
    start = time.process_time()
    for _ in range(reads):
        read_rules(big)
    elapsed = time.process_time() - start
    best_applet, best_file = max(applet_rates), max(file_rates)
    return {
        "applet_apdus_per_s": round(best_applet),
        "file_apdus_per_s": round(best_file),
        "ratio_applet_to_file": round(best_applet / best_file, 3),
        "rule_set_bytes": size,
        "rule_set_reads_per_s": round(reads / elapsed),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
