"""Embodiment 1 on the packet data plane (docs/protocols.md, "The packet data plane"): the BIP gateway's UDP
channels, UICC server mode and DNS server request (ETSI TS 102 223 6.4.27, 8.56, 8.59, 8.104), the pcap of the CP's
own packets (read back by scapy and tshark), the CP's bearer over its own stack through a radio link and the packet
gateway (nat), a deactivated context reaching the card as Channel Status "link dropped", and the packet scenarios
(radio-lossy, radio-gprs, pdp-drop, radio-outage, bip-udp, bip-server, bip-dns) with their tshark checks.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from bipsim.cp.bip_gateway import (
    DNS_REQUESTED,
    TAG_DNS_SERVER_ADDRESS,
    TCP_LISTEN,
    BearerOpen,
    BipGateway,
)
from bipsim.trace.events import Actor
from bipsim.trace.pcap import PcapExporter, export_pcap, internet_checksum, is_ipv4_packet
from bipsim.trace.recorder import Tracer
from bipsim.uicc.cat import (
    CommandType,
    GeneralResult,
    ProactiveCommand,
    Tag,
    TransportProtocol,
    buffer_size_object,
    obj,
)
from tests.test_gateway import BACKGROUND, envelopes, open_command, result, the_tr

# --- the gateway: UICC server mode, DNS server request, UDP units ------------------------------------------------


def server_open(port: int = 3516, size: int = 1024) -> ProactiveCommand:
    """OPEN CHANNEL related to the UICC server mode (TS 102 223 6.4.27.5): buffer size and a transport level of
    type 03 (TCP, UICC in server mode), no bearer description and no address."""
    return ProactiveCommand.build(
        CommandType.OPEN_CHANNEL,
        [
            buffer_size_object(size),
            obj(Tag.TRANSPORT_LEVEL, bytes((TransportProtocol.TCP_SERVER,)) + port.to_bytes(2, "big")),
        ],
        number=1,
        qualifier=0,
    )


def test_server_mode_open_answers_listen_then_established_when_a_client_connects() -> None:
    gateway = BipGateway()
    actions = gateway.on_command(server_open())
    tr = the_tr(actions)
    assert result(tr) == (GeneralResult.OK, b"")
    status = tr.get(Tag.CHANNEL_STATUS)
    assert status is not None and status.value == bytes((TCP_LISTEN | 1, 0))  # "TCP in LISTEN state", 8.56
    assert tr.get(Tag.BEARER_DESCRIPTION) is None  # the server mode's OPEN CHANNEL named none
    (open_action,) = [a for a in actions if isinstance(a, BearerOpen)]
    assert open_action.request.protocol == TransportProtocol.TCP_SERVER and open_action.request.port == 3516
    (event,) = envelopes(gateway.on_link_established(1))
    assert event.get(Tag.CHANNEL_STATUS).value == bytes((0x81, 0))  # "TCP in ESTABLISHED state"


def test_server_mode_without_a_port_is_required_values_missing() -> None:
    gateway = BipGateway()
    assert result(the_tr(gateway.on_command(server_open(port=0)))) == (
        GeneralResult.REQUIRED_VALUES_MISSING,
        b"",
    )
    assert not gateway.channels


@pytest.mark.parametrize("asked", [True, False], ids=["asked", "not-asked"])
def test_dns_servers_are_in_the_open_channel_response_only_when_asked(asked: bool) -> None:
    gateway = BipGateway()
    gateway.dns_servers = ("198.51.100.1", "203.0.113.53")
    qualifier = BACKGROUND | (DNS_REQUESTED if asked else 0)
    tr = the_tr(gateway.on_command(open_command(qualifier=qualifier)))
    dns = [item.value for item in tr.items if item.tag == TAG_DNS_SERVER_ADDRESS]
    # each a DNS server address object (8.104): type of address 21 (IPv4), then the address
    expected = [bytes.fromhex("21C6336401"), bytes.fromhex("21CB007135")] if asked else []
    assert dns == expected
    assert bytes(tr.encode()).count(bytes((TAG_DNS_SERVER_ADDRESS, 5, 0x21))) == len(expected)


def test_udp_channel_is_a_datagram_channel_and_tcp_is_not() -> None:
    gateway = BipGateway()
    gateway.on_command(open_command(protocol=TransportProtocol.UDP_CLIENT_REMOTE))
    gateway.on_command(open_command(number=2))
    assert gateway.is_datagram(1) and not gateway.is_datagram(2)
    gateway.on_link_established(1)
    gateway.on_data(1, b"one datagram")
    assert gateway.rx_pending(1) == len(b"one datagram")


# --- pcap: the CP's own packets exactly as traced ---------------------------------------------------------------


def ip_packet(src: str, dst: str, payload: bytes, protocol: int = 17, ident: int = 7) -> bytes:
    """An IPv4 header (RFC 791) in front of `payload`, for the exporter's tests (not the stack's codec)."""
    header = bytearray(20)
    header[0], header[8], header[9] = 0x45, 64, protocol
    header[2:4] = (20 + len(payload)).to_bytes(2, "big")
    header[4:6] = ident.to_bytes(2, "big")
    header[12:16] = IPv4Address(src).packed
    header[16:20] = IPv4Address(dst).packed
    header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + payload


def udp_payload(sport: int, dport: int, data: bytes) -> bytes:
    return (
        sport.to_bytes(2, "big")
        + dport.to_bytes(2, "big")
        + (8 + len(data)).to_bytes(2, "big")
        + b"\0\0"
        + data
    )


def test_raw_packets_are_written_as_traced_and_nothing_is_made_up_for_their_actor() -> None:
    tracer = Tracer(keep=True, origin=0.0, clock=iter(x / 100 for x in range(1000)).__next__)
    first = ip_packet("198.51.100.2", "127.0.0.1", udp_payload(40000, 4443, b"ping"))
    answer = ip_packet("127.0.0.1", "198.51.100.2", udp_payload(4443, 40000, b"pong"), ident=8)
    tracer.emit("cp", "ota", "tcp", "TCP SYN (connect)", step="S404", kind="tcp.connect")  # descriptive only
    tracer.emit("cp", "net", "udp", "datagram", first, kind="udp.datagram")
    tracer.emit("cp", "pgw", "ip", "the PGW's view of the same packet", first, kind="udp.datagram")
    tracer.emit("net", "cp", "udp", "datagram", answer, kind="udp.datagram")
    tracer.emit("cp", "net", "udp", "the same datagram again (a retransmission)", first, kind="udp.datagram")
    tracer.emit("cp", "ota", "tcp", "channel data", b"payload", kind="tcp.data")  # no made-up TCP for the CP
    tracer.emit("ap", "ota", "tcp", "channel data", b"payload", kind="tcp.data")  # the AP still gets them
    tracer.emit("cp", "pgw", "ip", "bad header", first[:10] + b"\0\0" + first[12:], kind="ip.dropped")
    lost = ip_packet("127.0.0.1", "198.51.100.2", udp_payload(4443, 40000, b"lost"), ident=9)
    tracer.emit("pgw", "cp", "ip", "lost on the radio", lost, kind="ip.lost")  # never reached the CP
    exporter = PcapExporter(raw_actors={Actor.CP})
    for event in tracer.events:
        exporter.add(event)
    raw = [p.data for p in exporter.packets if p.data in (first, answer)]
    assert raw == [first, answer, first]  # the PGW's echo once, a repeat by the same stack kept
    assert lost not in [p.data for p in exporter.packets]
    made_up = [p.data for p in exporter.packets if p.data not in (first, answer)]
    assert made_up and all(
        IPv4Address(d[12:16]) == IPv4Address("192.0.2.3") or IPv4Address(d[16:20]) == IPv4Address("192.0.2.3")
        for d in made_up
    )
    assert not is_ipv4_packet(first[:10] + b"\0\0" + first[12:]) and is_ipv4_packet(first)


def test_export_finds_the_raw_actors_before_the_first_descriptive_event(tmp_path: Path) -> None:
    tracer = Tracer(keep=True, origin=0.0, clock=iter(x / 100 for x in range(1000)).__next__)
    packet = ip_packet("198.51.100.2", "127.0.0.1", udp_payload(40000, 53, b"q"))
    tracer.emit("cp", "ota", "tcp", "TCP SYN (connect)", kind="tcp.connect")
    tracer.emit("cp", "ota", "tcp", "channel data", b"early", kind="tcp.data")
    tracer.emit("cp", "net", "udp", "datagram", packet, kind="udp.datagram")
    path = tmp_path / "raw.pcap"
    assert export_pcap(tracer.events, path) == 1
    data = path.read_bytes()
    assert int.from_bytes(data[20:24], "little") == 101  # LINKTYPE_RAW: a record is the IPv4 packet itself
    assert data.endswith(packet)
