"""oFono sends and receives SMS through `bipsim cp --listen` and the CP's 27.005 command set: its phonesim modem
powered and online, org.ofono.MessageManager.SendMessage reaches the network's SMSC (oFono sends PDU mode +CMGS),
and an MT message injected at the SMSC raises MessageManager's IncomingMessage signal with its text and sender."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from bipsim.net.sms_pdu import SmsSubmit, decode_tpdu
from tests.conftest import require_tool
from tests.ofono_peer import MODEM, OfonoPeer

INTERFACE = "org.ofono.MessageManager"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _sms(port: int, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "bipsim", "sms", "--connect", f"127.0.0.1:{port}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_message_manager_sends_and_receives(tmp_path: Path) -> None:
    require_tool("dbus-monitor")
    sms_port = _free_port()
    with OfonoPeer(tmp_path, cp_args=["--sms-listen", f"127.0.0.1:{sms_port}"]) as peer:
        peer.power_on()
        peer.wait_for("the MessageManager", lambda: "org.ofono.MessageManager" in peer.interfaces())
        manager = peer.properties("org.ofono.MessageManager")
        assert manager["ServiceCenterAddress"] == "+441234567890"  # +CSCA?: the network's SMSC

        # MO: SendMessage -> +CMGS -> the SMSC
        (path,) = peer.call(
            "org.ofono.MessageManager", "SendMessage", "ss", "+447700900456", "hello from oFono"
        )
        assert path.startswith(MODEM)
        deadline = time.monotonic() + 60
        messages: list[dict[str, object]] = []
        while not messages:
            messages = json.loads(_sms(sms_port, "--json", "list-mo"))["messages"]
            assert time.monotonic() < deadline, peer.ofono_log()[-4000:]
            time.sleep(0.2)
        submit = decode_tpdu(bytes.fromhex(str(messages[0]["hex"])))
        assert isinstance(submit, SmsSubmit)
        assert submit.text == "hello from oFono" and str(submit.destination) == "+447700900456"

        # MT: injected at the SMSC, delivered to the CP, routed to oFono, which raises IncomingMessage
        signals = tmp_path / "signals.txt"
        with signals.open("w") as out:
            monitor = subprocess.Popen(
                ["dbus-monitor", "--address", peer.address, f"type='signal',interface='{INTERFACE}'"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            # dbus-monitor says it got its name (NameAcquired) once it listens: then the message may come
            peer.wait_for("dbus-monitor", lambda: "NameAcquired" in signals.read_text(errors="replace"))
            assert "delivered" in _sms(sms_port, "send-mt", "--from", "+447700900123", "hello, oFono")
            peer.wait_for(
                "IncomingMessage", lambda: "member=IncomingMessage" in signals.read_text(errors="replace")
            )
        finally:
            monitor.terminate()
            monitor.wait(10)
        log = peer.ofono_log()
    incoming = signals.read_text(errors="replace").split("member=IncomingMessage", 1)[1]
    strings = re.findall(r'string "([^"]*)"', incoming)
    assert strings[0] == "hello, oFono", incoming
    assert strings[strings.index("Sender") + 1] == "+447700900123", incoming
    # oFono drove PDU mode and acknowledged the +CMT (+CSMS=1, +CNMI <mt> 2, +CNMA with its report PDU)
    assert "AT+CMGF=0" in log and "AT+CMGS=" in log and "+CMT:" in log and "AT+CNMA=" in log
