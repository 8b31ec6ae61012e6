"""Replay of a recorded run against live components (`bipsim trace replay`), docs/protocols.md "Replaying a trace".

`--as card` puts the live modem (CP) under test: the recorded card (bipsim.uicc.recorded_card) answers its APDUs,
and the recorded network peer (RecordedServer, here) answers its TCP connection to the OTA server with the bytes
the server sent in the recording. Both must be recorded, not live: the card runs PSK-TLS with fresh randoms, so a
live server could not continue the recorded card's TLS session, and a live card would not produce the recorded
bytes. The AP stays live: it is the CP's peer on the serial line.

The network side of a recording is a list of connections, each a list of flights: the bytes one side sent before
the other answered (consecutive segments in one direction merge into one flight, because how a TCP stream is cut
into reads is the receiver's business). RecordedServer sends the server's flights in order and reads the client's,
comparing every byte; the first difference (or a client that stops early) is its divergence.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from bipsim.trace.diff import Divergence, first_difference
from bipsim.trace.events import Actor, Layer, TraceEvent
from bipsim.trace.kinds import Kind

SERVER_SIDE = frozenset({Actor.OTA, Actor.NET})
CLIENT_SIDE = frozenset({Actor.CP, Actor.AP})
CLOSE_KINDS = frozenset({Kind.TCP_CLOSE, Kind.TCP_CLOSED})


@dataclass
class Flight:
    """Bytes one side sent before the other side's next bytes; `events` are the recorded segments."""

    from_server: bool
    data: bytes
    events: list[TraceEvent]

    @property
    def first(self) -> TraceEvent:
        return self.events[0]


@dataclass
class ConnectionTape:
    """One recorded TCP connection from the phone (CP or AP) to the server."""

    host: str | None = None
    port: int | None = None
    flights: list[Flight] = field(default_factory=list)
    client_closed: bool = False
    server_closed: bool = False


def _closing(event: TraceEvent) -> bool:
    return not event.hex and event.kind in CLOSE_KINDS


def _address(event: TraceEvent) -> tuple[str | None, int | None]:
    """The server's host and port a tcp event names in its fields (tcp.connect carries them)."""
    host, port = event.field("host"), event.field("port")
    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
        return (host if isinstance(host, str) else None), port
    return None, None


def server_tapes(events: Iterable[TraceEvent]) -> list[ConnectionTape]:
    """The recorded connections between the phone and the server, in order, with their flights."""
    tapes: list[ConnectionTape] = []
    current: ConnectionTape | None = None
    for event in events:
        if event.layer is not Layer.TCP:
            continue
        if not ({event.src, event.dst} & SERVER_SIDE and {event.src, event.dst} & CLIENT_SIDE):
            continue
        from_server = event.src in SERVER_SIDE
        if current is None or current.client_closed or current.server_closed:
            if _closing(event):
                continue  # the acknowledgement of a close: nothing left to play
            current = ConnectionTape()
            tapes.append(current)
        if current.port is None:
            host, port = _address(event)
            if port is not None:
                current.host, current.port = host, port
        if event.hex:
            flights = current.flights
            if flights and flights[-1].from_server == from_server:
                flights[-1].data += event.data
                flights[-1].events.append(event)
            else:
                flights.append(Flight(from_server, event.data, [event]))
        elif _closing(event):
            if from_server:
                current.server_closed = True
            else:
                current.client_closed = True
    return tapes


def open_channel_address(events: Iterable[TraceEvent]) -> tuple[str, int] | None:
    """Host and port of the first recorded OPEN CHANNEL (other address, transport level), when decodable."""
    from bipsim.uicc.cat import Tag, decode_proactive

    for event in events:
        data = event.data
        if event.layer is not Layer.APDU or event.src is not Actor.UICC or data[:1] != b"\xd0":
            continue
        try:
            command = decode_proactive(data[:-2])
        except ValueError:
            continue
        if command.type != 0x40:
            continue
        transport, address = command.get(Tag.TRANSPORT_LEVEL), command.get(Tag.OTHER_ADDRESS)
        if transport is None or len(transport.value) < 3:
            return None
        host = "127.0.0.1"
        if address is not None and len(address.value) == 5 and address.value[0] == 0x21:
            host = ".".join(str(b) for b in address.value[1:])
        return host, int.from_bytes(transport.value[1:3], "big")
    return None


@dataclass(frozen=True)
class ServerDivergence:
    """The live client sent other bytes than the recording (or stopped early) in `flight`."""

    connection: int
    flight: Flight | None
    actual: bytes
    reason: str
    expected_meaning: str = ""
    actual_meaning: str = ""

    def describe(self) -> str:
        lines = [f"network divergence on connection {self.connection + 1}: {self.reason}"]
        if self.flight is not None:
            event = self.flight.first
            step = f" [{event.step}]" if event.step else ""
            lines.append(f"  expected{step}: {event.src.value}->{event.dst.value} {event.summary}")
            lines.append(f"    bytes: {self.flight.data.hex().upper()}")
            if self.expected_meaning:
                lines.append(f"    meaning: {self.expected_meaning}")
        lines.append(f"  actual: {self.actual.hex().upper() or '(nothing)'}")
        if self.actual and self.actual_meaning:
            lines.append(f"    meaning: {self.actual_meaning}")
        offset = first_difference(self.flight.data if self.flight else b"", self.actual)
        if offset is not None:
            lines.append(f"    first differing byte at offset {offset}")
        return "\n".join(lines)


class RecordedServer:
    """Plays the server side of recorded connections on 127.0.0.1:`port`, one accepted connection per tape."""

    def __init__(
        self,
        tapes: Sequence[ConnectionTape],
        port: int,
        *,
        read_timeout: float = 10.0,
        psk: bytes | None = None,
    ) -> None:
        self.tapes = list(tapes)
        self.psk = psk  # the card's PSK, to decrypt what diverged (optional)
        self.port = port
        self.read_timeout = read_timeout
        self.divergence: ServerDivergence | None = None
        self.flights_played = 0
        self.done = trio.Event()

    async def listen(self) -> list[trio.SocketListener]:
        """Binds 127.0.0.1:`port` (raises OSError when it is taken); `run` uses these listeners."""
        return await trio.open_tcp_listeners(self.port, host="127.0.0.1")

    async def run(
        self,
        listeners: list[trio.SocketListener] | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if listeners is None:
            listeners = await self.listen()
        task_status.started()
        try:
            for index, tape in enumerate(self.tapes):
                stream = await listeners[0].accept()
                async with stream:
                    if not await self._play(index, tape, stream):
                        return
        finally:
            for listener in listeners:
                await listener.aclose()
            self.done.set()

    async def _read_exactly(self, stream: trio.SocketStream, expected: bytes) -> tuple[bytes, str | None]:
        received = bytearray()
        with trio.move_on_after(self.read_timeout) as scope:
            while len(received) < len(expected):
                chunk = await stream.receive_some(len(expected) - len(received))
                if not chunk:
                    return bytes(received), "the client closed the connection early"
                received += chunk
                if not expected.startswith(received):
                    return bytes(received), "the client sent other bytes"
        if scope.cancelled_caught:
            return bytes(received), f"the client sent {len(received)} of {len(expected)} bytes, then nothing"
        return bytes(received), None

    async def _play(self, index: int, tape: ConnectionTape, stream: trio.SocketStream) -> bool:
        view = TlsView(self.psk)
        try:
            for flight in tape.flights:
                if flight.from_server:
                    await stream.send_all(flight.data)
                else:
                    actual, problem = await self._read_exactly(stream, flight.data)
                    if problem is not None:
                        if problem.startswith("the client sent other") or problem.startswith(
                            "the client closed"
                        ):
                            # read what the client had sent with it, so the meaning covers whole records
                            with trio.move_on_after(0.2):
                                while len(actual) < len(flight.data) and (
                                    chunk := await stream.receive_some(len(flight.data) - len(actual))
                                ):
                                    actual += chunk
                        self.divergence = ServerDivergence(
                            index,
                            flight,
                            actual,
                            problem,
                            view.meaning(flight.data, False),
                            view.meaning(actual, False),
                        )
                        return False
                view.feed(flight.data, flight.from_server)
                self.flights_played += 1
            if tape.client_closed and not tape.server_closed:
                with trio.move_on_after(self.read_timeout):
                    extra = await stream.receive_some(65536)
                    if extra:
                        self.divergence = ServerDivergence(
                            index, None, extra, "the client sent more bytes than the recording"
                        )
                        return False
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.divergence = ServerDivergence(index, None, b"", f"the connection failed: {exc}")
            return False
        return True


class LiveCardCheck:
    """Follows the live CP's trace file as it grows and plays its APDUs against the same recording as the CP's
    recorded card, so the replay sees the divergence (with the live event) the moment the card does."""

    def __init__(self, recorded: Iterable[TraceEvent], live_path: str | Path) -> None:
        from bipsim.uicc.recorded_card import RecordedCard

        self.card = RecordedCard(recorded)
        self.path = Path(live_path)
        self._offset = 0
        self._partial = ""
        self.commands = 0
        self.actual: TraceEvent | None = None  # the live command that diverged

    @property
    def diverged(self) -> bool:
        return self.card.divergence is not None

    def poll(self) -> None:
        """Reads the complete lines written since the last poll."""
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8", errors="replace") as handle:
            handle.seek(self._offset)
            text = handle.read()
            self._offset = handle.tell()
        text, self._partial = self._partial + text, ""
        lines = text.split("\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next poll
        for line in lines:
            if not line.strip():
                continue
            try:
                event = TraceEvent.from_json(line)
            except (ValueError, KeyError, TypeError, RecursionError):
                continue  # the trace reader reports bad lines; the check only follows APDUs
            if (
                event.layer is Layer.APDU
                and event.src is Actor.CP
                and event.dst is Actor.UICC
                and event.hex
                and not self.diverged
            ):
                self.commands += 1
                self.card.exchange(event.data)
                if self.diverged:
                    self.actual = event

    def divergence(self) -> Divergence | None:
        """The card-side divergence as trace diff shows it, or (when the CP stopped early) what it still owed."""
        problem = self.card.divergence
        if problem is not None:
            return Divergence(problem.index, problem.expected, self.actual)
        owed = self.card.next_unplayed()
        if owed is not None:
            return Divergence(self.card.recorded.index(owed), owed.command, None)
        return None


# --- decoded meaning of network bytes (server replay) ---------------------------------------------------------

RECORD_NAMES = {20: "ChangeCipherSpec", 21: "Alert", 22: "Handshake", 23: "ApplicationData"}
HANDSHAKE_NAMES = {
    1: "ClientHello",
    2: "ServerHello",
    12: "ServerKeyExchange",
    14: "ServerHelloDone",
    16: "ClientKeyExchange",
    20: "Finished",
}


def describe_http(data: bytes) -> str:
    """The request or status line and the X-Admin-* headers of an HTTP/1.1 message ('' when it is not one)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    first = head[0]
    if not (first.startswith("HTTP/1.") or first.endswith(" HTTP/1.1") or first.endswith(" HTTP/1.0")):
        return ""
    admin = [line for line in head[1:] if line.lower().startswith("x-admin-")]
    return "; ".join([first, *admin])


class TlsView:
    """Follows a recorded PSK-TLS 1.2 connection to name its records and, given the PSK, decrypt them.

    The server's random is in its recorded bytes and the client's in the recorded ClientHello, so with the card's
    PSK (its profile) the record keys derive as the card derived them (RFC 5246 section 6.3).
    """

    def __init__(self, psk: bytes | None = None) -> None:
        self.psk = psk
        self.client_random = b""
        self.server_random = b""
        self.suite: int | None = None
        # per direction (False: client, True: server): the record protection once ChangeCipherSpec went by
        self.protection: dict[bool, object] = {}
        self._pending: dict[bool, bytes] = {False: b"", True: b""}

    def _keys(self, from_server: bool) -> object | None:
        from bipsim.uicc.tls_psk_client import SUITES, _Direction, prf, psk_premaster

        if self.psk is None or self.suite not in SUITES or not self.client_random or not self.server_random:
            return None
        suite = SUITES[self.suite]
        master = prf(psk_premaster(self.psk), b"master secret", self.client_random + self.server_random, 48)
        mac, key, iv = suite.mac_length, suite.key_length, suite.fixed_iv_length
        block = prf(master, b"key expansion", self.server_random + self.client_random, 2 * (mac + key + iv))
        macs = (block[:mac], block[mac : 2 * mac])
        keys = (block[2 * mac : 2 * mac + key], block[2 * mac + key : 2 * mac + 2 * key])
        ivs = (block[2 * mac + 2 * key : 2 * mac + 2 * key + iv], block[2 * mac + 2 * key + iv :])
        side = 1 if from_server else 0
        return _Direction(suite, keys[side], macs[side], ivs[side])

    def feed(self, data: bytes, from_server: bool) -> list[str]:
        """Names the complete records of `data` (after any partial record left by the last feed)."""
        from bipsim.uicc.tls_psk_client import TlsError

        buffer = self._pending[from_server] + data
        names: list[str] = []
        while len(buffer) >= 5:
            kind, size = buffer[0], int.from_bytes(buffer[3:5], "big")
            if kind not in RECORD_NAMES or buffer[1] != 3:
                names.append(describe_http(buffer) or f"not TLS ({len(buffer)} bytes)")
                buffer = b""
                break
            if len(buffer) < 5 + size:
                break
            body, buffer = buffer[5 : 5 + size], buffer[5 + size :]
            name = RECORD_NAMES[kind]
            protection = self.protection.get(from_server)
            plain: bytes | None = body
            if protection is not None:
                try:
                    plain = protection.unprotect(kind, body)  # type: ignore[attr-defined]
                except TlsError:
                    plain = None
            elif from_server in self.protection:
                plain = None  # encrypted, but no PSK to decrypt it
            if plain is None:
                names.append(f"{name} (encrypted, {size} bytes)")
            elif kind == 22 and plain:
                handshake = HANDSHAKE_NAMES.get(plain[0], f"type {plain[0]}")
                if plain[0] == 1 and len(plain) >= 38:
                    self.client_random = plain[6:38]
                elif plain[0] == 2 and len(plain) >= 40:
                    self.server_random = plain[6:38]
                    offset = 39 + plain[38]
                    self.suite = int.from_bytes(plain[offset : offset + 2], "big")
                names.append(f"{name} {handshake}")
            elif kind == 20:
                self.protection[from_server] = self._keys(from_server)
                names.append(name)
            elif kind == 21 and len(plain) == 2:
                names.append(f"{name} level {plain[0]} description {plain[1]}")
            elif kind == 23:
                http = describe_http(plain)
                names.append(f"{name} ({len(plain)} bytes{': ' + http if http else ''})")
            else:
                names.append(name)
        self._pending[from_server] = buffer
        return names

    def meaning(self, data: bytes, from_server: bool) -> str:
        """The records of `data` as if it came next, without changing the view."""
        import copy

        return ", ".join(copy.deepcopy(self).feed(data, from_server))


# --- the recorded AP (`--as ap`) --------------------------------------------------------------------------------

FINAL_RESULTS = ("OK", "ERROR", "+CME ERROR", "+CMS ERROR", "NO CARRIER")


@dataclass
class AtCommand:
    """One AT command the AP sent before CMUX, and the lines the CP answered (echo left out)."""

    event: TraceEvent
    lines: list[str]


EDIT_TOLERANCE = 4  # bytes in which an edited recording's frame may differ from the event it carries


@dataclass
class MuxItem:
    """What one side did on one DLC: a control frame (SABM, UA, DISC, DM, or a DLC 0 message) or UIH data."""

    from_ap: bool
    data: bytes  # the payload of data items; the whole frame of control items
    control: bool
    events: list[TraceEvent]
    frames: list[bytes] = field(default_factory=list)  # the AP's recorded frames, sent as they are


@dataclass
class ApTape:
    commands: list[AtCommand]
    channels: dict[int, list[MuxItem]]


def _lines(data: bytes) -> list[str]:
    text = data.decode("latin-1").replace("\r", "\n")
    return [line.strip() for line in text.split("\n") if line.strip()]


def _one_copy(events: list[TraceEvent]) -> list[TraceEvent]:
    """A merged trace holds each CMUX frame twice (the sender's and the receiver's record); keeps the first copy.

    The receiver gets frames in the order they were sent, so a frame equal to the oldest unpaired one is its
    second copy. When not every frame pairs up, the trace was one process's and is kept as it is. A trace merged
    by trace/reader.py already holds each frame once (its events carry `t_dst`) and is kept as it is too.
    """
    if any(event.field("t_dst") is not None for event in events):
        return events
    kept: list[TraceEvent] = []
    pending: list[str] = []
    for event in events:
        if pending and event.hex == pending[0]:
            pending.pop(0)
        else:
            kept.append(event)
            pending.append(event.hex or "")
    return kept if not pending else events


def ap_tape(events: Iterable[TraceEvent]) -> ApTape:
    """The AP's recorded side: its AT commands before CMUX, and per DLC what the AP and the CP did, in order."""
    from bipsim.link.cmux_frame import FrameParser

    events = list(events)
    first_mux = next((i for i, e in enumerate(events) if e.layer is Layer.CMUX), len(events))
    commands: list[AtCommand] = []
    for event in events[:first_mux]:
        if event.layer is not Layer.AT or not event.hex:
            continue
        if event.src is Actor.AP and event.dst is Actor.CP:
            if commands and commands[-1].event.data == event.data:
                continue  # the receiver's copy, or a retry of a command the CP had not yet seen
            commands.append(AtCommand(event, []))
        elif event.src is Actor.CP and commands and event.kind != Kind.AT_ECHO:
            echo = _lines(commands[-1].event.data)
            for line in _lines(event.data):
                if line not in echo and line not in commands[-1].lines:
                    commands[-1].lines.append(line)
    # the patent steps are on the AT and BIP data events; a frame takes the step of the payload it carries
    labelled = [e for e in events if e.step and e.hex and e.layer in (Layer.AT, Layer.APP)]
    single: list[tuple[float, bool, int, MuxItem]] = []
    for from_ap in (True, False):
        src = Actor.AP if from_ap else Actor.CP
        frames = [e for e in events[first_mux:] if e.layer is Layer.CMUX and e.src is src and e.hex]
        for event in _one_copy(frames):
            for frame in FrameParser().feed(event.data):
                raw = frame.encode()
                data_item = frame.is_data
                near = [
                    e
                    for e in labelled
                    if e.src is src and frame.info and (e.data in frame.info or frame.info in e.data)
                ]
                if not near and frame.info:
                    # the payload was edited: the labelled event of the same length that differs in a few bytes
                    # (by content, not by a time window, which a loaded machine stretches)
                    near = [
                        e
                        for e in labelled
                        if e.src is src
                        and len(e.data) == len(frame.info)
                        and sum(a != b for a, b in zip(e.data, frame.info, strict=True)) <= EDIT_TOLERANCE
                    ]
                step = min(near, key=lambda e: abs(e.t - event.t)).step if near else None
                if step is not None and event.step is None:
                    event = TraceEvent.from_dict(event.to_dict() | {"step": step})
                item = MuxItem(from_ap, frame.info if data_item else raw, not data_item, [event], [raw])
                single.append((event.t, not from_ap, frame.dlci, item))
    channels: dict[int, list[MuxItem]] = {}
    for _, _, dlci, item in sorted(single, key=lambda entry: (entry[0], entry[1])):
        items = channels.setdefault(dlci, [])
        previous = items[-1] if items else None
        if previous and not item.control and not previous.control and previous.from_ap == item.from_ap:
            previous.data += item.data
            previous.events += item.events
            previous.frames += item.frames
        else:
            items.append(item)
    return ApTape(commands, channels)


@dataclass(frozen=True)
class ApDivergence:
    """The live CP sent the recorded AP other bytes than the recording (or stopped early)."""

    where: str  # "before CMUX" or "DLC n"
    reason: str
    expected: bytes
    actual: bytes
    event: TraceEvent | None

    def describe(self) -> str:
        lines = [f"divergence on {self.where}: {self.reason}"]
        step = f" [{self.event.step}]" if self.event is not None and self.event.step else ""
        summary = (
            f" {self.event.src.value}->{self.event.dst.value} {self.event.summary}" if self.event else ""
        )
        lines.append(f"  expected{step}:{summary}")
        lines.append(f"    bytes: {self.expected.hex().upper() or '(nothing)'}")
        lines.append(f"  actual: {self.actual.hex().upper() or '(nothing)'}")
        offset = first_difference(self.expected, self.actual)
        if offset is not None and self.actual:
            lines.append(f"    first differing byte at offset {offset}")
        if self.where.startswith("DLC") and self.where != "DLC 0":
            text = _printable(self.expected), _printable(self.actual)
            if any(text):
                lines.append(f"  meaning: expected {text[0]!r}, actual {text[1]!r}")
        return "\n".join(lines)


def _printable(data: bytes) -> str:
    """AT text as text; '' for binary payload (BIP data)."""
    text = data.decode("latin-1")
    return text if text and all(c.isprintable() or c in "\r\n" for c in text) else ""


class RecordedAp:
    """Plays the recorded AP on the AP's end of the serial line against a live CP.

    Before CMUX: each recorded AT command, then the CP's answer lines up to the final result are compared. On
    CMUX: per DLC, the CP's payload is compared as a byte stream (frame boundaries are the CP's business) and its
    control frames one by one; the AP's recorded frames on a DLC are sent once the CP's bytes recorded before them
    on that DLC have arrived. DLC 0 messages are matched in any order (both sides send them at once).
    """

    def __init__(self, tape: ApTape, *, read_timeout: float = 10.0, startup_timeout: float = 60.0) -> None:
        self.tape = tape
        self.read_timeout = read_timeout
        # the first command also waits for the CP process to start and open its line: a loaded machine takes
        # longer than one answer's allowance for that (the pty pair keeps the command meanwhile)
        self.startup_timeout = startup_timeout
        self.divergence: ApDivergence | None = None
        self.items_played = 0
        self._received: dict[int, bytearray] = {}
        self._controls: dict[int, list[bytes]] = {}
        self._changed = trio.Event()
        self._send_lock = trio.Lock()
        from bipsim.link.cmux_connection import CmuxConnection, MuxRole

        # the recorded AP's end of the multiplexer as the 27.010 core sees it: told what the recording sends, fed
        # what the live CP sends; its own answers are not written (the recording has its own)
        self._mux = CmuxConnection(MuxRole.INITIATOR, record_frames=True)

    def _diverge(self, divergence: ApDivergence) -> None:
        if self.divergence is None:
            self.divergence = divergence
        self._changed.set()

    async def _read_line_phase(
        self, stream: trio.abc.Stream, buffer: bytearray, command: AtCommand, timeout: float
    ) -> bool:
        echo = _lines(command.event.data)
        with trio.move_on_after(timeout):
            while True:
                lines = [line for line in _lines(bytes(buffer)) if line not in echo]
                if buffer.endswith(b"\n") and any(line.startswith(FINAL_RESULTS) for line in lines):
                    if lines != command.lines:
                        self._diverge(
                            ApDivergence(
                                "the line before CMUX",
                                f"the CP answered {command.event.summary!r} with other lines",
                                "\r\n".join(command.lines).encode(),
                                "\r\n".join(lines).encode(),
                                command.event,
                            )
                        )
                        return False
                    buffer.clear()
                    return True
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                buffer += chunk
        self._diverge(
            ApDivergence(
                "the line before CMUX",
                f"the CP did not answer {command.event.summary!r}",
                "\r\n".join(command.lines).encode(),
                bytes(buffer),
                command.event,
            )
        )
        return False

    async def run(self, stream: trio.abc.Stream) -> None:
        buffer = bytearray()
        for index, command in enumerate(self.tape.commands):
            await stream.send_all(command.event.data)
            timeout = self.startup_timeout if index == 0 else self.read_timeout
            if not await self._read_line_phase(stream, buffer, command, timeout):
                return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader, stream, nursery.cancel_scope)
            async with trio.open_nursery() as players:
                for dlci, items in self.tape.channels.items():
                    players.start_soon(self._player, stream, dlci, items)
            nursery.cancel_scope.cancel()

    async def _reader(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        from bipsim.link.cmux_connection import FrameReceived
        from bipsim.link.cmux_frame import FrameParser

        mux = self._mux
        # after a close-down the line is AT again; frames the CP still sends are compared all the same
        after = FrameParser()
        while self.divergence is None:
            data = await stream.receive_some(65536)
            if not data:
                return
            if mux.closed:
                frames = after.feed(data)
            else:
                mux.receive_data(data)
                mux.data_to_send()  # the recording answers for the AP
                frames = [e.frame for e in mux.next_events() if isinstance(e, FrameReceived)]
                if mux.closed:
                    frames += after.feed(mux.take_leftover())
            for frame in frames:
                if frame.is_data:
                    self._received.setdefault(frame.dlci, bytearray()).extend(frame.info)
                else:
                    self._controls.setdefault(frame.dlci, []).append(frame.encode())
                self._check(frame.dlci)
            self._changed.set()
            self._changed = trio.Event()

    def _check(self, dlci: int) -> None:
        """Compares what arrived on `dlci` with everything the CP sent there in the recording."""
        items = [item for item in self.tape.channels.get(dlci, []) if not item.from_ap]
        received = bytes(self._received.get(dlci, b""))
        offset = 0
        for item in (i for i in items if not i.control):
            part = received[offset : offset + len(item.data)]
            if not item.data.startswith(part):
                self._diverge(
                    ApDivergence(f"DLC {dlci}", "the CP sent other bytes", item.data, part, item.events[0])
                )
                return
            offset += len(item.data)
        if len(received) > offset:
            self._diverge(
                ApDivergence(
                    f"DLC {dlci}", "the CP sent more bytes than the recording", b"", received[offset:], None
                )
            )
            return
        expected = [item for item in items if item.control]
        controls = self._controls.get(dlci, [])
        if dlci == 0:
            pool = [item.data for item in expected]
            for frame in controls:
                if frame in pool:
                    pool.remove(frame)
                else:
                    near = expected[min(len(controls), len(expected)) - 1] if expected else None
                    self._diverge(
                        ApDivergence(
                            "DLC 0",
                            "the CP sent a control message the recording does not have",
                            near.data if near else b"",
                            frame,
                            near.events[0] if near else None,
                        )
                    )
                    return
            return
        for item, frame in zip(expected, controls, strict=False):
            if item.data != frame:
                self._diverge(
                    ApDivergence(
                        f"DLC {dlci}", "the CP sent another control frame", item.data, frame, item.events[0]
                    )
                )
                return
        if len(controls) > len(expected):
            self._diverge(
                ApDivergence(
                    f"DLC {dlci}", "the CP sent more frames than the recording", b"", controls[-1], None
                )
            )

    def _arrived(self, dlci: int, item_index: int) -> bool:
        """Whether the CP's recorded items on `dlci` before `item_index` have all arrived."""
        before = [item for item in self.tape.channels[dlci][:item_index] if not item.from_ap]
        data = sum(len(item.data) for item in before if not item.control)
        controls = sum(1 for item in before if item.control)
        return len(self._received.get(dlci, b"")) >= data and len(self._controls.get(dlci, [])) >= controls

    async def _wait(self, dlci: int, index: int) -> bool:
        with trio.move_on_after(self.read_timeout):
            while self.divergence is None and not self._arrived(dlci, index):
                await self._changed.wait()
            return self.divergence is None
        self._owed(dlci, index)
        return False

    def _owed(self, dlci: int, index: int) -> None:
        """The CP stopped early on `dlci`: report the first recorded item before `index` that has not arrived."""
        received = len(self._received.get(dlci, b""))
        controls = len(self._controls.get(dlci, []))
        data_seen = control_seen = 0
        for item in self.tape.channels[dlci][:index]:
            if item.from_ap:
                continue
            if item.control:
                control_seen += 1
                if controls < control_seen:
                    reason = "the CP did not send this frame"
                    self._diverge(ApDivergence(f"DLC {dlci}", reason, item.data, b"", item.events[0]))
                    return
            else:
                start = data_seen
                data_seen += len(item.data)
                if received < data_seen:
                    got = bytes(self._received.get(dlci, b""))[start:]
                    reason = f"the CP sent {len(got)} of {len(item.data)} bytes, then nothing"
                    self._diverge(ApDivergence(f"DLC {dlci}", reason, item.data, got, item.events[0]))
                    return

    def _dlc0_open(self) -> bool:
        """Whether the core has seen DLC 0 established (the recording's SABM, the CP's UA)."""
        return self._mux.generation(0) > 0

    def _note_sent(self, raw: bytes) -> None:
        """Tells the core what the recorded AP sends: its SABM and DISC drive the DLC table as ours would, its CLD
        the close-down. A recording's retransmission or odd command the table refuses changes nothing."""
        from bipsim.link.cmux_connection import MuxError
        from bipsim.link.cmux_frame import ControlType, FrameParser, FrameType, decode_control

        mux = self._mux
        for frame in FrameParser().feed(raw):
            try:
                if frame.type is FrameType.SABM:
                    mux.open_dlc(frame.dlci)
                elif frame.type is FrameType.DISC:
                    mux.close_dlc(frame.dlci, mux.generation(frame.dlci))
                elif frame.dlci == 0 and frame.type is FrameType.UIH:
                    if any(m.type == ControlType.CLD and m.command for m in decode_control(frame.info)):
                        mux.close_down()
            except (MuxError, ValueError):
                pass

    async def _player(self, stream: trio.abc.Stream, dlci: int, items: list[MuxItem]) -> None:
        if dlci != 0:
            # DLC 0 is established before any other (27.010 section 5.4.1; the CP answers DM otherwise), whatever
            # order the players start in
            with trio.move_on_after(self.read_timeout):
                while self.divergence is None and not self._dlc0_open():
                    await self._changed.wait()
            if not self._dlc0_open():
                return  # DLC 0's own player reports what the CP did not answer
        for index, item in enumerate(items):
            if not item.from_ap:
                continue
            if not await self._wait(dlci, index):
                return
            async with self._send_lock:
                for frame in item.frames:
                    self._note_sent(frame)
                    await stream.send_all(frame)
            self.items_played += 1
        await self._wait(dlci, len(items))
