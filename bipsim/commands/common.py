"""Option helpers shared by the long-running subcommands: tracing, HOST:PORT parsing, signal-driven shutdown.

Shutdown (docs/development.md, "Stopping the processes"): SIGTERM or SIGINT cancels the process's trio nursery, so it
unwinds and exits 0 with its trace complete. Whatever the process is doing (a peer flooding it, a shielded write on a
stalled line, a handler that never yields), it is gone within SHUTDOWN_GRACE seconds: a watchdog thread armed by the
signal handler itself ends it with status 128 + the signal number (143 for SIGTERM) and one line on stderr. The
handler is a plain Python signal handler, so it runs even while the trio loop is held by a task that does not yield.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from bipsim.errors import CliError
from bipsim.trace.recorder import NULL_TRACER, Tracer, flush_all

if TYPE_CHECKING:  # trio itself is imported where a command runs: --help does not pay for it
    import trio

trace_option = click.option(
    "--trace", "trace_path", type=click.Path(dir_okay=False), help="Write the JSONL trace here."
)
pcap_option = click.option(
    "--pcap",
    "pcap_path",
    type=click.Path(dir_okay=False),
    help="Also write a pcap of the trace here on exit (a data call's PPP frames go to F.ppp.pcap beside F.pcap, "
    "link type 204).",
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
    """An option's HOST:PORT (or PORT alone); a usage error (exit 2, as click's own) when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    try:
        number = int(port)
    except ValueError as exc:
        raise CliError(f"{text!r} is not HOST:PORT", exit_code=2) from exc
    if not 0 <= number <= 65535:
        raise CliError(f"port {number} is out of range", exit_code=2)
    return host.strip("[]") or default_host, number


def hex_option(value: str, what: str) -> str:
    """An option's hex (spaces allowed) as upper-case hex without spaces; a usage error (exit 2) naming `what`
    when it is not hex."""
    text = value.replace(" ", "")
    try:
        bytes.fromhex(text)
    except ValueError:
        raise CliError(f"{what}: {value!r} is not hex", exit_code=2) from None
    return text.upper()


SHUTDOWN_GRACE = 1.0  # seconds from SIGTERM/SIGINT to a forced exit


class Shutdown:
    """The process's answer to SIGTERM/SIGINT: cancel the running nursery at once, exit by force after `grace`."""

    def __init__(self, who: str, grace: float = SHUTDOWN_GRACE) -> None:
        self.who = who
        self.grace = grace
        self.signum = 0  # the first signal received, 0 while none
        self._cancel: Callable[[], None] | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._watchdog: threading.Timer | None = None

    def install(self) -> None:
        """Takes SIGTERM and SIGINT for the rest of the process (call before any slow set-up)."""
        if threading.current_thread() is not threading.main_thread():
            return  # run from another thread (a test harness): signals stay with the main thread's owner
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._on_signal)

    @property
    def requested(self) -> bool:
        return bool(self.signum)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.signum:
            self.signum = signum
        if self._watchdog is None:  # the first signal, or one after a clean unwind (work after the run)
            self._watchdog = threading.Timer(self.grace, self._force)
            self._watchdog.daemon = True
            self._watchdog.start()
        self._wake()

    def _disarm(self) -> None:
        """The run unwound in time: what the command does after it (writing a pcap) is not cut short."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _wake(self) -> None:
        if self._token is None or self._cancel is None:
            return
        import trio

        try:
            self._token.run_sync_soon(self._cancel)
        except trio.RunFinishedError:
            pass

    def _force(self) -> None:
        name = signal.Signals(self.signum).name
        os.write(2, f"{self.who}: still busy {self.grace:g} s after {name}; stopped\n".encode())
        flush_all()  # the trace lines still queued (os._exit runs no exit hooks)
        os._exit(128 + self.signum)

    async def until_signalled(self, main: Callable[[], Awaitable[object]]) -> None:
        """Runs `main` until it returns or the signal comes (at once when it came already). Once it has unwound,
        the watchdog is off: a second signal arms it again."""
        import trio

        try:
            if self.requested:
                return
            async with trio.open_nursery() as nursery:
                self._token, self._cancel = trio.lowlevel.current_trio_token(), nursery.cancel_scope.cancel
                try:
                    if self.requested:  # it came between the check above and now
                        return
                    await main()
                finally:
                    self._token = self._cancel = None
                    nursery.cancel_scope.cancel()
        finally:
            self._disarm()


_shutdown: Shutdown | None = None


def install_shutdown(who: str, grace: float = SHUTDOWN_GRACE) -> Shutdown:
    """The process's Shutdown, installed (the long-running subcommands call it first thing). A command whose
    unwinding stops child processes (trio terminates them, then waits for them) takes a longer `grace`."""
    global _shutdown
    if _shutdown is None:
        _shutdown = Shutdown(who, grace)
        _shutdown.install()
    return _shutdown


async def until_signalled(main: Callable[[], Awaitable[object]]) -> None:
    """Runs `main` until it returns or SIGINT/SIGTERM arrives; either way the nursery unwinds cleanly, and the
    process is gone within SHUTDOWN_GRACE seconds of the signal whatever it is doing."""
    await install_shutdown("bipsim").until_signalled(main)
