"""The trace event of PROTOCOL.md section 4 and its JSON Lines form.

One event is one message crossing a process or card boundary (or a notable state change), with its exact bytes.
Events are small immutable values, like h11's events; `bipsim.trace.recorder` writes them, readers rebuild them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Actor(StrEnum):
    """The ends of a message: the lanes of a ladder diagram."""

    UICC = "uicc"
    CP = "cp"
    AP = "ap"
    OTA = "ota"
    NET = "net"
    PGW = "pgw"
    HOST = "host"
    READER = "reader"
    SMDP = "smdp"
    CLOUD = "cloud"
    PUBLISH = "publish"
    SYNC = "sync"


class Layer(StrEnum):
    """The protocol layer a message belongs to."""

    APDU = "apdu"
    CAT = "cat"
    AT = "at"
    CMUX = "cmux"
    PPP = "ppp"
    IP = "ip"
    TCP = "tcp"
    UDP = "udp"
    DNS = "dns"
    TLS = "tls"
    HTTP = "http"
    GP = "gp"
    SMS = "sms"
    LINE = "line"
    APP = "app"


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One line of a trace file.

    `kind` is the machine-readable type of the event (dotted, `<layer>.<what>`, see `bipsim.trace.kinds` and
    docs/protocols.md "Traces"): tools and checks read `kind` and `fields`, never `summary`, which is for people.
    `fields` holds the event's facts as JSON values (a channel number, an address, a status word, the other end's
    time of a merged message).
    `t` is seconds since the shared clock origin; `hex` holds the exact bytes (uppercase) where there are bytes;
    `step` is the patent step label (S401..S415, S701..S718) when the event is one; `session` names the embodiment
    or scenario run. `error` marks events that report a failure (bad input, refused connection, error result); it
    is written only when true, so traces without errors have exactly the keys of PROTOCOL.md.
    """

    t: float
    src: Actor
    dst: Actor
    layer: Layer
    summary: str
    hex: str | None = None
    step: str | None = None
    session: str | None = None
    error: bool = False
    kind: str = ""
    fields: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def data(self) -> bytes:
        """The event's bytes (empty when it carries none)."""
        return bytes.fromhex(self.hex) if self.hex else b""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "t": round(self.t, 6),
            "src": self.src.value,
            "dst": self.dst.value,
            "layer": self.layer.value,
            "kind": self.kind,
            "summary": self.summary,
        }
        if self.hex is not None:
            out["hex"] = self.hex
        if self.step is not None:
            out["step"] = self.step
        if self.session is not None:
            out["session"] = self.session
        if self.error:
            out["error"] = True
        if self.fields:
            out["fields"] = self.fields
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(", ", ": "), ensure_ascii=False)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> TraceEvent:
        """Builds an event from a parsed JSON object; raises ValueError/KeyError/TypeError on a bad shape."""
        t = obj["t"]
        if not isinstance(t, int | float) or isinstance(t, bool):
            raise ValueError("'t' must be a number")
        hex_ = obj.get("hex")
        if hex_ is not None:
            if not isinstance(hex_, str):
                raise ValueError("'hex' must be a string")
            bytes.fromhex(hex_)  # validates
            hex_ = hex_.upper()
        summary = obj["summary"]
        if not isinstance(summary, str):
            raise ValueError("'summary' must be a string")
        return cls(
            t=float(t),
            src=Actor(obj["src"]),
            dst=Actor(obj["dst"]),
            layer=Layer(obj["layer"]),
            summary=summary,
            hex=hex_,
            step=obj.get("step"),
            session=obj.get("session"),
            error=bool(obj.get("error", False)),
            kind=str(obj.get("kind", "")),
            fields=obj.get("fields"),
        )

    @classmethod
    def from_json(cls, line: str) -> TraceEvent:
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise ValueError("a trace line must be a JSON object")
        return cls.from_dict(obj)
