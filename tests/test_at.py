"""V.250 syntax, the DCE server and the DTE chat, over memory streams and a real pty pair."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from bipsim.link.at_chat import AtChat, AtTimeout
from bipsim.link.at_server import AtServer, CmeError
from bipsim.link.at_syntax import (
    AtRequest,
    AtSyntaxError,
    CommandKind,
    LineAssembler,
    parse_args,
    parse_line,
    quote,
)


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
