"""The V.250 basics a host's init string sends (issue 16 item 4), each by its ITU-T V.250 section: before they
existed every one of these answered ERROR (wvdial's default init string failed at &C1 &D2, ModemManager's ATH)."""

from __future__ import annotations

import pytest

from bipsim.link.at_syntax import parse_line
from tests.modem_harness import modem


async def test_wvdial_init_string() -> None:
    """wvdial's default Init1/Init2 (ATZ, ATQ0 V1 E1 S0=0 &C1 &D2 +FCLASS=0): V.250 6.1.1, 6.2.8, 6.2.9, 6.3.8."""
    async with modem() as (m,):
        assert await m.dte.at("ATZ") == ["OK"]
        answer = await m.dte.at("ATQ0 V1 E0 S0=0 &C1 &D2 +FCLASS=0")
        assert answer == ["OK"]
        assert m.server.settings.dcd == 1 and m.server.settings.dtr == 2


async def test_s_registers() -> None:
    """S0 (V.250 6.3.8, rings before auto-answer), S6-S8, S10: set and read back; out of range is ERROR."""
    async with modem() as (m,):
        assert await m.dte.at("ATS0?") == ["000", "OK"]
        assert await m.dte.at("ATS0=3") == ["OK"]
        assert await m.dte.at("ATS0?") == ["003", "OK"]
        assert await m.dte.at("ATS7=60") == ["OK"]
        assert await m.dte.at("ATS7?") == ["060", "OK"]
        assert await m.dte.at("ATS6=1") == ["ERROR"]  # S6 is 2..10
        assert await m.dte.at("ATS9?") == ["ERROR"]  # not offered
        assert m.server.settings.s0 == 3


async def test_online_without_a_data_call_is_no_carrier() -> None:
    """O (V.250 6.3.7): no suspended data call to return to."""
    async with modem() as (m,):
        assert await m.dte.at("ATO") == ["NO CARRIER"]
        assert await m.dte.at("ATO0") == ["NO CARRIER"]
        assert await m.dte.at("ATV0") == ["0"]
        assert await m.dte.at("ATO") == ["3"]  # numeric NO CARRIER (V.250 table 1)


@pytest.mark.parametrize(
    ("line", "ok"),
    [("AT&C0", True), ("AT&C2", False), ("AT&D0", True), ("AT&D3", False), ("ATX0", True), ("ATX5", False)],
)
async def test_basic_ranges(line: str, ok: bool) -> None:
    """&C 0-1 (6.2.8), &D 0-2 (6.2.9), X 0-4 (6.2.7)."""
    async with modem() as (m,):
        assert await m.dte.at(line) == (["OK"] if ok else ["ERROR"])


async def test_gcap_and_fclass() -> None:
    """+GCAP (V.250 6.1.9) lists +CGSM; +FCLASS (T.31 8.2) offers data (0) only."""
    async with modem() as (m,):
        assert await m.dte.at("AT+GCAP") == ["+GCAP: +CGSM,+FCLASS", "OK"]
        assert await m.dte.at("AT+FCLASS=?") == ["+FCLASS: (0)", "OK"]
        assert await m.dte.at("AT+FCLASS?") == ["+FCLASS: 0", "OK"]
        assert await m.dte.at("AT+FCLASS=1") == ["ERROR"]


async def test_ifc_icf_ipr() -> None:
    """+IFC (6.2.12), +ICF (6.2.11), +IPR (6.2.10): kept and reported; an omitted value keeps its setting."""
    async with modem() as (m,):
        assert await m.dte.at("AT+IFC?") == ["+IFC: 2,2", "OK"]
        assert await m.dte.at("AT+IFC=0,0") == ["OK"]
        assert await m.dte.at("AT+IFC=,1") == ["OK"]
        assert await m.dte.at("AT+IFC?") == ["+IFC: 0,1", "OK"]
        assert await m.dte.at("AT+IFC=4") == ["ERROR"]
        assert await m.dte.at("AT+ICF=3,3") == ["OK"]
        assert await m.dte.at("AT+ICF=7") == ["ERROR"]
        assert await m.dte.at("AT+IPR=921600") == ["OK"]
        assert await m.dte.at("AT+IPR?") == ["+IPR: 921600", "OK"]
        assert await m.dte.at("AT+IPR=1234") == ["ERROR"]
        assert "921600" in (await m.dte.at("AT+IPR=?"))[0]


async def test_store_and_restore_profile() -> None:
    """&W stores the active profile, Z (V.250 6.1.1) restores it, &F (6.1.2) the factory one; &V shows both."""
    async with modem() as (m,):
        assert await m.dte.at("AT&D0 S0=2 +IPR=57600") == ["OK"]
        assert await m.dte.at("AT&W") == ["OK"]
        assert await m.dte.at("AT&D1 S0=0") == ["OK"]
        view = await m.dte.at("AT&V")
        assert view[0] == "ACTIVE PROFILE:" and "&D1" in view[1] and "S00:000" in view[1]
        assert view[2] == "STORED PROFILE 0:" and "&D0" in view[3] and "+IPR=57600" in view[3]
        assert view[1].endswith("S10:014 S12:050")
        assert await m.dte.at("ATZ") == ["OK"]
        assert m.server.settings.dtr == 0 and m.server.settings.s0 == 2 and m.server.settings.ipr == 57600
        assert await m.dte.at("AT&F") == ["OK"]
        assert m.server.settings.dtr == 2 and m.server.settings.s0 == 0


async def test_dlc_profile_is_shared_store() -> None:
    """The stored profile is the modem's: a second channel's Z restores what the first one's &W stored."""
    async with modem(lines=2) as (one, two):
        assert await one.dte.at("AT&C0&W") == ["OK"]
        assert await two.dte.at("ATZ") == ["OK"]
        assert two.server.settings.dcd == 0


def test_dial_string_takes_the_rest_of_the_line() -> None:
    """V.250 6.3.1: D's dial string is the rest of the command line, ';' included (27.007 6.2's voice call)."""
    (request,) = parse_line("ATD+15551234;")
    assert request.name == "D" and request.args == ("+15551234;",)
    *_, dial = parse_line("ATE0D*99***1#")
    assert dial.args == ("*99***1#",)
