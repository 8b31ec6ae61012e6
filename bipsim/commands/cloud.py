"""`bipsim cloud`: the cloud store of the eUICC profile backup (docs/protocols.md, "eUICC and the cloud backup")."""

from __future__ import annotations

from pathlib import Path

import click

from bipsim.commands.common import host_port, install_shutdown, make_tracer, session_option, trace_option
from bipsim.commands.http_serving import run_server
from bipsim.errors import CliError


@click.command("cloud")
@click.option(
    "--listen",
    default="127.0.0.1:8470",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the website and the API listen (port 0: any free port). Plain HTTP unless --tls-cert: keep it on "
    "loopback then, since passwords and session cookies cross it in the clear (docs/protocols.md says why).",
)
@click.option(
    "--limit",
    default=1024,
    show_default=True,
    type=click.IntRange(1, 1 << 20),
    help="The single-upload maximum in package bytes: a record carrying more is refused with 413, and so is a "
    "request body longer than the longest record that carries this many bytes.",
)
@click.option(
    "--users",
    "users_path",
    type=click.Path(dir_okay=False),
    help="JSON file of the registered users (name, salt, PBKDF2-HMAC-SHA256 of the password): read at start, "
    "replaced atomically at each registration. Without it, registrations last as long as the process.",
)
@click.option(
    "--user",
    "seed_users",
    multiple=True,
    metavar="NAME:PASSWORD",
    help="A user registered from the start (repeatable; kept in --users when given). Others register on the "
    "website (GET/POST /register).",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False),
    help="JSON file of the stored backups (every record by EID, management file and index): read at start, "
    "replaced atomically at each upload and delete, so a fetch after a restart finds them. Without it, the "
    "backups last as long as the process.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True),
    help="Serve HTTPS with this PEM certificate (chain) instead of plain HTTP; give --tls-key with it. A client "
    "uses https://HOST:PORT and must trust the certificate's issuer.",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True),
    help="The PEM private key of --tls-cert.",
)
@trace_option
@session_option
def cloud(
    listen: str,
    limit: int,
    users_path: str | None,
    seed_users: tuple[str, ...],
    state_path: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    trace_path: str | None,
    session: str | None,
) -> None:
    """Keep the LPA's profile backups: a website (GET/POST /login, GET/POST /register, POST /logout, GET /; a
    user never registered is sent to /register), GET /session (the login check), and with the session cookie
    POST /profiles (one record a request, headers X-Record-Index and X-Record-Count), GET
    /profiles?eid=EID&module=LPA (the records in index order; 404 none, 409 incomplete) and DELETE
    /profiles?eid=EID&module=LPA. Every answer is one cloud.* trace event (the access log). Prints "listening on
    HOST:PORT" once ready; stops on Ctrl-C or SIGTERM.
    """
    install_shutdown("bipsim cloud")
    from bipsim.ota.cloud_store import CloudServer, CloudService, StoreError

    host, port = host_port(listen)
    context = None
    if (tls_cert is None) != (tls_key is None):
        raise CliError("--tls-cert and --tls-key go together", exit_code=2)
    if tls_cert is not None and tls_key is not None:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(tls_cert, tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise CliError(f"--tls-cert/--tls-key: {exc}") from exc
    try:
        service = CloudService(
            limit=limit,
            users_path=Path(users_path) if users_path else None,
            state_path=Path(state_path) if state_path else None,
        )
    except StoreError as exc:
        raise CliError(str(exc)) from exc
    for text in seed_users:
        name, colon, password = text.partition(":")
        if not colon:
            raise CliError(f"--user {text.split(':')[0]!r}: give NAME:PASSWORD", exit_code=2)
        try:
            service.add_user(name, password)
        except ValueError as exc:
            raise CliError(f"--user {name[:64]}: {exc}", exit_code=2) from exc
        except OSError as exc:
            raise CliError(f"--users {users_path}: {exc.strerror or exc}") from exc
    tracer = make_tracer(trace_path, session)
    server = CloudServer(service, tracer, ssl_context=context)

    run_server(
        server.serve,
        host,
        port,
        tracer,
        note=" (https)" if context is not None else "",
        summary=lambda: {
            "requests": server.requests,
            "uploads": service.uploads,
            "fetches": service.fetches,
            "deletes": service.deletes,
            "backups": len(service.backups),
            "users": len(service.users),
        },
    )
