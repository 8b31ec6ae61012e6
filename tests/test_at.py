"""V.250 syntax, the DCE server and the DTE chat, over memory streams and a real pty pair."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from bipsim.link.at_chat import AtChat, AtTimeout
from bipsim.link.at_server import AtServer, AtSettings, CmeError
from bipsim.link.at_syntax import (
    AtRequest,
    AtSyntaxError,
    CommandKind,
    LineAssembler,
    parse_args,
    parse_line,
    quote,
)
from bipsim.trace.recorder import Tracer


def test_parse_basic_and_extended() -> None:
    requests = parse_line(
        'ATE0V1+CMEE=1;+CGDCONT=1,"IP","internet";%GETNET=1,3,"a\\22b";+CREG?;+CGMI=?;S3=13'
    )
    assert [(r.name, r.kind, r.args) for r in requests] == [
        ("E", CommandKind.SET, (0,)),
        ("V", CommandKind.SET, (1,)),
        ("+CMEE", CommandKind.SET, (1,)),
        ("+CGDCONT", CommandKind.SET, (1, "IP", "internet")),
        ("%GETNET", CommandKind.SET, (1, 3, 'a"b')),
        ("+CREG", CommandKind.READ, ()),
        ("+CGMI", CommandKind.TEST, ()),
        ("S3", CommandKind.SET, (13,)),
    ]
    assert parse_args(',2,"x;y",') == (None, 2, "x;y", None)
    assert quote('a"b') == '"a\\22b"'
    with pytest.raises(AtSyntaxError):
        parse_line('AT+CSIM=4,"00A4')


def test_line_assembly_backspace_and_repeat() -> None:
    assembler = LineAssembler()
    assert assembler.feed(b"ATZ\x08I\r\n") == ["ATI"]
    assert assembler.feed(b"A/") == ["ATI"]


async def test_an_overlong_command_line_gets_error_and_the_next_line_is_understood(
    nursery: trio.Nursery,
) -> None:
    a, b = trio.testing.memory_stream_pair()
    tracer = Tracer(keep=True)
    server = AtServer(b, tracer=tracer)
    nursery.start_soon(server.run)
    await a.send_all(b"ATE0\r")
    answer = bytearray()
    with trio.fail_after(5):
        while not answer.endswith(b"OK\r\n"):
            answer += await a.receive_some()
    answer.clear()
    await a.send_all(b"AT+CGMI" + b"=1" * 3000 + b"\r" + b"x" * 5000 + b"\rAT\r")
    with trio.fail_after(5):
        while answer.count(b"\r\n") < 4:
            answer += await a.receive_some()
    # ERROR for the long AT line, nothing for the long line that is not a command, OK for AT
    assert bytes(answer).split() == [b"ERROR", b"OK"]
    too_long = [e for e in tracer.events if e.error and e.summary.startswith("command line too long")]
    assert [e.summary for e in too_long] == [
        "command line too long (6007 characters, at most 4096)",
        "command line too long (5000 characters, at most 4096)",
    ]


async def serve(stream: trio.abc.Stream) -> AtServer:
    server = AtServer(stream)

    async def cgmi(request: AtRequest) -> list[str]:
        return ["bipsim"]

    async def fail(request: AtRequest) -> list[str]:
        raise CmeError(30)

    server.register("+CGMI", cgmi)
    server.register("%GETNET", fail)
    return server


async def test_chat_against_server(nursery: trio.Nursery) -> None:
    a, b = trio.testing.memory_stream_pair()
    server = await serve(b)
    nursery.start_soon(server.run)
    chat = AtChat(a, timeout=2)
    urcs: list[str] = []
    chat.add_urc_handler("%WEBEVT:", urcs.append)
    nursery.start_soon(chat.run)
    assert (await chat.command("AT")).ok  # with echo on: the echo is skipped
    response = await chat.command("AT+CGMI")
    assert response.ok and response.lines == ("bipsim",)
    assert (await chat.command("AT%GETNET=1,3")).final == "ERROR"  # +CMEE=0
    assert (await chat.command("AT+CMEE=1")).ok
    assert (await chat.command("AT%GETNET=1,3")).cme_error == 30
    assert (await chat.command("AT+CMEE=2")).ok
    assert (await chat.command("AT%GETNET=1,3")).final == "+CME ERROR: no network service"
    assert (await chat.command("AT+NOPE")).final == "ERROR"
    assert (await chat.command("ATE0")).ok
    assert (await chat.command("ATV0")).ok
    numeric = await chat.command("AT+CGMI")
    assert numeric.ok and numeric.lines == ("bipsim",)
    assert (await chat.command("ATV1")).ok
    await server.send_urc('%WEBEVT: 1,"closed"')
    await trio.testing.wait_all_tasks_blocked()
    assert urcs == ['%WEBEVT: 1,"closed"']


async def test_chat_times_out(nursery: trio.Nursery) -> None:
    a, b = trio.testing.memory_stream_pair()
    chat = AtChat(a, timeout=0.05)
    nursery.start_soon(chat.run)
    with pytest.raises(AtTimeout):
        await chat.command("AT")


class _Gone(trio.abc.Stream):
    """Delivers `incoming`, then waits; every write raises `error` (the peer hung up, or the DLC was closed)."""

    def __init__(self, incoming: bytes, error: type[Exception]) -> None:
        self.incoming, self.error, self.writes = incoming, error, 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.writes += 1
        raise self.error("gone")

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data, self.incoming = self.incoming, b""
        if not data:
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()
        return data

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@pytest.mark.parametrize("error", [trio.BrokenResourceError, trio.ClosedResourceError])
async def test_server_ends_like_eof_when_its_answer_cannot_be_written(error: type[Exception]) -> None:
    tracer = Tracer(keep=True)
    stream = _Gone(b"ATE0+CGMI;+CGMI\r", error)
    server = AtServer(stream, tracer=tracer)
    calls: list[str] = []

    async def cgmi(request: AtRequest) -> list[str]:
        calls.append(request.raw)
        return ["bipsim"]

    server.register("+CGMI", cgmi)
    with trio.fail_after(5):
        await server.run()  # returns, does not raise, does not wait for more input
    assert server.gone
    assert stream.writes == 1  # the echo: nothing more is written to a stream that went away
    assert calls == []  # and the commands of the line are not executed for nobody
    gone = [e for e in tracer.events if e.error and "went away" in e.summary]
    assert len(gone) == 1 and error.__name__ in gone[0].summary
    await server.send_urc("+CREG: 1")  # a URC for a gone stream is dropped, not raised


async def test_server_ends_when_the_dlc_closes_under_a_slow_answer(nursery: trio.Nursery) -> None:
    """The AP closes the modem DLC while the CP's handler works: the answer meets a closed DLC, the server ends."""
    from bipsim.link.cmux import Mux, MuxRole

    a, b = trio.testing.memory_stream_pair()
    ap, cp = Mux(a, role=MuxRole.INITIATOR), Mux(b, role=MuxRole.RESPONDER)
    nursery.start_soon(ap.run)
    nursery.start_soon(cp.run)
    ap_dlc = await ap.open_dlc(1)
    cp_dlc = await cp.accept_dlc()
    tracer = Tracer(keep=True)
    server = AtServer(cp_dlc, tracer=tracer, echo=False)
    started, release = trio.Event(), trio.Event()

    async def slow(request: AtRequest) -> list[str]:
        started.set()
        await release.wait()
        return ["late"]

    server.register("+SLOW", slow)
    done = trio.Event()

    async def serve_and_mark() -> None:
        await server.run()
        done.set()

    nursery.start_soon(serve_and_mark)
    await ap_dlc.send_all(b"AT+SLOW\r")
    await started.wait()
    await ap_dlc.aclose()  # DISC / UA: the DLC is closed on the CP side
    release.set()
    with trio.fail_after(5):
        await done.wait()
    assert server.gone
    assert any(e.error and "went away" in e.summary for e in tracer.events)


async def test_chat_command_on_a_gone_stream_is_no_carrier() -> None:
    tracer = Tracer(keep=True)
    chat = AtChat(_Gone(b"", trio.BrokenResourceError), tracer=tracer, timeout=1)
    response = await chat.command("AT")
    assert response.final == "NO CARRIER" and not response.ok
    assert any(e.error and "went away" in e.summary for e in tracer.events)


async def _answer(stream: trio.abc.Stream, line: bytes, final: bytes = b"\r\n") -> bytes:
    """Sends `line` and reads until the answer ends with `final`."""
    await stream.send_all(line)
    answer = bytearray()
    with trio.fail_after(5):
        while not answer.endswith(final):
            answer += await stream.receive_some()
    return bytes(answer)


async def test_a_handler_bug_is_an_error_answer_and_a_trace_event_not_the_end_of_the_server(
    nursery: trio.Nursery,
) -> None:
    a, b = trio.testing.memory_stream_pair()
    tracer = Tracer(keep=True)
    server = await serve(b)
    server.tracer = tracer

    async def buggy(request: AtRequest) -> list[str]:
        return [bytes.fromhex("ZZ").hex()]

    server.register("+BUG", buggy)
    nursery.start_soon(server.run)
    await _answer(a, b"ATE0\r", b"OK\r\n")
    assert await _answer(a, b"AT+BUG\r") == b"\r\nERROR\r\n"  # +CMEE=0: plain ERROR
    await _answer(a, b"AT+CMEE=1\r", b"OK\r\n")
    assert await _answer(a, b"AT+BUG;+CGMI\r") == b"\r\n+CME ERROR: 100\r\n"  # unknown; the rest not run
    assert await _answer(a, b"AT+CGMI\r", b"OK\r\n") == b"\r\nbipsim\r\n\r\nOK\r\n"
    failed = [e.summary for e in tracer.events if e.error and e.summary.startswith("handler of")]
    assert len(failed) == 2
    assert all("+BUG failed: ValueError" in text and "non-hexadecimal" in text for text in failed)


async def test_quiet_suppresses_cme_error_too(nursery: trio.Nursery) -> None:
    """V.250 section 6.2.5: Q1 suppresses result codes; +CME ERROR is a final result code (27.007 9.2)."""
    a, b = trio.testing.memory_stream_pair()
    tracer = Tracer(keep=True)
    server = await serve(b)
    server.tracer = tracer
    nursery.start_soon(server.run)
    await _answer(a, b"ATE0+CMEE=1\r", b"OK\r\n")
    await a.send_all(b"ATQ1\r")
    await a.send_all(b"AT%GETNET\r")  # raises CmeError(30)
    await a.send_all(b"AT+CMEE=2;%GETNET\r")
    await a.send_all(b"AT+CGMI\r")  # information text is still sent: it ends what we read
    assert await _answer(a, b"", b"bipsim\r\n") == b"\r\nbipsim\r\n"
    quiet = [e for e in tracer.events if e.kind == "at.final" and e.fields and e.fields.get("quiet")]
    assert [e.fields["result"] for e in quiet if e.fields] == [
        "OK",
        "+CME ERROR: 30",
        "+CME ERROR: no network service",
        "OK",
    ]
    assert [e.summary for e in quiet if e.error] == [
        "+CME ERROR: 30 (quiet)",
        "+CME ERROR: no network service (quiet)",
    ]
    assert await _answer(a, b"ATQ0%GETNET\r") == b"\r\n+CME ERROR: no network service\r\n"


@pytest.mark.parametrize("noise", [b"\xf9", b"\x1b", b"\xf9\xf9\x07junk ", b"\r\xf9"])
async def test_characters_before_the_at_prefix_are_ignored(nursery: trio.Nursery, noise: bytes) -> None:
    """V.250 section 5.2.1: the command line starts at its "AT" prefix (after a CMUX close-down the line may
    still bring a flag byte, or a terminal sends ESC first)."""
    a, b = trio.testing.memory_stream_pair()
    server = await serve(b)
    nursery.start_soon(server.run)
    await _answer(a, b"ATE0\r", b"OK\r\n")
    assert await _answer(a, noise + b"AT\r") == b"\r\nOK\r\n"
    assert await _answer(a, noise + b"at+cgmi\r", b"OK\r\n") == b"\r\nbipsim\r\n\r\nOK\r\n"
    assert await _answer(a, noise + b"A/", b"OK\r\n") == b"\r\nbipsim\r\n\r\nOK\r\n"  # repeats the last line
    assert await _answer(a, noise + b"a/", b"OK\r\n") == b"\r\nbipsim\r\n\r\nOK\r\n"


def test_line_assembly_prefix_backspace_and_a_slash_inside_a_line() -> None:
    assembler = LineAssembler()
    assert assembler.feed(b"\xf9AT\x08\x08xAT+CGMI\r") == ["AT+CGMI"]  # the prefix edited away and retyped
    assert assembler.feed(b'AT+CGDCONT=1,"IP","a/b"\r') == ['AT+CGDCONT=1,"IP","a/b"']  # not a repeat
    assert assembler.feed(b"noise\r") == ["noise"]  # no prefix: the server ignores the line
    assert assembler.feed(b"\x1bA/") == ['AT+CGDCONT=1,"IP","a/b"']


async def test_settings_profile_read_and_applied(nursery: trio.Nursery) -> None:
    a, b = trio.testing.memory_stream_pair()
    server = await serve(b)
    nursery.start_soon(server.run)
    await _answer(a, b"ATE0V0+CMEE=2;S3=13;S4=10;S5=8\r", b"0\r")
    profile = server.settings
    assert profile == AtSettings(echo=False, verbose=False, quiet=False, cmee=2)
    other = AtServer(trio.testing.memory_stream_pair()[0])
    assert other.settings == AtSettings()  # factory profile
    other.settings = profile
    assert other.settings == profile and other.format.verbose is False and other.cmee == 2


async def test_leftover_is_what_followed_the_line_that_stopped_the_server(nursery: trio.Nursery) -> None:
    a, b = trio.testing.memory_stream_pair()
    server = await serve(b)

    async def switch(request: AtRequest) -> None:
        server.stop_after_response()

    server.register("+CMUX", switch)
    done = trio.Event()

    async def run() -> None:
        await server.run()
        done.set()

    nursery.start_soon(run)
    frames = b"\xf9\x03\x3f\x01\x1c\xf9AT\r"  # SABM DLC 0, then what a confused DTE sends next
    await a.send_all(b"AT+CMUX=0\r" + frames)
    with trio.fail_after(5):
        await done.wait()
    assert server.leftover == frames
    echo_and_ok = bytearray()
    while not echo_and_ok.endswith(b"OK\r\n"):
        echo_and_ok += await a.receive_some()
    assert echo_and_ok == b"AT+CMUX=0\r\r\nOK\r\n"  # the frames were neither echoed nor executed
