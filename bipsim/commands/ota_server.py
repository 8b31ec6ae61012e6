"""`bipsim ota-server`: the remote OTA (GlobalPlatform Amendment B / SCP81) admin server."""

from __future__ import annotations

import json
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
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
from bipsim.commands.fleet import first_cli_error
from bipsim.errors import CliError

if TYPE_CHECKING:
    from bipsim.ota.server import OtaServer


def load_keys(path: str) -> dict[str, bytes]:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        data = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError as exc:
        raise CliError(f"keys file {path} does not exist") from exc
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise CliError(f"keys file {path}: {exc}") from exc
    try:
        return {str(identity): bytes.fromhex(str(key)) for identity, key in data.items()}
    except ValueError as exc:
        raise CliError(f"keys file {path}: every key must be hex") from exc


@click.command("ota-server")
@click.option(
    "--listen",
    default="127.0.0.1:4443",
    show_default=True,
    help="HOST:PORT to listen on (port 0: any free port).",
)
@click.option("--psk-identity", help="The PSK identity of the one card this server knows.")
@click.option("--psk", "psk_hex", help="That card's pre-shared key, in hex.")
@click.option(
    "--keys",
    "keys_path",
    type=click.Path(dir_okay=False),
    help="TOML/JSON file: PSK identity = hex key, for many cards.",
)
@click.option(
    "--no-tls", is_flag=True, help="Plain HTTP (for debugging; cards must be set to ota_tls = false)."
)
@click.option(
    "--script",
    "campaign_path",
    type=click.Path(dir_okay=False),
    help="Campaign file (TOML/JSON); default: the built-in example.",
)
@click.option("--path", "admin_path", default="/server/adminagent", show_default=True, help="Admin URI.")
@click.option(
    "--results",
    "results_path",
    type=click.Path(dir_okay=False),
    help="Write the per-card JSON results log here.",
)
@click.option("--drop-after", type=int, help="Fault injection: drop the first connection after N requests.")
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Worker processes, one per core you give the server: each listens on the port (SO_REUSEPORT) and runs "
    "TLS and HTTP for the connections the kernel hands it; each card's progress lives in one worker, chosen by a "
    "hash of its ICCID. With more than one, --results and --trace are written per worker as NAME.w<N>.SUFFIX "
    "(the results merged into NAME on exit).",
)
@trace_option
@pcap_option
@session_option
def ota_server(
    listen: str,
    psk_identity: str | None,
    psk_hex: str | None,
    keys_path: str | None,
    no_tls: bool,
    campaign_path: str | None,
    admin_path: str,
    results_path: str | None,
    drop_after: int | None,
    workers: int,
    trace_path: str | None,
    pcap_path: str | None,
    session: str | None,
) -> None:
    """Serve GlobalPlatform Amendment B remote administration over TLS 1.2 PSK (or plain HTTP with --no-tls).

    Cards POST to the admin URI with X-Admin-From //se-id/iccid/<ICCID>; each gets the command scripts of its
    campaign entry, then 204 No Content. Prints "listening on HOST:PORT" once ready; stops on Ctrl-C or SIGTERM,
    printing "summary: {...}" (cards, completed, sessions, connections, refusals) on its way out.
    """
    import trio

    # exit 0 on SIGTERM, or 143 when not stopped within the grace (a pool waits for its workers' summaries)
    install_shutdown("bipsim ota-server", grace=1.0 if workers == 1 else 15.0)
    from bipsim.ota.admin import AdminServer
    from bipsim.ota.campaign import Campaign
    from bipsim.ota.server import OtaServer

    host, port = host_port(listen)
    keys: dict[str, bytes] | None
    if no_tls:
        keys = None
    elif keys_path:
        keys = load_keys(keys_path)
    elif psk_identity and psk_hex:
        try:
            keys = {psk_identity: bytes.fromhex(psk_hex)}
        except ValueError as exc:
            raise CliError("--psk must be hex") from exc
    elif psk_identity or psk_hex:
        raise CliError("--psk-identity and --psk go together")
    else:
        from bipsim.uicc.profile import load_profile

        default = load_profile()
        keys = {default.psk_identity: default.psk}  # the built-in card profile's key
    campaign = Campaign.load(campaign_path)  # a bad campaign file stops the command here, before any worker
    if workers > 1:
        if pcap_path:
            raise CliError("--pcap needs --workers 1 (each worker writes its own trace)")
        run_pool(
            host,
            port,
            workers,
            keys,
            campaign_path,
            admin_path,
            results_path,
            trace_path,
            session,
            drop_after,
        )
        return
    admin = AdminServer(campaign, path=admin_path, results_path=results_path)
    tracer = make_tracer(trace_path, session, keep=bool(pcap_path))
    server = OtaServer(admin, keys=keys, tracer=tracer, drop_after=drop_after)

    async def main() -> None:
        async def serve() -> None:
            async with trio.open_nursery() as nursery:
                try:
                    bound = await nursery.start(server.serve, host, port)
                except OSError as exc:
                    raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
                click.echo(
                    f"listening on {host}:{bound} ({'plain HTTP' if keys is None else 'TLS 1.2 PSK'})",
                    nl=True,
                )
                sys.stdout.flush()

        await until_signalled(serve)

    try:
        run_unwrapped(main)
    finally:
        admin.save()
        finish_trace(tracer, pcap_path)
    click.echo("summary: " + json.dumps(server_summary(server)))


def run_pool(
    host: str,
    port: int,
    workers: int,
    keys: dict[str, bytes] | None,
    campaign_path: str | None,
    admin_path: str,
    results_path: str | None,
    trace_path: str | None,
    session: str | None,
    drop_after: int | None,
) -> None:
    """`--workers K` with K > 1: the parent of ota/server_pool.py's workers."""
    import trio

    from bipsim.ota.server_pool import Pool, WorkerConfig

    pool = Pool(
        WorkerConfig(
            index=0,
            workers=workers,
            host=host,
            port=port,
            directory="",
            keys=None if keys is None else {k: v.hex() for k, v in keys.items()},
            campaign=campaign_path,
            admin_path=admin_path,
            results=results_path,
            trace=trace_path,
            session=session,
            drop_after=drop_after,
        )
    )

    async def main() -> None:
        async def serve() -> None:
            async with trio.open_nursery() as nursery:
                try:
                    bound = await nursery.start(pool.run)
                except OSError as exc:
                    raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
                mode = "plain HTTP" if keys is None else "TLS 1.2 PSK"
                click.echo(f"listening on {host}:{bound} ({mode}, {workers} workers)")
                sys.stdout.flush()

        await until_signalled(serve)

    try:
        run_unwrapped(main)
    finally:
        pool.merge_results()
    click.echo("summary: " + json.dumps(pool.summary()))


def run_unwrapped(main: Callable[[], Awaitable[None]]) -> None:
    """trio.run, with a CliError raised under a nursery (a port in use) given back as itself: one line."""
    import trio

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        error = first_cli_error(group)
        if error is None:
            raise
        raise error from None


def server_summary(server: OtaServer) -> dict[str, float]:
    """The figures `bipsim ota-server` prints on its way out (`summary: {...}`; `bipsim fleet` reads them), with
    the CPU seconds the process used serving (user and system, from the moment it listened)."""
    cards = server.admin.cards.values()
    return {
        "cpu_s": round(time.process_time() - server.cpu_start, 3),
        "cards": len(server.admin.cards),
        "completed": sum(1 for p in cards if p.completed),
        "sessions": sum(p.sessions for p in cards),
        "connections": server.connections,
        "refused": server.refused,
        "handshake_failures": server.handshake_failures,
        "timeouts": server.timeouts,
        "crashes": server.crashes,
        "forgotten": server.admin.forgotten,
    }
