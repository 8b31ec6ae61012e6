"""PPP data throughput on a paced serial line against the raw line, same payload, same run (issue 16's target: a
ratio >= 0.9; HDLC escaping, the FCS and a few header bytes per frame are all a real modem's PPP costs there).

The line is `bipsim pty-pair --baud 921600` (bipsim.link.pty_relay's paced pair, as bench/bench_cmux.py uses).
The raw baseline writes the payload on side A in 1500-byte chunks and reads it on side B. The PPP run carries the
same payload as 1500-byte IPv4 packets from one net/ppp.py PppConnection to another (both ends opened LCP and IPCP
with each other first, in memory: ACCM 0, PFC, ACFC, as pppd and a modem agree), the sender framing and escaping
(RFC 1662) each packet, the receiver deframing, checking the FCS and handing the packets up. One JSON line.
"""

from __future__ import annotations

import json
import random
import time
from ipaddress import IPv4Address

import trio

from bipsim.link.pty import PtyStream
from bipsim.link.pty_relay import PtyPair
from bipsim.net.ppp import IpPacket, PppConnection

BAUD = 921_600
SECONDS = 2.0  # payload: this long at the line's rate
PACKET = 1500


def _pair() -> tuple[PppConnection, PppConnection]:
    """Two PPP ends opened with each other (LCP then IPCP), in memory."""
    gateway, host = IPv4Address("198.51.100.1"), IPv4Address("198.51.100.2")
    a = PppConnection(gateway, host, rng=random.Random(1))
    b = PppConnection(host, gateway, rng=random.Random(2))
    a.open(0.0)
    b.open(0.0)
    for _ in range(20):
        b.receive_data(a.data_to_send(), 0.0)
        a.receive_data(b.data_to_send(), 0.0)
        if a.network_open and b.network_open:
            return a, b
    raise RuntimeError("the two PPP ends did not open")


async def _move(send: trio.abc.SendStream, receive: trio.abc.ReceiveStream, payload: bytes) -> float:
    got = bytearray()

    async def reader() -> None:
        while len(got) < len(payload):
            data = await receive.receive_some(65536)
            if not data:
                raise RuntimeError("end of file")
            got.extend(data)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for i in range(0, len(payload), PACKET):
            await send.send_all(payload[i : i + PACKET])
    elapsed = time.perf_counter() - start
    if bytes(got) != payload:
        raise RuntimeError("raw payload corrupted")
    return elapsed


async def _ppp(
    send: trio.abc.SendStream, receive: trio.abc.ReceiveStream, payload: bytes
) -> tuple[float, int]:
    sender, receiver = _pair()
    got = bytearray()
    wire = 0

    async def reader() -> None:
        while len(got) < len(payload):
            data = await receive.receive_some(65536)
            if not data:
                raise RuntimeError("end of file")
            for event in receiver.receive_data(data, 0.0):
                if isinstance(event, IpPacket):
                    got.extend(event.packet)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for i in range(0, len(payload), PACKET):
            sender.send_ip(payload[i : i + PACKET])
            frame = sender.data_to_send()
            wire += len(frame)
            await send.send_all(frame)
    elapsed = time.perf_counter() - start
    if bytes(got) != payload or receiver.counters.dropped_frames:
        raise RuntimeError("PPP payload corrupted or frames dropped")
    return elapsed, wire


async def _on_pair(how: str, payload: bytes) -> tuple[float, int]:
    pair = PtyPair.create(baud=BAUD)
    a, b = PtyStream.open(pair.paths[0]), PtyStream.open(pair.paths[1])
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pair.run)
            if how == "raw":
                result = (await _move(a, b, payload), len(payload))
            else:
                result = await _ppp(a, b, payload)
            nursery.cancel_scope.cancel()
        return result
    finally:
        await a.aclose()
        await b.aclose()
        await pair.aclose()


async def main() -> None:
    rng = random.Random(1661)
    size = int(BAUD / 10 * SECONDS) // PACKET * PACKET
    payload = rng.randbytes(size)
    raw_time, _ = await _on_pair("raw", payload)
    ppp_time, wire = await _on_pair("ppp", payload)
    print(
        json.dumps(
            {
                "bench": "ppp_throughput",
                "line": f"pty pair paced at {BAUD} baud (bipsim pty-pair --baud)",
                "bytes": size,
                "packet": PACKET,
                "bound_Bps": BAUD // 10,
                "raw_Bps": round(size / raw_time, 1),
                "ppp_Bps": round(size / ppp_time, 1),
                "ppp_wire_overhead": round(wire / size - 1, 4),
                "ratio": round(raw_time / ppp_time, 3),
            }
        )
    )


if __name__ == "__main__":
    trio.run(main)
