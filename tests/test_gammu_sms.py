"""A real AT client reads and sends SMS through the CP's 27.005 command set: Debian's gammu (connection = at) against
`bipsim cp` on a `bipsim pty-pair` line, the network's SMSC driven through its control socket (`bipsim sms`).
gammu's `getsmsfolders`, `getallsms` (an MT message injected at the SMSC, stored on the card's EF_SMS) and
`sendsms TEXT` (the SMS-SUBMIT reaches the SMSC) must work as they do on a real modem."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bipsim.net.sms_pdu import SmsSubmit, decode_tpdu


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Modem:
    device: Path  # the DTE's end of the line
    smsc: str  # HOST:PORT of the SMSC's control socket
    cp: subprocess.Popen[bytes]
    trace: Path


@pytest.fixture
def modem(tmp_path: Path) -> Iterator[Modem]:
    """`bipsim pty-pair` linking A and B; `bipsim cp` on A with the SMSC's control socket on a free port."""
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
        trace = tmp_path / "cp.jsonl"
        cp = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bipsim",
                "cp",
                "--port",
                str(side_a),
                "--sms-listen",
                "127.0.0.1:0",
                "--trace",
                str(trace),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert cp.stdout is not None
        line = cp.stdout.readline().decode()  # the CP says where the SMSC listens once it does
        match = re.search(r"sms listening on (\S+)", line)
        assert match, line + (cp.stderr.read().decode() if cp.poll() is not None and cp.stderr else "")
        yield Modem(side_b, match.group(1), cp, trace)
    finally:
        if cp is not None:
            _stop(cp)
        _stop(pair)


def _gammu(modem: Modem, tmp_path: Path, *args: str) -> str:
    rc = tmp_path / "gammurc"
    rc.write_text(
        f"[gammu]\ndevice = {modem.device}\nconnection = at\nlogfile = {tmp_path / 'gammu.log'}\n"
        "logformat = textall\n"
    )
    result = subprocess.run(["gammu", "-c", str(rc), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert modem.cp.poll() is None, "the CP died under gammu"
    return result.stdout


def _sms(modem: Modem, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "bipsim", "sms", "--connect", modem.smsc, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.needs("gammu")
def test_gammu_sms_folders_read_and_send(modem: Modem, tmp_path: Path) -> None:
    # the folders: an inbox and an outbox for each storage +CPMS=? offers (SM on the card, ME in the modem)
    folders = _gammu(modem, tmp_path, "getsmsfolders")
    assert re.search(r"Inbox.*SIM memory", folders) and re.search(r"Outbox.*SIM memory", folders), folders
    assert re.search(r"Inbox.*phone memory", folders), folders

    # an MT message injected at the network's SMSC is delivered to the CP, stored on the card, listed by gammu
    delivered = _sms(modem, "send-mt", "--from", "+447700900123", "Hello, gammu: 27.005 works")
    assert "delivered" in delivered, delivered
    listing = _gammu(modem, tmp_path, "getallsms")
    assert "Hello, gammu: 27.005 works" in listing, listing
    assert re.search(r'Remote number\s*:\s*"\+447700900123"', listing), listing
    assert "SIM memory" in listing and "1 SMS parts in 1 SMS sequences" in listing, listing
    # and gammu deletes it (+CMGD): the card's record is free again
    _gammu(modem, tmp_path, "deletesms", "1", "1")
    assert "Hello, gammu" not in _gammu(modem, tmp_path, "getallsms")

    # gammu's MO message reaches the SMSC, with the TP-MR gammu was told
    sent = _gammu(modem, tmp_path, "sendsms", "TEXT", "+447700900456", "-text", "hello from gammu")
    reference = re.search(r"message reference=(\d+)", sent)
    assert reference, sent
    messages = json.loads(_sms(modem, "--json", "list-mo"))["messages"]
    assert len(messages) == 1, messages
    submit = decode_tpdu(bytes.fromhex(messages[0]["hex"]))
    assert isinstance(submit, SmsSubmit)
    assert submit.text == "hello from gammu" and str(submit.destination) == "+447700900456"
    assert submit.mr == int(reference.group(1))

    # the CP traced both directions and refused nothing gammu sent
    kinds = [json.loads(line).get("kind") for line in modem.trace.read_text().splitlines() if line.strip()]
    assert "sms.deliver" in kinds and "sms.submit" in kinds
    assert "sms.error" not in kinds
    log = (tmp_path / "gammu.log").read_text(errors="replace")
    assert '"AT+CMGS=' in log and "+CMS ERROR" not in log
