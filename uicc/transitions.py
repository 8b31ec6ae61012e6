"""One transition table per state machine (docs/architecture.md, "Explicit state machines"): a mapping
(state, event) -> next state through which every change of a session's state passes. An event the table does not
list raises the project's IllegalTransition; the protocol code that drives the machine turns it into the
protocol's own answer (an HTTP 4xx on the OTA server, an ended admin session on the card).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Generic, TypeVar

from bipsim.uicc.bip_engine import IllegalTransition

S = TypeVar("S", bound=Enum)
E = TypeVar("E", bound=Enum)

__all__ = ["IllegalSessionEvent", "IllegalTransition", "TransitionTable"]


class IllegalSessionEvent(IllegalTransition):
    """`event` is not allowed in `state` by the table named `machine`."""

    def __init__(self, machine: str, state: Enum, event: Enum) -> None:
        super().__init__(f"{machine}: {event.value} in state {state.value}")
        self.machine = machine
        self.state = state
        self.event = event


class TransitionTable(Generic[S, E]):
    """The rows of one state machine; `next` is the only way from one state to another."""

    def __init__(self, name: str, rows: Mapping[tuple[S, E], S]) -> None:
        self.name = name
        self.rows = dict(rows)

    def next(self, state: S, event: E) -> S:
        try:
            return self.rows[(state, event)]
        except KeyError:
            raise IllegalSessionEvent(self.name, state, event) from None

    def allows(self, state: S, event: E) -> bool:
        return (state, event) in self.rows
