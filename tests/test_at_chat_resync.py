"""The DTE chat keeps command and answer in step when a command is cut short: a send cancelled from outside
never leaves half a command line on the wire, and an answer arriving after its command timed out is dropped
(with an error trace event), never handed to the next command. Runs against a small scripted V.250 DCE over
memory streams, on trio's MockClock.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from bipsim.link.at_chat import AtChat, AtTimeout
from bipsim.trace.recorder import Tracer

# what the scripted DCE answers: command line -> steps of (seconds to wait first, line to send)
Script = dict[str, list[tuple[float, str]]]


class ScriptedDce:
    """A V.250 DCE in miniature: takes command lines ended by CR (S3) one at a time, as a modem does, and answers
    each from its script; a line the script does not know gets ERROR, an empty line is ignored (V.250 5.2.1)."""

    def __init__(self, stream: trio.abc.Stream, script: Script) -> None:
        self.stream = stream
        self.script = script
        self.received: list[str] = []  # the command lines as the DCE parsed them

    async def run(self) -> None:
        buffer = b""
        while data := await self.stream.receive_some():
            buffer += data
            while b"\r" in buffer:
                raw, _, buffer = buffer.partition(b"\r")
                line = raw.decode("latin-1").strip()
                if not line:
                    continue
                self.received.append(line)
                for delay, answer in self.script.get(line, [(0.0, "ERROR")]):
                    await trio.sleep(delay)
                    await self.stream.send_all(b"\r\n" + answer.encode("latin-1") + b"\r\n")


class PacedStream(trio.abc.Stream):
    """The DTE's end of a serial line that sends one byte per `byte_time` (a UART at a low baud rate), so a
    cancel can land in the middle of a command line; `stall_after` bytes in, it holds the rest until `resume`
    is set (the DCE dropped CTS)."""

    def __init__(self, inner: trio.abc.Stream, byte_time: float, stall_after: int | None = None) -> None:
        self.inner = inner
        self.byte_time = byte_time
        self.stall_after = stall_after
        self.resume = trio.Event()
        self.sent = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        for byte in bytes(data):
            if self.stall_after is not None and self.sent >= self.stall_after:
                await self.resume.wait()
            await trio.sleep(self.byte_time)
            await self.inner.send_all(bytes((byte,)))
            self.sent += 1

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _late(tracer: Tracer, command: str) -> list[str]:
    """The lines of `command`'s late answer that the chat dropped (at.error events, reason late)."""
    return [
        e.data.decode("latin-1").strip()
        for e in tracer.events
        if e.kind == "at.error" and e.field("reason") == "late" and e.field("command") == command
    ]


async def test_a_late_answer_is_dropped_and_the_next_command_gets_its_own(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    dte_end, dce_end = trio.testing.memory_stream_pair()
    # the DCE answers AT+CIMI 2 s after the chat gave up on it (timeout 10 s), with a URC in between
    dce = ScriptedDce(
        dce_end,
        {
            "AT+CIMI": [(11.0, "+CEREG: 5"), (1.0, "001010123456789"), (0.0, "OK")],
            "AT+CGMI": [(0.0, "bipsim"), (0.0, "OK")],
        },
    )
    tracer = Tracer(keep=True)
    chat = AtChat(dte_end, tracer=tracer, timeout=10)
    urcs: list[str] = []
    chat.add_urc_handler("+CEREG:", urcs.append)
    nursery.start_soon(dce.run)
    nursery.start_soon(chat.run)

    with pytest.raises(AtTimeout):
        await chat.command("AT+CIMI")
    own = await chat.command("AT+NOPE")  # the DCE answers ERROR, once it is done with AT+CIMI
    assert (own.final, own.lines) == ("ERROR", ())
    vendor = await chat.command("AT+CGMI")
    assert (vendor.final, vendor.lines) == ("OK", ("bipsim",))

    assert urcs == ["+CEREG: 5"]  # routed to its handler while the chat waited for the late answer
    assert _late(tracer, "AT+CIMI") == ["001010123456789", "OK"]
    # the late lines are at.error events, never an information line of anybody's
    assert not [e for e in tracer.events if e.kind == "at.info" and b"001010123456789" in e.data]
    assert dce.received == ["AT+CIMI", "AT+NOPE", "AT+CGMI"]


async def test_a_command_cancelled_while_being_sent_still_reaches_the_dce_whole(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    dte_end, dce_end = trio.testing.memory_stream_pair()
    dce = ScriptedDce(dce_end, {"AT+CGMI": [(0.0, "bipsim"), (0.0, "OK")], "AT": [(0.0, "OK")]})
    tracer = Tracer(keep=True)
    chat = AtChat(PacedStream(dte_end, byte_time=0.001), tracer=tracer, timeout=5)
    nursery.start_soon(dce.run)
    nursery.start_soon(chat.run)

    with trio.move_on_after(0.0035) as caller:  # fires after 3 of the 8 bytes of AT+CGMI<CR>
        await chat.command("AT+CGMI")
    assert caller.cancelled_caught
    assert (await chat.command("AT")).ok
    assert dce.received == ["AT+CGMI", "AT"]  # not "AT+AT": no half line glued to the next command
    assert _late(tracer, "AT+CGMI") == ["bipsim", "OK"]


async def test_a_torn_command_line_is_terminated_so_the_dce_rejects_the_fragment(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    dte_end, dce_end = trio.testing.memory_stream_pair()
    dce = ScriptedDce(dce_end, {"AT+CGMI": [(0.0, "bipsim"), (0.0, "OK")], "AT": [(0.0, "OK")]})
    tracer = Tracer(keep=True)
    line = PacedStream(dte_end, byte_time=0.001, stall_after=4)  # "AT+C", then the DCE holds the line
    chat = AtChat(line, tracer=tracer, timeout=5)
    nursery.start_soon(dce.run)
    nursery.start_soon(chat.run)

    with trio.fail_after(60):  # a send that never returns is the bug, not a hang of the suite
        with pytest.raises(AtTimeout):
            await chat.command("AT+CGMI")
        line.resume.set()
        assert (await chat.command("AT")).ok
    # the chat ended the fragment with S3: the DCE parsed "AT+C" alone, answered ERROR, then got a clean AT
    assert dce.received == ["AT+C", "AT"]
    assert _late(tracer, "AT+CGMI") == ["ERROR"]


async def test_a_command_never_answered_lets_the_next_one_through_after_a_quiet_spell(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    dte_end, dce_end = trio.testing.memory_stream_pair()
    dce = ScriptedDce(dce_end, {"AT+LOST": [], "AT": [(0.0, "OK")]})  # AT+LOST: no answer at all
    tracer = Tracer(keep=True)
    chat = AtChat(dte_end, tracer=tracer, timeout=5)
    nursery.start_soon(dce.run)
    nursery.start_soon(chat.run)

    with pytest.raises(AtTimeout):
        await chat.command("AT+LOST")
    assert (await chat.command("AT")).ok
    assert dce.received == ["AT+LOST", "AT"]
    # the stale command's window closed (quiet) or the next command went ahead without it (give_up)
    assert any(
        e.field("reason") in ("quiet", "give_up") and e.field("command") == "AT+LOST" for e in tracer.events
    )
