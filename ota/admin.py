"""The server side of the GlobalPlatform Amendment B HTTP admin protocol (section 3), sans-IO.

Each POST from a card carries X-Admin-Protocol globalplatform-remote-admin/1.0 and X-Admin-From
(//se-id/iccid/<ICCID> or //se-id/eid/<EID>); its body is the response script of the previous command script (empty
on the first POST). The answer is 200 with the next command script and X-Admin-Next-URI, or 204 No Content when
nothing is pending. A card's progress survives disconnection: a card that comes back (X-Admin-Resume: true) gets the
script it did not acknowledge. Malformed requests get 400/404/405/409/415 and change nothing.

Each card the server remembers has a session state (docs/protocols.md, "The OTA server"):

    NEW        just met (its first POST is being answered)
    READY      between scripts, while a POST is answered: the next script goes out, or the plan is complete
    AWAITING   a command script went out and its answer has not come
    COMPLETED  every script of its plan was answered; it gets 204 from now on

A POST is one event: POLL (empty body), ANSWER (a body posted where the pending script said, or to the bare admin
path), REPOST (a body that answers no pending script, from a card resuming with X-Admin-Resume: true) or STRAY (such
a body without the resume header). Every change goes through CARD_TRANSITIONS; an event the table does not allow
raises IllegalTransition and is answered 409 Conflict, changing nothing.

The server remembers at most `limits.cards` cards (uicc/http_limits.py). Meeting one more, it forgets the card seen
least recently among the completed ones; when none is completed, the card seen least recently, with a trace event
saying which pending script is dropped (that card, coming back, starts its plan again).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from bipsim.ota.campaign import Campaign, CardPlan
from bipsim.ota.http_connection import HttpRequest
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.http_limits import LIMITS, HttpLimits
from bipsim.uicc.remote_apdu import RemoteApduError, decode_response_script, encode_command_script
from bipsim.uicc.transitions import IllegalTransition, TransitionTable

PROTOCOL = "globalplatform-remote-admin/1.0"
SCRIPT_TYPE = "application/vnd.globalplatform.card-content-mgt;version=1.0"
RESPONSE_TYPE = "application/vnd.globalplatform.card-content-mgt-response;version=1.0"


class CardState(Enum):
    NEW = "new"
    READY = "ready"
    AWAITING = "awaiting an answer"
    COMPLETED = "completed"


class CardEvent(Enum):
    POLL = "POST without a body"
    ANSWER = "POST answering the pending script"
    REPOST = "resumed POST answering no pending script"
    STRAY = "POST answering no pending script, not resumed"
    SEND = "next script sent"
    EXHAUSTED = "no script left"


CARD_TRANSITIONS: TransitionTable[CardState, CardEvent] = TransitionTable(
    "OTA card session",
    {
        (CardState.NEW, CardEvent.POLL): CardState.READY,
        # a card we do not remember (forgotten, or a restarted server) re-posting its last answer: start its plan
        (CardState.NEW, CardEvent.REPOST): CardState.READY,
        (CardState.READY, CardEvent.SEND): CardState.AWAITING,
        (CardState.READY, CardEvent.EXHAUSTED): CardState.COMPLETED,
        (
            CardState.AWAITING,
            CardEvent.POLL,
        ): CardState.READY,  # back without an answer: the same script again
        (CardState.AWAITING, CardEvent.ANSWER): CardState.READY,  # logged: the next script
        # the answer to the script before, re-posted while our acknowledgement was lost: the pending one again
        (CardState.AWAITING, CardEvent.REPOST): CardState.READY,
        (CardState.COMPLETED, CardEvent.POLL): CardState.COMPLETED,
        (CardState.COMPLETED, CardEvent.REPOST): CardState.COMPLETED,  # its last answer again: 204 again
    },
)


@dataclass
class CardProgress:
    card: str
    plan: CardPlan
    next_script: int = 0
    awaiting: int | None = None  # index of the script sent and not yet answered
    awaiting_uri: str = ""  # the X-Admin-Next-URI sent with it: where its answer must be posted
    log: list[dict[str, Any]] = field(default_factory=list)
    sessions: int = 0
    resumed: int = 0
    completed: bool = False
    state: CardState = CardState.NEW

    def move(self, event: CardEvent) -> None:
        self.state = CARD_TRANSITIONS.next(self.state, event)
        self.completed = self.state is CardState.COMPLETED


@dataclass
class Answer:
    """The admin core's answer; ota/http_connection.py frames it (and closes the connection when `close`)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    close: bool = False


class AdminServer:
    """Per-card progress through a campaign; `results_path` gets the JSON results log after every change."""

    def __init__(
        self,
        campaign: Campaign,
        *,
        path: str = "/server/adminagent",
        results_path: str | Path | None = None,
        limits: HttpLimits = LIMITS,
        tracer: Tracer = NULL_TRACER,
    ) -> None:
        self.campaign = campaign
        self.path = path
        self.results_path = Path(results_path) if results_path else None
        self.limits = limits
        self.tracer = tracer
        self.cards: OrderedDict[str, CardProgress] = OrderedDict()  # least recently seen first
        self.forgotten = 0
        self._sequence = itertools.count(1)
        self._lock = threading.Lock()

    def error(self, status: int, reason: str) -> Answer:
        return Answer(
            status,
            [("X-Admin-Protocol", PROTOCOL), ("Content-Type", "text/plain")],
            reason.encode() + b"\n",
            close=True,
        )

    def handle(self, request: HttpRequest, *, psk_identity: str | None = None) -> Answer:
        if request.method != "POST":
            return self.error(405, f"{request.method} is not the admin protocol's method")
        if request.target.split("?")[0] != self.path:
            return self.error(404, f"no admin agent at {request.target}")
        if request.header("x-admin-protocol") != PROTOCOL:
            return self.error(400, "X-Admin-Protocol must be " + PROTOCOL)
        sender = request.header("x-admin-from")
        parts = sender.strip("/").split("/")
        if (
            len(parts) != 3
            or parts[0] != "se-id"
            or parts[1] not in ("iccid", "eid")
            or not parts[2].isascii()
            or not parts[2].isalnum()
        ):
            return self.error(400, "X-Admin-From must be //se-id/iccid/<ICCID> or //se-id/eid/<EID>")
        if request.body and not request.header("content-type").startswith(RESPONSE_TYPE.split(";")[0]):
            return self.error(415, "a card's body must be " + RESPONSE_TYPE)
        card_id = f"{parts[1]}:{parts[2]}"
        with self._lock:
            progress = self.cards.get(card_id)
            fresh = progress is None
            if progress is None:
                plan = self.campaign.plan_for(parts[2] if parts[1] == "iccid" else None, psk_identity)
                if plan is None:
                    return Answer(204, [("X-Admin-Protocol", PROTOCOL)])
                progress = CardProgress(card_id, plan)
            event = self.classify(progress, request)
            try:
                CARD_TRANSITIONS.next(progress.state, event)  # only asked: an illegal event changes nothing
            except IllegalTransition as exc:
                return self.error(409, f"{exc}")
            if event is CardEvent.ANSWER:
                try:  # a malformed answer leaves the script unacknowledged
                    responses = decode_response_script(request.body)
                except RemoteApduError as exc:
                    return self.error(400, f"response script: {exc}")
            else:
                responses = []
            if fresh:
                self._make_room()
                self.cards[card_id] = progress
            self.cards.move_to_end(card_id)
            return self._advance(progress, request, event, responses)

    def _make_room(self) -> None:
        """Forgets one card when the table is full: the least recently seen completed one, else the least
        recently seen one, with an error trace event naming the script it was waiting for."""
        if len(self.cards) < self.limits.cards:
            return
        victim = next((p for p in self.cards.values() if p.completed), None)
        if victim is None:
            victim = next(iter(self.cards.values()))
            self.tracer.emit(
                Actor.OTA,
                Actor.OTA,
                Layer.APP,
                f"card table full ({self.limits.cards}): forgetting {victim.card} with script {victim.awaiting} "
                "unanswered; it will start its plan again",
                error=True,
                kind=Kind.APP_EVENT,
                fields={"card": victim.card, "state": victim.state.value, "pending_script": victim.awaiting},
            )
        else:
            self.tracer.emit(
                Actor.OTA,
                Actor.OTA,
                Layer.APP,
                f"card table full ({self.limits.cards}): forgetting completed {victim.card}",
                kind=Kind.APP_EVENT,
                fields={"card": victim.card, "state": victim.state.value},
            )
        del self.cards[victim.card]
        self.forgotten += 1

    @staticmethod
    def classify(progress: CardProgress, request: HttpRequest) -> CardEvent:
        """The event a POST is for this card's session."""
        if not request.body:
            return CardEvent.POLL
        if progress.state is CardState.AWAITING and AdminServer._answers_awaiting(progress, request):
            return CardEvent.ANSWER
        if request.header("x-admin-resume").lower() == "true":
            return CardEvent.REPOST
        return CardEvent.STRAY

    def _advance(
        self, progress: CardProgress, request: HttpRequest, event: CardEvent, responses: list[bytes]
    ) -> Answer:
        if event is CardEvent.POLL and progress.awaiting is None:
            progress.sessions += 1
        if request.header("x-admin-resume").lower() == "true":
            progress.resumed += 1
        progress.move(event)
        if event is CardEvent.ANSWER:
            index = progress.awaiting
            assert index is not None
            status = request.header("x-admin-script-status", "ok")
            progress.log.append(
                {
                    "script": index,
                    "kind": progress.plan.kinds[index] if index < len(progress.plan.kinds) else "",
                    "commands": [a.hex().upper() for a in progress.plan.scripts[index]],
                    "responses": [r.hex().upper() for r in responses],
                    "status_words": [r[-2:].hex().upper() for r in responses],
                    "script_status": status,
                }
            )
            progress.next_script = index + 1
        elif progress.awaiting is not None:
            progress.next_script = progress.awaiting  # the card came back without answering: send it again
        progress.awaiting = None
        if progress.state is CardState.COMPLETED:
            self.save()
            return Answer(204, [("X-Admin-Protocol", PROTOCOL)])
        if progress.next_script >= len(progress.plan.scripts):
            progress.move(CardEvent.EXHAUSTED)
            self.save()
            return Answer(204, [("X-Admin-Protocol", PROTOCOL)])
        progress.move(CardEvent.SEND)
        index = progress.next_script
        progress.awaiting = index
        progress.awaiting_uri = f"{self.path}?seq={next(self._sequence)}"
        self.save()
        body = encode_command_script(progress.plan.scripts[index])
        headers = [
            ("X-Admin-Protocol", PROTOCOL),
            ("Content-Type", SCRIPT_TYPE),
            ("X-Admin-Next-URI", progress.awaiting_uri),
        ]
        return Answer(200, headers, body)

    @staticmethod
    def _answers_awaiting(progress: CardProgress, request: HttpRequest) -> bool:
        """Whether a POST's body answers the pending script: it was posted to the URI sent with that script
        (Amd B 3.3: the card posts its response script to X-Admin-Next-URI). A POST to the bare admin path
        carries no such reference and is taken as the answer."""
        target = request.target
        return "?" not in target or target == progress.awaiting_uri

    def results(self) -> dict[str, Any]:
        return {
            card: {
                "completed": p.completed,
                "sessions": p.sessions,
                "resumed": p.resumed,
                "scripts": p.log,
                "all_ok": all(
                    sw in ("9000",) or sw.startswith("61") for entry in p.log for sw in entry["status_words"]
                ),
            }
            for card, p in self.cards.items()
        }

    def save(self) -> None:
        if self.results_path is None:
            return
        tmp = self.results_path.with_name(self.results_path.name + ".tmp")
        tmp.write_text(json.dumps(self.results(), indent=2), encoding="utf-8")
        os.replace(tmp, self.results_path)
