"""The 27.007 status commands host stacks poll (issue 16 item 8, cp/status_commands.py), each by its section;
before they existed every one answered ERROR."""

from __future__ import annotations

from datetime import UTC, datetime

from bipsim.cp.network import RegStatus
from bipsim.cp.status_commands import StatusCommands
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from tests.modem_harness import Modem, modem

NOW = datetime(2026, 11, 30, 15, 4, 5, tzinfo=UTC)


def status_of(m: Modem) -> StatusCommands:
    found = [s for s in m.core.command_sets if isinstance(s, StatusCommands)]
    assert found, "the status command set is not among the modem's"
    found[0].clock = lambda: NOW
    return found[0]


async def test_cclk_network_time_and_set() -> None:
    """+CCLK (8.15): the network's time in the network's zone; +CCLK= sets it; a bad one is +CME ERROR: 50."""
    async with modem() as (m,):
        status_of(m)
        assert await m.dte.at("AT+CCLK?") == ['+CCLK: "26/11/30,15:04:05+00"', "OK"]
        assert await m.dte.at('AT+CCLK="27/01/02,03:04:05+08"') == ["OK"]
        assert await m.dte.at("AT+CCLK?") == ['+CCLK: "27/01/02,03:04:05+08"', "OK"]
        assert await m.dte.at('AT+CMEE=1;+CCLK="27/13/02,03:04:05+08"') == ["+CME ERROR: 50"]


async def test_ctzu_ctzr_on_a_network_time_zone_change() -> None:
    """+CTZR=1 gives +CTZV: <tz>, =2 +CTZE: <tz>,<dst>,<time> (8.41); +CTZU=1 moves +CCLK's zone (8.40)."""
    tracer = Tracer(keep=True)
    async with modem(tracer=tracer, lines=2) as (m, other):
        status_of(m)
        assert await m.dte.at("AT+CTZU=1;+CTZR=1") == ["OK"]
        assert await other.dte.at("AT+CTZR=2") == ["OK"]
        m.network.set_time_zone(4, 1)
        assert await m.dte.urcs(1) == ['+CTZV: "+04"']
        assert await other.dte.urcs(1) == ['+CTZE: "+04",1,"2026/11/30,16:04:05"']
        assert await m.dte.at("AT+CCLK?") == ['+CCLK: "26/11/30,16:04:05+04"', "OK"]
        assert any(e.kind == Kind.NITZ and e.fields["tz"] == 4 for e in tracer.events)
        assert await m.dte.at("AT+CTZR=3") == ["ERROR"]


async def test_cbc_battery() -> None:
    """+CBC (8.4): <bcs>,<bcl>."""
    async with modem() as (m,):
        status = status_of(m)
        assert await m.dte.at("AT+CBC") == ["+CBC: 0,100", "OK"]
        status.set_battery(42, charging=True)
        assert await m.dte.at("AT+CBC") == ["+CBC: 1,42", "OK"]


async def test_ceer_after_a_refused_activation() -> None:
    """+CEER (6.10): the last failure's cause."""
    async with modem() as (m,):
        assert await m.dte.at('AT+CGDCONT=1,"IP","nowhere";+CGACT=1,1') == ["ERROR"]
        (line, ok) = await m.dte.at("AT+CEER")
        assert line.startswith('+CEER: "PDP activation of <cid> 1 rejected') and "#27" in line and ok == "OK"


async def test_cind_cmer_ciev() -> None:
    """+CIND (8.9) names and values; +CMER=3,0,0,1 (8.10) sends +CIEV on changes: service and signal on
    deregistration, battchg on the battery; <mode> 0 buffers them until +CMER=3,0,0,1,1."""
    async with modem(lines=2) as (m, other):
        status = status_of(m)
        (test, _) = await m.dte.at("AT+CIND=?")
        assert test.startswith('+CIND: ("battchg",(0-5)),("signal",(0-5)),("service",(0-1))')
        assert await m.dte.at("AT+CIND?") == ["+CIND: 5,3,1,0,0,0,0,0", "OK"]
        assert await m.dte.at("AT+CMER=3,0,0,1") == ["OK"]
        assert await other.dte.at("AT+CMER=0,0,0,1") == ["OK"]
        m.network.set_status(RegStatus.NOT_REGISTERED)
        assert await m.dte.urcs(2) == ["+CIEV: 2,0", "+CIEV: 3,0"]
        status.set_battery(10)
        assert await m.dte.urcs(1) == ["+CIEV: 1,0"]
        m.network.set_status(RegStatus.ROAMING)
        assert await m.dte.urcs(3) == ["+CIEV: 2,3", "+CIEV: 3,1", "+CIEV: 5,1"]
        assert await other.dte.urcs() == []
        assert await other.dte.at("AT+CMER=3,0,0,1,1") == ["OK"]
        assert len(await other.dte.urcs(6)) == 6
        assert await m.dte.at("AT+CMER=3,1") == ["ERROR"]  # no keypad events


async def test_cesq() -> None:
    """+CESQ (8.69) on E-UTRAN: RSRQ and RSRP known, the rest 99/255; deregistered nothing is known."""
    async with modem() as (m,):
        assert await m.dte.at("AT+CESQ") == ["+CESQ: 99,99,255,255,20,48", "OK"]  # rssi 20: -73 dBm
        m.network.set_status(RegStatus.NOT_REGISTERED)
        assert await m.dte.at("AT+CESQ") == ["+CESQ: 99,99,255,255,255,255", "OK"]


async def test_ws46() -> None:
    async with modem() as (m,):
        assert await m.dte.at("AT+WS46?") == ["+WS46: 25", "OK"]
        assert await m.dte.at("AT+WS46=28") == ["OK"]
        assert await m.dte.at("AT+WS46?") == ["+WS46: 28", "OK"]
        assert await m.dte.at("AT+WS46=13") == ["ERROR"]


async def test_cpsb() -> None:
    """+CPSB (7.29): the active context's bearer (7, EPS), a URC with bearer 0 when it goes."""
    async with modem() as (m,):
        assert await m.dte.at('AT+CPSB=1;+CGDCONT=1,"IP","internet";+CGACT=1,1') == ["OK"]
        assert await m.dte.at("AT+CPSB?") == ["+CPSB: 1,1,7", "OK"]
        m.network.network_deactivate(1)
        assert await m.dte.urcs(1) == ["+CPSB: 1,0"]


async def test_cusd_balance_and_dialogue() -> None:
    """+CUSD (7.15): *100# answers the balance (<m> 0), *101*..# a dialogue (<m> 1) ended by 0 (<m> 2), an
    unknown code <m> 4; strings in the +CSCS set."""
    tracer = Tracer(keep=True)
    async with modem(tracer=tracer) as (m,):
        assert await m.dte.at('AT+CUSD=1,"*100#",15') == ["OK"]
        assert await m.dte.urcs(1) == ['+CUSD: 0,"Balance: 10.00 EUR, valid until 31/12",15']
        assert await m.dte.at('AT+CUSD=1,"*101*hello#",15') == ["OK"]
        assert await m.dte.urcs(1) == ['+CUSD: 1,"Echo: hello. Reply, or 0 to end",15']
        assert await m.dte.at('AT+CUSD=1,"0"') == ["OK"]
        assert await m.dte.urcs(1) == ['+CUSD: 2,"Bye",15']
        assert await m.dte.at('AT+CUSD=1,"*999#"') == ["OK"]
        assert await m.dte.urcs(1) == ["+CUSD: 4"]
        assert await m.dte.at('AT+CSCS="UCS2";+CUSD=1,"002A0031003000300023"') == ["OK"]
        (urc,) = await m.dte.urcs(1)
        assert urc.startswith('+CUSD: 0,"00420061006C0061006E00630065')
        assert any(e.kind == Kind.USSD_MESSAGE for e in tracer.events)
        assert await m.dte.at('AT+CUSD=1,"*100#",72') == ["ERROR"]


async def test_clac_lists_what_is_registered() -> None:
    """+CLAC (8.37): every command the line answers, the command sets' included."""
    async with modem() as (m,):
        answer = await m.dte.at("AT+CLAC")
        assert answer[-1] == "OK"
        for command in ("AT+CGMI", "AT+CLAC", "AT+CUSD", "AT+CMGS", "AT&W", "ATD", "AT+CMEE"):
            assert command in answer


BAD_ARGS = (
    "",
    "?",
    "=?",
    "=",
    "=-1",
    "=999999",
    '="x"',
    "=1,2,3,4,5,6",
    '=""',
    "=,",
    '="\\41"',
    '=0,"zz",15',
)
ISSUE_16_COMMANDS = (
    "+CCLK",
    "+CBC",
    "+CEER",
    "+CIND",
    "+CMER",
    "+CESQ",
    "+WS46",
    "+CTZU",
    "+CTZR",
    "+CPSB",
    "+CUSD",
    "+CLAC",
    "+CLCC",
    "+CLIP",
    "+CRC",
    "+CHUP",
    "+CGATT",
    "+CGEREP",
    "+CGAUTH",
    "+CSCS",
    "+GCAP",
    "+IFC",
    "+ICF",
    "+IPR",
    "+FCLASS",
    "&V",
    "&W",
    "&C",
    "&D",
    "X",
    "O",
    "A",
    "H",
    "Z",
)


async def test_bad_input_gets_a_final_result_never_a_handler_failure() -> None:
    """Every form of every command of issue 16 with odd arguments: a final result (OK, ERROR, +CME ERROR,
    NO CARRIER), never the +CME ERROR: 100 and app.error of a handler that raised."""
    tracer = Tracer(keep=True)
    async with modem(tracer=tracer) as (m,):
        assert await m.dte.at("AT+CMEE=1") == ["OK"]
        for command in ISSUE_16_COMMANDS:
            for args in BAD_ARGS:
                if not command.startswith("+") and args.startswith("="):
                    continue  # a basic command takes a number, not "="
                answer = await m.dte.at(f"AT{command}{args}")
                assert answer[-1] != "+CME ERROR: 100", (command, args, answer)
                await m.dte.at("AT+CMEE=1")  # Z resets it
    assert not [e for e in tracer.events if e.kind == Kind.APP_ERROR]
