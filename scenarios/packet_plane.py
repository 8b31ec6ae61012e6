"""Embodiment 1 on the packet data plane (docs/protocols.md, "The packet data plane"): the CP's own IPv4/TCP stack
over a radio bearer with impairments, a PDP context deactivated under a live download, and the BIP transports
beyond the OTA session's TCP client (a UDP client channel, the UICC server mode, the DNS server request of OPEN
CHANNEL, ETSI TS 102 223 6.4.27).

Faults are caused, not timed (docs/development.md, "Fault scenarios and the soak run"): the server's bytes are held
(ServerLink) until the hook has done its fault, and the hook acts through the CP's card-control socket ('deactivate
CID', 'radio SPEC'). The only wall-clock figure is radio-outage's shortest outage, which is what it is about; the
outage ends only after the losses it must show were traced.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import trio

from bipsim.net.radio import parse_link_spec
from bipsim.scenarios.base import (
    ScenarioOptions,
    ScenarioResult,
    channel_status_envelopes,
    check,
    check_ota_completed,
    proactive_commands,
    terminal_responses,
)
from bipsim.scenarios.campaigns import applet_download
from bipsim.scenarios.harness import EventQuery, Harness, HarnessError, RunConfig, RunResult, run_processes
from bipsim.trace.kinds import Kind
from bipsim.uicc.cat import Tag, decode_terminal_response

if TYPE_CHECKING:
    from bipsim.net.tcp_segment import TcpSegment

WAIT = 60.0  # seconds a moment may take to come: only a broken run waits this long
LOSSY_LOAD = 150000  # bytes of load file: about 100 data segments, so 5 % loss surely hits some of them
DROP_OFFSET = 4000  # server bytes forwarded before the fault: past the TLS handshake, inside the load script
OUTAGE = 10.0  # seconds of 100 % loss in radio-outage
DATA_AVAILABLE = EventQuery(Kind.CAT_ENVELOPE, lambda f: f.get("event") == "data_available")
LISTENING = EventQuery(Kind.APP_EVENT, lambda f: f.get("event") == "uicc_server_listening")
TAG_DNS_SERVER_ADDRESS = 0x40  # TS 102 223 8.104


def _radio(options: ScenarioOptions, **figures: Any) -> str:
    """The scenario's radio: the options' profile (--radio) with the scenario's own figures over it."""
    return replace(parse_link_spec(options.radio), **figures).describe()


def _config(name: str, options: ScenarioOptions, **settings: Any) -> RunConfig:
    plane: dict[str, Any] = {"radio": options.radio, "network": options.network, "seed": options.seed}
    plane.update(settings)
    return RunConfig(session=name, bearer="own-stack", port_a=options.port_a, port_b=options.port_b, **plane)


def _count(run: RunResult, kind: str, **fields: object) -> int:
    return sum(
        1
        for event in run.events
        if event.kind == kind and all(event.field(name) == value for name, value in fields.items())
    )


def _retransmissions_received(run: RunResult) -> int:
    """TCP segments the CP's stack received again: data starting before the highest byte its flow already
    carried toward the CP (the gateway's retransmissions, which its own stack does not trace)."""
    from bipsim.net.errors import PacketError
    from bipsim.net.ipv4 import TCP, Ipv4Packet
    from bipsim.net.tcp_segment import TcpSegment
    from bipsim.trace.events import Actor

    high: dict[tuple[int, int], int] = {}
    seen = 0
    for event in run.events:
        if event.dst is not Actor.CP or not event.kind.startswith("tcp.") or not event.data:
            continue
        try:
            packet = Ipv4Packet.decode(event.data)
            if packet.protocol != TCP:
                continue
            segment = TcpSegment.decode(packet.payload, packet.source, packet.destination)
        except PacketError:
            continue
        if not segment.payload:
            continue
        flow = (segment.source_port, segment.destination_port)
        end = (segment.seq + len(segment.payload)) & 0xFFFFFFFF
        if flow in high and 0 < (high[flow] - segment.seq) & 0xFFFFFFFF < 1 << 31:
            seen += 1  # sequence numbers compare modulo 2**32 (RFC 9293 3.4)
        if flow not in high or 0 < (end - high[flow]) & 0xFFFFFFFF < 1 << 31:
            high[flow] = end
    return seen


def radio_lossy(options: ScenarioOptions) -> ScenarioResult:
    """5 % packet loss on the radio bearer: the OTA download (a 150 000-byte load file) still completes, the CP's
    stack and the gateway retransmitting what the link lost."""
    config = _config(
        "radio-lossy",
        options,
        radio=_radio(options, loss=0.05),
        campaign=applet_download(LOSSY_LOAD),
        timeout=240,
    )
    run = run_processes(config, options.directory)
    check_ota_completed(run)
    lost = _count(run, Kind.IP_LOST, reason="lost")
    retransmitted = _count(run, Kind.TCP_RETRANSMIT)
    check(lost > 0, "the radio lost no packet at 5 % loss", run)
    return ScenarioResult(
        "radio-lossy",
        run,
        [
            f"{lost} packets lost on the radio, {retransmitted} segments retransmitted by the CP's stack, "
            f"{_retransmissions_received(run)} received again by it"
        ],
    )


def radio_gprs(options: ScenarioOptions, campaign: str | None = None) -> ScenarioResult:
    """The GPRS profile (300 ms one way, 40 kbit/s, 100 ms jitter): the session completes; the time from the card's
    OPEN CHANNEL to the first byte from the server is measured.

    `campaign` is the server's campaign (TOML text); None, as on the command line, is the built-in example (four
    steps). Each admin exchange costs a GPRS round trip (0.6 s and more), so a test may run a one-step campaign."""
    config = _config(
        "radio-gprs", options, radio=_radio(options, **_figures("gprs")), campaign=campaign, timeout=120
    )
    run = run_processes(config, options.directory)
    check_ota_completed(run)
    opened = proactive_commands(run, "OPEN CHANNEL")
    first = next((e for e in run.events if e.kind == Kind.TCP_DATA and e.src.value == "ota"), None)
    check(bool(opened) and first is not None, "no OPEN CHANNEL or no byte from the server", run)
    assert first is not None
    delay = first.t - opened[0].t
    return ScenarioResult("radio-gprs", run, [f"OPEN CHANNEL to first byte {delay:.2f} s on gprs"])


def _figures(name: str) -> dict[str, Any]:
    profile = parse_link_spec(name)
    return {
        "name": profile.name,
        "delay": profile.delay,
        "jitter": profile.jitter,
        "rate": profile.rate,
        "queue": profile.queue,
    }


async def _contexts(harness: Harness) -> list[int]:
    answer = await harness.card_control("contexts")
    return [int(item.split("=")[0]) for item in answer.split()]


def pdp_drop(options: ScenarioOptions) -> ScenarioResult:
    """The network deactivates the PDP context in the middle of the download: the card gets Channel Status 'link
    dropped', closes the channel, opens a new one (a new context) and resumes its admin session (X-Admin-Resume),
    which completes."""

    async def drop(harness: Harness) -> None:
        assert harness.link is not None
        harness.link.hold_at(DROP_OFFSET)
        with trio.move_on_after(WAIT):
            await harness.link.reached(DROP_OFFSET)
        if harness.link.stats.to_card < DROP_OFFSET:
            raise HarnessError("the card's session never reached the download")
        if await harness.wait_for_event("cp", DATA_AVAILABLE, timeout=WAIT) is None:
            raise HarnessError("no server data reached the card")
        for cid in await _contexts(harness):
            await harness.card_control(f"deactivate {cid}")
        harness.link.hold_at(None)

    config = _config(
        "pdp-drop",
        options,
        campaign=applet_download(12000),
        server_link=True,
        card_control=True,
        during=drop,
        timeout=2 * WAIT,
    )
    run = run_processes(config, options.directory)
    check(
        bool(channel_status_envelopes(run, "dropped")),
        "no Channel Status (link dropped) reached the card",
        run,
    )
    ended = _count(run, Kind.APP_EVENT, event="pdp_deactivated")
    check(ended >= 1, "no context was deactivated", run)
    check(len(proactive_commands(run, "OPEN CHANNEL")) >= 2, "the card did not open a new channel", run)
    check_ota_completed(run)
    (card,) = run.results.values()
    check(card["resumed"] >= 1, "the card did not resume its admin session", run)
    return ScenarioResult(
        "pdp-drop", run, [f"context deactivated, session resumed {card['resumed']} time(s)"]
    )


def _segment(obj: dict[str, Any]) -> TcpSegment | None:
    """The TCP segment in a traced event's bytes (JSON form), or None."""
    from bipsim.net.errors import PacketError
    from bipsim.net.ipv4 import TCP, Ipv4Packet
    from bipsim.net.tcp_segment import TcpSegment

    text = obj.get("hex")
    if not isinstance(text, str) or not obj.get("kind", "").startswith(("tcp.", "ip.")):
        return None
    try:
        packet = Ipv4Packet.decode(bytes.fromhex(text))
        if packet.protocol != TCP:
            return None
        return TcpSegment.decode(packet.payload, packet.source, packet.destination)
    except (PacketError, ValueError):
        return None


async def _watch_cp(harness: Harness, seen: Callable[[dict[str, Any]], bool]) -> bool:
    """Feeds each event of the CP's trace, as it is written, to `seen` until it returns True (then True), or
    WAIT seconds pass (then False). The trace file is the only window into the CP (Harness.wait_for_event)."""
    index = 0
    with trio.move_on_after(WAIT):
        while True:
            events = harness.events_so_far("cp")
            for obj in events[index:]:
                if seen(obj):
                    return True
            index = len(events)
            await trio.sleep(0.02)
    return False


def radio_outage(options: ScenarioOptions, outage: float = OUTAGE, losses: int = 2) -> ScenarioResult:
    """Ten seconds of 100 % loss on the radio in the middle of the download: TCP backs off (RFC 6298) and recovers
    when the radio comes back, or the card is told (Channel Status 'link dropped') and resumes; either way the
    campaign completes.

    Both ends of the outage are events in the CP's trace, never a guess of where the retransmission timeouts fall.
    It starts once the CP has acknowledged every byte the server sent up to a point inside the download (the rest
    is held until then), so the first data segment after it is the first one the outage eats; and it ends once
    both have happened: `outage` seconds have passed (the command line runs the default), and one data segment
    toward the CP was lost `losses` times (sent, then resent at the gateway's retransmission timeout, RFC 6298
    5.4-5.5, and lost again). A short `outage` (the tests run one) ends at that event, however loaded the machine."""
    if not outage > 0:
        raise ValueError(f"outage must be a positive number of seconds, not {outage!r}")
    if losses < 1:
        raise ValueError(f"losses must be at least 1, not {losses!r}")
    restored = _radio(options)

    def acknowledged(offset: int) -> Callable[[dict[str, Any]], bool]:
        """True at the CP's segment that acknowledges `offset` bytes of the server's stream (counted from the
        server's SYN, RFC 9293 3.4)."""
        first: list[int] = []

        def seen(obj: dict[str, Any]) -> bool:
            segment = _segment(obj)
            if segment is None or obj.get("kind") == Kind.IP_LOST:
                return False
            if obj.get("dst") == "cp" and obj.get("kind") == Kind.TCP_SYN:
                first[:] = [(segment.seq + 1) & 0xFFFFFFFF]  # the server's SYN/ACK (the last connection's)
                return False
            return bool(first) and obj.get("src") == "cp" and (segment.ack - first[0]) & 0xFFFFFFFF >= offset

        return seen

    def lost_times(count: int) -> Callable[[dict[str, Any]], bool]:
        """True at the `count`th loss of one data segment toward the CP (ip.lost, direction down)."""
        counts: dict[tuple[int, int, int], int] = {}

        def seen(obj: dict[str, Any]) -> bool:
            fields = obj.get("fields") or {}
            if obj.get("kind") != Kind.IP_LOST or fields.get("direction") != "down":
                return False
            segment = _segment(obj)
            if segment is None or not segment.payload:
                return False
            key = (segment.source_port, segment.destination_port, segment.seq)
            counts[key] = counts.get(key, 0) + 1
            return counts[key] >= count

        return seen

    async def cut(harness: Harness) -> None:
        assert harness.link is not None
        harness.link.hold_at(DROP_OFFSET)
        with trio.move_on_after(WAIT):
            await harness.link.reached(DROP_OFFSET)
        if harness.link.stats.to_card < DROP_OFFSET:
            raise HarnessError("the card's session never reached the download")
        if not await _watch_cp(harness, acknowledged(harness.link.stats.to_card)):
            raise HarnessError("the CP never acknowledged the server's bytes before the outage")
        await harness.card_control("radio " + _radio(options, loss=1.0))
        harness.link.hold_at(None)  # the rest of the download meets the outage
        ends = trio.current_time() + outage
        if not await _watch_cp(harness, lost_times(losses)):
            raise HarnessError(f"no data segment toward the CP was lost {losses} times in the outage")
        await trio.sleep_until(ends)  # the outage's length is the scenario's subject, not a wait for an event
        await harness.card_control("radio " + restored)

    config = _config(
        "radio-outage",
        options,
        campaign=applet_download(12000),
        server_link=True,
        card_control=True,
        during=cut,
        timeout=4 * WAIT,
    )
    run = run_processes(config, options.directory)
    check_ota_completed(run)
    retransmitted = [e for e in run.events if e.kind == Kind.TCP_RETRANSMIT]
    lost = _count(run, Kind.IP_LOST, reason="lost")
    check(lost > 0, "nothing was lost during the outage", run)
    dropped = len(channel_status_envelopes(run, "dropped"))
    rtos = sorted({float(e.field("rto") or 0) for e in retransmitted})
    return ScenarioResult(
        "radio-outage",
        run,
        [
            f"{lost} packets lost in the outage, {len(retransmitted)} retransmissions (RTOs {rtos[:6]} s), "
            f"{dropped} link-dropped events to the card"
        ],
    )


def _udp_echo(sock: socket.socket) -> Any:
    async def serve(harness: Harness) -> None:
        udp = trio.socket.from_stdlib_socket(sock)
        while True:
            data, peer = await udp.recvfrom(65536)
            await udp.sendto(data, peer)

    return serve


def bip_udp(options: ScenarioOptions) -> ScenarioResult:
    """A UDP client channel (TS 102 223 transport level 01): three SEND DATA, each one datagram to an echo server;
    each echoed datagram reaches the card as one RECEIVE DATA unit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = _config(
        "bip-udp",
        options,
        server=False,
        cp_args=["--bip-app", f"udp:127.0.0.1:{port}:3"],
        during=_udp_echo(sock),
    )
    try:
        run = run_processes(config, options.directory)
    finally:
        sock.close()
    check(run.cp_code == 0, "the CP did not end cleanly", run)
    received = [tr for command, tr in terminal_responses(run) if command == "RECEIVE DATA"]
    units = [decode_terminal_response(tr).get(Tag.CHANNEL_DATA) for tr in received]
    payloads = [unit.value for unit in units if unit is not None]
    expected = [f"datagram {n} of 3".encode() for n in range(1, 4)]
    check(payloads == expected, f"RECEIVE DATA units {payloads!r}, not the three datagrams", run)
    datagrams = _count(run, Kind.UDP_DATAGRAM)
    check(datagrams >= 6, f"{datagrams} UDP datagrams in the CP's trace, not 3 each way", run)
    return ScenarioResult("bip-udp", run, [f"{len(payloads)} datagrams echoed, one RECEIVE DATA unit each"])


def bip_server(options: ScenarioOptions) -> ScenarioResult:
    """The UICC server mode (TS 102 223 6.4.27.5): the card listens, a client on the host connects through the
    packet gateway's forwarded port to the CP's address, the card is told (Channel Status 'TCP in ESTABLISHED
    state') and echoes the client's lines until QUIT."""
    replies: list[bytes] = []

    async def client(harness: Harness) -> None:
        event = await harness.wait_for_event("cp", LISTENING, timeout=WAIT)
        if event is None or not event.get("fields", {}).get("host_port"):
            raise HarnessError("the CP never listened for the card")
        port = int(event["fields"]["host_port"])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            for line in (b"PING 1\n", b"PING 2\n", b"QUIT\n"):
                await stream.send_all(line)
                got = b""
                with trio.move_on_after(WAIT):
                    while len(got) < len(line):
                        data = await stream.receive_some(100)
                        if not data:
                            break
                        got += data
                replies.append(got)

    config = _config("bip-server", options, server=False, cp_args=["--bip-app", "server:3516"], during=client)
    run = run_processes(config, options.directory)
    check(run.cp_code == 0, "the CP did not end cleanly", run)
    check(replies == [b"PING 1\n", b"PING 2\n", b"QUIT\n"], f"the card echoed {replies!r}", run)
    opened = [tr for command, tr in terminal_responses(run) if command == "OPEN CHANNEL"]
    status = decode_terminal_response(opened[0]).get(Tag.CHANNEL_STATUS) if opened else None
    check(
        status is not None and status.value[0] & 0xC0 == 0x40, "the OPEN CHANNEL TR did not say LISTEN", run
    )
    check(
        bool(channel_status_envelopes(run, "established")), "no Channel Status (established) to the card", run
    )
    return ScenarioResult("bip-server", run, [f"{len(replies)} lines echoed by the card"])


def bip_dns(options: ScenarioOptions) -> ScenarioResult:
    """OPEN CHANNEL asks for the DNS server addresses (TS 102 223 8.6 qualifier bit 4): the TR names the context's
    DNS server (198.51.100.1, 8.104), and the card's query over a UDP channel to it is answered by the packet
    gateway."""
    config = _config("bip-dns", options, server=False, cp_args=["--bip-app", "dns:localhost"])
    run = run_processes(config, options.directory)
    check(run.cp_code == 0, "the CP did not end cleanly", run)
    opened = [
        decode_terminal_response(tr) for command, tr in terminal_responses(run) if command == "OPEN CHANNEL"
    ]
    servers = [item.value for tr in opened for item in tr.items if item.tag == TAG_DNS_SERVER_ADDRESS]
    check(
        servers == [bytes.fromhex("21C6336401")],
        f"DNS server addresses {servers} in the OPEN CHANNEL TR",
        run,
    )
    answers = [e for e in run.events if e.kind == Kind.DNS_ANSWER]
    check(
        any("127.0.0.1" in (e.field("addresses") or []) for e in answers), "no DNS answer for localhost", run
    )
    received = [tr for command, tr in terminal_responses(run) if command == "RECEIVE DATA"]
    check(bool(received), "the card read no DNS answer", run)
    return ScenarioResult("bip-dns", run, ["198.51.100.1 in the TR; localhost answered 127.0.0.1"])
