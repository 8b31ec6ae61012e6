"""PPP on the network side (net/ppp.py): the RFC 1661 automaton, LCP options and counters, PAP/CHAP, IPCP with
RFC 1877 DNS; scapy's PPP layers build and read the peer's packets."""

from __future__ import annotations

import hashlib
import struct
from ipaddress import IPv4Address

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.ppp import (
    PPP,
    PPP_IPCP,
    PPP_IPCP_Option_DNS1,
    PPP_IPCP_Option_DNS2,
    PPP_IPCP_Option_IPAddress,
    PPP_LCP_Configure,
    PPP_LCP_Echo,
    PPP_LCP_Magic_Number_Option,
    PPP_LCP_MRU_Option,
    PPP_LCP_Protocol_Reject,
)

from bipsim.net.hdlc import Deframer, Frame, encode_frame, strip_address
from bipsim.net.ppp import (
    TABLE,
    Action,
    AuthMethod,
    Credentials,
    Event,
    FrameDropped,
    LinkDown,
    LinkUp,
    NetworkUp,
    PppConfig,
    PppConnection,
    ProtocolRejected,
    State,
)

# RFC 1661 section 4.1, the state transition table as printed (columns: states 0-9); "-" is an illegal event
RFC_1661_TABLE = """
Up    | 2        | irc,scr/6 | -          | -              | -     | -     | -         | -         | -         | -
Down  | -        | -         | 0          | tls/1          | 0     | 1     | 1         | 1         | 1         | tld/1
Open  | tls/1    | 1         | irc,scr/6  | 3              | 5     | 5     | 6         | 7         | 8         | 9
Close | 0        | tlf/0     | 2          | 2              | 4     | 4     | irc,str/4 | irc,str/4 | irc,str/4 | tld,irc,str/4
TO+   | -        | -         | -          | -              | str/4 | str/5 | scr/6     | scr/6     | scr/8     | -
TO-   | -        | -         | -          | -              | tlf/2 | tlf/3 | tlf/3     | tlf/3     | tlf/3     | -
RCR+  | -        | -         | sta/2      | irc,scr,sca/8  | 4     | 5     | sca/8     | sca,tlu/9 | sca/8     | tld,scr,sca/8
RCR-  | -        | -         | sta/2      | irc,scr,scn/6  | 4     | 5     | scn/6     | scn/7     | scn/6     | tld,scr,scn/6
RCA   | -        | -         | sta/2      | sta/3          | 4     | 5     | irc/7     | scr/6     | irc,tlu/9 | tld,scr/6
RCN   | -        | -         | sta/2      | sta/3          | 4     | 5     | irc,scr/6 | scr/6     | irc,scr/8 | tld,scr/6
RTR   | -        | -         | sta/2      | sta/3          | sta/4 | sta/5 | sta/6     | sta/6     | sta/6     | tld,zrc,sta/5
RTA   | -        | -         | 2          | 3              | tlf/2 | tlf/3 | 6         | 6         | 8         | tld,scr/6
RUC   | -        | -         | scj/2      | scj/3          | scj/4 | scj/5 | scj/6     | scj/7     | scj/8     | scj/9
RXJ+  | -        | -         | 2          | 3              | 4     | 5     | 6         | 6         | 8         | 9
RXJ-  | -        | -         | tlf/2      | tlf/3          | tlf/2 | tlf/3 | tlf/3     | tlf/3     | tlf/3     | tld,irc,str/5
RXR   | -        | -         | 2          | 3              | 4     | 5     | 6         | 7         | 8         | ser/9
"""

GATEWAY = IPv4Address("198.51.100.1")
HOST = IPv4Address("198.51.100.7")


def test_the_automaton_is_rfc_1661_table() -> None:
    expected = {}
    for row in RFC_1661_TABLE.strip().splitlines():
        name, *cells = (cell.strip() for cell in row.split("|"))
        for state, cell in zip(State, cells, strict=True):
            if cell == "-":
                continue
            actions, _, new = cell.rpartition("/")
            expected[(state, Event(name))] = (
                tuple(Action(a) for a in actions.split(",") if a),
                State(int(new)),
            )
    assert TABLE == expected


class Peer:
    """The host's side, decoded by scapy."""

    def __init__(self, conn: PppConnection) -> None:
        self.conn = conn
        self.deframer = Deframer(accm=0)
        self.now = 0.0
        self.events: list[object] = []

    def frames(self) -> list[PPP]:
        out = []
        for item in self.deframer.feed(self.conn.data_to_send()):
            assert isinstance(item, Frame)
            out.append(PPP(strip_address(item.data)))
        return out

    def send(self, packet: PPP) -> list[object]:
        events = self.conn.receive_data(encode_frame(b"\xff\x03" + bytes(packet)), self.now)
        self.events += events
        return list(events)


def code(frame: PPP) -> int:
    """The control packet's code (scapy parses each code into its own class)."""
    return bytes(frame[PPP].payload)[0]


def connection(**kwargs: object) -> tuple[PppConnection, Peer]:
    conn = PppConnection(GATEWAY, HOST, (GATEWAY,), **kwargs)  # type: ignore[arg-type]
    peer = Peer(conn)
    peer.events += conn.open(0.0)
    return conn, peer


def open_lcp(conn: PppConnection, peer: Peer) -> None:
    (request,) = peer.frames()
    assert request[PPP].proto == 0xC021 and request[PPP_LCP_Configure].code == 1
    peer.send(PPP(proto=0xC021) / PPP_LCP_Configure(code=2, id=request.id, options=request.options))
    peer.send(
        PPP(proto=0xC021)
        / PPP_LCP_Configure(code=1, id=1, options=[PPP_LCP_Magic_Number_Option(magic_number=0x0BADCAFE)])
    )
    assert conn.lcp.state is State.OPENED
    assert any(isinstance(e, LinkUp) for e in peer.events)


def test_max_configure_bounds_a_silent_host() -> None:
    conn, peer = connection(config=PppConfig(restart=3.0, max_configure=4))
    sent = len(peer.frames())
    time = 0.0
    while conn.deadline is not None:
        time = conn.deadline
        peer.events += conn.handle_timer(time)
        sent += len(peer.frames())
    assert sent == 4  # Max-Configure Configure-Requests, then TO- (RFC 1661 4.6)
    assert time == 12.0
    assert conn.lcp.state is State.STOPPED
    assert any(isinstance(e, LinkDown) for e in peer.events)


def test_our_own_magic_number_back_is_a_loop() -> None:
    conn, peer = connection()
    (request,) = peer.frames()
    ours = request[PPP_LCP_Magic_Number_Option].magic_number
    peer.send(PPP(proto=0xC021) / PPP_LCP_Configure(code=1, id=9, options=request.options))  # looped back
    replies = peer.frames()
    nak = next(f for f in replies if code(f) == 3)
    assert nak[PPP_LCP_Magic_Number_Option].magic_number != ours
    assert conn.lcp.loops == 1


def test_max_failure_turns_naks_into_rejects() -> None:
    conn, peer = connection(config=PppConfig(max_failure=2))
    peer.frames()
    codes = []
    for ident in range(4):
        peer.send(
            PPP(proto=0xC021)
            / PPP_LCP_Configure(code=1, id=ident, options=[PPP_LCP_MRU_Option(max_recv_unit=60)])
        )
        codes += [code(f) for f in peer.frames()]
    assert codes == [3, 3, 4, 4]  # Nak, Nak, then Reject (RFC 1661 4.6 Max-Failure)


def test_unknown_protocol_gets_protocol_reject_and_unknown_code_code_reject() -> None:
    conn, peer = connection()
    open_lcp(conn, peer)
    peer.frames()
    events = peer.send(PPP(proto=0x8057) / b"\x01\x01\x00\x04")  # IPv6CP: not carried
    assert ProtocolRejected(0x8057) in events
    (reject,) = peer.frames()
    assert reject[PPP_LCP_Protocol_Reject].rejected_protocol == 0x8057
    peer.send(PPP(proto=0xC021) / b"\x0e\x05\x00\x04")  # code 14: not an LCP code
    (code_reject,) = peer.frames()
    assert code(code_reject) == 7


def test_echo_request_is_answered_with_our_magic() -> None:
    conn, peer = connection()
    open_lcp(conn, peer)
    peer.frames()
    peer.send(PPP(proto=0xC021) / PPP_LCP_Echo(code=9, id=4, magic_number=0x0BADCAFE, data=b"ping"))
    (reply,) = peer.frames()
    assert reply[PPP_LCP_Echo].code == 10 and reply[PPP_LCP_Echo].id == 4
    assert reply[PPP_LCP_Echo].magic_number == conn.lcp.magic
    assert bytes(reply[PPP_LCP_Echo].data) == b"ping"


def test_terminate_request_ends_the_link() -> None:
    conn, peer = connection()
    open_lcp(conn, peer)
    peer.frames()
    events = peer.send(PPP(proto=0xC021) / b"\x05\x03\x00\x04")
    (ack,) = peer.frames()
    assert code(ack) == 6
    assert conn.lcp.state is State.STOPPING
    assert conn.deadline is not None
    events = conn.handle_timer(conn.deadline)
    assert any(isinstance(e, LinkDown) for e in events)


def test_ipcp_gives_the_address_and_rfc_1877_dns() -> None:
    conn, peer = connection()
    open_lcp(conn, peer)
    frames = peer.frames()
    ours = next(f for f in frames if f[PPP].proto == 0x8021)
    assert ours[PPP_IPCP_Option_IPAddress].data == str(GATEWAY)
    peer.send(
        PPP(proto=0x8021)
        / PPP_IPCP(
            code=1,
            id=1,
            options=[
                PPP_IPCP_Option_IPAddress(data="0.0.0.0"),
                PPP_IPCP_Option_DNS1(data="0.0.0.0"),
                PPP_IPCP_Option_DNS2(data="0.0.0.0"),
            ],
        )
    )
    (nak,) = peer.frames()
    assert nak[PPP_IPCP].code == 3
    assert nak[PPP_IPCP_Option_IPAddress].data == str(HOST)
    assert nak[PPP_IPCP_Option_DNS1].data == str(GATEWAY)
    assert nak[PPP_IPCP_Option_DNS2].data == str(GATEWAY)
    peer.send(PPP(proto=0x8021) / PPP_IPCP(code=2, id=ours.id, options=ours.options))
    peer.send(
        PPP(proto=0x8021)
        / PPP_IPCP(
            code=1,
            id=2,
            options=[
                PPP_IPCP_Option_IPAddress(data=str(HOST)),
                PPP_IPCP_Option_DNS1(data=str(GATEWAY)),
                PPP_IPCP_Option_DNS2(data=str(GATEWAY)),
            ],
        )
    )
    assert NetworkUp(HOST, (GATEWAY,)) in peer.events
    (ack,) = peer.frames()
    assert ack[PPP_IPCP].code == 2
    # IPv4 both ways, with the ACCM the host asked for (none: it did not ask, so every control character escaped)
    packet = bytes.fromhex("450000140001000040ff0000c6336401c6336407")
    conn.send_ip(packet)
    (ip,) = peer.frames()
    assert ip[PPP].proto == 0x21 and bytes(ip[PPP].payload) == packet
    assert conn.counters.tx_bytes == len(packet)


def test_ipcp_before_the_network_phase_is_dropped() -> None:
    conn, peer = connection(user="ota", password="secret")
    open_lcp(conn, peer)
    events = peer.send(PPP(proto=0x8021) / PPP_IPCP(code=1, id=1, options=[]))
    assert any(getattr(e, "reason", "") == "IPCP before the network phase" for e in events)
    assert struct.unpack("!H", bytes(PPP(proto=0xC223))[:2])[0] == 0xC223


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=12))
def test_any_frame_in_any_phase_never_raises(payloads: list[bytes]) -> None:
    conn, peer = connection(user="u", password="p")
    for index, payload in enumerate(payloads):
        protocol = (0xC021, 0x8021, 0xC023, 0xC223, 0x0021, 0x8057)[index % 6]
        conn.receive_data(encode_frame(b"\xff\x03" + struct.pack("!H", protocol) + payload), float(index))
        conn.data_to_send()
        if conn.deadline is not None:
            conn.handle_timer(conn.deadline)


def test_the_accm_applies_from_the_frame_after_the_ack_in_the_same_read() -> None:
    """Two ends that open with each other: the Configure-Ack and the first frame sent with ACCM 0 arrive in one
    read; the control characters of the second are data, not line noise (RFC 1662 4.2, 7.1)."""
    import random

    a = PppConnection(GATEWAY, HOST, rng=random.Random(1))
    b = PppConnection(HOST, GATEWAY, rng=random.Random(2))
    a.open(0.0)
    b.open(0.0)
    dropped = []
    for _ in range(6):
        dropped += [e for e in b.receive_data(a.data_to_send(), 0.0) if isinstance(e, FrameDropped)]
        dropped += [e for e in a.receive_data(b.data_to_send(), 0.0) if isinstance(e, FrameDropped)]
    assert not dropped
    assert a.network_open and b.network_open


def test_a_host_insisting_on_a_rejected_option_is_closed() -> None:
    conn, peer = connection(config=PppConfig(max_failure=2))
    peer.frames()
    codes = []
    for ident in range(4):
        peer.send(PPP(proto=0xC021) / bytes.fromhex(f"01{ident:02x}0008 6304 0102".replace(" ", "")))
        codes += [code(f) for f in peer.frames()]
    # Configure-Reject of option 99 Max-Failure times, then Terminate-Request: the configuration does not converge
    assert codes[:3] == [4, 4, 5]
    assert conn.lcp.state is State.CLOSING


def test_a_host_asking_us_to_authenticate_is_rejected() -> None:
    conn, peer = connection()
    peer.frames()
    peer.send(PPP(proto=0xC021) / bytes.fromhex("01010008" + "0304c023"))
    (reply,) = peer.frames()
    assert code(reply) == 4 and bytes(reply[PPP].payload)[4:] == bytes.fromhex("0304c023")


def test_compressed_address_and_protocol_fields_after_lcp_opened() -> None:
    """RFC 1661 6.5-6.6: once PFC and ACFC are acked, frames may come without FF 03 and with a one-byte protocol;
    before LCP opens, a frame without FF 03 is dropped."""
    conn, peer = connection()
    events = conn.receive_data(encode_frame(b"\xc0\x21\x01\x01\x00\x04"), 0.0)
    assert any(getattr(e, "reason", "") == "no address and control field" for e in events)
    open_lcp(conn, peer)
    conn.network_open = True  # the IP path alone: IPCP is tested above
    packet = bytes.fromhex("450000140001000040ff0000c6336407c6336401")
    events = conn.receive_data(encode_frame(b"\x21" + packet, accm=0), 1.0)
    assert [e.packet for e in events if hasattr(e, "packet")] == [packet]


def _chap_challenge(peer: Peer) -> tuple[int, bytes]:
    frames = peer.frames()
    challenge = next(bytes(f[PPP].payload) for f in frames if f[PPP].proto == 0xC223)
    assert challenge[0] == 1  # Challenge
    size = challenge[4]
    return challenge[1], challenge[5 : 5 + size]


def _chap_response(ident: int, secret: str, challenge: bytes, name: str) -> PPP:
    value = hashlib.md5(bytes((ident,)) + secret.encode() + challenge).digest()  # RFC 1994 4.1
    body = bytes((16,)) + value + name.encode()
    return PPP(proto=0xC223) / (struct.pack("!BBH", 2, ident, 4 + len(body)) + body)


def test_a_chap_response_retransmitted_after_success_gets_the_success_again() -> None:
    """RFC 1994 4.1: the Success may be lost; the same Response again is answered with the same Success."""
    conn, peer = connection(user="ota", password="secret", auth_methods=(AuthMethod.CHAP,))
    open_lcp(conn, peer)
    ident, challenge = _chap_challenge(peer)
    response = _chap_response(ident, "secret", challenge, "ota")
    peer.send(response)
    (success, *_) = [f for f in peer.frames() if f[PPP].proto == 0xC223]
    assert bytes(success[PPP].payload)[:2] == bytes((3, ident))
    peer.send(response)
    again = [bytes(f[PPP].payload) for f in peer.frames() if f[PPP].proto == 0xC223]
    assert again == [bytes(success[PPP].payload)]
    assert not any(isinstance(e, FrameDropped) for e in peer.events)


def test_relayed_credentials_wait_for_the_networks_verdict() -> None:
    """relay_auth: the host's CHAP answer comes out as Credentials (identifier, challenge, response); nothing is
    answered until `authorize`, whose address IPCP then gives; the host's early IPCP request is answered then."""
    conn = PppConnection(GATEWAY, IPv4Address(0), relay_auth=True, auth_methods=(AuthMethod.CHAP,))
    peer = Peer(conn)
    peer.events += conn.open(0.0)
    open_lcp(conn, peer)
    ident, challenge = _chap_challenge(peer)
    peer.send(_chap_response(ident, "whatever", challenge, "ota"))
    (credentials,) = [e for e in peer.events if isinstance(e, Credentials)]
    assert credentials.method == "chap" and credentials.user == "ota"
    assert credentials.chap == (
        ident,
        challenge,
        _chap_response(ident, "whatever", challenge, "ota").load[5:21],
    )
    assert peer.frames() == []  # no verdict yet
    ipcp = PPP_IPCP(code=1, id=3, options=[PPP_IPCP_Option_IPAddress(data="0.0.0.0")])
    peer.send(PPP(proto=0x8021) / ipcp)
    assert peer.frames() == []
    peer.events += conn.authorize(True, 1.0, address=HOST, dns=(GATEWAY,))
    out = peer.frames()
    assert bytes(out[0][PPP].payload)[:2] == bytes((3, ident))  # Success
    nak = next(f for f in out if f[PPP].proto == 0x8021 and code(f) == 3)
    assert HOST.packed in bytes(nak[PPP].payload)


def test_a_refused_activation_ends_the_link() -> None:
    conn = PppConnection(GATEWAY, IPv4Address(0), relay_auth=True, auth_methods=(AuthMethod.PAP,))
    peer = Peer(conn)
    peer.events += conn.open(0.0)
    open_lcp(conn, peer)
    peer.frames()
    body = b"\x03ota\x05wrong"
    peer.send(PPP(proto=0xC023) / (struct.pack("!BBH", 1, 9, 4 + len(body)) + body))
    assert [e for e in peer.events if isinstance(e, Credentials)][0].password == "wrong"
    peer.events += conn.authorize(False, 1.0, reason="SM cause #29")
    codes = [(f[PPP].proto, code(f)) for f in peer.frames()]
    assert codes == [(0xC023, 3), (0xC021, 5)]  # Authenticate-Nak, Terminate-Request
