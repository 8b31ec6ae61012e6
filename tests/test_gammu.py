"""A real AT client drives the CP: Debian's gammu (`gammu --identify`, connection = at) against `bipsim cp` running
as a process on a `bipsim pty-pair` line. What gammu reports must be what the CP's 27.007 command set answers."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bipsim import __version__
from bipsim.cp.commands import IMEI, MANUFACTURER, MODEL
from bipsim.uicc.profile import load_profile
from tests.cp_process import SLOW_AT, CpOnPty, gammurc
from tests.cp_process import stop as _stop  # noqa: F401 (tests/test_sync_gammu.py imports it from here)


@pytest.fixture
def cp_on_pty(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """`bipsim pty-pair` linking A and B; `bipsim cp` on A, ready. Yields B (the DTE's end) and the CP process."""
    with CpOnPty(tmp_path) as modem:
        assert modem.cp is not None
        yield modem.device, modem.cp


def _identify(device: Path, tmp_path: Path) -> dict[str, str]:
    result = subprocess.run(
        # gammu's plain `at` connection: its character-at-a-time start (the other gammu tests write whole
        # commands, tests/cp_process.py gammurc) stays covered here
        ["gammu", "-c", str(gammurc(tmp_path, device, SLOW_AT)), "--identify"],
        capture_output=True,
        text=True,
        timeout=120,
    )
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
