"""Voice call control without audio (issue 16 item 8, cp/voice_calls.py) driven by the network model: V.250 6.3.1
D, 6.3.5 A, 6.3.6 H, 6.3.8 S0; 27.007 6.5 +CHUP, 6.11 +CRC, 7.6 +CLIP, 7.18 +CLCC. Before, ATD<n>; ATA ATH and
+CLCC answered ERROR (ModemManager marked voice unsupported on ATH)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
import tty
from pathlib import Path

import pytest
import trio
import trio.testing

from bipsim.cp.network import RegStatus
from bipsim.cp.voice_calls import CALL_TRANSITIONS, RING_PERIOD, CallState, VoiceCalls
from bipsim.net.smsc import RequestError
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from tests.cp_process import CpOnPty
from tests.modem_harness import Modem, modem


def voice_of(m: Modem) -> VoiceCalls:
    found = [s for s in m.core.command_sets if isinstance(s, VoiceCalls)]
    assert found
    return found[0]


async def test_mobile_originated_call_and_hang_up() -> None:
    tracer = Tracer(keep=True)
    async with modem(tracer=tracer) as (m,):
        assert await m.dte.at("ATD+15551234;") == ["OK"]
        await m.dte.urcs()
        assert await m.dte.at("AT+CLCC") == ['+CLCC: 1,0,0,0,0,"+15551234",145', "OK"]
        assert await m.dte.at("AT+CIND?") == ["+CIND: 5,3,1,1,0,0,0,0", "OK"]
        assert await m.dte.at("ATH") == ["OK"]
        assert await m.dte.at("AT+CLCC") == ["OK"]
        states = [e.fields["state"] for e in tracer.events if e.kind == Kind.CALL_STATE]
        assert states == ["dialing", "alerting", "active", "ended"]
        (line, _) = await m.dte.at("AT+CEER")
        assert line == '+CEER: "Normal call clearing"'


async def test_busy_and_unanswered_numbers() -> None:
    async with modem() as (m,):
        voice = voice_of(m)
        voice.busy_numbers.add("5550000")
        voice.unanswered_numbers.add("5550001")
        assert await m.dte.at("ATD5550000;") == ["OK"]
        assert await m.dte.urcs(1) == ["BUSY"]
        assert await m.dte.at("ATD5550001;") == ["OK"]
        await m.dte.urcs()
        assert await m.dte.at("AT+CLCC") == ['+CLCC: 1,0,3,0,0,"5550001",129', "OK"]  # alerting
        assert await m.dte.at("AT+CHUP") == ["OK"]
        assert not voice.calls


async def test_dial_errors() -> None:
    async with modem() as (m,):
        assert await m.dte.at("ATD12x4;") == ["ERROR"]
        assert await m.dte.at("ATD;") == ["ERROR"]
        m.network.set_status(RegStatus.NOT_REGISTERED)
        assert await m.dte.at("ATD123;") == ["NO CARRIER"]


async def test_incoming_call_rings_with_clip_and_is_answered(autojump_clock: trio.testing.MockClock) -> None:
    async with modem(lines=2) as (m, other):
        assert await m.dte.at("AT+CLIP=1") == ["OK"]
        assert await other.dte.at("AT+CRC=1") == ["OK"]
        m.network.incoming_call("+4930123456")
        assert await m.dte.urcs(2) == ["RING", '+CLIP: "+4930123456",145']
        assert await other.dte.urcs(1) == ["+CRING: VOICE"]
        await trio.sleep(RING_PERIOD)
        assert await m.dte.urcs(2) == ["RING", '+CLIP: "+4930123456",145']
        assert await m.dte.at("AT+CLCC") == ['+CLCC: 1,1,4,0,0,"+4930123456",145', "OK"]
        assert await m.dte.at("ATA") == ["OK"]
        assert await m.dte.at("AT+CLCC") == ['+CLCC: 1,1,0,0,0,"+4930123456",145', "OK"]
        await trio.sleep(2 * RING_PERIOD)
        assert await m.dte.urcs() == []  # no more RING once answered
        await other.dte.urcs()
        assert voice_of(m).remote_hangup()
        assert await m.dte.urcs(1) == ["NO CARRIER"]
        # NO CARRIER is the answering line's: the other never had the call
        assert await other.dte.urcs() == []


async def test_a_call_hung_up_while_ringing_or_auto_answered_tells_only_its_line(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The far end gives up while the call still rings: nobody had it, so no NO CARRIER; a call S0 answered is
    that line's."""
    async with modem(lines=2) as (m, other):
        m.network.incoming_call("5551")
        assert await m.dte.urcs(1) == ["RING"]
        await other.dte.urcs()
        assert voice_of(m).remote_hangup()
        assert await m.dte.urcs() == [] and await other.dte.urcs() == []
        assert await other.dte.at("ATS0=1") == ["OK"]
        m.network.incoming_call("5552")
        assert await other.dte.urcs(1) == ["RING"]
        await m.dte.urcs()
        assert voice_of(m).remote_hangup()
        assert await other.dte.urcs(1) == ["NO CARRIER"]
        assert await m.dte.urcs() == []


async def test_auto_answer_after_s0_rings(autojump_clock: trio.testing.MockClock) -> None:
    """S0=2 (V.250 6.3.8): the ME answers itself at the second RING."""
    async with modem() as (m,):
        assert await m.dte.at("ATS0=2") == ["OK"]
        m.network.incoming_call("5551")
        await trio.sleep(RING_PERIOD + 0.1)
        assert await m.dte.urcs(2) == ["RING", "RING"]
        assert await m.dte.at("AT+CLCC") == ['+CLCC: 1,1,0,0,0,"5551",129', "OK"]


async def test_answer_without_a_call_is_no_carrier() -> None:
    async with modem() as (m,):
        assert await m.dte.at("ATA") == ["NO CARRIER"]
        assert await m.dte.at("ATH") == ["OK"]


async def test_waiting_call_behind_an_active_one() -> None:
    """A second incoming call while one is up is waiting (+CCWA, 7.12 form); ATA holds the first."""
    async with modem() as (m,):
        assert await m.dte.at("ATD555;") == ["OK"]
        await m.dte.urcs()
        m.network.incoming_call("666")
        assert await m.dte.urcs(1) == ['+CCWA: "666",129,1']
        assert await m.dte.at("ATA") == ["OK"]
        assert await m.dte.at("AT+CLCC") == [
            '+CLCC: 1,0,1,0,0,"555",129',
            '+CLCC: 2,1,0,0,0,"666",129',
            "OK",
        ]


async def test_losing_the_network_ends_calls() -> None:
    async with modem() as (m,):
        assert await m.dte.at("ATD555;") == ["OK"]
        await m.dte.urcs()
        m.network.set_status(RegStatus.NOT_REGISTERED)
        assert await m.dte.urcs(1) == ["NO CARRIER"]
        with pytest.raises(ValueError):
            m.network.incoming_call("777")


def test_every_state_can_end_and_ended_is_final() -> None:
    for state, targets in CALL_TRANSITIONS.items():
        assert (CallState.ENDED in targets) == (state is not CallState.ENDED)


def _read_until(fd: int, needle: bytes, deadline: float = 20) -> bytes:
    """What the CP wrote on the line up to and with `needle` (waits with a deadline)."""
    end = time.monotonic() + deadline
    data = b""
    while needle not in data:
        assert time.monotonic() < end, f"{needle!r} not on the line: {data!r}"
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            data += os.read(fd, 4096)
    return data


def test_bipsim_call_drives_a_running_cp(tmp_path: Path) -> None:
    """`bipsim call incoming/list/hangup` through the network's control socket of a `bipsim cp --sms-listen`
    process: the host on the line sees RING and +CLIP, answers with ATA, and gets NO CARRIER."""
    with CpOnPty(tmp_path) as line:
        connect = line.smsc
        fd = os.open(line.device, os.O_RDWR | os.O_NOCTTY)
        try:
            tty.setraw(fd)
            os.write(fd, b"ATE0+CLIP=1\r")
            _read_until(fd, b"OK\r\n")

            def bipsim_call(*args: str) -> str:
                result = subprocess.run(
                    [sys.executable, "-m", "bipsim", "call", "--connect", connect, *args],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert result.returncode == 0, result.stderr
                return result.stdout

            assert bipsim_call("incoming", "+4930123456") == "1 mt incoming +4930123456\n"
            assert b'RING\r\n\r\n+CLIP: "+4930123456",145' in _read_until(fd, b"+CLIP")
            os.write(fd, b"ATA\r")
            _read_until(fd, b"OK\r\n")
            assert bipsim_call("list") == "1 mt active +4930123456\n"
            assert bipsim_call("hangup", "1") == ""
            _read_until(fd, b"NO CARRIER")
            refused = subprocess.run(
                [sys.executable, "-m", "bipsim", "call", "--connect", connect, "hangup", "1"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert refused.returncode == 1 and "no such call" in refused.stderr
        finally:
            os.close(fd)


def test_call_help_explains_itself() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bipsim", "call", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "--sms-listen" in result.stdout and "incoming" in result.stdout


async def test_an_eighth_call_is_user_busy() -> None:
    """27.007 7.18 numbers calls 1..7: the network's offer of an eighth is refused (user busy)."""
    async with modem() as (m,):
        voice = voice_of(m)
        voice.unanswered_numbers.update(str(n) for n in range(7))
        for n in range(7):
            m.network.incoming_call(str(n))
        assert len(voice.calls) == 7
        with pytest.raises(ValueError, match="user busy"):
            m.network.incoming_call("8")
        with pytest.raises(RequestError, match="user busy"):
            voice._control_call({"op": "call", "from": "8"})
