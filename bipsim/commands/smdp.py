"""`bipsim smdp`: the SM-DP+ of GSMA SGP.22 (ES9+ over HTTPS) that the LPA downloads eUICC profiles from
(docs/protocols.md, "eUICC and the cloud backup")."""

from __future__ import annotations

from pathlib import Path

import click

from bipsim.commands.common import host_port, install_shutdown, make_tracer, session_option, trace_option
from bipsim.commands.http_serving import run_server
from bipsim.errors import CliError

FAULTS = ("garbage", "bad-signature", "corrupt-bpp")  # bipsim.ota.smdp.Fault, named here for a quick --help


@click.command("smdp")
@click.option(
    "--listen",
    default="127.0.0.1:8443",
    show_default=True,
    metavar="HOST:PORT",
    help="Where ES9+ (HTTPS) listens (port 0: any free port). The activation codes name this address unless "
    "--advertise gives another.",
)
@click.option(
    "--advertise",
    metavar="HOST:PORT",
    help="The SM-DP+ address the activation codes carry and initiateAuthentication's smdpAddress must name "
    "(SGP.22 5.6.1); default: the --listen address with the port it got.",
)
@click.option(
    "--pki",
    "pki_dir",
    type=click.Path(file_okay=False),
    help="Directory of the test PKI (CI, EUM, eUICC, DPauth, DPpb certificates and keys), made there on first use; "
    "default $BIPSIM_PKI or ~/.cache/bipsim/pki. The eUICC and the LPA must use the same one: the eUICC trusts "
    "its CI, the LPA checks the TLS certificate (DPauth) against it.",
)
@click.option(
    "--profiles",
    "profiles_dir",
    type=click.Path(file_okay=False, exists=True),
    help="Directory of profiles to serve besides the built-in ones (OP1, OP2): each *.toml holds a profile "
    "package's keys (iccid, imsi, mnc_length) and, last, an [smdp] table with matching_id (required), ppr_ids "
    '(["ppr1", "ppr2"]), service_provider_name, profile_name, profile_class and eid (the one eUICC it may go to).',
)
@click.option(
    "--no-builtin",
    is_flag=True,
    help="Serve only the profiles of --profiles, not the built-in OP1 and OP2.",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False),
    help="JSON file of which profiles were downloaded (and installed), written before each answer that changes "
    "it, so that a profile is served once even across restarts; default: beside --trace as "
    "<trace>.smdp-state.json, none without --trace (single use then lasts as long as the process).",
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    type=click.Choice(FAULTS),
    help="Make the SM-DP+ lie, to show how the LPA and the eUICC take bad input (repeatable): garbage answers "
    "every function with HTTP 200 and a body that is not JSON (the function still runs: a download is used up); "
    "bad-signature flips a bit of serverSignature1 (the eUICC refuses AuthenticateServer, invalidSignature); "
    "corrupt-bpp flips a byte of the last '86' segment's MAC (the eUICC's install fails, scp03tSecurityError).",
)
@trace_option
@session_option
def smdp(
    listen: str,
    advertise: str | None,
    pki_dir: str | None,
    profiles_dir: str | None,
    no_builtin: bool,
    state_path: str | None,
    faults: tuple[str, ...],
    trace_path: str | None,
    session: str | None,
) -> None:
    """Serve eUICC profiles as an SM-DP+ (GSMA SGP.22 ES9+ over HTTPS, the JSON binding of section 6.5):
    POST /gsma/rsp2/es9plus/initiateAuthentication, /authenticateClient, /getBoundProfilePackage,
    /handleNotification and /cancelSession. Each profile is downloaded once: a second getBoundProfilePackage for
    it is refused (8.2 / 3.7, "BPP is not available for a new binding").

    Prints "activation code: LPA:1$HOST:PORT$MATCHINGID (ICCID ..., PPR n, state)" for each profile it serves,
    then "listening on HOST:PORT" once ready; stops on Ctrl-C or SIGTERM.
    """
    host, port = host_port(listen)
    if advertise is not None:
        host_port(advertise)  # a usage error when it is not HOST:PORT
    else:
        from bipsim.commands.publish_server import _unspecified

        if _unspecified(host):
            # the activation codes and serverSigned1 carry the address: "any address" names no SM-DP+
            raise CliError(
                f"--listen {listen}: listening on every address, give --advertise HOST:PORT (the address the "
                "LPA reaches) for the activation codes",
                exit_code=2,
            )
    install_shutdown("bipsim smdp")

    from bipsim.ota.smdp import (
        Fault,
        SmdpError,
        SmdpServer,
        SmdpService,
        load_profiles,
        server_ssl_context,
    )
    from bipsim.uicc.euicc.crypto import CryptoError
    from bipsim.uicc.euicc.pki import ensure_pki

    try:
        pki = ensure_pki(Path(pki_dir) if pki_dir else None)
    except (CryptoError, OSError, ValueError) as exc:
        raise CliError(f"--pki: {exc}") from exc
    try:
        profiles = load_profiles(Path(profiles_dir) if profiles_dir else None, builtin=not no_builtin)
    except SmdpError as exc:
        raise CliError(f"--profiles: {exc}") from exc
    state: Path | None = Path(state_path) if state_path else None
    if state is None and trace_path:
        state = Path(trace_path).with_name(Path(trace_path).name + ".smdp-state.json")
    if state is not None and not state.parent.is_dir():
        raise CliError(f"--state {state}: directory {state.parent} does not exist")
    tracer = make_tracer(trace_path, session)
    try:
        service = SmdpService(
            pki,
            profiles,
            address=advertise or listen,
            state_path=state,
            faults=frozenset(Fault(f) for f in faults),
        )
    except SmdpError as exc:
        raise CliError(f"--state: {exc}") from exc
    server = SmdpServer(service, tracer, ssl_context=server_ssl_context(pki))

    def ready(bound: int) -> list[str]:
        if advertise is None:
            service.address = f"{host}:{bound}"
        return [
            f"activation code: {profile.activation_code(service.address)} (ICCID {profile.iccid}, "
            f"PPR {profile.ppr()}, {profile.state.value})"
            for profile in profiles.values()
        ]

    run_server(
        server.serve,
        host,
        port,
        tracer,
        ready=ready,
        summary=lambda: {
            "requests": server.requests,
            "downloads": service.downloads,
            "notifications": service.notifications,
        },
    )
