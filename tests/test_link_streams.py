"""The first trio Streams of link/: pty ends and pyserial lines, checked with trio.testing's stream checks."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from bipsim.link.pty import PtyStream, open_line, open_pty
from bipsim.link.serial_line import open_serial


async def pty_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    master, path = open_pty()
    return PtyStream(master, name="master"), PtyStream.open(path)


async def serial_on_pty_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """A POSIX pyserial port (descriptor path) on a pty slave, against the master."""
    master, path = open_pty()
    return await open_serial(path), PtyStream(master, name="master")


async def test_pty_slave_to_master_is_a_one_way_stream() -> None:
    """The full one-way check holds from the slave (the end a process opens) to the master. The other direction
    cannot pass it: closing a pty master hangs up the slave, and the kernel discards its unread input."""
    await trio.testing.check_one_way_stream(pty_pair_reversed, None)


async def test_pyserial_device_to_master_is_a_one_way_stream() -> None:
    await trio.testing.check_one_way_stream(serial_on_pty_pair, None)


async def pty_pair_reversed() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    master, slave = await pty_pair()
    return slave, master


async def test_master_to_slave_carries_data_and_hangs_up() -> None:
    master, slave = await pty_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(master.send_all, b"xyz")
        got = b""
        while len(got) < 3:
            got += await slave.receive_some()
    assert got == b"xyz"
    await master.aclose()
    assert await slave.receive_some() == b""
    await slave.aclose()


async def test_pyserial_url_is_a_two_way_stream() -> None:
    """socket:// has no serial descriptor: its reads and writes run in worker threads."""

    async def maker() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            accepted: list[trio.abc.Stream] = []

            async def accept() -> None:
                accepted.append(await listener.accept())

            nursery.start_soon(accept)
            client = await open_serial(f"socket://127.0.0.1:{port}")
        await listener.aclose()
        return client, accepted[0]

    await trio.testing.check_two_way_stream(maker, None)


async def test_all_byte_values_pass_unchanged() -> None:
    a, b = await pty_pair()
    payload = bytes(range(256)) * 4 + b"\r\n\r\x03\x04\x11\x13"
    async with a, b, trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, payload)
        got = bytearray()
        while len(got) < len(payload):
            got += await b.receive_some()
    assert bytes(got) == payload


async def test_loop_url_echoes() -> None:
    line = await open_line("loop://")
    async with line:
        await line.send_all(b"AT\r")
        got = b""
        while len(got) < 3:
            got += await line.receive_some()
    assert got == b"AT\r"


async def test_master_reads_eof_when_the_line_goes_away() -> None:
    a, b = await pty_pair()
    await b.aclose()
    assert await a.receive_some() == b""
    await a.aclose()


async def test_open_line_errors_are_clear(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(FileNotFoundError):
        await open_line("/nonexistent/ttyX")
    regular = os.path.join(str(tmp_path), "file")
    open(regular, "w").close()
    with pytest.raises(OSError, match="not a serial line"):
        await open_line(regular)
