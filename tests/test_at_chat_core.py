"""The DTE chat's matching rules without an event loop (link/at_chat_core.py): every row of the transition table,
every input a state does not accept, and the rules the rows add up to (V.250 section 5.7, 27.007 section 9.2,
docs/architecture.md "Timing rules of the line"). Time is a number handed in."""

from __future__ import annotations

import itertools

import pytest

from bipsim.link.at_chat_core import (
    NEEDS_HELD,
    TABLE,
    Answered,
    AtChatCore,
    ChatEvent,
    ChatInput,
    ChatState,
    ChatStateError,
    Command,
    Failed,
    Traced,
    UrcLine,
    Write,
)
from bipsim.link.at_syntax import MAX_LINE, OverlongLine

St, In = ChatState, ChatInput
CMD = "AT+CGMI"  # the command each state is set up with, sent at t=0 with a 10 s timeout


def signature(events: list[ChatEvent]) -> list[str]:
    out = []
    for event in events:
        if isinstance(event, Traced):
            out.append(event.kind.value)
        elif isinstance(event, Write):
            out.append("write")
        elif isinstance(event, UrcLine):
            out.append("urc-line")
        elif isinstance(event, Answered):
            out.append(f"answered:{event.response.final}")
        elif isinstance(event, Failed):
            out.append("failed")
    return out


def core_in(state: ChatState, *, held: bool = False) -> AtChatCore:
    """A core brought to `state` through its entry points (with a second command held where `held`)."""
    core = AtChatCore(resync_quiet=5.0)
    core.urc_prefixes.append("+CEREG:")
    if state is St.CLOSED:
        core.receive_eof(0.0)
    elif state is not St.IDLE:
        core.command(CMD, 0.0, 10.0)
        if state is St.ANSWERED_SENDING:
            core.receive_data(b"\r\nOK\r\n", 0.5)
        elif state is St.WAITING:
            core.sent(0.0)
        elif state is St.STALE:
            core.sent(0.0)
            core.expire(10.0)
            if held:
                core.command("AT", 10.0, 10.0)
        elif state in (St.TORN, St.ENDING_TORN):
            core.send_held(3.0)
            if state is St.ENDING_TORN:
                core.command("AT", 3.0, 10.0)
    assert core.state is state
    core.events()
    return core


def fire(core: AtChatCore, event: ChatInput, now: float = 11.0) -> None:
    lines = {
        In.ECHO: CMD,
        In.INFO: "bipsim",
        In.FINAL: "OK",
        In.URC: "+CEREG: 1",
        In.OVERLONG: _overlong(),
        In.GONE: "BrokenResourceError",
    }
    command = Command("AT", now + 10.0) if event is In.COMMAND else None
    core.handle(event, now, line=lines.get(event, ""), command=command)


def _overlong() -> OverlongLine:
    line = OverlongLine("x" * MAX_LINE)
    line.length = MAX_LINE + 100
    return line


# (state, input) -> (state after, what comes out): one entry per row of TABLE
ROWS: dict[tuple[ChatState, ChatInput], tuple[ChatState, list[str]]] = {
    (St.IDLE, In.COMMAND): (St.SENDING, ["at.command", "write"]),
    (St.IDLE, In.INFO): (St.IDLE, ["at.error"]),  # nobody asked: dropped at once
    (St.IDLE, In.FINAL): (St.IDLE, ["at.error"]),
    (St.IDLE, In.URC): (St.IDLE, ["at.urc", "urc-line"]),
    (St.IDLE, In.OVERLONG): (St.IDLE, ["at.error"]),
    (St.IDLE, In.EOF): (St.CLOSED, []),
    (St.SENDING, In.SENT): (St.WAITING, []),
    (St.SENDING, In.SEND_HELD): (St.TORN, ["at.error", "failed"]),
    (St.SENDING, In.GONE): (St.IDLE, ["at.error", "answered:NO CARRIER"]),
    (St.SENDING, In.CANCEL): (St.IDLE, []),
    (St.SENDING, In.ECHO): (St.SENDING, ["at.echo"]),
    (St.SENDING, In.INFO): (St.SENDING, ["at.info"]),
    (St.SENDING, In.FINAL): (St.ANSWERED_SENDING, ["at.final"]),
    (St.SENDING, In.URC): (St.SENDING, ["at.urc", "urc-line"]),
    (St.SENDING, In.OVERLONG): (St.SENDING, ["at.error"]),
    (St.SENDING, In.EOF): (St.CLOSED, ["answered:NO CARRIER"]),
    (St.ANSWERED_SENDING, In.SENT): (St.IDLE, ["answered:OK"]),
    (St.ANSWERED_SENDING, In.SEND_HELD): (St.IDLE, ["answered:OK"]),
    (St.ANSWERED_SENDING, In.GONE): (St.IDLE, ["answered:OK"]),
    (St.ANSWERED_SENDING, In.ECHO): (St.ANSWERED_SENDING, ["at.error"]),
    (St.ANSWERED_SENDING, In.INFO): (St.ANSWERED_SENDING, ["at.error"]),
    (St.ANSWERED_SENDING, In.FINAL): (St.ANSWERED_SENDING, ["at.error"]),
    (St.ANSWERED_SENDING, In.URC): (St.ANSWERED_SENDING, ["at.urc", "urc-line"]),
    (St.ANSWERED_SENDING, In.OVERLONG): (St.ANSWERED_SENDING, ["at.error"]),
    (St.ANSWERED_SENDING, In.EOF): (St.CLOSED, ["answered:OK"]),
    (St.WAITING, In.ECHO): (St.WAITING, ["at.echo"]),
    (St.WAITING, In.INFO): (St.WAITING, ["at.info"]),
    (St.WAITING, In.FINAL): (St.IDLE, ["at.final", "answered:OK"]),
    (St.WAITING, In.URC): (St.WAITING, ["at.urc", "urc-line"]),
    (St.WAITING, In.OVERLONG): (St.WAITING, ["at.error"]),
    (St.WAITING, In.ANSWER_TIMEOUT): (St.STALE, ["at.error", "failed"]),
    (St.WAITING, In.CANCEL): (St.STALE, []),
    (St.WAITING, In.EOF): (St.CLOSED, ["answered:NO CARRIER"]),
    (St.STALE, In.COMMAND): (St.STALE, []),  # held until the line is in step
    (St.STALE, In.CANCEL): (St.STALE, []),  # (set up with a held command: it is dropped)
    (St.STALE, In.ECHO): (St.STALE, ["at.error"]),
    (St.STALE, In.INFO): (St.STALE, ["at.error"]),
    (St.STALE, In.FINAL): (St.IDLE, ["at.error"]),
    (St.STALE, In.URC): (St.STALE, ["at.urc", "urc-line"]),
    (St.STALE, In.OVERLONG): (St.STALE, ["at.error"]),
    (St.STALE, In.QUIET): (St.IDLE, ["at.error"]),
    # (set up with a held command, which goes at once: IDLE, then the held command's row)
    (St.STALE, In.GIVE_UP): (St.SENDING, ["at.error", "at.command", "write"]),
    (St.STALE, In.EOF): (St.CLOSED, []),
    (St.TORN, In.COMMAND): (St.ENDING_TORN, ["at.command", "write"]),
    (St.TORN, In.ECHO): (St.TORN, ["at.error"]),
    (St.TORN, In.INFO): (St.TORN, ["at.error"]),
    (St.TORN, In.FINAL): (St.TORN, ["at.error"]),
    (St.TORN, In.URC): (St.TORN, ["at.urc", "urc-line"]),
    (St.TORN, In.OVERLONG): (St.TORN, ["at.error"]),
    (St.TORN, In.EOF): (St.CLOSED, []),
    (St.ENDING_TORN, In.SENT): (St.STALE, []),
    (St.ENDING_TORN, In.SEND_HELD): (St.TORN, ["at.error", "failed"]),
    (St.ENDING_TORN, In.GONE): (St.TORN, ["at.error", "answered:NO CARRIER"]),
    (St.ENDING_TORN, In.CANCEL): (St.TORN, []),
    (St.ENDING_TORN, In.ECHO): (St.ENDING_TORN, ["at.error"]),
    (St.ENDING_TORN, In.INFO): (St.ENDING_TORN, ["at.error"]),
    (St.ENDING_TORN, In.FINAL): (St.ENDING_TORN, ["at.error"]),
    (St.ENDING_TORN, In.URC): (St.ENDING_TORN, ["at.urc", "urc-line"]),
    (St.ENDING_TORN, In.OVERLONG): (St.ENDING_TORN, ["at.error"]),
    (St.ENDING_TORN, In.EOF): (St.CLOSED, ["answered:NO CARRIER"]),
    (St.CLOSED, In.COMMAND): (St.CLOSED, ["at.error", "answered:NO CARRIER"]),
    (St.CLOSED, In.SENT): (St.CLOSED, []),
    (St.CLOSED, In.SEND_HELD): (St.CLOSED, []),
    (St.CLOSED, In.GONE): (St.CLOSED, []),
    (St.CLOSED, In.EOF): (St.CLOSED, []),
}


def test_rows_here_are_the_rows_of_the_table() -> None:
    assert set(ROWS) == set(TABLE)


@pytest.mark.parametrize(("state", "event"), sorted(TABLE, key=lambda row: (row[0].value, row[1].value)))
def test_each_row(state: ChatState, event: ChatInput) -> None:
    core = core_in(state, held=(state, event) in NEEDS_HELD)
    fire(core, event)
    after, out = ROWS[(state, event)]
    assert core.state is after
    assert signature(core.events()) == out


ILLEGAL = [pair for pair in itertools.product(ChatState, ChatInput) if pair not in TABLE]


@pytest.mark.parametrize(("state", "event"), ILLEGAL)
def test_each_illegal_input_is_refused_and_changes_nothing(state: ChatState, event: ChatInput) -> None:
    core = core_in(state)
    before = (core.current, core.held, core.stale, core.stale_until)
    with pytest.raises(ChatStateError) as refused:
        fire(core, event)
    assert (refused.value.state, refused.value.event) == (state, event)
    assert core.state is state and (core.current, core.held, core.stale, core.stale_until) == before
    assert core.events() == []


@pytest.mark.parametrize("event", [In.CANCEL, In.GIVE_UP])
def test_stale_rows_of_a_held_command_are_refused_without_one(event: ChatInput) -> None:
    core = core_in(St.STALE)
    with pytest.raises(ChatStateError):
        fire(core, event)
    assert core.state is St.STALE and core.events() == []


def test_a_second_command_while_one_is_held_is_refused() -> None:
    core = core_in(St.STALE, held=True)
    with pytest.raises(ChatStateError):
        core.command("AT+CSQ", 11.0, 10.0)
    assert core.held is not None and core.held.line == "AT"


def answered(core: AtChatCore) -> Answered:
    found = [e for e in core.events() if isinstance(e, Answered)]
    assert len(found) == 1
    return found[0]


def test_echo_information_and_final_make_the_answer() -> None:
    core = AtChatCore()
    core.command(CMD, 0.0, 10.0)
    core.sent(0.1)
    core.receive_data(b"AT+CGMI\r\r\nbip", 0.2)
    core.receive_data(b"sim\r\n\r\nOK\r\n", 0.3)
    response = answered(core).response
    assert (response.command, response.lines, response.final) == (CMD, ("bipsim",), "OK")


def test_trace_events_name_the_command_and_the_result() -> None:
    core = AtChatCore()
    line = 'AT%WEBOPCH=3,"TCP","ota.example",443'
    core.command(line, 0.0, 10.0)
    core.sent(0.0)
    core.receive_data(b"\r\n+CME ERROR: 30\r\n", 1.0)
    traced = [e for e in core.events() if isinstance(e, Traced)]
    assert [(e.kind.value, e.incoming, e.fields) for e in traced] == [
        ("at.command", False, {"command": "%WEBOPCH", "channel": 3}),
        ("at.final", True, {"result": "+CME ERROR: 30", "command": "%WEBOPCH", "channel": 3}),
    ]
    assert traced[0].data == line.encode() + b"\r" and traced[1].error


def test_numeric_finals_are_read_as_their_verbose_form() -> None:
    core = AtChatCore()
    core.command("ATV0", 0.0, 10.0)
    core.sent(0.0)
    core.receive_data(b"0\r", 0.1)
    assert answered(core).response.final == "OK"


def test_a_line_with_the_prefix_of_the_command_in_progress_is_its_answer_not_a_urc() -> None:
    core = AtChatCore()
    core.urc_prefixes.append("+CEREG:")
    core.command("AT+CEREG?", 0.0, 10.0)
    core.sent(0.0)
    core.receive_data(b"\r\n+CEREG: 1,1\r\n\r\nOK\r\n", 0.1)
    events = core.events()
    assert not [e for e in events if isinstance(e, UrcLine)]
    assert [e for e in events if isinstance(e, Answered)][0].response.lines == ("+CEREG: 1,1",)
    core.receive_data(b"\r\n+CEREG: 5\r\n", 0.2)  # between commands it is a URC again
    assert [e for e in core.events() if isinstance(e, UrcLine)] == [UrcLine("+CEREG: 5", "+CEREG:")]


def test_the_answer_timer_starts_once_the_line_is_out() -> None:
    core = AtChatCore()
    core.command(CMD, 0.0, 10.0)
    core.sent(2.0)  # the write took 2 s (a slow or flow-controlled line)
    assert core.deadline == 12.0
    core.expire(11.9)
    assert core.state is St.WAITING
    core.expire(12.0)
    assert core.state is St.STALE and signature(core.events())[-1] == "failed"


def test_a_late_answer_is_dropped_and_a_held_command_goes_after_its_final() -> None:
    core = AtChatCore(resync_quiet=5.0)
    core.urc_prefixes.append("+CEREG:")
    core.command("AT+CIMI", 0.0, 10.0)
    core.sent(0.0)
    core.expire(10.0)
    core.events()
    held = core.command("AT+CGMI", 10.0, 10.0)
    assert core.state is St.STALE and core.deadline == 15.0  # window and half its budget: both at 15
    core.receive_data(b"\r\n+CEREG: 5\r\n", 11.0)  # a URC goes to its handler all the while
    core.receive_data(b"\r\n001010123456789\r\n", 12.0)  # the DCE still talks about AT+CIMI: window to 17
    assert core.stale_until == 17.0 and core.state is St.STALE
    core.receive_data(b"\r\nOK\r\n", 13.0)
    assert core.state is St.SENDING and core.current is held
    events = core.events()
    assert [(e.fields, e.data) for e in events if isinstance(e, Traced) and e.kind.value == "at.error"] == [
        ({"reason": "late", "command": "AT+CIMI"}, b"001010123456789\r\n"),
        ({"reason": "late", "command": "AT+CIMI"}, b"OK\r\n"),
    ]
    assert UrcLine("+CEREG: 5", "+CEREG:") in events and Write(b"AT+CGMI\r") in events


def test_a_held_command_goes_ahead_after_half_its_timeout() -> None:
    core = AtChatCore(resync_quiet=5.0)
    core.command("AT+LOST", 0.0, 2.0)
    core.sent(0.0)
    core.expire(2.0)
    core.command("AT", 2.0, 4.0)  # gives up waiting at 4.0, before the 7.0 of the quiet window
    core.receive_data(b"\r\nstill talking\r\n", 3.0)
    assert core.deadline == 4.0
    core.expire(4.0)
    assert core.state is St.SENDING and core.current is not None and core.current.line == "AT"
    assert any(
        isinstance(e, Traced) and e.fields == {"reason": "give_up", "command": "AT+LOST"}
        for e in core.events()
    )


def test_a_torn_line_is_ended_with_s3_and_its_answer_is_late() -> None:
    core = AtChatCore(resync_quiet=5.0)
    core.command(CMD, 0.0, 10.0)
    core.send_held(3.0)
    assert signature(core.events()) == ["at.command", "write", "at.error", "failed"]
    core.command("AT", 4.0, 10.0)
    assert [e for e in core.events() if isinstance(e, Write)] == [Write(b"\r")]
    core.sent(4.0)
    assert core.state is St.STALE
    core.receive_data(b"\r\nERROR\r\n", 4.5)  # the DCE's answer to the fragment "AT+C"
    assert [e for e in core.events() if isinstance(e, Write)] == [Write(b"AT\r")]


def test_a_torn_line_still_held_fails_the_next_command() -> None:
    core = core_in(St.ENDING_TORN)
    core.send_held(7.0)
    assert core.state is St.TORN
    assert [e.reason for e in core.events() if isinstance(e, Failed)] == ["line still held: 'AT' not sent"]


def test_end_of_file_answers_the_command_no_carrier_and_every_later_one() -> None:
    core = core_in(St.WAITING)
    core.receive_data(b"\r\npartial", 1.0)
    core.receive_eof(2.0)
    assert answered(core).response.final == "NO CARRIER"
    core.command("AT", 3.0, 10.0)
    assert answered(core).response.final == "NO CARRIER"


def test_unmatched_lines_are_dropped_at_once_as_urc_or_error() -> None:
    core = AtChatCore()
    core.receive_data(b'\r\n%WEBEVT: 1,"closed"\r\n\r\nRING\r\n\r\ngarbage\r\n\r\nOK\r\n', 0.0)
    traced = [(e.kind.value, e.error, e.fields) for e in core.events() if isinstance(e, Traced)]
    assert traced == [
        ("at.urc", False, {"handled": False}),
        ("at.urc", False, {"handled": False}),
        ("at.error", True, {"reason": "unmatched"}),
        ("at.error", True, {"reason": "unmatched"}),
    ]


def test_overlong_lines_are_dropped_and_the_next_line_is_read() -> None:
    core = AtChatCore(max_line=16)
    core.command(CMD, 0.0, 10.0)
    core.sent(0.0)
    core.receive_data(b"\r\n" + b"y" * 40, 0.1)
    assert core.splitter.buffered <= 17
    core.receive_data(b"y" * 40 + b"\r\nbipsim\r\nOK\r\n", 0.2)
    events = core.events()
    errors = [e.fields for e in events if isinstance(e, Traced) and e.kind.value == "at.error"]
    assert errors == [{"reason": "overlong", "length": 80}]
    assert [e for e in events if isinstance(e, Answered)][0].response.lines == ("bipsim",)


def test_a_step_label_goes_with_the_next_answer_line_of_its_prefix() -> None:
    core = AtChatCore()
    core.response_steps["%NETPAR"] = "S403"
    core.command("AT%GETNET=1,3", 0.0, 10.0)
    core.sent(0.0)
    core.receive_data(b'\r\n%NETPAR: 1,"internet","",""\r\n\r\nOK\r\n', 0.1)
    steps = [(e.kind.value, e.step) for e in core.events() if isinstance(e, Traced) and e.incoming]
    assert steps == [("at.info", "S403"), ("at.final", None)]
    assert core.response_steps == {}
