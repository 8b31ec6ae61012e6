"""`bipsim sync-server`: the SIM data sync server (docs/protocols.md, "The sync server")."""

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


@click.command("sync-server")
@click.option(
    "--listen",
    default="127.0.0.1:8480",
    show_default=True,
    help="HOST:PORT to listen on (port 0: any free port).",
)
@click.option(
    "--terminal",
    "terminals",
    multiple=True,
    required=True,
    metavar="NAME:TOKEN:SUBSCRIBER",
    help="A terminal the server knows (repeat for more): it presents 'Authorization: Bearer TOKEN' and may read "
    "and write only SUBSCRIBER's store (e.g. the IMSI).",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False),
    help="JSON file holding every subscriber's store: read at start, replaced atomically at each new version.",
)
@trace_option
@session_option
def sync_server(
    listen: str,
    terminals: tuple[str, ...],
    state_path: str | None,
    trace_path: str | None,
    session: str | None,
) -> None:
    """Serve each subscriber's contacts and messages with a version over HTTP/1.1 and JSON:
    GET /sync/v1/<SUBSCRIBER>/records reads them (ETag: the version), PUT with If-Match: "<version>" replaces them
    (412 when another terminal wrote since). Prints "listening on HOST:PORT" once ready; stops on Ctrl-C or
    SIGTERM.
    """
    import trio

    install_shutdown("bipsim sync-server")
    from bipsim.ota.sync_server import SyncServer, SyncService, parse_terminal

    host, port = host_port(listen)
    try:
        known = [parse_terminal(text) for text in terminals]
    except ValueError as exc:
        raise CliError(f"--terminal {exc}") from exc
    try:
        service = SyncService(known, Path(state_path) if state_path else None)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CliError(f"--state {state_path}: {exc}") from exc
    tracer = make_tracer(trace_path, session)
    server = SyncServer(service, tracer)

    async def main() -> None:
        async def serve() -> None:
            async with trio.open_nursery() as nursery:
                try:
                    bound = await nursery.start(server.serve, host, port)
                except OSError as exc:
                    raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
                click.echo(f"listening on {host}:{bound}")
                sys.stdout.flush()

        await until_signalled(serve)

    try:
        from bipsim.commands.ota_server import run_unwrapped

        run_unwrapped(main)
    finally:
        finish_trace(tracer, None)
    click.echo(
        "summary: " + json.dumps({"requests": server.requests, "subscribers": len(service.subscribers)})
    )
