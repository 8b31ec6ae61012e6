"""After a SIM data sync (ap/sync/service.py; docs/protocols.md, "SIM data sync"), a real AT client reads the card
and finds what the merge says: Debian's gammu (an AT connection) against `bipsim cp` on a `bipsim pty-pair` line,
holding the card the sync wrote (its profile and state file). `gammu getallmemory SM` lists the merged contacts with
their names and numbers (issue 20, test 3), `gammu getallsms` the merged messages on EF_SMS with their read/unread
status (test 6)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from bipsim.ap.sync.merge import Contact, Message, MessageStatus
from bipsim.ap.sync.service import Trigger, TriggerKind
from tests.cp_process import gammurc
from tests.test_gammu import _stop
from tests.test_sync_service import (
    M_IN,
    M_LOCAL,
    A,
    B,
    C,
    local_contacts,
    rig,
    seed_local_and_server,
    sms_item,
)


def _sync(tmp_path: Path) -> set[object]:
    """A SIM holding contacts A and B and an unread message inserted into a terminal whose store and server hold
    contact C and a read message: one cycle. The merged records; the card's files are in tmp_path/sim1.*."""

    async def run() -> set[object]:
        async with rig(tmp_path, [A, B], None, sms1=(sms_item(M_IN),)) as r:
            await seed_local_and_server(r, [C, M_LOCAL])
            report = await r.service.cycle(Trigger(TriggerKind.SIM_INSERTED, "slot 1"))
            assert report.ran, report.aborted
            return local_contacts(r)

    return trio.run(run)


@pytest.fixture
def synced_card(tmp_path: Path) -> Iterator[tuple[Path, set[object]]]:
    """The sync, then `bipsim cp` with the synced card on side A of a pty pair; yields gammu's config for side B
    and the merged records."""
    merged = _sync(tmp_path)
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
                str(tmp_path / "sim1.toml"),
                "--state",
                str(tmp_path / "sim1.state.json"),
                "--sms-listen",
                "127.0.0.1:0",
            ],
            stdout=subprocess.PIPE,
            stderr=errors.open("wb"),
        )
        assert cp.stdout is not None
        line = cp.stdout.readline().decode()
        assert "sms listening on" in line, line + errors.read_text(errors="replace")
        yield gammurc(tmp_path, side_b), merged
        assert cp.poll() is None, "the CP died under gammu"
    finally:
        if cp is not None:
            _stop(cp)
        _stop(pair)


def _gammu(rc: Path, *args: str) -> str:
    result = subprocess.run(["gammu", "-c", str(rc), *args], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


GAMMU_STATUS = {
    MessageStatus.REC_UNREAD: "UnRead",
    MessageStatus.REC_READ: "Read",
    MessageStatus.STO_SENT: "Sent",
    MessageStatus.STO_UNSENT: "UnSent",
}


@pytest.mark.needs("gammu")
def test_gammu_lists_the_merged_contacts_and_messages(synced_card: tuple[Path, set[object]]) -> None:
    rc, merged = synced_card
    contacts = {record for record in merged if isinstance(record, Contact)}
    messages = {record for record in merged if isinstance(record, Message)}
    assert contacts == {A, B, C} and messages == {M_IN, M_LOCAL}

    out = _gammu(rc, "getallmemory", "SM")
    found = re.findall(r'General number\s*: "([^"]*)"\s*\nName\s*: "([^"]*)"', out)
    assert sorted((name, number) for number, name in found) == sorted((c.name, c.number) for c in contacts), (
        out
    )

    out = _gammu(rc, "getallsms")
    listed = set()
    for block in re.split(r"\n(?=Location \d+)", out):
        number = re.search(r'Remote number\s*:\s*"([^"]*)"', block)
        status = re.search(r"Status\s*:\s*(\w+)", block)
        if number and status:
            text = next(line for line in block[status.end() :].splitlines() if line.strip()).strip()
            listed.add((number.group(1), status.group(1), text))
    assert listed == {(m.address, GAMMU_STATUS[m.status], m.text) for m in messages}, out
    assert "SIM memory" in out, out
