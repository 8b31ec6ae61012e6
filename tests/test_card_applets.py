"""Applets on the card's logical channels (uicc/applets/, uicc/card.py): SELECT by AID routes a channel's APDUs to
its applet and only that channel's; SELECT of a file or another AID, MANAGE CHANNEL close and a reset end it;
partial AID selection with P2 first/next/last/previous (ISO/IEC 7816-4 section 11.1.1); MANAGE CHANNEL limited by
the profile (6881 past it); the card-level commands stay the card's; and the Android CTS OMAPI test applet's
answers, byte by byte, as the "CTS Test for Secure Element" page of source.android.com lists them (the vectors of
the parametrized test below come from that page and from CtsAndroidOmapiTestApplet.java in the Android CTS)."""

from __future__ import annotations

import re

import pytest
import trio
import trio.testing

from bipsim.cp.card_driver import CardDriver
from bipsim.cp.commands import ModemCommands
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork
from bipsim.link.at_server import AtServer
from bipsim.trace.recorder import NULL_TRACER
from bipsim.uicc.applets import AppletHost, Command
from bipsim.uicc.applets.echo import EchoApplet, pattern
from bipsim.uicc.card import SimCard
from bipsim.uicc.fs import USIM_AID
from bipsim.uicc.profile import load_profile

ARA_M = "A00000015141434C00"
ECHO = "A000000476416E64726F696443545331"
ECHO_LONG = "A000000476416E64726F696443545332"
ECHO_PREFIX = "A000000476416E64726F6964435453"  # 15 bytes: both echo AIDs


def apdu(card: SimCard, text: str) -> tuple[bytes, str]:
    out = card.process(bytes.fromhex(text.replace(" ", "")))
    return out[:-2], out[-2:].hex().upper()


@pytest.fixture
def card() -> SimCard:
    return SimCard(load_profile("omapi"))


def open_channel(card: SimCard) -> int:
    data, sw = apdu(card, "0070000001")
    assert sw == "9000" and len(data) == 1
    return data[0]


def select_aid(card: SimCard, channel: int, aid: str, p2: int = 0) -> tuple[bytes, str]:
    return apdu(card, f"{channel:02X}A404{p2:02X}{len(aid) // 2:02X}{aid}")


def fetch(card: SimCard, channel: int, sw: str) -> bytes:
    """Follows 61 xx with GET RESPONSE on `channel` until 90 00; the data of all parts."""
    out = b""
    while sw.startswith("61"):
        part, sw = apdu(card, f"{channel:02X}C00000{sw[2:]}")
        out += part
    assert sw == "9000", sw
    return out


# --- routing by channel -----------------------------------------------------------------------------------------


def test_applet_on_channel_2_is_not_seen_on_channel_1(card: SimCard) -> None:
    assert open_channel(card) == 1
    assert open_channel(card) == 2
    assert select_aid(card, 2, ECHO) == (b"", "9000")
    assert apdu(card, "02060000") == (b"", "9000")  # the echo applet's no-data instruction
    assert apdu(card, "01060000") == (b"", "6D00")  # channel 1 has the file system only
    assert apdu(card, "00060000") == (b"", "6D00")
    assert apdu(card, "01B0000001")[1] == "6986"  # and its file commands still work there (no EF yet)


def test_same_applet_on_two_channels(card: SimCard) -> None:
    one, two = open_channel(card), open_channel(card)
    assert select_aid(card, one, ECHO)[1] == "9000" and select_aid(card, two, ECHO)[1] == "9000"
    assert apdu(card, f"{one:02X}F3010C01AA00") == (bytes.fromhex("01F3010C01AA00"), "6200")
    assert apdu(card, f"{two:02X}F3020C01AA00") == (bytes.fromhex("01F3020C01AA00"), "6281")


def test_select_of_a_file_leaves_the_applet(card: SimCard) -> None:
    channel = open_channel(card)
    select_aid(card, channel, ECHO)
    assert apdu(card, f"{channel:02X}A4000C022FE2") == (b"", "9000")
    assert apdu(card, f"{channel:02X}060000")[1] == "6D00"
    assert apdu(card, f"{channel:02X}B0000001") == (b"\x98", "9000")  # EF_ICCID is the channel's EF now


def test_select_of_another_aid_replaces_the_applet(card: SimCard) -> None:
    channel = open_channel(card)
    select_aid(card, channel, ARA_M)
    assert apdu(card, f"{0x80 | channel:02X}CADF2000")[1] == "9000"
    assert select_aid(card, channel, ECHO) == (b"", "9000")
    assert apdu(card, f"{0x80 | channel:02X}CADF2000") == (b"", "6D00")  # the echo applet has no GET DATA
    sw = select_aid(card, channel, USIM_AID.hex().upper())[1]  # an ADF of the file system
    assert sw.startswith("61")
    fcp = fetch(card, channel, sw)
    assert fcp[0] == 0x62 and USIM_AID in fcp
    assert apdu(card, f"{channel:02X}060000")[1] == "6D00"


def test_a_failed_select_keeps_the_applet(card: SimCard) -> None:
    channel = open_channel(card)
    select_aid(card, channel, ECHO)
    assert select_aid(card, channel, "A0000004760000") == (b"", "6A82")
    assert apdu(card, f"{channel:02X}A4000C027777") == (b"", "6A82")
    assert apdu(card, f"{channel:02X}060000") == (b"", "9000")


def test_applet_on_the_basic_channel_leaves_card_level_commands_to_the_card(card: SimCard) -> None:
    assert select_aid(card, 0, ECHO) == (b"", "9000")
    assert apdu(card, "00060000") == (b"", "9000")
    assert apdu(card, "80100000021F00")[1] == "9000"  # TERMINAL PROFILE: the card's CAT, not the applet
    status, sw = apdu(card, "80F2000000")
    assert sw == "9000" and status[0] == 0x62  # STATUS answers the card's FCP
    assert apdu(card, "94060000") == (b"", "9000")  # a class 9X only the applet takes


def test_reset_and_close_end_the_selection(card: SimCard) -> None:
    select_aid(card, 0, ECHO)
    card.reset()
    assert apdu(card, "00060000")[1] == "6D00"
    channel = open_channel(card)
    select_aid(card, channel, ECHO)
    assert apdu(card, f"0070800{channel}00") == (b"", "9000")
    assert apdu(card, f"{channel:02X}060000") == (b"", "6881")  # closed
    assert open_channel(card) == channel
    assert apdu(card, f"{channel:02X}060000") == (b"", "6D00")  # reopened: nothing selected


def test_close_the_channel_of_the_class_byte(card: SimCard) -> None:
    channel = open_channel(card)
    select_aid(card, channel, ECHO)
    assert apdu(card, f"{channel:02X}70800000") == (b"", "9000")  # P2 = 00: this channel
    assert apdu(card, f"{channel:02X}060000")[1] == "6881"
    assert apdu(card, "0070800000") == (b"", "6A86")  # the basic channel is never closed


# --- MANAGE CHANNEL limit ------------------------------------------------------------------------------------------


def test_channels_past_the_profile_limit_are_6881(card: SimCard) -> None:
    assert [open_channel(card) for _ in range(3)] == [1, 2, 3]
    assert apdu(card, "0070000001") == (b"", "6881")
    assert apdu(card, "0070800200") == (b"", "9000")
    assert apdu(card, "0070000001") == (b"\x02", "9000")  # the freed number comes back
    assert apdu(card, "0070000001") == (b"", "6881")


def test_open_a_given_channel(card: SimCard) -> None:
    assert apdu(card, "0070000300") == (b"", "9000")  # P2 = 03: that channel, no data
    assert apdu(card, "0070000300") == (b"", "6985")  # already open
    assert apdu(card, "0070000400") == (b"", "6881")  # past the limit of 3
    assert apdu(card, "03060000")[1] == "6D00"  # open, nothing selected
    assert open_channel(card) == 1


def test_default_profile_keeps_19_channels() -> None:
    card = SimCard(load_profile())
    assert [open_channel(card) for _ in range(19)] == list(range(1, 20))
    assert apdu(card, "0070000001") == (b"", "6881")


# --- partial AID selection -----------------------------------------------------------------------------------------


def test_partial_aid_first_next_last_previous(card: SimCard) -> None:
    channel = open_channel(card)
    assert select_aid(card, channel, ECHO_PREFIX, p2=0x00) == (b"", "9000")  # first: ...31, no select data
    sw = select_aid(card, channel, ECHO_PREFIX, p2=0x02)[1]  # next: ...32, a select response
    assert sw == "6100"
    assert fetch(card, channel, sw)[:4] == bytes.fromhex("1F0081FC")
    assert select_aid(card, channel, ECHO_PREFIX, p2=0x02) == (b"", "6A82")  # no third one
    assert select_aid(card, channel, ECHO_PREFIX, p2=0x03) == (b"", "9000")  # previous: ...31 again
    assert select_aid(card, channel, ECHO_PREFIX, p2=0x01)[1] == "6100"  # last: ...32
    assert select_aid(card, channel, ECHO_PREFIX, p2=0x0C) == (b"", "9000")  # first, no response data


def test_partial_aid_walks_adfs_then_applets(card: SimCard) -> None:
    channel = open_channel(card)
    assert select_aid(card, channel, "A0")[1].startswith("61")  # the USIM ADF first
    assert apdu(card, f"{channel:02X}C0000000")[1] == "9000"
    assert select_aid(card, channel, "A0", p2=0x02) == (b"", "9000")  # then the ARA-M
    assert apdu(card, f"{0x80 | channel:02X}CADF2000")[1] == "9000"
    assert select_aid(card, channel, "A0", p2=0x02) == (b"", "9000")  # then the echo applet
    assert apdu(card, f"{channel:02X}060000") == (b"", "9000")


# --- the CTS echo applet -------------------------------------------------------------------------------------------


def test_long_select_response_through_get_response(card: SimCard) -> None:
    channel = open_channel(card)
    data, sw = select_aid(card, channel, ECHO_LONG)
    assert (data, sw) == (b"", "6100")  # 256 bytes wait for GET RESPONSE
    response = fetch(card, channel, sw)
    assert response == bytes.fromhex("1F0081FC") + bytes(range(251)) + b"\xff"
    assert select_aid(card, channel, ECHO_LONG + "00")[1] == "6A82"  # a longer AID is no partial match


WARNINGS = [
    "6200",
    "6281",
    "6282",
    "6283",
    "6285",
    "62F1",
    "62F2",
    "63F1",
    "63F2",
    "63C2",
    "6202",
    "6280",
    "6284",
]
WARNINGS += ["6286", "6300", "6381"]


@pytest.mark.parametrize("p1", range(1, 17))
def test_warning_status_words(card: SimCard, p1: int) -> None:
    select_aid(card, 0, ECHO)
    sw = WARNINGS[p1 - 1]
    assert apdu(card, f"00F3{p1:02X}06") == (b"", sw)
    assert apdu(card, f"00F3{p1:02X}0A01AA") == (b"", sw)
    assert apdu(card, f"00F3{p1:02X}0800") == (bytes.fromhex("0001FF"), sw)
    assert apdu(card, f"00F3{p1:02X}0C01AA00") == (bytes.fromhex(f"01F3{p1:02X}0C01AA00"), sw)


@pytest.mark.parametrize(
    ("command", "data", "sw"),
    [
        ("00060000", b"", "9000"),
        ("80060000", b"", "9000"),
        ("A0060000", b"", "9000"),
        ("94060000", b"", "9000"),
        ("000A000001AA", b"", "9000"),
        ("940A000001AA", b"", "9000"),
        ("0008000000", bytes(range(256)), "9000"),
        ("9408000000", bytes(range(256)), "9000"),
        ("000C000001AA00", bytes(range(256)), "9000"),
        ("00F40000", b"", "6101"),  # one byte 00, announced (no Le) ...
        ("00F4000000", b"\x00", "9000"),  # ... or given
        ("00F30006", b"", "6A86"),
        ("00F31106", b"", "6A86"),
        ("00CF0800FF", b"", "6CFF"),
        ("00EE0000", b"", "6D00"),
        ("00C0000000", b"", "6985"),  # GET RESPONSE with nothing waiting
    ],
)
def test_cts_commands(card: SimCard, command: str, data: bytes, sw: str) -> None:
    select_aid(card, 0, ECHO)
    assert apdu(card, command) == (data, sw)


@pytest.mark.parametrize(
    ("command", "length"),
    [
        ("00C2080000", 2048),
        ("00C4080002123400", 2048),
        ("00C6080000", 2048),
        ("00C8080002123400", 2048),
        ("00C27FFF00", 32767),
        ("00CF080000", 2048),
        ("94C2080000", 2048),
    ],
)
def test_segmented_responses(card: SimCard, command: str, length: int) -> None:
    select_aid(card, 0, ECHO)
    first, sw = apdu(card, command)
    assert len(first) == 256 and sw == "6100"
    whole = first + fetch(card, 0, sw)
    assert whole == pattern(length) and whole[-1] == 0xFF


def test_get_response_with_a_short_le_and_a_wrong_le(card: SimCard) -> None:
    select_aid(card, 0, ECHO)
    assert apdu(card, "00C2000300") == (bytes.fromhex("0001FF"), "9000")
    assert apdu(card, "00F40000") == (b"", "6101")
    assert apdu(card, "00C0000005") == (b"", "6C01")  # wrong Le: the right one, the data kept
    assert apdu(card, "00C0000001") == (b"\x00", "9000")
    first, sw = apdu(card, "00C2020000")  # 512 bytes
    assert sw == "6100"
    assert apdu(card, "00C0000010") == (pattern(512)[256:272], "61F0")
    assert apdu(card, "00060000") == (b"", "9000")  # another command drops what was left
    assert apdu(card, "00C0000000") == (b"", "6985")


# --- the host alone ------------------------------------------------------------------------------------------------


def test_host_refusals_are_status_words() -> None:
    host = AppletHost([EchoApplet()])
    assert not host.routes(1, 0x01, 0x06, 0)
    assert host.select(1, host.applets[0], 0x00, bytes.fromhex(ECHO), None) == (b"", 0x9000)
    assert host.routes(1, 0x01, 0x06, 0) and not host.routes(1, 0x01, 0x70, 0)
    assert not host.routes(1, 0x81, 0x12, 0)  # FETCH is the card's
    assert host.process(Command(0x01, 0xF3, 0x00, 0x06, channel=1)) == (b"", 0x6A86)
    assert host.to_dict() == {}


# --- through the CP: AT+CCHO / AT+CGLA / AT+CCHC (3GPP TS 27.007 sections 8.43, 8.45, 8.46) --------------------------


async def test_the_omapi_card_through_the_cps_logical_channel_commands(nursery: trio.Nursery) -> None:
    card, _ = simulated_card("omapi", None, NULL_TRACER)
    commands = ModemCommands(CardDriver(card), CellularNetwork())
    dte_end, cp_end = trio.testing.memory_stream_pair()
    server = AtServer(cp_end)
    commands.install(server)
    nursery.start_soon(server.run)
    buffer = bytearray()

    async def at(line: str) -> list[str]:
        await dte_end.send_all(line.encode("ascii") + b"\r")
        with trio.fail_after(5):
            while not re.search(rb"\r\n(OK|ERROR|\+CME ERROR: \d+)\r\n$", buffer):
                buffer.extend(await dte_end.receive_some())
        lines = [item for item in buffer.decode("ascii").split("\r\n") if item and item.rstrip("\r") != line]
        buffer.clear()
        return lines

    assert await at("ATE0") == ["OK"]
    assert await at("AT+CMEE=1") == ["OK"]
    assert await at(f'AT+CCHO="{ARA_M}"') == ["+CCHO: 1", "OK"]
    answer = await at('AT+CGLA=1,10,"81CAFF4000"')
    assert answer[0].startswith('+CGLA: 218,"FF4068E232') and answer[0].endswith('9000"'), answer
    assert await at(f'AT+CCHO="{ECHO}"') == ["+CCHO: 2", "OK"]
    assert await at('AT+CGLA=2,14,"02F3010C01AA00"') == ['+CGLA: 18,"01F3010C01AA006200"', "OK"]
    assert await at(f'AT+CCHO="{ECHO}"') == ["+CCHO: 3", "OK"]
    assert (await at(f'AT+CCHO="{ECHO}"'))[0].startswith("+CME ERROR:")  # a fourth channel: 6881 on the card
    assert await at("AT+CCHC=2") == ["OK"]
    assert await at(f'AT+CCHO="{ECHO}"') == ["+CCHO: 4", "OK"]  # the freed channel serves again


def test_remote_apdus_do_not_select_applets(card: SimCard) -> None:
    """An OTA session's remote APDUs (SimCard.internal_apdu) reach the file system only: selecting an applet there
    would hand the terminal's basic channel to it."""
    assert card.internal_apdu(bytes.fromhex(f"00A4040010{ECHO}")) == bytes.fromhex("6A82")
    assert apdu(card, "00060000")[1] == "6D00"  # the basic channel still has no applet
    assert card.internal_apdu(bytes.fromhex("00A4040C10" + USIM_AID.hex())) == bytes.fromhex("9000")
    assert select_aid(card, 0, ECHO) == (b"", "9000")  # the terminal's applet on the basic channel ...
    assert card.internal_apdu(bytes.fromhex("00A4000C022FE2")) == bytes.fromhex("9000")
    assert card.internal_apdu(bytes.fromhex("00B0000001")) == bytes.fromhex("989000")  # ... the file system's
    assert apdu(card, "00060000") == (b"", "9000")  # and the terminal's applet is still selected
