"""MO short message control by the USIM (3GPP TS 31.111 section 7.3.2): the CP's envelope and its reading of the
answer (cp/toolkit_sms.py), the simulated card's answers by profile (uicc/mo_sms_control.py), and +CMGS/+CMSS
going through it (cp/sms_commands.py). The envelope's bytes are worked out by hand from TS 31.111 7.3.2.1 and
TS 102 223 sections 8.1 and 8.19."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from bipsim.cp.bip_gateway import SendTerminalResponse, SubmitShortMessage
from bipsim.cp.network import CellularNetwork
from bipsim.cp.toolkit_sms import (
    MoControl,
    MoControlResult,
    mo_sms_control_answer,
    mo_sms_control_envelope,
    mo_sms_control_supported,
)
from bipsim.net.sms_pdu import SmsSubmit, decode_tpdu, encode_sca
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER
from bipsim.uicc.cat import CommandType, GeneralResult, ProactiveCommand, Tag, obj
from bipsim.uicc.mo_sms_control import answer, check_setting
from bipsim.uicc.terminal_profile import NAMED
from bipsim.uicc.toolkit import ToolkitError
from tests.test_sms_commands import lines, pdu, submit
from tests.test_sms_text_mode import a_cp

SCA = encode_sca("+447700900000")  # 07 91 447700090000: swapped BCD
LOCATION = bytes.fromhex("00F11000010000A1BF")


def test_the_envelope() -> None:
    tpdu = submit(destination="+447700900456")
    envelope = mo_sms_control_envelope(SCA, tpdu, LOCATION).encode()
    assert envelope == bytes.fromhex(
        "D5"
        "21"  # MO SHORT MESSAGE CONTROL, 33 bytes
        "8202"
        "8281"  # device identities: terminal to UICC
        "8607"
        "91447700090000"  # RP_Destination_Address: international, 447700900000
        "8607"
        "91447700094065"  # TP_Destination_Address: international, 447700900456
        "9309"
        "00F1100001"
        "0000A1BF"  # location information
    )


def test_the_answers() -> None:
    tpdu = submit(destination="+447700900456")
    assert mo_sms_control_answer(b"", SCA, tpdu) == MoControl(
        MoControlResult.ALLOWED, SCA, tpdu
    )  # 90 00, no data
    assert mo_sms_control_answer(b"\x00\x00", SCA, tpdu).result is MoControlResult.ALLOWED
    assert mo_sms_control_answer(b"\x01\x00", SCA, tpdu).result is MoControlResult.NOT_ALLOWED
    modified = mo_sms_control_answer(bytes.fromhex("021086059144332211860791447700099999"), SCA, tpdu)
    assert modified.result is MoControlResult.ALLOWED_MODIFIED and modified.sca == encode_sca("+44332211")
    message = decode_tpdu(modified.tpdu)
    assert isinstance(message, SmsSubmit) and str(message.destination) == "+447700909999"
    assert message.text == decode_tpdu(tpdu).text  # type: ignore[union-attr]
    for bad in ("03", "0205860391", "0209", "02"):  # unknown result, short object, wrong length: refused
        assert mo_sms_control_answer(bytes.fromhex(bad), SCA, tpdu).result is MoControlResult.NOT_ALLOWED


def test_the_profile_bit() -> None:
    assert mo_sms_control_supported(NAMED["bip-only"])
    assert not mo_sms_control_supported(bytes.fromhex("7307"))
    assert not mo_sms_control_supported(b"\xff")


def test_the_cards_answers() -> None:
    envelope = mo_sms_control_envelope(SCA, submit(), LOCATION).encode()
    assert answer("allow", envelope) == b""
    assert answer("refuse", envelope) == b"\x01\x00"
    assert answer("modify:+4433221,", envelope) == bytes.fromhex(
        "0210860591443322F1860791447700094065"  # the new SC address, the destination unchanged
    )
    for bad in (b"", b"\xd5\x05\x82\x02\x82\x81", envelope[:-1], b"\xd4" + envelope[1:]):
        with pytest.raises(ToolkitError) as caught:
            answer("allow", bad)
        assert caught.value.sw == 0x6A80
    check_setting("modify:,+123")
    for setting in ("deny", "modify:+12", "modify:abc,", "modify:+1,+2,+3"):
        with pytest.raises(ValueError):
            check_setting(setting)


async def cp_with(nursery: trio.Nursery, tmp_path: Path, setting: str):  # type: ignore[no-untyped-def]
    profile = tmp_path / "card.toml"
    profile.write_text(f'mo_sms_control = "{setting}"\n')
    return await a_cp(nursery, CellularNetwork(), card_profile=str(profile))


async def test_cmgs_is_controlled_by_the_card(nursery: trio.Nursery, tmp_path: Path) -> None:
    allowed = await cp_with(nursery, tmp_path, "allow")
    tpdu = submit(destination="+447700900456")
    assert lines(await allowed.dte.entry(f"AT+CMGS={len(tpdu)}", pdu(tpdu))) == ["+CMGS: 1"]
    (envelope,) = [e for e in allowed.tracer.events if e.kind == Kind.CAT_ENVELOPE]
    assert envelope.data is not None and envelope.data[5] == 0xD5
    assert len(allowed.smsc.submitted) == 1

    refused = await cp_with(nursery, tmp_path, "refuse")
    await refused.dte.at("AT+CMGF=1")
    assert await refused.dte.entry('AT+CMGS="+447700900456"', "hi") == "\r\n+CMS ERROR: 302\r\n"
    assert refused.smsc.submitted == []
    assert lines(await refused.dte.entry('AT+CMGW="+447700900456"', "later")) == ["+CMGW: 1"]
    assert await refused.dte.at("AT+CMSS=1") == "\r\n+CMS ERROR: 302\r\n"  # +CMSS too
    assert refused.smsc.submitted == []

    modified = await cp_with(nursery, tmp_path, "modify:,+447700909999")
    await modified.dte.at("AT+CMGF=1")
    assert lines(await modified.dte.entry('AT+CMGS="+447700900456"', "hi")) == ["+CMGS: 1"]
    message = decode_tpdu(modified.smsc.submitted[0][0])
    assert isinstance(message, SmsSubmit) and str(message.destination) == "+447700909999"


async def modem_with(tmp_path: Path, setting: str):  # type: ignore[no-untyped-def]
    from bipsim.cp.modem import Modem, ModemOptions, simulated_card

    profile = tmp_path / "card.toml"
    profile.write_text(f'mo_sms_control = "{setting}"\n')
    card, _ = simulated_card(str(profile), None, NULL_TRACER)
    modem = Modem(ModemOptions("/nonexistent"), card)
    await modem.service.driver.start()
    return modem


async def test_the_cards_send_short_message_is_controlled_too(tmp_path: Path) -> None:
    tpdu = submit(destination="+447700900456")
    command = ProactiveCommand.build(CommandType.SEND_SHORT_MESSAGE, [obj(Tag.SMS_TPDU, tpdu)])
    allowed = await modem_with(tmp_path, "allow")
    (ok,) = await allowed.service._controlled_submit(SubmitShortMessage(command, tpdu))
    assert isinstance(ok, SendTerminalResponse) and ok.response.result == (GeneralResult.OK, b"")
    assert len(allowed.network.smsc.mo) == 1

    refused = await modem_with(tmp_path, "refuse")
    (no,) = await refused.service._controlled_submit(SubmitShortMessage(command, tpdu))
    assert isinstance(no, SendTerminalResponse)
    assert no.response.result == (GeneralResult.INTERACTION_WITH_CALL_CONTROL_PERMANENT, b"\x01")
    assert refused.network.smsc.mo == []

    modified = await modem_with(tmp_path, "modify:,+447700909999")
    (changed,) = await modified.service._controlled_submit(SubmitShortMessage(command, tpdu))
    assert isinstance(changed, SendTerminalResponse)
    assert changed.response.result == (GeneralResult.OK_MODIFIED_BY_CALL_CONTROL, b"")
    (message,) = modified.network.smsc.mo
    sent = decode_tpdu(message.tpdu)
    assert isinstance(sent, SmsSubmit) and str(sent.destination) == "+447700909999"
