"""Vendor AT dialects (cp/dialects.py): one table row per dialect of what a host sees — identification, the ICCID
command, the SIM-state report and its URCs when the card is pulled and put back, the logical-channel quirks, the
+QCFG-style settings and the boot URCs — checked over a memory stream against the simulated card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from bipsim.cp.card_driver import CardDriver
from bipsim.cp.command_sets import build_command_sets
from bipsim.cp.commands import IMEI, ModemCommands
from bipsim.cp.dialects import DIALECTS, dialect_set
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
    ccho_test_ok: bool
    boot: list[str]
    setting: tuple[str, str] | None  # (read command, answer)


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
        True,
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
        False,
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
        True,
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
        True,
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
        True,
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


async def _lines(dte: Dte, command: str) -> list[str]:
    answer = await dte.at(command)
    assert answer.endswith("\r\nOK\r\n"), answer
    return info(answer, command)


@pytest.mark.parametrize("name", list(TABLE))
async def test_dialect_row(name: str, nursery: trio.Nursery) -> None:
    row = TABLE[name]
    dte, card, commands = await _start(nursery, name)
    boot = await dte.quiet("")  # what the line shows before any command
    assert [line for line in boot.split("\r\n") if line] == row.boot
    assert await _lines(dte, "AT+CGMI") == [row.cgmi]
    assert await _lines(dte, "AT+GMM") == [row.cgmm]
    assert await _lines(dte, "AT+CGMR") == [row.cgmr]
    assert await _lines(dte, "ATI") == row.ati
    if row.iccid is not None:
        command, answer = row.iccid
        assert await _lines(dte, command) == [answer]
    # the logical-channel test forms: OK, or ERROR for a firmware that lacks them (the commands still work)
    answer = await dte.at("AT+CCHO=?")
    assert answer.endswith("\r\nOK\r\n" if row.ccho_test_ok else "\r\nERROR\r\n"), answer
    opened = await _lines(dte, 'AT+CCHO="A0000000871002FF33FF018900000100"')
    assert opened and opened[0].startswith("+CCHO: ")
    if row.setting is not None:
        command, answer = row.setting
        assert await _lines(dte, command) == [answer]
    if row.status is not None:
        enable, read, gone, back = row.status
        if enable:
            await _lines(dte, enable)
            assert await _lines(dte, enable.split("=")[0] + "?") == [read]
        card.remove()
        urcs = await dte.quiet("")
        assert gone in urcs.split("\r\n"), urcs
        card.insert()
        await commands.slots[1].power_on()
        urcs = await dte.quiet("")
        assert back in urcs.split("\r\n"), urcs


async def test_status_urcs_stay_off_until_asked(nursery: trio.Nursery) -> None:
    dte, card, _ = await _start(nursery, "quectel")
    await dte.quiet("")
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
    await dte.quiet("")
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
