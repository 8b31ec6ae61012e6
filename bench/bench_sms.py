"""MO SMS through +CMGS over CMUX on the paced pty pair, against the bound the line rate sets.

A TE sends MESSAGES SMS-SUBMITs in PDU mode on DLC 1 of a 27.010 mux (basic option, UIH), one after the other:
`AT+CMGS=<length>`, wait for the `> ` prompt, the PDU and Ctrl-Z, wait for `+CMGS: <mr>` and `OK`. As a user
would run it (`processes`), the line is `bipsim pty-pair --baud N` (bipsim.link.pty_relay, paced like the UART it
stands for) and the modem is `bipsim cp` on side B, each its own process: the TE (this script, the host) sends
ATE0 and AT+CMUX=0,0,5,1500 on side A, then opens DLC 1. The CP answers with its 27.005 set (cp/sms_commands.py),
MO short message control by its card (TS 31.111 7.3.2) and the network's SMSC (net/smsc.py); the SMSC's list
(`bipsim sms list-mo`) is counted at the end.

The bound: a TE that waits for each answer before it sends on keeps the line busy one way at a time, so a message
cannot take less than the bits of its exchange in both directions (framing included, counted on the host's line
in this run, 10 bits a byte for 8N1) at the line's rate. `ratio` = messages/s measured / messages/s of that bound
(the issue asks >= 0.8). The bound is honest for such a TE: with echo off (ATE0), each message is four frames
(`AT+CMGS=39<CR>` 17 bytes framed; the prompt `<CR><LF>> ` 10; the PDU's 80 hex digits, an empty SMSC address
and the 39-octet TPDU, and Ctrl-Z 87; `<CR><LF>+CMGS: <mr><CR><LF><CR><LF>OK<CR><LF>` 24 to 26 with a TP-MR of
1 to 3 digits), and 27.005 section 3.5.1 has the TE send the PDU only after the prompt, so no host can overlap
the two halves on one DLC: it pays four line turnarounds a message (the relay's, the modem's and the host's
wake-ups here, a USB-serial adapter's latency timer on real hardware) on top of the bound.

Each figure comes with the 1-minute load average when it was taken and, for `processes`, the CPU time each
process spent per message (/proc/PID/stat): the machine's other work shows in both.

`echo`: the same four frames per message, of the same sizes, bounced by a bare DLC peer (this script run with
--echo-peer, its own process) through the same `bipsim pty-pair` process, with no AT server, card or SMSC behind
it: the floor of the rig (the relay's and the two muxes' wake-ups per frame); `ratio_vs_echo` says how close the
modem comes to it.

`one_process`: the same exchange with the relay, the CP's mux, AT server and SMS set and the host all in this
one process (how the bench ran before): the figure to compare with `processes` in the same run.

`concurrent`: a host may run an AT session on several DLCs at once (27.010 section 4: each DLC is its own
channel), and a host with many messages to send would (ModemManager and oFono open several channels): then one
DLC's frames use the line while another waits for its prompt, both directions carry frames at once, and the
turnarounds are hidden. `bipsim cp` serves AT on DLC 1 only (DLC 2 is its AP proxy's), so here the CP's muxes and
AT servers run in this process, on the `bipsim pty-pair` process's line. Its bound is stricter: the busier
direction's bytes a message (and no less than one DLC's exchange both ways shared among the DLCs), not the sum
of both.

Every measurement runs REPEATS times (--repeats), in turn, so that a change in the machine's load hits all of
them alike. One JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from bipsim.cp.card_driver import CardDriver
from bipsim.cp.commands import ModemCommands
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork
from bipsim.cp.sms_commands import SmsCommands
from bipsim.link.at_server import AtServer
from bipsim.link.cmux import CmuxParams, DlcStream, Mux, MuxRole
from bipsim.link.pty import PtyStream
from bipsim.link.pty_relay import PtyPair
from bipsim.net.sms_pdu import SmsSubmit
from bipsim.trace.recorder import NULL_TRACER

MESSAGES = 1000
REPEATS = 3
BAUD = 115_200  # the usual AT port rate
CONCURRENT_DLCS = (2, 4)  # DLCs sending at once in `concurrent`
N1 = 1500  # AT+CMUX=0,0,5,1500: every frame of the exchange whole (27.007 5.7 <N1>)
PDU = "00" + SmsSubmit.for_text("+447700900456", "Benchmark message from bipsim")[0].encode().hex().upper()
LENGTH = len(PDU) // 2 - 1
COMMAND = f"AT+CMGS={LENGTH}\r".encode()
ANSWER = len("\r\n+CMGS: 100\r\n\r\nOK\r\n")  # the echo peer's answer: a TP-MR of 3 digits
BIPSIM = [sys.executable, "-m", "bipsim"]


class Counted(trio.abc.Stream):
    """A stream that counts the bytes written on it and read from it (the line's bytes, CMUX framing included)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sent = 0
        self.received = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += len(data)
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = bytes(await self.inner.receive_some(max_bytes))
        self.received += len(data)
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _until(stream: trio.abc.Stream, buffer: bytearray, marker: bytes) -> bytes:
    """Reads until `marker`; returns what came up to it and leaves the rest in `buffer`."""
    while marker not in buffer:
        data = await stream.receive_some(4096)
        if not data:
            raise RuntimeError("the CP's DLC ended")
        buffer += data
    end = buffer.index(marker) + len(marker)
    taken = bytes(buffer[:end])
    del buffer[:end]
    return taken


async def _take(stream: trio.abc.Stream, count: int) -> None:
    got = 0
    while got < count:
        data = await stream.receive_some(4096)
        if not data:
            raise RuntimeError("the peer's DLC ended")
        got += len(data)


async def _send_messages(dlc: trio.abc.Stream, buffer: bytearray, count: int) -> int:
    """`count` SMS-SUBMITs as a TE sends them; returns how many were answered +CMGS."""
    answered = 0
    for _ in range(count):
        await dlc.send_all(COMMAND)
        await _until(dlc, buffer, b"> ")
        await dlc.send_all(PDU.encode() + b"\x1a")
        answered += b"+CMGS: " in await _until(dlc, buffer, b"OK\r\n")
    return answered


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (proc(5), /proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load() -> float:
    return round(os.getloadavg()[0], 2)


async def _line_of(process: trio.Process, prefix: str) -> str:
    """The first line of the process's stdout that starts with `prefix` (its readiness message)."""
    assert process.stdout is not None
    pending = b""
    with trio.fail_after(60):
        while True:
            data = await process.stdout.receive_some(4096)
            if not data:
                raise RuntimeError(f"{process.args!r} ended before saying {prefix!r}")
            pending += data
            for line in pending.decode(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line


@asynccontextmanager
async def _pty_pair_process(baud: int, directory: Path) -> AsyncIterator[tuple[str, str, trio.Process]]:
    """`bipsim pty-pair --baud N` as its own process; yields the two sides' paths (symlinks) and the process."""
    a, b = directory / "a", directory / "b"
    process = await trio.lowlevel.open_process(
        [*BIPSIM, "pty-pair", "--baud", str(baud), "--link", str(a), "--link", str(b)], stdout=subprocess.PIPE
    )
    try:
        await _line_of(process, f"{b} -> ")
        yield str(a), str(b), process
    finally:
        process.terminate()
        with trio.move_on_after(5):
            await process.wait()
        process.kill()


async def _plain_command(line: trio.abc.Stream, buffer: bytearray, command: bytes) -> None:
    await line.send_all(command)
    with trio.fail_after(10):
        await _until(line, buffer, b"OK\r\n")


async def processes(baud: int, directory: Path) -> dict[str, object]:
    """One DLC, as a user runs it: `bipsim pty-pair --baud N` and `bipsim cp` as processes, this script the TE."""
    async with _pty_pair_process(baud, directory) as (side_a, side_b, pair):
        cp = await trio.lowlevel.open_process(
            [*BIPSIM, "cp", "--port", side_b, "--sms-listen", "127.0.0.1:0"], stdout=subprocess.PIPE
        )
        line = Counted(PtyStream.open(side_a))
        try:
            sms_at = (await _line_of(cp, "sms listening on ")).rsplit(" ", 1)[1]
            buffer = bytearray()
            await _plain_command(line, buffer, b"ATE0\r")
            await _plain_command(line, buffer, f"AT+CMUX=0,0,5,{N1}\r".encode())
            mux = Mux(line, role=MuxRole.INITIATOR, params=CmuxParams(n1=N1))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(mux.run)
                dlc = await mux.open_dlc(1)
                buffer = bytearray()
                await _plain_command(dlc, buffer, b"AT+CMGF=0\r")
                up, down = line.sent, line.received
                cpu = {name: _cpu_seconds(pid) for name, pid in (("pty_pair", pair.pid), ("cp", cp.pid))}
                cpu["host"] = time.process_time()
                start = time.perf_counter()
                answered = await _send_messages(dlc, buffer, MESSAGES)
                elapsed = time.perf_counter() - start
                load = _load()
                cpu = {
                    "pty_pair": _cpu_seconds(pair.pid) - cpu["pty_pair"],
                    "cp": _cpu_seconds(cp.pid) - cpu["cp"],
                    "host": time.process_time() - cpu["host"],
                }
                up, down = line.sent - up, line.received - down
                nursery.cancel_scope.cancel()
            listed = await trio.run_process(
                [*BIPSIM, "sms", "--connect", sms_at, "--json", "list-mo"], capture_stdout=True
            )
            smsc_took = len(json.loads(listed.stdout)["messages"])
        finally:
            await line.aclose()
            cp.terminate()
            with trio.move_on_after(5):
                await cp.wait()
            cp.kill()
    bound_seconds = (up + down) * 10 / baud
    return {
        "seconds": round(elapsed, 3),
        "messages_per_s": round(MESSAGES / elapsed, 1),
        "bytes_per_message": {"ap_to_cp": round(up / MESSAGES, 1), "cp_to_ap": round(down / MESSAGES, 1)},
        "bound_messages_per_s": round(MESSAGES / bound_seconds, 1),
        "ratio": round(bound_seconds / elapsed, 3),
        "cpu_ms_per_message": {name: round(seconds * 1000 / MESSAGES, 2) for name, seconds in cpu.items()},
        "answered": answered,
        "smsc_took": smsc_took,
        "load": load,
    }


async def echo_peer(path: str) -> None:
    """The far end of `echo` (--echo-peer): a bare DLC peer on the line that answers every write of the host's
    with the size the exchange's answer has, at once. Sizes are the four frames' of one message."""
    up1, down1, up2, down2 = len(COMMAND), 4, len(PDU) + 1, ANSWER
    line = PtyStream.open(path)
    async with trio.open_nursery() as nursery:
        mux = Mux(line, role=MuxRole.RESPONDER, params=CmuxParams(n1=N1))
        nursery.start_soon(mux.run)
        print("echo peer ready", flush=True)
        dlc = await mux.accept_dlc()
        while True:
            await _take(dlc, up1)
            await dlc.send_all(b"d" * down1)
            await _take(dlc, up2)
            await dlc.send_all(b"d" * down2)


async def echo(baud: int, directory: Path) -> dict[str, object]:
    """MESSAGES exchanges of four DLC writes of one message's sizes (up, down, up, down) against `echo_peer`, its
    own process, through a `bipsim pty-pair` process: what the line, the relay and two muxes alone cost."""
    async with _pty_pair_process(baud, directory) as (side_a, side_b, _):
        peer = await trio.lowlevel.open_process(
            [sys.executable, __file__, "--echo-peer", side_b], stdout=subprocess.PIPE
        )
        line = Counted(PtyStream.open(side_a))
        try:
            await _line_of(peer, "echo peer ready")
            async with trio.open_nursery() as nursery:
                mux = Mux(line, role=MuxRole.INITIATOR, params=CmuxParams(n1=N1))
                nursery.start_soon(mux.run)
                with trio.fail_after(30):
                    dlc = await mux.open_dlc(1)
                up, down = line.sent, line.received
                start = time.perf_counter()
                for _ in range(MESSAGES):
                    await dlc.send_all(COMMAND)
                    await _take(dlc, 4)
                    await dlc.send_all(PDU.encode() + b"\x1a")
                    await _take(dlc, ANSWER)
                elapsed = time.perf_counter() - start
                load = _load()
                up, down = line.sent - up, line.received - down
                nursery.cancel_scope.cancel()
        finally:
            await line.aclose()
            peer.kill()
            await peer.wait()
    bound_seconds = (up + down) * 10 / baud
    return {"seconds": round(elapsed, 3), "ratio": round(bound_seconds / elapsed, 3), "load": load}


def _modem() -> tuple[ModemCommands, CellularNetwork]:
    """The CP's 27.007 core with the 27.005 set, its simulated card and the network, in this process."""
    card, _ = simulated_card(None, None, NULL_TRACER)
    network = CellularNetwork()
    core = ModemCommands(CardDriver(card), network)
    core.command_sets = [SmsCommands(core, NULL_TRACER, {})]
    return core, network


async def _open_channels(
    ap_mux: Mux, cp_mux: Mux, core: ModemCommands, count: int, nursery: trio.Nursery
) -> list[tuple[DlcStream, bytearray]]:
    channels = []
    for dlci in range(1, count + 1):
        dlc = await ap_mux.open_dlc(dlci)
        server = AtServer(await cp_mux.accept_dlc(), echo=False)
        core.install(server)
        nursery.start_soon(server.run)
        buffer = bytearray()
        await _plain_command(dlc, buffer, b"AT+CMGF=0\r")
        channels.append((dlc, buffer))
    return channels


async def in_process(baud: int, dlcs: int, pair_line: tuple[str, str] | None) -> dict[str, object]:
    """MESSAGES SMS-SUBMITs shared among `dlcs` DLCs, each a TE sending one after the other, all at once; the
    CP's muxes and AT servers in this process. `pair_line`: the sides of a `bipsim pty-pair` process; None: the
    relay runs in this process too (`one_process`)."""
    core, network = _modem()
    pair = None
    if pair_line is None:
        pair = PtyPair.create(baud=baud)
        pair_line = pair.paths
    ap_line = Counted(PtyStream.open(pair_line[0]))
    cp_line = PtyStream.open(pair_line[1])
    params = CmuxParams(n1=N1)
    try:
        async with trio.open_nursery() as nursery:
            if pair is not None:
                await nursery.start(pair.run)
            ap_mux = Mux(ap_line, role=MuxRole.INITIATOR, params=params)
            cp_mux = Mux(cp_line, role=MuxRole.RESPONDER, params=params)
            nursery.start_soon(ap_mux.run)
            nursery.start_soon(cp_mux.run)
            channels = await _open_channels(ap_mux, cp_mux, core, dlcs, nursery)
            up, down = ap_line.sent, ap_line.received
            answered = 0

            async def te(dlc: DlcStream, buffer: bytearray, count: int) -> None:
                nonlocal answered
                got = await _send_messages(dlc, buffer, count)
                answered += got

            start = time.perf_counter()
            async with trio.open_nursery() as tes:
                for i, (dlc, buffer) in enumerate(channels):
                    tes.start_soon(te, dlc, buffer, MESSAGES // dlcs + (i < MESSAGES % dlcs))
            elapsed = time.perf_counter() - start
            load = _load()
            up, down = ap_line.sent - up, ap_line.received - down
            nursery.cancel_scope.cancel()
    finally:
        await ap_line.aclose()
        await cp_line.aclose()
        if pair is not None:
            await pair.aclose()
    # one DLC: both directions' bytes; several: the busier direction's, and no less than one DLC's exchange both
    # ways shared among the DLCs
    bound_seconds = max(up, down, (up + down) / dlcs) * 10 / baud if dlcs > 1 else (up + down) * 10 / baud
    return {
        "dlcs": dlcs,
        "seconds": round(elapsed, 3),
        "messages_per_s": round(MESSAGES / elapsed, 1),
        "bound_messages_per_s": round(MESSAGES / bound_seconds, 1),
        "ratio": round(bound_seconds / elapsed, 3),
        "answered": answered,
        "smsc_took": len(network.smsc.mo),
        "load": load,
    }


async def concurrent(baud: int, directory: Path, dlcs: int) -> dict[str, object]:
    async with _pty_pair_process(baud, directory) as (side_a, side_b, _):
        return await in_process(baud, dlcs, (side_a, side_b))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else round((ordered[middle - 1] + ordered[middle]) / 2, 3)


async def main(baud: int, repeats: int) -> None:
    runs: dict[str, list[dict[str, object]]] = {"processes": [], "echo": [], "one_process": []}
    several: dict[str, list[dict[str, object]]] = {str(n): [] for n in CONCURRENT_DLCS}
    with tempfile.TemporaryDirectory(prefix="bench_sms") as name:
        directory = Path(name)
        for _ in range(repeats):
            runs["processes"].append(await processes(baud, directory))
            runs["echo"].append(await echo(baud, directory))
            runs["one_process"].append(await in_process(baud, 1, None))
            for dlcs in CONCURRENT_DLCS:
                several[str(dlcs)].append(await concurrent(baud, directory, dlcs))

    def ratios(items: list[dict[str, object]]) -> list[float]:
        return [float(str(item["ratio"])) for item in items]

    one, floor = ratios(runs["processes"]), ratios(runs["echo"])
    print(
        json.dumps(
            {
                "bench": "sms_cmgs_over_cmux",
                "line": f"`bipsim pty-pair --baud {baud}` (its own process), 8N1",
                "messages": MESSAGES,
                "pdu_octets": LENGTH,
                "ratio": _median(one),
                "ratios": one,
                "echo_ratios": floor,
                "ratio_vs_echo": [round(a / b, 3) for a, b in zip(one, floor, strict=True)],
                "one_process_ratios": ratios(runs["one_process"]),
                "ratio_concurrent": {dlcs: ratios(items) for dlcs, items in several.items()},
                "loads": [item["load"] for item in runs["processes"]],
                "runs": runs,
                "concurrent": several,
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baud", type=int, default=BAUD, help="the paced line's rate (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="runs of each measurement (default 3)")
    parser.add_argument("--messages", type=int, default=MESSAGES, help="SMS per run (default %(default)s)")
    parser.add_argument("--echo-peer", metavar="LINE", help="run as `echo`'s far end on LINE (internal)")
    options = parser.parse_args()
    MESSAGES = options.messages
    if options.echo_peer:
        trio.run(echo_peer, options.echo_peer)
    else:
        trio.run(main, options.baud, options.repeats)
