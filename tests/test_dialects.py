"""Vendor AT dialects (cp/dialects.py): one table row per dialect of what a host sees — identification, the ICCID
command, the SIM-state report and its URCs when the card is pulled and put back, the logical-channel quirks, the
+QCFG-style settings, the boot URCs and the E/V/Q defaults — checked over a memory stream against the simulated
card; and per logical-channel quirk (lpac issues #138, #139, #164, #179, #209) a host opening the ARA-M's channel the
way lpac does on that module."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import trio
import trio.testing

from bipsim.cp.card_driver import CardDriver
from bipsim.cp.command_sets import build_command_sets
from bipsim.cp.commands import IMEI, ModemCommands
from bipsim.cp.dialects import DIALECTS, DialectCommands, dialect_set
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork
from bipsim.link.at_server import AtServer
from bipsim.trace.recorder import NULL_TRACER
from bipsim.uicc.profile import load_profile
from bipsim.uicc.sim_transport import SimulatedCard
from tests.test_cp_commands import Dte, info

ICCID = load_profile(None).iccid


@dataclass(frozen=True)
class Row:
    """What a host sees of one dialect."""

    cgmi: str
    cgmm: str
    cgmr: str
    ati: list[str]
    iccid: tuple[str, str] | None  # (command, answer)
    status: (
        tuple[str, str, str, str] | None
    )  # (enable command, read answer with the card, URC gone, URC back)
    no_test_forms: tuple[str, ...]  # of +CCHO, +CCHC, +CGLA: the test forms answered ERROR
    ccho: str | None  # the form of +CCHO's answer (a regular expression); None: +CCHO is absent (ERROR)
    boot: list[str]
    setting: tuple[str, str] | None  # (read command, answer)
    evq: tuple[bool, bool, bool] = (True, True, False)  # E, V, Q when the line opens and after Z / &F


TABLE = {
    "generic": Row(
        "bipsim",
        "bipsim CP (dual-processor modem simulator)",
        DIALECTS["generic"].revision,
        [
            "Manufacturer: bipsim",
            "Model: bipsim CP (dual-processor modem simulator)",
            f"Revision: {DIALECTS['generic'].revision}",
            f"IMEI: {IMEI}",
        ],
        None,
        None,
        (),
        r"\+CCHO: \d+",
        [],
        None,
    ),
    "quectel": Row(
        "Quectel",
        "EC25",
        "EC25EFAR06A06M4G",
        ["Quectel", "EC25", "Revision: EC25EFAR06A06M4G"],
        ("AT+QCCID", f"+QCCID: {ICCID}"),
        ("AT+QSIMSTAT=1", "+QSIMSTAT: 1,1", "+QSIMSTAT: 1,0", "+QSIMSTAT: 1,1"),
        ("+CCHO", "+CCHC", "+CGLA"),
        r"\+CCHO: \d+",
        ["RDY", "+CPIN: READY", "+QUSIM: 1", "+QIND: SMS DONE", "+QIND: PB DONE"],
        ('AT+QCFG="usbnet"', '+QCFG: "usbnet",0'),
    ),
    "simcom": Row(
        "SIMCOM INCORPORATED",
        "SIMCOM_SIM7600E-H",
        "+CGMR: LE20B04SIM7600M22",
        [
            "Manufacturer: SIMCOM INCORPORATED",
            "Model: SIMCOM_SIM7600E-H",
            "Revision: LE20B04SIM7600M22",
            f"IMEI: {IMEI}",
            "+GCAP: +CGSM",
        ],
        ("AT+CICCID", f"+ICCID: {ICCID}"),
        ("", "", "+SIMCARD: NOT AVAILABLE", "+CPIN: READY"),
        (),
        r"\+CCHO: \d+",
        ["RDY", "+CPIN: READY", "SMS DONE", "PB DONE"],
        None,
    ),
    "ublox": Row(
        "u-blox",
        "SARA-R410M-02B",
        "L0.0.00.00.05.08",
        ["Manufacturer: u-blox", "Model: SARA-R410M-02B", "Revision: L0.0.00.00.05.08", f"IMEI: {IMEI}"],
        ("AT+CCID", f"+CCID: {ICCID}"),
        ("AT+USIMSTAT=1", "+USIMSTAT: 1", "+UUSIMSTAT: 0", "+UUSIMSTAT: 6"),
        (),
        r"\+CCHO: \d+",
        [],
        ("AT+UMNOPROF?", "+UMNOPROF: 100"),
    ),
    "telit": Row(
        "Telit",
        "LE910C1-EU",
        "25.21.660",
        ["Telit"],
        ("AT#CCID", f"#CCID: {ICCID}"),
        ("AT#QSS=1", "#QSS: 1,1", "#QSS: 0", "#QSS: 1"),
        (),
        r"\+CCHO: \d+",
        [],
        None,
    ),
    "fibocom": Row(
        "Fibocom Wireless Inc.",
        "FM350-GL",
        "81600.0000.00.29.22.40",
        [
            "Manufacturer: Fibocom Wireless Inc.",
            "Model: FM350-GL",
            "Revision: 81600.0000.00.29.22.40",
            f"IMEI: {IMEI}",
        ],
        None,
        None,
        (),
        r"\d+",  # lpac #209: a bare "1"
        [],
        None,
    ),
    "sierra": Row(
        "Sierra Wireless, Incorporated",
        "MC7455",
        "SWI9X30C_02.24.05.06",
        [
            "Manufacturer: Sierra Wireless, Incorporated",
            "Model: MC7455",
            "Revision: SWI9X30C_02.24.05.06",
            f"IMEI: {IMEI}",
            "+GCAP: +CGSM",
        ],
        None,
        None,
        ("+CGLA",),
        r"\+CCHO: [0-9a-f]{16}",  # lpac #138: +CCHO: 000000000385a7cf
        [],
        None,
    ),
    "dell": Row(
        "Dell Inc.",
        "DW5821e Snapdragon X20 LTE",
        "T77W968.F1.0.0.4.0.GC.009",
        [
            "Manufacturer: Dell Inc.",
            "Model: DW5821e Snapdragon X20 LTE",
            "Revision: T77W968.F1.0.0.4.0.GC.009",
            f"IMEI: {IMEI}",
        ],
        None,
        None,
        ("+CCHO", "+CCHC", "+CGLA"),
        None,  # lpac #164: no +CCHO, +CCHC, +CGLA
        [],
        None,
    ),
}


def test_every_dialect_has_a_row_and_cites_its_manual() -> None:
    assert set(TABLE) == set(DIALECTS)
    for dialect in DIALECTS.values():
        assert dialect.manual and any(ch.isdigit() for ch in dialect.manual), dialect.name


async def _start(nursery: trio.Nursery, name: str) -> tuple[Dte, SimulatedCard, ModemCommands]:
    card, _ = simulated_card(None, None, NULL_TRACER)
    assert isinstance(card, SimulatedCard)
    commands = ModemCommands(CardDriver(card), CellularNetwork())
    commands.command_sets = build_command_sets(commands, NULL_TRACER, {"dialect": name})
    a, b = trio.testing.memory_stream_pair()
    server = AtServer(b)
    commands.install(server)
    nursery.start_soon(server.run)
    return Dte(a), card, commands


async def _read_until(dte: Dte, last: str | None) -> str:
    """Everything the line shows until `last` (a URC the test caused) has arrived whole, then until it is idle:
    waited for, not hoped for (a boot or SIM-state URC can follow a worker thread on a loaded machine)."""
    text = ""
    if last is not None:
        with trio.fail_after(30):
            while last not in text.split("\r\n") or not text.endswith("\r\n"):
                text += (await dte.stream.receive_some()).decode("latin-1")
    return text + await dte.quiet("")


async def _booted(dte: Dte, name: str) -> str:
    """The boot URCs of dialect `name` (none for most), waited for."""
    boot = TABLE[name].boot
    return await _read_until(dte, boot[-1] if boot else None)


async def _lines(dte: Dte, command: str) -> list[str]:
    answer = await dte.at(command)
    assert answer.endswith("\r\nOK\r\n"), answer
    return info(answer, command)


@pytest.mark.parametrize("name", list(TABLE))
async def test_dialect_row(name: str, nursery: trio.Nursery) -> None:
    row = TABLE[name]
    dte, card, commands = await _start(nursery, name)
    boot = await _booted(dte, name)  # what the line shows before any command
    assert [line for line in boot.split("\r\n") if line] == row.boot
    assert await _lines(dte, "AT+CGMI") == [row.cgmi]
    assert await _lines(dte, "AT+GMM") == [row.cgmm]
    assert await _lines(dte, "AT+CGMR") == [row.cgmr]
    assert await _lines(dte, "ATI") == row.ati
    if row.iccid is not None:
        command, answer = row.iccid
        assert await _lines(dte, command) == [answer]
    # the logical-channel test forms: OK, or ERROR for a firmware that lacks them (the commands may still work)
    for name in ("+CCHO", "+CCHC", "+CGLA"):
        answer = await dte.at(f"AT{name}=?")
        assert answer.endswith("\r\nERROR\r\n" if name in row.no_test_forms else "\r\nOK\r\n"), answer
    command = 'AT+CCHO="A0000000871002FF33FF018900000100"'
    if row.ccho is None:
        assert (await dte.at(command)).endswith("\r\nERROR\r\n")
    else:
        opened = await _lines(dte, command)
        assert len(opened) == 1 and re.fullmatch(row.ccho, opened[0]), opened
    if row.setting is not None:
        command, answer = row.setting
        assert await _lines(dte, command) == [answer]
    if row.status is not None:
        enable, read, gone, back = row.status
        if enable:
            await _lines(dte, enable)
            assert await _lines(dte, enable.split("=")[0] + "?") == [read]
        card.remove()
        urcs = await _read_until(dte, gone)
        assert gone in urcs.split("\r\n"), urcs
        card.insert()
        await commands.slots[1].power_on()
        urcs = await _read_until(dte, back)
        assert back in urcs.split("\r\n"), urcs


async def test_status_urcs_stay_off_until_asked(nursery: trio.Nursery) -> None:
    dte, card, _ = await _start(nursery, "quectel")
    await _booted(dte, "quectel")
    assert await _lines(dte, "AT+QSIMSTAT?") == ["+QSIMSTAT: 0,1"]
    assert await _lines(dte, "AT+QSIMSTAT=?") == ["+QSIMSTAT: (0,1)"]
    card.remove()
    assert "+QSIMSTAT" not in await dte.quiet("")
    assert await _lines(dte, "AT+QSIMSTAT?") == ["+QSIMSTAT: 0,0"]
    answer = await dte.at("AT+QSIMSTAT=7")
    assert answer.endswith("ERROR\r\n"), answer
    assert "ERROR" in await dte.at("AT+QCCID")  # no card: its ICCID cannot be read


async def test_settings_command_reads_sets_and_refuses_unknown_names(nursery: trio.Nursery) -> None:
    dte, _, _ = await _start(nursery, "quectel")
    await _booted(dte, "quectel")
    await _lines(dte, "AT+CMEE=1")
    await _lines(dte, 'AT+QCFG="nwscanmode",3,1')
    assert await _lines(dte, 'AT+QCFG="nwscanmode"') == ['+QCFG: "nwscanmode",3,1']
    assert (await dte.at('AT+QCFG="nosuch"')).endswith("+CME ERROR: 50\r\n")
    assert (await dte.at("AT+QCFG=1")).endswith("+CME ERROR: 50\r\n")


def test_an_unknown_dialect_is_refused() -> None:
    card, _ = simulated_card(None, None, NULL_TRACER)
    commands = ModemCommands(CardDriver(card), CellularNetwork())
    with pytest.raises(ValueError, match="quectel"):
        dialect_set(commands, NULL_TRACER, {"dialect": "nokia"})


def test_cli_offers_the_dialects(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bipsim.cli import cli

    result = CliRunner().invoke(cli, ["cp", "--help"])
    assert result.exit_code == 0 and "--dialect" in result.output
    for name in DIALECTS:
        assert name in result.output


async def _fresh_line(dte: Dte) -> tuple[bool, bool, bool]:
    """E, V and Q as a host sees them: is "AT" echoed, is its OK verbose, is there a result at all."""
    answer = await dte.quiet("AT")
    echoed = answer.startswith("AT\r")
    body = answer[3:] if echoed else answer
    if not body:
        return echoed, True, True  # Q1: no result code (V cannot be seen)
    assert body in ("\r\nOK\r\n", "0\r"), answer
    return echoed, body == "\r\nOK\r\n", False


@pytest.mark.parametrize("name", list(TABLE))
async def test_dialect_echo_verbose_quiet_defaults(name: str, nursery: trio.Nursery) -> None:
    """The E/V/Q column: the dialect's settings when the line opens, and again after Z and after &F."""
    dte, _, _ = await _start(nursery, name)
    await _booted(dte, name)
    assert await _fresh_line(dte) == TABLE[name].evq
    for reset in ("ATZ", "AT&F"):
        await dte.quiet("ATE0V0Q1")
        assert await _fresh_line(dte) == (False, True, True)
        await dte.quiet(reset)
        assert await _fresh_line(dte) == TABLE[name].evq, reset


async def test_a_dialect_default_other_than_v250s_is_applied_and_restored(nursery: trio.Nursery) -> None:
    """The mechanism behind the column: a row saying E0 V0 opens the line so and Z / &F come back to it."""
    card, _ = simulated_card(None, None, NULL_TRACER)
    commands = ModemCommands(CardDriver(card), CellularNetwork())
    quiet_sierra = replace(DIALECTS["sierra"], echo=False, verbose=False)
    commands.command_sets = [DialectCommands(commands, NULL_TRACER, quiet_sierra)]
    a, b = trio.testing.memory_stream_pair()
    server = AtServer(b)
    commands.install(server)
    nursery.start_soon(server.run)
    dte = Dte(a)
    assert await _fresh_line(dte) == (False, False, False)
    for reset in ("ATZ", "AT&F"):
        await dte.quiet("ATE1V1")
        assert await _fresh_line(dte) == (True, True, False)
        await dte.quiet(reset)
        assert await _fresh_line(dte) == (False, False, False), reset


async def _start_omapi(nursery: trio.Nursery, name: str) -> Dte:
    """A CP of dialect `name` over the built-in "omapi" card profile, which has the ARA-M (uicc/applets/ara_m.py)."""
    card, _ = simulated_card("omapi", None, NULL_TRACER)
    commands = ModemCommands(CardDriver(card), CellularNetwork())
    commands.command_sets = build_command_sets(commands, NULL_TRACER, {"dialect": name})
    a, b = trio.testing.memory_stream_pair()
    server = AtServer(b)
    commands.install(server)
    nursery.start_soon(server.run)
    dte = Dte(a)
    await _booted(dte, name)
    return dte


ARA_M = "A00000015141434C00"
GET_ALL_RULES = "80CAFF4000"  # GET DATA Get All (GlobalPlatform SE Access Control 1.1, section 6.4.4)


def _rules_answer(data: str) -> None:
    """The ARA-M's answer to GET ALL: a Response-ALL-REF-AR-DO (FF40) ending 90 00."""
    assert data.startswith("FF40") and data.endswith("9000"), data


async def test_fibocom_answers_ccho_and_cgla_bare(nursery: trio.Nursery) -> None:
    """lpac #209 / #179: the test forms answer OK, +CCHO answers a bare session id and +CGLA a bare
    <length>,"<response>"; the session then works as 27.007 says (+CCHC)."""
    dte = await _start_omapi(nursery, "fibocom")
    for name in ("+CCHO", "+CCHC", "+CGLA"):
        assert (await dte.at(f"AT{name}=?")).endswith("\r\nOK\r\n")
    opened = await _lines(dte, f'AT+CCHO="{ARA_M}"')
    assert len(opened) == 1 and opened[0].isdigit(), opened  # "1", not "+CCHO: 1"
    session = opened[0]
    answered = await _lines(dte, f'AT+CGLA={session},{len(GET_ALL_RULES)},"{GET_ALL_RULES}"')
    assert len(answered) == 1 and not answered[0].startswith("+"), answered
    length, quoted = answered[0].split(",")
    data = quoted.strip('"')
    assert int(length) == len(data)
    _rules_answer(data)
    assert await _lines(dte, f"AT+CCHC={session}") == []
    assert (await dte.at(f'AT+CGLA={session},10,"{GET_ALL_RULES}"')).endswith("\r\nERROR\r\n")  # closed


async def test_sierra_gives_hex_session_handles_and_no_cgla_test_form(nursery: trio.Nursery) -> None:
    """lpac #138 / #139: +CCHO answers a 16-digit hex handle, which +CGLA and +CCHC take back as it is;
    AT+CGLA=? is ERROR though +CGLA works; a small number (a channel number, as old lpac sent) is no session."""
    dte = await _start_omapi(nursery, "sierra")
    assert (await dte.at("AT+CCHO=?")).endswith("\r\nOK\r\n")
    assert (await dte.at("AT+CGLA=?")).endswith("\r\nERROR\r\n")
    opened = await _lines(dte, f'AT+CCHO="{ARA_M}"')
    assert len(opened) == 1 and re.fullmatch(r"\+CCHO: [0-9a-f]{16}", opened[0]), opened
    handle = opened[0].removeprefix("+CCHO: ")
    assert not handle.isdigit()
    await _lines(dte, "AT+CMEE=1")
    assert (await dte.at(f'AT+CGLA=1,10,"{GET_ALL_RULES}"')).endswith("\r\n+CME ERROR: 21\r\n")
    answered = await _lines(dte, f'AT+CGLA={handle},10,"{GET_ALL_RULES}"')
    assert len(answered) == 1 and answered[0].startswith("+CGLA: "), answered
    _rules_answer(answered[0].split(",")[1].strip('"'))
    second = await _lines(dte, f'AT+CCHO="{ARA_M}"')
    assert second != opened  # each session its own handle
    assert await _lines(dte, f"AT+CCHC={handle.upper()}") == []  # hex digits in either case
    assert (await dte.at(f"AT+CCHC={handle}")).endswith("\r\n+CME ERROR: 21\r\n")  # already closed
    assert (await dte.at("AT+CCHC=zz")).endswith("\r\n+CME ERROR: 21\r\n")


async def test_dell_has_only_csim_and_a_host_uses_manage_channel(nursery: trio.Nursery) -> None:
    """lpac #164: +CCHO, +CCHC and +CGLA are absent (ERROR, also their test forms); the host opens a channel with
    AT+CSIM=10,"0070000000", selects and talks to the ARA-M on it, and closes it with AT+CSIM=10,"0070800100"."""
    dte = await _start_omapi(nursery, "dell")
    for command in ("AT+CCHO=?", f'AT+CCHO="{ARA_M}"', "AT+CCHC=1", f'AT+CGLA=1,10,"{GET_ALL_RULES}"'):
        assert (await dte.at(command)).endswith("\r\nERROR\r\n"), command
    assert await _lines(dte, 'AT+CSIM=10,"0070000000"') == ['+CSIM: 6,"019000"']  # channel 1
    select = f"01A40400{len(ARA_M) // 2:02X}{ARA_M}"
    assert await _lines(dte, f'AT+CSIM={len(select)},"{select}"') == ['+CSIM: 4,"9000"']
    answered = await _lines(dte, f'AT+CSIM=10,"81{GET_ALL_RULES[2:]}"')  # class 80 on channel 1: 81
    _rules_answer(answered[0].split(",")[1].strip('"'))
    assert await _lines(dte, 'AT+CSIM=10,"0070800100"') == ['+CSIM: 4,"9000"']
    closed = await _lines(dte, f'AT+CSIM=10,"81{GET_ALL_RULES[2:]}"')
    assert not closed[0].endswith('9000"'), closed  # the channel is gone
