"""The AT command sets beyond the 27.007 core of cp/commands.py (27.005 SMS, phonebook, USAT, vendor dialects...).

Each set is built once per modem and installs its handlers on every AT server the modem runs (the plain line and each
CMUX DLC), after the core, so a set may also replace a core handler (a vendor dialect answers identification its
own way). `forget` drops whatever the set kept for a server that has ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bipsim.cp.commands import ModemCommands
    from bipsim.link.at_server import AtServer
    from bipsim.trace.recorder import Tracer


class CommandSet(Protocol):
    def install(self, server: AtServer) -> None: ...

    def forget(self, server: AtServer) -> None: ...


def build_command_sets(core: ModemCommands, tracer: Tracer, settings: dict[str, object]) -> list[CommandSet]:
    """The modem's command sets, in installation order. `settings` carries the `bipsim cp` options a set needs
    (ModemOptions.command_settings), keyed by option name."""
    sets: list[CommandSet] = []
    # One entry per set; a vendor dialect stays last, as it may replace the handlers installed before it.
    from bipsim.cp.v250_commands import V250Commands  # V.250 basics: O, &C, &D, &V, &W, Z, X, +GCAP, +IPR...

    sets.append(V250Commands(tracer))
    from bipsim.cp.usat_commands import UsatCommands  # 27.007 section 12: USAT (+CUSATR/W/A/T/E)

    sets.append(UsatCommands(core, tracer, settings))
    from bipsim.cp.phonebook_commands import PhonebookCommands  # 27.007 8.11-8.14, 7.1: the card's phonebook

    sets.append(PhonebookCommands(core, tracer))
    from bipsim.cp.sms_commands import SmsCommands  # 27.005: SMS storages, PDU/text mode, indications

    sets.append(SmsCommands(core, tracer, settings))
    from bipsim.cp.security_commands import SecurityCommands  # 27.007 8.3, 8.65, 7.4, 7.5: the card's PINs

    sets.append(SecurityCommands(core, tracer, settings))  # after the sets whose SIM commands it holds back
    from bipsim.cp.status_commands import StatusCommands  # +CCLK, +CBC, +CIND/+CMER, +CESQ, +CUSD, +CLAC...
    from bipsim.cp.voice_calls import VoiceCalls  # ATD<n>;, ATA, ATH, +CHUP, +CLCC, RING/+CLIP (no audio)

    status = StatusCommands(core, tracer)
    sets.append(status)
    # before the data mode: it wraps D, H
    sets.append(VoiceCalls(core, tracer, indicator=status.set_indicator))
    from bipsim.cp.data_mode import DataCommands  # 27.007 10.2.1/10.1.12: ATD*99#, +CGDATA, PPP data calls

    sets.append(DataCommands(core, tracer, settings))  # after any other D/O/H: it hands them what is not its
    from bipsim.cp.dialects import dialect_set  # vendor dialects (--dialect): LAST, it replaces core handlers

    sets.append(dialect_set(core, tracer, settings))
    return sets
