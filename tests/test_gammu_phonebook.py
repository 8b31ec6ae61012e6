"""gammu reads the card's phonebook through the CP's 27.007 phonebook commands: `bipsim cp --profile phonebook` on a
`bipsim pty-pair` line, `gammu getallmemory SM` lists the profile's contacts (UCS2 names, the long number from
EF_EXT1), and `gammu backup F.vcf` writes them as vCards."""

from __future__ import annotations

import quopri
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bipsim.uicc.profile import load_profile
from tests.cp_process import CpOnPty, gammurc


@pytest.fixture(scope="module")
def phonebook_modem(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CpOnPty]:
    """`bipsim cp --profile phonebook` on side A of a pty pair, one for the module: both tests only read the
    card."""
    with CpOnPty(tmp_path_factory.mktemp("gammu_phonebook"), ["--profile", "phonebook"]) as modem:
        yield modem


@pytest.fixture
def phonebook_cp(phonebook_modem: CpOnPty) -> Iterator[Path]:
    """The gammu config for side B (gammu rewrites its log on each run); the CP must outlive the test."""
    yield gammurc(phonebook_modem.folder, phonebook_modem.device)
    assert phonebook_modem.cp is not None and phonebook_modem.cp.poll() is None, "the CP died under gammu"


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
