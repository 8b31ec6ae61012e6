"""The simulated network's SMS centre (SMSC): it accepts mobile-originated SMS-SUBMITs, delivers mobile-terminated
SMS-DELIVERs and SMS-STATUS-REPORTs to the subscribed ME, and keeps a log of both with their states (3GPP TS 23.040
sections 3 and 9.2; the ME's answer is the RP-ACK / RP-ERROR of TS 24.011 section 7.3).

- `submit(tpdu, origin=...)` takes an SMS-SUBMIT as the ME sends it (+CMGS, +CMSS, the card's SEND SHORT MESSAGE),
  stores it, "forwards" it to the destination SME (which is outside the simulation: the outcome is TP-ST 00, or the
  status `outcomes` holds for that destination), and queues an SMS-STATUS-REPORT to the ME when TP-SRR asks for one
  (TS 23.040 9.2.3.5). A message the ME sends to its own number comes back as an SMS-DELIVER. A TPDU that is not
  a well-formed SMS-SUBMIT raises SmsPduError, whose `cms_code` the ME answers as +CMS ERROR (TS 27.005 3.2.5); a
  duplicate the ME asked to reject (TP-RD) gets TP-FCS C5.
- `inject_mt(...)` queues an MT message: a TPDU as given, or a text (split into concatenated parts when long), or
  8-bit data to an application port (a WAP push). A (U)SIM data download (TP-PID 7F, class 2) is delivered like any
  other: the ME gives it to the card as the SMS-PP DOWNLOAD ENVELOPE and its answer carries the card's PoR (TS 31.115
  section 4.4), which is recorded with the message.
- The ME subscribes with an async deliverer (`subscribe`); messages wait in the queue while nobody is subscribed,
  as a real SMSC stores them for an absent subscriber. `run()` is the thin trio task that hands queued messages to
  the deliverer one at a time, in order; every decision (states, reports, outcomes) is made by the sync methods
  `take_next` and `settle`, which the task calls.

MT states go QUEUED -> DELIVERING -> DELIVERED or FAILED through one transition table; a temporary RP-ERROR (TP-FCS
D4, SIM Application Toolkit busy: TS 23.040 9.2.3.22) puts the message back in the queue for a later attempt. Each message that crosses
the SMSC's boundary is a trace event (docs/protocols.md, "SMS and the SMSC"): `smsc.mo` when an MO TPDU is taken,
`smsc.refused` when one is refused, `smsc.mt` when an MT TPDU is offered to the ME and `smsc.outcome` with the ME's
answer. The control interface (serve_control, `bipsim cp --sms-listen`) and `bipsim sms` read and drive it from
outside the CP process.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

import trio

from bipsim.link.line_requests import serve_line_requests
from bipsim.net.sms_pdu import (
    WAP_PUSH_PORT,
    WAP_PUSH_SOURCE_PORT,
    Address,
    Alphabet,
    PortAddressing,
    ReportStatus,
    SmsDeliver,
    SmsPduError,
    SmsStatusReport,
    SmsSubmit,
    Tpdu,
    concatenation_of,
    decode_tpdu,
    make_dcs,
    ports_of,
    split_data,
    split_text,
    status_meaning,
)
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.transitions import TransitionTable

DEFAULT_ADDRESS = "+15550000000"
DEFAULT_ORIGINATOR = "+15550009999"  # the sender of an injected MT message when none is named
FCS_DUPLICATE = 0xC5  # TS 23.040 9.2.3.22: SM Rejected - Duplicate SM (27.005: +CMS ERROR 197)
MAX_LOG = 10_000  # messages of each direction kept; the oldest settled ones go first


class MtState(Enum):
    QUEUED = "queued"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"


class MtEvent(Enum):
    OFFER = "offer"  # handed to the ME's deliverer
    ACK = "ack"  # RP-ACK
    ERROR = "error"  # RP-ERROR, or the deliverer failed
    RETURN = "return"  # the delivery was cut off (the CP is stopping): queued again
    DEFER = "defer"  # a temporary RP-ERROR (the card's toolkit busy): queued again for a later attempt


MT_TABLE: TransitionTable[MtState, MtEvent] = TransitionTable(
    "SMSC MT message",
    {
        (MtState.QUEUED, MtEvent.OFFER): MtState.DELIVERING,
        (MtState.DELIVERING, MtEvent.ACK): MtState.DELIVERED,
        (MtState.DELIVERING, MtEvent.ERROR): MtState.FAILED,
        (MtState.DELIVERING, MtEvent.RETURN): MtState.QUEUED,
        (MtState.DELIVERING, MtEvent.DEFER): MtState.QUEUED,
    },
)
FINAL_MT = frozenset({MtState.DELIVERED, MtState.FAILED})
# TP-FCS values after which an SC tries again later (TS 23.040 9.2.3.22: D4, SIM Application Toolkit Busy)
TEMPORARY_FCS = frozenset({0xD4})
RETRY_INTERVAL = 5.0  # seconds before the next attempt after a temporary failure
MAX_ATTEMPTS = 4  # attempts at one message before a temporary failure counts as final


class MoState(Enum):
    """Where an MO message is: forwarded to the SME (delivered), refused by it (failed), or still pending (the SC
    keeps trying: a temporary TP-ST of 20..3F)."""

    DELIVERED = "delivered"
    PENDING = "pending"
    FAILED = "failed"


def _mo_state(status: int) -> MoState:
    # TS 23.040 9.2.3.15: 00..1F completed, 20..3F temporary and still trying, 40.. given up
    if status <= 0x1F:
        return MoState.DELIVERED
    if status <= 0x3F:
        return MoState.PENDING
    return MoState.FAILED


class MtAnswer(Protocol):
    """What the ME answers for one MT TPDU (TS 24.011 RP-ACK / RP-ERROR): cp/sms_commands.py's MtResult."""

    @property
    def delivered(self) -> bool: ...
    @property
    def por(self) -> bytes: ...
    @property
    def sw(self) -> int | None: ...
    @property
    def failure(self) -> int | None: ...
    @property
    def cause(self) -> str: ...


@dataclass(frozen=True)
class Answer:
    """An MtAnswer of the SMSC's own (tests, and the failure of a deliverer that raised)."""

    delivered: bool
    por: bytes = b""
    sw: int | None = None
    failure: int | None = None
    cause: str = ""


Deliverer = Callable[[bytes], Awaitable[MtAnswer]]


def _number(address: str) -> str:
    """An address as the SMSC compares them: international numbers with '+', others as given."""
    try:
        return str(Address.parse(address))
    except SmsPduError:
        return address


def _tpdu_fields(tpdu: Tpdu) -> dict[str, Any]:
    """The decoded view of a TPDU for the log and the control answers."""
    out: dict[str, Any] = {}
    if isinstance(tpdu, SmsDeliver | SmsSubmit):
        out["pid"] = tpdu.pid
        out["dcs"] = tpdu.dcs
        out["class"] = tpdu.message_class
        out["text"] = tpdu.text
        concat = tpdu.concatenation
        if concat is not None:
            out["concat"] = {
                "reference": concat.reference,
                "total": concat.total,
                "sequence": concat.sequence,
            }
        ports = ports_of(tpdu.udh)
        if ports is not None:
            out["ports"] = {"destination": ports.destination, "source": ports.source}
        if out["text"] is None:
            out["data"] = tpdu.ud.hex().upper()
    return out


@dataclass
class MtMessage:
    """One MT TPDU and what became of it."""

    id: int
    tpdu: bytes
    decoded: SmsDeliver | SmsStatusReport
    originator: str
    created: datetime
    state: MtState = MtState.QUEUED
    por: bytes = b""
    sw: int | None = None
    failure: int | None = None
    cause: str = ""
    mo_id: int | None = None  # the MO message a status report is about
    attempts: int = 0  # offers to the ME so far
    not_before: float = -math.inf  # (trio clock) no new attempt before this, after a temporary failure

    @property
    def type(self) -> str:
        return "status_report" if isinstance(self.decoded, SmsStatusReport) else "deliver"

    @property
    def is_data_download(self) -> bool:
        return isinstance(self.decoded, SmsDeliver) and self.decoded.is_data_download

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "state": self.state.value,
            "originator": self.originator,
            "created": self.created.isoformat(),
            "hex": self.tpdu.hex().upper(),
            "data_download": self.is_data_download,
            "attempts": self.attempts,
            **_tpdu_fields(self.decoded),
        }
        if isinstance(self.decoded, SmsStatusReport):
            out["mr"] = self.decoded.mr
            out["status"] = self.decoded.status
            out["mo_id"] = self.mo_id
        if self.state in FINAL_MT:
            out["por"] = self.por.hex().upper()
            out["sw"] = f"{self.sw:04X}" if self.sw is not None else None
            out["failure"] = self.failure
            out["cause"] = self.cause
        return out


@dataclass
class MoMessage:
    """One MO SMS-SUBMIT as the SMSC took it."""

    id: int
    origin: str
    tpdu: bytes
    submit: SmsSubmit
    received: datetime
    status: int
    state: MoState
    report_id: int | None = None  # the MT status report queued for it

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "origin": self.origin,
            "destination": str(self.submit.destination),
            "mr": self.submit.mr,
            "received": self.received.isoformat(),
            "state": self.state.value,
            "status": self.status,
            "status_meaning": status_meaning(self.status),
            "srr": self.submit.status_report_request,
            "report_id": self.report_id,
            "hex": self.tpdu.hex().upper(),
            **_tpdu_fields(self.submit),
        }


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class Smsc:
    """The SMS centre of the simulated network (see the module's docstring)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        tracer: Tracer = NULL_TRACER,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.address = _number(address)
        self.tracer = tracer
        self.clock = clock
        self.mo: list[MoMessage] = []
        self.mt: list[MtMessage] = []
        # TP-ST the SMSC reports for MO messages to a destination (default 00, received by the SME)
        self.outcomes: dict[str, int] = {}
        # more ops of the network's control socket (the voice calls' "call", "hangup", "calls": cp/voice_calls.py);
        # each takes the request object and answers one, raising RequestError on a bad request
        self.control_ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        # told of every MT message whose state changed (the control socket's waits, tests)
        self.mt_listeners: list[Callable[[MtMessage], None]] = []
        self._deliverers: list[Deliverer] = []
        self._next_id = 1
        self._reference = 0
        self._wakeup = trio.Event()

    # --- the ME side -----------------------------------------------------------------------------------------------

    def subscribe(self, deliverer: Deliverer) -> Callable[[], None]:
        """The ME registers where MT TPDUs go; returns the call that unsubscribes it. The latest subscriber gets
        the messages (one ME on this network)."""
        self._deliverers.append(deliverer)
        self._wake()

        def unsubscribe() -> None:
            if deliverer in self._deliverers:
                self._deliverers.remove(deliverer)

        return unsubscribe

    @property
    def subscribed(self) -> bool:
        return bool(self._deliverers)

    def submit(self, tpdu: bytes, *, origin: str) -> int:
        """Takes an MO SMS-SUBMIT from `origin` (the sender's number, or a label such as "uicc"); returns its
        TP-MR. SmsPduError (with the +CMS ERROR code) when the TPDU is malformed, not an SMS-SUBMIT, or a duplicate
        the ME asked to be rejected."""
        try:
            decoded = decode_tpdu(tpdu)
            if not isinstance(decoded, SmsSubmit):
                raise SmsPduError(f"an MO TPDU must be an SMS-SUBMIT, not {type(decoded).__name__}")
            origin = _number(origin)
            if decoded.reject_duplicates and any(
                m.origin == origin
                and m.submit.mr == decoded.mr
                and m.submit.destination == decoded.destination
                for m in self.mo
            ):
                raise SmsPduError(f"duplicate of TP-MR {decoded.mr} to {decoded.destination}", FCS_DUPLICATE)
        except SmsPduError as exc:
            self.tracer.emit(
                Actor.CP,
                Actor.NET,
                Layer.SMS,
                f"SMSC refused an MO TPDU: {exc.reason}",
                tpdu,
                error=True,
                kind=Kind.SMSC_REFUSED,
                fields={"origin": origin, "reason": exc.reason, "code": exc.cms_code},
            )
            raise
        now = self.clock()
        destination = str(decoded.destination)
        status = self.outcomes.get(destination, ReportStatus.RECEIVED)
        message = MoMessage(self._id(), origin, tpdu, decoded, now, int(status), _mo_state(status))
        self.mo.append(message)
        self.tracer.emit(
            Actor.CP,
            Actor.NET,
            Layer.SMS,
            f"SMSC took SMS-SUBMIT {message.id} to {destination} (TP-MR {decoded.mr})",
            tpdu,
            kind=Kind.SMSC_MO,
            fields={
                "id": message.id,
                "mr": decoded.mr,
                "origin": origin,
                "destination": destination,
                "srr": decoded.status_report_request,
                "status": message.status,
                "smsc": self.address,
            },
        )
        if destination == origin and message.state is MoState.DELIVERED:
            self._queue(self._loopback(decoded, origin, now), origin)
        if decoded.status_report_request:
            report = SmsStatusReport(decoded.mr, decoded.destination, now, self.clock(), message.status)
            queued = self._queue(report, self.address)
            queued.mo_id = message.id
            message.report_id = queued.id
        self._trim(self.mo)
        return decoded.mr

    @staticmethod
    def _loopback(submit: SmsSubmit, origin: str, now: datetime) -> SmsDeliver:
        """The SMS-DELIVER of a message the ME sent to itself (TS 23.040 9.2.3.26: TP-SRI mirrors TP-SRR)."""
        return SmsDeliver(
            Address.parse(origin),
            now,
            submit.pid,
            submit.dcs,
            submit.udh,
            submit.ud,
            status_report_indication=submit.status_report_request,
        )

    # --- the network side ------------------------------------------------------------------------------------------

    def inject_mt(
        self,
        tpdu: bytes | None = None,
        *,
        text: str | None = None,
        data: bytes | None = None,
        originator: str = DEFAULT_ORIGINATOR,
        pid: int = 0,
        message_class: int | None = None,
        alphabet: Alphabet | None = None,
        port: int | None = None,
    ) -> list[MtMessage]:
        """Queues MT messages for the ME: `tpdu` as given (an SMS-DELIVER or SMS-STATUS-REPORT), or `text` (one
        SMS-DELIVER, or concatenated parts), or 8-bit `data` (to application `port` when given, e.g. 2948 for a
        WAP push). SmsPduError (its reason says why) for a malformed TPDU or a text that cannot be coded."""
        if sum(x is not None for x in (tpdu, text, data)) != 1:
            raise SmsPduError("give exactly one of a TPDU, a text or data")
        now = self.clock()
        messages: list[SmsDeliver | SmsStatusReport] = []
        if tpdu is not None:
            decoded = decode_tpdu(tpdu)
            if isinstance(decoded, SmsSubmit):
                raise SmsPduError(
                    "an MT TPDU must be an SMS-DELIVER or an SMS-STATUS-REPORT, not an SMS-SUBMIT"
                )
            return [self._queue(decoded, str(getattr(decoded, "originator", self.address)), raw=tpdu)]
        sender = Address.parse(originator)
        # a WAP push comes from the connectionless WSP port (WAP-259 6.5); other ports as before, source 0
        source = WAP_PUSH_SOURCE_PORT if port == WAP_PUSH_PORT else 0
        headers = (PortAddressing(port, source).element(),) if port is not None else ()
        if text is not None:
            self._reference = (self._reference + 1) % 256
            parts = split_text(text, reference=self._reference, alphabet=alphabet, headers=headers)
            messages = [
                SmsDeliver(sender, now, pid, make_dcs(p.alphabet, message_class), p.udh, p.ud) for p in parts
            ]
        else:
            assert data is not None
            dcs = make_dcs(Alphabet.EIGHT_BIT, message_class)
            if headers:  # a WDP datagram: concatenated parts when it does not fit one (WAP-259 6.5.1)
                self._reference = (self._reference + 1) % 256
                chunks = split_data(data, reference=self._reference, headers=headers)
                messages = [SmsDeliver(sender, now, pid, dcs, p.udh, p.ud) for p in chunks]
            else:
                if len(data) > 140:
                    raise SmsPduError(f"{len(data)} octets of data do not fit one short message")
                messages = [SmsDeliver(sender, now, pid, dcs, (), data)]
        return [self._queue(m, str(sender)) for m in messages]

    def _queue(
        self, tpdu: SmsDeliver | SmsStatusReport, originator: str, raw: bytes | None = None
    ) -> MtMessage:
        message = MtMessage(
            self._id(), raw if raw is not None else tpdu.encode(), tpdu, originator, self.clock()
        )
        self.mt.append(message)
        self._trim(self.mt)
        self._wake()
        return message

    def _id(self) -> int:
        number = self._next_id
        self._next_id += 1
        return number

    def _trim(self, log: list[Any]) -> None:
        # bounded memory for a long run: the oldest settled messages go first
        while len(log) > MAX_LOG:
            oldest = next(
                (m for m in log if getattr(m, "state", None) not in (MtState.QUEUED, MtState.DELIVERING)),
                None,
            )
            if oldest is None:
                return
            log.remove(oldest)

    def _wake(self) -> None:
        self._wakeup.set()

    # --- delivery: the sans-IO steps and the trio task ------------------------------------------------------------

    def take_next(self, now: float = math.inf) -> MtMessage | None:
        """The oldest queued message due at `now` (trio clock), now DELIVERING, when an ME is subscribed; None
        otherwise."""
        if not self._deliverers:
            return None
        message = next((m for m in self.mt if m.state is MtState.QUEUED and m.not_before <= now), None)
        if message is None:
            return None
        message.attempts += 1
        self._change(message, MtEvent.OFFER)
        self.tracer.emit(
            Actor.NET,
            Actor.CP,
            Layer.SMS,
            f"SMSC offers {message.type.replace('_', ' ')} {message.id} from {message.originator}",
            message.tpdu,
            kind=Kind.SMSC_MT,
            fields={
                "id": message.id,
                "type": message.type,
                "originator": message.originator,
                "data_download": message.is_data_download,
                "smsc": self.address,
            },
        )
        return message

    def settle(self, message: MtMessage, answer: MtAnswer, now: float = 0.0) -> None:
        """Records the ME's answer (RP-ACK or RP-ERROR) for a message take_next gave. A temporary failure (TP-FCS
        D4, the card's toolkit busy) queues the message again, due RETRY_INTERVAL after `now` (trio clock), until
        MAX_ATTEMPTS attempts were made."""
        message.por = bytes(answer.por)
        message.sw = answer.sw
        message.failure = answer.failure
        message.cause = answer.cause
        if answer.delivered:
            event = MtEvent.ACK
        elif answer.failure in TEMPORARY_FCS and message.attempts < MAX_ATTEMPTS:
            event = MtEvent.DEFER
            message.not_before = now + RETRY_INTERVAL
        else:
            event = MtEvent.ERROR
        self._change(message, event)
        fields: dict[str, Any] = {
            "id": message.id,
            "state": message.state.value,
            "attempts": message.attempts,
        }
        if answer.sw is not None:
            fields["sw"] = f"{answer.sw:04X}"
        if answer.failure is not None:
            fields["failure"] = answer.failure
        if answer.cause:
            fields["cause"] = answer.cause
        self.tracer.emit(
            Actor.CP,
            Actor.NET,
            Layer.SMS,
            f"MT message {message.id} {message.state.value}" + (f": {answer.cause}" if answer.cause else ""),
            message.por or None,
            error=not answer.delivered,
            kind=Kind.SMSC_OUTCOME,
            fields=fields,
        )

    def _change(self, message: MtMessage, event: MtEvent) -> None:
        message.state = MT_TABLE.next(message.state, event)
        for listener in list(self.mt_listeners):
            listener(message)

    def next_due(self) -> float:
        """When the earliest deferred message is due (trio clock); infinity when none waits for a time or no ME
        is subscribed (a subscription wakes the task)."""
        if not self._deliverers:
            return math.inf
        return min((m.not_before for m in self.mt if m.state is MtState.QUEUED), default=math.inf)

    async def run(self) -> None:
        """Hands queued MT messages to the subscribed ME, one at a time, until cancelled."""
        while True:
            message = self.take_next(trio.current_time())
            if message is None:
                # nothing runs between take_next and the wait (no checkpoint): a wake-up cannot be missed
                self._wakeup = trio.Event()
                with trio.move_on_at(self.next_due()):
                    await self._wakeup.wait()
                continue
            deliverer = self._deliverers[-1]
            try:
                answer = await deliverer(message.tpdu)
            except trio.Cancelled:
                self._change(message, MtEvent.RETURN)
                raise
            except Exception as exc:  # the ME side failed: the message failed, the SMSC goes on
                answer = Answer(False, cause=f"{type(exc).__name__}: {exc}")
            self.settle(message, answer, trio.current_time())

    async def wait_settled(self, ids: list[int]) -> None:
        """Returns once every MT message of `ids` is DELIVERED or FAILED."""
        wanted = set(ids)
        done = trio.Event()

        def check(_: MtMessage | None = None) -> None:
            if all(m.state in FINAL_MT for m in self.mt if m.id in wanted):
                done.set()

        self.mt_listeners.append(check)
        try:
            check()
            await done.wait()
        finally:
            self.mt_listeners.remove(check)

    # --- views -----------------------------------------------------------------------------------------------------

    def mo_texts(self) -> list[dict[str, Any]]:
        """MO messages with their concatenated parts joined (TS 23.040 9.2.3.24.1): origin, destination, text,
        the ids of the parts, and whether every part has arrived."""
        groups: dict[tuple[str, str, int, int], list[MoMessage]] = {}
        out: list[dict[str, Any]] = []
        for message in self.mo:
            concat = concatenation_of(message.submit.udh)
            if concat is None:
                out.append(self._joined([message], 1))
                continue
            key = (message.origin, str(message.submit.destination), concat.reference, concat.total)
            if key not in groups:
                groups[key] = []
                out.append({"group": key})
            groups[key].append(message)
        return [
            self._joined(groups[entry["group"]], entry["group"][3]) if "group" in entry else entry
            for entry in out
        ]

    @staticmethod
    def _joined(parts: list[MoMessage], total: int) -> dict[str, Any]:
        by_sequence: dict[int, MoMessage] = {}
        for part in parts:
            concat = concatenation_of(part.submit.udh)
            by_sequence.setdefault(concat.sequence if concat else 1, part)
        ordered = [by_sequence[i] for i in sorted(by_sequence)]
        texts = [p.submit.text for p in ordered]
        return {
            "origin": parts[0].origin,
            "destination": str(parts[0].submit.destination),
            "text": None if any(t is None for t in texts) else "".join(t or "" for t in texts),
            "ids": [p.id for p in ordered],
            "complete": sorted(by_sequence) == list(range(1, total + 1)),
        }

    def status(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "subscribed": self.subscribed,
            "mo": len(self.mo),
            "mt": len(self.mt),
            "queued": sum(m.state is MtState.QUEUED for m in self.mt),
            "outcomes": dict(self.outcomes),
        }


# --- the control interface -------------------------------------------------------------------------------------------

MAX_LINE = 65536
MAX_WAIT = 60.0  # seconds a send-mt request waits for the ME's answers at most


class RequestError(ValueError):
    pass


def _opt_int(request: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = request.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RequestError(f"{key}: give an integer {low}..{high}")
    return value


def _opt_str(request: dict[str, Any], key: str) -> str | None:
    value = request.get(key)
    if value is not None and not isinstance(value, str):
        raise RequestError(f"{key}: give a string")
    return value


def _opt_hex(request: dict[str, Any], key: str) -> bytes | None:
    value = _opt_str(request, key)
    if value is None:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise RequestError(f"{key}: {value[:40]!r} is not hex") from None


class SmscControl:
    """One JSON object a line each way (docs/protocols.md, "SMS and the SMSC": the control lines). Every answer
    has `ok`; a bad request gets `{"ok": false, "error": ...}` and the connection stays usable."""

    def __init__(self, smsc: Smsc) -> None:
        self.smsc = smsc

    async def answer(self, line: bytes) -> dict[str, Any]:
        op: object = None
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise RequestError("a request is a JSON object")
            op = request.get("op")
            if op == "status":
                answer = {"ok": True, **self.smsc.status()}
            elif op == "send-mt":
                answer = await self.send_mt(request)
            elif op == "list-mo":
                answer = {
                    "ok": True,
                    "messages": [m.as_json() for m in self.smsc.mo],
                    "texts": self.smsc.mo_texts(),
                }
            elif op == "list-mt":
                answer = {"ok": True, "messages": [m.as_json() for m in self.smsc.mt]}
            elif op == "outcome":
                answer = self.outcome(request)
            elif isinstance(op, str) and op in self.smsc.control_ops:
                answer = self.smsc.control_ops[op](request)
            else:
                raise RequestError(f"unknown op {op!r}: status, send-mt, list-mo, list-mt, outcome")
        except json.JSONDecodeError as exc:
            answer = {"ok": False, "error": f"not JSON: {exc.msg}"}
        except RecursionError:
            answer = {"ok": False, "error": "not JSON: nested too deeply"}
        except UnicodeDecodeError:
            answer = {"ok": False, "error": "not UTF-8"}
        except (RequestError, SmsPduError) as exc:
            answer = {"ok": False, "error": str(exc)}
        self.smsc.tracer.emit(
            Actor.NET,
            Actor.NET,
            Layer.APP,
            f"SMSC control: {op} {'ok' if answer['ok'] else 'refused'}",
            error=not answer["ok"],
            kind=Kind.SMSC_CONTROL,
            fields={"op": op if isinstance(op, str) else None, "ok": answer["ok"]},
        )
        return answer

    async def send_mt(self, request: dict[str, Any]) -> dict[str, Any]:
        alphabet_name = _opt_str(request, "alphabet")
        alphabets = {"gsm": Alphabet.GSM7, "ucs2": Alphabet.UCS2, "8bit": Alphabet.EIGHT_BIT}
        if alphabet_name is not None and alphabet_name not in alphabets:
            raise RequestError(f"alphabet: one of {', '.join(alphabets)}")
        wait = request.get("wait", 0)
        if not isinstance(wait, int | float) or isinstance(wait, bool) or not 0 <= wait < math.inf:
            raise RequestError("wait: give the seconds to wait for the ME's answer (0 or more)")
        messages = self.smsc.inject_mt(
            _opt_hex(request, "hex"),
            text=_opt_str(request, "text"),
            data=_opt_hex(request, "data"),
            originator=_opt_str(request, "from") or DEFAULT_ORIGINATOR,
            pid=_opt_int(request, "pid", 0, 255) or 0,
            message_class=_opt_int(request, "class", 0, 3),
            alphabet=alphabets[alphabet_name] if alphabet_name else None,
            port=_opt_int(request, "port", 0, 65535),
        )
        settled = True
        if wait:
            settled = False
            with trio.move_on_after(min(float(wait), MAX_WAIT)):
                await self.smsc.wait_settled([m.id for m in messages])
                settled = True
        return {"ok": True, "settled": settled, "messages": [m.as_json() for m in messages]}

    def outcome(self, request: dict[str, Any]) -> dict[str, Any]:
        destination = _opt_str(request, "destination")
        if not destination:
            raise RequestError("destination: give the number whose MO messages get this status")
        status = _opt_int(request, "status", 0, 255)
        key = _number(destination)
        if status is None:
            self.smsc.outcomes.pop(key, None)
        else:
            self.smsc.outcomes[key] = status
        return {"ok": True, "outcomes": dict(self.smsc.outcomes)}


async def serve_control(
    smsc: Smsc,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serves the SMSC's control lines on TCP `host`:`port` (loopback by default) until cancelled; reports the
    bound address through `task_status` and prints it as `sms listening on HOST:PORT`."""
    control = SmscControl(smsc)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    address = (str(bound[0]), int(bound[1]))
    smsc.tracer.emit(
        Actor.NET,
        Actor.NET,
        Layer.APP,
        f"SMSC control socket listening on {address[0]}:{address[1]}",
        kind=Kind.SMSC_CONTROL,
        fields={"host": address[0], "port": address[1]},
    )
    print(f"sms listening on {address[0]}:{address[1]}", flush=True)

    async def connection(stream: trio.SocketStream) -> None:
        async def answer(line: bytes) -> bytes:
            return json.dumps(await control.answer(line)).encode()

        too_long = json.dumps({"ok": False, "error": "request line too long"}).encode()
        await serve_line_requests(stream, answer, max_line=MAX_LINE, too_long=too_long)

    task_status.started(address)
    await trio.serve_listeners(connection, listeners)


async def request(host: str, port: int, message: dict[str, Any], *, timeout: float = 60.0) -> dict[str, Any]:
    """Sends one request line to an SMSC control socket and returns the answer (the client of `bipsim sms`)."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(json.dumps(message).encode() + b"\n")
            buffer = bytearray()
            while True:  # a list can be long: look for the line end in each new chunk only
                data = await stream.receive_some(65536)
                if not data:
                    raise ConnectionError("the SMSC closed the control connection without an answer")
                buffer += data
                if b"\n" in data:
                    break
    answer = json.loads(bytes(buffer).split(b"\n", 1)[0])
    if not isinstance(answer, dict):
        raise ConnectionError("the SMSC's answer is not a JSON object")
    return answer
