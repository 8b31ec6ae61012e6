"""SIGTERM ends `bipsim cp`, `bipsim ap` and `bipsim ota-server` within 2 s whatever they are doing (docs/development.md,
"Stopping the processes"): exit status 0 after a clean unwind, 143 (128 + SIGTERM) when the watchdog had to end a
process that did not stop within its grace time, and at most one line on stderr. Real processes: each is started,
made busy (a peer flooding it, or a handler that never yields), sent SIGTERM, and waited for with a bound."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

BOUND = 2.0  # seconds from SIGTERM to the process being gone


def start(args: list[str], tmp_path: Path, *, stdout_pipe: bool = False) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE if stdout_pipe else subprocess.DEVNULL,
        stderr=(tmp_path / "stderr.txt").open("wb"),
        stdin=subprocess.DEVNULL,
    )


def bipsim(*args: str) -> list[str]:
    return [sys.executable, "-m", "bipsim", *args]


def terminate_within_bound(process: subprocess.Popen[bytes], tmp_path: Path) -> int:
    """Sends SIGTERM and waits for the process, at most BOUND seconds; returns its exit status."""
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=BOUND)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"still running {BOUND} s after SIGTERM") from None
    stderr = (tmp_path / "stderr.txt").read_text(errors="replace")
    assert len(stderr.splitlines()) <= 1 and "Traceback" not in stderr, stderr
    assert code in (0, 143), (code, stderr)
    return code


def read_until(fd: int, marker: bytes, timeout: float = 60.0, *, prompt: bytes = b"") -> bytes:
    """Reads `fd` until `marker` arrived (select with a deadline, no sleeping); with `prompt`, writes it again
    each time the other end has been quiet for half a second (a process still starting does not hear it)."""
    deadline = time.monotonic() + timeout
    seen = b""
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} within {timeout} s: {seen[-200:]!r}"
        if prompt:
            os.write(fd, prompt)
        ready, _, _ = select.select([fd], [], [], min(left, 0.5) if prompt else left)
        if ready:
            seen += os.read(fd, 4096)
    return seen


@contextmanager
def flooding(work: Callable[[threading.Event], None], count: int = 1) -> Iterator[None]:
    """Runs `work` in threads until the block ends (each loop is bounded by the stop event and its own count)."""
    stop = threading.Event()
    threads = [threading.Thread(target=work, args=(stop,), daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)


@contextmanager
def pty_line() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def flood_line(master: int) -> Callable[[threading.Event], None]:
    """Writes AT commands and junk to a line as fast as it takes them and reads back whatever comes."""
    chunk = b"AT+CIMI\rAT+CSQ\r" * 64 + bytes(range(256))

    def work(stop: threading.Event) -> None:
        for _ in range(100_000):
            if stop.is_set():
                return
            _, writable, _ = select.select([], [master], [], 0.05)
            if writable:
                try:
                    os.write(master, chunk)
                except (BlockingIOError, OSError):
                    pass
            readable, _, _ = select.select([master], [], [], 0)
            if readable:
                try:
                    os.read(master, 65536)
                except OSError:
                    pass

    return work


def test_cp_flooded_with_at_commands_exits_on_sigterm_within_2_s(tmp_path: Path) -> None:
    with pty_line() as (master, port):
        process = start(bipsim("cp", "--port", port, "--trace", str(tmp_path / "cp.jsonl")), tmp_path)
        try:
            read_until(master, b"OK", prompt=b"AT\r")  # up and answering
            with flooding(flood_line(master)):
                read_until(master, b"+CSQ")  # busy answering the flood
                terminate_within_bound(process, tmp_path)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_ap_flooded_with_junk_exits_on_sigterm_within_2_s(tmp_path: Path) -> None:
    with pty_line() as (master, port):
        process = start(bipsim("ap", "--port", port), tmp_path)
        try:
            read_until(master, b"AT")  # the AP probes its modem
            with flooding(flood_line(master)):
                read_until(master, b"AT")
                terminate_within_bound(process, tmp_path)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_ota_server_flooded_with_connections_exits_on_sigterm_within_2_s(tmp_path: Path) -> None:
    process = start(bipsim("ota-server", "--listen", "127.0.0.1:0", "--no-tls"), tmp_path, stdout_pipe=True)
    try:
        assert process.stdout is not None
        line = read_until(process.stdout.fileno(), b"\n").decode()
        port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
        request = b"POST /server/adminagent HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"

        def work(stop: threading.Event) -> None:
            for _ in range(2000):  # bounded: connections to this machine only
                if stop.is_set():
                    return
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as peer:
                        peer.sendall(request + b"x" * 65536)
                except OSError:
                    pass

        with flooding(work, count=2):
            terminate_within_bound(process, tmp_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


SPIN = """
import trio
from bipsim.commands.common import install_shutdown, until_signalled

install_shutdown("spin")


async def main() -> None:
    print("spinning", flush=True)
    while True:  # a handler that never yields to the trio loop
        pass


trio.run(until_signalled, main)
"""


def test_a_handler_that_never_yields_is_ended_with_143_and_one_line(tmp_path: Path) -> None:
    process = start([sys.executable, "-c", SPIN], tmp_path, stdout_pipe=True)
    try:
        assert process.stdout is not None
        read_until(process.stdout.fileno(), b"spinning")
        assert terminate_within_bound(process, tmp_path) == 143
        assert (tmp_path / "stderr.txt").read_text() == "spin: still busy 1 s after SIGTERM; stopped\n"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


QUIET = """
import trio
from bipsim.commands.common import install_shutdown, until_signalled

install_shutdown("quiet")


async def main() -> None:
    print("waiting", flush=True)
    await trio.sleep_forever()


trio.run(until_signalled, main)
print("unwound", flush=True)
"""


def test_a_process_that_yields_unwinds_and_exits_0(tmp_path: Path) -> None:
    process = start([sys.executable, "-c", QUIET], tmp_path, stdout_pipe=True)
    try:
        assert process.stdout is not None
        read_until(process.stdout.fileno(), b"waiting\n")
        assert terminate_within_bound(process, tmp_path) == 0
        assert process.stdout.read() == b"unwound\n"
        assert (tmp_path / "stderr.txt").read_text() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
