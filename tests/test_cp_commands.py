"""The CP's 3GPP TS 27.007 command set as a DTE sees it: raw bytes over a memory stream to an AtServer with the
CP's handlers, the simulated card behind them (V.250 result formats, +CMEE error forms, URCs, card access)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from bipsim import __version__
from bipsim.cp.card_driver import CardDriver
from bipsim.cp.commands import IMEI, MANUFACTURER, MODEL, ModemCommands
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork
from bipsim.link.at_server import AtServer
from bipsim.link.cmux import CmuxParams
from bipsim.trace.recorder import NULL_TRACER
from bipsim.uicc.fs import USIM_AID
from bipsim.uicc.profile import load_profile

# a final result at the end of what arrived: verbose (<CR><LF>OK<CR><LF>) or numeric (0<CR>)
FINAL = re.compile(r"(\r\n(OK|ERROR|\+CME ERROR: [^\r\n]+)\r\n|(^|[\r\n])[0-9]\r)$")
IMSI = load_profile(None).imsi


class Dte:
    """The terminal side: sends a command line and collects the raw answer up to its final result."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def send(self, line: str) -> None:
        await self.stream.send_all(line.encode("latin-1") + b"\r")

    async def at(self, line: str) -> str:
        await self.send(line)
        with trio.fail_after(5):
            while not FINAL.search(self.buffer.decode("latin-1")):
                self.buffer += await self.stream.receive_some()
        text = self.buffer.decode("latin-1")
        self.buffer.clear()
        return text

    async def quiet(self, line: str) -> str:
        """For ATQ1 / URCs: everything that arrives until the server is idle again."""
        if line:
            await self.send(line)
        await trio.testing.wait_all_tasks_blocked()
        text = ""
        while True:
            with trio.move_on_after(0.01):
                text += (await self.stream.receive_some()).decode("latin-1")
                continue
            return text


def info(text: str, command: str) -> list[str]:
    """The information lines of a verbose answer (echo of `command` stripped), without the final result."""
    echoed = bool(command) and text.startswith(command + "\r")
    assert echoed or not text.startswith("AT"), text
    body = text[len(command) + 1 :] if echoed else text
    lines = [line for line in body.split("\r\n") if line]
    return lines[:-1]


@dataclass
class Cp:
    dte: Dte
    server: AtServer
    commands: ModemCommands
    network: CellularNetwork
    cmux_requests: list[CmuxParams]
    server_done: trio.Event


async def _start(nursery: trio.Nursery, *, allow_cmux: bool = True) -> Cp:
    card, _ = simulated_card(None, None, NULL_TRACER)
    network = CellularNetwork()
    requests: list[CmuxParams] = []
    commands = ModemCommands(CardDriver(card), network, on_cmux=requests.append)
    a, b = trio.testing.memory_stream_pair()
    server = AtServer(b)
    commands.install(server, allow_cmux=allow_cmux)
    done = trio.Event()

    async def serve() -> None:
        await server.run()
        done.set()

    nursery.start_soon(serve)
    return Cp(Dte(a), server, commands, network, requests, done)


@pytest.fixture
async def cp(nursery: trio.Nursery) -> AsyncIterator[Cp]:
    yield await _start(nursery)


async def test_identification(cp: Cp) -> None:
    dte = cp.dte
    assert info(await dte.at("ATI"), "ATI") == [
        f"Manufacturer: {MANUFACTURER}",
        f"Model: {MODEL}",
        f"Revision: {__version__}",
        f"IMEI: {IMEI}",
    ]
    for commands, expected in (
        (("AT+CGMI", "AT+GMI"), MANUFACTURER),
        (("AT+CGMM", "AT+GMM"), MODEL),
        (("AT+CGMR", "AT+GMR"), __version__),
        (("AT+CGSN", "AT+GSN", "AT+CGSN=0"), IMEI),
        (("AT+CIMI",), IMSI),
    ):
        for command in commands:
            answer = await dte.at(command)
            assert answer.endswith("\r\nOK\r\n") and info(answer, command) == [expected], answer
    assert info(await dte.at("AT+CGSN=1"), "AT+CGSN=1") == [f'+CGSN: "{IMEI}"']
    assert info(await dte.at("AT+CGSN=2"), "AT+CGSN=2") == [f'+CGSN: "{IMEI[:14]}01"']
    assert info(await dte.at("AT+CGSN=3"), "AT+CGSN=3") == ['+CGSN: "01"']
    assert info(await dte.at("AT+CGSN=?"), "AT+CGSN=?") == ["+CGSN: (0-3)"]
    for command in ("AT+CGMI=?", "AT+CGMM=?", "AT+CGMR=?", "AT+GSN=?", "AT+CIMI=?", "AT+CPIN=?"):
        assert await dte.at(command) == f"{command}\r\r\nOK\r\n"
    # concatenated on one line, the answers in order and one final result
    assert info(await dte.at("AT+CGMI;+CIMI"), "AT+CGMI;+CIMI") == [MANUFACTURER, IMSI]


async def test_echo_verbose_quiet_and_factory_reset(cp: Cp) -> None:
    dte = cp.dte
    assert await dte.at("AT") == "AT\r\r\nOK\r\n"  # echo on by default (V.250 E1)
    assert await dte.at("ATE0") == "ATE0\r\r\nOK\r\n"
    assert await dte.at("AT+CGMI") == f"\r\n{MANUFACTURER}\r\n\r\nOK\r\n"
    assert await dte.at("ATV0") == "0\r"  # numeric result codes
    assert await dte.at("AT+CGMI") == f"{MANUFACTURER}\r\n0\r"
    assert await dte.at("AT+NOSUCH") == "4\r"
    assert await dte.at("ATV1") == "\r\nOK\r\n"
    assert await dte.at("ATE?") == "\r\nERROR\r\n"
    assert await dte.quiet("ATQ1") == ""  # quiet: no result codes at all
    assert await dte.quiet("AT+CGMI") == f"\r\n{MANUFACTURER}\r\n"
    assert await dte.quiet("AT+NOSUCH") == ""
    assert await dte.at("ATQ0") == "\r\nOK\r\n"
    assert await dte.at("AT+CMEE=2") == "\r\nOK\r\n"
    assert await dte.at("ATS3?") == "\r\n013\r\n\r\nOK\r\n"
    assert await dte.at("ATZ") == "\r\nOK\r\n"  # factory settings: echo back on, +CMEE=0
    assert await dte.at("AT+CMEE?") == "AT+CMEE?\r\r\n+CMEE: 0\r\n\r\nOK\r\n"
    assert await dte.at("ATE0V0") == "ATE0V0\r0\r"
    assert await dte.at("AT&F") == "\r\nOK\r\n"  # the defaults (verbose) already apply to its OK
    assert await dte.at("AT") == "AT\r\r\nOK\r\n"


async def test_cmee_error_forms(cp: Cp) -> None:
    dte = cp.dte
    await dte.at("ATE0")
    assert await dte.at("AT+CMEE=?") == "\r\n+CMEE: (0-2)\r\n\r\nOK\r\n"
    assert await dte.at("AT+CFUN=7") == "\r\nERROR\r\n"  # +CMEE=0: plain ERROR
    assert await dte.at("AT+CMEE=1") == "\r\nOK\r\n"
    assert await dte.at("AT+CFUN=7") == "\r\n+CME ERROR: 50\r\n"
    assert await dte.at('AT+CSCS="EBCDIC"') == "\r\n+CME ERROR: 4\r\n"
    assert await dte.at("AT+CMEE=2") == "\r\nOK\r\n"
    assert await dte.at("AT+CFUN=7") == "\r\n+CME ERROR: incorrect parameters\r\n"
    assert await dte.at("AT+CMEE?") == "\r\n+CMEE: 2\r\n\r\nOK\r\n"
    assert await dte.at("AT+CMEE=3") == "\r\n+CME ERROR: incorrect parameters\r\n"
    # unknown commands and bad syntax: ERROR whatever +CMEE says (V.250 section 5.4.1)
    for line in ("AT+NOSUCH", "AT+NOSUCH=?", "ATX9", 'AT+CSIM=4,"00A4'):
        assert await dte.at(line) == "\r\nERROR\r\n", line
    # an error ends the line: commands after it are not executed
    assert await dte.at("AT+CFUN=7;+CGMI") == "\r\n+CME ERROR: incorrect parameters\r\n"


async def test_sim_power_and_signal(cp: Cp) -> None:
    dte = cp.dte
    await dte.at("ATE0")
    assert info(await dte.at("AT+CPIN?"), "") == ["+CPIN: READY"]
    assert info(await dte.at("AT+CFUN?"), "") == ["+CFUN: 1"]
    assert info(await dte.at("AT+CFUN=?"), "") == ["+CFUN: (0,1,4),(0,1)"]
    assert info(await dte.at("AT+CSQ"), "") == ["+CSQ: 20,99"]
    assert info(await dte.at("AT+CSQ=?"), "") == ["+CSQ: (0-31,99),(0-7,99)"]
    assert await dte.at("AT+CFUN=4") == "\r\nOK\r\n"
    assert info(await dte.at("AT+CFUN?"), "") == ["+CFUN: 4"]
    assert info(await dte.at("AT+CSQ"), "") == ["+CSQ: 99,99"]
    assert info(await dte.at("AT+COPS?"), "") == ["+COPS: 0"]
    assert await dte.at("AT+CFUN=1,0") == "\r\nOK\r\n"
    assert info(await dte.at("AT+CSQ"), "") == ["+CSQ: 20,99"]


async def test_registration_reads_and_urcs(cp: Cp) -> None:
    dte = cp.dte
    await dte.at("ATE0")
    for name in ("+CREG", "+CGREG", "+CEREG"):
        assert info(await dte.at(f"AT{name}=?"), "") == [f"{name}: (0-2)"]
        assert info(await dte.at(f"AT{name}?"), "") == [f"{name}: 0,1"]
    # n=0: no URC when registration changes
    assert await dte.at("AT+CFUN=4") == "\r\nOK\r\n"
    assert await dte.quiet("") == ""
    await dte.at("AT+CFUN=1")
    # n=1: +CREG: <stat>
    assert await dte.at("AT+CREG=1") == "\r\nOK\r\n"
    assert info(await dte.at("AT+CREG?"), "") == ["+CREG: 1,1"]
    await dte.at("AT+CFUN=4")
    assert await dte.quiet("") == "\r\n+CREG: 0\r\n"
    # n=2 on +CEREG: the URC carries <tac>,<ci>,<AcT> while registered
    assert await dte.at("AT+CEREG=2") == "\r\nOK\r\n"
    await dte.at("AT+CFUN=1")
    urcs = await dte.quiet("")
    assert sorted(line for line in urcs.split("\r\n") if line) == [
        '+CEREG: 1,"0001","00000A1B",7',
        "+CREG: 1",
    ]
    assert info(await dte.at("AT+CEREG?"), "") == ['+CEREG: 2,1,"0001","00000A1B",7']
    assert await dte.at("AT+CMEE=1") == "\r\nOK\r\n"
    assert await dte.at("AT+CGREG=3") == "\r\n+CME ERROR: 50\r\n"


async def test_operator(cp: Cp) -> None:
    dte = cp.dte
    await dte.at("ATE0")
    assert info(await dte.at("AT+COPS?"), "") == ['+COPS: 0,2,"00101",7']
    assert await dte.at("AT+COPS=3,0") == "\r\nOK\r\n"
    assert info(await dte.at("AT+COPS?"), "") == ['+COPS: 0,0,"bipsim test network",7']
    assert info(await dte.at("AT+COPS=?"), "") == [
        '+COPS: (2,"bipsim test network","bipsim","00101",7),,(0-4),(0-2)'
    ]
    await dte.at("ATZ")
    assert info(await dte.at("AT+COPS?"), "AT+COPS?") == ['+COPS: 0,2,"00101",7']


async def test_packet_data_contexts(cp: Cp) -> None:
    dte = cp.dte
    await dte.at("ATE0")
    await dte.at("AT+CMEE=1")
    assert info(await dte.at("AT+CGDCONT=?"), "") == ['+CGDCONT: (1-16),"IP",,,(0),(0)']
    assert await dte.at('AT+CGDCONT=1,"IP","internet"') == "\r\nOK\r\n"
    assert await dte.at('AT+CGDCONT=2,"IP","nowhere"') == "\r\nOK\r\n"
    assert info(await dte.at("AT+CGDCONT?"), "") == [
        '+CGDCONT: 1,"IP","internet","0.0.0.0",0,0',
        '+CGDCONT: 2,"IP","nowhere","0.0.0.0",0,0',
    ]
    assert await dte.at('AT+CGDCONT=17,"IP","x"') == "\r\n+CME ERROR: 50\r\n"
    assert await dte.at("AT+CGACT=1,1") == "\r\nOK\r\n"
    assert await dte.at("AT+CGACT=1,2") == "\r\n+CME ERROR: 533\r\n"  # missing or unknown APN
    assert await dte.at("AT+CGACT=1,3") == "\r\n+CME ERROR: 50\r\n"  # no such definition
    assert info(await dte.at("AT+CGACT?"), "") == ["+CGACT: 1,1", "+CGACT: 2,0"]
    assert info(await dte.at("AT+CGACT=?"), "") == ["+CGACT: (0,1)"]
    assert await dte.at("AT+CGACT=0,1") == "\r\nOK\r\n"
    assert info(await dte.at("AT+CGACT?"), "") == ["+CGACT: 1,0", "+CGACT: 2,0"]
    await dte.at("AT+CGACT=1,1")
    await dte.at("AT+CFUN=4")  # detach: no context survives
    assert info(await dte.at("AT+CGACT?"), "") == ["+CGACT: 1,0", "+CGACT: 2,0"]
    await dte.at("AT+CFUN=1")
    assert await dte.at("AT+CGDCONT=2") == "\r\nOK\r\n"  # <cid> alone undefines it
    assert info(await dte.at("AT+CGDCONT?"), "") == ['+CGDCONT: 1,"IP","internet","0.0.0.0",0,0']


async def test_character_set(cp: Cp) -> None:
    dte = cp.dte
    await dte.at("ATE0")
    assert info(await dte.at("AT+CSCS?"), "") == ['+CSCS: "IRA"']
    assert info(await dte.at("AT+CSCS=?"), "") == ['+CSCS: ("IRA","GSM","UCS2","HEX","8859-1")']
    assert await dte.at('AT+CSCS="UCS2"') == "\r\nOK\r\n"
    assert info(await dte.at("AT+CSCS?"), "") == ['+CSCS: "UCS2"']
    await dte.at("AT&F")
    await dte.at("ATE0")
    assert info(await dte.at("AT+CSCS?"), "") == ['+CSCS: "IRA"']


async def test_cmux_switch(cp: Cp, nursery: trio.Nursery) -> None:
    dte = cp.dte
    await dte.at("ATE0")
    await dte.at("AT+CMEE=1")
    assert info(await dte.at("AT+CMUX=?"), "") == [
        "+CMUX: (0),(0),(1-6),(1-32768),(1-255),(0-100),(2-255),(1-255),(1-7)"
    ]
    assert info(await dte.at("AT+CMUX?"), "") == ["+CMUX: 0,0,5,31,10,3,30,10,2"]
    assert await dte.at("AT+CMUX=1") == "\r\n+CME ERROR: 4\r\n"  # advanced option: not supported
    assert await dte.at("AT+CMUX=0,0,5,40000") == "\r\n+CME ERROR: 50\r\n"
    assert cp.cmux_requests == [] and not cp.server_done.is_set()
    assert await dte.at("AT+CMUX=0,0,5,127,20,5") == "\r\nOK\r\n"
    with trio.fail_after(5):
        await cp.server_done.wait()  # the AT server hands the line to the multiplexer after its OK
    assert cp.cmux_requests == [CmuxParams(mode=0, subset=0, n1=127, t1=0.2, n2=5, t2=0.3)]
    # on a DLC (modem control inside CMUX) +CMUX is not allowed
    inner = await _start(nursery, allow_cmux=False)
    await inner.dte.at("AT+CMEE=1")
    assert await inner.dte.at("AT+CMUX=0") == "AT+CMUX=0\r\r\n+CME ERROR: 3\r\n"


async def test_card_access(cp: Cp) -> None:
    dte = cp.dte
    await dte.at("ATE0")
    await dte.at("AT+CMEE=1")
    # +CSIM: SELECT the USIM by AID, answered with the card's status word
    aid = USIM_AID.hex().upper()
    select = f"00A4040C{len(USIM_AID):02X}{aid}"
    assert info(await dte.at(f'AT+CSIM={len(select)},"{select}"'), "") == ['+CSIM: 4,"9000"']
    assert await dte.at('AT+CSIM=3,"00A4"') == "\r\n+CME ERROR: 50\r\n"  # length does not match
    # +CRSM READ BINARY of EF_IMSI (28423 = 6F07): the IMSI's BCD
    lines = info(await dte.at("AT+CRSM=176,28423,0,0,9"), "")
    match = re.fullmatch(r'\+CRSM: 144,0,"([0-9A-F]{18})"', lines[0])
    assert match, lines
    digits = "".join(f"{b & 0x0F}{b >> 4}" for b in bytes.fromhex(match.group(1))[1:])
    assert digits[1:] == IMSI
    # logical channels: +CCHO opens one on the USIM, +CGLA talks on it, +CCHC closes it
    session = info(await dte.at(f'AT+CCHO="{aid}"'), "")
    assert session == ["+CCHO: 1"]
    read = "00A4000C026F07"
    assert info(await dte.at(f'AT+CGLA=1,{len(read)},"{read}"'), "") == ['+CGLA: 4,"9000"']
    lines = info(await dte.at('AT+CGLA=1,10,"00B0000009"'), "")
    assert lines == [f'+CGLA: 22,"{match.group(1)}9000"']
    assert await dte.at("AT+CCHC=1") == "\r\nOK\r\n"
    assert await dte.at("AT+CCHC=1") == "\r\n+CME ERROR: 21\r\n"  # invalid index
    assert await dte.at('AT+CGLA=1,10,"00B0000009"') == "\r\n+CME ERROR: 21\r\n"
    assert await dte.at('AT+CCHO="A0000000FF"') == "\r\n+CME ERROR: 22\r\n"  # not found
    for command in ("AT+CSIM=?", "AT+CRSM=?", "AT+CCHO=?", "AT+CCHC=?", "AT+CGLA=?"):
        assert await dte.at(command) == "\r\nOK\r\n"


AID_300 = "A0" * 300


async def test_logical_channels_beyond_3(cp: Cp) -> None:
    """+CCHO's fourth session is channel 4: its +CGLA commands need the further interindustry class (TS 102 221
    section 10.1.1), not the channel number or-ed into the first coding."""
    dte = cp.dte
    await dte.at("ATE0")
    aid = USIM_AID.hex().upper()
    for session in range(1, 5):
        assert info(await dte.at(f'AT+CCHO="{aid}"'), "") == [f"+CCHO: {session}"]
    select = "00A4000C026F07"
    assert info(await dte.at(f'AT+CGLA=4,{len(select)},"{select}"'), "") == ['+CGLA: 4,"9000"']
    lines = info(await dte.at('AT+CGLA=4,10,"00B0000009"'), "")
    assert re.fullmatch(r'\+CGLA: 22,"[0-9A-F]{18}9000"', lines[0]), lines
    assert info(await dte.at('AT+CGLA=3,10,"00B0000009"'), "")[0].endswith('6986"')  # channel 3: no EF yet


# parameters outside 27.007's ranges (sections 8.17 +CSIM, 8.18 +CRSM, 8.43 +CGLA, 8.45 +CCHO, 8.46 +CCHC):
# each is +CME ERROR: 50 and the server goes on (before: ValueError out of bytes.fromhex ended the CP)
BAD_CARD_COMMANDS = [
    'AT+CRSM=214,28423,0,0,1,"ZZ"',  # not hexadecimal
    'AT+CRSM=214,28423,0,0,1,"123"',  # odd length
    'AT+CRSM=214,28423,0,0,2,"12"',  # P3 is not the length of <data>
    f'AT+CRSM=214,28423,0,0,255,"{"00" * 256}"',  # data over 255 bytes
    "AT+CRSM=214,28423,0,0,1",  # an update without data
    'AT+CRSM=176,28423,0,0,1,"00"',  # data for a read
    "AT+CRSM=176,28423,0,0,256",  # P3 over 255
    "AT+CRSM=176,28423,300,0,1",  # P1 over 255
    "AT+CRSM=176,28423,0,-1,1",  # P2 negative
    "AT+CRSM=176,28423,-1,0,1",  # P1 negative
    "AT+CRSM=176,70000,0,0,1",  # file id over 65535
    "AT+CRSM=176,-1,0,0,1",  # file id negative
    "AT+CRSM=176",  # no file id
    "AT+CRSM=176,28423",  # no P1, P2, P3 for a read
    'AT+CRSM=176,28423,0,0,9,,"3F0"',  # odd path
    'AT+CRSM=176,28423,0,0,9,,"3F00",1',  # too many parameters
    "AT+CRSM=999,28423,0,0,1",  # no such command
    'AT+CRSM="x",28423,0,0,1',
    'AT+CSIM=4,"ZZZZ"',
    'AT+CSIM=5,"00A40"',  # odd length
    'AT+CSIM=-8,"00A40400"',
    f'AT+CSIM={2 * 262},"{"00" * 262}"',  # longer than a short APDU
    'AT+CSIM=8,"00A40400",1',
    "AT+CSIM=8",
    f'AT+CCHO="{AID_300}"',  # the reviewer's 300-byte AID
    f'AT+CCHO="{"A0" * 17}"',  # a DF name has at most 16 bytes
    'AT+CCHO="A00"',
    'AT+CCHO=""',
    'AT+CCHO="G0000000871002"',
    'AT+CCHO="A0000000871002","x"',
    'AT+CCHC="x"',
    "AT+CCHC=",
    'AT+CGLA=1,4,"ZZZZ"',
    'AT+CGLA=1,9,"00B000009"',
    'AT+CGLA=1,10,"00B0000009",5',
    f'AT+CGLA=1,{2 * 262},"{"00" * 262}"',
    'AT+CGLA="x",10,"00B0000009"',
]


@pytest.mark.parametrize("command", BAD_CARD_COMMANDS)
async def test_bad_card_access_parameters_are_cme_error_50(cp: Cp, command: str) -> None:
    dte = cp.dte
    await dte.at("ATE0")
    await dte.at("AT+CMEE=1")
    assert await dte.at(command) == "\r\n+CME ERROR: 50\r\n", command
    assert not cp.server_done.is_set()
    assert info(await dte.at("AT+CGMI"), "") == [MANUFACTURER]  # still serving


async def test_card_access_edges_that_are_valid(cp: Cp) -> None:
    dte = cp.dte
    await dte.at("ATE0")
    await dte.at("AT+CMEE=1")
    # the limits themselves are accepted: P1/P2/P3 255, file id 65535 (the card answers what it answers)
    for command in ("AT+CRSM=176,65535,255,255,255", "AT+CRSM=242", "AT+CRSM=192,28423"):
        assert re.fullmatch(r'\r\n\+CRSM: \d+,\d+,"[0-9A-F]*"\r\n\r\nOK\r\n', await dte.at(command)), command
    assert await dte.at("AT+CRSM=203,28423,0,0,1") == "\r\n+CME ERROR: 4\r\n"  # RETRIEVE DATA: not simulated
    aid = USIM_AID.hex().upper()
    assert info(await dte.at(f'AT+CCHO="{aid}"'), "") == ["+CCHO: 1"]
    assert await dte.at("AT+CCHC=1") == "\r\nOK\r\n"
    for command in ("AT+CRSM?", "AT+CCHO?", "AT+CCHC?", "AT+CGLA?", "AT+CCHC"):
        assert await dte.at(command) == "\r\nERROR\r\n", command


async def test_forms_and_ranges_27007_does_not_define(cp: Cp) -> None:
    """Read forms 27.007 does not define are ERROR; +CGACT and +CMUX parameters outside their ranges (sections
    10.1.10 and 5.7, as the =? answers list them) are +CME ERROR: 50, a <cid> that is not a number ERROR."""
    dte = cp.dte
    await dte.at("ATE0")
    await dte.at("AT+CMEE=1")
    for command in (
        "AT+CIMI?",
        "AT+CGMI?",
        "AT+CGMM?",
        "AT+CGMR?",
        "AT+GMI?",
        "AT+CSQ?",
        "AT+CSQ=1",
        "AT+CIMI=1",
    ):
        assert await dte.at(command) == "\r\nERROR\r\n", command
    await dte.at('AT+CGDCONT=1,"IP","internet"')
    for command in ("AT+CGACT=5", "AT+CGACT=-1", "AT+CGACT=1,17", "AT+CGACT=0,0", "AT+CGACT="):
        assert await dte.at(command) == "\r\n+CME ERROR: 50\r\n", command
    for command in ('AT+CGACT=1,"x"', "AT+CGACT=1,1,", 'AT+CGACT=0,"1"'):
        assert await dte.at(command) == "\r\nERROR\r\n", command
    assert info(await dte.at("AT+CGACT?"), "") == ["+CGACT: 1,0"]  # none of them did anything
    for command in (
        "AT+CMUX=0,0,7",  # port speed: (1-6)
        "AT+CMUX=0,0,0",
        "AT+CMUX=2",  # mode: 0 basic, 1 advanced
        "AT+CMUX=0,3",  # subset: 0 UIH, 1 UI, 2 I
        "AT+CMUX=0,0,5,0",  # N1: (1-32768)
        "AT+CMUX=0,0,5,31,0",  # T1: (1-255)
        "AT+CMUX=0,0,5,31,10,101",  # N2: (0-100)
        "AT+CMUX=0,0,5,31,10,3,1",  # T2: (2-255)
        "AT+CMUX=0,0,5,31,10,3,30,256",  # T3: (1-255)
        "AT+CMUX=0,0,5,31,10,3,30,10,8",  # k: (1-7)
        "AT+CMUX=0,0,5,31,10,3,30,10,2,1",  # one parameter too many
        'AT+CMUX=0,0,"5"',
    ):
        assert await dte.at(command) == "\r\n+CME ERROR: 50\r\n", command
    assert await dte.at("AT+CMUX=0,1") == "\r\n+CME ERROR: 4\r\n"  # UI frames: valid, not supported
    assert cp.cmux_requests == [] and not cp.server_done.is_set()
    assert await dte.at("AT+CMUX=0,0,6,31,10,3,30,255,7") == "\r\nOK\r\n"  # every limit itself is accepted
    assert cp.cmux_requests == [CmuxParams(mode=0, subset=0, n1=31, t1=0.1, n2=3, t2=0.3)]
