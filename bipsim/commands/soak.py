"""`bipsim soak`: many OTA sessions in a row with faults drawn from a seed, and a report (scenarios/soak.py)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import click

from bipsim.commands.common import install_shutdown
from bipsim.errors import CliError

# seconds from SIGTERM to a forced exit: trio stops each child process with SIGTERM and waits up to 5 s for it
CHILD_GRACE = 10.0


@click.command("soak")
@click.option(
    "--sessions", type=click.IntRange(min=1), help="Run this many sessions (default 10 without --duration)."
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Start no new session after this many seconds (with --sessions: whichever comes first).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="The seed the faults are drawn from.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the report as one JSON object (for scripts and CI)."
)
@click.option(
    "--keep",
    "keep_dir",
    type=click.Path(file_okay=False),
    help="Keep every session's files (traces, logs, card state) here; failed sessions are kept in any case.",
)
@click.option(
    "--session-timeout",
    type=click.FloatRange(min=1),
    default=90.0,
    show_default=True,
    help="Seconds a session may take before its processes are stopped.",
)
def soak(
    sessions: int | None,
    duration: float | None,
    seed: int,
    as_json: bool,
    keep_dir: str | None,
    session_timeout: float,
) -> None:
    """Run OTA sessions end to end (OTA server, CP with its card, AP, on a pty pair), one after another, each with
    a fault drawn from SEED: line-drop (the serial line goes away and comes back), server-drop (the server's
    connections close), corrupt (a bit of the server's bytes flipped; TLS ends that session), power-loss (the CP
    and its card killed with SIGKILL, then booted on the saved state), slow-peer (the server's bytes at 2000 B/s) or
    none. Each fault lands at an offset of the server's stream inside the applet download, where the harness holds
    the server's bytes until the fault is in; the same seed gives the same faults at the same offsets.

    The report: sessions run and completed, faults injected by type, whether the card's saved state matches the
    server's results log after every session (each script the server logged as answered is applied on the card,
    none twice, none lost, nothing applied that the server did not log), and the memory (RSS) and open file
    descriptors of each process at the start and end of the first and last sessions and of the soak itself.

    Exit 0 when every session is consistent, every session with a fault other than corrupt completed its campaign,
    and nothing grew past the tolerance (4 file descriptors, 32 MiB RSS: the soak's own process from start to end,
    each kind of process from the first session's end to the last's); 1 otherwise.
    """
    import trio

    from bipsim.scenarios.soak import SessionReport, SoakOptions, SoakReport
    from bipsim.scenarios.soak import soak as run_soak

    def progress(report: SessionReport) -> None:
        if as_json:
            return
        outcome = "completed" if report.completed else "not completed"
        status = "ok" if not report.problems else "PROBLEM: " + "; ".join(report.problems)
        fault = report.fault if report.injected else f"{report.fault} (not injected)"
        click.echo(
            f"session {report.index}: {fault} at byte {report.offset}, {report.bearer}, {report.size}-byte load, "
            f"{outcome} in {report.seconds:.1f} s, {status}"
        )

    options = SoakOptions(seed, sessions, duration, Path(keep_dir) if keep_dir else None, session_timeout)
    # SIGTERM/Ctrl-C cancel the run: the harness stops the session's OTA server, CP and AP on its way out
    shutdown = install_shutdown("bipsim soak", grace=CHILD_GRACE)
    finished: list[SoakReport] = []

    async def main() -> None:
        finished.append(await run_soak(options, progress))

    trio.run(shutdown.until_signalled, main)
    if not finished:
        raise CliError(f"soak stopped by {signal.Signals(shutdown.signum).name} before its report")
    report = finished[0]
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for line in report.lines():
            click.echo(line)
    if not report.passed:
        raise CliError("soak failed: " + "; ".join((report.problems + report.leaks)[:3]) or "no session ran")
