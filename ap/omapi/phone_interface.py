"""The PhoneInterfaceManager layer of the AP's OMAPI stack (docs/protocols.md, "OMAPI on the AP", steps 004:101,
004:102, 004:302, 004:305): before any logical channel is opened it reads the card's `enforceCarrierPrivilege`, as
the Framework set it at start-up, and never recomputes it; true lets the RIL open the channel, false stops.

The legacy gate (`--omapi-gate nfc-legacy`) is the rule the invention replaces, kept for the comparison scenario:
only the NFC process may open a channel, so without an NFC process every open stops.
"""

from __future__ import annotations

from enum import Enum

from bipsim.ap.omapi.framework import Framework
from bipsim.ap.omapi.ril import reader_name
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer


class Gate(Enum):
    VARIABLE = "variable"  # the invention: enforceCarrierPrivilege decides
    NFC_LEGACY = "nfc-legacy"  # the old rule: only the NFC process may open


class PhoneInterfaceManager:
    def __init__(
        self, framework: Framework, *, nfc: bool, gate: Gate = Gate.VARIABLE, tracer: Tracer = NULL_TRACER
    ) -> None:
        self.framework = framework
        self.nfc = nfc
        self.gate = gate
        self.tracer = tracer
        self.reads = 0  # how often the variable was read (a test sees it read, never recomputed)

    def check(self, slot: int, *, step: str, purpose: str) -> tuple[bool, str]:
        """Whether a channel may be opened on `slot`'s card, and why; traced with `step` (302 at initialisation,
        101 before an application's open)."""
        variable = self.framework.variable(slot)
        self.reads += 1
        if self.gate is Gate.NFC_LEGACY:
            allowed = self.nfc
            why = (
                "the NFC process is present" if self.nfc else "no NFC process: only the NFC process may open"
            )
        else:
            allowed = variable
            why = f"enforceCarrierPrivilege is {str(variable).lower()}"
        self.tracer.emit(
            Actor.AP,
            Actor.AP,
            Layer.APP,
            f"PhoneInterfaceManager: {reader_name(slot)} {why}",
            step=step,
            kind=Kind.OMAPI_CHECK,
            fields={
                "layer": "PhoneInterfaceManager",
                "reader": reader_name(slot),
                "variable": variable,
                "gate": self.gate.value.replace("-", "_"),
                "nfc": self.nfc,
                "allowed": allowed,
                "purpose": purpose,
            },
        )
        return allowed, why
