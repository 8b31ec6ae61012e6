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
from typing import Any

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
ATR = "3B9F96801FC78031A073BE21136743200718000001A5"  # the simulated card's (uicc/card.py)


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


def read_jsonl(path: Path) -> list[dict[str, Any]]:
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


# the reader by number here; by name ("pcsc:Virtual PCD") in the command-line run at the end of this file
@pytest.mark.parametrize("card", ["pcsc:0"])
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
    assert atr and atr[0].data == bytes.fromhex(ATR)
    # the card itself saw the same session: its own trace holds the CP's TERMINAL PROFILE and the FETCHes
    card_events = read_jsonl(card_server.directory / "card-1.jsonl")
    assert any(obj.get("kind") == Kind.CAT_TERMINAL_PROFILE for obj in card_events)
    assert sum(obj.get("kind") == Kind.CAT_PROACTIVE for obj in card_events) >= 5


def test_card_server_killed_mid_session_then_back(card_server: CardServer, tmp_path: Path) -> None:
    """The card server (the card behind pcscd) is killed once the session has sent data and started again once the
    CP said the card was gone; the campaign runs to its end on the card that came back. The server's bytes are held
    until the card is out (ServerLink in front of the server at the card's own address), so the power loss lands
    before any admin script ran: a script the card ran but could not answer is sent again after the restart, and a
    LOAD repeated is refused (GP 6985: the load file is already present), which this test does not exercise."""
    marks: dict[str, object] = {}

    async def during(harness: Harness) -> None:
        assert harness.link is not None
        harness.link.hold_at(0)  # the card's first SEND DATA (its ClientHello) gets no answer before the kill
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
        await harness.wait_for_event(
            "cp", EventQuery(Kind.APP_EVENT, lambda f: f.get("event") == "channel_ended"), timeout=60
        )
        harness.link.hold_at(None)
        await trio.to_thread.run_sync(card_server.start)
        marks["inserted"] = await harness.wait_for_event(
            "cp", EventQuery(Kind.APP_EVENT, lambda f: f.get("event") == "card_inserted"), timeout=60
        )

    config = embodiment_config(
        2,
        card="pcsc:0",
        ota_listen=f"127.0.0.1:{ota_port(card_server)}",
        card_state=card_server.state,
        server_link=True,
        timeout=90.0,
        during=during,
    )
    run = run_processes(config, tmp_path / "run")
    removed = marks.get("removed")
    assert isinstance(removed, dict), f"the CP never reported the card gone ({run.explain()})"
    # one line, naming the reader, says why (the transport's CardRemoved reason)
    reason = str(removed.get("fields", {}).get("reason", ""))
    # (a removal seen at a power-on names the spec: the reader is looked up again there)
    assert ("Virtual PCD 00 00" in reason or "pcsc:0" in reason) and "\n" not in reason, reason
    assert removed.get("error") is True
    assert isinstance(marks.get("inserted"), dict), f"the card never came back ({run.explain()})"
    # powered on again: a second ATR through the reader
    atrs = [e for e in run.events if e.kind == Kind.APDU_ATR and e.src.value == "uicc"]
    assert len(atrs) >= 2, run.explain()
    # and the campaign went on with the card that came back, to its end (the CP's --once session ended)
    check_ota_completed(run)


class AtPort:
    """The DTE end of a pty whose other end is the CP's line: one AT command at a time, its lines back."""

    def __init__(self) -> None:
        import os
        import tty

        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave  # kept open so the line does not hang up before the CP opens it
        self.buffer = b""

    def command(self, line: str, timeout: float = 30.0) -> list[str]:
        """Sends `line` and returns the answer's lines up to its final result (OK, ERROR, +CME ERROR)."""
        import os
        import select

        os.write(self.master, line.encode() + b"\r")
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while True:
            while b"\r\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\r\n", 1)
                text = raw.decode(errors="replace").strip()
                if not text or text == line:
                    continue  # the frame's blank lines, the echo
                lines.append(text)
                if text in ("OK", "ERROR") or text.startswith("+CME ERROR"):
                    return lines
            left = deadline - time.monotonic()
            assert left > 0, f"no final result to {line} (got {lines}, {self.buffer!r})"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                self.buffer += os.read(self.master, 4096)

    def close(self) -> None:
        import os

        os.close(self.master)
        os.close(self._slave)


def traced(trace: Path, event: str) -> dict[str, Any]:
    """The first app.event `event` of a running process's trace, polled until it has been written."""
    deadline = time.monotonic() + READY_DEADLINE
    while True:
        for obj in read_jsonl(trace):
            fields = obj.get("fields")
            if isinstance(fields, dict) and fields.get("event") == event:
                return obj
        assert time.monotonic() < deadline, f"{trace.name} never traced {event}"
        time.sleep(0.05)


def test_cp_answers_at_while_the_pcsc_card_is_gone(card_server: CardServer, tmp_path: Path) -> None:
    port = AtPort()
    trace = tmp_path / "cp.jsonl"
    cp = subprocess.Popen(
        [sys.executable, "-m", "bipsim", "cp", "--port", port.path, "--card", "pcsc:Virtual PCD"]
        + ["--trace", str(trace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=card_server.peer.env(),
    )
    try:
        assert port.command("AT", timeout=READY_DEADLINE) == ["OK"]
        assert port.command("AT+CMEE=1") == ["OK"]  # numeric +CME ERROR codes
        assert port.command("AT+CPIN?") == ["+CPIN: READY", "OK"]
        assert port.command("AT+CIMI") == ["001010123456789", "OK"]  # read from the card behind pcscd
        card_server.kill()
        # the next SIM command finds the card gone; the CP says so and goes on answering
        assert port.command("AT+CIMI")[-1] == "+CME ERROR: 10"
        assert port.command("AT+CPIN?") == ["+CME ERROR: 10"]
        assert port.command("AT+CSQ")[-1] == "OK"  # not a SIM command: answered as ever
        removed = traced(trace, "card_removed")
        assert removed.get("error") is True and "Virtual PCD 00 00" in str(removed.get("fields"))
        card_server.start()
        deadline = time.monotonic() + 60
        while port.command("AT+CPIN?") != ["+CPIN: READY", "OK"]:  # powered on again by the CP's retries
            assert time.monotonic() < deadline, "the CP never powered the card on again"
            time.sleep(0.2)
        assert port.command("AT+CIMI") == ["001010123456789", "OK"]
        inserted = traced(trace, "card_inserted")
        assert inserted.get("fields", {}).get("atr") == ATR
    finally:
        cp.terminate()
        output = cp.communicate(timeout=10)[0].decode(errors="replace")
        port.close()
    assert "Traceback" not in output, output
    # and the user reads each change in one line
    assert [line for line in output.splitlines() if "slot 1: card" in line] == [
        f"bipsim cp: slot 1: card removed ({removed['fields']['reason']})",
        f"bipsim cp: slot 1: card inserted ({inserted['fields']['reason']})",
    ], output


class BadVpcdCard:
    """A vpcd card (a TCP client of the reader's port, 2-byte length framing) that answers the ATR properly and
    every APDU badly: `garbage` with one byte (no status word), `mute` not at all."""

    def __init__(self, port: int, mode: str) -> None:
        import threading

        self.mode = mode
        self.apdus = 0
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        buffer = b""
        while data := self._receive():
            buffer += data
            while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2], "big"):
                length = int.from_bytes(buffer[:2], "big")
                message, buffer = buffer[2 : 2 + length], buffer[2 + length :]
                if length == 1 and message[0] == 4:  # get ATR
                    self._send(len(bytes.fromhex(ATR)).to_bytes(2, "big") + bytes.fromhex(ATR))
                elif length > 1:
                    self.apdus += 1
                    if self.mode == "garbage":
                        self._send(b"\x00\x01\x90")

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass  # the test closed the card (its end) while pcscd still asked: that card is gone

    def _receive(self) -> bytes:
        try:
            return self.sock.recv(4096)
        except OSError:
            return b""

    def close(self) -> None:
        self.sock.close()


def inserted(peer: PcscPeer, card: BadVpcdCard) -> None:
    """Waits until pcscd has asked the card for its ATR (it is inserted), with a deadline."""
    deadline = time.monotonic() + READY_DEADLINE
    while "Card ATR:" not in peer.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "pcscd never saw the card"
        time.sleep(0.05)


def test_a_card_that_answers_garbage_is_a_card_error_not_a_crash(pcscd: PcscPeer, tmp_path: Path) -> None:  # noqa: F811
    card = BadVpcdCard(pcscd.vpcd_port, "garbage")
    inserted(pcscd, card)
    port = AtPort()
    trace = tmp_path / "cp.jsonl"
    cp = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bipsim",
            "cp",
            "--port",
            port.path,
            "--card",
            "pcsc:0",
            "--trace",
            str(trace),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=pcscd.env(),
    )
    try:
        assert port.command("AT", timeout=READY_DEADLINE) == ["OK"]
        assert port.command("AT+CMEE=1") == ["OK"]
        # a one-byte answer is the card's 6F 00 (technical problem): +CIMI fails, the card stays in its slot
        assert port.command("AT+CIMI")[-1].startswith("+CME ERROR: ")
        assert card.apdus >= 1
        assert port.command("AT+CSQ")[-1] == "OK"
        deadline = time.monotonic() + READY_DEADLINE
        while not any(
            o.get("kind") == Kind.APP_ERROR and o.get("fields", {}).get("where") == "card"
            for o in read_jsonl(trace)
        ):
            assert time.monotonic() < deadline, "no app.error event for the card's answer"
            time.sleep(0.05)
        assert not any(o.get("fields", {}).get("event") == "card_removed" for o in read_jsonl(trace))
    finally:
        cp.terminate()
        output = cp.communicate(timeout=10)[0].decode(errors="replace")
        port.close()
        card.close()
    assert "Traceback" not in output, output


MUTE_SCRIPT = """
import sys, trio
from bipsim.uicc.pcsc_card import PcscCard, ReaderChoice
from bipsim.uicc.transport import CardRemoved

async def main():
    card = PcscCard(ReaderChoice(0), timeout=2.0)
    print("atr", (await card.power_on()).hex().upper(), flush=True)
    try:
        await card.transmit(bytes.fromhex("80F2000C00"))
    except CardRemoved as exc:
        print("removed:", exc.reason)

trio.run(main)
"""


def test_a_card_that_answers_nothing_is_given_up_at_the_deadline(pcscd: PcscPeer) -> None:  # noqa: F811
    card = BadVpcdCard(pcscd.vpcd_port, "mute")
    inserted(pcscd, card)
    try:
        # in a process of its own: libpcsclite reads PCSCLITE_CSOCK_NAME once per process
        result = subprocess.run(
            [sys.executable, "-c", MUTE_SCRIPT], capture_output=True, text=True, timeout=60, env=pcscd.env()
        )
    finally:
        card.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"atr {ATR}",
        "removed: Virtual PCD 00 00: APDU 80F2000C: no answer within 2 s",
    ]
    assert card.apdus == 1


def test_scenario_run_with_a_pcsc_card_from_the_command_line(
    pcscd: PcscPeer,  # noqa: F811
    tmp_path: Path,
) -> None:
    # as a user runs it, with a card whose profile names its own OTA server's address: a free port here, never
    # the built-in profile's 127.0.0.1:4443, which another test's process may hold at the same time
    server = CardServer(pcscd, tmp_path, free_port())
    server.start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "bipsim", "scenario", "run", "embodiment2", "--card", "pcsc:Virtual PCD"]
            + ["--ota-listen", f"127.0.0.1:{ota_port(server)}", "--trace", str(tmp_path / "e2.jsonl")],
            capture_output=True,
            text=True,
            timeout=120,
            env=pcscd.env(),
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "scenario embodiment2: passed" in result.stdout
    assert "card pcsc:Virtual PCD: checked by its status words, not its state" in result.stdout
    # and the card server's own state file holds what the campaign wrote
    state = json.loads(server.state.read_text())
    assert "a0000005590010ff01" in state["gp"]["applications"]
    steps = {obj.get("step") for obj in read_jsonl(tmp_path / "e2.jsonl")}
    assert {"S701", "S718"} <= steps
