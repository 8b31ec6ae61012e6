"""The phonebook: the record codecs of uicc/phonebook.py (TS 51.011 10.5.1/10.5.10, TS 31.102 4.4.2) and the 27.007
phonebook commands of cp/phonebook_commands.py against the simulated card with the built-in `phonebook` profile,
every +CME ERROR they name, and edits that persist in the card's state file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from bipsim.cp.card_driver import CardDriver
from bipsim.cp.command_sets import build_command_sets
from bipsim.cp.commands import ModemCommands
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork
from bipsim.cp.phonebook_commands import PhonebookCommands
from bipsim.errors import CliError
from bipsim.link.at_server import AtServer
from bipsim.trace.recorder import NULL_TRACER
from bipsim.uicc.card import SimCard
from bipsim.uicc.phonebook import (
    Entry,
    PhonebookError,
    decode_bcd,
    decode_ecc,
    decode_entry,
    decode_ext,
    decode_pbr,
    encode_bcd,
    encode_ecc,
    encode_entry,
    encode_ext,
    encode_pbr,
    ext_chain,
    free_ext_records,
    sms_records,
)
from bipsim.uicc.profile import load_profile
from tests.test_cp_commands import Dte, info

# --- codecs -----------------------------------------------------------------------------------------------------


def test_bcd_is_nibble_swapped_with_f_padding() -> None:
    # TS 51.011 10.5.1: the first digit in the low nibble; '*' A, '#' B, DTMF separator C, wild D
    assert encode_bcd("15550000001", 6) == bytes.fromhex("5155000000F1")
    assert encode_bcd("*100#", 3) == bytes.fromhex("1A00FB")
    assert decode_bcd(bytes.fromhex("1A00FBFF")) == "*100#"
    assert decode_bcd(bytes.fromhex("213C")) == "12p3"
    assert decode_bcd(bytes.fromhex("D1")) == "1?"


def test_adn_record_layout_byte_by_byte() -> None:
    record, exts = encode_entry(Entry("Alice", "+15550000001"), 32)
    # alpha 'Alice' in the GSM default alphabet unpacked, 'FF' padded to 18; length 07 (TON/NPI + 6 octets),
    # TON/NPI 91 (international, ISDN), 10 octets of BCD, CCP 'FF', no extension 'FF'
    assert record == bytes.fromhex(
        "416C696365" + "FF" * 13 + "07" + "91" + "5155000000F1" + "FF" * 4 + "FF" + "FF"
    )
    assert exts == []
    assert decode_entry(record) == Entry("Alice", "+15550000001")
    national, _ = encode_entry(Entry("Bob", "5550000003"), 32)
    assert national[18:20] == bytes.fromhex("0681")  # unknown/ISDN, 5 octets


def test_ucs2_names_and_long_numbers_with_ext1() -> None:
    record, _ = encode_entry(Entry("李小龙", "1"), 32)
    assert record[:7] == bytes.fromhex("80674E5C0F9F99")  # the '80' form of TS 102 221 annex A
    assert decode_entry(record) == Entry("李小龙", "1")
    number = "+" + "1234567890" * 4 + "12"  # 42 digits: 20 in the record, 20 + 2 in two EF_EXT1 records
    record, exts = encode_entry(Entry("Long", number), 32, [4, 7])
    assert record[-1] == 4 and len(exts) == 2
    assert exts[0] == bytes.fromhex("020A") + encode_bcd("1234567890" * 2, 10) + b"\x07"
    assert decode_ext(exts[1]) == ("12", 0xFF)
    ext_file = [b"\xff" * 13] * 10
    ext_file[3], ext_file[6] = exts
    assert decode_entry(record, ext_file) == Entry("Long", number)
    assert ext_chain(record, ext_file) == [4, 7]
    assert free_ext_records(ext_file) == [1, 2, 3, 5, 6, 8, 9, 10]
    # a chain that loops back ends where it looped: no hang, the digits read so far
    ext_file[6] = encode_ext("12", 4)
    assert decode_entry(record, ext_file) is not None
    assert ext_chain(record, ext_file) == [4, 7]


def test_codec_errors_name_the_reason() -> None:
    with pytest.raises(PhonebookError) as too_long:
        encode_entry(Entry("A name far longer than eighteen", "1"), 32)
    assert too_long.value.reason == "text too long"
    with pytest.raises(PhonebookError) as bad_number:
        encode_entry(Entry("x", "12a"), 32)
    assert bad_number.value.reason == "invalid characters in number"
    with pytest.raises(PhonebookError) as huge:
        encode_entry(Entry("x", "1" * 81), 32, list(range(1, 5)))
    assert huge.value.reason == "number too long"
    with pytest.raises(PhonebookError) as astral:
        encode_entry(Entry("\U0001f600", "1"), 32)
    assert astral.value.reason == "invalid characters in text"
    assert decode_entry(b"\xff" * 32) is None


def test_ecc_records() -> None:
    record = encode_ecc("112", "Emergency")
    # TS 31.102 4.2.21: 3 octets of BCD ('F' padded), the alpha identifier, the service category
    assert record[:3] == bytes.fromhex("11F2FF") and record[-1] == 0 and len(record) == 18
    assert decode_ecc(record) == Entry("Emergency", "112")
    assert decode_ecc(b"\xff" * 18) is None
    with pytest.raises(PhonebookError):
        encode_ecc("1234567")


def test_pbr_names_adn_and_ext1() -> None:
    record = encode_pbr(0x4F3A, 0x4F4A, 20)
    assert record[:12] == bytes.fromhex(
        "A804C0024F3AAA04C2024F4A"
    )  # TS 31.102 4.4.2.1: 'A8' type 1, 'AA' type 3
    assert decode_pbr(record) == {0xC0: 0x4F3A, 0xC2: 0x4F4A}
    assert decode_pbr(bytes.fromhex("A80AC0")) == {}  # a template that lies about its length


def test_profile_contacts_reach_both_adn_files() -> None:
    card = SimCard(load_profile("phonebook"))
    telecom = card.fs.mf.children[0x7F10].children[0x6F3A]
    usim = card.fs.usim.children[0x5F3A].children[0x4F3A]
    assert bytes(telecom.data) == bytes(usim.data)
    ext = card.fs.usim.children[0x5F3A].children[0x4F4A]
    exts = [bytes(ext.data[i * 13 : (i + 1) * 13]) for i in range(ext.records)]
    names = [decode_entry(bytes(usim.data[i * 32 : (i + 1) * 32]), exts) for i in range(12)]
    assert names[11] == Entry("Long number", "+123456789012345678901234")
    assert names[8] == Entry("Иван Петров", "+7555000009")


def test_profile_rejects_what_the_card_cannot_hold(tmp_path: Path) -> None:
    for text, words in (
        ('contacts = [{name = "x", number = "12x"}]', "invalid characters in number"),
        ('contacts = [{name = "A name far longer than eighteen", number = "1"}]', "text too long"),
        ('contacts = [{name = "x", phone = "1"}]', "unknown keys"),
        ('fdn = [{name = "x", number = "1"}, {name = "y", number = "2"}]\nadn_records = 0', "adn_records"),
        ('sms = ["zz"]', "not hex"),
        ('sms = [{status = "lost", pdu = "00"}]', "bad status"),
    ):
        path = tmp_path / "p.toml"
        path.write_text(text + "\n")
        with pytest.raises(CliError, match=words):
            load_profile(str(path))


def test_sms_records_from_the_profile() -> None:
    records = sms_records(["0300", {"status": "unread", "pdu": "0011"}])
    assert records[0] == b"\x03\x00" + b"\xff" * 174
    assert records[1][:3] == bytes.fromhex("030011") and len(records[1]) == 176


# --- the commands ---------------------------------------------------------------------------------------------


class Phone:
    def __init__(self, dte: Dte) -> None:
        self.dte = dte

    async def lines(self, command: str) -> list[str]:
        answer = await self.dte.at(command)
        assert answer.endswith("\r\nOK\r\n"), answer
        return info(answer, command)

    async def error(self, command: str) -> int:
        answer = await self.dte.at(command)
        assert "+CME ERROR: " in answer, answer
        return int(answer.rsplit("+CME ERROR: ", 1)[1].strip())


async def _phone(nursery: trio.Nursery, state: Path, profile: str = "phonebook") -> Phone:
    card, _ = simulated_card(profile, str(state), NULL_TRACER)
    commands = ModemCommands(CardDriver(card), CellularNetwork())
    commands.command_sets = [PhonebookCommands(commands, NULL_TRACER)]
    a, b = trio.testing.memory_stream_pair()
    server = AtServer(b)
    commands.install(server)
    nursery.start_soon(server.run)
    phone = Phone(Dte(a))
    await phone.lines("AT+CMEE=1")
    return phone


@pytest.fixture
async def phone(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Phone]:
    yield await _phone(nursery, tmp_path / "card.json")


async def test_storages_and_reading(phone: Phone) -> None:
    assert await phone.lines("AT+CPBS=?") == ['+CPBS: ("SM","FD","SD","ON","EN")']
    assert await phone.lines("AT+CPBS?") == ['+CPBS: "SM",12,50']
    assert await phone.lines("AT+CPBR=?") == ["+CPBR: (1-50),80,18"]
    assert await phone.lines("AT+CPBR=1,3") == [
        '+CPBR: 1,"+15550000001",145,"Alice"',
        '+CPBR: 2,"+15550000002",145,"Bob"',
        '+CPBR: 3,"5550000003",129,"Carol Smith"',
    ]
    assert await phone.lines("AT+CPBR=12") == ['+CPBR: 12,"+123456789012345678901234",145,"Long number"']
    assert await phone.lines("AT+CPBR=13,50") == []  # free records are left out
    # UCS2: the texts as 4 hex digits a unit; numbers stay dial strings (27.007 8.12)
    await phone.lines('AT+CSCS="UCS2"')
    assert await phone.lines("AT+CPBR=10") == ['+CPBR: 10,"+8655500010",145,"674E5C0F9F99"']
    await phone.lines('AT+CSCS="IRA"')
    assert await phone.lines("AT+CPBR=10") == ['+CPBR: 10,"+8655500010",145,"???"']  # not in IRA
    assert await phone.lines("AT+CPBF=?") == ["+CPBF: 80,18"]
    assert await phone.lines('AT+CPBF="al"') == ['+CPBF: 1,"+15550000001",145,"Alice"']
    assert await phone.lines("AT+CNUM") == ['+CNUM: "My number","+15550000999",145']
    await phone.lines('AT+CPBS="SD"')
    assert await phone.lines("AT+CPBR=1,10") == ['+CPBR: 1,"+15550000200",145,"Customer care"']
    assert await phone.lines("AT+CPBS?") == ['+CPBS: "SD",1,10']
    # EN: the card's emergency call codes (EF_ECC), read only
    await phone.lines('AT+CPBS="EN"')
    assert await phone.lines("AT+CPBR=?") == ["+CPBR: (1-2),6,14"]
    assert await phone.lines("AT+CPBR=1,2") == [
        '+CPBR: 1,"112",129,"Emergency"',
        '+CPBR: 2,"911",129,"Emergency"',
    ]
    assert await phone.error('AT+CPBW=1,"999",129,"x"') == 3


async def test_reading_errors(phone: Phone) -> None:
    assert await phone.error("AT+CPBR=0") == 21
    assert await phone.error("AT+CPBR=51") == 21
    assert await phone.error("AT+CPBR=5,4") == 21
    assert (await phone.dte.at("AT+CPBR")).endswith("\r\nERROR\r\n")  # the set form only
    assert await phone.error('AT+CPBR="x"') == 50
    assert await phone.error('AT+CPBF="zz"') == 22
    await phone.lines('AT+CSCS="UCS2"')
    assert await phone.error('AT+CPBF="0041F"') == 25  # not whole UCS2 units
    assert await phone.error('AT+CPBS="XX"') == 4
    assert await phone.error('AT+CPBS="SM","1234"') == 3  # only FD has a password


async def test_writing_deleting_and_every_error(phone: Phone, nursery: trio.Nursery, tmp_path: Path) -> None:
    await phone.lines('AT+CPBW=,"+15551234567",145,"New one"')
    assert await phone.lines("AT+CPBR=13") == ['+CPBR: 13,"+15551234567",145,"New one"']
    await phone.lines('AT+CPBW=13,"5551234567",145,"Changed"')  # <type> 145 makes it international
    assert await phone.lines("AT+CPBR=13") == ['+CPBR: 13,"+5551234567",145,"Changed"']
    long = "+" + "9876543210" * 5  # 50 digits: two EF_EXT1 records besides the record
    await phone.lines(f'AT+CPBW=14,"{long}",145,"Long two"')
    assert await phone.lines("AT+CPBR=14") == [f'+CPBR: 14,"{long}",145,"Long two"']
    await phone.lines("AT+CPBW=14")  # delete: the record and its extension records are free again
    assert await phone.lines("AT+CPBR=14") == []
    assert await phone.lines("AT+CPBS?") == ['+CPBS: "SM",13,50']
    # errors, and nothing written
    assert await phone.error('AT+CPBW=51,"1",129,"x"') == 21
    assert await phone.error('AT+CPBW=0,"1",129,"x"') == 21
    assert await phone.error('AT+CPBW=15,"1",129,"A name far longer than eighteen"') == 24
    assert await phone.error(f'AT+CPBW=15,"{"1" * 81}",129,"x"') == 26
    assert await phone.error('AT+CPBW=15,"12x",129,"x"') == 27
    await phone.lines('AT+CSCS="UCS2"')
    assert await phone.error('AT+CPBW=15,"1",129,"004"') == 25
    assert await phone.error('AT+CPBW=15,"1",129,"D83D"') == 25  # a lone surrogate
    await phone.lines('AT+CSCS="IRA"')
    assert await phone.error('AT+CPBW=15,"1",999,"x"') == 50
    assert await phone.lines("AT+CPBR=15") == []
    # SD is read only; FD needs PIN2 (27.007 8.11), a wrong one is 16
    await phone.lines('AT+CPBS="SD"')
    assert await phone.error('AT+CPBW=2,"1",129,"x"') == 3
    await phone.lines('AT+CPBS="FD"')
    assert await phone.error('AT+CPBW=3,"1",129,"x"') == 3
    assert await phone.lines("AT+CPBR=3") == []
    assert await phone.error('AT+CPBS="FD","0000"') == 16
    await phone.lines('AT+CPBS="FD","5678"')
    await phone.lines('AT+CPBW=3,"999",129,"Allowed"')
    assert await phone.lines("AT+CPBR=3") == ['+CPBR: 3,"999",129,"Allowed"']
    # the edits are in the card's state: a new card from the same state file reads them
    again = await _phone(nursery, tmp_path / "card.json")
    assert await again.lines("AT+CPBR=13") == ['+CPBR: 13,"+5551234567",145,"Changed"']
    await again.lines('AT+CPBS="FD"')
    assert await again.lines("AT+CPBR=3") == ['+CPBR: 3,"999",129,"Allowed"']


async def test_memory_full(nursery: trio.Nursery, tmp_path: Path) -> None:
    profile = tmp_path / "small.toml"
    profile.write_text('adn_records = 5\ncontacts = [{name = "A", number = "1"}]\n')
    phone = await _phone(nursery, tmp_path / "card.json", str(profile))
    # EF_EXT1 holds ten records: three numbers of 80 digits take nine, a fourth does not fit
    for _ in range(4):  # the same entry rewritten reuses its own extension records
        await phone.lines(f'AT+CPBW=2,"{"1" * 80}",129,"L"')
    await phone.lines(f'AT+CPBW=3,"{"2" * 80}",129,"M"')
    await phone.lines(f'AT+CPBW=4,"{"3" * 80}",129,"N"')
    assert await phone.error(f'AT+CPBW=5,"{"4" * 80}",129,"O"') == 20
    assert await phone.lines("AT+CPBR=5") == []
    await phone.lines('AT+CPBW=,"5",129,"P"')  # the first free record: 5
    assert await phone.lines("AT+CPBR=5") == ['+CPBR: 5,"5",129,"P"']
    assert await phone.error('AT+CPBW=,"6",129,"Q"') == 20  # no free record left


def test_the_set_is_built_for_every_modem() -> None:
    card, _ = simulated_card(None, None, NULL_TRACER)
    commands = ModemCommands(CardDriver(card), CellularNetwork())
    sets = build_command_sets(commands, NULL_TRACER, {})
    assert any(isinstance(s, PhonebookCommands) for s in sets)


def test_te_shown_marks_what_the_set_cannot_carry() -> None:
    """+CPBR and +CMGL show a text's characters outside the +CSCS set as '?' (uicc/gsm_text.py te_shown)."""
    from bipsim.uicc.gsm_text import te_shown

    assert te_shown("Zoë €5", "IRA") == "Zo? ?5"
    assert te_shown("Zoë", "8859-1") == "Zoë"
    assert te_shown("Zoë", "UCS2") == "005A006F00EB"
