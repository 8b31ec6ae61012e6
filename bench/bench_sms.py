"""MO SMS through +CMGS over CMUX on the paced pty pair, against the bound the line rate sets.

The AP side opens DLC 1 of a 27.010 mux (basic option, UIH) on one end of `bipsim pty-pair --baud N`'s line
(bipsim.link.pty_relay, paced like the UART it stands for) and sends MESSAGES SMS-SUBMITs in PDU mode, one after
the other as a TE does: `AT+CMGS=<length>`, wait for the `> ` prompt, the PDU and Ctrl-Z, wait for `+CMGS: <mr>`
and `OK`. The CP side is the modem's 27.007 core with the 27.005 command set (cp/sms_commands.py) on the DLC, the
simulated card behind it and the network's SMSC (net/smsc.py) taking each message.

The bound: a TE that waits for each answer before it sends on keeps the line busy one way at a time, so a message
cannot take less than the bits of its exchange in both directions (framing included, counted on the line in this
run, 10 bits a byte for 8N1) at the line's rate. `ratio` = messages/s measured / messages/s of that bound
(the issue asks >= 0.8). The bound is honest for such a TE: with echo off (ATE0), each message is four frames
(`AT+CMGS=39<CR>` 17 bytes framed; the prompt `<CR><LF>> ` 10; the PDU's 80 hex digits, an empty SMSC address
and the 39-octet TPDU, and Ctrl-Z 87; `<CR><LF>+CMGS: <mr><CR><LF><CR><LF>OK<CR><LF>` 24 to 26 with a TP-MR of
1 to 3 digits), and 27.005 section 3.5.1 has the TE send the PDU only after the prompt, so no host can overlap
the two halves on one DLC: it pays four line turnarounds a message (the relay's and the muxes' wake-ups here, a
USB-serial adapter's latency timer on real hardware) on top of the bound.

Each result is measured twice in the same run: with the relay waking on its timerfd (`relay_wakeups` "timerfd",
what `bipsim pty-pair` does) and on trio's millisecond sleeps (the relay before it had the timerfd), so the
gain is a ratio of one run.

The same run also measures `echo`: the same four frames per message, of the same sizes, bounced by a bare DLC peer
with no AT server, card or SMSC behind it. That is the floor of this rig (the relay's and the muxes' wake-ups per
frame on a loaded machine); `ratio_vs_echo` says how close the modem comes to it.

`concurrent`: a host may run an AT session on several DLCs at once (27.010 section 4: each DLC is its own
channel), and a host with many messages to send would (ModemManager and oFono open several channels): then one
DLC's frames use the line while another waits for its prompt, both directions carry frames at once, and the
turnarounds are hidden. Its bound is stricter: the busier direction's bytes a message (and no less than one
DLC's exchange both ways shared among the DLCs), not the sum of both. One JSON line.
"""

from __future__ import annotations

import json
import time

import trio

from bipsim.cp.card_driver import CardDriver
from bipsim.cp.commands import ModemCommands
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork
from bipsim.cp.sms_commands import SmsCommands
from bipsim.link.at_server import AtServer
from bipsim.link.cmux import CmuxParams, Mux, MuxRole
from bipsim.link.pty import PtyStream
from bipsim.link.pty_relay import PtyPair
from bipsim.net.sms_pdu import SmsSubmit
from bipsim.trace.recorder import NULL_TRACER

MESSAGES = 1000
BAUDS = (115_200, 921_600)  # the usual AT port rate, and the usual top rate of a USB-serial modem port
CONCURRENT_DLCS = (2, 4)  # DLCs sending at once in `concurrent` (at BAUDS[0])
PDU = "00" + SmsSubmit.for_text("+447700900456", "Benchmark message from bipsim")[0].encode().hex().upper()
LENGTH = len(PDU) // 2 - 1


class Counted(trio.abc.Stream):
    """A stream that counts the bytes written on it (the line's bytes, CMUX framing included)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sent = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += len(data)
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.inner.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _until(stream: trio.abc.Stream, buffer: bytearray, marker: bytes) -> None:
    while marker not in buffer:
        data = await stream.receive_some(4096)
        if not data:
            raise RuntimeError("the CP's DLC ended")
        buffer += data
    del buffer[: buffer.index(marker) + len(marker)]


async def echo(baud: int, sizes: tuple[int, int, int, int], *, timerfd: bool = True) -> float:
    """Seconds for MESSAGES exchanges of four DLC writes of `sizes` bytes (up, down, up, down), a peer answering each
    at once: what the line and the muxes alone cost."""
    pair = PtyPair.create(baud=baud, timerfd=timerfd)
    ap_line, cp_line = PtyStream.open(pair.paths[0]), PtyStream.open(pair.paths[1])
    params = CmuxParams(n1=1500)
    up1, down1, up2, down2 = sizes
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pair.run)
            ap_mux = Mux(ap_line, role=MuxRole.INITIATOR, params=params)
            cp_mux = Mux(cp_line, role=MuxRole.RESPONDER, params=params)
            nursery.start_soon(ap_mux.run)
            nursery.start_soon(cp_mux.run)
            ap = await ap_mux.open_dlc(1)
            cp = await cp_mux.accept_dlc()

            async def take(stream: trio.abc.Stream, count: int) -> None:
                got = 0
                while got < count:
                    got += len(await stream.receive_some(4096))

            async def peer() -> None:
                for _ in range(MESSAGES):
                    await take(cp, up1)
                    await cp.send_all(b"d" * down1)
                    await take(cp, up2)
                    await cp.send_all(b"d" * down2)

            nursery.start_soon(peer)
            start = time.perf_counter()
            for _ in range(MESSAGES):
                await ap.send_all(b"u" * up1)
                await take(ap, down1)
                await ap.send_all(b"u" * up2)
                await take(ap, down2)
            elapsed = time.perf_counter() - start
            nursery.cancel_scope.cancel()
    finally:
        await ap_line.aclose()
        await cp_line.aclose()
        await pair.aclose()
    return elapsed


async def run(baud: int, *, timerfd: bool = True) -> dict[str, object]:
    card, _ = simulated_card(None, None, NULL_TRACER)
    network = CellularNetwork()
    driver = CardDriver(card)
    core = ModemCommands(driver, network)
    core.command_sets = [SmsCommands(core, NULL_TRACER, {})]
    pair = PtyPair.create(baud=baud, timerfd=timerfd)
    ap_line = Counted(PtyStream.open(pair.paths[0]))
    cp_line = Counted(PtyStream.open(pair.paths[1]))
    params = CmuxParams(n1=1500)
    elapsed = 0.0
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pair.run)
            ap_mux = Mux(ap_line, role=MuxRole.INITIATOR, params=params)
            cp_mux = Mux(cp_line, role=MuxRole.RESPONDER, params=params)
            nursery.start_soon(ap_mux.run)
            nursery.start_soon(cp_mux.run)
            dlc = await ap_mux.open_dlc(1)
            server = AtServer(await cp_mux.accept_dlc(), echo=False)
            core.install(server)
            nursery.start_soon(server.run)
            buffer = bytearray()
            await dlc.send_all(b"AT+CMGF=0\r")
            await _until(dlc, buffer, b"OK\r\n")
            up, down = ap_line.sent, cp_line.sent
            start = time.perf_counter()
            for _ in range(MESSAGES):
                await dlc.send_all(f"AT+CMGS={LENGTH}\r".encode())
                await _until(dlc, buffer, b"> ")
                await dlc.send_all(PDU.encode() + b"\x1a")
                await _until(dlc, buffer, b"OK\r\n")
            elapsed = time.perf_counter() - start
            up, down = ap_line.sent - up, cp_line.sent - down
            nursery.cancel_scope.cancel()
    finally:
        await ap_line.aclose()
        await cp_line.aclose()
        await pair.aclose()
    submitted = len(network.smsc.mo)
    bound_seconds = (up + down) * 10 / baud
    command = len(f"AT+CMGS={LENGTH}\r")
    answer = len("\r\n+CMGS: 100\r\n\r\nOK\r\n")  # TP-MR of up to 3 digits
    floor = await echo(baud, (command, 4, len(PDU) + 1, answer), timerfd=timerfd)
    return {
        "baud": baud,
        "relay_wakeups": "timerfd" if timerfd else "trio sleep (ms)",
        "messages": MESSAGES,
        "seconds": round(elapsed, 3),
        "messages_per_s": round(MESSAGES / elapsed, 1),
        "bytes_per_message": {"ap_to_cp": round(up / MESSAGES, 1), "cp_to_ap": round(down / MESSAGES, 1)},
        "bound_messages_per_s": round(MESSAGES / bound_seconds, 1),
        "ratio": round(bound_seconds / elapsed, 3),
        "echo_seconds": round(floor, 3),
        "echo_ratio": round(bound_seconds / floor, 3),
        "ratio_vs_echo": round(floor / elapsed, 3),
        "smsc_took": submitted,
    }


async def concurrent(baud: int, dlcs: int) -> dict[str, object]:
    """MESSAGES SMS-SUBMITs shared among `dlcs` DLCs of the mux, each a TE sending one after the other as `run`
    does, all at once (27.010 section 4: each DLC is its own channel; a host may run an AT session on each).

    While one DLC waits for its prompt or its answer another one's frames use the line, and both directions carry
    frames at the same time: the bound is the busier direction's bytes per message (and no less than one DLC's
    exchange, both ways, shared among the DLCs), not the sum of both directions."""
    card, _ = simulated_card(None, None, NULL_TRACER)
    network = CellularNetwork()
    core = ModemCommands(CardDriver(card), network)
    core.command_sets = [SmsCommands(core, NULL_TRACER, {})]
    pair = PtyPair.create(baud=baud)
    ap_line = Counted(PtyStream.open(pair.paths[0]))
    cp_line = Counted(PtyStream.open(pair.paths[1]))
    params = CmuxParams(n1=1500)
    elapsed = 0.0
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pair.run)
            ap_mux = Mux(ap_line, role=MuxRole.INITIATOR, params=params)
            cp_mux = Mux(cp_line, role=MuxRole.RESPONDER, params=params)
            nursery.start_soon(ap_mux.run)
            nursery.start_soon(cp_mux.run)
            channels = []
            for dlci in range(1, dlcs + 1):
                dlc = await ap_mux.open_dlc(dlci)
                server = AtServer(await cp_mux.accept_dlc(), echo=False)
                core.install(server)
                nursery.start_soon(server.run)
                buffer = bytearray()
                await dlc.send_all(b"AT+CMGF=0\r")
                await _until(dlc, buffer, b"OK\r\n")
                channels.append((dlc, buffer))
            up, down = ap_line.sent, cp_line.sent

            async def te(dlc: trio.abc.Stream, buffer: bytearray, count: int) -> None:
                for _ in range(count):
                    await dlc.send_all(f"AT+CMGS={LENGTH}\r".encode())
                    await _until(dlc, buffer, b"> ")
                    await dlc.send_all(PDU.encode() + b"\x1a")
                    await _until(dlc, buffer, b"OK\r\n")

            start = time.perf_counter()
            async with trio.open_nursery() as tes:
                for i, (dlc, buffer) in enumerate(channels):
                    tes.start_soon(te, dlc, buffer, MESSAGES // dlcs + (i < MESSAGES % dlcs))
            elapsed = time.perf_counter() - start
            up, down = ap_line.sent - up, cp_line.sent - down
            nursery.cancel_scope.cancel()
    finally:
        await ap_line.aclose()
        await cp_line.aclose()
        await pair.aclose()
    bound_seconds = max(up, down, (up + down) / dlcs) * 10 / baud
    return {
        "baud": baud,
        "dlcs": dlcs,
        "seconds": round(elapsed, 3),
        "messages_per_s": round(MESSAGES / elapsed, 1),
        "bound_messages_per_s": round(MESSAGES / bound_seconds, 1),
        "ratio": round(bound_seconds / elapsed, 3),
        "smsc_took": len(network.smsc.mo),
    }


async def main() -> None:
    runs = [await run(baud, timerfd=timerfd) for baud in BAUDS for timerfd in (True, False)]
    several = [await concurrent(BAUDS[0], dlcs) for dlcs in CONCURRENT_DLCS]
    print(
        json.dumps(
            {
                "bench": "sms_cmgs_over_cmux",
                "line": "pty pair paced as `bipsim pty-pair --baud N`, 8N1",
                "pdu_octets": LENGTH,
                "ratio": runs[0]["ratio"],
                "ratio_vs_echo": runs[0]["ratio_vs_echo"],
                "ratio_ms_wakeups": runs[1]["ratio"],
                "ratio_concurrent": {str(r["dlcs"]): r["ratio"] for r in several},
                "runs": runs,
                "concurrent": several,
            }
        )
    )


if __name__ == "__main__":
    trio.run(main)
