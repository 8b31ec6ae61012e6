"""`bipsim pty-pair` as a real process: exact bytes, 1 MiB intact, reopen, symlinks, socat interop, bad arguments."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bipsim.link.pty import set_raw


def open_raw(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    set_raw(fd)
    return fd


def read_exactly(fd: int, size: int, timeout: float = 20.0) -> bytes:
    import select

    got = bytearray()
    deadline = time.monotonic() + timeout
    while len(got) < size:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"got {len(got)} of {size} bytes")
        got += os.read(fd, size - len(got))
    return bytes(got)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@pytest.fixture
def pty_pair_process() -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bipsim", "pty-pair", "--stats"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    paths = [proc.stdout.readline().strip(), proc.stdout.readline().strip()]
    yield proc, paths
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_all_byte_values_and_one_mebibyte_intact(
    pty_pair_process: tuple[subprocess.Popen[str], list[str]],
) -> None:
    proc, (a_path, b_path) = pty_pair_process
    a, b = open_raw(a_path), open_raw(b_path)
    try:
        every = bytes(range(256))
        write_all(a, every)
        assert read_exactly(b, 256) == every
        write_all(b, every[::-1])
        assert read_exactly(a, 256) == every[::-1]
        payload = random.Random(1).randbytes(1 << 20)
        import threading

        writer = threading.Thread(target=write_all, args=(a, payload))
        writer.start()
        assert read_exactly(b, len(payload)) == payload
        writer.join()
    finally:
        os.close(a)
        os.close(b)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "A->B: 1048832 bytes" in err  # 256 + 1 MiB, reported by --stats


def test_survives_a_side_closing_and_reopening(
    pty_pair_process: tuple[subprocess.Popen[str], list[str]],
) -> None:
    _, (a_path, b_path) = pty_pair_process
    b = open_raw(b_path)
    try:
        for round_ in range(3):
            a = open_raw(a_path)
            write_all(a, b"round %d\r\n" % round_)
            assert read_exactly(b, 9) == b"round %d\r\n" % round_
            write_all(b, b"ack\n")
            assert read_exactly(a, 4) == b"ack\n"
            os.close(a)
    finally:
        os.close(b)


def test_links_are_made_and_removed(tmp_path: Path) -> None:
    la, lb = tmp_path / "ap", tmp_path / "cp"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bipsim", "pty-pair", "--link", str(la), "--link", str(lb)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    proc.stdout.readline()
    assert first.startswith(f"{la} -> /dev/pts/")
    a, b = open_raw(str(la)), open_raw(str(lb))
    write_all(a, b"\x00\xff")
    assert read_exactly(b, 2) == b"\x00\xff"
    os.close(a)
    os.close(b)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    assert not la.exists() and not la.is_symlink() and not lb.is_symlink()


@pytest.mark.needs("socat")
def test_interoperates_with_socat(
    pty_pair_process: tuple[subprocess.Popen[str], list[str]], tmp_path: Path
) -> None:
    """socat makes its own pty and joins it to our side A; bytes go socat pty -> our B and back."""
    _, (a_path, b_path) = pty_pair_process
    socat_end = tmp_path / "socat-end"
    socat = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={socat_end}", f"open:{a_path},raw,echo=0"],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not socat_end.exists():
            assert time.monotonic() < deadline, "socat did not create its pty"
            time.sleep(0.02)
        s, b = open_raw(str(socat_end)), open_raw(b_path)
        payload = bytes(range(256)) * 16
        write_all(s, payload)
        assert read_exactly(b, len(payload)) == payload
        write_all(b, payload[::-1])
        assert read_exactly(s, len(payload)) == payload[::-1]
        os.close(s)
        os.close(b)
    finally:
        socat.terminate()
        socat.wait(10)


def test_baud_option_paces_and_keeps_the_bytes_intact() -> None:
    """--baud is accepted, every byte value crosses both ways intact, and --stats names the configured rate.

    No timing is asserted here (a loaded machine would make that flaky); bench/bench_download_115200.py measures
    the throughput against the 8N1 bound.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "bipsim", "pty-pair", "--baud", "115200", "--stats"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    a_path, b_path = proc.stdout.readline().strip(), proc.stdout.readline().strip()
    a, b = open_raw(a_path), open_raw(b_path)
    try:
        payload = random.Random(2).randbytes(4096) + bytes(range(256))
        write_all(a, payload)
        assert read_exactly(b, len(payload), timeout=60) == payload
        write_all(b, payload[::-1])
        assert read_exactly(a, len(payload), timeout=60) == payload[::-1]
    finally:
        os.close(a)
        os.close(b)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert f"A->B: {len(payload)} bytes" in err and f"B->A: {len(payload)} bytes" in err
    assert "paced at 115200 baud 8N1 (11520 B/s per direction)" in err


def test_unpaced_stats_say_so(pty_pair_process: tuple[subprocess.Popen[str], list[str]]) -> None:
    proc, _ = pty_pair_process
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert err.strip().endswith("; unpaced")


@pytest.mark.parametrize(
    "args",
    [
        ["--link", "/nonexistent/dir/x", "--link", "/tmp/bipsim-test-y"],
        ["--link", "/tmp/only-one"],
        ["--bogus"],
        ["--baud", "0"],
        ["--baud", "fast"],
    ],
)
def test_bad_arguments_are_one_line(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bipsim", "pty-pair", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
