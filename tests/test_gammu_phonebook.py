"""gammu reads the card's phonebook through the CP's 27.007 phonebook commands: `bipsim cp --profile phonebook` on a
`bipsim pty-pair` line, `gammu getallmemory SM` lists the profile's contacts (UCS2 names, the long number from
EF_EXT1), and `gammu backup F.vcf` writes them as vCards."""

from __future__ import annotations

import quopri
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bipsim.uicc.profile import load_profile
from tests.test_gammu import _stop


@pytest.fixture
def phonebook_cp(tmp_path: Path) -> Iterator[Path]:
    """`bipsim cp --profile phonebook` on side A of a pty pair; yields the gammu config for side B."""
    side_a, side_b = tmp_path / "A", tmp_path / "B"
    pair = subprocess.Popen(
        [sys.executable, "-m", "bipsim", "pty-pair", "--link", str(side_a), "--link", str(side_b)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cp: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 20
        while not (side_a.exists() and side_b.exists()):
            assert pair.poll() is None and time.monotonic() < deadline, "bipsim pty-pair made no links"
            time.sleep(0.05)
        errors = tmp_path / "cp.stderr"
        # --sms-listen: the CP prints "sms listening on HOST:PORT" once its line is open, its readiness line
        cp = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bipsim",
                "cp",
                "--port",
                str(side_a),
                "--profile",
                "phonebook",
                "--sms-listen",
                "127.0.0.1:0",
            ],
            stdout=subprocess.PIPE,
            stderr=errors.open("wb"),  # a file, not a pipe: nobody reads it while gammu runs
        )
        assert cp.stdout is not None
        line = cp.stdout.readline().decode()
        assert "sms listening on" in line, line + errors.read_text(errors="replace")
        rc = tmp_path / "gammurc"
        rc.write_text(
            f"[gammu]\ndevice = {side_b}\nconnection = at\nlogfile = {tmp_path / 'gammu.log'}\nlogformat = textall\n"
        )
        yield rc
        assert cp.poll() is None, "the CP died under gammu"
    finally:
        if cp is not None:
            _stop(cp)
        _stop(pair)


def _gammu(rc: Path, *args: str) -> str:
    result = subprocess.run(["gammu", "-c", str(rc), *args], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _expected() -> list[tuple[str, str]]:
    return [(entry["name"], entry["number"]) for entry in load_profile("phonebook").contacts]


@pytest.mark.needs("gammu")
def test_getallmemory_sm_lists_the_contacts(phonebook_cp: Path) -> None:
    out = _gammu(phonebook_cp, "getallmemory", "SM")
    found = re.findall(r'General number\s*: "([^"]*)"\s*\nName\s*: "([^"]*)"', out)
    assert [(name, number) for number, name in found] == _expected(), out
    log = (phonebook_cp.parent / "gammu.log").read_text(errors="replace")
    assert '"AT+CPBS=\\"SM\\""' in log or 'AT+CPBS="SM"' in log, "gammu did not select SM"


@pytest.mark.needs("gammu")
def test_backup_writes_the_sm_contacts_as_vcards(phonebook_cp: Path, tmp_path: Path) -> None:
    target = tmp_path / "contacts.vcf"
    _gammu(phonebook_cp, "backup", str(target), "-yes")
    cards = []
    for block in re.findall(r"BEGIN:VCARD\r?\n(.*?)END:VCARD", target.read_text(), re.S):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            name, *params = key.split(";")
            if "ENCODING=QUOTED-PRINTABLE" in params:
                value = quopri.decodestring(value.encode()).decode("utf-8")
            fields[name] = value
        cards.append(fields)
    assert all(card["X-GAMMU-MEMORY"] == "SM" for card in cards)
    assert [(card["N"], card["TEL"]) for card in cards] == _expected()
