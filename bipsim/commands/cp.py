"""`bipsim cp`: the modem processor (DCE) on a serial line, with its card and BIP gateway."""

from __future__ import annotations

import click
import trio

from bipsim.commands.common import (
    finish_trace,
    host_port,
    install_shutdown,
    make_tracer,
    pcap_option,
    session_option,
    trace_option,
    until_signalled,
)
from bipsim.errors import CliError


@click.command("cp")
@click.option(
    "--port", required=True, help="The serial line: a device path (/dev/ttyUSB0, a pty) or a pyserial URL."
)
@click.option("--baud", default=115200, show_default=True, help="Line speed for real serial ports.")
@click.option(
    "--wait-for-line",
    is_flag=True,
    help="Wait for a line that is not there yet (an adapter plugged in later) instead of failing at once. "
    "Without it a missing line at start is an error; a line that goes away later is always waited for.",
)
@click.option(
    "--card",
    "card_kind",
    default="sim",
    show_default=True,
    help="sim (simulated UICC), pcsc[:N] (reader N), or trace:F (replay a recorded card).",
)
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(dir_okay=False),
    help="Card profile (TOML/JSON) for --card sim.",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False),
    help="The simulated card's persistent state file.",
)
@click.option(
    "--bearer",
    type=click.Choice(["auto", "own-stack", "ap-proxy"]),
    default="auto",
    show_default=True,
    help="own-stack: embodiment 1 (%GETNET); ap-proxy: embodiment 2 (%WEBOPCH); auto: the AP proxy when its Wi-Fi is up.",
)
@click.option(
    "--once", is_flag=True, help="Exit 0 after the card's first BIP session ended (for scripts and the demo)."
)
@click.option(
    "--start-delay",
    default=0.0,
    show_default=True,
    help="Seconds between the AP attaching and the card's power-on.",
)
@click.option(
    "--extra-channel",
    "extra_channels",
    multiple=True,
    metavar="HOST:PORT",
    help="The simulated card also runs an OTA session with this server on another BIP channel, at the same "
    "time (repeatable, up to 6).",
)
@trace_option
@pcap_option
@session_option
def cp(
    port: str,
    baud: int,
    wait_for_line: bool,
    card_kind: str,
    profile_path: str | None,
    state_path: str | None,
    bearer: str,
    start_delay: float,
    once: bool,
    extra_channels: tuple[str, ...],
    trace_path: str | None,
    pcap_path: str | None,
    session: str | None,
) -> None:
    """Run the CP: it answers AT (3GPP TS 27.007) on the line, switches to 27.010 CMUX on AT+CMUX=0, serves modem
    control on DLC 1, asks the AP proxy on DLC 2, and carries the card's BIP channels (ETSI TS 102 223) on the chosen
    bearer. Runs until Ctrl-C or SIGTERM (or, with --once, until the first BIP session ended)."""
    install_shutdown("bipsim cp")  # exit 0 on SIGTERM, or 143 when not stopped within 1 s
    from bipsim.cp.modem import LineUnavailable, Modem, ModemOptions, simulated_card

    tracer = make_tracer(trace_path, session, keep=bool(pcap_path))
    recorded = None
    if len(extra_channels) > 6:
        raise CliError("--extra-channel: a card has at most 7 channels, so at most 6 extra ones")
    extra = [host_port(text) for text in extra_channels]
    if extra and card_kind != "sim":
        raise CliError("--extra-channel needs --card sim")
    if card_kind == "sim":
        card, _ = simulated_card(profile_path, state_path, tracer, extra)
    elif card_kind.startswith("trace:"):
        from bipsim.trace.reader import read_trace
        from bipsim.uicc.recorded_card import RecordedCard

        events, _ = read_trace([card_kind[len("trace:") :]])
        recorded = RecordedCard(events)
        card = recorded
    elif card_kind.startswith("pcsc"):
        raise CliError("--card pcsc needs a PC/SC reader binding, which this build does not include")
    else:
        raise CliError(f"--card {card_kind}: use sim, pcsc[:N] or trace:FILE")
    modem = Modem(
        ModemOptions(port, baud, bearer, once, start_delay=start_delay, wait_for_line=wait_for_line),
        card,
        tracer=tracer,
    )

    missing: list[LineUnavailable] = []

    async def open_line() -> None:
        try:
            await modem.open_line()
        except LineUnavailable as exc:
            missing.append(exc)

    async def main() -> None:
        await until_signalled(open_line)  # Ctrl-C ends a --wait-for-line wait too
        if modem.line_opened:
            await until_signalled(modem.run)

    try:
        trio.run(main)
        if missing:
            raise CliError(missing[0].hint())
    finally:
        finish_trace(tracer, pcap_path)
    if recorded is not None and recorded.divergence is not None:
        raise CliError(f"replay diverged: {recorded.divergence}", exit_code=3)
