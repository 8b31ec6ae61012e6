"""USAT through AT: the command set of 3GPP TS 27.007 section 12 (the host's SIM toolkit on the modem's card).

+CUSATR reads the profiles, +CUSATW writes the TE's, +CUSATA activates it (2: the MT's and the TE's profiles merged
go to the card as a new TERMINAL PROFILE, TS 31.111 section 5.1 and annex Q), +CUSATT carries the host's TERMINAL
RESPONSE and +CUSATE its ENVELOPE (MENU SELECTION, event downloads) to the card; the URC +CUSATP hands the host a
proactive command the modem does not carry out itself (cp/bip_gateway.py's HandToHost), +CUSATEND says the card
ended the proactive session (it answered 90 00 to the host's TR). docs/protocols.md, "USAT through 27.007".

Profile storages (<profile_storage>, 27.007 section 12.2.1): 0 the TE profile (+CUSATW), 1 the MT profile (what the
CP's gateway carries out), 2 the MT default profile (the same: the CP has no other), 3 the profile last sent to the
card, 4 the card's EF_UST (TS 31.102 section 4.2.8, read from the USIM), 5 the MT-only facilities (the TE may
not take them).

The activation and the host's proactive session are one small state machine (`UsatState`, `TRANSITIONS`): a TR from
the host when no command waits for one, or a TR or envelope before activation, is +CME ERROR: 3 (operation not
allowed); a malformed hex string or BER-TLV +CME ERROR: 50; a read-only storage +CME ERROR: 3, the MT profile
(which 27.007 lets a TE write, and this MT does not) and activation 3 +CME ERROR: 4 (not supported), an unknown
storage or activation 50; the card absent 10, not started yet 14, refusing 13. Each refusal is an `at.final` event; the hand
over and the session end are `usat.*` events (trace/kinds.py).
"""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import TYPE_CHECKING

from bipsim.cp.card_driver import FileNotSelected
from bipsim.link.at_server import AtCommandError, AtServer, CmeError
from bipsim.link.at_syntax import AtArg, AtRequest, CommandKind
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from bipsim.uicc import terminal_profile as tp
from bipsim.uicc.cat import (
    EnvelopeTag,
    ProactiveCommand,
    decode_envelope,
    decode_terminal_response,
)
from bipsim.uicc.fs import USIM_AID
from bipsim.uicc.tlv import TlvError
from bipsim.uicc.transport import CardRemoved

if TYPE_CHECKING:
    from bipsim.cp.bip_service import BipService
    from bipsim.cp.commands import ModemCommands

CME_NOT_ALLOWED = 3
CME_NOT_SUPPORTED = 4
CME_SIM_NOT_INSERTED = 10
CME_SIM_FAILURE = 13
CME_SIM_BUSY = 14
CME_BAD_PARAMETERS = 50
HEX = frozenset("0123456789abcdefABCDEF")
STORAGES = (0, 1, 2, 3, 4, 5)  # <profile_storage>s (27.007 section 12.2.1)
SW_BUSY = 0x9300  # the toolkit is busy (TS 102 221 section 10.2.1.1): <busy> 1, the MT does not retry


class UsatState(Enum):
    INACTIVE = "inactive"  # no TE profile activated: the modem answers every proactive command itself
    ACTIVE = "active"  # the host takes the commands of its profile; none waits for its TR
    AWAITING_RESPONSE = "awaiting_response"  # a +CUSATP went out; the card waits for the host's +CUSATT


class UsatEvent(StrEnum):
    ACTIVATE = "activate"  # +CUSATA=1 or 2
    PROACTIVE = "proactive"  # the gateway handed a command over: +CUSATP
    RESPONSE = "response"  # +CUSATT reached the card
    CARD_GONE = "card_gone"  # the card went away: no TR is awaited from the host any more


TRANSITIONS: dict[tuple[UsatState, UsatEvent], UsatState] = {
    (UsatState.INACTIVE, UsatEvent.ACTIVATE): UsatState.ACTIVE,
    (UsatState.ACTIVE, UsatEvent.ACTIVATE): UsatState.ACTIVE,
    (UsatState.AWAITING_RESPONSE, UsatEvent.ACTIVATE): UsatState.AWAITING_RESPONSE,
    (UsatState.ACTIVE, UsatEvent.PROACTIVE): UsatState.AWAITING_RESPONSE,
    (UsatState.AWAITING_RESPONSE, UsatEvent.RESPONSE): UsatState.ACTIVE,
    # a new command while one waits: the card gave up on the old one (a reset, a REFRESH): the new one replaces it
    (UsatState.AWAITING_RESPONSE, UsatEvent.PROACTIVE): UsatState.AWAITING_RESPONSE,
    (UsatState.INACTIVE, UsatEvent.CARD_GONE): UsatState.INACTIVE,
    (UsatState.ACTIVE, UsatEvent.CARD_GONE): UsatState.ACTIVE,
    (UsatState.AWAITING_RESPONSE, UsatEvent.CARD_GONE): UsatState.ACTIVE,
}


class UsatStateError(Exception):
    def __init__(self, state: UsatState, event: UsatEvent) -> None:
        super().__init__(f"USAT: {event.value} in state {state.value}")
        self.state, self.event = state, event


def _hex_arg(args: tuple[AtArg, ...], index: int) -> bytes:
    """A <string type in hexadecimal character format> parameter: +CME ERROR: 50 unless it is one."""
    value = args[index] if index < len(args) else None
    if not isinstance(value, str) or len(value) % 2 or not set(value) <= HEX:
        raise CmeError(CME_BAD_PARAMETERS)
    return bytes.fromhex(value)


def _storage(args: tuple[AtArg, ...]) -> int:
    value = args[0]
    if not isinstance(value, int) or value not in range(6):
        raise CmeError(CME_BAD_PARAMETERS)
    return value


class UsatCommands:
    """The 27.007 section 12 command set (cp/command_sets.py). `core` gives the card driver and the servers."""

    def __init__(self, core: ModemCommands, tracer: Tracer, settings: dict[str, object]) -> None:
        self.core = core
        self.tracer = tracer
        self.state = UsatState.INACTIVE
        self.te_profile = b""
        self.mt_profile = tp.MODEM
        self.service: BipService | None = None
        self.pending: ProactiveCommand | None = None  # the command the host was handed and has not answered
        # the host took part in the card's current proactive session (a +CUSATP, or its envelope started one)
        self.host_in_session = False
        slot = core.slots.get(1)  # the toolkit's card: when it goes, no TR is awaited from the host any more
        if slot is not None:
            slot.listeners.append(lambda exc: self.card_gone())

    def card_gone(self) -> None:
        self.move(UsatEvent.CARD_GONE)
        self.pending = None
        self.host_in_session = False

    # --- wiring ------------------------------------------------------------------------------------------------

    def install(self, server: AtServer) -> None:
        async def cusatw(request: AtRequest) -> list[str] | None:
            try:
                return await self.cusatw(request)
            except _ConflictError as exc:  # the conflict goes out as information text before the error
                for line in exc.lines:
                    await server._write(server.format.info(line), Kind.AT_INFO, line)
                raise

        for name, handler in (
            ("+CUSATR", self.cusatr),
            ("+CUSATW", cusatw),
            ("+CUSATA", self.cusata),
            ("+CUSATT", self.cusatt),
            ("+CUSATE", self.cusate),
        ):
            server.register(name, handler)

    def forget(self, server: AtServer) -> None:
        """Nothing is kept per server: the activation belongs to the modem, as the card's profile does."""

    def attach_service(self, service: BipService) -> None:
        """The BIP service hands this set the commands its gateway gives the host (cp/modem.py wires it)."""
        self.service = service
        service.host = self.proactive
        service.session_ended = self.modem_ended_session

    def move(self, event: UsatEvent) -> None:
        """The only way the state changes (TRANSITIONS); raises UsatStateError."""
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise UsatStateError(self.state, event)
        self.state = nxt

    @property
    def uicc_profile(self) -> bytes:
        return self.core.driver.profile

    def host_commands(self) -> frozenset[int]:
        """The proactive commands the host takes: those its profile declares that the modem does not carry out."""
        return frozenset(
            command
            for command in tp.COMMAND_FACILITY
            if command not in tp.MODEM_COMMANDS and tp.supports_command(self.te_profile, command)
        )

    def _event(self, kind: Kind, summary: str, data: bytes | None, **fields: object) -> None:
        self.tracer.emit(Actor.CP, Actor.AP, Layer.APP, summary, data, kind=kind, fields=dict(fields))

    async def _urc(self, line: str) -> None:
        for server in list(self.core._servers):
            await server.send_urc(line)

    # --- the gateway's hand-over ---------------------------------------------------------------------------------

    async def proactive(self, command: ProactiveCommand) -> None:
        """+CUSATP: "<hex>" on every line the modem serves; the card's command waits for the host's +CUSATT."""
        data = command.encode()
        self.move(UsatEvent.PROACTIVE)
        self.pending = command
        self.host_in_session = True
        self._event(
            Kind.USAT_HANDOVER,
            f"to the host's toolkit: {command.type_name}",
            data,
            command=command.type_name,
            number=command.number,
            qualifier=command.qualifier,
        )
        await self._urc(f'+CUSATP: "{data.hex().upper()}"')

    async def modem_ended_session(self) -> None:
        """The modem's own TR ended the card's proactive session: +CUSATEND when the host took part in it."""
        if self.host_in_session:
            await self._session_end("")

    async def _session_end(self, command: str) -> None:
        self.host_in_session = False
        self._event(Kind.USAT_END, "proactive session ended", None, command=command)
        await self._urc("+CUSATEND")

    # --- the commands --------------------------------------------------------------------------------------------

    async def cusatr(self, request: AtRequest) -> list[str] | None:
        """+CUSATR[=<profile_storage>] (27.007 section 12.2.1)."""
        if request.kind is CommandKind.TEST:
            return ["+CUSATR: (0-5)"]
        if request.kind is CommandKind.READ:
            raise AtCommandError()
        storages: tuple[int, ...] = STORAGES
        if request.args:
            if len(request.args) > 1:
                raise CmeError(CME_BAD_PARAMETERS)
            storage = _storage(request.args)
            if storage not in STORAGES:
                raise CmeError(CME_BAD_PARAMETERS)
            storages = (storage,)
        profiles = {
            0: self.te_profile,
            1: self.mt_profile,
            2: tp.MODEM,
            3: self.uicc_profile,
            5: tp.MODEM,
        }
        if 4 in storages:
            profiles[4] = await self._ust()
        return [f'+CUSATR: {storage},"{profiles[storage].hex().upper()}"' for storage in storages]

    async def _ust(self) -> bytes:
        """EF_UST of the USIM (TS 31.102 section 4.2.8): SELECT the ADF by its AID, SELECT 6F38, READ BINARY."""
        slot = self.core.slots.get(1)
        if slot is not None and slot.absent:
            raise CmeError(CME_SIM_NOT_INSERTED)
        try:
            async with self.core.driver.file_session((USIM_AID, b"\x6f\x38"), "+CUSATR EF_UST") as ef:
                data, sw = await ef.read_binary()
        except FileNotSelected:
            raise CmeError(CME_SIM_FAILURE) from None
        except CardRemoved as exc:
            raise CmeError(CME_SIM_NOT_INSERTED) from exc
        if sw != 0x9000 and sw >> 8 != 0x91:
            raise CmeError(CME_SIM_FAILURE)
        return data

    async def cusatw(self, request: AtRequest) -> list[str] | None:
        """+CUSATW[=<profile_storage>[,<profile>]] (27.007 section 12.2.2): writes the TE profile (storage 0);
        one that claims a facility of the MT profile is refused with +CUSATW: 0,<conflict_profile> and +CME
        ERROR: 3. Without parameters the TE profile is cleared."""
        if request.kind is CommandKind.TEST:
            return ["+CUSATW: (0)"]
        if request.kind is CommandKind.READ:
            raise AtCommandError()
        if not request.args:
            self.te_profile = b""
            return None
        if len(request.args) > 2:
            raise CmeError(CME_BAD_PARAMETERS)
        storage = _storage(request.args)
        if storage == 1:
            raise CmeError(CME_NOT_SUPPORTED)  # 27.007 lets a TE narrow the MT profile; this MT does not
        if storage != 0:
            raise CmeError(CME_NOT_ALLOWED)  # the MT default, the card's profiles: read-only by definition
        profile = _hex_arg(request.args, 1) if len(request.args) > 1 else b""
        if len(profile) > 255:
            raise CmeError(CME_BAD_PARAMETERS)
        clash = tp.conflicts(self.mt_profile, profile)
        if any(clash):
            raise _ConflictError([f'+CUSATW: 0,"{clash.hex().upper()}"'])
        self.te_profile = profile
        return None

    async def cusata(self, request: AtRequest) -> list[str] | None:
        """+CUSATA[=<activation>] (27.007 section 12.2.3): 0 the status only, 1 the host takes the commands of
        its profile, 2 the same and the merged profile goes to the card (a new TERMINAL PROFILE). Answered
        +CUSATA: <UICC_state>,<additional_profile_support>."""
        if request.kind is CommandKind.TEST:
            return ["+CUSATA: (0-2)"]
        activation = 0
        if request.kind is CommandKind.SET and request.args:
            value = request.args[0]
            if len(request.args) > 1 or not isinstance(value, int) or value not in range(4):
                raise CmeError(CME_BAD_PARAMETERS)
            if value == 3:  # an activation value of later 27.007 releases: not supported here
                raise CmeError(CME_NOT_SUPPORTED)
            activation = value
        if activation:
            await self._activate(activation)
        return [f"+CUSATA: {self._uicc_state()},1"]

    def _uicc_state(self) -> int:
        """<UICC_state>: 0 unknown (no card), 1 start-up before the profile download, 4 ready."""
        slot = self.core.slots.get(1)
        if slot is not None and slot.absent:
            return 0
        return 4 if self.core.driver.started.is_set() else 1

    async def _activate(self, activation: int) -> None:
        if not self.te_profile:
            raise CmeError(CME_NOT_ALLOWED)  # nothing to activate: write the TE profile first (+CUSATW=0,...)
        slot = self.core.slots.get(1)
        if slot is not None and slot.absent:
            raise CmeError(CME_SIM_NOT_INSERTED)
        driver = self.core.driver
        if activation == 2:
            if not driver.started.is_set():
                raise CmeError(CME_SIM_BUSY)
            profile = tp.merge(self.mt_profile, self.te_profile)
            try:
                sw = await driver.send_profile(profile)
            except CardRemoved as exc:
                raise CmeError(CME_SIM_NOT_INSERTED) from exc
            if sw != 0x9000 and sw >> 8 != 0x91:
                raise CmeError(CME_SIM_FAILURE)
            driver.profile = profile  # what the card now knows (storage 3)
        self.move(UsatEvent.ACTIVATE)
        commands = self.host_commands()
        if self.service is not None:
            self.service.gateway.host_commands = commands
            self.service.wake()  # a card that answered the new profile with 91 xx has a command now
        self._event(
            Kind.USAT_ACTIVATE,
            f"host toolkit active ({len(commands)} commands)",
            None,
            activated=activation,
            commands=sorted(commands),
        )
        if (
            self.pending is not None
        ):  # a host that came back (a new line session) gets the command still waiting
            await self._urc(f'+CUSATP: "{self.pending.encode().hex().upper()}"')

    async def cusatt(self, request: AtRequest) -> list[str] | None:
        """+CUSATT=<terminal_response> (27.007 section 12.2.4): the host's TR for the command of its +CUSATP."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is not CommandKind.SET or len(request.args) != 1:
            raise CmeError(CME_BAD_PARAMETERS)
        data = _hex_arg(request.args, 0)
        try:
            response = decode_terminal_response(data)
        except TlvError as exc:
            raise CmeError(CME_BAD_PARAMETERS) from exc
        if self.state is not UsatState.AWAITING_RESPONSE:
            raise CmeError(CME_NOT_ALLOWED)
        pending = self.pending
        if pending is not None and (response.number, response.type) != (pending.number, pending.type):
            raise CmeError(CME_BAD_PARAMETERS)  # not the TR of the command the host was given
        driver = self.core.driver
        try:
            sw = await driver.terminal_response(response)
        except CardRemoved as exc:
            self.card_gone()
            raise CmeError(CME_SIM_NOT_INSERTED) from exc
        self.move(UsatEvent.RESPONSE)
        self.pending = None
        if sw != 0x9000 and sw >> 8 != 0x91:
            raise CmeError(CME_SIM_FAILURE)
        if sw == 0x9000:  # no further command: the proactive session has ended (27.007 section 12.2.4)
            await self._session_end(response.type_name)
        elif self.service is not None:
            self.service.wake()
        return None

    async def cusate(self, request: AtRequest) -> list[str] | None:
        """+CUSATE=<envelope_command> (27.007 section 12.2.5): answered +CUSATE: <envelope_response>,<busy> and
        +CUSATE2: <sw1>,<sw2>."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is not CommandKind.SET or len(request.args) != 1:
            raise CmeError(CME_BAD_PARAMETERS)
        data = _hex_arg(request.args, 0)
        try:
            envelope = decode_envelope(data)
        except TlvError as exc:
            raise CmeError(CME_BAD_PARAMETERS) from exc
        if self.state is UsatState.INACTIVE:
            raise CmeError(CME_NOT_ALLOWED)
        driver = self.core.driver
        if not driver.started.is_set():
            raise CmeError(CME_SIM_BUSY)
        try:
            name = EnvelopeTag(envelope.tag).name.replace("_", " ")
        except ValueError:
            name = f"0x{envelope.tag:02X}"
        try:
            answer, sw = await driver.envelope(envelope, f"ENVELOPE: {name} (host)")
        except CardRemoved as exc:
            raise CmeError(CME_SIM_NOT_INSERTED) from exc
        if sw >> 8 == 0x91 and self.service is not None:
            self.host_in_session = True  # the card's answer to the host's envelope is a proactive session
            self.service.wake()
        busy = 1 if sw == SW_BUSY else 0
        return [f'+CUSATE: "{answer.hex().upper()}",{busy}', f"+CUSATE2: {sw >> 8},{sw & 0xFF}"]


class _ConflictError(CmeError):
    """+CME ERROR: 3 after the conflict lines of +CUSATW."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(CME_NOT_ALLOWED)
        self.lines = lines
