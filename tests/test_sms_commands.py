"""The CP's 27.005 SMS command set as a DTE sees it: raw bytes over a memory stream to an AtServer with the 27.007 core
and cp/sms_commands.py installed, the simulated card behind them (its EF_SMS is the "SM" storage) and a recording
SMSC in the network model. Each command in PDU and text mode, the new-message indications of every +CNMI mode, and
every +CMS ERROR with its sms.error event and nothing written to the card."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
import trio.testing

from bipsim.cp.card_driver import CardDriver
from bipsim.cp.commands import ModemCommands
from bipsim.cp.modem import simulated_card
from bipsim.cp.network import CellularNetwork, RegStatus
from bipsim.cp.sms_commands import (
    DELETED_BY_FLAG,
    EF_SMS_RECORD,
    ME_CAPACITY,
    BadPdu,
    Indication,
    MtResult,
    Route,
    SmsCommands,
    Stat,
    StoredSms,
    deliver_route,
    indication_action,
    tpdu_extent,
)
from bipsim.link.at_server import AtServer
from bipsim.net.sms_pdu import (
    Address,
    RelativeValidity,
    SmsDeliver,
    SmsStatusReport,
    SmsSubmit,
    TypeOfNumber,
    decode_tpdu,
    encode_sca,
)
from bipsim.net.smsc import Smsc as NetworkSmsc
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from bipsim.uicc.gsm_text import gsm7_encode, ucs2_encode
from bipsim.uicc.transport import CardRemoved

FINAL = re.compile(r"\r\n(OK|ERROR|\+CM[ES] ERROR: [^\r\n]+)\r\n$")
# A classic SMS-DELIVER in PDU mode (the "How are you?" example of the dreamfabric.com SMS PDU pages, also in
# 27.005 tutorials): SCA +31624000000, from +31641600986, GSM 7-bit.
HOW_ARE_YOU = "07911326040000F0040B911346610089F60000208062917314080CC8F71D14969741F977FD07"
SM_RECORDS = 10  # the default profile's EF_SMS


class Smsc:
    """The network's SMS centre as the command set sees it: records each submitted TPDU and answers its TP-MR."""

    def __init__(self) -> None:
        self.address = "+15550000000"
        self.submitted: list[tuple[bytes, str]] = []

    def submit(self, tpdu: bytes, *, origin: str) -> int:
        self.submitted.append((tpdu, origin))
        return tpdu[1]


class Dte:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def send(self, data: str) -> None:
        await self.stream.send_all(data.encode("latin-1"))

    async def until(self, pattern: re.Pattern[str] | str) -> str:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        with trio.fail_after(5):
            while not regex.search(self.buffer.decode("latin-1")):
                self.buffer += await self.stream.receive_some()
        text = self.buffer.decode("latin-1")
        self.buffer.clear()
        return text

    async def at(self, line: str) -> str:
        await self.send(line + "\r")
        return await self.until(FINAL)

    async def entry(self, line: str, text: str, end: str = "\x1a") -> str:
        """A command with a text entry: waits for the prompt, then types `text` and Ctrl-Z (or ESC)."""
        await self.send(line + "\r")
        await self.until(r"\r\n> $")
        await self.send(text + end)
        return await self.until(FINAL)

    async def pending(self) -> str:
        """What the CP wrote unasked (URCs) once every task is idle."""
        await trio.testing.wait_all_tasks_blocked()
        text = ""
        while True:
            with trio.move_on_after(0.01):
                text += (await self.stream.receive_some()).decode("latin-1")
                continue
            return text


def lines(text: str) -> list[str]:
    """The information lines of an answer (echo off), final result dropped."""
    return [line for line in text.split("\r\n") if line][:-1]


@dataclass
class Cp:
    dte: Dte
    server: AtServer
    sms: SmsCommands
    core: ModemCommands
    network: CellularNetwork
    smsc: Smsc
    tracer: Tracer
    card: object
    extra: list[Dte] = field(default_factory=list)

    def events(self, kind: Kind) -> list[dict[str, object]]:
        return [
            {**(event.fields or {}), "hex": event.hex, "error": event.error}
            for event in self.tracer.events
            if event.kind == kind
        ]

    def card_writes(self) -> int:
        """UPDATE RECORD commands the card got."""
        return sum(1 for e in self.events(Kind.APDU_COMMAND) if e.get("ins") == "DC")


@pytest.fixture
async def cp(nursery: trio.Nursery) -> AsyncIterator[Cp]:
    tracer = Tracer(keep=True)
    card, _ = simulated_card(None, None, tracer)
    network = CellularNetwork()
    smsc = Smsc()
    network.smsc = smsc  # type: ignore[attr-defined]
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
    yield Cp(dte, server, sms, core, network, smsc, tracer, card)


def deliver(text: str = "hello", originator: str = "+447700900123", **fields: object) -> bytes:
    when = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
    return SmsDeliver.for_text(originator, text, when, **fields)[0].encode()


def submit(text: str = "hi there", destination: str = "+447700900456", **fields: object) -> bytes:
    return SmsSubmit.for_text(destination, text, **fields)[0].encode()


def pdu(tpdu: bytes, sca: bytes = b"\x00") -> str:
    return (sca + tpdu).hex().upper()


async def sm_record(cp: Cp, index: int) -> bytes:
    """EF_SMS record `index` read by +CRSM (READ RECORD), as another party sees the card."""
    answer = await cp.dte.at(f"AT+CRSM=178,28476,{index},4,{EF_SMS_RECORD}")
    match = re.search(r'\+CRSM: (144,0|145,\d+),"([0-9A-F]+)"', answer)
    assert match, answer
    return bytes.fromhex(match.group(2))


# --- record format and TPDU extents ---------------------------------------------------------------------------------


def test_record_round_trip_and_padding() -> None:
    tpdu = bytes.fromhex(HOW_ARE_YOU)[8:]
    sms = StoredSms(Stat.REC_UNREAD, bytes.fromhex(HOW_ARE_YOU)[:8], tpdu)
    record = sms.record()
    # TS 31.102 4.2.25: status byte (03 received unread), SC address, TPDU, FF to 176
    assert len(record) == EF_SMS_RECORD and record[0] == 0x03
    assert record[1:] == bytes.fromhex(HOW_ARE_YOU).ljust(EF_SMS_RECORD - 1, b"\xff")
    assert StoredSms.from_record(record) == sms
    assert StoredSms.from_record(b"\x00" + b"\xff" * 175) is None  # a free record
    # used but holding nothing readable: still a message (never taken for free), its bytes kept as they are
    unreadable = StoredSms.from_record(b"\x07" + b"\xff" * 175)
    assert unreadable is not None and unreadable.stat is Stat.STO_UNSENT and unreadable.tpdu == b""
    assert replace(unreadable, stat=Stat.STO_SENT).record() == b"\x05" + b"\xff" * 175
    for stat, status in ((Stat.REC_READ, 1), (Stat.STO_SENT, 5), (Stat.STO_UNSENT, 7)):
        mo = stat in (Stat.STO_SENT, Stat.STO_UNSENT)
        body = submit() if mo else tpdu
        again = StoredSms.from_record(StoredSms(stat, b"\x00", body).record())
        assert again is not None and again.stat is stat and again.tpdu == body
        assert StoredSms(stat, b"\x00", body).record()[0] == status


def test_tpdu_extent_reads_every_type() -> None:
    report = SmsStatusReport(
        7,
        Address("447700900456", TypeOfNumber.INTERNATIONAL),
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 1, tzinfo=UTC),
        pid=0,
        dcs=0,
        ud=gsm7_encode("ok"),
    ).encode()
    for tpdu, mo in (
        (deliver("x" * 160), False),
        (deliver("ünïcode ☃"), False),
        (submit("y" * 10, validity=RelativeValidity(167)), True),
        (report, False),
    ):
        assert tpdu_extent(tpdu + b"\xff" * 30, mobile_originated=mo) == len(tpdu)
    with pytest.raises(BadPdu):
        tpdu_extent(submit(), mobile_originated=False)  # an SMS-SUBMIT does not travel to the ME
    with pytest.raises(BadPdu):
        tpdu_extent(bytes((0x00, 21)), mobile_originated=False)  # a 21-digit address


# --- settings -------------------------------------------------------------------------------------------------------


async def test_settings_commands(cp: Cp) -> None:
    dte = cp.dte
    assert lines(await dte.at("AT+CSMS=?")) == ["+CSMS: (0,1)"]
    assert lines(await dte.at("AT+CSMS=1")) == ["+CSMS: 1,1,1"]
    assert lines(await dte.at("AT+CSMS?")) == ["+CSMS: 1,1,1,1"]
    assert await dte.at("AT+CSMS=2") == "\r\n+CMS ERROR: 303\r\n"
    assert lines(await dte.at("AT+CMGF=?")) == ["+CMGF: (0,1)"]
    assert lines(await dte.at("AT+CMGF?")) == ["+CMGF: 0"]
    await dte.at("AT+CMGF=1")
    assert lines(await dte.at("AT+CMGF?")) == ["+CMGF: 1"]
    assert lines(await dte.at("AT+CSDH?")) == ["+CSDH: 0"]
    await dte.at("AT+CSDH=1")
    assert lines(await dte.at("AT+CSDH?")) == ["+CSDH: 1"]
    assert lines(await dte.at("AT+CSMP?")) == ["+CSMP: 17,167,0,0"]
    await dte.at("AT+CSMP=49,11,0,8")
    assert lines(await dte.at("AT+CSMP?")) == ["+CSMP: 49,11,0,8"]
    assert await dte.at("AT+CSMP=4,167,0,0") == "\r\n+CMS ERROR: 305\r\n"  # fo 4 is no SMS-SUBMIT
    assert lines(await dte.at("AT+CSCA?")) == ['+CSCA: "+15550000000",145']  # the network's SMSC
    await dte.at('AT+CSCA="+441234000000",145')
    assert lines(await dte.at("AT+CSCA?")) == ['+CSCA: "+441234000000",145']
    assert await dte.at('AT+CSCA="12A!"') == "\r\n+CMS ERROR: 305\r\n"
    assert lines(await dte.at("AT+CNMI=?")) == ["+CNMI: (0-3),(0-3),(0),(0-2),(0,1)"]
    await dte.at("AT+CNMI=2,1,0,2,0")
    assert lines(await dte.at("AT+CNMI?")) == ["+CNMI: 2,1,0,2,0"]
    assert await dte.at("AT+CNMI=4") == "\r\n+CMS ERROR: 303\r\n"
    assert await dte.at("AT+CNMI=2,1,1") == "\r\n+CMS ERROR: 303\r\n"  # no cell broadcast indications
    # Z returns the line's +CMGF and +CSDH to their defaults
    await dte.at("ATZ")
    await dte.at("AT+CMEE=1")
    assert lines(await dte.at("AT+CMGF?")) == ["+CMGF: 0"]
    assert lines(await dte.at("AT+CSDH?")) == ["+CSDH: 0"]
    assert {e["command"] for e in cp.events(Kind.SMS_ERROR)} == {"+CSMS", "+CSMP", "+CSCA", "+CNMI"}


async def test_cmms_falls_back_after_the_hold(cp: Cp, autojump_clock: trio.abc.Clock) -> None:
    dte = cp.dte
    assert lines(await dte.at("AT+CMMS=?")) == ["+CMMS: (0-2)"]
    await dte.at("AT+CMMS=1")
    assert lines(await dte.at("AT+CMMS?")) == ["+CMMS: 1"]
    await dte.entry("AT+CMGS=" + str(len(submit())), pdu(submit()))
    await trio.sleep(4)
    assert lines(await dte.at("AT+CMMS?")) == ["+CMMS: 1"]  # within 5 s of the last send
    await trio.sleep(6)
    assert lines(await dte.at("AT+CMMS?")) == ["+CMMS: 0"]
    await dte.at("AT+CMMS=2")
    await trio.sleep(60)
    assert lines(await dte.at("AT+CMMS?")) == ["+CMMS: 2"]


async def test_cpms_storages_and_counts(cp: Cp) -> None:
    dte = cp.dte
    assert lines(await dte.at("AT+CPMS=?")) == [
        '+CPMS: ("SM","ME","MT","SR"),("SM","ME","MT"),("SM","ME","MT")'
    ]
    assert lines(await dte.at("AT+CPMS?")) == [
        f'+CPMS: "SM",0,{SM_RECORDS},"SM",0,{SM_RECORDS},"SM",0,{SM_RECORDS}'
    ]
    both = SM_RECORDS + ME_CAPACITY
    assert lines(await dte.at('AT+CPMS="ME","MT","SM"')) == [
        f"+CPMS: 0,{ME_CAPACITY},0,{both},0,{SM_RECORDS}"
    ]
    assert lines(await dte.at("AT+CPMS?")) == [
        f'+CPMS: "ME",0,{ME_CAPACITY},"MT",0,{both},"SM",0,{SM_RECORDS}'
    ]
    assert await dte.at('AT+CPMS="BM"') == "\r\n+CMS ERROR: 303\r\n"
    assert await dte.at('AT+CPMS="SM","SR"') == "\r\n+CMS ERROR: 303\r\n"  # SR only reads status reports
    assert lines(await dte.at("AT+CPMS?"))[0].startswith('+CPMS: "ME"')  # a refused +CPMS changed nothing


# --- storing, reading, listing, deleting ---------------------------------------------------------------------------


async def test_write_read_list_delete_pdu_mode_on_the_card(cp: Cp) -> None:
    dte = cp.dte
    received = bytes.fromhex(HOW_ARE_YOU)
    tpdu = received[8:]
    assert lines(await dte.entry(f"AT+CMGW={len(tpdu)},0", HOW_ARE_YOU)) == ["+CMGW: 1"]
    mine = submit()
    assert lines(await dte.entry(f"AT+CMGW={len(mine)}", pdu(mine))) == ["+CMGW: 2"]
    # on the card, in TS 31.102 4.2.25 form, as +CRSM reads it
    assert await sm_record(cp, 1) == (b"\x03" + received).ljust(EF_SMS_RECORD, b"\xff")
    assert await sm_record(cp, 2) == (b"\x07\x00" + mine).ljust(EF_SMS_RECORD, b"\xff")
    # +CMGL=4 lists both; the unread one becomes read
    assert lines(await dte.at("AT+CMGL=4")) == [
        f"+CMGL: 1,0,,{len(tpdu)}",
        HOW_ARE_YOU,
        f"+CMGL: 2,2,,{len(mine)}",
        pdu(mine),
    ]
    assert (await sm_record(cp, 1))[0] == 0x01
    assert lines(await dte.at("AT+CMGL")) == []  # default <stat> 0: no unread left
    assert lines(await dte.at("AT+CMGL=2")) == [f"+CMGL: 2,2,,{len(mine)}", pdu(mine)]
    assert lines(await dte.at("AT+CMGR=1")) == [f"+CMGR: 1,,{len(tpdu)}", HOW_ARE_YOU]
    assert lines(await dte.at("AT+CMGD=?")) == ["+CMGD: (1,2),(0-4)"]
    await dte.at("AT+CMGD=1")
    assert (await sm_record(cp, 1))[0] == 0x00
    assert await dte.at("AT+CMGR=1") == "\r\n+CMS ERROR: 321\r\n"
    await dte.at("AT+CMGD=5")  # an empty index within the storage: nothing to do
    assert lines(await dte.at("AT+CPMS?"))[0].startswith('+CPMS: "SM",1,')


async def test_cmgd_delflags(cp: Cp) -> None:
    dte = cp.dte
    await dte.at('AT+CPMS="ME","ME","ME"')
    unread, read, sent, unsent = (
        (deliver("a"), 0),
        (deliver("b"), 1),
        (submit("c"), 3),
        (submit("d"), 2),
    )

    async def fill() -> None:
        await dte.at("AT+CMGD=1,4")
        for tpdu, stat in (unread, read, sent, unsent):
            await dte.entry(f"AT+CMGW={len(tpdu)},{stat}", pdu(tpdu))

    async def stats() -> list[int]:
        return [
            int(line.split(",")[1]) for line in lines(await dte.at("AT+CMGL=4")) if line.startswith("+CMGL")
        ]

    await fill()
    assert await stats() == [0, 1, 3, 2]
    await dte.at("AT+CMGD=0,1")  # all read (listing made the unread one read too)
    assert await stats() == [3, 2]
    await fill()
    await dte.at("AT+CMGR=1")
    await dte.at("AT+CMGD=1,2")  # read and sent
    assert await stats() == [2]
    await fill()
    await dte.at("AT+CMGD=1,3")  # read, sent and unsent: the one still unread stays
    assert await stats() == [0]
    await fill()
    await dte.at("AT+CMGD=1,4")
    assert await stats() == []
    assert await dte.at("AT+CMGD=1,5") == "\r\n+CMS ERROR: 304\r\n"


async def test_text_mode_read_list_and_header(cp: Cp) -> None:
    dte = cp.dte
    tpdu = bytes.fromhex(HOW_ARE_YOU)[8:]
    await dte.entry(f"AT+CMGW={len(tpdu)},1", HOW_ARE_YOU)
    await dte.at("AT+CMGF=1")
    assert lines(await dte.at("AT+CMGR=1")) == [
        '+CMGR: "REC READ","+31641600986",,"02/08/26,19:37:41+00"',
        "How are you?",
    ]
    await dte.at("AT+CSDH=1")
    assert lines(await dte.at("AT+CMGR=1")) == [
        '+CMGR: "REC READ","+31641600986",,"02/08/26,19:37:41+00",145,4,0,0,"+31624000000",145,12',
        "How are you?",
    ]
    await dte.at("AT+CSDH=0")
    assert lines(await dte.entry('AT+CMGW="+447700900456"', "see you")) == ["+CMGW: 2"]
    assert lines(await dte.at('AT+CMGL="ALL"')) == [
        '+CMGL: 1,"REC READ","+31641600986",,"02/08/26,19:37:41+00"',
        "How are you?",
        '+CMGL: 2,"STO UNSENT","+447700900456",,',
        "see you",
    ]
    await dte.at("AT+CSDH=1")
    assert lines(await dte.at('AT+CMGL="STO UNSENT"')) == [
        '+CMGL: 2,"STO UNSENT","+447700900456",,,145,7',
        "see you",
    ]
    assert lines(await dte.at("AT+CMGR=2")) == [
        '+CMGR: "STO UNSENT","+447700900456",,145,17,0,0,167,"",129,7',
        "see you",
    ]
    # what text mode wrote is an SMS-SUBMIT built from +CSMP (fo 17: relative VP 167)
    stored = StoredSms.from_record(await sm_record(cp, 2))
    assert stored is not None and stored.stat is Stat.STO_UNSENT
    message = decode_tpdu(stored.tpdu)
    assert isinstance(message, SmsSubmit) and message.text == "see you"
    assert message.validity == RelativeValidity(167)
    assert await dte.at('AT+CMGL="NEW"') == "\r\n+CMS ERROR: 305\r\n"


# --- sending ---------------------------------------------------------------------------------------------------------


async def test_cmgs_pdu_mode_reaches_the_smsc(cp: Cp) -> None:
    dte = cp.dte
    tpdu = submit("hi there")
    assert lines(await dte.entry(f"AT+CMGS={len(tpdu)}", pdu(tpdu))) == ["+CMGS: 1"]
    assert lines(await dte.entry(f"AT+CMGS={len(tpdu)}", pdu(tpdu, encode_sca("+447700000001")))) == [
        "+CMGS: 2"
    ]
    sent = [decode_tpdu(t) for t, _ in cp.smsc.submitted]
    # the ME sets TP-MR, one more each time (TS 23.040 9.2.3.6); the rest is the TE's TPDU
    assert [s.mr for s in sent if isinstance(s, SmsSubmit)] == [1, 2]
    assert all(t[2:] == tpdu[2:] for t, _ in cp.smsc.submitted)
    assert {origin for _, origin in cp.smsc.submitted} == {cp.sms.own_number()}
    events = cp.events(Kind.SMS_SUBMIT)
    assert [e["mr"] for e in events] == [1, 2] and events[0]["hex"] == cp.smsc.submitted[0][0].hex().upper()
    # the PDU may come behind the command line in one write, and a command after its Ctrl-Z is read as usual
    await dte.send(f"AT+CMGS={len(tpdu)}\r{pdu(tpdu)}\x1aAT+CMGF?\r")
    answer = await dte.until(r"\+CMGF: 0\r\n\r\nOK\r\n$")
    assert "+CMGS: 3" in answer and len(cp.smsc.submitted) == 3
    text_events = cp.events(Kind.AT_TEXT)
    assert (
        text_events[-1]["hex"] == pdu(tpdu).encode().hex().upper() and text_events[-1]["cancelled"] is False
    )


async def test_cmgs_text_mode_and_escape(cp: Cp) -> None:
    dte = cp.dte
    await dte.at("AT+CMGF=1")
    assert lines(await dte.entry('AT+CMGS="+447700900456"', "Hello {world}")) == ["+CMGS: 1"]
    message = decode_tpdu(cp.smsc.submitted[0][0])
    assert isinstance(message, SmsSubmit)
    assert message.text == "Hello {world}" and str(message.destination) == "+447700900456"
    assert message.validity == RelativeValidity(167)
    # UCS2 through +CSMP's <dcs> 8: the text is hex of the UCS2 octets
    await dte.at("AT+CSMP=17,167,0,8")
    hexed = ucs2_encode("Привет").hex().upper()
    assert lines(await dte.entry('AT+CMGS="07700900456",129', hexed)) == ["+CMGS: 2"]
    message = decode_tpdu(cp.smsc.submitted[1][0])
    assert isinstance(message, SmsSubmit) and message.text == "Привет"
    assert message.destination.ton is TypeOfNumber.UNKNOWN
    # ESC: cancelled, nothing sent, OK
    assert await dte.entry('AT+CMGS="+447700900456"', "never mind", end="\x1b") == "\r\nOK\r\n"
    assert len(cp.smsc.submitted) == 2
    assert cp.events(Kind.AT_TEXT)[-1]["cancelled"] is True


async def test_cmss_sends_a_stored_message(cp: Cp) -> None:
    dte = cp.dte
    tpdu = submit("stored")
    await dte.entry(f"AT+CMGW={len(tpdu)}", pdu(tpdu))
    assert lines(await dte.at("AT+CMSS=1")) == ["+CMSS: 1"]
    assert cp.smsc.submitted[0][0][2:] == tpdu[2:]
    assert (await sm_record(cp, 1))[0] == 0x05  # STO SENT on the card
    assert lines(await dte.at('AT+CMSS=1,"+447700900999",145')) == ["+CMSS: 2"]
    again = decode_tpdu(cp.smsc.submitted[1][0])
    assert (
        isinstance(again, SmsSubmit) and str(again.destination) == "+447700900999" and again.text == "stored"
    )
    assert cp.events(Kind.SMS_SUBMIT)[0]["storage"] == "SM" and cp.events(Kind.SMS_SUBMIT)[0]["index"] == 1
    received = bytes.fromhex(HOW_ARE_YOU)
    await dte.entry(f"AT+CMGW={len(received) - 8},1", HOW_ARE_YOU)
    assert await dte.at("AT+CMSS=2") == "\r\n+CMS ERROR: 302\r\n"  # a received message is not sent
    assert await dte.at("AT+CMSS=3") == "\r\n+CMS ERROR: 321\r\n"


# --- bad input: each its +CMS ERROR, an sms.error event, nothing written to the card --------------------------------


async def test_bad_input_is_refused_and_writes_nothing(cp: Cp) -> None:
    dte = cp.dte
    good = submit("ok")
    lying = bytearray(good)
    assert lying[-3] == 2  # TP-UDL: "ok" is 2 septets in 2 octets
    lying[-3] = 7  # now it says 7 septets (7 octets); 2 follow
    cases = [
        (f"AT+CMGW={len(good) + 1}", pdu(good), 304, "wrong <length>"),
        (f"AT+CMGW={len(good)}", pdu(bytes(lying)), 304, "UDL lies"),
        (f"AT+CMGW={len(good)}", pdu(good)[:-1] + "G", 304, "not hex"),
        (f"AT+CMGW={len(good)},0", pdu(good), 304, "an SMS-SUBMIT stored as received"),
        ("AT+CMGW=9", "0C" + "00" * 9, 304, "SC address past the PDU"),
    ]
    for command, text, code, why in cases:
        assert await dte.entry(command, text) == f"\r\n+CMS ERROR: {code}\r\n", why
    assert await dte.at("AT+CMGW=200") == "\r\n+CMS ERROR: 304\r\n"  # no prompt for a length past any TPDU
    # a runaway text entry: kept to 2048 characters, refused at its Ctrl-Z, the line still served
    assert await dte.entry(f"AT+CMGW={len(good)}", "00" * 3000) == "\r\n+CMS ERROR: 304\r\n"
    assert cp.events(Kind.AT_TEXT)[-1]["overflow"] is True
    assert await dte.at("AT+CMGF?") == "\r\n+CMGF: 0\r\n\r\nOK\r\n"
    assert await dte.at("AT+CMGR=11") == "\r\n+CMS ERROR: 321\r\n"  # past the 10 records of EF_SMS
    assert await dte.at("AT+CMGD=0") == "\r\n+CMS ERROR: 321\r\n"
    await dte.at("AT+CMGF=1")
    await dte.at("AT+CSMP=17,167,0,8")
    for hexed in ("04", "0041004", "ZZ41"):  # odd UCS2, odd hex, not hex
        assert await dte.entry('AT+CMGW="+447700900456"', hexed) == "\r\n+CMS ERROR: 305\r\n", hexed
    await dte.at("AT+CSMP=17,167,0,0")
    # text mode without the +CSMP its text needs: a character outside the GSM 7-bit alphabet under <dcs> 0
    assert await dte.entry('AT+CMGW="+447700900456"', "snow \u2603".encode().decode("latin-1")) == (
        "\r\n+CMS ERROR: 305\r\n"
    )
    assert await dte.at('AT+CMGS="+44770!"') == "\r\n+CMS ERROR: 305\r\n"  # refused before the prompt
    errors = cp.events(Kind.SMS_ERROR)
    assert len(errors) >= len(cases) + 3 + 3 + 1
    assert all(e["error"] and e["reason"] for e in errors)
    assert cp.card_writes() == 0
    assert cp.smsc.submitted == []


async def test_full_storage(cp: Cp) -> None:
    dte = cp.dte
    tpdu = submit("fill")
    for index in range(1, SM_RECORDS + 1):
        assert lines(await dte.entry(f"AT+CMGW={len(tpdu)}", pdu(tpdu))) == [f"+CMGW: {index}"]
    writes = cp.card_writes()
    assert await dte.entry(f"AT+CMGW={len(tpdu)}", pdu(tpdu)) == "\r\n+CMS ERROR: 322\r\n"
    assert cp.card_writes() == writes
    assert cp.events(Kind.SMS_ERROR)[-1]["code"] == 322
    # the network's message finds no room either: not stored, the network told memory capacity exceeded (D3)
    await dte.at("AT+CNMI=2,1")
    result = await cp.sms.deliver(deliver())
    assert not result.delivered and result.failure == 0xD3
    assert cp.events(Kind.SMS_DELIVER)[-1]["route"] == "dropped"
    assert await dte.pending() == ""


async def test_no_network_and_no_card(cp: Cp) -> None:
    dte = cp.dte
    tpdu = submit()
    cp.network.set_status(RegStatus.NOT_REGISTERED)
    assert await dte.entry(f"AT+CMGS={len(tpdu)}", pdu(tpdu)) == "\r\n+CMS ERROR: 331\r\n"
    cp.network.set_status(RegStatus.HOME)
    cp.core.slots[1].gone(CardRemoved("pulled"))
    assert await dte.at("AT+CMGL=4") == "\r\n+CMS ERROR: 310\r\n"
    assert await dte.at('AT+CPMS="ME"') == "\r\n+CMS ERROR: 310\r\n"  # <mem2>, <mem3> stay SM
    assert lines(await dte.at('AT+CPMS="ME","ME","ME"')) == [
        f"+CPMS: 0,{ME_CAPACITY},0,{ME_CAPACITY},0,{ME_CAPACITY}"
    ]
    assert cp.smsc.submitted == []


# --- the network's deliveries and +CNMI -----------------------------------------------------------------------------


async def test_cnmi_mt1_stores_and_indicates(cp: Cp) -> None:
    dte = cp.dte
    await dte.at("AT+CNMI=2,1,0,0,0")
    assert (await cp.sms.deliver(deliver("first"))).delivered
    assert await dte.pending() == '\r\n+CMTI: "SM",1\r\n'
    await dte.at('AT+CPMS="ME","ME","ME"')
    await cp.sms.deliver(deliver("second"))
    assert await dte.pending() == '\r\n+CMTI: "ME",1\r\n'
    await dte.at("AT+CMGF=1")
    assert lines(await dte.at("AT+CMGR=1")) == [
        '+CMGR: "REC UNREAD","+447700900123",,"26/11/30,12:00:00+00"',
        "second",
    ]
    assert [e["route"] for e in cp.events(Kind.SMS_DELIVER)] == ["cmti", "cmti"]


async def test_cnmi_mt0_stores_silently_and_mt2_routes(cp: Cp) -> None:
    dte = cp.dte
    await cp.sms.deliver(deliver("quiet"))  # +CNMI mt 0 (the default): stored, no indication
    assert await dte.pending() == ""
    assert lines(await dte.at("AT+CPMS?"))[0].startswith('+CPMS: "SM",1,')
    await dte.at("AT+CNMI=1,2,0,0,0")
    tpdu = deliver("direct")
    await cp.sms.deliver(tpdu)
    sca = encode_sca(cp.smsc.address)
    assert await dte.pending() == f"\r\n+CMT: ,{len(tpdu)}\r\n{pdu(tpdu, sca)}\r\n"
    # a class 2 message belongs on the SIM even under mt 2
    class2 = deliver("to the SIM", message_class=2)
    await cp.sms.deliver(class2)
    assert await dte.pending() == '\r\n+CMTI: "SM",2\r\n'
    # mt 3: class 3 routed, the others stored
    await dte.at("AT+CNMI=1,3,0,0,0")
    await cp.sms.deliver(deliver("class 3", message_class=3))
    assert (await dte.pending()).startswith("\r\n+CMT: ,")
    await cp.sms.deliver(deliver("class 1", message_class=1))
    assert await dte.pending() == '\r\n+CMTI: "SM",3\r\n'
    # text mode +CMT, with the header under +CSDH=1
    await dte.at("AT+CMGF=1")
    await dte.at("AT+CSDH=1")
    await dte.at("AT+CNMI=1,2,0,0,0")
    await cp.sms.deliver(tpdu)
    assert await dte.pending() == (
        '\r\n+CMT: "+447700900123",,"26/11/30,12:00:00+00",145,4,0,0,"+15550000000",145,6\r\ndirect\r\n'
    )


async def test_cnmi_mode0_buffers_until_mode2(cp: Cp) -> None:
    dte = cp.dte
    await dte.at("AT+CNMI=0,1,0,0,0")
    await cp.sms.deliver(deliver("one"))
    await cp.sms.deliver(deliver("two"))
    assert await dte.pending() == ""
    # <mode> 2 with <bfr> 0: OK first, then the buffered indications (27.005 3.4.1)
    await dte.send("AT+CNMI=2,1,0,0,0\r")
    assert await dte.until(r'\+CMTI: "SM",2\r\n$') == '\r\nOK\r\n\r\n+CMTI: "SM",1\r\n\r\n+CMTI: "SM",2\r\n'
    # <bfr> 1 clears them instead
    await dte.at("AT+CNMI=0,1,0,0,0")
    await cp.sms.deliver(deliver("three"))
    assert await dte.at("AT+CNMI=2,1,0,0,1") == "\r\nOK\r\n"
    assert await dte.pending() == ""


async def test_cnmi_mode2_holds_indications_during_text_entry(cp: Cp) -> None:
    dte = cp.dte
    await dte.at("AT+CNMI=2,1,0,0,0")
    tpdu = submit()
    await dte.send(f"AT+CMGS={len(tpdu)}\r")
    await dte.until(r"\r\n> $")
    await cp.sms.deliver(deliver("while typing"))
    assert await dte.pending() == ""  # the line is reserved
    await dte.send(pdu(tpdu) + "\x1a")
    assert await dte.until(r'\+CMTI: "SM",1\r\n$') == '\r\n+CMGS: 1\r\n\r\nOK\r\n\r\n+CMTI: "SM",1\r\n'
    # mode 1 drops it instead
    await dte.at("AT+CNMI=1,1,0,0,0")
    await dte.send(f"AT+CMGS={len(tpdu)}\r")
    await dte.until(r"\r\n> $")
    await cp.sms.deliver(deliver("dropped"))
    await dte.send(pdu(tpdu) + "\x1a")
    assert await dte.until(FINAL) == "\r\n+CMGS: 2\r\n\r\nOK\r\n"
    assert await dte.pending() == ""


async def test_status_reports(cp: Cp) -> None:
    dte = cp.dte
    report = SmsStatusReport(
        1,
        Address("447700900456", TypeOfNumber.INTERNATIONAL),
        datetime(2026, 11, 30, 12, tzinfo=UTC),
        datetime(2026, 11, 30, 12, 0, 5, tzinfo=UTC),
    ).encode()
    await cp.sms.deliver(report)  # <ds> 0: not routed
    assert await dte.pending() == ""
    await dte.at("AT+CNMI=2,1,0,1,0")
    await cp.sms.deliver(report)
    sca = encode_sca(cp.smsc.address)
    assert await dte.pending() == f"\r\n+CDS: {len(report)}\r\n{pdu(report, sca)}\r\n"
    await dte.at("AT+CNMI=2,1,0,2,0")
    await cp.sms.deliver(report)
    assert await dte.pending() == '\r\n+CDSI: "SR",1\r\n'
    await dte.at('AT+CPMS="SR"')
    assert lines(await dte.at("AT+CMGR=1")) == [f"+CMGR: 0,,{len(report)}", pdu(report, sca)]
    await dte.at("AT+CMGF=1")
    assert lines(await dte.at("AT+CMGR=1")) == [
        '+CMGR: "REC READ",6,1,"+447700900456",145,"26/11/30,12:00:00+00","26/11/30,12:00:05+00",0'
    ]
    await dte.at("AT+CNMI=2,1,0,1,0")
    await cp.sms.deliver(report)
    assert await dte.pending() == (
        '\r\n+CDS: 6,1,"+447700900456",145,"26/11/30,12:00:00+00","26/11/30,12:00:05+00",0\r\n'
    )
    assert [e["route"] for e in cp.events(Kind.SMS_STATUS_REPORT)] == ["dropped", "cds", "cdsi", "cds"]


async def test_cnma_acknowledges_cmt_under_csms1(cp: Cp, nursery: trio.Nursery) -> None:
    """Under +CSMS=1 the network's RP-ACK waits for the TE's +CNMA (27.005 3.4.4): the SMSC learns the outcome only
    then; +CNMA=2 is RP-ERROR."""
    dte = cp.dte
    assert await dte.at("AT+CNMA") == "\r\n+CMS ERROR: 302\r\n"  # +CSMS 0
    await dte.at("AT+CSMS=1")
    assert await dte.at("AT+CNMA") == "\r\n+CMS ERROR: 340\r\n"  # nothing to acknowledge
    await dte.at("AT+CNMI=2,2,0,1,0")
    results: list[MtResult] = []

    async def delivered(tpdu: bytes) -> None:
        results.append(await cp.sms.deliver(tpdu))

    nursery.start_soon(delivered, deliver("ack me"))
    assert (await dte.pending()).startswith("\r\n+CMT: ,")
    assert results == []  # the network waits for the TE
    assert await dte.at("AT+CNMA") == "\r\nOK\r\n"
    await trio.testing.wait_all_tasks_blocked()
    assert results == [MtResult(True)]
    assert await dte.at("AT+CNMA") == "\r\n+CMS ERROR: 340\r\n"
    nursery.start_soon(delivered, deliver("ack me with a PDU"))
    await dte.pending()
    assert await dte.entry("AT+CNMA=0,2", "0000") == "\r\nOK\r\n"  # an SMS-DELIVER-REPORT: fo, PI
    nursery.start_soon(delivered, deliver("refuse me"))
    await dte.pending()
    assert await dte.at("AT+CNMA=2") == "\r\nOK\r\n"
    await trio.testing.wait_all_tasks_blocked()
    assert [r.delivered for r in results] == [True, True, False]
    assert [e["ack"] for e in cp.events(Kind.SMS_ACK)] == [True, True, False]


async def test_no_cnma_in_time_turns_routing_off(cp: Cp, autojump_clock: trio.abc.Clock) -> None:
    """27.005 3.4.1: without +CNMA the ME answers the network RP-ERROR and the TA sets <mt> and <ds> to 0; the
    next message is stored silently."""
    dte = cp.dte
    await dte.at("AT+CSMS=1")
    await dte.at("AT+CNMI=2,2,0,1,0")
    result = await cp.sms.deliver(deliver("nobody acks"))  # the clock jumps through the wait
    assert not result.delivered and result.cause == "no +CNMA from the TE"
    assert (await dte.pending()).startswith("\r\n+CMT: ,")
    assert lines(await dte.at("AT+CNMI?")) == ["+CNMI: 2,0,0,0,0"]
    assert await dte.at("AT+CNMA") == "\r\n+CMS ERROR: 340\r\n"
    assert (await cp.sms.deliver(deliver("stored"))).delivered
    assert await dte.pending() == ""
    assert lines(await dte.at("AT+CPMS?"))[0].startswith('+CPMS: "SM",1,')
    assert cp.events(Kind.SMS_ACK)[-1]["reason"] == "timeout"


async def test_data_download_goes_to_the_card(cp: Cp) -> None:
    dte = cp.dte
    await dte.at("AT+CNMI=2,2,0,0,0")
    tpdu = SmsDeliver(
        Address("1234", TypeOfNumber.INTERNATIONAL),
        datetime(2026, 11, 30, tzinfo=UTC),
        pid=0x7F,
        dcs=0xF6,
        ud=bytes.fromhex("027000000F0D00000000000000000000000000"),
    ).encode()
    result = await cp.sms.deliver(tpdu)
    assert await dte.pending() == ""  # never shown to the TE, never stored
    envelopes = [e for e in cp.events(Kind.CAT_ENVELOPE) if e.get("envelope") == "sms_pp_download"]
    assert len(envelopes) == 1 and tpdu.hex().upper() in str(envelopes[0]["hex"])
    assert result.sw is not None
    assert cp.events(Kind.SMS_DELIVER)[-1]["route"] == "download"
    assert lines(await dte.at("AT+CPMS?"))[0].startswith('+CPMS: "SM",0,')


async def test_the_network_smsc_delivers_and_gets_the_por(nursery: trio.Nursery) -> None:
    """With the network model's own SMSC (net/smsc.py): the command set subscribes, an injected text is routed per
    +CNMI, an injected (U)SIM data download is answered with the card's PoR, which the SMSC records."""
    tracer = Tracer(keep=True)
    card, _ = simulated_card(None, None, tracer)
    network = CellularNetwork()
    smsc = network.smsc
    assert isinstance(smsc, NetworkSmsc)
    driver = CardDriver(card, tracer=tracer)
    await driver.start()
    core = ModemCommands(driver, network)
    core.command_sets = [SmsCommands(core, tracer, {})]
    assert smsc.subscribed
    a, b = trio.testing.memory_stream_pair()
    server = AtServer(b, tracer=tracer, echo=False)
    core.install(server)
    nursery.start_soon(server.run)
    nursery.start_soon(smsc.run)
    dte = Dte(a)
    await dte.at("AT+CNMI=2,1,0,0,0")
    (text,) = smsc.inject_mt(text="from the network", originator="+447700900777")
    await smsc.wait_settled([text.id])
    assert await dte.pending() == '\r\n+CMTI: "SM",1\r\n'
    assert text.state.value == "delivered"
    download = SmsDeliver(
        Address("1234", TypeOfNumber.INTERNATIONAL),
        datetime(2026, 11, 30, tzinfo=UTC),
        pid=0x7F,
        dcs=0xF6,
        ud=bytes.fromhex("027000000F0D00000000000000000000000000"),
    ).encode()
    (pushed,) = smsc.inject_mt(download)
    await smsc.wait_settled([pushed.id])
    envelopes = [e for e in tracer.events if e.kind == Kind.CAT_ENVELOPE]
    assert envelopes and download.hex().upper() in str(envelopes[-1].hex)
    responses = [e for e in tracer.events if e.kind == Kind.APDU_RESPONSE]
    assert pushed.sw is not None and f"{pushed.sw:04X}" == responses[-1].hex[-4:]  # the card's own answer
    assert await dte.pending() == ""  # the TE never sees a data download
    # MO through +CMGS reaches this SMSC, which logs it with the ME's TP-MR
    tpdu = submit("to the network")
    assert lines(await dte.entry(f"AT+CMGS={len(tpdu)}", pdu(tpdu))) == ["+CMGS: 1"]
    assert [m.submit.text for m in smsc.mo] == ["to the network"]


async def test_two_lines_writing_at_once_get_different_indexes(cp: Cp, nursery: trio.Nursery) -> None:
    """Two DLCs (two AT servers of one modem) store a message each on the card at the same time, while the network
    delivers one: three different indexes, none overwritten (each takes several APDUs, so they interleave)."""
    a, b = trio.testing.memory_stream_pair()
    second = AtServer(b, tracer=cp.tracer, echo=False)
    cp.core.install(second)
    nursery.start_soon(second.run)
    other = Dte(a)
    await other.at("AT+CMEE=1")
    tpdu = submit("concurrent")
    answers: list[str] = []

    async def write(dte: Dte) -> None:
        await dte.send(f"AT+CMGW={len(tpdu)}\r")
        await dte.until(r"\r\n> $")
        await dte.send(pdu(tpdu) + "\x1a")
        answers.extend(lines(await dte.until(FINAL)))

    async with trio.open_nursery() as inner:
        inner.start_soon(write, cp.dte)
        inner.start_soon(write, other)
        inner.start_soon(cp.sms.deliver, deliver("meanwhile"))
    assert len(answers) == 2 and len(set(answers)) == 2 and all(a.startswith("+CMGW: ") for a in answers)
    assert lines(await cp.dte.at("AT+CPMS?"))[0].startswith(
        '+CPMS: "SM",3,'
    )  # three messages, none overwritten
    cp.core.forget(second)
    assert second not in cp.sms.lines


def test_routing_rules_of_cnmi() -> None:
    """27.005 3.4.1 as pure rules: where an SMS-DELIVER goes per <mt> and class, what an indication does per
    <mode> and the line's state."""
    for mt in range(4):
        assert deliver_route(mt, 2) is Route.STORE_SM  # class 2 always on the (U)SIM
    for message_class in (None, 0, 1, 3):
        assert deliver_route(0, message_class) is Route.STORE_MEM3
        assert deliver_route(1, message_class) is Route.STORE_MEM3
        assert deliver_route(2, message_class) is Route.CMT
    assert deliver_route(3, 3) is Route.CMT
    assert [deliver_route(3, c) for c in (None, 0, 1)] == [Route.STORE_MEM3] * 3
    table = {
        (0, True, False): Indication.HOLD,
        (1, True, False): Indication.SEND,
        (1, True, True): Indication.DROP,
        (2, True, False): Indication.SEND,
        (2, True, True): Indication.HOLD,
        (3, True, True): Indication.SEND,
        (3, False, False): Indication.HOLD,  # no line to the TE: kept
    }
    for (mode, line_up, reserved), action in table.items():
        assert indication_action(mode, line_up=line_up, reserved=reserved) is action, (
            mode,
            line_up,
            reserved,
        )
    assert DELETED_BY_FLAG[1] == {Stat.REC_READ} and Stat.REC_UNREAD not in DELETED_BY_FLAG[3]
    assert DELETED_BY_FLAG[4] == set(Stat)


async def test_text_mode_in_the_ucs2_character_set(cp: Cp) -> None:
    """+CSCS="UCS2" (27.007 5.5): text mode shows and takes addresses and GSM 7-bit texts as UCS2 hex; odd or
    non-hex UCS2 is 305 and nothing is sent."""
    dte = cp.dte
    tpdu = bytes.fromhex(HOW_ARE_YOU)[8:]
    await dte.entry(f"AT+CMGW={len(tpdu)},1", HOW_ARE_YOU)
    await dte.at('AT+CSCS="UCS2"')
    await dte.at("AT+CMGF=1")

    def hexed(text: str) -> str:
        return ucs2_encode(text).hex().upper()

    assert lines(await dte.at("AT+CMGR=1")) == [
        f'+CMGR: "REC READ","{hexed("+31641600986")}",,"02/08/26,19:37:41+00"',
        hexed("How are you?"),
    ]
    assert lines(await dte.at("AT+CSCA?")) == [f'+CSCA: "{hexed("+15550000000")}",145']
    assert lines(await dte.entry(f'AT+CMGS="{hexed("+447700900456")}"', hexed("Grüße"))) == ["+CMGS: 1"]
    sent = decode_tpdu(cp.smsc.submitted[0][0])
    assert isinstance(sent, SmsSubmit) and sent.text == "Grüße" and str(sent.destination) == "+447700900456"
    for bad in ("004", "00G1", "0047007"):
        assert await dte.entry(f'AT+CMGS="{hexed("+447700900456")}"', bad) == "\r\n+CMS ERROR: 305\r\n", bad
    assert (
        await dte.at('AT+CMGS="+4477"') == "\r\n+CMS ERROR: 305\r\n"
    )  # not UCS2 hex: refused before the prompt
    assert len(cp.smsc.submitted) == 1
    assert cp.card_writes() == 1  # the +CMGW only


async def test_answers_are_one_write_and_quiet_keeps_the_text(cp: Cp, nursery: trio.Nursery) -> None:
    """An answer's information text and final result go out in one write (one CMUX frame); under ATQ1 the text
    still goes, the final result does not (V.250 6.2.5)."""
    writes: list[bytes] = []

    class Recording(trio.abc.Stream):
        def __init__(self, inner: trio.abc.Stream) -> None:
            self.inner = inner

        async def send_all(self, data: bytes | bytearray | memoryview) -> None:
            writes.append(bytes(data))
            await self.inner.send_all(data)

        async def wait_send_all_might_not_block(self) -> None:
            await self.inner.wait_send_all_might_not_block()

        async def receive_some(self, max_bytes: int | None = None) -> bytes:
            return bytes(await self.inner.receive_some(max_bytes))

        async def aclose(self) -> None:
            await self.inner.aclose()

    a, b = trio.testing.memory_stream_pair()
    server = AtServer(Recording(b), tracer=cp.tracer, echo=False)
    cp.core.install(server)
    nursery.start_soon(server.run)
    dte = Dte(a)
    assert await dte.at("AT+CMGF?;+CSDH?") == "\r\n+CMGF: 0\r\n\r\n+CSDH: 0\r\n\r\nOK\r\n"
    # the first command's line alone, the last one's with the OK
    assert writes == [b"\r\n+CMGF: 0\r\n", b"\r\n+CSDH: 0\r\n\r\nOK\r\n"]
    await dte.send("ATQ1\r")
    assert await dte.pending() == ""  # its own OK is a result code: not written
    await dte.send("AT+CMGF?\r")
    assert await dte.until(r"\+CMGF: 0\r\n$") == "\r\n+CMGF: 0\r\n"
    assert await dte.pending() == ""
    finals = [e for e in cp.tracer.events if e.kind == Kind.AT_FINAL]
    assert finals[-1].fields is not None and finals[-1].fields.get("quiet") is True


async def test_line_ending_inside_a_text_entry_sends_nothing(cp: Cp) -> None:
    tpdu = submit()
    await cp.dte.send(f"AT+CMGS={len(tpdu)}\r")
    await cp.dte.until(r"\r\n> $")
    await cp.dte.send(pdu(tpdu)[:10])
    await cp.dte.stream.aclose()  # the DTE goes away before Ctrl-Z
    await trio.testing.wait_all_tasks_blocked()
    assert cp.server.gone and cp.smsc.submitted == []
    assert cp.events(Kind.AT_TEXT)[-1]["cancelled"] is True


async def test_messages_on_the_card_persist_in_its_state_file(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A message stored in "SM" is in the card's EF_SMS: with --state it is there again for the next CP."""
    state = str(tmp_path / "card.json")

    async def modem() -> Dte:
        tracer = Tracer(keep=True)
        card, _ = simulated_card(None, state, tracer)
        network = CellularNetwork()
        core = ModemCommands(CardDriver(card, tracer=tracer), network)
        core.command_sets = [SmsCommands(core, tracer, {})]
        a, b = trio.testing.memory_stream_pair()
        server = AtServer(b, tracer=tracer, echo=False)
        core.install(server)
        nursery.start_soon(server.run)
        return Dte(a)

    first = await modem()
    tpdu = submit("kept on the card")
    assert lines(await first.entry(f"AT+CMGW={len(tpdu)}", pdu(tpdu))) == ["+CMGW: 1"]
    second = await modem()
    assert lines(await second.at("AT+CMGL=4")) == [f"+CMGL: 1,2,,{len(tpdu)}", pdu(tpdu)]
