"""pcap export: tshark decodes GSMTAP SIM APDUs (with the CAT inside) and the synthesized TCP streams.

The synthetic session checks the packet layout; the embodiment tests export the trace of a real run of the three
processes (bipsim.scenarios.harness) and have tshark decode every frame of it. The exporter builds its packets with
struct; scapy is the independent decoder here, and the builder the bytes are compared with.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bipsim.scenarios.embodiments import embodiment_config
from bipsim.scenarios.harness import run_processes
from bipsim.trace.events import Actor, Layer, TraceEvent
from bipsim.trace.pcap import Packet, PcapExporter, export_pcap
from bipsim.trace.recorder import Tracer

# OPEN CHANNEL, written for this test from TS 102 223 section 6.6.27 / 8.x: command details (0x40, qualifier 0x03),
# device identities UICC->terminal, bearer description GPRS, buffer size 1500, TCP client port 4443, IPv4 127.0.0.1.
OPEN_CHANNEL = bytes.fromhex("D022810301400382028182350702030403041F02390205DC3C0302115B3E05217F000001")
# its TERMINAL RESPONSE: result OK, channel status (channel 1, link established), bearer description, buffer size
TERMINAL_RESPONSE = bytes.fromhex("81030140038202828183010038028100350702030403041F02390205DC")


def session_events() -> list[TraceEvent]:
    tracer = Tracer(keep=True, origin=0.0, clock=iter(x / 100 for x in range(1000)).__next__)
    fetch = bytes.fromhex("80120000") + bytes([len(OPEN_CHANNEL)])
    tracer.emit(
        "cp",
        "uicc",
        "apdu",
        "TERMINAL PROFILE",
        bytes.fromhex("8010000003FFFFFF"),
        kind="cat.terminal_profile",
    )
    tracer.emit(
        "uicc", "cp", "apdu", "91 24", bytes.fromhex("9124"), kind="apdu.response", fields={"sw": "9124"}
    )
    tracer.emit("cp", "uicc", "apdu", "FETCH", fetch, kind="cat.fetch")
    tracer.emit(
        "uicc",
        "cp",
        "apdu",
        "OPEN CHANNEL",
        OPEN_CHANNEL + b"\x90\x00",
        step="S401",
        kind="cat.proactive",
        fields={"command": "OPEN CHANNEL"},
    )
    tr = TERMINAL_RESPONSE
    tr_apdu = bytes.fromhex("80140000") + bytes([len(tr)]) + tr
    tracer.emit("cp", "uicc", "apdu", "TERMINAL RESPONSE", tr_apdu, kind="cat.terminal_response")
    tracer.emit("uicc", "cp", "apdu", "90 00", bytes.fromhex("9000"), kind="apdu.response")
    tracer.emit("cp", "ota", "tcp", "TCP SYN (connect)", step="S404", kind="tcp.connect")
    tracer.emit("cp", "ota", "tcp", "channel data", b"ping", kind="tcp.data")
    tracer.emit("ota", "cp", "tcp", "channel data", b"pong", kind="tcp.data")
    tracer.emit("cp", "ota", "tcp", "the words close and FIN", step="S414", kind="tcp.close")
    tracer.emit("ap", "cp", "at", "%NETPAR", b'\r\n%NETPAR: 1,"internet","",""\r\n', kind="at.info")
    tracer.emit(
        "ap", "cp", "cmux", "UIH DLC2", bytes.fromhex("F90BEF0341F9"), kind="cmux.data", fields={"dlci": 2}
    )
    return tracer.events


@pytest.mark.needs("tshark")
def test_tshark_decodes_every_frame(tmp_path: Path) -> None:
    path = tmp_path / "s.pcap"
    count = export_pcap(session_events(), path)
    assert count == 3 + 3 + 4 + 3 + 2  # 3 APDU exchanges, handshake, 2 segments + acks, FIN/FIN/ACK, AT, CMUX
    out = subprocess.run(["tshark", "-r", str(path), "-V"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Malformed" not in text and "Expert Info (Error" not in text
    assert "GSM SIM" in text or "GSM SIM 11.11" in text
    assert "OPEN CHANNEL" in text.upper()
    summary = subprocess.run(["tshark", "-r", str(path)], capture_output=True, text=True, timeout=120).stdout
    assert summary.count("TCP") >= 8


def decoded(packet: Packet) -> Any:
    """scapy's reading of one exported packet (LINKTYPE_RAW: the bytes start at the IPv4 header)."""
    from scapy.layers.inet import IP

    return IP(packet.data)


def scapy_build(packet: Any) -> bytes:
    """The packet scapy builds from `packet`'s addresses, ports, flags, numbers and payload alone: every other
    header field (lengths, checksums, identification, TTL, window, data offset) is scapy's default or its own
    computation."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.packet import Raw

    built = IP(src=packet["IP"].src, dst=packet["IP"].dst)
    if packet.haslayer(TCP):
        tcp = packet["TCP"]
        built = built / TCP(sport=tcp.sport, dport=tcp.dport, flags=tcp.flags, seq=tcp.seq, ack=tcp.ack)
    else:
        udp = packet["UDP"]
        built = built / UDP(sport=udp.sport, dport=udp.dport)
    if packet.haslayer(Raw):
        built = built / Raw(packet["Raw"].load)
    return bytes(built)


# sha256 of export_pcap(session_events()) as written when scapy built every packet (before the struct builder)
SCAPY_BUILT_SESSION = "112dc689b7628e2292e7efe153b6f1e046b5324a0d3ff37f498730e1b4864659"


def test_pcap_bytes_are_what_scapy_builds(tmp_path: Path) -> None:
    path = tmp_path / "s.pcap"
    export_pcap(session_events(), path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SCAPY_BUILT_SESSION
    exporter = PcapExporter()
    for event in session_events():
        exporter.add(event)
    for packet in exporter.packets:
        assert packet.data == scapy_build(decoded(packet))


def test_checksums_of_odd_lengths_and_large_payloads_match_scapy() -> None:
    tracer = Tracer(keep=True, origin=0.0, clock=iter(x / 100 for x in range(1000)).__next__)
    for size in (0, 1, 2, 3, 237, 1500, 70_000):  # 70 000 bytes: more than one IPv4 packet holds
        payload = bytes((i * 7 + size) & 0xFF for i in range(size))
        tracer.emit("cp", "ota", "tcp", "data", payload or None, kind="tcp.data")
        tracer.emit("ap", "cp", "cmux", "frame", payload + b"\xff", kind="cmux.data")
    tracer.emit("cp", "ota", "tcp", "data", b"\xff\xff" * 40, kind="tcp.data")  # sums to a multiple of 0xFFFF
    exporter = PcapExporter()
    for event in tracer.events:
        exporter.add(event)
    assert max(len(p.data) for p in exporter.packets) <= 0xFFFF
    for packet in exporter.packets:
        assert packet.data == scapy_build(decoded(packet))
    carried = b"".join(
        bytes(decoded(p)["Raw"].load)
        for p in exporter.packets
        if decoded(p).haslayer("TCP") and len(p.data) > 40
    )
    assert len(carried) == sum(len(e.data) for e in tracer.events if e.layer is Layer.TCP)


def test_export_without_tshark_pairs_apdus(tmp_path: Path) -> None:
    exporter = PcapExporter()
    events = session_events()
    for event in events[:6]:
        exporter.add(event)
    assert len(exporter.packets) == 3
    payload = bytes(decoded(exporter.packets[1])["Raw"].load)
    assert payload[:3] == bytes([2, 4, 4])  # GSMTAP v2, 4 words, type SIM
    assert payload[16:] == bytes.fromhex("8012000024") + OPEN_CHANNEL + b"\x90\x00"


def test_tcp_close_is_read_from_the_kind_not_the_summary() -> None:
    tracer = Tracer(keep=True, origin=0.0, clock=iter(x / 100 for x in range(1000)).__next__)
    tracer.emit("cp", "ota", "tcp", "connection request", kind="tcp.connect")
    tracer.emit("cp", "ota", "tcp", "finished with the channel", kind="tcp.data", data=b"x")
    tracer.emit("cp", "ota", "tcp", "goodbye", kind="tcp.close")  # no close word in the summary
    tracer.emit("ota", "cp", "tcp", "refused: close", kind="tcp.error")  # a close word, but no close
    exporter = PcapExporter()
    for event in tracer.events:
        exporter.add(event)
    flags = [str(decoded(packet)["TCP"].flags) for packet in exporter.packets]
    assert flags == ["S", "SA", "A", "PA", "A", "FA", "FA", "A"]
    assert exporter.skipped == 1


def test_apdus_pair_in_order_whatever_their_summaries_say() -> None:
    tracer = Tracer(keep=True, origin=0.0, clock=iter(x / 100 for x in range(1000)).__next__)
    tracer.emit("cp", "uicc", "apdu", "SELECT EF_IMSI", bytes.fromhex("00A4000C026F07"), kind="apdu.command")
    tracer.emit("uicc", "cp", "apdu", "READ BINARY: 9000", bytes.fromhex("9000"), kind="apdu.response")
    exporter = PcapExporter()
    for event in tracer.events:
        exporter.add(event)
    assert bytes(decoded(exporter.packets[0])["Raw"].load)[16:] == bytes.fromhex("00A4000C026F079000")


@pytest.fixture(scope="module", params=[1, 2], ids=["embodiment1", "embodiment2"])
def real_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[TraceEvent]:
    number: int = request.param
    config = embodiment_config(number)
    run = run_processes(config, tmp_path_factory.mktemp(f"e{number}"))
    assert run.cp_code == 0 and run.completed, run.explain()
    return run.events


# the proactive commands of a BIP session, as Wireshark's ETSI CAT dissector names their command type
BIP_COMMANDS = {0x40: "OPEN CHANNEL", 0x41: "CLOSE CHANNEL", 0x42: "RECEIVE DATA", 0x43: "SEND DATA"}


@pytest.mark.needs("tshark")
def test_tshark_decodes_the_pcap_of_a_real_embodiment_run(real_run: list[TraceEvent], tmp_path: Path) -> None:
    path = tmp_path / "run.pcap"
    count = export_pcap(real_run, path)
    verbose = subprocess.run(["tshark", "-r", str(path), "-V"], capture_output=True, text=True, timeout=120)
    assert verbose.returncode == 0, verbose.stderr
    text = verbose.stdout
    assert "Malformed" not in text and "Expert Info (Error" not in text
    for number, name in BIP_COMMANDS.items():
        assert f"Command Type: {name} (0x{number:02x})" in text, f"the CAT dissector did not name {name}"

    fields = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.protocols"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    protocols = fields.stdout.splitlines()
    assert len(protocols) == count  # every exported packet is a frame tshark read
    apdu_exchanges = sum(1 for e in real_run if e.layer is Layer.APDU and e.src is Actor.UICC and e.hex) - 1
    sim = [p for p in protocols if ":gsmtap" in p]
    assert len(sim) == apdu_exchanges  # every exchange but the ATR (a response without a command) is a frame
    assert all(p.endswith((":gsm_sim", ":gsm_sim:etsi_cat")) for p in sim), (
        "a GSMTAP frame not decoded as SIM"
    )
    assert sum(1 for p in sim if p.endswith(":etsi_cat")) >= 4 * 2  # FETCHes and TRs of the BIP session
    tcp = [p for p in protocols if ":tcp" in p]
    assert tcp and any(p.endswith(":tls") for p in tcp)  # the card's PSK-TLS records inside the TCP stream


def test_every_actor_has_an_address_in_the_capture() -> None:
    tracer = Tracer(keep=True, origin=0.0, clock=iter(x / 100 for x in range(1000)).__next__)
    for actor in Actor:
        if actor not in (Actor.UICC, Actor.CP):
            tracer.emit("cp", actor, "tcp", "data", b"x", kind="tcp.data")
            tracer.emit(actor, "cp", "at", "line", b"OK\r\n", kind="at.final")
    exporter = PcapExporter()
    for event in tracer.events:
        exporter.add(event)
    assert len({decoded(packet)["IP"].dst for packet in exporter.packets}) == len(Actor) - 1
