"""Voice call control without audio (3GPP TS 27.007 sections 6 and 7), driven by the network model, as phonesim
and Cuttlefish's modem_simulator offer it: a host's dialer sees calls set up, ring, get answered and end.

- ATD<number>; (V.250 6.3.1, 27.007 6.2): a mobile-originated call; OK at once, then the network's far end
  alerts and answers (a number in `busy_numbers` is BUSY, one in `unanswered_numbers` rings on until hung up).
- ATA (V.250 6.3.5): answers the incoming call; NO CARRIER when there is none.
- ATH (V.250 6.3.6) and +CHUP (27.007 6.5): end every call (ATH is OK when there is none).
- +CLCC (7.18): the calls' list; RING, or +CRING: VOICE under +CRC=1 (6.11), each RING_PERIOD while a call is
  incoming; +CLIP=1 (7.6) adds +CLIP: "<number>",<type> after each; S0 > 0 answers after that many rings.
- the far end hangs up (`remote_hangup`): NO CARRIER on the line that placed or answered the call, the cause for
  +CEER.
The network model offers an incoming call with CellularNetwork.incoming_call: from a test, or from `bipsim call`
through the network's control socket (`bipsim cp --sms-listen`; ops "call", "hangup", "calls"). A dial string without the ';' is a data call: the
`data_dial` hook answers it (the PPP data mode), NO CARRIER while there is none.

A call's state is an enum with its transition table (CALL_TRANSITIONS); each change is a call.state trace event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import trio

from bipsim.cp.commands import CME_BAD_PARAMETERS, ModemCommands
from bipsim.link.at_server import AtCommandError, AtServer, CmeError, Handler, ResultCode
from bipsim.link.at_syntax import AtRequest, CommandKind
from bipsim.net.smsc import RequestError
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer

RING_PERIOD = (
    3.0  # seconds between RINGs of an incoming call (V.250 leaves it to the DCE; 3GPP networks ~3-5 s)
)
MAX_CALLS = 7  # 27.007 7.18 <id> 1..7 (TS 22.030 call numbering)
DIAL_CHARS = frozenset("0123456789*#+ABCDabcd")  # V.250 6.3.1 dial digits (the modifiers ,TPW! are ignored)
DIAL_MODIFIERS = frozenset(",TPW!@tpw ")
CAUSE_NORMAL = "Normal call clearing"  # TS 24.008 10.5.4.11 cause #16
CAUSE_BUSY = "User busy"  # cause #17
CAUSE_NO_SERVICE = "No service"


class CallState(IntEnum):
    """27.007 7.18 <stat>, and ENDED (no longer listed)."""

    ACTIVE = 0
    HELD = 1
    DIALING = 2
    ALERTING = 3
    INCOMING = 4
    WAITING = 5
    ENDED = 9


CALL_TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    CallState.DIALING: frozenset({CallState.ALERTING, CallState.ACTIVE, CallState.ENDED}),
    CallState.ALERTING: frozenset({CallState.ACTIVE, CallState.ENDED}),
    CallState.INCOMING: frozenset({CallState.ACTIVE, CallState.ENDED}),
    CallState.WAITING: frozenset({CallState.ACTIVE, CallState.ENDED}),
    CallState.ACTIVE: frozenset({CallState.HELD, CallState.ENDED}),
    CallState.HELD: frozenset({CallState.ACTIVE, CallState.ENDED}),
    CallState.ENDED: frozenset(),
}


@dataclass
class Call:
    id: int
    number: str
    mobile_terminated: bool
    state: CallState
    rings: int = 0
    owner: AtServer | None = None  # the line that placed or answered the call: the one told NO CARRIER

    @property
    def number_type(self) -> int:
        """TS 24.008 10.5.4.7 type of number: 145 international, 129 unknown/national."""
        return 145 if self.number.startswith("+") else 129


class VoiceCalls:
    """The command set (cp/command_sets.py) of voice call control; the calls are the modem's."""

    def __init__(
        self,
        core: ModemCommands,
        tracer: Tracer,
        *,
        indicator: Callable[[str, int], None] | None = None,
    ) -> None:
        self.core = core
        self.network = core.network
        self.tracer = tracer
        self.indicator = indicator or (lambda name, value: None)
        self.calls: dict[int, Call] = {}
        self.busy_numbers: set[str] = set()
        self.unanswered_numbers: set[str] = set()
        # the PPP data mode's answer to ATD without ';' (a data call); None: NO CARRIER
        self.data_dial: Callable[[AtRequest, AtServer], Awaitable[list[str] | None]] | None = None
        self.servers: list[AtServer] = []
        self.clip: dict[AtServer, int] = {}
        self.crc: dict[AtServer, int] = {}
        self.network.incoming_call_listeners.append(self.incoming)
        self.network.listeners.append(self._registration_changed)
        # the network's control socket (`bipsim cp --sms-listen`, `bipsim call`): offer a call, end one, list them
        ops = self.network.smsc.control_ops
        ops["call"], ops["hangup"], ops["calls"] = (
            self._control_call,
            self._control_hangup,
            self._control_calls,
        )

    def install(self, server: AtServer) -> None:
        self.servers.append(server)

        def bind(handler: Callable[[AtRequest, AtServer], Awaitable[list[str] | None]]) -> Handler:
            async def call(request: AtRequest) -> list[str] | None:
                return await handler(request, server)

            return call

        for name, handler in {
            "D": self.dial,
            "A": self.answer,
            "H": self.hang_up,
            "+CHUP": self.chup,
            "+CLCC": self.clcc,
            "+CLIP": self.clip_command,
            "+CRC": self.crc_command,
        }.items():
            server.register(name, bind(handler))

    def forget(self, server: AtServer) -> None:
        if server in self.servers:
            self.servers.remove(server)
        self.clip.pop(server, None)
        self.crc.pop(server, None)

    # --- state -----------------------------------------------------------------------------------------------------

    def _move(self, call: Call, state: CallState, cause: str = "") -> None:
        if state not in CALL_TRANSITIONS[call.state]:
            raise ValueError(f"call {call.id}: {call.state.name} -> {state.name} is not a transition")
        call.state = state
        fields: dict[str, object] = {
            "id": call.id,
            "state": state.name.lower(),
            "number": call.number,
            "direction": "mt" if call.mobile_terminated else "mo",
        }
        if cause:
            fields["cause"] = cause
            self.core.last_cause = cause
        self.tracer.emit(
            Actor.NET,
            Actor.CP,
            Layer.APP,
            f"call {call.id} {state.name.lower()} ({call.number})" + (f": {cause}" if cause else ""),
            kind=Kind.CALL_STATE,
            fields=fields,
        )
        if state is CallState.ENDED:
            del self.calls[call.id]
        self._indicators()

    def _indicators(self) -> None:
        """call (a call is up) and callsetup (1 incoming, 2 dialling, 3 the far end alerting) of +CIND."""
        states = {call.state for call in self.calls.values()}
        self.indicator("call", int(bool(states & {CallState.ACTIVE, CallState.HELD})))
        setup = (
            1
            if states & {CallState.INCOMING, CallState.WAITING}
            else 2
            if CallState.DIALING in states
            else 3
            if CallState.ALERTING in states
            else 0
        )
        self.indicator("callsetup", setup)

    def _new_id(self) -> int:
        free = next((n for n in range(1, MAX_CALLS + 1) if n not in self.calls), None)
        if free is None:
            raise CmeError(CME_BAD_PARAMETERS)
        return free

    def _urc_all(self, lines: Callable[[AtServer], list[str]]) -> None:
        for server in list(self.servers):
            out = lines(server)
            if not out:
                continue

            async def send(server: AtServer = server, out: list[str] = out) -> None:
                for line in out:
                    await server.send_urc(line)

            try:
                trio.lowlevel.spawn_system_task(send)
            except RuntimeError:
                pass

    # --- mobile originated -----------------------------------------------------------------------------------------

    async def dial(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """ATD<number>; a voice call; without ';' a data call for `data_dial`."""
        dial_string = str(request.args[0]) if request.args else ""
        if not dial_string.endswith(";"):
            if self.data_dial is not None:
                return await self.data_dial(request, server)
            raise ResultCode("NO CARRIER")  # no data mode: the connection cannot be made (V.250 6.3.1)
        number = "".join(ch for ch in dial_string[:-1] if ch not in DIAL_MODIFIERS)
        if not number or not set(number) <= DIAL_CHARS:
            raise AtCommandError()
        if not self.network.registered:
            self.core.last_cause = CAUSE_NO_SERVICE
            raise ResultCode("NO CARRIER")
        if any(c.state in (CallState.DIALING, CallState.ALERTING) for c in self.calls.values()):
            raise AtCommandError()  # one call set up at a time
        call = Call(self._new_id(), number, False, CallState.DIALING, owner=server)
        self.calls[call.id] = call
        self._trace_new(call)

        async def progress() -> None:
            # the far end: busy, or alerting then (unless it never answers) connected
            if call.state is not CallState.DIALING:
                return
            if number in self.busy_numbers:
                self._move(call, CallState.ENDED, CAUSE_BUSY)
                await server.send_urc("BUSY")
                return
            self._move(call, CallState.ALERTING)
            if number not in self.unanswered_numbers:
                self._move(call, CallState.ACTIVE)

        server.after_response(progress)
        return None

    def _trace_new(self, call: Call) -> None:
        self.tracer.emit(
            Actor.CP if not call.mobile_terminated else Actor.NET,
            Actor.NET if not call.mobile_terminated else Actor.CP,
            Layer.APP,
            f"call {call.id} {call.state.name.lower()} ({call.number})",
            kind=Kind.CALL_STATE,
            fields={
                "id": call.id,
                "state": call.state.name.lower(),
                "number": call.number,
                "direction": "mt" if call.mobile_terminated else "mo",
            },
        )
        self._indicators()

    # --- mobile terminated -----------------------------------------------------------------------------------------

    def incoming(self, number: str) -> None:
        """The network offers a call from `number`: incoming (or waiting, behind a call that is up), ringing."""
        if len(self.calls) >= MAX_CALLS:
            raise ValueError(f"user busy: the ME has {MAX_CALLS} calls already")  # the caller gets cause #17
        busy = any(c.state in (CallState.ACTIVE, CallState.HELD) for c in self.calls.values())
        call = Call(self._new_id(), number, True, CallState.WAITING if busy else CallState.INCOMING)
        self.calls[call.id] = call
        self._trace_new(call)
        if call.state is CallState.WAITING:
            self._urc_all(lambda server: [f'+CCWA: "{number}",{call.number_type},1'])
            return
        try:
            trio.lowlevel.spawn_system_task(self._ring, call)
        except RuntimeError:
            pass

    async def _ring(self, call: Call) -> None:
        """RING (or +CRING: VOICE) and +CLIP each RING_PERIOD while the call is incoming; S0 answers it."""
        while call.state is CallState.INCOMING:
            call.rings += 1
            self._urc_all(
                lambda server: [
                    "+CRING: VOICE" if self.crc.get(server) else "RING",
                    *([f'+CLIP: "{call.number}",{call.number_type}'] if self.clip.get(server) else []),
                ]
            )
            auto = [server for server in self.servers if server.settings.s0]
            answering = next((s for s in auto if call.rings >= s.settings.s0), None)
            if answering is not None:
                call.owner = answering  # S0 (V.250 6.3.8): the ME answers itself, for that line
                self._move(call, CallState.ACTIVE)
                return
            await trio.sleep(RING_PERIOD)

    async def answer(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """ATA: the incoming (or waiting) call becomes active."""
        if request.kind not in (CommandKind.EXEC,):
            raise AtCommandError()
        call = next(
            (c for c in self.calls.values() if c.state in (CallState.INCOMING, CallState.WAITING)), None
        )
        if call is None:
            raise ResultCode("NO CARRIER")
        for other in self.calls.values():
            if other.state is CallState.ACTIVE:
                self._move(other, CallState.HELD)
        call.owner = server
        self._move(call, CallState.ACTIVE)
        return None

    # --- ending --------------------------------------------------------------------------------------------------

    def _end_all(self, cause: str) -> int:
        ended = 0
        for call in list(self.calls.values()):
            self._move(call, CallState.ENDED, cause)
            ended += 1
        return ended

    async def hang_up(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """ATH[0] (V.250 6.3.6): ends every call; OK also when there is none."""
        if request.kind is CommandKind.SET and request.args != (0,):
            raise AtCommandError()
        if request.kind not in (CommandKind.EXEC, CommandKind.SET):
            raise AtCommandError()
        self._end_all(CAUSE_NORMAL)
        return None

    async def chup(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CHUP (27.007 6.5)."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is not CommandKind.EXEC:
            raise AtCommandError()
        self._end_all(CAUSE_NORMAL)
        return None

    def remote_hangup(self, call_id: int | None = None, cause: str = CAUSE_NORMAL) -> bool:
        """The far end ends call `call_id` (every call when None): NO CARRIER on the line that placed or answered
        it (V.250 5.7.2: the result of that line's connection; a call still ringing just stops ringing)."""
        calls = [c for c in self.calls.values() if call_id is None or c.id == call_id]
        owners = {c.owner for c in calls if c.owner is not None}
        for call in calls:
            self._move(call, CallState.ENDED, cause)
        self._urc_all(lambda server: ["NO CARRIER"] if server in owners else [])
        return bool(calls)

    def _registration_changed(self, status: object) -> None:
        if not self.network.registered and self.calls:
            self.remote_hangup(cause=CAUSE_NO_SERVICE)

    # --- the control socket ----------------------------------------------------------------------------------------

    def _listed(self) -> list[dict[str, object]]:
        return [
            {
                "id": c.id,
                "number": c.number,
                "direction": "mt" if c.mobile_terminated else "mo",
                "state": c.state.name.lower(),
            }
            for _, c in sorted(self.calls.items())
        ]

    def _control_call(self, request: dict[str, Any]) -> dict[str, Any]:
        """{"op": "call", "from": "<number>"}: the network offers an incoming call."""
        number = request.get("from")
        if not isinstance(number, str) or not number or not set(number) <= DIAL_CHARS:
            raise RequestError("from: give the caller's number (digits, '+', '*', '#')")
        try:
            self.network.incoming_call(number)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        return {"ok": True, "calls": self._listed()}

    def _control_hangup(self, request: dict[str, Any]) -> dict[str, Any]:
        """{"op": "hangup", "id": <n>}: the far end ends call <n> (every call without an id)."""
        call_id = request.get("id")
        if call_id is not None and (not isinstance(call_id, int) or isinstance(call_id, bool)):
            raise RequestError("id: give a call's number (see the calls op)")
        if not self.remote_hangup(call_id):
            raise RequestError("no such call" if call_id is not None else "no call to end")
        return {"ok": True, "calls": self._listed()}

    def _control_calls(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "calls": self._listed()}

    # --- lists and settings ----------------------------------------------------------------------------------------

    async def clcc(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CLCC (27.007 7.18): <id>,<dir>,<stat>,<mode>,<mpty>,<number>,<type>; voice (0), no multiparty."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is not CommandKind.EXEC:
            raise AtCommandError()
        return [
            f'+CLCC: {c.id},{int(c.mobile_terminated)},{int(c.state)},0,0,"{c.number}",{c.number_type}'
            for _, c in sorted(self.calls.items())
        ]

    async def clip_command(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CLIP=<n> (27.007 7.6): +CLIP after RING; read gives <n>,<m> (1: CLIP provisioned)."""
        return self._flag(request, server, self.clip, "+CLIP", extra=",1")

    async def crc_command(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+CRC=<mode> (27.007 6.11): +CRING: <type> instead of RING."""
        return self._flag(request, server, self.crc, "+CRC")

    @staticmethod
    def _flag(
        request: AtRequest, server: AtServer, table: dict[AtServer, int], name: str, extra: str = ""
    ) -> list[str] | None:
        if request.kind is CommandKind.TEST:
            return [f"{name}: (0,1)"]
        if request.kind is CommandKind.READ:
            return [f"{name}: {table.get(server, 0)}{extra}"]
        if request.kind is not CommandKind.SET or len(request.args) != 1 or request.args[0] not in (0, 1):
            raise CmeError(CME_BAD_PARAMETERS)
        table[server] = int(request.args[0] or 0)
        return None
