"""CPU cost of the CP's own IPv4 stack (net/stack.py) with its trio adapters: bytes per CPU-second of one TCP
transfer between two IpStacks joined by an ideal in-memory link on trio's MockClock (every packet encoded, traced
or not, decoded, demultiplexed and fed to net/tcp.py's connection; streams wait as they do in the CP), against a
raw relay of the same payload in the same run: the same 1460-byte chunks as UDP datagrams in IPv4 packets, encoded
and decoded, with no state and no event loop. `traced` is the same transfer with every packet written as a JSON
line (to memory), as `bipsim cp --trace` does.

`tcp_core` is the same payload through two bare TcpConnections (net/tcp.py alone: no stack, no trio, segments
encoded into IPv4 packets and decoded at once), which separates what TCP's rules (windows, ACKs, RTT, buffers)
cost from what the stack and its event loop add.

Prints ONE JSON line: the payload size, the four rates (medians of ROUNDS), the ratios core/relay, stack/core,
stack/relay and traced/untraced, and the segment/ACK counts of one core run. Usage: bench_ip_stack.py [SIZE_BYTES]
"""

from __future__ import annotations

import io
import json
import math
import random
import statistics
import sys
import time
from collections import deque
from ipaddress import IPv4Address

import trio
import trio.testing

from bipsim.net.ipv4 import TCP, UDP, Ipv4Packet
from bipsim.net.stack import IpStack
from bipsim.net.tcp import TcpConfig, TcpConnection, TcpState
from bipsim.net.tcp_segment import TcpSegment
from bipsim.net.udp import UdpDatagram
from bipsim.trace.recorder import NULL_TRACER, Tracer

CP = IPv4Address("198.51.100.2")
NET = IPv4Address("203.0.113.10")
ROUNDS = 3
MSS = 1460


async def _transfer(size: int, tracer: Tracer) -> None:
    async with trio.open_nursery() as nursery:
        up_send, up_receive = trio.open_memory_channel[bytes](math.inf)
        down_send, down_receive = trio.open_memory_channel[bytes](math.inf)
        cp = IpStack(CP, up_send.send_nowait, rng=random.Random(1), tracer=tracer)
        net = IpStack(NET, down_send.send_nowait, rng=random.Random(2), tracer=tracer)

        async def carry(channel: trio.MemoryReceiveChannel[bytes], stack: IpStack) -> None:
            async for packet in channel:
                stack.receive_packet(packet)

        nursery.start_soon(carry, up_receive, net)
        nursery.start_soon(carry, down_receive, cp)
        await nursery.start(cp.run)
        await nursery.start(net.run)
        listener = await net.listen_tcp(80)
        done = trio.Event()

        async def server() -> None:
            stream = await listener.accept()
            got = 0
            while chunk := await stream.receive_some():
                got += len(chunk)
            assert got == size, (got, size)
            await stream.aclose()
            done.set()

        nursery.start_soon(server)
        stream = await cp.open_tcp(NET, 80)
        block = bytes(65536)
        left = size
        while left:
            await stream.send_all(block[: min(left, len(block))])
            left -= min(left, len(block))
        await stream.aclose()
        await done.wait()
        nursery.cancel_scope.cancel()


def stack_rate(size: int, *, traced: bool) -> float:
    tracer = Tracer(io.StringIO()) if traced else NULL_TRACER
    start = time.process_time()
    trio.run(_transfer, size, tracer, clock=trio.testing.MockClock(autojump_threshold=0))
    return size / (time.process_time() - start)


def core_run(payload: bytes) -> tuple[float, dict[str, int]]:
    """CPU seconds to move `payload` through two bare TcpConnections (net/tcp.py: no stack, no event loop; time
    jumps to the next timer when nothing else is left), and the packet counts."""
    config = TcpConfig(mss=MSS, send_buffer=1 << 18, receive_buffer=1 << 18)
    start = time.process_time()
    now = 0.0
    client = TcpConnection.active((CP, 40000), (NET, 80), iss=1, now=now, config=config)
    server: TcpConnection | None = None
    wire: deque[tuple[int, bytes]] = deque()
    counts = {"data_segments": 0, "pure_acks": 0}
    sent = 0
    received = 0

    def ship(conn: TcpConnection, to: int) -> None:
        for seg in conn.outgoing():
            if seg.payload:
                counts["data_segments"] += 1
            else:
                counts["pure_acks"] += 1
            raw = seg.encode(conn.local[0], conn.remote[0])
            packet = Ipv4Packet(conn.local[0], conn.remote[0], TCP, raw)
            wire.append((to, packet.encode()))

    while True:
        if client.state is TcpState.ESTABLISHED and sent < len(payload):
            sent += client.send(payload[sent : sent + client.send_space], now)
            if sent == len(payload):
                client.shutdown(now)
        if server is not None:
            received += len(server.read())
            if server.at_eof:
                break
        ship(client, 1)
        if server is not None:
            ship(server, 0)
        if wire:
            while wire:
                to, data = wire.popleft()
                packet = Ipv4Packet.decode(data)
                segment = TcpSegment.decode(packet.payload, packet.source, packet.destination)
                if to == 0:
                    client.receive(segment, now)
                elif server is None:
                    server = TcpConnection.passive(
                        segment, (NET, 80), (CP, 40000), iss=7, now=now, config=config
                    )
                else:
                    server.receive(segment, now)
            continue
        deadlines = [d for d in (client.next_deadline(), server.next_deadline() if server else None) if d]
        if not deadlines:
            raise RuntimeError("the transfer stalled")
        now = min(deadlines)
        client.on_timer(now)
        if server is not None:
            server.on_timer(now)
    elapsed = time.process_time() - start
    if received != len(payload):
        raise RuntimeError(f"received {received} of {len(payload)} bytes")
    return elapsed, counts


def relay_rate(size: int) -> float:
    payload = bytes(MSS)
    start = time.process_time()
    moved = 0
    while moved < size:
        chunk = payload[: min(MSS, size - moved)]
        packet = Ipv4Packet(CP, NET, UDP, UdpDatagram(40000, 80, chunk).encode(CP, NET)).encode()
        parsed = Ipv4Packet.decode(packet)
        moved += len(UdpDatagram.decode(parsed.payload, parsed.source, parsed.destination).payload)
    return size / (time.process_time() - start)


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 2 << 20
    relay, core, plain, traced = [], [], [], []
    counts: dict[str, int] = {}
    payload = random.Random(15).randbytes(size)
    for _ in range(ROUNDS):  # interleaved, so a busy moment of the machine weighs on all four alike
        relay.append(relay_rate(size))
        elapsed, counts = core_run(payload)
        core.append(size / elapsed)
        plain.append(stack_rate(size, traced=False))
        traced.append(stack_rate(size, traced=True))
    relay_median, core_median, plain_median, traced_median = (
        statistics.median(r) for r in (relay, core, plain, traced)
    )
    print(
        json.dumps(
            {
                "bench": "ip_stack",
                "size": size,
                "rounds": ROUNDS,
                "tcp_core_bytes_per_cpu_s": round(core_median),
                "stack_bytes_per_cpu_s": round(plain_median),
                "stack_traced_bytes_per_cpu_s": round(traced_median),
                "relay_bytes_per_cpu_s": round(relay_median),
                "ratio_core_to_relay": round(core_median / relay_median, 3),
                "ratio_stack_to_core": round(plain_median / core_median, 3),
                "ratio_stack_to_relay": round(plain_median / relay_median, 3),
                "ratio_traced_to_untraced": round(traced_median / plain_median, 3),
                **counts,
            }
        )
    )


if __name__ == "__main__":
    main()
