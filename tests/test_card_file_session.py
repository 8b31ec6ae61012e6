"""The card driver's file session (cp/card_driver.py) under the AT commands that read and write the card's files:
two and three lines at once never corrupt each other's SELECT ... READ/UPDATE (docs/protocols.md, "Phonebook"),
a used EF_SMS record the modem cannot decode is never given out as free (TS 31.102 4.2.25), the 2G EF_ADN under
DF_TELECOM follows +CPBW, +CRSM honours <pathid> (27.007 8.18), and a card's 6982/6983 become the PIN errors of
27.005 3.2.5 and 27.007 9.2.1."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from bipsim.cp.card_driver import CardDriver, FileNotSelected
from bipsim.cp.commands import ModemCommands, crsm_path
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork
from bipsim.cp.phonebook_commands import PhonebookCommands
from bipsim.cp.sms_commands import CardStorage, SmsCommands, StoredSms
from bipsim.link.at_server import AtServer, CmeError
from bipsim.net.sms_pdu import SmsSubmit, decode_tpdu
from bipsim.trace.recorder import Tracer
from bipsim.uicc.fs import USIM_AID, FileSystem
from bipsim.uicc.phonebook import decode_entry
from bipsim.uicc.transport import ApduTransport

# 90 00, or 91 xx: the card has a proactive command pending, which no BIP service fetches here (TS 102 221 10.2.1.1)
NORMAL = re.compile(r'\+CRSM: (?:144,0|145,\d+),"([0-9A-F]*)"')
FINAL = re.compile(r"\r\n(OK|ERROR|\+CM[ES] ERROR: [^\r\n]+)\r\n$")


class Dte:
    """One AT line's host side: sends a command, collects up to its final result."""

    def __init__(self, stream: trio.testing.MemoryReceiveStream | trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def until(self, pattern: re.Pattern[str]) -> str:
        with trio.fail_after(30):
            while not pattern.search(self.buffer.decode("latin-1")):
                self.buffer += await self.stream.receive_some()
        text = self.buffer.decode("latin-1")
        self.buffer.clear()
        return text

    async def at(self, line: str) -> str:
        await self.stream.send_all((line + "\r").encode())
        return await self.until(FINAL)

    async def entry(self, line: str, text: str) -> str:
        await self.stream.send_all((line + "\r").encode())
        await self.until(re.compile(r"\r\n> $"))
        await self.stream.send_all((text + "\x1a").encode())
        return await self.until(FINAL)


class Refusing:
    """A card transport that answers `sw` to READ RECORD and UPDATE RECORD while `sw` is set (a card guarding its
    subscriber files behind PIN1: 69 82 security status not satisfied, or 69 83 with the PIN blocked)."""

    def __init__(self, card: ApduTransport) -> None:
        self.card = card
        self.sw: bytes | None = None

    async def power_on(self) -> bytes:
        return await self.card.power_on()

    async def transmit(self, command: bytes) -> bytes:
        if self.sw is not None and len(command) >= 2 and command[1] in (0xB2, 0xDC):
            await trio.lowlevel.checkpoint()
            return self.sw
        return await self.card.transmit(command)

    async def close(self) -> None:
        await self.card.close()


@dataclass
class Modem:
    lines: list[Dte]
    fs: FileSystem
    transport: Refusing


@asynccontextmanager
async def modem(profile: str | None, lines: int) -> AsyncIterator[Modem]:
    """A CP's SMS and phonebook command sets on the simulated card, with `lines` AT servers (as CMUX DLCs are)."""
    tracer = Tracer(keep=False)
    card, _ = simulated_card(profile, None, tracer)
    transport = Refusing(card)
    driver = CardDriver(transport, tracer=tracer)
    await driver.start()
    core = ModemCommands(driver, CellularNetwork())
    core.command_sets = [SmsCommands(core, tracer, {}), PhonebookCommands(core, tracer)]
    fs = card.card.fs  # type: ignore[attr-defined]
    async with trio.open_nursery() as nursery:
        dtes = []
        for _ in range(lines):
            host, dce = trio.testing.memory_stream_pair()
            server = AtServer(dce, tracer=tracer, echo=False)
            core.install(server)
            nursery.start_soon(server.run)
            dte = Dte(host)
            assert (await dte.at("AT+CMEE=1")).endswith("OK\r\n")
            dtes.append(dte)
        yield Modem(dtes, fs, transport)
        nursery.cancel_scope.cancel()


def records(fs: FileSystem, *path: int) -> list[bytes]:
    node = fs.mf
    for fid in path:
        node = node.children[fid] if fid != 0x7FFF else fs.usim
    size = node.record_length
    return [bytes(node.data[at : at + size]) for at in range(0, len(node.data), size)]


SUBMIT = SmsSubmit.for_text("+447700900456", "race")[0].encode()
ROUNDS = 8


async def test_three_lines_at_once_keep_their_files() -> None:
    """+CMGW/+CMGL on one line, +CPBW/+CPBR on another, +CRSM UPDATE/READ RECORD of EF_MSISDN and a READ RECORD of
    the 2G EF_ADN (<pathid> 7F10) on a third, all at once: every answer is right and each write is in its file.
    Without the file session a SELECT of one line landed between another's SELECT and READ/UPDATE RECORD."""
    async with modem("phonebook", 3) as m:
        sms, book, raw = m.lines
        msisdn_length = records(m.fs, 0x7FFF, 0x6F40)[0].__len__()
        fdn_before = records(m.fs, 0x7FFF, 0x6F3B)
        answers: dict[str, list[str]] = {"sms": [], "book": [], "crsm": []}

        async def sms_side() -> None:
            for _ in range(ROUNDS):
                answers["sms"].append(await sms.entry(f"AT+CMGW={len(SUBMIT)}", "00" + SUBMIT.hex().upper()))
                answers["sms"].append(await sms.at("AT+CMGL=4"))

        async def book_side() -> None:
            for i in range(ROUNDS):
                answers["book"].append(await book.at(f'AT+CPBW={20 + i},"12345",129,"N{i}"'))
                answers["book"].append(await book.at("AT+CPBR=1,50"))

        async def crsm_side() -> None:
            for i in range(ROUNDS):
                marker = bytes((0xA0 + i,)) * msisdn_length
                answers["crsm"].append(
                    await raw.at(f'AT+CRSM=220,28480,1,4,{msisdn_length},"{marker.hex().upper()}"')
                )
                answers["crsm"].append(await raw.at(f"AT+CRSM=178,28480,1,4,{msisdn_length}"))
                answers["crsm"].append(await raw.at('AT+CRSM=178,28474,1,4,32,,"7F10"'))

        async with trio.open_nursery() as nursery:
            for side in (sms_side, book_side, crsm_side):
                nursery.start_soon(side)

        for name, texts in answers.items():
            assert not [text for text in texts if "ERROR" in text], name
        writes = [text for text in answers["sms"] if "+CMGW:" in text]
        assert [int(text.split("+CMGW: ")[1].split("\r")[0]) for text in writes] == list(range(1, ROUNDS + 1))
        for i, text in enumerate(answers["crsm"][1::3]):  # each read after its own update
            assert f',"{(bytes((0xA0 + i,)) * msisdn_length).hex().upper()}"' in text
        # the files: 8 messages in EF_SMS, N0..N7 in both ADNs, the last marker in EF_MSISDN, EF_FDN untouched
        sms_records = records(m.fs, 0x7FFF, 0x6F3C)
        assert [r[0] for r in sms_records[:ROUNDS]] == [0x07] * ROUNDS
        for record in sms_records[:ROUNDS]:
            assert decode_tpdu(record[2 : 2 + len(SUBMIT)]).text == "race"  # type: ignore[union-attr]
        for path in ((0x7F10, 0x6F3A), (0x7FFF, 0x5F3A, 0x4F3A)):
            adn = records(m.fs, *path)
            names = [decode_entry(adn[19 + i]) for i in range(ROUNDS)]
            assert [entry.name if entry else None for entry in names] == [f"N{i}" for i in range(ROUNDS)], (
                path
            )
        assert records(m.fs, 0x7FFF, 0x6F40)[0] == bytes((0xA0 + ROUNDS - 1,)) * msisdn_length
        assert records(m.fs, 0x7FFF, 0x6F3B) == fdn_before


async def test_a_used_record_the_modem_cannot_read_is_not_free() -> None:
    """An EF_SMS record marked used (03) whose DELIVER is cut short: +CPMS? counts it, +CMGL lists its bytes,
    +CMGW takes the next record and leaves it as it was (TS 31.102 4.2.25: the status byte says used)."""
    async with modem(None, 1) as m:
        (dte,) = m.lines
        cut = "03" + "00" + "04" + "FF" * 173  # used, unread; no SC address; an SMS-DELIVER that ends at once
        assert "OK" in await dte.at(f'AT+CRSM=220,28476,1,4,176,"{cut}"')
        assert '+CPMS: "SM",1,' in await dte.at("AT+CPMS?")
        listed = await dte.at("AT+CMGL=4")
        assert "+CMGL: 1,0,,1\r\n0004\r\n" in listed
        written = await dte.entry(f"AT+CMGW={len(SUBMIT)}", "00" + SUBMIT.hex().upper())
        assert "+CMGW: 2" in written
        first, second = records(m.fs, 0x7FFF, 0x6F3C)[:2]
        assert first == bytes.fromhex("01" + cut[2:])  # listed: now read, its bytes kept
        assert second[0] == 0x07
        assert '+CPMS: "SM",2,' in await dte.at("AT+CPMS?")


async def test_cpbw_reaches_the_2g_phonebook_and_crsm_its_path() -> None:
    """ "SM" is the USIM's phonebook; +CPBW keeps DF_TELECOM's EF_ADN in step, which +CRSM reads by <pathid>."""
    async with modem("phonebook", 1) as m:
        (dte,) = m.lines
        assert (await dte.at('AT+CPBW=1,"+4917000",145,"Changed"')).endswith("OK\r\n")
        usim = records(m.fs, 0x7FFF, 0x5F3A, 0x4F3A)[0]
        assert records(m.fs, 0x7F10, 0x6F3A)[0] == usim
        assert decode_entry(usim) is not None and decode_entry(usim).name == "Changed"  # type: ignore[union-attr]
        for pathid in ("7F10", "3F007F10"):
            assert (
                NORMAL.search(await dte.at(f'AT+CRSM=178,28474,1,4,32,,"{pathid}"')).group(1)
                == usim.hex().upper()
            )
        # without <pathid> a 6Fxx file is the USIM's: the USIM has no 6F3A
        assert "+CRSM: 106,130," in await dte.at("AT+CRSM=178,28474,1,4,32")
        # the USIM's phonebook by its path (7FFF: the ADF)
        assert (
            NORMAL.search(await dte.at('AT+CRSM=178,20282,1,4,32,,"7FFF5F3A"')).group(1) == usim.hex().upper()
        )
        assert (await dte.at("AT+CPBW=1")).endswith("OK\r\n")  # a deletion reaches both too
        assert records(m.fs, 0x7F10, 0x6F3A)[0] == records(m.fs, 0x7FFF, 0x5F3A, 0x4F3A)[0] == b"\xff" * 32


def test_crsm_path() -> None:
    assert crsm_path(0x6F3A, bytes.fromhex("7F10")) == [b"\x3f\x00", b"\x7f\x10", b"\x6f\x3a"]
    assert crsm_path(0x6F3A, bytes.fromhex("3F007F10")) == [b"\x3f\x00", b"\x7f\x10", b"\x6f\x3a"]
    assert crsm_path(0x4F3A, bytes.fromhex("7FFF5F3A")) == [b"\x3f\x00", USIM_AID, b"\x5f\x3a", b"\x4f\x3a"]
    assert crsm_path(0x6F07, b"") == [USIM_AID, b"\x6f\x07"]
    assert crsm_path(0x2FE2, b"") == [b"\x2f\xe2"]
    assert crsm_path(0, b"") == []


@pytest.mark.parametrize(("sw", "cms", "cme"), [("6982", 311, 11), ("6983", 312, 12)])
async def test_pin_refusals(sw: str, cms: int, cme: int) -> None:
    """A card refusing its records with 6982 (PIN1 not verified) or 6983 (PIN blocked): +CMS ERROR 311/312
    (27.005 3.2.5) for SMS, +CME ERROR 11/12 (27.007 9.2.1) for the phonebook, on reads and writes."""
    async with modem("phonebook", 1) as m:
        (dte,) = m.lines
        m.transport.sw = bytes.fromhex(sw)
        assert (await dte.at("AT+CMGL=4")).endswith(f"+CMS ERROR: {cms}\r\n")
        assert (await dte.entry(f"AT+CMGW={len(SUBMIT)}", "00" + SUBMIT.hex().upper())).endswith(
            f"+CMS ERROR: {cms}\r\n"
        )
        assert (await dte.at("AT+CPBR=1")).endswith(f"+CME ERROR: {cme}\r\n")
        assert (await dte.at('AT+CPBW=1,"123",129,"x"')).endswith(f"+CME ERROR: {cme}\r\n")
        m.transport.sw = None
        assert (await dte.at("AT+CPBR=1")).endswith("OK\r\n")  # the card's state is as it was


async def test_a_session_holds_the_current_file() -> None:
    """A second session waits for the first: the first's READ RECORD still reads its own file, and a path the
    card lacks is FileNotSelected with the SELECT's status word."""
    tracer = Tracer(keep=False)
    card, _ = simulated_card("phonebook", None, tracer)
    driver = CardDriver(card, tracer=tracer)
    await driver.start()
    order: list[str] = []
    inside = trio.Event()

    async def second() -> None:
        await inside.wait()
        async with driver.file_session((USIM_AID, b"\x6f\x3c"), "sms") as ef:
            order.append(f"sms {ef.record_length}")

    async def first(then: Callable[[], Awaitable[None]]) -> None:
        async with driver.file_session((b"\x3f\x00", b"\x7f\x10", b"\x6f\x3a"), "adn") as ef:
            inside.set()
            await then()
            data, sw = await ef.read_record(1)
            order.append(f"adn {len(data)} {sw == 0x9000 or sw >> 8 == 0x91}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second)
        nursery.start_soon(first, trio.testing.wait_all_tasks_blocked)
    assert order == ["adn 32 True", "sms 176"]
    with pytest.raises(FileNotSelected) as raised:
        async with driver.file_session((USIM_AID, b"\x6f\x99"), "none"):
            pass
    assert raised.value.sw == 0x6A82 and raised.value.part == b"\x6f\x99"


async def test_two_lines_writing_messages_take_distinct_indexes(monkeypatch: pytest.MonkeyPatch) -> None:
    """+CMGW on two lines at once: each answer names its own record, and every message is on the card. The first
    write waits until every other task is blocked, so that the other line's +CMGW looks for a free index between
    this one's finding index 1 and writing it: finding a free index and writing it must go together."""
    write = CardStorage.write
    held = [True]

    async def slow_write(self: CardStorage, index: int, sms: StoredSms | None) -> None:
        if held[0]:
            held[0] = False
            await trio.testing.wait_all_tasks_blocked()
        await write(self, index, sms)

    monkeypatch.setattr(CardStorage, "write", slow_write)
    async with modem(None, 2) as m:
        indexes: list[int] = []

        async def writer(dte: Dte) -> None:
            for _ in range(5):
                answer = await dte.entry(f"AT+CMGW={len(SUBMIT)}", "00" + SUBMIT.hex().upper())
                found = re.search(r"\+CMGW: (\d+)", answer)
                assert found, answer
                indexes.append(int(found.group(1)))

        async with trio.open_nursery() as nursery:
            for dte in m.lines:
                nursery.start_soon(writer, dte)
        assert not held[0]
        assert sorted(indexes) == list(range(1, 11))
        assert [r[0] for r in records(m.fs, 0x7FFF, 0x6F3C)[:10]] == [0x07] * 10


@pytest.mark.parametrize(("cme", "cms"), [(11, 311), (12, 312), (10, 310)])
async def test_shared_card_code_errors_in_sms_numbers(
    monkeypatch: pytest.MonkeyPatch, cme: int, cms: int
) -> None:
    """Card code shared with 27.007 commands raises +CME ERROR numbers; an SMS command answers them in 27.005's
    (3.2.5): 11 SIM PIN required is 311, 12 SIM PUK required 312, 10 no SIM 310."""

    async def refused(self: SmsCommands, request: object, server: object) -> list[str] | None:
        raise CmeError(cme)

    monkeypatch.setattr(SmsCommands, "cmgl", refused)
    async with modem(None, 1) as m:
        assert (await m.lines[0].at("AT+CMGL=4")).endswith(f"+CMS ERROR: {cms}\r\n")
