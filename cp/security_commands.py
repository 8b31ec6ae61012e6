"""The SIM security commands of 3GPP TS 27.007 over the card's real PINs: +CPIN (8.3), +CPINR (8.65), +CLCK (7.4,
facilities "SC" and "FD") and +CPWD (7.5, "SC" and "P2"), answered with the +CME ERRORs of 27.007 9.2.1.

Nothing is kept on the CP: every answer comes from the card through the PIN commands of ETSI TS 102 221 section
11.1 (VERIFY PIN 11.1.9 with and without data, CHANGE PIN 11.1.10, DISABLE/ENABLE PIN 11.1.11/11.1.12, UNBLOCK
PIN 11.1.13) and the PIN status of the MF's FCP (9.5.2), so the counters a host reads are the card's own and
survive the CP (docs/protocols.md, "SIM security"). The rules (which status word is which 27.007 state and error)
are pure functions of this module; the handlers only exchange APDUs.

While PIN1 is enabled and not verified, the commands that read the subscriber's files (+CIMI, the phonebook and
message storages) answer +CME ERROR: 11 (SIM PIN required) or 12 (SIM PUK required) before touching the card. The
card's toolkit does not wait for the PIN: the CP sends TERMINAL PROFILE at activation, before any PIN
verification, as TS 102 221 section 14 orders it, so the card's BIP sessions run whatever the PIN state.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import TYPE_CHECKING

from bipsim.link.at_server import AtCommandError, CmeError
from bipsim.link.at_syntax import AtArg, AtRequest, CommandKind
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.uicc.fs import PIN1, PIN2, pin_block
from bipsim.uicc.tlv import TlvError, decode_length
from bipsim.uicc.transport import CardRemoved

if TYPE_CHECKING:
    from bipsim.cp.card_slot import CardSlot
    from bipsim.cp.commands import ModemCommands
    from bipsim.link.at_server import AtServer
    from bipsim.trace.recorder import Tracer

# 27.007 section 9.2.1
CME_NOT_ALLOWED = 3
CME_NOT_SUPPORTED = 4
CME_SIM_NOT_INSERTED = 10
CME_SIM_PIN_REQUIRED = 11
CME_SIM_PUK_REQUIRED = 12
CME_SIM_FAILURE = 13
CME_INCORRECT_PASSWORD = 16
CME_SIM_PIN2_REQUIRED = 17
CME_SIM_PUK2_REQUIRED = 18
CME_BAD_PARAMETERS = 50
# the initial attempts of TS 102 221 11.1.9 and 11.1.13 (+CPINR's <default_retries>; a card never tells them)
PIN_DEFAULT_RETRIES = 3
PUK_DEFAULT_RETRIES = 10
# the commands that read the subscriber's files: refused while the PIN is not entered, as a modem does
GATED = ("+CIMI", "+CNUM", "+CPBS", "+CPBR", "+CPBF", "+CPBW", "+CMGL", "+CMGR", "+CMGW", "+CMGD", "+CPMS")
# EF_EST (TS 31.102 4.2.47), its service 1: fixed dialling numbers enabled ("FD" of +CLCK, 27.007 7.4)
EF_EST = b"\x6f\x56"
FACILITIES = ("SC", "FD")


class PinCode(Enum):
    """The <code> of +CPIN? (27.007 8.3) this ME reports."""

    READY = "READY"
    SIM_PIN = "SIM PIN"
    SIM_PUK = "SIM PUK"
    SIM_PIN2 = "SIM PIN2"
    SIM_PUK2 = "SIM PUK2"


# +CPINR's codes (27.007 8.65): which counter, read with which command (INS 20 VERIFY, 2C UNBLOCK) and key
CODES: tuple[tuple[str, int, int, int], ...] = (
    ("SIM PIN", 0x20, PIN1, PIN_DEFAULT_RETRIES),
    ("SIM PUK", 0x2C, PIN1, PUK_DEFAULT_RETRIES),
    ("SIM PIN2", 0x20, PIN2, PIN_DEFAULT_RETRIES),
    ("SIM PUK2", 0x2C, PIN2, PUK_DEFAULT_RETRIES),
)


def retries(sw: int, default: int) -> int | None:
    """The attempts left a counter query answered: 63CX is X; 9000 (verified, or no verification needed) the
    full count, which a successful presentation restores; anything else (6A88: no such key) None."""
    if sw >> 4 == 0x63C:
        return sw & 0x0F
    if sw == 0x9000:
        return default
    return None


def pin1_code(verify_sw: int, unblock_sw: int) -> PinCode | None:
    """PIN1's state as +CPIN? says it, from VERIFY PIN and UNBLOCK PIN without data: READY when no verification
    is needed, SIM PIN while attempts are left, SIM PUK once blocked with PUK attempts left; None when the PUK is
    blocked too (the card is of no more use: +CME ERROR: 13)."""
    if verify_sw == 0x9000:
        return PinCode.READY
    if verify_sw >> 4 == 0x63C and verify_sw & 0x0F:
        return PinCode.SIM_PIN
    if unblock_sw >> 4 == 0x63C and unblock_sw & 0x0F:
        return PinCode.SIM_PUK
    return None


def presentation_error(sw: int, *, puk_error: int) -> int | None:
    """The +CME ERROR for a PIN presentation's status word (None: 9000, done): a false PIN is 16, the one that
    blocked it (63C0) or a blocked PIN (6983) `puk_error` (12 for PIN1, 18 for PIN2), a disabled PIN 3."""
    if sw == 0x9000:
        return None
    if sw == 0x63C0 or sw == 0x6983:
        return puk_error
    if sw >> 4 == 0x63C:
        return CME_INCORRECT_PASSWORD
    if sw == 0x6984:
        return CME_NOT_ALLOWED
    return CME_SIM_FAILURE


def unblock_error(sw: int) -> int | None:
    """The +CME ERROR for UNBLOCK PIN's status word: a false PUK is 16 (63C0 included: the PUK is blocked from
    now on), a blocked PUK 13 (SIM failure: the card cannot be unblocked)."""
    if sw == 0x9000:
        return None
    if sw >> 4 == 0x63C:
        return CME_INCORRECT_PASSWORD
    return CME_SIM_FAILURE


def valid_pin(value: str | None, *, low: int = 4, high: int = 8) -> bool:
    """A PIN of 4 to 8 decimal digits (TS 102 221 section 9.5.1), a PUK of 8: anything else is refused with 16
    before the card sees it, so a typo costs no attempt."""
    return value is not None and value.isdigit() and low <= len(value) <= high


def _text(args: tuple[AtArg, ...], index: int) -> str | None:
    value = args[index] if index < len(args) else None
    return None if value is None else str(value)


def _tlvs(data: bytes) -> dict[int, bytes]:
    """One-byte tags and BER lengths (the FCP's, TS 102 221 section 11.1.1.3) to {tag: value}; TlvError if cut."""
    found: dict[int, bytes] = {}
    at = 0
    while at < len(data):
        tag = data[at]
        length, at = decode_length(data, at + 1, len(data))
        if at + length > len(data):
            raise TlvError(at, "a TLV runs past its template")
        found[tag] = data[at : at + length]
        at += length
    return found


def pin_status(fcp: bytes) -> int | None:
    """The PS_DO of a DF's FCP (TS 102 221 section 9.5.2: C6 holding 90 <PS_DO>), None when absent or when the
    FCP cannot be read."""
    if fcp[:1] != b"\x62" or len(fcp) < 2:
        return None
    try:
        template = _tlvs(fcp[2:]).get(0xC6)
        value = _tlvs(template).get(0x90) if template is not None else None
    except (TlvError, IndexError, ValueError):
        return None
    return value[0] if value else None


class SecurityCommands:
    """+CPIN, +CPINR, +CLCK and +CPWD on every AT server of the modem, for the card of the line's slot."""

    def __init__(self, core: ModemCommands, tracer: Tracer, settings: dict[str, object]) -> None:
        self.core = core
        self.tracer = tracer
        # "SIM PIN2"/"SIM PUK2" are reported only right after a command failed for want of PIN2 (27.007 8.3)
        self.pin2_wanted: dict[int, PinCode] = {}

    def install(self, server: AtServer) -> None:
        handlers: dict[str, Callable[[AtRequest, CardSlot], Awaitable[list[str] | None]]] = {
            "+CPIN": self.cpin,
            "+CPINR": self.cpinr,
            "+CLCK": self.clck,
            "+CPWD": self.cpwd,
        }
        for name, handler in handlers.items():
            server.register(name, self.core._on_line_slot(server, handler))
        for name in GATED:
            inner = server.handlers.get(name)
            if inner is not None:
                server.register(name, self._gate(server, name, inner))

    def forget(self, server: AtServer) -> None:
        return None

    # --- the card ---------------------------------------------------------------------------------------------

    async def _apdu(self, slot: CardSlot, apdu: bytes, summary: str) -> tuple[bytes, int]:
        """One command; 91 XX (normal ending, a proactive command pending for the toolkit: TS 102 221
        10.2.1.1) is 90 00 to these rules."""
        data, sw = await slot.driver.transmit(apdu, summary)
        return data, 0x9000 if sw >> 8 == 0x91 else sw

    async def _counter(self, slot: CardSlot, ins: int, key: int) -> int:
        what = "VERIFY PIN" if ins == 0x20 else "UNBLOCK PIN"
        _, sw = await self._apdu(slot, bytes((0x00, ins, 0x00, key)), f"{what} {key:02X} (attempts left)")
        return sw

    async def pin1_state(self, slot: CardSlot) -> PinCode | None:
        verify = await self._counter(slot, 0x20, PIN1)
        unblock = 0x9000 if verify == 0x9000 else await self._counter(slot, 0x2C, PIN1)
        return pin1_code(verify, unblock)

    async def _pin1_enabled(self, slot: CardSlot) -> bool:
        fcp, sw = await self._apdu(slot, bytes.fromhex("00A40004023F00"), "SELECT MF (PIN status)")
        status = pin_status(fcp) if sw == 0x9000 or sw >> 8 == 0x91 else None
        if status is None:
            raise CmeError(CME_SIM_FAILURE)
        return bool(status & 0x80)

    def _note(self, slot: CardSlot, command: str, code: str, fields: dict[str, object]) -> None:
        self.tracer.emit(
            Actor.CP,
            Actor.AP,
            Layer.APP,
            f"SIM security: {command} -> {code}",
            kind=Kind.SIM_SECURITY,
            error=code not in ("OK", *[c.value for c in PinCode]),
            fields={"command": command, "result": code, "slot": slot.number, **fields},
        )

    def _fail(self, slot: CardSlot, command: str, code: int, sw: int) -> CmeError:
        self._note(slot, command, f"+CME ERROR: {code}", {"sw": f"{sw:04X}"})
        if code == CME_SIM_PUK2_REQUIRED:
            self.pin2_wanted[slot.number] = PinCode.SIM_PUK2
        elif code == CME_SIM_PIN2_REQUIRED:
            self.pin2_wanted[slot.number] = PinCode.SIM_PIN2
        return CmeError(code)

    # --- +CPIN ------------------------------------------------------------------------------------------------

    async def cpin(self, request: AtRequest, slot: CardSlot) -> list[str] | None:
        """+CPIN? the code the card needs; +CPIN=<pin>[,<newpin>] enters it (a PUK with the new PIN)."""
        if request.kind is CommandKind.TEST:
            return None
        state = await self.pin1_state(slot)
        if state is None:
            raise self._fail(slot, "+CPIN", CME_SIM_FAILURE, 0x6983)
        wanted = self.pin2_wanted.get(slot.number) if state is PinCode.READY else None
        if request.kind is CommandKind.READ:
            return [f"+CPIN: {(wanted or state).value}"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        if len(request.args) > 2 or not request.args:
            raise CmeError(CME_BAD_PARAMETERS)
        pin, new = _text(request.args, 0), _text(request.args, 1)
        if state is PinCode.READY and wanted is None:
            raise CmeError(CME_NOT_ALLOWED)  # nothing is asked for
        self.pin2_wanted.pop(slot.number, None)
        key = PIN2 if wanted is not None else PIN1
        code = wanted or state
        if code in (PinCode.SIM_PIN, PinCode.SIM_PIN2):
            if new is not None:
                raise CmeError(CME_BAD_PARAMETERS)  # a new PIN goes with a PUK only
            if not valid_pin(pin):
                raise CmeError(CME_INCORRECT_PASSWORD)
            assert pin is not None
            _, sw = await self._apdu(slot, b"\x00\x20\x00" + bytes((key, 8)) + pin_block(pin), "VERIFY PIN")
            error = presentation_error(
                sw, puk_error=CME_SIM_PUK_REQUIRED if key == PIN1 else CME_SIM_PUK2_REQUIRED
            )
        else:
            if new is None:  # 27.007 8.3: a PUK goes with the new PIN; the PUK is still what is wanted
                raise self._fail(
                    slot, "+CPIN", CME_SIM_PUK_REQUIRED if key == PIN1 else CME_SIM_PUK2_REQUIRED, 0
                )
            if not valid_pin(pin, low=8) or not valid_pin(new):
                raise CmeError(CME_INCORRECT_PASSWORD)
            assert pin is not None
            data = pin_block(pin) + pin_block(new)
            _, sw = await self._apdu(slot, b"\x00\x2c\x00" + bytes((key, 16)) + data, "UNBLOCK PIN")
            error = unblock_error(sw)
        if error is not None:
            raise self._fail(slot, "+CPIN", error, sw)
        self._note(slot, "+CPIN", "OK", {"code": code.value})
        return None

    def _gate(
        self, server: AtServer, name: str, inner: Callable[[AtRequest], Awaitable[list[str] | None]]
    ) -> Callable[[AtRequest], Awaitable[list[str] | None]]:
        """`inner`, after the PIN: +CME ERROR: 11/12 while PIN1 is enabled and not entered (27.007 8.3)."""

        async def gated(request: AtRequest) -> list[str] | None:
            if request.kind is not CommandKind.TEST:
                slot = self.core.slots[self.core._slot_of.get(server, 1)]
                if not slot.absent:
                    try:
                        state = await self.pin1_state(slot)
                    except CardRemoved as exc:  # gone while asked: as every SIM command, 10 (27.007 9.2.1)
                        slot.gone(exc)
                        raise CmeError(CME_SIM_NOT_INSERTED) from exc
                    if state is PinCode.SIM_PIN:
                        raise CmeError(CME_SIM_PIN_REQUIRED)
                    if state is PinCode.SIM_PUK:
                        raise CmeError(CME_SIM_PUK_REQUIRED)
                    if state is None:
                        raise CmeError(CME_SIM_FAILURE)
            return await inner(request)

        return gated

    # --- +CPINR -----------------------------------------------------------------------------------------------

    async def cpinr(self, request: AtRequest, slot: CardSlot) -> list[str] | None:
        """+CPINR[=<sel_code>] (27.007 8.65): `+CPINR: <code>,<retries>,<default_retries>` for each code that
        matches <sel_code> (wildcard `*`, as the specification allows), all when it is left out."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is CommandKind.READ or len(request.args) > 1:
            raise AtCommandError() if request.kind is CommandKind.READ else CmeError(CME_BAD_PARAMETERS)
        selector = _text(request.args, 0) if request.kind is CommandKind.SET else None
        lines = []
        for code, ins, key, default in CODES:
            if selector is not None and not fnmatch.fnmatchcase(code, selector.upper()):
                continue
            left = retries(await self._counter(slot, ins, key), default)
            if left is not None:
                lines.append(f"+CPINR: {code},{left},{max(default, left)}")
        return lines

    # --- +CLCK and +CPWD --------------------------------------------------------------------------------------

    async def clck(self, request: AtRequest, slot: CardSlot) -> list[str] | None:
        """+CLCK=<fac>,<mode>[,<passwd>[,<class>]] (27.007 7.4): "SC" the PIN1 lock (ENABLE/DISABLE PIN of
        PIN1), "FD" fixed dialling (EF_EST service 1, written after PIN2); mode 0 unlock, 1 lock, 2 query."""
        if request.kind is CommandKind.TEST:
            quoted = ",".join(f'"{facility}"' for facility in FACILITIES)
            return [f"+CLCK: ({quoted})"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        if len(request.args) < 2 or len(request.args) > 4:
            raise CmeError(CME_BAD_PARAMETERS)
        facility = (_text(request.args, 0) or "").upper()
        mode = request.args[1]
        if facility not in FACILITIES:
            raise CmeError(CME_NOT_SUPPORTED)
        if mode not in (0, 1, 2):
            raise CmeError(CME_BAD_PARAMETERS)
        if facility == "SC":
            if mode == 2:
                return [f"+CLCK: {int(await self._pin1_enabled(slot))}"]
            password = _text(request.args, 2)
            if password is None:
                raise CmeError(CME_BAD_PARAMETERS)
            if not valid_pin(password):
                raise CmeError(CME_INCORRECT_PASSWORD)
            ins = 0x28 if mode == 1 else 0x26
            what = "ENABLE PIN" if mode == 1 else "DISABLE PIN"
            _, sw = await self._apdu(slot, bytes((0x00, ins, 0x00, PIN1, 8)) + pin_block(password), what)
            error = presentation_error(sw, puk_error=CME_SIM_PUK_REQUIRED)
            if error is not None:
                raise self._fail(slot, "+CLCK", error, sw)
            self._note(slot, "+CLCK", "OK", {"facility": facility, "mode": mode})
            return None
        return await self._fixed_dialling(request, slot, int(mode))

    async def _select_est(self, slot: CardSlot) -> bool:
        from bipsim.uicc.fs import USIM_AID

        _, sw = await self._apdu(
            slot, b"\x00\xa4\x04\x0c" + bytes((len(USIM_AID),)) + USIM_AID, "SELECT ADF USIM"
        )
        if sw != 0x9000 and sw >> 8 != 0x91:
            return False
        _, sw = await self._apdu(slot, b"\x00\xa4\x00\x0c\x02" + EF_EST, "SELECT EF_EST")
        return sw == 0x9000 or sw >> 8 == 0x91

    async def _fixed_dialling(self, request: AtRequest, slot: CardSlot, mode: int) -> list[str] | None:
        if not await self._select_est(slot):
            if mode == 2:
                return ["+CLCK: 0"]  # no EF_EST: fixed dialling cannot be on
            raise CmeError(CME_NOT_SUPPORTED)
        data, sw = await self._apdu(slot, bytes.fromhex("00B0000001"), "READ BINARY EF_EST")
        if sw == 0x6982:
            raise CmeError(CME_SIM_PIN_REQUIRED)
        if sw != 0x9000 and sw >> 8 != 0x91 or not data:
            raise CmeError(CME_SIM_FAILURE)
        if mode == 2:
            return [f"+CLCK: {data[0] & 0x01}"]
        password = _text(request.args, 2)
        if password is None:
            raise CmeError(CME_BAD_PARAMETERS)
        if not valid_pin(password):
            raise CmeError(CME_INCORRECT_PASSWORD)
        _, sw = await self._apdu(slot, b"\x00\x20\x00\x81\x08" + pin_block(password), "VERIFY PIN2")
        error = presentation_error(sw, puk_error=CME_SIM_PUK2_REQUIRED)
        if error is not None:
            raise self._fail(slot, "+CLCK", error, sw)
        value = (data[0] & 0xFE) | (1 if mode == 1 else 0)
        _, sw = await self._apdu(slot, b"\x00\xd6\x00\x00\x01" + bytes((value,)), "UPDATE BINARY EF_EST")
        if sw != 0x9000 and sw >> 8 != 0x91:
            raise self._fail(slot, "+CLCK", CME_SIM_FAILURE, sw)
        self._note(slot, "+CLCK", "OK", {"facility": "FD", "mode": mode})
        return None

    async def cpwd(self, request: AtRequest, slot: CardSlot) -> list[str] | None:
        """+CPWD=<fac>,<oldpwd>,<newpwd> (27.007 7.5): CHANGE PIN of PIN1 ("SC") or PIN2 ("P2")."""
        if request.kind is CommandKind.TEST:
            return ['+CPWD: ("SC",8),("P2",8)']
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        if len(request.args) != 3:
            raise CmeError(CME_BAD_PARAMETERS)
        facility = (_text(request.args, 0) or "").upper()
        old, new = _text(request.args, 1), _text(request.args, 2)
        keys = {"SC": PIN1, "P2": PIN2}
        if facility not in keys:
            raise CmeError(CME_NOT_SUPPORTED)
        if not valid_pin(old) or not valid_pin(new):
            raise CmeError(CME_INCORRECT_PASSWORD)
        assert old is not None and new is not None
        key = keys[facility]
        apdu = b"\x00\x24\x00" + bytes((key, 16)) + pin_block(old) + pin_block(new)
        _, sw = await self._apdu(slot, apdu, "CHANGE PIN")
        error = presentation_error(
            sw, puk_error=CME_SIM_PUK_REQUIRED if key == PIN1 else CME_SIM_PUK2_REQUIRED
        )
        if error is not None:
            raise self._fail(slot, "+CPWD", error, sw)
        self._note(slot, "+CPWD", "OK", {"facility": facility})
        return None
