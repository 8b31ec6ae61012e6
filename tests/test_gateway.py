"""The CP's BIP gateway (ETSI TS 102 223 sections 6.4.27-6.4.31, 7.5.10-7.5.11, 8.12.11), sans-IO, and the AT proxy
behind its bearers (docs/protocols.md, "The proxy dialect (DLC 2)"): the AP's %GETNET/%WEBOPCH service, its APN database and allowlist, and
the simulated network's packet data context checks, over in-memory streams.

The BIP error causes (result 0x3A) are those of TS 102 223 section 8.12.11; pySim lists the same values
(osmocom pySim, pySim/cat.py, Result.AddlInfoBip).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from bipsim.ap.apn_db import ApnDatabase
from bipsim.ap.network import AllowRule, ApNetwork
from bipsim.ap.proxy import ProxyService
from bipsim.cp.bearer import LinkError
from bipsim.cp.bearer_ap_proxy import ApProxyBearer
from bipsim.cp.bearer_own_stack import OwnStackBearer
from bipsim.cp.bip_gateway import (
    BearerClose,
    BearerOpen,
    BearerSend,
    BipGateway,
    EnvelopeEvent,
    SendEnvelope,
    SendTerminalResponse,
)
from bipsim.cp.bip_service import BipService
from bipsim.cp.card_driver import CardDriver
from bipsim.cp.network import CellularNetwork, PdpError, SmCause
from bipsim.cp.proxy_link import ProxyLink
from bipsim.link.at_chat import AtChat
from bipsim.uicc.bip_engine import BipConfig, BipEngine, EngineState, MultiChannelEngine
from bipsim.uicc.card import SimCard
from bipsim.uicc.cat import (
    OPEN_BACKGROUND,
    OPEN_IMMEDIATE,
    BipErrorCause,
    CommandType,
    Event,
    GeneralResult,
    OpenChannel,
    ProactiveCommand,
    TerminalProblem,
    TerminalResponse,
    TransportProtocol,
    buffer_size,
    channel_data,
    channel_data_length,
    channel_statuses,
    close_channel,
    decode_envelope,
    decode_proactive,
    decode_terminal_response,
    get_channel_status,
    receive_data,
    send_data,
)
from bipsim.uicc.profile import load_profile
from bipsim.uicc.sim_transport import SimulatedCard
from bipsim.uicc.test_clients import RequestResponseClient
from tests.cat_vectors import VECTORS as CAT_VECTORS

BACKGROUND = OPEN_IMMEDIATE | OPEN_BACKGROUND
IMSI = "001010123456789"  # MCC 001, MNC 01: the test network of the shipped apns-conf.xml


def open_command(
    *,
    qualifier: int = BACKGROUND,
    size: int = 1400,
    bearer: int = 3,
    protocol: int = TransportProtocol.TCP_CLIENT_REMOTE,
    destination: str | None = "127.0.0.1",
    port: int = 4443,
    number: int = 1,
    apn: str | None = None,
    login: str | None = None,
    password: str | None = None,
) -> ProactiveCommand:
    return OpenChannel(
        bearer_type=bearer,
        buffer_size=size,
        protocol=protocol,
        port=port,
        destination=destination,
        qualifier=qualifier,
        number=number,
        apn=apn,
        login=login,
        password=password,
    ).to_command()


def the_tr(actions: list[Any]) -> TerminalResponse:
    """The one terminal response among `actions`, after a round trip through its bytes."""
    (tr,) = [a for a in actions if isinstance(a, SendTerminalResponse)]
    return decode_terminal_response(tr.response.encode())


def envelopes(actions: list[Any]) -> list[Any]:
    return [decode_envelope(a.envelope.encode()) for a in actions if isinstance(a, SendEnvelope)]


def result(tr: TerminalResponse) -> tuple[int, bytes]:
    return tr.result


def opened(gateway: BipGateway, **kwargs: Any) -> int:
    """Opens a channel in background mode and brings its link up; returns the channel id."""
    actions = gateway.on_command(open_command(**kwargs))
    tr = the_tr(actions)
    assert result(tr)[0] in (GeneralResult.OK, GeneralResult.OK_WITH_MODIFICATION)
    channel = int(channel_statuses(tr)[0]["channel_id"])
    gateway.on_link_established(channel)
    return channel


# --- OPEN CHANNEL ------------------------------------------------------------------------------------------------


def test_seven_channels_then_no_channel_available() -> None:
    gateway = BipGateway()
    ids = []
    for number in range(1, 8):
        actions = gateway.on_command(open_command(number=number, port=4000 + number))
        tr = the_tr(actions)
        assert result(tr) == (GeneralResult.OK, b"")
        status = channel_statuses(tr)[0]
        assert not status["link_established"]  # background: the link comes later
        ids.append(status["channel_id"])
        assert [a.channel for a in actions if isinstance(a, BearerOpen)] == [status["channel_id"]]
    assert ids == [1, 2, 3, 4, 5, 6, 7]
    eighth = gateway.on_command(open_command(number=8))
    assert result(the_tr(eighth)) == (GeneralResult.BIP_ERROR, bytes((BipErrorCause.NO_CHANNEL_AVAILABLE,)))
    assert result(the_tr(eighth)) == (0x3A, b"\x01")
    assert not [a for a in eighth if isinstance(a, BearerOpen)]
    # a closed channel's id is free again
    closing = gateway.on_command(close_channel(3, number=9))
    assert result(the_tr(closing)) == (GeneralResult.OK, b"")
    assert [a.channel for a in closing if isinstance(a, BearerClose)] == [3]
    again = the_tr(gateway.on_command(open_command(number=10)))
    assert channel_statuses(again)[0]["channel_id"] == 3


@pytest.mark.parametrize(
    ("requested", "granted", "general"),
    [
        (1400, 1400, GeneralResult.OK),
        (1500, 1500, GeneralResult.OK),
        (1501, 1500, GeneralResult.OK_WITH_MODIFICATION),  # 0x07 with the size the terminal can give
        (65535, 1500, GeneralResult.OK_WITH_MODIFICATION),
    ],
)
def test_buffer_size_negotiation(requested: int, granted: int, general: int) -> None:
    gateway = BipGateway(max_buffer=1500)
    tr = the_tr(gateway.on_command(open_command(size=requested)))
    assert result(tr) == (general, b"")
    assert buffer_size(tr) == granted
    assert gateway.channels[1].buffer_size == granted
    assert gateway.rx_space(1) == granted


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (  # the local transports (TS 102 223 8.59, types 04 and 05) are not offered; the UICC server mode is
            open_command(protocol=TransportProtocol.UDP_CLIENT_LOCAL),
            (GeneralResult.BIP_ERROR, bytes((BipErrorCause.TRANSPORT_NOT_AVAILABLE,))),
        ),
        (open_command(bearer=0x05), (GeneralResult.BEYOND_TERMINAL_CAPABILITIES, b"")),  # Bluetooth
        (open_command(destination=None), (GeneralResult.REQUIRED_VALUES_MISSING, b"")),
        (open_command(port=0), (GeneralResult.REQUIRED_VALUES_MISSING, b"")),
        (
            ProactiveCommand.build(CommandType.OPEN_CHANNEL, number=1, qualifier=BACKGROUND),
            (GeneralResult.DATA_NOT_UNDERSTOOD, b""),  # no bearer description, no buffer size
        ),
    ],
    ids=["udp-local", "bluetooth-bearer", "no-destination", "no-port", "no-bearer-description"],
)
def test_open_channel_refusals(command: ProactiveCommand, expected: tuple[int, bytes]) -> None:
    gateway = BipGateway()
    actions = gateway.on_command(command)
    assert result(the_tr(actions)) == expected
    assert not gateway.channels and not [a for a in actions if isinstance(a, BearerOpen)]


def test_immediate_mode_answers_once_the_link_is_up_or_failed() -> None:
    gateway = BipGateway()
    actions = gateway.on_command(open_command(qualifier=OPEN_IMMEDIATE))
    assert [type(a) for a in actions] == [BearerOpen]  # no TR until the link is decided
    tr = the_tr(gateway.on_link_established(1))
    assert result(tr) == (GeneralResult.OK, b"")
    assert channel_statuses(tr)[0] == {"channel_id": 1, "link_established": True, "further_info": 0}
    # a second channel whose link fails: the TR carries the bearer's result, and the id is free again
    gateway.on_command(open_command(qualifier=OPEN_IMMEDIATE, number=2))
    failed = gateway.on_link_failed(
        2, GeneralResult.BIP_ERROR, bytes((BipErrorCause.REMOTE_DEVICE_NOT_REACHABLE,))
    )
    assert result(the_tr(failed)) == (0x3A, b"\x07")
    assert 2 not in gateway.channels


def test_on_demand_link_comes_with_the_first_immediate_send() -> None:
    gateway = BipGateway()
    tr = the_tr(gateway.on_command(open_command(qualifier=0)))
    assert channel_statuses(tr)[0]["link_established"] is False
    stored = gateway.on_command(send_data(1, b"abc", immediate=False, number=2))
    assert result(the_tr(stored)) == (GeneralResult.OK, b"")
    actions = gateway.on_command(send_data(1, b"def", immediate=True, number=3))
    assert [type(a) for a in actions] == [BearerOpen]
    up = gateway.on_link_established(1)
    assert [a.data for a in up if isinstance(a, BearerSend)] == [b"abcdef"]
    assert the_tr(up).type == CommandType.SEND_DATA
    assert not envelopes(up)  # no Channel Status event outside background mode


def test_on_demand_link_failure_fails_the_send_data() -> None:
    gateway = BipGateway()
    gateway.on_command(open_command(qualifier=0))
    gateway.on_command(send_data(1, b"x", immediate=True, number=2))
    failed = gateway.on_link_failed(1, GeneralResult.NETWORK_UNABLE, b"\x9b")
    tr = the_tr(failed)
    assert (tr.type, result(tr)) == (CommandType.SEND_DATA, (GeneralResult.NETWORK_UNABLE, b"\x9b"))
    later = gateway.on_command(send_data(1, b"y", immediate=True, number=3))
    assert result(the_tr(later)) == (0x3A, bytes((BipErrorCause.CHANNEL_CLOSED,)))


# --- SEND DATA ---------------------------------------------------------------------------------------------------


def test_send_data_store_then_immediate() -> None:
    gateway = BipGateway()
    channel = opened(gateway, size=200)
    stored = gateway.on_command(send_data(channel, b"a" * 120, immediate=False, number=2))
    tr = the_tr(stored)
    assert result(tr) == (GeneralResult.OK, b"")
    assert channel_data_length(tr) == 80  # free Tx space left
    assert not [a for a in stored if isinstance(a, BearerSend)]
    sent = gateway.on_command(send_data(channel, b"b" * 50, immediate=True, number=3))
    assert [a.data for a in sent if isinstance(a, BearerSend)] == [b"a" * 120 + b"b" * 50]
    assert channel_data_length(the_tr(sent)) == 200  # the whole buffer is free again


def test_send_data_free_space_over_255_is_0xff() -> None:
    gateway = BipGateway()
    channel = opened(gateway, size=1400)
    tr = the_tr(gateway.on_command(send_data(channel, b"x" * 100, immediate=False, number=2)))
    assert channel_data_length(tr) == 0xFF  # 1300 free: "more than 255 bytes" (section 8.54)


def test_send_data_beyond_the_buffer_is_refused_and_keeps_what_was_stored() -> None:
    gateway = BipGateway()
    channel = opened(gateway, size=200)
    gateway.on_command(send_data(channel, b"a" * 150, immediate=False, number=2))
    refused = gateway.on_command(send_data(channel, b"b" * 60, immediate=False, number=3))
    assert result(the_tr(refused)) == (0x3A, bytes((BipErrorCause.BUFFER_SIZE_NOT_AVAILABLE,)))
    sent = gateway.on_command(send_data(channel, b"", immediate=True, number=4))
    assert [a.data for a in sent if isinstance(a, BearerSend)] == [b"a" * 150]


def test_send_data_while_background_link_is_opening_waits_for_it() -> None:
    gateway = BipGateway()
    gateway.on_command(open_command())
    assert gateway.on_command(send_data(1, b"hello", immediate=True, number=2)) == []
    up = gateway.on_link_established(1)
    (status,) = envelopes(up)
    assert status.event == Event.CHANNEL_STATUS
    assert [a.data for a in up if isinstance(a, BearerSend)] == [b"hello"]
    assert the_tr(up).type == CommandType.SEND_DATA


@pytest.mark.parametrize("kind", ["send", "receive", "close"])
@pytest.mark.parametrize("channel", [None, 2, 7], ids=["to-the-terminal", "channel-2", "channel-7"])
def test_commands_on_a_channel_that_is_not_open(kind: str, channel: int | None) -> None:
    gateway = BipGateway()
    opened(gateway)  # channel 1 only
    command = {
        "send": send_data(channel or 1, b"x", immediate=True, number=5),
        "receive": receive_data(channel or 1, 10, number=5),
        "close": close_channel(channel or 1, number=5),
    }[kind]
    if channel is None:  # addressed to the terminal itself, not to a channel device ('21'..'27')
        command = ProactiveCommand.build(
            command.type, command.objects, number=command.number, qualifier=command.qualifier
        )
    assert result(the_tr(gateway.on_command(command))) == (0x3A, bytes((BipErrorCause.CHANNEL_ID_NOT_VALID,)))


def test_dropped_channel_answers_channel_closed_after_its_data_is_read() -> None:
    gateway = BipGateway()
    channel = opened(gateway)
    gateway.on_data(channel, b"last words")
    dropped = gateway.on_link_dropped(channel)
    assert not any(a.event is EnvelopeEvent.DATA_AVAILABLE for a in dropped if isinstance(a, SendEnvelope))
    send = gateway.on_command(send_data(channel, b"x", immediate=True, number=2))
    assert result(the_tr(send)) == (0x3A, bytes((BipErrorCause.CHANNEL_CLOSED,)))
    read = the_tr(gateway.on_command(receive_data(channel, 10, number=3)))
    assert channel_data(read) == b"last words"
    empty = gateway.on_command(receive_data(channel, 10, number=4))
    assert result(the_tr(empty)) == (0x3A, bytes((BipErrorCause.CHANNEL_CLOSED,)))
    assert result(the_tr(gateway.on_command(close_channel(channel, number=5)))) == (GeneralResult.OK, b"")


# --- RECEIVE DATA and the Data Available event -------------------------------------------------------------------


def test_receive_data_with_the_0xff_rule() -> None:
    gateway = BipGateway(max_buffer=1500)
    channel = opened(gateway, size=1500)
    payload = bytes(i % 251 for i in range(600))
    first = gateway.on_data(channel, payload[:400])
    (event,) = envelopes(first)
    assert event.event == Event.DATA_AVAILABLE
    assert channel_statuses(event)[0] == {"channel_id": channel, "link_established": True, "further_info": 0}
    assert channel_data_length(event) == 0xFF  # 400 bytes: more than 255
    assert gateway.on_data(channel, payload[400:]) == []  # no second event until the card emptied the buffer
    received = bytearray()
    lengths = []
    number = 10
    while True:
        number += 1
        tr = the_tr(gateway.on_command(receive_data(channel, 237, number=number)))
        received += channel_data(tr)
        lengths.append(channel_data_length(tr))
        if result(tr)[0] != GeneralResult.OK or not lengths[-1]:
            break
    assert bytes(received) == payload
    # 600 -> 363 left (0xFF), -> 126 left, -> 0 left with "missing information" (asked 237, got 126)
    assert lengths == [0xFF, 126, 0]
    assert result(tr) == (GeneralResult.MISSING_INFORMATION, b"")
    again = gateway.on_data(channel, b"more")
    assert channel_data_length(envelopes(again)[0]) == 4


def test_receive_data_on_an_empty_buffer() -> None:
    gateway = BipGateway()
    channel = opened(gateway)
    tr = the_tr(gateway.on_command(receive_data(channel, 10, number=2)))
    assert result(tr) == (0x3A, bytes((BipErrorCause.NO_SPECIFIC_CAUSE,)))


def test_rx_space_is_the_back_pressure_window() -> None:
    gateway = BipGateway()
    channel = opened(gateway, size=300)
    gateway.on_data(channel, b"x" * 250)
    assert gateway.rx_space(channel) == 50
    gateway.on_command(receive_data(channel, 200, number=2))
    assert gateway.rx_space(channel) == 250
    assert gateway.rx_space(5) == 0


# --- GET CHANNEL STATUS and the Channel Status event -------------------------------------------------------------


def test_get_channel_status() -> None:
    gateway = BipGateway()
    none = the_tr(gateway.on_command(get_channel_status(number=1)))
    assert channel_statuses(none) == [{"channel_id": 0, "link_established": False, "further_info": 0}]
    first = opened(gateway)
    second = opened(gateway, number=2)
    gateway.on_command(open_command(number=3))  # link still being set up
    gateway.on_link_dropped(second)
    tr = the_tr(gateway.on_command(get_channel_status(number=4)))
    assert result(tr) == (GeneralResult.OK, b"")
    assert channel_statuses(tr) == [
        {"channel_id": first, "link_established": True, "further_info": 0},
        {"channel_id": second, "link_established": False, "further_info": 0x05},  # link dropped
        {"channel_id": 3, "link_established": False, "further_info": 0},
    ]


def test_channel_status_events_in_background_mode() -> None:
    gateway = BipGateway()
    gateway.on_command(open_command())
    (up,) = envelopes(gateway.on_link_established(1))
    assert up.event == Event.CHANNEL_STATUS
    assert channel_statuses(up) == [{"channel_id": 1, "link_established": True, "further_info": 0}]
    (down,) = envelopes(gateway.on_link_dropped(1))
    assert channel_statuses(down) == [{"channel_id": 1, "link_established": False, "further_info": 0x05}]
    assert envelopes(gateway.on_link_dropped(1)) == []  # reported once
    # a background link that never comes up is reported the same way
    gateway.on_command(open_command(number=2))
    (failed,) = envelopes(gateway.on_link_failed(2, 0x3A, b"\x07"))
    assert channel_statuses(failed)[0]["further_info"] == 0x05


def test_unknown_proactive_command_is_beyond_capabilities() -> None:
    command = ProactiveCommand.build(CommandType.SET_UP_CALL, number=1)
    assert result(the_tr(BipGateway().on_command(command))) == (
        GeneralResult.BEYOND_TERMINAL_CAPABILITIES,
        b"",
    )


# --- the AT proxy: the AP's service, its network model, and the CP's bearers ------------------------------------


class DataDlc(trio.abc.Stream):
    """One end of a CMUX data DLC, in memory."""

    def __init__(self, stream: trio.abc.Stream, dlci: int) -> None:
        self.stream, self.dlci = stream, dlci
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        self.closed = True
        await self.stream.aclose()


class FakeMux:
    """What the CP's bearers use of the multiplexer: open_dlc(2 + N), handing the AP its end."""

    def __init__(self, proxy: ProxyService | None) -> None:
        self.proxy = proxy
        self.opened: list[DataDlc] = []
        self.closed = False  # the line under it is up

    async def open_dlc(self, dlci: int) -> DataDlc:
        cp_end, ap_end = trio.testing.memory_stream_pair()
        dlc = DataDlc(cp_end, dlci)
        self.opened.append(dlc)
        if self.proxy is not None:
            self.proxy.data_dlc(DataDlc(ap_end, dlci))  # type: ignore[arg-type]
        return dlc


class ProxyRig:
    """The AP's proxy service on one end of an in-memory DLC 2, the CP's AtChat and bearers on the other."""

    def __init__(self, network: ApNetwork, imsi: str = IMSI, *, answer: bool = True) -> None:
        self.network = network
        self.service = ProxyService(network, ApnDatabase.load(), lambda: imsi)
        self.cp_end, self.ap_end = trio.testing.memory_stream_pair()
        self.chat = AtChat(self.cp_end)
        self.mux = FakeMux(self.service)
        self.link = ProxyLink()
        self.link.attach(self.mux, self.chat)  # type: ignore[arg-type]
        self.answer = answer
        self.cellular = CellularNetwork()

    async def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self.chat.run)
        if self.answer:
            nursery.start_soon(self.service.serve, self.ap_end)
        await trio.testing.wait_all_tasks_blocked()

    def ap_proxy(self) -> ApProxyBearer:
        return ApProxyBearer(self.link)

    def own_stack(self) -> OwnStackBearer:
        return OwnStackBearer(self.link, self.cellular)


def request(**kwargs: Any) -> OpenChannel:
    return OpenChannel.from_command(open_command(**kwargs))


async def test_getnet_hands_out_the_apn_of_the_imsis_network() -> None:
    rig = ProxyRig(ApNetwork())
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        bearer = rig.own_stack()
        assert await bearer.network_parameters(1, request(bearer=2)) == ("internet", "", "")
        assert await bearer.network_parameters(2, request(apn="ota.bipsim")) == (
            "ota.bipsim",
            "ota",
            "secret",
        )
        raw = await rig.chat.command('AT%GETNET=1,2,"ota.bipsim"')
        assert raw.lines == ('%NETPAR: 1,"ota.bipsim","ota","secret"',) and raw.ok
        assert (await rig.chat.command("AT%GETNET=9,2")).cme_error == 50  # no channel 9
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("network", "imsi"),
    [(ApNetwork(cellular=False), IMSI), (ApNetwork(), "999010000000001")],
    ids=["no-cellular", "imsi-not-in-apn-database"],
)
async def test_getnet_without_an_apn_is_no_service(network: ApNetwork, imsi: str) -> None:
    rig = ProxyRig(network, imsi)
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        assert (await rig.chat.command("AT%GETNET=1,2")).cme_error == 30
        with pytest.raises(LinkError) as caught:
            await rig.own_stack().connect(1, request(bearer=2))
        assert (caught.value.general, caught.value.additional) == (0x20, bytes((TerminalProblem.NO_SERVICE,)))
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("apn", "login", "password", "cause"),
    [
        ("wrong.apn", None, None, SmCause.MISSING_OR_UNKNOWN_APN),  # #27
        ("ota.bipsim", "intruder", "secret", SmCause.USER_AUTHENTICATION_FAILED),  # #29
        ("ota.bipsim", "ota", "guess", SmCause.USER_AUTHENTICATION_FAILED),
        ("internet", "someone", None, SmCause.USER_AUTHENTICATION_FAILED),  # this APN takes no credentials
    ],
    ids=["unknown-apn", "wrong-user", "wrong-password", "credentials-where-none-are-expected"],
)
async def test_network_refuses_wrong_apn_user_or_password(
    apn: str, login: str | None, password: str | None, cause: SmCause
) -> None:
    rig = ProxyRig(ApNetwork())
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        with pytest.raises(LinkError) as caught:
            await rig.own_stack().connect(1, request(bearer=2, apn=apn, login=login, password=password))
        # result 0x21 "network currently unable to process the command", the SM cause with bit 8 set
        assert (caught.value.general, caught.value.additional) == (0x21, bytes((0x80 | cause,)))
        assert not rig.cellular.contexts
        nursery.cancel_scope.cancel()
    with pytest.raises(PdpError) as direct:
        CellularNetwork().activate(apn, login or "", password or "")
    assert direct.value.cause is cause


async def test_own_stack_connects_with_the_apn_credentials_and_releases_the_context() -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, host="127.0.0.1"), lambda stream: stream.aclose(), 0
        )
        port = listeners[0].socket.getsockname()[1]
        rig = ProxyRig(ApNetwork())
        await rig.start(nursery)
        bearer = rig.own_stack()
        stream = await bearer.connect(1, request(bearer=2, apn="ota.bipsim", port=port))
        (context,) = rig.cellular.contexts.values()
        assert (context.apn, context.user) == ("ota.bipsim", "ota")
        await bearer.disconnect(1, stream)
        assert not rig.cellular.contexts
        nursery.cancel_scope.cancel()


def test_allowlist_rules() -> None:
    rule = AllowRule.parse("10.0.0.0/8:4000-4999")
    assert rule.allows("10.1.2.3", 4443) and not rule.allows("10.1.2.3", 5000)
    assert not rule.allows("192.168.1.1", 4443)
    assert AllowRule.parse("ota.example.com").allows("OTA.example.com", 1)
    network = ApNetwork()
    assert network.allowed("127.0.0.1", 4443) and not network.allowed("192.0.2.1", 4443)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("network", "kwargs", "cme", "expected"),
    [
        (ApNetwork(), {"destination": "192.0.2.10"}, 3, (0x3A, bytes((BipErrorCause.SECURITY_ERROR,)))),
        (
            ApNetwork(allow=[AllowRule.parse("127.0.0.1:1-1000")]),
            {"port": 4443},
            3,
            (0x3A, bytes((BipErrorCause.SECURITY_ERROR,))),
        ),
        (ApNetwork(wifi=False), {}, 30, (0x20, bytes((TerminalProblem.NO_SERVICE,)))),
        (
            ApNetwork(),
            {"protocol": TransportProtocol.UDP_CLIENT_REMOTE},
            4,
            (0x3A, bytes((BipErrorCause.TRANSPORT_NOT_AVAILABLE,))),
        ),
        (ApNetwork(), {"port": "closed"}, 100, (0x3A, bytes((BipErrorCause.REMOTE_DEVICE_NOT_REACHABLE,)))),
    ],
    ids=["not-on-allowlist", "port-not-on-allowlist", "no-wifi", "udp", "server-refuses"],
)
async def test_webopch_refusals(
    network: ApNetwork, kwargs: dict[str, Any], cme: int, expected: tuple[int, bytes]
) -> None:
    if kwargs.get("port") == "closed":
        kwargs = {**kwargs, "port": closed_port()}
    rig = ProxyRig(network)
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        with pytest.raises(LinkError) as caught:
            await rig.ap_proxy().connect(1, request(**kwargs))
        assert (caught.value.general, caught.value.additional) == expected
        assert rig.mux.opened[-1].closed  # the data DLC the CP opened is given back
        # the raw answer on DLC 2 is the +CME ERROR of docs/protocols.md, "The proxy dialect (DLC 2)"
        final = caught.value.reason.removeprefix("AP: ")
        assert final == f"+CME ERROR: {cme}"
        assert not rig.service.channels
        nursery.cancel_scope.cancel()


async def test_webopch_relays_both_ways_and_webclch_closes(nursery: trio.Nursery) -> None:
    received = bytearray()
    closed = trio.Event()

    async def echo(stream: trio.SocketStream) -> None:
        async for data in stream:
            received.extend(data)
            await stream.send_all(data.upper())
        closed.set()

    listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), echo, 0)
    port = listeners[0].socket.getsockname()[1]
    rig = ProxyRig(ApNetwork())
    await rig.start(nursery)
    bearer = rig.ap_proxy()
    dlc = await bearer.connect(2, request(port=port))
    assert isinstance(dlc, DataDlc) and dlc.dlci == 4  # channel 2 travels on DLC 2+2
    await dlc.send_all(b"hello over dlc 4")
    answer = b""
    while len(answer) < 16:
        answer += await dlc.receive_some()
    assert answer == b"HELLO OVER DLC 4"
    await bearer.disconnect(2, dlc)
    await closed.wait()
    assert bytes(received) == b"hello over dlc 4" and not rig.service.channels


async def test_webopch_without_an_answer_times_out_after_30_s(autojump_clock: trio.testing.MockClock) -> None:
    rig = ProxyRig(ApNetwork(), answer=False)  # the AP never answers on DLC 2
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        start = trio.current_time()
        with pytest.raises(LinkError) as caught:
            await rig.ap_proxy().connect(1, request())
        assert trio.current_time() - start == pytest.approx(30.0)
        assert (caught.value.general, caught.value.additional) == (
            0x3A,
            bytes((BipErrorCause.REMOTE_DEVICE_NOT_REACHABLE,)),
        )
        assert rig.mux.opened[0].closed
        with pytest.raises(LinkError) as getnet:
            await rig.own_stack().connect(2, request(bearer=2))
        assert (getnet.value.general, getnet.value.additional) == (0x20, bytes((TerminalProblem.NO_SERVICE,)))
        assert trio.current_time() - start == pytest.approx(60.0)
        nursery.cancel_scope.cancel()


async def test_bearers_wait_for_the_proxy_then_report_no_service(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = ProxyLink()  # the AP never attaches
    for bearer in (ApProxyBearer(link), OwnStackBearer(link, CellularNetwork())):
        with pytest.raises(LinkError) as caught:
            await bearer.connect(1, request(bearer=2))
        assert (caught.value.general, caught.value.additional) == (0x20, bytes((TerminalProblem.NO_SERVICE,)))


# --- several channels at once: the card's engines, the CP's BIP service and a fake bearer, in one process ------


class MemoryBearer:
    """A bearer whose remote end is an in-memory server answering each request with `answer` bytes."""

    embodiment = 2
    name = "memory"

    def __init__(self, nursery: trio.Nursery, answer: int) -> None:
        self.nursery = nursery
        self.answer = answer
        self.connected: list[int] = []
        self.closed: list[int] = []

    async def _serve(self, stream: trio.abc.Stream, channel: int) -> None:
        request = await stream.receive_some()
        assert request == f"GET {channel}".encode()
        for offset in range(0, self.answer, 100):  # several pieces, so the channels interleave
            await stream.send_all(bytes((channel,)) * min(100, self.answer - offset))
            await trio.sleep(0)

    async def connect(self, channel: int, request: OpenChannel) -> trio.abc.Stream:
        cp_end, remote = trio.testing.memory_stream_pair()
        self.connected.append(channel)
        self.nursery.start_soon(self._serve, remote, channel)
        return cp_end

    async def disconnect(self, channel: int, stream: trio.abc.Stream) -> None:
        self.closed.append(channel)
        await stream.aclose()


class ChannelClient(RequestResponseClient):
    """Sends "GET <channel>" once its channel is known; the answer is that channel's byte repeated."""

    def __init__(self, engine_channel: Callable[[], int], expect: int) -> None:
        super().__init__(b"", expect)
        self.engine_channel = engine_channel

    def connection_made(self) -> bytes:
        super().connection_made()
        return f"GET {self.engine_channel()}".encode()


async def run_engines(count: int, answer: int) -> tuple[list[BipEngine], list[ChannelClient], MemoryBearer]:
    engines: list[BipEngine] = []
    clients: list[ChannelClient] = []
    for index in range(count):
        client = ChannelClient(lambda i=index: engines[i].channel, answer)
        clients.append(client)
        engines.append(BipEngine(BipConfig(port=4000 + index, buffer_size=500), client))
    card = SimCard(load_profile(), toolkit=MultiChannelEngine(engines))
    async with trio.open_nursery() as nursery:
        bearer = MemoryBearer(nursery, answer)
        service = BipService(CardDriver(SimulatedCard(card)), bearer)
        with trio.fail_after(30):
            await nursery.start(service.run)
            await service.session_finished.wait()
        nursery.cancel_scope.cancel()
    return engines, clients, bearer


async def test_two_channels_carry_data_at_the_same_time() -> None:
    engines, clients, bearer = await run_engines(2, 1200)
    assert [engine.state for engine in engines] == [EngineState.DONE, EngineState.DONE]
    assert sorted(bearer.connected) == [1, 2] and sorted(bearer.closed) == [1, 2]
    # each client got its own channel's bytes only: no cross-talk between the channels
    for client in clients:
        assert len(client.received) == 1200 and len(set(client.received)) == 1
    assert {client.received[0] for client in clients} == {1, 2}


async def test_seven_channels_work_and_an_eighth_gets_no_channel_available() -> None:
    engines, clients, bearer = await run_engines(8, 300)
    done = [engine for engine in engines if engine.state is EngineState.DONE]
    failed = [engine for engine in engines if engine.state is EngineState.FAILED]
    assert len(done) == 7 and len(failed) == 1
    assert sorted(bearer.connected) == [1, 2, 3, 4, 5, 6, 7]
    (failure,) = failed[0].failures
    assert failure[1:] == (GeneralResult.BIP_ERROR, bytes((BipErrorCause.NO_CHANNEL_AVAILABLE,)))
    assert sum(len(client.received) == 300 for client in clients) == 7


async def test_a_closed_multiplexer_is_not_used_the_bearer_waits_for_the_next_attach(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After the line went away (mux closed, not yet detached), OPEN CHANNEL waits for the AP to come back."""
    rig = ProxyRig(ApNetwork())
    dead = FakeMux(None)
    dead.closed = True
    rig.link.attach(dead, AtChat(trio.testing.memory_stream_pair()[0]))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)

        async def reattach() -> None:
            await trio.sleep(2)
            rig.link.attach(rig.mux, rig.chat)  # type: ignore[arg-type]

        nursery.start_soon(reattach)
        start = trio.current_time()
        with pytest.raises(LinkError) as caught:  # reaches the live AP, which refuses by its allowlist
            await rig.ap_proxy().connect(1, request(destination="192.0.2.1"))
        assert trio.current_time() - start >= 2
        assert caught.value.additional == bytes((BipErrorCause.SECURITY_ERROR,))
        assert not dead.opened and rig.mux.opened
        nursery.cancel_scope.cancel()


class _PoRToolkit:
    """A CAT application that answers every ENVELOPE with response data (as an SMS-PP download with a PoR)."""

    def terminal_profile(self, profile: bytes) -> None:
        pass

    def pending_length(self) -> int:
        return 0

    def fetch(self) -> bytes:
        return b""

    def terminal_response(self, data: bytes) -> None:
        pass

    def envelope(self, data: bytes) -> bytes:
        return bytes.fromhex("027100000E0AB000010000000000000100009000")


class _RecordingCard:
    def __init__(self, card: SimCard) -> None:
        self.inner = SimulatedCard(card)
        self.sent: list[bytes] = []

    async def power_on(self) -> bytes:
        return await self.inner.power_on()

    async def transmit(self, command: bytes) -> bytes:
        self.sent.append(command)
        return await self.inner.transmit(command)


@pytest.mark.parametrize(
    ("cla", "get_cla"), [(0x80, 0x00), (0x81, 0x01), (0x83, 0x03), (0x00, 0x00), (0xC5, 0x45), (0x4F, 0x4F)]
)
async def test_get_response_after_61xx_is_class_00_with_the_logical_channel(cla: int, get_cla: int) -> None:
    """TS 102 221 section 10.1.1: GET RESPONSE is inter-industry (CLA 0X/4X) whatever class answered 61 xx."""
    from bipsim.cp.card_driver import get_response_class

    assert get_response_class(cla) == get_cla


async def test_envelope_answered_61xx_gets_its_response_data_with_get_response_class_00() -> None:
    """An SMS-PP download (class 80) answered 61 xx: the PoR comes with GET RESPONSE class 00, not 6D00."""
    recording = _RecordingCard(SimCard(load_profile(), toolkit=_PoRToolkit()))
    driver = CardDriver(recording)
    await driver.start()
    data, sw = await driver.transmit(bytes.fromhex("80C2000003D10100"), "ENVELOPE")
    assert sw == 0x9000
    assert data == bytes.fromhex("027100000E0AB000010000000000000100009000")
    assert recording.sent[-1][:2] == b"\x00\xc0"


def _published(name: str) -> bytes:
    (vector,) = [v for v in CAT_VECTORS if v.name == name]
    return vector.data


def _tr_bytes(actions: list[Any]) -> bytes:
    (tr,) = [a for a in actions if isinstance(a, SendTerminalResponse)]
    return tr.response.encode()


def test_gateway_terminal_responses_and_envelopes_are_the_published_bytes() -> None:
    """Every object the gateway builds, tag (with its CR flag) and device identities included, byte for byte as
    the TS 102 384 PDUs in oFono unit/test-stkutil.c (open_channel_211 -> open_channel_response_211: channel
    status '38', bearer description '35', buffer size '39'; receive_data_111 -> receive_data_response_111: channel
    data 'B6'; send_data_111 -> send_data_response_111; get_channel_status_111 -> ..._response_121;
    event_download_data_available_111; event_download_channel_status_131)."""
    gateway = BipGateway()
    gateway.on_command(decode_proactive(bytes.fromhex("D00D810301050082028182990209 0A".replace(" ", ""))))
    assert not [a for a in gateway.on_command(decode_proactive(_published("open_channel_211")))
                if isinstance(a, SendTerminalResponse)]  # fmt: skip
    assert _tr_bytes(gateway.on_link_established(1)) == _published("open_channel_response_211")

    (available,) = gateway.on_data(1, bytes(range(200)) + bytes(range(200)))
    assert available.envelope.encode() == _published("event_download_data_available_111")
    received = _tr_bytes(gateway.on_command(decode_proactive(_published("receive_data_111"))))
    assert received[:15] == _published("receive_data_response_111")[:15]  # head, result, 'B6' '81' 'C8'
    assert received[15:-3] == bytes(range(200)) and received[-3:] == bytes.fromhex("B701C8")

    status = _tr_bytes(gateway.on_command(decode_proactive(_published("get_channel_status_111"))))
    assert status == _published("get_channel_status_response_121")
    sent = _tr_bytes(gateway.on_command(decode_proactive(_published("send_data_111"))))
    assert (
        sent[:12] == _published("send_data_response_111")[:12]
    )  # terminal -> UICC although sent to channel 1
    (dropped,) = gateway.on_link_dropped(1)
    assert dropped.envelope.encode() == _published("event_download_channel_status_131")


class _GatedStream(trio.abc.Stream):
    """The AP's TCP connection, in memory: send_all blocks until the gate opens (a relay chunk in flight)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.gate = trio.Event()
        self.sending = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sending.set()
        await self.gate.wait()
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def test_webclch_flushes_what_the_cp_sent_on_the_dlc_before_the_tcp_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The card's last record (e.g. its TLS close_notify, S709) reaches the server before the AP's FIN: a chunk the
    relay is writing to TCP and a chunk still queued on the DLC at the time of AT%WEBCLCH are both delivered."""
    from bipsim.ap.proxy import ProxiedChannel
    from bipsim.link.at_syntax import AtRequest, CommandKind

    service = ProxyService(ApNetwork(), ApnDatabase.load(), lambda: IMSI)
    tcp_ap, server = trio.testing.memory_stream_pair()
    tcp = _GatedStream(tcp_ap)
    cp_dlc, ap_dlc = trio.testing.memory_stream_pair()
    proxied = ProxiedChannel(1, tcp, ap_dlc, trio.CancelScope())  # type: ignore[arg-type]
    service.channels[1] = proxied
    answer: list[list[str] | None] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service._relay, proxied)
        await cp_dlc.send_all(b"pending chunk|")
        await tcp.sending.wait()  # the relay took it from the DLC and is writing it to TCP
        await cp_dlc.send_all(b"close_notify")  # still on the DLC when the command comes

        async def close() -> None:
            answer.append(await service.webclch(AtRequest("%WEBCLCH", CommandKind.SET, (1,), "AT%WEBCLCH=1")))

        nursery.start_soon(close)
        await trio.testing.wait_all_tasks_blocked()
        tcp.gate.set()
        got = b""
        while chunk := await server.receive_some():
            got += chunk
        assert got == b"pending chunk|close_notify"  # then EOF: the FIN came after the data
    assert answer == [None] and not service.channels  # OK


async def test_smspp_refuses_what_is_not_a_data_download_and_waits_for_the_card() -> None:
    """AT%SMSPP: a TPDU that is not an SMS-DELIVER with PID 7F / class 2 is +CME ERROR: 50 and never reaches the
    card; before TERMINAL PROFILE the answer is +CME ERROR: 14 (SIM busy)."""
    from bipsim.cp.commands import ModemCommands
    from bipsim.link.at_server import CmeError
    from bipsim.link.at_syntax import AtRequest, CommandKind
    from bipsim.uicc.ota_trigger import sms_deliver

    recording = _RecordingCard(SimCard(load_profile(), toolkit=_PoRToolkit()))
    driver = CardDriver(recording)
    commands = ModemCommands(driver, CellularNetwork())

    def smspp(tpdu: bytes) -> AtRequest:
        return AtRequest("%SMSPP", CommandKind.SET, (tpdu.hex(),), "")

    good = sms_deliver(b"\x02\x70\x00payload")
    with pytest.raises(CmeError) as busy:
        await commands.smspp(smspp(good))
    assert busy.value.code == 14
    await driver.start()
    ordinary = good[:5] + b"\x00\x00" + good[7:]  # PID 00, DCS 00: an ordinary SMS for the inbox
    for bad in (ordinary, b"\x01\x00", b"zz"):
        with pytest.raises(CmeError) as caught:
            await commands.smspp(
                AtRequest("%SMSPP", CommandKind.SET, (bad.hex() if bad != b"zz" else "zz",), "")
            )
        assert caught.value.code == 50
    assert not [apdu for apdu in recording.sent if apdu[:2] == b"\x80\xc2"]
    (line,) = await commands.smspp(smspp(good)) or []
    assert line == '%SMSPP: "027100000E0AB000010000000000000100009000"'


async def test_imsi_is_read_while_the_card_has_a_proactive_command_pending() -> None:
    """+CIMI right after TERMINAL PROFILE: the card answers 91 xx (normal ending, command pending), not an error."""
    from bipsim.cp.commands import ModemCommands

    engine = BipEngine(BipConfig(port=1), RequestResponseClient(b"x", 1))
    driver = CardDriver(SimulatedCard(SimCard(load_profile(), toolkit=engine)))
    await driver.start()
    assert driver.proactive_pending  # OPEN CHANNEL waits for FETCH
    assert await ModemCommands(driver, CellularNetwork()).read_imsi() == IMSI
