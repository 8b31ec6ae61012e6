"""Exports a trace to pcap so that Wireshark/tshark decode it without plug-ins (docs/protocols.md, "Traces").

- APDUs (layer "apdu"): one GSMTAP v2 datagram (UDP port 4729, type 4 = SIM, sub-type 0 = APDU) per exchange,
  holding the command header, its data, the response data and the status word, exactly as SIMtrace sends them;
  Wireshark's GSM SIM dissector then decodes the card application toolkit inside (proactive commands, TRs,
  envelopes). An exchange is a cp->uicc "apdu" event followed by the uicc->cp "apdu" event that answers it (the
  card is one at a time: the oldest unanswered command of the session).
- IP packets (layers ip, tcp and udp whose bytes are a whole IPv4 packet: the CP's own stack traces every packet it
  sends and receives, docs/protocols.md "The packet data plane"): written exactly as traced, one record each. The
  file's link type is LINKTYPE_RAW (101), so a record starts at the IPv4 header and tshark dissects it as IP with
  no framing of ours around it: the checksums, sequence numbers, windows and retransmissions are the stack's own.
  A packet traced at both ends of a link (the CP's stack sent it, the packet gateway's received it) is written
  once: the same bytes traced again by another pair of actors within the last RAW_WINDOW packets are that echo,
  while a retransmission, traced by the same stack again, is kept.
- Network bytes of actors without a packet trace (layers ip and tcp; tls and http events are decoded views and are
  not exported), e.g. the AP's host sockets in embodiment 2 or the OTA server's own view: IPv4/TCP packets made up
  between one address per actor, with a three-way handshake before a connection's first segment, consistent
  sequence and acknowledgement numbers, and FIN/ACK at an event of kind tcp.close or tcp.closed (a tcp.error, a
  refused or reset connection, draws none). An actor that has IP packets in the trace gets none made up: its
  packets are the real ones.
- SMS TPDUs the network's SMSC took from the ME or offered to it (kinds smsc.mo and smsc.mt, net/smsc.py): one
  GSMTAP v2 datagram of type LTE NAS (sub-type 0, plain NAS) each, an EMM UPLINK or DOWNLINK NAS TRANSPORT whose NAS
  message container (3GPP TS 24.301 8.2.30/8.2.12, 9.9.3.22) holds the SMS as it travels over NAS: CP-DATA (TS
  24.011 7.2.1) around RP-DATA (7.3.1) with the SMSC's address and the TPDU. tshark then decodes the TPDU as GSM SMS
  in its direction (an SMS-STATUS-REPORT and an SMS-COMMAND share TP-MTI 2 and differ only by it).
- AT lines and CMUX frames have no dissector that takes them raw, so they are UDP payload on documented ports:
  AT_PORT (27007) for V.250/27.007 text, CMUX_PORT (27010) for 27.010 frames; the source port says which actor sent.

Addresses are documentation ranges (RFC 5737) and exist only inside the file.

Packets are built here with `struct` (RFC 791 IPv4 header, RFC 768 UDP, RFC 793 TCP, RFC 1071 checksums), with the
header values a default scapy packet has (identification 1, TTL 64, TCP window 8192, no options), so the bytes are
those scapy would build; the tests keep scapy as the independent decoder and compare against its build.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from bipsim.net.checksum import internet_checksum
from bipsim.net.ipv4 import TCP, UDP, Ipv4Packet
from bipsim.net.tcp_segment import TcpFlags, TcpSegment
from bipsim.net.udp import UdpDatagram
from bipsim.trace.events import Actor, Layer, TraceEvent
from bipsim.trace.kinds import Kind

GSMTAP_PORT = 4729
GSMTAP_TYPE_SIM = 4
GSMTAP_SIM_APDU = 0
GSMTAP_TYPE_LTE_NAS = 0x12  # osmocom gsmtap.h GSMTAP_TYPE_LTE_NAS; sub-type 0: plain NAS
EMM_DOWNLINK_NAS_TRANSPORT = 0x62  # TS 24.301 table 9.8.1
EMM_UPLINK_NAS_TRANSPORT = 0x63
AT_PORT = 27007
CMUX_PORT = 27010
OTA_TCP_PORT = 4443

ADDRESSES: dict[Actor, str] = {
    Actor.UICC: "192.0.2.1",
    Actor.CP: "192.0.2.2",
    Actor.AP: "192.0.2.3",
    Actor.READER: "192.0.2.4",
    Actor.NET: "198.51.100.1",
    # above the PDP contexts' pool (198.51.100.2 up), whose addresses are in the raw packets
    Actor.PGW: "198.51.100.253",
    Actor.HOST: "198.51.100.254",
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
PACKET_LAYERS = {Layer.IP, Layer.TCP, Layer.UDP}
# the descriptive kinds of a connection (payload bytes, not packets) are never taken for an IP packet, nor is a
# packet the radio link lost (ip.lost): the capture is the CP's interface, where a lost uplink packet was already
# seen leaving (its stack traced it) and a lost downlink one never arrived
DESCRIPTIVE_KINDS = frozenset(
    {
        Kind.TCP_CONNECT,
        Kind.TCP_ACCEPT,
        Kind.TCP_DATA,
        Kind.TCP_CLOSE,
        Kind.TCP_CLOSED,
        Kind.TCP_ERROR,
        Kind.IP_LOST,
    }
)
RAW_WINDOW = 64  # how far back a packet traced by the other end of its link is looked for
CLOSE_KINDS = frozenset({Kind.TCP_CLOSE, Kind.TCP_CLOSED})


def gsmtap_header(frame_number: int = 0) -> bytes:
    """GSMTAP version 2 header for a SIM APDU (osmocom gsmtap.h: 16 bytes, length in 32-bit words)."""
    return struct.pack(
        "!BBBBHbbIBBBB", 2, 4, GSMTAP_TYPE_SIM, 0, 0, 0, 0, frame_number, GSMTAP_SIM_APDU, 0, 0, 0
    )


def sms_over_nas(tpdu: bytes, *, uplink: bool, smsc: str, reference: int) -> bytes | None:
    """A GSMTAP LTE NAS payload carrying `tpdu` (see the module's docstring), or None when it does not fit."""
    digits = "".join(ch for ch in smsc if ch.isdigit())
    nibbles = [int(d) for d in digits] + ([0xF] if len(digits) % 2 else [])
    bcd = bytes(nibbles[i] | nibbles[i + 1] << 4 for i in range(0, len(nibbles), 2))
    sc = bytes((1 + len(bcd), 0x91)) + bcd  # RP address (TS 24.011 8.2.5): international, E.164
    if uplink:  # RP-DATA MS -> network: no originator, the SC as destination
        rpdu = bytes((0x00, reference & 0xFF, 0x00)) + sc + bytes((len(tpdu),)) + tpdu
    else:  # RP-DATA network -> MS: the SC as originator, no destination
        rpdu = bytes((0x01, reference & 0xFF)) + sc + b"\x00" + bytes((len(tpdu),)) + tpdu
    cp_data = bytes((0x09, 0x01, len(rpdu))) + rpdu  # PD 9 (SMS), CP-DATA, CP-User data
    if len(cp_data) > 0xFF:
        return None
    message = EMM_UPLINK_NAS_TRANSPORT if uplink else EMM_DOWNLINK_NAS_TRANSPORT
    nas = bytes((0x07, message, len(cp_data))) + cp_data  # plain EMM (PD 7), NAS message container
    header = struct.pack("!BBBBHbbIBBBB", 2, 4, GSMTAP_TYPE_LTE_NAS, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    return header + nas


@dataclass
class _Connection:
    client: Actor
    server: Actor
    client_port: int
    seq: dict[Actor, int] = field(default_factory=dict)
    open: bool = False


_RECORD = struct.Struct("<IIII")  # pcap record header: seconds, microseconds, captured and original length
_TCP_FLAGS = {"S": 0x02, "SA": 0x12, "A": 0x10, "PA": 0x18, "FA": 0x11}
_MAX_IP_PAYLOAD = 0xFFFF - 20 - 20  # what one IPv4 packet holds after its header and a TCP header
_PACKED = {actor: bytes(int(part) for part in address.split(".")) for actor, address in ADDRESSES.items()}


def is_ipv4_packet(data: bytes) -> bool:
    """Whether `data` is one whole IPv4 packet: version 4, a header of 20 bytes or more whose checksum holds, and a
    total length that is the length of `data` (RFC 791)."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return False
    header_length = (data[0] & 0x0F) * 4
    if header_length < 20 or len(data) < header_length:
        return False
    if int.from_bytes(data[2:4], "big") != len(data):
        return False
    return internet_checksum(data[:header_length]) == 0


def raw_packet_event(event: TraceEvent) -> bool:
    """Whether `event` carries an IP packet as it crossed a link (exported as it is)."""
    return (
        event.layer in PACKET_LAYERS
        and bool(event.hex)
        and event.kind not in DESCRIPTIVE_KINDS
        and is_ipv4_packet(event.data)
    )


class _Address(IPv4Address):
    """An IPv4Address that computes its `packed` once: the codecs read it two or three times per packet, and the
    exporter's few addresses serve every packet of a trace."""

    @functools.cached_property
    def packed(self) -> bytes:
        return IPv4Address.packed.fget(self)  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=256)
def _address(packed: bytes) -> IPv4Address:
    return _Address(packed)


def ipv4_packet(src: bytes, dst: bytes, protocol: int, payload: bytes) -> bytes:
    """An IPv4 header (no options, identification 1, TTL 64, no DF: scapy's defaults) in front of `payload`."""
    return Ipv4Packet(
        _address(src), _address(dst), protocol, payload, ttl=64, identification=1, dont_fragment=False
    ).encode()


def udp_packet(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """IPv4/UDP with the RFC 768 checksum (0 sent as FFFF), from net/udp.py's codec."""
    datagram = UdpDatagram(sport, dport, payload).encode(_address(src), _address(dst))
    return ipv4_packet(src, dst, UDP, datagram)


def tcp_packet(
    src: bytes, dst: bytes, sport: int, dport: int, flags: int, seq: int, ack: int, payload: bytes
) -> bytes:
    """IPv4/TCP without options (data offset 5, window 8192, as scapy's defaults) with the RFC 9293 checksum, from
    net/tcp_segment.py's codec."""
    segment = TcpSegment(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, TcpFlags(flags), 8192, payload)
    return ipv4_packet(src, dst, TCP, segment.encode(_address(src), _address(dst)))


@dataclass(frozen=True, slots=True)
class Packet:
    """One captured packet: its time (seconds since the epoch) and its bytes from the IPv4 header on."""

    time: float
    data: bytes


class PcapExporter:
    """Turns trace events into packets; `packets` holds them, each with its capture time."""

    def __init__(self, origin_epoch: float = 1_700_000_000.0, raw_actors: Iterable[Actor] = ()) -> None:
        self.origin = origin_epoch
        self.packets: list[Packet] = []
        # actors whose IP packets are in the trace: nothing is made up for them (export_pcap finds them first)
        self.raw_actors: set[Actor] = set(raw_actors)
        self._recent_raw: list[tuple[bytes, frozenset[Actor]]] = []
        self._pending_commands: list[TraceEvent] = []
        self._connections: dict[frozenset[Actor], _Connection] = {}
        self._next_port = 49152
        self.skipped = 0

    def _udp(self, src: Actor, dst: Actor, dport: int, payload: bytes, t: float) -> None:
        for at in range(0, max(len(payload), 1), _MAX_IP_PAYLOAD):
            chunk = payload[at : at + _MAX_IP_PAYLOAD]
            data = udp_packet(_PACKED[src], _PACKED[dst], ACTOR_PORTS[src], dport, chunk)
            self.packets.append(Packet(self.origin + t, data))

    def _apdu(self, event: TraceEvent) -> None:
        if event.src is not Actor.UICC:  # a command: wait for its response
            self._pending_commands.append(event)
            return
        if not self._pending_commands:
            self.skipped += 1  # a response without a command (the trace began mid-exchange)
            return
        # the CP holds the card for one exchange at a time: the oldest unanswered command of the same session
        same = next((c for c in self._pending_commands if c.session == event.session), None)
        command = same if same is not None else self._pending_commands[0]
        self._pending_commands.remove(command)
        payload = gsmtap_header(len(self.packets)) + command.data + event.data
        self._udp(Actor.CP, Actor.UICC, GSMTAP_PORT, payload, event.t)

    def _sms(self, event: TraceEvent) -> None:
        fields = event.fields or {}
        payload = sms_over_nas(
            event.data,
            uplink=event.kind == Kind.SMSC_MO,
            smsc=str(fields.get("smsc", "")),
            reference=int(fields.get("id", 0) or 0),
        )
        if payload is None:
            self.skipped += 1
            return
        self._udp(event.src, event.dst, GSMTAP_PORT, payload, event.t)

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
        for at in range(0, max(len(payload), 1), _MAX_IP_PAYLOAD):
            chunk = payload[at : at + _MAX_IP_PAYLOAD]
            seq, ack = conn.seq[src], conn.seq[dst]
            data = tcp_packet(
                _PACKED[src],
                _PACKED[dst],
                sport,
                dport,
                _TCP_FLAGS[flags],
                seq,
                ack if "A" in flags else 0,
                chunk,
            )
            self.packets.append(Packet(self.origin + t, data))
            conn.seq[src] = seq + len(chunk) + (1 if ("S" in flags or "F" in flags) else 0)

    def _network(self, event: TraceEvent) -> None:
        src, dst = event.src, event.dst
        if src is dst:
            self.skipped += 1
            return
        conn = self._connection(src, dst)
        closing = event.layer is Layer.TCP and not event.hex and event.kind in CLOSE_KINDS
        if event.kind == Kind.TCP_ERROR and not event.hex:
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
        if event.hex:
            self._tcp(conn, src, "PA", event.data, event.t)
            self._tcp(conn, dst, "A", b"", event.t)
        elif closing:
            self._tcp(conn, src, "FA", b"", event.t)
            self._tcp(conn, dst, "FA", b"", event.t)
            self._tcp(conn, src, "A", b"", event.t)
            conn.open = False

    def _raw(self, event: TraceEvent) -> None:
        data = event.data
        pair = frozenset((event.src, event.dst))
        self.raw_actors |= {event.src, event.dst} - {Actor.NET, Actor.OTA, Actor.PGW, Actor.HOST}
        if any(seen == data and by != pair for seen, by in self._recent_raw):
            self.skipped += 1  # the other end of the link traced the same packet
            return
        self._recent_raw.append((data, pair))
        del self._recent_raw[:-RAW_WINDOW]
        self.packets.append(Packet(self.origin + event.t, data))

    def add(self, event: TraceEvent) -> None:
        layer = event.layer
        if raw_packet_event(event):
            self._raw(event)
        elif layer in NETWORK_LAYERS and (event.src in self.raw_actors or event.dst in self.raw_actors):
            self.skipped += 1  # that actor's real packets are in the trace: nothing is made up for it
        elif layer is Layer.APDU:
            if event.hex and event.kind != Kind.APDU_ATR:  # the answer to reset answers no command
                self._apdu(event)
        elif layer in NETWORK_LAYERS:
            if layer is Layer.TCP or event.hex:
                self._network(event)
        elif event.kind in (Kind.SMSC_MO, Kind.SMSC_MT) and event.hex:
            self._sms(event)
        elif layer is Layer.AT and event.hex:
            self._udp(event.src, event.dst, AT_PORT, event.data, event.t)
        elif layer is Layer.CMUX and event.hex:
            self._udp(event.src, event.dst, CMUX_PORT, event.data, event.t)

    def write(self, path: str | Path) -> int:
        """Writes the packets as a classic pcap (LINKTYPE_RAW: records start at the IPv4 header); returns how many."""
        chunks = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)]
        for packet in self.packets:
            seconds = packet.time
            whole = int(seconds)
            size = len(packet.data)
            chunks.append(_RECORD.pack(whole, int((seconds - whole) * 1e6), size, size))
            chunks.append(packet.data)
        Path(path).write_bytes(b"".join(chunks))
        return len(self.packets)


def export_pcap(events: Iterable[TraceEvent], path: str | Path) -> int:
    """Writes a pcap of `events` (already merged by time); returns the number of packets. PPP frames of data calls,
    if any, go to a second file beside it (ppp_pcap_path), as a pcap holds one link type."""
    events = list(events)
    raw = {actor for e in events if raw_packet_event(e) for actor in (e.src, e.dst)}
    exporter = PcapExporter(raw_actors=raw - {Actor.NET, Actor.OTA, Actor.PGW, Actor.HOST})
    for event in events:
        exporter.add(event)
    if any(event.kind in PPP_FRAME_KINDS and event.hex for event in events):
        export_ppp_pcap(events, ppp_pcap_path(path))
    return exporter.write(path)


# the PPP frames of a data call (cp/data_mode.py): LINKTYPE_PPP_WITH_DIR (204), each record a direction byte (1: sent
# by the capturing host, the CP; 0: received from the DTE) and the frame without flags, escapes and FCS
LINKTYPE_PPP_WITH_DIR = 204
PPP_FRAME_KINDS = frozenset({Kind.PPP_LCP, Kind.PPP_AUTH, Kind.PPP_IPCP, Kind.PPP_IP, Kind.PPP_FRAME})


def ppp_pcap_path(path: str | Path) -> Path:
    """Where export_pcap puts the PPP frames of F.pcap: F.ppp.pcap."""
    path = Path(path)
    return path.with_name(path.stem + ".ppp" + (path.suffix or ".pcap"))


def export_ppp_pcap(
    events: Iterable[TraceEvent], path: str | Path, origin_epoch: float = 1_700_000_000.0
) -> int:
    """Writes the PPP frames of `events` as a pcap of link type 204; returns how many."""
    chunks = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_PPP_WITH_DIR)]
    count = 0
    for event in events:
        if event.kind not in PPP_FRAME_KINDS or not event.hex:
            continue
        record = bytes((1 if event.src is Actor.CP else 0,)) + event.data
        seconds = origin_epoch + event.t
        whole = int(seconds)
        chunks.append(_RECORD.pack(whole, int((seconds - whole) * 1e6), len(record), len(record)))
        chunks.append(record)
        count += 1
    Path(path).write_bytes(b"".join(chunks))
    return count
