"""A CP's AT surface for tests: ModemCommands with the modem's command sets on an AtServer over a memory stream,
and a DTE that sends command lines and collects answers and URCs (tests of issue 16's commands)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
import trio.testing

from bipsim.cp.card_driver import CardDriver
from bipsim.cp.command_sets import build_command_sets
from bipsim.cp.commands import ModemCommands
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork
from bipsim.link.at_server import AtServer
from bipsim.trace.recorder import NULL_TRACER, Tracer

FINAL = re.compile(r"\r\n(OK|ERROR|NO CARRIER|BUSY|NO ANSWER|\+CME ERROR: [^\r\n]+)\r\n$|(^|[\r\n])[0-9]\r$")


class Dte:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def at(self, line: str) -> list[str]:
        """Sends `line`; the answer's lines (echo off by the harness) up to and with its final result."""
        await self.stream.send_all(line.encode("latin-1") + b"\r")
        with trio.fail_after(5):
            while not FINAL.search(self.buffer.decode("latin-1")):
                self.buffer += await self.stream.receive_some()
        text = self.buffer.decode("latin-1")
        self.buffer.clear()
        return [part.strip("\r") for part in text.split("\r\n") if part]

    async def urcs(self, want: int = 0) -> list[str]:
        """What arrived unasked: at least the `want` lines the test caused (waited for, not hoped for: a URC can
        follow a worker thread), then whatever else came once every task is blocked."""
        text = ""

        def lines() -> list[str]:
            return [part for part in text.split("\r\n") if part]

        with trio.fail_after(30):
            while len(lines()) < want or (want and not text.endswith("\r\n")):
                text += (await self.stream.receive_some()).decode("latin-1")
        await trio.testing.wait_all_tasks_blocked()
        while True:
            with trio.move_on_after(0.01):
                text += (await self.stream.receive_some()).decode("latin-1")
                continue
            return lines()


@dataclass
class Modem:
    dte: Dte
    server: AtServer
    core: ModemCommands
    network: CellularNetwork


@asynccontextmanager
async def modem(
    network: CellularNetwork | None = None, tracer: Tracer = NULL_TRACER, lines: int = 1
) -> AsyncIterator[list[Modem]]:
    """`lines` AT servers (a line and its DLCs) of one modem, each with echo off."""
    card, _ = simulated_card(None, None, tracer)
    network = network or CellularNetwork()
    core = ModemCommands(CardDriver(card, tracer=tracer), network)
    core.command_sets = build_command_sets(core, tracer, {})
    out = []
    async with trio.open_nursery() as nursery:
        for _ in range(lines):
            a, b = trio.testing.memory_stream_pair()
            server = AtServer(b, tracer=tracer, echo=False)
            core.install(server)
            nursery.start_soon(server.run)
            out.append(Modem(Dte(a), server, core, network))
        yield out
        nursery.cancel_scope.cancel()
