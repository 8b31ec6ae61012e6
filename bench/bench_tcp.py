"""CPU cost of the CP's own TCP (net/tcp.py, net/tcp_segment.py): bytes per CPU-second through two TcpConnections
joined by an ideal in-memory link (no delay, no loss: every packet is encoded to an IPv4 packet, decoded at the far
end and fed to the peer at once; time jumps to the next timer when nothing else is left), against a raw relay of the
same payload in the same run: the same MSS-sized chunks as UDP datagrams in IPv4 packets, encoded and decoded, with
no state at all. The ratio is what TCP's rules (windows, ACKs, RTT, buffers) cost on top of packet codecs.

One JSON line: payload size, both rates (medians of ROUNDS), the ratio, and the segment/ACK counts of one TCP run.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections import deque
from ipaddress import IPv4Address

from bipsim.net.ipv4 import Ipv4Packet
from bipsim.net.tcp import TcpConfig, TcpConnection, TcpState
from bipsim.net.tcp_segment import TcpSegment
from bipsim.net.udp import UdpDatagram

PAYLOAD = 4 << 20
ROUNDS = 3
MSS = 1460
CP = IPv4Address("198.51.100.2")
SERVER = IPv4Address("203.0.113.10")
TCP = 6
UDP = 17


def tcp_run(payload: bytes) -> tuple[float, dict[str, int]]:
    """CPU seconds to move `payload` through our TCP, and the packet counts."""
    config = TcpConfig(mss=MSS, send_buffer=1 << 18, receive_buffer=1 << 18)
    start = time.process_time()
    now = 0.0
    client = TcpConnection.active((CP, 40000), (SERVER, 443), iss=1, now=now, config=config)
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
                        segment, (SERVER, 443), (CP, 40000), iss=7, now=now, config=config
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


def relay_run(payload: bytes) -> float:
    """CPU seconds to move `payload` as MSS-sized UDP datagrams in IPv4 packets, encoded and decoded."""
    start = time.process_time()
    received = bytearray()
    for offset in range(0, len(payload), MSS):
        datagram = UdpDatagram(40000, 443, payload[offset : offset + MSS])
        data = Ipv4Packet(CP, SERVER, UDP, datagram.encode(CP, SERVER)).encode()
        packet = Ipv4Packet.decode(data)
        received += UdpDatagram.decode(packet.payload, packet.source, packet.destination).payload
    elapsed = time.process_time() - start
    if bytes(received) != payload:
        raise RuntimeError("the relay lost bytes")
    return elapsed


def main() -> None:
    payload = random.Random(15).randbytes(PAYLOAD)
    tcp_rates, relay_rates = [], []
    counts: dict[str, int] = {}
    for _ in range(ROUNDS):
        elapsed, counts = tcp_run(payload)
        tcp_rates.append(PAYLOAD / elapsed)
        relay_rates.append(PAYLOAD / relay_run(payload))
    tcp_rate = statistics.median(tcp_rates)
    relay_rate = statistics.median(relay_rates)
    print(
        json.dumps(
            {
                "bench": "tcp",
                "payload_bytes": PAYLOAD,
                "rounds": ROUNDS,
                "mss": MSS,
                "tcp_bytes_per_cpu_s": round(tcp_rate),
                "relay_bytes_per_cpu_s": round(relay_rate),
                "ratio": round(tcp_rate / relay_rate, 3),
                **counts,
            }
        )
    )


if __name__ == "__main__":
    main()
