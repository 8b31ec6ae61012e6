"""The recorded card plays back APDU exchanges and stops at the first divergence."""

from __future__ import annotations

from bipsim.trace.recorder import Tracer
from bipsim.uicc.recorded_card import RecordedCard


def recording() -> Tracer:
    tracer = Tracer(keep=True, origin=0.0, clock=iter(range(100)).__next__)
    tracer.emit("cp", "uicc", "apdu", "TERMINAL PROFILE", bytes.fromhex("8010000002FFFF"))
    tracer.emit("uicc", "cp", "apdu", "91 10", bytes.fromhex("9110"))
    tracer.emit("cp", "uicc", "app", "decoded view, not replayed", b"\xd0\x00")
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


async def test_interleaved_commands_pair_in_order_and_file_access_may_move() -> None:
    # as the CP records them: a TR is issued, a SELECT queues behind it, then both responses arrive in order
    tracer = Tracer(keep=True, origin=0.0, clock=iter(range(100)).__next__)
    tr = bytes.fromhex("801400000C810301050082028281830100")
    select = bytes.fromhex("00A4000C026F07")
    tracer.emit("cp", "uicc", "apdu", "TERMINAL RESPONSE", tr)
    tracer.emit("cp", "uicc", "apdu", "SELECT EF_IMSI", select)
    tracer.emit("uicc", "cp", "apdu", "TERMINAL RESPONSE: 911E", bytes.fromhex("911E"))
    tracer.emit("uicc", "cp", "apdu", "SELECT EF_IMSI: 9000", bytes.fromhex("9000"))
    tracer.emit("cp", "uicc", "apdu", "FETCH", bytes.fromhex("801200001E"))
    tracer.emit("uicc", "cp", "apdu", "FETCH: OPEN CHANNEL", bytes.fromhex("D0039000"))
    card = RecordedCard(tracer.events)
    await card.power_on()
    # the live AP asked for the IMSI a little later: the file access comes after the FETCH this time
    assert await card.transmit(tr) == bytes.fromhex("911E")
    assert await card.transmit(bytes.fromhex("801200001E")) == bytes.fromhex("D0039000")
    assert await card.transmit(select) == bytes.fromhex("9000")
    assert card.finished and card.divergence is None


async def test_a_toolkit_command_out_of_order_is_a_divergence() -> None:
    card = RecordedCard(recording().events)
    await card.power_on()
    assert await card.transmit(bytes.fromhex("801400000C810301400382028281830100")) == bytes.fromhex("6F00")
    assert card.divergence is not None and card.divergence.index == 0
    assert card.next_unplayed() is card.recorded[0]
