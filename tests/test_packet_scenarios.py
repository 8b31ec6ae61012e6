"""Embodiment 1 on the packet data plane (docs/protocols.md, "The packet data plane"): the BIP gateway's UDP
channels, UICC server mode and DNS server request (ETSI TS 102 223 6.4.27, 8.56, 8.59, 8.104), the pcap of the CP's
own packets (read back by scapy and tshark), the CP's bearer over its own stack through a radio link and the packet
gateway (nat), a deactivated context reaching the card as Channel Status "link dropped", and the packet scenarios
(radio-lossy, radio-gprs, pdp-drop, radio-outage, bip-udp, bip-server, bip-dns) with their tshark checks.
"""

from __future__ import annotations

import subprocess
from functools import partial
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from bipsim.cp.bip_gateway import (
    DNS_REQUESTED,
    TAG_DNS_SERVER_ADDRESS,
    TCP_LISTEN,
    BearerOpen,
    BipGateway,
)
from bipsim.net.ipv4 import Ipv4Packet
from bipsim.net.tcp_segment import TcpSegment
from bipsim.scenarios.campaigns import applet_download
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


# --- the own-stack bearer on the plane (in one process: the AP's proxy over memory, the OTA side a host socket) ----


async def echo(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)


async def plane_rig(nursery: trio.Nursery, radio: str = "ideal", seed: int = 0) -> tuple[Any, Any, Tracer]:
    """The AP's proxy (memory DLC 2), the CP's network, its packet plane running, and the own-stack bearer on it."""
    from bipsim.ap.network import ApNetwork
    from bipsim.cp.bearer_own_stack import OwnStackBearer, PacketPlane, PlaneOptions
    from tests.test_gateway import ProxyRig

    tracer = Tracer(keep=True)
    rig = ProxyRig(ApNetwork())
    await rig.start(nursery)
    plane = PacketPlane(rig.cellular, PlaneOptions(radio=radio, seed=seed), tracer=tracer)
    await nursery.start(plane.run)
    bearer = OwnStackBearer(rig.link, rig.cellular, tracer=tracer, plane=plane, timeout=20)
    return rig, bearer, tracer


async def test_own_stack_bearer_carries_a_channel_through_its_stack_and_the_gateway() -> None:
    from tests.test_gateway import request

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), echo, 0)
        port = listeners[0].socket.getsockname()[1]
        rig, bearer, tracer = await plane_rig(nursery)
        stream = await bearer.connect(1, request(bearer=2, port=port))
        assert rig.cellular.contexts[1].address == "198.51.100.2"
        await stream.send_all(b"hello over the radio")
        got = b""
        while len(got) < 20:
            got += await stream.receive_some(100)
        assert got == b"hello over the radio"
        packets = [e for e in tracer.events if e.kind == "tcp.segment" or e.kind == "tcp.syn"]
        assert packets and all(is_ipv4_packet(e.data) for e in packets)
        sources = {IPv4Address(e.data[12:16]) for e in packets if e.src is Actor.CP}
        assert sources == {IPv4Address("198.51.100.2")}  # the context's address, not the host's
        await bearer.disconnect(1, stream)
        assert not rig.cellular.contexts and not bearer.plane.links  # the context and its stack are gone
        nursery.cancel_scope.cancel()


async def test_a_deactivated_context_breaks_its_channel_stream_as_link_dropped() -> None:
    from tests.test_gateway import request

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), echo, 0)
        port = listeners[0].socket.getsockname()[1]
        rig, bearer, tracer = await plane_rig(nursery)
        stream = await bearer.connect(1, request(bearer=2, port=port))
        assert rig.cellular.network_deactivate(1, "network test")
        with pytest.raises(trio.BrokenResourceError, match="link dropped"):
            await stream.receive_some(10)
        ended = [e for e in tracer.events if e.field("event") == "pdp_deactivated"]
        assert [e.field("reason") for e in ended] == ["network test"]
        await bearer.disconnect(1, stream)  # the card's CLOSE CHANNEL after the drop: no error, nothing left
        assert not rig.cellular.contexts
        again = await bearer.connect(1, request(bearer=2, port=port))  # a new OPEN CHANNEL works again
        await again.send_all(b"x")
        assert await again.receive_some(1) == b"x"
        nursery.cancel_scope.cancel()


async def test_refused_connect_is_remote_device_not_reachable_and_frees_the_context() -> None:
    from bipsim.cp.bearer import LinkError
    from tests.test_gateway import request

    refuser = trio.socket.socket()
    await refuser.bind(("127.0.0.1", 0))  # bound, never listening: connects to it are refused
    closed = refuser.getsockname()[1]
    async with trio.open_nursery() as nursery:
        rig, bearer, _ = await plane_rig(nursery)
        with pytest.raises(LinkError) as caught:
            await bearer.connect(1, request(bearer=2, port=closed))
        assert (caught.value.general, caught.value.additional) == (0x3A, b"\x07")
        assert not rig.cellular.contexts and not bearer.plane.links
        nursery.cancel_scope.cancel()
    refuser.close()


# --- the packet scenarios, each a run of the three processes, with tshark on the CP's packets ----------------------


# the shortest outage of radio-outage here (its default, 10 s, is the command line's): the outage lasts until one
# data segment toward the CP was lost twice (sent, then resent at the gateway's first timeout: a trace event the
# scenario waits for), so this only keeps it from ending sooner; the radio is back before the backed-off resend
OUTAGE = 1.0
GPRS_LOAD = 600  # bytes of load file in radio-gprs here (the built-in example's is 1500)


def tshark_frames(pcap: Path, display_filter: str) -> list[str]:
    """The frames of `pcap` that tshark's `display_filter` selects, one summary line each."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", display_filter], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line.strip()]


def run_scenario(name: str, tmp_path: Path, **parameters: Any) -> tuple[Any, Path]:
    """Runs scenario `name` in `tmp_path` (with the scenario's own keyword `parameters`) and exports its pcap;
    returns (result, pcap). These tests are each packet scenario's only run in the suite (test_scenarios.py leaves
    them here), so the generic checks of test_scenarios.py's test_scenario_passes are made here too."""
    from bipsim.scenarios.base import ScenarioOptions
    from bipsim.scenarios.registry import SCENARIOS

    result = SCENARIOS[name](ScenarioOptions(tmp_path / "run"), **parameters)
    assert result.name == name
    assert result.run.cp_code == 0
    assert any(e.layer.value == "apdu" for e in result.run.events)
    assert (result.run.directory / "cp.jsonl").exists() and (result.run.directory / "ap.jsonl").exists()
    pcap = tmp_path / f"{name}.pcap"
    export_pcap(result.run.events, pcap)
    return result, pcap


def cp_packets(result: Any) -> list[Any]:
    """The IPv4 packets the CP's own stack traced (layer ip/tcp/udp, a whole packet in the bytes)."""
    return [e for e in result.run.events if e.layer.value in ("ip", "tcp", "udp") and is_ipv4_packet(e.data)]


@pytest.fixture(scope="module")
def embodiment1_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """One run of embodiment 1 on the ideal radio (and its pcap), which two tests below read."""
    return run_scenario("embodiment1", tmp_path_factory.mktemp("embodiment1"))


@pytest.mark.needs("tshark")
def test_embodiment1_on_an_ideal_radio_has_clean_tcp_in_the_pcap(embodiment1_run: tuple[Any, Path]) -> None:
    result, pcap = embodiment1_run
    assert any(e.kind == "tcp.syn" for e in cp_packets(result))
    tcp = tshark_frames(pcap, "tcp")
    assert tcp and any(
        "198.51.100.2" in line for line in tcp
    )  # the context's address, in the stack's packets
    assert not tshark_frames(pcap, "_ws.malformed")
    assert not tshark_frames(pcap, "tcp.analysis.ack_lost_segment || tcp.analysis.out_of_order")


@pytest.mark.needs("tshark")
def test_radio_lossy_completes_with_retransmissions_in_the_pcap(tmp_path: Path) -> None:
    result, pcap = run_scenario("radio-lossy", tmp_path)
    assert result.run.completed
    assert any(e.kind == "ip.lost" for e in result.run.events)
    retransmissions = tshark_frames(pcap, "tcp.analysis.retransmission")
    assert retransmissions
    # the summary counts the gateway's retransmissions the CP received too (its stack traces only its own)
    (note,) = result.notes
    again = int(note.split(", ")[-1].split()[0])
    assert note.endswith("received again by it") and again > 0
    assert not tshark_frames(pcap, "_ws.malformed")


def test_radio_gprs_measures_open_channel_to_first_byte(tmp_path: Path) -> None:
    # the example's SPN update, a 600-byte load (not 1500) and the install, without its closing GET STATUS: the
    # first byte and the profile are the subject, and each admin exchange more is only another GPRS round trip
    result, _ = run_scenario("radio-gprs", tmp_path, campaign=applet_download(GPRS_LOAD))
    assert result.run.completed
    (card,) = result.run.results.values()
    assert [script["kind"] for script in card["scripts"]] == ["rfm", "ram-load", "ram-install"]
    profile = [e for e in result.run.events if e.field("event") == "bearer_up"]
    assert profile and str(profile[0].field("radio")).startswith("gprs,delay=300")
    assert any("first byte" in note for note in result.notes)


def test_pdp_drop_tells_the_card_and_the_session_resumes_on_a_new_context(tmp_path: Path) -> None:
    result, _ = run_scenario("pdp-drop", tmp_path)
    events = result.run.events
    dropped = [e for e in events if e.field("event") == "pdp_deactivated"]
    status = [e for e in events if e.kind == "cat.envelope" and e.field("link") == "dropped"]
    assert dropped and status and status[0].t > dropped[0].t
    after = [e for e in events if e.field("event") == "pdp_active" and e.t > dropped[0].t]
    assert after  # the new OPEN CHANNEL activated a context again
    broken = [e for e in events if e.kind == "tcp.closed" and "link dropped" in str(e.field("reason") or "")]
    assert broken  # the channel's reader says why its stream broke
    assert result.run.completed


@pytest.mark.needs("tshark")
def test_radio_outage_recovers_and_the_pcap_stays_well_formed(tmp_path: Path) -> None:
    result, pcap = run_scenario("radio-outage", tmp_path, outage=OUTAGE)
    assert result.run.completed
    profiles = [e.field("loss") for e in result.run.events if e.field("event") == "link_profile"]
    assert 1.0 in profiles and profiles[-1] == 0.0  # the outage came and went
    # TCP backed off in the outage and recovered: one data segment toward the CP was lost at least twice (its
    # retransmission timed out too, RFC 6298 5.4-5.5), and the CP then received that segment, after its last loss
    lost: dict[int, list[float]] = {}
    received: dict[int, list[float]] = {}
    for event in result.run.events:
        if event.dst is not Actor.CP or not (event.kind == "ip.lost" or event.kind.startswith("tcp.")):
            continue
        if not is_ipv4_packet(event.data):
            continue
        packet = Ipv4Packet.decode(event.data)
        segment = TcpSegment.decode(packet.payload, packet.source, packet.destination)
        if segment.payload:
            (lost if event.kind == "ip.lost" else received).setdefault(segment.seq, []).append(event.t)
    again = [seq for seq, times in lost.items() if len(times) >= 2 and received.get(seq)]
    assert again, (lost, sorted(received))
    assert all(max(received[seq]) > max(lost[seq]) for seq in again)
    assert not tshark_frames(pcap, "_ws.malformed")


@pytest.mark.needs("tshark")
def test_bip_udp_each_datagram_is_one_receive_data_unit(tmp_path: Path) -> None:
    result, pcap = run_scenario("bip-udp", tmp_path)
    assert "one RECEIVE DATA unit each" in result.notes[0]
    assert len(tshark_frames(pcap, "udp && ip.addr == 198.51.100.2")) >= 6
    assert not tshark_frames(pcap, "_ws.malformed")


def test_bip_server_echoes_through_the_forwarded_port(tmp_path: Path) -> None:
    result, _ = run_scenario("bip-server", tmp_path)
    listening = [e for e in result.run.events if e.field("event") == "uicc_server_listening"]
    assert (
        listening and listening[0].field("address") == "198.51.100.2" and listening[0].field("port") == 3516
    )
    syns = [e for e in cp_packets(result) if e.kind == "tcp.syn" and e.dst is Actor.CP]
    assert syns  # the client's SYN came over the radio to the CP's address


@pytest.mark.needs("tshark")
def test_bip_dns_names_the_dns_server_and_the_gateway_answers(tmp_path: Path) -> None:
    result, pcap = run_scenario("bip-dns", tmp_path)
    assert any(e.kind == "dns.answer" for e in result.run.events)
    assert tshark_frames(pcap, "dns.flags.response == 1 && dns.a == 127.0.0.1")


@pytest.mark.needs("unshare", "ip", "nsenter")
async def test_tun_mode_the_kernel_tcp_in_the_namespace_is_the_far_end_of_the_channel() -> None:
    """--network tun: the CP's SYN goes through the TUN to the namespace's kernel, which accepts it at
    203.0.113.10 (a listener made inside the namespace) and the plane carries the bytes to a host server."""
    from bipsim.ap.network import ApNetwork
    from bipsim.cp.bearer_own_stack import OwnStackBearer, PacketPlane, PlaneOptions
    from tests.test_gateway import ProxyRig, request
    from tests.test_pgw_tun import require_tun

    await require_tun()  # where namespaces are refused: skipped with the reason (failed under CI=true)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), echo, 0)
        port = listeners[0].socket.getsockname()[1]
        tracer = Tracer(keep=True)
        rig = ProxyRig(ApNetwork())
        await rig.start(nursery)
        options = PlaneOptions(network="tun", tun_relays=((4443, "127.0.0.1", port),))
        plane = PacketPlane(rig.cellular, options, tracer=tracer)
        await nursery.start(plane.run)
        bearer = OwnStackBearer(rig.link, rig.cellular, tracer=tracer, plane=plane, timeout=20)
        stream = await bearer.connect(1, request(bearer=2, destination="203.0.113.10", port=4443))
        payload = bytes(range(256)) * 64  # 16 KiB: several segments each way
        await stream.send_all(payload)
        got = b""
        while len(got) < len(payload):
            got += await stream.receive_some(65536)
        assert got == payload
        syn_ack = [e for e in tracer.events if e.kind == "tcp.syn" and e.dst is Actor.CP]
        assert syn_ack and IPv4Address(syn_ack[0].data[12:16]) == IPv4Address(
            "203.0.113.10"
        )  # the kernel's answer
        await bearer.disconnect(1, stream)
        nursery.cancel_scope.cancel()


@pytest.mark.needs("unshare", "ip", "nsenter", "tshark")
def test_embodiment1_with_network_tun_runs_against_the_kernels_tcp(tmp_path: Path) -> None:
    from bipsim.scenarios.base import ScenarioOptions
    from bipsim.scenarios.registry import SCENARIOS
    from tests.test_pgw_tun import require_tun

    trio.run(require_tun)  # where namespaces are refused: skipped with the reason (failed under CI=true)
    result = SCENARIOS["embodiment1"](ScenarioOptions(tmp_path / "run", network="tun"))
    assert any(e.field("event") == "tun_relay" for e in result.run.events)
    pcap = tmp_path / "tun.pcap"
    export_pcap(result.run.events, pcap)
    # the SYN/ACK is the namespace kernel's (Linux offers a window scale of its own), from 203.0.113.10
    assert tshark_frames(pcap, "ip.src == 203.0.113.10 && tcp.flags.syn == 1 && tcp.flags.ack == 1")
    assert not tshark_frames(
        pcap, "_ws.malformed || tcp.analysis.ack_lost_segment || tcp.analysis.out_of_order"
    )


# --- the AP's Wi-Fi link model (bipsim ap --wlan) ---------------------------------------------------------------


async def test_wlan_link_delivers_every_byte_in_order_through_loss(autojump_clock: Any) -> None:
    """The relay's byte stream through the Wi-Fi model at 30 % loss: nothing missing, nothing reordered, both
    ways and the EOF; the losses show as wlan_resend events (the model resends, as the TCP under it would)."""
    from bipsim.ap.wlan import WlanLink
    from bipsim.net.radio import parse_link_spec

    tracer = Tracer(keep=True)
    link = WlanLink(parse_link_spec("lte,loss=0.3"), seed=1, tracer=tracer)
    relay_side, server_side = trio.testing.memory_stream_pair()
    payload = bytes(range(256)) * 80  # 20 480 bytes: 15 segments
    async with trio.open_nursery() as nursery:
        stream = await nursery.start(link.carry, relay_side)

        async def server() -> None:
            got = b""
            while len(got) < len(payload):
                got += await server_side.receive_some(65536)
            assert got == payload
            await server_side.send_all(got[::-1])
            await server_side.send_eof()

        nursery.start_soon(server)
        await stream.send_all(payload)
        back = b""
        while data := await stream.receive_some(4096):
            back += data
        assert back == payload[::-1]
        await stream.aclose()
    resends = [e for e in tracer.events if e.field("event") == "wlan_resend"]
    assert resends and {e.field("direction") for e in resends} == {"up", "down"}


def test_network_tun_where_it_cannot_run_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """bipsim cp --network tun on a machine without unshare (a PATH without it): exit 1, one line saying why."""
    import os
    import pty
    import sys

    master, slave = pty.openpty()
    try:
        env = dict(os.environ, PATH=str(tmp_path))  # an empty folder: no unshare, no ip
        done = subprocess.run(
            [sys.executable, "-m", "bipsim", "cp", "--port", os.ttyname(slave), "--network", "tun"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        os.close(master)
        os.close(slave)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "bipsim: error: --network tun needs the unshare program (util-linux)"
    ]


async def test_card_control_lists_deactivates_and_reshapes_the_plane() -> None:
    """The card-control lines of the packet plane: contexts, deactivate CID, radio SPEC; bad input is an error
    line, never an exception."""
    from bipsim.cp.bearer_own_stack import PacketPlane
    from bipsim.cp.modem import card_control_answer
    from bipsim.cp.network import CellularNetwork

    network = CellularNetwork()
    plane = PacketPlane(network)
    network.activate("internet")
    assert card_control_answer("contexts", [], plane) == "ok 1=198.51.100.2"
    assert card_control_answer("radio gprs,loss=1", [], plane).startswith("ok radio gprs,delay=300")
    assert plane.profile.loss == 1.0
    assert card_control_answer("radio nosuch", [], plane).startswith("error unknown link profile")
    assert card_control_answer("deactivate 1", [], plane) == "ok deactivate 1"
    assert card_control_answer("deactivate 1", [], plane) == "error no active context 1"
    assert card_control_answer("contexts", [], plane) == "ok "
    assert card_control_answer("deactivate x", [], plane).startswith("error use:")
    assert card_control_answer("contexts", []).startswith("error use:")  # no plane: not a command


async def test_server_mode_forwards_a_host_port_until_its_context_goes() -> None:
    from bipsim.uicc.cat import OpenChannel

    async with trio.open_nursery() as nursery:
        rig, bearer, tracer = await plane_rig(nursery)
        request = OpenChannel(
            bearer_type=0, buffer_size=1024, protocol=TransportProtocol.TCP_SERVER, port=3516
        )
        accepted: list[trio.abc.Stream] = []
        done = trio.Event()

        async def serve() -> None:
            accepted.append(await bearer.connect(1, request))
            done.set()

        nursery.start_soon(serve)
        with trio.fail_after(10):  # the bearer's readiness, polled with a deadline
            while not (ready := [e for e in tracer.events if e.field("event") == "uicc_server_listening"]):
                await trio.sleep(0.01)
        host_port = int(ready[0].field("host_port"))
        client = await trio.open_tcp_stream("127.0.0.1", host_port)
        await client.send_all(b"hello card")
        await done.wait()
        got = b""
        while len(got) < 10:
            got += await accepted[0].receive_some(100)
        assert got == b"hello card"
        await client.aclose()
        await bearer.disconnect(1, accepted[0])
        assert not rig.cellular.contexts
        with pytest.raises(OSError):  # the forward went with the context
            await trio.open_tcp_stream("127.0.0.1", host_port)
        nursery.cancel_scope.cancel()


def test_embodiment1_release_is_orderly_not_a_dropped_link(embodiment1_run: tuple[Any, Path]) -> None:
    # the bearer's own release of its context after CLOSE CHANNEL is not a fault: the stack traces "link released"
    # without the error flag (only AT+CGACT=0, a detach or the network drop a link)
    result, _ = embodiment1_run
    assert result.run.completed
    ends = [e for e in result.run.events if e.kind == "ip.dropped" and "link" in e.summary]
    assert ends and all("link released: channel" in e.summary and not e.error for e in ends)
    assert not [e for e in result.run.events if e.error and e.layer.value in ("ip", "tcp", "udp")]


async def test_at_cgact_0_during_a_bip_download_reaches_the_card_as_link_dropped() -> None:
    """The TE's AT+CGACT=0,<cid> (TS 27.007 10.1.10) on the modem's AT side while the card downloads over the
    own-stack bearer: the channel's stream breaks, the card gets the Channel Status event "link dropped" (TS 102 223
    7.5.11) and its session ends with that failure; the stack's end is an error (not orderly)."""
    from bipsim.cp.bip_service import BipService
    from bipsim.cp.card_driver import CardDriver
    from bipsim.uicc.bip_engine import BipConfig, BipEngine
    from bipsim.uicc.card import SimCard
    from bipsim.uicc.profile import load_profile
    from bipsim.uicc.sim_transport import SimulatedCard
    from bipsim.uicc.test_clients import RequestResponseClient
    from tests.modem_harness import modem

    part_sent = trio.Event()

    async def half_answer(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(bytes(1000))  # a fifth of what the card expects; the rest never comes
        part_sent.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), half_answer, 0)
        port = listeners[0].socket.getsockname()[1]
        rig, bearer, tracer = await plane_rig(nursery)
        client = RequestResponseClient(b"GET /", 5000)
        engine = BipEngine(BipConfig(port=port, bearer_type=2), client)
        card = SimCard(load_profile(), toolkit=engine)
        service = BipService(CardDriver(SimulatedCard(card), tracer=tracer), bearer, tracer=tracer)
        with trio.fail_after(30):
            await nursery.start(service.run)
            await part_sent.wait()
            (cid,) = rig.cellular.contexts
            async with modem(rig.cellular) as (m,):
                assert await m.dte.at(f"AT+CGACT=0,{cid}") == ["OK"]
            await service.session_finished.wait()
        nursery.cancel_scope.cancel()
    ended = [e for e in tracer.events if e.field("event") == "pdp_deactivated"]
    status = [e for e in tracer.events if e.kind == "cat.envelope" and e.field("link") == "dropped"]
    assert ended and status and status[0].t >= ended[0].t
    # the card read what the terminal held, then its session ended on the drop (the engine is ready for the next)
    assert engine.failures == [("link dropped", GeneralResult.BIP_ERROR, b"\x05")]
    assert len(client.received) == 1000 and client.lost
    drops = [e for e in tracer.events if e.kind == "ip.dropped" and "link dropped" in e.summary]
    assert drops and drops[0].error
