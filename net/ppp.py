"""PPP on the network side of a data call, sans-IO: the modem is the peer the host dials (ATD*99#).

Follows RFC 1661 (the option-negotiation automaton of section 4, in ONE transition table `TABLE` shared by LCP and
IPCP; LCP options MRU, ACCM, Authentication-Protocol, Magic-Number with loopback detection, PFC and ACFC; Protocol-
Reject, Code-Reject, Echo and Discard), RFC 1662 for the framing (net/hdlc.py), RFC 1334 PAP and RFC 1994 CHAP with
MD5 with the modem as the authenticator, RFC 1332 IPCP with the IP-Address option and RFC 1877's Primary and
Secondary DNS options. Bytes and the time go in (`receive_data`, `handle_timer`), bytes and events come out
(`data_to_send`, the returned events); the clock is the caller's, so tests run on any clock.

Phases (RFC 1661 3.2): LCP opens the link; if the context has credentials the host authenticates (CHAP-MD5 is asked
first, PAP when the host naks it for PAP); then IPCP gives the host the context's address and the gateway's DNS,
and IPv4 packets flow both ways. A frame of a protocol the modem does not carry gets an LCP Protocol-Reject; NCP
frames before the network phase are dropped (RFC 1661 3.5).
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from ipaddress import IPv4Address

from bipsim.net.hdlc import (
    ADDRESS,
    CONTROL,
    DEFAULT_ACCM,
    DEFAULT_MAX_FRAME,
    Deframer,
    Dropped,
    encode_frame,
)

PROTO_IP = 0x0021
PROTO_IPCP = 0x8021
PROTO_LCP = 0xC021
PROTO_PAP = 0xC023
PROTO_CHAP = 0xC223
CHAP_MD5 = 5  # the CHAP algorithm field for MD5 (RFC 1994 3)
PROTOCOL_NAMES = {PROTO_IP: "ip", PROTO_IPCP: "ipcp", PROTO_LCP: "lcp", PROTO_PAP: "pap", PROTO_CHAP: "chap"}

# LCP and IPCP codes (RFC 1661 5, RFC 1332 2: IPCP has 1-7)
CONF_REQ, CONF_ACK, CONF_NAK, CONF_REJ = 1, 2, 3, 4
TERM_REQ, TERM_ACK, CODE_REJ, PROTO_REJ = 5, 6, 7, 8
ECHO_REQ, ECHO_REP, DISCARD_REQ = 9, 10, 11
CODE_NAMES = {
    1: "Configure-Request",
    2: "Configure-Ack",
    3: "Configure-Nak",
    4: "Configure-Reject",
    5: "Terminate-Request",
    6: "Terminate-Ack",
    7: "Code-Reject",
    8: "Protocol-Reject",
    9: "Echo-Request",
    10: "Echo-Reply",
    11: "Discard-Request",
}

# LCP options (RFC 1661 6)
OPT_MRU, OPT_ACCM, OPT_AUTH, OPT_MAGIC, OPT_PFC, OPT_ACFC = 1, 2, 3, 5, 7, 8
# IPCP options (RFC 1332 3, RFC 1877 1)
OPT_IP_ADDRESS, OPT_PRIMARY_DNS, OPT_SECONDARY_DNS = 3, 129, 131
MIN_MRU = 128  # smaller is Nak'ed with the default: an IPv4 header and some data must fit
DEFAULT_MRU = 1500

Option = tuple[int, bytes]


class PppError(ValueError):
    """A packet that cannot be read (length that lies, a truncated option)."""


# --- the option-negotiation automaton (RFC 1661 4.1) ----------------------------------------------------------


class State(IntEnum):
    INITIAL = 0
    STARTING = 1
    CLOSED = 2
    STOPPED = 3
    CLOSING = 4
    STOPPING = 5
    REQ_SENT = 6
    ACK_RCVD = 7
    ACK_SENT = 8
    OPENED = 9


class Event(StrEnum):
    UP = "Up"
    DOWN = "Down"
    OPEN = "Open"
    CLOSE = "Close"
    TO_PLUS = "TO+"
    TO_MINUS = "TO-"
    RCR_PLUS = "RCR+"
    RCR_MINUS = "RCR-"
    RCA = "RCA"
    RCN = "RCN"
    RTR = "RTR"
    RTA = "RTA"
    RUC = "RUC"
    RXJ_PLUS = "RXJ+"
    RXJ_MINUS = "RXJ-"
    RXR = "RXR"


class Action(StrEnum):
    TLU = "tlu"  # this layer up
    TLD = "tld"  # this layer down
    TLS = "tls"  # this layer started
    TLF = "tlf"  # this layer finished
    IRC = "irc"  # initialise the restart counter
    ZRC = "zrc"  # zero the restart counter
    SCR = "scr"  # send Configure-Request
    SCA = "sca"  # send Configure-Ack
    SCN = "scn"  # send Configure-Nak or Configure-Reject
    STR = "str"  # send Terminate-Request
    STA = "sta"  # send Terminate-Ack
    SCJ = "scj"  # send Code-Reject
    SER = "ser"  # send Echo-Reply


def _table() -> dict[tuple[State, Event], tuple[tuple[Action, ...], State]]:
    """RFC 1661 4.1's state transition table, row by row; a pair that is not here is an event the state does not
    take (RFC 1661's "-"), which the automaton drops."""
    S, E, A = State, Event, Action
    rows: dict[Event, list[tuple[State, tuple[Action, ...], State]]] = {
        E.UP: [(S.INITIAL, (), S.CLOSED), (S.STARTING, (A.IRC, A.SCR), S.REQ_SENT)],
        E.DOWN: [
            (S.CLOSED, (), S.INITIAL),
            (S.STOPPED, (A.TLS,), S.STARTING),
            (S.CLOSING, (), S.INITIAL),
            (S.STOPPING, (), S.STARTING),
            (S.REQ_SENT, (), S.STARTING),
            (S.ACK_RCVD, (), S.STARTING),
            (S.ACK_SENT, (), S.STARTING),
            (S.OPENED, (A.TLD,), S.STARTING),
        ],
        E.OPEN: [
            (S.INITIAL, (A.TLS,), S.STARTING),
            (S.STARTING, (), S.STARTING),
            (S.CLOSED, (A.IRC, A.SCR), S.REQ_SENT),
            (S.STOPPED, (), S.STOPPED),
            (S.CLOSING, (), S.STOPPING),
            (S.STOPPING, (), S.STOPPING),
            (S.REQ_SENT, (), S.REQ_SENT),
            (S.ACK_RCVD, (), S.ACK_RCVD),
            (S.ACK_SENT, (), S.ACK_SENT),
            (S.OPENED, (), S.OPENED),
        ],
        E.CLOSE: [
            (S.INITIAL, (), S.INITIAL),
            (S.STARTING, (A.TLF,), S.INITIAL),
            (S.CLOSED, (), S.CLOSED),
            (S.STOPPED, (), S.CLOSED),
            (S.CLOSING, (), S.CLOSING),
            (S.STOPPING, (), S.CLOSING),
            (S.REQ_SENT, (A.IRC, A.STR), S.CLOSING),
            (S.ACK_RCVD, (A.IRC, A.STR), S.CLOSING),
            (S.ACK_SENT, (A.IRC, A.STR), S.CLOSING),
            (S.OPENED, (A.TLD, A.IRC, A.STR), S.CLOSING),
        ],
        E.TO_PLUS: [
            (S.CLOSING, (A.STR,), S.CLOSING),
            (S.STOPPING, (A.STR,), S.STOPPING),
            (S.REQ_SENT, (A.SCR,), S.REQ_SENT),
            (S.ACK_RCVD, (A.SCR,), S.REQ_SENT),
            (S.ACK_SENT, (A.SCR,), S.ACK_SENT),
        ],
        E.TO_MINUS: [
            (S.CLOSING, (A.TLF,), S.CLOSED),
            (S.STOPPING, (A.TLF,), S.STOPPED),
            (S.REQ_SENT, (A.TLF,), S.STOPPED),
            (S.ACK_RCVD, (A.TLF,), S.STOPPED),
            (S.ACK_SENT, (A.TLF,), S.STOPPED),
        ],
        E.RCR_PLUS: [
            (S.CLOSED, (A.STA,), S.CLOSED),
            (S.STOPPED, (A.IRC, A.SCR, A.SCA), S.ACK_SENT),
            (S.CLOSING, (), S.CLOSING),
            (S.STOPPING, (), S.STOPPING),
            (S.REQ_SENT, (A.SCA,), S.ACK_SENT),
            (S.ACK_RCVD, (A.SCA, A.TLU), S.OPENED),
            (S.ACK_SENT, (A.SCA,), S.ACK_SENT),
            (S.OPENED, (A.TLD, A.SCR, A.SCA), S.ACK_SENT),
        ],
        E.RCR_MINUS: [
            (S.CLOSED, (A.STA,), S.CLOSED),
            (S.STOPPED, (A.IRC, A.SCR, A.SCN), S.REQ_SENT),
            (S.CLOSING, (), S.CLOSING),
            (S.STOPPING, (), S.STOPPING),
            (S.REQ_SENT, (A.SCN,), S.REQ_SENT),
            (S.ACK_RCVD, (A.SCN,), S.ACK_RCVD),
            (S.ACK_SENT, (A.SCN,), S.REQ_SENT),
            (S.OPENED, (A.TLD, A.SCR, A.SCN), S.REQ_SENT),
        ],
        E.RCA: [
            (S.CLOSED, (A.STA,), S.CLOSED),
            (S.STOPPED, (A.STA,), S.STOPPED),
            (S.CLOSING, (), S.CLOSING),
            (S.STOPPING, (), S.STOPPING),
            (S.REQ_SENT, (A.IRC,), S.ACK_RCVD),
            (S.ACK_RCVD, (A.SCR,), S.REQ_SENT),
            (S.ACK_SENT, (A.IRC, A.TLU), S.OPENED),
            (S.OPENED, (A.TLD, A.SCR), S.REQ_SENT),
        ],
        E.RCN: [
            (S.CLOSED, (A.STA,), S.CLOSED),
            (S.STOPPED, (A.STA,), S.STOPPED),
            (S.CLOSING, (), S.CLOSING),
            (S.STOPPING, (), S.STOPPING),
            (S.REQ_SENT, (A.IRC, A.SCR), S.REQ_SENT),
            (S.ACK_RCVD, (A.SCR,), S.REQ_SENT),
            (S.ACK_SENT, (A.IRC, A.SCR), S.ACK_SENT),
            (S.OPENED, (A.TLD, A.SCR), S.REQ_SENT),
        ],
        E.RTR: [
            (S.CLOSED, (A.STA,), S.CLOSED),
            (S.STOPPED, (A.STA,), S.STOPPED),
            (S.CLOSING, (A.STA,), S.CLOSING),
            (S.STOPPING, (A.STA,), S.STOPPING),
            (S.REQ_SENT, (A.STA,), S.REQ_SENT),
            (S.ACK_RCVD, (A.STA,), S.REQ_SENT),
            (S.ACK_SENT, (A.STA,), S.REQ_SENT),
            (S.OPENED, (A.TLD, A.ZRC, A.STA), S.STOPPING),
        ],
        E.RTA: [
            (S.CLOSED, (), S.CLOSED),
            (S.STOPPED, (), S.STOPPED),
            (S.CLOSING, (A.TLF,), S.CLOSED),
            (S.STOPPING, (A.TLF,), S.STOPPED),
            (S.REQ_SENT, (), S.REQ_SENT),
            (S.ACK_RCVD, (), S.REQ_SENT),
            (S.ACK_SENT, (), S.ACK_SENT),
            (S.OPENED, (A.TLD, A.SCR), S.REQ_SENT),
        ],
        E.RUC: [(s, (A.SCJ,), s) for s in State if s >= S.CLOSED],
        E.RXJ_PLUS: [
            (S.CLOSED, (), S.CLOSED),
            (S.STOPPED, (), S.STOPPED),
            (S.CLOSING, (), S.CLOSING),
            (S.STOPPING, (), S.STOPPING),
            (S.REQ_SENT, (), S.REQ_SENT),
            (S.ACK_RCVD, (), S.REQ_SENT),
            (S.ACK_SENT, (), S.ACK_SENT),
            (S.OPENED, (), S.OPENED),
        ],
        E.RXJ_MINUS: [
            (S.CLOSED, (A.TLF,), S.CLOSED),
            (S.STOPPED, (A.TLF,), S.STOPPED),
            (S.CLOSING, (A.TLF,), S.CLOSED),
            (S.STOPPING, (A.TLF,), S.STOPPED),
            (S.REQ_SENT, (A.TLF,), S.STOPPED),
            (S.ACK_RCVD, (A.TLF,), S.STOPPED),
            (S.ACK_SENT, (A.TLF,), S.STOPPED),
            (S.OPENED, (A.TLD, A.IRC, A.STR), S.STOPPING),
        ],
        E.RXR: [(s, (A.SER,) if s is S.OPENED else (), s) for s in State if s >= S.CLOSED],
    }
    return {(state, event): (actions, new) for event, row in rows.items() for state, actions, new in row}


TABLE = _table()
# the restart timer runs in these states (RFC 1661 4.6)
TIMED = frozenset({State.CLOSING, State.STOPPING, State.REQ_SENT, State.ACK_RCVD, State.ACK_SENT})


@dataclass(frozen=True)
class PppConfig:
    """RFC 1661 4.6's counters and timer: Max-Terminate 2, Max-Configure 10, Max-Failure 5, restart 3 s; and how
    long the host has to authenticate."""

    restart: float = 3.0
    max_terminate: int = 2
    max_configure: int = 10
    max_failure: int = 5
    auth_timeout: float = 30.0
    max_frame: int = DEFAULT_MAX_FRAME


def parse_packet(data: bytes) -> tuple[int, int, bytes]:
    """A control packet's code, identifier and data (RFC 1661 5); PppError when its length lies. Bytes past the
    length are padding and dropped (RFC 1661 5)."""
    if len(data) < 4:
        raise PppError("packet shorter than its header")
    code, ident, length = struct.unpack("!BBH", data[:4])
    if length < 4 or length > len(data):
        raise PppError(f"length {length} with {len(data)} bytes")
    return code, ident, data[4:length]


def packet(code: int, ident: int, data: bytes = b"") -> bytes:
    return struct.pack("!BBH", code, ident, 4 + len(data)) + data


def parse_options(data: bytes) -> list[Option]:
    options: list[Option] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise PppError("option header cut short")
        kind, length = data[pos], data[pos + 1]
        if length < 2 or pos + length > len(data):
            raise PppError(f"option {kind} of length {length}")
        options.append((kind, bytes(data[pos + 2 : pos + length])))
        pos += length
    return options


def encode_options(options: list[Option]) -> bytes:
    return b"".join(bytes((kind, 2 + len(value))) + value for kind, value in options)


class Verdict(IntEnum):
    ACK = CONF_ACK
    NAK = CONF_NAK
    REJECT = CONF_REJ


class Negotiation:
    """One control protocol's automaton (LCP or IPCP): the table, the restart counter and timer, the identifiers.
    Option meanings are the subclass's (`our_options`, `check`, `nak_received`, `reject_received`); layer changes
    go to `on_up`, `on_down`, `on_finished`."""

    protocol = 0
    codes = frozenset(range(1, 8))  # the codes this protocol knows; others get Code-Reject

    def __init__(self, config: PppConfig, send: Callable[[int, bytes], None]) -> None:
        self.config = config
        self._send = send
        self.state = State.INITIAL
        self.restart_count = 0
        self.deadline: float | None = None
        self.now = 0.0
        self._ident = 0
        self._request_ident: int | None = None
        self._request_data = b""
        self._reply: tuple[int, bytes] = (CONF_ACK, b"")  # the answer scn/sca sends to the last request
        self._last_ident = 0
        self._last_packet = b""  # the packet a RUC/RXR refers to
        self.failures = 0  # Configure-Naks sent without a Configure-Ack (RFC 1661 4.6 Max-Failure)
        self.rejected_rounds = 0  # Configure-Rejects sent while not converging: bounds a peer that insists
        self.naks_received = 0
        self.closing_reason = ""
        self.history: list[tuple[State, Event, State]] = []

    # the subclass's part
    def our_options(self) -> list[Option]:
        return []

    def check(self, options: list[Option], nak_allowed: bool) -> tuple[Verdict, list[Option]]:
        return Verdict.ACK, options

    def acked(self, options: list[Option]) -> None:
        """The peer acked these of our options."""

    def peer_acked(self, options: list[Option]) -> None:
        """We acked these options of the peer."""

    def nak_received(self, options: list[Option]) -> None:
        pass

    def reject_received(self, options: list[Option]) -> None:
        pass

    def on_up(self) -> None:
        pass

    def on_down(self) -> None:
        pass

    def on_finished(self) -> None:
        pass

    # the automaton
    def fire(self, event: Event) -> None:
        """Runs `event` through TABLE; an event the state does not take is dropped (RFC 1661 "-")."""
        entry = TABLE.get((self.state, event))
        if entry is None:
            return
        actions, new = entry
        old = self.state
        self.state = new
        self.history.append((old, event, new))
        for action in actions:
            self._do(action, new)
        if new not in TIMED:
            self.deadline = None

    def _do(self, action: Action, new: State) -> None:
        config = self.config
        if action is Action.IRC:
            closing = new in (State.CLOSING, State.STOPPING)
            self.restart_count = config.max_terminate if closing else config.max_configure
        elif action is Action.ZRC:
            self.restart_count = 0
            self.deadline = self.now + config.restart
        elif action is Action.SCR:
            self._ident = (self._ident + 1) & 0xFF
            self._request_ident = self._ident
            self._request_data = encode_options(self.our_options())
            self._send(CONF_REQ, packet(CONF_REQ, self._ident, self._request_data))
            self._count_send()
        elif action is Action.SCA:
            self.failures = 0
            self.rejected_rounds = 0
            self._send(CONF_ACK, packet(CONF_ACK, self._last_ident, self._reply[1]))
        elif action is Action.SCN:
            code, data = self._reply
            self._send(code, packet(code, self._last_ident, data))
        elif action is Action.STR:
            self._ident = (self._ident + 1) & 0xFF
            self._send(TERM_REQ, packet(TERM_REQ, self._ident, self.closing_reason.encode()[:64]))
            self._count_send()
        elif action is Action.STA:
            self._send(TERM_ACK, packet(TERM_ACK, self._last_ident))
        elif action is Action.SCJ:
            self._ident = (self._ident + 1) & 0xFF
            self._send(
                CODE_REJ, packet(CODE_REJ, self._ident, self._last_packet[: self.config.max_frame - 8])
            )
        elif action is Action.SER:
            self.send_echo_reply()
        elif action is Action.TLU:
            self.on_up()
        elif action is Action.TLD:
            self.on_down()
        elif action is Action.TLF:
            self.on_finished()

    def _count_send(self) -> None:
        self.restart_count -= 1
        self.deadline = self.now + self.config.restart

    def send_echo_reply(self) -> None:
        """LCP's; other protocols have no Echo."""

    def up(self, now: float) -> None:
        self.now = now
        self.fire(Event.UP)

    def open(self, now: float) -> None:
        self.now = now
        self.fire(Event.OPEN)

    def close(self, now: float, reason: str) -> None:
        self.now = now
        self.closing_reason = reason
        self.fire(Event.CLOSE)

    def down(self, now: float) -> None:
        self.now = now
        self.fire(Event.DOWN)

    def timeout(self, now: float) -> None:
        """The restart timer ran out (call when now >= deadline)."""
        self.now = now
        if self.deadline is None or now < self.deadline:
            return
        self.deadline = None
        self.fire(Event.TO_PLUS if self.restart_count > 0 else Event.TO_MINUS)

    def receive(self, data: bytes, now: float) -> None:
        """A packet of this protocol (PppError when it cannot be read)."""
        self.now = now
        code, ident, body = parse_packet(data)
        self._last_ident = ident
        self._last_packet = data
        if code not in self.codes:
            self.fire(Event.RUC)
            return
        if code == CONF_REQ:
            options = parse_options(body)
            nak_allowed = self.failures < self.config.max_failure
            verdict, reply = self.check(options, nak_allowed)
            if verdict is Verdict.ACK:
                self._reply = (CONF_ACK, body)
                if self.state in (
                    State.REQ_SENT,
                    State.ACK_RCVD,
                    State.ACK_SENT,
                    State.OPENED,
                    State.STOPPED,
                ):
                    self.peer_acked(options)
                self.fire(Event.RCR_PLUS)
                return
            if verdict is Verdict.NAK:
                self.failures += 1
            else:
                self.rejected_rounds += 1
            self._reply = (int(verdict), encode_options(reply))
            if self.rejected_rounds > self.config.max_failure:
                # a peer that asks again for what we rejected never converges (RFC 1661 4.6's Max-Failure)
                self.closing_reason = "configuration does not converge"
                self.fire(Event.CLOSE)
                return
            self.fire(Event.RCR_MINUS)
        elif code in (CONF_ACK, CONF_NAK, CONF_REJ):
            if ident != self._request_ident:
                return  # an answer to another request: silently discarded (RFC 1661 5.2)
            if code == CONF_ACK:
                if body != self._request_data:
                    return
                self.naks_received = 0
                self.acked(parse_options(body))
                self.fire(Event.RCA)
                return
            options = parse_options(body)
            self.naks_received += 1
            if self.naks_received > self.config.max_failure + self.config.max_configure:
                self.closing_reason = "configuration does not converge"
                self.fire(Event.CLOSE)
                return
            if code == CONF_NAK:
                self.nak_received(options)
            else:
                self.reject_received(options)
            if self.state is not State.CLOSING:
                self.fire(Event.RCN)
        elif code == TERM_REQ:
            self.fire(Event.RTR)
        elif code == TERM_ACK:
            self.fire(Event.RTA)
        elif code == CODE_REJ:
            rejected = body[0] if body else 0
            # rejecting a code the automaton needs (1-7) is fatal; Echo and the like are not (RFC 1661 5.6)
            self.fire(Event.RXJ_MINUS if 1 <= rejected <= 7 else Event.RXJ_PLUS)
        else:
            self.receive_other(code, ident, body)

    def receive_other(self, code: int, ident: int, body: bytes) -> None:
        self.fire(Event.RUC)


# --- events out ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameSent:
    """A frame we send: its protocol, the packet inside (without the protocol field) and the frame's bytes before
    escaping (address/control if any, protocol, packet): the trace's and the pcap's bytes."""

    protocol: int
    payload: bytes
    frame: bytes


@dataclass(frozen=True)
class FrameReceived:
    protocol: int
    payload: bytes
    frame: bytes


@dataclass(frozen=True)
class FrameDropped:
    """A frame (or bytes) dropped: a bad FCS, a runt, too long, aborted, unreadable, or arriving in a phase that does
    not take it."""

    reason: str
    frame: bytes


@dataclass(frozen=True)
class LinkUp:
    """LCP opened (RFC 1661 3.3): the options both ends use."""

    mru: int
    magic: int
    auth: str  # "chap", "pap" or "none"


@dataclass(frozen=True)
class Authenticated:
    ok: bool
    method: str
    user: str
    reason: str = ""


@dataclass(frozen=True)
class Credentials:
    """The host's credentials, for the network to check (`PppConnection(relay_auth=True)`): the caller activates
    the context with them and answers `authorize`. `method` "none" when the host authenticates with nothing (it
    rejected our Authentication-Protocol); `chap` is (identifier, challenge, response) of a CHAP-MD5 exchange,
    whose secret the modem never sees (the network checks it, as TS 24.008 10.5.6.3's PCO carry it)."""

    method: str
    user: str
    password: str = ""
    chap: tuple[int, bytes, bytes] | None = None


@dataclass(frozen=True)
class NetworkUp:
    """IPCP opened: the host's address and the DNS servers it was given."""

    address: IPv4Address
    dns: tuple[IPv4Address, ...]


@dataclass(frozen=True)
class IpPacket:
    """An IPv4 packet from the host, and the frame that carried it (as FrameReceived's)."""

    packet: bytes
    frame: bytes = b""


@dataclass(frozen=True)
class ProtocolRejected:
    """A frame of a protocol we do not carry, answered with LCP Protocol-Reject."""

    protocol: int


@dataclass(frozen=True)
class LinkDown:
    """The link is finished (LCP's tlf or tld): the call ends (NO CARRIER)."""

    reason: str


PppEvent = (
    FrameSent
    | FrameReceived
    | FrameDropped
    | LinkUp
    | Authenticated
    | Credentials
    | NetworkUp
    | IpPacket
    | ProtocolRejected
    | LinkDown
)


# --- LCP and IPCP ----------------------------------------------------------------------------------------------


class Phase(StrEnum):
    """The link's phases (RFC 1661 3.2)."""

    DEAD = "dead"
    ESTABLISH = "establish"
    AUTHENTICATE = "authenticate"
    NETWORK = "network"
    TERMINATE = "terminate"


class PhaseEvent(StrEnum):
    OPEN = "open"  # the lower layer is up: LCP starts
    LCP_UP_AUTH = "LCP opened, authentication negotiated"
    LCP_UP = "LCP opened without authentication"
    AUTHENTICATED = "the host authenticated"
    LCP_DOWN = "LCP left Opened"
    FINISHED = "LCP finished, or the line went down"


# RFC 1661 3.2's phase diagram as a table; a pair that is not here leaves the phase as it is
PHASE_TABLE: dict[tuple[Phase, PhaseEvent], Phase] = {
    (Phase.DEAD, PhaseEvent.OPEN): Phase.ESTABLISH,
    (Phase.ESTABLISH, PhaseEvent.LCP_UP_AUTH): Phase.AUTHENTICATE,
    (Phase.ESTABLISH, PhaseEvent.LCP_UP): Phase.NETWORK,
    (Phase.TERMINATE, PhaseEvent.LCP_UP_AUTH): Phase.AUTHENTICATE,  # LCP renegotiated (RFC 1661 3.3)
    (Phase.TERMINATE, PhaseEvent.LCP_UP): Phase.NETWORK,
    (Phase.AUTHENTICATE, PhaseEvent.AUTHENTICATED): Phase.NETWORK,
    **{(phase, PhaseEvent.LCP_DOWN): Phase.TERMINATE for phase in (Phase.AUTHENTICATE, Phase.NETWORK)},
    **{(phase, PhaseEvent.FINISHED): Phase.DEAD for phase in Phase},
}


class AuthMethod(StrEnum):
    CHAP = "chap"
    PAP = "pap"
    NONE = "none"


def _auth_option(method: AuthMethod) -> Option:
    if method is AuthMethod.CHAP:
        return (OPT_AUTH, struct.pack("!HB", PROTO_CHAP, CHAP_MD5))
    return (OPT_AUTH, struct.pack("!H", PROTO_PAP))


class Lcp(Negotiation):
    protocol = PROTO_LCP
    codes = frozenset(range(1, 12))

    def __init__(self, conn: PppConnection) -> None:
        super().__init__(conn.config, lambda code, data: conn._send_control(PROTO_LCP, data))
        self.conn = conn
        self.magic = conn._new_magic()
        self.peer_magic = 0
        self.auth = conn.auth_methods[0] if conn.auth_methods else AuthMethod.NONE
        self._auth_tried = [self.auth]
        self.asking = {OPT_ACCM, OPT_MAGIC, OPT_PFC, OPT_ACFC, OPT_AUTH}
        self.loops = 0  # Configure-Requests carrying our own magic number (RFC 1661 6.4)
        # what the peer asked us to do when sending, and what we asked of it
        self.peer_mru = DEFAULT_MRU
        self.peer_accm = DEFAULT_ACCM
        self.peer_pfc = False
        self.peer_acfc = False
        self.our_accm = 0

    def our_options(self) -> list[Option]:
        options: list[Option] = []
        if OPT_ACCM in self.asking:
            options.append((OPT_ACCM, struct.pack("!I", self.our_accm)))
        if OPT_AUTH in self.asking and self.auth is not AuthMethod.NONE:
            options.append(_auth_option(self.auth))
        if OPT_MAGIC in self.asking:
            options.append((OPT_MAGIC, struct.pack("!I", self.magic)))
        if OPT_PFC in self.asking:
            options.append((OPT_PFC, b""))
        if OPT_ACFC in self.asking:
            options.append((OPT_ACFC, b""))
        return options

    def check(self, options: list[Option], nak_allowed: bool) -> tuple[Verdict, list[Option]]:
        rejects: list[Option] = []
        naks: list[Option] = []
        for kind, value in options:
            if kind == OPT_MRU and len(value) == 2:
                if struct.unpack("!H", value)[0] < MIN_MRU:
                    naks.append((kind, struct.pack("!H", DEFAULT_MRU)))
            elif (kind == OPT_ACCM and len(value) == 4) or (kind in (OPT_PFC, OPT_ACFC) and not value):
                pass
            elif kind == OPT_MAGIC and len(value) == 4:
                magic = struct.unpack("!I", value)[0]
                if magic == 0:
                    rejects.append((kind, value))  # 0 is not a magic number (RFC 1661 6.4)
                elif magic == self.magic and OPT_MAGIC in self.asking:
                    # our own number back: perhaps a looped-back line; both ends choose anew (RFC 1661 6.4)
                    self.loops += 1
                    self.magic = self.conn._new_magic()
                    naks.append((kind, struct.pack("!I", self.conn._new_magic())))
            else:
                # the host asking us to authenticate (we are the network), or an option we do not know
                rejects.append((kind, value))
        if rejects:
            return Verdict.REJECT, rejects
        if naks:
            return (Verdict.NAK, naks) if nak_allowed else (Verdict.REJECT, naks)
        return Verdict.ACK, options

    def peer_acked(self, options: list[Option]) -> None:
        self.peer_mru, self.peer_accm, self.peer_pfc, self.peer_acfc = DEFAULT_MRU, DEFAULT_ACCM, False, False
        for kind, value in options:
            if kind == OPT_MRU:
                self.peer_mru = struct.unpack("!H", value)[0]
            elif kind == OPT_ACCM:
                self.peer_accm = struct.unpack("!I", value)[0]
            elif kind == OPT_MAGIC:
                self.peer_magic = struct.unpack("!I", value)[0]
            elif kind == OPT_PFC:
                self.peer_pfc = True
            elif kind == OPT_ACFC:
                self.peer_acfc = True

    def nak_received(self, options: list[Option]) -> None:
        for kind, value in options:
            if kind == OPT_MAGIC:
                self.magic = self.conn._new_magic()
            elif kind == OPT_ACCM and len(value) == 4:
                self.our_accm |= struct.unpack("!I", value)[0]
            elif kind == OPT_AUTH:
                self._other_auth(value)

    def _other_auth(self, suggested: bytes) -> None:
        """The host naks our Authentication-Protocol: take its suggestion if we offer it, else the next of ours;
        with none left, the link closes (we require authentication for this context)."""
        wanted = None
        if suggested[:2] == struct.pack("!H", PROTO_PAP):
            wanted = AuthMethod.PAP
        elif suggested[:3] == struct.pack("!HB", PROTO_CHAP, CHAP_MD5):
            wanted = AuthMethod.CHAP
        candidates = [m for m in self.conn.auth_methods if m not in self._auth_tried]
        if wanted in self.conn.auth_methods and wanted is not self.auth:
            self.auth = wanted
        elif candidates:
            self.auth = candidates[0]
        else:
            self.conn._fail("the host takes none of our authentication protocols")
            return
        self._auth_tried.append(self.auth)

    def reject_received(self, options: list[Option]) -> None:
        for kind, _ in options:
            if kind == OPT_AUTH and self.conn.relay_auth:
                # the network decides: the host goes on without credentials, as a modem lets it
                self.auth = AuthMethod.NONE
                self.asking.discard(kind)
                continue
            if kind == OPT_AUTH:
                self.conn._fail("the host refuses to authenticate")
                return
            self.asking.discard(kind)

    def on_up(self) -> None:
        self.conn._lcp_up()

    def on_down(self) -> None:
        self.conn._lcp_down()

    def on_finished(self) -> None:
        self.conn._finished(self.closing_reason or "LCP finished")

    def receive_other(self, code: int, ident: int, body: bytes) -> None:
        if code == PROTO_REJ:
            rejected = struct.unpack("!H", body[:2])[0] if len(body) >= 2 else 0
            self.fire(Event.RXJ_MINUS if rejected == PROTO_LCP else Event.RXJ_PLUS)
            self.conn._protocol_rejected_by_peer(rejected)
        elif code == ECHO_REQ:
            self.fire(Event.RXR)
        elif code in (ECHO_REP, DISCARD_REQ):
            self.fire(Event.RXR)  # nothing to send: RXR's ser is for Echo-Request only
        else:
            self.fire(Event.RUC)

    def send_echo_reply(self) -> None:
        code, ident, _ = parse_packet(self._last_packet)
        if code != ECHO_REQ:
            return
        rest = self._last_packet[8 : struct.unpack("!H", self._last_packet[2:4])[0]]
        reply = packet(
            ECHO_REP, ident, struct.pack("!I", self.magic if OPT_MAGIC in self.asking else 0) + rest
        )
        self.conn._send_control(PROTO_LCP, reply)

    def protocol_reject(self, protocol: int, info: bytes) -> None:
        self._ident = (self._ident + 1) & 0xFF
        data = struct.pack("!H", protocol) + info[: max(0, self.peer_mru - 6)]
        self.conn._send_control(PROTO_LCP, packet(PROTO_REJ, self._ident, data))


class Ipcp(Negotiation):
    protocol = PROTO_IPCP

    def __init__(self, conn: PppConnection) -> None:
        super().__init__(conn.config, lambda code, data: conn._send_control(PROTO_IPCP, data))
        self.conn = conn
        self.asking = {OPT_IP_ADDRESS}

    def our_options(self) -> list[Option]:
        if OPT_IP_ADDRESS in self.asking:
            return [(OPT_IP_ADDRESS, self.conn.local_address.packed)]
        return []

    def check(self, options: list[Option], nak_allowed: bool) -> tuple[Verdict, list[Option]]:
        conn = self.conn
        dns = list(conn.dns)
        wanted = {
            OPT_IP_ADDRESS: conn.peer_address.packed,
            OPT_PRIMARY_DNS: dns[0].packed if dns else None,
            OPT_SECONDARY_DNS: (dns[1] if len(dns) > 1 else dns[0]).packed if dns else None,
        }
        rejects: list[Option] = []
        naks: list[Option] = []
        for kind, value in options:
            right = wanted.get(kind)
            if right is None or len(value) != 4:
                rejects.append((kind, value))  # IP-Compression, NBNS, IP-Addresses: not offered
            elif value != right:
                naks.append((kind, right))
        if rejects:
            return Verdict.REJECT, rejects
        if naks:
            return (Verdict.NAK, naks) if nak_allowed else (Verdict.REJECT, naks)
        return Verdict.ACK, options

    def reject_received(self, options: list[Option]) -> None:
        for kind, _ in options:
            self.asking.discard(kind)

    def on_up(self) -> None:
        self.conn._network_up()

    def on_down(self) -> None:
        self.conn.network_open = False

    def on_finished(self) -> None:
        self.conn.network_open = False
        if self.conn.lcp.state is State.OPENED:
            self.conn.close("IPCP finished", self.now)


@dataclass
class Counters:
    """Bytes and packets of IPv4 each way (the per-context counters of the data call)."""

    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    dropped_frames: int = 0


@dataclass
class PppConnection:
    """The network side of one PPP link. `open` starts LCP (the modem speaks first after CONNECT); feed the host's
    bytes to `receive_data`, call `handle_timer` at `deadline`, send `data_to_send()`, and `send_ip` the packets
    toward the host. `user`/`password` are the context's: with a user or password the host must authenticate.
    With `relay_auth` the modem checks nothing: the host's PAP/CHAP answer (or none) comes out as Credentials and
    the link waits in the authentication phase for `authorize` (the network's verdict on the activation)."""

    local_address: IPv4Address
    peer_address: IPv4Address
    dns: tuple[IPv4Address, ...] = ()
    user: str = ""
    password: str = ""
    auth_methods: tuple[AuthMethod, ...] = (AuthMethod.CHAP, AuthMethod.PAP)
    config: PppConfig = field(default_factory=PppConfig)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    name: str = "bipsim"
    relay_auth: bool = False

    def __post_init__(self) -> None:
        if not (self.user or self.password) and not self.relay_auth:
            self.auth_methods = ()
        self.deframer = Deframer(max_frame=self.config.max_frame)
        self._out = bytearray()
        self._events: list[PppEvent] = []
        self.lcp = Lcp(self)
        self.ipcp = Ipcp(self)
        self.phase = Phase.DEAD
        self.network_open = False
        self.dead = False
        self.counters = Counters()
        self._auth_deadline: float | None = None
        self._chap_ident = 0
        self._chap_challenge = b""
        self._chap_deadline: float | None = None
        self._chap_tries = 0
        self._chap_verdict: bytes | None = (
            None  # the Success/Failure sent, repeated to a retransmitted Response
        )
        self._pending: tuple[AuthMethod, int] | None = None  # credentials out, awaiting `authorize`
        self._pending_user = ""
        self._held_ipcp: bytes | None = None
        self._pap_verdict: tuple[bool, bytes] = (False, b"")
        self.now = 0.0

    # --- the caller's side ---
    def open(self, now: float) -> list[PppEvent]:
        self.now = now
        self._phase(PhaseEvent.OPEN)
        self.lcp.up(now)
        self.lcp.open(now)
        return self._take()

    def close(self, reason: str, now: float) -> list[PppEvent]:
        """Ends the link (Terminate-Request; LinkDown once answered or after Max-Terminate)."""
        self.now = now
        self.lcp.close(now, reason)
        return self._take()

    def lower_down(self, now: float) -> list[PppEvent]:
        """The line is gone (DTR dropped, carrier lost): no packet can be sent any more."""
        self.now = now
        self.lcp.down(now)
        self._finished("the line went down")
        return self._take()

    @property
    def deadline(self) -> float | None:
        times = [
            t
            for t in (self.lcp.deadline, self.ipcp.deadline, self._auth_deadline, self._chap_deadline)
            if t is not None
        ]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[PppEvent]:
        self.now = now
        for fsm in (self.lcp, self.ipcp):
            if fsm.deadline is not None and now >= fsm.deadline:
                fsm.timeout(now)
        if self._chap_deadline is not None and now >= self._chap_deadline:
            self._chap_deadline = None
            if self._chap_tries < self.config.max_configure:
                self._send_challenge()
        if self._auth_deadline is not None and now >= self._auth_deadline:
            self._auth_deadline = None
            self._chap_deadline = None
            self._events.append(
                Authenticated(False, self.lcp.auth.value, "", "the host did not authenticate")
            )
            self._fail("the host did not authenticate in time")
        return self._take()

    def authorize(
        self,
        ok: bool,
        now: float,
        *,
        address: IPv4Address | None = None,
        dns: tuple[IPv4Address, ...] | None = None,
        reason: str = "",
    ) -> list[PppEvent]:
        """The network's verdict on the Credentials given out: the host's PAP Ack/Nak or CHAP Success/Failure,
        then IPCP with `address`/`dns` (the activated context's) or the link's end (RFC 1334 2.2, RFC 1994 4.2)."""
        self.now = now
        pending, self._pending = self._pending, None
        if pending is None or self.dead:
            return self._take()
        method, ident = pending
        if address is not None:
            self.peer_address = address
        if dns is not None:
            self.dns = dns
        message = b"welcome" if ok else (reason or "activation rejected").encode("latin-1", "replace")[:200]
        if method is AuthMethod.PAP:
            self._pap_verdict = (ok, message)
            self._send(PROTO_PAP, packet(2 if ok else 3, ident, bytes((len(message),)) + message))
        elif method is AuthMethod.CHAP:
            self._chap_verdict = packet(3 if ok else 4, ident, message)
            self._send(PROTO_CHAP, self._chap_verdict)
        if method is AuthMethod.NONE:
            if ok:
                self._phase(PhaseEvent.AUTHENTICATED)
                self._network_phase()
            else:
                self._fail(reason or "activation rejected")
        else:
            self._authenticated(ok, method, self._pending_user, reason)
        held, self._held_ipcp = self._held_ipcp, None
        if held is not None and ok and self.phase is Phase.NETWORK:
            try:
                self.ipcp.receive(held, now)
            except PppError as exc:
                self._drop(f"malformed: {exc}", held)
        return self._take()

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def send_ip(self, ip_packet: bytes) -> list[PppEvent]:
        """An IPv4 packet toward the host; dropped (FrameDropped) while IPCP is not open or when it passes the
        host's MRU."""
        if not self.network_open:
            return [FrameDropped("network phase not open", ip_packet[:64])]
        if len(ip_packet) > self.lcp.peer_mru:
            return [FrameDropped(f"packet of {len(ip_packet)} bytes over the host's MRU", ip_packet[:64])]
        self.counters.tx_packets += 1
        self.counters.tx_bytes += len(ip_packet)
        self._send(PROTO_IP, ip_packet)
        return self._take()

    def receive_data(self, data: bytes, now: float) -> list[PppEvent]:
        self.now = now
        for item in self.deframer.frames(data):
            if isinstance(item, Dropped):
                self.counters.dropped_frames += 1
                self._events.append(FrameDropped(item.reason.value, item.wire))
                continue
            self._frame(item.data)
        return self._take()

    # --- frames ---
    def _take(self) -> list[PppEvent]:
        events, self._events = self._events, []
        return events

    def _frame(self, data: bytes) -> None:
        frame = data
        if data[:2] == bytes((ADDRESS, CONTROL)):
            data = data[2:]
        elif self.lcp.state is not State.OPENED:
            # ACFC applies only once LCP is open; before it the address and control fields are required
            self._drop("no address and control field", frame)
            return
        if not data:
            self._drop("no protocol field", frame)
            return
        if data[0] & 1:  # a one-byte (compressed) protocol field (RFC 1661 6.5)
            protocol, info = data[0], data[1:]
        elif len(data) >= 2 and data[1] & 1:
            protocol, info = (data[0] << 8) | data[1], data[2:]
        else:
            self._drop("bad protocol field", frame)
            return
        if protocol == PROTO_IP:
            if not self.network_open:
                self._drop("IP before IPCP opened", frame)
                return
            self.counters.rx_packets += 1
            self.counters.rx_bytes += len(info)
            self._events.append(IpPacket(info, frame))
            return
        self._events.append(FrameReceived(protocol, info, frame))
        try:
            if protocol == PROTO_LCP:
                self.lcp.receive(info, self.now)
            elif protocol in (PROTO_IPCP, PROTO_PAP, PROTO_CHAP):
                self._phase_frame(protocol, info, frame)
            elif self.lcp.state is State.OPENED:
                self._events.append(ProtocolRejected(protocol))
                self.lcp.protocol_reject(protocol, info)
            else:
                self._drop(f"protocol 0x{protocol:04X} before LCP opened", frame)
        except PppError as exc:
            self._drop(f"malformed: {exc}", frame)

    def _phase_frame(self, protocol: int, info: bytes, frame: bytes) -> None:
        if protocol == PROTO_IPCP:
            if self._pending is not None and self.relay_auth:
                # the network is deciding: the host's eager IPCP is kept for the network phase, not lost
                self._held_ipcp = info
                return
            if self.phase is not Phase.NETWORK:
                self._drop("IPCP before the network phase", frame)  # RFC 1661 3.4-3.5
                return
            self.ipcp.receive(info, self.now)
            return
        method = AuthMethod.PAP if protocol == PROTO_PAP else AuthMethod.CHAP
        if self.phase is not Phase.AUTHENTICATE or self.lcp.auth is not method:
            if (
                self.lcp.state is State.OPENED
                and method is not self.lcp.auth
                and self.phase is Phase.AUTHENTICATE
            ):
                self._drop(f"{method.value} while {self.lcp.auth.value} was negotiated", frame)
            elif self.phase is Phase.NETWORK and method is AuthMethod.PAP and self.lcp.auth is AuthMethod.PAP:
                self._pap(info, repeat=True)  # the host did not hear our Ack: answer again
            elif (
                self.phase is Phase.NETWORK and method is AuthMethod.CHAP and self.lcp.auth is AuthMethod.CHAP
            ):
                self._chap_again(info, frame)
            else:
                self._drop(f"{method.value} outside the authentication phase", frame)
            return
        if method is AuthMethod.PAP:
            self._pap(info)
        else:
            self._chap(info)

    def _drop(self, reason: str, frame: bytes) -> None:
        self.counters.dropped_frames += 1
        self._events.append(FrameDropped(reason, frame))

    def _send(self, protocol: int, payload: bytes) -> None:
        lcp = self.lcp
        link_control = protocol == PROTO_LCP
        opened = lcp.state is State.OPENED
        # LCP packets go with the defaults: address and control, two-byte protocol, every control character
        # escaped (RFC 1661 6.5-6.6, RFC 1662 7.1)
        header = b"" if (opened and lcp.peer_acfc and not link_control) else bytes((ADDRESS, CONTROL))
        if opened and lcp.peer_pfc and not link_control and protocol < 0x100:
            proto = bytes((protocol,))
        else:
            proto = struct.pack("!H", protocol)
        frame = header + proto + payload
        accm = DEFAULT_ACCM if (link_control or not opened) else lcp.peer_accm
        self._out += encode_frame(frame, accm)
        self._events.append(FrameSent(protocol, payload, frame))

    def _send_control(self, protocol: int, data: bytes) -> None:
        self._send(protocol, data)

    def _new_magic(self) -> int:
        return self.rng.randrange(1, 1 << 32)

    # --- phases ---
    def _lcp_up(self) -> None:
        lcp = self.lcp
        if OPT_ACCM in lcp.asking:
            self.deframer.accm = lcp.our_accm
        self._events.append(LinkUp(lcp.peer_mru, lcp.magic, lcp.auth.value))
        if lcp.auth is AuthMethod.NONE and self.relay_auth:
            self._phase(PhaseEvent.LCP_UP_AUTH)  # the network still decides, on no credentials
            self._pending, self._pending_user = (AuthMethod.NONE, 0), ""
            self._events.append(Credentials(AuthMethod.NONE.value, ""))
            return
        if lcp.auth is AuthMethod.NONE:
            self._phase(PhaseEvent.LCP_UP)
            self._network_phase()
            return
        self._phase(PhaseEvent.LCP_UP_AUTH)
        self._auth_deadline = self.now + self.config.auth_timeout
        if lcp.auth is AuthMethod.CHAP:
            self._chap_tries = 0
            self._send_challenge()

    def _lcp_down(self) -> None:
        self.network_open = False
        self._pending = self._held_ipcp = None
        self._phase(PhaseEvent.LCP_DOWN)
        self.ipcp.down(self.now)

    def _phase(self, event: PhaseEvent) -> None:
        self.phase = PHASE_TABLE.get((self.phase, event), self.phase)

    def _network_phase(self) -> None:
        self._auth_deadline = None
        self.ipcp.up(self.now)
        self.ipcp.open(self.now)

    def _network_up(self) -> None:
        self.network_open = True
        self._events.append(NetworkUp(self.peer_address, self.dns))

    def _finished(self, reason: str) -> None:
        if self.dead:
            return
        self.dead = True
        self._phase(PhaseEvent.FINISHED)
        self.network_open = False
        self._auth_deadline = self._chap_deadline = None
        self.ipcp.deadline = None
        self._events.append(LinkDown(reason))

    def _fail(self, reason: str) -> None:
        """A rule of the link is broken beyond repair (authentication, convergence): LCP closes."""
        if self.lcp.state in (State.CLOSING, State.CLOSED, State.STOPPED, State.STOPPING):
            return
        self.lcp.close(self.now, reason)

    def _protocol_rejected_by_peer(self, protocol: int) -> None:
        if protocol == PROTO_IPCP:
            self._fail("the host rejects IPCP")

    # --- authentication (RFC 1334 PAP, RFC 1994 CHAP) ---
    def _pap(self, info: bytes, *, repeat: bool = False) -> None:
        try:
            code, ident, body = parse_packet(info)
            if code != 1:
                raise PppError(f"PAP code {code}")
            user_length = body[0]
            user = body[1 : 1 + user_length]
            password_length = body[1 + user_length]
            password = body[2 + user_length : 2 + user_length + password_length]
            if len(password) != password_length or len(user) != user_length:
                raise PppError("PAP fields cut short")
        except (PppError, IndexError) as exc:
            self._drop(f"malformed PAP: {exc}", info)
            return
        if self.relay_auth:
            if repeat:  # the host did not hear our verdict: the same again
                ok, message = self._pap_verdict
                self._send(PROTO_PAP, packet(2 if ok else 3, ident, bytes((len(message),)) + message))
            elif self._pending is None:
                self._auth_deadline = None
                self._pending, self._pending_user = (AuthMethod.PAP, ident), user.decode("latin-1")
                self._events.append(
                    Credentials(AuthMethod.PAP.value, user.decode("latin-1"), password.decode("latin-1"))
                )
            return
        ok = (user.decode("latin-1"), password.decode("latin-1")) == (self.user, self.password)
        message = b"welcome" if ok else b"wrong user or password"
        self._send(PROTO_PAP, packet(2 if ok else 3, ident, bytes((len(message),)) + message))
        if repeat:
            return
        self._authenticated(ok, AuthMethod.PAP, user.decode("latin-1"))

    def _send_challenge(self) -> None:
        self._chap_tries += 1
        self._chap_ident = (self._chap_ident + 1) & 0xFF
        self._chap_challenge = bytes(self.rng.getrandbits(8) for _ in range(16))
        name = self.name.encode()
        body = bytes((len(self._chap_challenge),)) + self._chap_challenge + name
        self._send(PROTO_CHAP, packet(1, self._chap_ident, body))
        self._chap_deadline = self.now + self.config.restart

    def _chap(self, info: bytes) -> None:
        try:
            code, ident, body = parse_packet(info)
            if code != 2:
                raise PppError(f"CHAP code {code} from the host")
            size = body[0]
            value = body[1 : 1 + size]
            if size != 16 or len(value) != 16:
                raise PppError(f"CHAP-MD5 value of {size} bytes")
            user = body[1 + size :].decode("latin-1")
        except (PppError, IndexError) as exc:
            self._drop(f"malformed CHAP: {exc}", info)
            return
        if ident != self._chap_ident:
            self._drop("CHAP Response to another Challenge", info)
            return
        if self.relay_auth:
            if self._pending is None:
                self._chap_deadline = self._auth_deadline = None
                self._pending, self._pending_user = (AuthMethod.CHAP, ident), user
                self._events.append(
                    Credentials(AuthMethod.CHAP.value, user, chap=(ident, self._chap_challenge, value))
                )
            return
        expected = hashlib.md5(bytes((ident,)) + self.password.encode() + self._chap_challenge).digest()
        ok = value == expected and user == self.user
        message = b"welcome" if ok else b"wrong user or password"
        self._chap_verdict = packet(3 if ok else 4, ident, message)
        self._send(PROTO_CHAP, self._chap_verdict)
        self._chap_deadline = None
        self._authenticated(ok, AuthMethod.CHAP, user)

    def _chap_again(self, info: bytes, frame: bytes) -> None:
        """A Response to the Challenge already answered: the same Success again (RFC 1994 4.1: the Success
        may be lost, the authenticator answers the retransmission in kind)."""
        try:
            code, ident, _ = parse_packet(info)
        except PppError as exc:
            self._drop(f"malformed CHAP: {exc}", frame)
            return
        verdict = self._chap_verdict
        if code != 2 or ident != self._chap_ident or verdict is None or verdict[0] != 3:
            self._drop("CHAP outside the authentication phase", frame)
            return
        self._send(PROTO_CHAP, verdict)

    def _authenticated(self, ok: bool, method: AuthMethod, user: str, reason: str = "") -> None:
        reason = reason or "wrong user or password"
        self._events.append(Authenticated(ok, method.value, user, "" if ok else reason))
        if ok:
            self._phase(PhaseEvent.AUTHENTICATED)
            self._network_phase()
        else:
            self._fail("authentication failed")  # RFC 1994 4.2 / RFC 1334 2.2: the authenticator terminates


def chap_md5_response(ident: int, secret: str, challenge: bytes) -> bytes:
    """The CHAP-MD5 value (RFC 1994 4.1): MD5 of the identifier, the secret and the challenge."""
    return hashlib.md5(bytes((ident,)) + secret.encode() + challenge).digest()
