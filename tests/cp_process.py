"""`bipsim cp` as a process for the tests of real peers (gammu, oFono, ModemManager, raw sockets): on a
`bipsim pty-pair` line (docs/protocols.md, "--sms-listen") or on a TCP socket (`--listen`, "The line on a TCP
socket"), each waited for by the line the process prints once it is ready, never by a sleep.

Use:
    with CpOnPty(tmp_path, ["--profile", "pin"]) as modem:   # modem.device: the DTE's end; modem.smsc: HOST:PORT
        modem.stop_cp(); modem.start_cp()                    # the same line, a new CP process
    cp, port = start_listening_cp(tmp_path, ["--trace", ...])
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

BIPSIM = [sys.executable, "-m", "bipsim"]
DEADLINE = 60.0  # seconds for a process to say it is ready


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (the CP saves its card and trace on it), SIGKILL after 10 s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_until(
    what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Callable[[], str]
) -> None:
    """Polls `ready` (a daemon's readiness) until true; fails at once when `proc` ended, or after DEADLINE, with
    the end of its log."""
    deadline = time.monotonic() + DEADLINE
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}: {log()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready in {DEADLINE} s: {log()[-3000:]}")
        time.sleep(0.05)


def start_listening_cp(folder: Path, args: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """`bipsim cp --listen 127.0.0.1:0 ARGS`, its stderr in FOLDER/cp.err; returns the process and the port it
    said it listens on ('listening on tcp://127.0.0.1:PORT', once the socket is bound)."""
    log = folder / "cp.err"
    with log.open("wb") as err:
        cp = subprocess.Popen(
            [*BIPSIM, "cp", "--listen", "127.0.0.1:0", *args], stdout=subprocess.DEVNULL, stderr=err
        )
    found: list[int] = []

    def bound() -> bool:
        match = re.search(r"listening on tcp://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if match:
            found.append(int(match.group(1)))
        return match is not None

    try:
        wait_until("bipsim cp --listen", bound, cp, lambda: log.read_text(errors="replace"))
    except BaseException:
        stop(cp)
        raise
    return cp, found[0]


FAST_AT = "dku2at"
SLOW_AT = "at"


def gammurc(folder: Path, device: Path, connection: str = FAST_AT) -> Path:
    """FOLDER/gammurc: gammu on DEVICE (a serial line) with the AT protocol, every line logged to FOLDER/gammu.log.

    CONNECTION: gammu's plain `at` (SLOW_AT) writes each command a character at a time and then sleeps 400 ms,
    until it has read the model (libgammu/protocol/at/at.c, AT_Initialise: slow write only for GCT_AT, a
    workaround for old phones' cables): ten such commands, 4 s, at the start of every gammu run. `dku2at`
    (FAST_AT, the default) is the same serial device and the same AT protocol with whole-command writes: gammu
    sends the same commands (measured: the same 32-command sequence for --identify) in 0.2 s. One test keeps
    SLOW_AT so the character-at-a-time start stays covered."""
    rc = folder / "gammurc"
    rc.write_text(
        f"[gammu]\ndevice = {device}\nconnection = {connection}\n"
        f"logfile = {folder / 'gammu.log'}\nlogformat = textall\n"
    )
    return rc


class Processes:
    """A test's group of processes as a context manager: `start()` them (on a failed start the ones already
    running are stopped) and `close()` them at the end."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class CpOnPty(Processes):
    """`bipsim pty-pair` linking FOLDER/A and FOLDER/B, and `bipsim cp --port A --sms-listen 127.0.0.1:0
    --trace FOLDER/cp.jsonl ARGS` on A. Ready when the CP printed 'sms listening on HOST:PORT': it opens its line
    first, so the line is there by then. `device` is B (the DTE's end), `smsc` the control socket's HOST:PORT."""

    def __init__(self, folder: Path, args: list[str] | None = None) -> None:
        self.folder = folder
        self.args = args or []
        self.side_a, self.device = folder / "A", folder / "B"
        self.trace = folder / "cp.jsonl"
        self.errors = folder / "cp.stderr"
        self.pair: subprocess.Popen[bytes] | None = None
        self.cp: subprocess.Popen[bytes] | None = None
        self.smsc = ""

    def start(self) -> None:
        self.pair = subprocess.Popen(
            [*BIPSIM, "pty-pair", "--link", str(self.side_a), "--link", str(self.device)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.pair.stdout is not None
        # it prints 'LINK -> /dev/pts/N' for each side once both links are made
        said = [self.pair.stdout.readline().decode() for _ in range(2)]
        assert all(" -> /dev/pts/" in line for line in said), f"bipsim pty-pair made no links: {said}"
        self.start_cp()

    def start_cp(self) -> None:
        """A CP process on the line (again, after stop_cp); returns once it said it is ready."""
        with self.errors.open("ab") as err:  # a file, not a pipe: nobody reads it while a peer runs
            self.cp = subprocess.Popen(
                [*BIPSIM, "cp", "--port", str(self.side_a), "--sms-listen", "127.0.0.1:0"]
                + ["--trace", str(self.trace), *self.args],
                stdout=subprocess.PIPE,
                stderr=err,
            )
        assert self.cp.stdout is not None
        line = self.cp.stdout.readline().decode()
        match = re.search(r"sms listening on (\S+)", line)
        assert match, line + self.errors.read_text(errors="replace")[-3000:]
        self.smsc = match.group(1)

    def stop_cp(self) -> None:
        stop(self.cp)

    def close(self) -> None:
        stop(self.cp)
        stop(self.pair)
