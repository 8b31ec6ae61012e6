"""`bipsim hil check`: checks a hardware-in-loop bench's null-modem pair before the AP and CP run on it (docs/hil.md).

The checks themselves (bytes, rate, RTS/CTS, DTR hang-up; EIA-232 / ITU-T V.24 null-modem wiring) live in
bipsim.link.hil_check; this module opens the two ports, runs them and prints one table or one JSON object.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import trio

from bipsim.errors import CliError
from bipsim.link.hil_check import End, exit_status, open_end, render_table, run_checks


@click.group("hil")
def hil() -> None:
    """Hardware-in-loop bench tools: check the serial pair the AP and the CP will use (docs/hil.md)."""


async def _check(
    ports: tuple[str, str], baud: int, rtscts: bool, dtr: bool, quiet: bool
) -> tuple[list[Any], bool]:
    ends: list[End] = []
    try:
        for name, path in zip(("A", "B"), ports, strict=True):
            ends.append(open_end(path, name, baud=baud, rtscts=rtscts))

        def progress(what: str) -> None:
            if not quiet:
                click.echo(f"checking {what} ...", err=True)

        results = await run_checks(ends[0], ends[1], baud, rtscts=rtscts, dtr=dtr, progress=progress)
        return results, ends[0].pty or ends[1].pty
    finally:
        for end in ends:
            with trio.CancelScope(shield=True):
                await end.stream.aclose()


def _line_failure(exc: BaseException) -> BaseException | None:
    """The line error inside `exc` (a check's nursery wraps it in an ExceptionGroup), or None for anything else."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _line_failure(inner)
            if found is not None:
                return found
        return None
    if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError | OSError):
        return exc
    return None


@hil.command("check")
@click.option(
    "--port",
    "ports",
    multiple=True,
    required=True,
    metavar="PATH",
    help="A tty device of the pair (/dev/ttyUSB0, /dev/serial/by-id/..., a pty); give it twice: side A, then B.",
)
@click.option(
    "--baud",
    type=click.IntRange(min=50),
    default=115200,
    show_default=True,
    metavar="N",
    help="Line rate both ports are set to, 8N1; the rate check compares the measured bytes/s with N/10.",
)
@click.option(
    "--rtscts",
    is_flag=True,
    help="Open both ports with RTS/CTS hardware flow control and check it (a reader that stops reading must "
    "stop the writer). Without it the RTS/CTS row is skipped on real ports.",
)
@click.option(
    "--dtr/--no-dtr",
    "dtr",
    default=None,
    help="Check the DTR hang-up (each side drops DTR; the other must see DSR/DCD drop). On by default; --dtr "
    "also makes it required (exit 3 if it cannot be tested, on a pty); --no-dtr skips it, for a cable without "
    'DTR-DSR/DCD wires (3-wire, RTS/CTS only, a board\'s UART): the row then reads "skipped (--no-dtr)".',
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def check(ports: tuple[str, ...], baud: int, rtscts: bool, dtr: bool | None, as_json: bool) -> None:
    """Check a null-modem pair: every byte value both ways (patterns that show dropped or stuck bits and bytes a
    tty eats, such as XON/XOFF), the byte rate against the 8N1 bound of --baud, RTS/CTS flow control (with
    --rtscts) and a DTR hang-up seen by the other side as DSR/DCD (unless --no-dtr). Prints one table: check,
    result, detail. Both ports are opened by this one process, so both must be on this machine.

    A pseudo-terminal has no line rate and no modem lines: those rows say "not testable on a pty" (a pty pair
    paced by `bipsim pty-pair --baud N` has a rate, and that row is checked).

    \b
    Exit status:
      0  no row failed, and every row asked for (--rtscts, --dtr) passed; rows "skipped"
         (no --rtscts, --no-dtr) and "not testable on a pty" do not count
      1  a row failed; or a port could not be opened, or a line failed during the check
      2  usage error (--port not given twice, the same port twice, a URL, a bad --baud)
      3  no row failed, but a row asked for with --rtscts or --dtr could not be tested (a pty)
    """
    if len(ports) != 2:
        raise CliError(f"--port must be given twice (side A, then side B), got {len(ports)}", exit_code=2)
    if ports[0] == ports[1]:
        raise CliError("the two --port paths must differ", exit_code=2)
    try:
        results, _ = trio.run(_check, (ports[0], ports[1]), baud, rtscts, dtr is not False, as_json)
    except ValueError as exc:
        raise CliError(str(exc), exit_code=2) from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError, ExceptionGroup) as exc:
        gone = _line_failure(exc)
        if gone is None:
            raise
        raise CliError(f"a line failed during the check: {gone}") from exc
    requested = {"rts/cts"} if rtscts else set()
    if dtr:  # --dtr given: the row is required, not merely on by default
        requested.add("dtr hang-up")
    status = exit_status(results, requested=requested)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ports": {"A": ports[0], "B": ports[1]},
                    "baud": baud,
                    "rtscts": rtscts,
                    "dtr": dtr is not False,
                    "checks": [r.to_json() for r in results],
                    "exit": status,
                }
            )
        )
    else:
        click.echo(
            f"A = {ports[0]}, B = {ports[1]}, {baud} baud 8N1, RTS/CTS {'on' if rtscts else 'off'}, "
            f"DTR check {'off' if dtr is False else 'on'}"
        )
        click.echo(render_table(results))
    sys.stdout.flush()
    if status:
        sys.exit(status)
