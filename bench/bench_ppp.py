"""PPP data throughput on a paced serial line against the raw line, same payload, same run (issue 16's target: a
ratio >= 0.9; HDLC escaping, the FCS and a few header bytes per frame are all a real modem's PPP costs there).

The line is `bipsim pty-pair --baud 921600` (bipsim.link.pty_relay's paced pair, as bench/bench_cmux.py uses).
The raw baseline writes the payload on side A in 1500-byte chunks and reads it on side B.

`ratio` is the product's figure: a running `bipsim cp --port B --trace F` (its AT server, cp/data_mode.py, the
tracing of every frame, the radio bearer and the packet gateway) answers `ATD*99#` on side A with CONNECT; a host
PPP end (a net/ppp.py PppConnection, which rejects the modem's authentication as a host without secrets does)
opens LCP and IPCP, then sends the payload as 1500-byte IPv4/UDP packets to a UDP sink on 127.0.0.1 through the
gateway; the time runs from the first frame written to the sink's last byte. `codec_ratio` keeps the PPP codec
alone on the same line: one PppConnection to another (opened in memory: ACCM 0, PFC, ACFC), framing, escaping,
deframing and checking the FCS of each packet, nothing else. One JSON line.
"""

from __future__ import annotations

import json
import math
import random
import socket
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

import trio

from bipsim.link.pty import PtyStream
from bipsim.link.pty_relay import PtyPair
from bipsim.net.ipv4 import UDP, Ipv4Packet
from bipsim.net.ppp import IpPacket, NetworkUp, PppConnection
from bipsim.net.udp import UdpDatagram

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


HOST_ADDRESS = IPv4Address("198.51.100.2")  # the first address of a fresh CP's pool (docs/protocols.md)
SINK = IPv4Address("127.0.0.1")


async def _line(stream: PtyStream, buffer: bytearray, until: bytes, seconds: float = 30.0) -> bytes:
    with trio.fail_after(seconds):
        while until not in buffer:
            buffer.extend(await stream.receive_some(65536))
    end = buffer.index(until) + len(until)
    text = bytes(buffer[:end])
    del buffer[:end]
    return text


async def _through_cp(a: PtyStream, cp_side: str, payload: bytes) -> tuple[float, int]:
    """The payload from a host's PPP through `bipsim cp` and its gateway to a UDP sink: (seconds, wire bytes)."""
    udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await udp.bind((str(SINK), 0))
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sink_port = udp.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        cp = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bipsim",
                "cp",
                "--port",
                cp_side,
                "--trace",
                str(Path(folder) / "cp.jsonl"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            buffer = bytearray()
            with trio.fail_after(60):
                while True:  # the CP is up once it answers on the line
                    await a.send_all(b"ATE0\r")
                    with trio.move_on_after(0.5):
                        await _line(a, buffer, b"OK\r\n")
                        break
            buffer.clear()
            await a.send_all(b"ATD*99#\r")
            await _line(a, buffer, b"CONNECT\r\n")
            host = PppConnection(HOST_ADDRESS, IPv4Address("198.51.100.1"), rng=random.Random(3))
            host.open(trio.current_time())
            up = False
            with trio.fail_after(30):
                await a.send_all(host.data_to_send())
                events = host.receive_data(bytes(buffer), trio.current_time())
                while not (up and host.network_open):
                    up = up or any(isinstance(e, NetworkUp) for e in events)
                    out = host.data_to_send()
                    if out:
                        await a.send_all(out)
                    if up and host.network_open:
                        break
                    with trio.move_on_at(host.deadline or math.inf):
                        data = await a.receive_some(65536)
                        events = host.receive_data(data, trio.current_time())
                        continue
                    events = host.handle_timer(trio.current_time())
            got = 0
            wire = 0
            chunk = PACKET - 28  # IPv4 and UDP headers

            async def sink() -> None:
                nonlocal got
                while got < len(payload):
                    got += len(await udp.recv(65536))

            async def drain() -> None:
                while True:  # LCP echoes and the like from the modem: answered, never left to fill the pty
                    host.receive_data(await a.receive_some(65536), trio.current_time())

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                with trio.fail_after(120):
                    async with trio.open_nursery() as inner:
                        inner.start_soon(sink)
                        for n, i in enumerate(range(0, len(payload), chunk)):
                            data = UdpDatagram(40000, sink_port, payload[i : i + chunk]).encode(
                                HOST_ADDRESS, SINK
                            )
                            packet = Ipv4Packet(
                                HOST_ADDRESS, SINK, UDP, data, identification=n & 0xFFFF
                            ).encode()
                            host.send_ip(packet)
                            frame = host.data_to_send()
                            wire += len(frame)
                            await a.send_all(frame)
                elapsed = time.perf_counter() - start
                nursery.cancel_scope.cancel()
            return elapsed, wire
        finally:
            cp.terminate()
            cp.wait(30)
            udp.close()


async def _on_pair(how: str, payload: bytes) -> tuple[float, int]:
    pair = PtyPair.create(baud=BAUD)
    a, b = PtyStream.open(pair.paths[0]), PtyStream.open(pair.paths[1])
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pair.run)
            if how == "raw":
                result = (await _move(a, b, payload), len(payload))
            elif how == "cp":
                await b.aclose()  # the CP opens side B itself
                result = await _through_cp(a, pair.paths[1], payload)
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
    # the UDP payload the CP run carries: the same bytes in 1472-byte datagrams (1500-byte IPv4 packets)
    cp_time, cp_wire = await _on_pair("cp", payload)
    print(
        json.dumps(
            {
                "bench": "ppp_throughput",
                "line": f"pty pair paced at {BAUD} baud (bipsim pty-pair --baud)",
                "bytes": size,
                "packet": PACKET,
                "bound_Bps": BAUD // 10,
                "raw_Bps": round(size / raw_time, 1),
                "cp_Bps": round(size / cp_time, 1),
                "cp_wire_overhead": round(cp_wire / size - 1, 4),
                "ratio": round(raw_time / cp_time, 3),
                "codec_Bps": round(size / ppp_time, 1),
                "codec_wire_overhead": round(wire / size - 1, 4),
                "codec_ratio": round(raw_time / ppp_time, 3),
            }
        )
    )


if __name__ == "__main__":
    trio.run(main)
