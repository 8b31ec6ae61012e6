"""The CP's two card slots over AT (docs/protocols.md, "Card slots and card presence on DLC 1"): AT%SLOT per line,
AT%SLOTS?, +CCHO sessions unique across slots and bound to their slot, and the 27.007 logical-channel rules
(sections 8.43 +CGLA, 8.45 +CCHO, 8.46 +CCHC) the CP applies: the class byte recoded to the session's channel,
61 xx passed back as it is, MANAGE CHANNEL and SELECT refusals as +CME ERROR with no channel left open."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from bipsim.cp.card_slot import CardSlot, NoCard
from bipsim.cp.commands import ModemCommands
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork
from bipsim.link.at_server import AtServer
from bipsim.trace.recorder import Tracer
from bipsim.uicc.fs import USIM_AID
from bipsim.uicc.profile import dump_profile, load_profile
from bipsim.uicc.transport import ApduTransport
from tests.test_cp_commands import Dte, info

IMSI1 = load_profile(None).imsi
IMSI2 = "001019876543210"
AID = USIM_AID.hex().upper()
SELECT_IMSI = "00A4000C026F07"
READ_IMSI = "00B0000009"


def imsi_of(hex_response: str) -> str:
    """The IMSI's digits from EF_IMSI's bytes (TS 31.102 section 4.2.2), as +CRSM/+CGLA show them."""
    data = bytes.fromhex(hex_response)
    return "".join(f"{b & 0x0F}{b >> 4}" for b in data[1 : 1 + data[0]])[1:]


@dataclass
class Phone:
    commands: ModemCommands
    slots: list[CardSlot]
    tracer: Tracer
    nursery: trio.Nursery

    async def line(self) -> Dte:
        """A new AT line (a DLC) on the same modem, with echo off and numeric +CME errors."""
        a, b = trio.testing.memory_stream_pair()
        server = AtServer(b)
        self.commands.install(server)
        self.nursery.start_soon(server.run)
        dte = Dte(a)
        await dte.at("ATE0")
        await dte.at("AT+CMEE=1")
        return dte

    def apdus(self, slot: int) -> list[str]:
        """The hex of every C-APDU sent to `slot`'s card (slot 2's events carry fields.slot)."""
        return [
            event.hex or ""
            for event in self.tracer.events
            if event.kind == "apdu.command" and (event.fields or {}).get("slot", 1) == slot
        ]


def make_phone(nursery: trio.Nursery, card1: ApduTransport, card2: ApduTransport | None) -> Phone:
    tracer = Tracer(keep=True)
    slots = [CardSlot(1, card1, tracer=tracer)]
    if card2 is not None:
        slots.append(CardSlot(2, card2, tracer=tracer))
    commands = ModemCommands(slots[0].driver, CellularNetwork(), slots=slots)
    return Phone(commands, slots, tracer, nursery)


def second_card(tmp_path: Path) -> ApduTransport:
    path = tmp_path / "sim2.toml"
    path.write_text(dump_profile(load_profile().with_overrides(imsi=IMSI2, iccid="8988211000000000029")))
    card, _ = simulated_card(str(path), None, Tracer())
    return card


@pytest.fixture
async def phone(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Phone]:
    card1, _ = simulated_card(None, None, Tracer())
    yield make_phone(nursery, card1, second_card(tmp_path))


async def test_slot_commands_and_their_forms(phone: Phone) -> None:
    dte = await phone.line()
    assert info(await dte.at("AT%SLOT=?"), "") == ["%SLOT: (1,2)"]
    assert info(await dte.at("AT%SLOT?"), "") == ["%SLOT: 1"]
    assert info(await dte.at("AT%SLOTS?"), "") == ["%SLOTS: 1,1,2,1"]
    assert await dte.at("AT%SLOT=2") == "\r\nOK\r\n"
    assert info(await dte.at("AT%SLOT?"), "") == ["%SLOT: 2"]
    for bad in ("AT%SLOT=3", "AT%SLOT=0", 'AT%SLOT="x"', "AT%SLOT=1,2"):
        assert await dte.at(bad) == "\r\n+CME ERROR: 50\r\n", bad
    assert info(await dte.at("AT%SLOT?"), "") == ["%SLOT: 2"]  # a refused choice changes nothing
    assert await dte.at("AT%SLOT") == "\r\nERROR\r\n"
    assert await dte.at("AT%SLOTS") == "\r\nERROR\r\n"
    assert await dte.at("AT%SLOTS=?") == "\r\nOK\r\n"
    assert await dte.at("ATZ") == "\r\nOK\r\n"  # a factory reset chooses slot 1 again
    await dte.at("ATE0")
    await dte.at("AT+CMEE=1")
    assert info(await dte.at("AT%SLOT?"), "") == ["%SLOT: 1"]


async def test_one_slot_modem_and_an_empty_second_slot(nursery: trio.Nursery) -> None:
    card1, _ = simulated_card(None, None, Tracer())
    single = make_phone(nursery, card1, None)
    dte = await single.line()
    assert info(await dte.at("AT%SLOT=?"), "") == ["%SLOT: (1)"]
    assert info(await dte.at("AT%SLOTS?"), "") == ["%SLOTS: 1,1"]
    assert await dte.at("AT%SLOT=2") == "\r\n+CME ERROR: 50\r\n"

    card1b, _ = simulated_card(None, None, Tracer())
    empty = make_phone(nursery, card1b, NoCard())
    dte = await empty.line()
    assert info(await dte.at("AT%SLOTS?"), "") == ["%SLOTS: 1,1,2,0"]
    assert await dte.at("AT%SLOT=2") == "\r\nOK\r\n"
    assert await dte.at("AT+CPIN?") == "\r\n+CME ERROR: 10\r\n"
    assert await dte.at("AT+CIMI") == "\r\n+CME ERROR: 10\r\n"
    assert await dte.at(f'AT+CCHO="{AID}"') == "\r\n+CME ERROR: 10\r\n"
    assert await dte.at("AT+CPIN=?") == "\r\nOK\r\n"  # the forms of a command need no card
    assert await dte.at("AT%SLOT=1") == "\r\nOK\r\n"
    assert info(await dte.at("AT+CPIN?"), "") == ["+CPIN: READY"]
    assert empty.apdus(2) == []  # nothing was ever sent to the empty slot


async def test_each_line_addresses_its_own_slot(phone: Phone) -> None:
    one, two = await phone.line(), await phone.line()
    assert await two.at("AT%SLOT=2") == "\r\nOK\r\n"
    assert info(await one.at("AT+CIMI"), "") == [IMSI1]
    assert info(await two.at("AT+CIMI"), "") == [IMSI2]
    assert info(await one.at("AT%SLOT?"), "") == ["%SLOT: 1"]
    lines = info(await two.at("AT+CRSM=176,28423,0,0,9"), "")
    match = re.fullmatch(r'\+CRSM: 144,0,"([0-9A-F]{18})"', lines[0])
    assert match and imsi_of(match.group(1)) == IMSI2
    select = f"00A4040C{len(USIM_AID):02X}{AID}"
    assert info(await two.at(f'AT+CSIM={len(select)},"{select}"'), "") == ['+CSIM: 4,"9000"']
    assert info(await two.at("AT+CPIN?"), "") == ["+CPIN: READY"]
    assert any(apdu.startswith("00B00000") for apdu in phone.apdus(2))
    assert phone.apdus(1) and phone.apdus(2)


async def test_sessions_are_unique_across_slots_and_stay_on_their_slot(phone: Phone) -> None:
    dte = await phone.line()
    assert info(await dte.at(f'AT+CCHO="{AID}"'), "") == ["+CCHO: 1"]  # slot 1
    assert await dte.at("AT%SLOT=2") == "\r\nOK\r\n"
    assert info(await dte.at(f'AT+CCHO="{AID}"'), "") == ["+CCHO: 2"]  # slot 2: both cards gave channel 1
    assert await dte.at("AT%SLOT=1") == "\r\nOK\r\n"
    # session 2 is slot 2's, whatever %SLOT says now
    assert info(await dte.at(f'AT+CGLA=2,{len(SELECT_IMSI)},"{SELECT_IMSI}"'), "") == ['+CGLA: 4,"9000"']
    lines = info(await dte.at(f'AT+CGLA=2,{len(READ_IMSI)},"{READ_IMSI}"'), "")
    assert imsi_of(lines[0].split('"')[1][:-4]) == IMSI2
    assert info(await dte.at(f'AT+CGLA=1,{len(SELECT_IMSI)},"{SELECT_IMSI}"'), "") == ['+CGLA: 4,"9000"']
    lines = info(await dte.at(f'AT+CGLA=1,{len(READ_IMSI)},"{READ_IMSI}"'), "")
    assert imsi_of(lines[0].split('"')[1][:-4]) == IMSI1
    # closing goes to the session's slot too, and an id is never handed out again
    assert await dte.at("AT+CCHC=2") == "\r\nOK\r\n"
    assert "00708001" in phone.apdus(2)
    assert info(await dte.at(f'AT+CCHO="{AID}"'), "") == ["+CCHO: 3"]
    assert await dte.at(f'AT+CGLA=2,{len(READ_IMSI)},"{READ_IMSI}"') == "\r\n+CME ERROR: 21\r\n"


async def test_cgla_length_is_the_hex_length(phone: Phone) -> None:
    dte = await phone.line()
    assert info(await dte.at(f'AT+CCHO="{AID}"'), "") == ["+CCHO: 1"]
    before = len(phone.apdus(1))
    for bad in (f'AT+CGLA=1,5,"{READ_IMSI}"', f'AT+CGLA=1,10,"{READ_IMSI}00"', 'AT+CGLA=1,4,"00B0"'):
        assert await dte.at(bad) == "\r\n+CME ERROR: 50\r\n", bad
    assert len(phone.apdus(1)) == before  # nothing reached the card


@pytest.mark.parametrize(
    ("opens", "cla", "sent"),
    [
        (1, "00", "01"),  # channel 1
        (1, "81", "81"),  # lpac's class on channel 1
        (2, "81", "82"),  # lpac's class on channel 2: recoded
        (2, "03", "02"),  # a TE's wrong channel bits: recoded
        (4, "01", "40"),  # channel 4: the further interindustry class (TS 102 221 section 10.1.1)
        (5, "81", "C1"),  # channel 5, proprietary class kept
    ],
)
async def test_cgla_class_byte_is_recoded_to_the_sessions_channel(
    phone: Phone, opens: int, cla: str, sent: str
) -> None:
    dte = await phone.line()
    for session in range(1, opens + 1):
        assert info(await dte.at(f'AT+CCHO="{AID}"'), "") == [f"+CCHO: {session}"]
    command = f"{cla}F2000C00"  # STATUS, no data: harmless on any channel
    assert re.fullmatch(
        r'\+CGLA: \d+,"[0-9A-F]*"', info(await dte.at(f'AT+CGLA={opens},10,"{command}"'), "")[0]
    )
    assert phone.apdus(1)[-1] == f"{sent}F2000C00"


async def test_cgla_passes_61xx_back_and_get_response_follows_on_the_session(phone: Phone) -> None:
    """27.007 section 8.43: the card's answer goes back as it is; T=0 GET RESPONSE is the TE's to send."""
    dte = await phone.line()
    assert info(await dte.at(f'AT+CCHO="{AID}"'), "") == ["+CCHO: 1"]
    select_fcp = "00A40004026F07"  # P2 04: return the FCP, which a T=0 card announces with 61 xx
    lines = info(await dte.at(f'AT+CGLA=1,{len(select_fcp)},"{select_fcp}"'), "")
    match = re.fullmatch(r'\+CGLA: 4,"61([0-9A-F]{2})"', lines[0])
    assert match, lines
    length = int(match.group(1), 16)
    get = f"00C00000{length:02X}"  # channel bits 0: the CP puts the session's channel in
    lines = info(await dte.at(f'AT+CGLA=1,10,"{get}"'), "")
    fcp = lines[0].split('"')[1]
    assert (
        lines[0].startswith(f"+CGLA: {2 * (length + 2)},") and fcp.startswith("62") and fcp.endswith("9000")
    )
    assert phone.apdus(1)[-1] == f"01C00000{length:02X}"


async def test_no_more_channels_is_memory_full_and_no_channel_leaks(phone: Phone) -> None:
    dte = await phone.line()
    opened = []
    while True:
        text = await dte.at(f'AT+CCHO="{AID}"')
        if "+CME ERROR" in text:
            break
        opened.append(info(text, "")[0])
        assert len(opened) <= 19, "the card has 19 logical channels (TS 102 221 section 10.1.1)"
    assert text == "\r\n+CME ERROR: 20\r\n"  # MANAGE CHANNEL 68 81 -> memory full (docs/protocols.md)
    assert len(opened) == 19
    # a SELECT that fails closes its channel again: after 6A 82 the card still has exactly one free channel
    assert await dte.at("AT+CCHC=19") == "\r\nOK\r\n"
    assert await dte.at('AT+CCHO="A0000000FFFF"') == "\r\n+CME ERROR: 22\r\n"
    assert phone.apdus(1)[-1] == "00708013"  # MANAGE CHANNEL close of channel 19 (0x13)
    assert info(await dte.at(f'AT+CCHO="{AID}"'), "") == ["+CCHO: 20"]


class ScriptedCard:
    """A card whose MANAGE CHANNEL open and SELECT answers are given; it records what it was sent."""

    def __init__(self, manage: str, select: str) -> None:
        self.manage, self.select = bytes.fromhex(manage), bytes.fromhex(select)
        self.sent: list[str] = []

    async def power_on(self) -> bytes:
        await trio.lowlevel.checkpoint()
        return bytes.fromhex("3B00")

    async def transmit(self, command: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        self.sent.append(command.hex().upper())
        if command[1] == 0x70:
            return self.manage if command[2] == 0x00 else b"\x90\x00"
        if command[1] == 0xA4:
            return self.select
        return b"\x6d\x00"

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()


@pytest.mark.parametrize(
    ("manage", "select", "answer", "closed"),
    [
        ("029000", "9000", "+CCHO: 1", False),  # opened and selected
        ("029000", "6283", "+CCHO: 1", False),  # selected, file deactivated: a warning, still selected
        ("029000", "6A82", "+CME ERROR: 22", True),  # not found: the channel is closed again
        ("029000", "6A81", "+CME ERROR: 22", True),
        ("029000", "6985", "+CME ERROR: 3", True),  # conditions of use not satisfied: not allowed
        ("029000", "6982", "+CME ERROR: 3", True),
        ("029000", "6999", "+CME ERROR: 3", True),  # applet selection failed
        ("029000", "6F00", "+CME ERROR: 13", True),  # anything else: SIM failure
        ("6881", "9000", "+CME ERROR: 20", False),  # no more channels: memory full
        ("6D00", "9000", "+CME ERROR: 4", False),  # no MANAGE CHANNEL at all: not supported
        ("6E00", "9000", "+CME ERROR: 4", False),
        ("6A86", "9000", "+CME ERROR: 13", False),
        ("9000", "9000", "+CME ERROR: 13", False),  # no channel number in the answer
    ],
)
async def test_ccho_card_refusals_table(
    nursery: trio.Nursery, manage: str, select: str, answer: str, closed: bool
) -> None:
    card = ScriptedCard(manage, select)
    phone = make_phone(nursery, card, None)
    dte = await phone.line()
    text = await dte.at(f'AT+CCHO="{AID}"')
    if answer.startswith("+CCHO"):
        assert info(text, "") == [answer]
    else:
        assert text == f"\r\n{answer}\r\n"
        assert not phone.commands.sessions
    assert ("00708002" in card.sent) is closed
