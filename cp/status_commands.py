"""The ME status commands of 3GPP TS 27.007 that real host stacks poll (issue 16 item 8), answered from the network
model (cp/network.py) and the simulated phone's own state.

- +CCLK (8.15): the ME's clock, the network's time (NITZ) unless the TE set it; "yy/MM/dd,hh:mm:ss±zz" in local
  time with the zone in quarter hours. +CTZU (8.40) makes the clock's zone follow the network's, +CTZR (8.41)
  reports a network time zone change as +CTZV: <tz> (1) or +CTZE: <tz>,<dst>,<time> (2).
- +CBC (8.4): battery charge of the simulated phone (`set_battery`), <bcs> 0 on battery or 1 charging.
- +CEER (6.10): the text of the last failure or end of a call or context activation.
- +CIND (8.9) / +CMER (8.10): the indicators battchg, signal, service, call, roam, smsfull, message, callsetup;
  +CIEV: <ind>,<value> URCs for changes when +CMER's <ind> asks, buffered in the MT under <mode> 0.
- +CESQ (8.69): the serving E-UTRAN cell's RSRQ and RSRP (GSM and UTRAN fields "not known").
- +WS46 (5.9): the wireless network the ME may use.
- +CPSB (7.29): the current packet switched bearer of each active context, +CPSB URCs when asked.
- +CUSD (7.15): USSD to the network's service (net/ussd.py), the answer as a +CUSD URC after the OK, strings in
  the +CSCS set.
- +CLAC (8.37): every command this line answers.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import trio

from bipsim.cp.commands import CME_BAD_PARAMETERS, CME_NO_SERVICE, CME_NOT_ALLOWED, ModemCommands
from bipsim.cp.network import PdpContext, RegStatus
from bipsim.link.at_server import AtCommandError, AtServer, CmeError, Handler
from bipsim.link.at_syntax import AtArg, AtRequest, CommandKind
from bipsim.net.ussd import UssdResult
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer

# +CIND indicators in their order (27.007 8.9) and ranges
INDICATORS: tuple[tuple[str, int], ...] = (
    ("battchg", 5),
    ("signal", 5),
    ("service", 1),
    ("call", 1),
    ("roam", 1),
    ("smsfull", 1),
    ("message", 1),
    ("callsetup", 3),
)
INDICATOR_INDEX = {name: index + 1 for index, (name, _) in enumerate(INDICATORS)}
CMER_BUFFER = 32  # +CIEV held in the MT under <mode> 0: the oldest dropped past this
WS46_MODES = (12, 22, 25, 28, 29, 30, 31)  # 27.007 5.9 <n>: GERAN, UTRAN, E-UTRAN and their unions
# +CPSB <curr_bearer> by the network's <AcT> (27.007 7.29): 1 GPRS, 2 EGPRS, 3 UMTS, 6 HSPA, 7 EPS
PSB_BEARER = {0: 1, 1: 1, 3: 2, 2: 3, 4: 3, 5: 3, 6: 6, 7: 7}
USSD_DCS = 15  # TS 23.038 5: GSM 7-bit default alphabet, language unspecified
BATTERY_LEVEL = 100


def _int(args: tuple[AtArg, ...], index: int, low: int, high: int, default: int | None = None) -> int:
    value = args[index] if index < len(args) else None
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or not low <= value <= high:
        raise CmeError(CME_BAD_PARAMETERS)
    return value


def format_zone(quarters: int) -> str:
    """±zz, two digits (27.007 8.15, 8.41)."""
    return f"{'-' if quarters < 0 else '+'}{abs(quarters):02d}"


class StatusCommands:
    """The command set (cp/command_sets.py); its state is the modem's, the URC settings each line's."""

    def __init__(
        self, core: ModemCommands, tracer: Tracer, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.core = core
        self.network = core.network
        self.tracer = tracer
        self.clock = clock or (lambda: datetime.now(UTC))
        self.clock_offset = timedelta()  # what +CCLK= set, against the network's time
        self.zone = self.network.time_zone  # the clock's zone in quarter hours
        self.ctzu = 0
        self.battery_level = BATTERY_LEVEL
        self.charging = False
        self.held: dict[str, int] = {"call": 0, "smsfull": 0, "message": 0, "callsetup": 0}
        self.ws46 = 25
        self._last = self._values()
        self.cmer: dict[AtServer, tuple[int, int]] = {}  # line -> (<mode>, <ind>)
        self.ciev_buffers: dict[AtServer, list[str]] = {}
        self.ctzr: dict[AtServer, int] = {}
        self.cpsb: dict[AtServer, int] = {}
        self.cusd: dict[AtServer, int] = {}
        self.network.listeners.append(lambda status: self.refresh())
        self.network.time_listeners.append(self._time_zone_changed)
        self.network.deactivation_listeners.append(self._context_ended)

    def install(self, server: AtServer) -> None:
        for name, handler in {
            "+CCLK": self.cclk,
            "+CBC": self.cbc,
            "+CEER": self.ceer,
            "+CIND": self.cind,
            "+CESQ": self.cesq,
            "+WS46": self.ws46_command,
        }.items():
            server.register(name, handler)
        for name, line_handler in {
            "+CMER": self.cmer_command,
            "+CTZU": self.ctzu_command,
            "+CTZR": self.ctzr_command,
            "+CPSB": self.cpsb_command,
            "+CUSD": self.cusd_command,
            "+CLAC": self.clac,
        }.items():
            server.register(name, self._bind(line_handler, server))

    @staticmethod
    def _bind(handler: Callable[[AtRequest, AtServer], list[str] | None], server: AtServer) -> Handler:
        async def call(request: AtRequest) -> list[str] | None:
            return handler(request, server)

        return call

    def forget(self, server: AtServer) -> None:
        self.cmer.pop(server, None)
        self.ciev_buffers.pop(server, None)
        for table in (self.ctzr, self.cpsb, self.cusd):
            table.pop(server, None)

    def _urc(self, server: AtServer, lines: list[str]) -> None:
        """URCs to one line in their order (one task: trio does not keep the order of tasks spawned together)."""

        async def send() -> None:
            for line in lines:
                await server.send_urc(line)

        try:
            trio.lowlevel.spawn_system_task(send)
        except RuntimeError:
            pass  # no trio run (the network model driven alone): nobody to tell

    # --- clock and time zone -----------------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The ME clock in its local time."""
        return self.clock() + self.clock_offset + timedelta(minutes=15 * self.zone)

    async def cclk(self, request: AtRequest) -> list[str] | None:
        """+CCLK="yy/MM/dd,hh:mm:ss±zz" (27.007 8.15)."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is CommandKind.READ:
            return [f'+CCLK: "{self.now():%y/%m/%d,%H:%M:%S}{format_zone(self.zone)}"']
        if request.kind is not CommandKind.SET or len(request.args) != 1:
            raise AtCommandError()
        text = str(request.args[0])
        try:
            local = datetime.strptime(text[:17], "%y/%m/%d,%H:%M:%S").replace(tzinfo=UTC)
            zone = int(text[17:]) if text[17:] else self.zone
        except ValueError as exc:
            raise CmeError(CME_BAD_PARAMETERS) from exc
        if not -48 <= zone <= 56 or text[17:18] not in ("", "+", "-"):
            raise CmeError(CME_BAD_PARAMETERS)
        self.zone = zone
        self.clock_offset = local - timedelta(minutes=15 * zone) - self.clock()
        return None

    def ctzu_command(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CTZU=<onoff> (27.007 8.40): the clock's zone follows the network's (NITZ) time zone."""
        if request.kind is CommandKind.TEST:
            return ["+CTZU: (0,1)"]
        if request.kind is CommandKind.READ:
            return [f"+CTZU: {self.ctzu}"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        self.ctzu = _int(request.args, 0, 0, 1)
        return None

    def ctzr_command(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CTZR=<reporting> (27.007 8.41): 0 off, 1 +CTZV: <tz>, 2 +CTZE: <tz>,<dst>,<time>."""
        if request.kind is CommandKind.TEST:
            return ["+CTZR: (0-2)"]
        if request.kind is CommandKind.READ:
            return [f"+CTZR: {self.ctzr.get(server, 0)}"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        self.ctzr[server] = _int(request.args, 0, 0, 2)
        return None

    def _time_zone_changed(self, quarters: int, dst: int) -> None:
        if self.ctzu:
            self.zone = quarters
        self.tracer.emit(
            Actor.NET,
            Actor.CP,
            Layer.APP,
            f"NITZ: time zone {format_zone(quarters)} quarter hours, DST {dst} h",
            kind=Kind.NITZ,
            fields={"tz": quarters, "dst": dst},
        )
        local = self.clock() + self.clock_offset + timedelta(minutes=15 * quarters)
        for server, reporting in list(self.ctzr.items()):
            if reporting == 1:
                self._urc(server, [f'+CTZV: "{format_zone(quarters)}"'])
            elif reporting == 2:
                self._urc(server, [f'+CTZE: "{format_zone(quarters)}",{dst},"{local:%Y/%m/%d,%H:%M:%S}"'])

    # --- battery, cause ------------------------------------------------------------------------------------------

    def set_battery(self, level: int, charging: bool = False) -> None:
        """The simulated phone's battery (a test, a scenario): +CBC answers it, battchg follows it."""
        if not 0 <= level <= 100:
            raise ValueError(f"battery level {level} %: 0..100")
        self.battery_level, self.charging = level, charging
        self.refresh()

    async def cbc(self, request: AtRequest) -> list[str] | None:
        """+CBC (27.007 8.4): <bcs> (0 powered by the battery, 1 charging), <bcl> percent."""
        if request.kind is CommandKind.TEST:
            return ["+CBC: (0,1),(0-100)"]
        if request.kind is not CommandKind.EXEC:
            raise AtCommandError()
        return [f"+CBC: {int(self.charging)},{self.battery_level}"]

    async def ceer(self, request: AtRequest) -> list[str] | None:
        """+CEER (27.007 6.10): the last call's or activation's failure or end, as text."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is not CommandKind.EXEC:
            raise AtCommandError()
        return [f'+CEER: "{self.core.last_cause}"']

    # --- indicators ----------------------------------------------------------------------------------------------

    def _values(self) -> list[int]:
        rssi = self.network.config.rssi if self.network.registered else 99
        signal = 0 if rssi == 99 else min(5, (rssi + 1) * 6 // 32)
        computed = {
            "battchg": min(5, self.battery_level // 20),
            "signal": signal,
            "service": int(self.network.registered),
            "roam": int(self.network.status is RegStatus.ROAMING),
        }
        return [computed.get(name, self.held.get(name, 0)) for name, _ in INDICATORS]

    def set_indicator(self, name: str, value: int) -> None:
        """An indicator another part of the ME keeps (call, callsetup from the voice calls; message, smsfull)."""
        top = dict(INDICATORS).get(name)
        if top is None or name not in self.held or not 0 <= value <= top:
            raise ValueError(f"indicator {name}={value}")
        self.held[name] = value
        self.refresh()

    def set_signal(self, rssi: int) -> None:
        """The serving cell's received level changes (27.007 8.5 <rssi> 0-31, 99 not known)."""
        self.network.config.rssi = rssi
        self.refresh()

    def refresh(self) -> None:
        """Sends +CIEV for each indicator that changed (27.007 8.10), per each line's +CMER."""
        values = self._values()
        changed = [(i + 1, v) for i, (v, old) in enumerate(zip(values, self._last, strict=True)) if v != old]
        self._last = values
        if not changed:
            return
        lines = [f"+CIEV: {index},{value}" for index, value in changed]
        for server, (mode, ind) in list(self.cmer.items()):
            if not ind:
                continue
            if mode == 0:
                buffer = self.ciev_buffers.setdefault(server, [])
                buffer.extend(lines)
                del buffer[:-CMER_BUFFER]
            elif not (mode == 1 and server.online_data):  # <mode> 1 drops them while a data call has the line
                self._urc(server, lines)

    async def cind(self, request: AtRequest) -> list[str] | None:
        """+CIND (27.007 8.9): the indicators' names and ranges (=?) and values (?); none is settable."""
        if request.kind is CommandKind.TEST:
            return ["+CIND: " + ",".join(f'("{name}",(0-{top}))' for name, top in INDICATORS)]
        if request.kind is CommandKind.READ:
            return ["+CIND: " + ",".join(str(value) for value in self._values())]
        raise CmeError(CME_NOT_ALLOWED)

    def cmer_command(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CMER=[<mode>[,<keyp>[,<disp>[,<ind>[,<bfr>]]]]] (27.007 8.10): <mode> 0 buffer, 1-3 send (1 drops them
        while a data call has the line, 2 and 3 leave them to the server, which holds them until command mode); no keypad or display events; <ind> 0 none, 1 and 2 +CIEV;
        <bfr> 0 clears the buffer, 1 sends it after the OK, when a sending mode is entered."""
        if request.kind is CommandKind.TEST:
            return ["+CMER: (0-3),(0),(0),(0-2),(0,1)"]
        mode, ind = self.cmer.get(server, (0, 0))
        if request.kind is CommandKind.READ:
            return [f"+CMER: {mode},0,0,{ind},0"]
        if request.kind is not CommandKind.SET or len(request.args) > 5:
            raise AtCommandError()
        mode = _int(request.args, 0, 0, 3, 0)
        _int(request.args, 1, 0, 0, 0)
        _int(request.args, 2, 0, 0, 0)
        ind = _int(request.args, 3, 0, 2, ind)
        bfr = _int(request.args, 4, 0, 1, 0)
        self.cmer[server] = (mode, ind)
        if mode:
            held = self.ciev_buffers.pop(server, [])
            if bfr and held:

                async def flush() -> None:
                    for line in held:
                        await server.send_urc(line)

                server.after_response(flush)
        return None

    # --- radio ---------------------------------------------------------------------------------------------------

    async def cesq(self, request: AtRequest) -> list[str] | None:
        """+CESQ (27.007 8.69): <rxlev>,<ber>,<rscp>,<ecno>,<rsrq>,<rsrp>; on E-UTRAN only the last two are
        known: RSRP from the cell's level (index 0-97, TS 36.133 9.1.4), RSRQ a fair 20 (-10 dB)."""
        if request.kind is CommandKind.TEST:
            return ["+CESQ: (0-63,99),(0-7,99),(0-96,255),(0-49,255),(0-34,255),(0-97,255)"]
        if request.kind is not CommandKind.EXEC:
            raise AtCommandError()
        rssi = self.network.config.rssi
        if not self.network.registered or rssi == 99:
            return ["+CESQ: 99,99,255,255,255,255"]
        rssi_dbm = -113 + 2 * rssi
        rsrp = max(0, min(97, rssi_dbm - 20 + 141))  # RSRP is about 20 dB below the wideband RSSI
        if self.network.config.rat == 7:
            return [f"+CESQ: 99,99,255,255,20,{rsrp}"]
        return [f"+CESQ: {min(63, rssi * 2)},99,255,255,255,255"]

    async def ws46_command(self, request: AtRequest) -> list[str] | None:
        """+WS46=<n> (27.007 5.9): the radio access networks the ME may use."""
        if request.kind is CommandKind.TEST:
            return ["+WS46: (" + ",".join(str(n) for n in WS46_MODES) + ")"]
        if request.kind is CommandKind.READ:
            return [f"+WS46: {self.ws46}"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        value = _int(request.args, 0, 0, 255)
        if value not in WS46_MODES:
            raise CmeError(CME_BAD_PARAMETERS)
        self.ws46 = value
        return None

    def cpsb_command(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CPSB=<n> (27.007 7.29): read gives each active context's <cid>,<curr_bearer>; <n> 1 reports changes
        as +CPSB: <cid>,<curr_bearer> (0 when a context goes)."""
        if request.kind is CommandKind.TEST:
            return ["+CPSB: (0,1)"]
        n = self.cpsb.get(server, 0)
        if request.kind is CommandKind.READ:
            bearer = PSB_BEARER.get(self.network.config.rat, 7)
            return [f"+CPSB: {n},{cid},{bearer}" for cid in sorted(self.network.contexts)] or [f"+CPSB: {n}"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        self.cpsb[server] = _int(request.args, 0, 0, 1)
        return None

    def _context_ended(self, context: PdpContext, reason: str) -> None:
        for server, n in list(self.cpsb.items()):
            if n:
                self._urc(server, [f"+CPSB: {context.cid},0"])

    # --- USSD ----------------------------------------------------------------------------------------------------

    def cusd_command(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CUSD=[<n>[,<str>[,<dcs>]]] (27.007 7.15): <n> 0/1 result presentation off/on, 2 cancel; a <str>
        goes to the network's USSD service and its answer comes as +CUSD: <m>[,<str>,<dcs>] after the OK."""
        if request.kind is CommandKind.TEST:
            return ["+CUSD: (0-2)"]
        if request.kind is CommandKind.READ:
            return [f"+CUSD: {self.cusd.get(server, 0)}"]
        if request.kind is not CommandKind.SET or len(request.args) > 3:
            raise AtCommandError()
        n = _int(request.args, 0, 0, 2, 0)
        if n == 2:
            self.network.ussd.cancel()
            return None
        self.cusd[server] = n
        if len(request.args) < 2 or request.args[1] is None:
            return None
        dcs = _int(request.args, 2, 0, 255, USSD_DCS)
        if dcs != USSD_DCS:
            raise CmeError(CME_BAD_PARAMETERS)  # only the GSM default alphabet is offered
        if not self.network.registered:
            raise CmeError(CME_NO_SERVICE)
        text = self.core.from_te(str(request.args[1]))
        self._ussd_trace("up", text, None)
        answer = self.network.ussd.request(text)
        self._ussd_trace("down", answer.text, int(answer.result))
        if n == 1 or answer.result is UssdResult.ACTION_REQUIRED:
            line = f"+CUSD: {int(answer.result)}"
            if answer.text:
                line += f',"{self.core.te(answer.text)}",{USSD_DCS}'

            async def send() -> None:
                await server.send_urc(line)

            server.after_response(send)
        return None

    def _ussd_trace(self, direction: str, text: str, m: int | None) -> None:
        src, dst = (Actor.CP, Actor.NET) if direction == "up" else (Actor.NET, Actor.CP)
        fields: dict[str, object] = {"direction": direction, "dcs": USSD_DCS}
        if m is not None:
            fields["m"] = m
        self.tracer.emit(
            src, dst, Layer.APP, f"USSD {direction}: {text}", kind=Kind.USSD_MESSAGE, fields=fields
        )

    # --- the command list ----------------------------------------------------------------------------------------

    @staticmethod
    def clac(request: AtRequest, server: AtServer) -> list[str] | None:
        """+CLAC (27.007 8.37): every command this line answers, one a line; the server's own (E, V, Q, Z, &F,
        S-registers, +CMEE) and each handler registered on it, in AT-prefixed form."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is not CommandKind.EXEC:
            raise AtCommandError()
        own = {"E", "V", "Q", "Z", "&F", "S0", "S3", "S4", "S5", "S6", "S7", "S8", "S10", "S12", "+CMEE"}
        return [f"AT{name}" for name in sorted(own | set(server.handlers))]
