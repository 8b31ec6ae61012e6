"""The PC/SC card transport (uicc/pcsc_card.py) over a fake pyscard connection, without pcscd: the reader spec,
error mapping (pyscard's exceptions -> CardRemoved / 6F 00), reset and reconnect, the deadline of a hung call, and
the card driver's T=0 handling (61 xx GET RESPONSE, 6C xx re-send) through it. The real pcscd is in
tests/test_pcsc_loop.py."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from click.testing import CliRunner

from bipsim.cli import cli
from bipsim.cp.card_driver import MAX_T0_ROUNDS, CardDriver, with_le
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from bipsim.uicc.card import SimCard
from bipsim.uicc.pcsc_card import (
    PcscAnswerError,
    PcscCard,
    PcscConnection,
    PcscUnavailable,
    PyscardBackend,
    ReaderChoice,
    choose_reader,
    open_pcsc_card,
    parse_card_spec,
)
from bipsim.uicc.profile import load_profile
from bipsim.uicc.transport import CardRemoved

smartcard = pytest.importorskip("smartcard")
from smartcard.Exceptions import CardConnectionException, NoCardException  # noqa: E402
from smartcard.pcsc.PCSCExceptions import EstablishContextException  # noqa: E402
from smartcard.scard import (  # noqa: E402
    SCARD_E_NO_SERVICE,
    SCARD_E_READER_UNAVAILABLE,
    SCARD_W_REMOVED_CARD,
)

ATR = bytes.fromhex("3B9F96801FC78031A073BE21136743200718000001A5")
READERS = ["Virtual PCD 00 00", "Virtual PCD 00 01", "ACS ACR39U ICC Reader 00 00"]


class FakeConnection:
    """Shaped like pyscard's CardConnection; `answer` decides each response (data, sw1, sw2) or raises."""

    def __init__(self, answer: Callable[[bytes], bytes], protocol: int = 2) -> None:
        self.answer = answer
        self.protocol = protocol
        self.resets = 0
        self.released = threading.Event()
        self.sent: list[bytes] = []

    def getATR(self) -> list[int]:
        return list(ATR)

    def getProtocol(self) -> int:
        return self.protocol

    def transmit(self, command: list[int]) -> tuple[list[int], int, int]:
        self.sent.append(bytes(command))
        response = self.answer(bytes(command))
        if len(response) < 2:  # what pyscard's doTransmit raises for such an answer
            raise CardConnectionException("Card returned no valid response", hresult=0)
        return list(response[:-2]), response[-2], response[-1]

    def reconnect(self) -> None:
        self.resets += 1

    def disconnect(self) -> None:
        pass

    def release(self) -> None:
        self.released.set()


class FakeBackend(PyscardBackend):
    """pyscard's error mapping with readers and connections the test controls."""

    def __init__(self, connection: Callable[[], FakeConnection], readers: list[str] | None = None) -> None:
        super().__init__()
        self.reader_names = list(READERS if readers is None else readers)
        self.make = connection
        self.connected: list[str] = []
        self.connections: list[FakeConnection] = []
        self.list_error: Exception | None = None

    def readers(self) -> list[str]:
        if self.list_error is not None:
            raise self.list_error
        return list(self.reader_names)

    def connect(self, reader: str) -> PcscConnection:
        if reader not in self.reader_names:
            raise CardConnectionException("Unable to connect", hresult=SCARD_E_READER_UNAVAILABLE)
        self.connected.append(reader)
        connection = self.make()
        self.connections.append(connection)
        return connection


def echo_9000(command: bytes) -> bytes:
    return command[5:] + b"\x90\x00"


# --- the spec and the reader choice ---------------------------------------------------------------------------


def test_card_specs() -> None:
    assert parse_card_spec("pcsc") == ReaderChoice(0)
    assert parse_card_spec("pcsc:2") == ReaderChoice(2)
    assert parse_card_spec("pcsc:Virtual PCD") == ReaderChoice(None, "Virtual PCD")
    for bad in ("pcsc:", "pcsc: ", "pcscd", "sim"):
        with pytest.raises(ValueError):
            parse_card_spec(bad)


def test_reader_by_index_or_name() -> None:
    assert choose_reader(READERS, ReaderChoice(1)) == "Virtual PCD 00 01"
    # several hold the name: the first in PC/SC's order; an exact name wins; case is ignored
    assert choose_reader(READERS, ReaderChoice(None, "virtual pcd")) == "Virtual PCD 00 00"
    assert choose_reader(READERS, ReaderChoice(None, "Virtual PCD 00 01")) == "Virtual PCD 00 01"
    assert choose_reader(READERS, ReaderChoice(None, "acr39")) == READERS[2]


def test_missing_reader_names_the_readers() -> None:
    with pytest.raises(PcscUnavailable, match=r"no PC/SC reader 3; the readers are 0: Virtual PCD 00 00; 1:"):
        choose_reader(READERS, ReaderChoice(3))
    with pytest.raises(PcscUnavailable, match="'Gemalto'"):
        choose_reader(READERS, ReaderChoice(None, "Gemalto"))
    with pytest.raises(PcscUnavailable, match="lists none"):
        choose_reader([], ReaderChoice(0))


def test_no_pcscd_is_one_line_at_start() -> None:
    backend = FakeBackend(lambda: FakeConnection(echo_9000))
    backend.list_error = EstablishContextException(SCARD_E_NO_SERVICE)
    card = PcscCard(ReaderChoice(0), backend=backend)
    with pytest.raises(PcscUnavailable, match=r"is pcscd running\?") as caught:
        card.probe()
    assert "\n" not in str(caught.value)


def test_no_pyscard_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "smartcard" or m.startswith("smartcard.")]:
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    with pytest.raises(PcscUnavailable, match=r"pyscard.*not installed.*bipsim\[pcsc\]"):
        open_pcsc_card("pcsc:0")


# --- exchanges, reset, errors ---------------------------------------------------------------------------------


async def test_responses_are_as_on_the_wire_and_power_on_resets() -> None:
    backend = FakeBackend(
        lambda: FakeConnection(lambda c: bytes.fromhex("6A82") if c[1] == 0xA4 else b"\x61\x1e")
    )
    card = PcscCard(ReaderChoice(None, "acr39"), backend=backend)
    assert await card.power_on() == ATR
    assert card.reader == READERS[2] and card.protocol == "T=1"
    # 61 xx and errors come back untouched: GET RESPONSE is the driver's
    assert await card.transmit(bytes.fromhex("80F2000000")) == bytes.fromhex("611E")
    assert await card.transmit(bytes.fromhex("00A40004027F20")) == bytes.fromhex("6A82")
    assert await card.power_on() == ATR  # a second power_on is a warm reset of the same connection
    assert backend.connected == [READERS[2]] and backend.connections[0].resets == 1
    await card.close()
    assert backend.connections[0].released.is_set()


async def test_removed_card_and_its_return() -> None:
    present = True

    def answer(command: bytes) -> bytes:
        if not present:
            raise NoCardException("Card was removed", hresult=SCARD_W_REMOVED_CARD)
        return echo_9000(command)

    backend = FakeBackend(lambda: FakeConnection(answer))
    card = PcscCard(ReaderChoice(0), backend=backend)
    await card.power_on()
    present = False
    with pytest.raises(CardRemoved) as caught:
        await card.transmit(bytes.fromhex("80F2000C00"))
    assert caught.value.reason == "Virtual PCD 00 00: APDU 80F2000C: Card was removed. (0x80100069)"
    assert backend.connections[0].released.is_set()  # gone: its connection is released at once
    with pytest.raises(CardRemoved, match="not powered on"):
        await card.transmit(bytes.fromhex("80F2000C00"))
    present = True
    assert await card.power_on() == ATR  # back: a new connection
    assert await card.transmit(bytes.fromhex("80100000020102")) == bytes.fromhex("01029000")
    assert len(backend.connected) == 2


async def test_reader_unplugged_then_back() -> None:
    backend = FakeBackend(lambda: FakeConnection(echo_9000), readers=["ACS ACR39U 00 00"])
    card = PcscCard(ReaderChoice(None, "ACR39U"), backend=backend)
    await card.power_on()

    def gone(command: bytes) -> bytes:
        raise CardConnectionException(
            "Failed to transmit with protocol T0. Reader unavailable.", hresult=SCARD_E_READER_UNAVAILABLE
        )

    backend.connections[0].answer = gone
    with pytest.raises(
        CardRemoved, match=r"^ACS ACR39U 00 00: APDU 80F2000C: Reader is unavailable\. \(0x80100017\)$"
    ):
        await card.transmit(bytes.fromhex("80F2000C00"))
    backend.reader_names = []
    with pytest.raises(CardRemoved, match="lists none"):
        await card.power_on()
    backend.list_error = EstablishContextException(SCARD_E_NO_SERVICE)
    with pytest.raises(CardRemoved, match="pcsc:ACR39U"):  # pcscd itself gone: still "no card", tried again
        await card.power_on()
    backend.list_error = None
    backend.reader_names = ["Other 00 00", "ACS ACR39U 01 00"]  # back, under another name and index
    assert await card.power_on() == ATR
    assert card.reader == "ACS ACR39U 01 00"


async def test_answer_without_status_word_is_a_card_failure_not_a_removal() -> None:
    backend = FakeBackend(lambda: FakeConnection(lambda c: b"\x90"))
    card = PcscCard(ReaderChoice(0), backend=backend)
    await card.power_on()
    with pytest.raises(PcscAnswerError):
        await card.transmit(bytes.fromhex("80F2000C00"))
    tracer = Tracer(keep=True)
    driver = CardDriver(card, tracer=tracer)
    # the driver answers it as 6F 00 with an app.error event, and the connection stays
    data, sw = await driver.transmit(bytes.fromhex("80F2000C00"), "STATUS")
    assert (data, sw) == (b"", 0x6F00)
    assert [e for e in tracer.events if e.kind == Kind.APP_ERROR and e.field("where") == "card"]
    assert len(backend.connected) == 1


async def test_hung_transmit_is_given_up_at_the_deadline(mock_clock: trio.testing.MockClock) -> None:
    entered, release = threading.Event(), threading.Event()

    def hang(command: bytes) -> bytes:
        entered.set()
        release.wait(30)
        return b"\x90\x00"

    backend = FakeBackend(lambda: FakeConnection(echo_9000))
    card = PcscCard(ReaderChoice(0), backend=backend, timeout=5.0)
    await card.power_on()
    backend.connections[0].answer = hang
    async with trio.open_nursery() as nursery:

        async def past_the_deadline() -> None:
            await trio.to_thread.run_sync(entered.wait, 30)  # the card holds the APDU; now time passes
            mock_clock.jump(5.0)

        nursery.start_soon(past_the_deadline)
        with pytest.raises(CardRemoved, match=r"Virtual PCD 00 00: APDU 80F2000C: no answer within 5 s"):
            await card.transmit(bytes.fromhex("80F2000C00"))
    stale = backend.connections[0]
    assert not stale.released.is_set()  # its thread still hangs in the reader
    release.set()
    assert await trio.to_thread.run_sync(stale.released.wait, 30)  # the thread releases it on return
    backend.make = lambda: FakeConnection(echo_9000)
    assert await card.power_on() == ATR and len(backend.connected) == 2


async def test_cancelled_transmit_gives_the_connection_up() -> None:
    entered, release = threading.Event(), threading.Event()

    def hang(command: bytes) -> bytes:
        entered.set()
        release.wait(30)
        return b"\x90\x00"

    backend = FakeBackend(lambda: FakeConnection(hang))
    card = PcscCard(ReaderChoice(0), backend=backend)
    await card.power_on()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(card.transmit, bytes.fromhex("80F2000C00"))
        await trio.to_thread.run_sync(entered.wait, 30)
        nursery.cancel_scope.cancel()
    with pytest.raises(CardRemoved, match="not powered on"):
        await card.transmit(bytes.fromhex("80F2000C00"))
    release.set()
    assert await trio.to_thread.run_sync(backend.connections[0].released.wait, 30)


# --- T=0 through the driver -----------------------------------------------------------------------------------


def sim_card() -> SimCard:
    return SimCard(load_profile())


async def test_t0_get_response_and_le_resend_through_pcsc() -> None:
    sim = sim_card()
    backend = FakeBackend(lambda: FakeConnection(sim.process, protocol=1))
    card = PcscCard(ReaderChoice(0), backend=backend)
    tracer = Tracer(keep=True)
    driver = CardDriver(card, tracer=tracer)
    await driver.start()
    assert card.protocol == "T=0"
    # SELECT MF asking for the FCP (P2 04): 61 xx, then GET RESPONSE of class 00 brings the FCP
    fcp, sw = await driver.transmit(bytes.fromhex("00A40004023F00"), "SELECT MF")
    assert sw == 0x9000 and fcp[0] == 0x62 and len(fcp) == fcp[1] + 2
    sent = backend.connections[0].sent
    assert sent[-1] == bytes((0x00, 0xC0, 0x00, 0x00, len(fcp)))
    # a GET RESPONSE with a wrong Le (after a SELECT sent as +CSIM sends it, raw): 6C xx, then the same command
    # with the Le the card named
    assert (await driver.raw(bytes.fromhex("00A40004022FE2"), "AT+CSIM"))[0] == 0x61
    fcp, sw = await driver.transmit(bytes.fromhex("00C0000040"), "GET RESPONSE")
    assert sw == 0x9000 and fcp[0] == 0x62
    assert sent[-2:] == [bytes.fromhex("00C0000040"), bytes((0x00, 0xC0, 0x00, 0x00, len(fcp)))]


def test_le_of_a_resent_command() -> None:
    assert with_le(bytes.fromhex("00B0000000"), 0x0A) == bytes.fromhex("00B000000A")
    assert with_le(bytes.fromhex("00B00000"), 0x0A) == bytes.fromhex("00B000000A")
    # a command with data keeps its data and gets the Le (case 3 -> 4) or a new one (case 4)
    assert with_le(bytes.fromhex("00A40004023F00"), 0x1C) == bytes.fromhex("00A40004023F001C")
    assert with_le(bytes.fromhex("00A40004023F0000"), 0x1C) == bytes.fromhex("00A40004023F001C")


async def test_a_card_that_asks_for_get_response_for_ever_ends_as_6f00() -> None:
    backend = FakeBackend(lambda: FakeConnection(lambda c: b"\x61\x10"))
    card = PcscCard(ReaderChoice(0), backend=backend)
    await card.power_on()
    tracer = Tracer(keep=True)
    driver = CardDriver(card, tracer=tracer)
    _, sw = await driver.transmit(bytes.fromhex("00A40004023F00"), "SELECT MF")
    assert sw == 0x6F00
    assert len(backend.connections[0].sent) == MAX_T0_ROUNDS + 1
    assert any(e.kind == Kind.APP_ERROR and "endless" in str(e.field("error")) for e in tracer.events)


def test_scenario_run_and_demo_take_a_pcsc_card_only_for_the_embodiments() -> None:
    # the command line's main() prints a CliError as its one line; here it is the exception itself
    result = CliRunner().invoke(cli, ["scenario", "run", "line-drop", "--card", "pcsc:0"])
    assert result.exit_code == 1 and "embodiment1 and embodiment2" in str(result.exception)
    result = CliRunner().invoke(cli, ["scenario", "run", "embodiment2", "--card", "pcsc:"])
    assert result.exit_code == 1 and "use sim, pcsc:N or pcsc:NAME" in str(result.exception)
    result = CliRunner().invoke(cli, ["demo", "--card", "pcsc:"])
    assert result.exit_code == 1 and "use sim, pcsc:N or pcsc:NAME" in str(result.exception)
    result = CliRunner().invoke(cli, ["demo", "--card", "pcsc:0"])
    assert result.exit_code == 1 and "give --embodiment 1 or --embodiment 2" in str(result.exception)
    for command in (["cp"], ["demo"], ["scenario", "run"]):
        help_text = " ".join(CliRunner().invoke(cli, [*command, "--help"]).output.split())
        assert "pcsc:N" in help_text and "pcsc:NAME" in help_text


def test_cp_without_pcscd_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # no daemon behind this socket: the CP refuses to start, in one line, before it opens its line
    monkeypatch.setenv("PCSCLITE_CSOCK_NAME", str(tmp_path / "no-pcscd.comm"))
    result = subprocess.run(
        [sys.executable, "-m", "bipsim", "cp", "--port", str(tmp_path / "no-line"), "--card", "pcsc:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "bipsim: error: --card pcsc:0: PC/SC does not answer (is pcscd running?): Failed to establish "
        "context: Service not available. (0x8010001D)"
    ]
