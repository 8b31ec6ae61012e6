"""CPU cost of the CP's own IPv4 stack (net/stack.py) with its trio adapters: bytes per CPU-second of one TCP
transfer between two IpStacks joined by an ideal in-memory link on trio's MockClock (every packet encoded, traced
or not, decoded, demultiplexed and fed to net/tcp.py's connection; streams wait as they do in the CP), against a
raw relay of the same payload in the same run: the same 1460-byte chunks as UDP datagrams in IPv4 packets, encoded
and decoded, with no state and no event loop. `traced` is the same transfer with every packet written as a JSON
line (to memory), as `bipsim cp --trace` does.

Prints ONE JSON line: the payload size, the three rates (medians of ROUNDS) and the ratios stack/relay and
traced/untraced. Usage: bench_ip_stack.py [SIZE_BYTES]
"""

from __future__ import annotations

import io
import json
import math
import random
import statistics
import sys
import time
from ipaddress import IPv4Address

import trio
import trio.testing

from bipsim.net.ipv4 import UDP, Ipv4Packet
from bipsim.net.stack import IpStack
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
    relay, plain, traced = [], [], []
    for _ in range(ROUNDS):  # interleaved, so a busy moment of the machine weighs on all three alike
        relay.append(relay_rate(size))
        plain.append(stack_rate(size, traced=False))
        traced.append(stack_rate(size, traced=True))
    relay_median, plain_median, traced_median = (statistics.median(r) for r in (relay, plain, traced))
    print(
        json.dumps(
            {
                "bench": "ip_stack",
                "size": size,
                "rounds": ROUNDS,
                "stack_bytes_per_cpu_s": round(plain_median),
                "stack_traced_bytes_per_cpu_s": round(traced_median),
                "relay_bytes_per_cpu_s": round(relay_median),
                "ratio_stack_to_relay": round(plain_median / relay_median, 3),
                "ratio_traced_to_untraced": round(traced_median / plain_median, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
