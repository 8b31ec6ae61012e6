"""The card slot of one AT line, shared by the AP's users of that line (docs/protocols.md, "Card slots and card
presence on DLC 1"): `AT%SLOT=<n>` chooses the slot for the whole line (the DLC), not for the command, so the RIL's
IMSI read, the OMAPI RIL and the SIM data sync all send their slot-bound commands (+CIMI, +CPIN, +CCHO, +CRSM, the
phonebook) under one lock per line. A user that moves the line to another slot moves it back to slot 1 before it
lets go, and a user that means slot 1 holds the lock while its commands run, so no command of one user ever reaches
the card another user chose."""

from __future__ import annotations

import weakref

import trio

_LOCKS: weakref.WeakKeyDictionary[object, trio.Lock] = weakref.WeakKeyDictionary()


def slot_lock(port: object) -> trio.Lock:
    """The slot lock of the AT line `port` (an AtChat, or a wrapper naming the line it wraps as `slot_lock`)."""
    own = getattr(port, "slot_lock", None)
    if isinstance(own, trio.Lock):
        return own
    lock = _LOCKS.get(port)
    if lock is None:
        lock = _LOCKS[port] = trio.Lock()
    return lock
