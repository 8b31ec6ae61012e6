"""The simulated UICC as a vsmartcard "vpcd" virtual card: what `bipsim card serve --vpcd HOST:PORT` runs.

pcsc-lite's vpcd reader driver (vsmartcard, virtualsmartcard/src/vpcd/vpcd.c) listens on a TCP port per reader;
a virtual card is the TCP client. Every message, both ways, is a 2-byte big-endian length and a payload. A 1-byte
payload from the reader is a control message: 0 power off, 1 power on, 2 reset (none answered), 4 get ATR
(answered with the ATR; pcscd also sends it every few hundred ms to see whether the card is still there). Any
longer payload is a C-APDU (ISO/IEC 7816-4, T=0 semantics as TS 102 221 section 7.3 gives them to the card),
answered with the R-APDU. docs/protocols.md, "The card as a PC/SC card (vpcd)", is the user's description.

`VpcdDecoder` and `VpcdSession` are sans-IO: bytes from the reader in, frames to send and trace records out;
`serve_vpcd` is the trio adapter (connect, answer, reconnect with backoff when pcscd goes away).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any, Protocol

import trio

from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.apdu_names import instruction_name
from bipsim.uicc.cat import (
    Envelope,
    EnvelopeTag,
    Event,
    decode_envelope,
    decode_proactive,
    decode_terminal_response,
)
from bipsim.uicc.tlv import TlvError
from bipsim.uicc.transitions import TransitionTable

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 35963  # vpcd's default port for reader "Virtual PCD 00 00" (0x8C7B in its reader.conf)
# The largest short C-APDU (ISO/IEC 7816-4 section 5.1: header, Lc, 255 bytes of data, Le). The card speaks T=0
# (its ATR says so), which has no extended lengths; a longer payload is not an APDU this card can have been sent.
MAX_APDU = 4 + 1 + 255 + 1
HEADER = 2


class Control(IntEnum):
    """vpcd's control bytes (vpcd.h: VPCD_CTRL_OFF, _ON, _RESET, _ATR)."""

    POWER_OFF = 0
    POWER_ON = 1
    RESET = 2
    GET_ATR = 4


@dataclass(frozen=True)
class ControlMessage:
    control: Control


@dataclass(frozen=True)
class CommandApdu:
    apdu: bytes


@dataclass(frozen=True)
class FramingError:
    """The reader sent what vpcd never sends; the connection is dropped. `reason`: zero_length, oversize,
    unknown_control, torn (the stream ended inside a message)."""

    reason: str
    detail: str


ReaderMessage = ControlMessage | CommandApdu | FramingError


def encode_frame(payload: bytes) -> bytes:
    """One vpcd message: the 2-byte big-endian length, then the payload."""
    if not 0 < len(payload) <= 0xFFFF:
        raise ValueError(f"a vpcd payload is 1..65535 bytes, not {len(payload)}")
    return len(payload).to_bytes(HEADER, "big") + payload


class VpcdDecoder:
    """Splits the reader's byte stream into messages. After a FramingError it takes nothing more (`failed`)."""

    def __init__(self, max_apdu: int = MAX_APDU) -> None:
        self.max_apdu = max_apdu
        self.failed = False
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[ReaderMessage]:
        if self.failed:
            return []
        self._buffer += data
        out: list[ReaderMessage] = []
        while len(self._buffer) >= HEADER:
            length = int.from_bytes(self._buffer[:HEADER], "big")
            if length == 0:
                return self._fail(out, "zero_length", "a message of length 0")
            if length > self.max_apdu:
                return self._fail(
                    out,
                    "oversize",
                    f"a message of {length} bytes (a short C-APDU is at most {self.max_apdu})",
                )
            if len(self._buffer) < HEADER + length:
                break
            payload = bytes(self._buffer[HEADER : HEADER + length])
            del self._buffer[: HEADER + length]
            if length == 1:
                try:
                    out.append(ControlMessage(Control(payload[0])))
                except ValueError:
                    return self._fail(out, "unknown_control", f"control byte 0x{payload[0]:02X}")
            else:
                out.append(CommandApdu(payload))
        return out

    def end(self) -> FramingError | None:
        """The stream ended: an error when it ended inside a message."""
        if self.failed or not self._buffer:
            return None
        self.failed = True
        return FramingError("torn", f"the connection ended {len(self._buffer)} bytes into a message")

    def _fail(self, out: list[ReaderMessage], reason: str, detail: str) -> list[ReaderMessage]:
        self.failed = True
        self._buffer.clear()
        out.append(FramingError(reason, detail))
        return out


class Card(Protocol):
    """What the session needs of a card (bipsim.uicc.card.SimCard)."""

    def atr(self) -> bytes: ...

    def reset(self) -> bytes: ...

    def process(self, apdu: bytes) -> bytes: ...

    def save_state(self) -> None: ...


@dataclass(frozen=True)
class Record:
    """One trace event to emit: src, dst, kind, summary, bytes, fields, error."""

    src: Actor
    dst: Actor
    kind: Kind
    summary: str
    data: bytes | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    error: bool = False


@dataclass(frozen=True)
class Exchange:
    """What one reader message led to: `frame` to send (b"" when vpcd expects no answer), `records` to trace,
    `close` when the connection must be dropped."""

    message: ReaderMessage
    frame: bytes
    records: tuple[Record, ...]
    close: bool = False


class CardPower(Enum):
    """The card in the reader, as one vpcd connection sees it."""

    UNPOWERED = "unpowered"
    POWERED = "powered"
    GONE = "gone"  # the connection ended or was dropped: nothing more is taken


class ReaderEvent(Enum):
    POWER_ON = "power on"
    POWER_OFF = "power off"
    RESET = "reset"
    GET_ATR = "get ATR"
    APDU = "APDU"
    BAD_INPUT = "bad input"
    CLOSED = "closed"


_U, _P, _G = CardPower.UNPOWERED, CardPower.POWERED, CardPower.GONE
POWER = TransitionTable[CardPower, ReaderEvent](
    "vpcd card",
    {
        (_U, ReaderEvent.POWER_ON): _P,
        (_P, ReaderEvent.POWER_ON): _P,
        # vpcd resets a card it powers on after a cold start failed; either way the card starts afresh
        (_U, ReaderEvent.RESET): _P,
        (_P, ReaderEvent.RESET): _P,
        (_U, ReaderEvent.POWER_OFF): _U,
        (_P, ReaderEvent.POWER_OFF): _U,
        (_U, ReaderEvent.GET_ATR): _U,  # pcscd's presence poll: the ATR whether powered or not
        (_P, ReaderEvent.GET_ATR): _P,
        (_P, ReaderEvent.APDU): _P,
        # pcscd powers a card on before its first APDU; an APDU without it finds the card as after a power-on
        (_U, ReaderEvent.APDU): _P,
        (_U, ReaderEvent.BAD_INPUT): _G,
        (_P, ReaderEvent.BAD_INPUT): _G,
        (_U, ReaderEvent.CLOSED): _G,
        (_P, ReaderEvent.CLOSED): _G,
    },
)
_CONTROL_EVENTS = {
    Control.POWER_ON: ReaderEvent.POWER_ON,
    Control.POWER_OFF: ReaderEvent.POWER_OFF,
    Control.RESET: ReaderEvent.RESET,
    Control.GET_ATR: ReaderEvent.GET_ATR,
}


class VpcdSession:
    """One vpcd connection of a card: decodes the reader's messages, has the card answer them, says what to
    trace. The card's power state changes only through the POWER table. The ATR is traced once per power-on,
    reset or connection; pcscd's presence polls (GET ATR every few hundred ms) are counted in `presence_polls`,
    not traced. Power off, the end of the connection and every APDU that changed the card save its state."""

    def __init__(self, card: Card, *, max_apdu: int = MAX_APDU) -> None:
        self.card = card
        self.decoder = VpcdDecoder(max_apdu)
        self.state = CardPower.UNPOWERED
        self.presence_polls = 0
        self.apdus = 0
        self.error: FramingError | None = None  # what ended the connection, when the reader sent bad input
        self._atr_traced = False

    def receive(self, data: bytes) -> list[Exchange]:
        return [self._handle(message) for message in self.decoder.feed(data)]

    def end(self) -> Exchange | None:
        """The reader closed the connection: an error exchange when it did so inside a message. Saves the
        card's state either way (the card was in effect pulled out)."""
        self.card.save_state()
        torn = self.decoder.end()
        if torn is not None:
            return self._error(torn)
        if self.state is not CardPower.GONE:
            self.state = POWER.next(self.state, ReaderEvent.CLOSED)
        return None

    def _handle(self, message: ReaderMessage) -> Exchange:
        if isinstance(message, FramingError):
            return self._error(message)
        if isinstance(message, ControlMessage):
            return self._control(message)
        return self._apdu(message)

    def _error(self, message: FramingError) -> Exchange:
        self.error = message
        if self.state is not CardPower.GONE:
            self.state = POWER.next(self.state, ReaderEvent.BAD_INPUT)
        record = Record(
            Actor.READER,
            Actor.UICC,
            Kind.VPCD_ERROR,
            f"vpcd: {message.detail}; connection dropped",
            fields={"reason": message.reason},
            error=True,
        )
        self.card.save_state()
        return Exchange(message, b"", (record,), close=True)

    def _control(self, message: ControlMessage) -> Exchange:
        control = message.control
        self.state = POWER.next(self.state, _CONTROL_EVENTS[control])
        records: list[Record] = []
        if control is Control.GET_ATR:
            atr = self.card.atr()
            if self._atr_traced:
                self.presence_polls += 1
            else:
                self._atr_traced = True
                records.append(
                    Record(Actor.UICC, Actor.READER, Kind.APDU_ATR, "ATR", atr, {"length": len(atr)})
                )
            return Exchange(message, encode_frame(atr), tuple(records))
        name = control.name.lower()
        records.append(
            Record(
                Actor.READER,
                Actor.UICC,
                Kind.VPCD_CONTROL,
                f"vpcd: {name.replace('_', ' ')}",
                None,
                {"control": name},
            )
        )
        if control is Control.POWER_OFF:
            self.card.save_state()
        else:  # power on and reset both start the card afresh (TS 102 221 section 6.2: the ATR follows)
            self.card.reset()
            self._atr_traced = False
        return Exchange(message, b"", tuple(records))

    def _apdu(self, message: CommandApdu) -> Exchange:
        self.apdus += 1
        if self.state is CardPower.UNPOWERED:
            self.card.reset()
        self.state = POWER.next(self.state, ReaderEvent.APDU)
        response = self.card.process(message.apdu)
        # what the APDU changed is in the state file before the answer leaves (a no-op when nothing changed)
        self.card.save_state()
        command_record, response_record = apdu_records(message.apdu, response)
        return Exchange(message, encode_frame(response), (command_record, response_record))


def apdu_records(command: bytes, response: bytes) -> tuple[Record, Record]:
    """The two trace events of one APDU, with the kinds and fields the CP's card driver gives them
    (cp/card_driver.py; docs/protocols.md "Traces"): apdu.command/apdu.response, or the cat.* kinds of the
    TS 102 223 commands (class 80, or A0 as GSM 11.14 sends them)."""
    cla, ins = command[0], command[1]
    sw = response[-2:].hex().upper() if len(response) >= 2 else ""
    name = instruction_name(cla, ins)
    body = _command_data(command)
    cat = cla & 0xF0 in (0x80, 0xA0)
    kind = Kind.APDU_COMMAND
    fields: dict[str, Any] = {"cla": f"{cla:02X}", "ins": f"{ins:02X}"}
    if cat and ins == 0x10:
        kind, fields, name = Kind.CAT_TERMINAL_PROFILE, {}, "TERMINAL PROFILE"
    elif cat and ins == 0x12:
        kind, fields, name = Kind.CAT_FETCH, {"length": command[4] if len(command) > 4 else 0}, "FETCH"
    elif cat and ins == 0x14:
        kind, name = Kind.CAT_TERMINAL_RESPONSE, "TERMINAL RESPONSE"
        try:
            tr = decode_terminal_response(body)
            fields = {"command": tr.type_name, "result": int(tr.result[0])}
            name = f"TERMINAL RESPONSE: {tr.type_name} (result 0x{tr.result[0]:02X})"
        except (TlvError, ValueError, IndexError):
            fields = {}
    elif cat and ins == 0xC2:
        kind, name = Kind.CAT_ENVELOPE, "ENVELOPE"
        try:
            fields = _envelope_fields(decode_envelope(body))
        except (TlvError, ValueError, IndexError):
            fields = {}
    command_record = Record(Actor.READER, Actor.UICC, kind, name, command, fields)
    if kind is Kind.CAT_FETCH and len(response) > 2:
        try:
            proactive = decode_proactive(response[:-2])
        except (TlvError, ValueError, IndexError):
            proactive = None
        if proactive is not None:
            return command_record, Record(
                Actor.UICC,
                Actor.READER,
                Kind.CAT_PROACTIVE,
                f"FETCH: {proactive.type_name}",
                response,
                {
                    "command": proactive.type_name,
                    "number": proactive.number,
                    "qualifier": proactive.qualifier,
                    "sw": sw,
                },
            )
    return command_record, Record(
        Actor.UICC, Actor.READER, Kind.APDU_RESPONSE, f"{name}: {sw}", response, {"sw": sw}
    )


def _envelope_fields(envelope: Envelope) -> dict[str, Any]:
    fields: dict[str, Any] = {"envelope": _enum_name(EnvelopeTag, envelope.tag)}
    if envelope.tag == EnvelopeTag.EVENT_DOWNLOAD and envelope.event is not None:
        fields["event"] = _enum_name(Event, envelope.event)
    return fields


def _enum_name(names: type[EnvelopeTag] | type[Event], value: int) -> str:
    try:
        return names(value).name.lower()
    except ValueError:
        return f"0x{value:02x}"


def _command_data(command: bytes) -> bytes:
    if len(command) > 5:
        return command[5 : 5 + command[4]]
    return b""


# --- the trio adapter ---------------------------------------------------------------------------------------

BACKOFF_FIRST = 0.05  # seconds before the first reconnect attempt; doubles up to BACKOFF_MAX
BACKOFF_MAX = 2.0


def _emit(tracer: Tracer, record: Record) -> None:
    tracer.emit(
        record.src,
        record.dst,
        Layer.APDU,
        record.summary,
        record.data,
        kind=record.kind,
        fields=record.fields or None,
        error=record.error,
    )


def _quickack(stream: trio.SocketStream) -> None:
    # Linux clears TCP_QUICKACK after it acks; vpcd writes a message's length and payload in two writes without
    # TCP_NODELAY, so a delayed ACK of the first would hold the second for 40-50 ms (Nagle meets delayed ACK).
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None:
        stream.setsockopt(socket.IPPROTO_TCP, quickack, 1)


async def run_connection(stream: trio.abc.Stream, session: VpcdSession, tracer: Tracer) -> str:
    """Serves one vpcd connection until it ends; returns why ("closed" by the reader, "dropped" by us after bad
    input, "failed" on a socket error). Socket options apply when it is a TCP stream."""
    tcp = stream if isinstance(stream, trio.SocketStream) else None
    if tcp is not None:
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            if tcp is not None:
                _quickack(tcp)
            data = await stream.receive_some(65536)
            if not data:
                torn = session.end()
                if torn is not None:
                    for record in torn.records:
                        _emit(tracer, record)
                return "closed"
            for exchange in session.receive(bytes(data)):
                for record in exchange.records:
                    _emit(tracer, record)
                if exchange.frame:
                    await stream.send_all(exchange.frame)  # length and payload in one write
                if exchange.close:
                    session.end()
                    return "dropped"
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        session.end()
        tracer.emit(
            Actor.UICC,
            Actor.READER,
            Layer.APP,
            f"vpcd connection failed: {exc!r}",
            kind=Kind.APP_ERROR,
            error=True,
            fields={"where": "vpcd", "error": repr(exc)},
        )
        return "failed"
    finally:
        await stream.aclose()


async def serve_vpcd(
    card: Card,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    tracer: Tracer = NULL_TRACER,
    on_status: Callable[[str], None] | None = None,
    max_connections: int | None = None,
) -> None:
    """Keeps the card inserted in the vpcd reader at HOST:PORT: connects, serves, and reconnects with backoff
    (BACKOFF_FIRST doubling to BACKOFF_MAX) whenever the connection fails or pcscd restarts. `on_status(text)`
    hears each change ("connected", "waiting", "disconnected: why") once, for the command's one-line reports.
    Returns after `max_connections` connections when given (tests), else runs until cancelled."""
    report = on_status if on_status is not None else (lambda text: None)
    delay = BACKOFF_FIRST
    connections = 0
    waiting = False
    while max_connections is None or connections < max_connections:
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            if not waiting:
                waiting = True
                report(f"waiting for the vpcd reader at {host}:{port} ({exc.strerror or exc})")
                tracer.emit(
                    Actor.UICC,
                    Actor.READER,
                    Layer.APP,
                    f"vpcd reader {host}:{port} not reachable; retrying",
                    kind=Kind.APP_EVENT,
                    fields={"event": "vpcd_waiting", "host": host, "port": port},
                )
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
            continue
        waiting = False
        delay = BACKOFF_FIRST
        connections += 1
        report(f"inserted in the vpcd reader at {host}:{port}")
        tracer.emit(
            Actor.UICC,
            Actor.READER,
            Layer.APP,
            f"connected to the vpcd reader {host}:{port}",
            kind=Kind.APP_EVENT,
            fields={"event": "vpcd_connected", "host": host, "port": port, "count": connections},
        )
        session = VpcdSession(card)
        why = await run_connection(stream, session, tracer)
        detail = f" ({session.error.detail})" if session.error is not None else ""
        report(f"vpcd connection {why}{detail} after {session.apdus} APDUs; reconnecting")
        tracer.emit(
            Actor.UICC,
            Actor.READER,
            Layer.APP,
            f"vpcd connection {why} after {session.apdus} APDUs",
            kind=Kind.APP_EVENT,
            fields={"event": "vpcd_disconnected", "reason": why, "apdus": session.apdus},
        )
        if why != "closed":
            await trio.sleep(delay)
