"""The AP proxy's process guard (ap/proxy.py, docs/protocols.md "The proxy dialect"): a failure in the relay task of
one BIP channel ends that channel with %WEBEVT: <ch>,"error",<n> and an app.error trace event; the proxy goes on
serving DLC 2 and the other channels, the AP process does not end. Memory streams stand for DLC 2, the data DLCs
and the TCP connections."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from bipsim.ap import proxy as proxy_module
from bipsim.ap.apn_db import ApnDatabase
from bipsim.ap.network import ApNetwork
from bipsim.ap.proxy import TASK_FAILED, ProxyService
from bipsim.link.at_chat import AtChat
from bipsim.trace.recorder import Tracer


class DataDlc(trio.abc.Stream):
    """The AP's end of a CMUX data DLC, in memory."""

    def __init__(self, dlci: int) -> None:
        self.stream, self.dlci = trio.testing.memory_stream_pair()[0], dlci

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


class BrokenTcp(trio.abc.Stream):
    """A TCP connection whose reads fail with an error no pump expects (a bug in a lower layer)."""

    def __init__(self) -> None:
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("decoder exploded")

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


async def test_a_failing_channel_task_ends_that_channel_only(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    connections: list[BrokenTcp] = []

    async def connect(host: str, port: int) -> BrokenTcp:
        await trio.lowlevel.checkpoint()
        connections.append(BrokenTcp())
        return connections[-1]

    monkeypatch.setattr(proxy_module.trio, "open_tcp_stream", connect)
    tracer = Tracer(keep=True)
    service = ProxyService(ApNetwork(), ApnDatabase.load(), lambda: "001010123456789", tracer=tracer)
    cp_end, ap_end = trio.testing.memory_stream_pair()
    served = trio.Event()

    async def serve() -> None:
        await service.serve(ap_end)  # type: ignore[arg-type]
        served.set()

    nursery.start_soon(serve)
    chat = AtChat(cp_end, timeout=10)
    events: list[str] = []
    chat.add_urc_handler("%WEBEVT:", events.append)
    nursery.start_soon(chat.run)

    service.data_dlc(DataDlc(3))  # type: ignore[arg-type]
    assert (await chat.command('AT%WEBOPCH=1,"TCP","127.0.0.1",4000')).ok
    await trio.testing.wait_all_tasks_blocked()
    assert events == [f'%WEBEVT: 1,"error",{TASK_FAILED}']
    assert connections[0].closed and 1 not in service.channels
    [failed] = [e for e in tracer.events if e.kind == "app.error"]
    assert failed.error and failed.fields == {
        "where": "channel task",
        "error": "RuntimeError: decoder exploded",
        "channel": 1,
        "dlci": 3,
    }

    # the proxy still serves: channel 1 can be opened again, and the service task did not end
    service.data_dlc(DataDlc(3))  # type: ignore[arg-type]
    assert (await chat.command('AT%WEBOPCH=1,"TCP","127.0.0.1",4000')).ok
    await trio.testing.wait_all_tasks_blocked()
    assert events == [f'%WEBEVT: 1,"error",{TASK_FAILED}'] * 2  # it failed again, and ended alone again
    assert not served.is_set()
