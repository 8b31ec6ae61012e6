"""The BIP channel state tables, without an event loop (ETSI TS 102 223 sections 6.4.27-6.4.31, 7.5.10-7.5.11,
8.12.11): every row of the terminal's channel table (cp/bip_gateway.py) and of the card's engine table
(uicc/bip_engine.py), every pair that is not a row raising IllegalTransition, and the answer each illegal event gets
(a terminal response with its TS 102 223 result for a card command, nothing for a late bearer report; on the card,
an unexpected terminal response noted in `failures`, an event for a state that does not expect it ignored)."""

from __future__ import annotations

import itertools

import pytest

from bipsim.cp.bip_gateway import (
    CARD_EVENTS,
    TRANSITIONS,
    BearerOpen,
    BipGateway,
    Channel,
    ChannelEvent,
    ChannelState,
    IllegalChannelEvent,
    IllegalTransition,
    illegal_answer,
)
from bipsim.uicc import bip_engine
from bipsim.uicc.bip_engine import (
    BipConfig,
    BipEngine,
    EngineEvent,
    EngineState,
    LinkMode,
    next_state,
)
from bipsim.uicc.cat import (
    OPEN_BACKGROUND,
    OPEN_IMMEDIATE,
    BipErrorCause,
    CommandType,
    DeviceId,
    Envelope,
    Event,
    GeneralResult,
    OpenChannel,
    TerminalProblem,
    TerminalResponse,
    channel_data_length_object,
    channel_status_object,
    decode_proactive,
    get_channel_status,
    receive_data,
    send_data,
)
from bipsim.uicc.test_clients import RequestResponseClient
from tests.test_gateway import open_command, result, the_tr

# --- the terminal's channel table --------------------------------------------------------------------------------


def channel_in(state: ChannelState) -> Channel:
    command = open_command()
    return Channel(1, OpenChannel.from_command(command), command, 1400, state)


@pytest.mark.parametrize(("state", "event"), sorted(TRANSITIONS, key=str), ids=str)
def test_every_row_of_the_channel_table(state: ChannelState, event: ChannelEvent) -> None:
    channel = channel_in(state)
    channel.move(event)
    assert channel.state is TRANSITIONS[(state, event)]


ILLEGAL = [pair for pair in itertools.product(ChannelState, ChannelEvent) if pair not in TRANSITIONS]


@pytest.mark.parametrize(("state", "event"), ILLEGAL, ids=str)
def test_every_other_pair_is_an_illegal_transition_with_its_answer(
    state: ChannelState, event: ChannelEvent
) -> None:
    channel = channel_in(state)
    with pytest.raises(IllegalChannelEvent) as illegal:
        channel.move(event)
    assert channel.state is state  # nothing changed
    assert (illegal.value.state, illegal.value.event, illegal.value.channel) == (state, event, 1)
    expected: tuple[int, bytes] | None
    if event not in CARD_EVENTS:
        expected = None  # a late bearer report: no answer to the card
    elif state in (ChannelState.OPENING, ChannelState.CLOSED):
        expected = (GeneralResult.BIP_ERROR, bytes((BipErrorCause.CHANNEL_ID_NOT_VALID,)))
    elif state is ChannelState.DROPPED:
        expected = (GeneralResult.BIP_ERROR, bytes((BipErrorCause.CHANNEL_CLOSED,)))
    else:
        expected = (GeneralResult.TERMINAL_UNABLE, bytes((TerminalProblem.NO_SPECIFIC_CAUSE,)))
    assert illegal.value.answer == expected == illegal_answer(state, event)


def test_the_table_covers_what_a_channel_can_live_through() -> None:
    # every state but CLOSED can be closed by the card; every state is reached by some row or is initial
    closable = {state for (state, event) in TRANSITIONS if event is ChannelEvent.CLOSE}
    assert closable == set(ChannelState) - {ChannelState.CLOSED}
    reached = set(TRANSITIONS.values()) | {
        ChannelState.OPENING,
        ChannelState.CONNECTING,
        ChannelState.ON_DEMAND,
    }
    assert reached == set(ChannelState)


def test_send_data_on_a_dropped_channel_is_bip_error_channel_closed() -> None:
    gateway = BipGateway()
    gateway.on_command(open_command())
    gateway.on_link_established(1)
    gateway.on_link_dropped(1)
    answer = gateway.on_command(send_data(1, b"x", immediate=True, number=2))
    assert result(the_tr(answer)) == (0x3A, bytes((BipErrorCause.CHANNEL_CLOSED,)))
    assert gateway.channels[1].state is ChannelState.DROPPED


@pytest.mark.parametrize("kind", ["send", "receive"])
def test_a_command_on_a_channel_whose_open_channel_is_unanswered_is_channel_id_not_valid(kind: str) -> None:
    gateway = BipGateway()
    actions = gateway.on_command(open_command(qualifier=OPEN_IMMEDIATE))  # immediate: TR waits for the link
    assert [type(a) for a in actions] == [BearerOpen]
    command = send_data(1, b"x", immediate=True, number=2) if kind == "send" else receive_data(1, 5, number=2)
    answer = gateway.on_command(command)
    assert result(the_tr(answer)) == (0x3A, bytes((BipErrorCause.CHANNEL_ID_NOT_VALID,)))
    assert gateway.channels[1].state is ChannelState.OPENING


def test_link_failures_keep_the_bearers_result_and_late_reports_get_no_answer() -> None:
    gateway = BipGateway()
    gateway.on_command(open_command(qualifier=OPEN_IMMEDIATE))
    # 0x21 network currently unable, SM cause #27 with bit 8 set (the own stack's PDP refusal)
    failed = gateway.on_link_failed(1, GeneralResult.NETWORK_UNABLE, b"\x9b")
    assert result(the_tr(failed)) == (0x21, b"\x9b") and 1 not in gateway.channels
    gateway.on_command(open_command(qualifier=OPEN_IMMEDIATE | OPEN_BACKGROUND, number=3))
    assert gateway.channels[1].state is ChannelState.CONNECTING
    gateway.on_link_established(1)
    assert gateway.on_link_established(1) == []  # a second report: illegal, no answer
    assert gateway.on_link_failed(1, GeneralResult.TERMINAL_UNABLE, b"\x04") == []
    assert gateway.channels[1].state is ChannelState.ESTABLISHED


# --- the card's engine table ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "event"), sorted(bip_engine.TRANSITIONS, key=str), ids=str)
def test_every_row_of_the_engine_table(state: EngineState, event: EngineEvent) -> None:
    assert next_state(state, event) is bip_engine.TRANSITIONS[(state, event)]


ENGINE_ILLEGAL = [
    pair for pair in itertools.product(EngineState, EngineEvent) if pair not in bip_engine.TRANSITIONS
]


@pytest.mark.parametrize(("state", "event"), ENGINE_ILLEGAL, ids=str)
def test_every_other_engine_pair_is_an_illegal_transition(state: EngineState, event: EngineEvent) -> None:
    with pytest.raises(bip_engine.IllegalEngineEvent) as illegal:
        next_state(state, event)
    assert (illegal.value.state, illegal.value.event) == (state, event)
    assert isinstance(illegal.value, IllegalTransition)  # the project's one error type for every table


def answered(engine: BipEngine, general: int = GeneralResult.OK) -> None:
    command = decode_proactive(engine.fetch())
    objects = []
    if command.type == CommandType.OPEN_CHANNEL:
        objects = [channel_status_object(1, engine.config.link_mode is not LinkMode.BACKGROUND)]
    engine.terminal_response(TerminalResponse.build(command, general, b"", objects).encode())


def status_event(channel: int, established: bool, further: int = 0) -> bytes:
    return Envelope.event_download(
        Event.CHANNEL_STATUS, DeviceId.TERMINAL, [channel_status_object(channel, established, further)]
    ).encode()


def background_engine() -> tuple[BipEngine, RequestResponseClient]:
    client = RequestResponseClient(b"GET /", 10)
    engine = BipEngine(BipConfig(link_mode=LinkMode.BACKGROUND), client, trigger_on_profile=False)
    engine.trigger()
    assert engine.state is EngineState.EVENTS
    answered(engine)  # SET UP EVENT LIST
    assert engine.state is EngineState.OPENING
    answered(engine)  # OPEN CHANNEL, link in background
    assert engine.state is EngineState.WAIT_LINK
    return engine, client


def test_the_engine_walks_its_table_through_a_session_and_a_drop() -> None:
    engine, client = background_engine()
    engine.envelope(status_event(1, True))
    assert engine.state is EngineState.OPEN and engine.sessions == 1
    answered(engine)  # SEND DATA "GET /"
    engine.envelope(
        Envelope.event_download(
            Event.DATA_AVAILABLE,
            DeviceId.TERMINAL,
            [channel_status_object(1, True), channel_data_length_object(4)],
        ).encode()
    )
    engine.envelope(status_event(1, False, 0x05))  # the link drops with 4 bytes still in the terminal
    assert engine.state is EngineState.DRAINING
    assert decode_proactive(engine.fetch()).type == CommandType.RECEIVE_DATA  # what is left is read first
    assert engine.failures[-1] == ("link dropped", GeneralResult.BIP_ERROR, b"\x05")


def test_events_for_a_state_that_does_not_expect_them_are_ignored() -> None:
    engine, _ = background_engine()
    engine.envelope(status_event(1, True))
    assert engine.state is EngineState.OPEN and engine.sessions == 1
    engine.envelope(status_event(1, True))  # a second "established": illegal, ignored
    assert engine.state is EngineState.OPEN and engine.sessions == 1
    idle = BipEngine(BipConfig(), RequestResponseClient(b"x", 1), trigger_on_profile=False)
    idle.channel = 1
    idle.envelope(status_event(1, False, 0x05))  # a drop with no channel open: ignored
    assert idle.state is EngineState.IDLE and not idle.failures


def test_a_terminal_response_the_state_does_not_expect_is_kept_in_failures() -> None:
    engine, _ = background_engine()
    # GET CHANNEL STATUS answered while still waiting for the link: not in the table for WAIT_LINK
    command = get_channel_status(number=9)
    engine._outstanding, engine._fetched = command, True  # as if the engine had issued it
    engine.terminal_response(
        TerminalResponse.build(command, GeneralResult.TERMINAL_UNABLE, b"\x00", []).encode()
    )
    assert engine.state is EngineState.WAIT_LINK
    assert engine.failures[-1] == (
        "unexpected GET CHANNEL STATUS result in state waiting for the link",
        GeneralResult.TERMINAL_UNABLE,
        b"\x00",
    )
