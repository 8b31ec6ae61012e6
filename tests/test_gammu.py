"""A real AT client drives the CP: Debian's gammu (`gammu --identify`, connection = at) against `bipsim cp` running
as a process on a `bipsim pty-pair` line. What gammu reports must be what the CP's 27.007 command set answers."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bipsim import __version__
from bipsim.cp.commands import IMEI, MANUFACTURER, MODEL
from bipsim.uicc.profile import load_profile


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def cp_on_pty(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """`bipsim pty-pair` linking A and B; `bipsim cp` on A. Yields B (the DTE's end) and the CP process."""
    side_a, side_b = tmp_path / "A", tmp_path / "B"
    pair = subprocess.Popen(
        [sys.executable, "-m", "bipsim", "pty-pair", "--link", str(side_a), "--link", str(side_b)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    cp: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 20
        while not (side_a.exists() and side_b.exists()):
            assert pair.poll() is None, pair.stderr.read() if pair.stderr else b""
            assert time.monotonic() < deadline, "bipsim pty-pair made no links"
            time.sleep(0.05)
        cp = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bipsim",
                "cp",
                "--port",
                str(side_a),
                "--trace",
                str(tmp_path / "cp.jsonl"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        yield side_b, cp
    finally:
        if cp is not None:
            _stop(cp)
        _stop(pair)


def _identify(device: Path, tmp_path: Path) -> dict[str, str]:
    rc = tmp_path / "gammurc"
    rc.write_text(
        f"[gammu]\ndevice = {device}\nconnection = at\nlogfile = {tmp_path / 'gammu.log'}\nlogformat = textall\n"
    )
    # the CP process may still be starting: gammu's own timeout covers that, one retry covers a slow start
    for _ in range(3):
        result = subprocess.run(
            ["gammu", "-c", str(rc), "--identify"], capture_output=True, text=True, timeout=120
        )
        if result.returncode == 0:
            break
        time.sleep(1)
    assert result.returncode == 0, result.stdout + result.stderr
    fields = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


@pytest.mark.needs("gammu")
def test_gammu_identifies_the_cp(cp_on_pty: tuple[Path, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    device, cp = cp_on_pty
    fields = _identify(device, tmp_path)
    assert cp.poll() is None, "the CP died under gammu"
    assert fields["Manufacturer"] == MANUFACTURER
    # gammu knows no "bipsim" model in its database: it prints "unknown (<AT+CGMM answer>)"
    model = fields["Model"]
    assert model == MODEL or re.fullmatch(rf"unknown \({re.escape(MODEL)}\)", model), model
    assert fields["Firmware"] == __version__
    assert fields["IMEI"] == IMEI
    # +CIMI is read from the simulated card's EF_IMSI: the default profile's IMSI
    assert fields["SIM IMSI"] == load_profile(None).imsi
    # gammu drove the standard probe sequence, and every command got a final result (none left unanswered)
    log = (tmp_path / "gammu.log").read_text(errors="replace")
    for command in ("ATE1", "AT+CMEE=1", "AT+CSCS=?", "AT+CGMI", "AT+CGMM", "AT+CGMR", "AT+CGSN", "AT+CIMI"):
        assert f'"{command}"' in log, command
    assert "No response" not in log and "TIMEOUT" not in log
