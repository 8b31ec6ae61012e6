"""gammu as a host (issue 16, "Real peers"): `--identify`, `networkinfo` (needs +CGATT, 27.007 10.1.9), `monitor 1`
(+CBC, +CSQ, +CREG/+CGREG, +CPMS...), `getdatetime` (+CCLK, 8.15) and `battery` (gammu's batterycharge: +CBC, 8.4)
against `bipsim cp` on a `bipsim pty-pair` line. What gammu prints must be what the CP answered (its trace)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from bipsim.cp.commands import IMEI, MANUFACTURER
from bipsim.cp.network import NetworkConfig
from tests.cp_process import CpOnPty, gammurc

pytestmark = pytest.mark.needs("gammu")


class Host:
    def __init__(self, device: Path, tmp: Path, cp: subprocess.Popen[bytes]) -> None:
        self.device, self.tmp, self.cp = device, tmp, cp
        self.rc = gammurc(tmp, device)
        self.log = tmp / "gammu.log"

    def gammu(self, *args: str) -> str:
        result = subprocess.run(
            ["gammu", "-c", str(self.rc), *args], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert self.cp.poll() is None, "the CP died under gammu"
        log = self.log.read_text(errors="replace")
        assert "No response" not in log and "TIMEOUT" not in log
        return result.stdout

    def answers(self, prefix: str) -> list[str]:
        """The CP's answer lines starting with `prefix`, as gammu's log (textall) recorded them: gammu logs each
        answer line it received as `<n> "<line>"`."""
        found = re.findall(r'^\d+ "(.*)"$', self.log.read_text(errors="replace"), re.MULTILINE)
        return [line for line in found if line.startswith(prefix)]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    tmp = tmp_path_factory.mktemp("gammu_host")
    with CpOnPty(tmp) as modem:
        assert modem.cp is not None
        yield Host(modem.device, tmp, modem.cp)


def _fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


def test_identify(host: Host) -> None:
    fields = _fields(host.gammu("--identify"))
    assert fields["Manufacturer"] == MANUFACTURER and fields["IMEI"] == IMEI


def test_networkinfo(host: Host) -> None:
    """+CGATT was the one command networkinfo lacked; the operator and the attach state as the CP says."""
    out = host.gammu("networkinfo")
    fields = _fields(out)
    config = NetworkConfig()
    assert fields["Network state"] == "home network"
    assert fields["Network"].startswith(f"{config.mcc} {config.mnc}")
    assert fields["Name in phone"] == f'"{config.operator}"'
    assert fields["GPRS"] == "attached"
    assert '"AT+CGATT?"' in host.log.read_text(errors="replace")


def test_monitor_once(host: Host) -> None:
    fields = _fields(host.gammu("monitor", "1"))
    assert fields["Battery level"] == "100 percent"
    assert fields["Signal strength"] == f"{-113 + 2 * NetworkConfig().rssi} dBm"
    assert fields["Network state"] == "home network"
    assert fields["GPRS"] == "attached"


def test_getdatetime_is_the_cps_clock(host: Host) -> None:
    out = host.gammu("getdatetime")
    match = re.search(r"Phone time is (.+)", out)
    assert match, out
    shown = datetime.strptime(match.group(1).strip(), "%a %b %d %H:%M:%S %Y")
    (answer,) = host.answers("+CCLK:")[-1:]
    clock = datetime.strptime(answer[len('+CCLK: "') : len('+CCLK: "') + 17], "%y/%m/%d,%H:%M:%S")
    assert shown == clock


def test_battery(host: Host) -> None:
    fields = _fields(host.gammu("battery"))
    assert fields["Battery level"] == "100 percent"
    assert fields["Charge state"] == "powered from battery"
    assert host.answers("+CBC:")[-1] == "+CBC: 0,100"
