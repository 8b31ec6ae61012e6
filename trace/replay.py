"""Replay of a recorded run against live components (`bipsim trace replay`), PROTOCOL.md section 4.

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

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from bipsim.trace.diff import Divergence, first_difference
from bipsim.trace.events import Actor, Layer, TraceEvent

SERVER_SIDE = frozenset({Actor.OTA, Actor.NET})
CLIENT_SIDE = frozenset({Actor.CP, Actor.AP})
ADDRESS = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})")


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
    return not event.hex and any(word in event.summary.lower() for word in ("fin", "close"))


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
            match = ADDRESS.search(event.summary)
            if match is not None:
                current.host, current.port = match.group(1), int(match.group(2))
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

    def describe(self) -> str:
        lines = [f"network divergence on connection {self.connection + 1}: {self.reason}"]
        if self.flight is not None:
            event = self.flight.first
            step = f" [{event.step}]" if event.step else ""
            lines.append(f"  expected{step}: {event.src.value}->{event.dst.value} {event.summary}")
            lines.append(f"    bytes: {self.flight.data.hex().upper()}")
        lines.append(f"  actual: {self.actual.hex().upper() or '(nothing)'}")
        offset = first_difference(self.flight.data if self.flight else b"", self.actual)
        if offset is not None:
            lines.append(f"    first differing byte at offset {offset}")
        return "\n".join(lines)


class RecordedServer:
    """Plays the server side of recorded connections on 127.0.0.1:`port`, one accepted connection per tape."""

    def __init__(self, tapes: Sequence[ConnectionTape], port: int, *, read_timeout: float = 10.0) -> None:
        self.tapes = list(tapes)
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
        try:
            for flight in tape.flights:
                if flight.from_server:
                    await stream.send_all(flight.data)
                else:
                    actual, problem = await self._read_exactly(stream, flight.data)
                    if problem is not None:
                        self.divergence = ServerDivergence(index, flight, actual, problem)
                        return False
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
        with self.path.open(encoding="utf-8") as handle:
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
            except (ValueError, KeyError, TypeError):
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
