"""gammu, a real AT client, against the card's PINs: `gammu getsecuritystatus` reads +CPIN? (27.007 8.3) and
`gammu entersecuritycode` enters a PIN, or a PUK with a new PIN, through +CPIN=; what it reports is what the card's
counters say (TS 102 221 sections 11.1.9 and 11.1.13), and the state survives the CP process."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
import tty
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

    def at(self, line: str, timeout: float = 30.0) -> list[str]:
        """One command line written straight to the DTE's end (no gammu: a run of it costs about a second of its
        own waiting); the answer's lines up to its final result, the echo left out."""
        fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY)
        try:
            tty.setraw(fd)
            os.write(fd, line.encode() + b"\r")
            deadline = time.monotonic() + timeout
            buffer, lines = b"", []
            while True:
                while b"\r\n" in buffer:
                    raw, buffer = buffer.split(b"\r\n", 1)
                    text = raw.decode(errors="replace").strip()
                    if text and text != line:
                        lines.append(text)
                        if text in ("OK", "ERROR") or text.startswith("+CME ERROR"):
                            return lines
                left = deadline - time.monotonic()
                assert left > 0, f"no final result to {line}: {lines} {buffer!r}"
                ready, _, _ = select.select([fd], [], [], left)
                if ready:
                    buffer += os.read(fd, 4096)
        finally:
            os.close(fd)

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
    # three false PINs block it (TS 102 221 11.1.9): incorrect password twice, then SIM PUK required (27.007
    # 9.2.1); gammu's own false PIN is the test above
    assert phone.at("AT+CMEE=1") == ["OK"]
    answers = [phone.at('AT+CPIN="0000"') for _ in range(3)]
    assert answers == [["+CME ERROR: 16"], ["+CME ERROR: 16"], ["+CME ERROR: 12"]]
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
    assert phone.at('AT+CPIN="0000"') == ["ERROR"]  # +CMEE=0: a false PIN is the plain error
    assert phone.cp is not None
    phone.cp.kill()  # SIGKILL: no unwinding, no last save
    phone.cp.wait(10)
    card = SimCard(load_profile("pin"), state_path=phone.state)
    assert card.process(bytes.fromhex("0020000100")) == b"\x63\xc2"
