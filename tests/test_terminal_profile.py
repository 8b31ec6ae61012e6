"""TERMINAL PROFILE bits (TS 102 223 section 5.2), named profiles and `bipsim decode --as terminal_profile`.

The expected bit positions are those of TS 102 223 V15.3.0 section 5.2 (and TS 31.111 section 5.2 for the bits
TS 102 223 reserves for 3GPP); the byte/bit pairs below are read from that table, not from the module."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bipsim.cli import cli as main
from bipsim.cp.card_driver import TERMINAL_PROFILE
from bipsim.errors import CliError
from bipsim.uicc import terminal_profile as tp
from bipsim.uicc.cat import CommandType

# (byte, bit, a word of the specification's name) from TS 102 223 V15.3.0 section 5.2
SPEC_BITS = [
    (1, 1, "Profile download"),
    (1, 4, "Menu selection"),
    (1, 6, "Timer expiration"),
    (2, 1, "Command result"),
    (2, 6, "UCS2 Entry"),
    (2, 7, "UCS2 Display"),
    (3, 1, "DISPLAY TEXT"),
    (3, 2, "GET INKEY"),
    (3, 3, "GET INPUT"),
    (3, 4, "MORE TIME"),
    (3, 5, "PLAY TONE"),
    (3, 6, "POLL INTERVAL"),
    (3, 7, "POLLING OFF"),
    (3, 8, "REFRESH"),
    (4, 1, "SELECT ITEM"),
    (4, 2, "SEND SHORT MESSAGE"),
    (4, 5, "SET UP CALL"),
    (4, 6, "SET UP MENU"),
    (5, 1, "SET UP EVENT LIST"),
    (5, 7, "Idle screen available"),
    (6, 3, "Data available"),
    (6, 4, "Channel status"),
    (7, 1, "POWER ON CARD"),
    (8, 1, "TIMER MANAGEMENT"),
    (8, 5, "SET UP IDLE MODE TEXT"),
    (8, 6, "RUN AT COMMAND"),
    (9, 2, "SEND DTMF"),
    (9, 6, "LANGUAGE NOTIFICATION"),
    (9, 7, "LAUNCH BROWSER"),
    (12, 1, "OPEN CHANNEL"),
    (12, 2, "CLOSE CHANNEL"),
    (12, 3, "RECEIVE DATA"),
    (12, 4, "SEND DATA"),
    (12, 5, "GET CHANNEL STATUS"),
    (12, 8, "DECLARE SERVICE"),
    (13, 1, "CSD"),
    (13, 2, "GPRS"),
    (17, 1, "TCP, UICC in client mode, remote"),
    (17, 3, "TCP, UICC in server mode"),
    (17, 7, "E-UTRAN"),
    (18, 3, "USB"),
    (21, 1, "WML"),
    (22, 3, "PLAY TONE"),
    (23, 1, "SET FRAMES"),
    (25, 1, "Browsing status"),
    (28, 1, "Alignment left"),
    (29, 2, "bold"),
    (30, 5, "ACTIVATE"),
    (31, 5, "CAT over the modem interface"),
    (33, 3, "Poll Interval Negotiation"),
    (35, 1, "GET INPUT (variable time out)"),
]

RFU_BITS = [
    (7, 6),
    (7, 7),
    (7, 8),
    (10, 3),
    (10, 8),
    (16, 5),
    (19, 5),
    (21, 5),
    (26, 3),
    (27, 1),
    (28, 7),
    (29, 8),
]


def _at(byte: int, bit: int) -> tp.Facility:
    for facility in tp.FACILITIES:
        if facility.byte == byte and facility.bit <= bit < facility.bit + facility.width:
            return facility
    raise AssertionError(f"byte {byte} bit {bit} is not in the table")


@pytest.mark.parametrize(("byte", "bit", "word"), SPEC_BITS)
def test_bit_names_follow_the_specification(byte: int, bit: int, word: str) -> None:
    facility = _at(byte, bit)
    assert word.lower() in facility.name.lower()
    assert not facility.rfu


@pytest.mark.parametrize(("byte", "bit"), RFU_BITS)
def test_rfu_bits_are_marked(byte: int, bit: int) -> None:
    assert _at(byte, bit).rfu


def test_every_bit_of_the_defined_bytes_is_in_the_table_once() -> None:
    for byte in range(1, tp.PROFILE_LENGTH + 1):
        covered = [b for f in tp.FACILITIES if f.byte == byte for b in range(f.bit, f.bit + f.width)]
        assert sorted(covered) == list(range(1, 9)), f"byte {byte}"


def test_multi_bit_fields() -> None:
    profile = tp.build(["open_channel"], channels=5, screen_height=12, screen_width=40)
    assert profile[12] >> 5 == 5  # byte 13 bits 6-8
    assert profile[13] & 0x1F == 12 and profile[14] & 0x7F == 40
    assert tp.value_of(profile, tp.BY_KEY["channels"]) == 5
    decoded = {item.facility.key: item.value for item in tp.decode(profile)}
    assert decoded == {"open_channel": 1, "channels": 5, "screen_height": 12, "screen_width": 40}
    with pytest.raises(ValueError, match="does not fit"):
        tp.build([], channels=8)
    with pytest.raises(ValueError, match="RFU"):
        tp.build(["rfu_7_6"])
    with pytest.raises(ValueError, match="no terminal profile facility"):
        tp.build(["open_chanel"])


def test_bip_only_is_the_profile_of_before() -> None:
    assert tp.NAMED["bip-only"] == TERMINAL_PROFILE


def test_named_profiles_split_modem_and_host() -> None:
    modem, host = tp.NAMED["modem"], tp.NAMED["host-usat"]
    for command in tp.MODEM_COMMANDS:
        assert tp.supports_command(modem, command), CommandType(command).name
    for command in (CommandType.DISPLAY_TEXT, CommandType.SELECT_ITEM, CommandType.SET_UP_MENU):
        assert not tp.supports_command(modem, command)
        assert tp.supports_command(host, command)
    assert tp.supports(host, "menu_selection") and not tp.supports(modem, "menu_selection")
    assert tp.merge(modem, tp.HOST_USAT_TE) == host
    assert tp.conflicts(modem, tp.HOST_USAT_TE) == bytes(len(host))  # the host claims nothing the modem does
    assert tp.conflicts(modem, modem)[11] == 0x1F  # byte 12: the BIP commands
    full = tp.NAMED["full"]
    assert all(tp.supports_command(full, c) for c in tp.COMMAND_FACILITY)
    assert not any(item.facility.rfu for item in tp.decode(full))


def test_parse_profile() -> None:
    assert tp.parse_profile("modem") == tp.NAMED["modem"]
    assert tp.parse_profile("01 02:03") == b"\x01\x02\x03"
    with pytest.raises(ValueError, match="bip-only"):
        tp.parse_profile("nonsense")
    with pytest.raises(ValueError):
        tp.parse_profile("")


def test_decode_cli_names_every_set_bit_and_rfu() -> None:
    runner = CliRunner()
    profile = bytearray(tp.NAMED["host-usat"])
    profile[6] |= 0x80  # byte 7 bit 8: RFU
    result = runner.invoke(main, ["decode", "--as", "terminal_profile", profile.hex()])
    assert result.exit_code == 0, result.output
    assert "byte 4 bit 6: SET UP MENU" in result.output
    assert "byte 13 bit 6-8: Number of channels supported by terminal = 7" in result.output
    assert "byte 7 bit 8: RFU (RFU: must be 0)" in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("  byte")]
    assert len(lines) == len(tp.decode(bytes(profile)))
    apdu = "80100000" + f"{len(profile):02X}" + profile.hex()
    as_json = runner.invoke(main, ["decode", "--as", "terminal_profile", "--json", apdu])
    data = json.loads(as_json.output)
    assert data["kind"] == "terminal_profile" and data["length"] == len(profile)
    keys = {item["key"] for item in data["facilities"]}
    assert {"set_up_menu", "menu_selection", "open_channel", "rfu_7_8"} <= keys
    assert next(item for item in data["facilities"] if item["key"] == "rfu_7_8")["rfu"] is True


def test_decode_cli_bad_input() -> None:
    for bad in ("zz", "8010000000"):  # not hex; a C-APDU header and no profile
        result = CliRunner().invoke(main, ["decode", "--as", "terminal_profile", bad])
        assert isinstance(result.exception, CliError) and result.exception.exit_code == 2


async def test_the_card_driver_sends_the_configured_profile() -> None:
    """ModemOptions.terminal_profile (bipsim cp --terminal-profile) is what TERMINAL PROFILE carries at start."""
    from bipsim.cp.modem import Modem, ModemOptions, simulated_card
    from bipsim.trace.kinds import Kind
    from bipsim.trace.recorder import Tracer

    tracer = Tracer(keep=True)
    card, _ = simulated_card(None, None, tracer)
    modem = Modem(ModemOptions("/nonexistent", terminal_profile=tp.NAMED["modem"]), card, tracer=tracer)
    await modem.driver.start()
    (sent,) = [e for e in tracer.events if e.kind == Kind.CAT_TERMINAL_PROFILE]
    assert sent.data == bytes.fromhex("80100000") + bytes((len(tp.MODEM),)) + tp.MODEM
    default = Modem(ModemOptions("/nonexistent"), simulated_card(None, None, tracer)[0], tracer=tracer)
    assert default.driver.profile == TERMINAL_PROFILE == tp.NAMED["bip-only"]
