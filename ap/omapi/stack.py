"""Assembles the AP's OMAPI layers (docs/protocols.md, "OMAPI on the AP") over the modem's DLC 1: the RIL, the
Framework (rule load at start-up), the PhoneInterfaceManager (the variable's check), the OMAPI service and its
chooser. `OmapiStack.start` runs the start-up steps (004:201..004:206, then 004:301..004:305) once per modem
session; the control socket (bipsim.ap.omapi.control) serves applications on top of it."""

from __future__ import annotations

from dataclasses import dataclass

import trio

from bipsim.ap.omapi.chooser import Chooser
from bipsim.ap.omapi.framework import Framework, NoCardMode
from bipsim.ap.omapi.phone_interface import Gate, PhoneInterfaceManager
from bipsim.ap.omapi.ril import AtPort, SeRil
from bipsim.ap.omapi.service import OmapiService
from bipsim.trace.recorder import NULL_TRACER, Tracer


@dataclass(frozen=True)
class OmapiOptions:
    """The `bipsim ap` options of the OMAPI stack."""

    slots: int = 0  # card slots of the CP: readers SIM1..SIM<slots>; 0 asks the CP (AT%SLOTS?)
    nfc: bool = False  # whether an NFC process is present (changes no outcome unless gate is NFC_LEGACY)
    no_card_mode: NoCardMode = NoCardMode.SKIP
    gate: Gate = Gate.VARIABLE
    chooser: str = "first"
    listen: tuple[str, int] | None = None  # the control socket's address


class OmapiStack:
    def __init__(self, options: OmapiOptions, *, tracer: Tracer = NULL_TRACER) -> None:
        self.options = options
        self.tracer = tracer
        self.chooser = Chooser(options.chooser)
        self.service: OmapiService | None = None
        self.ready = (
            trio.Event()
        )  # set once start-up (201..206, 301..305) has run on the current modem session

    def build(self, port: AtPort, slots: int) -> OmapiService:
        ril = SeRil(port, slots=slots, tracer=self.tracer)
        framework = Framework(ril, slots, mode=self.options.no_card_mode, tracer=self.tracer)
        phone = PhoneInterfaceManager(
            framework, nfc=self.options.nfc, gate=self.options.gate, tracer=self.tracer
        )
        return OmapiService(framework, phone, ril, self.chooser, tracer=self.tracer)

    async def start(self, port: AtPort) -> OmapiService:
        """Power-on of the terminal's OMAPI side on a (new) modem session: the Framework's load, then OMAPI's
        initialisation. Later calls (the line came back) start over with fresh variables, as a reboot does."""
        self.service = None
        slots = self.options.slots or await SeRil(port, tracer=self.tracer).discover_slots()
        service = self.build(port, slots)
        await service.framework.boot()
        await service.initialise()
        self.service = service
        self.ready.set()
        return service

    async def reboot(self) -> OmapiService:
        """Runs start-up again on the same modem session (the next boot of the terminal's framework)."""
        if self.service is None:
            raise LookupError("the OMAPI stack has not started")
        return await self.start(self.service.ril.port)

    def stop(self) -> None:
        """The modem session ended: no service until the next start, and requests wait for that start again."""
        self.service = None
        self.ready = trio.Event()
