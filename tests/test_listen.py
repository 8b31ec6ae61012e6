"""`bipsim cp --listen HOST:PORT` (docs/protocols.md, "The line on a TCP socket"): the modem's line on a TCP socket,
one client at a time, the next one served once the first leaves; real loopback sockets, the CP as a process."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bipsim.trace.reader import read_trace
from tests.cp_process import start_listening_cp, stop


@pytest.fixture
def listening_cp(tmp_path: Path) -> Iterator[tuple[int, Path, subprocess.Popen[bytes]]]:
    trace = tmp_path / "cp.jsonl"
    cp, port = start_listening_cp(tmp_path, ["--trace", str(trace)])
    try:
        yield port, trace, cp
    finally:
        stop(cp)


def _until(sock: socket.socket, end: bytes) -> bytes:
    sock.settimeout(30)
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def test_one_client_at_a_time_then_the_next(listening_cp: tuple[int, Path, subprocess.Popen[bytes]]) -> None:
    port, trace, cp = listening_cp
    first = socket.create_connection(("127.0.0.1", port))
    first.sendall(b"AT+CGMI\r")
    assert b"bipsim\r\n\r\nOK\r\n" in _until(first, b"OK\r\n")
    # a second client connects (the backlog) and asks; it is not served while the first is
    second = socket.create_connection(("127.0.0.1", port))
    second.sendall(b"ATI\r")
    first.sendall(b"AT\r")
    assert _until(first, b"OK\r\n").endswith(b"OK\r\n")
    first.close()
    # the first left: the second is the line now, and its command (sent earlier) is answered
    answer = _until(second, b"OK\r\n")
    assert answer.endswith(b"OK\r\n")
    second.close()
    stop(cp)  # the trace file is complete once the CP has ended
    assert cp.returncode == 0
    events, _ = read_trace([str(trace)])
    lines = [(e.kind, e.fields.get("count")) for e in events if e.kind.startswith("line.")]
    assert lines[:3] == [("line.open", 1), ("line.closed", 1), ("line.reopened", 2)], lines
    assert all(
        e.fields.get("port") == f"tcp://127.0.0.1:{port}" for e in events if e.kind.startswith("line.")
    )
    # ATI (the second client's) came only after the first client's session had closed
    closed_at = next(i for i, e in enumerate(events) if e.kind == "line.closed")
    ati_at = next(i for i, e in enumerate(events) if e.kind == "at.command" and e.summary == "ATI")
    assert ati_at > closed_at


def test_port_and_listen_are_exclusive_and_a_taken_address_is_one_line(tmp_path: Path) -> None:
    both = subprocess.run(
        [sys.executable, "-m", "bipsim", "cp", "--port", "/dev/null", "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert both.returncode != 0 and "--port DEVICE or --listen HOST:PORT" in both.stderr
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "bipsim", "cp", "--listen", f"127.0.0.1:{taken.getsockname()[1]}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        taken.close()
    assert result.returncode == 1, result.stderr
    assert "--listen tcp://127.0.0.1:" in result.stderr and "Traceback" not in result.stderr
