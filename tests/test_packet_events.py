"""Issue 16 items 2, 3 and 7 as a host sees them: +CGATT (27.007 10.1.9) through the network model, +CGEREP/+CGEV
(10.1.19) events buffered per <mode>/<bfr>, +CGAUTH (10.1.31), +CSCS (5.5) converting the core's strings, and
+CRSM (8.18) on an absent file answering with its SELECT's status words."""

from __future__ import annotations

from bipsim.cp.network import CellularNetwork
from tests.modem_harness import modem


async def test_cgatt_detach_and_attach() -> None:
    """+CGATT=0 detaches (contexts go, 10.1.9), +CGATT? reads it, +CGATT=1 attaches again."""
    async with modem() as (m,):
        assert await m.dte.at("AT+CGATT?") == ["+CGATT: 1", "OK"]
        assert await m.dte.at('AT+CGDCONT=1,"IP","internet";+CGACT=1,1') == ["OK"]
        assert 1 in m.network.contexts
        assert await m.dte.at("AT+CGATT=0") == ["OK"]
        assert await m.dte.at("AT+CGATT?") == ["+CGATT: 0", "OK"]
        assert not m.network.contexts
        assert await m.dte.at("AT+CGATT=1") == ["OK"]
        assert m.network.attached
        assert await m.dte.at("AT+CGATT=2") == ["ERROR"]
        assert await m.dte.at("AT+CGATT=?") == ["+CGATT: (0,1)", "OK"]


async def test_cgatt_needs_registration() -> None:
    """Attaching without network service: +CME ERROR: 30 (27.007 9.2.1)."""
    async with modem() as (m,):
        assert await m.dte.at("AT+CMEE=1;+CFUN=4") == ["OK"]
        assert await m.dte.at("AT+CGATT?") == ["+CGATT: 0", "OK"]
        assert await m.dte.at("AT+CGATT=1") == ["+CME ERROR: 30"]


async def test_activation_attaches() -> None:
    """A +CGACT while detached attaches first (10.1.10)."""
    async with modem() as (m,):
        assert await m.dte.at('AT+CGATT=0;+CGDCONT=1,"IP","internet";+CGACT=1,1') == ["OK"]
        assert await m.dte.at("AT+CGATT?") == ["+CGATT: 1", "OK"]


async def test_cgev_network_deactivation_and_detach() -> None:
    """+CGEREP=1: NW DEACT when the network ends a context, NW DETACH when it detaches; no event for the TE's own
    +CGACT=0 or +CGATT=0 (its OK says it; ME DETACH is the ME's own, +CFUN=4), none per context of a detach
    (10.1.19)."""
    async with modem(lines=2) as (m, other):
        assert await m.dte.at("AT+CGEREP=1") == ["OK"]
        assert await m.dte.at('AT+CGDCONT=1,"IP","internet";+CGACT=1,1') == ["OK"]
        address = m.network.contexts[1].address
        assert m.network.network_deactivate(1)
        assert await m.dte.urcs(1) == [f'+CGEV: NW DEACT "IP","{address}",1']
        assert await m.dte.at("AT+CGACT=1,1;+CGACT=0,1") == ["OK"]
        assert await m.dte.urcs() == []
        assert await m.dte.at("AT+CGACT=1,1") == ["OK"]
        m.network.detach(by_network=True)
        assert await m.dte.urcs(1) == ["+CGEV: NW DETACH"]
        assert await m.dte.at("AT+CGATT=1") == ["OK"]
        assert await m.dte.at("AT+CGATT=0") == ["OK"]
        assert await m.dte.urcs() == []
        # the other line had +CGEREP=0: its events waited in the MT, the newest last
        assert await other.dte.urcs() == []
        assert m.core.event_buffers[other.server][-1:] == ["+CGEV: NW DETACH"]


async def test_cgerep_buffer_flushed_or_cleared() -> None:
    """<mode> 0 buffers; +CGEREP=2,1 sends the buffer after the OK, +CGEREP=1,0 clears it (10.1.19 <bfr>)."""
    async with modem() as (m,):
        assert await m.dte.at("AT+CGEREP?") == ["+CGEREP: 0,0", "OK"]
        m.network.detach(by_network=True)
        assert await m.dte.urcs() == []
        assert await m.dte.at("AT+CGEREP=2,1") == ["OK"]
        assert await m.dte.urcs(1) == ["+CGEV: NW DETACH"]
        assert await m.dte.at("AT+CGEREP=0") == ["OK"]
        m.network.attach()
        m.network.detach(by_network=True)
        assert await m.dte.at("AT+CGEREP=1,0") == ["OK"]
        assert await m.dte.urcs() == []
        assert await m.dte.at("AT+CGEREP=3") == ["ERROR"]


async def test_cgev_buffer_is_bounded() -> None:
    async with modem() as (m,):
        for _ in range(100):
            m.network.attach()
            m.network.detach(by_network=True)
        assert len(m.core.event_buffers[m.server]) == 64


async def test_cgauth() -> None:
    """+CGAUTH (10.1.31): set, read without the password, undefined with <cid> alone."""
    async with modem() as (m,):
        assert await m.dte.at('AT+CGAUTH=1,1,"ota","secret"') == ["OK"]
        assert await m.dte.at("AT+CGAUTH?") == ['+CGAUTH: 1,1,"ota"', "OK"]
        assert m.core.authentications[1] == (1, "ota", "secret")
        assert await m.dte.at("AT+CGAUTH=1") == ["OK"]
        assert await m.dte.at("AT+CGAUTH?") == ["OK"]
        assert await m.dte.at("AT+CGAUTH=17,1") == ["ERROR"]


async def test_cscs_ucs2_converts_operator_and_apn() -> None:
    """+CSCS="UCS2" (27.007 5.5): operator names and the APN are four hex digits a character, both ways."""
    async with modem() as (m,):
        assert await m.dte.at('AT+CSCS="UCS2";+COPS=3,0') == ["OK"]
        name = m.network.config.operator
        ucs2 = "".join(f"{ord(ch):04X}" for ch in name)
        assert await m.dte.at("AT+COPS?") == [f'+COPS: 0,0,"{ucs2}",7', "OK"]
        apn = "".join(f"{ord(ch):04X}" for ch in "ota.bipsim")
        assert await m.dte.at(f'AT+CGDCONT=2,"IP","{apn}"') == ["OK"]
        assert m.core.definitions[2] == ("IP", "ota.bipsim")
        assert await m.dte.at("AT+CGDCONT?") == [f'+CGDCONT: 2,"IP","{apn}","0.0.0.0",0,0', "OK"]
        # an APN sent in IRA whatever the set (oFono does): taken as it is
        assert await m.dte.at('AT+CGDCONT=3,"IP","internet"') == ["OK"]
        assert m.core.definitions[3] == ("IP", "internet")


async def test_cscs_hex_and_gsm_and_errors() -> None:
    async with modem() as (m,):
        assert await m.dte.at('AT+CSCS="HEX";+COPS=3,1') == ["OK"]
        assert await m.dte.at("AT+COPS?") == ['+COPS: 0,1,"62697073696D",7', "OK"]  # "bipsim" in GSM septets
        assert await m.dte.at('AT+CSCS="8859-1"') == ["OK"]
        assert await m.dte.at('AT+CSCS="KOI8"') == ["ERROR"]
        assert await m.dte.at('AT+CMEE=1;+CSCS="UCS2";+CGAUTH=1,1,"00E"') == ["+CME ERROR: 25"]


async def test_crsm_absent_file_reports_the_select() -> None:
    """+CRSM READ BINARY of a file the card lacks: the SELECT's 6A 82 (8.18), not the READ's 69 86."""
    async with modem() as (m,):
        answer = await m.dte.at("AT+CRSM=176,28592,0,0,4")  # 6FB0: no such EF in the profile
        assert answer == ['+CRSM: 106,130,""', "OK"]


async def test_network_model_detach_without_trio() -> None:
    """The network model alone: a network detach deactivates every context with the network as its origin."""
    network = CellularNetwork()
    ended: list[tuple[int, bool]] = []
    network.deactivation_listeners.append(
        lambda context, reason: ended.append((context.cid, context.ended_by_network))
    )
    network.activate("internet", cid=1)
    network.activate("internet", cid=2)
    network.detach(by_network=True)
    assert ended == [(1, True), (2, True)] and not network.attached
    network.attach()
    assert network.attached


async def test_cgev_me_detach_on_cfun() -> None:
    """+CFUN=4 takes the ME off the network: ME DETACH, the context not reported on its own (10.1.19)."""
    async with modem() as (m,):
        assert await m.dte.at('AT+CGEREP=1;+CGDCONT=1,"IP","internet";+CGACT=1,1') == ["OK"]
        assert await m.dte.at("AT+CFUN=4") == ["OK"]
        assert await m.dte.urcs(1) == ["+CGEV: ME DETACH"]
        assert await m.dte.at("AT+CFUN=1") == ["OK"]
        assert await m.dte.urcs() == []


async def test_cgerep_while_a_data_call_has_the_line() -> None:
    """10.1.19: <mode> 1 discards the events while the line is reserved (online data), <mode> 2 keeps them for
    when it is free again."""
    async with modem() as (m,):
        assert await m.dte.at("AT+CGEREP=1") == ["OK"]
        m.server.online_data = True  # what the data mode sets while PPP owns the line
        m.network.detach(by_network=True)
        await m.dte.urcs()
        assert m.server.held_urcs == []
        m.server.online_data = False
        assert await m.dte.at("AT+CGEREP=2;+CGATT=1") == ["OK"]
        m.server.online_data = True
        m.network.detach(by_network=True)
        assert await m.dte.urcs() == []
        assert m.server.held_urcs == ["+CGEV: NW DETACH"]


async def test_cgev_me_deact_when_the_me_ends_a_context() -> None:
    """A context the ME ends unasked (the own-stack bearer closing the card's channel): ME DEACT (10.1.19)."""
    async with modem() as (m,):
        assert await m.dte.at("AT+CGEREP=2") == ["OK"]
        context = m.network.activate("internet")
        m.network.deactivate(context.cid, "channel closed")
        assert await m.dte.urcs(1) == [f'+CGEV: ME DEACT "IP","{context.address}",{context.cid}']


async def test_cops_manual_selection_in_the_character_set() -> None:
    """+COPS=1,<format>,<oper> (27.007 7.3): the operator named in the +CSCS set (5.5) is selected; another one
    is not found (+CME ERROR: 30); +COPS=4 falls back to automatic."""
    async with modem() as (m,):
        name = m.network.config.operator
        ucs2 = "".join(f"{ord(ch):04X}" for ch in name)
        assert await m.dte.at('AT+CMEE=1;+COPS=2;+CSCS="UCS2"') == ["OK"]
        assert await m.dte.at(f'AT+COPS=1,0,"{ucs2}"') == ["OK"]
        assert m.network.registered
        assert await m.dte.at('AT+COPS=1,2,"99999"') == ["+CME ERROR: 30"]
        assert await m.dte.at('AT+COPS=4,2,"99999"') == ["OK"]
        assert await m.dte.at("AT+COPS?") == ['+COPS: 4,2,"00101",7', "OK"]
        assert await m.dte.at("AT+COPS=0;+COPS?") == ['+COPS: 0,2,"00101",7', "OK"]
