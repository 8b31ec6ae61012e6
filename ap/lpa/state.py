"""The LPA's persisted state machine (docs/protocols.md, "The LPA on the AP"): the
flow of the cloud-backup invention (steps 000:201..203 and 000:401..404) as one transition table, kept in a JSON
file written atomically after every change, so a power cycle resumes where the flow stopped.

A download that completed is never requested again: every state after REQUESTING holds what the LPA needs to go on
(the EID, the PPR, the package or where to fetch it), so a restart after a failed install goes to the cloud, not to
the SM-DP+ (SGP.22 3.1.3: the SM-DP+ serves a bound profile package once).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from bipsim.uicc.transitions import TransitionTable


class LpaState(Enum):
    """Where the flow is. STOPPED ends a flow that cannot go on (the login page closed, the SM-DP+ refused, the
    eUICC refused the package from the cloud); CLOUD_DELETED ends a flow that installed its profile."""

    LOGIN_CHECK = "login_check"
    REQUESTING = "requesting"
    DOWNLOADED = "downloaded"
    UPLOADED = "uploaded"
    INSTALLING = "installing"
    INSTALLED = "installed"
    CLOUD_DELETED = "cloud_deleted"
    FAILED = "failed"
    CLOUD_FETCH = "cloud_fetch"
    PARSING = "parsing"
    STOPPED = "stopped"


class LpaEvent(Enum):
    LOGGED_IN = "logged_in"  # the cloud session exists (logged in, or after the login/registration page)
    LOGIN_REFUSED = "login_refused"  # the user closed the page: the preset message, and stop
    DOWNLOADED = "downloaded"  # getBoundProfilePackage answered the package (000:201)
    DOWNLOAD_REFUSED = "download_refused"  # ES9+ answered Failed or garbage: nothing to install
    UPLOADED = "uploaded"  # every record is in the cloud (000:4015)
    INSTALL = "install"  # the first segment goes to the eUICC (000:202 / 000:402)
    INSTALL_OK = "install_ok"  # ProfileInstallationResult says success
    INSTALL_FAILED = "install_failed"  # ProfileInstallationResult says error, or the install was interrupted
    CLOUD_DELETED = "cloud_deleted"  # the cloud answered the delete
    FETCH = "fetch"  # ask the cloud for the records (000:203 / 000:403); again after an interrupted install from it
    FETCHED = "fetched"  # the records arrived
    PARSED = "parsed"  # joined and checked (000:404): install again
    GIVE_UP = (
        "give_up"  # the cloud has nothing, the records are bad, or the eUICC refused the cloud's package
    )


S, E = LpaState, LpaEvent

LPA_TABLE: TransitionTable[LpaState, LpaEvent] = TransitionTable(
    "LPA",
    {
        (S.LOGIN_CHECK, E.LOGGED_IN): S.REQUESTING,
        (S.LOGIN_CHECK, E.LOGIN_REFUSED): S.STOPPED,
        (S.REQUESTING, E.DOWNLOADED): S.DOWNLOADED,
        (S.REQUESTING, E.DOWNLOAD_REFUSED): S.STOPPED,
        (S.DOWNLOADED, E.UPLOADED): S.UPLOADED,
        (S.UPLOADED, E.INSTALL): S.INSTALLING,
        (S.PARSING, E.PARSED): S.INSTALLING,
        (S.INSTALLING, E.INSTALL_OK): S.INSTALLED,
        (S.INSTALLING, E.INSTALL_FAILED): S.FAILED,
        (S.INSTALLED, E.CLOUD_DELETED): S.CLOUD_DELETED,
        (S.FAILED, E.FETCH): S.CLOUD_FETCH,
        (S.FAILED, E.GIVE_UP): S.STOPPED,
        (S.CLOUD_FETCH, E.FETCHED): S.PARSING,
        (S.CLOUD_FETCH, E.GIVE_UP): S.STOPPED,
        (S.PARSING, E.GIVE_UP): S.STOPPED,
    },
)

FINAL_STATES = frozenset({LpaState.CLOUD_DELETED, LpaState.STOPPED})


class StateFileError(ValueError):
    """The state file cannot be read as the LPA's state, or is not the state of this download."""


@dataclass
class LpaRecord:
    """What the flow has learnt so far, persisted with its state. `package` is the bound profile package as the
    SM-DP+ or the cloud gave it (kept until the install succeeded, so a failed upload can be sent again);
    `from_cloud` says the package being installed came from the cloud (a failure then ends the flow: no loop)."""

    state: LpaState = LpaState.LOGIN_CHECK
    activation_code: str = ""
    eid: str = ""
    transaction_id: str = ""  # hex
    iccid: str = ""
    ppr: int = 0
    package: bytes = b""
    records: int = 0
    fetched: list[str] = field(default_factory=list)  # the records the cloud answered (000:403), for 000:404
    result: bytes = b""  # the eUICC's ProfileInstallationResult (DER) of the install that succeeded
    notified: bool = False  # handleNotification sent for the installed profile
    enabled: bool = False  # EnableProfile answered ok
    from_cloud: bool = False
    attempts: int = 0  # installs started
    cloud_installs: int = (
        0  # installs started from the cloud's copy (bounded: ap/lpa/lpa.py CLOUD_INSTALL_ATTEMPTS)
    )
    interrupted: bool = (
        False  # the last install failed with no ProfileInstallationResult (card reset, line gone)
    )
    reason: str = ""  # why the flow stopped or the last install failed
    history: list[str] = field(default_factory=list)  # "state --event--> state" lines, for people

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "activation_code": self.activation_code,
            "eid": self.eid,
            "transaction_id": self.transaction_id,
            "iccid": self.iccid,
            "ppr": self.ppr,
            "package": self.package.hex(),
            "records": self.records,
            "fetched": list(self.fetched),
            "result": self.result.hex(),
            "notified": self.notified,
            "enabled": self.enabled,
            "from_cloud": self.from_cloud,
            "attempts": self.attempts,
            "cloud_installs": self.cloud_installs,
            "interrupted": self.interrupted,
            "reason": self.reason,
            "history": list(self.history),
        }

    @staticmethod
    def from_json(obj: object) -> LpaRecord:
        if not isinstance(obj, dict):
            raise StateFileError("the LPA state is a JSON object")
        try:
            return LpaRecord(
                state=LpaState(obj["state"]),
                activation_code=str(obj.get("activation_code", "")),
                eid=str(obj.get("eid", "")),
                transaction_id=str(obj.get("transaction_id", "")),
                iccid=str(obj.get("iccid", "")),
                ppr=int(obj.get("ppr", 0)),
                package=bytes.fromhex(str(obj.get("package", ""))),
                records=int(obj.get("records", 0)),
                fetched=[str(text) for text in obj.get("fetched", [])],
                result=bytes.fromhex(str(obj.get("result", ""))),
                notified=bool(obj.get("notified", False)),
                enabled=bool(obj.get("enabled", False)),
                from_cloud=bool(obj.get("from_cloud", False)),
                attempts=int(obj.get("attempts", 0)),
                cloud_installs=int(obj.get("cloud_installs", 0)),
                interrupted=bool(obj.get("interrupted", False)),
                reason=str(obj.get("reason", "")),
                history=[str(line) for line in obj.get("history", [])],
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise StateFileError(f"the LPA state file is not the LPA's: {exc}") from None


class LpaMachine:
    """The flow's state and facts, with `fire` the only way to change the state (uicc/transitions.py). With a
    `path` every change is written before `fire` returns: a temporary file, fsync, rename (a power cut leaves the
    old state or the new, never half of one)."""

    def __init__(self, path: Path | None = None, record: LpaRecord | None = None) -> None:
        self.path = path
        self.record = record or LpaRecord()

    @staticmethod
    def load(path: Path | None) -> LpaMachine:
        """The machine of the file at `path`, or a new one when there is no file yet."""
        if path is None or not path.exists():
            return LpaMachine(path)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StateFileError(f"{path}: {exc} (not an LPA state: remove it for a new download)") from None
        return LpaMachine(path, LpaRecord.from_json(obj))

    @property
    def state(self) -> LpaState:
        return self.record.state

    @property
    def finished(self) -> bool:
        return self.record.state in FINAL_STATES

    def fire(self, event: LpaEvent, **facts: Any) -> tuple[LpaState, LpaState]:
        """Moves by the table (IllegalSessionEvent when it has no row), sets `facts` on the record, saves; returns
        (before, after)."""
        before = self.record.state
        after = LPA_TABLE.next(before, event)
        for name, value in facts.items():
            if not hasattr(self.record, name) or name in ("state", "history"):
                raise AttributeError(f"the LPA record has no fact {name!r}")
            setattr(self.record, name, value)
        self.record.state = after
        self.record.history.append(f"{before.value} --{event.value}--> {after.value}")
        self.save()
        return before, after

    def note(self, **facts: Any) -> None:
        """Sets facts without a change of state (the EID once read, the transaction) and saves."""
        for name, value in facts.items():
            if not hasattr(self.record, name) or name in ("state", "history"):
                raise AttributeError(f"the LPA record has no fact {name!r}")
            setattr(self.record, name, value)
        self.save()

    def start_over(self, activation_code: str) -> None:
        """A new flow for `activation_code` in place of a finished one (the user asked for it: --lpa-new-flow);
        the old flow's history is kept, marked, for people."""
        history = [*self.record.history, f"--- a new flow after {self.record.state.value} ---"]
        self.record = LpaRecord(activation_code=activation_code, history=history)
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(self.record.to_json(), out, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)


def default_state_path(matching_id: str) -> Path:
    """The state file of an activation code when none is given: `bipsim-lpa-<matchingId>.json` in the working
    directory, one per code, so two downloads never share a flow."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", matching_id)[:64] or "default"
    return Path(f"bipsim-lpa-{safe}.json")


def open_state(path: Path | None, activation_code: str, *, new_flow: bool = False) -> LpaMachine:
    """The machine of `activation_code` from the file at `path` (a new one when there is no file).

    StateFileError when the file holds the flow of another activation code (its package, EID and transaction are
    that download's: resuming it for this code would install the wrong profile), or when it holds this code's flow
    that has ended (installed, or stopped) and `new_flow` is not set: a new download is the user's decision."""
    machine = LpaMachine.load(path)
    record = machine.record
    where = str(path) if path is not None else "the state"
    if record.activation_code and record.activation_code != activation_code:
        raise StateFileError(
            f"{where} holds the flow of activation code {record.activation_code!r} (EID {record.eid or 'not read'}, "
            f"{record.state.value}), not of {activation_code!r}: give this code its own state file (the default "
            "is bipsim-lpa-<matchingId>.json) or remove that one"
        )
    if machine.finished:
        if not new_flow:
            how = "installed" if record.state is LpaState.CLOUD_DELETED else f"stopped: {record.reason}"
            raise StateFileError(
                f"{where}: the flow of {activation_code!r} has ended ({how}); --lpa-new-flow starts a new "
                "download for it (or remove the file)"
            )
        machine.start_over(activation_code)
    return machine
