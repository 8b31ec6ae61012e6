"""The server side of the GlobalPlatform Amendment B HTTP admin protocol (section 3), sans-IO.

Each POST from a card carries X-Admin-Protocol globalplatform-remote-admin/1.0 and X-Admin-From
(//se-id/iccid/<ICCID> or //se-id/eid/<EID>); its body is the response script of the previous command script (empty
on the first POST). The answer is 200 with the next command script and X-Admin-Next-URI, or 204 No Content when
nothing is pending. A card's progress survives disconnection: a card that comes back (X-Admin-Resume: true) gets the
script it did not acknowledge. Malformed requests get 400/404/405/415 and change nothing.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bipsim.ota.campaign import Campaign, CardPlan
from bipsim.uicc.http11 import REASONS, HttpError, Message, render
from bipsim.uicc.remote_apdu import RemoteApduError, decode_response_script, encode_command_script

PROTOCOL = "globalplatform-remote-admin/1.0"
SCRIPT_TYPE = "application/vnd.globalplatform.card-content-mgt;version=1.0"
RESPONSE_TYPE = "application/vnd.globalplatform.card-content-mgt-response;version=1.0"


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


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    close: bool = False

    def encode(self, *, chunked: bool = False) -> bytes:
        return render(
            f"HTTP/1.1 {self.status} {REASONS.get(self.status, '')}", self.headers, self.body, chunked=chunked
        )


class AdminServer:
    """Per-card progress through a campaign; `results_path` gets the JSON results log after every change."""

    def __init__(
        self, campaign: Campaign, *, path: str = "/server/adminagent", results_path: str | Path | None = None
    ) -> None:
        self.campaign = campaign
        self.path = path
        self.results_path = Path(results_path) if results_path else None
        self.cards: dict[str, CardProgress] = {}
        self._sequence = itertools.count(1)
        self._lock = threading.Lock()

    def error(self, status: int, reason: str) -> Answer:
        return Answer(
            status,
            [("X-Admin-Protocol", PROTOCOL), ("Content-Type", "text/plain")],
            reason.encode() + b"\n",
            close=True,
        )

    def handle(self, request: Message, *, psk_identity: str | None = None) -> Answer:
        method, target, _ = request.start
        if method != "POST":
            return self.error(405, f"{method} is not the admin protocol's method")
        if target.split("?")[0] != self.path:
            return self.error(404, f"no admin agent at {target}")
        if request.header("x-admin-protocol") != PROTOCOL:
            return self.error(400, "X-Admin-Protocol must be " + PROTOCOL)
        sender = request.header("x-admin-from")
        parts = sender.strip("/").split("/")
        if (
            len(parts) != 3
            or parts[0] != "se-id"
            or parts[1] not in ("iccid", "eid")
            or not parts[2].isalnum()
        ):
            return self.error(400, "X-Admin-From must be //se-id/iccid/<ICCID> or //se-id/eid/<EID>")
        if request.body and not request.header("content-type").startswith(RESPONSE_TYPE.split(";")[0]):
            return self.error(415, "a card's body must be " + RESPONSE_TYPE)
        card_id = f"{parts[1]}:{parts[2]}"
        with self._lock:
            progress = self.cards.get(card_id)
            if progress is None:
                plan = self.campaign.plan_for(parts[2] if parts[1] == "iccid" else None, psk_identity)
                if plan is None:
                    return Answer(204, [("X-Admin-Protocol", PROTOCOL)])
                progress = self.cards[card_id] = CardProgress(card_id, plan)
            return self._advance(progress, request)

    def _advance(self, progress: CardProgress, request: Message) -> Answer:
        resumed = request.header("x-admin-resume").lower() == "true"
        if not request.body and progress.awaiting is None:
            progress.sessions += 1
        if resumed:
            progress.resumed += 1
        if request.body and progress.awaiting is not None and not self._answers_awaiting(progress, request):
            # a resumed card re-posting the answer to a script it did not see acknowledged, while the
            # acknowledgement (our next script) was lost with the connection: not an answer to the pending script
            request = Message(request.start, request.headers)
        if request.body and progress.awaiting is not None:
            try:
                responses = decode_response_script(request.body)
            except RemoteApduError as exc:
                return self.error(400, f"response script: {exc}")
            index = progress.awaiting
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
            progress.awaiting = None
            progress.next_script = index + 1
        elif progress.awaiting is not None:
            progress.next_script = progress.awaiting  # the card came back without answering: send it again
            progress.awaiting = None
        if progress.next_script >= len(progress.plan.scripts):
            progress.completed = True
            self.save()
            return Answer(204, [("X-Admin-Protocol", PROTOCOL)])
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
    def _answers_awaiting(progress: CardProgress, request: Message) -> bool:
        """Whether a POST's body answers the pending script: it was posted to the URI sent with that script
        (Amd B 3.3: the card posts its response script to X-Admin-Next-URI). A POST to the bare admin path
        carries no such reference and is taken as the answer."""
        target = request.start[1]
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


def bad_request(exc: HttpError) -> Answer:
    return Answer(
        exc.status,
        [("X-Admin-Protocol", PROTOCOL), ("Content-Type", "text/plain")],
        exc.reason.encode() + b"\n",
        close=True,
    )
