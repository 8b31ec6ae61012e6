"""The terminal's BIP state (ETSI TS 102 223 sections 6.4.27-6.4.31, 7.5 and 8.52-8.59), sans-IO.

The gateway takes decoded proactive commands and bearer events and returns actions: terminal responses and
envelopes for the card, and open/send/close requests for the bearer. It owns the channels (up to 7), their Tx and
Rx buffers and the negotiated buffer sizes, and answers every failure with the specification's result and cause.

Link modes (OPEN CHANNEL qualifier, section 8.6):
- on demand (bit 1 = 0): TR at once; the link is set up by the first SEND DATA that asks to send immediately;
- immediate (bit 1 = 1, bit 3 = 0): the link first, then the TR;
- immediate in background (bits 1 and 3, the patent's flow): TR at once, Channel Status event when the link is up.

Transports (section 8.59): TCP and UDP in UICC client mode, and the UICC server mode (section 6.4.27.5, transport
level 03): that OPEN CHANNEL has no bearer description (the terminal's packet data plane carries it); the TR comes
at once with the channel status "TCP in LISTEN state" (section 8.56, bits 7-8 = 01), and a Channel Status event
"TCP in ESTABLISHED state" tells the card when a client connected. On a UDP channel each SEND DATA that sends is one
datagram and each datagram is one unit of the Rx buffer (the adapter delivers the next only when the card has read
the last, `rx_pending`).

DNS (section 8.6: bit 4 of OPEN CHANNEL's qualifier asks for the DNS server addresses): the TR then carries one DNS
server address object per server (section 8.104, tag 0x40, coded as an Other address: type 21 and the IPv4
address), those of `dns_servers` (the packet data context's, set by the adapter).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from bipsim.cp.local_info import LocalInfo, provide_local_information
from bipsim.cp.refresh import RefreshPlan, plan_refresh
from bipsim.cp.toolkit_sms import PACKING_REQUIRED, pack_submit
from bipsim.cp.toolkit_timers import TimerChange, ToolkitTimers
from bipsim.uicc.bip_engine import IllegalTransition as IllegalTransition  # the project's one error type
from bipsim.uicc.cat import (
    OPEN_BACKGROUND,
    OPEN_IMMEDIATE,
    SEND_IMMEDIATELY,
    BipErrorCause,
    CatObject,
    CommandType,
    DeviceId,
    Envelope,
    Event,
    GeneralResult,
    OpenChannel,
    ProactiveCommand,
    Tag,
    TerminalProblem,
    TerminalResponse,
    TransportProtocol,
    buffer_size_object,
    channel_data,
    channel_data_length,
    channel_data_length_object,
    channel_of,
    channel_status_object,
    ipv4_address_value,
    obj,
)

MAX_CHANNELS = 7
LINK_DROPPED = 0x05  # channel status further information (section 8.56)
SUPPORTED_BEARERS = {0x02, 0x03, 0x09, 0x0B}
SUPPORTED_TRANSPORTS = {
    TransportProtocol.TCP_CLIENT_REMOTE,
    TransportProtocol.UDP_CLIENT_REMOTE,
    TransportProtocol.TCP_SERVER,
}
DNS_REQUESTED = 0x08  # OPEN CHANNEL qualifier bit 4: DNS server address(es) requested (section 8.6)
TAG_DNS_SERVER_ADDRESS = 0x40  # section 8.104 (pySim's cat.py lists it as DnsServerAddress, tag 0xC0 with CR)
TCP_LISTEN = (
    0x40  # channel status byte 1, bits 7-8 = 01: "TCP in LISTEN state" (UICC server mode, section 8.56)
)


def server_mode_request(command: ProactiveCommand) -> OpenChannel | None:
    """The OPEN CHANNEL of the UICC server mode (section 6.4.27.5: buffer size and a transport level of type 03, no
    bearer description), or None when `command` is not one. The channel then behaves as an immediate link in
    background: the TR at once, a Channel Status event when a client connects."""
    transport = command.get(Tag.TRANSPORT_LEVEL)
    size = command.get(Tag.BUFFER_SIZE)
    if transport is None or len(transport.value) != 3 or transport.value[0] != TransportProtocol.TCP_SERVER:
        return None
    if size is None or len(size.value) != 2:
        return None
    return OpenChannel(
        bearer_type=0,
        buffer_size=int.from_bytes(size.value, "big"),
        protocol=TransportProtocol.TCP_SERVER,
        port=int.from_bytes(transport.value[1:3], "big"),
        qualifier=OPEN_IMMEDIATE | OPEN_BACKGROUND,
        number=command.number,
    )


class ChannelState(Enum):
    OPENING = "opening"  # immediate mode: link being set up, the OPEN CHANNEL TR waits for it
    CONNECTING = "connecting"  # background mode, or on demand after the first immediate SEND DATA: TR given
    ON_DEMAND = "on demand"  # TR given, no link until the first immediate SEND DATA
    ESTABLISHED = "established"
    DROPPED = (
        "dropped"  # the link went away (or never came, TR already given): buffered data can still be read
    )
    CLOSED = "closed"


class ChannelEvent(StrEnum):
    """What happens to a channel: the card's commands on it, and the bearer's reports."""

    CONNECT = "connect"  # an immediate SEND DATA on an on-demand channel asks for the link
    SEND = "send"  # SEND DATA
    RECEIVE = "receive"  # RECEIVE DATA
    CLOSE = "close"  # CLOSE CHANNEL
    ESTABLISHED = "established"  # bearer: the link is up
    FAILED = "failed"  # bearer: the link could not be set up
    DROPPED = "dropped"  # bearer: the link went away
    CARD_GONE = "card gone"  # the card was removed (or its reader went away): every channel of it ends


CARD_EVENTS = frozenset({ChannelEvent.CONNECT, ChannelEvent.SEND, ChannelEvent.RECEIVE, ChannelEvent.CLOSE})

# (state, event) -> next state: the one table every change of a channel's state goes through (docs/protocols.md,
# "BIP channels"). A pair that is not here is illegal: Channel.move raises IllegalChannelEvent.
TRANSITIONS: dict[tuple[ChannelState, ChannelEvent], ChannelState] = {
    (ChannelState.OPENING, ChannelEvent.ESTABLISHED): ChannelState.ESTABLISHED,
    (ChannelState.OPENING, ChannelEvent.FAILED): ChannelState.CLOSED,  # the deferred TR carries the failure
    (ChannelState.OPENING, ChannelEvent.CLOSE): ChannelState.CLOSED,
    (ChannelState.CONNECTING, ChannelEvent.ESTABLISHED): ChannelState.ESTABLISHED,
    (ChannelState.CONNECTING, ChannelEvent.FAILED): ChannelState.DROPPED,
    (ChannelState.CONNECTING, ChannelEvent.SEND): ChannelState.CONNECTING,  # sent once the link is up
    (ChannelState.CONNECTING, ChannelEvent.RECEIVE): ChannelState.CONNECTING,
    (ChannelState.CONNECTING, ChannelEvent.CLOSE): ChannelState.CLOSED,
    (ChannelState.ON_DEMAND, ChannelEvent.SEND): ChannelState.ON_DEMAND,  # stored in the Tx buffer
    (ChannelState.ON_DEMAND, ChannelEvent.CONNECT): ChannelState.CONNECTING,
    (ChannelState.ON_DEMAND, ChannelEvent.RECEIVE): ChannelState.ON_DEMAND,
    (ChannelState.ON_DEMAND, ChannelEvent.CLOSE): ChannelState.CLOSED,
    (ChannelState.ESTABLISHED, ChannelEvent.SEND): ChannelState.ESTABLISHED,
    (ChannelState.ESTABLISHED, ChannelEvent.RECEIVE): ChannelState.ESTABLISHED,
    (ChannelState.ESTABLISHED, ChannelEvent.DROPPED): ChannelState.DROPPED,
    (ChannelState.ESTABLISHED, ChannelEvent.CLOSE): ChannelState.CLOSED,
    (ChannelState.DROPPED, ChannelEvent.RECEIVE): ChannelState.DROPPED,  # what arrived before the drop
    (ChannelState.DROPPED, ChannelEvent.CLOSE): ChannelState.CLOSED,
    # a card that is gone closes nothing itself: the terminal ends every channel of it (a card that comes back
    # has lost its volatile state and starts again with TERMINAL PROFILE, TS 102 223 section 5.2)
    **{
        (state, ChannelEvent.CARD_GONE): ChannelState.CLOSED
        for state in ChannelState
        if state is not ChannelState.CLOSED
    },
}


def illegal_answer(state: ChannelState, event: ChannelEvent) -> tuple[int, bytes] | None:
    """The TS 102 223 result (general result, additional information) a card command gets when its channel's
    state does not allow it (section 8.12.11, result 0x3A): a channel the card has not been given yet (immediate
    mode before its TR) or one already closed is "channel identifier not valid"; a dropped one "channel closed";
    a command the terminal cannot carry out in the state, 0x20 "terminal currently unable" with no specific
    cause. A bearer report that does not fit (a late one of a link the card has moved on from) gets no answer:
    None."""
    if event not in CARD_EVENTS:
        return None
    if state in (ChannelState.OPENING, ChannelState.CLOSED):
        return GeneralResult.BIP_ERROR, bytes((BipErrorCause.CHANNEL_ID_NOT_VALID,))
    if state is ChannelState.DROPPED:
        return GeneralResult.BIP_ERROR, bytes((BipErrorCause.CHANNEL_CLOSED,))
    return GeneralResult.TERMINAL_UNABLE, bytes((TerminalProblem.NO_SPECIFIC_CAUSE,))


class IllegalChannelEvent(IllegalTransition):
    """`event` is not allowed in `state`; `answer` is the TS 102 223 result it gets (None: no answer)."""

    def __init__(self, channel: int, state: ChannelState, event: ChannelEvent) -> None:
        super().__init__(f"channel {channel}: {event.value} in state {state.value}")
        self.channel = channel
        self.state = state
        self.event = event
        self.answer = illegal_answer(state, event)


# --- actions ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendTerminalResponse:
    response: TerminalResponse
    channel: int = 0


class EnvelopeEvent(StrEnum):
    """The event an ENVELOPE (EVENT DOWNLOAD) reports (TS 102 223 sections 7.5.10, 7.5.11)."""

    DATA_AVAILABLE = "data_available"
    CHANNEL_STATUS = "channel_status"


class LinkStatus(StrEnum):
    """What a Channel Status event says of the link (section 8.56: link established, or not with further
    information 05 "link dropped")."""

    ESTABLISHED = "established"
    DROPPED = "dropped"
    NOT_ESTABLISHED = "not_established"


@dataclass(frozen=True)
class SendEnvelope:
    envelope: Envelope
    summary: str  # for people (trace summaries); adapters read `event` and `link`
    channel: int
    event: EnvelopeEvent
    link: LinkStatus


@dataclass(frozen=True)
class BearerOpen:
    channel: int
    request: OpenChannel


@dataclass(frozen=True)
class BearerSend:
    channel: int
    data: bytes


@dataclass(frozen=True)
class BearerClose:
    channel: int


@dataclass(frozen=True)
class HandToHost:
    """A proactive command the modem does not carry out itself, for the host's toolkit (3GPP TS 27.007 section
    12: the +CUSATP URC); its terminal response comes back from the host (+CUSATT)."""

    command: ProactiveCommand


@dataclass(frozen=True)
class SubmitShortMessage:
    """SEND SHORT MESSAGE (TS 102 223 section 6.4.10): the card's SMS TPDU for the network's SMSC; the adapter
    answers the command with the outcome (`sms_result`)."""

    command: ProactiveCommand
    tpdu: bytes


@dataclass(frozen=True)
class RefreshCard:
    """REFRESH (TS 102 223 section 6.4.7, cp/refresh.py), which the modem carries out itself: the adapter resets
    the card or reads the NAA's files again as `plan` says, then sends the plan's TR (none after a reset)."""

    plan: RefreshPlan


@dataclass(frozen=True)
class SendTimerExpiration:
    """ENVELOPE TIMER EXPIRATION (TS 102 223 section 7.5, cp/toolkit_timers.py) of a toolkit timer that ran out."""

    envelope: Envelope
    timer: int


Action = (
    SendTerminalResponse
    | SendEnvelope
    | BearerOpen
    | BearerSend
    | BearerClose
    | HandToHost
    | SubmitShortMessage
    | TimerChange
    | SendTimerExpiration
    | RefreshCard
)


@dataclass
class Channel:
    id: int
    request: OpenChannel
    command: ProactiveCommand
    buffer_size: int
    state: ChannelState
    tx: bytearray = field(default_factory=bytearray)
    rx: bytearray = field(default_factory=bytearray)
    deferred: ProactiveCommand | None = None  # a command whose TR waits for the link (immediate / on demand)
    data_available_sent: bool = False

    def move(self, event: ChannelEvent) -> None:
        """The only way a channel changes state (TRANSITIONS); raises IllegalChannelEvent."""
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise IllegalChannelEvent(self.id, self.state, event)
        self.state = nxt

    @property
    def rx_space(self) -> int:
        return max(0, self.buffer_size - len(self.rx))


def _length_byte(count: int) -> int:
    """Channel data length: the count, or 0xFF for more than 255 (section 8.54)."""
    return 0xFF if count > 0xFF else count


class BipGateway:
    """BIP channels of one terminal. `max_buffer` is the largest buffer the terminal grants."""

    def __init__(self, *, max_buffer: int = 1500, max_channels: int = MAX_CHANNELS) -> None:
        self.max_buffer = max_buffer
        self.max_channels = max_channels
        self.dns_servers: tuple[str, ...] = ()  # what an OPEN CHANNEL asking for DNS servers is given
        self.channels: dict[int, Channel] = {}
        self.events: set[int] = set()
        self.poll_interval: float | None = None
        # proactive commands a host's toolkit has taken (27.007 section 12, cp/usat_commands.py); never BIP's
        self.host_commands: frozenset[int] = frozenset()
        self.local_info = LocalInfo()  # what PROVIDE LOCAL INFORMATION reports (the modem sets its network's)
        # TIMER MANAGEMENT's timers; `clock` is the adapter's (trio's in the CP)
        self.timers = ToolkitTimers()
        self.clock: Callable[[], float] = time.monotonic
        # the commands the gateway carries out itself, by type (built once: on_command runs for every FETCH)
        self._handlers: dict[int, Callable[[ProactiveCommand], list[Action]]] = {
            CommandType.OPEN_CHANNEL: self._open,
            CommandType.CLOSE_CHANNEL: self._close,
            CommandType.SEND_DATA: self._send,
            CommandType.RECEIVE_DATA: self._receive,
            CommandType.GET_CHANNEL_STATUS: self._status,
            CommandType.SET_UP_EVENT_LIST: self._events,
            CommandType.POLL_INTERVAL: self._poll_interval,
            CommandType.POLLING_OFF: self._simple_ok,
            CommandType.MORE_TIME: self._simple_ok,
            CommandType.DISPLAY_TEXT: self._simple_ok,
        }

    # --- helpers -----------------------------------------------------------------------------------------------

    def _tr(
        self,
        command: ProactiveCommand,
        general: int,
        additional: bytes = b"",
        objects: list[CatObject] | None = None,
        channel: int = 0,
    ) -> SendTerminalResponse:
        return SendTerminalResponse(
            TerminalResponse.build(command, general, additional, objects or []), channel
        )

    def _bip_error(self, command: ProactiveCommand, cause: BipErrorCause) -> SendTerminalResponse:
        return self._tr(command, GeneralResult.BIP_ERROR, bytes((cause,)))

    def _open_objects(self, channel: Channel, established: bool) -> list[CatObject]:
        request = channel.request
        # CR as in the TS 102 384 27.22.4.27.2 expected TERMINAL RESPONSE (channel status '38', bearer description
        # '35', buffer size '39'): these objects are optional in this response (TS 102 223 6.8), unlike the channel
        # status of GET CHANNEL STATUS ('B8') or the channel data of RECEIVE DATA ('B6').
        status = self._status_object(channel, established)
        objects = [CatObject(status.tag, status.value, False)]
        if request.protocol != TransportProtocol.TCP_SERVER:  # the server mode's OPEN CHANNEL names no bearer
            objects.append(
                obj(
                    Tag.BEARER_DESCRIPTION,
                    bytes((request.bearer_type,)) + request.bearer_parameters,
                    cr=False,
                )
            )
        objects.append(buffer_size_object(channel.buffer_size))
        if request.qualifier & DNS_REQUESTED and request.protocol != TransportProtocol.TCP_SERVER:
            for server in self.dns_servers:
                objects.append(CatObject(TAG_DNS_SERVER_ADDRESS, ipv4_address_value(server), False))
        return objects

    def _status_object(self, channel: Channel, established: bool, further: int = 0) -> CatObject:
        """Channel status (section 8.56): a server-mode channel without a client is "TCP in LISTEN state"."""
        if channel.request.protocol == TransportProtocol.TCP_SERVER and not established and not further:
            return obj(Tag.CHANNEL_STATUS, bytes((TCP_LISTEN | channel.id, 0)))
        return channel_status_object(channel.id, established, further)

    def _open_result(self, channel: Channel) -> int:
        return (
            GeneralResult.OK_WITH_MODIFICATION
            if channel.buffer_size < channel.request.buffer_size
            else GeneralResult.OK
        )

    def _status_envelope(self, channel: Channel, established: bool, further: int = 0) -> SendEnvelope:
        envelope = Envelope.event_download(
            Event.CHANNEL_STATUS, DeviceId.TERMINAL, [channel_status_object(channel.id, established, further)]
        )
        if established:
            link = LinkStatus.ESTABLISHED
        else:
            link = LinkStatus.DROPPED if further == LINK_DROPPED else LinkStatus.NOT_ESTABLISHED
        what = {
            LinkStatus.ESTABLISHED: "link established",
            LinkStatus.DROPPED: "link dropped",
            LinkStatus.NOT_ESTABLISHED: "link down",
        }[link]
        return SendEnvelope(
            envelope, f"ENVELOPE: Channel Status ({what})", channel.id, EnvelopeEvent.CHANNEL_STATUS, link
        )

    def _data_available(self, channel: Channel) -> SendEnvelope:
        channel.data_available_sent = True
        established = channel.state is ChannelState.ESTABLISHED
        envelope = Envelope.event_download(
            Event.DATA_AVAILABLE,
            DeviceId.TERMINAL,
            [
                channel_status_object(channel.id, established),
                channel_data_length_object(_length_byte(len(channel.rx))),
            ],
        )
        return SendEnvelope(
            envelope,
            f"ENVELOPE: Data Available ({len(channel.rx)} bytes)",
            channel.id,
            EnvelopeEvent.DATA_AVAILABLE,
            LinkStatus.ESTABLISHED if established else LinkStatus.NOT_ESTABLISHED,
        )

    def _channel(self, command: ProactiveCommand) -> Channel | None:
        return self.channels.get(channel_of(command))

    def _illegal(self, command: ProactiveCommand, exc: IllegalChannelEvent) -> list[Action]:
        """A card command its channel's state does not allow: the result of illegal_answer."""
        general, additional = exc.answer or (GeneralResult.TERMINAL_UNABLE, b"\x00")
        return [self._tr(command, general, additional, channel=exc.channel)]

    # --- proactive commands ------------------------------------------------------------------------------------

    def on_command(self, command: ProactiveCommand) -> list[Action]:
        if command.type == CommandType.RECEIVE_DATA and command.type not in self.host_commands:
            return self._receive(command)  # the download's every round: straight to its handler
        if (
            command.type == CommandType.REFRESH
        ):  # the modem's own, whatever a host's toolkit took (TS 31.111 6.4.7)
            return self._refresh(command)
        if command.type in self.host_commands:  # a host's toolkit took it (+CUSATA, 27.007 section 12.2.3)
            return [HandToHost(command)]
        if command.type == CommandType.SEND_SHORT_MESSAGE:
            return self._short_message(command)
        if command.type == CommandType.TIMER_MANAGEMENT:  # cp/toolkit_timers.py: the adapter runs the clock
            general, additional, objects, change = self.timers.on_command(command, self.clock())
            tr: list[Action] = [self._tr(command, general, additional, objects)]
            return tr + [change] if change is not None else tr
        if command.type == CommandType.PROVIDE_LOCAL_INFORMATION:  # cp/local_info.py
            general, objects = provide_local_information(command, self.local_info)
            return [self._tr(command, general, objects=objects)]
        handler = self._handlers.get(command.type)
        if handler is None:
            return [self._tr(command, GeneralResult.BEYOND_TERMINAL_CAPABILITIES)]
        return handler(command)

    def _refresh(self, command: ProactiveCommand) -> list[Action]:
        """REFRESH: a reset mode ends every channel as a reset does (the card loses its volatile state, TS 102 223
        section 6.4.7), then the adapter carries the plan out."""
        plan = plan_refresh(command)
        actions: list[Action] = self.on_card_gone() if plan.reset else []
        actions.append(RefreshCard(plan))
        return actions

    def _short_message(self, command: ProactiveCommand) -> list[Action]:
        tpdu = command.get(Tag.SMS_TPDU)
        if tpdu is None or not tpdu.value:
            return [self._tr(command, GeneralResult.REQUIRED_VALUES_MISSING)]
        if command.qualifier & PACKING_REQUIRED:  # the terminal packs the text (cp/toolkit_sms.py)
            try:
                return [SubmitShortMessage(command, pack_submit(tpdu.value))]
            except ValueError:
                return [self._tr(command, GeneralResult.DATA_NOT_UNDERSTOOD)]
        return [SubmitShortMessage(command, tpdu.value)]

    def sms_result(self, command: ProactiveCommand, reference: int | None, rp_cause: int = 0) -> list[Action]:
        """The TR of a SEND SHORT MESSAGE: OK once the SMSC took it (`reference` its TP-MR), else SMS RP-ERROR
        with the RP cause (TS 102 223 section 8.12.7; TS 24.011 section 8.2.5.4), or network unable with no
        cause when there is no SMSC (`rp_cause` 0)."""
        if reference is not None:
            return [self._tr(command, GeneralResult.OK)]
        if not rp_cause:
            return [self._tr(command, GeneralResult.NETWORK_UNABLE, b"\x00")]
        return [self._tr(command, GeneralResult.SMS_RP_ERROR, bytes((rp_cause & 0x7F,)))]

    def _events(self, command: ProactiveCommand) -> list[Action]:
        item = command.get(Tag.EVENT_LIST)
        self.events = set(item.value) if item is not None else set()
        return [self._tr(command, GeneralResult.OK)]

    def _poll_interval(self, command: ProactiveCommand) -> list[Action]:
        duration = command.get(Tag.DURATION)
        if duration is None or len(duration.value) != 2:
            return [self._tr(command, GeneralResult.REQUIRED_VALUES_MISSING)]
        unit, interval = duration.value
        self.poll_interval = interval * {0: 60.0, 1: 1.0, 2: 0.1}.get(unit, 1.0)
        return [self._tr(command, GeneralResult.OK, objects=[obj(Tag.DURATION, duration.value)])]

    def _simple_ok(self, command: ProactiveCommand) -> list[Action]:
        return [self._tr(command, GeneralResult.OK)]

    def _open(self, command: ProactiveCommand) -> list[Action]:
        server = server_mode_request(command)
        if server is not None:
            request = server
        else:
            try:
                request = OpenChannel.from_command(command)
            except ValueError:
                return [self._tr(command, GeneralResult.DATA_NOT_UNDERSTOOD)]
            if request.bearer_type not in SUPPORTED_BEARERS:
                return [self._tr(command, GeneralResult.BEYOND_TERMINAL_CAPABILITIES)]
        if request.protocol not in SUPPORTED_TRANSPORTS:  # e.g. the local transports (section 8.59)
            return [self._bip_error(command, BipErrorCause.TRANSPORT_NOT_AVAILABLE)]
        if not request.port or (request.destination is None and server is None):
            return [self._tr(command, GeneralResult.REQUIRED_VALUES_MISSING)]
        free = next((n for n in range(1, self.max_channels + 1) if n not in self.channels), None)
        if free is None:
            return [self._bip_error(command, BipErrorCause.NO_CHANNEL_AVAILABLE)]
        size = min(request.buffer_size, self.max_buffer)
        if not request.immediate:
            initial = ChannelState.ON_DEMAND
        elif request.background:
            initial = ChannelState.CONNECTING
        else:
            initial = ChannelState.OPENING
        channel = Channel(free, request, command, size, initial)
        self.channels[free] = channel
        if not request.immediate:
            return [
                self._tr(
                    command,
                    self._open_result(channel),
                    objects=self._open_objects(channel, False),
                    channel=free,
                )
            ]
        actions: list[Action] = []
        if request.background:
            actions.append(
                self._tr(
                    command,
                    self._open_result(channel),
                    objects=self._open_objects(channel, False),
                    channel=free,
                )
            )
        else:
            channel.deferred = command
        actions.append(BearerOpen(free, request))
        return actions

    def _close(self, command: ProactiveCommand) -> list[Action]:
        channel = self._channel(command)
        if channel is None:
            return [self._bip_error(command, BipErrorCause.CHANNEL_ID_NOT_VALID)]
        try:
            channel.move(ChannelEvent.CLOSE)
        except IllegalChannelEvent as exc:
            return self._illegal(command, exc)
        del self.channels[channel.id]
        return [BearerClose(channel.id), self._tr(command, GeneralResult.OK, channel=channel.id)]

    def _send(self, command: ProactiveCommand) -> list[Action]:
        channel = self._channel(command)
        if channel is None:
            return [self._bip_error(command, BipErrorCause.CHANNEL_ID_NOT_VALID)]
        try:
            channel.move(ChannelEvent.SEND)
        except IllegalChannelEvent as exc:
            return self._illegal(command, exc)
        data = channel_data(command)
        if len(channel.tx) + len(data) > channel.buffer_size:
            return [self._bip_error(command, BipErrorCause.BUFFER_SIZE_NOT_AVAILABLE)]
        channel.tx += data
        if not command.qualifier & SEND_IMMEDIATELY:
            free = channel.buffer_size - len(channel.tx)
            return [
                self._tr(
                    command,
                    GeneralResult.OK,
                    objects=[channel_data_length_object(_length_byte(free))],
                    channel=channel.id,
                )
            ]
        if channel.state is ChannelState.ON_DEMAND:
            channel.move(ChannelEvent.CONNECT)
            channel.deferred = command
            return [BearerOpen(channel.id, channel.request)]
        if channel.state is ChannelState.CONNECTING:
            channel.deferred = command  # background link not up yet: send when it is
            return []
        return self._flush(channel, command)

    def _flush(self, channel: Channel, command: ProactiveCommand) -> list[Action]:
        data = bytes(channel.tx)
        channel.tx.clear()
        return [
            BearerSend(channel.id, data),
            self._tr(
                command,
                GeneralResult.OK,
                objects=[channel_data_length_object(_length_byte(channel.buffer_size))],
                channel=channel.id,
            ),
        ]

    def _receive(self, command: ProactiveCommand) -> list[Action]:
        channel = self._channel(command)
        if channel is None:
            return [self._bip_error(command, BipErrorCause.CHANNEL_ID_NOT_VALID)]
        try:
            channel.move(ChannelEvent.RECEIVE)
        except IllegalChannelEvent as exc:
            return self._illegal(command, exc)
        if not channel.rx:
            if channel.state is ChannelState.DROPPED:
                return [self._bip_error(command, BipErrorCause.CHANNEL_CLOSED)]
            return [self._bip_error(command, BipErrorCause.NO_SPECIFIC_CAUSE)]
        want = channel_data_length(command) or 0
        with memoryview(channel.rx) as view:
            data = bytes(view[:want])  # one copy (a bytearray slice and bytes() of it were two)
        del channel.rx[: len(data)]
        left = len(channel.rx)
        if not left:
            channel.data_available_sent = False
        general = GeneralResult.OK if len(data) == want else GeneralResult.MISSING_INFORMATION
        objects = [obj(Tag.CHANNEL_DATA, data), channel_data_length_object(_length_byte(left))]
        return [self._tr(command, general, objects=objects, channel=channel.id)]

    def _status(self, command: ProactiveCommand) -> list[Action]:
        objects = [
            channel_status_object(
                c.id,
                c.state is ChannelState.ESTABLISHED,
                LINK_DROPPED if c.state is ChannelState.DROPPED else 0,
            )
            for c in sorted(self.channels.values(), key=lambda c: c.id)
        ]
        if not objects:
            objects = [channel_status_object(0, False)]
        return [self._tr(command, GeneralResult.OK, objects=objects)]

    # --- bearer events -------------------------------------------------------------------------------------------

    def on_link_established(self, channel_id: int) -> list[Action]:
        channel = self.channels.get(channel_id)
        if channel is None:
            return []
        try:
            channel.move(ChannelEvent.ESTABLISHED)
        except IllegalChannelEvent:
            return []  # a late report of a link the card has moved on from
        actions: list[Action] = []
        deferred, channel.deferred = channel.deferred, None
        if deferred is not None and deferred.type == CommandType.OPEN_CHANNEL:
            actions.append(
                self._tr(
                    deferred,
                    self._open_result(channel),
                    objects=self._open_objects(channel, True),
                    channel=channel.id,
                )
            )
        elif channel.request.background and deferred is None:
            actions.append(self._status_envelope(channel, True))
        if deferred is not None and deferred.type == CommandType.SEND_DATA:
            if channel.request.background:
                actions.append(self._status_envelope(channel, True))
            actions += self._flush(channel, deferred)
        if channel.rx and not channel.data_available_sent:
            actions.append(self._data_available(channel))
        return actions

    def on_link_failed(self, channel_id: int, general: int, additional: bytes = b"") -> list[Action]:
        """The bearer could not set up the link: result `general` (0x20, 0x21, 0x3A...) with its cause."""
        channel = self.channels.get(channel_id)
        if channel is None:
            return []
        try:
            channel.move(ChannelEvent.FAILED)
        except IllegalChannelEvent:
            return []
        deferred, channel.deferred = channel.deferred, None
        if (
            channel.state is ChannelState.CLOSED
        ):  # immediate mode: the OPEN CHANNEL TR fails, no channel is left
            del self.channels[channel_id]
            assert deferred is not None
            return [self._tr(deferred, general, additional, channel=channel_id)]
        if deferred is not None:  # the SEND DATA that waited for the link (on demand, or background) fails
            return [self._tr(deferred, general, additional, channel=channel_id)]
        return [self._status_envelope(channel, False, LINK_DROPPED)]

    def on_data(self, channel_id: int, data: bytes) -> list[Action]:
        """Bytes from the remote end; the adapter must not deliver more than `rx_space(channel)`."""
        channel = self.channels.get(channel_id)
        if channel is None or not data:
            return []
        channel.rx += data
        if not channel.data_available_sent:
            return [self._data_available(channel)]
        return []

    def absorb(self, channel_id: int, data: bytes) -> bool:
        """`on_data` for bytes that need no action: a stream channel whose Data Available the card has had and
        that it is still reading (its next RECEIVE DATA's channel data length counts them, section 8.54). False,
        and nothing kept, when they would need an envelope or are a datagram (one unit each): then `on_data`."""
        channel = self.channels.get(channel_id)
        if (
            channel is None
            or not channel.data_available_sent
            or channel.request.protocol == TransportProtocol.UDP_CLIENT_REMOTE
        ):
            return False
        channel.rx += data
        return True

    def rx_pending(self, channel_id: int) -> int:
        """Bytes in the channel's Rx buffer that the card has not read yet."""
        channel = self.channels.get(channel_id)
        return len(channel.rx) if channel is not None else 0

    def is_datagram(self, channel_id: int) -> bool:
        """Whether the channel is a UDP one (each datagram one unit of the Rx buffer)."""
        channel = self.channels.get(channel_id)
        return channel is not None and channel.request.protocol == TransportProtocol.UDP_CLIENT_REMOTE

    def rx_space(self, channel_id: int) -> int:
        channel = self.channels.get(channel_id)
        return channel.rx_space if channel is not None else 0

    def rx_refill(self, channel_id: int, queued: int = 0) -> int:
        """How many bytes the adapter may read from the link into the Rx buffer now, `queued` bytes being on their
        way to it already (read, not yet given to on_data/absorb): the free space once at least a third of it is free
        (or the buffer is empty), else 0, wait. The card reads at most 237 bytes a round; a read per round would be
        a link read, a trace event and a hand-over each, where one read per third of the buffer keeps the card as
        busy (it still holds two thirds, about four rounds, when the refill is asked for: docs/performance.md,
        "The card path"). A datagram
        channel takes one datagram at a time: nothing while one is buffered or on its way."""
        channel = self.channels.get(channel_id)
        if channel is None:
            return 0
        if channel.request.protocol == TransportProtocol.UDP_CLIENT_REMOTE and (channel.rx or queued):
            return 0
        space = max(0, channel.rx_space - queued)
        return space if not (channel.rx or queued) or space * 3 >= channel.buffer_size else 0

    def on_card_gone(self) -> list[Action]:
        """The card went away: every channel ends (no TERMINAL RESPONSE or envelope: there is no card to send it
        to) and each link is closed; the gateway is as new for the card's next TERMINAL PROFILE."""
        actions: list[Action] = []
        for channel_id, channel in sorted(self.channels.items()):
            channel.move(ChannelEvent.CARD_GONE)
            actions.append(BearerClose(channel_id))
        self.channels.clear()
        self.events.clear()
        self.poll_interval = None
        self.timers.clear()
        return actions

    def on_timer_expired(self, timer: int, generation: int) -> list[Action]:
        """A toolkit timer ran out: its TIMER EXPIRATION envelope, unless it was stopped or started again since."""
        envelope = self.timers.expired(timer, generation)
        return [SendTimerExpiration(envelope, timer)] if envelope is not None else []

    def on_link_dropped(self, channel_id: int) -> list[Action]:
        channel = self.channels.get(channel_id)
        if channel is None:
            return []
        if channel.state in (ChannelState.OPENING, ChannelState.CONNECTING):  # it never came up: it failed
            return self.on_link_failed(
                channel_id, GeneralResult.BIP_ERROR, bytes((BipErrorCause.REMOTE_DEVICE_NOT_REACHABLE,))
            )
        try:
            channel.move(ChannelEvent.DROPPED)
        except IllegalChannelEvent:
            return []
        actions: list[Action] = []
        if channel.rx and not channel.data_available_sent:
            actions.append(self._data_available(channel))
        actions.append(self._status_envelope(channel, False, LINK_DROPPED))
        return actions
