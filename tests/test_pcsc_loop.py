"""The whole loop through PC/SC: `bipsim card serve --vpcd` -> a private pcscd -> `bipsim cp --card pcsc:...`.

Embodiment 2 runs with the CP's card behind pcscd and the OTA campaign lands on that card (its state file, written
by the card server, holds the applet and the new EF_SPN); a card server killed in the middle of a session is
reported by the CP in one line and a trace event, the CP answers AT meanwhile, and powers the card on again when
the card server is back. The transport's rules without pcscd are in tests/test_pcsc_card.py.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from bipsim.scenarios.base import check_ota_completed, check_steps
from bipsim.scenarios.embodiments import embodiment_config
from bipsim.scenarios.harness import EventQuery, Harness, run_processes
from bipsim.trace.kinds import Kind
from bipsim.uicc.profile import dump_profile, load_profile
from tests.pcsc_peer import PcscPeer, pcscd  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.needs("pcscd"), pytest.mark.slow]
READY_DEADLINE = 30.0  # seconds for a Python process to start and reach the reader on a loaded machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class CardServer:
    """`bipsim card serve --vpcd` as a process: the simulated card with `profile` and `state`, in the private
    pcscd's reader "Virtual PCD 00 00"."""

    def __init__(self, peer: PcscPeer, directory: Path, ota_port: int) -> None:
        self.peer = peer
        self.directory = directory
        self.profile = directory / "card-profile.toml"
        self.profile.write_text(dump_profile(load_profile().with_overrides(ota_port=ota_port)))
        self.state = directory / "card-state.json"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        trace = self.directory / f"card-{self.starts}.jsonl"
        log = (self.directory / "card.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bipsim", "card", "serve", "--vpcd", f"127.0.0.1:{self.peer.vpcd_port}"]
            + ["--profile", str(self.profile), "--state", str(self.state), "--trace", str(trace)],
            stdout=log,
            stderr=log,
            env=self.peer.env(),
        )
        # inserted: the card server traced its connection to vpcd (polled with a deadline)
        deadline = time.monotonic() + READY_DEADLINE
        while not any(obj.get("fields", {}).get("event") == "vpcd_connected" for obj in read_jsonl(trace)):
            assert self.process.poll() is None, (self.directory / "card.log").read_text()
            assert time.monotonic() < deadline, "the card server never reached the vpcd reader"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def read_jsonl(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written
    return out


@pytest.fixture
def card_server(pcscd: PcscPeer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CardServer]:  # noqa: F811
    # the harness's processes (the CP) reach the private pcscd through this variable
    monkeypatch.setenv("PCSCLITE_CSOCK_NAME", pcscd.socket)
    server = CardServer(pcscd, tmp_path, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def ota_port(server: CardServer) -> int:
    return load_profile(str(server.profile)).ota_port


@pytest.mark.parametrize("card", ["pcsc:0", "pcsc:Virtual PCD"])
def test_embodiment2_through_pcscd_applies_the_campaign_to_the_card(
    card: str, card_server: CardServer, tmp_path: Path
) -> None:
    config = embodiment_config(
        2,
        card=card,
        ota_listen=f"127.0.0.1:{ota_port(card_server)}",
        card_state=card_server.state,
        timeout=60.0,
    )
    run = run_processes(config, tmp_path / "run")
    check_ota_completed(run)  # the card server's state file: the applet installed, EF_SPN "BIPSIM-OTA"
    check_steps(run, 2)
    cp_apdus = [e for e in run.events if e.layer.value == "apdu" and e.src.value in ("cp", "uicc")]
    atr = [e for e in cp_apdus if e.kind == Kind.APDU_ATR]
    assert atr and atr[0].data == bytes.fromhex("3B9F96801FC78031A073BE21136743200718000001A5")
    # the card itself saw the same session: its own trace holds the CP's TERMINAL PROFILE and the FETCHes
    card_events = read_jsonl(card_server.directory / "card-1.jsonl")
    assert any(obj.get("kind") == Kind.CAT_TERMINAL_PROFILE for obj in card_events)
    assert sum(obj.get("kind") == Kind.CAT_PROACTIVE for obj in card_events) >= 5


def test_card_server_killed_mid_session_then_back(card_server: CardServer, tmp_path: Path) -> None:
    marks: dict[str, object] = {}

    async def during(harness: Harness) -> None:
        # the session is under way: the card's data went out through the AP proxy (a SEND DATA answered)
        sent = await harness.wait_for_event(
            "cp",
            EventQuery(Kind.CAT_TERMINAL_RESPONSE, lambda f: f.get("command") == "SEND DATA"),
            timeout=60,
        )
        assert sent is not None, "the session never sent data"
        await trio.to_thread.run_sync(card_server.kill)
        removed = await harness.wait_for_event(
            "cp", EventQuery(Kind.APP_EVENT, lambda f: f.get("event") == "card_removed"), timeout=60
        )
        marks["removed"] = removed
        await trio.to_thread.run_sync(card_server.start)
        marks["inserted"] = await harness.wait_for_event(
            "cp", EventQuery(Kind.APP_EVENT, lambda f: f.get("event") == "card_inserted"), timeout=60
        )

    config = embodiment_config(
        2,
        card="pcsc:0",
        ota_listen=f"127.0.0.1:{ota_port(card_server)}",
        card_state=card_server.state,
        timeout=90.0,
        during=during,
    )
    run = run_processes(config, tmp_path / "run")
    removed = marks.get("removed")
    assert isinstance(removed, dict), f"the CP never reported the card gone ({run.explain()})"
    # one line, naming the reader, says why (the transport's CardRemoved reason)
    reason = str(removed.get("fields", {}).get("reason", ""))  # type: ignore[union-attr]
    assert "Virtual PCD 00 00" in reason and "\n" not in reason, reason
    assert removed.get("error") is True
    assert isinstance(marks.get("inserted"), dict), f"the card never came back ({run.explain()})"
    # powered on again: a second ATR through the reader
    atrs = [e for e in run.events if e.kind == Kind.APDU_ATR and e.src.value == "uicc"]
    assert len(atrs) >= 2
    # and the campaign went on with the card that came back, to its end (the CP's --once session ended)
    check_ota_completed(run)
