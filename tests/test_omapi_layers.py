"""The AP's OMAPI layers (docs/protocols.md, "OMAPI on the AP") against a fake modem at the AT level: the fake
answers +CPIN?, %SLOT, +CCHO, +CGLA and +CCHC as 27.007 says, over cards that are plain Python (an ARA-M giving
rule bytes built here, an echo applet), so each of issue 19's points is caused and checked without processes.
The real CP and card are the scenarios' (tests/test_omapi_scenarios.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import trio

from bipsim.ap.omapi.errors import (
    OmapiIllegalArgumentException,
    OmapiIllegalStateException,
    OmapiIOException,
    OmapiNoSuchElementException,
    OmapiSecurityException,
)
from bipsim.ap.omapi.framework import NoCardMode
from bipsim.ap.omapi.phone_interface import Gate
from bipsim.ap.omapi.service import AppIdentity, OmapiService
from bipsim.ap.omapi.stack import OmapiOptions, OmapiStack
from bipsim.link.at_chat_core import AtResponse
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer

ARA_M = "A00000015141434C00"
ECHO = bytes.fromhex("A000000476416E64726F696443545331")
OTHER = bytes.fromhex("A000000476416E64726F696443545332")
GRANTED = hashlib.sha1(b"bipsim OMAPI test application certificate 1").digest()
DENIED = hashlib.sha1(b"bipsim OMAPI test application certificate 2").digest()
APP = AppIdentity("org.example.wallet", GRANTED)
STRANGER = AppIdentity("org.example.other", DENIED)


def tlv(tag: int, value: bytes) -> bytes:
    head = tag.to_bytes(2 if tag > 0xFF else 1, "big")
    length = (
        bytes((len(value),))
        if len(value) < 0x80
        else (bytes((0x81, len(value))) if len(value) < 0x100 else b"\x82" + len(value).to_bytes(2, "big"))
    )
    return head + length + value


def rule(aid: bytes | None, cert_hash: bytes | None, apdu: bytes = b"\x01") -> bytes:
    ref = tlv(0x4F, aid or b"") + tlv(0xC1, cert_hash or b"")
    return tlv(0xE2, tlv(0xE1, ref) + tlv(0xE3, tlv(0xD0, apdu)))


def all_rules(*rules: bytes) -> bytes:
    return tlv(0xFF40, b"".join(rules))


@dataclass
class FakeCard:
    """A card with an ARA-M (when `rules` is not None) and the echo applet; `channels` logical channels."""

    rules: bytes | None = field(default_factory=lambda: all_rules(rule(ECHO, GRANTED)))
    refresh: bytes = bytes(8)
    channels: int = 3
    open: dict[int, bytes] = field(default_factory=dict)
    apdus: list[bytes] = field(default_factory=list)
    _next: bytes = b""

    def applet(self, aid: bytes) -> Callable[[bytes], bytes] | None:
        if aid == bytes.fromhex(ARA_M) and self.rules is not None:
            return self.ara_m
        if aid in (ECHO, OTHER):
            return lambda apdu: apdu[5:] + b"\x90\x00" if len(apdu) > 5 else b"\x90\x00"
        return None

    def ara_m(self, apdu: bytes) -> bytes:
        assert self.rules is not None
        if apdu[:4] == bytes.fromhex("80CAFF40"):
            first, self._next = self.rules[:250], self.rules[250:]
            return first + b"\x90\x00"
        if apdu[:4] == bytes.fromhex("80CAFF60"):
            part, self._next = self._next[:250], self._next[250:]
            return part + b"\x90\x00" if part else b"\x6a\x88"
        if apdu[:4] == bytes.fromhex("80CADF20"):
            return tlv(0xDF20, self.refresh) + b"\x90\x00"
        return b"\x6d\x00"


class FakeModem:
    """27.007 +CCHO/+CGLA/+CCHC/+CPIN? and %SLOT over FakeCards (None: an empty slot)."""

    def __init__(self, cards: dict[int, FakeCard | None]) -> None:
        self.cards = cards
        self.slot = 1
        self.lines: list[str] = []
        self.sessions: dict[int, tuple[int, int, bytes]] = {}  # session -> (slot, channel, aid)
        self.fail: dict[str, str] = {}  # command prefix -> final result to answer instead

    async def command(
        self, line: str, *, timeout: float | None = None, step: str | None = None
    ) -> AtResponse:
        await trio.lowlevel.checkpoint()
        self.lines.append(line)
        for prefix, final in self.fail.items():
            if line.startswith(prefix):
                return AtResponse(line, (), final)
        card = self.cards.get(self.slot)
        if line.startswith("AT%SLOT="):
            self.slot = int(line.split("=")[1])
            return AtResponse(line, (), "OK" if self.slot in self.cards else "+CME ERROR: 50")
        if card is None and not line.startswith(("AT+CGLA=", "AT+CCHC=")):
            return AtResponse(line, (), "+CME ERROR: 10")
        if line == "AT+CPIN?":
            return AtResponse(line, ("+CPIN: READY",), "OK")
        if line.startswith("AT+CCHO="):
            aid = bytes.fromhex(line.split('"')[1])
            used = {ch for (slot, ch, _) in self.sessions.values() if slot == self.slot}
            free = [ch for ch in range(1, card.channels + 1) if ch not in used]
            if not free:
                return AtResponse(line, (), "+CME ERROR: 20")  # 68 81 (docs/protocols.md, "Card slots")
            if card.applet(aid) is None:
                return AtResponse(line, (), "+CME ERROR: 22")
            session = max(self.sessions, default=0) + 1
            self.sessions[session] = (self.slot, free[0], aid)
            return AtResponse(line, (f"+CCHO: {session}",), "OK")
        if line.startswith("AT+CGLA="):
            session_text, _, data = line[8:].split(",", 2)
            entry = self.sessions.get(int(session_text))
            if entry is None:
                return AtResponse(line, (), "+CME ERROR: 21")
            card = self.cards.get(entry[0])  # +CGLA follows its session's slot, whatever %SLOT says
            if card is None:
                return AtResponse(line, (), "+CME ERROR: 10")
            apdu = bytes.fromhex(data.strip('"'))
            card.apdus.append(apdu)
            handler = card.applet(entry[2])
            assert handler is not None
            answer = handler(apdu)
            return AtResponse(line, (f'+CGLA: {2 * len(answer)},"{answer.hex().upper()}"',), "OK")
        if line.startswith("AT+CCHC="):
            if self.sessions.pop(int(line[8:]), None) is None:
                return AtResponse(line, (), "+CME ERROR: 21")
            return AtResponse(line, (), "OK")
        return AtResponse(line, (), "ERROR")


async def started(modem: FakeModem, **options: object) -> tuple[OmapiService, Tracer]:
    tracer = Tracer(keep=True, clock=trio.current_time, origin=0.0)
    stack = OmapiStack(OmapiOptions(slots=len(modem.cards), **options), tracer=tracer)  # type: ignore[arg-type]
    service = await stack.start(modem)
    return service, tracer


def steps(tracer: Tracer) -> list[str]:
    return [event.step for event in tracer.events if event.step and event.kind != Kind.AT_COMMAND]


def ccho_for(modem: FakeModem, aid: bytes) -> list[str]:
    return [line for line in modem.lines if line == f'AT+CCHO="{aid.hex().upper()}"']


async def test_boot_with_rules_loads_them_and_sets_the_variable_true() -> None:
    modem = FakeModem({1: FakeCard()})
    service, tracer = await started(modem)
    assert modem.lines[:5] == [
        "AT+CPIN?",
        f'AT+CCHO="{ARA_M}"',
        'AT+CGLA=1,10,"80CAFF4000"',
        'AT+CGLA=1,10,"80CADF2000"',
        "AT+CCHC=1",
    ]
    assert steps(tracer)[:6] == ["004:201", "004:202", "004:203", "004:204", "004:205", "004:301"]
    assert service.framework.variable(1) is True
    # OMAPI init: 302 check, 303 RIL, and the +CCHO that goes to the card (004:304) opens a channel: available
    assert [s for s in steps(tracer) if s.startswith("004:30")][1:3] == ["004:302", "004:303"]
    assert ccho_for(modem, bytes.fromhex(ARA_M)) == [f'AT+CCHO="{ARA_M}"'] * 2
    assert service.available == [1]


async def test_no_ara_m_sets_false_and_no_ccho_for_the_target_applet_reaches_the_modem() -> None:
    modem = FakeModem({1: FakeCard(rules=None)})
    service, tracer = await started(modem)
    assert "004:206" in steps(tracer) and "004:205" not in steps(tracer)
    assert service.available == []
    session = await (await service.se_service(APP).reader("SIM1")).open_session()
    with pytest.raises(OmapiSecurityException):
        await session.open_logical_channel(ECHO)
    assert ccho_for(modem, ECHO) == []
    errors = [e for e in tracer.events if e.kind == Kind.OMAPI_ERROR]
    assert errors[-1].step == "004:305" and errors[-1].field("exception") == "SecurityException"


@pytest.mark.parametrize("nfc", [False, True])
async def test_no_card_mode_1_sends_nothing_mode_2_tries_once(nfc: bool) -> None:
    skip = FakeModem({1: None})
    service, tracer = await started(skip, no_card_mode=NoCardMode.SKIP, nfc=nfc)
    assert skip.lines == ["AT+CPIN?"] and service.framework.variable(1) is False
    assert steps(tracer)[:3] == ["004:201", "004:202", "004:206"]
    attempt = FakeModem({1: None})
    service, tracer = await started(attempt, no_card_mode=NoCardMode.TRY, nfc=nfc)
    assert ccho_for(attempt, bytes.fromhex(ARA_M)) == [f'AT+CCHO="{ARA_M}"']
    assert steps(tracer)[:5] == ["004:201", "004:202", "004:203", "004:204", "004:206"]
    assert service.framework.variable(1) is False


@pytest.mark.parametrize("rules", [all_rules(rule(ECHO, GRANTED)), None])
async def test_the_nfc_switch_changes_nothing(rules: bytes | None) -> None:
    outcomes = []
    for nfc in (False, True):
        modem = FakeModem({1: FakeCard(rules=rules)})
        service, tracer = await started(modem, nfc=nfc)
        session = await (await service.se_service(APP).reader("SIM1")).open_session()
        try:
            channel = await session.open_logical_channel(ECHO)
            assert channel is not None
            outcome = (await channel.transmit(bytes.fromhex("0001000002CAFE"))).hex()
        except OmapiSecurityException as exc:
            outcome = exc.name
        outcomes.append((outcome, modem.lines, steps(tracer)))
    assert outcomes[0] == outcomes[1]


async def test_the_legacy_gate_refuses_without_an_nfc_process() -> None:
    modem = FakeModem({1: FakeCard()})
    service, tracer = await started(modem, nfc=False, gate=Gate.NFC_LEGACY)
    assert service.framework.variable(1) is True and service.available == []
    session = await (await service.se_service(APP).reader("SIM1")).open_session()
    with pytest.raises(OmapiSecurityException, match="NFC"):
        await session.open_logical_channel(ECHO)
    assert ccho_for(modem, ECHO) == []


async def test_the_legacy_gate_lets_the_nfc_process_open() -> None:
    # no rules at all: the old rule asks only for the NFC process
    modem = FakeModem({1: FakeCard(rules=None)})
    service, tracer = await started(modem, nfc=True, gate=Gate.NFC_LEGACY)
    # its initialisation channel goes to the ARA-M, which this card lacks: not offered by the chooser, yet named
    assert service.available == [] and service.framework.variable(1) is False
    channel = await (
        await (await service.se_service(APP).reader("SIM1")).open_session()
    ).open_logical_channel(ECHO)
    assert channel is not None and ccho_for(modem, ECHO)


async def test_two_cards_the_chooser_lists_the_available_ones_and_the_choice_is_used() -> None:
    modem = FakeModem({1: FakeCard(), 2: FakeCard(rules=None)})
    service, tracer = await started(modem, chooser="SIM2")
    assert service.available == [1]
    se = service.se_service(APP)
    with pytest.raises(OmapiNoSuchElementException):
        await se.choose_reader()  # SIM2 is not listed
    listed = [e.field("readers") for e in tracer.events if e.kind == Kind.OMAPI_CHOOSER]
    assert listed[0] == ["SIM1"]

    both = FakeModem({1: FakeCard(), 2: FakeCard()})
    service, tracer = await started(both, chooser="SIM2")
    assert service.available == [1, 2]
    reader = await service.se_service(APP).choose_reader()
    assert reader.name == "SIM2"
    before = len(both.lines)
    channel = await (await reader.open_session()).open_logical_channel(ECHO)
    assert channel is not None
    await channel.transmit(bytes.fromhex("00010000"))
    await channel.close()
    ours = both.lines[before:]
    # the open went to slot 2 (AT%SLOT=2 right before it), and the line was set back to slot 1 after it
    opened = ours.index(f'AT+CCHO="{ECHO.hex().upper()}"')
    assert ours[opened - 1] == "AT%SLOT=2" and ours[opened + 1] == "AT%SLOT=1"
    assert both.slot == 1
    assert both.cards[2] is not None and bytes.fromhex("00010000") in both.cards[2].apdus
    assert both.cards[1] is not None and bytes.fromhex("00010000") not in both.cards[1].apdus


async def test_transmit_returns_the_answer_unchanged_and_close_uses_the_same_session() -> None:
    modem = FakeModem({1: FakeCard()})
    service, _ = await started(modem)
    channel = await (
        await (await service.se_service(APP).reader("SIM1")).open_session()
    ).open_logical_channel(ECHO)
    assert channel is not None
    opened = modem.lines[-1]
    assert opened == f'AT+CCHO="{ECHO.hex().upper()}"'
    assert await channel.transmit(bytes.fromhex("8001000003ABCDEF")) == bytes.fromhex("ABCDEF9000")
    await channel.close()
    assert modem.lines[-1] == f"AT+CCHC={channel.session_id}"
    with pytest.raises(OmapiIllegalStateException):
        await channel.transmit(bytes.fromhex("00010000"))
    with pytest.raises(OmapiIllegalArgumentException):
        channel2 = await (
            await (await service.se_service(APP).reader("SIM1")).open_session()
        ).open_logical_channel(ECHO)
        assert channel2 is not None
        await channel2.transmit(bytes.fromhex("00A4040005A000000001"))


async def test_the_variable_is_read_not_recomputed_and_a_refresh_tag_change_reloads() -> None:
    card = FakeCard()
    modem = FakeModem({1: card})
    service, tracer = await started(modem)
    card.rules = all_rules(rule(ECHO, DENIED))  # the rules change after boot, the refresh tag does not
    reads = service.phone.reads
    session = await (await service.se_service(APP).reader("SIM1")).open_session()
    assert await session.open_logical_channel(ECHO) is not None  # the rules loaded at boot still hold
    assert service.phone.reads == reads + 1
    assert len([line for line in modem.lines if "80CAFF4000" in line]) == 1  # loaded once
    card.refresh = bytes.fromhex("0000000000000001")  # now the card says its rules changed
    session = await (await service.se_service(APP).reader("SIM1")).open_session()
    with pytest.raises(OmapiSecurityException):
        await session.open_logical_channel(ECHO)
    assert len([line for line in modem.lines if "80CAFF4000" in line]) == 2


async def test_an_application_no_rule_grants_gets_security_exception_with_the_variable_true() -> None:
    modem = FakeModem({1: FakeCard()})
    service, tracer = await started(modem)
    assert service.framework.variable(1) is True
    session = await (await service.se_service(STRANGER).reader("SIM1")).open_session()
    with pytest.raises(OmapiSecurityException, match="access rules"):
        await session.open_logical_channel(ECHO)
    assert ccho_for(modem, ECHO) == []
    (access,) = [e for e in tracer.events if e.kind == Kind.OMAPI_ACCESS]
    assert access.field("granted") is False


async def test_a_long_rule_set_is_read_with_get_data_next() -> None:
    many = all_rules(*(rule(ECHO[:-1] + bytes((n,)), GRANTED) for n in range(12)), rule(ECHO, GRANTED))
    assert len(many) > 500
    modem = FakeModem({1: FakeCard(rules=many)})
    service, _ = await started(modem)
    assert len([line for line in modem.lines if "80CAFF6000" in line]) == 2
    record = service.framework.cards[1]
    assert record.rules is not None and len(record.rules.rules) == 13 and record.enforce_carrier_privilege


@pytest.mark.parametrize(
    "bad",
    [
        b"\xff\x40\x05\xe2\x03\xe1\x01\x4f",  # a REF-DO cut short
        tlv(
            0xFF40, tlv(0xE2, tlv(0xE1, tlv(0xC1, GRANTED)) + tlv(0xE3, tlv(0xD0, b"\x01")))
        ),  # no AID-REF-DO
        tlv(
            0xFF40,
            tlv(0xE2, tlv(0xE1, tlv(0x4F, ECHO) + tlv(0xC1, b"\x01\x02")) + tlv(0xE3, tlv(0xD0, b"\x01"))),
        ),
        b"\x9f\x40\x00",
    ],
)
async def test_malformed_rules_leave_the_variable_false_with_the_reason(bad: bytes) -> None:
    modem = FakeModem({1: FakeCard(rules=bad)})
    service, tracer = await started(modem)
    assert service.framework.variable(1) is False
    (loaded,) = [e for e in tracer.events if e.kind == Kind.OMAPI_FRAMEWORK and e.field("event") == "loaded"]
    assert loaded.error and loaded.field("loaded") is False and "offset" in loaded.field("reason")
    assert modem.lines[-1] != f'AT+CCHO="{ARA_M}"'  # the ARA-M channel was closed again
    assert not modem.sessions


async def test_no_channel_left_is_null_and_an_unknown_applet_is_no_such_element() -> None:
    modem = FakeModem({1: FakeCard(channels=1)})
    service, tracer = await started(modem)
    session = await (await service.se_service(APP).reader("SIM1")).open_session()
    first = await session.open_logical_channel(ECHO)
    assert first is not None
    assert await session.open_logical_channel(ECHO) is None  # 6881 at the card: +CME ERROR: 20
    await first.close()
    modem.cards[1] = FakeCard(rules=all_rules(rule(None, GRANTED)))  # every applet granted; this AID absent
    service, _ = await started(modem)
    session = await (await service.se_service(APP).reader("SIM1")).open_session()
    with pytest.raises(OmapiNoSuchElementException):
        await session.open_logical_channel(bytes.fromhex("A0000000010203"))


async def test_modem_errors_and_a_removed_card_become_io_exception_without_a_hang() -> None:
    modem = FakeModem({1: FakeCard()})
    service, tracer = await started(modem)
    channel = await (
        await (await service.se_service(APP).reader("SIM1")).open_session()
    ).open_logical_channel(ECHO)
    assert channel is not None
    modem.cards[1] = None  # pulled out mid-session: the modem answers +CME ERROR: 10
    with trio.fail_after(5):
        with pytest.raises(OmapiIOException, match="gone"):
            await channel.transmit(bytes.fromhex("00010000"))
    assert not channel.is_open()
    await channel.close()  # already closed: no exception, no command
    modem.cards[1] = FakeCard()
    modem.fail["AT+CGLA"] = "+CME ERROR: 100"
    channel = await (
        await (await service.se_service(APP).reader("SIM1")).open_session()
    ).open_logical_channel(ECHO)
    assert channel is not None
    with pytest.raises(OmapiIOException):
        await channel.transmit(bytes.fromhex("00010000"))
    names = [e.field("exception") for e in tracer.events if e.kind == Kind.OMAPI_ERROR]
    assert names == ["IOException", "IOException"]
