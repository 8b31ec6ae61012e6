"""MO SMS through +CMGS over CMUX on the paced pty pair, against the bound the line rate sets.

The AP side opens DLC 1 of a 27.010 mux (basic option, UIH) on one end of `bipsim pty-pair --baud N`'s line
(bipsim.link.pty_relay, paced like the UART it stands for) and sends MESSAGES SMS-SUBMITs in PDU mode, one after
the other as a TE does: `AT+CMGS=<length>`, wait for the `> ` prompt, the PDU and Ctrl-Z, wait for `+CMGS: <mr>`
and `OK`. The CP side is the modem's 27.007 core with the 27.005 command set (cp/sms_commands.py) on the DLC, the
simulated card behind it and the network's SMSC (net/smsc.py) taking each message.

The bound: a TE that waits for each answer before it sends on keeps the line busy one way at a time, so a message
cannot take less than the bits of its exchange in both directions (framing included, counted on the line in this
run, 10 bits a byte for 8N1) at the line's rate. `ratio` = messages/s measured / messages/s of that bound
(the issue asks >= 0.8).

The same run also measures `echo`: the same four frames per message, of the same sizes, bounced by a bare DLC peer
with no AT server, card or SMSC behind it. That is the floor of this rig (the relay's and the muxes' wake-ups per
frame on a loaded machine); `ratio_vs_echo` says how close the modem comes to it. One JSON line.
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


async def echo(baud: int, sizes: tuple[int, int, int, int]) -> float:
    """Seconds for MESSAGES exchanges of four DLC writes of `sizes` bytes (up, down, up, down), a peer answering each
    at once: what the line and the muxes alone cost."""
    pair = PtyPair.create(baud=baud)
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


async def run(baud: int) -> dict[str, object]:
    card, _ = simulated_card(None, None, NULL_TRACER)
    network = CellularNetwork()
    driver = CardDriver(card)
    core = ModemCommands(driver, network)
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
    floor = await echo(baud, (command, 4, len(PDU) + 1, answer))
    return {
        "baud": baud,
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


async def main() -> None:
    runs = [await run(baud) for baud in BAUDS]
    print(
        json.dumps(
            {
                "bench": "sms_cmgs_over_cmux",
                "line": "pty pair paced as `bipsim pty-pair --baud N`, 8N1",
                "pdu_octets": LENGTH,
                "ratio": runs[0]["ratio"],
                "ratio_vs_echo": runs[0]["ratio_vs_echo"],
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    trio.run(main)
