"""SIM security: the card's PINs, UNBLOCK PINs and their counters (TS 102 221 sections 9.5, 11.1.9-11.1.13), and
the CP's 27.007 commands over them (+CPIN 8.3, +CLCK 7.4, +CPWD 7.5, +CPINR 8.65, the +CME ERRORs of 9.2)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from bipsim.cp.card_driver import CardDriver
from bipsim.cp.commands import ModemCommands
from bipsim.cp.network import CellularNetwork
from bipsim.cp.security_commands import PinCode, SecurityCommands
from bipsim.link.at_server import AtServer
from bipsim.trace.recorder import NULL_TRACER
from bipsim.uicc.card import SimCard
from bipsim.uicc.fs import pin_block
from bipsim.uicc.profile import load_profile
from bipsim.uicc.sim_transport import SimulatedCard

PIN = pin_block("1234").hex()
WRONG = pin_block("0000").hex()
PUK = pin_block("12345678").hex()
PIN2 = pin_block("5678").hex()
PUK2 = pin_block("87654321").hex()


def run(card: SimCard, apdu: str) -> tuple[bytes, str]:
    answer = card.process(bytes.fromhex(apdu.replace(" ", "")))
    return answer[:-2], answer[-2:].hex().upper()


def locked_card(tmp_path: Path) -> SimCard:
    return SimCard(load_profile("pin"), state_path=tmp_path / "state.json")


# --- the card ---------------------------------------------------------------------------------------------------


def test_an_enabled_pin1_guards_the_subscribers_files_until_verified(tmp_path: Path) -> None:
    card = locked_card(tmp_path)
    assert run(card, "0020000100") == (b"", "63C3")  # TS 102 221 11.1.9: no data, the attempts left
    assert run(card, "00A4080C047FF06F07")[1] == "9000"  # SELECT is free
    assert run(card, "00B0000009")[1] == "6982"  # EF_IMSI: READ needs PIN1
    assert run(card, "00A4000C022FE2")[1] == "9000"
    assert run(card, "00B000000A")[1] == "9000"  # EF_ICCID reads always
    # the toolkit does not wait for the PIN: TERMINAL PROFILE is part of the activation (TS 102 221 section 14)
    assert run(card, "80100000 02 FFFF")[1] == "9000"
    assert run(card, "0020000108" + PIN) == (b"", "9000")
    assert run(card, "00A4080C047FF06F07")[1] == "9000"
    assert run(card, "00B0000009")[1] == "9000"
    # the FCP of a DF says which PINs are enabled (PS_DO, 9.5.2): PIN1 and PIN2
    card.process(bytes.fromhex("00A40004023F00"))
    fcp = card.process(bytes.fromhex("00C0000000"))[:-2]
    assert bytes.fromhex("C609 9001C0 830101 830181".replace(" ", "")) in fcp
    # a reset ends the verification
    card.reset()
    assert run(card, "00A4080C047FF06F07")[1] == "9000"
    assert run(card, "00B0000009")[1] == "6982"


def test_blocking_and_unblock_pin_with_the_puk(tmp_path: Path) -> None:
    card = locked_card(tmp_path)
    assert run(card, "0020000108" + WRONG)[1] == "63C2"
    assert run(card, "0020000108" + WRONG)[1] == "63C1"
    assert run(card, "0020000108" + WRONG)[1] == "63C0"  # the third false presentation blocks it
    assert run(card, "0020000108" + PIN)[1] == "6983"  # blocked, even with the right PIN
    assert run(card, "0020000100")[1] == "63C0"
    assert run(card, "002C000100") == (b"", "63CA")  # UNBLOCK PIN without data: the PUK's 10 attempts
    assert run(card, "002C000110" + WRONG + pin_block("4321").hex())[1] == "63C9"
    # the counters survive a power cycle (written before the answer left the card)
    card = locked_card(tmp_path)
    assert run(card, "0020000100")[1] == "63C0"
    assert run(card, "002C000100")[1] == "63C9"
    assert run(card, "002C000110" + PUK + pin_block("4321").hex()) == (b"", "9000")
    # 11.1.13.1.1: the new PIN, both counters reset, PIN1 verified
    assert run(card, "002C000100")[1] == "63CA"
    assert run(card, "0020000100")[1] == "9000"
    card = locked_card(tmp_path)
    assert run(card, "0020000100")[1] == "63C3"
    assert run(card, "0020000108" + PIN)[1] == "63C2"  # the old PIN is gone
    assert run(card, "0020000108" + pin_block("4321").hex())[1] == "9000"
    assert run(card, "002C000110" + PUK)[1] == "6700"  # PUK without a new PIN
    assert run(card, "002C00 0A10" + PUK + PIN)[1] == "6A88"  # ADM1 has no UNBLOCK PIN


def test_a_puk_blocks_after_its_tenth_false_presentation(tmp_path: Path) -> None:
    card = locked_card(tmp_path)
    for left in range(9, -1, -1):
        assert run(card, "002C008110" + WRONG + PIN2)[1] == f"63C{left:X}"
    assert run(card, "002C008110" + PUK2 + PIN2)[1] == "6983"
    assert run(card, "0020008108" + PIN2)[1] == "9000"  # PIN2 itself is not blocked


def test_change_enable_disable(tmp_path: Path) -> None:
    card = locked_card(tmp_path)
    new = pin_block("9999").hex()
    assert run(card, "0024000110" + WRONG + new)[1] == "63C2"  # CHANGE PIN, old PIN false (11.1.10)
    assert run(card, "0024000110" + PIN + new)[1] == "9000"
    assert run(card, "0020000100")[1] == "9000"  # verified by the change; the counter is back to 3
    card.reset()
    assert run(card, "0020000100")[1] == "63C3"
    assert run(card, "0026000108" + WRONG)[1] == "63C2"  # DISABLE PIN with a false PIN (11.1.11)
    assert run(card, "0026000108" + new)[1] == "9000"
    assert run(card, "0020000100")[1] == "9000"  # verification not needed
    assert run(card, "0020000108" + new)[1] == "6984"  # a disabled PIN is not verified
    assert run(card, "0024000110" + new + PIN)[1] == "6984"  # nor changed
    assert run(card, "00A4080C047FF06F07")[1] == "9000"
    assert run(card, "00B0000009")[1] == "9000"  # the subscriber's files as if ALWAYS
    card = locked_card(tmp_path)  # the disabled state persists
    assert run(card, "0020000100")[1] == "9000"
    assert run(card, "0028000108" + new)[1] == "9000"  # ENABLE PIN (11.1.12)
    card.reset()
    assert run(card, "0020000100")[1] == "63C3"
    assert run(card, "0026800108" + new)[1] == "6B00"  # no alternative global key reference on this card
    assert run(card, "00260001 04 31323334")[1] == "6700"
    assert run(card, "00260A0008" + pin_block("12345678").hex())[1] == "6B00"
    assert run(card, "0026000A08" + pin_block("12345678").hex())[1] == "6985"  # ADM1 is never disabled


def test_an_old_state_file_with_only_the_pin_counters_still_loads(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"pins": {"01": 1, "81": 3, "0A": 10}}')
    card = SimCard(load_profile("pin"), state_path=state)
    assert run(card, "0020000100")[1] == "63C1"
    assert run(card, "002C000100")[1] == "63CA"
    state.write_text('{"pins": {"01": 99, "unblock": {"01": "x"}, "enabled": [7], "values": {"01": "zz"}}}')
    card = SimCard(load_profile("pin"), state_path=state)
    assert run(card, "0020000100")[1] == "63C3"  # nonsense is ignored, the profile's values stand
    assert run(card, "0020000108" + PIN)[1] == "9000"


# --- the CP -----------------------------------------------------------------------------------------------------


class Dte:
    """The core and the security set on an AT server (echo off) at one end of a memory stream; `ask` sends a line
    and returns the answer's lines up to the final result."""

    def __init__(self, card: SimCard) -> None:
        self.card = card
        self.driver = CardDriver(SimulatedCard(card))
        self.core = ModemCommands(self.driver, CellularNetwork())
        self.security = SecurityCommands(self.core, NULL_TRACER, {})
        self.core.command_sets = [self.security]
        self.ours, theirs = trio.testing.memory_stream_pair()
        self.server = AtServer(theirs, echo=False)
        self.core.install(self.server)
        self._buffer = b""

    async def ask(self, line: str) -> list[str]:
        await self.ours.send_all(line.encode() + b"\r")
        lines: list[str] = []
        with trio.fail_after(5):
            while True:
                while b"\r\n" not in self._buffer:
                    self._buffer += await self.ours.receive_some(4096)
                raw, self._buffer = self._buffer.split(b"\r\n", 1)
                text = raw.decode()
                if not text:
                    continue
                lines.append(text)
                if text in ("OK", "ERROR") or text.startswith("+CME ERROR"):
                    return lines


async def with_dte(card: SimCard, body: Callable[[Dte], Awaitable[None]]) -> None:
    dte = Dte(card)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dte.server.run)
        assert await dte.ask("AT+CMEE=1") == ["OK"]
        await body(dte)
        nursery.cancel_scope.cancel()


async def test_cpin_follows_the_card_and_the_errors_are_27007s(tmp_path: Path) -> None:
    async def body(dte: Dte) -> None:
        assert await dte.ask("AT+CPIN?") == ["+CPIN: SIM PIN", "OK"]  # the card's state at start
        assert await dte.ask("AT+CIMI") == ["+CME ERROR: 11"]  # SIM PIN required (27.007 9.2.1)
        assert await dte.ask('AT+CPINR="SIM PIN"') == ["+CPINR: SIM PIN,3,3", "OK"]
        assert await dte.ask('AT+CPIN="0000"') == ["+CME ERROR: 16"]  # incorrect password
        assert await dte.ask('AT+CPINR="SIM PIN"') == ["+CPINR: SIM PIN,2,3", "OK"]
        assert await dte.ask('AT+CPIN="12"') == ["+CME ERROR: 16"]  # not a PIN: no attempt spent
        assert await dte.ask('AT+CPINR="SIM PIN"') == ["+CPINR: SIM PIN,2,3", "OK"]
        assert await dte.ask('AT+CPIN="0000"') == ["+CME ERROR: 16"]
        assert await dte.ask('AT+CPIN="0000"') == ["+CME ERROR: 12"]  # blocked: SIM PUK required
        assert await dte.ask("AT+CPIN?") == ["+CPIN: SIM PUK", "OK"]
        assert await dte.ask('AT+CPIN="1234"') == ["+CME ERROR: 12"]
        assert await dte.ask("AT+CPINR") == [
            "+CPINR: SIM PIN,0,3",
            "+CPINR: SIM PUK,10,10",
            "+CPINR: SIM PIN2,3,3",
            "+CPINR: SIM PUK2,10,10",
            "OK",
        ]
        assert await dte.ask('AT+CPIN="87654321","4321"') == ["+CME ERROR: 16"]  # wrong PUK
        assert await dte.ask('AT+CPINR="SIM PUK"') == ["+CPINR: SIM PUK,9,10", "OK"]
        assert await dte.ask('AT+CPIN="12345678","4321"') == ["OK"]
        assert await dte.ask("AT+CPIN?") == ["+CPIN: READY", "OK"]
        assert (await dte.ask("AT+CIMI"))[-1] == "OK"
        assert await dte.ask('AT+CPINR="SIM*"') == [
            "+CPINR: SIM PIN,3,3",
            "+CPINR: SIM PUK,10,10",
            "+CPINR: SIM PIN2,3,3",
            "+CPINR: SIM PUK2,10,10",
            "OK",
        ]
        assert await dte.ask('AT+CPIN="4321"') == ["+CME ERROR: 3"]  # nothing to enter: not allowed
        assert await dte.ask("AT+CPIN=?") == ["OK"]
        assert await dte.ask('AT+CPINR="PH-SIM PIN"') == ["OK"]  # no such code on this ME: nothing listed

    await with_dte(locked_card(tmp_path), body)


async def test_clck_and_cpwd_drive_the_cards_commands(tmp_path: Path) -> None:
    card = SimCard(load_profile(None), state_path=tmp_path / "state.json")

    async def body(dte: Dte) -> None:
        assert await dte.ask("AT+CPIN?") == ["+CPIN: READY", "OK"]
        assert await dte.ask("AT+CLCK=?") == ['+CLCK: ("SC","FD")', "OK"]
        assert await dte.ask('AT+CLCK="SC",2') == ["+CLCK: 0", "OK"]
        assert await dte.ask('AT+CLCK="SC",1,"0000"') == ["+CME ERROR: 16"]
        assert await dte.ask('AT+CLCK="SC",1,"1234"') == ["OK"]  # ENABLE PIN
        assert await dte.ask('AT+CLCK="SC",2') == ["+CLCK: 1", "OK"]
        assert await dte.ask('AT+CPINR="SIM PIN"') == ["+CPINR: SIM PIN,3,3", "OK"]
        assert await dte.ask('AT+CPWD="SC","1234","99"') == ["+CME ERROR: 16"]  # a new PIN of 2 digits
        assert await dte.ask('AT+CPWD="SC","0000","4321"') == ["+CME ERROR: 16"]
        assert await dte.ask('AT+CPWD="SC","1234","4321"') == ["OK"]  # CHANGE PIN
        assert await dte.ask('AT+CLCK="SC",0,"1234"') == ["+CME ERROR: 16"]
        assert await dte.ask('AT+CLCK="SC",0,"4321"') == ["OK"]  # DISABLE PIN
        assert await dte.ask('AT+CLCK="SC",2') == ["+CLCK: 0", "OK"]
        assert await dte.ask('AT+CLCK="SC",0') == ["+CME ERROR: 50"]  # a password is needed
        assert await dte.ask('AT+CLCK="XX",2') == ["+CME ERROR: 4"]
        assert await dte.ask('AT+CPWD="P2","5678","8765"') == ["OK"]
        assert await dte.ask("AT+CPWD=?") == ['+CPWD: ("SC",8),("P2",8)', "OK"]
        # FD: fixed dialling, EF_EST service 1 (TS 31.102 4.2.47), switched after PIN2 (now "8765")
        assert await dte.ask('AT+CLCK="FD",2') == ["+CLCK: 0", "OK"]
        assert await dte.ask('AT+CLCK="FD",1,"5678"') == ["+CME ERROR: 16"]
        assert await dte.ask('AT+CLCK="FD",1,"8765"') == ["OK"]
        assert await dte.ask('AT+CLCK="FD",2') == ["+CLCK: 1", "OK"]
        assert await dte.ask('AT+CLCK="FD",0,"8765"') == ["OK"]
        assert await dte.ask('AT+CLCK="FD",2') == ["+CLCK: 0", "OK"]
        for _ in range(2):
            assert await dte.ask('AT+CPWD="P2","0000","1111"') == ["+CME ERROR: 16"]
        assert await dte.ask('AT+CPWD="P2","0000","1111"') == ["+CME ERROR: 18"]  # PIN2 blocked: PUK2
        # right after a +CME ERROR: 18 the ME asks for PUK2 (27.007 8.3), and +CPIN takes it with a new PIN2
        assert await dte.ask("AT+CPIN?") == ["+CPIN: SIM PUK2", "OK"]
        assert await dte.ask('AT+CPINR="SIM PIN2"') == ["+CPINR: SIM PIN2,0,3", "OK"]
        assert await dte.ask('AT+CPIN="87654321"') == ["+CME ERROR: 18"]  # the new PIN2 is missing
        assert await dte.ask('AT+CPIN="87654321","2222"') == ["OK"]
        assert await dte.ask("AT+CPIN?") == ["+CPIN: READY", "OK"]  # PIN2 never held the ME back
        assert await dte.ask('AT+CPWD="P2","2222","5678"') == ["OK"]

    await with_dte(card, body)
    # all of it is on the card
    again = SimCard(load_profile(None), state_path=tmp_path / "state.json")
    assert run(again, "0020000100")[1] == "9000"  # PIN1 disabled
    assert run(again, "0020008100")[1] == "63C3"
    assert run(again, "0020008108" + PIN2)[1] == "9000"


@pytest.mark.parametrize(
    "line",
    ['AT+CPIN="1234","5678"', "AT+CPIN=1234,5678,9", 'AT+CPWD="SC"', "AT+CLCK", 'AT+CPIN=""', "AT+CPINR?"],
)
async def test_bad_forms_get_errors_and_the_counters_stay(tmp_path: Path, line: str) -> None:
    async def body(dte: Dte) -> None:
        answer = await dte.ask(line)
        assert answer[-1] in ("ERROR",) or answer[-1].startswith("+CME ERROR")
        assert await dte.ask('AT+CPINR="SIM PIN"') == ["+CPINR: SIM PIN,3,3", "OK"]

    await with_dte(locked_card(tmp_path), body)


# --- oFono, a real host stack -----------------------------------------------------------------------------------


def test_ofono_shows_pin_required_and_the_cards_retries(tmp_path: Path) -> None:
    """oFono's SimManager (through the phonesim plugin on `bipsim cp --listen`) reads PinRequired from +CPIN? and
    Retries from +CPINR: the card's counters, a false PIN's lost attempt included."""
    from tests.ofono_peer import OfonoPeer

    with OfonoPeer(tmp_path, cp_args=["--profile", "pin", "--state", str(tmp_path / "card.json")]) as peer:

        def sim() -> dict[str, object]:
            return peer.properties("org.ofono.SimManager")

        peer.call("org.ofono.Modem", "SetProperty", "sv", "Powered", "b", "true")
        peer.wait_for("PinRequired pin", lambda: sim().get("PinRequired") == "pin")
        assert sim()["Retries"] == {"pin": 3, "puk": 10, "pin2": 3, "puk2": 10}
        with pytest.raises(Exception, match="Operation failed"):
            peer.call("org.ofono.SimManager", "EnterPin", "ss", "pin", "0000")
        peer.wait_for("2 PIN attempts", lambda: dict(sim().get("Retries", {})).get("pin") == 2)  # type: ignore[call-overload]
        peer.call("org.ofono.SimManager", "EnterPin", "ss", "pin", "1234")
        # the phonesim plugin has no SIM-ready notification to end oFono's wait after a PIN: power the modem
        # off and on, and oFono reads the card's state afresh
        peer.call("org.ofono.Modem", "SetProperty", "sv", "Powered", "b", "false")
        peer.wait_for("powered off", lambda: peer.properties("org.ofono.Modem").get("Powered") is False)
        peer.call("org.ofono.Modem", "SetProperty", "sv", "Powered", "b", "true")
        peer.wait_for("PinRequired none", lambda: sim().get("PinRequired") == "none")
        assert dict(sim()["Retries"]).get("pin", 3) == 3  # type: ignore[call-overload]


def test_a_pending_proactive_command_is_a_normal_ending() -> None:
    """91 XX answers a PIN command like 90 00 while the toolkit has a command waiting (TS 102 221 10.2.1.1)."""
    from bipsim.cp.security_commands import PinCode, pin1_code, presentation_error

    assert pin1_code(0x9000, 0x63CA) is PinCode.READY
    assert pin1_code(0x63C2, 0x63CA) is PinCode.SIM_PIN
    assert pin1_code(0x63C0, 0x63CA) is PinCode.SIM_PUK
    assert pin1_code(0x63C0, 0x63C0) is None
    assert presentation_error(0x9000, puk_error=12) is None
    assert presentation_error(0x63C0, puk_error=12) == 12


async def test_cpin_is_ready_while_the_toolkit_has_a_command_pending(tmp_path: Path) -> None:
    card = SimCard(load_profile(None), state_path=tmp_path / "state.json")

    class Pending:
        def terminal_profile(self, profile: bytes) -> None:
            return None

        def pending_length(self) -> int:
            return 0x1E  # a proactive command waits: every 90 00 becomes 91 1E

        def fetch(self) -> bytes:
            raise AssertionError("not fetched here")

        def terminal_response(self, data: bytes) -> None:
            return None

        def envelope(self, data: bytes) -> bytes:
            return b""

    card.toolkit = Pending()
    assert run(card, "0020000100")[1] == "911E"

    async def body(dte: Dte) -> None:
        assert await dte.ask("AT+CPIN?") == ["+CPIN: READY", "OK"]
        assert await dte.ask('AT+CPINR="SIM PIN"') == ["+CPINR: SIM PIN,3,3", "OK"]

    await with_dte(card, body)


async def test_the_toolkit_runs_before_the_pin_is_entered(tmp_path: Path) -> None:
    """The choice (docs/protocols.md, "SIM security"): the CP sends TERMINAL PROFILE at activation, before any PIN
    (TS 102 221 section 14), and the card's toolkit starts its session whatever the PIN state: a PIN-locked card
    offers its first proactive command (SET UP EVENT LIST, before its OPEN CHANNEL) while +CPIN? says SIM PIN."""
    from bipsim.cp.modem import simulated_card

    transport, _ = simulated_card("pin", str(tmp_path / "card.json"), NULL_TRACER)
    driver = CardDriver(transport)
    await driver.start()
    assert driver.started.is_set()
    command, _ = await driver.fetch()
    assert command is not None and command.type_name == "SET UP EVENT LIST"
    core = ModemCommands(driver, CellularNetwork())
    security = SecurityCommands(core, NULL_TRACER, {})
    assert await security.pin1_state(core.slots[1]) is PinCode.SIM_PIN
