"""The fuzz properties, one function per parser that reads a peer's bytes: bad input from a peer is data, never a
crash.

Each function takes what a peer could send and checks that the parser answers with its typed error or the
protocol's own answer, never another exception, and that its buffers stay bounded. The hypothesis tests in this
folder and the atheris targets in tests/fuzz/atheris/ call the same functions; `chunks_of` turns one atheris input
into the reads a line would deliver.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
import trio.testing

from bipsim.ap.apn_db import ApnDatabase
from bipsim.ap.network import ApNetwork
from bipsim.ap.proxy import ProxyService
from bipsim.link.at_chat import AtChat, AtResponse, AtTimeout
from bipsim.link.at_chat_core import Answered, AtChatCore, Command, Failed, Traced, UrcLine, Write
from bipsim.link.at_server import AtServer
from bipsim.link.at_syntax import (
    MAX_LINE,
    AtRequest,
    AtSyntaxError,
    LineAssembler,
    OverlongLine,
    ResponseSplitter,
    parse_args,
    parse_line,
)
from bipsim.link.cmux_connection import CmuxConnection, CmuxParams, Data, DlcState, MuxError, MuxRole, Timer
from bipsim.link.cmux_frame import ControlType, Frame, FrameParser, FrameType, decode_control, encode_frame
from bipsim.trace.events import TraceEvent
from bipsim.trace.reader import TraceProblem, parse_lines, read_file, read_trace
from bipsim.uicc import cat
from bipsim.uicc.bip_engine import BipConfig, BipEngine
from bipsim.uicc.card import SimCard
from bipsim.uicc.gp_registry import GpRegistry
from bipsim.uicc.ota_agent import OtaAgent
from bipsim.uicc.ota_trigger import Counters, Keyset, SmsTriggerToolkit, Status, parse_por
from bipsim.uicc.profile import load_profile
from bipsim.uicc.tls_psk_client import (
    ContentType,
    TlsAlert,
    TlsError,
    TlsPskClient,
    TlsState,
    _Direction,
    prf,
)
from bipsim.uicc.tlv import TlvError, decode_ber, decode_ber_list, decode_ctlvs


def chunks_of(data: bytes) -> list[bytes]:
    """Splits one fuzzer input into reads: the first byte sets the read size (1..64 bytes, 0 = one read)."""
    if not data:
        return []
    size, body = data[0] % 65, data[1:]
    if size == 0:
        return [body]
    return [body[i : i + size] for i in range(0, len(body), size)]


def records_of(data: bytes) -> list[bytes]:
    """Splits one fuzzer input into length-prefixed records (a length byte, then that many bytes), for targets
    that take a sequence of messages (APDUs, TLS plaintexts)."""
    out, at = [], 0
    while at < len(data):
        size = data[at]
        out.append(data[at + 1 : at + 1 + size])
        at += 1 + size
    return out


# --- 27.010 frames (link/cmux_frame.py) ------------------------------------------------------------------------


def cmux_frames(
    reads: Sequence[bytes], *, max_info: int = 32767, pause_on_control: bool = False
) -> list[Frame]:
    """FrameParser: only well-formed frames come out, each re-encodes to bytes that parse to itself; DLC 0
    information splits into control messages or ValueError; the parser keeps at most one pending frame."""
    parser = FrameParser(max_info)
    parser.pause_on_control = pause_on_control
    frames: list[Frame] = []
    for data in reads:
        out = parser.feed(data)
        while parser.paused:  # what a mux does after a DLC 0 frame that did not close it down
            out += parser.feed(b"")
        frames += out
        # header (at most 5) + information + FCS + closing flag: one frame still to complete, nothing more
        assert len(parser._buffer) <= max_info + 7, len(parser._buffer)
    for frame in frames:
        assert isinstance(frame, Frame)
        assert 0 <= frame.dlci < 64 and isinstance(frame.type, FrameType)
        assert len(frame.info) <= max_info
        again = FrameParser(max_info).feed(
            encode_frame(frame.dlci, frame.type, frame.cr, frame.pf, frame.info)
        )
        assert again == [frame], (frame, again)
        if frame.dlci == 0 and frame.type in (FrameType.UIH, FrameType.UI):
            try:
                decode_control(frame.info)
            except ValueError:
                pass
    assert parser.bad_fcs >= 0 and parser.malformed >= 0
    return frames


# --- V.250 command lines, the DCE side (link/at_syntax.py) ---------------------------------------------------------


def at_command_lines(reads: Sequence[bytes]) -> list[AtRequest]:
    """LineAssembler + parse_line: lines are at most MAX_LINE characters (longer ones come as OverlongLine), the
    assembler keeps at most one line, and a line parses into requests or AtSyntaxError."""
    assembler = LineAssembler()
    requests: list[AtRequest] = []
    for data in reads:
        for line in assembler.feed(data):
            assert isinstance(line, str)
            if isinstance(line, OverlongLine):
                assert line.length > MAX_LINE
                continue
            assert len(line) <= MAX_LINE
            try:
                parsed = parse_line(line)
            except AtSyntaxError:
                continue
            for request in parsed:
                assert request.name and request.name == request.name.upper()
            requests += parsed
        assert len(assembler._buffer) <= MAX_LINE
    return requests


# --- TLV and CAT (uicc/tlv.py, uicc/cat.py) ------------------------------------------------------------------------


def tlv(data: bytes) -> None:
    """Every TLV entry point: TlvError or objects that re-encode to the same bytes."""
    try:
        objects = decode_ctlvs(data)
    except TlvError:
        pass
    else:
        assert b"".join(o.encode() for o in objects) == data
    try:
        one = decode_ber(data)
    except TlvError:
        pass
    else:
        assert one.encode() == data
    try:
        many = decode_ber_list(data)
    except TlvError:
        pass
    else:
        assert b"".join(o.encode() for o in many) == data


def cat_message(data: bytes) -> None:
    """Proactive commands, terminal responses, envelopes: TlvError, or a message that re-encodes to the same
    bytes and whose objects and typed views decode without raising anything but their documented ValueError."""
    for decode in (cat.decode_any, cat.decode_proactive, cat.decode_terminal_response, cat.decode_envelope):
        try:
            message = decode(data)
        except TlvError:
            continue
        assert message.encode() == data
        for item in message.items:
            fields = item.fields()
            assert isinstance(fields, dict)
            json.dumps(fields)
        assert isinstance(message.objects, list)
        message.devices  # noqa: B018 (a property that reads the device identities)
        cat.channel_data(message)
        cat.channel_data_length(message)
        cat.channel_statuses(message)
        cat.buffer_size(message)
        if isinstance(message, cat.ProactiveCommand):
            message.type_name  # noqa: B018
            cat.channel_of(message)
            try:
                cat.OpenChannel.from_command(message)
            except ValueError:
                pass
        elif isinstance(message, cat.TerminalResponse):
            message.result  # noqa: B018
            message.type_name  # noqa: B018
        else:
            message.event  # noqa: B018


# --- trace JSONL (trace/events.py, trace/reader.py) ----------------------------------------------------------------


def _check_event(event: TraceEvent) -> None:
    """An event the reader accepted is one the recorder could have written, and writes back to itself."""
    assert isinstance(event.t, float) and math.isfinite(event.t), event.t
    assert event.hex is None or (isinstance(event.hex, str) and event.hex == event.hex.upper())
    assert event.step is None or isinstance(event.step, str), event.step
    assert event.session is None or isinstance(event.session, str), event.session
    assert isinstance(event.kind, str) and isinstance(event.summary, str)
    assert event.fields is None or isinstance(event.fields, dict), event.fields
    event.data  # noqa: B018 (its bytes)
    again = TraceEvent.from_json(event.to_json())
    assert again.to_dict() == event.to_dict()


def trace_line(line: str) -> None:
    """parse_lines with a problem list never raises: each line is an event or a TraceProblem."""
    problems: list[TraceProblem] = []
    events = list(parse_lines([line], "fuzz.jsonl", problems))
    assert len(events) + len(problems) <= 1
    for event in events:
        _check_event(event)


def trace_object(obj: dict[str, Any]) -> None:
    """TraceEvent.from_dict on any JSON object: its documented ValueError/KeyError/TypeError, or a good event."""
    try:
        event = TraceEvent.from_dict(obj)
    except (ValueError, KeyError, TypeError):
        return
    _check_event(event)


# --- V.250 over a stream: the DCE server (link/at_server.py) and the DTE chat (link/at_chat.py) ----------------


async def _drain(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    while data := await stream.receive_some(65536):
        into += data


async def at_server_session(reads: Sequence[bytes], *, seconds: float = 5.0) -> bytes:
    """An AtServer (no handlers: basic commands, S registers, +CMEE) fed `reads` then end of file: it answers and
    ends, whatever the bytes. Returns what it wrote."""
    dte, dce = trio.testing.memory_stream_pair()
    server = AtServer(dce)
    written = bytearray()
    with trio.fail_after(seconds):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, dte, written)
            async with trio.open_nursery() as serving:
                serving.start_soon(server.run)
                for data in reads:
                    await dte.send_all(data)
                await dte.send_stream.aclose()
            await dce.aclose()
    return bytes(written)


async def at_chat_session(reads: Sequence[bytes], *, seconds: float = 5.0) -> AtResponse | None:
    """An AtChat (the CP on DLC 2, the AP on DLC 1) sends a command while the DCE sends `reads` then end of file:
    the command ends with a response (NO CARRIER at the latest) or AtTimeout, the reader ends, and the proxy
    dialect's %NETPAR lines parse into arguments or AtSyntaxError."""
    dte, dce = trio.testing.memory_stream_pair()
    chat = AtChat(dte, timeout=seconds / 2, resync_quiet=0.01)
    response: list[AtResponse] = []

    async def ask() -> None:
        try:
            response.append(await chat.command("AT%GETNET=1,3"))
        except AtTimeout:
            pass

    with trio.fail_after(seconds):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(chat.run)
            nursery.start_soon(_drain, dce, bytearray())
            await trio.testing.wait_all_tasks_blocked()
            async with trio.open_nursery() as asking:
                asking.start_soon(ask)
                for data in reads:
                    await dce.send_all(data)
                await dce.send_stream.aclose()
            nursery.cancel_scope.cancel()
    lines = [*chat.unsolicited, *(response[0].lines if response else ())]
    for line in lines:
        assert "\r" not in line and "\n" not in line
        if line.startswith("%NETPAR:"):
            try:
                parse_args(line[len("%NETPAR:") :])
            except AtSyntaxError:
                pass
    if response:
        response[0].cme_error  # noqa: B018 (the final's error code, -1 when it has none)
    return response[0] if response else None


# --- the card: APDUs (uicc/card.py), SMS-PP packets (uicc/ota_trigger.py), TLS records (uicc/tls_psk_client.py) --


def make_card(state_path: Path | None = None) -> SimCard:
    """The default profile's card with its real CAT application: the SMS-PP trigger around the BIP engine and the
    OTA agent; with `state_path`, its state persists there (uicc/card_state.py)."""
    profile = load_profile()
    card = SimCard(profile, state_path=state_path)
    registry = GpRegistry()
    card.attach_state("gp", registry)
    agent = OtaAgent.of_profile(card, registry)
    engine = BipEngine(BipConfig(port=1), agent)
    counters = Counters()
    card.attach_state("ota_counters", counters)
    kvn, kic, kid = profile.ota_keyset
    card.toolkit = SmsTriggerToolkit(
        engine, [Keyset(kvn, kic, kid)], counters, other_apdu=card.internal_apdu, require_cc=False
    )
    return card


def _file_shapes(card: SimCard) -> list[tuple[int, str, int, int]]:
    out: list[tuple[int, str, int, int]] = []
    todo = [card.fs.mf]
    while todo:
        node = todo.pop()
        out.append((node.fid, node.kind.value, len(node.data), node.record_length))
        todo += node.children.values()
    return sorted(out)


def card_apdus(card: SimCard, apdus: Sequence[bytes]) -> list[bytes]:
    """SimCard.process: every C-APDU gets response data + a status word, never an exception; files keep their
    size and structure, the state snapshot stays JSON and loads into a fresh card, and the card still answers a
    SELECT of the MF afterwards."""
    shapes = _file_shapes(card)
    answers = []
    for apdu in apdus:
        answer = card.process(apdu)
        assert isinstance(answer, bytes) and len(answer) >= 2
        assert answer[-2] in (
            0x61,
            0x62,
            0x63,
            0x67,
            0x68,
            0x69,
            0x6A,
            0x6B,
            0x6C,
            0x6D,
            0x6E,
            0x6F,
            0x90,
            0x91,
            0x92,
            0x93,
            0x94,
            0x98,
        ), answer.hex()
        answers.append(answer)
    assert _file_shapes(card) == shapes
    snapshot = json.loads(json.dumps(card.snapshot()))
    fresh = make_card()
    fresh._restore(snapshot)
    assert fresh.snapshot() == snapshot
    card.reset()
    assert card.process(bytes.fromhex("00A40004023F00"))[-2] == 0x61
    return answers


def sms_user_data_packet(user_data: bytes) -> None:
    """SecuredPacketReceiver.receive: an outcome with a status of TS 102 225 table 5.5, never an exception."""
    card = make_card()
    toolkit = card.toolkit
    assert isinstance(toolkit, SmsTriggerToolkit)
    outcome = toolkit.receiver.receive(user_data)
    assert isinstance(outcome.status, Status) and isinstance(outcome.por, bytes)


def sms_pp_envelope(data: bytes) -> None:
    """An SMS-PP DOWNLOAD ENVELOPE through the APDU processor: a status word, never an exception."""
    card = make_card()
    card_apdus(card, [b"\x80\xc2\x00\x00" + bytes((len(data) & 0xFF,)) + data, b"\x00\xc0\x00\x00\x00"])


def por(user_data: bytes) -> None:
    """parse_por (the OTA platform reading the card's PoR): ValueError or a response packet."""
    try:
        parse_por(user_data)
    except ValueError:
        pass


def tls_server_bytes(reads: Sequence[bytes], suites: tuple[int, ...] = (0x00AE, 0x008C, 0x00A8)) -> None:
    """TlsPskClient.receive on arbitrary server bytes: application data, TlsAlert (the peer's alert) or TlsError
    (our failure, with our alert queued for the server); never another exception. After an error the client has
    failed and says so."""
    client = TlsPskClient(b"card", bytes(16), suites, random=lambda n: bytes(n))
    client.start()
    _tls_feed(client, reads)


def tls_record(kind: int, body: bytes) -> bytes:
    return struct.pack("!B2sH", kind, b"\x03\x03", len(body)) + body


def tls_connected_client(suite: int) -> tuple[TlsPskClient, _Direction]:
    """A client that has completed a handshake with a well-behaved server, and that server's write direction:
    fuzzed plaintexts protected with it reach the client's parsers behind its record protection."""
    client = TlsPskClient(b"card", bytes(16), (suite,), random=lambda n: bytes(n))
    client.start()
    hello = b"\x03\x03" + bytes(32) + b"\x00" + struct.pack("!H", suite) + b"\x00"
    flight = b"\x02" + len(hello).to_bytes(3, "big") + hello + b"\x0e\x00\x00\x00"
    client.receive(tls_record(ContentType.HANDSHAKE, flight))
    client.data_to_send()
    client.receive(tls_record(ContentType.CHANGE_CIPHER_SPEC, b"\x01"))
    reader = client._read
    server = _Direction(reader.suite, reader.key, reader.mac_key, reader.salt, random=lambda n: bytes(n))
    verify = prf(client.master, b"server finished", hashlib.sha256(client._transcript).digest(), 12)
    finished = b"\x14" + len(verify).to_bytes(3, "big") + verify
    client.receive(tls_record(ContentType.HANDSHAKE, server.protect(ContentType.HANDSHAKE, finished)))
    assert client.connected
    return client, server


def tls_protected_records(suite: int, records: Sequence[tuple[int, bytes]], tail: bytes = b"") -> None:
    """After a good handshake: records whose plaintext is fuzzed (any content type), protected as the server
    would, then raw bytes; the same property as tls_server_bytes."""
    client, server = tls_connected_client(suite)
    stream = b"".join(tls_record(kind, server.protect(kind, plain)) for kind, plain in records) + tail
    _tls_feed(client, [stream])


def _tls_feed(client: TlsPskClient, reads: Sequence[bytes]) -> None:
    for data in reads:
        try:
            client.receive(data)
        except TlsAlert:
            assert client.state in (TlsState.CLOSED, TlsState.FAILED)
            return
        except TlsError:
            assert client.state is TlsState.FAILED
            out = client.data_to_send()
            # our last record is the alert (the client's flight may come before it in the same call)
            records = []
            while len(out) >= 5:
                records.append(out[0])
                out = out[5 + int.from_bytes(out[3:5], "big") :]
            assert not out and records and records[-1] == ContentType.ALERT, records
            return
        client.data_to_send()
        assert len(client._in) <= 5 + 16384 + 2048


def trace_file(data: bytes) -> None:
    """read_file on any bytes (binary junk, invalid UTF-8, long lines): events and problems, never an exception."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.jsonl"
        path.write_bytes(data)
        problems: list[TraceProblem] = []
        events = read_file(path, problems)
    assert len(events) + len(problems) <= data.count(b"\n") + 1
    for event in events:
        _check_event(event)


# --- the 27.010 connection core (link/cmux_connection.py) ----------------------------------------------------------

_TIMERS = (
    Timer("T1", 0),
    Timer("T1", 1),
    Timer("T1", 2),
    Timer("T2", ControlType.CLD),
    Timer("T2", ControlType.TEST),
)


def cmux_connection(
    reads: Sequence[bytes], *, initiator: bool, local: Sequence[int] = (), timers: Sequence[int] = ()
) -> None:
    """CmuxConnection on a peer's bytes, with local commands and timer expiries between the reads: never raises
    for the peer's bytes (local commands may raise their MuxError), everything it writes is well-formed frames,
    and every DLC it knows is in a state of its table."""
    conn = CmuxConnection(MuxRole.INITIATOR if initiator else MuxRole.RESPONDER, CmuxParams(n1=64))
    written = bytearray()
    steps = max(len(reads), len(local), len(timers))
    for i in range(steps):
        if i < len(local):
            op = local[i]
            try:
                if op % 4 == 0:
                    written += conn.open_dlc(op // 4 % 4)
                elif op % 4 == 1:
                    dlci = op // 4 % 4
                    written += conn.send_data(dlci, conn.generation(dlci), b"data")
                elif op % 4 == 2:
                    dlci = op // 4 % 4
                    written += conn.close_dlc(dlci, conn.generation(dlci))
                else:
                    written += conn.test(b"ping")
            except MuxError:
                pass
        if i < len(reads):
            conn.receive_data(reads[i])
        if i < len(timers):
            written += conn.timer_expired(_TIMERS[timers[i] % len(_TIMERS)])
        written += conn.data_to_send()
        for event in conn.next_events():
            if isinstance(event, Data):
                conn.consumed(event.dlci, len(event.data))
        assert len(conn.parser._buffer) <= conn.parser.max_info + 7
    check = FrameParser()
    frames = check.feed(bytes(written))
    # all consumed but the last closing flag, which may open a next frame
    assert check.bad_fcs == 0 and check.malformed == 0, bytes(written).hex()
    assert bytes(check._buffer) in (b"", b"\xf9"), bytes(written).hex()
    assert all(frame.type in FrameType for frame in frames)
    for dlci in conn.known_dlcis():
        assert isinstance(conn.dlc_state(dlci), DlcState)
    conn.take_leftover()


# --- V.250 response lines, the DTE side (link/at_syntax.py ResponseSplitter, link/at_chat_core.py AtChatCore) ----


def response_lines(reads: Sequence[bytes], *, max_line: int = MAX_LINE) -> list[str]:
    """ResponseSplitter: lines without CR/LF, at most max_line characters (longer ones as OverlongLine), at most
    one line held, and each byte looked at once (linear in the input, however long a line runs)."""
    splitter = ResponseSplitter(max_line)
    lines: list[str] = []
    fed = 0
    for data in reads:
        fed += len(data)
        for line in splitter.feed(data):
            assert "\r" not in line and "\n" not in line and line
            assert isinstance(line, OverlongLine) or len(line) <= max_line
            lines.append(line)
        assert splitter.buffered <= max_line + 1
        assert splitter.scanned <= fed
    return lines


def at_chat_core(reads: Sequence[bytes], steps: Sequence[int] = ()) -> None:
    """AtChatCore (the DTE's matching rules) between a peer's bytes and time passing: receive_data, expire and
    receive_eof never raise, and every command handed in ends, answered or failed, by the end of file. The
    commands are handed in as the adapter does: one at a time, each written (sent) when the core asks."""
    core = AtChatCore(resync_quiet=1.0)
    core.urc_prefixes = ["%WEBEVT:", "+CEREG:"]
    now = 0.0
    commands: list[Command] = []

    def drain() -> None:
        for event in core.events():
            assert isinstance(event, Write | Traced | UrcLine | Answered | Failed), event
            if isinstance(event, Write):
                core.sent(now)
            if isinstance(event, Answered):
                event.response.cme_error  # noqa: B018 (the final's error code)
                for line in event.response.lines:
                    if line.startswith("%NETPAR:"):
                        try:
                            parse_args(line[len("%NETPAR:") :])
                        except AtSyntaxError:
                            pass

    for i, data in enumerate(reads):
        step = steps[i] if i < len(steps) else 0
        if (not commands or commands[-1].done) and step % 3 == 0:
            commands.append(core.command("AT%GETNET=1,3" if step % 2 else "AT+CEREG?", now, 2.0))
            drain()
        now += (0.0, 0.5, 1.5, 3.0)[step % 4]
        core.expire(now)
        drain()
        core.receive_data(data, now)
        drain()
    core.receive_eof(now)
    drain()
    assert all(command.done for command in commands), core.state


def gp_apdus(apdus: Sequence[bytes]) -> None:
    """GpRegistry.process on remote GP commands (INSTALL, LOAD, DELETE, GET STATUS, SET STATUS): response data and
    a status word, never an exception; the registry's state stays JSON and loads back to itself."""
    registry = GpRegistry()
    for apdu in apdus:
        if not registry.handles(apdu):
            continue
        answer = registry.process(apdu)
        assert isinstance(answer, bytes) and len(answer) >= 2
    state = json.loads(json.dumps(registry.to_dict()))
    again = GpRegistry()
    again.load_dict(state)
    assert again.to_dict() == state


# --- the proxy dialect, the AP's side (ap/proxy.py: %GETNET, %WEBOPCH, %WEBCLCH on DLC 2) --------------------------


async def ap_proxy_session(reads: Sequence[bytes], *, cellular: bool = True, seconds: float = 5.0) -> bytes:
    """The AP's proxy service behind its AtServer (as ProxyService.serve sets it up), fed the CP's bytes: every
    command line is answered (OK, ERROR or +CME ERROR: n), a handler never fails by a bug (+CME ERROR: 100), and
    the server ends at end of file. No Wi-Fi, so no %WEBOPCH reaches the network."""
    network = ApNetwork(wifi=False, cellular=cellular)
    proxy = ProxyService(network, ApnDatabase.load(), lambda: "001010123456789")
    cp, ap = trio.testing.memory_stream_pair()
    server = AtServer(ap, echo=False)
    server.cmee = 1
    server.register("%GETNET", proxy.getnet)
    server.register("%WEBOPCH", proxy.webopch)
    server.register("%WEBCLCH", proxy.webclch)
    proxy.server = server
    written = bytearray()
    with trio.fail_after(seconds):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, cp, written)
            async with trio.open_nursery() as serving:
                serving.start_soon(server.run)
                for data in reads:
                    await cp.send_all(data)
                await cp.send_stream.aclose()
            await ap.aclose()
    assert b"+CME ERROR: 100" not in written, bytes(written)
    return bytes(written)


def trace_merge(files: Sequence[bytes]) -> None:
    """read_trace on several files (the merge that keeps one copy of a message both ends recorded): events in
    time order and problems, never an exception."""
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for number, data in enumerate(files):
            path = Path(folder) / f"fuzz-{number}.jsonl"
            path.write_bytes(data)
            paths.append(path)
        events, problems = read_trace(paths)
    times = [event.t for event in events]
    assert times == sorted(times)
    for event in events:
        _check_event(event)


def card_apdus_persisted(apdus: Sequence[bytes]) -> None:
    """card_apdus on a card with a state file: after the APDUs and a save, a card started from that file has the
    same state (what the card wrote is whole and loads)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "card.json"
        card = make_card(path)
        card_apdus(card, apdus)
        card.save_state()
        card.sync_state()
        again = make_card(path)
        assert again.snapshot() == card.snapshot()
