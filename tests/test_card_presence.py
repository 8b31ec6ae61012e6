"""A card that goes away and comes back (issue 18, docs/protocols.md "Card slots and card presence on DLC 1"): the
CP keeps answering AT, +CPIN and the SIM commands answer +CME ERROR: 10 (27.007 section 9.2.1), the BIP channels
end with a trace event, +CCHO sessions are invalidated, and the card is powered on again (TERMINAL PROFILE, FETCH
loop, +CPIN: READY) when it is back: at once for a simulated card's insert(), by power-on retries with backoff on
trio's clock for a transport that only raises CardRemoved (a PC/SC reader). Time is trio's MockClock throughout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from bipsim.cp.card_slot import PRESENCE_POLL, RETRY_MAX, RETRY_MIN, SlotState
from bipsim.cp.commands import MANUFACTURER
from bipsim.cp.modem import Modem, ModemOptions, card_control_answer, serve_card_control, simulated_card
from bipsim.link.at_server import AtServer
from bipsim.trace.events import TraceEvent
from bipsim.trace.recorder import Tracer
from bipsim.uicc.cat import OpenChannel
from bipsim.uicc.ota_trigger import sms_deliver
from bipsim.uicc.sim_transport import SimulatedCard
from bipsim.uicc.transport import CardRemoved
from tests.test_cp_commands import Dte, info
from tests.test_cp_slots import AID, IMSI2, READ_IMSI, SELECT_IMSI, make_phone, second_card

SIM_COMMANDS = [
    "AT+CPIN?",
    "AT+CIMI",
    'AT+CSIM=10,"80F2000C00"',
    "AT+CRSM=176,28423,0,0,9",
    f'AT+CCHO="{AID}"',
]


class Watch:
    """Waits for trace events as they are emitted (by kind and fields, never by summary)."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self._changed = trio.Event()
        tracer.subscribe(lambda event: self._changed.set())

    def select(self, kind: str, **fields: Any) -> list[TraceEvent]:
        return [
            event
            for event in self.tracer.events
            if event.kind == kind and all((event.fields or {}).get(k) == v for k, v in fields.items())
        ]

    async def wait(self, kind: str, count: int = 1, **fields: Any) -> TraceEvent:
        with trio.fail_after(120):  # virtual seconds: a missing event fails the test instead of hanging it
            while len(self.select(kind, **fields)) < count:
                self._changed = trio.Event()
                await self._changed.wait()
        return self.select(kind, **fields)[count - 1]


class MemoryBearer:
    """A bearer whose links are memory streams; the test holds the remote ends (and so the server's answers)."""

    embodiment = 1
    name = "memory"

    def __init__(self) -> None:
        self.remotes: list[trio.abc.Stream] = []
        self.disconnected: list[int] = []
        self._changed = trio.Event()

    async def connect(self, channel: int, request: OpenChannel) -> trio.abc.Stream:
        ours, theirs = trio.testing.memory_stream_pair()
        self.remotes.append(theirs)
        self._changed.set()
        return ours

    async def disconnect(self, channel: int, stream: trio.abc.Stream) -> None:
        self.disconnected.append(channel)
        self._changed.set()
        await stream.aclose()

    async def until(self, test: Callable[[], bool]) -> None:
        with trio.fail_after(120):
            while not test():
                self._changed = trio.Event()
                await self._changed.wait()


class Unplugged:
    """A transport that tells nobody when its card goes: like a PC/SC reader, it raises CardRemoved from
    power_on/transmit while `present` is False. `attempts` are the trio times of power-ons that found no card."""

    def __init__(self, inner: SimulatedCard) -> None:
        self.inner = inner
        self.present = True
        self.attempts: list[float] = []
        self.lost_at: list[float] = []
        self.powered = 0
        self._changed = trio.Event()

    async def power_on(self) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self.present:
            self.attempts.append(trio.current_time())
            self._changed.set()
            raise CardRemoved("reader: no card")
        self.powered += 1
        return await self.inner.power_on()

    async def transmit(self, command: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self.present:
            self.lost_at.append(trio.current_time())
            raise CardRemoved("reader: card gone")
        return await self.inner.transmit(command)

    async def close(self) -> None:
        await self.inner.close()

    async def until(self, test: Callable[[], bool]) -> None:
        with trio.fail_after(600):
            while not test():
                self._changed = trio.Event()
                await self._changed.wait()


async def line(modem: Modem, nursery: trio.Nursery) -> Dte:
    a, b = trio.testing.memory_stream_pair()
    server = AtServer(b)
    modem.commands.install(server)
    nursery.start_soon(server.run)
    dte = Dte(a)
    await dte.at("ATE0")
    await dte.at("AT+CMEE=1")
    return dte


def modem_with(card: Any, card2: Any = None) -> tuple[Modem, Tracer, MemoryBearer]:
    tracer = Tracer(keep=True)
    modem = Modem(ModemOptions("not-opened"), card, tracer=tracer, card2=card2)
    bearer = MemoryBearer()
    modem.bearer = modem.service.bearer = bearer
    return modem, tracer, bearer


async def test_card_removed_with_a_bip_channel_open_and_inserted_again(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    card, _ = simulated_card(None, None, Tracer())
    assert isinstance(card, SimulatedCard)
    modem, tracer, bearer = modem_with(card)
    watch = Watch(tracer)
    dte = await line(modem, nursery)
    nursery.start_soon(modem.keep_toolkit)
    # the card's BIP session: its channel is up and its first bytes (the TLS ClientHello) reached the "server"
    await bearer.until(lambda: len(bearer.remotes) == 1)
    remote = bearer.remotes[0]
    hello = await remote.receive_some()
    assert hello and hello[0] == 0x16  # a TLS handshake record; the server holds its answer
    assert info(await dte.at("AT+CPIN?"), "") == ["+CPIN: READY"]

    card.remove()
    removed = await watch.wait("app.event", event="card_removed", slot=1)
    assert removed.error and removed.fields and removed.fields["reason"]
    ended = await watch.wait("app.event", event="channel_ended", channel=1)
    assert ended.error
    await bearer.until(lambda: bearer.disconnected == [1])
    with trio.fail_after(10):
        assert await remote.receive_some() == b""  # the link was closed, not abandoned
    assert not watch.select("app.error")  # no traceback anywhere: a card that goes is not a failure

    # the CP keeps serving AT; every SIM command says the SIM is not inserted
    for command in SIM_COMMANDS:
        assert await dte.at(command) == "\r\n+CME ERROR: 10\r\n", command
    assert await dte.at('AT%SMSPP="00"') == "\r\n+CME ERROR: 50\r\n"  # bad parameters still come first
    download = sms_deliver(b"\x00" * 8).hex().upper()  # a (U)SIM data download: it would go to slot 1's card
    assert await dte.at(f'AT%SMSPP="{download}"') == "\r\n+CME ERROR: 10\r\n"
    assert info(await dte.at("AT%SLOTS?"), "") == ["%SLOTS: 1,0"]
    assert info(await dte.at("AT+CGMI"), "") == [MANUFACTURER]
    assert modem.slots[0].state is SlotState.ABSENT

    card.insert()
    await watch.wait("app.event", event="card_inserted", slot=1)
    await watch.wait("cat.terminal_profile", count=2)  # the card is started again, TERMINAL PROFILE first
    await bearer.until(lambda: len(bearer.remotes) == 2)  # its toolkit (built again) opens its channel again
    assert await bearer.remotes[1].receive_some()
    assert info(await dte.at("AT+CPIN?"), "") == ["+CPIN: READY"]
    assert info(await dte.at("AT%SLOTS?"), "") == ["%SLOTS: 1,1"]
    assert not watch.select("app.error")


async def test_a_reader_that_tells_nobody_is_retried_with_backoff(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    inner, _ = simulated_card(None, None, Tracer())
    assert isinstance(inner, SimulatedCard)
    card = Unplugged(inner)
    modem, tracer, bearer = modem_with(card)
    watch = Watch(tracer)
    dte = await line(modem, nursery)
    nursery.start_soon(modem.keep_toolkit)
    await watch.wait("cat.terminal_profile")

    card.present = False  # the BIP loop's next STATUS poll finds it gone
    await watch.wait("app.event", event="card_removed", slot=1)
    await card.until(lambda: len(card.attempts) >= 7)
    times = card.lost_at[:1] + card.attempts[:7]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    expected = [RETRY_MIN * 2**n for n in range(6)]
    assert gaps == pytest.approx([min(gap, RETRY_MAX) for gap in expected] + [RETRY_MAX])
    assert len(watch.select("app.event", event="card_removed")) == 1  # traced once, not at every retry
    assert await dte.at("AT+CPIN?") == "\r\n+CME ERROR: 10\r\n"

    card.present = True
    await watch.wait("app.event", event="card_inserted", slot=1)
    await watch.wait("cat.terminal_profile", count=2)
    assert info(await dte.at("AT+CPIN?"), "") == ["+CPIN: READY"]
    assert info(await dte.at("AT+CIMI"), "")[0].isdigit()


async def test_sessions_die_with_their_card_only(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    card1, _ = simulated_card(None, None, Tracer())
    card2 = second_card(tmp_path)
    assert isinstance(card2, SimulatedCard)
    modem, tracer, _ = modem_with(card1, card2)
    watch = Watch(tracer)
    nursery.start_soon(modem.slots[1].keep_powered)
    await watch.wait("apdu.atr", slot=2)
    dte = await line(modem, nursery)
    assert info(await dte.at(f'AT+CCHO="{AID}"'), "") == ["+CCHO: 1"]
    assert await dte.at("AT%SLOT=2") == "\r\nOK\r\n"
    assert info(await dte.at(f'AT+CCHO="{AID}"'), "") == ["+CCHO: 2"]
    assert info(await dte.at(f'AT+CCHO="{AID}"'), "") == ["+CCHO: 3"]

    card2.remove()
    invalidated = await watch.wait("app.event", event="sessions_invalidated", slot=2)
    assert invalidated.fields and invalidated.fields["sessions"] == [2, 3]
    assert info(await dte.at("AT%SLOTS?"), "") == ["%SLOTS: 1,1,2,0"]
    # slot 2's sessions: SIM not inserted while the slot is empty; slot 1's session goes on
    assert await dte.at(f'AT+CGLA=2,{len(READ_IMSI)},"{READ_IMSI}"') == "\r\n+CME ERROR: 10\r\n"
    assert await dte.at("AT+CPIN?") == "\r\n+CME ERROR: 10\r\n"
    assert info(await dte.at(f'AT+CGLA=1,{len(SELECT_IMSI)},"{SELECT_IMSI}"'), "") == ['+CGLA: 4,"9000"']
    assert await dte.at("AT+CCHC=3") == "\r\nOK\r\n"  # closing a session whose card went: nothing left to do

    card2.insert()
    await watch.wait("app.event", event="card_inserted", slot=2)
    assert info(await dte.at("AT+CPIN?"), "") == ["+CPIN: READY"]
    assert info(await dte.at("AT+CIMI"), "") == [IMSI2]
    # a session of the card that went is gone for good, now as an invalid index
    assert await dte.at(f'AT+CGLA=2,{len(READ_IMSI)},"{READ_IMSI}"') == "\r\n+CME ERROR: 21\r\n"
    assert await dte.at("AT+CCHC=3") == "\r\n+CME ERROR: 21\r\n"
    assert info(await dte.at(f'AT+CCHO="{AID}"'), "") == ["+CCHO: 4"]  # ids are not reused
    assert info(await dte.at(f'AT+CGLA=4,{len(SELECT_IMSI)},"{SELECT_IMSI}"'), "") == ['+CGLA: 4,"9000"']


async def test_second_slot_presence_poll_notices_a_silent_reader(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    inner = second_card(tmp_path)
    assert isinstance(inner, SimulatedCard)
    card2 = Unplugged(inner)
    card1, _ = simulated_card(None, None, Tracer())
    modem, tracer, _ = modem_with(card1, card2)
    watch = Watch(tracer)
    nursery.start_soon(modem.slots[1].keep_powered)
    await watch.wait("apdu.atr", slot=2)
    start = trio.current_time()
    card2.present = False
    removed = await watch.wait("app.event", event="card_removed", slot=2)
    assert removed.fields and removed.fields["reason"] == "reader: card gone"
    # found by the presence STATUS, PRESENCE_POLL seconds after the card was last seen
    assert watch.select("apdu.command", slot=2)[-1].hex == "80F2000C00"
    assert card2.lost_at == [pytest.approx(start + PRESENCE_POLL)]
    card2.present = True
    await watch.wait("app.event", event="card_inserted", slot=2)
    assert card2.powered == 2


async def test_a_command_that_meets_the_card_gone_answers_10(nursery: trio.Nursery) -> None:
    """No notice, no poll: the AT command itself meets CardRemoved, answers 10 and marks the slot empty."""
    inner, _ = simulated_card(None, None, Tracer())
    assert isinstance(inner, SimulatedCard)
    card = Unplugged(inner)
    phone = make_phone(nursery, card, None)
    dte = await phone.line()
    assert info(await dte.at(f'AT+CCHO="{AID}"'), "") == ["+CCHO: 1"]
    card.present = False
    assert await dte.at("AT+CIMI") == "\r\n+CME ERROR: 10\r\n"
    assert phone.slots[0].state is SlotState.ABSENT
    assert await dte.at('AT+CGLA=1,10,"80F2000C00"') == "\r\n+CME ERROR: 10\r\n"
    events = [e for e in phone.tracer.events if e.kind == "app.event"]
    assert [(e.fields or {}).get("event") for e in events] == ["card_removed", "sessions_invalidated"]
    # the slot had never reset the card: it tried one power-on before giving up, whose reason is the one kept
    assert (events[0].fields or {})["reason"] == "reader: no card"
    assert len(card.lost_at) == 1 and len(card.attempts) == 1  # later commands never reached the reader


class NeedsReset(Unplugged):
    """A PC/SC-like transport: no APDU before the first power_on."""

    async def transmit(self, command: bytes) -> bytes:
        if not self.powered:
            await trio.lowlevel.checkpoint()
            self.lost_at.append(trio.current_time())
            raise CardRemoved("reader: the card is not powered on")
        return await super().transmit(command)


async def test_a_card_nobody_reset_yet_is_powered_on_by_its_first_command(nursery: trio.Nursery) -> None:
    inner, _ = simulated_card(None, None, Tracer())
    assert isinstance(inner, SimulatedCard)
    card = NeedsReset(inner)
    phone = make_phone(nursery, card, None)
    dte = await phone.line()
    assert info(await dte.at("AT+CPIN?"), "") == ["+CPIN: READY"]  # no APDU: nothing said otherwise yet
    assert info(await dte.at("AT+CIMI"), "")[0].isdigit()
    assert card.powered == 1 and len(card.lost_at) == 1
    assert phone.slots[0].state is SlotState.READY
    assert not [
        e for e in phone.tracer.events if e.kind == "app.event"
    ]  # not a removal: nothing was there yet


def test_card_control_lines() -> None:
    card1, _ = simulated_card(None, None, Tracer())
    tracer = Tracer(keep=True)
    modem = Modem(ModemOptions("not-opened"), card1, tracer=tracer)
    slots = modem.slots
    assert card_control_answer("slots", slots) == "ok 1=unpowered"
    assert card_control_answer("remove 1", slots) == "ok remove 1"
    assert card_control_answer("slots", slots) == "ok 1=absent"
    assert card_control_answer("insert 1", slots) == "ok insert 1"
    assert card_control_answer("remove 2", slots) == "error no slot 2"
    for bad in ("", "remove", "pull 1", "remove one", "remove 1 2"):
        assert card_control_answer(bad, slots).startswith("error use:"), bad
    other = Modem(ModemOptions("not-opened"), Unplugged(card1), tracer=tracer)
    assert card_control_answer("remove 1", other.slots).startswith("error slot 1's card is not a simulated")


async def test_card_control_socket(nursery: trio.Nursery, tmp_path: Path) -> None:
    card1, _ = simulated_card(None, None, Tracer())
    assert isinstance(card1, SimulatedCard)
    modem, _, _ = modem_with(card1)
    path = str(tmp_path / "cards.sock")
    await nursery.start(serve_card_control, path, modem.slots)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.connect(path)
    stream = trio.SocketStream(sock)
    await stream.send_all(b"remove 1\nslots\n")
    answer = b""
    with trio.fail_after(10):
        while answer.count(b"\n") < 2:
            answer += await stream.receive_some()
    assert answer == b"ok remove 1\nok 1=absent\n"
    assert not card1.present
    await stream.aclose()


def test_harness_pulls_the_card_mid_session_and_the_session_completes_after_insert(tmp_path: Path) -> None:
    """The scenario-facing API (scenarios/harness.py): a CP with two slots; a hook pulls slot 1's card once its BIP
    session has sent data, and puts it back once the CP said the card and its channel were gone. The card is
    started again and its OTA session runs to completion; SIM2 was powered on beside it. The server's bytes are
    held until the card is out (ServerLink), so the pull lands before any admin script ran: a script the card ran
    but could not answer is sent again after the restart, and a LOAD repeated is refused (GP 6985), which is
    another test's story."""
    from bipsim.scenarios.harness import EventQuery, Harness, RunConfig, run_processes
    from bipsim.trace.kinds import Kind

    marks: dict[str, Any] = {}

    async def during(harness: Harness) -> None:
        assert harness.link is not None
        harness.link.hold_at(0)  # the card's first SEND DATA (its ClientHello) gets no answer before the pull
        sent = await harness.wait_for_event(
            "cp",
            EventQuery(Kind.CAT_TERMINAL_RESPONSE, lambda f: f.get("command") == "SEND DATA"),
            timeout=60,
        )
        assert sent is not None, "the session never sent data"
        await harness.remove_card(1)
        marks["removed"] = await harness.wait_for_event(
            "cp", EventQuery(Kind.APP_EVENT, lambda f: f.get("event") == "card_removed"), timeout=60
        )
        marks["ended"] = await harness.wait_for_event(
            "cp", EventQuery(Kind.APP_EVENT, lambda f: f.get("event") == "channel_ended"), timeout=60
        )
        marks["slots"] = await harness.card_control("slots")
        harness.link.hold_at(None)
        await harness.insert_card(1)
        marks["inserted"] = await harness.wait_for_event(
            "cp", EventQuery(Kind.APP_EVENT, lambda f: f.get("event") == "card_inserted"), timeout=60
        )

    config = RunConfig(
        session="e2",
        bearer="ap-proxy",
        card2="sim",
        profile2={"imsi": IMSI2},
        card_control=True,
        server_link=True,
        timeout=90.0,
        during=during,
    )
    run = run_processes(config, tmp_path / "run")
    assert marks.get("removed"), run.explain()
    assert (marks["removed"].get("fields") or {}).get("slot") == 1
    assert (marks["ended"].get("fields") or {}).get("channel") == 1
    assert marks["slots"] == "1=absent 2=ready"
    assert marks.get("inserted"), run.explain()
    profiles = [e for e in run.events if e.kind == Kind.CAT_TERMINAL_PROFILE]
    assert len(profiles) == 2  # started again once back
    assert [e for e in run.events if e.kind == Kind.APDU_ATR and (e.fields or {}).get("slot") == 2]
    assert not [e for e in run.events if e.kind == Kind.APP_ERROR and e.src.value in ("cp", "uicc")]
    assert run.completed, run.explain()
    assert run.cp_code == 0


async def test_a_card_back_before_the_ap_attached(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """The toolkit waits for the AP; a card pulled and put back meanwhile is powered on again all the same."""
    card, _ = simulated_card(None, None, Tracer())
    assert isinstance(card, SimulatedCard)
    tracer = Tracer(keep=True)
    watch = Watch(tracer)
    modem = Modem(ModemOptions("not-opened", wait_for_ap=1e9), card, tracer=tracer)
    ours, theirs = trio.testing.memory_stream_pair()
    modem._first_line = theirs  # the line, as open_line() would have opened it
    nursery.start_soon(modem.run)
    dte = Dte(ours)
    await dte.at("ATE0")
    await dte.at("AT+CMEE=1")
    assert info(await dte.at("AT+CPIN?"), "") == ["+CPIN: READY"]
    card.remove()
    await watch.wait("app.event", event="card_removed", slot=1)
    assert await dte.at("AT+CPIN?") == "\r\n+CME ERROR: 10\r\n"
    card.insert()
    await watch.wait("app.event", event="card_inserted", slot=1)
    assert info(await dte.at("AT+CPIN?"), "") == ["+CPIN: READY"]
    assert not watch.select("cat.terminal_profile")  # the toolkit still waits for the AP


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--card2", "trace:x.jsonl"], "--card2 trace:F: a recorded card replays slot 1's session only"),
        (["--card2", "floppy"], "--card2 floppy: use sim, pcsc[:N|:NAME] or none"),
        (["--card", "none"], "--card none: slot 1 holds the toolkit's card; only --card2 may be empty"),
        (["--state2", "x.json"], "--profile2 and --state2 need --card2 sim"),
        (
            ["--card", "pcsc:0", "--profile", "omapi"],
            "--profile and --state are for --card sim, not --card pcsc:0",
        ),
        (
            ["--card2", "pcsc:1", "--state2", "b.json"],
            "--profile2 and --state2 are for --card2 sim, not --card2",
        ),
        (["--card-control", "/no/such/folder/c.sock"], "--card-control /no/such/folder/c.sock: no folder"),
        (["--card2", "sim", "--state", "s.json", "--state2", "s.json"], "--state2: the two cards need state"),
    ],
)
def test_cp_slot_options_fail_in_one_line(args: list[str], error: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "bipsim", "cp", "--port", str(tmp_path / "no-line"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and error in lines[0], done.stderr


def test_card_control_refuses_a_file_that_is_not_a_socket(tmp_path: Path) -> None:
    from bipsim.cp.modem import check_card_control_path

    regular = tmp_path / "notes.txt"
    regular.write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not a socket"):
        check_card_control_path(str(regular))
    assert regular.read_text() == "keep me"
    with pytest.raises(ValueError, match="too long"):
        check_card_control_path(str(tmp_path / ("x" * 120)))
    check_card_control_path(str(tmp_path / "cards.sock"))


def test_gateway_ends_every_channel_when_the_card_goes() -> None:
    """Sans-IO (cp/bip_gateway.py): card gone is a row of the channel table from every state but closed; each
    channel ends with its link closed, nothing is said to the card, and the gateway is as new afterwards."""
    from bipsim.cp.bip_gateway import TRANSITIONS, BearerClose, BipGateway, ChannelEvent, ChannelState
    from tests.test_gateway import open_command, opened

    assert {state for (state, event) in TRANSITIONS if event is ChannelEvent.CARD_GONE} == set(
        ChannelState
    ) - {ChannelState.CLOSED}
    gateway = BipGateway()
    up = opened(gateway)  # established
    gateway.on_command(open_command(number=2, port=4444))  # background mode, its link not up yet: connecting
    assert sorted(gateway.channels) == [1, 2] and gateway.channels[2].state is ChannelState.CONNECTING
    actions = gateway.on_card_gone()
    assert actions == [BearerClose(up), BearerClose(2)]
    assert not gateway.channels and not gateway.events and gateway.poll_interval is None
    assert gateway.on_card_gone() == []
    assert opened(gateway) == 1  # the card's next session starts from channel 1 again


async def test_simulated_card_remove_and_insert() -> None:
    card, _ = simulated_card(None, None, Tracer())
    assert isinstance(card, SimulatedCard)
    told: list[str] = []
    card.on_remove = lambda: told.append("removed")
    card.on_insert = lambda: told.append("inserted")
    toolkits = [card.card.toolkit]
    card.on_power_loss = lambda sim: toolkits.append(sim.toolkit)
    atr = await card.power_on()
    assert len(await card.transmit(bytes.fromhex("80F2000C00"))) >= 2  # it answers while it is in
    card.remove()
    card.remove()  # a second pull changes nothing
    with pytest.raises(CardRemoved):
        await card.transmit(bytes.fromhex("80F2000C00"))
    with pytest.raises(CardRemoved):
        await card.power_on()
    card.insert()
    with pytest.raises(CardRemoved, match="not powered on"):  # back, but a card needs its reset first
        await card.transmit(bytes.fromhex("80F2000C00"))
    assert await card.power_on() == atr
    assert told == ["removed", "inserted"]
    assert len(toolkits) == 2  # the power loss was seen once, at the first reset after it
    await card.power_on()
    assert len(toolkits) == 2
