"""`bipsim publish-server`: the push deployment's publish server (docs/protocols.md, "Push deployment")."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from bipsim.commands.common import (
    finish_trace,
    host_port,
    install_shutdown,
    make_tracer,
    session_option,
    trace_option,
    until_signalled,
)
from bipsim.errors import CliError

FAULTS = ("corrupt-package", "wrong-size", "drop-download", "reject-auth")


@click.command("publish-server")
@click.option(
    "--listen",
    default="127.0.0.1:8450",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the HTTP API listens (port 0: any free port).",
)
@click.option(
    "--push-listen",
    default="127.0.0.1:8451",
    show_default=True,
    metavar="HOST:PORT|none",
    help="Where the IP-push connections (embodiment 4) are taken; 'none' serves no IP push.",
)
@click.option(
    "--catalogue",
    "catalogue_dir",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="Directory holding catalogue.toml ([[release]] name, version, file, timestamp) and the package files "
    "it names; each file's size and SHA-256 are computed at start, and again at an admin notify when "
    "catalogue.toml changed (a release published while the server runs).",
)
@click.option(
    "--terminals",
    "terminals_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help='TOML file of the terminals the server knows: [terminals] "<IMEI>" = "<token hex>" (16 bytes or more; '
    "the AP's `--upgrade-token`). A terminal proves the token by HMAC-SHA256 over a nonce and its IMEI.",
)
@click.option(
    "--advertise",
    metavar="HOST:PORT",
    help="The server address the notices carry (the terminal connects there); default: the --listen address "
    "(required when listening on 0.0.0.0 or ::, which name no server a terminal can reach; give it behind a NAT).",
)
@click.option(
    "--smsc",
    metavar="HOST:PORT",
    help="The CP's SMSC control socket (what `bipsim cp --sms-listen` printed) through which SMS and WAP Push "
    "notices go; without it, only IP-push notices can be sent.",
)
@click.option(
    "--sms-from",
    default="+15550008450",
    show_default=True,
    help="The originator address of the notice SMS ('+digits', digits, or up to 11 letters).",
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    type=click.Choice(FAULTS),
    help="Make the server lie, for the terminal's bad-input scenarios (repeatable): corrupt-package flips one "
    "byte of every package (size and hash header as listed); wrong-size advertises one byte more than each "
    "package has; drop-download sends the headers and half the bytes, then breaks the connection; reject-auth "
    "refuses every terminal's MAC (HTTP 403, IP push 'rejected').",
)
@trace_option
@session_option
def publish_server(
    listen: str,
    push_listen: str,
    catalogue_dir: str,
    terminals_path: str,
    advertise: str | None,
    smsc: str | None,
    sms_from: str,
    faults: tuple[str, ...],
    trace_path: str | None,
    session: str | None,
) -> None:
    """Publish releases to terminals: the catalogue (GET /v1/catalogue/NAME), challenge-response authentication
    (POST /v1/auth/challenge, /v1/auth/response), downloads (GET /v1/packages/NAME/VERSION), the version check
    (POST /v1/check), result reports (POST /v1/report), the long-lived IP-push connection, and, from loopback
    only, POST /v1/admin/notify {"name", "via": "sms"|"wap"|"ip", "msisdn"} to announce the latest release.
    Prints "listening on HOST:PORT" and "push listening on HOST:PORT" once ready; stops on Ctrl-C or SIGTERM.
    """
    import trio

    install_shutdown("bipsim publish-server")
    from bipsim.ota.publish_server import (
        Fault,
        PublishServer,
        PublishService,
        TerminalAuth,
        TerminalsError,
        load_terminals,
    )
    from bipsim.ota.push_channel import PushServer
    from bipsim.ota.release_catalogue import CatalogueError, load_catalogue

    host, port = host_port(listen)
    push_at = None if push_listen.lower() == "none" else host_port(push_listen)
    smsc_at = host_port(smsc) if smsc else None
    if advertise is not None:
        advertise_host, _ = host_port(advertise)  # a usage error when it is not HOST:PORT
        if _unspecified(advertise_host):
            raise CliError(
                f"--advertise {advertise}: a terminal cannot connect to {advertise_host}", exit_code=2
            )
    elif _unspecified(host):
        # the notices carry the advertised address: "any address" there names no server for the terminal
        raise CliError(
            f"--listen {listen}: listening on every address, give --advertise HOST:PORT (the address terminals "
            "reach) for the notices",
            exit_code=2,
        )
    from bipsim.net.sms_pdu import Address, SmsPduError

    try:
        Address.parse(sms_from)
    except SmsPduError as exc:
        raise CliError(f"--sms-from: {exc}", exit_code=2) from None
    try:
        catalogue = load_catalogue(Path(catalogue_dir))
    except CatalogueError as exc:
        raise CliError(f"--catalogue: {exc}") from exc
    try:
        terminals = load_terminals(Path(terminals_path))
    except TerminalsError as exc:
        raise CliError(f"--terminals: {exc}") from exc
    chosen = frozenset(Fault(f) for f in faults)
    tracer = make_tracer(trace_path, session)
    auth = TerminalAuth(terminals, reject_all=Fault.REJECT_AUTH in chosen)
    push = PushServer(auth, tracer) if push_at is not None else None

    async def main() -> None:
        async def serve() -> None:
            async with trio.open_nursery() as nursery:
                try:
                    bound = await nursery.start(server.serve, host, port)
                except OSError as exc:
                    raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
                if service.advertise.endswith(":0"):
                    service.advertise = f"{host}:{bound}"
                click.echo(f"listening on {host}:{bound}")
                if push is not None and push_at is not None:
                    try:
                        push_bound = await nursery.start(push.serve, *push_at)
                    except OSError as exc:
                        raise CliError(
                            f"cannot listen on {push_at[0]}:{push_at[1]}: {exc.strerror or exc}"
                        ) from exc
                    click.echo(f"push listening on {push_at[0]}:{push_bound}")
                sys.stdout.flush()

        await until_signalled(serve)

    service = PublishService(
        catalogue,
        auth,
        advertise=advertise or f"{host}:{port}",
        faults=chosen,
        sms_from=sms_from,
        smsc=smsc_at is not None,
        source=Path(catalogue_dir),
    )
    server = PublishServer(service, tracer, push=push, smsc=smsc_at)
    try:
        from bipsim.commands.ota_server import run_unwrapped

        run_unwrapped(main)
    finally:
        finish_trace(tracer, None)
    click.echo(
        "summary: "
        + json.dumps(
            {"requests": server.requests, "downloads": service.downloads, "reports": len(service.reports)}
        )
    )


def _unspecified(host: str) -> bool:
    """True for 0.0.0.0, :: and the empty host: listening addresses that name no one server."""
    import ipaddress

    if not host.strip("[]"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False  # a host name
