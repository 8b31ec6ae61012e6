"""`bipsim cp` and `bipsim ap` as processes on their serial line: a line that is not there at start is one clear
error line and a non-zero exit (unless --wait-for-line), SIGTERM ends a running CP cleanly with its trace complete,
and a line that goes away after it was opened is waited for, said once. Real processes and ptys.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from bipsim.cp.modem import LineOpener, LineUnavailable


def bipsim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bipsim", *args], capture_output=True, text=True, timeout=60)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["cp", "ap"])
def test_a_line_that_is_not_there_is_one_line_and_a_non_zero_exit(command: str, tmp_path: Path) -> None:
    result = bipsim(command, "--port", str(tmp_path / "nonexistent"))
    assert result.returncode != 0
    line = error_line(result)
    assert "nonexistent" in line and "no such serial line" in line and "--wait-for-line" in line


@pytest.mark.parametrize("command", ["cp", "ap"])
@pytest.mark.parametrize(("kind", "reason"), [("directory", "Is a directory"), ("file", "not a serial line")])
def test_something_that_is_not_a_serial_line_is_one_clear_line(
    command: str, kind: str, reason: str, tmp_path: Path
) -> None:
    path = tmp_path / kind
    if kind == "directory":
        path.mkdir()
    else:
        path.write_text("plain file\n")
    result = bipsim(command, "--port", str(path))
    assert result.returncode != 0
    line = error_line(result)
    assert str(path) in line and reason in line


@pytest.mark.parametrize("command", ["cp", "ap"])
def test_wait_for_line_is_offered_in_help(command: str) -> None:
    from click.testing import CliRunner

    from bipsim.cli import cli

    result = CliRunner().invoke(cli, [command, "--help"])  # --help ends at parsing: no process needed
    assert result.exit_code == 0 and "--wait-for-line" in result.output


def _wait_for(predicate: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sigterm_ends_a_running_cp_with_exit_0_and_a_complete_trace(tmp_path: Path) -> None:
    master, slave = os.openpty()
    trace = tmp_path / "cp.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "bipsim", "cp", "--port", os.ttyname(slave), "--trace", str(trace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        answer = b""

        def answered() -> bool:
            nonlocal answer
            os.write(master, b"AT\r")
            time.sleep(0.2)
            os.set_blocking(master, False)
            try:
                answer += os.read(master, 1024)
            except BlockingIOError:
                pass
            return b"OK" in answer

        _wait_for(answered, "the CP's OK to AT")  # it is up and serving the line
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
        os.close(slave)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    events = [json.loads(line) for line in trace.read_text().splitlines()]  # every line is whole JSON
    assert events and any("AT" in str(event.get("summary", "")) for event in events)


def test_wait_for_line_waits_says_so_once_and_sigterm_ends_it(tmp_path: Path) -> None:
    later = tmp_path / "later"
    process = subprocess.Popen(
        [sys.executable, "-m", "bipsim", "cp", "--port", str(later), "--wait-for-line"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    master, slave = os.openpty()
    try:
        assert process.stderr is not None
        first = process.stderr.readline()  # the CP is waiting now (and says so)
        later.symlink_to(os.ttyname(slave))  # the adapter is plugged in: a retry finds it
        back = process.stderr.readline()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
        os.close(slave)
    assert process.returncode == 0
    # said once however many retries it took (each REOPEN_INTERVAL; counted in the test below), then once back
    assert (first + back + stderr).strip().splitlines() == [
        f"bipsim cp: serial line {later} is not there (no such serial line); waiting for it",
        f"bipsim cp: serial line {later} is back",
    ]


async def test_a_line_that_goes_away_is_waited_for_and_said_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    master, slave = os.openpty()
    link = tmp_path / "line"
    said: list[str] = []
    opener = LineOpener(str(link), 115200, who="bipsim cp", notice=said.append)
    try:
        with pytest.raises(LineUnavailable) as caught:
            await opener.open()  # not there at start: no waiting without --wait-for-line
        assert caught.value.absent
        link.symlink_to(os.ttyname(slave))
        line = await opener.open()
        await line.aclose()
        link.unlink()  # the adapter is unplugged

        async def replug() -> None:
            await trio.sleep(30)  # 150 retry intervals
            link.symlink_to(os.ttyname(slave))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(replug)
            line = await opener.open()
            await line.aclose()
        assert said == [
            f"bipsim cp: serial line {link} went away; waiting for it",
            f"bipsim cp: serial line {link} is back",
        ]
        assert opener.opened == 2
    finally:
        os.close(master)
        os.close(slave)


# --- the AP's RIL and the card starting: %GETNET must not depend on who came first ------------------------------


class StartingModem:
    """DLC 1 of a modem whose card answers +CIMI with the given CME codes first (14: SIM busy, 13: SIM failure),
    then with the IMSI."""

    def __init__(self, stream: trio.abc.Stream, failures: list[int]) -> None:
        from bipsim.link.at_server import AtServer

        self.server = AtServer(stream, echo=False)
        self.server.cmee = 1
        self.failures = list(failures)
        self.cimi_seen = 0
        self.server.register("+CIMI", self.cimi)
        self.server.register("+CEREG", self.cereg)

    async def cimi(self, request: object) -> list[str] | None:
        from bipsim.link.at_server import CmeError

        self.cimi_seen += 1
        if self.failures:
            raise CmeError(self.failures.pop(0))
        return ["001010123456789"]

    async def cereg(self, request: object) -> list[str] | None:
        return ["+CEREG: 1,1"]


@pytest.mark.parametrize(
    ("failures", "at_start"),
    [([14, 14, 14], True), ([13], False), ([14, 13], False)],
    ids=["sim-busy-retried", "failed-then-read-for-getnet", "busy-then-failed-then-read-for-getnet"],
)
async def test_the_aps_getnet_gets_the_imsi_whether_or_not_the_start_up_cimi_did(
    failures: list[int], at_start: bool, autojump_clock: trio.testing.MockClock
) -> None:
    """The AP reads the IMSI with +CIMI once CMUX is up; the CP powers its card at about the same time. A "SIM busy"
    answer (27.007: transient) is retried; any other failure leaves the IMSI to be read when the CP's %GETNET asks
    for the APN (the card is up then: it sent OPEN CHANNEL). %GETNET never answers +CME ERROR: 30 for it."""
    from bipsim.ap.apn_db import ApnDatabase
    from bipsim.ap.network import ApNetwork
    from bipsim.ap.proxy import ProxyService
    from bipsim.ap.ril import Ril
    from bipsim.link.at_chat import AtChat
    from bipsim.link.at_syntax import parse_line

    ap_end, modem_end = trio.testing.memory_stream_pair()
    modem = StartingModem(modem_end, failures)
    chat = AtChat(ap_end)
    ril = Ril(chat)
    proxy = ProxyService(ApNetwork(), ApnDatabase.load(), ril.read_imsi)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(modem.server.run)
        nursery.start_soon(chat.run)
        nursery.start_soon(ril.run)
        await ril.ready.wait()
        assert (ril.imsi_value is not None) == at_start
        (request,) = parse_line("AT%GETNET=1,3")
        proxy.server = modem.server  # getnet names its answer's patent step on the server it answers on
        lines = await proxy.getnet(request)
        assert lines is not None and lines[0].startswith("%NETPAR: 1,")
        assert ril.imsi_value == "001010123456789"
        assert modem.cimi_seen == len(failures) + 1
        nursery.cancel_scope.cancel()


# --- a line session that fails is traced and the line served again, never the end of the CP -----------------------


def _read_within(fd: int, timeout: float) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 1024) if ready else b""


async def test_a_line_session_that_raises_is_an_app_error_and_the_line_is_served_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bipsim.cp import line_service
    from bipsim.cp.modem import Modem, ModemOptions
    from bipsim.trace.recorder import Tracer
    from bipsim.uicc.card import SimCard
    from bipsim.uicc.profile import load_profile
    from bipsim.uicc.sim_transport import SimulatedCard

    serve = line_service.LineService._serve
    calls: list[int] = []

    async def first_one_fails(self: line_service.LineService) -> None:
        calls.append(self.count)
        if len(calls) == 1:
            raise RuntimeError("a bug in the line's session")
        await serve(self)

    monkeypatch.setattr(line_service.LineService, "_serve", first_one_fails)
    master, slave = os.openpty()
    tracer = Tracer(keep=True)
    modem = Modem(ModemOptions(os.ttyname(slave)), SimulatedCard(SimCard(load_profile())), tracer=tracer)
    try:
        await modem.open_line()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(modem._line_loop)
            answer = b""
            with trio.fail_after(20):
                while b"OK" not in answer:  # the second session answers
                    await trio.to_thread.run_sync(os.write, master, b"AT\r")
                    answer += await trio.to_thread.run_sync(_read_within, master, 0.5)
            nursery.cancel_scope.cancel()
    finally:
        os.close(master)
        os.close(slave)
    assert calls[:2] == [1, 2]
    (error,) = [e for e in tracer.events if e.kind == "app.error"]
    assert error.fields == {"where": "line session", "error": 'RuntimeError("a bug in the line\'s session")'}
    lines = [(e.kind, e.fields) for e in tracer.events if e.kind.startswith("line.")]
    port = modem.options.port
    assert lines[:3] == [
        ("line.open", {"port": port, "count": 1}),
        ("line.closed", {"port": port, "count": 1, "reason": "failed"}),
        ("line.reopened", {"port": port, "count": 2}),
    ]
