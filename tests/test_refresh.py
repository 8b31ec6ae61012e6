"""The modem's own REFRESH (cp/refresh.py, cp/card_driver.py refresh, cp/bip_gateway.py; TS 102 223 sections 6.4.7,
8.6, 8.18) and the eUICC's REFRESH after a profile switch with refreshFlag (uicc/applets/isd_r.py, SGP.22 3.2.1).
In-process: a SimCard behind a SimulatedCard, the CP's CardDriver and BipService, AT commands over memory streams.

Qualifier 09 "eUICC Profile State Change": as joostone-ahn/sim-apdu-analyzer's Proactive.py (REFRESH_type['09'])
names it; the terminal profile bit (byte 34 bit 6) as uicc/terminal_profile.py's table (TS 102 223 section 5.2)."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from bipsim.cp.bip_gateway import BearerClose, BipGateway, HandToHost, RefreshCard
from bipsim.cp.bip_service import BipService
from bipsim.cp.card_driver import TERMINAL_PROFILE, CardDriver
from bipsim.cp.commands import ModemCommands, decode_imsi
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork
from bipsim.cp.refresh import FileListError, RefreshMode, parse_file_list, plan_refresh
from bipsim.link.at_server import AtServer
from bipsim.trace.recorder import Tracer
from bipsim.uicc import terminal_profile as tp
from bipsim.uicc.applets.isd_r import ISD_R_AID, IsdR
from bipsim.uicc.card import SimCard
from bipsim.uicc.cat import (
    CommandType,
    GeneralResult,
    ProactiveCommand,
    Tag,
    TerminalResponse,
    decode_proactive,
    decode_terminal_response,
    obj,
)
from bipsim.uicc.euicc import asn1
from bipsim.uicc.euicc.pki import Pki, generate_pki
from bipsim.uicc.euicc.upp import iccid_bytes
from bipsim.uicc.profile import load_profile
from bipsim.uicc.sim_transport import SimulatedCard
from bipsim.uicc.toolkit import ToolkitError
from tests.test_isd_r import OP1_ICCID, SimCardEs10, Smdp, load, prepared

IMSI_PATH = bytes.fromhex("3F007FFF6F07")
AD_PATH = bytes.fromhex("3F007FFF6FAD")


def refresh(mode: int, files: bytes | None = None, number: int = 1) -> ProactiveCommand:
    objects = [obj(Tag.FILE_LIST, files)] if files is not None else []
    return ProactiveCommand.build(CommandType.REFRESH, objects, number=number, qualifier=mode)


def file_list(*paths: bytes) -> bytes:
    return bytes((len(paths),)) + b"".join(paths)


# --- sans-IO -----------------------------------------------------------------------------------------------------


def test_file_list_parses_and_refuses_what_section_8_18_does_not_allow() -> None:
    assert parse_file_list(file_list(IMSI_PATH, AD_PATH)) == (IMSI_PATH, AD_PATH)
    for bad in (
        b"",  # no number of files
        file_list(IMSI_PATH)[:-1],  # a file identifier cut short
        b"\x01" + bytes.fromhex("7FFF6F07"),  # not from the MF
        b"\x02" + IMSI_PATH,  # says 2, holds 1
        b"\x01\x3f\x00",  # the MF alone
    ):
        with pytest.raises(FileListError):
            parse_file_list(bad)


@pytest.mark.parametrize(
    ("mode", "files", "reset", "naa_init", "answer"),
    [
        (0x00, None, False, True, GeneralResult.OK),
        (0x01, file_list(IMSI_PATH), False, False, GeneralResult.OK),
        (0x01, None, False, False, GeneralResult.REQUIRED_VALUES_MISSING),
        (0x01, b"\x02" + IMSI_PATH, False, False, GeneralResult.DATA_NOT_UNDERSTOOD),
        (0x02, file_list(IMSI_PATH), False, True, GeneralResult.OK),
        (0x03, None, False, True, GeneralResult.OK),
        (0x04, None, True, True, None),  # UICC Reset: no TERMINAL RESPONSE (6.4.7)
        (0x05, None, False, True, GeneralResult.OK),
        (0x06, None, False, True, GeneralResult.OK),
        (0x07, None, False, False, GeneralResult.BEYOND_TERMINAL_CAPABILITIES),
        (0x09, None, True, True, None),  # eUICC Profile State Change: a reset
    ],
)
def test_each_mode_is_planned_as_the_specification_says(
    mode: int, files: bytes | None, reset: bool, naa_init: bool, answer: int | None
) -> None:
    plan = plan_refresh(refresh(mode, files))
    assert (plan.reset, plan.naa_init) == (reset, naa_init)
    response = plan.response()
    if answer is None:
        assert response is None and not plan.sends_response
    else:
        assert response is not None and response.result[0] == answer


def test_the_gateway_keeps_refresh_even_when_a_host_toolkit_took_the_rest() -> None:
    gateway = BipGateway()
    gateway.host_commands = frozenset({CommandType.REFRESH, CommandType.DISPLAY_TEXT})
    actions = gateway.on_command(refresh(RefreshMode.NAA_INIT))
    assert [type(a) for a in actions] == [RefreshCard]
    assert not any(isinstance(a, HandToHost) for a in actions)
    assert isinstance(gateway.on_command(ProactiveCommand.build(CommandType.DISPLAY_TEXT))[0], HandToHost)


def test_a_reset_mode_closes_the_open_channels_as_a_reset_does() -> None:
    from bipsim.cp.bip_gateway import Channel, ChannelState
    from bipsim.uicc.cat import OpenChannel

    gateway = BipGateway()
    request = OpenChannel(bearer_type=3, buffer_size=1000, protocol=2, port=80, qualifier=1, number=1)
    open_command = ProactiveCommand.build(CommandType.OPEN_CHANNEL)
    gateway.channels[1] = Channel(1, request, open_command, 1000, ChannelState.ESTABLISHED)
    actions = gateway.on_command(refresh(RefreshMode.NAA_INIT))
    assert gateway.channels and not any(isinstance(a, BearerClose) for a in actions)
    actions = gateway.on_command(refresh(RefreshMode.UICC_RESET))
    assert [type(a) for a in actions] == [BearerClose, RefreshCard] and not gateway.channels


# --- the CP carries it out ----------------------------------------------------------------------------------------


class RefreshToolkit:
    """A CAT application whose proactive commands the test queues; it records TERMINAL PROFILEs and TRs."""

    def __init__(self) -> None:
        self.queue: deque[bytes] = deque()
        self.profiles: list[bytes] = []
        self.responses: list[bytes] = []
        self.answered = trio.Event()
        self.fetched: bytes | None = None

    def terminal_profile(self, profile: bytes) -> None:
        self.profiles.append(profile)
        self.fetched = None  # a reset ended the proactive session

    def pending_length(self) -> int:
        return len(self.queue[0]) if self.queue and self.fetched is None else 0

    def fetch(self) -> bytes:
        self.fetched = self.queue.popleft()
        return self.fetched

    def terminal_response(self, data: bytes) -> None:
        if self.fetched is None:
            raise ToolkitError(0x6F00, "no command fetched")
        self.fetched = None
        self.responses.append(data)
        self.answered.set()

    def envelope(self, data: bytes) -> bytes:
        return b""


class NoBearer:
    embodiment = 1
    name = "none"

    async def connect(self, channel: int, request: object) -> trio.abc.Stream:
        raise AssertionError("no channel in these tests")

    async def disconnect(self, channel: int, stream: trio.abc.Stream) -> None:
        raise AssertionError("no channel in these tests")


async def wait_for(tracer: Tracer, predicate: Any) -> Any:
    """The first trace event `predicate` accepts, waited for (the card loop runs in the nursery)."""
    with trio.fail_after(10):
        while True:
            for event in tracer.events:
                if predicate(event):
                    return event
            await trio.sleep(0.01)


def refresh_event(event: Any) -> bool:
    return event.kind == "app.event" and (event.fields or {}).get("event") == "refresh"


@pytest.fixture
async def cp(nursery: trio.Nursery) -> AsyncIterator[tuple[SimCard, RefreshToolkit, CardDriver, Tracer]]:
    toolkit = RefreshToolkit()
    card = SimCard(load_profile(), toolkit=toolkit)
    tracer = Tracer(keep=True)
    driver = CardDriver(SimulatedCard(card), tracer=tracer)
    service = BipService(driver, NoBearer(), tracer=tracer, poll_interval=0.01)  # type: ignore[arg-type]
    await nursery.start(service.run)
    yield card, toolkit, driver, tracer


@pytest.mark.parametrize(
    ("mode", "files", "result"),
    [
        (0x00, None, GeneralResult.OK),
        (0x02, file_list(IMSI_PATH), GeneralResult.OK),
        (0x03, None, GeneralResult.OK),
        (0x05, None, GeneralResult.OK),
        (0x06, None, GeneralResult.OK),
    ],
)
async def test_naa_initialisation_modes_read_the_naa_again_and_answer_ok(
    cp: tuple[SimCard, RefreshToolkit, CardDriver, Tracer], mode: int, files: bytes | None, result: int
) -> None:
    card, toolkit, driver, tracer = cp
    assert not driver.naa_files
    toolkit.queue.append(refresh(mode, files).encode())
    with trio.fail_after(10):
        await toolkit.answered.wait()
    response = decode_terminal_response(toolkit.responses[0])
    assert (response.type, response.result[0]) == (CommandType.REFRESH, result)
    assert decode_imsi(driver.naa_files[b"\x6f\x07"]) == card.profile.imsi
    assert len(toolkit.profiles) == 1  # no reset: the terminal profile went once
    event = await wait_for(tracer, refresh_event)
    assert event.fields["reset"] is False and not event.error


@pytest.mark.parametrize("mode", [RefreshMode.UICC_RESET, RefreshMode.EUICC_PROFILE_STATE_CHANGE])
async def test_reset_modes_start_the_card_again_and_send_no_terminal_response(
    cp: tuple[SimCard, RefreshToolkit, CardDriver, Tracer], mode: int
) -> None:
    card, toolkit, driver, tracer = cp
    toolkit.queue.append(refresh(mode).encode())
    event = await wait_for(tracer, refresh_event)
    assert event.fields["reset"] is True and event.fields["naa_files"] == ["6F07", "6FAD"]
    assert len(toolkit.profiles) == 2  # TERMINAL PROFILE again, as after power-on
    assert sum(e.kind == "apdu.atr" for e in tracer.events) == 2
    assert not toolkit.responses
    assert not any(e.kind == "cat.terminal_response" for e in tracer.events)


async def test_file_change_notification_drops_the_listed_copies_and_answers_ok(
    cp: tuple[SimCard, RefreshToolkit, CardDriver, Tracer],
) -> None:
    card, toolkit, driver, tracer = cp
    toolkit.queue.append(refresh(RefreshMode.NAA_INIT).encode())
    with trio.fail_after(10):
        await toolkit.answered.wait()
    assert set(driver.naa_files) == {b"\x6f\x07", b"\x6f\xad"}
    toolkit.answered = trio.Event()
    toolkit.queue.append(refresh(RefreshMode.FILE_CHANGE_NOTIFICATION, file_list(IMSI_PATH), 2).encode())
    with trio.fail_after(10):
        await toolkit.answered.wait()
    response = decode_terminal_response(toolkit.responses[1])
    assert response.result[0] == GeneralResult.OK
    assert set(driver.naa_files) == {b"\x6f\xad"}  # EF_IMSI is read again at its next use


async def test_a_malformed_file_list_is_command_data_not_understood_with_a_trace_event(
    cp: tuple[SimCard, RefreshToolkit, CardDriver, Tracer],
) -> None:
    card, toolkit, driver, tracer = cp
    toolkit.queue.append(refresh(RefreshMode.FILE_CHANGE_NOTIFICATION, b"\x03" + IMSI_PATH).encode())
    with trio.fail_after(10):
        await toolkit.answered.wait()
    response = decode_terminal_response(toolkit.responses[0])
    assert response.result[0] == GeneralResult.DATA_NOT_UNDERSTOOD  # 0x32, TS 102 223 section 8.12
    event = await wait_for(tracer, refresh_event)
    assert event.error and event.fields["result"] == 0x32 and "file list" in event.fields["error"]
    assert len(toolkit.profiles) == 1


# --- the eUICC's REFRESH after a profile switch -------------------------------------------------------------------


class LpaChannel(SimCardEs10):
    """SimCardEs10 on a card the CP drives too: MANAGE CHANNEL goes on the basic channel, where the card may
    announce a proactive command (91 xx) that the CP fetches at its next STATUS."""

    def __init__(self, card: Any) -> None:
        self.card = card
        opened = card.process(bytes.fromhex("0070000001"))
        assert opened[-2:] == b"\x90\x00" or opened[-2] == 0x91, opened.hex()
        self.channel = opened[0]
        selected = card.process(bytes((self.channel, 0xA4, 0x04, 0x00, 16)) + ISD_R_AID)
        assert selected[-2:] == b"\x90\x00" or selected[-2] == 0x61


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return generate_pki(tmp_path_factory.mktemp("pki"))


def test_the_isd_r_asks_for_refresh_only_with_refresh_flag_and_by_the_terminal_profile(keys: Pki) -> None:
    isd_r = IsdR(keys=keys)
    assert isd_r.take_proactive(TERMINAL_PROFILE) == []
    isd_r.refresh_pending = True
    old = decode_proactive(isd_r.take_proactive(TERMINAL_PROFILE)[0])
    assert (old.type, old.qualifier) == (CommandType.REFRESH, 0x04)  # byte 34 bit 6 absent: UICC Reset
    assert isd_r.take_proactive(TERMINAL_PROFILE) == []  # once
    isd_r.refresh_pending = True
    newer = tp.merge(TERMINAL_PROFILE, tp.build(["refresh_with_euicc_profile_state_change_mode"], length=34))
    command = decode_proactive(isd_r.take_proactive(newer)[0])
    assert command.qualifier == 0x09


async def test_enable_with_refresh_flag_makes_the_cp_reset_and_read_the_new_imsi(
    keys: Pki, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery
) -> None:
    monkeypatch.setenv("BIPSIM_PKI", str(keys.directory))
    tracer = Tracer(keep=True)
    transport, _ = simulated_card("euicc", None, tracer)
    assert isinstance(transport, SimulatedCard)
    card = transport.card
    driver = CardDriver(transport, tracer=tracer)
    driver.profile = tp.merge(
        TERMINAL_PROFILE, tp.build(["refresh_with_euicc_profile_state_change_mode"], length=34)
    )
    service = BipService(driver, NoBearer(), tracer=tracer, poll_interval=0.01)  # type: ignore[arg-type]
    commands = ModemCommands(driver, CellularNetwork())
    dte, cp_end = trio.testing.memory_stream_pair()
    server = AtServer(cp_end)
    commands.install(server)
    nursery.start_soon(server.run)
    await nursery.start(service.run)
    buffer = bytearray()

    async def at(line: str) -> list[str]:
        await dte.send_all(line.encode("ascii") + b"\r")
        with trio.fail_after(10):
            while not re.search(rb"\r\n(OK|ERROR|\+CME ERROR: \d+)\r\n$", buffer):
                buffer.extend(await dte.receive_some())
        lines = [item for item in buffer.decode("ascii").split("\r\n") if item and item.rstrip("\r") != line]
        buffer.clear()
        return lines

    assert await at("ATE0") == ["OK"]
    old_imsi = (await at("AT+CIMI"))[0]

    async def idle() -> None:
        """Waits until the CP has fetched what the card's own toolkit had pending (the SET UP EVENT LIST a
        TERMINAL PROFILE brings), so that the LPA's APDUs below are answered 90 00."""
        with trio.fail_after(10):
            while card.toolkit.pending_length() or driver.proactive_pending:
                await trio.sleep(0.01)

    # the LPA's side, straight on the card (its logical channel): install, then enable without and with refresh
    await idle()
    lpa = LpaChannel(card)
    smdp = Smdp(keys)
    assert load(lpa, smdp.bpp(prepared(lpa, smdp)))["finalResult"][0] == "successResult"

    def switch(name: str, refresh_flag: bool, lpa: LpaChannel = lpa) -> None:
        request = asn1.encode(
            f"{name}ProfileRequest",
            {"profileIdentifier": ("iccid", iccid_bytes(OP1_ICCID)), "refreshFlag": refresh_flag},
        )
        result = asn1.decode(f"{name}ProfileResponse", lpa.es10(request))
        assert result == {f"{name.lower()}Result": 0}

    switch("Enable", False)
    # refreshFlag false: the CP polls the card and hears no proactive command
    polls = sum(e.summary == "STATUS" for e in tracer.events if e.kind == "apdu.command")
    await wait_for(
        tracer,
        lambda e: sum(x.summary == "STATUS" for x in tracer.events if x.kind == "apdu.command") >= polls + 3,
    )
    assert not any(e.kind == "cat.proactive" and e.fields["command"] == "REFRESH" for e in tracer.events)
    await idle()
    switch("Disable", True)
    event = await wait_for(tracer, refresh_event)
    assert event.fields["mode"] == "euicc_profile_state_change" and event.fields["reset"] is True
    tracer.events.clear()
    await idle()
    switch("Enable", True, LpaChannel(card))  # the reset closed the LPA's channel: it opens another
    event = await wait_for(tracer, refresh_event)
    assert event.fields["mode"] == "euicc_profile_state_change"
    assert any(e.kind == "apdu.atr" for e in tracer.events)  # the card was started again
    new_imsi = decode_imsi(driver.naa_files[b"\x6f\x07"])
    assert new_imsi != old_imsi
    assert await at("AT+CIMI") == [new_imsi, "OK"]

    # the host's +CCHO session on the ISD-R ends with the reset (its logical channel went with it): +CGLA on it is
    # an invalid index, with a trace event, and the host opens a new one
    assert await at("AT+CMEE=1") == ["OK"]
    (opened,) = [line for line in await at('AT+CCHO="A0000005591010FFFFFFFF8900000100"') if line != "OK"]
    session = int(opened.split(":")[1])
    await idle()
    tracer.events.clear()
    switch("Disable", True, LpaChannel(card))
    await wait_for(tracer, refresh_event)
    voided = [e for e in tracer.events if e.field("event") == "sessions_invalidated"]
    assert voided and session in voided[0].fields["sessions"] and "REFRESH" in voided[0].summary
    assert await at(f'AT+CGLA={session},22,"81E2910006BF3E035C015A"') == ["+CME ERROR: 21"]
    (again,) = [line for line in await at('AT+CCHO="A0000005591010FFFFFFFF8900000100"') if line != "OK"]
    assert again.startswith("+CCHO: ")


def answer_toolkit(card: Any, answered: bytes) -> bytes:
    """Fetches and answers OK every proactive command the card announces after `answered`, as the CP would; the
    last answer (90 00 when nothing more is pending)."""
    while answered[-2] == 0x91:
        command = decode_proactive(card.process(bytes((0x80, 0x12, 0, 0, answered[-1])))[:-2])
        response = TerminalResponse.build(command, GeneralResult.OK).encode()
        answered = card.process(bytes((0x80, 0x14, 0, 0, len(response))) + response)
    return answered


def test_a_switch_with_refresh_while_a_proactive_command_is_open_is_cat_busy_and_switches_nothing(
    keys: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SGP.22 5.7.16-17 catBusy(5): one proactive session at a time (TS 102 223 section 6.4)."""
    monkeypatch.setenv("BIPSIM_PKI", str(keys.directory))
    transport, _ = simulated_card("euicc", None, Tracer(keep=True))
    assert isinstance(transport, SimulatedCard)
    card = transport.card
    profile = tp.merge(
        TERMINAL_PROFILE, tp.build(["refresh_with_euicc_profile_state_change_mode"], length=34)
    )
    answer = card.process(bytes((0x80, 0x10, 0, 0, len(profile))) + profile)
    assert answer[-2] == 0x91, answer.hex()
    fetched = card.process(bytes((0x80, 0x12, 0, 0, answer[-1])))
    assert fetched[-2:] == b"\x90\x00"
    open_command = decode_proactive(fetched[:-2])  # the toolkit's SET UP EVENT LIST: no TERMINAL RESPONSE yet
    lpa = LpaChannel(card)
    smdp = Smdp(keys)
    assert load(lpa, smdp.bpp(prepared(lpa, smdp)))["finalResult"][0] == "successResult"

    def switch(name: str, refresh_flag: bool) -> int:
        request = asn1.encode(
            f"{name}ProfileRequest",
            {"profileIdentifier": ("iccid", iccid_bytes(OP1_ICCID)), "refreshFlag": refresh_flag},
        )
        return int(asn1.decode(f"{name}ProfileResponse", lpa.es10(request))[f"{name.lower()}Result"])

    def state() -> str:
        profile = card.applets.applets[0].profile_store.find(iccid=OP1_ICCID)  # type: ignore[attr-defined]
        return str(profile.state.value)

    assert switch("Enable", True) == 5  # catBusy
    assert state() == "disabled"
    status = card.process(bytes.fromhex("80F2000000"))
    assert status[-2:] == b"\x90\x00"  # nothing announced while the command is open
    assert card.process(bytes.fromhex("8012000010"))[-2:] == b"\x69\x85"  # no second command handed out
    response = TerminalResponse.build(open_command, GeneralResult.OK).encode()
    answered = card.process(bytes((0x80, 0x14, 0, 0, len(response))) + response)
    assert answer_toolkit(card, answered)[-2:] == b"\x90\x00"  # the toolkit's next commands
    assert switch("Enable", True) == 0
    assert state() == "enabled"
    status = card.process(bytes.fromhex("80F2000000"))
    assert status[-2] == 0x91
    refresh = card.process(bytes((0x80, 0x12, 0, 0, status[-1])))
    assert decode_proactive(refresh[:-2]).type == CommandType.REFRESH
    # the REFRESH is open now: a Disable with refresh is catBusy, one without refresh switches (no REFRESH needed)
    assert switch("Disable", True) == 5
    assert state() == "enabled"
    assert switch("Disable", False) == 0
    assert state() == "disabled"


def test_the_refresh_waits_until_the_enable_answer_has_been_read_whole(
    keys: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SGP.22 3.2.1: the eUICC answers EnableProfile, then the REFRESH resets the card. While the LPA has still to
    read that answer (61 xx, GET RESPONSE to come on its channel) the card announces nothing on the basic channel,
    or the modem's next STATUS would reset the card under the LPA's GET RESPONSE (a CI run beside CPU burners hit
    exactly that: +CME ERROR: 21 on the GET RESPONSE)."""
    monkeypatch.setenv("BIPSIM_PKI", str(keys.directory))
    transport, _ = simulated_card("euicc", None, Tracer(keep=True))
    assert isinstance(transport, SimulatedCard)
    card = transport.card
    answer_toolkit(card, card.process(bytes((0x80, 0x10, 0, 0, len(TERMINAL_PROFILE))) + TERMINAL_PROFILE))
    lpa = LpaChannel(card)
    smdp = Smdp(keys)
    assert load(lpa, smdp.bpp(prepared(lpa, smdp)))["finalResult"][0] == "successResult"
    request = asn1.encode(
        "EnableProfileRequest", {"profileIdentifier": ("iccid", iccid_bytes(OP1_ICCID)), "refreshFlag": True}
    )
    answer = card.process(bytes((0x80 | lpa.channel, 0xE2, 0x91, 0, len(request))) + request)
    assert answer[-2] == 0x61, answer.hex()  # the answer waits for GET RESPONSE
    assert card.process(bytes.fromhex("80F2000000"))[-2:] == b"\x90\x00"  # no 91 xx yet
    assert card.process(bytes.fromhex("8012000010"))[-2:] == b"\x69\x85"  # nor a REFRESH to fetch
    rest = card.process(bytes((lpa.channel, 0xC0, 0, 0, answer[-1])))
    assert rest[-2:] == b"\x90\x00"
    assert asn1.decode("EnableProfileResponse", rest[:-2]) == {"enableResult": 0}
    status = card.process(bytes.fromhex("80F2000000"))
    assert status[-2] == 0x91, status.hex()  # now the REFRESH
    refresh = decode_proactive(card.process(bytes((0x80, 0x12, 0, 0, status[-1])))[:-2])
    assert refresh.type == CommandType.REFRESH
