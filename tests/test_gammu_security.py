"""gammu, a real AT client, against the card's PINs: `gammu getsecuritystatus` reads +CPIN? (27.007 8.3) and
`gammu entersecuritycode` enters a PIN, or a PUK with a new PIN, through +CPIN=; what it reports is what the card's
counters say (TS 102 221 sections 11.1.9 and 11.1.13), and the state survives the CP process."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bipsim.uicc.card import SimCard
from bipsim.uicc.profile import load_profile
from tests.cp_process import CpOnPty, gammurc


class Phone(CpOnPty):
    """`bipsim pty-pair` and `bipsim cp --profile pin` with a state file; `gammu(*args)` runs gammu on the DTE's
    end and returns (exit code, stdout)."""

    def __init__(self, folder: Path) -> None:
        self.state = folder / "card.json"
        super().__init__(folder, ["--profile", "pin", "--state", str(self.state)])
        self.rc = gammurc(folder, self.device)

    def gammu(self, *args: str) -> tuple[int, str]:
        result = subprocess.run(
            ["gammu", "-c", str(self.rc), *args], capture_output=True, text=True, timeout=120
        )
        assert self.cp is not None and self.cp.poll() is None, "the CP died under gammu"
        return result.returncode, result.stdout + result.stderr


@pytest.fixture
def phone(tmp_path: Path) -> Iterator[Phone]:
    with Phone(tmp_path) as phone:
        yield phone


@pytest.mark.needs("gammu")
def test_gammu_reads_and_enters_the_pin(phone: Phone) -> None:
    assert phone.gammu("getsecuritystatus") == (0, "Waiting for PIN.\n")
    code, out = phone.gammu("entersecuritycode", "PIN", "0000")
    assert code != 0 and "Security error" in out  # +CME ERROR: 16
    assert phone.gammu("entersecuritycode", "PIN", "1234")[0] == 0
    assert phone.gammu("getsecuritystatus") == (0, "Nothing to enter.\n")
    # the false PIN cost an attempt, the right one gave it back: the card's counter, read after the CP is gone
    phone.stop_cp()
    events = [json.loads(line) for line in (phone.folder / "cp.jsonl").read_text().splitlines()]
    results = [e["fields"]["result"] for e in events if e["kind"] == "sim.security"]
    assert results == ["+CME ERROR: 16", "OK"]
    card = SimCard(load_profile("pin"), state_path=phone.state)
    assert card.pins.remaining[0x01] == 3


@pytest.mark.needs("gammu")
def test_gammu_unblocks_with_the_puk(phone: Phone) -> None:
    for _ in range(3):
        code, out = phone.gammu("entersecuritycode", "PIN", "0000")
        assert code != 0 and "Security error" in out
    assert phone.gammu("getsecuritystatus") == (0, "Waiting for PUK.\n")
    # the blocked PIN survives the CP: a new CP process reads it from the card's state file
    phone.stop_cp()
    phone.start_cp()
    assert phone.gammu("getsecuritystatus") == (0, "Waiting for PUK.\n")
    assert phone.gammu("entersecuritycode", "PUK", "12345678", "4321")[0] == 0
    assert phone.gammu("getsecuritystatus") == (0, "Nothing to enter.\n")
    phone.stop_cp()
    card = SimCard(load_profile("pin"), state_path=phone.state)
    assert card.process(bytes.fromhex("0020000108") + b"4321".ljust(8, b"\xff"))[-2:] == b"\x90\x00"


@pytest.mark.needs("gammu")
def test_a_lost_attempt_survives_kill_9(phone: Phone) -> None:
    """The card writes the counter before its answer leaves it: a CP killed right after a false PIN keeps it."""
    code, out = phone.gammu("entersecuritycode", "PIN", "0000")
    assert code != 0 and "Security error" in out
    assert phone.cp is not None
    phone.cp.kill()  # SIGKILL: no unwinding, no last save
    phone.cp.wait(10)
    card = SimCard(load_profile("pin"), state_path=phone.state)
    assert card.process(bytes.fromhex("0020000100")) == b"\x63\xc2"
