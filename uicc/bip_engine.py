"""The card's BIP engine: the CAT application that opens a channel and carries a BipClient's bytes over it
(ETSI TS 102 223 sections 6.4.27-6.4.31 and 7.5; the patent's card side).

It implements the Toolkit seam of uicc/toolkit.py and is driven only by TERMINAL PROFILE, TERMINAL RESPONSE and
ENVELOPE: when triggered it issues SET UP EVENT LIST (Data Available, Channel Status), then OPEN CHANNEL in the
configured link mode, SEND DATA in chunks that honour the buffer size and the free Tx space the terminal reports,
RECEIVE DATA rounds on Data Available (the 0xFF "more than 255 bytes" rule), and CLOSE CHANNEL once the client is
done. Every change of state goes through one table (TRANSITIONS, events EngineEvent); an event the table does not
allow raises IllegalTransition, which the engine answers as the protocol says (an unexpected terminal response is
noted, an event for a state that does not expect it ignored). Failures reach the client through connection_lost and
are kept in `failures` for scenarios to check.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum, StrEnum

from bipsim.uicc.cat import (
    OPEN_BACKGROUND,
    OPEN_IMMEDIATE,
    CommandType,
    Envelope,
    Event,
    GeneralResult,
    OpenChannel,
    ProactiveCommand,
    TerminalResponse,
    TransportProtocol,
    buffer_size,
    channel_data,
    channel_data_length,
    channel_statuses,
    close_channel,
    decode_envelope,
    decode_terminal_response,
    receive_data,
    send_data,
    set_up_event_list,
)
from bipsim.uicc.client import BipClient
from bipsim.uicc.tlv import TlvError
from bipsim.uicc.toolkit import ToolkitError

# the general result of a `failures` entry that is the card's own client failing, not a terminal's result
CLIENT_ERROR = -1

# A proactive command must fit one FETCH (256 bytes): 237 bytes of channel data leave room for the headers.
MAX_CHANNEL_DATA = 237


class LinkMode(StrEnum):
    ON_DEMAND = "on-demand"
    IMMEDIATE = "immediate"
    BACKGROUND = "background"

    @property
    def qualifier(self) -> int:
        return {
            LinkMode.ON_DEMAND: 0,
            LinkMode.IMMEDIATE: OPEN_IMMEDIATE,
            LinkMode.BACKGROUND: OPEN_IMMEDIATE | OPEN_BACKGROUND,
        }[self]


@dataclass(frozen=True)
class BipConfig:
    """What the card's OPEN CHANNEL asks for."""

    host: str = "127.0.0.1"
    port: int = 4443
    protocol: int = TransportProtocol.TCP_CLIENT_REMOTE
    bearer_type: int = 3
    bearer_parameters: bytes = b""
    buffer_size: int = 1400
    apn: str = ""
    login: str = ""
    password: str = ""
    link_mode: LinkMode = LinkMode.BACKGROUND
    alpha: str | None = None
    max_reconnects: int = 3

    def open_channel(self, number: int) -> ProactiveCommand:
        return OpenChannel(
            bearer_type=self.bearer_type,
            bearer_parameters=self.bearer_parameters,
            buffer_size=self.buffer_size,
            protocol=self.protocol,
            port=self.port,
            destination=self.host,
            apn=self.apn or None,
            login=self.login or None,
            password=self.password or None,
            alpha=self.alpha,
            qualifier=self.link_mode.qualifier,
            number=number,
        ).to_command()


class EngineState(Enum):
    IDLE = "idle"
    EVENTS = "setting up events"
    OPENING = "opening channel"
    WAIT_LINK = "waiting for the link"
    OPEN = "channel open"
    DRAINING = (
        "link dropped, reading what is left"  # the terminal still holds received data: read it, then close
    )
    CLOSING = "closing channel"
    DONE = "done"
    FAILED = "failed"


class EngineEvent(StrEnum):
    """What moves the card's channel: its own decisions, the terminal's responses and the terminal's events."""

    START = "start"  # a session starts: SET UP EVENT LIST first
    START_OPEN = "start without event list"  # another engine of the card set the event list up: OPEN CHANNEL
    EVENTS_SET = "event list answered"  # TR of SET UP EVENT LIST, whatever its result (events are optional)
    OPENED = "open channel ok, link up"
    OPENED_BACKGROUND = "open channel ok, link in background"
    OPEN_FAILED = "open channel failed"
    DATA_OK = "send/receive/status ok"
    DATA_FAILED = "send/receive failed"
    LINK_UP = "channel status: link established"
    LINK_DROPPED = "channel status: link dropped"
    CLOSE = "close"  # the client is done, or the link dropped and its data is read
    CLOSED = "close channel answered"  # TR of CLOSE CHANNEL, whatever its result: the channel is gone
    RECONNECT = "reconnect"  # the client wants the channel again after a failure or a close


_RESTARTABLE = (EngineState.IDLE, EngineState.DONE, EngineState.FAILED)

# (state, event) -> next state: the one table every change of the engine's state goes through (TS 102 223 6.4.27
# to 6.4.31, 7.5.10, 7.5.11). A pair that is not here is illegal: the engine raises IllegalTransition.
TRANSITIONS: dict[tuple[EngineState, EngineEvent], EngineState] = {
    **{(state, EngineEvent.START): EngineState.EVENTS for state in _RESTARTABLE},
    **{(state, EngineEvent.START_OPEN): EngineState.OPENING for state in _RESTARTABLE},
    (EngineState.EVENTS, EngineEvent.EVENTS_SET): EngineState.OPENING,
    (EngineState.OPENING, EngineEvent.OPENED): EngineState.OPEN,
    (EngineState.OPENING, EngineEvent.OPENED_BACKGROUND): EngineState.WAIT_LINK,
    (EngineState.OPENING, EngineEvent.OPEN_FAILED): EngineState.FAILED,
    (EngineState.WAIT_LINK, EngineEvent.LINK_UP): EngineState.OPEN,
    (EngineState.WAIT_LINK, EngineEvent.LINK_DROPPED): EngineState.DRAINING,
    (EngineState.OPEN, EngineEvent.DATA_OK): EngineState.OPEN,
    (EngineState.OPEN, EngineEvent.DATA_FAILED): EngineState.FAILED,
    (EngineState.OPEN, EngineEvent.LINK_DROPPED): EngineState.DRAINING,
    (EngineState.OPEN, EngineEvent.CLOSE): EngineState.CLOSING,
    (EngineState.DRAINING, EngineEvent.DATA_OK): EngineState.DRAINING,
    (EngineState.DRAINING, EngineEvent.DATA_FAILED): EngineState.FAILED,
    (EngineState.DRAINING, EngineEvent.CLOSE): EngineState.CLOSING,
    (EngineState.CLOSING, EngineEvent.CLOSED): EngineState.DONE,
    (EngineState.FAILED, EngineEvent.RECONNECT): EngineState.OPENING,
    (EngineState.DONE, EngineEvent.RECONNECT): EngineState.OPENING,
}

# the event a terminal response is, by command and outcome ("background": OPEN CHANNEL ok without the link yet)
RESPONSE_EVENTS: dict[tuple[int, str], EngineEvent] = {
    (CommandType.SET_UP_EVENT_LIST, "ok"): EngineEvent.EVENTS_SET,
    (CommandType.SET_UP_EVENT_LIST, "failed"): EngineEvent.EVENTS_SET,
    (CommandType.OPEN_CHANNEL, "ok"): EngineEvent.OPENED,
    (CommandType.OPEN_CHANNEL, "background"): EngineEvent.OPENED_BACKGROUND,
    (CommandType.OPEN_CHANNEL, "failed"): EngineEvent.OPEN_FAILED,
    (CommandType.SEND_DATA, "ok"): EngineEvent.DATA_OK,
    (CommandType.SEND_DATA, "failed"): EngineEvent.DATA_FAILED,
    (CommandType.RECEIVE_DATA, "ok"): EngineEvent.DATA_OK,
    (CommandType.RECEIVE_DATA, "failed"): EngineEvent.DATA_FAILED,
    (CommandType.GET_CHANNEL_STATUS, "ok"): EngineEvent.DATA_OK,
    (CommandType.GET_CHANNEL_STATUS, "failed"): EngineEvent.DATA_OK,  # a status the card does not need
    (CommandType.CLOSE_CHANNEL, "ok"): EngineEvent.CLOSED,
    (CommandType.CLOSE_CHANNEL, "failed"): EngineEvent.CLOSED,
}


class IllegalTransition(Exception):
    """The project's error for an event that a state machine's transition table does not allow
    (docs/architecture.md, "Explicit state machines"); the code driving the machine turns it into the protocol's
    own answer. Subclasses carry the machine's state and event."""


class IllegalEngineEvent(IllegalTransition):
    """`event` is not allowed in the engine's `state`. The engine answers it as the protocol says: an
    unexpected terminal response is kept in `failures` (with the result the terminal gave) and changes nothing;
    a Channel Status or Data Available event for a channel state that does not expect it is ignored."""

    def __init__(self, state: EngineState, event: EngineEvent) -> None:
        super().__init__(f"BIP engine: {event.value} in state {state.value}")
        self.state = state
        self.event = event


def next_state(state: EngineState, event: EngineEvent) -> EngineState:
    """The table's answer; raises IllegalEngineEvent."""
    nxt = TRANSITIONS.get((state, event))
    if nxt is None:
        raise IllegalEngineEvent(state, event)
    return nxt


class BipEngine:
    """The card's CAT application for one BIP client session at a time."""

    def __init__(
        self,
        config: BipConfig,
        client: BipClient,
        *,
        trigger_on_profile: bool = True,
        event_list: bool = True,
    ) -> None:
        self.config = config
        self.client = client
        self.trigger_on_profile = trigger_on_profile
        self.event_list = event_list  # False: another engine of the card already set up the event list
        self.state = EngineState.IDLE
        self.channel = 0
        self.buffer = config.buffer_size
        self.tx_free = config.buffer_size
        self.failures: list[tuple[str, int, bytes]] = []
        self.sessions = 0
        self._queue: deque[ProactiveCommand] = deque()
        self._outstanding: ProactiveCommand | None = None
        self._outstanding_bytes = b""  # its encoding, made once: the card asks its length after every APDU
        self._fetched = False
        self._number = 0
        self._tx = bytearray()
        self._rx_available = 0
        self._reconnects = 0
        self.profile = b""

    # --- Toolkit ---------------------------------------------------------------------------------------------

    def terminal_profile(self, profile: bytes) -> None:
        self.profile = profile
        if self.trigger_on_profile and self.state is EngineState.IDLE:
            self.trigger()

    def pending_length(self) -> int:
        if self._outstanding is None and self._queue:
            self._outstanding = self._queue.popleft()
            self._outstanding_bytes = self._outstanding.encode()
            self._fetched = False
        if self._outstanding is not None and not self._fetched:
            return len(self._outstanding_bytes)
        return 0

    def fetch(self) -> bytes:
        if not self.pending_length() or self._outstanding is None:
            raise ToolkitError(0x6F00, "no proactive command pending")
        self._fetched = True
        return self._outstanding_bytes

    def terminal_response(self, data: bytes) -> None:
        command = self._outstanding
        if command is None or not self._fetched:
            raise ToolkitError(0x6F00, "terminal response without a fetched command")
        try:
            response = decode_terminal_response(data)
        except TlvError as exc:
            raise ToolkitError(0x6F00, f"malformed terminal response: {exc}") from exc
        if (response.number, response.type) != (command.number, command.type):
            raise ToolkitError(0x6F00, "terminal response does not match the fetched command")
        self._outstanding = None
        general, additional = response.result
        self._answered(command, general, additional, response)

    def envelope(self, data: bytes) -> bytes:
        try:
            envelope = decode_envelope(data)
        except TlvError as exc:
            raise ToolkitError(0x6F00, f"malformed envelope: {exc}") from exc
        if envelope.event == Event.DATA_AVAILABLE:
            self._data_available(envelope)
        elif envelope.event == Event.CHANNEL_STATUS:
            self._channel_status_event(envelope)
        return b""

    # --- control -----------------------------------------------------------------------------------------------

    def trigger(self) -> None:
        """Starts a session: SET UP EVENT LIST, then OPEN CHANNEL. Does nothing while a session runs."""
        if self.busy:
            return
        if not self.event_list:
            self._move(EngineEvent.START_OPEN)
            self._issue(self.config.open_channel(self._next_number()))
            return
        self._move(EngineEvent.START)
        self._issue(set_up_event_list([Event.DATA_AVAILABLE, Event.CHANNEL_STATUS], self._next_number()))

    @property
    def busy(self) -> bool:
        return self.state not in _RESTARTABLE

    def _move(self, event: EngineEvent) -> None:
        """The only place the engine's state changes (TRANSITIONS); raises IllegalTransition."""
        self.state = next_state(self.state, event)

    def _next_number(self) -> int:
        self._number = self._number % 254 + 1
        return self._number

    def _issue(self, command: ProactiveCommand) -> None:
        self._queue.append(command)

    def _idle_line(self) -> bool:
        return self._outstanding is None and not self._queue

    def _fail(self, reason: str, general: int, additional: bytes) -> None:
        """After a move to FAILED: the client hears of it, and a client that wants to resume gets a new channel."""
        self.failures.append((reason, general, additional))
        self._tx.clear()
        self._rx_available = 0
        self._lost(reason)
        self._reconnect()

    # --- the client, contained: an exception in it ends its session as a closed channel, never the card ----------

    def _client_failed(self, where: str, exc: Exception) -> None:
        """The client raised: its session ends (CLOSE CHANNEL, TS 102 223 6.4.28) and the card goes on."""
        self.failures.append((f"client failed in {where}: {exc!r}", CLIENT_ERROR, b""))
        self._tx.clear()
        self._rx_available = 0
        if self.state in (EngineState.OPEN, EngineState.DRAINING):
            self._move(EngineEvent.CLOSE)
            self._issue(close_channel(self.channel, self._next_number()))

    def _made(self) -> bytes:
        try:
            return self.client.connection_made()
        except Exception as exc:
            self._client_failed("connection_made", exc)
            return b""

    def _received(self, data: bytes) -> bytes:
        try:
            return self.client.data_received(data)
        except Exception as exc:
            self._client_failed("data_received", exc)
            return b""

    def _lost(self, reason: str) -> None:
        try:
            self.client.connection_lost(reason)
        except Exception as exc:
            self.failures.append((f"client failed in connection_lost: {exc!r}", CLIENT_ERROR, b""))

    def _client_flag(self, name: str) -> bool:
        try:
            return bool(getattr(self.client, name))
        except Exception as exc:
            self.failures.append((f"client failed in {name}: {exc!r}", CLIENT_ERROR, b""))
            return name == "done"  # a client that cannot say is done, and does not want to resume

    def _reconnect(self) -> None:
        if self._client_flag("wants_reconnect") and self._reconnects < self.config.max_reconnects:
            self._reconnects += 1
            self._move(EngineEvent.RECONNECT)
            self._issue(self.config.open_channel(self._next_number()))

    # --- terminal responses ------------------------------------------------------------------------------------

    def _answered(
        self, command: ProactiveCommand, general: int, additional: bytes, response: TerminalResponse
    ) -> None:
        ok = GeneralResult.OK <= general < 0x10
        outcome = "ok" if ok else "failed"
        if command.type == CommandType.OPEN_CHANNEL and ok and self.state is EngineState.OPENING:
            statuses = channel_statuses(response)
            self.channel = statuses[0]["channel_id"] if statuses else 1
            self.buffer = buffer_size(response) or self.config.buffer_size
            self.tx_free = self.buffer
            established = bool(statuses and statuses[0]["link_established"])
            if self.config.link_mode is LinkMode.BACKGROUND and not established:
                outcome = "background"
        event = RESPONSE_EVENTS.get((command.type, outcome))
        try:
            if event is None:
                raise IllegalEngineEvent(self.state, EngineEvent.DATA_OK)
            self._move(event)
        except IllegalEngineEvent:
            # an answer the current state does not expect (e.g. after a drop): note it and carry on
            self.failures.append(
                (f"unexpected {command.type_name} result in state {self.state.value}", general, additional)
            )
            self._pump()
            return
        if event in (EngineEvent.OPEN_FAILED, EngineEvent.DATA_FAILED):
            self._fail(
                f"{command.type_name} failed: result 0x{general:02X} {additional.hex().upper()}",
                general,
                additional,
            )
            return
        if event is EngineEvent.EVENTS_SET:
            self._issue(self.config.open_channel(self._next_number()))
        elif event is EngineEvent.OPENED:
            self._connected()
        elif event is EngineEvent.CLOSED:
            self._finish()
            return
        elif command.type == CommandType.SEND_DATA:
            free = channel_data_length(response)
            self.tx_free = self.buffer if free is None else (self.buffer if free == 0xFF else free)
        elif command.type == CommandType.RECEIVE_DATA:
            data = channel_data(response)
            left = channel_data_length(response) or 0
            self._rx_available = left
            if data:
                self._tx += self._received(data)
        self._pump()

    def _connected(self) -> None:
        self.sessions += 1
        self._tx += self._made()
        self._pump()

    def _finish(self) -> None:
        self.channel = 0
        self._reconnect()

    def _pump(self) -> None:
        """Issues the next command when none is outstanding: receive first, then send, then close."""
        if self.state not in (EngineState.OPEN, EngineState.DRAINING) or not self._idle_line():
            return
        if self._rx_available:
            want = (
                MAX_CHANNEL_DATA if self._rx_available == 0xFF else min(self._rx_available, MAX_CHANNEL_DATA)
            )
            self._issue(receive_data(self.channel, want, self._next_number()))
            return
        if self.state is EngineState.DRAINING:
            self._drop()
            return
        if self._tx:
            room = max(1, min(self.tx_free, MAX_CHANNEL_DATA))
            chunk = bytes(self._tx[:room])
            del self._tx[:room]
            # store while more of this message follows and fits the buffer; send immediately with the last piece
            immediate = not self._tx or self.tx_free - len(chunk) <= 0
            self._issue(send_data(self.channel, chunk, immediate=immediate, number=self._next_number()))
            self.tx_free = self.buffer if immediate else self.tx_free - len(chunk)
            return
        if self._client_flag("done"):
            self._move(EngineEvent.CLOSE)
            self._issue(close_channel(self.channel, self._next_number()))

    # --- events --------------------------------------------------------------------------------------------------

    def _data_available(self, envelope: Envelope) -> None:
        length = channel_data_length(envelope)
        statuses = channel_statuses(envelope)
        if statuses and statuses[0]["channel_id"] != self.channel:
            return
        self._rx_available = 0xFF if length is None else length
        self._pump()

    def _channel_status_event(self, envelope: Envelope) -> None:
        statuses = channel_statuses(envelope)
        if not statuses or statuses[0]["channel_id"] != self.channel:
            return
        status = statuses[0]
        event = EngineEvent.LINK_UP if status["link_established"] else EngineEvent.LINK_DROPPED
        try:
            self._move(event)
        except IllegalEngineEvent:
            return  # e.g. a second "established", or a drop after the card closed: nothing to do
        if event is EngineEvent.LINK_UP:
            self._connected()
            return
        # link dropped (further info 0x05): what the terminal still holds can be read, then the channel closes
        self.failures.append(("link dropped", GeneralResult.BIP_ERROR, bytes((status["further_info"],))))
        self._tx.clear()
        self._pump()

    def _drop(self) -> None:
        self._rx_available = 0
        self._lost("link dropped")
        self._move(EngineEvent.CLOSE)
        self._issue(close_channel(self.channel, self._next_number()))


class MultiChannelEngine:
    """Several BIP sessions of one card at the same time, each on its own channel (TS 102 223 allows up to 7).

    The card has one proactive command queue: the engines take turns (round robin) for the next FETCH, and a
    TERMINAL RESPONSE goes to the engine whose command was fetched. Events are offered to every engine; each keeps
    the ones of its own channel. The first engine sets up the event list; the others open their channels once it
    has, so the first session gets the first channel.
    """

    def __init__(self, engines: list[BipEngine]) -> None:
        if not engines:
            raise ValueError("at least one engine")
        self.engines = engines
        for engine in engines[1:]:
            engine.event_list = False
            engine.trigger_on_profile = False
        self._current: BipEngine | None = None  # the engine whose command was fetched and awaits its TR
        self._chosen: BipEngine | None = None  # the engine whose command the last 91 xx announced
        self._last = len(engines) - 1  # so that the first engine is served first
        self._others_started = False

    @property
    def primary(self) -> BipEngine:
        return self.engines[0]

    def terminal_profile(self, profile: bytes) -> None:
        for engine in self.engines:
            engine.terminal_profile(profile)
        self._start_others()

    def _start_others(self) -> None:
        if self._others_started or self.primary.state in (EngineState.IDLE, EngineState.EVENTS):
            return
        self._others_started = True
        for engine in self.engines[1:]:
            engine.trigger()

    def pending_length(self) -> int:
        if self._current is not None:
            return 0  # one proactive command at a time: the fetched one waits for its TERMINAL RESPONSE
        if self._chosen is not None:  # the command a 91 xx announced stays the one FETCH returns
            length = self._chosen.pending_length()
            if length:
                return length
            self._chosen = None
        count = len(self.engines)
        for offset in range(1, count + 1):
            index = (self._last + offset) % count
            length = self.engines[index].pending_length()
            if length:
                self._last, self._chosen = index, self.engines[index]
                return length
        return 0

    def fetch(self) -> bytes:
        if not self.pending_length() or self._chosen is None:
            raise ToolkitError(0x6F00, "no proactive command pending")
        engine, self._chosen = self._chosen, None
        data = engine.fetch()
        self._current = engine
        return data

    def terminal_response(self, data: bytes) -> None:
        engine = self._current
        if engine is None:
            raise ToolkitError(0x6F00, "terminal response without a fetched command")
        engine.terminal_response(data)  # raises (and keeps the command outstanding) on a bad response
        self._current = None
        self._start_others()

    def envelope(self, data: bytes) -> bytes:
        for engine in self.engines:
            engine.envelope(data)
        return b""

    def trigger(self) -> None:
        self.primary.trigger()

    @property
    def busy(self) -> bool:
        return any(engine.busy for engine in self.engines)

    @property
    def failures(self) -> list[tuple[str, int, bytes]]:
        return [failure for engine in self.engines for failure in engine.failures]
