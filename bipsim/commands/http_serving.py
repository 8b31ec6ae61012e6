"""The run that the commands serving one HTTP API share (`bipsim cloud`, `bipsim smdp`; docs/protocols.md, "eUICC
and the cloud backup"): listen, print "listening on HOST:PORT" once ready (a script waits for that line), serve until
SIGINT/SIGTERM, close the trace and print the `summary: {...}` line."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import click

from bipsim.commands.common import finish_trace, until_signalled
from bipsim.errors import CliError
from bipsim.trace.recorder import Tracer

# the server's `serve(host, port, task_status=...)`: it reports the port it bound through task_status
Serve = Callable[..., Awaitable[object]]


def run_server(
    serve: Serve,
    host: str,
    port: int,
    tracer: Tracer,
    *,
    summary: Callable[[], dict[str, Any]],
    ready: Callable[[int], Sequence[str]] = lambda bound: (),
    note: str = "",
) -> None:
    """Serves until a signal. `ready(bound)` gives the lines printed before "listening on HOST:PORT`note`" (it may
    also use the bound port); `summary()` the figures of the last line. A port that cannot be bound is a CliError."""
    import trio

    from bipsim.commands.ota_server import run_unwrapped

    async def main() -> None:
        async def listen() -> None:
            async with trio.open_nursery() as nursery:
                try:
                    bound = await nursery.start(serve, host, port)
                except OSError as exc:
                    raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
                for line in ready(bound):
                    click.echo(line)
                click.echo(f"listening on {host}:{bound}{note}")
                sys.stdout.flush()

        await until_signalled(listen)

    try:
        run_unwrapped(main)
    finally:
        finish_trace(tracer, None)
    click.echo("summary: " + json.dumps(summary()))
