"""A real AT client reads and sends SMS through the CP's 27.005 command set: Debian's gammu (an AT connection) against
`bipsim cp` on a `bipsim pty-pair` line, the network's SMSC driven through its control socket (`bipsim sms`).
gammu's `getsmsfolders`, `getallsms` (an MT message injected at the SMSC, stored on the card's EF_SMS) and
`sendsms TEXT` (the SMS-SUBMIT reaches the SMSC) must work as they do on a real modem."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bipsim.net.sms_pdu import SmsSubmit, decode_tpdu
from tests.cp_process import CpOnPty, gammurc


@pytest.fixture
def modem(tmp_path: Path) -> Iterator[CpOnPty]:
    """`bipsim pty-pair` linking A and B; `bipsim cp` on A with the SMSC's control socket on a free port."""
    with CpOnPty(tmp_path) as modem:
        yield modem


def _gammu(modem: CpOnPty, tmp_path: Path, *args: str) -> str:
    rc = gammurc(tmp_path, modem.device)
    result = subprocess.run(["gammu", "-c", str(rc), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert modem.cp is not None and modem.cp.poll() is None, "the CP died under gammu"
    return result.stdout


def _sms(modem: CpOnPty, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "bipsim", "sms", "--connect", modem.smsc, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.needs("gammu")
def test_gammu_sms_folders_read_and_send(modem: CpOnPty, tmp_path: Path) -> None:
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
