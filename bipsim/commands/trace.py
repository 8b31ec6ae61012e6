"""`bipsim trace`: turn JSONL traces into ladders (text, svg, html, mermaid), pcap, or compare/replay them."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bipsim.errors import CliError
from bipsim.trace.events import Layer, TraceEvent
from bipsim.trace.reader import MAX_LINE_BYTES, TraceFormatError, read_trace


def load(paths: tuple[str, ...], skip_invalid: bool = False) -> list[TraceEvent]:
    """Reads and merges trace files (one event per message, docs/protocols.md "Traces").

    The first invalid line is an error naming its file and line (exit 2); with `skip_invalid` each one is a
    warning and the line is left out. A trace with no event at all is an error too, never an empty output.
    """
    try:
        events, problems = read_trace(paths, strict=not skip_invalid)
    except TraceFormatError as exc:
        raise CliError(f"invalid trace line: {exc}", exit_code=2) from exc
    except OSError as exc:
        raise CliError(f"cannot read the trace: {exc}", exit_code=2) from exc
    for problem in problems:
        click.echo(f"warning: skipped invalid line {problem}", err=True)
    if not events:
        names = ", ".join(paths)
        what = "no valid event" if problems else "no event (an empty trace)"
        raise CliError(f"{names}: {what}", exit_code=2)
    return events


files_argument = click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False)
)
strict_option = click.option(
    "--skip-invalid",
    is_flag=True,
    help="Skip invalid lines with a warning each instead of stopping at the first one. A line holds at most "
    f"{MAX_LINE_BYTES // (1024 * 1024)} MiB.",
)
legacy_strict_option = click.option("--strict", is_flag=True, hidden=True, help="The default now.")


@click.group("trace")
def trace() -> None:
    """Work with JSONL traces written by --trace (docs/protocols.md, "Traces"). Several files merge into one
    timeline by their shared clock, each message once."""


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
@click.option(
    "--layers", help="Only events of these comma-separated layers (e.g. apdu,at,tcp: no CMUX frames)."
)
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help="Draw every event: repeats (folded into one row by default) and the CMUX frames that carry an AT line or BIP data drawn at its own layer.",
)
@strict_option
@legacy_strict_option
def render_cmd(
    files: tuple[str, ...],
    fmt: str,
    output: str | None,
    show_hex: bool,
    session: str | None,
    layers: str | None,
    show_all: bool,
    skip_invalid: bool,
    strict: bool,
) -> None:
    """Draw a message sequence chart with one lane per actor (UICC, CP, AP, network, OTA server)."""
    from bipsim.trace.render import render

    events = load(files, skip_invalid)
    if session is not None:
        sessions = sorted({e.session for e in events if e.session})
        events = [e for e in events if e.session == session]
        if not events:
            raise CliError(f"--session {session}: no event (sessions: {', '.join(sessions) or 'none'})", 2)
    if layers is not None:
        try:
            chosen = {Layer(name.strip()) for name in layers.split(",") if name.strip()}
        except ValueError as exc:
            raise CliError(f"--layers: {exc}", exit_code=2) from exc
        events = [e for e in events if e.layer in chosen]
        if not events:
            raise CliError(f"--layers {layers}: no event of these layers", exit_code=2)
    title = " + ".join(Path(f).name for f in files)
    text = render(events, fmt, show_hex=show_hex, title=title, fold=not show_all)
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
@legacy_strict_option
def pcap_cmd(files: tuple[str, ...], output: str, skip_invalid: bool, strict: bool) -> None:
    """Export APDUs as GSMTAP SIM (UDP 4729), network bytes as IP/TCP, AT (UDP 27007) and CMUX (UDP 27010).
    The PPP frames of data calls, if any, go to OUTPUT's name with .ppp before the suffix (link type 204)."""
    from bipsim.trace.pcap import PPP_FRAME_KINDS, export_pcap, ppp_pcap_path

    events = list(load(files, skip_invalid))
    count = export_pcap(events, output)
    click.echo(f"wrote {count} packets to {output}")
    frames = sum(1 for event in events if event.kind in PPP_FRAME_KINDS and event.hex)
    if frames:
        click.echo(f"wrote {frames} PPP frames of data calls to {ppp_pcap_path(output)}")


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
    from bipsim.trace.explain import describe_divergence

    try:
        chosen = frozenset(Layer(name.strip()) for name in layers.split(",") if name.strip())
    except ValueError as exc:
        raise CliError(f"--layers: {exc}", exit_code=2) from exc
    divergence = first_divergence(load((expected,)), load((actual,)), chosen)
    if divergence is None:
        click.echo("traces match")
        return
    click.echo(describe_divergence(divergence))
    sys.exit(1)


REPLAY_HELP = """Play the recorded side of a run against the live other side; stop at the first divergence.

\b
--as card  (the modem under test) runs a live CP (`bipsim cp --card trace:F`) and a live AP on a
           pty pair, exactly as `bipsim scenario run` does. The recorded card answers the CP's APDUs
           and a recorded OTA server on the recorded 127.0.0.1 port answers its TCP connection with the
           server's recorded bytes (a live server cannot continue the recorded card's PSK-TLS session).
           Every APDU the CP sends and every byte that reaches the server is compared with the recording.
--as server  (the card under test) runs a live CP with its simulated card and a live AP; the
           recorded server on the recorded port answers with its recorded bytes once the card's
           bytes match the recording. Needs the card's seed (--card-seed or $BIPSIM_CARD_SEED,
           as when recorded) and the same profile/state; the server's randoms are in its bytes.
           A divergence names the TLS records (decrypted with the profile's PSK: HTTP request
           line and X-Admin headers).
--as ap      (the modem under test) runs a live CP on a pty; the recorded AP sends its AT
           commands, then per CMUX DLC its frames (and the network bytes it relayed) once the
           CP's recorded bytes on that DLC arrived. The CP's payload is compared per DLC as a
           stream (not frames, not the interleaving of DLCs); DLC 0 messages in any order.
           --card recorded (default) or sim (with --card-seed; the simulated card's power-on
           timing can make an early AT+CIMI differ).

\b
Toolkit APDUs (TERMINAL PROFILE, FETCH, TR, ENVELOPE, STATUS) and file access (SELECT, READ ...)
are each compared in their recorded order, not their interleaving (which follows the AP's timing).
How the CP cuts a server flight larger than the card's buffer into Data Available events also
depends on timing, so a trace with such flights may diverge at a Data Available envelope.

Exit 0 when the run matches the recording; 1 at the first divergence (printed with the expected and
actual bytes, their decoded meaning and the patent step) or when the live run cannot start; 2 for
unusable input (nothing to replay, several sessions without --session).
"""


@trace.command("replay", help=REPLAY_HELP)
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--as",
    "role",
    type=click.Choice(["card", "ap", "server"]),
    required=True,
    help="The recorded side to play (the other sides run live).",
)
@click.option("--session", help="The session of the trace to replay (when it holds several, e.g. e1 and e2).")
@click.option(
    "--bearer",
    type=click.Choice(["auto", "own-stack", "ap-proxy"]),
    help="The live CP's bearer; default: the recording's (AT%WEBOPCH: ap-proxy, AT%GETNET: own-stack).",
)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds the live run may take.")
@click.option(
    "--trace", "trace_path", type=click.Path(dir_okay=False), help="Write the live run's merged trace here."
)
@click.option(
    "--keep",
    "keep_dir",
    type=click.Path(file_okay=False),
    help="Keep the live processes' files (traces, logs) in this folder.",
)
@click.option(
    "--card-seed",
    metavar="HEX",
    envvar="BIPSIM_CARD_SEED",
    help="--as server / --as ap --card sim: the live card's random seed, as when recorded "
    "(default: $BIPSIM_CARD_SEED).",
)
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(dir_okay=False),
    metavar="NAME|FILE",
    help="--as server / --as ap --card sim: the live card's profile, as when recorded: a built-in NAME "
    "(see bipsim cp --help) or a FILE (default: the built-in default).",
)
@click.option(
    "--card",
    "card_kind",
    type=click.Choice(["recorded", "sim"]),
    default="recorded",
    show_default=True,
    help="--as ap: the card of the live CP: the recorded one, or a simulated card (needs --card-seed).",
)
def replay_cmd(
    file: str,
    role: str,
    session: str | None,
    bearer: str | None,
    timeout: float,
    trace_path: str | None,
    keep_dir: str | None,
    card_seed: str | None,
    profile_path: str | None,
    card_kind: str,
) -> None:
    import shutil
    import tempfile

    from bipsim.trace.replay_run import ReplayError, ReplayOptions, replay

    events = load((file,))
    sessions = sorted({e.session for e in events if e.session})
    if session is not None:
        events = [e for e in events if e.session == session]
    elif len(sessions) > 1:
        raise CliError(f"{file} holds sessions {', '.join(sessions)}: choose one with --session", exit_code=2)
    directory = Path(keep_dir) if keep_dir else Path(tempfile.mkdtemp(prefix="bipsim-replay-"))
    directory.mkdir(parents=True, exist_ok=True)
    options = ReplayOptions(
        directory=directory,
        label=session or (sessions or ["replay"])[0],
        timeout=timeout,
        trace_path=trace_path,
        bearer=bearer,
        seed=card_seed,
        profile_path=profile_path,
        card_kind=card_kind,
    )
    try:
        code = replay(role, events, options, click.echo)
    except ReplayError as exc:
        raise CliError(str(exc), exit_code=exc.exit_code) from exc
    finally:
        if not keep_dir:
            shutil.rmtree(directory, ignore_errors=True)
    if code:
        sys.exit(code)
