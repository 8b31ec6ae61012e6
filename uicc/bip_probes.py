"""Small card applications that exercise the terminal's BIP transports other than the OTA session's TCP client
(ETSI TS 102 223 6.4.27-6.4.31, 8.59): a UDP client that sends datagrams and reads each answer as one unit, a DNS
lookup over a UDP channel to the simulated network's DNS server (its OPEN CHANNEL also asks for the DNS server
addresses, 8.6 qualifier bit 4; the query follows RFC 1035 4.1), and an echo service in the UICC server mode
(6.4.27.5). Each is a BipClient run by the card's BipEngine (uicc/bip_engine.py); `bipsim cp --bip-app SPEC` puts
one on the simulated card instead of the OTA agent (docs/protocols.md, "The packet data plane").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from bipsim.uicc.bip_engine import BipConfig, LinkMode
from bipsim.uicc.cat import OpenChannel, ProactiveCommand, Tag, TransportProtocol, buffer_size_object, obj

DNS_REQUESTED = 0x08  # OPEN CHANNEL qualifier bit 4 (TS 102 223 8.6): DNS server address(es) requested
DNS_PORT = 53
QUIT = b"QUIT\n"  # the line that ends the server mode's echo session


@dataclass(frozen=True)
class ProbeConfig(BipConfig):
    """A BipConfig whose OPEN CHANNEL may ask for DNS servers, or be the UICC server mode's (buffer size and a
    transport level of type 03 only, 6.4.27.5)."""

    dns_request: bool = False

    def open_channel(self, number: int) -> ProactiveCommand:
        if self.protocol == TransportProtocol.TCP_SERVER:
            return ProactiveCommand.build(
                0x40,  # OPEN CHANNEL
                [
                    buffer_size_object(self.buffer_size),
                    obj(Tag.TRANSPORT_LEVEL, bytes((self.protocol,)) + self.port.to_bytes(2, "big")),
                ],
                number=number,
                qualifier=0,
            )
        return OpenChannel(
            bearer_type=self.bearer_type,
            bearer_parameters=self.bearer_parameters,
            buffer_size=self.buffer_size,
            protocol=self.protocol,
            port=self.port,
            destination=self.host,
            apn=self.apn or None,
            login=self.login or None,
            password=self.password or None,
            qualifier=self.link_mode.qualifier | (DNS_REQUESTED if self.dns_request else 0),
            number=number,
        ).to_command()


@dataclass
class UdpProbe:
    """Sends `messages` one datagram each, the next once the answer to the last has been read; `answers` holds
    what came back, one entry per RECEIVE DATA unit (a datagram is never split or joined)."""

    messages: list[bytes]
    answers: list[bytes] = field(default_factory=list)
    lost: str | None = None

    def connection_made(self) -> bytes:
        return self.messages[0] if self.messages else b""

    def data_received(self, data: bytes) -> bytes:
        self.answers.append(data)
        return self.messages[len(self.answers)] if len(self.answers) < len(self.messages) else b""

    def connection_lost(self, reason: str) -> None:
        self.lost = reason

    @property
    def done(self) -> bool:
        return len(self.answers) >= len(self.messages) or self.lost is not None

    @property
    def wants_reconnect(self) -> bool:
        return False


def dns_query(name: str, ident: int = 0x4249) -> bytes:
    """A standard query for the A record of `name` with recursion desired (RFC 1035 4.1.1-4.1.2)."""
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    labels = b"".join(
        bytes((len(part),)) + part.encode("ascii") for part in name.rstrip(".").split(".") if part
    )
    return header + labels + b"\x00" + struct.pack("!HH", 1, 1)


def dns_addresses(message: bytes) -> tuple[int, list[IPv4Address]]:
    """The response code and the A records' addresses of a DNS response (RFC 1035 4.1); ValueError when it is not
    one."""
    if len(message) < 12 or not message[2] & 0x80:
        raise ValueError("not a DNS response")
    rcode = message[3] & 0x0F
    questions, answers = struct.unpack("!HH", message[4:8])
    at = 12

    def skip_name(at: int) -> int:
        while True:
            if at >= len(message):
                raise ValueError("truncated name")
            length = message[at]
            if length & 0xC0 == 0xC0:
                return at + 2
            if length == 0:
                return at + 1
            at += 1 + length

    for _ in range(questions):
        at = skip_name(at) + 4
    found = []
    for _ in range(answers):
        at = skip_name(at)
        if at + 10 > len(message):
            raise ValueError("truncated record")
        rtype, _, _, length = struct.unpack("!HHIH", message[at : at + 10])
        at += 10
        if rtype == 1 and length == 4:
            found.append(IPv4Address(message[at : at + 4]))
        at += length
    return rcode, found


@dataclass
class DnsProbe:
    """Asks the DNS server for `name`'s address over the UDP channel; `rcode` and `addresses` hold the answer."""

    name: str
    rcode: int | None = None
    addresses: list[IPv4Address] = field(default_factory=list)
    lost: str | None = None

    def connection_made(self) -> bytes:
        return dns_query(self.name)

    def data_received(self, data: bytes) -> bytes:
        self.rcode, self.addresses = dns_addresses(data)
        return b""

    def connection_lost(self, reason: str) -> None:
        self.lost = reason

    @property
    def done(self) -> bool:
        return self.rcode is not None or self.lost is not None

    @property
    def wants_reconnect(self) -> bool:
        return False


@dataclass
class EchoServer:
    """The UICC server mode's application: echoes what the client sends until a line QUIT, then closes."""

    received: bytearray = field(default_factory=bytearray)
    lost: str | None = None

    def connection_made(self) -> bytes:
        return b""

    def data_received(self, data: bytes) -> bytes:
        self.received += data
        return data

    def connection_lost(self, reason: str) -> None:
        self.lost = reason

    @property
    def done(self) -> bool:
        return self.received.endswith(QUIT) or self.lost is not None

    @property
    def wants_reconnect(self) -> bool:
        return False


def probe(spec: str, base: BipConfig) -> tuple[ProbeConfig, UdpProbe | DnsProbe | EchoServer]:
    """The card application `spec` names (`bipsim cp --bip-app`), with the card profile's bearer, APN and buffer:

    - `udp:HOST:PORT[:COUNT]`: COUNT (3) datagrams to HOST:PORT, each answer read as one unit;
    - `dns:NAME`: a UDP channel to 198.51.100.1:53, the simulated network's DNS server, whose OPEN CHANNEL asks
      for the DNS server addresses (its response names that server), asking for NAME's address;
    - `server:PORT`: the UICC server mode on PORT, echoing until a line QUIT.

    Raises ValueError with a message for the command line."""
    kind, _, rest = spec.partition(":")
    common: dict[str, Any] = {
        "bearer_type": base.bearer_type,
        "bearer_parameters": base.bearer_parameters,
        "buffer_size": base.buffer_size,
        "apn": base.apn,
        "login": base.login,
        "password": base.password,
        "max_reconnects": 0,
    }
    if kind == "udp":
        parts = rest.split(":")
        if len(parts) not in (2, 3) or not parts[1].isdigit() or (len(parts) == 3 and not parts[2].isdigit()):
            raise ValueError(f"--bip-app {spec}: use udp:HOST:PORT[:COUNT]")
        host, port = str(IPv4Address(parts[0])), int(parts[1])
        count = int(parts[2]) if len(parts) == 3 else 3
        messages = [f"datagram {n} of {count}".encode() for n in range(1, count + 1)]
        config = ProbeConfig(
            host=host,
            port=port,
            protocol=TransportProtocol.UDP_CLIENT_REMOTE,
            link_mode=LinkMode.BACKGROUND,
            **common,
        )
        return config, UdpProbe(messages)
    if kind == "dns" and rest:
        config = ProbeConfig(
            host="198.51.100.1",
            port=DNS_PORT,
            protocol=TransportProtocol.UDP_CLIENT_REMOTE,
            link_mode=LinkMode.BACKGROUND,
            dns_request=True,
            **common,
        )
        return config, DnsProbe(rest)
    if kind == "server" and rest.isdigit() and 0 < int(rest) < 65536:
        config = ProbeConfig(
            host="",
            port=int(rest),
            protocol=TransportProtocol.TCP_SERVER,
            link_mode=LinkMode.BACKGROUND,
            **common,
        )
        return config, EchoServer()
    raise ValueError(f"--bip-app {spec}: use udp:HOST:PORT[:COUNT], dns:NAME or server:PORT")
