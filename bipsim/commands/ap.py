"""`bipsim ap`: the application processor (DTE) on a serial line: RIL on DLC 1, BIP proxy on DLC 2."""

from __future__ import annotations

import click
import trio

from bipsim.commands.common import (
    finish_trace,
    install_shutdown,
    make_tracer,
    pcap_option,
    session_option,
    trace_option,
    until_signalled,
)
from bipsim.errors import CliError


@click.command("ap")
@click.option(
    "--port", required=True, help="The serial line: a device path (/dev/ttyUSB1, a pty) or a pyserial URL."
)
@click.option("--baud", default=115200, show_default=True, help="Line speed for real serial ports.")
@click.option(
    "--wait-for-line",
    is_flag=True,
    help="Wait for a line that is not there yet (an adapter plugged in later) instead of failing at once. "
    "Without it a missing line at start is an error; a line that goes away later is always waited for.",
)
@click.option(
    "--wifi/--no-wifi",
    default=True,
    show_default=True,
    help="Whether the AP is on Wi-Fi (embodiment 2 needs it).",
)
@click.option(
    "--ssid", default="bipsim-lab", show_default=True, help="The Wi-Fi network's name (for traces)."
)
@click.option(
    "--cellular/--no-cellular", default=True, show_default=True, help="Whether %GETNET may hand out APNs."
)
@click.option(
    "--apn-db",
    "apn_db",
    type=click.Path(dir_okay=False),
    help="Android apns-conf.xml; default: the one shipped with bipsim.",
)
@click.option(
    "--allow",
    "allow",
    multiple=True,
    metavar="HOST[:PORT[-PORT]]",
    help="Destinations the proxy may reach (repeatable; default 127.0.0.0/8).",
)
@click.option(
    "--n1",
    default=1500,
    show_default=True,
    help="CMUX maximum frame information length requested with AT+CMUX.",
)
@click.option(
    "--push-sms",
    "push_sms",
    multiple=True,
    metavar="HEX",
    help="An SMS-DELIVER TPDU (hex) the network delivers once the modem is up, sent to the CP as "
    'AT%SMSPP="HEX" on DLC 1; a (U)SIM data download (PID 7F, class 2) reaches the card, e.g. an OTA push '
    "trigger. Repeatable; the card's PoR is traced.",
)
@trace_option
@pcap_option
@session_option
def ap(
    port: str,
    baud: int,
    wait_for_line: bool,
    wifi: bool,
    ssid: str,
    cellular: bool,
    apn_db: str | None,
    allow: tuple[str, ...],
    n1: int,
    push_sms: tuple[str, ...],
    trace_path: str | None,
    pcap_path: str | None,
    session: str | None,
) -> None:
    """Run the AP: probe the modem, switch the line to 27.010 CMUX, keep DLC 1 for modem control and serve the BIP
    proxy dialect on DLC 2 (%GETNET, %WEBOPCH, %WEBCLCH; docs/protocols.md, "The proxy dialect"), relaying data DLCs to TCP.
    Reconnects when the line goes away. Runs until Ctrl-C or SIGTERM."""
    install_shutdown("bipsim ap")  # exit 0 on SIGTERM, or 143 when not stopped within 1 s
    from dataclasses import replace

    from bipsim.ap.ap_service import DEFAULT_CMUX, ApOptions, ApplicationProcessor
    from bipsim.ap.apn_db import ApnDatabase
    from bipsim.ap.network import AllowRule, ApNetwork
    from bipsim.cp.modem import LineUnavailable

    try:
        messages = tuple(bytes.fromhex(text) for text in push_sms)
    except ValueError:
        raise CliError("--push-sms: give the TPDU in hex") from None
    network = ApNetwork(wifi=wifi, ssid=ssid, cellular=cellular)
    if allow:
        network.allow = [AllowRule.parse(text) for text in allow]
    tracer = make_tracer(trace_path, session, keep=bool(pcap_path))
    processor = ApplicationProcessor(
        ApOptions(port, baud, replace(DEFAULT_CMUX, n1=n1), wait_for_line=wait_for_line, push_sms=messages),
        network,
        ApnDatabase.load(apn_db),
        tracer=tracer,
    )

    missing: list[LineUnavailable] = []

    async def open_line() -> None:
        try:
            await processor.open_line()
        except LineUnavailable as exc:
            missing.append(exc)

    async def main() -> None:
        await until_signalled(open_line)  # Ctrl-C ends a --wait-for-line wait too
        if processor.opener.opened:
            await until_signalled(processor.run)

    try:
        trio.run(main)
        if missing:
            raise CliError(missing[0].hint())
    finally:
        finish_trace(tracer, pcap_path)
