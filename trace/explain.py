"""Decoded meaning of the bytes where two traces part (`bipsim trace diff`, `bipsim trace replay`).

The diff machinery (trace/diff.py) finds the first divergence by bytes; this module says what those bytes mean:
a one-line decoding per message (the card codec for APDUs and CAT objects, TS 102 223; the text of AT lines,
V.250) and which decoded CAT objects differ (the names and fields of `bipsim decode --json`).
"""

from __future__ import annotations

from bipsim.trace.diff import Divergence
from bipsim.trace.events import Layer, TraceEvent


def explain(event: TraceEvent) -> str:
    """A one-line decoded meaning of an event's bytes, where a decoder for its layer exists."""
    if not event.hex:
        return ""
    if event.layer is Layer.APDU:
        from bipsim.uicc.cat_render import describe_bytes

        try:
            return describe_bytes(event.data)
        except ValueError as exc:
            return f"(undecodable: {exc})"
    if event.layer is Layer.AT:
        return repr(event.data.decode("latin-1"))
    return ""


def object_differences(expected: TraceEvent, actual: TraceEvent) -> list[str]:
    """The decoded CAT objects (`bipsim decode --json` names and fields) that differ between two card messages."""
    if (
        expected.layer is not Layer.APDU
        or actual.layer is not Layer.APDU
        or not expected.hex
        or not actual.hex
    ):
        return []
    from bipsim.uicc.cat_render import decode_as, to_json

    try:
        left, right = (to_json(decode_as(e.data, "auto")) for e in (expected, actual))
    except ValueError:  # TlvError is a ValueError: not a CAT message (status word, file access)
        return []
    out: list[str] = []
    for key in ("command", "device"):
        if left.get(key) != right.get(key):
            out.append(f"{key}: expected {left.get(key)}, actual {right.get(key)}")
    objects_a, objects_b = left.get("objects", []), right.get("objects", [])
    for index in range(max(len(objects_a), len(objects_b))):
        a = objects_a[index] if index < len(objects_a) else None
        b = objects_b[index] if index < len(objects_b) else None
        if a != b:
            name = (a or b or {}).get("name", "object")
            out.append(f"{name}: expected {_object_text(a)}, actual {_object_text(b)}")
    return out


def _object_text(obj: dict[str, object] | None) -> str:
    if obj is None:
        return "(absent)"
    text = str(obj.get("fields"))
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{text}{'' if obj.get('cr', True) else ' (CR clear)'}"


def describe_divergence(divergence: Divergence) -> str:
    """The divergence's description (both sides' bytes and meaning) plus the decoded objects that differ."""
    text = divergence.describe(explain)
    if divergence.expected is not None and divergence.actual is not None:
        for line in object_differences(divergence.expected, divergence.actual):
            text += f"\n  differs in {line}"
    return text
