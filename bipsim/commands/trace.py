"""`bipsim trace`: turn JSONL traces into ladders (text, svg, html, mermaid), pcap, or compare/replay them."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bipsim.errors import CliError
from bipsim.trace.events import Layer, TraceEvent
from bipsim.trace.reader import TraceFormatError, read_trace


def load(paths: tuple[str, ...], strict: bool = False) -> list[TraceEvent]:
    """Reads and merges trace files; reports every bad line on stderr (or fails on the first with --strict)."""
    try:
        events, problems = read_trace(paths, strict=strict)
    except TraceFormatError as exc:
        raise CliError(f"invalid trace line: {exc}", exit_code=2) from exc
    for problem in problems:
        click.echo(f"warning: skipped invalid line {problem}", err=True)
    return events


def explain(event: TraceEvent) -> str:
    """A one-line decoded meaning of an event's bytes, where a decoder for its layer exists."""
    if not event.hex:
        return ""
    if event.layer in (Layer.APDU, Layer.CAT):
        from bipsim.commands.decode_bridge import describe_apdu_bytes

        return describe_apdu_bytes(event.data)
    if event.layer is Layer.AT:
        return repr(event.data.decode("latin-1"))
    return ""


files_argument = click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False)
)
strict_option = click.option(
    "--strict", is_flag=True, help="Fail on the first invalid line instead of skipping it."
)


@click.group("trace")
def trace() -> None:
    """Work with JSONL traces written by --trace (PROTOCOL.md section 4). Several files merge into one timeline
    by their shared clock."""


@trace.command("render")
@files_argument
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "svg", "html", "mermaid"]),
    default="text",
    show_default=True,
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
@click.option("--hex", "show_hex", is_flag=True, help="Text format: show each message's bytes.")
@click.option("--session", help="Only events of this session (e.g. e1, e2).")
@strict_option
def render_cmd(
    files: tuple[str, ...], fmt: str, output: str | None, show_hex: bool, session: str | None, strict: bool
) -> None:
    """Draw a message sequence chart with one lane per actor (UICC, CP, AP, network, OTA server)."""
    from bipsim.trace.render import render

    events = load(files, strict)
    if session is not None:
        events = [e for e in events if e.session == session]
    text = render(events, fmt, show_hex=show_hex, title=" + ".join(Path(f).name for f in files))
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


@trace.command("pcap")
@files_argument
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="The pcap file to write."
)
@strict_option
def pcap_cmd(files: tuple[str, ...], output: str, strict: bool) -> None:
    """Export APDUs as GSMTAP SIM (UDP 4729), network bytes as IP/TCP, AT (UDP 27007) and CMUX (UDP 27010)."""
    from bipsim.trace.pcap import export_pcap

    count = export_pcap(load(files, strict), output)
    click.echo(f"wrote {count} packets to {output}")


@trace.command("diff")
@click.argument("expected", type=click.Path(exists=True, dir_okay=False))
@click.argument("actual", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--layers",
    default="apdu,at,tcp",
    show_default=True,
    help="Comma-separated layers whose messages are compared.",
)
def diff_cmd(expected: str, actual: str, layers: str) -> None:
    """Compare two traces message by message (bytes, direction, layer; not timing). Exit 0 when they match,
    1 at the first divergence, which is printed with both sides' bytes and decoded meaning."""
    from bipsim.trace.diff import first_divergence

    try:
        chosen = frozenset(Layer(name.strip()) for name in layers.split(",") if name.strip())
    except ValueError as exc:
        raise CliError(f"--layers: {exc}", exit_code=2) from exc
    divergence = first_divergence(load((expected,)), load((actual,)), chosen)
    if divergence is None:
        click.echo("traces match")
        return
    click.echo(divergence.describe(explain))
    sys.exit(1)
