"""What the CP's card slot (cp/card_slot.py: presence gate in front of the card's transport) costs per APDU, one
JSON line.

The same APDUs (READ BINARY of EF_IMSI after selecting it, the +CRSM/+CIMI shape) go through a CardDriver straight
on the simulated card and through a CardDriver on a CardSlot around it, interleaved in one run so both see the same
machine, the best round of each kept, in CPU time of this process. `ratio_slot_to_direct` is the slot's APDU rate over the direct one (1.0:
free).
"""

from __future__ import annotations

import json
import time

import trio

from bipsim.cp.card_driver import CardDriver
from bipsim.cp.card_slot import CardSlot
from bipsim.cp.modem import simulated_card
from bipsim.trace.recorder import Tracer

ROUNDS = 9
APDUS = 2000
READ = bytes.fromhex("00B0000009")


async def rate(driver: CardDriver) -> float:
    await driver.transmit(bytes.fromhex("00A4000C026F07"), "SELECT EF_IMSI")
    start = time.process_time()  # CPU time: a neighbour's load on the machine stretches wall time, not this
    for _ in range(APDUS):
        await driver.raw(READ, "READ BINARY")
    return APDUS / (time.process_time() - start)


async def main() -> dict[str, float]:
    direct_card, _ = simulated_card(None, None, Tracer())
    slot_card, _ = simulated_card(None, None, Tracer())
    direct = CardDriver(direct_card)
    slot = CardSlot(1, slot_card)
    await slot.power_on()
    await direct_card.power_on()
    direct_rates, slot_rates = [], []
    for round_ in range(
        ROUNDS
    ):  # alternate which goes first, so a busy moment of the machine hits both alike
        if round_ % 2:
            slot_rates.append(await rate(slot.driver))
            direct_rates.append(await rate(direct))
        else:
            direct_rates.append(await rate(direct))
            slot_rates.append(await rate(slot.driver))
    best_direct, best_slot = max(direct_rates), max(slot_rates)
    return {
        "direct_apdus_per_s": round(best_direct),
        "slot_apdus_per_s": round(best_slot),
        "ratio_slot_to_direct": round(best_slot / best_direct, 3),
    }


if __name__ == "__main__":
    print(json.dumps(trio.run(main)))
