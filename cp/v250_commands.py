"""The ITU-T V.250 basics a host's init string sends: O, &C, &D, &V, &W, Z (with the stored profile), X, and the
V.250 extended commands +GCAP, +IFC, +ICF, +IPR with the fax class +FCLASS (ITU-T T.31: class 0, data, only).

E, V, Q, &F, +CMEE and the S-registers are the AT server's own (link/at_server.py); every setting here lives in
the channel's AtSettings, so a CMUX DLC starts from the line's profile like the rest of it.

What the settings mean on the simulated line (docs/protocols.md, "V.250 as bipsim speaks it"):
- &C, &D, +IFC, +ICF and +IPR are accepted within their V.250 ranges, kept and reported; a pty or a CMUX DLC has
  no rate, framing or modem-control lines to change, so a new +IPR rate is reported, not applied.
- &W stores the channel's active profile in the modem's memory (one stored profile, V.250 6.1.1's profile 0, shared
  by every channel); Z restores it and &F the factory one. The memory is the CP process's: it is gone when the
  process ends, as the simulated phone has no non-volatile storage.
- O (V.250 6.3.7) returns to a suspended data call (cp/data_mode.py installs its own O over this one); with no
  call to return to it answers NO CARRIER.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from bipsim.link.at_server import AtCommandError, AtServer, AtSettings, Handler, ResultCode
from bipsim.link.at_syntax import AtArg, AtRequest, CommandKind
from bipsim.trace.recorder import Tracer

# +IPR rates the DCE offers (V.250 6.2.10): 0 is autobaud
IPR_RATES = (0, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
GCAP = "+GCAP: +CGSM,+FCLASS"  # V.250 6.1.9: 27.007 (GSM) commands and the T.31 class command


def _value(request: AtRequest, low: int, high: int, default: int = 0) -> int:
    """A basic command's number (ATX4, AT&D2; absent: `default`); out of range: ERROR (V.250 5.3.1)."""
    value: AtArg = request.args[0] if request.args else default
    if not isinstance(value, int) or not low <= value <= high:
        raise AtCommandError()
    return value


def _pair(args: tuple[AtArg, ...], first: range, second: range, current: tuple[int, int]) -> tuple[int, int]:
    """+IFC / +ICF's two numbers; an omitted one keeps its value (V.250 5.4.2.1), one out of range is ERROR."""
    if len(args) > 2:
        raise AtCommandError()
    values = list(current)
    for index, allowed in enumerate((first, second)):
        value = args[index] if index < len(args) else None
        if value is None:
            continue
        if not isinstance(value, int) or value not in allowed:
            raise AtCommandError()
        values[index] = value
    return values[0], values[1]


def profile_text(settings: AtSettings) -> str:
    """A profile as &V shows it: the basic settings then the S-registers."""
    return (
        f"E{int(settings.echo)} Q{int(settings.quiet)} V{int(settings.verbose)} X{settings.x_level} "
        f"&C{settings.dcd} &D{settings.dtr} +CMEE={settings.cmee} +IFC={settings.ifc[0]},{settings.ifc[1]} "
        f"+ICF={settings.icf[0]},{settings.icf[1]} +IPR={settings.ipr} "
        f"S00:{settings.s0:03d} S03:{settings.s3:03d} S04:{settings.s4:03d} S05:{settings.s5:03d} "
        f"S06:{settings.s6:03d} S07:{settings.s7:03d} S08:{settings.s8:03d} S10:{settings.s10:03d} "
        f"S12:{settings.s12:03d}"
    )


class V250Commands:
    """The command set (cp/command_sets.py) of the V.250 basics; the stored profile is the modem's."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.stored: AtSettings | None = None  # &W's profile; None: the factory one

    def install(self, server: AtServer) -> None:
        def bind(handler: Callable[[AtRequest, AtServer], list[str] | None]) -> Handler:
            async def call(request: AtRequest) -> list[str] | None:
                return handler(request, server)

            return call

        for name, handler in {
            "O": self.online,
            "&C": self.dcd,
            "&D": self.dtr,
            "X": self.result_level,
            "&V": self.view,
            "&W": self.write,
            "Z": self.restore,
            "+GCAP": self.gcap,
            "+IFC": self.ifc,
            "+ICF": self.icf,
            "+IPR": self.ipr,
            "+FCLASS": self.fclass,
        }.items():
            server.register(name, bind(handler))

    def forget(self, server: AtServer) -> None:
        """Nothing is kept per server: its settings went with it."""

    @staticmethod
    def _set(server: AtServer, **changes: Any) -> None:
        server.settings = replace(server.settings, **changes)

    def online(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """O (V.250 6.3.7): no data call is suspended on this line, so NO CARRIER."""
        if request.kind not in (CommandKind.EXEC, CommandKind.SET):
            raise AtCommandError()
        _value(request, 0, 1)
        raise ResultCode("NO CARRIER")

    def dcd(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """&C<n> (V.250 6.2.8): 0 DCD always on, 1 DCD follows the data carrier."""
        self._set(server, dcd=_value(request, 0, 1))
        return None

    def dtr(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """&D<n> (V.250 6.2.9): what an ON-to-OFF DTR does (0 nothing, 1 command mode, 2 hang up)."""
        self._set(server, dtr=_value(request, 0, 2))
        return None

    def result_level(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """X<n> (V.250 6.2.7): which call progress result codes are reported (0-4)."""
        self._set(server, x_level=_value(request, 0, 4))
        return None

    def view(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """&V: the active profile and the stored one (a V.250 manufacturer command that every modem has)."""
        if request.kind is not CommandKind.EXEC and _value(request, 0, 0) != 0:
            raise AtCommandError()
        stored = self.stored or AtSettings()
        return [
            "ACTIVE PROFILE:",
            profile_text(server.settings),
            "STORED PROFILE 0:",
            profile_text(stored),
        ]

    def write(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """&W[0]: stores the active profile as profile 0 (the only one), which Z restores."""
        _value(request, 0, 0)
        self.stored = server.settings
        return None

    def restore(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """Z[0] (V.250 6.1.1): the factory settings, then the stored profile over them when &W stored one."""
        _value(request, 0, 0)
        server.reset()
        if self.stored is not None:
            server.settings = self.stored
        return None

    @staticmethod
    def gcap(request: AtRequest, server: AtServer) -> list[str] | None:
        """+GCAP (V.250 6.1.9): the capability list."""
        if request.kind is CommandKind.TEST:
            return None
        if request.kind is not CommandKind.EXEC:
            raise AtCommandError()
        return [GCAP]

    def ifc(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+IFC=<DCE_by_DTE>,<DTE_by_DCE> (V.250 6.2.12): 0 none, 1 XON/XOFF, 2 RTS/CTS (3: XON/XOFF passed on)."""
        current = server.settings.ifc
        if request.kind is CommandKind.TEST:
            return ["+IFC: (0-3),(0-2)"]
        if request.kind is CommandKind.READ:
            return [f"+IFC: {current[0]},{current[1]}"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        self._set(server, ifc=_pair(request.args, range(4), range(3), current))
        return None

    def icf(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+ICF=<format>,<parity> (V.250 6.2.11): character framing 1-6 (0 autodetect), parity 0-3."""
        current = server.settings.icf
        if request.kind is CommandKind.TEST:
            return ["+ICF: (0-6),(0-3)"]
        if request.kind is CommandKind.READ:
            return [f"+ICF: {current[0]},{current[1]}"]
        if request.kind is not CommandKind.SET:
            raise AtCommandError()
        self._set(server, icf=_pair(request.args, range(7), range(4), current))
        return None

    def ipr(self, request: AtRequest, server: AtServer) -> list[str] | None:
        """+IPR=<rate> (V.250 6.2.10): one of IPR_RATES. Kept and reported: the simulated line's real rate is the
        pty's (or the --baud pacing), which this does not change."""
        if request.kind is CommandKind.TEST:
            return [f"+IPR: ({','.join(str(rate) for rate in IPR_RATES)})"]
        if request.kind is CommandKind.READ:
            return [f"+IPR: {server.settings.ipr}"]
        if request.kind is not CommandKind.SET or len(request.args) != 1:
            raise AtCommandError()
        rate = request.args[0]
        if rate not in IPR_RATES:
            raise AtCommandError()
        self._set(server, ipr=rate)
        return None

    @staticmethod
    def fclass(request: AtRequest, server: AtServer) -> list[str] | None:
        """+FCLASS (ITU-T T.31 8.2): service class 0, data, is the only one: no fax."""
        if request.kind is CommandKind.TEST:
            return ["+FCLASS: (0)"]
        if request.kind is CommandKind.READ:
            return ["+FCLASS: 0"]
        if request.kind is not CommandKind.SET or request.args != (0,):
            raise AtCommandError()
        return None
