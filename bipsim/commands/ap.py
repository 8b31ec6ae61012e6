"""`bipsim ap`: the application processor (DTE) on a serial line: RIL on DLC 1, BIP proxy on DLC 2."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from bipsim.commands.packet_options import seed_option, wlan_option
from bipsim.errors import CliError

if TYPE_CHECKING:
    from bipsim.ap.lpa.lpa import LpaOptions
    from bipsim.ap.omapi.stack import OmapiOptions
    from bipsim.ap.upgrade.agent import UpgradeOptions


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
@click.option(
    "--omapi/--no-omapi",
    default=False,
    show_default=True,
    help='Offer the Open Mobile API (docs/protocols.md, "OMAPI on the AP"): at start-up load each card\'s access '
    "rules from its ARA-M through AT+CCHO/+CGLA/+CCHC into enforceCarrierPrivilege (steps 004:201..206), then "
    "initialise OMAPI (004:301..305). Implied by --omapi-listen.",
)
@click.option(
    "--omapi-listen",
    metavar="HOST:PORT",
    help="Serve the OMAPI control socket here (JSON lines; `bipsim omapi` is its client); port 0 picks a free "
    "one, printed as 'omapi listening on HOST:PORT'. Use 127.0.0.1: applications on other hosts are not the "
    "phone's.",
)
@click.option(
    "--nfc/--no-nfc",
    default=False,
    show_default=True,
    help="Whether an NFC process is present. With the default gate it changes no outcome: the card's rules "
    "decide, not the NFC process (the invention of seed 004).",
)
@click.option(
    "--omapi-gate",
    type=click.Choice(["variable", "nfc-legacy"]),
    default="variable",
    show_default=True,
    help="What allows a logical channel: 'variable' reads enforceCarrierPrivilege (the invention); "
    "'nfc-legacy' is the old rule, only the NFC process may open (so nothing opens with --no-nfc).",
)
@click.option(
    "--no-card-mode",
    type=click.Choice(["1", "2"]),
    default="1",
    show_default=True,
    help="A slot without a card at start-up: 1 does not try to load its rules, 2 tries once and fails; "
    "either way its variable is false.",
)
@click.option(
    "--se-choose",
    "se_choose",
    default="first",
    show_default=True,
    metavar="first|SIM1|SIM2|script:FILE",
    help="How the card chooser dialog (steps 004:403/404) answers for the user: the first available reader, "
    "that reader when it is listed, or one answer per dialog from FILE (a reader name, a 1-based position, or "
    "'cancel' per line).",
)
@click.option(
    "--toolkit",
    "toolkit",
    metavar="accept|refuse|select:N|script:FILE",
    help="Run a SIM toolkit on the AP (3GPP TS 27.007 section 12): it writes its TE profile (AT+CUSATW), "
    "activates it (AT+CUSATA=2) and answers each +CUSATP proactive command by this policy: accept (OK, first "
    "items, 'bipsim' as input), refuse (the user turns everything down), select:N (accept, and select menu "
    "item N after the card's SET UP MENU), or script:FILE (one answer per command: ok, refuse, end, back, "
    "timeout, busy, item N, menu N, text STRING, key C, result HH). Each answer is a usat.toolkit trace event.",
)
@click.option(
    "--card-slots",
    type=click.IntRange(0, 8),
    default=0,
    show_default=True,
    help="Card slots the CP has (readers SIM1..SIMn); 0 asks the CP with AT%SLOTS?.",
)
@click.option(
    "--sync",
    "sync_url",
    metavar="URL",
    help="Run the SIM data sync (docs/protocols.md, 'SIM data sync') against this sync server, e.g. "
    "http://127.0.0.1:8480/sync/v1/<IMSI>/records ('none': sync the SIMs, virtual SIMs and the terminal's store "
    "without a server). Cards inserted or removed (AT%SLOTS?) and virtual SIMs added or deleted start a sync.",
)
@click.option(
    "--sync-token",
    default="",
    help="The terminal's bearer token at the sync server (--terminal of bipsim sync-server); "
    "required with a --sync URL.",
)
@click.option(
    "--sync-store",
    type=click.Path(dir_okay=False),
    default="bipsim-sync.json",
    show_default=True,
    help="The terminal's own store of contacts and messages, and the sync's journal (JSON).",
)
@click.option(
    "--virtual-sims",
    type=click.Path(file_okay=False),
    help="Directory of the virtual SIMs (one <profile>.json each); adding or deleting a file starts a sync.",
)
@click.option(
    "--security",
    type=click.Choice(["pass", "fail"]),
    default="pass",
    show_default=True,
    help="The sync's security check (password, fingerprint...): 'fail' means no read and no write anywhere.",
)
@click.option(
    "--upgrade",
    is_flag=True,
    help='Run the upgrade agent (docs/protocols.md, "The upgrade agent"): it reads SMS through 27.005 (AT+CMGF=0, '
    "AT+CNMI=2,1, +CMTI, AT+CMGR), takes a publish server's release notices (plain SMS, WAP Push), asks the user "
    "(--upgrade-policy), connects to the server the notice names, authenticates, downloads, checks size and "
    "SHA-256, installs into --upgrade-registry and reports a JSR-118 status code (900 success, 902 user cancelled, "
    "903 loss of service, 904 size mismatch, 906 invalid descriptor, 907 invalid package, 909 authentication "
    "failure...). A card applet's release (a descriptor with the OTA platform's push) goes to the card with "
    "AT%SMSPP, whose session with the OTA server installs it by RAM. Implied by the other --upgrade options.",
)
@click.option(
    "--upgrade-registry",
    type=click.Path(dir_okay=False),
    default="upgrade-registry.json",
    show_default=True,
    help="The installed packages (JSON: name -> version, file, sha256), the package files in <stem>.d/ beside it; "
    "an install replaces it atomically, so any failure keeps the old version.",
)
@click.option(
    "--upgrade-token",
    metavar="HEX",
    help="The terminal's token at the publish server (16 bytes or more, hex; the server's --terminals file holds "
    "it under this phone's IMEI). It never crosses the wire: the agent answers HMAC-SHA256(token, nonce || IMEI).",
)
@click.option(
    "--upgrade-server",
    metavar="HOST:PORT",
    help="The publish server (HTTP) of the active check (--upgrade-check); notices may name it (they carry their "
    "own address, and the agent follows only trusted ones: this and --upgrade-trust).",
)
@click.option(
    "--upgrade-trust",
    metavar="HOST:PORT",
    multiple=True,
    help="A publish server a notice may name besides --upgrade-server (repeatable). A notice naming any other "
    "server is refused (result 909, no connection): a plain SMS or HTTP notice can be forged by anyone.",
)
@click.option(
    "--upgrade-check",
    is_flag=True,
    help="Embodiment 3: once the modem gave the IMEI, send each installed name and version to --upgrade-server "
    "and install a newer release when there is one ('no new version' otherwise).",
)
@click.option(
    "--upgrade-policy",
    default="accept",
    show_default=True,
    metavar="accept|decline|script:FILE",
    help="The user's answer to each install prompt: accept, decline, or one answer per prompt from FILE "
    "(accept/yes/y or decline/no/n per line; prompts past its end are declined).",
)
@click.option(
    "--upgrade-ip-push",
    metavar="HOST:PORT",
    help="Embodiment 4: hold an authenticated IP-push connection to the publish server's --push-listen address "
    "from boot, reconnecting with a doubling backoff (1 s to 60 s); each release message on it starts a prompt. "
    "A rejected authentication ends it.",
)
@click.option(
    "--lpa",
    "lpa_code",
    metavar="ACTIVATION_CODE",
    help='Run the LPA (docs/protocols.md, "eUICC and the cloud backup"): download the profile of this SGP.22 '
    "activation code (LPA:1$HOST:PORT$MATCHING_ID) from the SM-DP+ over ES9+ (HTTPS trusting the CI of --lpa-pki), "
    "back it up to --lpa-cloud as records before installing it on the card's eUICC over AT+CCHO/+CGLA, fetch it "
    "back from the cloud when the install fails, delete the backup, enable the profile and read AT+CIMI. Needs "
    "--lpa-cloud.",
)
@click.option(
    "--lpa-cloud",
    metavar="URL",
    help="The cloud store (bipsim cloud): http://HOST:PORT, or http://USER:PASS@HOST:PORT with the terminal's "
    "saved account, which the 'logged-in' UI policy uses.",
)
@click.option(
    "--lpa-ui",
    default="logged-in",
    show_default=True,
    metavar="logged-in|login:USER:PASS|register:USER:PASS|close",
    help="How the user answers the cloud website before the download: already logged in (the account of "
    "--lpa-cloud, no page), logs in on the login page, registers on the registration page the login page sends "
    "an unknown user to, or closes the login page (one preset message, no download).",
)
@click.option(
    "--lpa-state",
    type=click.Path(dir_okay=False),
    help="The LPA's persisted state machine (JSON, written atomically at every step): a restarted AP or a "
    "new modem session resumes the flow there, and never asks the SM-DP+ twice. It records the activation code "
    "and the EID: a file holding another code's flow is refused, and a resumed flow goes on only with the eUICC "
    "of its EID. Default: bipsim-lpa-<matchingId>.json in the working directory (one file per code).",
)
@click.option(
    "--lpa-new-flow",
    is_flag=True,
    help="When --lpa-state holds this activation code's flow that has ended (installed, or stopped: login page "
    "closed, download refused...), start a new download in its place; without it the AP refuses to start and "
    "says so. A flow that has not ended is always resumed.",
)
@click.option(
    "--lpa-pki",
    type=click.Path(file_okay=False),
    help="The test PKI directory (bipsim smdp --pki) whose CI the LPA trusts for the SM-DP+'s TLS; default "
    "$BIPSIM_PKI or ~/.cache/bipsim/pki, made on first use.",
)
@click.option(
    "--lpa-limit",
    type=click.IntRange(1, 1 << 20),
    default=1024,
    show_default=True,
    help="Package bytes per cloud record: the cloud's single-upload maximum (bipsim cloud --limit).",
)
@wlan_option
@seed_option
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
    omapi: bool,
    omapi_listen: str | None,
    nfc: bool,
    omapi_gate: str,
    no_card_mode: str,
    se_choose: str,
    card_slots: int,
    toolkit: str | None,
    sync_url: str | None,
    sync_token: str,
    sync_store: str,
    virtual_sims: str | None,
    security: str,
    upgrade: bool,
    upgrade_registry: str,
    upgrade_token: str | None,
    upgrade_server: str | None,
    upgrade_check: bool,
    upgrade_policy: str,
    upgrade_ip_push: str | None,
    upgrade_trust: tuple[str, ...],
    lpa_code: str | None,
    lpa_cloud: str | None,
    lpa_ui: str,
    lpa_state: str | None,
    lpa_new_flow: bool,
    lpa_pki: str | None,
    lpa_limit: int,
    wlan: str | None,
    seed: int,
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
    if toolkit is not None:
        from bipsim.ap.toolkit import Policy, PolicyError

        try:
            Policy.parse(toolkit)
        except PolicyError as exc:
            raise CliError(f"--toolkit: {exc}") from None
    omapi_options = None
    if omapi or omapi_listen:
        omapi_options = _omapi_options(omapi_listen, nfc, omapi_gate, no_card_mode, se_choose, card_slots)
    sync_options = None
    if sync_url is not None:
        from pathlib import Path

        from bipsim.ap.sync.service import Security, SyncOptions

        url = None if sync_url == "none" else sync_url
        if url is not None and not (url.startswith("http://") and url.endswith("/records")):
            raise CliError("--sync: give http://HOST:PORT/sync/v1/<subscriber>/records or 'none'")
        if url is not None and not sync_token:
            # the server answers 401 to every request without one: refuse at the start, not at the first sync
            raise CliError("--sync URL needs --sync-token (the terminal's token at the sync server)", 2)
        virtual = Path(virtual_sims) if virtual_sims else None
        sync_options = SyncOptions(url, sync_token, Path(sync_store), virtual, Security(security))
    upgrade_options = None
    if upgrade or upgrade_token or upgrade_server or upgrade_check or upgrade_ip_push or upgrade_trust:
        upgrade_options = _upgrade_options(
            upgrade_registry,
            upgrade_token,
            upgrade_server,
            upgrade_check,
            upgrade_policy,
            upgrade_ip_push,
            upgrade_trust,
        )
    lpa_options = None
    if lpa_code is not None or lpa_cloud is not None:
        lpa_options = _lpa_options(lpa_code, lpa_cloud, lpa_ui, lpa_state, lpa_pki, lpa_limit, lpa_new_flow)
    network = ApNetwork(wifi=wifi, ssid=ssid, cellular=cellular)
    if allow:
        network.allow = [AllowRule.parse(text) for text in allow]
    tracer = make_tracer(trace_path, session, keep=bool(pcap_path))
    processor = ApplicationProcessor(
        ApOptions(
            port,
            baud,
            replace(DEFAULT_CMUX, n1=n1),
            wait_for_line=wait_for_line,
            push_sms=messages,
            omapi=omapi_options,
            toolkit=toolkit,
            wlan=wlan,
            seed=seed,
            sync=sync_options,
            upgrade=upgrade_options,
            lpa=lpa_options,
        ),
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


def _lpa_options(
    code: str | None,
    cloud: str | None,
    ui: str,
    state: str | None,
    pki: str | None,
    limit: int,
    new_flow: bool = False,
) -> LpaOptions:
    from pathlib import Path

    from bipsim.ap.lpa.lpa import LpaOptions, split_cloud_url
    from bipsim.ap.lpa.ui_policy import UiPolicy, UiPolicyError
    from bipsim.ota.es9_json import ActivationCodeError, parse_activation_code

    if code is None or cloud is None:
        raise CliError("--lpa ACTIVATION_CODE and --lpa-cloud URL go together", 2)
    try:
        parse_activation_code(code)
    except ActivationCodeError as exc:
        raise CliError(f"--lpa: {exc}", 2) from None
    try:
        UiPolicy.parse(ui)
    except UiPolicyError as exc:
        raise CliError(f"--lpa-ui: {exc}", 2) from None
    try:
        url, account = split_cloud_url(cloud)
    except ValueError as exc:
        raise CliError(f"--lpa-cloud: {exc}", 2) from None
    if ui == "logged-in" and account is None:
        raise CliError(
            "--lpa-ui logged-in needs the saved account: --lpa-cloud http://USER:PASS@HOST:PORT", 2
        )
    from bipsim.ap.lpa.state import StateFileError, open_state
    from bipsim.uicc.euicc.crypto import CryptoError
    from bipsim.uicc.euicc.pki import ensure_pki

    options = LpaOptions(code, cloud, ui, Path(state) if state else None, None, limit, new_flow)
    try:
        open_state(options.state_path(), code, new_flow=new_flow)  # the same check the LPA makes at start
    except StateFileError as exc:
        raise CliError(f"--lpa-state: {exc}") from None
    try:
        ensure_pki(Path(pki) if pki else None)  # made here on first use, so the AP starts with it
    except (CryptoError, OSError, ValueError) as exc:
        raise CliError(f"--lpa-pki: {exc}") from None
    options.pki = Path(pki) if pki else None
    return options


def _upgrade_options(
    registry: str,
    token: str | None,
    server: str | None,
    check: bool,
    policy: str,
    ip_push: str | None,
    trust: tuple[str, ...] = (),
) -> UpgradeOptions:
    from pathlib import Path

    from bipsim.ap.upgrade.agent import UpgradeOptions
    from bipsim.ap.upgrade.policy import Policy, PolicyError
    from bipsim.ap.upgrade.registry import Registry, RegistryError
    from bipsim.commands.common import host_port

    if not token:
        raise CliError("--upgrade needs --upgrade-token HEX (the terminal's token at the publish server)", 2)
    try:
        key = bytes.fromhex(token)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise CliError("--upgrade-token: give 16 bytes or more in hex", 2)
    if check and server is None:
        raise CliError("--upgrade-check needs --upgrade-server HOST:PORT", 2)
    try:
        Policy.parse(policy)
    except PolicyError as exc:
        raise CliError(f"--upgrade-policy: {exc}", 2) from None
    try:
        Registry(Path(registry))
    except RegistryError as exc:
        raise CliError(f"--upgrade-registry: {exc}") from None
    return UpgradeOptions(
        Path(registry),
        key,
        policy,
        server=host_port(server) if server else None,
        ip_push=host_port(ip_push) if ip_push else None,
        check=check,
        trust=tuple(host_port(address) for address in trust),
    )


def _omapi_options(
    listen: str | None, nfc: bool, gate: str, no_card_mode: str, choose: str, slots: int
) -> OmapiOptions:
    from bipsim.ap.omapi.chooser import Chooser, ChooserError
    from bipsim.ap.omapi.framework import NoCardMode
    from bipsim.ap.omapi.phone_interface import Gate
    from bipsim.ap.omapi.stack import OmapiOptions

    address = None
    if listen is not None:
        host, sep, port_text = listen.rpartition(":")
        if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
            raise CliError(f"--omapi-listen: give HOST:PORT, not {listen!r}")
        address = (host.strip("[]"), int(port_text))
    try:
        Chooser(choose)
    except ChooserError as exc:
        raise CliError(f"--se-choose: {exc}") from None
    return OmapiOptions(
        slots=slots,
        nfc=nfc,
        no_card_mode=NoCardMode(int(no_card_mode)),
        gate=Gate(gate),
        chooser=choose,
        listen=address,
    )
