"""The trace event of docs/protocols.md ("Traces") and its JSON Lines form.

One event is one message crossing a process or card boundary (or a notable state change), with its exact bytes.
Events are small immutable values, like h11's events; `bipsim.trace.recorder` writes them, readers rebuild them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar


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

    APDU = "apdu"  # card commands and responses; the CAT inside them is told apart by `kind` (cat.*)
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
    is written only when true, so traces without errors have exactly the keys docs/protocols.md names.
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
        return _LINE_ENCODER.encode(self.to_dict())

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> TraceEvent:
        """Builds an event from a parsed JSON object; raises ValueError/KeyError/TypeError on a bad shape.

        Every key is checked for its type, so an accepted event is one the recorder could have written: `t` a
        finite number, `hex` an even number of hex digits, `step`/`session` strings or absent, `fields` an object.
        """
        t = obj["t"]
        if not isinstance(t, int | float) or isinstance(t, bool):
            raise ValueError("'t' must be a number")
        if isinstance(t, int):
            try:
                t = float(t)
            except OverflowError:
                raise ValueError("'t' must be a finite number, not an integer that large") from None
        if not math.isfinite(t):
            raise ValueError(f"'t' must be a finite number, not {t}")
        hex_ = obj.get("hex")
        if hex_ is not None:
            if not isinstance(hex_, str):
                raise ValueError("'hex' must be a string")
            try:
                bytes.fromhex(hex_)
            except ValueError:
                raise ValueError("'hex' must be hex digits, two per byte") from None
            hex_ = hex_.upper()
        summary = obj["summary"]
        if not isinstance(summary, str):
            raise ValueError("'summary' must be a string")
        for key in ("step", "session", "src", "dst", "layer", "kind"):
            value = obj.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"'{key}' must be a string, not {type(value).__name__}")
        error = obj.get("error", False)
        if not isinstance(error, bool):
            raise ValueError("'error' must be true or false")
        fields_ = obj.get("fields")
        if fields_ is not None and not isinstance(fields_, dict):
            raise ValueError("'fields' must be an object")
        return cls(
            t=float(t),
            src=_member(Actor, obj["src"], "src"),
            dst=_member(Actor, obj["dst"], "dst"),
            layer=_member(Layer, obj["layer"], "layer"),
            summary=summary,
            hex=hex_,
            step=obj.get("step"),
            session=obj.get("session"),
            error=error,
            kind=obj.get("kind") or "",
            fields=fields_ or None,
        )

    @classmethod
    def from_json(cls, line: str) -> TraceEvent:
        """Parses one JSON Lines line; NaN and Infinity are refused (JSON has no such numbers)."""
        obj = json.loads(line, parse_constant=_no_constant, parse_float=_finite_float)
        if not isinstance(obj, dict):
            raise ValueError("a trace line must be a JSON object")
        return cls.from_dict(obj)

    def field(self, name: str, default: Any = None) -> Any:
        """One of the event's `fields` (docs/protocols.md "Traces"), or `default` when it has none by that name."""
        return self.fields.get(name, default) if self.fields else default


_E = TypeVar("_E", bound=StrEnum)
# json.dumps(obj, separators=..., ensure_ascii=False) builds a new encoder per call; one shared encoder writes the
# same text (the trace recorder encodes every event with it)
_LINE_ENCODER = json.JSONEncoder(separators=(", ", ": "), ensure_ascii=False)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    """A JSON number too large for a float (1e999) would become inf, which to_json cannot write back as JSON."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is not finite")
    return value


def _member(enum: type[_E], value: object, key: str) -> _E:
    if isinstance(value, str) and value in enum._value2member_map_:
        return enum(value)
    names = ", ".join(member.value for member in enum)
    raise ValueError(f"'{key}' {value!r} is not one of {names}")
