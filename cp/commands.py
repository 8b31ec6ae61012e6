"""The CP's 3GPP TS 27.007 command set, answered from the card (through the card driver) and the network model.

Identification (+CGMI/+CGMM/+CGMR/+CGSN and their V.25ter +GMx twins, I), +CIMI read from EF_IMSI, +CPIN, +CFUN,
+CSQ, registration (+CREG/+CGREG/+CEREG with URCs), +COPS, packet data (+CGDCONT, +CGACT), +CSCS, +CMUX, card access
(+CSIM, +CRSM, +CCHO/+CCHC/+CGLA on logical channels). Anything else: ERROR (the server's default).

Vendor extension (docs/protocols.md, "Vendor extension on DLC 1"): AT%SMSPP="<hex TPDU>" makes the
simulated network deliver an SMS-DELIVER to the CP; a (U)SIM data download (PID 7F, class 2) goes to the card as ENVELOPE (SMS-PP DOWNLOAD,
TS 31.111 7.1.1) and the answer is the card's response data, the PoR (TS 31.115 4.4), as %SMSPP: "<hex>" (empty
when the card answered 90 00 without data). Not a data download: +CME ERROR: 50; the card refused the envelope
(a status word other than 90 00 / 91 xx, e.g. 93 00 toolkit busy): +CME ERROR: 13; the card not started yet
(no TERMINAL PROFILE): +CME ERROR: 14 (SIM busy, try again). AT%SMSPP=? lists the form.

Card slots (docs/protocols.md, "Card slots and card presence on DLC 1"): 27.007 has no command to choose a card, so
the private `%` dialect does: AT%SLOT=<n> chooses the slot this line's SIM commands (+CSIM, +CRSM, +CCHO, +CPIN,
+CIMI) address, AT%SLOTS? says which slots hold a card, AT%SLOTEV=1 makes a line hear `%SLOTEV: <slot>,"<event>"`
when a card is inserted or removed or another line wrote its phonebook or messages. A +CGLA or +CCHC goes to the slot its session was opened
on, whatever %SLOT says now; session ids are unique across slots and never reused. A slot without a card answers
its SIM commands +CME ERROR: 10 (SIM not inserted, 27.007 section 9.2.1); a card that goes away invalidates its
sessions (+CGLA on one: +CME ERROR: 10 while the slot is empty, 21 invalid index once a card is back).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

from bipsim import __version__
from bipsim.cp.card_driver import CardDriver, FileNotSelected
from bipsim.cp.card_slot import CardSlot, Change
from bipsim.cp.command_sets import CommandSet
from bipsim.cp.network import (
    CellularNetwork,
    PdpContext,
    PdpError,
    RegStatus,
    SmCause,
    SmsError,
    address_value,
    check_data_download,
)
from bipsim.link.at_server import AtCommandError, AtServer, CmeError
from bipsim.link.at_syntax import AtArg, AtRequest, CommandKind
from bipsim.link.cmux import CmuxParams
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.uicc.card import on_channel
from bipsim.uicc.cat import DeviceId, Envelope, EnvelopeTag, Tag, obj
from bipsim.uicc.fs import USIM_AID
from bipsim.uicc.gsm_text import te_decode, te_encode
from bipsim.uicc.transport import CardRemoved

MANUFACTURER = "bipsim"
MODEL = "bipsim CP (dual-processor modem simulator)"
IMEI = "490154203237518"
SVN = "01"  # software version number: IMEISV = the IMEI's 14 digits without its check digit, then the SVN
LAC_TAC = "0001"
CELL_ID = "00000A1B"

CME_SIM_NOT_INSERTED = 10
# the commands that write a card's phonebook or message files: their success is a %SLOTEV "changed" to the other lines
CARD_WRITES = ("+CPBW", "+CRSM", "+CMGW", "+CMGD")
CME_SIM_FAILURE = 13
CME_MEMORY_FULL = (
    20  # +CCHO when the card has no logical channel left (MANAGE CHANNEL 68 81): see _OPEN_ERRORS
)
CME_INVALID_INDEX = 21
CME_NOT_FOUND = 22
CME_SIM_BUSY = 14
CME_NOT_ALLOWED = 3
CME_NOT_SUPPORTED = 4
CME_BAD_PARAMETERS = 50
CME_NO_SERVICE = 30
CME_INVALID_TEXT = 25  # invalid characters in text string (27.007 9.2.1): not valid in the +CSCS set
# +CSCS sets (27.007 5.5) whose conversions uicc/gsm_text.py does
CHARSETS = ("IRA", "GSM", "UCS2", "HEX", "8859-1")
# +CGEREP buffer of events held for the TE (27.007 10.1.19 <mode> 0): the oldest are dropped past this
CGEV_BUFFER = 64
# an APN's characters (TS 23.003 9.1: labels of letters, digits and hyphens, dot-separated)
APN_MAX_OCTETS = 100
APN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")
# 27.007 section 9.2.2 GPRS-related errors for PDP activation refusals
PDP_CME = {SmCause.MISSING_OR_UNKNOWN_APN: 533, SmCause.USER_AUTHENTICATION_FAILED: 149}
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
# a short command APDU (TS 102 221 section 10.1, T=0): CLA INS P1 P2, Lc, up to 255 data bytes, Le
MAX_APDU = 4 + 1 + 255 + 1
# +CRSM <command> (27.007 section 8.18) -> INS; RETRIEVE DATA (203) and SET DATA (219) are not simulated
CRSM_INS = {176: 0xB0, 178: 0xB2, 192: 0xC0, 214: 0xD6, 220: 0xDC, 242: 0xF2}
CRSM_UNSUPPORTED = (203, 219)
# MANAGE CHANNEL open refused (TS 102 221 section 11.1.17) -> +CME ERROR. 27.007 has no "no more channels": 68 81
# (logical channel not supported: the card's channels are all in use) is 20, memory full, the nearest 27.007
# meaning and the one a TE can tell from "not found" and "not allowed"; a card without MANAGE CHANNEL is 4.
_OPEN_ERRORS = {0x6881: CME_MEMORY_FULL, 0x6D00: CME_NOT_SUPPORTED, 0x6E00: CME_NOT_SUPPORTED}
# SELECT by DF name on the new channel refused (TS 102 221 section 10.2.1) -> +CME ERROR, after the channel is closed
# again: not found (6A 82, and 6A 81 function not supported), not allowed (security, conditions of use), else SIM
# failure
_SELECT_ERRORS = {
    0x6A82: CME_NOT_FOUND,
    0x6A81: CME_NOT_FOUND,
    0x6982: CME_NOT_ALLOWED,
    0x6985: CME_NOT_ALLOWED,
    0x6999: CME_NOT_ALLOWED,
}


def _int(args: tuple[AtArg, ...], index: int, default: int | None = None) -> int:
    value = args[index] if index < len(args) else None
    if value is None:
        if default is None:
            raise CmeError(CME_BAD_PARAMETERS)
        return default
    if not isinstance(value, int):
        raise CmeError(CME_BAD_PARAMETERS)
    return value


def _ranged(args: tuple[AtArg, ...], index: int, low: int, high: int, default: int | None = None) -> int:
    """A numeric parameter within low..high, else +CME ERROR: 50."""
    value = _int(args, index, default)
    if not low <= value <= high:
        raise CmeError(CME_BAD_PARAMETERS)
    return value


def _hex(args: tuple[AtArg, ...], index: int, *, required: bool = True, max_bytes: int = 255) -> bytes:
    """A hexadecimal string parameter (27.007 card access): even length, at most max_bytes, else
    +CME ERROR: 50. An absent optional one is b""."""
    value = args[index] if index < len(args) else None
    if value is None:
        if required:
            raise CmeError(CME_BAD_PARAMETERS)
        return b""
    text = str(value)  # an unquoted all-digit string arrives as an int
    if len(text) % 2 or len(text) > 2 * max_bytes or not all(c in HEX_DIGITS for c in text):
        raise CmeError(CME_BAD_PARAMETERS)
    return bytes.fromhex(text)


def _at_most(args: tuple[AtArg, ...], count: int) -> None:
    if len(args) > count:
        raise CmeError(CME_BAD_PARAMETERS)


def _str(args: tuple[AtArg, ...], index: int, default: str | None = None) -> str:
    value = args[index] if index < len(args) else None
    if value is None:
        if default is None:
            raise CmeError(CME_BAD_PARAMETERS)
        return default
    return str(value)


def crsm_path(fid: int, pathid: bytes) -> list[bytes]:
    """What +CRSM selects for <fileid> under <pathid> (27.007 8.18): <pathid> is the path from the MF (TS 102 221
    8.4.2, "7F105F3A"; a leading 3F00 is allowed, 7FFF stands for the USIM's ADF), so the MF, the path's DFs, then
    the file. Without <pathid> a 6Fxx file is the USIM's (ADF USIM, then the file) and any other file id is
    selected as it is; <fileid> 0 (STATUS) selects nothing."""
    if not fid:
        return []
    if pathid:
        parts = [pathid[at : at + 2] for at in range(0, len(pathid), 2)]
        if parts[0] == b"\x3f\x00":
            parts = parts[1:]
        return [
            b"\x3f\x00",
            *(USIM_AID if part == b"\x7f\xff" else part for part in parts),
            fid.to_bytes(2, "big"),
        ]
    if fid >> 8 == 0x6F:
        return [USIM_AID, fid.to_bytes(2, "big")]
    return [fid.to_bytes(2, "big")]


def _selected(sw: int) -> bool:
    """A SELECT that selected: normal ending (90 00, 91 xx) or a warning (62 xx, 63 xx: e.g. 62 83, the file is
    deactivated), as ISO/IEC 7816-4 section 5.6 counts them."""
    return _normal(sw) or sw >> 8 in (0x62, 0x63)


def _normal(sw: int) -> bool:
    """90 00, or 91 xx: normal ending with a proactive command pending (TS 102 221 10.2.1.1), which the card answers
    while the BIP service has not fetched yet (e.g. +CIMI right after TERMINAL PROFILE)."""
    return sw == 0x9000 or sw >> 8 == 0x91


def decode_imsi(data: bytes) -> str:
    """EF_IMSI (TS 31.102 section 4.2.2) to digits."""
    if len(data) < 2:
        raise ValueError("EF_IMSI too short")
    length = data[0]
    nibbles = []
    for byte in data[1 : 1 + length]:
        nibbles += [byte & 0x0F, byte >> 4]
    digits = "".join(str(n) for n in nibbles[1:] if n <= 9)
    return digits


class ModemCommands:
    """Registers the 27.007 handlers on AT servers; state (registration URC modes, contexts) is per modem."""

    def __init__(
        self,
        driver: CardDriver,
        network: CellularNetwork,
        on_cmux: Callable[[CmuxParams], None] | None = None,
        *,
        slots: Sequence[CardSlot] = (),
    ) -> None:
        """`driver` is slot 1's (the card that does the toolkit); `slots` all slots, numbered from 1, when the
        modem has them (cp/card_slot.py), else slot 1 is made around `driver`."""
        self.driver = driver
        self.slots: dict[int, CardSlot] = {slot.number: slot for slot in slots} or {
            1: CardSlot(1, driver.card, tracer=driver.tracer, driver=driver)
        }
        for slot in self.slots.values():
            slot.listeners.append(self._listener(slot))
            slot.driver.reset_listeners.append(self._reset_listener(slot))
            slot.change_listeners.append(self._slot_event_listener(slot))
        self.network = network
        self.on_cmux = on_cmux
        self.functionality = 1
        self.charset = "IRA"
        self.cops_format = 2  # +COPS=3,<format>: 0 long alphanumeric, 1 short alphanumeric, 2 numeric
        # +COPS <mode> (27.007 7.3): 0 automatic, 1 manual, 2 deregistered, 4 manual/automatic
        self.cops_mode = 0
        self.reg_modes = {"+CREG": 0, "+CGREG": 0, "+CEREG": 0}
        self.definitions: dict[int, tuple[str, str]] = {}
        # +CGAUTH (27.007 10.1.31): <cid> -> (<auth_prot>, <userid>, <password>)
        self.authentications: dict[int, tuple[int, str, str]] = {}
        # +CGEREP (27.007 10.1.19) per line: (<mode>, <bfr>) and the events buffered for it
        self.event_modes: dict[AtServer, tuple[int, int]] = {}
        self.event_buffers: dict[AtServer, list[str]] = {}
        self._te_deactivating = False  # a +CGACT=0 / +CGDCONT=<cid> of the TE's: no +CGEV for what it asked
        # +CEER (27.007 6.10): why the last call or context activation failed or ended, as text
        self.last_cause = "No cause information available"
        self.sessions: dict[int, tuple[int, int]] = {}  # +CCHO session id -> (slot, logical channel)
        self._stale: dict[int, int] = {}  # session id -> slot, of sessions whose card went away
        self._last_session = 0  # ids are never reused: a stale id held by the TE must not reach a new session
        self._slot_of: dict[AtServer, int] = {}  # AT%SLOT of each line (DLC), 1 until it says otherwise
        self._slot_events: dict[AtServer, int] = {}  # AT%SLOTEV of each line: 1 sends the %SLOTEV URCs
        self._servers: list[AtServer] = []
        # cp/command_sets.py: installed on each server after the core
        self.command_sets: list[CommandSet] = []
        network.listeners.append(self._registration_changed)
        network.deactivation_listeners.append(self._context_ended)
        network.attach_listeners.append(self._attach_changed)
        self._was_attached = network.attached

    def install(self, server: AtServer, *, allow_cmux: bool = True) -> None:
        self._servers.append(server)
        table: dict[str, Callable[[AtRequest], object]] = {
            "I": self.ati,
            "+CGMI": self.cgmi,
            "+GMI": self.cgmi,
            "+CGMM": self.cgmm,
            "+GMM": self.cgmm,
            "+CGMR": self.cgmr,
            "+GMR": self.cgmr,
            "+CGSN": self.cgsn,
            "+GSN": self.cgsn,
            "+CFUN": self.cfun,
            "+CSQ": self.csq,
            "+CREG": self.creg,
            "+CGREG": self.creg,
            "+CEREG": self.creg,
            "+COPS": self.cops,
            "+CGDCONT": self.cgdcont,
            "+CGACT": self.cgact,
            "+CGATT": self.cgatt,
            "+CGAUTH": self.cgauth,
            "+CSCS": self.cscs,
            "+CCHC": self.cchc,
            "+CGLA": self.cgla,
            "%SMSPP": self.smspp,
            "%SLOTS": self.slots_present,
        }
        for name, handler in table.items():
            server.register(name, handler)  # type: ignore[arg-type]
        # the SIM commands address the slot this line chose (AT%SLOT), and answer 10 while it is empty
        on_slot: dict[str, Callable[[AtRequest, CardSlot], Awaitable[list[str] | None]]] = {
            "+CIMI": self.cimi,
            "+CPIN": self.cpin,
            "+CSIM": self.csim,
            "+CRSM": self.crsm,
            "+CCHO": self.ccho,
        }
        for name, slot_handler in on_slot.items():
            server.register(name, self._on_line_slot(server, slot_handler))

        async def choose_slot(request: AtRequest) -> list[str] | None:
            return await self.slot(request, server)

        server.register("%SLOT", choose_slot)
        self._slot_of[server] = 1
        server.reset_hooks.append(lambda: self._slot_of.__setitem__(server, 1))

        async def cmux(request: AtRequest) -> list[str] | None:
            return await self.cmux(request, server, allow_cmux)

        server.register("+CMUX", cmux)

        async def cgerep(request: AtRequest) -> list[str] | None:
            return await self.cgerep(request, server)

        server.register("+CGEREP", cgerep)
        server.reset_hooks.append(self._factory_defaults)
        for command_set in self.command_sets:
            command_set.install(server)

        async def slot_events(request: AtRequest) -> list[str] | None:
            return await self.slotev(request, server)

        server.register("%SLOTEV", slot_events)
        self._slot_events[server] = 0
        server.reset_hooks.append(lambda: self._slot_events.__setitem__(server, 0))
        for name in CARD_WRITES:
            writer = server.handlers.get(name)
            if writer is not None:
                server.register(name, self._told_of_writes(server, name, writer))

    def _factory_defaults(self) -> None:
        """Z / &F: the TE character set and the operator format return to their defaults."""
        self.charset = "IRA"
        self.cops_format = 2

    def forget(self, server: AtServer) -> None:
        if server in self._servers:
            self._servers.remove(server)
        self._slot_of.pop(server, None)
        self._slot_events.pop(server, None)
        self.event_modes.pop(server, None)
        self.event_buffers.pop(server, None)
        for command_set in self.command_sets:
            command_set.forget(server)

    # --- card slots -------------------------------------------------------------------------------------------------

    def _on_line_slot(
        self, server: AtServer, handler: Callable[[AtRequest, CardSlot], Awaitable[list[str] | None]]
    ) -> Callable[[AtRequest], Awaitable[list[str] | None]]:
        async def call(request: AtRequest) -> list[str] | None:
            slot = self.slots[self._slot_of.get(server, 1)]
            if request.kind is CommandKind.TEST:
                return await handler(request, slot)  # the forms a command takes need no card
            return await self._with_card(slot, lambda: handler(request, slot))

        return call

    async def _with_card(
        self, slot: CardSlot, answer: Callable[[], Awaitable[list[str] | None]]
    ) -> list[str] | None:
        """Runs a SIM command on `slot`: +CME ERROR: 10 when it is empty, or when the card goes away meanwhile."""
        if slot.absent:
            raise CmeError(CME_SIM_NOT_INSERTED)
        try:
            return await answer()
        except CardRemoved as exc:
            slot.gone(exc)  # a driver around a bare transport (tests) learns it here; a slot's own is a no-op
            raise CmeError(CME_SIM_NOT_INSERTED) from exc

    def _listener(self, slot: CardSlot) -> Callable[[CardRemoved], None]:
        return lambda exc: self._sessions_void(slot, exc.reason)

    def _reset_listener(self, slot: CardSlot) -> Callable[[str], None]:
        return lambda reason: self._sessions_void(slot, reason)

    def _sessions_void(self, slot: CardSlot, reason: str) -> None:
        """The card of `slot` went away or was reset (a REFRESH): its +CCHO sessions are void (their logical
        channels went with it; TS 102 221 section 11.1.17: a reset closes every channel but the basic one)."""
        gone = sorted(session for session, (number, _) in self.sessions.items() if number == slot.number)
        for session in gone:
            del self.sessions[session]
            self._stale[session] = slot.number
        if gone:
            slot.tracer.emit(
                Actor.CP,
                Actor.AP,
                Layer.APP,
                f"slot {slot.number}: sessions {gone} invalidated ({reason})",
                error=True,
                kind=Kind.APP_EVENT,
                fields={"event": "sessions_invalidated", "slot": slot.number, "sessions": gone},
            )

    async def slot(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """AT%SLOT=<n> / ? / =? (docs/protocols.md): the slot this line's SIM commands address."""
        if request.kind is CommandKind.TEST:
            return [f"%SLOT: ({','.join(str(n) for n in sorted(self.slots))})"]
        if request.kind is CommandKind.READ:
            return [f"%SLOT: {self._slot_of.get(server, 1)}"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        _at_most(request.args, 1)
        number = _int(request.args, 0)
        if number not in self.slots:
            raise CmeError(CME_BAD_PARAMETERS)
        self._slot_of[server] = number
        return None

    async def slots_present(self, request: AtRequest) -> list[str] | None:
        """AT%SLOTS? (docs/protocols.md): each slot and whether it holds a card, `%SLOTS: 1,1,2,0`."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is not CommandKind.READ:
            raise AtCommandError()
        pairs = (f"{number},{0 if slot.absent else 1}" for number, slot in sorted(self.slots.items()))
        return [f"%SLOTS: {','.join(pairs)}"]

    async def slotev(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """AT%SLOTEV=<0|1> / ? / =? (docs/protocols.md): whether this line gets the %SLOTEV URCs."""
        if request.kind is CommandKind.TEST:
            return ["%SLOTEV: (0,1)"]
        if request.kind is CommandKind.READ:
            return [f"%SLOTEV: {self._slot_events.get(server, 0)}"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        _at_most(request.args, 1)
        mode = _int(request.args, 0)
        if mode not in (0, 1):
            raise CmeError(CME_BAD_PARAMETERS)
        self._slot_events[server] = mode
        return None

    def _slot_urc(self, number: int, event: str, origin: AtServer | None = None) -> None:
        """`%SLOTEV: <slot>,"<event>"` to every line that asked for it but `origin`, the line whose own command
        changed the card (it knows)."""
        urc = f'%SLOTEV: {number},"{event}"'
        for server in list(self._servers):
            if server is origin or not self._slot_events.get(server):
                continue
            try:
                trio.lowlevel.spawn_system_task(server.send_urc, urc)
            except RuntimeError:
                pass

    def _slot_event_listener(self, slot: CardSlot) -> Callable[[Change], None]:
        def changed(change: Change) -> None:
            if change is not Change.NONE:
                self._slot_urc(slot.number, "removed" if change is Change.REMOVED else "inserted")

        return changed

    def _told_of_writes(
        self, server: AtServer, name: str, handler: Callable[[AtRequest], Awaitable[list[str] | None]]
    ) -> Callable[[AtRequest], Awaitable[list[str] | None]]:
        """`handler` of a command that can write the card's phonebook or messages: when it did (the command
        answered OK; +CRSM's UPDATE answered 90 00 or 91 xx), the other lines hear `%SLOTEV: <slot>,"changed"`."""

        async def call(request: AtRequest) -> list[str] | None:
            # 27.005's message storage is slot 1's card (docs/protocols.md); the phonebook and +CRSM the line's
            number = 1 if name in ("+CMGW", "+CMGD") else self._slot_of.get(server, 1)
            lines = await handler(request)
            if request.kind is not CommandKind.SET:
                return lines
            if name == "+CRSM":
                command = request.args[0] if request.args else None
                sw1 = next((line.split(":")[1].split(",")[0].strip() for line in lines or []), "")
                if command not in (214, 220) or sw1 not in ("144", "145"):
                    return lines
            self._slot_urc(number, "changed", origin=server)
            return lines

        return call

    def _location(self) -> str:
        """<lac>/<tac>,<ci>,<AcT> of the serving cell (27.007 section 7.2, 10.1.19, 10.1.22)."""
        return f'"{LAC_TAC}","{CELL_ID}",{self.network.config.rat}'

    def _registration_changed(self, status: RegStatus) -> None:
        if self._was_attached and not self.network.attached and self.network.ps_attach:
            # +CFUN=0/4, +COPS=2: the ME left the network, the packet domain too
            self._event("+CGEV: ME DETACH")
        self._was_attached = self.network.attached
        # n=1: +CREG: <stat>; n=2: with the cell's location while registered (27.007 section 7.2)
        registered = status in (RegStatus.HOME, RegStatus.ROAMING)
        for server in list(self._servers):
            for name, mode in self.reg_modes.items():
                if not mode:
                    continue
                urc = f"{name}: {status.value}" + (f",{self._location()}" if mode == 2 and registered else "")
                try:
                    trio.lowlevel.spawn_system_task(server.send_urc, urc)
                except RuntimeError:
                    pass

    # --- identification ----------------------------------------------------------------------------------------

    async def ati(self, request: AtRequest) -> list[str]:
        return [
            f"Manufacturer: {MANUFACTURER}",
            f"Model: {MODEL}",
            f"Revision: {__version__}",
            f"IMEI: {IMEI}",
        ]

    @staticmethod
    def _action_only(request: AtRequest) -> bool:
        """For commands that 27.007 defines as action and test only (+CGMI, +CGMM, +CGMR, +CIMI, +CSQ): True for
        the test form; a read or set form is ERROR (V.250 section 5.4.1: not a form of the command)."""
        if request.kind in (CommandKind.READ, CommandKind.SET):
            raise AtCommandError()
        return request.kind is CommandKind.TEST

    async def cgmi(self, request: AtRequest) -> list[str] | None:
        return None if self._action_only(request) else [MANUFACTURER]

    async def cgmm(self, request: AtRequest) -> list[str] | None:
        return None if self._action_only(request) else [MODEL]

    async def cgmr(self, request: AtRequest) -> list[str] | None:
        return None if self._action_only(request) else [__version__]

    async def cgsn(self, request: AtRequest) -> list[str] | None:
        """+CGSN[=<snt>] (27.007 section 5.4): 0 serial number (the IMEI here), 1 IMEI, 2 IMEISV, 3 SVN."""
        if request.kind is CommandKind.TEST:
            return None if request.name == "+GSN" else ["+CGSN: (0-3)"]
        if request.kind is CommandKind.READ:
            raise AtCommandError()
        snt = _int(request.args, 0, 0) if request.kind is CommandKind.SET else 0
        if snt == 0:
            return [IMEI]
        values = {1: IMEI, 2: IMEI[:14] + SVN, 3: SVN}
        if snt not in values or request.name == "+GSN":
            raise CmeError(CME_BAD_PARAMETERS)
        return [f'+CGSN: "{values[snt]}"']

    async def cimi(self, request: AtRequest, slot: CardSlot) -> list[str] | None:
        if self._action_only(request):
            return None
        return [await self.read_imsi(slot)]

    async def read_imsi(self, slot: CardSlot | None = None) -> str:
        driver = (slot or self.slots[1]).driver
        try:
            # one file session: another line's SELECT never lands between this SELECT and the READ BINARY
            async with driver.file_session((USIM_AID, b"\x6f\x07"), "EF_IMSI") as ef:
                data, sw = await ef.read_binary(0, 9)
        except FileNotSelected:
            raise CmeError(CME_SIM_FAILURE) from None
        if not _normal(sw):
            raise CmeError(CME_SIM_FAILURE)
        return decode_imsi(data)

    async def cpin(self, request: AtRequest, slot: CardSlot) -> list[str] | None:
        """+CPIN (27.007 section 8.3) of a core without its command sets: READY, or (by _with_card) +CME ERROR: 10
        while the slot has no card. The modem's SIM security set (cp/security_commands.py) replaces it with the
        card's own PIN state."""
        if request.kind is CommandKind.READ:
            return ["+CPIN: READY"]
        if request.kind is CommandKind.TEST:
            return None
        raise CmeError(CME_NOT_ALLOWED)

    async def cfun(self, request: AtRequest) -> list[str] | None:
        if request.kind is CommandKind.READ:
            return [f"+CFUN: {self.functionality}"]
        if request.kind is CommandKind.TEST:
            return ["+CFUN: (0,1,4),(0,1)"]
        if request.kind is CommandKind.SET:
            fun = _int(request.args, 0)
            if fun not in (0, 1, 4):
                raise CmeError(CME_BAD_PARAMETERS)
            self.functionality = fun
            self.network.set_status(RegStatus.HOME if fun == 1 else RegStatus.NOT_REGISTERED)
            return None
        raise AtCommandError()

    async def csq(self, request: AtRequest) -> list[str] | None:
        if self._action_only(request):
            return ["+CSQ: (0-31,99),(0-7,99)"]
        rssi = self.network.config.rssi if self.network.registered else 99
        return [f"+CSQ: {rssi},99"]

    async def creg(self, request: AtRequest) -> list[str] | None:
        name = request.name
        if request.kind is CommandKind.TEST:
            return [f"{name}: (0-2)"]
        if request.kind is CommandKind.READ:
            mode = self.reg_modes[name]
            stat = self.network.status.value
            if mode == 2 and self.network.registered:
                return [f"{name}: {mode},{stat},{self._location()}"]
            return [f"{name}: {mode},{stat}"]
        if request.kind is CommandKind.SET:
            mode = _int(request.args, 0, 0)
            if mode not in (0, 1, 2):
                raise CmeError(CME_BAD_PARAMETERS)
            self.reg_modes[name] = mode
            return None
        raise AtCommandError()

    async def cops(self, request: AtRequest) -> list[str] | None:
        config = self.network.config
        if request.kind is CommandKind.READ:
            if not self.network.registered:
                return [f"+COPS: {self.cops_mode}"]
            # the alphanumeric names are strings of the +CSCS set (27.007 5.5); the numeric one is digits
            names = {0: self.te(config.operator), 1: self.te("bipsim"), 2: f"{config.mcc}{config.mnc}"}
            return [f'+COPS: {self.cops_mode},{self.cops_format},"{names[self.cops_format]}",{config.rat}']
        if request.kind is CommandKind.TEST:
            long_name, short_name = self.te(config.operator), self.te("bipsim")
            return [
                f'+COPS: (2,"{long_name}","{short_name}","{config.mcc}{config.mnc}",{config.rat}),,(0-4),(0-2)'
            ]
        if request.kind is CommandKind.SET and _int(request.args, 0, 0) == 3:
            fmt = _int(request.args, 1, 0)
            if fmt not in (0, 1, 2):
                raise CmeError(CME_BAD_PARAMETERS)
            self.cops_format = fmt
            return None
        if request.kind is CommandKind.SET and _int(request.args, 0, 0) in (1, 4):
            # manual selection (27.007 7.3): <oper> in <format>, the alphanumeric ones in the +CSCS set; the
            # network model has one operator: another one is not found (1: no network service; 4: automatic)
            _at_most(request.args, 4)
            fmt = _ranged(request.args, 1, 0, 2)
            wanted = _str(request.args, 2)
            names = {0: config.operator, 1: "bipsim", 2: f"{config.mcc}{config.mnc}"}
            found = (self.from_te(wanted) if fmt != 2 else wanted) == names[fmt]
            if not found and _int(request.args, 0) == 1:
                raise CmeError(CME_NO_SERVICE)
            self.cops_format = fmt
            self.cops_mode = _int(request.args, 0)
            self.network.set_status(RegStatus.HOME)
            return None
        if request.kind is CommandKind.SET and _int(request.args, 0, 0) in (0, 2):
            self.cops_mode = _int(request.args, 0, 0)
            self.network.set_status(
                RegStatus.HOME if _int(request.args, 0, 0) == 0 else RegStatus.NOT_REGISTERED
            )
            return None
        raise CmeError(CME_NOT_SUPPORTED)

    async def cgdcont(self, request: AtRequest) -> list[str] | None:
        if request.kind is CommandKind.TEST:
            return ['+CGDCONT: (1-16),"IP",,,(0),(0)']
        if request.kind is CommandKind.READ:
            return [
                f'+CGDCONT: {cid},"{pdp}","{self.te(apn)}","0.0.0.0",0,0'
                for cid, (pdp, apn) in sorted(self.definitions.items())
            ]
        if request.kind is CommandKind.SET:
            cid = _int(request.args, 0)
            if not 1 <= cid <= 16:
                raise CmeError(CME_BAD_PARAMETERS)
            if len(request.args) == 1:  # <cid> alone undefines it; an active context goes with its definition
                self.definitions.pop(cid, None)
                self.authentications.pop(cid, None)
                self._te_deactivate(cid)
                return None
            pdp = self._apn_or_type(_str(request.args, 1, "IP")).upper()
            if pdp not in ("IP", "IPV6", "IPV4V6"):
                raise CmeError(CME_BAD_PARAMETERS)
            apn = self._apn_or_type(_str(request.args, 2, ""))
            # TS 23.003 9.1: an APN is at most 100 octets as encoded (a length octet per label, no dots)
            if apn and len(apn) + 1 > APN_MAX_OCTETS:
                raise CmeError(CME_BAD_PARAMETERS)
            self.definitions[cid] = (pdp, apn)
            return None
        raise AtCommandError()

    async def cgact(self, request: AtRequest) -> list[str] | None:
        if request.kind is CommandKind.TEST:
            return ["+CGACT: (0,1)"]
        if request.kind is CommandKind.READ:
            return [
                f"+CGACT: {cid},{1 if cid in self.network.contexts else 0}"
                for cid in sorted(self.definitions)
            ]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        # +CGACT=[<state>[,<cid>[,<cid>...]]] (27.007 section 10.1.10): <state> 0 or 1, each <cid> a number
        state = _ranged(request.args, 0, 0, 1)
        given = request.args[1:]
        if not all(isinstance(cid, int) for cid in given):
            raise AtCommandError()  # not a <cid> at all
        cids = [int(cid) for cid in given if isinstance(cid, int)] or sorted(self.definitions)
        if not all(1 <= cid <= 16 for cid in cids):
            raise CmeError(CME_BAD_PARAMETERS)
        for cid in cids:
            if state == 0:
                self._te_deactivate(cid)
                continue
            definition = self.definitions.get(cid)
            if definition is None:
                raise CmeError(CME_BAD_PARAMETERS)
            try:
                self.network.activate(definition[1], cid=cid)
            except PdpError as exc:
                self.last_cause = f"PDP activation of <cid> {cid} rejected: {exc}"
                raise CmeError(PDP_CME.get(exc.cause, 148)) from exc
        return None

    async def cscs(self, request: AtRequest) -> list[str] | None:
        """+CSCS (27.007 5.5): the TE's character set; every string parameter and answer of the core (operator
        names, APNs) and of the command sets (phonebook, SMS text) goes through te()/from_te() in it."""
        if request.kind is CommandKind.TEST:
            return ["+CSCS: (" + ",".join(f'"{name}"' for name in CHARSETS) + ")"]
        if request.kind is CommandKind.READ:
            return [f'+CSCS: "{self.charset}"']
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        _at_most(request.args, 1)
        charset = _str(request.args, 0).upper()
        if charset not in CHARSETS:
            raise CmeError(CME_NOT_SUPPORTED)
        self.charset = charset
        return None

    def te(self, text: str) -> str:
        """`text` as the TE reads it in the +CSCS set; a character the set cannot carry is +CME ERROR: 25."""
        try:
            return te_encode(text, self.charset)
        except ValueError as exc:
            raise CmeError(CME_INVALID_TEXT) from exc

    def from_te(self, value: str) -> str:
        """A TE string in the +CSCS set back to text; one not valid in the set (bad hex, odd UCS2) is 25."""
        try:
            return te_decode(value, self.charset)
        except ValueError as exc:
            raise CmeError(CME_INVALID_TEXT) from exc

    def _apn_or_type(self, value: str) -> str:
        """An APN or PDP type from the TE: decoded from the +CSCS set; a value that does not decode to an APN's
        characters but is one as it stands is taken as it is (oFono and others send APNs in IRA after their
        phonebook chose UCS2: real modems take them)."""
        try:
            text = te_decode(value, self.charset)
        except ValueError:
            text = None
        if text is not None and set(text) <= APN_CHARS:
            return text
        if set(value) <= APN_CHARS:
            return value
        raise CmeError(CME_INVALID_TEXT)

    def _te_deactivate(self, cid: int) -> None:
        """A deactivation the TE asked for (+CGACT=0, undefining): its OK says so, no +CGEV follows."""
        self._te_deactivating = True
        try:
            self.network.deactivate(cid)
        finally:
            self._te_deactivating = False

    # --- packet domain attach and events (27.007 10.1.9, 10.1.19, 10.1.31) -------------------------------------

    async def cgatt(self, request: AtRequest) -> list[str] | None:
        """+CGATT=<state> (27.007 10.1.9): attach (1) or detach (0) the packet domain; a detach deactivates every
        context. Attaching while not registered is +CME ERROR: 30 (no network service)."""
        if request.kind is CommandKind.TEST:
            return ["+CGATT: (0,1)"]
        if request.kind is CommandKind.READ:
            return [f"+CGATT: {int(self.network.attached)}"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        _at_most(request.args, 1)
        if _ranged(request.args, 0, 0, 1):
            if not self.network.registered:
                raise CmeError(CME_NO_SERVICE)
            self.network.attach()
        else:
            self._te_deactivating = True  # the TE's own detach: its OK says so, no +CGEV: ME DETACH (10.1.19)
            try:
                self.network.detach()
            finally:
                self._te_deactivating = False
        return None

    async def cgauth(self, request: AtRequest) -> list[str] | None:
        """+CGAUTH=<cid>[,<auth_prot>[,<userid>[,<password>]]] (27.007 10.1.31): 0 none, 1 PAP, 2 CHAP; the user
        and password a context of the host's is activated with (cp/pdp_choice.py takes them for BIP too)."""
        if request.kind is CommandKind.TEST:
            return ["+CGAUTH: (1-16),(0-2),,"]
        if request.kind is CommandKind.READ:
            return [
                f'+CGAUTH: {cid},{prot},"{self.te(user)}"'
                for cid, (prot, user, _) in sorted(self.authentications.items())
            ]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        _at_most(request.args, 4)
        cid = _ranged(request.args, 0, 1, 16)
        if len(request.args) == 1:
            self.authentications.pop(cid, None)
            return None
        prot = _ranged(request.args, 1, 0, 2, 0)
        user = self.from_te(_str(request.args, 2, ""))
        password = self.from_te(_str(request.args, 3, ""))
        self.authentications[cid] = (prot, user, password) if prot else (0, "", "")
        return None

    async def cgerep(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CGEREP=[<mode>[,<bfr>]] (27.007 10.1.19): 0 events buffered in the MT (the oldest dropped past
        CGEV_BUFFER), 1 and 2 sent as +CGEV URCs; entering 1 or 2 clears the buffer (<bfr> 0) or sends it after
        the OK (<bfr> 1). While a data call has the line (online data), 1 drops them and 2 lets the server hold them
        until the line is in command mode again."""
        if request.kind is CommandKind.TEST:
            return ["+CGEREP: (0-2),(0,1)"]
        mode, bfr = self.event_modes.get(server, (0, 0))
        if request.kind is CommandKind.READ:
            return [f"+CGEREP: {mode},{bfr}"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        _at_most(request.args, 2)
        mode = _ranged(request.args, 0, 0, 2, 0)
        bfr = _ranged(request.args, 1, 0, 1, 0)
        self.event_modes[server] = (mode, bfr)
        if mode:
            held = self.event_buffers.pop(server, [])
            if bfr == 1 and held:

                async def flush() -> None:
                    for line in held:
                        await server.send_urc(line)

                server.after_response(flush)
        return None

    def _event(self, line: str) -> None:
        """A +CGEV event (27.007 10.1.19) to every line, sent or buffered per its +CGEREP."""
        for server in list(self._servers):
            mode, _ = self.event_modes.get(server, (0, 0))
            if mode == 0:
                buffer = self.event_buffers.setdefault(server, [])
                buffer.append(line)
                del buffer[:-CGEV_BUFFER]
                continue
            if mode == 1 and server.online_data:
                # <mode> 1: discarded while a data call has the line (2: the server holds it till then)
                continue
            try:
                trio.lowlevel.spawn_system_task(server.send_urc, line)
            except RuntimeError:
                pass

    def _context_ended(self, context: PdpContext, reason: str) -> None:
        """NW DEACT when the network ended the context, ME DEACT when the ME did unasked; none for the TE's own
        +CGACT=0, nor for each context of a detach (27.007 10.1.19: the DETACH event implies them)."""
        if self._te_deactivating or reason.startswith("detached"):
            return
        who = "NW" if context.ended_by_network else "ME"
        self._event(f'+CGEV: {who} DEACT "IP","{context.address}",{context.cid}')

    def _attach_changed(self, attached: bool, by_network: bool) -> None:
        self._was_attached = self.network.attached
        if not attached and not self._te_deactivating:
            self._event(f"+CGEV: {'NW' if by_network else 'ME'} DETACH")

    async def cmux(self, request: AtRequest, server: AtServer, allowed: bool) -> list[str] | None:
        if request.kind is CommandKind.TEST:
            return ["+CMUX: (0),(0),(1-6),(1-32768),(1-255),(0-100),(2-255),(1-255),(1-7)"]
        if request.kind is CommandKind.READ:
            return ["+CMUX: 0,0,5,31,10,3,30,10,2"]
        if request.kind is not CommandKind.SET or not allowed or self.on_cmux is None:
            raise CmeError(CME_NOT_ALLOWED)
        # +CMUX=<mode>[,<subset>[,<port_speed>[,<N1>[,<T1>[,<N2>[,<T2>[,<T3>[,<k>]]]]]]]] (27.007 section 5.7):
        # every parameter within its range (the =? answer), else +CME ERROR: 50
        args = request.args
        _at_most(args, 9)
        mode = _ranged(args, 0, 0, 1)
        subset = _ranged(args, 1, 0, 2, 0)  # 0 UIH, 1 UI, 2 I frames
        _ranged(args, 2, 1, 6, 5)  # port speed 9600..230400 bit/s: the simulated line has none to set
        n1 = _ranged(args, 3, 1, 32768, 31)
        t1 = _ranged(args, 4, 1, 255, 10)
        n2 = _ranged(args, 5, 0, 100, 3)
        t2 = _ranged(args, 6, 2, 255, 30)
        _ranged(args, 7, 1, 255, 10)  # T3, wake-up response time
        _ranged(args, 8, 1, 7, 2)  # k, window size (advanced option with error recovery)
        if mode != 0 or subset != 0:
            raise CmeError(CME_NOT_SUPPORTED)  # only the basic option, UIH frames
        self.on_cmux(CmuxParams(mode=0, subset=0, n1=n1, t1=t1 / 100, n2=n2, t2=t2 / 100))
        server.stop_after_response()
        return None

    # --- card access ---------------------------------------------------------------------------------------------

    async def smspp(self, request: AtRequest) -> list[str] | None:
        if request.kind is CommandKind.TEST:
            return ['%SMSPP: "<hex SMS-DELIVER TPDU>"']
        if request.kind is not CommandKind.SET:
            raise CmeError(CME_BAD_PARAMETERS)
        try:
            tpdu = bytes.fromhex(_str(request.args, 0))
            check_data_download(tpdu)
        except (ValueError, SmsError) as exc:
            raise CmeError(CME_BAD_PARAMETERS) from exc
        data, sw = await self.sms_pp_download(tpdu)
        if sw != 0x9000 and sw >> 8 != 0x91:
            raise CmeError(CME_SIM_FAILURE)
        return [f'%SMSPP: "{data.hex().upper()}"']

    async def sms_pp_download(self, tpdu: bytes) -> tuple[bytes, int]:
        """A (U)SIM data download SMS-DELIVER (checked by the caller) to slot 1's card as ENVELOPE (SMS-PP
        DOWNLOAD, TS 31.111 7.1.1): returns the card's response data (the PoR, TS 31.115 4.4) and status word.
        +CME ERROR: 10 without a card (or when it goes meanwhile), 14 before its TERMINAL PROFILE. AT%SMSPP and the
        27.005 MT path (cp/sms_commands.py) both send it here."""
        slot = self.slots[1]  # the network's SMS goes to the card that runs the toolkit
        if slot.absent:
            raise CmeError(CME_SIM_NOT_INSERTED)
        if not self.driver.started.is_set():
            raise CmeError(CME_SIM_BUSY)  # the card has not had its TERMINAL PROFILE yet: try again
        envelope = Envelope(
            (
                obj(Tag.DEVICE_IDENTITIES, bytes((DeviceId.NETWORK, DeviceId.UICC))),
                obj(Tag.ADDRESS, address_value(self.network.config.smsc), cr=False),
                obj(Tag.SMS_TPDU, tpdu, cr=True),
            ),
            EnvelopeTag.SMS_PP_DOWNLOAD,
        )
        try:
            return await self.driver.envelope(envelope, "ENVELOPE: SMS-PP DOWNLOAD")
        except CardRemoved as exc:
            slot.gone(exc)
            raise CmeError(CME_SIM_NOT_INSERTED) from exc

    async def csim(self, request: AtRequest, slot: CardSlot) -> list[str] | None:
        """+CSIM=<length>,<command> (27.007 section 8.17): <length> is the number of characters of <command>."""
        if request.kind is CommandKind.TEST:
            return None
        apdu = self._apdu(request.args, 0)
        response = await slot.driver.raw(apdu, "AT+CSIM")
        return [f'+CSIM: {2 * len(response)},"{response.hex().upper()}"']

    @staticmethod
    def _apdu(args: tuple[AtArg, ...], index: int) -> bytes:
        """<length>,<command> at args[index:]: a command APDU of 4..MAX_APDU bytes whose hex has <length>
        characters; anything else is +CME ERROR: 50."""
        _at_most(args, index + 2)
        length = _int(args, index)
        apdu = _hex(args, index + 1, max_bytes=MAX_APDU)
        if length != 2 * len(apdu) or len(apdu) < 4:
            raise CmeError(CME_BAD_PARAMETERS)
        return apdu

    async def crsm(self, request: AtRequest, slot: CardSlot) -> list[str] | None:
        """+CRSM=<command>[,<fileid>[,<P1>,<P2>,<P3>[,<data>[,<pathid>]]]] (27.007 section 8.18)."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        args = request.args
        _at_most(args, 7)
        command = _int(args, 0)
        if command in CRSM_UNSUPPORTED:
            raise CmeError(CME_NOT_SUPPORTED)
        ins = CRSM_INS.get(command)
        if ins is None:
            raise CmeError(CME_BAD_PARAMETERS)
        status = command == 242
        # <fileid> is mandatory but for STATUS; P1, P2, P3 but for GET RESPONSE and STATUS
        fid = _ranged(args, 1, 0, 0xFFFF, 0 if status else None)
        parameters_optional = command in (192, 242)
        p1, p2, p3 = (_ranged(args, i, 0, 255, 0 if parameters_optional else None) for i in (2, 3, 4))
        data = _hex(args, 5, required=False)
        pathid = _hex(args, 6, required=False)
        if len(pathid) % 2:  # a path is a sequence of two-byte file ids
            raise CmeError(CME_BAD_PARAMETERS)
        if command in (214, 220):  # the updates write <data>, <P3> bytes of it
            if not data or len(data) != p3:
                raise CmeError(CME_BAD_PARAMETERS)
        elif data:
            raise CmeError(CME_BAD_PARAMETERS)  # nothing to write for a read, GET RESPONSE or STATUS
        try:
            # one file session: another line's SELECT never lands between this SELECT and its READ/UPDATE
            async with slot.driver.file_session(crsm_path(fid, pathid), "+CRSM") as ef:
                if command == 192:
                    response, sw = await ef.command(
                        b"\x00\xa4\x00\x04\x02" + fid.to_bytes(2, "big"), "+CRSM GET RESPONSE"
                    )
                else:
                    apdu = bytes((0x80 if ins == 0xF2 else 0x00, ins, p1, p2)) + (
                        bytes((len(data),)) + data if data else bytes((p3,))
                    )
                    response, sw = await ef.command(apdu, f"+CRSM {command}")
        except FileNotSelected as exc:
            # the file is not there (6A 82) or not to be selected: that is the answer (27.007 8.18 reports the
            # status words of the command that failed), not the READ's 69 86 on no file
            return [f'+CRSM: {exc.sw >> 8},{exc.sw & 0xFF},""']
        return [f'+CRSM: {sw >> 8},{sw & 0xFF},"{response.hex().upper()}"']

    async def ccho(self, request: AtRequest, slot: CardSlot) -> list[str] | None:
        """+CCHO=<dfname> (27.007 section 8.45): an application's DF name (AID), 1 to 16 bytes; answered
        +CCHO: <sessionid>. MANAGE CHANNEL opens a channel (its refusals: _OPEN_ERRORS), SELECT by DF name selects
        the application on it; a SELECT that fails closes the channel again (no channel leaks) and answers
        _SELECT_ERRORS."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        _at_most(request.args, 1)
        aid = _hex(request.args, 0, max_bytes=16)
        if not aid:
            raise CmeError(CME_BAD_PARAMETERS)
        driver = slot.driver
        opened = await driver.raw(bytes.fromhex("0070000001"), "MANAGE CHANNEL open")
        sw = int.from_bytes(opened[-2:], "big") if len(opened) >= 2 else 0x6F00
        if not _normal(sw) or len(opened) != 3:
            raise CmeError(_OPEN_ERRORS.get(sw, CME_SIM_FAILURE))
        channel = opened[0]
        _, sw = await driver.transmit(
            bytes((on_channel(0x00, channel), 0xA4, 0x04, 0x00, len(aid))) + aid,
            f"SELECT AID on channel {channel}",
        )
        if not _selected(sw):
            await driver.raw(bytes((0x00, 0x70, 0x80, channel)), "MANAGE CHANNEL close")
            raise CmeError(_SELECT_ERRORS.get(sw, CME_SIM_FAILURE))
        self._last_session += 1
        self.sessions[self._last_session] = (slot.number, channel)
        return [f"+CCHO: {self._last_session}"]

    def _session(self, session: int) -> tuple[CardSlot, int]:
        """The slot and channel of a +CCHO session, whatever %SLOT says now; a session whose card went away is
        +CME ERROR: 10 while its slot is empty, an unknown one (or a stale one once a card is back) 21."""
        found = self.sessions.get(session)
        if found is not None:
            number, channel = found
            return self.slots[number], channel
        stale = self._stale.get(session)
        if stale is not None and self.slots[stale].absent:
            raise CmeError(CME_SIM_NOT_INSERTED)
        raise CmeError(CME_INVALID_INDEX)

    async def cchc(self, request: AtRequest) -> list[str] | None:
        """+CCHC=<sessionid> (27.007 section 8.46). Closing a session whose card went away is OK (its channel went
        with the card) and forgets it."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        _at_most(request.args, 1)
        session = _int(request.args, 0)
        if self._stale.pop(session, None) is not None:
            return None
        slot, channel = self._session(session)
        del self.sessions[session]

        async def close() -> None:
            await slot.driver.raw(bytes((0x00, 0x70, 0x80, channel)), "MANAGE CHANNEL close")

        return await self._with_card(slot, close)

    async def cgla(self, request: AtRequest) -> list[str] | None:
        """+CGLA=<sessionid>,<length>,<command> (27.007 section 8.43): <length> counts the hex characters of
        <command> (+CME ERROR: 50 when it does not). The class byte's channel bits are recoded to the session's
        channel (a TE may send 81 whatever its channel); the card's answer goes back as it is, 61 xx included:
        27.007 leaves T=0 response handling to the TE, which sends GET RESPONSE on the session."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        session = _int(request.args, 0)
        apdu = bytearray(self._apdu(request.args, 1))
        slot, channel = self._session(session)
        apdu[0] = on_channel(apdu[0], channel)

        async def exchange() -> list[str]:
            response = await slot.driver.raw(bytes(apdu), f"AT+CGLA channel {channel}")
            return [f'+CGLA: {2 * len(response)},"{response.hex().upper()}"']

        return await self._with_card(slot, exchange)
