"""The sans-IO 27.010 connection (link/cmux_connection.py) without an event loop: every row of its DLC transition
table, every event the table refuses and the protocol's answer to it, the control channel, timers, flow control,
and arbitrary bytes from the peer (never an exception, never a hang)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bipsim.link.cmux_connection import (
    TRANSITIONS,
    CloseDown,
    CloseReason,
    CmuxConnection,
    CmuxParams,
    Data,
    DlcClosed,
    DlcInput,
    DlcNotAccepted,
    DlcOpened,
    DlcState,
    DlcStateError,
    Event,
    FlowControl,
    FrameReceived,
    FramesDropped,
    MalformedControl,
    ModemStatus,
    MuxClosed,
    MuxError,
    MuxRole,
    PeerError,
    TestAnswer,
    Timer,
    UnknownControl,
)
from bipsim.link.cmux_frame import (
    MSC_DV,
    MSC_FC,
    ControlMessage,
    ControlType,
    Frame,
    FrameParser,
    FrameType,
    decode_control,
    encode_frame,
    msc_value,
)

D = 3  # the DLC under test

# --- helpers: the peer's frames, what the connection wrote ---------------------------------------------------


def peer(
    conn: CmuxConnection, dlci: int, ftype: FrameType, info: bytes = b"", *, command: bool = True
) -> None:
    """Feeds one frame from the peer, with the peer's C/R bit (section 5.2.1.2)."""
    peer_initiator = conn.role is MuxRole.RESPONDER
    cr = command == peer_initiator
    conn.receive_data(encode_frame(dlci, ftype, cr, ftype is not FrameType.UIH, info))


def peer_control(conn: CmuxConnection, kind: int, value: bytes = b"", *, command: bool = True) -> None:
    peer(conn, 0, FrameType.UIH, ControlMessage(kind, command, value).encode())


def frames(data: bytes) -> list[Frame]:
    return FrameParser().feed(data)


def written(conn: CmuxConnection) -> list[Frame]:
    """The frames the connection queued (answers), emptying the queue."""
    return frames(conn.data_to_send())


def controls(found: list[Frame]) -> list[ControlMessage]:
    return [m for f in found if f.dlci == 0 and f.type is FrameType.UIH for m in decode_control(f.info)]


def dlc_frames(found: list[Frame], dlci: int = D) -> list[tuple[FrameType, bool]]:
    return [(f.type, f.pf) for f in found if f.dlci == dlci]


def initiator(**params: float) -> CmuxConnection:
    """An initiator with DLC 0 open."""
    conn = CmuxConnection(MuxRole.INITIATOR, CmuxParams(**params))  # type: ignore[arg-type]
    conn.open_dlc(0)
    peer(conn, 0, FrameType.UA, command=False)
    conn.data_to_send()
    conn.next_events()
    return conn


def responder(accept: Callable[[int], bool] = lambda dlci: 1 <= dlci <= 63) -> CmuxConnection:
    """A responder with DLC 0 open."""
    conn = CmuxConnection(MuxRole.RESPONDER, accept=accept)
    peer(conn, 0, FrameType.SABM)
    assert dlc_frames(written(conn), 0) == [(FrameType.UA, True)]
    conn.next_events()
    return conn


def expire(conn: CmuxConnection, timer: Timer) -> list[Frame]:
    """Runs the timer out until it stops; the frames retransmitted meanwhile."""
    sent: list[Frame] = []
    while conn.timer_seconds(timer) is not None:
        sent += frames(conn.timer_expired(timer))
    return sent


# --- every row of the transition table ---------------------------------------------------------------------------


def in_state(state: DlcState) -> CmuxConnection:
    """An initiator whose DLC D is in `state`, with a record of it (it was established once, unless OPENING)."""
    conn = initiator()
    if state is DlcState.OPENING:
        conn.open_dlc(D)
    else:
        conn.open_dlc(D)
        peer(conn, D, FrameType.UA, command=False)
        if state is DlcState.CLOSED:
            peer(conn, D, FrameType.DISC)
        elif state is DlcState.CLOSING:
            conn.close_dlc(D, conn.generation(D))
    conn.data_to_send()
    conn.next_events()
    assert conn.dlc_state(D) is state
    return conn


def apply(conn: CmuxConnection, event: DlcInput) -> None:
    if event is DlcInput.OPEN:
        conn.open_dlc(D)
    elif event is DlcInput.CLOSE:
        conn.close_dlc(D, conn.generation(D))
    elif event is DlcInput.PEER_SABM:
        peer(conn, D, FrameType.SABM)
    elif event is DlcInput.PEER_DISC:
        peer(conn, D, FrameType.DISC)
    elif event is DlcInput.UA:
        peer(conn, D, FrameType.UA, command=False)
    elif event is DlcInput.DM:
        peer(conn, D, FrameType.DM, command=False)
    elif event is DlcInput.DATA:
        peer(conn, D, FrameType.UIH, b"payload")
    elif event is DlcInput.TIMEOUT:
        expire(conn, Timer("T1", D))
    elif event is DlcInput.ABANDON:
        conn.abandon(D)
    else:
        conn.shutdown()


ROWS = sorted(TRANSITIONS.items(), key=lambda row: (row[0][0].value, row[0][1].value))


@pytest.mark.parametrize(("key", "step"), ROWS, ids=[f"{s.value}-{e.value}" for (s, e), _ in ROWS])
def test_every_row_of_the_table(key: tuple[DlcState, DlcInput], step: object) -> None:
    state, event = key
    conn = in_state(state)
    generation = conn.generation(D)
    apply(conn, event)
    row = TRANSITIONS[key]
    assert conn.dlc_state(D) is row.next
    # the answer to the peer's command: UA or DM with F set (section 5.4.1, 5.4.4), and nothing else on D
    answers = [(t, pf) for t, pf in dlc_frames(written(conn)) if t in (FrameType.UA, FrameType.DM)]
    assert answers == ([(row.answer, True)] if row.answer is not None else [])
    events = conn.next_events()
    opened = [e for e in events if isinstance(e, DlcOpened) and e.dlci == D]
    closed = [e for e in events if isinstance(e, DlcClosed) and e.dlci == D]
    if row.establish:
        assert conn.generation(D) == generation + 1 and len(opened) == 1
    else:
        assert conn.generation(D) == generation and not opened
    if row.next is DlcState.CLOSED and state is not DlcState.CLOSED:
        assert [e.reason for e in closed] == [row.reason or CloseReason.SHUTDOWN]
        assert conn.closed_reason(D) is closed[0].reason
    else:
        assert not closed
    if event is DlcInput.DATA:
        assert [e.data for e in events if isinstance(e, Data)] == [b"payload"]


# --- every event the table refuses, and its answer ----------------------------------------------------------------

ILLEGAL = sorted(
    ((s, e) for s in DlcState for e in DlcInput if (s, e) not in TRANSITIONS),
    key=lambda pair: (pair[0].value, pair[1].value),
)


@pytest.mark.parametrize(("state", "event"), ILLEGAL, ids=[f"{s.value}-{e.value}" for s, e in ILLEGAL])
def test_every_illegal_event_gets_its_answer(state: DlcState, event: DlcInput) -> None:
    conn = in_state(state)
    generation = conn.generation(D)
    if event is DlcInput.OPEN:
        # a local command the table refuses reaches its caller as a typed error
        with pytest.raises(MuxError, match="already open" if state is DlcState.OPEN else "in state"):
            apply(conn, event)
    else:
        apply(conn, event)
    assert conn.dlc_state(D) is state and conn.generation(D) == generation  # nothing changed
    sent = written(conn)
    events = conn.next_events()
    if event is DlcInput.DATA:
        # data on a DLC that is not open: DM (section 5.3.3), and an error event
        assert dlc_frames(sent) == [(FrameType.DM, True)]
        assert not [e for e in events if isinstance(e, Data)]
        (error,) = [e for e in events if isinstance(e, PeerError)]
        assert isinstance(error.error, DlcStateError) and error.answer == "DM"
        assert conn.stats.dm_sent == 1
    elif event is DlcInput.DM:
        # an unsolicited DM on an open DLC: dropped, no answer, an error event
        assert sent == []
        (error,) = [e for e in events if isinstance(e, PeerError)]
        assert isinstance(error.error, DlcStateError) and error.answer is None
    else:
        # our own commands with nothing to act on: close, timers and abandon of a DLC not waiting for an answer
        assert sent == [] and events == []


def test_the_table_knows_every_state_and_input() -> None:
    assert {s for s, _ in TRANSITIONS} == set(DlcState)
    assert {e for _, e in TRANSITIONS} == set(DlcInput)
    assert all((s, DlcInput.SHUTDOWN) in TRANSITIONS for s in DlcState)


# --- establishment: roles, C/R, guards, T1/N2 -------------------------------------------------------------------


def test_initiator_open_sets_cr_and_p_and_announces_signals() -> None:
    conn = CmuxConnection(MuxRole.INITIATOR)
    (sabm,) = frames(conn.open_dlc(0))
    assert (sabm.dlci, sabm.type, sabm.cr, sabm.pf) == (
        0,
        FrameType.SABM,
        True,
        True,
    )  # Table 1: command, C/R 1
    with pytest.raises(MuxError, match="DLC 0 is established before"):
        conn.open_dlc(1)
    peer(conn, 0, FrameType.UA, command=False)
    assert conn.next_events() == [DlcOpened(0, 1, by_peer=False)]
    assert written(conn) == []  # no MSC for the control channel
    conn.open_dlc(1)
    peer(conn, 1, FrameType.UA, command=False)
    assert conn.next_events() == [DlcOpened(1, 1, by_peer=False)]
    (msc,) = controls(written(conn))  # section 5.4.6.3.7: our V.24 signals before any data
    assert msc.type == ControlType.MSC and msc.command and msc.value[0] >> 2 == 1 and msc.value[1] & MSC_DV


def test_responder_answers_with_cr_set_and_reports_the_new_dlc() -> None:
    conn = CmuxConnection(MuxRole.RESPONDER)
    peer(conn, 0, FrameType.SABM)
    (ua,) = written(conn)
    assert (ua.type, ua.cr, ua.pf) == (FrameType.UA, True, True)  # Table 1: a responder's response has C/R 1
    peer(conn, 2, FrameType.SABM)
    sent = written(conn)
    assert dlc_frames(sent, 2) == [(FrameType.UA, True)]
    assert [m.type for m in controls(sent)] == [ControlType.MSC]
    assert [e for e in conn.next_events() if isinstance(e, DlcOpened) and e.dlci] == [
        DlcOpened(2, 1, by_peer=True)
    ]


@pytest.mark.parametrize(
    ("dlci", "why"),
    [(1, "before DLC 0"), (62, "DLCI 62"), (9, "not accepted")],
    ids=["first", "62", "filter"],
)
def test_refused_sabm_gets_dm(dlci: int, why: str) -> None:
    if why == "before DLC 0":
        conn = CmuxConnection(MuxRole.RESPONDER)
    else:
        conn = responder(accept=lambda d: d != 9)
    peer(conn, dlci, FrameType.SABM)
    assert dlc_frames(written(conn), dlci) == [(FrameType.DM, True)]
    (error,) = conn.next_events()
    assert isinstance(error, PeerError) and isinstance(error.error, DlcNotAccepted)
    assert conn.dlc_state(dlci) is DlcState.CLOSED


def test_local_open_of_a_bad_dlci_or_a_closed_mux() -> None:
    conn = initiator()
    with pytest.raises(ValueError, match="62"):
        conn.open_dlc(62)
    with pytest.raises(ValueError):
        conn.open_dlc(64)
    conn.shutdown()
    with pytest.raises(MuxClosed):
        conn.open_dlc(1)


def test_t1_grows_and_n2_retransmissions_then_timeout() -> None:
    conn = CmuxConnection(MuxRole.INITIATOR, CmuxParams(t1=0.1, n2=3))
    conn.open_dlc(0)
    timer = Timer("T1", 0)
    seen = []
    resent = []
    while (seconds := conn.timer_seconds(timer)) is not None:
        seen.append(round(seconds, 3))
        resent += frames(conn.timer_expired(timer))
    assert seen == [0.1, 0.2, 0.3, 0.4]
    assert [(f.dlci, f.type, f.pf) for f in resent] == [(0, FrameType.SABM, True)] * 3
    assert conn.stats.retransmissions == 3
    assert conn.next_events() == [DlcClosed(0, 0, CloseReason.TIMEOUT)]
    assert not conn.closed  # an open of DLC 0 that failed never opened the multiplexer
    assert conn.timer_expired(timer) == b""  # a timer that no longer runs
    conn.open_dlc(0)  # a later attempt starts from scratch


def test_disc_retransmitted_then_released_on_timeout() -> None:
    conn = in_state(DlcState.CLOSING)
    sent = expire(conn, Timer("T1", D))
    assert [(f.type, f.dlci) for f in sent] == [(FrameType.DISC, D)] * 3
    assert conn.dlc_state(D) is DlcState.CLOSED and conn.closed_reason(D) is CloseReason.TIMEOUT


def test_close_of_a_stale_establishment_is_nothing() -> None:
    conn = in_state(DlcState.OPEN)
    old = conn.generation(D)
    peer(conn, D, FrameType.DISC)
    peer(conn, D, FrameType.SABM)  # released and established again by the peer
    conn.data_to_send()
    assert conn.close_dlc(D, old) == b""
    assert conn.dlc_state(D) is DlcState.OPEN and conn.generation(D) == old + 1
    assert not conn.is_open(D, old) and conn.is_open(D, old + 1)


def test_both_ends_opening_at_once_gives_the_dlc_to_our_opener() -> None:
    conn = initiator()
    conn.open_dlc(D)
    peer(conn, D, FrameType.SABM)
    assert [e for e in conn.next_events() if isinstance(e, DlcOpened)] == [DlcOpened(D, 1, by_peer=False)]
    assert conn.timer_seconds(Timer("T1", D)) is None


def test_disc_of_dlc0_closes_the_multiplexer_and_keeps_what_follows() -> None:
    conn = responder()
    peer(conn, 1, FrameType.SABM)
    conn.data_to_send()
    conn.next_events()
    conn.receive_data(encode_frame(0, FrameType.DISC, True, True) + b"AT\r")
    assert dlc_frames(written(conn), 0) == [(FrameType.UA, True)]
    events = conn.next_events()
    assert CloseDown(by_peer=True) in events
    assert DlcClosed(1, 1, CloseReason.SHUTDOWN) in events
    assert conn.closed and conn.dlc_state(1) is DlcState.CLOSED
    conn.receive_data(b"+CMUX?\r")
    assert conn.take_leftover() == b"AT\r+CMUX?\r"


def test_our_disc_of_dlc0_answered_or_not_closes_the_multiplexer() -> None:
    for answered in (True, False):
        conn = initiator()
        conn.close_dlc(0, conn.generation(0))
        if answered:
            peer(conn, 0, FrameType.UA, command=False)
        else:
            expire(conn, Timer("T1", 0))
        assert conn.closed
        assert [e for e in conn.next_events() if isinstance(e, CloseDown)] == [CloseDown(by_peer=False)]


# --- data and flow control ---------------------------------------------------------------------------------------


def test_send_data_frames_at_n1_and_refuses_a_closed_dlc() -> None:
    conn = in_state(DlcState.OPEN)
    conn.n1 = 10
    sent = frames(conn.send_data(D, conn.generation(D), bytes(25)))
    assert [len(f.info) for f in sent] == [10, 10, 5] and all(f.cr and not f.pf for f in sent)
    with pytest.raises(DlcStateError):
        conn.send_data(D, conn.generation(D) + 1, b"x")
    peer(conn, D, FrameType.DISC)
    with pytest.raises(DlcStateError):
        conn.send_data(D, conn.generation(D), b"x")


def test_pn_agrees_n1_before_the_sabm() -> None:
    conn = responder()
    proposal = bytes((D, 0xF3, 7, 10)) + (16).to_bytes(2, "little") + bytes((3, 0))
    peer_control(conn, ControlType.PN, proposal)
    (answer,) = controls(written(conn))
    assert answer.type == ControlType.PN and not answer.command
    assert answer.value[1] == 0 and int.from_bytes(answer.value[4:6], "little") == 16
    peer(conn, D, FrameType.SABM)
    conn.data_to_send()
    assert conn.dlc_n1(D) == 16
    for n1 in (0, 40000):  # no length, and more than any frame carries: our limit instead
        peer_control(conn, ControlType.PN, bytes((4, 0, 0, 10)) + n1.to_bytes(2, "little") + bytes((3, 0)))
        (answer,) = controls(written(conn))
        assert 1 <= int.from_bytes(answer.value[4:6], "little") <= 32767


def test_receive_side_flow_control_marks() -> None:
    conn = CmuxConnection(MuxRole.RESPONDER, rx_high=100, rx_low=40)
    peer(conn, 0, FrameType.SABM)
    peer(conn, D, FrameType.SABM)
    conn.data_to_send()
    peer(conn, D, FrameType.UIH, bytes(60))
    assert written(conn) == []
    peer(conn, D, FrameType.UIH, bytes(60))
    (msc,) = controls(written(conn))  # above the high mark: FC (section 5.4.6.3.7)
    assert msc.value == msc_value(D, MSC_FC | 0x0C | MSC_DV) and conn.our_fc(D)
    assert conn.unread(D) == 120
    assert conn.resume_frame(D, 50) is None  # still above the low mark
    resume = conn.resume_frame(D, 10)
    assert resume is not None and conn.our_fc(D)  # nothing changes until it is written
    assert not controls(frames(resume))[0].value[1] & MSC_FC
    conn.flow_resumed(D)
    conn.consumed(D, 110)
    assert not conn.our_fc(D) and conn.unread(D) == 10


def test_peer_flow_control_msc_and_fcoff() -> None:
    conn = in_state(DlcState.OPEN)
    generation = conn.generation(D)
    peer_control(conn, ControlType.MSC, msc_value(D, MSC_FC | MSC_DV))
    assert controls(written(conn)) == [ControlMessage(ControlType.MSC, False, msc_value(D, MSC_FC | MSC_DV))]
    (status,) = conn.next_events()
    assert status == ModemStatus(D, MSC_FC | MSC_DV | 1) and status.flow_stopped
    assert not conn.may_send(D, generation) and conn.peer_signals(D) == MSC_FC | MSC_DV | 1
    peer_control(conn, ControlType.MSC, msc_value(D, MSC_DV))
    assert conn.may_send(D, generation)
    conn.next_events()
    peer_control(conn, ControlType.FCOFF)
    assert conn.next_events() == [FlowControl(stopped=True)] and not conn.may_send(D, generation)
    peer_control(conn, ControlType.FCON)
    assert conn.next_events() == [FlowControl(stopped=False)] and conn.may_send(D, generation)
    assert [m.type for m in controls(written(conn))] == [ControlType.MSC, ControlType.FCOFF, ControlType.FCON]
    # a new establishment starts with flow on
    peer_control(conn, ControlType.MSC, msc_value(D, MSC_FC))
    peer(conn, D, FrameType.DISC)
    peer(conn, D, FrameType.SABM)
    assert conn.may_send(D, generation + 1) and conn.peer_signals(D) is None


def test_msc_for_a_dlc_that_is_not_open_is_answered_without_state() -> None:
    conn = responder()
    peer_control(conn, ControlType.MSC, msc_value(9, MSC_DV))
    assert controls(written(conn)) == [ControlMessage(ControlType.MSC, False, msc_value(9, MSC_DV))]
    (error,) = conn.next_events()
    assert isinstance(error, PeerError) and "MSC for DLC 9" in error.summary
    assert 9 not in conn.known_dlcis()


# --- control channel ---------------------------------------------------------------------------------------------


def test_test_psc_and_unknown_types() -> None:
    conn = responder()
    peer_control(conn, ControlType.TEST, b"\xf9ping")
    peer_control(conn, ControlType.PSC)
    peer_control(conn, 0x74, b"\x01")
    assert controls(written(conn)) == [
        ControlMessage(ControlType.TEST, False, b"\xf9ping"),
        ControlMessage(ControlType.PSC, False),
        ControlMessage(ControlType.NSC, False, bytes((0x74 | 3,))),  # section 5.4.6.3.8
    ]
    (error,) = conn.next_events()
    assert isinstance(error, PeerError) and isinstance(error.error, UnknownControl) and error.answer == "NSC"
    assert conn.stats.nsc_sent == 1


def test_malformed_control_is_dropped_without_answer() -> None:
    conn = responder()
    peer(conn, 0, FrameType.UIH, bytes.fromhex("E30903"))  # its length overruns the frame
    assert written(conn) == []
    (error,) = conn.next_events()
    assert isinstance(error, PeerError) and isinstance(error.error, MalformedControl)
    assert not conn.closed


def test_our_test_answered_and_unanswered() -> None:
    conn = initiator(t2=0.3, n2=2)
    (frame,) = frames(conn.test(b"abc"))
    assert controls([frame]) == [ControlMessage(ControlType.TEST, True, b"abc")]
    assert conn.timer_seconds(Timer("T2", ControlType.TEST)) == 0.3
    peer_control(conn, ControlType.TEST, b"abc", command=False)
    assert conn.next_events() == [TestAnswer(b"abc")]
    conn.test(b"again")
    resent = expire(conn, Timer("T2", ControlType.TEST))
    assert len(resent) == 2 and conn.next_events() == []


def test_peer_cld_is_answered_and_closes_down() -> None:
    conn = responder()
    conn.receive_data(
        encode_frame(0, FrameType.UIH, True, False, ControlMessage(ControlType.CLD, True).encode()) + b"OK"
    )
    assert controls(written(conn)) == [ControlMessage(ControlType.CLD, False)]
    assert conn.next_events() == [CloseDown(by_peer=True), DlcClosed(0, 1, CloseReason.SHUTDOWN)]
    assert conn.closed and conn.take_leftover() == b"OK"


@pytest.mark.parametrize("answered", [True, False])
def test_our_cld(answered: bool) -> None:
    conn = initiator(t2=0.3, n2=2)
    assert controls(frames(conn.close_down())) == [ControlMessage(ControlType.CLD, True)]
    if answered:
        peer_control(conn, ControlType.CLD, command=False)
        assert conn.next_events()[0] == CloseDown(by_peer=False, answered=True)
    else:
        resent = expire(conn, Timer("T2", ControlType.CLD))
        assert len(resent) == 2  # N2 retransmissions at T2 (section 5.7.2)
        assert conn.next_events()[0] == CloseDown(by_peer=False, answered=False)
    assert conn.closed and conn.close_down() == b""


# --- tracing help and arbitrary bytes ----------------------------------------------------------------------------


def test_recorded_frames_and_dropped_frames_are_events() -> None:
    conn = CmuxConnection(MuxRole.RESPONDER, record_frames=True)
    sabm = encode_frame(0, FrameType.SABM, True, True)
    bad = bytearray(sabm)
    bad[-2] ^= 1
    conn.receive_data(bytes(bad) + sabm)
    events = conn.next_events()
    assert isinstance(events[0], FramesDropped) and events[0].bad_fcs == 1
    assert events[1] == FrameReceived(Frame(0, FrameType.SABM, True, True))


def _legal_events(events: list[Event]) -> None:
    for event in events:
        assert not isinstance(event, PeerError) or isinstance(event.error, MuxError)


# control messages the peer might send (MSC for DLC 3 with and without FC, Test, CLD, PN, FCoff, FCon, an unknown
# type, a length overrunning its value) and responses to commands we may have sent
CONTROL_SAMPLES = [
    b"\xe3\x05\x0f\x8d",
    b"\xe3\x05\x0f\x8f",
    b"\x23\x03\xab",
    b"\x21\x03\xab",
    b"\xc3\x01",
    b"\xc1\x01",
    b"\x83\x11\x03\x00\x07\x0a\x10\x00\x03\x00",
    b"\x63\x01",
    b"\xa3\x01",
    b"\x77\x03\x01",
    b"\xe3\x09\x03",
]
PREFACE = encode_frame(0, FrameType.SABM, True, True) + encode_frame(D, FrameType.SABM, True, True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    role=st.sampled_from(MuxRole),
    preface=st.booleans(),
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.builds(
                encode_frame,
                st.integers(0, 63),
                st.sampled_from(FrameType),
                st.booleans(),
                st.booleans(),
                st.one_of(st.binary(max_size=12), st.sampled_from(CONTROL_SAMPLES)),
            ),
        ),
        max_size=12,
    ),
)
def test_arbitrary_bytes_never_raise(role: MuxRole, preface: bool, chunks: list[bytes]) -> None:
    """Issue 13: whatever the peer sends becomes events, answers and counters; never another exception."""
    conn = CmuxConnection(role, record_frames=True)
    if preface:
        conn.receive_data(PREFACE)
    for chunk in chunks:
        conn.receive_data(chunk)
        _legal_events(conn.next_events())
        frames(conn.data_to_send())  # what we answer is well-formed
        for dlci in conn.known_dlcis():
            assert conn.dlc_state(dlci) in DlcState
    conn.shutdown()
    assert conn.closed
    conn.take_leftover()


def test_small_commands_and_queries() -> None:
    conn = in_state(DlcState.OPEN)
    generation = conn.generation(D)
    (frame,) = frames(conn.send_data(D, generation, b"one frame"))
    assert (frame.dlci, frame.type, frame.info) == (D, FrameType.UIH, b"one frame")
    assert controls(frames(conn.send_fc(True))) == [ControlMessage(ControlType.FCOFF, True)]
    assert controls(frames(conn.send_fc(False))) == [ControlMessage(ControlType.FCON, True)]
    assert conn.readable(D, generation) and not conn.readable(D, generation + 1)
    assert conn.stats.snapshot(conn.parser)["frames_out"] == conn.stats.frames_out
    conn.shutdown()
    with pytest.raises(MuxClosed):
        conn.test(b"x")


def test_a_closing_dlc_still_takes_data_and_stops_the_peer_past_the_mark() -> None:
    conn = in_state(DlcState.CLOSING)
    conn.rx_high = 10
    peer(conn, D, FrameType.UIH, bytes(20))
    assert [e for e in conn.next_events() if isinstance(e, Data)] == [Data(D, bytes(20))]
    (msc,) = controls(written(conn))
    assert msc.value[1] & MSC_FC and conn.our_fc(D)


def test_messages_after_a_cld_in_the_same_frame_are_not_acted_on() -> None:
    conn = responder()
    cld_then_test = (
        ControlMessage(ControlType.CLD, True).encode() + ControlMessage(ControlType.TEST, True).encode()
    )
    peer(conn, 0, FrameType.UIH, cld_then_test)
    assert controls(written(conn)) == [ControlMessage(ControlType.CLD, False)]
    assert conn.closed
