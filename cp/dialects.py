"""Vendor AT dialects (`bipsim cp --dialect generic|quectel|simcom|ublox|telit|fibocom|sierra|dell`, docs/protocols.md "Vendor
dialects"): real modems answer the same 3GPP TS 27.007 commands in their own ways, and host software (lpac, ModemManager
plugins, vendor scripts) picks its code path by what the modem says it is. Each dialect is one table row, `Dialect`,
citing the public AT manual it follows: identification (+CGMI/+CGMM/+CGMR and their V.250 +GMx twins, ATI), the
+CCHO/+CCHC/+CGLA quirks hosts must cope with, the vendor's SIM-state URCs and their switch, the ICCID command, the
+QCFG-style settings hosts probe, the boot URCs a freshly opened line shows, and the default echo/verbose/quiet
settings (V.250 section 6.2: E, V, Q), applied when the line opens and again on Z / &F.

The logical-channel quirks (3GPP TS 27.007 sections 8.43, 8.45, 8.46) are those lpac's AT driver meets: test forms
answered ERROR (lpac issues #300, #139), +CCHO/+CGLA answered with a bare value and no "+CCHO: " prefix (Fibocom
FM350-GL, lpac issues #179, #209 and pull requests #427, #445), a session id that is a long hex handle rather than a
small number (Sierra MC7455, lpac issues #138, #139), and no logical-channel commands at all, so that a host must
send MANAGE CHANNEL and its APDUs through +CSIM (Dell DW5821e, lpac issue #164).

The set is installed LAST (cp/command_sets.py), so it replaces core handlers (identification) and wraps others (the
test forms of +CCHO, +CCHC, +CGLA). "generic" is the 27.007 modem of cp/commands.py unchanged. The identification strings are those
of one typical module of each manual; the card's answers (ICCID, presence) are the simulated card's own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import trio

from bipsim import __version__
from bipsim.cp.card_driver import FileNotSelected
from bipsim.cp.card_slot import Change
from bipsim.link.at_server import AtCommandError, AtServer, CmeError
from bipsim.link.at_syntax import AtRequest, CommandKind
from bipsim.uicc.phonebook import decode_bcd

if TYPE_CHECKING:
    from bipsim.cp.card_slot import CardSlot
    from bipsim.cp.commands import ModemCommands
    from bipsim.trace.recorder import Tracer

CME_SIM_NOT_INSERTED = 10
CME_SIM_FAILURE = 13
CME_INVALID_INDEX = 21
CME_BAD_PARAMETERS = 50


@dataclass(frozen=True)
class SimStatus:
    """A vendor's SIM-state report: `command` switches its URC on (`<n>` in `modes`, off by default unless
    `always`) and reads `read` ({mode}, {status}); the URC is `urc` ({status}); `present`/`absent` are the status
    values of a card that is there / gone."""

    command: str | None
    urc: str
    present: str
    absent: str
    read: str = ""
    modes: tuple[int, ...] = (0, 1)
    always: bool = False


@dataclass(frozen=True)
class Dialect:
    name: str
    manual: str  # the public AT manual this row follows: title, version
    manufacturer: str
    model: str
    revision: str
    ati: tuple[str, ...]  # ATI's lines; {manufacturer} {model} {revision} {imei} are filled in
    cgmr_prefix: str = ""  # some answer +CGMR with a "+CGMR: " prefix
    echo: bool = True  # E1 after power-on / Z / &F (V.250 6.2.4 default)
    verbose: bool = True  # V1 (V.250 6.2.6 default)
    quiet: bool = False  # Q0 (V.250 6.2.5 default)
    no_test_forms: tuple[
        str, ...
    ] = ()  # of +CCHO, +CCHC, +CGLA: test forms answered ERROR (the commands work)
    bare_uicc_answers: bool = False  # +CCHO / +CGLA answered without their "+CCHO: " / "+CGLA: " prefix
    session_handles: bool = False  # +CCHO's <sessionid> is a 16-digit hex handle, which +CGLA/+CCHC then take
    csim_only: bool = (
        False  # no +CCHO/+CCHC/+CGLA (ERROR): a host opens channels with MANAGE CHANNEL over +CSIM
    )
    boot_urcs: tuple[str, ...] = ()  # what a freshly opened line shows before the first command
    sim_status: SimStatus | None = None
    iccid_command: str | None = None  # its answer is "<iccid_prefix><ICCID>"
    iccid_prefix: str = ""
    settings_command: str | None = None  # a +QCFG-style "<name>"[,<value>...] settings command
    settings: dict[str, str] = field(
        default_factory=dict
    )  # its names and their values as the read answers them


DIALECTS: dict[str, Dialect] = {
    "generic": Dialect(
        "generic",
        "3GPP TS 27.007 V17.7.0 (the standard itself; bipsim's own identification)",
        "bipsim",
        "bipsim CP (dual-processor modem simulator)",
        __version__,
        ("Manufacturer: {manufacturer}", "Model: {model}", "Revision: {revision}", "IMEI: {imei}"),
    ),
    "quectel": Dialect(
        "quectel",
        "Quectel EC2x&EG9x&EG2x-G&EM05 Series AT Commands Manual V2.0",
        "Quectel",
        "EC25",
        "EC25EFAR06A06M4G",
        (
            "{manufacturer}",
            "{model}",
            "Revision: {revision}",
        ),  # manual 2.1: <manufacturer> <objectID> Revision:
        # lpac issue #300: a Quectel EM05-G answers ERROR to AT+CCHO=?, AT+CCHC=?, AT+CGLA=? yet runs the commands
        no_test_forms=("+CCHO", "+CCHC", "+CGLA"),
        boot_urcs=("RDY", "+CPIN: READY", "+QUSIM: 1", "+QIND: SMS DONE", "+QIND: PB DONE"),
        # AT+QSIMSTAT=<enable>: "+QSIMSTAT: <enable>,<inserted_status>" (read and URC), 1 inserted, 0 removed
        sim_status=SimStatus(
            "+QSIMSTAT", "+QSIMSTAT: 1,{status}", "1", "0", read="+QSIMSTAT: {mode},{status}"
        ),
        iccid_command="+QCCID",
        iccid_prefix="+QCCID: ",
        settings_command="+QCFG",
        settings={"usbnet": "0", "nwscanmode": "0", "iotopmode": "2", "risignaltype": '"respective"'},
    ),
    "simcom": Dialect(
        "simcom",
        "SIMCom SIM7500_SIM7600 Series AT Command Manual V2.00 (2020-08-06)",
        "SIMCOM INCORPORATED",
        "SIMCOM_SIM7600E-H",
        "LE20B04SIM7600M22",
        (
            "Manufacturer: {manufacturer}",
            "Model: {model}",
            "Revision: {revision}",
            "IMEI: {imei}",
            "+GCAP: +CGSM",
        ),
        cgmr_prefix="+CGMR: ",
        boot_urcs=("RDY", "+CPIN: READY", "SMS DONE", "PB DONE"),
        # no switch: a card pulled is "+SIMCARD: NOT AVAILABLE", one back "+CPIN: READY"
        sim_status=SimStatus(None, "{status}", "+CPIN: READY", "+SIMCARD: NOT AVAILABLE", always=True),
        iccid_command="+CICCID",
        iccid_prefix="+ICCID: ",
    ),
    "ublox": Dialect(
        "ublox",
        "u-blox SARA-R4 series AT commands manual UBX-17003787",
        "u-blox",
        "SARA-R410M-02B",
        "L0.0.00.00.05.08",
        ("Manufacturer: {manufacturer}", "Model: {model}", "Revision: {revision}", "IMEI: {imei}"),
        # AT+USIMSTAT=<mode>: "+UUSIMSTAT: <state>", 0 SIM card not present, 6 (U)SIM operational
        sim_status=SimStatus("+USIMSTAT", "+UUSIMSTAT: {status}", "6", "0", read="+USIMSTAT: {mode}"),
        iccid_command="+CCID",
        iccid_prefix="+CCID: ",
        settings_command="+UMNOPROF",
    ),
    "telit": Dialect(
        "telit",
        "Telit LE910Cx AT Commands Reference Guide 80502ST10950A",
        "Telit",
        "LE910C1-EU",
        "25.21.660",
        ("{manufacturer}",),
        # AT#QSS=<mode>: "#QSS: <mode>,<status>" read, URC "#QSS: <status>"; 0 not inserted, 1 inserted
        sim_status=SimStatus("#QSS", "#QSS: {status}", "1", "0", read="#QSS: {mode},{status}"),
        iccid_command="#CCID",
        iccid_prefix="#CCID: ",
    ),
    # The three rows below follow the public record of what hosts meet (lpac's issues), not a full vendor manual:
    # the identification strings are those the modules answer in published transcripts. Like the rows above, they
    # keep V.250's E1 V1 Q0: no source a row cites states other factory settings for its module.
    "fibocom": Dialect(
        "fibocom",
        "Fibocom FM350-GL as lpac issues #179 and #209 record it (AT+CCHO and AT+CGLA answered bare)",
        "Fibocom Wireless Inc.",
        "FM350-GL",
        "81600.0000.00.29.22.40",
        ("Manufacturer: {manufacturer}", "Model: {model}", "Revision: {revision}", "IMEI: {imei}"),
        # lpac #209 / #427: AT+CCHO="A0000005591010FFFFFFFF8900000100" answers "1" then OK; #179: +CGLA likewise
        bare_uicc_answers=True,
    ),
    "sierra": Dialect(
        "sierra",
        "Sierra Wireless MC7455 / EM7590 as lpac issues #138 and #139 record them (hex session handles)",
        "Sierra Wireless, Incorporated",
        "MC7455",
        "SWI9X30C_02.24.05.06",
        (
            "Manufacturer: {manufacturer}",
            "Model: {model}",
            "Revision: {revision}",
            "IMEI: {imei}",
            "+GCAP: +CGSM",
        ),
        # lpac #138: AT+CCHO=... answers "+CCHO: 000000000385a7cf", a handle, not a channel number;
        # lpac #139: an EM7590 runs AT+CGLA=... but answers AT+CGLA=? ERROR
        session_handles=True,
        no_test_forms=("+CGLA",),
    ),
    "dell": Dialect(
        "dell",
        "Dell DW5821e as lpac issue #164 records it (AT+CSIM only: no +CCHO, +CCHC, +CGLA)",
        "Dell Inc.",
        "DW5821e Snapdragon X20 LTE",
        "T77W968.F1.0.0.4.0.GC.009",
        ("Manufacturer: {manufacturer}", "Model: {model}", "Revision: {revision}", "IMEI: {imei}"),
        # lpac #164: the host opens a channel with AT+CSIM=10,"0070000000" (MANAGE CHANNEL open; its answer
        # carries the channel number) and closes channel 1 with AT+CSIM=10,"0070800100"
        csim_only=True,
    ),
}

# Sierra's handles look like a pointer the firmware hands out (lpac #138: 000000000385a7cf); ours are this base
# plus the core's session number, so they are unique per modem and never all decimal digits.
HANDLE_BASE = 0x0385A7C0


def dialect_names() -> list[str]:
    return list(DIALECTS)


class DialectCommands:
    """The command set of one dialect (cp/command_sets.py, installed last)."""

    def __init__(self, core: ModemCommands, tracer: Tracer, dialect: Dialect) -> None:
        self.core = core
        self.tracer = tracer
        self.dialect = dialect
        self.status_mode = 0  # the SIM-state URC switch (AT+QSIMSTAT=1...), per modem
        self.settings = dict(dialect.settings)
        if dialect.sim_status is not None:
            for slot in core.slots.values():
                if slot.number == 1:
                    slot.change_listeners.append(self._presence_changed)

    # --- installation ---------------------------------------------------------------------------------------------

    def install(self, server: AtServer) -> None:
        dialect = self.dialect
        if dialect.name == "generic":
            return  # the core's answers are the standard's
        for name in ("+CGMI", "+GMI"):
            server.register(name, self._fixed(dialect.manufacturer))
        for name in ("+CGMM", "+GMM"):
            server.register(name, self._fixed(dialect.model))
        for name in ("+CGMR", "+GMR"):
            server.register(name, self._fixed(dialect.cgmr_prefix + dialect.revision))
        server.register("I", self.ati)
        self._wrap_uicc(server)
        if dialect.sim_status is not None and dialect.sim_status.command is not None:
            server.register(dialect.sim_status.command, self.sim_status)
        if dialect.iccid_command is not None:
            server.register(dialect.iccid_command, self._on_slot(server, self.iccid))
        if dialect.settings_command is not None:
            server.register(dialect.settings_command, self.vendor_settings)
        self._defaults(server)
        server.default_echo = dialect.echo
        server.reset_hooks.append(lambda: self._defaults(server))
        if dialect.boot_urcs and getattr(server.stream, "dlci", None) is None:
            # the plain line (not a CMUX DLC): what the module shows when its port comes up, in order

            async def boot(_: str) -> None:
                for urc in dialect.boot_urcs:
                    await server.send_urc(urc)

            self._spawn(boot, "")

    def forget(self, server: AtServer) -> None:
        pass  # nothing is kept per server

    def _defaults(self, server: AtServer) -> None:
        """The dialect's E/V/Q: when the line opens and after Z / &F (which first restore V.250's)."""
        dialect = self.dialect
        server.echo, server.format.verbose, server.format.quiet = dialect.echo, dialect.verbose, dialect.quiet

    @staticmethod
    def _spawn(send: Callable[[str], Awaitable[None]], line: str) -> None:
        try:
            trio.lowlevel.spawn_system_task(send, line)
        except RuntimeError:
            pass  # no trio run (a sans-IO test): nobody to tell

    def _fixed(self, text: str) -> Callable[[AtRequest], Awaitable[list[str] | None]]:
        async def answer(request: AtRequest) -> list[str] | None:
            if request.kind is CommandKind.TEST:
                return []
            if request.kind is not CommandKind.EXEC:
                raise AtCommandError()
            return [text]

        return answer

    async def ati(self, request: AtRequest) -> list[str] | None:
        from bipsim.cp.commands import IMEI

        d = self.dialect
        return [
            line.format(manufacturer=d.manufacturer, model=d.model, revision=d.revision, imei=IMEI)
            for line in d.ati
        ]

    def _wrap_uicc(self, server: AtServer) -> None:
        """The logical-channel commands as the vendor answers them: absent (ERROR, as any unknown command), or
        wrapped by _uicc_quirks."""
        for name in ("+CCHO", "+CCHC", "+CGLA"):
            inner = server.handlers.get(name)
            if inner is None:
                continue
            if self.dialect.csim_only:
                del server.handlers[name]  # the AT server answers an unknown command ERROR (V.250 5.7.1)
                continue
            server.register(name, self._uicc_quirks(name, inner))

    @staticmethod
    def handle_of(session: int) -> str:
        """The hex handle a `session_handles` dialect shows for the core's session number."""
        return f"{HANDLE_BASE + session:016x}"

    @staticmethod
    def session_of(handle: object) -> int:
        """The core's session number of a handle; one this modem never gave is +CME ERROR: 21 (invalid index, as
        the core answers an unknown session id, 27.007 8.46)."""
        text = str(handle)  # an all-digit handle was parsed as a number: its digits are still the handle's
        if len(text) != 16:
            raise CmeError(CME_INVALID_INDEX)
        try:
            session = int(text, 16) - HANDLE_BASE
        except ValueError:
            raise CmeError(CME_INVALID_INDEX) from None
        if session <= 0:
            raise CmeError(CME_INVALID_INDEX)
        return session

    def _uicc_quirks(
        self, name: str, inner: Callable[[AtRequest], Awaitable[list[str] | None]]
    ) -> Callable[[AtRequest], Awaitable[list[str] | None]]:
        dialect = self.dialect

        prefix = name + ": "

        async def answer(request: AtRequest) -> list[str] | None:
            if request.kind is CommandKind.TEST and name in dialect.no_test_forms:
                raise AtCommandError()
            if (
                dialect.session_handles
                and name != "+CCHO"
                and request.kind is CommandKind.SET
                and request.args
            ):
                session = self.session_of(request.args[0])
                request = replace(request, args=(session, *request.args[1:]))
            lines = await inner(request)
            if request.kind is not CommandKind.SET or not lines:
                return lines
            if dialect.session_handles and name == "+CCHO":
                lines = [prefix + self.handle_of(int(line[len(prefix) :])) for line in lines]
            if dialect.bare_uicc_answers and name in ("+CCHO", "+CGLA"):
                lines = [line.removeprefix(prefix) for line in lines]
            return lines

        return answer

    def _on_slot(
        self, server: AtServer, handler: Callable[[AtRequest, CardSlot], Awaitable[list[str] | None]]
    ) -> Callable[[AtRequest], Awaitable[list[str] | None]]:
        async def call(request: AtRequest) -> list[str] | None:
            slot = self.core.slots[self.core._slot_of.get(server, 1)]
            if request.kind is CommandKind.TEST:
                return []
            return await self.core._with_card(slot, lambda: handler(request, slot))

        return call

    # --- vendor commands ------------------------------------------------------------------------------------------

    async def iccid(self, request: AtRequest, slot: CardSlot) -> list[str] | None:
        """The vendor's ICCID command: EF_ICCID read from the card (SELECT 2FE2 under the MF, READ BINARY)."""
        if request.kind is not CommandKind.EXEC:
            raise AtCommandError()
        try:
            async with slot.driver.file_session((b"\x3f\x00", b"\x2f\xe2"), "ICCID") as ef:
                data, sw = await ef.read_binary(0, 10)
        except FileNotSelected:
            raise CmeError(CME_SIM_FAILURE) from None
        if sw != 0x9000 and sw >> 8 != 0x91:
            raise CmeError(CME_SIM_FAILURE)
        # EF_ICCID (TS 102 221 13.2): nibble-swapped BCD up to its 'F' padding
        return [self.dialect.iccid_prefix + decode_bcd(data)]

    def _status_value(self) -> str:
        status = self.dialect.sim_status
        assert status is not None
        return status.absent if self.core.slots[1].absent else status.present

    async def sim_status(self, request: AtRequest) -> list[str] | None:
        status = self.dialect.sim_status
        assert status is not None
        if request.kind is CommandKind.TEST:
            return [f"{status.command}: ({','.join(str(m) for m in status.modes)})"]
        if request.kind is CommandKind.READ:
            return [status.read.format(mode=self.status_mode, status=self._status_value())]
        if request.kind is not CommandKind.SET or len(request.args) != 1:
            raise CmeError(CME_BAD_PARAMETERS)
        mode = request.args[0]
        if not isinstance(mode, int) or mode not in status.modes:
            raise CmeError(CME_BAD_PARAMETERS)
        self.status_mode = mode
        return []

    def _presence_changed(self, change: Change) -> None:
        """Slot 1's card went or came back: the vendor's URC on every line, when switched on."""
        status = self.dialect.sim_status
        if status is None or change is Change.NONE or not (status.always or self.status_mode):
            return
        value = status.absent if change is Change.REMOVED else status.present
        for server in list(self.core._servers):
            self._spawn(server.send_urc, status.urc.format(status=value))

    async def vendor_settings(self, request: AtRequest) -> list[str] | None:
        """A +QCFG-style command: AT+QCFG="<name>" reads one setting, AT+QCFG="<name>",<value>... sets it; an
        unknown name is +CME ERROR: 50. Without names (u-blox +UMNOPROF) it is one value read and set."""
        command = self.dialect.settings_command
        assert command is not None
        if not self.settings:  # a single-valued command such as +UMNOPROF
            if request.kind is CommandKind.TEST:
                return [f"{command}: (0-100)"]
            if request.kind is CommandKind.READ:
                return [f"{command}: {self.settings_single}"]
            if (
                request.kind is CommandKind.SET
                and len(request.args) == 1
                and isinstance(request.args[0], int)
            ):
                self.settings_single = request.args[0]
                return []
            raise CmeError(CME_BAD_PARAMETERS)
        if request.kind is CommandKind.TEST:
            return [f'{command}: "{name}"' for name in self.settings]
        if request.kind is not CommandKind.SET or not request.args or not isinstance(request.args[0], str):
            raise CmeError(CME_BAD_PARAMETERS)
        name = request.args[0].lower()
        if name not in self.settings:
            raise CmeError(CME_BAD_PARAMETERS)
        if len(request.args) == 1:
            return [f'{command}: "{name}",{self.settings[name]}']
        values = []
        for value in request.args[1:]:
            if value is None:
                raise CmeError(CME_BAD_PARAMETERS)
            values.append(f'"{value}"' if isinstance(value, str) else str(value))
        self.settings[name] = ",".join(values)
        return []

    settings_single = 100  # u-blox +UMNOPROF: 100 (the manual's "standard Europe"), settable


def dialect_set(core: ModemCommands, tracer: Tracer, settings: dict[str, object]) -> DialectCommands:
    """The command set of `settings["dialect"]` (`bipsim cp --dialect`; "generic" when not given)."""
    name = settings.get("dialect", "generic")
    if not isinstance(name, str) or name not in DIALECTS:
        raise ValueError(f"dialect {name!r}: use one of {', '.join(DIALECTS)}")
    return DialectCommands(core, tracer, DIALECTS[name])
