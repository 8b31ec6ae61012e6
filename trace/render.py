"""Message sequence charts of a trace, one lane per actor, like the patent's figures 4 and 7.

Formats: text (terminal; hex on demand), mermaid (a `sequenceDiagram` for docs), svg (a standalone chart with the
hex of each message in its tooltip) and html (one self-contained file that opens offline: the svg plus a step
legend, no scripts or external resources). Step labels lead each message; error events are drawn in red.

A merged trace holds each message once (trace/reader.py), so each message is one arrow. Labels come from the
event's `kind` (docs/protocols.md "Traces"): an AT echo reads `echo: ATE0`, an information line `info: +CEREG: 1,1`,
an unsolicited result `URC: ...`, each with the text of its bytes. With `fold`, a run of repeats (the same kind
between the same ends under the same step, e.g. the server's TCP segments of one flight) is drawn once and
counted on the next line, as `bipsim demo` counts repeated steps, and the CMUX frame that carries an AT line or BIP
data is not drawn beside it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from bipsim.trace.events import Actor, Layer, TraceEvent
from bipsim.trace.kinds import Kind
from bipsim.trace.steps import STEPS

LANES: tuple[Actor, ...] = (Actor.UICC, Actor.CP, Actor.AP, Actor.NET, Actor.OTA)
LANE_TITLES = {
    Actor.UICC: "UICC",
    Actor.CP: "CP",
    Actor.AP: "AP",
    Actor.NET: "network",
    Actor.OTA: "OTA server",
}
FORMATS = ("text", "svg", "html", "mermaid")
# one colour per layer, so the card, the line and the network read apart at a glance (errors are always red)
LAYER_COLORS = {
    "apdu": "#1f5fa8",
    "at": "#2b7a2b",
    "cmux": "#8a8a8a",
    "ip": "#8a4b08",
    "tcp": "#8a4b08",
    "tls": "#6b3fa0",
    "http": "#6b3fa0",
    "gp": "#6b3fa0",
    "app": "#555555",
}


# what an AT line is, when its kind says more than its text (the text comes from the bytes)
AT_PREFIXES: dict[str, str] = {Kind.AT_ECHO: "echo: ", Kind.AT_INFO: "info: ", Kind.AT_URC: "URC: "}


def describe(event: TraceEvent) -> str:
    """The message's name on the ladder: by kind for AT lines (their own text, marked echo/info/URC), else the
    event's summary (the text for people)."""
    if event.layer is Layer.AT and event.kind.startswith("at.") and event.hex:
        text = " ".join(event.data.decode("latin-1").split())
        return AT_PREFIXES.get(event.kind, "") + text if text else event.summary
    return event.summary


def _label(event: TraceEvent) -> str:
    name = describe(event)
    return f"{event.step} {name}" if event.step else name


@dataclass
class Row:
    """One arrow of the ladder: an event and how many repeats of it follow (folded)."""

    event: TraceEvent
    repeats: int = 0


def _repeat_key(event: TraceEvent) -> tuple[object, ...] | None:
    if event.error:
        return None
    what = event.kind or _label(event)
    return (event.src, event.dst, event.layer, what, event.step)


CARRIER_NEIGHBOURS = 8  # events either side searched for the message a CMUX data frame carries
CARRIER_WINDOW = 0.5  # seconds between a frame and the event of the message it carries


def carried(events: Sequence[TraceEvent]) -> set[int]:
    """Indexes of the CMUX data frames (kind cmux.data) that carry a message drawn at its own layer: an AT line or
    BIP data between the same ends, whose bytes the frame holds, recorded within CARRIER_WINDOW."""
    out: set[int] = set()
    for i, frame in enumerate(events):
        if frame.kind != Kind.CMUX_DATA or not frame.hex:
            continue
        data = frame.data
        for other in events[max(0, i - CARRIER_NEIGHBOURS) : i + CARRIER_NEIGHBOURS + 1]:
            if (
                other.layer is not Layer.CMUX
                and other.hex
                and (other.src, other.dst) == (frame.src, frame.dst)
                and abs(other.t - frame.t) <= CARRIER_WINDOW
                and other.data.strip(b"\r\n") in data
            ):
                out.add(i)
                break
    return out


def rows(events: Sequence[TraceEvent], *, fold: bool = False) -> list[Row]:
    """The ladder's rows; with `fold`, consecutive repeats (same ends, layer, kind and step) are one row, and a
    CMUX data frame that carries a message drawn at its own layer (`carried`) is not drawn again."""
    out: list[Row] = []
    hidden = carried(events) if fold else set()
    for index, event in enumerate(events):
        if index in hidden:
            continue
        key = _repeat_key(event)
        if fold and out and key is not None and key == _repeat_key(out[-1].event):
            out[-1].repeats += 1
        else:
            out.append(Row(event))
    return out


def render_text(
    events: Sequence[TraceEvent], *, show_hex: bool = False, width: int = 14, fold: bool = False
) -> str:
    """A ladder in plain text: one row per message, an arrow between lanes, the label after the lanes."""
    header = "".join(LANE_TITLES[lane].center(width) for lane in LANES)
    lanes = "".join("|".center(width) for _ in LANES)
    lines = [" " * 11 + header, " " * 11 + lanes]
    for row_ in rows(events, fold=fold):
        event = row_.event
        a, b = _lane(event.src), _lane(event.dst)
        row = list(lanes)
        lo, hi = sorted((a, b))
        start, end = lo * width + width // 2, hi * width + width // 2
        if a == b:
            row[start] = "*"
        else:
            for i in range(start + 1, end):
                row[i] = "-"
            if b > a:
                row[end - 1] = ">"
            else:
                row[start + 1] = "<"
        mark = "!" if event.error else " "
        lines.append(f"{event.t:9.4f}{mark} " + "".join(row) + "  " + _label(event))
        if show_hex and event.hex:
            lines.append(" " * 11 + "    " + event.hex)
        if row_.repeats:
            lines.append(
                " " * 11 + lanes + f"  ~ repeated {row_.repeats} more time{'s' * (row_.repeats > 1)}"
            )
    return "\n".join(lines) + "\n"


def _lane(actor: Actor) -> int:
    """An actor's lane; actors without their own lane (later sections' peers) share the network's."""
    return LANES.index(actor) if actor in LANES else LANES.index(Actor.NET)


def _mermaid_text(text: str) -> str:
    # mermaid message text may not contain ';' or '#' unescaped, nor newlines
    return text.replace("#", "#35;").replace(";", "#59;").replace("\n", " ")


def render_mermaid(events: Sequence[TraceEvent], *, fold: bool = False) -> str:
    out = ["sequenceDiagram"]
    for lane in LANES:
        out.append(f"    participant {lane.value} as {LANE_TITLES[lane]}")
    for row in rows(events, fold=fold):
        event = row.event
        arrow = "-x" if event.error else "->>"
        src, dst = LANES[_lane(event.src)].value, LANES[_lane(event.dst)].value
        label = _label(event) + (f" (x{row.repeats + 1})" if row.repeats else "")
        out.append(f"    {src}{arrow}{dst}: {_mermaid_text(label)}")
    return "\n".join(out) + "\n"


def render_svg(events: Sequence[TraceEvent], *, fold: bool = False) -> str:
    """A standalone SVG chart; each message's <title> holds its time, layer and hex (shown on hover)."""
    lane_w, top, row_h, left = 150, 60, 24, 90
    chart = rows(events, fold=fold)
    width = left + lane_w * len(LANES) + 460
    height = top + row_h * (len(chart) + 1) + 20
    x = {lane: left + lane_w * i + lane_w // 2 for i, lane in enumerate(LANES)}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="12">',
        "<defs>"
        + "".join(
            f"<marker id='arrow-{name}' markerWidth='8' markerHeight='8' refX='7' refY='4' orient='auto'>"
            f"<path d='M0,0 L8,4 L0,8 z' fill='{color}'/></marker>"
            for name, color in [
                *((layer.value, LAYER_COLORS.get(layer.value, "#333")) for layer in Layer),
                ("err", "#c00"),
            ]
        )
        + "</defs>",
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for lane in LANES:
        parts.append(
            f'<text x="{x[lane]}" y="30" text-anchor="middle" font-weight="bold">{LANE_TITLES[lane]}</text>'
            f'<line x1="{x[lane]}" y1="40" x2="{x[lane]}" y2="{height - 10}" stroke="#999" stroke-dasharray="4 3"/>'
        )
    label_x = left + lane_w * len(LANES) - lane_w // 2 + 16
    for i, row in enumerate(chart):
        event = row.event
        src, dst = LANES[_lane(event.src)], LANES[_lane(event.dst)]
        y = top + row_h * i
        color = "#c00" if event.error else LAYER_COLORS.get(event.layer.value, "#333")
        marker = "arrow-err" if event.error else f"arrow-{event.layer.value}"
        tip = f"t={event.t:.6f} {event.src.value}->{event.dst.value} [{event.layer.value}]"
        if event.hex:
            tip += "\n" + event.hex
        parts.append(f'<g class="msg{" error" if event.error else ""}"><title>{html.escape(tip)}</title>')
        if event.step:  # a patent step: a light band across the row so the figure's steps stand out
            parts.append(
                f'<rect x="4" y="{y - row_h // 2}" width="{width - 8}" height="{row_h}" fill="#fff6d5"/>'
            )
        if src is dst:
            parts.append(f'<circle cx="{x[src]}" cy="{y}" r="4" fill="{color}"/>')
        else:
            parts.append(
                f'<line x1="{x[src]}" y1="{y}" x2="{x[dst]}" y2="{y}" stroke="{color}" '
                f'stroke-width="1.5" marker-end="url(#{marker})"/>'
            )
        parts.append(f'<text x="8" y="{y + 4}" fill="#666">{event.t:8.4f}</text>')
        step = f'<tspan font-weight="bold">{html.escape(event.step)}</tspan> ' if event.step else ""
        name = describe(event) + (f" (x{row.repeats + 1})" if row.repeats else "")
        parts.append(
            f'<text x="{label_x}" y="{y + 4}" fill="{color}">'
            f'<tspan fill="#888">{event.layer.value:<5}</tspan> {step}{html.escape(name)}</text></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def render_html(events: Sequence[TraceEvent], *, title: str = "bipsim trace", fold: bool = False) -> str:
    """One self-contained page: the chart, then a legend of the patent steps that occur."""
    seen: list[str] = []
    for event in events:
        if event.step and event.step not in seen:
            seen.append(event.step)
    legend = "".join(
        f"<li><b>{html.escape(code)}</b> {html.escape(STEPS[code].description if code in STEPS else '')}</li>"
        for code in seen
    )
    errors = sum(1 for e in events if e.error)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:16px} .msg:hover text{fill:#06c} "
        "ul{columns:2;font-size:13px} .err{color:#c00}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{len(events)} events, {len(seen)} patent steps"
        + (f", <span class='err'>{errors} errors</span>" if errors else "")
        + ". Hover a message for its time, layer and bytes.</p>"
        + render_svg(events, fold=fold)
        + f"<h2>Steps</h2><ul id='steps'>{legend}</ul></body></html>\n"
    )


def render(
    events: Sequence[TraceEvent],
    fmt: str,
    *,
    show_hex: bool = False,
    title: str = "bipsim trace",
    fold: bool = False,
) -> str:
    if fmt == "text":
        return render_text(events, show_hex=show_hex, fold=fold)
    if fmt == "mermaid":
        return render_mermaid(events, fold=fold)
    if fmt == "svg":
        return render_svg(events, fold=fold)
    if fmt == "html":
        return render_html(events, title=title, fold=fold)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
