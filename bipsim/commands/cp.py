"""`bipsim cp`: the modem processor (DCE) on a serial line, with its card and BIP gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

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
from bipsim.commands.packet_options import packet_plane_options, tun_relay_option
from bipsim.errors import CliError

if TYPE_CHECKING:
    from bipsim.trace.recorder import Tracer
    from bipsim.uicc.recorded_card import RecordedCard
    from bipsim.uicc.transport import ApduTransport


@click.command("cp")
@click.option(
    "--port",
    help="The serial line: a device path (/dev/ttyUSB0, a pty) or a pyserial URL. Give --port or --listen.",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Serve the modem's line on a TCP socket instead of --port (oFono's phonesim plugin connects so): one "
    "client at a time, the next after the first leaves. HOST defaults to 127.0.0.1; PORT 0 lets the system "
    "choose, and the port is said on stderr ('listening on tcp://HOST:PORT').",
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
    help="sim (the simulated UICC); pcsc:N (the card in PC/SC reader N, from 0, as `bipsim card readers` "
    "lists them; pcsc alone is reader 0); pcsc:NAME (the first reader whose name holds NAME, e.g. "
    '"pcsc:Virtual PCD" for the card `bipsim card serve --vpcd` exports); or trace:F (replay a recorded card).',
)
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(dir_okay=False),
    metavar="NAME|FILE",
    help="Card profile for --card sim: a built-in NAME (default; omapi: ARA-M rules granting the test application "
    "the echo applet; omapi-no-rules: no ARA-M; omapi-empty: an empty rule set; omapi-malformed: a broken rule "
    "TLV; omapi-arf: the rules as PKCS#15 access rule files; usat-menu: a SIM toolkit menu for a host's toolkit, "
    "no OTA session; phonebook: a dozen contacts, FDN, SDN and an own number for the phonebook commands; pin: "
    "PIN1 enabled, the modem boots into +CPIN: SIM PIN until 1234 is entered; euicc: an eUICC whose ISD-R "
    "answers SGP.22 ES10 over AT+CCHO/AT+CGLA, for the AP's LPA or a host LPA such as lpac) or a "
    "TOML/JSON FILE of keys over the default "
    "(uicc/default_profile.toml).",
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
@click.option(
    "--terminal-profile",
    "terminal_profile",
    default="bip-only",
    show_default=True,
    metavar="NAME|HEX",
    help="The TERMINAL PROFILE the CP sends to its card (TS 102 223 section 5.2): bip-only (the BIP facilities, "
    "as before), modem (what the CP carries out itself), host-usat (modem and what a 27.007 section 12 host "
    "toolkit offers), full (every facility), or the profile in hex. `bipsim decode --as terminal_profile HEX` "
    "names its bits; a host's AT+CUSATA=2 sends the merged MT and TE profiles later.",
)
@click.option(
    "--dialect",
    type=click.Choice(["generic", "quectel", "simcom", "ublox", "telit", "fibocom", "sierra", "dell"]),
    default="generic",
    show_default=True,
    help="The vendor AT dialect the modem speaks (docs/protocols.md, 'Vendor dialects'): generic (3GPP TS 27.007 "
    "as it is), or the identification, SIM-state URCs (+QSIMSTAT, +SIMCARD, +UUSIMSTAT, #QSS), ICCID command, "
    "+CCHO/+CGLA quirks, settings (+QCFG) and boot URCs of a Quectel, SIMCom, u-blox or Telit module, each after "
    "its public AT manual; fibocom (FM350-GL: +CCHO and +CGLA answered bare, without their prefix), sierra "
    "(MC7455: +CCHO's session id is a 16-digit hex handle; no +CGLA=?) or dell (DW5821e: no +CCHO/+CCHC/+CGLA, "
    "logical channels only through +CSIM), as lpac's issues record those modules.",
)
@click.option(
    "--card2",
    "card2_kind",
    metavar="SPEC",
    help="Give the CP a second card slot (SIM2) holding this card: sim, pcsc:N, pcsc:NAME (as --card) or "
    "none (an empty slot). Slot 1 (--card) runs the SIM toolkit and BIP; slot 2 answers the SIM AT commands "
    "(+CSIM, +CRSM, +CCHO/+CGLA/+CCHC, +CPIN, +CIMI) of a line that chose it with AT%SLOT=2. Without it the CP "
    "has one slot.",
)
@click.option(
    "--profile2",
    "profile2_path",
    type=click.Path(dir_okay=False),
    metavar="NAME|FILE",
    help="Card profile for --card2 sim: a built-in NAME or a TOML/JSON FILE, as --profile takes it.",
)
@click.option(
    "--state2",
    "state2_path",
    type=click.Path(dir_okay=False),
    help="The second simulated card's persistent state file (give it its own: two cards never share one).",
)
@click.option(
    "--card-control",
    "card_control",
    metavar="PATH",
    type=click.Path(dir_okay=False),
    help="Listen on this UNIX socket for card moves: a line 'remove N' pulls the simulated card of slot N, "
    "'insert N' puts it back, 'slots' lists the slots, 'contexts' the active packet data contexts, "
    "'deactivate CID' has the network end a context (its channel's link drops), 'radio SPEC' gives every radio "
    "bearer new figures (--radio's grammar; 'radio ideal,loss=1' is an outage), 'euicc-fault N K' has slot N's "
    "eUICC abort its next profile install at BPP segment K, once (0: none). Answers: 'ok ...' or "
    "'error ...'. For tests, scenarios and benches that pull a card or a context mid-session.",
)
@click.option(
    "--sms-listen",
    "sms_listen",
    metavar="HOST:PORT",
    help="Serve the simulated network's SMS centre's control socket here (TCP; port 0 picks one, said on stdout as "
    "'sms listening on HOST:PORT'): `bipsim sms` injects MT messages and lists the MO ones through it, "
    "`bipsim call` offers and ends voice calls. Bind "
    "127.0.0.1 unless another machine must reach it.",
)
@click.option(
    "--bip-app",
    "bip_app",
    metavar="SPEC",
    help="The simulated card runs this BIP application instead of its OTA session (for the packet plane's "
    "scenarios): udp:HOST:PORT[:COUNT] sends COUNT (3) datagrams over a UDP client channel and reads each answer "
    "as one unit; dns:NAME opens a UDP channel to the network's DNS server (198.51.100.1) asking in OPEN CHANNEL "
    "for the DNS server addresses, and looks NAME up; server:PORT opens a channel in the UICC server mode on PORT "
    "and echoes what a client sends until a line QUIT (bipsim cp prints nothing; the trace's app.event "
    "uicc_server_listening names the host port forwarded to it).",
)
@packet_plane_options
@tun_relay_option
@trace_option
@pcap_option
@session_option
def cp(
    port: str | None,
    listen: str | None,
    baud: int,
    wait_for_line: bool,
    card_kind: str,
    profile_path: str | None,
    state_path: str | None,
    bearer: str,
    start_delay: float,
    once: bool,
    extra_channels: tuple[str, ...],
    terminal_profile: str,
    card2_kind: str | None,
    profile2_path: str | None,
    state2_path: str | None,
    card_control: str | None,
    dialect: str,
    sms_listen: str | None,
    bip_app: str | None,
    radio: str,
    network_mode: str,
    seed: int,
    tun_relays: tuple[tuple[int, str, int], ...],
    trace_path: str | None,
    pcap_path: str | None,
    session: str | None,
) -> None:
    """Run the CP: it answers AT (3GPP TS 27.007) on the line, switches to 27.010 CMUX on AT+CMUX=0, serves modem
    control on DLC 1, asks the AP proxy on DLC 2, and carries the card's BIP channels (ETSI TS 102 223) on the chosen
    bearer. Runs until Ctrl-C or SIGTERM (or, with --once, until the first BIP session ended).

    A card that goes away (pulled, its reader unplugged) is reported, not fatal: its slot answers +CPIN and the
    SIM commands +CME ERROR: 10, its BIP channels end, and the CP powers it on again when it is back."""
    install_shutdown("bipsim cp")  # exit 0 on SIGTERM, or 143 when not stopped within 1 s
    from bipsim.cp.modem import LineUnavailable, Modem, ModemOptions

    if (port is None) == (listen is None):
        raise CliError("give the line: --port DEVICE or --listen HOST:PORT (one of them)")
    listen_at = host_port(listen) if listen is not None else None
    if listen_at is not None and wait_for_line:
        raise CliError("--wait-for-line is for --port; --listen waits for its clients anyway")
    tracer = make_tracer(trace_path, session, keep=bool(pcap_path))
    recorded = None
    from bipsim.uicc.terminal_profile import parse_profile

    try:
        profile = parse_profile(terminal_profile)
    except ValueError as exc:
        raise CliError(f"--terminal-profile: {exc}") from None
    if len(extra_channels) > 6:
        raise CliError("--extra-channel: a card has at most 7 channels, so at most 6 extra ones")
    extra = [host_port(text) for text in extra_channels]
    if extra and card_kind != "sim":
        raise CliError("--extra-channel needs --card sim")
    if card_kind == "none":
        raise CliError("--card none: slot 1 holds the toolkit's card; only --card2 may be empty")
    if card_control is not None:
        from bipsim.cp.modem import check_card_control_path

        try:
            check_card_control_path(card_control)
        except ValueError as exc:
            raise CliError(f"--card-control {exc}") from exc
    if card2_kind is not None and card2_kind.startswith("trace:"):
        raise CliError("--card2 trace:F: a recorded card replays slot 1's session only")
    if tun_relays and network_mode != "tun":
        raise CliError("--tun-relay needs --network tun")
    if bip_app is not None and (card_kind != "sim" or extra):
        raise CliError("--bip-app needs --card sim and no --extra-channel")
    try:
        card, recorded = open_card(
            "--card", card_kind, profile_path, state_path, tracer, extra, bip_app=bip_app
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    card2 = None
    if card2_kind is not None:
        if card2_kind == "sim" and state2_path is not None and state2_path == state_path:
            raise CliError("--state2: the two cards need state files of their own")
        card2, _ = open_card("--card2", card2_kind, profile2_path, state2_path, tracer, [])
    elif profile2_path or state2_path:
        raise CliError("--profile2 and --state2 need --card2 sim")
    modem = Modem(
        ModemOptions(
            port or "",
            baud,
            bearer,
            once,
            start_delay=start_delay,
            terminal_profile=profile,
            wait_for_line=wait_for_line,
            card_control=card_control,
            command_settings={"dialect": dialect},
            sms_listen=host_port(sms_listen) if sms_listen is not None else None,
            listen=listen_at,
            radio=radio,
            network=network_mode,
            seed=seed,
            tun_relays=tun_relays,
        ),
        card,
        tracer=tracer,
        card2=card2,
    )

    missing: list[LineUnavailable] = []

    async def open_line() -> None:
        try:
            await modem.open_line()
        except LineUnavailable as exc:
            missing.append(exc)

    async def main() -> None:
        await until_signalled(open_line)  # Ctrl-C ends a --wait-for-line wait too
        if modem.line_ready:
            await until_signalled(modem.run)

    import trio

    from bipsim.net.tun import TunUnavailable

    refused: list[BaseException] = []
    try:
        try:
            trio.run(main)
        except* TunUnavailable as group:  # --network tun where namespaces or /dev/net/tun are refused
            leaf: BaseException = group
            while isinstance(leaf, BaseExceptionGroup):  # the group keeps the nurseries' nesting
                leaf = leaf.exceptions[0]
            refused.append(leaf)
        if refused:  # raised out here: an exception raised inside except* would come out as a group
            raise CliError(str(refused[0]))
        if missing:
            raise CliError(missing[0].hint())
    finally:
        finish_trace(tracer, pcap_path)
    if recorded is not None and recorded.divergence is not None:
        raise CliError(f"replay diverged: {recorded.divergence}", exit_code=3)


def open_card(
    option: str,
    kind: str,
    profile_path: str | None,
    state_path: str | None,
    tracer: Tracer,
    extra: list[tuple[str, int]],
    *,
    bip_app: str | None = None,
) -> tuple[ApduTransport, RecordedCard | None]:
    """The card a --card/--card2 SPEC names, and the recorded card when it is one (its divergence is the exit
    code). `none` is an empty slot."""
    from bipsim.cp.card_slot import NoCard
    from bipsim.cp.modem import simulated_card

    if kind == "sim":
        card, _ = simulated_card(profile_path, state_path, tracer, extra, bip_app)
        return card, None
    if (kind == "pcsc" or kind.startswith("pcsc:")) and (profile_path is not None or state_path is not None):
        # a card of the real world carries its own profile and keeps its own state: never ignore them silently
        suffix = "2" if option == "--card2" else ""
        raise CliError(f"--profile{suffix} and --state{suffix} are for {option} sim, not {option} {kind}")
    if kind == "none":
        return NoCard(), None
    if kind.startswith("trace:"):
        from bipsim.trace.reader import read_trace
        from bipsim.uicc.recorded_card import RecordedCard

        events, _ = read_trace([kind[len("trace:") :]])
        recorded = RecordedCard(events)
        return recorded, recorded
    if kind == "pcsc" or kind.startswith("pcsc:"):
        from bipsim.uicc.pcsc_card import PcscUnavailable, open_pcsc_card

        try:
            return open_pcsc_card(kind), None  # pyscard there, pcscd answering, the reader present
        except (PcscUnavailable, ValueError) as exc:
            raise CliError(f"{option} {kind}: {exc}") from exc
    other = "pcsc[:N|:NAME] or none" if option == "--card2" else "pcsc[:N|:NAME] or trace:FILE"
    raise CliError(f"{option} {kind}: use sim, {other}")
