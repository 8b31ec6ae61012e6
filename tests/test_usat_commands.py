"""USAT through 27.007 section 12 (cp/usat_commands.py) as a host sees it: +CUSATR/W/A/T/E and the URCs +CUSATP
and +CUSATEND over an AT server, the gateway handing non-modem proactive commands to the host, the simulated card's
menu applet (uicc/usat_menu.py) answering MENU SELECTION, and SEND SHORT MESSAGE reaching the SMSC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from bipsim.cp.bip_gateway import BipGateway, HandToHost, SendTerminalResponse, SubmitShortMessage
from bipsim.cp.bip_service import BipService
from bipsim.cp.card_driver import CardDriver
from bipsim.cp.commands import ModemCommands
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork
from bipsim.cp.usat_commands import UsatCommands, UsatState
from bipsim.link.at_chat import AtChat
from bipsim.link.at_server import AtServer
from bipsim.trace.events import Actor
from bipsim.trace.recorder import NULL_TRACER
from bipsim.uicc import terminal_profile as tp
from bipsim.uicc.cat import (
    CommandType,
    DeviceId,
    Envelope,
    EnvelopeTag,
    Event,
    GeneralResult,
    ProactiveCommand,
    Tag,
    TerminalResponse,
    alpha_decode,
    decode_proactive,
    obj,
    text_decode,
)
from bipsim.uicc.fs import ust_bytes
from bipsim.uicc.sim_transport import SimulatedCard
from bipsim.uicc.transport import CardRemoved
from bipsim.uicc.usat_menu import HELLO, ITEMS, SMS_SUBMIT, MenuToolkit


class NoBearer:
    embodiment = 1
    name = "none"

    async def connect(self, channel: int, request: object) -> trio.abc.Stream:
        raise AssertionError("the menu card opens no channel")

    async def disconnect(self, channel: int, stream: trio.abc.Stream) -> None:
        raise AssertionError("no channel to close")


@dataclass
class Answer:
    ok: bool
    lines: list[str]
    cme_error: int | None


@dataclass
class Rig:
    chat: AtChat
    usat: UsatCommands
    service: BipService
    menu: MenuToolkit
    urcs: trio.MemoryReceiveChannel[str]
    submitted: list[bytes] = field(default_factory=list)

    async def at(self, line: str) -> Answer:
        response = await self.chat.command(line, timeout=10)
        return Answer(response.ok, list(response.lines), response.cme_error)

    async def urc(self) -> str:
        with trio.fail_after(10):
            return await self.urcs.receive()

    async def proactive(self) -> ProactiveCommand:
        line = await self.urc()
        assert line.startswith('+CUSATP: "'), line
        return decode_proactive(bytes.fromhex(line.split('"')[1]))

    async def answer(self, command: ProactiveCommand, *objects: tuple[Tag, bytes], general: int = 0) -> str:
        """+CUSATT with the TR of `command`; returns the URC that follows (+CUSATEND or the next +CUSATP)."""
        tr = TerminalResponse.build(command, general, b"", [obj(tag, value) for tag, value in objects])
        response = await self.at(f'AT+CUSATT="{tr.encode().hex().upper()}"')
        assert response.ok, response
        return await self.urc()

    async def select(self, item: int) -> Answer:
        envelope = Envelope(
            (
                obj(Tag.DEVICE_IDENTITIES, bytes((DeviceId.KEYPAD, DeviceId.UICC))),
                obj(Tag.ITEM_IDENTIFIER, bytes((item,))),
            ),
            EnvelopeTag.MENU_SELECTION,
        )
        return await self.at(f'AT+CUSATE="{envelope.encode().hex().upper()}"')

    async def activate(self) -> ProactiveCommand:
        """TE profile, +CUSATA=2, and the card's SET UP MENU that the new profile brings."""
        assert (await self.at(f'AT+CUSATW=0,"{tp.HOST_USAT_TE.hex().upper()}"')).ok
        response = await self.at("AT+CUSATA=2")
        assert response.ok and response.lines == ["+CUSATA: 4,1"], response
        return await self.proactive()


@pytest.fixture
async def rig(nursery: trio.Nursery) -> AsyncIterator[Rig]:
    transport, _ = simulated_card("usat-menu", None, NULL_TRACER)
    assert isinstance(transport, SimulatedCard)
    driver = CardDriver(transport)
    core = ModemCommands(driver, CellularNetwork())
    usat = UsatCommands(core, NULL_TRACER, {})
    core.command_sets = [usat]
    service = BipService(driver, NoBearer(), poll_interval=0.05)  # type: ignore[arg-type]
    usat.attach_service(service)
    submitted: list[bytes] = []

    def submit(tpdu: bytes) -> int:
        submitted.append(tpdu)
        return len(submitted)

    service.sms_submit = submit
    a, b = trio.testing.memory_stream_pair()
    server = AtServer(b)
    core.install(server)
    nursery.start_soon(server.run)
    await nursery.start(service.run)
    chat = AtChat(a, local=Actor.AP, remote=Actor.CP)
    tx, rx = trio.open_memory_channel[str](16)
    chat.add_urc_handler("+CUSATP:", tx.send_nowait)
    chat.add_urc_handler("+CUSATEND", tx.send_nowait)
    nursery.start_soon(chat.run)
    rig = Rig(chat, usat, service, transport.card.toolkit, rx, submitted)  # type: ignore[arg-type]
    assert isinstance(rig.menu, MenuToolkit)
    for line in ("ATE0", "AT+CMEE=1"):
        assert (await rig.at(line)).ok
    yield rig


async def test_profiles_read_and_write(rig: Rig) -> None:
    assert (await rig.at("AT+CUSATR=?")).lines == ["+CUSATR: (0-5)"]
    assert (await rig.at("AT+CUSATR=2")).lines == [f'+CUSATR: 2,"{tp.MODEM.hex().upper()}"']
    every = await rig.at("AT+CUSATR")
    assert [line.split(",")[0] for line in every.lines] == [f"+CUSATR: {n}" for n in range(6)]
    assert every.lines[0] == '+CUSATR: 0,""'  # no TE profile yet
    assert (
        every.lines[3] == f'+CUSATR: 3,"{tp.NAMED["bip-only"].hex().upper()}"'
    )  # what the card got at start
    te = tp.HOST_USAT_TE.hex().upper()
    assert (await rig.at(f'AT+CUSATW=0,"{te}"')).ok
    assert (await rig.at("AT+CUSATR=0")).lines == [f'+CUSATR: 0,"{te}"']
    # a TE profile claiming OPEN CHANNEL conflicts with the MT profile: the conflict, then +CME ERROR: 3
    clash = tp.build(["display_text", "open_channel"])
    refused = await rig.at(f'AT+CUSATW=0,"{clash.hex().upper()}"')
    assert refused.cme_error == 3
    assert refused.lines == [f'+CUSATW: 0,"{tp.build(["open_channel"]).hex().upper()}"']
    assert (await rig.at("AT+CUSATR=0")).lines == [f'+CUSATR: 0,"{te}"']  # unchanged
    assert (await rig.at('AT+CUSATW=1,"00"')).cme_error == 4  # writing the MT profile: not supported
    assert (await rig.at('AT+CUSATW=2,"00"')).cme_error == 3  # the MT default: read-only
    assert (await rig.at('AT+CUSATW=9,"00"')).cme_error == 50
    assert (await rig.at('AT+CUSATW=0,"0G"')).cme_error == 50
    assert (await rig.at('AT+CUSATW=0,"123"')).cme_error == 50
    # the card's EF_UST, read from the USIM (TS 31.102 4.2.8)
    assert (await rig.at("AT+CUSATR=4")).lines == [f'+CUSATR: 4,"{ust_bytes().hex().upper()}"']
    assert (await rig.at("AT+CUSATR=6")).cme_error == 50
    assert (await rig.at("AT+CUSATW")).ok
    assert (await rig.at("AT+CUSATR=0")).lines == ['+CUSATR: 0,""']


async def test_errors_before_activation(rig: Rig) -> None:
    tr = TerminalResponse.build(ProactiveCommand.build(CommandType.DISPLAY_TEXT), GeneralResult.OK)
    assert (await rig.at(f'AT+CUSATT="{tr.encode().hex()}"')).cme_error == 3
    assert (await rig.select(1)).cme_error == 3
    assert (await rig.at("AT+CUSATA=1")).cme_error == 3  # no TE profile to activate
    assert (await rig.at("AT+CUSATA=3")).cme_error == 4  # a later 27.007 activation, not offered
    assert (await rig.at("AT+CUSATA=4")).cme_error == 50
    assert (await rig.at('AT+CUSATT="zz"')).cme_error == 50
    assert (await rig.at('AT+CUSATT="D000"')).cme_error == 50  # not a terminal response
    assert (await rig.at('AT+CUSATE="810301"')).cme_error == 50  # not an envelope
    assert (await rig.at("AT+CUSATA?")).lines == ["+CUSATA: 4,1"]
    assert (await rig.at("AT+CUSATA=?")).lines == ["+CUSATA: (0-2)"]
    assert rig.usat.state is UsatState.INACTIVE and not rig.service.gateway.host_commands


async def test_menu_display_text_and_select_item(rig: Rig) -> None:
    menu = await rig.activate()
    assert menu.type == CommandType.SET_UP_MENU
    assert rig.usat.uicc_profile == tp.merge(tp.MODEM, tp.HOST_USAT_TE)  # the card got the merged profile
    items = [(i.value[0], alpha_decode(i.value[1:])) for i in menu.all(Tag.ITEM)]
    assert items == list(ITEMS)
    assert await rig.answer(menu) == "+CUSATEND"
    assert rig.menu.menu_set
    # MENU SELECTION of item 1: the card answers 91 xx and its DISPLAY TEXT reaches the host
    selected = await rig.select(1)
    assert selected.lines[0] == '+CUSATE: "",0' and selected.lines[1].startswith("+CUSATE2: 145,")
    text = await rig.proactive()
    assert text.type == CommandType.DISPLAY_TEXT
    assert text_decode(text.get(Tag.TEXT_STRING).value)[1] == HELLO  # type: ignore[union-attr]
    assert await rig.answer(text) == "+CUSATEND"
    # item 2: SELECT ITEM; the host picks item 3, the card names it in a DISPLAY TEXT
    await rig.select(2)
    choice = await rig.proactive()
    assert choice.type == CommandType.SELECT_ITEM
    follow = await rig.answer(choice, (Tag.ITEM_IDENTIFIER, b"\x03"))
    shown = decode_proactive(bytes.fromhex(follow.split('"')[1]))
    assert text_decode(shown.get(Tag.TEXT_STRING).value)[1] == "You chose Blue"  # type: ignore[union-attr]
    assert await rig.answer(shown) == "+CUSATEND"
    assert [(t, g) for t, g, _ in rig.menu.answers] == [
        (CommandType.SET_UP_MENU, 0),
        (CommandType.DISPLAY_TEXT, 0),
        (CommandType.SELECT_ITEM, 0),
        (CommandType.DISPLAY_TEXT, 0),
    ]


async def test_terminal_response_must_answer_the_pending_command(rig: Rig) -> None:
    menu = await rig.activate()
    other = ProactiveCommand.build(CommandType.DISPLAY_TEXT, number=menu.number)
    tr = TerminalResponse.build(other, GeneralResult.OK)
    assert (await rig.at(f'AT+CUSATT="{tr.encode().hex()}"')).cme_error == 50
    assert rig.usat.state is UsatState.AWAITING_RESPONSE
    assert await rig.answer(menu) == "+CUSATEND"
    again = TerminalResponse.build(menu, GeneralResult.OK)
    assert (await rig.at(f'AT+CUSATT="{again.encode().hex()}"')).cme_error == 3  # nothing awaits a TR now


async def test_send_short_message_reaches_the_smsc_not_the_host(rig: Rig) -> None:
    menu = await rig.activate()
    assert await rig.answer(menu) == "+CUSATEND"
    await rig.select(8)  # the card's SEND SHORT MESSAGE: the modem carries it out, no +CUSATP
    assert await rig.urc() == "+CUSATEND"  # the session the host's envelope started ended at the modem's TR
    assert rig.submitted == [SMS_SUBMIT]
    assert rig.menu.answers[-1][:2] == (CommandType.SEND_SHORT_MESSAGE, GeneralResult.OK)


async def test_host_refusal_ends_the_dialogue(rig: Rig) -> None:
    menu = await rig.activate()
    assert await rig.answer(menu) == "+CUSATEND"
    await rig.select(3)
    question = await rig.proactive()
    assert question.type == CommandType.GET_INPUT
    assert await rig.answer(question, general=GeneralResult.SESSION_TERMINATED_BY_USER) == "+CUSATEND"
    assert rig.menu.answers[-1][:2] == (CommandType.GET_INPUT, GeneralResult.SESSION_TERMINATED_BY_USER)


# --- the gateway's split, sans-IO -------------------------------------------------------------------------------


def test_gateway_hands_host_commands_over_and_keeps_bip() -> None:
    gateway = BipGateway()
    display = ProactiveCommand.build(CommandType.DISPLAY_TEXT, [obj(Tag.TEXT_STRING, b"\x04hi")])
    menu = ProactiveCommand.build(CommandType.SET_UP_MENU)
    # no host: DISPLAY TEXT answered by the modem as before, SET UP MENU beyond its capabilities
    (tr,) = gateway.on_command(display)
    assert isinstance(tr, SendTerminalResponse) and tr.response.result[0] == GeneralResult.OK
    (tr,) = gateway.on_command(menu)
    assert isinstance(tr, SendTerminalResponse)
    assert tr.response.result[0] == GeneralResult.BEYOND_TERMINAL_CAPABILITIES
    gateway.host_commands = frozenset({CommandType.DISPLAY_TEXT, CommandType.SET_UP_MENU})
    assert gateway.on_command(display) == [HandToHost(display)]
    assert gateway.on_command(menu) == [HandToHost(menu)]
    sms = ProactiveCommand.build(CommandType.SEND_SHORT_MESSAGE, [obj(Tag.SMS_TPDU, SMS_SUBMIT)])
    assert gateway.on_command(sms) == [SubmitShortMessage(sms, SMS_SUBMIT)]
    empty = ProactiveCommand.build(CommandType.SEND_SHORT_MESSAGE)
    (tr,) = gateway.on_command(empty)
    assert isinstance(tr, SendTerminalResponse)
    assert tr.response.result[0] == GeneralResult.REQUIRED_VALUES_MISSING
    (ok,) = gateway.sms_result(sms, 7)
    (no_smsc,) = gateway.sms_result(sms, None)
    (refused,) = gateway.sms_result(sms, None, 96)
    assert isinstance(ok, SendTerminalResponse) and ok.response.result == (GeneralResult.OK, b"")
    assert isinstance(no_smsc, SendTerminalResponse)
    assert no_smsc.response.result == (GeneralResult.NETWORK_UNABLE, b"\x00")
    assert isinstance(refused, SendTerminalResponse)
    assert refused.response.result == (GeneralResult.SMS_RP_ERROR, b"\x60")


def test_host_commands_never_include_the_modems() -> None:
    core = ModemCommands(CardDriver(simulated_card(None, None, NULL_TRACER)[0]), CellularNetwork())
    usat = UsatCommands(core, NULL_TRACER, {})
    usat.te_profile = tp.NAMED["full"]
    commands = usat.host_commands()
    assert CommandType.DISPLAY_TEXT in commands and CommandType.SET_UP_MENU in commands
    assert not commands & tp.MODEM_COMMANDS


def test_the_modems_send_short_message_reaches_the_networks_smsc() -> None:
    """cp/modem.py wires SEND SHORT MESSAGE to CellularNetwork.smsc (net/smsc.py): the card's TPDU is an MO message
    there; a TPDU the SMSC refuses becomes SMS RP-ERROR with RP cause 96 (invalid mandatory information)."""
    from bipsim.cp.modem import Modem, ModemOptions

    card, _ = simulated_card("usat-menu", None, NULL_TRACER)
    modem = Modem(ModemOptions("/nonexistent"), card)
    assert modem.service.sms_submit is not None
    command = ProactiveCommand.build(CommandType.SEND_SHORT_MESSAGE, [obj(Tag.SMS_TPDU, SMS_SUBMIT)])
    (ok,) = modem.service._submit(SubmitShortMessage(command, SMS_SUBMIT))
    assert isinstance(ok, SendTerminalResponse) and ok.response.result == (GeneralResult.OK, b"")
    (message,) = modem.network.smsc.mo
    assert message.tpdu == SMS_SUBMIT and message.origin == "uicc"
    (refused,) = modem.service._submit(SubmitShortMessage(command, b"\x01\x00"))
    assert isinstance(refused, SendTerminalResponse)
    assert refused.response.result == (GeneralResult.SMS_RP_ERROR, b"\x60")
    assert len(modem.network.smsc.mo) == 1


async def test_a_card_that_goes_away_ends_the_wait_for_the_hosts_response(rig: Rig) -> None:
    menu = await rig.activate()
    assert rig.usat.state is UsatState.AWAITING_RESPONSE
    rig.usat.core.slots[1].gone(CardRemoved("pulled"))
    assert rig.usat.state is UsatState.ACTIVE and rig.usat.pending is None
    tr = TerminalResponse.build(menu, GeneralResult.OK)
    assert (await rig.at(f'AT+CUSATT="{tr.encode().hex()}"')).cme_error == 3  # nothing awaits it now


async def test_a_new_command_replaces_an_unanswered_one(rig: Rig) -> None:
    first = await rig.activate()
    second = ProactiveCommand.build(CommandType.DISPLAY_TEXT, number=first.number + 1)
    await rig.usat.proactive(second)  # as the gateway hands over a command the card sent after a reset
    assert (await rig.proactive()).number == second.number
    assert rig.usat.pending == second and rig.usat.state is UsatState.AWAITING_RESPONSE


def test_send_short_message_packing_by_the_terminal() -> None:
    """Qualifier bit 1 (TS 102 223 6.4.10): 8-bit GSM text packed into septets, the DCS changed to 7-bit."""
    from bipsim.cp.toolkit_sms import pack_submit

    eight_bit = bytes.fromhex("01000891515500100004026869")  # DCS 04, "hi" one octet a character
    assert pack_submit(eight_bit) == SMS_SUBMIT  # DCS 00, "hi" packed: E8 34
    class_1 = bytes.fromhex("010008915155001000F5026869")  # data coding/message class group, 8-bit, class 1
    assert pack_submit(class_1)[9] == 0xF1  # TP-DCS: 7-bit, class 1
    assert pack_submit(SMS_SUBMIT) == SMS_SUBMIT  # already 7-bit
    gateway = BipGateway()
    packing = ProactiveCommand.build(
        CommandType.SEND_SHORT_MESSAGE, [obj(Tag.SMS_TPDU, eight_bit)], qualifier=1
    )
    assert gateway.on_command(packing) == [SubmitShortMessage(packing, SMS_SUBMIT)]
    binary = bytes.fromhex("0100089151550010000402FF00")
    bad = ProactiveCommand.build(CommandType.SEND_SHORT_MESSAGE, [obj(Tag.SMS_TPDU, binary)], qualifier=1)
    (tr,) = gateway.on_command(bad)
    assert isinstance(tr, SendTerminalResponse)
    assert tr.response.result[0] == GeneralResult.DATA_NOT_UNDERSTOOD


async def test_activating_again_hands_over_the_command_still_waiting(rig: Rig) -> None:
    """A host that reconnects (a new line session) and activates again gets the command the card still waits on."""
    menu = await rig.activate()
    assert (await rig.at("AT+CUSATA=1")).ok
    again = await rig.proactive()
    assert again == menu
    assert await rig.answer(again) == "+CUSATEND"


class IdleToolkit:
    """A wrapped toolkit with nothing to say: the menu applet alone."""

    def __init__(self) -> None:
        self.profiles: list[bytes] = []

    def terminal_profile(self, profile: bytes) -> None:
        self.profiles.append(profile)

    def pending_length(self) -> int:
        return 0

    def fetch(self) -> bytes:
        raise AssertionError("nothing to fetch")

    def terminal_response(self, data: bytes) -> None:
        raise AssertionError("no TR expected")

    def envelope(self, data: bytes) -> bytes:
        return b""


def test_the_card_menu_applet_alone() -> None:
    from bipsim.uicc.toolkit import ToolkitError

    inner = IdleToolkit()
    menu = MenuToolkit(inner)
    menu.terminal_profile(tp.NAMED["bip-only"])  # no SET UP MENU in this profile: no menu
    assert menu.pending_length() == 0
    menu.terminal_profile(tp.NAMED["host-usat"])  # the second profile declares it
    assert inner.profiles == [tp.NAMED["bip-only"]]  # the wrapped toolkit sees the first profile only
    set_up = decode_proactive(menu.fetch())
    assert set_up.type == CommandType.SET_UP_MENU and menu.pending_length() == 0
    menu.terminal_response(TerminalResponse.build(set_up, GeneralResult.OK).encode())
    select = Envelope(
        (
            obj(Tag.DEVICE_IDENTITIES, bytes((DeviceId.KEYPAD, DeviceId.UICC))),
            obj(Tag.ITEM_IDENTIFIER, b"\x02"),
        ),
        EnvelopeTag.MENU_SELECTION,
    ).encode()
    assert menu.envelope(select) == b""
    with pytest.raises(ToolkitError) as busy:
        menu.envelope(select)  # a dialogue is running
    assert busy.value.sw == 0x9300
    question = decode_proactive(menu.fetch())
    assert question.type == CommandType.SELECT_ITEM
    with pytest.raises(ToolkitError):  # the TR of another command
        menu.terminal_response(TerminalResponse.build(set_up, GeneralResult.OK).encode())
    menu.terminal_response(TerminalResponse.build(question, GeneralResult.BACKWARD_MOVE).encode())
    assert menu.pending_length() == 0  # the user went back: no follow-up
    with pytest.raises(ToolkitError) as unknown:
        menu.envelope(select.replace(b"\x10\x01\x02", b"\x10\x01\x09"))
    assert unknown.value.sw == 0x6A80


async def test_an_event_download_from_the_host_reaches_the_card(rig: Rig) -> None:
    """+CUSATE with an EVENT DOWNLOAD (user activity, TS 102 223 7.5.5): the card's answer and status word."""
    menu = await rig.activate()
    assert await rig.answer(menu) == "+CUSATEND"
    event = Envelope.event_download(Event.USER_ACTIVITY, DeviceId.TERMINAL)
    answer = await rig.at(f'AT+CUSATE="{event.encode().hex().upper()}"')
    assert answer.lines == ['+CUSATE: "",0', "+CUSATE2: 144,0"]
