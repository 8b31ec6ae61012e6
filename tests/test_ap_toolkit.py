"""The AP's SIM toolkit (ap/toolkit.py): policies answering proactive commands (sans-IO), and the whole loop over
AT: the AP's ToolkitService on one end of a stream, the CP's 27.007 section 12 set, BIP service and the simulated
card's menu applet on the other (uicc/usat_menu.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from bipsim.ap.toolkit import HostToolkit, Policy, PolicyError, ToolkitService, menu_selection
from bipsim.cp.bip_service import BipService
from bipsim.cp.card_driver import CardDriver
from bipsim.cp.commands import ModemCommands
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork
from bipsim.cp.usat_commands import UsatCommands
from bipsim.link.at_chat import AtChat
from bipsim.link.at_server import AtServer
from bipsim.trace.events import Actor
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from bipsim.uicc.cat import (
    CommandType,
    DeviceId,
    GeneralResult,
    ProactiveCommand,
    Tag,
    decode_envelope,
    obj,
    text_decode,
)
from bipsim.uicc.gsm_text import alpha_encode
from bipsim.uicc.sim_transport import SimulatedCard
from bipsim.uicc.usat_menu import HELLO, MenuToolkit


def command(type_: CommandType, *objects: tuple[Tag, bytes], qualifier: int = 0) -> bytes:
    return ProactiveCommand.build(
        type_, [obj(tag, value) for tag, value in objects], number=3, qualifier=qualifier
    ).encode()


def items(*names: str) -> list[tuple[Tag, bytes]]:
    return [(Tag.ITEM, bytes((i,)) + alpha_encode(name)) for i, name in enumerate(names, 1)]


def test_accept_answers_each_command() -> None:
    toolkit = HostToolkit(Policy.parse("accept"))
    shown = toolkit.on_proactive(command(CommandType.DISPLAY_TEXT, (Tag.TEXT_STRING, b"\x04Hi there")))
    assert shown.response.result == (GeneralResult.OK, b"") and toolkit.shown == ["Hi there"]
    assert shown.response.number == 3 and shown.envelope is None
    picked = toolkit.on_proactive(command(CommandType.SELECT_ITEM, *items("A", "B")))
    assert picked.response.get(Tag.ITEM_IDENTIFIER).value == b"\x01"  # type: ignore[union-attr]
    default = toolkit.on_proactive(
        command(CommandType.SELECT_ITEM, *items("A", "B"), (Tag.ITEM_IDENTIFIER, b"\x02"))
    )
    assert default.response.get(Tag.ITEM_IDENTIFIER).value == b"\x02"  # type: ignore[union-attr]
    typed = toolkit.on_proactive(
        command(CommandType.GET_INPUT, (Tag.RESPONSE_LENGTH, b"\x08\x10"), qualifier=0x01)
    )
    value = typed.response.get(Tag.TEXT_STRING).value  # type: ignore[union-attr]
    assert text_decode(value) == (0x04, "bipsimxx")  # padded to the minimum length of 8
    digits = toolkit.on_proactive(command(CommandType.GET_INPUT, (Tag.RESPONSE_LENGTH, b"\x01\x02")))
    assert text_decode(digits.response.get(Tag.TEXT_STRING).value)[1] == "12"  # type: ignore[union-attr]
    ucs2 = toolkit.on_proactive(command(CommandType.GET_INKEY, qualifier=0x03))
    assert ucs2.response.get(Tag.TEXT_STRING).value == b"\x08\x00y"  # type: ignore[union-attr]
    # bit 4 of GET INKEY is "immediate digit response" (TS 102 223 section 6.8.5), not packing: the key stays 8-bit
    immediate = toolkit.on_proactive(command(CommandType.GET_INKEY, qualifier=0x09))
    assert immediate.response.get(Tag.TEXT_STRING).value == b"\x04y"  # type: ignore[union-attr]
    # bit 1 clear: digits only, so the default key is a digit
    digit = toolkit.on_proactive(command(CommandType.GET_INKEY, qualifier=0x00))
    assert digit.response.get(Tag.TEXT_STRING).value == b"\x041"  # type: ignore[union-attr]
    packed = toolkit.on_proactive(
        command(CommandType.GET_INPUT, (Tag.RESPONSE_LENGTH, b"\x01\x06"), qualifier=0x09)
    )
    assert packed.response.get(Tag.TEXT_STRING).value[0] == 0x00  # type: ignore[union-attr]  # GET INPUT packs
    yes = toolkit.on_proactive(command(CommandType.GET_INKEY, qualifier=0x04))
    assert yes.response.get(Tag.TEXT_STRING).value == b"\x04\x01"  # type: ignore[union-attr]
    menu = toolkit.on_proactive(
        command(CommandType.SET_UP_MENU, (Tag.ALPHA_IDENTIFIER, alpha_encode("Top")), *items("One", "Two"))
    )
    assert toolkit.menu == [(1, "One"), (2, "Two")] and toolkit.menu_title == "Top"
    assert menu.envelope is None  # accept selects nothing
    toolkit.on_proactive(command(CommandType.SET_UP_IDLE_MODE_TEXT, (Tag.TEXT_STRING, b"\x04idle")))
    assert toolkit.idle_text == "idle"
    browser = toolkit.on_proactive(command(CommandType.LAUNCH_BROWSER, (Tag.URL, b"http://x")))
    assert browser.decision["url"] == "http://x" and browser.response.result[0] == GeneralResult.OK
    call = toolkit.on_proactive(command(CommandType.SET_UP_CALL))
    assert call.response.result[0] == GeneralResult.BEYOND_TERMINAL_CAPABILITIES


def test_select_policy_sends_menu_selection_once() -> None:
    toolkit = HostToolkit(Policy.parse("select:2"))
    first = toolkit.on_proactive(command(CommandType.SET_UP_MENU, *items("One", "Two")))
    assert first.envelope is not None
    envelope = decode_envelope(first.envelope.encode())
    assert envelope.tag == 0xD3 and envelope.devices == (DeviceId.KEYPAD, DeviceId.UICC)
    assert envelope.get(Tag.ITEM_IDENTIFIER).value == b"\x02"  # type: ignore[union-attr]
    assert first.envelope == menu_selection(2)
    again = toolkit.on_proactive(command(CommandType.SET_UP_MENU, *items("One", "Two")))
    assert again.envelope is None


def test_refuse_policy() -> None:
    toolkit = HostToolkit(Policy.parse("refuse"))
    expected = {
        CommandType.DISPLAY_TEXT: GeneralResult.SESSION_TERMINATED_BY_USER,
        CommandType.SELECT_ITEM: GeneralResult.SESSION_TERMINATED_BY_USER,
        CommandType.LAUNCH_BROWSER: GeneralResult.USER_DID_NOT_ACCEPT,
        CommandType.SET_UP_MENU: GeneralResult.BEYOND_TERMINAL_CAPABILITIES,
    }
    for type_, general in expected.items():
        assert toolkit.on_proactive(command(type_)).response.result[0] == general


def test_script_policy(tmp_path: Path) -> None:
    script = tmp_path / "answers.txt"
    script.write_text("# the user\nmenu 3\nitem 2  # the second\ntext hello\nbusy\nresult 32\n")
    toolkit = HostToolkit(Policy.parse(f"script:{script}"))
    menu = toolkit.on_proactive(command(CommandType.SET_UP_MENU, *items("a", "b", "c")))
    assert menu.envelope == menu_selection(3)
    picked = toolkit.on_proactive(command(CommandType.SELECT_ITEM, *items("x", "y")))
    assert picked.response.get(Tag.ITEM_IDENTIFIER).value == b"\x02"  # type: ignore[union-attr]
    typed = toolkit.on_proactive(command(CommandType.GET_INPUT, qualifier=0x01))
    assert text_decode(typed.response.get(Tag.TEXT_STRING).value)[1] == "hello"  # type: ignore[union-attr]
    busy = toolkit.on_proactive(command(CommandType.DISPLAY_TEXT))
    assert busy.response.result == (GeneralResult.TERMINAL_UNABLE, b"\x01")
    odd = toolkit.on_proactive(command(CommandType.DISPLAY_TEXT))
    assert odd.response.result[0] == 0x32
    after = toolkit.on_proactive(command(CommandType.DISPLAY_TEXT))  # the script is used up: accept
    assert after.response.result[0] == GeneralResult.OK


@pytest.mark.parametrize("text", ["maybe", "select:0", "select:x", "script:", "script:/nonexistent/file"])
def test_bad_policies(text: str) -> None:
    with pytest.raises(PolicyError):
        Policy.parse(text)


def test_bad_script_line_names_its_place(tmp_path: Path) -> None:
    script = tmp_path / "bad.txt"
    script.write_text("ok\nitem zero\n")
    with pytest.raises(PolicyError, match="bad.txt:2"):
        Policy.parse(f"script:{script}")


def test_malformed_proactive_command_is_an_error() -> None:
    with pytest.raises(ValueError):
        HostToolkit(Policy.parse("accept")).on_proactive(b"\xd0\x05\x81")


class NoBearer:
    embodiment = 1
    name = "none"

    async def connect(self, channel: int, request: object) -> trio.abc.Stream:
        raise AssertionError("the menu card opens no channel")

    async def disconnect(self, channel: int, stream: trio.abc.Stream) -> None:
        raise AssertionError("no channel")


async def test_the_ap_toolkit_drives_the_cards_menu(nursery: trio.Nursery, tmp_path: Path) -> None:
    transport, _ = simulated_card("usat-menu", None, Tracer(keep=True))
    assert isinstance(transport, SimulatedCard)
    menu = transport.card.toolkit
    assert isinstance(menu, MenuToolkit)
    driver = CardDriver(transport)
    core = ModemCommands(driver, CellularNetwork())
    cp_tracer = Tracer(keep=True)
    usat = UsatCommands(core, cp_tracer, {})
    core.command_sets = [usat]
    service = BipService(driver, NoBearer(), poll_interval=0.05)  # type: ignore[arg-type]
    usat.attach_service(service)
    a, b = trio.testing.memory_stream_pair()
    server = AtServer(b)
    core.install(server)
    nursery.start_soon(server.run)
    await nursery.start(service.run)
    chat = AtChat(a, local=Actor.AP, remote=Actor.CP)
    nursery.start_soon(chat.run)
    ap_tracer = Tracer(keep=True)
    # the user selects "Choose" (2), then picks the third colour
    script = tmp_path / "user.txt"
    script.write_text("menu 2\nitem 3\nok\n")
    toolkit = ToolkitService(chat, HostToolkit(Policy.parse(f"script:{script}")), tracer=ap_tracer)
    nursery.start_soon(toolkit.run)
    with trio.fail_after(10):
        await toolkit.wait_for(replies=3, sessions_ended=2)
    assert [(t, g) for t, g, _ in menu.answers] == [
        (CommandType.SET_UP_MENU, 0),
        (CommandType.SELECT_ITEM, 0),
        (CommandType.DISPLAY_TEXT, 0),
    ]
    assert toolkit.toolkit.shown == ["You chose Blue"]
    events = [e for e in ap_tracer.events if e.kind == Kind.USAT_TOOLKIT]
    assert [e.fields["command"] for e in events] == ["SET UP MENU", "SELECT ITEM", "DISPLAY TEXT"]  # type: ignore[index]
    assert events[0].fields["menu_selection"] == 2 and events[1].fields["item"] == 3  # type: ignore[index]
    handed = [e.fields["command"] for e in cp_tracer.events if e.kind == Kind.USAT_HANDOVER]  # type: ignore[index]
    assert handed == ["SET UP MENU", "SELECT ITEM", "DISPLAY TEXT"]
    assert HELLO not in toolkit.toolkit.shown


def test_usat_menu_scenario_shows_the_dialogue_on_the_line(tmp_path: Path) -> None:
    """The scenario's processes (CP, AP) on a pty pair: the AT lines of 27.007 section 12 in the merged trace."""
    from bipsim.scenarios.base import ScenarioOptions
    from bipsim.scenarios.registry import SCENARIOS

    events = SCENARIOS["usat-menu"](ScenarioOptions(tmp_path)).run.events
    at = [e for e in events if e.layer.value == "at"]
    urcs = [e.data.decode("latin-1").strip() for e in at if e.kind == Kind.AT_URC and e.data]
    commands = [e.data.decode("latin-1").strip() for e in at if e.kind == Kind.AT_COMMAND and e.data]
    assert sum(line.startswith('+CUSATP: "D0') for line in urcs) == 3
    assert urcs.count("+CUSATEND") >= 2
    assert any(line.startswith("AT+CUSATW=0,") for line in commands) and "AT+CUSATA=2" in commands
    assert sum(line.startswith('AT+CUSATT="81') for line in commands) == 3
    (selection,) = [line for line in commands if line.startswith("AT+CUSATE=")]
    envelope = decode_envelope(bytes.fromhex(selection.split('"')[1]))
    assert envelope.get(Tag.ITEM_IDENTIFIER).value == b"\x02"  # type: ignore[union-attr]
