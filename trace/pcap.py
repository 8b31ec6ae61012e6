"""Exports a trace to pcap so that Wireshark/tshark decode it without plug-ins (docs/protocols.md, "Traces").

- APDUs (layer "apdu"): one GSMTAP v2 datagram (UDP port 4729, type 4 = SIM, sub-type 0 = APDU) per exchange,
  holding the command header, its data, the response data and the status word, exactly as SIMtrace sends them;
  Wireshark's GSM SIM dissector then decodes the card application toolkit inside (proactive commands, TRs,
  envelopes). An exchange is a cp->uicc "apdu" event followed by the uicc->cp "apdu" event that answers it (the
  card is one at a time: the oldest unanswered command of the session).
- Network bytes (layers ip and tcp; tls and http events are decoded views and are not exported): real IPv4/TCP packets (scapy) between one address per actor,
  with a three-way handshake before a connection's first segment, consistent sequence and acknowledgement numbers,
  and FIN/ACK at an event of kind tcp.close or tcp.closed (a tcp.error, a refused or reset connection, draws none).
- AT lines and CMUX frames have no dissector that takes them raw, so they are UDP payload on documented ports:
  AT_PORT (27007) for V.250/27.007 text, CMUX_PORT (27010) for 27.010 frames; the source port says which actor sent.

Addresses are documentation ranges (RFC 5737) and exist only inside the file.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bipsim.trace.events import Actor, Layer, TraceEvent
from bipsim.trace.kinds import Kind

GSMTAP_PORT = 4729
GSMTAP_TYPE_SIM = 4
GSMTAP_SIM_APDU = 0
AT_PORT = 27007
CMUX_PORT = 27010
OTA_TCP_PORT = 4443

ADDRESSES: dict[Actor, str] = {
    Actor.UICC: "192.0.2.1",
    Actor.CP: "192.0.2.2",
    Actor.AP: "192.0.2.3",
    Actor.READER: "192.0.2.4",
    Actor.NET: "198.51.100.1",
    Actor.PGW: "198.51.100.2",
    Actor.HOST: "198.51.100.3",
    Actor.OTA: "203.0.113.10",
    Actor.SMDP: "203.0.113.11",
    Actor.CLOUD: "203.0.113.12",
    Actor.PUBLISH: "203.0.113.13",
    Actor.SYNC: "203.0.113.14",
}
# UDP source ports that name the sending actor for AT/CMUX/GSMTAP datagrams (the later sections' actors from 40006)
_FIRST_PORTS = (Actor.UICC, Actor.CP, Actor.AP, Actor.NET, Actor.OTA)
_LATER = [actor for actor in Actor if actor not in _FIRST_PORTS]
ACTOR_PORTS: dict[Actor, int] = {actor: 40001 + index for index, actor in enumerate([*_FIRST_PORTS, *_LATER])}

# tls/http events are decoded views of bytes that also cross the wire as tcp events: only wire bytes become packets
NETWORK_LAYERS = {Layer.IP, Layer.TCP}
CLOSE_KINDS = frozenset({Kind.TCP_CLOSE, Kind.TCP_CLOSED})


def gsmtap_header(frame_number: int = 0) -> bytes:
    """GSMTAP version 2 header for a SIM APDU (osmocom gsmtap.h: 16 bytes, length in 32-bit words)."""
    return struct.pack(
        "!BBBBHbbIBBBB", 2, 4, GSMTAP_TYPE_SIM, 0, 0, 0, 0, frame_number, GSMTAP_SIM_APDU, 0, 0, 0
    )


@dataclass
class _Connection:
    client: Actor
    server: Actor
    client_port: int
    seq: dict[Actor, int] = field(default_factory=dict)
    open: bool = False


class PcapExporter:
    """Turns trace events into packets; `packets` holds scapy packets with their capture time set."""

    def __init__(self, origin_epoch: float = 1_700_000_000.0) -> None:
        from scapy.layers.inet import IP, TCP, UDP  # scapy is slow to import: only when exporting
        from scapy.packet import Raw

        self._IP, self._TCP, self._UDP, self._Raw = IP, TCP, UDP, Raw
        self.origin = origin_epoch
        self.packets: list[Any] = []
        self._pending_commands: list[TraceEvent] = []
        self._connections: dict[frozenset[Actor], _Connection] = {}
        self._next_port = 49152
        self.skipped = 0

    def _stamp(self, packet: Any, t: float) -> None:
        packet.time = self.origin + t
        self.packets.append(packet)

    def _udp(self, src: Actor, dst: Actor, dport: int, payload: bytes, t: float) -> None:
        packet = (
            self._IP(src=ADDRESSES[src], dst=ADDRESSES[dst])
            / self._UDP(sport=ACTOR_PORTS[src], dport=dport)
            / self._Raw(payload)
        )
        self._stamp(packet, t)

    def _apdu(self, event: TraceEvent) -> None:
        if event.src is not Actor.UICC:  # a command: wait for its response
            self._pending_commands.append(event)
            return
        if not self._pending_commands:
            self.skipped += 1  # a response without a command (the trace began mid-exchange)
            return
        # the CP holds the card for one exchange at a time: the oldest unanswered command of the same session
        same = [c for c in self._pending_commands if c.session == event.session]
        command = same[0] if same else self._pending_commands[0]
        self._pending_commands.remove(command)
        payload = gsmtap_header(len(self.packets)) + command.data + event.data
        self._udp(Actor.CP, Actor.UICC, GSMTAP_PORT, payload, event.t)

    def _connection(self, a: Actor, b: Actor) -> _Connection:
        key = frozenset((a, b))
        conn = self._connections.get(key)
        if conn is None or not conn.open:
            server = b if b in (Actor.OTA, Actor.NET) else a
            client = a if server is b else b
            conn = _Connection(client, server, self._next_port, {client: 1000, server: 5000})
            self._next_port += 1
            self._connections[key] = conn
        return conn

    def _tcp(self, conn: _Connection, src: Actor, flags: str, payload: bytes, t: float) -> None:
        dst = conn.server if src is conn.client else conn.client
        sport = conn.client_port if src is conn.client else OTA_TCP_PORT
        dport = OTA_TCP_PORT if src is conn.client else conn.client_port
        seq, ack = conn.seq[src], conn.seq[dst]
        segment = self._TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack if "A" in flags else 0)
        packet = self._IP(src=ADDRESSES[src], dst=ADDRESSES[dst]) / segment
        if payload:
            packet = packet / self._Raw(payload)
        self._stamp(packet, t)
        conn.seq[src] = seq + len(payload) + (1 if ("S" in flags or "F" in flags) else 0)

    def _network(self, event: TraceEvent) -> None:
        src, dst = event.src, event.dst
        if src is dst:
            self.skipped += 1
            return
        conn = self._connection(src, dst)
        closing = event.layer is Layer.TCP and not event.data and event.kind in CLOSE_KINDS
        if event.kind == Kind.TCP_ERROR and not event.data:
            self.skipped += 1  # refused or reset: no segment to draw
            return
        if not conn.open:
            if closing:
                self.skipped += 1
                return
            self._tcp(conn, conn.client, "S", b"", event.t)
            self._tcp(conn, conn.server, "SA", b"", event.t)
            self._tcp(conn, conn.client, "A", b"", event.t)
            conn.open = True
        if event.data:
            self._tcp(conn, src, "PA", event.data, event.t)
            self._tcp(conn, dst, "A", b"", event.t)
        elif closing:
            self._tcp(conn, src, "FA", b"", event.t)
            self._tcp(conn, dst, "FA", b"", event.t)
            self._tcp(conn, src, "A", b"", event.t)
            conn.open = False

    def add(self, event: TraceEvent) -> None:
        if event.layer is Layer.APDU:
            if event.data and event.kind != Kind.APDU_ATR:  # the answer to reset answers no command
                self._apdu(event)
        elif event.layer in NETWORK_LAYERS:
            if event.layer is Layer.TCP or event.data:
                self._network(event)
        elif event.layer is Layer.AT and event.data:
            self._udp(event.src, event.dst, AT_PORT, event.data, event.t)
        elif event.layer is Layer.CMUX and event.data:
            self._udp(event.src, event.dst, CMUX_PORT, event.data, event.t)

    def write(self, path: str | Path) -> int:
        """Writes the packets as a classic pcap (LINKTYPE_RAW: records start at the IPv4 header); returns how many.

        scapy builds the packets; the file format is written here so every record carries our link type and
        capture time without scapy's per-packet link-type guessing.
        """
        with Path(path).open("wb") as out:
            out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
            for packet in self.packets:
                data = bytes(packet)
                seconds = float(packet.time)
                whole = int(seconds)
                out.write(struct.pack("<IIII", whole, int((seconds - whole) * 1e6), len(data), len(data)))
                out.write(data)
        return len(self.packets)


def export_pcap(events: Iterable[TraceEvent], path: str | Path) -> int:
    """Writes a pcap of `events` (already merged by time); returns the number of packets."""
    exporter = PcapExporter()
    for event in events:
        exporter.add(event)
    return exporter.write(path)
