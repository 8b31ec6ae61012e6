"""pcap export at speed (trace/pcap.py, issue 21): the struct-built packets read by scapy, the independent decoder,
field by field, against what scapy itself computes for the same packet (lengths, checksums, header defaults), so a
wrong field is named, not only a differing byte string. The exporter of before (scapy building every packet) wrote
those fields; tests/test_trace_pcap.py also compares the whole file with its output."""

from __future__ import annotations

import random
from typing import Any

from bipsim.trace.pcap import PcapExporter
from bipsim.trace.recorder import Tracer

# what the exporter of before asked scapy for and otherwise left at scapy's defaults
IP_DEFAULTS = {"version": 4, "ihl": 5, "tos": 0, "id": 1, "flags": 0, "frag": 0, "ttl": 64}
TCP_DEFAULTS = {"dataofs": 5, "reserved": 0, "window": 8192, "urgptr": 0}


def exported() -> list[bytes]:
    """Packets of every shape the exporter makes: APDUs (GSMTAP over UDP), AT and CMUX lines, TCP data of odd and
    large sizes, connection open and close."""
    times = iter(x / 100 for x in range(10_000))
    tracer = Tracer(keep=True, origin=0.0, clock=times.__next__)
    rng = random.Random(21)
    tracer.emit("cp", "uicc", "apdu", "STATUS", b"\x80\xf2\x00\x0c\x00", kind="apdu.command")
    tracer.emit(
        "uicc", "cp", "apdu", "STATUS: 9000", b"\x90\x00", kind="apdu.response", fields={"sw": "9000"}
    )
    tracer.emit("cp", "ap", "at", "AT", b"AT%WEBOPCH=1\r", kind="at.command")
    tracer.emit("ap", "ota", "tcp", "connect", kind="tcp.connect")
    for size in (1, 2, 3, 237, 1460, 5000):
        tracer.emit("ota", "ap", "tcp", "data", rng.randbytes(size), kind="tcp.data")
        tracer.emit("ap", "cp", "cmux", "frame", rng.randbytes(size % 300 + 1), kind="cmux.data")
    tracer.emit("ap", "ota", "tcp", "close", kind="tcp.close")
    exporter = PcapExporter()
    for event in tracer.events:
        exporter.add(event)
    return [packet.data for packet in exporter.packets]


def fields_of(layer: Any) -> dict[str, Any]:
    return {name: layer.getfieldval(name) for name in (f.name for f in layer.fields_desc)}


def test_struct_packets_decode_field_by_field_as_scapy_computes_them() -> None:
    from scapy.layers.inet import IP, TCP, UDP

    packets = exported()
    assert len(packets) > 15
    kinds = set()
    for data in packets:
        ours = IP(data)
        # scapy's own computation: the same packet with lengths and checksums left for scapy to fill in
        again = ours.copy()
        del again[IP].len, again[IP].chksum
        transport = TCP if ours.haslayer(TCP) else UDP
        kinds.add(transport.__name__)
        if transport is UDP:
            del again[UDP].len, again[UDP].chksum
        else:
            del again[TCP].chksum
        theirs = IP(bytes(again))
        for layer in (IP, transport):
            assert fields_of(ours[layer]) == fields_of(theirs[layer]), (
                f"{layer.__name__} of {data[:40].hex()}"
            )
        assert {k: ours[IP].getfieldval(k) for k in IP_DEFAULTS} == IP_DEFAULTS
        assert ours[IP].len == len(data) and ours[IP].proto == (6 if transport is TCP else 17)
        if transport is TCP:
            assert {k: ours[TCP].getfieldval(k) for k in TCP_DEFAULTS} == TCP_DEFAULTS
        else:
            assert ours[UDP].len == len(data) - 20
    assert kinds == {"TCP", "UDP"}
