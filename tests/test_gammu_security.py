"""gammu, a real AT client, against the card's PINs: `gammu getsecuritystatus` reads +CPIN? (27.007 8.3) and
`gammu entersecuritycode` enters a PIN, or a PUK with a new PIN, through +CPIN=; what it reports is what the card's
counters say (TS 102 221 sections 11.1.9 and 11.1.13), and the state survives the CP process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bipsim.uicc.card import SimCard
from bipsim.uicc.profile import load_profile
from tests.test_gammu import _stop


class Phone:
    """`bipsim pty-pair` and `bipsim cp --profile pin` with a state file; `gammu(*args)` runs gammu on the DTE's
    end and returns (exit code, stdout)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.state = folder / "card.json"
        self.rc = folder / "gammurc"
        side_a, side_b = folder / "A", folder / "B"
        self.rc.write_text(
            f"[gammu]\ndevice = {side_b}\nconnection = at\nlogfile = {folder / 'gammu.log'}\nlogformat = textall\n"
        )
        self.pair = subprocess.Popen(
            [sys.executable, "-m", "bipsim", "pty-pair", "--link", str(side_a), "--link", str(side_b)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not (side_a.exists() and side_b.exists()):
            assert self.pair.poll() is None, "bipsim pty-pair ended"
            assert time.monotonic() < deadline, "bipsim pty-pair made no links"
            time.sleep(0.05)
        self.side_a = side_a
        self.cp: subprocess.Popen[bytes] | None = None
        self.start_cp()

    def start_cp(self) -> None:
        self.cp = subprocess.Popen(
            [sys.executable, "-m", "bipsim", "cp", "--port", str(self.side_a), "--profile", "pin"]
            + ["--state", str(self.state), "--trace", str(self.folder / "cp.jsonl")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop_cp(self) -> None:
        if self.cp is not None:
            _stop(self.cp)

    def close(self) -> None:
        self.stop_cp()
        _stop(self.pair)

    def gammu(self, *args: str) -> tuple[int, str]:
        # the CP may still be starting: gammu's own timeout covers that, and its first command is retried
        for _ in range(3):
            result = subprocess.run(
                ["gammu", "-c", str(self.rc), *args], capture_output=True, text=True, timeout=120
            )
            if "No response in specified timeout" not in result.stdout + result.stderr:
                break
        assert self.cp is not None and self.cp.poll() is None, "the CP died under gammu"
        return result.returncode, result.stdout + result.stderr


@pytest.fixture
def phone(tmp_path: Path) -> Iterator[Phone]:
    phone = Phone(tmp_path)
    try:
        yield phone
    finally:
        phone.close()


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
