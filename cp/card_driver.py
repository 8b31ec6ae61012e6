"""The terminal side of the card interface (ETSI TS 102 221 sections 7.3 and 14, TS 102 223 section 5): TERMINAL
PROFILE with the BIP capabilities, T=0 response handling (61 xx GET RESPONSE, 6C xx re-send with Le), the FETCH loop
driven by 91 xx, TERMINAL RESPONSE and ENVELOPE. It talks to any ApduTransport and records every exchange as two
trace events (docs/protocols.md, "Traces"): the command (kind apdu.command, or cat.terminal_profile, cat.fetch,
cat.terminal_response with its command and result, cat.envelope with its event, channel and link) and the response
(apdu.response with its status word, or cat.proactive with the fetched command's name, number and qualifier).

The card is the CP's peer, not part of it: an exception out of the card's transport (a reader gone, a simulated
card's applet failing) is answered as the card answering 6F 00, technical problem (TS 102 221 section 10.2.1.5),
with an app.error trace event, so that the CP and its other channels go on. The one exception is CardRemoved
(uicc/transport.py): a card or reader that is gone is not an answer, and it propagates to the caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from bipsim.cp.refresh import RefreshPlan, mode_name
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.cat import (
    Envelope,
    EnvelopeTag,
    Event,
    ProactiveCommand,
    TerminalResponse,
    channel_statuses,
    decode_proactive,
)
from bipsim.uicc.fs import USIM_AID
from bipsim.uicc.tlv import TlvError
from bipsim.uicc.transport import ApduTransport, CardRemoved


def terminal_profile(channels: int = 7) -> bytes:
    """TERMINAL PROFILE (TS 102 223 section 5.2) of a terminal with proactive UICC support and class "e" (BIP)."""
    profile = bytearray(20)

    def bit(byte: int, number: int) -> None:  # bytes and bits numbered from 1, as in the specification
        profile[byte - 1] |= 1 << (number - 1)

    for b in (1, 2, 5, 6, 7):  # byte 1: profile download, SMS-PP/CB data download, timer expiration...
        bit(1, b)
    for b in (1, 2, 3, 4):  # byte 2: command result, call control, ...
        bit(2, b)
    # the `bip-only` profile, byte for byte as recorded traces have it (uicc/terminal_profile.py); `--terminal-profile
    # modem` is the one that names exactly what the CP carries out
    bit(3, 1)  # DISPLAY TEXT
    bit(3, 6)  # POLL INTERVAL
    bit(3, 7)  # POLLING OFF
    bit(3, 8)  # REFRESH (cp/refresh.py)
    bit(4, 1)  # SELECT ITEM
    bit(4, 8)  # PROVIDE LOCAL INFORMATION (NMR)
    bit(5, 1)  # SET UP EVENT LIST
    bit(5, 5)  # event: location status
    bit(6, 3)  # event: data available
    bit(6, 4)  # event: channel status
    bit(8, 1)  # TIMER MANAGEMENT (start, stop)
    bit(8, 2)  # TIMER MANAGEMENT (get current value)
    bit(9, 1)  # DISPLAY TEXT (sustained)
    bit(12, 1)  # OPEN CHANNEL
    bit(12, 2)  # CLOSE CHANNEL
    bit(12, 3)  # RECEIVE DATA
    bit(12, 4)  # SEND DATA
    bit(12, 5)  # GET CHANNEL STATUS
    bit(13, 2)  # GPRS bearer
    profile[12] |= (min(channels, 7) & 0x07) << 5  # byte 13 bits 6-8: number of channels
    bit(17, 1)  # TCP, UICC in client mode, remote connection
    bit(17, 2)  # UDP, UICC in client mode, remote connection
    bit(17, 7)  # E-UTRAN
    return bytes(profile)


TERMINAL_PROFILE = terminal_profile()
# the NAA's files the CP reads at its initialisation and keeps (TS 31.102 5.1.1: EF_IMSI, EF_AD), read again on a
# REFRESH that initialises the NAA and dropped by a File Change Notification naming them (cp/refresh.py)
NAA_FILES: tuple[bytes, ...] = (b"\x6f\x07", b"\x6f\xad")
SW_TECHNICAL_PROBLEM = b"\x6f\x00"
# GET RESPONSE / re-send rounds one command may take: 64 rounds of 256 bytes is far beyond any TS 102 221 answer
MAX_T0_ROUNDS = 64
LINK_DROPPED = 0x05  # channel status further information (TS 102 223 section 8.56)


def _name(value: int, names: type[EnvelopeTag] | type[Event]) -> str:
    try:
        return names(value).name.lower()
    except ValueError:
        return f"0x{value:02x}"


def envelope_fields(envelope: Envelope) -> dict[str, Any]:
    """The trace fields of a cat.envelope event: envelope ("event_download", "sms_pp_download"...), and for an
    event download its event ("data_available", "channel_status"), channel and link."""
    fields: dict[str, Any] = {"envelope": _name(envelope.tag, EnvelopeTag)}
    event = envelope.event if envelope.tag == EnvelopeTag.EVENT_DOWNLOAD else None
    if event is None:
        return fields
    fields["event"] = _name(event, Event)
    statuses = channel_statuses(envelope)
    if statuses:
        status = statuses[0]
        fields["channel"] = int(status["channel_id"])
        if status["link_established"]:
            fields["link"] = "established"
        else:
            fields["link"] = "dropped" if status["further_info"] == LINK_DROPPED else "not_established"
    return fields


def command_fields(apdu: bytes) -> dict[str, Any]:
    """The fields of an apdu.command event: its class and instruction bytes, in hex."""
    return {"cla": f"{apdu[0]:02X}", "ins": f"{apdu[1]:02X}"} if len(apdu) >= 2 else {}


def sw_text(response: bytes) -> str:
    return response[-2:].hex().upper() if len(response) >= 2 else ""


def get_response_class(cla: int) -> int:
    """The class of GET RESPONSE after a command of class `cla` answered 61 xx: GET RESPONSE is an
    inter-industry command (TS 102 221 sections 10.1.1 and 11.1.13), so CLA 0x00 with the logical channel of the
    original command (b1-b2 for channels 0-3; b7 set and b1-b4 for the extended channels 4-19), whatever the
    original class was (0x80 for ENVELOPE/TERMINAL RESPONSE, 0xA0 for GSM 11.11 heritage)."""
    if cla & 0xF0 == 0xA0:  # GSM 11.11 class: GET RESPONSE stays in class A0
        return 0xA0
    if cla & 0x40:
        return 0x40 | (cla & 0x0F)
    return cla & 0x03


def with_le(apdu: bytes, le: int) -> bytes:
    """`apdu` again with Le = `le`, as after a 6C xx (ISO/IEC 7816-3 section 10.3.5): a case 1/2 command becomes
    its header and Le; a command with data (case 3/4) keeps its Lc and data and gets (or changes) its Le."""
    if len(apdu) > 5 and len(apdu) >= 5 + apdu[4]:
        return apdu[: 5 + apdu[4]] + bytes((le,))
    return apdu[:4] + bytes((le,))


class _CardLock:
    """A lock whose free acquire does not yield: every exchange under it awaits the transport's transmit, which is
    a checkpoint already, so one schedule point per APDU instead of two (trio.Lock.acquire yields even when the
    lock is free). A busy lock is waited for in order (a trio ParkingLot, FIFO): the holder's release hands the
    card to the first waiter. A flag and a parking lot, not a trio.Lock: the free acquire and the release were a
    task look-up and a deadlock-detection registration each, twice per APDU (docs/performance.md, "The card
    path"); a waiter cancelled while parked is simply gone from the lot."""

    def __init__(self) -> None:
        self._held = False
        self._waiters = trio.lowlevel.ParkingLot()

    async def __aenter__(self) -> None:
        if not self._held:
            self._held = True
            return
        await self._waiters.park()  # woken by __aexit__, which hands the lock over (it stays held)

    async def __aexit__(self, *exc: object) -> None:
        if self._waiters:
            self._waiters.unpark()
        else:
            self._held = False


_TYPE_NAMES: dict[int, str] = {}


def type_name(type_: int) -> str:
    """ProactiveCommand.type_name of a command type (TS 102 223 section 9.4), looked up once per type: the name is
    built from the enum at each call, and every FETCH and TERMINAL RESPONSE of a round names its command."""
    name = _TYPE_NAMES.get(type_)
    if name is None:
        name = _TYPE_NAMES[type_] = ProactiveCommand((), 1, type_).type_name
    return name


class CardError(Exception):
    """The card answered a driver command with an error status word."""

    def __init__(self, what: str, sw: int) -> None:
        super().__init__(f"{what}: card answered {sw:04X}")
        self.sw = sw


def fcp_records(fcp: bytes) -> tuple[int, int]:
    """(record length, record count) of a linear fixed or cyclic EF from its FCP template's '82' file descriptor
    (TS 102 221 section 11.1.1.4.3); (0, 0) for a transparent EF or a DF."""
    at = 2 if fcp[:1] == b"\x62" else 0
    while at + 2 <= len(fcp):
        tag, size = fcp[at], fcp[at + 1]
        value = fcp[at + 2 : at + 2 + size]
        if tag == 0x82 and len(value) >= 5:
            return int.from_bytes(value[2:4], "big"), value[4]
        at += 2 + size
    return 0, 0


def selected(sw: int) -> bool:
    """A SELECT that selected: normal ending (90 00, 91 xx) or a warning (62 xx, 63 xx: e.g. 62 83, the file is
    deactivated), as ISO/IEC 7816-4 section 5.6 counts them."""
    return sw == 0x9000 or sw >> 8 in (0x91, 0x62, 0x63)


class FileNotSelected(CardError):
    """A SELECT on the way to a file session's file failed: `sw` is that SELECT's status word (6A 82: no such
    file), `part` the FID or AID it was for."""

    def __init__(self, part: bytes, sw: int) -> None:
        super().__init__(f"SELECT {part.hex().upper()}", sw)
        self.part = part


@dataclass
class CardFile:
    """The file a file session selected (CardDriver.file_session): its FCP, and for a record EF its record length
    and count, parsed once. Every command goes to this file: the session holds the card's current file."""

    driver: CardDriver
    what: str
    fcp: bytes
    record_length: int
    record_count: int

    async def command(self, apdu: bytes, summary: str) -> tuple[bytes, int]:
        """Any command on the selected file (+CRSM's READ/UPDATE BINARY or RECORD, STATUS...)."""
        return await self.driver.transmit(apdu, summary)

    async def read_record(self, number: int) -> tuple[bytes, int]:
        """READ RECORD `number` in absolute mode (TS 102 221 section 11.1.5), the whole record."""
        return await self.command(
            bytes((0x00, 0xB2, number, 0x04, self.record_length & 0xFF)), f"{self.what} READ RECORD {number}"
        )

    async def update_record(self, number: int, data: bytes) -> int:
        """UPDATE RECORD `number` in absolute mode (TS 102 221 section 11.1.6); the status word."""
        _, sw = await self.command(
            bytes((0x00, 0xDC, number, 0x04, len(data))) + data, f"{self.what} UPDATE RECORD {number}"
        )
        return sw

    async def read_binary(self, offset: int = 0, length: int = 0) -> tuple[bytes, int]:
        """READ BINARY (TS 102 221 section 11.1.3) of `length` bytes (0: all, up to 256) from `offset`."""
        return await self.command(
            bytes((0x00, 0xB0, offset >> 8 & 0x7F, offset & 0xFF, length & 0xFF)), f"{self.what} READ BINARY"
        )


class CardDriver:
    """Drives one card: `proactive_pending` is the length from the last 91 xx (0 when none)."""

    def __init__(self, card: ApduTransport, *, tracer: Tracer = NULL_TRACER) -> None:
        self.card = card
        self.tracer = tracer
        self.proactive_pending = 0
        self.atr = b""
        # names the patent step a fetched command is (the BIP service sets it)
        self.fetch_labeler: Callable[[ProactiveCommand | None], str | None] = lambda command: None
        self._lock = _CardLock()  # the BIP service and AT commands (+CSIM, +CRSM, +CGLA) share one card
        # the basic channel's current file is one for all AT lines: a file session holds it from SELECT to the
        # last READ/UPDATE, so that another line's SELECT never lands in between (docs/protocols.md, "Phonebook")
        self._file_lock = trio.Lock()
        self.started = trio.Event()  # TERMINAL PROFILE went through: envelopes may be sent
        # what start() sends as TERMINAL PROFILE (`bipsim cp --terminal-profile`, uicc/terminal_profile.py)
        self.profile = TERMINAL_PROFILE
        # the NAA's files read at its initialisation (NAA_FILES, by file identifier): what a REFRESH renews
        self.naa_files: dict[bytes, bytes] = {}
        # told (with the reason) when a REFRESH resets the card: what lived on it, such as the host's +CCHO
        # sessions on its logical channels, ends with the reset
        self.reset_listeners: list[Callable[[str], None]] = []

    async def _exchange(self, apdu: bytes) -> bytes:
        """One APDU to the card; an exception out of the card is its 6F 00 (the CP goes on)."""
        try:
            return await self.card.transmit(apdu)
        except CardRemoved:
            raise  # not an answer: the card is gone, and its slot says so (cp/card_slot.py)
        except Exception as exc:
            self.tracer.emit(
                Actor.UICC,
                Actor.CP,
                Layer.APP,
                f"card failed on {apdu[:4].hex().upper()}: {exc!r}; answered as 6F00",
                error=True,
                kind=Kind.APP_ERROR,
                fields={"where": "card", "apdu": apdu[:4].hex().upper(), "error": repr(exc)},
            )
            return SW_TECHNICAL_PROBLEM

    def _response_event(self, summary: str, response: bytes) -> None:
        sw = sw_text(response)
        self.tracer.record(
            Actor.UICC,
            Actor.CP,
            Layer.APDU,
            f"{summary}: {sw}",
            response,
            kind=Kind.APDU_RESPONSE,
            fields={"sw": sw},
        )

    @asynccontextmanager
    async def file_session(self, path: Sequence[bytes], what: str) -> AsyncIterator[CardFile]:
        """`async with driver.file_session(path, what) as f:` SELECTs `path` on the basic channel, each part in
        turn (a two-byte FID by file id, a longer part as an application's AID by DF name, TS 102 221 section
        11.1.1), and holds the card's current file for this session alone until the block ends. FileNotSelected
        when a SELECT fails; CardRemoved when the card goes away."""
        async with self._file_lock:
            fcp = b""
            for part in path:
                if len(part) == 2:
                    apdu = b"\x00\xa4\x00\x04\x02" + part
                else:
                    apdu = b"\x00\xa4\x04\x04" + bytes((len(part),)) + part
                fcp, sw = await self.transmit(apdu, f"{what} SELECT {part.hex().upper()}")
                if not selected(sw):
                    raise FileNotSelected(part, sw)
            length, count = fcp_records(fcp)
            yield CardFile(self, what, fcp, length, count)

    async def raw(self, apdu: bytes, summary: str) -> bytes:
        """One APDU exactly as given (no T=0 handling), recorded: for +CSIM and +CGLA."""
        async with self._lock:
            self.tracer.emit(
                Actor.CP,
                Actor.UICC,
                Layer.APDU,
                summary,
                apdu,
                kind=Kind.APDU_COMMAND,
                fields=command_fields(apdu),
            )
            response = await self._exchange(apdu)
            self._response_event(summary, response)
        if len(response) >= 2:
            self._note(int.from_bytes(response[-2:], "big"))
        return response

    async def transmit(
        self,
        apdu: bytes,
        summary: str,
        *,
        step: str | None = None,
        kind: Kind = Kind.APDU_COMMAND,
        fields: dict[str, Any] | None = None,
    ) -> tuple[bytes, int]:
        """One command with T=0 response handling; returns (response data, final SW). Records both directions.
        The command and its GET RESPONSE go as one under the card lock: an AT command's ENVELOPE (AT%SMSPP) never
        lands between the BIP service's 61 xx and the GET RESPONSE that fetches it."""
        async with self._lock:
            return await self._transmit(apdu, summary, step=step, kind=kind, fields=fields)

    async def _transmit(
        self,
        apdu: bytes,
        summary: str,
        *,
        step: str | None = None,
        kind: Kind = Kind.APDU_COMMAND,
        fields: dict[str, Any] | None = None,
        rounds: int = 0,
    ) -> tuple[bytes, int]:
        if fields is None and kind is Kind.APDU_COMMAND:
            fields = command_fields(apdu)
        self.tracer.record(
            Actor.CP, Actor.UICC, Layer.APDU, summary, apdu, step=step, kind=kind, fields=fields
        )
        response = await self._exchange(apdu)
        self._response_event(summary, response)
        data, sw = response[:-2], int.from_bytes(response[-2:], "big") if len(response) >= 2 else 0x6F00
        if sw >> 8 in (0x6C, 0x61) and rounds >= MAX_T0_ROUNDS:
            sw = self._endless(apdu, sw)
        if sw >> 8 == 0x6C:  # wrong Le: the card tells the right one
            return await self._transmit(
                with_le(apdu, sw & 0xFF), summary, kind=kind, fields=fields, rounds=rounds + 1
            )
        if sw >> 8 == 0x61:  # response data waiting
            get = bytes((get_response_class(apdu[0]), 0xC0, 0, 0, sw & 0xFF))
            more, sw = await self._transmit(get, "GET RESPONSE", rounds=rounds + 1)
            data += more
        self._note(sw)
        return data, sw

    def _endless(self, apdu: bytes, sw: int) -> int:
        """A card still asking for another GET RESPONSE or re-send after MAX_T0_ROUNDS answers garbage: the
        command ends as its technical problem (6F 00) instead of looping for ever."""
        self.tracer.emit(
            Actor.UICC,
            Actor.CP,
            Layer.APP,
            f"card answered {sw:04X} {MAX_T0_ROUNDS} times in a row on {apdu[:4].hex().upper()}; taken as 6F00",
            error=True,
            kind=Kind.APP_ERROR,
            fields={"where": "card", "apdu": apdu[:4].hex().upper(), "error": f"endless {sw:04X}"},
        )
        return 0x6F00

    def card_gone(self) -> None:
        """The card went away (CardRemoved): what the driver knew of it is void until the next start()."""
        self.proactive_pending = 0
        self.atr = b""
        self.naa_files.clear()
        if self.started.is_set():
            self.started = trio.Event()

    def _note(self, sw: int) -> None:
        if sw >> 8 == 0x91:
            self.proactive_pending = sw & 0xFF or 256
        elif sw == 0x9000:
            self.proactive_pending = 0

    async def start(self) -> None:
        """Powers the card on and sends TERMINAL PROFILE."""
        self.atr = await self.card.power_on()
        self.tracer.emit(
            Actor.UICC,
            Actor.CP,
            Layer.APDU,
            "ATR",
            self.atr,
            kind=Kind.APDU_ATR,
            fields={"length": len(self.atr)},
        )
        sw = await self.send_profile(self.profile)
        if sw not in (0x9000,) and sw >> 8 != 0x91:
            raise CardError("TERMINAL PROFILE", sw)
        self.started.set()

    async def naa_init(self) -> None:
        """Reads the NAA's files (NAA_FILES under ADF USIM) as the terminal's initialisation does (TS 31.102 5.1.1),
        keeping what the card answered; a file the card does not have is left out."""
        self.naa_files.clear()
        for fid in NAA_FILES:
            try:
                async with self.file_session((USIM_AID, fid), f"NAA init {fid.hex().upper()}") as ef:
                    data, sw = await ef.read_binary()
            except FileNotSelected:
                continue
            if sw == 0x9000 or sw >> 8 == 0x91:
                self.naa_files[fid] = data

    async def refresh(self, plan: RefreshPlan) -> TerminalResponse | None:
        """Carries out a proactive REFRESH (TS 102 223 section 6.4.7, cp/refresh.py): a reset mode starts the card
        again as after power-on (ATR, TERMINAL PROFILE) and reads the NAA's files, an NAA initialisation reads them
        again, a File Change Notification drops the listed ones (all when none is listed). Returns the TR to send
        (None after a reset); each refresh is an app.event `refresh`, a refused one with error set."""
        mode = mode_name(plan.mode)
        fields: dict[str, Any] = {
            "event": "refresh",
            "mode": mode,
            "files": [f.hex().upper() for f in plan.files],
        }
        if plan.answer is not None:
            fields["result"] = int(plan.answer.result[0])
            fields["error"] = plan.error
            self.tracer.emit(
                Actor.CP,
                Actor.UICC,
                Layer.APP,
                f"REFRESH ({mode}) refused: {plan.error}",
                error=True,
                kind=Kind.APP_EVENT,
                fields=fields,
            )
            return plan.answer
        if plan.reset:
            for listener in list(self.reset_listeners):
                listener(f"card reset by REFRESH ({mode})")
            await self.start()
        if plan.naa_init:
            await self.naa_init()
        else:
            listed = {path[-2:] for path in plan.files}
            for fid in list(self.naa_files):
                if not listed or fid in listed:
                    del self.naa_files[fid]
        fields["reset"] = plan.reset
        fields["naa_files"] = sorted(fid.hex().upper() for fid in self.naa_files)
        self.tracer.emit(
            Actor.CP, Actor.UICC, Layer.APP, f"REFRESH ({mode}) performed", kind=Kind.APP_EVENT, fields=fields
        )
        return plan.response()

    async def send_profile(self, profile: bytes) -> int:
        """TERMINAL PROFILE with `profile` (at start, and again when a host's +CUSATA asks for a profile download,
        3GPP TS 31.111 section 5.1); returns the status word."""
        _, sw = await self.transmit(
            b"\x80\x10\x00\x00" + bytes((len(profile),)) + profile,
            "TERMINAL PROFILE",
            kind=Kind.CAT_TERMINAL_PROFILE,
        )
        return sw

    async def poll(self) -> None:
        """STATUS, as a terminal does at the poll interval: a card with a command to send answers 91 xx."""
        await self.transmit(b"\x80\xf2\x00\x0c\x00", "STATUS")

    async def fetch(self) -> tuple[ProactiveCommand | None, bytes]:
        """FETCHes the pending proactive command; returns (decoded or None when malformed, raw bytes)."""
        if not self.proactive_pending:
            return None, b""
        length = self.proactive_pending & 0xFF
        async with self._lock:
            apdu = bytes((0x80, 0x12, 0, 0, length))
            self.tracer.record(
                Actor.CP,
                Actor.UICC,
                Layer.APDU,
                "FETCH",
                apdu,
                kind=Kind.CAT_FETCH,
                fields={"length": length},
            )
            response = await self._exchange(apdu)
            data, sw = response[:-2], int.from_bytes(response[-2:], "big") if len(response) >= 2 else 0x6F00
            try:
                command: ProactiveCommand | None = decode_proactive(data) if data else None
            except TlvError:
                command = None
            if command is not None:
                name = type_name(command.type)
                self.tracer.record(
                    Actor.UICC,
                    Actor.CP,
                    Layer.APDU,
                    f"FETCH: {name}",
                    response,
                    step=self.fetch_labeler(command),
                    kind=Kind.CAT_PROACTIVE,
                    fields={
                        "command": name,
                        "number": command.number,
                        "qualifier": command.qualifier,
                        "sw": sw_text(response),
                    },
                )
            else:
                self.tracer.record(
                    Actor.UICC,
                    Actor.CP,
                    Layer.APDU,
                    "FETCH: (malformed)" if data else f"FETCH: {sw_text(response)}",
                    response,
                    error=True,
                    kind=Kind.APDU_RESPONSE,
                    fields={"sw": sw_text(response)},
                )
        if sw != 0x9000 and sw >> 8 != 0x91:
            raise CardError("FETCH", sw)
        self._note(sw)
        return command, data

    async def terminal_response(self, response: TerminalResponse, *, step: str | None = None) -> int:
        body = response.encode()
        general, _ = response.result
        name = type_name(response.type)
        summary = f"TERMINAL RESPONSE: {name} (result 0x{general:02X})"
        _, sw = await self.transmit(
            bytes((0x80, 0x14, 0, 0, len(body))) + body,  # one copy of the data, not two
            summary,
            step=step,
            kind=Kind.CAT_TERMINAL_RESPONSE,
            fields={"command": name, "result": int(general)},
        )
        return sw

    async def envelope(
        self, envelope: Envelope, summary: str, *, step: str | None = None
    ) -> tuple[bytes, int]:
        body = envelope.encode()
        return await self.transmit(
            bytes((0x80, 0xC2, 0, 0, len(body))) + body,
            summary,
            step=step,
            kind=Kind.CAT_ENVELOPE,
            fields=envelope_fields(envelope),
        )
