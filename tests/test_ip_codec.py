"""The IPv4, ICMP and UDP codecs of net/ (RFC 791, 792, 768) against scapy, the independent encoder and decoder:
every packet we build parses in scapy with checksums scapy computes the same, scapy's packets decode in ours, and
arbitrary bytes give PacketError and nothing else (hypothesis). Fragment reassembly: RFC 815 holes, the bounds and
the overlap rule of net/ipv4.py."""

from __future__ import annotations

import random
import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP as ScapyICMP
from scapy.layers.inet import IP, UDP
from scapy.layers.inet import fragment as scapy_fragment
from scapy.packet import Raw, raw

from bipsim.net.errors import PacketError
from bipsim.net.icmp import (
    IcmpMessage,
    IcmpType,
    TimeExceeded,
    Unreachable,
    destination_unreachable,
    echo_reply,
    echo_request,
    may_answer_with_error,
    time_exceeded,
)
from bipsim.net.ipv4 import ICMP, TCP, Ipv4Packet, Reassembler, ReassemblyError, fragment
from bipsim.net.ipv4 import UDP as UDP_PROTO
from bipsim.net.udp import UdpDatagram

A = IPv4Address("198.51.100.2")
B = IPv4Address("203.0.113.10")


def _scapy_rebuilt(packet: IP, *, transport: bool = True) -> bytes:
    """The packet as scapy builds it with every checksum (the IP header's only, when not `transport`) computed
    by scapy itself."""
    copy = packet.copy()
    del copy.chksum
    for layer in (UDP, ScapyICMP):
        if transport and layer in copy:
            del copy[layer].chksum
    return raw(copy)


# ------------------------------------------------------------------------------------------------------- IPv4


@pytest.mark.parametrize(
    "packet",
    [
        Ipv4Packet(A, B, UDP_PROTO, b"x" * 10, identification=7),
        Ipv4Packet(A, B, TCP, b"", ttl=1, tos=0xB8, dont_fragment=False),
        Ipv4Packet(B, A, 99, bytes(range(256)), identification=0xFFFF, ttl=255),
        Ipv4Packet(
            A, B, UDP_PROTO, b"y" * 16, dont_fragment=False, more_fragments=True, fragment_offset=1480
        ),
    ],
)
def test_every_packet_we_build_parses_in_scapy(packet: Ipv4Packet) -> None:
    data = packet.encode()
    parsed = IP(data)
    assert parsed.version == 4 and parsed.ihl == 5 and parsed.len == len(data)
    assert parsed.src == str(packet.source) and parsed.dst == str(packet.destination)
    assert parsed.proto == packet.protocol and parsed.ttl == packet.ttl and parsed.tos == packet.tos
    assert parsed.id == packet.identification
    assert parsed.frag * 8 == packet.fragment_offset
    assert ("DF" in parsed.flags) == packet.dont_fragment and ("MF" in parsed.flags) == packet.more_fragments
    assert _scapy_rebuilt(parsed, transport=False) == data, "scapy computes the same header checksum"
    assert Ipv4Packet.decode(data) == packet


def test_scapy_packets_decode_in_ours_with_options_skipped_and_padding_ignored() -> None:
    built = IP(
        src=str(A), dst=str(B), ttl=3, id=4242, tos=4, flags="MF", frag=10, options=[b"\x94\x04\x00\x00"]
    )
    data = raw(built / Raw(b"payload!"))
    packet = Ipv4Packet.decode(data + b"\x00" * 6)  # an Ethernet-style pad after the total length
    assert packet.payload == b"payload!"
    assert (packet.ttl, packet.identification, packet.tos) == (3, 4242, 4)
    assert packet.more_fragments and packet.fragment_offset == 80 and not packet.dont_fragment
    assert (packet.source, packet.destination) == (A, B)


def _corrupt(data: bytes, offset: int, value: int, *, fix_checksum: bool = True) -> bytes:
    out = bytearray(data)
    out[offset] = value
    if fix_checksum:
        header_length = (out[0] & 0x0F) * 4 if out[0] >> 4 == 4 and (out[0] & 0x0F) >= 5 else 20
        struct.pack_into("!H", out, 10, 0)
        from bipsim.net.checksum import internet_checksum

        struct.pack_into("!H", out, 10, internet_checksum(bytes(out[:header_length])))
    return bytes(out)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:19], "truncated"),
        (lambda d: _corrupt(d, 0, 0x65), "version 6"),
        (lambda d: _corrupt(d, 0, 0x44), "header length 16"),
        (lambda d: _corrupt(d, 3, 10), "total length 10"),
        (lambda d: _corrupt(d, 3, 200), "truncated"),
        (lambda d: _corrupt(d, 8, 1, fix_checksum=False), "checksum"),
        (lambda d: _corrupt(d, 6, 0x80), "reserved flag"),
        (lambda d: _corrupt(d, 6, 0x60), "don't-fragment"),
    ],
)
def test_bad_headers_are_packet_errors(mutate: object, message: str) -> None:
    data = Ipv4Packet(A, B, UDP_PROTO, b"z" * 12).encode()
    with pytest.raises(PacketError, match=message):
        Ipv4Packet.decode(mutate(data))  # type: ignore[operator]


def test_a_fragment_reaching_past_64k_is_refused() -> None:
    data = raw(IP(src=str(A), dst=str(B), flags=0, frag=8190) / Raw(b"x" * 64))
    with pytest.raises(PacketError, match="65535"):
        Ipv4Packet.decode(data)


# -------------------------------------------------------------------------------------------- fragmentation


def test_our_fragments_parse_in_scapy_and_scapy_reassembles_them() -> None:
    datagram = UdpDatagram(5000, 53, bytes(random.Random(1).randbytes(3000))).encode(A, B)
    packet = Ipv4Packet(A, B, UDP_PROTO, datagram, identification=99, dont_fragment=False)
    pieces = fragment(packet, 576)
    assert len(pieces) == 6 and all(len(p.encode()) <= 576 for p in pieces)
    parsed = [IP(p.encode()) for p in pieces]
    for p in parsed:
        assert _scapy_rebuilt(p, transport=False) == raw(p)
    from scapy.layers.inet import defragment

    (whole,) = defragment(parsed)
    assert raw(whole[UDP]) == datagram


def test_scapy_fragments_reassemble_in_ours_in_any_order() -> None:
    original = (
        IP(src=str(A), dst=str(B), id=1234, flags=0) / UDP(sport=1, dport=2) / Raw(bytes(range(256)) * 12)
    )
    pieces = [Ipv4Packet.decode(raw(p)) for p in scapy_fragment(original, fragsize=512)]
    assert len(pieces) > 3
    random.Random(7).shuffle(pieces)
    reassembler = Reassembler()
    results = [reassembler.push(p, now=0.0) for p in pieces]
    assert results[:-1] == [None] * (len(pieces) - 1)
    whole = results[-1]
    assert whole is not None and not whole.is_fragment
    assert whole.payload == raw(original[UDP])
    assert UdpDatagram.decode(whole.payload, A, B).payload == bytes(range(256)) * 12
    assert len(reassembler) == 0


def _pieces(size: int = 64, step: int = 16) -> list[Ipv4Packet]:
    return fragment(
        Ipv4Packet(A, B, UDP_PROTO, bytes(range(size)), identification=5, dont_fragment=False), 20 + step
    )


def test_an_exact_duplicate_fragment_is_harmless() -> None:
    reassembler = Reassembler()
    pieces = _pieces()
    assert reassembler.push(pieces[0], 0.0) is None
    assert reassembler.push(pieces[0], 0.1) is None
    for piece in pieces[1:-1]:
        assert reassembler.push(piece, 0.2) is None
    whole = reassembler.push(pieces[-1], 0.3)
    assert whole is not None and whole.payload == bytes(range(64))


def test_overlapping_fragments_drop_the_whole_datagram() -> None:
    reassembler = Reassembler()
    pieces = _pieces()
    reassembler.push(pieces[0], 0.0)
    overlapping = Ipv4Packet(A, B, UDP_PROTO, b"E" * 16, identification=5, dont_fragment=False,
                             more_fragments=True, fragment_offset=8)  # fmt: skip
    with pytest.raises(ReassemblyError, match="overlaps") as caught:
        reassembler.push(overlapping, 0.1)
    assert caught.value.reason == "overlap"
    for piece in pieces[1:]:  # the rest, even the honest fragments, are refused until the timeout
        with pytest.raises(ReassemblyError):
            reassembler.push(piece, 0.2)
    assert reassembler.expire(31.0) == []  # a poisoned datagram is not reported for ICMP
    # after the timeout the same identification starts afresh
    for piece in pieces[:-1]:
        assert reassembler.push(piece, 32.0) is None
    assert reassembler.push(pieces[-1], 32.0) is not None


def test_a_second_last_fragment_with_another_end_overlaps() -> None:
    reassembler = Reassembler()
    pieces = _pieces()
    reassembler.push(pieces[-1], 0.0)  # ends at 64
    bogus_end = Ipv4Packet(
        A, B, UDP_PROTO, b"x" * 8, identification=5, dont_fragment=False, fragment_offset=16
    )
    with pytest.raises(ReassemblyError, match="overlaps"):
        reassembler.push(bogus_end, 0.0)


def test_in_progress_datagrams_are_bounded() -> None:
    reassembler = Reassembler(max_datagrams=3)
    for ident in range(3):
        first = Ipv4Packet(
            A, B, UDP_PROTO, b"a" * 8, identification=ident, dont_fragment=False, more_fragments=True
        )
        assert reassembler.push(first, 0.0) is None
    fourth = Ipv4Packet(A, B, UDP_PROTO, b"a" * 8, identification=3, dont_fragment=False, more_fragments=True)
    with pytest.raises(ReassemblyError) as caught:
        reassembler.push(fourth, 1.0)
    assert caught.value.reason == "too_many"
    # the timeout frees the room (30 s with the injected clock) and says which had their first fragment
    assert reassembler.next_deadline() == 30.0
    expired = reassembler.expire(30.0)
    assert sorted(e.key[3] for e in expired) == [0, 1, 2]
    assert all(e.first is not None and e.first.fragment_offset == 0 for e in expired)
    assert reassembler.push(fourth, 30.0) is None


def test_a_datagram_over_64k_cannot_be_built() -> None:
    reassembler = Reassembler()
    last = Ipv4Packet(
        A, B, UDP_PROTO, b"x" * 40, identification=1, dont_fragment=False, fragment_offset=65496
    )
    with pytest.raises(ReassemblyError):
        reassembler.push(last, 0.0)


def test_fragment_refuses_dont_fragment() -> None:
    with pytest.raises(PacketError, match="DF"):
        fragment(Ipv4Packet(A, B, UDP_PROTO, b"x" * 2000), 1500)


# ------------------------------------------------------------------------------------------------------ ICMP


def test_echo_request_parses_in_scapy_and_the_reply_mirrors_it() -> None:
    request = echo_request(0x1234, 7, b"ping data")
    data = Ipv4Packet(A, B, ICMP, request.encode()).encode()
    parsed = IP(data)
    assert parsed[ScapyICMP].type == 8 and parsed[ScapyICMP].id == 0x1234 and parsed[ScapyICMP].seq == 7
    assert _scapy_rebuilt(parsed) == data
    reply = echo_reply(IcmpMessage.decode(request.encode()))
    assert (reply.type, reply.identifier, reply.sequence, reply.payload) == (0, 0x1234, 7, b"ping data")


def test_scapy_unreachable_decodes_and_quotes_the_datagram() -> None:
    offending = raw(IP(src=str(A), dst=str(B)) / UDP(sport=40000, dport=9) / Raw(b"q" * 100))
    built = raw(ScapyICMP(type=3, code=4, nexthopmtu=1400) / Raw(offending[:28]))
    message = IcmpMessage.decode(built)
    assert (
        message.type == IcmpType.DESTINATION_UNREACHABLE and message.code == Unreachable.FRAGMENTATION_NEEDED
    )
    assert message.next_hop_mtu == 1400
    quoted = message.quoted()
    assert quoted is not None and quoted.protocol == UDP_PROTO and quoted.source == A
    assert quoted.payload[:4] == struct.pack("!HH", 40000, 9)


def test_our_errors_parse_in_scapy() -> None:
    offending = Ipv4Packet(B, A, UDP_PROTO, UdpDatagram(1, 2, b"x" * 1000).encode(B, A)).encode()
    for message in (
        destination_unreachable(Unreachable.PORT, offending),
        destination_unreachable(Unreachable.FRAGMENTATION_NEEDED, offending, next_hop_mtu=576),
        time_exceeded(TimeExceeded.REASSEMBLY, offending),
    ):
        data = Ipv4Packet(A, B, ICMP, message.encode()).encode()
        assert len(data) <= 576, "RFC 1812: an error fits 576 bytes"
        parsed = IP(data)
        assert (parsed[ScapyICMP].type, parsed[ScapyICMP].code) == (message.type, message.code)
        assert _scapy_rebuilt(parsed) == data
        if message.code == Unreachable.FRAGMENTATION_NEEDED:
            assert parsed[ScapyICMP].nexthopmtu == 576


def test_icmp_bad_checksum_and_truncation() -> None:
    good = echo_request(1, 1, b"abc").encode()
    with pytest.raises(PacketError, match="checksum"):
        IcmpMessage.decode(good[:-1] + b"d")
    with pytest.raises(PacketError, match="truncated"):
        IcmpMessage.decode(good[:7])


def test_no_error_about_an_error_or_a_later_fragment() -> None:
    error = Ipv4Packet(B, A, ICMP, destination_unreachable(Unreachable.PORT, b"\x45" + b"\x00" * 27).encode())
    assert not may_answer_with_error(error)
    assert may_answer_with_error(Ipv4Packet(B, A, ICMP, echo_request(1, 1).encode()))
    later = Ipv4Packet(B, A, UDP_PROTO, b"x" * 8, dont_fragment=False, fragment_offset=8)
    assert not may_answer_with_error(later)
    assert not may_answer_with_error(Ipv4Packet(B, IPv4Address("255.255.255.255"), UDP_PROTO, b""))


# ------------------------------------------------------------------------------------------------------- UDP


def test_udp_we_build_parses_in_scapy_with_its_checksum() -> None:
    data = Ipv4Packet(A, B, UDP_PROTO, UdpDatagram(49152, 53, b"\x12\x34query").encode(A, B)).encode()
    parsed = IP(data)
    assert (parsed[UDP].sport, parsed[UDP].dport, parsed[UDP].len) == (49152, 53, 8 + 7)
    assert _scapy_rebuilt(parsed) == data


def test_scapy_udp_decodes_in_ours() -> None:
    data = raw(IP(src=str(B), dst=str(A)) / UDP(sport=53, dport=49152) / Raw(b"answer"))[20:]
    assert data[6:8] != b"\x00\x00", "scapy computed a checksum"
    assert UdpDatagram.decode(data, B, A) == UdpDatagram(53, 49152, b"answer")
    with pytest.raises(PacketError, match="checksum"):
        UdpDatagram.decode(data, B, IPv4Address("198.51.100.3"))  # the pseudo-header is part of the sum


def test_udp_checksum_zero_means_none_and_a_computed_zero_is_sent_as_ffff() -> None:
    no_checksum = struct.pack("!HHHH", 7, 9, 12, 0) + b"abcd"
    assert UdpDatagram.decode(no_checksum, A, B).payload == b"abcd"
    probe = UdpDatagram(7, 9, b"\x00\x00").encode(A, B)
    # a payload word equal to that checksum makes the sum 0xFFFF, whose complement is 0 (RFC 768)
    zero_sum = UdpDatagram(7, 9, probe[6:8])
    encoded = zero_sum.encode(A, B)
    assert encoded[6:8] == b"\xff\xff"
    assert UdpDatagram.decode(encoded, A, B) == zero_sum
    assert raw(UDP(encoded))[6:8] == b"\xff\xff"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x01\x00\x02\x00", "truncated"),
        (struct.pack("!HHHH", 1, 2, 4, 0), "under 8"),
        (struct.pack("!HHHH", 1, 2, 30, 0) + b"x", "over the"),
    ],
)
def test_udp_bad_lengths(data: bytes, message: str) -> None:
    with pytest.raises(PacketError, match=message):
        UdpDatagram.decode(data, A, B)


# ----------------------------------------------------------------------------------------------------- fuzz


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_packet_errors_or_packets(data: bytes) -> None:
    for decode in (
        Ipv4Packet.decode,
        IcmpMessage.decode,
        lambda d: UdpDatagram.decode(d, A, B),
    ):
        try:
            decode(data)
        except PacketError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=20, max_size=80), st.integers(0, 79), st.integers(0, 255))
def test_one_changed_byte_of_a_header_is_caught_or_harmless(payload: bytes, where: int, value: int) -> None:
    data = bytearray(Ipv4Packet(A, B, UDP_PROTO, UdpDatagram(1, 2, payload).encode(A, B)).encode())
    where %= len(data)
    data[where] = value
    try:
        packet = Ipv4Packet.decode(bytes(data))
        UdpDatagram.decode(packet.payload, packet.source, packet.destination)
    except PacketError:
        pass


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 255),
    st.integers(1, 255),
    st.binary(max_size=300),
    st.booleans(),
)
def test_round_trip_matches_scapy(ident: int, tos: int, ttl: int, payload: bytes, df: bool) -> None:
    packet = Ipv4Packet(A, B, 200, payload, ttl=ttl, identification=ident, dont_fragment=df, tos=tos)
    data = packet.encode()
    assert Ipv4Packet.decode(data) == packet
    assert _scapy_rebuilt(IP(data)) == data


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.randoms(use_true_random=False))
def test_reassembly_of_any_shuffle_gives_the_datagram(payload: bytes, rnd: random.Random) -> None:
    pieces = fragment(Ipv4Packet(A, B, UDP_PROTO, payload, identification=3, dont_fragment=False), 20 + 64)
    rnd.shuffle(pieces)
    reassembler = Reassembler()
    out = [reassembler.push(p, 0.0) for p in pieces]
    assert out[-1] is not None and out[-1].payload == payload
    assert all(o is None for o in out[:-1])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # identification: a few datagrams at once
            st.integers(0, 8191),  # offset in 8-byte units
            st.binary(min_size=0, max_size=64),
            st.booleans(),  # more fragments
            st.floats(0, 100),
        ),
        max_size=60,
    )
)
def test_hostile_fragments_give_reassembly_errors_or_datagrams_within_bounds(
    fragments: list[tuple[int, int, bytes, bool, float]],
) -> None:
    reassembler = Reassembler(max_datagrams=2)
    now = 0.0
    for ident, offset, payload, more, step in fragments:
        now += step
        if offset * 8 + len(payload) > 65515:
            continue  # the decoder refuses those already (test_a_fragment_reaching_past_64k_is_refused)
        packet = Ipv4Packet(
            A, B, UDP_PROTO, payload, identification=ident, dont_fragment=False, more_fragments=more,
            fragment_offset=offset * 8,
        )  # fmt: skip
        try:
            whole = reassembler.push(packet, now)
        except ReassemblyError:
            continue
        assert len(reassembler) <= 2
        if whole is not None:
            assert len(whole.payload) <= 65515 and not whole.is_fragment
