"""`bipsim fleet`: many simulated cards in parallel worker processes against one OTA server (ota/fleet.py)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import click

from bipsim.commands.common import host_port, make_tracer, trace_option
from bipsim.errors import CliError


@click.command("fleet")
@click.option("--cards", type=click.IntRange(1, 10**9), required=True, help="Simulated cards in the fleet.")
@click.option(
    "--workers",
    type=click.IntRange(1, 4096),
    default=os.cpu_count() or 1,
    show_default="the number of cores",
    help="Worker processes; the cards are split evenly among them.",
)
@click.option(
    "--server",
    "server_address",
    metavar="HOST:PORT",
    help="The OTA server to run against (it must know every card's key: see --export-keys). Default: the fleet "
    "starts its own `bipsim ota-server` on 127.0.0.1 and stops it at the end.",
)
@click.option(
    "--server-workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="--workers of the fleet's own server.",
)
@click.option(
    "--sessions",
    type=click.IntRange(0, None),
    help="Admin sessions in all, spread evenly over the cards (default without --duration: one per card).",
)
@click.option(
    "--duration",
    type=click.FloatRange(0, None, min_open=True),
    help="Seconds to run: every card runs sessions one after the other until then.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, None),
    default=100,
    show_default=True,
    help="Sessions open at once in each worker (the server refuses connections past its own cap with 503).",
)
@click.option(
    "--session-timeout",
    type=click.FloatRange(0, None, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds one session may take before it counts as failed ('session timed out').",
)
@click.option(
    "--seed",
    type=int,
    help="Seed of the cards' keys and TLS randoms: the same seed gives the same bytes run after run "
    "(keys are derived from seed 0 when not given, randoms from os.urandom).",
)
@click.option("--no-tls", is_flag=True, help="Plain HTTP (the server must run with --no-tls too).")
@click.option(
    "--script",
    "campaign_path",
    type=click.Path(dir_okay=False, exists=True),
    help="Campaign file for the fleet's own server (default: the built-in example).",
)
@click.option(
    "--results",
    "results_path",
    type=click.Path(dir_okay=False),
    help="The fleet's own server writes its per-card results log here (slow for big fleets: it is rewritten "
    "after every change).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "dask"]),
    default="local",
    show_default=True,
    help="Who runs the workers: child processes of this one, or a Dask distributed cluster (pip install "
    "'bipsim[fleet]'): a local cluster on this machine, or the one at --scheduler.",
)
@click.option(
    "--scheduler",
    metavar="ADDR",
    help="Dask scheduler address (tcp://host:8786) to run the workers on; default: a local cluster of --workers "
    "processes.",
)
@click.option(
    "--export-keys",
    type=click.Path(dir_okay=False),
    help="Write the keys file of --cards cards (PSK identity = hex key, for `bipsim ota-server --keys`) and exit.",
)
@trace_option
@click.option("--json", "as_json", is_flag=True, help="Print the final report as one JSON object on stdout.")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
def fleet(
    cards: int,
    workers: int,
    server_address: str | None,
    server_workers: int,
    sessions: int | None,
    duration: float | None,
    concurrency: int,
    session_timeout: float,
    seed: int | None,
    no_tls: bool,
    campaign_path: str | None,
    results_path: str | None,
    engine: str,
    scheduler: str | None,
    export_keys: str | None,
    trace_path: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Run a fleet of simulated cards (each the full card: SimCard, GP registry, TLS 1.2 PSK client and the
    GlobalPlatform Amendment B agent) in worker processes against one OTA server.

    Each card has its own ICCID, PSK identity and key, derived from its index in the fleet. A line a second on
    stderr shows the progress; the final report gives sessions, sessions/s, p50/p99 latency and the failures by
    cause (worker died, server refused, session timed out, tls failed, connection lost, http NNN...). Exit status
    0 when every session completed, 1 when any failed or a worker died. Ctrl-C or SIGTERM stops the workers and
    the fleet's own server and still prints the report of what ended until then (exit 130); a second one stops at
    once.
    """
    import trio

    from bipsim.ota.fleet import Engine, FleetConfig, LocalEngine, fleet_keys, keys_toml, run_fleet

    key_seed = seed if seed is not None else 0
    if export_keys:
        target = Path(export_keys)
        if not target.parent.is_dir():
            raise CliError(f"--export-keys {export_keys}: directory {target.parent} does not exist")
        target.write_text(keys_toml(fleet_keys(cards, key_seed)), encoding="utf-8")
        click.echo(f"wrote the keys of {cards} cards to {export_keys}")
        return
    if sessions is not None and duration is not None:
        raise CliError("--sessions and --duration exclude each other")
    if scheduler and engine != "dask":
        raise CliError("--scheduler needs --engine dask")
    if server_address and (results_path or campaign_path or server_workers != 1):
        raise CliError(
            "--results, --script and --server-workers are for the fleet's own server (no --server)"
        )
    config = FleetConfig(
        cards=cards,
        workers=min(workers, cards),
        server=host_port(server_address) if server_address else None,
        sessions=sessions,
        duration=duration,
        seed=seed,
        key_seed=key_seed,
        tls=not no_tls,
        concurrency=concurrency,
        session_timeout=session_timeout,
        server_workers=server_workers,
        server_results=results_path,
        campaign=campaign_path,
    )
    tracer = make_tracer(
        trace_path, "fleet"
    )  # the workers' starts and ends, a death as app.error, the report
    runner: Engine
    if engine == "dask":
        from bipsim.ota.fleet_dask import DaskEngine

        runner = DaskEngine(scheduler=scheduler, workers=config.workers)
        config.flush = 0.5  # a task reports in batches (each a round trip to the scheduler)
    else:
        runner = LocalEngine()

    def progress(line: str) -> None:
        click.echo(line, err=True)

    reports = []

    async def main() -> None:
        # the first SIGINT/SIGTERM stops the workers and still reports; a second one ends everything at once
        stop = trio.Event()
        async with trio.open_nursery() as nursery:

            async def signals() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                    async for _ in received:
                        if stop.is_set():
                            nursery.cancel_scope.cancel()
                        stop.set()

            nursery.start_soon(signals)
            reports.append(
                await run_fleet(
                    config, runner, progress=None if quiet else progress, stop=stop, tracer=tracer
                )
            )
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except BaseExceptionGroup as group:  # a CliError raised under a nursery: still one line, not a traceback
        error = first_cli_error(group)
        if error is None:
            raise
        raise error from None
    finally:
        tracer.close()
    if not reports:
        click.echo("bipsim fleet: stopped before the end; no report", err=True)
        sys.exit(130)
    report = reports[0]
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        for line in report.lines():
            click.echo(line)
    sys.exit(130 if report.stopped else 0 if report.ok else 1)


def first_cli_error(group: BaseExceptionGroup[BaseException]) -> CliError | None:
    for error in group.exceptions:
        if isinstance(error, CliError):
            return error
        if isinstance(error, BaseExceptionGroup):
            found = first_cli_error(error)
            if found is not None:
                return found
    return None
