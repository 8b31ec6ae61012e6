"""Option helpers shared by the long-running subcommands: tracing, HOST:PORT parsing, signal-driven shutdown."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import click
import trio

from bipsim.errors import CliError
from bipsim.trace.recorder import NULL_TRACER, Tracer

trace_option = click.option(
    "--trace", "trace_path", type=click.Path(dir_okay=False), help="Write the JSONL trace here."
)
pcap_option = click.option(
    "--pcap",
    "pcap_path",
    type=click.Path(dir_okay=False),
    help="Also write a pcap of the trace here on exit.",
)
session_option = click.option("--session", help="Session label written into every trace event (e.g. e1, e2).")


def make_tracer(path: str | None, session: str | None, *, keep: bool = False) -> Tracer:
    if path is None and not keep:
        return NULL_TRACER
    if path is None:
        return Tracer(session=session, keep=True)
    target = Path(path)
    if not target.parent.is_dir():
        raise CliError(f"--trace {path}: directory {target.parent} does not exist")
    return Tracer.to_file(target, session=session, keep=keep)


def finish_trace(tracer: Tracer, pcap_path: str | None) -> None:
    tracer.close()
    if pcap_path and tracer.events:
        from bipsim.trace.pcap import export_pcap

        export_pcap(tracer.events, pcap_path)


def host_port(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    try:
        number = int(port)
    except ValueError as exc:
        raise CliError(f"{text!r} is not HOST:PORT") from exc
    if not 0 <= number <= 65535:
        raise CliError(f"port {number} is out of range")
    return host.strip("[]") or default_host, number


async def until_signalled(main: Callable[[], Awaitable[object]]) -> None:
    """Runs `main` until it returns or SIGINT/SIGTERM arrives; either way the nursery unwinds cleanly."""
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch)
        await main()
        nursery.cancel_scope.cancel()
