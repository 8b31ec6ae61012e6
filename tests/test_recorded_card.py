"""The recorded card plays back APDU exchanges and stops at the first divergence."""

from __future__ import annotations

from bipsim.trace.recorder import Tracer
from bipsim.uicc.recorded_card import RecordedCard


def recording() -> Tracer:
    tracer = Tracer(keep=True, origin=0.0, clock=iter(range(100)).__next__)
    tracer.emit("cp", "uicc", "apdu", "TERMINAL PROFILE", bytes.fromhex("8010000002FFFF"))
    tracer.emit("uicc", "cp", "apdu", "91 10", bytes.fromhex("9110"))
    tracer.emit("cp", "uicc", "cat", "decoded view, not replayed", b"\xd0\x00")
    tracer.emit(
        "cp",
        "uicc",
        "apdu",
        "TERMINAL RESPONSE",
        bytes.fromhex("801400000C810301400382028281830100"),
        step="S402",
    )
    tracer.emit("uicc", "cp", "apdu", "90 00", bytes.fromhex("9000"))
    return tracer


async def test_matching_terminal_plays_to_the_end() -> None:
    card = RecordedCard(recording().events)
    await card.power_on()
    assert await card.transmit(bytes.fromhex("8010000002FFFF")) == bytes.fromhex("9110")
    assert await card.transmit(bytes.fromhex("801400000C810301400382028281830100")) == bytes.fromhex("9000")
    assert card.finished and card.divergence is None


async def test_one_flipped_byte_is_reported_with_its_step() -> None:
    card = RecordedCard(recording().events)
    await card.power_on()
    await card.transmit(bytes.fromhex("8010000002FFFF"))
    answer = await card.transmit(bytes.fromhex("801400000C810301400382028281830120"))
    assert answer == bytes.fromhex("6F00")
    assert card.divergence is not None and card.divergence.index == 1
    assert "(S402)" in str(card.divergence) and "830120" in str(card.divergence)
