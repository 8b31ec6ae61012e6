"""27.005 text mode details of cp/sms_commands.py: the time stamp of a received message written by +CMGW (the
TE gives it through +CSMP's <vp>, 27.005 3.3.2, never the clock) and +CMS ERROR: 330 when no service centre
address is known (27.005 3.2.5)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
import trio.testing

from bipsim.cp.card_driver import CardDriver
from bipsim.cp.commands import ModemCommands
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork, NetworkConfig
from bipsim.cp.sms_commands import Route, SmsCommands, deliver_route
from bipsim.errors import CliError
from bipsim.link.at_server import AtServer
from bipsim.net.sms_pdu import Address, Concatenation, SmsDeliver, SmsSubmit, decode_tpdu
from bipsim.trace.recorder import Tracer
from bipsim.uicc.gsm_text import gsm7_encode
from bipsim.uicc.profile import load_profile
from tests.test_sms_commands import Cp, Dte, Smsc, lines


async def a_cp(
    nursery: trio.Nursery,
    network: CellularNetwork,
    smsc_address: str = "+15550000000",
    card_profile: str | None = None,
) -> Cp:
    smsc = Smsc()
    smsc.address = smsc_address
    network.smsc = smsc  # type: ignore[assignment]
    tracer = Tracer(keep=True)
    card, _ = simulated_card(card_profile, None, tracer)
    driver = CardDriver(card, tracer=tracer)
    await driver.start()
    core = ModemCommands(driver, network)
    sms = SmsCommands(core, tracer, {})
    core.command_sets = [sms]
    a, b = trio.testing.memory_stream_pair()
    server = AtServer(b, tracer=tracer, echo=False)
    core.install(server)
    nursery.start_soon(server.run)
    dte = Dte(a)
    assert await dte.at("AT+CMEE=1") == "\r\nOK\r\n"
    return Cp(dte, server, sms, core, network, smsc, tracer, card)  # type: ignore[arg-type]


@pytest.fixture
async def cp(nursery: trio.Nursery) -> AsyncIterator[Cp]:
    yield await a_cp(nursery, CellularNetwork())


async def test_cmgw_of_a_received_message_takes_the_tes_time_stamp(cp: Cp) -> None:
    dte = cp.dte
    await dte.at("AT+CMGF=1")
    assert lines(await dte.entry('AT+CMGW="+447700900123",145,"REC UNREAD"', "hello")) == ["+CMGW: 1"]
    # no <scts> given: a fixed stamp, the same bytes every run
    assert (
        lines(await dte.at("AT+CMGR=1"))[0] == '+CMGR: "REC UNREAD","+447700900123",,"00/01/01,00:00:00+00"'
    )
    assert await dte.at('AT+CSMP=17,"26/11/30,12:34:56-08",0,0') == "\r\nOK\r\n"
    assert lines(await dte.at("AT+CSMP?")) == ["+CSMP: 17,167,0,0"]  # the relative <vp> of SUBMITs is kept
    assert lines(await dte.entry('AT+CMGW="+447700900123",145,"REC READ"', "later")) == ["+CMGW: 2"]
    assert lines(await dte.at("AT+CMGR=2"))[0] == '+CMGR: "REC READ","+447700900123",,"26/11/30,12:34:56-08"'
    for bad in ('"26/13/30,12:34:56+00"', '"26/11/30,12:34:56+99"', '"yesterday"'):
        assert await dte.at(f"AT+CSMP=17,{bad}") == "\r\n+CMS ERROR: 305\r\n"


async def test_no_service_centre_address_is_cms_error_330(nursery: trio.Nursery) -> None:
    cp = await a_cp(nursery, CellularNetwork(NetworkConfig(smsc="")), "")
    await cp.dte.at("AT+CMGF=1")
    assert await cp.dte.entry('AT+CMGS="+447700900456"', "hi") == "\r\n+CMS ERROR: 330\r\n"
    assert cp.smsc.submitted == []
    assert await cp.dte.at('AT+CSCA="+447700900000"') == "\r\nOK\r\n"  # the TE names one: it goes
    assert lines(await cp.dte.entry('AT+CMGS="+447700900456"', "hi")) == ["+CMGS: 1"]


def test_mt2_stores_message_waiting_store_groups() -> None:
    # TS 23.038 4: 1100xxxx discard message, 1101xxxx / 1110xxxx store message (27.005 3.4.1 <mt> 2)
    assert deliver_route(2, None, 0xC8) is Route.CMT
    assert deliver_route(2, None, 0xD8) is Route.STORE_MEM3
    assert deliver_route(2, None, 0xE0) is Route.STORE_MEM3
    assert deliver_route(2, None, 0x00) is Route.CMT
    assert deliver_route(1, None, 0xC8) is Route.STORE_MEM3


def waiting(text: str, dcs: int) -> bytes:
    """An SMS-DELIVER of a message waiting indication group (GSM 7-bit, TS 23.038 4)."""
    when = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
    return SmsDeliver(Address.parse("+447700900123"), when, dcs=dcs, ud=gsm7_encode(text)).encode()


async def test_mt2_indicates_a_stored_message_waiting_sms(cp: Cp) -> None:
    dte = cp.dte
    await dte.at("AT+CNMI=1,2,0,0,0")
    await cp.sms.deliver(waiting("1 new voicemail", 0xD8))  # message waiting, store message
    assert await dte.pending() == '\r\n+CMTI: "SM",1\r\n'
    await cp.sms.deliver(waiting("voicemail read", 0xC0))  # message waiting, discard message: direct
    assert (await dte.pending()).startswith("\r\n+CMT: ,")


async def test_text_mode_shows_a_user_data_header_as_hex_of_the_whole_user_data(cp: Cp) -> None:
    dte = cp.dte
    when = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
    first, _ = SmsDeliver.for_text("+447700900123", "x" * 200, when, reference=0x42)
    await cp.sms.deliver(first.encode())  # +CNMI <mt> 0: stored at SM 1
    await dte.at("AT+CMGF=1")
    await dte.at("AT+CSDH=1")
    header, data = lines(await dte.at("AT+CMGR=1"))
    # 27.005 3.1: TP-UDHI set, so <data> is hex of TP-UD: the header 05 00 03 <ref> <parts> <part>, then the
    # fill bit and the 153 packed septets: 140 octets in all
    assert data.startswith("0500034202" + "01") and len(data) == 2 * 140
    assert header.endswith(",280")


async def test_text_mode_length_counts_the_messages_characters(cp: Cp) -> None:
    dte = cp.dte
    when = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
    (hello,) = SmsDeliver.for_text("+447700900123", "hello", when)
    await cp.sms.deliver(hello.encode())
    await dte.at("AT+CMGF=1")
    await dte.at("AT+CSDH=1")
    await dte.at('AT+CSCS="UCS2"')
    header, data = lines(await dte.at("AT+CMGR=1"))
    assert data == "00680065006C006C006F"  # "hello" in the TE's set: UCS2 hex
    assert header.endswith(",5")  # 27.005 3.1 <length>: five characters of the message, not 20 of the hex


async def test_csmp_udhi_takes_the_whole_user_data_in_hex(cp: Cp) -> None:
    dte = cp.dte
    await dte.at("AT+CMGF=1")
    # <fo> 81: SMS-SUBMIT, relative validity, TP-UDHI; <dcs> 4: 8-bit data
    assert await dte.at("AT+CSMP=81,167,0,4") == "\r\nOK\r\n"
    hexed = "050003070201" + b"part one".hex().upper()  # concatenation: reference 7, part 1 of 2
    assert lines(await dte.entry('AT+CMGS="+447700900456"', hexed)) == ["+CMGS: 1"]
    message = decode_tpdu(cp.smsc.submitted[0][0])  # type: ignore[attr-defined]
    assert isinstance(message, SmsSubmit) and message.ud == b"part one"
    assert message.concatenation == Concatenation(7, 2, 1)
    # GSM 7-bit: the header, a fill bit, then the packed septets (here "hi")
    await dte.at("AT+CSMP=81,167,0,0")
    assert lines(await dte.entry('AT+CMGS="+447700900456"', "050003070202" + "D069")) == ["+CMGS: 2"]
    message = decode_tpdu(cp.smsc.submitted[1][0])  # type: ignore[attr-defined]
    assert isinstance(message, SmsSubmit) and message.text == "hi"
    assert message.concatenation == Concatenation(7, 2, 2)
    assert await dte.entry('AT+CMGS="+447700900456"', "0A0003") == "\r\n+CMS ERROR: 305\r\n"


async def test_csas_and_cres_keep_the_settings_in_ef_smsp(cp: Cp) -> None:
    dte = cp.dte
    assert await dte.at('AT+CSCA="+447700900000"') == "\r\nOK\r\n"
    assert await dte.at("AT+CSMP=17,170,64,8") == "\r\nOK\r\n"
    assert await dte.at("AT+CSAS") == "\r\nOK\r\n"
    # EF_SMSP record 1 (TS 31.102 4.2.27): 12 octets of alpha, indicators E1 (TP-DA absent), TP-DA unused,
    # the SC address 07 91 447700090000, PID 40, DCS 08, VP AA
    answer = await dte.at("AT+CRSM=178,28482,1,4,40")
    assert '"' + "FF" * 12 + "E1" + "FF" * 12 + "0791447700090000" + "FF" * 4 + "4008AA" + '"' in answer
    await dte.at("AT+CSMP=17,167,0,0")  # (+CSCA= would write EF_SMSP record 1 itself)
    assert await dte.at("AT+CRES=0") == "\r\nOK\r\n"
    assert lines(await dte.at("AT+CSCA?")) == ['+CSCA: "+447700900000",145']
    assert lines(await dte.at("AT+CSMP?")) == ["+CSMP: 17,170,64,8"]
    assert await dte.at("AT+CRES=5") == "\r\n+CMS ERROR: 303\r\n"  # EF_SMSP has one record


async def test_csca_keeps_the_address_in_ef_smsp(cp: Cp) -> None:
    dte = cp.dte
    assert lines(await dte.at("AT+CSCA?")) == ['+CSCA: "+15550000000",145']  # EF_SMSP empty: the network's
    assert await dte.at('AT+CSCA="+447700900000"') == "\r\nOK\r\n"
    answer = await dte.at("AT+CRSM=178,28482,1,4,40")
    assert (
        "FD" + "FF" * 12 + "0791447700090000" in answer
    )  # bit 2 of the indicators cleared: SC address there
    # another party writes EF_SMSP: +CSCA? reads the card
    record = "FF" * 12 + "FD" + "FF" * 12 + "07914477000911F1".ljust(24, "F") + "FFFFFF"
    assert re.search(r"\+CRSM: 14[45],", await dte.at(f'AT+CRSM=220,28482,1,4,40,"{record}"'))
    assert lines(await dte.at("AT+CSCA?")) == ['+CSCA: "+44770090111",145']


async def test_a_card_profile_fills_ef_smsp(nursery: trio.Nursery, tmp_path: Path) -> None:
    profile = tmp_path / "card.toml"
    profile.write_text('smsp_sca = "+4477009011"\n')
    cp = await a_cp(nursery, CellularNetwork(), card_profile=str(profile))
    assert lines(await cp.dte.at("AT+CSCA?")) == ['+CSCA: "+4477009011",145']
    profile.write_text('smsp_sca = "call me"\n')
    with pytest.raises(CliError):
        load_profile(profile)
